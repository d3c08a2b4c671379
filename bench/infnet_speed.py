"""Inf-Net speed/memory benchmark at 352x352 on CPU (prints figures; no assertions).

Phases run in separate processes so each reports its own peak RSS:

* ``eager``: res2net50d Inf-Net, untrained, float32, eager, batch 1 (slices/s), plus
  parameter count (with the reference's unused classifier) and GFLOP per slice
  (``torch.utils.flop_counter``, 2 FLOP per multiply-add);
* ``fast``: the fast path (channels_last + bf16 autocast + torch.compile with inductor
  freezing), batch 8, and variants: batch 1, without freezing, without compile;
* ``train``: training slices/s (forward + loss + backward + Adam step, batch 4), float32
  and bf16 autocast (bf16-mixed);
* ``dice``: a small Inf-Net (``test_resnet`` backbone) trained briefly on a synthetic CT
  split, Dice@0.5 of float32 vs the fast path on the held-out scans;
* ``roofline``: what this machine's matrix multiply reaches in float32 and bf16 (4096²;
  smaller where one product would take over 10 s, as emulated bf16 does; the best of 5
  rounds, each round's figure kept in the JSON), so each
  figure can be read as a share of what the CPU can do: the same network runs at very
  different speeds on hosts with and without bf16 matrix units.

Usage: ``python bench/infnet_speed.py [--quick] [--out STEM]``; writes
``bench/results/infnet_speed.{md,json}`` (``--scale``: ``infnet_speed_scale.{md,json}``),
or ``STEM.{md,json}``: machines differ between sessions, so a run on another kind of CPU
can keep its own file beside the others.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

SIZE = 352
HERE = Path(__file__).resolve().parent


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _others_busy(seconds: float = 3.0) -> float | None:
    """Cores kept busy by other processes over ``seconds`` while this one sleeps
    (``/proc/stat``). Unlike the load average, a 1-minute decaying mean, this is about
    now: right after other jobs were paused the load average still counts them."""
    def busy_total() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as fh:
            v = [int(t) for t in fh.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v) - idle, sum(v)

    try:
        b0, t0 = busy_total()
        time.sleep(seconds)
        b1, t1 = busy_total()
    except (OSError, ValueError, IndexError):
        return None
    return (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)


def _timeit(fn, n: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def phase_eager(quick: bool) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lungfuse.plugins.imaging_infnet.network import InfNet

    torch.manual_seed(0)
    m = InfNet("res2net50d").eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(x)
    gflop = fc.get_total_flops() / 1e9
    n = 3 if quick else 10
    with torch.no_grad():
        dt = _timeit(lambda: m(x), n, 2)
    # lungfuse's float32 path (fast path off): the same network, BatchNorm folded, channels_last
    from lungfuse.plugins.imaging_infnet.config import FastPath, SliceSettings
    from lungfuse.plugins.imaging_infnet.infer import Predictor

    p = Predictor(InfNet("res2net50d"), SliceSettings(img_size=SIZE), FastPath(enabled=False))
    x01 = torch.rand(1, 3, SIZE, SIZE)
    dt_cl = _timeit(lambda: p.predict(x01), n, 2)
    with torch.no_grad():  # and the plain layout once more, in case the machine drifted
        dt2 = _timeit(lambda: m(x), n, 1)
    return {"params": m.num_parameters(True), "params_no_fc": m.num_parameters(),
            "gflop_per_slice": gflop, "eager_fp32_b1_slices_s": 2 / (dt + dt2),
            "eager_fp32_b1_first_last_s": [dt, dt2],
            "lungfuse_fp32_cl_b1_slices_s": 1 / dt_cl, "peak_rss_mb": _peak_mb()}


def phase_fast(quick: bool) -> dict:
    import torch

    from lungfuse.plugins.imaging_infnet.config import FastPath, SliceSettings
    from lungfuse.plugins.imaging_infnet.infer import Predictor
    from lungfuse.plugins.imaging_infnet.network import InfNet

    torch.manual_seed(0)
    out: dict = {}
    s = SliceSettings(img_size=SIZE)
    variants = [("fast_compile_bf16_cl_b8", FastPath(batch_size=8)),
                ("fast_compile_bf16_cl_b1", FastPath(batch_size=1)),
                ("fast_compile_bf16_cl_b16", FastPath(batch_size=16)),
                ("compile_without_freezing_bf16_cl_b8", FastPath(batch_size=8, freeze=False)),
                ("eager_bf16_cl_b8", FastPath(batch_size=8, compile=False)),
                ("eager_fp32_cl_b8", FastPath(batch_size=8, compile=False, bf16=False))]
    if quick:
        variants = variants[:1]
    for name, fp in variants:
        m = InfNet("res2net50d").eval()
        p = Predictor(m, s, fp)
        x = torch.rand(fp.batch_size, 3, SIZE, SIZE)
        t0 = time.perf_counter()
        p.predict(x)
        first = time.perf_counter() - t0
        dt = _timeit(lambda p=p, x=x: p.predict(x), 2 if quick else 5, 1)
        out[name + "_slices_s"] = fp.batch_size / dt
        out[name + "_first_call_s"] = first
    out["peak_rss_mb"] = _peak_mb()
    return out


def phase_train(quick: bool) -> dict:
    import torch

    from lungfuse.plugins.imaging_infnet.losses import infnet_loss
    from lungfuse.plugins.imaging_infnet.network import InfNet

    torch.manual_seed(0)
    m = InfNet("res2net50d").train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    b = 4
    x = torch.randn(b, 3, SIZE, SIZE)
    y = (torch.rand(b, 1, SIZE, SIZE) > 0.9).float()
    e = (torch.rand(b, 1, SIZE, SIZE) > 0.95).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss, _ = infnet_loss(m(x), y, e)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
        opt.step()

    dt = _timeit(step, 2 if quick else 4, 1)

    def step_bf16() -> None:  # what Lightning's precision "bf16-mixed" does on a CPU
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = infnet_loss(m(x), y, e)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
        opt.step()

    dt16 = _timeit(step_bf16, 2 if quick else 4, 1)
    return {"train_fp32_b4_slices_s": b / dt, "train_bf16_mixed_b4_slices_s": b / dt16,
            "peak_rss_mb": _peak_mb()}


def phase_dice(quick: bool) -> dict:
    import tempfile

    import numpy as np
    import torch

    from lungfuse.plugins.imaging_infnet import ctio, synthetic
    from lungfuse.plugins.imaging_infnet.config import FastPath, SliceSettings, TrainSettings
    from lungfuse.plugins.imaging_infnet.dataset import build_pool
    from lungfuse.plugins.imaging_infnet.infer import Predictor
    from lungfuse.plugins.imaging_infnet.metrics import segmentation_metrics
    from lungfuse.plugins.imaging_infnet.train import fit

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="infnet_bench_"))
    uids = [f"bench.{i}" for i in range(12)]
    ann = synthetic.write_tree(tmp / "ct", uids, seed=1, size=128, depth=24)
    vols = ctio.find_volumes(tmp / "ct")
    a = ctio.read_annotations(ann)
    cases = ctio.load_cases([(u, vols[u]) for u in uids], a, tmp / "ct" / "masks")
    s = SliceSettings(img_size=128)
    train_pool = build_pool(cases[:8], s, 0.5, seed=0)
    ts = TrainSettings(backbone="test_resnet", channel=16, epochs=4 if quick else 12,
                       batch_size=8, lr=1e-3, multiscale=[1.0])
    t0 = time.perf_counter()
    module, _ = fit(train_pool, None, s, ts, tmp / "out", [], progress=False)
    train_s = time.perf_counter() - t0
    model = module.model.eval()
    test = build_pool(cases[8:], s, 0.5, seed=0)
    x = torch.stack([it.image.float() for it in test])
    y = torch.stack([it.mask.float() for it in test])
    res = {}
    for name, fp in (("fp32", FastPath(enabled=False)), ("fast", FastPath(batch_size=8))):
        prob = Predictor(model, s, fp).predict(x)
        m = segmentation_metrics(prob, y)
        pos = y.reshape(len(y), -1).any(1)
        res[f"dice_{name}"] = float(m["dice"][pos].mean())
        res[f"mean_dice_{name}"] = float(m["mean_dice"][pos].mean())
        res[f"prob_{name}"] = prob
    diff = float((res.pop("prob_fp32") - res.pop("prob_fast")).abs().max())
    return {**res, "max_abs_prob_diff": diff, "n_test_slices": int(len(test)),
            "n_test_positive": int(pos.sum()), "small_model_train_s": train_s,
            "small_model_params": model.num_parameters(), "peak_rss_mb": _peak_mb(),
            "np_version": np.__version__}


def phase_roofline(quick: bool) -> dict:
    import torch

    out: dict = {}
    for name, dtype, reps in (("fp32", torch.float32, 3), ("bf16", torch.bfloat16, 6)):
        # 4096² unless one product would take over 10 s (bf16 without bf16 units is
        # emulated, about 100x slower): then the largest of 2048² / 1024² that fits
        n = 4096
        a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        t0 = time.perf_counter()
        a @ b
        per_1024 = time.perf_counter() - t0
        while n > 1024 and per_1024 * (n / 1024) ** 3 > 10.0:
            n //= 2
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        # a peak: the best of several rounds (one round's mean has been seen at under half
        # of the next one's on an AMX CPU, right after other processes were paused)
        rounds = [_timeit(lambda a=a, b=b: a @ b, 1 if quick else reps, 2 if i == 0 else 0)
                  for i in range(2 if quick else 5)]
        out[f"matmul_{name}_gflop_s"] = 2 * n**3 / min(rounds) / 1e9
        out[f"matmul_{name}_gflop_s_rounds"] = [2 * n**3 / dt / 1e9 for dt in rounds]
        out[f"matmul_{name}_n"] = n
    return out


# ----------------------------------------------------------------------------- issue 15
# ``--scale``: ranks, compile cache, bf16 training, int8, per-op profile; figures go to
# bench/results/infnet_speed_scale.{md,json}. Small sizes: the host is shared.
SCALE_DIR = Path(os.environ.get("INFNET_SCALE_TMP", "/tmp/infnet_scale_bench"))
#: ``--full`` (via INFNET_SCALE_FULL=1 in the phase processes): the compile-cache phase on
#: res2net50d at 352 px with freezing on and off, and int8 beside the compiled bf16 path;
#: without it, the small network (a shared 2-core host cannot compile res2net50d 4 times).
FULL = os.environ.get("INFNET_SCALE_FULL") == "1"


def _scale_tree(n_scans: int = 8, size: int = 128, depth: int = 24) -> Path:
    """A synthetic CT tree (``synthetic.write_tree``, as ``lungfuse synth`` writes) and
    its annotations, made once per bench run."""
    from lungfuse.plugins.imaging_infnet import synthetic

    root = SCALE_DIR / "ct"
    if not (root / "annotations.csv").exists():
        synthetic.write_tree(root, [f"scan{i:02d}" for i in range(n_scans)], seed=7,
                             size=size, depth=depth)
    return root


def _segment_cli(command: str, cfg: Path, processes: int):
    """``lungfuse segment <command> cfg --processes N`` in a fresh process: (the completed
    process, its wall seconds, the 1-minute load average before it started)."""
    load = os.getloadavg()[0]
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lungfuse.core.cli", "segment", command,
                        str(cfg), "--processes", str(processes), "--no-progress"],
                       capture_output=True, text=True)
    return r, time.perf_counter() - t, load


def phase_ranks(quick: bool) -> dict:
    """``lungfuse segment predict`` over 1 and 2 processes: wall time of the whole command
    and of each rank's segmenting loop (res2net50d, untrained, 128 px, float32 eager)."""
    import torch

    from lungfuse.plugins.imaging_infnet.config import SliceSettings
    from lungfuse.plugins.imaging_infnet.network import InfNet
    from lungfuse.plugins.imaging_infnet.train import save_checkpoint

    root = _scale_tree()
    torch.manual_seed(0)
    ck = save_checkpoint(SCALE_DIR / "res2net50d_128.pt", InfNet("res2net50d"), [],
                         SliceSettings(img_size=128))
    from lungfuse.plugins.imaging_infnet.ctio import find_volumes

    n_scans = len(find_volumes(root))
    out: dict = {"n_scans": n_scans, "slices_per_scan": 24, "img_size": 128}
    for n in (1, 2):
        cfg = SCALE_DIR / f"predict{n}.yaml"
        cfg.write_text(json.dumps({"ct_root": str(root), "checkpoint": str(ck),
                                   "out_dir": str(SCALE_DIR / f"pred{n}"), "overlays": False,
                                   "fast": {"enabled": False}}), encoding="utf-8")
        r, wall, load = _segment_cli("predict", cfg, n)
        if r.returncode:
            out[f"p{n}_error"] = r.stderr.strip().splitlines()[-1:]
            continue
        rep = json.loads((SCALE_DIR / f"pred{n}" / "predict.json").read_text(encoding="utf-8"))
        loop = max(rep["seconds_by_rank"].values())
        out[f"p{n}"] = {"wall_s": wall, "segment_loop_s": loop,
                        "seconds_by_rank": rep["seconds_by_rank"],
                        "scans_per_s_loop": n_scans / loop, "scans_per_s_wall": n_scans / wall,
                        "load_before": load, "load_after": os.getloadavg()[0]}
    same = all(
        (SCALE_DIR / "pred1" / "masks" / f.name).read_bytes() == f.read_bytes()
        for f in (SCALE_DIR / "pred2" / "masks").glob("*.raw"))
    out["masks_identical_1_vs_2"] = same
    return out


def _cache_variants() -> list[tuple[str, bool, bool]]:
    """(label, aot, freeze) of the cache phase: the AOT package (the default) always; the
    torch.compile path with inductor's caches only with ``INFNET_SCALE_CACHE_COMPILE=1``
    (minutes per process on a shared host; figures of it are in the note)."""
    out = [("aot_freeze1", True, True)]
    if os.environ.get("INFNET_SCALE_CACHE_COMPILE") == "1":
        out += [("compile_freeze1", False, True)] + (
            [("compile_freeze0", False, False)] if FULL else [])
    return out


def phase_cache(quick: bool) -> dict:
    """First compiled call in a fresh Python process with an empty (cold) and a filled
    (warm: a second process, same key) lungfuse compile cache. Each process is timed from
    just before it is started to its first batch's output (interpreter start, imports,
    model, weights digest, package load or build, first call), and inside it the package
    load/build and the first call separately."""
    out: dict = {"model": "res2net50d, 352 px" if FULL else "test_resnet Inf-Net (channel 16), "
                 "128 px", "batch": 8}
    for label, aot, freeze in _cache_variants():
        cache = SCALE_DIR / f"compile-cache-{label}"
        shutil.rmtree(cache, ignore_errors=True)
        for run in ("cold", "warm"):
            load = os.getloadavg()[0]
            env = {**os.environ, "LUNGFUSE_COMPILE_CACHE": str(cache),
                   "INFNET_SPAWN_T": repr(time.time())}
            r = subprocess.run([sys.executable, __file__, "--phase", "first_call",
                                "--freeze", str(int(freeze)), "--aot", str(int(aot))],
                               capture_output=True, text=True, env=env)
            if r.returncode:
                out[f"{label}_{run}"] = {"error": r.stderr.strip()[-500:]}
                continue
            res = json.loads(r.stdout.strip().splitlines()[-1])
            res["load_before"] = load
            out[f"{label}_{run}"] = res
    return out


def phase_first_call(quick: bool, freeze: bool = True, aot: bool = True) -> dict:
    """One fresh process: the fast path (res2net50d at 352 px with ``--full``, else the
    small test_resnet Inf-Net at 128 px; batch 8): the package load or build (``aot``),
    the first call (the compile, or the cache hit), the time since the parent started the
    process (``INFNET_SPAWN_T``) to the first output, and the steady speed after it."""
    spawn = float(os.environ.get("INFNET_SPAWN_T", "nan"))
    t0 = time.perf_counter()
    import torch

    from lungfuse.plugins.imaging_infnet.config import FastPath, SliceSettings
    from lungfuse.plugins.imaging_infnet.infer import Predictor
    from lungfuse.plugins.imaging_infnet.network import InfNet

    torch.manual_seed(0)
    net, size = (InfNet("res2net50d"), SIZE) if FULL else (InfNet("test_resnet", channel=16), 128)
    p = Predictor(net, SliceSettings(img_size=size), FastPath(batch_size=8, freeze=freeze,
                                                             aot=aot))
    x = torch.rand(8, 3, size, size)
    t_import, c_import = time.perf_counter() - t0, time.process_time()
    t, c = time.perf_counter(), time.process_time()
    p.prepare()  # the AOT package: loaded, or exported and built (nothing without aot)
    prepare, c_prepare = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    p.predict(x)
    first, c_first = time.perf_counter() - t, time.process_time() - c
    to_first, c_to_first = time.time() - spawn, time.process_time()
    dt = _timeit(lambda: p.predict(x), 2, 0)
    # Dynamo's counters only where Dynamo ran (importing it costs seconds of the start)
    counters = (sys.modules["torch._dynamo.utils"].counters
                if "torch._dynamo.utils" in sys.modules else {"inductor": {}})
    return {"dynamo_imported": "torch._dynamo" in sys.modules, "import_and_model_s": t_import, "package_load_or_build_s": prepare,
            "first_call_s": first, "process_start_to_first_output_s": to_first,
            # CPU time (all threads) of each step: less sensitive to other jobs' load
            "cpu_s_to_first_output": c_to_first, "cpu_import_and_model_s": c_import,
            "cpu_package_load_or_build_s": c_prepare, "cpu_first_call_s": c_first,
            "threads": torch.get_num_threads(),
            "steady_slices_s": 8 / dt, "aot_state": p.aot_state,
            "package_mb": p.aot_package.stat().st_size / 2**20 if p.aot_package else None,
            "fxgraph_cache_hit": counters["inductor"].get("fxgraph_cache_hit", 0),
            "fxgraph_cache_miss": counters["inductor"].get("fxgraph_cache_miss", 0),
            "cache_dir": str(p.compile_cache)}


def _small_split():
    from lungfuse.plugins.imaging_infnet import ctio
    from lungfuse.plugins.imaging_infnet.config import SliceSettings
    from lungfuse.plugins.imaging_infnet.dataset import build_pool

    root = _scale_tree()
    vols = ctio.find_volumes(root)
    uids = sorted(vols)
    cases = ctio.load_cases([(u, vols[u]) for u in uids], ctio.read_annotations(
        root / "annotations.csv"), root / "masks")
    s = SliceSettings(img_size=128)
    return s, build_pool(cases[:6], s, 0.5, seed=0), build_pool(cases[6:], s, 0.5, seed=0)


def _dice(prob, y) -> float:
    from lungfuse.plugins.imaging_infnet.metrics import segmentation_metrics

    m = segmentation_metrics(prob, y)
    pos = y.reshape(len(y), -1).any(1)
    return float(m["dice"][pos].mean())


def phase_train_precision(quick: bool) -> dict:
    """Inf-Net (test_resnet backbone, 128 px) trained the same number of steps in float32
    and in bf16-mixed on 6 synthetic scans: training slices/s and Dice@0.5 on 2 held-out
    scans (float32 eager inference for both)."""
    import torch

    from lungfuse.plugins.imaging_infnet.config import FastPath, TrainSettings
    from lungfuse.plugins.imaging_infnet.infer import Predictor
    from lungfuse.plugins.imaging_infnet.train import fit, save_checkpoint

    s, train_pool, test = _small_split()
    x = torch.stack([it.image.float() for it in test])
    y = torch.stack([it.mask.float() for it in test])
    out: dict = {"n_train_slices": len(train_pool), "n_test_slices": len(test)}
    epochs = 3 if quick else 8
    for prec in ("32-true", "bf16-mixed"):
        ts = TrainSettings(backbone="test_resnet", channel=16, epochs=epochs, batch_size=8,
                           lr=1e-3, multiscale=[1.0], precision=prec, augment=False)
        load = os.getloadavg()[0]
        t = time.perf_counter()
        module, _ = fit(train_pool, None, s, ts, SCALE_DIR / f"train_{prec}", [],
                        progress=False)
        dt = time.perf_counter() - t
        model = module.model.eval()
        steps = epochs * (len(train_pool) // 8)
        out[prec] = {"train_s": dt, "steps": steps,
                     "train_slices_s": epochs * len(train_pool) / dt,
                     "dice_heldout": _dice(Predictor(model, s, FastPath(enabled=False))
                                           .predict(x), y),
                     "load_before": load}
        if prec == "32-true":
            save_checkpoint(SCALE_DIR / "small_fp32.pt", model, [], s)
    return out


def phase_train_ddp(quick: bool) -> dict:
    """``lungfuse segment train --processes 1`` vs ``--processes 2`` (DDP, gloo, float32;
    ``batch_size`` 8 per process) on the 6 training scans of the synthetic split, the same
    epochs: training slices/s of the fit itself (``fit_seconds`` in the checkpoint, rank
    0, so start-up and scan reading are not counted), the command's wall time, and Dice@0.5
    on the 2 held-out scans' slices. 2 processes take half the optimiser steps per epoch
    with twice the global batch, so their Dice is after equal epochs, not equal steps."""
    import torch

    from lungfuse.plugins.imaging_infnet.config import FastPath
    from lungfuse.plugins.imaging_infnet.ctio import find_volumes
    from lungfuse.plugins.imaging_infnet.infer import Predictor
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint

    root = _scale_tree()
    uids = sorted(find_volumes(root))
    s, _, test = _small_split()
    x = torch.stack([it.image.float() for it in test])
    y = torch.stack([it.mask.float() for it in test])
    epochs = 3 if quick else 8
    out: dict = {"epochs": epochs, "n_test_slices": len(test), "batch_size_per_process": 8}
    for n in (1, 2):
        folder = SCALE_DIR / f"train_ddp{n}"
        cfg = SCALE_DIR / f"train_ddp{n}.yaml"
        cfg.write_text(json.dumps({
            "ct_root": str(root), "annotations": str(root / "annotations.csv"),
            "masks_dir": str(root / "masks"), "series": uids[:6], "out_dir": str(folder),
            "slices": {"img_size": 128},
            "train": {"backbone": "test_resnet", "channel": 16, "epochs": epochs,
                      "batch_size": 8, "lr": 1e-3, "multiscale": [1.0], "augment": False,
                      "val_fraction": 0.0}}), encoding="utf-8")
        r, wall, load = _segment_cli("train", cfg, n)
        if r.returncode:
            out[f"p{n}_error"] = r.stderr.strip().splitlines()[-1:]
            continue
        model, meta = load_checkpoint(folder / "infnet.pt")
        ex = meta["extra"]
        fit_s = float(ex["fit_seconds"])
        out[f"p{n}"] = {"fit_s": fit_s, "wall_s": wall, "n_train_slices": ex["n_train_slices"],
                        "train_slices_s": epochs * ex["n_train_slices"] / fit_s,
                        "dice_heldout": _dice(Predictor(model, s, FastPath(enabled=False))
                                              .predict(x), y),
                        "load_before": load, "load_after": os.getloadavg()[0]}
    return out


def phase_int8(quick: bool) -> dict:
    """The float32-trained small model: Dice on held-out slices and slices/s in float32
    eager, the bf16 fast path and the int8 fast path (calibrated on training slices)."""
    import torch

    from lungfuse.core.errors import LungfuseError
    from lungfuse.plugins.imaging_infnet.config import FastPath
    from lungfuse.plugins.imaging_infnet.infer import Predictor
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint

    s, train_pool, test = _small_split()
    x = torch.stack([it.image.float() for it in test])
    y = torch.stack([it.mask.float() for it in test])
    calib = torch.stack([it.image.float() for it in train_pool])[:64]
    out: dict = {"n_calibration_slices": len(calib)}
    bf16 = FastPath(batch_size=8) if FULL else FastPath(batch_size=8, compile=False)
    for name, fp in (("fp32", FastPath(enabled=False, batch_size=8)),
                     ("bf16_fast" if FULL else "bf16_eager", bf16),
                     ("int8_fast", FastPath(batch_size=8, int8=True))):
        model, _ = load_checkpoint(SCALE_DIR / "small_fp32.pt")
        t = time.perf_counter()
        try:
            p = Predictor(model, s, fp, calibration=calib)
            prob = p.predict(x)
        except (LungfuseError, Exception) as exc:  # noqa: BLE001 - reported, not raised
            out[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            continue
        first = time.perf_counter() - t
        dt = _timeit(lambda p=p: p.predict(x), 2, 0)
        out[name] = {"dice_heldout": _dice(prob, y), "slices_s": len(x) / dt,
                     "first_call_s": first, "quantised": p.quantised}
    if FULL:  # speed only: res2net50d at 352 px, untrained, batch 8
        from lungfuse.plugins.imaging_infnet.config import SliceSettings
        from lungfuse.plugins.imaging_infnet.network import InfNet

        big = torch.nn.functional.interpolate(calib[:16], size=(SIZE, SIZE),
                                              mode="bilinear").clamp(0, 1)
        xb = big[:8]
        for name, fp in (("bf16_fast", FastPath(batch_size=8, aot=False)),
                         ("int8_fast", FastPath(batch_size=8, int8=True))):
            torch.manual_seed(0)
            t = time.perf_counter()
            p = Predictor(InfNet("res2net50d"), SliceSettings(img_size=SIZE), fp,
                          calibration=big)
            p.predict(xb)
            first = time.perf_counter() - t
            dt = _timeit(lambda p=p: p.predict(xb), 3, 1)
            out.setdefault("res2net50d_352", {})[name] = {
                "slices_s": len(xb) / dt, "first_call_s": first, "quantised": p.quantised}
    return out


def _profiled(p, x, torch) -> dict:
    from torch.profiler import ProfilerActivity, profile

    p.predict(x)
    p.predict(x)
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        p.predict(x)
    wall = time.perf_counter() - t
    ev = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in ev)
    ev.sort(key=lambda e: -e.self_cpu_time_total)
    return {"slices_s_profiled": len(x) / wall, "wall_s": wall,
            "ops": [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count}
                    for e in ev[:16]]}


def phase_profile(quick: bool) -> dict:
    """Per-op time shares (torch.profiler, CPU self time) of res2net50d at 352 px, batch
    8, bf16 autocast + channels_last: eager with BatchNorm folded (the fast path's
    arithmetic under its op names), and ``compiled``: the fast path itself (torch.compile
    with freezing, no AOT package, so that the profiler sees inductor's fused kernels and
    the oneDNN calls between them); each with that run's speed."""
    import torch

    from lungfuse.plugins.imaging_infnet.config import FastPath, SliceSettings
    from lungfuse.plugins.imaging_infnet.infer import Predictor
    from lungfuse.plugins.imaging_infnet.network import InfNet

    torch.manual_seed(0)
    x = torch.rand(8, 3, SIZE, SIZE)
    out = _profiled(Predictor(InfNet("res2net50d"), SliceSettings(img_size=SIZE),
                              FastPath(batch_size=8, compile=False)), x, torch)
    torch.manual_seed(0)
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True  # each fused kernel under its own name
    out["compiled"] = _profiled(Predictor(InfNet("res2net50d"), SliceSettings(img_size=SIZE),
                                          FastPath(batch_size=8, aot=False)), x, torch)
    return out


PHASES = {"eager": phase_eager, "fast": phase_fast, "train": phase_train, "dice": phase_dice,
          "roofline": phase_roofline, "ranks": phase_ranks, "cache": phase_cache,
          "first_call": phase_first_call, "train_precision": phase_train_precision,
          "train_ddp": phase_train_ddp,
          "int8": phase_int8, "profile": phase_profile}


def _run_phase(name: str, quick: bool) -> dict:
    cmd = [sys.executable, __file__, "--phase", name] + (["--quick"] if quick else [])
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                       "LUNGFUSE_NO_PROGRESS": "1"})
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["phase_wall_s"] = time.perf_counter() - t
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh
                         if ln.startswith("model name")), platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


def _matrix_units() -> str:
    """This CPU's int8 / bf16 matrix units as /proc/cpuinfo lists them."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((set(ln.split(":", 1)[1].split()) for ln in fh
                          if ln.startswith("flags")), set())
    except OSError:
        return "matrix units unknown"
    have = [n for f, n in (("amx_tile", "AMX"), ("amx_bf16", "AMX-BF16"),
                           ("amx_int8", "AMX-INT8"), ("avx512_bf16", "AVX-512 BF16"),
                           ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"))
            if f in flags]
    return ", ".join(have) if have else "no AMX, no VNNI, no bf16 units"


def _cache_table(cc: dict, f) -> list[str]:
    """The compile-cache section of the ``--scale`` page for one ``cache`` phase."""
    lines = ["", f"## Compile cache: first call in a fresh process ({cc.get('model', 'n/a')})",
             "", "Fast path (bf16 autocast, channels_last, freezing), batch 8. 'aot': the "
             "AOTInductor package (`fast.aot`, the default); 'compile': torch.compile with "
             "inductor's caches in the same folder. 'cold': empty lungfuse compile cache (the "
             "package is exported and built); 'warm': a second, fresh Python process with "
             "the same key (the package is loaded). 'Process start to first output' runs "
             "from just before the process is started (interpreter, imports, model, weights "
             "digest, package load or build, first call).", "",
             "| path | cache | process start to first output (s) | package load or build "
             "(s) | first call (s) | steady slices/s | package (MB) | load before |",
             "|---|---|---|---|---|---|---|---|"]
    for label in ("aot_freeze1", "compile_freeze1", "compile_freeze0"):
        for run in ("cold", "warm"):
            r = cc.get(f"{label}_{run}")
            if r and "error" not in r:
                lines.append(
                    f"| {label.replace('_', ', ')} | {run} | "
                    f"{f(r.get('process_start_to_first_output_s'), 1)} | "
                    f"{f(r.get('package_load_or_build_s'), 2)} | {f(r['first_call_s'], 2)} | "
                    f"{f(r['steady_slices_s'])} | {f(r.get('package_mb'), 1)} | "
                    f"{f(r['load_before'])} |")
            elif r:
                lines.append(f"| {label} | {run} | error: {r['error'][-200:]} | | | | | |")
    return lines


def _train_ddp_lines(td: dict, f) -> list[str]:
    """The ``segment train --processes N`` section of the ``--scale`` page."""
    lines = ["", "## Segmenter training over processes (`segment train --processes N`)", "",
             f"DDP on this CPU (gloo), float32, test_resnet backbone, 128 px, "
             f"{td.get('epochs', 'n/a')} epochs, batch 8 per process; each process gets "
             "cores / N intra-op threads. 'fit' is the training loop alone (rank 0); 'wall' "
             "the whole command (interpreter start-up, imports and reading the scans in every "
             "process). Dice@0.5 on the held-out slices after equal epochs (2 processes: half "
             "the optimiser steps, twice the global batch).", "",
             "| processes | fit (s) | training slices/s | wall (s) | held-out Dice@0.5 "
             "| load before/after |", "|---|---|---|---|---|---|"]
    for n in (1, 2):
        r = td.get(f"p{n}")
        if r:
            lines.append(f"| {n} | {f(r['fit_s'], 1)} | {f(r['train_slices_s'])} | "
                         f"{f(r['wall_s'], 1)} | {f(r['dice_heldout'], 4)} | "
                         f"{f(r['load_before'])}/{f(r['load_after'])} |")
        elif td.get(f"p{n}_error"):
            lines.append(f"| {n} | error: {td[f'p{n}_error']} | | | | |")
    return lines


def scale_report(res: dict, argv: str) -> str:
    """The markdown page of the ``--scale`` figures (whatever phases finished)."""
    import torch

    def f(v, nd=2):
        return f"{v:.{nd}f}" if isinstance(v, int | float) else "n/a"

    rf, rk, cc = res.get("roofline", {}), res.get("ranks", {}), res.get("cache", {})
    tp, q8, pr = res.get("train_precision", {}), res.get("int8", {}), res.get("profile", {})
    isa = torch.backends.cpu.get_cpu_capability()
    peak32, peak16 = rf.get("matmul_fp32_gflop_s"), rf.get("matmul_bf16_gflop_s")
    lines = [
        "# Inf-Net: scale of the CT stage (issue 15)", "",
        f"`python bench/infnet_speed.py {argv}`", "",
        f"Machine: {_cpu_model()} ({isa}; {_matrix_units()}), {os.cpu_count()} cores, "
        f"torch {torch.__version__}. Matmul roofline (measured, square n x n): float32 "
        f"{f(peak32, 0)} GFLOP/s (n = {rf.get('matmul_fp32_n', 4096)}), bf16 "
        f"{f(peak16, 0)} GFLOP/s (n = {rf.get('matmul_bf16_n', 4096)}). "
        + (f"Other processes kept at most {max(busy):.2f} cores busy just before a phase "
           f"(`others_busy_cores_before` in the JSON, read from /proc/stat); "
           if (busy := [v["others_busy_cores_before"] for v in res.values()
                        if isinstance(v, dict)
                        and v.get("others_busy_cores_before") is not None]) else "")
        + "the load average is given beside each figure, and where other jobs ran every "
        "figure is a lower bound.",
        *([""] + [f"Not measured in this run: {', '.join(missing)} (see the note at the end)."]
          if (missing := [k for k in ("ranks", "cache", "train_precision", "int8", "roofline",
                                      "profile") if not res.get(k) or "error" in res[k]])
          else []),
        "", "## Ranks: `lungfuse segment predict --processes N`", "",
        f"{rk.get('n_scans', 'n/a')} synthetic scans (128 px, 24 slices), res2net50d "
        "(untrained), float32 eager. 'loop' is the slowest rank's segmenting time; 'wall' "
        "the whole command (start-up and imports included).", "",
        "| processes | loop (s) | scans/s (loop) | wall (s) | scans/s (wall) | load before/after |",
        "|---|---|---|---|---|---|"]
    for n in (1, 2):
        r = rk.get(f"p{n}")
        if r:
            lines.append(f"| {n} | {f(r['segment_loop_s'], 1)} | {f(r['scans_per_s_loop'], 3)} "
                         f"| {f(r['wall_s'], 1)} | {f(r['scans_per_s_wall'], 3)} | "
                         f"{f(r['load_before'])}/{f(r['load_after'])} |")
    if "masks_identical_1_vs_2" in rk:
        lines += ["", f"Masks of 2 processes byte-identical to 1 process: "
                      f"{rk['masks_identical_1_vs_2']}."]
    for c in [c for c in (cc, res.get("cache_full")) if c] or [cc]:
        lines += _cache_table(c, f)
    lines += ["", "## bf16-mixed training (Lightning `precision`)", "",
              f"Inf-Net, test_resnet backbone, 128 px, {tp.get('n_train_slices', 'n/a')} "
              f"training slices of 6 synthetic scans, equal steps; Dice@0.5 on "
              f"{tp.get('n_test_slices', 'n/a')} slices of 2 held-out scans. This CPU's "
              f"vector ISA is {isa} ({_matrix_units()})"
              + (": bf16 runs on its matrix units." if "BF16" in _matrix_units() else
                 ": without bf16 matrix units (AVX-512 BF16, AMX) bf16 arithmetic is "
                 "emulated through float32 conversions, so bf16-mixed is expected to be "
                 "slower than float32 here; the gain is on AMX CPUs and GPUs."), "",
              "| precision | steps | training slices/s | held-out Dice@0.5 | load before |",
              "|---|---|---|---|---|"]
    for prec in ("32-true", "bf16-mixed"):
        r = tp.get(prec)
        if r:
            lines.append(f"| {prec} | {r['steps']} | {f(r['train_slices_s'])} | "
                         f"{f(r['dice_heldout'], 4)} | {f(r['load_before'])} |")
    lines += _train_ddp_lines(res.get("train_ddp", {}), f)
    lines += ["", "## int8 post-training quantisation (`fast.int8`)", "",
              f"The float32 model above; calibration on {q8.get('n_calibration_slices', 'n/a')} "
              "training slices; the same held-out slices.", "",
              "| inference | held-out Dice@0.5 | slices/s | first call (s) |", "|---|---|---|---|"]
    for name in ("fp32", "bf16_fast", "bf16_eager", "int8_fast"):
        r = q8.get(name)
        if r and "error" not in r:
            lines.append(f"| {name} | {f(r['dice_heldout'], 4)} | {f(r['slices_s'])} | "
                         f"{f(r['first_call_s'], 1)} |")
        elif r:
            lines.append(f"| {name} | error: {r['error']} | | |")
    if big := q8.get("res2net50d_352"):
        lines += ["", "res2net50d Inf-Net at 352 px, untrained, batch 8 (speed only; "
                  "calibrated on 16 training slices resized to 352 px):", "",
                  "| inference | slices/s | first call (s) |", "|---|---|---|"]
        lines += [f"| {k} | {f(v['slices_s'])} | {f(v['first_call_s'], 1)} |"
                  for k, v in big.items()]
    gflop = 27.69  # res2net50d Inf-Net at 352 px (flop_counter, bench/results/infnet_speed.md)
    lines += ["", "## Roofline and per-op time shares", ""]
    if pr and peak16:
        sp = pr["slices_s_profiled"]
        lines += [f"res2net50d, 352 px, batch 8, bf16 autocast + channels_last, eager "
                  f"(profiled run): {f(sp)} slices/s = {f(sp * gflop, 0)} GFLOP/s, "
                  f"{sp * gflop / peak16:.0%} of the bf16 matmul roofline "
                  f"(ceiling {f(peak16 / gflop, 1)} slices/s).", "",
                  "| op (CPU self time) | share | calls |", "|---|---|---|"]
        lines += [f"| {o['op']} | {o['share']:.1%} | {o['calls']} |" for o in pr["ops"]]
        if pc := pr.get("compiled"):
            sp = pc["slices_s_profiled"]
            lines += ["", f"The fast path itself (torch.compile with freezing, bf16, "
                      f"channels_last, batch 8; profiled run): {f(sp)} slices/s = "
                      f"{f(sp * gflop, 0)} GFLOP/s, {sp * gflop / peak16:.0%} of the bf16 "
                      "matmul roofline. Inductor's fused kernels (`graph_0_cpp_fused_*`, "
                      "named after the ops they fuse) are the element-wise work; the "
                      "`mkldnn` calls are the convolutions (with their fused bias, ReLU "
                      "or add).", "",
                      "| op (CPU self time) | share | calls |", "|---|---|---|"]
            lines += [f"| {o['op'][:90]} | {o['share']:.1%} | {o['calls']} |"
                      for o in pc["ops"]]
    if res.get("note"):
        lines += ["", "## Note", "", res["note"]]
    return "\n".join(lines) + "\n"


def scale_main(args) -> None:
    """Run the issue-15 phases one process each, saving figures after every phase."""
    from lungfuse.core.atomic import write_json, write_text

    phases = args.phases if args.phases != "roofline,eager,fast,train,dice" else \
        "ranks,train_precision,train_ddp,cache,int8,roofline,profile"
    if args.full:
        os.environ["INFNET_SCALE_FULL"] = "1"
    stem = Path(args.out) if args.out else HERE / "results" / "infnet_speed_scale"
    out_json = stem.with_suffix(".json")
    res: dict = {}
    if out_json.exists() and args.phases != "roofline,eager,fast,train,dice":
        res = json.loads(out_json.read_text(encoding="utf-8"))  # add to earlier phases
    argv = " ".join(sys.argv[1:])
    res["machine"] = {"cpu": _cpu_model(), "cores": os.cpu_count()}
    for ph in phases.split(","):
        before = os.getloadavg()
        busy = _others_busy()
        key = f"{ph}_full" if args.full and ph == "cache" else ph  # both sizes kept
        res[key] = _run_phase(ph, args.quick)
        res[key]["load_avg_before_after"] = [before[0], os.getloadavg()[0]]
        res[key]["others_busy_cores_before"] = busy
        print(key, json.dumps(res[key], indent=1, default=str), flush=True)
        if out_json.exists() and args.phases != "roofline,eager,fast,train,dice":
            # another bench run may have added phases meanwhile: keep them
            res = {**json.loads(out_json.read_text(encoding="utf-8")), key: res[key],
                   "machine": res["machine"]}
        write_json(out_json, res)
        write_text(stem.with_suffix(".md"), scale_report(res, argv))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=list(PHASES))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--phases", default="roofline,eager,fast,train,dice")
    ap.add_argument("--scale", action="store_true", help="issue 15 figures: ranks, compile "
                    "cache, bf16 training, int8, profile -> infnet_speed_scale.md")
    ap.add_argument("--freeze", type=int, default=1)
    ap.add_argument("--aot", type=int, default=1)
    ap.add_argument("--out", help="results stem (STEM.md, STEM.json) instead of "
                    "bench/results/infnet_speed[_scale]")
    ap.add_argument("--full", action="store_true", help="--scale on res2net50d at 352 px "
                    "for the compile cache and int8 (long)")
    args = ap.parse_args()
    if args.phase == "first_call":
        print(json.dumps(phase_first_call(args.quick, bool(args.freeze), bool(args.aot))))
        return
    if args.phase:
        print(json.dumps(PHASES[args.phase](args.quick)))
        return
    if args.scale:
        scale_main(args)
        return
    import torch

    load = os.getloadavg()
    busy = _others_busy()
    results = {}
    for ph in args.phases.split(","):
        results[ph] = _run_phase(ph, args.quick)
        print(ph, json.dumps(results[ph], indent=1), flush=True)
    load_after = os.getloadavg()
    e, f, tr, d, rf = (results.get(k, {}) for k in ("eager", "fast", "train", "dice", "roofline"))
    base = e.get("eager_fp32_b1_slices_s")
    cl32 = e.get("lungfuse_fp32_cl_b1_slices_s")
    gflop = e.get("gflop_per_slice")
    peak32, peak16 = rf.get("matmul_fp32_gflop_s"), rf.get("matmul_bf16_gflop_s")

    def fmt(v, nd=2):
        return f"{v:.{nd}f}" if isinstance(v, int | float) else "n/a"

    fast = f.get("fast_compile_bf16_cl_b8_slices_s")
    lines = [
        "# Inf-Net speed (res2net50d, 352x352, untrained weights)",
        "",
        f"`python bench/infnet_speed.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"Machine: {_cpu_model()} ({_matrix_units()}), {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}; load average "
        f"{load[0]:.2f} before, {load_after[0]:.2f} after; other processes kept "
        + (f"{busy:.2f} cores busy in the 3 s before it started" if busy is not None else
           "an unknown number of cores busy")
        + (" (**other jobs were running**: figures are lower bounds)."
           if (busy if busy is not None else load[0]) > 0.3 else " (no other job running)."),
        "",
        "| figure | value |",
        "|---|---|",
        f"| parameters (with unused resnet.fc, as the reference) | {e.get('params', 'n/a')} |",
        f"| parameters (lungfuse model, no classifier) | {e.get('params_no_fc', 'n/a')} |",
        f"| GFLOP per 352² slice (flop_counter) | {fmt(e.get('gflop_per_slice'))} |",
        f"| float32 eager, batch 1, NCHW as the reference (slices/s) | {fmt(base)} |",
        f"| float32 eager, batch 1, channels_last + BatchNorm folded: lungfuse's float32 path (`fast.enabled: "
        f"false`) (slices/s) | {fmt(cl32)} |",
        f"| fast path: compile (freezing) + bf16 + channels_last, batch 8 (slices/s) | "
        f"{fmt(fast)} |",
        f"| fast path speed-up over float32 eager b1: NCHW / channels_last | "
        f"{fmt(fast / base if fast and base else None)}x / "
        f"{fmt(fast / cl32 if fast and cl32 else None)}x |",
    ]
    for k, v in f.items():
        if k.endswith("_slices_s") and not k.startswith("fast_compile_bf16_cl_b8"):
            lines.append(f"| {k.removesuffix('_slices_s').replace('_', ' ')} (slices/s) | "
                         f"{fmt(v)} |")
    for k, v in f.items():
        if k.endswith("_first_call_s"):
            lines.append(f"| {k.removesuffix('_first_call_s').replace('_', ' ')}: first call "
                         f"incl. compile (s) | {fmt(v, 1)} |")
    if peak32 and peak16 and gflop and base and fast:
        lines += [
            f"| matmul {rf.get('matmul_fp32_n', 4096)}² / {rf.get('matmul_bf16_n', 4096)}², "
            f"float32 / bf16 (GFLOP/s) | {peak32:.0f} / {peak16:.0f} |",
            f"| float32 eager b1: GFLOP/s, share of the float32 matmul | {base * gflop:.0f}, "
            f"{base * gflop / peak32:.0%} |",
            f"| lungfuse float32 path b1: GFLOP/s, share of the float32 matmul | "
            f"{cl32 * gflop:.0f}, {cl32 * gflop / peak32:.0%} |" if cl32 else "| | |",
            f"| fast path b8: GFLOP/s, share of the bf16 matmul | {fast * gflop:.0f}, "
            f"{fast * gflop / peak16:.0%} |",
            *([f"| fast path b16: GFLOP/s, share of the bf16 matmul | {f16 * gflop:.0f}, "
               f"{f16 * gflop / peak16:.0%} |"]
              if (f16 := f.get("fast_compile_bf16_cl_b16_slices_s")) else []),
            f"| bf16 ceiling here: bf16 matmul / GFLOP per slice (slices/s) | "
            f"{peak16 / gflop:.1f} |",
        ]
    lines += [
        f"| training, float32, batch 4 (slices/s) | {fmt(tr.get('train_fp32_b4_slices_s'))} |",
        f"| training, bf16-mixed (autocast), batch 4 (slices/s) | "
        f"{fmt(tr.get('train_bf16_mixed_b4_slices_s'))} |",
        f"| peak RSS: eager inference (MB) | {fmt(e.get('peak_rss_mb'), 0)} |",
        f"| peak RSS: fast path phase (MB) | {fmt(f.get('peak_rss_mb'), 0)} |",
        f"| peak RSS: training phase (MB) | {fmt(tr.get('peak_rss_mb'), 0)} |",
        "",
        "Dice of the fast path vs float32 (small Inf-Net, test_resnet backbone, trained "
        f"{fmt(d.get('small_model_train_s'), 0)} s on 8 synthetic scans at 128 px; "
        f"{d.get('n_test_positive', 'n/a')} positive of {d.get('n_test_slices', 'n/a')} "
        "held-out slices):",
        "",
        "| | float32 | fast path | |diff| |",
        "|---|---|---|---|",
        f"| Dice@0.5 | {fmt(d.get('dice_fp32'), 4)} | {fmt(d.get('dice_fast'), 4)} | "
        f"{fmt(abs(d['dice_fp32'] - d['dice_fast']) if 'dice_fp32' in d else None, 4)} |",
        f"| mean Dice (256 thr.) | {fmt(d.get('mean_dice_fp32'), 4)} | "
        f"{fmt(d.get('mean_dice_fast'), 4)} | "
        f"{fmt(abs(d['mean_dice_fp32'] - d['mean_dice_fast']) if 'dice_fp32' in d else None, 4)} |",
        f"| max abs probability difference | | | {fmt(d.get('max_abs_prob_diff'), 4)} |",
        "",
        "Reference figures (issue 8), from a machine whose bf16 matmul the issue puts near 900 GFLOP/s: "
        "original network 5.6 slices/s float32 eager b1; 17.5 slices/s batch 1 and 3.8x "
        "under compile + bf16 + channels_last at batch 8; 27.7 GFLOP/slice; ceiling about "
        "32 slices/s. Compare shares of the matmul peak across hosts, not slices/s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        from lungfuse.core.atomic import write_json, write_text

        stem = Path(args.out) if args.out else HERE / "results" / "infnet_speed"
        write_text(stem.with_suffix(".md"), text)
        write_json(stem.with_suffix(".json"), results)


if __name__ == "__main__":
    main()
