"""The ``clinical`` modality (entry point of lungfuse.modalities): covariates as features.

Numeric and categorical covariates (age, sex, pack-years, ...) come from the cohort
table (the rows core hands to the plugin) or from a Parquet file of their own. Everything
fitted (imputation values, scaling, the categories of each categorical column) is fitted
in ``prepare`` on training patients only; ``transform`` applies the stored numbers.

Missing values stay visible: every numeric column gets a ``<col>__missing`` indicator and
every categorical column an explicit ``<col>__missing`` level, so an imputed value is
never mistaken for a measured one and a missing value is never a silent zero.

This module must import cheaply (``lungfuse plugins`` loads it): pydantic models and the
plugin class only; pandas, pyarrow, scikit-learn and torch are imported in the methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from lungfuse.core.contracts import ModalityConfig, ModalityContext, ModalityPlugin
from lungfuse.schemas import InputPath

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

__all__ = ["MISSING_SUFFIX", "OUTCOME_NAMES", "ClinicalConfig", "ClinicalModality"]

#: Suffix of the missing-value indicator of a numeric column and of the explicit missing
#: level of a categorical column (``age__missing``, ``sex__missing``).
MISSING_SUFFIX = "__missing"

#: Outcome columns of lungfuse's task defaults (``task.outcome``, ``task.time``,
#: ``task.event``): never covariates, as they would leak the label into the features.
#: Renamed outcomes are caught at run time: core hides every task label column from the
#: rows ``available``/``transform`` see, so naming one reads as a column not found.
OUTCOME_NAMES: tuple[str, ...] = ("malignant", "time", "event")


class ClinicalConfig(ModalityConfig):
    """Clinical covariates (numeric and categorical) → imputed, scaled, one-hot features."""

    kind: Literal["clinical"] = "clinical"
    numeric: list[str] = Field(
        default_factory=list,
        description="Numeric covariate columns (e.g. age, pack_years): imputed with the "
        "training median/mean, Yeo-Johnson transformed (see `transform`) and standardised "
        "with training mean/sd, plus a `<col>__missing` "
        "indicator each.",
    )
    categorical: list[str] = Field(
        default_factory=list,
        description="Categorical covariate columns (e.g. sex, histology): one-hot over the "
        "levels seen in training plus an explicit `<col>__missing` level; a level unseen in "
        "training is encoded as all zeros and logged.",
    )
    path: InputPath | None = Field(
        default=None,
        description="Optional Parquet file holding the covariates (a `patient_id` column, "
        "see `patient_id`); without it, the columns come from the cohort table.",
    )
    patient_id: str = Field(
        default="patient_id", description="Patient id column of `path` (ignored without it)."
    )
    impute: Literal["median", "mean"] = Field(
        default="median",
        description="Value a missing numeric entry is replaced with (fitted on training "
        "patients); its `<col>__missing` indicator is 1 for that patient.",
    )
    transform: Literal["yeo-johnson", "none"] = Field(
        default="yeo-johnson",
        description="Power transform of each numeric column before scaling: `yeo-johnson` "
        "(a monotone map with its lambda fitted by maximum likelihood on the training "
        "patients' observed values; makes skewed columns such as node counts or receptor "
        "levels near-normal, which linear and neural heads need and forests do not); "
        "`none` keeps the values as they are. Columns with fewer than 3 distinct training "
        "values are left as they are.",
    )
    scale: bool = Field(
        default=True,
        description="Standardise numeric columns with the training mean and sd (after "
        "imputation); false keeps their original units.",
    )
    hidden: list[int] = Field(
        default_factory=lambda: [16],
        description="Hidden layer sizes of the MLP encoder (Linear → ReLU → Dropout); an "
        "empty list gives a single linear layer.",
    )
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="Encoder dropout rate.")
    embedding_dim: int = Field(default=8, ge=1, le=4096, description="Encoder output size.")

    @model_validator(mode="before")
    @classmethod
    def _stored_before_transform(cls, data: Any, info: ValidationInfo) -> Any:
        """A run folder's saved config written before `transform` existed ran without
        it: read it as `none` there (so `--resume` compares what the folder ran), while a
        new config without the key gets the default."""
        stored = bool(info.context and info.context.get("stored_config"))
        if stored and isinstance(data, Mapping) and "transform" not in data:
            return {**data, "transform": "none"}
        return data

    @field_validator("hidden")
    @classmethod
    def _positive_sizes(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError("hidden sizes must be >= 1")
        return v

    @model_validator(mode="after")
    def _columns(self) -> ClinicalConfig:
        cols = [*self.numeric, *self.categorical]
        if not cols:
            raise ValueError("name at least one covariate column in `numeric` or `categorical`")
        both = sorted(set(self.numeric) & set(self.categorical))
        if both:
            raise ValueError(f"column(s) {', '.join(both)} listed as both numeric and "
                             "categorical; keep each in one list")
        dup = sorted({c for c in cols if cols.count(c) > 1})
        if dup:
            raise ValueError(f"column(s) {', '.join(dup)} listed twice; list each once")
        outcome = [c for c in cols if c in OUTCOME_NAMES]
        if outcome:
            raise ValueError(f"'{outcome[0]}' is an outcome column and can never be a "
                             "covariate (it would leak the label into the features); remove it")
        if self.patient_id in cols or "patient_id" in cols:
            raise ValueError("the patient id column is not a covariate; remove it")
        bad = [c for c in cols if not c.strip() or c.endswith(MISSING_SUFFIX)]
        if bad:
            raise ValueError(f"column name {bad[0]!r} is empty or ends in '{MISSING_SUFFIX}' "
                             "(reserved for missing-value indicators); rename the column")
        return self


class ClinicalModality(ModalityPlugin):
    """Clinical covariates → MLP embedding; fitted on training patients only."""

    name = "clinical"
    api_version = 1
    config_model = ClinicalConfig
    description = "Clinical covariates (cohort table or Parquet): numeric and categorical"

    config: ClinicalConfig

    def __init__(self, config: ModalityConfig) -> None:
        super().__init__(config)
        self._fitted: dict[str, Any] | None = None

    def available(self, cohort: pd.DataFrame, ctx: ModalityContext) -> set[str]:
        """Patients with at least one non-missing configured covariate."""
        from lungfuse.plugins.clinical.covariates import has_value, read_covariates

        tab = read_covariates(self.config, cohort)
        return set(tab.index[has_value(tab, self.config)])

    def prepare(self, train: pd.DataFrame, ctx: ModalityContext) -> None:
        """Fit imputation, scaling and categories on the training rows that have data."""
        from lungfuse.plugins.clinical.covariates import fit, read_covariates

        self._fitted = fit(self.config, read_covariates(self.config, train), ctx.log)

    def transform(self, patients: pd.DataFrame, ctx: ModalityContext) -> pd.DataFrame:
        """Imputed/scaled numeric columns with indicators and one-hot categoricals."""
        from lungfuse.plugins.clinical.covariates import apply, read_covariates

        if self._fitted is None:
            raise RuntimeError("clinical: transform called before prepare/load_state_dict")
        return apply(self._fitted, read_covariates(self.config, patients), ctx.log)

    def build_encoder(self, n_features: int) -> torch.nn.Module:
        from lungfuse.plugins.clinical.encoders import ClinicalEncoder

        c = self.config
        return ClinicalEncoder(n_features, c.hidden, c.embedding_dim, c.dropout)

    def state_dict(self) -> dict[str, Any]:
        """The fitted numbers as plain JSON types (lists, strings, floats, ints)."""
        if self._fitted is None:
            raise RuntimeError("clinical: state_dict called before prepare/load_state_dict")
        return dict(self._fitted)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from lungfuse.plugins.clinical.covariates import check_state

        self._fitted = check_state(state)

    @classmethod
    def example(cls, workdir: Path, patient_ids: list[str]) -> ClinicalConfig:
        from lungfuse.plugins.clinical.covariates import write_example

        return write_example(Path(workdir), patient_ids)
