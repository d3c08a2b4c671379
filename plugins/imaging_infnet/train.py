"""Supervised Inf-Net training with Lightning, and lungfuse segmentation checkpoints.

Every checkpoint (Lightning ``.ckpt`` and the plain lungfuse ``.pt``) stores the network
hyper-parameters, the slice settings, and ``training_patients``: the patient ids whose
slices trained it (``None`` = unknown, e.g. an imported authors' checkpoint). The imaging
modality refuses to evaluate patients that a checkpoint was trained on.

Extension points for semi-supervised training: :class:`SliceDataModule` rebuilds its
train loader from ``self.train_pool`` (a growable :class:`~.dataset.SlicePool`) every
epoch; :meth:`SliceDataModule.add_pseudo` appends pseudo-labelled slices (with per-pixel
weights); :func:`fit` resumes from a Lightning checkpoint and can continue from given
weights with a new learning rate.

Distributed training (``segment train --processes N``, torchrun, SLURM): :func:`fit` with
``ranks`` of more than one process runs Lightning's DDP strategy; each rank trains on a
disjoint shard of the training slices per epoch (:class:`SliceDataModule`, a seeded
``DistributedSampler``), gradients are all-reduced, and only global rank 0 writes the
checkpoints. ``batch_size`` is per rank (the effective batch is ``batch_size * world``).
One process (the default) is the single-device path it always was.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from lungfuse.core.atomic import atomic_path
from lungfuse.core.errors import DataError

from .config import SliceSettings, TrainSettings
from .dataset import SliceDataset, SlicePool
from .losses import infnet_loss
from .metrics import segmentation_metrics
from .network import InfNet
from .ranks import Ranks

log = logging.getLogger("lungfuse.imaging")
CHECKPOINT_FORMAT = "lungfuse-infnet/1"


class InfNetModule(L.LightningModule):
    """Inf-Net + the reference loss (deep supervision, edge BCE), Adam, step decay.

    Multi-scale training (reference: rates 0.75/1/1.25): each batch is resized to
    ``round(rate * S / 32) * 32`` pixels (image bilinear, targets re-thresholded).
    """

    def __init__(self, backbone: str = "res2net50d", channel: int = 32, lr: float = 1e-4,
                 lr_decay_every: int = 50, multiscale: Sequence[float] = (1.0,),
                 slice_settings: dict[str, Any] | None = None,
                 training_patients: list[str] | None = None,
                 pretrained_weights: str | None = None, n_class: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = InfNet(backbone, channel=channel, n_class=n_class,
                            pretrained_weights=pretrained_weights)
        self.training_patients = sorted(set(training_patients)) if training_patients else []
        self._val: dict[str, list[Tensor]] = {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model(x)

    def _rescale(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rates = list(self.hparams.multiscale or [1.0])
        rate = random.choice(rates)
        if rate == 1.0:
            return batch
        size = int(round(batch["image"].shape[-1] * rate / 32) * 32)
        size = max(size, 32)
        out = {"image": F.interpolate(batch["image"], size=(size, size), mode="bilinear",
                                      align_corners=True)}
        for k in ("mask", "edge"):
            out[k] = (F.interpolate(batch[k], size=(size, size), mode="bilinear",
                                    align_corners=True) > 0.5).float()
        out["valid"] = F.interpolate(batch["valid"], size=(size, size), mode="nearest")
        return out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        b = self._rescale(batch)
        valid = b["valid"] if not bool((b["valid"] == 1).all()) else None
        loss, parts = infnet_loss(self.model(b["image"]), b["mask"], b["edge"], valid)
        self.log("train_loss", loss, prog_bar=True, batch_size=b["image"].shape[0])
        for k, v in parts.items():
            self.log(f"train_{k}", v, batch_size=b["image"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        maps = self.model(batch["image"])
        loss, _ = infnet_loss(maps, batch["mask"], batch["edge"])
        prob = torch.sigmoid(maps[3])
        m = segmentation_metrics(prob, batch["mask"], n_thresholds=32)
        n = batch["image"].shape[0]
        sync = self.trainer.world_size > 1  # every rank validates the same slices
        self.log("val_loss", loss, prog_bar=True, batch_size=n, sync_dist=sync)
        self.log("val_dice", m["dice"].mean(), prog_bar=True, batch_size=n, sync_dist=sync)
        self.log("val_mae", m["mae"].mean(), batch_size=n, sync_dist=sync)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.model.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.hparams.lr_decay_every,
                                                gamma=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["training_patients"] = list(self.training_patients)
        checkpoint["lungfuse_format"] = CHECKPOINT_FORMAT

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.training_patients = list(checkpoint.get("training_patients") or [])

    def on_train_epoch_start(self) -> None:
        dl = self.trainer.train_dataloader
        ds = getattr(dl, "dataset", None)
        if isinstance(ds, SliceDataset):
            ds.epoch = self.current_epoch


Tensor = torch.Tensor


class SliceDataModule(L.LightningDataModule):
    """Train/val slice pools. The train loader is rebuilt from ``train_pool`` each epoch
    (``reload_dataloaders_every_n_epochs=1`` in :func:`fit`), so a pool grown between
    epochs or rounds is picked up.

    With ``ranks`` of several processes, rank ``r`` draws its batches from its own shard
    (:meth:`shard_sampler`): the epoch's seeded permutation dealt over the ranks, so the
    shards are disjoint, together every slice (less ``len % world`` of them, a different
    few each epoch, so that every rank takes the same number of steps), and the same in
    every run with the same seed. ``batch_size`` is per rank."""

    def __init__(self, train_pool: SlicePool, val_pool: SlicePool | None,
                 mean: Sequence[float], std: Sequence[float], batch_size: int = 24,
                 augment: bool = True, num_workers: int = 0, seed: int = 0,
                 ranks: Ranks | None = None) -> None:
        super().__init__()
        self.train_pool, self.val_pool = train_pool, val_pool
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size, self.augment = batch_size, augment
        self.num_workers, self.seed = num_workers, seed
        self.ranks = ranks or Ranks()

    def shard_sampler(self, dataset: SliceDataset, epoch: int) -> DistributedSampler:
        """This rank's shard of ``dataset`` in ``epoch`` (``drop_last``: disjoint shards of
        equal length, so no rank waits for another's extra step)."""
        sampler = DistributedSampler(dataset, num_replicas=self.ranks.world,
                                     rank=self.ranks.rank, shuffle=True, seed=self.seed,
                                     drop_last=True)
        sampler.set_epoch(epoch)
        return sampler

    def add_pseudo(self, images: Tensor, masks: Tensor, weights: Tensor | None = None,
                   **meta: Any) -> None:
        """Append pseudo-labelled slices to the training pool (see SlicePool.add_pseudo)."""
        self.train_pool.add_pseudo(images, masks, weights, **meta)

    def train_dataloader(self) -> DataLoader:
        ds = SliceDataset(self.train_pool, self.mean, self.std, train=self.augment, seed=self.seed)
        if self.ranks.world > 1:
            epoch = self.trainer.current_epoch if self.trainer is not None else 0
            sampler = self.shard_sampler(ds, epoch)
            return DataLoader(ds, batch_size=self.batch_size, sampler=sampler,
                              num_workers=self.num_workers,
                              drop_last=len(sampler) > self.batch_size)
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=True, generator=g,
                          num_workers=self.num_workers, drop_last=len(ds) > self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_pool:
            return []
        ds = SliceDataset(self.val_pool, self.mean, self.std, train=False)
        return DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers)


def fit(train_pool: SlicePool, val_pool: SlicePool | None, slices: SliceSettings,
        settings: TrainSettings, out_dir: Path, training_patients: Sequence[str],
        resume: Path | None = None, init_weights: InfNet | None = None,
        progress: bool = True, max_epochs: int | None = None,
        callbacks: Sequence[L.Callback] = (),
        ranks: Ranks | None = None) -> tuple[InfNetModule, Path]:
    """Train (or resume) and write ``out_dir/infnet.pt`` (lungfuse format) and Lightning
    checkpoints under ``out_dir/lightning`` (``last.ckpt`` resumes). ``callbacks`` are
    extra Lightning callbacks (e.g. the semi-supervised EMA teacher).

    ``ranks`` (from :func:`.ranks.current`) of several processes: DDP over them
    (:func:`ddp_placement`); every rank must call this with the same pool and settings;
    only global rank 0 writes ``infnet.pt`` and the Lightning checkpoints (the others
    return the path rank 0 writes)."""
    from .progress import enabled

    if not len(train_pool):
        raise DataError("no training slices: check the CT root, annotations and patient ids")
    world = ranks.world if ranks is not None else 1
    if len(train_pool) < world:
        raise DataError(f"{len(train_pool)} training slice(s) cannot be shared over {world} "
                        "processes; use fewer processes or more scans")
    L.seed_everything(settings.seed, workers=True, verbose=False)
    module = InfNetModule(settings.backbone, settings.channel, settings.lr,
                          settings.lr_decay_every, list(settings.multiscale),
                          slices.model_dump(), list(training_patients),
                          str(settings.pretrained_weights) if settings.pretrained_weights else None)
    if init_weights is not None:
        module.model.load_state_dict(init_weights.state_dict())
    dm = SliceDataModule(train_pool, val_pool, module.model.input_mean, module.model.input_std,
                         settings.batch_size, settings.augment, settings.num_workers,
                         settings.seed, ranks)
    ckpt_dir = Path(out_dir) / "lightning"
    cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0)
    import warnings

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    quiet = not enabled(progress)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        if quiet:
            logging.getLogger(name).setLevel(logging.WARNING)
    trainer = L.Trainer(
        max_epochs=max_epochs or settings.epochs, **ddp_placement(world),
        precision=settings.precision,
        gradient_clip_val=settings.grad_clip, logger=False, callbacks=[cb, *callbacks],
        enable_progress_bar=enabled(progress), enable_model_summary=False,
        reload_dataloaders_every_n_epochs=1, deterministic=False, num_sanity_val_steps=0,
        log_every_n_steps=1, limit_val_batches=1.0 if val_pool else 0)
    if resume:
        from lungfuse.core.state_io import load_torch

        load_torch(resume, "Lightning checkpoint to resume")  # one-line refusal of a bad file
    import time

    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None,
                weights_only=True)
    fit_seconds = round(time.perf_counter() - t0, 3)
    out = Path(out_dir) / "infnet.pt"
    if not trainer.is_global_zero:  # rank 0 writes the one checkpoint
        return module, out
    extra: dict[str, Any] = {"epochs": trainer.current_epoch, "n_train_slices": len(train_pool),
                             "fit_seconds": fit_seconds}
    if world > 1:
        extra["world_size"] = world
    out = save_checkpoint(out, module.model, training_patients=module.training_patients,
                          slices=slices, extra=extra)
    return module, out


#: Set by ``segment train --processes N`` for the ranks it starts: Lightning's device
#: kind for them (``cpu``: N CPU processes with gloo), instead of ``auto``.
ACCELERATOR_ENV = "LUNGFUSE_TRAIN_ACCELERATOR"


def ddp_placement(world: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Lightning ``Trainer`` keywords that place ``world`` processes.

    One process: one CPU device, as segmenter training always ran. Several: the DDP
    strategy, ``devices`` = processes per node and ``num_nodes`` = world / that, read
    from the launcher (torchrun's ``LOCAL_WORLD_SIZE``, SLURM's ``SLURM_NNODES``), so
    Lightning's own environment check (``devices * num_nodes == WORLD_SIZE``) holds and
    Lightning starts no processes itself. The device kind is ``auto`` (one GPU per rank
    where there are GPUs, NCCL; else CPU with gloo) unless ``LUNGFUSE_TRAIN_ACCELERATOR``
    says otherwise. Lightning's sampler replacement is off: :class:`SliceDataModule`
    shards the slices itself, with the training seed."""
    if world <= 1:
        return {"accelerator": "cpu", "devices": 1}
    env = dict(os.environ if env is None else env)
    if env.get("LOCAL_WORLD_SIZE"):
        per_node = int(env["LOCAL_WORLD_SIZE"])
    elif env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES"):
        per_node = world // int(env.get("SLURM_NNODES") or env["SLURM_JOB_NUM_NODES"])
    else:
        per_node = world
    if per_node < 1 or world % per_node:
        raise DataError(f"{world} processes cannot be laid out as {per_node} per node; check "
                        "the launcher's LOCAL_WORLD_SIZE / SLURM task counts")
    return {"accelerator": env.get(ACCELERATOR_ENV) or "auto", "devices": per_node,
            "num_nodes": world // per_node, "strategy": "ddp",
            "use_distributed_sampler": False}


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, model: InfNet, training_patients: Sequence[str] | None,
                    slices: SliceSettings | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Plain lungfuse checkpoint, written atomically."""
    obj = {
        "format": CHECKPOINT_FORMAT,
        "hparams": model.hparams_dict,
        "state_dict": model.state_dict(),
        "training_patients": None if training_patients is None else sorted(set(training_patients)),
        "slices": (slices or SliceSettings()).model_dump(),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> tuple[InfNet, dict[str, Any]]:
    """Load a lungfuse ``.pt``, a Lightning ``.ckpt`` from :func:`fit`, or an authors'
    Inf-Net ``.pth``. Returns the model (eval mode) and metadata with
    ``training_patients`` (``None`` when unknown) and ``slices`` settings."""
    from lungfuse.core.state_io import load_torch

    path = Path(path)
    # weights only: a downloaded .pth that needs arbitrary objects is refused, not run
    obj = load_torch(path, "segmentation checkpoint")
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        hp = obj["hparams"]
        model = InfNet.from_hparams(hp, str(path))
        model.load_state_dict(obj["state_dict"], strict=True)
        meta = {"training_patients": obj.get("training_patients"),
                "slices": SliceSettings(**obj.get("slices", {})), "extra": obj.get("extra", {})}
        return model.eval(), meta
    if isinstance(obj, dict) and obj.get("lungfuse_format") == CHECKPOINT_FORMAT:
        hp = obj["hyper_parameters"]
        model = InfNet.from_hparams(hp, str(path))
        sd = {k.removeprefix("model."): v for k, v in obj["state_dict"].items()}
        model.load_state_dict(sd, strict=True)
        meta = {"training_patients": obj.get("training_patients"),
                "slices": SliceSettings(**(hp.get("slice_settings") or {})), "extra": {}}
        return model.eval(), meta
    from .reference import load_reference_checkpoint

    model = load_reference_checkpoint(path)
    return model, {"training_patients": None, "slices": SliceSettings(), "extra": {}}


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
