"""Self-contained HTML reports: figures embedded as PNG data URIs, no network needed.

:func:`render_html` lays out sections of text, tables and figures; every assembled
report (run, ablation, scores) is built from :class:`Section` objects and written with
:func:`write_report`.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1100px;color:#1d2430;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;border-bottom:1px solid #d8dde6;
padding-bottom:.2rem;margin-top:2rem}.sub{color:#5b6577;margin-top:0}
table{border-collapse:collapse;font-size:.9rem;margin:.6rem 0}th,td{border:1px solid #d8dde6;
padding:.25rem .55rem;text-align:right}th{background:#f2f4f8}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.5rem 1rem .5rem 0;vertical-align:top}
figure img{max-width:520px;width:100%;border:1px solid #e5e8ee}
figcaption{font-size:.85rem;color:#5b6577;max-width:520px}
pre{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.8rem;border-radius:4px}
.note{background:#fff8e1;border-left:4px solid #f2b600;padding:.5rem .8rem}
.risk{font-size:2.2rem;font-weight:600}
"""


@dataclass
class Section:
    """A report section: a heading, optional paragraphs/HTML, tables and figures."""

    title: str
    text: Sequence[str] = ()
    tables: Sequence[Any] = ()  # pandas DataFrames
    figures: Sequence[tuple[Any, str]] = ()  # (matplotlib Figure or PNG bytes, caption)
    html: str = ""
    pre: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _img(data: Any, caption: str) -> str:
    png = data if isinstance(data, bytes | bytearray) else figure_png(data)
    b64 = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">{cap}</figure>'


def _table(df: Any) -> str:
    return df.to_html(index=False, border=0, float_format=lambda v: f"{v:.3f}", na_rep="–",
                      escape=True)


def render_html(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """A complete, self-contained HTML page."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(f"<p class='sub'>{html.escape(subtitle)}</p>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts.extend(f"<p>{html.escape(t)}</p>" for t in s.text)
        if s.html:
            parts.append(s.html)
        parts.extend(_table(t) for t in s.tables)
        parts.extend(_img(f, c) for f, c in s.figures)
        if s.pre:
            parts.append(f"<pre>{html.escape(s.pre)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, title: str, sections: Sequence[Section], subtitle: str = "") -> Path:
    from lungfuse.core.atomic import write_text

    return write_text(path, render_html(title, sections, subtitle))



def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
