"""Patient-level, stratified, seeded splits: K folds or one fixed test split, each with an
inner validation split taken from its training patients (``training.selection`` holdout)
or without one (inner_cv: the fold's whole training part is cross-validated inside
:func:`lungfuse.core.folds.train_fold`, see :func:`inner_splits`).

The split table (long format) has one row per (seed, fold, patient): ``patient_id``,
``seed``, ``fold``, ``split`` in {"train", "val", "test"} ("val" absent under inner_cv).
The same cohort, config and seed always give the same table; no patient is in two splits
of one fold.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from lungfuse.core.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

__all__ = ["fold_ids", "inner_splits", "make_splits", "resolve_selection", "split_summary"]


def make_splits(
    ids: list[str],
    strata: np.ndarray,
    *,
    folds: int = 5,
    test_fraction: float | None = None,
    val_fraction: float | None = 0.2,
    seeds: list[int] | tuple[int, ...] = (0,),
    source: str = "cohort",
) -> pd.DataFrame:
    """The split table for ``ids`` stratified on ``strata`` (class labels or event flags).

    With ``test_fraction`` one stratified test split (fold 0) replaces the K folds. Within
    each fold a stratified ``val_fraction`` of the training patients is held out for
    validation (early stopping, calibration); ``val_fraction`` None keeps every training
    patient in "train" (selection inner_cv). Seed ``s`` drives both levels.
    """
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold, train_test_split

    ids_a = np.asarray(ids, dtype=object)
    y = np.asarray(strata).astype(int)
    classes, counts = np.unique(y, return_counts=True)
    small_class, small = classes[counts.argmin()], int(counts.min())
    if test_fraction is None:
        if folds > small:
            # advice names folds that work (evaluation.folds is at least 2: never "<= 1")
            raise DataError(
                f"{source}: {folds} folds but class {small_class} has only {small} "
                f"patient(s); {_folds_advice(counts, None)}")
    elif small < 2:
        raise DataError(f"{source}: class {small_class} has {small} patient; "
                        "a stratified test split needs at least 2 per class; add patients")
    rows = []
    for seed in seeds:
        if test_fraction is None:
            skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
            outer = list(skf.split(ids_a, y))
        else:
            try:
                tr, te = train_test_split(np.arange(len(y)), test_size=test_fraction,
                                          stratify=y, random_state=seed)
            except ValueError as exc:  # sklearn: test split smaller than the class count ...
                raise DataError(
                    f"{source}: evaluation.test_fraction {test_fraction} of {len(y)} patients "
                    f"gives no stratified test split ({exc}); raise test_fraction or add "
                    "patients") from None
            outer = [(np.sort(tr), np.sort(te))]
        for k, (tr, te) in enumerate(outer):
            _, tr_counts = np.unique(y[tr], return_counts=True)
            if len(tr_counts) < len(classes) or tr_counts.min() < 2:
                raise DataError(
                    f"{source}: fold {k} has fewer than 2 training patients in a class, too "
                    f"few for a validation split; {_folds_advice(counts, test_fraction)}")
            if val_fraction is None:  # inner_cv: the whole training part trains
                for role, idx in (("train", tr), ("test", te)):
                    for i in idx:
                        rows.append((ids_a[i], seed, k, role))
                continue
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


def _folds_advice(counts: np.ndarray, test_fraction: float | None) -> str:
    """The evaluation.folds that keep 2+ training patients of every class in every fold
    (one to fit, one to validate), or "add patients" when none does.

    A fold's test part holds at most ceil(n / k) of a class of n patients, so k folds work
    when n - ceil(n / k) >= 2 for every class, and k cannot exceed the smallest class:
    more folds leave more patients to train on, fewer folds fewer.
    """
    if test_fraction is not None:
        return "lower evaluation.test_fraction or add patients"
    small = int(counts.min())
    ok = [k for k in range(2, small + 1)
          if all(int(n) - math.ceil(int(n) / k) >= 2 for n in counts)]
    if not ok:
        return "add patients: K-fold cross-validation needs at least 3 per class"
    lo, hi = ok[0], ok[-1]
    rng = f": {lo}" if lo == hi else f" between {lo} and {hi}"
    return f"use evaluation.folds{rng}, or add patients"


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


def resolve_selection(training: Any, n_patients: int, folds: int,
                      test_fraction: float | None) -> str:
    """``"holdout"`` or ``"inner_cv"``: ``training.selection``, with ``auto`` resolved on
    the size of a fold's training part (``n_patients`` less one fold, or less the test
    fraction): inner_cv below ``training.inner_cv_below`` patients, holdout from there up.
    Configs written before the setting existed have neither field: holdout."""
    sel = str(getattr(training, "selection", "holdout"))
    if sel != "auto":
        return sel
    share = test_fraction if test_fraction is not None else 1.0 / folds
    n_train = int(n_patients - math.ceil(share * n_patients))
    return "inner_cv" if n_train < int(getattr(training, "inner_cv_below", 0)) else "holdout"


def inner_splits(strata: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray,
                                                                          np.ndarray]]:
    """The inner cross-validation of a fold's training patients (their ``strata`` in the
    order of the sorted ids): ``(fit, val)`` index pairs of a seeded stratified K-fold
    (scikit-learn), with K lowered to the smallest class's size so every inner validation
    part holds each class (the split table guarantees at least 2 per class)."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(strata).astype(int)
    _, counts = np.unique(y, return_counts=True)
    k = max(2, min(int(folds), int(counts.min())))
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=int(seed))
    return [(np.sort(a), np.sort(b)) for a, b in skf.split(np.zeros(len(y)), y)]
