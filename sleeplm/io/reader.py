"""Read a study (signal file plus annotations) into a :class:`~sleeplm.recording.Recording`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np

from sleeplm._logging import logger
from sleeplm.errors import RecordingFileError
from sleeplm.io.channels import canonical_channel, decode_position, detect_cohort, unit_scale
from sleeplm.io.edf import calibration_problem, parse_tals, read_edf_header, read_edf_signals
from sleeplm.recording import Recording, RecordingInfo, Signal, safe_identifier

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
    include_unmapped: bool = True,
    allow_truncated: bool = False,
    on_overflow: Literal["raise", "trim"] = "raise",
    progress: bool = False,
) -> Recording:
    """Read a PSG study into a Recording.

    Parameters
    ----------
    path : path-like
        An EDF, EDF+ or BDF signal file, or a hypnogram alone (CSV/TXT, NSRR/Profusion XML),
        which gives a Recording without signals.
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
    include_unmapped : bool
        Keep channels that map to no canonical name, under their (sanitised) label.
    allow_truncated : bool
        Read the complete records of a file shorter than its header says, instead of raising.
    on_overflow : {"raise", "trim"}
        What to do with scored stages/events that run past the end of the signals.
    progress : bool
        Show a progress bar while reading data records.

    Returns
    -------
    Recording
    """
    from sleeplm.io import annotations as ann_io  # heavy (mne) import on demand

    path = Path(path)
    if path.suffix.lower() in HYPNOGRAM_SUFFIXES:
        ann = ann_io.read_annotations(path)
        rec = Recording(info=RecordingInfo(patient_id=path.stem, source=path.name))
        return ann_io.apply_annotations(rec, ann, on_overflow=on_overflow)

    header = read_edf_header(path, allow_truncated=allow_truncated)
    if cohort == "auto":
        cohort = detect_cohort(path.name)
    coding = position_coding or (cohort if cohort in ("shhs", "mesa", "mros", "cfs") else "generic")
    wanted = set(channels) if channels else None

    notes = list(header.notes)
    names: dict[int, str] = {}
    canonical: dict[int, str | None] = {}
    for sig in header.signals:
        if sig.is_annotation:
            continue
        canon = canonical_channel(sig.label, cohort=cohort, user_aliases=channel_aliases)
        name = canon if canon and canon not in names.values() else None
        if canon and name is None:
            notes.append(f"channel '{sig.label}' is a second {canon}; kept under its own label")
        if name is None:
            if not include_unmapped and canon is None:
                continue
            name = safe_identifier(sig.label, default=f"signal_{sig.index + 1}")
            if name in names.values():
                name = f"{name}_{sig.index + 1}"
        if wanted is not None and name not in wanted and sig.label not in wanted:
            continue
        problem = calibration_problem(sig)
        if problem:
            notes.append(f"channel '{sig.label}' skipped: {problem} (corrupt calibration)")
            logger.warning("%s: channel '%s' skipped: %s", path.name, sig.label, problem)
            continue
        names[sig.index] = name
        canonical[sig.index] = name if name == canon else None
    if wanted is not None:
        missing = wanted - set(names.values()) - {header.signals[i].label for i in names}
        if missing:
            notes.append(f"requested channels not found: {sorted(missing)}")

    raw, tal_bytes = read_edf_signals(header, names, progress=progress)
    signals: dict[str, Signal] = {}
    for idx, name in names.items():
        sig = header.signals[idx]
        data = raw.pop(idx)
        canon = canonical[idx]
        if canon == "POSITION":
            data, unit = decode_position(data, coding), "position"
        else:
            scale, unit = unit_scale(canon, sig.unit, data)
            if scale != 1.0:
                data *= np.float32(scale)
        signals[name] = Signal(name=name, data=data, sfreq=header.sfreq(sig), unit=unit,
                               label=sig.label)

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
    rec = Recording(signals=signals, info=info, notes=notes)

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
    if not rec.signals:
        raise RecordingFileError(
            f"{path.name} has no readable signal channels (found only: "
            f"{[s.label for s in header.signals]}); nothing to analyse."
        )
    return rec
