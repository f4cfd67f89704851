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
    rows = dict(exact_real_ct.compare(_volumes(), ["emulate", "emulate-slots"], PARAMS))
    assert set(rows) == {("phantom", "emulate"), ("phantom", "emulate-slots")}
    for n, bad, _ in rows.values():
        assert (n, bad) == (6, [])


def test_a_differing_slice_is_reported():
    def labels(slices, backend, params):
        out = exact_real_ct.labels_of(slices, "emulate", params)
        if backend == "emulate-slots" and slices.shape[0] == 3:
            out[1, 0, 0] += 1  # one pixel of one slice
        return out

    rows = dict(exact_real_ct.compare(_volumes(), ["emulate", "emulate-slots"], PARAMS, labels))
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
    # felzenszwalb's own checks: finite and >= 0
    for bad, why in (("1,nan,20", "sigma must be finite and >= 0, got nan"),
                     ("-1,0.8,20", "scale must be finite and >= 0, got -1.0"),
                     ("1,0.8,-5", "min_size must be >= 0, got -5")):
        with pytest.raises(SystemExit):
            exact_real_ct.main([f"--params={bad}"])  # "=": argparse reads a bare "-1,..." as an option
        assert why in capsys.readouterr().err
    with pytest.raises(SystemExit):
        exact_real_ct.main(["--limit", "0"])
    assert "--limit must be at least 1, got 0" in capsys.readouterr().err


def test_rows_come_as_each_backend_finishes():
    # a step cut short by its time limit still has the rows it finished
    def labels(slices, backend, params):
        if backend == "emulate-slots":
            raise RuntimeError("cut short")
        return exact_real_ct.labels_of(slices, backend, params)

    rows = exact_real_ct.compare(_volumes(), ["emulate", "emulate-slots"], PARAMS, labels)
    key, (n, bad, _) = next(rows)
    assert (key, n, bad) == (("phantom", "emulate"), 6, [])
    with pytest.raises(RuntimeError, match="cut short"):
        next(rows)


def test_main_prints_a_row_per_backend_and_fails_on_a_difference(monkeypatch, capsys):
    monkeypatch.setattr(exact_real_ct, "load_volumes", lambda per_volume, limit: _volumes())
    assert exact_real_ct.main(["--backends", "emulate,emulate-slots"]) == 0
    out = capsys.readouterr().out
    assert "| phantom | emulate | 6 | 6 | - |" in out and "| phantom | emulate-slots | 6 | 6 | - |" in out

    real = exact_real_ct.labels_of

    def one_pixel_off(slices, backend, params, seed=0):
        out = real(slices, backend, params, seed)
        if backend == "emulate":
            out[2, 5, 5] += 1
        return out

    monkeypatch.setattr(exact_real_ct, "labels_of", one_pixel_off)
    assert exact_real_ct.main(["--backends", "emulate"]) == 1
    assert "| phantom | emulate | 6 | 4 | [('a', 2), ('b', 2)] |" in capsys.readouterr().out


def test_volumes_are_taken_in_natural_order():
    names = ["pt_10_ct.nii.gz", "pt_2_ct.nii.gz", "pt_1_ct.nii.gz", "pt_100_ct.nii.gz"]
    assert sorted(names, key=exact_real_ct.natural_key) == [
        "pt_1_ct.nii.gz", "pt_2_ct.nii.gz", "pt_10_ct.nii.gz", "pt_100_ct.nii.gz"]


def test_main_without_real_ct_compares_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LRC_FAST_SHARED_DATA", str(tmp_path / "absent"))
    assert exact_real_ct.main(["--backends", "emulate"]) == 0
    assert "nothing compared" in capsys.readouterr().out
    assert exact_real_ct.main(["--backends", "emulate", "--require-data"]) == 2  # gpu_check's step fails
