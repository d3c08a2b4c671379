"""The run folder: creation, status, resume; and which process of a distributed run this is.

A run folder (``output_dir/<name>-<YYYYmmdd-HHMMSS>``) is created only once the input has
been checked and is never written over in place (:func:`new_run_dir`). Its ``run.json``
says ``running`` (pid, host, heartbeat: :class:`RunStatus`), then ``complete``, or
``interrupted`` / ``failed`` with the reason; a killed run keeps ``running`` with a
process that is gone (:func:`unfinished_reason`). The next run into the same output folder
names an unfinished one (:func:`tell_unfinished`), and ``lungfuse run CONFIG --resume
RUN_DIR`` continues it after :func:`check_resumable` (same config, same splits) and
:func:`check_same_inputs` (same input files), keeping :func:`finished_folds`.

Distributed training: Lightning re-runs the command in every process (DDP); only global
rank 0 (:func:`global_rank`) writes. The run folder is shared through the
``LUNGFUSE_RUN_DIR`` environment variable (set for the processes Lightning launches; set it
yourself, or pass ``--run-dir``, under torchrun/SLURM).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lungfuse.core import atomic
from lungfuse.core.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from lungfuse.core.study import Study

__all__ = [
    "RUN_DIR_ENV",
    "RunInterrupted",
    "RunStatus",
    "check_resumable",
    "check_same_inputs",
    "finished_folds",
    "global_rank",
    "new_run_dir",
    "normalised_stored_config",
    "one_line",
    "progress_enabled",
    "tell_unfinished",
    "unfinished_reason",
]

log = logging.getLogger("lungfuse")
RUN_DIR_ENV = "LUNGFUSE_RUN_DIR"


# ----------------------------------------------------------------------------- this process
def global_rank() -> int:
    """This process's rank from the launcher's environment (0 when not distributed)."""
    for k in ("RANK", "SLURM_PROCID"):
        if os.environ.get(k, "").isdigit():
            return int(os.environ[k])
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) or 0)
    return local + node  # only "zero or not" matters here


def progress_enabled(progress: bool | None) -> bool:
    """Whether to show progress bars: ``progress`` (None: yes), unless
    ``LUNGFUSE_NO_PROGRESS=1`` turns them off everywhere (CI, logs)."""
    if os.environ.get("LUNGFUSE_NO_PROGRESS") == "1":
        return False
    return True if progress is None else bool(progress)


# ----------------------------------------------------------------------------- creation
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


def check_folder_option(path: Path, what: str) -> None:
    """An output/cache folder the user named must not be a file (checked before a run
    folder exists, so the error leaves nothing behind)."""
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise DataError(f"{what} {path}: {blocker} is a file, not a folder; choose another "
                        "location or move that file away")


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


# ----------------------------------------------------------------------------- status
#: How often rank 0 refreshes ``heartbeat`` in run.json, and after how long without one a
#: "running" run counts as dead (killed, or its machine lost).
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGTERM (``kill``, a scheduler's time limit): handled like Ctrl-C,
    so the run folder records "interrupted" and the CLI exits 130."""


def one_line(exc: BaseException) -> str:
    """The reason recorded in run.json for an exception: its first line, with the type
    unless it is a user-facing error whose message says everything."""
    from lungfuse.core.errors import LungfuseError

    if isinstance(exc, SystemExit):
        return f"exited with code {exc.code}"
    text = (str(exc).strip().splitlines() or [""])[0][:500]
    if isinstance(exc, LungfuseError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def proc_stat(pid: int) -> tuple[str, str] | None:
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
    stat = proc_stat(pid)
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


def normalised_stored_config(stored: Mapping[str, Any], folder: Path,
                             model: Any = None) -> dict[str, Any]:
    """A folder's stored ``config.yaml`` validated with the current schema and dumped
    again, so settings added since it was written take their defaults on both sides of a
    comparison and only real differences count (a folder from before ``baselines`` or
    ``training.selection`` existed still resumes; a missing ``training.selection`` is
    read as ``holdout``, the only behaviour before it existed). Where the current schema refuses it
    (a plugin gone, a setting removed), the stored mapping is returned as it is and the
    comparison names the difference. ``model`` is the config model the current config
    was validated with (its plugins); without it, that of the installed plugins."""
    from lungfuse.core.config import config_to_dict, validate_config

    stored = dict(stored)
    training = stored.get("training")
    if isinstance(training, Mapping) and "selection" not in training:
        # written before training.selection existed: that lungfuse always used holdout
        # (the default is auto now), so the folder is compared as what it ran
        stored["training"] = {**training, "selection": "holdout"}
    try:
        if model is not None:
            cfg = model.model_validate(dict(stored), context={"base_dir": folder,
                                                              "check_paths": False,
                                                              "stored_config": True})
        else:
            cfg = validate_config(dict(stored), source=str(folder / "config.yaml"),
                                  base_dir=folder, check_paths=False, stored=True)
    except Exception as exc:  # noqa: BLE001 - any refusal: compare the raw mapping instead
        log.debug("stored config of %s not normalised: %s", folder, one_line(exc))
        return dict(stored)
    return config_to_dict(cfg)


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


class RunStatus:
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
def sigterm_interrupts() -> Iterator[None]:
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


# ----------------------------------------------------------------------------- resume
def tell_unfinished(out_root: Path, config: Any, resolved: Mapping[str, Any],
                     say: Any, config_model: Any = None) -> None:
    """One line about run folders under ``out_root`` that did not finish (newest first),
    with the command that continues the newest (``config_model``: see
    :func:`normalised_stored_config`)."""
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
        if isinstance(stored, dict) and _config_difference(
                dict(resolved), normalised_stored_config(stored, folder, config_model)) is None:
            cfg_hint = str(config)
    more = (f" ({len(found) - 1} more unfinished run folder(s) in {out_root})"
            if len(found) > 1 else "")
    say(f"note: run folder {folder} did not finish ({why}); continue it with "
        f"`lungfuse run {cfg_hint} --resume {folder}`{more}")


def check_resumable(folder: Path, resolved: Mapping[str, Any], splits: pd.DataFrame,
                     cfg_source: str, config_model: Any = None) -> dict[str, Any]:
    """The run.json of an unfinished run folder that this config may continue: refused
    (one line each) when it is no run folder, complete, still running, of another config
    (naming the first differing setting) or of other splits (the cohort changed). The
    stored config is compared after validation with the current schema
    (``config_model``, the model ``resolved`` came from; :func:`normalised_stored_config`),
    so settings added since the run started do not count as differences."""
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
                        f"({one_line(exc)}); start a new run instead") from None
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
    stored = normalised_stored_config(stored, folder, config_model)
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
                        f"({one_line(exc)}); start a new run instead") from None
    cols = ["seed", "fold", "patient_id", "split"]

    def rows(df: pd.DataFrame) -> set[tuple[str, ...]]:
        return set(df[cols].astype(str).itertuples(index=False, name=None))

    if not set(cols) <= set(old.columns) or rows(old) != rows(splits):
        raise DataError(f"--resume {folder}: the cohort's splits differ from the run's "
                        f"(has the clinical table changed?); start a new run")
    return run


def finished_folds(folder: Path, folds: list[tuple[int, int]],
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


def check_same_inputs(folder: Path, done: Mapping[tuple[int, int], dict[str, Any]],
                      study: Study) -> None:
    """A resumed run must read the same data as its finished folds did: their feature
    keys (which hash every input file) must be what the inputs give now."""
    from lungfuse.core.features import feature_cache_key, input_paths

    cohort = study.cohort
    assert cohort is not None, "a run's study has its cohort"
    for (seed, fold), meta in done.items():
        keys = meta.get("feature_keys") or {}
        train = study.fold_ids(seed, fold)["train"]
        for name, (_cls, mcfg) in study.modalities.items():
            if name not in keys:
                continue
            now = feature_cache_key(mcfg, seed, fold, train, cohort.ids, cohort_table=cohort.table)
            if now != keys[name]:
                paths = ", ".join(map(str, input_paths(mcfg))) or "its settings"
                raise DataError(f"--resume {folder}: the input of modality '{name}' ({paths}) "
                                f"or the cohort table changed since fold seed{seed}-fold{fold} "
                                "was trained; start a new run so every fold sees the same data")


def fold_info(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The entry of a finished fold in run.json's ``folds``."""
    return {"seed": int(meta["seed"]), "fold": int(meta["fold"]), "epochs": meta.get("epochs"),
            "fit_seconds": meta.get("fit_seconds")}
