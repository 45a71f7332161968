"""Vocabularies of sleep-stage and scored-event labels found in real annotation files.

Two tables turn the labels of Sleep-EDF, NSRR, Compumedics Profusion, YASA and common clinical
exports into the canonical vocabulary of :mod:`sleeplm.recording`:

* :data:`STAGE_LABELS` maps a normalised stage label to one of :data:`~sleeplm.recording.STAGES`.
  Rechtschaffen & Kales stages 3 and 4 both become ``N3``; "?", movement time, artefact and
  unscored epochs become ``UNS`` (never wake).
* :data:`EVENT_LABEL_RULES` is an ordered list of regular expressions, each giving an
  :class:`~sleeplm.recording.EventType` and attributes (arousal cause, limb side, body
  position...). The first rule that matches wins; rules added by the user come first.

Both are data, not code: extend them with :func:`register_stage_label` and
:func:`register_event_label` when a file uses a label they do not know.

Numeric stage codes follow R&K/NSRR/Profusion: 0 W, 1 N1, 2 N2, 3 and 4 N3, 5 REM; 6 (movement),
7, 9 (unscored), -1 and -2 (YASA artefact/unscored) are UNS. YASA's *integer* hypnograms, where
4 means REM, are therefore read wrongly as N3: pass YASA's string labels ("W", "N1", "REM"...)
or register the codes with ``register_stage_label(4, "R")``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from sleeplm._logging import logger
from sleeplm.errors import UnknownStageError
from sleeplm.recording import POSITIONS, STAGES, EventType

__all__ = [
    "STAGE_LABELS",
    "EVENT_LABEL_RULES",
    "EventLabelRule",
    "stage_from_label",
    "is_stage_label",
    "event_type_from_label",
    "register_stage_label",
    "register_event_label",
]

# --------------------------------------------------------------------------- normalisation
_SPACES = re.compile(r"\s+")
_EVENT_PUNCT = re.compile(r"[_\-:,.;/]+")


def _norm_stage(label: str) -> str:
    """Lower-case, trim and collapse whitespace ("Sleep  stage W " -> "sleep stage w")."""
    return _SPACES.sub(" ", str(label).replace("_", " ")).strip().lower()


def _norm_event(label: str) -> str:
    """Lower-case, turn punctuation into spaces, collapse whitespace, tighten parentheses.

    "Limb movement - left" -> "limb movement left"; "Obst. Apnea" -> "obst apnea";
    "POSITION-SUPINE" -> "position supine"; "Arousal ( ASDA )" -> "arousal (asda)".
    """
    text = _EVENT_PUNCT.sub(" ", str(label).lower())
    text = _SPACES.sub(" ", text).strip()
    return text.replace("( ", "(").replace(" )", ")")


# --------------------------------------------------------------------------- stages
def _stage_table() -> dict[str, str]:
    spec: dict[str, tuple[str, ...]] = {
        "W": ("w", "wake", "awake", "wakefulness", "wk", "0", "stage w", "stage wake", "stage 0"),
        "N1": ("n1", "1", "s1", "nrem1", "nrem 1", "stage n1", "stage 1", "stage 1 sleep"),
        "N2": ("n2", "2", "s2", "nrem2", "nrem 2", "stage n2", "stage 2", "stage 2 sleep"),
        "N3": ("n3", "3", "4", "s3", "s4", "n4", "nrem3", "nrem 3", "nrem4", "nrem 4", "sws",
               "slow wave sleep", "stage n3", "stage 3", "stage 4", "stage 3 sleep",
               "stage 4 sleep"),
        "R": ("r", "rem", "5", "rem sleep", "stage r", "stage rem", "paradoxical sleep"),
        "UNS": ("uns", "?", "unscored", "not scored", "unknown", "no stage", "movement time",
                "movement", "mt", "m", "art", "artefact", "artifact", "artifacts", "6", "7",
                "9", "-1", "-2", "stage ?"),
    }
    return {label: stage for stage, labels in spec.items() for label in labels}


#: Normalised stage label (lower case, single spaces) -> canonical stage. Extend it with
#: :func:`register_stage_label`.
STAGE_LABELS: dict[str, str] = _stage_table()

_STAGE_PREFIX = re.compile(r"^(?:sleep )?stage ?")
#: Noxturnal writes the scoring's name after a comma: ``apnea-obstructive,Manual``.
_SCORER_SUFFIX = re.compile(r",\s*[A-Za-z][\w .()-]*$")
_STAGE_SUFFIX = re.compile(r" ?sleep$")
_NUMBER = re.compile(r"^[+-]?\d+(?:\.0*)?$")
_STAGE_EXAMPLES = (
    "W/Wake, N1, N2, N3, R/REM, 'Stage N2'; R&K 0-5 (5 = REM) and S1-S4; Sleep-EDF "
    "'Sleep stage W/1/2/3/4/R/?' and 'Movement time'; NSRR 'Stage 2 sleep|2', 'REM sleep|5'; "
    "'?', 'UNS', 'Unscored', 'ART'"
)


def _stage_key_candidates(key: str) -> list[str]:
    """Forms of a normalised label to look up, most literal first."""
    out = [key]
    if _NUMBER.match(key):
        out.append(str(int(float(key))))
    core = _STAGE_SUFFIX.sub("", _STAGE_PREFIX.sub("", key)).strip()
    if core and core != key:
        out.append(core)
        if _NUMBER.match(core):
            out.append(str(int(float(core))))
    return out


#: Vendor stage labels: Noxturnal ``sleep-n2`` (EDF+ text ``sleep-n2,Manual``: the scorer after the
#: comma), Embla/RemLogic ``SLEEP-S2`` and ``SLEEP-REM``.
_VENDOR_STAGE = re.compile(r"^sleep[- ](?:s(?=[0-4]$))?(wake|n[1-4]|rem|[0-4]|unscored)$")


def _lookup_stage(label: str) -> str | None:
    key = _norm_stage(label)
    if not key:
        return None
    vendor = _VENDOR_STAGE.match(_SCORER_SUFFIX.sub("", key))
    if vendor is not None:
        return STAGE_LABELS.get(vendor.group(1))
    parts = [key] + ([p.strip() for p in key.split("|")] if "|" in key else [])
    for part in parts:
        for candidate in _stage_key_candidates(part):
            stage = STAGE_LABELS.get(candidate)
            if stage is not None:
                return stage
    return None


def stage_from_label(label: str | int | float) -> str:
    """Map a sleep-stage label of any common vocabulary to one of :data:`STAGES`.

    Parameters
    ----------
    label : str, int or float
        An AASM ("N2", "REM"), R&K ("S4", "4", "Stage 4 sleep"), Sleep-EDF ("Sleep stage 3",
        "Movement time"), NSRR ("Stage 2 sleep|2"), Profusion (integer code) or YASA ("WAKE",
        "ART") label. Case and surrounding whitespace do not matter. A NaN number means a
        missing stage and gives ``UNS``.

    Returns
    -------
    str
        ``W``, ``N1``, ``N2``, ``N3``, ``R`` or ``UNS``.

    Raises
    ------
    UnknownStageError
        The label belongs to no known vocabulary; the message lists accepted examples.

    Examples
    --------
    >>> stage_from_label("Sleep stage 4"), stage_from_label(5), stage_from_label("?")
    ('N3', 'R', 'UNS')
    """
    if isinstance(label, bool):
        raise UnknownStageError(
            f"Stage label {label!r} is a boolean, not a stage. Expected one of: {_STAGE_EXAMPLES}."
        )
    if isinstance(label, Real):
        value = float(label)
        if math.isnan(value):
            return "UNS"
        text = str(int(value)) if value.is_integer() else repr(value)
    else:
        text = str(label)
    stage = _lookup_stage(text)
    if stage is None:
        raise UnknownStageError(
            f"Unknown sleep-stage label {label!r}. Accepted labels include: {_STAGE_EXAMPLES}. "
            f"If {label!r} is a stage in your scoring system, register it with "
            f"sleeplm.io.labels.register_stage_label({str(label)!r}, '<one of {', '.join(STAGES)}>')."
        )
    return stage


def is_stage_label(label: str | int | float) -> bool:
    """Return True when :func:`stage_from_label` recognises ``label``."""
    try:
        stage_from_label(label)
    except UnknownStageError:
        return False
    return True


def register_stage_label(label: str | int, stage: str) -> None:
    """Teach :func:`stage_from_label` a new label (or change what a known one means).

    Parameters
    ----------
    label : str or int
        The label as it appears in the file; matched case-insensitively.
    stage : str
        One of :data:`STAGES` (``W``, ``N1``, ``N2``, ``N3``, ``R``, ``UNS``).

    Examples
    --------
    >>> register_stage_label("Stadium 2", "N2")
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}; got {stage!r}.")
    key = _norm_stage(label)
    if not key:
        raise ValueError("Cannot register an empty stage label.")
    STAGE_LABELS[key] = stage


# --------------------------------------------------------------------------- events
@dataclass(frozen=True)
class EventLabelRule:
    """One row of the event-label table.

    Attributes
    ----------
    pattern : re.Pattern
        Matched in full (``fullmatch``), case-insensitively, against the label, its normalised
        form (punctuation as spaces) and each part of an NSRR ``"name|code"`` label.
    event_type : EventType
        Canonical type given to matching labels.
    attributes : dict
        Attributes given to matching events (copied for each event).
    literal : str
        The pattern's text, normalised; a label equal to it matches even when the pattern's
        regular-expression meaning would not (e.g. ``"Arousal (ASDA)"``).
    """

    pattern: re.Pattern
    event_type: EventType
    attributes: dict[str, Any] = field(default_factory=dict)
    literal: str = ""

    def matches(self, candidates: list[str]) -> bool:
        return any(
            self.pattern.fullmatch(c) is not None or (self.literal and _norm_event(c) == self.literal)
            for c in candidates
        )


def _rule(pattern: str, event_type: EventType, **attributes: Any) -> EventLabelRule:
    return EventLabelRule(re.compile(pattern, re.IGNORECASE), event_type, attributes)


_A = r"apno?eas?"
_H = r"hypopno?eas?"
_AROUSAL = r"(?:micro ?)?arousals?"
_ARTIFACT = r"(?:artifact|artefact)s?"
_OBST, _CENT, _MIX = r"(?:obstructive|obstr|obst|obs)", r"(?:central|cent|cen|ctrl)", r"(?:mixed|mix|mxd)"
_SIDES = {"left": r"(?:left|lt|l)", "right": r"(?:right|rt|r)", "both": r"(?:both|bilateral|bil)"}
_POSITION_WORDS = {
    "supine": r"(?:supine|back)",
    "left": r"(?:left|left side|left lateral|lateral left)",
    "right": r"(?:right|right side|right lateral|lateral right)",
    "prone": r"(?:prone|stomach|front)",
    "upright": r"(?:upright|sitting|sit|standing|up)",
}
assert set(_POSITION_WORDS) == set(POSITIONS)


def _typed(kind: str, etype: EventType, **attributes: Any) -> list[EventLabelRule]:
    """Apnea or hypopnea rules of one subtype (obstructive/central/mixed)."""
    word = {"obstructive": _OBST, "central": _CENT, "mixed": _MIX}[kind]
    base = _A if etype is not EventType.HYPOPNEA else _H
    return [
        _rule(rf"(?:{word} (?:sleep )?{base})|(?:{base} \(?{word}\)?)", etype, **attributes),
    ]


def _sided(base: str, etype: EventType) -> list[EventLabelRule]:
    """Limb-movement rules with and without a side ("Limb Movement (Left)", "PLM R")."""
    rules = [
        _rule(rf"(?:{base}) \(?{side}\)?|{side} (?:{base})", etype, side=name)
        for name, side in _SIDES.items()
    ]
    rules.append(_rule(rf"(?:{base})(?: \(\))?", etype))
    return rules


def _positions() -> list[EventLabelRule]:
    rules = []
    for name, words in _POSITION_WORDS.items():
        # A bare "left"/"right" is too ambiguous to be a position change; "Supine" is not.
        bare = f"|{name}" if name in ("supine", "prone", "upright") else ""
        rules.append(
            _rule(
                rf"(?:body )?position(?: change)?(?: to)? {words}|(?:body )?position \({words}\)"
                rf"|pos {words}|(?:{words}) position{bare}",
                EventType.POSITION_CHANGE,
                position=name,
            )
        )
    rules.append(
        _rule(r"(?:body )?position(?: change[sd]?)?(?: to \w+)?|pos change",
              EventType.POSITION_CHANGE)
    )
    return rules


def _builtin_rules() -> list[EventLabelRule]:
    rules: list[EventLabelRule] = [
        # Markers: not scored events, but known; kept as "unknown" without a warning.
        _rule(r"lights? (?:off|out)", EventType.UNKNOWN, marker="lights_off"),
        _rule(r"lights? on", EventType.UNKNOWN, marker="lights_on"),
        _rule(r"recording start(?: time)?|start(?: of)? recording|start time", EventType.UNKNOWN,
              marker="recording_start"),
        _rule(r"recording (?:end|stop)(?: time)?|(?:end|stop)(?: of)? recording",
              EventType.UNKNOWN, marker="recording_end"),
        # EEG/EOG micro-events (ground truth of simulated nights, detector outputs).
        _rule(r"(?:sleep )?spindles?", EventType.SPINDLE),
        _rule(r"k ?complex(?:es)?|kc", EventType.K_COMPLEX),
        _rule(r"slow (?:wave|oscillation)s?|sws? event", EventType.SLOW_WAVE),
        _rule(r"rapid eye movements?|rems? event|eye movement \(rem\)", EventType.RAPID_EYE_MOVEMENT),
        # Arousals, most specific cause first.
        _rule(
            r"reras?|respiratory effort related arousals?"
            rf"|{_AROUSAL} (?:resulting )?from (?:respiratory effort|respiration|snoring|snore)"
            rf"|(?:resp|respiratory|snore) {_AROUSAL}|{_AROUSAL} (?:resp|respiratory)(?: event)?"
            rf"|{_AROUSAL} \(?(?:ares|rera|resp|respiratory|snore|aro res|resp aro)\)?|ares",
            EventType.AROUSAL, cause="respiratory",
        ),
        _rule(
            rf"{_AROUSAL} (?:resulting )?from (?:periodic )?(?:limb|leg) movements?"
            rf"|(?:lm|plm|limb|leg|limb movement|leg movement) {_AROUSAL}"
            rf"|{_AROUSAL} \(?(?:lm|plm|alma|lma|limb|leg|limb ?movement|leg ?movement"
            r"|aro plm|aro limb)\)?"
            r"|lmas?|plmas?",
            EventType.AROUSAL, cause="limb",
        ),
        _rule(
            rf"(?:spontaneous|spont|spon) {_AROUSAL}|{_AROUSAL} (?:spontaneous|spont)"
            rf"|{_AROUSAL} \((?:api|asp|spont|spontaneous|spon|sp|aro spont|spon aro)\)",
            EventType.AROUSAL, cause="spontaneous",
        ),
        _rule(
            rf"{_AROUSAL} (?:resulting )?from chin emg|{_AROUSAL} \((?:cheshire|chin emg|chin|emg)\)"
            rf"|(?:chin )?emg {_AROUSAL}|chin {_AROUSAL}",
            EventType.AROUSAL, cause="unspecified", detail="chin_emg",
        ),
        _rule(r".*\b(?:micro ?)?arousals?\b.*", EventType.AROUSAL, cause="unspecified"),
        # Apneas and hypopneas.
        *_typed("obstructive", EventType.OBSTRUCTIVE_APNEA),
        _rule(r"oas?", EventType.OBSTRUCTIVE_APNEA),
        *_typed("central", EventType.CENTRAL_APNEA),
        _rule(r"cas?", EventType.CENTRAL_APNEA),
        *_typed("mixed", EventType.MIXED_APNEA),
        _rule(r"mas?", EventType.MIXED_APNEA),
        _rule(rf"{_A}(?: \(\))?|(?:unspecified|unclassified) {_A}|{_A} (?:unspecified|unclassified)",
              EventType.APNEA),
        *_typed("obstructive", EventType.HYPOPNEA, subtype="obstructive"),
        _rule(r"oh", EventType.HYPOPNEA, subtype="obstructive"),
        *_typed("central", EventType.HYPOPNEA, subtype="central"),
        *_typed("mixed", EventType.HYPOPNEA, subtype="mixed"),
        _rule(rf"{_H}(?: \(\))?|hypo|hyp", EventType.HYPOPNEA),
        _rule(r"unsure(?: event| hypopnea)?", EventType.HYPOPNEA, unsure=True),
        # Snoring (Noxturnal snorebreath / snore-train, Embla SNORE, Profusion Snore).
        _rule(r"snore ?breaths?|snore ?trains?|snor(?:e|es|ing)(?: single| event)?",
              EventType.SNORE),
        # Oxygen.
        _rule(
            r"oxygen ?saturation drop|(?:sp|sa)?o2 drop|relative desaturation"
            r"|relative ?desaturation|absolute ?desaturation|entsättigung",
            EventType.DESATURATION,
        ),
        _rule(
            r"(?:(?:sp|sa)?o2|oxygen|sat(?:uration)?) desat(?:uration)?s?"
            r"|desat(?:uration)?s?(?: \(?(?:sp|sa)?o2\)?)?|(?:sp|sa)o2 drop|desaturation event",
            EventType.DESATURATION,
        ),
        # Artefacts.
        _rule(
            rf"(?:(?:sp|sa)o2|oximetry|oximeter|pulse ?ox(?:imetry)?|o2 sat|sat) {_ARTIFACT}"
            rf"|{_ARTIFACT} \(?(?:sp|sa)o2\)?",
            EventType.ARTIFACT, channel="SPO2",
        ),
        _rule(rf"(?:respiratory|resp|breathing|airflow|flow|effort) {_ARTIFACT}",
              EventType.ARTIFACT, signal="respiratory"),
        _rule(rf"(?:.* )?{_ARTIFACT}(?: .*)?|art|bad data|signal invalid|invalid (?:data|signal)",
              EventType.ARTIFACT),
        # Limb movements (periodic first).
        *_sided(r"plms?|periodic (?:limb|leg) (?:movements?|mvts?)(?: (?:of|in) sleep)?",
                EventType.PLM),
        *_sided(r"(?:limb|leg) ?(?:movements?|mvts?|mvmts?)|lms?|plm lm|leg ?movement"
                r"|limb ?movement (?:twitch|periodic ?twitch)", EventType.LIMB_MOVEMENT),
        # RemLogic's respiratory RERA ("RESP-RERA") and its arousal naming.
        _rule(r"resp rera", EventType.AROUSAL, cause="respiratory"),
        # Body position.
        *_positions(),
    ]
    return rules


#: Ordered rules mapping event labels to :class:`EventType`; user rules are inserted first by
#: :func:`register_event_label`.
EVENT_LABEL_RULES: list[EventLabelRule] = _builtin_rules()

# Fallback on the NSRR <EventType> of an event whose concept no rule knows.
_CONCEPT_TYPE_FALLBACK: dict[str, tuple[EventType, dict[str, Any]]] = {
    "arousals": (EventType.AROUSAL, {"cause": "unspecified"}),
    "arousal": (EventType.AROUSAL, {"cause": "unspecified"}),
    "limb movement": (EventType.LIMB_MOVEMENT, {}),
    "limb movements": (EventType.LIMB_MOVEMENT, {}),
    "position": (EventType.POSITION_CHANGE, {}),
    "body position": (EventType.POSITION_CHANGE, {}),
}

_cache: dict[tuple[str, str | None], tuple[EventType, dict[str, Any]]] = {}
_warned: set[str] = set()


def _event_candidates(label: str) -> list[str]:
    raw = label.strip()
    forms = [raw, _norm_event(raw)]
    bare = _SCORER_SUFFIX.sub("", raw).strip()  # Noxturnal: "apnea-obstructive,Manual"
    if bare and bare != raw:
        forms += [bare, _norm_event(bare)]
    if "|" in raw:
        for part in raw.split("|"):
            forms.extend([part.strip(), _norm_event(part)])
    seen: list[str] = []
    for f in forms:
        if f and f not in seen:
            seen.append(f)
    return seen


def _classify(label: str, concept_type: str | None) -> tuple[EventType, dict[str, Any]] | None:
    candidates = _event_candidates(label)
    for rule in EVENT_LABEL_RULES:
        if rule.matches(candidates):
            return rule.event_type, rule.attributes
    if concept_type:
        for part in [concept_type, *concept_type.split("|")]:
            hit = _CONCEPT_TYPE_FALLBACK.get(_norm_event(part))
            if hit is not None:
                logger.debug("Event label %r typed %s from its EventType %r", label,
                             hit[0].value, concept_type)
                return hit
    return None


def event_type_from_label(
    label: str, concept_type: str | None = None
) -> tuple[EventType, dict[str, Any]]:
    """Map a scored-event label to its canonical type and attributes.

    Parameters
    ----------
    label : str
        The label of the source file: an NSRR ``EventConcept`` ("Obstructive apnea|Obstructive
        Apnea"), a Profusion ``Name`` ("Arousal (ASDA)"), an EDF+ annotation or a clinical
        abbreviation ("OA", "RERA", "Desat"). Case, punctuation and spacing do not matter.
    concept_type : str, optional
        The NSRR ``EventType`` ("Arousals|Arousals"...), used only when no rule knows ``label``.

    Returns
    -------
    event_type : EventType
        :attr:`EventType.UNKNOWN` when the label is unknown (a warning is logged once per
        distinct label; keep the verbatim label in the events table).
    attributes : dict
        A fresh dict, e.g. ``{"cause": "respiratory"}`` for arousals (``respiratory``,
        ``spontaneous``, ``limb`` or ``unspecified``), ``{"side": "left"}`` for limb movements,
        ``{"position": "supine"}`` for position changes, ``{"unsure": True}`` for NSRR "Unsure"
        hypopneas, ``{"channel": "SPO2"}`` for oximetry artefacts, ``{"marker": "lights_off"}``
        for known non-event markers.

    Examples
    --------
    >>> event_type_from_label("Arousal resulting from respiratory effort|Arousal (ARES)")
    (<EventType.AROUSAL: 'arousal'>, {'cause': 'respiratory'})
    """
    label = str(label)
    key = (label, concept_type)
    hit = _cache.get(key)
    if hit is None:
        hit = _classify(label, concept_type)
        if hit is None:
            hit = (EventType.UNKNOWN, {})
            if label not in _warned:
                _warned.add(label)
                logger.warning(
                    "Unknown event label %r: kept as type 'unknown' with its label verbatim. "
                    "If it is a scored event, map it with sleeplm.io.labels.register_event_label"
                    "(%r, EventType.<TYPE>).",
                    label,
                    label.strip(),
                )
        _cache[key] = hit
    return hit[0], dict(hit[1])


def register_event_label(pattern: str, event_type: EventType | str, **attributes: Any) -> None:
    """Teach :func:`event_type_from_label` a new label; it takes precedence over built-in rules.

    Parameters
    ----------
    pattern : str
        A regular expression matched in full and case-insensitively against the label, its
        normalised form (punctuation as spaces, lower case) and each ``|``-separated part. A
        label equal to ``pattern`` (after normalisation) also matches, so literal labels with
        parentheses such as ``"Arousal (EEG)"`` work as they are.
    event_type : EventType or str
        The canonical type (or its value, e.g. ``"hypopnea"``).
    **attributes
        Attributes given to matching events, e.g. ``cause="respiratory"``.

    Examples
    --------
    >>> register_event_label(r"obstr(uktive)? apnoe", EventType.OBSTRUCTIVE_APNEA)
    """
    etype = event_type if isinstance(event_type, EventType) else EventType(event_type)
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error:
        compiled = re.compile(re.escape(pattern), re.IGNORECASE)
    EVENT_LABEL_RULES.insert(0, EventLabelRule(compiled, etype, dict(attributes), _norm_event(pattern)))
    _cache.clear()
