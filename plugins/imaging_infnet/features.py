"""Per-nodule quantitative CT features and per-patient feature rows.

For a segmented nodule ``M`` (voxels, world spacing ``s``) on a scan in HU:

* ``volume_mm3 = |M| · s_x s_y s_z``
* ``long_axis_mm``/``short_axis_mm``: major/minor axis lengths (of the ellipse with the
  same second moments, scikit-image ``regionprops``) on the axial slice where ``M`` is
  largest, the clinical long/short diameters;
* ``mean_hu``, ``std_hu`` over ``M``; ``solid_fraction`` = share of voxels ≥ -300 HU;
* ``sphericity = π^(1/3) (6V)^(2/3) / A`` with ``A`` the marching-cubes surface area (1
  for a ball, less for irregular shapes);
* ``margin_irregularity = 1 - solidity`` (3D ``regionprops`` solidity: volume over
  convex-hull volume);
* ``seg_prob`` = mean network probability over ``M``; ``seg_fallback`` = 1 where the
  network found nothing and the annotated ball was used instead.

The patient row takes the most suspicious nodule, defined as the largest segmented
volume (size is the strongest single malignancy predictor in Brock/Lung-RADS), adds the
nodule count, and the mask-weighted pooled embedding of that nodule's central slice.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .ctio import Volume

log = logging.getLogger("lungfuse.imaging")

QUANT_COLUMNS = ("long_axis_mm", "short_axis_mm", "volume_mm3", "mean_hu", "std_hu",
                 "solid_fraction", "sphericity", "margin_irregularity", "seg_prob",
                 "seg_fallback")
SOLID_HU = -300.0


@dataclass
class Nodule:
    """A found nodule: its voxel mask (bounding-box crop), where the crop sits, features."""

    centre_index: np.ndarray  # x, y, z
    box: tuple[slice, slice, slice]
    mask: np.ndarray
    features: dict[str, float]


def quantitative(vol: Volume, mask: np.ndarray, box: tuple[slice, slice, slice],
                 prob: np.ndarray | None = None) -> dict[str, float]:
    """Features of one nodule mask (a crop at ``box`` of the scan)."""
    from skimage.measure import marching_cubes, mesh_surface_area, regionprops

    hu = vol.array[box]
    sx, sy, sz = (float(v) for v in vol.spacing)
    m = mask.astype(bool)
    n = int(m.sum())
    out = dict.fromkeys(QUANT_COLUMNS, 0.0)
    if n == 0:
        return out
    vals = hu[m]
    volume = n * sx * sy * sz
    areas = m.reshape(m.shape[0], -1).sum(1)
    zmax = int(np.argmax(areas))
    rp2 = regionprops(m[zmax].astype(np.uint8), spacing=(sy, sx))[0]
    long_ax = float(rp2.axis_major_length)
    short_ax = float(rp2.axis_minor_length)
    if long_ax == 0:
        long_ax = short_ax = math.sqrt(4 * float(rp2.area) / math.pi)
    padded = np.pad(m, 1).astype(np.float32)
    try:
        verts, faces, _, _ = marching_cubes(padded, 0.5, spacing=(sz, sy, sx))
        area = float(mesh_surface_area(verts, faces))
        sphericity = float(np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area) if area > 0 else 0.0
    except (ValueError, RuntimeError):
        sphericity = 0.0
    # a region one voxel thick along any axis has no 3D convex hull (qhull refuses it)
    flat = any(int(np.ptp(ax)) == 0 for ax in np.nonzero(m))
    solidity = 1.0
    if not flat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # qhull's report on other degenerate regions
            try:
                solidity = float(regionprops(m.astype(np.uint8))[0].solidity)
            except Exception:  # noqa: BLE001 - qhull fails on degenerate regions
                solidity = 1.0
        if not math.isfinite(solidity) or solidity <= 0:
            solidity = 1.0
    out.update({
        "long_axis_mm": long_ax, "short_axis_mm": short_ax, "volume_mm3": volume,
        "mean_hu": float(vals.mean()), "std_hu": float(vals.std()),
        "solid_fraction": float((vals >= SOLID_HU).mean()),
        "sphericity": min(sphericity, 1.5), "margin_irregularity": max(0.0, 1.0 - solidity),
        "seg_prob": float(prob[m].mean()) if prob is not None else 0.0,
    })
    return out


def _box(vol: Volume, centre: np.ndarray, radius_mm: float) -> tuple[slice, slice, slice]:
    half = np.ceil(radius_mm / vol.spacing).astype(int) + 1
    c = np.round(centre).astype(int)
    nx, ny, nz = vol.shape_xyz
    lo = np.maximum(c - half, 0)
    hi = np.minimum(c + half + 1, [nx, ny, nz])
    return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])


def segment_at(predictor, vol: Volume, centre: np.ndarray, diameter_mm: float,
               threshold: float = 0.5) -> Nodule:
    """Segment the nodule around ``centre`` (voxel x,y,z): the thresholded component
    touching the annotated ball (or its centre); the ball itself when nothing is found."""
    from scipy import ndimage

    r = max(diameter_mm / 2.0, 2.0)
    box = _box(vol, centre, 1.5 * r + 4.0)
    zs = list(range(box[0].start, box[0].stop))
    prob = predictor.predict_region(vol, zs, centre[:2])[box]
    sub = vol.like(vol.array[box])
    sub.origin = vol.index_to_world([box[2].start, box[1].start, box[0].start])
    local_c = centre - np.array([box[2].start, box[1].start, box[0].start])
    gz, gy, gx = np.meshgrid(*(np.arange(s.stop - s.start) for s in box), indexing="ij")
    idx = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], 1).astype(float)
    dist = np.linalg.norm((idx - local_c) * vol.spacing, axis=1).reshape(gz.shape)
    ball = dist <= diameter_mm / 2.0
    if not ball.any():
        ball = dist <= dist.min()
    lab, _ = ndimage.label(prob >= threshold, structure=np.ones((3, 3, 3)))
    hits = np.unique(lab[ball])
    hits = hits[hits > 0]
    fallback = hits.size == 0
    mask = ball if fallback else np.isin(lab, hits)
    feats = quantitative(vol, mask, box, prob)
    feats["seg_fallback"] = float(fallback)
    return Nodule(np.asarray(centre, float), box, mask, feats)


def sweep(predictor, vol: Volume, threshold: float = 0.5, min_volume_mm3: float = 10.0,
          max_nodules: int = 20) -> list[Nodule]:
    """Nodules found by segmenting every slice: 3D components above ``threshold``."""
    from scipy import ndimage

    prob = predictor.predict_volume(vol)
    lab, n = ndimage.label(prob >= threshold, structure=np.ones((3, 3, 3)))
    voxel = float(np.prod(vol.spacing))
    found = []
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        m = lab[sl] == k
        if m.sum() * voxel < min_volume_mm3:
            continue
        zc, yc, xc = (float(v) + s.start for v, s in zip(ndimage.center_of_mass(m), sl,
                                                          strict=True))
        feats = quantitative(vol, m, sl, prob[sl])
        found.append(Nodule(np.array([xc, yc, zc]), sl, m, feats))
    found.sort(key=lambda nd: -nd.features["volume_mm3"])
    return found[:max_nodules]


def embedding_of(predictor, vol: Volume, nodule: Nodule) -> np.ndarray:
    """Pooled deep features of the nodule's central slice, weighted by its mask."""
    import torch

    from .dataset import cut_slice

    z = int(np.clip(round(float(nodule.centre_index[2])), 0, vol.array.shape[0] - 1))
    full = np.zeros(vol.array.shape, np.float32)
    full[nodule.box] = nodule.mask
    if not full[z].any():
        zz = np.nonzero(full.reshape(full.shape[0], -1).any(1))[0]
        z = int(zz[np.argmin(np.abs(zz - z))]) if zz.size else z
    s = predictor.slices
    x, m = cut_slice(vol, z, s, full, nodule.centre_index[:2])
    if m is None or float(m.sum()) == 0:
        m = torch.ones(s.img_size, s.img_size)
    return predictor.embed(x[None], m[None]).numpy()[0]


def patient_row(nodules: Sequence[Nodule], embedding: np.ndarray | None,
                embed_dim: int) -> dict[str, float]:
    """One feature row: nodule count, the most suspicious nodule's features, embedding."""
    row: dict[str, float] = {"n_nodules": float(len(nodules))}
    if nodules:
        top = max(nodules, key=lambda nd: nd.features["volume_mm3"])
        row.update({k: float(top.features[k]) for k in QUANT_COLUMNS})
        row["log_volume_mm3"] = math.log1p(row["volume_mm3"])
    else:
        row.update(dict.fromkeys(QUANT_COLUMNS, 0.0))
        row["log_volume_mm3"] = 0.0
    emb = embedding if embedding is not None else np.zeros(embed_dim, np.float32)
    row.update({f"emb_{i:03d}": float(v) for i, v in enumerate(emb)})
    return row
