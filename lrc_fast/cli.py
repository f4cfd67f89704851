"""The ``lrc-fast`` command.

``lrc-fast demo``: superpixels of a real CT slice (pydicom's ``CT_small.dcm``) and of the synthetic
CT phantom, the elastic positive pair of the phantom slice, and the region contrast loss between
the two views; prints region counts and timings and writes PNG overlays.
``lrc-fast info``: the backends this installation has.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import backends
from .superpixels import felzenszwalb

ABDOMEN = (-175.0, 250.0)


def _window(hu: np.ndarray, window=ABDOMEN) -> np.ndarray:
    lo, hi = window
    return np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def ct_small_hu() -> np.ndarray:
    """pydicom's bundled real CT slice (128 x 128) in HU."""
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm", download=False)  # shipped with pydicom: never fetched
    if path is None:
        raise FileNotFoundError("pydicom's bundled test file CT_small.dcm is missing from this "
                                "pydicom installation; reinstall pydicom")
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import mark_boundaries

    rgb = mark_boundaries(np.repeat(image[..., None], 3, axis=2), labels, color=(1.0, 0.35, 0.0))
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _save_png(path: Path, rgb: np.ndarray) -> None:
    from skimage.io import imsave

    imsave(path, rgb, check_contrast=False)


def demo(out: Path, size: int, seed: int, device: str) -> int:
    from .data.phantom import phantom_slice

    dev = torch.device(device)  # `out` exists: main made it, or said why it could not
    print(f"lrc_fast demo on {dev}; backends: {backends()}")

    slices = {
        "ct_small (pydicom, real CT)": _window(ct_small_hu()),
        f"phantom seed {seed}": _window(phantom_slice(size, size, seed=seed)),
    }
    outputs = {}
    for name, image in slices.items():
        x = torch.from_numpy(image).to(dev)
        felzenszwalb(x)  # first call loads kernels
        start = time.perf_counter()
        labels, k = felzenszwalb(x, scale=1.0, sigma=0.8, min_size=20, return_counts=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - start) * 1e3
        stem = name.split(" ")[0]
        _save_png(out / f"{stem}_superpixels.png", _overlay(image, labels.cpu().numpy()))
        print(f"{name}: {image.shape[0]}x{image.shape[1]}, K = {int(k)} regions in {ms:.1f} ms "
              f"-> {out / (stem + '_superpixels.png')}")
        outputs[stem] = (x, labels)

    from .elastic import elastic_pair
    from .loss import region_contrast_loss

    x_q, r_q = outputs["phantom"]
    gen = torch.Generator(device=dev).manual_seed(seed)
    x_p, r_p = elastic_pair(x_q[None, None], r_q[None], generator=gen)
    _save_png(out / "phantom_positive_view.png", _overlay(x_p[0, 0].cpu().numpy(), r_p[0].clamp_min(0).cpu().numpy()))
    ignored = (r_p < 0).float().mean().item()
    print(f"elastic positive view: {ignored:.1%} of region pixels ignored (source outside the slice) "
          f"-> {out / 'phantom_positive_view.png'}")

    torch.manual_seed(seed)
    embed = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 64, 3, padding=1)).to(dev)
    f_q, f_p = embed(x_q[None, None]), embed(x_p)
    loss = region_contrast_loss(f_q, f_p, r_q[None], r_p, generator=torch.Generator(device=dev).manual_seed(seed))
    loss.backward()
    print(f"region contrast loss (N=50, tau=0.1) of a random 64-channel embedding: {loss.item():.4f}; "
          f"gradient norm {embed[0].weight.grad.norm().item():.3e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lrc-fast", description="Localized Region Contrast, fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="superpixels, elastic pair and LRC loss on a real CT slice and the phantom")
    p_demo.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for the PNG overlays")
    p_demo.add_argument("--size", type=int, default=512, help="phantom slice size in pixels")
    p_demo.add_argument("--seed", type=int, default=0,
                        help="seed of the phantom slice, the elastic field and the embedding (default 0)")
    p_demo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device to run on (default: cuda when available, else cpu)")
    sub.add_parser("info", help="print the available backends")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(backends())
        return 0
    error = p_demo.error  # usage errors name `lrc-fast demo` and its options
    if args.size < 64:
        error(f"--size must be at least 64, got {args.size}")
    if not 0 <= args.seed < 2 ** 64:  # what torch.manual_seed and the phantom take
        error(f"--seed must be in [0, 2**64), got {args.seed}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        error(f"--device must be 'cpu' or 'cuda' (optionally 'cuda:N'), got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        error("--device cuda: this torch has no CUDA device; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        error(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if args.out.exists() and not args.out.is_dir():
        error(f"--out must be a folder (it is created if missing); {str(args.out)!r} is a file")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        error(f"--out {str(args.out)!r}: cannot create the folder ({exc.strerror or exc})")
    return demo(args.out, args.size, args.seed, args.device)


if __name__ == "__main__":
    sys.exit(main())
