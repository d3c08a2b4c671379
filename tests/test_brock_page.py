"""Brock (PanCan) and Lung-RADS beside the fused risk: the inputs measured on the CT
(phantoms whose truth is known), the page section with each input's source, bad input as
one line, and the sentence that leads the patient page."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("skimage")

from lungfuse.plugins.imaging_infnet.brock_inputs import (  # noqa: E402
    CtBrockInputs,
    lung_mask,
    measure_brock_inputs,
)
from lungfuse.plugins.imaging_infnet.brock_page import SECTION_TITLE, brock_section  # noqa: E402
from lungfuse.plugins.imaging_infnet.config import BrockSettings  # noqa: E402
from lungfuse.plugins.imaging_infnet.ctio import Volume  # noqa: E402
from lungfuse.plugins.imaging_infnet.features import Nodule, quantitative  # noqa: E402

SPACING = np.array([0.7, 0.7, 1.0])  # x, y, z mm
SHAPE = (60, 96, 96)  # z, y, x


def _chest(seed: int = 0, emphysema_patch: bool = False) -> tuple[Volume, np.ndarray]:
    """A phantom chest: air around a 40 HU body holding two -850 HU lungs that span z
    10-49 (tapering to the apex at high z: LPS, +z superior), noise 15 HU. Returns the
    volume and the true lung mask. With ``emphysema_patch``, a -980 HU block fills part of
    the left lung."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]].astype(np.float32)
    u, v = (x + 0.5) / SHAPE[2] * 2 - 1, (y + 0.5) / SHAPE[1] * 2 - 1
    hu = np.full(SHAPE, -1000.0, np.float32)
    hu[(u / 0.95) ** 2 + (v / 0.8) ** 2 < 1] = 40.0
    w = np.clip((z - 10) / 39.0, 0, 1)
    taper = 1.0 - 0.35 * w ** 2
    lungs = np.zeros(SHAPE, bool)
    for cu in (-0.45, 0.45):
        lungs |= (((u - cu) / (0.34 * taper)) ** 2 + (v / (0.6 * taper)) ** 2 < 1)
    lungs &= (z >= 10) & (z <= 49)
    hu[lungs] = -850.0
    if emphysema_patch:
        patch = lungs & (u < -0.45) & (z >= 20) & (z < 40)
        hu[patch] = -980.0
    hu += rng.normal(0, 15.0, SHAPE).astype(np.float32)
    return Volume(hu, np.array([-33.6, -33.6, -200.0]), SPACING.copy(), np.eye(3)), lungs


def _ball(centre_xyz: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    z, y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]].astype(np.float32)
    d = np.sqrt(((x - centre_xyz[0]) * SPACING[0]) ** 2 + ((y - centre_xyz[1]) * SPACING[1]) ** 2
                + ((z - centre_xyz[2]) * SPACING[2]) ** 2)
    return d <= radius_mm


def _spikes(centre_xyz: tuple[float, float, float], radius_mm: float, n: int = 14,
            seed: int = 1) -> np.ndarray:
    """Thin spicules (lines one voxel wide) from the surface out to 2.6 radii."""
    rng = np.random.default_rng(seed)
    out = np.zeros(SHAPE, bool)
    c = np.array(centre_xyz, float)
    for d in rng.normal(size=(n, 3)):
        d /= np.linalg.norm(d)
        for t in np.linspace(radius_mm, 2.6 * radius_mm, 60):
            x, y, z = np.round(c + d * t / SPACING).astype(int)
            if 0 <= z < SHAPE[0] and 0 <= y < SHAPE[1] and 0 <= x < SHAPE[2]:
                out[z, y, x] = True
    return out


def _nodule(vol: Volume, mask: np.ndarray, centre_xyz) -> Nodule:
    """The nodule as the segmenter would hand it over: its crop, box and features."""
    zz, yy, xx = np.nonzero(mask)
    box = (slice(zz.min(), zz.max() + 1), slice(yy.min(), yy.max() + 1),
           slice(xx.min(), xx.max() + 1))
    feats = quantitative(vol, mask[box], box)
    feats["seg_fallback"] = 0.0
    return Nodule(np.asarray(centre_xyz, float), box, mask[box], feats)


def _with(vol: Volume, mask: np.ndarray, hu: float | np.ndarray) -> Volume:
    arr = vol.array.copy()
    arr[mask] = hu if np.isscalar(hu) else np.asarray(hu)[mask]
    return vol.like(arr)


LEFT_MID = (24.0, 48.0, 30.0)  # x, y, z voxel: in the left lung, mid height


# -- inputs measured on the CT -----------------------------------------------------------------
def test_solid_sphere_measures_its_size_type_and_no_spiculation() -> None:
    vol, _ = _chest()
    ball = _ball(LEFT_MID, 5.0)
    vol = _with(vol, ball, 30.0)
    ct = measure_brock_inputs(vol, _nodule(vol, ball, LEFT_MID), count=2, count_how="2 annotated")
    assert ct.size_mm == pytest.approx(10.0, abs=0.8)  # Brock: the longest diameter
    assert ct.mean_diameter_mm == pytest.approx(10.0, abs=0.8)  # Lung-RADS: mean diameter
    assert ct.nodule_type == "solid" and ct.solid_fraction > 0.95
    assert ct.spiculation is False and ct.margin_irregularity < 0.2
    assert ct.nodule_count == 2 and ct.how["nodule_count"] == "2 annotated"
    assert ct.measured() == {"size_mm", "nodule_type", "nodule_count", "spiculation",
                             "upper_lobe", "emphysema"}


def test_ground_glass_sphere_is_non_solid_and_a_solid_core_makes_it_part_solid() -> None:
    vol, _ = _chest()
    ball = _ball(LEFT_MID, 6.0)
    ggo = measure_brock_inputs(_with(vol, ball, -600.0),
                               _nodule(_with(vol, ball, -600.0), ball, LEFT_MID), count=1)
    assert ggo.nodule_type == "non-solid" and ggo.solid_fraction < 0.025
    core = _ball(LEFT_MID, 3.0)
    hu = np.where(core, 20.0, -600.0)
    mixed = _with(vol, ball, hu)
    ps = measure_brock_inputs(mixed, _nodule(mixed, ball, LEFT_MID), count=1)
    assert ps.nodule_type == "part-solid" and 0.025 <= ps.solid_fraction < 0.8
    assert ps.solid_component_mm == pytest.approx(6.0, abs=1.0)  # the core's diameter


def test_spicules_make_a_nodule_spiculated() -> None:
    vol, _ = _chest()
    shape = _ball(LEFT_MID, 4.0) | _spikes(LEFT_MID, 4.0)
    vol = _with(vol, shape, 30.0)
    ct = measure_brock_inputs(vol, _nodule(vol, shape, LEFT_MID), count=1)
    assert ct.spiculation is True and ct.margin_irregularity >= 0.4
    assert ct.nodule_type == "solid"


@pytest.mark.parametrize(("z", "upper"), [(46.0, True), (40.0, True), (30.0, False),
                                          (14.0, False)])
def test_upper_lobe_is_the_cranial_third_of_the_lungs(z: float, upper: bool) -> None:
    vol, _ = _chest()
    centre = (24.0, 48.0, z)
    ball = _ball(centre, 2.5)
    vol = _with(vol, ball, 30.0)
    ct = measure_brock_inputs(vol, _nodule(vol, ball, centre), count=1)
    # lungs span z 10..49 (world z rises with the index: 49 is the apex)
    assert ct.position_from_apex == pytest.approx((49 - z) / 39, abs=0.03)
    assert ct.upper_lobe is upper
    assert "height approximation" in ct.how["upper_lobe"]


def test_lung_mask_and_emphysema_from_a_low_attenuation_patch() -> None:
    vol, lungs = _chest()
    found = lung_mask(vol.array)
    assert (found & lungs).sum() / lungs.sum() > 0.98  # the lungs, not the air around
    assert (found & ~lungs).sum() < 0.01 * lungs.sum()
    ball = _ball(LEFT_MID, 3.0)
    clean = measure_brock_inputs(_with(vol, ball, 30.0), None)
    assert clean.emphysema is False and clean.laa950 < 0.01
    sick, lungs = _chest(emphysema_patch=True)
    truth = float((sick.array[lungs] <= -950).mean())
    ct = measure_brock_inputs(sick, None)
    assert truth > 0.1 and ct.laa950 == pytest.approx(truth, abs=0.01)
    assert ct.emphysema is True
    assert ct.size_mm is None and ct.how["size_mm"] == "no nodule found on the scan"


def test_where_the_segmenter_found_nothing_the_nodule_is_measured_by_hu() -> None:
    vol, _ = _chest()
    ball = _ball(LEFT_MID, 5.0)
    ggo = _with(vol, ball, -600.0)
    nod = _nodule(ggo, _ball(LEFT_MID, 8.0), LEFT_MID)  # the annotated ball: too big
    nod.features["seg_fallback"] = 1.0
    ct = measure_brock_inputs(ggo, nod, count=1, annotated_diameter_mm=16.0)
    assert ct.size_mm == pytest.approx(10.0, abs=0.8) and "size_mm" in ct.measured()
    assert ct.nodule_type == "non-solid" and ct.spiculation is False
    assert "HU threshold (-700 HU" in ct.how["size_mm"] and any("-700 HU" in n for n in ct.notes)
    # nothing above -700 HU there either: the ball is no measurement
    ct = measure_brock_inputs(vol, nod, count=1, annotated_diameter_mm=9.5)
    assert ct.size_mm == 9.5 and "size_mm" in ct.given and "size_mm" not in ct.measured()
    assert ct.nodule_type is None and ct.spiculation is None


# -- the page section ----------------------------------------------------------------------------
def _ct(**kw) -> CtBrockInputs:
    base = dict(size_mm=15.0, mean_diameter_mm=14.0, nodule_type="solid", nodule_count=1,
                spiculation=True, upper_lobe=True, emphysema=False, laa950=0.01,
                how={"size_mm": "long axis 15.0 mm"})
    base.update(kw)
    return CtBrockInputs(**base)


def _sources(sec) -> dict[str, str]:
    return dict(zip(sec.table["input"], sec.table["source"], strict=True))


def test_section_computes_brock_and_lung_rads_with_each_source() -> None:
    from lungfuse.plugins.clinical.references import BrockInputs, brock_probability

    row = pd.Series({"age": 70, "sex": "F", "family_history": 1})
    sec = brock_section(_ct(), row, BrockSettings(), "P1")
    assert sec.title == SECTION_TITLE and not sec.problem()
    want = brock_probability(BrockInputs(age=70, sex="F", family_history=True,
                                         emphysema=False, size_mm=15.0, nodule_type="solid",
                                         upper_lobe=True, nodule_count=1, spiculation=True))
    assert f"{100 * want.probability:.1f}%" in sec.paragraphs[0]
    src = _sources(sec)
    assert src["age (years)"] == src["family history of lung cancer"] == \
        "given in the clinical table"
    assert sec.table.set_index("input").loc["family history of lung cancer", "value"] == "yes"
    assert src["nodule size (longest diameter, mm)"] == src["spiculation"] == "measured from CT"
    # solid 14 mm mean diameter: 4A; spiculated: 4X, with the category's management
    assert "category 4X" in " ".join(sec.paragraphs) and "Management:" in " ".join(sec.paragraphs)
    assert sec.lead == f"Brock (PanCan) {100 * want.probability:.1f}%, Lung-RADS 4X"
    assert sec.lead_missing == []


def test_missing_inputs_are_said_and_required_ones_stop_brock() -> None:
    row = pd.Series({"age": 64.0, "sex": None})
    sec = brock_section(_ct(spiculation=False), row, BrockSettings(), "P2")
    src = _sources(sec)
    assert src["sex"] == "missing (assumed male)"
    assert src["family history of lung cancer"] == "missing (assumed no)"
    how = dict(zip(sec.table["input"], sec.table["how"], strict=True))
    assert how["family history of lung cancer"] == "the clinical table has no column " \
        "'family_history'" and how["sex"] == "blank in the clinical table (column 'sex')"
    assert "over the values the missing inputs could take" in sec.paragraphs[0]
    assert sec.lead_missing == ["sex (Brock)", "family history (Brock)"]
    said = " ".join(sec.paragraphs)  # not spiculated: 4X left open, in the page's words
    assert "4X not assessed: no spiculation was measured" in said
    assert "suspicious_features" not in said
    # no age at all: Brock is not computed (never a silent zero); Lung-RADS still is
    none = brock_section(_ct(), pd.Series(dtype=object), BrockSettings(age_column=None), "P3")
    assert none.lead.startswith("Brock (PanCan) not computed, Lung-RADS 4X")
    assert any("age (years)" in p and "missing" in p for p in none.paragraphs)
    assert "age (Brock)" in none.lead_missing and "0.0%" not in " ".join(none.paragraphs)


def test_an_emphysema_column_overrides_the_measured_call() -> None:
    row = pd.Series({"age": 64, "sex": "M", "family_history": "no", "copd_read": "yes"})
    sec = brock_section(_ct(), row, BrockSettings(emphysema_column="copd_read"))
    t = sec.table.set_index("input")
    assert t.loc["emphysema", "value"] == "yes"
    assert t.loc["emphysema", "source"] == "given in the clinical table"


@pytest.mark.parametrize(("row", "ct", "line"), [
    ({"age": 5, "sex": "F"}, {}, "Brock model: age 5 is outside 18-100 years"),
    ({"age": 70, "sex": "F"}, {"size_mm": 0.0, "mean_diameter_mm": 0.0},
     "Brock model: nodule size 0 mm is outside (0, 100] mm"),
])
def test_out_of_range_input_is_one_line_on_the_page_and_in_the_log(row, ct, line,
                                                                   caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lungfuse"):
        sec = brock_section(_ct(**ct), pd.Series(row), BrockSettings(), "P9")
    said = [p for p in sec.paragraphs if line in p]
    assert len(said) == 1 and said[0].startswith("Not computed: ") and "\n" not in said[0]
    logged = [r.getMessage() for r in caplog.records if line in r.getMessage()]
    assert logged and logged[0].startswith("patient P9: ") and logged[0].isascii()
    assert sec.lead.startswith("Brock (PanCan) not computed") and not sec.problem()
    if "size" in line:  # Lung-RADS has no size either: said too, not assigned
        assert any(p.startswith("Not computed: Lung-RADS: nodule size 0 mm") for p in
                   sec.paragraphs) and sec.lead.endswith("Lung-RADS not assigned")


# -- through the CT modality's hook --------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    """The infnet modality with an untrained segmenter given as a checkpoint (as in
    test_imaging_figures): the page hooks run the same whatever the weights."""
    pytest.importorskip("torch")
    from lungfuse.core.contracts import ModalityContext
    from lungfuse.plugins.imaging_infnet import synthetic
    from lungfuse.plugins.imaging_infnet.config import SliceSettings
    from lungfuse.plugins.imaging_infnet.network import InfNet
    from lungfuse.plugins.imaging_infnet.plugin import InfNetConfig, InfNetModality
    from lungfuse.plugins.imaging_infnet.train import save_checkpoint

    root = tmp_path_factory.mktemp("brock")
    ckpt = save_checkpoint(root / "seg.pt", InfNet("test_resnet", channel=8), ["P0"],
                           SliceSettings(img_size=64))
    uids = ["1.3.0", "1.3.1", "1.3.2"]
    synthetic.write_tree(root / "ct", uids, seed=5, size=64, depth=16)
    plug = InfNetModality(InfNetConfig.model_validate(
        {"ct_root": root / "ct", "annotations": root / "ct" / "annotations.csv",
         "checkpoint": ckpt, "slices": {"img_size": 64}, "fast": {"enabled": False},
         "embedding_dim": 8}))
    rows = pd.DataFrame({"seriesuid": uids, "age": [70.0, 5.0, 66.0], "sex": ["F", "M", "M"],
                         "family_history": [1, 0, None]},
                        index=pd.Index(["P0", "P1", "P2"], name="patient_id"))
    plug.prepare(rows.loc[["P0"]], ModalityContext(workdir=root, progress=False))
    return root, plug, rows


def test_the_ct_hook_brings_the_brock_section_for_each_patient_of_a_batch(fitted, tmp_path,
                                                                          caplog) -> None:
    root, plug, rows = fitted
    ann = pd.read_csv(root / "ct" / "annotations.csv", dtype={"seriesuid": str})
    out = {}
    with caplog.at_level(logging.WARNING, logger="lungfuse"):
        for pid in rows.index:
            out[pid] = plug.patient_section({"id": pid}, rows.loc[pid], tmp_path)
    for pid, sec in out.items():  # the bad age costs no patient their section
        assert sec.title == "Nodule" and not sec.problem()
        brock, = sec.more
        assert brock.title == SECTION_TITLE
        t = brock.table.set_index("input")
        n_ann = int((ann.seriesuid == rows.loc[pid, "seriesuid"]).sum())
        assert t.loc["nodule count", "value"] == str(n_ann)
        assert t.loc["nodule count", "source"] == "measured from CT"
        assert t.loc["age (years)", "source"] == "given in the clinical table"
    assert out["P0"].more[0].lead.startswith("Brock (PanCan) ") and \
        "not computed" not in out["P0"].more[0].lead
    assert any(p.startswith("Not computed: Brock model: age 5")
               for p in out["P1"].more[0].paragraphs)
    assert "patient P1: Brock model: age 5 is outside" in caplog.text
    assert "family history (Brock)" in out["P2"].more[0].lead_missing  # blank in the table
    assert "family history (Brock)" not in out["P0"].more[0].lead_missing
    plug.config.brock.enabled = False
    try:
        assert plug.patient_section({"id": "P0"}, rows.loc["P0"], tmp_path).more == []
    finally:
        plug.config.brock.enabled = True


# -- the sentence that leads the page ------------------------------------------------------------
def test_lead_sentence_orders_risk_references_and_what_was_missing() -> None:
    from lungfuse.core.report.patient import lead_sentence

    s = {"risk": 0.4123, "missing": ["mutations"]}
    text = lead_sentence(s, True, ["Brock (PanCan) 7.9%, Lung-RADS 4A"],
                         ["family history (Brock)"])
    assert text == ("lungfuse fused risk 0.412 (41.2%, calibrated probability of malignancy); "
                    "Brock (PanCan) 7.9%, Lung-RADS 4A; missing: mutations (not in the fused "
                    "risk), family history (Brock).")
    assert lead_sentence({"risk": 0.2, "missing": []}, True, [], []).endswith(
        "; nothing missing.")
    assert "log relative hazard" in lead_sentence({"risk": 1.3, "missing": []}, False, [], [])


# -- the whole page, through core, in headless Chromium ------------------------------------------
def _dom(page) -> str:
    """The page's text after load in headless Chromium (tags stripped)."""
    import re
    import subprocess
    import tempfile

    from browser import chromium

    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
             page.as_uri()], capture_output=True, text=True, encoding="utf-8",
            errors="replace", timeout=60)
    return " ".join(re.sub(r"<[^>]+>", " ", res.stdout).split())


def test_page_leads_with_the_sentence_and_shows_the_brock_section(tmp_path) -> None:
    """A run of a toy modality whose page hook hands over the CT modality's Brock section
    (built from phantom measurements): core puts the leading sentence first, the section
    after its parent, and Chromium renders it with every figure loaded."""
    pytest.importorskip("torch")
    from browser import chromium, render_counts
    from test_pipeline import FakeModality, config, make_data, run

    from lungfuse.core.contracts import ModalitySection
    from lungfuse.core.scoring import score_patients

    class PagedFake(FakeModality):
        def patient_section(self, patient, row, workdir):
            sec = ModalitySection("Nodule", paragraphs=["toy nodule"])
            sec.add_figure(_png(), "toy nodule")
            sec.more.append(brock_section(_ct(), row, BrockSettings(), str(patient["id"])))
            return sec

    root = tmp_path / "data"
    root.mkdir()
    make_data(root)
    clin = pd.read_parquet(root / "clinical.parquet")
    clin["sex"] = "F"
    clin.to_parquet(root / "clinical.parquet")
    cfg = config(root, "binary", "gated", output_dir=str(tmp_path / "runs"))
    run_dir = run(cfg).run_dir
    have = set(pd.read_parquet(root / "fake.parquet").index)
    pid = next(i for i in sorted(clin.patient_id) if i in have)
    spec = {"patients": [{"id": pid}], "clinical": str(root / "clinical.parquet")}
    res = score_patients(run_dir, spec, tmp_path / "scores", plugins=[PagedFake], progress=False)
    s = res.patients[0]
    page = res.folder / s["page"]
    text = page.read_text(encoding="utf-8")
    risk = f"lungfuse fused risk {s['risk']:.3f}"
    order = [text.index(x) for x in (risk, "Brock (PanCan) ", "Lung-RADS 4X",
                                      "; missing: ", "family history (Brock).</b>",
                                      "<h2>Risk</h2>",
                                      "<h2>Nodule</h2>", f"<h2>{SECTION_TITLE}</h2>")]
    assert order == sorted(order)  # the sentence first (risk, Brock, Lung-RADS, missing)
    if chromium() is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium)")
    images, loaded = render_counts(page)
    assert images >= 3 and loaded == images
    shown = _dom(page)
    assert shown.index(risk) < shown.index("Brock (PanCan) and Lung-RADS")
    assert "Lung-RADS v2022" in shown and "measured from CT" in shown
    assert "given in the clinical table" in shown and "missing (assumed no)" in shown


def _png() -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(_chest()[0].array[30], cmap="gray")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# -- brock as a reference row of a binary run ----------------------------------------------------
def test_brock_reference_row_of_a_binary_run_on_the_synthetic_cohort(tiny_cohort,
                                                                    tmp_path) -> None:
    """A binary run on the synthetic cohort with ``baselines: [brock]``: every held-out
    patient scored by the published model (the CT modality's nodule measurements stand in
    as the synthetic truth of each index nodule; age, sex and family history from the
    cohort), with the model's metrics, CIs and paired difference; patients without a CT
    get the training median size, and no outcome moves a score."""
    pytest.importorskip("torch")
    import json

    from lungfuse.core.run import run_experiment
    from lungfuse.plugins.clinical.references import BrockInputs, brock_probability

    clin, feats, cfg, measured = _brock_run_inputs(tiny_cohort, tmp_path)

    def run(c):
        return run_experiment(c, plugins=[measured], progress=False)

    res = run(cfg)
    m = json.loads((res.run_dir / "metrics.json").read_text(encoding="utf-8"))
    b = m["baselines"]["brock"]
    assert b["status"] == "ok" and set(b["metrics"]["overall"]) == set(m["overall"])
    auroc = b["metrics"]["overall"]["auroc"]
    assert auroc["ci_low"] <= auroc["value"] <= auroc["ci_high"]
    assert b["difference"]["minus"] == "brock" and b["difference"]["n_boot"] > 0
    base = pd.read_parquet(res.run_dir / "baselines" / "predictions.parquet")
    model = pd.read_parquet(res.run_dir / "predictions.parquet")
    assert len(base) == len(model)  # every held-out patient, none dropped
    rows = clin.set_index("patient_id")
    for r in base.itertuples():
        if r.patient_id not in feats.index:
            continue
        f = feats.loc[r.patient_id]
        kind = {0.95: "solid", 0.3: "part-solid", 0.0: "non-solid"}[f.solid_fraction]
        want = brock_probability(BrockInputs(
            age=rows.loc[r.patient_id, "age"], sex=rows.loc[r.patient_id, "sex"],
            family_history=rows.loc[r.patient_id, "family_history"],
            size_mm=f.long_axis_mm, nodule_type=kind, nodule_count=int(f.n_nodules),
            spiculation=f.margin_irregularity > 0.4)).probability
        assert r.score == pytest.approx(want, rel=1e-5)  # features stored as float32
    no_ct = base[~base.patient_id.isin(feats.index)]
    assert len(no_ct) > 0  # scored with the training median size, not dropped or zero
    assert (no_ct.score > 0).all()
    # the published model reads no outcome: flipping every label leaves the scores
    flipped = clin.assign(malignant=1 - clin.malignant)
    flipped.to_parquet(tmp_path / "clinical.parquet")
    again = run({**cfg, "output_dir": str(tmp_path / "runs2")})
    base2 = pd.read_parquet(again.run_dir / "baselines" / "predictions.parquet")
    key = ["patient_id", "seed", "fold"]
    merged = base.merge(base2, on=key, suffixes=("", "_flipped"))
    assert len(merged) == len(base)
    assert np.allclose(merged.score, merged.score_flipped)


def _brock_run_inputs(tiny_cohort, tmp_path):
    """The synthetic cohort's clinical table, a stand-in for the CT modality's nodule
    features (the synthetic truth of each index nodule, handed over as they are, as infnet
    hands over its measurements) and a binary config with ``baselines: [brock]``."""
    from test_pipeline import FakeModality

    class Measured(FakeModality):
        def transform(self, patients, ctx):
            df = self._read()
            out = df[df.index.isin(patients.index)].astype("float64")
            out.index.name = "patient_id"
            return out

    clin = pd.read_parquet(tiny_cohort / "clinical.parquet")
    truth = pd.read_parquet(tiny_cohort / "truth.parquet").set_index("patient_id")
    ct = truth[truth.has_ct & (truth.n_nodules_rendered > 0)]
    feats = pd.DataFrame({
        "long_axis_mm": ct.index_diameter_mm,
        "solid_fraction": ct.index_solidity.map({"solid": 0.95, "part-solid": 0.3,
                                                 "ground-glass": 0.0}),
        "margin_irregularity": ct.index_shape.map({"spiculated": 0.7}).fillna(0.1),
        "n_nodules": ct.n_nodules_rendered.astype(float)}, index=ct.index)
    feats.index.name = "patient_id"
    feats.to_parquet(tmp_path / "ct.parquet")
    clin.to_parquet(tmp_path / "clinical.parquet")
    cfg = {"name": "brock", "seed": 0, "cohort": {"clinical": str(tmp_path / "clinical.parquet")},
           "task": {"kind": "binary"},
           "modalities": [{"kind": "fake", "name": "ct", "path": str(tmp_path / "ct.parquet")}],
           "fusion": {"kind": "concat", "hidden_dim": 8},
           "training": {"max_epochs": 2, "batch_size": 16, "patience": 1},
           "evaluation": {"folds": 2, "bootstrap": 30}, "baselines": ["brock"],
           "output_dir": str(tmp_path / "runs")}
    return clin, feats, cfg, Measured


def test_brock_reference_row_of_an_ablation(tiny_cohort, tmp_path) -> None:
    pytest.importorskip("torch")
    from lungfuse.core.ablation import run_ablation

    _, _, cfg, measured = _brock_run_inputs(tiny_cohort, tmp_path)
    res = run_ablation({**cfg, "output_dir": str(tmp_path / "abl")}, plugins=[measured],
                       progress=False)
    t = res.table
    row = t[t["baseline"]]
    assert list(row["variant"]) == ["ct | brock (baseline)"]
    assert row["patients"].iloc[0] == t[~t["baseline"]]["patients"].iloc[0]
    assert np.isfinite(row["auroc_delta_vs_ref"].iloc[0])
    assert "brock (baseline)" in (res.folder / "report.html").read_text(encoding="utf-8")
