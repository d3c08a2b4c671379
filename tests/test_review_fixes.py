"""Tests for the review fixes: per-horizon calibration where a group's Kaplan-Meier curve
has reached 0, bootstrap CIs on small survival cohorts, resuming folders written before
new settings existed, and the Brock reference row's inputs."""
from __future__ import annotations

import numpy as np


def _ordered_cohort() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """100 patients; the top-risk fifth all had the event by t <= 5, the others are
    censored at t = 12 (followed past the horizon 10) with no event."""
    rng = np.random.default_rng(0)
    risk = np.linspace(0.01, 0.99, 100)
    time = np.full(100, 12.0)
    event = np.zeros(100, bool)
    top = np.argsort(risk)[80:]
    time[top] = rng.uniform(1.0, 5.0, size=20)
    event[top] = True
    return time, event, risk


def test_calibration_keeps_a_group_whose_km_reached_zero() -> None:
    from lungfuse.core.survival import horizon_calibration

    time, event, risk = _ordered_cohort()
    c = horizon_calibration(time, event, risk, 10.0)
    obs = [g["observed"] for g in c["groups"]]
    assert len(obs) == 5
    assert obs[:4] == [0.0, 0.0, 0.0, 0.0]
    assert obs[4] == 1.0
    assert c["groups_not_estimable"] == []
    assert np.isfinite(c["slope"]) and c["slope"] > 0
    assert np.isfinite(c["ici"])


def test_km_at_is_nan_only_when_censored_before_horizon() -> None:
    from lungfuse.core.survival import _km_at

    # every patient had the event before t: observed risk 1
    assert _km_at(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 1]), 10.0) == 1.0
    # last patient censored before t with the curve above 0: not defined
    assert np.isnan(_km_at(np.array([1.0, 2.0, 3.0]), np.array([1, 0, 0]), 10.0))


def test_calibration_names_a_group_still_not_estimable() -> None:
    from lungfuse.core.survival import horizon_calibration

    time, event, risk = _ordered_cohort()
    # the top group's last patient is censored at t=6 instead: KM above 0 past 6
    top = np.argsort(risk)[80:]
    last = top[np.argmax(time[top])]
    time[last], event[last] = 6.0, False
    c = horizon_calibration(time, event, risk, 10.0)
    assert c["groups_not_estimable"] == [5]
    assert np.isnan(c["groups"][4]["observed"])
    assert np.isfinite(c["ici"])
    # the report's risk-by-year table names that group rather than dropping it silently
    from lungfuse.core.report.run import _horizon_note

    h = {"estimable": True, "reason": "", "pooled": c}
    assert _horizon_note(h).startswith("risk group(s) 5 of 5 (pooled)")
    assert _horizon_note({**h, "pooled": {**c, "groups_not_estimable": []}}) == ""


def _small_survival() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """30 patients, 3 events; two risk scores, one informative, one noise."""
    rng = np.random.default_rng(1)
    time = rng.uniform(1.0, 10.0, 30)
    event = np.zeros(30, bool)
    event[[2, 11, 25]] = True
    good = -time + rng.normal(0, 0.5, 30)
    noise = rng.normal(0, 1, 30)
    return time, event, good, noise


def test_paired_bootstrap_survival_small_cohort_is_finite() -> None:
    import pandas as pd

    from lungfuse.core.evaluation import paired_difference

    time, event, good, noise = _small_survival()
    base = pd.DataFrame({"patient_id": [f"p{i}" for i in range(30)], "seed": 0,
                         "time": time, "event": event.astype(int)})
    a, b = base.assign(risk=good), base.assign(risk=noise)
    d = paired_difference(a, b, "survival", 1000, 0)
    assert np.isfinite(d["ci_low"]) and np.isfinite(d["ci_high"])
    assert d["ci_low"] <= d["difference"] <= d["ci_high"]
    assert 10 <= d["n_boot"] <= d["n_requested"] == 1000
    assert 0.0 <= d["p_not_better"] <= 1.0


def test_paired_bootstrap_skips_undefined_resamples_unstratified() -> None:
    from lungfuse.core.evaluation import primary_score_fn
    from lungfuse.core.metrics import paired_bootstrap_difference

    time, event, good, noise = _small_survival()
    y = np.column_stack([time, event.astype(float)])
    # one stratum: resamples without an event happen and must not count
    d = paired_bootstrap_difference(primary_score_fn("survival"), y, good, noise, n=1000,
                                    seed=0, strata=np.zeros(30))
    assert d["n_boot"] < 1000
    assert np.isfinite(d["ci_low"]) and np.isfinite(d["ci_high"])


def test_single_model_bootstrap_small_survival_cohort() -> None:
    from lungfuse.core.evaluation import primary_score_fn
    from lungfuse.core.metrics import bootstrap

    time, event, good, _ = _small_survival()
    fn = primary_score_fn("survival")

    def c(t: np.ndarray, e: np.ndarray, r: np.ndarray) -> dict[str, float]:
        return {"c": fn(np.column_stack([t, e]), r)}

    for strata in (event, None):
        out = bootstrap(c, [time, event.astype(float), good], n=500, seed=0, strata=strata)
        assert np.isfinite(out["c"]["ci_low"]) and np.isfinite(out["c"]["ci_high"])
        assert 10 <= out["c"]["n_boot"] <= 500


# --------------------------------------------- folders written before the newest settings
#: settings added in this batch; a folder written before them lacks them
_NEW_KEYS = {None: ["baselines"], "training": ["selection", "inner_folds", "inner_cv_below"],
             "evaluation": ["time_unit", "horizons"]}


def _strip_new_keys(folder) -> dict:
    """Rewrite ``folder/config.yaml`` as an older lungfuse wrote it (no new settings);
    returns the stripped mapping."""
    import yaml

    path = folder / "config.yaml"
    d = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section, keys in _NEW_KEYS.items():
        target = d if section is None else d[section]
        for k in keys:
            target.pop(k, None)
    path.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    return d


def test_old_run_folder_without_new_settings_resumes(tmp_path) -> None:
    import json

    import pytest
    import yaml
    from test_reliability_runs import WideModality, config, interrupt_in_second_fold, make_data

    from lungfuse.core.errors import ConfigError
    from lungfuse.core.run import run_experiment

    def run(cfg, **kw):
        return run_experiment(cfg, plugins=[WideModality], progress=False, **kw)

    data = make_data(tmp_path / "data")
    cfg = config(data, tmp_path / "out")
    old = interrupt_in_second_fold(run, cfg)
    stripped = _strip_new_keys(old)
    assert "baselines" not in stripped and "selection" not in stripped["training"]
    status = json.loads((old / "run.json").read_text(encoding="utf-8"))
    assert status["status"] == "interrupted"

    # a real difference is still refused, naming the setting
    other = {**cfg, "training": {**cfg["training"], "max_epochs": 9}}
    with pytest.raises(ConfigError, match=r"training\.max_epochs"):
        run(other, resume=old)
    # so is a new setting given a non-default value
    inner = {**cfg, "training": {**cfg["training"], "selection": "inner_cv"}}
    with pytest.raises(ConfigError, match=r"training\.selection"):
        run(inner, resume=old)
    assert yaml.safe_load((old / "config.yaml").read_text(encoding="utf-8")) == stripped

    # the folder ran holdout (the only choice before the setting existed): the default
    # auto, which resolves to inner_cv on this small cohort, is a real difference
    auto = {**cfg, "training": {k: v for k, v in cfg["training"].items() if k != "selection"}}
    with pytest.raises(ConfigError, match=r"training\.selection"):
        run(auto, resume=old)
    res = run(cfg, resume=old)
    assert res.run_dir == old and res.resumed == 1
    assert json.loads((old / "run.json").read_text(encoding="utf-8"))["status"] == "complete"


def test_old_ablation_folder_without_new_settings_resumes(tmp_path) -> None:
    import hashlib
    import json

    import pytest
    from test_ablation import CountingModality, Killed, make_data

    import lungfuse.core.folds as folds
    from lungfuse.core.ablation import run_ablation
    from lungfuse.core.errors import ConfigError

    cfg = make_data(tmp_path)
    folder = tmp_path / "abl"
    real, calls = folds.train_fold, {"n": 0}

    def dying(*a, **k):
        if calls["n"] == 1:
            raise Killed("simulated kill")
        calls["n"] += 1
        return real(*a, **k)

    kw = {"modalities": ["a"], "heads": ["gated"], "ablation_dir": folder,
          "plugins": [CountingModality], "progress": False, "report": False}
    mp = pytest.MonkeyPatch()
    mp.setattr(folds, "train_fold", dying)
    with pytest.raises(Killed):
        run_ablation(cfg, **kw)
    mp.undo()
    stripped = _strip_new_keys(folder)
    state = json.loads((folder / "ablation.json").read_text(encoding="utf-8"))
    # the hash an older lungfuse stored: of the config as it dumped it
    blob = json.dumps({"config": stripped, "modalities": state["modalities"],
                       "heads": state["heads"]}, sort_keys=True, default=str)
    state["config_hash"] = hashlib.sha256(blob.encode()).hexdigest()[:20]
    (folder / "ablation.json").write_text(json.dumps(state), encoding="utf-8")

    other = {**cfg, "training": {**cfg["training"], "max_epochs": 9}}
    with pytest.raises(ConfigError, match="another config"):
        run_ablation(other, **kw)
    with pytest.raises(ConfigError, match="another config"):
        run_ablation(cfg, **{**kw, "heads": ["concat"]})

    res = run_ablation(cfg, **kw)
    assert (res.trained, res.skipped) == (1, 1)
    done = json.loads((folder / "ablation.json").read_text(encoding="utf-8"))
    assert done["status"] == "complete"


# ------------------------------------------------------------ the brock reference row
def _brock_row(**over):
    import pandas as pd

    row = {"ct:long_axis_mm": 12.0, "ct:solid_fraction": 0.1, "ct:margin_irregularity": 0.9,
           "ct:n_nodules": 1.0, "ct:seg_fallback": 0.0, "age": 65.0, "sex": "F",
           "family_history": 1}
    row.update(over)
    return pd.Series(row)


def test_brock_seg_fallback_leaves_type_and_spiculation_missing() -> None:
    from lungfuse.plugins.clinical.brock import NOTE_FALLBACK, BrockConfig, _probability
    from lungfuse.plugins.clinical.references import BrockInputs, brock_probability

    cfg = BrockConfig()
    p_meas, notes = _probability(_brock_row(), "ct:", cfg, 60.0, 8.0)
    assert notes == []
    p_fb, notes = _probability(_brock_row(**{"ct:seg_fallback": 1.0}), "ct:", cfg, 60.0, 8.0)
    assert notes == [NOTE_FALLBACK]
    ref = brock_probability(BrockInputs(age=65.0, sex="F", family_history=True, size_mm=12.0,
                                        nodule_count=1)).probability
    assert p_fb == ref != p_meas


def test_brock_malformed_sex_keeps_family_history_and_names_it() -> None:
    from lungfuse.plugins.clinical.brock import NOTE_SEX, BrockConfig, _probability
    from lungfuse.plugins.clinical.references import BrockInputs, brock_probability
    from lungfuse.plugins.imaging_infnet.brock_inputs import (
        SPICULATION_MIN_IRREGULARITY,
        nodule_type_of,
    )

    cfg = BrockConfig()
    p, notes = _probability(_brock_row(sex="unknown?"), "ct:", cfg, 60.0, 8.0)
    assert notes == [NOTE_SEX]
    ct = {"size_mm": 12.0, "nodule_count": 1, "nodule_type": nodule_type_of(0.1),
          "spiculation": 0.9 >= SPICULATION_MIN_IRREGULARITY}
    with_fh = BrockInputs(age=65.0, family_history=True, **ct)
    without = BrockInputs(age=65.0, **ct)
    assert p == brock_probability(with_fh).probability
    assert p != brock_probability(without).probability


def test_brock_log_names_the_input_missing(caplog) -> None:
    import logging

    import pandas as pd

    from lungfuse.plugins.clinical.brock import NOTE_AGE, NOTE_FAMILY, BrockConfig, _Fixed

    X = pd.DataFrame([_brock_row(age=float("nan")), _brock_row(family_history="perhaps"),
                      _brock_row()])
    with caplog.at_level(logging.INFO, logger="lungfuse"):
        p = _Fixed(BrockConfig(), 61.0, 9.0).predict(X)
    assert np.all(np.isfinite(p))
    lines = [r.getMessage() for r in caplog.records if "baseline brock" in r.getMessage()]
    assert sorted(lines) == sorted([f"baseline brock: 1 of 3 patients: {NOTE_AGE}",
                                    f"baseline brock: 1 of 3 patients: {NOTE_FAMILY}"])


def test_brock_missing_cohort_column_is_refused_before_any_folder(tmp_path) -> None:
    import pytest
    from test_reliability_runs import WideModality, config, make_data

    from lungfuse.core.errors import ConfigError
    from lungfuse.core.run import run_experiment

    data = make_data(tmp_path / "data")
    cfg = {**config(data, tmp_path / "out"), "baselines": ["brock"]}
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, plugins=[WideModality], progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "'age', 'sex', 'family_history'" in msg and "(columns: " in msg
    assert "`age_column`, `sex_column`, `family_history_column`" in msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_check_cohort_columns_passes_what_the_cohort_has() -> None:
    import pytest

    from lungfuse.core.baselines import ResolvedBaseline, check_cohort_columns
    from lungfuse.core.errors import ConfigError
    from lungfuse.plugins.clinical.brock import BrockBaseline, BrockConfig

    def resolved(**kw):
        return [ResolvedBaseline("brock", BrockBaseline(BrockConfig(**kw)), ["ct"], "test")]

    check_cohort_columns(resolved(), ["age", "sex", "family_history", "smoker"])
    check_cohort_columns(resolved(family_history_column=None), ["age", "sex"])
    with pytest.raises(ConfigError, match=r"'family_history'.*columns: age, sex\); set "
                                          r"`family_history_column`"):
        check_cohort_columns(resolved(), ["age", "sex"])


# ------------------------------------------------------------------ survival verdict
def _surv_metrics(per_fold: dict[str, float], pooled: float) -> dict:
    return {"task": "survival", "overall": {"harrell_c": {"value": pooled}},
            "per_seed": {"0": {"per_fold": {k: {"harrell_c": v} for k, v in per_fold.items()}}}}


def _block(metrics: dict, diff: float = 0.0) -> dict:
    return {"status": "ok", "metrics": metrics,
            "difference": {"difference": diff, "ci_low": diff - 0.05, "ci_high": diff + 0.05}}


def test_survival_verdict_reads_per_fold_c_index_not_pooled() -> None:
    from lungfuse.core.baselines import fold_differences, verdict

    model = _surv_metrics({"0": 0.70, "1": 0.72, "2": 0.68}, pooled=0.60)
    # the baseline's pooled c-index is higher (pooling mixes the fold models' scales),
    # but it is lower in every fold: no sentence
    worse = _surv_metrics({"0": 0.65, "1": 0.66, "2": 0.60}, pooled=0.66)
    assert verdict(model, {"cox": _block(worse)}) == []
    # higher in every fold: it beats the model, said with mean, sd and folds won
    better = _surv_metrics({"0": 0.75, "1": 0.76, "2": 0.73}, pooled=0.55)
    f = fold_differences(model, better, "harrell_c")
    assert f["folds"] == 3 and f["baseline_won"] == 3
    assert f["mean"] == _approx(-0.0466667)
    (s,) = verdict(model, {"cox": _block(better, diff=0.05)})
    assert s.startswith("Baseline cox beats the model on the per-fold harrell_c in every fold")
    assert "-0.047 +/- " in s and "cox higher in 3 of 3" in s and "pooled paired" in s
    # higher on average but not in every fold: a higher mean only
    mixed = _surv_metrics({"0": 0.80, "1": 0.70, "2": 0.67}, pooled=0.50)
    (s,) = verdict(model, {"cox": _block(mixed)})
    assert "not in every fold" in s and "cox higher in 1 of 3" in s


def test_binary_verdict_still_pooled_and_says_so() -> None:
    from lungfuse.core.baselines import verdict

    model = {"task": "binary", "overall": {"auroc": {"value": 0.70}}}
    base = {"status": "ok", "metrics": {"overall": {"auroc": {"value": 0.80}}},
            "difference": {"difference": -0.10, "ci_low": -0.15, "ci_high": -0.05}}
    (s,) = verdict(model, {"lr": base})
    assert "beats the model" in s and "pooled auroc 0.800 vs 0.700" in s
    base["metrics"]["overall"]["auroc"]["value"] = 0.65
    assert verdict(model, {"lr": base}) == []


def _approx(x: float):
    import pytest

    return pytest.approx(x, abs=1e-6)
