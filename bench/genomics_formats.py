"""Benchmark: reading genomics text files as downloaded (cBioPortal expression, GDC MAF).

Prints figures and writes ``bench/results/genomics_formats.md``; never asserts on time.

1. Expression: a cBioPortal-style matrix of 20,000 genes x 500 samples
   (``Hugo_Symbol``, ``Entrez_Gene_Id``, one column per sample; 20 symbols on two rows,
   10 rows without a symbol), plain text. Timed:
   ``lungfuse convert`` (text -> wide Parquet); the expression modality with a 50-gene
   panel (prepare on half the samples, transform all) reading the text directly and
   reading the converted Parquet; and the "convert it yourself with pandas" route
   (``pandas.read_csv`` + group-by mean + transpose + ``to_parquet``) for comparison.
2. Mutations: a GDC-style MAF (``#`` lines, 40 columns) of 200,000 calls, gzip'd:
   ``lungfuse convert`` and ``pandas.read_csv`` of the same file.

Each measurement runs in a fresh subprocess (peak RSS ``ru_maxrss`` is its own). The
machine may be shared: the CPU model and the load average are printed with the figures.

    .venv/bin/python bench/genomics_formats.py            # full size
    .venv/bin/python bench/genomics_formats.py --small    # 2,000 genes x 100 samples (smoke)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PANEL_SIZE = 50
MAF_EXTRA = [f"Annotation_{i:02d}" for i in range(30)]  # columns lungfuse skips


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample_ids(n: int) -> list[str]:
    return [f"TCGA-LF-{i:04d}-01" for i in range(n)]


def gene_symbols(n: int) -> list[str]:
    from lungfuse.plugins.genomics.readers import lung_panel

    panel = list(lung_panel())
    return panel + [f"GENE{i:05d}" for i in range(n - len(panel))]


# -- data --------------------------------------------------------------------------------
def make_expression(path: Path, n_genes: int, n_samples: int) -> None:
    """RSEM-like values (log-normal, 2 decimals); 20 duplicated symbols, 10 empty ones."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    symbols = gene_symbols(n_genes)
    for i in range(20):  # a symbol on a second row, as real files have
        symbols[n_genes - 1 - i] = symbols[PANEL_SIZE + i]
    for i in range(10):
        symbols[n_genes - 40 - i] = ""
    cols = {"Hugo_Symbol": pa.array(symbols),
            "Entrez_Gene_Id": pa.array([str(10_000 + i) for i in range(n_genes)])}
    values = np.round(rng.lognormal(4.0, 2.0, size=(n_genes, n_samples)), 2)
    for j, s in enumerate(sample_ids(n_samples)):
        cols[s] = pa.array(values[:, j])
    _write_tsv(path.open("wb"), pa.table(cols))


def _write_tsv(fh, table) -> None:
    """Tab-separated, no quoting (pyarrow quotes header names, cBioPortal does not)."""
    import pyarrow.csv as pcsv

    with fh:
        fh.write(("\t".join(table.column_names) + "\n").encode())
        pcsv.write_csv(table, fh, write_options=pcsv.WriteOptions(
            delimiter="\t", quoting_style="none", include_header=False))


def make_maf(path: Path, n_rows: int, n_samples: int) -> None:
    """A gzip'd GDC-like MAF: '#' lines, the columns lungfuse reads and 30 it skips."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(1)
    genes = np.array(gene_symbols(2000))
    classes = np.array(["Missense_Mutation", "Silent", "Nonsense_Mutation", "Splice_Site",
                        "Frame_Shift_Del", "In_Frame_Del", "3'UTR", "Intron"])
    samples = np.array(sample_ids(n_samples))
    depth = rng.integers(20, 400, n_rows)
    cols = {
        "Hugo_Symbol": pa.array(genes[rng.integers(0, len(genes), n_rows)]),
        "Entrez_Gene_Id": pa.array(rng.integers(1, 100_000, n_rows)),
        "Chromosome": pa.array(np.char.add("chr", rng.integers(1, 23, n_rows).astype(str))),
        "Start_Position": pa.array(rng.integers(1, 200_000_000, n_rows)),
        "Variant_Classification": pa.array(classes[rng.integers(0, len(classes), n_rows)]),
        "Tumor_Sample_Barcode": pa.array(samples[rng.integers(0, n_samples, n_rows)]),
        "HGVSp_Short": pa.array(np.char.add("p.A", rng.integers(1, 999, n_rows).astype(str))),
        "t_depth": pa.array(depth),
        "t_alt_count": pa.array((depth * rng.uniform(0.02, 0.6, n_rows)).astype(int)),
    }
    for c in MAF_EXTRA:
        cols[c] = pa.array(np.char.add("v", rng.integers(0, 50, n_rows).astype(str)))
    fh = gzip.open(path, "wb", compresslevel=1)
    fh.write(b"#version gdc-1.0.0\n#filedate 20240101\n#annotation.spec gdc-1.0.1\n")
    _write_tsv(fh, pa.table(cols))  # closes fh


# -- measurements (each in a child process) ----------------------------------------------
def child(method: str, a: dict) -> dict:
    # the imports every route needs come first: times and memory are of the work itself
    import pandas  # noqa: F401
    import pyarrow.csv  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import lungfuse.plugins.genomics.formats  # noqa: F401
    import lungfuse.plugins.genomics.plugin  # noqa: F401

    base = _rss_mb()
    t0 = time.perf_counter()
    out: dict = {}
    if method == "convert":
        from lungfuse.plugins.genomics.formats import convert

        done = convert(Path(a["src"]), Path(a["dst"]))
        out["line"] = done.line(Path(a["src"]))
    elif method in ("expression_text", "expression_parquet"):
        import logging

        import pandas as pd

        from lungfuse.core.contracts import ModalityContext
        from lungfuse.plugins.genomics.plugin import ExpressionConfig, ExpressionModality

        ids = [s[:12] for s in sample_ids(a["samples"])]
        frame = pd.DataFrame(index=pd.Index(ids, name="patient_id"))
        cfg = ExpressionConfig(path=Path(a["path"]), panel=gene_symbols(PANEL_SIZE))
        m = ExpressionModality(cfg)
        c = ModalityContext(workdir=Path(a["work"]), progress=False,
                            log=logging.getLogger("bench"))
        m.prepare(frame.iloc[::2], c)
        f = m.transform(frame, c)
        out["shape"] = list(f.shape)
    elif method == "pandas_expression":
        import pandas as pd

        df = pd.read_csv(a["src"], sep="\t", comment=None, dtype={"Hugo_Symbol": str,
                                                                   "Entrez_Gene_Id": str})
        gene = df["Hugo_Symbol"].fillna(df["Entrez_Gene_Id"])
        df = df.drop(columns=["Hugo_Symbol", "Entrez_Gene_Id"]).groupby(gene.to_numpy()).mean()
        wide = df.T
        wide.index.name = "sample"
        wide.reset_index().to_parquet(a["dst"], index=False)
        out["shape"] = list(wide.shape)
    elif method == "pandas_maf":
        import pandas as pd

        df = pd.read_csv(a["src"], sep="\t", comment="#", low_memory=False)
        out["shape"] = list(df.shape)
    else:
        raise SystemExit(f"unknown method {method}")
    out["seconds"] = time.perf_counter() - t0
    out["peak_delta_mb"] = _rss_mb() - base
    return out


def run(method: str, args: dict) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", method, json.dumps(args)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{method} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="2,000 genes x 100 samples, 20k calls")
    ap.add_argument("--tmp", type=Path, default=HERE / "results" / "tmp" / "formats",
                    help="where the inputs are generated (git-ignored; delete it afterwards)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "genomics_formats.md")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], json.loads(a.child[1]))))
        return
    n_genes, n_samples, n_calls = (2000, 100, 20_000) if a.small else (20_000, 500, 200_000)
    a.tmp.mkdir(parents=True, exist_ok=True)
    expr_txt = a.tmp / f"data_mrna_seq_v2_rsem_{n_genes}x{n_samples}.txt"
    maf = a.tmp / f"calls_{n_calls}.maf.gz"
    if not expr_txt.exists():
        make_expression(expr_txt, n_genes, n_samples)
    if not maf.exists():
        make_maf(maf, n_calls, n_samples)
    expr_pq, maf_pq = a.tmp / "expression.parquet", a.tmp / "mutations.parquet"
    work = str(a.tmp / "work")
    cpu = cpu_model()
    load = os.getloadavg()
    print(f"CPU: {cpu} ({os.cpu_count()} logical cores; load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}: the machine is shared)")
    print(f"expression text: {n_genes} genes x {n_samples} samples, "
          f"{expr_txt.stat().st_size / 2**20:.0f} MiB; MAF: {n_calls} calls, "
          f"{maf.stat().st_size / 2**20:.1f} MiB gzip'd")
    rows: list[tuple[str, dict]] = []
    r = run("convert", {"src": str(expr_txt), "dst": str(expr_pq)})
    print(r["line"])
    rows.append(("`lungfuse convert` expression text -> Parquet", r))
    rows.append(("pandas: read_csv + group-by mean + transpose + to_parquet",
                 run("pandas_expression", {"src": str(expr_txt),
                                           "dst": str(a.tmp / "pandas.parquet")})))
    rows.append((f"expression modality, {PANEL_SIZE}-gene panel, reading the text directly "
                 "(prepare + transform)",
                 run("expression_text", {"path": str(expr_txt), "samples": n_samples,
                                         "work": work})))
    rows.append((f"expression modality, {PANEL_SIZE}-gene panel, reading the converted Parquet",
                 run("expression_parquet", {"path": str(expr_pq), "samples": n_samples,
                                            "work": work})))
    r = run("convert", {"src": str(maf), "dst": str(maf_pq)})
    print(r["line"])
    rows.append(("`lungfuse convert` MAF (.maf.gz, 39 columns) -> Parquet", r))
    rows.append(("pandas: read_csv of the same MAF (all columns)",
                 run("pandas_maf", {"src": str(maf)})))
    lines = [
        f"# Genomics text formats ({'small' if a.small else 'full'} size)",
        "",
        f"CPU: {cpu}; {os.cpu_count()} logical cores; load average at start "
        f"{load[0]:.1f} (shared machine: times are upper bounds). Python "
        f"{platform.python_version()}. `.venv/bin/python bench/genomics_formats.py"
        f"{' --small' if a.small else ''}`",
        "",
        "| task | time (s) | peak RSS over imports (MiB) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {r['seconds']:.2f} | {r['peak_delta_mb']:.0f} |" for name, r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text, encoding="utf-8")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
