"""Shared pieces of the tools: time selections, epoch spans, channel requirements.

Times in tool inputs are either clock times (``"23:40"``, ``"01:05:30"``, resolved against the
recording's start time; a clock earlier than the start is on the next day) or seconds from the
recording start (a number, or a string such as ``"1830"`` / ``"1830s"``), or epoch indices
(30-s epochs from 0). Every output span carries epochs, seconds and clock times.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sleeplm.library.patients import ProcessedPatient
from sleeplm.recording import clock_of
from tools.errors import TimeRangeError

__all__ = [
    "SYSTEM_CHANNELS",
    "Requirement",
    "Selection",
    "Span",
    "TimeSelection",
    "NIGHT_PARTS",
    "find_night_part",
    "night_part_bounds",
    "TimeValue",
    "check_requirements",
    "clock_of",
    "parse_time",
    "recording_start",
    "requirements_for",
    "resolve_selection",
    "span_of",
    "stage_table",
]

TimeValue = str | float | int
_CLOCK = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}(?:\.\d+)?))?\s*$")
_SECONDS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|seconds?)?\s*$", re.IGNORECASE)
_EPOCH = re.compile(r"^\s*(?:epoch|e)\s*#?\s*(\d+)\s*$", re.IGNORECASE)

#: Model-input channels each caption system reads (any one present is enough).
SYSTEM_CHANNELS: dict[str, tuple[str, ...]] = {
    "brain": ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O", "EOG_L", "EOG_R"),
    "cardiac": ("ECG", "HR"),
    "respiration": ("AIRFLOW", "NASAL_PRESSURE", "THORAX", "ABDOMEN", "SPO2"),
    "somatic": ("EMG_CHIN", "EMG_LEG", "EMG_LEG_R", "POSITION"),
}


class TimeSelection(BaseModel):
    """Which part of the night a tool looks at; nothing set means the whole night.

    Attributes
    ----------
    epoch : int or None
        One 30-s epoch (index from 0).
    epochs : (int, int) or None
        First and last epoch, inclusive.
    start, end : str or float or None
        Clock time ``"HH:MM[:SS]"`` or seconds from the recording start (``end`` exclusive);
        either may be left out (from the start / to the end of the night).
    part : str or None
        A part of the night in words (:data:`NIGHT_PARTS`): "first half", "second half",
        "first third", "middle third", "last third", "first quarter" ... "last quarter",
        "first hour", "last 2 hours", "first 90 minutes". Halves, thirds and quarters are of
        the recording (its first to its last epoch).
    """

    model_config = ConfigDict(extra="forbid")

    epoch: int | None = Field(default=None, ge=0, description="one 30-s epoch, index from 0")
    epochs: tuple[int, int] | None = Field(
        default=None, description="first and last epoch (inclusive), indices from 0")
    start: TimeValue | None = Field(
        default=None, description="clock time 'HH:MM' or 'HH:MM:SS', or seconds from the start")
    end: TimeValue | None = Field(
        default=None, description="clock time 'HH:MM' or 'HH:MM:SS', or seconds from the start")
    part: str | None = Field(
        default=None, description="a part of the night in words: 'first half', 'second half', "
                                  "'last third', 'first hour', 'last 2 hours'")

    @property
    def is_night(self) -> bool:
        return self.epoch is None and self.epochs is None and self.start is None \
            and self.end is None and self.part is None


_ORDINAL_FRACTION = {"first": 0, "second": 1, "middle": None, "third": 2, "fourth": 3,
                     "last": -1, "final": -1}
_FRACTION = {"half": 2, "halves": 2, "third": 3, "quarter": 4}
_NUMBER_WORDS = {"one": 1, "a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5,
                 "six": 6, "couple of": 2}
#: A part of the night in words (``TimeSelection.part``), as found in a question.
NIGHT_PARTS = re.compile(
    r"\b(?P<which>first|second|middle|third|fourth|last|final)\s+"
    r"(?:(?P<frac>half|third|quarter)\b"
    r"|(?P<n>\d+(?:\.\d+)?|one|two|three|four|five|six|couple of|a|an)?\s*"
    r"(?P<unit>hours?|hrs?|minutes?|mins?)\b)"
    r"(?:\s+(?:of\s+)?(?:the\s+)?(?:night|recording|study|sleep))?", re.IGNORECASE)


def find_night_part(text: str) -> str | None:
    """The part of the night a text names ("the second half of the night" -> "second half",
    "in the last 2 hours" -> "last 2 hours"), normalised for ``TimeSelection.part``; None
    when it names none."""
    m = NIGHT_PARTS.search(text)
    if not m:
        return None
    which = m.group("which").lower()
    if m.group("frac"):
        frac = m.group("frac").lower()
        if which in {"third", "fourth"} and frac == "half":
            return None
        return f"{which} {frac}"
    n = (m.group("n") or "1").lower()
    n = str(_NUMBER_WORDS.get(n, n))
    unit = "hour" if m.group("unit").lower().startswith("h") else "minute"
    if which not in {"first", "last", "final"}:
        return None
    return f"{'last' if which == 'final' else which} {n} {unit}{'' if n == '1' else 's'}"


def night_part_bounds(part: str, start_s: float, end_s: float) -> tuple[float, float]:
    """``(start, end)`` in seconds from the recording start of a ``TimeSelection.part`` on a
    night running from ``start_s`` to ``end_s``.

    Raises
    ------
    TimeRangeError
        A part that is not one of the accepted forms.
    """
    m = NIGHT_PARTS.fullmatch(part.strip()) if part else None
    if m is None:
        raise TimeRangeError(
            f"part {part!r} is not a part of the night I know: say 'first half', 'second "
            "half', 'first/middle/last third', 'first ... last quarter', 'first hour', 'last 2 "
            "hours' or 'first 90 minutes', or give clock times")
    which = m.group("which").lower()
    length = end_s - start_s
    if m.group("frac"):
        k = _FRACTION[m.group("frac").lower()]
        idx = _ORDINAL_FRACTION[which]
        if idx is None:
            idx = k // 2 if k % 2 else None
        if idx is None or idx >= k:
            raise TimeRangeError(f"part {part!r}: a night has no {which} "
                                 f"{m.group('frac').lower()}")
        idx = idx % k
        return start_s + length * idx / k, start_s + length * (idx + 1) / k
    n = (m.group("n") or "1").lower()
    n = float(_NUMBER_WORDS.get(n, n))
    secs = n * (3600.0 if m.group("unit").lower().startswith("h") else 60.0)
    if which not in {"first", "last", "final"}:
        raise TimeRangeError(f"part {part!r}: say 'first' or 'last' with hours or minutes")
    if secs <= 0:
        raise TimeRangeError(f"part {part!r} is empty")
    if which == "first":
        return start_s, min(end_s, start_s + secs)
    return max(start_s, end_s - secs), end_s


class Span(BaseModel):
    """A run of epochs with its times and stages.

    Attributes
    ----------
    first_epoch, last_epoch : int
        Inclusive epoch indices.
    n_epochs : int
    start_s, end_s : float
        Seconds from the recording start (``end_s`` exclusive).
    start_clock, end_clock : str
        Wall-clock ``"HH:MM:SS"`` ("" when the start time is unknown).
    stages : dict of str to int
        Epochs per scored stage in the span.
    main_stage : str
        The most frequent stage.
    """

    model_config = ConfigDict(frozen=True)

    first_epoch: int
    last_epoch: int
    n_epochs: int
    start_s: float
    end_s: float
    start_clock: str = ""
    end_clock: str = ""
    stages: dict[str, int] = Field(default_factory=dict)
    main_stage: str = "UNS"

    def describe(self) -> str:
        """``"epochs 12-15 (23:06:00-23:08:00, N2)"``."""
        ep = (f"epoch {self.first_epoch}" if self.first_epoch == self.last_epoch
              else f"epochs {self.first_epoch}-{self.last_epoch}")
        when = (f"{self.start_clock}-{self.end_clock}" if self.start_clock
                else f"{self.start_s:.0f}-{self.end_s:.0f} s")
        return f"{ep} ({when}, {self.main_stage})"


class Selection(BaseModel):
    """A resolved :class:`TimeSelection`: its scope and span."""

    scope: Literal["epoch", "range", "night"]
    span: Span


class Requirement(BaseModel):
    """A kind of signal a question needs, and whether the night has it.

    Attributes
    ----------
    need : str
        What is needed ("SpO2", "EEG", ...).
    channels : list of str
        Model-input channels that would satisfy it (any one).
    present : list of str
        Those present and usable in this night.
    """

    need: str
    channels: list[str]
    present: list[str]

    @property
    def met(self) -> bool:
        return bool(self.present)


#: Words in a question -> the signal it needs and the channels that carry it.
_NEEDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (r"spo2|sao2|desat|oxygen|oximetr|saturation|hypox", "SpO2", ("SPO2",)),
    (r"spindle|eeg|alpha|delta|theta|beta|slow[- ]wave|k[- ]complex|sawtooth|fast eeg|"
     r"cortical|arousal", "EEG", ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O")),
    (r"eye movement|\beog\b|saccad", "EOG", ("EOG_L", "EOG_R")),
    (r"atonia|chin|\bemg\b|muscle tone|bruxism", "chin EMG", ("EMG_CHIN",)),
    (r"\bleg|limb|\bplms?\b|kick", "leg EMG", ("EMG_LEG", "EMG_LEG_R")),
    (r"apn[oe]a|hypopn[oe]a|breath|airflow|respirat|snor|effort|paradox|cheyne",
     "respiratory effort or airflow", ("AIRFLOW", "NASAL_PRESSURE", "THORAX", "ABDOMEN")),
    (r"heart|\becg\b|\bekg\b|cardiac|brady|tachy|arrhythm|pulse", "ECG or heart rate",
     ("ECG", "HR")),
    (r"supine|prone|position|lateral", "body position", ("POSITION",)),
    (r"\bn[1-4]\b|\brem\b|\bnrem\b|\bwake\b|\bawake\b|\bstage|slow[- ]wave sleep|deep sleep"
     r"|light sleep", "EEG or EOG (to stage sleep)",
     ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O", "EOG_L", "EOG_R")),
)


def recording_start(p: ProcessedPatient) -> _dt.datetime | None:
    """The recording's start time (None when unknown or the study cannot be read)."""
    try:
        return p.recording().info.start_time
    except Exception:  # noqa: BLE001 - a clock is optional: without it, seconds still work
        return None


def parse_time(value: TimeValue, start: _dt.datetime | None) -> float:
    """Seconds from the recording start of a clock time or a number of seconds.

    Parameters
    ----------
    value : str or float
        ``"HH:MM"``, ``"HH:MM:SS"`` (wall clock; earlier than the start means the next day),
        ``"1830"``, ``"1830s"`` or a number (seconds), ``"epoch 12"`` (the epoch's start).
    start : datetime or None
        The recording's start (``RecordingInfo.start_time``).

    Raises
    ------
    TimeRangeError
        Malformed, or a clock time when the recording's start time is unknown.
    """
    if isinstance(value, bool):
        raise TimeRangeError(f"a time must be a clock time or seconds, got {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        if not np.isfinite(value):
            raise TimeRangeError(f"a time must be finite, got {value!r}")
        return float(value)
    text = str(value)
    if m := _SECONDS.match(text):
        return float(m.group(1))
    if m := _EPOCH.match(text):
        return float(m.group(1)) * 30.0
    m = _CLOCK.match(text)
    if not m:
        raise TimeRangeError(f"cannot read the time {text!r}: give a clock time 'HH:MM' or "
                             "'HH:MM:SS', seconds from the recording start, or 'epoch N'")
    h, mi, s = int(m.group(1)), int(m.group(2)), float(m.group(3) or 0)
    if h > 23 or mi > 59 or s >= 60:
        raise TimeRangeError(f"{text!r} is not a valid clock time (HH 0-23, MM 0-59)")
    if start is None:
        raise TimeRangeError(f"the clock time {text!r} cannot be placed: this recording has no "
                             "start time; give seconds from the start or epoch numbers instead")
    day0 = start.replace(hour=0, minute=0, second=0, microsecond=0)
    t = day0 + _dt.timedelta(hours=h, minutes=mi, seconds=s)
    if t < start - _dt.timedelta(seconds=1):
        t += _dt.timedelta(days=1)
    return max(0.0, (t - start).total_seconds())


def span_of(p: ProcessedPatient, first: int, last: int,
            start: _dt.datetime | None | Literal[False] = False) -> Span:
    """The :class:`Span` of epochs ``first..last`` (inclusive) of ``p``."""
    t0 = recording_start(p) if start is False else start
    es = float(p.meta.input_config.get("epoch_sec", 30.0))
    counts = Counter(str(s) for s in p.stages[first:last + 1])
    s0 = float(p.onsets_s[first])
    s1 = float(p.onsets_s[last]) + es
    return Span(first_epoch=int(first), last_epoch=int(last), n_epochs=int(last - first + 1),
                start_s=s0, end_s=s1, start_clock=clock_of(t0, s0), end_clock=clock_of(t0, s1),
                stages=dict(counts), main_stage=counts.most_common(1)[0][0] if counts else "UNS")


def resolve_selection(p: ProcessedPatient, sel: TimeSelection | None) -> Selection:
    """The epochs a :class:`TimeSelection` covers in ``p``.

    Raises
    ------
    TimeRangeError
        An epoch or time outside the night, an empty or reversed range, or a night without
        epochs.
    """
    n = p.n_epochs
    if n == 0:
        raise TimeRangeError(f"patient '{p.patient}' has no 30-s epochs to look at")
    sel = sel or TimeSelection()
    es = float(p.meta.input_config.get("epoch_sec", 30.0))
    onsets = np.asarray(p.onsets_s, dtype=float)
    night0, night1 = float(onsets[0]), float(onsets[-1]) + es
    t0 = recording_start(p)

    def _where() -> str:
        c0, c1 = clock_of(t0, night0), clock_of(t0, night1)
        clock = f", {c0}-{c1}" if c0 else ""
        return f"the night has epochs 0-{n - 1} ({night0:.0f}-{night1:.0f} s{clock})"

    if sel.epoch is not None:
        if sel.epoch >= n:
            raise TimeRangeError(f"epoch {sel.epoch} is outside the night: {_where()}")
        return Selection(scope="epoch", span=span_of(p, sel.epoch, sel.epoch, t0))
    if sel.epochs is not None:
        a, b = sel.epochs
        if a < 0 or b < a:
            raise TimeRangeError(f"epoch range {a}-{b} is empty or reversed")
        if b >= n:
            raise TimeRangeError(f"epochs {a}-{b} reach outside the night: {_where()}")
        return Selection(scope="epoch" if a == b else "range", span=span_of(p, a, b, t0))
    if sel.part is not None:
        if sel.start is not None or sel.end is not None:
            raise TimeRangeError("give either a part of the night or clock times, not both")
        s, e = night_part_bounds(sel.part, night0, night1)
        # whole epochs: a boundary inside an epoch goes to the nearer epoch edge, so that the
        # two halves of a night share no epoch
        first = int(np.clip(np.searchsorted(onsets, s - es / 2, side="right"), 0, n - 1))
        last = int(np.clip(np.searchsorted(onsets, e - es / 2, side="right") - 1, first, n - 1))
        return Selection(scope="epoch" if first == last else "range",
                         span=span_of(p, first, last, t0))
    elif sel.start is None and sel.end is None:
        return Selection(scope="night", span=span_of(p, 0, n - 1, t0))
    else:
        s = parse_time(sel.start, t0) if sel.start is not None else night0
        e = parse_time(sel.end, t0) if sel.end is not None else night1
    if not (night0 - 1e-6 <= s < night1):
        raise TimeRangeError(f"start {sel.start!r} ({s:.0f} s) is outside the night: {_where()}")
    if e > night1 + 1e-6 or e < night0:
        raise TimeRangeError(f"end {sel.end!r} ({e:.0f} s) is outside the night: {_where()}")
    if e <= s:
        raise TimeRangeError(f"the range {sel.start!r}-{sel.end!r} is empty or reversed "
                             f"({s:.0f}-{e:.0f} s)")
    first = int(np.searchsorted(onsets, s, side="right") - 1)
    last = int(np.searchsorted(onsets, e, side="left") - 1)
    first, last = max(first, 0), max(min(last, n - 1), max(first, 0))
    return Selection(scope="epoch" if first == last else "range", span=span_of(p, first, last, t0))


def requirements_for(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """The signals a question in words needs: ``[(need, channels)]`` (keyword rules)."""
    low = text.lower()
    return [(need, chans) for pattern, need, chans in _NEEDS if re.search(pattern, low)]


def check_requirements(p: ProcessedPatient, needs: Sequence[tuple[str, Sequence[str]]]
                       ) -> tuple[list[Requirement], str | None]:
    """Which needs the night meets (present and usable in the model input).

    Returns
    -------
    requirements : list of Requirement
    refusal : str or None
        A plain sentence naming what is missing, or None when everything needed is there.
    """
    present = {c for c, m in zip(p.channels, np.asarray(p.mask, dtype=bool)) if m}
    reqs = [Requirement(need=need, channels=list(ch), present=[c for c in ch if c in present])
            for need, ch in needs]
    missing = [r for r in reqs if not r.met]
    if not missing:
        return reqs, None
    have = ", ".join(sorted(present)) or "none"
    what = "; ".join(f"{r.need} (none of {', '.join(r.channels)})" for r in missing)
    return reqs, (f"This night lacks what the question needs: {what}. Channels present: {have}. "
                  "No answer is given rather than one made from other signals.")


def stage_table(stages: Sequence[Any]) -> dict[str, int]:
    """Epochs per stage."""
    return dict(Counter(str(s) for s in stages))
