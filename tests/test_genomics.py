"""Genomics plugin: mutations and expression modalities (behaviour, fit-on-train, errors)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungfuse.core.contracts import ModalityContext
from lungfuse.core.errors import DataError
from lungfuse.plugins.genomics.plugin import (
    ExpressionConfig,
    ExpressionModality,
    MutationsConfig,
    MutationsModality,
)
from lungfuse.testing import check_modality_plugin, example_cohort

P = [f"TCGA-LF-{i:04d}" for i in range(6)]


def ctx(tmp_path: Path) -> ModalityContext:
    return ModalityContext(workdir=tmp_path / "work", progress=False,
                           log=logging.getLogger("lungfuse"))


def cohort(ids: list[str] = P) -> pd.DataFrame:
    return pd.DataFrame({"age": np.arange(len(ids), dtype=float)},
                        index=pd.Index(ids, name="patient_id"))


def maf_row(sample: str, gene: str, cls: str = "Missense_Mutation", hgvsp: str = "p.A1V",
            alt: int = 10, depth: int = 100) -> dict:
    return {"Tumor_Sample_Barcode": sample, "Hugo_Symbol": gene, "Variant_Classification": cls,
            "HGVSp_Short": hgvsp, "t_alt_count": alt, "t_depth": depth}


def write_maf(tmp_path: Path, rows: list[dict], sequenced: list[str] | None = None):
    path = tmp_path / "maf.parquet"
    pd.DataFrame(rows).to_parquet(path, index=False)
    seq = None
    if sequenced is not None:
        seq = tmp_path / "seq.txt"
        seq.write_text("\n".join(sequenced) + "\n")
    return path, seq


def s(i: int, suffix: str = "-01A") -> str:
    return P[i] + suffix


@pytest.fixture
def maf(tmp_path: Path):
    rows = [
        maf_row(s(0), "KRAS", hgvsp="p.G12C", alt=30, depth=100),
        maf_row(s(0), "TP53", cls="Silent"),
        maf_row(s(0), "Unknown"),
        maf_row(s(0), "EGFR", cls="In_Frame_Del", hgvsp="p.E746_A750del"),
        maf_row(s(1), "TP53", cls="Nonsense_Mutation", hgvsp="p.R196*", alt=50, depth=100),
        maf_row(s(1), "KRAS", hgvsp="p.G12D", alt=20, depth=100),
        maf_row(s(3), "EGFR", hgvsp="p.L858R"),
        maf_row(s(3, "-06A"), "BRAF", hgvsp="p.V600E"),
        maf_row(s(3, "-06A"), "STK11", cls="Frame_Shift_Del"),
        maf_row("TCGA-ZZ-9999-01A", "KRAS"),  # not in the cohort
    ]
    # patient 2: sequenced, no calls (wild-type); 4 and 5: never sequenced (missing)
    return write_maf(tmp_path, rows, [s(0), s(1), s(2), s(3), s(3, "-06A")])


# -- conformance -------------------------------------------------------------------------------
def test_conformance_mutations() -> None:
    check_modality_plugin(MutationsModality)


def test_conformance_expression() -> None:
    check_modality_plugin(ExpressionModality)


@pytest.mark.parametrize("settings", [
    {"selection": "top_variance", "top_n": 5, "encoder": "mlp"},
    {"selection": "gmt"},
])
def test_conformance_expression_variants(tmp_path: Path, settings: dict) -> None:
    if settings.get("selection") == "gmt":
        gmt = tmp_path / "sets.gmt"
        gmt.write_text("A\tdesc\tEGFR\tKRAS\tTP53\nB\tdesc\tGENE001\tGENE002\tNOPE\n",
                       encoding="utf-8")
        settings = {**settings, "gmt": gmt}

    def config(folder: Path, ids: list[str]) -> dict:
        # a callable, so the leakage check can write the data for more patients
        return {**ExpressionModality.example(folder, ids).model_dump(), **settings}

    check_modality_plugin(ExpressionModality, config=config, workdir=tmp_path / "w")


def test_plugin_module_imports_without_heavy_modules() -> None:
    code = ("import sys, lungfuse.plugins.genomics.plugin as m; "
            "print(','.join(x for x in ('torch', 'pandas', 'pyarrow', 'numpy') "
            "if x in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -- mutations ---------------------------------------------------------------------------------
def test_mutation_features_sequenced_wildtype_missing(tmp_path: Path, maf, caplog) -> None:
    path, seq = maf
    cfg = MutationsConfig(path=path, sequenced_samples=seq, panel=["KRAS", "TP53", "EGFR", "BRAF"],
                          hotspots=["KRAS G12C", "KRAS G12", "EGFR L858R"], capture_mb=2.0)
    m = MutationsModality(cfg)
    c = ctx(tmp_path)
    with caplog.at_level(logging.INFO, logger="lungfuse"):
        avail = m.available(cohort(), c)
    assert avail == {P[0], P[1], P[2], P[3]}
    assert "1 sample(s)" in caplog.text and "match no cohort patient" in caplog.text
    m.prepare(cohort().loc[[P[0], P[1], P[2]]], c)
    f = m.transform(cohort(), c)
    assert list(f.columns) == ["KRAS", "TP53", "EGFR", "BRAF", "KRAS_G12C", "KRAS_G12",
                               "EGFR_L858R", "TMB"]
    assert sorted(f.index) == [P[0], P[1], P[2], P[3]]  # 4, 5 never sequenced: absent
    # patient 0: KRAS G12C; TP53 silent and EGFR in-frame del... in-frame del is non-silent
    assert f.loc[P[0], ["KRAS", "TP53", "EGFR", "KRAS_G12C", "KRAS_G12"]].tolist() == \
        [1, 0, 1, 1, 1]
    assert f.loc[P[1], ["KRAS", "TP53", "KRAS_G12C", "KRAS_G12"]].tolist() == [1, 1, 0, 1]
    assert (f.loc[P[2]].drop("TMB") == 0).all()  # sequenced, no calls: wild-type
    # combine "any": both samples of patient 3 count
    assert f.loc[P[3], ["EGFR", "BRAF", "EGFR_L858R"]].tolist() == [1, 1, 1]
    # TMB: non-silent, not Unknown, max over samples, / capture_mb; standardised on train
    raw = {P[0]: 2 / 2.0, P[1]: 2 / 2.0, P[2]: 0.0}
    st = m.state_dict()
    lt = np.log1p(list(raw.values()))
    assert st["tmb_mean"] == pytest.approx(lt.mean())
    assert st["tmb_sd"] == pytest.approx(lt.std(ddof=1))
    exp3 = (np.log1p(2 / 2.0) - lt.mean()) / lt.std(ddof=1)  # max(1 call, 2 calls) / 2 Mb
    assert f.loc[P[3], "TMB"] == pytest.approx(exp3, rel=1e-5)


def test_mutation_presets_combine_first_and_vaf(tmp_path: Path, maf) -> None:
    path, seq = maf
    c = ctx(tmp_path)
    cfg = MutationsConfig(path=path, sequenced_samples=seq, panel=["EGFR", "BRAF", "KRAS"],
                          non_silent="tmb", combine="first", vaf_weighting=True, tmb=False)
    m = MutationsModality(cfg)
    m.prepare(cohort(), c)
    f = m.transform(cohort(), c)
    assert "TMB" not in f.columns
    assert f.loc[P[0], "EGFR"] == 0  # In_Frame_Del is not in the harmonised TMB set
    assert f.loc[P[0], "KRAS"] == pytest.approx(0.3)  # VAF 30/100
    # only the -01A sample (EGFR, VAF 10/100), not BRAF of -06A
    assert f.loc[P[3], "EGFR"] == pytest.approx(0.1) and f.loc[P[3], "BRAF"] == 0


def test_mutation_untested_policy_is_logged(tmp_path: Path, maf, caplog) -> None:
    path, _ = maf
    c = ctx(tmp_path)
    for policy, expected in [("missing", {P[0], P[1], P[3]}), ("wildtype", set(P))]:
        caplog.clear()
        m = MutationsModality(MutationsConfig(path=path, untested=policy))
        with caplog.at_level(logging.INFO, logger="lungfuse"):
            assert m.available(cohort(), c) == expected
        assert "3 absent from the MAF treated as " in caplog.text
        assert ("wild-type" if policy == "wildtype" else "missing") in caplog.text
    m.prepare(cohort(), c)
    f = m.transform(cohort(), c)
    assert f.loc[P[4]].drop("TMB").eq(0).all()


def test_mutation_top_n_uses_training_patients_only(tmp_path: Path) -> None:
    rows = [maf_row(s(0), "A"), maf_row(s(1), "A"), maf_row(s(1), "B"), maf_row(s(2), "C")]
    rows += [maf_row(s(i), "TESTONLY") for i in (3, 4, 5)]
    path, _ = write_maf(tmp_path, rows)
    m = MutationsModality(MutationsConfig(path=path, top_n=2))
    m.prepare(cohort().loc[P[:3]], ctx(tmp_path))
    assert m.state_dict()["genes"] == ["A", "B"]  # frequency, then name; TESTONLY unseen


def test_mutation_sample_map_and_unknown_ignored(tmp_path: Path) -> None:
    rows = [maf_row("S1", "KRAS"), maf_row("S2", "Unknown"), maf_row("S2", "TP53")]
    path, _ = write_maf(tmp_path, rows)
    smap = tmp_path / "map.parquet"
    pd.DataFrame({"sample_id": ["S1", "S2"], "patient_id": [P[0], P[1]]}).to_parquet(smap)
    m = MutationsModality(MutationsConfig(path=path, sample_map=smap, panel=["KRAS", "TP53"],
                                          capture_mb=1.0))
    c = ctx(tmp_path)
    m.prepare(cohort(), c)
    f = m.transform(cohort(), c)
    assert sorted(f.index) == [P[0], P[1]]
    assert f.loc[P[1], "TP53"] == 1 and f.loc[P[1], "KRAS"] == 0
    assert "Unknown" not in f.columns


def test_default_lung_panel() -> None:
    from lungfuse.plugins.genomics.readers import lung_panel

    panel = lung_panel()
    for g in ("EGFR", "KRAS", "TP53", "STK11", "KEAP1", "BRAF", "MET", "ERBB2", "PIK3CA",
              "SMARCA4", "NF1", "RB1", "CDKN2A"):
        assert g in panel
    assert lung_panel("entrez")[panel.index("EGFR")] == "1956"


# -- expression --------------------------------------------------------------------------------
def expr_frame(seed: int = 0, n: int = 6, genes=("G1", "G2", "G3", "G4")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.uniform(0, 100, (n, len(genes))), columns=list(genes))
    df.insert(0, "sample", [s(i) for i in range(n)])
    return df


def fit_expr(tmp_path: Path, df: pd.DataFrame, train=P[:4], **kw):
    path = tmp_path / "expr.parquet"
    df.to_parquet(path, index=False)
    m = ExpressionModality(ExpressionConfig(path=path, **kw))
    c = ctx(tmp_path)
    m.prepare(cohort().loc[list(train)], c)
    return m, m.transform(cohort(), c)


def test_expression_log2_zscore_fitted_on_train_only(tmp_path: Path) -> None:
    df = expr_frame()
    m, f = fit_expr(tmp_path, df, panel=["G1", "G2"])
    y = np.log2(df.set_index("sample")[["G1", "G2"]] + 1)
    y.index = [i[:12] for i in y.index]
    mu, sd = y.loc[P[:4]].mean(), y.loc[P[:4]].std(ddof=1)
    np.testing.assert_allclose(f.to_numpy(), ((y - mu) / sd).loc[f.index].to_numpy(), rtol=1e-5)
    # a test patient's values change: fitted statistics do not
    df2 = df.copy()
    df2.loc[5, ["G1", "G2"]] = [1e6, 0.0]
    m2, f2 = fit_expr(tmp_path, df2, panel=["G1", "G2"])
    assert m2.state_dict()["mean"] == m.state_dict()["mean"]
    assert m2.state_dict()["sd"] == m.state_dict()["sd"]
    pd.testing.assert_frame_equal(f2.loc[P[:5]], f.loc[P[:5]])


def test_expression_top_variance_on_train_only(tmp_path: Path) -> None:
    df = expr_frame()
    df["G1"] = 5.0
    df.loc[:3, "G2"] = [0, 1000, 0, 1000]  # variable in training patients
    df.loc[4:, "G3"] = [0, 1e6]  # variable only among test patients
    df.loc[:3, "G3"] = 7.0
    m, f = fit_expr(tmp_path, df, selection="top_variance", top_n=2)
    assert m.state_dict()["genes"][0] == "G2"
    assert "G3" not in m.state_dict()["genes"] and "G1" not in m.state_dict()["genes"]
    assert list(f.columns) == m.state_dict()["genes"]


def test_expression_layouts_agree(tmp_path: Path) -> None:
    df = expr_frame()
    _, wide = fit_expr(tmp_path, df, panel=["G1", "G3"])
    long = df.melt(id_vars="sample", var_name="gene", value_name="value")
    _, flong = fit_expr(tmp_path, long, panel=["G1", "G3"])
    pd.testing.assert_frame_equal(wide, flong)
    gxs = df.set_index("sample").T.rename_axis("gene").reset_index()
    _, fg = fit_expr(tmp_path, gxs, panel=["G1", "G3"], orientation="genes_x_samples")
    pd.testing.assert_frame_equal(wide, fg)


def test_expression_entrez_ids_with_lung_panel(tmp_path: Path) -> None:
    df = expr_frame(genes=("1956", "3845", "99999"))
    long = df.melt(id_vars="sample", var_name="gene", value_name="value")
    long["gene"] = long["gene"].astype("int64")  # integer Entrez ids are accepted
    m, f = fit_expr(tmp_path, long, gene_id="entrez")
    assert "1956" in f.columns and "3845" in f.columns and "99999" not in f.columns
    assert f["1956"].std() > 0


def test_expression_missing_gene_and_nan_filled(tmp_path: Path, caplog) -> None:
    df = expr_frame()
    df.loc[5, "G1"] = np.nan
    with caplog.at_level(logging.WARNING, logger="lungfuse"):
        m, f = fit_expr(tmp_path, df, panel=["G1", "NOTTHERE"])
    assert "NOTTHERE" in caplog.text and "1 of 2 panel gene(s)" in caplog.text
    assert (f["NOTTHERE"] == 0).all()
    assert f.loc[P[5], "G1"] == 0  # NaN → training mean → 0 after z-scoring
    _, fz = fit_expr(tmp_path, df, panel=["G1"], zscore=False, log2=False)
    assert fz.loc[P[5], "G1"] == pytest.approx(df.loc[:3, "G1"].mean(), rel=1e-5)


def test_expression_gmt_scores_are_mean_z(tmp_path: Path) -> None:
    gmt = tmp_path / "s.gmt"
    gmt.write_text("S1\td\tG1\tG2\nTINY\td\tG4\tNOPE\n")
    df = expr_frame()
    _, z = fit_expr(tmp_path, df, panel=["G1", "G2"])
    _, f = fit_expr(tmp_path, df, selection="gmt", gmt=gmt, min_set_size=2)
    assert list(f.columns) == ["S1"]  # TINY has one gene in the table: dropped
    np.testing.assert_allclose(f["S1"], z.mean(axis=1), rtol=1e-5)


def test_expression_reads_only_panel_columns(tmp_path: Path, monkeypatch) -> None:
    from lungfuse.plugins.genomics import readers

    calls = []
    real = readers.ParquetTable.read

    def spy(self, columns, filter=None):  # noqa: A002
        calls.append((list(columns), filter))
        return real(self, columns, filter)

    monkeypatch.setattr(readers.ParquetTable, "read", spy)
    df = expr_frame(genes=tuple(f"G{i}" for i in range(200)))
    fit_expr(tmp_path, df, panel=["G3", "G150"])
    data_reads = [cols for cols, flt in calls if flt is not None]
    assert data_reads and all(sorted(cols) == ["G150", "G3", "sample"] for cols in data_reads)


# -- bad input: one clear DataError line each --------------------------------------------------
def _expr(tmp_path: Path, df: pd.DataFrame | None = None, raw: bytes | None = None, **kw):
    path = tmp_path / "bad.parquet"
    if raw is not None:
        path.write_bytes(raw)
    else:
        assert df is not None
        df.to_parquet(path, index=False)
    m = ExpressionModality(ExpressionConfig(path=path, **kw))
    c = ctx(tmp_path)
    m.prepare(cohort(), c)
    return m.transform(cohort(), c)


def _one_line(exc: pytest.ExceptionInfo, *parts: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    assert "bad.parquet" in msg or "maf.parquet" in msg  # names the file
    for p in parts:
        assert p in msg, msg
    return msg


def test_error_missing_column_names_it_and_lists_present(tmp_path: Path) -> None:
    rows = [maf_row(s(0), "KRAS")]
    df = pd.DataFrame(rows).drop(columns=["Variant_Classification"])
    path = tmp_path / "maf.parquet"
    df.to_parquet(path)
    with pytest.raises(DataError) as e:
        MutationsModality(MutationsConfig(path=path)).available(cohort(), ctx(tmp_path))
    _one_line(e, "Variant_Classification", "columns present: Tumor_Sample_Barcode, Hugo_Symbol")


def test_error_wrong_dtype(tmp_path: Path) -> None:
    df = expr_frame()
    df["G2"] = df["G2"].astype(str)
    with pytest.raises(DataError) as e:
        _expr(tmp_path, df, panel=["G1", "G2"])
    _one_line(e, "G2", "not numeric")
    bad_maf = pd.DataFrame([maf_row(s(0), "KRAS")])
    bad_maf["Hugo_Symbol"] = 1
    path = tmp_path / "maf.parquet"
    bad_maf.to_parquet(path)
    with pytest.raises(DataError) as e:
        MutationsModality(MutationsConfig(path=path)).available(cohort(), ctx(tmp_path))
    _one_line(e, "'Hugo_Symbol'", "expected text")


def test_error_duplicate_long_rows(tmp_path: Path) -> None:
    long = expr_frame().melt(id_vars="sample", var_name="gene", value_name="value")
    long = pd.concat([long, long.iloc[[0]]])
    with pytest.raises(DataError) as e:
        _expr(tmp_path, long, panel=["G1"])
    _one_line(e, "duplicate (sample, gene)", s(0))


def test_error_negative_under_log2(tmp_path: Path) -> None:
    df = expr_frame()
    df.loc[1, "G1"] = -2.0
    with pytest.raises(DataError) as e:
        _expr(tmp_path, df, panel=["G1"])
    _one_line(e, "negative", "log2: false")
    assert len(_expr(tmp_path, df, panel=["G1"], log2=False)) == 6  # fine without log2


def test_samples_not_in_cohort_logged_not_fatal(tmp_path: Path, caplog) -> None:
    df = expr_frame(n=6)
    df.loc[len(df)] = ["TCGA-XX-0001-01A", 1, 2, 3, 4]
    df.loc[len(df)] = ["TCGA-XX-0002-01A", 1, 2, 3, 4]
    with caplog.at_level(logging.INFO, logger="lungfuse"):
        path = tmp_path / "bad.parquet"
        df.to_parquet(path, index=False)
        m = ExpressionModality(ExpressionConfig(path=path, panel=["G1"]))
        assert m.available(cohort(), ctx(tmp_path)) == set(P)
    assert "2 sample(s)" in caplog.text and "match no cohort patient" in caplog.text


def test_error_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        _expr(tmp_path, raw=b"")
    _one_line(e, "empty")
    with pytest.raises(DataError) as e:
        _expr(tmp_path, expr_frame().iloc[:0])
    _one_line(e, "no rows")


def test_error_not_parquet(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        _expr(tmp_path, raw=b"sample,G1\nTCGA-LF-0000-01A,3\n")
    _one_line(e, "not a Parquet file")


# -- encoders ----------------------------------------------------------------------------------
def test_encoders_snn_and_mlp(tmp_path: Path) -> None:
    import torch

    path, _ = write_maf(tmp_path, [maf_row(s(0), "KRAS")])
    snn = MutationsModality(MutationsConfig(path=path, hidden=[256, 64], embedding_dim=16,
                                            dropout=0.1)).build_encoder(512)
    kinds = {type(m).__name__ for m in snn.modules()}
    assert {"SELU", "AlphaDropout"} <= kinds and "ReLU" not in kinds
    assert snn.embedding_dim == 16
    w = snn.net[0].weight.detach()
    assert float(w.std()) == pytest.approx(1 / np.sqrt(512), rel=0.05)  # LeCun normal
    snn.eval()
    with torch.no_grad():  # self-normalising: activations stay near unit variance
        h = snn.net[:3](torch.randn(2048, 512))
    assert abs(float(h.mean())) < 0.1 and float(h.std()) == pytest.approx(1.0, abs=0.15)
    mlp = MutationsModality(MutationsConfig(path=path, encoder="mlp", hidden=[8])).build_encoder(4)
    kinds = {type(m).__name__ for m in mlp.modules()}
    assert {"ReLU", "Dropout"} <= kinds and "SELU" not in kinds
    assert mlp(torch.zeros(3, 4)).shape == (3, 32)


# -- the synthetic cohort ----------------------------------------------------------------------
def _synth_ready() -> bool:
    try:
        from lungfuse.core.synth import generate  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _synth_ready(), reason="lungfuse.core.synth.generate not available yet")
def test_on_tiny_synthetic_cohort(tiny_cohort: Path, tmp_path: Path) -> None:
    omics = tiny_cohort / "omics"
    clin = pd.read_parquet(tiny_cohort / "clinical.parquet").set_index("patient_id")
    features = clin.drop(columns=[c for c in ("malignant", "time", "event") if c in clin])
    train = clin.iloc[::2]
    c = ctx(tmp_path)
    mut = MutationsModality(MutationsConfig(path=omics / "mutations.parquet",
                                            sequenced_samples=omics / "sequenced_samples.txt"))
    avail = mut.available(features, c)
    assert avail and avail <= set(clin.index)
    mut.prepare(train, c)
    fm = mut.transform(features, c)
    assert set(fm.index) == avail and np.isfinite(fm.to_numpy()).all()
    expr = ExpressionModality(ExpressionConfig(path=omics / "expression.parquet",
                                               selection="top_variance", top_n=20))
    expr.prepare(train, c)
    fe = expr.transform(features, c)
    assert fe.shape[1] == 20 and set(fe.index) <= set(clin.index)


def test_config_validation(tmp_path: Path) -> None:
    from pydantic import ValidationError

    path, _ = write_maf(tmp_path, [maf_row(s(0), "KRAS")])
    with pytest.raises(ValidationError, match="gmt"):
        ExpressionConfig(path=path, selection="gmt")
    with pytest.raises(ValidationError, match="KRAS G12C"):
        MutationsConfig(path=path, hotspots=["KRASG12C"])
    with pytest.raises(ValidationError, match="file not found"):
        MutationsConfig(path=tmp_path / "nope.parquet")
    assert MutationsConfig(path=path, non_silent="tmb").non_silent_classes() == [
        "Missense_Mutation", "Nonsense_Mutation", "Nonstop_Mutation", "Splice_Site",
        "Frame_Shift_Del", "Frame_Shift_Ins"]
    assert len(MutationsConfig(path=path).non_silent_classes()) == 9


@pytest.mark.parametrize("case", ["not_parquet", "negative"])
def test_cli_run_bad_input_exits_2_with_one_line(tmp_path: Path, case: str, capsys) -> None:
    from lungfuse.core.cli import main

    clin = example_cohort(16).reset_index()
    clin.to_parquet(tmp_path / "clinical.parquet", index=False)
    ids = list(clin["patient_id"])
    expr = tmp_path / "expr.parquet"
    if case == "not_parquet":
        expr.write_text("sample,G1\nTCGA-LF-0000-01A,3\n")
    else:
        df = expr_frame(n=6)
        df["sample"] = [f"{p}-01A" for p in ids[:6]]
        df.loc[2, "G1"] = -1.0
        df.to_parquet(expr, index=False)
    (tmp_path / "cfg.yaml").write_text(
        "cohort: {clinical: clinical.parquet}\n"
        "modalities: [{kind: expression, path: expr.parquet, panel: [G1, G2]}]\n"
        "fusion: {kind: concat}\n"
        "training: {max_epochs: 1}\n"
        "evaluation: {folds: 2, bootstrap: 0}\n"
        "output_dir: runs\n"
    )
    with pytest.raises(SystemExit) as e:
        main(["run", str(tmp_path / "cfg.yaml")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "expr.parquet" in err[0]
    assert ("not a Parquet file" if case == "not_parquet" else "negative") in err[0]


def test_hotspot_codon_match_and_vaf_without_depth(tmp_path: Path) -> None:
    rows = [maf_row(s(0), "KRAS", hgvsp="p.G12C", alt=5, depth=10),
            maf_row(s(0), "EGFR", hgvsp="p.L858R", alt=3, depth=0),  # no usable depth
            maf_row(s(1), "KRAS", hgvsp="p.G120A", alt=4, depth=8),  # codon 120, not 12
            maf_row(s(1), "TP53", hgvsp=None, alt=1, depth=4)]
    path, _ = write_maf(tmp_path, rows)
    m = MutationsModality(MutationsConfig(path=path, panel=["KRAS", "EGFR", "TP53"],
                                          vaf_weighting=True, tmb=False,
                                          hotspots=["KRAS G12", "KRAS G12C", "EGFR L858R"]))
    c = ctx(tmp_path)
    m.prepare(cohort(), c)
    f = m.transform(cohort(), c)
    assert f.loc[P[0]].tolist() == pytest.approx([0.5, 1.0, 0.0, 0.5, 0.5, 1.0])
    assert f.loc[P[1]].tolist() == pytest.approx([0.5, 0.0, 0.25, 0.0, 0.0, 0.0])
