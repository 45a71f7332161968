"""The Gradio chat app: a patient panel, the chat with its tool steps, plots and the report.

>>> from assistant.agent import Assistant
>>> from assistant.app import serve
>>> app, url = serve(Assistant(), host="127.0.0.1", port=7860)        # doctest: +SKIP

:func:`build_app` makes the ``gr.Blocks`` over an :class:`~assistant.agent.Assistant`;
:func:`serve` launches it on loopback (no share link, analytics off, local fonts) with the
folders it may serve files from. ``demo.py`` only parses options and calls :func:`serve`.

Patients come from the assistant's library (the SIMULATED example patients by default) and from
an upload folder (``<state_dir>/uploads``): an uploaded EDF/BDF (plus an optional annotation
file) is checked (size, magic bytes, patient id), copied under a sanitised name, listed in the
folder's ``manifest.csv`` and processed through :class:`~sleeplm.library.patients.PatientLibrary`. Every
handler turns errors into a message in the page (a warning toast and the status box), never a
traceback.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from assistant.agent import Answer, Assistant, StreamEvent, ToolStep
from assistant.backends import describe_backend, sends_data_off_machine
from assistant.render import atomic_write
from sleeplm._logging import logger
from sleeplm.errors import SleepLMError
from sleeplm.library.patients import (
    MANIFEST_NAME,
    PatientLibrary,
    patient_id_from_name,
    validate_patient_id,
)
from sleeplm.recording import safe_identifier
from tools.common import TimeSelection, clock_of, recording_start
from tools.context import ToolContext
from tools.facts import EventsInput, events_in_range
from tools.figures import STAGE_COLOURS, SignalsInput, signals_figure
from tools.localize import LocalizeInput, localize

__all__ = ["APP_CSS", "APP_THEME", "DEFAULT_MAX_UPLOAD_MB", "EXAMPLE_QUESTIONS", "NOTICE",
           "PatientSummary", "UploadError", "answer_notes", "build_app", "check_signal_file",
           "draft_files", "night_overview_png", "patient_summary", "serve"]

#: Largest accepted upload, MB (``--max-upload-mb``).
DEFAULT_MAX_UPLOAD_MB = 512.0
#: Gradio's copies of uploads and figures (its cache, ``GRADIO_TEMP_DIR``): checked every hour
#: and removed after a day, and all of them when the app stops. An uploaded recording is
#: copied into the upload library at once; without this its copy in the cache, patient data,
#: stayed in the system's temporary folder for good.
CACHE_CLEANUP_S = (3600, 86400)
#: The example questions shown under the chat (each one a button).
EXAMPLE_QUESTIONS: tuple[str, ...] = (
    "Summarise this night", "What is the AHI?", "List the obstructive apneas",
    "Where is there obstructive apnea?", "Show the hypnogram", "Draft the report")
NOTICE = ("**Not a medical device.** Research software: every number comes from automatic "
          "measurements and must be reviewed by a qualified clinician. The demo patients are "
          "**SIMULATED data**, not real people. SleepLM's own words (captions, localisations, "
          "zero-shot stages) are its reading, trained on simulated nights only: on real EEG its "
          "staging scored accuracy 0.12-0.55 on two excerpts (YASA 0.70).")
#: System fonts only: nothing is fetched from a font service.
APP_THEME = gr.themes.Default(font=[gr.themes.Font("system-ui"), "sans-serif"],
                              font_mono=[gr.themes.Font("ui-monospace"), "monospace"])
APP_CSS = """
.sleeplm-notice {border-left: 4px solid #d62839; padding: 4px 10px; background: #fff4f4;}
.sleeplm-status {min-height: 1.5em;}
.sleeplm-card table {font-size: 0.9em; width: 100%; table-layout: auto;}
.sleeplm-card th, .sleeplm-card td {padding: 4px 8px !important; hyphens: none;
  word-break: normal !important; overflow-wrap: break-word !important;}
.sleeplm-card th:first-child, .sleeplm-card td:first-child {white-space: nowrap;}
"""
_SIGNAL_SUFFIXES = (".edf", ".bdf")
_ANNOTATION_SUFFIXES = (".xml", ".csv", ".tsv", ".txt", ".edf", ".json")
_EDF_MAGIC, _BDF_MAGIC = b"0       ", b"\xffBIOSEMI"
_UPLOAD_SOURCE, _LIBRARY_SOURCE = "uploads", "library"
_EVENT_ROWS = ("obstructive_apnea", "central_apnea", "mixed_apnea", "hypopnea", "desaturation",
               "arousal", "limb_movement")
_EVENT_COLOURS = ("#d62839", "#7b2cbf", "#9d4edd", "#f77f00", "#2a9d8f", "#e9c46a", "#6a994e")
_SHOWN_EVENTS = ["apnea", "hypopnea", "desaturation", "arousal", "limb_movement"]


class UploadError(SleepLMError, ValueError):
    """An uploaded study that cannot be used (size, type, name); the message says what to do."""


# --------------------------------------------------------------------------- summary card
class PatientSummary(BaseModel):
    """The summary card of one night (all from the processed cache).

    Attributes
    ----------
    patient : str
    simulated : bool or None
    duration_h : float
        Recording length, hours.
    channels : list of str
        Channels present and usable.
    values : dict of str to str
        TST, SE, AHI, ODI (formatted with units; "unavailable: why" when missing).
    severity : str or None
    notes : list of str
    """

    model_config = ConfigDict(extra="forbid")

    patient: str
    simulated: bool | None = None
    duration_h: float = 0.0
    channels: list[str] = Field(default_factory=list)
    values: dict[str, str] = Field(default_factory=dict)
    severity: str | None = None
    notes: list[str] = Field(default_factory=list)

    def markdown(self) -> str:
        """The card as Markdown."""
        head = f"### {self.patient}"
        if self.simulated:
            head += "  \n**SIMULATED data** (written by the sleeplm simulator, not a patient)"
        rows = [("Recording", f"{self.duration_h:.1f} h"),
                *self.values.items(),
                ("Severity", self.severity or "not rated"),
                ("Channels", ", ".join(self.channels) or "none")]
        table = "| Measure | Value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
        return head + "\n\n" + table


_CARD = (("TST", "tst_min"), ("Sleep efficiency", "sleep_efficiency_pct"),
         ("AHI (3 %/arousal)", "ahi_3a"), ("ODI (3 %)", "odi3"))


def patient_summary(ctx: ToolContext) -> PatientSummary:
    """Summary card of the context's patient from its cached clinical summary.

    Raises
    ------
    UnknownPatientError, InvalidPatientIdError, SleepLMError
        As :meth:`ToolContext.processed`.
    """
    p = ctx.processed()
    facts = p.facts
    measures = {m.name: m for ms in facts.sections.values() for m in ms}
    values = {"Sleep stages": _stage_source(p)}
    for label, name in _CARD:
        m = measures.get(name)
        values[label] = m.format() if m is not None and m.value is not None else (
            f"unavailable ({m.reason})" if m is not None and m.reason else "unavailable")
    if "Heart-rate apnea screening" in facts.findings:  # heart-rate studies: never an AHI
        values["Heart-rate screening"] = facts.findings["Heart-rate apnea screening"]
    severity = next((v for k, v in facts.findings.items() if "severity" in k.lower()), None)
    es = float(p.meta.input_config.get("epoch_sec", 30.0))
    return PatientSummary(patient=p.patient, simulated=p.meta.simulated or p.study.simulated,
                          duration_h=p.n_epochs * es / 3600.0, channels=list(p.meta.present),
                          values=values, severity=severity,
                          notes=[n for n in p.meta.notes if "SIMULATED" not in n][:4])


def _stage_source(p: Any) -> str:
    """Where the night's stages come from, for the card: scored, automatic (labelled), or none."""
    if (p.path / "auto_staging.json").is_file():
        return "automatic (YASA SleepStaging), not scored by a person"
    if not np.isin(np.asarray(p.stages).astype(str), ("W", "N1", "N2", "N3", "R")).any():
        return "none: unscored, and automatic staging could not run (see the notes)"
    return "scored"


# ------------------------------------------------------------------------- overview plot
def _clock_ticks(ax: plt.Axes, t0: Any, hours: float) -> None:
    step = 1.0 if hours > 3 else 0.25
    ticks = np.arange(0.0, hours + 1e-9, step)
    ax.set_xticks(ticks)
    ax.set_xticklabels([clock_of(t0, t * 3600.0)[:5] if t0 is not None else f"{t:g} h"
                        for t in ticks], fontsize=8)


def night_overview_png(ctx: ToolContext, highlights: Sequence[tuple[float, float]] = ()
                       ) -> Path:
    """Hypnogram, scored events and SpO2 of the night on one time axis, with ``highlights``.

    Parameters
    ----------
    ctx : ToolContext
        Its current patient is drawn.
    highlights : sequence of (float, float)
        Intervals (seconds from the recording start) to shade on every panel, e.g. what
        ``localize`` found.

    Returns
    -------
    pathlib.Path
        The PNG in the patient's figure folder.
    """
    p = ctx.processed()
    rec = ctx.recording()
    t0 = recording_start(p)
    es = float(p.meta.input_config.get("epoch_sec", 30.0))
    hours = max(p.n_epochs * es, rec.duration) / 3600.0
    fig, axes = plt.subplots(3, 1, figsize=(10, 5.2), sharex=True,
                             gridspec_kw={"height_ratios": [1.2, 1.4, 1.0]})
    hyp, evs, spo2 = axes
    order = ["UNS", "N3", "N2", "N1", "R", "W"]
    level = {s: i for i, s in enumerate(order)}
    x = np.asarray(p.onsets_s, dtype=float) / 3600.0
    stages = np.asarray(p.stages).astype(str)
    y = np.array([level.get(s, 0) for s in stages])
    if x.size:
        hyp.step(np.r_[x, x[-1] + es / 3600.0], np.r_[y, y[-1]], where="post", color="#444",
                 lw=0.7)
        for s, colour in STAGE_COLOURS.items():
            m = stages == s
            if m.any():
                hyp.bar(x[m], 0.8, width=es / 3600.0, bottom=y[m] - 0.4, align="edge",
                        color=colour, label=s, lw=0)
        hyp.legend(ncol=6, fontsize=7, loc="upper right", frameon=False)
    hyp.set_yticks(range(len(order)))
    hyp.set_yticklabels(order, fontsize=8)
    title = f"{p.patient}" + (" (SIMULATED)" if p.meta.simulated or p.study.simulated else "")
    hyp.set_title(title + ": stages, scored events and SpO2", fontsize=10)
    ev = rec.events
    for r, (kind, colour) in enumerate(zip(_EVENT_ROWS, _EVENT_COLOURS)):
        e = ev[ev["type"] == kind] if len(ev) else ev
        if len(e):
            evs.broken_barh(list(zip(e["onset"] / 3600.0, np.maximum(e["duration"], 5.0)
                                     / 3600.0)), (r + 0.6, 0.8), color=colour)
    evs.set_yticks([r + 1 for r in range(len(_EVENT_ROWS))])
    evs.set_yticklabels([k.replace("_", " ") for k in _EVENT_ROWS], fontsize=7)
    evs.set_ylim(0.4, len(_EVENT_ROWS) + 0.6)
    if not len(ev):
        evs.text(0.5, 0.5, "no scored events in this recording", transform=evs.transAxes,
                 ha="center", va="center", fontsize=9, color="#666")
    sig = rec.signals.get("SPO2")
    if sig is not None and sig.data.size:
        step = max(1, int(sig.data.size // 20000))
        yy = np.asarray(sig.data[::step], dtype=float).copy()
        yy[(yy < 50.0) | (yy > 100.0)] = np.nan
        tt = np.arange(yy.size) * step / float(sig.sfreq) / 3600.0
        spo2.plot(tt, yy, lw=0.6, color="#2a9d8f")
        spo2.axhline(90.0, color="#d62839", lw=0.6, ls="--")
        low = np.nanmin(yy) if np.isfinite(yy).any() else 85.0
        spo2.set_ylim(max(50.0, float(low) - 3.0), 100.5)
        spo2.set_ylabel("SpO2 [%]", fontsize=8)
    else:
        spo2.text(0.5, 0.5, "no SpO2 channel in this recording", transform=spo2.transAxes,
                  ha="center", va="center", fontsize=9, color="#666")
        spo2.set_yticks([])
    for a, b in highlights:
        for ax in axes:
            ax.axvspan(a / 3600.0, b / 3600.0, color="#ffd23f", alpha=0.45, lw=0, zorder=0)
    spo2.set_xlim(0.0, hours)
    _clock_ticks(spo2, t0, hours)
    spo2.set_xlabel("clock time" if t0 is not None else "hours from recording start",
                    fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    tag = hashlib.sha1(repr(sorted(highlights)).encode()).hexdigest()[:10]
    path = ctx.figures_dir() / f"overview-{tag}.png"
    return atomic_write(path, buf.getvalue())


# ------------------------------------------------------------------------------ uploads
def _is_beat_file(path: Path) -> bool:
    """A heart-beat series (sleeplm.io.beats): ``.npz``, or a CSV/TXT naming a beat column."""
    from sleeplm.io.beats import BEAT_SUFFIXES, looks_like_beat_table

    suffix = path.suffix.lower()
    return suffix in BEAT_SUFFIXES or (suffix in (".csv", ".txt", ".tsv")
                                       and looks_like_beat_table(path))


def _check_beat_file(path: Path) -> str:
    """Read an uploaded beat file once (its errors say what is wrong); return its suffix."""
    from sleeplm.io.beats import read_beats

    try:
        read_beats(path)
    except (SleepLMError, ValueError) as exc:
        raise UploadError(f"{path.name} cannot be read as a heart-beat series: {exc}") from None
    return path.suffix.lower().lstrip(".")


def check_signal_file(path: Path, *, max_bytes: int) -> str:
    """Check an uploaded signal file: size and EDF/BDF header.

    Parameters
    ----------
    path : pathlib.Path
    max_bytes : int
        Upload limit, bytes.

    Returns
    -------
    str
        ``"edf"`` or ``"bdf"``.

    Raises
    ------
    UploadError
        Too large, too short, or not an EDF/BDF header (the message says what the file starts
        with and what to export instead).
    """
    size = path.stat().st_size
    if size > max_bytes:
        raise UploadError(f"{path.name} is {size / 1e6:.1f} MB, over the upload limit of "
                          f"{max_bytes / 1e6:.1f} MB: put large studies in a library folder "
                          "(python demo.py --library DIR) or raise --max-upload-mb")
    with open(path, "rb") as f:
        head = f.read(256)
    kind = "edf" if head[:8] == _EDF_MAGIC else "bdf" if head[:8] == _BDF_MAGIC else None
    if kind is None or len(head) < 256 or not head[184:192].strip().isdigit():
        shown = head[:8].decode("latin-1").encode("unicode_escape").decode("ascii")
        raise UploadError(f"{path.name} is not an EDF/BDF recording: it starts with "
                          f"'{shown}' where an EDF header starts with '0' and 7 spaces (a BDF "
                          "with 0xFF 'BIOSEMI') followed by a 256-byte header. Export the "
                          "recording as EDF/EDF+ or BDF and upload that file.")
    return kind


def _file_path(item: Any) -> Path:
    path = item if isinstance(item, (str, os.PathLike)) else (
        item.get("path") if isinstance(item, dict) else getattr(item, "name", None))
    if not path:
        raise UploadError("the upload holds no file: choose an EDF/BDF file")
    return Path(path)


@dataclasses.dataclass(eq=False)
class _Uploads:
    """The upload folder: a library with a manifest, rebuilt after each study added."""

    folder: Path
    model_dir: Path
    max_bytes: int
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def library(self) -> PatientLibrary:
        self.folder.mkdir(parents=True, exist_ok=True)
        return PatientLibrary(self.folder, model_dir=self.model_dir)

    def _rows(self) -> list[dict[str, str]]:
        man = self.folder / MANIFEST_NAME
        if not man.is_file():
            return []
        with open(man, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def _write_rows(self, rows: list[dict[str, str]]) -> None:
        man = self.folder / MANIFEST_NAME
        tmp = man.with_suffix(".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["patient_id", "edf", "annotations", "status"])
            w.writeheader()
            w.writerows(rows)
        tmp.replace(man)

    def add(self, files: Sequence[Any], patient_id: str | None) -> str:
        """Check and copy a study in; returns its patient id (not processed yet).

        Raises
        ------
        UploadError, InvalidPatientIdError
        """
        paths = [_file_path(x) for x in files or []]
        if not paths:
            raise UploadError("no file chosen: upload one EDF/BDF file (and optionally its "
                              "annotation file: NSRR XML, hypnogram CSV/TXT or EDF+)")
        for p in paths:
            if p.stat().st_size > self.max_bytes:
                check_signal_file(p, max_bytes=self.max_bytes)  # raises the size message
        signals = [p for p in paths if (p.suffix.lower() in _SIGNAL_SUFFIXES
                                        and "hypnogram" not in p.name.lower())
                   or _is_beat_file(p)]
        others = [p for p in paths if p not in signals]
        if len(signals) != 1:
            raise UploadError(f"{len(signals)} signal files in the upload "
                              f"({', '.join(p.name for p in signals) or 'none'}): upload "
                              "exactly one .edf/.bdf recording (or one beat-time file: .npz, "
                              "or a CSV with a beat_time_s / rr_ms column) per study")
        bad = [p.name for p in others if p.suffix.lower() not in _ANNOTATION_SUFFIXES]
        if bad or len(others) > 1:
            raise UploadError(f"annotation file(s) {', '.join(bad or [p.name for p in others])}"
                              " not accepted: give at most one annotation file, ending in "
                              f"{', '.join(_ANNOTATION_SUFFIXES)}")
        signal = signals[0]
        if _is_beat_file(signal):
            if others:
                raise UploadError("a beat-time file is a study on its own: its per-minute labels "
                                  "go inside it (apnea_minute in the .npz); upload it alone")
            kind = _check_beat_file(signal)
        else:
            kind = check_signal_file(signal, max_bytes=self.max_bytes)
        pid = (validate_patient_id(patient_id.strip()) if patient_id and patient_id.strip()
               else patient_id_from_name(signal.stem))
        with self.lock:
            rows = self._rows()
            if any(r.get("patient_id") == pid for r in rows):
                raise UploadError(f"patient id {pid!r} is already in the upload library: give "
                                  "another patient id")
            dest = self.folder / pid
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            shutil.copyfile(signal, dest / f"{pid}.{kind}")
            ann = ""
            if others:
                a = others[0]
                stem = safe_identifier(a.stem, max_len=48).strip(".") or "annotations"
                name = f"{stem}{a.suffix.lower()}"
                shutil.copyfile(a, dest / name)
                ann = f"{pid}/{name}"
            rows.append({"patient_id": pid, "edf": f"{pid}/{pid}.{kind}", "annotations": ann,
                         "status": "ok"})
            self._write_rows(rows)
        logger.info("upload: study %s added (%s)", pid, kind)
        return pid

    def remove(self, pid: str) -> None:
        """Take a study out again (it could not be processed)."""
        with self.lock:
            self._write_rows([r for r in self._rows() if r.get("patient_id") != pid])
            shutil.rmtree(self.folder / pid, ignore_errors=True)


# ------------------------------------------------------------------------------ the app
def _user_message(exc: BaseException) -> str:
    """A readable one-line message for an error (no traceback)."""
    if isinstance(exc, (SleepLMError, ValueError, KeyError, FileNotFoundError)):
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return text or type(exc).__name__
    logger.exception("unexpected error in the app")
    return (f"Something went wrong ({type(exc).__name__}: {exc}). The app is still running; "
            "try again or pick another patient.")


def _warn(exc: BaseException) -> str:
    msg = _user_message(exc)
    gr.Warning(msg)
    return f"**Error:** {msg}"


def _json_short(obj: Any, limit: int = 600) -> str:
    text = json.dumps(obj, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + " ..."


def _step_message(step: ToolStep, idx: int, pending: bool) -> dict[str, Any]:
    body = f"**arguments** `{_json_short(step.args)}`"
    if not pending:
        result = step.content if len(step.content) <= 1500 else step.content[:1500] + " ..."
        body += "\n\n**result**\n\n```text\n" + result + "\n```"
    meta: dict[str, Any] = {"title": f"{'tool failed' if step.error else 'tool'}: {step.name}",
                            "id": f"step-{idx}", "status": "pending" if pending else "done"}
    if not pending:
        meta["duration"] = round(step.duration_s, 3)
    return {"role": "assistant", "content": body, "metadata": meta}


def _end_step(history: list[dict[str, Any]], index: dict[int, int], ev: StreamEvent) -> None:
    """Close a tool step in the chat (result, duration) and add the figures it drew."""
    step = ev.step
    at = index.get(id(step))
    msg = _step_message(step, len(index), pending=False)
    if at is None:
        history.append(msg)
    else:
        msg["metadata"]["id"] = history[at]["metadata"]["id"]
        history[at] = msg
    for fig in getattr(step.artifact, "figures", None) or []:
        if fig.path is not None and not fig.refusal:
            history.append({"role": "assistant",
                            "content": {"path": str(fig.path), "alt_text": fig.title}})


def answer_notes(answer: Answer) -> str:
    """The answer's notices (an offline-planner fallback, withdrawn numbers) as Markdown
    lines to put under it, or ``""``."""
    return "".join(f"\n\n> *Note: {n}*" for n in answer.notices())


def _event_label(e: Any) -> str:
    when = e.clock or f"{e.onset_s:.0f} s"
    return f"#{e.id} {e.type.replace('_', ' ')} at {when} ({e.stage}, {e.duration_s:.0f} s)"


def _history_messages(assistant: Assistant, pid: str) -> list[dict[str, Any]]:
    return [{"role": role, "content": text} for role, text in assistant.history(pid)]


class _Sources:
    """The libraries the dropdown lists: the assistant's and the upload folder's."""

    def __init__(self, assistant: Assistant, uploads: _Uploads):
        self.main = assistant
        self.uploads = uploads
        self._upload_bot: Assistant | None = None
        self._lock = threading.Lock()
        if (uploads.folder / MANIFEST_NAME).is_file():
            self.upload_bot()

    def upload_bot(self) -> Assistant:
        with self._lock:
            if self._upload_bot is None:
                cfg = self.main.config.model_copy(
                    update={"state_dir": self.main.config.state_dir / "uploads-state",
                            "library": None})
                self._upload_bot = Assistant(cfg, library=self.uploads.library(), index=None,
                                             chat_model=self.main.chat_model)
            return self._upload_bot

    def refresh_uploads(self) -> None:
        bot = self.upload_bot()
        bot.library = self.uploads.library()

    def choices(self) -> list[tuple[str, str]]:
        out = []
        for pid in self.main.library.patients():
            study = self.main.library.study(pid)
            tag = " · SIMULATED" if study.simulated else ""
            out.append((f"{pid}{tag}", f"{_LIBRARY_SOURCE}:{pid}"))
        if self._upload_bot is not None:
            for pid in self._upload_bot.library.patients():
                out.append((f"{pid} · uploaded", f"{_UPLOAD_SOURCE}:{pid}"))
        return out

    def resolve(self, key: str | None) -> tuple[Assistant, str]:
        """(assistant, patient id) of a dropdown value.

        Raises
        ------
        InvalidPatientIdError, UnknownPatientError, ValueError
        """
        if not key:
            raise ValueError("no patient selected: pick a patient in the list on the left")
        source, _, pid = str(key).partition(":")
        if not pid:
            source, pid = _LIBRARY_SOURCE, source
        validate_patient_id(pid)
        if source == _LIBRARY_SOURCE:
            bot = self.main
        elif source == _UPLOAD_SOURCE:
            bot = self.upload_bot()
        else:
            raise ValueError(f"unknown patient source {source!r}: pick a patient in the list")
        bot.library.study(pid)  # UnknownPatientError with the ids it knows
        return bot, pid


def draft_files(ctx: Any, indication: str | None = None) -> tuple[str, dict[str, Path]]:
    """Draft the report of the context's patient and write its files.

    Parameters
    ----------
    ctx : AssistantContext
        Its ``writer`` writes the narrative (templates when None) and its ``reports_dir``
        receives ``<patient>/<patient>-report.{md,html,pdf,json}``.
    indication : str, optional

    Returns
    -------
    markdown : str
        The report as Markdown (for the page).
    files : dict of str to pathlib.Path
        Format -> file.
    """
    from assistant.agent import write_draft
    from assistant.render import to_markdown

    # a fresh draft starts without edits, as the agent's draft_report tool does
    report, files = write_draft(ctx, (), indication)
    return to_markdown(report), files


def _find_report(answer: Answer) -> tuple[str, list[str]] | None:
    for step in reversed(answer.tool_calls):
        art = step.artifact
        if step.name in ("draft_report", "revise_report") and art is not None and \
                not step.error:
            files = [row["path"] for row in getattr(art, "table", []) if "path" in row]
            md = next((f for f in files if f.endswith(".md")), None)
            text = Path(md).read_text(encoding="utf-8") if md else ""
            return text, files
    return None


def _localized(answer: Answer) -> list[tuple[float, float]]:
    out = []
    for step in answer.tool_calls:
        if step.name == "localize" and step.artifact is not None and not step.error:
            out += [(float(r["start_s"]), float(r["end_s"])) for r in step.artifact.table]
    return out


def build_app(assistant: Assistant, *, upload_dir: Path | None = None,
              max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
              examples: Sequence[str] = EXAMPLE_QUESTIONS,
              title: str = "SleepLM sleep-study assistant") -> gr.Blocks:
    """The chat app over ``assistant``.

    Parameters
    ----------
    assistant : Assistant
        Its library is listed in the patient panel; its config names the backend shown.
    upload_dir : pathlib.Path, optional
        Where uploaded studies go (a library folder with a manifest); default
        ``<state_dir>/uploads``.
    max_upload_mb : float
        Largest accepted upload, MB.
    examples : sequence of str
        Example questions, one button each.
    title : str

    Returns
    -------
    gr.Blocks
        Launch it with :func:`serve` (or ``launch(theme=APP_THEME, css=APP_CSS,
        allowed_paths=[state_dir, upload_dir])``).
    """
    uploads = _Uploads(folder=Path(upload_dir or assistant.config.state_dir / "uploads"),
                       model_dir=assistant.library.model_dir,
                       max_bytes=int(max_upload_mb * 1e6))
    sources = _Sources(assistant, uploads)
    leaves = sends_data_off_machine(assistant.config)
    backend_line = (f"**Backend:** {describe_backend(assistant.config)}. "
                    + ("**Warning: patient data leave this machine.**" if leaves
                       else "Patient data stay on this machine."))

    # -- handlers ------------------------------------------------------------------------
    def select_patient(key: str | None, convs: dict | None):
        convs = dict(convs or {})
        try:
            bot, pid = sources.resolve(key)
            card = patient_summary(bot.context(pid)).markdown()
            history = convs.get(key) or _history_messages(bot, pid)
            convs[key] = history
            return card, history, convs, gr.update()
        except Exception as exc:  # noqa: BLE001 - shown in the page
            return "", [], convs, _warn(exc)

    def load_plots(key: str | None):
        try:
            bot, pid = sources.resolve(key)
            ctx = bot.context(pid)
            overview = str(night_overview_png(ctx))
            ev = events_in_range(ctx, EventsInput(types=_SHOWN_EVENTS, limit=500))
            choices = [(_event_label(e), str(e.id)) for e in ev.events]
            note = "" if choices else "No scored events in this night."
            return (overview, gr.update(choices=choices, value=choices[0][1] if choices
                                        else None), None, note, "")
        except Exception as exc:  # noqa: BLE001
            return None, gr.update(choices=[], value=None), None, _warn(exc), ""

    def respond(question: str, key: str | None, convs: dict | None
                ) -> Iterator[tuple[Any, ...]]:
        """Stream one answer: (chat, question box, conversations, figure, overview, report
        view, report files, status)."""
        convs = dict(convs or {})
        history = list(convs.get(key, [])) if key else []
        keep = gr.update()
        try:
            bot, pid = sources.resolve(key)
            question = (question or "").strip()
            if not question:
                raise ValueError("empty question: type a question about the night or click "
                                 "an example")
        except Exception as exc:  # noqa: BLE001 - shown in the page
            yield history, keep, convs, keep, keep, keep, keep, _warn(exc)
            return
        history.append({"role": "user", "content": question})
        convs[key] = history  # a question asked while this one streams keeps this exchange
        yield history, "", convs, keep, keep, keep, keep, ""
        index: dict[int, int] = {}
        text_at: int | None = None
        answer: Answer | None = None
        try:
            for ev in bot.stream(pid, question):
                if ev.kind == "tool_start" and ev.step is not None:
                    index[id(ev.step)] = len(history)
                    history.append(_step_message(ev.step, len(index), pending=True))
                elif ev.kind == "tool_end" and ev.step is not None:
                    _end_step(history, index, ev)
                elif ev.kind == "token":
                    if text_at is None:
                        text_at = len(history)
                        history.append({"role": "assistant", "content": ""})
                    history[text_at]["content"] += ev.text
                elif ev.kind == "answer":
                    answer = ev.answer
                yield history, "", convs, keep, keep, keep, keep, ""
            if answer is None:
                raise RuntimeError("the assistant stopped without an answer")
            final = {"role": "assistant",
                     "content": (answer.text or "(no answer text)") + answer_notes(answer)}
            if text_at is None:
                history.append(final)
            else:
                history[text_at] = final
            convs[key] = history
            figure = next((str(f.path) for f in reversed(answer.figures)
                           if f.path is not None and not f.refusal), None)
            spans = _localized(answer)
            overview = str(night_overview_png(bot.context(pid), spans)) if spans else keep
            report = _find_report(answer)
            yield (history, "", convs, figure or keep, overview,
                   report[0] if report else keep, report[1] if report else keep, "")
        except Exception as exc:  # noqa: BLE001
            convs[key] = history
            yield history, "", convs, keep, keep, keep, keep, _warn(exc)

    def draft(indication: str | None, key: str | None, convs: dict | None):
        """Draft the report directly (deterministic, no LLM call needed) and log it in the
        chat as a ``draft_report`` step."""
        convs = dict(convs or {})
        keep = gr.update()
        history = list(convs.get(key, [])) if key else []
        try:
            bot, pid = sources.resolve(key)
            note = (indication or "").strip() or None
            history.append({"role": "user", "content": "Draft the report"
                            + (f" (indication: {note})" if note else "")})
            t0 = time.perf_counter()
            text, files = draft_files(bot.context(pid), note)
            step = ToolStep(name="draft_report", args={"indication": note} if note else {},
                            content="\n".join(f"{k}: {Path(v).name}" for k, v in files.items()),
                            duration_s=time.perf_counter() - t0)
            history.append(_step_message(step, 1, pending=False))
            history.append({"role": "assistant", "content": "Draft report ready (Markdown, "
                            "HTML, PDF, JSON): see the Report tab. Ask here to revise it, "
                            "e.g. 'shorten the impression'."})
            convs[key] = history
            yield (history, keep, convs, keep, keep, text, [str(v) for v in files.values()],
                   "")
        except Exception as exc:  # noqa: BLE001 - shown in the page
            yield history, keep, convs, keep, keep, keep, keep, _warn(exc)

    def revise(edit: str | None, key: str | None, convs: dict | None):
        yield from respond(_as_edit(edit), key, convs)

    def find_in_night(query: str | None, key: str | None):
        try:
            bot, pid = sources.resolve(key)
            if not query or not query.strip():
                raise ValueError("empty search: describe what to find, e.g. 'obstructive "
                                 "apnea' or 'bursts of fast EEG'")
            ctx = bot.context(pid)
            out = localize(ctx, LocalizeInput(query=query.strip(), limit=5))
            spans = [(iv.span.start_s, iv.span.end_s) for iv in out.intervals]
            lines = [f"- {iv.span.start_clock or f'{iv.span.start_s:.0f} s'} to "
                     f"{iv.span.end_clock or f'{iv.span.end_s:.0f} s'} ({iv.span.main_stage}, "
                     f"score {iv.score:.2f})" for iv in out.intervals]
            text = (f"**{len(spans)} interval(s) for '{query.strip()}'** (shaded)\n"
                    + "\n".join(lines) if spans else out.summary())
            return str(night_overview_png(ctx, spans)), text
        except Exception as exc:  # noqa: BLE001
            return gr.update(), _warn(exc)

    def show_event(event_id: str | None, key: str | None):
        try:
            bot, pid = sources.resolve(key)
            if event_id in (None, ""):
                raise ValueError("no event chosen: pick a scored event in the list")
            ctx = bot.context(pid)
            rec = ctx.recording()
            eid = int(event_id)
            if eid not in rec.events.index:
                raise ValueError(f"event #{eid} is not in this night: pick one from the list")
            row = rec.events.loc[eid]
            onset, end = float(row["onset"]), float(row["onset"] + max(row["duration"], 1.0))
            req = SignalsInput(window=TimeSelection(start=onset, end=end), pad_s=20.0,
                               query=str(row["type"]).replace("_", " "))
            fig = signals_figure(ctx, req)
            if fig.refusal:
                fig = signals_figure(ctx, req.model_copy(update={"query": None,
                                                                 "system": "respiration"}))
            if fig.refusal or fig.path is None:
                raise ValueError(fig.refusal or "nothing to draw")
            return str(fig.path), "; ".join(fig.warnings)
        except Exception as exc:  # noqa: BLE001
            return None, _warn(exc)

    def add_study(files: list | None, patient_id: str | None, convs: dict | None):
        convs = dict(convs or {})
        pid = None
        try:
            pid = uploads.add(files or [], patient_id)
            sources.refresh_uploads()
            key = f"{_UPLOAD_SOURCE}:{pid}"
            bot, _ = sources.resolve(key)
            t0 = time.perf_counter()
            processed = bot.library.open(pid, progress=False)  # processed once, cached
            note = ""
            if not processed.meta.present and processed.facts.sections:
                note = (" SleepLM reads none of its channels in this study: only the "
                        "deterministic measurements apply.")
            elif not processed.meta.present:
                raise UploadError(
                    f"{pid}: no usable channel. None of the channels the model reads "
                    f"({', '.join(processed.channels)}) was found in the recording under a "
                    "known label, or all were flat/invalid. Check the channel labels "
                    "(e.g. 'EEG C3-M2', 'SaO2', 'Thor') and upload again.")
            card = patient_summary(bot.context(pid)).markdown()
            msg = (f"**Added:** {pid} added and processed in {time.perf_counter() - t0:.1f} s."
                   + note)
            history = _history_messages(bot, pid)
            convs[key] = history
            return (gr.update(choices=sources.choices(), value=key), card, history, convs, msg,
                    None)
        except Exception as exc:  # noqa: BLE001
            if pid is not None:
                uploads.remove(pid)
                try:
                    sources.refresh_uploads()
                except Exception:  # noqa: BLE001 - the listing stays as it was
                    logger.warning("upload folder could not be listed again after removing %s",
                                   pid)
            return gr.update(), gr.update(), gr.update(), convs, _warn(exc), None

    # -- layout --------------------------------------------------------------------------
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=CACHE_CLEANUP_S) as app:
        gr.Markdown(f"# {title}")
        gr.Markdown(NOTICE, elem_classes=["sleeplm-notice"], elem_id="notice")
        gr.Markdown(backend_line, elem_id="backend")
        status = gr.Markdown("", elem_classes=["sleeplm-status"], elem_id="status")
        convs = gr.State({})
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                patient = gr.Dropdown(choices=sources.choices(), value=None, label="Patient",
                                      info="SIMULATED example nights, your library, uploads",
                                      allow_custom_value=True, elem_id="patient")
                card = gr.Markdown("Pick a patient to see the summary of the night.",
                                   elem_classes=["sleeplm-card"], elem_id="card")
                with gr.Accordion("Add a study (EDF/BDF + optional annotations)", open=False):
                    upload = gr.File(file_count="multiple",
                                     label="EDF/BDF and annotation file, or one beat-time file "
                                           "(.npz / CSV of beat times or RR intervals)",
                                     file_types=[*_SIGNAL_SUFFIXES, *_ANNOTATION_SUFFIXES, ".npz"],
                                     elem_id="upload")
                    upload_id = gr.Textbox(label="Patient id (optional)",
                                           placeholder="from the file name", max_lines=1,
                                           elem_id="upload-id")
                    upload_btn = gr.Button("Add study", elem_id="add-study")
                    gr.Markdown(f"Up to {max_upload_mb:g} MB; the file stays on this machine.")
            with gr.Column(scale=3), gr.Tabs():
                    with gr.Tab("Chat", id="chat"):
                        chatbot = gr.Chatbot(label="Conversation", height=520,
                                             elem_id="chatbot", buttons=["copy"],
                                             feedback_options=None)
                        with gr.Row():
                            box = gr.Textbox(placeholder="Ask about this night, e.g. 'what is "
                                             "the AHI?'", show_label=False, scale=5,
                                             max_lines=3, elem_id="question")
                            send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                        gr.Markdown("**Examples**")
                        with gr.Row():
                            example_btns = [gr.Button(q, size="sm", elem_classes=["example"])
                                            for q in examples]
                        chat_figure = gr.Image(label="Latest figure from the chat",
                                               type="filepath", interactive=False,
                                               elem_id="chat-figure")
                    with gr.Tab("Plots", id="plots"):
                        overview = gr.Image(label="Night overview: hypnogram, events, SpO2",
                                            type="filepath", interactive=False,
                                            elem_id="overview")
                        with gr.Row():
                            find_box = gr.Textbox(label="Find in the night (localize)",
                                                  placeholder="e.g. obstructive apnea",
                                                  scale=4, max_lines=1, elem_id="find")
                            find_btn = gr.Button("Find and shade", scale=1, elem_id="find-btn")
                        found = gr.Markdown("", elem_id="found")
                        with gr.Row():
                            event = gr.Dropdown(label="Scored event", choices=[], scale=4,
                                                allow_custom_value=True, elem_id="event")
                            event_btn = gr.Button("Show signals", scale=1,
                                                  elem_id="event-btn")
                        signals = gr.Image(label="Signals around the event (event shaded)",
                                           type="filepath", interactive=False,
                                           elem_id="signals")
                        signals_note = gr.Markdown("")
                    with gr.Tab("Report", id="report"):
                        with gr.Row():
                            indication = gr.Textbox(label="Indication (optional)", scale=4,
                                                    max_lines=1, elem_id="indication")
                            draft_btn = gr.Button("Draft report", variant="primary", scale=1,
                                                  elem_id="draft")
                        with gr.Row():
                            edit_box = gr.Textbox(label="Revise (goes through the chat)",
                                                  placeholder="e.g. shorten the impression",
                                                  scale=4, max_lines=1, elem_id="edit")
                            revise_btn = gr.Button("Revise", scale=1, elem_id="revise")
                        report_files = gr.File(label="Download (Markdown, HTML, PDF, JSON)",
                                               file_count="multiple", interactive=False,
                                               elem_id="report-files")
                        report_view = gr.Markdown("No report drafted yet.",
                                                  elem_id="report-view")

        chat_outputs = [chatbot, box, convs, chat_figure, overview, report_view, report_files,
                        status]

        patient.change(select_patient, [patient, convs], [card, chatbot, convs, status],
                       api_name="select_patient").then(
            load_plots, [patient], [overview, event, signals, signals_note, found],
            api_name="load_plots")
        send.click(respond, [box, patient, convs], chat_outputs, api_name="ask")
        box.submit(respond, [box, patient, convs], chat_outputs, api_name=False)
        for b in example_btns:
            b.click(respond, [b, patient, convs], chat_outputs, api_name=False)
        draft_btn.click(draft, [indication, patient, convs], chat_outputs,
                        api_name="draft_report")
        revise_btn.click(revise, [edit_box, patient, convs], chat_outputs,
                         api_name="revise_report")
        find_btn.click(find_in_night, [find_box, patient], [overview, found], api_name="localize")
        find_box.submit(find_in_night, [find_box, patient], [overview, found], api_name=False)
        event_btn.click(show_event, [event, patient], [signals, signals_note],
                        api_name="show_event")
        upload_btn.click(add_study, [upload, upload_id, convs],
                         [patient, card, chatbot, convs, status, upload], api_name="add_study")
    return app


def _as_edit(edit: str | None) -> str:
    text = (edit or "").strip()
    if text and not any(w in text.lower() for w in ("report", "impression", "recommendation",
                                                     "section", "draft")):
        text += " in the report"
    return text


def _warm_up(assistant: Assistant) -> None:
    """Load what the first answer needs (the offline router's encoder) ahead of time."""
    try:
        seconds = assistant.warm_up()
        logger.info("app: assistant warmed up in %.1f s", seconds)
    except Exception as exc:  # noqa: BLE001 - the first answer then loads it
        logger.warning("app: warm-up failed (%s); the first answer loads what it needs", exc)


def serve(assistant: Assistant, *, host: str = "127.0.0.1", port: int | None = 7860,
          auth: tuple[str, str] | None = None, upload_dir: Path | None = None,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, prevent_thread_lock: bool = False,
          quiet: bool = False, warm: bool = True) -> tuple[gr.Blocks, str]:
    """Build the app and launch it (no share link, local fonts, analytics off).

    Parameters
    ----------
    assistant : Assistant
    host : str
        Interface to bind; loopback by default.
    port : int or None
        TCP port (None: the first free one from 7860).
    auth : (str, str), optional
        User name and password asked by the page.
    upload_dir : pathlib.Path, optional
        See :func:`build_app`.
    max_upload_mb : float
    prevent_thread_lock : bool
        Return at once, the server running in a thread (tests).
    quiet : bool
    warm : bool
        Load the offline planner's sentence encoder in the background now, so that the
        first answer does not wait for it.

    Returns
    -------
    app : gr.Blocks
    url : str
        The local address of the page.
    """
    upload_dir = Path(upload_dir or assistant.config.state_dir / "uploads")
    if warm:
        threading.Thread(target=_warm_up, args=(assistant,), name="sleeplm-warm-up",
                         daemon=True).start()
    app = build_app(assistant, upload_dir=upload_dir, max_upload_mb=max_upload_mb)
    app.queue(default_concurrency_limit=1)
    allowed = [str(assistant.config.state_dir.resolve()), str(upload_dir.resolve())]
    _, url, _ = app.launch(server_name=host, server_port=port, auth=auth, share=False,
                           prevent_thread_lock=prevent_thread_lock, quiet=quiet,
                           inbrowser=False, show_error=False, ssr_mode=False, mcp_server=False,
                           enable_monitoring=False, pwa=False, theme=APP_THEME, css=APP_CSS,
                           allowed_paths=allowed,
                           max_file_size=int(2 * max_upload_mb * 1e6) + 1_000_000,
                           footer_links=[])
    return app, url
