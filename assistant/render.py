"""Write a :class:`~assistant.report.Report` as Markdown, HTML (figures inside), PDF and JSON.

Every file is written atomically: to a temporary file in the destination folder, flushed and
``fsync``-ed, then renamed over the final name (``os.replace``), so a reader or a crash never
sees half a report. File names are ``<study id>-report.<ext>``; the study id is validated again
and the path checked to stay inside ``out_dir``.

Figures (HTML and PDF) need the tool context of the report's patient: the hypnogram and the
event timeline come from :mod:`tools.figures`, the SpO2 trace is drawn here from the recording.
Untrusted strings (annotation labels, notes, the indication) are escaped in HTML and Markdown;
the PDF uses the DejaVu Sans font that matplotlib ships (any Unicode character it has), and
replaces characters the font cannot show.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import os
import re
import tempfile
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from assistant.report import Report, ReportSection
from sleeplm._logging import logger
from sleeplm.library.patients import validate_patient_id
from sleeplm.recording import safe_identifier
from tools.common import clock_of, recording_start
from tools.context import ToolContext
from tools.figures import event_timeline_figure, hypnogram_figure

__all__ = ["FORMATS", "ReportFigure", "atomic_write", "report_figures", "spo2_trace_png",
           "to_html", "to_markdown", "to_pdf", "write_report_files"]

FORMATS = ("md", "html", "pdf", "json")


class ReportFigure(BaseModel):
    """A figure of the report: PNG bytes and a caption (or why it could not be drawn)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kind: str
    title: str
    png: bytes = Field(default=b"", repr=False)
    note: str = ""


# --------------------------------------------------------------------------------- files


def atomic_write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync,
    ``os.replace``).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


def _report_path(out_dir: Path, patient: str, ext: str) -> Path:
    try:
        stem = validate_patient_id(patient)
    except ValueError:
        stem = safe_identifier(patient, max_len=64)
    root = out_dir.resolve()
    path = (root / f"{stem}-report.{ext}").resolve()
    if path.parent != root:
        raise ValueError(f"report file for {patient!r} would land outside {root}")
    return path


# ------------------------------------------------------------------------------ figures


def spo2_trace_png(ctx: ToolContext) -> tuple[bytes, str]:
    """The night's SpO2 trace as PNG bytes, with the 90 % line and the lowest valid value.

    Returns
    -------
    png : bytes
        Empty when the recording has no SpO2 channel.
    note : str
        Why nothing was drawn ('' when drawn).
    """
    p = ctx.processed()
    rec = ctx.recording()
    sig = rec.signals.get("SPO2")
    if sig is None:
        return b"", "no SpO2 channel in this recording"
    y = np.asarray(sig.data, dtype=float).copy()
    y[(y < 50.0) | (y > 100.0)] = np.nan  # out-of-range samples are artifact, not saturation
    if not np.isfinite(y).any():
        return b"", "the SpO2 channel holds no valid sample (50-100 %)"
    t = np.arange(y.size) / float(sig.sfreq)
    t0 = recording_start(p)
    fig, ax = plt.subplots(figsize=(10, 2.6))
    ax.plot(t / 3600.0, y, lw=0.6, color="#2a9d8f")
    ax.axhline(90.0, color="#d62839", lw=0.7, ls="--")
    k = int(np.nanargmin(y))
    ax.plot([t[k] / 3600.0], [y[k]], "v", color="#d62839", ms=6)
    ax.set_ylabel(f"SpO2 [{sig.unit or '%'}]", fontsize=8)
    ax.set_ylim(max(50.0, float(np.nanmin(y)) - 3.0), 100.5)
    ax.set_xlim(0, t[-1] / 3600.0 if t.size else 1.0)
    if t0 is not None:
        ticks = [x for x in ax.get_xticks() if 0 <= x <= t[-1] / 3600.0 + 1e-9]
        ax.set_xticks(ticks)
        ax.set_xticklabels([clock_of(t0, x * 3600.0)[:5] for x in ticks], fontsize=8)
        ax.set_xlabel("clock time", fontsize=8)
    else:
        ax.set_xlabel("hours from recording start", fontsize=8)
    title = f"SpO2, {p.patient}" + (" (SIMULATED)" if p.study.simulated else "")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue(), ""


def report_figures(ctx: ToolContext) -> list[ReportFigure]:
    """Hypnogram, event timeline and SpO2 trace of the context's patient (a figure that cannot
    be drawn comes back with ``png`` empty and the reason in ``note``)."""
    out: list[ReportFigure] = []
    for kind, title, make in (("hypnogram", "Hypnogram", hypnogram_figure),
                              ("event_timeline", "Scored events", event_timeline_figure)):
        try:
            fig = make(ctx)
            out.append(ReportFigure(kind=kind, title=fig.title or title, png=fig.png,
                                    note="; ".join(fig.warnings)))
        except Exception as exc:  # noqa: BLE001 - a figure must not cost the report
            logger.warning("report figure %s for %s failed: %s", kind, ctx.patient, exc)
            out.append(ReportFigure(kind=kind, title=title, note=f"not drawn: {exc}"))
    try:
        png, note = spo2_trace_png(ctx)
    except Exception as exc:  # noqa: BLE001
        logger.warning("SpO2 figure for %s failed: %s", ctx.patient, exc)
        png, note = b"", f"not drawn: {exc}"
    out.append(ReportFigure(kind="spo2", title="Oximetry (SpO2 trace)", png=png, note=note))
    return out


# ----------------------------------------------------------------------------- markdown

_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|~])")


def _md(text: str) -> str:
    """Markdown-escaped, HTML-escaped text (safe for any Markdown renderer)."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


def _sections(report: Report) -> list[ReportSection]:
    return [s for s in report.sections if not s.omitted]


def _evidence(f) -> str:
    parts = []
    if f.epochs:
        runs = [f"{a}" if a == b else f"{a}-{b}" for a, b in f.epochs[:3]]
        parts.append("epochs " + ", ".join(runs) + (" ..." if len(f.epochs) > 3 else ""))
    if f.times:
        parts.append(", ".join(f.times[:3]) + (" ..." if len(f.times) > 3 else ""))
    if f.event_ids:
        parts.append(f"{len(f.event_ids)} events")
    return "; ".join(parts)


def to_markdown(report: Report) -> str:
    """The report as Markdown (facts tables, quoted data as block quotes)."""
    lines = [f"# Draft sleep study report: {_md(report.patient)}", ""]
    if report.simulated:
        lines += ["> **SIMULATED DATA: not a real patient.**", ""]
    lines += [f"*{_md(report.disclaimer)}*", "",
              (f"Generated {_md(report.generated_at)} by {_md(report.writer)}; SleepLM "
               f"checkpoint {_md(report.model[:12])}. Hypopnea rule: "
               f"{_md(report.hypopnea_rule)}."),
              ""]
    lines += ["## Key indices", "", "| index | value |", "|---|---|"]
    for key, k in report.key_indices.items():
        val = k.display or (f"not available ({k.reason})" if k.reason else "not available")
        lines.append(f"| {_md(k.label or key)} | {_md(val)} |")
    if report.severity:
        lines += ["", f"Sleep apnea severity: **{_md(report.severity)}**"]
    if report.flags:
        lines += ["", "Flags: " + ", ".join(f"`{_md(f)}`" for f in report.flags)]
    lines.append("")
    for s in _sections(report):
        lines += [f"## {_md(s.title)}", "", _md(s.narrative) if s.narrative else "*(no text)*",
                  ""]
        for r in s.recommendations:
            lines.append(f"- {_md(r.text)}")
        if s.recommendations:
            lines.append("")
        if s.quoted:
            lines += ["Quoted from the study files or the user (data, not interpreted):", ""]
            for q in s.quoted:
                lines += [f"> “{_md(q)}”", ""]
        if s.notes:
            lines += ["Reading notes of the study files:", ""]
            lines += [f"- {_md(n)}" for n in s.notes]
            lines.append("")
        shown = [f for f in s.facts if f.unit not in ("text",)]
        if shown and s.key not in ("impression", "notice"):
            lines += ["| fact | value | evidence |", "|---|---|---|"]
            for f in shown:
                val = f.display if f.value is not None or f.display else (
                    f"n/a ({f.reason})" if f.reason else "n/a")
                lines.append(f"| {_md(f.label)} | {_md(val)} | {_md(_evidence(f))} |")
            lines.append("")
    g = report.grounding
    lines += ["## Grounding check", "",
              (f"{g.checked} sentences checked, {g.passed} kept as written, "
               f"{len(g.regenerated)} regenerated, {len(g.dropped)} dropped."), ""]
    for d in g.dropped:
        lines.append(f"- dropped from {_md(d.section)}: “{_md(d.sentence)}” "
                     f"({_md(d.token)}: {_md(d.reason)})")
    for r in g.regenerated:
        lines.append(f"- regenerated in {_md(r.section)}: “{_md(r.original)}” → "
                     f"“{_md(r.replacement)}”")
    for fb in g.fallbacks:
        lines.append(f"- {_md(fb)}")
    if report.edits:
        lines += ["", "## Revisions", ""]
        for e in report.edits:
            what = e.action if e.applied else f"not applied: {e.reason}"
            lines.append(f"- “{_md(e.request)}”: {_md(what)}")
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------- html

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:60rem;margin:2rem auto;
padding:0 1rem;color:#1d1d1f;line-height:1.45}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:1.6rem;border-bottom:1px solid #ddd}
.banner{background:#fff3cd;border:2px solid #d39e00;padding:.6rem;font-weight:bold}
.disclaimer{color:#555;font-style:italic}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}
blockquote{border-left:4px solid #bbb;margin:.4rem 0;padding:.2rem .6rem;background:#f6f6f6;
font-family:monospace;white-space:pre-wrap}
figure{margin:1rem 0}figure img{max-width:100%}figcaption{font-size:.85rem;color:#555}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def to_html(report: Report, figures: Sequence[ReportFigure] = ()) -> str:
    """The report as one self-contained HTML page (figures as base64 PNG, every string
    escaped)."""
    h: list[str] = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
                    f"<title>Draft sleep study report: {_e(report.patient)}</title>",
                    f"<style>{_CSS}</style></head><body>",
                    f"<h1>Draft sleep study report: {_e(report.patient)}</h1>"]
    if report.simulated:
        h.append("<p class=\"banner\">SIMULATED DATA: not a real patient.</p>")
    h.append(f"<p class=\"disclaimer\">{_e(report.disclaimer)}</p>")
    h.append(f"<p>Generated {_e(report.generated_at)} by {_e(report.writer)}; SleepLM "
             f"checkpoint <code>{_e(report.model[:12])}</code>. Hypopnea rule: "
             f"{_e(report.hypopnea_rule)}.</p>")
    h.append("<h2>Key indices</h2><table><tr><th>index</th><th>value</th></tr>")
    for key, k in report.key_indices.items():
        val = k.display or (f"not available ({k.reason})" if k.reason else "not available")
        h.append(f"<tr><td>{_e(k.label or key)}</td><td>{_e(val)}</td></tr>")
    h.append("</table>")
    if report.severity:
        h.append(f"<p>Sleep apnea severity: <strong>{_e(report.severity)}</strong></p>")
    if report.flags:
        h.append("<p>Flags: " + ", ".join(f"<code>{_e(f)}</code>" for f in report.flags)
                 + "</p>")
    for s in _sections(report):
        h.append(f"<section id=\"{_e(s.key)}\"><h2>{_e(s.title)}</h2>")
        h.append(f"<p>{_e(s.narrative)}</p>" if s.narrative else "<p><em>(no text)</em></p>")
        if s.recommendations:
            h.append("<ul>" + "".join(f"<li>{_e(r.text)}</li>" for r in s.recommendations)
                     + "</ul>")
        if s.quoted:
            h.append("<p>Quoted from the study files or the user (data, not interpreted):</p>")
            h += [f"<blockquote>{_e(q)}</blockquote>" for q in s.quoted]
        if s.notes:
            h.append("<p>Reading notes of the study files:</p><ul>"
                     + "".join(f"<li>{_e(n)}</li>" for n in s.notes) + "</ul>")
        shown = [f for f in s.facts if f.unit != "text"]
        if shown and s.key not in ("impression", "notice"):
            h.append("<table><tr><th>fact</th><th>value</th><th>evidence</th></tr>")
            for f in shown:
                val = f.display if f.value is not None or f.display else (
                    f"n/a ({f.reason})" if f.reason else "n/a")
                h.append(f"<tr><td>{_e(f.label)}</td><td>{_e(val)}</td>"
                         f"<td>{_e(_evidence(f))}</td></tr>")
            h.append("</table>")
        h.append("</section>")
    if figures:
        h.append("<h2>Figures</h2>")
        for fig in figures:
            if fig.png:
                b64 = base64.b64encode(fig.png).decode("ascii")
                h.append(f"<figure><img src=\"data:image/png;base64,{b64}\" "
                         f"alt=\"{_e(fig.title)}\"><figcaption>{_e(fig.title)}"
                         + (f" ({_e(fig.note)})" if fig.note else "")
                         + "</figcaption></figure>")
            else:
                h.append(f"<p>{_e(fig.title)}: not drawn ({_e(fig.note)}).</p>")
    else:
        h.append("<p><em>Figures were not drawn (no tool context was given).</em></p>")
    g = report.grounding
    h.append("<h2>Grounding check</h2>")
    h.append(f"<p>{g.checked} sentences checked, {g.passed} kept as written, "
             f"{len(g.regenerated)} regenerated, {len(g.dropped)} dropped.</p><ul>")
    h += [f"<li>dropped from {_e(d.section)}: “{_e(d.sentence)}” ({_e(d.token)}: "
          f"{_e(d.reason)})</li>" for d in g.dropped]
    h += [f"<li>regenerated in {_e(r.section)}: “{_e(r.original)}” → “{_e(r.replacement)}”"
          "</li>" for r in g.regenerated]
    h += [f"<li>{_e(fb)}</li>" for fb in g.fallbacks]
    h.append("</ul>")
    if report.edits:
        h.append("<h2>Revisions</h2><ul>")
        for e in report.edits:
            what = e.action if e.applied else f"not applied: {e.reason}"
            h.append(f"<li>“{_e(e.request)}”: {_e(what)}</li>")
        h.append("</ul>")
    h.append("</body></html>")
    return "\n".join(h) + "\n"


# ---------------------------------------------------------------------------------- pdf


def _font_path() -> Path | None:
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return path if path.is_file() else None


def _latin1(text: str) -> str:
    """Text the PDF core fonts can show: accents folded, other characters replaced."""
    subs = {"–": "-", "—": "-", "“": '"', "”": '"', "‘": "'", "’": "'", "→": "->",
            "≥": ">=", "≤": "<=", "•": "-", "…": "..."}
    text = "".join(subs.get(c, c) for c in str(text))
    out = []
    for c in text:
        try:
            c.encode("latin-1")
            out.append(c)
        except UnicodeEncodeError:
            base = unicodedata.normalize("NFKD", c).encode("latin-1", "ignore").decode("latin-1")
            out.append(base or "?")
    return "".join(out)


def to_pdf(report: Report, figures: Sequence[ReportFigure] = ()) -> bytes:
    """The report as PDF bytes (fpdf2): text sections, key indices and the figures."""
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_title(_latin1(f"Draft sleep study report {report.patient}"))
    font = _font_path()
    if font is not None:
        pdf.add_font("DejaVu", "", str(font))
        bold = font.with_name("DejaVuSans-Bold.ttf")
        pdf.add_font("DejaVu", "B", str(bold if bold.is_file() else font))
        family = "DejaVu"
        cmap = set(getattr(pdf.fonts.get("dejavu"), "cmap", {}) or {})

        def clean(text: str) -> str:
            # keep what the font has; a character it lacks would print as an empty box
            return "".join(c if c in "\n\t" or ord(c) in cmap or not cmap else "?"
                           for c in unicodedata.normalize("NFC", str(text)))
    else:  # pragma: no cover - matplotlib always ships DejaVu Sans
        family, clean = "Helvetica", _latin1
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def para(text: str, size: float = 10, style: str = "", gap: float = 1.5) -> None:
        pdf.set_font(family, style, size)
        pdf.set_x(pdf.l_margin)
        pdf.multi_cell(width, size * 0.5, clean(text))
        pdf.ln(gap)

    para(f"Draft sleep study report: {report.patient}", 15, "B", 3)
    if report.simulated:
        pdf.set_text_color(160, 90, 0)
        para("SIMULATED DATA: not a real patient.", 11, "B")
        pdf.set_text_color(0, 0, 0)
    para(report.disclaimer, 9)
    para(f"Generated {report.generated_at} by {report.writer}; SleepLM checkpoint "
         f"{report.model[:12]}. Hypopnea rule: {report.hypopnea_rule}.", 9)
    para("Key indices", 12, "B")
    for key, k in report.key_indices.items():
        val = k.display or (f"not available ({k.reason})" if k.reason else "not available")
        para(f"{k.label or key}: {val}", 9, gap=0.5)
    if report.severity:
        para(f"Sleep apnea severity: {report.severity}", 10, "B")
    for s in _sections(report):
        para(s.title, 12, "B", 1)
        para(s.narrative or "(no text)", 10)
        for r in s.recommendations:
            para(f"- {r.text}", 10, gap=0.5)
        if s.quoted:
            para("Quoted from the study files or the user (data, not interpreted):", 9)
            for q in s.quoted:
                para(f"\"{q}\"", 9, gap=0.5)
        if s.notes:
            para("Reading notes of the study files:", 9)
            for n in s.notes:
                para(f"- {n}", 8, gap=0.5)
    for fig in figures:
        if fig.png:
            if pdf.get_y() > pdf.h - 80:
                pdf.add_page()
            para(fig.title, 10, "B", 0.5)
            pdf.image(io.BytesIO(fig.png), w=width)
            pdf.ln(2)
        else:
            para(f"{fig.title}: not drawn ({fig.note})", 9)
    g = report.grounding
    para("Grounding check", 12, "B")
    para(f"{g.checked} sentences checked, {g.passed} kept as written, "
         f"{len(g.regenerated)} regenerated, {len(g.dropped)} dropped.", 9)
    for d in g.dropped:
        para(f"- dropped from {d.section}: \"{d.sentence}\" ({d.token}: {d.reason})", 8,
             gap=0.5)
    if report.edits:
        para("Revisions", 12, "B")
        for e in report.edits:
            para(f"- \"{e.request}\": " + (e.action if e.applied else
                                           f"not applied: {e.reason}"), 9, gap=0.5)
    return bytes(pdf.output())


# -------------------------------------------------------------------------------- public


def write_report_files(report: Report, out_dir: Path,
                       formats: Sequence[str] = FORMATS,
                       ctx: ToolContext | None = None) -> dict[str, Path]:
    """Write the report in each format, atomically.

    Parameters
    ----------
    report : Report
    out_dir : pathlib.Path
        Created when missing.
    formats : sequence of str
        Any of ``md``, ``html``, ``pdf``, ``json``.
    ctx : ToolContext, optional
        The report patient's context; without it HTML and PDF have no figures.

    Returns
    -------
    dict of str to pathlib.Path
        Format -> file written (``<study id>-report.<ext>``).

    Raises
    ------
    ValueError
        An unknown format, or a context for another patient than the report's.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown report format(s) {bad}: use any of {', '.join(FORMATS)}")
    if ctx is not None and ctx.patient != report.patient:
        raise ValueError(f"the tool context is for patient {ctx.patient!r} but the report is "
                         f"for {report.patient!r}: pass the context of the report's patient")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: list[ReportFigure] = []
    if ctx is not None and ({"html", "pdf"} & set(formats)):
        figures = report_figures(ctx)
    written: dict[str, Path] = {}
    for fmt in dict.fromkeys(formats):
        if fmt == "md":
            data = to_markdown(report).encode("utf-8")
        elif fmt == "html":
            data = to_html(report, figures).encode("utf-8")
        elif fmt == "pdf":
            data = to_pdf(report, figures)
        else:
            data = report.model_dump_json(indent=2).encode("utf-8")
        written[fmt] = atomic_write(_report_path(out_dir, report.patient, fmt), data)
    return written
