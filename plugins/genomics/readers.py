"""Reading genomics inputs with pyarrow: validation, projection and row filters.

Every reader checks what it reads up front and raises :class:`DataError` with one line
naming the file, the problem and the fix: not a Parquet file, no rows, a missing column
(listing the columns present), a column present twice, a wrong dtype. Tables are read
with column projection and ``in`` filters on sample / gene ids, so a 20,000-gene table
is never read whole when a 50-gene panel is wanted.

Sample and patient ids are compared with surrounding whitespace stripped
(:func:`strip_ids`), as the cohort's patient ids are, so a MAF exported with
``" TCGA-..."`` barcodes loses no calls; the raw spellings still select the rows.
"""

from __future__ import annotations

import logging
from collections import Counter
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
    from lungfuse.core.cohort import unreadable_parquet

    return DataError(unreadable_parquet(path, what, exc))


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
        # a column name present twice makes every scan fail, even one that does not read
        # it: the dataset leaves such columns out (reading one is refused in ``read``)
        counts = Counter(self.schema.names)
        once = pa.schema([f for f in self.schema if counts[f.name] == 1]) \
            if len(counts) != len(self.schema) else self.schema
        self.dataset = ds.FileSystemDataset([frag], once, fmt)

    def read(self, columns: Sequence[str], filter: Any = None) -> pa.Table:  # noqa: A002
        """Only ``columns``, only rows matching ``filter`` (a ``pyarrow.compute`` expression)."""
        for col in dict.fromkeys(columns):
            column_field(self.path, self.schema, col, self.what)  # present once
        try:
            return self.dataset.to_table(columns=list(columns), filter=filter)
        except (pa.ArrowException, OSError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{self.path}: could not read the {self.what} file ({detail}); "
                            "it may be truncated or damaged: export it again") from exc


def column_field(path: Path, schema: pa.Schema, col: str, what: str) -> pa.Field:
    """The field ``col`` of ``schema``; a DataError if it is missing or present twice
    (``pa.Schema.field`` raises a bare KeyError for both)."""
    i = schema.get_field_index(col)  # hashed lookup; -1 when missing or duplicated
    if i >= 0:
        return schema.field(i)
    n = schema.names.count(col)
    if n == 0:
        raise DataError(f"{path}: {what} file has no column {col!r}; check the column names")
    raise DataError(f"{path}: column {col!r} appears {n} times in the {what} file; keep one "
                    "column of each name")


def require_columns(
    path: Path, schema: pa.Schema, columns: dict[str, str], what: str
) -> None:
    """Check that ``columns`` ({name: 'string'|'numeric'}) exist once with the right type."""
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
    t = column_field(path, schema, col, what).type
    ok = is_string_type(t) if kind == "string" else is_numeric_type(t)
    if not ok:
        raise DataError(
            f"{path}: column {col!r} of the {what} file has type {t}, expected "
            f"{_type_name(kind)}; convert the column before export"
        )


def check_numeric_columns(path: Path, schema: pa.Schema, cols: Iterable[str], what: str) -> None:
    bad = [c for c in cols if not is_numeric_type(column_field(path, schema, c, what).type)]
    if bad:
        t = schema.field(bad[0]).type
        raise DataError(
            f"{path}: {len(bad)} column(s) of the {what} file are not numeric (e.g. "
            f"{bad[0]!r} has type {t}); gene columns must hold numbers"
        )


def strip_ids(raw: Iterable[Any]) -> dict[str, list[str]]:
    """``{stripped id: [the raw spellings in the file]}`` of the non-blank text ids in
    ``raw``: ids are matched stripped, and the raw spellings select rows in the file."""
    out: dict[str, list[str]] = {}
    for r in raw:
        if not isinstance(r, str):
            continue
        key = r.strip()
        if key:
            out.setdefault(key, []).append(r)
    return {k: sorted(set(v)) for k, v in out.items()}


def stripped_text(column: pa.ChunkedArray | pa.Array) -> list[str | None]:
    """A text column's values with surrounding whitespace stripped (``str.strip``, as ids
    are matched), nulls as None. A dictionary column's dictionary is stripped once, not
    every row."""
    import numpy as np

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out: list[str | None] = []
    for arr in chunks:
        if pa.types.is_dictionary(arr.type):
            values = np.array([None if v is None else str(v).strip()
                               for v in arr.dictionary.to_pylist()] + [None], dtype=object)
            idx = arr.indices.fill_null(len(values) - 1).to_numpy(zero_copy_only=False)
            out.extend(values[idx].tolist())
        else:
            out.extend(None if v is None else str(v).strip()
                       for v in arr.cast(pa.string()).to_pylist())
    return out


def text_set(values: Iterable[str]) -> pa.Array:
    """A typed value set for ``isin`` filters: an empty Python list would be typed null,
    which pyarrow refuses to compare with a text column."""
    return pa.array(list(values), pa.string())


def raw_spellings(ids: Iterable[str], raw_of: dict[str, list[str]]) -> list[str]:
    """Every raw spelling of the stripped ``ids`` (an id unknown to ``raw_of`` as is)."""
    return [r for i in ids for r in raw_of.get(i, [i])]


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
    try:
        t = pf.read(columns=["sample_id", "patient_id"])
    except (pa.ArrowException, OSError) as exc:
        raise _not_parquet(path, "sample map", exc) from exc
    samples = t.column("sample_id").to_pylist()
    patients = t.column("patient_id").to_pylist()
    out: dict[str, str] = {}
    for s, p in zip(samples, patients, strict=True):
        s, p = (s.strip() if s else ""), (p.strip() if p else "")
        if not s or not p:
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
        sample = sample.strip()
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
