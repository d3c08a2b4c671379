"""AnnData ``.h5ad`` expression input: obs = samples, var = genes, X or a layer.

An ``.h5ad`` file is HDF5: ``obs`` and ``var`` are data frames (their index holds the
sample and gene ids), ``X`` and each ``layers/<name>`` a samples × genes matrix, dense
(an HDF5 dataset) or sparse (a group of ``data``, ``indices``, ``indptr`` in CSR or CSC
order). It is read the way anndata's backed mode reads ``X``, and no more:

* the file stays open as HDF5 (``h5py``); ``obs``/``var`` ids (and a chosen ``var``
  column) are read with anndata's element reader (:func:`anndata.io.read_elem`), which
  knows every encoding anndata writes (strings, categoricals, older layouts);
* of the matrix, only the wanted genes' columns (dense), or only the wanted samples'
  rows (CSR) / genes' columns (CSC), are read: for CSR and CSC, ``indptr`` gives where
  each row (column) lies in ``data``/``indices`` and only those runs are read.

``anndata.read_h5ad(path, backed="r")`` itself is not used: it loads every layer (and
``obsm``, ``uns``) into memory whole, and its backed sparse indexing fails with the
scipy this project pins. A 20,000-gene file is therefore never read whole to use a
50-gene panel, whichever matrix holds the values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungfuse.core.errors import DataError

#: The first bytes of every HDF5 file (at offset 0 unless the file has a user block).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SPARSE = {"csr_matrix": "csr", "csc_matrix": "csc"}


def sparse_group(elem: Any) -> bool:
    """Whether an ``X``/layer element is a sparse matrix (an HDF5 group), not a dataset."""
    import h5py

    return isinstance(elem, h5py.Group)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class H5adExpression:
    """One ``.h5ad`` file as an expression matrix (samples × genes) read in parts.

    ``layer``: the layer holding the values (None: ``X``). ``var_column``: the ``var``
    column holding the gene ids (None: the var index, ``var_names``).
    """

    def __init__(self, path: Path, layer: str | None = None,
                 var_column: str | None = None) -> None:
        self.path = Path(path)
        self.layer = layer
        self.var_column = var_column
        self._file: Any = None
        self._samples: list[str] | None = None
        self._genes: list[str] | None = None

    # -- opening ---------------------------------------------------------------------
    def _open(self) -> Any:
        if self._file is not None:
            return self._file
        import h5py

        path = self.path
        if not path.is_file():
            raise DataError(f"{path}: expression file not found; check the path in the config")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: expression file is empty (0 bytes); regenerate or "
                            "re-export it")
        not_h5ad = (f"{path}: not an AnnData .h5ad file (no HDF5 signature); write it with "
                    "adata.write_h5ad(...), or give a Parquet table")
        with path.open("rb") as fh:
            head = fh.read(len(HDF5_SIGNATURE))
        if head != HDF5_SIGNATURE and not h5py.is_hdf5(path):
            raise DataError(not_h5ad)
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise DataError(f"{path}: cannot open the .h5ad file ({_first_line(exc)}); it may "
                            "be truncated or damaged: write it again") from exc
        if not all(k in f for k in ("obs", "var")):
            f.close()
            raise DataError(f"{path}: HDF5 file without AnnData's obs and var; write it with "
                            "adata.write_h5ad(...)")
        self._file = f
        return f

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _read_elem(self, elem: Any, what: str) -> Any:
        from anndata.io import read_elem

        try:
            return read_elem(elem)
        except Exception as exc:  # noqa: BLE001 - anndata raises many kinds here
            raise DataError(f"{self.path}: cannot read {what} ({_first_line(exc)}); write the "
                            "file again with a current anndata") from exc

    def _index(self, name: str) -> list[str]:
        """The ids of ``obs`` or ``var`` (their data-frame index), as text."""
        group = self._open()[name]
        key = group.attrs.get("_index") if hasattr(group, "attrs") else None
        if key is not None and key in group:
            values = self._read_elem(group[key], f"the {name} index")
        else:  # older layouts: read the frame
            values = self._read_elem(group, name).index
        return [str(v) for v in np.asarray(values, dtype=object)]

    # -- ids ---------------------------------------------------------------------------
    def samples(self) -> list[str]:
        """Sample ids: ``obs_names`` in file order (raw, unstripped)."""
        if self._samples is None:
            self._samples = self._index("obs")
        return self._samples

    def genes(self) -> list[str]:
        """Gene ids in file order: ``var_names`` or the ``var_column`` values."""
        if self._genes is None:
            if self.var_column is None:
                self._genes = self._index("var")
            else:
                var = self._open()["var"]
                if self.var_column not in var or self.var_column == var.attrs.get("_index"):
                    cols = [str(c) for c in var.attrs.get("column-order", [])]
                    raise DataError(
                        f"{self.path}: var has no column {self.var_column!r} (columns: "
                        f"{', '.join(cols) or 'none'}); set `var_gene_column` to one of them, "
                        "or leave it out to use var_names")
                values = self._read_elem(var[self.var_column], f"var column {self.var_column!r}")
                self._genes = ["" if v is None or v != v else str(v)
                               for v in np.asarray(values, dtype=object)]
        return self._genes

    # -- the matrix --------------------------------------------------------------------
    def _matrix(self) -> Any:
        f = self._open()
        if self.layer is None:
            if "X" not in f:
                layers = sorted(f["layers"]) if "layers" in f else []
                raise DataError(f"{self.path}: the .h5ad file has no X matrix; choose one of its "
                                f"layers with `layer` ({', '.join(layers) or 'it has none'})")
            elem, what = f["X"], "X"
        else:
            layers = sorted(f["layers"]) if "layers" in f else []
            if self.layer not in layers:
                raise DataError(f"{self.path}: no layer {self.layer!r} in the .h5ad file "
                                f"(layers: {', '.join(layers) or 'none'}); fix `layer`, or "
                                "leave it out to read X")
            elem, what = f["layers"][self.layer], f"layer {self.layer!r}"
        sparse = sparse_group(elem)
        shape = tuple(int(n) for n in (elem.attrs.get("shape", ()) if sparse else elem.shape))
        expected = (len(self.samples()), len(self.genes()))
        if shape != expected:
            raise DataError(f"{self.path}: {what} has shape {shape}, but obs × var is "
                            f"{expected}; write the file again")
        data = elem.get("data") if sparse else elem
        kind = getattr(getattr(data, "dtype", None), "kind", "")
        if kind not in "biuf" or not kind:
            raise DataError(f"{self.path}: {what} holds {getattr(data, 'dtype', 'no')} values; "
                            "expression values must be numbers")
        return elem, what

    def read(self, samples: Sequence[str], genes: Sequence[str] | None) -> pd.DataFrame:
        """A samples × genes float64 frame: rows ``samples`` (raw obs names; those in the
        file, in file order), columns ``genes`` in the given order (those in the file;
        all when None). Reads only those rows / columns of the matrix."""
        all_samples, all_genes = self.samples(), self.genes()
        wanted = set(samples)
        rows = np.array([i for i, s in enumerate(all_samples) if s in wanted], dtype=np.int64)
        pos: dict[str, int] = {}
        twice: set[str] = set()
        for j, g in enumerate(all_genes):
            if g in pos:
                twice.add(g)
            pos[g] = j
        names = list(dict.fromkeys(all_genes if genes is None else
                                   [g for g in genes if g in pos]))
        names = [g for g in names if g]
        dup = [g for g in names if g in twice]
        if dup:
            raise DataError(f"{self.path}: gene {dup[0]!r} names {all_genes.count(dup[0])} var "
                            "entries; make the ids unique (adata.var_names_make_unique()) or "
                            "choose another `var_gene_column`")
        cols = np.array([pos[g] for g in names], dtype=np.int64)
        index = pd.Index([all_samples[i] for i in rows])
        if len(rows) == 0 or len(cols) == 0:
            return pd.DataFrame(np.empty((len(rows), len(cols))), index=index, columns=names)
        elem, what = self._matrix()
        try:
            values = self._sparse(elem, what, rows, cols) if sparse_group(elem) \
                else self._dense(elem, rows, cols)
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.path}: could not read {what} ({_first_line(exc)}); the file "
                            "may be truncated or damaged: write it again") from exc
        return pd.DataFrame(values.astype("float64", copy=False), index=index, columns=names)

    @staticmethod
    def _dense(ds: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Selected cells of an HDF5 dataset. HDF5 reads one fancy axis at a time (in
        increasing order): the narrower selection is read from the file, the other
        applied in memory."""
        n_obs, n_var = ds.shape
        order = np.argsort(cols)
        if len(cols) * n_obs <= len(rows) * n_var:  # read the wanted columns
            block = ds[:, np.sort(cols)] if len(cols) < n_var else ds[:, :]
            block = block[rows]
        else:  # read the wanted rows
            block = ds[rows, :] if len(rows) < n_obs else ds[:, :]
            block = block[:, np.sort(cols)]
        out = np.empty_like(block)
        out[:, order] = block
        return out

    def _sparse(self, group: Any, what: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Selected cells of a CSR/CSC group: only the runs of ``data``/``indices`` that
        belong to the wanted rows (CSR) or columns (CSC) are read."""
        import scipy.sparse as sp

        fmt = _SPARSE.get(str(group.attrs.get("encoding-type", "")))
        if fmt is None and "h5sparse_format" in group.attrs:  # anndata < 0.7
            fmt = str(group.attrs["h5sparse_format"])
        if fmt not in ("csr", "csc") or not all(k in group for k in ("data", "indices", "indptr")):
            raise DataError(f"{self.path}: {what} is stored in an encoding lungfuse cannot read "
                            f"({dict(group.attrs).get('encoding-type', 'unknown')}); write it as "
                            "a dense or CSR/CSC matrix")
        n_obs, n_var = (len(self.samples()), len(self.genes()))
        major = rows if fmt == "csr" else cols
        n_minor = n_var if fmt == "csr" else n_obs
        picked = np.sort(major)
        indptr = group["indptr"][:].astype(np.int64)
        starts, ends = indptr[picked], indptr[picked + 1]
        data_parts, index_parts = [], []
        # consecutive majors are one run of the file
        breaks = np.flatnonzero(np.diff(picked) != 1) + 1
        for run in np.split(np.arange(len(picked)), breaks):
            a, b = int(starts[run[0]]), int(ends[run[-1]])
            data_parts.append(group["data"][a:b])
            index_parts.append(group["indices"][a:b])
        new_ptr = np.concatenate([[0], np.cumsum(ends - starts)])
        data = np.concatenate(data_parts) if data_parts else np.empty(0)
        indices = np.concatenate(index_parts) if index_parts else np.empty(0, np.int64)
        if fmt == "csr":
            m = sp.csr_matrix((data, indices, new_ptr), shape=(len(picked), n_minor))
            block = m[:, cols].toarray()  # rows are `rows` sorted = file order
        else:
            m = sp.csc_matrix((data, indices, new_ptr), shape=(n_minor, len(picked)))
            block = m[rows, :].toarray()
            block = block[:, np.searchsorted(picked, cols)]
        return block
