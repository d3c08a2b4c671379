"""`lungfuse ablate`: subsets × heads on identical splits, features prepared once per
modality and fold (shared across variants and across a resume), resume after a kill,
the table/markdown/figure/report, and refusal to resume another config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import pytest

from lungfuse.core.contracts import ModalityConfig, ModalityPlugin
from lungfuse.core.errors import ConfigError
from lungfuse.schemas import InputPath

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


class CountConfig(ModalityConfig):
    kind: Literal["countfake"] = "countfake"
    path: InputPath
    embedding_dim: int = 4


class CountingModality(ModalityPlugin):
    """A wide-Parquet modality that counts its ``prepare`` calls per modality name."""

    name = "countfake"
    config_model = CountConfig
    prepares: ClassVar[list[str]] = []

    def __init__(self, config: CountConfig) -> None:
        super().__init__(config)
        self.mean_: list[float] = []

    def _read(self) -> pd.DataFrame:
        return pd.read_parquet(self.config.path)

    def available(self, cohort, ctx):
        return set(self._read().index) & set(cohort.index)

    def prepare(self, train, ctx):
        CountingModality.prepares.append(self.modality_name)
        df = self._read()
        self.mean_ = df[df.index.isin(train.index)].mean().tolist()

    def transform(self, patients, ctx):
        df = self._read()
        out = (df[df.index.isin(patients.index)] - self.mean_).astype("float32")
        out.index.name = "patient_id"
        return out

    def build_encoder(self, n_features):
        import torch.nn as nn

        enc = nn.Sequential(nn.Linear(n_features, 8), nn.ReLU(), nn.Linear(8, 4))
        enc.embedding_dim = 4
        return enc

    def state_dict(self):
        return {"mean": self.mean_}

    def load_state_dict(self, state):
        self.mean_ = list(state["mean"])


def make_data(root: Path, n: int = 40) -> dict:
    rng = np.random.default_rng(1)
    ids = [f"P{i:03d}" for i in range(n)]
    y = np.tile([0, 1], n // 2)
    pd.DataFrame({"patient_id": ids, "malignant": y}).to_parquet(root / "clinical.parquet")
    for name, signal, cover in (("a", 2.5, 0.9), ("b", 0.3, 0.7)):
        x = rng.normal(size=(n, 3))
        x[:, 0] += signal * y
        f = pd.DataFrame(x, index=pd.Index(ids, name="patient_id"), columns=["u", "v", "w"])
        f[rng.random(n) < cover].to_parquet(root / f"{name}.parquet")
    return {
        "name": "abl", "seed": 0,
        "cohort": {"clinical": str(root / "clinical.parquet")},
        "modalities": [{"kind": "countfake", "name": "a", "path": str(root / "a.parquet")},
                       {"kind": "countfake", "name": "b", "path": str(root / "b.parquet")}],
        "fusion": {"kind": "gated", "hidden_dim": 8},
        "training": {"max_epochs": 3, "batch_size": 16, "patience": 2,
                     "selection": "holdout"},  # as the ablation folders of older versions
        "evaluation": {"folds": 2, "bootstrap": 40},
        "output_dir": str(root / "runs"),
    }


class Killed(RuntimeError):
    pass


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """An ablation killed after 5 of its 12 fold trainings, then resumed to the end."""
    import lungfuse.core.folds as folds
    from lungfuse.core.ablation import run_ablation

    root = tmp_path_factory.mktemp("ablate")
    cfg = make_data(root)
    folder = root / "abl-dir"
    CountingModality.prepares.clear()
    real = folds.train_fold
    calls = {"n": 0}

    def dying(*a, **k):
        if calls["n"] == 5:
            raise Killed("simulated kill")
        calls["n"] += 1
        return real(*a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(folds, "train_fold", dying)
    with pytest.raises(Killed):
        run_ablation(cfg, heads=["gated", "concat"], ablation_dir=folder,
                     plugins=[CountingModality], progress=False)
    mp.undo()
    killed_state = json.loads((folder / "ablation.json").read_text(encoding="utf-8"))
    first_parts = {p: p.stat().st_mtime_ns for p in folder.glob("variants/*/seed*-fold*.parquet")}
    prepares_first = list(CountingModality.prepares)
    res = run_ablation(cfg, heads=["gated", "concat"], ablation_dir=folder,
                       plugins=[CountingModality], progress=False)
    return {"cfg": cfg, "folder": folder, "res": res, "first_parts": first_parts,
            "killed_state": killed_state,
            "prepares_first": prepares_first, "prepares": list(CountingModality.prepares)}


def test_features_prepared_once_per_modality_and_fold(ablation):
    # 3 subsets x 2 heads x 2 folds = 12 fold trainings, but each modality is fitted once
    # per fold (2 x 2), all in the first (killed) call; the resume reads the cache.
    assert sorted(ablation["prepares"]) == ["a", "a", "b", "b"]
    assert ablation["prepares"] == ablation["prepares_first"]


def test_killed_ablation_resumes_where_it_stopped(ablation):
    res = ablation["res"]
    assert len(ablation["first_parts"]) == 5
    assert (res.trained, res.skipped) == (7, 5)
    for p, mtime in ablation["first_parts"].items():
        assert p.stat().st_mtime_ns == mtime, f"{p} was recomputed on resume"
    state = json.loads((ablation["folder"] / "ablation.json").read_text(encoding="utf-8"))
    assert state["status"] == "complete"


def test_failed_ablation_says_so_until_resumed(ablation):
    killed = ablation["killed_state"]
    assert killed["status"] == "failed"
    assert killed["reason"] == "Killed: simulated kill"
    done = json.loads((ablation["folder"] / "ablation.json").read_text(encoding="utf-8"))
    assert done["status"] == "complete" and "reason" not in done


def test_interrupted_ablation_records_interrupted(tmp_path, monkeypatch):
    import lungfuse.core.folds as folds
    from lungfuse.core.ablation import run_ablation

    cfg = make_data(tmp_path)

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(folds, "train_fold", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(cfg, ablation_dir=tmp_path / "abl", plugins=[CountingModality],
                     progress=False, report=False)
    state = json.loads((tmp_path / "abl" / "ablation.json").read_text(encoding="utf-8"))
    assert state["status"] == "interrupted" and "Ctrl-C" in state["reason"]


def test_variants_share_identical_held_out_patients(ablation):
    folder = ablation["folder"]
    sets = []
    for d in sorted((folder / "variants").iterdir()):
        p = pd.read_parquet(d / "predictions.parquet")
        sets.append(sorted(zip(p["patient_id"], p["fold"], strict=True)))
    assert len(sets) == 6
    assert all(s == sets[0] for s in sets)
    assert len(sets[0]) == 40


def test_table_markdown_figure_and_comparisons(ablation):
    folder, res = ablation["folder"], ablation["res"]
    t = pd.read_parquet(folder / "ablation.parquet")
    assert len(t) == 6
    assert set(t["head"]) == {"gated", "concat"}
    assert set(t["modalities"]) == {"a", "b", "a+b"}
    ok = t["auroc_ci_low"].notna()
    assert ok.all()
    assert (t["auroc_ci_low"] <= t["auroc"] + 1e-9).all()
    assert (t["auroc"] <= t["auroc_ci_high"] + 1e-9).all()
    # reference: the best single-modality variant; its delta is zero by definition
    singles = t[t["n_modalities"] == 1]
    assert res.reference == singles.sort_values("auroc").iloc[-1]["variant"]
    ref_row = t[t["variant"] == res.reference].iloc[0]
    assert ref_row["auroc_delta_vs_ref"] == 0.0
    others = t[t["variant"] != res.reference]
    assert others["auroc_delta_ci_low"].notna().all()
    assert np.allclose(others["auroc_delta_vs_ref"],
                       others["auroc"] - ref_row["auroc"], atol=1e-9)
    # modality a carries the signal: the best single modality is an "a" variant
    assert res.reference.startswith("a |")
    md = (folder / "ablation.md").read_text(encoding="utf-8")
    assert md.count("\n| ") >= 7 and "reference" in md and "[" in md
    assert (folder / "ablation.png").stat().st_size > 1000


def test_ablation_report_renders_in_chromium(ablation):
    from browser import chromium, render_counts

    html = ablation["folder"] / "report.html"
    text = html.read_text(encoding="utf-8")
    assert "Paired comparison" in text and "Configuration" in text and "Splits" in text
    assert "http://" not in text and "https://" not in text
    if chromium() is None:
        pytest.skip("no Chromium installed (Debian package `chromium`)")
    images, loaded = render_counts(html)
    assert images >= 2 and loaded == images


def test_resume_with_other_settings_is_refused(ablation):
    from lungfuse.core.ablation import run_ablation

    with pytest.raises(ConfigError, match="another config"):
        run_ablation(ablation["cfg"], heads=["gated"], ablation_dir=ablation["folder"],
                     plugins=[CountingModality], progress=False)


def test_unknown_modality_is_a_config_error(ablation):
    from lungfuse.core.ablation import run_ablation

    with pytest.raises(ConfigError, match="not in the config"):
        run_ablation(ablation["cfg"], modalities=["a", "zz"], plugins=[CountingModality],
                     progress=False)


def test_variants_of_lists_every_non_empty_subset():
    from lungfuse.core.ablation import variants_of

    v = variants_of(["x", "y", "z"], ["h1", "h2"])
    assert len(v) == 14
    assert {x.modalities for x in v} == {("x",), ("y",), ("z",), ("x", "y"), ("x", "z"),
                                         ("y", "z"), ("x", "y", "z")}
