"""Semi-supervised Inf-Net where labels matter: candidate-centred crops, a ResNet-18
backbone, unlabelled scans cut at a LUNA16-style candidates file, and FixMatch beside
Semi-Inf-Net.

The successor of ``bench/semi_supervised.py`` (whose 64-px whole slices and test
backbone left a 0.03 Dice gap between 10 % of the labels and all of them). Per seed ``S``:

* a synthetic cohort (``lungfuse.core.synth.generate``, preset ``tiny`` with larger scans:
  ``--size-xy`` px in-plane, ``--slices`` per scan, ``--patients``; seed ``S``), whose
  ``ct/candidates.csv`` lists every nodule and about 12 look-alikes per scan;
* a seeded patient-level split, training / validation (``--val-fraction``);
* slices are ``--crop-mm`` crops resized to ``--img-size`` px (``slices.mode: crop``),
  so that a nodule covers several of Inf-Net's 1/8-resolution output cells;
* the training scans in one seeded order; for a label budget ``b`` (``--budget``, a share
  of the training slices) the first scans of that order whose slice pools reach ``b`` of
  all training slices are **labelled** (L: nodule-centred crops + half as many crops at
  random body points, as ``segment train``, and with ``--l-candidates``, the default, crops
  at their own candidates cut as U's, as ``segment train`` with
  ``semi.labelled_candidates``); the others are **unlabelled** (U: crops at their
  candidates, ``--neighbours`` slices either side, as ``segment train`` with
  ``semi.candidates``; their masks are read only to score pseudo labels afterwards).
  Budgets are nested (the 5 % scans are among the 10 % scans);
* models on that data: **supervised on L**; **progressive** (Semi-Inf-Net) and
  **confidence** (foreground filter + EMA teacher) rounds from it; **fixmatch** (on-line
  weak/strong consistency with an EMA teacher, CutMix and UniMatch's feature dropout)
  from it; **supervised on all** training slices with their masks (the ceiling: L's
  construction on every training scan; one per seed, shared by the budgets).

Scores on the validation patients: Dice@0.5 and mean Dice over 256 thresholds on their
nodule crops (as ``segment evaluate``); per-nodule 3D Dice (the crops of every slice the
nodule spans, ±2 slices, centred on its centroid, stacked; other nodules' voxels ignored)
and nodules found (3D Dice >= 0.1); the share of the gap closed,
``(semi - L) / (ceiling - L)`` on Dice@0.5, per seed.

Usage::

    python bench/semi_supervised_v2.py --quick                   # smoke run
    python bench/semi_supervised_v2.py --threads 1               # the table: 3 seeds x 2 budgets
    python bench/semi_supervised_v2.py --seeds 1 --budget 0.05 --out bench/results/v2_s1_b05
    python bench/semi_supervised_v2.py --merge bench/results/v2_s*.json   # one table

Writes ``STEM.md`` and ``STEM.json`` (``--out``; default
``bench/results/semi_supervised_v2``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import semi_supervised as v1  # noqa: E402  (scoring helpers of the first bench)

METHODS = ("sup_L", "progressive", "confidence", "fixmatch", "fixmatch_control", "bcp",
           "bcp_control", "sup_all")
SEMI = ("progressive", "confidence", "fixmatch", "fixmatch_control", "bcp", "bcp_control")
#: what runs unless --methods says otherwise (the control tells the unlabelled loss's
#: effect from that of more labelled steps and of the EMA teacher)
DEFAULT = ("sup_L", "progressive", "confidence", "fixmatch", "fixmatch_control", "bcp",
           "bcp_control", "sup_all")
LABELS = {"sup_L": "supervised on L", "progressive": "semi: progressive (Semi-Inf-Net)",
          "confidence": "semi: confidence, foreground + EMA",
          "fixmatch": "semi: fixmatch (EMA, CutMix, feature dropout)",
          "fixmatch_control": "control: the fixmatch phase with lambda_u = 0 (L only)",
          "bcp": "semi: bcp (bidirectional copy-paste, EMA)",
          "bcp_control": "control: the bcp phase with lambda_u = 0 (L pixels only)",
          "sup_all": "supervised on all (ceiling)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=float, nargs="+", default=[0.05, 0.10],
                    help="label budgets: share of the training slices whose scans are labelled")
    ap.add_argument("--patients", type=int, default=80, help="cohort size per seed")
    ap.add_argument("--size-xy", type=int, default=128, help="synthetic scan width in px")
    ap.add_argument("--slices", type=int, nargs=2, default=[32, 48],
                    help="synthetic slices per scan (low high)")
    ap.add_argument("--diameter", type=float, nargs=2, default=[4.0, 24.0],
                    help="synthetic nodule diameters in mm (low high)")
    ap.add_argument("--val-fraction", type=float, default=0.25, help="validation patients")
    ap.add_argument("--crop-mm", type=float, default=40.0)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--budget-unit", choices=["scans", "slices"], default="scans",
                    help="scans: the labelled slices are every slice of the first scans of "
                    "a seeded order (U: the other scans' candidate crops); slices: a "
                    "seeded sample of the training slices of all training scans is "
                    "labelled (U: all training scans' candidate crops but those in L), so "
                    "that L holds every kind of nodule, a few slices of each")
    ap.add_argument("--neighbours", type=int, default=1,
                    help="U: slices either side of each candidate's slice")
    ap.add_argument("--l-candidates", action=argparse.BooleanOptionalAction, default=True,
                    help="L (and the ceiling) also hold the labelled scans' candidate crops, "
                    "cut as U's, with their masks (semi.labelled_candidates); "
                    "--no-l-candidates: nodule-centred and random crops only (the first "
                    "partial table)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--channel", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="supervised learning rate")
    ap.add_argument("--steps", type=int, default=600,
                    help="optimiser steps of each supervised model (L, and all: the ceiling)")
    ap.add_argument("--decay-at", type=float, default=0.7,
                    help="supervised: lr x0.1 after this share of the epochs")
    ap.add_argument("--rounds", type=int, default=3, help="progressive / confidence rounds")
    ap.add_argument("--epochs-per-round", type=int, default=2)
    ap.add_argument("--semi-lr", type=float, default=3e-4)
    ap.add_argument("--final-epochs", type=int, default=2,
                    help="progressive / confidence: closing fine-tune on L (0: none)")
    ap.add_argument("--final-lr", type=float, default=1e-4)
    ap.add_argument("--conf-tau", type=float, default=0.75,
                    help="confidence: foreground confidence threshold")
    ap.add_argument("--conf-ema", type=float, default=0.95)
    ap.add_argument("--fm-steps", type=int, default=400, help="fixmatch: on-line steps")
    ap.add_argument("--fm-lr", type=float, default=3e-4)
    ap.add_argument("--fm-tau", type=float, default=0.95)
    ap.add_argument("--fm-lambda", type=float, default=1.0)
    ap.add_argument("--fm-rampup", type=int, default=100)
    ap.add_argument("--fm-ema", type=float, default=0.99)
    ap.add_argument("--fm-dropout", type=float, default=0.5)
    ap.add_argument("--fm-cutmix", type=float, default=0.5)
    ap.add_argument("--fm-loss", choices=["bce", "balanced", "structure"], default="bce",
                    help="fixmatch: unlabelled loss (semi.unlabelled_loss; 'structure' is "
                    "the form of the first partial table)")
    ap.add_argument("--fm-final", choices=["student", "teacher"], default="teacher",
                    help="fixmatch and its control: the model the phase hands on "
                    "(semi.final_model; the first partial table had the student)")
    ap.add_argument("--bcp-lambda", type=float, default=0.5,
                    help="bcp: weight of the unlabelled pixels (BCP's alpha); steps, lr, EMA "
                    "and the model handed on are fixmatch's (--fm-*)")
    ap.add_argument("--bcp-box", type=float, default=2 / 3,
                    help="bcp: side of the pasted box, share of the crop's side")
    ap.add_argument("--bcp-rampup", type=int, default=0,
                    help="bcp: ramp-up steps of the unlabelled weight (0: constant, as BCP)")
    ap.add_argument("--reuse", action="store_true",
                    help="load the supervised models (on L, on all) from --workdir where an "
                    "earlier run of the same seed and settings left them, instead of "
                    "training them again (for adding methods to a table)")
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT), choices=list(METHODS),
                    help="models to train (supervised on L always runs: the semi methods "
                    "start from it; fixmatch_control: the same phase without the "
                    "unlabelled loss, to tell its effect from that of more steps on L)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="cohorts and states (default: a temporary folder, removed)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "semi_supervised_v2",
                    help="output stem: writes STEM.md and STEM.json")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="no training: merge these result JSONs (seeds/budgets run apart) "
                    "into one table at --out")
    ap.add_argument("--quick", action="store_true",
                    help="smoke sizes: 1 seed, 1 budget, 24 small scans, a few steps")
    args = ap.parse_args(argv)
    args.methods = ["sup_L"] + [m for m in args.methods if m != "sup_L"]
    if args.quick:
        args.seeds, args.budget = args.seeds[:1], [max(args.budget)]
        args.patients, args.size_xy, args.slices = 24, 96, [24, 32]
        args.steps, args.fm_steps, args.fm_rampup = 6, 4, 2
        args.rounds, args.epochs_per_round, args.final_epochs = 1, 1, 1
        args.batch_size = 8
    return args


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` says)."""
    try:
        for ln in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if ln.lower().startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- data
def load_cohort(args: argparse.Namespace, root: Path, seed: int) -> tuple[list[Any], Path]:
    """Generate the cohort; return its CT cases (patient ids from clinical) and the path
    of its candidates file."""
    import pandas as pd

    from lungfuse.core.synth import generate
    from lungfuse.plugins.imaging_infnet import ctio

    # --reuse: the same seeded cohort is written again over the earlier run's
    res = generate(root, preset="tiny", patients=args.patients, seed=seed, progress=False,
                   overwrite=args.reuse, size_xy=args.size_xy, slices=tuple(args.slices),
                   diameter_mm=tuple(args.diameter))
    clin = pd.read_parquet(res.clinical, columns=["patient_id", "seriesuid"])
    pid = {str(u): str(p) for p, u in zip(clin.patient_id, clin.seriesuid, strict=True)
           if u is not None and u == u}
    vols = ctio.find_volumes(res.ct_dir)
    ann = ctio.read_annotations(res.annotations)
    assert res.candidates is not None
    return ctio.load_cases(sorted(vols.items()), ann, res.masks_dir, patients=pid), \
        res.candidates


def labelled_scans(trn: list[Any], pools: dict[str, list[Any]], share: float, seed: int
                   ) -> list[Any]:
    """The first scans of a seeded order (at least one with a nodule) whose slice pools
    hold ``share`` of all training slices."""
    import numpy as np

    total = sum(len(p) for p in pools.values())
    order = np.random.default_rng(seed + 202).permutation(len(trn))
    out, n, pos = [], 0, False
    for i in order:
        c = trn[i]
        out.append(c)
        n += len(pools[c.uid])
        pos = pos or any(it.source == "labelled" for it in pools[c.uid])
        if n >= share * total and pos:
            break
    return out


def labelled_slices(pool: list[Any], share: float, seed: int) -> Any:
    """``--budget-unit slices``: a seeded sample of ``share`` of the training slices of
    every training scan (nodule-centred, random and candidate crops alike), holding at
    least one nodule slice."""
    import numpy as np

    from lungfuse.plugins.imaging_infnet.dataset import SlicePool

    n = max(1, round(share * len(pool)))
    order = np.random.default_rng(seed + 303).permutation(len(pool))
    take = sorted(order[:n].tolist())
    if not any(bool((pool[i].mask > 0.5).any()) for i in take):
        first = next(int(i) for i in order if bool((pool[int(i)].mask > 0.5).any()))
        take[-1] = first
    return SlicePool(pool[i] for i in sorted(set(take)))


def crop_key(it: Any) -> str:
    """The candidate key (``Candidate.key``) of a labelled crop cut at a candidate point
    (other crops: a key no candidate has)."""
    c = it.meta.get("centre") if it.source == "candidate" else None
    if c is None:
        return f"{it.uid}:{it.z}:{it.source}"
    return f"{it.uid}:{it.z}@{round(c[0])},{round(c[1])}"


def unlabelled_pool(cases: list[Any], points: list[Any], slices: Any, neighbours: int
                    ) -> list[Any]:
    """U as ``segment train`` cuts it from the candidates file; each crop's true mask
    is attached as ``hidden_mask`` for the pseudo-label diagnostics (training never
    reads it)."""
    from lungfuse.plugins.imaging_infnet.dataset import cut_slice
    from lungfuse.plugins.imaging_infnet.semi import candidates_at_points

    cands = candidates_at_points(cases, points, slices, neighbours)
    by = {c.uid: c for c in cases}
    for c in cands:
        case = by[c.uid]
        _, y = cut_slice(case.volume, c.z, slices, case.labels, c.centre)
        c.hidden_mask = (y > 0).half()
    return cands


# ----------------------------------------------------------------------------- scoring
def nodules_3d(model: Any, cases: list[Any], slices: Any, margin: int = 2
               ) -> list[dict[str, Any]]:
    """Per validation nodule: 3D Dice of the stacked crops (see the module doc); one
    prediction call for all of them."""
    import numpy as np
    import torch

    from lungfuse.plugins.imaging_infnet.dataset import cut_slice
    from lungfuse.plugins.imaging_infnet.semi import predict_probs

    xs, own, other, spans, meta = [], [], [], [], []
    for case in cases:
        lab = case.labels
        for k in [int(v) for v in np.unique(lab) if v > 0]:
            zz, yy, xx = np.nonzero(lab == k)
            centre = (float(xx.mean()), float(yy.mean()))
            zs = range(max(0, int(zz.min()) - margin),
                       min(lab.shape[0], int(zz.max()) + margin + 1))
            start = len(xs)
            for z in zs:
                x, y = cut_slice(case.volume, z, slices, (lab == k).astype(np.uint8), centre)
                _, yo = cut_slice(case.volume, z, slices,
                                  ((lab > 0) & (lab != k)).astype(np.uint8), centre)
                xs.append(x)
                own.append(y > 0)
                other.append(yo > 0)
            spans.append((start, len(xs)))
            meta.append((case.uid, k, len(zz)))
    if not xs:
        return []
    pred = (predict_probs(model, torch.stack(xs)) >= 0.5) & ~torch.stack(other)
    truth = torch.stack(own)
    out = []
    for (a, b), (uid, k, n) in zip(spans, meta, strict=True):
        p, t = pred[a:b], truth[a:b]
        denom = float(p.sum() + t.sum())
        d = 2 * float((p & t).sum()) / denom if denom else 1.0
        out.append({"uid": uid, "label": k, "dice3d": d, "found": d >= 0.1, "voxels": n})
    return out


def score_all(model: Any, vpool: list[Any], val: list[Any], slices: Any) -> dict[str, Any]:
    m = v1.score(model, vpool)
    nod = nodules_3d(model, val, slices)
    m["dice3d"] = statistics.mean(n["dice3d"] for n in nod) if nod else math.nan
    m["found"] = sum(n["found"] for n in nod)
    m["n_nodules"] = len(nod)
    m["nodules"] = nod
    return m


# ----------------------------------------------------------------------------- one seed
def run_seed(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    import torch

    from lungfuse.plugins.imaging_infnet.candidates import read_candidates
    from lungfuse.plugins.imaging_infnet.config import SemiSettings, SliceSettings, TrainSettings
    from lungfuse.plugins.imaging_infnet.dataset import SlicePool, build_pool
    from lungfuse.plugins.imaging_infnet.semi import (
        SemiTrainer,
        labelled_at_points,
        predict_probs,
    )
    from lungfuse.plugins.imaging_infnet.train import fit, load_checkpoint

    t0 = time.perf_counter()
    cases, cand_csv = load_cohort(args, work / f"cohort_{seed}", seed)
    trn, val = v1.split_patients(cases, args.val_fraction, seed)
    slices = SliceSettings(img_size=args.img_size, mode="crop", crop_mm=args.crop_mm)
    base = TrainSettings(backbone=args.backbone, channel=args.channel,
                         batch_size=args.batch_size, lr=args.lr, multiscale=[1.0],
                         negatives_per_positive=0.5, val_fraction=0.0, seed=seed)
    pools = {c.uid: build_pool([c], slices, 0.5, seed) for c in trn}
    points = read_candidates(cand_csv, {c.uid for c in cases})
    at_cands = {c.uid: (labelled_at_points([c], points, slices, args.neighbours)
                        if args.l_candidates else []) for c in trn}
    # the budget counts the nodule / random crops (the same scans labelled with or
    # without --l-candidates); a labelled scan brings its candidate crops too
    everything = SlicePool(it for c in trn for it in pools[c.uid] + at_cands[c.uid])
    vpool = build_pool(val, slices, 0.5, seed)
    val_patients = {c.patient_id or c.uid for c in val}
    trn_patients = sorted({c.patient_id or c.uid for c in trn})
    res: dict[str, Any] = {"info": {"seed": seed, "scans": len(cases),
                                    "train_scans": len(trn), "val_scans": len(val),
                                    "train_slices": len(everything),
                                    "val_slices": len(vpool),
                                    "val_pos": sum(it.source == "labelled" for it in vpool),
                                    "candidates": len(points)},
                           "budgets": {}, "methods": {}}
    print(f"[seed {seed}] {len(cases)} scans: {len(trn)} training ({len(everything)} slices), "
          f"{len(val)} validation ({len(vpool)} slices); {len(points)} candidates "
          f"(data {time.perf_counter() - t0:.0f} s)", flush=True)

    def done(where: dict[str, Any], name: str, model: Any, t: float, tag: str,
             **extra: Any) -> dict[str, Any]:
        m = score_all(model, vpool, val, slices)
        m["train_s"] = time.perf_counter() - t
        m.update(extra)
        where[name] = m
        print(f"[seed {seed}{tag}] {LABELS[name]}: Dice@0.5 {m['dice']:.4f}, mean Dice "
              f"{m['mean_dice']:.4f}, 3D Dice {m['dice3d']:.4f}, found {m['found']}/"
              f"{m['n_nodules']} ({m['train_s']:.0f} s)", flush=True)
        return m

    def supervised(pool: Any, settings: Any, out: Path) -> tuple[Any, dict[str, Any]]:
        """Train on ``pool``, or with --reuse load what an earlier run left in ``out``."""
        if args.reuse and (out / "infnet.pt").exists():
            model, meta = load_checkpoint(out / "infnet.pt")
            extra = meta.get("extra") or {}
            want = {"backbone": settings.backbone, "channel": settings.channel,
                    "slices": slices.model_dump(), "n_train_slices": len(pool),
                    "epochs": settings.epochs}
            have = {"backbone": model.backbone_name, "channel": model.channel,
                    "slices": meta["slices"].model_dump(),
                    "n_train_slices": extra.get("n_train_slices"),
                    "epochs": extra.get("epochs")}
            if want != have:
                diff = {k: (have[k], want[k]) for k in want if want[k] != have[k]}
                raise SystemExit(f"--reuse: {out / 'infnet.pt'} was trained otherwise "
                                 f"(saved, this run): {diff}; delete it or drop --reuse")
            print(f"[seed {seed}] reusing {out / 'infnet.pt'}", flush=True)
            return model.eval(), {"reused": str(out / "infnet.pt"),
                                  "fit_s": (meta.get("extra") or {}).get("fit_seconds")}
        module, _ = fit(pool, None, slices, settings, out, trn_patients, progress=False)
        return module.model.eval(), {}

    if "sup_all" in args.methods:
        t = time.perf_counter()
        full = v1.budget(base, len(everything), args.steps, args.decay_at)
        model, extra = supervised(everything, full, work / f"sup_all_{seed}")
        done(res["methods"], "sup_all", model, t, "", **extra)

    unit = "" if args.budget_unit == "scans" else "_slices"  # work folder names
    for b in args.budget:
        tag = f", {b:.0%}"
        if args.budget_unit == "scans":
            lab_scans = labelled_scans(trn, pools, b, seed)
            lab_uids = {c.uid for c in lab_scans}
            lab = SlicePool(it for c in lab_scans for it in pools[c.uid] + at_cands[c.uid])
            unl = [c for c in trn if c.uid not in lab_uids]
            cands = unlabelled_pool(unl, points, slices, args.neighbours)
        else:
            lab = labelled_slices(everything, b, seed)
            lab_uids = {it.uid for it in lab}
            lab_scans = [c for c in trn if c.uid in lab_uids]
            unl = list(trn)
            taken = {crop_key(it) for it in lab}
            cands = [c for c in unlabelled_pool(unl, points, slices, args.neighbours)
                     if c.key not in taken]
        u_pos = sum(bool((c.hidden_mask > 0.5).any()) for c in cands)
        info = {"budget": b, "L_scans": len(lab_scans), "L": len(lab),
                "L_pos": sum(bool((it.mask > 0.5).any()) for it in lab),
                "L_candidate_crops": sum(it.source == "candidate" for it in lab),
                "L_share": len(lab) / len(everything), "U_scans": len(unl),
                "U": len(cands), "U_pos": u_pos}
        out: dict[str, Any] = {"info": info, "methods": {}}
        res["budgets"][str(b)] = out
        print(f"[seed {seed}{tag}] L = {len(lab)} slices of {len(lab_scans)} scans "
              f"({info['L_candidate_crops']} at candidates; {info['L_pos']} with a nodule, "
              f"{info['L_share']:.1%} of the training "
              f"slices); U = {len(cands)} candidate crops of {len(unl)} scans ({u_pos} "
              "with a nodule)", flush=True)
        t = time.perf_counter()
        train = v1.budget(base, len(lab), args.steps, args.decay_at)
        sup, reused = supervised(lab, train, work / f"sup_L_{seed}_{b}{unit}")
        u_prob = predict_probs(sup, torch.stack([c.image for c in cands]))
        q = v1.pseudo_quality(u_prob, [c.hidden_mask for c in cands])
        done(out["methods"], "sup_L", sup, t, tag, pseudo_quality_on_U=q, **reused)
        for name in SEMI:
            if name not in args.methods:
                continue
            t = time.perf_counter()
            method = name.removesuffix("_control")
            common = {"method": method, "batch_size": args.batch_size,
                      "ema_decay": {"progressive": None, "confidence": args.conf_ema,
                                    "fixmatch": args.fm_ema, "bcp": args.fm_ema}[method]}
            if method == "bcp":
                lam = 0.0 if name == "bcp_control" else args.bcp_lambda
                semi = SemiSettings(**common, steps=args.fm_steps, lr=args.fm_lr, lambda_u=lam,
                                    rampup_steps=args.bcp_rampup, copy_paste_box=args.bcp_box,
                                    final_model=args.fm_final, final_epochs=0)
            elif method == "fixmatch":
                lam = 0.0 if name == "fixmatch_control" else args.fm_lambda
                semi = SemiSettings(**common, steps=args.fm_steps, lr=args.fm_lr,
                                    tau=args.fm_tau, lambda_u=lam,
                                    rampup_steps=args.fm_rampup,
                                    feature_dropout=args.fm_dropout, cutmix=args.fm_cutmix,
                                    unlabelled_loss=args.fm_loss, final_model=args.fm_final,
                                    final_epochs=0)
            else:
                semi = SemiSettings(**common, k_per_round=math.ceil(len(cands) / args.rounds),
                                    rounds=args.rounds, epochs_per_round=args.epochs_per_round,
                                    lr=args.semi_lr, final_epochs=args.final_epochs,
                                    final_lr=args.final_lr, tau=args.conf_tau,
                                    confidence_over="foreground")
            tr = SemiTrainer(lab, cands, vpool, slices, train, semi,
                             work / f"{name}_{seed}_{b}{unit}", trn_patients,
                             test_patients=val_patients, progress=False)
            model = tr.run(init=sup)
            u_prob = predict_probs(model, torch.stack([c.image for c in cands]))
            extra = {"history": [h.__dict__ for h in tr.history],
                     "its_predictions_on_U": v1.pseudo_quality(u_prob,
                                                               [c.hidden_mask for c in cands])}
            done(out["methods"], name, model, t, tag, **extra)
            shutil.rmtree(work / f"{name}_{seed}_{b}{unit}", ignore_errors=True)
    res["info"]["seed_s"] = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------------------- report
def _ms(vals: list[float], per_seed: bool = True) -> str:
    vals = [v for v in vals if v == v]
    if not vals:
        return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    tail = f" ({', '.join(f'{v:.3f}' for v in vals)})" if per_seed and len(vals) > 1 else ""
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}{tail}"


def budget_table(results: list[dict[str, Any]], b: str) -> str:
    """One label budget: every model, mean ± sd over seeds (per seed in parentheses)."""
    lines = ["| model | Dice@0.5 | mean Dice (256 thr.) | per-nodule 3D Dice | nodules found "
             "(3D Dice ≥ 0.1) | share of the gap closed | train s / seed |",
             "|---|---|---|---|---|---|---|"]
    for name in METHODS:
        rows, gaps = [], []
        for r in results:
            bud = r["budgets"].get(b)
            if bud is None:
                continue
            m = r["methods"].get(name) if name == "sup_all" else bud["methods"].get(name)
            if m is None:
                continue
            rows.append(m)
            lo = bud["methods"]["sup_L"]["dice"]
            hi = r["methods"].get("sup_all", {}).get("dice", math.nan)
            gaps.append((m["dice"] - lo) / (hi - lo) if hi == hi and hi != lo else math.nan)
        if not rows:
            continue
        found = f"{sum(m['found'] for m in rows)}/{sum(m['n_nodules'] for m in rows)}"
        gap = _ms(gaps) if name in SEMI else ""
        lines.append(f"| {LABELS[name]} | {_ms([m['dice'] for m in rows])} | "
                     f"{_ms([m['mean_dice'] for m in rows], False)} | "
                     f"{_ms([m['dice3d'] for m in rows], False)} | {found} | {gap} | "
                     f"{statistics.mean(m['train_s'] for m in rows):.0f} |")
    return "\n".join(lines)


def diagnostics(results: list[dict[str, Any]], b: str) -> str:
    lines = ["| model | its masks of U: Dice@0.5 on U's nodule crops | U's nodule-free crops "
             "with a false positive | on-line phase: pixels that counted / of them nodule |",
             "|---|---|---|---|"]
    for name in ("sup_L", *SEMI):
        qs, conf = [], []
        for r in results:
            m = r["budgets"].get(b, {}).get("methods", {}).get(name)
            if m is None:
                continue
            qs.append(m.get("pseudo_quality_on_U") or m.get("its_predictions_on_U"))
            on = [h.get("online") for h in m.get("history", []) if h.get("online")]
            if on:
                conf.append(on[-1])
        if not qs:
            continue
        c = (f"{_ms([x['confident'] for x in conf], False)} / "
             f"{_ms([x['positive'] for x in conf], False)}" if conf else "")
        lines.append(f"| {LABELS[name]} | {_ms([q['pseudo_dice_pos'] for q in qs], False)} | "
                     f"{_ms([q['pseudo_fp_neg'] for q in qs], False)} | {c} |")
    return "\n".join(lines)


def data_line(results: list[dict[str, Any]], b: str) -> str:
    parts = []
    for r in results:
        bud = r["budgets"].get(b)
        if bud is None:
            continue
        i = bud["info"]
        at = (f"{i['L_candidate_crops']} at candidates, " if "L_candidate_crops" in i else "")
        parts.append(f"seed {r['info']['seed']}: L = {i['L']} slices of {i['L_scans']} scans "
                     f"({at}{i['L_pos']} with a nodule, {i['L_share']:.1%}), U = {i['U']} "
                     f"candidate crops of {i['U_scans']} scans ({i['U_pos']} with a nodule)")
    return "; ".join(parts)


def setup(args: dict[str, Any], results: list[dict[str, Any]]) -> str:
    i = results[0]["info"]
    return (
        f"Per seed: `tiny` preset with {args['patients']} patients, {args['size_xy']} px "
        f"scans of {args['slices'][0]}-{args['slices'][1]} slices, nodules "
        f"{args['diameter'][0]:g}-{args['diameter'][1]:g} mm; patient split "
        f"{1 - args['val_fraction']:.0%} / {args['val_fraction']:.0%} (seed {i['seed']}: "
        f"{i['train_scans']} training scans, {i['train_slices']} training slices, "
        f"{i['val_slices']} validation crops, {i['val_pos']} with a nodule). Crops of "
        f"{args['crop_mm']:g} mm at {args['img_size']} px. {args['backbone']} backbone "
        f"(untrained), channel {args['channel']}, batch {args['batch_size']}, no multi-scale. "
        f"Supervised models: {args['steps']} steps, lr {args['lr']} x0.1 after "
        f"{args['decay_at']:.0%}. Progressive and confidence: {args['rounds']} rounds of "
        f"|U| / {args['rounds']} slices, {args['epochs_per_round']} epochs per round at "
        f"lr {args['semi_lr']}, closing fine-tune on L {args['final_epochs']} epochs at "
        f"{args['final_lr']}; confidence: foreground, tau {args['conf_tau']}, EMA "
        f"{args['conf_ema']}. Fixmatch: {args['fm_steps']} steps, lr {args['fm_lr']} (poly), "
        f"tau {args['fm_tau']}, lambda_u {args['fm_lambda']}, ramp-up {args['fm_rampup']} "
        f"steps, EMA {args['fm_ema']}, feature dropout {args['fm_dropout']}, CutMix "
        f"{args['fm_cutmix']}, unlabelled loss {args.get('fm_loss', 'structure')}, hands on "
        f"the {args.get('fm_final', 'student')}, unlabelled batch {args['batch_size']}, no "
        f"closing fine-tune. "
        + (f"BCP: the fixmatch phase's steps, lr, EMA and model handed on; lambda_u (BCP's "
           f"alpha) {args['bcp_lambda']}, box {args['bcp_box']:.3g} of the side, ramp-up "
           f"{args['bcp_rampup']} steps, every pixel's pseudo label counts (largest "
           f"component). " if "bcp_lambda" in args else "")
        + ("Label budget in slices: L is a seeded sample of the training slices of every "
           "training scan (a few slices of every kind of nodule); U is every training "
           "scan's candidate crops but those in L. "
           if args.get("budget_unit") == "slices" else "")
        + f"All semi methods start from the supervised-on-L model; U: candidate crops, "
        f"{args['neighbours']} slice(s) either side; L and the ceiling "
        + ("also hold the labelled scans' candidate crops, cut as U's, with their masks."
           if args.get("l_candidates") else "hold nodule-centred and random crops only."))


def report(cmd: str, machine: str, wall: float, args: dict[str, Any],
           results: list[dict[str, Any]], load: tuple[float, float]) -> str:
    seeds = sorted({r["info"]["seed"] for r in results})
    budgets = sorted({b for r in results for b in r["budgets"]}, key=float)
    out = ["# Semi-supervised Inf-Net where labels matter (synthetic CT, candidate crops)", "",
           f"Command: `{cmd}`  ", f"Machine: {machine}; load average {load[0]:.2f} before, "
           f"{load[1]:.2f} after.  ",
           f"Wall time: {wall / 60:.1f} min for seed(s) {', '.join(map(str, seeds))}.", "",
           setup(args, results), ""]
    for b in budgets:
        out += [f"## Label budget {float(b):.0%}", "", data_line(results, b), "",
                "Validation patients; Dice@0.5 mean ± sd over seeds (per seed in parentheses); "
                "nodules found summed over seeds; gap closed = (semi − L) / (ceiling − L) on "
                "Dice@0.5:", "", budget_table(results, b), "",
                "Pseudo-label quality (each model's masks of U against their hidden truth):",
                "", diagnostics(results, b), ""]
    return "\n".join(out)


def merge_results(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One result per seed from several runs: a later run adds the budgets and methods
    an earlier one lacks (an earlier run's model wins where both have it), so that a
    method run later on the same seeds (``--reuse``) joins the table. A supervised-on-L
    model both runs scored must score alike (the same starting point), else it stops."""
    import copy

    by_seed: dict[int, dict[str, Any]] = {}
    for run in runs:
        for r in run:
            seed = r["info"]["seed"]
            if seed not in by_seed:
                by_seed[seed] = copy.deepcopy(r)
                continue
            have = by_seed[seed]
            for name, m in r["methods"].items():
                have["methods"].setdefault(name, m)
            for b, bud in r["budgets"].items():
                if b not in have["budgets"]:
                    have["budgets"][b] = copy.deepcopy(bud)
                    continue
                mine = have["budgets"][b]["methods"]
                new, old = bud["methods"].get("sup_L"), mine.get("sup_L")
                if new and old and abs(new["dice"] - old["dice"]) > 1e-6:
                    raise SystemExit(f"seed {seed}, budget {b}: supervised on L scored "
                                     f"{old['dice']:.4f} and {new['dice']:.4f} in the runs "
                                     "to merge: they did not start from the same model")
                for name, m in bud["methods"].items():
                    mine.setdefault(name, m)
    return [by_seed[k] for k in sorted(by_seed)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cmd = "python " + " ".join([os.path.relpath(__file__)] + (sys.argv[1:] if argv is None
                                                              else argv))
    if args.merge:
        objs = [json.loads(p.read_text(encoding="utf-8")) for p in args.merge]
        results = merge_results([o["results"] for o in objs])
        margs = dict(objs[0]["args"])
        for o in objs[1:]:  # settings of methods the first file did not run
            margs.update({k: v for k, v in o["args"].items() if k not in margs})
        md = report(cmd + "  (merged: " + "; ".join(o["command"] for o in objs) + ")",
                    objs[0]["machine"], sum(o["wall_s"] for o in objs), margs,
                    results, (objs[0]["load_before"], objs[-1]["load_after"]))
        args.out.with_suffix(".md").write_text(md, encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps(
            {"command": cmd, "merged": [o["command"] for o in objs],
             "machine": objs[0]["machine"], "wall_s": sum(o["wall_s"] for o in objs),
             "load_before": objs[0]["load_before"], "load_after": objs[-1]["load_after"],
             "args": margs, "results": results}, indent=1, default=float),
            encoding="utf-8")
        print(md)
        return
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    machine = (f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} CPU cores, torch "
               f"{torch.__version__} ({torch.get_num_threads()} threads), Python "
               f"{platform.python_version()}")
    load0 = os.getloadavg()
    print(f"command: {cmd}\nmachine: {machine}\nload average before: {load0[0]:.2f}",
          flush=True)
    t0 = time.perf_counter()
    tmp = None
    if args.workdir is None:
        tmp = Path(tempfile.mkdtemp(prefix="lungfuse-semi-v2-"))
    work = args.workdir or tmp
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for seed in args.seeds:
            results.append(run_seed(args, seed, work))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    jargs = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    md = report(cmd, machine, wall, jargs, results, (load0[0], load1[0]))
    out_md, out_json = args.out.with_suffix(".md"), args.out.with_suffix(".json")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(md, encoding="utf-8")
    out_json.write_text(json.dumps({"command": cmd, "machine": machine, "wall_s": wall,
                                    "load_before": load0[0], "load_after": load1[0],
                                    "args": jargs, "results": results}, indent=1,
                                   default=float), encoding="utf-8")
    print("\n" + md)
    print(f"wall time {wall:.0f} s; wrote {out_md} and {out_json}")


if __name__ == "__main__":
    main()
