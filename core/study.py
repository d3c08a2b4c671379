"""One experiment's set-up, built once and shared by ``run``, ``ablate`` and ``score``.

A :class:`Study` holds what every command derives from a config before any model is
trained: the validated config and the registry it was validated against, each modality's
plugin class with its settings, the fusion plugin, the cohort, the seeded split table,
the survival time grid and the sorted list of (split seed, fold). ``lungfuse run`` and
``lungfuse ablate`` build it from a config (:meth:`Study.from_config`); ``lungfuse score``
rebuilds it from a finished run folder (:meth:`Study.from_run_folder`: the run's saved
config, its recorded folds, no outcomes), so the three commands cannot drift apart in how
they read a config, pick plugins or enumerate folds.

The building blocks stay callable on their own (:func:`load_experiment`,
:func:`modality_classes`, :func:`fusion_plugin`, :func:`build_splits`,
:func:`check_coverage`, :func:`read_run_config`, :func:`recorded_folds`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lungfuse.core.cohort import Cohort
from lungfuse.core.contracts import FusionPlugin, ModalityContext, ModalityPlugin
from lungfuse.core.errors import DataError
from lungfuse.core.registry import FUSION_GROUP, MODALITY_GROUP, Registry, default_registry

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

    from lungfuse.core.folds import TrainedFold

__all__ = [
    "PluginSet",
    "Study",
    "build_splits",
    "check_coverage",
    "fusion_plugin",
    "load_experiment",
    "modality_classes",
    "read_run_config",
    "recorded_folds",
]

#: ``{modality name: (plugin class, its config)}``, in config order.
ModalityClasses = dict[str, tuple[type[ModalityPlugin], Any]]


# ----------------------------------------------------------------------------- plugins
class PluginSet(Registry):
    """The installed plugins plus extra plugin classes (tests, notebooks), which win."""

    def __init__(self, extra: Iterable[type], base: Registry | None = None) -> None:
        super().__init__()
        self.base = base or default_registry()
        self.extra: dict[str, dict[str, type]] = {MODALITY_GROUP: {}, FUSION_GROUP: {}}
        for p in extra:
            group = MODALITY_GROUP if issubclass(p, ModalityPlugin) else FUSION_GROUP
            self.extra[group][p.name] = p

    def entries(self, group: str) -> list[Any]:
        return self.base.entries(group)

    def plugins(self, group: str, *, warn: bool = True) -> dict[str, Any]:
        return {**self.base.plugins(group, warn=warn), **self.extra.get(group, {})}

    def get(self, group: str, name: str) -> Any:
        if name in self.extra.get(group, {}):
            return self.extra[group][name]
        return self.base.get(group, name)


def _registry(registry: Registry | None, plugins: Iterable[type] | None) -> Registry:
    reg: Registry = registry or default_registry()
    return PluginSet(plugins, reg) if plugins else reg


def load_experiment(config: Any, registry: Registry | None = None,
                    plugins: Iterable[type] | None = None,
                    overrides: dict[str, Any] | None = None) -> tuple[Any, Registry]:
    """Validate ``config`` (a path, a dict, or an already validated config) against the
    installed plugins plus ``plugins``; returns the config and the registry used."""
    from lungfuse.core.config import load_config, validate_config

    reg = _registry(registry, plugins)
    if isinstance(config, str | os.PathLike):
        return load_config(config, reg, overrides=overrides), reg
    if isinstance(config, dict):
        return validate_config({**config, **(overrides or {})}, registry=reg), reg
    return config, reg


def modality_classes(cfg: Any, registry: Registry) -> ModalityClasses:
    """``{modality name: (plugin class, its config)}`` in config order."""
    return {m.modality_name: (registry.get(MODALITY_GROUP, m.kind), m) for m in cfg.modalities}


def fusion_plugin(cfg: Any, registry: Registry) -> FusionPlugin:
    """The configured fusion head's plugin, built from its config."""
    return registry.get(FUSION_GROUP, cfg.fusion.kind)(cfg.fusion)


# ----------------------------------------------------------------------------- cohort
def check_coverage(mods: Mapping[str, tuple[type[ModalityPlugin], Any]], cohort: Cohort,
                   workdir: Path) -> dict[str, set[str]]:
    """Which patients each modality has; a modality covering no patient is a DataError."""
    out = {}
    features_only = cohort.without_outcomes()
    for name, (cls, mcfg) in mods.items():
        ctx = ModalityContext(workdir=workdir / name, progress=False)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        plugin = cls(mcfg)
        have = set(plugin.available(features_only, ctx)) & set(cohort.ids)
        if not have:
            from lungfuse.core.cohort import coverage_hint, modality_input_ids

            hint = coverage_hint(cohort.ids, modality_input_ids(plugin))
            raise DataError(f"modality '{name}' ({mcfg.kind}) covers none of the "
                            f"{len(cohort.ids)} patients of {cohort.source}; check its input "
                            f"files and that their sample ids match the patient ids ({hint})")
        out[name] = have
    return out


def build_splits(cfg: Any, cohort: Cohort) -> pd.DataFrame:
    """The split table of this experiment (see :func:`lungfuse.core.splits.make_splits`):
    with a "val" role under ``training.selection`` holdout, train/test only under inner_cv
    (:func:`lungfuse.core.splits.resolve_selection`)."""
    from lungfuse.core.splits import make_splits, resolve_selection

    ev = cfg.evaluation
    sel = resolve_selection(cfg.training, len(cohort.ids), ev.folds, ev.test_fraction)
    return make_splits(cohort.ids, cohort.strata, folds=ev.folds, test_fraction=ev.test_fraction,
                       val_fraction=cfg.training.val_fraction if sel == "holdout" else None,
                       seeds=ev.seeds, source=cohort.source)


def fold_list(splits: pd.DataFrame) -> list[tuple[int, int]]:
    """The sorted (split seed, fold) pairs of a split table."""
    return sorted({(int(s), int(k)) for s, k in splits[["seed", "fold"]].itertuples(index=False)})


# ----------------------------------------------------------------------------- run folders
def read_run_config(run_dir: Path, registry: Registry | None = None,
                    plugins: Iterable[type] | None = None) -> tuple[Any, Registry]:
    """The resolved config a run saved (``config.yaml``), validated against the plugins at
    hand without checking that its input files still exist (a run folder is scored or
    reloaded elsewhere); a missing or unreadable file is one line naming it."""
    import yaml

    from lungfuse.core.config import validate_config

    run_dir = Path(run_dir)
    reg = _registry(registry, plugins)
    path = run_dir / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing, so {run_dir} cannot be scored; restore the "
                        "run's config.yaml or re-run the experiment from its config") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot read the run's config ({type(exc).__name__}); the "
                        "run folder is damaged; restore it or re-run `lungfuse run`") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a run config (a YAML mapping); the run folder is damaged")
    cfg = validate_config(data, source=str(path), base_dir=run_dir, registry=reg,
                          check_paths=False)
    return cfg, reg


def recorded_folds(run_dir: Path, run: Mapping[str, Any]) -> list[tuple[int, int]]:
    """The (seed, fold) of every fold model a run trained, as the run recorded them:
    ``run.json``'s ``folds``, else the split assignment in ``splits.parquet``; never the
    folders that happen to exist (a deleted fold model must not go unnoticed)."""
    import pandas as pd

    run_dir = Path(run_dir)
    listed = run.get("folds")
    if listed:
        try:
            return sorted({(int(f["seed"]), int(f["fold"])) for f in listed})
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{run_dir / 'run.json'}: `folds` is malformed (each entry needs "
                            "seed and fold); the run folder is damaged; re-run `lungfuse run`"
                            ) from None
    path = run_dir / "splits.parquet"
    if not path.is_file():
        raise DataError(f"{path}: missing, and run.json does not list the folds; the run "
                        "folder is incomplete; score with a complete run")
    try:
        splits = pd.read_parquet(path, columns=["seed", "fold"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a damaged run folder
        raise DataError(f"{path}: cannot read the split assignment ({type(exc).__name__}); "
                        "the run folder is damaged; re-run `lungfuse run`") from None
    return fold_list(splits)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or {} where it is missing or not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ----------------------------------------------------------------------------- the study
@dataclass
class Study:
    """An experiment's set-up: everything ``run``, ``ablate`` and ``score`` derive from a
    config before training, built once.

    ``modalities`` maps each modality name to its plugin class and config (config order);
    ``folds`` is the sorted (split seed, fold) list. A study from a config has the cohort
    (outcomes included), its split table and, for survival, the evaluation time grid
    (:func:`lungfuse.core.survival.time_grid_of`); a study from a run folder has no cohort
    (new patients bring no outcomes), the run's split table where it is readable, and
    its ``run_dir``. ``coverage`` (patients per modality) is filled by
    :meth:`check_coverage`.
    """

    cfg: Any
    registry: Registry
    modalities: ModalityClasses
    fusion: FusionPlugin
    folds: list[tuple[int, int]]
    cohort: Cohort | None = None
    splits: pd.DataFrame | None = field(default=None, repr=False)
    time_grid: np.ndarray | None = None
    run_dir: Path | None = None
    coverage: dict[str, set[str]] | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: Any, registry: Registry | None = None,
                    plugins: Iterable[type] | None = None, *,
                    overrides: dict[str, Any] | None = None,
                    folds: int | None = None) -> Study:
        """Validate ``config`` (path, dict or config), resolve its plugins, read the cohort
        and make the splits. ``folds`` overrides ``evaluation.folds`` (``ablate --folds``)
        without touching the caller's config object."""
        from lungfuse.core.cohort import load_cohort
        from lungfuse.core.survival import time_grid_of

        cfg, reg = load_experiment(config, registry, plugins, overrides)
        if folds is not None:
            cfg = cfg.model_copy(update={
                "evaluation": cfg.evaluation.model_copy(update={"folds": int(folds)})})
        mods = modality_classes(cfg, reg)
        fusion = fusion_plugin(cfg, reg)
        cohort = load_cohort(cfg.cohort, cfg.task)
        splits = build_splits(cfg, cohort)
        return cls(cfg, reg, mods, fusion, fold_list(splits), cohort=cohort, splits=splits,
                   time_grid=time_grid_of(cohort))

    @classmethod
    def from_run_folder(cls, run_dir: Path, registry: Registry | None = None,
                        plugins: Iterable[type] | None = None, *,
                        run: Mapping[str, Any] | None = None) -> Study:
        """The study of a finished run: its saved config (validated against the plugins at
        hand, input files not required), its recorded folds (``run``: its run.json, read
        here when not given) and its split table where readable. No cohort: scoring has
        no outcomes to split."""
        import pandas as pd

        run_dir = Path(run_dir)
        cfg, reg = read_run_config(run_dir, registry, plugins)
        folds = recorded_folds(run_dir, run if run is not None else
                               _read_json(run_dir / "run.json"))
        splits = None
        try:
            splits = pd.read_parquet(run_dir / "splits.parquet")
        except Exception:  # noqa: BLE001 - the fold list is what scoring needs; splits are extra
            splits = None
        return cls(cfg, reg, modality_classes(cfg, reg), fusion_plugin(cfg, reg), folds,
                   splits=splits, run_dir=run_dir)

    @property
    def task(self) -> str:
        """``"binary"`` or ``"survival"``."""
        return str(self.cfg.task.kind)

    def fold_ids(self, seed: int, fold: int) -> dict[str, list[str]]:
        """``{"train"|"val"|"test": patient ids}`` of fold ``fold`` of split seed ``seed``."""
        from lungfuse.core.splits import fold_ids

        if self.splits is None:
            raise DataError(f"{self.run_dir or 'this study'}: no split table, so the patients "
                            f"of fold seed{seed}-fold{fold} are unknown")
        return fold_ids(self.splits, seed, fold)

    def check_coverage(self, names: Iterable[str] | None = None) -> dict[str, set[str]]:
        """Which cohort patients each modality (all, or ``names``) has; a modality covering
        nobody is a DataError. Plugins probe their inputs in a scratch folder."""
        if self.cohort is None:
            raise DataError(f"{self.run_dir}: a run folder has no cohort to check coverage on")
        mods = self.modalities if names is None else {m: self.modalities[m] for m in names}
        with tempfile.TemporaryDirectory(prefix="lungfuse-coverage") as tmp:
            self.coverage = check_coverage(mods, self.cohort, Path(tmp))
        return self.coverage

    def load_fold(self, seed: int, fold: int) -> TrainedFold:
        """Fold (seed, fold) of this study's run folder, ready to predict
        (:func:`lungfuse.core.folds.load_fold_model`)."""
        from lungfuse.core.folds import load_fold_model

        if self.run_dir is None:
            raise DataError("this study was built from a config, not a run folder; it has "
                            "no trained fold models to load")
        return load_fold_model(self.run_dir, seed, fold, study=self)
