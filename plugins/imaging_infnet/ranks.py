"""Spreading the CT stage over processes: which scans a rank does, and how ranks meet.

A launcher (``torchrun``, SLURM's ``srun``, or ``lungfuse segment predict --processes N``,
which starts the processes itself) gives each process its rank and the world size in the
environment. :func:`current` reads them; :func:`share` splits a scan list so that every
scan goes to exactly one rank, the same way in every process (sorted by key, then dealt
round-robin), so the ranks never need to talk to agree on the split.

``segment predict`` meets through ``torch.distributed`` (gloo, CPU-only traffic: a few
small Python objects) to gather what each rank wrote; the CT modality's feature
preparation meets through files in a shared folder (:func:`wait_for_files`), which works
under any launcher and needs no process group while Lightning owns the distributed set-up.

No torch at module level: ``lungfuse plugins`` imports the plugin's modules.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lungfuse.core.errors import ConfigError, DataError, LungfuseError

T = TypeVar("T")

#: (rank variable, world-size variable) pairs, the first complete pair wins: torchrun and
#: Lightning set RANK/WORLD_SIZE, ``srun`` sets SLURM_PROCID/SLURM_NTASKS.
_ENV_PAIRS = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world`` processes (``rank`` 0 gathers)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that gathers and writes any index."""
        return self.rank == 0


def current(env: dict[str, str] | None = None) -> Ranks:
    """The rank and world size the launcher set (rank 0 of 1 when none did).

    A malformed pair (not integers, or a rank outside ``[0, world)``) is a
    :class:`ConfigError`: guessing would make two processes do the same scans."""
    env = dict(os.environ if env is None else env)
    for rk, wk in _ENV_PAIRS:
        if rk in env and wk in env:
            try:
                rank, world = int(env[rk]), int(env[wk])
            except ValueError:
                raise ConfigError(f"{rk}={env[rk]!r}, {wk}={env[wk]!r}: rank and world size "
                                  "must be integers; fix the launcher's environment") from None
            if world < 1 or not 0 <= rank < world:
                raise ConfigError(f"{rk}={rank}, {wk}={world}: the rank must lie in "
                                  "[0, world size); fix the launcher's environment")
            return Ranks(rank, world)
    return Ranks()


def share(items: Sequence[T], ranks: Ranks, key: Callable[[T], Any] = str) -> list[T]:
    """The items rank ``ranks.rank`` handles: ``items`` sorted by ``key``, every
    ``world``-th one from position ``rank``. Disjoint across ranks, together all items,
    counts differing by at most one; independent of the order ``items`` came in."""
    ordered = sorted(items, key=key)
    return ordered[ranks.rank::ranks.world]


@contextlib.contextmanager
def process_group(ranks: Ranks, timeout_s: float = 1800.0) -> Iterator[Any]:
    """A gloo process group for ``ranks`` (``None`` for a single process), torn down
    on exit. Reuses a group that is already initialised (then leaves it alone)."""
    if ranks.world == 1:
        yield None
        return
    from datetime import timedelta

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        yield dist
        return
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(f"{ranks.world} processes but {', '.join(missing)} not set: launch "
                          "with torchrun, or export MASTER_ADDR/MASTER_PORT under srun "
                          "(docs/scaling.md)")
    dist.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world,
                            timeout=timedelta(seconds=timeout_s))
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def gather(dist: Any, obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` alone)."""
    if dist is None or ranks.world == 1:
        return [obj]
    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def wait_for_files(paths: Sequence[Path], timeout_s: float, what: str,
                   poll_s: float = 0.2) -> None:
    """Block until every path exists (other ranks writing their scans' results into a
    shared folder); a :class:`DataError` naming the first missing one after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    pending = [Path(p) for p in paths]
    while pending:
        pending = [p for p in pending if not p.exists()]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise DataError(f"{what}: {len(pending)} result(s) from other ranks never arrived "
                            f"within {timeout_s:.0f} s (e.g. {pending[0]}); check that every "
                            "rank runs and that the folder is shared")
        time.sleep(poll_s)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(argv: Sequence[str], processes: int, threads: int | None = None,
          extra_env: dict[str, str] | None = None,
          lost: str = "nothing was gathered") -> None:
    """Run ``python -m lungfuse.core.cli ARGV`` as ``processes`` ranks on this machine
    (a small torchrun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, plus
    ``extra_env``), each with ``threads`` intra-op threads (default: the CPU count shared
    out). Waits for all; if one fails, the others are stopped and a
    :class:`LungfuseError` names it (``lost``: what that means for the command)."""
    n_cpu = os.cpu_count() or 1
    threads = threads or max(1, n_cpu // processes)
    port = _free_port()
    procs = []
    for r in range(processes):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(processes),
               "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(processes),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": str(threads), **(extra_env or {})}
        procs.append(subprocess.Popen([sys.executable, "-m", "lungfuse.core.cli", *argv],
                                      env=env))
    failed: tuple[int, int] | None = None
    try:
        while any(p.poll() is None for p in procs) and failed is None:
            for r, p in enumerate(procs):
                if p.poll() not in (None, 0):
                    failed = (r, int(p.returncode))
                    break
            time.sleep(0.1)
    except BaseException:  # Ctrl-C or an error here: no rank is left running
        for p in procs:
            if p.poll() is None:
                p.terminate()
        raise
    if failed is None:
        failed = next(((r, int(p.returncode)) for r, p in enumerate(procs) if p.returncode),
                      None)
    if failed is not None:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
        raise LungfuseError(f"rank {failed[0]} of {processes} exited with code {failed[1]} "
                            f"(its own message is above); {lost}")


#: A folder every rank sees (shared file system): with it, the CT modality's feature
#: preparation splits the scans over the ranks and each rank writes its scans' rows here.
SHARE_ENV = "LUNGFUSE_CT_SHARE"
#: How long a rank waits for the others' rows (seconds; default one hour).
SHARE_TIMEOUT_ENV = "LUNGFUSE_CT_SHARE_TIMEOUT_S"


class SharedRows:
    """Per-scan results (a feature row, or why the scan was skipped) as small JSON files
    in a shared folder, named by a hash of everything the result depends on (segmenter
    fingerprint, scan file, its nodules). Written atomically, so a reader sees a whole
    record or none; a record found there is reused by later runs too.

    Floats go through JSON's shortest round-trip representation, so a row read back is
    bit for bit the row its rank computed."""

    def __init__(self, folder: Path, ranks: Ranks, timeout_s: float = 3600.0) -> None:
        self.folder = Path(folder) / "ct-rows"
        self.ranks = ranks
        self.timeout_s = timeout_s

    @classmethod
    def from_env(cls) -> SharedRows | None:
        """The shared folder named by ``LUNGFUSE_CT_SHARE`` (``None`` when unset)."""
        folder = os.environ.get(SHARE_ENV)
        if not folder:
            return None
        raw = os.environ.get(SHARE_TIMEOUT_ENV, "3600")
        try:
            timeout = float(raw)
        except ValueError:
            raise ConfigError(f"{SHARE_TIMEOUT_ENV}={raw!r}: expected seconds") from None
        return cls(Path(folder), current(), timeout)

    def path(self, key: tuple) -> Path:
        import hashlib

        return self.folder / f"{hashlib.sha256(repr(key).encode()).hexdigest()[:40]}.json"

    def get(self, key: tuple) -> dict[str, Any] | None:
        """The stored record for ``key`` (``{"row": {...}}`` or ``{"skipped": msg}``)."""
        import json

        p = self.path(key)
        if not p.exists():
            return None
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # unreadable: recomputed and rewritten by whoever owns it
        return rec if isinstance(rec, dict) and ("row" in rec or "skipped" in rec) else None

    def put(self, key: tuple, record: dict[str, Any]) -> None:
        from lungfuse.core.atomic import write_json

        write_json(self.path(key), record)

    def wait(self, keys: Sequence[tuple], what: str) -> None:
        """Block until every key's record exists (see :func:`wait_for_files`)."""
        wait_for_files([self.path(k) for k in keys], self.timeout_s, what)
