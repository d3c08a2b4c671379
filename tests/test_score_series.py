"""``lungfuse score --ct STUDY --series UID`` (issue 14, item 4): a DICOM study folder as it
comes off the scanner (a localiser, a thick and a thin reconstruction of one scan, built
from pydicom's CT test file) scored through the CT modality's scoring override. The named
series is read, the rule's choice is read without one, the page and scores.json say which
series was used, and a uid that is not in the folder leaves that patient "not scored"
with one line saying why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("SimpleITK")
pytest.importorskip("pydicom")

from test_dicom_study import LOCALISER, THICK, THIN, _series, _write_series  # noqa: E402

from lungfuse.plugins.imaging_infnet import ctio, synthetic  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

UIDS = [f"1.7.{i}" for i in range(10)]


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """A finished binary run of the infnet modality alone (an untrained test_resnet
    segmenter given as a checkpoint) on ten synthetic scans, and a study folder made from
    an eleventh scan: localiser, thick (2 slices averaged) and thin (the scan itself), with
    its nodule's location as ``--nodule`` takes it."""
    from lungfuse.core.run import run_experiment
    from lungfuse.plugins.imaging_infnet.config import SliceSettings
    from lungfuse.plugins.imaging_infnet.network import InfNet
    from lungfuse.plugins.imaging_infnet.train import save_checkpoint

    root = tmp_path_factory.mktemp("series")
    ckpt = save_checkpoint(root / "seg.pt", InfNet("test_resnet", channel=8), [],
                           SliceSettings(img_size=32))
    synthetic.write_tree(root / "ct", UIDS, seed=4, size=48, depth=16, write_masks=False)
    synthetic.write_tree(root / "new", ["1.9.1"], seed=3, size=48, depth=16,
                         nodules_per_scan=(1, 1), write_masks=False)
    pd.DataFrame({"patient_id": [f"P{i}" for i in range(10)], "seriesuid": UIDS,
                  "malignant": [0, 1] * 5}).to_parquet(root / "clinical.parquet")
    cfg = {"name": "ser", "cohort": {"clinical": str(root / "clinical.parquet")},
           "modalities": [{"kind": "infnet", "ct_root": str(root / "ct"),
                           "annotations": str(root / "ct" / "annotations.csv"),
                           "checkpoint": str(ckpt), "slices": {"img_size": 32},
                           "fast": {"enabled": False}, "embedding_dim": 4, "hidden_dim": 8}],
           "fusion": {"kind": "concat", "hidden_dim": 8},
           "training": {"max_epochs": 2, "batch_size": 8, "patience": 1},
           "evaluation": {"folds": 2, "bootstrap": 0}, "output_dir": str(root / "runs")}
    run_dir = run_experiment(cfg, progress=False, report=False).run_dir

    scan = ctio.read_volume(root / "new" / "subset0" / "1.9.1.mhd")
    stored = np.rint(scan.array + 1024).astype(np.int16)
    (sx, _, sz), (ox, oy, oz) = scan.spacing, scan.origin
    study = root / "study"
    _series(study / "SE001", LOCALISER, 1, 5.0, number=1, description="Topogram",
            localiser=True)
    _write_series(study / "SE002", THICK, stored[0::2] // 2 + stored[1::2] // 2, 2 * sz,
                  number=2, description="Thorax 5.0 thick", origin=(ox, oy, oz + sz / 2),
                  spacing=sx, step=2 * sz)
    _write_series(study / "SE003", THIN, stored, sz, number=3, description="Thorax 1.0 thin",
                  origin=(ox, oy, oz), spacing=sx, step=sz)
    r = pd.read_csv(root / "new" / "annotations.csv").iloc[0]
    return run_dir, study, f"{r.coordX},{r.coordY},{r.coordZ},{r.diameter_mm}"


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from lungfuse.core.cli import main

    with pytest.raises(SystemExit) as ex:
        main(["score", *args, "--no-progress"])
    text = capsys.readouterr()
    return int(ex.value.code or 0), text.out, text.err


def _scored(out: Path) -> dict:
    return json.loads((out / "scores.json").read_text(encoding="utf-8"))["patients"][0]


def test_series_names_the_series_read_and_the_page_says_so(ct_run, tmp_path, capsys,
                                                            monkeypatch) -> None:
    run_dir, study, nodule = ct_run
    reads: list[str | None] = []
    real = ctio.read_volume

    def spy(path, series_uid=None):
        vol = real(path, series_uid)
        if Path(path) == study:
            reads.append(vol.meta["series"]["uid"])
        return vol

    monkeypatch.setattr(ctio, "read_volume", spy)
    code, out, err = _cli([str(run_dir), "--patient", "NEW-1", "--ct", str(study),
                           "--nodule", nodule, "--series", THICK, "--out",
                           str(tmp_path / "thick")], capsys)
    assert code == 0, err
    got = _scored(tmp_path / "thick")
    seen = got["inputs"]["infnet"]
    assert seen["series"]["uid"] == THICK and seen["chosen_by"] == "given"
    assert seen["series"]["slices"] == 8 and seen["series_in_folder"] == 3
    assert f"CT series read: {THICK}" in out
    page = (tmp_path / "thick" / got["page"]).read_text(encoding="utf-8")
    assert THICK in page and "Thorax 5.0 thick" in page and "8 slices" in page
    assert "the series named for this patient" in page
    # every read of the study (features of each fold model, the page's nodule figure and
    # Brock measurements) was of the named series
    assert len(reads) >= 2 and set(reads) == {THICK}

    # without --series: the rule's choice (thinnest axial CT), said as such
    code, out, err = _cli([str(run_dir), "--patient", "NEW-1", "--ct", str(study),
                           "--nodule", nodule, "--out", str(tmp_path / "rule")], capsys)
    assert code == 0, err
    rule = _scored(tmp_path / "rule")
    assert rule["inputs"]["infnet"]["series"]["uid"] == THIN
    assert rule["inputs"]["infnet"]["chosen_by"] == "rule"
    assert "chosen by the rule" in (tmp_path / "rule" / rule["page"]).read_text(
        encoding="utf-8")
    # the named series reached the segmenter: the thick scan's features give another risk
    thick = pd.read_parquet(tmp_path / "thick" / "scores_by_model.parquet")
    thin = pd.read_parquet(tmp_path / "rule" / "scores_by_model.parquet")
    assert not np.allclose(thick["raw"], thin["raw"], rtol=0, atol=1e-7)


def test_a_series_not_in_the_folder_leaves_the_patient_not_scored(ct_run, tmp_path,
                                                                    capsys) -> None:
    run_dir, study, _ = ct_run
    out = tmp_path / "bad"
    code, _, err = _cli([str(run_dir), "--patient", "NEW-1", "--ct", str(study), "--series",
                         "2.25.9", "--out", str(out)], capsys)
    assert code == 1
    line = next(ln for ln in err.splitlines() if ln.startswith("NEW-1: not scored:"))
    assert "no series 2.25.9 in this folder" in line and THIN in line
    got = _scored(out)
    assert got["status"] == "error" and got["risk"] is None
    page = (out / got["page"]).read_text(encoding="utf-8")
    assert "not scored" in page and "2.25.9" in page


def test_a_study_of_one_slice_is_refused_for_that_patient(ct_run, tmp_path, capsys) -> None:
    run_dir = ct_run[0]
    scout = _series(tmp_path / "scout", LOCALISER, 1, 5.0, number=1, description="Topogram",
                    localiser=True)
    code, _, err = _cli([str(run_dir), "--patient", "NEW-2", "--ct", str(scout), "--out",
                         str(tmp_path / "scout_out")], capsys)
    assert code == 1 and "NEW-2: not scored:" in err and "no axial CT series" in err


def test_series_without_a_ct_folder_is_one_line(ct_run, tmp_path, capsys) -> None:
    from lungfuse.schemas import ScorePatient

    run_dir = ct_run[0]
    code, _, err = _cli([str(run_dir), "--patient", "NEW-1", "--series", THIN, "--out",
                         str(tmp_path / "x")], capsys)
    assert code == 2 and err.count("\n") == 1 and "--series" in err and "--ct" in err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="give `ct` too"):
        ScorePatient(id="A", series=THIN)
