"""The deterministic facts a report needs: clinical sections and scored events.

Every number comes from :mod:`sleeplm.clinical` (cached with the processed patient as its
:class:`~sleeplm.clinical.summary.ClinicalSummary`) or from the recording's scored events table,
as a :class:`~sleeplm.clinical.measure.Measure` (value, unit, evidence epochs/events/intervals,
reason) or an event with its onset, duration, clock time, epoch and stage. A section the night
cannot support is listed as unavailable with the reason, never as zero.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from sleeplm.clinical.detectors import is_automatic
from sleeplm.clinical.measure import Measure
from sleeplm.clinical.summary import SECTIONS
from sleeplm.recording import EventType
from tools.common import (
    Span,
    TimeSelection,
    clock_of,
    recording_start,
    resolve_selection,
    stage_table,
)
from tools.context import ToolContext
from tools.errors import UnknownEventTypeError

__all__ = [
    "DenseWindow",
    "EventItem",
    "EventsInput",
    "EventsOutput",
    "FactsInput",
    "FactsOutput",
    "SectionName",
    "densest_window",
    "events_in_range",
    "parse_event_types",
    "point_evidence",
    "report_facts",
    "respiratory_summary",
    "sleep_architecture",
]

SectionName = Literal["architecture", "respiratory", "oximetry", "arousals", "limb_movements",
                      "heart_rate"]
#: Signals whose absence explains missing events of a type.
_EVENT_CHANNELS: dict[str, tuple[str, ...]] = {
    "desaturation": ("SPO2",),
    "spindle": ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O"),
    "k_complex": ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O"),
    "slow_wave": ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O"),
    "arousal": ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O"),
    "rapid_eye_movement": ("EOG_L", "EOG_R"),
    "limb_movement": ("EMG_LEG", "EMG_LEG_R"),
    "plm": ("EMG_LEG", "EMG_LEG_R"),
}


#: Event types that studies rarely score and YASA detects (see :func:`_detect`).
_DETECTED = ("spindle", "rapid_eye_movement")


def _detect(rec: Any, etype: str) -> tuple[pd.DataFrame, str]:
    """Automatic detections of ``etype`` when the study scores none, with a note saying so
    (or why detection could not run)."""
    from sleeplm.clinical.detectors import (REM_SOURCE, SPINDLE_SOURCE, DetectorError,
                                            detect_rapid_eye_movements, detect_spindles)

    word = "spindles" if etype == "spindle" else "rapid eye movements"
    try:
        if etype == "spindle":
            found, source = detect_spindles(rec), SPINDLE_SOURCE
        else:
            found, source = detect_rapid_eye_movements(rec), REM_SOURCE
    except DetectorError as exc:
        return pd.DataFrame(columns=rec.events.columns), (
            f"no {word} are scored in this study, and automatic detection could not run: {exc}")
    return found, (f"no {word} are scored in this study: the {word} listed are {source}, "
                   f"{len(found)} in the whole night, for review")


class FactsInput(BaseModel):
    """Arguments of :func:`report_facts`.

    Attributes
    ----------
    sections : list of str
        Report sections (architecture, respiratory, oximetry, arousals, limb_movements,
        heart_rate); empty = all.
    """

    model_config = ConfigDict(extra="forbid")

    sections: list[SectionName] = Field(default_factory=list,
                                        description="report sections; empty = all")


class FactsOutput(BaseModel):
    """Clinical numbers of the current patient.

    Attributes
    ----------
    patient : str
    sections : dict of str to list of Measure
        Each measure with value, unit, evidence (epochs, event ids, intervals) and reason.
    unavailable : dict of str to str
        Sections asked for that this night cannot support, with why.
    findings : dict of str to str
        Rule-based conclusions (e.g. OSA severity).
    stage_epochs : dict of str to int
        Epochs per scored stage (architecture only).
    index_basis : str
        What the per-hour indices are per (e.g. total sleep time).
    simulated : bool or None
    notes : list of str
    disclaimer : str
    """

    patient: str
    sections: dict[str, list[Measure]] = Field(default_factory=dict)
    unavailable: dict[str, str] = Field(default_factory=dict)
    findings: dict[str, str] = Field(default_factory=dict)
    stage_epochs: dict[str, int] = Field(default_factory=dict)
    index_basis: str = ""
    simulated: bool | None = None
    notes: list[str] = Field(default_factory=list)
    disclaimer: str = ""

    def summary(self) -> str:
        """A short text for the LLM (every number with its unit). The index basis is said as
        the whole night's: "indices per hour of total sleep time" was read by a 1.5 B model
        as "107 arousals in the first hour of total sleep time"."""
        lines = [f"Patient {self.patient}" + (" (SIMULATED night)" if self.simulated else "")
                 + f"; each index is events/h over the whole night's {self.index_basis}."]
        for key, measures in self.sections.items():
            lines.append(f"{SECTIONS[key][0]}:")
            for m in measures:
                ev = f" [epochs {_runs(m)}{_point_note(m)}]" if m.evidence.epochs else (
                    f" [{len(m.evidence.event_ids)} events]" if m.evidence.event_ids else "")
                lines.append(f"- {m.label}: {m.format()}{ev}")
        lines += [f"{SECTIONS[k][0]} not available: {v}" for k, v in self.unavailable.items()]
        lines += [f"{k}: {v}" for k, v in self.findings.items()]
        return "\n".join(lines)


def point_evidence(m: Measure) -> str:
    """" [epochs 95: lowest valid 1-s SpO2 during sleep, at 2855 s (23:03:35)]" for a measure
    that cites one or two single epochs with a note (the SpO2 nadir, the sleep onset, the REM
    latency), as :meth:`FactsOutput.summary` writes it; "" for any other (a measure over runs
    of epochs is given by its value alone)."""
    note = _point_note(m)
    return f" [epochs {_runs(m)}{note}]" if note else ""


def _point_note(m: Measure) -> str:
    """": sleep onset and first R epoch" after the one or two single epochs a measure cites, so
    that the epochs of the sleep onset and of the REM latency say which is which (the 1.5 B
    model answered "when did they first hit REM?" with the sleep-onset epoch)."""
    ep = m.evidence.epochs
    return f": {m.evidence.note}" if m.evidence.note and len(ep) <= 2 \
        and all(a == b for a, b in ep) else ""


def _runs(m: Measure, limit: int = 3) -> str:
    runs = [f"{a}-{b}" if a != b else f"{a}" for a, b in m.evidence.epochs[:limit]]
    more = len(m.evidence.epochs) - limit
    return ", ".join(runs) + (f" and {more} more runs" if more > 0 else "")


def report_facts(ctx: ToolContext, request: FactsInput | None = None) -> FactsOutput:
    """Clinical sections of the current patient, from its cached clinical summary.

    Parameters
    ----------
    ctx : ToolContext
    request : FactsInput, optional
        Which sections (all by default).

    Returns
    -------
    FactsOutput
    """
    p = ctx.processed()
    facts = p.facts
    wanted = list(request.sections) if request and request.sections else list(SECTIONS)
    out = FactsOutput(patient=p.patient, index_basis=facts.index_basis,
                      simulated=p.study.simulated, notes=list(facts.notes),
                      disclaimer=facts.disclaimer)
    for key in wanted:
        if key in facts.sections:
            out.sections[key] = list(facts.sections[key])
        elif key in facts.unavailable:
            out.unavailable[key] = facts.unavailable[key]
        else:
            out.unavailable[key] = "not computed for this night"
    if "respiratory" in out.sections:
        out.findings = dict(facts.findings)
    if "architecture" in wanted:
        out.stage_epochs = stage_table(p.stages)
    return out


def sleep_architecture(ctx: ToolContext) -> FactsOutput:
    """Sleep architecture (TIB, TST, WASO, efficiency, latencies, stage minutes and %)."""
    return report_facts(ctx, FactsInput(sections=["architecture"]))


def respiratory_summary(ctx: ToolContext) -> FactsOutput:
    """Respiratory events (AHI by rule, apnea types, positional/REM) and oximetry (ODI, T90,
    nadir), each unavailable with its reason when the night cannot support it."""
    return report_facts(ctx, FactsInput(sections=["respiratory", "oximetry"]))


# ------------------------------------------------------------------------------- events


def parse_event_types(types: list[str]) -> list[str]:
    """Canonical :class:`~sleeplm.recording.EventType` values of user wording.

    ``"obstructive apneas"`` -> ``obstructive_apnea``; ``"apnea"``/``"apneas"`` -> every apnea
    type; empty -> every type.

    Raises
    ------
    UnknownEventTypeError
        A type that no EventType names.
    """
    values = {e.value for e in EventType}
    out: list[str] = []
    for t in types:
        k = re.sub(r"[\s-]+", "_", t.strip().lower()).replace("apnoea", "apnea")
        if not k:
            continue
        if k in ("apnea", "apneas"):
            out += [e.value for e in EventType.apneas()]
            continue
        if k not in values and k.endswith("s") and k[:-1] in values:
            k = k[:-1]
        if k in ("desat", "desats", "desaturations"):
            k = "desaturation"
        if k not in values:
            raise UnknownEventTypeError(f"unknown event type {t!r}: use one of "
                                        f"{', '.join(sorted(values))} (or 'apnea' for all "
                                        "apnea types)")
        out.append(k)
    return list(dict.fromkeys(out))


#: How a list of events is ordered: by onset, or the most extreme first.
EventOrder = Literal["time", "longest", "shortest", "deepest"]


class EventsInput(BaseModel):
    """Arguments of :func:`events_in_range`.

    Attributes
    ----------
    types : list of str
        Event types (e.g. ``["obstructive_apnea", "hypopnea"]``; ``"apnea"`` for all apneas);
        empty = all.
    within : TimeSelection or None
        Part of the night (default: all).
    limit : int
        At most this many events listed (all are counted).
    order : {"time", "longest", "shortest", "deepest"}
        Listed in time order, or the longest, shortest or deepest (lowest SpO2 nadir, as
        scored) first: "the longest apnea" is then the first event listed, whatever the
        limit.
    densest_window_min : float or None
        Also find the window of this many minutes holding the most event onsets ("the
        densest cluster of desaturations"), over all the events matched.
    """

    model_config = ConfigDict(extra="forbid")

    types: list[str] = Field(default_factory=list, description="event types; empty = all")
    within: TimeSelection | None = Field(default=None, description="part of the night")
    limit: int = Field(default=100, ge=1, le=5000, description="events listed at most")
    order: EventOrder = Field(default="time", description="time, or longest/shortest/deepest "
                                                          "(lowest SpO2) first")
    densest_window_min: float | None = Field(
        default=None, ge=1.0, le=180.0, description="also find the window of this many minutes "
                                                    "with the most events (a cluster)")


class EventItem(BaseModel):
    """One scored event.

    Attributes
    ----------
    id : int
        Row of the recording's events table (the id that clinical evidence cites).
    type, label : str
    onset_s, duration_s, end_s : float
        Seconds (onset from the recording start).
    clock : str
        Wall-clock onset ``"HH:MM:SS"``.
    epoch : int
        Epoch of the onset (-1 outside the hypnogram).
    stage : str
    channel : str or None
    attributes : dict
        E.g. ``spo2_nadir`` (%), as scored.
    """

    id: int
    type: str
    label: str
    onset_s: float
    duration_s: float
    end_s: float
    clock: str = ""
    epoch: int
    stage: str
    channel: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    @property
    def automatic(self) -> bool:
        """Whether the event was detected automatically (YASA's detectors), not scored by a
        person (:func:`sleeplm.clinical.detectors.is_automatic`)."""
        return is_automatic(self.label)

    def describe(self) -> str:
        """The event in words: "mixed apnea at 22:44:03 (epoch 56, N2), 18.4 s" (with its
        scored SpO2 nadir when it has one)."""
        stage = {"W": "wake", "R": "REM"}.get(self.stage, self.stage)
        nadir = (self.attributes or {}).get("spo2_nadir")
        return (f"{self.type.replace('_', ' ')} at {self.clock} (epoch {self.epoch}, {stage}), "
                f"{self.duration_s:.1f} s" + (f", SpO2 nadir {nadir:g} %" if nadir is not None
                                              else ""))


class DenseWindow(BaseModel):
    """The window of a given length holding the most event onsets.

    Attributes
    ----------
    minutes : float
        The window's length.
    n_events : int
        Onsets in it.
    start_s, end_s : float
        From the first onset in it to the window's end, seconds of the recording.
    start_clock, end_clock : str
    first_epoch, last_epoch : int
        Epochs of its first and last onsets.
    event_ids : list of int
        The events in it.
    """

    minutes: float
    n_events: int
    start_s: float
    end_s: float
    start_clock: str = ""
    end_clock: str = ""
    first_epoch: int
    last_epoch: int
    event_ids: list[int] = Field(default_factory=list)

    def describe(self) -> str:
        """"Densest 10-min window: 14 events from 22:29:18 to 22:39:18 (epochs 16-35)"."""
        when = (f"from {self.start_clock} to {self.end_clock}" if self.start_clock
                else f"from {self.start_s:.0f} s to {self.end_s:.0f} s")
        return (f"Densest {self.minutes:g}-min window: {self.n_events} events {when} (epochs "
                f"{self.first_epoch}-{self.last_epoch})")


def densest_window(onsets_s: np.ndarray, window_s: float) -> tuple[int, int]:
    """The run ``[i, j)`` of sorted onsets with the most within ``window_s`` of its first
    (the earliest such run on ties).

    Parameters
    ----------
    onsets_s : numpy.ndarray
        Sorted onsets, seconds.
    window_s : float

    Returns
    -------
    (int, int)
    """
    best, bi, j = 0, (0, 0), 0
    for i in range(len(onsets_s)):
        j = max(j, i)
        while j < len(onsets_s) and onsets_s[j] < onsets_s[i] + window_s:
            j += 1
        if j - i > best:
            best, bi = j - i, (i, j)
    return bi


class EventsOutput(BaseModel):
    """Result of :func:`events_in_range`.

    Attributes
    ----------
    patient : str
    types : list of str
        The canonical types asked for (empty = all).
    span : Span
        The part of the night searched.
    counts : dict of str to int
        Events per type in the span (all of them, not only those listed).
    n_total : int
    events : list of EventItem
        In the order asked (``order``), at most ``limit``.
    order : str
        ``EventsInput.order``: ``"time"``, or which extreme comes first.
    densest : DenseWindow or None
        The window of ``densest_window_min`` minutes with the most onsets, when asked.
    warnings : list of str
    """

    patient: str
    types: list[str]
    span: Span
    counts: dict[str, int] = Field(default_factory=dict)
    n_total: int = 0
    events: list[EventItem] = Field(default_factory=list)
    order: EventOrder = "time"
    densest: DenseWindow | None = None
    warnings: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        """A short text for the LLM."""
        kinds = ", ".join(self.types) or "all types"
        lines = [f"{self.n_total} scored event(s) of {kinds} in {self.span.describe()}"
                 + (": " + ", ".join(f"{k} {v}" for k, v in self.counts.items())
                    if self.counts else ".")]
        if self.densest is not None:
            lines.append(self.densest.describe())
        if self.order != "time" and self.events:
            lines.append(f"Listed {self.order} first.")
        for e in self.events[:20]:
            lines.append(f"- #{e.id} {e.type} at {e.clock or f'{e.onset_s:.0f} s'} "
                         f"(epoch {e.epoch}, {e.stage}), {e.duration_s:.0f} s")
        if len(self.events) > 20:
            lines.append(f"... {len(self.events) - 20} more in the artifact")
        lines += [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def events_in_range(ctx: ToolContext, request: EventsInput) -> EventsOutput:
    """Scored events of some types in part of the current night.

    Parameters
    ----------
    ctx : ToolContext
    request : EventsInput

    Returns
    -------
    EventsOutput
        Events with id, onset/duration (s), clock time, epoch and stage; counts per type; a
        warning when the night has no scored events at all or lacks the channel such events
        are scored from.

    Raises
    ------
    UnknownEventTypeError, TimeRangeError
    """
    p = ctx.processed()
    types = parse_event_types(request.types)
    sel = resolve_selection(p, request.within)
    rec = ctx.recording()
    t0 = recording_start(p)
    ev = rec.events_of(*types) if types else rec.events
    detected_notes: list[str] = []
    next_id = len(rec.events)  # detections are not rows of the events table: ids after it
    for t in _DETECTED:
        if t in types and rec.events_of(t).empty:
            found, note = ctx.memo(("detected", ctx.require_patient(), t),
                                   lambda t=t: _detect(rec, t))
            detected_notes.append(note)
            if len(found):
                found = found.copy()
                found.index = range(next_id, next_id + len(found))
                next_id += len(found)
                ev = pd.concat([ev, found]).sort_values("onset", kind="stable")
    s0, s1 = sel.span.start_s, sel.span.end_s
    ev = _ordered(ev[(ev["onset"] + ev["duration"] > s0) & (ev["onset"] < s1)], request.order)
    out = EventsOutput(patient=p.patient, types=types, span=sel.span, order=request.order,
                       counts=dict(Counter(str(t) for t in ev["type"])), n_total=len(ev))
    if len(ev):
        epochs = rec.epoch_index(ev["onset"].to_numpy())
        stages = rec.stage_at(ev["onset"].to_numpy())
        for (eid, row), epoch, stage in zip(ev.iloc[:request.limit].iterrows(), epochs, stages):
            out.events.append(EventItem(
                id=int(eid), type=str(row["type"]), label=str(row["label"]),
                onset_s=float(row["onset"]), duration_s=float(row["duration"]),
                end_s=float(row["onset"] + row["duration"]), clock=clock_of(t0, row["onset"]),
                epoch=int(epoch), stage=str(stage),
                channel=None if row["channel"] is None or (isinstance(row["channel"], float))
                else str(row["channel"]),
                attributes=_jsonable(dict(row["attributes"] or {}))))
    if len(rec.events) == 0:
        out.warnings.append("this night has no scored events at all (no annotations were "
                            "given): zero events here does not mean none happened")
    present = set(rec.signals)
    for t in types:
        chans = _EVENT_CHANNELS.get(t)
        if chans and not (present & set(chans)) and out.counts.get(t, 0) == 0:
            out.warnings.append(f"no {t} events, and the night has no {' or '.join(chans)} "
                                f"channel to score them from: absence is not evidence here")
    out.warnings += detected_notes
    if request.densest_window_min is not None and len(ev):
        by_time = ev.sort_values("onset", kind="stable")
        onsets = by_time["onset"].to_numpy(dtype=float)
        i, j = densest_window(onsets, request.densest_window_min * 60.0)
        start_s, end_s = float(onsets[i]), float(onsets[i]) + request.densest_window_min * 60.0
        ep = rec.epoch_index(onsets[[i, j - 1]])
        out.densest = DenseWindow(minutes=request.densest_window_min, n_events=j - i,
                                  start_s=start_s, end_s=end_s, start_clock=clock_of(t0, start_s),
                                  end_clock=clock_of(t0, end_s), first_epoch=int(ep[0]),
                                  last_epoch=int(ep[1]),
                                  event_ids=[int(x) for x in by_time.index[i:j]])
    if out.n_total > len(out.events):
        which = "first" if request.order == "time" else request.order
        out.warnings.append(f"{out.n_total} events match; the {which} {len(out.events)} are "
                            "listed")
    return out


def _ordered(ev: pd.DataFrame, order: str) -> pd.DataFrame:
    """Events in ``order`` (:data:`EventOrder`); ties keep their time order. ``"deepest"``
    ranks by the scored SpO2 nadir (``attributes['spo2_nadir']``, %); events without one
    come last."""
    if order == "time" or ev.empty:
        return ev
    if order in ("longest", "shortest"):
        key = ev["duration"].to_numpy(dtype=float)
        key = -key if order == "longest" else key
    else:
        key = np.array([float((a or {}).get("spo2_nadir", np.inf)) if isinstance(a, dict)
                        else np.inf for a in ev["attributes"]])
    return ev.iloc[np.argsort(key, kind="stable")]
