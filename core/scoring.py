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
* **modality sections** that plugins add through the optional ``patient_section``
  hook (the CT modality's segmented nodule on its slice).

A modality absent for a patient (no data in its configured sources) is left out of that
patient's prediction, not imputed, and the page says what was missing and why. Data
*given* for the patient (a config of their own from the modality's ``scoring_config``,
e.g. the CT of the scoring input) that cannot be used is not an absence: the patient is
not scored (``status: "error"`` with the reason, a page saying what failed) and the
others still are. Every fold model the run trained must be there: a missing or damaged
one is an error naming the file, never a risk from the others.

Scoring folder (written to a temporary folder and renamed when complete)::

    scores.parquet  scores.json  scores_by_model.parquet  attributions.parquet
    report.html  patients/<page>.html  score.log

``<page>`` is the patient id where that is a plain, short file name, otherwise a
sanitised prefix and a hash of the id (:func:`lungfuse.core.report.patient.page_names`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lungfuse.core import atomic
from lungfuse.core.errors import ConfigError, DataError, LungfuseError
from lungfuse.core.registry import Registry
from lungfuse.core.report.patient import page_names, write_patient_page

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
#: The file of a fold folder that holds the trained fusion model (torch's zip format).
_WEIGHTS = "model.pt"


def _fold_dirs(run_dir: Path, folds: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (seed, fold) of every fold model the run trained, each checked to be there.

    ``folds`` are what the run recorded (:func:`lungfuse.core.study.recorded_folds`:
    ``run.json``'s ``folds``, else the split assignment in ``splits.parquet``), not the
    folders that happen to exist: a fold model deleted from the run folder would otherwise
    silently leave the risk to the others. A missing fold folder, weights file or
    ``meta.json``, a weights file that is not a complete archive (truncated, emptied,
    overwritten) or a ``meta.json`` that is not JSON, is one line naming the file. Other
    files of the fold (the fitted modality states) are checked as ``load_fold_model``
    reads them (``_load_fold``).
    """
    import json
    import zipfile

    if not folds:
        raise DataError(f"{run_dir}: the run lists no fold models; is it a finished run?")
    n = len(folds)
    for seed, fold in folds:
        fdir = run_dir / "models" / f"seed{seed}-fold{fold}"
        weights = fdir / _WEIGHTS
        if not weights.is_file():
            what = weights if fdir.is_dir() else fdir
            raise DataError(f"{what}: missing; the run folder is incomplete (the run trained "
                            f"{n} fold model(s) and every one is needed); restore it or score "
                            "with a complete run")
        if weights.stat().st_size == 0 or not zipfile.is_zipfile(weights):
            raise DataError(f"{weights}: damaged (not a complete saved model, "
                            f"{weights.stat().st_size} bytes); the run folder is damaged; "
                            "restore it or score with a complete run")
        meta = fdir / "meta.json"
        try:
            ok = isinstance(json.loads(meta.read_text(encoding="utf-8")), dict)
        except FileNotFoundError:
            raise DataError(f"{meta}: missing; the run folder is incomplete; restore it or "
                            "score with a complete run") from None
        except (OSError, UnicodeDecodeError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"{meta}: damaged (not the fold's JSON record); the run folder is "
                            "damaged; restore it or score with a complete run")
    return folds


#: Exceptions of reading a damaged file (truncated, emptied, overwritten, not there)
#: that loading a fold model may raise; anything else is a bug and is not hidden.
_FILE_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError)
#: RuntimeError messages that are torch saying a file is damaged or does not fit.
_TORCH_FILE_ERRORS = ("PytorchStreamReader", "Error(s) in loading state_dict")


def _load_fold(run_dir: Path, seed: int, fold: int, registry: Registry | None,
               plugins: Iterable[type] | None, *, study: Any = None) -> Any:
    """``load_fold_model`` (with the run folder's ``study`` where given), with a damaged
    file of the fold folder as one line naming it."""
    import pickle
    import zipfile

    from lungfuse.core.folds import load_fold_model

    fdir = run_dir / "models" / f"seed{seed}-fold{fold}"
    try:
        return load_fold_model(run_dir, seed, fold, registry=registry, plugins=plugins,
                               study=study)
    except LungfuseError:
        raise
    except (*_FILE_ERRORS, pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not str(exc).startswith(_TORCH_FILE_ERRORS):
            raise
        where = getattr(exc, "filename", None) or fdir
        why = (getattr(exc, "strerror", None) or str(exc) or "").splitlines()
        detail = f"{type(exc).__name__}: {why[0][:200]}" if why else type(exc).__name__
        raise DataError(f"{where}: cannot load fold model seed{seed}-fold{fold} ({detail}); "
                        "the run folder is damaged; restore it or re-run `lungfuse run`"
                        ) from exc


def _check_run(run_dir: Path) -> dict[str, Any]:
    """run.json of a finished run (and its config.yaml there), or one line saying why not."""
    import json

    info = run_dir / "run.json"
    if not info.exists():
        raise DataError(f"{run_dir}: not a run folder (no run.json); give the folder "
                        "`lungfuse run` printed")
    try:
        run = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{info}: cannot read it ({type(exc).__name__}); the run folder is "
                        "damaged; re-run `lungfuse run`") from None
    if not isinstance(run, dict):
        raise DataError(f"{info}: not a run record (a JSON object); the run folder is damaged")
    if run.get("status") != "complete":
        raise DataError(f"{run_dir}: the run is not complete (status {run.get('status')!r}); "
                        "score with a finished run")
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir / 'config.yaml'}: missing; the run folder is incomplete; "
                        "restore it or score with a complete run")
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
        # patient -> modality -> reason: data given for the patient (a config of their own
        # from the modality's scoring_config) that could not be used; the patient is an error
        self.failed: dict[str, dict[str, str]] = {}
        self.given: set[str] = set()  # patients some modality took data of their own for
        # patient -> modality -> what the modality read of the data given for the patient
        # (its optional scoring_input hook: e.g. the CT series chosen from a study folder)
        self.described: dict[str, dict[str, dict[str, Any]]] = {}

    def fail(self, pid: str, modality: str, reason: str) -> None:
        """Record that the data given for ``pid`` could not be used (first reason kept)."""
        if modality not in self.failed.setdefault(pid, {}):
            self.failed[pid][modality] = reason
            log.error("score: patient %s not scored: %s: %s", pid, modality, reason)

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
            if pid in inputs.failed:
                continue  # not scored: no point reading the rest of their data again
            try:
                own = hook.scoring_config(entries[pid], scratch / m)
            except DataError as exc:
                inputs.fail(pid, m, str(exc))
                continue
            key = None if own is None else str(pid)
            if own is not None:
                inputs.given.add(str(pid))
            groups.setdefault(key, (own or base_cfg, []))[1].append(pid)
        parts = []
        for key, (cfg_g, pids) in groups.items():
            inst = cls(cfg_g)
            inst.load_state_dict(state)
            ctx = ModalityContext(workdir=scratch / m / f"seed{fold.seed}-fold{fold.fold}",
                                  seed=fold.seed, progress=False)
            with _Warnings() as seen:
                try:
                    f = inst.transform(table.loc[pids], ctx)
                except DataError as exc:
                    if key is not None:  # the patient's own data: an error for the patient
                        inputs.fail(key, m, str(exc))
                        continue
                    for pid in pids:
                        inputs.errors.setdefault(m, {})[pid] = str(exc)
                    log.warning("score: %s unusable for %s: %s", m, ", ".join(pids), exc)
                    continue
            f.index = f.index.astype(str)
            if key is not None and key not in f.index:
                # a plugin may skip a patient whose data it cannot read (with a warning):
                # for data given for this patient that is a failure, not an absence
                inputs.fail(key, m, _no_row_reason(key, seen.messages))
                continue
            parts.append(f)
            if key is not None and m not in inputs.described.get(key, {}):
                _describe_input(inst, m, entries[key], scratch / m, inputs)
        cols = fold.meta["feature_columns"][m]
        out[m] = fold.align(m, pd.concat(parts) if parts else pd.DataFrame(columns=cols))
    return out


def _describe_input(inst: Any, m: str, entry: Mapping[str, Any], workdir: Path,
                    inputs: _ModalityInputs) -> None:
    """Record what modality ``m`` read of the data given for one patient (its optional
    ``scoring_input`` hook); a hook that fails or answers nonsense is a warning, never
    the patient's score."""
    from lungfuse.core.contracts import overrides

    pid = str(entry["id"])
    if not overrides(inst, "scoring_input"):
        return
    try:
        got = inst.scoring_input(entry, workdir)
    except Exception as exc:  # noqa: BLE001 - a description must not cost the score
        log.warning("score: patient %s: %s: scoring_input failed (%s: %s)", pid, m,
                    type(exc).__name__, " ".join(str(exc).split())[:300])
        return
    if got is None:
        return
    if not isinstance(got, Mapping) or not isinstance(got.get("text"), str):
        log.warning("score: patient %s: %s: scoring_input returned %s, not a dict with "
                    "'text'; left out", pid, m, type(got).__name__)
        return
    inputs.described.setdefault(pid, {})[m] = {**got, "text": " ".join(got["text"].split())}


class _Warnings(logging.Handler):
    """Warnings logged under ``lungfuse`` while a block runs (a plugin's reasons)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:  # noqa: BLE001 - a malformed log call must not stop scoring
            self.handleError(record)

    def __enter__(self) -> _Warnings:
        log.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        log.removeHandler(self)


def _no_row_reason(pid: str, warnings: list[str]) -> str:
    """Why data given for ``pid`` gave no features: the plugin's warning naming the patient
    (else its last warning), or a generic line when it said nothing."""
    mine = [w for w in warnings if pid in w] or warnings
    if mine:
        return " ".join(mine[-1].split())[:500]
    return ("the data given for this patient gave no features (the modality could not use "
            "it; see score.log)")


def _with_hidden(data: Any, m: str) -> Any:
    """The same tensors with modality ``m`` marked absent for every patient."""
    from dataclasses import replace

    import torch

    present = dict(data.present)
    present[m] = torch.zeros_like(present[m])
    return replace(data, present=present)


def _by_model(fold: Any, data: Any) -> pd.DataFrame:
    """One fold model's rows of ``scores_by_model.parquet``, from its prediction table
    (:meth:`lungfuse.core.folds.TrainedFold.predict_table`, the path run and ablate use):
    ``raw`` (logit / log-risk), ``risk`` (calibrated probability / log-risk), the pattern,
    and per modality its presence, its leave-one-out contribution (``risk`` minus the risk
    with the modality hidden, NaN where it is absent) and the head's weight; then the
    survival probabilities at the run's time grid and the risks by the run's horizons
    (``risk_<h>``, NaN past the fold's follow-up)."""
    import numpy as np

    pred = fold.predict_table(data)
    risk = pred[fold.risk_column].to_numpy()
    df = pred[["patient_id", "seed", "fold"]].copy()
    df["raw"] = pred["logit" if fold.meta["task"] == "binary" else "risk"].to_numpy()
    df["risk"] = risk
    df["pattern"] = pred["pattern"].to_numpy()
    for m in fold.names:
        present = data.present[m].numpy()
        df[f"present_{m}"] = present
        hidden = fold.predict_table(_with_hidden(data, m))[fold.risk_column].to_numpy()
        df[f"contribution_{m}"] = np.where(present, risk - hidden, np.nan)
        if f"weight_{m}" in pred.columns:
            df[f"weight_{m}"] = pred[f"weight_{m}"].to_numpy()
    for c in [c for c in pred.columns if c.startswith(("surv_", "risk_"))]:
        df[c] = pred[c].to_numpy()  # S(t | x) at the time grid; risk by each horizon
    return df


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
    """The scoring folder and one summary per patient (as in ``scores.json``)."""

    folder: Path
    patients: list[dict[str, Any]]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Summaries of the patients that could not be scored (``status == "error"``)."""
        return [s for s in self.patients if s.get("status") == "error"]


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
    import pandas as pd
    from tqdm.auto import tqdm

    from lungfuse.core.rundir import progress_enabled
    from lungfuse.core.study import Study

    started = time.time()
    run_dir = Path(run_dir).resolve()
    run = _check_run(run_dir)
    src = Path(spec).resolve() if isinstance(spec, str | os.PathLike) else None
    spec = load_score_input(spec)
    base_dir = src.parent if src is not None else Path.cwd()
    source = str(src) if src is not None else "<scoring input>"
    study = Study.from_run_folder(run_dir, registry, plugins, run=run)
    cfg = study.cfg
    folds = _fold_dirs(run_dir, study.folds)
    out = Path(out_dir) if out_dir is not None else \
        run_dir / f"scores-{time.strftime('%Y%m%d-%H%M%S')}"
    out = out.resolve()
    if out.exists() and any(out.iterdir()) and not (out / "scores.json").exists():
        raise DataError(f"{out} exists and is not a scoring folder; choose another --out")
    show = progress_enabled(progress)
    ids = [p.id for p in spec.patients]

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=_parent(out)))
    os.chmod(staging, 0o777 & ~atomic._umask())  # mkdtemp makes 0700; the folder is shared
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
            tf = _load_fold(run_dir, seed, fold, registry, plugins, study=study)
            if inputs is None:
                inputs = _ModalityInputs(spec, tf.meta["modalities"], base_dir, source)
                table = _patient_table(spec, cfg)
            assert table is not None
            feats = _transform_fold(tf, table, spec, inputs, scratch)
            data = tf.fold_data(feats, ids)
            names = tf.names
            rows.append(_by_model(tf, data))
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
        assert inputs is not None
        # a patient whose given data failed is not scored: no risk of theirs is written
        failed = set(inputs.failed)
        by_model = pd.concat(rows, ignore_index=True)
        by_model = by_model[~by_model["patient_id"].isin(failed)].reset_index(drop=True)
        attr = (pd.concat(attributions, ignore_index=True)
                .groupby(["patient_id", "modality", "feature"], sort=False)
                .agg(attribution=("attribution", "mean"), value=("value", "mean"))
                .reset_index())
        attr = attr[~attr["patient_id"].isin(failed)].reset_index(drop=True)
        summaries = _summarise(by_model, attr, first, inputs, spec, cfg, top_k)
        for s in summaries:
            for note in s["notes"]:
                log.warning("score: patient %s: %s", s["patient_id"], note)
        atomic.write_parquet(staging / "scores_by_model.parquet", by_model, index=False)
        atomic.write_parquet(staging / "attributions.parquet", attr, index=False)
        atomic.write_parquet(staging / "scores.parquet", _flat(summaries, first["names"]),
                         index=False)
        if report:
            pages = page_names(ids)
            for s in summaries:
                s["page"] = f"patients/{pages[s['patient_id']]}"
        done = (f"{len(ids)} patient(s)" if not failed else
                f"{len(ids) - len(failed)} of {len(ids)} patient(s) ({len(failed)} could not "
                "be scored: status 'error')")
        info = {"run": str(run_dir), "task": cfg.task.kind, "models": len(folds),
                "modalities": first["names"], "started": started, "finished": time.time(),
                "run_started": run.get("started"),
                "failed": [i for i in ids if i in failed],
                "what": (f"{done} scored with {len(folds)} fold model(s); "
                         + ("risk = calibrated probability of malignancy" if
                            cfg.task.kind == "binary" else "risk = log relative hazard")),
                "patients": summaries}
        atomic.write_json(staging / "scores.json", info)
        if report:
            from lungfuse.core.report.scores import render_scores

            for s in summaries:
                write_patient_page(staging / s["page"], s, info, spec, first, table, staging)
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


def _num(v: Any) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def _failed_summary(pid: str, failed: Mapping[str, str]) -> dict[str, Any]:
    """The summary of a patient not scored because data given for them failed."""
    error = "; ".join(f"{m}: {r}" for m, r in failed.items())
    return {"patient_id": pid, "status": "error", "error": error, "failed": dict(failed),
            "risk": None, "uncertainty": None, "risk_range": None, "models": 0,
            "present": [], "missing": [], "missing_reasons": {}, "contributions": {},
            "weights": None, "top_genes": [], "top_features": [], "notes": []}


def _summarise(by_model: pd.DataFrame, attr: pd.DataFrame, first: Mapping[str, Any],
               inputs: _ModalityInputs, spec: Any, cfg: Any, top_k: int) -> list[dict[str, Any]]:
    """One summary per patient, in input order: ``status`` "ok" with the risk, its spread,
    modality contributions and top features, or "error" with what failed (no risk)."""
    names = first["names"]
    kinds = {m: getattr(p, "feature_kind", "feature") for m, p in first["plugins"].items()}
    out = []
    for pid in [p.id for p in spec.patients]:
        if pid in inputs.failed:
            out.append(_failed_summary(pid, inputs.failed[pid]))
            continue
        entry = next(p for p in spec.patients if p.id == pid)
        notes = ([f"the CT given ({entry.ct}) was not used: none of the run's modalities "
                  f"({', '.join(names)}) reads a CT scan"]
                 if entry.ct is not None and pid not in inputs.given else [])
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
            "status": "ok",
            "error": None,
            "failed": {},
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
            "notes": notes,
            "inputs": dict(inputs.described.get(pid, {})),
        }
        surv = [c for c in g.columns if c.startswith("surv_")]
        if surv and cfg.task.kind == "survival":
            grid = first["fold"].meta.get("time_grid", [])
            s["survival"] = {"time": grid, "probability": [float(g[c].mean()) for c in surv]}
        by_year = _risk_by_year(g, first["fold"].meta, cfg)
        if by_year:
            s["risk_by_year"] = by_year
        out.append(s)
    return out


def _risk_by_year(g: pd.DataFrame, meta: Mapping[str, Any], cfg: Any) -> list[dict[str, Any]]:
    """A patient's risk by each horizon the run recorded (``risk_<h>`` of every fold
    model, ``g`` their rows): the mean over fold models, its sd and min-max. A horizon
    past the follow-up of any fold model's training patients is not estimable (no
    number: a mean of the others would hide it). Empty for a run without horizons (one
    of an older lungfuse)."""
    import numpy as np

    from lungfuse.core.survival import horizons_from_records

    unit = getattr(cfg.evaluation, "time_unit", None)
    out = []
    for h in horizons_from_records(meta.get("horizons")):
        if h.column not in g.columns:
            continue
        r = g[h.column].to_numpy(float)
        bad = int((~np.isfinite(r)).sum())
        row: dict[str, Any] = {**h.record(), "unit": "years" if unit else None,
                               "models": len(r), "estimable": bad == 0, "reason": "",
                               "mean": None, "sd": None, "min": None, "max": None}
        if bad:
            row["reason"] = (f"past the follow-up of {bad} of {len(r)} fold model(s)' "
                             "training patients; not extrapolated")
        else:
            row.update(mean=float(r.mean()), sd=float(r.std(ddof=1)) if len(r) > 1 else 0.0,
                       min=float(r.min()), max=float(r.max()))
        out.append(row)
    return out


def _flat(summaries: list[dict[str, Any]], names: list[str]) -> pd.DataFrame:
    """``scores.parquet``: one row per patient, failed ones with status "error" and NaN risk."""
    import pandas as pd

    rows = []
    weights = any(s["weights"] is not None for s in summaries)
    for s in summaries:
        row = {"patient_id": s["patient_id"], "status": s["status"], "error": s["error"],
               "risk": math.nan if s["risk"] is None else s["risk"],
               "uncertainty": math.nan if s["uncertainty"] is None else s["uncertainty"],
               "models": s["models"], "present": ",".join(s["present"]),
               "missing": ",".join(s["missing"])}
        for m in names:
            row[f"contribution_{m}"] = s["contributions"].get(m, math.nan)
            if weights:
                row[f"weight_{m}"] = (math.nan if s["weights"] is None else s["weights"][m])
        row["top_genes"] = ",".join(g["feature"] for g in s["top_genes"][:5])
        for h in s.get("risk_by_year") or []:  # mean over fold models and its min-max
            for key, col in (("mean", ""), ("min", "_min"), ("max", "_max")):
                row[f"risk_{h['label']}{col}"] = math.nan if h[key] is None else h[key]
        rows.append(row)
    return pd.DataFrame(rows)


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
@click.option("--series", default=None, metavar="UID",
              help="With --ct DIR of a DICOM study: the SeriesInstanceUID to read (default: "
              "the thinnest axial CT series, docs/ct.md).")
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
                  nodule: str | None, series: str | None, clinical: Path | None,
                  data: tuple[str, ...], out: Path | None, no_report: bool,
                  no_progress: bool) -> None:
    """Score new patients with the fold models of the finished run RUN_DIR.

    \b
    Per patient: a calibrated risk, its spread over the fold models, each modality's
    contribution (leave-one-modality-out, head weights), the top genes (Integrated
    Gradients) and the segmented nodule on its CT slice; a one-page HTML per patient.
    Patients lacking a modality are scored with what they have.

    \b
    A patient whose given data cannot be used (a CT that cannot be read, a nodule
    outside the volume) is not scored: one line on stderr names the patient and the
    reason, their row in scores.parquet/json has status "error" and their page says
    what failed; the other patients are still scored and written.

    \b
    Exit status: 0 every patient scored; 1 one or more patients not scored (the
    scoring folder holds the others); 2 bad input or run folder (nothing written).

    \b
    Examples:
      lungfuse score runs/demo-20261125-101010 --input new_patients.yaml
      lungfuse score RUN --patient P-0042 --ct scans/P-0042.mhd --nodule -61.2,72.5,-160.8,12 \\
          --data mutations=calls.parquet
    """
    if (spec is None) == (patient is None):
        raise ConfigError("give either --input FILE or --patient ID (with --ct/--data ...)")
    if series is not None and (spec is not None or ct is None):
        raise ConfigError("--series names a series of the study folder given with --ct; use "
                          "it with --patient ID --ct DIR (in an --input file: `series:` of "
                          "the patient)")
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
        if series is not None:
            entry["series"] = series
        raw: dict[str, Any] = {"patients": [entry], "modalities": mods}
        if clinical is not None:
            raw["clinical"] = str(clinical)
        spec_in: Any = raw
    else:
        spec_in = spec
    res = score_patients(run_dir, spec_in, out, progress=False if no_progress else None,
                         report=not no_report)
    for s in res.patients:
        if s["status"] == "error":
            click.echo(f"{s['patient_id']}: not scored: {s['error']}", err=True)
            continue
        for note in s["notes"]:
            click.echo(f"warning: {s['patient_id']}: {note}", err=True)
        miss = f" (missing: {', '.join(s['missing'])})" if s["missing"] else ""
        genes = ", ".join(g["feature"] for g in s["top_genes"][:3])
        click.echo(f"{s['patient_id']}: risk {s['risk']:.3f} ± {s['uncertainty']:.3f}{miss}"
                   + (f"; top genomic features {genes}" if genes else ""))
        if s.get("risk_by_year"):
            click.echo(f"{s['patient_id']}: risk by " + ", ".join(
                f"{h['label']} {h['mean']:.3f}" if h["estimable"] else
                f"{h['label']} not estimable" for h in s["risk_by_year"]))
        for line in (s.get("inputs") or {}).values():
            click.echo(f"{s['patient_id']}: {line.get('text', '')}")
    click.echo(f"scoring folder: {res.folder}"
               + ("" if no_report else f" (report: {res.folder / 'report.html'})"))
    if res.failed:
        click.echo(f"error: {len(res.failed)} of {len(res.patients)} patient(s) not scored "
                   "(status 'error' in scores.parquet); fix their data and score them again",
                   err=True)
        sys.exit(1)
