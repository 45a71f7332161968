"""The DREAMS databases' text annotations (University of Mons, Devuyst et al.).

The DREAMS Spindles, K-complexes and REMs databases ship 30-min excerpts of whole-night PSGs
(``excerptN.edf``, 50-200 Hz) with, as text files:

* ``Hypnogram_excerptN.txt``: a first line ``[hypnogram]`` then one integer per **5 s**, scored
  with the Rechtschaffen & Kales rules: 5 wake, 4 REM, 3 S1, 2 S2, 1 S3, 0 S4, -1 movement,
  -2 or -3 unknown (the database's own README);
* ``Visual_scoringK_excerptN.txt`` (expert K) and ``Automatic_detection_excerptN.txt``: a first
  line naming the scoring in brackets (``[vis1_Spindles_excerpt1]``), then one event per line,
  ``onset duration`` in seconds from the excerpt's start.

:func:`read_dreams_hypnogram` turns the 5-s hypnogram into 30-s AASM epochs (the stage most of
the epoch's six 5-s values carry; S3 and S4 become N3; movement and unknown become ``UNS``; a tie
goes to the stage of the epoch's first values, and the notes count the epochs that were mixed).
:func:`read_dreams_events` reads an event scoring as events of a given type.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from sleeplm.errors import AnnotationError, UnknownStageError
from sleeplm.recording import EPOCH_SEC, EventType, make_events

__all__ = ["DREAMS_STAGES", "DREAMS_STEP_SEC", "is_dreams_hypnogram", "read_dreams_hypnogram",
           "read_dreams_events"]

#: Stage of each DREAMS hypnogram code.
DREAMS_STAGES: dict[int, str] = {5: "W", 4: "R", 3: "N1", 2: "N2", 1: "N3", 0: "N3",
                                 -1: "UNS", -2: "UNS", -3: "UNS"}
#: Seconds each value of a DREAMS hypnogram stands for.
DREAMS_STEP_SEC: float = 5.0


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}")
    text = path.read_bytes().decode("latin-1")
    return [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), start=1) if ln.strip()]


def is_dreams_hypnogram(path: str | os.PathLike) -> bool:
    """True when the file's first line is DREAMS's ``[hypnogram]`` header."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(64).decode("latin-1").strip().lower()
    except OSError:
        return False
    return first == "[hypnogram]"


def read_dreams_hypnogram(path: str | os.PathLike, *, epoch_sec: float = EPOCH_SEC):
    """Read a DREAMS ``Hypnogram_excerptN.txt`` as 30-s AASM epochs.

    Parameters
    ----------
    path : path-like
    epoch_sec : float
        Epoch length of the result, s (a multiple of 5).

    Returns
    -------
    sleeplm.io.annotations.Annotations
        ``source`` "dreams-hypnogram"; a trailing part shorter than one epoch is dropped.

    Raises
    ------
    AnnotationError
        No ``[hypnogram]`` header, or no values.
    UnknownStageError
        A value outside the DREAMS codes (the message names its line).
    """
    from sleeplm.io.annotations import Annotations

    p = Path(path)
    lines = _lines(p)
    if not lines or lines[0][1].lower() != "[hypnogram]":
        raise AnnotationError(f"{p.name}: not a DREAMS hypnogram (its first line is not "
                              "'[hypnogram]')")
    codes = []
    for n, line in lines[1:]:
        try:
            code = int(float(line))
        except ValueError:
            raise UnknownStageError(f"{p.name}, line {n}: {line[:20]!r} is not a DREAMS stage "
                                    f"code {sorted(DREAMS_STAGES)}") from None
        if code not in DREAMS_STAGES:
            raise UnknownStageError(f"{p.name}, line {n}: stage code {code} is not one of "
                                    f"{sorted(DREAMS_STAGES)} (5 W, 4 REM, 3-0 S1-S4, -1 "
                                    "movement, -2/-3 unknown)")
        codes.append(code)
    if not codes:
        raise AnnotationError(f"{p.name}: a DREAMS hypnogram header and no stages")
    per = int(round(epoch_sec / DREAMS_STEP_SEC))
    if per < 1 or abs(per * DREAMS_STEP_SEC - epoch_sec) > 1e-9:
        raise ValueError(f"epoch_sec must be a multiple of {DREAMS_STEP_SEC:g} s, got {epoch_sec}")
    fine = [DREAMS_STAGES[c] for c in codes]
    n = len(fine) // per
    stages, mixed = [], 0
    for k in range(n):
        block = fine[k * per:(k + 1) * per]
        counts = Counter(block)
        top = max(counts.values())
        stages.append(next(s for s in block if counts[s] == top))  # tie: the earliest stage
        mixed += len(counts) > 1
    notes = [f"{p.name}: DREAMS hypnogram, {len(fine)} values of {DREAMS_STEP_SEC:g} s read as "
             f"{n} epochs of {epoch_sec:g} s (the stage most of each epoch carries; R&K S3 and "
             f"S4 as N3); {mixed} epoch(s) held more than one stage"]
    if len(fine) % per:
        notes.append(f"the last {len(fine) % per} value(s) ({(len(fine) % per) * 5} s) do not "
                     "fill an epoch and were dropped")
    return Annotations(stages=np.asarray(stages, dtype="<U3"), epoch_sec=epoch_sec,
                       source="dreams-hypnogram", notes=notes)


def read_dreams_events(path: str | os.PathLike, event_type: EventType | str = EventType.SPINDLE
                       ):
    """Read a DREAMS event scoring (``Visual_scoringK_excerptN.txt``) as events.

    Parameters
    ----------
    path : path-like
    event_type : EventType or str
        What the file scores (spindles for the Spindles database, rapid eye movements for the
        REMs one, k-complexes for the K-complexes one).

    Returns
    -------
    pandas.DataFrame
        Events (:func:`sleeplm.recording.make_events`) labelled with the file's header.
    """
    p = Path(path)
    lines = _lines(p)
    label = p.stem
    if lines and lines[0][1].startswith("["):
        label = lines[0][1].strip("[]")
        lines = lines[1:]
    rows = []
    for n, line in lines:
        parts = line.replace(",", " ").split()
        try:
            onset, duration = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise AnnotationError(f"{p.name}, line {n}: expected 'onset duration' in seconds, "
                                  f"got {line[:40]!r}") from None
        if onset < 0 or duration <= 0:
            raise AnnotationError(f"{p.name}, line {n}: onset must be >= 0 and duration > 0 "
                                  f"(got {onset:g}, {duration:g})")
        rows.append({"onset": onset, "duration": duration, "type": event_type, "label": label})
    return make_events(rows)
