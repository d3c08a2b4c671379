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
   the content of the files it names, seed, fold and the cohort (:func:`feature_cache_key`).
5. :func:`train_fold` trains encoders + head with Lightning (early stopping on the
   validation split, checkpoints, CSV logs), predicts the held-out patients, fits the
   post-hoc calibration (binary) on the validation split or the Breslow baseline
   (survival) on the training split, and saves what scoring needs.
6. :func:`evaluate_predictions` computes metrics with bootstrap CIs, overall, per fold and
   per availability pattern.

Run folder (``output_dir/<name>-<YYYYmmdd-HHMMSS>``, created only once the input has
been checked, never written over; every file written atomically). ``run.json`` says
``running`` (pid, host, heartbeat), then ``complete`` once everything is there, or
``interrupted`` / ``failed`` with the reason; a killed run keeps ``running`` with a
process that is gone. The next run into the same output folder names an unfinished one,
and ``lungfuse run CONFIG --resume RUN_DIR`` finishes it fold by fold::

    config.yaml  run.json  splits.parquet  predictions.parquet  metrics.json  run.log
    report.html
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
import shutil
import signal
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lungfuse.core import atomic
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


def _refuse_used_folder(folder: Path, named_by: str) -> None:
    """A run folder named by the user (``named_by``: the option or variable that named it)
    must be new or empty: runs are never written over in place, and a data folder is no
    run folder. Empty sub-folders (other ranks may create them) are tolerated."""
    if folder.exists() and not folder.is_dir():
        raise DataError(f"run folder {folder} ({named_by}) is a file, not a folder; name a "
                        "new folder")
    if not folder.is_dir():
        return
    held = next((p for p in folder.rglob("*") if not p.is_dir()), None)
    if held is None:
        return
    if (folder / "run.json").exists():
        raise ConfigError(f"run folder {folder} ({named_by}) already holds a run and runs are "
                          "never written over in place; name a new folder, or continue an "
                          f"unfinished run with `lungfuse run CONFIG --resume {folder}`")
    raise ConfigError(f"run folder {folder} ({named_by}) is not empty (it holds "
                      f"{held.relative_to(folder)}); name a new or empty folder for the run")


def new_run_dir(output_dir: Path, name: str, run_dir: Path | None = None,
                named_by: str = "--run-dir") -> Path:
    """A new, empty run folder ``output_dir/<name>-<timestamp>[-N]`` (an absolute path, so
    a relative ``--output-dir`` works wherever Lightning or a plugin changes directory).

    ``run_dir`` (or the ``LUNGFUSE_RUN_DIR`` environment variable, which distributed
    processes share) names it explicitly; under SLURM/torchrun with several processes the
    job id is used so every process agrees. Global rank 0 refuses a named folder that
    already holds files, whoever named it (the design promises a run folder is never
    written over in place; an unfinished run is continued with ``--resume`` instead);
    the other ranks join the folder rank 0 checked. ``named_by`` is the option that
    passed ``run_dir``, for the error message.
    """
    env = os.environ.get(RUN_DIR_ENV)
    explicit = Path(run_dir) if run_dir is not None else (Path(env) if env else None)
    rank0 = global_rank() == 0
    if explicit is not None:
        explicit = explicit.absolute()
        if rank0:
            _refuse_used_folder(explicit, named_by if run_dir is not None else RUN_DIR_ENV)
        return atomic.ensure_dir(explicit, "run folder")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    if world > 1 and job and job != "none":
        p = (Path(output_dir) / f"{name}-job{job}").absolute()
        if rank0:
            _refuse_used_folder(p, f"the run folder of job {job}")
        return atomic.ensure_dir(p, "run folder")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output_dir = atomic.ensure_dir(Path(output_dir).absolute(), "output folder")
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
    """Lightning without its info lines and known-harmless warnings, and with Ctrl-C
    kept a Ctrl-C.

    Inside ``fit``, Lightning answers a KeyboardInterrupt by logging a line (hidden here),
    ignoring further SIGINTs and calling ``sys.exit(1)``: a silent exit 1 that nobody
    could record. That exit is turned back into the KeyboardInterrupt it stands for, and
    the SIGINT handler is restored, so the run records "interrupted" and the CLI prints
    one line and exits 130.
    """
    import lightning.pytorch  # noqa: F401 - its import sets the logger's level: import first

    lg = logging.getLogger("lightning.pytorch")
    old = lg.level
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
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
        except SystemExit as exc:
            if isinstance(exc.__context__, KeyboardInterrupt):
                raise exc.__context__ from None
            raise
        finally:
            lg.setLevel(old)
            if sigint is not None and signal.getsignal(signal.SIGINT) is not sigint:
                signal.signal(signal.SIGINT, sigint)


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
        plugin = cls(mcfg)
        have = set(plugin.available(features_only, ctx)) & set(cohort.ids)
        if not have:
            from lungfuse.core.cohort import coverage_hint, modality_input_ids

            hint = coverage_hint(cohort.ids, modality_input_ids(plugin))
            raise DataError(f"modality '{name}' ({mcfg.kind}) covers none of the "
                            f"{len(cohort.ids)} patients of {cohort.source}; check its input "
                            f"files and that their sample ids match the patient ids ({hint})")
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


#: Input files up to this size are keyed on a SHA-256 of their content, as long as one
#: key has hashed less than ``HASH_BUDGET`` bytes (a config naming a thousand CT volumes
#: is not read whole); the others, and every file inside a folder input (a CT root), on
#: size + modification time, which an in-place rewrite changes too.
HASH_INPUTS_UP_TO = 64 * 2**20
HASH_BUDGET = 256 * 2**20
_digests: dict[tuple[int, int, int, int], str] = {}


def input_paths(modality_config: Any) -> list[Path]:
    """The files and folders a modality config names, for keys on their content.

    Core knows no plugin's fields: it walks the config (a pydantic model or a plain
    mapping) for ``Path`` values (the ``InputPath`` fields of plugin configs) and for
    strings that look like paths (absolute, or containing a separator) and exist.
    """
    out: set[Path] = set()

    def walk(v: Any) -> None:
        if hasattr(v, "model_dump"):
            v = v.model_dump()
        if isinstance(v, Mapping):
            for x in v.values():
                walk(x)
        elif isinstance(v, list | tuple | set | frozenset):
            for x in v:
                walk(x)
        elif isinstance(v, os.PathLike):
            out.add(Path(v))
        elif isinstance(v, str) and 0 < len(v) < 4096 and (os.sep in v or v.startswith("~")):
            with contextlib.suppress(OSError, ValueError):
                p = Path(v).expanduser()
                if p.exists():
                    out.add(p)

    walk(modality_config)
    return sorted(out)


def _file_digest(path: Path, st: os.stat_result) -> str:
    """SHA-256 of a file's content, remembered per (device, inode, size, mtime)."""
    memo = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if memo not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _digests[memo] = h.hexdigest()
    return _digests[memo]


def input_fingerprint(path: Path, budget: list[int] | None = None) -> Any:
    """What identifies the content of an input: a small file by its hash, a large one by
    size + mtime, a folder by the relative path, size and mtime of every file under it,
    a missing path as such. ``budget`` (one mutable count of bytes) caps the bytes hashed
    over several calls; it is charged whether or not a digest was remembered, so the
    same inputs always get the same kind of fingerprint."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return "missing"
    if path.is_dir():
        h = hashlib.sha256()
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                p = Path(root) / f
                with contextlib.suppress(OSError):
                    fs = p.stat()
                    h.update(f"{p.relative_to(path)}\0{fs.st_size}\0{fs.st_mtime_ns}\n".encode())
        return {"folder": h.hexdigest()}
    hashed = st.st_size <= HASH_INPUTS_UP_TO and (budget is None or budget[0] >= st.st_size)
    if hashed:
        if budget is not None:
            budget[0] -= st.st_size
        try:
            return {"size": st.st_size, "sha256": _file_digest(path, st)}
        except OSError:
            pass
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _table_digest(table: Any) -> str | None:
    """A hash of a DataFrame's columns, dtypes, index and values (None for no table)."""
    if table is None:
        return None
    import pandas as pd

    h = hashlib.sha256(json.dumps([list(map(str, table.columns)),
                                   list(map(str, table.dtypes))]).encode())
    try:
        h.update(pd.util.hash_pandas_object(table, index=True).to_numpy().tobytes())
    except TypeError:  # unhashable cells (lists): fall back to their text
        h.update(table.to_csv().encode())
    return h.hexdigest()


def feature_cache_key(modality_config: Any, seed: int, fold: int, train_ids: Iterable[str],
                      cohort_ids: Iterable[str] = (), *, cohort_table: Any = None) -> str:
    """A hash of what determines a fold's features: the modality config (kind, settings,
    input paths), the content of every file or folder it names (:func:`input_fingerprint`,
    so a table changed in place is not served from the cache), the split seed and fold,
    the training/cohort patients and, where given, the cohort rows the plugin sees."""
    cfg = modality_config.model_dump(mode="json") if hasattr(modality_config, "model_dump") \
        else modality_config
    budget = [HASH_BUDGET]
    inputs = {str(p): input_fingerprint(p, budget) for p in input_paths(modality_config)}
    blob = json.dumps({"config": cfg, "seed": seed, "fold": fold,
                       "train": sorted(map(str, train_ids)),
                       "cohort": sorted(map(str, cohort_ids)), "inputs": inputs,
                       "cohort_table": _table_digest(cohort_table)}, sort_keys=True,
                      default=str)
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

    key = feature_cache_key(mcfg, seed, fold, train_ids, cohort.ids, cohort_table=cohort.table)
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
        atomic.write_parquet(cached / "features.parquet", feats)
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
    from lungfuse.core.fusion_model import (
        FoldData,
        FusionDataModule,
        FusionModel,
        FusionTask,
        predict,
    )

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
        # Lightning reports an absolute, symlink-free path; fold_dir may be relative
        "checkpoint": (Path(os.path.relpath(os.path.realpath(ckpt), os.path.realpath(fold_dir)))
                       .as_posix() if ckpt else None),
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
        with atomic.atomic_path(fold_dir / "model.pt") as tmp:
            torch.save({"state_dict": model.state_dict(), "embedding_dims": dims,
                        "n_features": n_features, "modalities": names}, tmp)
        atomic.write_json(fold_dir / "meta.json", meta)
        atomic.write_parquet(fold_dir / "predictions.parquet", pred, index=False)
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


# ----------------------------------------------------------------------------- run status
#: How often rank 0 refreshes ``heartbeat`` in run.json, and after how long without one a
#: "running" run counts as dead (killed, or its machine lost).
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGTERM (``kill``, a scheduler's time limit): handled like Ctrl-C,
    so the run folder records "interrupted" and the CLI exits 130."""


def _one_line(exc: BaseException) -> str:
    """The reason recorded in run.json for an exception: its first line, with the type
    unless it is a user-facing error whose message says everything."""
    from lungfuse.core.errors import LungfuseError

    if isinstance(exc, SystemExit):
        return f"exited with code {exc.code}"
    text = (str(exc).strip().splitlines() or [""])[0][:500]
    if isinstance(exc, LungfuseError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) of a Linux process, None where unknown."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        fields = raw[raw.rindex(")") + 2:].split()
        return fields[0], fields[19]
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` (started at ``start`` ticks, where known) still runs here."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    return state not in ("Z", "X") and (start is None or started == str(start))


def run_is_alive(run: Mapping[str, Any], run_json: Path) -> bool:
    """Whether the process that wrote this "running" run.json still runs: on this host,
    its pid (and start time) must exist and its heartbeat be fresh; elsewhere, the
    heartbeat alone decides (``STALE_SECONDS``)."""
    try:
        beat = float(run.get("heartbeat") or run_json.stat().st_mtime)
    except (OSError, TypeError, ValueError):
        beat = 0.0
    fresh = time.time() - beat < STALE_SECONDS
    pid = run.get("pid")
    if run.get("host") == socket.gethostname() and isinstance(pid, int):
        return fresh and _pid_alive(pid, run.get("pid_start"))
    return fresh


def unfinished_reason(folder: Path) -> str | None:
    """Why run folder ``folder`` did not finish (None: complete, still running, or no run
    folder): "interrupted (…)", "failed (…)", or killed (its process is gone)."""
    path = Path(folder) / "run.json"
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "its run.json is unreadable"
    if not isinstance(run, dict):
        return "its run.json is unreadable"
    status = run.get("status")
    if status == "complete":
        return None
    if status in ("interrupted", "failed"):
        return f"{status}: {run.get('reason') or 'no reason recorded'}"
    if run_is_alive(run, path):
        return None
    pid, host = run.get("pid"), run.get("host")
    who = f"process {pid} on {host}" if pid else "its process"
    return f"killed: status still 'running' but {who} is gone"


def _config_difference(a: Any, b: Any, where: str = "") -> str | None:
    """The first setting (dotted path) where two resolved configs differ; None if equal.
    ``output_dir`` does not count: resuming writes into the run folder itself."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if not where and k == "output_dir":
                continue
            sub = f"{where}.{k}" if where else str(k)
            if k not in a or k not in b:
                return sub
            d = _config_difference(a[k], b[k], sub)
            if d is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return where or "<top level>"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _config_difference(x, y, f"{where}[{i}]")
            if d is not None:
                return d
        return None
    return None if a == b else (where or "<top level>")


def _lookup(cfg: Any, where: str) -> Any:
    node = cfg
    for part in where.replace("[", ".[").split("."):
        if not part:
            continue
        try:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return "<absent>"
    return node


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


class _RunStatus:
    """``run.json`` of the run in progress (rank 0): written atomically on each change
    and refreshed by a heartbeat thread, so a SIGKILLed run stays recognisable: status
    "running" with a pid that is gone or a heartbeat that stopped."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = dict(data)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, **changes: Any) -> None:
        with self.lock:
            self.data.update(changes)
            atomic.write_json(self.path, self.data)

    def start_heartbeat(self, every: float = HEARTBEAT_SECONDS) -> None:
        def beat() -> None:
            while not self._stop.wait(every):
                try:
                    self.update(heartbeat=time.time())
                except Exception as exc:  # noqa: BLE001 - a missed beat must not stop the run
                    log.debug("heartbeat not written: %s", exc)

        self._thread = threading.Thread(target=beat, name="lungfuse-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def end(self, status: str, **changes: Any) -> None:
        """Record how the run ended (once: an ended status is never changed again)."""
        self.stop()
        if self.data.get("status") == "running":
            self.update(**{"status": status, "finished": time.time(), **changes})


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While the run goes on, SIGTERM raises :class:`RunInterrupted` (main thread only,
    and only where nobody installed a SIGTERM handler), so a ``kill`` is recorded."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise RunInterrupted("terminated by SIGTERM")

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _check_folder_option(path: Path, what: str) -> None:
    """An output/cache folder the user named must not be a file (checked before a run
    folder exists, so the error leaves nothing behind)."""
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise DataError(f"{what} {path}: {blocker} is a file, not a folder; choose another "
                        "location or move that file away")


def _check_trainer(cfg: Any) -> None:
    """Build the fold trainer once in a scratch folder, so trainer settings Lightning
    rejects stop the run before its folder exists."""
    with tempfile.TemporaryDirectory(prefix="lungfuse-trainer") as tmp, _quiet_lightning():
        try:
            make_trainer(cfg, Path(tmp), progress=False)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - Lightning's MisconfigurationException & co
            raise ConfigError(f"trainer settings rejected by Lightning: {_one_line(exc)}; "
                              "check the `trainer` section") from None


def _tell_unfinished(out_root: Path, config: Any, resolved: Mapping[str, Any],
                     say: Any) -> None:
    """One line about run folders under ``out_root`` that did not finish (newest first),
    with the command that continues the newest."""
    if not out_root.is_dir():
        return
    found = []
    for run_json in out_root.glob("*/run.json"):
        why = unfinished_reason(run_json.parent)
        if why is not None:
            with contextlib.suppress(OSError):
                found.append((run_json.stat().st_mtime, run_json.parent, why))
    if not found:
        return
    found.sort(key=lambda t: t[0], reverse=True)
    _, folder, why = found[0]
    cfg_hint = str(folder / "config.yaml")
    if isinstance(config, str | os.PathLike):
        import yaml

        try:
            stored = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            stored = None
        if isinstance(stored, dict) and _config_difference(dict(resolved), stored) is None:
            cfg_hint = str(config)
    more = (f" ({len(found) - 1} more unfinished run folder(s) in {out_root})"
            if len(found) > 1 else "")
    say(f"note: run folder {folder} did not finish ({why}); continue it with "
        f"`lungfuse run {cfg_hint} --resume {folder}`{more}")


def _check_resumable(folder: Path, resolved: Mapping[str, Any], splits: pd.DataFrame,
                     cfg_source: str) -> dict[str, Any]:
    """The run.json of an unfinished run folder that this config may continue: refused
    (one line each) when it is no run folder, complete, still running, of another config
    (naming the first differing setting) or of other splits (the cohort changed)."""
    import pandas as pd
    import yaml

    run_json = folder / "run.json"
    if not run_json.is_file():
        raise ConfigError(f"--resume {folder}: not a run folder (no run.json); give the "
                          "folder `lungfuse run` printed")
    try:
        run = json.loads(run_json.read_text(encoding="utf-8"))
        stored = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise DataError(f"--resume {folder}: its run.json or config.yaml is unreadable "
                        f"({_one_line(exc)}); start a new run instead") from None
    if not isinstance(run, dict) or not isinstance(stored, dict):
        raise DataError(f"--resume {folder}: its run.json or config.yaml is not a mapping; "
                        "start a new run instead")
    if run.get("status") == "complete":
        raise ConfigError(f"--resume {folder}: the run is already complete, nothing to "
                          f"resume (results in {folder / 'metrics.json'})")
    if run.get("status") == "running" and run_is_alive(run, run_json):
        raise ConfigError(f"--resume {folder}: the run is still going (process "
                          f"{run.get('pid')} on {run.get('host')}); wait for it, or stop it "
                          "and resume then")
    diff = _config_difference(dict(resolved), stored)
    if diff is not None:
        raise ConfigError(f"--resume {folder}: {cfg_source} differs from the run's config at "
                          f"`{diff}` ({_short(_lookup(resolved, diff))} here, "
                          f"{_short(_lookup(stored, diff))} in the run); resume with "
                          f"{folder / 'config.yaml'} or start a new run")
    try:
        old = pd.read_parquet(folder / "splits.parquet")
    except (OSError, ValueError) as exc:
        raise DataError(f"--resume {folder}: its splits.parquet is unreadable "
                        f"({_one_line(exc)}); start a new run instead") from None
    cols = ["seed", "fold", "patient_id", "split"]

    def rows(df: pd.DataFrame) -> set[tuple[str, ...]]:
        return set(df[cols].astype(str).itertuples(index=False, name=None))

    if not set(cols) <= set(old.columns) or rows(old) != rows(splits):
        raise DataError(f"--resume {folder}: the cohort's splits differ from the run's "
                        f"(has the clinical table changed?); start a new run")
    return run


def _finished_folds(folder: Path, folds: list[tuple[int, int]],
                    run: Mapping[str, Any] | None = None) -> dict[tuple[int, int], dict[str, Any]]:
    """``{(seed, fold): meta}`` of the folds an earlier attempt finished: listed in its
    run.json (rank 0 adds a fold only once train_fold has written all of it) and with
    their meta.json and predictions.parquet on disk."""
    if run is None:
        try:
            run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
    listed = {(int(f["seed"]), int(f["fold"])) for f in (run or {}).get("folds", [])
              if isinstance(f, dict) and "seed" in f and "fold" in f}
    out = {}
    for seed, fold in folds:
        fdir = folder / "models" / f"seed{seed}-fold{fold}"
        if (seed, fold) in listed and (fdir / "meta.json").is_file() \
                and (fdir / "predictions.parquet").is_file():
            try:
                out[(seed, fold)] = json.loads((fdir / "meta.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # unreadable: the fold is trained again
    return out


def _check_same_inputs(folder: Path, done: Mapping[tuple[int, int], dict[str, Any]],
                       mods: Mapping[str, tuple[type[ModalityPlugin], Any]], splits: pd.DataFrame,
                       cohort: Cohort) -> None:
    """A resumed run must read the same data as its finished folds did: their feature
    keys (which hash every input file) must be what the inputs give now."""
    from lungfuse.core.splits import fold_ids

    for (seed, fold), meta in done.items():
        keys = meta.get("feature_keys") or {}
        train = fold_ids(splits, seed, fold)["train"]
        for name, (_cls, mcfg) in mods.items():
            if name not in keys:
                continue
            now = feature_cache_key(mcfg, seed, fold, train, cohort.ids, cohort_table=cohort.table)
            if now != keys[name]:
                paths = ", ".join(map(str, input_paths(mcfg))) or "its settings"
                raise DataError(f"--resume {folder}: the input of modality '{name}' ({paths}) "
                                f"or the cohort table changed since fold seed{seed}-fold{fold} "
                                "was trained; start a new run so every fold sees the same data")


def _fold_info(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"seed": int(meta["seed"]), "fold": int(meta["fold"]), "epochs": meta.get("epochs"),
            "fit_seconds": meta.get("fit_seconds")}


# ----------------------------------------------------------------------------- the run
@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    folds: list[FoldResult]
    resumed: int = 0  # folds kept from an earlier, unfinished attempt


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
    resume: Path | None = None,
    report: bool = True,
    notify: Callable[[str], Any] | None = None,
) -> RunResult | None:
    """Run the whole pipeline; returns the run's result (None on non-zero ranks).

    Everything that can be checked (config, plugins, output and cache folders, cohort,
    splits, each modality's coverage, trainer settings) is checked before the run folder
    exists, so bad input leaves nothing behind. From then on ``run.json`` says
    "running" (with pid, host and a heartbeat), and on the way out "complete",
    "interrupted" (Ctrl-C, SIGTERM) or "failed", with the reason; a SIGKILLed run keeps
    "running" with a process that is gone, which the next run into the same output
    folder reports through ``notify`` (default: a logged warning).

    ``resume`` continues such an unfinished run folder in place instead of creating one:
    same config (else the first differing setting is named), same splits and inputs;
    finished folds are kept, the others trained again with the same seeds, so the
    metrics equal those of an uninterrupted run. ``report`` writes ``report.html``.
    """
    import pandas as pd
    import yaml
    from tqdm.auto import tqdm

    from lungfuse.core.config import config_to_dict
    from lungfuse.core.splits import fold_ids

    started = time.time()
    say = notify or log.warning
    cfg, reg = load_experiment(config, registry, plugins)
    show = progress_enabled(progress)
    rank0 = global_rank() == 0
    if resume is not None and run_dir is not None:
        raise ConfigError("--resume continues its run folder in place; drop --run-dir")
    out_root = Path(output_dir) if output_dir is not None else Path(cfg.output_dir)
    _check_folder_option(out_root.absolute(), "output folder")
    if cache_dir is not None:
        _check_folder_option(Path(cache_dir).absolute(), "cache folder")
    mods = modality_classes(cfg, reg)
    fusion = fusion_plugin(cfg, reg)
    cohort = load_cohort(cfg.cohort, cfg.task)
    splits = build_splits(cfg, cohort)
    with tempfile.TemporaryDirectory(prefix="lungfuse-coverage") as cov:
        coverage = check_coverage(mods, cohort, Path(cov))
    _check_trainer(cfg)
    resolved = config_to_dict(cfg)
    folds = sorted({(int(s), int(k)) for s, k in splits[["seed", "fold"]].itertuples(index=False)})
    source = str(config) if isinstance(config, str | os.PathLike) else "this config"
    previous: dict[str, Any] = {}
    if resume is not None:
        rdir = Path(resume).absolute()
        if rank0:
            previous = _check_resumable(rdir, resolved, splits, source)
        done = _finished_folds(rdir, folds, previous or None)
        if rank0:
            _check_same_inputs(rdir, done, mods, splits, cohort)
    else:
        if rank0 and run_dir is None and not os.environ.get(RUN_DIR_ENV):
            _tell_unfinished(out_root.absolute(), config, resolved, say)
        rdir = new_run_dir(out_root, cfg.name, run_dir)
        done = {}

    set_env = os.environ.get(RUN_DIR_ENV) is None
    if set_env:
        os.environ[RUN_DIR_ENV] = str(rdir)  # processes Lightning launches reuse this folder
    scratch = None if rank0 else tempfile.TemporaryDirectory(prefix="lungfuse-rank")
    work = rdir / "modalities" if rank0 else Path(scratch.name)
    handler = None
    status: _RunStatus | None = None
    stack = contextlib.ExitStack()
    try:
        if rank0:  # run.json first: from here on, every way out is recorded
            stat = _proc_stat(os.getpid())
            status = _RunStatus(rdir / "run.json", {
                **{k: v for k, v in previous.items() if k not in ("reason", "finished")},
                "status": "running", "started": previous.get("started", started),
                "pid": os.getpid(), "pid_start": stat[1] if stat else None,
                "host": socket.gethostname(), "heartbeat": time.time(),
                "plugins": _plugin_versions(cfg, reg),
                "folds": [_fold_info(done[k]) for k in sorted(done)],
                **({"resumed": [*previous.get("resumed", []), started]} if resume else {}),
            })
            status.update()
            status.start_heartbeat()
            stack.enter_context(_sigterm_interrupts())
            handler = logging.FileHandler(rdir / "run.log", encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            if resume is None:
                atomic.write_text(rdir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
                atomic.write_parquet(rdir / "splits.parquet", splits, index=False)
            if resume is not None:
                log.info("resuming %s: %d of %d folds already finished", rdir, len(done),
                         len(folds))
        log.info("cohort %s: %d patients; coverage %s", cohort.source, len(cohort.ids),
                 {m: len(v) for m, v in coverage.items()})
        grid = None
        if cfg.task.kind == "survival":
            from lungfuse.core.metrics import survival_time_grid

            t, e = cohort.outcome_columns
            grid = survival_time_grid(cohort.table[t].to_numpy(), cohort.table[e].to_numpy())
        results: list[FoldResult] = []
        if rank0:
            for seed, fold in sorted(done):
                fdir = rdir / "models" / f"seed{seed}-fold{fold}"
                results.append(FoldResult(seed, fold, pd.read_parquet(fdir / "predictions.parquet"),
                                          done[(seed, fold)]))
        todo = [k for k in folds if k not in done]
        bar = tqdm(todo, desc="folds", disable=not (show and rank0), unit="fold")
        for seed, fold in bar:
            ids = fold_ids(splits, seed, fold)
            tag = f"seed{seed}-fold{fold}"
            if rank0 and resume is not None:  # what the unfinished attempt left of this fold
                shutil.rmtree(rdir / "models" / tag, ignore_errors=True)
                for name in mods:
                    shutil.rmtree(work / name / tag, ignore_errors=True)
            prepared = {}
            for name, (cls, mcfg) in mods.items():
                prepared[name] = prepare_fold_features(
                    name, cls, mcfg, cohort, ids["train"], seed=seed, fold=fold,
                    workdir=work / name / tag, cache_dir=cache_dir, progress=show and rank0,
                    write=rank0)
                if rank0:
                    atomic.write_parquet(rdir / "features" / name / f"{tag}.parquet",
                                     prepared[name].features)
            res = train_fold(cfg, cohort, prepared, mods, fusion, ids, seed=seed, fold=fold,
                             fold_dir=rdir / "models" / tag, progress=False, time_grid=grid,
                             write=rank0)
            if res is not None:
                results.append(res)
                if status is not None:  # only now is the fold resumable
                    status.update(folds=[*status.data["folds"], _fold_info(res.meta)])
        if not rank0 or not results or status is None:
            return None
        results.sort(key=lambda r: (r.seed, r.fold))  # fold order: same bootstrap as one go
        pred = pd.concat([r.predictions for r in results], ignore_index=True)
        atomic.write_parquet(rdir / "predictions.parquet", pred, index=False)
        metrics = evaluate_predictions(pred, cfg, cohort, grid)
        metrics["patients"] = len(cohort.ids)
        metrics["coverage"] = {m: len(v) for m, v in coverage.items()}
        atomic.write_json(rdir / "metrics.json", metrics)
        finished = time.time()
        status.end("complete", finished=finished, seconds=round(finished - started, 2),
                   folds=[_fold_info(r.meta) for r in results],
                   world_size=max(int(r.meta.get("world_size", 1)) for r in results))
        log.info("run complete: %s", rdir)
        if report:
            _write_report(rdir, say)
        return RunResult(rdir, metrics, pred, results, resumed=len(done))
    except KeyboardInterrupt as exc:
        if status is not None:
            why = str(exc) if isinstance(exc, RunInterrupted) else "Ctrl-C (KeyboardInterrupt)"
            status.end("interrupted", reason=why)
            log.warning("run interrupted (%s); continue it with `lungfuse run CONFIG --resume "
                        "%s`", why, rdir)
        raise
    except BaseException as exc:
        if status is not None:
            status.end("failed", reason=_one_line(exc))
            log.error("run failed: %s", _one_line(exc))
        raise
    finally:
        stack.close()
        if status is not None:
            status.stop()
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        if set_env:
            os.environ.pop(RUN_DIR_ENV, None)
        if scratch is not None:
            scratch.cleanup()


def _write_report(rdir: Path, say: Callable[[str], Any]) -> None:
    """``report.html`` of a finished run; a report that cannot be built is a warning
    (the run's results are complete), with the command that retries it."""
    from lungfuse.core.report.run import render_run

    try:
        render_run(rdir)
    except Exception as exc:  # noqa: BLE001 - the results stand without their report
        say(f"warning: {rdir / 'report.html'} not written ({_one_line(exc)}); "
            f"retry with `lungfuse report {rdir}`")


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
        from lungfuse.core.fusion_model import FoldData, predict

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
    from lungfuse.core.fusion_model import FusionModel
    from lungfuse.core.state_io import first_line, legacy_state_error, load_state, load_torch

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
              help="Exact run folder, new or empty (needed under torchrun without a job id).")
@click.option("--resume", type=click.Path(path_type=Path), default=None, metavar="RUN_DIR",
              help="Continue the unfinished (killed, interrupted or failed) run folder "
                   "RUN_DIR of the same CONFIG: finished folds are kept, the rest trained.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Reuse/keep prepared features here (keyed by modality config, input "
                   "file contents, seed, fold).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def run_command(config: Path, output_dir: Path | None, run_dir: Path | None,
                resume: Path | None, cache_dir: Path | None, no_progress: bool) -> None:
    """Train and evaluate the fused model of CONFIG; artefacts go to a new run folder.

    Cohort → stratified patient-level splits → per-fold feature preparation on training
    patients → fusion model trained with Lightning → held-out predictions, calibration,
    metrics with 95% bootstrap CIs (overall and per availability pattern) → report.html.

    \b
    The run folder's run.json says running / complete / interrupted / failed (with the
    reason). A run that did not finish (Ctrl-C, kill, crash) is named by the next run
    into the same output folder; continue it, same seeds and same results, with
      lungfuse run CONFIG --resume RUN_DIR
    Ctrl-C stops a run with exit code 130; a run folder is never written over.
    """
    res = run_experiment(config, output_dir=output_dir, run_dir=run_dir, cache_dir=cache_dir,
                         progress=False if no_progress else None, resume=resume,
                         notify=lambda line: click.echo(line, err=True))
    if res is None:
        return
    kept = f" (resumed: {res.resumed} of {len(res.folds)} folds kept)" if resume else ""
    click.echo(f"run folder: {res.run_dir}{kept}")
    click.echo(f"held-out ({res.metrics['task']}): {_headline(res.metrics)}")
    if (res.run_dir / "report.html").exists():
        click.echo(f"report: {res.run_dir / 'report.html'}")
