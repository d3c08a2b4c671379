"""The third-party example (examples/lungfuse-cnv) takes the path a plugin author takes,
and the conformance checks of ``lungfuse.testing`` catch what they promise to."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from plugin_fixtures import good_fusion_module, make_dist

from lungfuse.core.registry import FUSION_GROUP, MODALITY_GROUP, Registry
from lungfuse.testing import (
    MODALITY_CHECKS,
    ConformanceWarning,
    ModalityCase,
    check_declaration,
    check_fusion_plugin,
    check_modality_plugin,
    check_prepare_reproducible,
    check_prepare_uses_training_rows_only,
    modality_checks,
    parametrize_modality_checks,
)
from lungfuse_cnv import CopyNumberModality


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


@parametrize_modality_checks(CopyNumberModality)
def test_cnv_conformance(check):
    check()


def test_the_helper_gives_each_rule_its_own_test_id():
    names = [c.name for c in modality_checks(CopyNumberModality)]
    assert names == [f.__name__ for f in MODALITY_CHECKS]
    assert len(set(names)) == len(names) >= 12
    assert {"check_declaration", "check_prepare_uses_training_rows_only",
            "check_state_round_trip", "check_encoder_output"} <= set(names)
    mark = parametrize_modality_checks(CopyNumberModality).mark
    assert mark.args[0] == "check" and mark.kwargs["ids"] == names


def test_one_broken_rule_fails_its_own_check_only(tmp_path):
    """A state the run folder cannot store (a set) fails check_state_round_trip, with the
    key named, and nothing else; run-them-all stops on it."""

    class SetState(CopyNumberModality):
        def state_dict(self):
            return {**super().state_dict(), "seen": set(self.genes_ or [])}

    failed = {}
    for check in modality_checks(SetState, workdir=tmp_path):
        try:
            check()
        except AssertionError as exc:
            failed[check.name] = str(exc)
    assert list(failed) == ["check_state_round_trip"]
    assert "cannot be stored in a run folder" in failed["check_state_round_trip"]
    assert "seen" in failed["check_state_round_trip"]
    with pytest.raises(AssertionError, match="cannot be stored"):
        check_modality_plugin(SetState, workdir=tmp_path / "again")


def test_leakage_check_catches_a_fit_on_every_patient_of_the_file(tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq

    class FitsOnEveryone(CopyNumberModality):
        def prepare(self, train, ctx):
            samples = pq.read_table(self.config.path, columns=["sample"]).column(0).to_pylist()
            everyone = sorted({self._patient(s) for s in samples})
            super().prepare(pd.DataFrame(index=pd.Index(everyone, name="patient_id")), ctx)

    with ModalityCase(FitsOnEveryone, workdir=tmp_path) as case:
        check_prepare_reproducible(case)  # deterministic: the failure below is the leak
        with pytest.raises(AssertionError, match="fit on the patients of `train` only"):
            check_prepare_uses_training_rows_only(case)
    with ModalityCase(CopyNumberModality, workdir=tmp_path / "honest") as case:
        check_prepare_uses_training_rows_only(case)


def test_a_fixed_config_skips_only_the_leakage_check(tmp_path):
    cfg = CopyNumberModality.example(tmp_path, [f"TCGA-LF-{i:04d}" for i in range(16)])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        check_modality_plugin(CopyNumberModality, config=cfg, workdir=tmp_path / "w")
    skipped = [str(w.message) for w in seen if issubclass(w.category, ConformanceWarning)]
    assert len(skipped) == 1 and "check_prepare_uses_training_rows_only" in skipped[0]


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


# -- the declaration rules are the registry's ---------------------------------------------
@pytest.fixture
def extra_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    for mod in [m for m in sys.modules if m.startswith("lfx_")]:
        del sys.modules[mod]


BROKEN_DECLARATIONS = {
    "greedy_kind": ("lfx_greedy", good_fusion_module("lfx_greedy").replace(
        'kind: Literal["lfx_greedy"]', 'kind: Literal["lfx_greedy", "concat"]'), "error"),
    "future_api": ("lfx_future", good_fusion_module("lfx_future", api=99), "incompatible"),
    "plain_config": ("lfx_plain", good_fusion_module("lfx_plain").replace(
        "class Cfg(FusionConfig):", "from pydantic import BaseModel\nclass Cfg(BaseModel):"),
        "error"),
}


@pytest.mark.parametrize("case", list(BROKEN_DECLARATIONS))
def test_declaration_check_and_registry_give_the_same_reason(extra_path, case):
    name, source, status = BROKEN_DECLARATIONS[case]
    make_dist(extra_path, f"{name}-dist", "1.0", FUSION_GROUP, {name: f"{name}:Plugin"},
              {name: source})
    entry = next(e for e in Registry().load_all(FUSION_GROUP, warn=False) if e.name == name)
    assert entry.status == status and entry.reason
    with pytest.raises(AssertionError) as info:
        check_declaration(importlib.import_module(name).Plugin)
    assert str(info.value) == f"plugin '{name}': {entry.reason}"
