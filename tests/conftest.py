"""Shared test set-up.

Without a CUDA device, Triton kernels run under the Triton interpreter on CPU tensors. The
variable must be set before any ``@triton.jit`` function is created, so it is set here, before
the package is imported by any test module.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def simt_ext():
    """The compiled extension, for tests of CUDA kernels run on its SIMT simulator; the test is
    skipped where the extension is not built or the simulator does not run (x86-64 Linux only)."""
    from lrc_fast import _ext

    if not _ext.has_cpu_extension():
        pytest.skip("lrc_fast._C not built")
    ext = _ext.require_extension()
    if not ext.simt_available():
        pytest.skip("the SIMT simulator runs on x86-64 Linux only")
    return ext


@pytest.fixture
def capture_cuda_graph():
    """A function ``step -> (graph, outputs)``: see :func:`_capture_cuda_graph`."""
    return _capture_cuda_graph


def _capture_cuda_graph(step):
    """``(graph, outputs)``: ``step()`` captured in a CUDA graph after two warm-up calls on a side
    stream (as torch.cuda.graphs asks), not yet replayed. A GPU->CPU sync in ``step`` makes the
    capture raise."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    return graph, outputs
