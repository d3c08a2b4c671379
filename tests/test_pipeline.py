"""The training/evaluation pipeline: cohort checks, splits, metrics, calibration, runs
end to end (binary and survival, injected and installed plugins), reproducibility,
the feature cache, scoring from a run folder, and DDP on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytest

from lungfuse.core.contracts import ModalityConfig, ModalityPlugin
from lungfuse.core.errors import ConfigError, DataError
from lungfuse.schemas import InputPath

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


# ------------------------------------------------------------------ a small fake modality
class FakeConfig(ModalityConfig):
    kind: Literal["fake"] = "fake"
    path: InputPath
    embedding_dim: int = 4


class FakeModality(ModalityPlugin):
    """Reads a wide Parquet (index patient_id); centres on the training mean."""

    name = "fake"
    config_model = FakeConfig

    def __init__(self, config: FakeConfig) -> None:
        super().__init__(config)
        self.mean_: list[float] | None = None

    def _read(self) -> pd.DataFrame:
        return pd.read_parquet(self.config.path)

    def available(self, cohort, ctx):
        return set(self._read().index) & set(cohort.index)

    def prepare(self, train, ctx):
        assert "malignant" in train.columns or "time" in train.columns
        df = self._read()
        self.mean_ = df[df.index.isin(train.index)].mean().tolist()

    def transform(self, patients, ctx):
        assert "malignant" not in patients.columns, "transform must not see outcomes"
        df = self._read()
        out = (df[df.index.isin(patients.index)] - self.mean_).astype("float32")
        out.index.name = "patient_id"
        return out

    def build_encoder(self, n_features):
        import torch.nn as nn

        d = self.config.embedding_dim
        enc = nn.Sequential(nn.Linear(n_features, 8), nn.ReLU(), nn.Linear(8, d))
        enc.embedding_dim = d
        return enc

    def state_dict(self):
        return {"mean": self.mean_}

    def load_state_dict(self, state):
        self.mean_ = list(state["mean"])


def make_data(root: Path, n: int = 40, seed: int = 0, cover: float = 0.75) -> list[str]:
    """clinical.parquet + fake.parquet (signal on the outcome) + cnv.parquet (example)."""
    from lungfuse_cnv import CopyNumberModality

    rng = np.random.default_rng(seed)
    ids = [f"TCGA-FK-{i:04d}" for i in range(n)]
    y = np.tile([0, 1], n // 2)
    time = np.ceil(rng.exponential(20, n) * np.where(y == 1, 0.5, 1.5))
    event = (rng.random(n) < 0.7).astype(int)
    event[:2] = 1
    pd.DataFrame({"patient_id": ids, "malignant": y, "time": time, "event": event,
                  "age": rng.normal(60, 5, n)}).to_parquet(root / "clinical.parquet")
    x = rng.normal(size=(n, 3))
    x[:, 0] += 2.0 * y
    f = pd.DataFrame(x, index=pd.Index(ids, name="patient_id"), columns=["a", "b", "c"])
    f[rng.random(n) < cover].to_parquet(root / "fake.parquet")
    CopyNumberModality.example(root, ids)
    return ids


def config(root: Path, task: str = "binary", fusion: str = "gated", **over) -> dict:
    cfg = {
        "name": "t", "seed": 0,
        "cohort": {"clinical": str(root / "clinical.parquet")},
        "task": {"kind": task},
        "modalities": [{"kind": "fake", "path": str(root / "fake.parquet")},
                       {"kind": "cnv", "path": str(root / "cnv.parquet"), "top_n": 6,
                        "embedding_dim": 4, "hidden_dim": 8}],
        "fusion": {"kind": fusion, "hidden_dim": 8},
        # holdout: these tests check its artefacts (validation split, best.ckpt,
        # calibration on the validation patients); inner_cv has its own tests
        "training": {"max_epochs": 3, "batch_size": 16, "patience": 2, "selection": "holdout"},
        "evaluation": {"folds": 2, "bootstrap": 30},
        "output_dir": str(root / "runs"),
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


def run(cfg: dict, **kw):
    from lungfuse.core.run import run_experiment

    return run_experiment(cfg, plugins=[FakeModality], progress=False, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipe")
    make_data(root)
    return root


@pytest.fixture(scope="module")
def binary_run(data):
    return run(config(data, "binary", "gated"))


# ------------------------------------------------------------------ bad input, one line each
def _cohort(df: pd.DataFrame, task: str = "binary"):
    from lungfuse.core.cohort import validate_cohort
    from lungfuse.schemas import TaskConfig

    return validate_cohort(df, "patient_id", TaskConfig(kind=task), source="clin.parquet")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("clin.parquet") or "modality" in msg
    return msg


def _clin(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)],
                         "malignant": [0, 1] * (n // 2),
                         "time": np.arange(1.0, n + 1), "event": [1, 0] * (n // 2)})


def test_outcome_column_missing() -> None:
    with pytest.raises(DataError) as exc:
        _cohort(_clin().drop(columns="malignant"))
    assert "'malignant'" in _one_line(exc) and "task.outcome" in str(exc.value)


def test_outcome_all_one_class() -> None:
    df = _clin().assign(malignant=1)
    with pytest.raises(DataError, match="both classes") as exc:
        _cohort(df)
    _one_line(exc)


def test_duplicate_patient_id() -> None:
    df = _clin()
    df.loc[3, "patient_id"] = "P1"
    with pytest.raises(DataError, match="'P1' appears more than once") as exc:
        _cohort(df)
    _one_line(exc)


@pytest.mark.parametrize("bad", [0.0, -2.0])
def test_survival_time_not_positive(bad: float) -> None:
    df = _clin()
    df.loc[2, "time"] = bad
    with pytest.raises(DataError, match="must be > 0, patient 'P2'") as exc:
        _cohort(df, "survival")
    _one_line(exc)


def test_folds_more_than_patients_in_a_class() -> None:
    from lungfuse.core.splits import make_splits

    with pytest.raises(DataError, match="5 folds but class 1 has only 3") as exc:
        make_splits([f"P{i}" for i in range(10)], np.array([0] * 7 + [1] * 3), folds=5,
                    source="clin.parquet")
    _one_line(exc)


def test_modality_covering_no_patient(data, tmp_path) -> None:
    other = pd.DataFrame({"a": [1.0, 2.0]}, index=pd.Index(["X1", "X2"], name="patient_id"))
    other.to_parquet(tmp_path / "other.parquet")
    cfg = config(data)
    cfg["modalities"] = [{"kind": "fake", "path": str(tmp_path / "other.parquet")}]
    cfg["output_dir"] = str(tmp_path / "runs")
    with pytest.raises(DataError, match="modality 'fake' .* covers none of the 40 patients") as e:
        run(cfg)
    assert "\n" not in str(e.value)


def test_cli_reports_bad_input_in_one_line(data, tmp_path) -> None:
    import yaml

    clin = pd.read_parquet(data / "clinical.parquet").assign(malignant=0)
    clin.to_parquet(tmp_path / "clinical.parquet")
    cfg = config(data)
    cfg["cohort"]["clinical"] = str(tmp_path / "clinical.parquet")
    cfg["modalities"] = cfg["modalities"][1:]  # the installed cnv plugin only
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "lungfuse.core.cli", "run", str(tmp_path / "c.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "both classes" in lines[0]


# ------------------------------------------------------------------ splits
def test_splits_stratified_disjoint_seeded() -> None:
    from lungfuse.core.splits import make_splits

    ids = [f"P{i:03d}" for i in range(60)]
    y = np.array([0] * 40 + [1] * 20)
    a = make_splits(ids, y, folds=4, val_fraction=0.25, seeds=[0, 1])
    assert a.equals(make_splits(ids, y, folds=4, val_fraction=0.25, seeds=[0, 1]))
    for (_s, _k), g in a.groupby(["seed", "fold"]):
        assert g["patient_id"].is_unique and len(g) == 60  # each patient once per fold
        test = g[g["split"] == "test"]["patient_id"]
        pos = sum(y[int(p[1:])] for p in test)
        assert pos == 5 and len(test) == 15  # stratified: 20 positives / 4 folds
    tests0 = a[(a.seed == 0) & (a.split == "test")]["patient_id"]
    assert tests0.is_unique and len(tests0) == 60  # every patient tested exactly once
    t0 = set(a[(a.seed == 0) & (a.fold == 0) & (a.split == "test")]["patient_id"])
    t1 = set(a[(a.seed == 1) & (a.fold == 0) & (a.split == "test")]["patient_id"])
    assert t0 != t1
    fixed = make_splits(ids, y, test_fraction=0.25, val_fraction=0.2)
    assert set(fixed["fold"]) == {0} and (fixed["split"] == "test").sum() == 15


# ------------------------------------------------------------------ metrics and calibration
def test_binary_metrics_agree_with_sklearn_and_bootstrap_is_seeded() -> None:
    from sklearn.metrics import roc_auc_score

    from lungfuse.core.metrics import binary_metrics, bootstrap, expected_calibration_error

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.5 * y + rng.uniform(0, 0.5, 300), 0, 1)
    m = binary_metrics(y, p, specificity=0.9)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert 0 <= m["sensitivity_at_specificity"] <= 1
    perfect = rng.uniform(0, 1, 20000)
    assert expected_calibration_error(rng.random(20000) < perfect, perfect) < 0.02
    assert expected_calibration_error(np.ones(4), np.zeros(4)) == pytest.approx(1.0)

    def fn(a, b):
        return binary_metrics(a, b)

    b1 = bootstrap(fn, [y, p], n=100, seed=3, strata=y)
    assert b1 == bootstrap(fn, [y, p], n=100, seed=3, strata=y)
    assert b1["auroc"]["ci_low"] <= b1["auroc"]["value"] <= b1["auroc"]["ci_high"]
    assert b1 != bootstrap(fn, [y, p], n=100, seed=4, strata=y)


def test_paired_bootstrap_difference_sign() -> None:
    from sklearn.metrics import roc_auc_score

    from lungfuse.core.metrics import paired_bootstrap_difference

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    good = y + rng.normal(0, 0.7, 400)
    bad = y + rng.normal(0, 3.0, 400)
    d = paired_bootstrap_difference(roc_auc_score, y, good, bad, n=200, seed=0)
    assert d["difference"] > 0 and d["ci_low"] > 0 and d["p_not_better"] < 0.05


def test_survival_metrics_rank_correctly() -> None:
    from lungfuse.core.metrics import survival_metrics, survival_time_grid

    rng = np.random.default_rng(0)
    risk = rng.normal(size=200)
    time = rng.exponential(np.exp(-risk)) * 10 + 0.01
    event = rng.random(200) < 0.8
    grid = survival_time_grid(time, event)
    surv = np.exp(-np.outer(np.exp(risk), grid) / 10)
    good = survival_metrics(time, event, risk, surv, grid)
    bad = survival_metrics(time, event, -risk, surv[::-1], grid)
    for k in ("harrell_c", "uno_c", "mean_td_auc"):
        assert good[k] > 0.65 and bad[k] < 0.35, k
    assert good["integrated_brier"] < bad["integrated_brier"]


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_calibration_recovers_a_miscalibrated_logit(method: str) -> None:
    from lungfuse.core.calibration import apply_calibration, fit_calibration, sigmoid

    rng = np.random.default_rng(0)
    z_true = rng.normal(0, 1.5, 4000)
    y = (rng.random(4000) < sigmoid(z_true)).astype(int)
    z = 3.0 * z_true  # overconfident by a factor 3
    params = fit_calibration(method, z, y)
    key = "a" if method == "platt" else "temperature"
    assert params[key] == pytest.approx(1 / 3 if method == "platt" else 3.0, rel=0.15)
    assert np.abs(apply_calibration(params, z) - sigmoid(z_true)).mean() < 0.03
    assert fit_calibration(method, z[:5], np.ones(5))["method"] == "none"


# ------------------------------------------------------------------ end to end
def test_binary_run_writes_the_run_folder(binary_run, data) -> None:
    res = binary_run
    d = res.run_dir
    assert d.parent == data / "runs" and d.name.startswith("t-")
    assert json.loads((d / "run.json").read_text(encoding="utf-8"))["status"] == "complete"
    for f in ("config.yaml", "splits.parquet", "predictions.parquet", "metrics.json", "run.log"):
        assert (d / f).is_file(), f
    for k in (0, 1):
        fd = d / "models" / f"seed0-fold{k}"
        for f in ("model.pt", "meta.json", "modality_state.json", "checkpoints/best.ckpt",
                  "logs/metrics.csv"):
            assert (fd / f).is_file(), f
        for m in ("fake", "cnv"):
            assert (d / "features" / m / f"seed0-fold{k}.parquet").is_file()
    assert not list(d.rglob("*.tmp")), "no temporary files left behind"

    splits = pd.read_parquet(d / "splits.parquet")
    pred = pd.read_parquet(d / "predictions.parquet")
    assert pred["patient_id"].is_unique and len(pred) == 40  # each patient held out once
    for k, g in pred.groupby("fold"):
        tr = splits[(splits.fold == k) & (splits.split != "test")]["patient_id"]
        assert not set(g["patient_id"]) & set(tr), "a test patient was in training"
    assert {"prob", "prob_calibrated", "logit", "pattern", "present_fake", "present_cnv",
            "weight_fake", "weight_cnv", "y"} <= set(pred.columns)
    both = pred["present_fake"] & pred["present_cnv"]
    assert set(pred.loc[both, "pattern"]) == {"fake+cnv"}
    w = pred[["weight_fake", "weight_cnv"]].to_numpy()
    assert np.allclose(w[both].sum(1), 1) and (w[~pred["present_cnv"], 1] == 0).all()

    m = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
    assert m == json.loads(json.dumps(res.metrics, default=float))
    o = m["overall"]["auroc"]
    assert 0 <= o["value"] <= 1 and o["ci_low"] <= o["value"] <= o["ci_high"]
    assert set(m["by_pattern"]) == set(pred["pattern"])
    assert sum(v["n"] for v in m["by_pattern"].values()) == 40
    assert set(m["per_seed"]["0"]["per_fold"]) == {"0", "1"}


def test_calibration_is_fitted_on_validation_patients_only(data, monkeypatch) -> None:
    import lungfuse.core.calibration as cal

    seen = []
    real = cal.fit_calibration

    def spy(method, logits, y):
        seen.append(len(y))
        return real(method, logits, y)

    monkeypatch.setattr(cal, "fit_calibration", spy)
    res = run(config(data, training={"max_epochs": 1}, evaluation={"calibration": "temperature"}))
    splits = pd.read_parquet(res.run_dir / "splits.parquet")
    n_val = [int(((splits.fold == k) & (splits.split == "val")).sum()) for k in (0, 1)]
    assert seen == n_val
    meta = json.loads((res.run_dir / "models/seed0-fold0/meta.json").read_text(encoding="utf-8"))
    assert meta["calibration"]["method"] == "temperature"


def test_same_config_same_results_and_feature_cache(data, tmp_path, binary_run) -> None:
    cache = tmp_path / "cache"
    again = run(config(data, "binary", "gated"), cache_dir=cache)
    assert again.run_dir != binary_run.run_dir, "a run never reuses a folder"
    a = binary_run.predictions.sort_values("patient_id").reset_index(drop=True)
    b = again.predictions.sort_values("patient_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert len(list(cache.glob("*/*/features.parquet"))) == 4  # 2 modalities x 2 folds

    from lungfuse.core import features

    calls = []
    orig = FakeModality.prepare
    FakeModality.prepare = lambda self, train, ctx: calls.append(1) or orig(self, train, ctx)
    try:
        third = run(config(data, "binary", "gated"), cache_dir=cache)
    finally:
        FakeModality.prepare = orig
    assert calls == [], "cached features must not be prepared again"
    pd.testing.assert_frame_equal(
        a, third.predictions.sort_values("patient_id").reset_index(drop=True))
    assert features.feature_cache_key({"k": 1}, 0, 0, ["a"]) != \
        features.feature_cache_key({"k": 1}, 0, 1, ["a"])


def test_scoring_from_run_folder_reproduces_predictions(binary_run) -> None:
    from lungfuse.core.cohort import load_cohort
    from lungfuse.core.contracts import ModalityContext
    from lungfuse.core.folds import load_fold_model
    from lungfuse.core.study import load_experiment

    d = binary_run.run_dir
    fold = load_fold_model(d, 0, 1, plugins=[FakeModality])
    cfg, _ = load_experiment(config(d.parent.parent), plugins=[FakeModality])
    cohort = load_cohort(cfg.cohort, cfg.task)
    pred = binary_run.predictions[binary_run.predictions.fold == 1]
    ids = list(pred["patient_id"])
    feats = fold.features(cohort.without_outcomes(ids), ModalityContext(workdir=d / "score"))
    got = fold.predict_table(fold.fold_data(feats, ids))
    assert np.allclose(got["prob_calibrated"].to_numpy(), pred["prob_calibrated"].to_numpy(),
                       atol=1e-5)
    assert list(got["pattern"]) == list(pred["pattern"])


@pytest.mark.parametrize("fusion", ["late", "transformer"])
def test_survival_run(data, fusion: str) -> None:
    res = run(config(data, "survival", fusion, training={"batch_size": 32}))
    pred = res.predictions
    assert {"risk", "time", "event"} <= set(pred.columns)
    surv = pred.filter(regex=r"^surv_\d+$").to_numpy()
    assert surv.shape[1] == len(res.metrics["time_grid"]) > 2
    assert (np.diff(surv, axis=1) <= 1e-12).all() and ((surv >= 0) & (surv <= 1)).all()
    o = res.metrics["overall"]
    assert {"harrell_c", "uno_c", "mean_td_auc", "integrated_brier"} <= set(o)
    assert 0 <= o["harrell_c"]["value"] <= 1
    meta = json.loads((res.run_dir / "models/seed0-fold0/meta.json").read_text(encoding="utf-8"))
    assert meta["breslow"]["baseline_survival"][0] <= 1


def test_trainer_settings_pass_through(data) -> None:
    with pytest.raises(ConfigError, match="trainer settings rejected by Lightning"):
        run(config(data, trainer={"strategy": "no-such-strategy"}))


def test_example_configs_validate() -> None:
    from lungfuse.core.config import load_config
    from lungfuse.schemas import EXAMPLES_DIR

    files = sorted(EXAMPLES_DIR.glob("*.yaml"))
    assert len(files) >= 2
    for f in files:
        cfg = load_config(f, check_paths=False)
        assert cfg.modalities and cfg.fusion.kind


def _artefacts(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()
            and "modalities" not in p.parts and p.name != "hparams.yaml"}


@pytest.mark.ddp
def test_ddp_on_cpu_two_processes(data, tmp_path) -> None:
    """`lungfuse run` with strategy ddp, 2 CPU processes (gloo): same artefacts as a
    single-process run of the same config."""
    import yaml

    cfg = config(data, trainer={"strategy": "ddp", "devices": 2, "accelerator": "cpu"})
    cfg["modalities"] = cfg["modalities"][1:]  # the installed cnv plugin (children re-import)
    cfg["output_dir"] = str(tmp_path / "runs")
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "LUNGFUSE_NO_PROGRESS": "1"}
    env.pop("LUNGFUSE_RUN_DIR", None)
    out = subprocess.run([sys.executable, "-m", "lungfuse.core.cli", "run",
                          str(tmp_path / "ddp.yaml")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, "all ranks must share one run folder"
    ddp = runs[0]
    assert json.loads((ddp / "run.json").read_text(encoding="utf-8"))["world_size"] == 2
    single = run({**cfg, "trainer": {"accelerator": "cpu"}, "output_dir": str(tmp_path / "one")})
    assert _artefacts(ddp) == _artefacts(single.run_dir)
    pred = pd.read_parquet(ddp / "predictions.parquet")
    assert pred["patient_id"].is_unique and len(pred) == 40
