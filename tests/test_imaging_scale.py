"""Scale of the CT stage (issue 15): scans split over ranks, the compile cache key, the
precision switches. Tiny backbones (timm ``test_resnet``), 64-px synthetic scans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from lungfuse.plugins.imaging_infnet import ranks, synthetic

UIDS = [f"s{i}" for i in range(5)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "ct"
    synthetic.write_tree(root, UIDS, seed=5, size=64, depth=12)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lungfuse.plugins.imaging_infnet.config import SliceSettings
    from lungfuse.plugins.imaging_infnet.network import InfNet
    from lungfuse.plugins.imaging_infnet.train import save_checkpoint

    torch.manual_seed(0)
    model = InfNet("test_resnet", channel=8)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt", model, [],
                           SliceSettings(img_size=64))


def _config(path: Path, tree: Path, ck: Path, out: Path, threshold: float) -> Path:
    path.write_text(json.dumps({"ct_root": str(tree), "checkpoint": str(ck),
                                "out_dir": str(out), "overlays": False,
                                "threshold": threshold,
                                "fast": {"enabled": False}}), encoding="utf-8")
    return path


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_share_gives_every_scan_to_exactly_one_rank(world: int) -> None:
    items = [f"u{i:02d}" for i in range(11)]
    shuffled = list(np.random.default_rng(world).permutation(items))
    parts = [ranks.share(shuffled, ranks.Ranks(r, world)) for r in range(world)]
    flat = [u for p in parts for u in p]
    assert sorted(flat) == items and len(flat) == len(set(flat))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # the same split whatever order a rank listed the scans in
    assert parts == [ranks.share(items, ranks.Ranks(r, world)) for r in range(world)]


def test_ranks_come_from_torchrun_or_slurm_and_bad_ones_are_refused() -> None:
    from lungfuse.core.errors import ConfigError

    assert ranks.current({}) == ranks.Ranks(0, 1)
    assert ranks.current({"RANK": "1", "WORLD_SIZE": "4"}) == ranks.Ranks(1, 4)
    assert ranks.current({"SLURM_PROCID": "2", "SLURM_NTASKS": "3"}) == ranks.Ranks(2, 3)
    with pytest.raises(ConfigError, match="must lie in"):
        ranks.current({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="integers"):
        ranks.current({"RANK": "x", "WORLD_SIZE": "2"})


def test_segment_predict_on_two_processes_equals_one(tree: Path, checkpoint: Path,
                                                      tmp_path: Path) -> None:
    from lungfuse.core.cli import cli
    from lungfuse.plugins.imaging_infnet import ctio
    from lungfuse.plugins.imaging_infnet.infer import Predictor
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint

    # a threshold inside the untrained net's output range, so masks are not all one value
    model, meta = load_checkpoint(checkpoint)
    vol = ctio.read_volume(ctio.find_volumes(tree)["s0"])
    prob = Predictor(model, meta["slices"]).predict_volume(vol)
    thr = float(np.median(prob))
    assert 0 < thr < 1
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        cfg = _config(tmp_path / f"p{n}.yaml", tree, checkpoint, out, thr)
        r = CliRunner().invoke(cli, ["segment", "predict", str(cfg), "--processes", str(n),
                                      "--no-progress"])
        assert r.exit_code == 0, r.output
        outs[n] = out
    one = json.loads((outs[1] / "predict.json").read_text(encoding="utf-8"))
    two = json.loads((outs[2] / "predict.json").read_text(encoding="utf-8"))
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert one["written"] == two["written"] == UIDS
    by_rank = two["by_rank"]
    assert sorted(by_rank) == ["0", "1"] and all(by_rank.values())
    assert sorted(by_rank["0"] + by_rank["1"]) == UIDS  # each scan once, by one rank
    some_mask = False
    for u in UIDS:
        a = ctio.read_volume(outs[1] / "masks" / f"{u}.mhd").array
        b = ctio.read_volume(outs[2] / "masks" / f"{u}.mhd").array
        assert np.array_equal(a, b), u
        some_mask |= bool(0 < a.mean() < 1)
    assert some_mask


def _modality(tree: Path, checkpoint: Path, tmp: Path):
    from lungfuse.core.contracts import ModalityContext
    from lungfuse.plugins.imaging_infnet.plugin import InfNetModality

    cfg = InfNetModality.example(tmp, UIDS).model_copy(update={
        "ct_root": tree, "annotations": tree / "annotations.csv", "masks_dir": tree / "masks",
        "checkpoint": checkpoint})
    plugin = InfNetModality(cfg)
    ctx = ModalityContext(workdir=tmp, progress=False)
    plugin.prepare(pd.DataFrame(index=pd.Index(UIDS[:2], name="patient_id")), ctx)
    return plugin, ctx


def test_ct_features_split_over_two_ranks_equal_one_process(
        tree: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from lungfuse.plugins.imaging_infnet import plugin as plugin_mod

    patients = pd.DataFrame(index=pd.Index(UIDS, name="patient_id"))
    plugin_mod._FEATURES.clear()
    one_plugin, ctx = _modality(tree, checkpoint, tmp_path / "w1")
    one = one_plugin.transform(patients, ctx)
    assert len(one) == len(UIDS) and one["volume_mm3"].gt(0).any()

    # two ranks as two threads: each its own rank, its own plugin, the same shared folder
    plugin_mod._FEATURES.clear()
    monkeypatch.setenv(ranks.SHARE_ENV, str(tmp_path / "share"))
    local = threading.local()
    monkeypatch.setattr(ranks, "current", lambda env=None: local.ranks)
    calls: dict[int, list[str]] = {0: [], 1: []}
    real = plugin_mod.InfNetModality._read_volume

    def counting(self, uid, path):
        calls[local.ranks.rank].append(uid)
        return real(self, uid, path)

    monkeypatch.setattr(plugin_mod.InfNetModality, "_read_volume", counting)
    # Folding BatchNorm traces the backbone with torch.fx, whose trace patches
    # nn.Module.__call__ process-wide: a forward in the other thread meanwhile fails
    # ("module is not installed as a submodule"). Real ranks are processes; here the
    # network is folded once, before the threads, and each rank gets a copy.
    import copy

    from lungfuse.plugins.imaging_infnet import infer
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint

    folded = infer.fold_batchnorm(load_checkpoint(checkpoint)[0])
    monkeypatch.setattr(infer, "fold_batchnorm", lambda _model: copy.deepcopy(folded))
    out: dict[int, pd.DataFrame] = {}
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        local.ranks = ranks.Ranks(r, 2)
        try:
            p, c = _modality(tree, checkpoint, tmp_path / f"r{r}")
            out[r] = p.transform(patients, c)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for r in (0, 1):  # every rank ends with every patient's row, bit for bit
        pd.testing.assert_frame_equal(out[r], one, check_exact=True)
    files = list((tmp_path / "share" / "ct-rows").glob("*.json"))
    assert len(files) == len(UIDS)  # each scan's row written once
    # each scan read (and segmented) by exactly one rank, both ranks working
    assert sorted(calls[0] + calls[1]) == UIDS and calls[0] and calls[1]


def test_compile_key_follows_weights_shape_and_precision(checkpoint: Path,
                                                         tmp_path: Path) -> None:
    from lungfuse.plugins.imaging_infnet.config import FastPath
    from lungfuse.plugins.imaging_infnet.infer import compile_key
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint, save_checkpoint

    fast = FastPath(batch_size=4)
    a, meta = load_checkpoint(checkpoint)
    b, _ = load_checkpoint(checkpoint)
    shape = (4, 3, 64, 64)
    key = compile_key(a, shape, fast)
    assert compile_key(b, shape, fast) == key  # same weight file, another load: same key
    with torch.no_grad():  # one weight changed in the file: a new key
        next(iter(b.parameters())).view(-1)[0] += 1e-3
    changed = save_checkpoint(tmp_path / "changed.pt", b, [], meta["slices"])
    c, _ = load_checkpoint(changed)
    assert compile_key(c, shape, fast) != key
    assert compile_key(a, (8, 3, 64, 64), fast) != key
    assert compile_key(a, shape, fast.model_copy(update={"bf16": False})) != key
    assert compile_key(a, shape, fast.model_copy(update={"freeze": False})) != key


def test_fast_path_uses_the_keyed_compile_cache_folder(checkpoint: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the compiled graph is cached, without compiling (a compile of even the tiny
    network takes minutes on the shared test machine; bench/infnet_speed.py measures the
    cold and warm first call in fresh processes)."""
    from lungfuse.plugins.imaging_infnet import infer
    from lungfuse.plugins.imaging_infnet.config import FastPath
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "before"))
    monkeypatch.setenv(infer.COMPILE_CACHE_ENV, str(tmp_path / "cc"))
    model, meta = load_checkpoint(checkpoint)
    p = infer.Predictor(model, meta["slices"], FastPath(batch_size=2))
    folder = p.use_compile_cache()
    assert folder == tmp_path / "cc" / p.compile_key and folder.is_dir()
    assert Path(infer.os.environ["TORCHINDUCTOR_CACHE_DIR"]) == folder
    other, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        next(iter(other.parameters())).view(-1)[0] += 1e-3
    q = infer.Predictor(other, meta["slices"], FastPath(batch_size=2))
    assert q.use_compile_cache() != folder
    monkeypatch.setenv(infer.COMPILE_CACHE_ENV, "off")
    r = infer.Predictor(load_checkpoint(checkpoint)[0], meta["slices"], FastPath(batch_size=2))
    assert r.use_compile_cache() is None


@pytest.mark.parametrize("precision,dtype", [("32-true", torch.float32),
                                             ("bf16-mixed", torch.bfloat16)])
def test_segmenter_training_runs_in_the_configured_precision(
        tree: Path, tmp_path: Path, precision: str, dtype: torch.dtype) -> None:
    import lightning as L

    from lungfuse.plugins.imaging_infnet import ctio
    from lungfuse.plugins.imaging_infnet.config import SliceSettings, TrainSettings
    from lungfuse.plugins.imaging_infnet.dataset import build_pool
    from lungfuse.plugins.imaging_infnet.train import fit

    seen: list[torch.dtype] = []

    class Watch(L.Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            pl_module.model.register_forward_hook(
                lambda mod, inp, out: seen.append(out[0].dtype) if mod.training else None)

    cases = ctio.load_cases([(u, p) for u, p in sorted(ctio.find_volumes(tree).items())][:2],
                            ctio.read_annotations(tree / "annotations.csv"), tree / "masks")
    s = SliceSettings(img_size=64)
    ts = TrainSettings(backbone="test_resnet", channel=8, epochs=1, batch_size=4,
                       multiscale=[1.0], val_fraction=0.0, max_slices=8, precision=precision)
    module, ck = fit(build_pool(cases, s, 0.25, seed=0, max_slices=8), None, s, ts,
                     tmp_path / "out", [], progress=False, callbacks=[Watch()])
    assert seen and set(seen) == {dtype}
    assert all(p.dtype == torch.float32 for p in module.model.parameters())  # master weights
    assert ck.exists()


def test_int8_switch_quantises_or_says_what_is_missing(checkpoint: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from lungfuse.core.errors import ConfigError
    from lungfuse.plugins.imaging_infnet import infer
    from lungfuse.plugins.imaging_infnet.config import FastPath
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    calib = torch.rand(3, 3, 64, 64)
    # off (the default): no quantisation, bf16 autocast as before
    p = infer.Predictor(model, meta["slices"], FastPath(batch_size=2, compile=False))
    assert not p.quantised and isinstance(p._ctx(), torch.autocast)
    with pytest.raises(ConfigError, match="calibration"):
        infer.Predictor(model, meta["slices"], FastPath(batch_size=2, int8=True))
    with pytest.raises(ConfigError, match="compile"):
        infer.Predictor(model, meta["slices"], FastPath(int8=True, compile=False), calib)
    monkeypatch.setitem(sys.modules, "torchao", None)  # as on a machine without torchao
    with pytest.raises(ConfigError, match="torchao"):
        infer.Predictor(model, meta["slices"], FastPath(batch_size=2, int8=True), calib)
    # chosen and available: the quantised network is the one predict() runs
    seen = []

    def fake_quantise(self, calibration):
        seen.append(calibration.shape)
        self.quantised = True
        return lambda x: (x[:, :1],) * 4

    monkeypatch.setattr(infer.Predictor, "_quantise", fake_quantise)
    q = infer.Predictor(model, meta["slices"], FastPath(batch_size=2, int8=True), calib)
    assert seen == [calib.shape] and q.quantised
    assert isinstance(q._ctx(), infer.nullcontext)  # int8 replaces bf16 autocast
    x = torch.rand(3, 3, 64, 64)
    out = q.predict(x)
    assert out.shape == (3, 64, 64)


class _SharedActNet(torch.nn.Module):
    """Two conv + add + ReLU steps through one ReLU module, as timm's Res2Net bottleneck
    calls its ``self.relu`` after every split; a second, singly used ReLU beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)
        self.skip = torch.nn.Conv2d(3, 4, 1)
        self.relu, self.once = torch.nn.ReLU(inplace=True), torch.nn.ReLU()

    def forward(self, x: torch.Tensor):
        h = self.relu(self.c1(x) + self.skip(x))
        h = self.relu(self.c2(h) + h)
        return (self.once(h)[:, :1],) * 4


def test_int8_splits_a_relu_module_that_is_called_twice() -> None:
    from lungfuse.plugins.imaging_infnet import infer

    torch.manual_seed(0)
    net = _SharedActNet().eval()
    x = torch.randn(2, 3, 16, 16)
    split = infer._split_shared_activations(net, x[:1])
    # only the ReLU called twice is replaced, in a copy; the caller's network is untouched
    assert isinstance(split.relu, infer._SharedReLU) and isinstance(split.once, torch.nn.ReLU)
    assert isinstance(net.relu, torch.nn.ReLU) and split is not net
    with torch.no_grad():
        torch.testing.assert_close(split(x)[0], net(x)[0])
    assert infer._split_shared_activations(split, x[:1]) is split  # nothing left to split


def test_int8_quantiser_accepts_the_split_network_and_refuses_the_original() -> None:
    """torchao's matcher (where torchao is installed: it is not a lungfuse dependency)."""
    xiq = pytest.importorskip("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
    from lungfuse.plugins.imaging_infnet import infer

    torch.manual_seed(0)
    net = _SharedActNet().eval()
    x = torch.randn(2, 3, 16, 16)
    split = infer._split_shared_activations(net, x[:1])
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    with pytest.raises(ValueError, match="more than one output node"):
        prepare_pt2e(torch.export.export(net, (x,)).module(), quantizer)
    prepare_pt2e(torch.export.export(split, (x,)).module(), quantizer)


def test_int8_failure_inside_the_quantiser_is_one_line(checkpoint: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
    from lungfuse.core.errors import ConfigError
    from lungfuse.plugins.imaging_infnet import infer
    from lungfuse.plugins.imaging_infnet.config import FastPath
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint

    def refuse(*_a, **_k):
        raise ValueError("Input partition has more than one output node\nsecond line")

    model, meta = load_checkpoint(checkpoint)
    monkeypatch.setattr(torch.export, "export", refuse)
    with pytest.raises(ConfigError, match=r"could not quantise .*ValueError: Input partition "
                       r"has more than one output node\); set fast.int8: false") as e:
        infer.Predictor(model, meta["slices"], FastPath(batch_size=2, int8=True),
                        torch.rand(3, 3, 64, 64))
    assert "\n" not in str(e.value)


def test_segment_predict_int8_calibrates_on_training_scans_only(
        tree: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """``fast.int8`` in a segment config: calibration slices come from
    ``calibration_series`` (never a scan it segments); every mistake is one line, exit 2,
    before any output exists."""
    from lungfuse.core.cli import cli
    from lungfuse.plugins.imaging_infnet import ctio, infer

    def write(name: str, **extra) -> tuple[Path, Path]:
        out = tmp_path / name
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(json.dumps({"ct_root": str(tree), "checkpoint": str(checkpoint),
                                   "out_dir": str(out), "overlays": False,
                                   "fast": {"int8": True, "batch_size": 4}, **extra}),
                       encoding="utf-8")
        return cfg, out

    def run(cfg: Path):
        return CliRunner().invoke(cli, ["segment", "predict", str(cfg), "--no-progress"])

    from lungfuse.core.cli import main

    bad = {"no_calibration": {"series": ["s0"]},
           "overlap_listed": {"series": ["s0", "s1"], "calibration_series": ["s1"]},
           "overlap_all": {"calibration_series": ["s3"]},  # series unset: every scan
           "missing": {"series": ["s0"], "calibration_series": ["nope"]}}
    expect = {"no_calibration": "needs calibration_series", "overlap_listed": "share",
              "overlap_all": "would also be segmented", "missing": "no volume for"}
    for name, extra in bad.items():
        cfg, out = write(name, **extra)
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(["segment", "predict", str(cfg), "--no-progress"])
        err = capsys.readouterr().err
        assert e.value.code == 2, (name, err)
        assert expect[name] in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists(), name
    # a good one: the quantiser (faked: torchao is not a dependency) sees slices of the
    # calibration scans, windowed as the network sees them, and only those
    seen: list[torch.Tensor] = []

    def fake_quantise(self, calibration):
        seen.append(calibration)
        self.quantised = True
        return lambda x: (x[:, :1],) * 4

    monkeypatch.setattr(infer.Predictor, "_quantise", fake_quantise)
    cfg, out = write("good", series=["s0", "s1"], calibration_series=["s3", "s4"],
                     calibration_slices=5)
    r = run(cfg)
    assert r.exit_code == 0, r.output
    assert len(seen) == 1 and seen[0].shape == (5, 3, 64, 64)
    assert 0 <= float(seen[0].min()) and float(seen[0].max()) <= 1
    from lungfuse.plugins.imaging_infnet.dataset import volume_inputs
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint

    vols = ctio.find_volumes(tree)
    s = load_checkpoint(checkpoint)[1]["slices"]
    first = volume_inputs(ctio.read_volume(vols["s3"]), s, [0])[1][0]
    assert torch.equal(seen[0][0], first)  # the first calibration scan's first slice
    assert json.loads((out / "predict.json").read_text(encoding="utf-8"))["written"] == \
        ["s0", "s1"]
