"""Write the CT part of a synthetic cohort in LUNA16 layout with SimpleITK."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lungfuse.core.synth.candidates import HEADER as CANDIDATES_HEADER
from lungfuse.core.synth.candidates import candidate_rows
from lungfuse.core.synth.ct import PlacedNodule, render
from lungfuse.core.synth.latent import Cohort, rng_for
from lungfuse.core.synth.presets import SynthConfig


def _image(arr: Any, geom: Any) -> Any:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in geom.spacing))
    img.SetOrigin(tuple(float(o) for o in geom.origin))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return img


def write_ct(cfg: SynthConfig, cohort: Cohort, ct_dir: Path,
             progress: bool) -> tuple[int, int, list[list[PlacedNodule]]]:
    """Render and write every scan; return (#series, #nodules, placed nodules per patient).

    ``subset{k}`` is ``k = (patient position) mod n_subsets``, as LUNA16 spreads scans over
    ten folds. ``annotations.csv`` rows follow patient order, then label order 1..n;
    ``candidates.csv`` (LUNA16 ``candidates_V2.csv`` columns) holds each scan's true and
    false detector candidates, drawn from a stream of their own (see ``candidates.py``)."""
    import SimpleITK as sitk
    from tqdm.auto import tqdm

    masks = ct_dir / "masks"
    masks.mkdir(parents=True)
    rows = ["seriesuid,coordX,coordY,coordZ,diameter_mm"]
    cand_rows = [CANDIDATES_HEADER]
    placed_all: list[list[PlacedNodule]] = [[] for _ in cohort.patient_ids]
    n_series = 0
    todo = [i for i in range(len(cohort.patient_ids)) if cohort.has_ct[i]]
    for i in tqdm(todo, desc="synth CT", unit="scan", disable=not progress or len(todo) < 10):
        geom = cohort.geometry[i]
        uid = cohort.seriesuids[i]
        assert geom is not None and uid is not None
        hu, mask, placed = render(geom, cohort.nodules[i], rng_for(cfg.seed, "ct", i),
                                  cfg.noise_hu)
        sub = ct_dir / f"subset{i % max(1, cfg.n_subsets)}"
        sub.mkdir(exist_ok=True)
        sitk.WriteImage(_image(hu, geom), str(sub / f"{uid}.mhd"), useCompression=False)
        sitk.WriteImage(_image(mask, geom), str(masks / f"{uid}.mhd"), useCompression=True)
        for p in placed:
            x, y, z = p.centre
            rows.append(f"{uid},{x:.6f},{y:.6f},{z:.6f},{p.diameter_mm:.2f}")
        cand_rows += candidate_rows(uid, hu, mask, geom, placed,
                                    rng_for(cfg.seed, "candidates", i))
        placed_all[i] = placed
        n_series += 1
    (ct_dir / "annotations.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (ct_dir / "candidates.csv").write_text("\n".join(cand_rows) + "\n", encoding="utf-8")
    return n_series, sum(len(p) for p in placed_all), placed_all
