"""Hyper-parameter search inside a training fold (``training.search``, Optuna).

Per outer fold, an Optuna study (TPE sampler, seeded from the fold's seed) tries
``training.search.trials`` settings of the optimiser — learning rate and weight decay
(log-uniform within the configured ranges) and, if given, a batch size from a list — and
keeps the one with the lowest validation loss measured on the fold's **training
patients only**:

- ``training.selection: inner_cv``: the value of a trial is the mean, over the inner
  folds, of each inner model's best validation loss (the inner models of
  :func:`lungfuse.core.folds._select_epochs`, which also give that trial's epoch count
  and out-of-fold outputs); the winning trial's record is the fold's selection, and one
  model is refitted on every training patient with its settings;
- ``training.selection: holdout``: the value is the best validation loss on the fold's
  validation patients (carved from the training fold), and the fold then trains as usual
  with the winning settings.

Test patients are in neither: their outcomes and features cannot move any choice (a test
changes them and compares every trial's value). The study lives in memory (nothing is
stored or loaded); its trials go into the fold's ``meta.json`` under ``search``.
Validation losses from different batch sizes and learning rates are comparable (the same
per-patient loss on the same validation patients), which is what makes them a fair
objective.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

log = logging.getLogger("lungfuse")

__all__ = ["run_search", "with_params"]


def with_params(cfg: Any, params: dict[str, Any]) -> Any:
    """``cfg`` with the training settings of ``params`` (lr, weight_decay, batch_size)."""
    training = cfg.training.model_copy(update=dict(params))
    return cfg.model_copy(update={"training": training})


def _suggest(trial: Any, space: Any) -> dict[str, Any]:
    lo, hi = space.lr
    params: dict[str, Any] = {"lr": trial.suggest_float("lr", lo, hi, log=True)}
    lo, hi = space.weight_decay
    params["weight_decay"] = trial.suggest_float("weight_decay", lo, hi, log=True)
    if space.batch_size:
        params["batch_size"] = int(trial.suggest_categorical("batch_size",
                                                             list(space.batch_size)))
    return params


def run_search(cfg: Any, seed: int, evaluate: Callable[[Any], tuple[float, Any]],
               where: str = "") -> dict[str, Any]:
    """Run the study: ``evaluate(cfg_with_trial_settings) -> (validation loss, record)``
    is called once per trial. Returns ``{"best_params", "best_value", "best_record",
    "trials": [{"number", "params", "value"}]}``. A trial whose loss is not finite counts
    as failed (Optuna skips it); if every trial fails, the configured settings are kept
    (``best_params`` empty) and ``best_record`` is None."""
    import optuna

    space = cfg.training.search
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=int(seed) % (2 ** 32),
                                         n_startup_trials=min(space.startup_trials,
                                                              space.trials))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    records: dict[int, Any] = {}

    def objective(trial: Any) -> float:
        params = _suggest(trial, space)
        value, record = evaluate(with_params(cfg, params))
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"validation loss {value}")
        records[trial.number] = record
        return float(value)

    study.optimize(objective, n_trials=int(space.trials), catch=())
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    trials = [{"number": t.number, "params": dict(t.params),
               "value": (round(float(t.value), 6) if t.value is not None else None)}
              for t in study.trials]
    if not done:
        log.warning("%s: no search trial gave a finite validation loss; the configured "
                    "training settings are kept", where or "search")
        return {"best_params": {}, "best_value": None, "best_record": None, "trials": trials}
    best = min(done, key=lambda t: (float(t.value), t.number))
    return {"best_params": dict(best.params), "best_value": round(float(best.value), 6),
            "best_record": records[best.number], "trials": trials}
