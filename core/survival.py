r"""Survival outputs: the evaluation time grid, the Breslow baseline and :math:`S(t\mid x)`.

A survival fusion model outputs a log relative hazard :math:`\eta(x)` (Cox model). To
turn it into survival probabilities, each fold fits the Breslow estimator of the baseline
survival :math:`S_0(t)` on its training patients' :math:`(\eta, \text{event}, \text{time})`;
then :math:`S(t\mid x) = S_0(t)^{\exp(\eta(x))}`. The time grid at which run, ablate and
score report these probabilities is fixed once per cohort (:func:`time_grid_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from lungfuse.core.metrics import survival_time_grid

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from lungfuse.core.cohort import Cohort

__all__ = ["fit_breslow", "survival_at", "survival_time_grid", "time_grid_of"]


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
