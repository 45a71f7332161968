"""Read scored sleep stages and events from the annotation files that come with PSG studies.

Supported formats (:func:`read_annotations` recognises them by content, not by name):

* Sleep-EDF ``*-Hypnogram.edf`` EDF+ files ("Sleep stage W", "Sleep stage 1"... spanning
  several 30-s epochs each) and the annotations embedded in EDF+ signal files;
* NSRR XML (``<PSGAnnotation>``: SHHS, MESA, MrOS, CFS, CHAT...), with or without
  ``<EventType>`` elements;
* Compumedics Profusion XML (``<CMPStudyConfig>``);
* plain CSV/TXT hypnograms, one stage per epoch.

Each reader returns an :class:`Annotations`; :func:`apply_annotations` checks it against the
signals and puts it into a :class:`~sleeplm.recording.Recording`. Labels are mapped with
:mod:`sleeplm.io.labels`; an event's original label is always kept verbatim in the ``label``
column of the events table.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import pandas as pd

from sleeplm._logging import logger
from sleeplm.errors import AnnotationError, UnknownStageError
from sleeplm.io.labels import event_type_from_label, is_stage_label, stage_from_label
from sleeplm.recording import validated_stages, EPOCH_SEC, Recording, make_events

__all__ = [
    "Annotations",
    "read_annotations",
    "read_sleepedf_hypnogram",
    "read_nsrr_xml",
    "read_profusion_xml",
    "read_hypnogram_text",
    "annotations_from_triplets",
    "apply_annotations",
    "find_annotation_file",
    "SUPPORTED_XML_ROOTS",
]

#: Root elements of the XML formats read here.
SUPPORTED_XML_ROOTS: dict[str, str] = {
    "PSGAnnotation": "NSRR XML",
    "CMPStudyConfig": "Compumedics Profusion XML",
}
#: Longest hypnogram accepted, seconds (7 days): protects against absurd durations.
MAX_HYPNOGRAM_SEC = 7 * 24 * 3600.0
_TEXT_HEADER_NAMES = ("stage", "stages", "sleepstage", "sleepstages", "hypnogram", "hypno",
                      "label", "labels", "annotation", "annotations", "description", "score")
_PROFUSION_STAGES = {0: "W", 1: "N1", 2: "N2", 3: "N3", 4: "N3", 5: "R"}
# Stage-like words that, outside a hypnogram, are more likely artefact marks than stages.
_NOT_A_STAGE_EVENT = re.compile(r"\s*(?:art|artefacts?|artifacts?|unknown)\s*", re.I)


# --------------------------------------------------------------------------- container
@dataclass
class Annotations:
    """Scored stages and events read from an annotation file.

    Attributes
    ----------
    stages : numpy.ndarray or None
        One of :data:`~sleeplm.recording.STAGES` per epoch (dtype ``<U3``), or None when the
        file holds no hypnogram.
    epoch_sec : float
        Epoch length of ``stages``, seconds.
    stage_onset : float
        Start of the first epoch, seconds from the start of the recording.
    events : pandas.DataFrame
        Scored events (see :func:`~sleeplm.recording.make_events`); ``onset`` and ``duration``
        in seconds, ``label`` the verbatim label of the source file.
    source : str
        Format the annotations came from ("nsrr-xml", "profusion-xml", "sleep-edf-hypnogram",
        "hypnogram-text", "edf+ annotations"...).
    notes : list of str
        What the reader noticed and handled (gaps, rounded durations, skipped entries).
    """

    stages: np.ndarray | None = None
    epoch_sec: float = EPOCH_SEC
    stage_onset: float = 0.0
    events: pd.DataFrame = field(default_factory=make_events)
    source: str = "unknown"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.stages is not None:
            self.stages = validated_stages(self.stages, "Annotations")
        if not self.epoch_sec > 0:
            raise AnnotationError(f"epoch_sec must be positive (seconds); got {self.epoch_sec}.")

    @property
    def n_epochs(self) -> int:
        """Number of epochs of the hypnogram (0 without one)."""
        return 0 if self.stages is None else int(self.stages.size)

    @property
    def stage_end(self) -> float:
        """End of the last epoch, seconds from the recording start (0 without a hypnogram)."""
        return self.stage_onset + self.n_epochs * self.epoch_sec if self.n_epochs else 0.0

    @property
    def end(self) -> float:
        """End of the last epoch or event, whichever is later, seconds."""
        ev_end = float((self.events["onset"] + self.events["duration"]).max()) if len(self.events) else 0.0
        return max(self.stage_end, ev_end)


# --------------------------------------------------------------------------- helpers
def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise AnnotationError(
            f"Annotation file not found: {p} (no such file). Check the path, or pass "
            "annotations=None to read the signals without annotations."
        )
    if not p.is_file():
        raise AnnotationError(f"Annotation path {p} is a directory, not a file; pass the file itself.")
    return p


def _event_row(
    onset: float,
    duration: float,
    label: str,
    *,
    concept_type: str | None = None,
    channel: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row for :func:`make_events`, typed from its label."""
    etype, attrs = event_type_from_label(label, concept_type)
    canonical = attrs.pop("channel", None)
    if canonical and channel and channel != canonical:
        attrs["source_channel"] = channel
    attrs.update(extra or {})
    return {
        "onset": onset,
        "duration": duration,
        "type": etype,
        "label": label,
        "channel": canonical or channel or None,
        "attributes": attrs,
    }


def _hypnogram_from_spans(
    spans: Sequence[tuple[float, float, str]],
    epoch_sec: float,
    name: str,
    notes: list[str],
) -> tuple[np.ndarray, float]:
    """Expand (onset s, duration s, stage) spans into one stage per epoch.

    The epoch grid is aligned on the first span: ``stage_onset`` is its onset modulo
    ``epoch_sec``, so epochs before the first span, and gaps between spans, are ``UNS``. A span
    of zero duration lasts until the next span (one epoch when it is the last).

    Returns
    -------
    stages : numpy.ndarray
        ``<U3`` array of stages.
    stage_onset : float
        Start of the first epoch, seconds.
    """
    spans = sorted(spans, key=lambda s: s[0])
    stage_onset = round(spans[0][0] % epoch_sec, 6)
    if math.isclose(stage_onset, epoch_sec):
        stage_onset = 0.0
    placed: list[tuple[int, int, str]] = []
    rounded = open_ended = off_grid = 0
    for i, (onset, duration, stage) in enumerate(spans):
        if duration <= 0:
            open_ended += 1
            nxt = spans[i + 1][0] if i + 1 < len(spans) else onset + epoch_sec
            duration = max(nxt - onset, epoch_sec)
        start_f = (onset - stage_onset) / epoch_sec
        count_f = duration / epoch_sec
        start, count = int(round(start_f)), int(round(count_f))
        off_grid += abs(start_f - start) > 1e-3
        rounded += abs(count_f - count) > 1e-3
        if start + count > MAX_HYPNOGRAM_SEC / epoch_sec:
            raise AnnotationError(
                f"{name}: a stage annotation at {onset:g} s lasting {duration:g} s would make a "
                f"hypnogram longer than {MAX_HYPNOGRAM_SEC / 86400:g} days. Expected onsets and "
                "durations in seconds; check the file (or its epoch length)."
            )
        if count > 0:
            placed.append((start, count, stage))
    if rounded:
        notes.append(f"{rounded} stage annotation(s) lasting no whole number of {epoch_sec:g}-s "
                     "epochs were rounded to whole epochs")
    if off_grid:
        notes.append(f"{off_grid} stage annotation(s) starting off the {epoch_sec:g}-s epoch grid "
                     "were moved to the nearest epoch")
    if open_ended:
        notes.append(f"{open_ended} stage annotation(s) without a duration were extended to the "
                     "next stage annotation")
    n = max((s + c for s, c, _ in placed), default=0)
    stages = np.full(n, "UNS", dtype="<U3")
    covered = np.zeros(n, dtype=bool)
    overlaps = 0
    for start, count, stage in placed:
        seg = slice(start, start + count)
        overlaps += int(np.count_nonzero(covered[seg] & (stages[seg] != stage)))
        stages[seg] = stage
        covered[seg] = True
    gaps = int(np.count_nonzero(~covered))
    if gaps:
        notes.append(f"{gaps} epoch(s) not covered by any stage annotation were set to UNS")
    if overlaps:
        notes.append(f"{overlaps} epoch(s) had overlapping, different stage annotations; the "
                     "later annotation was kept")
    return stages, float(stage_onset)


def annotations_from_triplets(
    triplets: Iterable[tuple[float, float, str]],
    *,
    source: str = "edf+ annotations",
    epoch_sec: float = EPOCH_SEC,
    name: str = "EDF+ annotations",
) -> Annotations:
    """Turn EDF+ style (onset, duration, text) annotations into stages and events.

    Stage annotations ("Sleep stage 2", "Movement time", "N3"...) build the hypnogram (see
    :func:`read_sleepedf_hypnogram`); every other annotation becomes an event typed with
    :func:`~sleeplm.io.labels.event_type_from_label`.

    Parameters
    ----------
    triplets : iterable of (float, float, str)
        Onset (s from the recording start), duration (s, 0 when unknown) and text.
    source : str
        Recorded in :attr:`Annotations.source`.
    epoch_sec : float
        Epoch length of the hypnogram, seconds.
    name : str
        File name quoted in error messages.

    Returns
    -------
    Annotations

    Raises
    ------
    AnnotationError
        An annotation starts before the recording (negative onset).
    """
    spans: list[tuple[float, float, str]] = []
    rows: list[dict[str, Any]] = []
    for onset, duration, text in triplets:
        onset, duration, text = float(onset), float(duration or 0.0), str(text).strip()
        if not text:
            continue
        if not (math.isfinite(onset) and math.isfinite(duration)):
            raise AnnotationError(f"{name}: annotation {text!r} has a non-finite onset or "
                                  f"duration ({onset}, {duration}); expected seconds.")
        if onset < 0:
            raise AnnotationError(
                f"{name}: annotation {text!r} starts at {onset:g} s, before the recording. "
                "Expected onsets >= 0 s from the recording start; fix the file."
            )
        if is_stage_label(text) and not _NOT_A_STAGE_EVENT.fullmatch(text):
            spans.append((onset, duration, stage_from_label(text)))
        else:
            rows.append(_event_row(onset, max(duration, 0.0), text))
    notes: list[str] = []
    stages, stage_onset = (None, 0.0)
    if spans:
        stages, stage_onset = _hypnogram_from_spans(spans, epoch_sec, name, notes)
    return Annotations(stages=stages, epoch_sec=epoch_sec, stage_onset=stage_onset,
                       events=make_events(rows), source=source, notes=notes)


# --------------------------------------------------------------------------- Sleep-EDF EDF+
def _check_edf_header(p: Path) -> None:
    """Refuse files whose fixed 256-byte EDF header is missing or inconsistent.

    MNE returns no annotations (rather than an error) for some corrupt files; this check makes
    them fail loudly instead of looking like an empty hypnogram.
    """
    with open(p, "rb") as fh:
        head = fh.read(256)
    size = p.stat().st_size
    problem = None
    if len(head) < 256:
        problem = f"the file has {size} bytes, fewer than the 256 of an EDF header"
    elif not head.startswith(b"0       "):
        problem = f"it starts with {head[:8]!r}, not the EDF version field '0       '"
    else:
        try:
            header_bytes = int(head[184:192].decode("ascii").strip())
            n_signals = int(head[252:256].decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            problem = "its header fields 'number of bytes in header' / 'number of signals' are not numbers"
        else:
            if n_signals < 1 or header_bytes != 256 * (n_signals + 1):
                problem = (f"its header declares {header_bytes} header bytes for {n_signals} "
                           "signal(s), which is inconsistent")
            elif size < header_bytes:
                problem = f"the file ({size} bytes) is shorter than its own header ({header_bytes} bytes)"
    if problem:
        raise AnnotationError(
            f"{p.name} is not a valid EDF+ file: {problem}. Expected a Sleep-EDF style hypnogram "
            "(EDF+ with 'Sleep stage ...' annotations); the file may be truncated or corrupt."
        )


def read_sleepedf_hypnogram(path: str | os.PathLike, *, epoch_sec: float = EPOCH_SEC) -> Annotations:
    """Read a Sleep-EDF ``*-Hypnogram.edf`` file (or any EDF+ file's annotations).

    Each "Sleep stage X" annotation covers ``duration / epoch_sec`` epochs (rounded, with a
    note, when not whole); "Sleep stage ?" and "Movement time" give ``UNS``, as do epochs before
    the first stage annotation and gaps between annotations. Other annotations become events.

    Parameters
    ----------
    path : path-like
        The EDF+ file.
    epoch_sec : float
        Epoch length of the hypnogram, seconds (30 in Sleep-EDF).

    Returns
    -------
    Annotations
        ``source`` is "sleep-edf-hypnogram".

    Raises
    ------
    AnnotationError
        The file is missing, not a readable EDF+ file, or holds no annotations.
    """
    p = _check_file(path)
    _check_edf_header(p)
    import mne  # heavy import on demand

    try:
        with tempfile.TemporaryDirectory() as tmp:
            target = p
            if p.suffix.lower() != ".edf":  # mne picks the parser by extension
                target = Path(tmp) / "annotations.edf"
                try:
                    target.symlink_to(p.resolve())
                except OSError:
                    target.write_bytes(p.read_bytes())
            with mne.utils.use_log_level("error"):
                raw = mne.read_annotations(str(target))
            triplets = list(zip(raw.onset, raw.duration, raw.description))
    except Exception as exc:  # anything mne raises on a corrupt file
        raise AnnotationError(
            f"{p.name}: could not read EDF+ annotations ({type(exc).__name__}: {exc}). Expected a "
            "Sleep-EDF style hypnogram (EDF+ file with 'Sleep stage ...' annotations); check that "
            "the file is complete, or export the hypnogram as CSV."
        ) from exc
    if not triplets:
        raise AnnotationError(
            f"{p.name}: no annotations found. Expected an EDF+ hypnogram with 'Sleep stage ...' "
            "annotations; if this is the signal (PSG) file, pass its -Hypnogram.edf instead."
        )
    ann = annotations_from_triplets(triplets, source="sleep-edf-hypnogram", epoch_sec=epoch_sec,
                                    name=p.name)
    if ann.stages is None:
        ann.notes.append(f"{p.name} holds annotations but no sleep stages")
    return ann


# --------------------------------------------------------------------------- XML
def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _parse_xml(p: Path):
    """Parse an XML file safely; return its root element."""
    import xml.etree.ElementTree as std_et

    import defusedxml
    import defusedxml.ElementTree as safe_et

    try:
        return safe_et.parse(str(p)).getroot()
    except defusedxml.DefusedXmlException as exc:
        raise AnnotationError(
            f"{p.name}: refused to parse this XML because it declares entities or external "
            f"references ({type(exc).__name__}). Annotation files never need them, and they can "
            "be used to exhaust memory (an 'XML bomb'). Export the annotations again from the "
            "scoring software."
        ) from exc
    except (std_et.ParseError, safe_et.ParseError, ValueError) as exc:
        raise AnnotationError(
            f"{p.name} is not well-formed XML ({exc}). Expected "
            f"{' or '.join(f'{v} (<{k}> root)' for k, v in SUPPORTED_XML_ROOTS.items())}; check "
            "that the file is complete."
        ) from exc


def _fields(elem) -> dict[str, str]:
    """Text of an element's direct children, by lower-cased local tag (first occurrence wins)."""
    out: dict[str, str] = {}
    for child in elem:
        key = _local(child.tag).lower()
        if key and key not in out:
            out[key] = (child.text or "").strip()
    return out


def _find_all(root, name: str) -> list:
    return [e for e in root.iter() if _local(e.tag) == name]


def _number(text: str | None, what: str, where: str, *, default: float | None = None) -> float:
    if text is None or text == "":
        if default is not None:
            return default
        raise AnnotationError(f"{where}: missing {what}; expected a number of seconds.")
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError(f"{where}: {what} is {text!r}; expected a number.") from None
    if not math.isfinite(value):
        raise AnnotationError(f"{where}: {what} is {text!r}; expected a finite number.")
    return value


def _optional_number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _epoch_length(root, name: str, notes: list[str]) -> float:
    elems = _find_all(root, "EpochLength")
    if not elems:
        notes.append(f"no <EpochLength> in {name}; assumed {EPOCH_SEC:g} s")
        return EPOCH_SEC
    value = _number((elems[0].text or "").strip(), "<EpochLength>", name, default=EPOCH_SEC)
    if value <= 0:
        raise AnnotationError(f"{name}: <EpochLength> is {value:g}; expected a positive number "
                              "of seconds (usually 30).")
    return value


def _timing(fields: dict[str, str], where: str) -> tuple[float, float]:
    start = _number(fields.get("start"), "<Start>", where)
    duration = _number(fields.get("duration"), "<Duration>", where, default=0.0)
    if start < 0:
        raise AnnotationError(
            f"{where}: <Start> is {start:g} s, before the recording. Expected seconds >= 0 from "
            "the recording start; fix the file (or re-export it)."
        )
    if duration < 0:
        raise AnnotationError(f"{where}: <Duration> is {duration:g} s; expected >= 0 s.")
    return start, duration


def _wrong_root(name: str, root_tag: str, expected: str) -> AnnotationError:
    supported = ", ".join(f"<{k}> ({v})" for k, v in SUPPORTED_XML_ROOTS.items())
    hint = (" Use read_annotations(), which picks the reader from the content."
            if root_tag in SUPPORTED_XML_ROOTS else "")
    return AnnotationError(
        f"{name}: root element is <{root_tag}>, expected <{expected}>. Supported XML annotation "
        f"formats: {supported}.{hint} Other formats: export the hypnogram as CSV (one stage per "
        "30-s epoch)."
    )


def _spo2_attributes(*, nadir: float | None = None, baseline: float | None = None,
                     drop: float | None = None) -> dict[str, float]:
    """SpO2 nadir, baseline and drop (%) of a desaturation, completing the third from two."""
    if drop is None and nadir is not None and baseline is not None:
        drop = round(baseline - nadir, 6)
    if baseline is None and nadir is not None and drop is not None:
        baseline = round(nadir + drop, 6)
    values = {"spo2_nadir": nadir, "spo2_baseline": baseline, "drop": drop}
    return {k: v for k, v in values.items() if v is not None}


def _nsrr_from_root(root, name: str) -> Annotations:
    notes: list[str] = []
    epoch = _epoch_length(root, name, notes)
    spans: list[tuple[float, float, str]] = []
    rows: list[dict[str, Any]] = []
    skipped = 0
    for i, elem in enumerate(_find_all(root, "ScoredEvent"), start=1):
        f = _fields(elem)
        concept = f.get("eventconcept", "")
        etype = f.get("eventtype") or None
        where = f"{name}, ScoredEvent #{i} ({concept or 'no EventConcept'})"
        if not concept:
            skipped += 1
            continue
        if concept.split("|")[0].strip().lower() == "recording start time":
            if f.get("clocktime"):
                notes.append(f"recording start clock time: {f['clocktime']}")
            continue
        start, duration = _timing(f, where)
        if etype is not None and "stages" in etype.lower():
            try:
                stage = stage_from_label(concept)
            except UnknownStageError as exc:
                raise UnknownStageError(f"{where}: {exc}") from None
            spans.append((start, duration, stage))
            continue
        if etype is None and is_stage_label(concept) and not _NOT_A_STAGE_EVENT.fullmatch(concept):
            spans.append((start, duration, stage_from_label(concept)))
            continue
        extra = _spo2_attributes(nadir=_optional_number(f.get("spo2nadir")),
                                 baseline=_optional_number(f.get("spo2baseline")))
        rows.append(_event_row(start, duration, concept, concept_type=etype,
                               channel=f.get("signallocation") or None, extra=extra))
    if skipped:
        notes.append(f"{skipped} ScoredEvent(s) without an EventConcept were skipped")
    stages, stage_onset = (None, 0.0)
    if spans:
        stages, stage_onset = _hypnogram_from_spans(spans, epoch, name, notes)
    else:
        notes.append(f"{name} holds no sleep-stage events")
    return Annotations(stages=stages, epoch_sec=epoch, stage_onset=stage_onset,
                       events=make_events(rows), source="nsrr-xml", notes=notes)


def _profusion_from_root(root, name: str) -> Annotations:
    notes: list[str] = []
    epoch = _epoch_length(root, name, notes)
    rows: list[dict[str, Any]] = []
    for i, elem in enumerate(_find_all(root, "ScoredEvent"), start=1):
        f = _fields(elem)
        label = f.get("name", "")
        where = f"{name}, ScoredEvent #{i} ({label or 'no Name'})"
        if not label:
            raise AnnotationError(f"{where}: missing <Name>; expected the event's name "
                                  "(e.g. 'Obstructive Apnea').")
        start, duration = _timing(f, where)
        extra = _spo2_attributes(nadir=_optional_number(f.get("lowestspo2")),
                                 drop=_optional_number(f.get("desaturation")))
        rows.append(_event_row(start, duration, label, channel=f.get("input") or None, extra=extra))
    codes = [(e.text or "").strip() for e in _find_all(root, "SleepStage")]
    stages = None
    if codes:
        out = []
        for i, code in enumerate(codes, start=1):
            try:
                value = int(float(code))
            except ValueError:
                raise UnknownStageError(
                    f"{name}: <SleepStage> #{i} is {code!r}; Profusion codes stages as integers "
                    "(0 W, 1 N1, 2 N2, 3/4 N3, 5 REM, others unscored). Fix or re-export the file."
                ) from None
            out.append(_PROFUSION_STAGES.get(value, "UNS"))
        stages = np.asarray(out, dtype="<U3")
    else:
        notes.append(f"{name} holds no <SleepStages>")
    return Annotations(stages=stages, epoch_sec=epoch, stage_onset=0.0,
                       events=make_events(rows), source="profusion-xml", notes=notes)


def read_nsrr_xml(path: str | os.PathLike) -> Annotations:
    """Read an NSRR XML annotation file (``<PSGAnnotation>`` root).

    Stage events (``<EventType>`` "Stages|Stages", or, in older exports without EventType, an
    EventConcept that is a stage label) build the hypnogram: each spans
    ``Duration / EpochLength`` epochs from ``Start``; uncovered epochs are ``UNS``. Other
    events are typed from their EventConcept; desaturations keep ``spo2_nadir``,
    ``spo2_baseline`` (%) and ``drop = baseline - nadir`` (percentage points) as attributes.
    "Recording Start Time" entries are skipped (their ClockTime goes to the notes).

    Parameters
    ----------
    path : path-like
        The XML file.

    Returns
    -------
    Annotations
        ``source`` is "nsrr-xml".

    Raises
    ------
    AnnotationError
        Missing file, malformed or hostile XML, another root element, a negative or
        non-numeric Start/Duration.
    UnknownStageError
        A stage event's EventConcept is not a known stage label.
    """
    p = _check_file(path)
    root = _parse_xml(p)
    if _local(root.tag) != "PSGAnnotation":
        raise _wrong_root(p.name, _local(root.tag), "PSGAnnotation")
    return _nsrr_from_root(root, p.name)


def read_profusion_xml(path: str | os.PathLike) -> Annotations:
    """Read a Compumedics Profusion XML file (``<CMPStudyConfig>`` root).

    ``<SleepStages>`` holds one integer per epoch of ``<EpochLength>`` seconds: 0 W, 1 N1,
    2 N2, 3 and 4 N3, 5 REM, anything else (6 movement, 9 unscored) ``UNS``. ``<ScoredEvents>``
    give events from ``<Name>``, ``<Start>``, ``<Duration>`` (s) and ``<Input>`` (channel);
    ``<LowestSpO2>`` and ``<Desaturation>`` become ``spo2_nadir`` and ``drop`` (with
    ``spo2_baseline = nadir + drop``), in %.

    Parameters
    ----------
    path : path-like
        The XML file.

    Returns
    -------
    Annotations
        ``source`` is "profusion-xml".

    Raises
    ------
    AnnotationError
        Missing file, malformed or hostile XML, another root element, bad event timing.
    UnknownStageError
        A ``<SleepStage>`` is not an integer.
    """
    p = _check_file(path)
    root = _parse_xml(p)
    if _local(root.tag) != "CMPStudyConfig":
        raise _wrong_root(p.name, _local(root.tag), "CMPStudyConfig")
    return _profusion_from_root(root, p.name)


# --------------------------------------------------------------------------- text
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


def _decode_text(p: Path) -> str:
    data = p.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            text = "\x00"
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
    if _CONTROL.search(text):
        raise AnnotationError(
            f"{p.name} is not a text file (it holds binary data). Expected a hypnogram as text "
            "(one stage per line), NSRR/Profusion XML or a Sleep-EDF EDF+ hypnogram; check that "
            "the right file was given."
        )
    return text


def _header_key(field_text: str) -> str:
    return re.sub(r"[\s_\-]+", "", field_text.strip().strip("\"'").lower())


def read_hypnogram_text(path: str | os.PathLike, *, epoch_sec: float = EPOCH_SEC) -> Annotations:
    """Read a CSV/TXT hypnogram: one stage per epoch, numbers or labels.

    A first line naming the stage column (stage, stages, sleep_stage, hypnogram, label,
    annotation...) is a header. With several columns (comma, tab or semicolon separated), the
    stage column is the one the header names, else the last one. Blank lines are ignored; an
    empty stage field in a multi-column file is ``UNS``. Epochs are consecutive from time 0.

    Parameters
    ----------
    path : path-like
        The text file.
    epoch_sec : float
        Epoch length, seconds.

    Returns
    -------
    Annotations
        ``source`` is "hypnogram-text".

    Raises
    ------
    AnnotationError
        Missing, empty or binary file; a row without the stage column.
    UnknownStageError
        A stage label no vocabulary knows; the message names the label and its line number.
    """
    p = _check_file(path)
    text = _decode_text(p)
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise AnnotationError(
            f"{p.name} is empty. Expected a hypnogram with one stage per {epoch_sec:g}-s epoch "
            "(e.g. W, N1, N2, N3, R or 0-5), one per line."
        )
    first = lines[0][1]
    delimiter = next((d for d in ("\t", ",", ";") if d in first), None)
    if delimiter is None:
        rows = [(n, [line.strip()]) for n, line in lines]
        # Whitespace-separated columns ("0 30 W"), unless whole lines are labels ("Stage 1 sleep").
        sample = lines[1][1] if len(lines) > 1 else first
        if len(sample.split()) > 1 and not is_stage_label(sample) and not is_stage_label(first):
            rows = [(n, line.split()) for n, line in lines]
    else:
        parsed = csv.reader(io.StringIO("\n".join(line for _, line in lines)), delimiter=delimiter)
        rows = [(n, [c.strip() for c in cells]) for (n, _), cells in zip(lines, parsed)]

    header = rows[0][1]
    keys = [_header_key(c) for c in header]
    named = [i for i, k in enumerate(keys) if k in _TEXT_HEADER_NAMES]
    has_header = bool(named)
    if not has_header and len(header) > 1 and len(rows) > 1:
        # A header row of other names: no number in it while the next row has one.
        def numeric(cells: list[str]) -> bool:
            return any(re.fullmatch(r"[+-]?\d+(\.\d*)?", c) for c in cells)

        has_header = not numeric(header) and numeric(rows[1][1]) and not is_stage_label(header[-1])
    if named:
        named.sort(key=lambda i: _TEXT_HEADER_NAMES.index(keys[i]))
    column = named[0] if named else -1
    data_rows = rows[1:] if has_header else rows
    if not data_rows:
        raise AnnotationError(f"{p.name} holds only a header line ({first.strip()!r}); expected "
                              "one stage per epoch below it.")
    stages: list[str] = []
    empty = 0
    multi = len(header) > 1
    for n, cells in data_rows:
        try:
            value = cells[column]
        except IndexError:
            raise AnnotationError(
                f"{p.name}, line {n}: has {len(cells)} column(s), but the stage is in column "
                f"{column + 1 if column >= 0 else len(header)}. Expected the same columns on "
                "every line."
            ) from None
        if multi and value == "":
            empty += 1
            stages.append("UNS")
            continue
        try:
            stages.append(stage_from_label(value))
        except UnknownStageError as exc:
            raise UnknownStageError(f"{p.name}, line {n}: {exc}") from None
    notes = [f"{empty} empty stage field(s) read as UNS"] if empty else []
    return Annotations(stages=np.asarray(stages, dtype="<U3"), epoch_sec=float(epoch_sec),
                       stage_onset=0.0, source="hypnogram-text", notes=notes)


# --------------------------------------------------------------------------- dispatch
def read_annotations(path: str | os.PathLike, *, epoch_sec: float = EPOCH_SEC) -> Annotations:
    """Read any supported annotation file, recognising its format from its content.

    EDF+ (header starting "0       ") -> :func:`read_sleepedf_hypnogram`; a first line
    ``[hypnogram]`` -> :func:`sleeplm.io.dreams.read_dreams_hypnogram`; XML with a
    ``<PSGAnnotation>`` root -> :func:`read_nsrr_xml`; ``<CMPStudyConfig>`` ->
    :func:`read_profusion_xml`; anything else -> :func:`read_hypnogram_text`.

    Parameters
    ----------
    path : path-like
        The annotation file.
    epoch_sec : float
        Epoch length, seconds, for formats that do not state it (EDF+ and text hypnograms).

    Returns
    -------
    Annotations

    Raises
    ------
    AnnotationError
        Missing file, unsupported XML root, binary data that is not EDF+, or a malformed file.
    """
    p = _check_file(path)
    with open(p, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"0       "):
        return read_sleepedf_hypnogram(p, epoch_sec=epoch_sec)
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(b"[hypnogram]"):
        from sleeplm.io.dreams import read_dreams_hypnogram  # noqa: PLC0415 - imports this module

        return read_dreams_hypnogram(p, epoch_sec=epoch_sec)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        start = head.decode("utf-16", errors="ignore").lstrip()
    else:
        start = head.lstrip(b"\xef\xbb\xbf \t\r\n").decode("latin-1")
    if start.startswith("<"):
        root = _parse_xml(p)
        tag = _local(root.tag)
        if tag == "PSGAnnotation":
            return _nsrr_from_root(root, p.name)
        if tag == "CMPStudyConfig":
            return _profusion_from_root(root, p.name)
        supported = ", ".join(f"<{k}> ({v})" for k, v in SUPPORTED_XML_ROOTS.items())
        raise AnnotationError(
            f"{p.name}: XML with root element <{tag}> is not a supported annotation format. "
            f"Supported XML roots: {supported}. Export the annotations in one of these, or the "
            "hypnogram as CSV (one stage per 30-s epoch)."
        )
    return read_hypnogram_text(p, epoch_sec=epoch_sec)


# --------------------------------------------------------------------------- apply
def _trim_events(events: pd.DataFrame, end: float) -> tuple[pd.DataFrame, int, int]:
    """Drop events starting at/after ``end`` seconds and clip those running past it."""
    keep = events["onset"] < end
    dropped = int((~keep).sum())
    ev = events[keep].copy()
    over = ev["onset"] + ev["duration"] > end
    ev.loc[over, "duration"] = end - ev.loc[over, "onset"]
    return ev.reset_index(drop=True), dropped, int(over.sum())


def apply_annotations(
    recording: Recording,
    annotations: Annotations,
    *,
    on_overflow: Literal["raise", "trim"] = "raise",
) -> Recording:
    """Put stages and events into a recording, after checking them against its signals.

    When the recording has signals, stages and events may run past the end of the longest
    signal by at most one epoch. Beyond that: a tail of ``UNS`` epochs only is trimmed (with a
    note); anything else raises, or with ``on_overflow="trim"`` is cut to the signal length
    (events starting after the end dropped, the others clipped), with a note. A recording
    without signals (hypnogram only) takes the annotations as they are.

    Parameters
    ----------
    recording : Recording
        Mutated in place: ``stages``, ``epoch_sec``, ``stage_onset``, ``events``,
        ``info.annotation_source`` and ``notes``.
    annotations : Annotations
        What a reader returned.
    on_overflow : {"raise", "trim"}
        What to do with scored epochs or events beyond the end of the signals.

    Returns
    -------
    Recording
        ``recording`` itself.

    Raises
    ------
    AnnotationError
        An event or the hypnogram starts before the recording (negative time), or annotations
        run past the signals with ``on_overflow="raise"``.
    """
    if on_overflow not in ("raise", "trim"):
        raise ValueError(f"on_overflow must be 'raise' or 'trim'; got {on_overflow!r}.")
    source = annotations.source
    events = annotations.events.copy()
    if len(events) and float(events["onset"].min()) < 0:
        bad = events.loc[events["onset"].idxmin()]
        raise AnnotationError(
            f"Annotations ({source}): event {bad['label']!r} starts at {bad['onset']:g} s, before "
            "the recording. Expected onsets >= 0 s from the recording start; fix the file."
        )
    if annotations.stage_onset < 0:
        raise AnnotationError(
            f"Annotations ({source}): the hypnogram starts at {annotations.stage_onset:g} s, "
            "before the recording; expected a start >= 0 s."
        )
    stages = None if annotations.stages is None else annotations.stages.copy()
    epoch, onset = float(annotations.epoch_sec), float(annotations.stage_onset)
    notes: list[str] = [f"annotations ({source}): {n}" for n in annotations.notes]

    if recording.signals:
        sig_end = max(s.duration for s in recording.signals.values())
        limit = sig_end + epoch
        if stages is not None:
            # Epochs starting at or after the end of the signals.
            n_fit = max(int(math.ceil((sig_end - onset) / epoch - 1e-9)), 0)
            tail = stages[n_fit:]
            if tail.size and np.all(tail == "UNS"):
                stages = stages[:n_fit]
                notes.append(f"trimmed {tail.size} unscored epoch(s) after the end of the signals "
                             f"({sig_end:g} s)")
        stage_end = onset + (0 if stages is None else stages.size) * epoch
        ev_end = float((events["onset"] + events["duration"]).max()) if len(events) else 0.0
        ann_end = max(stage_end if stages is not None else 0.0, ev_end)
        if ann_end > limit:
            if on_overflow == "raise":
                raise AnnotationError(
                    f"Annotations ({source}) run to {ann_end:g} s ({ann_end / 3600:.2f} h), but the "
                    f"signals last {sig_end:g} s ({sig_end / 3600:.2f} h): more than one "
                    f"{epoch:g}-s epoch past the end. Check that the annotation file belongs to "
                    "this recording; to cut the annotations to the signals, pass "
                    "on_overflow='trim' (command line: --trim-annotations)."
                )
            if stages is not None and stage_end > sig_end:
                n_fit = max(int(math.ceil((sig_end - onset) / epoch - 1e-9)), 0)
                cut = stages.size - n_fit
                stages = stages[:n_fit]
                if cut:
                    notes.append(f"trimmed {cut} epoch(s) of the hypnogram after the end of the "
                                 f"signals ({sig_end:g} s)")
            if len(events) and ev_end > sig_end:
                events, dropped, clipped = _trim_events(events, sig_end)
                notes.append(f"dropped {dropped} and clipped {clipped} event(s) running past the "
                             f"end of the signals ({sig_end:g} s)")
    for note in notes:
        logger.info("%s", note)
    recording.stages = stages
    recording.epoch_sec = epoch
    recording.stage_onset = onset
    recording.events = events.reset_index(drop=True)
    recording.info.annotation_source = source
    recording.notes.extend(notes)
    return recording


# --------------------------------------------------------------------------- pairing
def find_annotation_file(edf_path: str | os.PathLike) -> Path | None:
    """Find the annotation file that goes with a signal file, in the same folder.

    Tried in order:

    1. Sleep-EDF pairing: "SC4001E0-PSG.edf" goes with "SC4001EC-Hypnogram.edf" (same first 7
       characters, any 8th, ending "-Hypnogram.edf"; ST7... files likewise);
    2. DREAMS naming: "excerpt1.edf" goes with "Hypnogram_excerpt1.txt" (DREAMS's
       "excerpt1.txt" is the signal as text, never a hypnogram);
    3. NSRR naming: "<stem>-nsrr.xml", "<stem>-profusion.xml", "<stem>.xml";
    4. "<stem>.csv", "<stem>.txt", "<stem>-hypnogram.txt".

    Names are compared case-insensitively.

    Parameters
    ----------
    edf_path : path-like
        The signal file.

    Returns
    -------
    pathlib.Path or None
        The annotation file, or None when nothing matches.
    """
    p = Path(edf_path)
    folder = p.parent
    try:
        files = {f.name.lower(): f for f in folder.iterdir() if f.is_file() and f != p}
    except OSError:
        return None
    stem = p.stem
    lower = stem.lower()
    if lower.endswith("-psg") or re.match(r"^s[ct]\d{4}", lower):
        prefix = lower[:7]
        hyp = sorted(
            (name for name in files if name.startswith(prefix) and name.endswith("-hypnogram.edf")),
            key=lambda name: (-len(os.path.commonprefix([name, lower])), name),
        )
        if hyp:
            return files[hyp[0]]
    dreams = files.get(f"hypnogram_{lower}.txt")  # DREAMS: excerpt1.edf, Hypnogram_excerpt1.txt
    if dreams is not None:
        return dreams
    for suffix in ("-nsrr.xml", "-profusion.xml", ".xml", ".csv", ".txt", "-hypnogram.txt"):
        hit = files.get(lower + suffix)
        if hit is not None:
            return hit
    return None
