"""The documentation's examples run: every docstring example of the package (``>>>``, outputs
compared as doctest does) and every ```python block of README.md and docs/*.md, executed on small
CPU inputs. A renamed argument, a changed return or a wrong printed output fails here."""
from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest
import torch

import lrc_fast
from lrc_fast.data import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _docstring_tests() -> list[doctest.DocTest]:
    names = ["lrc_fast"] + [m.name for m in pkgutil.walk_packages(lrc_fast.__path__, "lrc_fast.")]
    finder = doctest.DocTestFinder()
    return [test for name in names for test in finder.find(importlib.import_module(name)) if test.examples]


DOCTESTS = _docstring_tests()

# The examples that read real CT, with the folder each names and where ../shared/data holds it.
REAL_CT_EXAMPLES = {
    "lrc_fast.data.datasets.find_cases": ('"/data/openkbp"', "openkbp-train"),
    "lrc_fast.data.io.read_dicom_series": ('"ct_dicom/"', "totalseg-abdomen/ct_dicom"),
}


def _run(test: doctest.DocTest) -> tuple[doctest.TestResults, str]:
    """Run ``test`` as pytest's doctest would (ELLIPSIS): its results and its failure report."""
    report: list[str] = []
    result = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(test, out=report.append)
    return result, "".join(report)


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_example(test, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    result, report = _run(test)
    if result.attempted == 0:
        assert test.name in REAL_CT_EXAMPLES, f"{test.name}: every example is +SKIP, and nothing runs it"
        pytest.skip("every example is marked +SKIP: it reads real CT (test_real_ct_example runs it on ../shared/data)")
    assert result.failed == 0, report


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(REAL_CT_EXAMPLES))
def test_real_ct_example(name):
    """The +SKIP examples run on ../shared/data's files, printed outputs and all."""
    data = shared_data_dir()
    if data is None:
        pytest.skip("../shared/data is absent (set LRC_FAST_SHARED_DATA to point at it)")
    spelled, folder = REAL_CT_EXAMPLES[name]
    module = importlib.import_module(name.rsplit(".", 1)[0])
    test = next(t for t in doctest.DocTestFinder().find(module) if t.name == name)  # a fresh copy
    assert any(spelled in ex.source for ex in test.examples), f"{name} no longer reads {spelled}"
    for ex in test.examples:
        ex.source = ex.source.replace(spelled, repr(str(data / folder)))
        ex.options = {}
    result, report = _run(test)
    assert result.attempted == len(test.examples) and result.failed == 0, report


def test_the_public_ops_have_runnable_examples():
    """The ops' docstrings keep an example that runs (a +SKIP everywhere would pass vacuously)."""
    runnable = {t.name for t in DOCTESTS if any(not ex.options.get(doctest.SKIP) for ex in t.examples)}
    for name in ("superpixels.felzenszwalb", "elastic.elastic_pair", "elastic.elastic_warp",
                 "elastic.random_elastic_field", "loss.region_contrast_loss", "loss.region_sample_mean",
                 "loss.RegionContrastLoss"):
        assert f"lrc_fast.{name}" in runnable, name


def _markdown_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in MARKDOWN:
        text = path.read_text()
        for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
            line = text.count("\n", 0, match.start()) + 2
            blocks.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return blocks


BLOCKS = _markdown_blocks()


def _names_the_docs_use() -> dict:
    """The inputs the markdown examples name without making them, small and on the CPU."""
    g = torch.Generator().manual_seed(0)
    B, H, W, D = 2, 37, 91, 8  # noqa: N806 (the docs' names)
    images = torch.rand(B, H, W, generator=g, dtype=torch.float64)  # windowed CT in [0, 1]
    r_q = lrc_fast.felzenszwalb(images, min_size=40)  # (B, H, W) int64
    K = int(r_q.max()) + 1  # noqa: N806
    return {
        "lrc_fast": lrc_fast, "torch": torch, "B": B, "H": H, "W": W, "K": K,
        "images": images, "images64": images,
        "x_q": torch.rand(B, 1, H, W, generator=g), "r_q": r_q, "r_p": r_q.flip(-1),
        "f_q": torch.randn(B, D, H, W, generator=g, requires_grad=True),
        "f_p": torch.randn(B, D, H, W, generator=g, requires_grad=True),
        "g": torch.Generator().manual_seed(1),
    }


def test_markdown_has_python_examples():
    assert {where.split(":")[0] for where, _ in BLOCKS} >= {"README.md", "docs/region_contrast_loss.md"}


@pytest.mark.parametrize("where,code", BLOCKS, ids=[where for where, _ in BLOCKS])
def test_markdown_example(where, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), _names_the_docs_use())
