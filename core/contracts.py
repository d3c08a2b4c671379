"""Plugin contracts: what a modality plugin and a fusion plugin provide.

A plugin is a class registered under an entry point (``lungfuse.modalities`` or
``lungfuse.fusion``). Its module must import cheaply (no torch at module level), because
``lungfuse plugins`` loads every entry point to read ``name``, ``api_version`` and
``config_model``; heavy imports belong inside methods.

Data handed to modality plugins is split so a fit cannot leak evaluation labels:
``prepare`` sees the cohort rows of training patients only (outcomes included, for
supervised selection); ``available`` and ``transform`` see cohort rows without outcome
columns.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

#: Version of the plugin API described in this module. A plugin declares the version it
#: was written for in ``api_version``; plugins whose major version differs are refused.
PLUGIN_API_VERSION = 1
COMPATIBLE_API_VERSIONS = frozenset({1})


class PluginConfig(BaseModel):
    """Base of every plugin config. Subclasses add ``kind: Literal["<name>"]``."""

    model_config = ConfigDict(extra="forbid", frozen=False, protected_namespaces=())

    kind: str


class ModalityConfig(PluginConfig):
    """Base config of a modality plugin."""

    name: str | None = Field(
        default=None,
        description="Name of this modality in the experiment (defaults to `kind`); "
        "lets one plugin be configured twice, e.g. two expression panels.",
    )
    embedding_dim: int = Field(default=32, ge=1, le=4096, description="Encoder output size.")

    @property
    def modality_name(self) -> str:
        return self.name or self.kind


class FusionConfig(PluginConfig):
    """Base config of a fusion head."""

    hidden_dim: int = Field(default=64, ge=1, le=4096)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    modality_dropout: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="During training, each present modality of a patient is hidden with this "
        "probability (never all of them), so the head learns to cope with missing ones.",
    )


@dataclass
class ModalityContext:
    """What a modality plugin gets besides its config.

    ``workdir`` is the plugin's private folder in the run directory: fitted state,
    checkpoints and caches go there. ``seed`` seeds anything random.
    """

    workdir: Path
    seed: int = 0
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("lungfuse"))
    progress: bool = True
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


class ModalityPlugin(ABC):
    """A source of per-patient features and the encoder that embeds them.

    Lifecycle: ``available`` → ``prepare`` (fit on training patients) → ``transform``
    (any patients) → ``build_encoder``. ``state_dict``/``load_state_dict`` persist the
    fitted state so a trained run can score new patients.
    """

    name: ClassVar[str]
    api_version: ClassVar[int] = PLUGIN_API_VERSION
    config_model: ClassVar[type[ModalityConfig]]
    description: ClassVar[str] = ""
    #: What a feature column names: ``"gene"`` for genomic plugins (scoring lists their
    #: top-attributed features as the patient's top genes), ``"feature"`` otherwise.
    feature_kind: ClassVar[str] = "feature"

    def __init__(self, config: ModalityConfig) -> None:
        self.config = config

    @property
    def modality_name(self) -> str:
        return self.config.modality_name

    @abstractmethod
    def available(self, cohort: pd.DataFrame, ctx: ModalityContext) -> set[str]:
        """Patient ids (from ``cohort.index``) this modality has data for. Absence is normal."""

    @abstractmethod
    def prepare(self, train: pd.DataFrame, ctx: ModalityContext) -> None:
        """Fit whatever is fitted (normalisation, gene selection, a network) on ``train``:
        the cohort rows of training patients only."""

    @abstractmethod
    def transform(self, patients: pd.DataFrame, ctx: ModalityContext) -> pd.DataFrame:
        """Features for the given patients that this modality covers.

        Returns a float DataFrame indexed by ``patient_id`` (a subset of
        ``patients.index``, no duplicates, finite values, the same columns every call).
        Patients without data are absent from the result, not zero rows.
        """

    @abstractmethod
    def build_encoder(self, n_features: int) -> torch.nn.Module:
        """A module mapping ``(batch, n_features)`` to ``(batch, embedding_dim)``.

        The module must expose an ``embedding_dim`` attribute.
        """

    def state_dict(self) -> dict[str, Any]:
        """Fitted state (what ``prepare`` learnt), stored in the run folder and the feature
        cache, and handed back to ``load_state_dict`` at scoring time. Default: nothing.

        It is written as JSON + safetensors (:mod:`lungfuse.core.state_io`), never
        pickled, because run folders are shared and a pickle runs code when loaded. So it
        may hold only: dicts (keys str, int, float, bool, None or tuples of those; other
        mappings come back as dict), lists, tuples, str, int, float (NaN/inf included),
        bool, None, numpy arrays of bool/int/uint/float or str (``<U``) dtype, numpy
        scalars of those dtypes, and dense torch tensors (bfloat16 included; loaded on the
        CPU, detached). Anything else (a set, a Path, a pandas object, an object array, an
        instance of your own class) is refused with an error naming the modality and key;
        convert it (``sorted(s)``, ``str(p)``, ``df.to_dict("list")``) first.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027
        """Restore what ``state_dict`` returned. Default: nothing."""

    def scoring_config(self, patient: Mapping[str, Any], workdir: Path) -> ModalityConfig | None:
        """The config with which to transform one new patient at scoring time.

        ``patient`` is the patient's entry of the scoring input (``id`` and, where given,
        ``ct``: a volume path, ``nodule``: ``{x, y, z, diameter_mm}`` in world mm). Return
        None (the default) to read the patient from the configured data sources; a plugin
        whose data come per patient (a CT scan) returns a config pointing at them.
        ``workdir`` is a scratch folder for files the config needs.
        """
        return None

    @classmethod
    def example(cls, workdir: Path, patient_ids: list[str]) -> ModalityConfig:
        """Write a tiny example dataset for ``patient_ids`` under ``workdir`` (leaving some
        patients without data) and return a config that reads it. Used by
        ``lungfuse.testing.check_modality_plugin``."""
        raise NotImplementedError(f"{cls.__name__} does not provide an example dataset")


class FusionPlugin(ABC):
    """A fusion head factory.

    ``build`` returns a ``torch.nn.Module`` whose ``forward(embeddings, present)`` takes
    ``embeddings: {modality: (batch, dim) tensor}`` and ``present: {modality: (batch,)
    bool tensor}`` and returns ``(batch, out_dim)``: a logit for malignancy, a log-risk
    for survival. Any number of modalities and any subset missing per patient must work;
    the embedding values of an absent modality must not change the output.
    A head may implement ``modality_weights(embeddings, present) -> (batch, n_modalities)``
    for reports.
    """

    name: ClassVar[str]
    api_version: ClassVar[int] = PLUGIN_API_VERSION
    config_model: ClassVar[type[FusionConfig]]
    description: ClassVar[str] = ""

    def __init__(self, config: FusionConfig) -> None:
        self.config = config

    @abstractmethod
    def build(self, embedding_dims: Mapping[str, int], out_dim: int = 1) -> torch.nn.Module:
        """Build the head for modalities with the given embedding sizes."""
