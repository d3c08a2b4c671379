r"""Survival outputs: the evaluation time grid, the Breslow baseline and :math:`S(t\mid x)`.

A survival fusion model outputs a log relative hazard :math:`\eta(x)` (Cox model). To
turn it into survival probabilities, each fold fits the Breslow estimator of the baseline
survival :math:`S_0(t)` on its training patients' :math:`(\eta, \text{event}, \text{time})`;
then :math:`S(t\mid x) = S_0(t)^{\exp(\eta(x))}`. The time grid at which run, ablate and
score report these probabilities is fixed once per cohort (:func:`time_grid_of`).

Risk by year: at each horizon :math:`h` the configured ``evaluation.horizons`` name (years
1-6 by default when ``evaluation.time_unit`` says what the cohort's time column counts),
a fold model's risk is :math:`P(T \le h \mid x) = 1 - S(h \mid x)` from that fold's own
Breslow baseline (:func:`risk_at_horizons`). A horizon past the fold's follow-up (the
last time among its training patients) is not estimable: NaN, never the flat tail of the
step function carried forward. :func:`horizon_calibration` checks these risks on held-out
patients against Kaplan-Meier estimates per risk group. See docs/survival.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lungfuse.core.metrics import survival_time_grid

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from lungfuse.core.cohort import Cohort

__all__ = [
    "Horizon",
    "fit_breslow",
    "followup_of",
    "horizon_calibration",
    "horizons_of",
    "risk_at_horizons",
    "survival_at",
    "survival_time_grid",
    "time_grid_of",
]

#: Length of a year in each ``evaluation.time_unit`` (Julian year for days).
UNITS_PER_YEAR = {"days": 365.25, "months": 12.0, "years": 1.0}
#: Horizons (years) reported when the time unit is known and none are configured: the
#: years 1-6 the strongest CT risk model (Sybil) reports.
DEFAULT_HORIZON_YEARS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)


def time_grid_of(cohort: Cohort) -> np.ndarray | None:
    """The evaluation times of a survival cohort (:func:`survival_time_grid` of all its
    patients' times and events); None for a binary cohort."""
    if cohort.task != "survival":
        return None
    t, e = cohort.outcome_columns
    return survival_time_grid(cohort.table[t].to_numpy(), cohort.table[e].to_numpy())


def fit_breslow(risk: np.ndarray, event: np.ndarray, time: np.ndarray) -> dict[str, list[float]]:
    r"""Breslow baseline survival :math:`S_0(t)` from the training patients (scikit-survival):
    :math:`H_0(t) = \sum_{t_i \le t} d_i / \sum_{j: t_j \ge t_i} e^{\eta_j}`,
    :math:`S_0 = e^{-H_0}`; stored as its jump times and values (JSON-safe lists)."""
    from sksurv.linear_model.coxph import BreslowEstimator

    est = BreslowEstimator().fit(risk, event.astype(bool), time)
    return {"times": est.baseline_survival_.x.tolist(),
            "baseline_survival": est.baseline_survival_.y.tolist()}


def survival_at(breslow: Mapping[str, list[float]], risk: np.ndarray,
                times: np.ndarray) -> np.ndarray:
    r""":math:`S(t\mid x) = S_0(t)^{\exp(\eta(x))}` at ``times`` (n, len(times)); the
    baseline is a right-continuous step function, 1 before the first event time."""
    import numpy as np

    bt = np.asarray(breslow["times"], float)
    bs = np.asarray(breslow["baseline_survival"], float)
    idx = np.searchsorted(bt, np.asarray(times, float), side="right") - 1
    s0 = np.where(idx >= 0, bs[np.clip(idx, 0, None)], 1.0)
    return s0[None, :] ** np.exp(np.asarray(risk, float))[:, None]


# ----------------------------------------------------------------------------- horizons
@dataclass(frozen=True)
class Horizon:
    """One horizon of risk by year: ``value`` in the configured unit (years when the
    cohort's time unit is known, else the time column's own unit), ``time`` the same
    point in the time column's unit, ``label`` the column suffix (``1y``, ``t12``)."""

    value: float
    time: float
    label: str

    @property
    def column(self) -> str:
        """The prediction table's column of the risk by this horizon."""
        return f"risk_{self.label}"

    def record(self) -> dict[str, Any]:
        """JSON-safe description (meta.json, scores.json, metrics.json)."""
        return {"value": self.value, "time": self.time, "label": self.label}


def _label(v: float) -> str:
    return f"{v:g}".replace(".", "_").replace("-", "m")


def horizons_of(evaluation: Any) -> list[Horizon]:
    """The horizons of ``evaluation`` (the config's evaluation section, or anything with
    ``horizons`` and ``time_unit``): the configured ones, else years 1-6 when the time
    unit is known, else none (an old config: only the time grid's survival curve)."""
    unit = getattr(evaluation, "time_unit", None)
    given = getattr(evaluation, "horizons", None)
    if unit is None:
        return [Horizon(float(h), float(h), f"t{_label(float(h))}") for h in (given or [])]
    years = given if given is not None else DEFAULT_HORIZON_YEARS
    per = UNITS_PER_YEAR[str(unit)]
    return [Horizon(float(h), float(h) * per, f"{_label(float(h))}y") for h in years]


def horizons_from_records(records: Sequence[Mapping[str, Any]] | None) -> list[Horizon]:
    """Horizons back from their :meth:`Horizon.record` form (a fold's ``meta.json``)."""
    return [Horizon(float(r["value"]), float(r["time"]), str(r["label"]))
            for r in records or []]


def followup_of(breslow: Mapping[str, list[float]]) -> float:
    """The last time the fold's Breslow baseline saw (its training patients' follow-up):
    beyond it :math:`S_0` is unknown, not flat."""
    times = breslow.get("times") or []
    return float(max(times)) if len(times) else float("-inf")


def risk_at_horizons(breslow: Mapping[str, list[float]], risk: np.ndarray,
                     horizons: Sequence[Horizon]) -> np.ndarray:
    r""":math:`1 - S(h \mid x)` for each patient (rows) and horizon (columns), NaN for a
    horizon past the fold's follow-up (:func:`followup_of`): not estimable."""
    import numpy as np

    times = np.asarray([h.time for h in horizons], float)
    out = 1.0 - survival_at(breslow, risk, times)
    out[:, times > followup_of(breslow)] = np.nan
    return out


def _km_at(time: np.ndarray, event: np.ndarray, t: float) -> float:
    """Kaplan-Meier (scikit-survival) probability of the event by ``t``.

    Past the last observed time the curve is flat only if it has already reached 0
    (every patient still followed had the event): the observed risk there is 1. It is
    NaN (not defined) only when ``t`` is past the last time and the curve is still
    above 0, i.e. the last patients were censored before ``t``."""
    import numpy as np
    from sksurv.nonparametric import kaplan_meier_estimator

    if len(time) == 0:
        return float("nan")
    x, s = kaplan_meier_estimator(event.astype(bool), time.astype(float))
    if t > float(np.max(time)):
        return 1.0 if float(s[-1]) <= 0.0 else float("nan")
    i = int(np.searchsorted(x, t, side="right")) - 1
    return float(1.0 - (s[i] if i >= 0 else 1.0))


def _groups(pred: np.ndarray, n_groups: int) -> np.ndarray:
    """Risk groups 0..g-1 by rank (equal sizes, ties broken by order)."""
    import numpy as np

    order = np.argsort(pred, kind="mergesort")
    g = np.empty(len(pred), int)
    g[order] = np.arange(len(pred)) * n_groups // max(len(pred), 1)
    return g


def horizon_calibration(time: np.ndarray, event: np.ndarray, risk: np.ndarray,
                        horizon: float, n_groups: int = 5,
                        min_per_group: int = 5) -> dict[str, Any]:
    """Calibration of predicted risks by ``horizon`` on held-out patients.

    Patients are split into up to ``n_groups`` equal groups by predicted risk (fewer when
    a group would hold under ``min_per_group``); in each, the observed risk is the
    Kaplan-Meier estimate of the event by ``horizon`` (censoring handled by the
    estimator; no patient is dropped; a group whose every patient had the event before
    ``horizon`` has observed risk 1). Returns the groups (mean predicted, observed, n)
    and the summaries: ``mean_predicted``, ``observed`` (KM of all patients), ``ici``
    (the patient-weighted mean absolute gap between group predicted and observed risk, an
    integrated-calibration-index-like error) and ``slope`` (weighted least-squares slope
    of observed on predicted across groups; 1 is ideal). A group whose Kaplan-Meier
    estimate is not defined by ``horizon`` (its last patients censored before it) is
    left out of ``ici`` and ``slope`` and listed in ``groups_not_estimable``. A horizon
    past the patients' follow-up, or risks not estimable there, give NaN with
    ``estimable`` False and the reason."""
    import numpy as np

    time, event = np.asarray(time, float), np.asarray(event).astype(bool)
    risk = np.asarray(risk, float)
    nan = float("nan")
    out: dict[str, Any] = {"n": int(len(time)), "events_by_horizon":
                           int(np.sum(event & (time <= horizon))), "groups": [],
                           "mean_predicted": nan, "observed": nan, "ici": nan,
                           "slope": nan, "estimable": False, "reason": "",
                           "groups_not_estimable": []}
    if len(time) == 0:
        out["reason"] = "no patients"
        return out
    if not np.all(np.isfinite(risk)):
        out["reason"] = "past the follow-up of a fold's training patients"
        return out
    observed = _km_at(time, event, horizon)
    if horizon > float(np.max(time)) and not np.isfinite(observed):
        out["reason"] = (f"past the held-out patients' follow-up (last time "
                         f"{float(np.max(time)):g})")
        return out
    out["mean_predicted"] = float(risk.mean())
    out["observed"] = observed
    k = int(max(1, min(n_groups, len(time) // max(min_per_group, 1))))
    g = _groups(risk, k)
    rows = []
    for j in range(k):
        m = g == j
        rows.append({"group": j + 1, "n": int(m.sum()), "mean_predicted": float(risk[m].mean()),
                     "observed": _km_at(time[m], event[m], horizon)})
    out["groups"] = rows
    ok = [r for r in rows if np.isfinite(r["observed"])]
    # a group whose last patients were censored before the horizon (KM still above 0)
    # has no observed risk there; it is left out of the ICI and slope, and named here
    out["groups_not_estimable"] = [int(r["group"]) for r in rows
                                   if not np.isfinite(r["observed"])]
    if ok:
        w = np.array([r["n"] for r in ok], float)
        p = np.array([r["mean_predicted"] for r in ok])
        o = np.array([r["observed"] for r in ok])
        out["ici"] = float(np.sum(w * np.abs(p - o)) / w.sum())
        if len(ok) >= 2 and np.ptp(p) > 0:
            pm, om = np.average(p, weights=w), np.average(o, weights=w)
            out["slope"] = float(np.sum(w * (p - pm) * (o - om)) / np.sum(w * (p - pm) ** 2))
    out["estimable"] = bool(np.isfinite(out["observed"]))
    if not out["estimable"]:
        out["reason"] = "Kaplan-Meier not defined at this horizon"
    return out
