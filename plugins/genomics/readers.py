"""Reading genomics inputs with pyarrow: validation, projection and row filters.

Every reader checks what it reads up front and raises :class:`DataError` with one line
naming the file, the problem and the fix: not a Parquet file, no rows, a missing column
(listing the columns present), a wrong dtype. Tables are read with column projection
and ``in`` filters on sample / gene ids, so a 20,000-gene table is never read whole when
a 50-gene panel is wanted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lungfuse.core.errors import DataError

log = logging.getLogger("lungfuse.genomics")


# -- types ---------------------------------------------------------------------------------
def is_string_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def is_numeric_type(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))


def _type_name(kind: str) -> str:
    return {"string": "text (string)", "numeric": "numeric (integer or float)"}[kind]


# -- opening -------------------------------------------------------------------------------
def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found; check the path in the config")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: {what} file is empty (0 bytes); regenerate or re-export it")


def _not_parquet(path: Path, what: str, exc: Exception) -> DataError:
    return DataError(
        f"{path}: {what} file is not a Parquet file ({type(exc).__name__}); "
        f"convert it, e.g. pandas.read_csv(...).to_parquet(...)"
    )


def open_parquet(path: Path, what: str) -> pq.ParquetFile:
    """Open ``path`` as Parquet, refusing missing, empty and non-Parquet files."""
    path = Path(path)
    _check_file(path, what)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types here
        raise _not_parquet(path, what, exc) from exc
    if pf.metadata.num_rows == 0:
        raise DataError(f"{path}: {what} file has no rows; check that the export worked")
    return pf


class ParquetTable:
    """One Parquet file as a ``pyarrow.dataset`` whose footer is parsed once.

    A 20,000-column footer takes a noticeable fraction of a second to parse; every
    ``pyarrow.parquet.read_table`` call would parse it again. Here the file's metadata is
    read once (``ensure_complete_metadata``) and each :meth:`read` is a projected,
    filtered scan (row groups pruned by statistics, rows filtered by the expression).
    ``dictionary_columns`` are read dictionary-encoded: repetitive text (sample barcodes,
    gene symbols, variant classes) decodes many times faster that way.
    """

    def __init__(self, path: Path, what: str,
                 dictionary_columns: Sequence[str] | None = None) -> None:
        import pyarrow.dataset as ds
        import pyarrow.fs as pafs

        self.path = Path(path)
        self.what = what
        _check_file(self.path, what)
        opts = ds.ParquetReadOptions(dictionary_columns=list(dictionary_columns or []))
        fmt = ds.ParquetFileFormat(read_options=opts)
        try:
            frag = fmt.make_fragment(str(self.path), filesystem=pafs.LocalFileSystem())
            frag.ensure_complete_metadata()
            self.schema: pa.Schema = frag.physical_schema
            self.num_rows = int(frag.metadata.num_rows)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types here
            raise _not_parquet(self.path, what, exc) from exc
        if self.num_rows == 0:
            raise DataError(f"{self.path}: {what} file has no rows; check that the export worked")
        self.dataset = ds.FileSystemDataset([frag], self.schema, fmt)

    def read(self, columns: Sequence[str], filter: Any = None) -> pa.Table:  # noqa: A002
        """Only ``columns``, only rows matching ``filter`` (a ``pyarrow.compute`` expression)."""
        try:
            return self.dataset.to_table(columns=list(columns), filter=filter)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError,
                OSError) as exc:
            raise DataError(f"{self.path}: could not read the {self.what} file ({exc}); "
                            "check the file") from exc


def require_columns(
    path: Path, schema: pa.Schema, columns: dict[str, str], what: str
) -> None:
    """Check that ``columns`` ({name: 'string'|'numeric'}) exist with the right type."""
    names = list(schema.names)
    missing = [c for c in columns if c not in names]
    if missing:
        shown = ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")
        raise DataError(
            f"{path}: {what} file lacks required column(s) {', '.join(missing)}; "
            f"columns present: {shown}"
        )
    for col, kind in columns.items():
        check_type(path, schema, col, kind, what)


def check_type(path: Path, schema: pa.Schema, col: str, kind: str, what: str) -> None:
    t = schema.field(col).type
    ok = is_string_type(t) if kind == "string" else is_numeric_type(t)
    if not ok:
        raise DataError(
            f"{path}: column {col!r} of the {what} file has type {t}, expected "
            f"{_type_name(kind)}; convert the column before export"
        )


def check_numeric_columns(path: Path, schema: pa.Schema, cols: Iterable[str], what: str) -> None:
    bad = [c for c in cols if not is_numeric_type(schema.field(c).type)]
    if bad:
        t = schema.field(bad[0]).type
        raise DataError(
            f"{path}: {len(bad)} column(s) of the {what} file are not numeric (e.g. "
            f"{bad[0]!r} has type {t}); gene columns must hold numbers"
        )


# -- small side files ----------------------------------------------------------------------
def read_lines(path: Path, what: str) -> list[str]:
    """Non-empty, non-comment lines of a text file (e.g. a sequenced-samples list)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the {what} file ({exc}); check the path") from exc
    out = [ln.strip() for ln in text.splitlines()]
    out = [ln for ln in out if ln and not ln.startswith("#")]
    if not out:
        raise DataError(f"{path}: the {what} file lists nothing; one sample id per line")
    return out


def read_sample_map(path: Path) -> dict[str, str]:
    """Parquet table (sample_id, patient_id) → {sample: patient}."""
    pf = open_parquet(path, "sample map")
    require_columns(path, pf.schema_arrow, {"sample_id": "string", "patient_id": "string"},
                    "sample map")
    t = pq.read_table(path, columns=["sample_id", "patient_id"])
    samples = t.column("sample_id").to_pylist()
    patients = t.column("patient_id").to_pylist()
    out: dict[str, str] = {}
    for s, p in zip(samples, patients, strict=True):
        if s is None or p is None:
            continue
        if s in out and out[s] != p:
            raise DataError(f"{path}: sample {s!r} maps to two patients ({out[s]}, {p}); "
                            "keep one row per sample")
        out[s] = p
    return out


def read_gmt(path: Path) -> dict[str, list[str]]:
    """A GMT file: ``name<TAB>description<TAB>gene<TAB>gene ...`` per line."""
    sets: dict[str, list[str]] = {}
    for i, line in enumerate(read_lines(path, "GMT"), start=1):
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) < 3:
            raise DataError(f"{path}: line {i} is not GMT (name, description, genes separated "
                            "by tabs); fix the file")
        genes = list(dict.fromkeys(g for g in parts[2:] if g))
        sets[parts[0]] = genes
    return sets


@cache
def lung_panel(gene_id: str = "symbol") -> tuple[str, ...]:
    """The packaged lung-cancer panel (``data/lung_panel.tsv``) as symbols or Entrez ids."""
    text = (resources.files("lungfuse.plugins.genomics") / "data" / "lung_panel.tsv").read_text(encoding="utf-8")
    rows = [ln.split("\t") for ln in text.splitlines() if ln and not ln.startswith("#")]
    header, body = rows[0], rows[1:]
    col = header.index(gene_id)
    return tuple(r[col].strip() for r in body)


class SampleMapper:
    """Sample id → patient id: a mapping table, or a barcode rule (TCGA: 12 characters)."""

    def __init__(self, sample_map: Path | None, barcode_rule: str) -> None:
        self.table = read_sample_map(sample_map) if sample_map is not None else None
        self.rule = barcode_rule

    def __call__(self, sample: str) -> str | None:
        if self.table is not None:
            return self.table.get(sample)
        return sample[:12] if self.rule == "tcga" else sample

    def group(
        self, samples: Iterable[str], patients: Iterable[str], combine_first: bool
    ) -> tuple[dict[str, list[str]], int]:
        """Samples of each wanted patient (sorted; only the first if ``combine_first``)
        and the number of samples that match no wanted patient."""
        wanted = set(patients)
        by: dict[str, list[str]] = {}
        unmatched = 0
        for s in samples:
            p = self(s)
            if p is None or p not in wanted:
                unmatched += 1
                continue
            by.setdefault(p, []).append(s)
        for ss in by.values():
            ss.sort()
            if combine_first:
                del ss[1:]
        return by, unmatched
