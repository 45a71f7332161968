"""Write a Recording as an EDF+ file (each channel at its own rate), through edfio.

Used for simulated nights, test fixtures and benchmarks, so that everything downstream reads
real files. Stages and events go into the EDF+ annotation signal ("Sleep stage N2", the events'
labels), which :func:`sleeplm.io.read_recording` reads back.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from sleeplm.errors import RecordingFileError
from sleeplm.io.channels import POSITION_CODINGS
from sleeplm.recording import POSITIONS, Recording

__all__ = ["write_edf", "record_duration_for", "SIMULATOR_EQUIPMENT"]

_STAGE_TEXT = {"W": "Sleep stage W", "N1": "Sleep stage N1", "N2": "Sleep stage N2",
               "N3": "Sleep stage N3", "R": "Sleep stage R", "UNS": "Sleep stage ?"}


def record_duration_for(rates: list[float]) -> float:
    """Shortest data-record duration (s) holding a whole number of samples of every rate."""
    denominators = [Fraction(r).limit_denominator(1000).denominator for r in rates]
    duration = 1
    for d in denominators:
        duration = duration * d // math.gcd(duration, d)
    return float(duration)


#: Equipment code written into the EDF+ header of simulated nights; the reader flags such files.
SIMULATOR_EQUIPMENT = "sleeplm-simulator"


def write_edf(rec: Recording, path: str | os.PathLike, *, annotations: bool = True,
              equipment: str = "X") -> Path:
    """Write ``rec`` to ``path`` as EDF+ (16-bit samples, physical range from the data).

    Parameters
    ----------
    rec : Recording
    path : path-like
        Destination (``.edf``).
    annotations : bool
        Also write stages and events as EDF+ annotations.
    equipment : str
        EDF+ equipment code (:data:`SIMULATOR_EQUIPMENT` marks simulated nights).

    Returns
    -------
    pathlib.Path
    """
    import edfio

    path = Path(path)
    if not rec.signals:
        raise RecordingFileError("write_edf needs at least one signal; this recording has none.")
    rates = [s.sfreq for s in rec.signals.values()]
    record_sec = record_duration_for(rates)
    generic = {v: k for k, v in POSITION_CODINGS["generic"].items()}
    signals = []
    for name, sig in rec.signals.items():
        data = np.asarray(sig.data, dtype=np.float64)
        unit = sig.unit
        if unit == "position":  # decoded indices back to the generic coding
            codes = np.array([generic[p] for p in POSITIONS], dtype=float)
            idx = np.where(np.isfinite(data), data, 0).astype(int)
            data, unit = codes[np.clip(idx, 0, len(POSITIONS) - 1)], ""
        data = np.nan_to_num(data, nan=0.0)
        n_per_record = int(round(sig.sfreq * record_sec))
        n_records = math.ceil(data.size / n_per_record)
        if data.size < n_records * n_per_record:  # pad the last record with the last value
            data = np.r_[data, np.full(n_records * n_per_record - data.size, data[-1])]
        lo, hi = float(data.min()), float(data.max())
        if hi - lo < 1e-6:
            lo, hi = lo - 1.0, hi + 1.0
        signals.append(
            edfio.EdfSignal(data, sampling_frequency=sig.sfreq, label=sig.label or name,
                            physical_dimension="uV" if unit == "µV" else unit,
                            physical_range=(lo, hi))
        )
    ann = []
    if annotations:
        if rec.stages is not None:
            stages = rec.stages
            change = np.flatnonzero(np.r_[True, stages[1:] != stages[:-1]])
            ends = np.r_[change[1:], stages.size]
            for a, b in zip(change, ends):
                ann.append(edfio.EdfAnnotation(rec.stage_onset + a * rec.epoch_sec,
                                               (b - a) * rec.epoch_sec, _STAGE_TEXT[stages[a]]))
        for row in rec.events.itertuples():
            ann.append(edfio.EdfAnnotation(row.onset, row.duration or None, str(row.label)))
    start = rec.info.start_time
    edf = edfio.Edf(
        signals,
        patient=edfio.Patient(code=rec.info.patient_id.replace(" ", "_")[:40],
                              sex=rec.info.sex or "X"),
        recording=edfio.Recording(startdate=start.date() if start else None,
                                  equipment_code=equipment.replace(" ", "_")),
        starttime=start.time() if start else None,
        data_record_duration=record_sec,
        annotations=ann,
    )
    edf.write(path)
    return path
