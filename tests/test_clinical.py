"""Clinical modality: conformance, fit on training patients only, missing values kept
visible, unseen levels, empty columns, config errors, and a tiny end-to-end run."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy.stats import skew
from sklearn.preprocessing import PowerTransformer

from lungfuse.core.contracts import ModalityContext
from lungfuse.core.errors import ConfigError, DataError
from lungfuse.plugins.clinical.plugin import ClinicalConfig, ClinicalModality
from lungfuse.testing import check_modality_plugin, example_cohort

P = [f"TCGA-CL-{i:04d}" for i in range(8)]
TRAIN, TEST = P[:6], P[6:]


def ctx(tmp_path: Path) -> ModalityContext:
    return ModalityContext(workdir=tmp_path / "work", progress=False,
                           log=logging.getLogger("lungfuse"))


def rows() -> pd.DataFrame:
    """Cohort rows: age with two missing training values, sex with one missing."""
    return pd.DataFrame({
        "malignant": [0, 1, 0, 1, 0, 1, 0, 1],
        "age": [50.0, 60.0, np.nan, 70.0, 80.0, np.nan, 55.0, np.nan],
        "sex": ["F", "M", "F", None, "M", "F", "M", "F"],
        "pack_years": [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 5.0, 15.0],
    }, index=pd.Index(P, name="patient_id"))


def features_only(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["malignant"])


def fitted(tmp_path: Path, df: pd.DataFrame | None = None, **cfg) -> ClinicalModality:
    df = rows() if df is None else df
    settings = {"numeric": ["age", "pack_years"], "categorical": ["sex"], **cfg}
    m = ClinicalModality(ClinicalConfig(**settings))
    m.prepare(df.loc[TRAIN], ctx(tmp_path))
    return m


# -- conformance -------------------------------------------------------------------------------
def test_conformance_own_parquet_file() -> None:
    check_modality_plugin(ClinicalModality)


def test_conformance_cohort_columns() -> None:
    cohort = example_cohort()
    cohort["sex"] = ["F", "M", None, "M"] * 4
    cohort.loc[cohort.index[[1, 4]], "age"] = np.nan
    check_modality_plugin(ClinicalModality, cohort=cohort,
                          config={"kind": "clinical", "numeric": ["age"], "categorical": ["sex"],
                                  "embedding_dim": 4})


def test_plugin_module_imports_without_heavy_modules() -> None:
    code = ("import sys, lungfuse.plugins.clinical.plugin as m; "
            "print(','.join(x for x in ('torch', 'pandas', 'pyarrow', 'numpy', 'sklearn') "
            "if x in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -- fitting on training patients only ---------------------------------------------------------
def test_fit_on_training_patients_only(tmp_path: Path) -> None:
    df = rows()
    path = tmp_path / "cov.parquet"
    df.drop(columns=["malignant"]).reset_index().to_parquet(path, index=False)
    cfg = ClinicalConfig(path=path, numeric=["age", "pack_years"], categorical=["sex"])
    m = ClinicalModality(cfg)
    m.prepare(df.loc[TRAIN], ctx(tmp_path))
    state = m.state_dict()
    train_age = df.loc[TRAIN, "age"]
    assert state["fill"][0] == pytest.approx(train_age.median())
    imputed = train_age.fillna(train_age.median())
    # Yeo-Johnson lambda from the observed training values only, then the training mean/sd
    power = PowerTransformer(method="yeo-johnson", standardize=False)
    power.fit(train_age.dropna().to_frame())
    assert state["lambdas"][0] == pytest.approx(power.lambdas_[0])
    transformed = power.transform(imputed.to_frame())[:, 0]
    assert state["center"][0] == pytest.approx(transformed.mean())
    assert state["scale"][0] == pytest.approx(transformed.std(ddof=0))
    assert state["levels"] == [["F", "M"]]

    # held-out patients' values change wildly (and gain a new level): the fit does not move
    changed = df.drop(columns=["malignant"]).copy()
    changed.loc[TEST, "age"] = [1000.0, 2000.0]
    changed.loc[TEST, "pack_years"] = [900.0, 900.0]
    changed.loc[TEST, "sex"] = ["X", "Y"]
    changed.reset_index().to_parquet(path, index=False)
    again = ClinicalModality(cfg)
    again.prepare(df.loc[TRAIN], ctx(tmp_path))
    assert again.state_dict() == state


def test_state_is_plain_json_and_round_trips(tmp_path: Path) -> None:
    m = fitted(tmp_path)
    state = json.loads(json.dumps(m.state_dict()))  # raises on numpy arrays, sklearn objects
    restored = ClinicalModality(m.config)
    restored.load_state_dict(state)
    c = ctx(tmp_path)
    pd.testing.assert_frame_equal(restored.transform(features_only(rows()), c),
                                  m.transform(features_only(rows()), c))
    arrays = {k: (np.asarray(v) if k in ("fill", "center", "scale") else v)
              for k, v in state.items()}
    restored.load_state_dict(arrays)  # the JSON + arrays run-folder format hands back arrays
    pd.testing.assert_frame_equal(restored.transform(features_only(rows()), c),
                                  m.transform(features_only(rows()), c))


# -- missing values ----------------------------------------------------------------------------
def test_missing_values_are_flagged_not_zero(tmp_path: Path) -> None:
    m = fitted(tmp_path, scale=False, transform="none")
    f = m.transform(features_only(rows()), ctx(tmp_path))
    assert list(f.columns) == ["age", "age__missing", "pack_years", "pack_years__missing",
                               "sex=F", "sex=M", "sex__missing"]
    median = rows().loc[TRAIN, "age"].median()  # 65
    assert f.loc[P[2], "age"] == median and f.loc[P[2], "age__missing"] == 1.0
    assert f.loc[P[7], "age"] == median and f.loc[P[7], "age__missing"] == 1.0  # held out
    assert f.loc[P[0], "age"] == 50.0 and f.loc[P[0], "age__missing"] == 0.0
    assert f.loc[P[3], ["sex=F", "sex=M", "sex__missing"]].tolist() == [0.0, 0.0, 1.0]
    assert f.loc[P[1], ["sex=F", "sex=M", "sex__missing"]].tolist() == [0.0, 1.0, 0.0]
    # scaled: the imputed value sits where the median does on the training scale
    s = fitted(tmp_path, transform="none").transform(features_only(rows()), ctx(tmp_path))
    st = fitted(tmp_path, transform="none").state_dict()
    assert s.loc[P[2], "age"] == pytest.approx((median - st["center"][0]) / st["scale"][0])
    assert s.loc[P[2], "age__missing"] == 1.0


def skewed_rows(n: int = 60) -> pd.DataFrame:
    """A right-skewed count (like positive lymph nodes), a 0/1 code, an age; two missing."""
    rng = np.random.default_rng(3)
    ids = [f"TCGA-SK-{i:04d}" for i in range(n)]
    nodes = np.floor(rng.lognormal(0.5, 1.2, n))
    nodes[[4, 9]] = np.nan
    return pd.DataFrame({"nodes": nodes, "code": rng.integers(0, 2, n).astype(float),
                         "age": rng.normal(60, 8, n)}, index=pd.Index(ids, name="patient_id"))


def test_yeo_johnson_unskews_keeps_order_and_leaves_binary_codes(tmp_path: Path) -> None:
    df = skewed_rows()
    train = df.index[:45]
    c = ctx(tmp_path)
    feats = {}
    for transform in ("yeo-johnson", "none"):
        m = ClinicalModality(ClinicalConfig(numeric=["nodes", "code", "age"],
                                            transform=transform))
        m.prepare(df.loc[train], c)
        feats[transform] = m.transform(df, c)
        state = m.state_dict()
    yj, plain = feats["yeo-johnson"], feats["none"]
    seen = df["nodes"].notna()
    observed = [p for p in train if seen[p]]
    assert abs(skew(yj.loc[observed, "nodes"])) < 0.5 * abs(skew(plain.loc[observed, "nodes"]))
    # monotone: every pair of patients keeps its order (held-out ones included)
    order = np.argsort(df.loc[seen, "nodes"].to_numpy(), kind="stable")
    assert np.all(np.diff(yj.loc[seen, "nodes"].to_numpy()[order]) >= -1e-12)
    # a 0/1 code is not transformed, only standardised; missing indicators untouched
    np.testing.assert_allclose(yj["code"], plain["code"])
    pd.testing.assert_series_equal(yj["nodes__missing"], plain["nodes__missing"])
    assert state["lambdas"] == [1.0, 1.0, 1.0]  # the last state: transform none


def test_state_without_lambdas_applies_the_identity(tmp_path: Path) -> None:
    """A run folder written before the transform existed still scores, as it did."""
    m = fitted(tmp_path, transform="none")
    old = {k: v for k, v in m.state_dict().items() if k not in ("lambdas", "transform")}
    restored = ClinicalModality(ClinicalConfig(numeric=["age", "pack_years"],
                                               categorical=["sex"]))
    restored.load_state_dict(old)
    c = ctx(tmp_path)
    pd.testing.assert_frame_equal(restored.transform(features_only(rows()), c),
                                  m.transform(features_only(rows()), c))
    with pytest.raises(DataError, match="lambda"):
        restored.load_state_dict({**old, "lambdas": [1.0]})


def test_a_saved_config_from_before_the_transform_is_read_as_none(tmp_path: Path) -> None:
    """`--resume` compares a run folder's saved config with the current one: a folder
    written before `transform` existed ran without it, so it reads as `none` there, while
    a new config without the key gets the default."""
    from lungfuse.core.config import config_to_dict, validate_config
    from lungfuse.core.rundir import _config_difference, normalised_stored_config

    cohort = tmp_path / "cohort.parquet"
    pd.DataFrame({"patient_id": P, "malignant": [0, 1] * 4, "age": range(8)}).to_parquet(cohort)
    new = {"name": "c", "cohort": {"clinical": str(cohort)},
           "modalities": [{"kind": "clinical", "numeric": ["age"]}], "fusion": {"kind": "concat"}}
    current = config_to_dict(validate_config(new, base_dir=tmp_path))  # a new config
    assert current["modalities"][0]["transform"] == "yeo-johnson"
    old = json.loads(json.dumps(current))
    del old["modalities"][0]["transform"]
    assert normalised_stored_config(old, tmp_path)["modalities"][0]["transform"] == "none"
    assert _config_difference(normalised_stored_config(old, tmp_path),
                              current) == "modalities[0].transform"
    assert normalised_stored_config(current, tmp_path) == current


def test_patients_without_any_value_are_absent(tmp_path: Path) -> None:
    df = rows()
    df.loc[P[7], ["age", "sex", "pack_years"]] = [np.nan, None, np.nan]
    m = fitted(tmp_path, df)
    assert P[7] not in m.available(features_only(df), ctx(tmp_path))
    assert P[7] not in m.transform(features_only(df), ctx(tmp_path)).index


def test_unseen_category_is_encoded_as_zeros_and_logged(tmp_path: Path, caplog) -> None:
    m = fitted(tmp_path)
    df = rows()
    df.loc[P[6], "sex"] = "unknown"
    with caplog.at_level(logging.WARNING, logger="lungfuse"):
        f = m.transform(features_only(df), ctx(tmp_path))
    assert f.loc[P[6], ["sex=F", "sex=M", "sex__missing"]].tolist() == [0.0, 0.0, 0.0]
    assert "sex=unknown" not in f.columns
    assert "'unknown' not seen in training" in caplog.text and P[6] in caplog.text


def test_all_missing_column_is_dropped_with_a_warning(tmp_path: Path, caplog) -> None:
    df = rows()
    df["smoker"] = None
    df.loc[TEST[0], "smoker"] = "yes"  # a held-out value cannot bring it back
    df["fev1"] = np.nan
    with caplog.at_level(logging.WARNING, logger="lungfuse"):
        m = fitted(tmp_path, df, numeric=["age", "fev1"], categorical=["sex", "smoker"])
    assert "fev1, smoker have no value for any of the 6 training patients" in caplog.text
    f = m.transform(features_only(df), ctx(tmp_path))
    assert not any(c.startswith(("fev1", "smoker")) for c in f.columns)
    assert m.state_dict()["dropped"] == ["fev1", "smoker"]
    assert np.isfinite(f.to_numpy()).all()


def test_every_column_empty_in_training_is_an_error(tmp_path: Path) -> None:
    df = rows()
    df.loc[TRAIN, ["age", "sex", "pack_years"]] = np.nan
    with pytest.raises(DataError, match=r"none of the 6 training patient\(s\) has a value") as e:
        fitted(tmp_path, df)
    assert "\n" not in str(e.value)


# -- bad input ---------------------------------------------------------------------------------
def test_missing_configured_column_lists_the_columns(tmp_path: Path) -> None:
    m = ClinicalModality(ClinicalConfig(numeric=["age", "smoking"], categorical=["sex"]))
    with pytest.raises(DataError) as e:
        m.available(features_only(rows()), ctx(tmp_path))
    msg = str(e.value)
    assert "'smoking' (numeric)" in msg and "age, sex, pack_years" in msg and "\n" not in msg


def test_missing_column_in_own_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cov.parquet"
    rows().drop(columns=["malignant"]).reset_index().to_parquet(path, index=False)
    m = ClinicalModality(ClinicalConfig(path=path, numeric=["age"], categorical=["histology"]))
    with pytest.raises(DataError) as e:
        m.available(features_only(rows()), ctx(tmp_path))
    msg = str(e.value)
    assert msg.startswith(str(path)) and "'histology' (categorical)" in msg
    assert "age, sex, pack_years" in msg and "\n" not in msg


def test_text_in_numeric_column_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"numeric clinical column 'sex' holds non-numeric "
                                        r"value 'F'.*list it under `categorical`"):
        ClinicalModality(ClinicalConfig(numeric=["sex"])).available(
            features_only(rows()), ctx(tmp_path))


def test_outcome_column_is_refused_in_the_config(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="'malignant' is an outcome column"):
        ClinicalConfig(numeric=["age", "malignant"])
    from lungfuse.core.config import validate_config

    cfg = {"cohort": {"clinical": "c.parquet"}, "fusion": {"kind": "concat"},
           "modalities": [{"kind": "clinical", "numeric": ["age"], "categorical": ["event"]}]}
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, source="exp.yaml", check_paths=False)
    assert "exp.yaml" in str(e.value) and "'event' is an outcome column" in str(e.value)


def test_renamed_outcome_column_is_refused_at_run_time(tmp_path: Path) -> None:
    from lungfuse.core.run import run_experiment

    df = rows().rename(columns={"malignant": "cancer"})
    df.reset_index().to_parquet(tmp_path / "clinical.parquet", index=False)
    cfg = {"cohort": {"clinical": str(tmp_path / "clinical.parquet")},
           "task": {"kind": "binary", "outcome": "cancer"}, "fusion": {"kind": "concat"},
           "modalities": [{"kind": "clinical", "numeric": ["age", "cancer"]}],
           "evaluation": {"folds": 2},
           "output_dir": str(tmp_path / "runs")}
    with pytest.raises(DataError, match=r"'cancer' \(numeric\).*outcome columns are never "
                                        r"offered as covariates"):
        run_experiment(cfg, progress=False)


# -- end to end --------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_run_experiment_with_clinical_and_mutations(tmp_path: Path) -> None:
    from lungfuse.core.run import run_experiment
    from lungfuse.plugins.genomics.plugin import MutationsModality

    n = 24
    rng = np.random.default_rng(0)
    ids = [f"TCGA-LF-{i:04d}" for i in range(n)]
    y = np.tile([0, 1], n // 2)
    age = (60 + 8 * y + rng.normal(0, 5, n)).round()
    age[::5] = np.nan
    sex = np.where(rng.random(n) < 0.5, "F", "M").astype(object)
    sex[3] = None
    pd.DataFrame({"patient_id": ids, "malignant": y, "age": age, "sex": sex,
                  "pack_years": rng.uniform(0, 60, n).round(1)}).to_parquet(
        tmp_path / "clinical.parquet", index=False)
    mut = MutationsModality.example(tmp_path / "omics", ids).model_dump(mode="json")
    cfg = {"name": "clin", "seed": 0,
           "cohort": {"clinical": str(tmp_path / "clinical.parquet")},
           "modalities": [{"kind": "clinical", "numeric": ["age", "pack_years"],
                           "categorical": ["sex"], "embedding_dim": 4, "hidden": [8]}, mut],
           "fusion": {"kind": "concat", "hidden_dim": 8},
           "training": {"max_epochs": 2, "batch_size": 16, "patience": 1},
           "evaluation": {"test_fraction": 0.3, "bootstrap": 10},
           "output_dir": str(tmp_path / "runs")}
    res = run_experiment(cfg, progress=False)
    assert res is not None
    assert res.metrics["coverage"]["clinical"] == n
    assert len(res.predictions) and set(res.predictions["patient_id"]) <= set(ids)
    feats = pd.read_parquet(res.run_dir / "features" / "clinical" / "seed0-fold0.parquet")
    assert list(feats.columns) == ["age", "age__missing", "pack_years", "pack_years__missing",
                                   "sex=F", "sex=M", "sex__missing"]
    assert feats.loc[ids[0], "age__missing"] == 1.0 and feats.loc[ids[1], "age__missing"] == 0.0

    # scoring new patients applies the stored state: covariates from the input's table
    from lungfuse.core.scoring import score_patients

    pd.DataFrame({"patient_id": ["NEW-1", "NEW-2"], "age": [71.0, np.nan],
                  "sex": ["M", "F"], "pack_years": [40.0, 3.0]}).to_parquet(
        tmp_path / "new.parquet", index=False)
    scored = score_patients(res.run_dir, {"patients": [{"id": "NEW-1"}, {"id": "NEW-2"}],
                                          "clinical": str(tmp_path / "new.parquet")},
                            tmp_path / "scores", progress=False, report=False, ig_steps=2)
    assert not scored.failed
    assert all("clinical" not in s["missing"] for s in scored.patients)
