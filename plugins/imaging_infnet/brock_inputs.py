"""The Brock (PanCan) inputs a CT scan can give, measured on the segmented nodule and scan.

The Brock model (:mod:`lungfuse.plugins.clinical.references`) takes nine inputs; six of
them are on the CT and lungfuse measures them here, so the patient page can show the
model's probability beside the fused risk and say, input by input, what was measured:

* **size**: the nodule's long axis on the axial slice where its segmentation is largest
  (``long_axis_mm`` of :func:`~.features.quantitative`: the major axis of the ellipse with
  the same second moments, which for a round nodule is its diameter). Brock takes the
  longest diameter; Lung-RADS takes the mean of long and short axes (``mean_diameter_mm``).
  The moment-based axis follows the nodule's body; thin spicules add little area, but a
  strongly spiculated nodule still measures longer than its core.
* **type** from the HU profile: ``solid_fraction`` is the share of nodule voxels at or
  above -300 HU (:data:`~.features.SOLID_HU`). Solid when it is at least
  :data:`SOLID_MIN_FRACTION` (0.80: partial volume at the margin keeps a solid nodule's
  share below 1; voxelised solid phantoms of 5-20 mm measure 0.90-0.99), non-solid
  (ground glass) below :data:`NON_SOLID_MAX_FRACTION` (0.025: no solid component beyond
  noise), part-solid in between (phantoms with a solid core of an eighth of the volume
  measure 0.03-0.23). The solid component's mean diameter (for Lung-RADS) is measured on
  the largest connected set of solid voxels, as the nodule's on its largest axial slice.
* **count**: the nodules annotated for the series, or found by a sweep of the whole scan
  (components above the segmentation threshold, at least 10 mm3), never fewer than 1.
* **spiculation**: ``margin_irregularity`` (1 - 3D solidity: the share of the convex hull
  the nodule does not fill) of at least :data:`SPICULATION_MIN_IRREGULARITY` (0.40).
  Round and lobulated phantoms of 5-20 mm measure 0.05-0.29 (small ones highest: their
  voxel staircase), spiculated ones 0.59-0.76.
* **upper lobe**, approximated by height: the lungs are segmented (:func:`lung_mask`) and
  the nodule is called upper-lobe when its centre lies in the cranial third of the lungs'
  cranio-caudal extent (:data:`UPPER_ZONE`). This is not a lobe segmentation: the oblique
  fissure runs obliquely, so an anterior upper-lobe nodule (or the lingula, the middle
  lobe) can sit in the middle third and a superior-segment lower-lobe nodule in the upper
  third. The page says so. A scan that does not cover the lungs whole shifts the thirds;
  the result notes when the lungs reach the scan's first or last slice.
* **emphysema**: LAA-950 over the lung mask (``emphysema_fraction``), present at 5 % or
  more (``emphysema_present``). The lung mask is a simple one: voxels below -400 HU,
  3D connected components, those touching the scan's in-plane border dropped (air around
  the body, the table's foam), components of at least a tenth of the largest kept, holes
  filled slice by slice (vessels and nodules inside the lungs count as lung).

Where the segmenter found nothing at the nodule (``seg_fallback``), its mask is the
annotated ball, not a measurement; the nodule is then measured on the voxels at or above
-700 HU (:data:`FALLBACK_HU`: ground glass included, aerated lung not) connected to its
centre within the given diameter + 2 mm, and the page says so (spicules beyond that reach
are cut off). When not even that finds tissue, size is the annotated diameter (given, not
measured) and type and spiculation are missing. Age, sex and family history are never on the
CT: :mod:`.brock_page` takes them from the clinical table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .ctio import Volume
from .features import SOLID_HU, Nodule

__all__ = ["CtBrockInputs", "FALLBACK_HU", "FALLBACK_MARGIN_MM", "LUNG_AIR_HU", "NON_SOLID_MAX_FRACTION", "SOLID_MIN_FRACTION",
           "SPICULATION_MIN_IRREGULARITY", "UPPER_ZONE", "cranio_caudal_position",
           "lung_mask", "measure_brock_inputs", "nodule_type_of", "solid_component_mm"]

#: A nodule whose solid share (voxels >= -300 HU) is at least this is solid.
SOLID_MIN_FRACTION = 0.80
#: A nodule whose solid share is below this is non-solid (ground glass).
NON_SOLID_MAX_FRACTION = 0.025
#: Margin irregularity (1 - solidity) from which a nodule counts as spiculated.
SPICULATION_MIN_IRREGULARITY = 0.40
#: Share of the lungs' cranio-caudal extent, from the apex, called "upper lobe".
UPPER_ZONE = 1.0 / 3.0
#: Voxels below this (HU) are air-like: lung parenchyma, airways, air outside the body.
LUNG_AIR_HU = -400.0
#: Where the segmenter found nothing at a given location: nodule tissue is the voxels at
#: or above this (HU; ground glass included, aerated lung below) connected to the centre
#: within the given diameter plus :data:`FALLBACK_MARGIN_MM`.
FALLBACK_HU = -700.0
FALLBACK_MARGIN_MM = 2.0
#: Air components of at least this share of the largest one are kept as lung.
_LUNG_MIN_SHARE = 0.10


@dataclass
class CtBrockInputs:
    """The Brock inputs measured on one scan for one nodule, with how each was reached.

    Values are None where they could not be measured; ``how`` says, per input name of
    :data:`~lungfuse.plugins.clinical.references.BROCK_INPUTS`, how it was measured or why
    it is missing. ``given`` names the inputs whose value comes from elsewhere than the
    scan's voxels (the annotated diameter when the segmenter found nothing).
    ``mean_diameter_mm`` and ``solid_component_mm`` feed Lung-RADS.
    """

    size_mm: float | None = None
    mean_diameter_mm: float | None = None
    nodule_type: str | None = None
    solid_fraction: float | None = None
    solid_component_mm: float | None = None
    nodule_count: int | None = None
    spiculation: bool | None = None
    margin_irregularity: float | None = None
    upper_lobe: bool | None = None
    position_from_apex: float | None = None
    emphysema: bool | None = None
    laa950: float | None = None
    how: dict[str, str] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def values(self) -> dict[str, Any]:
        """The Brock inputs the CT gave, by name (None where it gave none)."""
        return {"size_mm": self.size_mm, "nodule_type": self.nodule_type,
                "nodule_count": self.nodule_count, "spiculation": self.spiculation,
                "upper_lobe": self.upper_lobe, "emphysema": self.emphysema}

    def measured(self) -> set[str]:
        """Names of the inputs measured on the scan (a value, and not ``given``)."""
        return {k for k, v in self.values().items() if v is not None and k not in self.given}


def nodule_type_of(solid_fraction: float) -> str:
    """``solid``, ``part-solid`` or ``non-solid`` from the share of solid voxels (see the
    module docstring for the thresholds and why)."""
    if solid_fraction >= SOLID_MIN_FRACTION:
        return "solid"
    if solid_fraction < NON_SOLID_MAX_FRACTION:
        return "non-solid"
    return "part-solid"


def _axes_mm(mask2d: np.ndarray, spacing_yx: tuple[float, float]) -> tuple[float, float]:
    """(long, short) axes in mm of a 2D mask (second-moment ellipse, as ``quantitative``)."""
    import math

    from skimage.measure import regionprops

    rp = regionprops(mask2d.astype(np.uint8), spacing=spacing_yx)[0]
    long_ax, short_ax = float(rp.axis_major_length), float(rp.axis_minor_length)
    if long_ax == 0:
        long_ax = short_ax = math.sqrt(4 * float(rp.area) / math.pi)
    return long_ax, short_ax


def solid_component_mm(hu: np.ndarray, mask: np.ndarray,
                       spacing_xyz: tuple[float, float, float]) -> float | None:
    """Mean diameter (mm) of a nodule's solid component: the largest 26-connected set of
    voxels >= -300 HU inside ``mask`` (``hu`` and ``mask`` the same ``(z, y, x)`` crop),
    the mean of its long and short axes on its largest axial slice; None without one."""
    from scipy import ndimage

    solid = mask.astype(bool) & (hu >= SOLID_HU)
    lab, n = ndimage.label(solid, structure=np.ones((3, 3, 3)))
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    part = lab == int(np.argmax(sizes)) + 1
    z = int(np.argmax(part.reshape(part.shape[0], -1).sum(1)))
    long_ax, short_ax = _axes_mm(part[z], (float(spacing_xyz[1]), float(spacing_xyz[0])))
    return (long_ax + short_ax) / 2.0


def lung_mask(hu: np.ndarray) -> np.ndarray:
    """A simple lung mask of a ``(z, y, x)`` HU volume (see the module docstring): air-like
    voxels not connected to the in-plane border, large components only, holes filled per
    axial slice. Empty when nothing qualifies."""
    from scipy import ndimage

    air = np.asarray(hu) < LUNG_AIR_HU
    lab, n = ndimage.label(air)
    if n == 0:
        return np.zeros(air.shape, bool)
    border = np.unique(np.concatenate([lab[:, 0, :].ravel(), lab[:, -1, :].ravel(),
                                       lab[:, :, 0].ravel(), lab[:, :, -1].ravel()]))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    sizes[border] = 0
    if sizes.max() == 0:
        return np.zeros(air.shape, bool)
    keep = np.flatnonzero(sizes >= _LUNG_MIN_SHARE * sizes.max())
    lungs = np.isin(lab, keep)
    for z in range(lungs.shape[0]):
        if lungs[z].any():
            lungs[z] = ndimage.binary_fill_holes(lungs[z])
    return lungs


def cranio_caudal_position(vol: Volume, lungs: np.ndarray,
                           centre_index: np.ndarray) -> tuple[float, list[str]] | None:
    """Where the nodule centre (voxel x, y, z) sits between the lungs' apex (0) and base
    (1), by world height (LPS: +z is superior), with notes; None for an empty mask or
    lungs one slice high."""
    zs = np.flatnonzero(lungs.reshape(lungs.shape[0], -1).any(1))
    if zs.size == 0:
        return None
    cx, cy = float(centre_index[0]), float(centre_index[1])
    heights = vol.index_to_world(np.array([[cx, cy, float(z)] for z in (zs[0], zs[-1])]))[:, 2]
    top, bottom = float(heights.max()), float(heights.min())
    if top - bottom <= 0:
        return None
    zc = float(vol.index_to_world(np.asarray(centre_index, float))[2])
    notes = []
    if zs[0] == 0 or zs[-1] == lungs.shape[0] - 1:
        notes.append("the lungs reach the scan's first or last slice, so the scan may not "
                     "cover them whole: the height is relative to the lungs seen")
    pos = (top - zc) / (top - bottom)
    if not 0.0 <= pos <= 1.0:
        notes.append("the nodule centre lies outside the lungs' height range")
    return float(np.clip(pos, 0.0, 1.0)), notes


def _threshold_nodule(vol: Volume, nodule: Nodule,
                      diameter_mm: float | None) -> Nodule | None:
    """The nodule as the voxels >= :data:`FALLBACK_HU` 26-connected to its centre within
    its given diameter + :data:`FALLBACK_MARGIN_MM` (``ctio.nodule_mask`` with
    ``refine_hu``), with its features; None without a diameter or when only the ball
    itself would remain (nothing above the threshold at the centre)."""
    from .ctio import nodule_mask
    from .features import _box, quantitative

    if diameter_mm is None or not diameter_mm > 0:
        return None
    world = vol.index_to_world(np.asarray(nodule.centre_index, float))
    nod = (float(world[0]), float(world[1]), float(world[2]), float(diameter_mm))
    full = nodule_mask(vol, [nod], refine_hu=FALLBACK_HU, margin_mm=FALLBACK_MARGIN_MM) > 0
    box = _box(vol, np.asarray(nodule.centre_index, float),
               diameter_mm / 2.0 + FALLBACK_MARGIN_MM + 1.0)
    mask = full[box]
    if not mask.any() or not (vol.array[box][mask] >= FALLBACK_HU).all():
        return None  # nodule_mask kept the bare ball: nothing above the threshold
    feats = quantitative(vol, mask, box)
    feats["seg_fallback"] = 1.0
    return Nodule(np.asarray(nodule.centre_index, float), box, mask, feats)


def measure_brock_inputs(vol: Volume, nodule: Nodule | None, count: int | None = None,
                         count_how: str = "", lungs: np.ndarray | None = None,
                         annotated_diameter_mm: float | None = None) -> CtBrockInputs:
    """The Brock inputs of ``nodule`` (a segmented :class:`~.features.Nodule` on ``vol``;
    None: no nodule found) and its scan.

    ``count`` is the number of nodules on the scan (annotated, or found by a sweep, as
    ``count_how`` says; None: unknown), ``lungs`` a lung mask of ``vol`` (computed with
    :func:`lung_mask` when None) and ``annotated_diameter_mm`` the diameter given with the
    nodule's location, used as its size when the segmenter found nothing there.
    """
    from lungfuse.plugins.clinical.references import emphysema_fraction, emphysema_present

    out = CtBrockInputs()
    how = out.how
    lungs = lung_mask(vol.array) if lungs is None else lungs
    if lungs.any():
        out.laa950 = emphysema_fraction(vol.array, lungs)
        out.emphysema = emphysema_present(out.laa950)
        how["emphysema"] = (f"LAA-950 {100 * out.laa950:.1f}% of lung voxels (present at "
                            ">= 5%)")
    else:
        how["emphysema"] = "no lungs found on the scan (HU threshold -400)"
        how["upper_lobe"] = "no lungs found on the scan (HU threshold -400)"
    if count is not None:
        out.nodule_count = max(1, int(count)) if nodule is not None else max(0, int(count))
        how["nodule_count"] = count_how or f"{count} nodule(s) on the scan"
        if nodule is not None and int(count) < 1:
            how["nodule_count"] += "; counted as 1, the nodule assessed"
        if out.nodule_count == 0:
            out.nodule_count = None
            how["nodule_count"] = "no nodule found on the scan"
    else:
        how["nodule_count"] = count_how or "the nodules on the scan were not counted"
    if nodule is None:
        for k in ("size_mm", "nodule_type", "spiculation"):
            how[k] = "no nodule found on the scan"
        how.setdefault("upper_lobe", "no nodule found on the scan")
        return out

    f = nodule.features
    if lungs.any():
        placed = cranio_caudal_position(vol, lungs, nodule.centre_index)
        if placed is None:
            how["upper_lobe"] = "the lungs span a single slice: no height to compare"
        else:
            pos, notes = placed
            out.position_from_apex = pos
            out.upper_lobe = pos <= UPPER_ZONE
            how["upper_lobe"] = (f"centre at {100 * pos:.0f}% of the lungs' height from the "
                                 "apex; upper third = upper lobe (a height approximation, "
                                 "not a lobe segmentation)")
            out.notes.extend(notes)
    by = "the segmentation"
    if f.get("seg_fallback", 0.0) >= 0.5:
        refined = _threshold_nodule(vol, nodule, annotated_diameter_mm)
        if refined is None:
            why = ("the segmenter found no nodule at the given location and no tissue above "
                   f"{FALLBACK_HU:g} HU was found there, so its margin and HU profile were "
                   "not measured")
            how["nodule_type"] = how["spiculation"] = why
            if annotated_diameter_mm is not None:
                out.size_mm = out.mean_diameter_mm = float(annotated_diameter_mm)
                out.given.add("size_mm")
                how["size_mm"] = "the annotated diameter (the segmenter found no nodule there)"
            else:
                how["size_mm"] = why
            return out
        nodule, f = refined, refined.features
        by = (f"an HU threshold ({FALLBACK_HU:g} HU, within the given diameter + "
              f"{FALLBACK_MARGIN_MM:g} mm: the segmenter found no nodule there)")
        out.notes.append(f"the nodule was measured by {by}; spicules beyond that reach are "
                         "cut off, so spiculation may be under-called")

    out.size_mm = float(f["long_axis_mm"])
    out.mean_diameter_mm = (float(f["long_axis_mm"]) + float(f["short_axis_mm"])) / 2.0
    how["size_mm"] = (f"long axis {out.size_mm:.1f} mm on the largest axial slice of {by} "
                      f"(short axis {float(f['short_axis_mm']):.1f} mm)")

    out.solid_fraction = float(f["solid_fraction"])
    out.nodule_type = nodule_type_of(out.solid_fraction)
    how["nodule_type"] = (f"{100 * out.solid_fraction:.0f}% of its voxels >= -300 HU (solid "
                          f">= {100 * SOLID_MIN_FRACTION:.0f}%, non-solid < "
                          f"{100 * NON_SOLID_MAX_FRACTION:.1f}%)")
    if out.nodule_type == "part-solid":
        out.solid_component_mm = solid_component_mm(vol.array[nodule.box], nodule.mask,
                                                     tuple(float(s) for s in vol.spacing))
    out.margin_irregularity = float(f["margin_irregularity"])
    out.spiculation = out.margin_irregularity >= SPICULATION_MIN_IRREGULARITY
    how["spiculation"] = (f"margin irregularity (1 - solidity) {out.margin_irregularity:.2f}; "
                          f"spiculated from {SPICULATION_MIN_IRREGULARITY:.2f}")
    return out
