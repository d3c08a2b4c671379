"""Plugin discovery through entry points.

Listing reads package metadata only. Loading imports the plugin's module; a plugin that
fails to import (whatever it raises, ``SystemExit`` included), or declares an
incompatible plugin-API version, or a config whose ``kind`` is not exactly
``Literal["<its name>"]``, is reported with its name, distribution and reason, and the
others keep working.

Several distributions offering one plugin name in one group are resolved when that name
is loaded, so a clash never takes down plugins of other names:

* exactly one of them loads cleanly: it is used (status ``ok``, its reason names the
  ones passed over), the broken ones keep their own status and reason. A broken
  third-party package named ``mutations`` therefore cannot disable the built-in one;
* two or more load cleanly: all of those get status ``conflict`` with a reason naming
  every distribution; the name is left out of the config union, so it is an error only
  for a config (or ``get``) that uses it;
* none loads: each keeps its status, and ``get`` reports every reason.

``lungfuse plugins`` lists every entry with its status and reason.
"""

from __future__ import annotations

import importlib.metadata as md
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any

from lungfuse.core.contracts import (
    COMPATIBLE_API_VERSIONS,
    FusionConfig,
    FusionPlugin,
    ModalityConfig,
    ModalityPlugin,
)
from lungfuse.core.errors import PluginError

MODALITY_GROUP = "lungfuse.modalities"
FUSION_GROUP = "lungfuse.fusion"
COMMAND_GROUP = "lungfuse.commands"
PLUGIN_GROUPS = (MODALITY_GROUP, FUSION_GROUP)
_BASES: dict[str, type] = {MODALITY_GROUP: ModalityPlugin, FUSION_GROUP: FusionPlugin}
#: the config class a plugin base's ``config_model`` must derive from
_CONFIG_BASES: dict[type, type] = {ModalityPlugin: ModalityConfig, FusionPlugin: FusionConfig}


class PluginWarning(UserWarning):
    """A plugin was skipped (failed import, incompatible API, name clash)."""


@dataclass
class PluginEntry:
    """One entry point of a plugin group, and what became of loading it."""

    name: str
    group: str
    value: str
    distribution: str
    version: str
    status: str = "not loaded"  # ok | error | incompatible | conflict | not loaded
    #: how many entries of this group share the name (> 1: resolved on loading)
    same_name: int = 1
    reason: str = ""
    obj: Any = field(default=None, repr=False)
    _ep: Any = field(default=None, repr=False)

    @property
    def origin(self) -> str:
        return f"{self.distribution} {self.version}"

    def describe(self) -> str:
        return f"plugin '{self.name}' ({self.group}) from {self.origin}"


def _dist_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "<unknown>", "?"
    return dist.metadata["Name"] or "<unknown>", dist.version or "?"


class Registry:
    """The plugins installed in this environment.

    >>> reg = Registry()
    >>> [e.name for e in reg.entries(MODALITY_GROUP)]   # metadata only, nothing imported
    """

    def __init__(self) -> None:
        self._entries: dict[str, list[PluginEntry]] = {}

    # ---- listing (metadata only) -------------------------------------------------
    def entries(self, group: str) -> list[PluginEntry]:
        if group not in self._entries:
            seen: set[tuple[str, str, str]] = set()
            found: list[PluginEntry] = []
            for ep in md.entry_points(group=group):
                dist, version = _dist_of(ep)
                key = (ep.name, ep.value, dist)
                if key in seen:  # the same distribution seen twice on sys.path
                    continue
                seen.add(key)
                found.append(PluginEntry(ep.name, group, ep.value, dist, version, _ep=ep))
            found.sort(key=lambda e: (e.name, e.distribution))
            for e in found:
                e.same_name = sum(1 for o in found if o.name == e.name)
            self._entries[group] = found
        return self._entries[group]

    def names(self, group: str) -> list[str]:
        return sorted({e.name for e in self.entries(group)})

    # ---- loading -------------------------------------------------------------------
    def _import_entry(self, entry: PluginEntry) -> PluginEntry:
        """Import and check one entry (status ok / error / incompatible), once."""
        if entry.status != "not loaded":
            return entry
        try:
            obj = entry._ep.load()
        # SystemExit too: a plugin calling sys.exit() on import must not end the command;
        # KeyboardInterrupt still stops it
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported, not raised
            entry.status = "error"
            entry.reason = f"import failed: {type(exc).__name__}: {exc}".strip()
            return entry
        try:
            problem = _validate_plugin(entry, obj)
        except Exception as exc:  # noqa: BLE001 - a plugin object that breaks when inspected
            problem = f"cannot be inspected: {type(exc).__name__}: {exc}"
        if problem:
            entry.status = "incompatible" if "API version" in problem else "error"
            entry.reason = problem
            return entry
        entry.obj = obj
        entry.status = "ok"
        return entry

    def _load_entry(self, entry: PluginEntry) -> PluginEntry:
        """Load ``entry``; where several entries share its name, apply the rule of the
        module docstring to all of them."""
        if entry.same_name <= 1:
            return self._import_entry(entry)
        same = [e for e in self.entries(entry.group) if e.name == entry.name]
        if any(e.status == "not loaded" for e in same):
            for e in same:
                self._import_entry(e)
            working = [e for e in same if e.status == "ok"]
            others = [e for e in same if e.status != "ok"]
            if len(working) == 1 and others:
                skipped = ", ".join(f"{e.origin} ({e.status})" for e in others)
                working[0].reason = (f"chosen over {skipped}: the other package(s) providing "
                                     "this name failed to load")
            elif len(working) > 1:
                origins = " and ".join(e.origin for e in working)
                for e in working:
                    e.status = "conflict"
                    e.obj = None
                    e.reason = (f"plugin name '{e.name}' in {e.group} is provided by both "
                                f"{origins}; uninstall one of them")
        return entry

    def load_all(self, group: str, *, warn: bool = True) -> list[PluginEntry]:
        """Load every plugin of ``group``; problems are recorded on the entries (and warned)."""
        out = []
        for e in self.entries(group):
            self._load_entry(e)
            if e.status != "ok" and warn:
                warnings.warn(f"{e.describe()} skipped: {e.reason}", PluginWarning, stacklevel=2)
            out.append(e)
        return out

    def plugins(self, group: str, *, warn: bool = True) -> dict[str, Any]:
        """``{name: plugin class}`` of the plugins of ``group`` that loaded cleanly."""
        return {e.name: e.obj for e in self.load_all(group, warn=warn) if e.status == "ok"}

    def get(self, group: str, name: str) -> Any:
        """The plugin ``name`` of ``group``, or a one-line PluginError saying why not."""
        matches = [e for e in self.entries(group) if e.name == name]
        if not matches:
            avail = ", ".join(self.names(group)) or "none"
            raise PluginError(
                f"no plugin '{name}' in {group}; installed: {avail}. "
                "Install the package that provides it, or fix the name"
            )
        for e in matches:
            self._load_entry(e)
        ok = [e for e in matches if e.status == "ok"]
        if ok:
            return ok[0].obj
        conflict = [e for e in matches if e.status == "conflict"]
        if conflict:
            raise PluginError(f"plugin '{name}' ({group}) cannot be used: {conflict[0].reason}")
        if len(matches) == 1:
            raise PluginError(f"{matches[0].describe()} cannot be used: {matches[0].reason}")
        reasons = "; ".join(f"from {e.origin}: {e.reason}" for e in matches)
        raise PluginError(f"plugin '{name}' ({group}) cannot be used: every package providing "
                          f"it is broken ({reasons})")

    def modalities(self, *, warn: bool = True) -> dict[str, type[ModalityPlugin]]:
        return self.plugins(MODALITY_GROUP, warn=warn)

    def fusions(self, *, warn: bool = True) -> dict[str, type[FusionPlugin]]:
        return self.plugins(FUSION_GROUP, warn=warn)


def _validate_plugin(entry: PluginEntry, obj: Any) -> str:
    """Empty string if ``obj`` is a usable plugin of ``entry.group``, else the reason."""
    return declaration_problem(obj, _BASES.get(entry.group), registered_as=entry.name,
                               label=entry.value)


def declaration_problem(obj: Any, base: type | None, registered_as: str | None = None,
                        label: str | None = None) -> str:
    """Why ``obj`` does not declare itself as a plugin of ``base``, or "" if it does.

    The declaration rules, shared by the registry (a plugin that breaks one is reported
    and skipped) and by ``lungfuse.testing.check_declaration`` (a plugin author's test
    fails), so the two never disagree:

    1. ``obj`` is a subclass of ``base`` (:class:`ModalityPlugin` or :class:`FusionPlugin`;
       ``None``: any object);
    2. its ``api_version`` is one this lungfuse supports (the reason then names the "API
       version": the registry marks such a plugin ``incompatible``, not ``error``);
    3. ``name`` is a non-empty string, and the entry-point name when ``registered_as``
       is given;
    4. ``config_model`` is a pydantic model derived from :class:`ModalityConfig` /
       :class:`FusionConfig`;
    5. its ``kind`` field is exactly ``Literal["<name>"]``: one value, because a kind
       with more values could claim another plugin's configs and break the config union
       of every plugin (validate / run / schema).

    ``label`` names ``obj`` in the subclass rule (default: its qualified name). Only
    class attributes are read; nothing is instantiated or validated.
    """
    from pydantic import BaseModel

    config_base = _CONFIG_BASES.get(base) if base is not None else None
    if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
        what = label or getattr(obj, "__qualname__", repr(obj))
        return f"{what} is not a subclass of {base.__module__}.{base.__name__}"
    api = getattr(obj, "api_version", None)
    if api not in COMPATIBLE_API_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(COMPATIBLE_API_VERSIONS))
        return (
            f"declares plugin API version {api!r}, this lungfuse supports {supported}; "
            "upgrade the plugin or lungfuse"
        )
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        return f"declares no plugin name (a non-empty string `name`), got {name!r}"
    if registered_as is not None and name != registered_as:
        return f"declares name {name!r} but is registered as '{registered_as}'"
    cfg = getattr(obj, "config_model", None)
    if not (isinstance(cfg, type) and issubclass(cfg, BaseModel)):
        return "has no pydantic `config_model`"
    if config_base is not None and not issubclass(cfg, config_base):
        return (f"config_model {cfg.__name__} must subclass "
                f"{config_base.__module__}.{config_base.__name__}")
    kind = cfg.model_fields.get("kind")
    if (kind is None or typing.get_origin(kind.annotation) is not typing.Literal
            or typing.get_args(kind.annotation) != (name,)):
        return f"config_model {cfg.__name__} must declare kind: Literal['{name}'] (one value)"
    return ""


_default: Registry | None = None


def default_registry(refresh: bool = False) -> Registry:
    """The process-wide registry (``refresh=True`` re-reads the entry points)."""
    global _default
    if _default is None or refresh:
        _default = Registry()
    return _default
