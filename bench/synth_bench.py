"""Time and peak memory of `lungfuse synth` per preset (each in a fresh process).

    .venv/bin/python bench/synth_bench.py [--presets tiny demo bench] [--long]

Prints a table and writes bench/results/synth_bench.md. Targets (issue 3): tiny < 5 s,
demo < 1 min; bench writes the 10,000 x 20,000 expression table in row groups, so its
peak memory stays far below the table's in-memory size (800 MB as float32).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from lungfuse.core.synth import generate
out, preset, long = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
t = time.perf_counter()
r = generate(out, preset=preset, seed=0, long=long, progress=False)
dt = time.perf_counter() - t
size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
print(json.dumps({"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "bytes": size, "patients": r.n_patients, "series": r.n_series,
                  "nodules": r.n_nodules, "mutations": r.n_mutations,
                  "expression_samples": r.n_expression_samples}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["tiny", "demo", "bench"])
    ap.add_argument("--long", action="store_true", help="Long expression layout.")
    args = ap.parse_args()
    rows = []
    for preset in args.presets:
        with tempfile.TemporaryDirectory() as d:
            out = subprocess.run([sys.executable, "-c", CHILD, str(Path(d) / "c"), preset,
                                  "1" if args.long else "0"], check=True, capture_output=True,
                                 text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
        rows.append((preset, r))
        print(preset, r, flush=True)
    lines = [f"# lungfuse synth timings ({platform.machine()}, {platform.python_version()}, "
             f"{'long' if args.long else 'wide'} expression)", "",
             "| preset | patients | CT series | nodules | mutation calls | expression samples "
             "| seconds | peak RSS (MB) | size on disk (MB) |", "|---|---|---|---|---|---|---|---|---|"]
    for p, r in rows:
        lines.append(f"| {p} | {r['patients']} | {r['series']} | {r['nodules']} | "
                     f"{r['mutations']} | {r['expression_samples']} | {r['seconds']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['bytes'] / 1e6:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out_md = Path(__file__).parent / "results" / "synth_bench.md"
    out_md.parent.mkdir(exist_ok=True)
    out_md.write_text(text)


if __name__ == "__main__":
    main()
