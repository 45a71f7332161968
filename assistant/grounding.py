"""The grounding check: every number and clock time of a narrative must come from the facts.

A report's narrative is written by templates or by an LLM; its numbers may only repeat the
deterministic facts (:mod:`tools.facts` measures, scored events, localised intervals). This
module reads a text sentence by sentence, finds

* **numbers** with their unit (``"12.3 events/h"``, ``"85 %"``, ``"92%"``, ``"412 min"``,
  ``"6 h 12 min"``, ``"38 s"``, plain ``"3"``), and
* **clock times** (``"02:14"``, ``"2:14 am"``, ``"02:14:30"``) and ISO dates,

and checks each against the allowed set built from the facts (:class:`GroundingFacts`):

* a number is grounded when it equals a fact value rounded to the number of decimals it is
  written with (``24`` and ``24.0`` both match 24.02; ``24.1`` does not), in the same unit
  family when it carries a unit (a duration in h or s is converted from the facts' minutes or
  seconds), or when it is a count, an epoch index or an event id the facts contain, or a number
  written in a fact's own label or reason (``3 %`` of the hypopnea rule, ``90 %`` of T90);
* a number written right after a named measure (``AHI``, ``ODI``, ``T90``, ``nadir``, ``sleep
  efficiency``, ``total sleep time``, ``PLMI``, ``arousal index``, ``heart rate``) must be a
  value of *that* measure: ``"the AHI was 0 events/h"`` fails even when some other index is 0;
* a clock time is grounded when it lies within 30 s of a time the facts cite (a time written
  to the minute also matches the fact times it truncates).

Identifiers (``SpO2``, ``N3``, ``EEG_C3``, study ids such as ``sim-00022-osa_moderate``) are not
numbers, and text inside quotes that equals a registered quoted datum (an annotation label, a
user's indication) is data, not a claim, so it is not read for numbers. Numbers written in words
("twelve") are not recognised and so are not checked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "CLOCK_TOLERANCE_S",
    "FactItem",
    "GroundedAnswer",
    "GroundingFacts",
    "GroundingResult",
    "Problem",
    "SentenceCheck",
    "ToolOutput",
    "RULE_VARIANTS",
    "UNVERIFIED",
    "WithdrawnClaim",
    "build_allowed",
    "chat_allowed",
    "check_sentence",
    "check_text",
    "facts_from_result",
    "facts_from_text",
    "ground_answer",
    "misbound_numbers",
    "misbound_spans",
    "question_facts",
    "specific_rules",
    "split_sentences",
]

#: A clock time in the text may differ from a cited time by at most this many seconds.
CLOCK_TOLERANCE_S = 30.0
#: ... and one written to the second ("01:00:43") by at most this many (the same second): a
#: 1.5 B model put two spindles at 01:00:43 and 01:00:57, times no tool gave, inside a
#: caption's window 01:00:00-01:01:00, and listed two epochs' chin EMG "at 03:00:00" and "at
#: 03:00:01" (a second apart, which a tolerance of 1 s let pass).
SECONDS_TOLERANCE_S = 0.5
_DAY = 86400.0

Family = Literal["none", "pct", "rate", "bpm", "duration", "count", "ordinal", "margin",
                 "other"]


class FactItem(BaseModel):
    """One fact a report section rests on.

    Attributes
    ----------
    name : str
        Machine name (``ahi_3a``, ``longest_event_duration``, ``localized_obstructive_apnea_1``).
    label : str
        Human label.
    value : float or None
        None when the night cannot support it (see ``reason``) or the fact is not a number.
    unit : str
        ``events/h``, ``%``, ``min``, ``s``, ``bpm``, ``count``, ``cosine margin``, ``clock``,
        ``date``, ``text`` (its label's numbers are allowed in any unit family) or
        ``untyped`` (a tool's text or the question: its label's numbers, written without a
        unit, support numbers written without one).
    display : str
        The value as the facts format it (``"24.0 events/h"``, ``"3"``, ``"23:11:00"``); what a
        writer should copy.
    reason : str
        Why the value is missing, or a caveat.
    epochs : list of (int, int)
        Evidence: inclusive 30-s epoch runs.
    times : list of str
        Evidence: wall-clock times ``"HH:MM:SS"`` the fact cites.
    event_ids : list of int
        Evidence: rows of the recording's events table.
    source : str
        ``clinical`` (report_facts), ``events`` (events_in_range), ``localize`` (SleepLM, model
        output), ``study`` (recording metadata).
    """

    name: str
    label: str
    value: float | None = None
    unit: str = ""
    display: str = ""
    reason: str = ""
    epochs: list[tuple[int, int]] = Field(default_factory=list)
    times: list[str] = Field(default_factory=list)
    event_ids: list[int] = Field(default_factory=list)
    source: str = "clinical"


class Problem(BaseModel):
    """One ungrounded token of a sentence.

    Attributes
    ----------
    token : str
        The text as written (``"99.0 events/h"``, ``"04:44"``).
    kind : str
        ``number``, ``clock``, ``date`` or ``measure`` (a number bound to a named measure that
        does not have that value).
    reason : str
        Why it failed, in words.
    """

    token: str
    kind: Literal["number", "clock", "date", "measure", "absence"]
    reason: str


class SentenceCheck(BaseModel):
    """The check of one sentence."""

    sentence: str
    problems: list[Problem] = Field(default_factory=list)
    n_numbers: int = 0
    n_times: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


class GroundingResult(BaseModel):
    """The check of a text: one entry per sentence, in order."""

    sentences: list[SentenceCheck] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sentences)

    @property
    def failed(self) -> list[SentenceCheck]:
        return [s for s in self.sentences if not s.ok]

    @property
    def passed(self) -> list[SentenceCheck]:
        return [s for s in self.sentences if s.ok]


class GroundingFacts(BaseModel):
    """The allowed set a text is checked against (see :func:`build_allowed`).

    Attributes
    ----------
    values : dict of str to list of (str, float)
        Per unit family (``pct``, ``rate``, ``bpm``, ``count``, ``margin``, ``none``), the facts'
        ``(name, value)`` pairs; durations are stored in seconds under ``duration``.
    exact : list of float
        Integers the facts contain as counts, epoch indices or event ids.
    literal_numbers : list of float
        Numbers written in the facts' labels and reasons (matched in any family).
    untyped_numbers : list of float
        Numbers written without a unit in tool texts and the question (facts of unit
        ``"untyped"``: epoch indices, counts, table cells); they support a number written
        without a unit only, never "78.0 hours" or "15.0 %".
    times_s : list of float
        Seconds of the day of every cited clock time.
    dates : list of str
        ISO dates (``YYYY-MM-DD``) the facts contain.
    quoted : list of str
        Data strings (annotation labels, indication) that are not read for numbers when they
        appear inside quotes.
    """

    values: dict[str, list[tuple[str, float]]] = Field(default_factory=dict)
    exact: list[float] = Field(default_factory=list)
    literal_numbers: list[float] = Field(default_factory=list)
    untyped_numbers: list[float] = Field(default_factory=list)
    times_s: list[float] = Field(default_factory=list)
    dates: list[str] = Field(default_factory=list)
    quoted: list[str] = Field(default_factory=list)


# ----------------------------------------------------------------------------- parsing

_UNIT_FAMILY: tuple[tuple[str, Family], ...] = (
    (r"events?\s*/\s*h(?:our|r)?|events?\s+per\s+hour|/\s*h(?:our|r)?|per\s+hour", "rate"),
    (r"%|percent|per\s*cent", "pct"),
    (r"bpm|beats?\s+per\s+minute|beats?/min", "bpm"),
    (r"min(?:utes?|s)?", "duration"),
    (r"h(?:ours?|rs?)?", "duration"),
    (r"s(?:ec(?:onds?|s)?)?", "duration"),
    (r"events?|epochs?", "count"),
    (r"st|nd|rd|th", "ordinal"),
)
_UNIT_SECONDS = {"min": 60.0, "h": 3600.0, "s": 1.0}
_UNITS = "|".join(f"(?:{u})" for u, _ in _UNIT_FAMILY)
_NUMBER = re.compile(
    r"(?<![\w.])(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    rf"(?:\s?(?P<unit>{_UNITS}))?(?![A-Za-z0-9_])", re.IGNORECASE)
_HOURS_MIN = re.compile(
    r"(?<![\w.])(?P<h>\d+)\s?(?:h|hr|hrs|hours?)\s*(?:and\s+)?(?P<m>\d+)\s?(?:min|mins|minutes?)"
    r"(?![A-Za-z0-9_])", re.IGNORECASE)
_CLOCK = re.compile(
    r"(?<![\w.:])(?P<h>[01]?\d|2[0-3]):(?P<m>[0-5]\d)(?::(?P<s>[0-5]\d))?"
    r"(?:\s?(?P<ap>[ap])\.?\s?m\b\.?)?(?![\w:]|\.\d)", re.IGNORECASE)
#: Event words then "per hour" after a bare number: the number is a rate.
_PER_HOUR_AFTER = re.compile(
    r"(?:\s+(?:apn\w*|hypopn\w*|events?|arousals?|desat\w*|movements?|central|obstructive|"
    r"mixed|respiratory|limb|leg|periodic|breathing|and|or)){1,4}\s+(?:per|an|each|every)\s+"
    r"hour\b", re.IGNORECASE)
#: What looks like a clock time but is none (read after the valid ones are masked), a
#: fraction included ("3.9 minutes (0:03.9)" is one token).
_BAD_CLOCK = re.compile(r"(?<![\w.:])\d{1,4}:\d{2}(?::\d{2})?(?:\.\d+)?(?![\w:])")
_DATE = re.compile(r"(?<![\w.])(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})(?![\w])")
#: Words that start with a letter and hold a digit: identifiers, not numbers.
_IDENT = re.compile(r"(?<![\w-])[A-Za-z][\w.\-]*?\d[\w\-]*(?:\.[\w\-]+)*")
_QUOTED = re.compile(r"“([^”]*)”|\"([^\"]*)\"|«([^»]*)»|‘([^’]*)’|`([^`]*)`")
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|vs|approx|cf|Dr|etc|no|Fig|incl)\.)$", re.IGNORECASE)

#: Named measures and the fact names a number written right after them must belong to.
_BINDINGS: tuple[tuple[re.Pattern[str], re.Pattern[str], Family], ...] = (
    (re.compile(r"\bAHI\b|apn[oe]?ea[- ]hypopn[oe]?ea index|\bREI\b", re.IGNORECASE),
     re.compile(r"^ahi"), "rate"),
    (re.compile(r"\bODI\b|oxygen desaturation index", re.IGNORECASE), re.compile(r"^odi"), "rate"),
    (re.compile(r"\bT90\b"), re.compile(r"^t90"), "pct"),
    (re.compile(r"\bnadir\b", re.IGNORECASE), re.compile(r"nadir"), "pct"),
    (re.compile(r"\bsleep efficiency\b", re.IGNORECASE), re.compile(r"^sleep_efficiency"), "pct"),
    (re.compile(r"\btotal sleep time\b|\bTST\b", re.IGNORECASE), re.compile(r"^tst"), "duration"),
    (re.compile(r"\bPLMI\b|\bPLMS index\b|periodic limb movement(?:s)? (?:in sleep )?index",
                re.IGNORECASE), re.compile(r"^plmi$"), "rate"),
    (re.compile(r"\barousal index\b", re.IGNORECASE), re.compile(r"arousal_index$"), "rate"),
    (re.compile(r"\bheart rate\b", re.IGNORECASE), re.compile(r"^hr_"), "bpm"),
)
#: A number without unit binds to a measure only when at most this many words follow it.
_BIND_WORDS = 4


class _Token(BaseModel):
    start: int
    end: int
    text: str
    value: float
    decimals: int
    family: Family
    seconds: float | None = None  # durations, converted
    other: str | None = None  # family "other": the unit's key (_other_unit_key)


#: Units the check has no family for, after a number ("30 mmHg", "40 cm H2O", "4
#: breaths/min"): such a number is supported only by the same number with the same unit.
_OTHER_UNIT = re.compile(
    r"\s?(?P<u>mm\s?hg|cm\s?h2o|l\s?/\s?min|ml(?:\s?/\s?min)?|mv|µv|uv|hz|kg|mg|°\s?c|"
    r"breaths?\s?/\s?min(?:ute)?|breaths?\s+(?:per|a|an)\s+min(?:ute)?|/\s?min)"
    r"(?![A-Za-z0-9_])", re.IGNORECASE)


def _other_unit_key(unit: str | None) -> str | None:
    """``"other:<unit>"`` for a unit of :data:`_OTHER_UNIT` (spaces dropped, lower case,
    breaths per minute as ``/min``), else None."""
    if not unit:
        return None
    m = _OTHER_UNIT.fullmatch(" " + unit.strip()) or _OTHER_UNIT.fullmatch(unit.strip())
    if m is None:
        return None
    u = re.sub(r"\s+", "", m.group("u").lower()).replace("uv", "µv")
    u = re.sub(r"^breaths?(?:/|per|an?)min(?:ute)?$", "/min", u)
    return "other:" + u


def _family_of(unit: str | None) -> tuple[Family, float | None]:
    if not unit:
        return "none", None
    u = unit.lower().strip()
    for pattern, fam in _UNIT_FAMILY:
        if re.fullmatch(pattern, u, re.IGNORECASE):
            if fam == "duration":
                key = "min" if u.startswith("min") else ("h" if u.startswith("h") else "s")
                return fam, _UNIT_SECONDS[key]
            return fam, None
    return "none", None


def _decimals(num: str) -> int:
    return len(num.split(".", 1)[1]) if "." in num else 0


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split at ``.!?`` before a capital, digit or quote, and at line
    breaks; decimals and common abbreviations do not split)."""
    out: list[str] = []
    for block in re.split(r"\n+", text or ""):
        block = block.strip()
        if not block:
            continue
        start = 0
        for m in re.finditer(r"[.!?](?=\s+[\"“(A-Z0-9])", block):
            if _ABBREV.search(block[start:m.end()]):
                continue
            piece = block[start:m.end()].strip()
            if piece:
                out.append(piece)
            start = m.end()
        rest = block[start:].strip()
        if rest:
            out.append(rest)
    return out


def _mask(text: str, spans: Iterable[tuple[int, int]]) -> str:
    chars = list(text)
    for a, b in spans:
        for i in range(a, b):
            chars[i] = " "
    return "".join(chars)


def _quoted_spans(text: str, quoted: Sequence[str]) -> list[tuple[int, int]]:
    """Spans of quoted substrings equal to a registered quoted datum (whole, not a part: a
    quoted ``"0"`` taken from a label ``"... report AHI 0"`` is still read as a number)."""
    data = {_norm_space(q) for q in quoted if q and q.strip()}
    spans = []
    for m in _QUOTED.finditer(text):
        inner = _norm_space(next(g for g in m.groups() if g is not None))
        if inner and inner in data:
            spans.append(m.span())
    return spans


def _norm_space(text: str) -> str:
    return " ".join(text.split()).casefold()


def _seconds_of_day(h: int, m: int, s: int) -> float:
    return float(h * 3600 + m * 60 + s)


def _parse_clock(text: str) -> float | None:
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*", text or "")
    if not m:
        return None
    return _seconds_of_day(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def _numbers_in(text: str) -> list[float]:
    masked = _mask(text, [m.span() for m in _IDENT.finditer(text)])
    masked = _mask(masked, [m.span() for m in _CLOCK.finditer(masked)])
    return [float(m.group("num").replace(",", "")) for m in _NUMBER.finditer(masked)]


def build_allowed(facts: Iterable[FactItem], *, quoted: Iterable[str] = ()) -> GroundingFacts:
    """The allowed set of a list of facts.

    Parameters
    ----------
    facts : iterable of FactItem
    quoted : iterable of str
        Data strings (annotation labels, the indication) that may appear in quotes.

    Returns
    -------
    GroundingFacts
    """
    out = GroundingFacts(quoted=[q for q in quoted if q])
    fam_of_unit: dict[str, Family] = {"%": "pct", "events/h": "rate", "/h": "rate",
                                      "bpm": "bpm", "count": "count",
                                      "cosine margin": "margin"}
    exact: set[float] = set()
    literal: set[float] = set()
    untyped: set[float] = set()
    times: set[float] = set()
    dates: set[str] = set()
    for f in facts:
        v = f.value
        if v is not None and math.isfinite(v):
            if f.unit in ("min", "s", "h"):
                scale = {"min": 60.0, "s": 1.0, "h": 3600.0}[f.unit]
                out.values.setdefault("duration", []).append((f.name, float(v) * scale))
            else:
                fam = _other_unit_key(f.unit) or fam_of_unit.get(f.unit, "none")
                out.values.setdefault(fam, []).append((f.name, float(v)))
                if fam == "count":
                    exact.add(float(round(v)))
        for a, b in f.epochs:
            exact.update((float(a), float(b)))
        exact.update(float(i) for i in f.event_ids)
        if f.event_ids:
            exact.add(float(len(f.event_ids)))
        for t in f.times:
            s = _parse_clock(t)
            if s is not None:
                times.add(s)
        if f.unit == "clock":
            s = _parse_clock(f.display)
            if s is not None:
                times.add(s)
        if f.unit == "date" and re.fullmatch(r"\d{4}-\d{2}-\d{2}", f.display or ""):
            dates.add(f.display)
        for text in (f.label, f.reason):
            (untyped if f.unit == "untyped" else literal).update(_numbers_in(text))
    out.exact = sorted(exact)
    out.literal_numbers = sorted(literal)
    out.untyped_numbers = sorted(untyped)
    out.times_s = sorted(times)
    out.dates = sorted(dates)
    return out


def _matches(x: float, decimals: int, v: float) -> bool:
    return f"{v:.{decimals}f}" == f"{x:.{decimals}f}"


def _duration_matches(tok: _Token, secs: float) -> bool:
    """A written duration against a fact duration (seconds), in the written unit."""
    assert tok.seconds is not None
    scale = tok.seconds
    return _matches(tok.value, tok.decimals, secs / scale)


def _candidates(tok: _Token, allowed: GroundingFacts) -> list[str]:
    """Names of the facts whose value the token matches (``"#exact"``/``"#literal"`` for
    counts, epochs, ids and label numbers)."""
    names: list[str] = []
    fams: list[str]
    if tok.family == "other":  # "30 mmHg": only the same number with the same unit
        return [n for n, v in allowed.values.get(tok.other or "", [])
                if _matches(tok.value, tok.decimals, v)]
    if tok.family in ("none", "ordinal"):
        fams = list(allowed.values)
    elif tok.family == "count":
        fams = ["count", "none"]
    else:
        fams = [tok.family]
    for fam in fams:
        for name, v in allowed.values.get(fam, []):
            if fam == "duration":
                if tok.seconds is not None:
                    if _duration_matches(tok, v):
                        names.append(name)
                elif _matches(tok.value, tok.decimals, v / 60.0) or _matches(
                        tok.value, tok.decimals, v):
                    names.append(name)
            elif _matches(tok.value, tok.decimals, v):
                names.append(name)
    if tok.family in ("none", "count", "ordinal") and tok.decimals == 0 \
            and tok.value in allowed.exact:
        names.append("#exact")
    if any(_matches(tok.value, tok.decimals, v) for v in allowed.literal_numbers):
        names.append("#literal")
    if tok.family in ("none", "count", "ordinal") and any(
            _matches(tok.value, tok.decimals, v) for v in allowed.untyped_numbers):
        names.append("#untyped")
    return names


def _tokens(sentence: str, allowed: GroundingFacts) -> tuple[list[_Token], list[Problem], int]:
    """Numbers of a sentence (identifiers, quoted data, clock times masked) and the clock and
    date problems."""
    problems: list[Problem] = []
    masked = _mask(sentence, _quoted_spans(sentence, allowed.quoted))
    masked = _mask(masked, [m.span() for m in _IDENT.finditer(masked)])
    n_times = 0
    spans = []
    for m in _DATE.finditer(masked):
        spans.append(m.span())
        if m.group(0) not in allowed.dates:
            problems.append(Problem(token=m.group(0), kind="date",
                                    reason="this date is not the recording's date"))
    masked = _mask(masked, spans)
    spans = []
    for m in _CLOCK.finditer(masked):
        spans.append(m.span())
        n_times += 1
        h, mi = int(m.group("h")), int(m.group("m"))
        s = int(m.group("s") or 0)
        ap = (m.group("ap") or "").lower()
        if ap and h > 12:
            problems.append(Problem(token=m.group(0).strip(), kind="clock",
                                    reason="not a valid 12-hour clock time"))
            continue
        hours = [h % 12 + (12 if ap == "p" else 0)] if ap else ([h, h + 12] if h < 12 else [h])
        ok = False
        for hh in hours:
            t = _seconds_of_day(hh, mi, s)
            for a in allowed.times_s:
                d = abs(t - a) % _DAY
                d = min(d, _DAY - d)
                tol = CLOCK_TOLERANCE_S if m.group("s") is None else SECONDS_TOLERANCE_S
                if d <= tol or (m.group("s") is None and t == a - a % 60):
                    ok = True
                    break
            if ok:
                break
        if not ok:
            problems.append(Problem(
                token=m.group(0).strip(), kind="clock",
                reason=(f"no fact cites a time within {CLOCK_TOLERANCE_S:.0f} s of it"
                        if m.group("s") is None else "no fact cites this time to the second")))
    masked = _mask(masked, spans)
    spans = []
    for m in _BAD_CLOCK.finditer(masked):  # "145:00", "24:30", "7:75": no time of day
        spans.append(m.span())
        n_times += 1
        problems.append(Problem(token=m.group(0), kind="clock",
                                reason="not a valid clock time"))
    masked = _mask(masked, spans)
    toks: list[_Token] = []
    taken: list[tuple[int, int]] = []
    for m in _HOURS_MIN.finditer(masked):
        h, mi = int(m.group("h")), int(m.group("m"))
        toks.append(_Token(start=m.start(), end=m.end(), text=m.group(0), value=h * 60 + mi,
                           decimals=0, family="duration", seconds=60.0))
        taken.append(m.span())
    masked = _mask(masked, taken)
    for m in _NUMBER.finditer(masked):
        num = m.group("num")
        fam, secs = _family_of(m.group("unit"))
        other = None
        if m.group("unit") is None and _PER_HOUR_AFTER.match(masked, m.end()):
            fam, secs = "rate", None  # "65 hypopneas per hour": a rate, not the count 65
        elif m.group("unit") is None and (u := _OTHER_UNIT.match(sentence, m.end())):
            fam, secs, other = "other", None, _other_unit_key(u.group("u"))
        toks.append(_Token(start=m.start(), end=m.end(), text=m.group(0).strip(),
                           value=float(num.replace(",", "")), decimals=_decimals(num),
                           family=fam, seconds=secs, other=other))
    toks.sort(key=lambda t: t.start)
    return toks, problems, n_times


#: Words before a measure's name that make it the whole a share is taken of ("as a percentage
#: of TST").
_SHARE_OF = re.compile(r"\b(?:percent(?:age)?|fraction|share|proportion|ratio)\s+of\s+"
                       r"(?:the\s+)?$|%\s*of\s+(?:the\s+)?$", re.IGNORECASE)


def _binding_problems(sentence: str, toks: list[_Token], allowed: GroundingFacts,
                      cands: dict[int, list[str]]) -> list[Problem]:
    """A number written right after a named measure must be that measure's value."""
    problems: list[Problem] = []
    keys = sorted(((m.start(), m.end(), names, fam) for rx, names, fam in _BINDINGS
                   for m in rx.finditer(sentence)), key=lambda k: k[0])
    for i, (start, end, names, fam) in enumerate(keys):
        stop = keys[i + 1][0] if i + 1 < len(keys) else len(sentence)
        if _SHARE_OF.search(sentence[:start]):
            # "Total REM time, in minutes and as a percentage of TST: 166.0 min": the TST is
            # what the share is of, not the measure the value is given for
            continue
        if any(t.end <= start and not sentence[t.end:start].strip() for t in toks):
            # "92.4% sleep efficiency, 97.0% sleep maintenance efficiency": in a list of
            # values written before their names the next number is the next item's
            continue
        for k, tok in enumerate(toks):
            if tok.start < end or tok.start >= stop:
                continue
            if tok.family not in ("none", fam):
                continue
            if tok.family == "none" and len(sentence[end:tok.start].split()) > _BIND_WORDS:
                break
            if not cands.get(k):
                break  # already reported as ungrounded
            if not any(names.search(c) for c in cands[k]):
                known = [f"{v:.1f}" for fm, vals in allowed.values.items()
                         for n, v in vals if names.search(n) and fm != "duration"]
                problems.append(Problem(
                    token=f"{sentence[start:end]} ... {tok.text}", kind="measure",
                    reason=(f"{tok.text} is not a value of {sentence[start:end]} in the facts"
                            + (f" (they give {', '.join(dict.fromkeys(known))})" if known
                               else ""))))
            break
    return problems


def check_sentence(sentence: str, allowed: GroundingFacts) -> SentenceCheck:
    """Check one sentence (see :func:`check_text`)."""
    toks, problems, n_times = _tokens(sentence, allowed)
    cands: dict[int, list[str]] = {}
    for k, tok in enumerate(toks):
        cands[k] = _candidates(tok, allowed)
        if not cands[k]:
            what = {"pct": "percentage", "rate": "rate", "bpm": "heart rate",
                    "duration": "duration", "count": "count"}.get(tok.family, "number")
            problems.append(Problem(token=tok.text, kind="number",
                                    reason=f"no fact has this {what} (values are compared "
                                           "rounded to the decimals written)"))
    problems += _binding_problems(sentence, toks, allowed, cands)
    return SentenceCheck(sentence=sentence, problems=problems, n_numbers=len(toks),
                         n_times=n_times)


def check_text(text: str, facts: GroundingFacts | Iterable[FactItem]) -> GroundingResult:
    """Check every number and clock time of ``text`` against ``facts``.

    Parameters
    ----------
    text : str
        A narrative (one or more sentences).
    facts : GroundingFacts or iterable of FactItem
        The allowed set, or the facts to build it from (:func:`build_allowed`).

    Returns
    -------
    GroundingResult
        One :class:`SentenceCheck` per sentence with its problems (token, kind, reason).
    """
    allowed = facts if isinstance(facts, GroundingFacts) else build_allowed(facts)
    return GroundingResult(sentences=[check_sentence(s, allowed)
                                      for s in split_sentences(text)])


# ----------------------------------------------------------------------------- chat answers
#
# A chat answer is checked like a report narrative, against what the tools returned in the
# conversation (their structured results and their text) plus the question's own numbers.
# Nothing above this line changes for it.

#: What replaces a number or clock time of a chat answer that no tool output supports.
UNVERIFIED = "[unverified]"

#: Result keys whose text is data from the study files or words of the user or the LLM (an
#: annotation label, a file name, a query): never a source of allowed numbers, but quotable.
_DATA_KEYS = frozenset({
    "label", "labels", "patient", "patient_id", "like_patient", "path", "paths", "file",
    "files", "source", "query", "queries", "indication", "edit", "edits", "request", "title",
    "channel", "channels", "name", "notes", "quoted", "system",
})
#: Result keys whose subtree is not a fact: the report's own record of rejected sentences.
_SKIP_KEYS = frozenset({"grounding", "png", "dropped", "regenerated"})
#: A fact name per entry of :data:`_BINDINGS` (same order) that its name pattern accepts.
_BINDING_FACT_NAMES = ("ahi_text", "odi_text", "t90_text", "nadir_text",
                       "sleep_efficiency_text", "tst_text", "plmi", "text_arousal_index",
                       "hr_text")
assert len(_BINDING_FACT_NAMES) == len(_BINDINGS)
_SINGLE_QUOTED = re.compile(r"(?<![\w'])'([^'\n]{1,300})'(?![\w'])")
_LIST_MARKER = re.compile(r"(?m)^(\s*)(\d{1,3})([.)])(?=\s)")
_CLOCK_VALUE = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?\s*$")
_MEASURE_LINE = re.compile(
    r"^\s*-?\s*(?P<label>[^:\n]{2,80}):\s*(?P<num>\d+(?:\.\d+)?)\s?(?P<unit>events/h|/h|%|min|"
    r"bpm|h|s)?(?![\w.])", re.MULTILINE)


_UNITS_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen")
_TENS_WORDS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_NUMBER_WORD = re.compile(
    r"\b(?:(?P<tens>" + "|".join(_TENS_WORDS) + r")(?:[- ](?P<unit>" + "|".join(
        _UNITS_WORDS[1:10]) + r"))?|(?P<small>" + "|".join(_UNITS_WORDS) + r"))\b",
    re.IGNORECASE)


def _word_value(m: re.Match[str]) -> int:
    if m.group("small"):
        return _UNITS_WORDS.index(m.group("small").lower())
    value = 10 * (2 + _TENS_WORDS.index(m.group("tens").lower()))
    return value + (_UNITS_WORDS.index(m.group("unit").lower()) if m.group("unit") else 0)


def _word_number_problems(sentence: str, allowed: GroundingFacts
                          ) -> list[tuple[int, int, Problem]]:
    """A number written in words right after a named measure (``"the AHI is zero"``) must be
    one of that measure's values, as a number in digits must (words elsewhere are not read)."""
    masked = _mask(sentence, _quoted_spans(sentence, allowed.quoted))
    keys = sorted(((m.start(), m.end(), names) for rx, names, _fam in _BINDINGS
                   for m in rx.finditer(masked)), key=lambda k: k[0])
    out: list[tuple[int, int, Problem]] = []
    for i, (start, end, names) in enumerate(keys):
        stop = keys[i + 1][0] if i + 1 < len(keys) else len(masked)
        digit = _NUMBER.search(masked, end, stop)
        word = _NUMBER_WORD.search(masked, end, stop)
        if word is None or (digit is not None and digit.start() < word.start()):
            continue
        if len(masked[end:word.start()].split()) > _BIND_WORDS:
            continue
        value = _word_value(word)
        known = [v for vals in allowed.values.values() for n, v in vals if names.search(n)]
        if any(_matches(value, 0, v) for v in known):
            continue
        out.append((word.start(), word.end(), Problem(
            token=word.group(0), kind="measure",
            reason=f"{word.group(0)} ({value}) is not a value of {sentence[start:end]} in the "
                   "facts")))
    return out


class ToolOutput(BaseModel):
    """One tool result of a conversation, as the chat grounding reads it.

    Attributes
    ----------
    name : str
        The tool.
    content : str
        The text the model read.
    result : object
        The tool's structured result (a pydantic model, or its dict after a restart); None
        when only the text is known.
    """

    name: str = ""
    content: str = ""
    result: object = None


class WithdrawnClaim(BaseModel):
    """A number or clock time taken out of a chat answer.

    Attributes
    ----------
    token : str
        As the answer wrote it (``"0 events/h"``, ``"04:44"``).
    kind : str
        ``number``, ``clock``, ``date``, ``measure`` (a named measure given a value that is
        not its own), ``absence`` ("no hypopneas" where the tool result lists some) or
        ``other_patient`` (a number given about another patient that no tool result gives
        for that patient) or ``stage`` (a sleep stage given for an epoch that the tool
        results stage otherwise).
    reason : str
    sentence : str
        The sentence as the model wrote it.
    """

    token: str
    kind: Literal["number", "clock", "date", "measure", "absence", "other_patient", "stage"]
    reason: str
    sentence: str


class GroundedAnswer(BaseModel):
    """A chat answer after the check.

    Attributes
    ----------
    text : str
        The answer with every unsupported number or time replaced by :data:`UNVERIFIED`.
    withdrawn : list of WithdrawnClaim
    checked : int
        Numbers and clock times read.
    """

    text: str
    withdrawn: list[WithdrawnClaim] = Field(default_factory=list)
    checked: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.withdrawn)


def _unit_for_key(key: str, value: float) -> str:
    """The unit a result field's number is in, guessed from the field's name."""
    k = key.lower()
    if k.endswith(("_s", "_sec", "seconds")) or k in ("onset", "duration", "start", "end"):
        return "s"
    if k.endswith(("_min", "minutes")):
        return "min"
    if k.endswith(("_h", "hours")):
        return "h"
    if k.endswith(("_pct", "pct", "percent")) or "spo2" in k or "nadir" in k \
            or "saturation" in k:
        return "%"
    if "bpm" in k or k.startswith("hr"):
        return "bpm"
    if float(value).is_integer() and (isinstance(value, int) or any(
            w in k for w in ("epoch", "id", "count", "n_", "total", "rank", "index"))):
        return "count"
    return ""


def _clock_of(text: str) -> str | None:
    """``"HH:MM:SS"`` of a value that is a clock time or an ISO date-time, else None."""
    t = text.strip()
    m = re.match(r"^\d{4}-\d{2}-\d{2}[T ](\d{2}:\d{2}(?::\d{2})?)", t)
    if m:
        t = m.group(1)
    m = _CLOCK_VALUE.match(t)
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        return None
    return f"{int(m.group(1)):02d}:{m.group(2)}:{m.group(3) or '00'}"


def _is_fact_dict(obj: dict) -> bool:
    """A Measure or a FactItem: a named value with a unit."""
    return {"name", "label", "value", "unit"} <= set(obj) and isinstance(obj.get("name"), str)


def _fact_of_dict(obj: dict, tool: str) -> FactItem:
    ev = obj.get("evidence") or {}
    epochs = obj.get("epochs", ev.get("epochs", [])) or []
    ids = obj.get("event_ids", ev.get("event_ids", [])) or []
    v = obj.get("value")
    value = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) \
        and math.isfinite(v) else None
    return FactItem(name=str(obj["name"]), label=str(obj.get("label") or ""), value=value,
                    unit=str(obj.get("unit") or ""), display=str(obj.get("display") or ""),
                    reason=str(obj.get("reason") or ""),
                    epochs=[(int(e[0]), int(e[1])) for e in epochs
                            if isinstance(e, (list, tuple)) and len(e) == 2
                            and all(isinstance(x, (int, float)) for x in e)],
                    times=[t for t in obj.get("times", []) or [] if isinstance(t, str)],
                    event_ids=[int(i) for i in ids if isinstance(i, (int, float))],
                    source=tool)


def _plain(obj: object) -> object:
    """Pydantic models as plain data (figures' bytes left out)."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="python")
    return obj


def facts_from_result(tool: str, result: object) -> tuple[list[FactItem], list[str]]:
    """The facts a tool's structured result supports, and its quotable data strings.

    Measures and fact items (``name``, ``label``, ``value``, ``unit``) keep their name, so a
    number written after "AHI" must be an AHI; any other number is a fact under its field's
    name with a unit guessed from that name (``duration_s`` in s, ``spo2_nadir`` in %,
    integers as counts), a probability also as a percentage, a list's length as a count. Clock
    strings are cited times. Text fields are read for numbers and times, except those holding
    file data or the user's or the LLM's words (labels, file names, queries), which are only
    quotable; the report's record of rejected sentences is skipped.

    Parameters
    ----------
    tool : str
    result : pydantic model, dict or list

    Returns
    -------
    facts : list of FactItem
    quoted : list of str
    """
    facts: list[FactItem] = []
    quoted: list[str] = []
    texts: list[str] = []
    times: list[str] = []

    def walk(obj: object, key: str, data: bool) -> None:
        obj = _plain(obj)
        if isinstance(obj, dict):
            if _is_fact_dict(obj):
                facts.append(_fact_of_dict(obj, tool))
                return
            for k, v in obj.items():
                ks = str(k)
                if ks in _SKIP_KEYS:
                    continue
                walk(v, ks, data or ks in _DATA_KEYS)
            return
        if isinstance(obj, (list, tuple)):
            if obj and not data:
                facts.append(FactItem(name=f"{tool}.{key}.length", label="", unit="count",
                                      value=float(len(obj)), source=tool))
            for v in obj:
                walk(v, key, data)
            return
        if isinstance(obj, bool) or obj is None:
            return
        if isinstance(obj, (int, float)):
            v = float(obj)
            if not math.isfinite(v) or data:
                return
            unit = _unit_for_key(key, obj)
            facts.append(FactItem(name=key, label="", value=v, unit=unit, source=tool))
            if unit == "" and 0.0 <= v <= 1.0:
                facts.append(FactItem(name=key, label="", value=100.0 * v, unit="%",
                                      source=tool))
            return
        if isinstance(obj, str):
            clock = _clock_of(obj)
            if clock is not None:
                times.append(clock)
            elif data:
                quoted.append(obj)
            elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", obj.strip()):
                facts.append(FactItem(name=key, label="", unit="date", display=obj.strip(),
                                      source=tool))
            else:
                texts.append(obj)

    walk(result, tool, False)
    if texts or times:
        clean = _unquoted(" \n".join(texts))
        typed, spans = _typed_numbers(clean, f"{tool}.text")
        facts.append(FactItem(name=f"{tool}.text", label=_mask(clean, spans), unit="untyped",
                              times=times, source=tool))
        facts += typed
    return facts, quoted


def _unquoted(text: str) -> str:
    """``text`` with quoted passages (labels, queries) blanked out."""
    spans = [m.span() for m in _QUOTED.finditer(text)]
    spans += [m.span() for m in _SINGLE_QUOTED.finditer(text)]
    return _mask(text, spans)


def clock_times(text: str) -> list[str]:
    """The clock times ``text`` writes, as "HH:MM:SS" on a 24-hour clock ("1:25 pm" is
    "13:25:00"; an invalid 12-hour time such as "14:00 pm" is left out).

    Parameters
    ----------
    text : str

    Returns
    -------
    list of str
        In order of appearance.
    """
    out = []
    for m in _CLOCK.finditer(text):
        h, mi, s = int(m.group("h")), int(m.group("m")), int(m.group("s") or 0)
        ap = (m.group("ap") or "").lower()
        if ap:
            if h > 12:
                continue
            h = h % 12 + (12 if ap == "p" else 0)
        out.append(f"{h:02d}:{mi:02d}:{s:02d}")
    return out


#: A unit family of a number written in a tool's text, and the unit its fact gets.
_TEXT_UNIT = {"pct": "%", "rate": "events/h", "bpm": "bpm"}


def _typed_numbers(text: str, name: str) -> tuple[list[FactItem], list[tuple[int, int]]]:
    """The numbers of a tool's text written with a unit (%, events/h, bpm, min, h, s) as
    facts of that unit, and where they are.

    They support a number of the same unit family only: "Wake time: 62.5 min" does not
    support "62.5 hours" (a 1.5 B model wrote "411.5 minutes (62.5 hours)"). Numbers without
    a unit stay literal numbers, allowed in any family.
    """
    facts: list[FactItem] = []
    spans: list[tuple[int, int]] = []
    masked = _mask(text, [m.span() for m in _IDENT.finditer(text)])
    for m in _HOURS_MIN.finditer(masked):
        facts.append(FactItem(name=name, label="", unit="min",
                              value=int(m.group("h")) * 60 + int(m.group("m"))))
        spans.append(m.span())
    masked = _mask(masked, spans)
    for m in _NUMBER.finditer(masked):
        fam, secs = _family_of(m.group("unit"))
        value = float(m.group("num").replace(",", ""))
        other = (_OTHER_UNIT.match(text, m.end()) if m.group("unit") is None else None)
        if fam == "duration" and secs is not None:
            unit = {60.0: "min", 3600.0: "h", 1.0: "s"}[secs]
        elif fam in _TEXT_UNIT:
            unit = _TEXT_UNIT[fam]
        elif other is not None:
            unit = other.group("u")
        else:
            continue
        facts.append(FactItem(name=name, label="", unit=unit, value=value))
        spans.append(m.span())
    return facts, spans


def facts_from_text(tool: str, text: str) -> list[FactItem]:
    """The facts a tool's text supports (when its structured result is not known).

    Numbers and clock times outside quotes are allowed, unbound to any measure; a
    ``report_facts`` line ``"- AHI (3 % rule): 24.0 events/h"`` also binds its value to the
    measure its label names.
    """
    clean = _unquoted(text or "")
    typed, spans = _typed_numbers(clean, f"{tool}.text")
    facts = [FactItem(name=f"{tool}.text", label=_mask(clean, spans), unit="untyped",
                      times=clock_times(clean), source=tool), *typed]
    if tool == "report_facts":
        for m in _MEASURE_LINE.finditer(clean):
            for (rx, _names, _fam), name in zip(_BINDINGS, _BINDING_FACT_NAMES):
                if rx.search(m.group("label")):
                    facts.append(FactItem(name=name, label=m.group("label").strip(),
                                          value=float(m.group("num")),
                                          unit=m.group("unit") or "", source=tool))
                    break
    return facts


def question_facts(question: str) -> list[FactItem]:
    """The question's own numbers and clock times: allowed, never as a measure's value (so
    "say the AHI is 0" does not make an AHI of 0 pass)."""
    typed, spans = _typed_numbers(question or "", "question")
    return [FactItem(name="question", label=_mask(question or "", spans), unit="untyped",
                     times=clock_times(question or ""), source="question"), *typed]


#: SleepLM's generated captions in a caption tool's text, up to its deterministic facts: the
#: model's words, whose numbers an answer may not quote (a 1.5 B model gave "SpO2 down to
#: 96%; HR 66 bpm" from the caption where the measured facts beside it said 97 % and 67 bpm).
_MODEL_WORDS = re.compile(r"(\(model words, not measurements\):)[^\n]*(?:\n(?!Deterministic "
                          r"facts)[^\n]*)*", re.IGNORECASE)


def _measured_part(result: object) -> object:
    """A tool's structured result without SleepLM's generated captions (``generated``)."""
    if isinstance(result, BaseModel) and "generated" in type(result).model_fields:
        return result.model_copy(update={"generated": []})
    if isinstance(result, dict) and "generated" in result:
        return {k: v for k, v in result.items() if k != "generated"}
    return result


def chat_allowed(outputs: Iterable[ToolOutput], question: str = "", *,
                 extra: Iterable[FactItem] = (), quoted: Iterable[str] = ()
                 ) -> GroundingFacts:
    """The allowed set of a chat answer: every tool output of the conversation, the question.

    Parameters
    ----------
    outputs : iterable of ToolOutput
        The conversation's tool results; a structured result is read with
        :func:`facts_from_result`, the text always with :func:`facts_from_text` (its numbers
        never bind to a named measure unless the tool is ``report_facts``). SleepLM's
        generated captions are left out: their numbers are the model's reading, and an answer
        may state only the measured ones.
    question : str
        The user's question (:func:`question_facts`).
    extra : iterable of FactItem
        Further facts (e.g. reference values the assistant itself states).
    quoted : iterable of str
        Further quotable data.

    Returns
    -------
    GroundingFacts
    """
    facts: list[FactItem] = list(extra)
    data: list[str] = list(quoted)
    for out in outputs:
        result, content = _measured_part(out.result), _MODEL_WORDS.sub(r"\1", out.content or "")
        if result is not None:
            f, q = facts_from_result(out.name or "tool", result)
            facts += f
            data += q
            text_facts = facts_from_text("", content)  # unbound: the result names them
        else:
            text_facts = facts_from_text(out.name or "tool", content)
        facts += text_facts
    facts += question_facts(question)
    allowed = build_allowed(facts, quoted=[d for d in dict.fromkeys(data) if d.strip()])
    allowed.values = {fam: list(dict.fromkeys(vals)) for fam, vals in allowed.values.items()}
    return allowed


def _problem_spans(sentence: str, allowed: GroundingFacts
                   ) -> list[tuple[int, int, Problem]]:
    """Where in ``sentence`` each problem of :func:`check_sentence` is."""
    check = check_sentence(sentence, allowed)
    if check.ok:
        return []
    masked = _mask(sentence, _quoted_spans(sentence, allowed.quoted))
    masked = _mask(masked, [m.span() for m in _IDENT.finditer(masked)])
    dates = [(m.start(), m.end(), m.group(0)) for m in _DATE.finditer(masked)]
    no_dates = _mask(masked, [(a, b) for a, b, _ in dates])
    clocks = [(m.start(), m.end(), m.group(0).strip()) for m in _CLOCK.finditer(no_dates)]
    clocks += [(m.start(), m.end(), m.group(0)) for m in _BAD_CLOCK.finditer(
        _mask(no_dates, [(a, b) for a, b, _ in clocks]))]
    toks, _, _ = _tokens(sentence, allowed)
    used: set[tuple[int, int]] = set()
    out: list[tuple[int, int, Problem]] = []

    def take(p: Problem, cands: list[tuple[int, int, str]], token: str,
             after: int = 0) -> None:
        for a, b, text in cands:
            if text == token and a >= after and (a, b) not in used:
                used.add((a, b))
                out.append((a, b, p))
                return

    numbers = [(t.start, t.end, t.text) for t in toks]
    for p in check.problems:
        if p.kind == "date":
            take(p, dates, p.token)
        elif p.kind == "clock":
            take(p, [(a, a + len(t), t) for a, _b, t in clocks], p.token)
        elif p.kind == "number":
            take(p, numbers, p.token)
        else:
            key, _, num = p.token.partition(" ... ")
            at = sentence.find(key)
            take(p, numbers, num, after=at + len(key) if at >= 0 else 0)
    return out


#: Where a sentence's clauses meet: ", and", ", but", ", while", ", whereas", ";".
_CLAUSE_CUT = re.compile(r",\s+(?:and|but|while|whereas)\b|;")
#: A comma before a clause with a subject and verb of its own ("The lowest SpO2 was 59.0, the
#: mean heart rate was 66.9 bpm"), a cut when what comes before it has a verb too (not "At
#: epoch 95, the mean SpO2 was 92 %").
_SUBJECT_CUT = re.compile(r",(?=\s+(?:the|her|his|their|its)\s+[^,;.]{1,60}?\b(?:was|is|were|"
                          r"are)\b)")
_VERB = re.compile(r"\b(?:was|is|were|are)\b")


def _epoch_sized(tok: _Token) -> bool:
    """Whether a number can be one epoch's or event's own value (a percentage, a rate in bpm,
    a count, a duration up to a minute); "15.0 min" after "epoch 30" is the night's."""
    if tok.family == "duration":
        return tok.value * (tok.seconds or 0.0) <= 60.0
    return tok.family in ("pct", "bpm", "none", "count", "ordinal", "other")


def _clause_bounds(text: str, pos: int) -> tuple[int, int]:
    """Where the clause of ``text`` (a sentence) around character ``pos`` starts and ends."""
    cuts: list[tuple[int, int]] = []
    last = 0
    for m in sorted([*_CLAUSE_CUT.finditer(text), *_SUBJECT_CUT.finditer(text)],
                    key=lambda m: m.start()):
        if m.re is _SUBJECT_CUT and not _VERB.search(text, last, m.start()):
            continue
        cuts.append(m.span())
        last = m.end()
    start, end = 0, len(text)
    for a, b in cuts:
        if b <= pos:
            start = b
        elif a >= pos:
            end = a
            break
    return start, end


def duration_spans(text: str) -> list[tuple[int, int, float, float]]:
    """The durations ``text`` writes ("28 seconds", "1.5 min", "1 h 20 min").

    Returns
    -------
    list of (start, end, seconds, half_width)
        Where the number is, its value in seconds, and half the last written digit in
        seconds ("28 s" stands for 27.5-28.5 s: 0.5).
    """
    toks, _problems, _n = _tokens(text, GroundingFacts())
    return [(t.start, t.end, t.value * t.seconds, 0.5 * 10.0 ** -t.decimals * t.seconds)
            for t in toks if t.family == "duration" and t.seconds]


def located_sentences(text: str) -> Iterator[tuple[int, str]]:
    """The sentences of ``text`` (a markdown list marker "1." blanked, so it is no number)
    with where each starts in ``text``.

    Yields
    ------
    (int, str)
        The sentence's first character in ``text``, and the sentence.
    """
    view = _LIST_MARKER.sub(lambda m: m.group(1) + " " * len(m.group(2)) + m.group(3), text)
    pos = 0
    for sentence in split_sentences(view):
        at = view.find(sentence, pos)
        if at < 0:
            continue
        pos = at + len(sentence)
        yield at, sentence


_MEASURE_FAMILY: dict[str, Family] = {"%": "pct", "events/h": "rate", "/h": "rate",
                                      "bpm": "bpm", "min": "duration", "s": "duration",
                                      "h": "duration", "count": "count"}


def _measure_matches(tok: _Token, value: float, unit: str) -> bool:
    """Whether a written number states a measure's value (durations in the unit written)."""
    fam = _MEASURE_FAMILY.get(unit, "none")
    if tok.family == "duration" and fam == "duration":
        return _duration_matches(tok, value * {"min": 60.0, "s": 1.0, "h": 3600.0}[unit])
    return _matches(tok.value, tok.decimals, value)


#: Measures that are one index by different scoring rules: an answer that states one of them
#: answers a question about the index; when it states none, only the first (the primary rule)
#: is added (:func:`assistant.toolcalls.missing_measures`).
RULE_VARIANTS: tuple[tuple[str, ...], ...] = (
    ("ahi_3a", "ahi_4"), ("odi3", "odi4"),
    ("hypopnea_count", "hypopnea_3a_count", "hypopnea_4_count"))


def specific_rules(question: str) -> set[str]:
    """The measures of :data:`RULE_VARIANTS` a question names by their rule: words of
    :data:`assistant.extract.MEASURE_WORDS` that name one member of a group ("the AHI by the
    4 % rule" names ``ahi_4``; "the AHI" names both rules)."""
    from assistant.extract import MEASURE_WORDS

    low = (question or "").lower()
    out: set[str] = set()
    for pattern, _section, names in MEASURE_WORDS:
        if re.search(pattern, low):
            for group in RULE_VARIANTS:
                hit = set(group) & set(names)
                if len(hit) == 1:
                    out |= hit
    return out


def _other_rules(names: Iterable[str]) -> set[str]:
    """The other rules' measures of a group of which ``names`` holds exactly one."""
    names = set(names)
    return {n for g in RULE_VARIANTS if len(set(g) & names) == 1 for n in g if n not in names}


def misbound_numbers(text: str, measures: Iterable[object], question: str
                     ) -> list[WithdrawnClaim]:
    """Numbers written right after words that name a measure the question asks for, but that
    are not its value.

    The words are those the question parser knows (:data:`assistant.extract.MEASURE_WORDS`:
    "WASO", "awakenings", "REM AHI", "deep sleep", ...), for the measures the question names.
    In a sentence of the answer that names one of them (a number after a clock time or epoch
    of its clause is that event's or epoch's, not the night's), a number within
    four words after the words, of a unit kind the measure can have (a count: an integer),
    must be the value of a measure the sentence's words name (any measure, asked for or
    not); else it is withdrawn even when the
    number occurs elsewhere in the tool results (a 1.5 B model wrote "Number of awakenings:
    20" from "and 20 more runs" and "WASO: 113.0 min" from another duration; the measured
    values were 23 and 86.5 min); so is a number of another unit kind written there
    right after the words, with only "is", "was", "of" or punctuation between ("Percentage
    of deep sleep: 2.8 /h", "The SE was 12.5 events/h"; not "AHI (3% rule)"). Words that
    name one scoring rule of an index (:data:`RULE_VARIANTS`: "the 4% rule") with a number
    right after them take only that rule's value ("the AHI ... with the 4% rule is 17.6
    events/h" gave the 3 % rule's AHI). When the answer never states a measure the question asks
    for (one measure, e.g. the sleep-onset latency), a number of its unit kind that is no value of what its sentence
    names is withdrawn too ("took approximately 100 minutes to fall asleep" for a sleep-onset
    latency of 69.0 min).

    Parameters
    ----------
    text : str
        An answer (after :func:`ground_answer`; ``[unverified]`` holds no number).
    measures : iterable of Measure
        The measured values (``name``, ``value``, ``unit``) of the conversation's facts.
    question : str
        The question the answer answers.

    Returns
    -------
    list of WithdrawnClaim
        Each with ``kind="measure"``; its ``token`` is the number as written. Where it is in
        ``text`` is found with :func:`misbound_spans`.
    """
    return [w for _a, _b, w in misbound_spans(text, measures, question)]


#: What may stand between a measure's words and its value ("SE was", "deep sleep: ").
_CONNECTOR = re.compile(r"(?:\s|[:=,-]|\b(?:is|was|were|of|at|about|approximately|"
                        r"around|roughly)\b)*", re.IGNORECASE)
#: What stands between words the answer alone uses for a measure and its value: "was", ":", a
#: qualifier in brackets without numbers ("The Apnea Index (AASM recommended rule) was 17.6").
_STRICT = re.compile(r"\s*(?:\([^()\d]{1,60}\)\s*)?(?:(?:is|was|of|=|:|approximately|about)\s*)*",
                     re.IGNORECASE)
#: Words that make a value one of a part of the night, not the night's own.
_PART_OF_NIGHT = re.compile(r"\b(?:half|hours?|first|second|third|last|between|window|"
                            r"during (?:rem|nrem|n[123]|stage|wake|the)|in (?:rem|nrem|n[123]|"
                            r"stage|the)|supine|non-supine|lateral|prone|after|before|"
                            r"per stage|by stage)\b", re.IGNORECASE)
#: Between a value and a measure's words after it: "200.0 minutes of slow-wave sleep".
_OF_AFTER = re.compile(r"\s+(?:(?:of|in)\s+(?:(?:the|her|his|their)\s+)?)?", re.IGNORECASE)
_EVENT_CONTEXT = re.compile(r"\bepochs?\b|\b\d{1,2}:\d{2}\b", re.IGNORECASE)
#: Right before a number: a probability or similarity, not a measure's value ("p=0.05").
_SCORE_BEFORE = re.compile(r"\b(?:p|prob(?:ability)?|cos(?:ine)?|score|margin)\s*[=:]?\s*-?$",
                           re.IGNORECASE)
#: A place in a list before a number: "the first 10 listed", "the last 3", "top 5".
_LIST_PLACE_BEFORE = re.compile(r"\b(?:first|last|next|top)\s*$", re.IGNORECASE)
#: After an hour: "am"/"pm", or "and 2 am" / "to 3 pm" ("between 1 and 2 am").
_HOUR_AFTER = re.compile(r"\s*(?:(?:and|to|-|\u2013)\s*\d{1,2}(?::\d{2})?\s*)?(?:[ap]\.?m\b|"
                         r"o'clock)", re.IGNORECASE)
#: A run of epochs as evidence ("which occurred at epoch 30-947"): no single event.
_EPOCH_RUN = re.compile(r"\bepochs?\s+\d+\s*[-\u2013]\s*\d+(?:\s*(?:,|and)\s*\d+\s*[-\u2013]"
                        r"\s*\d+)*", re.IGNORECASE)
#: Evidence in brackets, as report_facts writes it ("[epochs 33-39, 41-42 and 20 more runs]").
_EVIDENCE = re.compile(r"\[[^\]\n]*\]")
_LABEL_STOP = frozenset({"in", "of", "the", "a", "an", "during", "per", "and", "or", "by",
                         "from", "to", "with"})


#: Label words a sentence may leave out and still name the measure ("194 central apneas,
#: 26.0 per hour" names the central apnea index).
_LABEL_GENERIC = frozenset({"index", "count", "number"})


#: A sleep stage right after a duration: "1.0 min on REM sleep", "65.5 min of slow-wave sleep".
_STAGE_AFTER = re.compile(r"\s+(?:of|in|on)\s+(?:(?:the|her|his|their)\s+)?(?:stage\s+)?"
                          r"(rem|n1|n2|n3|deep|slow[- ]wave|sws)\b(?:\s+sleep\b)?")
_STAGE_TIME = {"rem": "r_min", "n1": "n1_min", "n2": "n2_min", "n3": "n3_min",
               "deep": "n3_min", "slowwave": "n3_min", "sws": "n3_min"}
#: After the stage, words that make the duration no stage time ("1.0 min of REM latency",
#: "20 min in REM period 2", "the first 12 min of N2 epochs").
_STAGE_NOT_TIME = re.compile(r"\s*(?:\(|latency|onset|periods?\b|episodes?\b|cycles?\b|"
                             r"bouts?\b|runs?\b|epochs?\b|without|before|when|if)")
#: Words before a duration that make it an event's length ("lasting 35 s in N2").
_EVENT_LENGTH_BEFORE = re.compile(r"\b(?:lasting|lasted|lasts|last|long|duration(?: of)?|"
                                  r"length(?: of)?|took|taking)\s+(?:about\s+|approximately\s+)?$")
#: Words that make a stage's time one of a part of the night ("30.0 min of REM in the second
#: half", "while supine", "before 02:00"); unlike :data:`_PART_OF_NIGHT`, not "after sleep
#: onset".
_NIGHT_PART = re.compile(r"\b(?:half|hours?|first|second|third|last|between|window|supine|"
                         r"non-supine|lateral|prone|position|cycle)\b|\b(?:after|before|from|"
                         r"until|by) \d")
#: Before the duration, words that make it a part of a stage ("after 1.0 min in N1",
#: "within 10 min of REM", "the longest 25 min of N3").
_STAGE_SPAN_BEFORE = re.compile(r"\b(?:after|within|first|last|longest|shortest|each|every|"
                                r"per)\s+(?:the\s+)?$|\b(?:run|period|bout|episode|block|"
                                r"stretch)\b")


#: A stretch of clock time named in a clause: "the second half", "the first two hours",
#: "between 1 and 2 am", "after 03:00".
_CLOCK_STRETCH = re.compile(
    r"\b(?:first|second|other|last|latter|final)\s+half\b|\b(?:first|second|third|last|final)"
    r"\s+(?:\w+\s+)?hours?\b|\bbetween\s+\d{1,2}(?::\d{2})?\b|\b(?:after|before|from|until|"
    r"since)\s+\d{1,2}(?::\d{2})?\s*(?:[ap]\.?m\b|:|$|\s)|\bhour\s+\d+\b")
_SPO2_WORDS = re.compile(r"\bspo2\b|\bsaturation\b|\boxygen\b|\bo2\b|\bsao2\b")
_HEART_WORDS = re.compile(r"\bheart\b|\bpulse\b|\bhr\b|\bbpm\b")


def _stage_named_after(low: str, end: int) -> re.Match[str] | None:
    """The sleep stage named right after a value ending at ``end`` of ``low`` (a lower-cased
    sentence) as the one whose time it is ("1.0 min on REM sleep"), or None."""
    ms = _STAGE_AFTER.match(low, end)
    return None if ms is None or _STAGE_NOT_TIME.match(low, ms.end()) else ms


def _own_line(text: str, words_at: int, value_at: int) -> bool:
    """Whether the line of ``text`` holding a measure's words (at ``words_at``) and a value
    after them (at ``value_at``) is about something of its own: an epoch or time before the
    value ("- epoch 629: ... lowest SpO2 96%"), evidence in brackets ("[epoch holistic
    11130-11160 s] Stage N2. Lowest SpO2 96%."), or a head before the words ("- sim-01006
    (plm_disorder): PLMS index 41.0 events/h", another night)."""
    start = text.rfind("\n", 0, words_at) + 1
    end = text.find("\n", value_at)
    line = text[start:end if end >= 0 else len(text)]
    return bool(_EVENT_CONTEXT.search(text[start:value_at])
                or ":" in text[start:words_at]
                or any(m.group(0) != UNVERIFIED for m in _EVIDENCE.finditer(line)))


def _event_line(text: str, at: int) -> bool:
    """Whether the line of ``text`` holding position ``at`` is about an event or epoch of its
    own: evidence in brackets on it, or an epoch or clock time before ``at``."""
    start = text.rfind("\n", 0, at) + 1
    end = text.find("\n", at)
    line = text[start:end if end >= 0 else len(text)]
    return bool(_EVENT_CONTEXT.search(text[start:at])
                or any(m.group(0) != UNVERIFIED for m in _EVIDENCE.finditer(line)))


def _stem_words(text: str) -> set[str]:
    """Lower-case words, a plural "s" dropped ("apneas" -> "apnea")."""
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
            for w in re.findall(r"[a-z0-9]+", text.lower())}


def _label_words(label: str) -> set[str]:
    """The words of a measure's label, without its parenthesised rule and small words."""
    bare = re.sub(r"\([^)]*\)", " ", label.lower())
    return _stem_words(bare) - _LABEL_STOP - _LABEL_GENERIC


def misbound_spans(text: str, measures: Iterable[object], question: str
                   ) -> list[tuple[int, int, WithdrawnClaim]]:
    """:func:`misbound_numbers` with where each number is in ``text`` (start, end)."""
    from assistant.extract import MEASURE_WORDS

    by_name = {}
    for m in measures:
        v = getattr(m, "value", None)
        if v is not None and math.isfinite(v):
            by_name[getattr(m, "name")] = m
    asked = [(pattern, names) for pattern, _section, names in MEASURE_WORDS
             if re.search(pattern, (question or "").lower())]
    # what the answer names too: "the headline numbers" name no measure, and the answer
    # then binds values to measures itself ("1.2 events/h AHI" for an AHI of 52.6)
    low_text = _mask(text, [m.span() for m in _EVIDENCE.finditer(text)]).lower()
    named = [(pattern, names) for pattern, _section, names in MEASURE_WORDS
             if (pattern, names) not in asked and re.search(pattern, low_text)]
    if not by_name:
        return []
    empty = GroundingFacts()
    # the answer's sentences: where, the text (evidence in brackets and runs of epochs
    # masked), the numbers
    # and the measures the sentence names (a value of any of them is its own: "AHI supine
    # ...: 61.4"; so is that of a measure whose label's words all are in it: "mean heart
    # rate in stage N1")
    def named_in(low: str, clause: str | None = None) -> list[object]:
        """Measures named in sentence ``low``: by their words, or by all their label's words
        within ``clause`` (default: the sentence)."""
        words = _stem_words(low if clause is None else clause)
        union = [by_name[n] for pattern, _section, names in MEASURE_WORDS
                 if re.search(pattern, low if clause is None else clause)
                 for n in names if n in by_name]
        return union + [m for m in by_name.values()
                        if (lw := _label_words(m.label)) and lw <= words]

    # a sentence about one epoch or event ("at epoch 95 the mean SpO2 was 92 %") gives that
    # epoch's values, not the night's: only a value written before any epoch or time of its
    # clause is bound to the night's measure ("WASO was 14.0 min at epoch 28")
    parts: list[tuple[int, str, str, list[_Token], list[object], bool]] = []
    for at, sentence in located_sentences(text):
        sentence = _mask(sentence, [m.span() for m in _EVIDENCE.finditer(sentence)]
                         + [m.span() for m in _EPOCH_RUN.finditer(sentence)])
        low = sentence.lower()
        parts.append((at, sentence, low, _tokens(sentence, empty)[0], named_in(low),
                      _EVENT_CONTEXT.search(low) is not None))
    every = _tokens(_mask(text, [m.span() for m in _EVIDENCE.finditer(text)]
                          + [m.span() for m in _EPOCH_RUN.finditer(text)]), empty)[0]
    out: list[tuple[int, int, WithdrawnClaim]] = []
    flagged: set[tuple[int, int]] = set()

    def withdraw(at: int, sentence: str, tok: _Token, reason: str) -> None:
        if (at, tok.start) not in flagged:
            flagged.add((at, tok.start))
            out.append((at + tok.start, at + tok.end, WithdrawnClaim(
                token=tok.text, kind="measure", sentence=text[at:at + len(sentence)],
                reason=reason)))

    def of(own: list[object]) -> str:
        return ", ".join(dict.fromkeys(f"{m.label} {m.format()}" for m in own))

    for at, sentence, low, toks, union, local in parts:
        for pattern, names in asked + named:
            mt = re.search(pattern, low)
            own = [by_name[n] for n in names if n in by_name]
            if mt is None or not own:
                continue
            before_only = (pattern, names) not in asked  # named by the answer alone
            fams = {_MEASURE_FAMILY.get(getattr(m, "unit", ""), "none") for m in own}
            others = _other_rules(names)
            # a value written right before the words: "200.0 minutes of slow-wave sleep",
            # "1.2 events/h AHI (AASM ...), 45.5 events/h AHI (4% rule ...)"; it is the value
            # of what the words up to the next comma name ("61.4 events/h AHI supine")
            for tok, mb in ((t, m2) for m2 in re.finditer(pattern, low)
                            for t in (toks if not local else ())):
                if not (tok.end <= mb.start() and tok.family in fams and tok.family != "count"
                        and _OF_AFTER.fullmatch(sentence[tok.end:mb.start()])
                        and sentence[max(0, tok.start - 1):tok.start] != "("):
                    continue
                if before_only and _event_line(text, at + tok.start):
                    # "[event respiration 8089-8142 s] A 7% desaturation to 89% lasting 53 s
                    # in supine N2": the event's duration, not the supine sleep time
                    continue
                phrase = re.split(r"[,;\n]", low[mb.start():], maxsplit=1)[0]
                words = _stem_words(phrase)
                named_here = [by_name[n] for p2, _s2, names2 in MEASURE_WORDS
                              if re.search(p2, phrase) for n in names2 if n in by_name]
                named_here += [m for m in by_name.values()
                               if (lw := _label_words(m.label)) and lw <= words]
                # "52.6 events/h AHI (4% rule: ...)": words naming one rule take only its value
                if rules := specific_rules(phrase):
                    named_here = [m for m in named_here
                                  if getattr(m, "name", "") not in _other_rules(rules)]
                if not any(_measure_matches(tok, m.value, m.unit) for m in named_here):
                    withdraw(at, sentence, tok,
                             f"{tok.text} is not the measured value ({of(own)})")
            # named by the answer alone, a value follows its words only right after them
            # ("The lowest SpO2 was 59.0" gave the lowest heart rate); in "value, label, value,
            # label" lists what follows the words is no value, and a part of the night
            # ("the lowest SpO2 in the second half was 85.2"), an epoch or an event named
            # before the value or evidence in brackets ("[epoch holistic 11130-11160 s]
            # ... lowest SpO2 96%") make it a value of their own
            for tok in toks:
                if tok.start < mt.end():
                    continue
                if before_only and (not _STRICT.fullmatch(sentence[mt.end():tok.start])
                                    or _PART_OF_NIGHT.search(
                                        low[_clause_bounds(low, tok.start)[0]:tok.start])
                                    or _own_line(text, at + mt.start(), at + tok.start)):
                    break
                if len(sentence[mt.end():tok.start].split()) > _BIND_WORDS:
                    break
                if local and _EVENT_CONTEXT.search(low[_clause_bounds(low, tok.start)[0]:
                                                       tok.start]) and _epoch_sized(tok):
                    break  # the epoch's own value
                if _HOUR_AFTER.match(sentence, tok.end):
                    break  # "between 1 and 2 am": a time of the question, no value
                if _SCORE_BEFORE.search(sentence[:tok.start]):
                    break  # "periodic limb movement disorder: p=0.05": a class's probability
                if _LIST_PLACE_BEFORE.search(sentence[:tok.start]):
                    break  # "48 scored event(s) of plm; the first 10 listed": list places
                if tok.family == "duration" and _stage_named_after(low, tok.end):
                    break  # "..., and he had 93.0 min of REM sleep": the stage's time
                if tok.family not in ("none", "count") and tok.family not in fams:
                    if not _CONNECTOR.fullmatch(sentence[mt.end():tok.start]):
                        continue  # "(3% rule)" after "AHI": part of its name
                    # "Percentage of deep sleep: 2.8 /h", "The SE was 12.5 events/h"; not
                    # "The REM % of total sleep time was 26.3%" nor "Sleep architecture: 379.5
                    # min in bed": the value of what the words around name
                    if any(_measure_matches(tok, m.value, m.unit) for m in named_in(
                            low, low[:_clause_bounds(low, tok.start)[1]])):
                        break
                    withdraw(at, sentence, tok,
                             f"{tok.text} is not of the unit of {of(own)}")
                    break
                if tok.family == "count" and "count" not in fams:
                    continue
                if fams == {"count"} and tok.decimals:
                    continue  # "0.05" after "periodic limb movement": not a count
                # a label's words name a measure in the value's clause or before it ("central
                # apneas ..., and that comes to per hour 26.0"), not after it ("WASO was 14.0
                # min, and the REM latency (from sleep onset)" names no sleep-onset latency)
                allowed = named_in(low, low[:_clause_bounds(low, tok.start)[1]])
                if others and _CONNECTOR.fullmatch(sentence[mt.end():tok.start]):
                    allowed = [m for m in allowed if getattr(m, "name", "") not in others]
                if not any(_measure_matches(tok, m.value, m.unit) for m in allowed):
                    withdraw(at, sentence, tok,
                             f"{tok.text} is not the measured value ({of(own)})")
                break
    # a count written right before a count measure's name is the value of the most specific
    # measure that name spells out: "65 hypopneas with >=4% desaturation" names the
    # hypopneas with >=4% desaturation (38), not all hypopneas (65)
    counts = [m for m in by_name.values() if getattr(m, "unit", "") == "count"]
    for at, sentence, low, toks, _union, local in parts if counts else ():
        for tok in toks if not local else ():
            if tok.family not in ("count", "none") or tok.decimals:
                continue
            phrase = re.split(r"[,;\n]|\band\b", low[tok.end:], maxsplit=1)[0]
            words = _stem_words(phrase)
            first = next(iter(_stem_words(phrase.split()[0])), "") if phrase.split() else ""
            named_here = [m for m in counts if (lw := _label_words(m.label)) and lw <= words
                          and first in lw]
            best = [m for m in named_here
                    if not any(_label_words(m.label) < _label_words(o.label) for o in named_here)]
            if not best or _PART_OF_NIGHT.search(phrase) or _own_line(
                    text, at + tok.end, at + tok.start):
                continue
            if not any(_measure_matches(tok, m.value, m.unit) for m in best):
                withdraw(at, sentence, tok, f"{tok.text} is not the measured value ({of(best)})")
    # a duration written right before a sleep stage is that stage's time: "spent 1.0 min on
    # REM sleep after sleep onset" gave a REM latency of 1.0 min as the REM time (93.0 min)
    for at, sentence, low, toks, _union, local in parts:
        for tok in toks if not local else ():
            ms = _stage_named_after(low, tok.end)
            if tok.family != "duration" or ms is None or sentence[
                    max(0, tok.start - 1):tok.start] == "(" \
                    or tok.value * (tok.seconds or 0.0) < 60.0 \
                    or _EVENT_LENGTH_BEFORE.search(low[:tok.start]):
                continue  # "a desaturation lasting 35 s in N2": an event's length
            stage = by_name.get(_STAGE_TIME[re.sub(r"[- ]", "", ms.group(1))])
            c0, c1 = _clause_bounds(low, tok.start)
            if stage is None or _STAGE_SPAN_BEFORE.search(
                    low[c0:tok.start]) or _NIGHT_PART.search(low[ms.end():c1]) \
                    or _NIGHT_PART.search(low[c0:tok.start]):
                continue
            if not _measure_matches(tok, stage.value, stage.unit):
                withdraw(at, sentence, tok, f"{tok.text} is not the measured value "
                                            f"({of([stage])})")
    # a clause about a stretch of clock time ("during the second half of the night", "between
    # 1 and 2 am") gives that stretch's values: the whole night's value of a measure the
    # clause names is not one ("The mean heart rate during the second half of the night was
    # 66.9 bpm", the night's mean, about a plot that gives no value), and an SpO2 is never
    # in bpm ("The lowest SpO2 value during the second half ... was 59.0 bpm", the lowest
    # heart rate)
    for at, sentence, low, toks, _union, local in parts:
        for tok in toks if not local else ():
            c0, _c1 = _clause_bounds(low, tok.start)
            pre = low[c0:tok.start]
            if tok.family == "bpm" and _SPO2_WORDS.search(pre) and not _HEART_WORDS.search(
                    pre[_SPO2_WORDS.search(pre).end():]):
                withdraw(at, sentence, tok, f"{tok.text} is a heart rate given for an SpO2")
                continue
            stretch = _CLOCK_STRETCH.search(pre)
            if stretch is None or tok.family in ("none", "count", "ordinal", "other"):
                continue
            night = [m for m in named_in(low, pre) if _measure_matches(tok, m.value, m.unit)]
            if night:
                withdraw(at, sentence, tok, f"{tok.text} is the whole night's value "
                                            f"({of(night)}), not that of '{stretch.group(0)}'")
    # a measure the question asks for, with one unit kind, whose value the answer never
    # states: a number of that unit kind that is no value of what its sentence names is the
    # model's own ("took approximately 100 minutes to fall asleep" for a latency of 69.0 min)
    for pattern, names in asked:
        own = [by_name[n] for n in names if n in by_name]
        fams = {_MEASURE_FAMILY.get(getattr(m, "unit", ""), "none") for m in own}
        if len(names) != 1 or len(own) != 1 or not fams <= {"duration", "pct", "rate", "bpm"}:
            continue  # one measure only: "the architecture" names four percentages
        # stated anywhere, also in a sentence about one epoch ("nadir 87.1 % at epoch 95")
        if any(_measure_matches(tok, m.value, m.unit) for tok in every for m in own):
            continue
        for at, sentence, low, toks, _union, local in parts:
            for tok in toks if not local else ():
                if sentence[max(0, tok.start - 1):tok.start] == "(":
                    continue  # "ODI (3 %)": the rule in a measure's name
                # what the sentence names up to the value's clause: "The Wake-onset latency
                # was 14.0 min, and the REM latency from sleep onset was 111.0 min" names no
                # sleep-onset latency for the 14.0
                pre = low[:_clause_bounds(low, tok.start)[1]]
                if tok.family in fams and not any(
                        _measure_matches(tok, m.value, m.unit) for m in named_in(pre, pre)):
                    withdraw(at, sentence, tok,
                             f"{tok.text} is none of the measures its sentence names, and the "
                             f"answer never gives what the question asks for ({of(own)})")
    return sorted(out, key=lambda x: x[0])


def ground_answer(text: str, allowed: GroundingFacts, *, marker: str = UNVERIFIED
                  ) -> GroundedAnswer:
    """Check a chat answer and replace every unsupported number or time by ``marker``.

    Sentences are read as :func:`check_text` reads them; a markdown list marker at the start
    of a line (``"1."``) is not a number. A number bound to a named measure (``"AHI ... 0"``)
    that is not that measure's value is withdrawn even when the number occurs elsewhere, and
    so is a number written in words right after a named measure (``"the AHI is zero"``);
    other numbers in words are not read.

    Parameters
    ----------
    text : str
    allowed : GroundingFacts
        From :func:`chat_allowed`.
    marker : str

    Returns
    -------
    GroundedAnswer
        The text (unchanged when everything is supported) and what was withdrawn.
    """
    text = text or ""
    edits, checked = _edits(text, allowed)
    if not edits:
        return GroundedAnswer(text=text, checked=checked)
    out = text
    for a, b, _claim in sorted(edits, key=lambda e: -e[0]):
        out = out[:a] + marker + out[b:]
    return GroundedAnswer(text=out, withdrawn=[c for _a, _b, c in edits], checked=checked)


def _edits(text: str, allowed: GroundingFacts
           ) -> tuple[list[tuple[int, int, WithdrawnClaim]], int]:
    edits: list[tuple[int, int, WithdrawnClaim]] = []
    checked = 0
    for at, sentence in located_sentences(text):
        toks, _, n_times = _tokens(sentence, allowed)
        checked += len(toks) + n_times
        original = text[at:at + len(sentence)]
        for a, b, p in _problem_spans(sentence, allowed) + _word_number_problems(
                sentence, allowed):
            edits.append((at + a, at + b, WithdrawnClaim(
                token=text[at + a:at + b], kind=p.kind, reason=p.reason, sentence=original)))
    return sorted(edits, key=lambda e: e[0]), checked


def problem_spans(text: str, allowed: GroundingFacts
                  ) -> list[tuple[int, int, WithdrawnClaim]]:
    """Where :func:`ground_answer` would withdraw something from ``text``, and what.

    Parameters
    ----------
    text : str
    allowed : GroundingFacts

    Returns
    -------
    list of (start, end, WithdrawnClaim)
        Character spans in ``text``, in order.
    """
    return _edits(text or "", allowed)[0]
