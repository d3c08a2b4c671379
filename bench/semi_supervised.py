"""Semi-supervised Inf-Net on a synthetic cohort: does pseudo-labelling beat the labelled
slices alone?

For each seed ``S`` a synthetic cohort is generated (``lungfuse.core.synth.generate``,
``--preset``, ``--patients``, seed ``S``); its CT patients are split at patient level
(seeded) into training and validation. The training patients' slice pool (nodule slices
plus sampled negatives, as ``segment train``) is split: the labels of a fraction ``L``
(``--labelled-fraction``, seeded) are kept, the rest ``U`` is treated as unlabelled (its
masks are hidden and read only for the pseudo-label diagnostics). Then, on the same data:

* ``supervised L``: Inf-Net trained on ``L`` alone;
* ``semi progressive``: Semi-Inf-Net rounds on ``L + U`` starting from that model;
* ``semi confidence + EMA``: confidence-filtered, refreshed pseudo labels from an EMA
  teacher, starting from that model;
* ``supervised L + U``: Inf-Net trained on every training slice with its true mask (the
  ceiling).

Every model is scored on the validation patients' nodule slices: Dice at 0.5 and mean
Dice over 256 thresholds (``metrics.segmentation_metrics``); also on all validation slices
(negatives included) in the JSON. Diagnostics: Dice of the pseudo masks against the hidden
true masks of ``U`` (nodule slices), the false-positive rate on nodule-free ``U`` slices,
how many slices the confidence filter kept and how many of those contain a nodule, and the
validation Dice after each round.

Usage::

    python bench/semi_supervised.py                 # full size (see --help), 3 seeds
    python bench/semi_supervised.py --quick         # smoke run (about a minute)

Writes ``bench/results/semi_supervised.md`` and ``.json`` (``--out`` changes the stem).
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
METHODS = ("sup_L", "semi_progressive", "semi_confidence", "sup_LU")
LABELS = {"sup_L": "supervised on L", "semi_progressive": "semi: progressive (L + U)",
          "semi_confidence": "semi: confidence + EMA teacher (L + U)",
          "sup_LU": "supervised on L + U (ceiling)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "demo"])
    ap.add_argument("--patients", type=int, default=40, help="cohort size per seed")
    ap.add_argument("--val-fraction", type=float, default=0.25, help="validation patients")
    ap.add_argument("--labelled-fraction", type=float, default=0.1,
                    help="training slices whose labels are kept (L)")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--backbone", default="test_resnet")
    ap.add_argument("--channel", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="supervised learning rate")
    ap.add_argument("--steps", type=int, default=400,
                    help="optimiser steps of each supervised model (on L, and on L + U)")
    ap.add_argument("--decay-at", type=float, default=0.7,
                    help="supervised models: lr x0.1 after this fraction of their epochs")
    ap.add_argument("--k-per-round", type=int, default=0,
                    help="unlabelled slices per round (0: |U| / rounds, rounded up)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs-per-round", type=int, default=3)
    ap.add_argument("--semi-lr", type=float, default=3e-4)
    ap.add_argument("--final-epochs", type=int, default=5,
                    help="closing fine-tune on L (0: none)")
    ap.add_argument("--final-lr", type=float, default=1e-4)
    ap.add_argument("--tau", type=float, default=0.97)
    ap.add_argument("--confidence-over", choices=["slice", "foreground"], default="slice",
                    help="pixels the confidence filter averages over (SemiSettings)")
    ap.add_argument("--ignore-band", type=float, nargs=2, default=[0.2, 0.8])
    ap.add_argument("--ema-decay", type=float, default=0.95)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                    help="models to train (supervised on L always runs: the others start "
                    "from it or are compared with it)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="cohorts and round states (default: a temporary folder, removed)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "semi_supervised",
                    help="output stem: writes STEM.md and STEM.json")
    ap.add_argument("--quick", action="store_true",
                    help="smoke sizes: 1 seed, 16 patients, few epochs")
    args = ap.parse_args(argv)
    args.methods = ["sup_L"] + [m for m in args.methods if m != "sup_L"]
    if args.quick:
        args.seeds = args.seeds[:1]
        args.patients, args.steps = 16, 8
        args.rounds, args.epochs_per_round, args.final_epochs = 2, 1, 1
    return args


# ----------------------------------------------------------------------------- data
def load_cohort(root: Path, preset: str, patients: int, seed: int) -> list[Any]:
    """Generate a synthetic cohort and read its CT cases (patient ids from clinical)."""
    import pandas as pd

    from lungfuse.core.synth import generate
    from lungfuse.plugins.imaging_infnet import ctio

    res = generate(root, preset=preset, patients=patients, seed=seed, progress=False)
    clin = pd.read_parquet(res.clinical, columns=["patient_id", "seriesuid"])
    pid = {str(u): str(p) for p, u in zip(clin.patient_id, clin.seriesuid, strict=True)
           if u is not None and u == u}
    vols = ctio.find_volumes(res.ct_dir)
    ann = ctio.read_annotations(res.annotations)
    return ctio.load_cases(sorted(vols.items()), ann, res.masks_dir, patients=pid)


def split_patients(cases: list[Any], val_fraction: float, seed: int
                   ) -> tuple[list[Any], list[Any]]:
    """Patient-level seeded split into (training, validation) cases."""
    import numpy as np

    pats = sorted({c.patient_id or c.uid for c in cases})
    perm = np.random.default_rng(seed + 101).permutation(len(pats))
    n_val = max(1, int(round(val_fraction * len(pats))))
    val = {pats[i] for i in perm[:n_val]}
    return ([c for c in cases if (c.patient_id or c.uid) not in val],
            [c for c in cases if (c.patient_id or c.uid) in val])


# ----------------------------------------------------------------------------- scoring
def score(model: Any, pool: list[Any]) -> dict[str, float]:
    """Dice@0.5 and mean Dice (256 thresholds) on nodule slices and on all slices."""
    import torch

    from lungfuse.plugins.imaging_infnet.metrics import segmentation_metrics
    from lungfuse.plugins.imaging_infnet.semi import predict_probs

    x = torch.stack([it.image for it in pool])
    y = torch.stack([it.mask for it in pool]).float()
    m = segmentation_metrics(predict_probs(model, x), y)
    pos = (y > 0.5).flatten(1).any(1)
    return {"dice": float(m["dice"][pos].mean()), "mean_dice": float(m["mean_dice"][pos].mean()),
            "dice_all": float(m["dice"].mean()), "mean_dice_all": float(m["mean_dice"].mean()),
            "n_val_pos": int(pos.sum()), "n_val": len(pool)}


def pseudo_quality(prob_or_mask: Any, truth: Any) -> dict[str, float]:
    """Pseudo masks vs hidden truth: Dice@0.5 on nodule slices, FP rate on empty ones."""
    import torch

    from lungfuse.plugins.imaging_infnet.metrics import segmentation_metrics

    if len(truth) == 0:
        return {"pseudo_dice_pos": math.nan, "pseudo_fp_neg": math.nan, "n_pos": 0, "n": 0}
    y = torch.stack(list(truth)).float()
    p = torch.stack(list(prob_or_mask)).float()
    pos = (y > 0.5).flatten(1).any(1)
    d = segmentation_metrics(p, y, n_thresholds=2)["dice"]
    fp = (p[~pos] >= 0.5).flatten(1).any(1).float()
    return {"pseudo_dice_pos": float(d[pos].mean()) if pos.any() else math.nan,
            "pseudo_fp_neg": float(fp.mean()) if (~pos).any() else math.nan,
            "n_pos": int(pos.sum()), "n": len(y)}


TAUS = (0.97, 0.99, 0.995, 0.999)
TAUS_FG = (0.8, 0.85, 0.9, 0.95)  # the foreground mean lives on a lower scale


def confidence_vs_quality(prob: Any, truth: Any, over: str = "slice", lo: float = 0.2,
                          taus: tuple[float, ...] = TAUS) -> dict[str, Any]:
    """Does the filter's slice confidence (``mean max(p, 1 - p)`` over every pixel, or over
    the pixels with ``p > lo``) rank pseudo masks by quality? Spearman correlation with
    their Dice on nodule slices, and per ``tau`` the share of slices kept and the pseudo
    Dice of the kept nodule slices."""
    import torch
    from scipy.stats import spearmanr

    from lungfuse.plugins.imaging_infnet.metrics import segmentation_metrics
    from lungfuse.plugins.imaging_infnet.semi import slice_confidence

    y = torch.stack(list(truth)).float()
    conf = slice_confidence(prob, over, lo)
    dice = segmentation_metrics((prob >= 0.5).float(), y, n_thresholds=2)["dice"]
    pos = (y > 0.5).flatten(1).any(1)
    ok = pos & ~torch.isnan(conf)  # foreground: slices predicted empty have no confidence
    rho = spearmanr(conf[ok].numpy(), dice[ok].numpy()).statistic if ok.sum() > 2 \
        else math.nan
    at = {}
    for tau in taus:
        keep = conf >= tau
        at[str(tau)] = {"kept": float(keep.float().mean()),
                        "dice_pos": float(dice[keep & pos].mean()) if (keep & pos).any()
                        else math.nan}
    return {"spearman": float(rho), "conf_median": float(conf.nanmedian()), "at": at,
            "scored": float((~torch.isnan(conf)).float().mean())}


def round_diagnostics(trainer: Any) -> list[dict[str, Any]]:
    """Per round: pseudo-label quality against the hidden masks, kept counts, val Dice."""
    import torch

    out = []
    for h in trainer.history:
        row: dict[str, Any] = {"round": h.round, "added": h.added, "pool": h.pool_size,
                               "val_dice_all": h.val_dice}
        if h.round > 0:
            obj = torch.load(trainer.state_dir / f"round_{h.round:03d}.pt", map_location="cpu",
                             weights_only=True)
            cands = [trainer.by_key[k] for k in obj["keys"]]
            q = pseudo_quality(obj["masks"], [c.hidden_mask for c in cands])
            row.update(q)
            if trainer.semi.method == "confidence":
                considered = trainer.order[:h.round * trainer.semi.k_per_round]
                row["considered"] = len(considered)
                row["considered_pos"] = sum(
                    bool((trainer.by_key[k].hidden_mask > 0.5).any()) for k in considered)
        out.append(row)
    return out


# ----------------------------------------------------------------------------- one seed
def budget(train: Any, n_slices: int, steps: int, decay_at: float) -> Any:
    """Settings giving ``steps`` optimiser steps on ``n_slices`` (the loader drops the last
    partial batch when there is more than one), lr x0.1 after ``decay_at`` of them."""
    per_epoch = max(1, n_slices // train.batch_size) if n_slices > train.batch_size else 1
    epochs = max(1, math.ceil(steps / per_epoch))
    return train.model_copy(update={"epochs": epochs,
                                    "lr_decay_every": max(1, round(decay_at * epochs))})


def run_seed(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    import torch

    from lungfuse.plugins.imaging_infnet.config import SemiSettings, SliceSettings, TrainSettings
    from lungfuse.plugins.imaging_infnet.dataset import SlicePool, build_pool
    from lungfuse.plugins.imaging_infnet.semi import (
        SemiTrainer,
        predict_probs,
        split_labelled,
    )
    from lungfuse.plugins.imaging_infnet.train import fit

    t0 = time.perf_counter()
    cases = load_cohort(work / f"cohort_{seed}", args.preset, args.patients, seed)
    trn, val = split_patients(cases, args.val_fraction, seed)
    slices = SliceSettings(img_size=args.img_size)
    base_train = TrainSettings(backbone=args.backbone, channel=args.channel,
                               batch_size=args.batch_size, lr=args.lr, multiscale=[1.0],
                               negatives_per_positive=0.5, val_fraction=0.0, seed=seed)
    pool = build_pool(trn, slices, base_train.negatives_per_positive, seed)
    vpool = build_pool(val, slices, base_train.negatives_per_positive, seed)
    lab, cands = split_labelled(pool, args.labelled_fraction, seed)
    train = budget(base_train, len(lab), args.steps, args.decay_at)
    val_patients = {c.patient_id or c.uid for c in val}
    trn_patients = sorted({c.patient_id or c.uid for c in trn})
    u_pos = sum(bool((c.hidden_mask > 0.5).any()) for c in cands)
    info: dict[str, Any] = {
        "seed": seed, "scans": len(cases), "train_patients": len(trn_patients),
        "val_patients": len(val_patients), "train_slices": len(pool), "L": len(lab),
        "L_pos": sum(it.source == "labelled" for it in lab), "U": len(cands), "U_pos": u_pos,
        "val_slices": len(vpool), "epochs_L": train.epochs,
        "epochs_LU": budget(base_train, len(pool), args.steps, args.decay_at).epochs,
        "data_s": time.perf_counter() - t0}
    print(f"[seed {seed}] {info['scans']} scans, {info['train_patients']} training / "
          f"{info['val_patients']} validation patients; {len(pool)} training slices: "
          f"L = {len(lab)} ({info['L_pos']} with a nodule), U = {len(cands)} ({u_pos}); "
          f"{len(vpool)} validation slices", flush=True)
    res: dict[str, Any] = {"info": info, "methods": {}}

    def done(name: str, model: Any, t: float, **extra: Any) -> None:
        m = score(model, vpool)
        m["train_s"] = time.perf_counter() - t
        m.update(extra)
        res["methods"][name] = m
        print(f"[seed {seed}] {LABELS[name]}: Dice@0.5 {m['dice']:.4f}, mean Dice "
              f"{m['mean_dice']:.4f} ({m['train_s']:.0f} s)", flush=True)

    t = time.perf_counter()
    module, _ = fit(lab, None, slices, train, work / f"sup_L_{seed}", trn_patients,
                    progress=False)
    base = module.model.eval()
    u_prob = predict_probs(base, torch.stack([c.image for c in cands]))
    base_q = pseudo_quality(u_prob, [c.hidden_mask for c in cands])
    conf_q = confidence_vs_quality(u_prob, [c.hidden_mask for c in cands])
    conf_fg = confidence_vs_quality(u_prob, [c.hidden_mask for c in cands], "foreground",
                                    args.ignore_band[0], TAUS_FG)
    done("sup_L", base, t, pseudo_quality_on_U=base_q, confidence_on_U=conf_q,
         foreground_confidence_on_U=conf_fg)
    print(f"[seed {seed}]   its predictions on U as pseudo labels: Dice@0.5 on nodule slices "
          f"{base_q['pseudo_dice_pos']:.4f}, nodule-free slices with a false positive "
          f"{base_q['pseudo_fp_neg']:.2%}", flush=True)
    print(f"[seed {seed}]   mean confidence vs pseudo Dice on nodule slices: Spearman "
          f"{conf_q['spearman']:.3f}; " + ", ".join(
              f"tau {tau}: keeps {v['kept']:.0%} (pseudo Dice {v['dice_pos']:.3f})"
              for tau, v in conf_q["at"].items()), flush=True)
    print(f"[seed {seed}]   foreground confidence (p > {args.ignore_band[0]}) vs pseudo Dice: "
          f"Spearman {conf_fg['spearman']:.3f}, median {conf_fg['conf_median']:.3f}, "
          f"{conf_fg['scored']:.0%} of U predicted non-empty; " + ", ".join(
              f"tau {tau}: keeps {v['kept']:.0%} (pseudo Dice {v['dice_pos']:.3f})"
              for tau, v in conf_fg["at"].items()), flush=True)

    k = args.k_per_round or math.ceil(len(cands) / args.rounds)
    for name, method in (("semi_progressive", "progressive"), ("semi_confidence", "confidence")):
        if name not in args.methods:
            continue
        t = time.perf_counter()
        semi = SemiSettings(method=method, k_per_round=k, rounds=args.rounds,
                            epochs_per_round=args.epochs_per_round, lr=args.semi_lr,
                            batch_size=args.batch_size, final_epochs=args.final_epochs,
                            final_lr=args.final_lr, tau=args.tau,
                            confidence_over=args.confidence_over,
                            ignore_band=tuple(args.ignore_band),
                            ema_decay=args.ema_decay if method == "confidence" else None)
        # validation patients play the test patients: none of their slices may be pseudo
        # labelled (the trainer refuses otherwise)
        tr = SemiTrainer(lab, cands, vpool, slices, train, semi, work / f"{name}_{seed}",
                         trn_patients, test_patients=val_patients, progress=False)
        model = tr.run(init=base)
        rounds = round_diagnostics(tr)
        done(name, model, t, rounds=rounds, k_per_round=k, n_rounds=tr.n_rounds,
             after_rounds=score_state(tr, vpool))
        for row in rounds[1:]:
            kept = (f", kept {row['added']}/{row['considered']} (nodule slices "
                    f"{row['n_pos']}/{row['considered_pos']})" if "considered" in row else "")
            print(f"[seed {seed}]   round {row['round']}: +{row['added']} pool {row['pool']}"
                  f"{kept}; pseudo Dice on nodule slices {row['pseudo_dice_pos']:.4f}, "
                  f"FP on empty {row['pseudo_fp_neg']:.2%}; val Dice (all slices) "
                  f"{row['val_dice_all']:.4f}", flush=True)

    if "sup_LU" in args.methods:
        t = time.perf_counter()
        full = budget(base_train, len(pool), args.steps, args.decay_at)
        module, _ = fit(SlicePool(pool), None, slices, full, work / f"sup_LU_{seed}",
                        trn_patients, progress=False)
        done("sup_LU", module.model.eval(), t)
    res["info"]["seed_s"] = time.perf_counter() - t0
    return res


def score_state(trainer: Any, vpool: list[Any]) -> dict[str, float]:
    """Validation scores of the model after the last round, before the closing fine-tune
    on L (read from the round state; shows what the fine-tune changes)."""
    import torch

    from lungfuse.plugins.imaging_infnet.network import InfNet

    path = trainer.state_dir / f"model_{trainer.n_rounds:03d}.pt"
    if not path.exists():
        return {}
    obj = torch.load(path, map_location="cpu", weights_only=True)
    hp = obj["hparams"]
    m = InfNet.from_hparams(hp)
    m.load_state_dict(obj["student"])
    return score(m.eval(), vpool)


# ----------------------------------------------------------------------------- report
def setup(args: argparse.Namespace, results: list[dict[str, Any]], k: Any) -> str:
    """One paragraph: data sizes (first seed) and every training setting."""
    info = results[0]["info"]
    n_pos = results[0]["methods"]["sup_L"]["n_val_pos"]
    return (
        f"Per seed: `{args.preset}` cohort of {args.patients} patients (seed = the seed), "
        f"patient-level split {1 - args.val_fraction:.0%} / {args.val_fraction:.0%}; "
        f"e.g. seed {info['seed']}: {info['train_slices']} training slices, "
        f"L = {info['L']} labelled ({args.labelled_fraction:.0%}; {info['L_pos']} with a "
        f"nodule), U = {info['U']} unlabelled ({info['U_pos']}), {info['val_slices']} "
        f"validation slices ({n_pos}). {args.backbone} backbone, channel {args.channel}, "
        f"{args.img_size} px, batch {args.batch_size}, no multi-scale; each supervised "
        f"model {args.steps} optimiser steps (on L {info['epochs_L']} epochs, on L + U "
        f"{info['epochs_LU']}; lr {args.lr}, x0.1 after {args.decay_at:.0%}); semi "
        f"from the supervised-on-L model, {args.rounds} rounds of K = {k}, "
        f"{args.epochs_per_round} epochs per round (lr {args.semi_lr}), closing fine-tune on "
        f"L {args.final_epochs} epochs (lr {args.final_lr}); confidence: tau {args.tau} over {args.confidence_over}, "
        f"ignore band {tuple(args.ignore_band)}, EMA decay {args.ema_decay}.")


def _ms(vals: list[float]) -> str:
    vals = [v for v in vals if v == v]
    if not vals:
        return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}"


def table(results: list[dict[str, Any]], methods: list[str]) -> str:
    lines = ["| model | Dice@0.5 | mean Dice (256 thr.) | Dice@0.5, all val slices | "
             "train s / seed |", "|---|---|---|---|---|"]
    for name in methods:
        rows = [r["methods"][name] for r in results if name in r["methods"]]
        if not rows:
            continue
        lines.append(f"| {LABELS[name]} | {_ms([r['dice'] for r in rows])} | "
                     f"{_ms([r['mean_dice'] for r in rows])} | "
                     f"{_ms([r['dice_all'] for r in rows])} | "
                     f"{statistics.mean(r['train_s'] for r in rows):.0f} |")
    return "\n".join(lines)


def diagnostics(results: list[dict[str, Any]]) -> str:
    lines = ["| | pseudo Dice@0.5, nodule slices of U | nodule-free U slices with a false "
             "positive | confidence filter: kept / considered (nodule slices) | "
             "Dice@0.5 before the closing fine-tune on L |", "|---|---|---|---|---|"]
    base = [r["methods"]["sup_L"]["pseudo_quality_on_U"] for r in results]
    lines.append(f"| supervised-on-L model on all of U | "
                 f"{_ms([b['pseudo_dice_pos'] for b in base])} | "
                 f"{_ms([b['pseudo_fp_neg'] for b in base])} | | |")
    for name in ("semi_progressive", "semi_confidence"):
        rows = [r["methods"][name] for r in results if name in r["methods"]]
        if not rows:
            continue
        if name == "semi_progressive":  # every round's new slices: the whole pseudo set
            q = [_pool_quality(r["rounds"]) for r in rows]
            kept = ""
        else:  # the last round's set replaces the earlier ones
            q = [r["rounds"][-1] for r in rows]
            kept = "; ".join(f"{r['rounds'][-1]['added']}/{r['rounds'][-1]['considered']} "
                             f"({r['rounds'][-1]['n_pos']}/{r['rounds'][-1]['considered_pos']})"
                             for r in rows)
        lines.append(f"| {LABELS[name]}: final pseudo set | "
                     f"{_ms([x['pseudo_dice_pos'] for x in q])} | "
                     f"{_ms([x['pseudo_fp_neg'] for x in q])} | {kept} | "
                     f"{_ms([r['after_rounds'].get('dice', math.nan) for r in rows])} |")
    return "\n".join(lines)


def confidence_table(results: list[dict[str, Any]], key: str = "confidence_on_U",
                     taus: tuple[float, ...] = TAUS) -> str:
    """Confidence filter applied to the supervised-on-L model's predictions on U."""
    cs = [r["methods"]["sup_L"][key] for r in results if key in r["methods"]["sup_L"]]
    if not cs:
        return ""
    head = " | ".join(f"tau {t}: kept, pseudo Dice" for t in taus)
    lines = [f"| Spearman(confidence, pseudo Dice), nodule slices | median confidence | "
             f"{head} |", "|---" * (2 + len(taus)) + "|"]
    cells = [_ms([c["spearman"] for c in cs]), _ms([c["conf_median"] for c in cs])]
    for t in taus:
        cells.append(f"{_ms([c['at'][str(t)]['kept'] for c in cs])}, "
                     f"{_ms([c['at'][str(t)]['dice_pos'] for c in cs])}")
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pool_quality(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Slice-weighted pseudo quality over the progressive rounds' new slices."""
    rs = [r for r in rounds[1:] if r.get("n", 0)]
    n_pos = sum(r["n_pos"] for r in rs)
    n_neg = sum(r["n"] - r["n_pos"] for r in rs)
    dice = sum(r["pseudo_dice_pos"] * r["n_pos"] for r in rs if r["n_pos"]) / max(n_pos, 1)
    fp = sum(r["pseudo_fp_neg"] * (r["n"] - r["n_pos"]) for r in rs
             if r["n"] > r["n_pos"]) / max(n_neg, 1)
    return {"pseudo_dice_pos": dice if n_pos else math.nan,
            "pseudo_fp_neg": fp if n_neg else math.nan}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cmd = "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]) \
        if argv is None else "python bench/semi_supervised.py " + " ".join(argv)
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
               f"({torch.get_num_threads()} threads), Python {platform.python_version()}")
    load0 = os.getloadavg()
    print(f"command: {cmd}\nmachine: {machine}\nload average before: {load0[0]:.2f}",
          flush=True)
    t0 = time.perf_counter()
    tmp = None
    if args.workdir is None:
        tmp = Path(tempfile.mkdtemp(prefix="lungfuse-semi-bench-"))
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
    methods = [m for m in METHODS if m in args.methods]
    k = results[0]["methods"].get("semi_progressive", results[0]["methods"].get(
        "semi_confidence", {})).get("k_per_round", "n/a")
    md = "\n".join([
        "# Semi-supervised Inf-Net on synthetic CT",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine}; load average {load0[0]:.2f} before, {load1[0]:.2f} after.  ",
        f"Wall time: {wall / 60:.1f} min for {len(args.seeds)} seed(s) "
        f"({', '.join(str(s) for s in args.seeds)}).",
        "",
        setup(args, results, k),
        "",
        "Validation nodule slices, mean ± sd over seeds:",
        "",
        table(results, methods),
        "",
        "Diagnostics (mean ± sd over seeds; kept counts per seed):",
        "",
        diagnostics(results),
        "",
        "The confidence filter on the supervised-on-L model's predictions of U (slice "
        "confidence = mean over pixels of max(p, 1 - p); kept = share of U; pseudo Dice = "
        "Dice@0.5 of the kept nodule slices against their hidden masks):",
        "",
        confidence_table(results),
        "",
        "The same over the foreground only (`confidence_over: foreground`: the mean of "
        f"max(p, 1 - p) over the pixels with p > {args.ignore_band[0]}; a slice predicted "
        "empty is never kept):",
        "",
        confidence_table(results, "foreground_confidence_on_U", TAUS_FG),
        "",
    ])
    out_md, out_json = args.out.with_suffix(".md"), args.out.with_suffix(".json")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(md, encoding="utf-8")
    out_json.write_text(json.dumps({"command": cmd, "machine": machine, "wall_s": wall,
                                    "load_before": load0[0], "load_after": load1[0],
                                    "args": {k: str(v) if isinstance(v, Path) else v
                                             for k, v in vars(args).items()},
                                    "results": results}, indent=1, default=float),
                        encoding="utf-8")
    print("\n" + md)
    print(f"wall time {wall:.0f} s; wrote {out_md} and {out_json}")


if __name__ == "__main__":
    main()
