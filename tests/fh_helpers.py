"""Helpers for the Felzenszwalb tests: tie checks, structural checks, test images."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def edge_costs(image: np.ndarray, sigma: float) -> np.ndarray:
    """skimage's edge costs of a float64 slice (smoothing, 8-connected, its edge order)."""
    s = ndi.gaussian_filter(image, sigma, mode="reflect", truncate=4.0)  # skips sigma <= 1e-15, as skimage
    parts = [
        s[:, 1:] - s[:, :-1],
        s[1:, :] - s[:-1, :],
        s[1:, 1:] - s[:-1, :-1],
        s[1:, :-1] - s[:-1, 1:],
    ]
    return np.concatenate([np.sqrt(p * p).ravel() for p in parts])


def has_ties(image: np.ndarray, sigma: float) -> bool:
    """Whether two edges of the slice have the same cost (where skimage's order is unstable)."""
    c = edge_costs(image, sigma)
    return np.unique(c).size != c.size


def tie_free(shape, rng: np.random.Generator, sigma: float, smooth: float = 2.0) -> np.ndarray:
    """A random smoothed image in [0, 1] whose edge costs are all distinct (checked)."""
    for _ in range(20):
        x = rng.random(shape)
        if smooth > 0 and min(shape) > 1:
            x = ndi.gaussian_filter(x, smooth)
        x = x + 1e-3 * rng.random(shape)
        if not has_ties(x, sigma):
            return x
    raise RuntimeError(f"could not draw a tie-free image of shape {shape}")


def jitter_until_tie_free(image: np.ndarray, sigma: float, seed: int, amplitude: float = 1e-7) -> np.ndarray:
    """Add a tiny seeded jitter (far below CT precision) until no two edge costs tie."""
    rng = np.random.default_rng(seed)
    for _ in range(20):
        x = image + amplitude * rng.random(image.shape)
        if not has_ties(x, sigma):
            return x
    raise RuntimeError("jitter did not remove the ties")


def assert_valid_segmentation(labels: np.ndarray, min_size: int) -> None:
    """Labels are int64, 0..K-1 by first appearance, regions 8-connected and >= min_size."""
    from skimage.measure import label as cc_label

    assert labels.dtype == np.int64
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    k = values.size
    np.testing.assert_array_equal(values, np.arange(k))
    np.testing.assert_array_equal(np.argsort(first, kind="stable"), np.arange(k))  # first-appearance order
    assert cc_label(labels, background=-1, connectivity=2).max() == k  # each region one 8-connected piece
    if labels.size >= min_size:
        assert np.bincount(flat).min() >= min_size

