"""What the modality and fusion checks share: a named check, failures, skipping, running.

A check is a plain function ``check_<rule>(case)`` that returns None when the plugin
keeps the rule and raises ``AssertionError("plugin '<name>': <rule broken>")`` when it
does not. A rule that cannot be checked for this plugin (no way to build the data it
needs) raises :class:`unittest.SkipTest`, which pytest reports as a skip and the
run-them-all entry points turn into a :class:`ConformanceWarning`.
"""

from __future__ import annotations

import unittest
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from lungfuse.core.registry import declaration_problem


class ConformanceWarning(UserWarning):
    """A conformance check was skipped (it could not run for this plugin)."""


def fail(plugin: Any, rule: str) -> AssertionError:
    """The failure of one check: the plugin's name and the rule it broke, one line."""
    return AssertionError(f"plugin {getattr(plugin, 'name', plugin)!r}: {rule}")


def skip(reason: str) -> unittest.SkipTest:
    return unittest.SkipTest(reason)


class Check:
    """One named check bound to the case it checks: call it with no arguments.

    ``name`` is the check function's name (``check_state_round_trip``), which the pytest
    helpers use as the test id.
    """

    def __init__(self, func: Callable[[Any], None], case: Any) -> None:
        self.func = func
        self.case = case
        self.name: str = func.__name__

    def __call__(self) -> None:
        self.func(self.case)

    def __repr__(self) -> str:
        return f"{self.name}({getattr(self.case.plugin, '__qualname__', self.case.plugin)})"


def run_all(checks: Iterable[Check]) -> None:
    """Run every check in order; the first failure is raised, skips become warnings."""
    for check in checks:
        try:
            check()
        except unittest.SkipTest as exc:
            warnings.warn(f"{check!r} skipped: {exc}", ConformanceWarning, stacklevel=3)


def parametrize(checks: list[Check]) -> Any:
    """``pytest.mark.parametrize("check", checks)`` with each check's name as its id."""
    import pytest  # only plugin authors' test suites need it

    return pytest.mark.parametrize("check", checks, ids=[c.name for c in checks])


# -- the rules every plugin keeps --------------------------------------------------------
def _plugin_and_base(case: Any) -> tuple[Any, type | None]:
    """``(plugin, plugin base)`` of a case, or of a plugin class given directly."""
    if not isinstance(case, type):
        return case.plugin, case.base
    from lungfuse.core.contracts import FusionPlugin, ModalityPlugin

    base = next((b for b in (ModalityPlugin, FusionPlugin) if issubclass(case, b)), None)
    return case, base


def check_declaration(case: Any) -> None:
    """The plugin declares itself as the registry requires: a subclass of the plugin base,
    a supported ``api_version``, a non-empty ``name``, a ``config_model`` derived from
    the base config with ``kind: Literal["<name>"]``. The rules are the registry's own
    (:func:`lungfuse.core.registry.declaration_problem`), so a plugin that passes here is
    not refused when installed."""
    plugin, base = _plugin_and_base(case)
    if base is None:
        raise fail(plugin, "is not a subclass of lungfuse.core.contracts.ModalityPlugin or "
                   "FusionPlugin")
    problem = declaration_problem(plugin, base, label=getattr(plugin, "__qualname__", None))
    if problem:
        raise fail(plugin, problem)


def check_config_model(case: Any) -> None:
    """The config model refuses unknown keys (a misspelt setting is an error, not
    silently ignored), its ``kind`` defaults to the plugin's name, and it has a JSON
    Schema (``lungfuse schema`` writes one for editors)."""
    from pydantic import ValidationError

    plugin, _ = _plugin_and_base(case)
    cfg = plugin.config_model
    kind = cfg.model_fields.get("kind")
    if kind is None or kind.default != plugin.name:
        raise fail(plugin, f"config_model.kind should default to {plugin.name!r}")
    try:
        cfg.model_validate({"kind": plugin.name, "__surely_not_a_setting__": 1},
                           context={"check_paths": False})
    except ValidationError as exc:
        if not any(e["type"] == "extra_forbidden" for e in exc.errors()):
            raise fail(plugin, "config_model must refuse unknown keys (extra='forbid')") from None
    else:
        raise fail(plugin, "config_model must refuse unknown keys (extra='forbid')")
    try:
        cfg.model_json_schema()
    except Exception as exc:  # noqa: BLE001 - any failure is the rule broken
        raise fail(plugin, f"config_model has no JSON Schema ({type(exc).__name__}: {exc}); "
                   "`lungfuse schema` needs one") from exc
