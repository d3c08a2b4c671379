"""The infnet modality's page hooks: the segmented nodule on a scored patient's page and
example segmentations in the run report, drawn by the plugin (core only renders them)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("SimpleITK")

from lungfuse.core.contracts import ModalityContext, ModalitySection  # noqa: E402
from lungfuse.plugins.imaging_infnet import ctio, synthetic  # noqa: E402
from lungfuse.plugins.imaging_infnet.plugin import InfNetConfig, InfNetModality  # noqa: E402

SMALL = {"train": {"backbone": "test_resnet", "channel": 8, "epochs": 1, "batch_size": 8,
                   "multiscale": [1.0], "lr": 1e-3, "negatives_per_positive": 0.25},
         "slices": {"img_size": 64}, "fast": {"enabled": False}, "embedding_dim": 8}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, InfNetModality]:
    """The modality fitted on P0-P2 of six synthetic scans (P4's data file is missing, P5
    has no CT) with an untrained segmenter given as a checkpoint: the figures are drawn
    the same whatever the weights (an annotated nodule the network misses is drawn as
    its annotation ball)."""
    from lungfuse.plugins.imaging_infnet.config import SliceSettings
    from lungfuse.plugins.imaging_infnet.network import InfNet
    from lungfuse.plugins.imaging_infnet.train import save_checkpoint

    root = tmp_path_factory.mktemp("figs")
    ckpt = save_checkpoint(root / "seg.pt", InfNet("test_resnet", channel=8), ["P0", "P1", "P2"],
                           SliceSettings(img_size=64))
    uids = [f"1.3.{i}" for i in range(5)]
    synthetic.write_tree(root / "ct", uids, seed=5, size=64, depth=16)
    (root / "ct" / "subset0" / "1.3.4.raw").unlink()
    ids = [f"P{i}" for i in range(6)]
    pd.DataFrame({"patient_id": ids, "seriesuid": uids + [None], "age": np.arange(6) + 50.0}) \
        .to_parquet(root / "clinical.parquet")
    plug = InfNetModality(InfNetConfig.model_validate(
        {"ct_root": root / "ct", "annotations": root / "ct" / "annotations.csv",
         "masks_dir": root / "ct" / "masks", "checkpoint": ckpt, **SMALL}))
    cohort = pd.read_parquet(root / "clinical.parquet").set_index("patient_id")
    plug.prepare(cohort.loc[["P0", "P1", "P2"]], ModalityContext(workdir=root, progress=False))
    return root, plug


@pytest.fixture
def drawn(monkeypatch) -> list[dict]:
    """What each figure was drawn from (the overlay's image, truth and prediction)."""
    from lungfuse.core.report import figures

    calls: list[dict] = []
    orig = figures.overlay_figure

    def spy(image, mask=None, pred=None, title=""):
        calls.append({"image": image, "mask": mask, "pred": pred, "title": title})
        return orig(image, mask, pred, title)

    monkeypatch.setattr(figures, "overlay_figure", spy)
    return calls


def _row(root: Path, pid: str) -> pd.Series:
    return pd.read_parquet(root / "clinical.parquet").set_index("patient_id").loc[pid]


def test_patient_section_draws_the_annotated_nodule_with_its_truth(fitted, drawn,
                                                                    tmp_path) -> None:
    root, plug = fitted
    sec = plug.patient_section({"id": "P3"}, _row(root, "P3"), tmp_path)
    assert isinstance(sec, ModalitySection) and sec.title == "Nodule" and not sec.problem()
    (png, caption), = sec.figures
    assert png.startswith(b"\x89PNG") and caption == "P3: segmented nodule"
    assert "(given nodule location)" in sec.paragraphs[0] and "volume mm3" in sec.paragraphs[0]
    call, = drawn
    assert call["title"] == "P3" and call["mask"] is not None and call["mask"].any()
    assert call["pred"].any()  # the slice drawn holds the segmentation


def test_patient_section_of_a_scan_given_at_scoring(fitted, drawn, tmp_path) -> None:
    root, plug = fitted
    ann = ctio.read_annotations(root / "ct" / "annotations.csv")
    r = ann[ann.seriesuid == "1.3.3"].iloc[0]
    path = ctio.find_volumes(root / "ct")["1.3.3"]
    entry = {"id": "NEW/1", "ct": path, "nodule": {"x": r.coordX, "y": r.coordY,
                                                   "z": r.coordZ, "diameter_mm": r.diameter_mm}}
    sec = plug.patient_section(entry, pd.Series(dtype=object, name="NEW/1"), tmp_path)
    assert sec.figures[0][1] == "NEW/1: segmented nodule" and drawn[0]["pred"].any()
    # no scan for the patient, or nothing fitted: no section
    assert plug.patient_section({"id": "P5"}, _row(root, "P5"), tmp_path) is None
    unfitted = InfNetModality(plug.config)
    assert unfitted.patient_section({"id": "P3"}, _row(root, "P3"), tmp_path) is None


def test_report_section_segments_the_first_held_out_scans(fitted, drawn, tmp_path,
                                                          caplog) -> None:
    root, plug = fitted
    rows = pd.read_parquet(root / "clinical.parquet").set_index("patient_id")
    with caplog.at_level(logging.WARNING, logger="lungfuse"):
        sec = plug.report_section(rows.loc[["P4", "P3", "P5", "P2"]], tmp_path)
    # P4's scan is unreadable (a warning), P5 has none, P2 is past the first three
    assert [c.split(":")[0] for _, c in sec.figures] == ["P3"]
    assert "no segmentation figure for P4" in caplog.text
    assert sec.title == "Example segmentations" and [d["title"] for d in drawn] == [
        "P3 (held out)"]
    assert plug.report_section(rows.loc[["P5"]], tmp_path) is None  # no scan drawn
