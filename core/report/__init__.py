"""Reports: self-contained HTML (``html``), figure makers (``figures``) and one
assembled report per folder kind (``run``, ``ablation``, ``scores``).

:func:`render_folder` picks the kind from the files a folder holds; ``lungfuse report
FOLDER`` calls it.
"""

from __future__ import annotations

from pathlib import Path

import click

from lungfuse.core.errors import DataError

__all__ = ["render_folder", "report_command"]


def render_folder(folder: str | Path) -> Path:
    """Write ``folder/report.html`` for a run, ablation or scoring folder; returns its path."""
    folder = Path(folder)
    if (folder / "ablation.json").exists():
        from lungfuse.core.report.ablation import render_ablation

        return render_ablation(folder)
    if (folder / "scores.json").exists():
        from lungfuse.core.report.scores import render_scores

        return render_scores(folder)
    if (folder / "run.json").exists():
        from lungfuse.core.report.run import render_run

        return render_run(folder)
    raise DataError(f"{folder}: neither a run folder (run.json), an ablation folder "
                    "(ablation.json) nor a scoring folder (scores.json); point "
                    "`lungfuse report` at one of those")


@click.command("report")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report_command(folder: Path) -> None:
    """Re-render report.html for a run, ablation or scoring folder from its saved artefacts."""
    out = render_folder(folder)
    click.echo(f"wrote {out}")
