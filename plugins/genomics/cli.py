"""``lungfuse convert``: GDC / cBioPortal text files to the Parquet layout lungfuse reads.

Registered through the ``lungfuse.commands`` entry point like any plugin command. Bad
input is a :class:`~lungfuse.core.errors.DataError`, which the core CLI prints as one line
with exit code 2; the output is written atomically, so a failed conversion leaves no file.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("convert")
@click.argument("source", metavar="INPUT", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("output", metavar="OUTPUT", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["auto", "maf", "cbio-mutations", "cbio-expression"]),
              default="auto", show_default=True,
              help="What INPUT is; auto: a MAF when the header has Tumor_Sample_Barcode, a "
              "cBioPortal expression matrix when it has Hugo_Symbol / Entrez_Gene_Id only.")
@click.option("--gene-id", type=click.Choice(["symbol", "entrez"]), default="symbol",
              show_default=True,
              help="cbio-expression: genes named by Hugo symbol (Entrez id where the symbol "
              "is empty) or by Entrez id; match the expression modality's gene_id.")
def convert_command(source: Path, output: Path, kind: str, gene_id: str) -> None:
    """Convert a GDC MAF (.maf, .maf.gz), a cBioPortal data_mutations.txt or a cBioPortal
    expression matrix (data_mrna_seq_v2_rsem.txt) into OUTPUT (Parquet).

    Mutations keep the MAF columns lungfuse uses; expression becomes samples x genes
    (a `sample` column, one column per gene; genes named on several rows are combined
    by the per-sample mean of their rows). The modalities also read INPUT directly; the
    Parquet file is faster for repeated runs. An existing OUTPUT is replaced atomically.
    """
    from lungfuse.plugins.genomics.formats import convert

    done = convert(source, output, kind=kind, gene_id=gene_id)
    click.echo(done.line(source))
