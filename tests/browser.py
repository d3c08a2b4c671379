"""Render an HTML file in headless Chromium and count the images that loaded."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var d = document.createElement('div'); d.id = 'lf-probe';
  d.textContent = 'LFPROBE images=' + imgs.length + ' loaded=' + ok;
  document.body.appendChild(d);
});
</script>"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def render_counts(html_path: Path, timeout: float = 60.0) -> tuple[int, int]:
    """(images, loaded) after the page's load event, measured in headless Chromium."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("no chromium")
    text = html_path.read_text(encoding="utf-8")
    probe_page = html_path.with_name(html_path.stem + ".probe.html")
    probe_page.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
             probe_page.as_uri()],
            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)
    probe_page.unlink(missing_ok=True)
    m = re.search(r"LFPROBE images=(\d+) loaded=(\d+)", res.stdout)
    if not m:
        raise AssertionError(f"page did not finish loading in Chromium: {res.stderr[-500:]}")
    return int(m.group(1)), int(m.group(2))
