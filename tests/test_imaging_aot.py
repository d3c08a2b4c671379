"""The AOTInductor package of the fast path (issue 15, item 1): built once per compile key
in the private cache folder, loaded (not rebuilt) by later predictors, refused from a
shared folder, never written or read with the cache off, damaged packages rebuilt.

One real package of the tiny Inf-Net (test_resnet, 64 px, batch 2) is built for the
module (about 100 s on one core); the other tests reuse it or stop before a build."""

from __future__ import annotations

import copy
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from lungfuse.core.errors import ConfigError
from lungfuse.plugins.imaging_infnet import infer
from lungfuse.plugins.imaging_infnet.config import FastPath, SliceSettings
from lungfuse.plugins.imaging_infnet.network import InfNet

S = SliceSettings(img_size=64)
FAST = FastPath(batch_size=2)  # the defaults: compile, freezing, bf16, channels_last, aot


def _net(seed: int = 0) -> InfNet:
    torch.manual_seed(seed)
    net = InfNet("test_resnet", channel=8).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics, so freezing has work to do
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """One predictor whose first call exported and built the package (3 slices: a full
    batch and a padded one)."""
    root = tmp_path_factory.mktemp("aot") / "cc"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(infer.COMPILE_CACHE_ENV, str(root))
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(root.parent / "inductor-before"))
        net = _net()
        x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        p = infer.Predictor(copy.deepcopy(net), S, FAST)
        out = p.predict(x)
        yield {"net": net, "x": x, "p": p, "out": out, "root": root,
               "mtime": p.aot_package.stat().st_mtime_ns if p.aot_package else None}


@pytest.mark.slow
def test_first_predictor_builds_the_package_in_its_key_folder(built) -> None:
    p, out = built["p"], built["out"]
    assert p.aot_state == "built", p.aot_state
    assert p.aot_package.parent == p.compile_cache == built["root"] / p.compile_key
    assert infer.aot_packages(p.compile_cache) == [p.aot_package]
    assert not list(p.compile_cache.glob(".build-*"))  # no temporary left behind
    assert oct(p.aot_package.stat().st_mode & 0o777) == oct(0o600)
    infer.check_aot_package(p.aot_package)  # named by its own SHA-256
    # the package gives the network's probabilities (bf16 precision), short batch trimmed
    want = infer.Predictor(copy.deepcopy(built["net"]), S, FastPath(enabled=False)).predict(
        built["x"])
    assert out.shape == want.shape == (3, 64, 64) and out.dtype == torch.float32
    assert float((out - want).abs().max()) < 0.05


@pytest.mark.slow
def test_second_predictor_loads_the_package_without_building(
        built, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(infer.COMPILE_CACHE_ENV, str(built["root"]))
    builds: list[Path] = []
    monkeypatch.setattr(infer.Predictor, "_build_aot",
                        lambda self, folder: builds.append(folder))
    q = infer.Predictor(copy.deepcopy(built["net"]), S, FAST)
    out = q.predict(built["x"])
    assert q.aot_state == "loaded" and not builds
    assert q.compile_key == built["p"].compile_key and q.aot_package == built["p"].aot_package
    assert q.aot_package.stat().st_mtime_ns == built["mtime"]  # not rewritten
    assert torch.equal(out, built["out"])


@pytest.mark.slow
def test_changed_weight_is_a_new_key_and_asks_for_a_new_package(
        built, monkeypatch: pytest.MonkeyPatch) -> None:
    """One perturbed parameter: another key and folder, where a build is asked for; the
    first key's package is neither loaded nor touched (the build itself is stubbed to keep
    the suite short: building is what the fixture tests)."""
    monkeypatch.setenv(infer.COMPILE_CACHE_ENV, str(built["root"]))
    net = copy.deepcopy(built["net"])
    with torch.no_grad():
        next(iter(net.parameters())).view(-1)[0] += 1e-3
    asked: list[Path] = []

    def no_build(self, folder: Path) -> Path:
        asked.append(folder)
        raise RuntimeError("build stubbed in this test")

    loaded: list[Path] = []
    monkeypatch.setattr(infer.Predictor, "_build_aot", no_build)
    monkeypatch.setattr(infer.Predictor, "_load_aot", staticmethod(loaded.append))
    q = infer.Predictor(net, S, FAST)
    q._setup_aot()  # the first call's set-up, without the torch.compile fallback's compile
    assert q.compile_key != built["p"].compile_key
    assert asked == [q.compile_cache] and q.compile_cache != built["p"].compile_cache
    assert not loaded and q.aot_state == "compile"
    assert built["p"].aot_package.stat().st_mtime_ns == built["mtime"]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "not_a_package"])
def test_damaged_package_is_removed_and_rebuilt_with_a_warning(
        built, damage: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A truncated package (its content no longer matches the SHA-256 in its name) is
    refused before the loader sees it; a file that matches its name but is no package
    fails to load. Both: one warning, the file removed, a rebuild (here: the intact
    package put back, standing in for the build), outputs as before."""
    monkeypatch.setenv(infer.COMPILE_CACHE_ENV, str(built["root"]))
    good = built["p"].aot_package
    backup = shutil.copy2(good, tmp_path / "good.pt2")
    if damage == "truncated":
        bad = good
        with open(bad, "r+b") as fh:
            fh.truncate(good.stat().st_size // 2)
    else:
        junk = b"not a zip archive, not a shared library"
        bad = good.parent / f"{infer.AOT_PREFIX}{infer.hashlib.sha256(junk).hexdigest()[:32]}.pt2"
        bad.write_bytes(junk)
        os.chmod(bad, 0o600)
        os.utime(bad, ns=(built["mtime"] + 10**9, built["mtime"] + 10**9))  # tried first
    rebuilt: list[Path] = []

    def rebuild(self, folder: Path) -> Path:
        rebuilt.append(folder)
        shutil.copy2(backup, good)
        return good

    monkeypatch.setattr(infer.Predictor, "_build_aot", rebuild)
    q = infer.Predictor(copy.deepcopy(built["net"]), S, FAST)
    with caplog.at_level(logging.WARNING, logger="lungfuse.imaging"):
        out = q.predict(built["x"])
    warnings = [r for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "lungfuse.imaging"]
    assert len(warnings) == 1 and bad.name in warnings[0].getMessage()
    assert not bad.exists() or bad == good
    if damage == "truncated":
        assert rebuilt == [good.parent] and q.aot_state == "built"
    else:  # the intact package beside it is the next one tried
        assert not rebuilt and q.aot_state == "loaded"
    assert q.aot_package == good and torch.equal(out, built["out"])


@pytest.mark.slow
def test_a_build_in_progress_elsewhere_is_waited_for_and_its_package_loaded(
        built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks starting together on an empty cache: while another process holds the key's
    build lock, a predictor waits, then loads the package that process wrote instead of
    building a second one."""
    import threading

    monkeypatch.setenv(infer.COMPILE_CACHE_ENV, str(tmp_path / "cc"))
    builds: list[Path] = []
    monkeypatch.setattr(infer.Predictor, "_build_aot",
                        lambda self, folder: builds.append(folder))
    q = infer.Predictor(copy.deepcopy(built["net"]), S, FAST)
    folder = q.use_compile_cache()
    with infer.aot_build_lock(folder):
        t = threading.Thread(target=q._setup_aot)
        t.start()
        t.join(timeout=2.0)
        assert t.is_alive() and q.aot_state == "compile"  # waiting for the lock
        pkg = Path(shutil.copy2(built["p"].aot_package, folder))  # the other "process"
    t.join(timeout=60)
    assert not t.is_alive() and not builds
    assert q.aot_state == "loaded" and q.aot_package == pkg
    assert torch.equal(q.predict(built["x"]), built["out"])


def test_export_failure_falls_back_to_torch_compile_with_one_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(infer.COMPILE_CACHE_ENV, str(tmp_path / "cc"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "before"))

    def refuse(*a, **k):
        raise RuntimeError("export refused\nsecond line")

    monkeypatch.setattr(torch.export, "export", refuse)
    p = infer.Predictor(_net(), S, FAST)
    compiled = p._net
    with caplog.at_level(logging.WARNING, logger="lungfuse.imaging"):
        p._setup_aot()
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "lungfuse.imaging"]
    assert len(warnings) == 1 and "export refused" in warnings[0] and "\n" not in warnings[0]
    assert p.aot_state == "compile" and p._net is compiled  # torch.compile kept
    # no package and no temporary left (only the build lock's empty file)
    assert [f.name for f in p.compile_cache.iterdir()] == [".build.lock"]


@pytest.mark.parametrize("shared", ["root_group_writable", "key_world_writable",
                                    "foreign_owner"])
def test_shared_cache_folder_is_refused_and_no_package_loaded(
        shared: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled code is loaded only from a folder only this user can write: otherwise one
    line naming the folder, before any package (planted here) is opened."""
    root = tmp_path / "cc"
    monkeypatch.setenv(infer.COMPILE_CACHE_ENV, str(root))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "before"))
    p = infer.Predictor(_net(), S, FAST)
    key = infer.compile_key(p.model, (2, 3, 64, 64), FAST)
    folder = root / key
    root.mkdir(mode=0o700)
    folder.mkdir(mode=0o700)
    os.chmod(root, 0o700)
    os.chmod(folder, 0o700)
    planted = folder / f"{infer.AOT_PREFIX}{'0' * 32}.pt2"
    planted.write_bytes(b"planted")
    if shared == "root_group_writable":
        os.chmod(root, 0o770)
    elif shared == "key_world_writable":
        os.chmod(folder, 0o707)
    else:
        uid = os.getuid()
        monkeypatch.setattr(infer.os, "getuid", lambda: uid + 1)
    opened: list = []
    monkeypatch.setattr(infer.Predictor, "_load_aot", staticmethod(opened.append))
    monkeypatch.setattr(infer, "check_aot_package", opened.append)
    with pytest.raises(ConfigError) as err:
        p.predict(torch.rand(2, 3, 64, 64))
    msg = str(err.value)
    assert "\n" not in msg and "not private" in msg and infer.COMPILE_CACHE_ENV in msg
    bad = folder if shared == "key_world_writable" else root
    assert msg.startswith(f"{bad}:")
    assert not opened and p.aot_package is None and p.aot_state is None
    with pytest.raises(ConfigError):  # asked again: refused again, no fallback folder
        p.predict(torch.rand(2, 3, 64, 64))
    assert not opened and planted.read_bytes() == b"planted"


def test_cache_off_writes_and_reads_no_package(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(infer.COMPILE_CACHE_ENV, "off")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "before"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    touched: list = []
    monkeypatch.setattr(infer.Predictor, "_build_aot", lambda self, f: touched.append(f))
    monkeypatch.setattr(infer.Predictor, "_load_aot", staticmethod(touched.append))
    p = infer.Predictor(_net(), S, FAST)
    p._setup_aot()
    assert p.compile_cache is None and p.aot_state == "compile" and not touched
    assert not any(tmp_path.rglob("*.pt2")) and not (tmp_path / "xdg").exists()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "before")


def test_aot_is_not_used_for_int8_or_without_compile() -> None:
    assert not infer.Predictor(_net(), S, FastPath(batch_size=2, compile=False))._aot_pending
    assert not infer.Predictor(_net(), S, FastPath(batch_size=2, aot=False))._aot_pending
    assert infer.Predictor(_net(), S, FAST)._aot_pending
