"""``report.html`` of an ablation folder: its table, the bars with CIs, the paired
comparisons, ROC curves of the leading variants and the config/split summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lungfuse.core.errors import DataError
from lungfuse.core.report.html import Section, write_report
from lungfuse.core.report.html import read_json as _read_json
from lungfuse.core.report.run import _config_section, _split_section


def _baseline_labels(table: Any) -> list[str]:
    """Labels of the classical-baseline rows (none in folders from before baselines)."""
    if "baseline" not in table:
        return []
    return table.loc[table["baseline"].astype(bool), "variant"].tolist()


def _baseline_text(table: Any, primary: str) -> list[str]:
    """What the baseline rows are, and, where one beats every neural variant on the pooled
    primary metric, a sentence that says so (with its paired Δ against the reference and
    whether that CI excludes 0)."""
    labels = _baseline_labels(table)
    if not labels:
        return []
    base = table["variant"].isin(labels)
    out = ["Rows marked '(baseline)' (grey in the figure) are classical models fitted on each "
           "fold's non-test patients with the same folds and the same train-fitted features "
           "(of all ablated modalities), scored on the same held-out patients."]
    neural = table.loc[~base, primary].max()
    for _, r in table[base].iterrows():
        if r[primary] == r[primary] and r[primary] > neural:
            lo, hi = r[f"{primary}_delta_ci_low"], r[f"{primary}_delta_ci_high"]
            shown = ("its 95% CI excludes 0" if lo == lo and (lo > 0 or hi < 0)
                     else "its 95% CI includes 0")
            out.append(f"Baseline {r['variant']} beats every neural variant: pooled {primary} "
                       f"{r[primary]:.3f} vs {neural:.3f}; against the reference its paired "
                       f"Δ is {r[f'{primary}_delta_vs_ref']:+.3f} ({shown}).")
    return out


def render_ablation(folder: Path) -> Path:
    """``report.html`` of an ablation folder."""
    import pandas as pd

    from lungfuse.core.report.figures import interval_bars_figure, roc_figure

    state = _read_json(folder / "ablation.json")
    if not (folder / "ablation.parquet").exists():
        raise DataError(f"{folder}: the ablation has not finished (no ablation.parquet); "
                        "rerun `lungfuse ablate` with --dir to resume it")
    table = pd.read_parquet(folder / "ablation.parquet")
    task = state["task"]
    primary = state.get("primary", "auroc" if task == "binary" else "harrell_c")
    ref = state.get("reference", "")
    show = ["variant", "patients", primary, f"{primary}_ci_low", f"{primary}_ci_high",
            f"{primary}_fold_mean", f"{primary}_fold_sd"]
    others = [c for c in ("auprc", "brier", "ece", "uno_c", "integrated_brier") if c in table]
    fig = interval_bars_figure(table["variant"].tolist(), table[primary], table[f"{primary}_ci_low"],
                               table[f"{primary}_ci_high"], metric=primary,
                               title="Held-out performance per variant", highlight=ref,
                               muted=_baseline_labels(table))
    comp = table[["variant", f"{primary}_delta_vs_ref", f"{primary}_delta_ci_low",
                  f"{primary}_delta_ci_high", f"{primary}_p_not_better"]].rename(columns={
                      f"{primary}_delta_vs_ref": f"Δ{primary}", f"{primary}_delta_ci_low":
                      "95% CI low", f"{primary}_delta_ci_high": "95% CI high",
                      f"{primary}_p_not_better": "P(Δ ≤ 0)"})
    sections = [
        Section("Variants", text=[
            f"{len(table)} variants (modality subsets × heads {', '.join(state['heads'])}), "
            f"each trained on the same {len(state.get('folds', []))} split folds with the same "
            "seeds; features prepared once per modality and fold and shared.",
            "Pooled held-out estimates with 95% bootstrap CIs; fold mean ± sd (over every "
            "split seed × fold) alongside.", *_baseline_text(table, primary)],
            tables=[table[show + others]], figures=[(fig, f"{primary} with 95% CI; red: the "
                                                     f"reference ({ref}).")]),
        Section("Paired comparison with the best single modality", text=[
            f"Reference: {ref}. Δ = variant − reference on the same held-out patients; the "
            "CI and P(Δ ≤ 0) come from a paired bootstrap (one resample for both)."],
            tables=[comp]),
    ]
    curves = {}
    for _, r in table.head(4).iterrows():
        vid = next(v["id"] for v in state["variants"] if v["label"] == r["variant"])
        p = pd.read_parquet(folder / "variants" / vid / "predictions.parquet")
        p = p[p["seed"] == p["seed"].min()]
        if task == "binary":
            curves[r["variant"]] = (p["y"].to_numpy(), p["prob_calibrated"].to_numpy())
    if curves:
        sections.append(Section("ROC of the leading variants",
                                figures=[(roc_figure(curves, "ROC (held-out)"), "")]))
    for s in (_split_section(folder, None, task), _config_section(folder)):
        if s is not None:
            sections.append(s)
    sub = (f"{task} task; {state.get('seconds', '?')} s; {state.get('trained_this_call', '?')} "
           f"fold trainings in the last call, {state.get('resumed_from_disk', 0)} resumed")
    return write_report(folder / "report.html", f"lungfuse ablation: {folder.name}", sections,
                        subtitle=sub)
