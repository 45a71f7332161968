"""The :class:`Recording`: one night of PSG in canonical form.

A recording holds canonical channels, each at its own native sampling rate and unit, an AASM
hypnogram in 30-s epochs, a table of scored events and the study's metadata. Missing channels are
absent, never zero-filled. Every reader (:mod:`sleeplm.io`) and the simulator produce this object;
every analysis consumes it (:mod:`sleeplm.clinical`; :mod:`sleeplm.corpus.preprocess` turns it
into the model's input).
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sleeplm.errors import MissingChannelError, SignalQualityError, UnknownStageError

__all__ = [
    "STAGES",
    "SLEEP_STAGES",
    "EPOCH_SEC",
    "PLAUSIBLE_HR_BPM",
    "PLAUSIBLE_RR_SEC",
    "EventType",
    "POSITIONS",
    "Signal",
    "RecordingInfo",
    "ChannelEntry",
    "Recording",
    "EVENT_COLUMNS",
    "make_events",
    "validated_stages",
    "safe_identifier",
    "clock_of",
]

#: AASM stage vocabulary of a hypnogram. ``UNS`` = unscored (R&K "?" / movement time).
STAGES: tuple[str, ...] = ("W", "N1", "N2", "N3", "R", "UNS")
SLEEP_STAGES: tuple[str, ...] = ("N1", "N2", "N3", "R")
#: Standard epoch length, seconds.
EPOCH_SEC: float = 30.0

#: Physiologically plausible heart rate, bpm, and RR interval, s (about 220 and 25 bpm): values
#: outside are beat-detection or channel artefacts (readers and measurements share them).
PLAUSIBLE_HR_BPM: tuple[float, float] = (25.0, 220.0)
PLAUSIBLE_RR_SEC: tuple[float, float] = (0.27, 2.4)

#: Decoded body positions; a POSITION signal stores the index into this tuple (NaN = unknown).
POSITIONS: tuple[str, ...] = ("supine", "left", "right", "prone", "upright")


class EventType(str, Enum):
    """Canonical types of scored events."""

    OBSTRUCTIVE_APNEA = "obstructive_apnea"
    CENTRAL_APNEA = "central_apnea"
    MIXED_APNEA = "mixed_apnea"
    APNEA = "apnea"  # apnea of unspecified type
    HYPOPNEA = "hypopnea"
    DESATURATION = "desaturation"
    AROUSAL = "arousal"
    LIMB_MOVEMENT = "limb_movement"
    PLM = "plm"
    POSITION_CHANGE = "position_change"
    SNORE = "snore"  # a snoring breath or train of snores, as scored by the system
    ARTIFACT = "artifact"
    #: A minute an expert labelled as containing apnea or hypopnea (per-minute labels of
    #: heart-rate-only studies such as Apnea-ECG): a labelled minute, never an event count.
    APNEA_MINUTE = "apnea_minute"
    # EEG/EOG micro-events (ground truth of simulated nights, or detector output)
    SPINDLE = "spindle"
    K_COMPLEX = "k_complex"
    SLOW_WAVE = "slow_wave"
    RAPID_EYE_MOVEMENT = "rapid_eye_movement"
    UNKNOWN = "unknown"  # label kept verbatim in the ``label`` column

    @classmethod
    def apneas(cls) -> tuple["EventType", ...]:
        return (cls.OBSTRUCTIVE_APNEA, cls.CENTRAL_APNEA, cls.MIXED_APNEA, cls.APNEA)


#: Columns of the events table, in order.
EVENT_COLUMNS: tuple[str, ...] = ("onset", "duration", "type", "label", "channel", "attributes")

_IDENT_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def clock_of(start: _dt.datetime | None, seconds: float) -> str:
    """Wall-clock time ``"HH:MM:SS"`` of ``seconds`` (s) after ``start``.

    Parameters
    ----------
    start : datetime or None
        The recording's start (:attr:`RecordingInfo.start_time`); ``None`` gives ``""``.
    seconds : float
        Seconds from the start.
    """
    if start is None:
        return ""
    return (start + _dt.timedelta(seconds=float(seconds))).strftime("%H:%M:%S")


def safe_identifier(text: str, *, max_len: int = 64, default: str = "unknown") -> str:
    """Make a patient id or file stem safe to use in paths, logs and HTML.

    Anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``; leading dots are
    removed (no hidden files, no ``..``); the result is cut to ``max_len`` characters.

    Parameters
    ----------
    text : str
        The untrusted identifier (e.g. an EDF header's patient field or an upload's name).
    max_len : int
        Maximal length of the result, in characters.
    default : str
        Returned when nothing usable is left.
    """
    cleaned = _IDENT_BAD.sub("_", str(text)).strip("._")
    cleaned = cleaned[:max_len].strip("._")
    return cleaned or default


def validated_stages(stages: Iterable[str] | np.ndarray, owner: str = "Hypnogram") -> np.ndarray:
    """Stages as a 1-D ``<U3`` array, after checking each is one of :data:`STAGES`.

    Raises
    ------
    UnknownStageError
        A label outside :data:`STAGES` (map it with ``sleeplm.io.labels.stage_from_label``).
    """
    arr = np.asarray(stages, dtype="<U3").reshape(-1)
    unknown = sorted(set(np.unique(arr)) - set(STAGES))
    if unknown:
        raise UnknownStageError(
            f"{owner} stages must be among {STAGES}; found {unknown}. Map them with "
            "sleeplm.io.labels.stage_from_label first."
        )
    return arr


def make_events(rows: Iterable[Mapping[str, Any]] = ()) -> pd.DataFrame:
    """Build an events table with the canonical columns.

    Parameters
    ----------
    rows : iterable of mappings
        Each with ``onset`` (s from the recording start), ``duration`` (s), ``type``
        (:class:`EventType` or its value) and optionally ``label`` (the original label),
        ``channel`` and ``attributes`` (dict, e.g. ``{"spo2_nadir": 86.0}``).

    Returns
    -------
    pandas.DataFrame
        Sorted by onset, with a fresh integer index (the event ids cited as evidence).
    """
    records = []
    for row in rows:
        etype = row["type"]
        etype = etype.value if isinstance(etype, EventType) else EventType(etype).value
        records.append(
            {
                "onset": float(row["onset"]),
                "duration": float(row.get("duration", 0.0) or 0.0),
                "type": etype,
                "label": str(row.get("label", etype)),
                "channel": row.get("channel") or None,
                "attributes": dict(row.get("attributes") or {}),
            }
        )
    df = pd.DataFrame.from_records(records, columns=list(EVENT_COLUMNS))
    df["onset"] = df["onset"].astype(float)
    df["duration"] = df["duration"].astype(float)
    return df.sort_values("onset", kind="stable").reset_index(drop=True)


@dataclass
class Signal:
    """One channel at its native sampling rate.

    Attributes
    ----------
    name : str
        Canonical name (``EEG_C3``, ``SPO2``...) or, for an unmapped channel, the file's label.
    data : numpy.ndarray
        1-D float32 samples in ``unit``. NaN marks samples known to be invalid.
    sfreq : float
        Sampling rate, Hz.
    unit : str
        ``µV`` for EEG/EOG/EMG/ECG, ``%`` for SpO2, ``bpm`` for heart rate, ``position`` for a
        decoded position channel (values index :data:`POSITIONS`), else the file's unit.
    label : str
        The label the channel had in the source file.
    """

    name: str
    data: np.ndarray
    sfreq: float
    unit: str
    label: str = ""

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data, dtype=np.float32).reshape(-1)
        if not self.label:
            self.label = self.name

    @property
    def duration(self) -> float:
        """Length of the signal, seconds."""
        return self.data.size / self.sfreq

    @property
    def times(self) -> np.ndarray:
        """Sample times, seconds from the recording start."""
        return np.arange(self.data.size) / self.sfreq

    def segment(self, start: float, stop: float) -> np.ndarray:
        """Samples between ``start`` and ``stop`` seconds (a view)."""
        i0 = max(int(round(start * self.sfreq)), 0)
        i1 = min(int(round(stop * self.sfreq)), self.data.size)
        return self.data[i0:i1]

    def quality_problem(self) -> str | None:
        """Return why this channel is unusable (all NaN, flat), or None when it is usable."""
        finite = np.isfinite(self.data)
        if self.data.size == 0:
            return "it has no samples"
        if not finite.any():
            return "all its samples are NaN"
        values = self.data[finite]
        if float(values.max() - values.min()) == 0.0:
            return f"it is flat (constant {float(values[0]):g} {self.unit})"
        return None


class RecordingInfo(BaseModel):
    """Metadata of a study. ``patient_id`` is always safe to use in paths and HTML."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = "unknown"
    age: float | None = Field(default=None, ge=0, le=130, description="years")
    sex: str | None = None
    start_time: _dt.datetime | None = None
    source: str | None = None
    cohort: str | None = None
    annotation_source: str | None = None

    @field_validator("patient_id")
    @classmethod
    def _safe_patient_id(cls, value: str) -> str:
        return safe_identifier(value)

    @field_validator("sex")
    @classmethod
    def _normalise_sex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        v = str(value).strip().upper()[:1]
        return {"M": "M", "F": "F"}.get(v)


class ChannelEntry(BaseModel):
    """What the reader took one channel of the file as, and why.

    Attributes
    ----------
    label : str
        The label in the file (decoded UTF-8, else Latin-1), or the derivation's.
    unit : str
        The unit in the file's header (before conversion).
    sfreq : float
        Sampling rate, Hz.
    taken_as : str or None
        The name in :attr:`Recording.signals` (a canonical channel, or the sanitised label),
        in :attr:`Recording.auxiliary`, or None when the channel was not read.
    role : {"physiological", "derived", "duplicate", "auxiliary", "unmapped", "skipped"}
        ``duplicate``: a second candidate of a canonical channel taken from another signal.
    reason : str
        Why, in words ("AASM derivation, preferred over referential C3").
    """

    model_config = ConfigDict(extra="forbid")

    label: str
    unit: str = ""
    sfreq: float = 0.0
    taken_as: str | None = None
    role: str = "unmapped"
    reason: str = ""

    def line(self) -> str:
        """``"C3-M2 -> EEG_C3: AASM derivation, preferred over referential C3"``."""
        return f"{self.label} -> {self.taken_as or 'not read'}: {self.reason}"


@dataclass
class Recording:
    """A night of PSG in canonical form.

    Attributes
    ----------
    signals : dict of str to Signal
        Canonical channels (and unmapped ones under their label), each at its native rate.
    stages : numpy.ndarray or None
        One label of :data:`STAGES` per epoch, starting at ``stage_onset`` seconds.
    events : pandas.DataFrame
        Scored events (see :func:`make_events`); the index is the event id.
    info : RecordingInfo
        Study metadata.
    epoch_sec : float
        Epoch length of ``stages``, seconds.
    stage_onset : float
        Time of the first epoch, seconds from the start of the signals.
    notes : list of str
        What the reader noticed and handled (dropped channels, trimmed annotations...).
    channel_report : list of ChannelEntry
        For every channel of the file (and every derived one): what it was taken as and why.
    auxiliary : dict of str to Signal
        Auxiliary channels (impedance, battery, light, audio level, accelerometer, status),
        read only on request and never used as physiology.
    system : str or None
        The PSG system that wrote the file, when its labels or header tell.
    """

    signals: dict[str, Signal] = field(default_factory=dict)
    stages: np.ndarray | None = None
    events: pd.DataFrame = field(default_factory=make_events)
    info: RecordingInfo = field(default_factory=RecordingInfo)
    epoch_sec: float = EPOCH_SEC
    stage_onset: float = 0.0
    notes: list[str] = field(default_factory=list)
    channel_report: list[ChannelEntry] = field(default_factory=list)
    auxiliary: dict[str, Signal] = field(default_factory=dict)
    system: str | None = None

    def __post_init__(self) -> None:
        if self.stages is not None:
            self.stages = validated_stages(self.stages, "Recording")

    # ------------------------------------------------------------------ channels
    @property
    def channels(self) -> list[str]:
        """Names of the channels present."""
        return list(self.signals)

    def reading_report(self) -> str:
        """What every channel of the file was taken as, and why, one line each."""
        lines = [f"Read as a {self.system} export."] if self.system else []
        lines += [e.line() for e in self.channel_report] or [
            "no channel report (the recording was not read from a signal file)"]
        unknown = self.unknown_event_labels()
        if unknown:
            lines.append("Event labels not recognised (kept as type 'unknown' with their "
                         "label; map them with sleeplm.io.labels.register_event_label): "
                         + ", ".join(f"'{label}' x{n}" for label, n in unknown.items()))
        return "\n".join(lines)

    def unknown_event_labels(self) -> dict[str, int]:
        """Labels of scored events that no rule recognised (known markers such as lights-off
        excluded), with their counts."""
        ev = self.events
        if ev.empty:
            return {}
        unknown = ev[(ev["type"] == EventType.UNKNOWN.value)
                     & ~ev["attributes"].map(lambda a: bool((a or {}).get("marker")))]
        return {str(k): int(v) for k, v in unknown["label"].value_counts(sort=False).items()}

    def __contains__(self, name: str) -> bool:
        return name in self.signals

    def __getitem__(self, name: str) -> Signal:
        return self.require(name)

    def require(self, *names: str, purpose: str = "this computation", usable: bool = True) -> Signal:
        """Return the first of ``names`` that is present (and usable), or raise.

        Parameters
        ----------
        *names : str
            Acceptable canonical channels, in order of preference.
        purpose : str
            What the channel is for, quoted in the error message.
        usable : bool
            Also require the channel to carry a signal (not all-NaN, not flat).

        Raises
        ------
        MissingChannelError
            None of ``names`` is in the recording.
        SignalQualityError
            The channels exist but none carries a usable signal.
        """
        problems = []
        for name in names:
            sig = self.signals.get(name)
            if sig is None:
                continue
            problem = sig.quality_problem() if usable else None
            if problem is None:
                return sig
            problems.append(f"{name} (label '{sig.label}'): {problem}")
        if problems:
            raise SignalQualityError(
                f"{purpose} needs a usable {' or '.join(names)} channel, but "
                + "; ".join(problems)
                + ". Check the sensor in the source file, or map another channel to it "
                "with channel_aliases."
            )
        found = ", ".join(f"{n} ('{s.label}')" for n, s in self.signals.items()) or "none"
        raise MissingChannelError(
            f"{purpose} needs a {' or '.join(names)} channel; this recording has: {found}. "
            "If one of these is that signal under an unusual label, pass "
            "channel_aliases={'<label>': '" + names[0] + "'} when reading the file."
        )

    # ------------------------------------------------------------------ time
    @property
    def duration(self) -> float:
        """Length of the recording, seconds (the longest channel, or the hypnogram)."""
        durations = [s.duration for s in self.signals.values()]
        if self.stages is not None:
            durations.append(self.stage_onset + self.stages.size * self.epoch_sec)
        return max(durations, default=0.0)

    @property
    def n_epochs(self) -> int:
        """Number of scored epochs (0 when there is no hypnogram)."""
        return 0 if self.stages is None else int(self.stages.size)

    @property
    def has_stages(self) -> bool:
        """True when a hypnogram with at least one scored (non-UNS) epoch is present."""
        return self.stages is not None and bool(np.any(self.stages != "UNS"))

    def epoch_index(self, times: np.ndarray | float) -> np.ndarray:
        """Epoch index of each time (seconds from the recording start); -1 outside the hypnogram."""
        t = np.atleast_1d(np.asarray(times, dtype=float))
        idx = np.floor((t - self.stage_onset) / self.epoch_sec).astype(int)
        idx[(idx < 0) | (idx >= self.n_epochs)] = -1
        return idx

    def stage_at(self, times: np.ndarray | float) -> np.ndarray:
        """Stage at each time; ``UNS`` outside the hypnogram or when there is none."""
        idx = self.epoch_index(times)
        if self.stages is None:
            return np.full(idx.shape, "UNS", dtype="<U3")
        out = np.full(idx.shape, "UNS", dtype="<U3")
        ok = idx >= 0
        out[ok] = self.stages[idx[ok]]
        return out

    def events_of(self, *types: EventType | str) -> pd.DataFrame:
        """Events of the given types (all events when none given)."""
        if not types:
            return self.events
        wanted = {t.value if isinstance(t, EventType) else str(t) for t in types}
        return self.events[self.events["type"].isin(wanted)]

    def summary(self) -> str:
        """A few lines describing the recording, for people."""
        hours = self.duration / 3600
        lines = [
            f"Patient {self.info.patient_id}: {hours:.2f} h, {len(self.signals)} channels, "
            f"{self.n_epochs} epochs scored, {len(self.events)} events"
        ]
        for name, sig in self.signals.items():
            lines.append(f"  {name:<15} {sig.sfreq:>8g} Hz  {sig.unit:<8} (label '{sig.label}')")
        return "\n".join(lines)
