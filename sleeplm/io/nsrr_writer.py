"""Write stages and scored events as an NSRR XML annotation file.

The vocabulary is NSRR's (``EventType``/``EventConcept`` pairs as in the SHHS/MESA/MrOS
"-nsrr.xml" files), so that :func:`sleeplm.io.annotations.read_nsrr_xml` and other NSRR tools
read it back.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd

from sleeplm.recording import Recording

__all__ = ["write_nsrr_xml", "nsrr_concept"]

_STAGES = {"W": "Wake|0", "N1": "Stage 1 sleep|1", "N2": "Stage 2 sleep|2",
           "N3": "Stage 3 sleep|3", "R": "REM sleep|5", "UNS": "Unscored|9"}
_RESP = "Respiratory|Respiratory"
_AROUSAL_CONCEPTS = {
    "respiratory": "Arousal resulting from respiratory effort|Arousal (ARES)",
    "spontaneous": "Spontaneous arousal|Arousal (API)",
    "limb": "Arousal resulting from limb movement|Arousal (PLM)",
}
_SIDES = {"left": "Left", "right": "Right"}


def nsrr_concept(etype: str, attributes: dict) -> tuple[str, str]:
    """NSRR (EventType, EventConcept) of a canonical event type and its attributes."""
    if etype == "obstructive_apnea":
        return _RESP, "Obstructive apnea|Obstructive Apnea"
    if etype == "central_apnea":
        return _RESP, "Central apnea|Central Apnea"
    if etype == "mixed_apnea":
        return _RESP, "Mixed apnea|Mixed Apnea"
    if etype == "hypopnea":
        return _RESP, "Hypopnea|Hypopnea"
    if etype == "desaturation":
        return _RESP, "SpO2 desaturation|SpO2 desaturation"
    if etype == "arousal":
        return "Arousals|Arousals", _AROUSAL_CONCEPTS.get(attributes.get("cause", ""),
                                                          "Arousal|Arousal ()")
    if etype in ("limb_movement", "plm"):
        side = _SIDES.get(attributes.get("side", ""), "Left")
        if etype == "plm":
            return "Limb Movement|Limb Movement", f"Periodic leg movement - {side.lower()}|PLM ({side})"
        return "Limb Movement|Limb Movement", f"Limb movement - {side.lower()}|Limb Movement ({side})"
    if etype == "position_change":
        pos = str(attributes.get("position", "unknown"))
        return "Position|Position", f"Body position change to {pos}|POSITION-{pos.upper()}"
    if etype == "artifact":
        if attributes.get("channel") == "SPO2" or attributes.get("kind") == "spo2_dropout":
            return "Artifact|Artifact", "SpO2 artifact|SpO2 artifact"
        return "Artifact|Artifact", "Signal artifact|SIGNAL-ARTIFACT"
    return "Misc|Misc", f"{etype}|{etype}"


def _event_xml(etype: str, concept: str, start: float, duration: float, extra: str = "") -> str:
    return (f"<ScoredEvent><EventType>{escape(etype)}</EventType>"
            f"<EventConcept>{escape(concept)}</EventConcept><Start>{start:.3f}</Start>"
            f"<Duration>{duration:.3f}</Duration>{extra}</ScoredEvent>")


def write_nsrr_xml(rec: Recording, path: str | os.PathLike,
                   events: pd.DataFrame | None = None) -> Path:
    """Write ``rec``'s stages and events (or ``events``) as NSRR XML.

    Parameters
    ----------
    rec : Recording
    path : path-like
        Destination, by NSRR convention ``<study>-nsrr.xml``.
    events : pandas.DataFrame, optional
        Events to write instead of ``rec.events``.
    """
    path = Path(path)
    parts = ["<?xml version='1.0' encoding='UTF-8'?>", "<PSGAnnotation>",
             "<SoftwareVersion>sleeplm</SoftwareVersion>",
             f"<EpochLength>{rec.epoch_sec:g}</EpochLength>", "<ScoredEvents>"]
    clock = rec.info.start_time.strftime("%d.%m.%y %H.%M.%S") if rec.info.start_time else ""
    parts.append(_event_xml("", "Recording Start Time", 0.0, rec.duration,
                            f"<ClockTime>{clock}</ClockTime>" if clock else ""))
    if rec.stages is not None:
        st = rec.stages
        change = np.flatnonzero(np.r_[True, st[1:] != st[:-1]])
        for a, b in zip(change, np.r_[change[1:], st.size]):
            parts.append(_event_xml("Stages|Stages", _STAGES[st[a]],
                                    rec.stage_onset + a * rec.epoch_sec, (b - a) * rec.epoch_sec))
    for row in (rec.events if events is None else events).itertuples():
        attrs = dict(row.attributes or {})
        if row.channel:
            attrs.setdefault("channel", row.channel)
        etype, concept = nsrr_concept(row.type, attrs)
        extra = ""
        if row.type == "desaturation" and "spo2_nadir" in attrs:
            extra += f"<SpO2Nadir>{attrs['spo2_nadir']:g}</SpO2Nadir>"
        if row.type == "desaturation" and "spo2_baseline" in attrs:
            extra += f"<SpO2Baseline>{attrs['spo2_baseline']:g}</SpO2Baseline>"
        if row.channel:
            extra += f"<SignalLocation>{escape(str(row.channel))}</SignalLocation>"
        parts.append(_event_xml(etype, concept, row.onset, row.duration, extra))
    parts += ["</ScoredEvents>", "</PSGAnnotation>"]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
