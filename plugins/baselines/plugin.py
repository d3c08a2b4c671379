"""The built-in baselines, each a scikit-learn / scikit-survival model behind the same
train-only pipeline.

Pipeline (fitted on the fold's training rows only, inside ``fit``): median imputation with a
missing-indicator column per feature that had missing values in training (a patient
without a modality gets the training medians of its columns and indicator 1), columns
constant among the training rows dropped, then (``standardize``, default on) z-scoring
with the training mean and sd. Every choice a model makes (C; l1_ratio and alpha) is made
by an inner cross-validation on the training rows, never on the fold's test patients.

- ``logreg`` (binary): ``LogisticRegressionCV``, L2, C on a log grid by stratified inner
  K-fold CV on AUROC;
- ``coxnet`` (survival): ``CoxnetSurvivalAnalysis``; for each l1_ratio one alpha path from
  the training rows, the (l1_ratio, alpha) pair by inner K-fold CV (stratified on the
  event) on Harrell's C, refitted on all training rows;
- ``coxph`` (survival): ``CoxPHSurvivalAnalysis`` with a small fixed ridge (Efron ties);
- ``rsf`` (survival): ``RandomSurvivalForest`` (100 trees, leaves of >= 15, sqrt features).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from lungfuse.core.baselines import BaselineConfig, BaselinePlugin, BaselineTarget

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd


class _Preprocessed:
    """A fitted preprocessing pipeline and a model fitted on its output."""

    def __init__(self, pre: Any, predict: Any) -> None:
        self.pre = pre
        self._predict = predict

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self._predict(self.pre.transform(_numeric(X)))


def _numeric(X: pd.DataFrame) -> np.ndarray:
    """``X`` as a float matrix (features are numeric; a non-numeric column is one line)."""
    import numpy as np

    bad = [c for c in X.columns if X[c].dtype.kind not in "biuf"]
    if bad:
        raise ValueError(f"column '{bad[0]}' is not numeric; the built-in baselines use "
                         "numeric feature columns only")
    return X.to_numpy(dtype=np.float64, na_value=np.nan)


def _preprocess(X: pd.DataFrame, standardize: bool) -> tuple[Any, np.ndarray]:
    """The train-only pipeline of the module docstring, fitted on ``X``; with its output."""
    from sklearn.feature_selection import VarianceThreshold
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps: list[Any] = [SimpleImputer(strategy="median", add_indicator=True),
                        VarianceThreshold(0.0)]
    if standardize:
        steps.append(StandardScaler())
    pre = make_pipeline(*steps)
    x = pre.fit_transform(_numeric(X))
    return pre, x


def _inner_folds(labels: np.ndarray, wanted: int) -> int:
    """Inner CV folds: ``wanted``, at most the smaller class's size; 0 when it is < 2."""
    import numpy as np

    counts = np.bincount(np.asarray(labels, int), minlength=2)
    return min(wanted, int(counts.min())) if counts.min() >= 2 else 0


class BuiltinConfig(BaselineConfig):
    """Settings shared by the built-in baselines."""

    standardize: bool = Field(
        default=True, description="z-score the columns with the training rows' mean and sd "
        "(after imputation); off reproduces the models on the modality features as they are.")


# ----------------------------------------------------------------------------- logreg
class LogRegConfig(BuiltinConfig):
    kind: Literal["logreg"] = "logreg"
    Cs: list[float] = Field(default_factory=lambda: [10.0 ** (k / 2) for k in range(-8, 9)],
                            min_length=1, description="Inverse L2 strengths tried (17 "
                            "values from 1e-4 to 1e4).")
    inner_folds: int = Field(default=5, ge=2, description="Stratified inner CV folds for C.")
    max_iter: int = Field(default=10_000, ge=100)


class LogReg(BaselinePlugin):
    """L2 logistic regression, C by stratified inner CV on AUROC."""

    name = "logreg"
    tasks = ("binary",)
    config_model = LogRegConfig
    description = "L2 logistic regression (LogisticRegressionCV; C by inner stratified CV on AUROC)"

    def fit(self, X: pd.DataFrame, target: BaselineTarget, *, seed: int) -> _Preprocessed:
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
        from sklearn.model_selection import StratifiedKFold

        c = self.config
        pre, x = _preprocess(X, c.standardize)
        y = target.y
        k = _inner_folds(y, c.inner_folds)
        if k >= 2:
            m = LogisticRegressionCV(Cs=list(c.Cs), cv=StratifiedKFold(k, shuffle=True,
                                                                     random_state=seed),
                                     scoring="roc_auc", max_iter=c.max_iter)
        else:  # too few of a class to choose C: the default strength
            m = LogisticRegression(C=1.0, max_iter=c.max_iter)
        m.fit(x, y)
        return _Preprocessed(pre, lambda xt: m.predict_proba(xt)[:, 1])


# ----------------------------------------------------------------------------- coxnet
class CoxnetConfig(BuiltinConfig):
    kind: Literal["coxnet"] = "coxnet"
    l1_ratios: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9], min_length=1,
                                   description="Elastic-net mixing values tried.")
    n_alphas: int = Field(default=30, ge=2, description="Length of each alpha path.")
    alpha_min_ratio: float = Field(default=0.01, gt=0, lt=1)
    inner_folds: int = Field(default=5, ge=2, description="Inner CV folds (stratified on "
                             "the event) for (l1_ratio, alpha).")
    max_iter: int = Field(default=100_000, ge=100)


class Coxnet(BaselinePlugin):
    """Elastic-net Cox, (l1_ratio, alpha) by inner CV on Harrell's C."""

    name = "coxnet"
    tasks = ("survival",)
    config_model = CoxnetConfig
    description = ("elastic-net Cox (CoxnetSurvivalAnalysis; l1_ratio and alpha by inner "
                   "CV on Harrell's C)")

    def fit(self, X: pd.DataFrame, target: BaselineTarget, *, seed: int) -> _Preprocessed:
        import numpy as np
        from sklearn.model_selection import StratifiedKFold
        from sksurv.linear_model import CoxnetSurvivalAnalysis
        from sksurv.metrics import concordance_index_censored

        c = self.config
        pre, x = _preprocess(X, c.standardize)
        y, t, e = target.surv(), target.time, target.event.astype(bool)
        k = _inner_folds(e.astype(int), c.inner_folds)
        inner = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(x, e)) \
            if k >= 2 else []
        best: tuple[float, float, float | None] = (-1.0, c.l1_ratios[0], None)
        for l1 in c.l1_ratios:
            path = CoxnetSurvivalAnalysis(l1_ratio=l1, n_alphas=c.n_alphas,
                                          alpha_min_ratio=c.alpha_min_ratio,
                                          max_iter=c.max_iter).fit(x, y).alphas_
            scores = np.full((len(inner), len(path)), np.nan)
            for i, (a, b) in enumerate(inner):
                if not e[b].any():
                    continue
                try:
                    m = CoxnetSurvivalAnalysis(l1_ratio=l1, alphas=path, max_iter=c.max_iter)
                    m.fit(x[a], y[a])
                except (ArithmeticError, ValueError):
                    continue
                for j, alpha in enumerate(path):
                    scores[i, j] = concordance_index_censored(
                        e[b], t[b], m.predict(x[b], alpha=alpha))[0]
            if not np.isfinite(scores).any():
                if best[2] is None:  # no inner estimate at all: the path's smallest alpha
                    best = (-1.0, l1, float(path[-1]))
                continue
            mean = np.nanmean(scores, axis=0)
            j = int(np.nanargmax(mean))
            if mean[j] > best[0]:
                best = (float(mean[j]), l1, float(path[j]))
        _, l1, alpha = best
        m = CoxnetSurvivalAnalysis(l1_ratio=l1, alphas=[alpha], max_iter=c.max_iter).fit(x, y)
        return _Preprocessed(pre, m.predict)


# ----------------------------------------------------------------------------- coxph
class CoxPHConfig(BuiltinConfig):
    kind: Literal["coxph"] = "coxph"
    alpha: float = Field(default=0.1, ge=0, description="Fixed ridge penalty.")
    ties: Literal["efron", "breslow"] = "efron"
    n_iter: int = Field(default=200, ge=1)


class CoxPH(BaselinePlugin):
    """Cox proportional hazards with a small fixed ridge."""

    name = "coxph"
    tasks = ("survival",)
    config_model = CoxPHConfig
    description = "Cox proportional hazards with a fixed ridge (CoxPHSurvivalAnalysis)"

    def fit(self, X: pd.DataFrame, target: BaselineTarget, *, seed: int) -> _Preprocessed:
        from sksurv.linear_model import CoxPHSurvivalAnalysis

        c = self.config
        pre, x = _preprocess(X, c.standardize)
        m = CoxPHSurvivalAnalysis(alpha=c.alpha, ties=c.ties, n_iter=c.n_iter)
        m.fit(x, target.surv())
        return _Preprocessed(pre, m.predict)


# ----------------------------------------------------------------------------- rsf
class RSFConfig(BuiltinConfig):
    kind: Literal["rsf"] = "rsf"
    n_estimators: int = Field(default=100, ge=1)
    min_samples_leaf: int = Field(default=15, ge=1)
    max_features: Literal["sqrt", "log2"] | float | None = "sqrt"
    max_samples: int | None = Field(default=None, ge=1, description="Patients drawn per "
                                    "tree (bounds time and memory on big cohorts).")
    n_jobs: int = Field(default=1, ge=1)


class RSF(BaselinePlugin):
    """Random survival forest."""

    name = "rsf"
    tasks = ("survival",)
    config_model = RSFConfig
    description = "random survival forest (RandomSurvivalForest)"

    def fit(self, X: pd.DataFrame, target: BaselineTarget, *, seed: int) -> _Preprocessed:
        from sksurv.ensemble import RandomSurvivalForest

        c = self.config
        pre, x = _preprocess(X, c.standardize)
        m = RandomSurvivalForest(n_estimators=c.n_estimators,
                                 min_samples_leaf=c.min_samples_leaf,
                                 max_features=c.max_features, max_samples=c.max_samples,
                                 low_memory=True, n_jobs=c.n_jobs, random_state=seed)
        m.fit(x, target.surv())
        return _Preprocessed(pre, m.predict)
