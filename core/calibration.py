"""Post-hoc probability calibration, fitted on the validation split only.

Both methods map the model's logit :math:`z` to a probability:

* **Platt scaling**: :math:`p = \\sigma(a z + b)`, :math:`(a, b)` by (almost unpenalised)
  logistic regression of the validation labels on :math:`z` (scikit-learn).
* **Temperature scaling**: :math:`p = \\sigma(z / T)`, :math:`T > 0` minimising the
  validation log loss (a one-dimensional bounded search over :math:`\\log T`, SciPy).

Parameters are plain floats (JSON-serialisable) so a trained run can re-apply them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = ["apply_calibration", "fit_calibration", "sigmoid"]

log = logging.getLogger("lungfuse")


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=float)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_calibration(method: str, logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Fit ``method`` ("none", "platt", "temperature") on validation logits and labels.

    Falls back to the identity (``{"method": "none"}``, with a logged reason) when the
    validation split has a single class, where neither fit is identifiable.
    """
    z = np.asarray(logits, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if method == "none":
        return {"method": "none"}
    if len(np.unique(y)) < 2:
        log.warning("calibration skipped: the validation split has a single class")
        return {"method": "none", "reason": "single-class validation split"}
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], y.astype(int))
        return {"method": "platt", "a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}
    if method == "temperature":
        from scipy.optimize import minimize_scalar
        from sklearn.metrics import log_loss

        def nll(log_t: float) -> float:
            return float(log_loss(y, np.clip(sigmoid(z / np.exp(log_t)), 1e-7, 1 - 1e-7),
                                  labels=[0, 1]))

        res = minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded")
        return {"method": "temperature", "temperature": float(np.exp(res.x))}
    raise ValueError(f"unknown calibration method {method!r}")


def apply_calibration(params: dict[str, Any], logits: np.ndarray) -> np.ndarray:
    """Calibrated probabilities for ``logits`` under fitted ``params``."""
    z = np.asarray(logits, dtype=float)
    m = params.get("method", "none")
    if m == "platt":
        return sigmoid(params["a"] * z + params["b"])
    if m == "temperature":
        return sigmoid(z / params["temperature"])
    return sigmoid(z)
