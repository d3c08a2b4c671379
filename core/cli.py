"""The ``lungfuse`` command line.

Sub-commands are imported only when used, so ``lungfuse --help`` and ``lungfuse plugins``
stay fast and import no torch. Plugins can add sub-commands through the
``lungfuse.commands`` entry-point group (each a ``click.Command``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import click

from lungfuse.core.errors import LungfuseError

#: Core sub-commands: name -> "module:attribute", imported on first use.
CORE_COMMANDS: dict[str, str] = {
    "plugins": "lungfuse.core.cli:plugins_cmd",
    "schema": "lungfuse.core.cli:schema_cmd",
    "validate": "lungfuse.core.cli:validate_cmd",
    "synth": "lungfuse.core.synth.cli:synth",
    "run": "lungfuse.core.run:run_command",
    "ablate": "lungfuse.core.ablation:ablate_command",
    "score": "lungfuse.core.scoring:score_command",
    "report": "lungfuse.core.report:report_command",
}


def _module_exists(target: str) -> bool:
    mod = target.split(":")[0]
    try:
        return importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    """A click group whose commands are imported on demand."""

    def _targets(self) -> dict[str, str]:
        from lungfuse.core.registry import COMMAND_GROUP, default_registry

        targets = {k: v for k, v in CORE_COMMANDS.items() if _module_exists(v)}
        for e in default_registry().entries(COMMAND_GROUP):
            targets.setdefault(e.name, "entrypoint:" + e.name)
        return targets

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._targets()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        target = self._targets().get(name)
        if target is None:
            return None
        if target.startswith("entrypoint:"):
            from lungfuse.core.registry import COMMAND_GROUP, default_registry

            entry = next(e for e in default_registry().entries(COMMAND_GROUP) if e.name == name)
            try:
                return entry._ep.load()
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin command must not break --help
                reason = (f"command '{name}' from {entry.origin} failed to load: "
                          f"{type(exc).__name__}: {exc}")

                def _broken(**_: object) -> None:
                    raise LungfuseError(reason)

                return click.Command(name, callback=_broken, help=f"(unavailable) {reason}",
                                     short_help="(unavailable: failed to load)",
                                     context_settings={"ignore_unknown_options": True},
                                     params=[click.Argument(["args"], nargs=-1)])
        mod, attr = target.split(":")
        return getattr(importlib.import_module(mod), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="lungfuse", prog_name="lungfuse")
def cli(debug: bool) -> None:
    """lungfuse: fuse CT imaging and genomics into a lung-nodule risk.

    \b
    Typical session:
      lungfuse synth data/ --preset demo     # a synthetic cohort in the real formats
      lungfuse validate experiment.yaml      # check a config before running it
      lungfuse run experiment.yaml           # train + evaluate; artefacts in a run folder
      lungfuse plugins                       # what modalities, heads and baselines exist

    Configs are YAML, validated against `schemas/lungfuse.schema.json`.
    """


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json: bool) -> None:
    """List installed plugins: name, group, distribution, version and status.

    A plugin that fails to import or targets another plugin-API version is shown with
    its reason; the other plugins are unaffected.
    """
    from lungfuse.core.baselines import BASELINE_GROUP
    from lungfuse.core.registry import COMMAND_GROUP, PLUGIN_GROUPS, default_registry

    reg = default_registry()
    rows = []
    for group in (*PLUGIN_GROUPS, BASELINE_GROUP):
        for e in reg.load_all(group, warn=False):
            rows.append(e)
    for e in reg.entries(COMMAND_GROUP):
        e.status = e.status if e.status != "not loaded" else "command"
        rows.append(e)
    if as_json:
        click.echo(json.dumps([
            {"name": e.name, "group": e.group, "distribution": e.distribution,
             "version": e.version, "status": e.status, "reason": e.reason}
            for e in rows
        ], indent=2))
        return
    headers = ("NAME", "GROUP", "DISTRIBUTION", "VERSION", "STATUS")
    table = [(e.name, e.group, e.distribution, e.version, e.status) for e in rows]
    widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h)
              for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(fmt.format(*headers))
    for e, r in zip(rows, table, strict=True):
        click.echo(fmt.format(*r))
        if e.reason:
            click.echo(f"    -> {e.reason}")


@click.command("schema")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Where to write (default: the package's schemas/lungfuse.schema.json).")
@click.option("--check", is_flag=True, help="Exit 1 if the file on disk is out of date.")
def schema_cmd(output: Path | None, check: bool) -> None:
    """Write the JSON Schema of experiment configs, installed plugins included.

    Point your editor's YAML support at it to get completion and checking.
    """
    from lungfuse.core.atomic import write_text
    from lungfuse.core.config import experiment_model_from
    from lungfuse.schemas import SCHEMA_FILE

    text = schema_text(experiment_model_from())
    target = output or SCHEMA_FILE
    if check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            click.echo(f"{target} is out of date; run `lungfuse schema`", err=True)
            sys.exit(1)
        click.echo(f"{target} is up to date")
        return
    write_text(target, text)
    click.echo(f"wrote {target}")


def schema_text(model: type) -> str:
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lungfuse experiment configuration"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


@click.command("validate")
@click.argument("config", type=click.Path(path_type=Path))
def validate_cmd(config: Path) -> None:
    """Check an experiment config (keys, types, plugin kinds, data files) without running it."""
    from lungfuse.core.baselines import resolve_baselines
    from lungfuse.core.config import load_config
    from lungfuse.core.registry import default_registry

    cfg = load_config(config)
    # baselines are plugins of their own group: a name that is not installed, or one
    # unsuited to the task, is refused here as `run` would refuse it
    baselines = resolve_baselines(cfg, default_registry(), source=str(config))
    mods = ", ".join(f"{m.modality_name} ({m.kind})" for m in cfg.modalities)
    extra = f"; baselines {', '.join(b.label for b in baselines)}" if baselines else ""
    click.echo(f"ok: {config}: task {cfg.task.kind}; modalities {mods}; "
               f"fusion {cfg.fusion.kind}{extra}")


def _from_ctrl_c(exc: BaseException) -> bool:
    """Whether ``exc`` stands for a Ctrl-C: click turns KeyboardInterrupt into Abort, and
    Lightning's ``fit`` answers it with ``sys.exit(1)`` from inside its handler."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print one line and exit 2; Ctrl-C prints
    ``interrupted`` and exits 130, whichever command (or library inside it) caught it."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="lungfuse", standalone_mode=False)
    except LungfuseError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:
        click.echo("interrupted" if _from_ctrl_c(exc) else "aborted", err=True)
        sys.exit(130)
    except SystemExit as exc:
        if not _from_ctrl_c(exc):
            raise
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code in (1, 2) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(0)



if __name__ == "__main__":  # pragma: no cover
    main()
