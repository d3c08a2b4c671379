"""``report.html`` of a run folder, from the artefacts it already holds (nothing is
retrained): held-out metrics with CIs, ROC and calibration curves (binary) or
Kaplan-Meier curves by risk tertile (survival), metrics per modality-availability
pattern, head weights, the sections the run's modalities add through their optional
``report_section`` hook (the CT modality's example segmentations), the resolved config
and the split summary."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lungfuse.core.errors import DataError
from lungfuse.core.report.html import Section, write_report
from lungfuse.core.report.html import read_json as _read_json

if TYPE_CHECKING:  # pragma: no cover
    from lungfuse.core.registry import Registry

log = logging.getLogger("lungfuse")


def _metrics_table(overall: Mapping[str, Any]) -> Any:
    import pandas as pd

    return pd.DataFrame([{"metric": k, "value": v["value"], "95% CI low": v["ci_low"],
                          "95% CI high": v["ci_high"], "bootstrap n": v.get("n_boot", 0)}
                         for k, v in overall.items()])


def _pattern_table(by_pattern: Mapping[str, Any], primary: str) -> Any:
    import pandas as pd

    rows = []
    for pat, r in by_pattern.items():
        m = r["metrics"].get(primary, {})
        rows.append({"modalities present": pat, "patients": r["n"], "positives/events":
                     r["positives"], primary: m.get("value"), "95% CI low": m.get("ci_low"),
                     "95% CI high": m.get("ci_high")})
    return pd.DataFrame(rows)


def _split_section(folder: Path, pred: Any, task: str) -> Section | None:
    """Patients (and positives/events) per split seed, fold and role."""
    import pandas as pd

    path = folder / "splits.parquet"
    if not path.exists():
        return None
    splits = pd.read_parquet(path)
    label = "y" if task == "binary" else "event"
    if pred is not None and label in pred:
        y = pred.drop_duplicates("patient_id").set_index("patient_id")[label]
        splits = splits.assign(pos=splits["patient_id"].map(y))
    else:
        splits = splits.assign(pos=float("nan"))
    g = splits.groupby(["seed", "fold", "split"], observed=True).agg(
        patients=("patient_id", "size"), positives=("pos", "sum")).reset_index()
    wide = g.pivot_table(index=["seed", "fold"], columns="split",
                         values=["patients", "positives"], aggfunc="first")
    wide.columns = [f"{s} {v}" for v, s in wide.columns]
    wide = wide.reset_index()
    order = ["seed", "fold"] + [f"{s} {v}" for s in ("train", "val", "test")
                                for v in ("patients", "positives") if f"{s} {v}" in wide]
    what = "positives" if task == "binary" else "events"
    if (splits["split"] == "val").any():
        how = ("validation (early stopping, calibration) is carved from each training fold "
               "(training.selection: holdout)")
    else:
        how = ("no validation split: the epoch count is chosen by inner cross-validation on "
               "each training fold's patients, the model is refitted on all of them, and "
               "calibration is fitted on the inner models' out-of-fold outputs "
               "(training.selection: inner_cv)")
    return Section("Splits", text=[f"Patient-level, stratified, seeded splits; {how} "
                                   f"('positives' = {what})."],
                   tables=[wide[order]])


def _config_section(folder: Path) -> Section | None:
    p = folder / "config.yaml"
    if not p.exists():
        return None
    return Section("Configuration", text=["The resolved configuration (defaults filled in)."],
                   pre=p.read_text(encoding="utf-8"))


def section_of(ms: Any, title: str | None = None) -> Section:
    """A modality's :class:`~lungfuse.core.contracts.ModalitySection` as a report section."""
    return Section(title or ms.title, text=list(ms.paragraphs), figures=list(ms.figures),
                   tables=[ms.table] if ms.table is not None else [])


def sections_of(named: list[tuple[str, Any]]) -> list[Section]:
    """Report sections of ``[(modality name, ModalitySection)]``, in order; where two
    modalities give the same title (one plugin configured twice, e.g. two CT series), each
    such title is followed by its modality's name, so a reader can tell them apart."""
    from collections import Counter

    seen = Counter(ms.title for _, ms in named)
    return [section_of(ms, f"{ms.title} ({m})" if seen[ms.title] > 1 else None)
            for m, ms in named]


def _first_fold(folder: Path) -> tuple[int, int, Path] | None:
    """(seed, fold, folder) of the run's first fold model (lowest seed, then fold)."""
    found = []
    for d in (folder / "models").glob("seed*-fold*") if (folder / "models").is_dir() else []:
        try:
            seed, fold = (int(x) for x in d.name.removeprefix("seed").split("-fold"))
        except ValueError:
            continue
        if d.is_dir():
            found.append((seed, fold, d))
    return min(found) if found else None


def _held_out_rows(cfg: Mapping[str, Any]) -> Any:
    """The run's cohort table (indexed by patient id, outcome columns dropped: a report
    hook sees what ``transform`` sees), or None when it cannot be read."""
    import pandas as pd

    cohort, task = cfg.get("cohort") or {}, cfg.get("task") or {}
    try:
        table = pd.read_parquet(cohort["clinical"])
        key = cohort.get("patient_id", "patient_id")
        table[key] = table[key].astype(str)
        table = table.set_index(key)
    except Exception as exc:  # noqa: BLE001 - a figure must not break the report
        log.warning("report: cannot read the clinical table (%s: %s); modality sections "
                    "left out", type(exc).__name__, exc)
        return None
    table.index.name = "patient_id"
    hide = {task.get("outcome", "malignant"), task.get("time", "time"),
            task.get("event", "event")}
    return table.drop(columns=[c for c in table.columns if c in hide])


def _modality_sections(folder: Path, pred: Any, registry: Registry | None = None
                       ) -> list[Section]:
    """The sections the run's modalities add through their ``report_section`` hook.

    Each modality whose plugin defines the hook is built from the run's resolved config
    with the state fitted on the first fold model's training patients, and handed the
    cohort rows of the patients that fold held out and the modality covers. Core knows
    nothing of what the sections show (the CT modality draws example segmentations). A
    plugin that is not installed here, or whose hook fails, loses only its section; a
    fitted-state file that is unsafe or damaged (an older lungfuse's pickle included) is
    one line, as everywhere a run folder is read.
    """
    import tempfile

    import yaml

    from lungfuse.core.contracts import call_section_hook, overrides
    from lungfuse.core.errors import LungfuseError
    from lungfuse.core.registry import MODALITY_GROUP, default_registry
    from lungfuse.core.state_io import legacy_state_error, load_state

    cfg_path = folder / "config.yaml"
    first = _first_fold(folder)
    if pred is None or first is None or not cfg_path.is_file():
        return []
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    if not isinstance(cfg, dict):
        return []
    reg = registry or default_registry()
    hooked: dict[str, tuple[type, dict[str, Any]]] = {}
    for mc in cfg.get("modalities") or []:
        if not isinstance(mc, dict) or "kind" not in mc:
            continue
        try:
            cls = reg.get(MODALITY_GROUP, str(mc["kind"]))
        except LungfuseError as exc:  # e.g. a plugin passed to run_experiment, not installed
            log.debug("report: modality %s: %s", mc["kind"], exc)
            continue
        if overrides(cls, "report_section"):
            hooked[str(mc.get("name") or mc["kind"])] = (cls, mc)
    if not hooked:
        return []
    seed, fold, fdir = first
    # fitted state as JSON + safetensors; a pickle (older lungfuse) is never loaded
    if not (fdir / "modality_state.json").exists() and (fdir / "modality_state.pkl").exists():
        raise legacy_state_error(fdir, cfg_path)
    states = load_state(fdir / "modality_state.json",
                        f"re-create the run with `lungfuse run {cfg_path}`")
    rows = _held_out_rows(cfg)
    if rows is None:
        return []
    test = pred[(pred["seed"] == seed) & (pred["fold"] == fold)]
    named = []
    for name, (cls, mc) in hooked.items():
        if name not in states:
            continue
        mine = test[test[f"present_{name}"].astype(bool)] if f"present_{name}" in test else test
        ids = [i for i in dict.fromkeys(mine["patient_id"].astype(str)) if i in rows.index]
        try:
            inst = cls(cls.config_model.model_validate(
                mc, context={"base_dir": folder, "check_paths": False}))
            inst.load_state_dict(states[name])
        except Exception as exc:  # noqa: BLE001 - a figure must not break the report
            log.warning("report: modality %s: cannot rebuild the fitted plugin (%s: %s); its "
                        "section is left out", name, type(exc).__name__, exc)
            continue
        with tempfile.TemporaryDirectory(prefix="lungfuse-report-") as work:
            ms = call_section_hook(inst, "report_section", rows.loc[ids], Path(work),
                                   where="report")
        if ms is not None:
            named.append((name, ms))
    return sections_of(named)


def _horizon_note(h: Mapping[str, Any]) -> str:
    """Why a horizon, or some of its risk groups, could not be checked."""
    if not h["estimable"]:
        return f"not estimable: {h['reason']}"
    missing = list(h["pooled"].get("groups_not_estimable") or [])
    if not missing:
        return ""
    k = len(h["pooled"].get("groups") or [])
    return (f"risk group(s) {', '.join(str(g) for g in missing)} of {k} (pooled): every "
            "patient still at risk was censored before h, so no observed risk; left out "
            "of ICI and slope")


def _horizon_section(horizons: list[Mapping[str, Any]], unit: str | None) -> Section:
    """"Risk by year": per horizon, held-out calibration of P(event by h) against
    Kaplan-Meier per risk group (mean ± sd over folds, and the pooled points in a figure),
    with the AUC and Brier score there; a horizon that is not estimable says why."""
    import math

    import pandas as pd

    from lungfuse.core.report.figures import _fig

    def ms(h: Mapping[str, Any], key: str) -> str:
        v = h["over_folds"][key]
        if not math.isfinite(v["mean"]):
            return "n/a"
        sd = "" if not math.isfinite(v["sd"]) else f" ± {v['sd']:.3f}"
        return f"{v['mean']:.3f}{sd}"

    rows = []
    for h in horizons:
        p = h["pooled"]
        rows.append({
            "horizon": f"{h['label']}", "events by then": p.get("events_by_horizon"),
            "mean predicted": ms(h, "mean_predicted"), "KM observed": ms(h, "observed"),
            "ICI": ms(h, "ici"), "slope": ms(h, "slope"), "AUC(h)": ms(h, "td_auc"),
            "Brier(h)": ms(h, "brier"),
            "note": _horizon_note(h)})
    fig, ax = _fig(5.2, 4.4)
    drawn = False
    for i, h in enumerate(horizons):
        pts = [g for g in h["pooled"].get("groups", []) if math.isfinite(g["observed"])]
        if not h["estimable"] or not pts:
            continue
        ax.plot([g["mean_predicted"] for g in pts], [g["observed"] for g in pts], "o-",
                color=f"C{i % 10}", ms=4, lw=1.4, label=h["label"])
        drawn = True
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="perfect")
    ax.set(xlabel="predicted risk by h (group mean)", ylabel="observed (Kaplan-Meier)",
           xlim=(0, 1), ylim=(0, 1), title="Calibration per horizon (held-out)")
    ax.legend(fontsize=8, loc="upper left")
    figures = [(fig, "Held-out patients of the first split seed in risk groups (quintiles "
                "where there are enough patients); observed = Kaplan-Meier risk by h in "
                "each group, censoring handled by the estimator.")] if drawn else []
    if not drawn:
        import matplotlib.pyplot as plt

        plt.close(fig)
    what = "years" if unit else "the cohort's time unit"
    return Section("Risk by year", text=[
        f"Predicted probability of the event by each horizon ({what}), 1 - S(h | x) from "
        "each fold's Breslow baseline, against the Kaplan-Meier estimate on that fold's "
        "held-out patients, per risk group. Per fold, then mean ± sd over folds: mean "
        "predicted and observed risk, ICI (patient-weighted mean |predicted - observed| over "
        "risk groups), calibration slope across groups (1 is ideal), time-dependent AUC and "
        "Brier score at h (scikit-survival). A horizon past the follow-up is not estimable "
        "and is not extrapolated."], tables=[pd.DataFrame(rows)], figures=figures)


# ----------------------------------------------------------------------------- run
def render_run(folder: Path, registry: Registry | None = None) -> Path:
    """``report.html`` of a finished run folder; ``registry`` (default: the installed
    plugins) supplies the plugins whose ``report_section`` hooks add sections."""
    import numpy as np
    import pandas as pd

    from lungfuse.core.report.baselines import baseline_section, headline_sentence, verdict_html
    from lungfuse.core.report.figures import bar_figure, calibration_figure, km_figure, roc_figure

    run = _read_json(folder / "run.json")
    if run.get("status") != "complete" or not (folder / "metrics.json").exists():
        raise DataError(f"{folder}: the run is not complete (status {run.get('status')!r}); "
                        "nothing to report yet")
    metrics = _read_json(folder / "metrics.json")
    pred = pd.read_parquet(folder / "predictions.parquet")
    task = metrics["task"]
    primary = "auroc" if task == "binary" else "harrell_c"
    seed0 = sorted(pred["seed"].unique())[0]
    p0 = pred[pred["seed"] == seed0]
    cov = metrics.get("coverage", {})
    summary = Section("Held-out performance", text=[
        f"{metrics.get('patients', p0['patient_id'].nunique())} patients; each is scored once "
        f"per split seed by the model of the fold that held it out. Coverage: "
        + ", ".join(f"{m} {n}" for m, n in cov.items()) + ".",
        "95% CIs: percentile bootstrap over held-out patients (stratified by outcome)."]
        + [t for t in (headline_sentence(metrics),) if t],
        html=verdict_html(metrics), tables=[_metrics_table(metrics["overall"])])
    sections = [summary]
    compared = baseline_section(folder, metrics, p0)  # the baselines, beside the model
    if compared is not None:
        sections.append(compared)
    if task == "binary":
        curves = {"all patients": (p0["y"].to_numpy(), p0["prob_calibrated"].to_numpy())}
        for pat, g in p0.groupby("pattern"):
            if g["y"].nunique() == 2 and len(g) >= 8:
                curves[str(pat)] = (g["y"].to_numpy(), g["prob_calibrated"].to_numpy())
        figs = [(roc_figure(curves, "ROC (held-out)"), "ROC of held-out predictions, overall "
                 "and by which modalities a patient has."),
                (calibration_figure({"calibrated": (p0["y"], p0["prob_calibrated"]),
                                     "uncalibrated": (p0["y"], p0["prob"])},
                                    n_bins=5 if len(p0) < 200 else 10),
                 "Reliability diagram (quantile bins): post-hoc calibration fitted on each "
                 "fold's validation patients.")]
        sections.append(Section("ROC and calibration", figures=figs))
    else:
        groups = np.empty(len(p0), dtype=object)
        for _, idx in p0.groupby("fold").groups.items():
            r = p0.loc[idx, "risk"]
            q = pd.qcut(r.rank(method="first"), 3, labels=["low", "intermediate", "high"])
            groups[p0.index.get_indexer(idx)] = q.astype(str).to_numpy()
        sections.append(Section("Kaplan–Meier by risk group", text=[
            "Held-out patients split into risk tertiles within each fold."],
            figures=[(km_figure(p0["time"], p0["event"], groups), "Kaplan–Meier curves "
                      "by predicted risk tertile (held-out).")]))
        if metrics.get("horizons"):
            sections.append(_horizon_section(metrics["horizons"],
                                             (metrics.get("time_unit") or None)))
    sections.append(Section("By modality availability", text=[
        "Held-out performance by the set of modalities a patient has."],
        tables=[_pattern_table(metrics.get("by_pattern", {}), primary)]))
    wcols = [c for c in pred.columns if c.startswith("weight_")]
    if wcols:
        w = p0[wcols].mean()
        sections.append(Section("Fusion head weights", figures=[(bar_figure(
            [c.removeprefix("weight_") for c in wcols], w.to_numpy(), "Mean modality weight",
            "weight (held-out mean)"), "The head's attention weight per modality, averaged "
            "over held-out patients (absent modalities weigh 0).")]))
    sections.extend(_modality_sections(folder, pred, registry))
    folds = run.get("folds", [])
    if folds:
        sections.append(Section("Training", tables=[pd.DataFrame(folds)]))
    for s in (_split_section(folder, pred, task), _config_section(folder)):
        if s is not None:
            sections.append(s)
    return write_report(folder / "report.html", f"lungfuse run: {folder.name}", sections,
                        subtitle=f"{task} task; finished in {run.get('seconds', '?')} s")
