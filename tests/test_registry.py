"""Plugin discovery: lazy listing, broken and incompatible plugins, name clashes."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
from plugin_fixtures import good_fusion_module, make_dist

from lungfuse.core.errors import PluginError
from lungfuse.core.registry import FUSION_GROUP, MODALITY_GROUP, PluginWarning, Registry


@pytest.fixture
def extra_path(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    for mod in [m for m in sys.modules if m.startswith("lfx_")]:
        del sys.modules[mod]


def test_builtin_and_example_plugins_are_discovered():
    reg = Registry()
    mods = {e.name: e for e in reg.entries(MODALITY_GROUP)}
    assert {"infnet", "mutations", "expression", "cnv"} <= set(mods)
    assert mods["cnv"].distribution == "lungfuse-cnv"
    assert mods["mutations"].distribution == "lungfuse"
    assert {"concat", "late", "gated", "kronecker", "transformer"} <= set(reg.names(FUSION_GROUP))
    assert reg.get(MODALITY_GROUP, "cnv").name == "cnv"


def test_import_failure_is_reported_and_others_still_load(extra_path):
    make_dist(extra_path, "broken-dist", "0.3", FUSION_GROUP,
              {"lfx_broken": "lfx_broken:Plugin", "lfx_fine": "lfx_fine:Plugin"},
              {"lfx_broken": "raise ImportError('needs libfoo')\n",
               "lfx_fine": good_fusion_module("lfx_fine")})
    reg = Registry()
    with pytest.warns(PluginWarning, match=r"lfx_broken.*broken-dist 0\.3.*needs libfoo"):
        loaded = reg.plugins(FUSION_GROUP)
    assert "lfx_fine" in loaded and "lfx_broken" not in loaded
    entry = next(e for e in reg.entries(FUSION_GROUP) if e.name == "lfx_broken")
    assert entry.status == "error" and "ImportError" in entry.reason
    with pytest.raises(PluginError, match=r"'lfx_broken'.*broken-dist 0\.3.*needs libfoo"):
        reg.get(FUSION_GROUP, "lfx_broken")


def test_incompatible_api_version_is_refused(extra_path):
    make_dist(extra_path, "future-dist", "9.0", FUSION_GROUP, {"lfx_future": "lfx_future:Plugin"},
              {"lfx_future": good_fusion_module("lfx_future", api=99)})
    reg = Registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        assert "lfx_future" not in reg.plugins(FUSION_GROUP)
    entry = next(e for e in reg.entries(FUSION_GROUP) if e.name == "lfx_future")
    assert entry.status == "incompatible"
    assert "API version 99" in entry.reason
    with pytest.raises(PluginError, match="future-dist 9.0"):
        reg.get(FUSION_GROUP, "lfx_future")


def test_duplicate_names_name_both_distributions(extra_path):
    make_dist(extra_path / "a", "dist-one", "1.0", FUSION_GROUP, {"lfx_dup": "lfx_dup_a:Plugin"},
              {"lfx_dup_a": good_fusion_module("lfx_dup")})
    make_dist(extra_path / "b", "dist-two", "2.0", FUSION_GROUP, {"lfx_dup": "lfx_dup_b:Plugin"},
              {"lfx_dup_b": good_fusion_module("lfx_dup")})
    sys.path[:0] = [str(extra_path / "a"), str(extra_path / "b")]
    try:
        reg = Registry()
        with pytest.raises(PluginError) as info:
            reg.get(FUSION_GROUP, "lfx_dup")
        msg = str(info.value)
        assert "dist-one 1.0" in msg and "dist-two 2.0" in msg
        assert "\n" not in msg
    finally:
        sys.path.remove(str(extra_path / "a"))
        sys.path.remove(str(extra_path / "b"))


def test_unknown_plugin_lists_installed():
    with pytest.raises(PluginError, match=r"no plugin 'nope'.*installed: .*concat"):
        Registry().get(FUSION_GROUP, "nope")


def test_listing_plugins_imports_no_torch():
    code = (
        "import sys\n"
        "from lungfuse.core.cli import main\n"
        "try:\n    main(['plugins'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'listing plugins imported torch'\n"
        "print('NO_TORCH')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "NO_TORCH" in res.stdout
    assert "cnv" in res.stdout and "lungfuse-cnv" in res.stdout
