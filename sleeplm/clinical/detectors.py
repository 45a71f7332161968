"""Automatic detection of sleep spindles and rapid eye movements with YASA's validated detectors.

PSG scorers rarely mark every spindle or rapid eye movement, so a study's annotations usually
hold none, and "where are the spindles?" deserves better than "no spindle is scored" or a
model's guess. :func:`detect_spindles` runs YASA's ``spindles_detect`` (Lacourse et al., J
Neurosci Methods 2018: the A7 algorithm's thresholds; validated against experts on MASS and
DREAMS) on the best central EEG in N1-N3 (everywhere when the study has no stages), and
:func:`detect_rapid_eye_movements` runs ``rem_detect`` (Agarwal et al. 2005 style amplitude
rules on the LOC/ROC product) on both EOGs in REM and wake. Both return rows in the shape of
:attr:`sleeplm.recording.Recording.events` (``onset``, ``duration`` in s, ``type``, ``label``,
``channel``, ``attributes``) with a label that says they are automatic, not scored by a person.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from sleeplm.recording import EventType, Recording

__all__ = ["AUTOMATIC_LABEL_PREFIX", "SPINDLE_SOURCE", "REM_SOURCE", "detect_spindles",
           "detect_rapid_eye_movements", "is_automatic", "DetectorError"]

AUTOMATIC_LABEL_PREFIX = "automatic:"
"""How the source of an automatically detected event begins; its label is ``"spindle
(<source>)"``."""
SPINDLE_SOURCE = f"{AUTOMATIC_LABEL_PREFIX} YASA spindles_detect (not scored by a person)"
REM_SOURCE = f"{AUTOMATIC_LABEL_PREFIX} YASA rem_detect (not scored by a person)"


def is_automatic(label: object) -> bool:
    """Whether an event with this label was detected automatically (not scored by a person).

    Parameters
    ----------
    label : object
        The event's label (``None`` or any other non-string: not automatic).
    """
    if not isinstance(label, str):
        return False
    low = label.strip().lower()
    return low.startswith(AUTOMATIC_LABEL_PREFIX) or f"({AUTOMATIC_LABEL_PREFIX}" in low
_EEG_ORDER = ("EEG_C4", "EEG_C3", "EEG_F", "EEG_O")
_HYPNO = {"W": 0, "N1": 1, "N2": 2, "N3": 3, "R": 4}


class DetectorError(ValueError):
    """A detector cannot run on this recording (the channel it needs is missing or too slow)."""


def _hypno(rec: Recording, n: int, sf: float, stages: Sequence[str] | None) -> np.ndarray | None:
    st = stages if stages is not None else (rec.stages if rec.has_stages else None)
    if st is None:
        return None
    codes = np.array([_HYPNO.get(str(s), -1) for s in st], dtype=int)
    up = np.repeat(codes, int(round(rec.epoch_sec * sf)))
    return np.r_[up, np.full(max(0, n - up.size), -1)][:n]


def _frame(onsets: np.ndarray, durations: np.ndarray, etype: str, label: str, channel: str,
           attrs: list[dict]) -> pd.DataFrame:
    return pd.DataFrame({"onset": onsets.astype(float), "duration": durations.astype(float),
                         "type": etype, "label": label, "channel": channel,
                         "attributes": attrs})


def detect_spindles(rec: Recording, stages: Sequence[str] | None = None) -> pd.DataFrame:
    """Spindles of the best EEG channel (C4 > C3 > F > O) by YASA ``spindles_detect``.

    Parameters
    ----------
    rec : Recording
    stages : sequence of str, optional
        30-s stages to restrict the search to N1-N3 (default: the recording's own, else none:
        the whole recording is searched).

    Returns
    -------
    pandas.DataFrame
        One row per spindle (``type`` "spindle"; attributes: frequency in Hz, amplitude in µV).

    Raises
    ------
    DetectorError
        No EEG channel, or its rate is below 100 Hz (YASA's spindle band needs it).
    """
    sig = next((rec.signals[c] for c in _EEG_ORDER if c in rec.signals), None)
    if sig is None:
        raise DetectorError("spindles are detected on the EEG, and this recording has none")
    if sig.sfreq < 100:
        raise DetectorError(f"{sig.name} is sampled at {sig.sfreq:g} Hz; the spindle detector "
                            "needs at least 100 Hz")
    import yasa

    x = np.nan_to_num(np.asarray(sig.data, dtype=float))
    hyp = _hypno(rec, x.size, sig.sfreq, stages)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = yasa.spindles_detect(x, sig.sfreq, hypno=hyp,
                                  include=(1, 2, 3) if hyp is not None else None,
                                  verbose="ERROR")
    if sp is None:
        return _frame(np.zeros(0), np.zeros(0), EventType.SPINDLE.value, "", sig.name, [])
    s = sp.summary()
    attrs = [{"frequency_hz": round(float(f), 2), "amplitude_uv": round(float(a), 1)}
             for f, a in zip(s["Frequency"], s["Amplitude"])]
    return _frame(s["Start"].to_numpy(float), s["Duration"].to_numpy(float),
                  EventType.SPINDLE.value, f"spindle ({SPINDLE_SOURCE})", sig.name, attrs)


def detect_rapid_eye_movements(rec: Recording, stages: Sequence[str] | None = None
                               ) -> pd.DataFrame:
    """Rapid eye movements of EOG_L / EOG_R by YASA ``rem_detect`` (in REM and wake when the
    study is staged).

    Raises
    ------
    DetectorError
        Either EOG is missing.
    """
    loc, roc = rec.signals.get("EOG_L"), rec.signals.get("EOG_R")
    if loc is None or roc is None:
        raise DetectorError("rapid eye movements are detected on both EOG channels (LOC and "
                            "ROC), and this recording does not have both")
    if loc.sfreq != roc.sfreq:
        raise DetectorError(f"EOG_L ({loc.sfreq:g} Hz) and EOG_R ({roc.sfreq:g} Hz) differ "
                            "in rate")
    import yasa

    n = min(loc.data.size, roc.data.size)
    xl = np.nan_to_num(np.asarray(loc.data[:n], dtype=float))
    xr = np.nan_to_num(np.asarray(roc.data[:n], dtype=float))
    hyp = _hypno(rec, n, loc.sfreq, stages)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rem = yasa.rem_detect(xl, xr, loc.sfreq, hypno=hyp,
                              include=(0, 4) if hyp is not None else None, verbose="ERROR")
    if rem is None:
        return _frame(np.zeros(0), np.zeros(0), EventType.RAPID_EYE_MOVEMENT.value, "",
                      "EOG_L,EOG_R", [])
    s = rem.summary()
    attrs = [{"amplitude_uv": round(float(a), 1)} for a in s["LOCAbsValPeak"]]
    return _frame(s["Start"].to_numpy(float), s["Duration"].to_numpy(float),
                  EventType.RAPID_EYE_MOVEMENT.value,
                  f"rapid eye movement ({REM_SOURCE})", "EOG_L,EOG_R", attrs)
