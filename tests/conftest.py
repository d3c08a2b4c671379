"""Shared fixtures. Tests use tiny models and the `tiny` synthetic cohort."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("LUNGFUSE_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tiny` synthetic cohort (seed 0), generated once per test session.

    Layout: clinical.parquet, ct/subset*/<uid>.mhd, ct/annotations.csv, ct/masks/,
    omics/mutations.parquet, omics/expression.parquet, omics/sequenced_samples.txt.
    Treat it as read-only; copy it if a test must modify files.
    """
    from lungfuse.core.synth import generate

    out = tmp_path_factory.mktemp("tiny_cohort")
    generate(out, preset="tiny", seed=0, progress=False)
    return out
