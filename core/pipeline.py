"""``lungfuse run CONFIG``: the training and evaluation pipeline.

The flow, each step a function that :mod:`lungfuse.core.ablation` and scoring can call
on its own:

1. :func:`load_experiment` validates the config against the installed plugins (or a
   :class:`PluginSet` with extra plugin classes, e.g. from tests).
2. :func:`load_cohort` reads the clinical table; :func:`check_coverage` asks every
   modality which patients it has (a modality covering nobody is an error).
3. :func:`build_splits` makes the seeded, stratified, patient-level split table.
4. :func:`prepare_fold_features` fits one modality on a fold's training patients only and
   transforms every patient, optionally through a cache keyed by the modality config,
   seed, fold and training patients (:func:`feature_cache_key`).
5. :func:`train_fold` trains encoders + head with Lightning (early stopping on the
   validation split, checkpoints, CSV logs), predicts the held-out patients, fits the
   post-hoc calibration (binary) on the validation split or the Breslow baseline
   (survival) on the training split, and saves what scoring needs.
6. :func:`evaluate_predictions` computes metrics with bootstrap CIs, overall, per fold and
   per availability pattern.

Run folder (``output_dir/<name>-<YYYYmmdd-HHMMSS>``, never reused; every file written
atomically; ``run.json`` says ``"status": "complete"`` only once everything is there)::

    config.yaml  run.json  splits.parquet  predictions.parquet  metrics.json  run.log
    features/<modality>/seed<S>-fold<K>.parquet
    models/seed<S>-fold<K>/{model.pt, meta.json, modality_state.{json,safetensors},
                            predictions.parquet, checkpoints/best.ckpt, logs/metrics.csv}

Distributed training: Lightning re-runs this command in every process (DDP). All ranks
compute the same splits and features; only global rank 0 writes. The run folder is
shared through the ``LUNGFUSE_RUN_DIR`` environment variable (set for the processes
Lightning launches; set it yourself, or pass ``--run-dir``, under torchrun/SLURM).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lungfuse.core import io
from lungfuse.core.cohort import Cohort, load_cohort
from lungfuse.core.contracts import FusionPlugin, ModalityContext, ModalityPlugin
from lungfuse.core.errors import ConfigError, DataError
from lungfuse.core.registry import FUSION_GROUP, MODALITY_GROUP, Registry, default_registry

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

__all__ = [
    "PluginSet",
    "PreparedModality",
    "RunResult",
    "build_splits",
    "check_coverage",
    "evaluate_predictions",
    "feature_cache_key",
    "load_experiment",
    "load_fold_model",
    "new_run_dir",
    "prepare_fold_features",
    "run_command",
    "run_experiment",
    "train_fold",
]

log = logging.getLogger("lungfuse")
RUN_DIR_ENV = "LUNGFUSE_RUN_DIR"


# ----------------------------------------------------------------------------- plugins
class PluginSet(Registry):
    """The installed plugins plus extra plugin classes (tests, notebooks), which win."""

    def __init__(self, extra: Iterable[type], base: Registry | None = None) -> None:
        super().__init__()
        self.base = base or default_registry()
        self.extra: dict[str, dict[str, type]] = {MODALITY_GROUP: {}, FUSION_GROUP: {}}
        for p in extra:
            group = MODALITY_GROUP if issubclass(p, ModalityPlugin) else FUSION_GROUP
            self.extra[group][p.name] = p

    def entries(self, group: str) -> list[Any]:
        return self.base.entries(group)

    def plugins(self, group: str, *, warn: bool = True) -> dict[str, Any]:
        return {**self.base.plugins(group, warn=warn), **self.extra.get(group, {})}

    def get(self, group: str, name: str) -> Any:
        if name in self.extra.get(group, {}):
            return self.extra[group][name]
        return self.base.get(group, name)


def load_experiment(config: Any, registry: Registry | None = None,
                    plugins: Iterable[type] | None = None,
                    overrides: dict[str, Any] | None = None) -> tuple[Any, Registry]:
    """Validate ``config`` (a path, a dict, or an already validated config)."""
    from lungfuse.core.config import load_config, validate_config

    reg: Registry = registry or default_registry()
    if plugins:
        reg = PluginSet(plugins, reg)
    if isinstance(config, str | os.PathLike):
        return load_config(config, reg, overrides=overrides), reg
    if isinstance(config, dict):
        return validate_config({**config, **(overrides or {})}, registry=reg), reg
    return config, reg


def modality_classes(cfg: Any, registry: Registry) -> dict[str, tuple[type[ModalityPlugin], Any]]:
    """``{modality name: (plugin class, its config)}`` in config order."""
    return {m.modality_name: (registry.get(MODALITY_GROUP, m.kind), m) for m in cfg.modalities}


def fusion_plugin(cfg: Any, registry: Registry) -> FusionPlugin:
    return registry.get(FUSION_GROUP, cfg.fusion.kind)(cfg.fusion)


# ----------------------------------------------------------------------------- helpers
def global_rank() -> int:
    """This process's rank from the launcher's environment (0 when not distributed)."""
    for k in ("RANK", "SLURM_PROCID"):
        if os.environ.get(k, "").isdigit():
            return int(os.environ[k])
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) or 0)
    return local + node  # only "zero or not" matters here


def progress_enabled(progress: bool | None) -> bool:
    if os.environ.get("LUNGFUSE_NO_PROGRESS") == "1":
        return False
    return True if progress is None else bool(progress)


def new_run_dir(output_dir: Path, name: str, run_dir: Path | None = None) -> Path:
    """A new, empty run folder ``output_dir/<name>-<timestamp>[-N]``.

    ``run_dir`` (or the ``LUNGFUSE_RUN_DIR`` environment variable, which distributed
    processes share) names it explicitly; under SLURM/torchrun with several processes the
    job id is used so every process agrees.
    """
    explicit = run_dir or (Path(os.environ[RUN_DIR_ENV]) if os.environ.get(RUN_DIR_ENV) else None)
    if explicit is not None:
        explicit = Path(explicit)
        if global_rank() == 0 and explicit.exists() and (explicit / "run.json").exists() \
                and os.environ.get(RUN_DIR_ENV) != str(explicit):
            raise ConfigError(f"run folder {explicit} already holds a run; runs are never "
                              "overwritten, choose another --run-dir")
        explicit.mkdir(parents=True, exist_ok=True)
        return explicit
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    if world > 1 and job and job != "none":
        p = Path(output_dir) / f"{name}-job{job}"
        p.mkdir(parents=True, exist_ok=True)
        return p
    stamp = time.strftime("%Y%m%d-%H%M%S")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        p = Path(output_dir) / (f"{name}-{stamp}" if i == 1 else f"{name}-{stamp}-{i}")
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue
    raise ConfigError(f"cannot create a new run folder in {output_dir}")  # pragma: no cover


def pattern_of(names: list[str], present: Mapping[str, Any], i: int) -> str:
    have = [m for m in names if bool(present[m][i])]
    return "+".join(have) if have else "none"


@contextlib.contextmanager
def _quiet_lightning(verbose: bool = False) -> Iterator[None]:
    lg = logging.getLogger("lightning.pytorch")
    old = lg.level
    if not verbose:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            yield
        finally:
            lg.setLevel(old)


@contextlib.contextmanager
def _torch_threads(trainer_cfg: Any) -> Iterator[None]:
    """Limit torch's intra-op threads on CPU (``trainer.cpu_threads``), then restore."""
    import torch

    n = getattr(trainer_cfg, "cpu_threads", None)
    on_cpu = str(trainer_cfg.accelerator).lower() == "cpu"
    old = torch.get_num_threads()
    if n and on_cpu:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n and on_cpu:
            torch.set_num_threads(old)


# ----------------------------------------------------------------------------- cohort
def check_coverage(mods: Mapping[str, tuple[type[ModalityPlugin], Any]], cohort: Cohort,
                   workdir: Path) -> dict[str, set[str]]:
    """Which patients each modality has; a modality covering no patient is a DataError."""
    out = {}
    features_only = cohort.without_outcomes()
    for name, (cls, mcfg) in mods.items():
        ctx = ModalityContext(workdir=workdir / name, progress=False)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        have = set(cls(mcfg).available(features_only, ctx)) & set(cohort.ids)
        if not have:
            raise DataError(f"modality '{name}' ({mcfg.kind}) covers none of the "
                            f"{len(cohort.ids)} patients of {cohort.source}; check its input "
                            "files and that their sample ids match the patient ids")
        out[name] = have
    return out


def build_splits(cfg: Any, cohort: Cohort) -> pd.DataFrame:
    """The split table of this experiment (see :func:`lungfuse.core.splits.make_splits`)."""
    from lungfuse.core.splits import make_splits

    ev = cfg.evaluation
    return make_splits(cohort.ids, cohort.strata, folds=ev.folds, test_fraction=ev.test_fraction,
                       val_fraction=cfg.training.val_fraction, seeds=ev.seeds,
                       source=cohort.source)


# ----------------------------------------------------------------------------- features
@dataclass
class PreparedModality:
    """A modality fitted on one fold's training patients: features of every patient it
    covers (DataFrame indexed by patient id) and the plugin's fitted state."""

    name: str
    features: pd.DataFrame
    state: dict[str, Any]
    key: str = ""
    from_cache: bool = False


def feature_cache_key(modality_config: Any, seed: int, fold: int, train_ids: Iterable[str],
                      cohort_ids: Iterable[str] = ()) -> str:
    """A hash of what determines a fold's features: the modality config (kind, settings,
    input paths), the split seed and fold, and the training/cohort patients."""
    cfg = modality_config.model_dump(mode="json") if hasattr(modality_config, "model_dump") \
        else modality_config
    blob = json.dumps({"config": cfg, "seed": seed, "fold": fold,
                       "train": sorted(map(str, train_ids)),
                       "cohort": sorted(map(str, cohort_ids))}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def prepare_fold_features(
    name: str,
    cls: type[ModalityPlugin],
    mcfg: Any,
    cohort: Cohort,
    train_ids: list[str],
    *,
    seed: int = 0,
    fold: int = 0,
    workdir: Path,
    cache_dir: Path | None = None,
    progress: bool = False,
    write: bool = True,
) -> PreparedModality:
    """Fit modality ``name`` on ``train_ids`` (their rows, outcomes included) and transform
    every cohort patient (rows without outcomes). With ``cache_dir``, a previous result for
    the same :func:`feature_cache_key` is reused instead."""
    import pandas as pd

    from lungfuse.core import state_io
    from lungfuse.core.errors import LungfuseError

    key = feature_cache_key(mcfg, seed, fold, train_ids, cohort.ids)
    cached = Path(cache_dir) / name / key if cache_dir else None
    # an entry of an older lungfuse (state.pkl) is never unpickled: a miss, overwritten below
    if cached is not None and (cached / "state.json").exists() and (cached / "features.parquet").exists():
        try:
            state = state_io.load_state(cached / "state.json")[name]
            feats = pd.read_parquet(cached / "features.parquet")
        except (LungfuseError, KeyError, OSError, ValueError) as exc:
            log.warning("feature cache entry %s unusable (%s); recomputing it", cached,
                        state_io.first_line(exc))
        else:
            return PreparedModality(name, feats, state, key, from_cache=True)
    ctx = ModalityContext(workdir=Path(workdir), seed=seed, log=log, progress=progress)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    plugin = cls(mcfg)
    plugin.prepare(cohort.table.loc[train_ids], ctx)
    feats = plugin.transform(cohort.without_outcomes(), ctx)
    if feats.index.has_duplicates:
        raise DataError(f"modality '{name}' returned patient '{feats.index[feats.index.duplicated()][0]}' "
                        "twice; its plugin breaks the transform() contract")
    feats = feats.astype("float32")
    feats.index = feats.index.astype(str)
    feats.index.name = "patient_id"
    feats.columns = [str(c) for c in feats.columns]
    state = plugin.state_dict()
    state_io.check_state({name: state})  # an unstorable state fails here, before training
    if cached is not None and write:
        io.write_parquet(cached / "features.parquet", feats)
        state_io.save_state(cached / "state.json", {name: state})
        (cached / "state.pkl").unlink(missing_ok=True)
    return PreparedModality(name, feats, state, key)


# ----------------------------------------------------------------------------- training
@dataclass
class FoldResult:
    seed: int
    fold: int
    predictions: pd.DataFrame
    meta: dict[str, Any]
    model: Any = field(default=None, repr=False)


def make_trainer(cfg: Any, fold_dir: Path, progress: bool, checkpoints: bool = True) -> Any:
    """A ``lightning.Trainer`` from the config's trainer section (passed through) with
    early stopping on ``val_loss``, a best-checkpoint callback and a CSV logger."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    t = cfg.trainer
    callbacks: list[Any] = [EarlyStopping(monitor="val_loss", patience=cfg.training.patience,
                                          mode="min")]
    if checkpoints:
        callbacks.append(ModelCheckpoint(dirpath=fold_dir / "checkpoints", filename="best",
                                         monitor="val_loss", mode="min", save_top_k=1))
    kwargs: dict[str, Any] = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, deterministic=t.deterministic,
        max_epochs=cfg.training.max_epochs, callbacks=callbacks,
        logger=CSVLogger(save_dir=str(fold_dir), name="logs", version=""),
        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=1, default_root_dir=str(fold_dir),
        enable_checkpointing=checkpoints,
    )
    kwargs.update(t.options)
    try:
        return L.Trainer(**kwargs)
    except (ValueError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"trainer settings rejected by Lightning: {first}; check the "
                          "`trainer` section") from None


def _targets(cohort: Cohort, ids: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    tab = cohort.table
    if cohort.task == "binary":
        return tab.loc[ids, cohort.outcome_columns[0]].to_numpy(float), None
    t, e = cohort.outcome_columns
    return tab.loc[ids, e].to_numpy(float), tab.loc[ids, t].to_numpy(float)


def _breslow(risk: np.ndarray, event: np.ndarray, time: np.ndarray) -> dict[str, list[float]]:
    """Breslow baseline survival S0(t) from the training patients (scikit-survival)."""
    from sksurv.linear_model.coxph import BreslowEstimator

    est = BreslowEstimator().fit(risk, event.astype(bool), time)
    return {"times": est.baseline_survival_.x.tolist(),
            "baseline_survival": est.baseline_survival_.y.tolist()}


def survival_at(breslow: Mapping[str, list[float]], risk: np.ndarray,
                times: np.ndarray) -> np.ndarray:
    r""":math:`S(t\mid x) = S_0(t)^{\exp(\eta(x))}` at ``times`` (n, len(times)); the
    baseline is a right-continuous step function, 1 before the first event time."""
    import numpy as np

    bt = np.asarray(breslow["times"], float)
    bs = np.asarray(breslow["baseline_survival"], float)
    idx = np.searchsorted(bt, np.asarray(times, float), side="right") - 1
    s0 = np.where(idx >= 0, bs[np.clip(idx, 0, None)], 1.0)
    return s0[None, :] ** np.exp(np.asarray(risk, float))[:, None]


def train_fold(
    cfg: Any,
    cohort: Cohort,
    prepared: Mapping[str, PreparedModality],
    mods: Mapping[str, tuple[type[ModalityPlugin], Any]],
    fusion: FusionPlugin,
    ids: Mapping[str, list[str]],
    *,
    seed: int = 0,
    fold: int = 0,
    fold_dir: Path,
    progress: bool = False,
    time_grid: np.ndarray | None = None,
    write: bool = True,
) -> FoldResult | None:
    """Train one fold and predict its held-out patients. Returns None on non-zero ranks
    of a distributed run (rank 0 predicts and writes)."""
    import lightning as L
    import pandas as pd
    import torch

    from lungfuse.core.calibration import apply_calibration, fit_calibration, sigmoid
    from lungfuse.core.train import FoldData, FusionDataModule, FusionModel, FusionTask, predict

    names = list(prepared)
    feats = {m: prepared[m].features for m in names}

    def data(which: str) -> FoldData:
        y, t = _targets(cohort, ids[which])
        return FoldData.build(ids[which], feats, y, t)

    train, val, test = data("train"), data("val"), data("test")
    L.seed_everything(cfg.seed + 1000 * seed + fold, workers=True, verbose=False)
    encoders, n_features = {}, {}
    for m in names:
        cls, mcfg = mods[m]
        plugin = cls(mcfg)
        plugin.load_state_dict(prepared[m].state)
        n_features[m] = int(prepared[m].features.shape[1])
        encoders[m] = plugin.build_encoder(n_features[m])
    dims = {m: int(encoders[m].embedding_dim) for m in names}
    model = FusionModel(encoders, fusion.build(dims, 1))
    task = FusionTask(model, cfg.task.kind, cfg.training.lr, cfg.training.weight_decay)
    dm = FusionDataModule(train, val, cfg.training.batch_size, seed=cfg.seed + fold)
    t0 = time.perf_counter()
    with _quiet_lightning(), _torch_threads(cfg.trainer):
        trainer = make_trainer(cfg, fold_dir, progress)
        trainer.fit(task, datamodule=dm)
    fit_s = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return None
    ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
    if ckpt and Path(ckpt).exists():
        from lungfuse.core.state_io import load_torch

        task.load_state_dict(load_torch(ckpt, "Lightning checkpoint")["state_dict"])
    model = task.model.cpu().float().eval()
    raw_val, _ = predict(model, val)
    raw_test, w_test = predict(model, test)
    es = next((c for c in trainer.callbacks if type(c).__name__ == "EarlyStopping"), None)
    meta: dict[str, Any] = {
        "seed": seed, "fold": fold, "task": cfg.task.kind, "modalities": names,
        "n_features": n_features, "embedding_dims": dims,
        "feature_columns": {m: list(prepared[m].features.columns) for m in names},
        "feature_keys": {m: prepared[m].key for m in names},
        "epochs": int(trainer.current_epoch), "fit_seconds": round(fit_s, 3),
        "world_size": int(trainer.world_size),
        "best_val_loss": float(es.best_score) if es is not None else None,
        "checkpoint": str(Path(ckpt).relative_to(fold_dir)) if ckpt else None,
        "patients": {k: len(v) for k, v in ids.items()},
    }
    pred = pd.DataFrame({"patient_id": test.ids, "seed": seed, "fold": fold})
    pred["pattern"] = [pattern_of(names, test.present, i) for i in range(len(test))]
    for m in names:
        pred[f"present_{m}"] = test.present[m].numpy()
    if cfg.task.kind == "binary":
        cal = fit_calibration(cfg.evaluation.calibration, raw_val, val.y.numpy())
        meta["calibration"] = cal
        pred["y"] = test.y.numpy().astype(int)
        pred["logit"] = raw_test
        pred["prob"] = sigmoid(raw_test)
        pred["prob_calibrated"] = apply_calibration(cal, raw_test)
    else:
        raw_train, _ = predict(model, train)
        bres = _breslow(raw_train, train.y.numpy(), train.time.numpy())
        meta["breslow"] = bres
        pred["time"] = test.time.numpy()
        pred["event"] = test.y.numpy().astype(int)
        pred["risk"] = raw_test
        if time_grid is not None and len(time_grid):
            s = survival_at(bres, raw_test, time_grid)
            meta["time_grid"] = [float(t) for t in time_grid]
            for j in range(len(time_grid)):
                pred[f"surv_{j}"] = s[:, j]
    if w_test is not None:
        for j, m in enumerate(names):
            pred[f"weight_{m}"] = w_test[:, j]
    if write:
        from lungfuse.core.state_io import save_state

        # fitted state first (an unstorable one fails before model.pt exists); JSON +
        # safetensors, never pickle: run folders are shared (see core/state_io.py)
        save_state(fold_dir / "modality_state.json", {m: prepared[m].state for m in names})
        with io.atomic_path(fold_dir / "model.pt") as tmp:
            torch.save({"state_dict": model.state_dict(), "embedding_dims": dims,
                        "n_features": n_features, "modalities": names}, tmp)
        io.write_json(fold_dir / "meta.json", meta)
        io.write_parquet(fold_dir / "predictions.parquet", pred, index=False)
    return FoldResult(seed, fold, pred, meta, model)


# ----------------------------------------------------------------------------- metrics
def evaluate_predictions(pred: pd.DataFrame, cfg: Any, cohort: Cohort | None = None,
                         time_grid: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics of held-out predictions: per split seed, overall (bootstrap 95% CIs),
    per availability pattern (with CIs), per fold (points). ``overall`` is the first
    seed's; with several seeds ``seed_mean`` averages the point estimates."""
    import numpy as np

    from lungfuse.core import metrics as M

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
            return M.survival_metrics(t, e, r, s, grid, tt, te)
        out["time_grid"] = grid.tolist()

    def arrays(g: pd.DataFrame) -> list[np.ndarray]:
        if binary:
            return [g["y"].to_numpy(), g["prob_calibrated"].to_numpy()]
        s = g[surv_cols].to_numpy() if surv_cols else np.zeros((len(g), 0))
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
        out["per_seed"][str(seed)] = res
    first = next(iter(out["per_seed"].values()))
    out["overall"] = first["overall"]
    out["by_pattern"] = first["by_pattern"]
    if len(out["per_seed"]) > 1:
        keys = list(first["overall"])
        out["seed_mean"] = {k: float(np.nanmean([r["overall"][k]["value"]
                                                 for r in out["per_seed"].values()]))
                            for k in keys}
    return out


# ----------------------------------------------------------------------------- the run
@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    folds: list[FoldResult]


def _plugin_versions(cfg: Any, registry: Registry) -> dict[str, Any]:
    out = {}
    for group, kinds in ((MODALITY_GROUP, [m.kind for m in cfg.modalities]),
                         (FUSION_GROUP, [cfg.fusion.kind])):
        try:
            entries = {e.name: e for e in registry.entries(group)}
        except Exception:  # noqa: BLE001 - provenance only
            entries = {}
        for k in kinds:
            e = entries.get(k)
            out[f"{group}:{k}"] = e.origin if e is not None else "injected"
    return out


def run_experiment(
    config: Any,
    *,
    registry: Registry | None = None,
    plugins: Iterable[type] | None = None,
    output_dir: Path | None = None,
    run_dir: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool | None = None,
) -> RunResult | None:
    """Run the whole pipeline; returns the run's result (None on non-zero ranks)."""
    import pandas as pd
    import yaml
    from tqdm.auto import tqdm

    from lungfuse.core.config import config_to_dict

    started = time.time()
    cfg, reg = load_experiment(config, registry, plugins)
    show = progress_enabled(progress)
    rank0 = global_rank() == 0
    mods = modality_classes(cfg, reg)
    fusion = fusion_plugin(cfg, reg)
    cohort = load_cohort(cfg.cohort, cfg.task)
    splits = build_splits(cfg, cohort)

    out_root = Path(output_dir) if output_dir is not None else Path(cfg.output_dir)
    rdir = new_run_dir(out_root, cfg.name, run_dir)
    set_env = os.environ.get(RUN_DIR_ENV) is None
    if set_env:
        os.environ[RUN_DIR_ENV] = str(rdir)  # processes Lightning launches reuse this folder
    scratch = None if rank0 else tempfile.TemporaryDirectory(prefix="lungfuse-rank")
    work = rdir / "modalities" if rank0 else Path(scratch.name)
    handler = None
    try:
        if rank0:
            handler = logging.FileHandler(rdir / "run.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            resolved = config_to_dict(cfg)
            io.write_text(rdir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
            io.write_json(rdir / "run.json", {"status": "running", "started": started,
                                              "plugins": _plugin_versions(cfg, reg)})
            io.write_parquet(rdir / "splits.parquet", splits, index=False)
        with tempfile.TemporaryDirectory(prefix="lungfuse-coverage") as cov:
            coverage = check_coverage(mods, cohort, Path(cov))
        log.info("cohort %s: %d patients; coverage %s", cohort.source, len(cohort.ids),
                 {m: len(v) for m, v in coverage.items()})
        grid = None
        if cfg.task.kind == "survival":
            from lungfuse.core.metrics import survival_time_grid

            t, e = cohort.outcome_columns
            grid = survival_time_grid(cohort.table[t].to_numpy(), cohort.table[e].to_numpy())
        folds = sorted({(int(s), int(k)) for s, k in splits[["seed", "fold"]].itertuples(index=False)})
        results: list[FoldResult] = []
        bar = tqdm(folds, desc="folds", disable=not (show and rank0), unit="fold")
        for seed, fold in bar:
            from lungfuse.core.splits import fold_ids

            ids = fold_ids(splits, seed, fold)
            tag = f"seed{seed}-fold{fold}"
            prepared = {}
            for name, (cls, mcfg) in mods.items():
                prepared[name] = prepare_fold_features(
                    name, cls, mcfg, cohort, ids["train"], seed=seed, fold=fold,
                    workdir=work / name / tag, cache_dir=cache_dir, progress=show and rank0,
                    write=rank0)
                if rank0:
                    io.write_parquet(rdir / "features" / name / f"{tag}.parquet",
                                     prepared[name].features)
            res = train_fold(cfg, cohort, prepared, mods, fusion, ids, seed=seed, fold=fold,
                             fold_dir=rdir / "models" / tag, progress=False, time_grid=grid,
                             write=rank0)
            if res is not None:
                results.append(res)
        if not rank0 or not results:
            return None
        pred = pd.concat([r.predictions for r in results], ignore_index=True)
        io.write_parquet(rdir / "predictions.parquet", pred, index=False)
        metrics = evaluate_predictions(pred, cfg, cohort, grid)
        metrics["patients"] = len(cohort.ids)
        metrics["coverage"] = {m: len(v) for m, v in coverage.items()}
        io.write_json(rdir / "metrics.json", metrics)
        io.write_json(rdir / "run.json", {
            "status": "complete", "started": started, "finished": time.time(),
            "seconds": round(time.time() - started, 2), "plugins": _plugin_versions(cfg, reg),
            "folds": [{"seed": r.seed, "fold": r.fold, "epochs": r.meta["epochs"],
                       "fit_seconds": r.meta["fit_seconds"]} for r in results],
            "world_size": max(int(r.meta["world_size"]) for r in results),
        })
        return RunResult(rdir, metrics, pred, results)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        if set_env:
            os.environ.pop(RUN_DIR_ENV, None)
        if scratch is not None:
            scratch.cleanup()


# ----------------------------------------------------------------------------- scoring
@dataclass
class TrainedFold:
    """One fold's trained model and fitted modality states, ready to score new patients."""

    seed: int
    fold: int
    model: Any
    plugins: dict[str, ModalityPlugin]
    meta: dict[str, Any]

    def features(self, patients: pd.DataFrame, ctx: ModalityContext) -> dict[str, pd.DataFrame]:
        """Each modality's fitted ``transform`` of ``patients`` (rows without outcomes),
        columns aligned with training."""
        out = {}
        for m, p in self.plugins.items():
            f = p.transform(patients, ctx)
            f.index = f.index.astype(str)
            out[m] = f.reindex(columns=self.meta["feature_columns"][m]).astype("float32")
        return out

    def predict(self, features: Mapping[str, pd.DataFrame], ids: list[str]) -> pd.DataFrame:
        """Raw output, probability/calibrated probability (binary) or risk (survival)."""
        import numpy as np
        import pandas as pd

        from lungfuse.core.calibration import apply_calibration, sigmoid
        from lungfuse.core.train import FoldData, predict

        data = FoldData.build(ids, features, np.zeros(len(ids)))
        raw, w = predict(self.model, data)
        df = pd.DataFrame({"patient_id": ids, "seed": self.seed, "fold": self.fold})
        names = self.meta["modalities"]
        df["pattern"] = [pattern_of(names, data.present, i) for i in range(len(ids))]
        if self.meta["task"] == "binary":
            df["logit"], df["prob"] = raw, sigmoid(raw)
            df["prob_calibrated"] = apply_calibration(self.meta.get("calibration", {}), raw)
        else:
            df["risk"] = raw
        if w is not None:
            for j, m in enumerate(names):
                df[f"weight_{m}"] = w[:, j]
        return df


def load_fold_model(run_dir: Path, seed: int, fold: int, registry: Registry | None = None,
                    plugins: Iterable[type] | None = None) -> TrainedFold:
    """Rebuild fold (seed, fold) of a finished run: resolved config → plugins with their
    fitted state → encoders + head with the trained weights.

    Nothing is unpickled: the fitted state is read by :func:`lungfuse.core.state_io.
    load_state` and the weights with ``weights_only=True``. A fold file that is missing,
    corrupt or foreign, and a folder of an older lungfuse (``modality_state.pkl``), raise
    one line naming the file and how to re-create the run."""
    import yaml

    from lungfuse.core.config import validate_config
    from lungfuse.core.state_io import first_line, legacy_state_error, load_state, load_torch
    from lungfuse.core.train import FusionModel

    run_dir = Path(run_dir)
    reg: Registry = registry or default_registry()
    if plugins:
        reg = PluginSet(plugins, reg)
    cfg_path = run_dir / "config.yaml"
    remedy = f"re-create the run with `lungfuse run {cfg_path}`"
    try:
        data = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{cfg_path}: missing, so {run_dir} cannot be scored; restore the "
                        "run's config.yaml or re-run the experiment from its config") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{cfg_path}: the run's resolved config is unreadable "
                        f"({type(exc).__name__}); restore it or re-run the experiment") from None
    if not isinstance(data, dict):
        raise DataError(f"{cfg_path}: the run's resolved config is not a YAML mapping; "
                        "restore it or re-run the experiment")
    cfg = validate_config(data, source=str(cfg_path), base_dir=run_dir,
                          registry=reg, check_paths=False)
    fdir = run_dir / "models" / f"seed{seed}-fold{fold}"
    if not (fdir / "model.pt").exists():
        raise DataError(f"{fdir}: no trained model; is {run_dir} a finished run?")
    state_path = fdir / "modality_state.json"
    if not state_path.exists() and (fdir / "modality_state.pkl").exists():
        raise legacy_state_error(fdir, cfg_path)
    meta_path = fdir / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        mods_meta = [str(m) for m in meta["modalities"]]
        n_feat = {m: int(meta["n_features"][m]) for m in mods_meta}
        dims = {m: int(meta["embedding_dims"][m]) for m in mods_meta}
    except FileNotFoundError:
        raise DataError(f"{meta_path}: missing; {remedy}") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{meta_path}: unreadable or incomplete fold metadata "
                        f"({first_line(exc, 80)}); {remedy}") from None
    states = load_state(state_path, remedy)
    mods = modality_classes(cfg, reg)
    insts, encoders = {}, {}
    for m in mods_meta:
        if m not in mods or m not in states:
            where = cfg_path if m not in mods else state_path
            raise DataError(f"{where}: has no modality '{m}', which {meta_path.name} lists; "
                            f"{remedy}")
        cls, mcfg = mods[m]
        insts[m] = cls(mcfg)
        try:
            insts[m].load_state_dict(states[m])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise DataError(f"{state_path}: the fitted state of modality '{m}' does not fit "
                            f"its plugin ({first_line(exc, 80)}); {remedy}") from None
        encoders[m] = insts[m].build_encoder(n_feat[m])
    # meta.json has sorted keys: the head's modality order is meta["modalities"]
    model = FusionModel(encoders, fusion_plugin(cfg, reg).build(dims, 1))
    ck = load_torch(fdir / "model.pt", "fold model", remedy)
    try:
        model.load_state_dict(ck["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise DataError(f"{fdir / 'model.pt'}: weights do not fit the run's config "
                        f"({first_line(exc, 120)}); {remedy}") from None
    return TrainedFold(seed, fold, model.eval(), insts, meta)


# ----------------------------------------------------------------------------- CLI
def _headline(metrics: Mapping[str, Any]) -> str:
    parts = []
    for k, v in metrics.get("overall", {}).items():
        if v["value"] == v["value"]:
            ci = (f" [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
                  if v["ci_low"] == v["ci_low"] else "")
            parts.append(f"{k} {v['value']:.3f}{ci}")
    return "; ".join(parts)


@click.command("run")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--output-dir", type=click.Path(path_type=Path), default=None,
              help="Parent folder of the run folder (default: the config's output_dir).")
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="Exact run folder (needed under torchrun without a job id).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Reuse/keep prepared features here (keyed by modality config, seed, fold).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def run_command(config: Path, output_dir: Path | None, run_dir: Path | None,
                cache_dir: Path | None, no_progress: bool) -> None:
    """Train and evaluate the fused model of CONFIG; artefacts go to a new run folder.

    Cohort → stratified patient-level splits → per-fold feature preparation on training
    patients → fusion model trained with Lightning → held-out predictions, calibration,
    metrics with 95% bootstrap CIs (overall and per availability pattern).
    """
    res = run_experiment(config, output_dir=output_dir, run_dir=run_dir, cache_dir=cache_dir,
                         progress=False if no_progress else None)
    if res is None:
        return
    click.echo(f"run folder: {res.run_dir}")
    click.echo(f"held-out ({res.metrics['task']}): {_headline(res.metrics)}")
