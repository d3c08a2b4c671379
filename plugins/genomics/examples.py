"""Tiny example datasets (used by ``example()`` and the conformance checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungfuse.core.atomic import write_parquet, write_text

GENES = ["EGFR", "KRAS", "TP53", "STK11", "KEAP1", "BRAF", "PIK3CA", "SMARCA4"]
CHANGES = {"KRAS": ["p.G12C", "p.G12D", "p.Q61H"], "EGFR": ["p.L858R", "p.E746_A750del"],
           "BRAF": ["p.V600E"], "PIK3CA": ["p.E545K"]}
CLASSES = ["Missense_Mutation", "Nonsense_Mutation", "Frame_Shift_Del", "Silent",
           "Splice_Site", "In_Frame_Del", "3'UTR"]


def example_maf(patient_ids: list[str], seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """A small MAF and sequenced-sample list: every 4th patient is not sequenced, every
    4th (offset 2) is sequenced without calls (wild-type)."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    sequenced: list[str] = []
    for i, p in enumerate(patient_ids):
        if i % 4 == 3:
            continue
        sample = f"{p}-01A-11D-A000-08"
        sequenced.append(sample)
        if i % 4 == 2:
            continue
        for _ in range(int(rng.integers(2, 9))):
            gene = GENES[int(rng.integers(len(GENES)))] if rng.random() < 0.8 else "Unknown"
            if rng.random() < 0.15:
                gene = f"OTHER{int(rng.integers(50))}"
            depth = int(rng.integers(20, 200))
            rows.append({
                "Tumor_Sample_Barcode": sample,
                "Hugo_Symbol": gene,
                "Variant_Classification": CLASSES[int(rng.integers(len(CLASSES)))],
                "HGVSp_Short": str(rng.choice(CHANGES.get(gene, ["p.R100*", "p.A50V"]))),
                "t_alt_count": int(rng.integers(1, depth)),
                "t_depth": depth,
                "Entrez_Gene_Id": 0,
            })
    return pd.DataFrame(rows), sequenced


def example_expression(patient_ids: list[str], seed: int = 0, n_genes: int = 30) -> pd.DataFrame:
    """Wide samples × genes counts (log-normal); every 5th patient has no profile."""
    rng = np.random.default_rng(seed)
    genes = GENES + [f"GENE{i:03d}" for i in range(n_genes - len(GENES))]
    samples = [f"{p}-01A" for i, p in enumerate(patient_ids) if i % 5 != 4]
    scale = rng.uniform(0.5, 2.0, len(genes))
    vals = np.exp(rng.normal(3.0, 1.0, (len(samples), len(genes))) * scale)
    df = pd.DataFrame(vals.round(3), columns=genes)
    df.insert(0, "sample", samples)
    return df


def write_mutations_example(workdir: Path, patient_ids: list[str]) -> Any:
    from lungfuse.plugins.genomics.plugin import MutationsConfig

    workdir.mkdir(parents=True, exist_ok=True)
    maf, sequenced = example_maf(patient_ids)
    path = write_parquet(workdir / "mutations.parquet", maf, index=False)
    seq = write_text(workdir / "sequenced_samples.txt", "\n".join(sequenced) + "\n")
    return MutationsConfig(path=path, sequenced_samples=seq, panel=GENES[:6], hotspots=True,
                           hidden=[16], embedding_dim=8)


def write_expression_example(workdir: Path, patient_ids: list[str]) -> Any:
    from lungfuse.plugins.genomics.plugin import ExpressionConfig

    workdir.mkdir(parents=True, exist_ok=True)
    path = write_parquet(workdir / "expression.parquet", example_expression(patient_ids),
                         index=False)
    return ExpressionConfig(path=path, panel=[*GENES, "MET"], hidden=[16], embedding_dim=8)
