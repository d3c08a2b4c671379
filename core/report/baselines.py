"""The run report's classical-baseline parts: the sentence that says when a baseline beats
the model (shown at the top of the report), the survival headline sentence (c-index mean ±
sd over folds, the pooled figure beside it), and the section with the model beside every
baseline (table, interval bars, ROC curves for a binary task). Everything comes from
``metrics.json`` and ``baselines/predictions.parquet``; nothing is refitted."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lungfuse.core.report.html import Section

__all__ = ["baseline_section", "headline_sentence", "verdict_html"]

PRIMARY = {"binary": "auroc", "survival": "harrell_c"}


def verdict_html(metrics: Mapping[str, Any]) -> str:
    """The verdict sentences of ``metrics.json`` (a baseline beats the model) as a
    highlighted note; the absence of any as a plain line where baselines ran."""
    lines = metrics.get("baseline_verdict") or []
    blocks = metrics.get("baselines") or {}
    if lines:
        return "".join(f"<p class='note'><strong>{html.escape(t)}</strong></p>" for t in lines)
    ok = [k for k, b in blocks.items() if b.get("status") == "ok"]
    if ok:
        primary = PRIMARY.get(metrics.get("task", "binary"), "auroc")
        return (f"<p>No baseline ({html.escape(', '.join(ok))}) has a higher pooled "
                f"{primary} than the model.</p>")
    return ""


def headline_sentence(metrics: Mapping[str, Any]) -> str:
    """Survival: "Harrell's C 0.712 ± 0.041 (mean ± sd over 6 test folds); pooled 0.705
    [CI]" with why the pooled figure is secondary; "" for a binary task."""
    if metrics.get("task") != "survival":
        return ""
    out = []
    for k, name in (("harrell_c", "Harrell's C"), ("uno_c", "Uno's C")):
        f = metrics.get("fold_summary", {}).get(k)
        v = metrics.get("overall", {}).get(k)
        if not f or not v or not math.isfinite(f["mean"]):
            continue
        sd = f" ± {f['sd']:.3f}" if math.isfinite(f["sd"]) else ""
        ci = (f" [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
              if v["ci_low"] == v["ci_low"] else "")
        out.append(f"{name} {f['mean']:.3f}{sd} (mean ± sd over {f['folds']} test folds); "
                   f"pooled {v['value']:.3f}{ci}")
    if not out:
        return ""
    return ("; ".join(out) + ". The fold mean is the headline: the pooled figure ranks the "
            "held-out risks of every fold of the first split seed together, though they come "
            "from separately trained fold models whose risks are on different scales.")


def baseline_section(folder: Path, metrics: Mapping[str, Any], model_pred: Any) -> Section | None:
    """"Model beside classical baselines": one row per model/baseline (pooled primary
    metric with CI, fold mean ± sd, paired difference model − baseline with CI and
    P(Δ ≤ 0)), interval bars, and (binary) ROC curves of the first split seed."""
    import pandas as pd

    from lungfuse.core.report.figures import interval_bars_figure, roc_figure

    blocks = metrics.get("baselines") or {}
    if not blocks:
        return None
    task = metrics.get("task", "binary")
    primary = PRIMARY.get(task, "auroc")

    def row(name: str, m: Mapping[str, Any], d: Mapping[str, Any] | None) -> dict[str, Any]:
        v = m["overall"][primary]
        f = m.get("fold_summary", {}).get(primary, {})
        return {"model": name, f"{primary} (pooled)": v["value"], "95% CI low": v["ci_low"],
                "95% CI high": v["ci_high"], "fold mean": f.get("mean", math.nan),
                "fold sd": f.get("sd", math.nan),
                "model − baseline": d["difference"] if d else math.nan,
                "Δ 95% CI low": d["ci_low"] if d else math.nan,
                "Δ 95% CI high": d["ci_high"] if d else math.nan,
                "P(Δ ≤ 0)": d["p_not_better"] if d else math.nan}

    rows = [row("model (lungfuse)", metrics, None)]
    failed = []
    for label, b in blocks.items():
        if b.get("status") != "ok":
            failed.append(f"{label}: {b.get('reason', 'failed')}")
            continue
        rows.append(row(f"{label} (baseline)", b["metrics"], b["difference"]))
    table = pd.DataFrame(rows)
    fig = interval_bars_figure(table["model"].tolist(), table[f"{primary} (pooled)"],
                               table["95% CI low"], table["95% CI high"], metric=primary,
                               title="Model and classical baselines (held-out)",
                               highlight="model (lungfuse)",
                               muted=table["model"].tolist()[1:])
    figures = [(fig, f"Pooled held-out {primary} with 95% bootstrap CI; red: the model, "
                "grey: baselines fitted on the same folds and features.")]
    pred_path = folder / "baselines" / "predictions.parquet"
    if task == "binary" and pred_path.exists() and model_pred is not None:
        bp = pd.read_parquet(pred_path)
        seed0 = model_pred["seed"].min()
        curves = {"model (lungfuse)": (model_pred["y"].to_numpy(),
                                       model_pred["prob_calibrated"].to_numpy())}
        for label, g in bp[bp["seed"] == seed0].groupby("baseline"):
            if blocks.get(str(label), {}).get("status") == "ok":
                curves[f"{label} (baseline)"] = (g["y"].to_numpy(), g["score"].to_numpy())
        figures.append((roc_figure(curves, "ROC: model and baselines (held-out)"),
                        "ROC of the first split seed's held-out patients."))
    desc = [f"{k}: {b.get('description') or b.get('kind')} on "
            f"{', '.join(b.get('modalities', []))}" for k, b in blocks.items()]
    text = [
        "Classical models fitted on each fold's non-test patients with the same split "
        "table and the same train-fitted feature tables as the model (a patient missing a "
        "modality is imputed by the baseline's pipeline, fitted on training rows), scored on "
        "the same held-out patients with the same metrics. Δ = model − baseline on the "
        "same patients (first split seed), CI and P(Δ ≤ 0) from a paired bootstrap.",
        "Baselines: " + "; ".join(desc) + "."]
    if failed:
        text.append("Left out (failed): " + "; ".join(failed) + ".")
    return Section("Model beside classical baselines", text=text, tables=[table],
                   figures=figures)
