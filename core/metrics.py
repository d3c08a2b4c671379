"""Evaluation metrics with seeded bootstrap confidence intervals.

Binary: AUROC, AUPRC (average precision), Brier score, calibration curve (scikit-learn),
expected calibration error and sensitivity at a fixed specificity. Survival: Harrell's and
Uno's concordance, time-dependent (cumulative/dynamic) AUC and integrated Brier score
(scikit-survival), and by a horizon the AUC and Brier score there
(:func:`horizon_metrics`). :func:`bootstrap` resamples patients with replacement; the 95% CI is
the 2.5th-97.5th percentile of the resampled statistic. Everything is computed on
held-out predictions only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "binary_metrics",
    "bootstrap",
    "calibration_curve_points",
    "expected_calibration_error",
    "horizon_metrics",
    "paired_bootstrap_difference",
    "sensitivity_at_specificity",
    "survival_metrics",
    "survival_time_grid",
]

BINARY_METRICS = ("auroc", "auprc", "brier", "ece", "sensitivity_at_specificity")
SURVIVAL_METRICS = ("harrell_c", "uno_c", "mean_td_auc", "integrated_brier")


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    r"""ECE with equal-width bins: :math:`\sum_b \frac{n_b}{n}\,|\bar y_b - \bar p_b|`."""
    y = np.asarray(y, float)
    p = np.asarray(p, float)
    if len(y) == 0:
        return math.nan
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    n = np.bincount(bins, minlength=n_bins)
    sy = np.bincount(bins, weights=y, minlength=n_bins)
    sp = np.bincount(bins, weights=p, minlength=n_bins)
    nz = n > 0
    return float(np.sum(np.abs(sy[nz] - sp[nz])) / len(y))


def sensitivity_at_specificity(y: np.ndarray, p: np.ndarray, specificity: float = 0.9) -> float:
    """Highest true-positive rate on the ROC curve whose false-positive rate is
    at most ``1 - specificity`` (scikit-learn's ``roc_curve``)."""
    from sklearn.metrics import roc_curve

    if len(np.unique(y)) < 2:
        return math.nan
    fpr, tpr, _ = roc_curve(y, p)
    return _sens_from_curve(fpr, tpr, specificity)


def _sens_from_curve(fpr: np.ndarray, tpr: np.ndarray, specificity: float) -> float:
    ok = fpr <= 1 - specificity + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def calibration_curve_points(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, list]:
    """Reliability diagram points (scikit-learn ``calibration_curve``, uniform bins)."""
    from sklearn.calibration import calibration_curve

    frac, mean = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    return {"mean_predicted": mean.tolist(), "fraction_positive": frac.tolist()}


def binary_metrics(y: np.ndarray, p: np.ndarray, specificity: float = 0.9) -> dict[str, float]:
    r"""Point estimates; rank metrics are NaN where only one class is present.

    One ROC curve (scikit-learn ``roc_curve``) gives both the AUROC (trapezoidal ``auc``,
    identical to ``roc_auc_score``) and the sensitivity at ``specificity``; AUPRC is
    ``average_precision_score``; the Brier score is :math:`\frac1n\sum_i (p_i-y_i)^2`
    (``brier_score_loss``). Bootstraps call this thousands of times, so each curve is
    computed once and input validation is skipped (the inputs are checked once here).
    """
    import sklearn
    from sklearn.metrics import auc, average_precision_score, roc_curve

    y = np.asarray(y).astype(int)
    p = np.clip(np.asarray(p, float), 0.0, 1.0)
    two = len(np.unique(y)) == 2
    out = {"auroc": math.nan, "auprc": math.nan,
           "brier": float(np.mean((p - y) ** 2)) if len(y) else math.nan,
           "ece": expected_calibration_error(y, p), "sensitivity_at_specificity": math.nan}
    if two:
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            fpr, tpr, _ = roc_curve(y, p)
            out["auroc"] = float(auc(fpr, tpr))
            out["sensitivity_at_specificity"] = _sens_from_curve(fpr, tpr, specificity)
            out["auprc"] = float(average_precision_score(y, p))
    return out


def _surv(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(event).astype(bool), time=np.asarray(time, float))


def survival_time_grid(time: np.ndarray, event: np.ndarray, n: int = 10) -> np.ndarray:
    """Evaluation times: ``n`` quantiles (10th-80th percentile) of the observed event
    times, a range where time-dependent AUC and Brier scores are estimable."""
    t = np.asarray(time, float)[np.asarray(event).astype(bool)]
    if len(t) == 0:
        t = np.asarray(time, float)
    return np.unique(np.quantile(t, np.linspace(0.1, 0.8, n)))


def survival_metrics(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    surv_at: np.ndarray | None = None,
    times: np.ndarray | None = None,
    train_time: np.ndarray | None = None,
    train_event: np.ndarray | None = None,
) -> dict[str, float]:
    """Harrell's c; Uno's c, mean cumulative/dynamic AUC and the integrated Brier score
    (these use inverse-probability-of-censoring weights estimated from ``train_*``,
    default: the evaluated patients themselves). ``surv_at`` (n, len(times)) holds the
    predicted survival probabilities at ``times``. A metric that cannot be estimated on
    these patients (no comparable pairs, times outside follow-up) is NaN."""
    from sksurv.metrics import (
        concordance_index_censored,
        concordance_index_ipcw,
        cumulative_dynamic_auc,
        integrated_brier_score,
    )

    time = np.asarray(time, float)
    event = np.asarray(event).astype(bool)
    risk = np.asarray(risk, float)
    out = dict.fromkeys(SURVIVAL_METRICS, math.nan)
    test = _surv(time, event)
    train = _surv(train_time if train_time is not None else time,
                  train_event if train_event is not None else event)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out["harrell_c"] = float(concordance_index_censored(event, time, risk)[0])
        except (ValueError, ZeroDivisionError):
            pass
        try:
            out["uno_c"] = float(concordance_index_ipcw(train, test, risk)[0])
        except (ValueError, ZeroDivisionError):
            pass
        if times is not None and len(times):
            ok = (times > time.min()) & (times < time.max())
            t = np.asarray(times)[ok]
            if len(t):
                try:
                    out["mean_td_auc"] = float(cumulative_dynamic_auc(train, test, risk, t)[1])
                except (ValueError, ZeroDivisionError):
                    pass
                if surv_at is not None and len(t) >= 2:
                    try:
                        out["integrated_brier"] = float(
                            integrated_brier_score(train, test, np.asarray(surv_at)[:, ok], t))
                    except (ValueError, ZeroDivisionError):
                        pass
    return out


def horizon_metrics(time: np.ndarray, event: np.ndarray, risk: np.ndarray, horizon: float,
                    train_time: np.ndarray | None = None,
                    train_event: np.ndarray | None = None) -> dict[str, float]:
    """Discrimination and accuracy of predicted risks by one ``horizon`` (scikit-survival,
    censoring weights from ``train_*`` as in :func:`survival_metrics`): the cumulative/
    dynamic AUC at the horizon (``cumulative_dynamic_auc``) and the Brier score of the
    predicted survival ``1 - risk`` there (``brier_score``). NaN where not estimable (a
    horizon outside these patients' follow-up, no case or no control by it, NaN risks)."""
    from sksurv.metrics import brier_score, cumulative_dynamic_auc

    time = np.asarray(time, float)
    event = np.asarray(event).astype(bool)
    risk = np.asarray(risk, float)
    out = {"td_auc": math.nan, "brier": math.nan}
    if len(time) == 0 or not np.all(np.isfinite(risk)) or not (time.min() < horizon
                                                               < time.max()):
        return out
    test = _surv(time, event)
    train = _surv(train_time if train_time is not None else time,
                  train_event if train_event is not None else event)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out["td_auc"] = float(cumulative_dynamic_auc(train, test, risk, [horizon])[0][0])
        except (ValueError, ZeroDivisionError):
            pass
        try:
            out["brier"] = float(brier_score(train, test, (1.0 - risk)[:, None],
                                             [horizon])[1][0])
        except (ValueError, ZeroDivisionError):
            pass
    return out


def bootstrap(
    fn: Callable[..., dict[str, float]],
    arrays: Sequence[np.ndarray],
    n: int = 1000,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """``{metric: {"value", "ci_low", "ci_high", "n_boot"}}`` for ``fn(*arrays)``.

    Patients are resampled with replacement (within ``strata`` when given, so each
    resample keeps the class balance); a resample where a metric is undefined is
    skipped for that metric. ``n_boot`` counts the resamples that defined it.
    """
    arrays = [np.asarray(a) for a in arrays]
    point = fn(*arrays)
    rng = np.random.default_rng(seed)
    m = len(arrays[0])
    samples: dict[str, list[float]] = {k: [] for k in point}
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)] if strata is not None else None
    for _ in range(n if m > 1 else 0):
        if groups is None:
            idx = rng.integers(0, m, m)
        else:
            idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        vals = fn(*[a[idx] for a in arrays])
        for k, v in vals.items():
            if v is not None and np.isfinite(v):
                samples[k].append(v)
    out = {}
    for k, v in point.items():
        s = samples[k]
        lo, hi = (np.percentile(s, [2.5, 97.5]) if len(s) >= 10 else (math.nan, math.nan))
        out[k] = {"value": v, "ci_low": float(lo), "ci_high": float(hi), "n_boot": len(s)}
    return out


def paired_bootstrap_difference(
    fn: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> dict[str, float]:
    """Difference ``fn(y, p_a) - fn(y, p_b)`` on the same patients with its paired
    bootstrap 95% CI (the same resample for both) and the share of resamples where it is
    <= 0 (a one-sided bootstrap p-value for "a beats b").

    Patients are resampled within ``strata`` (default: the class for a 1-D ``y``, the
    event column of a 2-D survival ``y = [time, event]``), so each resample keeps the
    events of the original and the metric stays defined on small cohorts. Only resamples
    where both metrics are finite count: ``n_boot`` is how many were valid out of
    ``n_requested``; with fewer than 10 valid the CI and p-value are NaN."""
    y, p_a, p_b = (np.asarray(a) for a in (y, p_a, p_b))
    if strata is None:
        strata = y[:, 1] if y.ndim == 2 else y
    strata = np.asarray(strata)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n if len(y) > 1 else 0):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        try:
            a, b = fn(y[idx], p_a[idx]), fn(y[idx], p_b[idx])
        except (ValueError, ZeroDivisionError):
            continue  # metric undefined on this resample
        if a is not None and b is not None and np.isfinite(a) and np.isfinite(b):
            diffs.append(a - b)
    d = np.asarray(diffs, float)
    ok = len(d) >= 10
    lo, hi = np.percentile(d, [2.5, 97.5]) if ok else (math.nan, math.nan)
    return {"difference": float(fn(y, p_a) - fn(y, p_b)), "ci_low": float(lo),
            "ci_high": float(hi), "p_not_better": float(np.mean(d <= 0)) if ok else math.nan,
            "n_boot": len(d), "n_requested": int(n)}
