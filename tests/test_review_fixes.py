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
