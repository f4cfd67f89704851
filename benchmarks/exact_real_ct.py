"""Felzenszwalb labels on every slice of the real CT in ../shared/data against the exact CPU
backend: the GPU kernel (default engine and slot engine), its CPU emulation, or the kernel's own
source on the SIMT simulator. A check, not a timing: it exits 1 when any slice differs.

    python benchmarks/exact_real_ct.py                          # emulate, emulate-slots (no GPU)
    python benchmarks/exact_real_ct.py --backends cuda,cuda-slots
    python benchmarks/exact_real_ct.py --backends simt-slots --per-volume 1 --seed 3

The data: the 90 OpenKBP head & neck volumes (128x128 slices, window head_neck) and the abdominal
DICOM series (512x512, window abdomen); ``$LRC_FAST_SHARED_DATA`` points elsewhere (gpu_check.sh
sets it to a carried ``.gpu_data``). Without the data it says so and exits 0, or 2 with
``--require-data``. ``--per-volume N`` takes N interior slices of each volume, spread evenly
(the SIMT simulator takes seconds per slice).
"""
from __future__ import annotations

import argparse
import re
import sys
import time

import numpy as np
import torch

from lrc_fast.superpixels import _check_params, _segment

REFERENCE = "cpu"  # the exact CPU backend
# backend name -> (the _segment backend, the slot engine on)
BACKENDS = {
    REFERENCE: ("cpu", False),
    "cuda": ("cuda", False), "cuda-slots": ("cuda", True),
    "emulate": ("emulate", False), "emulate-slots": ("emulate", True),
    "simt": ("simt", False), "simt-slots": ("simt", True),
}
MAX_BATCH = 256  # slices per call


def labels_of(slices: torch.Tensor, backend: str, params: tuple[float, float, int], seed: int = 0) -> torch.Tensor:
    """(D, H, W) int64 labels on the CPU of the (D, H, W) float64 slices, ``MAX_BATCH`` at a time.
    ``seed``: the SIMT simulator's thread interleaving (0: in order)."""
    name, slots = BACKENDS[backend]
    device = "cuda" if name == "cuda" else "cpu"
    launch = (6, 1024) if name == "simt" else None  # the B=16 launch of the GPU
    parts = [_segment(chunk.to(device), *params, name, launch=launch, slots=slots, seed=seed)[0].cpu()
             for chunk in slices.split(MAX_BATCH)]
    return torch.cat(parts)


def compare(volumes, backends, params, labels=labels_of):
    """Yield ``((data set, backend), (slices compared, the (volume, slice) pairs whose labels
    differ from the CPU backend's, seconds))`` as each finishes. ``volumes``: {data set:
    [(volume name, (D, H, W) float64)]}; ``labels(slices, backend, params)`` as :func:`labels_of`."""
    for data, vols in volumes.items():
        want = [labels(v, REFERENCE, params) for _, v in vols]
        for backend in backends:
            start = time.perf_counter()
            bad = []
            for (name, v), expected in zip(vols, want):
                got = labels(v, backend, params)
                bad += [(name, z) for z in range(v.shape[0]) if not torch.equal(got[z], expected[z])]
            yield (data, backend), (sum(v.shape[0] for _, v in vols), bad, time.perf_counter() - start)


def natural_key(name: str) -> list:
    """Sort key that orders pt_2 before pt_10, as ``make gpu-data``'s ``sort -V`` does."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def load_volumes(per_volume: int | None, limit: int | None) -> dict | None:
    """{data set: [(name, (D, H, W) float64 windowed slices)]} from ../shared/data, or None."""
    import SimpleITK as sitk

    from bench_felzenszwalb import real_ct_slices  # the abdominal series, windowed (benchmarks/ is on sys.path)
    from lrc_fast.data import read_image, shared_data_dir, window_hu

    root = shared_data_dir()
    if root is None:
        return None

    def taken(vol: np.ndarray) -> torch.Tensor:
        if per_volume is not None:
            # interior slices: an OpenKBP volume's first slice is often blank (-1024 outside the scan)
            vol = vol[np.unique(np.linspace(0, vol.shape[0] - 1, per_volume + 2).astype(int)[1:-1])]
        return torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float64))

    volumes = {}
    paths = sorted((root / "openkbp-train").glob("*_ct.nii.gz"), key=lambda p: natural_key(p.name))[:limit]
    if paths:
        volumes["OpenKBP"] = [(p.name, taken(window_hu(sitk.GetArrayFromImage(read_image(p)), "head_neck")))
                              for p in paths]
    abdomen = real_ct_slices()
    if abdomen is not None:
        volumes["abdomen"] = [("ct_dicom", taken(np.stack(abdomen)))]
    return volumes or None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "cuda,cuda-slots" if torch.cuda.is_available() else "emulate,emulate-slots"
    parser.add_argument("--backends", default=default, help=f"comma-separated, of {sorted(BACKENDS)}")
    parser.add_argument("--per-volume", type=int, default=None,
                        help="slices per volume, spread evenly (default: all; the report then numbers the slices taken)")
    parser.add_argument("--limit", type=int, default=None,
                        help="the first N OpenKBP volumes in pt_1, pt_2, ... order (default: all)")
    parser.add_argument("--params", default="1,0.8,20", help="scale,sigma,min_size (default: the demo's)")
    parser.add_argument("--seed", type=int, default=0, help="simt: the threads' interleaving (0: in order)")
    parser.add_argument("--require-data", action="store_true", help="exit 2 when no real CT is found")
    args = parser.parse_args(argv)
    backends = args.backends.split(",")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {sorted(BACKENDS)}")
    if args.per_volume is not None and args.per_volume < 1:
        parser.error(f"--per-volume must be at least 1, got {args.per_volume}")
    try:
        scale, sigma, min_size = args.params.split(",")
        params = _check_params(float(scale), float(sigma), int(min_size))
    except ValueError as err:  # felzenszwalb's own checks (finite, >= 0) or a malformed value
        parser.error(f"--params must be scale,sigma,min_size (two numbers >= 0 and an int >= 0), "
                     f"got {args.params!r}: {err}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    volumes = load_volumes(args.per_volume, args.limit)
    if volumes is None:
        print("no real CT: ../shared/data is absent (set LRC_FAST_SHARED_DATA); nothing compared")
        return 2 if args.require_data else 0
    print(f"Felzenszwalb labels against the CPU backend, scale {params[0]:g}, sigma {params[1]:g}, "
          f"min_size {params[2]}\n")
    print("| data | backend | slices | equal | differing (first 5) | s |")
    print("|---|---|---|---|---|---|", flush=True)
    differ = False
    # each row as it finishes: a run cut short by its time limit still logs the rows it finished
    for (data, backend), (n, bad, seconds) in compare(
            volumes, backends, params, lambda slices, backend, p: labels_of(slices, backend, p, args.seed)):
        print(f"| {data} | {backend} | {n} | {n - len(bad)} | {bad[:5] if bad else '-'} | {seconds:.1f} |",
              flush=True)
        differ = differ or bool(bad)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
