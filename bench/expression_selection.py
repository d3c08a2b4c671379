"""Expression alone: gene-set scores vs top-variance genes (prints AUROCs; never asserts).

On a synthetic cohort (genomics only), 5-fold CV with the same splits and seed for each
variant: expression summarised by `lung_signatures.gmt` (four set scores) against the
`--top-n` highest-variance genes, plus mutations alone and mutations + set scores.

    .venv/bin/python bench/expression_selection.py --patients 150
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from fusion import config, modalities

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top-n", type=int, default=50)
    ap.add_argument("--bootstrap", type=int, default=200)
    args = ap.parse_args()
    os.environ.setdefault("LUNGFUSE_NO_PROGRESS", "1")
    from importlib.resources import files

    from lungfuse.core.run import run_experiment
    from lungfuse.core.synth import generate

    with tempfile.TemporaryDirectory(prefix="lungfuse-bench-") as tmp:
        work = Path(tmp)
        data = work / "cohort"
        generate(data, preset="demo", seed=args.seed, patients=args.patients, progress=False,
                 with_ct=False)
        mut, top = modalities(data)
        top["top_n"] = args.top_n
        gmt = {k: v for k, v in top.items() if k != "top_n"}
        gmt.update(selection="gmt", gmt=str(files("lungfuse.plugins.genomics") / "data" /
                                            "lung_signatures.gmt"))
        for name, mods in ((f"expression, top {args.top_n} variance genes", [top]),
                           ("expression, lung_signatures.gmt scores", [gmt]),
                           ("mutations", [mut]), ("mutations + gene-set scores", [mut, gmt])):
            res = run_experiment(config(data, work / "runs", mods, "gated", 5, 60,
                                        args.bootstrap), progress=False)
            a = res.metrics["overall"]["auroc"]
            print(f"{name:42s} AUROC {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]",
                  flush=True)


if __name__ == "__main__":
    main()
