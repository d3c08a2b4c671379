"""``report.html`` of a run folder, from the artefacts it already holds (nothing is
retrained): held-out metrics with CIs, ROC and calibration curves (binary) or
Kaplan-Meier curves by risk tertile (survival), metrics per modality-availability
pattern, head weights, example segmentations (when the run has a CT modality), the
resolved config and the split summary."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lungfuse.core.errors import DataError
from lungfuse.core.report.html import Section, write_report
from lungfuse.core.report.html import read_json as _read_json

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
    return Section("Splits", text=[f"Patient-level, stratified, seeded splits; validation is "
                                   f"carved from each training fold ('positives' = {what})."],
                   tables=[wide[order]])


def _config_section(folder: Path) -> Section | None:
    p = folder / "config.yaml"
    if not p.exists():
        return None
    return Section("Configuration", text=["The resolved configuration (defaults filled in)."],
                   pre=p.read_text(encoding="utf-8"))


def _ct_modalities(folder: Path) -> dict[str, dict[str, Any]]:
    """``{modality name: config dict}`` of the folder's CT (``ct_root``) modalities."""
    import yaml

    p = folder / "config.yaml"
    if not p.exists():
        return {}
    cfg = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    return {(m.get("name") or m["kind"]): m for m in cfg.get("modalities", [])
            if isinstance(m, dict) and "ct_root" in m}


def ct_example(state: Mapping[str, Any], mcfg: Mapping[str, Any], uid: str,
               nodule: tuple[float, float, float, float] | None = None,
               title: str = "", ct_path: Path | None = None) -> tuple[Any, dict[str, Any]] | None:
    """The segmented nodule on its CT slice: ``(figure, info)`` or None without a scan.

    ``state`` is the fitted state of an Inf-Net modality (``model`` with hparams, weights
    and slice settings). The nodule is segmented around ``nodule`` (world x, y, z mm and
    diameter) or, without one, around the first annotated nodule of ``uid``; failing both,
    the largest component the network finds. The ground-truth mask (``masks_dir``) is
    drawn in green where there is one, the segmentation in red.
    """
    import numpy as np

    from lungfuse.core.report.figures import overlay_figure
    from lungfuse.plugins.imaging_infnet import ctio
    from lungfuse.plugins.imaging_infnet.config import FastPath, SliceSettings
    from lungfuse.plugins.imaging_infnet.features import segment_at, sweep
    from lungfuse.plugins.imaging_infnet.infer import Predictor
    from lungfuse.plugins.imaging_infnet.network import InfNet

    model_state = state.get("model") or {}
    if not model_state:
        return None
    path = ct_path
    if path is None:
        vols = ctio.find_volumes(mcfg["ct_root"]) if mcfg.get("ct_root") else {}
        vols.update({str(k): Path(v) for k, v in (mcfg.get("volumes") or {}).items()})
        path = vols.get(uid)
    if path is None:
        return None
    hp = model_state["hparams"]
    net = InfNet.from_hparams(hp, "fitted infnet state")
    net.load_state_dict(model_state["state_dict"])
    pred = Predictor(net, SliceSettings(**model_state["slices"]), FastPath(enabled=False))
    vol = ctio.read_volume(path)
    thr = float(mcfg.get("threshold", 0.5))
    if nodule is None and mcfg.get("annotations"):
        ann = ctio.read_annotations(mcfg["annotations"])
        sel = ann[ann["seriesuid"] == uid]
        if len(sel):
            r = sel.iloc[0]
            nodule = (float(r.coordX), float(r.coordY), float(r.coordZ), float(r.diameter_mm))
    info: dict[str, Any] = {"uid": uid}
    full = np.zeros(vol.array.shape, np.float32)
    if nodule is not None:
        c, _ = ctio.nodule_centres_index(vol, [nodule], uid)[0]
        nd = segment_at(pred, vol, c, float(nodule[3]), thr)
        info["source"] = "given nodule location"
    else:
        found = sweep(pred, vol, thr)
        nd = found[0] if found else None
        info["source"] = "largest segmented component" if nd else "no nodule found"
    if nd is not None:
        full[nd.box] = nd.mask
        z = int(np.clip(round(float(nd.centre_index[2])), 0, vol.array.shape[0] - 1))
        if not full[z].any() and full.any():
            zz = np.nonzero(full.reshape(full.shape[0], -1).any(1))[0]
            z = int(zz[np.argmin(np.abs(zz - z))])
        info.update({k: float(nd.features[k]) for k in ("long_axis_mm", "volume_mm3",
                                                        "mean_hu", "seg_prob", "seg_fallback")
                     if k in nd.features})
    else:
        z = vol.array.shape[0] // 2
    truth = None
    mpath = ctio.find_mask(mcfg.get("masks_dir"), uid) if mcfg.get("masks_dir") else None
    if mpath is not None:
        try:
            truth = ctio.read_mask(mpath, vol)[z] > 0
        except DataError as exc:
            log.warning("report: ground-truth mask of %s unusable: %s", uid, exc)
    info["slice"] = z
    fig = overlay_figure(vol.array[z], mask=truth, pred=full[z],
                         title=title or f"{uid[-12:]} slice {z}")
    return fig, info


def _segmentation_section(folder: Path, pred: Any, n: int = 3) -> Section | None:
    """Example segmentations on held-out patients of the first fold (run folders)."""
    import pandas as pd

    from lungfuse.core.state_io import legacy_state_error, load_state

    cts = _ct_modalities(folder)
    models = sorted((folder / "models").glob("seed*-fold*")) if (folder / "models").exists() else []
    if not cts or not models or pred is None:
        return None
    fdir = models[0]
    # fitted state as JSON + safetensors; a pickle (older lungfuse) is never loaded
    if not (fdir / "modality_state.json").exists() and (fdir / "modality_state.pkl").exists():
        raise legacy_state_error(fdir, folder / "config.yaml")
    states = load_state(fdir / "modality_state.json",
                        f"re-create the run with `lungfuse run {folder / 'config.yaml'}`")
    clinical = None
    figures = []
    for name, mcfg in cts.items():
        if name not in states:
            continue
        col = mcfg.get("series_column", "seriesuid")
        if clinical is None:
            import yaml

            cfg = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
            try:
                clinical = pd.read_parquet(cfg["cohort"]["clinical"])
                clinical = clinical.set_index(cfg["cohort"].get("patient_id", "patient_id"))
            except Exception as exc:  # noqa: BLE001 - a figure must not break the report
                log.warning("report: cannot read the clinical table (%s)", exc)
                return None
        seed, fold = (int(x) for x in fdir.name.replace("seed", "").split("-fold"))
        test = pred[(pred["seed"] == seed) & (pred["fold"] == fold)]
        if f"present_{name}" in test:
            test = test[test[f"present_{name}"].astype(bool)]
        for pid in test["patient_id"].astype(str).head(n):
            uid = str(clinical[col].get(pid)) if col in clinical.columns else pid
            try:
                res = ct_example(states[name], mcfg, uid, title=f"{pid} (held out, {fdir.name})")
            except Exception as exc:  # noqa: BLE001 - one unreadable scan must not break it
                log.warning("report: no segmentation figure for %s: %s", pid, exc)
                continue
            if res is not None:
                figures.append((res[0], f"{pid}: {res[1].get('source')}; red = Inf-Net, "
                                        "green = ground truth"))
    if not figures:
        return None
    return Section("Example segmentations", text=[
        "Inf-Net of the first fold (trained on that fold's training patients or given as a "
        "checkpoint trained elsewhere) on held-out patients' scans."], figures=figures)


# ----------------------------------------------------------------------------- run
def render_run(folder: Path) -> Path:
    """``report.html`` of a finished run folder."""
    import numpy as np
    import pandas as pd

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
        "95% CIs: percentile bootstrap over held-out patients (stratified by outcome)."],
        tables=[_metrics_table(metrics["overall"])])
    sections = [summary]
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
    seg = _segmentation_section(folder, pred)
    if seg is not None:
        sections.append(seg)
    folds = run.get("folds", [])
    if folds:
        sections.append(Section("Training", tables=[pd.DataFrame(folds)]))
    for s in (_split_section(folder, pred, task), _config_section(folder)):
        if s is not None:
            sections.append(s)
    return write_report(folder / "report.html", f"lungfuse run: {folder.name}", sections,
                        subtitle=f"{task} task; finished in {run.get('seconds', '?')} s")
