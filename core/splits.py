"""Patient-level, stratified, seeded splits: K folds or one fixed test split, each with an
inner validation split taken from its training patients.

The split table (long format) has one row per (seed, fold, patient): ``patient_id``,
``seed``, ``fold``, ``split`` in {"train", "val", "test"}. The same cohort, config and
seed always give the same table; no patient is in two splits of one fold.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from lungfuse.core.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

__all__ = ["fold_ids", "make_splits", "split_summary"]


def make_splits(
    ids: list[str],
    strata: np.ndarray,
    *,
    folds: int = 5,
    test_fraction: float | None = None,
    val_fraction: float = 0.2,
    seeds: list[int] | tuple[int, ...] = (0,),
    source: str = "cohort",
) -> pd.DataFrame:
    """The split table for ``ids`` stratified on ``strata`` (class labels or event flags).

    With ``test_fraction`` one stratified test split (fold 0) replaces the K folds. Within
    each fold a stratified ``val_fraction`` of the training patients is held out for
    validation (early stopping, calibration). Seed ``s`` drives both levels.
    """
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold, train_test_split

    ids_a = np.asarray(ids, dtype=object)
    y = np.asarray(strata).astype(int)
    classes, counts = np.unique(y, return_counts=True)
    if test_fraction is None:
        small = counts.min()
        if folds > small:
            raise DataError(
                f"{source}: {folds} folds but class {classes[counts.argmin()]} has only "
                f"{small} patient(s); use evaluation.folds <= {small} or add patients")
    elif counts.min() < 2:
        raise DataError(f"{source}: class {classes[counts.argmin()]} has {counts.min()} patient; "
                        "a stratified test split needs at least 2 per class")
    rows = []
    for seed in seeds:
        if test_fraction is None:
            skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
            outer = list(skf.split(ids_a, y))
        else:
            tr, te = train_test_split(np.arange(len(y)), test_size=test_fraction,
                                      stratify=y, random_state=seed)
            outer = [(np.sort(tr), np.sort(te))]
        for k, (tr, te) in enumerate(outer):
            _, tr_counts = np.unique(y[tr], return_counts=True)
            if len(tr_counts) < len(classes) or tr_counts.min() < 2:
                raise DataError(
                    f"{source}: fold {k} has fewer than 2 training patients in a class, too "
                    "few for a validation split; use fewer folds or add patients")
            # at least one validation patient per class, at least one training one too
            n_val = min(max(math.ceil(val_fraction * len(tr)), len(classes)),
                        len(tr) - len(classes))
            fit, val = train_test_split(tr, test_size=n_val, stratify=y[tr],
                                        random_state=seed + 1000 * (k + 1))
            for role, idx in (("train", fit), ("val", val), ("test", te)):
                for i in idx:
                    rows.append((ids_a[i], seed, k, role))
    df = pd.DataFrame(rows, columns=["patient_id", "seed", "fold", "split"])
    df["split"] = pd.Categorical(df["split"], categories=["train", "val", "test"])
    return df.sort_values(["seed", "fold", "split", "patient_id"]).reset_index(drop=True)


def fold_ids(splits: pd.DataFrame, seed: int, fold: int) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` of one fold."""
    sel = splits[(splits["seed"] == seed) & (splits["fold"] == fold)]
    return {r: sorted(sel.loc[sel["split"] == r, "patient_id"].astype(str)) for r in
            ("train", "val", "test")}


def split_summary(splits: pd.DataFrame, strata: Any) -> list[dict[str, Any]]:
    """Per (seed, fold, split): patients and positives (events), for reports."""
    import pandas as pd

    s = pd.Series(strata, name="y")
    m = splits.merge(s, left_on="patient_id", right_index=True, how="left")
    g = m.groupby(["seed", "fold", "split"], observed=True)["y"].agg(["size", "sum"])
    return [{"seed": int(a), "fold": int(b), "split": str(c), "patients": int(n),
             "positives": int(p)} for (a, b, c), (n, p) in g.iterrows()]
