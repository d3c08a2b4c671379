"""One study set-up and one prediction path: ``run``, ``ablate`` and ``score`` build the
same :class:`~lungfuse.core.study.Study` (config, plugins, splits, folds) and get their
predictions from the same :meth:`~lungfuse.core.folds.TrainedFold.predict_table`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_pipeline import FakeModality, config, make_data, run

from lungfuse.core.study import Study

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _spy_on_study(mp: pytest.MonkeyPatch, built: list[tuple[str, Study]]) -> None:
    """Record every Study the commands build, and how (from a config or a run folder)."""
    from_config, from_run = Study.from_config.__func__, Study.from_run_folder.__func__

    def spy_config(cls: type[Study], *a: Any, **k: Any) -> Study:
        built.append(("config", from_config(cls, *a, **k)))
        return built[-1][1]

    def spy_run(cls: type[Study], *a: Any, **k: Any) -> Study:
        built.append(("run folder", from_run(cls, *a, **k)))
        return built[-1][1]

    mp.setattr(Study, "from_config", classmethod(spy_config))
    mp.setattr(Study, "from_run_folder", classmethod(spy_run))


def _held_out(run_dir: Path, seed: int, fold: int) -> pd.DataFrame:
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    return pred[(pred.seed == seed) & (pred.fold == fold)].reset_index(drop=True)


def _score_held_out(run_dir: Path, ids: list[str], out: Path) -> pd.DataFrame:
    """``lungfuse score`` of ``ids`` (their data from the run's configured sources): the
    rows of every fold model, as in scores_by_model.parquet."""
    from lungfuse.core.scoring import score_patients

    res = score_patients(run_dir, {"patients": [{"id": i} for i in ids]}, out,
                         plugins=[FakeModality], progress=False, report=False)
    return pd.read_parquet(res.folder / "scores_by_model.parquet")


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> dict[str, Any]:
    """One config run, ablated (its modalities, configured head) and its held-out patients
    of fold seed0-fold1 scored, with every Study each command built."""
    from lungfuse.core.ablation import run_ablation

    root = tmp_path_factory.mktemp("study")
    make_data(root)
    cfg = config(root, "binary", "gated")
    built: list[tuple[str, Study]] = []
    mp = pytest.MonkeyPatch()
    _spy_on_study(mp, built)
    try:
        res = run(cfg)
        by = {"run": list(built)}
        abl = run_ablation(cfg, plugins=[FakeModality], progress=False, report=False)
        by["ablate"] = built[len(by["run"]):]
        ids = list(_held_out(res.run_dir, 0, 1)["patient_id"])
        scored = _score_held_out(res.run_dir, ids, root / "scores")
        by["score"] = built[len(by["run"]) + len(by["ablate"]):]
    finally:
        mp.undo()
    return {"cfg": cfg, "run": res, "ablation": abl.folder, "scored": scored, "built": by}


def test_run_ablate_and_score_each_build_one_study(commands) -> None:
    kinds = {cmd: [k for k, _ in studies] for cmd, studies in commands["built"].items()}
    assert kinds == {"run": ["config"], "ablate": ["config"], "score": ["run folder"]}


def test_the_three_studies_agree_on_splits_folds_and_config(commands) -> None:
    from lungfuse.core.config import config_to_dict

    (_, ran), = commands["built"]["run"]
    (_, ablated), = commands["built"]["ablate"]
    (_, scored), = commands["built"]["score"]
    run_dir, folder = commands["run"].run_dir, commands["ablation"]
    assert ran.folds == ablated.folds == scored.folds == [(0, 0), (0, 1)]
    pd.testing.assert_frame_equal(ran.splits, ablated.splits)
    # what each command wrote is the split table of its study, and score reads it back
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "splits.parquet"), ran.splits)
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "splits.parquet"), ran.splits)
    pd.testing.assert_frame_equal(scored.splits, ran.splits)
    assert scored.fold_ids(0, 1) == ran.fold_ids(0, 1)
    assert list(scored.modalities) == list(ran.modalities) == ["fake", "cnv"]
    assert scored.cohort is None and scored.run_dir == run_dir
    assert config_to_dict(scored.cfg) == config_to_dict(ran.cfg)


def test_ablation_full_variant_predicts_what_the_run_predicted(commands) -> None:
    """The variant with every modality and the configured head is the run itself: same
    study, same fold training, same prediction table."""
    full = pd.read_parquet(commands["ablation"] / "variants" / "fake+cnv__gated" /
                           "predictions.parquet")
    ran = commands["run"].predictions
    assert set(full["variant"]) == {"fake+cnv | gated"}
    same = [c for c in ran.columns if not c.startswith("present_")]
    pd.testing.assert_frame_equal(full[same].reset_index(drop=True),
                                  ran[same].reset_index(drop=True), check_exact=False,
                                  rtol=1e-5, atol=1e-6)


def test_scoring_held_out_patients_reproduces_the_run_predictions(commands) -> None:
    """Each held-out patient of fold seed0-fold1, scored by that fold's model, gets the
    very row the run wrote for them in predictions.parquet."""
    want = _held_out(commands["run"].run_dir, 0, 1)
    s = commands["scored"]
    got = s[(s.seed == 0) & (s.fold == 1)].reset_index(drop=True)
    assert list(got["patient_id"]) == list(want["patient_id"])
    assert list(got["pattern"]) == list(want["pattern"])
    for m in ("fake", "cnv"):
        assert (got[f"present_{m}"].to_numpy() == want[f"present_{m}"].to_numpy()).all()
        np.testing.assert_allclose(got[f"weight_{m}"], want[f"weight_{m}"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["raw"], want["logit"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["risk"], want["prob_calibrated"], rtol=0, atol=1e-6)


def test_scoring_survival_run_reproduces_risk_and_survival_curve(tmp_path) -> None:
    """Survival: the log-risk and S(t | x) at the run's time grid (the fold's Breslow
    baseline) are the run's, for the held-out patients of a fold."""
    make_data(tmp_path)
    res = run(config(tmp_path, "survival", "concat", training={"batch_size": 32}))
    want = _held_out(res.run_dir, 0, 0)
    s = _score_held_out(res.run_dir, list(want["patient_id"]), tmp_path / "scores")
    got = s[(s.seed == 0) & (s.fold == 0)].reset_index(drop=True)
    surv = [c for c in want.columns if c.startswith("surv_")]
    assert len(surv) == len(res.metrics["time_grid"]) > 2
    assert list(got["patient_id"]) == list(want["patient_id"])
    np.testing.assert_allclose(got["risk"], want["risk"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[surv].to_numpy(), want[surv].to_numpy(), rtol=0, atol=1e-6)


def test_study_from_config_overrides_folds_without_touching_the_config(tmp_path) -> None:
    """``ablate --folds`` changes the study's splits, not the caller's config object."""
    from lungfuse.core.study import load_experiment

    make_data(tmp_path)
    cfg, _ = load_experiment(config(tmp_path), plugins=[FakeModality])
    three = Study.from_config(cfg, plugins=[FakeModality], folds=3)
    assert cfg.evaluation.folds == 2 and three.cfg.evaluation.folds == 3
    assert three.folds == [(0, 0), (0, 1), (0, 2)]
    tested = [set(three.fold_ids(0, k)["test"]) for k in range(3)]
    assert set.union(*tested) == set(three.cohort.ids) and sum(map(len, tested)) == 40
