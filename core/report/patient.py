"""The patient pages of a scoring folder: one self-contained HTML page per patient.

A scored patient's page leads with one sentence a clinician reads first
(:func:`lead_sentence`: the fused risk, the fragments the modalities' sections add, such
as a reference model's probability, and what was missing), then the risk, its spread
over the fold models and what was missing, then what drove it (leave-one-modality-out contributions, head weights,
top features by Integrated Gradients) and the sections the modalities add through their
optional ``patient_section`` hook (the CT modality's segmented nodule). A patient not
scored gets a page saying which data given for them failed and why. Page file names
are distinct and bounded (:func:`page_names`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["lead_sentence", "page_names", "write_patient_page"]


def _safe(pid: str) -> str:
    return "".join(c if c.isascii() and c.isalnum() or c in "-_." else "_" for c in pid)


#: Longest patient id used as a page name as it is; longer ids are cut and hashed.
_PAGE_PREFIX = 60
#: Device names Windows will not create as files, whatever the extension.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
             *(f"lpt{i}" for i in range(1, 10))}


def page_names(ids: list[str]) -> dict[str, str]:
    """A distinct, bounded file name (``….html``) for each patient's page.

    An id that is a plain file name (ASCII letters, digits, ``-_.``; at most 60 characters;
    not hidden, not a Windows device name; unique in the batch ignoring case, for
    case-insensitive file systems) is its page's name, so links stay readable. Any other
    id gets its sanitised first 60 characters, ``~`` and 12 hex digits of the SHA-256 of
    the exact id: ``P/1``, ``P:1`` and ``P_1`` get three pages, a 300-character id a
    74-character name, and ``~`` never occurs in a plain name, so the two kinds cannot
    collide.
    """
    import hashlib

    folded: dict[str, int] = {}
    for pid in ids:
        folded[pid.casefold()] = folded.get(pid.casefold(), 0) + 1
    out: dict[str, str] = {}
    for pid in ids:
        plain = (0 < len(pid) <= _PAGE_PREFIX and _safe(pid) == pid and pid[0] != "."
                 and pid.split(".")[0].lower() not in _RESERVED and folded[pid.casefold()] == 1)
        if plain:
            out[pid] = f"{pid}.html"
        else:
            digest = hashlib.sha256(pid.encode("utf-8")).hexdigest()[:12]
            prefix = _safe(pid)[:_PAGE_PREFIX]
            prefix = "_" + prefix[1:] if prefix.startswith(".") else prefix  # never hidden
            out[pid] = f"{prefix}~{digest}.html"
    return out


def write_patient_page(path: Path, s: Mapping[str, Any], info: Mapping[str, Any], spec: Any,
                  first: Mapping[str, Any], table: Any, folder: Path) -> None:
    import html

    import pandas as pd

    from lungfuse.core.report.figures import bar_figure
    from lungfuse.core.report.html import Section, write_report

    if s["status"] == "error":
        _error_page(path, s, info, first)
        return
    binary = info["task"] == "binary"
    what = ("calibrated probability of malignancy" if binary
            else "log relative hazard (higher = worse prognosis)")
    lo, hi = s["risk_range"]
    head = (f"<p class='risk'>{s['risk']:.3f}</p><p>{what}; ± {s['uncertainty']:.3f} "
            f"(standard deviation over the {s['models']} fold models; range {lo:.3f}–{hi:.3f}).</p>"
            f"<p>Modalities used: {html.escape(', '.join(s['present']) or 'none')}.</p>")
    if s["missing"]:
        items = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(r)}</li>"
                        for m, r in s["missing_reasons"].items())
        head += (f"<div class='note'><p>Missing for this patient, so left out of the "
                 f"prediction (not imputed):</p><ul>{items}</ul></div>")
    for note in s["notes"]:
        head += f"<div class='note'><p>{html.escape(note)}</p></div>"
    for m, got in (s.get("inputs") or {}).items():  # e.g. the CT series read, and why
        head += f"<p class='input'>Data read ({html.escape(m)}): {html.escape(got['text'])}</p>"
    if not s["present"]:
        head += ("<div class='note'><p><b>No modality could be used for this patient</b>: "
                 "the risk above is the model's baseline for a patient of whom nothing is "
                 "known, not an assessment.</p></div>")
    extra, leads, lacking = _modality_sections(s, spec, first, table, folder)
    lead = html.escape(lead_sentence(s, binary, leads, lacking))
    sections = [Section("Summary", html=f"<p class='lead'><b>{lead}</b></p>"),
                Section("Risk", html=head)]
    if s.get("survival"):
        surv = pd.DataFrame(s["survival"]).rename(columns={"probability":
                                                           "survival probability"})
        sections.append(Section("Predicted survival", text=[
            "Mean over fold models of the Breslow survival curve at the run's time grid."],
            tables=[surv]))
    if s.get("risk_by_year"):
        sections.append(_risk_by_year_section(s["risk_by_year"]))
    if s["contributions"]:
        mods = list(s["contributions"])
        vals = [s["contributions"][m] or 0.0 for m in mods]
        tab = pd.DataFrame({"modality": mods, "contribution": vals})
        if s["weights"]:
            tab["head weight"] = [s["weights"][m] for m in mods]
        unit = "probability" if binary else "log-risk"
        sections.append(Section("What drove the risk", text=[
            f"Leave-one-modality-out: the risk with all modalities minus the risk with this "
            f"one hidden (in {unit} units; red raises the risk)."
            + (" Head weight: the fusion head's attention to the modality." if s["weights"]
               else "")],
            tables=[tab], figures=[(bar_figure(mods, vals, "Modality contributions",
                                               f"change in {unit}"), "")]))
    gene_mods = set(first.get("gene_modalities", ()))
    others = [i for i in s["top_features"] if i["modality"] not in gene_mods]
    for items, title in ((s["top_genes"], "Top genomic features"), (others, "Other top features")):
        if not items:
            continue
        lab = [f"{i['feature']} ({i['modality']})" for i in items]
        sections.append(Section(title, text=[
            "Integrated Gradients (captum) of each fold model's output with respect to the "
            "input features, from a zero baseline (training mean / wild type), averaged over "
            "fold models; value = the patient's (transformed) feature."],
            tables=[pd.DataFrame(items)],
            figures=[(bar_figure(lab, [i["attribution"] for i in items], title,
                                 "attribution (logit)" if binary else "attribution (log-risk)"),
                      "")]))
    sections.extend(extra)
    sections.append(Section("Model", text=[
        f"Run {info['run']} ({len(first['names'])} modalities: {', '.join(first['names'])}; "
        f"{info['models']} fold models). Research use: the risk is only as good as the "
        "cohort the run was trained on."]))
    write_report(path, f"lungfuse: patient {s['patient_id']}", sections,
                 subtitle=time.strftime("scored %Y-%m-%d %H:%M"))


def lead_sentence(s: Mapping[str, Any], binary: bool, leads: list[str],
                  lacking: list[str]) -> str:
    """The one sentence a clinician reads first: the fused risk, the fragments the
    modalities' sections add (e.g. a reference model's probability and a category), and
    what was missing (modalities left out of the prediction, then the sections' missing
    inputs). Plain text; core composes it without knowing which plugin said what."""
    risk = float(s["risk"])
    parts = [f"lungfuse fused risk {risk:.3f} ({100 * risk:.1f}%, calibrated probability of "
             "malignancy)" if binary else
             f"lungfuse fused risk {risk:.3f} (log relative hazard; higher = worse prognosis)"]
    parts.extend(f for f in leads if f)
    missing = [f"{m} (not in the fused risk)" for m in s.get("missing", [])] + list(lacking)
    parts.append("missing: " + ", ".join(missing) if missing else "nothing missing")
    return "; ".join(parts) + "."


def _risk_by_year_section(rows: list[Mapping[str, Any]]) -> Any:
    """The page's "Risk by year": P(event by h) per horizon, the mean over fold models with
    its sd and min-max (a table, and a figure with the min-max band); a horizon past the
    follow-up is listed as not estimable and left out of the figure."""
    import math

    import pandas as pd

    from lungfuse.core.report.figures import _fig
    from lungfuse.core.report.html import Section

    years = rows[0].get("unit") == "years"
    tab = pd.DataFrame([{
        "horizon": f"{r['value']:g} year(s)" if years else f"t = {r['time']:g}",
        "risk (mean over fold models)": r["mean"] if r["estimable"] else "not estimable",
        "sd": r["sd"], "min": r["min"], "max": r["max"],
        "note": r.get("reason", "")} for r in rows])
    ok = [r for r in rows if r["estimable"] and r["mean"] is not None
          and math.isfinite(r["mean"])]
    figures = []
    if ok:
        fig, ax = _fig(5.0, 3.4)
        x = [r["value"] for r in ok]
        ax.fill_between(x, [r["min"] for r in ok], [r["max"] for r in ok], color="C0",
                        alpha=0.2, lw=0, label="min-max over fold models")
        ax.plot(x, [r["mean"] for r in ok], "o-", color="C0", lw=1.8, label="mean")
        ax.set(xlabel="years" if years else "time (cohort's unit)",
               ylabel="probability of the event by then", ylim=(0, 1), title="Risk by year")
        ax.legend(fontsize=8, loc="upper left")
        figures.append((fig, "Risk by each horizon: mean over fold models, band = min-max."))
    gone = [r for r in rows if not r["estimable"]]
    text = ["Probability of the event by each horizon, 1 - S(h | x), from each fold model's "
            "own Breslow baseline; the spread is over the fold models."]
    if gone:
        text.append("Not estimable: horizons past the follow-up of a fold model's training "
                    "patients (the baseline is unknown there and is not extrapolated).")
    return Section("Risk by year", text=text, tables=[tab], figures=figures)


def _error_page(path: Path, s: Mapping[str, Any], info: Mapping[str, Any],
                first: Mapping[str, Any]) -> None:
    """The page of a patient not scored: which data given for them failed, and why."""
    import html

    from lungfuse.core.report.html import Section, write_report

    items = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(r)}</li>"
                    for m, r in s["failed"].items())
    head = ("<p class='risk'>not scored</p><div class='note'><p><b>Data given for this "
            "patient could not be used</b>, so no risk was computed: a risk without it would "
            f"hide what was given.</p><ul>{items}</ul><p>Fix or replace the data and score "
            "the patient again.</p></div>")
    sections = [Section("Not scored", html=head), Section("Model", text=[
        f"Run {info['run']} ({len(first['names'])} modalities: {', '.join(first['names'])}; "
        f"{info['models']} fold models)."])]
    write_report(path, f"lungfuse: patient {s['patient_id']} (not scored)", sections,
                 subtitle=time.strftime("scored %Y-%m-%d %H:%M"))


def _modality_sections(s: Mapping[str, Any], spec: Any, first: Mapping[str, Any],
                       table: Any, folder: Path) -> tuple[list[Any], list[str], list[str]]:
    """The sections the modalities present for this patient add to the page through their
    optional ``patient_section`` hook (the CT modality's segmented nodule), in the run's
    modality order, each followed by the further sections it brings (``more``); with the
    lead fragments and missing items those sections give for the page's first sentence.

    Each hook runs on the first fold model's fitted instance with the patient's scoring
    entry and clinical row, in a scratch folder under the scoring folder that is removed
    afterwards; one that fails or returns no section is logged and left out, never
    costing the patient's score or page.
    """
    import pandas as pd

    from lungfuse.core.contracts import call_section_hook, overrides
    from lungfuse.core.report.run import sections_of

    pid = s["patient_id"]
    entry = next(p for p in spec.patients if p.id == pid).model_dump()
    row = table.loc[pid] if table is not None and pid in table.index else pd.Series(
        dtype=object, name=pid)
    out = []
    for m, plugin in first["plugins"].items():
        if m not in s["present"] or not overrides(plugin, "patient_section"):
            continue
        with tempfile.TemporaryDirectory(prefix=".page-", dir=folder) as work:
            ms = call_section_hook(plugin, "patient_section", entry, row, Path(work),
                                   where=f"score: patient {pid}")
        if ms is not None:
            out.extend((m, x) for x in (ms, *ms.more))
    leads = [ms.lead for _, ms in out if ms.lead]
    lacking = [item for _, ms in out for item in ms.lead_missing]
    return sections_of(out), leads, lacking
