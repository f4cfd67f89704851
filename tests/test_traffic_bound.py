"""The loss benchmark's DRAM traffic bound (``benchmarks/bench_loss.py``) against brute force,
and its ``--sweep`` table selection.

The bound says how close to the zero-fill floor any fused loss step could come; it is only worth
printing if its sector count is right, so it is checked here byte by byte on small cases.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_loss  # noqa: E402


def brute_force_sectors(idx, plane, channels, element_size, channels_last):
    sectors = set()
    for b, m, n in torch.nonzero(idx >= 0).tolist():
        p = int(idx[b, m, n])
        for c in range(channels):
            element = (b * plane + p) * channels + c if channels_last else (b * channels + c) * plane + p
            for byte in range(element * element_size, (element + 1) * element_size):
                sectors.add(byte // bench_loss.SECTOR_BYTES)
    return len(sectors)


@pytest.mark.parametrize("height, width, channels, element_size", [
    (37, 91, 3, 4),   # planes not sector-aligned: the exact per-channel enumeration
    (37, 91, 5, 2),   # a pixel's channels straddle sectors in channels_last
    (16, 16, 8, 4),   # aligned planes: one channel's pattern times D
    (8, 8, 16, 2),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_feature_sectors_match_brute_force(height, width, channels, element_size, channels_last):
    g = torch.Generator().manual_seed(height * width + channels)
    idx = torch.randint(0, height * width, (2, 5, 7), generator=g, dtype=torch.int32)
    idx[1, 2] = -1  # a region without samples
    expected = brute_force_sectors(idx, height * width, channels, element_size, channels_last)
    got = bench_loss.feature_sectors(idx, height * width, channels, element_size, channels_last)
    assert got == expected


def test_traffic_bound_whole_map_read():
    # one region per image and more samples than pixels: (nearly) every pixel is sampled, so the
    # NCHW read is (nearly) the whole feature map and the bound (nearly) 1 + 1 + maps / gradients
    batch, size, channels = 2, 8, 8
    regions = torch.zeros(batch, size, size, dtype=torch.int64)
    bound = bench_loss.traffic_bound(regions, regions, 1, 4096, channels, torch.float32)
    maps = 2 * regions.numel() * 8
    gradients = 2 * batch * channels * size * size * 4
    assert bound["NCHW"] == pytest.approx(1 + (maps + gradients) / gradients)
    assert bound["channels_last"] == pytest.approx(bound["NCHW"])
    assert bound["sampled MB"]["NCHW"] == pytest.approx(gradients / 1e6)


def test_sweep_runs_the_tables_asked_for_in_that_order(monkeypatch, capsys):
    # gpu_check.sh runs the untimed changes' tables in one step and the older shapes in another
    ran = []
    for name in bench_loss.SWEEPS:
        monkeypatch.setitem(bench_loss.SWEEPS, name, lambda config, quick, name=name: ran.append(name) or [])
    assert bench_loss.main(["--sweep", "overlap,infonce"]) == 0
    assert ran == ["overlap", "infonce"]
    ran.clear()
    assert bench_loss.main(["--sweep"]) == 0
    assert ran == ["infonce", "search", "overlap", "backward", "index"]  # the untimed changes first
    with pytest.raises(SystemExit):
        bench_loss.main(["--sweep", "infonce,bogus"])
    assert "unknown --sweep tables ['bogus']" in capsys.readouterr().err
