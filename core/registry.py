"""Plugin discovery through entry points.

Listing reads package metadata only. Loading imports the plugin's module; a plugin that
fails to import, or declares an incompatible plugin-API version, is reported with its
name, distribution and reason, and the others keep working. Two distributions offering
the same plugin name in one group is an error that names both.
"""

from __future__ import annotations

import importlib.metadata as md
import warnings
from dataclasses import dataclass, field
from typing import Any

from lungfuse.core.contracts import (
    COMPATIBLE_API_VERSIONS,
    FusionPlugin,
    ModalityPlugin,
)
from lungfuse.core.errors import PluginError

MODALITY_GROUP = "lungfuse.modalities"
FUSION_GROUP = "lungfuse.fusion"
COMMAND_GROUP = "lungfuse.commands"
PLUGIN_GROUPS = (MODALITY_GROUP, FUSION_GROUP)
_BASES: dict[str, type] = {MODALITY_GROUP: ModalityPlugin, FUSION_GROUP: FusionPlugin}


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
            by_name: dict[str, list[PluginEntry]] = {}
            for e in found:
                by_name.setdefault(e.name, []).append(e)
            for name, same in by_name.items():
                if len(same) > 1:
                    origins = " and ".join(e.origin for e in same)
                    for e in same:
                        e.status = "conflict"
                        e.reason = (
                            f"plugin name '{name}' in {group} is provided by both {origins}; "
                            "uninstall one of them"
                        )
            self._entries[group] = found
        return self._entries[group]

    def names(self, group: str) -> list[str]:
        return sorted({e.name for e in self.entries(group)})

    # ---- loading -------------------------------------------------------------------
    def _load_entry(self, entry: PluginEntry) -> PluginEntry:
        if entry.status in ("ok", "error", "incompatible", "conflict"):
            return entry
        try:
            obj = entry._ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
            entry.status = "error"
            entry.reason = f"import failed: {type(exc).__name__}: {exc}".strip()
            return entry
        problem = _validate_plugin(entry, obj)
        if problem:
            entry.status = "incompatible" if "API version" in problem else "error"
            entry.reason = problem
            return entry
        entry.obj = obj
        entry.status = "ok"
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
        entry = self._load_entry(matches[0])
        if entry.status != "ok":
            raise PluginError(f"{entry.describe()} cannot be used: {entry.reason}")
        return entry.obj

    def modalities(self, *, warn: bool = True) -> dict[str, type[ModalityPlugin]]:
        return self.plugins(MODALITY_GROUP, warn=warn)

    def fusions(self, *, warn: bool = True) -> dict[str, type[FusionPlugin]]:
        return self.plugins(FUSION_GROUP, warn=warn)


def _validate_plugin(entry: PluginEntry, obj: Any) -> str:
    """Empty string if ``obj`` is a usable plugin of ``entry.group``, else the reason."""
    from pydantic import BaseModel

    base = _BASES.get(entry.group)
    if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
        return f"{entry.value} is not a subclass of {base.__module__}.{base.__name__}"
    api = getattr(obj, "api_version", None)
    if api not in COMPATIBLE_API_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(COMPATIBLE_API_VERSIONS))
        return (
            f"declares plugin API version {api!r}, this lungfuse supports {supported}; "
            "upgrade the plugin or lungfuse"
        )
    name = getattr(obj, "name", None)
    if name != entry.name:
        return f"declares name {name!r} but is registered as '{entry.name}'"
    cfg = getattr(obj, "config_model", None)
    if not (isinstance(cfg, type) and issubclass(cfg, BaseModel)):
        return "has no pydantic `config_model`"
    kind = cfg.model_fields.get("kind")
    if kind is None or kind.annotation is None or name not in getattr(kind.annotation, "__args__", ()):
        return f"config_model {cfg.__name__} must declare kind: Literal['{name}']"
    return ""


_default: Registry | None = None


def default_registry(refresh: bool = False) -> Registry:
    """The process-wide registry (``refresh=True`` re-reads the entry points)."""
    global _default
    if _default is None or refresh:
        _default = Registry()
    return _default
