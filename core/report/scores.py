"""``report.html`` of a scoring folder: an index of its patients and their pages."""

from __future__ import annotations

from pathlib import Path

from lungfuse.core.report.html import Section, write_report
from lungfuse.core.report.html import read_json as _read_json


def render_scores(folder: Path) -> Path:
    """``report.html`` of a scoring folder: a table of patients linking to their pages."""
    import html

    info = _read_json(folder / "scores.json")
    rows = []
    for p in info.get("patients", []):
        page = p.get("page")
        link = (f"<a href='{html.escape(page)}'>{html.escape(p['patient_id'])}</a>"
                if page else html.escape(p["patient_id"]))
        risk, unc = p.get("risk"), p.get("uncertainty")
        if p.get("status") == "error":  # given data that could not be used: never "no data"
            rows.append(f"<tr><td>{link}</td><td colspan='4'><b>not scored</b>: "
                        f"{html.escape(str(p.get('error') or 'see its page'))}</td></tr>")
            continue
        rows.append(f"<tr><td>{link}</td><td>{'–' if risk is None else f'{risk:.3f}'}</td>"
                    f"<td>{'–' if unc is None else f'{unc:.3f}'}"
                    f"</td><td>{html.escape(', '.join(p.get('present', [])) or 'none')}</td>"
                    f"<td>{html.escape(', '.join(p.get('missing', [])) or '–')}</td></tr>")
    table = ("<table><tr><th>patient</th><th>risk</th><th>uncertainty (sd over folds)</th>"
             "<th>modalities used</th><th>missing</th></tr>" + "".join(rows) + "</table>")
    sections = [Section("Patients", text=[f"Scored with the fold models of {info.get('run')}."],
                        html=table)]
    return write_report(folder / "report.html", f"lungfuse scores: {folder.name}", sections,
                        subtitle=info.get("what", ""))
