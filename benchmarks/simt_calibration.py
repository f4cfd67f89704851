"""How well the SIMT simulator's critical path tracks GPU time, and the current kernel's against it.

Script:  python benchmarks/simt_calibration.py [--slices N]
  Takes the CUDA kernel of commit 61f4d8c, whose B=16 timings on an H200 are in
  benchmarks/RESULTS.md, out of git history; compiles it for the SIMT simulator (csrc/simt) with
  g++; profiles the 16 slices of each timed batch (phantom seeds 0-15 and the first 16 slices of
  the abdominal DICOM series, both as bench_felzenszwalb.py fed them then) for each timed launch
  shape; prints the slowest slice's critical path beside the measured time and the fitted
  microseconds per operation, and the current kernel's critical path on the same slices (default
  window and hub extension, through the compiled extension). Needs git, g++ and this checkout's
  history; no GPU. Slow (about 30 minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import ctypes
import pathlib
import subprocess
import tempfile

import numpy as np
import SimpleITK as sitk
import torch

import lrc_fast
from lrc_fast.data import phantom_slice, read_dicom_series, shared_data_dir
from lrc_fast.superpixels import _WINDOW, _taps_on, gaussian_taps

COMMIT = "61f4d8c"
ROOT = pathlib.Path(__file__).resolve().parents[1]
# H200, B=16, ms per batch, commit 61f4d8c (benchmarks/RESULTS.md).
MEASURED_MS = {
    ("phantom", (1, 1024)): 138.64, ("phantom", (2, 1024)): 76.50, ("phantom", (4, 1024)): 44.21,
    ("phantom", (8, 1024)): 29.18, ("phantom", (8, 512)): 36.80,
    ("real abdomen CT", (1, 1024)): 277.70, ("real abdomen CT", (2, 1024)): 150.33,
    ("real abdomen CT", (4, 1024)): 83.94, ("real abdomen CT", (8, 1024)): 84.35,
    ("real abdomen CT", (8, 512)): 115.60,
}
DRIVER = r"""
#define LRC_SIMT 1
#include "cuda_shim.h"
#include "csrc/cuda/felzenszwalb_cuda.cu"
#include <vector>
extern "C" size_t workspace_bytes(int B, int H, int W) { return lrc::fh_cuda_workspace_bytes(B, H, W); }
extern "C" int run(const double* image, int B, int H, int W, const double* taps, int radius, double k, int min_size,
                   int cluster, int threads, int64_t* labels, int64_t* counts, int32_t* rounds, void* workspace,
                   int64_t* critical) {
  lrc::FhCudaArgs a{};
  a.image = image; a.B = B; a.H = H; a.W = W; a.weights = taps; a.radius = radius; a.k = k; a.min_size = min_size;
  a.cluster = cluster; a.threads = threads; a.labels = labels; a.counts = counts; a.rounds = rounds;
  a.workspace = workspace;
  std::vector<simt::Profile> profile;
  simt::set_profile_sink(&profile);
  const int err = lrc::fh_cuda(a, nullptr);
  simt::set_profile_sink(nullptr);
  for (size_t b = 0; b < profile.size(); ++b) critical[b] = static_cast<int64_t>(profile[b].critical_ops);
  return err;
}
"""


def build(workdir: pathlib.Path) -> ctypes.CDLL:
    """The old kernel, with the two includes the simulator supplies guarded, as a shared library."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", COMMIT, "csrc"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive.stdout, check=True)
    for name, include in (("felzenszwalb_cuda.h", "cuda_runtime.h"), ("felzenszwalb_cuda.cu", "cooperative_groups.h")):
        path = workdir / "csrc" / "cuda" / name
        text = path.read_text().replace(f"#include <{include}>\n", f"#ifndef LRC_SIMT\n#include <{include}>\n#endif\n")
        path.write_text(text)
    (workdir / "driver.cpp").write_text(DRIVER)
    lib = workdir / "old_kernel.so"
    subprocess.run(["g++", "-std=c++17", "-O3", "-ffp-contract=off", "-shared", "-fPIC", "-pthread",
                    f"-I{ROOT / 'csrc' / 'simt'}", f"-I{workdir}", str(workdir / "driver.cpp"),
                    str(ROOT / "csrc" / "simt" / "simt.cpp"), "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))


def critical_path(lib: ctypes.CDLL, image: np.ndarray, launch: tuple[int, int]) -> int:
    """The simulated critical path of one (H, W) slice (scale 1, sigma 0.8, min_size 20)."""
    img = np.ascontiguousarray(image, dtype=np.float64)[None]
    taps = gaussian_taps(0.8)
    h, w = img.shape[1:]
    lib.workspace_bytes.restype = ctypes.c_size_t
    workspace = np.empty(lib.workspace_bytes(1, h, w) + 256, np.uint8)
    aligned = ctypes.c_void_p((workspace.ctypes.data + 255) & ~255)
    labels, counts = np.empty((1, h, w), np.int64), np.empty(1, np.int64)
    rounds, critical = np.empty((1, 2), np.int32), np.empty(1, np.int64)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    err = lib.run(ptr(img), 1, h, w, ptr(taps), len(taps) // 2, ctypes.c_double(1 / 255), 20, *launch, ptr(labels),
                  ptr(counts), ptr(rounds), aligned, ptr(critical))
    if err != 0:
        raise SystemExit(f"the simulated kernel failed (error {err})")
    return int(critical[0])


def current_critical_path(image: np.ndarray, launch: tuple[int, int]) -> int:
    """The same for the kernel of this checkout, labels checked against the CPU backend."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64)[None])
    ext = lrc_fast._ext.require_extension()
    labels, _, _, profile = ext.felzenszwalb_simt(x, _taps_on(0.8, x.device), 1 / 255, 20, *launch, _WINDOW, True, 0)
    if not torch.equal(labels, lrc_fast.felzenszwalb(x, backend="cpu")):
        raise SystemExit(f"MISMATCH: the simulated kernel {launch} differs from the CPU backend")
    return int(profile[0, 0])


def batches(n: int) -> dict[str, list[np.ndarray]]:
    """The B=16 batches of bench_felzenszwalb.py at 61f4d8c (float32, then float64)."""
    window = lambda hu: np.clip((hu + 175) / 425, 0, 1).astype(np.float32)  # noqa: E731
    out = {"phantom": [window(phantom_slice(512, 512, seed=s)) for s in range(n)]}
    root = shared_data_dir()
    folder = root / "totalseg-abdomen" / "ct_dicom" if root is not None else None
    if folder is not None and folder.is_dir():
        out["real abdomen CT"] = [window(s) for s in sitk.GetArrayFromImage(read_dicom_series(folder))[:n]]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=16, help="slices per batch (16 as timed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(pathlib.Path(tmp))
        rows = []
        for data_name, slices in batches(args.slices).items():
            for (name, launch), ms in MEASURED_MS.items():
                if name != data_name:
                    continue
                worst = max(critical_path(lib, s, launch) for s in slices)
                now = max(current_critical_path(s, launch) for s in slices)
                rows.append((data_name, launch, worst, ms, now))
                print(f"  {data_name} {launch}: critical path {worst}, measured {ms} ms; now {now}", flush=True)
    fit = sum(c * ms for _, _, c, ms, _ in rows) / sum(c * c for _, _, c, _, _ in rows) * 1e3  # us per op
    print(f"\n### Critical path of the slowest of {args.slices} slices, B=16 batches (least squares over the "
          f"{COMMIT} rows: {fit:.3f} us per op)")
    print(f"| data | launch | {COMMIT}: critical path | {COMMIT}: H200 ms | path x fit, ms | fit / measured "
          "| this checkout: critical path | shorter by |")
    print("|---|---|---|---|---|---|---|---|")
    for data_name, launch, crit, ms, now in rows:
        model = crit * fit / 1e3
        print(f"| {data_name} | {launch} | {crit} | {ms:.2f} | {model:.2f} | {model / ms:.2f} | {now} "
              f"| {crit / now:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
