"""Read overnight heart-beat series (R-peak times or RR intervals) as heart-rate studies.

Holter recorders, wearables and HR-only home tests export the times of the heart beats (or the
RR intervals between them) rather than an ECG. :func:`read_beats` reads

* the ``.npz`` layout of the bundled Apnea-ECG nights (``beat_time_s``, optional ``hr_bpm`` and
  ``apnea_minute``), and
* a plain CSV/TXT of beat times or RR intervals: one column, or several with a header naming
  the column (``beat_time_s``, ``time``, ``rpeak``...; ``rr_ms``, ``rr``, ``ibi``...), in seconds
  or milliseconds (a ``_ms`` / ``_s`` suffix says which; otherwise the values tell),

into a :class:`~sleeplm.recording.Recording` with one ``HR`` channel (instantaneous heart rate
interpolated onto a uniform grid, NaN across gaps and implausible beats) and, when per-minute
apnea labels come with it, one ``apnea_minute`` event per labelled minute. There is no ECG
waveform in such a file, so the recording has none: only the beat-derived heart rate.

Checks: beat times must increase (the error names the first beat that does not); a series
whose RR intervals are mostly outside 0.27-2.4 s (25-220 bpm) is refused with a hint about units;
single implausible beats (missed or extra detections, as real data has) become NaN and are
counted in the notes; gaps over :data:`GAP_SEC` are reported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from sleeplm._logging import logger
from sleeplm.errors import BeatSeriesError, EmptyRecordingError
from sleeplm.recording import (PLAUSIBLE_RR_SEC, ChannelEntry, EventType, Recording,
                               RecordingInfo, Signal, make_events)

__all__ = ["read_beats", "beats_recording", "read_minute_labels", "looks_like_beat_table",
           "BEAT_SUFFIXES", "RR_MIN_SEC", "RR_MAX_SEC", "GAP_SEC", "HR_SFREQ"]

#: Files read as beat series by :func:`sleeplm.io.read_recording` from their suffix alone.
BEAT_SUFFIXES: tuple[str, ...] = (".npz",)
#: Plausible RR interval, s (about 220 and 25 bpm); beats outside are detection artefacts.
RR_MIN_SEC, RR_MAX_SEC = PLAUSIBLE_RR_SEC
#: An RR interval longer than this is a gap in the series (lost signal), not a slow beat, s.
GAP_SEC: float = 10.0
#: Default rate of the interpolated HR channel, Hz (the usual 4 Hz of HRV analysis).
HR_SFREQ: float = 4.0
#: At most this share of implausible RR intervals is taken as artefacts; above it the series
#: is refused (wrong column or unit).
_MAX_BAD_SHARE: float = 0.5
#: At least this much usable heart rate, s.
_MIN_USABLE_SEC: float = 300.0

_TIME_COLUMNS = ("beat_time_s", "beat_time_ms", "beat_time", "beat_times", "time_s", "time_ms",
                 "time", "t", "rpeak", "r_peak", "rpeak_s", "r_peak_s", "rpeak_ms", "r_peak_ms",
                 "beat", "beats", "peak_time")
_RR_COLUMNS = ("rr", "rr_ms", "rr_s", "rr_interval", "rr_interval_ms", "rr_interval_s",
               "rri", "ibi", "ibi_ms", "ibi_s", "nn", "nn_ms", "nn_interval")
_SPLIT = re.compile(r"[,\t; ]+")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9_]", "", name.strip().lower().replace(" ", "_").replace("-", "_"))


def looks_like_beat_table(path: str | os.PathLike) -> bool:
    """True when a CSV/TXT file's first line names a beat-time or RR-interval column."""
    try:
        with open(path, "rb") as f:
            first = f.readline(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    names = {_norm(tok) for tok in _SPLIT.split(first.strip()) if tok}
    generic = {"t", "time", "beat", "beats"}  # also headers of hypnograms and event tables
    return bool(names & ((set(_TIME_COLUMNS) - generic) | set(_RR_COLUMNS)))


def _unit_scale(values: np.ndarray, column: str, unit: str, *, diffs: bool) -> tuple[float, str]:
    """Factor that turns the values into seconds, and how it was decided."""
    if unit in ("s", "ms"):
        return (1e-3 if unit == "ms" else 1.0), f"unit {unit} (given)"
    if column.endswith("_ms"):
        return 1e-3, f"unit ms (column '{column}')"
    if column.endswith("_s"):
        return 1.0, f"unit s (column '{column}')"
    step = np.diff(values) if diffs else values
    step = step[np.isfinite(step)]
    med = float(np.median(step)) if step.size else 0.0
    if 150.0 <= med <= 3000.0:
        return 1e-3, f"unit ms (median {'interval' if diffs else 'value'} {med:.0f})"
    return 1.0, "unit s"


def _read_table(path: Path, kind: str, unit: str) -> tuple[np.ndarray, list[str]]:
    """Beat times (s) from a CSV/TXT, and notes on how the file was read."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="strict")
    except UnicodeDecodeError:
        raise BeatSeriesError(f"{path.name}: not a text file of beat times or RR intervals "
                              "(it is not UTF-8 text)") from None
    lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
    if not lines:
        raise EmptyRecordingError(f"{path.name} is empty: expected one beat time or RR interval "
                                  "per line")
    first = [tok for tok in _SPLIT.split(lines[0][1]) if tok]
    header = None
    try:
        [float(tok) for tok in first]
    except ValueError:
        header = [_norm(tok) for tok in first]
        lines = lines[1:]
    col, column = 0, "value"
    if header is not None:
        found = [(i, h) for i, h in enumerate(header) if h in _TIME_COLUMNS + _RR_COLUMNS]
        if kind == "times":
            found = [f for f in found if f[1] in _TIME_COLUMNS] or found
        elif kind == "rr":
            found = [f for f in found if f[1] in _RR_COLUMNS] or found
        if not found:
            raise BeatSeriesError(
                f"{path.name}: no column of beat times or RR intervals in its header {first}; "
                f"name it one of {_TIME_COLUMNS[:3]} (times) or {_RR_COLUMNS[:3]} (intervals)")
        col, column = found[0]
        if kind == "auto":
            kind = "times" if column in _TIME_COLUMNS else "rr"
    elif len(first) > 1:
        raise BeatSeriesError(f"{path.name}: {len(first)} columns and no header; add a header "
                              "that names the beat-time or RR-interval column (e.g. 'rr_ms')")
    values = np.empty(len(lines))
    for k, (n, line) in enumerate(lines):
        toks = [tok for tok in _SPLIT.split(line) if tok]
        try:
            values[k] = float(toks[col])
        except (ValueError, IndexError):
            raise BeatSeriesError(f"{path.name}, line {n}: {line[:40]!r} holds no number in "
                                  f"column {column!r}") from None
    if values.size == 0:
        raise EmptyRecordingError(f"{path.name} holds a header and no beats")
    if not np.isfinite(values).all():
        n = lines[int(np.flatnonzero(~np.isfinite(values))[0])][0]
        raise BeatSeriesError(f"{path.name}, line {n}: not a finite number; remove it or mark "
                              "the gap by leaving the beat out")
    if kind == "auto":  # one unnamed column: strictly increasing values are times, else RR
        kind = "times" if values.size > 2 and bool(np.all(np.diff(values) > 0)) else "rr"
    scale, how = _unit_scale(values, column, unit, diffs=kind == "times")
    notes = [f"{path.name}: read column '{column}' as {'beat times' if kind == 'times' else 'RR intervals'}, {how}"]
    if kind == "rr":
        rr = values * scale
        if (rr <= 0).any():
            n = lines[int(np.flatnonzero(rr <= 0)[0])][0]
            raise BeatSeriesError(f"{path.name}, line {n}: an RR interval must be positive")
        return np.r_[0.0, np.cumsum(rr)], notes + ["beat times are the running sum of the "
                                                   "intervals from 0 s"]
    return values * scale, notes


def read_minute_labels(path: str | os.PathLike) -> np.ndarray:
    """Per-minute apnea labels: one per line, ``1``/``A`` (apnea) or ``0``/``N`` (normal).

    The label is the last token of each line, so PhysioNet's "HH:MM A" listings read too.

    Returns
    -------
    numpy.ndarray
        int8, one 0/1 per minute from the recording start.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"minute-label file not found: {p}")
    out = []
    for n, line in enumerate(p.read_text(errors="replace").splitlines(), start=1):
        toks = [t for t in _SPLIT.split(line.strip()) if t]
        if not toks:
            continue
        tok = toks[-1].upper()
        if tok in ("1", "A"):
            out.append(1)
        elif tok in ("0", "N"):
            out.append(0)
        elif n == 1:
            continue  # a header
        else:
            raise BeatSeriesError(f"{p.name}, line {n}: minute label {toks[-1]!r} is neither "
                                  "1/A (apnea) nor 0/N (normal)")
    return np.asarray(out, dtype=np.int8)


def beats_recording(
    beat_time_s: Sequence[float] | np.ndarray,
    *,
    minute_labels: Sequence[int] | np.ndarray | None = None,
    info: RecordingInfo | None = None,
    hr_sfreq: float = HR_SFREQ,
    source: str = "beat series",
    notes: Sequence[str] = (),
) -> Recording:
    """A heart-rate study from beat times.

    Parameters
    ----------
    beat_time_s : array-like
        Time of each heart beat (R peak), s from the recording start; strictly increasing.
    minute_labels : array-like of 0/1, optional
        Expert label of minute k = [60 k, 60 k + 60) s: 1 = apnea or hypopnea in the minute.
    info : RecordingInfo, optional
    hr_sfreq : float
        Rate of the interpolated HR channel, Hz.
    source : str
        Name of the file or array, for messages.
    notes : sequence of str
        Notes of the caller (how the file was read), kept first.

    Returns
    -------
    Recording
        ``signals["HR"]`` in bpm (NaN across gaps and implausible beats), no stages, and an
        ``apnea_minute`` event per labelled minute (attribute ``minute``).

    Raises
    ------
    EmptyRecordingError
        Fewer than 3 beats.
    BeatSeriesError
        Non-finite or non-increasing times, mostly implausible intervals, too little usable data.
    """
    t = np.asarray(beat_time_s, dtype=float).reshape(-1)
    if t.size < 3:
        raise EmptyRecordingError(f"{source}: {t.size} beat(s); a heart-rate study needs a "
                                  "night of beats")
    if not np.isfinite(t).all():
        i = int(np.flatnonzero(~np.isfinite(t))[0])
        raise BeatSeriesError(f"{source}: beat {i} has a non-finite time; remove it")
    d = np.diff(t)
    if (d <= 0).any():
        i = int(np.flatnonzero(d <= 0)[0]) + 1
        raise BeatSeriesError(
            f"{source}: beat times must increase, but beat {i} at {t[i]:.3f} s does not come "
            f"after beat {i - 1} at {t[i - 1]:.3f} s; sort the beats, or if the column holds "
            "RR intervals read it as such (kind='rr')")
    if t[0] < 0:
        raise BeatSeriesError(f"{source}: first beat at {t[0]:.3f} s; times count from the "
                              "recording start and cannot be negative")
    gap = d > GAP_SEC
    bad = ((d < RR_MIN_SEC) | (d > RR_MAX_SEC)) & ~gap
    share = float((bad | gap).sum()) / d.size  # mostly "gaps" too: times in ms read as s
    if share > _MAX_BAD_SHARE:
        med = float(np.median(d))
        hint = (" — the intervals look like milliseconds read as seconds" if med > 150 else
                " — the times look like milliseconds read as seconds, or are not beat times"
                if med > RR_MAX_SEC else "")
        raise BeatSeriesError(
            f"{source}: {share:.0%} of the RR intervals are outside {RR_MIN_SEC}-{RR_MAX_SEC} s "
            f"(25-220 bpm; median interval {med:.3g} s){hint}; pass the unit ('s' or 'ms') or "
            "check the column")
    rr_end = t[1:]
    hr_beats = 60.0 / d
    ok = ~bad & ~gap
    duration = float(t[-1]) + 1.0
    n = int(np.floor(duration * hr_sfreq)) + 1
    grid = np.arange(n) / hr_sfreq
    hr = np.full(n, np.nan, dtype=np.float32)
    if ok.sum() >= 2:
        tv, hv = rr_end[ok], hr_beats[ok]
        hr[:] = np.interp(grid, tv, hv).astype(np.float32)
        # NaN where the nearest valid beats on either side are more than 3 s apart
        k = np.searchsorted(tv, grid)
        left = tv[np.clip(k - 1, 0, tv.size - 1)]
        right = tv[np.clip(k, 0, tv.size - 1)]
        far = (right - left > 3.0) | (grid < tv[0]) | (grid > tv[-1])
        hr[far] = np.nan
    usable = float(np.isfinite(hr).sum()) / hr_sfreq
    if usable < _MIN_USABLE_SEC:
        raise BeatSeriesError(f"{source}: only {usable:.0f} s of usable heart rate; at least "
                              f"{_MIN_USABLE_SEC:.0f} s are needed")
    all_notes = list(notes)
    all_notes.append(f"heart-rate study: {t.size} beats over {duration / 3600:.2f} h, no ECG "
                     f"waveform; HR interpolated at {hr_sfreq:g} Hz")
    if bad.any():
        all_notes.append(f"{int(bad.sum())} RR interval(s) outside {RR_MIN_SEC}-{RR_MAX_SEC} s "
                         "(missed or extra beat detections) set to NaN")
    if gap.any():
        all_notes.append(f"{int(gap.sum())} gap(s) over {GAP_SEC:g} s without beats "
                         f"({float(d[gap].sum()) / 60:.1f} min in all), heart rate NaN there")
    events = make_events()
    if minute_labels is not None:
        lab = np.asarray(minute_labels).reshape(-1)
        if not np.isin(lab, (0, 1)).all():
            raise BeatSeriesError(f"{source}: minute labels must be 0 (normal) or 1 (apnea)")
        events = make_events(
            {"onset": 60.0 * k, "duration": 60.0, "type": EventType.APNEA_MINUTE,
             "label": "apnea minute (expert)", "attributes": {"minute": int(k)}}
            for k in np.flatnonzero(lab == 1))
        all_notes.append(f"per-minute apnea labels: {lab.size} minutes, {int(lab.sum())} with "
                         "apnea or hypopnea")
        if lab.size * 60 > duration + 120:
            all_notes.append(f"the labels cover {lab.size} min, {lab.size - duration / 60:.0f} "
                             "min more than the beats")
    info = info or RecordingInfo()
    if minute_labels is not None:
        info = info.model_copy(update={"annotation_source": f"per-minute apnea labels "
                                                            f"({int(np.asarray(minute_labels).size)} min)"})
    entry = ChannelEntry(label="beat times", unit="s", sfreq=hr_sfreq, taken_as="HR",
                         role="derived", reason="instantaneous heart rate 60/RR of each beat, "
                                                "interpolated; no ECG waveform in the file")
    rec = Recording(signals={"HR": Signal("HR", hr, hr_sfreq, "bpm", label="HR (from beats)")},
                    events=events, info=info, notes=all_notes, channel_report=[entry])
    logger.info("%s: %d beats, %.1f h, %d apnea minutes", source, t.size, duration / 3600,
                len(events))
    return rec


def read_beats(
    path: str | os.PathLike,
    *,
    kind: Literal["auto", "times", "rr"] = "auto",
    unit: Literal["auto", "s", "ms"] = "auto",
    minute_labels: str | os.PathLike | None = None,
    patient_id: str | None = None,
    hr_sfreq: float = HR_SFREQ,
) -> Recording:
    """Read a beat-time or RR-interval file as a heart-rate study.

    Parameters
    ----------
    path : path-like
        ``.npz`` with ``beat_time_s`` (s) and optionally ``apnea_minute`` (0/1 per minute), as
        the bundled Apnea-ECG nights; or a CSV/TXT of beat times or RR intervals.
    kind : {"auto", "times", "rr"}
        What the CSV column holds; "auto" decides from the header or the values.
    unit : {"auto", "s", "ms"}
        Unit of the CSV values; "auto" decides from the column name or the values.
    minute_labels : path-like, optional
        A file of per-minute apnea labels (:func:`read_minute_labels`); overrides labels
        inside an ``.npz``.
    patient_id : str, optional
        Defaults to the file name's stem (made safe).
    hr_sfreq : float
        Rate of the HR channel, Hz.

    Returns
    -------
    Recording
        See :func:`beats_recording`.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"beat file not found: {p}")
    if p.stat().st_size == 0:
        raise EmptyRecordingError(f"{p.name} is empty (0 bytes)")
    labels = None
    if p.suffix.lower() == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError) as err:
            raise BeatSeriesError(f"{p.name}: not a readable .npz archive ({err})") from None
        if "beat_time_s" not in arrays:
            raise BeatSeriesError(f"{p.name}: no 'beat_time_s' array (it holds {sorted(arrays)}); "
                                  "a beat file needs the beat times in seconds")
        times = np.asarray(arrays["beat_time_s"], dtype=float)
        labels = arrays.get("apnea_minute")
        notes = [f"{p.name}: beat times from 'beat_time_s'"]
    else:
        times, notes = _read_table(p, kind, unit)
    if minute_labels is not None:
        labels = read_minute_labels(minute_labels)
    info = RecordingInfo(patient_id=patient_id or p.stem, source=p.name)
    return beats_recording(times, minute_labels=labels, info=info, hr_sfreq=hr_sfreq,
                           source=p.name, notes=notes)
