"""AnnData .h5ad expression input: the same features as the equivalent Parquet, only the
needed parts of the matrix read, one-line errors."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from lungfuse.core.contracts import ModalityContext
from lungfuse.core.errors import DataError
from lungfuse.plugins.genomics.examples import GENES, example_expression
from lungfuse.plugins.genomics.h5ad import H5adExpression
from lungfuse.plugins.genomics.plugin import ExpressionConfig, ExpressionModality
from lungfuse.testing import check_modality_plugin

ROOT = Path(__file__).resolve().parents[1]
IDS = [f"TCGA-LF-{i:04d}" for i in range(20)]
TRAIN = IDS[::2]


def write_h5ad(path: Path, table: pd.DataFrame, storage: str = "dense",
               symbols_in: str | None = None) -> Path:
    """``table`` (a `sample` column + one column per gene) as an .h5ad file.

    ``storage``: dense / csr / csc X, or ``layer``: the values in layer "counts" with a
    decoy X. ``symbols_in``: var_names become Ensembl-like ids and the gene symbols go to
    this (categorical) var column.
    """
    import anndata as ad
    import scipy.sparse as sp

    values = table.drop(columns="sample").to_numpy(dtype="float64")
    genes = [str(c) for c in table.columns if c != "sample"]
    # anndata 0.12.6 cannot write pandas 3's default string arrays, so strings are built
    # as objects (pandas warns that this option goes away in pandas 4)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*future.infer_string")
        with pd.option_context("future.infer_string", False):
            var = pd.DataFrame(index=pd.Index(genes, dtype=object))
            if symbols_in is not None:
                var = pd.DataFrame({symbols_in: pd.Categorical(genes)},
                                   index=[f"ENSG{i:011d}" for i in range(len(genes))])
            obs = pd.DataFrame(index=pd.Index(list(table["sample"]), dtype=object))
            x = {"dense": values, "csr": sp.csr_matrix(values), "csc": sp.csc_matrix(values),
                 "layer": np.full_like(values, 7.0)}[storage]
            adata = ad.AnnData(X=x, obs=obs, var=var)
            if storage == "layer":
                adata.layers["counts"] = sp.csr_matrix(values)
            adata.write_h5ad(path)
    return path


def sparse_table(ids: list[str]) -> pd.DataFrame:
    """The example table with most values zero, as single-cell-like data are."""
    t = example_expression(ids)
    genes = [c for c in t.columns if c != "sample"]
    mask = np.random.default_rng(1).random((len(t), len(genes))) < 0.6
    t[genes] = t[genes].mask(mask, 0.0)
    return t


def fitted_features(config: ExpressionConfig, tmp_path: Path) -> pd.DataFrame:
    ctx = ModalityContext(workdir=tmp_path / "work", progress=False,
                          log=logging.getLogger("lungfuse"))
    cohort = pd.DataFrame(index=pd.Index(IDS, name="patient_id"))
    m = ExpressionModality(config)
    m.prepare(cohort.loc[TRAIN], ctx)
    return m.transform(cohort, ctx)


SETTINGS = {
    "panel": {"panel": [*GENES, "MET"]},
    "top_variance": {"selection": "top_variance", "top_n": 7},
    "gmt": {"selection": "gmt"},
}


@pytest.mark.parametrize("storage", ["dense", "csr", "csc", "layer"])
@pytest.mark.parametrize("selection", list(SETTINGS))
def test_h5ad_gives_the_features_of_the_same_parquet(tmp_path: Path, storage: str,
                                                     selection: str) -> None:
    table = sparse_table(IDS)
    table.to_parquet(tmp_path / "expr.parquet", index=False)
    h5 = write_h5ad(tmp_path / "expr.h5ad", table, storage)
    settings = dict(SETTINGS[selection])
    if selection == "gmt":
        gmt = tmp_path / "sets.gmt"
        gmt.write_text("A\tdesc\tEGFR\tKRAS\tTP53\nB\tdesc\tGENE001\tGENE002\tNOPE\n",
                       encoding="utf-8")
        settings["gmt"] = gmt
    extra = {"layer": "counts"} if storage == "layer" else {}
    from_parquet = fitted_features(ExpressionConfig(path=tmp_path / "expr.parquet", **settings),
                                   tmp_path / "p")
    from_h5ad = fitted_features(ExpressionConfig(path=h5, **settings, **extra), tmp_path / "h")
    assert len(from_parquet) == 16 and from_parquet.shape[1] > 1
    pd.testing.assert_frame_equal(from_h5ad, from_parquet, atol=1e-6)


def test_gene_ids_from_a_var_column(tmp_path: Path) -> None:
    table = example_expression(IDS)
    table.to_parquet(tmp_path / "expr.parquet", index=False)
    h5 = write_h5ad(tmp_path / "ens.h5ad", table, "csr", symbols_in="gene_symbols")
    want = fitted_features(ExpressionConfig(path=tmp_path / "expr.parquet", panel=GENES),
                           tmp_path / "p")
    got = fitted_features(ExpressionConfig(path=h5, panel=GENES, var_gene_column="gene_symbols"),
                          tmp_path / "h")
    pd.testing.assert_frame_equal(got, want, atol=1e-6)


def test_h5ad_expression_passes_the_conformance_checks(tmp_path: Path) -> None:
    def config(folder: Path, ids: list[str]) -> ExpressionConfig:
        path = write_h5ad(folder / "expression.h5ad", example_expression(ids), "csr")
        return ExpressionConfig(path=path, panel=[*GENES, "MET"], hidden=[16], embedding_dim=8)

    check_modality_plugin(ExpressionModality, config=config, workdir=tmp_path)


# -- reading only what is needed ---------------------------------------------------------
class ReadSpy:
    """Records the selections read from the datasets of h5py files."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[tuple[str, object, tuple[int, ...]]] = []
        real = h5py.Dataset.__getitem__

        def spy(ds, key, *args, **kwargs):
            out = real(ds, key, *args, **kwargs)
            self.reads.append((ds.name, key, np.shape(out)))
            return out

        monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)

    def cells(self, prefix: str) -> int:
        return sum(int(np.prod(shape)) for name, _, shape in self.reads
                   if name.startswith(prefix))


def wide(n_samples: int, n_genes: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    vals = rng.poisson(0.3, (n_samples, n_genes)).astype("float64")
    df = pd.DataFrame(vals, columns=[f"G{j:04d}" for j in range(n_genes)])
    df.insert(0, "sample", [f"S{i:03d}" for i in range(n_samples)])
    return df


@pytest.mark.parametrize("storage", ["dense", "csr", "csc", "layer"])
def test_only_the_wanted_cells_are_read(tmp_path: Path, storage: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    table = wide(40, 2000)
    path = write_h5ad(tmp_path / "big.h5ad", table, storage)
    reader = H5adExpression(path, layer="counts" if storage == "layer" else None)
    genes = ["G1500", "G0007", "G0300"]
    samples = ["S001", "S002", "S030"]
    reader.samples(), reader.genes()  # ids first: obs/var are read whole, as they must be
    spy = ReadSpy(monkeypatch)
    got = reader.read(samples, genes)
    expected = table.set_index("sample").loc[samples, genes]
    assert list(got.columns) == genes and list(got.index) == samples
    np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())
    matrix = "/layers/counts" if storage == "layer" else "/X"
    read = spy.cells(matrix)
    whole = table.shape[0] * 2000
    assert 0 < read < whole / 20, (storage, read, spy.reads)


# -- errors: one line each ----------------------------------------------------------------
def one_line(exc: pytest.ExceptionInfo[BaseException], *parts: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, msg
    return msg


def test_a_missing_layer_names_the_layers_there(tmp_path: Path) -> None:
    h5 = write_h5ad(tmp_path / "x.h5ad", example_expression(IDS), "layer")
    m = ExpressionModality(ExpressionConfig(path=h5, layer="raw", panel=GENES))
    cohort = pd.DataFrame(index=pd.Index(IDS, name="patient_id"))
    ctx = ModalityContext(workdir=tmp_path / "w", progress=False)
    with pytest.raises(DataError) as info:
        m.prepare(cohort, ctx)
    one_line(info, "x.h5ad", "no layer 'raw'", "layers: counts")


def test_genes_not_in_var_are_one_line(tmp_path: Path) -> None:
    h5 = write_h5ad(tmp_path / "ens.h5ad", example_expression(IDS), "dense",
                    symbols_in="gene_symbols")
    cohort = pd.DataFrame(index=pd.Index(IDS, name="patient_id"))
    ctx = ModalityContext(workdir=tmp_path / "w", progress=False)
    with pytest.raises(DataError) as info:  # symbols asked, Ensembl ids in var_names
        ExpressionModality(ExpressionConfig(path=h5, panel=GENES)).prepare(cohort, ctx)
    one_line(info, "ens.h5ad", "none of the 8 panel genes", "ENSG", "var_gene_column")
    with pytest.raises(DataError) as info:
        ExpressionModality(ExpressionConfig(path=h5, panel=GENES, var_gene_column="symbol")
                           ).prepare(cohort, ctx)
    one_line(info, "var has no column 'symbol'", "gene_symbols")


@pytest.mark.parametrize("content", ["parquet", "text", "hdf5"])
def test_a_file_that_is_not_h5ad_is_one_line(tmp_path: Path, content: str) -> None:
    path = tmp_path / "expr.h5ad"
    if content == "parquet":
        example_expression(IDS).to_parquet(path, index=False)
        expected = "not an AnnData .h5ad file"
    elif content == "text":
        path.write_text("sample,EGFR\nS1,3\n", encoding="utf-8")
        expected = "not an AnnData .h5ad file"
    else:
        with h5py.File(path, "w") as f:
            f["matrix"] = np.zeros((2, 2))
        expected = "without AnnData's obs and var"
    cohort = pd.DataFrame(index=pd.Index(IDS, name="patient_id"))
    ctx = ModalityContext(workdir=tmp_path / "w", progress=False)
    with pytest.raises(DataError) as info:
        ExpressionModality(ExpressionConfig(path=path, panel=GENES)).available(cohort, ctx)
    one_line(info, "expr.h5ad", expected)


def test_h5ad_settings_are_refused_for_parquet_and_parquet_settings_for_h5ad(
        tmp_path: Path) -> None:
    pq = tmp_path / "e.parquet"
    example_expression(IDS).to_parquet(pq, index=False)
    h5 = write_h5ad(tmp_path / "e.h5ad", example_expression(IDS))
    with pytest.raises(ValidationError, match="apply to .h5ad input only"):
        ExpressionConfig(path=pq, layer="counts")
    with pytest.raises(ValidationError, match="orientation"):
        ExpressionConfig(path=h5, layout="long")
    assert ExpressionConfig(path=h5).file_format() == "h5ad"
    assert ExpressionConfig(path=pq, format="h5ad").file_format() == "h5ad"


def test_anndata_imports_from_the_repository_root() -> None:
    """No folder of the repository shadows anndata's top-level ``testing`` package."""
    code = "import anndata, testing; print(testing.__path__[0])"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    where = Path(res.stdout.strip().splitlines()[-1]).resolve()
    assert ROOT not in where.parents or ".venv" in where.parts, where
