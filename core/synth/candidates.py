"""A LUNA16-style ``candidates.csv`` for a synthetic scan: true nodules and look-alikes.

LUNA16 ships, beside ``annotations.csv``, a candidates file (``candidates_V2.csv``: columns
``seriesuid, coordX, coordY, coordZ, class``, world mm) from nodule detectors: several
hundred points per scan, of which a handful are nodules (``class`` 1) and the rest vessel
crossings, airway and pleural walls, scars (``class`` 0). Semi-supervised training cuts
crops of *unlabelled* scans at such points (``semi.candidates``), so the generator writes
one too:

* **true candidates** (class 1): one per rendered nodule, at its annotated centre moved by
  a small detector error, uniform in ``[-e, e]`` per axis with
  ``e = min(2 mm, diameter / 4)`` (so the point stays inside the nodule);
* **vessel candidates** (class 0): bright spots, i.e. vessel crossings: local maxima of the
  blurred scan inside the lungs at least :data:`MIN_DISTANCE_MM` from every nodule voxel,
  drawn among the ``3 N`` brightest of them;
* **wall candidates** (class 0): points of the lung boundary (pleura against the chest
  wall and mediastinum), as far from every nodule.

Rows of a scan are shuffled, so the class cannot be read from the order. The draws use
their own random stream (``rng_for(seed, "candidates", i)``), so every other output of a
seed keeps its bytes.
"""

from __future__ import annotations

import numpy as np

from lungfuse.core.synth.ct import PlacedNodule
from lungfuse.core.synth.latent import Geometry

#: Class-0 candidates drawn per scan (fewer when the scan has fewer such spots).
N_VESSEL, N_WALL = 8, 4
#: False candidates keep at least this distance (mm) from every nodule voxel.
MIN_DISTANCE_MM = 4.0
HEADER = "seriesuid,coordX,coordY,coordZ,class"


def _lungs(hu: np.ndarray) -> np.ndarray:
    """Lung field ``(z, y, x)`` bool: per slice, air not connected to the border (outside
    air), with holes filled so that vessels and nodules inside a lung belong to it."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(hu.astype(np.float32), (0.0, 1.0, 1.0))
    out = np.zeros(hu.shape, bool)
    for z in range(hu.shape[0]):
        air = smooth[z] < -400.0
        lab, n = ndimage.label(air)
        if n == 0:
            continue
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        inner = air & ~np.isin(lab, border)
        out[z] = ndimage.binary_fill_holes(inner)
    return out


def _far_from_nodules(mask: np.ndarray, spacing_xyz: tuple[float, float, float]) -> np.ndarray:
    """Voxels at least :data:`MIN_DISTANCE_MM` from every labelled voxel."""
    from scipy import ndimage

    if not mask.any():
        return np.ones(mask.shape, bool)
    sx, sy, sz = spacing_xyz
    dist = ndimage.distance_transform_edt(mask == 0, sampling=(sz, sy, sx))
    return dist >= MIN_DISTANCE_MM


def _pick(rng: np.random.Generator, idx: np.ndarray, n: int) -> np.ndarray:
    if len(idx) == 0 or n <= 0:
        return idx[:0]
    return idx[np.sort(rng.choice(len(idx), size=min(n, len(idx)), replace=False))]


def candidate_rows(uid: str, hu: np.ndarray, mask: np.ndarray, geom: Geometry,
                   placed: list[PlacedNodule], rng: np.random.Generator) -> list[str]:
    """CSV rows (no header) of one scan's candidates, shuffled (see module doc)."""
    from scipy import ndimage

    spacing = tuple(float(s) for s in geom.spacing)
    origin = np.asarray(geom.origin, float)
    rows: list[tuple[float, float, float, int]] = []
    for p in placed:
        e = min(2.0, p.diameter_mm / 4.0)
        c = np.asarray(p.centre, float) + rng.uniform(-e, e, 3)
        rows.append((*c.tolist(), 1))
    lungs = _lungs(hu)
    allowed = lungs & _far_from_nodules(mask, spacing)  # type: ignore[arg-type]
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), 1.0)
    peak = smooth == ndimage.maximum_filter(smooth, size=(3, 5, 5))
    vessels = np.argwhere(allowed & peak)
    if len(vessels):  # the brightest spots (vessel crossings), not lung texture
        vals = smooth[tuple(vessels.T)]
        vessels = vessels[np.sort(np.argsort(-vals, kind="stable")[:3 * N_VESSEL])]
    wall = np.argwhere(allowed & (lungs & ~ndimage.binary_erosion(lungs, np.ones((1, 3, 3)))))
    for zyx in np.concatenate([_pick(rng, vessels, N_VESSEL), _pick(rng, wall, N_WALL)]):
        world = origin + zyx[::-1].astype(float) * np.asarray(spacing)
        rows.append((*world.tolist(), 0))
    order = rng.permutation(len(rows))
    return [f"{uid},{rows[i][0]:.6f},{rows[i][1]:.6f},{rows[i][2]:.6f},{rows[i][3]}"
            for i in order]
