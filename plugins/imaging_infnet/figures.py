"""Figures of the ``infnet`` modality for lungfuse's pages: the segmented nodule on its CT
slice. :class:`~lungfuse.plugins.imaging_infnet.plugin.InfNetModality` returns them from
its ``patient_section`` (the patient page of ``lungfuse score``) and ``report_section``
(example segmentations in a run's ``report.html``) hooks; core only renders the
sections it is handed.

Imported only when a page is drawn (torch, SimpleITK and matplotlib load here).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungfuse.core.errors import DataError

log = logging.getLogger("lungfuse.imaging")

#: Nodule measurements quoted under the patient-page figure.
_FACTS = ("long_axis_mm", "volume_mm3", "mean_hu")


@dataclass
class NoduleFigure:
    """A drawn nodule: the matplotlib figure and what it shows.

    ``source`` says where the segmentation was centred ("given nodule location",
    "largest segmented component" or "no nodule found"), ``slice`` is the axial index
    drawn, ``facts`` the nodule's measurements (``long_axis_mm``, ``volume_mm3``,
    ``mean_hu``, ``seg_prob``, ``seg_fallback``) where a nodule was segmented. With
    ``count=True``, ``volume`` (the scan read), ``nodule`` (the segmented
    :class:`~.features.Nodule` or None), ``diameter_mm`` (the diameter given with its
    location), ``count`` (nodules on the scan; None when unknown) and ``count_how`` (how
    they were counted) are filled for the Brock section.
    """

    figure: Any
    source: str
    slice: int
    facts: dict[str, float] = field(default_factory=dict)
    volume: Any = None
    nodule: Any = None
    diameter_mm: float | None = None
    count: int | None = None
    count_how: str = ""


def predictor_of(model_state: Mapping[str, Any]) -> Any:
    """An eager (fast path off) predictor of the fitted segmenter ``model_state`` (the
    ``model`` entry of the modality's state: hyper-parameters, weights, slice settings),
    rebuilt through :meth:`InfNet.from_hparams`, the one constructor from saved settings."""
    from .config import FastPath, SliceSettings
    from .infer import Predictor
    from .network import InfNet

    net = InfNet.from_hparams(model_state["hparams"], "fitted infnet state")
    net.load_state_dict(model_state["state_dict"])
    return Predictor(net, SliceSettings(**model_state["slices"]), FastPath(enabled=False))


def nodule_figure(predictor: Any, volume: Path, uid: str, *,
                  nodule: tuple[float, float, float, float] | None = None,
                  annotations: Path | None = None, masks_dir: Path | None = None,
                  threshold: float = 0.5, title: str = "", count: bool = False,
                  series_uid: str | None = None) -> NoduleFigure:
    """The segmented nodule of scan ``volume`` (series ``uid``) on its axial slice.

    The network segments around ``nodule`` (world x, y, z in mm and diameter) or, without
    one, around the first nodule ``annotations`` lists for ``uid``; failing both, the
    largest component a sweep of the whole scan finds (``sweep``). The slice drawn is the
    nodule centre's, moved to the nearest slice holding segmented voxels when the centre's
    has none. Red: the segmentation (probability > ``threshold``); green: the ground-truth
    mask ``masks_dir/<uid>`` where there is one (an unusable mask is a warning, not an
    error). Raises :class:`DataError` for an unreadable scan.

    ``count=True`` also counts the nodules on the scan, for the Brock model: the rows
    ``annotations`` lists for ``uid`` when it lists any, else the components a sweep of
    the whole scan finds (the sweep that locates the nodule when none is given; a sweep of
    every slice, run for the count, when a location was given).

    ``series_uid``: the series of a DICOM study folder to draw (the one scored), else the
    one ctio's rule picks.
    """
    import numpy as np

    from lungfuse.core.report.figures import overlay_figure

    from . import ctio
    from .features import segment_at, sweep

    vol = ctio.read_volume(volume, series_uid)
    n_annotated = 0
    if annotations is not None and (nodule is None or count):
        try:
            ann = ctio.read_annotations(annotations)
        except DataError:
            if nodule is None:
                raise
            ann = None  # only the count needed it: count by a sweep instead
        sel = ann[ann["seriesuid"] == uid] if ann is not None else []
        n_annotated = len(sel)
        if nodule is None and n_annotated:
            r = sel.iloc[0]
            nodule = (float(r.coordX), float(r.coordY), float(r.coordZ), float(r.diameter_mm))
    full = np.zeros(vol.array.shape, np.float32)
    n_found: int | None = None
    if nodule is not None:
        centre, _ = ctio.nodule_centres_index(vol, [nodule], uid)[0]
        nd = segment_at(predictor, vol, centre, float(nodule[3]), threshold)
        source = "given nodule location"
        if count and not n_annotated:
            n_found = len(sweep(predictor, vol, threshold))
    else:
        found = sweep(predictor, vol, threshold)
        nd = found[0] if found else None
        n_found = len(found)
        source = "largest segmented component" if nd else "no nodule found"
    facts: dict[str, float] = {}
    if nd is not None:
        full[nd.box] = nd.mask
        z = int(np.clip(round(float(nd.centre_index[2])), 0, vol.array.shape[0] - 1))
        if not full[z].any() and full.any():
            zz = np.nonzero(full.reshape(full.shape[0], -1).any(1))[0]
            z = int(zz[np.argmin(np.abs(zz - z))])
        facts = {k: float(nd.features[k]) for k in (*_FACTS, "seg_prob", "seg_fallback")
                 if k in nd.features}
    else:
        z = vol.array.shape[0] // 2
    truth = None
    mask = ctio.find_mask(masks_dir, uid) if masks_dir is not None else None
    if mask is not None:
        try:
            truth = ctio.read_mask(mask, vol)[z] > 0
        except DataError as exc:
            log.warning("infnet: ground-truth mask of %s unusable: %s", uid, exc)
    fig = overlay_figure(vol.array[z], mask=truth, pred=full[z],
                         title=title or f"{uid[-12:]} slice {z}")
    out = NoduleFigure(fig, source, z, facts)
    if count:
        out.volume, out.nodule = vol, nd
        out.diameter_mm = float(nodule[3]) if nodule is not None else None
        if n_annotated:
            out.count, out.count_how = n_annotated, f"{n_annotated} annotated for the series"
        elif n_found is not None:
            out.count = n_found
            out.count_how = (f"{n_found} found by segmenting every slice (components of at "
                             "least 10 mm3)")
    return out


def facts_line(facts: Mapping[str, float]) -> str:
    """``long axis mm 12.3, volume mm3 850.1, mean hu -40.2`` (those measured)."""
    return ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in facts.items() if k in _FACTS)
