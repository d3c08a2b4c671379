"""Training that suits small cohorts (issue 13, item 3): ``training.selection`` inner_cv
(the epoch count chosen by inner cross-validation on the training fold, one model
refitted on all of it), its leakage guarantee, ``auto``, compatibility with holdout runs
and configs, and every fusion head learning on a single modality where concat learns."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_pipeline import FakeModality, config, make_data, run  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    make_data(root)
    return root


def _meta(run_dir: Path, seed: int = 0, fold: int = 0) -> dict:
    p = run_dir / "models" / f"seed{seed}-fold{fold}" / "meta.json"
    return json.loads(p.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- selection
def test_auto_resolves_on_the_training_part_size_and_explicit_choices_win() -> None:
    from lungfuse.core.splits import resolve_selection
    from lungfuse.schemas import TrainingConfig

    auto = TrainingConfig(selection="auto", inner_cv_below=100)
    # 5 folds of 125 patients: training parts of 100 -> holdout; 124 -> 99 -> inner_cv
    assert resolve_selection(auto, 125, 5, None) == "holdout"
    assert resolve_selection(auto, 124, 5, None) == "inner_cv"
    assert resolve_selection(auto, 200, 2, 0.5) == "holdout"
    assert resolve_selection(auto, 198, 2, 0.5) == "inner_cv"
    for sel in ("holdout", "inner_cv"):
        assert resolve_selection(TrainingConfig(selection=sel, inner_cv_below=100), 10, 5,
                                 None) == sel
    # a training section without the field (an object from before it existed): holdout
    assert resolve_selection(object(), 10, 5, None) == "holdout"


def test_old_config_with_val_fraction_validates_and_keeps_holdout_splits(data) -> None:
    from lungfuse.core.study import Study

    old = config(data, training={"max_epochs": 2, "val_fraction": 0.25, "selection": "holdout"})
    st = Study.from_config(old, plugins=[FakeModality])
    assert set(st.splits["split"].astype(str)) == {"train", "val", "test"}
    legacy = config(data, training={"max_epochs": 2, "val_fraction": 0.25})
    legacy["training"].pop("selection", None)
    st = Study.from_config(legacy, plugins=[FakeModality])  # validates, no error
    assert st.cfg.training.val_fraction == 0.25


def test_inner_cv_splits_have_train_and_test_only_and_cover_the_fold(data) -> None:
    from lungfuse.core.study import Study

    hold = Study.from_config(config(data, training={"selection": "holdout"}),
                             plugins=[FakeModality])
    inner = Study.from_config(config(data, training={"selection": "inner_cv"}),
                              plugins=[FakeModality])
    assert set(inner.splits["split"].astype(str)) == {"train", "test"}
    for seed, fold in inner.folds:
        a, b = hold.fold_ids(seed, fold), inner.fold_ids(seed, fold)
        assert b["val"] == [] and b["test"] == a["test"], "same outer folds either way"
        assert sorted(b["train"]) == sorted(a["train"] + a["val"])


def test_inner_splits_are_stratified_seeded_and_shrink_to_the_smallest_class() -> None:
    from lungfuse.core.splits import inner_splits

    y = np.array([0] * 12 + [1] * 8)
    parts = inner_splits(y, 5, seed=3)
    assert len(parts) == 5
    seen = np.concatenate([v for _, v in parts])
    assert sorted(seen.tolist()) == list(range(20)), "each patient validates exactly once"
    for fit, val in parts:
        assert not set(fit) & set(val)
        assert y[val].sum() >= 1 and (1 - y[val]).sum() >= 1, "both classes in every part"
    again = inner_splits(y, 5, seed=3)
    assert all((a[1] == b[1]).all() for a, b in zip(parts, again, strict=True))
    assert len(inner_splits(np.array([0] * 10 + [1] * 3), 5, seed=0)) == 3


# ----------------------------------------------------------------------------- inner_cv runs
@pytest.fixture(scope="module")
def inner_run(data):
    return run(config(data, "binary", "concat",
                      training={"selection": "inner_cv", "inner_folds": 3, "max_epochs": 6,
                                "patience": 2}))


def test_inner_cv_fold_records_its_choice_and_refits_on_every_training_patient(
        inner_run) -> None:
    splits = pd.read_parquet(inner_run.run_dir / "splits.parquet")
    for seed, fold in [(0, 0), (0, 1)]:
        meta = _meta(inner_run.run_dir, seed, fold)
        n_train = int(((splits.fold == fold) & (splits.split == "train")).sum())
        assert meta["selection"] == "inner_cv"
        ic = meta["inner_cv"]
        assert ic["folds"] == 3 and len(ic["best_epochs"]) == 3 == len(ic["val_losses"])
        assert sum(v for _, v in ic["patients"]) == n_train
        assert all(f + v == n_train for f, v in ic["patients"])
        assert all(1 <= b <= 6 for b in ic["best_epochs"])
        assert ic["epochs"] == int(np.floor(np.median(ic["best_epochs"]) + 0.5))
        assert meta["epochs"] == ic["epochs"], "the refit trains the chosen epoch count"
        assert meta["patients"]["train"] == n_train and meta["patients"]["val"] == 0
        assert meta["calibration_fitted_on"] == "inner_cv out-of-fold outputs"
        assert meta["checkpoint"] is None


def test_inner_cv_calibration_sees_every_training_patient_out_of_fold(data, monkeypatch
                                                                     ) -> None:
    import lungfuse.core.calibration as cal

    seen = []
    real = cal.fit_calibration

    def spy(method, logits, y):
        seen.append((len(y), bool(np.isfinite(logits).all())))
        return real(method, logits, y)

    monkeypatch.setattr(cal, "fit_calibration", spy)
    res = run(config(data, training={"selection": "inner_cv", "inner_folds": 2,
                                     "max_epochs": 2}))
    splits = pd.read_parquet(res.run_dir / "splits.parquet")
    n_train = [int(((splits.fold == k) & (splits.split == "train")).sum()) for k in (0, 1)]
    assert seen == [(n, True) for n in n_train]


def test_inner_cv_run_folder_scores_to_its_own_predictions(inner_run) -> None:
    from lungfuse.core.study import Study

    st = Study.from_run_folder(inner_run.run_dir, plugins=[FakeModality])
    pred = pd.read_parquet(inner_run.run_dir / "predictions.parquet")
    for seed, fold in st.folds:
        tf = st.load_fold(seed, fold)
        mine = pred[(pred.seed == seed) & (pred.fold == fold)].sort_values("patient_id")
        ids = list(mine["patient_id"])
        feats = {m: pd.read_parquet(inner_run.run_dir / "features" / m /
                                    f"seed{seed}-fold{fold}.parquet") for m in tf.names}
        again = tf.predict_table(tf.fold_data({m: tf.align(m, f) for m, f in feats.items()},
                                              ids))
        np.testing.assert_allclose(again["prob_calibrated"].to_numpy(),
                                   mine["prob_calibrated"].to_numpy(), rtol=1e-6)


def test_inner_cv_report_says_how_the_epochs_were_chosen(inner_run, data) -> None:
    """The report's Splits section describes the run's own selection, not holdout's."""
    text = (inner_run.run_dir / "report.html").read_text(encoding="utf-8")
    assert "training.selection: inner_cv" in text and "no validation split" in text
    assert "is carved from each training fold" not in text


def test_inner_cv_survival_run(data) -> None:
    res = run(config(data, "survival", "concat",
                     training={"selection": "inner_cv", "inner_folds": 3, "max_epochs": 3}))
    meta = _meta(res.run_dir)
    assert meta["selection"] == "inner_cv" and "breslow" in meta
    assert "calibration" not in meta
    assert np.isfinite(res.predictions["risk"]).all()


# ----------------------------------------------------------------------------- leakage
def _train_fold_twice(data: Path, task: str, tmp_path: Path, **training):
    """Train fold 0 (inner_cv) on the cohort as it is and on a copy whose test patients
    have other outcomes and other features; returns both results."""
    import torch

    from lungfuse.core.features import prepare_fold_features
    from lungfuse.core.folds import train_fold
    from lungfuse.core.study import Study

    cfg = config(data, task, "gated", training={"selection": "inner_cv", "inner_folds": 3,
                                                "max_epochs": 4, "patience": 2, **training})
    st = Study.from_config(cfg, plugins=[FakeModality])
    ids = st.fold_ids(0, 0)
    assert ids["val"] == [] and ids["test"]
    prepared = {m: prepare_fold_features(m, cls, mcfg, st.cohort, ids["train"], seed=0, fold=0,
                                         workdir=tmp_path / m, write=False)
                for m, (cls, mcfg) in st.modalities.items()}
    # other outcomes and other features for the test patients only
    table = st.cohort.table.copy()
    test = ids["test"]
    for col in st.cohort.outcome_columns:
        if col == "time":
            table.loc[test, col] = table.loc[test, col] * 3 + 1
        else:
            table.loc[test, col] = 1 - table.loc[test, col]
    other = dataclasses.replace(st.cohort, table=table)
    changed = {}
    for m, p in prepared.items():
        f = p.features.copy()
        rows = f.index.isin(test)
        f.loc[rows] = f.loc[rows] * -2.0 + 5.0
        changed[m] = dataclasses.replace(p, features=f)
    torch.manual_seed(123)  # whatever the global state was, train_fold seeds itself
    a = train_fold(st.cfg, st.cohort, prepared, st.modalities, st.fusion, ids, seed=0, fold=0,
                   fold_dir=tmp_path / "a", write=False, time_grid=st.time_grid)
    torch.manual_seed(456)
    b = train_fold(st.cfg, other, changed, st.modalities, st.fusion, ids, seed=0, fold=0,
                   fold_dir=tmp_path / "b", write=False, time_grid=st.time_grid)
    return a, b, test


@pytest.mark.parametrize("task", ["binary", "survival"])
def test_inner_cv_never_sees_test_patients(data, tmp_path, task) -> None:
    import torch

    a, b, test = _train_fold_twice(data, task, tmp_path)
    # every choice: inner epochs and losses, the chosen count, the calibration / baseline
    assert a.meta["inner_cv"] == b.meta["inner_cv"]
    assert a.meta["epochs"] == b.meta["epochs"]
    assert a.meta.get("calibration") == b.meta.get("calibration")
    assert a.meta.get("breslow") == b.meta.get("breslow")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"refitted weight {k} differs"
    # the test patients' predictions did change (their features did): the check has teeth
    pa = a.predictions.set_index("patient_id").loc[test]
    pb = b.predictions.set_index("patient_id").loc[test]
    col = "logit" if task == "binary" else "risk"
    assert not np.allclose(pa[col].to_numpy(), pb[col].to_numpy())


def test_search_chooses_inside_the_training_fold_only(data, tmp_path) -> None:
    """training.search: every trial's settings and inner-CV loss, the winner, the refit and
    the calibration are identical when the test patients' outcomes and features change."""
    import torch

    search = {"trials": 3, "startup_trials": 2, "lr": [1e-3, 3e-2],
              "weight_decay": [1e-5, 1e-2], "batch_size": [8, 16]}
    a, b, _ = _train_fold_twice(data, "binary", tmp_path, search=search)
    sa = a.meta["search"]
    assert sa == b.meta["search"]
    assert len(sa["trials"]) == 3
    values = [t["value"] for t in sa["trials"] if t["value"] is not None]
    assert sa["best_value"] == min(values)
    for t in sa["trials"]:
        assert 1e-3 <= t["params"]["lr"] <= 3e-2 and t["params"]["batch_size"] in (8, 16)
    # the fold's inner-CV record is the winning trial's, and its loss is the search value
    assert a.meta["inner_cv"] == b.meta["inner_cv"]
    assert round(float(np.mean(a.meta["inner_cv"]["val_losses"])), 6) == sa["best_value"]
    assert a.meta.get("calibration") == b.meta.get("calibration")
    for k, w in a.model.state_dict().items():
        assert torch.equal(w, b.model.state_dict()[k]), f"refitted weight {k} differs"


def test_search_under_holdout_runs_and_records_its_trials(data) -> None:
    res = run(config(data, "binary", "concat",
                     training={"max_epochs": 3, "patience": 2,
                               "search": {"trials": 2, "startup_trials": 1}}))
    meta = json.loads((res.run_dir / "models" / "seed0-fold0" / "meta.json")
                      .read_text(encoding="utf-8"))
    assert meta["selection"] == "holdout"
    assert len(meta["search"]["trials"]) == 2 and "best_record" not in meta["search"]
    assert set(meta["search"]["best_params"]) == {"lr", "weight_decay"}


@pytest.mark.parametrize("bad", [{"lr": [1e-2, 1e-4]}, {"weight_decay": [0, 1e-2]},
                                 {"batch_size": [0]}, {"trials": -1}])
def test_search_settings_are_checked(bad) -> None:
    from pydantic import ValidationError

    from lungfuse.schemas import TrainingConfig

    with pytest.raises(ValidationError, match="search|trials"):
        TrainingConfig.model_validate({"search": {"trials": 2, **bad}})
    assert TrainingConfig.model_validate({}).search.trials == 0  # off unless asked for


# ----------------------------------------------------------------------------- heads
def _one_modality_auroc(plugin_cls, seed: int = 0) -> float:
    """Held-out AUROC of ``plugin_cls``'s head on one modality carrying the signal: a
    small encoder (as a modality plugin builds) + the head, trained with the fold
    trainer's loss and optimiser (AdamW, mini-batches), 20% of patients without the
    modality (no signal for them)."""
    import torch

    g = np.random.default_rng(seed)
    n_tr, n_te, f = 240, 600, 10
    x = g.normal(size=(n_tr + n_te, f)).astype(np.float32)
    logit = 1.5 * x[:, 0] - 1.0 * x[:, 1] + 0.8 * x[:, 2] * x[:, 3]
    present = g.random(n_tr + n_te) < 0.8
    y = (g.random(n_tr + n_te) < 1 / (1 + np.exp(-np.where(present, logit, 0.0)))).astype(
        np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: fastest single-threaded, as in training
    try:
        return _train_one_head(plugin_cls, seed, x, present, y, n_tr)
    finally:
        torch.set_num_threads(threads)


def _train_one_head(plugin_cls, seed: int, x: np.ndarray, present: np.ndarray, y: np.ndarray,
                    n_tr: int) -> float:
    """Train encoder + ``plugin_cls``'s head on the first ``n_tr`` patients; the held-out
    AUROC on the rest (patients with the modality)."""
    import torch
    from sklearn.metrics import roc_auc_score

    from lungfuse.core.fusion_model import FusionModel, FusionTask

    f = x.shape[1]
    torch.manual_seed(seed)
    enc = torch.nn.Sequential(torch.nn.Linear(f, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    cfg = plugin_cls.config_model(hidden_dim=32, modality_dropout=0.2)
    model = FusionModel({"m": enc}, plugin_cls(cfg).build({"m": 8}, 1))
    task = FusionTask(model, "binary", lr=3e-3, weight_decay=1e-4)
    opt = task.configure_optimizers()
    xt, pt, yt = torch.from_numpy(x), torch.from_numpy(present), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(40):
        for idx in torch.randperm(n_tr, generator=gen).split(48):
            batch = {"y": yt[idx]}
            loss = task.loss(model({"m": xt[idx]}, {"m": pt[idx]}), batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        te = slice(n_tr, None)
        out = model({"m": xt[te]}, {"m": pt[te]}).numpy()
    keep = present[te]
    return float(roc_auc_score(y[te][keep], out[keep]))


@functools.cache
def _head_aurocs() -> dict[str, float]:
    """``{head: held-out AUROC}`` of every registered fusion head on one modality."""
    from lungfuse.core.registry import FUSION_GROUP, default_registry

    heads = default_registry().plugins(FUSION_GROUP)
    return {name: _one_modality_auroc(cls) for name, cls in sorted(heads.items())}


def test_every_head_learns_on_a_single_modality_where_concat_learns() -> None:
    """Each registered fusion head, given only the modality that carries the signal,
    learns it: far from chance (AUROC > 0.65; chance is 0.5 with a standard error of
    ~0.025 on ~480 held-out patients), and, the transformer aside (next test), within
    0.05 of concat's AUROC (2 standard errors of an AUROC near 0.8). The demo
    ablation's 'mutations | gated' at 0.49 was one cell of a holdout ablation whose
    per-fold spread is larger than that (docs/training.md)."""
    got = _head_aurocs()
    assert {"concat", "gated", "late", "kronecker", "transformer"} <= set(got)
    ref = got["concat"]
    assert ref > 0.75, f"concat does not learn the signal (AUROC {ref:.3f})"
    chance = {k: round(v, 3) for k, v in got.items() if v <= 0.65}
    assert not chance, f"heads near chance on one modality: {chance}"
    bad = {k: round(v, 3) for k, v in got.items()
           if k != "transformer" and v < ref - 0.05}
    assert not bad, f"heads below concat's {ref:.3f} - 0.05 on one modality: {bad}"


@pytest.mark.xfail(strict=True, reason="the transformer head learns one modality more "
                   "slowly than concat (0.05-0.07 AUROC lower in the same budget): its CLS "
                   "token sees the modality only through LayerNorm'd tokens; open issue, "
                   "docs/training.md")
def test_transformer_head_matches_concat_on_a_single_modality() -> None:
    got = _head_aurocs()
    assert got["transformer"] >= got["concat"] - 0.05
