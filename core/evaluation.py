"""Held-out predictions → the metrics of a run or an ablation variant (``metrics.json``).

Per split seed: the pooled held-out estimate of every metric with a seeded bootstrap 95%
CI (resampling patients, stratified on the outcome or event), the same per availability
pattern (which modalities a patient had), and a point estimate per fold. Binary runs add
the uncalibrated metrics and the calibration curves; survival metrics are computed at the
study's time grid, with censoring weights from the whole cohort where it is given.
Survival runs with horizons (``risk_<h>`` columns) add ``horizons``: per horizon, the
calibration of the held-out risks by it against Kaplan-Meier per risk group
(:func:`~lungfuse.core.survival.horizon_calibration`) and the AUC and Brier score there
(:func:`~lungfuse.core.metrics.horizon_metrics`), per fold and summarised over folds
(mean, sd), and pooled over the seed's held-out patients (the report's figure).

Headline of a cross-validated run (``fold_summary``): each metric's mean ± sd over every
(split seed, fold) test fold, as MCAT / PathomicFusion report theirs, beside the pooled
figure. Risks of separately trained fold models are on different scales, so the pooled
c-index (all held-out patients of a seed ranked together) mixes scales; the fold mean
does not, and is reported first for survival.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from lungfuse.core.cohort import Cohort

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

__all__ = ["PRIMARY", "evaluate_predictions", "fold_summary", "horizon_summary",
           "paired_difference"]

#: the metric a task's tables are ranked by and compared on
PRIMARY = {"binary": "auroc", "survival": "harrell_c"}


def evaluate_predictions(pred: pd.DataFrame, cfg: Any, cohort: Cohort | None = None,
                         time_grid: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics of held-out predictions: per split seed, overall (bootstrap 95% CIs),
    per availability pattern (with CIs), per fold (points). ``overall`` is the first
    seed's; with several seeds ``seed_mean`` averages the point estimates."""
    import numpy as np

    from lungfuse.core import metrics as M
    from lungfuse.core.survival import horizons_of

    ev = cfg.evaluation
    binary = cfg.task.kind == "binary"
    out: dict[str, Any] = {"task": cfg.task.kind, "per_seed": {}}
    if binary:
        def fn(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
            return M.binary_metrics(y, p, ev.specificity)
        out["specificity"] = ev.specificity
    else:
        grid = np.asarray(time_grid if time_grid is not None else [], float)
        surv_cols = [f"surv_{j}" for j in range(len(grid))]
        tt = cohort.table[cohort.outcome_columns[0]].to_numpy() if cohort is not None else None
        te = cohort.table[cohort.outcome_columns[1]].to_numpy() if cohort is not None else None

        def fn(t: np.ndarray, e: np.ndarray, r: np.ndarray, s: np.ndarray) -> dict[str, float]:
            return M.survival_metrics(t, e, r, s if s.shape[1] else None, grid, tt, te)
        out["time_grid"] = grid.tolist()

    def arrays(g: pd.DataFrame) -> list[np.ndarray]:
        if binary:
            return [g["y"].to_numpy(), g["prob_calibrated"].to_numpy()]
        # a table without survival curves (a baseline's risk scores): no Brier score
        s = (g[surv_cols].to_numpy() if surv_cols and surv_cols[0] in g
             else np.zeros((len(g), 0)))
        return [g["time"].to_numpy(), g["event"].to_numpy(), g["risk"].to_numpy(), s]

    strat_col = "y" if binary else "event"
    for seed, g in pred.groupby("seed"):
        res: dict[str, Any] = {"n": len(g), "positives": int(g[strat_col].sum())}
        res["overall"] = M.bootstrap(fn, arrays(g), n=ev.bootstrap, seed=cfg.seed,
                                     strata=g[strat_col].to_numpy())
        if binary:
            res["uncalibrated"] = M.binary_metrics(g["y"], g["prob"], ev.specificity)
            res["calibration_curve"] = M.calibration_curve_points(g["y"], g["prob_calibrated"])
            res["calibration_curve_uncalibrated"] = M.calibration_curve_points(g["y"], g["prob"])
        res["by_pattern"] = {}
        for pat, sub in g.groupby("pattern"):
            strata = sub[strat_col].to_numpy()
            res["by_pattern"][str(pat)] = {
                "n": len(sub), "positives": int(strata.sum()),
                "metrics": M.bootstrap(fn, arrays(sub), n=ev.bootstrap, seed=cfg.seed,
                                       strata=strata if len(np.unique(strata)) > 1 else None),
            }
        res["per_fold"] = {str(k): fn(*arrays(sub)) for k, sub in g.groupby("fold")}
        if not binary:
            hz = [h for h in horizons_of(ev) if h.column in g.columns]
            if hz:
                res["horizons"] = horizon_summary(g, hz, tt, te)
        out["per_seed"][str(seed)] = res
    first = next(iter(out["per_seed"].values()))
    out["fold_summary"] = fold_summary(out["per_seed"])
    out["overall"] = first["overall"]
    out["by_pattern"] = first["by_pattern"]
    if "horizons" in first:
        out["horizons"] = first["horizons"]
        out["time_unit"] = getattr(ev, "time_unit", None)
    if len(out["per_seed"]) > 1:
        keys = list(first["overall"])
        with warnings.catch_warnings():  # a metric undefined on every seed stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            out["seed_mean"] = {k: float(np.nanmean([r["overall"][k]["value"]
                                                     for r in out["per_seed"].values()]))
                                for k in keys}
    return out


def fold_summary(per_seed: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "sd", "folds"}}`` over every (seed, fold) test fold of
    ``per_seed`` (``evaluate_predictions``' block): sd with ddof=1, folds where a metric is
    undefined left out (``folds`` counts the rest)."""
    import numpy as np

    vals: dict[str, list[float]] = {}
    for res in per_seed.values():
        for fold in res["per_fold"].values():
            for k, v in fold.items():
                vals.setdefault(k, []).append(float(v) if v is not None else float("nan"))
    out = {}
    for k, v in vals.items():
        a = np.asarray(v, float)
        a = a[np.isfinite(a)]
        out[k] = {"mean": float(a.mean()) if len(a) else float("nan"),
                  "sd": float(a.std(ddof=1)) if len(a) > 1 else float("nan"),
                  "folds": int(len(a))}
    return out


def primary_score_fn(task: str) -> Any:
    """The primary metric as ``fn(y, score)`` for the paired bootstrap; survival packs
    ``y = [time, event]`` in two columns."""
    if task == "binary":
        from sklearn.metrics import roc_auc_score

        return lambda y, p: float(roc_auc_score(y, p))

    from sksurv.metrics import concordance_index_censored

    def harrell(y: Any, r: Any) -> float:
        if not y[:, 1].any():
            return float("nan")
        return float(concordance_index_censored(y[:, 1].astype(bool), y[:, 0], r)[0])

    return harrell


def paired_difference(pred_a: pd.DataFrame, pred_b: pd.DataFrame, task: str, n: int,
                      seed: int) -> dict[str, float]:
    """Paired bootstrap of the primary metric, table a minus table b, on the first split
    seed's held-out patients (the same resample for both;
    :func:`lungfuse.core.metrics.paired_bootstrap_difference`)."""
    import numpy as np

    from lungfuse.core.metrics import paired_bootstrap_difference

    s0 = sorted(pred_a["seed"].unique())[0]
    a = pred_a[pred_a["seed"] == s0].sort_values("patient_id")
    b = pred_b[pred_b["seed"] == s0].set_index("patient_id").loc[a["patient_id"]]
    if task == "binary":
        y = a["y"].to_numpy()
        pa, pb = a["prob_calibrated"].to_numpy(), b["prob_calibrated"].to_numpy()
    else:
        y = np.column_stack([a["time"].to_numpy(float), a["event"].to_numpy(float)])
        pa, pb = a["risk"].to_numpy(), b["risk"].to_numpy()
    return paired_bootstrap_difference(primary_score_fn(task), y, pa, pb, n=max(n, 1),
                                       seed=seed)


#: Per-fold figures of a horizon that are summarised over folds (mean, sd).
_HORIZON_KEYS = ("mean_predicted", "observed", "ici", "slope", "td_auc", "brier")


def horizon_summary(pred: pd.DataFrame, horizons: list[Any],
                    train_time: np.ndarray | None = None,
                    train_event: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Per horizon (:class:`~lungfuse.core.survival.Horizon`): the held-out calibration by
    it and its AUC/Brier, per fold (each fold's own held-out patients) and pooled over
    ``pred`` (one seed's held-out predictions), with the over-fold mean and sd of each
    figure (folds where it is not estimable left out, and counted). Only held-out rows
    are in ``pred``; censoring weights come from ``train_*`` (the cohort) as for the
    other survival metrics."""
    import numpy as np

    from lungfuse.core.metrics import horizon_metrics
    from lungfuse.core.survival import horizon_calibration

    def one(g: pd.DataFrame, h: Any) -> dict[str, Any]:
        t, e = g["time"].to_numpy(float), g["event"].to_numpy()
        r = g[h.column].to_numpy(float)
        c = horizon_calibration(t, e, r, h.time)
        c.update(horizon_metrics(t, e, r, h.time, train_time, train_event))
        return c

    out = []
    for h in horizons:
        pooled = one(pred, h)
        folds = {str(k): one(sub, h) for k, sub in pred.groupby("fold")}
        summary: dict[str, Any] = {}
        for key in _HORIZON_KEYS:
            vals = np.array([f[key] for f in folds.values()], float)
            vals = vals[np.isfinite(vals)]
            summary[key] = {"mean": float(vals.mean()) if len(vals) else float("nan"),
                            "sd": float(vals.std(ddof=1)) if len(vals) > 1 else float("nan"),
                            "folds": int(len(vals))}
        out.append({**h.record(), "column": h.column, "pooled": pooled,
                    "per_fold": {k: {kk: v for kk, v in f.items() if kk != "groups"}
                                 for k, f in folds.items()},
                    "over_folds": summary, "estimable": pooled["estimable"],
                    "reason": pooled["reason"]})
    return out
