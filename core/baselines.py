"""Classical baselines beside the fused model: the contract, and running them on a fold.

Every learned model's figures stand beside classical models trained on the same folds, so
a user sees what fusion adds (or that it adds nothing). A baseline is a plugin registered
under the ``lungfuse.baselines`` entry-point group, exactly like a modality or a fusion
head; the built-in ones (``logreg``, ``coxnet``, ``coxph``, ``rsf``) live in
``lungfuse.plugins.baselines`` and core never names them.

What a baseline sees, per (split seed, fold):

- ``X``: one row per patient, the fold's train-fitted feature tables of the modalities it
  is given (default: all of the run's modalities), concatenated, each column named
  ``<modality>:<column>``. A patient without a modality has NaN in its columns: the
  baseline's own pipeline imputes them with numbers fitted on the training rows; a patient
  is never dropped, so every baseline scores exactly the model's held-out patients;
- plus, where the plugin asks for them (:meth:`BaselinePlugin.cohort_columns`), raw
  columns of the cohort table under their own names (never an outcome column);
- the training target (:class:`BaselineTarget`) of the fold's non-test patients, whatever
  roles the split table gives them (train, val, ...);
- and the fold's seed for anything random.

``fit`` returns an object with ``predict(X) -> scores`` (higher = more risk; a probability
of the positive class for a binary task). A published fixed model (``needs_fit = False``,
e.g. the Brock model) is asked for :meth:`BaselinePlugin.fixed` instead and never sees a
training outcome. Fitted baselines are not stored (nothing that would need pickle): their
held-out scores are, in ``baselines/predictions.parquet`` of the run folder.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import Field, ValidationError

from lungfuse.core.contracts import PLUGIN_API_VERSION, PluginConfig
from lungfuse.core.errors import ConfigError, DataError, LungfuseError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

    from lungfuse.core.cohort import Cohort
    from lungfuse.core.registry import Registry

__all__ = [
    "BASELINE_GROUP",
    "BaselineConfig",
    "BaselinePlugin",
    "BaselineTarget",
    "FittedBaseline",
    "ResolvedBaseline",
    "add_to_run",
    "as_prediction_table",
    "available_baselines",
    "baseline_metrics",
    "cli_lines",
    "check_cohort_columns",
    "design_matrix",
    "fold_differences",
    "fit_and_score",
    "headline_of",
    "resolve_baselines",
    "run_baselines",
    "verdict",
]

log = logging.getLogger("lungfuse")

#: Entry-point group of baseline plugins.
BASELINE_GROUP = "lungfuse.baselines"
#: File of the held-out baseline scores, in the run folder's ``baselines/``.
PRED_FILE = "predictions.parquet"


class BaselineConfig(PluginConfig):
    """Base config of a baseline plugin; subclasses add ``kind: Literal["<name>"]`` and
    their own settings."""

    name: str | None = Field(
        default=None, description="Label of this baseline in tables (defaults to `kind`); "
        "lets one baseline be configured twice with different settings.")
    modalities: list[str] | None = Field(
        default=None, description="Modalities whose train-fitted features the baseline "
        "uses (default: all of the experiment's modalities).")

    @property
    def label(self) -> str:
        return self.name or self.kind


@dataclass
class BaselineTarget:
    """The training outcome handed to ``fit``: ``y`` (0/1) for a binary task, ``time`` and
    ``event`` for survival (the arrays not used by the task are None)."""

    task: str
    y: np.ndarray | None = None
    time: np.ndarray | None = None
    event: np.ndarray | None = None

    def surv(self) -> Any:
        """scikit-survival's structured (event, time) array."""
        from sksurv.util import Surv

        return Surv.from_arrays(event=self.event.astype(bool), time=self.time.astype(float))


class FittedBaseline(Protocol):
    """What ``fit`` (or ``fixed``) returns."""

    def predict(self, X: pd.DataFrame) -> Any:  # pragma: no cover - a protocol
        """One score per row of ``X`` (higher = more risk; binary: a probability)."""


class BaselinePlugin:
    """A classical model fitted on one fold's features, scored on its held-out patients.

    Declare ``name``, ``api_version``, ``tasks`` (``"binary"`` and/or ``"survival"``) and
    ``config_model`` (a :class:`BaselineConfig` subclass with ``kind: Literal[name]``);
    implement :meth:`fit`, or set ``needs_fit = False`` and implement :meth:`fixed`.
    ``uses_features = False`` hands the plugin no feature columns (only the cohort columns
    it names). Modules must import cheaply: heavy imports inside methods.
    """

    name: ClassVar[str] = ""
    api_version: ClassVar[int] = PLUGIN_API_VERSION
    config_model: ClassVar[type[BaselineConfig]] = BaselineConfig
    tasks: ClassVar[tuple[str, ...]] = ()
    needs_fit: ClassVar[bool] = True
    uses_features: ClassVar[bool] = True
    #: one line for reports and `lungfuse plugins`: the model and how its settings are chosen
    description: ClassVar[str] = ""

    def __init__(self, config: BaselineConfig) -> None:
        self.config = config

    def cohort_columns(self) -> list[str]:
        """Raw cohort columns to add to ``X`` under their own names (default: none).
        Outcome columns are never handed out; a column the cohort lacks is one line."""
        return []

    def fit(self, X: pd.DataFrame, target: BaselineTarget, *, seed: int) -> FittedBaseline:
        """Fit on the training rows ``X`` (index: patient ids) and their ``target``."""
        raise NotImplementedError(f"baseline {self.name!r} declares needs_fit but has no fit")

    def fixed(self) -> FittedBaseline:
        """The model itself, for a baseline that needs no fit (``needs_fit = False``)."""
        raise NotImplementedError(f"baseline {self.name!r} needs a fit")


@dataclass
class ResolvedBaseline:
    """A configured baseline: its label, plugin instance and the modalities it uses."""

    label: str
    plugin: BaselinePlugin
    modalities: list[str]
    origin: str = "injected"

    @property
    def config(self) -> BaselineConfig:
        return self.plugin.config


# ----------------------------------------------------------------------------- resolving
def available_baselines(registry: Registry, task: str) -> dict[str, type[BaselinePlugin]]:
    """``{name: plugin class}`` of the installed baselines that support ``task``."""
    out = {}
    for name, cls in registry.plugins(BASELINE_GROUP, warn=False).items():
        if isinstance(cls, type) and issubclass(cls, BaselinePlugin) and task in cls.tasks:
            out[name] = cls
    return dict(sorted(out.items()))


def resolve_baselines(cfg: Any, registry: Registry, source: str = "config"
                      ) -> list[ResolvedBaseline]:
    """The config's ``baselines`` as plugin instances, checked before anything is written.

    A name that is not installed, or a baseline that does not support the task, is one
    line listing the baselines available for the task; bad settings name the entry."""
    entries = list(getattr(cfg, "baselines", None) or [])
    if not entries:
        return []
    task = str(cfg.task.kind)
    mods = [m.modality_name for m in cfg.modalities]
    avail = available_baselines(registry, task)
    origins = {e.name: e.origin for e in registry.entries(BASELINE_GROUP)}
    listing = ", ".join(avail) or "none installed"
    out: list[ResolvedBaseline] = []
    for i, entry in enumerate(entries):
        data = {"kind": entry} if isinstance(entry, str) else _entry_dict(entry)
        kind = str(data.get("kind", ""))
        where = f"{source}: baselines[{i}]"
        if kind not in avail:
            why = _why_not(registry, kind, task)
            raise ConfigError(f"{where}: {why}; baselines available for a {task} task: "
                              f"{listing} (fix the name, or install the package that adds it)")
        cls = avail[kind]
        try:
            bcfg = cls.config_model.model_validate(data)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            raise ConfigError(f"{where}.{loc}: {err.get('msg', 'invalid')} (baseline "
                              f"'{kind}')") from None
        use = list(bcfg.modalities) if bcfg.modalities else list(mods)
        unknown = [m for m in use if m not in mods]
        if unknown:
            raise ConfigError(f"{where}.modalities: '{unknown[0]}' is not a modality of the "
                              f"experiment (configured: {', '.join(mods)})")
        out.append(ResolvedBaseline(bcfg.label, cls(bcfg), use, origins.get(kind, "injected")))
    labels = [b.label for b in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"{source}: baselines: '{dup[0]}' configured twice; give each a "
                          "distinct `name`")
    return out


def check_cohort_columns(baselines: Sequence[ResolvedBaseline], columns: Sequence[str],
                         source: str = "config") -> None:
    """Refuse, before any run folder exists, a baseline that reads cohort columns the
    cohort table (``columns``, outcomes excluded) lacks: one line naming the missing
    column(s), the columns present and the baseline setting that names them. Without it
    the baseline would fail only after every fold had trained."""
    have = [str(c) for c in columns]
    for b in baselines:
        missing = [c for c in b.plugin.cohort_columns() if c not in have]
        if not missing:
            continue
        cfg = b.plugin.config.model_dump(mode="python")
        settings = [k for k, v in cfg.items() if isinstance(v, str) and v in missing]
        fix = (f"set `{'`, `'.join(settings)}` of that baseline to the column's name, or "
               "to null where the setting allows it"
               if settings else "add the column(s) to the cohort table")
        raise ConfigError(f"{source}: baseline '{b.label}' reads cohort column(s) "
                          f"{', '.join(repr(c) for c in missing)}, which the cohort table "
                          f"does not have (columns: {', '.join(have) or 'none'}); {fix}")


def _entry_dict(entry: Any) -> dict[str, Any]:
    if isinstance(entry, Mapping):
        return dict(entry)
    return entry.model_dump(mode="python", exclude_unset=False)


def _why_not(registry: Registry, kind: str, task: str) -> str:
    """Why ``kind`` cannot be used for ``task``: not installed, broken, or another task."""
    entries = [e for e in registry.entries(BASELINE_GROUP) if e.name == kind]
    if not entries:
        return f"no baseline named '{kind}'"
    try:
        cls = registry.get(BASELINE_GROUP, kind)
    except LungfuseError as exc:
        return f"baseline '{kind}' is installed but unusable ({exc})"
    if not (isinstance(cls, type) and issubclass(cls, BaselinePlugin)):
        return f"baseline '{kind}' is not a lungfuse BaselinePlugin"
    return (f"baseline '{kind}' supports {'/'.join(cls.tasks) or 'no'} tasks, not {task}")


# ----------------------------------------------------------------------------- one fold
def design_matrix(b: ResolvedBaseline, features: Mapping[str, pd.DataFrame],
                  rows: pd.DataFrame | None, ids: Sequence[str]) -> pd.DataFrame:
    """``X`` of patients ``ids`` for baseline ``b``: its modalities' feature columns as
    ``<modality>:<column>`` (NaN where a patient lacks the modality) and the raw cohort
    columns it asks for (``rows``: the cohort table without outcomes, by patient id)."""
    import pandas as pd

    idx = pd.Index([str(i) for i in ids], name="patient_id")
    parts = []
    if b.plugin.uses_features:
        for m in b.modalities:
            f = features[m]
            f = f.set_axis([f"{m}:{c}" for c in f.columns], axis=1)
            f.index = f.index.astype(str)
            parts.append(f.reindex(idx))
    want = b.plugin.cohort_columns()
    if want:
        if rows is None:
            raise DataError(f"baseline '{b.label}' reads cohort columns but no cohort table "
                            "is at hand")
        missing = [c for c in want if c not in rows.columns]
        if missing:
            raise DataError(f"baseline '{b.label}' reads cohort column '{missing[0]}', which "
                            f"the cohort table does not have (columns: {', '.join(rows.columns)})")
        parts.append(rows[want].reindex(idx))
    if not parts:
        return pd.DataFrame(index=idx)
    return pd.concat(parts, axis=1)


def fit_and_score(b: ResolvedBaseline, X_train: pd.DataFrame, target: BaselineTarget,
                  X_test: pd.DataFrame, seed: int) -> np.ndarray:
    """Fit ``b`` on the training rows (or take its fixed model) and score the test rows;
    the scores are checked (one per row, finite, a probability for a binary task)."""
    import numpy as np

    model = b.plugin.fit(X_train, target, seed=seed) if b.plugin.needs_fit else b.plugin.fixed()
    score = np.asarray(model.predict(X_test), dtype=float).reshape(-1)
    if score.shape[0] != len(X_test):
        raise ValueError(f"predict returned {score.shape[0]} scores for {len(X_test)} patients")
    if not np.isfinite(score).all():
        raise ValueError("predict returned NaN or infinite scores")
    if target.task == "binary" and ((score < 0) | (score > 1)).any():
        raise ValueError("a binary baseline must return probabilities in [0, 1]")
    return score


def run_baselines(baselines: Sequence[ResolvedBaseline], splits: pd.DataFrame,
                  folds: Sequence[tuple[int, int]], cohort: Cohort,
                  features_of: Callable[[str, int, int], pd.DataFrame]
                  ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every baseline on every (seed, fold): fitted on the fold's non-test patients (any
    role but ``test``), scored on its test patients.

    Returns the held-out table (patient_id, seed, fold, baseline, score and the outcome
    columns ``y`` or ``time``/``event``) and ``{label: reason}`` of baselines that failed
    on some fold: such a baseline is reported and left out whole (a partial one would be
    compared on other patients), the others and the run carry on."""
    import warnings

    import pandas as pd

    task = cohort.task
    out_cols = cohort.outcome_columns
    table = cohort.table.set_axis(cohort.table.index.astype(str), axis=0)
    rows = cohort.without_outcomes().set_axis(table.index, axis=0)
    parts: list[pd.DataFrame] = []
    failed: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for b in baselines:
        mine: list[pd.DataFrame] = []
        t0 = time.perf_counter()
        try:
            for seed, fold in folds:
                s = splits[(splits["seed"] == seed) & (splits["fold"] == fold)]
                test = sorted(s.loc[s["split"] == "test", "patient_id"].astype(str))
                train = sorted(s.loc[s["split"] != "test", "patient_id"].astype(str))
                feats = {m: features_of(m, seed, fold) for m in b.modalities} \
                    if b.plugin.uses_features else {}
                x_tr = design_matrix(b, feats, rows, train)
                x_te = design_matrix(b, feats, rows, test)
                tgt = _target(task, table, out_cols, train)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # convergence chatter of inner fits
                    score = fit_and_score(b, x_tr, tgt, x_te, seed=int(seed) * 1000 + int(fold))
                part = pd.DataFrame({"patient_id": test, "seed": int(seed), "fold": int(fold),
                                     "baseline": b.label, "score": score})
                if task == "binary":
                    part["y"] = table.loc[test, out_cols[0]].to_numpy().astype(int)
                else:
                    part["time"] = table.loc[test, out_cols[0]].to_numpy().astype(float)
                    part["event"] = table.loc[test, out_cols[1]].to_numpy().astype(int)
                mine.append(part)
        except Exception as exc:  # noqa: BLE001 - one baseline failing must not end the run
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
            failed[b.label] = f"seed {seed} fold {fold}: {msg}"
            log.warning("baseline %s failed on seed %s fold %s (%s); it is left out",
                        b.label, seed, fold, msg)
            continue
        seconds[b.label] = round(time.perf_counter() - t0, 2)
        parts.extend(mine)
        log.info("baseline %s: %d folds in %.1f s", b.label, len(folds), seconds[b.label])
    cols = ["patient_id", "seed", "fold", "baseline", "score"] + (
        ["y"] if task == "binary" else ["time", "event"])
    pred = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    pred.attrs["seconds"] = seconds
    return pred, failed


def _target(task: str, table: pd.DataFrame, out_cols: Sequence[str],
            ids: Sequence[str]) -> BaselineTarget:
    sub = table.loc[list(ids)]
    if task == "binary":
        return BaselineTarget(task, y=sub[out_cols[0]].to_numpy().astype(int))
    return BaselineTarget(task, time=sub[out_cols[0]].to_numpy().astype(float),
                          event=sub[out_cols[1]].to_numpy().astype(int))


# ----------------------------------------------------------------------------- metrics
def as_prediction_table(pred: pd.DataFrame, label: str, model_pred: pd.DataFrame,
                        task: str) -> pd.DataFrame:
    """One baseline's held-out scores in the model's prediction-table form (``prob`` /
    ``prob_calibrated`` or ``risk``, with the model's availability ``pattern`` of each
    patient), so the model's evaluation code scores it unchanged."""
    sub = pred[pred["baseline"] == label].drop(columns=["baseline"])
    pat = model_pred[["patient_id", "seed", "fold", "pattern"]].astype(
        {"patient_id": str, "seed": int, "fold": int})
    t = sub.astype({"patient_id": str, "seed": int, "fold": int}).merge(
        pat, on=["patient_id", "seed", "fold"], how="left", validate="one_to_one")
    t["pattern"] = t["pattern"].fillna("?")
    if task == "binary":
        t["prob"] = t["score"]
        t["prob_calibrated"] = t["score"]
    else:
        t["risk"] = t["score"]
    return t.drop(columns=["score"])


def same_patients(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two prediction tables hold the same (seed, fold, patient) triples."""
    def key(t: pd.DataFrame) -> set[tuple[int, int, str]]:
        return {(int(s), int(f), str(p)) for s, f, p in
                t[["seed", "fold", "patient_id"]].itertuples(index=False)}
    return key(a) == key(b)


def baseline_metrics(baselines: Sequence[ResolvedBaseline], pred: pd.DataFrame,
                     failed: Mapping[str, str], model_pred: pd.DataFrame, cfg: Any,
                     cohort: Cohort | None, time_grid: Any,
                     model_name: str = "model") -> dict[str, Any]:
    """The ``baselines`` block of ``metrics.json``: per baseline, the same metrics as the
    model (:func:`~lungfuse.core.evaluation.evaluate_predictions`, bootstrap CIs, fold
    mean ± sd) and the paired bootstrap difference of the primary metric, model minus
    baseline, on the same held-out patients (first split seed)."""
    from lungfuse.core.evaluation import PRIMARY, evaluate_predictions, paired_difference

    task = cfg.task.kind
    primary = PRIMARY[task]
    secs = pred.attrs.get("seconds", {})
    out: dict[str, Any] = {}
    for b in baselines:
        head = {"kind": b.config.kind, "modalities": b.modalities, "origin": b.origin,
                "description": type(b.plugin).description,
                "settings": b.config.model_dump(mode="json")}
        if b.label in failed:
            out[b.label] = {**head, "status": "failed", "reason": failed[b.label]}
            continue
        t = as_prediction_table(pred, b.label, model_pred, task)
        if not same_patients(t, model_pred):
            out[b.label] = {**head, "status": "failed",
                            "reason": "scored other held-out patients than the model"}
            continue
        m = evaluate_predictions(t, cfg, cohort, time_grid)
        d = paired_difference(model_pred, t, task, cfg.evaluation.bootstrap, cfg.seed)
        out[b.label] = {**head, "status": "ok", "seconds": secs.get(b.label),
                        "metrics": m, "difference": {"metric": primary, "minus": b.label,
                                                     "of": model_name, **d}}
    return out


def fold_differences(model_metrics: Mapping[str, Any], baseline_metrics: Mapping[str, Any],
                     metric: str) -> dict[str, float]:
    """Per-fold differences of ``metric`` (model - baseline) over every (seed, fold) test
    fold both were evaluated on (``per_seed.<s>.per_fold``; folds where either is
    undefined left out): their ``mean``, ``sd`` (ddof=1), ``folds`` counted and
    ``baseline_won`` (folds where the baseline's value was higher)."""
    import numpy as np

    diffs = []
    for seed, res in (model_metrics.get("per_seed") or {}).items():
        theirs = ((baseline_metrics.get("per_seed") or {}).get(seed) or {}).get("per_fold") or {}
        for fold, vals in (res.get("per_fold") or {}).items():
            a, b = vals.get(metric), (theirs.get(fold) or {}).get(metric)
            if a is not None and b is not None and np.isfinite(a) and np.isfinite(b):
                diffs.append(float(a) - float(b))
    d = np.asarray(diffs, float)
    return {"mean": float(d.mean()) if len(d) else math.nan,
            "sd": float(d.std(ddof=1)) if len(d) > 1 else math.nan,
            "folds": int(len(d)), "baseline_won": int(np.sum(d < 0))}


def verdict(model_metrics: Mapping[str, Any], blocks: Mapping[str, Any],
            model_name: str = "the model") -> list[str]:
    """One sentence per baseline that beats the model on the primary metric; empty when
    none does.

    Binary: on the pooled AUROC (the headline), "beats" when the 95% CI of the paired
    difference (model - baseline) lies below 0, else "a higher pooled estimate only".
    Survival: on the per-fold c-index, as the headline (mean +/- sd over folds; pooled
    risks of separately trained fold models are on different scales): a baseline whose
    mean per-fold difference (model - baseline) is below 0 gets a sentence with that mean,
    its sd and how many folds the baseline won; it "beats" the model when it won every
    fold, else the sentence says the difference is not shown. The pooled paired CI
    follows, labelled pooled."""
    from lungfuse.core.evaluation import PRIMARY

    task = model_metrics.get("task", "binary")
    primary = PRIMARY.get(task, "auroc")
    mine = model_metrics.get("overall", {}).get(primary, {}).get("value", math.nan)
    out = []
    for label, blk in blocks.items():
        if blk.get("status") != "ok":
            continue
        theirs = blk["metrics"]["overall"][primary]["value"]
        d = blk["difference"]
        ci = (f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if d["ci_low"] == d["ci_low"]
              else "(no CI)")
        if task == "survival":
            f = fold_differences(model_metrics, blk["metrics"], primary)
            if not f["folds"] or not f["mean"] < 0:
                continue
            sd = f"{f['sd']:.3f}" if f["sd"] == f["sd"] else "n/a"
            head = (f"mean per-fold difference (model - {label}) {f['mean']:+.3f} +/- {sd} "
                    f"(sd over {f['folds']} folds; {label} higher in {f['baseline_won']} of "
                    f"{f['folds']})")
            pooled = f"pooled paired difference {d['difference']:+.3f} {ci}"
            if f["baseline_won"] == f["folds"] and f["folds"] > 1:
                out.append(f"Baseline {label} beats {model_name} on the per-fold {primary} in "
                           f"every fold: {head}; {pooled}.")
            else:
                out.append(f"Baseline {label} has a higher mean per-fold {primary} than "
                           f"{model_name}, not in every fold: {head}; {pooled}. A higher mean "
                           "only, not a shown difference.")
            continue
        if not (theirs == theirs and mine == mine) or theirs <= mine:
            continue
        if d["ci_high"] == d["ci_high"] and d["ci_high"] < 0:
            out.append(f"Baseline {label} beats {model_name}: pooled {primary} {theirs:.3f} "
                       f"vs {mine:.3f}; the pooled paired difference (model - {label}) is "
                       f"{d['difference']:+.3f} {ci}, a 95% CI that excludes 0.")
        else:
            out.append(f"Baseline {label} has a higher pooled {primary} than {model_name} "
                       f"({theirs:.3f} vs {mine:.3f}), but the 95% CI of the pooled paired "
                       f"difference (model - {label}) {ci} includes 0: a higher mean "
                       "only, not a shown difference.")
    return out


def add_to_run(baselines: Sequence[ResolvedBaseline], study: Any, run_dir: Any,
               model_pred: pd.DataFrame, metrics: dict[str, Any]) -> None:
    """``lungfuse run``'s baseline step, after the folds: every baseline on the run's own
    split table and its saved train-fitted feature tables
    (``features/<modality>/seed<S>-fold<K>.parquet``), held-out scores written to
    ``baselines/predictions.parquet``, and ``metrics`` given its ``baselines`` block and
    ``baseline_verdict`` sentences (empty when no baseline beats the model)."""
    from pathlib import Path

    import pandas as pd

    from lungfuse.core import atomic

    if not baselines:
        return
    run_dir = Path(run_dir)
    cache: dict[tuple[str, int, int], pd.DataFrame] = {}

    def features_of(m: str, seed: int, fold: int) -> pd.DataFrame:
        key = (m, int(seed), int(fold))
        if key not in cache:
            cache[key] = pd.read_parquet(run_dir / "features" / m / f"seed{seed}-fold{fold}.parquet")
        return cache[key]

    pred, failed = run_baselines(baselines, study.splits, study.folds, study.cohort, features_of)
    atomic.write_parquet(run_dir / "baselines" / PRED_FILE, pred, index=False)
    metrics["baselines"] = baseline_metrics(baselines, pred, failed, model_pred, study.cfg,
                                            study.cohort, study.time_grid)
    metrics["baseline_verdict"] = verdict(metrics, metrics["baselines"])


# ----------------------------------------------------------------------------- text
def _ci(v: Mapping[str, Any]) -> str:
    return f" [{v['ci_low']:.3f}, {v['ci_high']:.3f}]" if v.get("ci_low") == v.get("ci_low") \
        and v.get("ci_low") is not None else ""


def headline_of(metrics: Mapping[str, Any]) -> str:
    """Held-out metrics on one ASCII line: ``name value [low, high]; ...``; for survival
    the c-indices read ``mean +/- sd over N folds, pooled value [low, high]``."""
    parts = []
    survival = metrics.get("task") == "survival"
    fs = metrics.get("fold_summary", {})
    for k, v in metrics.get("overall", {}).items():
        if v["value"] != v["value"]:
            continue
        f = fs.get(k)
        if survival and k in ("harrell_c", "uno_c") and f and f["mean"] == f["mean"]:
            sd = f" +/- {f['sd']:.3f}" if f["sd"] == f["sd"] else ""
            parts.append(f"{k} {f['mean']:.3f}{sd} (mean +/- sd over {f['folds']} folds), "
                         f"pooled {v['value']:.3f}{_ci(v)}")
        else:
            parts.append(f"{k} {v['value']:.3f}{_ci(v)}")
    return "; ".join(parts)


def cli_lines(metrics: Mapping[str, Any]) -> list[str]:
    """One line per baseline (its primary metric and the paired difference with the model)
    and the verdict sentences, for the ``lungfuse run`` summary."""
    from lungfuse.core.evaluation import PRIMARY

    blocks = metrics.get("baselines") or {}
    if not blocks:
        return []
    primary = PRIMARY.get(metrics.get("task", "binary"), "auroc")
    out = []
    for label, b in blocks.items():
        if b.get("status") != "ok":
            out.append(f"baseline {label}: failed ({b.get('reason', '?')})")
            continue
        m = b["metrics"]
        v = m["overall"][primary]
        f = m.get("fold_summary", {}).get(primary, {})
        if metrics.get("task") == "survival" and f.get("mean") == f.get("mean"):
            fig = (f"{primary} {f['mean']:.3f} +/- {f['sd']:.3f} (mean +/- sd over "
                   f"{f['folds']} folds), pooled {v['value']:.3f}{_ci(v)}")
        else:
            fig = f"{primary} {v['value']:.3f}{_ci(v)}"
        d = b["difference"]
        out.append(f"baseline {label}: {fig}; model - {label}: {d['difference']:+.3f}{_ci(d)}")
    out.extend(metrics.get("baseline_verdict") or [])
    return out
