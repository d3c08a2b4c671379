"""Core never names a plugin: no module under ``core/`` imports ``lungfuse.plugins`` or
looks for a built-in plugin's config keys, and a third-party modality gets its own
section on the patient page and in the run report through the optional hooks."""

from __future__ import annotations

import ast
import base64
import importlib
import json
import logging
import re
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from plugin_fixtures import make_dist

import lungfuse.core
from lungfuse.core.contracts import ModalityPlugin, ModalitySection, call_section_hook

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

CORE = Path(lungfuse.core.__file__).parent
PLUGINS_PACKAGE = "lungfuse.plugins"


# ------------------------------------------------------------------ walking core's source
def _module_name(path: Path) -> str:
    rel = path.relative_to(CORE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["lungfuse.core", *parts])


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (prose may name anything; code may not)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _strings(tree: ast.AST) -> Iterator[ast.Constant]:
    """Every string literal of the code that is not a docstring."""
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node


def plugin_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """What in ``source`` (the module ``module``) imports ``lungfuse.plugins``: import and
    from-import statements (relative ones resolved) and module names in strings (for
    ``importlib.import_module`` / ``__import__``)."""
    tree = ast.parse(source)
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names = [target, *(f"{target}.{a.name}" for a in node.names)]
        for name in names:
            if name == PLUGINS_PACKAGE or name.startswith(PLUGINS_PACKAGE + "."):
                found.append(f"line {node.lineno}: imports {name}")
                break
    for node in _strings(tree):
        if PLUGINS_PACKAGE in node.value:
            found.append(f"line {node.lineno}: names {node.value!r}")
    return found


def _core_modules() -> Iterator[tuple[Path, str, str]]:
    paths = sorted(CORE.rglob("*.py"))
    assert len(paths) > 20, "core's source was not found"
    for path in paths:
        yield path, _module_name(path), path.read_text(encoding="utf-8")


@pytest.mark.parametrize("source, module, package, caught", [
    ("import lungfuse.plugins.imaging_infnet.ctio as c", "lungfuse.core.x", False, True),
    ("from lungfuse.plugins.genomics import plugin", "lungfuse.core.x", False, True),
    ("from lungfuse import plugins", "lungfuse.core.x", False, True),
    ("from ...plugins.imaging_infnet import ctio", "lungfuse.core.report.run", False, True),
    ("from ..plugins import fusion", "lungfuse.core", True, True),
    ("import importlib\nimportlib.import_module('lungfuse.plugins.fusion.plugin')",
     "lungfuse.core.x", False, True),
    ("from ..report import html", "lungfuse.core.report.run", False, False),
    ('"""Nothing here imports lungfuse.plugins."""\nimport lungfuse.core.errors',
     "lungfuse.core.x", False, False),
])
def test_the_import_walker_sees_every_form(source, module, package, caught) -> None:
    assert bool(plugin_imports(source, module, package)) is caught


def test_no_core_module_imports_a_plugin() -> None:
    bad = {}
    for path, module, source in _core_modules():
        found = plugin_imports(source, module, path.name == "__init__.py")
        if found:
            bad[str(path.relative_to(CORE))] = found
    assert not bad, f"core imports plugins: {bad}"


# ------------------------------------------------------------------ plugin config keys
#: Field names of built-in plugin configs that are also words of core's own vocabulary,
#: used there in core's sense: a file `path`, the `train` split, the string "nan" of a
#: metric table, ablation `heads`, training `epochs`, a `checkpoint` file of a fold, the
#: `format` tag of a fitted-state file, and the synthetic cohort's scan `slices` and
#: nodule `candidates` (core's synthetic CT writer makes that file itself), and the dtype
#: name `int8` (core's safetensors reader lists the tensor dtypes it accepts).
GENERIC = {"path", "train", "nan", "heads", "epochs", "checkpoint", "slices", "format",
           "candidates", "int8"}


def _fields(model: type, seen: set[type]) -> set[str]:
    """Field names of a pydantic model and of the models nested in it."""
    from pydantic import BaseModel

    if model in seen:
        return set()
    seen.add(model)
    out = set(model.model_fields)

    def walk(t: object) -> None:
        if isinstance(t, type) and issubclass(t, BaseModel):
            out.update(_fields(t, seen))
        for arg in typing.get_args(t):
            walk(arg)

    for f in model.model_fields.values():
        walk(f.annotation)
    return out


def plugin_config_keys() -> set[str]:
    """Config keys that belong to a built-in plugin alone: the fields of the built-in
    plugins' config models, less the fields every modality/fusion config has, less those
    of lungfuse's own models (experiment config, scoring input), less GENERIC."""
    from lungfuse.core.contracts import FusionConfig, ModalityConfig
    from lungfuse.core.registry import PLUGIN_GROUPS, Registry
    from lungfuse.schemas import ExperimentConfigBase, ScoreInput

    reg = Registry()
    keys: set[str] = set()
    for group in PLUGIN_GROUPS:
        for entry in reg.entries(group):
            if entry.value.startswith(PLUGINS_PACKAGE + "."):
                keys |= _fields(reg.get(group, entry.name).config_model, set())
    own = _fields(ExperimentConfigBase, set()) | _fields(ScoreInput, set())
    return keys - _fields(ModalityConfig, set()) - _fields(FusionConfig, set()) - own - GENERIC


def key_tests(source: str, keys: set[str]) -> list[str]:
    """String literals of ``source`` that are one of ``keys`` (``"ct_root" in cfg``,
    ``cfg.get("series_column")``, ``getattr(cfg, "masks_dir")`` ...)."""
    return [f"line {n.lineno}: {n.value!r}" for n in _strings(ast.parse(source))
            if n.value in keys]


def test_the_key_list_holds_plugin_keys_and_no_generic_word() -> None:
    keys = plugin_config_keys()
    assert {"ct_root", "series_column", "masks_dir", "annotations", "gene_column"} <= keys
    assert not keys & {"path", "kind", "name", "embedding_dim", "patient_id", "seed"}
    assert key_tests('if "ct_root" in mcfg:\n    col = mcfg.get("series_column")', keys) \
        == ["line 1: 'ct_root'", "line 2: 'series_column'"]


def test_no_core_module_tests_a_plugins_config_keys() -> None:
    keys = plugin_config_keys()
    bad = {}
    for path, _, source in _core_modules():
        found = key_tests(source, keys)
        if found:
            bad[str(path.relative_to(CORE))] = found
    assert not bad, f"core looks for plugin config keys: {bad}"


# ------------------------------------------------------------------ the section hooks
class _Hooked(ModalityPlugin):
    """A minimal plugin whose patient_section returns whatever the test puts in ``out``."""

    name = "hooked"
    out: object = None

    def available(self, cohort, ctx):
        return set()

    def prepare(self, train, ctx):
        pass

    def transform(self, patients, ctx):
        return pd.DataFrame()

    def build_encoder(self, n_features):
        raise NotImplementedError

    def patient_section(self, patient, row, workdir):
        if isinstance(self.out, Exception):
            raise self.out
        return self.out


@pytest.mark.parametrize("out, why", [
    (RuntimeError("scanner\noffline"), "patient_section failed, section left out "
                                       "(RuntimeError: scanner offline)"),
    ("a section", "returned str, not a ModalitySection"),
    (ModalitySection("X", figures=[(b"GIF89a", "not a png")]), "PNG bytes"),
    (ModalitySection(""), "title"),
])
def test_a_failing_or_malformed_hook_costs_only_its_section(out, why, caplog) -> None:
    from lungfuse.core.contracts import ModalityConfig

    plug = _Hooked(ModalityConfig(kind="hooked"))
    plug.out = out
    with caplog.at_level(logging.WARNING, logger="lungfuse"):
        assert call_section_hook(plug, "patient_section", {"id": "P1"}, pd.Series(dtype=object),
                                 Path("."), where="score: patient P1") is None
    assert "score: patient P1: modality hooked: " in caplog.text and why in caplog.text


def test_sections_of_two_modalities_with_one_title_are_told_apart() -> None:
    from lungfuse.core.report.run import sections_of

    got = sections_of([("ct", ModalitySection("Nodule")), ("pet", ModalitySection("Uptake")),
                       ("ct2", ModalitySection("Nodule"))])
    assert [s.title for s in got] == ["Nodule (ct)", "Uptake", "Nodule (ct2)"]


def test_a_plugin_without_the_hook_is_not_called() -> None:
    from lungfuse.core.contracts import ModalityConfig, overrides

    class Plain(_Hooked):
        patient_section = ModalityPlugin.patient_section

    assert overrides(_Hooked, "patient_section") and not overrides(Plain, "report_section")
    assert not overrides(Plain(ModalityConfig(kind="hooked")), "patient_section")


# ------------------------------------------------------------------ a third-party imaging plugin
TOY = '''
from typing import Literal

from lungfuse.core.contracts import ModalityConfig, ModalityPlugin, ModalitySection
from lungfuse.schemas import InputPath

FAIL_FOR = set()  # patient ids whose page section the test makes fail


class ToyScanConfig(ModalityConfig):
    kind: Literal["toyscan"] = "toyscan"
    path: InputPath
    embedding_dim: int = 4


def _picture(seed):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(np.random.default_rng(seed).random((8, 8)), cmap="gray")
    return fig


class ToyScan(ModalityPlugin):
    """A stand-in for a third-party imaging plugin: per-patient 'scan' features from a
    table, and a picture of each patient's scan on the pages."""

    name = "toyscan"
    config_model = ToyScanConfig

    def __init__(self, config):
        super().__init__(config)
        self.mean_ = None

    def _read(self):
        import pandas as pd
        return pd.read_parquet(self.config.path)

    def available(self, cohort, ctx):
        return set(self._read().index) & set(cohort.index)

    def prepare(self, train, ctx):
        df = self._read()
        self.mean_ = df[df.index.isin(train.index)].mean().tolist()

    def transform(self, patients, ctx):
        df = self._read()
        out = (df[df.index.isin(patients.index)] - self.mean_).astype("float32")
        out.index.name = "patient_id"
        return out

    def build_encoder(self, n_features):
        import torch.nn as nn
        enc = nn.Sequential(nn.Linear(n_features, 8), nn.ReLU(), nn.Linear(8, 4))
        enc.embedding_dim = 4
        return enc

    def state_dict(self):
        return {"mean": self.mean_}

    def load_state_dict(self, state):
        self.mean_ = list(state["mean"])

    def patient_section(self, patient, row, workdir):
        pid = patient["id"]
        if pid in FAIL_FOR:
            raise RuntimeError(f"cannot draw {pid}")
        assert workdir.is_dir() and "malignant" not in row, "pages must not see outcomes"
        section = ModalitySection("Toy scan", paragraphs=[
            f"toy view of {pid}; fitted mean {self.mean_[0]!r}; age given: {'age' in row}"])
        section.add_figure(_picture(len(pid)), f"toy scan of {pid}")
        return section

    def report_section(self, patients, workdir):
        assert "malignant" not in patients.columns, "a report hook must not see outcomes"
        section = ModalitySection("Toy scan overview", paragraphs=[
            "held out: " + ",".join(patients.index)])
        section.add_figure(_picture(0), "toy overview")
        return section
'''


@pytest.fixture
def toy_installed(tmp_path, monkeypatch):
    """The toy plugin as an installed third-party distribution (entry point and all), in
    the process-wide registry that `lungfuse run`, `report` and `score` use."""
    from lungfuse.core import registry

    make_dist(tmp_path / "site", "toyscan-dist", "0.1", "lungfuse.modalities",
              {"toyscan": "lfx_toyscan:ToyScan"}, {"lfx_toyscan": TOY})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(registry, "_default", registry.Registry())
    yield importlib.import_module("lfx_toyscan")  # the module the entry point loads
    sys.modules.pop("lfx_toyscan", None)


def _images(page: str) -> dict[str, bytes]:
    """caption (alt text) -> PNG bytes of every figure of a page."""
    return {alt: base64.b64decode(b64) for alt, b64 in
            re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page)}


def test_a_third_party_imaging_plugin_gets_its_sections(toy_installed, tmp_path, caplog) -> None:
    from test_pipeline import config, make_data, run

    from lungfuse.core.scoring import score_patients
    from lungfuse.core.state_io import load_state

    root = tmp_path / "data"
    root.mkdir()
    make_data(root)
    cfg = config(root, "binary", "gated", output_dir=str(tmp_path / "runs"))
    cfg["modalities"][0] = {"kind": "toyscan", "path": str(root / "fake.parquet")}
    run_dir = run(cfg).run_dir

    # the run report: the toy's section, drawn on the first fold's held-out patients it has
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<h2>Toy scan overview</h2>" in report
    assert _images(report)["toy overview"].startswith(b"\x89PNG")
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    first = pred[(pred.seed == 0) & (pred.fold == 0) & pred.present_toyscan.astype(bool)]
    listed = re.search(r"held out: ([^<]*)</p>", report).group(1).split(",")
    assert listed == list(first.patient_id) and len(listed) > 3

    # the patient page: the toy's section for a patient it has, on the first fold's state
    have = set(pd.read_parquet(root / "fake.parquet").index)
    ids = sorted(pd.read_parquet(root / "clinical.parquet").patient_id)
    with_toy = [i for i in ids if i in have]
    without = next(i for i in ids if i not in have)
    toy_installed.FAIL_FOR.add(with_toy[1])
    spec = {"patients": [{"id": with_toy[0]}, {"id": with_toy[1]}, {"id": without}],
            "clinical": str(root / "clinical.parquet")}
    with caplog.at_level(logging.WARNING, logger="lungfuse"):
        res = score_patients(run_dir, spec, tmp_path / "scores", progress=False)
    ok, broken, absent = (res.folder / s["page"] for s in res.patients)
    page = ok.read_text(encoding="utf-8")
    mean = load_state(run_dir / "models" / "seed0-fold0" / "modality_state.json")["toyscan"]
    assert "<h2>Toy scan</h2>" in page
    assert f"toy view of {with_toy[0]}; fitted mean {mean['mean'][0]!r}; age given: True" in page
    assert _images(page)[f"toy scan of {with_toy[0]}"].startswith(b"\x89PNG")
    # a failing hook costs its section only; a patient without the modality gets none
    assert all(s["status"] == "ok" for s in res.patients)
    assert f"cannot draw {with_toy[1]}" in caplog.text
    for other in (broken, absent):
        text = other.read_text(encoding="utf-8")
        assert "Toy scan" not in text and "<h2>Model</h2>" in text
    assert not [p for p in res.folder.iterdir() if p.name.startswith(".page-")]
    info = json.loads((res.folder / "scores.json").read_text(encoding="utf-8"))
    assert info["modalities"] == ["toyscan", "cnv"]
    from browser import chromium, render_counts

    if chromium() is not None:  # the plugin's figure loads in a real browser
        images, loaded = render_counts(ok)
        assert images >= 3 and loaded == images
