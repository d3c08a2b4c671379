"""lungfuse-cnv's own tests: what a plugin author writes to check a plugin.

Run from the repository root with ``pytest examples/lungfuse-cnv/tests``.
"""

from __future__ import annotations

import numpy as np

from lungfuse.testing import parametrize_modality_checks
from lungfuse_cnv import CopyNumberModality


# every rule of the modality contract, each its own test:
# test_conformance[check_declaration], test_conformance[check_state_round_trip], ...
@parametrize_modality_checks(CopyNumberModality)
def test_conformance(check):
    check()


def test_log2_ratios_are_clipped_before_scaling(tmp_path):
    """An amplification of log2 ratio 10 counts as the clip (3), so one outlier cannot
    dominate the training mean and scale."""
    import pandas as pd

    from lungfuse.core.contracts import ModalityContext
    from lungfuse_cnv import CopyNumberConfig

    ids = [f"TCGA-LF-{i:04d}" for i in range(4)]
    values = [0.0, 1.0, -1.0, 10.0]
    pd.DataFrame({"sample": [f"{p}-01A" for p in ids], "gene": "G1",
                  "log2_ratio": values}).to_parquet(tmp_path / "cnv.parquet")
    cohort = pd.DataFrame(index=pd.Index(ids, name="patient_id"))
    ctx = ModalityContext(workdir=tmp_path, progress=False)
    m = CopyNumberModality(CopyNumberConfig(path=tmp_path / "cnv.parquet", genes=["G1"]))
    m.prepare(cohort, ctx)
    clipped = np.array([0.0, 1.0, -1.0, 3.0])
    expected = (clipped - clipped.mean()) / clipped.std(ddof=1)
    got = m.transform(cohort, ctx)["G1"].to_numpy()
    assert np.allclose(got, expected, atol=1e-6)
