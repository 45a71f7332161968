"""Read a study (signal file plus annotations) into a :class:`~sleeplm.recording.Recording`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np

from sleeplm._logging import logger
from sleeplm.errors import RecordingFileError
from sleeplm.io.channels import (
    decode_position,
    decode_position_angle,
    detect_cohort,
    is_angle_channel,
    unit_scale,
)
from sleeplm.io import beats
from sleeplm.io.edf import calibration_problem, parse_tals, read_edf_header, read_edf_signals
from sleeplm.io.montage import SYSTEM_POSITION_CODING, ChannelSource, resolve_montage
from sleeplm.recording import Recording, RecordingInfo, Signal

__all__ = ["read_recording", "SIGNAL_SUFFIXES", "HYPNOGRAM_SUFFIXES"]

SIGNAL_SUFFIXES = (".edf", ".bdf", ".rec", ".edf+", ".bdf+")
HYPNOGRAM_SUFFIXES = (".txt", ".csv", ".tsv", ".xml", ".hyp")


def _patient_fields(header_patient: str, fallback: str) -> dict:
    """Patient id, sex and age from an EDF(+) patient field.

    EDF+ subfields are "code sex birthdate name"; Sleep-EDF writes e.g. "X F X Female_33yr".
    """
    parts = header_patient.split()
    info: dict = {"patient_id": fallback}
    if len(parts) >= 2 and parts[1].upper() in ("M", "F", "X"):
        if parts[0] not in ("X", ""):
            info["patient_id"] = parts[0]
        if parts[1].upper() in ("M", "F"):
            info["sex"] = parts[1].upper()
    m = re.search(r"(\d{1,3})\s*yr", header_patient, re.I)
    if m and 0 <= int(m.group(1)) <= 130:
        info["age"] = float(m.group(1))
    return info


def read_recording(
    path: str | os.PathLike,
    *,
    annotations: str | os.PathLike | Literal["auto"] | None = "auto",
    channels: Sequence[str] | None = None,
    channel_aliases: Mapping[str, str] | None = None,
    cohort: str | Literal["auto"] | None = "auto",
    position_coding: str | Mapping[int, str] | None = None,
    angle_coding: str | None = None,
    include_unmapped: bool = True,
    include_auxiliary: bool = False,
    allow_truncated: bool = False,
    on_overflow: Literal["raise", "trim"] = "raise",
    progress: bool = False,
) -> Recording:
    """Read a PSG study into a Recording.

    Parameters
    ----------
    path : path-like
        An EDF, EDF+ or BDF signal file; a hypnogram alone (CSV/TXT, NSRR/Profusion XML),
        which gives a Recording without signals; or a beat series (``.npz`` with
        ``beat_time_s``, or a CSV/TXT whose header names a beat-time or RR column), which gives
        a heart-rate study (:func:`sleeplm.io.beats.read_beats`).
    annotations : path-like, "auto" or None
        Annotation file (Sleep-EDF hypnogram EDF+, NSRR XML, Profusion XML, CSV/TXT). "auto"
        looks next to the signal file (see :func:`sleeplm.io.annotations.find_annotation_file`);
        annotations embedded in an EDF+ file are always read.
    channels : sequence of str, optional
        Canonical channels (or file labels) to keep; the others are not read at all.
    channel_aliases : mapping, optional
        Extra ``{file label: canonical channel}`` entries, which win over the built-in table.
    cohort : str, "auto" or None
        Cohort-specific label meanings and position coding ("shhs", "mesa", "mros", "cfs",
        "sleep-edf"); "auto" guesses from the file name.
    position_coding : str or mapping, optional
        How the POSITION channel codes positions; defaults to the cohort's, else "generic".
    angle_coding : str, optional
        How a position channel in degrees (Nox ``PosAngle``) codes positions: a name in
        :data:`sleeplm.io.channels.ANGLE_CODINGS`. Default: ``"nox"``, checked against the
        file's own left/right position markers when it has them (sides swapped if they
        disagree, and the reading report says so).
    include_unmapped : bool
        Keep channels that map to no canonical name, under their (sanitised) label.
    include_auxiliary : bool
        Read the auxiliary channels (impedance, battery, light, audio level, accelerometer,
        status) into ``Recording.auxiliary``; by default they are listed in the reading report
        and not read.
    allow_truncated : bool
        Read the complete records of a file shorter than its header says, instead of raising.
    on_overflow : {"raise", "trim"}
        What to do with scored stages/events that run past the end of the signals.
    progress : bool
        Show a progress bar while reading data records.

    Returns
    -------
    Recording
        With ``channel_report``: for every channel of the file, what it was taken as and why
        (:meth:`Recording.reading_report`; the conventions are in docs/VENDORS.md).
    """
    from sleeplm.io import annotations as ann_io  # heavy (mne) import on demand

    path = Path(path)
    if path.suffix.lower() in beats.BEAT_SUFFIXES or (
            path.suffix.lower() in (".csv", ".txt", ".tsv") and beats.looks_like_beat_table(path)):
        return beats.read_beats(path)
    if path.suffix.lower() in HYPNOGRAM_SUFFIXES:
        ann = ann_io.read_annotations(path)
        rec = Recording(info=RecordingInfo(patient_id=path.stem, source=path.name))
        return ann_io.apply_annotations(rec, ann, on_overflow=on_overflow)

    header = read_edf_header(path, allow_truncated=allow_truncated)
    angle_coding_given = angle_coding is not None
    angle_coding = angle_coding or "nox"
    if cohort == "auto":
        cohort = detect_cohort(path.name)
    wanted = set(channels) if channels else None

    notes = list(header.notes)
    sources = [ChannelSource(sig.index, sig.label, sig.unit, header.sfreq(sig))
               for sig in header.signals if not sig.is_annotation]
    mont = resolve_montage(sources, cohort=cohort, user_aliases=channel_aliases,
                           recording_field=header.recording, include_unmapped=include_unmapped,
                           include_auxiliary=include_auxiliary, wanted=wanted)
    coding = position_coding or (cohort if cohort in ("shhs", "mesa", "mros", "cfs") else
                                 SYSTEM_POSITION_CODING.get(mont.system or "", "generic"))
    report = list(mont.entries)  # one per source in file order, then one per derivation
    pos = {s.index: k for k, s in enumerate(sources)}
    pos_derived = {d.label: len(sources) + k for k, d in enumerate(mont.derivations)}
    for idx in sorted(mont.inputs):
        sig = header.signals[idx]
        problem = calibration_problem(sig)
        if problem:
            notes.append(f"channel '{sig.label}' skipped: {problem} (corrupt calibration)")
            logger.warning("%s: channel '%s' skipped: %s", path.name, sig.label, problem)
            report[pos[idx]] = report[pos[idx]].model_copy(update={
                "taken_as": None, "role": "skipped",
                "reason": f"corrupt calibration: {problem}"})
            mont.inputs.discard(idx)
            mont.names.pop(idx, None)
            mont.auxiliary.pop(idx, None)
    for d in list(mont.derivations):
        if d.plus not in mont.inputs or d.minus not in mont.inputs:
            mont.derivations.remove(d)
            report[pos_derived[d.label]] = report[pos_derived[d.label]].model_copy(update={
                "taken_as": None, "role": "skipped", "reason": "an input channel is corrupt"})
    for e in mont.entries:
        if e.role == "duplicate":
            notes.append(f"channel '{e.label}' is a second candidate: {e.reason}")
    if wanted is not None:
        found = set(mont.names.values()) | {d.name for d in mont.derivations}
        missing = wanted - found - {header.signals[i].label for i in mont.names}
        if missing:
            notes.append(f"requested channels not found: {sorted(missing)}")

    raw, tal_bytes = read_edf_signals(header, mont.inputs, progress=progress)
    scaled: dict[int, tuple[np.ndarray, str]] = {}
    for idx in mont.inputs:
        sig = header.signals[idx]
        data = raw.pop(idx)
        canon = mont.canonical.get(idx)
        if canon == "POSITION":
            k = pos[idx]
            if is_angle_channel(sig.label, sig.unit):
                data, unit = decode_position_angle(data, angle_coding), "position"
                how = (f"angles decoded with the '{angle_coding}' angle coding (0 degrees "
                       "supine; the side of +90 degrees is an assumption: see docs/VENDORS.md)")
            else:
                data, unit = decode_position(data, coding), "position"
                how = f"codes decoded with the '{coding}' position coding" if isinstance(
                    coding, str) else "codes decoded with the position coding given"
            report[k] = report[k].model_copy(update={"reason": f"{report[k].reason}; {how}"})
        else:
            scale, unit = unit_scale(mont.units_of.get(idx), sig.unit, data)
            if scale != 1.0:
                data *= np.float32(scale)
        scaled[idx] = data, unit
    signals: dict[str, Signal] = {}
    auxiliary: dict[str, Signal] = {}
    for idx, name in mont.names.items():
        sig = header.signals[idx]
        data, unit = scaled[idx]
        target = auxiliary if idx in mont.auxiliary else signals
        target[name] = Signal(name=name, data=data, sfreq=header.sfreq(sig), unit=unit,
                              label=sig.label)
    for d in mont.derivations:
        (plus, unit), (minus, _) = scaled[d.plus], scaled[d.minus]
        n = min(plus.size, minus.size)
        signals[d.name] = Signal(name=d.name, data=(plus[:n] - minus[:n]).astype(np.float32),
                                 sfreq=header.sfreq(header.signals[d.plus]), unit=unit,
                                 label=d.label)

    info = RecordingInfo(
        **_patient_fields(header.patient, path.stem),
        start_time=header.start,
        source=path.name,
        cohort=cohort,
    )
    from sleeplm.io.edf_writer import SIMULATOR_EQUIPMENT

    if SIMULATOR_EQUIPMENT in header.recording:
        info.source = f"{path.name} (SIMULATED)"
        notes.insert(0, "SIMULATED night written by the sleeplm simulator: not a real patient")
    rec = Recording(signals=signals, info=info, notes=notes,
                    channel_report=report,
                    auxiliary=auxiliary, system=mont.system)

    triplets = parse_tals(tal_bytes) if tal_bytes else []
    if triplets:
        embedded = ann_io.annotations_from_triplets(triplets, source=f"{header.kind} annotations")
        ann_io.apply_annotations(rec, embedded, on_overflow=on_overflow)
    if annotations == "auto":
        found = ann_io.find_annotation_file(path)
        if found is not None:
            logger.info("Using annotations %s for %s", found.name, path.name)
            annotations = found
        else:
            annotations = None
    if annotations is not None:
        external = ann_io.read_annotations(annotations)
        if triplets and external.stages is None and rec.stages is not None:
            external.stages, external.stage_onset = rec.stages, rec.stage_onset
        if triplets:
            import pandas as pd

            external.events = pd.concat([rec.events, external.events], ignore_index=True)
            external.events = external.events.sort_values("onset", kind="stable")
        ann_io.apply_annotations(rec, external, on_overflow=on_overflow)
    angle_idx = next((i for i, n in mont.names.items() if n == "POSITION"
                      and is_angle_channel(header.signals[i].label, header.signals[i].unit)), None)
    if angle_idx is not None and not angle_coding_given:
        k = pos[angle_idx]
        checked = _check_angle_sides(rec)
        if checked:
            rec.channel_report[k] = rec.channel_report[k].model_copy(update={
                "reason": f"{rec.channel_report[k].reason}; {checked}"})
            rec.notes.append(f"POSITION: {checked}")
    if not rec.signals:
        raise RecordingFileError(
            f"{path.name} has no readable signal channels (found only: "
            f"{[s.label for s in header.signals]}); nothing to analyse."
        )
    return rec


def _check_angle_sides(rec: Recording) -> str | None:
    """Check the decoded lateral sides of an angle POSITION channel against the file's own
    position-left/right markers (Noxturnal scores them); swap them if the markers disagree.

    Returns what was found, or None when the file has no lateral position markers.
    """
    from sleeplm.recording import POSITIONS, EventType

    ev = rec.events[rec.events["type"] == EventType.POSITION_CHANGE.value]
    sig = rec.signals["POSITION"]
    left, right = POSITIONS.index("left"), POSITIONS.index("right")
    agree = swapped = 0
    for onset, duration, attributes in zip(ev["onset"], ev["duration"], ev["attributes"]):
        side = (attributes or {}).get("position")
        if side not in ("left", "right"):
            continue
        t = float(onset) + min(float(duration or 0.0) / 2, 5.0)
        i = int(t * sig.sfreq)
        if not 0 <= i < sig.data.size or np.isnan(sig.data[i]):
            continue
        decoded = int(sig.data[i])
        want = left if side == "left" else right
        agree += decoded == want
        swapped += decoded == (right if want == left else left)
    if agree + swapped == 0:
        return None
    if swapped > agree:
        lefts, rights = sig.data == left, sig.data == right
        sig.data[lefts], sig.data[rights] = right, left
        return (f"left and right swapped: {swapped} of {agree + swapped} of the file's lateral "
                "position markers disagreed with the assumed angle sign")
    return (f"the assumed angle sign agrees with {agree} of {agree + swapped} of the file's "
            "lateral position markers")
