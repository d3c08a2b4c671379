"""``lungfuse score``: new patients scored by every fold model of a finished run, with
modality contributions, gene attributions, per-patient pages and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_pipeline import FakeModality, config, make_data, run

from lungfuse.core.errors import ConfigError, DataError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("score")
    make_data(root)
    res = run(config(root, "binary", "gated"))
    return root, res.run_dir


def _spec(root: Path, ids: list[str], tmp: Path, **extra) -> Path:
    spec = {"patients": [{"id": i} for i in ids], "clinical": str(root / "clinical.parquet"),
            **extra}
    path = tmp / "input.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _score(run_dir: Path, spec, out: Path, **kw):
    from lungfuse.core.scoring import score_patients

    return score_patients(run_dir, spec, out, plugins=[FakeModality], progress=False, **kw)


def _fake_ids(root: Path) -> tuple[list[str], list[str]]:
    have = set(pd.read_parquet(root / "fake.parquet").index)
    ids = sorted(pd.read_parquet(root / "clinical.parquet")["patient_id"])
    return [i for i in ids if i in have], [i for i in ids if i not in have]


def test_each_fold_model_reproduces_the_runs_held_out_prediction(trained, tmp_path) -> None:
    root, run_dir = trained
    with_fake, without = _fake_ids(root)
    ids = with_fake[:3] + without[:1]
    res = _score(run_dir, _spec(root, ids, tmp_path), tmp_path / "out")
    by_model = pd.read_parquet(res.folder / "scores_by_model.parquet")
    held = pd.read_parquet(run_dir / "predictions.parquet").set_index(["patient_id", "seed"])
    assert set(by_model["fold"]) == {0, 1}
    for pid in ids:
        fold = int(held.loc[(pid, 0), "fold"])
        row = by_model[(by_model.patient_id == pid) & (by_model.fold == fold)].iloc[0]
        assert row["risk"] == pytest.approx(held.loc[(pid, 0), "prob_calibrated"], abs=1e-5)
        assert row["pattern"] == held.loc[(pid, 0), "pattern"]
    flat = pd.read_parquet(res.folder / "scores.parquet").set_index("patient_id")
    for s in res.patients:
        r = by_model[by_model.patient_id == s["patient_id"]]["risk"]
        assert s["risk"] == pytest.approx(r.mean()) == pytest.approx(flat.loc[s["patient_id"],
                                                                              "risk"])
        assert s["uncertainty"] == pytest.approx(r.std(ddof=1))
        assert 0.0 <= s["risk"] <= 1.0
    info = json.loads((res.folder / "scores.json").read_text(encoding="utf-8"))
    assert info["models"] == 2 and [p["patient_id"] for p in info["patients"]] == ids


def test_missing_modality_is_scored_without_it_and_said(trained, tmp_path) -> None:
    root, run_dir = trained
    with_fake, without = _fake_ids(root)
    res = _score(run_dir, _spec(root, [without[0], with_fake[0]], tmp_path), tmp_path / "o")
    miss, full = res.patients
    assert miss["missing"] == ["fake"] and miss["present"] == ["cnv"]
    assert "fake" not in miss["contributions"] and "cnv" in miss["contributions"]
    assert "no data" in miss["missing_reasons"]["fake"]
    assert full["missing"] == [] and set(full["contributions"]) == {"fake", "cnv"}
    # the head's weights: absent modalities weigh nothing
    assert miss["weights"]["fake"] == pytest.approx(0.0, abs=1e-6)
    assert sum(full["weights"].values()) == pytest.approx(1.0, abs=1e-4)
    page = (res.folder / miss["page"]).read_text(encoding="utf-8")
    assert "Missing for this patient" in page and "fake" in page
    assert "Missing for this patient" not in (res.folder / full["page"]).read_text(encoding="utf-8")
    assert "No modality could be used" not in page
    index = (res.folder / "report.html").read_text(encoding="utf-8")
    assert f"patients/{without[0]}.html" in index


def test_leave_one_out_contribution_is_the_change_when_hidden(trained, tmp_path) -> None:
    """contribution_m = risk − risk with m hidden, recomputed here from the fold models."""
    from lungfuse.core.calibration import apply_calibration
    from lungfuse.core.contracts import ModalityContext
    from lungfuse.core.folds import load_fold_model
    from lungfuse.core.fusion_model import FoldData, predict

    root, run_dir = trained
    pid = _fake_ids(root)[0][1]
    res = _score(run_dir, _spec(root, [pid], tmp_path), tmp_path / "o", ig_steps=128)
    clin = pd.read_parquet(root / "clinical.parquet").set_index("patient_id")
    deltas, gaps = [], []
    for fold in (0, 1):
        tf = load_fold_model(run_dir, 0, fold, plugins=[FakeModality])
        feats = tf.features(clin.loc[[pid]].drop(columns=["malignant", "time", "event"]),
                            ModalityContext(workdir=tmp_path / "w"))
        data = FoldData.build([pid], feats, np.zeros(1))
        raw, _ = predict(tf.model, data)
        data.present["fake"][:] = False
        hid, _ = predict(tf.model, data)
        cal = tf.meta["calibration"]
        deltas.append(apply_calibration(cal, raw)[0] - apply_calibration(cal, hid)[0])
        data.present["fake"][:] = True
        zero = FoldData.build([pid], {m: f * 0 for m, f in feats.items()}, np.zeros(1))
        gaps.append(raw[0] - predict(tf.model, zero)[0][0])
    s = res.patients[0]
    assert s["contributions"]["fake"] == pytest.approx(np.mean(deltas), abs=1e-6)
    # Integrated Gradients is complete: attributions sum to F(x) − F(baseline)
    attr = pd.read_parquet(res.folder / "attributions.parquet")
    total = attr.loc[attr.patient_id == pid, "attribution"].sum()
    gap = float(np.mean(gaps))
    assert total == pytest.approx(gap, abs=0.02 + 0.02 * abs(gap))
    assert {g["modality"] for g in s["top_features"]} <= {"fake", "cnv"}
    ranked = [abs(g["attribution"]) for g in s["top_features"]]
    assert ranked == sorted(ranked, reverse=True)


def test_modality_data_override_for_new_patients(trained, tmp_path) -> None:
    """New patients' rows come from the file the input names, not the run's."""
    root, run_dir = trained
    pid = _fake_ids(root)[1][0]  # no fake data in the run's file
    new = pd.DataFrame({"a": [3.0], "b": [0.0], "c": [0.0]},
                       index=pd.Index([pid], name="patient_id"))
    new.to_parquet(tmp_path / "new_fake.parquet")
    spec = _spec(root, [pid], tmp_path, modalities={"fake": {"path": "new_fake.parquet"}})
    res = _score(run_dir, spec, tmp_path / "o")
    assert res.patients[0]["present"] == ["fake", "cnv"]


@pytest.mark.parametrize("spec, match", [
    ({"patients": []}, "patients: List should have at least 1 item"),
    ({"patients": [{"id": "A"}, {"id": "A"}]}, "patient id\\(s\\) A listed twice"),
    ({"patients": [{"id": "A", "ct": "nope.mhd"}]}, "patients\\[0\\].ct: file not found"),
    ({"patients": [{"id": "A"}], "colour": 1}, "colour: unknown key"),
    ({"patients": [{"id": "A"}], "modalities": {"rna": {"path": "x"}}},
     "modalities.rna: the run has no such modality \\(it has: fake, cnv\\)"),
    ({"patients": [{"id": "A"}], "modalities": {"fake": {"path": "nope.parquet"}}},
     "modalities.fake.path: file not found"),
    ({"patients": [{"id": "A"}], "modalities": {"fake": {"embedding_dim": "x"}}},
     "modalities.fake: embedding_dim: Input should be a valid integer"),
])
def test_bad_scoring_input_one_line_and_nothing_written(trained, tmp_path, spec, match) -> None:
    _, run_dir = trained
    path = tmp_path / "in.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=match) as exc:
        _score(run_dir, path, tmp_path / "out")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unfinished_run_and_foreign_out_folder_are_refused(trained, tmp_path) -> None:
    root, run_dir = trained
    spec = _spec(root, ["TCGA-FK-0001"], tmp_path)
    with pytest.raises(DataError, match="not a run folder"):
        _score(tmp_path, spec, tmp_path / "out")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not a scoring folder"):
        _score(run_dir, spec, busy)
    assert (busy / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_cli_single_patient_and_exit_code(trained, tmp_path, capsys) -> None:
    """The CLI on a run of installed plugins only (the example CNV plugin)."""
    from lungfuse.core.cli import main

    root, _ = trained
    cfg = config(root, "binary", "concat", output_dir=str(tmp_path / "runs"))
    cfg["modalities"] = cfg["modalities"][1:]
    run_dir = run(cfg).run_dir
    pid = _fake_ids(root)[0][0]
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as ex:
        main(["score", str(run_dir), "--patient", pid, "--clinical",
              str(root / "clinical.parquet"), "--out", str(out), "--no-progress"])
    text = capsys.readouterr()
    assert ex.value.code == 0, text.err
    assert text.out.startswith(f"{pid}: risk ") and "scoring folder:" in text.out
    assert (out / "patients" / f"{pid}.html").is_file()
    with pytest.raises(SystemExit) as ex:
        main(["score", str(run_dir), "--patient", pid, "--nodule", "1,2", "--out",
              str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and err.count("\n") == 1 and "X,Y,Z,DIAMETER" in err
    assert "Traceback" not in err and not (tmp_path / "x").exists()


def test_patient_page_renders_with_every_figure(trained, tmp_path) -> None:
    from browser import chromium, render_counts

    if chromium() is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium)")
    root, run_dir = trained
    pid = _fake_ids(root)[0][0]
    res = _score(run_dir, _spec(root, [pid], tmp_path), tmp_path / "o")
    page = res.folder / res.patients[0]["page"]
    images, loaded = render_counts(page)
    assert images >= 2 and loaded == images  # contributions + top features at least
    assert "http" not in page.read_text(encoding="utf-8").replace("http-equiv", "")  # self-contained


def test_patient_with_no_data_is_scored_as_the_baseline_and_flagged(trained, tmp_path) -> None:
    _, run_dir = trained
    res = _score(run_dir, {"patients": [{"id": "NOBODY-1"}]}, tmp_path / "o")
    s = res.patients[0]
    assert s["present"] == [] and s["missing"] == ["fake", "cnv"] and s["contributions"] == {}
    assert "No modality could be used" in (res.folder / s["page"]).read_text(encoding="utf-8")
