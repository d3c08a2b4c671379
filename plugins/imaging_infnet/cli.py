"""``lungfuse segment train|predict|evaluate`` and ``lungfuse infnet import``.

Config: a YAML file validated by :class:`~.config.SegmentConfig` (paths relative to the
file). User errors are ``LungfuseError`` subclasses, which the core CLI prints as one line
with exit code 2.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from lungfuse.core.errors import ConfigError, DataError

log = logging.getLogger("lungfuse.imaging")


def load_config(path: Path, **overrides: object):
    """Read and validate a segment config YAML (unknown keys are errors)."""
    import yaml
    from pydantic import ValidationError

    from .config import SegmentConfig

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return SegmentConfig.model_validate(raw, context={"base_dir": Path(path).resolve().parent})
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        raise ConfigError(f"{path}: {where}: {e['msg']}") from None


def _selected(cfg) -> list[tuple[str, Path]]:
    from .ctio import find_volumes

    vols = find_volumes(cfg.ct_root)
    if cfg.series:
        missing = [u for u in cfg.series if u not in vols]
        for u in missing:
            log.warning("series %s: no volume under %s; skipped", u, cfg.ct_root)
        vols = {u: vols[u] for u in cfg.series if u in vols}
    if not vols:
        raise DataError(f"{cfg.ct_root}: no CT volumes found (.mhd/.nii/.nrrd or DICOM folders)")
    return sorted(vols.items())


def _patients(cfg) -> dict[str, str]:
    """series uid -> patient id (from the clinical table; else the uid itself)."""
    if cfg.clinical is None:
        return {}
    import pandas as pd

    df = pd.read_parquet(cfg.clinical, columns=None)
    if "patient_id" in df.columns:
        df = df.set_index("patient_id")
    if "seriesuid" not in df.columns:
        raise DataError(f"{cfg.clinical}: no 'seriesuid' column to link CT to patients")
    return {str(u): str(p) for p, u in df["seriesuid"].items() if u is not None and u == u}


def _cases(cfg, items, progress: bool):
    from .ctio import check_annotations, find_volumes, read_annotations

    ann = read_annotations(cfg.annotations) if cfg.annotations else None
    if ann is not None:
        ann = check_annotations(ann, find_volumes(cfg.ct_root), str(cfg.annotations))
        ann = ann[ann["seriesuid"].isin({u for u, _ in items})]
    from .ctio import load_cases

    return load_cases(items, ann, cfg.masks_dir, cfg.train.refine_hu, _patients(cfg),
                      progress=progress)


@click.group()
def segment() -> None:
    """Inf-Net CT nodule segmentation: train, predict, evaluate."""


#: The status of a ``segment train`` run in its out_dir: ``running`` (pid, host,
#: heartbeat), then ``complete``, or ``failed`` / ``interrupted`` with the reason (the
#: fields of a lungfuse run folder's run.json, core/rundir.py: RunStatus).
TRAIN_STATUS = "train.json"
#: Set for the ranks that ``--processes`` starts: their launcher keeps train.json.
_STATUS_BY_LAUNCHER_ENV = "LUNGFUSE_TRAIN_STATUS_BY_LAUNCHER"


def _train_status(out_dir: Path, config: Path, world: int):
    """A :class:`~lungfuse.core.rundir.RunStatus` for ``out_dir/train.json``, written now
    (``running``) and kept fresh by its heartbeat until ``end``."""
    import os
    import socket
    import time

    from lungfuse.core.atomic import ensure_dir
    from lungfuse.core.rundir import RunStatus

    ensure_dir(out_dir, "segment out_dir")
    status = RunStatus(Path(out_dir) / TRAIN_STATUS, {
        "command": "segment train", "config": str(Path(config).resolve()), "status": "running",
        "world_size": world, "started": time.time(), "pid": os.getpid(),
        "host": socket.gethostname()})
    status.update()
    status.start_heartbeat()
    return status


def _end_status(status, exc: BaseException) -> None:
    from lungfuse.core.rundir import one_line

    if status is not None:
        status.end("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                   reason=one_line(exc))


@segment.command("train")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--epochs", type=int, default=None, help="Override train.epochs.")
@click.option("--resume", type=click.Path(exists=True, path_type=Path), default=None,
              help="Lightning checkpoint (out_dir/lightning/last.ckpt) to resume from.")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train on this many CPU processes on this machine (DDP, gloo; "
              "train.batch_size is per process). Under torchrun or srun the launcher's "
              "ranks are used instead (docs/scaling.md). Supervised training only.")
@click.option("--no-progress", is_flag=True)
def train_cmd(config: Path, epochs: int | None, resume: Path | None, processes: int,
              no_progress: bool) -> None:
    """Train Inf-Net on the scans of CONFIG (supervised, or `mode: semi`); writes
    out_dir/infnet.pt and out_dir/train.json (running, complete or failed)."""
    import os
    import time

    from . import ranks as rk

    cfg = load_config(config)
    if epochs is not None:
        cfg.train.epochs = epochs
    if cfg.annotations is None and cfg.masks_dir is None:
        raise ConfigError(f"{config}: training needs `annotations` or `masks_dir`")
    here = rk.current()
    world = here.world if here.world > 1 else processes
    if cfg.mode == "semi" and world > 1:
        raise ConfigError(f"{config}: semi-supervised training (mode: semi) runs in one "
                          f"process, not {world}; drop --processes or launch one task "
                          "(docs/scaling.md)")
    if processes > 1 and here.world == 1:  # start the ranks ourselves; they train
        from .train import ACCELERATOR_ENV

        _selected(cfg)  # no scans at all: one line now, before any process starts
        argv = ["segment", "train", str(config), "--no-progress"]
        argv += ["--epochs", str(epochs)] if epochs is not None else []
        argv += ["--resume", str(resume)] if resume else []
        t0 = time.perf_counter()
        status = _train_status(cfg.out_dir, config, processes)
        try:
            rk.spawn(argv, processes, extra_env={ACCELERATOR_ENV: "cpu",
                                                 _STATUS_BY_LAUNCHER_ENV: "1"},
                     lost="no checkpoint was written; see "
                     f"{Path(cfg.out_dir) / TRAIN_STATUS}")
        except BaseException as exc:
            _end_status(status, exc)
            raise
        status.end("complete", checkpoint=str(Path(cfg.out_dir) / "infnet.pt"),
                   seconds=round(time.perf_counter() - t0, 2))
        return
    owns_status = here.main and not os.environ.get(_STATUS_BY_LAUNCHER_ENV)
    _train_here(cfg, config, resume, no_progress, here, owns_status)


def _train_here(cfg, config: Path, resume: Path | None, no_progress: bool, here,
                owns_status: bool) -> None:
    """This process's part of ``segment train``: all of it, or one rank's under DDP
    (every rank loads the same scans and builds the same slice pool; :func:`.train.fit`
    shards the slices). The status file is begun once the input is read, so a refused
    input leaves no output folder behind."""
    import time

    import numpy as np

    from .dataset import build_pool
    from .train import fit

    progress = not no_progress and here.main
    cases = _cases(cfg, _selected(cfg), progress)
    if not cases:
        raise DataError(f"{config}: no readable scan to train on")
    t0 = time.perf_counter()
    if cfg.mode == "semi":  # pseudo-label rounds (see semi.py), one process
        from .semi import train_semi

        status = None

        def begin() -> None:  # the inputs are checked: from here on the folder says
            nonlocal status
            status = _train_status(cfg.out_dir, config, 1) if owns_status else None

        try:
            ckpt, st = train_semi(cfg, cases, progress=progress, begin=begin)
        except BaseException as exc:
            _end_status(status, exc)
            raise
        if status is not None:
            status.end("complete", checkpoint=str(ckpt),
                       seconds=round(time.perf_counter() - t0, 2))
        h = st.history[-1] if st.history else None
        after = h.val_dice if h else float("nan")
        dice = ("no validation scans (train.val_fraction 0)" if after != after and
                st.final_val_dice != st.final_val_dice else
                f"val Dice after rounds {after:.4f}, final {st.final_val_dice:.4f}")
        click.echo(f"semi-supervised ({cfg.semi.method}): {st.n_rounds} round(s), "
                   f"{len(st.labelled)} labelled + {len(st.candidates)} unlabelled slices; "
                   f"{dice}; checkpoint: {ckpt}")
        return
    rng = np.random.default_rng(cfg.train.seed)
    order = rng.permutation(len(cases))
    n_val = int(round(cfg.train.val_fraction * len(cases))) if len(cases) > 1 else 0
    val = [cases[i] for i in order[:n_val]]
    trn = [cases[i] for i in order[n_val:]]
    t = cfg.train
    pool = build_pool(trn, cfg.slices, t.negatives_per_positive, t.seed, t.max_slices)
    vpool = build_pool(val, cfg.slices, t.negatives_per_positive, t.seed) if val else None
    ids = sorted({c.patient_id or c.uid for c in trn} | {c.patient_id or c.uid for c in val})
    status = _train_status(cfg.out_dir, config, here.world) if owns_status else None
    try:
        _, ckpt = fit(pool, vpool, cfg.slices, t, cfg.out_dir, ids,
                      resume=resume or cfg.resume, progress=progress,
                      ranks=here if here.world > 1 else None)
    except BaseException as exc:
        _end_status(status, exc)
        raise
    if status is not None:
        status.end("complete", checkpoint=str(ckpt), n_train_slices=len(pool),
                   seconds=round(time.perf_counter() - t0, 2))
    if here.main:
        click.echo(f"trained on {len(pool)} slices from {len(trn)} scans "
                   f"({len(val)} for validation)"
                   + (f" over {here.world} processes" if here.world > 1 else "")
                   + f"; checkpoint: {ckpt}")


def _predictor(cfg, checkpoint: Path | None):
    from .infer import Predictor
    from .train import load_checkpoint

    ck = checkpoint or cfg.checkpoint
    if ck is None:
        raise ConfigError("no checkpoint: give --checkpoint or `checkpoint:` in the config")
    model, meta = load_checkpoint(ck)
    calib = (_calibration(cfg, meta["slices"]) if cfg.fast.enabled and cfg.fast.int8
             else None)
    return Predictor(model, meta["slices"], cfg.fast, calibration=calib), meta


def _calibration(cfg, slices):
    """``fast.int8``'s calibration slices: ``calibration_slices`` slices evenly spread over
    the ``calibration_series`` scans (windowed as the network sees them). A calibration
    scan that is missing, unreadable or also among the scans this command segments stops
    it with one line, before anything is written."""
    import numpy as np
    import torch

    from .ctio import find_volumes, read_volume
    from .dataset import volume_inputs

    vols = find_volumes(cfg.ct_root)
    uids = list(cfg.calibration_series)
    missing = [u for u in uids if u not in vols]
    if missing:
        raise ConfigError(f"calibration_series: no volume for {missing[:3]} under "
                          f"{cfg.ct_root}; list training scans that are there")
    predicted = set(cfg.series) if cfg.series else set(vols)
    both = sorted(predicted & set(uids))
    if both:
        raise ConfigError(f"calibration_series {both[:3]} would also be segmented (series: "
                          f"{'all scans under ct_root' if not cfg.series else 'listed'}); "
                          f"int8 is calibrated on training scans only: list the scans to "
                          f"segment in `series`, without the calibration scans")
    per_scan = -(-cfg.calibration_slices // len(uids))
    xs = []
    for u in uids:
        try:
            vol = read_volume(vols[u])
        except DataError as exc:
            raise ConfigError(f"calibration_series: scan {u} cannot be read ({exc})") from None
        depth = vol.array.shape[0]
        zs = np.unique(np.linspace(0, depth - 1, min(per_scan, depth)).round().astype(int))
        xs.append(volume_inputs(vol, slices.model_copy(update={"mode": "full"}), zs)[1])
    return torch.cat(xs)[:cfg.calibration_slices]


def _overlay(path: Path, vol, prob, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from lungfuse.core.atomic import atomic_path

    m = prob >= threshold
    z = int(np.argmax(m.reshape(m.shape[0], -1).sum(1))) if m.any() else vol.array.shape[0] // 2
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.imshow(np.clip(vol.array[z], -1000, 400), cmap="gray")
    if m[z].any():
        ax.contour(m[z], levels=[0.5], colors="red", linewidths=1)
    ax.set_title(f"slice {z}")
    ax.axis("off")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


@segment.command("predict")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--no-fast", is_flag=True, help="Float32 eager instead of the fast path.")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the scans over this many processes on this machine (under "
              "torchrun or srun the launcher's ranks are used instead; docs/scaling.md).")
@click.option("--no-progress", is_flag=True)
def predict_cmd(config: Path, checkpoint: Path | None, no_fast: bool, processes: int,
                no_progress: bool) -> None:
    """Segment every scan: out_dir/masks/<uid>.mhd (aligned) + out_dir/overlays/<uid>.png,
    and out_dir/predict.json (which rank wrote which scan, which were skipped)."""
    import numpy as np

    from lungfuse.core.atomic import write_json

    from . import ranks as rk
    from .ctio import read_volume, write_volume
    from .progress import bar

    cfg = load_config(config)
    here = rk.current()
    if processes > 1 and here.world == 1:  # start the ranks ourselves, then report
        argv = ["segment", "predict", str(config), "--no-progress"]
        argv += ["--checkpoint", str(checkpoint)] if checkpoint else []
        argv += ["--no-fast"] if no_fast else []
        rk.spawn(argv, processes)
        return
    if no_fast:
        cfg.fast.enabled = False
    # the checkpoint first: one that is refused (foreign, crafted, damaged) is the error to
    # report, before the CT folder is searched
    pred, _ = _predictor(cfg, checkpoint)
    items = _selected(cfg)
    mine = rk.share(items, here, key=lambda it: it[0])
    import time

    written: list[str] = []
    skipped: dict[str, str] = {}
    t0 = time.perf_counter()
    with rk.process_group(here) as dist:
        for uid, path in bar(mine, desc="segmenting", enabled=not no_progress and here.main):
            try:
                vol = read_volume(path)
            except DataError as exc:
                log.warning("skipping scan %s: %s", uid, exc)
                click.echo(f"skipped {uid}: {exc}", err=True)
                skipped[uid] = str(exc)
                continue
            prob = pred.predict_volume(vol)
            mask = (prob >= cfg.threshold).astype(np.uint8)
            write_volume(cfg.out_dir / "masks" / f"{uid}.mhd", vol.like(mask))
            if cfg.overlays:
                _overlay(cfg.out_dir / "overlays" / f"{uid}.png", vol, prob, cfg.threshold)
            written.append(uid)
        reports = rk.gather(dist, {"rank": here.rank, "written": written, "skipped": skipped,
                                   "seconds": time.perf_counter() - t0}, here)
    if not here.main:
        return
    done = sorted(u for r in reports for u in r["written"])
    write_json(cfg.out_dir / "predict.json", {
        "world_size": here.world, "n_scans": len(items), "written": done,
        "skipped": {u: m for r in reports for u, m in r["skipped"].items()},
        "by_rank": {str(r["rank"]): r["written"] for r in reports},
        "seconds_by_rank": {str(r["rank"]): round(r["seconds"], 3) for r in reports}})
    click.echo(f"wrote {len(done)} mask(s) to {cfg.out_dir / 'masks'}"
               + (f" ({here.world} processes)" if here.world > 1 else ""))


@segment.command("evaluate")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--no-fast", is_flag=True)
@click.option("--no-progress", is_flag=True)
def evaluate_cmd(config: Path, checkpoint: Path | None, no_fast: bool, no_progress: bool) -> None:
    """Slice metrics (Dice@0.5, mean Dice over 256 thresholds, Sen, Spe, MAE) on nodule
    slices and per-nodule 3D Dice; writes out_dir/metrics.json."""
    import numpy as np
    import torch

    from lungfuse.core.atomic import write_json

    from .metrics import nodule_dice_3d, segmentation_metrics, summarise

    cfg = load_config(config)
    if no_fast:
        cfg.fast.enabled = False
    pred, meta = _predictor(cfg, checkpoint)
    cases = _cases(cfg, _selected(cfg), not no_progress)
    trained = set(meta.get("training_patients") or [])
    overlap = sorted(trained & {c.patient_id or c.uid for c in cases})
    if overlap:
        raise DataError(f"{config}: {len(overlap)} evaluation scan(s) were in the checkpoint's "
                        f"training set (e.g. {overlap[0]}); evaluate on held-out scans")
    per: dict[str, list[float]] = {}
    nod: list[float] = []
    for c in cases:
        prob = pred.predict_volume(c.volume)
        lab = c.labels
        zs = np.nonzero(lab.reshape(lab.shape[0], -1).any(1))[0]
        if zs.size:
            m = segmentation_metrics(torch.from_numpy(prob[zs]), torch.from_numpy(lab[zs] > 0))
            for k, v in m.items():
                per.setdefault(k, []).extend(v.tolist())
        nod.extend(nodule_dice_3d(prob >= cfg.threshold, lab).values())
    res = summarise(per) if per else {}
    res.update({"nodule_dice_3d": float(np.mean(nod)) if nod else float("nan"),
                "n_nodules": len(nod), "n_slices": len(per.get("dice", [])),
                "n_scans": len(cases)})
    write_json(cfg.out_dir / "metrics.json", res)
    click.echo(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in res.items()))


@click.group()
def infnet() -> None:
    """Inf-Net utilities."""


@infnet.command("import")
@click.argument("original", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def import_cmd(original: Path, out: Path) -> None:
    """Convert an authors' Inf-Net/Semi-Inf-Net ORIGINAL.pth into a lungfuse checkpoint."""
    from .reference import import_checkpoint

    path = import_checkpoint(original, out)
    click.echo(f"imported {original} -> {path} (res2net50d, 5 maps, strict key mapping)")
