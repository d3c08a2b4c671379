"""One fold: training the fusion model, the trained fold on disk, and the one prediction path.

:func:`train_fold` trains encoders + head with Lightning on a fold's training patients
(early stopping on the validation split, best checkpoint, CSV logs), fits the post-hoc
calibration on the validation split (binary) or the Breslow baseline on the training
split (survival), and predicts the held-out patients. :func:`load_fold_model` rebuilds a
fold of a finished run from its folder (nothing unpickled).

Both give a :class:`TrainedFold`, and :meth:`TrainedFold.predict_table` is the only code
that turns features of some patients into predictions: ``run`` writes it for each fold's
held-out patients (``predictions.parquet``), ``ablate`` for each variant, ``score`` for
new patients. Its columns::

    patient_id  seed  fold  pattern  present_<m>...
    binary:   [y]  logit  prob  prob_calibrated
    survival: [time  event]  risk  surv_<j>...      (S(t_j | x) at the run's time grid)
              risk_<h>...                           (1 - S(h | x) by each horizon, e.g.
                                                     risk_1y; NaN past the fold's follow-up)
    weight_<m>...                                   (heads that weigh modalities)

(``y`` / ``time``, ``event`` only where the patients' outcomes are known.)

Fold folder (``models/seed<S>-fold<K>``)::

    model.pt  meta.json  modality_state.{json,safetensors}  predictions.parquet
    checkpoints/best.ckpt  logs/metrics.csv
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lungfuse.core import atomic
from lungfuse.core.cohort import Cohort
from lungfuse.core.contracts import FusionPlugin, ModalityContext, ModalityPlugin
from lungfuse.core.errors import ConfigError, DataError
from lungfuse.core.features import PreparedModality
from lungfuse.core.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

    from lungfuse.core.fusion_model import FoldData
    from lungfuse.core.study import Study

__all__ = [
    "FoldResult",
    "TrainedFold",
    "load_fold_model",
    "make_trainer",
    "pattern_of",
    "quiet_lightning",
    "train_fold",
]

log = logging.getLogger("lungfuse")


def pattern_of(names: list[str], present: Mapping[str, Any], i: int) -> str:
    """Patient ``i``'s availability pattern: the present modalities joined by ``+``."""
    have = [m for m in names if bool(present[m][i])]
    return "+".join(have) if have else "none"


# ----------------------------------------------------------------------------- Lightning
@contextlib.contextmanager
def quiet_lightning(verbose: bool = False) -> Iterator[None]:
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
        warnings.filterwarnings("ignore", message=".*have no `val_dataloader`.*")
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
def torch_threads(trainer_cfg: Any) -> Iterator[None]:
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


def make_trainer(cfg: Any, fold_dir: Path, progress: bool, checkpoints: bool = True, *,
                 early_stopping: bool = True, max_epochs: int | None = None,
                 logger: bool = True, callbacks: list[Any] | None = None) -> Any:
    """A ``lightning.Trainer`` from the config's trainer section (passed through) with
    early stopping on ``val_loss``, a best-checkpoint callback and a CSV logger.

    ``early_stopping`` False (the inner_cv refit: a fixed epoch count, no validation
    data) trains ``max_epochs`` epochs without validating; ``logger`` False keeps no CSV
    log (inner models); ``callbacks`` are added to the trainer's own."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    t = cfg.trainer
    cbs: list[Any] = []
    if early_stopping:
        cbs.append(EarlyStopping(monitor="val_loss", patience=cfg.training.patience, mode="min"))
    if checkpoints:
        cbs.append(ModelCheckpoint(dirpath=fold_dir / "checkpoints", filename="best",
                                   monitor="val_loss", mode="min", save_top_k=1))
    cbs += list(callbacks or [])
    kwargs: dict[str, Any] = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, deterministic=t.deterministic,
        max_epochs=int(max_epochs or cfg.training.max_epochs), callbacks=cbs,
        logger=CSVLogger(save_dir=str(fold_dir), name="logs", version="") if logger else False,
        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=1, default_root_dir=str(fold_dir),
        enable_checkpointing=checkpoints,
    )
    if not early_stopping:
        kwargs["limit_val_batches"] = 0
    kwargs.update(t.options)
    try:
        return L.Trainer(**kwargs)
    except (ValueError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"trainer settings rejected by Lightning: {first}; check the "
                          "`trainer` section") from None


# ----------------------------------------------------------------------------- trained fold
@dataclass
class TrainedFold:
    """One fold's trained model (eval mode, CPU) with the modality plugins holding the
    states fitted on its training patients, and its ``meta`` (modalities in the head's
    order, feature columns, calibration or Breslow baseline, time grid)."""

    seed: int
    fold: int
    model: Any
    plugins: dict[str, ModalityPlugin]
    meta: dict[str, Any]

    @property
    def names(self) -> list[str]:
        """The fold's modalities, in the order the head was built with."""
        return [str(m) for m in self.meta["modalities"]]

    @property
    def risk_column(self) -> str:
        """The prediction table's risk: the calibrated probability (binary) or the
        log relative hazard (survival)."""
        return "prob_calibrated" if self.meta["task"] == "binary" else "risk"

    def align(self, modality: str, features: pd.DataFrame) -> pd.DataFrame:
        """``features`` of ``modality`` with the columns (order, missing ones NaN) the fold
        was trained on, as float32."""
        return features.reindex(columns=self.meta["feature_columns"][modality]).astype("float32")

    def features(self, patients: pd.DataFrame, ctx: ModalityContext) -> dict[str, pd.DataFrame]:
        """Each modality's fitted ``transform`` of ``patients`` (rows without outcomes),
        columns aligned with training."""
        out = {}
        for m, p in self.plugins.items():
            f = p.transform(patients, ctx)
            f.index = f.index.astype(str)
            out[m] = self.align(m, f)
        return out

    def fold_data(self, features: Mapping[str, pd.DataFrame], ids: list[str]) -> FoldData:
        """The tensors of patients ``ids`` (a patient without a modality's row has it
        absent), with no outcomes."""
        import numpy as np

        from lungfuse.core.fusion_model import FoldData

        return FoldData.build(ids, features, np.zeros(len(ids)))

    def predict_table(self, data: FoldData, *, outcomes: bool = False,
                      horizons: list[Any] | None = None) -> pd.DataFrame:
        """The prediction table of the patients in ``data`` (columns in the module
        docstring): the one path from features to predictions that run, ablate and score
        share. ``outcomes`` adds the patients' outcome columns from ``data`` (held-out
        patients of a run, whose outcomes are known). ``horizons``
        (:class:`~lungfuse.core.survival.Horizon`, survival) default to those the fold
        recorded in its ``meta`` (none in a run folder of an older lungfuse)."""
        import numpy as np
        import pandas as pd

        from lungfuse.core.calibration import apply_calibration, sigmoid
        from lungfuse.core.fusion_model import predict
        from lungfuse.core.survival import horizons_from_records, risk_at_horizons, survival_at

        names = self.names
        raw, w = predict(self.model, data)
        pred = pd.DataFrame({"patient_id": data.ids, "seed": self.seed, "fold": self.fold})
        pred["pattern"] = [pattern_of(names, data.present, i) for i in range(len(data))]
        for m in names:
            pred[f"present_{m}"] = data.present[m].numpy()
        if self.meta["task"] == "binary":
            if outcomes:
                pred["y"] = data.y.numpy().astype(int)
            pred["logit"] = raw
            pred["prob"] = sigmoid(raw)
            pred["prob_calibrated"] = apply_calibration(self.meta.get("calibration", {}), raw)
        else:
            if outcomes:
                pred["time"] = data.time.numpy()
                pred["event"] = data.y.numpy().astype(int)
            pred["risk"] = raw
            grid = self.meta.get("time_grid")
            if grid:
                s = survival_at(self.meta["breslow"], raw, np.asarray(grid, float))
                for j in range(len(grid)):
                    pred[f"surv_{j}"] = s[:, j]
            if horizons is None:
                horizons = horizons_from_records(self.meta.get("horizons"))
            if horizons:
                r = risk_at_horizons(self.meta["breslow"], raw, horizons)
                for j, h in enumerate(horizons):
                    pred[h.column] = r[:, j]
        if w is not None:
            for j, m in enumerate(names):
                pred[f"weight_{m}"] = w[:, j]
        return pred


# ----------------------------------------------------------------------------- training
@dataclass
class FoldResult:
    """A trained fold's held-out prediction table and its ``meta.json`` record."""

    seed: int
    fold: int
    predictions: pd.DataFrame
    meta: dict[str, Any]
    model: Any = field(default=None, repr=False)


def _targets(cohort: Cohort, ids: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    tab = cohort.table
    if cohort.task == "binary":
        return tab.loc[ids, cohort.outcome_columns[0]].to_numpy(float), None
    t, e = cohort.outcome_columns
    return tab.loc[ids, e].to_numpy(float), tab.loc[ids, t].to_numpy(float)


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
    """Train one fold on ``prepared`` features and predict its held-out patients through
    :meth:`TrainedFold.predict_table`. ``write`` saves what scoring needs in ``fold_dir``.
    Returns None on non-zero ranks of a distributed run (rank 0 predicts and writes)."""
    import lightning as L
    import numpy as np
    import torch

    from lungfuse.core.calibration import fit_calibration
    from lungfuse.core.fusion_model import (
        FoldData,
        FusionDataModule,
        FusionModel,
        FusionTask,
        predict,
    )
    from lungfuse.core.survival import fit_breslow, horizons_of

    names = list(prepared)
    feats = {m: prepared[m].features for m in names}

    def data(which: str) -> FoldData:
        y, t = _targets(cohort, ids[which])
        return FoldData.build(ids[which], feats, y, t)

    # no "val" patients: the split table was made for selection inner_cv (an old run
    # folder, or a holdout config, always has them)
    inner_cv = not ids.get("val")
    train, test = data("train"), data("test")
    val = None if inner_cv else data("val")
    base = cfg.seed + 1000 * seed + fold
    L.seed_everything(base, workers=True, verbose=False)
    plugins, n_features = {}, {}
    for m in names:
        cls, mcfg = mods[m]
        plugins[m] = cls(mcfg)
        plugins[m].load_state_dict(prepared[m].state)
        n_features[m] = int(prepared[m].features.shape[1])

    def build() -> tuple[Any, dict[str, int]]:
        encoders = {m: plugins[m].build_encoder(n_features[m]) for m in names}
        dims = {m: int(encoders[m].embedding_dim) for m in names}
        return FusionModel(encoders, fusion.build(dims, 1)), dims

    t0 = time.perf_counter()
    selection: dict[str, Any] | None = None
    search: dict[str, Any] | None = None
    if cfg.training.search.trials > 0:
        # Optuna inside the training fold: inner folds (inner_cv) or the validation split
        # (holdout) score each trial; test patients are in neither
        search, cfg = _search_fold(cfg, build, train, val, base, fold_dir, progress)
        best_record = search.pop("best_record")
        selection = best_record if inner_cv else None
        L.seed_everything(base, workers=True, verbose=False)
    if inner_cv and selection is None:
        selection = _select_epochs(cfg, build, train, base, fold_dir, progress)
        L.seed_everything(base, workers=True, verbose=False)
    model, dims = build()
    task = FusionTask(model, cfg.task.kind, cfg.training.lr, cfg.training.weight_decay)
    if selection is None:
        assert val is not None
        dm = FusionDataModule(train, val, cfg.training.batch_size, seed=cfg.seed + fold)
        with quiet_lightning(), torch_threads(cfg.trainer):
            trainer = make_trainer(cfg, fold_dir, progress)
            trainer.fit(task, datamodule=dm)
    else:  # one model on every training patient for the chosen epochs, no validation
        dm = FusionDataModule(train, train, cfg.training.batch_size, seed=cfg.seed + fold)
        with quiet_lightning(), torch_threads(cfg.trainer):
            trainer = make_trainer(cfg, fold_dir, progress, checkpoints=False,
                                   early_stopping=False, max_epochs=selection["epochs"])
            trainer.fit(task, train_dataloaders=dm.train_dataloader())
    fit_s = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return None
    ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
    if ckpt and Path(ckpt).exists():
        from lungfuse.core.state_io import load_torch

        task.load_state_dict(load_torch(ckpt, "Lightning checkpoint")["state_dict"])
    model = task.model.cpu().float().eval()
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
        "selection": "holdout" if selection is None else "inner_cv",
    }
    if search is not None:
        meta["search"] = search
    if selection is not None:
        meta["best_val_loss"] = float(np.mean(selection["val_losses"]))
        meta["inner_cv"] = {k: v for k, v in selection.items() if k not in ("oof_raw", "oof_y")}
    # what turns the raw output into the reported one, fitted on this fold's own patients
    if cfg.task.kind == "binary" and selection is None:
        raw_val, _ = predict(model, val)
        meta["calibration"] = fit_calibration(cfg.evaluation.calibration, raw_val,
                                              val.y.numpy())
    elif cfg.task.kind == "binary":
        # inner_cv has no validation patients: the calibration is fitted on the inner
        # models' out-of-fold outputs (each training patient predicted by the inner model
        # that did not train on it), a stand-in for the refitted model's held-out outputs
        meta["calibration"] = fit_calibration(cfg.evaluation.calibration,
                                              selection["oof_raw"], selection["oof_y"])
        meta["calibration_fitted_on"] = "inner_cv out-of-fold outputs"
    else:
        raw_train, _ = predict(model, train)
        meta["breslow"] = fit_breslow(raw_train, train.y.numpy(), train.time.numpy())
        if time_grid is not None and len(time_grid):
            meta["time_grid"] = [float(t) for t in time_grid]
        meta["horizons"] = [h.record() for h in horizons_of(cfg.evaluation)]  # risk by year
    trained = TrainedFold(seed, fold, model, plugins, meta)
    pred = trained.predict_table(test, outcomes=True)
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


def _best_epoch_callback() -> Any:
    """A Lightning callback that keeps the lowest ``val_loss``, the epoch it came at and a
    copy of the weights then (in memory: inner models write no checkpoint)."""
    import math

    from lightning.pytorch.callbacks import Callback

    class BestEpoch(Callback):
        def __init__(self) -> None:
            self.loss, self.epoch, self.state = math.inf, -1, None

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            v = trainer.callback_metrics.get("val_loss")
            if v is None or trainer.sanity_checking:
                return
            v = float(v)
            if v < self.loss:  # NaN never improves
                self.loss, self.epoch = v, int(trainer.current_epoch)
                self.state = {k: t.detach().clone() for k, t in pl_module.state_dict().items()}

    return BestEpoch()


def _select_epochs(cfg: Any, build: Any, train: FoldData, base: int, fold_dir: Path,
                   progress: bool) -> dict[str, Any]:
    """``training.selection`` inner_cv: the epoch count of a fold, chosen on its training
    patients alone.

    The training patients are split into ``training.inner_folds`` seeded, stratified
    folds (:func:`lungfuse.core.splits.inner_splits`, on the label or event flag); each
    inner model (``build()``: fresh encoders + head) trains on the other folds with early
    stopping on its own fold, and its best epoch, best validation loss and its outputs on
    its fold at that epoch are kept. The chosen count is the median of the best epochs
    (rounded half up, at least 1): robust to one inner fold that stops at once or runs
    long. Returns the record meta.json keeps plus ``oof_raw``/``oof_y`` (the out-of-fold
    outputs binary calibration is fitted on)."""
    import lightning as L
    import numpy as np

    from lungfuse.core.fusion_model import FusionDataModule, FusionTask, predict
    from lungfuse.core.splits import inner_splits

    parts = inner_splits(train.y.numpy(), cfg.training.inner_folds, base)
    best, losses, trained, sizes = [], [], [], []
    oof_raw = np.full(len(train), np.nan)
    for i, (fit_idx, val_idx) in enumerate(parts):
        L.seed_everything(base + 7919 * (i + 1), workers=True, verbose=False)
        model, _ = build()
        task = FusionTask(model, cfg.task.kind, cfg.training.lr, cfg.training.weight_decay)
        fit, val = train.subset(fit_idx), train.subset(val_idx)
        dm = FusionDataModule(fit, val, cfg.training.batch_size, seed=base + i + 1)
        keep = _best_epoch_callback()
        with quiet_lightning(), torch_threads(cfg.trainer):
            trainer = make_trainer(cfg, fold_dir, progress, checkpoints=False, logger=False,
                                   callbacks=[keep])
            trainer.fit(task, datamodule=dm)
        if keep.state is None:
            raise DataError(f"{fold_dir.name}: inner model {i} never gave a finite validation "
                            "loss; lower training.lr or use training.selection: holdout")
        task.load_state_dict(keep.state)
        oof_raw[val_idx], _ = predict(task.model.cpu().float().eval(), val)
        best.append(keep.epoch + 1)  # epochs trained to reach the best one
        losses.append(round(keep.loss, 6))
        trained.append(int(trainer.current_epoch))
        sizes.append([len(fit_idx), len(val_idx)])
    epochs = max(1, int(np.floor(np.median(best) + 0.5)))
    return {"folds": len(parts), "best_epochs": best, "val_losses": losses,
            "epochs_trained": trained, "patients": sizes, "epochs": epochs,
            "summary": "median", "oof_raw": oof_raw, "oof_y": train.y.numpy()}


def _holdout_loss(cfg: Any, build: Any, train: FoldData, val: FoldData, base: int,
                  fold_dir: Path, progress: bool) -> float:
    """Best validation loss of a model trained on ``train`` with early stopping on
    ``val`` (both parts of the outer training fold): a search trial under holdout."""
    import lightning as L

    from lungfuse.core.fusion_model import FusionDataModule, FusionTask

    L.seed_everything(base, workers=True, verbose=False)
    model, _ = build()
    task = FusionTask(model, cfg.task.kind, cfg.training.lr, cfg.training.weight_decay)
    dm = FusionDataModule(train, val, cfg.training.batch_size, seed=base + 1)
    keep = _best_epoch_callback()
    with quiet_lightning(), torch_threads(cfg.trainer):
        trainer = make_trainer(cfg, fold_dir, progress, checkpoints=False, logger=False,
                               callbacks=[keep])
        trainer.fit(task, datamodule=dm)
    return float(keep.loss)


def _search_fold(cfg: Any, build: Any, train: FoldData, val: FoldData | None, base: int,
                 fold_dir: Path, progress: bool) -> tuple[dict[str, Any], Any]:
    """``training.search`` for one fold (:mod:`lungfuse.core.search`): returns the search
    record (with ``best_record``, the winning trial's inner-CV selection, or None) and the
    config with the winning settings."""
    import math

    import numpy as np

    from lungfuse.core.search import run_search, with_params

    def evaluate(trial_cfg: Any) -> tuple[float, Any]:
        if val is None:  # inner_cv: the inner folds score the trial and give its epochs
            try:
                sel = _select_epochs(trial_cfg, build, train, base, fold_dir, progress)
            except DataError:  # no finite inner loss with these settings
                return math.inf, None
            return float(np.mean(sel["val_losses"])), sel
        return _holdout_loss(trial_cfg, build, train, val, base, fold_dir, progress), None

    res = run_search(cfg, base, evaluate, where=fold_dir.name)
    return res, with_params(cfg, res["best_params"])


# ----------------------------------------------------------------------------- reloading
def load_fold_model(run_dir: Path, seed: int, fold: int, registry: Registry | None = None,
                    plugins: Iterable[type] | None = None, *,
                    study: Study | None = None) -> TrainedFold:
    """Rebuild fold (seed, fold) of a finished run: resolved config → plugins with their
    fitted state → encoders + head with the trained weights. ``study`` (the run folder's
    :class:`~lungfuse.core.study.Study`) saves reading the config again for every fold.

    Nothing is unpickled: the fitted state is read by :func:`lungfuse.core.state_io.
    load_state` and the weights with ``weights_only=True``. A fold file that is missing,
    corrupt or foreign, and a folder of an older lungfuse (``modality_state.pkl``), raise
    one line naming the file and how to re-create the run."""
    from lungfuse.core.fusion_model import FusionModel
    from lungfuse.core.state_io import first_line, legacy_state_error, load_state, load_torch
    from lungfuse.core.study import fusion_plugin, modality_classes, read_run_config

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    remedy = f"re-create the run with `lungfuse run {cfg_path}`"
    if study is not None:
        mods, fusion = study.modalities, study.fusion
    else:
        cfg, reg = read_run_config(run_dir, registry, plugins)
        mods, fusion = modality_classes(cfg, reg), fusion_plugin(cfg, reg)
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
    model = FusionModel(encoders, fusion.build(dims, 1))
    ck = load_torch(fdir / "model.pt", "fold model", remedy)
    try:
        model.load_state_dict(ck["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise DataError(f"{fdir / 'model.pt'}: weights do not fit the run's config "
                        f"({first_line(exc, 120)}); {remedy}") from None
    return TrainedFold(seed, fold, model.eval(), insts, meta)
