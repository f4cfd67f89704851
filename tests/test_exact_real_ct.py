"""benchmarks/exact_real_ct.py, the check of the GPU kernel's labels on every real CT slice: its
comparison on phantom volumes (CI has no real CT), and that it reports a slice that differs."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lrc_fast.data import phantom_slice, window_hu

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import exact_real_ct  # noqa: E402

PARAMS = (1.0, 0.8, 20)


def _volumes():
    vol = np.stack([window_hu(phantom_slice(48, 64, seed=s)) for s in range(3)]).astype(np.float64)
    return {"phantom": [("a", torch.from_numpy(vol)), ("b", torch.from_numpy(vol[::-1].copy()))]}


def test_the_gpu_schedule_equals_the_cpu_backend_on_phantom_volumes():
    rows = exact_real_ct.differing_slices(_volumes(), ["emulate", "emulate-slots"], PARAMS)
    assert set(rows) == {("phantom", "emulate"), ("phantom", "emulate-slots")}
    for n, bad, _ in rows.values():
        assert (n, bad) == (6, [])


def test_a_differing_slice_is_reported():
    def labels(slices, backend, params):
        out = exact_real_ct.labels_of(slices, "emulate", params)
        if backend == "emulate-slots" and slices.shape[0] == 3:
            out[1, 0, 0] += 1  # one pixel of one slice
        return out

    rows = exact_real_ct.differing_slices(_volumes(), ["emulate", "emulate-slots"], PARAMS, labels)
    assert rows["phantom", "emulate"][1] == []
    assert rows["phantom", "emulate-slots"][1] == [("a", 1), ("b", 1)]


def test_main_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        exact_real_ct.main(["--backends", "cuda,gpu"])
    assert "unknown backends ['gpu']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        exact_real_ct.main(["--per-volume", "0"])
    assert "--per-volume must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        exact_real_ct.main(["--params", "1,0.8"])
    assert "--params must be scale,sigma,min_size" in capsys.readouterr().err


def test_main_without_real_ct_compares_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LRC_FAST_SHARED_DATA", str(tmp_path / "absent"))
    assert exact_real_ct.main(["--backends", "emulate"]) == 0
    assert "nothing compared" in capsys.readouterr().out
    assert exact_real_ct.main(["--backends", "emulate", "--require-data"]) == 2  # gpu_check's step fails
