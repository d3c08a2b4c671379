"""Issue 11, case 1 (safe loading) and case 8's second half (a damaged fold is one line).

Every entry point that reads a file a user may have downloaded or found in a shared run
folder is fed a crafted pickle (an object whose ``__reduce__`` creates a marker file when
unpickled): the marker must never appear and the answer must be one clear
``LungfuseError`` line. Fitted state is stored as JSON + safetensors and round-trips
exactly; run folders of older lungfuse versions (``modality_state.pkl``) are refused with
a line saying how to re-create them; old feature-cache entries are a cache miss.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_pipeline import FakeModality, config, make_data, run

from lungfuse.core.errors import DataError, LungfuseError, PluginError
from lungfuse.core.state_io import (
    StateFormatError,
    arrays_path,
    check_state,
    load_state,
    load_torch,
    save_state,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


# ------------------------------------------------------------------ the payload
class Payload:
    """Unpickling this opens (so creates) ``marker``: code run by merely loading a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_pickle(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"state": Payload(marker)}))
    return path


def write_torch_payload(path: Path, marker: Path) -> Path:
    """A ``.pth`` as torch.save writes it, with the payload inside a state dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Payload(marker)}, path)
    return path


def test_the_payload_is_live(tmp_path) -> None:
    """The crafted files do run code under a plain unpickler, so the tests below that see
    no marker prove the loaders refused them."""
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    pickle.loads(write_pickle(tmp_path / "a.pkl", m1).read_bytes())
    torch.load(write_torch_payload(tmp_path / "b.pth", m2), weights_only=False)
    assert m1.exists() and m2.exists()


def one_line(exc: BaseException, *needles: str) -> str:
    msg = str(exc)
    assert isinstance(exc, LungfuseError), type(exc)
    assert "\n" not in msg and msg.strip() == msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def cli(argv: list[str], capsys) -> str:
    """``lungfuse ARGV`` as the console script runs it: (exit code 2, error line)."""
    from lungfuse.core.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    lines = err.splitlines()
    assert lines and lines[-1].startswith("error: "), err
    return lines[-1]


# ------------------------------------------------------------------ state format
def test_state_round_trip_is_exact(tmp_path) -> None:
    from collections import OrderedDict

    state = {
        "plain": [1, -2, 2.5, None, True, "gène", float("nan"), float("inf"), -float("inf")],
        "tuple": (1, ("a", 2.0)),
        "nested": {"a": {"b": {"c": [np.arange(3.0)]}}},
        "f64": np.linspace(0, 1, 7).reshape(7, 1), "i32": np.arange(12, dtype=np.int32).reshape(3, 4),
        "u8": np.array([0, 255], np.uint8), "bool": np.array([True, False]),
        "f16": np.array([1.5, -2.0], np.float16), "empty": np.zeros((0, 3), np.float32),
        "big_endian": np.arange(4, dtype=">i4"), "strings": np.array([["ab", "c"], ["", "é"]]),
        "np_scalars": [np.float32(1.25), np.float64("nan"), np.int64(-(2**62)), np.bool_(True),
                       np.str_("x")],
        "tensor": torch.randn(4, 5), "bf16": torch.randn(6).to(torch.bfloat16),
        "int_tensor": torch.tensor(7, dtype=torch.int64), "param": torch.nn.Parameter(torch.ones(2)),
        "non_contig": torch.arange(12.0).reshape(3, 4).t(),
        "ordered": OrderedDict([("z", 1), ("a", 2)]),
        "odd_keys": {1: "int", (2, "t"): [3], None: 0, 2.5: "f"},
        "$dollar": {"$array": "not an array"},
    }
    save_state(tmp_path / "s.json", {"m": state, "other": {}})
    back = load_state(tmp_path / "s.json")
    assert back["other"] == {}
    got = back["m"]
    assert list(got) == list(state)
    assert got["plain"][:6] == state["plain"][:6] and np.isnan(got["plain"][6])
    assert got["plain"][7:] == [float("inf"), -float("inf")]
    assert got["tuple"] == (1, ("a", 2.0)) and type(got["tuple"][1]) is tuple
    assert np.array_equal(got["nested"]["a"]["b"]["c"][0], np.arange(3.0))
    for k in ("f64", "i32", "u8", "bool", "f16", "empty", "strings"):
        assert got[k].dtype == state[k].dtype and got[k].shape == state[k].shape, k
        assert np.array_equal(got[k], state[k]), k
    assert got["big_endian"].tolist() == [0, 1, 2, 3] and got["big_endian"].dtype == np.int32
    for a, b in zip(state["np_scalars"], got["np_scalars"], strict=True):
        assert type(a) is type(b) and (a == b or (np.isnan(a) and np.isnan(b)))
    for k in ("tensor", "bf16", "int_tensor", "param", "non_contig"):
        assert isinstance(got[k], torch.Tensor) and got[k].dtype == state[k].dtype, k
        assert torch.equal(got[k], state[k].detach()), k
    assert list(got["ordered"].items()) == [("z", 1), ("a", 2)]
    assert got["odd_keys"] == state["odd_keys"] and got["$dollar"] == state["$dollar"]
    assert arrays_path(tmp_path / "s.json").is_file()
    doc = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert doc["format"] == "lungfuse-state" and doc["version"] == 1


def test_state_without_arrays_is_json_only(tmp_path) -> None:
    save_state(tmp_path / "s.json", {"m": {"genes": ["A", "B"], "mean": {"A": 0.5}}})
    assert not arrays_path(tmp_path / "s.json").exists()
    assert load_state(tmp_path / "s.json") == {"m": {"genes": ["A", "B"], "mean": {"A": 0.5}}}


@pytest.mark.parametrize("value, what", [
    ({1, 2}, "builtins.set"), (Path("x"), "Path"), (pd.Series([1.0]), "Series"),
    (np.array([object()], dtype=object), "dtype object"), (Payload(Path("m")), "Payload"),
    (np.complex128(1j), "complex128"),
])
def test_unsupported_value_names_modality_and_key(tmp_path, value, what) -> None:
    states = {"cnv": {"ok": [1.0], "deep": {"bad": [0, value]}}}
    for call in (lambda: check_state(states), lambda: save_state(tmp_path / "s.json", states)):
        with pytest.raises(PluginError) as exc:
            call()
        one_line(exc.value, "modality 'cnv'", "['deep']['bad'][1]", what, "state_dict")
    assert not list(tmp_path.iterdir()), "nothing written"


def _tamper(tmp_path: Path, how: str) -> Path:
    path = tmp_path / "s.json"
    save_state(path, {"m": {"w": np.arange(4.0), "t": torch.ones(3)}})
    doc = json.loads(path.read_text(encoding="utf-8"))
    if how == "pickle":
        write_pickle(path, tmp_path / "marker")
    elif how == "version":
        doc["version"] = 99
    elif how == "format":
        doc["format"] = "something-else"
    elif how == "shape":
        doc["modalities"]["m"]["w"]["$array"]["shape"] = [2, 3]
    elif how == "dtype":
        doc["modalities"]["m"]["w"]["$array"]["dtype"] = "<i8"
    elif how == "object-dtype":
        doc["modalities"]["m"]["w"]["$array"]["dtype"] = "|O"
    elif how == "unknown-tag":
        doc["modalities"]["m"]["w"] = {"$pickle": "gASV"}
    elif how == "other-arrays":  # an array file of another write: hash differs
        save_state(tmp_path / "o.json", {"m": {"w": np.arange(4.0) + 1, "t": torch.zeros(3)}})
        shutil.copy(arrays_path(tmp_path / "o.json"), arrays_path(path))
    elif how == "no-arrays":
        arrays_path(path).unlink()
    elif how == "arrays-elsewhere":
        doc["arrays"]["file"] = "../../etc/passwd"
    elif how == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    if how in ("version", "format", "shape", "dtype", "object-dtype", "unknown-tag",
               "arrays-elsewhere"):
        path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize("how", ["pickle", "version", "format", "shape", "dtype",
                                 "object-dtype", "unknown-tag", "other-arrays", "no-arrays",
                                 "arrays-elsewhere", "deep"])
def test_foreign_or_tampered_state_is_refused_in_one_line(tmp_path, how) -> None:
    path = _tamper(tmp_path, how)
    with pytest.raises(StateFormatError) as exc:
        load_state(path, remedy="do this")
    one_line(exc.value, "do this")
    assert not (tmp_path / "marker").exists()


def test_load_torch_refuses_a_pickled_object_and_reads_weights(tmp_path) -> None:
    marker = tmp_path / "marker"
    with pytest.raises(DataError) as exc:
        load_torch(write_torch_payload(tmp_path / "evil.pth", marker), "checkpoint")
    one_line(exc.value, "evil.pth", "refused")
    assert not marker.exists()
    (tmp_path / "junk.pth").write_bytes(b"not a torch file at all")
    with pytest.raises(DataError) as exc:
        load_torch(tmp_path / "junk.pth")
    one_line(exc.value, "junk.pth")
    torch.save({"w": torch.arange(3.0), "meta": {"n": 1, "p": [0.5, None]}}, tmp_path / "ok.pt")
    ok = load_torch(tmp_path / "ok.pt")
    assert torch.equal(ok["w"], torch.arange(3.0)) and ok["meta"] == {"n": 1, "p": [0.5, None]}


# ------------------------------------------------------------------ shipped plugins' state
@pytest.mark.parametrize("name", ["cnv", "mutations", "expression"])
def test_shipped_plugin_state_round_trips(tmp_path, name) -> None:
    from lungfuse.core.registry import default_registry
    from lungfuse.testing import example_cohort

    cls = default_registry().modalities()[name]
    cohort = example_cohort()
    ids = list(cohort.index.astype(str))
    cfg = cls.example(tmp_path, ids)
    from lungfuse.core.contracts import ModalityContext

    ctx = ModalityContext(workdir=tmp_path / "w", seed=0, progress=False)
    ctx.workdir.mkdir()
    plugin = cls(cfg)
    plugin.prepare(cohort.loc[ids[::2]], ctx)
    patients = cohort.drop(columns=[c for c in ("malignant", "time", "event") if c in cohort])
    want = plugin.transform(patients, ctx)
    save_state(tmp_path / "s.json", {name: plugin.state_dict()})
    back = load_state(tmp_path / "s.json")[name]
    assert back == plugin.state_dict() or repr(back) == repr(plugin.state_dict())
    again = cls(cfg)
    again.load_state_dict(back)
    pd.testing.assert_frame_equal(again.transform(patients, ctx), want)


def test_infnet_state_round_trips(tmp_path) -> None:
    """The imaging state: hyper-parameters, slice settings, patients and every tensor of
    the segmenter's state dict (BatchNorm counters included)."""
    from lungfuse.plugins.imaging_infnet.config import SliceSettings
    from lungfuse.plugins.imaging_infnet.network import InfNet

    torch.manual_seed(0)
    model = InfNet("test_resnet", channel=8)
    state = {"model": {"hparams": model.hparams_dict, "state_dict": model.state_dict(),
                       "slices": SliceSettings(img_size=64).model_dump(),
                       "training_patients": ["P1", "P2"]}, "fit_patients": ["P1"]}
    save_state(tmp_path / "s.json", {"infnet": state})
    back = load_state(tmp_path / "s.json")["infnet"]
    assert back["model"]["hparams"] == state["model"]["hparams"]
    assert back["model"]["slices"] == state["model"]["slices"]
    assert back["fit_patients"] == ["P1"] and back["model"]["training_patients"] == ["P1", "P2"]
    sd = state["model"]["state_dict"]
    assert list(back["model"]["state_dict"]) == list(sd)
    for k, v in sd.items():
        assert back["model"]["state_dict"][k].dtype == v.dtype and torch.equal(
            back["model"]["state_dict"][k], v), k
    InfNet("test_resnet", channel=8).load_state_dict(back["model"]["state_dict"], strict=True)


# ------------------------------------------------------------------ imaging entry points
def test_infnet_import_refuses_a_crafted_pth(tmp_path, capsys) -> None:
    marker = tmp_path / "marker"
    evil = write_torch_payload(tmp_path / "Inf-Net-100.pth", marker)
    line = cli(["infnet", "import", str(evil), str(tmp_path / "out.pt")], capsys)
    assert "Inf-Net-100.pth" in line and "refused" in line
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_segment_predict_refuses_a_crafted_checkpoint(tmp_path, capsys) -> None:
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint

    marker = tmp_path / "marker"
    evil = write_torch_payload(tmp_path / "downloaded.pth", marker)
    (tmp_path / "ct").mkdir()
    cfg = tmp_path / "seg.yaml"
    cfg.write_text(yaml.safe_dump({"ct_root": "ct", "out_dir": "out"}), encoding="utf-8")
    line = cli(["segment", "predict", str(cfg), "--checkpoint", str(evil)], capsys)
    assert "downloaded.pth" in line
    with pytest.raises(DataError) as exc:  # the function predict/evaluate/prepare call
        load_checkpoint(evil)
    one_line(exc.value, "downloaded.pth", "refused")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_pretrained_backbone_weights_refuse_a_crafted_file(tmp_path) -> None:
    from lungfuse.plugins.imaging_infnet.network import InfNet

    marker = tmp_path / "marker"
    with pytest.raises(DataError) as exc:
        InfNet("test_resnet", channel=8,
               pretrained_weights=write_torch_payload(tmp_path / "bb.pth", marker))
    one_line(exc.value, "bb.pth")
    assert not marker.exists()


def test_lungfuse_checkpoints_load_weights_only(tmp_path) -> None:
    """What lungfuse itself writes (the segmentation checkpoint) loads with
    weights_only=True, through load_checkpoint."""
    from lungfuse.plugins.imaging_infnet.config import SliceSettings
    from lungfuse.plugins.imaging_infnet.network import InfNet
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint, save_checkpoint

    model = InfNet("test_resnet", channel=8)
    path = save_checkpoint(tmp_path / "infnet.pt", model, ["P1"], SliceSettings(img_size=64),
                           extra={"epochs": 1, "history": [{"val_dice": float("nan")}]})
    torch.load(path, weights_only=True)
    back, meta = load_checkpoint(path)
    assert meta["training_patients"] == ["P1"] and meta["slices"].img_size == 64
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


# ------------------------------------------------------------------ run folders
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("safe")
    make_data(root)
    res = run(config(root, "binary", "gated"))
    return root, res.run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / run_dir.name
    shutil.copytree(run_dir, dst)
    return dst


def _load(run_dir: Path, fold: int = 0):
    from lungfuse.core.folds import load_fold_model

    return load_fold_model(run_dir, 0, fold, plugins=[FakeModality])


def test_run_folder_state_is_json_and_loads(trained) -> None:
    _, run_dir = trained
    fdir = run_dir / "models" / "seed0-fold0"
    assert (fdir / "modality_state.json").is_file() and not (fdir / "modality_state.pkl").exists()
    assert not list(run_dir.rglob("*.pkl"))
    tf = _load(run_dir)
    assert set(tf.plugins) == {"fake", "cnv"}
    torch.load(fdir / "model.pt", weights_only=True)
    torch.load(fdir / "checkpoints" / "best.ckpt", weights_only=True)


def _old_format(run_dir: Path, marker: Path) -> None:
    for fdir in (run_dir / "models").glob("seed*-fold*"):
        (fdir / "modality_state.json").unlink()
        write_pickle(fdir / "modality_state.pkl", marker)


def test_old_run_folder_gets_the_recreate_line(trained, tmp_path) -> None:
    root, run_dir = trained
    d = _copy(run_dir, tmp_path)
    marker = tmp_path / "marker"
    _old_format(d, marker)
    with pytest.raises(DataError) as exc:
        _load(d)
    one_line(exc.value, "older lungfuse", "pickle", f"lungfuse run {d / 'config.yaml'}")
    assert not marker.exists()


def test_scoring_an_old_or_poisoned_run_runs_no_code(trained, tmp_path) -> None:
    from test_scoring import _score, _spec

    root, run_dir = trained
    marker = tmp_path / "marker"
    old = _copy(run_dir, tmp_path / "old")
    _old_format(old, marker)
    poisoned = _copy(run_dir, tmp_path / "poisoned")
    write_torch_payload(poisoned / "models" / "seed0-fold1" / "model.pt", marker)
    ids = sorted(pd.read_parquet(root / "clinical.parquet")["patient_id"])[:2]
    spec = _spec(root, ids, tmp_path)
    with pytest.raises(LungfuseError) as exc:
        _score(old, spec, tmp_path / "out_old")
    one_line(exc.value, "older lungfuse", "lungfuse run")
    with pytest.raises(LungfuseError) as exc:
        _score(poisoned, spec, tmp_path / "out_poisoned")
    one_line(exc.value, "model.pt")
    assert not marker.exists()
    assert not (tmp_path / "out_old").exists() and not (tmp_path / "out_poisoned").exists()


@pytest.mark.parametrize("target", ["model.pt", "modality_state.json"])
def test_poisoned_fold_file_is_refused(trained, tmp_path, target) -> None:
    _, run_dir = trained
    d = _copy(run_dir, tmp_path)
    marker = tmp_path / "marker"
    path = d / "models" / "seed0-fold0" / target
    if target == "model.pt":
        write_torch_payload(path, marker)
    else:
        write_pickle(path, marker)
    with pytest.raises(DataError) as exc:
        _load(d)
    one_line(exc.value, str(path), "lungfuse run")
    assert not marker.exists()


def _damage(d: Path, what: str) -> Path:
    fdir = d / "models" / "seed0-fold0"
    paths = {"config": d / "config.yaml", "meta": fdir / "meta.json",
             "state": fdir / "modality_state.json", "model": fdir / "model.pt"}
    kind, how = what.split("-")
    path = paths[kind]
    if how == "missing":
        path.unlink()
    elif how == "corrupt":
        path.write_bytes(b"\x00\x01{[: not what it should be" * 3)
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "incomplete":  # valid JSON missing a field
        meta = json.loads(path.read_text(encoding="utf-8"))
        del meta["embedding_dims"]
        path.write_text(json.dumps(meta), encoding="utf-8")
    elif how == "wrongstate":  # a valid state file whose content does not fit the plugin
        save_state(path, {"fake": {"nothing": 1}, "cnv": {"nothing": 2}})
    return path


@pytest.mark.parametrize("what", [
    "config-missing", "config-corrupt", "meta-missing", "meta-corrupt", "meta-incomplete",
    "state-missing", "state-corrupt", "state-wrongstate", "model-corrupt", "model-truncated",
])
def test_damaged_fold_is_one_line_naming_the_file(trained, tmp_path, what) -> None:
    _, run_dir = trained
    d = _copy(run_dir, tmp_path)
    path = _damage(d, what)
    with pytest.raises(LungfuseError) as exc:
        _load(d)
    one_line(exc.value, str(path))


def test_report_on_a_folder_with_a_payload(trained, tmp_path, capsys, monkeypatch) -> None:
    """`lungfuse report` reads a fold's state for the sections of modalities with a
    `report_section` hook (the CT modality's example segmentations)."""
    from lungfuse_cnv import CopyNumberModality

    _, run_dir = trained
    marker = tmp_path / "marker"
    # give the run's installed modality (cnv) a report hook, as the CT modality has
    monkeypatch.setattr(CopyNumberModality, "report_section",
                        lambda self, patients, workdir: None, raising=False)
    for variant in ("old", "poisoned"):
        d = _copy(run_dir, tmp_path / variant)
        if variant == "old":
            _old_format(d, marker)
        else:
            write_pickle(d / "models" / "seed0-fold0" / "modality_state.json", marker)
        (d / "report.html").unlink(missing_ok=True)  # the run wrote one; none may appear now
        line = cli(["report", str(d)], capsys)
        assert "seed0-fold0" in line and "lungfuse run" in line, line
        assert not (d / "report.html").exists()
    assert not marker.exists()


# ------------------------------------------------------------------ feature cache
def _prepare(root: Path, cache: Path, cls=FakeModality, **cfg):
    from lungfuse.core.cohort import Cohort
    from lungfuse.core.features import prepare_fold_features

    table = pd.read_parquet(root / "clinical.parquet").set_index("patient_id")
    cohort = Cohort(table=table, task="binary", outcome_columns=("malignant",))
    mcfg = cls.config_model(kind=cls.name, path=root / "fake.parquet", **cfg)
    train = list(table.index[::2])
    return prepare_fold_features("fake", cls, mcfg, cohort, train, workdir=cache / "work",
                                 cache_dir=cache)


def test_poisoned_or_old_feature_cache_entry_is_a_miss(trained, tmp_path, caplog) -> None:
    root, _ = trained
    marker = tmp_path / "marker"
    first = _prepare(root, tmp_path)
    entry = tmp_path / "fake" / first.key
    assert (entry / "state.json").is_file() and not (entry / "state.pkl").exists()
    assert _prepare(root, tmp_path).from_cache

    write_pickle(entry / "state.json", marker)  # poisoned new-format entry
    with caplog.at_level(logging.WARNING, logger="lungfuse"):
        again = _prepare(root, tmp_path)
    assert not again.from_cache and "unusable" in caplog.text
    assert again.state == first.state and load_state(entry / "state.json")["fake"] == first.state

    (entry / "state.json").unlink()  # an entry written by an older lungfuse
    write_pickle(entry / "state.pkl", marker)
    old = _prepare(root, tmp_path)
    assert not old.from_cache and not (entry / "state.pkl").exists()
    assert (entry / "state.json").is_file() and _prepare(root, tmp_path).from_cache
    assert not marker.exists()


class SetStateModality(FakeModality):
    """A plugin whose state holds a set: refused when prepared, naming modality and key."""

    def state_dict(self):
        return {"mean": self.mean_, "seen": {"a", "b"}}


def test_unstorable_plugin_state_fails_at_prepare(trained, tmp_path) -> None:
    root, _ = trained
    with pytest.raises(PluginError) as exc:
        _prepare(root, tmp_path, cls=SetStateModality)
    one_line(exc.value, "modality 'fake'", "['seen']", "set")
    assert not list(tmp_path.rglob("state.*")), "no cache entry written"
