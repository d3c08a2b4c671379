"""Self-contained HTML reports: figures embedded as PNG data URIs, no network needed.

The building blocks are plain functions: figure makers that take arrays and return a
matplotlib ``Figure``, and :func:`render_html`, which lays out sections of text, tables
and figures. Run, ablation and scoring reports are assembled from them.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1100px;color:#1d2430;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;border-bottom:1px solid #d8dde6;
padding-bottom:.2rem;margin-top:2rem}.sub{color:#5b6577;margin-top:0}
table{border-collapse:collapse;font-size:.9rem;margin:.6rem 0}th,td{border:1px solid #d8dde6;
padding:.25rem .55rem;text-align:right}th{background:#f2f4f8}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.5rem 1rem .5rem 0;vertical-align:top}
figure img{max-width:520px;width:100%;border:1px solid #e5e8ee}
figcaption{font-size:.85rem;color:#5b6577;max-width:520px}
pre{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.8rem;border-radius:4px}
.note{background:#fff8e1;border-left:4px solid #f2b600;padding:.5rem .8rem}
.risk{font-size:2.2rem;font-weight:600}
"""


@dataclass
class Section:
    """A report section: a heading, optional paragraphs/HTML, tables and figures."""

    title: str
    text: Sequence[str] = ()
    tables: Sequence[Any] = ()  # pandas DataFrames
    figures: Sequence[tuple[Any, str]] = ()  # (matplotlib Figure or PNG bytes, caption)
    html: str = ""
    pre: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _img(data: Any, caption: str) -> str:
    png = data if isinstance(data, bytes | bytearray) else figure_png(data)
    b64 = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">{cap}</figure>'


def _table(df: Any) -> str:
    return df.to_html(index=False, border=0, float_format=lambda v: f"{v:.3f}", na_rep="–",
                      escape=True)


def render_html(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """A complete, self-contained HTML page."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(f"<p class='sub'>{html.escape(subtitle)}</p>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts.extend(f"<p>{html.escape(t)}</p>" for t in s.text)
        if s.html:
            parts.append(s.html)
        parts.extend(_table(t) for t in s.tables)
        parts.extend(_img(f, c) for f, c in s.figures)
        if s.pre:
            parts.append(f"<pre>{html.escape(s.pre)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, title: str, sections: Sequence[Section], subtitle: str = "") -> Path:
    from lungfuse.core.io import write_text

    return write_text(path, render_html(title, sections, subtitle))


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
                         highlight: str | None = None):
    """Horizontal bars with 95% CI whiskers, e.g. an ablation table."""
    import numpy as np

    mean, lo, hi = (np.asarray(v, float) for v in (mean, lo, hi))
    order = np.argsort(mean)
    fig, ax = _fig(6.0, 0.45 * len(labels) + 1.4)
    ys = np.arange(len(labels))
    colors = ["#c0392b" if labels[i] == highlight else "#2e6da4" for i in order]
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


@click.command("report")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report_command(folder: Path) -> None:
    """Re-render report.html for a run or ablation folder from its saved artefacts."""
    from lungfuse.core.errors import LungfuseError

    try:
        from lungfuse.core import reporting  # assembled reports for runs/ablations
    except ImportError as exc:  # pragma: no cover
        raise LungfuseError(f"report assembly is not available in this install: {exc}") from exc
    out = reporting.render_folder(folder)
    click.echo(f"wrote {out}")
