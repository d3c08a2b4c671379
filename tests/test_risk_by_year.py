"""Risk by year for survival runs (issue 14, item 3): P(event by h) = 1 - S(h | x) from each
fold's Breslow baseline, its spread over fold models when scoring, a calibration check
per horizon on held-out patients, and horizons past the follow-up reported as not
estimable. The run's time column here counts months; horizons are in years."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_pipeline import FakeModality, config, make_data, run

from lungfuse.core.survival import Horizon, horizon_calibration, horizons_of

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

#: 0.5, 1 and 2 years are inside the cohort's follow-up (months); 50 years is not
HORIZONS = [0.5, 1.0, 2.0, 50.0]


@pytest.fixture(scope="module")
def surv_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("riskyear")
    make_data(root)
    res = run(config(root, "survival", "concat", training={"batch_size": 32},
                     evaluation={"time_unit": "months", "horizons": HORIZONS}))
    return root, res


def _score(run_dir: Path, ids: list[str], out: Path, report: bool = True):
    from lungfuse.core.scoring import score_patients

    return score_patients(run_dir, {"patients": [{"id": i} for i in ids]}, out,
                          plugins=[FakeModality], progress=False, report=report)


# ---------------------------------------------------------------------- config
def test_horizons_default_to_years_1_to_6_only_when_the_unit_is_known() -> None:
    from lungfuse.schemas import EvaluationConfig

    assert horizons_of(EvaluationConfig()) == []  # an old config: nothing new
    days = horizons_of(EvaluationConfig(time_unit="days"))
    assert [h.label for h in days] == ["1y", "2y", "3y", "4y", "5y", "6y"]
    assert days[1].time == pytest.approx(2 * 365.25)
    own = horizons_of(EvaluationConfig(horizons=[12, 30]))  # no unit: the column's own
    assert [(h.time, h.column) for h in own] == [(12.0, "risk_t12"), (30.0, "risk_t30")]
    with pytest.raises(ValueError, match="listed twice"):
        EvaluationConfig(horizons=[1, 1])
    with pytest.raises(ValueError):
        EvaluationConfig(time_unit="weeks")


# ---------------------------------------------------------------------- per fold
def _breslow_by_hand(eta: np.ndarray, event: np.ndarray, time: np.ndarray,
                     t: float) -> float:
    """S0(t) = exp(-sum over event times t_i <= t of d_i / sum_{t_j >= t_i} exp(eta_j))."""
    h = 0.0
    for ti in np.unique(time[(event == 1) & (time <= t)]):
        d = np.sum((time == ti) & (event == 1))
        h += d / np.sum(np.exp(eta[time >= ti]))
    return math.exp(-h)


def test_horizon_columns_are_one_minus_breslow_survival(surv_run) -> None:
    """risk_<h> of every held-out patient equals 1 - S0(h)^exp(eta) with S0 recomputed by
    hand from the fold model's outputs on its own training patients."""
    from lungfuse.core.contracts import ModalityContext
    from lungfuse.core.folds import load_fold_model

    root, res = surv_run
    d = res.run_dir
    clinical = pd.read_parquet(root / "clinical.parquet").set_index("patient_id")
    splits = pd.read_parquet(d / "splits.parquet")
    pred = res.predictions
    for fold in (0, 1):
        tf = load_fold_model(d, 0, fold, plugins=[FakeModality])
        train = list(splits[(splits.fold == fold) & (splits.split == "train")]["patient_id"])
        feats = tf.features(clinical.loc[train].drop(columns=["time", "event", "malignant"]),
                            ModalityContext(workdir=d / "work"))
        eta = tf.predict_table(tf.fold_data(feats, train))["risk"].to_numpy()
        t = clinical.loc[train, "time"].to_numpy(float)
        e = clinical.loc[train, "event"].to_numpy(int)
        held = pred[pred.fold == fold]
        for h in HORIZONS[:3]:
            s0 = _breslow_by_hand(eta, e, t, 12 * h)
            want = 1 - s0 ** np.exp(held["risk"].to_numpy())
            np.testing.assert_allclose(held[f"risk_{h:g}y".replace(".", "_")], want,
                                       rtol=0, atol=1e-6)
        assert (held["risk_2y"] >= held["risk_1y"] - 1e-12).all()
        meta = json.loads((d / "models" / f"seed0-fold{fold}" / "meta.json")
                          .read_text(encoding="utf-8"))
        assert [h["label"] for h in meta["horizons"]] == ["0_5y", "1y", "2y", "50y"]


def test_a_horizon_past_follow_up_is_not_estimable(surv_run) -> None:
    _, res = surv_run
    assert res.predictions["risk_50y"].isna().all()  # 600 months: never extrapolated
    assert res.predictions["risk_1y"].notna().all()
    by = {h["label"]: h for h in res.metrics["horizons"]}
    assert by["50y"]["estimable"] is False and "follow-up" in by["50y"]["reason"]
    assert by["1y"]["estimable"] is True


# ---------------------------------------------------------------------- calibration
def test_calibration_per_horizon_in_metrics_and_report(surv_run) -> None:
    _, res = surv_run
    m = json.loads((res.run_dir / "metrics.json").read_text(encoding="utf-8"))
    one = next(h for h in m["horizons"] if h["label"] == "1y")
    assert set(one["per_fold"]) == {"0", "1"}
    for key in ("mean_predicted", "observed", "ici", "td_auc", "brier"):
        assert set(one["over_folds"][key]) == {"mean", "sd", "folds"}
    folds = [f["mean_predicted"] for f in one["per_fold"].values()]
    assert one["over_folds"]["mean_predicted"]["mean"] == pytest.approx(np.mean(folds))
    held = res.predictions
    assert one["pooled"]["mean_predicted"] == pytest.approx(held["risk_1y"].mean())
    assert sum(g["n"] for g in one["pooled"]["groups"]) == len(held)
    page = (res.run_dir / "report.html").read_text(encoding="utf-8")
    assert "Risk by year" in page and "not estimable" in page


def _cohort(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exponential event times with per-patient rates, uniform censoring: the true risk
    by t is 1 - exp(-rate t)."""
    rng = np.random.default_rng(seed)
    rate = np.exp(rng.normal(-3.0, 0.8, n))
    t_ev = rng.exponential(1 / rate)
    t_c = rng.uniform(5, 60, n)
    return np.minimum(t_ev, t_c), (t_ev <= t_c).astype(int), rate


def test_calibration_check_tells_true_risks_from_wrong_ones() -> None:
    time, event, rate = _cohort(3000, 1)
    h = 12.0
    true = 1 - np.exp(-rate * h)
    good = horizon_calibration(time, event, true, h)
    assert len(good["groups"]) == 5 and good["estimable"]
    assert good["ici"] < 0.03 and 0.8 < good["slope"] < 1.2
    assert good["observed"] == pytest.approx(true.mean(), abs=0.03)
    over = horizon_calibration(time, event, np.clip(2 * true, 0, 1), h)
    assert over["ici"] > 10 * good["ici"] and over["slope"] < 0.8
    # censoring is handled by Kaplan-Meier: dropping the censored patients instead
    # would count too many events (the naive share is far off the truth)
    naive = event[(time <= h) | (event == 0)]
    assert abs(good["observed"] - true.mean()) < abs(naive.mean() - true.mean())


def test_calibration_past_the_held_out_follow_up_is_not_estimable() -> None:
    time, event, rate = _cohort(200, 2)
    c = horizon_calibration(time, event, 1 - np.exp(-rate * 100), 100.0)
    assert not c["estimable"] and "follow-up" in c["reason"] and math.isnan(c["ici"])
    c = horizon_calibration(time, event, np.full(len(time), np.nan), 12.0)
    assert not c["estimable"] and "follow-up" in c["reason"]
    few = horizon_calibration(time[:12], event[:12], (1 - np.exp(-rate * 12))[:12], 12.0)
    assert len(few["groups"]) == 2  # at least 5 patients per group


# ---------------------------------------------------------------------- scoring
def test_scoring_gives_mean_and_spread_over_fold_models(surv_run, tmp_path) -> None:
    _, res = surv_run
    ids = list(res.predictions["patient_id"][:3])
    out = _score(res.run_dir, ids, tmp_path / "scores")
    by_model = pd.read_parquet(out.folder / "scores_by_model.parquet")
    flat = pd.read_parquet(out.folder / "scores.parquet").set_index("patient_id")
    saved = {p["patient_id"]: p for p in
             json.loads((out.folder / "scores.json").read_text(encoding="utf-8"))["patients"]}
    for pid in ids:
        g = by_model[by_model.patient_id == pid]
        assert len(g) == 2
        rows = {r["label"]: r for r in saved[pid]["risk_by_year"]}
        assert list(rows) == ["0_5y", "1y", "2y", "50y"]
        r = g["risk_1y"].to_numpy()
        assert rows["1y"]["mean"] == pytest.approx(r.mean())
        assert rows["1y"]["sd"] == pytest.approx(r.std(ddof=1))
        assert [rows["1y"]["min"], rows["1y"]["max"]] == pytest.approx([r.min(), r.max()])
        assert flat.loc[pid, "risk_1y"] == pytest.approx(r.mean())
        assert flat.loc[pid, "risk_1y_max"] == pytest.approx(r.max())
        assert rows["50y"]["estimable"] is False and rows["50y"]["mean"] is None
        assert "follow-up" in rows["50y"]["reason"]
        page = (out.folder / saved[pid]["page"]).read_text(encoding="utf-8")
        assert "Risk by year" in page and "not estimable" in page
        assert "data:image/png" in page.split("Risk by year", 1)[1]


def test_an_old_run_folder_without_horizons_still_scores(surv_run, tmp_path) -> None:
    """A run folder written before horizons existed: no ``horizons`` in the folds'
    meta.json, none in config.yaml, no risk_<h> columns. It scores as before."""
    _, res = surv_run
    old = tmp_path / "old"
    shutil.copytree(res.run_dir, old)
    for meta_path in (old / "models").glob("seed*-fold*/meta.json"):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        del meta["horizons"]
        meta_path.write_text(json.dumps(meta), encoding="utf-8")
    cfg = yaml.safe_load((old / "config.yaml").read_text(encoding="utf-8"))
    for key in ("time_unit", "horizons"):
        cfg["evaluation"].pop(key)
    (old / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    pred = pd.read_parquet(old / "predictions.parquet")
    pred.drop(columns=[c for c in pred if c.startswith("risk_")]).to_parquet(
        old / "predictions.parquet")
    ids = list(pred["patient_id"][:2])
    out = _score(old, ids, tmp_path / "scores")
    assert [p["status"] for p in out.patients] == ["ok", "ok"]
    assert all("risk_by_year" not in p and p["survival"] for p in out.patients)
    assert not [c for c in pd.read_parquet(out.folder / "scores_by_model.parquet")
                if c.startswith("risk_")]
    # and the same patients' log-risk is the run's own, as before
    new = _score(res.run_dir, ids, tmp_path / "new", report=False)
    assert [p["risk"] for p in out.patients] == pytest.approx([p["risk"] for p in new.patients])


def test_horizon_record_round_trip() -> None:
    from lungfuse.core.survival import horizons_from_records

    hs = [Horizon(1.0, 12.0, "1y"), Horizon(30.0, 30.0, "t30")]
    assert horizons_from_records([h.record() for h in hs]) == hs
