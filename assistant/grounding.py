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
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "CLOCK_TOLERANCE_S",
    "FactItem",
    "GroundingFacts",
    "GroundingResult",
    "Problem",
    "SentenceCheck",
    "build_allowed",
    "check_sentence",
    "check_text",
    "split_sentences",
]

#: A clock time in the text may differ from a cited time by at most this many seconds.
CLOCK_TOLERANCE_S = 30.0
_DAY = 86400.0

Family = Literal["none", "pct", "rate", "bpm", "duration", "count", "ordinal", "margin"]


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
        ``date`` or ``text``.
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
    kind: Literal["number", "clock", "date", "measure"]
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
    r"(?:\s?(?P<ap>[ap])\.?\s?m\b\.?)?(?![\w:])", re.IGNORECASE)
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
    times: set[float] = set()
    dates: set[str] = set()
    for f in facts:
        v = f.value
        if v is not None and math.isfinite(v):
            if f.unit in ("min", "s", "h"):
                scale = {"min": 60.0, "s": 1.0, "h": 3600.0}[f.unit]
                out.values.setdefault("duration", []).append((f.name, float(v) * scale))
            else:
                fam = fam_of_unit.get(f.unit, "none")
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
            literal.update(_numbers_in(text))
    out.exact = sorted(exact)
    out.literal_numbers = sorted(literal)
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
                if d <= CLOCK_TOLERANCE_S or (m.group("s") is None and t == a - a % 60):
                    ok = True
                    break
            if ok:
                break
        if not ok:
            problems.append(Problem(
                token=m.group(0).strip(), kind="clock",
                reason=f"no fact cites a time within {CLOCK_TOLERANCE_S:.0f} s of it"))
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
        toks.append(_Token(start=m.start(), end=m.end(), text=m.group(0).strip(),
                           value=float(num.replace(",", "")), decimals=_decimals(num),
                           family=fam, seconds=secs))
    toks.sort(key=lambda t: t.start)
    return toks, problems, n_times


def _binding_problems(sentence: str, toks: list[_Token], allowed: GroundingFacts,
                      cands: dict[int, list[str]]) -> list[Problem]:
    """A number written right after a named measure must be that measure's value."""
    problems: list[Problem] = []
    keys = sorted(((m.start(), m.end(), names, fam) for rx, names, fam in _BINDINGS
                   for m in rx.finditer(sentence)), key=lambda k: k[0])
    for i, (start, end, names, fam) in enumerate(keys):
        stop = keys[i + 1][0] if i + 1 < len(keys) else len(sentence)
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
