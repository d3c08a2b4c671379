"""The third-party example (examples/lungfuse-cnv) takes the path a plugin author takes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lungfuse.core.registry import MODALITY_GROUP, Registry
from lungfuse.testing import check_fusion_plugin, check_modality_plugin


def test_cnv_is_discovered_from_its_own_distribution():
    reg = Registry()
    entry = next(e for e in reg.entries(MODALITY_GROUP) if e.name == "cnv")
    assert entry.distribution == "lungfuse-cnv"
    assert reg.get(MODALITY_GROUP, "cnv").__module__ == "lungfuse_cnv"


def test_cnv_is_listed_by_the_cli():
    res = subprocess.run([sys.executable, "-m", "lungfuse.core.cli", "plugins"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("cnv "))
    assert "lungfuse.modalities" in line and "lungfuse-cnv" in line and line.rstrip().endswith("ok")


def test_cnv_passes_the_conformance_check(tmp_path):
    from lungfuse_cnv import CopyNumberModality

    check_modality_plugin(CopyNumberModality, workdir=tmp_path)


def test_conformance_check_catches_a_leaky_plugin(tmp_path):
    """A plugin whose features use held-out outcomes must fail the check."""
    from lungfuse_cnv import CopyNumberModality

    class Leaky(CopyNumberModality):
        def transform(self, patients, ctx):
            out = super().transform(patients, ctx)
            out.iloc[:, 0] += float(len(patients)) * 0.01  # depends on who else is transformed
            return out

    with pytest.raises(AssertionError, match="depend on which other patients"):
        check_modality_plugin(Leaky, workdir=tmp_path)


def test_conformance_check_catches_zero_rows_for_absent_patients(tmp_path):
    from lungfuse_cnv import CopyNumberModality

    class ZeroFill(CopyNumberModality):
        def transform(self, patients, ctx):
            out = super().transform(patients, ctx)
            return out.reindex(patients.index.rename("patient_id")).fillna(0.0)

    with pytest.raises(AssertionError, match="absent patients must be absent"):
        check_modality_plugin(ZeroFill, workdir=tmp_path)


def test_fusion_check_catches_a_head_that_reads_absent_embeddings():
    import torch

    from lungfuse.core.contracts import FusionPlugin
    from lungfuse.plugins.fusion.plugin import ConcatFusion

    class Naive(FusionPlugin):
        name = "concat"
        api_version = 1
        config_model = ConcatFusion.config_model

        def build(self, embedding_dims, out_dim=1):
            class Head(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.lin = torch.nn.Linear(sum(embedding_dims.values()), out_dim)

                def forward(self, emb, present):
                    return self.lin(torch.cat([emb[m] for m in embedding_dims], 1))

            return Head()

    with pytest.raises(AssertionError, match="absent modality"):
        check_fusion_plugin(Naive)
