"""The launchers' host-side helpers: integer arithmetic equal to Triton's own (which costs ~2 µs a
call), and the launch device (Triton launches on the current CUDA device, not the tensors')."""
import ast
import contextlib
import pathlib
from types import SimpleNamespace

import pytest
import torch
import triton

import lrc_fast
from lrc_fast.kernels import _host
from lrc_fast.kernels._host import cdiv, next_power_of_2, on_device

KERNEL_MODULES = sorted((pathlib.Path(lrc_fast.__file__).parent / "kernels").glob("*.py"))


def test_cdiv_and_next_power_of_2_match_triton():
    for n in list(range(0, 2100)) + [2**20 - 1, 2**20, 2**20 + 1, 2**31 - 1]:
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 3, 16, 1000, 1024):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)


def test_on_device_makes_the_tensors_gpu_current(monkeypatch):
    """A tensor on cuda:1 while cuda:0 is current gets cuda:1 for the launch; a tensor on the
    current device and a CPU tensor get nothing (no host call on the hot path)."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    on_gpu1 = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1))
    context = on_device(on_gpu1)
    assert isinstance(context, torch.cuda.device) and context.idx == 1
    on_gpu0 = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    assert isinstance(on_device(on_gpu0), contextlib.nullcontext)
    assert isinstance(on_device(torch.zeros(1)), contextlib.nullcontext)
    monkeypatch.setattr(_host.torch.compiler, "is_compiling", lambda: True)
    assert isinstance(on_device(on_gpu1), contextlib.nullcontext)  # Inductor guards its own calls


def _unguarded_launches(tree: ast.AST) -> list[int]:
    """Lines of `kernel[grid](...)` calls that no enclosing `with on_device(...)` covers."""
    lines = []

    def visit(node, guarded):
        if isinstance(node, ast.With):
            guarded = guarded or any(isinstance(item.context_expr, ast.Call)
                                     and getattr(item.context_expr.func, "id", "") == "on_device"
                                     for item in node.items)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
                and getattr(node.func.value, "id", "").endswith("_kernel") and not guarded):
            lines.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return lines


@pytest.mark.parametrize("path", KERNEL_MODULES, ids=lambda p: p.name)
def test_every_triton_launch_runs_on_its_tensors_device(path):
    tree = ast.parse(path.read_text())
    assert _unguarded_launches(tree) == [], f"{path.name}: launches outside `with on_device(...)`"


def test_the_launch_check_sees_an_unguarded_launch():
    code = "def f(x):\n    with on_device(x):\n        a_kernel[(1,)](x)\n    b_kernel[(1,)](x)\n"
    assert _unguarded_launches(ast.parse(code)) == [4]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs two GPUs")
def test_gpu_loss_and_pair_on_the_second_gpu():
    """Tensors on cuda:1 while cuda:0 is current: the fused loss and the elastic pair equal their
    results on cuda:0."""
    torch.cuda.set_device(0)
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 8, 40, 52, generator=g) for _ in range(2)]
    regions = torch.randint(0, 6, (2, 40, 52), generator=g)
    images = torch.rand(2, 1, 40, 52, generator=g)
    results = []
    for device in ("cuda:0", "cuda:1"):
        q, p = (f.to(device).requires_grad_(True) for f in feats)
        loss = lrc_fast.region_contrast_loss(q, p, regions.to(device), num_regions=6, generator=3,
                                             backend="triton")
        loss.backward()
        pair = lrc_fast.elastic_pair(images.to(device), regions.to(device), backend="triton",
                                     generator=torch.Generator(device).manual_seed(4))
        results.append([t.cpu() for t in (loss.detach(), q.grad, p.grad, *pair)])
    for a, b in zip(*results):
        assert torch.equal(a, b)
