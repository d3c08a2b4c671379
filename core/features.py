"""Feature preparation: one modality fitted on a fold's training patients, transforming
everyone, and the content-keyed cache that lets runs and ablations share the result.

A modality's features for fold (seed, k) depend on its config, the content of every input
file it names, the split seed and fold, the training patients and the cohort rows it sees,
and on nothing else (never on the fusion head or the other modalities). That is what
:func:`feature_cache_key` hashes, so ``run``, ``ablate`` and the demo reuse each other's
prepared features through ``--cache-dir``, and a table changed in place is never served
from the cache. The fitted state is stored as JSON + safetensors (``core/state_io.py``),
never pickled: an old ``state.pkl`` entry is a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lungfuse.core import atomic
from lungfuse.core.cohort import Cohort
from lungfuse.core.contracts import ModalityContext, ModalityPlugin
from lungfuse.core.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "HASH_BUDGET",
    "HASH_INPUTS_UP_TO",
    "PreparedModality",
    "feature_cache_key",
    "input_fingerprint",
    "input_paths",
    "prepare_fold_features",
]

log = logging.getLogger("lungfuse")


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
