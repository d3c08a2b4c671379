"""The ``mutations`` and ``expression`` modalities (entry points of lungfuse.modalities).

This module must import cheaply: it holds the pydantic configs and thin plugin classes
only. Reading (pyarrow), feature building (pandas/numpy) and the encoders (torch) live in
:mod:`.readers`, :mod:`.features` and :mod:`.encoders`, imported inside the methods.

Everything fitted (gene selection, top-N genes, TMB and z-score statistics) is fitted in
``prepare`` on the training patients only; ``transform`` applies the fitted state.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from lungfuse.core.contracts import ModalityConfig, ModalityContext, ModalityPlugin
from lungfuse.schemas import InputFile

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

__all__ = [
    "ExpressionConfig",
    "ExpressionModality",
    "MutationsConfig",
    "MutationsModality",
    "NON_SILENT_PRESETS",
]

#: Variant classifications counted as non-silent.
#: ``maftools``: the nine protein-altering classes maftools counts by default.
#: ``tmb``: the six classes of the harmonised TMB definition (Friends of Cancer Research
#: TMB harmonisation): missense, nonsense, nonstop, splice site, frame-shift del/ins
#: are counted; in-frame indels and translation-start changes are not.
NON_SILENT_PRESETS: dict[str, tuple[str, ...]] = {
    "maftools": (
        "Frame_Shift_Del",
        "Frame_Shift_Ins",
        "Splice_Site",
        "Translation_Start_Site",
        "Nonsense_Mutation",
        "Nonstop_Mutation",
        "In_Frame_Del",
        "In_Frame_Ins",
        "Missense_Mutation",
    ),
    "tmb": (
        "Missense_Mutation",
        "Nonsense_Mutation",
        "Nonstop_Mutation",
        "Splice_Site",
        "Frame_Shift_Del",
        "Frame_Shift_Ins",
    ),
}

#: Hotspots used when ``hotspots: true`` ("GENE CHANGE"; a change ending in a digit is a
#: codon and matches every substitution at that codon, e.g. ``KRAS G12``).
DEFAULT_HOTSPOTS: tuple[str, ...] = (
    "KRAS G12C",
    "KRAS G12",
    "EGFR L858R",
    "EGFR T790M",
    "BRAF V600E",
    "PIK3CA E545K",
    "PIK3CA H1047R",
)


#: File-name endings of tab-separated text tables (GDC MAF, cBioPortal files), each
#: optionally followed by ``.gz``.
TEXT_SUFFIXES: tuple[str, ...] = (".maf", ".txt", ".tsv")
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def looks_like_text_table(path: Path) -> bool:
    """Whether ``path`` is a tab-separated text table (a MAF, a cBioPortal file) rather
    than Parquet or HDF5.

    Content first: Parquet / HDF5 magic bytes say no, gzip magic says yes. Then the name
    (:data:`TEXT_SUFFIXES`, optionally ``.gz``: yes; ``.parquet``, ``.pq``, ``.h5ad``: no).
    Otherwise a first line that is a ``#`` comment or holds a tab says yes. A file that
    cannot be read is not text, so the Parquet reader reports it as before. Standard
    library only: config validation calls this.
    """
    path = Path(path)
    head = b""
    try:
        with path.open("rb") as fh:
            head = fh.read(65536)
    except OSError:
        pass
    if head.startswith((_PARQUET_MAGIC, _HDF5_MAGIC)):
        return False
    if head.startswith(_GZIP_MAGIC):
        return True
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(TEXT_SUFFIXES):
        return True
    if name.endswith((".parquet", ".pq", ".h5ad")) or not head:
        return False
    first = head.split(b"\n", 1)[0]
    return first.startswith(b"#") or b"\t" in first


class _GenomicsConfig(ModalityConfig):
    """Settings shared by both genomics modalities: sample mapping and encoder."""

    sample_map: InputFile | None = Field(
        default=None,
        description="Optional Parquet table mapping sample ids to patients (columns "
        "`sample_id`, `patient_id`); takes precedence over `barcode_rule`.",
    )
    barcode_rule: Literal["tcga", "identity"] = Field(
        default="tcga",
        description="Sample → patient without a map: `tcga` = first 12 characters of the "
        "barcode (TCGA-XX-XXXX), `identity` = the sample id is the patient id.",
    )
    encoder: Literal["snn", "mlp"] = Field(
        default="snn",
        description="`snn`: self-normalising network (Linear → SELU → AlphaDropout, LeCun "
        "normal init); `mlp`: Linear → ReLU → Dropout.",
    )
    hidden: list[int] = Field(
        default_factory=lambda: [64, 32], description="Hidden layer sizes of the encoder."
    )
    dropout: float = Field(default=0.25, ge=0.0, lt=1.0, description="(Alpha)dropout rate.")

    @field_validator("hidden")
    @classmethod
    def _positive_sizes(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError("hidden sizes must be >= 1")
        return v


class MutationsConfig(_GenomicsConfig):
    """Somatic mutations (MAF columns in Parquet) → gene, hotspot and TMB features."""

    kind: Literal["mutations"] = "mutations"
    path: InputFile = Field(
        description="MAF columns Tumor_Sample_Barcode, Hugo_Symbol, Variant_Classification "
        "(+ HGVSp_Short for hotspots, t_alt_count/t_depth for VAF weighting), in Parquet or "
        "as downloaded: GDC `.maf` / `.maf.gz`, cBioPortal `data_mutations.txt`."
    )
    format: Literal["auto", "parquet", "maf"] = Field(
        default="auto",
        description="`maf`: a tab-separated text MAF (gzip'd or not, `#` lines first); "
        "`auto`: text when the file starts as gzip or text, or is named .maf/.txt/.tsv "
        "(optionally .gz), Parquet otherwise.",
    )
    sequenced_samples: InputFile | None = Field(
        default=None,
        description="Text file, one sequenced sample barcode per line (as cBioPortal case "
        "lists): a sequenced patient without calls is wild-type, others are missing.",
    )
    untested: Literal["missing", "wildtype"] = Field(
        default="missing",
        description="Without `sequenced_samples`, cohort patients absent from the MAF are "
        "`missing` (no features; default) or `wildtype` (all-zero genes, TMB 0). The run "
        "log states how many patients were treated each way.",
    )
    non_silent: Literal["maftools", "tmb"] | list[str] = Field(
        default="maftools",
        description="Variant classes counted: preset `maftools` (nine protein-altering "
        "classes), `tmb` (six of the harmonised TMB definition) or an explicit list.",
    )
    panel: Literal["lung"] | list[str] = Field(
        default="lung", description="Genes with a binary feature: `lung` (the packaged "
        "panel, data/lung_panel.tsv) or a list of Hugo symbols. Ignored when `top_n` is set."
    )
    top_n: int | None = Field(
        default=None,
        ge=1,
        description="Instead of the panel: the N genes mutated in most training patients.",
    )
    hotspots: bool | list[str] = Field(
        default=False,
        description="Hotspot features from HGVSp_Short: true (a default list), or entries "
        "like 'KRAS G12C' (exact change) or 'KRAS G12' (any change at the codon).",
    )
    vaf_weighting: bool = Field(
        default=False,
        description="Gene/hotspot features are the highest VAF (t_alt_count / t_depth) "
        "of the patient's calls instead of 1.",
    )
    tmb: bool = Field(default=True, description="Add a TMB feature.")
    capture_mb: float = Field(
        default=38.0, gt=0, description="Capture size in Mb: TMB = non-silent count / capture_mb."
    )
    combine: Literal["any", "first"] = Field(
        default="any",
        description="Several samples per patient: `any` = a gene is mutated if it is in any "
        "sample, VAF and TMB are the maximum over samples; `first` = only the patient's "
        "first sample in barcode order (TCGA: -01 primary before -02/-06).",
    )

    @field_validator("hotspots")
    @classmethod
    def _hotspot_format(cls, v: bool | list[str]) -> bool | list[str]:
        if isinstance(v, list):
            bad = [h for h in v if len(h.split()) != 2]
            if bad:
                raise ValueError(f"hotspots must look like 'KRAS G12C', got {bad}")
        return v

    @field_validator("non_silent")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("non_silent must name at least one Variant_Classification")
        return v

    def file_format(self) -> str:
        """``"maf"`` (text) or ``"parquet"``: ``format``, or for ``auto`` the file."""
        if self.format != "auto":
            return self.format
        return "maf" if looks_like_text_table(Path(self.path)) else "parquet"

    def non_silent_classes(self) -> list[str]:
        ns = self.non_silent
        return list(NON_SILENT_PRESETS[ns]) if isinstance(ns, str) else list(ns)

    def hotspot_list(self) -> list[str]:
        if self.hotspots is True:
            return list(DEFAULT_HOTSPOTS)
        if self.hotspots is False:
            return []
        return list(self.hotspots)


class ExpressionConfig(_GenomicsConfig):
    """Gene expression (Parquet or AnnData .h5ad) → transformed, selected gene features."""

    kind: Literal["expression"] = "expression"
    path: InputFile = Field(
        description="Expression table: Parquet (wide or long layout), AnnData `.h5ad` "
        "(obs = samples, var = genes) or a cBioPortal matrix as downloaded "
        "(`data_mrna_seq_v2_rsem.txt`: Hugo_Symbol / Entrez_Gene_Id, one column per sample)."
    )
    format: Literal["auto", "parquet", "h5ad", "cbio"] = Field(
        default="auto",
        description="`auto`: AnnData when the file name ends in `.h5ad`; a cBioPortal text "
        "matrix when the file starts as gzip or text, or is named .txt/.tsv (optionally .gz); "
        "Parquet otherwise.",
    )
    layer: str | None = Field(
        default=None,
        description="`.h5ad` only: the layer holding the values (default: X), e.g. `counts`.",
    )
    var_gene_column: str | None = Field(
        default=None,
        description="`.h5ad` only: the var column holding the gene ids (default: var_names), "
        "e.g. gene symbols when var_names are Ensembl ids.",
    )
    layout: Literal["auto", "wide", "long"] = Field(
        default="auto",
        description="`wide`: one row per sample, one column per gene; `long`: rows "
        "(sample, gene, value); `auto`: long when the gene and value columns exist.",
    )
    orientation: Literal["samples_x_genes", "genes_x_samples"] = Field(
        default="samples_x_genes",
        description="Wide layout only: `genes_x_samples` files (a gene column, one column "
        "per sample) are transposed on reading.",
    )
    sample_column: str = Field(default="sample", description="Sample id column.")
    gene_column: str = Field(default="gene", description="Gene column (long, or genes × samples).")
    value_column: str = Field(default="value", description="Value column (long layout).")
    gene_id: Literal["symbol", "entrez"] = Field(
        default="symbol", description="Genes are Hugo symbols or Entrez ids (as text)."
    )
    log2: bool = Field(default=True, description="Apply log2(x + 1) (values must be >= 0).")
    zscore: bool = Field(
        default=True, description="Centre and scale each gene with training-patient mean/sd."
    )
    selection: Literal["panel", "top_variance", "gmt"] = Field(
        default="panel",
        description="`panel`: the genes in `panel`; `top_variance`: the `top_n` genes of "
        "highest variance among training patients; `gmt`: one score per gene set of `gmt`.",
    )
    panel: Literal["lung"] | list[str] = Field(
        default="lung", description="`lung` (packaged panel) or a list of gene ids."
    )
    top_n: int = Field(default=500, ge=1, description="Genes kept by `top_variance`.")
    gmt: InputFile | None = Field(default=None, description="GMT file of gene sets.")
    min_set_size: int = Field(
        default=2, ge=1, description="GMT sets with fewer genes in the table are dropped."
    )
    nan: Literal["train_mean", "zero"] = Field(
        default="train_mean",
        description="A missing value (NaN, or a selected gene absent from the table) is "
        "filled with the gene's training mean (`train_mean`, i.e. 0 after z-scoring) or 0 "
        "on the transformed scale (`zero`).",
    )
    combine: Literal["mean", "first"] = Field(
        default="mean",
        description="Several samples per patient: their mean (after log2), or the first in "
        "barcode order.",
    )

    @model_validator(mode="after")
    def _gmt_needed(self) -> ExpressionConfig:
        if self.selection == "gmt" and self.gmt is None:
            raise ValueError("selection 'gmt' needs a `gmt` file")
        if self.layout == "long" and self.orientation != "samples_x_genes":
            raise ValueError("orientation applies to the wide layout only")
        fmt = self.file_format()
        if fmt == "cbio" and self.layout == "long":
            raise ValueError("a cBioPortal expression file is a genes x samples matrix, read "
                             "as wide: `layout: long` does not apply")
        if fmt == "h5ad":
            if self.layout == "long" or self.orientation != "samples_x_genes":
                raise ValueError(".h5ad input is samples (obs) x genes (var): `layout: long` "
                                 "and `orientation` apply to Parquet tables only")
        elif self.layer is not None or self.var_gene_column is not None:
            raise ValueError("`layer` and `var_gene_column` apply to .h5ad input only; set "
                             "`format: h5ad` if the file is AnnData")
        return self

    def file_format(self) -> str:
        """``"h5ad"``, ``"cbio"`` or ``"parquet"``: ``format``, or for ``auto`` the file
        name (``.h5ad``) and then its content (:func:`looks_like_text_table`)."""
        if self.format != "auto":
            return self.format
        if str(self.path).lower().endswith(".h5ad"):
            return "h5ad"
        return "cbio" if looks_like_text_table(Path(self.path)) else "parquet"


def _ids(frame: pd.DataFrame) -> list[str]:
    return [str(p) for p in frame.index]


class _GenomicsModality(ModalityPlugin):
    feature_kind = "gene"  # feature columns are genes (hotspots, TMB, gene sets too)

    config: Any

    def __init__(self, config: ModalityConfig) -> None:
        super().__init__(config)
        self._fitted: Any = None
        self._source: Any = None

    def _src(self) -> Any:
        raise NotImplementedError

    def available(self, cohort: pd.DataFrame, ctx: ModalityContext) -> set[str]:
        return set(self._src().available(_ids(cohort), ctx.log))

    def input_ids(self) -> list[str]:
        """The patient ids this modality's samples map to (optional hook: core shows a
        few beside the cohort's when the modality covers none of the patients)."""
        return list(self._src().input_ids())

    def build_encoder(self, n_features: int) -> torch.nn.Module:
        from lungfuse.plugins.genomics.encoders import build_encoder

        c = self.config
        return build_encoder(c.encoder, n_features, c.hidden, c.embedding_dim, c.dropout)

    def _need_fit(self) -> Any:
        if self._fitted is None:
            raise RuntimeError(f"{self.name}: transform called before prepare/load_state_dict")
        return self._fitted


class MutationsModality(_GenomicsModality):
    """Binary (or VAF-weighted) panel genes, hotspots and TMB → SNN/MLP embedding."""

    name = "mutations"
    api_version = 1
    config_model = MutationsConfig
    description = ("Somatic mutations (MAF: Parquet, GDC .maf(.gz) or cBioPortal text): "
                   "panel genes, hotspots, TMB")

    def _src(self) -> Any:
        if self._source is None:
            if self.config.file_format() == "maf":
                from lungfuse.plugins.genomics.formats import TextMutationSource

                self._source = TextMutationSource(self.config)
            else:
                from lungfuse.plugins.genomics.features import MutationSource

                self._source = MutationSource(self.config)
        return self._source

    def prepare(self, train: pd.DataFrame, ctx: ModalityContext) -> None:
        self._fitted = self._src().fit(_ids(train), ctx.log)

    def transform(self, patients: pd.DataFrame, ctx: ModalityContext) -> pd.DataFrame:
        return self._src().transform(self._need_fit(), _ids(patients), ctx.log)

    def state_dict(self) -> dict[str, Any]:
        return dict(self._need_fit())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._fitted = dict(state)

    @classmethod
    def example(cls, workdir: Path, patient_ids: list[str]) -> MutationsConfig:
        from lungfuse.plugins.genomics.examples import write_mutations_example

        return write_mutations_example(Path(workdir), patient_ids)


class ExpressionModality(_GenomicsModality):
    """log2 / z-scored expression of selected genes (or gene-set scores) → embedding."""

    name = "expression"
    api_version = 1
    config_model = ExpressionConfig
    description = ("Gene expression (Parquet, wide or long, AnnData .h5ad or cBioPortal "
                   "text): panel, top-variance or GMT scores")

    def _src(self) -> Any:
        if self._source is None:
            if self.config.file_format() == "cbio":
                from lungfuse.plugins.genomics.formats import TextExpressionSource

                self._source = TextExpressionSource(self.config)
            else:
                from lungfuse.plugins.genomics.features import ExpressionSource

                self._source = ExpressionSource(self.config)
        return self._source

    def prepare(self, train: pd.DataFrame, ctx: ModalityContext) -> None:
        self._fitted = self._src().fit(_ids(train), ctx.log)

    def transform(self, patients: pd.DataFrame, ctx: ModalityContext) -> pd.DataFrame:
        return self._src().transform(self._need_fit(), _ids(patients), ctx.log)

    def state_dict(self) -> dict[str, Any]:
        return dict(self._need_fit())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._fitted = dict(state)

    @classmethod
    def example(cls, workdir: Path, patient_ids: list[str]) -> ExpressionConfig:
        from lungfuse.plugins.genomics.examples import write_expression_example

        return write_expression_example(Path(workdir), patient_ids)
