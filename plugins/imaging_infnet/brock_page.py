"""The patient page's "Brock (PanCan) and Lung-RADS" section, built by the CT modality.

:func:`brock_section` joins the inputs measured on the CT (:mod:`.brock_inputs`) with
those only the clinical table holds (age, sex, family history; an emphysema read that
overrides the measured one), columns named by the modality's ``brock:`` settings, and
computes the two reference models of :mod:`lungfuse.plugins.clinical.references`. Every
input is listed with its source: measured from CT, given in the clinical table, or
missing (and what the model assumed for it). A required input that is missing (age,
size) makes Brock "not computed", never a silent zero; a value out of range (age 5, a
0 mm nodule) is one clear line on the page and in the log (stderr), and the rest of the
page, and the other patients, go on.

The section's ``lead`` (Brock's probability, the Lung-RADS category) and ``lead_missing``
(the inputs that were missing) feed the one sentence core puts at the top of the page.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from lungfuse.core.contracts import ModalitySection

from .brock_inputs import CtBrockInputs
from .config import BrockSettings

log = logging.getLogger("lungfuse.imaging")

__all__ = ["SECTION_TITLE", "brock_section", "clinical_inputs"]

SECTION_TITLE = "Brock (PanCan) and Lung-RADS"
_LABELS = {"age": "age (years)", "sex": "sex", "family_history": "family history of lung cancer",
           "emphysema": "emphysema", "size_mm": "nodule size (longest diameter, mm)",
           "nodule_type": "nodule type", "upper_lobe": "upper lobe",
           "nodule_count": "nodule count", "spiculation": "spiculation"}
_SHORT = {"age": "age", "sex": "sex", "family_history": "family history",
          "emphysema": "emphysema", "size_mm": "nodule size", "nodule_type": "nodule type",
          "upper_lobe": "upper lobe", "nodule_count": "nodule count",
          "spiculation": "spiculation"}
_CLINICAL = ("age", "sex", "family_history", "emphysema")
#: What the page says when 4X stays open (no spiculation measured; other features unread).
_X4_ON_PAGE = ("4X not assessed: no spiculation was measured, but the other features that "
               "make a category 3 or 4 nodule 4X (e.g. lymphadenopathy) are not read from the "
               "CT")


def _missing(value: Any) -> bool:
    """None, NaN/NA or blank text."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(value != value)  # NaN
    except (TypeError, ValueError):
        return False


def clinical_inputs(row: Mapping[str, Any], settings: BrockSettings
                    ) -> tuple[dict[str, Any], dict[str, str]]:
    """The Brock inputs of the clinical row (``{input: value}``, values as in the table)
    and, for each configured input, where it came from or why it is missing."""
    values: dict[str, Any] = {}
    how: dict[str, str] = {}
    for name in _CLINICAL:
        col = getattr(settings, f"{name}_column")
        if col is None:
            if name != "emphysema":
                how[name] = f"no clinical column configured (infnet brock.{name}_column)"
            continue
        if col not in row.keys():
            how[name] = f"the clinical table has no column '{col}'"
            continue
        value = row[col]
        if _missing(value):
            how[name] = f"blank in the clinical table (column '{col}')"
            continue
        values[name] = value.item() if hasattr(value, "item") else value
        how[name] = f"clinical table, column '{col}'"
    return values, how


def _shown(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name == "age":
        return f"{float(value):g}"
    if name == "size_mm":
        return f"{float(value):.1f}"
    return str(value)


def _percent(p: float) -> str:
    return f"{100 * p:.1f}%" if p >= 0.001 else "< 0.1%"


def brock_section(ct: CtBrockInputs, row: Mapping[str, Any], settings: BrockSettings,
                  patient: str = "") -> ModalitySection:
    """The section for one patient: ``ct`` the inputs measured on the scan, ``row`` the
    patient's clinical row (possibly empty), ``settings`` the modality's ``brock:``
    columns. Never raises for bad input: it is said on the page and logged."""
    import pandas as pd

    from lungfuse.plugins.clinical.references import (
        BROCK_INPUTS,
        BrockInputs,
        ReferenceInputError,
        brock_probability,
        lung_rads_category,
    )

    given, how = clinical_inputs(row, settings)
    how = {**ct.how, **how}
    values = dict(ct.values())
    source: dict[str, str] = {}
    for name in BROCK_INPUTS:
        if name in given and given[name] is not None:
            if name == "emphysema" and ct.emphysema is not None:
                how[name] = (f"clinical table, column '{settings.emphysema_column}' "
                             f"(overrides the CT's {ct.how.get('emphysema', 'measure')})")
            values[name] = given[name]
            source[name] = "given in the clinical table"
        elif values.get(name) is not None:
            source[name] = ("given with the nodule location" if name in ct.given
                            else "measured from CT")
        else:
            values[name] = None
            source[name] = "missing"
    measured = {n for n, s in source.items() if s == "measured from CT"}
    who = f"patient {patient}: " if patient else ""
    section = ModalitySection(SECTION_TITLE)
    problems: list[str] = []
    brock = None
    try:
        checked = BrockInputs(**values, measured=frozenset(measured))
        values = {n: getattr(checked, n) for n in BROCK_INPUTS}  # normalised (1 -> yes)
        brock = brock_probability(checked)
    except ReferenceInputError as exc:
        problems.append(str(exc))
        log.warning("%s%s", who, exc)
    rads = None
    size = ct.mean_diameter_mm
    kind = values.get("nodule_type")
    if size is not None and kind is not None:
        solid = ct.solid_component_mm if kind == "part-solid" else None
        if solid is not None and round(solid, 1) >= round(size, 1):
            solid = None  # a component as large as the nodule is not a measured part
        try:
            # spiculation makes a category 3/4 nodule 4X; its absence does not rule out
            # the other suspicious features (lymphadenopathy, ...), so 4X stays open then
            rads = lung_rads_category(size, str(kind), solid,
                                      suspicious_features=True if values.get("spiculation")
                                      else None)
        except ReferenceInputError as exc:
            problems.append(str(exc))
            log.warning("%s%s", who, exc)

    rows = []
    for name in BROCK_INPUTS:
        src = source[name]
        if src == "missing" and brock is not None and name in brock.assumed:
            src = f"missing (assumed {_shown(name, brock.assumed[name])})"
        rows.append({"input": _LABELS[name], "value": _shown(name, values[name]),
                     "source": src, "how": how.get(name, "")})
    section.table = pd.DataFrame(rows)
    lacking = [n for n in BROCK_INPUTS if source[n] == "missing"]

    if brock is not None:
        lo, hi = brock.probability_range
        text = (f"Brock (PanCan) full model with spiculation: probability of cancer "
                f"{_percent(brock.probability)}")
        if brock.missing and hi - lo > 1e-9:
            text += (f" ({_percent(lo)} to {_percent(hi)} over the values the missing "
                     "inputs could take)")
        section.paragraphs.append(text + ".")
        section.paragraphs.extend(f"Note: {n}." for n in brock.notes)
        section.lead = f"Brock (PanCan) {_percent(brock.probability)}"
    else:
        section.lead = "Brock (PanCan) not computed"
    for p in problems:
        section.paragraphs.append(f"Not computed: {p}.")
    if rads is not None:
        cat = rads.category or "/".join(rads.candidates)
        section.paragraphs.append(
            f"Lung-RADS v2022 (baseline screen, from mean diameter {rads.size_mm:g} mm and "
            f"type {rads.nodule_type}): category {cat} ({rads.descriptor}; ACR estimate of "
            f"malignancy {rads.malignancy_risk}). Management: {rads.management}")
        if rads.undetermined:
            said = [_X4_ON_PAGE if u.startswith("4X not assessed") else u
                    for u in rads.undetermined]
            section.paragraphs.append("Lung-RADS does not decide here: " + "; ".join(said)
                                      + ".")
        section.lead += f", Lung-RADS {cat}"
    else:
        why = "no nodule size or type" if not problems else "see above"
        section.paragraphs.append(f"Lung-RADS v2022: not assigned ({why}).")
        section.lead += ", Lung-RADS not assigned"
    section.paragraphs.extend(f"Note: {n}." for n in ct.notes)
    section.paragraphs.append(
        "Reference models published for screening-detected nodules, computed from the "
        "inputs below (nothing fitted to this cohort). 'Measured from CT' values come from "
        "lungfuse's segmentation; upper lobe is a height approximation (the upper third of "
        "the lungs), not a lobe segmentation.")
    section.lead_missing = [f"{_SHORT[n]} (Brock)" for n in lacking]
    return section
