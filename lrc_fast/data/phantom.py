"""A synthetic abdominal CT phantom: the project's embedded default data.

Each case is an upper-abdomen volume with a body outline, subcutaneous and visceral fat, an
abdominal muscle wall, spine (vertebral bodies, discs, canal, posterior elements), ribs,
psoas and back muscles, lung bases, bowel loops with gas, and the labelled organs of
:data:`PHANTOM_LABELS`. Organs are ellipsoids deformed by angular harmonics that twist along
the body axis, drift and bend with depth, and vary per case in size, position, rotation and
contrast enhancement. HU values follow a portal-venous-phase CT; two scales of smooth
texture, scanner-like noise and a slight in-plane blur (partial volume) are added.

Geometry is in millimetres. Arrays are ``(D, H, W)`` = ``(z, y, x)`` in LPS orientation:
``x`` runs to the patient's left, ``y`` posterior, ``z`` superior, so slice 0 is the most
inferior one and an axial slice shows the liver on the image's left, like a radiology viewer.

The generator is vectorised numpy (plus one ``torch`` interpolation for the texture) and takes
about 0.5 s for a 128 x 256 x 256 volume on one core.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .io import array_to_image, check_spacing, write_image

#: Class ids of the phantom's label maps (0 is everything that is not a labelled organ).
PHANTOM_LABELS: dict[int, str] = {
    0: "background",
    1: "liver",
    2: "spleen",
    3: "kidney_right",
    4: "kidney_left",
    5: "stomach",
    6: "aorta",
    7: "inferior_vena_cava",
    8: "gallbladder",
    9: "pancreas",
}

#: Default volume: 64 slices of 3 mm and 256 x 256 pixels of 1.5 mm (19.2 x 38.4 x 38.4 cm).
DEFAULT_PHANTOM_SHAPE = (64, 256, 256)
DEFAULT_PHANTOM_SPACING = (3.0, 1.5, 1.5)

#: Bumped whenever the generator's output changes, so written datasets are regenerated.
PHANTOM_VERSION = 1
_RECORD_NAME = ".lrc_phantom.json"

# Anatomical depth (mm below the liver dome) at the centre of the volume, before jitter.
_DEPTH_CENTRE = 100.0


@dataclass
class _Grid:
    """Physical coordinates of the voxel centres, each a 1D float32 array."""

    depth: np.ndarray  # (D,) mm below the liver dome; decreases with the slice index
    y: np.ndarray  # (H,) mm, posterior positive
    x: np.ndarray  # (W,) mm, patient-left positive


class _Canvas:
    """Base HU, texture amplitude and labels, painted structure by structure."""

    def __init__(self, shape):
        self.hu = np.full(shape, -1000.0, np.float32)  # (D, H, W) air
        self.texture = np.zeros(shape, np.float32)  # (D, H, W) HU std of the smooth texture
        self.label = np.zeros(shape, np.uint8)  # (D, H, W)
        self.soft = np.zeros(shape, bool)  # (D, H, W) where organs may be painted

    def paint(self, sl, mask, hu, texture, label=None, organ=False, hard=False):
        """Set ``hu``/``texture`` (and ``label``) where ``mask``; organs only on soft tissue,
        and ``hard`` structures (bone, muscle) are kept free of organs."""
        if organ:
            mask = mask & self.soft[sl]
        self.hu[sl][mask] = hu
        self.texture[sl][mask] = texture
        if label is not None:
            self.label[sl][mask] = label
        if hard:
            self.soft[sl][mask] = False


def _index_range(coords: np.ndarray, lo: float, hi: float) -> slice:
    """Indices of ``coords`` (monotonic) falling in [lo, hi]."""
    if coords[0] <= coords[-1]:
        return slice(int(np.searchsorted(coords, lo, "left")), int(np.searchsorted(coords, hi, "right")))
    flipped = coords[::-1]
    n = len(coords)
    return slice(n - int(np.searchsorted(flipped, hi, "right")), n - int(np.searchsorted(flipped, lo, "left")))


def _ellipsoid(grid: _Grid, centre, radii, angle=0.0, harmonics=(), drift=(0.0, 0.0), bend=(0.0, 0.0)):
    """A deformed ellipsoid: its bounding-box slices and normalised squared radius there.

    ``centre`` = (x, y, depth) mm, ``radii`` = (rx, ry, rdepth) mm, ``angle`` rotates in-plane,
    ``harmonics`` = [(k, amplitude, phase, twist)] scales the radius by
    ``1 + sum(a cos(k theta + phase + twist u))`` with ``u`` the relative depth in [-1, 1];
    the in-plane centre moves by ``drift * u + bend * u**2`` mm.

    Returns ``(sl, t)`` with ``t`` (d, h, w) float32: <= 1 inside, 0 at the axis. ``sl`` is
    None when the box is empty.
    """
    cx, cy, cd = centre
    rx, ry, rd = radii
    grow = 1.0 + sum(abs(h[1]) for h in harmonics)
    reach = max(rx, ry) * grow
    shift_x, shift_y = abs(drift[0]) + abs(bend[0]), abs(drift[1]) + abs(bend[1])
    sz = _index_range(grid.depth, cd - rd, cd + rd)
    sy = _index_range(grid.y, cy - reach - shift_y, cy + reach + shift_y)
    sx = _index_range(grid.x, cx - reach - shift_x, cx + reach + shift_x)
    if sz.start >= sz.stop or sy.start >= sy.stop or sx.start >= sx.stop:
        return None, None
    u = ((grid.depth[sz] - cd) / rd)[:, None, None]  # (d, 1, 1)
    cross = np.maximum(1.0 - u * u, 1e-6)  # squared cross-section scale
    dx = grid.x[sx][None, None, :] - (cx + drift[0] * u + bend[0] * u * u)  # (d, 1, w)
    dy = grid.y[sy][None, :, None] - (cy + drift[1] * u + bend[1] * u * u)  # (d, h, 1)
    ca, sa = math.cos(angle), math.sin(angle)
    p = (ca * dx + sa * dy) * (1.0 / rx)  # (d, h, w)
    q = (ca * dy - sa * dx) * (1.0 / ry)  # (d, h, w)
    t = p * p + q * q
    if harmonics:
        theta = np.arctan2(q, p)
        rho = np.ones_like(t)
        for k, amp, phase, twist in harmonics:
            rho += amp * np.cos(k * theta + (phase + twist * u))
        t /= rho * rho
    t /= cross
    return (sz, sy, sx), t.astype(np.float32, copy=False)


def _harmonics(rng: np.random.Generator, amplitude: float, ks=(2, 3)):
    return [(k, rng.uniform(0.3, 1.0) * amplitude, rng.uniform(0, 2 * np.pi), rng.uniform(-1.5, 1.5)) for k in ks]


def _smooth_noise(rng: np.random.Generator, shape, cell: Sequence[float]) -> np.ndarray:
    """Unit-variance-ish smooth random field: random values every ``cell`` voxels, trilinear between."""
    coarse = tuple(max(2, int(math.ceil(n / c)) + 1) for n, c in zip(shape, cell))
    values = torch.from_numpy(rng.standard_normal(coarse, dtype=np.float32))
    field = F.interpolate(values[None, None], size=tuple(shape), mode="trilinear", align_corners=False)
    return field[0, 0].numpy()


def _render(grid: _Grid, rng: np.random.Generator, spacing_yx: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Paint one case on ``grid``; returns (HU float32 (D, H, W), labels uint8 (D, H, W))."""
    shape = (len(grid.depth), len(grid.y), len(grid.x))
    canvas = _Canvas(shape)
    u = rng.uniform
    scale = u(0.88, 1.12)  # overall body size
    enhance = u(0.55, 1.2)  # contrast enhancement (phase/timing variation)
    jit = lambda: u(-8.0, 8.0)  # noqa: E731  per-organ HU jitter
    ax = u(140.0, 172.0) * scale
    ay = ax * u(0.66, 0.8)

    # Body outline with subcutaneous fat, skin and the abdominal muscle wall (full volume).
    body_h = _harmonics(rng, 0.05, ks=(2, 3, 4))
    rel = (grid.depth - 100.0) / 200.0  # (D,) the abdomen widens slightly downwards
    ax_d = (ax * (1.0 + 0.06 * rel))[:, None, None]
    ay_d = (ay * (1.0 + 0.04 * rel))[:, None, None]
    px = grid.x[None, None, :] / ax_d  # (D, 1, W)
    py = (grid.y[None, :, None] + 0.06 * ay) / ay_d  # (D, H, 1) back a little flatter
    radius = np.sqrt(px * px + py * py)  # (D, H, W)
    theta = np.arctan2(py, px)
    rho = np.ones_like(radius)
    for k, amp, phase, twist in body_h:
        rho += amp * np.cos(k * theta + phase + twist * rel[:, None, None])
    radius /= rho
    del theta, rho
    fat = u(0.06, 0.16)
    wall = u(0.04, 0.06)
    full = (slice(None),) * 3
    body = radius <= 1.0
    canvas.paint(full, body, -105.0 + jit(), 12.0)
    canvas.paint(full, body & (radius > 0.985), 25.0, 8.0)
    inner = radius <= 1.0 - fat
    canvas.paint(full, inner, 50.0 + 8.0 * enhance, 9.0)
    cavity = radius <= 1.0 - fat - wall
    canvas.paint(full, cavity, -92.0 + jit(), 12.0)
    canvas.soft[cavity] = True
    deep = radius <= 0.95  # where back muscles may reach
    del radius, body, inner

    # Lung bases in the top slices, bowel loops lower down (unlabelled, behind the organs).
    for side in (-1, 1):
        sl, t = _ellipsoid(grid, (side * 0.55 * ax, 0.2 * ay, u(-10, 10)), (0.35 * ax, 0.55 * ay, u(45, 60)),
                           harmonics=_harmonics(rng, 0.06))
        if sl is not None:
            canvas.paint(sl, (t <= 1.0) & cavity[sl], -850.0 + jit(), 25.0)
    for _ in range(int(rng.integers(5, 10))):
        centre = (u(-0.55, 0.55) * ax, u(-0.65, 0.05) * ay, u(95.0, 220.0))
        radii = (u(14, 28) * scale, u(14, 28) * scale, u(20, 45))
        sl, t = _ellipsoid(grid, centre, radii, u(0, np.pi), _harmonics(rng, 0.12), bend=(u(-15, 15), u(-10, 10)))
        if sl is None:
            continue
        inside = (t <= 1.0) & cavity[sl]
        canvas.paint(sl, inside, 35.0 + 20.0 * enhance, 10.0)
        lumen = inside & (t <= 0.55)
        if rng.random() < 0.45:
            canvas.paint(sl, lumen, -950.0, 20.0)
        else:
            canvas.paint(sl, lumen, u(0.0, 45.0), 30.0)

    # Spine: vertebral bodies with discs, canal, posterior elements; psoas and back muscles.
    rv = 17.0 * scale
    yv = min(0.42 * ay, 0.82 * ay - rv - 39.0 * scale)  # posterior elements stay inside the back
    muscle = 52.0 + 8.0 * enhance
    for side in (-1, 1):
        sl, t = _ellipsoid(grid, (side * (rv + 15 * scale), yv, 250.0), (17 * scale, 15 * scale, 150.0),
                           side * 0.3, _harmonics(rng, 0.05))
        if sl is not None:
            canvas.paint(sl, t <= 1.0, muscle + jit(), 9.0, hard=True)
        sl, t = _ellipsoid(grid, (side * 30 * scale, yv + rv + 22 * scale, 100.0), (22 * scale, 20 * scale, 1e4),
                           0.0, _harmonics(rng, 0.06))
        if sl is not None:  # back muscles, inside the fat and skin
            canvas.paint(sl, (t <= 1.0) & deep[sl], muscle + jit(), 9.0, hard=True)
    period = u(30.0, 36.0)
    phase = u(0.0, period)
    disc = ((grid.depth - phase) % period) < 7.0  # (D,)
    sl, t = _ellipsoid(grid, (0.0, yv, 100.0), (rv, 0.9 * rv, 1e4), drift=(0.0, u(-6, 6)))
    if sl is not None:
        vertebra = t <= 1.0
        canvas.paint(sl, vertebra, 850.0, 90.0, hard=True)
        canvas.paint(sl, vertebra & (t <= 0.72), 230.0, 45.0)
        canvas.paint(sl, vertebra & disc[sl[0], None, None], 85.0, 8.0)
    for centre, radii, hu, texture in (
        ((0.0, yv + rv + 24 * scale, 100.0), (6 * scale, 15 * scale, 1e4), 600.0, 90.0),  # posterior elements
        ((0.0, yv + rv + 8 * scale, 100.0), (8 * scale, 7 * scale, 1e4), 15.0, 5.0),  # spinal canal
    ):
        sl, t = _ellipsoid(grid, centre, radii)
        if sl is not None:
            canvas.paint(sl, (t <= 1.0) & deep[sl], hu, texture, hard=True)

    # Ribs: small bone ellipses in the muscle wall, in bands down to the lower costal margin.
    ring = 1.0 - fat - 0.5 * wall
    rib_phase = u(0.0, 22.0)
    for k, depth in enumerate(np.arange(rib_phase, 150.0, 22.0)):
        for side in (-1, 1):
            for ang in (0.45, 0.95, 1.45, 2.0):
                a = ang + 0.25 * (k % 2) + u(-0.08, 0.08)
                centre = (side * ring * ax * math.sin(a), -ring * ay * math.cos(a) + 0.02 * ay, depth)
                sl, t = _ellipsoid(grid, centre, (6 * scale, 4.5 * scale, 7.0), a)
                if sl is not None:
                    rib = t <= 1.0
                    canvas.paint(sl, rib, 750.0, 60.0, hard=True)
                    canvas.paint(sl, rib & (t <= 0.4), 250.0, 40.0)

    # Organs: (label, centre, radii, angle, harmonic amplitude, HU, texture), later ones on top.
    def organ(label, centre, radii, angle, amp, hu, texture, **kw):
        sl, t = _ellipsoid(grid, centre, radii, angle, _harmonics(rng, amp), **kw)
        if sl is not None:
            canvas.paint(sl, t <= 1.0, hu, texture, label, organ=True)
        return sl, t

    j = lambda s: u(-s, s)  # noqa: E731  position jitter, mm
    liver_hu = 55.0 + 50.0 * enhance + jit()
    sl, t = _ellipsoid(grid, (-0.42 * ax + j(8), -0.05 * ay + j(6), 75.0 + j(8)),
                       (0.42 * ax * u(0.9, 1.1), 0.58 * ay * u(0.9, 1.1), 85.0 * u(0.9, 1.1)), j(0.15),
                       _harmonics(rng, 0.12, ks=(2, 3, 4)), bend=(j(12), j(10)))
    if sl is not None:
        canvas.paint(sl, t <= 1.0, liver_hu, 8.0, 1, organ=True)
    organ(1, (0.02 * ax + j(10), -0.45 * ay + j(5), 55.0 + j(8)),
          (0.32 * ax * u(0.85, 1.15), 0.28 * ay, 45.0 * u(0.85, 1.15)), -0.3 + j(0.15), 0.08, liver_hu, 8.0)
    organ(8, (-0.22 * ax + j(6), -0.38 * ay + j(6), 115.0 + j(10)),
          (13.0 * scale * u(0.8, 1.2), 20.0 * scale * u(0.8, 1.2), 30.0), 0.5 + j(0.3), 0.05, 8.0 + jit(), 4.0)
    organ(2, (0.6 * ax + j(6), 0.25 * ay + j(6), 70.0 + j(10)),
          (0.16 * ax * u(0.8, 1.25), 0.33 * ay * u(0.8, 1.2), 50.0 * u(0.85, 1.15)), -0.6 + j(0.2), 0.1,
          45.0 + 70.0 * enhance + jit(), 6.0)
    sl, t = organ(5, (0.3 * ax + j(8), -0.3 * ay + j(6), 60.0 + j(8)),
                  (0.28 * ax * u(0.8, 1.15), 0.28 * ay * u(0.8, 1.15), 55.0), 0.5 + j(0.2), 0.1,
                  40.0 + 40.0 * enhance + jit(), 8.0, bend=(j(15), j(10)))
    if sl is not None:  # stomach lumen: fluid, with gas in its anterior (non-dependent) part
        lumen = (t <= 0.7) & (canvas.label[sl] == 5)
        canvas.paint(sl, lumen, u(5.0, 25.0), 6.0, 5, organ=True)
        gas_level = -0.3 * ay + u(-0.15, 0.1) * ay
        gas = lumen & (grid.y[sl[1]][None, :, None] < gas_level)
        canvas.paint(sl, gas, -980.0, 10.0, 5, organ=True)
    pancreas_hu = 40.0 + 50.0 * enhance + jit()
    depth_p = 108.0 + j(8)
    y_aorta = yv - rv - 12.0 * scale
    # tail at the splenic hilum, body in front of the aorta, head towards the duodenum
    for cx, dy, rx, ry, ang, dd in ((0.38, 5, 30, 10, -0.5, 0), (0.08, -25, 35, 11, 0.0, 6), (-0.2, -15, 18, 16, 0.2, 12)):
        organ(9, (cx * ax + j(5), y_aorta + dy * scale + j(4), depth_p + dd),
              (rx * scale, ry * scale, 18.0 * u(0.8, 1.2)), ang + j(0.15), 0.1, pancreas_hu, 10.0)
    for lab, side, depth_k in ((3, -1, 150.0), (4, 1, 140.0)):
        sl, t = organ(lab, (side * 0.4 * ax + j(6), yv + j(6), depth_k + j(10)),
                      (26.0 * scale * u(0.85, 1.15), 19.0 * scale * u(0.85, 1.15), 55.0 * u(0.85, 1.15)),
                      side * (0.6 + j(0.2)), 0.05, 35.0 + 130.0 * enhance + jit(), 12.0)
        if sl is not None:  # medulla and renal sinus fat
            own = canvas.label[sl] == lab
            canvas.paint(sl, own & (t <= 0.5), 35.0 + 80.0 * enhance, 12.0, lab, organ=True)
            canvas.paint(sl, own & (t <= 0.18), -40.0, 15.0, lab, organ=True)
    organ(7, (-22.0 * scale + j(4), yv - rv - 10.0 * scale, 100.0), (13.0 * scale, 10.0 * scale, 1e4), j(0.3), 0.05,
          40.0 + 90.0 * enhance + jit(), 5.0, drift=(j(4), j(4)))
    organ(6, (8.0 * scale + j(3), y_aorta, 100.0), (11.0 * scale, 11.0 * scale, 1e4), 0.0, 0.02,
          40.0 + 140.0 * enhance + jit(), 5.0, drift=(j(4), j(4)))

    # Texture at two scales (~12 mm and ~3 mm), scanner noise, in-plane blur (partial volume).
    fine = max(1.0, 3.0 / spacing_yx[0])
    coarse = max(1.0, 12.0 / spacing_yx[0])
    field = _smooth_noise(rng, shape, (1.5, fine, fine))
    field += 0.7 * _smooth_noise(rng, shape, (3.0, coarse, coarse))
    field *= canvas.texture
    hu = canvas.hu
    hu += field
    del field
    sigma = max(0.5, 1.0 / spacing_yx[0])  # blur of about 1 mm, in pixels
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise *= u(8.0, 18.0) * 2.0 * math.sqrt(math.pi) * sigma  # std after the blur: 8-18 HU
    hu += noise
    del noise
    hu = ndimage.gaussian_filter(hu, sigma=(0.0, sigma, sigma), truncate=3.0, output=np.float32)
    return hu, canvas.label


def _check_shape(shape, name: str, ndim: int) -> tuple[int, ...]:
    try:
        values = tuple(int(s) for s in shape)
    except TypeError as exc:
        raise ValueError(f"{name} must be {ndim} positive ints; got {shape!r}") from exc
    if len(values) != ndim or any(v < 1 or v != s for v, s in zip(values, shape)):
        raise ValueError(f"{name} must be {ndim} positive ints; got {shape!r}")
    return values


def _rng(seed) -> np.random.Generator:
    parts = seed if isinstance(seed, (tuple, list)) else (seed,)
    if not parts or any(isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) for s in parts):
        raise TypeError(f"seed must be an int (or a non-empty tuple of ints); got {seed!r}")
    if any(s < 0 for s in parts):
        raise ValueError(f"seed must be >= 0 (numpy's SeedSequence); got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence(seed))


def make_phantom(
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_PHANTOM_SHAPE,
    spacing: Sequence[float] = DEFAULT_PHANTOM_SPACING,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Generate one synthetic abdominal CT volume with its organ labels.

    Parameters
    ----------
    seed : int
        Case seed; the same seed gives the same volume (bit-for-bit on one machine; another
        CPU's ``cos``/``arctan2`` may move a boundary voxel).
    shape : (D, H, W) ints
        Voxels along (z, y, x); default (64, 256, 256).
    spacing : (z, y, x) floats
        Voxel size in mm; default (3.0, 1.5, 1.5). The anatomy has fixed physical size, so a
        smaller field of view crops it and a larger one adds air around it.

    Returns
    -------
    ct : np.ndarray, (D, H, W) float32
        HU, from about -1000 (air) to about 850-900 (cortical bone).
    labels : np.ndarray, (D, H, W) uint8
        Class ids of :data:`PHANTOM_LABELS`.
    spacing : (z, y, x) tuple of floats
        The voxel size, as passed.

    Raises
    ------
    TypeError
        If ``seed`` is not an int.
    ValueError
        If ``seed`` is negative, or ``shape`` or ``spacing`` are not 3 positive values.

    Example
    -------
    >>> ct, labels, spacing = make_phantom(seed=1, shape=(16, 128, 128), spacing=(5.0, 3.0, 3.0))
    >>> ct.shape, ct.dtype, labels.dtype, int(labels.max()) <= 9
    ((16, 128, 128), dtype('float32'), dtype('uint8'), True)
    """
    shape = _check_shape(shape, "shape", 3)
    spacing = check_spacing(spacing, "spacing")
    rng = _rng(seed)
    d, h, w = shape
    centre = _DEPTH_CENTRE + rng.uniform(-10.0, 10.0)
    grid = _Grid(
        depth=(centre + ((d - 1) / 2.0 - np.arange(d)) * spacing[0]).astype(np.float32),
        y=((np.arange(h) - (h - 1) / 2.0) * spacing[1]).astype(np.float32),
        x=((np.arange(w) - (w - 1) / 2.0) * spacing[2]).astype(np.float32),
    )
    ct, labels = _render(grid, rng, (spacing[1], spacing[2]))
    return ct, labels, spacing


def phantom_slice(height: int = 512, width: int = 512, seed: int = 0, fov_mm: float = 400.0) -> np.ndarray:
    """One CT-like axial slice of a random phantom, in HU.

    The slice is cut at a random level between the liver dome and the kidneys, so liver,
    spleen, stomach, kidneys, vessels, spine and ribs appear in different combinations. The
    noise is continuous and the rare float32 ties are nudged apart, so no pixel equals any of
    its 8 neighbours. (A HU window clips air and bone to constants and brings ties back.)

    Parameters
    ----------
    height, width : int
        Pixels; the shorter side spans ``fov_mm``.
    seed : int
        Different seeds give different anatomy, level and noise.
    fov_mm : float
        Field of view of the shorter side in mm (default 400).

    Returns
    -------
    np.ndarray, (height, width) float32
        HU values.

    Raises
    ------
    TypeError
        If ``seed`` is not an int.
    ValueError
        If ``seed`` is negative, ``height``/``width`` are not positive ints or ``fov_mm`` is not
        positive.

    Example
    -------
    >>> s = phantom_slice(64, 96, seed=3)
    >>> s.shape, s.dtype
    ((64, 96), dtype('float32'))
    """
    height, width = _check_shape((height, width), "(height, width)", 2)
    if isinstance(fov_mm, (bool, np.bool_)) or not (isinstance(fov_mm, numbers.Real) and np.isfinite(fov_mm)
                                                     and fov_mm > 0):
        raise ValueError(f"fov_mm must be a positive number; got {fov_mm!r}")
    rng = _rng(seed)
    pixel = float(fov_mm) / min(height, width)
    grid = _Grid(
        depth=np.array([rng.uniform(40.0, 150.0)], np.float32),
        y=((np.arange(height) - (height - 1) / 2.0) * pixel).astype(np.float32),
        x=((np.arange(width) - (width - 1) / 2.0) * pixel).astype(np.float32),
    )
    ct, _ = _render(grid, rng, (pixel, pixel))
    return _break_ties(ct[0], rng)


def _break_ties(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Nudge pixels equal to an 8-neighbour by 0.01-0.02 HU until no two neighbours are equal.

    The blurred noise makes ties rare but float32 rounding still leaves a few per image.
    """
    for _ in range(100):
        tied = np.zeros(image.shape, bool)
        for a, b in (
            ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
            ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
            ((slice(1, None), slice(1, None)), (slice(None, -1), slice(None, -1))),
            ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))),
        ):
            tied[a] |= image[a] == image[b]
        if not tied.any():
            return image
        image[tied] += rng.uniform(0.01, 0.02, int(tied.sum())).astype(np.float32) * rng.choice([-1, 1], int(tied.sum()))
    raise RuntimeError("could not separate equal neighbouring pixels")  # unreachable in practice


def phantom_image(ct: np.ndarray, spacing: Sequence[float]):
    """Wrap a phantom array as a SimpleITK image centred on the origin (identity direction = LPS)."""
    spacing = check_spacing(spacing, "spacing")
    origin = tuple(-(n - 1) / 2.0 * s for n, s in zip(reversed(ct.shape), reversed(spacing)))
    return array_to_image(ct, spacing, origin=origin)


def write_phantom_dataset(
    folder: os.PathLike | str,
    n_cases: int,
    seed: int = 0,
    layout: str = "msd",
    shape: Sequence[int] = DEFAULT_PHANTOM_SHAPE,
    spacing: Sequence[float] = DEFAULT_PHANTOM_SPACING,
    overwrite: bool = False,
) -> list:
    """Write ``n_cases`` phantom cases as NIfTI (CT int16 HU, labels uint8).

    Case ``i`` uses the seed sequence ``(seed, i)``, so a larger ``n_cases`` adds cases without
    changing the first ones. A hidden record (``.lrc_phantom.json``) remembers what was
    written: calling again with the same arguments keeps existing files untouched, so a
    volume cache built from them stays valid across runs. A case is taken off the record while
    its files are written, so an interrupted call leaves nothing half-written that a later one
    would keep. Files an earlier call recorded that this call does not write (other cases,
    another layout or seed, its ``dataset.json``) are removed, so the folder holds this dataset
    only.

    Layouts
    -------
    ``"msd"``
        ``imagesTr/phantom_000.nii.gz``, ``labelsTr/phantom_000.nii.gz`` and a Medical
        Segmentation Decathlon ``dataset.json`` (labels, modality, training list).
    ``"pairs"``
        ``phantom_000_ct.nii.gz`` beside ``phantom_000_label.nii.gz`` (the default patterns of
        :func:`lrc_fast.data.find_cases`).
    ``"plain"``
        ``phantom_000.nii.gz`` only: unlabelled volumes for pre-training.

    Parameters
    ----------
    folder : path
        Created if missing; existing files with the same names are overwritten.
    n_cases : int
        Number of cases, >= 1.
    seed : int
        Dataset seed.
    layout : {"msd", "pairs", "plain"}
        File layout.
    shape, spacing
        Passed to :func:`make_phantom`.
    overwrite : bool
        Regenerate every file even when the record says it is up to date.

    Returns
    -------
    list of lrc_fast.data.Case
        The written cases (``label`` is None for ``"plain"``), in case order.

    Raises
    ------
    ValueError
        Bad ``n_cases``, ``layout``, ``shape`` or ``spacing``, or a negative ``seed``.
    TypeError
        If ``seed`` is not an int.

    Example
    -------
    >>> cases = write_phantom_dataset("phantom", 2, seed=0, layout="msd")
    >>> cases[0].image.name
    'phantom_000.nii.gz'
    """
    from .datasets import Case

    if layout not in ("msd", "pairs", "plain"):
        raise ValueError(f"layout must be 'msd', 'pairs' or 'plain'; got {layout!r}")
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise ValueError(f"n_cases must be a positive int; got {n_cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int; got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0; got {seed}")
    shape = _check_shape(shape, "shape", 3)
    spacing = check_spacing(spacing, "spacing")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params = {"version": PHANTOM_VERSION, "seed": int(seed), "layout": layout, "shape": list(shape), "spacing": list(spacing)}
    record = folder / _RECORD_NAME
    previous = {}
    if record.exists():
        try:
            previous = json.loads(record.read_text())
        except ValueError:
            previous = {}
    written = set(previous.get("cases", [])) if previous.get("params") == params and not overwrite else set()
    cases = [Case(f"phantom_{i:03d}", *_case_paths(folder, f"phantom_{i:03d}", layout)) for i in range(int(n_cases))]
    _remove_unwanted(folder, previous, {p for c in cases for p in (c.image, c.label) if p is not None})
    written &= {c.case_id for c in cases}  # an earlier call's later cases are gone

    def save_record():
        record.write_text(json.dumps({"params": params, "cases": sorted(written)}))

    for i, case in enumerate(cases):
        if case.case_id in written and case.image.exists() and (case.label is None or case.label.exists()):
            continue  # same generator and parameters: keep the file (and its mtime, for the cache)
        written.discard(case.case_id)
        save_record()  # off the record while its files are written
        ct, labels, _ = make_phantom((int(seed), i), shape, spacing)
        write_image(phantom_image(np.clip(np.rint(ct), -1024, 3071).astype(np.int16), spacing), case.image)
        if case.label is not None:
            write_image(phantom_image(labels, spacing), case.label)
        written.add(case.case_id)
    save_record()
    if layout == "msd":
        _write_msd_json(folder, cases)
    return cases


def _case_paths(folder: Path, case_id: str, layout: str) -> tuple[Path, Path | None]:
    """(image, label) of one phantom case in ``layout``; the label is None for "plain"."""
    if layout == "msd":
        return folder / "imagesTr" / f"{case_id}.nii.gz", folder / "labelsTr" / f"{case_id}.nii.gz"
    if layout == "pairs":
        return folder / f"{case_id}_ct.nii.gz", folder / f"{case_id}_label.nii.gz"
    return folder / f"{case_id}.nii.gz", None


def _remove_unwanted(folder: Path, previous: dict, keep: set) -> None:
    """Remove the files an earlier call recorded (``previous``) that are not in ``keep``, its
    dataset.json when this call writes another layout, and its subfolders (imagesTr/, labelsTr/)
    once empty: nothing that call did not write."""
    params = previous.get("params")
    layout = params.get("layout") if isinstance(params, dict) else None
    if layout not in ("msd", "pairs", "plain"):
        return
    for case_id in previous.get("cases", []):
        for path in _case_paths(folder, str(case_id), layout):
            if path is not None and path not in keep:
                path.unlink(missing_ok=True)
    if layout == "msd" and not any(p.parent.name == "imagesTr" for p in keep):
        (folder / "dataset.json").unlink(missing_ok=True)
        for sub in ("imagesTr", "labelsTr"):  # empty folders left would break a strict scan
            path = folder / sub
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def _write_msd_json(folder: Path, cases: list) -> None:
    info = {
        "name": "LRCPhantom",
        "description": "Synthetic abdominal CT phantom (lrc_fast.data.phantom)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in PHANTOM_LABELS.items()},
        "numTraining": len(cases),
        "numTest": 0,
        "training": [
            {"image": f"./imagesTr/{c.image.name}", "label": f"./labelsTr/{c.label.name}"} for c in cases
        ],
        "test": [],
    }
    (folder / "dataset.json").write_text(json.dumps(info, indent=2))
