"""``lungfuse demo`` end to end in miniature: every step runs and leaves what it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from lungfuse.demo import DemoSettings, run_demo

    out = tmp_path_factory.mktemp("demo") / "out"
    s = DemoSettings(patients=32, pretrain_scans=4, unlabelled_scans=2, folds=2,
                     heads=("gated",), seg_epochs=1, seg_channel=8, img_size=64, max_epochs=3,
                     patience=2, bootstrap=20, preset="tiny")
    lines: list[str] = []
    res = run_demo(out, s, echo=lines.append, progress=False)
    return res, lines


def test_every_step_is_timed_and_reported(demo) -> None:
    res, lines = demo
    steps = ["synthesise the demo cohort", "train the Inf-Net segmenter",
             "extract CT features (per fold, cached)", "train the fused model (lungfuse run)",
             "ablation (modality subsets x heads)", "score two new patients (lungfuse score)",
             "survival example (risk by year)", "write the reports"]
    assert list(res.timings) == steps + ["total"]
    saved = json.loads((res.out / "demo.json").read_text(encoding="utf-8"))
    assert saved["timings_s"] == res.timings
    assert any(line.startswith("lungfuse demo: done in") for line in lines)
    for key in ("run_report", "ablation_report", "scores_report", "figure"):
        assert Path(res.paths[key]).is_file(), key


def test_segmenter_never_saw_the_fused_cohort_or_new_patients(demo) -> None:
    import torch

    res, _ = demo
    ck = torch.load(res.paths["segmenter"], map_location="cpu", weights_only=True)
    cohort = set(pd.read_parquet(res.out / "data" / "cohort.parquet")["patient_id"])
    clinical = pd.read_parquet(res.out / "data" / "clinical.parquet").set_index("patient_id")
    seen = set(ck["training_patients"])
    uids = {str(u) for u in clinical.loc[sorted(cohort | set(res.summary["new_patients"])),
                                         "seriesuid"].dropna()}
    assert seen and not (seen & (cohort | uids | set(res.summary["new_patients"])))
    assert res.summary["segmenter"]["semi_supervised"] is True


def test_new_patients_scored_with_what_they_have(demo) -> None:
    res, _ = demo
    scores = {s["patient_id"]: s for s in res.summary["scores"]}
    assert list(scores) == res.summary["new_patients"]
    assert all(0.0 <= s["risk"] <= 1.0 for s in scores.values())
    for pid, s in scores.items():
        page = (res.out / "scores" / "patients" / f"{pid}.html").read_text(encoding="utf-8")
        assert ("Missing for this patient" in page) == bool(s["missing"])
        assert "ct" not in s["missing"]  # both new patients have a CT scan
    abl = pd.read_parquet(Path(res.paths["ablation"]) / "ablation.parquet")
    # every non-empty subset of {ct, mutations, expression, clinical} x 1 head, and the
    # logreg baseline on all four
    assert len(abl) == 16
    assert abl.loc[abl["baseline"], "variant"].tolist() == \
        ["ct+mutations+expression+clinical | logreg (baseline)"]
    assert "clinical" in set(abl["modalities"])


def test_the_run_has_its_baseline_beside_it(demo) -> None:
    res, lines = demo
    assert set(res.summary["baselines"]) == {"logreg"}
    assert any(line.startswith("  baseline logreg (same folds and features)") for line in lines)
    report = (Path(res.paths["run"]) / "report.html").read_text(encoding="utf-8")
    assert "Model beside classical baselines" in report


def test_survival_example_pages_show_risk_by_year(demo) -> None:
    res, _ = demo
    assert Path(res.paths["survival_report"]).is_file()
    assert "Risk by year" in Path(res.paths["survival_report"]).read_text(encoding="utf-8")
    scored = res.summary["survival_scores"]
    assert [s["patient_id"] for s in scored] == res.summary["new_patients"]
    for page in res.paths["survival_pages"].split(", "):
        assert "Risk by year" in Path(page).read_text(encoding="utf-8")
    for s in scored:
        assert [h["horizon"] for h in s["risk_by_year"]] == [f"{y}y" for y in range(1, 7)]
        ok = [h for h in s["risk_by_year"] if h["mean"] is not None]
        assert ok and all(h["min"] <= h["mean"] <= h["max"] for h in ok)
        means = [h["mean"] for h in ok]
        assert means == sorted(means)  # a risk by a later year is never smaller


def test_rerun_replaces_only_its_own_output(demo, tmp_path) -> None:
    from lungfuse.core.errors import DataError
    from lungfuse.demo import run_demo

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("do not delete")
    with pytest.raises(DataError, match="holds no earlier demo"):
        run_demo(mine, echo=lambda _: None, progress=False)
    assert (mine / "thesis.tex").read_text(encoding="utf-8") == "do not delete"
