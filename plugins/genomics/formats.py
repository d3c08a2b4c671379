"""Genomics tables as they are downloaded: GDC MAF and cBioPortal text files.

Formats read
    *GDC MAF* (``.maf``, ``.maf.gz``) and *cBioPortal mutations* (``data_mutations.txt``):
    tab-separated, optional leading ``#`` lines (``#version 2.4``), a header row of MAF
    column names (100+ in GDC files), one call per row.

    *cBioPortal expression* (``data_mrna_seq_v2_rsem.txt``): genes x samples, first the
    ``Hugo_Symbol`` and/or ``Entrez_Gene_Id`` columns, then one numeric column per sample.

How they are read
    pyarrow's streaming CSV reader (:func:`pyarrow.csv.open_csv`) with the header parsed
    here (so the ``#`` lines are skipped by count and a missing header is one clear
    line), ``include_columns`` for projection and explicit column types: barcodes and gene
    ids stay text, counts are integers, expression values float64. gzip is detected from
    the first bytes, not the name. Only the columns the mutations modality uses are read
    from a MAF; of an expression file only the wanted genes' rows are kept, and the
    values never become Python objects (one text key per gene row does).

Duplicate genes in an expression file
    Real cBioPortal files name some Hugo symbols on several rows (one symbol, several
    Entrez ids). Their rows are combined into one gene by the **mean of the rows, per
    sample** (NaN ignored; NaN when every row is NaN). The rule was chosen over "keep the
    row with the highest mean expression" because it uses no other sample's values: a
    sample's feature does not depend on which other samples (test patients among them)
    are in the file, so nothing crosses a train/test split. The count is logged and
    reported by ``lungfuse convert``. A row with an empty symbol falls back to its
    Entrez id (as text); a row with neither is dropped (both counted). With
    ``gene_id: entrez`` the Entrez id is the gene and rows without one are dropped.

The modalities read these files directly (:class:`TextMutationSource`,
:class:`TextExpressionSource`) or ``lungfuse convert`` writes the Parquet layout they read
fastest (:func:`convert`); both go through the same readers, so the features agree.
"""

from __future__ import annotations

import gzip
import logging
import re
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from lungfuse.core.errors import DataError
from lungfuse.plugins.genomics import readers as R
from lungfuse.plugins.genomics.features import (
    ALT,
    CLASS,
    DEPTH,
    GENE,
    HGVSP,
    SAMPLE,
    ExpressionSource,
    MutationSource,
)

log = logging.getLogger("lungfuse.genomics")

ENTREZ = "Entrez_Gene_Id"
HUGO = GENE  # "Hugo_Symbol": the gene column of MAFs and of cBioPortal matrices
MAF_WHAT = "mutation (MAF)"
EXPR_WHAT = "expression (cBioPortal)"

#: The MAF columns lungfuse reads, with their types (the synthetic cohort's layout).
MAF_TYPES: dict[str, pa.DataType] = {
    SAMPLE: pa.string(), GENE: pa.string(), CLASS: pa.string(), HGVSP: pa.string(),
    ALT: pa.int64(), DEPTH: pa.int64(), ENTREZ: pa.int64(),
}
MAF_REQUIRED = (SAMPLE, GENE, CLASS)
MAF_OPTIONAL = (HGVSP, ALT, DEPTH, ENTREZ)
#: Column names that mark a header row (any one of them is enough).
KNOWN_COLUMNS = frozenset(MAF_TYPES) | {
    "Chromosome", "Start_Position", "End_Position", "Variant_Type", "Reference_Allele",
    "Tumor_Seq_Allele1", "Tumor_Seq_Allele2", "NCBI_Build", "Center", "Strand",
    "Matched_Norm_Sample_Barcode", "Cytoband",
}
#: Cell values read as missing (text and numbers).
NULL_VALUES = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "."]
KINDS = ("maf", "cbio-mutations", "cbio-expression")
GZIP_MAGIC = b"\x1f\x8b"
_BLOCK = 1 << 24  # bytes per parsed block: a few large batches rather than many small ones
_MAX_HEADER = 1 << 24  # a header line longer than this is not a table header


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _shown(names: Sequence[str], n: int = 20) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


# -- the header ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TextHeader:
    """Where the table starts in a text file and what its columns are."""

    path: Path
    gzipped: bool
    skip: int  # raw lines before the header row ('#' comments and blank lines)
    comments: int  # of which '#' lines
    columns: tuple[str, ...]


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with the gzip magic bytes."""
    with Path(path).open("rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def read_header(path: Path, what: str) -> TextHeader:
    """Skip the leading ``#`` and blank lines of ``path`` and parse the header row.

    One DataError line when the file is missing, empty, not text, has nothing after its
    comments, or when the first line after them names no known column (the header row
    is missing and a data row comes first)."""
    path = Path(path)
    R._check_file(path, what)
    gz = is_gzip(path)
    skip = comments = 0
    header: str | None = None
    try:
        opener = gzip.open if gz else open
        with opener(path, "rt", encoding="utf-8") as fh:
            while True:
                line = fh.readline(_MAX_HEADER)
                if not line:
                    break
                if len(line) >= _MAX_HEADER and not line.endswith("\n"):
                    raise DataError(f"{path}: the first line of the {what} file is longer than "
                                    f"{_MAX_HEADER >> 20} MiB; it is not a tab-separated table")
                text = line.rstrip("\r\n")
                if text.startswith("#"):
                    skip += 1
                    comments += 1
                elif not text.strip():
                    skip += 1
                else:
                    header = text
                    break
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        kind = "gzip-compressed text" if gz else "UTF-8 text"
        raise DataError(f"{path}: cannot read the {what} file as {kind} ({_first_line(exc)}); "
                        "check that the download completed") from exc
    if header is None:
        raise DataError(f"{path}: the {what} file has {comments} '#' comment line(s) and no "
                        "header row or data after them; download it again")
    columns = tuple(c.strip() for c in header.split("\t"))
    if not KNOWN_COLUMNS & set(columns):
        start = header[:60].replace("\t", " ")
        raise DataError(
            f"{path}: no header row after the {comments} '#' comment line(s) of the {what} "
            f"file: the first line ('{start}...') names none of the expected columns "
            f"(Hugo_Symbol, Entrez_Gene_Id, Tumor_Sample_Barcode, ...); restore the header "
            "row or download the file again")
    return TextHeader(path, gz, skip, comments, columns)


def detect_kind(header: TextHeader) -> str:
    """``"maf"`` (a header with Tumor_Sample_Barcode) or ``"cbio-expression"`` (gene-id
    columns and no barcode column); anything else is one DataError line."""
    cols = set(header.columns)
    if SAMPLE in cols:
        return "maf"
    if cols & {HUGO, ENTREZ}:
        return "cbio-expression"
    raise DataError(f"{header.path}: cannot tell the kind of table from its header (columns: "
                    f"{_shown(list(header.columns), 8)}); pass --kind "
                    "maf|cbio-mutations|cbio-expression")


def _no_duplicates(header: TextHeader, names: Sequence[str], what: str) -> None:
    counts: dict[str, int] = {}
    for c in header.columns:
        counts[c] = counts.get(c, 0) + 1
    for c in names:
        if counts.get(c, 0) > 1:
            raise DataError(f"{header.path}: column {c!r} appears {counts[c]} times in the "
                            f"header of the {what} file; keep one column of each name")


# -- streaming -----------------------------------------------------------------------------
def _open_csv(header: TextHeader, include: Sequence[str],
              types: Mapping[str, pa.DataType], what: str) -> pcsv.CSVStreamingReader:
    """A streaming reader of ``include`` (in that order) with ``types``."""
    read = pcsv.ReadOptions(column_names=list(header.columns), skip_rows=header.skip + 1,
                            block_size=_BLOCK)
    parse = pcsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False,
                              escape_char=False, newlines_in_values=False,
                              ignore_empty_lines=True)
    convert = pcsv.ConvertOptions(column_types=dict(types), include_columns=list(include),
                                  null_values=NULL_VALUES, strings_can_be_null=True)
    stream = pa.input_stream(str(header.path), compression="gzip" if header.gzipped else None)
    try:
        return pcsv.open_csv(stream, read_options=read, parse_options=parse,
                             convert_options=convert)
    except (pa.ArrowException, OSError) as exc:
        stream.close()
        raise _parse_error(header, what, exc) from exc


def _parse_error(header: TextHeader, what: str, exc: BaseException) -> DataError:
    """One line for a pyarrow parse / conversion error, the column named where known."""
    detail = _first_line(exc)
    m = re.search(r"CSV column #(\d+)", detail)
    if m and int(m.group(1)) < len(header.columns):
        detail = detail.replace(m.group(0), f"column {header.columns[int(m.group(1))]!r}")
    return DataError(f"{header.path}: cannot read the {what} file ({detail}); fix that line "
                     "or download the file again")


def _batches(reader: pcsv.CSVStreamingReader, header: TextHeader,
             what: str) -> Iterator[pa.RecordBatch]:
    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            yield batch
    except (pa.ArrowException, OSError, EOFError, zlib.error) as exc:
        raise _parse_error(header, what, exc) from exc
    finally:
        reader.close()


# -- mutations -----------------------------------------------------------------------------
def open_maf(path: Path, required: Mapping[str, str], optional: Sequence[str] = (),
             what: str = MAF_WHAT) -> tuple[TextHeader, pcsv.CSVStreamingReader]:
    """Stream the ``required`` columns ({name: why, e.g. '' or ' [needed for hotspots]'})
    and those of ``optional`` the file has, typed as :data:`MAF_TYPES`."""
    header = read_header(path, what)
    missing = [c for c in required if c not in header.columns]
    if missing:
        why = "".join(dict.fromkeys(required[c] for c in missing))
        raise DataError(f"{header.path}: {what} file lacks required column(s) "
                        f"{', '.join(missing)}{why}; columns present: "
                        f"{_shown(list(header.columns), 30)}")
    cols = list(required) + [c for c in optional if c in header.columns and c not in required]
    _no_duplicates(header, cols, what)
    return header, _open_csv(header, cols, {c: MAF_TYPES[c] for c in cols}, what)


def read_maf(path: Path, required: Mapping[str, str], optional: Sequence[str] = (),
             what: str = MAF_WHAT) -> pa.Table:
    """The projected MAF as one in-memory table (see :func:`open_maf`)."""
    header, reader = open_maf(path, required, optional, what)
    schema = reader.schema
    table = pa.Table.from_batches(list(_batches(reader, header, what)), schema=schema)
    if table.num_rows == 0:
        raise DataError(f"{header.path}: the {what} file has a header row but no calls; check "
                        "that the export worked")
    return table


class MemoryTable:
    """An in-memory table with the ``read(columns, filter)`` of
    :class:`~.readers.ParquetTable`, so the feature code reads it the same way."""

    def __init__(self, path: Path, what: str, table: pa.Table) -> None:
        self.path = Path(path)
        self.what = what
        self.table = table
        self.schema: pa.Schema = table.schema
        self.num_rows = table.num_rows

    def read(self, columns: Sequence[str], filter: Any = None) -> pa.Table:  # noqa: A002
        """Rows matching ``filter`` (an expression, which may use other columns), then only
        ``columns``."""
        t = self.table.filter(filter) if filter is not None else self.table
        return t.select(list(columns))


class TextMutationSource(MutationSource):
    """:class:`~.features.MutationSource` over a text MAF: only the columns the config
    needs are read (hotspots add HGVSp_Short, VAF weighting t_alt_count / t_depth)."""

    def table(self) -> Any:
        if self._table is None:
            required = {SAMPLE: "", GENE: "", CLASS: ""}
            if self.cfg.hotspot_list():
                required[HGVSP] = " [needed for hotspots]"
            if self.cfg.vaf_weighting:
                required |= {ALT: " [needed for vaf_weighting]",
                             DEPTH: " [needed for vaf_weighting]"}
            self._table = MemoryTable(self.path, MAF_WHAT, read_maf(self.path, required))
        return self._table


# -- expression ----------------------------------------------------------------------------
@dataclass
class GeneRowStats:
    """What happened to the gene rows of an expression file."""

    rows: int = 0  # gene rows in the file
    entrez_fallback: int = 0  # rows without a symbol that use their Entrez id
    dropped: int = 0  # rows without a usable id
    duplicated_genes: int = 0  # gene ids on more than one row
    duplicated_rows: int = 0  # the rows of those genes
    examples: list[str] = field(default_factory=list)  # a few duplicated ids


def combine_duplicate_rows(keys: Sequence[str], x: np.ndarray,
                           ) -> tuple[list[str], np.ndarray, int, int, list[str]]:
    """Columns of ``x`` (samples x gene rows) with the same key become one column: the
    per-sample mean of those rows, NaN ignored (NaN if all are NaN).

    Returns (genes in order of first appearance, samples x genes float64 in Fortran order
    so each gene's column is contiguous, number of duplicated genes, number of their rows,
    a few duplicated gene ids)."""
    n = len(keys)
    if n == 0:
        return [], np.empty((x.shape[0], 0), order="F"), 0, 0, []
    uniq, first, inverse, counts = np.unique(np.asarray(keys, dtype=object), return_index=True,
                                             return_inverse=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    col = rank[inverse.reshape(-1)]  # output column of each input row
    genes = [str(g) for g in uniq[order]]
    out = np.empty((x.shape[0], len(genes)), dtype="float64", order="F")
    single = counts[inverse.reshape(-1)] == 1
    out[:, col[single]] = x[:, single]
    dup_genes = np.flatnonzero(counts[order] > 1)  # output columns with several rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN, as documented
        for g in dup_genes:
            out[:, g] = np.nanmean(x[:, col == g], axis=1)
    n_rows = int(counts[counts > 1].sum())
    return genes, out, len(dup_genes), n_rows, [genes[g] for g in dup_genes[:5]]


class CbioExpression:
    """A cBioPortal expression matrix (genes x samples) read as samples x genes.

    ``gene_id``: ``symbol`` (Hugo_Symbol, Entrez id where the symbol is empty) or
    ``entrez``. ``sample_column``: the name the sample ids get in the tables :meth:`read`
    returns. :meth:`read` has the signature of :meth:`~.readers.ParquetTable.read` over a
    wide samples x genes table, so :class:`~.features.ExpressionSource` reads it as such.
    """

    def __init__(self, path: Path, gene_id: str = "symbol", sample_column: str = "sample",
                 what: str = EXPR_WHAT) -> None:
        self.path = Path(path)
        self.what = what
        self.gene_id = gene_id
        self.sample_column = sample_column
        h = read_header(self.path, what)
        cols = list(h.columns)
        if SAMPLE in cols:
            raise DataError(f"{self.path}: this is a mutation (MAF) file (it has "
                            f"{SAMPLE}), not an expression matrix; give it to the mutations "
                            "modality, or convert it with --kind maf")
        wanted = HUGO if gene_id == "symbol" else ENTREZ
        if wanted not in cols:
            other = ENTREZ if gene_id == "symbol" else HUGO
            fix = (f"set gene_id: {'entrez' if gene_id == 'symbol' else 'symbol'} to use its "
                   f"{other} column" if other in cols else
                   f"the first columns must be {HUGO} and/or {ENTREZ}")
            raise DataError(f"{self.path}: the {what} file has no {wanted} column (columns: "
                            f"{_shown(cols, 8)}); {fix}")
        self.id_columns = [c for c in (HUGO, ENTREZ) if c in cols]
        if gene_id == "entrez":
            self.id_columns = [ENTREZ]
        # an unnamed column (a trailing tab on every line) holds no sample
        self.samples = [c for c in cols if c not in (HUGO, ENTREZ) and c]
        if not self.samples:
            raise DataError(f"{self.path}: the {what} file has no sample columns after "
                            f"{', '.join(self.id_columns)}; one column per sample is expected")
        _no_duplicates(h, [*self.id_columns, *self.samples], what)
        if sample_column in self.samples:
            raise DataError(f"{self.path}: a sample is named {sample_column!r}, which the "
                            "reader uses for the sample ids; rename that column")
        self.header = h
        self.stats: GeneRowStats | None = None
        self._genes: list[str] | None = None
        self._schema: pa.Schema | None = None
        self._cache: tuple[tuple[str, ...] | None, list[str], np.ndarray, GeneRowStats] | None = None

    # -- streaming ---------------------------------------------------------------------
    def _keys(self, batch: pa.RecordBatch) -> tuple[pa.Array, int]:
        """Each row's gene id (null: no usable id) and how many fell back to Entrez."""
        def clean(name: str) -> pa.Array:
            arr = pc.utf8_trim_whitespace(batch.column(name))
            return pc.if_else(pc.equal(arr, "").fill_null(True), pa.scalar(None, pa.string()),
                              arr)

        if self.gene_id == "entrez":
            return clean(ENTREZ), 0
        sym = clean(HUGO)
        if ENTREZ not in self.id_columns:
            return sym, 0
        ent = clean(ENTREZ)
        fallback = pc.and_(pc.is_null(sym), pc.is_valid(ent))
        return pc.coalesce(sym, ent), int(pc.sum(fallback).as_py() or 0)

    def _scan(self, with_values: bool, wanted: Sequence[str] | None,
              ) -> tuple[list[str], np.ndarray, GeneRowStats]:
        """Stream the file: keys (and samples x rows values) of the rows whose id is in
        ``wanted`` (all rows with an id when None), with the file's row counts."""
        include = list(self.id_columns) + (self.samples if with_values else [])
        types = {c: pa.string() for c in self.id_columns}
        types |= {s: pa.float64() for s in self.samples} if with_values else {}
        reader = _open_csv(self.header, include, types, self.what)
        value_set = None if wanted is None else pa.array(sorted(set(wanted)), pa.string())
        stats = GeneRowStats()
        keys: list[str] = []
        blocks: list[np.ndarray] = []
        n_id = len(self.id_columns)
        for batch in _batches(reader, self.header, self.what):
            k, fallback = self._keys(batch)
            stats.rows += batch.num_rows
            stats.entrez_fallback += fallback
            stats.dropped += k.null_count
            mask = pc.is_valid(k)
            if value_set is not None:
                mask = pc.and_(mask, pc.is_in(k, value_set=value_set))
            if not pc.any(mask).as_py():
                continue
            keys.extend(k.filter(mask).to_pylist())
            if with_values:
                b = batch.filter(mask)
                vals = np.empty((len(self.samples), b.num_rows), dtype="float64")
                for j in range(len(self.samples)):
                    vals[j] = b.column(n_id + j).to_numpy(zero_copy_only=False)
                blocks.append(vals)
        if stats.rows == 0:
            raise DataError(f"{self.path}: the {self.what} file has a header row but no gene "
                            "rows; check that the export worked")
        x = np.hstack(blocks) if blocks else np.empty((len(self.samples), 0))
        return keys, x, stats

    def _log(self, stats: GeneRowStats) -> None:
        if stats.duplicated_genes:
            log.warning("expression: %d gene id(s) of %s name several rows (%d rows, e.g. %s); "
                        "each sample's value is the mean of those rows", stats.duplicated_genes,
                        self.path, stats.duplicated_rows, ", ".join(stats.examples))
        if stats.entrez_fallback:
            log.warning("expression: %d row(s) of %s have no Hugo_Symbol and use their "
                        "Entrez_Gene_Id as the gene id", stats.entrez_fallback, self.path)
        if stats.dropped:
            log.warning("expression: %d row(s) of %s have no gene id (%s) and are dropped",
                        stats.dropped, self.path, " / ".join(self.id_columns))

    # -- what the feature code asks ----------------------------------------------------
    def genes(self) -> list[str]:
        """Gene ids in order of first appearance (reads the id columns only, once)."""
        if self._genes is None:
            keys, _, stats = self._scan(False, None)
            counts: dict[str, int] = {}
            for k in keys:
                counts[k] = counts.get(k, 0) + 1
            dups = [k for k, n in counts.items() if n > 1]
            stats.duplicated_genes = len(dups)
            stats.duplicated_rows = sum(counts[k] for k in dups)
            stats.examples = dups[:5]
            if self.sample_column in counts:
                raise DataError(f"{self.path}: a gene is named {self.sample_column!r}, which "
                                "the reader uses for the sample ids; rename that gene")
            self._genes = list(counts)
            self.stats = stats
            self._log(stats)
        return self._genes

    @property
    def schema(self) -> pa.Schema:
        """The samples x genes table this file reads as (built once: the feature code asks
        for it often, and 20,000 fields take a moment)."""
        if self._schema is None:
            self._schema = pa.schema([(self.sample_column, pa.string())]
                                     + [(g, pa.float64()) for g in self.genes()])
        return self._schema

    def matrix(self, genes: Sequence[str] | None = None,
               ) -> tuple[list[str], np.ndarray, GeneRowStats]:
        """(gene ids, samples x genes values, row counts) for ``genes`` (all when None):
        only those genes' rows are kept while streaming, duplicates combined.

        The last result is kept: the folds of a run ask for the same genes, and
        ``top_variance`` reads every gene in ``prepare``, then a subset in ``transform``,
        which the whole-file result serves without parsing the file again."""
        key = None if genes is None else tuple(sorted(set(genes)))
        if self._cache is not None and self._cache[0] in (key, None):
            _, names, values, stats = self._cache
            if key is not None and self._cache[0] is None:
                wanted = set(key)
                pos = [j for j, g in enumerate(names) if g in wanted]
                names, values = [names[j] for j in pos], values[:, pos]
            return names, values, stats
        keys, x, stats = self._scan(True, genes)
        names, values, ndup, nrows, examples = combine_duplicate_rows(keys, x)
        if genes is None:  # the whole file: these are the file's counts
            stats.duplicated_genes, stats.duplicated_rows, stats.examples = ndup, nrows, examples
            self.stats = stats
        stats = self.stats or stats
        self._cache = (key, names, values, stats)
        return names, values, stats

    def read(self, columns: Sequence[str], filter: Any = None) -> pa.Table:  # noqa: A002
        """``columns`` (the sample column and/or genes) of the samples x genes table,
        rows matching ``filter``."""
        scol = self.sample_column
        want = [c for c in columns if c != scol]
        arrays: dict[str, pa.Array] = {scol: pa.array(self.samples, pa.string())}
        if want:
            names, values, _ = self.matrix(want)
            pos = {g: j for j, g in enumerate(names)}
            absent = [g for g in want if g not in pos]
            if absent:
                raise DataError(f"{self.path}: the {self.what} file has no gene {absent[0]!r}")
            for g in want:
                arrays[g] = pa.array(values[:, pos[g]], pa.float64())
        t = pa.table({c: arrays[c] for c in dict.fromkeys([scol, *want])})
        if filter is not None:
            t = t.filter(filter)
        return t.select(list(columns))


class TextExpressionSource(ExpressionSource):
    """:class:`~.features.ExpressionSource` over a cBioPortal expression file: read as a
    wide samples x genes table (the transposition is the reader's), whatever ``layout`` /
    ``orientation`` say."""

    def __init__(self, config: Any) -> None:
        super().__init__(config.model_copy(update={"layout": "wide",
                                                   "orientation": "samples_x_genes"}))

    def schema(self) -> tuple[pa.Schema, str]:
        if self._table is None:
            self._table = CbioExpression(self.path, self.cfg.gene_id,  # type: ignore[assignment]
                                         self.cfg.sample_column)
            self._layout = "wide"
        return self._table.schema, "wide"


# -- convert -------------------------------------------------------------------------------
@dataclass
class Converted:
    """What :func:`convert` wrote."""

    kind: str
    output: Path
    rows: int  # calls (mutations) or gene rows read (expression)
    samples: int
    genes: int
    stats: GeneRowStats | None = None

    def line(self, source: Path) -> str:
        """The one-line summary ``lungfuse convert`` prints (ASCII only)."""
        if self.stats is None:
            return (f"{source} ({self.kind}): {self.rows} calls, {self.samples} samples, "
                    f"{self.genes} genes -> {self.output}")
        s = self.stats
        extra = [f"{s.duplicated_genes} duplicated gene ids combined ({s.duplicated_rows} "
                 "rows, mean per sample)"]
        if s.entrez_fallback:
            extra.append(f"{s.entrez_fallback} rows without a symbol use the Entrez id")
        if s.dropped:
            extra.append(f"{s.dropped} rows without a gene id dropped")
        return (f"{source} ({self.kind}): {s.rows} gene rows -> {self.samples} samples x "
                f"{self.genes} genes, {'; '.join(extra)} -> {self.output}")


def convert(source: Path, output: Path, kind: str = "auto",
            gene_id: str = "symbol") -> Converted:
    """Convert a text MAF / cBioPortal file to the Parquet layout the modalities read.

    Mutations: the MAF columns lungfuse uses (:data:`MAF_REQUIRED`, and those of
    :data:`MAF_OPTIONAL` present), streamed batch by batch into the Parquet file.
    Expression: wide samples x genes, a ``sample`` column and one float64 column per gene
    (duplicates combined, see the module docstring). Written atomically: on any error no
    output file is left (an earlier one stays as it was).
    """
    from lungfuse.core.atomic import atomic_path

    source, output = Path(source), Path(output)
    if not source.is_file():
        raise DataError(f"{source}: no such file{' (a folder)' if source.is_dir() else ''}; "
                        "give the downloaded .maf(.gz) or cBioPortal .txt file")
    if output.exists() and output.resolve() == source.resolve():
        raise DataError(f"{output}: the output would overwrite the input; choose another name")
    if output.is_dir():
        raise DataError(f"{output}: is a folder; give the output file name, e.g. "
                        f"{output / 'mutations.parquet'}")
    if kind == "auto":
        kind = detect_kind(read_header(source, "input"))
    if kind not in KINDS:
        raise DataError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "cbio-expression":
        return _convert_expression(source, output, gene_id, atomic_path)
    return _convert_mutations(source, output, kind, atomic_path)


def _convert_mutations(source: Path, output: Path, kind: str, atomic_path: Any) -> Converted:
    import pyarrow.parquet as pq

    header, reader = open_maf(source, dict.fromkeys(MAF_REQUIRED, ""), MAF_OPTIONAL)
    rows = 0
    samples: set[str] = set()
    genes: set[str] = set()
    with atomic_path(output) as tmp, pq.ParquetWriter(tmp, reader.schema,
                                                      compression="zstd") as writer:
        for batch in _batches(reader, header, MAF_WHAT):
            writer.write_batch(batch)
            rows += batch.num_rows
            samples.update(v for v in pc.unique(batch.column(SAMPLE)).to_pylist() if v)
            genes.update(v for v in pc.unique(batch.column(GENE)).to_pylist() if v)
        if rows == 0:
            raise DataError(f"{source}: the {MAF_WHAT} file has a header row but no calls; "
                            "nothing to convert")
    return Converted(kind, output, rows, len(samples), len(genes))


def _convert_expression(source: Path, output: Path, gene_id: str,
                        atomic_path: Any) -> Converted:
    import pyarrow.parquet as pq

    expr = CbioExpression(source, gene_id, "sample")
    names, values, stats = expr.matrix(None)
    if not names:
        raise DataError(f"{source}: no gene row of the {EXPR_WHAT} file has a gene id; "
                        "nothing to convert")
    if "sample" in names:
        raise DataError(f"{source}: a gene is named 'sample', the column the Parquet layout "
                        "uses for the sample ids; rename that gene")
    expr._log(stats)
    schema = pa.schema([("sample", pa.string())] + [(g, pa.float64()) for g in names])
    arrays = [pa.array(expr.samples, pa.string())]
    arrays += [pa.array(values[:, j], pa.float64()) for j in range(len(names))]
    table = pa.Table.from_arrays(arrays, schema=schema)
    with atomic_path(output) as tmp:
        # statistics on the sample column only (the readers filter rows by sample); no
        # dictionary pages for the gene columns (continuous values): a third faster to
        # write and smaller
        pq.write_table(table, tmp, compression="zstd", write_statistics=["sample"],
                       use_dictionary=["sample"])
    return Converted("cbio-expression", output, stats.rows, len(expr.samples), len(names),
                     stats)
