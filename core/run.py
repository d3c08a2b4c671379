"""``lungfuse run CONFIG``: train and evaluate the fused model, fold by fold.

The flow, each step in the module that holds it::

    Study.from_config (study)        config → plugins → cohort → splits → time grid → folds
    Study.check_coverage, trainer    every input checked before the run folder exists
    new_run_dir, RunStatus (rundir)  the folder, run.json running → complete/interrupted/failed
    for each (seed, fold):
        prepare_fold_features (features)  each modality fitted on the training patients
        train_fold (folds)                Lightning fit, calibration/Breslow, held-out
                                          predictions through TrainedFold.predict_table
    evaluate_predictions (evaluation)     metrics.json with bootstrap CIs
    baselines.add_to_run (baselines)      configured baselines on the same folds/features
    render_run (report.run)               report.html

Run folder (created only once the input has been checked, never written over; every file
written atomically)::

    config.yaml  run.json  splits.parquet  predictions.parquet  metrics.json  run.log
    report.html  baselines/predictions.parquet (with `baselines:` in the config)
    features/<modality>/seed<S>-fold<K>.parquet
    models/seed<S>-fold<K>/{model.pt, meta.json, modality_state.{json,safetensors},
                            predictions.parquet, checkpoints/best.ckpt, logs/metrics.csv}

A run that did not finish is continued with ``lungfuse run CONFIG --resume RUN_DIR``
(see :mod:`lungfuse.core.rundir`); distributed training shares the run folder through
``LUNGFUSE_RUN_DIR`` and only global rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lungfuse.core import atomic
from lungfuse.core.errors import ConfigError
from lungfuse.core.registry import FUSION_GROUP, MODALITY_GROUP, Registry
from lungfuse.core.rundir import (
    RUN_DIR_ENV,
    RunInterrupted,
    RunStatus,
    check_folder_option,
    check_resumable,
    check_same_inputs,
    finished_folds,
    fold_info,
    global_rank,
    new_run_dir,
    one_line,
    proc_stat,
    progress_enabled,
    sigterm_interrupts,
    tell_unfinished,
)
from lungfuse.core.study import Study

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from lungfuse.core.folds import FoldResult

__all__ = ["RunResult", "run_command", "run_experiment"]

log = logging.getLogger("lungfuse")


def _plugin_versions(cfg: Any, registry: Registry) -> dict[str, Any]:
    """``{"<group>:<kind>": distribution and version}`` of the plugins the run uses, for
    run.json's provenance ("injected" for classes passed in by tests or notebooks)."""
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


@dataclass
class RunResult:
    """A finished run: its folder, metrics, pooled held-out predictions and folds."""

    run_dir: Path
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    folds: list[FoldResult]
    resumed: int = 0  # folds kept from an earlier, unfinished attempt


def _check_trainer(cfg: Any) -> None:
    """Build the fold trainer once in a scratch folder, so trainer settings Lightning
    rejects stop the run before its folder exists."""
    from lungfuse.core.folds import make_trainer, quiet_lightning

    with tempfile.TemporaryDirectory(prefix="lungfuse-trainer") as tmp, quiet_lightning():
        try:
            make_trainer(cfg, Path(tmp), progress=False)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - Lightning's MisconfigurationException & co
            raise ConfigError(f"trainer settings rejected by Lightning: {one_line(exc)}; "
                              "check the `trainer` section") from None


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

    Everything that can be checked (config, plugins, cohort, splits, output and cache
    folders, each modality's coverage, trainer settings) is checked before the run folder
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

    from lungfuse.core.baselines import add_to_run as add_baselines
    from lungfuse.core.baselines import check_cohort_columns, resolve_baselines
    from lungfuse.core.config import config_to_dict
    from lungfuse.core.evaluation import evaluate_predictions
    from lungfuse.core.features import prepare_fold_features
    from lungfuse.core.folds import FoldResult, train_fold

    started = time.time()
    say = notify or log.warning
    study = Study.from_config(config, registry, plugins)
    cfg, cohort, splits = study.cfg, study.cohort, study.splits
    assert cohort is not None and splits is not None
    show = progress_enabled(progress)
    rank0 = global_rank() == 0
    if resume is not None and run_dir is not None:
        raise ConfigError("--resume continues its run folder in place; drop --run-dir")
    out_root = Path(output_dir) if output_dir is not None else Path(cfg.output_dir)
    check_folder_option(out_root.absolute(), "output folder")
    if cache_dir is not None:
        check_folder_option(Path(cache_dir).absolute(), "cache folder")
    coverage = study.check_coverage()
    _check_trainer(cfg)
    resolved = config_to_dict(cfg)
    source = str(config) if isinstance(config, str | os.PathLike) else "this config"
    baselines = resolve_baselines(cfg, study.registry, source)  # bad names: before any folder
    check_cohort_columns(baselines, study.cohort.without_outcomes().columns, source)
    previous: dict[str, Any] = {}
    if resume is not None:
        rdir = Path(resume).absolute()
        if rank0:
            previous = check_resumable(rdir, resolved, splits, source, type(cfg))
        done = finished_folds(rdir, study.folds, previous or None)
        if rank0:
            check_same_inputs(rdir, done, study)
    else:
        if rank0 and run_dir is None and not os.environ.get(RUN_DIR_ENV):
            tell_unfinished(out_root.absolute(), config, resolved, say, type(cfg))
        rdir = new_run_dir(out_root, cfg.name, run_dir)
        done = {}

    set_env = os.environ.get(RUN_DIR_ENV) is None
    if set_env:
        os.environ[RUN_DIR_ENV] = str(rdir)  # processes Lightning launches reuse this folder
    scratch = None if rank0 else tempfile.TemporaryDirectory(prefix="lungfuse-rank")
    work = rdir / "modalities" if rank0 else Path(scratch.name)
    handler = None
    status: RunStatus | None = None
    stack = contextlib.ExitStack()
    try:
        if rank0:  # run.json first: from here on, every way out is recorded
            stat = proc_stat(os.getpid())
            status = RunStatus(rdir / "run.json", {
                **{k: v for k, v in previous.items() if k not in ("reason", "finished")},
                "status": "running", "started": previous.get("started", started),
                "pid": os.getpid(), "pid_start": stat[1] if stat else None,
                "host": socket.gethostname(), "heartbeat": time.time(),
                "plugins": _plugin_versions(cfg, study.registry),
                "folds": [fold_info(done[k]) for k in sorted(done)],
                **({"resumed": [*previous.get("resumed", []), started]} if resume else {}),
            })
            status.update()
            status.start_heartbeat()
            stack.enter_context(sigterm_interrupts())
            handler = logging.FileHandler(rdir / "run.log", encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            if resume is None:
                atomic.write_text(rdir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
                atomic.write_parquet(rdir / "splits.parquet", splits, index=False)
            if resume is not None:
                log.info("resuming %s: %d of %d folds already finished", rdir, len(done),
                         len(study.folds))
        log.info("cohort %s: %d patients; coverage %s", cohort.source, len(cohort.ids),
                 {m: len(v) for m, v in coverage.items()})
        results: list[FoldResult] = []
        if rank0:
            for seed, fold in sorted(done):
                fdir = rdir / "models" / f"seed{seed}-fold{fold}"
                results.append(FoldResult(seed, fold, pd.read_parquet(fdir / "predictions.parquet"),
                                          done[(seed, fold)]))
        todo = [k for k in study.folds if k not in done]
        bar = tqdm(todo, desc="folds", disable=not (show and rank0), unit="fold")
        for seed, fold in bar:
            ids = study.fold_ids(seed, fold)
            tag = f"seed{seed}-fold{fold}"
            if rank0 and resume is not None:  # what the unfinished attempt left of this fold
                shutil.rmtree(rdir / "models" / tag, ignore_errors=True)
                for name in study.modalities:
                    shutil.rmtree(work / name / tag, ignore_errors=True)
            prepared = {}
            for name, (cls, mcfg) in study.modalities.items():
                prepared[name] = prepare_fold_features(
                    name, cls, mcfg, cohort, ids["train"], seed=seed, fold=fold,
                    workdir=work / name / tag, cache_dir=cache_dir, progress=show and rank0,
                    write=rank0)
                if rank0:
                    atomic.write_parquet(rdir / "features" / name / f"{tag}.parquet",
                                         prepared[name].features)
            res = train_fold(cfg, cohort, prepared, study.modalities, study.fusion, ids,
                             seed=seed, fold=fold, fold_dir=rdir / "models" / tag,
                             progress=False, time_grid=study.time_grid, write=rank0)
            if res is not None:
                results.append(res)
                if status is not None:  # only now is the fold resumable
                    status.update(folds=[*status.data["folds"], fold_info(res.meta)])
        if not rank0 or not results or status is None:
            return None
        results.sort(key=lambda r: (r.seed, r.fold))  # fold order: same bootstrap as one go
        pred = pd.concat([r.predictions for r in results], ignore_index=True)
        atomic.write_parquet(rdir / "predictions.parquet", pred, index=False)
        metrics = evaluate_predictions(pred, cfg, cohort, study.time_grid)
        metrics["patients"] = len(cohort.ids)
        metrics["coverage"] = {m: len(v) for m, v in coverage.items()}
        add_baselines(baselines, study, rdir, pred, metrics)  # same folds and features
        atomic.write_json(rdir / "metrics.json", metrics)
        finished = time.time()
        status.end("complete", finished=finished, seconds=round(finished - started, 2),
                   folds=[fold_info(r.meta) for r in results],
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
            status.end("failed", reason=one_line(exc))
            log.error("run failed: %s", one_line(exc))
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
        say(f"warning: {rdir / 'report.html'} not written ({one_line(exc)}); "
            f"retry with `lungfuse report {rdir}`")


# ----------------------------------------------------------------------------- CLI
def _headline(metrics: Mapping[str, Any]) -> str:
    """The overall held-out metrics on one line: ``name value [low, high]; ...``. A
    survival run leads its c-index with the mean +/- sd over test folds, the pooled figure
    beside it labelled "pooled" (fold models' risks are on different scales)."""
    from lungfuse.core.baselines import headline_of

    return headline_of(metrics)


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
    from lungfuse.core.baselines import cli_lines

    for line in cli_lines(res.metrics):
        click.echo(line)
    if (res.run_dir / "report.html").exists():
        click.echo(f"report: {res.run_dir / 'report.html'}")
