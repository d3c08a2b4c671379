"""``lungfuse score RUN``: a trained run applied to new patients, with reasons.

For each patient, every fold model of the run (all split seeds and folds) transforms the
patient's data with the modality states fitted on that fold's training patients and
predicts. The patient gets:

* **risk**: the mean over fold models of the calibrated probability of malignancy
  (binary runs; calibration fitted on each fold's validation patients) or of the
  log-risk (survival runs, with survival probabilities from each fold's Breslow baseline);
* **uncertainty**: the standard deviation of that quantity over the fold models;
* **modality contributions**: leave-one-modality-out, ``risk(all present) − risk(with m
  hidden)`` for each present modality m (the head treats a hidden modality exactly as a
  missing one), and the head's modality weights where the head has them;
* **top genes**: Integrated Gradients (captum) of the fold model's raw output (logit or
  log-risk) with respect to each input feature, from an all-zero baseline (the training
  mean after z-scoring, wild type for mutations), averaged over fold models; features of
  ``feature_kind = "gene"`` modalities are the genes;
* **the segmented nodule** on its CT slice, for CT modalities.

A modality missing for a patient (no data, or data that cannot be read) is left out of
that patient's prediction, not imputed, and the page says what was missing and why.

Scoring folder (written to a temporary folder and renamed when complete)::

    scores.parquet  scores.json  scores_by_model.parquet  attributions.parquet
    report.html  patients/<patient_id>.html  score.log
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lungfuse.core import io
from lungfuse.core.errors import ConfigError, DataError
from lungfuse.core.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

__all__ = ["ScoreResult", "load_score_input", "score_command", "score_patients"]

log = logging.getLogger("lungfuse")


# ----------------------------------------------------------------------------- input
def load_score_input(spec: Any, base_dir: Path | None = None) -> Any:
    """Validate a scoring input: a YAML/JSON file, a dict or a ``ScoreInput``."""
    from pydantic import ValidationError

    from lungfuse.core.config import format_validation_error, read_yaml
    from lungfuse.schemas import ScoreInput

    if isinstance(spec, ScoreInput):
        return spec
    source = "<scoring input>"
    if isinstance(spec, str | os.PathLike):
        path = Path(spec).resolve()
        data, source, base_dir = read_yaml(path), str(path), path.parent
    else:
        data = dict(spec)
    try:
        return ScoreInput.model_validate(
            data, context={"base_dir": Path(base_dir or Path.cwd()), "check_paths": True})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, data)) from None


def _patient_table(spec: Any, cfg: Any) -> pd.DataFrame:
    """Rows for the patients to score (covariates/series ids where given, no outcomes)."""
    import pandas as pd

    ids = [p.id for p in spec.patients]
    if spec.clinical is None:
        return pd.DataFrame(index=pd.Index(ids, name="patient_id"))
    try:
        tab = pd.read_parquet(spec.clinical)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise DataError(f"{spec.clinical}: cannot read the clinical table as Parquet "
                        f"({type(exc).__name__}); give a Parquet file") from None
    if spec.patient_id not in tab.columns:
        raise DataError(f"{spec.clinical}: no column {spec.patient_id!r} (columns: "
                        f"{', '.join(map(str, tab.columns))}); set `patient_id`")
    tab[spec.patient_id] = tab[spec.patient_id].astype(str)
    if tab[spec.patient_id].duplicated().any():
        dup = tab.loc[tab[spec.patient_id].duplicated(), spec.patient_id].iloc[0]
        raise DataError(f"{spec.clinical}: patient {dup} appears twice; one row per patient")
    hide = {cfg.task.outcome, cfg.task.time, cfg.task.event}
    tab = tab.drop(columns=[c for c in tab.columns if c in hide]).set_index(spec.patient_id)
    out = tab.reindex(ids)
    out.index.name = "patient_id"
    return out


# ----------------------------------------------------------------------------- models
def _fold_dirs(run_dir: Path) -> list[tuple[int, int]]:
    out = []
    for d in sorted((run_dir / "models").glob("seed*-fold*")):
        if (d / "model.pt").exists():
            seed, fold = d.name.removeprefix("seed").split("-fold")
            out.append((int(seed), int(fold)))
    return sorted(out)


def _check_run(run_dir: Path) -> dict[str, Any]:
    import json

    info = run_dir / "run.json"
    if not info.exists():
        raise DataError(f"{run_dir}: not a run folder (no run.json); give the folder "
                        "`lungfuse run` printed")
    run = json.loads(info.read_text(encoding="utf-8"))
    if run.get("status") != "complete":
        raise DataError(f"{run_dir}: the run is not complete (status {run.get('status')!r}); "
                        "score with a finished run")
    return run


def _override(plugin: Any, over: Mapping[str, Any], base_dir: Path, where: str) -> Any:
    """The plugin's config with the scoring input's settings for it applied."""
    from pydantic import ValidationError

    from lungfuse.core.config import format_validation_error

    if not over:
        return plugin.config
    data = {**plugin.config.model_dump(), **dict(over)}
    try:
        cfg = type(plugin.config).model_validate(
            data, context={"base_dir": base_dir, "check_paths": False})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where, dict(over))) from None
    for key in over:
        v = getattr(cfg, key, None)
        if isinstance(v, Path) and not v.exists():
            raise ConfigError(f"{where}.{key}: file not found: {v}")
    return cfg


class _ModalityInputs:
    """Per modality: the run's plugin class, the config for new patients, failures."""

    def __init__(self, spec: Any, run_mods: Iterable[str], base_dir: Path, source: str) -> None:
        unknown = sorted(set(spec.modalities) - set(run_mods))
        if unknown:
            raise ConfigError(f"{source}: modalities.{unknown[0]}: the run has no such modality "
                              f"(it has: {', '.join(run_mods)})")
        self.spec, self.base_dir, self.source = spec, base_dir, source
        self.configs: dict[str, Any] = {}
        self.errors: dict[str, dict[str, str]] = {}  # modality -> patient -> reason

    def config(self, name: str, plugin: Any) -> Any:
        if name not in self.configs:
            self.configs[name] = _override(plugin, self.spec.modalities.get(name, {}),
                                           self.base_dir, f"{self.source}: modalities.{name}")
        return self.configs[name]


def _transform_fold(fold: Any, table: pd.DataFrame, spec: Any, inputs: _ModalityInputs,
                    scratch: Path) -> dict[str, pd.DataFrame]:
    """Every modality's features of the patients, with this fold's fitted states."""
    import pandas as pd

    from lungfuse.core.contracts import ModalityContext

    entries = {p.id: p.model_dump() for p in spec.patients}
    out: dict[str, pd.DataFrame] = {}
    for m, fitted in fold.plugins.items():
        cls = type(fitted)
        base_cfg = inputs.config(m, fitted)
        state = fitted.state_dict()
        hook = cls(base_cfg)
        hook.load_state_dict(state)
        # patients read from the configured sources share one call; a patient with files
        # of their own (a CT scan) gets a config, and a call, of their own
        groups: dict[str | None, tuple[Any, list[str]]] = {}
        for pid in table.index:
            own = hook.scoring_config(entries[pid], scratch / m)
            key = None if own is None else str(pid)
            groups.setdefault(key, (own or base_cfg, []))[1].append(pid)
        parts = []
        for cfg_g, pids in groups.values():
            inst = cls(cfg_g)
            inst.load_state_dict(state)
            ctx = ModalityContext(workdir=scratch / m / f"seed{fold.seed}-fold{fold.fold}",
                                  seed=fold.seed, progress=False)
            try:
                f = inst.transform(table.loc[pids], ctx)
            except DataError as exc:
                for pid in pids:
                    inputs.errors.setdefault(m, {})[pid] = str(exc)
                log.warning("score: %s unusable for %s: %s", m, ", ".join(pids), exc)
                continue
            f.index = f.index.astype(str)
            parts.append(f)
        cols = fold.meta["feature_columns"][m]
        feat = pd.concat(parts) if parts else pd.DataFrame(columns=cols)
        out[m] = feat.reindex(columns=cols).astype("float32")
    return out


def _with_hidden(data: Any, m: str) -> Any:
    """The same tensors with modality ``m`` marked absent for every patient."""
    from dataclasses import replace

    import torch

    present = dict(data.present)
    present[m] = torch.zeros_like(present[m])
    return replace(data, present=present)


def _output(fold: Any, raw: np.ndarray) -> np.ndarray:
    """Calibrated probability (binary) or the log-risk itself (survival)."""
    from lungfuse.core.calibration import apply_calibration

    if fold.meta["task"] == "binary":
        return apply_calibration(fold.meta.get("calibration", {}), raw)
    return raw


def _integrated_gradients(model: Any, data: Any, steps: int) -> dict[str, np.ndarray]:
    """Attribution of the raw output to every input feature, per modality."""
    import torch
    from captum.attr import IntegratedGradients

    names = list(model.names)
    present = data.present

    def forward(*xs: torch.Tensor) -> torch.Tensor:
        n = xs[0].shape[0]
        reps = n // len(data)
        pres = {m: present[m].repeat(reps) for m in names}
        return model(dict(zip(names, xs, strict=True)), pres)

    model.eval()
    inputs = tuple(data.x[m].clone().requires_grad_(True) for m in names)
    baselines = tuple(torch.zeros_like(x) for x in inputs)
    with torch.enable_grad():
        attr = IntegratedGradients(forward).attribute(inputs, baselines=baselines,
                                                      n_steps=steps, internal_batch_size=None)
    return {m: a.detach().float().numpy() for m, a in zip(names, attr, strict=True)}


# ----------------------------------------------------------------------------- scoring
@dataclass
class ScoreResult:
    folder: Path
    patients: list[dict[str, Any]]


def score_patients(
    run_dir: str | os.PathLike[str],
    spec: Any,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    registry: Registry | None = None,
    plugins: Iterable[type] | None = None,
    progress: bool | None = None,
    report: bool = True,
    top_k: int = 10,
    ig_steps: int = 32,
) -> ScoreResult:
    """Score the patients of ``spec`` with every fold model of the run in ``run_dir``.

    Writes the scoring folder ``out_dir`` (default ``RUN/scores-<timestamp>``) and returns
    it with one summary dict per patient (as in ``scores.json``).
    """
    import numpy as np
    import pandas as pd
    from tqdm.auto import tqdm

    from lungfuse.core.pipeline import load_fold_model, pattern_of, progress_enabled
    from lungfuse.core.train import FoldData, predict

    started = time.time()
    run_dir = Path(run_dir).resolve()
    run = _check_run(run_dir)
    src = Path(spec).resolve() if isinstance(spec, str | os.PathLike) else None
    spec = load_score_input(spec)
    base_dir = src.parent if src is not None else Path.cwd()
    source = str(src) if src is not None else "<scoring input>"
    cfg = _run_cfg(run_dir, registry, plugins)
    folds = _fold_dirs(run_dir)
    if not folds:
        raise DataError(f"{run_dir}: no trained fold models under models/; is it a finished run?")
    out = Path(out_dir) if out_dir is not None else \
        run_dir / f"scores-{time.strftime('%Y%m%d-%H%M%S')}"
    out = out.resolve()
    if out.exists() and any(out.iterdir()) and not (out / "scores.json").exists():
        raise DataError(f"{out} exists and is not a scoring folder; choose another --out")
    show = progress_enabled(progress)
    ids = [p.id for p in spec.patients]

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=_parent(out)))
    os.chmod(staging, 0o777 & ~io._umask())  # mkdtemp makes 0700; the folder is shared
    handler = logging.FileHandler(staging / "score.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        scratch = staging / "work"
        rows: list[pd.DataFrame] = []
        attributions: list[pd.DataFrame] = []
        first: dict[str, Any] = {}
        inputs: _ModalityInputs | None = None
        table: pd.DataFrame | None = None
        for seed, fold in tqdm(folds, desc="fold models", disable=not show, unit="model"):
            tf = load_fold_model(run_dir, seed, fold, registry=registry, plugins=plugins)
            if inputs is None:
                inputs = _ModalityInputs(spec, tf.meta["modalities"], base_dir, source)
                table = _patient_table(spec, cfg)
            assert table is not None
            feats = _transform_fold(tf, table, spec, inputs, scratch)
            data = FoldData.build(ids, feats, np.zeros(len(ids)))
            names = tf.meta["modalities"]
            raw, w = predict(tf.model, data)
            df = pd.DataFrame({"patient_id": ids, "seed": seed, "fold": fold, "raw": raw,
                               "risk": _output(tf, raw)})
            df["pattern"] = [pattern_of(names, data.present, i) for i in range(len(ids))]
            for m in names:
                df[f"present_{m}"] = data.present[m].numpy()
                hidden, _ = predict(tf.model, _with_hidden(data, m))
                delta = df["risk"].to_numpy() - _output(tf, hidden)
                df[f"contribution_{m}"] = np.where(data.present[m].numpy(), delta, np.nan)
                if w is not None:
                    df[f"weight_{m}"] = w[:, names.index(m)]
            if tf.meta["task"] == "survival" and tf.meta.get("time_grid"):
                from lungfuse.core.pipeline import survival_at

                s = survival_at(tf.meta["breslow"], raw, np.asarray(tf.meta["time_grid"]))
                for j in range(s.shape[1]):
                    df[f"surv_{j}"] = s[:, j]
            rows.append(df)
            ig = _integrated_gradients(tf.model, data, ig_steps)
            for m in names:
                cols = tf.meta["feature_columns"][m]
                a = pd.DataFrame(ig[m], index=ids, columns=cols).stack().rename("attribution")
                v = pd.DataFrame(data.x[m].numpy(), index=ids, columns=cols).stack()
                part = a.reset_index().rename(columns={"level_0": "patient_id",
                                                       "level_1": "feature"})
                part["value"] = v.to_numpy()
                part["modality"] = m
                part["present"] = part["patient_id"].map(dict(zip(ids, data.present[m].numpy(),
                                                                  strict=True)))
                attributions.append(part[part["present"]].drop(columns="present"))
            if not first:
                first = {"fold": tf, "names": names, "plugins": tf.plugins,
                         "gene_modalities": [m for m, p in tf.plugins.items()
                                             if getattr(p, "feature_kind", "") == "gene"]}
        by_model = pd.concat(rows, ignore_index=True)
        attr = (pd.concat(attributions, ignore_index=True)
                .groupby(["patient_id", "modality", "feature"], sort=False)
                .agg(attribution=("attribution", "mean"), value=("value", "mean"))
                .reset_index())
        assert inputs is not None
        summaries = _summarise(by_model, attr, first, inputs, spec, cfg, top_k)
        io.write_parquet(staging / "scores_by_model.parquet", by_model, index=False)
        io.write_parquet(staging / "attributions.parquet", attr, index=False)
        io.write_parquet(staging / "scores.parquet", _flat(summaries, first["names"]),
                         index=False)
        if report:
            for s in summaries:
                s["page"] = f"patients/{_safe(s['patient_id'])}.html"
        info = {"run": str(run_dir), "task": cfg.task.kind, "models": len(folds),
                "modalities": first["names"], "started": started, "finished": time.time(),
                "run_started": run.get("started"),
                "what": (f"{len(ids)} patient(s) scored with {len(folds)} fold model(s); "
                         + ("risk = calibrated probability of malignancy" if
                            cfg.task.kind == "binary" else "risk = log relative hazard")),
                "patients": summaries}
        io.write_json(staging / "scores.json", info)
        if report:
            from lungfuse.core.reporting import render_scores

            for s in summaries:
                _patient_page(staging / s["page"], s, info, spec, first, table, staging)
            render_scores(staging)
        shutil.rmtree(scratch, ignore_errors=True)
        log.removeHandler(handler)
        handler.close()
        handler = None
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
        return ScoreResult(out, summaries)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        shutil.rmtree(staging, ignore_errors=True)


def _parent(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent


def _run_cfg(run_dir: Path, registry: Registry | None, plugins: Iterable[type] | None) -> Any:
    import yaml

    from lungfuse.core.config import validate_config
    from lungfuse.core.pipeline import PluginSet
    from lungfuse.core.registry import default_registry

    reg: Registry = registry or default_registry()
    if plugins:
        reg = PluginSet(plugins, reg)
    data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    return validate_config(data, source=str(run_dir / "config.yaml"), base_dir=run_dir,
                           registry=reg, check_paths=False)


def _safe(pid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in pid)


def _num(v: Any) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def _summarise(by_model: pd.DataFrame, attr: pd.DataFrame, first: Mapping[str, Any],
               inputs: _ModalityInputs, spec: Any, cfg: Any, top_k: int) -> list[dict[str, Any]]:
    names = first["names"]
    kinds = {m: getattr(p, "feature_kind", "feature") for m, p in first["plugins"].items()}
    out = []
    for pid in [p.id for p in spec.patients]:
        g = by_model[by_model["patient_id"] == pid]
        r = g["risk"].to_numpy(float)
        row0 = g.iloc[0]
        present = [m for m in names if bool(row0[f"present_{m}"])]
        missing = [m for m in names if m not in present]
        reasons = {m: inputs.errors.get(m, {}).get(pid, "no data for this patient")
                   for m in missing}
        a = attr[attr["patient_id"] == pid].copy()
        a["abs"] = a["attribution"].abs()
        a = a.sort_values("abs", ascending=False)

        def top(sub: Any) -> list[dict[str, Any]]:
            return [{"modality": x.modality, "feature": str(x.feature), "value": float(x.value),
                     "attribution": float(x.attribution)} for x in sub.head(top_k).itertuples()]

        s: dict[str, Any] = {
            "patient_id": pid,
            "risk": float(r.mean()),
            "uncertainty": float(r.std(ddof=1)) if len(r) > 1 else 0.0,
            "risk_range": [float(r.min()), float(r.max())],
            "models": len(r),
            "present": present,
            "missing": missing,
            "missing_reasons": reasons,
            "contributions": {m: _num(g[f"contribution_{m}"].mean()) for m in present},
            "weights": ({m: float(g[f"weight_{m}"].mean()) for m in names}
                        if f"weight_{names[0]}" in g else None),
            "top_genes": top(a[a["modality"].map(kinds) == "gene"]),
            "top_features": top(a),
        }
        surv = [c for c in g.columns if c.startswith("surv_")]
        if surv and cfg.task.kind == "survival":
            grid = first["fold"].meta.get("time_grid", [])
            s["survival"] = {"time": grid, "probability": [float(g[c].mean()) for c in surv]}
        out.append(s)
    return out


def _flat(summaries: list[dict[str, Any]], names: list[str]) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for s in summaries:
        row = {"patient_id": s["patient_id"], "risk": s["risk"], "uncertainty": s["uncertainty"],
               "models": s["models"], "present": ",".join(s["present"]),
               "missing": ",".join(s["missing"])}
        for m in names:
            row[f"contribution_{m}"] = s["contributions"].get(m, math.nan)
            if s["weights"] is not None:
                row[f"weight_{m}"] = s["weights"][m]
        row["top_genes"] = ",".join(g["feature"] for g in s["top_genes"][:5])
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- page
def _patient_page(path: Path, s: Mapping[str, Any], info: Mapping[str, Any], spec: Any,
                  first: Mapping[str, Any], table: Any, folder: Path) -> None:
    import html

    import pandas as pd

    from lungfuse.core.report import Section, bar_figure, write_report

    binary = info["task"] == "binary"
    what = ("calibrated probability of malignancy" if binary
            else "log relative hazard (higher = worse prognosis)")
    lo, hi = s["risk_range"]
    head = (f"<p class='risk'>{s['risk']:.3f}</p><p>{what}; ± {s['uncertainty']:.3f} "
            f"(standard deviation over the {s['models']} fold models; range {lo:.3f}–{hi:.3f}).</p>"
            f"<p>Modalities used: {html.escape(', '.join(s['present']) or 'none')}.</p>")
    if s["missing"]:
        items = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(r)}</li>"
                        for m, r in s["missing_reasons"].items())
        head += (f"<div class='note'><p>Missing for this patient, so left out of the "
                 f"prediction (not imputed):</p><ul>{items}</ul></div>")
    if not s["present"]:
        head += ("<div class='note'><p><b>No modality could be used for this patient</b>: "
                 "the risk above is the model's baseline for a patient of whom nothing is "
                 "known, not an assessment.</p></div>")
    sections = [Section("Risk", html=head)]
    if s.get("survival"):
        surv = pd.DataFrame(s["survival"]).rename(columns={"probability":
                                                           "survival probability"})
        sections.append(Section("Predicted survival", text=[
            "Mean over fold models of the Breslow survival curve at the run's time grid."],
            tables=[surv]))
    if s["contributions"]:
        mods = list(s["contributions"])
        vals = [s["contributions"][m] or 0.0 for m in mods]
        tab = pd.DataFrame({"modality": mods, "contribution": vals})
        if s["weights"]:
            tab["head weight"] = [s["weights"][m] for m in mods]
        unit = "probability" if binary else "log-risk"
        sections.append(Section("What drove the risk", text=[
            f"Leave-one-modality-out: the risk with all modalities minus the risk with this "
            f"one hidden (in {unit} units; red raises the risk)."
            + (" Head weight: the fusion head's attention to the modality." if s["weights"]
               else "")],
            tables=[tab], figures=[(bar_figure(mods, vals, "Modality contributions",
                                               f"change in {unit}"), "")]))
    gene_mods = set(first.get("gene_modalities", ()))
    others = [i for i in s["top_features"] if i["modality"] not in gene_mods]
    for items, title in ((s["top_genes"], "Top genomic features"), (others, "Other top features")):
        if not items:
            continue
        lab = [f"{i['feature']} ({i['modality']})" for i in items]
        sections.append(Section(title, text=[
            "Integrated Gradients (captum) of each fold model's output with respect to the "
            "input features, from a zero baseline (training mean / wild type), averaged over "
            "fold models; value = the patient's (transformed) feature."],
            tables=[pd.DataFrame(items)],
            figures=[(bar_figure(lab, [i["attribution"] for i in items], title,
                                 "attribution (logit)" if binary else "attribution (log-risk)"),
                      "")]))
    seg = _nodule_section(s, spec, first, table)
    if seg is not None:
        sections.append(seg)
    sections.append(Section("Model", text=[
        f"Run {info['run']} ({len(first['names'])} modalities: {', '.join(first['names'])}; "
        f"{info['models']} fold models). Research use: the risk is only as good as the "
        "cohort the run was trained on."]))
    write_report(path, f"lungfuse: patient {s['patient_id']}", sections,
                 subtitle=time.strftime("scored %Y-%m-%d %H:%M"))


def _nodule_section(s: Mapping[str, Any], spec: Any, first: Mapping[str, Any],
                    table: Any) -> Any:
    from lungfuse.core.report import Section
    from lungfuse.core.reporting import ct_example

    entry = next(p for p in spec.patients if p.id == s["patient_id"])
    for m, plugin in first["plugins"].items():
        mcfg = plugin.config.model_dump()
        if "ct_root" not in mcfg or m not in s["present"]:
            continue
        if entry.ct is not None:
            uid, path = entry.id, Path(entry.ct)
        else:
            col = mcfg.get("series_column")
            uid = str(table.loc[entry.id, col]) if col and col in table.columns else entry.id
            path = None
        nod = entry.nodule
        loc = (nod.x, nod.y, nod.z, nod.diameter_mm) if nod is not None else None
        try:
            res = ct_example(plugin.state_dict(), mcfg, uid, loc,
                             title=f"{s['patient_id']}", ct_path=path)
        except Exception as exc:  # noqa: BLE001 - a figure must not lose the score
            log.warning("score: no nodule figure for %s: %s", s["patient_id"], exc)
            continue
        if res is None:
            continue
        fig, info = res
        facts = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in info.items()
                          if k in ("long_axis_mm", "volume_mm3", "mean_hu"))
        return Section("Nodule", text=[
            f"Inf-Net segmentation (red) on slice {info.get('slice')} ({info.get('source')}); "
            f"green: a ground-truth mask where one exists. {facts}"],
            figures=[(fig, f"{s['patient_id']}: segmented nodule")])
    return None


# ----------------------------------------------------------------------------- CLI
def _nodule(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        x, y, z, d = (float(v) for v in parts)
    except ValueError:
        raise ConfigError(f"--nodule {text!r}: expected X,Y,Z,DIAMETER in world mm, "
                          "e.g. --nodule -61.2,72.5,-160.8,12") from None
    return {"x": x, "y": y, "z": z, "diameter_mm": d}


@click.command("score")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--input", "-i", "spec", type=click.Path(path_type=Path), default=None,
              help="Scoring input (YAML/JSON): patients (id, ct, nodule), clinical table, "
              "per-modality data settings.")
@click.option("--patient", default=None, help="Score one patient with this id (instead of --input).")
@click.option("--ct", type=click.Path(path_type=Path), default=None,
              help="With --patient: CT volume (.mhd, NIfTI, NRRD) or DICOM folder.")
@click.option("--nodule", default=None, help="With --patient: X,Y,Z,DIAMETER (world mm).")
@click.option("--clinical", type=click.Path(path_type=Path), default=None,
              help="With --patient: Parquet table of covariates/series ids.")
@click.option("--data", multiple=True, metavar="MODALITY=FILE",
              help="With --patient: the data file (`path`) of a modality, e.g. "
              "--data mutations=calls.parquet; repeatable.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Scoring folder (default RUN/scores-<timestamp>).")
@click.option("--no-report", is_flag=True, help="Parquet/JSON only, no HTML pages.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def score_command(run_dir: Path, spec: Path | None, patient: str | None, ct: Path | None,
                  nodule: str | None, clinical: Path | None, data: tuple[str, ...],
                  out: Path | None, no_report: bool, no_progress: bool) -> None:
    """Score new patients with the fold models of the finished run RUN_DIR.

    \b
    Per patient: a calibrated risk, its spread over the fold models, each modality's
    contribution (leave-one-modality-out, head weights), the top genes (Integrated
    Gradients) and the segmented nodule on its CT slice; a one-page HTML per patient.
    Patients lacking a modality are scored with what they have.

    \b
    Examples:
      lungfuse score runs/demo-20261125-101010 --input new_patients.yaml
      lungfuse score RUN --patient P-0042 --ct scans/P-0042.mhd --nodule -61.2,72.5,-160.8,12 \\
          --data mutations=calls.parquet
    """
    if (spec is None) == (patient is None):
        raise ConfigError("give either --input FILE or --patient ID (with --ct/--data ...)")
    if spec is None:
        mods: dict[str, dict[str, str]] = {}
        for item in data:
            name, sep, file = item.partition("=")
            if not sep or not name or not file:
                raise ConfigError(f"--data {item!r}: expected MODALITY=FILE")
            mods[name] = {"path": file}
        entry: dict[str, Any] = {"id": patient}
        if ct is not None:
            entry["ct"] = str(ct)
        if nodule is not None:
            entry["nodule"] = _nodule(nodule)
        raw: dict[str, Any] = {"patients": [entry], "modalities": mods}
        if clinical is not None:
            raw["clinical"] = str(clinical)
        spec_in: Any = raw
    else:
        spec_in = spec
    res = score_patients(run_dir, spec_in, out, progress=False if no_progress else None,
                         report=not no_report)
    for s in res.patients:
        miss = f" (missing: {', '.join(s['missing'])})" if s["missing"] else ""
        genes = ", ".join(g["feature"] for g in s["top_genes"][:3])
        click.echo(f"{s['patient_id']}: risk {s['risk']:.3f} ± {s['uncertainty']:.3f}{miss}"
                   + (f"; top genomic features {genes}" if genes else ""))
    click.echo(f"scoring folder: {res.folder}"
               + ("" if no_report else f" (report: {res.folder / 'report.html'})"))
