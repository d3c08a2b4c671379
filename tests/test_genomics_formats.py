"""Genomics text inputs as downloaded: GDC MAF (.maf / .maf.gz), cBioPortal mutations and
expression, ``lungfuse convert``, and direct reading that gives the converted features."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lungfuse.core.contracts import ModalityContext
from lungfuse.core.errors import DataError
from lungfuse.plugins.genomics import formats as F
from lungfuse.plugins.genomics.plugin import (
    ExpressionConfig,
    ExpressionModality,
    MutationsConfig,
    MutationsModality,
    looks_like_text_table,
)

P = [f"TCGA-LF-{i:04d}" for i in range(6)]

#: A GDC-like header: the columns lungfuse reads among others it must skip.
GDC_COLUMNS = [
    "Hugo_Symbol", "Entrez_Gene_Id", "Center", "NCBI_Build", "Chromosome", "Start_Position",
    "End_Position", "Strand", "Variant_Classification", "Variant_Type", "Reference_Allele",
    "Tumor_Seq_Allele1", "Tumor_Seq_Allele2", "dbSNP_RS", "Tumor_Sample_Barcode",
    "Matched_Norm_Sample_Barcode", "HGVSc", "HGVSp", "HGVSp_Short", "t_depth", "t_ref_count",
    "t_alt_count", "n_depth",
]
GDC_COMMENTS = ["#version gdc-1.0.0", "#filedate 20240101", "#annotation.spec gdc-1.0.1"]


def ctx(tmp_path: Path) -> ModalityContext:
    return ModalityContext(workdir=tmp_path / "work", progress=False,
                           log=logging.getLogger("lungfuse"))


def cohort(ids: list[str] = P) -> pd.DataFrame:
    return pd.DataFrame({"age": np.arange(len(ids), dtype=float)},
                        index=pd.Index(ids, name="patient_id"))


def call(sample: str, gene: str, cls: str = "Missense_Mutation", hgvsp: str = "p.A1V",
         alt: int | None = 10, depth: int | None = 100, entrez: int = 1) -> dict:
    return {"Tumor_Sample_Barcode": sample, "Hugo_Symbol": gene, "Variant_Classification": cls,
            "HGVSp_Short": hgvsp, "t_alt_count": alt, "t_depth": depth,
            "Entrez_Gene_Id": entrez}


CALLS = [
    call(P[0] + "-01A", "KRAS", hgvsp="p.G12C", alt=30, depth=100, entrez=3845),
    call(P[0] + "-01A", "TP53", cls="Silent", entrez=7157),
    call(P[0] + "-01A", "EGFR", cls="In_Frame_Del", hgvsp="p.E746_A750del", entrez=1956),
    call(P[1] + "-01A", "TP53", cls="Nonsense_Mutation", hgvsp="p.R196*", alt=50, depth=100,
         entrez=7157),
    call(P[1] + "-01A", "KRAS", hgvsp="p.G12D", alt=20, depth=100, entrez=3845),
    call(P[3] + "-01A", "EGFR", hgvsp="p.L858R", alt=None, depth=None, entrez=1956),
    call(P[3] + "-06A", "BRAF", hgvsp="p.V600E", alt=7, depth=70, entrez=673),
]


def maf_text(rows: list[dict], columns: list[str] = GDC_COLUMNS,
             comments: list[str] = GDC_COMMENTS) -> str:
    """A MAF as GDC writes it: '#' lines, a header, tab-separated rows; empty cells for
    missing values and filler in the columns lungfuse does not read."""
    lines = [*comments, "\t".join(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, f"x_{c}")
            cells.append("" if v is None else str(v))
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> Path:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def features(modality, train: pd.DataFrame, all_: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    c = ctx(tmp_path)
    modality.available(all_, c)
    modality.prepare(train, c)
    return modality.transform(all_, c)


def one_line(exc: pytest.ExceptionInfo, name: str, *parts: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and name in msg, msg
    for p in parts:
        assert p in msg, msg
    return msg


# -- GDC MAF -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["calls.maf", "calls.maf.gz"])
def test_gdc_maf_with_version_lines_gives_the_parquet_features(tmp_path: Path, name: str) -> None:
    text = write(tmp_path / name, maf_text(CALLS))
    parquet = tmp_path / "calls.parquet"  # the same calls through the Parquet reader
    pd.DataFrame(CALLS).astype({"t_alt_count": "Int64", "t_depth": "Int64"}).to_parquet(parquet)
    kw = {"panel": ["KRAS", "TP53", "EGFR", "BRAF"], "hotspots": ["KRAS G12C", "EGFR L858R"],
          "vaf_weighting": True, "untested": "wildtype"}
    assert MutationsConfig(path=text, **kw).file_format() == "maf"
    got = features(MutationsModality(MutationsConfig(path=text, **kw)), cohort(P[:4]), cohort(),
                   tmp_path)
    want = features(MutationsModality(MutationsConfig(path=parquet, **kw)), cohort(P[:4]),
                    cohort(), tmp_path)
    pd.testing.assert_frame_equal(got, want)
    # by hand: P0 KRAS G12C at VAF 0.3, EGFR in-frame deletion (weight 0.1), TP53 silent
    assert got.loc[P[0], ["KRAS", "TP53", "EGFR", "KRAS_G12C"]].tolist() == pytest.approx(
        [0.3, 0.0, 0.1, 0.3])
    assert got.loc[P[3], "EGFR"] == 1.0  # a call without depth counts as present


def test_maf_reads_only_the_needed_columns_and_keeps_barcodes_text(tmp_path: Path) -> None:
    rows = [call("000123", "KRAS", entrez=3845), call("4.5e3", "TP53", entrez=7157)]
    path = write(tmp_path / "numeric_ids.maf", maf_text(rows))
    t = F.read_maf(path, dict.fromkeys(F.MAF_REQUIRED, ""), F.MAF_OPTIONAL)
    assert t.column_names == ["Tumor_Sample_Barcode", "Hugo_Symbol", "Variant_Classification",
                              "HGVSp_Short", "t_alt_count", "t_depth", "Entrez_Gene_Id"]
    assert t.column("Tumor_Sample_Barcode").to_pylist() == ["000123", "4.5e3"]
    assert t.schema.field("Entrez_Gene_Id").type == pa.int64()
    m = MutationsModality(MutationsConfig(path=path, barcode_rule="identity", panel=["KRAS"]))
    m.available(cohort(["000123", "4.5e3"]), ctx(tmp_path))
    assert m._src().table().schema.names == ["Tumor_Sample_Barcode", "Hugo_Symbol",
                                             "Variant_Classification"]


def test_maf_comments_without_header_row_is_one_line(tmp_path: Path) -> None:
    text = maf_text(CALLS).splitlines()
    no_header = write(tmp_path / "noheader.maf", "\n".join(GDC_COMMENTS + text[4:]) + "\n")
    with pytest.raises(DataError) as e:
        MutationsModality(MutationsConfig(path=no_header)).available(cohort(), ctx(tmp_path))
    one_line(e, "noheader.maf", "no header row after the 3 '#' comment line(s)", "KRAS 3845")
    only_comments = write(tmp_path / "comments.maf.gz", "\n".join(GDC_COMMENTS) + "\n")
    with pytest.raises(DataError) as e:
        F.read_maf(only_comments, dict.fromkeys(F.MAF_REQUIRED, ""))
    one_line(e, "comments.maf.gz", "3 '#' comment line(s) and no header row")
    header_only = write(tmp_path / "empty.maf", maf_text([]))
    with pytest.raises(DataError) as e:
        F.read_maf(header_only, dict.fromkeys(F.MAF_REQUIRED, ""))
    one_line(e, "empty.maf", "header row but no calls")


def test_maf_missing_columns_are_named(tmp_path: Path) -> None:
    cols = [c for c in GDC_COLUMNS if c != "Hugo_Symbol"]
    path = write(tmp_path / "nohugo.maf", maf_text(CALLS, cols))
    with pytest.raises(DataError) as e:
        MutationsModality(MutationsConfig(path=path)).available(cohort(), ctx(tmp_path))
    one_line(e, "nohugo.maf", "lacks required column(s) Hugo_Symbol", "columns present: Entrez")
    cols = [c for c in GDC_COLUMNS if c != "HGVSp_Short"]
    path = write(tmp_path / "nohgvsp.maf", maf_text(CALLS, cols))
    with pytest.raises(DataError) as e:
        MutationsModality(MutationsConfig(path=path, hotspots=True)).available(cohort(),
                                                                             ctx(tmp_path))
    one_line(e, "nohgvsp.maf", "HGVSp_Short [needed for hotspots]")


def test_maf_bad_count_value_names_the_column(tmp_path: Path) -> None:
    rows = [call(P[0] + "-01A", "KRAS"), {**call(P[1] + "-01A", "TP53"), "t_depth": "deep"}]
    path = write(tmp_path / "badcount.maf", maf_text(rows))
    with pytest.raises(DataError) as e:
        MutationsModality(MutationsConfig(path=path, vaf_weighting=True)).available(
            cohort(), ctx(tmp_path))
    one_line(e, "badcount.maf", "'t_depth'", "deep")
    cut = write(tmp_path / "cut.maf.gz", maf_text(CALLS).rsplit("\t", 12)[0] + "\n")
    with pytest.raises(DataError) as e:  # a download cut short inside the last row
        F.read_maf(cut, dict.fromkeys(F.MAF_REQUIRED, ""))
    one_line(e, "cut.maf.gz", f"Expected {len(GDC_COLUMNS)} columns", "download the file again")


# -- cBioPortal ----------------------------------------------------------------------------
def test_cbio_mutations_file(tmp_path: Path) -> None:
    cols = ["Hugo_Symbol", "Entrez_Gene_Id", "Center", "Tumor_Sample_Barcode",
            "Variant_Classification", "HGVSp_Short", "t_alt_count", "t_depth"]
    rows = [call(P[0] + "-01", "KRAS", hgvsp="p.G12C", alt=5, depth=20),
            call(P[0] + "-01", "STK11", cls="Frame_Shift_Del", alt=None, depth=None),
            call(P[1] + "-01", "KRAS", cls="Silent"),
            call(P[2] + "-01", "TP53", cls="Splice_Site", hgvsp="", alt=3, depth=12)]
    path = write(tmp_path / "data_mutations.txt", maf_text(rows, cols, ["#version 2.4"]))
    cfg = MutationsConfig(path=path, panel=["KRAS", "STK11", "TP53"], vaf_weighting=True,
                          hotspots=["KRAS G12"], tmb=True, capture_mb=1.0, untested="wildtype")
    f = features(MutationsModality(cfg), cohort(P[:3]), cohort(P[:3]), tmp_path)
    assert f.columns.tolist() == ["KRAS", "STK11", "TP53", "KRAS_G12", "TMB"]
    assert f.loc[P[0], ["KRAS", "STK11", "TP53", "KRAS_G12"]].tolist() == pytest.approx(
        [0.25, 1.0, 0.0, 0.25])
    assert f.loc[P[1], ["KRAS", "STK11", "TP53", "KRAS_G12"]].tolist() == [0.0] * 4  # silent
    assert f.loc[P[2], "TP53"] == pytest.approx(0.25)
    tmb = np.log1p([2.0, 0.0, 1.0])  # non-silent calls per Mb, then standardised on train
    want = (tmb - tmb.mean()) / tmb.std(ddof=1)
    assert f["TMB"].to_numpy() == pytest.approx(want, abs=1e-6)


def cbio_matrix(tmp_path: Path, name: str = "data_mrna_seq_v2_rsem.txt",
                ) -> tuple[Path, pd.DataFrame]:
    """A cBioPortal matrix with a symbol on three rows (one NaN), an empty symbol with an
    Entrez id, and a row with neither; returns the file and its rows as a frame."""
    rng = np.random.default_rng(3)
    samples = [f"{p}-01" for p in P]
    symbols = ["EGFR", "KRAS", "TP53", "KRAS", "", "STK11", "KRAS", ""]
    entrez = ["1956", "3845", "7157", "100", "999", "6794", "101", ""]
    values = rng.gamma(2.0, 50.0, size=(len(symbols), len(samples))).round(4)
    values[3, 2] = np.nan
    rows = pd.DataFrame(values, columns=samples)
    rows.insert(0, "Entrez_Gene_Id", entrez)
    rows.insert(0, "Hugo_Symbol", symbols)
    lines = ["\t".join(rows.columns)]
    for _, r in rows.iterrows():
        lines.append("\t".join("NA" if isinstance(v, float) and np.isnan(v) else str(v)
                               for v in r.tolist()))
    return write(tmp_path / name, "\n".join(lines) + "\n"), rows


def test_cbio_expression_duplicate_symbols_mean_per_sample(tmp_path: Path, caplog) -> None:
    path, rows = cbio_matrix(tmp_path)
    # expected, independently: pandas group-by mean (NaN skipped) over the gene id, the
    # Entrez id standing in for an empty symbol, the row without any id dropped
    gene = rows["Hugo_Symbol"].where(rows["Hugo_Symbol"] != "", rows["Entrez_Gene_Id"])
    keep = gene != ""
    want = rows[keep].drop(columns=["Hugo_Symbol", "Entrez_Gene_Id"]).groupby(
        gene[keep].to_numpy(), sort=False).mean().T
    with caplog.at_level(logging.INFO, logger="lungfuse"):
        genes = F.CbioExpression(path).genes()
    assert genes == ["EGFR", "KRAS", "TP53", "999", "STK11"]
    assert "1 gene id(s)" in caplog.text and "3 rows" in caplog.text
    assert "use their Entrez_Gene_Id" in caplog.text and "1 row(s)" in caplog.text
    names, values, stats = F.CbioExpression(path).matrix()
    assert names == list(want.columns)
    np.testing.assert_allclose(values, want.to_numpy(), rtol=1e-12)
    assert (stats.rows, stats.duplicated_genes, stats.duplicated_rows, stats.entrez_fallback,
            stats.dropped) == (8, 1, 3, 1, 1)
    # through the modality: KRAS of sample 2 is the mean of the two rows that have a value
    cfg = ExpressionConfig(path=path, panel=["KRAS", "EGFR"], log2=False, zscore=False)
    assert cfg.file_format() == "cbio"
    f = features(ExpressionModality(cfg), cohort(), cohort(), tmp_path)
    assert f.loc[P[2], "KRAS"] == pytest.approx(float(np.mean(rows.iloc[[1, 6], 4])), rel=1e-6)


def test_cbio_expression_keeps_wanted_rows_before_transposing(tmp_path: Path,
                                                             monkeypatch) -> None:
    samples = [f"{p}-01" for p in P]
    genes = [f"G{i:03d}" for i in range(200)]
    vals = np.arange(len(genes) * len(samples), dtype=float).reshape(len(genes), -1)
    lines = ["Hugo_Symbol\t" + "\t".join(samples)]
    lines += [g + "\t" + "\t".join(str(v) for v in row) for g, row in zip(genes, vals, strict=True)]
    path = write(tmp_path / "wide.txt", "\n".join(lines) + "\n")
    shapes = []
    real = F.combine_duplicate_rows

    def spy(keys, x):
        shapes.append(x.shape)
        return real(keys, x)

    monkeypatch.setattr(F, "combine_duplicate_rows", spy)
    cfg = ExpressionConfig(path=path, panel=["G003", "G150"], log2=False, zscore=False)
    f = features(ExpressionModality(cfg), cohort(), cohort(), tmp_path)
    assert shapes and all(s == (len(samples), 2) for s in shapes)
    assert f.loc[P[1], "G150"] == vals[150, 1]


def test_cbio_expression_missing_hugo_symbol(tmp_path: Path) -> None:
    path, rows = cbio_matrix(tmp_path, "entrez_only.txt")
    text = path.read_text(encoding="utf-8").splitlines()
    write(path, "\n".join(line.split("\t", 1)[1] for line in text) + "\n")
    with pytest.raises(DataError) as e:
        features(ExpressionModality(ExpressionConfig(path=path)), cohort(), cohort(), tmp_path)
    one_line(e, "entrez_only.txt", "no Hugo_Symbol column", "gene_id: entrez")
    cfg = ExpressionConfig(path=path, gene_id="entrez", panel=["1956", "100"], log2=False,
                           zscore=False)
    f = features(ExpressionModality(cfg), cohort(), cohort(), tmp_path)
    assert f.loc[P[0], "100"] == pytest.approx(rows.iloc[3, 2])
    neither = write(tmp_path / "noids.txt", "Gene\tS1\nA\t1\n")
    with pytest.raises(DataError) as e:
        F.CbioExpression(neither)
    one_line(e, "noids.txt", "no header row")


def test_cbio_expression_bad_value_names_the_sample(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.txt", "Hugo_Symbol\tS1\tS2\nEGFR\t1.5\t2\nKRAS\t3\tlow\n")
    with pytest.raises(DataError) as e:
        F.CbioExpression(path).matrix()
    one_line(e, "bad.txt", "column 'S2'", "low")
    twice = write(tmp_path / "twice.txt", "Hugo_Symbol\tS1\tS1\nEGFR\t1\t2\n")
    with pytest.raises(DataError) as e:
        F.CbioExpression(twice)
    one_line(e, "twice.txt", "column 'S1' appears 2 times")


def test_cbio_expression_trailing_tabs_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path / "trailing.txt",
                 "Hugo_Symbol\tS1\tS2\t\r\nEGFR\t1.5\t2\t\r\nKRAS\t3\tNA\t\r\n")
    e = F.CbioExpression(path)
    assert e.samples == ["S1", "S2"] and e.genes() == ["EGFR", "KRAS"]
    names, values, _ = e.matrix(["KRAS"])
    assert names == ["KRAS"] and values[0, 0] == 3.0 and np.isnan(values[1, 0])


def test_format_detection_and_config(tmp_path: Path) -> None:
    maf = write(tmp_path / "calls.dat", maf_text(CALLS))  # no telling suffix: content
    assert looks_like_text_table(maf)
    parquet_named_txt = tmp_path / "table.txt"
    pd.DataFrame(CALLS).to_parquet(parquet_named_txt)
    assert not looks_like_text_table(parquet_named_txt)
    assert MutationsConfig(path=parquet_named_txt).file_format() == "parquet"
    csv = write(tmp_path / "table.csv", "sample,G1\nA,1\n")
    assert not looks_like_text_table(csv)  # the Parquet reader reports it, as before
    expr, _ = cbio_matrix(tmp_path, "expr.tsv.gz")
    assert ExpressionConfig(path=expr).file_format() == "cbio"
    assert ExpressionConfig(path=expr, orientation="genes_x_samples").file_format() == "cbio"
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="layout: long"):
        ExpressionConfig(path=expr, layout="long")


# -- lungfuse convert ----------------------------------------------------------------------
def run_cli(args: list[str]) -> int:
    from lungfuse.core.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    return int(e.value.code)


def test_convert_cli_round_trip(tmp_path: Path, capsys) -> None:
    src = write(tmp_path / "calls.maf.gz", maf_text(CALLS))
    out = tmp_path / "out" / "mutations.parquet"
    assert run_cli(["convert", str(src), str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.isascii() and "(maf): 7 calls, 4 samples, 4 genes" in line and str(out) in line
    t = pq.read_table(out)
    assert t.column_names == ["Tumor_Sample_Barcode", "Hugo_Symbol", "Variant_Classification",
                              "HGVSp_Short", "t_alt_count", "t_depth", "Entrez_Gene_Id"]
    for col in ("Tumor_Sample_Barcode", "Hugo_Symbol", "HGVSp_Short", "t_depth",
                "Entrez_Gene_Id"):
        assert t.column(col).to_pylist() == [r[col] for r in CALLS], col
    assert t.schema.field("t_depth").type == pa.int64()  # an empty cell is null, not 0

    expr, rows = cbio_matrix(tmp_path)
    out = tmp_path / "expression.parquet"
    assert run_cli(["convert", str(expr), str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert "(cbio-expression): 8 gene rows -> 6 samples x 5 genes" in line
    assert "1 duplicated gene ids combined (3 rows" in line and "1 rows without a gene id" in line
    t = pq.read_table(out)
    assert t.column_names == ["sample", "EGFR", "KRAS", "TP53", "999", "STK11"]
    assert t.column("sample").to_pylist() == list(rows.columns[2:])
    kras = rows.iloc[[1, 3, 6], 2:].to_numpy(dtype=float)
    np.testing.assert_allclose(t.column("KRAS").to_numpy(), np.nanmean(kras, axis=0))


def test_convert_cli_bad_input_exits_2_and_leaves_no_file(tmp_path: Path, capsys) -> None:
    text = maf_text(CALLS).splitlines()
    src = write(tmp_path / "noheader.maf", "\n".join(GDC_COMMENTS + text[4:]) + "\n")
    out = tmp_path / "new.parquet"
    assert run_cli(["convert", str(src), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "noheader.maf" in err[0]
    assert "no header row" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".new.parquet*"))
    # a failure half-way (a bad value in the second block) keeps an earlier output intact
    rows = CALLS * 3 + [{**CALLS[0], "t_alt_count": "many"}]
    bad = write(tmp_path / "bad.maf", maf_text(rows))
    old = tmp_path / "old.parquet"
    old.write_bytes(b"earlier output")
    assert run_cli(["convert", str(bad), str(old), "--kind", "cbio-mutations"]) == 2
    assert "'t_alt_count'" in capsys.readouterr().err
    assert old.read_bytes() == b"earlier output"
    assert not list(tmp_path.glob(".old.parquet*"))
    expr, _ = cbio_matrix(tmp_path)
    assert run_cli(["convert", str(expr), str(out), "--kind", "maf"]) == 2
    assert "lacks required column(s) Tumor_Sample_Barcode" in capsys.readouterr().err
    assert not out.exists()
    assert run_cli(["convert", str(tmp_path / "missing.maf"), str(out)]) == 2
    assert "missing.maf: no such file" in capsys.readouterr().err


# -- direct reading == converted reading -----------------------------------------------------
def test_direct_read_equals_converted_features(tiny_cohort: Path, tmp_path: Path) -> None:
    omics = tiny_cohort / "omics"
    # the synthetic cohort's tables written as the text files users download
    maf = pd.read_parquet(omics / "mutations.parquet")
    maf_txt = tmp_path / "cohort.maf.gz"
    with gzip.open(maf_txt, "wt", encoding="utf-8") as fh:
        fh.write("#version 2.4\n")
        maf.to_csv(fh, sep="\t", index=False, na_rep="")
    expr = pd.read_parquet(omics / "expression.parquet").set_index("sample")
    mat = expr.T.astype("float64")
    mat.insert(0, "Entrez_Gene_Id", [str(1000 + i) for i in range(len(mat))])
    mat.insert(0, "Hugo_Symbol", mat.index)
    mat.iloc[1, 0] = mat.index[0]  # a duplicated symbol, combined the same both ways
    expr_txt = tmp_path / "data_mrna_seq_v2_rsem.txt"
    mat.to_csv(expr_txt, sep="\t", index=False, float_format="%.9g")

    maf_pq, expr_pq = tmp_path / "mutations.parquet", tmp_path / "expression.parquet"
    F.convert(maf_txt, maf_pq)
    F.convert(expr_txt, expr_pq)
    mut = {"kind": "mutations", "sequenced_samples": str(omics / "sequenced_samples.txt"),
           "hotspots": True, "vaf_weighting": True, "top_n": 8}
    for i, expr_settings in enumerate(({"selection": "top_variance", "top_n": 20},
                                       {"selection": "panel"})):
        modalities = [{"kind": "expression", **expr_settings}] + ([mut] if i == 0 else [])
        direct = run_features(tiny_cohort, modalities, maf_txt, expr_txt, tmp_path / "a")
        converted = run_features(tiny_cohort, modalities, maf_pq, expr_pq, tmp_path / "b")
        assert direct.keys() == converted.keys() == {m["kind"] for m in modalities}
        for name, f in direct.items():
            assert len(f) > 0 and f.shape[1] > 0 and (f.to_numpy() != 0).any()
            pd.testing.assert_frame_equal(f, converted[name], check_exact=True)


def run_features(cohort_dir: Path, modalities: list[dict], maf: Path, expr: Path,
                 work: Path) -> dict[str, pd.DataFrame]:
    """Each modality's features for fold 0 as ``lungfuse run`` prepares them (the study's
    cohort and splits, fitted on the fold's training patients, every patient transformed)."""
    from lungfuse.core.features import prepare_fold_features
    from lungfuse.core.study import Study

    mods = [{**m, "path": str(maf if m["kind"] == "mutations" else expr)} for m in modalities]
    cfg = {"cohort": {"clinical": str(cohort_dir / "clinical.parquet")}, "modalities": mods,
           "fusion": {"kind": "concat"}, "training": {"max_epochs": 1},
           "evaluation": {"folds": 2, "bootstrap": 0}, "output_dir": str(work / "runs")}
    st = Study.from_config(cfg)
    train = st.fold_ids(0, 0)["train"]
    return {name: prepare_fold_features(name, cls, mcfg, st.cohort, train, seed=0, fold=0,
                                        workdir=work / name, write=False).features
            for name, (cls, mcfg) in st.modalities.items()}
