"""Plugin contracts: what a modality plugin and a fusion plugin provide.

A plugin is a class registered under an entry point (``lungfuse.modalities`` or
``lungfuse.fusion``). Its module must import cheaply (no torch at module level), because
``lungfuse plugins`` loads every entry point to read ``name``, ``api_version`` and
``config_model``; heavy imports belong inside methods.

Data handed to modality plugins is split so a fit cannot leak evaluation labels:
``prepare`` sees the cohort rows of training patients only (outcomes included, for
supervised selection); ``available``, ``transform`` and the optional report hooks see
cohort rows without outcome columns.

Optional hooks (``scoring_config``, ``scoring_input``, ``patient_section``,
``report_section``) have defaults that do nothing; core calls them where a plugin
overrides them (:func:`overrides`) and never looks for a plugin by name or for a
plugin's config keys.
That is how the CT modality puts its nodule overlay on the patient page, and how any
third-party modality gets a section of its own.
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


@dataclass
class ModalitySection:
    """A modality's own section of a report page, returned by the optional hooks
    :meth:`ModalityPlugin.patient_section` and :meth:`ModalityPlugin.report_section`.

    Plain data, so a plugin needs nothing from the report code: ``title`` (the section
    heading), ``paragraphs`` (plain text, escaped when rendered), ``figures`` (PNG bytes
    and a caption each; :meth:`add_figure` turns a matplotlib figure into them) and an
    optional small ``table`` (a pandas DataFrame, shown without its index).

    On the patient page, a section may also speak in the one sentence that leads the page:
    ``lead`` is a short fragment of plain text ("Brock (PanCan) 7.9%, Lung-RADS 4A") and
    ``lead_missing`` the things it lacked ("family history (Brock)"); core composes the
    sentence from the fused risk, the fragments and everything missing, so it names no
    plugin. ``more`` holds further sections the same hook brings (each with its own title,
    rendered right after this one; their own ``more`` is not followed). All three are
    optional and ignored in the run report.
    """

    title: str
    paragraphs: list[str] = field(default_factory=list)
    figures: list[tuple[bytes, str]] = field(default_factory=list)
    table: pd.DataFrame | None = None
    lead: str = ""
    lead_missing: list[str] = field(default_factory=list)
    more: list[ModalitySection] = field(default_factory=list)

    def add_figure(self, figure: Any, caption: str = "", dpi: int = 110) -> None:
        """Append ``figure`` (PNG bytes, or a matplotlib figure, rendered here and closed so
        pages of many patients do not pile up open figures) with its caption."""
        if not isinstance(figure, bytes | bytearray):
            import io

            import matplotlib.pyplot as plt

            buf = io.BytesIO()
            figure.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
            plt.close(figure)
            figure = buf.getvalue()
        self.figures.append((bytes(figure), caption))

    def problem(self) -> str:
        """Empty if the section can be rendered, else what is wrong with it (core logs this
        and leaves the section out rather than render something broken)."""
        if not isinstance(self.title, str) or not self.title.strip():
            return "its title is not a non-empty string"
        if not all(isinstance(p, str) for p in self.paragraphs):
            return "paragraphs must be strings"
        for fig in self.figures:
            if not (isinstance(fig, tuple) and len(fig) == 2 and isinstance(fig[0], bytes)
                    and fig[0].startswith(_PNG_MAGIC) and isinstance(fig[1], str)):
                return "each figure must be (PNG bytes, caption); use add_figure()"
        if self.table is not None and not hasattr(self.table, "to_html"):
            return "table must be a pandas DataFrame or None"
        if not isinstance(self.lead, str) or "\n" in self.lead:
            return "lead must be a one-line string"
        if not all(isinstance(m, str) for m in self.lead_missing):
            return "lead_missing must be strings"
        for sub in self.more:
            why = sub.problem() if isinstance(sub, ModalitySection) else (
                f"holds a {type(sub).__name__}, not a ModalitySection")
            if why:
                return f"more: {why}"
        return ""


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ModalityPlugin(ABC):
    """A source of per-patient features and the encoder that embeds them.

    Lifecycle: ``available`` → ``prepare`` (fit on training patients) → ``transform``
    (any patients) → ``build_encoder``. ``state_dict``/``load_state_dict`` persist the
    fitted state so a trained run can score new patients.

    Optional hooks, each a no-op by default: ``scoring_config`` (a new patient's own data
    files at scoring time), ``patient_section`` (a section of the patient page) and
    ``report_section`` (a section of the run report). Core calls a section hook through
    :func:`call_section_hook`, so one that fails costs only its own section.
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

    def scoring_input(self, patient: Mapping[str, Any], workdir: Path) -> dict[str, Any] | None:
        """What this modality read of data given for one new patient, or None (the default).

        Called by ``lungfuse score`` once per scored patient for whom :meth:`scoring_config`
        returned a config of their own, on an instance built with that config (fitted
        state loaded). Return a JSON-safe dict with ``text``, one line for the patient's
        page and the command's output (the CT modality: which series of a DICOM study
        folder it read, and why), plus any details (kept in ``scores.json`` under
        ``inputs``). It must describe what :meth:`transform` reads, by the same rule. A
        hook that raises is logged and the page says nothing of it.
        """
        return None

    # ------------------------------------------------------------------ optional hooks
    def patient_section(self, patient: Mapping[str, Any], row: pd.Series,
                        workdir: Path) -> ModalitySection | None:
        """A section of this modality on a scored patient's page (``lungfuse score``), or
        None (the default: no section).

        Called once per scored patient for whom this modality was present, after scoring,
        on the fitted instance of the run's first fold model (the run's config, the state
        fitted on that fold's training patients loaded). ``patient`` is the patient's
        entry of the scoring input, as for :meth:`scoring_config` (``id``; ``ct`` and
        ``nodule`` where given); ``row`` is the patient's row of the scoring input's
        clinical table (named by patient id; no outcome columns; empty without a table);
        ``workdir`` is a scratch folder removed afterwards. The CT modality draws the
        segmented nodule on its slice here. A hook that raises or returns something that
        is not a :class:`ModalitySection` is logged and left out; the page still renders.
        """
        return None

    def report_section(self, patients: pd.DataFrame,
                       workdir: Path) -> ModalitySection | None:
        """A section of this modality in a run's ``report.html``, or None (the default).

        Called when the report is written (at the end of ``lungfuse run``, and by
        ``lungfuse report RUN``) on an instance built from the run's resolved config with
        the state fitted on the first fold model's training patients loaded.
        ``patients`` are the cohort rows (indexed by ``patient_id``, no outcome columns)
        of the patients that fold held out and this modality covers, in prediction order;
        draw a few of them (the CT modality segments the first three). ``workdir`` is a
        scratch folder removed afterwards. Failures are logged and the report still
        renders without the section.
        """
        return None

    @classmethod
    def example(cls, workdir: Path, patient_ids: list[str]) -> ModalityConfig:
        """Write a tiny example dataset for ``patient_ids`` under ``workdir`` (leaving some
        patients without data) and return a config that reads it. Used by
        ``lungfuse.testing.check_modality_plugin``."""
        raise NotImplementedError(f"{cls.__name__} does not provide an example dataset")


def overrides(plugin: ModalityPlugin | type[ModalityPlugin], hook: str) -> bool:
    """Whether ``plugin`` (an instance or class) defines the optional ``hook`` itself rather
    than inheriting :class:`ModalityPlugin`'s default; core skips the work a hook needs
    (loading fitted states, reading tables) for plugins that do not."""
    cls = plugin if isinstance(plugin, type) else type(plugin)
    default = getattr(ModalityPlugin, hook)
    return getattr(cls, hook, default) is not default


def call_section_hook(plugin: ModalityPlugin, hook: str, *args: Any,
                      where: str = "report") -> ModalitySection | None:
    """``plugin.<hook>(*args)`` for an optional section hook, never raising.

    A hook that raises, or returns something other than a renderable
    :class:`ModalitySection` or None, is logged as a warning naming the modality (``where``
    says which page) and gives None: a figure must never cost a patient's score or a run's
    report. ``KeyboardInterrupt`` still stops the command.
    """
    log = logging.getLogger("lungfuse")
    if not overrides(plugin, hook):
        return None
    try:
        out = getattr(plugin, hook)(*args)
    except Exception as exc:  # noqa: BLE001 - a plugin's figure must not break the page
        msg = " ".join(str(exc).split())[:300]
        log.warning("%s: modality %s: %s failed, section left out (%s: %s)", where,
                    plugin.modality_name, hook, type(exc).__name__, msg)
        return None
    if out is None:
        return None
    why = out.problem() if isinstance(out, ModalitySection) else (
        f"returned {type(out).__name__}, not a ModalitySection or None")
    if why:
        log.warning("%s: modality %s: %s %s; section left out", where, plugin.modality_name,
                    hook, why)
        return None
    return out


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
