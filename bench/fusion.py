"""Fusion benchmark (prints figures, writes ``bench/results/fusion.md``; never asserts).

1. **Fused vs single modality** on a synthetic cohort (default: the ``demo`` preset,
   genomics only unless an Inf-Net modality is configured): the same 5-fold splits and
   seed for every variant, features prepared once per (modality, fold) and shared
   through the feature cache. Fused AUROC vs the best single modality's, as a paired
   bootstrap difference on the same held-out patients with its 95% CI.
2. **Training speed**: a fusion head (+ modality encoders) on 1,000 patients × 5 folds
   from cached features: the first run prepares and caches features, the second trains
   from the cache; we report the second run's wall time and the summed Lightning fit time.

    .venv/bin/python bench/fusion.py                 # demo cohort + 1,000-patient timing
    .venv/bin/python bench/fusion.py --patients 300  # a larger cohort for part 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def modalities(data: Path) -> list[dict]:
    return [
        {"kind": "mutations", "name": "mutations", "path": str(data / "omics/mutations.parquet"),
         "sequenced_samples": str(data / "omics/sequenced_samples.txt"), "embedding_dim": 16},
        {"kind": "expression", "name": "expression",
         "path": str(data / "omics/expression.parquet"), "selection": "top_variance",
         "top_n": 50, "embedding_dim": 16},
    ]


def config(data: Path, out: Path, mods: list[dict], fusion: str, folds: int, epochs: int,
           bootstrap: int) -> dict:
    return {
        "name": "bench-" + "_".join(m["name"] for m in mods) + f"-{fusion}",
        "cohort": {"clinical": str(data / "clinical.parquet")},
        "task": {"kind": "binary"},
        "modalities": mods,
        "fusion": {"kind": fusion, "hidden_dim": 32, "modality_dropout": 0.2},
        "training": {"max_epochs": epochs, "batch_size": 64, "patience": 8, "lr": 1e-3},
        "evaluation": {"folds": folds, "bootstrap": bootstrap, "calibration": "platt"},
        "output_dir": str(out),
    }


def part1(args: argparse.Namespace, work: Path) -> dict:
    from sklearn.metrics import roc_auc_score

    from lungfuse.core.metrics import paired_bootstrap_difference
    from lungfuse.core.run import run_experiment
    from lungfuse.core.synth import generate

    data = work / "cohort"
    generate(data, preset=args.preset, seed=args.seed, progress=False,
             **({"patients": args.patients} if args.patients else {}), with_ct=False)
    mods = modalities(data)
    cache = work / "cache"
    rows, preds = [], {}
    variants = [[m] for m in mods] + [mods]
    for mset in variants:
        for fusion in (["concat"] if len(mset) == 1 else args.heads):
            t0 = time.perf_counter()
            res = run_experiment(config(data, work / "runs", mset, fusion, args.folds,
                                        args.epochs, args.bootstrap),
                                 cache_dir=cache, progress=False)
            name = "+".join(m["name"] for m in mset) + ("" if len(mset) == 1 else f" ({fusion})")
            p = res.predictions.sort_values("patient_id").reset_index(drop=True)
            preds[name] = p
            a = res.metrics["overall"]["auroc"]
            rows.append((name, a["value"], a["ci_low"], a["ci_high"],
                         res.metrics["overall"]["brier"]["value"], time.perf_counter() - t0))
            print(f"  {name:38s} AUROC {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"
                  f"  ({time.perf_counter() - t0:.1f}s)", flush=True)
    singles = [r for r in rows if "+" not in r[0]]
    best = max(singles, key=lambda r: r[1])
    fused = [r for r in rows if "+" in r[0]]
    comps = []
    for f in fused:
        pa, pb = preds[f[0]], preds[best[0]]
        assert (pa["patient_id"].to_numpy() == pb["patient_id"].to_numpy()).all()
        d = paired_bootstrap_difference(roc_auc_score, pa["y"].to_numpy(),
                                        pa["prob_calibrated"].to_numpy(),
                                        pb["prob_calibrated"].to_numpy(),
                                        n=args.bootstrap, seed=0)
        comps.append((f[0], best[0], d))
        print(f"  {f[0]} - {best[0]}: ΔAUROC {d['difference']:+.3f} "
              f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], P(Δ<=0) {d['p_not_better']:.3f}")
    n = len(next(iter(preds.values())))
    pos = int(next(iter(preds.values()))["y"].sum())
    return {"rows": rows, "comparisons": comps, "patients": n, "positives": pos}


def part2(args: argparse.Namespace, work: Path) -> dict:
    from lungfuse.core.run import run_experiment
    from lungfuse.core.synth import generate

    data = work / "cohort1000"
    generate(data, preset="demo", seed=args.seed, progress=False, patients=args.speed_patients,
             with_ct=False)
    cache = work / "cache1000"
    cfg = config(data, work / "runs1000", modalities(data), args.speed_head, 5,
                 args.speed_epochs, 0)
    t0 = time.perf_counter()
    run_experiment(cfg, cache_dir=cache, progress=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = run_experiment(cfg, cache_dir=cache, progress=False)
    second = time.perf_counter() - t0
    run = json.loads((res.run_dir / "run.json").read_text(encoding="utf-8"))
    fit = sum(f["fit_seconds"] for f in run["folds"])
    epochs = [f["epochs"] for f in run["folds"]]
    print(f"  {args.speed_patients} patients x 5 folds, head {args.speed_head}: first run "
          f"(prepare + cache + train) {first:.1f}s; from cached features {second:.1f}s "
          f"(Lightning fit {fit:.1f}s, epochs {epochs})")
    return {"first": first, "second": second, "fit": fit, "epochs": epochs,
            "auroc": res.metrics["overall"]["auroc"]["value"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--patients", type=int, default=None, help="Part 1 cohort size.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--heads", nargs="+", default=["concat", "gated", "kronecker",
                                                   "transformer", "late"])
    ap.add_argument("--speed-patients", type=int, default=1000)
    ap.add_argument("--speed-head", default="gated")
    ap.add_argument("--speed-epochs", type=int, default=30)
    ap.add_argument("--skip-part1", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fusion.md")
    args = ap.parse_args()
    os.environ.setdefault("LUNGFUSE_NO_PROGRESS", "1")
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    env = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
           f"{torch.__version__} ({torch.get_num_threads()} threads), Python "
           f"{sys.version.split()[0]}; load average at start {load:.1f} (machine shared with "
           "other engineers' jobs: timings are pessimistic and noisy)")
    print(env)
    with tempfile.TemporaryDirectory(prefix="lungfuse-bench-") as tmp:
        work = Path(tmp)
        r1 = None
        if not args.skip_part1:
            print(f"part 1: fused vs single modality ({args.preset} cohort)")
            r1 = part1(args, work)
        print("part 2: training speed from cached features")
        r2 = part2(args, work)
    lines = ["# Fusion benchmark", "", f"`python bench/fusion.py {' '.join(sys.argv[1:])}`".strip(),
             "", f"Machine: {env}.", ""]
    if r1:
        lines += [f"## Fused vs best single modality ({args.preset} cohort, {r1['patients']} "
                  f"patients, {r1['positives']} malignant; {args.folds}-fold CV, seed {args.seed}, "
                  "genomics modalities; CT not included)", "",
                  "| variant | AUROC | 95% CI | Brier | seconds |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {a:.3f} | [{lo:.3f}, {hi:.3f}] | {b:.3f} | {s:.1f} |"
                  for n, a, lo, hi, b, s in r1["rows"]]
        lines += ["", "Paired bootstrap (same held-out patients, "
                  f"{args.bootstrap} resamples) of fused minus best single modality:", "",
                  "| fused | vs | ΔAUROC | 95% CI | P(Δ ≤ 0) |", "|---|---|---|---|---|"]
        lines += [f"| {a} | {b} | {d['difference']:+.3f} | [{d['ci_low']:+.3f}, "
                  f"{d['ci_high']:+.3f}] | {d['p_not_better']:.3f} |" for a, b, d in r1["comparisons"]]
    lines += ["", f"## Training from cached features ({args.speed_patients} patients × 5 folds, "
              f"head `{args.speed_head}`, max {args.speed_epochs} epochs, early stopping)", "",
              f"- first run (prepare features, cache, train): {r2['first']:.1f} s",
              f"- second run, features from the cache: **{r2['second']:.1f} s** wall "
              f"(Lightning fit {r2['fit']:.1f} s; epochs per fold {r2['epochs']}; "
              f"AUROC {r2['auroc']:.3f}); target < 60 s", ""]
    from lungfuse.core.atomic import write_text

    write_text(args.out, "\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
