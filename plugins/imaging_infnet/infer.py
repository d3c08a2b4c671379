"""Inference: batched slice prediction with an optional fast path, whole-volume sweeps.

Fast path (``FastPath``): channels_last memory format, bf16 autocast on CPU and a
compiled network (inductor, with freezing), batches of ``batch_size`` slices. Each switch
falls back (logged once) if the platform refuses it. Outputs are float32 probabilities.

With the fast path off (``enabled: false``, or ``compile: false``) inference is eager and
runs on a private copy of the network with every BatchNorm folded into the convolution
before it (``fold_batchnorm``; the eval-mode arithmetic, a few per cent faster), in
channels_last unless ``channels_last: false`` (the same arithmetic in another memory
layout, which oneDNN's convolutions run about 20% faster at batch 1 on a CPU;
``bench/infnet_speed.py``). The caller's model is then left as it was. With compile on,
inductor's freezing does the folding, and channels_last is applied to the model in place.

Compile cache (:func:`compile_key`, :func:`compile_cache_dir`): the compiled fast path is
kept in inductor's own on-disk caches (FX graph and AOTAutograd caches, the generated C++
or Triton code), pointed at a lungfuse folder per key: a hash of the weights, the input
shape, the precision, the switches that change the graph, the torch version and the
CPU/GPU kind. A second process with the same key skips inductor's lowering and code
generation; a changed weight file is a new key and compiles afresh. The folder is local
to the user (``$LUNGFUSE_COMPILE_CACHE``, default ``~/.cache/lungfuse/compile``) and never
beside a checkpoint: its entries are compiled code, so lungfuse only reuses what this
machine's own processes wrote. ``LUNGFUSE_COMPILE_CACHE=off`` leaves inductor's defaults.

AOT package (``fast.aot``, the default with compile): inductor's caches alone still leave
Dynamo's tracing and the freezing passes to every new process (minutes for res2net50d).
So on the first call the network is exported (``torch.export``, the batch shape fixed at
``(batch_size, 3, S, S)``; with bf16 the autocast region is inside the exported forward,
because an autocast context *around* ``torch.export`` is not recorded and would give a
float32 package) and built once by AOTInductor into a ``.pt2`` package: a shared library
with the frozen weights. It is written atomically (a temporary name in the same folder,
then a rename) as ``infnet-<sha256>.pt2`` into the key's folder above, and a later process
with the same key loads it (``aoti_load_package``: no tracing, no compiling; about a
second). Processes of one key build one at a time (:func:`aot_build_lock`): ranks that
start together on an empty cache wait for the first one's package instead of each
building their own. A package is native code, so it is only ever loaded from that private
keyed folder (owner and permissions checked by :func:`compile_cache_dir`, the file itself
checked too), never from a path a user gives and never beside a checkpoint; its name
carries its SHA-256, checked before loading, so a truncated or damaged package is
reported (one warning), removed and rebuilt rather than handed to the loader. With the cache ``off`` no package is
written or read (torch.compile, as without ``aot``); an export or build failure falls back
to torch.compile with one warning. int8 keeps its own path (PT2E quantisation, compiled).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lungfuse.core.errors import ConfigError

from .config import FastPath, SliceSettings
from .ctio import Volume
from .dataset import crop_box, standardise, volume_inputs
from .network import BasicConv2d, InfNet

log = logging.getLogger("lungfuse.imaging")


def fold_batchnorm(model: InfNet) -> InfNet:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the convolution that
    feeds it (``torch.nn.utils.fusion``): the backbone through a ``torch.fx`` trace, the
    decoder's conv + BN blocks directly. A backbone that ``torch.fx`` cannot trace keeps its
    BatchNorms (logged). The copy is for inference only."""
    from torch.fx.experimental.optimization import fuse
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m = copy.deepcopy(model).eval()
    try:
        m.resnet = fuse(m.resnet, inplace=True)
    except Exception as exc:  # noqa: BLE001 - tracing support varies across timm models
        log.info("backbone %s: BatchNorm left unfolded (torch.fx: %s)", m.backbone_name, exc)
    for mod in m.modules():
        if isinstance(mod, BasicConv2d) and isinstance(mod.bn, torch.nn.BatchNorm2d):
            mod.conv = fuse_conv_bn_eval(mod.conv, mod.bn)
            mod.bn = torch.nn.Identity()
    return m


COMPILE_CACHE_ENV = "LUNGFUSE_COMPILE_CACHE"


def device_kind(device: str = "cpu") -> dict[str, str]:
    """What compiled code depends on besides the graph: for a CPU, its model name and the
    vector ISA torch dispatches to (AVX2, AVX512, AMX ...); for a GPU, its name and
    compute capability."""
    import platform

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        cap = ".".join(map(str, torch.cuda.get_device_capability(idx)))
        return {"kind": "cuda", "name": torch.cuda.get_device_name(idx), "capability": cap}
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            name = next((ln.split(":", 1)[1].strip() for ln in fh
                         if ln.startswith("model name")), name)
    except OSError:
        pass
    return {"kind": "cpu", "name": name, "machine": platform.machine(),
            "isa": torch.backends.cpu.get_cpu_capability()}


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and bytes of every tensor)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def compile_key(model: torch.nn.Module, input_shape: Sequence[int], fast: FastPath,
                device: str = "cpu") -> str:
    """The compile cache key: weights digest, input shape, precision (bf16 / float32 /
    int8), the switches that change the compiled graph (freezing, channels_last), the
    torch version and :func:`device_kind`. Any change gives a new key (a new folder)."""
    precision = "int8" if fast.int8 else ("bf16" if fast.bf16 else "fp32")
    blob = json.dumps({"weights": weights_digest(model), "shape": [int(v) for v in input_shape],
                       "precision": precision, "freeze": fast.freeze,
                       "channels_last": fast.channels_last, "torch": torch.__version__,
                       "device": device_kind(device)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def compile_cache_root() -> Path | None:
    """The lungfuse compile cache folder (``None``: ``LUNGFUSE_COMPILE_CACHE=off``)."""
    raw = os.environ.get(COMPILE_CACHE_ENV, "")
    if raw.strip().lower() in ("off", "0", "false", "none"):
        return None
    if raw:
        return Path(raw).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lungfuse" / "compile"


def compile_cache_dir(key: str) -> Path | None:
    """The folder of one key's inductor caches (created, private to this user), or
    ``None`` when off.

    Inductor imports the compiled code it finds there, so a folder that another user
    could write to would let them plant code: the root and the key's folder are created
    with mode 0o700, and an existing one that is not this user's, or that group or
    others may write, is refused in one line (use a private folder, or ``off``)."""
    import stat

    from lungfuse.core.errors import ConfigError

    root = compile_cache_root()
    if root is None:
        return None
    d = root / key
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    for folder in (root, d):
        st = folder.stat()
        if (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & (
                stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(f"{folder}: the compile cache folder is not private to this "
                              f"user (owner or write permission); compiled code is loaded "
                              f"from it. Point {COMPILE_CACHE_ENV} at a folder only you can "
                              f"write, or set it to off")
    return d


#: AOT packages in a key's folder: ``infnet-<first 32 hex digits of the file's SHA-256>.pt2``.
AOT_PREFIX, AOT_SUFFIX = "infnet-", ".pt2"


class _Autocast(torch.nn.Module):
    """``model`` run under CPU bf16 autocast inside its own forward, so that
    ``torch.export`` records the casts in the graph (the exported package then gives the
    autocast outputs; an autocast context around the export call is not captured)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x)


def _file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB pieces (a package holds the frozen weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def aot_packages(folder: Path) -> list[Path]:
    """The AOT packages in a key's folder, newest first."""
    found = [p for p in folder.glob(f"{AOT_PREFIX}*{AOT_SUFFIX}") if not p.name.startswith(".")]
    return sorted(found, key=lambda p: p.lstat().st_mtime, reverse=True)


def check_aot_package(path: Path) -> None:
    """Raise ``ValueError`` (one line) unless ``path`` is a package this user's own
    process wrote intact: a regular file (not a link), owned by this user, not writable by
    group or others, whose SHA-256 starts with the digits in its name."""
    import stat

    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path.name} is not a regular file")
    if (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & (
            stat.S_IWGRP | stat.S_IWOTH):
        raise ValueError(f"{path.name} is not private to this user (owner or write "
                         f"permission)")
    want = path.name[len(AOT_PREFIX):-len(AOT_SUFFIX)]
    if len(want) != 32 or not _file_sha256(path).startswith(want):
        raise ValueError(f"{path.name}: its content does not match the SHA-256 in its name "
                         f"(truncated or damaged)")


class _AotModel:
    """A loaded AOT package called like the exported module: positional tensors in, the
    forward's output structure (Inf-Net's tuple of maps) out, through the package's own
    output spec."""

    def __init__(self, loader) -> None:
        import torch.utils._pytree as pytree

        self.loader = loader
        self._pytree = pytree
        self._out_spec = pytree.treespec_loads(loader.get_call_spec()[1])

    def __call__(self, *args: torch.Tensor):
        flat = self._pytree.tree_flatten((args, {}))[0]
        return self._pytree.tree_unflatten(self.loader.boxed_run(flat), self._out_spec)


@contextmanager
def aot_build_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder/.build.lock`` (``fcntl.flock``, released when the
    process ends however it ends): processes of one key build its package one at a time.
    Where ``fcntl`` is missing, no lock (each process may build; the renames stay atomic)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder / ".build.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _SharedReLU(torch.nn.Module):
    """Stands in for a ReLU module that a block calls more than once (timm's Res2Net
    bottleneck calls one ``self.relu`` after every split and at the end)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


def _split_shared_activations(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """A copy of ``model`` in which every ``nn.ReLU`` module called more than once per
    forward is replaced by a plain module (same function). The int8 quantiser (torchao's
    X86InductorQuantizer) groups nodes into patterns by the module they come from; one
    ReLU module called at several places becomes one "partition" with several outputs,
    and its conv + add + ReLU matcher then stops with "Input partition has more than one
    output node" (res2net50d Inf-Net). The replaced ReLUs are then quantised as separate
    ops, not fused into the convolution before them. The caller's model is unchanged."""
    calls: dict[int, int] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, _o: calls.__setitem__(
        id(mod), calls.get(id(mod), 0) + 1))
        for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    shared = {k for k, n in calls.items() if n > 1}
    if not shared:
        return model
    names = {id(m): name for name, m in model.named_modules()}
    shared_names = {names[k] for k in shared}
    net = copy.deepcopy(model)
    for name in shared_names:
        parent_name, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent_name) if parent_name else net, child, _SharedReLU())
    return net


class Predictor:
    """Wraps an :class:`InfNet` for inference (eval mode, no grad).

    ``aot_state`` says how the compiled fast path was obtained on the first call:
    ``"loaded"`` (an AOT package of this key, no compiling), ``"built"`` (exported and
    built now, then loaded), ``"compile"`` (torch.compile: aot off, cache off, or the
    export/build failed), ``None`` before the first call or without compile."""

    def __init__(self, model: InfNet, slices: SliceSettings, fast: FastPath | None = None,
                 calibration: torch.Tensor | None = None) -> None:
        """``calibration``: windowed training slices ``(n, 3, S, S)`` in [0, 1], needed
        (and only used) with ``fast.int8``, to set the activations' int8 ranges."""
        self.slices = slices
        self.fast = fast or FastPath(enabled=False)
        compiled = self.fast.enabled and self.fast.compile
        self.quantised = False
        self.model = model.eval()
        if self.fast.fold_batchnorm and not compiled:
            self.model = fold_batchnorm(self.model)
        if self.fast.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._net: torch.nn.Module = self.model
        self.compile_key: str | None = None
        self.compile_cache: Path | None = None
        self._cache_pending = compiled
        self._aot_pending = compiled and self.fast.aot and not self.fast.int8
        self.aot_state: str | None = None
        self.aot_package: Path | None = None
        if self.fast.enabled and self.fast.int8:
            if not self.fast.compile:
                raise ConfigError("fast.int8 needs fast.compile: true (the int8 kernels come "
                                  "from inductor); turn compile on or int8 off")
            self._net = self._quantise(calibration)
        elif self.fast.enabled:
            if self.fast.compile:
                try:
                    self._net = torch.compile(self.model, dynamic=False)
                except Exception as exc:  # noqa: BLE001 - platform dependent
                    log.warning("torch.compile unavailable (%s); running eager", exc)

    def _quantise(self, calibration: torch.Tensor | None) -> torch.nn.Module:
        """Post-training static int8 quantisation: export the network, insert observers
        (torchao's X86InductorQuantizer: int8 convolutions and linears, per-channel
        weights), run the calibration slices through it, convert, and compile (inductor
        lowers the quantised patterns to oneDNN int8 kernels)."""
        if calibration is None or len(calibration) == 0:
            raise ConfigError("fast.int8: no calibration slices; give the predictor training "
                              "slices (never test scans), or set fast.int8: false")
        try:
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
            from torchao.quantization.pt2e import move_exported_model_to_eval
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        except ImportError as exc:
            raise ConfigError(f"fast.int8: int8 quantisation needs the torchao package "
                              f"({exc}); `pip install torchao`, or set fast.int8: false") from None
        bs = self.batch_size
        batches = [self._pad(self._prep(calibration[i:i + bs]))
                   for i in range(0, len(calibration), bs)]
        net = _split_shared_activations(self.model, batches[0][:1])
        try:
            exported = torch.export.export(net, (batches[0],)).module()
            quantizer = xiq.X86InductorQuantizer()
            quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(exported, quantizer)
            with torch.no_grad():
                for xb in batches:
                    prepared(xb)
            converted = convert_pt2e(prepared)
        except Exception as exc:  # noqa: BLE001 - torchao's own failure, said in one line
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise ConfigError(f"fast.int8: torchao could not quantise this network "
                              f"({type(exc).__name__}: {first}); set fast.int8: false "
                              f"to run it in bf16 or float32") from exc
        move_exported_model_to_eval(converted)
        self.quantised = True
        return torch.compile(converted, dynamic=False)

    def _pad(self, xb: torch.Tensor) -> torch.Tensor:
        """A short last batch padded to the compiled graph's static batch size."""
        n = xb.shape[0]
        if n < self.batch_size:
            xb = torch.cat([xb, xb[-1:].expand(self.batch_size - n, -1, -1, -1)])
        return xb

    @property
    def batch_size(self) -> int:
        return self.fast.batch_size if self.fast.enabled else max(1, self.fast.batch_size)

    def _ctx(self):
        if self.fast.enabled and self.fast.bf16 and not self.quantised:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def _compile_ctx(self):
        """Inductor settings for the (lazy) compilation on the first call: freezing folds
        BatchNorm into the convolutions and pre-packs weights for inference; the FX graph
        cache lives in this model's keyed folder (:func:`use_compile_cache`)."""
        if self.fast.enabled and self.fast.compile and self.aot_state not in ("loaded",
                                                                              "built"):
            import torch._inductor.config as inductor_config

            if self.compile_cache is None and self._cache_pending:
                self.use_compile_cache()
            patch = {"freezing": True} if self.fast.freeze else {}
            if self.compile_cache is not None:
                patch["fx_graph_cache"] = True
            return inductor_config.patch(**patch)
        return nullcontext()

    def use_compile_cache(self, device: str = "cpu") -> Path | None:
        """Point inductor's on-disk caches at this model's keyed folder (once, before the
        first compiled call); returns the folder (``None`` when the cache is off). A
        refused folder raises every time it is asked for, never falling back to another."""
        s = self.slices.img_size
        self.compile_key = compile_key(self.model, (self.batch_size, 3, s, s), self.fast, device)
        self.compile_cache = compile_cache_dir(self.compile_key)
        self._cache_pending = False
        if self.compile_cache is not None:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.compile_cache)
        return self.compile_cache

    def prepare(self) -> Predictor:
        """Do the compiled fast path's set-up now rather than on the first call: with
        ``fast.aot``, load (or build) this key's AOT package. Returns ``self``."""
        if self._aot_pending:
            self._setup_aot()
        return self

    def _setup_aot(self) -> None:
        """First compiled call with ``fast.aot``: load this key's AOT package from the
        private cache folder, or export and build it there once and load it. A package
        that fails its checks or does not load is reported, removed and rebuilt; an
        export or build failure leaves torch.compile (one warning). With the cache off,
        nothing is written or read (torch.compile)."""
        if self._cache_pending:
            self.use_compile_cache()  # a refused (shared) folder raises here: nothing loaded
        self._aot_pending = False
        self.aot_state = "compile"
        folder = self.compile_cache
        if folder is None or self._load_existing(folder):
            return
        with aot_build_lock(folder):  # ranks starting together: one builds, the rest wait
            if self._load_existing(folder):  # built by another process meanwhile
                return
            try:
                t = time.perf_counter()
                pkg = self._build_aot(folder)
                self._net = self._load_aot(pkg)
            except Exception as exc:  # noqa: BLE001 - export/AOTInductor support varies
                log.warning("AOT package not built (%s: %s); using torch.compile (compiles "
                            "in every process)", type(exc).__name__,
                            str(exc).splitlines()[0][:300] if str(exc) else "")
                return
        self.aot_state, self.aot_package = "built", pkg
        log.info("AOT package built in %.0f s: %s", time.perf_counter() - t, pkg)

    def _load_existing(self, folder: Path) -> bool:
        """Load the newest intact package of ``folder`` (``True``); an unusable one is
        reported (one warning each) and removed."""
        for pkg in aot_packages(folder):
            try:
                check_aot_package(pkg)
                self._net = self._load_aot(pkg)
            except Exception as exc:  # noqa: BLE001 - any unusable package is rebuilt
                log.warning("compile cache %s: AOT package %s not used (%s); removing it "
                            "and building it again", folder, pkg.name, exc)
                pkg.unlink(missing_ok=True)
                continue
            self.aot_state, self.aot_package = "loaded", pkg
            return True
        return False

    @staticmethod
    def _load_aot(pkg: Path):
        """The package's model, callable like the network. Through torch's package loader
        itself (``torch._C._aoti``), as ``torch._inductor.aoti_load_package`` does, but
        without importing ``torch._inductor``/``torch.export`` (they pull in Dynamo: seconds
        of a fresh process's start); the latter where the loader class is missing."""
        loader_cls = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
        if loader_cls is None:
            from torch._inductor import aoti_load_package

            return aoti_load_package(str(pkg))
        return _AotModel(loader_cls(str(pkg), "model", False, 1, -1))

    def _build_aot(self, folder: Path) -> Path:
        """Export the network at the static batch shape and build its AOTInductor package
        into ``folder`` atomically (a temporary ``.pt2`` there, renamed to
        ``infnet-<sha256>.pt2``); returns the package's path."""
        import tempfile

        import torch._inductor

        s = self.slices.img_size
        example = self._prep(torch.zeros(self.batch_size, 3, s, s))
        net = _Autocast(self.model) if self.fast.bf16 else self.model
        with torch.no_grad():
            exported = torch.export.export(net, (example,))
        fd, tmp_name = tempfile.mkstemp(prefix=".build-", suffix=AOT_SUFFIX, dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            torch._inductor.aoti_compile_and_package(
                exported, package_path=str(tmp),
                inductor_configs={"freezing": bool(self.fast.freeze)})
            os.chmod(tmp, 0o600)
            pkg = folder / f"{AOT_PREFIX}{_file_sha256(tmp)[:32]}{AOT_SUFFIX}"
            os.replace(tmp, pkg)
        finally:
            tmp.unlink(missing_ok=True)
        return pkg

    def _prep(self, x01: torch.Tensor) -> torch.Tensor:
        x = standardise(x01.float(), self.model.input_mean, self.model.input_std)
        if self.fast.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.no_grad()
    def predict(self, x01: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(n, S, S)`` (map2) for windowed inputs ``(n, 3, S, S)``."""
        out = []
        if x01.shape[0]:
            self.prepare()
        for i in range(0, x01.shape[0], self.batch_size):
            xb = self._prep(x01[i:i + self.batch_size])
            n = xb.shape[0]
            if self.fast.enabled and self.fast.compile:
                xb = self._pad(xb)  # keep one static shape for the compiled graph
                if self.fast.channels_last:  # the package's input layout, as exported
                    xb = xb.contiguous(memory_format=torch.channels_last)
            with self._ctx(), self._compile_ctx():
                maps = self._net(xb)
            out.append(torch.sigmoid(maps[3][:n, 0].float()))
        if not out:
            return torch.empty(0, *x01.shape[-2:])
        return torch.cat(out)

    @torch.no_grad()
    def embed(self, x01: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mask-weighted pooled features ``(n, 3*channel)`` (float32, eager)."""
        x = self._prep(x01)
        with self._ctx():
            v = self.model.embed(x, mask=mask)
        return v.float()

    def predict_volume(self, vol: Volume, zs: Sequence[int] | None = None) -> np.ndarray:
        """Probability volume ``(z, y, x)`` float32 on the scan's grid (``mode=full``);
        slices not in ``zs`` are 0."""
        s = self.slices
        if s.mode != "full":
            s = s.model_copy(update={"mode": "full"})
        zs, x = volume_inputs(vol, s, zs)
        prob = self.predict(x) if len(zs) else torch.empty(0, s.img_size, s.img_size)
        out = np.zeros(vol.array.shape, dtype=np.float32)
        if len(zs):
            up = F.interpolate(prob[:, None], size=vol.array.shape[1:], mode="bilinear",
                               align_corners=False)[:, 0]
            out[zs] = up.numpy()
        return out

    def predict_region(self, vol: Volume, zs: Sequence[int],
                       centre_xy: Sequence[float] | None = None) -> np.ndarray:
        """Probability volume with slices ``zs`` predicted: whole slices in ``full``
        mode, the ``crop_mm`` square around ``centre_xy`` (pasted back) in ``crop`` mode."""
        s = self.slices
        if s.mode == "full":
            return self.predict_volume(vol, zs)
        zs, x = volume_inputs(vol, s, zs, centre_xy)
        out = np.zeros(vol.array.shape, dtype=np.float32)
        if not zs:
            return out
        prob = self.predict(x)
        x0, y0, w, h = crop_box(vol, s, centre_xy)
        up = F.interpolate(prob[:, None], size=(h, w), mode="bilinear",
                           align_corners=False)[:, 0].numpy()
        ny, nx = vol.array.shape[1:]
        xa, ya = max(0, x0), max(0, y0)
        xb, yb = min(nx, x0 + w), min(ny, y0 + h)
        if xb > xa and yb > ya:
            out[zs, ya:yb, xa:xb] = up[:, ya - y0:yb - y0, xa - x0:xb - x0]
        return out
