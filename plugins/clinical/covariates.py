"""Reading, fitting and applying clinical covariates (pandas, pyarrow, scikit-learn).

Fit (training patients only, those with at least one configured value):

- numeric columns: :class:`sklearn.impute.SimpleImputer` (median or mean), then (with
  ``transform: yeo-johnson``, the default) the Yeo-Johnson power transform
  :math:`\\psi_\\lambda` with :math:`\\lambda` fitted by maximum likelihood
  (:class:`sklearn.preprocessing.PowerTransformer`) on the training patients' *observed*
  values (imputed ones would pile up at the median), applied with
  :func:`scipy.stats.yeojohnson`; then :class:`sklearn.preprocessing.StandardScaler`. A
  feature is :math:`(\\psi_\\lambda(x_{\\text{imputed}}) - \\mu) / \\sigma` with
  :math:`\\mu, \\sigma` the training mean and sd after imputation and transform (σ = 1 for a
  constant column, as scikit-learn does). A column with fewer than 3 distinct training
  values keeps :math:`\\lambda = 1` (the identity). The transform is monotone, so a forest
  sees the same orderings; linear and neural heads see skewed columns (node counts,
  receptor levels) near-normal instead of dominated by a few extreme patients;
- categorical columns: :class:`sklearn.preprocessing.OneHotEncoder` with
  ``handle_unknown="ignore"`` over the training levels, missing values mapped to an
  explicit level first.

Only the fitted numbers are kept (fill values, lambdas, means, sds, level lists, as plain JSON
types), never the scikit-learn objects: a run folder's state must not execute code when
loaded, and stored numbers survive scikit-learn upgrades. :func:`apply` uses them directly.

Missing values are never silent zeros: each numeric column ``c`` has a ``c__missing``
indicator (1 where the value was imputed), always, so the feature columns do not depend
on which patients happened to be in training; each categorical column has an explicit
``c__missing`` level. A level unseen in training is all zeros in its block, and logged.
A configured column without any value among the training patients is dropped with a
warning (nothing can be learnt from it, and its features would be constant).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungfuse.core.errors import DataError
from lungfuse.plugins.clinical.plugin import MISSING_SUFFIX, ClinicalConfig

__all__ = ["apply", "check_state", "fit", "has_value", "read_covariates", "write_example"]

#: Version of the fitted-state layout written by :func:`fit`.
STATE_FORMAT = 1
#: Stand-in for a missing categorical value while fitting the one-hot encoder.
_MISSING_LEVEL = "\x00missing"
_STATE_KEYS = ("format", "numeric", "fill", "center", "scale", "categorical", "levels",
               "columns")


# -- reading -------------------------------------------------------------------------------
def _listing(names: list[str], limit: int = 30) -> str:
    shown = ", ".join(names[:limit]) or "none"
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _not_found(where: str, cfg: ClinicalConfig, missing: list[str], present: list[str],
               hint: str) -> DataError:
    which = ", ".join(f"'{c}' ({'numeric' if c in cfg.numeric else 'categorical'})"
                      for c in missing)
    return DataError(f"{where}: clinical column(s) {which} named in the config not found; "
                     f"columns present: {_listing(present)}; fix the names under "
                     f"`numeric`/`categorical`{hint}")


def read_covariates(cfg: ClinicalConfig, rows: pd.DataFrame) -> pd.DataFrame:
    """The configured columns for the patients of ``rows.index`` (as strings).

    From ``cfg.path`` when set (patients absent from the file get all-missing rows), else
    from ``rows`` themselves. Numeric columns come back as float64 with NaN for missing,
    categorical ones as text levels with None for missing.
    """
    cols = [*cfg.numeric, *cfg.categorical]
    ids = pd.Index([str(p) for p in rows.index], name="patient_id")
    if cfg.path is None:
        where = "cohort table"
        present = [str(c) for c in rows.columns]
        missing = [c for c in cols if c not in rows.columns]
        if missing and not present:
            raise DataError(f"clinical: the patient rows carry no columns, so the covariates "
                            f"{', '.join(cols)} cannot be read; give a clinical table holding "
                            "them (for `lungfuse score`: the input's `clinical:`)")
        if missing:
            raise _not_found(where, cfg, missing, present,
                             " (the task's outcome columns are never offered as covariates)")
        tab = rows[cols].copy()
        tab.index = ids
    else:
        where = str(cfg.path)
        tab = _read_file(cfg, cols).reindex(ids)
    return _normalise(tab, cfg, where)


def _read_file(cfg: ClinicalConfig, cols: list[str]) -> pd.DataFrame:
    """Project the id and configured columns out of ``cfg.path`` (pyarrow)."""
    import pyarrow.parquet as pq

    path = Path(cfg.path)  # type: ignore[arg-type]
    if not path.is_file():
        raise DataError(f"{path}: clinical covariate file not found; check `path` of the "
                        "clinical modality")
    try:
        names = list(pq.read_schema(path).names)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the user's file
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}); convert "
                        "it, e.g. pandas.read_csv(...).to_parquet(...)") from None
    pid = cfg.patient_id
    if pid not in names:
        raise DataError(f"{path}: patient id column '{pid}' not found (columns: "
                        f"{_listing(names)}); set `patient_id` of the clinical modality")
    missing = [c for c in cols if c not in names]
    if missing:
        raise _not_found(str(path), cfg, missing, [n for n in names if n != pid], "")
    df = pq.read_table(path, columns=[pid, *cols]).to_pandas()
    ids = df[pid]
    if ids.isna().any():
        raise DataError(f"{path}: {int(ids.isna().sum())} row(s) have no '{pid}'; every row "
                        "needs a patient id")
    ids = ids.astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError(f"{path}: patient '{dup.iloc[0]}' appears more than once; the "
                        "clinical file needs one row per patient")
    return df.drop(columns=[pid]).set_index(pd.Index(ids, name="patient_id"))


def _level(v: Any) -> str | None:
    """A categorical value as text (1.0 → '1'); None where missing or blank."""
    if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    text = str(v).strip()
    return text or None


def _normalise(tab: pd.DataFrame, cfg: ClinicalConfig, where: str) -> pd.DataFrame:
    out = pd.DataFrame(index=tab.index)
    for c in cfg.numeric:
        s = tab[c]
        if pd.api.types.is_bool_dtype(s.dtype):
            s = s.astype("Float64")
        num = pd.to_numeric(s, errors="coerce")
        bad = num.isna() & s.notna()
        if bad.any():
            raise DataError(f"{where}: numeric clinical column '{c}' holds non-numeric value "
                            f"{s[bad].iloc[0]!r} (patient {s[bad].index[0]}); list it under "
                            "`categorical` or fix the value")
        vals = num.to_numpy(dtype="float64", na_value=np.nan)
        if np.isinf(vals).any():
            p = tab.index[np.isinf(vals)][0]
            raise DataError(f"{where}: numeric clinical column '{c}' is infinite for patient "
                            f"{p}; fix the value or leave it empty (missing)")
        out[c] = vals
    for c in cfg.categorical:
        out[c] = pd.Series([_level(v) for v in tab[c].to_numpy(dtype=object)],
                           index=tab.index, dtype=object)
    return out


def has_value(tab: pd.DataFrame, cfg: ClinicalConfig | None = None,
              cols: list[str] | None = None) -> pd.Series:
    """Rows with at least one non-missing value in ``cols`` (default: the configured ones)."""
    if cols is None:
        assert cfg is not None
        cols = [*cfg.numeric, *cfg.categorical]
    return tab[cols].notna().any(axis=1)


# -- fitting -------------------------------------------------------------------------------
def fit(cfg: ClinicalConfig, tab: pd.DataFrame, log: logging.Logger) -> dict[str, Any]:
    """Fit imputation, scaling and levels on the training rows of ``tab`` that have data."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rows = tab[has_value(tab, cfg)]
    cols = [*cfg.numeric, *cfg.categorical]
    if rows.empty:
        raise DataError(f"clinical: none of the {len(tab)} training patient(s) has a value in "
                        f"{', '.join(cols)}; check the clinical table and the column names")
    dropped = [c for c in cols if rows[c].isna().all()]
    if dropped:
        log.warning("clinical: column(s) %s have no value for any of the %d training "
                    "patients; dropped from the features (nothing to learn from them)",
                    ", ".join(dropped), len(rows))
    numeric = [c for c in cfg.numeric if c not in dropped]
    categorical = [c for c in cfg.categorical if c not in dropped]
    state: dict[str, Any] = {"format": STATE_FORMAT, "n_train": len(rows),
                             "impute": cfg.impute, "scaled": cfg.scale,
                             "numeric": numeric, "fill": [], "lambdas": [],
                             "transform": cfg.transform, "center": [], "scale": [],
                             "categorical": categorical, "levels": [], "dropped": dropped}
    columns: list[str] = []
    if numeric:
        x = rows[numeric].to_numpy(dtype="float64")
        imputer = SimpleImputer(strategy=cfg.impute).fit(x)
        filled = imputer.transform(x)
        state["fill"] = [float(v) for v in imputer.statistics_]
        state["transform"] = cfg.transform
        state["lambdas"] = _fit_lambdas(x, cfg.transform)
        filled = _power(filled, state["lambdas"])
        if cfg.scale:
            scaler = StandardScaler().fit(filled)
            state["center"] = [float(v) for v in scaler.mean_]
            state["scale"] = [float(v) for v in scaler.scale_]
        else:
            state["center"] = [0.0] * len(numeric)
            state["scale"] = [1.0] * len(numeric)
        for c in numeric:
            columns += [c, c + MISSING_SUFFIX]
        n_miss = {c: int(rows[c].isna().sum()) for c in numeric if rows[c].isna().any()}
        if n_miss:
            log.info("clinical: missing values among %d training patients imputed with the "
                     "training %s and flagged in <col>%s: %s", len(rows), cfg.impute,
                     MISSING_SUFFIX, ", ".join(f"{c} {n}" for c, n in n_miss.items()))
    if categorical:
        cats = rows[categorical].fillna(_MISSING_LEVEL).to_numpy(dtype=object)
        encoder = OneHotEncoder(handle_unknown="ignore").fit(cats)
        for c, found in zip(categorical, encoder.categories_, strict=True):
            levels = [str(v) for v in found if v != _MISSING_LEVEL]
            state["levels"].append(levels)
            columns += [f"{c}={lv}" for lv in levels] + [c + MISSING_SUFFIX]
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise DataError(f"clinical: feature name '{dup[0]}' arises twice from the configured "
                        "columns and their levels; rename a column or a level")
    state["columns"] = columns
    return state


def _fit_lambdas(x: np.ndarray, transform: str) -> list[float]:
    """Yeo-Johnson lambdas per column of ``x`` (training rows, NaN = missing), fitted on the
    observed values; 1.0 (the identity) with ``transform: none`` and for a column with fewer
    than 3 distinct observed values (binary codes stay as they are)."""
    from sklearn.preprocessing import PowerTransformer

    lambdas = []
    for j in range(x.shape[1]):
        col = x[:, j][~np.isnan(x[:, j])]
        if transform == "none" or np.unique(col).size < 3:
            lambdas.append(1.0)
            continue
        fitted = PowerTransformer(method="yeo-johnson", standardize=False).fit(col[:, None])
        lam = float(fitted.lambdas_[0])
        lambdas.append(lam if np.isfinite(lam) else 1.0)
    return lambdas


def _power(x: np.ndarray, lambdas: list[float]) -> np.ndarray:
    """``x`` (no NaN) with each column through Yeo-Johnson at its fitted lambda."""
    from scipy.stats import yeojohnson

    out = np.array(x, dtype="float64", copy=True)
    for j, lam in enumerate(lambdas):
        if lam != 1.0:
            out[:, j] = yeojohnson(out[:, j], lmbda=lam)
    return out


def check_state(state: Any) -> dict[str, Any]:
    """A fitted state as :func:`fit` returns it (lists may arrive as numpy arrays)."""
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing or int(state["format"]) != STATE_FORMAT:
        raise DataError(f"clinical: fitted state is not of format {STATE_FORMAT} (missing "
                        f"{', '.join(missing) or 'nothing'}, format {state.get('format')!r}); "
                        "re-run the experiment with this lungfuse version")
    out = dict(state)
    for k in ("fill", "center", "scale"):
        out[k] = [float(v) for v in np.asarray(state[k], dtype="float64").ravel()]
    # states written before the power transform existed have no lambdas: the identity
    lambdas = state.get("lambdas")
    lambdas = [1.0] * len(out["fill"]) if lambdas is None else lambdas
    out["lambdas"] = [float(v) for v in np.asarray(lambdas, dtype="float64").ravel()]
    if len(out["lambdas"]) != len(out["fill"]) or not np.isfinite(out["lambdas"]).all():
        raise DataError(f"clinical: fitted state has {len(out['lambdas'])} transform "
                        f"lambda(s) for {len(out['fill'])} numeric column(s), or a "
                        "non-finite one; re-run the experiment with this lungfuse version")
    for k in ("numeric", "categorical", "columns"):
        out[k] = [str(v) for v in state[k]]
    out["levels"] = [[str(v) for v in lv] for lv in state["levels"]]
    return out


# -- applying ------------------------------------------------------------------------------
def apply(state: dict[str, Any], tab: pd.DataFrame, log: logging.Logger) -> pd.DataFrame:
    """Features of the patients of ``tab`` with a value in a fitted column (others absent)."""
    numeric, categorical = state["numeric"], state["categorical"]
    rows = tab[has_value(tab, cols=[*numeric, *categorical])]
    out: dict[str, np.ndarray] = {}
    if numeric:
        x = rows[numeric].to_numpy(dtype="float64")
        miss = np.isnan(x)
        x = np.where(miss, np.asarray(state["fill"]), x)
        x = _power(x, state.get("lambdas") or [1.0] * len(numeric))
        x = (x - np.asarray(state["center"])) / np.asarray(state["scale"])
        for j, c in enumerate(numeric):
            out[c] = x[:, j]
            out[c + MISSING_SUFFIX] = miss[:, j].astype("float64")
    for c, levels in zip(categorical, state["levels"], strict=True):
        s = rows[c]
        for lv in levels:
            out[f"{c}={lv}"] = s.eq(lv).to_numpy(dtype="float64")
        out[c + MISSING_SUFFIX] = s.isna().to_numpy(dtype="float64")
        unseen = s.notna() & ~s.isin(levels)
        if unseen.any():
            new = sorted(set(s[unseen]))
            log.warning("clinical: column '%s' has level(s) %s not seen in training for %d "
                        "patient(s) (e.g. %s); encoded as all zeros in its one-hot block",
                        c, ", ".join(repr(v) for v in new), int(unseen.sum()),
                        s.index[unseen][0])
    feats = pd.DataFrame(out, index=rows.index, columns=state["columns"], dtype="float64")
    feats.index.name = "patient_id"
    return feats


# -- example -------------------------------------------------------------------------------
def write_example(workdir: Path, patient_ids: list[str]) -> ClinicalConfig:
    """A tiny covariate file for ``patient_ids``: every 5th patient is absent from it, the
    third has a row with every value missing, and some ages, pack-years and sexes are
    missing, so every path of the modality is exercised."""
    from lungfuse.core.atomic import write_parquet

    rng = np.random.default_rng(0)
    rows = []
    for i, p in enumerate(patient_ids):
        if i % 5 == 4:
            continue
        age = float(rng.integers(40, 85)) if i % 3 != 1 else np.nan
        pack = round(float(rng.lognormal(3.0, 0.6)), 1) if i % 8 != 0 else np.nan
        sex = ("F" if rng.random() < 0.5 else "M") if i % 7 != 3 else None
        if i == 2:
            age, pack, sex = np.nan, np.nan, None
        rows.append({"patient_id": p, "age": age, "pack_years": pack, "sex": sex})
    workdir.mkdir(parents=True, exist_ok=True)
    path = write_parquet(workdir / "clinical_covariates.parquet", pd.DataFrame(rows),
                         index=False)
    return ClinicalConfig(path=path, numeric=["age", "pack_years"], categorical=["sex"],
                          hidden=[8], embedding_dim=4)
