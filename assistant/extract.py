"""Arguments in a clinician's words: times, epochs, stages, event kinds, systems, ordinals.

Deterministic parsers used by the offline planner. Each returns ``None`` (or an empty list)
when the question does not say; none of them guesses a number.

>>> time_range("apneas between 2 and 3 am")
('02:00', '03:00')
>>> event_types("the longest obstructive apnea")
['obstructive_apnea']
>>> ordinal("describe the second one")
2
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tools.common import find_night_part

__all__ = [
    "EVENT_WORDS",
    "Args",
    "clock",
    "epoch_range",
    "event_types",
    "extract",
    "limit",
    "ordinal",
    "patient_ref",
    "quoted",
    "sections_for",
    "spoken_times",
    "stage",
    "superlative",
    "system",
    "time_range",
]

_AMPM = (r"(?:\s*(a\.?m\.?|p\.?m\.?|in the (?:morning|afternoon|evening)|at night|"
         r"tonight))?")
_HM = r"(\d{1,2})(?:[:h.](\d{2}))?(?::(\d{2}))?"
_CLOCK_RE = re.compile(rf"\b{_HM}{_AMPM}\b", re.I)
_RANGE_RE = re.compile(
    rf"\b(?:between|from)\s+{_HM}{_AMPM}\s+(?:and|to|until|till|-)\s+{_HM}{_AMPM}", re.I)
_AT_RE = re.compile(rf"\b(?:at|around|near|about)\s+{_HM}{_AMPM}", re.I)
_AFTER_RE = re.compile(rf"\b(?:after|since)\s+{_HM}{_AMPM}", re.I)
_BEFORE_RE = re.compile(rf"\b(?:before|until)\s+{_HM}{_AMPM}", re.I)
_EPOCH_RE = re.compile(r"\bepochs?\s+(\d{1,5})(?:\s*(?:-|to|and|through)\s*(\d{1,5}))?", re.I)


_HOUR_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
               "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
_MINUTE_WORDS = {"five": 5, "ten": 10, "quarter": 15, "a quarter": 15, "twenty": 20,
                 "twenty-five": 25, "twenty five": 25, "half": 30}
_HOUR = r"(\d{1,2}|" + "|".join(_HOUR_WORDS) + r")"
_SPOKEN_RE = re.compile(r"(?<!from )(?<!between )\b(?:(twenty[- ]five|twenty|ten|five|a quarter|"
                        r"quarter|half|\d{1,2}(?= minutes?))(?: minutes?)? (past|to)|(a quarter|"
                        r"quarter|half) (after|before)|(\d{1,2}) (past)) " + _HOUR + r"\b"
                        r"(?! ?(?:minutes?|min|hours?|h|epochs?|s|seconds?)\b)", re.I)
_HOUR_WORD_RE = re.compile(r"\b(at|around|about|near|by|from|between|and|to|until|till|after|"
                           r"before|since) (" + "|".join(_HOUR_WORDS) + r")\b(?= ?(?:o'?clock|"
                           r"a\.?m\.?|p\.?m\.?|in the|at night|and|to|until|till|or|[?.,;!]|$))",
                           re.I)


def spoken_times(text: str) -> str:
    """Clock times in words written as digits, for the parsers below: "ten past 3" -> "3:10",
    "half past two" -> "2:30", "a quarter to four" -> "3:45", "at two am" -> "at 2 am",
    "around midnight" -> "around 0:00", "3 o'clock" -> "3:00".

    >>> spoken_times("show me the leg emg at around half past two")
    'show me the leg emg at around 2:30'
    """
    def hour(word: str) -> int:
        return int(word) if word.isdigit() else _HOUR_WORDS[word.lower()]

    def spoken(m: re.Match) -> str:
        word = (m.group(1) or m.group(3) or m.group(5)).lower().replace("-", " ")
        way = (m.group(2) or m.group(4) or m.group(6)).lower()
        mins = int(word) if word.isdigit() else _MINUTE_WORDS.get(
            word, _MINUTE_WORDS.get(word.replace(" ", "-"), 0))
        h = hour(m.group(7))
        if not 0 < mins < 60 or h > 23:
            return m.group(0)
        if way in ("to", "before"):  # "ten to one": 00:50, a night's small hours
            h, mins = (h - 1) % 24, 60 - mins
        return f"{h}:{mins:02d}"

    out = _SPOKEN_RE.sub(spoken, text)
    out = _HOUR_WORD_RE.sub(lambda m: f"{m.group(1)} {hour(m.group(2))}", out)
    out = re.sub(r"\b(\d{1,2}|" + "|".join(_HOUR_WORDS) + r") ?o'?clock\b",
                 lambda m: f"{hour(m.group(1))}:00", out, flags=re.I)
    return re.sub(r"\b(at|around|about|near|by|from|until|till|after|before|since) "
                  r"midnight\b", r"\1 0:00", out, flags=re.I)


def _hhmm(h: str, m: str | None, s: str | None, ampm: str | None) -> str | None:
    """``HH:MM[:SS]`` of parsed parts; a bare hour without am/pm is taken as written ("2" is
    02:00, the small hours of a night)."""
    hour, minute = int(h), int(m or 0)
    if ampm:
        a = ampm.lower().replace(".", "")
        a = ("pm" if re.search(r"afternoon|evening|tonight", a) or (a == "at night" and
                                                                    int(h) >= 7) else
             "am" if re.search(r"morning|at night", a) else a)
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if a == "pm" else 0)
    if hour > 23 or minute > 59:
        return None
    return f"{hour:02d}:{minute:02d}" + (f":{int(s):02d}" if s else "")


def clock(text: str) -> str | None:
    """The clock time a question points at ("at 2:14", "around 3 am") as ``HH:MM[:SS]``."""
    m = _AT_RE.search(text)
    if m and (m.group(2) or m.group(4)):
        return _hhmm(m.group(1), m.group(2), m.group(3), m.group(4))
    for m in _CLOCK_RE.finditer(text):
        if m.group(2) or m.group(4):
            return _hhmm(m.group(1), m.group(2), m.group(3), m.group(4))
    return None


def time_range(text: str) -> tuple[str | None, str | None] | None:
    """``(start, end)`` clock times of "between 2 and 3 am", "from 01:30 to 02:00",
    "after 4 am", "before 1:00"; ``None`` when the question names no range."""
    m = _RANGE_RE.search(text)
    if m:
        a1, a2 = m.group(4), m.group(8)
        amp = a1 or a2  # "between 2 and 3 am": the am applies to both
        start = _hhmm(m.group(1), m.group(2), m.group(3), a1 or amp)
        end = _hhmm(m.group(5), m.group(6), m.group(7), a2 or amp)
        if start and end:
            return start, end
    m = _AFTER_RE.search(text)
    if m and (m.group(2) or m.group(4)):
        return _hhmm(m.group(1), m.group(2), m.group(3), m.group(4)), None
    m = _BEFORE_RE.search(text)
    if m and (m.group(2) or m.group(4)):
        return None, _hhmm(m.group(1), m.group(2), m.group(3), m.group(4))
    return None


def epoch_range(text: str) -> tuple[int, int] | None:
    """``(first, last)`` epochs of "epoch 120" or "epochs 100-110"."""
    m = _EPOCH_RE.search(text)
    if not m:
        return None
    a = int(m.group(1))
    b = int(m.group(2)) if m.group(2) else a
    return (min(a, b), max(a, b))


#: Words for event kinds -> canonical event types (longest phrases first).
EVENT_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"obstructive apn(?:o)?eas?", ("obstructive_apnea",)),
    (r"central apn(?:o)?eas?", ("central_apnea",)),
    (r"mixed apn(?:o)?eas?", ("mixed_apnea",)),
    (r"hypopn(?:o)?eas?", ("hypopnea",)),
    (r"respiratory events?|breathing events?|apn(?:o)?eas? (?:and|or|&) hypopn(?:o)?eas?",
     ("obstructive_apnea", "central_apnea", "mixed_apnea", "apnea", "hypopnea")),
    (r"apn(?:o)?eas?|(?:breathing|airflow|breath) (?:\w+ )?(?:stops?|stopped|stopping|"
     r"pauses?|paused|ceases?)|stops? breathing|stopped breathing|pauses? in (?:\w+ )?"
     r"breathing|breathing pauses?", ("obstructive_apnea", "central_apnea", "mixed_apnea",
                                      "apnea")),
    (r"desat(?:uration)?s?|drops? in (?:spo2|saturation|oxygen)", ("desaturation",)),
    (r"arousals?", ("arousal",)),
    (r"periodic limb movements?|plms?\b", ("plm",)),
    (r"(?:leg|limb) movements?|leg kicks?", ("limb_movement",)),
    (r"spindles?", ("spindle",)),
    (r"k[- ]complex(?:es)?", ("k_complex",)),
    (r"slow waves?", ("slow_wave",)),
    (r"rapid eye movements?", ("rapid_eye_movement",)),
    (r"position changes?|changes? of position", ("position_change",)),
)


def event_mentions(text: str) -> list[tuple[int, int, tuple[str, ...]]]:
    """Where ``text`` names events, and which canonical types each name means.

    The patterns of :data:`EVENT_WORDS` are tried in order and a character belongs to one
    name only, so "obstructive apnea" is not also an "apnea".

    Returns
    -------
    list of (start, end, types)
        Character span of each name in ``text``, in the order of :data:`EVENT_WORDS`.
    """
    low = text.lower().replace("_", " ")  # "limb_movement", as tool results write the type
    out: list[tuple[int, int, tuple[str, ...]]] = []
    taken = [False] * len(low)
    for pattern, types in EVENT_WORDS:
        for m in re.finditer(rf"\b(?:{pattern})", low):
            if any(taken[m.start():m.end()]):
                continue
            taken[m.start():m.end()] = [True] * (m.end() - m.start())
            out.append((m.start(), m.end(), types))
    return out


def event_types(text: str) -> list[str]:
    """Canonical event types named in ``text`` (in the order of :data:`EVENT_WORDS`, each
    once)."""
    out: list[str] = []
    for _start, _end, types in event_mentions(text):
        out += [t for t in types if t not in out]
    return out


_STAGES = (
    (r"\brem\b|rapid eye movement sleep|\bstage r\b|dream sleep", "R"),
    (r"\bn3\b|slow[- ]wave sleep|deep sleep|stage 3\b", "N3"),
    (r"\bn2\b|stage 2\b", "N2"),
    (r"\bn1\b|stage 1\b|light(?:est)? sleep", "N1"),
    (r"\bwake\b|\bawake\b|wakefulness|\bstage w\b", "W"),
)


def stage(text: str) -> str | None:
    """The sleep stage a question names (W, N1, N2, N3, R) or ``None``."""
    low = text.lower()
    for pattern, name in _STAGES:
        if re.search(pattern, low):
            return name
    return None


_ORD = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4,
        "4th": 4, "fifth": 5, "5th": 5, "sixth": 6, "6th": 6, "seventh": 7, "7th": 7,
        "eighth": 8, "8th": 8, "ninth": 9, "9th": 9, "tenth": 10, "10th": 10}


def ordinal(text: str) -> int | None:
    """1-based position of "the second one", "#3", "number 4", "the last one" (-1)."""
    low = text.lower()
    if re.search(r"\b(?:the )?last (?:one|interval|event|hit|finding|of (?:those|them|these|"
                 r"that list|the list))\b", low):
        return -1
    m = re.search(r"(?:#|\bnumber |\bno\. ?)(\d{1,3})\b", low)
    if m:
        return int(m.group(1))
    for word, n in _ORD.items():
        if re.search(rf"\b{word}\b", low):
            return n
    return None


def superlative(text: str) -> str | None:
    """``"longest"``, ``"deepest"`` (largest desaturation / lowest SpO2) or ``"first"``."""
    low = text.lower()
    if re.search(r"\blongest\b|\bmost prolonged\b", low):
        return "longest"
    if re.search(r"\b(?:deepest|worst|most severe|biggest|largest)\b", low):
        return "deepest"
    if re.search(r"\bshortest\b", low):
        return "shortest"
    return None


def limit(text: str, default: int) -> int:
    """"top 5", "5 most", "show 3" -> 5 / 3; otherwise ``default``."""
    m = re.search(r"\b(?:top|first|show|list|give me|the)\s+(\d{1,3})\b", text.lower())
    if m and 0 < int(m.group(1)) <= 200:
        return int(m.group(1))
    return default


_SYSTEMS = (
    (r"\beeg\b|\bbrain\b|spindle|cortical|\balpha\b|\bdelta\b", "brain"),
    (r"\bheart\b|\bcardiac\b|\becg\b|\bekg\b|pulse|heart rate", "cardiac"),
    (r"breath|respirat|airflow|\bspo2\b|oxygen|saturation|\bsats?\b|snor|apn|hypopn|nasal|"
     r"thora|abdo|\bbelts?\b|\beffort\b", "respiration"),
    (r"\bmuscle\b|\bemg\b|\bleg\b|\blimb\b|movement|atonia|\bchin\b|\bposition\b", "somatic"),
)


def system(text: str) -> str | None:
    """The physiological system a question is about (brain, cardiac, respiration, somatic)."""
    low = text.lower()
    for pattern, name in _SYSTEMS:
        if re.search(pattern, low):
            return name
    return None


def quoted(text: str) -> list[str]:
    """Phrases in quotes: ``'is it "REM sleep" or "N2"'`` -> ``["REM sleep", "N2"]``."""
    return [a or b for a, b in re.findall(r'"([^"]+)"|“([^”]+)”', text)]


def patient_ref(text: str) -> str | None:
    """A patient id written after "patient" / "like" ("like patient sim-01004-osa_severe")."""
    for m in re.finditer(r"\b(?:patient|like|as)\s+(?=([A-Za-z0-9][A-Za-z0-9._-]{2,63}))", text):
        if re.search(r"\d", m.group(1)):
            return m.group(1).rstrip(".")
    return None


#: "total mins of", "minutes in", "hours of", "time spent in" before a stage's name.
_TIME_OF = r"\b(?:min(?:ute)?s|hours?|hrs?|time(?: spent)?) (?:of|in) (?:stage )?"

#: Measures of tools.report_facts by words (regex) -> (section, measure names).
MEASURE_WORDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (r"positional|supine|on (?:his|her|their) back|position", "respiratory",
     ("ahi_supine", "ahi_nonsupine", "supine_sleep_min")),
    (r"\brem\b.*\bahi\b|\bahi\b.*\b(?:rem|nrem)\b", "respiratory", ("ahi_rem", "ahi_nrem")),
    (r"4 ?% rule|ahi.?4\b|4 ?% (?:ahi|hypopnea)", "respiratory", ("ahi_4",)),
    (r"\bahi\b|apn(?:o)?ea[- ]hypopn(?:o)?ea index|how (?:severe|bad|serious) .*apn|"
     r"apnea severity|apn(?:o)?ea\b.*\bhow (?:severe|bad|serious)\b|"
     r"severity of .*apn|(?:apn|hypopn|breathing|respiratory)\w*.* per hour|per hour .*"
     r"(?:apn|hypopn)", "respiratory", ("ahi_3a", "ahi_4")),
    (r"\brdi\b|respiratory disturbance index", "respiratory", ("ahi_3a", "ahi_4")),
    (r"central apn(?:o)?ea index|how many (?:[\w-]+ ){0,4}central", "respiratory",
     ("central_apnea_count", "central_apnea_index")),
    (r"obstructive apn(?:o)?ea index|how many (?:[\w-]+ ){0,4}obstructive", "respiratory",
     ("obstructive_apnea_count", "obstructive_apnea_index")),
    (r"how many (?:[\w-]+ ){0,4}mixed|mixed apn(?:o)?eas? (?:count|number)", "respiratory",
     ("mixed_apnea_count",)),
    (r"apn(?:o)?ea index", "respiratory", ("apnea_index",)),
    (r"how many (?:apn|breathing|respiratory)", "respiratory",
     ("obstructive_apnea_count", "central_apnea_count", "mixed_apnea_count",
      "hypopnea_3a_count")),
    (r"how many hypopn", "respiratory", ("hypopnea_count", "hypopnea_3a_count",
                                         "hypopnea_4_count")),
    (r"\bodi\b|desaturation index|desat\w*\s+(?:per|an|each|every|a)\s+hour",
     "oximetry", ("odi3", "odi4")),
    (r"\bt90\b|below 90|under 90|< ?90", "oximetry", ("t90_min", "t90_pct")),
    (r"nadir|lowest (?:spo2|saturation|oxygen)|minimum (?:spo2|saturation)|how low", "oximetry",
     ("spo2_nadir",)),
    (r"baseline (?:spo2|saturation)", "oximetry", ("spo2_baseline",)),
    (r"(?:mean|average) (?:spo2|saturation|oxygen)", "oximetry", ("spo2_mean",)),
    (r"sleep efficiency|\befficiency\b|\bse\b", "architecture", ("sleep_efficiency_pct",)),
    (r"total sleep time|\btst\b|how (?:long|much) did .* sleep|how much sleep|(?<!supine )"
     r"(?<!rem )(?<!n1 )(?<!n2 )(?<!n3 )(?<!deep )(?<!light )(?<!wave )\bsleep time\b",
     "architecture", ("tst_min",)),
    (r"\bwaso\b|wake after sleep onset", "architecture", ("waso_min",)),
    (r"sleep[- ]onset latency|sleep latency|how long .* fall asleep|to fall asleep",
     "architecture", ("sleep_onset_latency_min",)),
    (r"rem latency|first rem (?:start|begin|appear|occur|come)|(?:long|time) (?:after|from) "
     r"sleep onset .*\brem\b|\brem\b.* after sleep onset|(?:long|time) until (?:the )?first rem|"
     r"\b(?:get|got|go|went|gets|goes|reach|reached|enter|entered) (?:in)?to rem\b|"
     r"\breach(?:ed)? rem\b|\bfirst (?:hit|hits|reach\w*|got|get|gets|enter\w*|went)\b.*"
     r"\brem\b|\bhit rem\b",
     "architecture", ("rem_latency_min",)),
    (r"awakenings|how many times .* wake|woke up", "architecture", ("awakenings",)),
    (r"time in bed|\btib\b|recording (?:time|length)|\bin bed\b", "architecture",
     ("tib_min",)),
    (r"how much rem|rem (?:time|percentage|%|share)|percent(?:age)? (?:of )?rem|"
     r"(?:proportion|fraction|share|portion|percent(?:age)?) of [\w' ]{0,30}\brem\b|"
     r"\brem\b [\w' ]{0,20}(?:proportion|fraction|share)|" + _TIME_OF + r"rem\b|"
     r"\brem (?:min(?:ute)?s|duration)|total rem\b", "architecture",
     ("r_min", "r_pct_tst")),
    (r"how much (?:n3|deep|slow)|n3 (?:time|percentage|%)|deep sleep|slow[- ]wave sleep|"
     r"\bsws\b|" + _TIME_OF + r"(?:n3|stage 3)\b", "architecture",
     ("n3_min", "n3_pct_tst")),
    (r"how much n2|n2 (?:time|percentage|%)|" + _TIME_OF + r"(?:n2|stage 2)\b", "architecture",
     ("n2_min", "n2_pct_tst")),
    (r"how much n1|n1 (?:time|percentage|%)|light sleep|" + _TIME_OF + r"(?:n1|stage 1)\b",
     "architecture", ("n1_min", "n1_pct_tst")),
    (r"stage (?:distribution|percentages|breakdown)|sleep stages|architecture", "architecture",
     ("n1_pct_tst", "n2_pct_tst", "n3_pct_tst", "r_pct_tst")),
    (r"arousal ind(?:e?x|ices)|how many arousals|arousals", "arousals", ("arousal_count",
                                                                "arousal_index")),
    (r"(?:limb|leg|plm) arousals?|arousals? (?:\w+ ){0,3}(?:from|due to|caused by|with|after) "
     r"(?:the )?(?:leg|limb|plm)", "arousals", ("limb_arousal_index",)),
    (r"respiratory arousals?|arousals? (?:\w+ ){0,3}(?:from|due to|caused by|with|after) "
     r"(?:the )?(?:breathing|respirat\w*|apn\w*|hypopn\w*)", "arousals",
     ("respiratory_arousal_index",)),
    (r"spontaneous arousals?", "arousals", ("spontaneous_arousal_index",)),
    (r"\bplmi?\b|periodic limb|plms index|limb movement index|leg movement", "limb_movements",
     ("plm_count", "plmi", "lm_index")),
    (r"(?:heart|pulse)\b.*\b(?:apn|hypopn|respiratory events?|breathing events?)|"
     r"(?:apn|hypopn)\w*\b.*\b(?:heart|pulse)", "heart_rate",
     ("hr_resp_event_mean", "hr_resp_post_peak", "hr_resp_rise")),
    (r"heart rate|\bpulse\b|\bbpm\b|bradycardia|tachycardia", "heart_rate",
     ("hr_mean", "hr_min", "hr_max")),
)


def sections_for(text: str) -> tuple[list[str], list[str]]:
    """``(sections, measure names)`` of :func:`tools.report_facts` a question asks about."""
    low = text.lower()
    sections: list[str] = []
    names: list[str] = []
    for pattern, section, measures in MEASURE_WORDS:
        if re.search(pattern, low):
            if section not in sections:
                sections.append(section)
            names += [m for m in measures if m not in names]
    return sections, names


@dataclass
class Args:
    """Everything :func:`extract` found in a question."""

    time_range: tuple[str | None, str | None] | None
    clock: str | None
    epochs: tuple[int, int] | None
    event_types: list[str]
    stage: str | None
    ordinal: int | None
    superlative: str | None
    system: str | None
    quoted: list[str]
    patient: str | None
    sections: list[str]
    measures: list[str]
    part: str | None = None


def extract(text: str) -> Args:
    """Every argument the parsers above find in ``text``. A part of the night in words ("the
    second half of the night", "the last 2 hours": :func:`tools.common.find_night_part`) is
    taken when no clock time, range or epoch is given; its "first"/"second" is then not an
    ordinal."""
    secs, names = sections_for(text)
    rng, clk, eps = time_range(text), clock(text), epoch_range(text)
    part = find_night_part(text) if rng is None and clk is None and eps is None else None
    return Args(time_range=rng, clock=clk, epochs=eps,
                event_types=event_types(text), stage=stage(text),
                ordinal=None if part else ordinal(text),
                superlative=superlative(text), system=system(text), quoted=quoted(text),
                patient=patient_ref(text), sections=secs, measures=names, part=part)
