"""Render a miniature chest CT phantom with nodules, in Hounsfield units.

Arrays are indexed ``[z, y, x]`` (SimpleITK's numpy order). World coordinates (mm, LPS,
direction identity) are ``origin + index * spacing`` per axis. The anatomy is drawn in
normalised in-plane coordinates ``u, v`` in [-1, 1] (x right-left, y anterior-posterior)
so that the same chest fits every grid; nodules are drawn in millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungfuse.core.synth.latent import Geometry, Nodule

LUNG_CENTRES = ((-0.42, -0.02), (0.42, -0.02))
LUNG_AXES = (0.34, 0.52)


@dataclass
class PlacedNodule:
    """A rendered nodule: its world centre (x, y, z) in mm and its annotated diameter."""

    centre: tuple[float, float, float]
    diameter_mm: float
    shape: str
    solidity: str


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int],
                  factor: int = 4) -> np.ndarray:
    """A smooth zero-mean unit-variance random field: low-res noise, blurred, upsampled."""
    from scipy import ndimage

    low = tuple(max(3, s // factor + 2) for s in shape)
    f = ndimage.gaussian_filter(rng.normal(size=low), 1.0, mode="wrap")
    f = ndimage.zoom(f, [s / lo for s, lo in zip(shape, low, strict=True)], order=1)
    f = f[: shape[0], : shape[1], : shape[2]]
    return ((f - f.mean()) / (f.std() + 1e-9)).astype(np.float32)


def _taper(w: np.ndarray) -> np.ndarray:
    """Lung size along z (w = 0 base, 1 apex)."""
    return 1.0 - 0.35 * w**2


def render(geom: Geometry, nodules: list[Nodule], rng: np.random.Generator,
           noise_hu: float = 18.0) -> tuple[np.ndarray, np.ndarray, list[PlacedNodule]]:
    """Return (HU int16 volume, uint8 label mask, placed nodules in label order 1..n)."""
    nx, ny, nz = geom.size
    sx, sy, sz = geom.spacing
    u = ((np.arange(nx) + 0.5) / nx * 2 - 1).astype(np.float32)[None, None, :]
    v = ((np.arange(ny) + 0.5) / ny * 2 - 1).astype(np.float32)[None, :, None]
    w = (np.arange(nz) / max(nz - 1, 1)).astype(np.float32)[:, None, None]
    shape3 = (nz, ny, nx)

    hu = np.full(shape3, -1000.0, np.float32)
    # table: two thin carbon plates with foam in between, below the patient
    tab = np.abs(u) < 0.96
    hu[:, ((v > 0.80) & (v < 0.83))[0, :, 0], :] = np.where(tab[0, 0], 200.0, -1000.0)
    hu[:, ((v >= 0.83) & (v < 0.90))[0, :, 0], :] = np.where(tab[0, 0], -900.0, -1000.0)
    hu[:, ((v >= 0.90) & (v < 0.93))[0, :, 0], :] = np.where(tab[0, 0], 200.0, -1000.0)
    # body: fat rim, then muscle / soft tissue
    body_r = (u / 0.92) ** 2 + ((v + 0.05) / 0.72) ** 2
    body = np.broadcast_to(body_r <= 1.0, shape3)
    hu[body] = -100.0
    inner = np.broadcast_to(body_r <= 0.86, shape3)
    hu[inner] = 40.0
    # spine (cancellous core, cortical rim), sternum
    d_sp = np.sqrt(u**2 + ((v - 0.5) / 1.0) ** 2)
    hu[np.broadcast_to(d_sp < 0.13, shape3)] = 700.0
    hu[np.broadcast_to(d_sp < 0.10, shape3)] = 250.0
    stern = (np.abs(u) < 0.07) & (np.abs(v + 0.66) < 0.035)
    hu[np.broadcast_to(stern, shape3)] = 400.0
    # aorta, slightly denser than muscle
    d_ao = np.sqrt((u - 0.12) ** 2 + (v - 0.28) ** 2)
    hu[np.broadcast_to(d_ao < 0.08, shape3)] = 50.0
    # ribs: small bone disks on a ring outside the lungs, in bands along z
    z_mm = np.arange(nz) * sz
    phase = rng.uniform(0, 2 * np.pi)
    band = np.sin(2 * np.pi * z_mm / 22.0 + phase) > 0.25
    for ang in np.linspace(0, 2 * np.pi, 14, endpoint=False) + rng.uniform(0, 0.2):
        cu, cv = 0.83 * np.cos(ang), -0.05 + 0.62 * np.sin(ang)
        if cv > 0.4 and abs(cu) < 0.3:
            continue  # no ribs over the spine
        disk = ((u - cu) ** 2 + (v - cv) ** 2) < 0.045**2
        hu[band[:, None, None] & disk] = 600.0

    # lungs: textured parenchyma around -850 with vessels
    au, av = LUNG_AXES
    t = _taper(w)
    lung = np.zeros(shape3, bool)
    hilum_d = np.full(shape3, 9.0, np.float32)
    for cu, cv in LUNG_CENTRES:
        e = ((u - cu) / (au * t)) ** 2 + ((v - cv) / (av * t)) ** 2
        lung |= e <= 1.0
        hilum_d = np.minimum(hilum_d, np.sqrt((u - cu * 0.6) ** 2 + (v - cv) ** 2))
    texture = _smooth_field(rng, shape3, 3)
    parenchyma = -850.0 + 25.0 * texture
    f1 = _smooth_field(rng, shape3, 5)
    f2 = _smooth_field(rng, shape3, 5)
    width = 0.22 * np.clip(1.2 - hilum_d, 0.3, 1.0)
    vessel = np.clip(1.0 - (f1**2 + f2**2) / width**2, 0.0, 1.0)
    parenchyma = parenchyma + (40.0 - parenchyma) * np.sqrt(vessel)
    hu[lung] = parenchyma[lung]

    # nodules, in mm around continuous centres inside the lungs
    mask = np.zeros(shape3, np.uint8)
    placed: list[PlacedNodule] = []
    taken: list[tuple[np.ndarray, float]] = []
    fov = np.array([nx * sx, ny * sy], np.float64)
    for nod in nodules:
        res = _place(rng, geom, nod, fov, taken)
        if res is None:
            continue
        c_idx, radius = res
        label = len(placed) + 1
        ext = _draw_nodule(hu, mask, label, c_idx, radius, nod, geom, rng)
        taken.append((c_idx * np.array([sx, sy, sz]), radius * ext))
        world = tuple(float(o + ci * s) for o, ci, s in
                      zip(geom.origin, c_idx, geom.spacing, strict=True))
        placed.append(PlacedNodule(world, round(2 * radius, 2), nod.shape, nod.solidity))

    hu += rng.normal(0.0, noise_hu, shape3).astype(np.float32)
    hu = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    return hu, mask, placed


def _place(rng: np.random.Generator, geom: Geometry, nod: Nodule, fov: np.ndarray,
           taken: list[tuple[np.ndarray, float]]) -> tuple[np.ndarray, float] | None:
    """Pick a continuous voxel centre (x, y, z) where the nodule core fits in a lung.

    Returns the centre index (floats, within 0.35 voxel of a voxel centre so nearest-
    voxel rounding is unambiguous) and the core radius in mm (shrunk if needed)."""
    nx, ny, nz = geom.size
    sz = geom.spacing[2]
    radius = nod.diameter_mm / 2
    au, av = LUNG_AXES
    for _attempt in range(6):
        ru, rv = radius / (fov[0] / 2), radius / (fov[1] / 2)
        rz = radius / sz
        if nz - 1 - 2 * rz > 1:
            for _try in range(60):
                k = rng.uniform(rz, nz - 1 - rz)
                wk = k / max(nz - 1, 1)
                tk = float(_taper(np.float32(wk)))
                cu, cv = LUNG_CENTRES[int(rng.integers(2))]
                a, b = au * tk - ru * 1.1, av * tk - rv * 1.1
                if a <= 0 or b <= 0:
                    break
                r, th = np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
                uu, vv = cu + a * r * np.cos(th), cv + b * r * np.sin(th)
                ix = (uu + 1) / 2 * nx - 0.5
                iy = (vv + 1) / 2 * ny - 0.5
                c = np.array([ix, iy, k])
                c = np.round(c) + rng.uniform(-0.3, 0.3, 3)
                if not (0 <= c[0] <= nx - 1 and 0 <= c[1] <= ny - 1 and 0 <= c[2] <= nz - 1):
                    continue
                pos = c * np.array(geom.spacing)
                if all(np.linalg.norm(pos - p) > radius + rr + 1.0 for p, rr in taken):
                    return c, radius
        radius *= 0.8
        if radius < 1.0:
            return None
    return None


def _draw_nodule(hu: np.ndarray, mask: np.ndarray, label: int, c: np.ndarray, radius: float,
                 nod: Nodule, geom: Geometry, rng: np.random.Generator) -> float:
    """Paint one nodule into ``hu`` and ``mask`` (only where still unlabelled).

    The boundary is a radius function of direction ``n``: ``r(n) = R (1 + sum_j a_j
    max(n.d_j, 0)^p_j)``, with a few broad lobes (p = 4) for lobulated shapes and many
    thin spikes (p = 120) for spiculated ones. Returns the maximum extent factor."""
    sx, sy, sz = geom.spacing
    nz, ny, nx = hu.shape
    if nod.shape == "round":
        dirs, amps, powers = np.zeros((0, 3)), np.zeros(0), np.zeros(0)
    else:
        nl = int(rng.integers(4, 8))
        dirs = rng.normal(size=(nl, 3))
        amps = rng.uniform(0.25, 0.5, nl)
        powers = np.full(nl, 4.0)
        if nod.shape == "spiculated":
            ns = int(rng.integers(16, 28))
            dirs = np.vstack([dirs, rng.normal(size=(ns, 3))])
            amps = np.concatenate([amps, rng.uniform(0.8, 1.8, ns)])
            powers = np.concatenate([powers, np.full(ns, 120.0)])
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True).clip(1e-9)
    ext = 1.0 + float(amps.max(initial=0.0)) + 0.1
    half = [int(np.ceil(radius * ext / s)) + 2 for s in (sx, sy, sz)]
    lo = [max(0, int(np.floor(ci)) - h) for ci, h in zip(c, half, strict=True)]
    hi = [min(n, int(np.ceil(ci)) + h + 1) for ci, h, n in zip(c, half, (nx, ny, nz), strict=True)]
    zz = (np.arange(lo[2], hi[2]) - c[2]) * sz
    yy = (np.arange(lo[1], hi[1]) - c[1]) * sy
    xx = (np.arange(lo[0], hi[0]) - c[0]) * sx
    dz, dy, dx = np.meshgrid(zz, yy, xx, indexing="ij")
    r = np.sqrt(dx**2 + dy**2 + dz**2)
    rr = np.maximum(r, 1e-6)
    reff = np.full(r.shape, radius)
    for d, a, p in zip(dirs, amps, powers, strict=True):
        cos = (dx * d[0] + dy * d[1] + dz * d[2]) / rr
        reff += radius * a * np.maximum(cos, 0.0) ** p
    # soft edge (partial volume) over about 0.7 mm
    alpha = np.clip((reff - r) / 0.7 + 0.5, 0.0, 1.0)
    if nod.solidity == "solid":
        val = 30.0 + 12.0 * rng.normal(size=r.shape)
    elif nod.solidity == "ground-glass":
        val = -560.0 + 40.0 * rng.normal(size=r.shape)
    else:  # part-solid: a solid core in a ground-glass halo
        val = np.where(r < 0.5 * radius, 20.0, -560.0) + 30.0 * rng.normal(size=r.shape)
    sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    sub = hu[sl]
    sub += (val - sub) * alpha
    msub = mask[sl]
    inside = (r <= reff) & (msub == 0)
    msub[inside] = label
    ci = tuple(int(np.round(x)) for x in (c[2], c[1], c[0]))
    mask[ci] = label  # the annotated centre always carries its own label
    return ext
