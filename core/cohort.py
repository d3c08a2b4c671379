"""The cohort: the clinical table, one row per patient, with the outcome checked.

:func:`load_cohort` reads the Parquet table named in the config, indexes it by patient id
(as strings) and checks what the task needs; every problem is one-line
:class:`~lungfuse.core.errors.DataError` naming the file, the column and what to do.
Patient ids are compared as text with surrounding whitespace stripped (omics readers do
the same with sample ids), so ``" P001"`` and ``"P001"`` are one patient.

Also here, for every reader of user tables: :func:`unreadable_parquet` (the one line for
a file that is not readable Parquet) and :func:`coverage_hint` (example ids of both sides
when a modality covers none of the cohort).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lungfuse.core.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

__all__ = ["Cohort", "coverage_hint", "load_cohort", "modality_input_ids", "unreadable_parquet",
           "validate_cohort"]


@dataclass
class Cohort:
    """The clinical table (indexed by ``patient_id``) and the task's outcome columns."""

    table: pd.DataFrame
    task: str  # "binary" | "survival"
    outcome_columns: tuple[str, ...]
    source: str = "<table>"
    #: every label column of the task config present in the table (a survival task's
    #: table may also hold ``malignant``): hidden from ``available``/``transform``
    label_columns: tuple[str, ...] = ()

    @property
    def ids(self) -> list[str]:
        return list(self.table.index)

    @property
    def strata(self) -> np.ndarray:
        """The label splits are stratified on: the outcome, or the event indicator."""
        col = self.outcome_columns[0] if self.task == "binary" else self.outcome_columns[1]
        return self.table[col].to_numpy().astype(int)

    def without_outcomes(self, ids: list[str] | None = None) -> pd.DataFrame:
        """Rows (all, or ``ids``) with the outcome columns removed: what ``available`` and
        ``transform`` of a modality see."""
        t = self.table if ids is None else self.table.loc[ids]
        hide = set(self.outcome_columns) | set(self.label_columns)
        return t.drop(columns=[c for c in t.columns if c in hide])


def load_cohort(cohort_cfg: Any, task_cfg: Any) -> Cohort:
    """Read ``cohort_cfg.clinical`` (Parquet) and check it for ``task_cfg``."""
    import pyarrow.parquet as pq

    path = Path(cohort_cfg.clinical)
    if not path.exists():
        raise DataError(f"{path}: clinical table not found; check cohort.clinical")
    if path.is_dir():
        raise DataError(f"{path}: cohort.clinical is a folder; give the Parquet file")
    try:
        pf = pq.ParquetFile(path)
        names = list(pf.schema_arrow.names)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(f"{path}: column '{dup[0]}' appears more than once in the "
                            "clinical table; keep one column of each name")
        table = pf.read()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is the user's file
        raise DataError(unreadable_parquet(path, "clinical table", exc,
                                           "check cohort.clinical")) from None
    try:
        df = table.to_pandas()
    except Exception as exc:  # noqa: BLE001 - a column type pandas cannot hold
        raise DataError(f"{path}: the clinical table cannot be converted to a table of "
                        f"values ({type(exc).__name__}: {exc}); export plain columns "
                        "(numbers, text)") from None
    return validate_cohort(df, cohort_cfg.patient_id, task_cfg, source=str(path))


def _sniff(path: Path) -> str:
    """What the first bytes of a file look like: "parquet", "text" (CSV/TSV-like) or ""."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return ""
    if head.startswith(b"PAR1"):
        return "parquet"
    if not head or b"\0" in head:
        return ""
    try:
        first = head.decode("utf-8").splitlines()[0]
    except (UnicodeDecodeError, IndexError):
        return ""
    return "text" if ("," in first or "\t" in first or ";" in first) else ""


def unreadable_parquet(path: Path, what: str, exc: BaseException, todo: str = "") -> str:
    """The one-line message for a ``what`` file pyarrow could not read as Parquet.

    Advice depends on what the file holds: a Parquet start (truncated or damaged: export
    or download it again), CSV/TSV-looking text (convert it), anything else (not Parquet:
    truncated, or another format).
    """
    kind = _sniff(Path(path))
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if kind == "parquet":
        msg = (f"{path}: the {what} file is not a readable Parquet file (it starts like "
               f"Parquet but is truncated or damaged: {detail}); export or download it again")
    elif kind == "text":
        msg = (f"{path}: the {what} file is text (CSV/TSV?), not a Parquet file; convert it, e.g. "
               "pandas.read_csv(...).to_parquet(...)")
    else:
        msg = (f"{path}: the {what} file is not a readable Parquet file (truncated, or "
               f"another format: {detail}); export it as Parquet again")
    return f"{msg}; {todo}" if todo else msg


def _id_text(v: Any) -> str:
    """A patient id as text (``str`` of it, as before); raw bytes are refused (ValueError):
    their text depends on an encoding nobody stated."""
    if isinstance(v, bytes | bytearray):
        raise ValueError(f"not an id: {v!r}")
    return v if isinstance(v, str) else str(v)


def validate_cohort(df: pd.DataFrame, id_col: str, task_cfg: Any, source: str = "<table>") -> Cohort:
    """Check a clinical DataFrame and return the :class:`Cohort` (index = patient id)."""
    import numpy as np
    import pandas as pd

    if id_col not in df.columns:
        if df.index.name == id_col:
            df = df.reset_index()
        else:
            raise DataError(f"{source}: patient id column '{id_col}' not found (columns: "
                            f"{', '.join(map(str, df.columns))}); set cohort.patient_id")
    if df.columns.has_duplicates:
        dup = df.columns[df.columns.duplicated()][0]
        raise DataError(f"{source}: column '{dup}' appears more than once; keep one column "
                        "of each name")
    if len(df) == 0:
        raise DataError(f"{source}: the clinical table has no rows; it needs one row per "
                        "patient")
    ids = df[id_col]
    if ids.isna().any():
        raise DataError(f"{source}: {int(ids.isna().sum())} row(s) have no '{id_col}'; "
                        "every row needs a patient id")
    # ids are text without surrounding whitespace, as the omics readers compare them
    try:
        ids = pd.Series([_id_text(v) for v in ids], index=df.index, dtype=object).str.strip()
    except (TypeError, ValueError):
        raise DataError(f"{source}: patient ids in column '{id_col}' are not text or numbers "
                        f"(column type {df[id_col].dtype}); store them as text") from None
    if (ids == "").any():
        raise DataError(f"{source}: {int((ids == '').sum())} row(s) have a blank '{id_col}'; "
                        "every row needs a patient id")
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise DataError(f"{source}: patient id '{dup[0]}' appears more than once"
                        f"{f' (and {len(dup) - 1} more)' if len(dup) > 1 else ''}; "
                        "the clinical table needs one row per patient")
    df = df.drop(columns=[id_col]).set_index(pd.Index(ids, name="patient_id"))

    def need(col: str, what: str) -> pd.Series:
        if col not in df.columns:
            raise DataError(f"{source}: outcome column '{col}' ({what}) not found; add it or "
                            f"set task.{what} to the right column name")
        s = df[col]
        if s.isna().any():
            raise DataError(f"{source}: column '{col}' has {int(s.isna().sum())} missing "
                            f"value(s) (first: {s[s.isna()].index[0]}); fill or drop those rows")
        return s

    def binary(col: str, what: str) -> None:
        s = need(col, what)
        try:
            vals = set(pd.unique(s.astype(float)))
        except (TypeError, ValueError):
            shown = ", ".join(list(dict.fromkeys(repr(v) for v in s.tolist()))[:5])
            raise DataError(f"{source}: column '{col}' must be 0/1, found text values "
                            f"({shown}); recode it as numbers (e.g. yes -> 1, no -> 0)") from None
        if not vals <= {0.0, 1.0}:
            raise DataError(f"{source}: column '{col}' must be 0/1, found values "
                            f"{sorted(vals)[:5]}; recode it")
        df[col] = s.astype(int)

    if task_cfg.kind == "binary":
        binary(task_cfg.outcome, "outcome")
        counts = df[task_cfg.outcome].value_counts()
        if len(counts) < 2:
            raise DataError(f"{source}: outcome '{task_cfg.outcome}' is {int(counts.index[0])} "
                            "for every patient; a binary task needs both classes")
        cols: tuple[str, ...] = (task_cfg.outcome,)
    else:
        t = need(task_cfg.time, "time")
        try:
            tv = t.astype(float)
        except (TypeError, ValueError):
            raise DataError(f"{source}: survival time column '{task_cfg.time}' is not "
                            "numeric") from None
        bad = tv[~(tv > 0) | ~np.isfinite(tv)]
        if len(bad):
            raise DataError(f"{source}: survival time '{task_cfg.time}' must be > 0, patient "
                            f"'{bad.index[0]}' has {bad.iloc[0]}"
                            f"{f' ({len(bad)} such rows)' if len(bad) > 1 else ''}; fix or drop them")
        df[task_cfg.time] = tv
        binary(task_cfg.event, "event")
        if int(df[task_cfg.event].sum()) == 0:
            raise DataError(f"{source}: event column '{task_cfg.event}' has no event; a "
                            "survival task needs observed events")
        cols = (task_cfg.time, task_cfg.event)
    labels = tuple(c for c in (task_cfg.outcome, task_cfg.time, task_cfg.event) if c in df.columns)
    return Cohort(table=df, task=task_cfg.kind, outcome_columns=cols, source=source,
                  label_columns=labels)


# ---------------------------------------------------------------------- coverage hints
def modality_input_ids(plugin: Any, limit: int = 1000) -> list[str] | None:
    """Ids a modality plugin's inputs name, through its optional ``input_ids()`` hook
    (patient ids its samples map to, or raw sample ids); None without the hook or when it
    fails: the hint is a courtesy and must not replace the real error."""
    hook = getattr(plugin, "input_ids", None)
    if not callable(hook):
        return None
    try:
        ids = hook()
    except Exception:  # noqa: BLE001 - see docstring
        return None
    if ids is None:
        return None
    return [str(i) for i in list(ids)[:limit]]


def coverage_hint(cohort_ids: list[str], modality_ids: list[str] | None, n_show: int = 3) -> str:
    """A hint for "modality covers none of the patients": a few ids of each side, and
    whether they differ only by surrounding whitespace or letter case."""
    def show(ids: list[str]) -> str:
        return ", ".join(repr(i) for i in ids[:n_show]) + (" ..." if len(ids) > n_show else "")

    cohort_sorted = sorted(cohort_ids)
    parts = [f"cohort ids look like {show(cohort_sorted)}"]
    if modality_ids is None:
        return parts[0]
    mod_sorted = sorted(dict.fromkeys(modality_ids))
    if not mod_sorted:
        return parts[0] + "; the modality's input names no ids at all"
    parts.append(f"the modality's ids look like {show(mod_sorted)}")
    folded = {c.strip().casefold(): c for c in cohort_ids}
    pairs = [(folded[m.strip().casefold()], m) for m in mod_sorted
             if m.strip().casefold() in folded]
    if pairs:
        c, m = pairs[0]
        how = "surrounding whitespace" if c.strip() == m.strip() else (
            "letter case" if c == c.strip() and m == m.strip() else "whitespace and letter case")
        parts.append(f"{len(pairs)} differ only by {how} (e.g. {c!r} vs {m!r}); make them "
                     "identical")
    return "; ".join(parts)
