"""Experiment configs: validation errors name the file, the path inside it and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lungfuse.core.config import load_config
from lungfuse.core.errors import ConfigError
from lungfuse.schemas import EXAMPLES_DIR


def write_cfg(tmp_path: Path, cfg: dict, name: str = "exp.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


@pytest.fixture
def base_cfg(tmp_path: Path) -> dict:
    (tmp_path / "data").mkdir()
    pd.DataFrame({"patient_id": ["TCGA-LF-0001"], "malignant": [1]}).to_parquet(
        tmp_path / "data" / "clinical.parquet")
    pd.DataFrame({"sample": ["TCGA-LF-0001-01A"], "gene": ["EGFR"], "log2_ratio": [0.3]}).to_parquet(
        tmp_path / "data" / "cnv.parquet")
    return {
        "name": "t",
        "cohort": {"clinical": "data/clinical.parquet"},
        "modalities": [{"kind": "cnv", "path": "data/cnv.parquet"}],
        "fusion": {"kind": "concat"},
    }


def test_valid_config_resolves_paths_relative_to_file(tmp_path, base_cfg, monkeypatch):
    monkeypatch.chdir("/")
    cfg = load_config(write_cfg(tmp_path, base_cfg))
    assert cfg.cohort.clinical == (tmp_path / "data" / "clinical.parquet").resolve()
    assert cfg.modalities[0].path == (tmp_path / "data" / "cnv.parquet").resolve()
    assert cfg.output_dir == (tmp_path / "runs").resolve()
    assert cfg.modalities[0].modality_name == "cnv"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.update(bogus=1), r"exp\.yaml: bogus: unknown key"),
        (lambda c: c["modalities"][0].update(top_nn=5), r"exp\.yaml: modalities\[0\]\.top_nn: unknown key"),
        (lambda c: c.update(training={"max_epochs": "many"}), r"exp\.yaml: training\.max_epochs: .*integer"),
        (lambda c: c["modalities"][0].update(kind="nosuch"),
         r"exp\.yaml: modalities\[0\](\.kind)?: unknown plugin kind 'nosuch'; available kinds: .*cnv"),
        (lambda c: c["fusion"].update(kind="nosuch"),
         r"exp\.yaml: fusion(\.kind)?: unknown plugin kind 'nosuch'; available kinds: .*concat"),
        (lambda c: c["cohort"].update(clinical="data/missing.parquet"),
         r"exp\.yaml: cohort\.clinical: file not found: .*missing\.parquet"),
        (lambda c: c["modalities"][0].update(path="nope.parquet"),
         r"exp\.yaml: modalities\[0\]\.path: file not found"),
        (lambda c: c.pop("cohort"), r"exp\.yaml: cohort: required setting is missing"),
        (lambda c: c["modalities"].append({"kind": "cnv", "path": "data/cnv.parquet"}),
         r"modality name\(s\) cnv used twice"),
    ],
)
def test_bad_configs_give_one_clear_line(tmp_path, base_cfg, mutate, expected):
    mutate(base_cfg)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(write_cfg(tmp_path, base_cfg))
    assert len(str(info.value).splitlines()) == 1


def test_invalid_yaml_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ncohort: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml line \d+ column \d+: invalid YAML"):
        load_config(p)


def test_cli_validate_exit_codes_and_no_traceback(tmp_path, base_cfg):
    good = write_cfg(tmp_path, base_cfg)
    ok = subprocess.run([sys.executable, "-m", "lungfuse.core.cli", "validate", str(good)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok:" in ok.stdout and "cnv" in ok.stdout
    base_cfg["training"] = {"max_epochs": -1}
    bad = write_cfg(tmp_path, base_cfg, "bad.yaml")
    res = subprocess.run([sys.executable, "-m", "lungfuse.core.cli", "validate", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"error: {bad.resolve()}: training.max_epochs: Input should be greater than or equal to 1"]
    dbg = subprocess.run([sys.executable, "-m", "lungfuse.core.cli", "--debug", "validate", str(bad)],
                         capture_output=True, text=True)
    assert dbg.returncode != 0 and "Traceback" in dbg.stderr


def test_example_configs_validate():
    examples = sorted(EXAMPLES_DIR.glob("*.yaml"))
    assert examples, "schemas/examples/ holds no example config"
    for p in examples:
        load_config(p, check_paths=False)


def test_committed_json_schema_is_up_to_date():
    res = subprocess.run([sys.executable, "-m", "lungfuse.core.cli", "schema", "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, (res.stdout + res.stderr).strip()


def test_config_using_a_broken_plugin_names_it_and_its_distribution(tmp_path, base_cfg, monkeypatch):
    from plugin_fixtures import make_dist

    from lungfuse.core.registry import MODALITY_GROUP, default_registry

    site = tmp_path / "site"
    make_dist(site, "omics-extra", "0.2", MODALITY_GROUP, {"lfx_meth": "lfx_meth:Plugin"},
              {"lfx_meth": "raise RuntimeError('compiled against another numpy')\n"})
    monkeypatch.syspath_prepend(str(site))
    default_registry(refresh=True)
    try:
        base_cfg["modalities"] = [{"kind": "lfx_meth"}]
        with pytest.raises(ConfigError, match=r"plugin 'lfx_meth' .*omics-extra 0\.2.*another numpy"):
            load_config(write_cfg(tmp_path, base_cfg))
    finally:
        monkeypatch.undo()
        default_registry(refresh=True)
