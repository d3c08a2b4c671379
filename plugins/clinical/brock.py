"""``brock``: the Brock (PanCan) model as a reference row beside the fused model.

A binary run with ``baselines: [brock]`` scores every held-out patient of every fold with
the published Brock probability (:func:`~lungfuse.plugins.clinical.references.brock_probability`,
nothing learnt from any outcome), so ``metrics.json``, the run report and ablations show it
with the same metrics, bootstrap CIs and paired difference as any baseline.

Where each input comes from, per patient:

- **CT** (the run's CT modality, found by its feature columns ``long_axis_mm``,
  ``solid_fraction``, ``margin_irregularity`` and ``n_nodules``, or named in
  ``ct_modality``): size = the long axis; type from the solid fraction and spiculation from
  the margin irregularity, with the thresholds of the patient page
  (:mod:`lungfuse.plugins.imaging_infnet.brock_inputs`); count = the nodules found.
  Where the segmenter found nothing at the nodule (``seg_fallback``), those two were
  measured on the annotated ball with parenchyma, so type and spiculation are missing
  (reference level: solid, no), as on the page; the log counts such patients.
  Upper lobe and emphysema are not among the CT features, so they take the model's
  reference level (not upper lobe, no emphysema), as a missing input does on the page.
- **Cohort table**: age, sex and family history, columns named by ``age_column``,
  ``sex_column``, ``family_history_column`` (null: not used, reference level). A named
  column the cohort lacks is refused before the run starts (one line naming the setting);
  a malformed sex or family-history value takes that input's reference level only.

Age and size are required by the model. A patient without them (no CT, no nodule found,
an age blank or out of range) cannot have a Brock probability, yet a reference row must
score every patient the model scores; such a patient gets the Brock probability computed
with the **training** patients' median age / median size in place of the missing value.
Those medians are all ``fit`` learns (no outcome is read); how many held-out patients were
filled in is logged per fold, and on a cohort where many are, the row says more about the
imputation than about Brock.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from lungfuse.core.baselines import BaselineConfig, BaselinePlugin, BaselineTarget

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

log = logging.getLogger("lungfuse")

#: Feature columns that mark a modality as the CT one the Brock inputs are read from.
CT_COLUMNS = ("long_axis_mm", "solid_fraction", "margin_irregularity", "n_nodules")


class BrockConfig(BaselineConfig):
    """Settings of the ``brock`` reference baseline."""

    kind: Literal["brock"] = "brock"
    ct_modality: str | None = Field(
        default=None, description="Modality whose features hold the nodule measurements "
        "(default: the one with long_axis_mm, solid_fraction, margin_irregularity, n_nodules).")
    age_column: str | None = Field(default="age", description="Cohort column of age (years).")
    sex_column: str | None = Field(default="sex", description="Cohort column of sex (F/M).")
    family_history_column: str | None = Field(
        default="family_history", description="Cohort column of family history of lung "
        "cancer (yes/no, 1/0); null: not used (reference level: no).")


class _Fixed:
    """The Brock model with the training medians for missing age and size."""

    def __init__(self, cfg: BrockConfig, age: float, size: float) -> None:
        self.cfg, self.age, self.size = cfg, age, size

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        from collections import Counter

        import numpy as np

        ct = _ct_prefix(X, self.cfg)
        out, notes = [], Counter()
        for _, row in X.iterrows():
            p, why = _probability(row, ct, self.cfg, self.age, self.size)
            out.append(p)
            notes.update(why)
        for why, n in sorted(notes.items()):
            log.info("baseline brock: %d of %d patients: %s", n, len(X), why)
        return np.asarray(out, dtype=float)


def _ct_prefix(X: pd.DataFrame, cfg: BrockConfig) -> str:
    """``"<modality>:"`` of the CT modality's columns in ``X`` (one line if none)."""
    mods = {c.split(":", 1)[0] for c in X.columns if ":" in c}
    if cfg.ct_modality is not None:
        if cfg.ct_modality not in mods:
            raise ValueError(f"ct_modality '{cfg.ct_modality}' has no feature columns here; "
                             f"modalities: {', '.join(sorted(mods)) or 'none'}")
        return cfg.ct_modality + ":"
    for m in sorted(mods):
        if all(f"{m}:{c}" in X.columns for c in CT_COLUMNS):
            return m + ":"
    raise ValueError("no modality with nodule measurements (" + ", ".join(CT_COLUMNS)
                     + "); the Brock baseline needs the CT modality (set ct_modality)")


def _value(row: pd.Series, col: str | None) -> Any:
    if col is None or col not in row.index:
        return None
    v = row[col]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _size(row: pd.Series, ct: str) -> float | None:
    """The long axis, or None without a measured nodule (no CT: NaN; none found: 0)."""
    size, count = _value(row, ct + "long_axis_mm"), _value(row, ct + "n_nodules")
    if size is None or count is None or float(count) < 1 or not 0 < float(size) <= 100:
        return None
    return float(size)


#: What each note of :func:`_probability` says in the log (one line per kind, counted).
NOTE_AGE = "age missing or outside 18-100 years, scored with the training median age"
NOTE_SIZE = "no measured nodule (no CT or none found), scored with the training median size"
NOTE_FALLBACK = ("segmenter found nothing at the nodule (seg_fallback): type and "
                 "spiculation not measured, taken at the reference level (solid, no)")
NOTE_SEX = "sex value not female/male (F/M), taken at the reference level"
NOTE_FAMILY = "family history value not yes/no (1/0), taken at the reference level"


def _probability(row: pd.Series, ct: str, cfg: BrockConfig, age_fill: float,
                 size_fill: float) -> tuple[float, list[str]]:
    """(Brock probability, notes) for one patient; the notes name each input that was
    filled in or taken at its reference level, and why.

    Where the segmenter found nothing at the nodule (``seg_fallback`` >= 0.5) the solid
    fraction and margin irregularity were measured on the annotated ball, parenchyma
    included, so they say nothing of the nodule's type or spiculation: both are treated
    as missing (the reference level), as on the patient page. A malformed sex or family
    history value drops that input only."""
    from lungfuse.plugins.imaging_infnet.brock_inputs import (
        SPICULATION_MIN_IRREGULARITY,
        nodule_type_of,
    )

    from .references import BrockInputs, ReferenceInputError, brock_probability

    notes: list[str] = []
    size = _size(row, ct)
    if size is None:
        notes.append(NOTE_SIZE)
    age = _value(row, cfg.age_column)
    try:
        age = float(age) if age is not None else None
        if age is not None and not 18.0 <= age <= 100.0:
            age = None
    except (TypeError, ValueError):
        age = None
    if age is None:
        notes.append(NOTE_AGE)
    values: dict[str, Any] = {"age": age_fill if age is None else age,
                              "size_mm": size_fill if size is None else size}
    if size is not None:
        fallback = _value(row, ct + "seg_fallback")
        if fallback is not None and float(fallback) >= 0.5:
            notes.append(NOTE_FALLBACK)
        else:
            values["nodule_type"] = nodule_type_of(float(row[ct + "solid_fraction"]))
            values["spiculation"] = float(row[ct + "margin_irregularity"]) >= \
                SPICULATION_MIN_IRREGULARITY
        values["nodule_count"] = max(1, int(round(float(row[ct + "n_nodules"]))))
    for name, col, note in (("sex", cfg.sex_column, NOTE_SEX),
                            ("family_history", cfg.family_history_column, NOTE_FAMILY)):
        v = _value(row, col)
        try:
            BrockInputs(**{name: v})  # checked alone: a bad one does not drop the other
        except ReferenceInputError:
            v = None
            notes.append(note)
        values[name] = v
    return brock_probability(BrockInputs(**values)).probability, notes


class BrockBaseline(BaselinePlugin):
    """The Brock (PanCan) full model, a published fixed model, as a reference row."""

    name = "brock"
    config_model = BrockConfig
    tasks = ("binary",)
    description = ("Brock (PanCan) full model with spiculation: published coefficients, CT "
                   "inputs from the run's nodule features, age/sex/family history from the "
                   "cohort (training medians fill a missing age or size)")

    def cohort_columns(self) -> list[str]:
        cfg: BrockConfig = self.config  # type: ignore[assignment]
        return [c for c in (cfg.age_column, cfg.sex_column, cfg.family_history_column)
                if c is not None]

    def fit(self, X: pd.DataFrame, target: BaselineTarget, *, seed: int) -> _Fixed:
        """Only the training rows' median age and median nodule size (for patients who
        lack them); ``target`` is not read."""
        import numpy as np

        cfg: BrockConfig = self.config  # type: ignore[assignment]
        ct = _ct_prefix(X, cfg)
        sizes = [s for s in (_size(r, ct) for _, r in X.iterrows()) if s is not None]
        ages = []
        if cfg.age_column is not None and cfg.age_column in X.columns:
            a = np.asarray(X[cfg.age_column], dtype=float)
            ages = [float(v) for v in a if 18.0 <= v <= 100.0]
        if not sizes:
            raise ValueError("no training patient has a measured nodule; the Brock model "
                             "needs nodule size")
        age = float(np.median(ages)) if ages else 62.0  # no age at all: the model's centre
        return _Fixed(cfg, age, float(np.median(sizes)))
