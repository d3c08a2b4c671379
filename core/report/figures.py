"""Figure makers: arrays in, a matplotlib ``Figure`` out (ROC, calibration,
Kaplan-Meier, interval bars, overlays, bars). No file IO here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


# ---- figures ------------------------------------------------------------------------------
def _fig(w: float = 5.0, h: float = 4.2):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def roc_figure(curves: dict[str, tuple[Sequence[int], Sequence[float]]], title: str = "ROC"):
    """ROC curves, one per label: ``{label: (y_true, score)}``; AUROC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = _fig()
    for label, (y, s) in curves.items():
        if len(set(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.8, label=f"{label} (AUROC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1)
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return fig


def calibration_figure(curves: dict[str, tuple[Sequence[int], Sequence[float]]], n_bins: int = 10,
                       title: str = "Calibration"):
    """Reliability diagram: observed frequency against mean predicted probability."""
    import numpy as np
    from sklearn.calibration import calibration_curve

    fig, ax = _fig()
    for label, (y, p) in curves.items():
        y, p = np.asarray(y), np.asarray(p)
        if len(set(y.tolist())) < 2:
            continue
        frac, mean = calibration_curve(y, p, n_bins=n_bins, strategy="quantile")
        ax.plot(mean, frac, marker="o", ms=4, lw=1.5, label=label)
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="perfect")
    ax.set(xlabel="predicted risk", ylabel="observed frequency", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    return fig


def km_figure(time: Sequence[float], event: Sequence[int], groups: Sequence[str],
              title: str = "Kaplan–Meier by risk group"):
    """Kaplan–Meier curves per group (scikit-survival's estimator)."""
    import numpy as np
    from sksurv.nonparametric import kaplan_meier_estimator

    time, event, groups = np.asarray(time, float), np.asarray(event, bool), np.asarray(groups)
    fig, ax = _fig()
    for g in sorted(set(groups.tolist())):
        m = groups == g
        if m.sum() < 2:
            continue
        t, s = kaplan_meier_estimator(event[m], time[m])
        ax.step(t, s, where="post", lw=1.8, label=f"{g} (n={int(m.sum())})")
    ax.set(xlabel="time", ylabel="survival probability", title=title, ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return fig


def interval_bars_figure(labels: Sequence[str], mean: Sequence[float], lo: Sequence[float],
                         hi: Sequence[float], metric: str = "AUROC", title: str = "",
                         highlight: str | None = None, muted: Sequence[str] = ()):
    """Horizontal bars with 95% CI whiskers, e.g. an ablation table; ``highlight`` (red)
    marks the reference, ``muted`` (grey) the classical baselines beside the models."""
    import numpy as np

    mean, lo, hi = (np.asarray(v, float) for v in (mean, lo, hi))
    order = np.argsort(mean)
    fig, ax = _fig(6.0, 0.45 * len(labels) + 1.4)
    ys = np.arange(len(labels))
    grey = set(muted)
    colors = ["#c0392b" if labels[i] == highlight else "#8c8c8c" if labels[i] in grey
              else "#2e6da4" for i in order]
    ax.barh(ys, mean[order], color=colors, alpha=0.85)
    ax.errorbar(mean[order], ys, xerr=[mean[order] - lo[order], hi[order] - mean[order]],
                fmt="none", ecolor="k", capsize=3, lw=1)
    ax.set_yticks(ys, [labels[i] for i in order], fontsize=8)
    finite = np.concatenate([lo[np.isfinite(lo)], [0.5]])
    ax.set_xlim(max(0.0, float(finite.min()) - 0.05), min(1.0, float(np.nanmax(hi)) + 0.05)
                if np.isfinite(np.nanmax(hi)) else 1.0)
    ax.set(xlabel=f"{metric} (95% CI)", title=title)
    return fig


def overlay_figure(image: Any, mask: Any | None = None, pred: Any | None = None,
                   title: str = "", window: tuple[float, float] = (-1000.0, 400.0)):
    """A CT slice (HU) with the true mask (green contour) and prediction (red contour)."""
    import numpy as np

    fig, ax = _fig(4.2, 4.2)
    ax.imshow(np.clip(image, *window), cmap="gray", vmin=window[0], vmax=window[1])
    if mask is not None and np.any(mask):
        ax.contour(np.asarray(mask) > 0.5, levels=[0.5], colors=["#2ecc71"], linewidths=1.2)
    if pred is not None and np.any(np.asarray(pred) > 0.5):
        ax.contour(np.asarray(pred) > 0.5, levels=[0.5], colors=["#e74c3c"], linewidths=1.2)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    return fig


def bar_figure(labels: Sequence[str], values: Sequence[float], title: str = "", xlabel: str = ""):
    """Signed horizontal bars (e.g. per-modality contributions or gene attributions)."""
    import numpy as np

    values = np.asarray(values, float)
    fig, ax = _fig(5.0, 0.35 * len(labels) + 1.3)
    ys = np.arange(len(labels))
    ax.barh(ys, values, color=["#c0392b" if v > 0 else "#2e6da4" for v in values])
    ax.axvline(0, c="k", lw=0.8)
    ax.set_yticks(ys, list(labels), fontsize=8)
    ax.invert_yaxis()
    ax.set(title=title, xlabel=xlabel)
    return fig
