"""The pydantic models of what lungfuse accepts.

``ExperimentConfig`` is assembled at run time from the static sections below and the
config models of the installed plugins (a union discriminated by ``kind``), see
:func:`experiment_model`. Plugin authors use :data:`InputPath` for files their plugin
reads: such paths are resolved relative to the config file and must exist;
:data:`InputFile` is the same for a file (a folder is refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from lungfuse.core.contracts import FusionConfig, ModalityConfig, PluginConfig

SCHEMA_FILE = Path(__file__).with_name("lungfuse.schema.json")
EXAMPLES_DIR = Path(__file__).with_name("examples")


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("base_dir", Path.cwd()))


def _resolve_input(v: Path, info: ValidationInfo) -> Path:
    p = Path(v).expanduser()
    if not p.is_absolute():
        p = _base_dir(info) / p
    p = p.resolve()
    if (info.context or {}).get("check_paths", True) and not p.exists():
        raise ValueError(f"file not found: {p} (paths are relative to the config file)")
    return p


def _resolve_input_file(v: Path, info: ValidationInfo) -> Path:
    """Like :func:`_resolve_input`, and refuse a folder: a table handed a folder would fail
    later with a reader's traceback, or read an unrelated partitioned dataset."""
    p = _resolve_input(v, info)
    if (info.context or {}).get("check_paths", True) and p.is_dir():
        raise ValueError(f"expected a file, found a folder: {p}; give the file inside it")
    return p


def _resolve_output(v: Path, info: ValidationInfo) -> Path:
    p = Path(v).expanduser()
    if not p.is_absolute():
        p = _base_dir(info) / p
    return p.resolve()


#: A file or folder the experiment reads: resolved relative to the config file, must exist.
InputPath = Annotated[Path, AfterValidator(_resolve_input)]
#: A file the experiment reads (a table, a list): like InputPath, and not a folder.
InputFile = Annotated[Path, AfterValidator(_resolve_input_file)]
#: A location the experiment writes: resolved relative to the config file.
OutputPath = Annotated[Path, AfterValidator(_resolve_output)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class CohortConfig(Section):
    """The cohort/clinical table: one row per patient."""

    clinical: InputFile = Field(description="Parquet table, one row per patient.")
    patient_id: str = Field(default="patient_id", description="Column holding the patient id.")
    sample_map: InputFile | None = Field(
        default=None,
        description="Optional Parquet table (sample_id, patient_id) mapping omics sample ids "
        "to patients where they differ.",
    )


class TaskConfig(Section):
    """What is predicted."""

    kind: Literal["binary", "survival"] = "binary"
    outcome: str = Field(default="malignant", description="Binary outcome column (0/1).")
    time: str = Field(default="time", description="Survival time column (> 0).")
    event: str = Field(default="event", description="Event indicator column (0/1).")


class SearchConfig(Section):
    """Optional hyper-parameter search inside each training fold (Optuna; docs/training.md).

    ``trials: 0`` (the default) searches nothing. Each trial is scored on the fold's
    training patients only: the mean inner-fold validation loss under selection inner_cv,
    the validation split's loss under holdout."""

    trials: int = Field(default=0, ge=0, le=500, description="Optuna trials per training "
                        "fold (0: no search, the configured settings are used).")
    startup_trials: int = Field(default=5, ge=1, description="Random trials before the TPE "
                                "sampler models the results.")
    lr: tuple[float, float] = Field(default=(1e-4, 1e-2), description="Learning-rate range "
                                    "(log-uniform).")
    weight_decay: tuple[float, float] = Field(default=(1e-6, 1e-1), description="Weight-decay "
                                              "range (log-uniform).")
    batch_size: list[int] = Field(default_factory=list, description="Batch sizes to choose "
                                  "from (empty: keep training.batch_size).")

    @model_validator(mode="after")
    def _ranges(self) -> SearchConfig:
        for name in ("lr", "weight_decay"):
            lo, hi = getattr(self, name)
            if not 0 < lo < hi:
                raise ValueError(f"search.{name}: give [low, high] with 0 < low < high "
                                 f"(got [{lo}, {hi}])")
        if any(b < 1 for b in self.batch_size):
            raise ValueError("search.batch_size: every batch size must be >= 1")
        return self


class TrainingConfig(Section):
    """Optimisation of the fusion model."""

    max_epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    patience: int = Field(default=10, ge=1, description="Early stopping patience (epochs).")
    val_fraction: float = Field(
        default=0.2, gt=0, lt=1,
        description="Share of each training fold held out for validation (early stopping and "
        "calibration) where selection is holdout.",
    )
    selection: Literal["auto", "holdout", "inner_cv"] = Field(
        default="auto",
        description="How the epoch count is chosen. holdout: early stopping on val_fraction "
        "of the training fold. inner_cv: the whole training fold is split into inner_folds "
        "stratified folds, each inner model stops early on its own part, and one model is "
        "refitted on every training patient for the median of their best epochs. auto: "
        "inner_cv where a fold's training part has fewer than inner_cv_below patients, "
        "holdout otherwise (docs/training.md).",
    )
    inner_folds: int = Field(default=5, ge=2, le=20,
                             description="Inner cross-validation folds (selection inner_cv).")
    inner_cv_below: int = Field(
        default=1000, ge=0,
        description="selection auto: training parts smaller than this use inner_cv.",
    )
    search: SearchConfig = Field(default_factory=SearchConfig, description="Optional "
                                 "Optuna search of lr / weight decay / batch size inside "
                                 "each training fold.")


class TrainerConfig(Section):
    """Passed through to ``lightning.Trainer`` (Lightning is the distributed engine)."""

    accelerator: str = Field(default="cpu", description="cpu, gpu, cuda, mps, auto ...")
    devices: int | str | list[int] = Field(default=1, description="Number, list or 'auto'.")
    num_nodes: int = Field(default=1, ge=1)
    strategy: str = Field(default="auto", description="auto, ddp, ddp_spawn, fsdp ...")
    precision: str | int = Field(default="32-true", description="32-true, 16-mixed, bf16-mixed ...")
    deterministic: bool | str = True
    cpu_threads: int | None = Field(
        default=1, ge=1,
        description="torch intra-op threads for fusion training/prediction on CPU (small "
        "fusion models run fastest single-threaded, and a shared machine stays responsive); "
        "null keeps torch's default.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Any other lightning.Trainer keyword arguments."
    )


class EvaluationConfig(Section):
    """How held-out performance is measured."""

    folds: int = Field(default=5, ge=2, description="Stratified K-fold cross-validation.")
    test_fraction: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Instead of K folds, one fixed stratified test split of this size.",
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    bootstrap: int = Field(default=1000, ge=0, description="Bootstrap resamples for 95% CIs.")
    calibration: Literal["none", "temperature", "platt"] = "platt"
    specificity: float = Field(default=0.9, gt=0, lt=1, description="For sensitivity at specificity.")
    time_unit: Literal["days", "months", "years"] | None = Field(
        default=None,
        description="Survival: what the cohort's time column counts. Known, it makes "
        "`horizons` years (default 1-6); unknown (null), horizons are in the time column's "
        "own unit and there are none unless given (docs/survival.md).",
    )
    horizons: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None, min_length=1, max_length=20,
        description="Survival: risk by these horizons (years when time_unit is set, else the "
        "time column's unit): P(event by h) per fold model, its spread, and a calibration "
        "check per horizon. A horizon past the follow-up is reported as not estimable.",
    )

    @model_validator(mode="after")
    def _distinct_horizons(self) -> EvaluationConfig:
        h = self.horizons or []
        if len(set(h)) != len(h):
            raise ValueError("evaluation.horizons: a horizon is listed twice; list each once")
        return self


class BaselineEntry(BaseModel):
    """One classical baseline: ``kind`` names a ``lungfuse.baselines`` plugin; the other
    keys are that plugin's settings, checked against its config model when the run starts
    (:func:`lungfuse.core.baselines.resolve_baselines`), before anything is written."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    kind: str = Field(min_length=1, description="Baseline name, e.g. logreg, coxnet, rsf.")


class ExperimentConfigBase(Section):
    """Static sections of an experiment; ``modalities`` and ``fusion`` are added from the
    installed plugins by :func:`experiment_model`."""

    name: str = Field(default="experiment", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    cohort: CohortConfig
    task: TaskConfig = Field(default_factory=TaskConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    output_dir: OutputPath = Field(default=Path("runs"), validate_default=True,
                                   description="Run folders go here (relative to the config).")
    baselines: list[str | BaselineEntry] = Field(
        default_factory=list,
        description="Classical baselines fitted on the same folds and train-fitted features "
        "as the model and reported beside it: a name (`logreg`) or a mapping with `kind` "
        "and its settings (`{kind: coxnet, l1_ratios: [0.5]}`); built in: logreg (binary), "
        "coxnet, coxph, rsf (survival), more through the lungfuse.baselines entry point "
        "(docs/baselines.md). Default: none.")

    @model_validator(mode="after")
    def _unique_modality_names(self) -> ExperimentConfigBase:
        mods = getattr(self, "modalities", None) or []
        names = [m.modality_name for m in mods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(
                f"modality name(s) {', '.join(dup)} used twice; give each a distinct `name`"
            )
        return self


class NoduleLocation(Section):
    """Where a nodule is, in world millimetres (the scan's physical coordinates, as LUNA16's
    ``annotations.csv`` gives them)."""

    x: float
    y: float
    z: float
    diameter_mm: float = Field(gt=0, le=100, description="Nodule diameter (mm).")


class ScorePatient(Section):
    """One patient to score."""

    id: str = Field(min_length=1, description="Patient id (as the omics tables name it).")
    ct: InputPath | None = Field(
        default=None, description="CT volume: .mhd, NIfTI, NRRD file or a DICOM series folder.")
    nodule: NoduleLocation | None = Field(
        default=None, description="Known nodule location; without it the whole scan is searched.")
    series: str | None = Field(
        default=None, min_length=1, description="With `ct` a DICOM study folder: the "
        "SeriesInstanceUID to read (default: the thinnest axial CT series, docs/ct.md).")

    @model_validator(mode="after")
    def _series_needs_ct(self) -> ScorePatient:
        if self.series is not None and self.ct is None:
            raise ValueError("`series` names a series of the patient's `ct` study folder; "
                             "give `ct` too")
        return self


class ScoreInput(Section):
    """What ``lungfuse score`` reads: the patients, and where their data are.

    ``modalities`` overrides data settings of the run's modalities for the new patients,
    e.g. ``{mutations: {path: new_calls.parquet}}``; a modality whose data cannot be read
    for a patient is scored as missing, and the patient's page says so.
    """

    patients: list[ScorePatient] = Field(min_length=1)
    clinical: InputFile | None = Field(
        default=None, description="Optional Parquet table of the patients' covariates (and "
        "CT series ids); outcome columns, if any, are ignored.")
    patient_id: str = Field(default="patient_id", description="Id column of `clinical`.")
    modalities: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per modality name: settings to override.")

    @model_validator(mode="after")
    def _unique_ids(self) -> ScoreInput:
        ids = [p.id for p in self.patients]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"patient id(s) {', '.join(dup)} listed twice")
        return self


def experiment_model(
    modality_configs: dict[str, type[ModalityConfig]],
    fusion_configs: dict[str, type[FusionConfig]],
) -> type[ExperimentConfigBase]:
    """Build the ``ExperimentConfig`` model for the given plugin config models."""
    from pydantic import create_model

    def union(models: dict[str, type[PluginConfig]], what: str) -> Any:
        items = [models[k] for k in sorted(models)]
        if not items:
            raise ValueError(f"no {what} plugins are installed")
        if len(items) == 1:
            return items[0]
        from typing import Union

        return Annotated[Union[tuple(items)], Field(discriminator="kind")]  # noqa: UP007

    mod_t = union(modality_configs, "modality")
    fus_t = union(fusion_configs, "fusion")
    return create_model(
        "ExperimentConfig",
        __base__=ExperimentConfigBase,
        modalities=(list[mod_t], Field(min_length=1, description="Modalities to use.")),
        fusion=(fus_t, Field(description="The fusion head.")),
    )


__all__ = [
    "BaselineEntry",
    "CohortConfig",
    "EvaluationConfig",
    "ExperimentConfigBase",
    "FusionConfig",
    "InputFile",
    "InputPath",
    "ModalityConfig",
    "NoduleLocation",
    "OutputPath",
    "ScoreInput",
    "ScorePatient",
    "TaskConfig",
    "TrainerConfig",
    "TrainingConfig",
    "experiment_model",
]
