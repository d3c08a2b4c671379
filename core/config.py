"""Loading experiment configs: YAML → pydantic, with one-line errors naming file and path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from lungfuse.core.errors import ConfigError
from lungfuse.core.registry import FUSION_GROUP, MODALITY_GROUP, Registry, default_registry


def experiment_model_from(registry: Registry | None = None) -> type[BaseModel]:
    """The ExperimentConfig model for the plugins installed (broken ones are skipped).

    A plugin whose config model pydantic cannot put into the config union is marked
    broken on the registry (``lungfuse plugins`` shows why) and left out, so one bad
    plugin does not stop ``validate`` / ``run`` / ``schema`` for the others.
    """
    from lungfuse.schemas import experiment_model

    reg = registry or default_registry()
    mods = {n: p.config_model for n, p in reg.plugins(MODALITY_GROUP, warn=False).items()}
    fus = {n: p.config_model for n, p in reg.plugins(FUSION_GROUP, warn=False).items()}
    try:
        return experiment_model(mods, fus)
    except ValueError as exc:
        raise ConfigError(f"{exc}; run `lungfuse plugins` to see what is installed") from exc
    except Exception as exc:  # noqa: BLE001 - pydantic refused the union: find the culprit
        union_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    for group, models in ((MODALITY_GROUP, mods), (FUSION_GROUP, fus)):
        claims: dict[str, list[str]] = {}  # kind value -> plugins whose config accepts it
        for name, model in models.items():
            for value in _kind_values(model):
                claims.setdefault(value, []).append(name)
        for name in sorted(models):
            stolen = [v for v in _kind_values(models[name]) if v != name and len(claims[v]) > 1]
            problem = (f"its config's kind also accepts {stolen[0]!r}, another plugin's kind"
                       if stolen else _config_model_problem(group, models[name]))
            if problem:
                _mark_broken(reg, group, name, problem)
                del models[name]
    try:
        return experiment_model(mods, fus)
    except ValueError as exc:
        raise ConfigError(f"{exc}; run `lungfuse plugins` to see what is installed") from exc
    except Exception:  # noqa: BLE001 - no single plugin to blame
        raise ConfigError(f"the installed plugins' configs cannot be combined ({union_error}); "
                          "run `lungfuse plugins` and uninstall the plugin named") from None


def _kind_values(model: type[BaseModel]) -> tuple[Any, ...]:
    """The values a config model's ``kind: Literal[...]`` accepts (empty if unknown)."""
    import typing

    field = model.model_fields.get("kind")
    if field is None or typing.get_origin(field.annotation) is not typing.Literal:
        return ()
    return typing.get_args(field.annotation)


def _config_model_problem(group: str, model: type[BaseModel]) -> str:
    """Why ``model`` cannot be a member of the config union, or "" if it can (it is tried
    alone, beside a placeholder of the other group)."""
    from typing import Literal

    from lungfuse.core.contracts import FusionConfig, ModalityConfig
    from lungfuse.schemas import experiment_model

    class _ProbeModality(ModalityConfig):
        kind: Literal["__probe__"] = "__probe__"

    class _ProbeFusion(FusionConfig):
        kind: Literal["__probe__"] = "__probe__"

    mods: dict[str, Any] = {"__probe__": _ProbeModality}
    fus: dict[str, Any] = {"__probe__": _ProbeFusion}
    (mods if group == MODALITY_GROUP else fus)["__tested__"] = model
    try:
        experiment_model(mods, fus)
    except Exception as exc:  # noqa: BLE001 - any refusal is the plugin's problem
        return f"its config model cannot be used: {type(exc).__name__}: {exc}".splitlines()[0]
    return ""


def _mark_broken(reg: Registry, group: str, name: str, reason: str) -> None:
    """Record on the registry that plugin ``name`` is unusable (``lungfuse plugins`` and
    config errors show ``reason``) and warn, as the registry does for a failed import."""
    import warnings

    from lungfuse.core.registry import PluginWarning

    for e in reg.entries(group):
        if e.name == name and e.status == "ok":
            e.status, e.reason, e.obj = "error", reason, None
            warnings.warn(f"{e.describe()} skipped: {reason}", PluginWarning, stacklevel=3)


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def format_loc(loc: tuple[Any, ...], data: Any = None) -> str:
    """``('modalities', 0, 'mutations', 'path')`` → ``modalities[0].path``.

    Pydantic inserts the discriminator tag of a union member into the location; it is
    dropped so the path matches what the user wrote.
    """
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue  # discriminator tag, not a key the user wrote
        if isinstance(node, dict) and part not in node and "kind" in node and str(part).startswith(
            ("function-", "tagged-union")
        ):
            continue
        out += f".{part}" if out else str(part)
        node = node.get(part) if isinstance(node, dict) else None
    return out or "<top level>"


def _message(err: dict[str, Any], registry: Registry | None = None) -> str:
    typ = err.get("type", "")
    msg = err.get("msg", "invalid")
    if typ == "extra_forbidden":
        return "unknown key; check the spelling (`lungfuse schema` lists the allowed keys)"
    loc = tuple(err.get("loc", ()))
    if typ == "union_tag_invalid" or (typ == "literal_error" and loc[-1:] == ("kind",)):
        ctx = err.get("ctx", {})
        tag = ctx.get("tag", err.get("input"))
        broken = _broken_plugin_reason(str(tag), registry)
        if broken:
            return broken
        expected = ctx.get("expected_tags") or ctx.get("expected")
        return f"unknown plugin kind {tag!r}; available kinds: {expected}"
    if typ == "missing":
        return "required setting is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg


def _broken_plugin_reason(kind: str, registry: Registry | None = None) -> str:
    """If an installed plugin of this name failed to load (or clashes), say which and why."""
    reg = registry or default_registry()
    for group in (MODALITY_GROUP, FUSION_GROUP):
        for e in reg.entries(group):
            if e.name == kind and e.status == "conflict":
                return f"plugin '{kind}' ({group}) is installed but unusable: {e.reason}"
        for e in reg.entries(group):
            if e.name == kind and e.status not in ("ok", "not loaded"):
                return f"{e.describe()} is installed but unusable: {e.reason}"
    return ""


def format_validation_error(exc: ValidationError, source: str, data: Any = None,
                            registry: Registry | None = None) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = format_loc(tuple(err.get("loc", ())), data)
        lines.append(f"{source}: {loc}: {_message(err, registry)}")
    return "\n".join(dict.fromkeys(lines))


def load_config(
    path: str | Path,
    registry: Registry | None = None,
    *,
    check_paths: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """Read and validate an experiment config. Relative paths resolve against the file."""
    path = Path(path).resolve()
    data = read_yaml(path)
    if overrides:
        data = {**data, **overrides}
    return validate_config(data, source=str(path), base_dir=path.parent, registry=registry,
                           check_paths=check_paths)


def validate_config(
    data: dict[str, Any],
    *,
    source: str = "<config>",
    base_dir: str | Path | None = None,
    registry: Registry | None = None,
    check_paths: bool = True,
    stored: bool = False,
) -> Any:
    """Validate ``data`` with the installed plugins' config models. ``stored``: ``data`` is
    a run folder's saved config (a plugin may then read a setting it lacks as what the
    version that wrote it did, via the validation context's ``stored_config``)."""
    model = experiment_model_from(registry)
    ctx = {"base_dir": Path(base_dir or Path.cwd()), "check_paths": check_paths,
           "stored_config": stored}
    try:
        return model.model_validate(data, context=ctx)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, data, registry)) from None


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """A JSON/YAML-ready dict of a validated config (paths as strings)."""
    return cfg.model_dump(mode="json")
