"""Feature building for the genomics modalities (fit on training patients, apply to any).

Mutations
    For the patient's selected samples (``combine``), the calls whose
    ``Variant_Classification`` is non-silent and whose ``Hugo_Symbol`` is not ``Unknown``
    give, per gene g of the panel (or of the top-N genes, chosen on training patients)

    .. math:: x_g = \\max_{s \\in S_p} \\max_{v \\in calls(s, g)} w_v,
              \\quad w_v = 1 \\text{ or } \\mathrm{VAF}_v = t\\_alt\\_count / t\\_depth,

    0 when there is no such call (a sequenced patient is wild-type). Hotspot features are
    the same maximum over calls whose ``HGVSp_Short`` matches. Tumour mutational burden
    is :math:`\\mathrm{TMB}_s = n_s / \\text{capture\\_mb}` (non-silent calls per Mb);
    the patient's is the maximum over its samples; the feature is
    :math:`(\\log(1 + \\mathrm{TMB}) - \\mu) / \\sigma` with μ, σ of the training patients.

Expression
    :math:`y = \\log_2(x + 1)` (if ``log2``), averaged over a patient's samples, then
    :math:`z_g = (y_g - \\mu_g) / \\sigma_g` with the training mean and (ddof=1) standard
    deviation (σ = 1 when undefined or 0). Gene-set scores are the mean of :math:`z_g`
    over a set's genes found in the table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lungfuse.core.errors import DataError
from lungfuse.plugins.genomics import readers as R

SAMPLE, GENE, CLASS, HGVSP = (
    "Tumor_Sample_Barcode",
    "Hugo_Symbol",
    "Variant_Classification",
    "HGVSp_Short",
)
ALT, DEPTH = "t_alt_count", "t_depth"


def _index_frame(df: pd.DataFrame) -> pd.DataFrame:
    df.index = pd.Index([str(i) for i in df.index], name="patient_id")
    return df


def _std_stats(values: np.ndarray) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0, 1.0
    mu = float(v.mean())
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return mu, (sd if np.isfinite(sd) and sd > 1e-12 else 1.0)


# ==========================================================================================
# mutations
# ==========================================================================================
class MutationSource:
    """Reads a Parquet MAF once per need and builds mutation features."""

    def __init__(self, config: Any) -> None:
        self.cfg = config
        self.path = Path(config.path)
        self._table: R.ParquetTable | None = None
        self._maf_samples: list[str] | None = None
        self._raw_samples: dict[str, list[str]] = {}  # stripped barcode -> spellings in file
        self._sequenced: list[str] | None = None
        self._mapper: R.SampleMapper | None = None

    # -- inputs ----------------------------------------------------------------------------
    def table(self) -> R.ParquetTable:
        if self._table is None:
            table = R.ParquetTable(self.path, "mutation (MAF)",
                                   dictionary_columns=[SAMPLE, GENE, CLASS, HGVSP])
            schema = table.schema
            R.require_columns(self.path, schema, {SAMPLE: "string", GENE: "string",
                                                  CLASS: "string"}, "mutation (MAF)")
            if self.cfg.hotspot_list():
                R.require_columns(self.path, schema, {HGVSP: "string"},
                                  "mutation (MAF) [needed for hotspots]")
            if self.cfg.vaf_weighting:
                R.require_columns(self.path, schema, {ALT: "numeric", DEPTH: "numeric"},
                                  "mutation (MAF) [needed for vaf_weighting]")
            self._table = table
        return self._table

    def mapper(self) -> R.SampleMapper:
        if self._mapper is None:
            self._mapper = R.SampleMapper(self.cfg.sample_map, self.cfg.barcode_rule)
        return self._mapper

    def maf_samples(self) -> list[str]:
        """Distinct sample barcodes with any row in the MAF (only that column is read),
        surrounding whitespace stripped (the raw spellings are kept to filter rows)."""
        if self._maf_samples is None:
            col = self.table().read([SAMPLE]).column(SAMPLE)
            uniq = pc.unique(col.combine_chunks() if col.num_chunks != 1 else col.chunk(0))
            if pa.types.is_dictionary(uniq.type):
                uniq = uniq.dictionary_decode()
            self._raw_samples = R.strip_ids(uniq.to_pylist())
            self._maf_samples = sorted(self._raw_samples)
        return self._maf_samples

    def input_ids(self) -> list[str]:
        """The patient ids the MAF's barcodes map to (raw barcodes that map to none), for
        the "covers none of the patients" hint."""
        mapper = self.mapper()
        return sorted({mapper(s) or s for s in self.maf_samples()})

    def sequenced(self) -> list[str] | None:
        if self.cfg.sequenced_samples is None:
            return None
        if self._sequenced is None:
            self._sequenced = sorted(set(R.read_lines(self.cfg.sequenced_samples,
                                                      "sequenced-samples")))
        return self._sequenced

    # -- who is covered ----------------------------------------------------------------------
    def coverage(
        self, ids: Sequence[str], log: logging.Logger, report: bool = False
    ) -> tuple[dict[str, list[str]], set[str]]:
        """(samples of each covered patient, patients treated as wild-type without calls).

        With a sequenced-samples list, a patient is covered when it has a sequenced sample
        (or calls); without one, patients with calls are covered and the others follow
        ``untested``.
        """
        maf = self.maf_samples()
        seq = self.sequenced()
        samples = sorted(set(maf) | set(seq or ()))
        by, unmatched = self.mapper().group(samples, ids, self.cfg.combine == "first")
        maf_set = set(maf)
        with_calls = {p for p in by if any(s in maf_set for s in by[p])}
        wildtype_extra: set[str] = set()
        if seq is None and self.cfg.untested == "wildtype":
            wildtype_extra = {p for p in ids if p not in by}
        if report:
            n = len(set(ids))
            if unmatched:
                log.warning("mutations: %d sample(s) of %s match no cohort patient (ignored)",
                            unmatched, self.path)
            if seq is not None:
                not_listed = len(set(maf) - set(seq))
                if not_listed:
                    log.warning("mutations: %d sample(s) with calls in %s are not in the "
                                "sequenced list %s; treated as sequenced", not_listed,
                                self.path, self.cfg.sequenced_samples)
                log.info("mutations: %d of %d patients sequenced (%d with calls, %d wild-type), "
                         "%d not sequenced (missing)", len(by), n, len(with_calls),
                         len(by) - len(with_calls), n - len(by))
            else:
                # a warning, not info: the missing/wild-type call is an assumption the user
                # should see in the run log
                log.warning("mutations: no sequenced-samples list; %d patients with calls, %d "
                         "absent from the MAF treated as %s (untested: %s)", len(by),
                         n - len(by),
                         "wild-type" if self.cfg.untested == "wildtype" else "missing",
                         self.cfg.untested)
        return by, wildtype_extra

    def available(self, ids: Sequence[str], log: logging.Logger) -> set[str]:
        by, extra = self.coverage(ids, log, report=True)
        return set(by) | extra

    # -- reading calls -----------------------------------------------------------------------
    # -- reading calls -----------------------------------------------------------------------
    def calls(self, samples: Sequence[str], columns: Sequence[str]) -> pa.Table:
        """Non-silent calls (Hugo_Symbol not Unknown) of ``samples``: only ``columns``.

        Projection: only the needed columns; filters: class and sample ``in`` sets. Text
        columns come dictionary-encoded (one chunk, one dictionary)."""
        self.maf_samples()  # the raw spellings of the barcodes
        flt = (
            pc.field(CLASS).isin(R.text_set(self.cfg.non_silent_classes()))
            & (pc.field(GENE) != "Unknown")
            & pc.field(SAMPLE).isin(R.text_set(R.raw_spellings(samples, self._raw_samples)))
        )
        t = self.table().read(list(columns), flt)
        return t.unify_dictionaries().combine_chunks()

    @staticmethod
    def _codes(t: pa.Table, col: str) -> tuple[np.ndarray, list[str]]:
        """Row codes and the dictionary of a text column (encoding it if it is not)."""
        arr = t.column(col)
        arr = arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
        if not pa.types.is_dictionary(arr.type):
            arr = pc.dictionary_encode(arr)
        codes = arr.indices.to_numpy(zero_copy_only=False)
        codes = np.where(arr.is_null().to_numpy(zero_copy_only=False), -1, codes)
        return codes.astype("int64"), [str(v) for v in arr.dictionary.to_pylist()]

    def _weights(self, t: pa.Table, rows: np.ndarray) -> np.ndarray:
        if not self.cfg.vaf_weighting:
            return np.ones(int(rows.sum()))
        alt = t.column(ALT).to_numpy().astype("float64")[rows]
        depth = t.column(DEPTH).to_numpy().astype("float64")[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            vaf = alt / depth
        # a call without a usable depth counts as present (weight 1)
        return np.where(np.isfinite(vaf), np.clip(vaf, 0.0, 1.0), 1.0)

    @staticmethod
    def _row_patients(t: pa.Table, by: dict[str, list[str]], patients: list[str],
                      ) -> np.ndarray:
        """Index into ``patients`` of each row's sample (-1: not a selected sample)."""
        pos = {p: i for i, p in enumerate(patients)}
        s2i = {s: pos[p] for p, ss in by.items() for s in ss}
        codes, dictionary = MutationSource._codes(t, SAMPLE)
        lut = np.array([s2i.get(s.strip(), -1) for s in dictionary] + [-1], dtype="int64")
        return lut[codes]  # code -1 (null) picks the trailing -1

    def _tmb(self, t: pa.Table, by: dict[str, list[str]], patients: list[str]) -> np.ndarray:
        """TMB per patient of ``patients``: max over its samples of calls / capture_mb."""
        codes, dictionary = self._codes(t, SAMPLE)
        n = np.bincount(codes[codes >= 0], minlength=len(dictionary))
        per_sample: dict[str, int] = {}
        for s, k in zip(dictionary, n.tolist(), strict=True):  # spellings of one barcode add
            per_sample[s.strip()] = per_sample.get(s.strip(), 0) + k
        return np.array([max((per_sample.get(s, 0) for s in by.get(p, [])), default=0)
                         for p in patients], dtype="float64") / self.cfg.capture_mb

    # -- fit / apply -------------------------------------------------------------------------
    def fit(self, ids: Sequence[str], log: logging.Logger) -> dict[str, Any]:
        by, extra = self.coverage(ids, log)
        if not by and not extra:
            raise DataError(f"{self.path}: no training patient has mutation data; check the "
                            "barcodes (barcode_rule / sample_map) against the cohort ids")
        if not by and self.maf_samples():
            # untested: wildtype would silently turn every call-less patient wild-type
            from lungfuse.core.cohort import coverage_hint

            raise DataError(f"{self.path}: none of the {len(self.maf_samples())} sample(s) "
                            f"of the MAF maps to a training patient, so every patient would be "
                            f"wild-type; check barcode_rule / sample_map "
                            f"({coverage_hint(list(ids), self.input_ids())})")
        samples = sorted(s for ss in by.values() for s in ss)
        patients = sorted(set(by) | extra)
        t = self.calls(samples, [SAMPLE, GENE] if self.cfg.top_n is not None else [SAMPLE])
        if self.cfg.top_n is not None:
            prow = self._row_patients(t, by, patients)
            gcodes, gdict = self._codes(t, GENE)
            ok = (prow >= 0) & (gcodes >= 0)
            pairs = np.unique(prow[ok] * len(gdict) + gcodes[ok])  # distinct (patient, gene)
            freq = np.bincount(pairs % len(gdict), minlength=len(gdict))
            order = sorted(((g, int(f)) for g, f in zip(gdict, freq, strict=True) if f > 0),
                           key=lambda kv: (-kv[1], kv[0]))
            genes = [g for g, _ in order[: self.cfg.top_n]]
            log.info("mutations: top %d genes by training-patient frequency: %s", len(genes),
                     ", ".join(genes[:10]) + (" ..." if len(genes) > 10 else ""))
        elif self.cfg.panel == "lung":
            genes = list(R.lung_panel("symbol"))
        else:
            genes = list(dict.fromkeys(self.cfg.panel))
        state: dict[str, Any] = {"genes": genes, "hotspots": self.cfg.hotspot_list(),
                                 "use_tmb": bool(self.cfg.tmb), "tmb_mean": 0.0, "tmb_sd": 1.0}
        if self.cfg.tmb:
            vals = np.log1p(self._tmb(t, by, patients))
            state["tmb_mean"], state["tmb_sd"] = _std_stats(vals)
        state["columns"] = self._columns(state)
        log.info("mutations: fitted on %d training patients (%d features)",
                 len(patients), len(state["columns"]))
        return state

    @staticmethod
    def _columns(state: dict[str, Any]) -> list[str]:
        cols = list(state["genes"]) + [h.replace(" ", "_") for h in state["hotspots"]]
        if state["use_tmb"]:
            cols.append("TMB")
        return cols

    def transform(self, state: dict[str, Any], ids: Sequence[str],
                  log: logging.Logger) -> pd.DataFrame:
        by, extra = self.coverage(ids, log)
        patients = sorted(set(by) | extra)
        columns = list(state["columns"])
        out = np.zeros((len(patients), len(columns)), dtype="float64")
        col_of = {c: j for j, c in enumerate(columns)}
        samples = sorted(s for ss in by.values() for s in ss)
        hotspots = list(state["hotspots"])
        if samples:
            cols = [SAMPLE, GENE] + ([HGVSP] if hotspots else [])
            cols += [ALT, DEPTH] if self.cfg.vaf_weighting else []
            t = self.calls(samples, cols)  # one read: panel genes, hotspots and TMB
            prow = self._row_patients(t, by, patients)
            gcodes, gdict = self._codes(t, GENE)
            wanted = set(state["genes"]) | {h.split()[0] for h in hotspots}
            keep_gene = np.array([g in wanted for g in gdict] + [False])
            rows = keep_gene[gcodes] & (prow >= 0)
            df = pd.DataFrame({"p": prow[rows], "gene": np.array(gdict + [""])[gcodes[rows]],
                               "w": self._weights(t, rows)})
            if hotspots:
                hc, hd = self._codes(t, HGVSP)
                df["hgvsp"] = np.array([*hd, ""], dtype=object)[hc[rows]]
            panel = set(state["genes"])
            for (p, gene), w in df.groupby(["p", "gene"])["w"].max().items():
                if gene in panel:
                    out[p, col_of[gene]] = w
            for h in hotspots:
                gene, change = h.split()
                change = change.removeprefix("p.")
                pat = re.escape(change) + (r"(?!\d)" if change[-1].isdigit() else r"$")
                sub = df[df["gene"] == gene]
                if sub.empty:
                    continue
                hit = sub["hgvsp"].astype(str).str.removeprefix("p.").str.match(pat)
                for p, w in sub[hit.to_numpy()].groupby("p")["w"].max().items():
                    out[p, col_of[h.replace(" ", "_")]] = w
            if "TMB" in col_of:
                tmb = self._tmb(t, by, patients)
        elif "TMB" in col_of:
            tmb = np.zeros(len(patients))
        if "TMB" in col_of:
            out[:, col_of["TMB"]] = (np.log1p(tmb) - state["tmb_mean"]) / state["tmb_sd"]
        return _index_frame(pd.DataFrame(out, index=patients, columns=columns).astype("float32"))


# ==========================================================================================
# expression
# ==========================================================================================
class ExpressionSource:
    """Reads a wide or long Parquet expression table with projection and sample filters,
    or an AnnData ``.h5ad`` file (:mod:`.h5ad`: only the wanted genes / samples)."""

    def __init__(self, config: Any) -> None:
        self.cfg = config
        self.path = Path(config.path)
        self._layout: str | None = None
        self._table: R.ParquetTable | None = None
        self._h5ad: Any = None
        self._samples: list[str] | None = None
        self._raw_samples: dict[str, list[str]] = {}  # stripped id -> spellings in file
        self._mapper: R.SampleMapper | None = None

    # -- inputs ----------------------------------------------------------------------------
    def h5ad(self) -> Any:
        """The ``.h5ad`` reader when the input is AnnData (``format``), else None."""
        if self.cfg.file_format() != "h5ad":
            return None
        if self._h5ad is None:
            from lungfuse.plugins.genomics.h5ad import H5adExpression

            self._h5ad = H5adExpression(self.path, self.cfg.layer, self.cfg.var_gene_column)
        return self._h5ad

    def schema(self) -> tuple[pa.Schema, str]:
        if self._table is None:
            c = self.cfg
            table = R.ParquetTable(self.path, "expression",
                                   dictionary_columns=[c.sample_column, c.gene_column])
            schema = table.schema
            names = set(schema.names)
            layout = c.layout
            if layout == "auto":
                layout = "long" if {c.gene_column, c.value_column} <= names else "wide"
            gene_kind = "string"
            if layout == "long":
                if c.gene_id == "entrez" and c.gene_column in names and R.is_numeric_type(
                        schema.field(c.gene_column).type):
                    gene_kind = "numeric"
                R.require_columns(self.path, schema, {c.sample_column: "string",
                                                      c.gene_column: gene_kind,
                                                      c.value_column: "numeric"}, "expression")
            elif c.orientation == "samples_x_genes":
                R.require_columns(self.path, schema, {c.sample_column: "string"}, "expression")
                self._no_duplicate_columns(schema, "gene")
            else:
                if c.gene_id == "entrez" and c.gene_column in names and R.is_numeric_type(
                        schema.field(c.gene_column).type):
                    gene_kind = "numeric"
                R.require_columns(self.path, schema, {c.gene_column: gene_kind}, "expression")
                self._no_duplicate_columns(schema, "sample")
            self._table, self._layout = table, layout
        assert self._layout is not None and self._table is not None
        return self._table.schema, self._layout

    def _no_duplicate_columns(self, schema: pa.Schema, what: str) -> None:
        """A wide table names each gene (or sample) once: a repeated column would be read
        twice and its values be ambiguous."""
        from collections import Counter

        repeated = [n for n, k in Counter(schema.names).items() if k > 1]
        if repeated:
            dup = repeated[0]
            raise DataError(f"{self.path}: {what} column {dup!r} appears more than once in the "
                            f"expression table; keep one column per {what}")

    def _read(self, columns: Sequence[str], flt: Any = None) -> pa.Table:
        self.schema()
        assert self._table is not None
        return self._table.read(columns, flt)

    def mapper(self) -> R.SampleMapper:
        if self._mapper is None:
            self._mapper = R.SampleMapper(self.cfg.sample_map, self.cfg.barcode_rule)
        return self._mapper

    def samples(self) -> list[str]:
        """Sample ids in the table (reads the sample column only, or the schema)."""
        if self._samples is None:
            if self.h5ad() is not None:
                self._raw_samples = R.strip_ids(self.h5ad().samples())
                self._samples = sorted(self._raw_samples)
                return self._samples
            schema, layout = self.schema()
            c = self.cfg
            if layout == "wide" and c.orientation == "genes_x_samples":
                s = [n for n in schema.names if n != c.gene_column and not n.startswith("__")]
            else:
                col = self._read([c.sample_column]).column(0)
                col = col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col
                s = pc.unique(col.combine_chunks()).to_pylist()
            # ids are matched stripped; the raw spellings select rows / columns
            self._raw_samples = R.strip_ids(s)
            self._samples = sorted(self._raw_samples)
        return self._samples

    def input_ids(self) -> list[str]:
        """The patient ids the table's samples map to (raw sample ids that map to none),
        for the "covers none of the patients" hint."""
        mapper = self.mapper()
        return sorted({mapper(s) or s for s in self.samples()})

    def table_genes(self) -> list[str]:
        """Gene ids in the table (wide: the schema; long/genes × samples: the gene column;
        .h5ad: var, in file order)."""
        if self.h5ad() is not None:
            return [g for g in self.h5ad().genes() if g]
        schema, layout = self.schema()
        c = self.cfg
        if layout == "wide" and c.orientation == "samples_x_genes":
            return [n for n in schema.names if n != c.sample_column and not n.startswith("__")]
        col = self._read([c.gene_column]).column(0)
        col = col.cast(pa.string())
        return sorted(x for x in pc.unique(col.combine_chunks()).to_pylist() if x)

    def coverage(self, ids: Sequence[str], log: logging.Logger,
                 report: bool = False) -> dict[str, list[str]]:
        by, unmatched = self.mapper().group(self.samples(), ids, self.cfg.combine == "first")
        if report:
            if unmatched:
                log.warning("expression: %d sample(s) of %s match no cohort patient (ignored)",
                            unmatched, self.path)
            log.info("expression: %d of %d patients have expression data", len(by), len(set(ids)))
        return by

    def available(self, ids: Sequence[str], log: logging.Logger) -> set[str]:
        return set(self.coverage(ids, log, report=True))

    # -- reading ----------------------------------------------------------------------------
    def read(self, samples: Sequence[str], genes: Sequence[str] | None) -> pd.DataFrame:
        """Samples × genes float64 frame for ``samples`` (rows) and ``genes`` (columns that
        exist; all when None). Reads only those columns / rows."""
        self.samples()  # the raw spellings of the sample ids
        samples = R.raw_spellings(samples, self._raw_samples)
        if self.h5ad() is not None:
            df = self.h5ad().read(samples, genes)
            df.index = pd.Index([s.strip() for s in df.index])
            if df.index.has_duplicates:
                dup = df.index[df.index.duplicated()][0]
                raise DataError(f"{self.path}: sample {dup!r} is in obs twice; keep one entry "
                                "per sample (adata.obs_names_make_unique())")
            return df
        schema, layout = self.schema()
        c = self.cfg
        if layout == "wide" and c.orientation == "samples_x_genes":
            present = self.table_genes()
            have = set(present)
            cols = present if genes is None else [g for g in genes if g in have]
            R.check_numeric_columns(self.path, schema, cols, "expression")
            t = self._read([c.sample_column, *cols],
                           pc.field(c.sample_column).isin(R.text_set(samples)))
            ids = [str(i) for i in R.stripped_text(t.column(c.sample_column))]
            data = np.column_stack([
                t.column(g).to_numpy(zero_copy_only=False).astype("float64", copy=False)
                for g in cols
            ]) if cols else np.empty((len(ids), 0))
            df = pd.DataFrame(data, index=pd.Index(ids), columns=cols)
            if df.index.has_duplicates:
                dup = df.index[df.index.duplicated()][0]
                raise DataError(f"{self.path}: sample {dup!r} has two rows in the expression "
                                "table; keep one row per sample")
            return df
        if layout == "wide":  # genes × samples: project the sample columns, filter gene rows
            gcol = c.gene_column
            have = set(schema.names)
            cols = [s for s in samples if s in have]
            R.check_numeric_columns(self.path, schema, cols, "expression")
            flt = None
            if genes is not None:
                flt = pc.field(gcol).cast(pa.string()).isin(R.text_set(genes))
            t = self._read([gcol, *cols], flt)
            gids = [str(g) for g in t.column(gcol).to_pylist()]
            if len(set(gids)) != len(gids):
                dup = pd.Index(gids)[pd.Index(gids).duplicated()][0]
                raise DataError(f"{self.path}: gene {dup!r} has two rows in the expression "
                                "table; keep one row per gene")
            data = np.column_stack([
                t.column(s).to_numpy(zero_copy_only=False).astype("float64", copy=False)
                for s in cols
            ]) if cols else np.empty((len(gids), 0))
            out = pd.DataFrame(data.T, index=pd.Index([s.strip() for s in cols]), columns=gids)
            if out.index.has_duplicates:
                dup = out.index[out.index.duplicated()][0]
                raise DataError(f"{self.path}: sample {dup!r} has two columns in the expression "
                                "table (ids differing only by spaces); keep one per sample")
            return out
        # long layout
        gcol, vcol, scol = c.gene_column, c.value_column, c.sample_column
        flt = pc.field(scol).isin(R.text_set(samples))
        if genes is not None:
            gfield = pc.field(gcol)
            if R.is_numeric_type(schema.field(gcol).type):
                gfield = gfield.cast(pa.string())
            flt = flt & gfield.isin(R.text_set(genes))
        t = self._read([scol, gcol, vcol], flt)
        df = pd.DataFrame({
            "sample": R.stripped_text(t.column(scol)),
            "gene": t.column(gcol).cast(pa.string()).to_pylist(),
            "value": t.column(vcol).to_numpy(zero_copy_only=False).astype("float64"),
        })
        dup = df.duplicated(["sample", "gene"])
        if dup.any():
            first = df[dup].iloc[0]
            raise DataError(f"{self.path}: {int(dup.sum())} duplicate (sample, gene) row(s) in "
                            f"the long expression table, e.g. ({first['sample']}, "
                            f"{first['gene']}); aggregate them to one value first")
        wide = df.pivot(index="sample", columns="gene", values="value")
        wide.columns.name = None
        return wide

    def patient_matrix(self, by: dict[str, list[str]], genes: Sequence[str] | None,
                       ) -> pd.DataFrame:
        """Patients × genes after log2(x+1) and combining a patient's samples (mean)."""
        samples = sorted(s for ss in by.values() for s in ss)
        x = self.read(samples, genes)
        if self.cfg.log2:
            vals = x.to_numpy()
            neg = np.nan_to_num(vals, nan=0.0) < 0
            if neg.any():
                i, j = np.argwhere(neg)[0]
                raise DataError(
                    f"{self.path}: {int(neg.sum())} negative expression value(s) (e.g. sample "
                    f"{x.index[i]}, gene {x.columns[j]}: {vals[i, j]:g}) cannot be "
                    "log2(x+1)-transformed; set `log2: false` if the table is already on a "
                    "log scale"
                )
            x = np.log2(x + 1.0)
        s2p = {s: p for p, ss in by.items() for s in ss}
        x.index = pd.Index([s2p[s] for s in x.index])
        return x.groupby(level=0, sort=True).mean()

    # -- fit / apply -------------------------------------------------------------------------
    def _panel(self) -> list[str]:
        c = self.cfg
        if c.panel == "lung":
            return list(R.lung_panel(c.gene_id))
        return list(dict.fromkeys(str(g) for g in c.panel))

    def fit(self, ids: Sequence[str], log: logging.Logger) -> dict[str, Any]:
        c = self.cfg
        by = self.coverage(ids, log)
        if not by:
            raise DataError(f"{self.path}: no training patient has expression data; check the "
                            "sample ids (barcode_rule / sample_map) against the cohort")
        sets: dict[str, list[str]] | None = None
        if c.selection == "panel":
            wanted: list[str] | None = self._panel()
        elif c.selection == "gmt":
            assert c.gmt is not None
            raw = R.read_gmt(c.gmt)
            wanted = list(dict.fromkeys(g for gs in raw.values() for g in gs))
        else:
            wanted = None
        x = self.patient_matrix(by, wanted)
        if c.selection == "panel" and wanted and x.shape[1] == 0:
            self._no_panel_gene(wanted)
        if c.selection == "top_variance":
            var = x.var(axis=0, ddof=1, skipna=True).fillna(-1.0)
            order = sorted(var.items(), key=lambda kv: (-kv[1], str(kv[0])))
            genes = [str(g) for g, _ in order[: c.top_n]]
            missing: list[str] = []
        else:
            assert wanted is not None
            genes = wanted
            present = set(x.columns)
            missing = [g for g in genes if g not in present]
            if c.selection == "gmt":
                assert raw is not None
                sets = {}
                dropped = []
                for name, gs in raw.items():
                    found = [g for g in gs if g in present]
                    if len(found) >= c.min_set_size:
                        sets[name] = found
                    else:
                        dropped.append(name)
                if dropped:
                    log.warning("expression: %d gene set(s) of %s have fewer than %d genes in %s "
                                "and are dropped: %s", len(dropped), c.gmt, c.min_set_size,
                                self.path, ", ".join(dropped[:10]))
                if not sets:
                    raise DataError(f"{c.gmt}: no gene set has {c.min_set_size}+ genes in "
                                    f"{self.path}; check gene_id (symbol/entrez) and the sets")
                genes = list(dict.fromkeys(g for gs in sets.values() for g in gs))
                missing = []
            elif missing:
                log.warning("expression: %d of %d panel gene(s) not in %s: %s; filled per "
                            "`nan: %s`", len(missing), len(genes), self.path,
                            ", ".join(missing[:20]), c.nan)
        x = x.reindex(columns=genes)
        mean, sd = [], []
        for g in genes:
            mu, s = _std_stats(x[g].to_numpy(dtype="float64"))
            mean.append(mu)
            sd.append(s)
        log.info("expression: fitted %d genes%s on %d training patients", len(genes),
                 f" in {len(sets)} gene sets" if sets else "", len(by))
        return {"genes": genes, "mean": mean, "sd": sd, "missing": missing, "sets": sets}

    def _no_panel_gene(self, wanted: list[str]) -> None:
        """None of the panel's genes is in the table: a gene-id mismatch (symbols against
        Entrez or Ensembl ids), never a panel worth fitting on zeros."""
        have = self.table_genes()[:3]
        where = "var" if self.h5ad() is not None else "the expression table"
        fix = ("set `var_gene_column` to the var column of gene symbols, or fix `panel`"
               if self.h5ad() is not None else "check `gene_id` (symbol/entrez) and `panel`")
        raise DataError(f"{self.path}: none of the {len(wanted)} panel genes (e.g. "
                        f"{', '.join(wanted[:3])}) is in {where} (which has e.g. "
                        f"{', '.join(have) or 'no genes'}); {fix}")

    def transform(self, state: dict[str, Any], ids: Sequence[str],
                  log: logging.Logger) -> pd.DataFrame:
        c = self.cfg
        genes = list(state["genes"])
        missing = set(state["missing"])
        by = self.coverage(ids, log)
        if not by:
            cols = list(state["sets"]) if state.get("sets") else genes
            return _index_frame(pd.DataFrame(columns=cols, dtype="float32"))
        x = self.patient_matrix(by, [g for g in genes if g not in missing])
        x = x.reindex(index=sorted(by), columns=genes)
        mean = np.asarray(state["mean"], dtype="float64")
        sd = np.asarray(state["sd"], dtype="float64")
        v = x.to_numpy(dtype="float64")
        if c.zscore:
            v = (v - mean) / sd
            fill = np.zeros_like(mean)
        else:
            fill = mean
        if c.nan == "zero":
            fill = np.zeros_like(mean)
        v = np.where(np.isfinite(v), v, fill)
        out = pd.DataFrame(v, index=x.index, columns=genes)
        if state.get("sets"):
            out = pd.DataFrame({name: out[gs].mean(axis=1) for name, gs in state["sets"].items()},
                               index=out.index)
        return _index_frame(out.astype("float32"))
