"""HTML reports are self-contained and every figure loads in a real browser."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from browser import chromium, render_counts

from lungfuse.core.report import figures as F
from lungfuse.core.report import html as H


def _sample_report(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 80), 0, 1)
    img = rng.normal(-800, 50, (64, 64))
    mask = np.zeros((64, 64))
    mask[20:30, 25:35] = 1
    sections = [
        H.Section("Discrimination", text=["held-out patients"],
                  figures=[(F.roc_figure({"fused": (y, p)}), "ROC"),
                           (F.calibration_figure({"fused": (y, p)}), "calibration")]),
        H.Section("Survival", figures=[(F.km_figure(rng.uniform(1, 50, 80), rng.integers(0, 2, 80),
                                                    np.where(p > 0.5, "high", "low")), "KM")]),
        H.Section("Ablation", tables=[pd.DataFrame({"variant": ["a", "b"], "auroc": [0.7, 0.8]})],
                  figures=[(F.interval_bars_figure(["a", "b"], [0.7, 0.8], [0.6, 0.7], [0.8, 0.9]),
                            "bars"),
                           (F.overlay_figure(img, mask, mask), "segmentation <overlay>")]),
    ]
    return H.write_report(tmp_path / "report.html", "Run <demo>", sections, subtitle="seed 0")


def test_report_is_self_contained(tmp_path):
    path = _sample_report(tmp_path)
    text = path.read_text(encoding="utf-8")
    assert text.count("<img") == 5
    assert len(re.findall(r'src="data:image/png;base64,', text)) == 5
    assert not re.search(r'(src|href)="(https?:)?//', text), "report references the network"
    assert "Run &lt;demo&gt;" in text  # titles are escaped


@pytest.mark.skipif(chromium() is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_report_figures_load_in_headless_chromium(tmp_path):
    path = _sample_report(tmp_path)
    images, loaded = render_counts(path)
    assert images == 5 and loaded == 5
