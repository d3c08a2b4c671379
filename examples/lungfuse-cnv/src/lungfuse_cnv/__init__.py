"""A copy-number modality for lungfuse, packaged on its own.

Input: a Parquet table in long layout with columns ``sample``, ``gene`` and ``log2_ratio``
(segment-level calls summarised per gene, as GISTIC or CNVkit produce). Samples map to
patients by the TCGA barcode rule (first 12 characters) or identity.

Features per patient: the log2 ratio of each selected gene, clipped, and centred/scaled
with statistics of the training patients only. Genes are the configured list, or the
``top_n`` most variable genes among training patients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from lungfuse.core.contracts import ModalityConfig, ModalityContext, ModalityPlugin
from lungfuse.core.errors import DataError
from lungfuse.schemas import InputPath

__version__ = "0.1.0"
REQUIRED = ("sample", "gene", "log2_ratio")


class CopyNumberConfig(ModalityConfig):
    """Settings of the copy-number modality."""

    kind: Literal["cnv"] = "cnv"
    path: InputPath = Field(description="Parquet table with columns sample, gene, log2_ratio.")
    genes: list[str] | None = Field(default=None, description="Genes to use (default: top_n).")
    top_n: int = Field(default=50, ge=1, description="Most variable genes among training patients.")
    barcode_rule: Literal["tcga", "identity"] = "tcga"
    clip: float = Field(default=3.0, gt=0, description="log2 ratios are clipped to ±clip.")
    hidden_dim: int = Field(default=32, ge=1)


class CopyNumberModality(ModalityPlugin):
    """Copy-number log2 ratios per gene → a small MLP embedding."""

    name = "cnv"
    api_version = 1
    config_model = CopyNumberConfig
    description = "Copy-number log2 ratios per gene (example third-party plugin)"

    def __init__(self, config: CopyNumberConfig) -> None:
        super().__init__(config)
        self.genes_: list[str] | None = None
        self.mean_: dict[str, float] = {}
        self.std_: dict[str, float] = {}

    # -- reading -----------------------------------------------------------------------
    def _patient(self, sample: Any) -> str:
        s = str(sample)
        return s[:12] if self.config.barcode_rule == "tcga" else s

    def _matrix(self, patient_ids: set[str], genes: list[str] | None = None):
        import pandas as pd
        import pyarrow.parquet as pq

        path = Path(self.config.path)
        try:
            schema = pq.read_schema(path)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{path}: not a readable Parquet file ({exc}); check the file") from exc
        missing = [c for c in REQUIRED if c not in schema.names]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)}; columns present: "
                f"{', '.join(schema.names)}"
            )
        filters = [("gene", "in", genes)] if genes else None
        df = pq.read_table(path, columns=list(REQUIRED), filters=filters).to_pandas()
        df["patient_id"] = df["sample"].map(self._patient)
        df = df[df["patient_id"].isin(patient_ids)]
        wide = df.pivot_table(index="patient_id", columns="gene", values="log2_ratio",
                              aggfunc="mean")
        c = self.config.clip
        return wide.clip(-c, c).astype("float64") if len(wide) else pd.DataFrame()

    # -- contract ----------------------------------------------------------------------
    def available(self, cohort, ctx: ModalityContext) -> set[str]:
        import pyarrow.parquet as pq

        samples = pq.read_table(self.config.path, columns=["sample"]).column(0).to_pylist()
        have = {self._patient(s) for s in samples}
        return {p for p in cohort.index.astype(str) if p in have}

    def prepare(self, train, ctx: ModalityContext) -> None:
        ids = self.available(train, ctx)
        if not ids:
            raise DataError(f"{self.config.path}: no training patient has copy-number data")
        wide = self._matrix(ids, self.config.genes)
        if self.config.genes:
            genes = list(self.config.genes)
        else:
            genes = list(wide.var().sort_values(ascending=False).index[: self.config.top_n])
        wide = wide.reindex(columns=genes)
        self.genes_ = genes
        self.mean_ = {g: float(v) if v == v else 0.0 for g, v in wide.mean().items()}
        self.std_ = {g: float(v) if v == v and v > 0 else 1.0 for g, v in wide.std().items()}
        ctx.log.info("cnv: %d genes fitted on %d training patients", len(genes), len(ids))

    def transform(self, patients, ctx: ModalityContext):
        if self.genes_ is None:
            raise RuntimeError("cnv: transform called before prepare")
        ids = self.available(patients, ctx)
        wide = self._matrix(ids, self.genes_).reindex(index=sorted(ids), columns=self.genes_)
        wide = wide.fillna(self.mean_)  # a gene without a call: the training mean
        wide = (wide - [self.mean_[g] for g in self.genes_]) / [self.std_[g] for g in self.genes_]
        wide.index.name = "patient_id"
        return wide.astype("float32")

    def build_encoder(self, n_features: int):
        import torch.nn as nn

        h, d = self.config.hidden_dim, self.config.embedding_dim
        enc = nn.Sequential(nn.Linear(n_features, h), nn.ReLU(), nn.Dropout(0.1), nn.Linear(h, d))
        enc.embedding_dim = d
        return enc

    def state_dict(self) -> dict[str, Any]:
        return {"genes": self.genes_, "mean": self.mean_, "std": self.std_}

    def load_state_dict(self, state) -> None:
        self.genes_ = list(state["genes"])
        self.mean_ = dict(state["mean"])
        self.std_ = dict(state["std"])

    @classmethod
    def example(cls, workdir: Path, patient_ids: list[str]) -> CopyNumberConfig:
        import numpy as np
        import pandas as pd

        rng = np.random.default_rng(0)
        genes = [f"G{i:02d}" for i in range(12)]
        rows = []
        for i, p in enumerate(patient_ids):
            if i % 4 == 3:  # a quarter of patients have no copy-number profile
                continue
            for g in genes:
                rows.append((f"{p}-01A", g, float(rng.normal(0, 0.5))))
        path = Path(workdir) / "cnv.parquet"
        pd.DataFrame(rows, columns=list(REQUIRED)).to_parquet(path)
        return CopyNumberConfig(path=path, top_n=8, barcode_rule="tcga")
