"""``lungfuse synth``: write a synthetic cohort in the real formats."""

from __future__ import annotations

from pathlib import Path

import click

from lungfuse.core.errors import LungfuseError


class _UserError(click.ClickException):
    """A one-line user error with exit code 2, both under ``lungfuse`` and when the
    command is invoked on its own (click's standalone mode)."""

    exit_code = 2

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@click.command("synth")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--preset", type=click.Choice(["tiny", "demo", "bench"]), default="tiny",
              show_default=True, help="Cohort size and volume/gene-table dimensions.")
@click.option("--patients", type=click.IntRange(min=2), default=None,
              help="Number of patients (default: the preset's).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed; the same seed gives the same bytes.")
@click.option("--long", "long_", is_flag=True, help="Expression in long layout (sample, gene, value).")
@click.option("--no-ct", is_flag=True, help="Skip CT (a genomics-only cohort, quick for bench).")
@click.option("--with-ct", is_flag=True, help="Write CT even where the preset skips it (bench).")
@click.option("--overwrite", is_flag=True,
              help="Replace OUT if it holds an earlier synth output (and nothing else).")
def synth(out: Path, preset: str, patients: int | None, seed: int,
          long_: bool, no_ct: bool, with_ct: bool, overwrite: bool) -> None:
    """Write a synthetic cohort to OUT: LUNA16 CT + masks, MAF mutations, expression,
    clinical outcome (see docs/synthetic.md).

    \b
    Examples:
      lungfuse synth data/tiny --preset tiny
      lungfuse synth data/demo --preset demo --seed 1
      lungfuse synth data/bench --preset bench --patients 500
    """
    from lungfuse.core.synth import generate

    knobs = {}
    if no_ct and with_ct:
        raise _UserError("--no-ct and --with-ct contradict each other; pick one")
    if no_ct:
        knobs["with_ct"] = False
    if with_ct:
        knobs["with_ct"] = True
    try:
        res = generate(out, preset=preset, patients=patients, seed=seed, long=long_,
                       overwrite=overwrite, **knobs)
    except LungfuseError as exc:
        raise _UserError(str(exc)) from None
    click.echo(f"wrote {res.n_patients} patients to {res.out_dir}: {res.n_series} CT series, "
               f"{res.n_nodules} nodules, {res.n_mutations} mutation calls, "
               f"{res.n_expression_samples} expression samples")
