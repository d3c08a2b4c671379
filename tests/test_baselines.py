"""Classical baselines (issue 13, items 2 and 4): fitted on the model's own folds and
train-fitted features, scored on the same held-out patients with the same metrics, in
metrics.json, the report and the ablation; unknown or unsuited names refused in one line
before any folder exists; a third-party baseline through the entry point; the survival
headline (c-index mean ± sd over folds, pooled beside it) checked against scikit-survival;
the bench's --quick mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from plugin_fixtures import make_dist
from test_pipeline import FakeModality, config, make_data, run

from lungfuse.core.baselines import BASELINE_GROUP
from lungfuse.core.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                                        "ignore::RuntimeWarning")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("baselines")
    make_data(root)
    return root


@pytest.fixture(scope="module")
def binary_run(data):
    return run(config(data, "binary", "gated", baselines=["logreg"],
                      evaluation={"seeds": [0, 1]}))


@pytest.fixture(scope="module")
def survival_run(data):
    return run(config(data, "survival", "late", baselines=["coxph", "coxnet"],
                      training={"batch_size": 32}, evaluation={"seeds": [0, 1]}))


def _triples(t: pd.DataFrame) -> dict[tuple[int, int], set[str]]:
    return {(int(s), int(f)): set(g["patient_id"].astype(str))
            for (s, f), g in t.groupby(["seed", "fold"])}


# ------------------------------------------------------------------ run: same folds, same metrics
def test_baselines_score_the_models_held_out_patients(binary_run) -> None:
    """Each (seed, fold): the baseline scored exactly the model's test patients, which are
    the split table's test patients, patients without a modality included."""
    rdir = binary_run.run_dir
    splits = pd.read_parquet(rdir / "splits.parquet")
    model = pd.read_parquet(rdir / "predictions.parquet")
    base = pd.read_parquet(rdir / "baselines" / "predictions.parquet")
    assert set(base["baseline"]) == {"logreg"}
    want = _triples(splits[splits["split"] == "test"])
    assert _triples(base) == _triples(model) == want
    fake = set(pd.read_parquet(binary_run.run_dir / "features" / "fake"
                               / "seed0-fold0.parquet").index.astype(str))
    held0 = want[(0, 0)]
    assert held0 - fake, "the fixture should hold test patients without the fake modality"
    assert ((base["score"] >= 0) & (base["score"] <= 1)).all()


def test_metrics_json_holds_the_baseline_beside_the_model(binary_run) -> None:
    from sklearn.metrics import roc_auc_score

    m = json.loads((binary_run.run_dir / "metrics.json").read_text(encoding="utf-8"))
    b = m["baselines"]["logreg"]
    assert b["status"] == "ok" and b["modalities"] == ["fake", "cnv"]
    assert set(b["metrics"]["overall"]) == set(m["overall"])  # the same metrics
    assert b["metrics"]["overall"]["auroc"]["ci_low"] <= b["metrics"]["overall"]["auroc"]["value"]
    base = pd.read_parquet(binary_run.run_dir / "baselines" / "predictions.parquet")
    model = pd.read_parquet(binary_run.run_dir / "predictions.parquet")
    b0 = base[base["seed"] == 0].sort_values("patient_id")
    m0 = model[model["seed"] == 0].sort_values("patient_id")
    auc_b = roc_auc_score(b0["y"], b0["score"])
    auc_m = roc_auc_score(m0["y"], m0["prob_calibrated"])
    assert b["metrics"]["overall"]["auroc"]["value"] == pytest.approx(auc_b)
    d = b["difference"]
    assert d["difference"] == pytest.approx(auc_m - auc_b)
    assert d["ci_low"] <= d["ci_high"] and d["n_boot"] > 0
    # the verdict says so exactly when the baseline's pooled AUROC is higher
    higher = auc_b > auc_m
    assert bool(m["baseline_verdict"]) == higher
    if higher:
        assert "logreg" in m["baseline_verdict"][0]


def test_report_shows_the_baselines(binary_run) -> None:
    text = (binary_run.run_dir / "report.html").read_text(encoding="utf-8")
    assert "Model beside classical baselines" in text and "logreg (baseline)" in text
    assert "training.selection: holdout" in text  # the Splits section says how it chose
    m = json.loads((binary_run.run_dir / "metrics.json").read_text(encoding="utf-8"))
    for sentence in m["baseline_verdict"]:
        assert sentence.split(":")[0] in text


def test_baselines_fit_on_every_non_test_patient_whatever_the_roles(data) -> None:
    """A split table without a `val` role (inner-CV training) or with one: the fit sees
    all of a fold's non-test patients and no test patient, and every test patient is
    scored."""
    from lungfuse.core.baselines import BaselinePlugin, ResolvedBaseline, run_baselines
    from lungfuse.core.cohort import load_cohort
    from lungfuse.schemas import CohortConfig, TaskConfig

    seen: list[tuple[set[str], set[str]]] = []

    class Spy(BaselinePlugin):
        name = "spy"
        tasks = ("binary",)

        def fit(self, X, target, *, seed):
            assert len(target.y) == len(X)
            train = set(X.index)

            class M:
                def predict(self, Xt):
                    seen.append((train, set(Xt.index)))
                    return np.full(len(Xt), 0.5)
            return M()

    cohort = load_cohort(CohortConfig(clinical=data / "clinical.parquet"), TaskConfig())
    ids = sorted(map(str, cohort.ids))
    rows = []
    for fold in (0, 1):
        for i, p in enumerate(ids):
            role = "test" if i % 2 == fold else ("val" if i % 5 == 0 and fold == 0 else "train")
            rows.append({"seed": 0, "fold": fold, "patient_id": p, "split": role})
    splits = pd.DataFrame(rows)
    feats = pd.DataFrame({"a": np.arange(len(ids), dtype=float)}, index=ids)
    b = ResolvedBaseline("spy", Spy(Spy.config_model(kind="spy")), ["m"])
    pred, failed = run_baselines([b], splits, [(0, 0), (0, 1)], cohort,
                                 lambda m, s, f: feats)
    assert not failed
    for fold, (train, test) in enumerate(seen):
        s = splits[splits["fold"] == fold]
        assert train == set(s.loc[s["split"] != "test", "patient_id"])
        assert test == set(s.loc[s["split"] == "test", "patient_id"]) and not train & test
    assert len(pred) == len(ids)


# ------------------------------------------------------------------ survival headline
def test_survival_fold_mean_sd_equals_scikit_survival(survival_run) -> None:
    """mean ± sd (ddof=1) over every (seed, fold) of Harrell's C, computed here with
    scikit-survival from the prediction tables, equals metrics.json's, for the model and
    each baseline; the pooled figure stands beside it."""
    from sksurv.metrics import concordance_index_censored

    rdir = survival_run.run_dir
    m = json.loads((rdir / "metrics.json").read_text(encoding="utf-8"))

    def per_fold(t: pd.DataFrame, col: str) -> list[float]:
        return [concordance_index_censored(g["event"].astype(bool).to_numpy(),
                                           g["time"].to_numpy(float), g[col].to_numpy())[0]
                for _, g in t.groupby(["seed", "fold"])]

    model = pd.read_parquet(rdir / "predictions.parquet")
    c = per_fold(model, "risk")
    assert len(c) == 4  # 2 seeds x 2 folds
    fs = m["fold_summary"]["harrell_c"]
    assert fs["folds"] == 4
    assert fs["mean"] == pytest.approx(np.mean(c)) and fs["sd"] == pytest.approx(np.std(c, ddof=1))
    base = pd.read_parquet(rdir / "baselines" / "predictions.parquet")
    for label in ("coxph", "coxnet"):
        cb = per_fold(base[base["baseline"] == label], "score")
        got = m["baselines"][label]["metrics"]["fold_summary"]["harrell_c"]
        assert got["mean"] == pytest.approx(np.mean(cb))
        assert got["sd"] == pytest.approx(np.std(cb, ddof=1))
        assert np.isnan(m["baselines"][label]["metrics"]["overall"]["integrated_brier"]["value"])
    from lungfuse.core.run import _headline

    line = _headline(m)
    assert line.startswith(f"harrell_c {np.mean(c):.3f} +/- {np.std(c, ddof=1):.3f} "
                           "(mean +/- sd over 4 folds), pooled "
                           f"{m['overall']['harrell_c']['value']:.3f}")
    line.encode("ascii")  # CI runs under an ASCII locale
    text = (rdir / "report.html").read_text(encoding="utf-8")
    assert "mean ± sd over 4 test folds" in text and "pooled" in text


# ------------------------------------------------------------------ bad input: one line, no folder
@pytest.mark.parametrize("entry, why", [
    ("nosuch", "no baseline named 'nosuch'"),
    ("coxnet", "baseline 'coxnet' supports survival tasks, not binary"),
    ({"kind": "logreg", "Cs": "many"}, "baselines[0].Cs"),
    ({"kind": "logreg", "modalities": ["ct"]}, "'ct' is not a modality"),
])
def test_bad_baseline_is_one_line_before_any_folder(data, tmp_path, entry, why) -> None:
    out = tmp_path / "runs"
    cfg = config(data, "binary", baselines=[entry], output_dir=str(out))
    with pytest.raises(ConfigError) as exc:
        run(cfg)
    msg = str(exc.value)
    assert "\n" not in msg and why in msg
    if entry in ("nosuch", "coxnet"):
        assert "available for a binary task: brock, logreg" in msg
    assert not out.exists() or not any(out.iterdir())


def _cli_with_baselines(data, tmp_path, command: str, baselines: list[str]):
    """``lungfuse <command>`` on a survival config of the installed cnv modality alone."""
    import yaml

    cfg = config(data, "survival", baselines=baselines, output_dir=str(tmp_path / "runs"))
    cfg["modalities"] = cfg["modalities"][1:]  # the installed cnv modality alone
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "lungfuse.core.cli", command, str(path)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["run", "validate"])
def test_cli_unknown_baseline_exits_2_with_one_line(data, tmp_path, command) -> None:
    """`run` refuses a baseline unsuited to the task before any folder; `validate` refuses
    it the same way."""
    res = _cli_with_baselines(data, tmp_path, command, ["logreg"])
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "baselines[0]" in lines[0]
    assert "coxnet, coxph, rsf" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_validate_names_the_baselines_and_plugins_lists_them(data, tmp_path) -> None:
    """`lungfuse validate` accepts an installed baseline and names it; `lungfuse plugins`
    lists the baselines group beside modalities and fusion heads."""
    res = _cli_with_baselines(data, tmp_path, "validate", ["coxnet"])
    assert res.returncode == 0 and "baselines coxnet" in res.stdout, res.stderr
    res = subprocess.run([sys.executable, "-m", "lungfuse.core.cli", "plugins", "--json"],
                         capture_output=True, text=True, timeout=300, check=True)
    rows = {(r["group"], r["name"]): r["status"] for r in json.loads(res.stdout)}
    assert {("lungfuse.baselines", n) for n in ("logreg", "coxnet", "rsf")} <= set(rows)
    assert rows[("lungfuse.baselines", "coxnet")] == "ok"
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ third party, no fit
THIRD_PARTY = '''
from typing import Literal
import numpy as np
from lungfuse.core.baselines import BaselineConfig, BaselinePlugin


class AgeConfig(BaselineConfig):
    kind: Literal["lfx_age"] = "lfx_age"
    scale: float = 10.0


class AgeRule(BaselinePlugin):
    """A fixed published-style rule on a raw cohort column: nothing is fitted."""

    name = "lfx_age"
    tasks = ("binary", "survival")
    config_model = AgeConfig
    needs_fit = False
    uses_features = False
    description = "logistic of (age - 60) / scale"

    def cohort_columns(self):
        return ["age"]

    def fixed(self):
        scale = self.config.scale

        class Rule:
            def predict(self, X):
                assert list(X.columns) == ["age"]
                return 1 / (1 + np.exp(-(X["age"].to_numpy(float) - 60) / scale))
        return Rule()

    def fit(self, X, target, *, seed):
        raise AssertionError("a fixed model is never fitted")
'''


def test_third_party_fixed_baseline_through_the_entry_point(data, tmp_path, monkeypatch) -> None:
    from lungfuse.core.registry import Registry

    site = tmp_path / "site"
    make_dist(site, "lfx-age", "0.1", BASELINE_GROUP, {"lfx_age": "lfx_age_mod:AgeRule"},
              {"lfx_age_mod": THIRD_PARTY})
    monkeypatch.syspath_prepend(str(site))
    reg = Registry()
    from lungfuse.core.run import run_experiment

    res = run_experiment(config(data, "binary", baselines=[{"kind": "lfx_age", "scale": 5.0}],
                                output_dir=str(tmp_path / "runs")),
                         registry=reg, plugins=[FakeModality], progress=False, report=False)
    b = res.metrics["baselines"]["lfx_age"]
    assert b["status"] == "ok" and b["origin"] == "lfx-age 0.1"
    base = pd.read_parquet(res.run_dir / "baselines" / "predictions.parquet")
    age = pd.read_parquet(data / "clinical.parquet").set_index("patient_id")["age"]
    want = 1 / (1 + np.exp(-(age.loc[base["patient_id"]].to_numpy() - 60) / 5.0))
    assert np.allclose(base["score"].to_numpy(), want)
    sys.modules.pop("lfx_age_mod", None)


def test_a_failing_baseline_is_reported_and_the_run_completes(data, tmp_path, monkeypatch) -> None:
    from lungfuse.plugins.baselines.plugin import LogReg

    def boom(self, X, target, *, seed):
        raise RuntimeError("singular matrix")

    monkeypatch.setattr(LogReg, "fit", boom)
    res = run(config(data, "binary", baselines=["logreg"], output_dir=str(tmp_path / "r")),
              report=False)
    b = res.metrics["baselines"]["logreg"]
    assert b["status"] == "failed" and "singular matrix" in b["reason"]
    assert json.loads((res.run_dir / "run.json").read_text(encoding="utf-8"))["status"] \
        == "complete"


# ------------------------------------------------------------------ ablation
def test_ablation_has_a_baseline_row_on_the_same_patients(data, tmp_path) -> None:
    from lungfuse.core.ablation import run_ablation

    res = run_ablation(config(data, "binary", baselines=["logreg"],
                              output_dir=str(tmp_path / "abl")),
                       plugins=[FakeModality], progress=False)
    t = res.table
    row = t[t["baseline"]]
    assert list(row["variant"]) == ["fake+cnv | logreg (baseline)"]
    assert row["patients"].iloc[0] == t[~t["baseline"]]["patients"].iloc[0]
    assert res.reference in set(t.loc[~t["baseline"], "variant"])
    assert np.isfinite(row["auroc_delta_vs_ref"].iloc[0])
    state = json.loads((res.folder / "ablation.json").read_text(encoding="utf-8"))
    vid = next(v["id"] for v in state["variants"] if v.get("baseline") == "logreg")
    bp = pd.read_parquet(res.folder / "variants" / vid / "predictions.parquet")
    ref_id = next(v["id"] for v in state["variants"] if v["label"] == res.reference)
    rp = pd.read_parquet(res.folder / "variants" / ref_id / "predictions.parquet")
    assert _triples(bp) == _triples(rp)
    assert "logreg (baseline)" in (res.folder / "ablation.md").read_text(encoding="utf-8")
    assert "logreg (baseline)" in (res.folder / "report.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------ the bench
@pytest.mark.slow
def test_bench_quick_reads_its_baselines_from_the_run_folder(tmp_path) -> None:
    out = tmp_path / "quick"
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "real_cohorts.py"), "--quick", "--cohorts",
         "veterans", "--variants", "default", "--folds", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    got = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    bl = got["cohorts"]["veterans"]["baselines"]
    assert set(bl) >= {"Coxnet (CV l1_ratio, alpha)", "CoxPH (ridge 0.1)", "RSF"}
    assert all(b["folds"] == 2 and b["mean"] is not None for b in bl.values())
