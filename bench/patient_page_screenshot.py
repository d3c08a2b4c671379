"""Regenerate docs/img/patient_page.png: a scored patient's page, in headless Chromium.

The page is the one ``lungfuse demo`` writes for its first new patient (the sentence that
leads the page, the fused risk, what drove it, the segmented nodule, and the Brock (PanCan)
and Lung-RADS section). By default a reduced demo runs first (the sizes of
tests/test_demo.py, a few minutes on 2 CPU cores); ``--demo DIR`` takes an existing demo
folder instead (``make demo`` writes ``demo-output``), ``--page FILE`` any page.

    .venv/bin/python bench/patient_page_screenshot.py                  # reduced demo
    .venv/bin/python bench/patient_page_screenshot.py --demo demo-output

Prints where the page and the PNG are and how long each part took. Not a test: it needs
Chromium (``apt-get install chromium``) and writes into docs/.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("error: no Chromium found; install it (apt-get install chromium) and rerun")


def _first_page(demo: Path) -> Path:
    import json

    info = json.loads((demo / "demo.json").read_text(encoding="utf-8"))
    pages = [demo / "scores" / s["page"] for s in info["summary"].get("scores", [])
             if s.get("page")]
    if not pages:
        sys.exit(f"error: {demo}/demo.json lists no patient page; run the demo again")
    return pages[0]


def _reduced_demo(out: Path) -> Path:
    from lungfuse.demo import DemoSettings, run_demo

    s = DemoSettings(patients=32, pretrain_scans=4, unlabelled_scans=2, folds=2,
                     heads=("gated",), seg_epochs=1, seg_channel=8, img_size=64, max_epochs=3,
                     patience=2, bootstrap=20, preset="tiny")
    run_demo(out, s, echo=print, progress=False)
    return out


def screenshot(page: Path, png: Path, width: int = 1000, height: int = 6000) -> None:
    """Render ``page`` in headless Chromium and write ``png``: the whole page (a window
    ``width`` x ``height`` CSS pixels, the blank space below the page cut off), from the
    leading sentence to the Brock (PanCan) and Lung-RADS section."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "--virtual-time-budget=5000", f"--screenshot={png}", page.resolve().as_uri()],
            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    if res.returncode != 0 or not png.is_file():
        sys.exit(f"error: Chromium did not write {png}: {res.stderr[-400:]}")
    _trim(png)


def _trim(png: Path, margin: int = 24) -> None:
    """Cut the blank space below the page's end (the window is taller than most pages)."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"))
        rows = np.flatnonzero((rgb < 250).any(axis=(1, 2)))
        if rows.size and rows[-1] + margin < rgb.shape[0]:
            im.crop((0, 0, rgb.shape[1], int(rows[-1]) + margin)).save(png, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, help="an existing demo folder (make demo)")
    ap.add_argument("--page", type=Path, help="a patient page to screenshot")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "patient_page.png")
    ap.add_argument("--keep", type=Path, help="run the reduced demo here (default: a "
                    "temporary folder, removed afterwards)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.page:
            page = args.page
        elif args.demo:
            page = _first_page(args.demo)
        else:
            page = _first_page(_reduced_demo(args.keep or Path(tmp) / "demo"))
        t1 = time.perf_counter()
        screenshot(page, args.out)
        t2 = time.perf_counter()
    print(f"page: {page}")
    print(f"screenshot: {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    print(f"time: page {t1 - t0:.1f} s, screenshot {t2 - t1:.1f} s")


if __name__ == "__main__":
    main()
