"""Clinical reference models: the Brock (PanCan) probability against the published
equation and hand-worked examples, its missing-input rule and range checks; the Lung-RADS
v2022 category at every size boundary; the LAA-950 emphysema index."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungfuse.core.errors import LungfuseError
from lungfuse.plugins.clinical.references import (
    BROCK_COEFFICIENTS,
    EMPHYSEMA_LAA950_PRESENT,
    BrockInputs,
    ReferenceInputError,
    brock_probability,
    emphysema_fraction,
    emphysema_present,
    lung_rads_category,
)


def full(**over) -> BrockInputs:
    """A complete set of inputs (the model's reference patient), with overrides."""
    values = dict(age=62, sex="M", family_history=False, emphysema=False, size_mm=4.0,
                  nodule_type="solid", upper_lobe=False, nodule_count=4, spiculation=False)
    values.update(over)
    return BrockInputs(**values)


# -- Brock: the published equation -------------------------------------------------------------
def test_brock_coefficients_are_the_published_full_model_with_spiculation() -> None:
    """McWilliams et al., NEJM 2013, full model with spiculation; the same values are
    tabulated in Eur Radiol 2019;29:5367 (Table 2, "BU" column), which also gives the
    uncentred intercept 0.2761 = -6.7892 - 62*0.0287 + sqrt(2.5)*5.3854 + 4*0.0824: a
    published number that checks the centring of age (62), size (4 mm) and count (4)."""
    c = BROCK_COEFFICIENTS
    assert c == {"intercept": -6.7892, "age": 0.0287, "female": 0.6011,
                 "family_history": 0.2961, "emphysema": 0.2953, "size": -5.3854,
                 "part_solid": 0.377, "non_solid": -0.1276, "upper_lobe": 0.6581,
                 "nodule_count": -0.0824, "spiculation": 0.7729}
    uncentred = (c["intercept"] - 62 * c["age"] - math.sqrt(2.5) * c["size"]
                 - 4 * c["nodule_count"])
    assert round(uncentred, 4) == 0.2761


@pytest.mark.parametrize("age,female,size,kind,count,flags", [
    (55, False, 8.0, "non-solid", 3, 0),
    (70, True, 15.0, "part-solid", 1, 1),
    (74, False, 22.5, "solid", 2, 1),
])
def test_brock_matches_the_published_uncentred_equation(age, female, size, kind, count,
                                                        flags) -> None:
    """The Eur Radiol 2019 Table 2 form: eta = 0.2761 + 0.0287*age + 0.6011*female
    + 0.2961*FH + 0.2953*emphysema - 5.3854*(size/10)^-0.5 + 0.377*PS - 0.1276*NS
    + 0.6581*upper - 0.0824*count + 0.7729*spiculation; equal to ours within the rounding
    of its intercept to 4 decimals."""
    r = brock_probability(full(age=age, sex="F" if female else "M", family_history=flags,
                               emphysema=flags, size_mm=size, nodule_type=kind,
                               upper_lobe=flags, nodule_count=count, spiculation=flags))
    eta = (0.2761 + 0.0287 * age + 0.6011 * female + (0.2961 + 0.2953 + 0.6581 + 0.7729) * flags
           - 5.3854 * (size / 10) ** -0.5 + 0.377 * (kind == "part-solid")
           - 0.1276 * (kind == "non-solid") - 0.0824 * count)
    assert r.linear_predictor == pytest.approx(eta, abs=1e-4)
    assert r.probability == pytest.approx(1 / (1 + math.exp(-eta)), abs=1e-5)


# -- Brock: worked examples ----------------------------------------------------------------------
# No published worked example stating the inputs and the resulting Brock probability could
# be found in the sources searched (the NEJM paper and appendix, the BTS guideline and
# calculator page, Radiopaedia, calculator documentation); the examples below are worked
# by hand from the equation, arithmetic shown, and asserted to the 4 decimals shown.
def test_brock_reference_patient_is_the_intercept() -> None:
    """62-year-old man, no family history, no emphysema, 4 mm solid nodule, not upper
    lobe, 4 nodules, no spiculation: every centred term is 0, so eta = -6.7892 and
    p = 1 / (1 + e^6.7892) = 1 / (1 + 888.2987) = 0.0011246."""
    r = brock_probability(full())
    assert r.linear_predictor == pytest.approx(-6.7892, abs=1e-12)
    assert all(abs(t.contribution) < 1e-12 for t in r.terms)
    assert round(r.probability, 7) == 0.0011246
    assert r.missing == () and r.probability_range == (r.probability, r.probability)


def test_brock_worked_example_high_risk_woman() -> None:
    """70-year-old woman, family history, emphysema, 15 mm part-solid spiculated nodule in
    an upper lobe, the only nodule:
      age        0.0287 * (70 - 62)                       =  0.2296
      female                                              =  0.6011
      family history                                      =  0.2961
      emphysema                                           =  0.2953
      size      -5.3854 * (1.5^-0.5 - 1.5811388)
              = -5.3854 * (0.8164966 - 1.5811388) = -5.3854 * -0.7646422 = 4.1179
      part-solid                                          =  0.3770
      upper lobe                                          =  0.6581
      count     -0.0824 * (1 - 4)                         =  0.2472
      spiculation                                         =  0.7729
      sum 7.5952; eta = -6.7892 + 7.5952 = 0.8060; p = 1 / (1 + e^-0.8060) = 0.6913."""
    r = brock_probability(full(age=70, sex="F", family_history=True, emphysema=True,
                               size_mm=15, nodule_type="part-solid", upper_lobe=True,
                               nodule_count=1, spiculation=True))
    expected = {"age": 0.2296, "female": 0.6011, "family_history": 0.2961,
                "emphysema": 0.2953, "size": 4.1179, "part_solid": 0.377, "non_solid": 0.0,
                "upper_lobe": 0.6581, "nodule_count": 0.2472, "spiculation": 0.7729}
    assert {t.name: round(t.contribution, 4) for t in r.terms} == expected
    assert round(r.linear_predictor, 4) == 0.8060
    assert round(r.probability, 4) == 0.6913
    assert r.linear_predictor == pytest.approx(r.intercept + sum(t.contribution for t in r.terms))


def test_brock_worked_example_small_ground_glass_nodule() -> None:
    """55-year-old man, 8 mm non-solid nodule in a lower lobe, 3 nodules, no other factor:
      age   0.0287 * (55 - 62) = -0.2009
      size -5.3854 * (0.8^-0.5 - 1.5811388) = -5.3854 * (1.1180340 - 1.5811388)
           = -5.3854 * -0.4631048 = 2.4940
      non-solid -0.1276;  count -0.0824 * (3 - 4) = 0.0824
      eta = -6.7892 - 0.2009 + 2.4940 - 0.1276 + 0.0824 = -4.5413; p = 0.0105."""
    r = brock_probability(full(age=55, size_mm=8, nodule_type="ground glass", nodule_count=3))
    assert round(r.term("size").contribution, 4) == 2.4940
    assert r.term("non_solid").contribution == -0.1276
    assert round(r.linear_predictor, 4) == -4.5413
    assert round(r.probability, 4) == 0.0105


def test_brock_probability_rises_with_size_and_spiculation() -> None:
    """Larger nodules and spiculation raise the probability; spiculation by the odds
    ratio e^0.7729 exactly."""
    small, large = (brock_probability(full(size_mm=s)).probability for s in (5, 12))
    assert small < large
    plain = brock_probability(full(size_mm=9))
    spic = brock_probability(full(size_mm=9, spiculation=True))
    ratio = (spic.probability / (1 - spic.probability)) / (plain.probability
                                                            / (1 - plain.probability))
    assert ratio == pytest.approx(math.exp(0.7729))


# -- Brock: sources and missing inputs ------------------------------------------------------------
def test_brock_sources_say_measured_given_or_assumed() -> None:
    inputs = BrockInputs(age=66, sex="F", size_mm=9.0, nodule_type="solid", upper_lobe=True,
                         nodule_count=2, spiculation=False, emphysema=True,
                         measured={"size_mm", "nodule_type", "upper_lobe", "nodule_count",
                                   "spiculation", "emphysema"})
    assert inputs.source("age") == "given"
    assert inputs.source("size_mm") == "measured"
    assert inputs.source("family_history") == "missing"
    r = brock_probability(inputs)
    assert r.sources == {"age": "given", "sex": "given", "family_history": "assumed-default",
                         "emphysema": "measured", "size_mm": "measured",
                         "nodule_type": "measured", "upper_lobe": "measured",
                         "nodule_count": "measured", "spiculation": "measured"}
    assert r.missing == ("family_history",)
    assert r.assumed == {"family_history": False}


def test_brock_missing_yes_no_input_is_absent_and_widens_the_range() -> None:
    """A missing family history is computed as absent; the range's upper end is the
    probability had it been present, the lower end the point estimate."""
    r = brock_probability(full(age=68, size_mm=11, family_history=None))
    with_fh = brock_probability(full(age=68, size_mm=11, family_history=True))
    without = brock_probability(full(age=68, size_mm=11, family_history=False))
    assert r.probability == pytest.approx(without.probability)
    assert r.probability_range == pytest.approx((without.probability, with_fh.probability))


def test_brock_missing_sex_and_type_range_over_their_levels() -> None:
    """Missing sex and type: point estimate male/solid; the range runs from male/non-solid
    (lowest) to female/part-solid (highest)."""
    r = brock_probability(full(size_mm=10, sex=None, nodule_type=float("nan")))
    assert r.assumed == {"sex": "male", "nodule_type": "solid"}
    low = brock_probability(full(size_mm=10, sex="M", nodule_type="non-solid")).probability
    high = brock_probability(full(size_mm=10, sex="F", nodule_type="part-solid")).probability
    assert r.probability_range == pytest.approx((low, high))
    assert r.probability == pytest.approx(brock_probability(full(size_mm=10)).probability)


def test_brock_missing_count_assumes_one_and_says_so() -> None:
    r = brock_probability(full(nodule_count=None, size_mm=7))
    assert r.assumed == {"nodule_count": 1}
    assert r.term("nodule_count").contribution == pytest.approx(-0.0824 * (1 - 4))
    assert any("nodule count missing" in n for n in r.notes)


@pytest.mark.parametrize("missing", ["age", "size_mm"])
def test_brock_refuses_without_age_or_size(missing: str) -> None:
    with pytest.raises(ReferenceInputError, match="missing") as err:
        brock_probability(full(**{missing: None}))
    assert "\n" not in str(err.value)
    assert isinstance(err.value, LungfuseError) and err.value.exit_code == 2


def test_brock_notes_extrapolation_beyond_pancan() -> None:
    assert any("50-75" in n for n in brock_probability(full(age=82)).notes)
    assert any("mass" in n for n in brock_probability(full(size_mm=35)).notes)
    assert brock_probability(full(age=60, size_mm=20)).notes == ()


# -- Brock: bad input --------------------------------------------------------------------------
@pytest.mark.parametrize("over,pattern", [
    ({"age": 5}, "age 5 is outside 18-100"),
    ({"age": 101}, "age 101 is outside"),
    ({"age": "old"}, "age 'old' is not a number"),
    ({"age": True}, "is not a number"),
    ({"size_mm": 0}, r"nodule size 0 mm is outside \(0, 100\]"),
    ({"size_mm": -3}, "nodule size -3 mm"),
    ({"size_mm": 150}, "nodule size 150 mm"),
    ({"size_mm": float("inf")}, "not finite"),
    ({"nodule_count": 0}, "nodule count 0 is not a whole number >= 1"),
    ({"nodule_count": 1.5}, "nodule count 1.5"),
    ({"sex": "X"}, "sex 'X' is not female/male"),
    ({"nodule_type": "cavitary"}, "nodule type 'cavitary' is not one of"),
    ({"spiculation": "maybe"}, "spiculation 'maybe' is not yes/no"),
    ({"emphysema": 2}, "emphysema 2 is not yes/no"),
    ({"measured": {"size", "age"}}, "measured names unknown input"),
])
def test_brock_bad_input_is_one_line(over: dict, pattern: str) -> None:
    with pytest.raises(ReferenceInputError, match=pattern) as err:
        full(**over)
    assert "\n" not in str(err.value)


def test_brock_accepts_table_spellings() -> None:
    """0/1, yes/no text, F/M and a float count (as pandas gives them) normalise."""
    a = full(sex="F", family_history=1, emphysema="yes", upper_lobe=np.True_,
             nodule_count=2.0, nodule_type="Part_Solid")
    assert (a.sex, a.family_history, a.emphysema, a.upper_lobe, a.nodule_count,
            a.nodule_type) == ("female", True, True, True, 2, "part-solid")


# -- Lung-RADS v2022 -------------------------------------------------------------------------------
@pytest.mark.parametrize("size,expected", [
    (5.9, "2"), (6.0, "3"), (6.1, "3"),
    (7.9, "3"), (8.0, "4A"), (8.1, "4A"),
    (14.9, "4A"), (15.0, "4B"), (15.1, "4B"),
    (5.94, "2"), (5.95, "3"),   # reported to one decimal: 5.9 and 6.0
])
def test_lung_rads_solid_boundaries(size: float, expected: str) -> None:
    r = lung_rads_category(size, "solid", suspicious_features=False)
    assert r.category == expected and r.candidates == (expected,)


@pytest.mark.parametrize("size,solid,expected", [
    (5.9, 3.0, "2"), (5.9, None, "2"),
    (6.0, 5.9, "3"), (9.0, 6.0, "4A"), (9.0, 6.1, "4A"),
    (9.0, 7.9, "4A"), (9.0, 8.0, "4B"), (12.0, 8.1, "4B"),
    (20.0, 5.9, "3"),
])
def test_lung_rads_part_solid_boundaries(size: float, solid: float | None,
                                         expected: str) -> None:
    r = lung_rads_category(size, "part-solid", solid, suspicious_features=False)
    assert r.category == expected


@pytest.mark.parametrize("size,expected", [(29.9, "2"), (30.0, "3"), (30.1, "3"), (5, "2")])
def test_lung_rads_non_solid_boundaries(size: float, expected: str) -> None:
    assert lung_rads_category(size, "GGN", suspicious_features=False).category == expected


def test_lung_rads_part_solid_without_solid_component_is_left_open() -> None:
    r = lung_rads_category(10.0, "part-solid")
    assert r.category is None and r.candidates == ("3", "4A", "4B")
    assert "solid component" in r.undetermined[0]
    assert "6 months" in r.management and "3 months" in r.management


@pytest.mark.parametrize("category,interval", [("2", "12 months"), ("3", "6 months"),
                                               ("4A", "3 months"), ("4B", "diagnostic chest CT")])
def test_lung_rads_management_carries_the_interval(category: str, interval: str) -> None:
    size = {"2": 4.0, "3": 7.0, "4A": 10.0, "4B": 20.0}[category]
    r = lung_rads_category(size, "solid", suspicious_features=False)
    assert r.category == category
    assert interval in r.management
    assert r.malignancy_risk == {"2": "< 1%", "3": "1-2%", "4A": "5-15%", "4B": "> 15%"}[category]


def test_lung_rads_4x_needs_suspicious_features_on_a_category_3_or_4_nodule() -> None:
    assert lung_rads_category(10.0, "solid", suspicious_features=True).category == "4X"
    assert lung_rads_category(10.0, "part-solid", suspicious_features=True).category == "4X"
    small = lung_rads_category(4.0, "solid", suspicious_features=True)
    assert small.category == "2"
    assert any("stays 2" in u for u in small.undetermined)
    unassessed = lung_rads_category(10.0, "solid")
    assert unassessed.category == "4A"
    assert any(u.startswith("4X not assessed") for u in unassessed.undetermined)
    assert not any(u.startswith("4X") for u in lung_rads_category(4.0, "solid").undetermined)


def test_lung_rads_states_what_size_and_type_cannot_decide() -> None:
    r = lung_rads_category(7.0, "solid", suspicious_features=False)
    assert any(u.startswith("baseline screen assumed") for u in r.undetermined)
    assert any("category 0" in u and "S modifier" in u for u in r.undetermined)
    assert r.size_mm == 7.0 and r.version == "v2022"


@pytest.mark.parametrize("args,pattern", [
    ((0, "solid"), r"nodule size 0 mm is outside"),
    ((-2, "solid"), "nodule size -2 mm"),
    ((8, "calcified"), "nodule type 'calcified'"),
    ((8, "solid", 3), "part-solid nodules only"),
    ((8, "part-solid", 8), "not smaller than the nodule"),
    ((8, "part-solid", 0), "must be > 0"),
])
def test_lung_rads_bad_input_is_one_line(args: tuple, pattern: str) -> None:
    with pytest.raises(ReferenceInputError, match=pattern) as err:
        lung_rads_category(*args)
    assert "\n" not in str(err.value)


# -- emphysema (LAA-950) ---------------------------------------------------------------------------
def test_emphysema_fraction_counts_lung_voxels_at_or_below_minus_950() -> None:
    """10 lung voxels, 3 of them <= -950 HU (one exactly -950); the -1000 HU air outside
    the mask is not lung and does not count: LAA-950 = 3 / 10."""
    hu = np.full((2, 3, 4), -1000.0)
    mask = np.zeros_like(hu, dtype=bool)
    lung = [-980, -950, -960, -949, -900, -850, -800, -700, -949.5, -100]
    idx = np.argwhere(np.ones_like(mask))[:10]
    for (z, y, x), v in zip(idx, lung, strict=True):
        hu[z, y, x] = v
        mask[z, y, x] = True
    assert emphysema_fraction(hu, mask) == pytest.approx(0.3)
    assert emphysema_fraction(hu, mask.astype(np.uint8)) == pytest.approx(0.3)
    assert emphysema_fraction(hu, mask, threshold_hu=-900) == pytest.approx(0.6)


def test_emphysema_present_at_five_percent() -> None:
    assert EMPHYSEMA_LAA950_PRESENT == 0.05
    assert emphysema_present(0.05) and emphysema_present(0.2)
    assert not emphysema_present(0.0499)
    with pytest.raises(ReferenceInputError, match="outside 0-1"):
        emphysema_present(5.0)


@pytest.mark.parametrize("hu,mask,pattern", [
    (np.zeros((2, 2)), np.ones((2, 3)), "differs from lung mask shape"),
    (np.zeros((2, 2)), np.zeros((2, 2)), "lung mask is empty"),
    (np.array([[np.nan, -900.0]]), np.ones((1, 2)), "non-finite"),
])
def test_emphysema_fraction_bad_input(hu, mask, pattern: str) -> None:
    with pytest.raises(ReferenceInputError, match=pattern):
        emphysema_fraction(hu, mask)
