"""Clinical reference models for one lung nodule: the Brock (PanCan) malignancy
probability, the Lung-RADS v2022 category, and the LAA-950 emphysema index.

These are the published models a clinician already knows, computed as pure functions so
that a patient page can show them beside lungfuse's learnt risk: every input says where
it came from (measured on the CT, given in the clinical table, or missing and assumed),
and every result says what it could not decide. Nothing here is fitted on a cohort.

**Brock (PanCan) model.** McWilliams A, Tammemagi MC, Mayo JR, et al. *Probability of
cancer in pulmonary nodules detected on first screening CT.* N Engl J Med
2013;369(10):910-919, doi:10.1056/NEJMoa1214726 — the full model with spiculation
("model 2b" of its supplementary appendix), the one the British Thoracic Society
guideline recommends (Callister MEJ et al., Thorax 2015;70 Suppl 2:ii1-ii54). The
probability of cancer is the logistic of a linear predictor

.. math::

    \\eta = -6.7892 + 0.0287\\,(\\text{age} - 62) + 0.6011\\,[\\text{female}]
            + 0.2961\\,[\\text{family history}] + 0.2953\\,[\\text{emphysema}]
            - 5.3854\\,\\big((s/10)^{-1/2} - \\sqrt{2.5}\\big)
            + 0.377\\,[\\text{part-solid}] - 0.1276\\,[\\text{non-solid}]
            + 0.6581\\,[\\text{upper lobe}] - 0.0824\\,(\\text{count} - 4)
            + 0.7729\\,[\\text{spiculation}],
    \\qquad p = \\frac{1}{1 + e^{-\\eta}},

with :math:`s` the nodule size in mm (its longest diameter) and :math:`\\sqrt{2.5} =
(4/10)^{-1/2} = 1.58113883`, so the size term is 0 for a 4 mm nodule, as the age term is
0 at 62 years and the count term at 4 nodules. The coefficients are cross-checked against
the tabulated Brock-model equation of Eur Radiol 2019;29(10):5367-5377 (Table 2, PMC6717521),
which writes the same model uncentred, with intercept 0.2761
(:math:`= -6.7892 - 62 \\cdot 0.0287 + 5.3854\\sqrt{2.5} + 4 \\cdot 0.0824`).

**Missing Brock inputs** (the rule a clinician filling in the calculator would apply):
age and nodule size are required — they carry most of the model and no reference value
stands in for them — so a missing one is a one-line error. Every other input, when
missing, is set to the model's reference level, which is what leaving a calculator box
unticked does: sex male, no family history, no emphysema, solid, not upper lobe, no
spiculation; the nodule count to 1 (the nodule being assessed). The result lists those
inputs as ``assumed-default`` and gives ``probability_range``: the lowest and highest
probability over the values the missing sex, type and yes/no inputs could take (the count
kept at its assumed 1), so the page can say "4 % (up to 9 % if the missing inputs were
present)".

**Lung-RADS v2022** (American College of Radiology, released November 2022; summarised in
Christensen J, Prosper AE, Wu CC, et al. *ACR Lung-RADS v2022: assessment categories and
management recommendations.* Chest 2024;165(3):738-753). For a baseline screen the
category of a nodule follows from its mean diameter (the mean of long and short axes,
reported to one decimal place) and type: solid < 6 mm → 2, 6 to < 8 → 3, 8 to < 15 → 4A,
≥ 15 → 4B; part-solid with total diameter < 6 mm → 2, otherwise by the solid component:
< 6 mm → 3, 6 to < 8 → 4A, ≥ 8 → 4B; non-solid (ground glass) < 30 mm → 2, ≥ 30 mm → 3.
4X is a category 3 or 4 nodule with additional features that raise suspicion. What size
and type cannot decide (follow-up screens, new or growing nodules, benign features,
categories 0, 1 and S) is stated in the result, never guessed.

**Emphysema index.** LAA-950: the share of lung voxels at or below −950 HU on an
inspiratory CT; quantitative CT emphysema is conventionally called present at LAA-950
≥ 5 % (the COPDGene definition, e.g. Amaza IP et al., Int J Chron Obstruct Pulmon Dis
2021;16:1231-1242). The Brock model's emphysema was a radiologist's visual call, so a
measured index stands in for it: callers pass the result of :func:`emphysema_present` as
a ``measured`` input, and the page says it was measured, not read.

This module is pure Python plus numpy (imported inside :func:`emphysema_fraction`); it
imports nothing heavy and no plugin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from lungfuse.core.errors import DataError

__all__ = [
    "BROCK_COEFFICIENTS",
    "BROCK_INPUTS",
    "EMPHYSEMA_LAA950_PRESENT",
    "BrockInputs",
    "BrockResult",
    "BrockTerm",
    "LungRadsResult",
    "ReferenceInputError",
    "brock_probability",
    "emphysema_fraction",
    "emphysema_present",
    "lung_rads_category",
]

Source = Literal["measured", "given", "missing", "assumed-default"]
NoduleType = Literal["solid", "part-solid", "non-solid"]


class ReferenceInputError(DataError):
    """An input to a clinical reference model is missing, malformed or out of range."""


# -- Brock (PanCan) full model with spiculation ----------------------------------------------
#: Coefficients of the PanCan full model with spiculation (McWilliams et al. 2013,
#: model 2b). Continuous inputs are centred: age at 62 years, count at 4 nodules, size
#: through :math:`(s/10)^{-1/2} - \sqrt{2.5}` (0 at 4 mm).
BROCK_COEFFICIENTS: dict[str, float] = {
    "intercept": -6.7892,
    "age": 0.0287,            # per year over 62
    "female": 0.6011,
    "family_history": 0.2961,
    "emphysema": 0.2953,
    "size": -5.3854,          # on (size_mm / 10) ** -0.5 - sqrt(2.5)
    "part_solid": 0.377,
    "non_solid": -0.1276,
    "upper_lobe": 0.6581,
    "nodule_count": -0.0824,  # per nodule over 4
    "spiculation": 0.7729,
}
_AGE_CENTRE = 62.0
_COUNT_CENTRE = 4
_SIZE_CENTRE = math.sqrt(2.5)  # (4 mm / 10) ** -0.5 = 1.58113883...

#: The nine inputs of the model, in the order the paper lists them.
BROCK_INPUTS: tuple[str, ...] = ("age", "sex", "family_history", "emphysema", "size_mm",
                                 "nodule_type", "upper_lobe", "nodule_count", "spiculation")
_REQUIRED = ("age", "size_mm")
#: Value assumed for a missing input (the model's reference level; count: the nodule itself).
_DEFAULTS: dict[str, Any] = {"sex": "male", "family_history": False, "emphysema": False,
                             "nodule_type": "solid", "upper_lobe": False, "nodule_count": 1,
                             "spiculation": False}
_AGE_RANGE = (18.0, 100.0)      # refused outside
_PANCAN_AGES = (50.0, 75.0)     # PanCan enrolment; outside is extrapolation (noted)
_SIZE_MAX_MM = 100.0            # refused above
_NODULE_MAX_MM = 30.0           # above: a mass, not a nodule (noted)

_YES = {"1", "yes", "y", "true", "t", "present"}
_NO = {"0", "no", "n", "false", "f", "absent"}
_SEXES = {"f": "female", "female": "female", "woman": "female",
          "m": "male", "male": "male", "man": "male"}
_TYPES = {"solid": "solid",
          "part-solid": "part-solid", "partsolid": "part-solid", "semi-solid": "part-solid",
          "semisolid": "part-solid", "mixed": "part-solid",
          "non-solid": "non-solid", "nonsolid": "non-solid", "ground-glass": "non-solid",
          "groundglass": "non-solid", "ggn": "non-solid", "ggo": "non-solid",
          "pure-ground-glass": "non-solid"}


def _is_missing(value: Any) -> bool:
    """None, NaN (a pandas gap) or a blank string."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _number(model: str, name: str, value: Any, unit: str) -> float:
    """``value`` as a finite float (numbers and numeric text); one-line error otherwise."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise ReferenceInputError(
            f"{model}: {name} {value!r} is not a number; give it in {unit}") from None
    if not math.isfinite(number):
        raise ReferenceInputError(f"{model}: {name} {value!r} is not finite; give it in {unit}")
    return number


def _flag(name: str, value: Any) -> bool:
    """A yes/no input: a bool, 0/1, or yes/no/true/false/present/absent text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _YES or text in _NO:
            return text in _YES
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if number in (0.0, 1.0):
            return number == 1.0
    raise ReferenceInputError(f"Brock model: {name} {value!r} is not yes/no; give true/false, "
                              "1/0 or yes/no")


def _nodule_type(model: str, value: Any) -> NoduleType:
    text = str(value).strip().lower().replace("_", "-").replace(" ", "-")
    if text not in _TYPES:
        raise ReferenceInputError(f"{model}: nodule type {value!r} is not one of solid, "
                                  "part-solid, non-solid (ground glass)")
    return _TYPES[text]  # type: ignore[return-value]


@dataclass(frozen=True)
class BrockInputs:
    """The nine inputs of the Brock model for one nodule; each may be missing (None).

    Values are checked and normalised on construction (one-line
    :class:`ReferenceInputError` otherwise): ``age`` in years (18-100), ``sex``
    ``female``/``male`` (``F``/``M`` accepted), yes/no inputs as bools (0/1 and yes/no text
    accepted), ``size_mm`` the nodule's longest diameter in mm (0 < size <= 100),
    ``nodule_type`` ``solid``/``part-solid``/``non-solid`` (``ground-glass``, ``GGN``
    accepted), ``nodule_count`` the number of nodules on the CT (an integer >= 1). NaN and
    blank text count as missing, so a row of a pandas table can be passed as is.

    ``measured`` names the inputs derived from the CT by lungfuse; every other input that
    has a value was ``given`` (the clinical table, a user). :meth:`source` says which.
    """

    age: float | None = None
    sex: str | None = None
    family_history: bool | None = None
    emphysema: bool | None = None
    size_mm: float | None = None
    nodule_type: str | None = None
    upper_lobe: bool | None = None
    nodule_count: int | None = None
    spiculation: bool | None = None
    measured: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        model = "Brock model"
        unknown = sorted(set(self.measured) - set(BROCK_INPUTS))
        if unknown:
            raise ReferenceInputError(f"{model}: measured names unknown input(s) "
                                      f"{', '.join(unknown)}; inputs: {', '.join(BROCK_INPUTS)}")
        object.__setattr__(self, "measured", frozenset(self.measured))
        clean: dict[str, Any] = {}
        for name in BROCK_INPUTS:
            value = getattr(self, name)
            if _is_missing(value):
                clean[name] = None
            elif name == "age":
                age = _number(model, "age", value, "years")
                if not _AGE_RANGE[0] <= age <= _AGE_RANGE[1]:
                    raise ReferenceInputError(
                        f"{model}: age {age:g} is outside {_AGE_RANGE[0]:g}-{_AGE_RANGE[1]:g} "
                        "years; give the patient's age in years")
                clean[name] = age
            elif name == "size_mm":
                size = _number(model, "nodule size", value, "mm")
                if not 0.0 < size <= _SIZE_MAX_MM:
                    raise ReferenceInputError(
                        f"{model}: nodule size {size:g} mm is outside (0, {_SIZE_MAX_MM:g}] mm; "
                        "give the nodule's longest diameter in mm")
                clean[name] = size
            elif name == "nodule_count":
                count = _number(model, "nodule count", value, "whole nodules")
                if count < 1 or count != int(count):
                    raise ReferenceInputError(
                        f"{model}: nodule count {value!r} is not a whole number >= 1; give the "
                        "number of nodules on the CT, counting this one")
                clean[name] = int(count)
            elif name == "sex":
                sex = _SEXES.get(str(value).strip().lower())
                if sex is None:
                    raise ReferenceInputError(f"{model}: sex {value!r} is not female/male "
                                              "(F/M)")
                clean[name] = sex
            elif name == "nodule_type":
                clean[name] = _nodule_type(model, value)
            else:
                clean[name] = _flag(name, value)
        for name, value in clean.items():
            object.__setattr__(self, name, value)

    def source(self, name: str) -> Source:
        """Where input ``name`` came from: ``measured``, ``given`` or ``missing``."""
        if name not in BROCK_INPUTS:
            raise KeyError(name)
        if getattr(self, name) is None:
            return "missing"
        return "measured" if name in self.measured else "given"


@dataclass(frozen=True)
class BrockTerm:
    """One term of the linear predictor: ``contribution = coefficient * value``.

    ``value`` is the covariate on the model's scale (years over 62; 0/1 for a yes/no or
    a nodule-type level; :math:`(s/10)^{-1/2} - \\sqrt{2.5}` for size; nodules over 4);
    ``label`` says it in words for a page (``"age 70 years"``).
    """

    name: str
    label: str
    value: float
    coefficient: float
    contribution: float


@dataclass(frozen=True)
class BrockResult:
    """The Brock probability of cancer for one nodule, and how it was reached.

    ``linear_predictor = intercept + sum(t.contribution for t in terms)`` and
    ``probability = 1 / (1 + exp(-linear_predictor))``. ``sources`` maps every input to
    ``measured``, ``given`` or ``assumed-default``; ``missing`` lists the inputs that had
    no value and ``assumed`` the value used for each. ``probability_range`` is the lowest
    and highest probability over the values the missing inputs could take (equal to
    ``(probability, probability)`` when nothing was missing; the count stays at its
    assumed value). ``notes`` flags extrapolation beyond the model's development data.
    """

    probability: float
    linear_predictor: float
    intercept: float
    terms: tuple[BrockTerm, ...]
    sources: dict[str, Source]
    missing: tuple[str, ...]
    assumed: dict[str, Any]
    probability_range: tuple[float, float]
    notes: tuple[str, ...]

    def term(self, name: str) -> BrockTerm:
        """The term named ``name`` (``age``, ``female``, ``size``, ``part_solid`` …)."""
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(name)


def _logistic(x: float) -> float:
    """1 / (1 + e^-x), computed without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _terms(v: dict[str, Any]) -> list[BrockTerm]:
    """The model's ten terms for complete, normalised inputs ``v``."""
    c = BROCK_COEFFICIENTS
    yes = {True: "yes", False: "no"}
    size_x = (v["size_mm"] / 10.0) ** -0.5 - _SIZE_CENTRE
    rows = [
        ("age", f"age {v['age']:g} years", v["age"] - _AGE_CENTRE),
        ("female", f"sex {v['sex']}", float(v["sex"] == "female")),
        ("family_history", f"family history of lung cancer: {yes[v['family_history']]}",
         float(v["family_history"])),
        ("emphysema", f"emphysema: {yes[v['emphysema']]}", float(v["emphysema"])),
        ("size", f"nodule size {v['size_mm']:g} mm", size_x),
        ("part_solid", f"nodule type {v['nodule_type']}", float(v["nodule_type"] == "part-solid")),
        ("non_solid", f"nodule type {v['nodule_type']}", float(v["nodule_type"] == "non-solid")),
        ("upper_lobe", f"upper lobe: {yes[v['upper_lobe']]}", float(v["upper_lobe"])),
        ("nodule_count", f"{v['nodule_count']} nodule(s)", float(v["nodule_count"] - _COUNT_CENTRE)),
        ("spiculation", f"spiculation: {yes[v['spiculation']]}", float(v["spiculation"])),
    ]
    return [BrockTerm(name, label, x, c[name], c[name] * x) for name, label, x in rows]


def _contribution_span(name: str) -> tuple[float, float]:
    """Lowest and highest total contribution a missing input could make (count excluded)."""
    c = BROCK_COEFFICIENTS
    if name == "sex":
        return (0.0, c["female"]) if c["female"] > 0 else (c["female"], 0.0)
    if name == "nodule_type":
        levels = (0.0, c["part_solid"], c["non_solid"])
        return min(levels), max(levels)
    coef = c[name]
    return min(0.0, coef), max(0.0, coef)


def brock_probability(inputs: BrockInputs) -> BrockResult:
    """Probability that the nodule is cancer, by the Brock (PanCan) full model.

    ``inputs`` is a :class:`BrockInputs` (already validated). Age and size must be
    present (one-line :class:`ReferenceInputError` otherwise); any other missing input
    takes the model's reference level, is reported as ``assumed-default`` and widens
    ``probability_range`` (see the module docstring for the rule and its reason).
    """
    lacking = [n for n in _REQUIRED if getattr(inputs, n) is None]
    if lacking:
        words = {"age": "age (years)", "size_mm": "nodule size (mm)"}
        raise ReferenceInputError(
            "Brock model: " + " and ".join(words[n] for n in lacking)
            + " missing; the model is not computed without age and nodule size (no "
            "reference value can stand in for them)")
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    missing: list[str] = []
    for name in BROCK_INPUTS:
        value = getattr(inputs, name)
        if value is None:
            missing.append(name)
            values[name] = _DEFAULTS[name]
            sources[name] = "assumed-default"
        else:
            values[name] = value
            sources[name] = inputs.source(name)
    terms = _terms(values)
    intercept = BROCK_COEFFICIENTS["intercept"]
    eta = intercept + sum(t.contribution for t in terms)

    by_name = {t.name: t.contribution for t in terms}
    low = high = eta
    for name in missing:
        if name == "nodule_count":
            continue  # no upper bound on the count: kept at the assumed 1 (highest risk)
        used = (by_name["female"] if name == "sex" else
                by_name["part_solid"] + by_name["non_solid"] if name == "nodule_type" else
                by_name[name])
        lo, hi = _contribution_span(name)
        low += lo - used
        high += hi - used

    notes: list[str] = []
    if not _PANCAN_AGES[0] <= values["age"] <= _PANCAN_AGES[1]:
        notes.append(f"age {values['age']:g} is outside the 50-75 years of the PanCan "
                     "participants the model was developed on: an extrapolation")
    if values["size_mm"] > _NODULE_MAX_MM:
        notes.append(f"a {values['size_mm']:g} mm lesion is a mass, not a nodule (<= 30 mm): "
                     "the model was developed on nodules")
    if "nodule_count" in missing:
        notes.append("nodule count missing: 1 assumed (the highest-risk count); more nodules "
                     "would lower the probability")
    return BrockResult(
        probability=_logistic(eta), linear_predictor=eta, intercept=intercept,
        terms=tuple(terms), sources=sources, missing=tuple(missing),
        assumed={n: _DEFAULTS[n] for n in missing},
        probability_range=(_logistic(low), _logistic(high)), notes=tuple(notes))


# -- Lung-RADS v2022 -------------------------------------------------------------------------
_RADS_DESCRIPTOR = {
    "2": "benign appearance or behaviour",
    "3": "probably benign",
    "4A": "suspicious",
    "4B": "very suspicious",
    "4X": "very suspicious (category 3 or 4 with additional suspicious features)",
}
#: ACR's estimated probability of malignancy for each category (v2022).
_RADS_RISK = {"2": "< 1%", "3": "1-2%", "4A": "5-15%", "4B": "> 15%", "4X": "> 15%"}
_WORKUP = ("further work-up rather than routine follow-up: a diagnostic chest CT with or "
           "without contrast, PET/CT when a solid nodule or solid component measures 8 mm or "
           "more, tissue sampling and/or referral for clinical evaluation, chosen by the "
           "probability of malignancy, comorbidities and the patient's preference")
#: The management each category carries (the ACR text in our own words, with its interval).
_RADS_MANAGEMENT = {
    "2": "Continue annual screening: the next low-dose CT in 12 months.",
    "3": "Short-interval follow-up: a low-dose CT in 6 months.",
    "4A": "A low-dose CT in 3 months; PET/CT may be considered when a solid nodule or solid "
          "component measures 8 mm or more.",
    "4B": _WORKUP[0].upper() + _WORKUP[1:] + ".",
    "4X": _WORKUP[0].upper() + _WORKUP[1:] + ".",
}
_RADS_ALWAYS = (
    "baseline screen assumed: on a follow-up screen new or growing nodules have their own "
    "thresholds (e.g. a new solid nodule of 4 to < 6 mm is category 3) and need the prior CT",
    "not decided from size and type: category 0 (incomplete, or infectious/inflammatory "
    "findings), 1 (no nodule, benign calcification or fat), the S modifier, and the benign "
    "features that make a nodule category 2 (e.g. a smooth juxtapleural nodule < 10 mm), "
    "airway nodules and atypical cysts",
)
_RADS_4X_UNASSESSED = ("4X not assessed: a category 3 or 4 nodule with additional features "
                       "raising suspicion (e.g. spiculation, lymphadenopathy) is 4X; pass "
                       "suspicious_features")


@dataclass(frozen=True)
class LungRadsResult:
    """The Lung-RADS v2022 category of one nodule on a baseline screen, as far as size
    and type decide it.

    ``category`` is ``"2"``, ``"3"``, ``"4A"``, ``"4B"`` or ``"4X"``, or None when size and
    type leave several open (a part-solid nodule >= 6 mm whose solid component was not
    measured); ``candidates`` lists the categories still possible (one when decided).
    ``size_mm``/``solid_component_mm`` are the values compared, rounded to 0.1 mm as
    v2022 reports them. ``undetermined`` says what size and type could not decide.
    """

    category: str | None
    candidates: tuple[str, ...]
    descriptor: str
    management: str
    malignancy_risk: str
    nodule_type: NoduleType
    size_mm: float
    solid_component_mm: float | None
    undetermined: tuple[str, ...]
    version: str = "v2022"


def _one_decimal(value: float) -> float:
    """Round to 0.1 mm, halves up (5.95 → 6.0), as Lung-RADS v2022 reports diameters."""
    return float(Decimal(repr(value)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def _solid_category(size: float) -> str:
    return "2" if size < 6 else "3" if size < 8 else "4A" if size < 15 else "4B"


def _solid_component_category(solid: float) -> str:
    return "3" if solid < 6 else "4A" if solid < 8 else "4B"


def lung_rads_category(size_mm: float, nodule_type: str, solid_component_mm: float | None = None,
                       *, suspicious_features: bool | None = None) -> LungRadsResult:
    """Lung-RADS v2022 category of a nodule on a baseline screen, from size and type.

    ``size_mm`` is the nodule's mean diameter (mean of long and short axes) in mm — not
    the longest diameter the Brock model uses — and is rounded to 0.1 mm before the
    thresholds apply. ``solid_component_mm`` (part-solid nodules only) is the mean
    diameter of the solid part. ``suspicious_features``: True when the nodule has
    additional features raising suspicion (spiculation, …), which makes a category 3 or 4
    nodule 4X; None (not assessed) leaves 4X open and says so; a category 2 nodule stays 2
    (4X is defined for categories 3 and 4 only).

    Thresholds (see the module docstring for the source): solid < 6 → 2, < 8 → 3,
    < 15 → 4A, else 4B; part-solid total < 6 → 2, else solid component < 6 → 3, < 8 → 4A,
    else 4B; non-solid < 30 → 2, else 3.
    """
    model = "Lung-RADS"
    kind = _nodule_type(model, nodule_type)
    size = _number(model, "nodule size", size_mm, "mm (mean diameter)")
    if not 0.0 < size <= _SIZE_MAX_MM:
        raise ReferenceInputError(f"{model}: nodule size {size:g} mm is outside "
                                  f"(0, {_SIZE_MAX_MM:g}] mm; give the mean diameter in mm")
    size = _one_decimal(size)
    solid: float | None = None
    if solid_component_mm is not None and not _is_missing(solid_component_mm):
        if kind != "part-solid":
            raise ReferenceInputError(f"{model}: a solid component applies to part-solid "
                                      f"nodules only, not to a {kind} nodule")
        solid = _number(model, "solid component", solid_component_mm, "mm (mean diameter)")
        if solid <= 0:
            raise ReferenceInputError(f"{model}: solid component {solid:g} mm must be > 0 mm; "
                                      "a nodule without one is non-solid")
        solid = _one_decimal(solid)
        if solid >= size:
            raise ReferenceInputError(f"{model}: solid component {solid:g} mm is not smaller "
                                      f"than the nodule ({size:g} mm); a nodule solid throughout "
                                      "is solid")
    if suspicious_features is not None:
        suspicious_features = _flag("suspicious_features", suspicious_features)

    undetermined = list(_RADS_ALWAYS)
    if kind == "solid":
        candidates: tuple[str, ...] = (_solid_category(size),)
    elif kind == "non-solid":
        candidates = ("2" if size < 30 else "3",)
    elif size < 6:
        candidates = ("2",)
    elif solid is None:
        candidates = ("3", "4A", "4B")
        undetermined.insert(0, f"part-solid nodule of {size:g} mm: the category depends on "
                               "the solid component (< 6 mm -> 3, 6 to < 8 mm -> 4A, >= 8 mm -> "
                               "4B), which was not given")
    else:
        candidates = (_solid_component_category(solid),)

    if suspicious_features and candidates == ("2",):
        undetermined.append("suspicious features noted, but 4X is defined for category 3 and "
                            "4 nodules only: a category 2 nodule stays 2")
    elif suspicious_features:
        candidates = ("4X",)
    elif suspicious_features is None and candidates != ("2",):
        undetermined.append(_RADS_4X_UNASSESSED)

    if len(candidates) == 1:
        cat: str | None = candidates[0]
        descriptor, management, risk = (_RADS_DESCRIPTOR[cat], _RADS_MANAGEMENT[cat],
                                        _RADS_RISK[cat])
    else:
        cat = None
        descriptor = " / ".join(_RADS_DESCRIPTOR[c] for c in candidates)
        management = "Depends on the solid component: " + " ".join(
            f"{c}: {_RADS_MANAGEMENT[c]}" for c in candidates)
        risk = " / ".join(f"{c}: {_RADS_RISK[c]}" for c in candidates)
    return LungRadsResult(category=cat, candidates=candidates, descriptor=descriptor,
                          management=management, malignancy_risk=risk, nodule_type=kind,
                          size_mm=size, solid_component_mm=solid,
                          undetermined=tuple(undetermined))


# -- emphysema (LAA-950) ----------------------------------------------------------------------
#: LAA-950 at or above which quantitative CT emphysema is called present (5 %, COPDGene).
EMPHYSEMA_LAA950_PRESENT = 0.05


def emphysema_fraction(hu_volume: Any, lung_mask: Any, threshold_hu: float = -950.0) -> float:
    """LAA-950: the fraction of lung voxels at or below ``threshold_hu`` (−950 HU).

    .. math:: \\mathrm{LAA}_{-950} = \\frac{|\\{v \\in L : \\mathrm{HU}(v) \\le -950\\}|}{|L|}

    with :math:`L` the voxels of ``lung_mask`` (non-zero = lung). ``hu_volume`` is the CT
    in Hounsfield units, any shape equal to the mask's. Meant for an inspiratory CT;
    noise on a low-dose scan inflates it. One-line :class:`ReferenceInputError` for
    mismatched shapes, an empty mask, or a non-finite HU value inside the lung.
    """
    import numpy as np

    hu = np.asarray(hu_volume)
    mask = np.asarray(lung_mask)
    if hu.shape != mask.shape:
        raise ReferenceInputError(f"emphysema index: CT shape {hu.shape} differs from lung mask "
                                  f"shape {mask.shape}; give the mask on the CT's grid")
    lung = mask.astype(bool)
    n = int(lung.sum())
    if n == 0:
        raise ReferenceInputError("emphysema index: the lung mask is empty; no lung voxel to "
                                  "measure")
    values = hu[lung].astype(np.float64)
    if not np.isfinite(values).all():
        raise ReferenceInputError("emphysema index: the CT has non-finite values inside the "
                                  "lung mask; give HU values")
    return float((values <= threshold_hu).sum()) / n


def emphysema_present(fraction: float) -> bool:
    """Whether an LAA-950 ``fraction`` (0-1) counts as emphysema: >= 5 % (COPDGene)."""
    value = _number("emphysema index", "LAA-950 fraction", fraction, "a fraction 0-1")
    if not 0.0 <= value <= 1.0:
        raise ReferenceInputError(f"emphysema index: LAA-950 fraction {value:g} is outside 0-1")
    return value >= EMPHYSEMA_LAA950_PRESENT
