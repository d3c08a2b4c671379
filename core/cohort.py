"""The cohort: the clinical table, one row per patient, with the outcome checked.

:func:`load_cohort` reads the Parquet table named in the config, indexes it by patient id
(as strings) and checks what the task needs; every problem is one-line
:class:`~lungfuse.core.errors.DataError` naming the file, the column and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lungfuse.core.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

__all__ = ["Cohort", "load_cohort", "validate_cohort"]


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
    import pandas as pd

    path = Path(cohort_cfg.clinical)
    try:
        df = pd.read_parquet(path)
    except FileNotFoundError:
        raise DataError(f"{path}: clinical table not found; check cohort.clinical") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is the user's file
        raise DataError(f"{path}: not a readable Parquet table ({type(exc).__name__}: {exc}); "
                        "check cohort.clinical") from None
    return validate_cohort(df, cohort_cfg.patient_id, task_cfg, source=str(path))


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
    ids = df[id_col]
    if ids.isna().any():
        raise DataError(f"{source}: {int(ids.isna().sum())} row(s) have no '{id_col}'; "
                        "every row needs a patient id")
    ids = ids.astype(str)
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
        vals = set(pd.unique(s.astype(float)))
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
