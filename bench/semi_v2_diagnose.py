"""Why the semi-supervised methods of ``bench/semi_supervised_v2.py`` lose (issue 16).

Reads a work folder that ``semi_supervised_v2.py --workdir W`` left (its cohort
``W/cohort_S`` and supervised-on-L model ``W/sup_L_S_B/infnet.pt``), rebuilds L, U and the
validation crops as that bench does, and prints:

1. the supervised-on-L model's validation Dice and its masks of U against their hidden
   truth: pseudo Dice on U's nodule crops, false-positive crops, and per confidence
   threshold the share of confident pixels, of confident nodule pixels, and of true
   nodule pixels that are confident background (what a per-pixel threshold keeps);
2. with ``--steps N``, short fixmatch phases from that model for each ``--variants``
   entry (``control``: lambda_u 0; ``structure``/``bce``: the unlabelled loss), each
   scored as student and EMA teacher on the validation crops;
3. with ``--by-type``, which nodules of U the supervised-on-L model misses: U's nodule
   crops binned by the nodule's mean intensity in the crop (the synthetic nodules are
   ground-glass, part-solid or solid; the window puts them low, middle, high) and by its
   area, each bin with how many nodule crops of L fall in it, the supervised-on-L
   model's Dice@0.5 and the ceiling's (``W/sup_all_S/infnet.pt``) on them.

Usage::

    python bench/semi_v2_diagnose.py --workdir /tmp/semi/s0                 # part 1 only
    python bench/semi_v2_diagnose.py --workdir /tmp/semi/s0 --steps 60 --rampup 20 \\
        --variants control bce
    python bench/semi_v2_diagnose.py --workdir /tmp/semi/s0 --by-type --budget 0.1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import semi_supervised as v1  # noqa: E402
import semi_supervised_v2 as v2  # noqa: E402


def load(work: Path, seed: int, budget: float, bench: argparse.Namespace) -> dict[str, Any]:
    """Cases, L, U (with hidden masks), validation pool and the supervised-on-L model."""
    import pandas as pd

    from lungfuse.plugins.imaging_infnet import ctio
    from lungfuse.plugins.imaging_infnet.candidates import read_candidates
    from lungfuse.plugins.imaging_infnet.config import SliceSettings
    from lungfuse.plugins.imaging_infnet.dataset import SlicePool, build_pool
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint

    root = work / f"cohort_{seed}"
    clin = pd.read_parquet(root / "clinical.parquet", columns=["patient_id", "seriesuid"])
    pid = {str(u): str(p) for p, u in zip(clin.patient_id, clin.seriesuid, strict=True)
           if u is not None and u == u}
    vols = ctio.find_volumes(root / "ct")
    ann = ctio.read_annotations(root / "ct" / "annotations.csv")
    cases = ctio.load_cases(sorted(vols.items()), ann, root / "ct" / "masks", patients=pid)
    trn, val = v1.split_patients(cases, bench.val_fraction, seed)
    slices = SliceSettings(img_size=bench.img_size, mode="crop", crop_mm=bench.crop_mm)
    pools = {c.uid: build_pool([c], slices, 0.5, seed) for c in trn}
    vpool = build_pool(val, slices, 0.5, seed)
    points = read_candidates(root / "ct" / "candidates.csv", {c.uid for c in cases})
    lab_scans = v2.labelled_scans(trn, pools, budget, seed)
    lab = SlicePool(it for c in lab_scans for it in pools[c.uid])
    unl = [c for c in trn if c.uid not in {s.uid for s in lab_scans}]
    cands = v2.unlabelled_pool(unl, points, slices, bench.neighbours)
    sup, _ = load_checkpoint(work / f"sup_L_{seed}_{budget}" / "infnet.pt")
    # L as the v2 bench trains it by default: with the labelled scans' candidate crops
    from lungfuse.plugins.imaging_infnet.semi import labelled_at_points

    with_cands = SlicePool(lab)
    with_cands.extend(labelled_at_points(lab_scans, points, slices, bench.neighbours))
    return {"lab": lab, "lab_with_candidates": with_cands, "cands": cands, "vpool": vpool,
            "sup": sup}


def teacher_report(d: dict[str, Any], taus: list[float]) -> None:
    """Part 1: the supervised-on-L model on validation and on U."""
    import torch

    from lungfuse.plugins.imaging_infnet.semi import predict_probs

    print("supervised on L, validation:", v1.score(d["sup"], d["vpool"]), flush=True)
    cands = d["cands"]
    p = predict_probs(d["sup"], torch.stack([c.image for c in cands]))
    truth = torch.stack([c.hidden_mask for c in cands]).float() > 0.5
    q = v1.pseudo_quality(p, [c.hidden_mask for c in cands])
    pos = truth.flatten(1).any(1)
    fg = p >= 0.5
    print(f"its masks of U: pseudo Dice@0.5 on nodule crops {q['pseudo_dice_pos']:.3f}, "
          f"nodule-free crops with a false positive {q['pseudo_fp_neg']:.1%}, nodule crops "
          f"predicted empty {float((~fg[pos].flatten(1).any(1)).float().mean()):.1%}; "
          f"nodule pixels: {float(truth.float().mean()):.3%} of U, predicted "
          f"{float(fg.float().mean()):.3%}")
    s = truth.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    off = [((yy[t].float().mean() - s / 2) ** 2 + (xx[t].float().mean() - s / 2) ** 2) ** 0.5
           for t in truth[pos]]
    print(f"U nodule crops: median nodule-centroid offset from the crop centre "
          f"{statistics.median(float(o) for o in off):.1f} px of {s}")
    for tau in taus:
        conf = torch.maximum(p, 1 - p) >= tau
        n_t = truth.sum().clamp(min=1)
        print(f"tau {tau}: confident pixels {float(conf.float().mean()):.1%}, of them nodule "
              f"{float((fg & conf).sum() / conf.sum().clamp(min=1)):.3%}; true nodule pixels "
              f"confident nodule {float((fg & conf & truth).sum() / n_t):.1%}, confident "
              f"background {float((~fg & conf & truth).sum() / n_t):.1%}; precision of "
              f"confident nodule pixels "
              f"{float((fg & conf & truth).sum() / (fg & conf).sum().clamp(min=1)):.2f}",
              flush=True)


def short_phases(d: dict[str, Any], args: argparse.Namespace, bench: argparse.Namespace
                 ) -> None:
    """Part 2: ``args.steps`` fixmatch steps per variant from the supervised-on-L model."""
    import tempfile

    import torch

    from lungfuse.plugins.imaging_infnet.config import SemiSettings, TrainSettings
    from lungfuse.plugins.imaging_infnet.fixmatch import OnlineTrainer
    from lungfuse.plugins.imaging_infnet.semi import _clone, predict_probs

    train = TrainSettings(backbone=bench.backbone, channel=bench.channel,
                          batch_size=bench.batch_size, lr=bench.lr, multiscale=[1.0],
                          val_fraction=0.0, seed=args.seed)
    x = torch.stack([c.image for c in d["cands"]])
    for v in args.variants:
        semi = SemiSettings(method="fixmatch", batch_size=bench.batch_size,
                            ema_decay=bench.fm_ema, steps=args.steps, lr=bench.fm_lr,
                            tau=bench.fm_tau, lambda_u=0.0 if v == "control" else bench.fm_lambda,
                            rampup_steps=args.rampup, feature_dropout=bench.fm_dropout,
                            cutmix=bench.fm_cutmix, final_epochs=0,
                            unlabelled_loss="structure" if v == "structure" else "bce",
                            checkpoint_every=10**6)
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            ot = OnlineTrainer(d["lab"], d["cands"], train, semi, Path(tmp) / "online.pt", v)
            st, te = ot.run(_clone(d["sup"]), _clone(d["sup"]))
        dt = time.perf_counter() - t
        s_, t_ = v1.score(st.eval(), d["vpool"]), v1.score(te.eval(), d["vpool"])
        pu = predict_probs(st, x)
        q = v1.pseudo_quality(pu, [c.hidden_mask for c in d["cands"]])
        m = ot.stats.mean()
        print(f"{v}: {args.steps} steps in {dt:.0f} s; validation Dice@0.5 student "
              f"{s_['dice']:.4f}, EMA teacher {t_['dice']:.4f}; mean losses labelled "
              f"{m['loss_x']:.3f}, unlabelled {m['loss_u']:.3f}; confident {m['confident']:.1%}"
              f" (nodule {m['positive']:.3%}); student on U: pseudo Dice "
              f"{q['pseudo_dice_pos']:.3f}, false-positive crops {q['pseudo_fp_neg']:.1%}, "
              f"nodule pixels {float((pu >= 0.5).float().mean()):.3%}", flush=True)


#: --by-type bins: mean intensity of the nodule's pixels in the crop (0-1 after the
#: window) and nodule area in crop pixels
INTENSITY_BINS = ((0.0, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 1.01))
AREA_BINS = ((0, 20), (20, 60), (60, 150), (150, 400), (400, 10**6))


def by_type(d: dict[str, Any], work: Path, seed: int, budget: float,
            bench: argparse.Namespace) -> None:
    """Part 3: per kind of nodule, L's examples and both models' Dice on U's crops."""
    import torch

    from lungfuse.plugins.imaging_infnet.metrics import segmentation_metrics
    from lungfuse.plugins.imaging_infnet.semi import predict_probs
    from lungfuse.plugins.imaging_infnet.train import load_checkpoint

    ceiling, _ = load_checkpoint(work / f"sup_all_{seed}" / "infnet.pt")
    u = [c for c in d["cands"] if bool((c.hidden_mask > 0.5).any())]
    lab = [it for it in d["lab_with_candidates"] if bool((it.mask > 0.5).any())]
    if not u or not lab:
        print("by type: no nodule crops in U or L")
        return
    xu = torch.stack([c.image for c in u]).float()
    tu = torch.stack([c.hidden_mask for c in u]).float() > 0.5
    tl = torch.stack([it.mask for it in lab]).float() > 0.5
    xl = torch.stack([it.image for it in lab]).float()

    def dice(p: Any) -> Any:  # Dice@0.5 per crop, as segment evaluate scores it
        return segmentation_metrics(p, tu, n_thresholds=2)["dice"]

    d_l, d_c = dice(predict_probs(d["sup"], xu)), dice(predict_probs(ceiling, xu))
    # channel 1 is the slice itself (channels: z - 1, z, z + 1)
    i_u = torch.tensor([float(xu[i, 1][tu[i]].mean()) for i in range(len(u))])
    i_l = torch.tensor([float(xl[i, 1][tl[i]].mean()) for i in range(len(lab))])
    a_u, a_l = tu.flatten(1).sum(1).float(), tl.flatten(1).sum(1).float()
    print(f"\nseed {seed}, budget {budget:.0%}: which of U's {len(u)} nodule crops the "
          f"supervised-on-L model misses (L: {len(lab)} nodule crops)\n")
    print("| U's nodule crops by | bin | in U | in L | supervised on L: Dice@0.5 | "
          "ceiling: Dice@0.5 |\n|---|---|---|---|---|---|")
    for name, vu, vl, bins in (("mean intensity", i_u, i_l, INTENSITY_BINS),
                               ("area (px)", a_u, a_l, AREA_BINS)):
        for lo, hi in bins:
            su, sl = (vu >= lo) & (vu < hi), (vl >= lo) & (vl < hi)
            if not bool(su.any()):
                continue
            top = f"{hi:g}" if hi < 10**6 else "+"
            print(f"| {name} | {lo:g}-{top} | {int(su.sum())} | {int(sl.sum())} | "
                  f"{float(d_l[su].mean()):.3f} | {float(d_c[su].mean()):.3f} |")
    print(f"| all | | {len(u)} | {len(lab)} | {float(d_l.mean()):.3f} | "
          f"{float(d_c.mean()):.3f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True,
                    help="a semi_supervised_v2.py --workdir with cohort_S and sup_L_S_B")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--taus", type=float, nargs="+", default=[0.95, 0.9, 0.8, 0.7])
    ap.add_argument("--steps", type=int, default=0, help="fixmatch steps per variant (0: none)")
    ap.add_argument("--rampup", type=int, default=20)
    ap.add_argument("--variants", nargs="+", default=["control", "bce"],
                    choices=["control", "structure", "bce"])
    ap.add_argument("--by-type", action="store_true",
                    help="part 3: U's nodules by intensity and size, L's examples of each, "
                    "and the Dice of supervised-on-L and of the ceiling on them")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    bench = v2.parse_args(["--seeds", str(args.seed), "--budget", str(args.budget)])
    t0 = time.perf_counter()
    d = load(args.workdir, args.seed, args.budget, bench)
    print(f"L {len(d['lab'])} crops, U {len(d['cands'])}, validation {len(d['vpool'])} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.by_type:
        by_type(d, args.workdir, args.seed, args.budget, bench)
        return
    teacher_report(d, args.taus)
    if args.steps:
        short_phases(d, args, bench)


if __name__ == "__main__":
    main()
