"""Deterministic explanations of a night's measures, written by code from measured values.

The offline planner answers "why" questions with them, and the chat grounding adds one under
an LLM's answer that gives no explanation (:class:`assistant.toolcalls.ChatGroundingMiddleware`):
asked "Why is her sleep efficiency so poor?", the 1.5 B model answered only "The sleep
efficiency of the patient is 68.4%.".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sleeplm.clinical.architecture import SLEEP_EFFICIENCY_REFERENCE_PCT
from sleeplm.clinical.respiratory import is_positional

__all__ = ["efficiency_explanation", "EFFICIENCY_NEEDS", "explains", "positional_verdict",
           "POSITIONAL_WORDS", "judges_position", "PREVIOUS_NIGHT", "UNLINKED_NIGHTS",
           "asks_previous_night", "unlinked_night_note"]

#: The measures :func:`efficiency_explanation` reads (all from ``report_facts``'s architecture).
EFFICIENCY_NEEDS = ("sleep_efficiency_pct", "tst_min", "tib_min", "sleep_onset_latency_min",
                    "waso_min")

#: Words of an answer that explains rather than only states ("low because ...", "mostly
#: due to ...").
_EXPLAINS = re.compile(r"\b(?:because|due to|caused|causes|cause|mostly|mainly|largely|"
                       r"driven by|result(?:s|ed)? (?:of|from)|as a result|owing to|explain\w*|"
                       r"since|reason|accounts? for|comes? from|lost to|spent awake)\b",
                       re.IGNORECASE)


def _valued(ms: Mapping[str, Any], name: str) -> Any:
    m = ms.get(name)
    return m if m is not None and getattr(m, "value", None) is not None else None


def efficiency_explanation(ms: Mapping[str, Any]) -> str | None:
    """Where the time in bed went, against the commonly used sleep-efficiency reference.

    Parameters
    ----------
    ms : mapping of str to Measure
        Measures by name (``report_facts``'s architecture section).

    Returns
    -------
    str or None
        E.g. "Sleep efficiency is 68.4 %, below the commonly used reference of 85 %: 392.0
        min of sleep in 573.5 min in bed. Most of the time lost is wake after sleep onset
        (Wake after sleep onset: 100.0 min; Sleep-onset latency: 69.0 min)."; None when a
        measure of :data:`EFFICIENCY_NEEDS` has no value.
    """
    if any(_valued(ms, k) is None for k in EFFICIENCY_NEEDS):
        return None
    se, sol, waso = ms["sleep_efficiency_pct"], ms["sleep_onset_latency_min"], ms["waso_min"]
    main = ("wake after sleep onset" if waso.value >= sol.value else
            "a long time to fall asleep")
    verdict = "below" if se.value < SLEEP_EFFICIENCY_REFERENCE_PCT else "not below"
    return (f"Sleep efficiency is {se.format()}, {verdict} the commonly used reference of "
            f"{SLEEP_EFFICIENCY_REFERENCE_PCT:g} %: {ms['tst_min'].format()} of sleep in "
            f"{ms['tib_min'].format()} in bed. Most of the time lost is {main} "
            f"({waso.label}: {waso.format()}; {sol.label}: {sol.format()}).")


def explains(text: str) -> bool:
    """Whether ``text`` gives a reason (a causal word), not only values."""
    return _EXPLAINS.search(text or "") is not None


#: A question about the body position's effect ("is it worse on their back?").
POSITIONAL_WORDS = re.compile(r"\bpositional\b|\bsupine\b|\bon (?:his|her|their|the) back\b|"
                              r"\bposition", re.IGNORECASE)


def positional_verdict(ms: Mapping[str, Any]) -> str | None:
    """Whether the events are positional by the usual criterion (supine AHI at least twice
    the non-supine AHI, :func:`sleeplm.clinical.respiratory.is_positional`).

    Returns
    -------
    str or None
        The verdict as a sentence; None without both AHIs.
    """
    sup, non = _valued(ms, "ahi_supine"), _valued(ms, "ahi_nonsupine")
    if sup is None or non is None:
        return None
    return (("The events are positional" if is_positional(sup.value, non.value) else
             "The events are not positional")
            + " by the usual criterion (supine AHI at least twice the non-supine AHI).")


def judges_position(text: str) -> bool:
    """Whether ``text`` says whether the events are positional or worse on the back."""
    return re.search(r"\bpositional\b|\b(?:worse|better|more|higher|lower|less|fewer|"
                     r"similar|same|twice|double)\b[^.\n]{0,60}\b(?:supine|back|position)|"
                     r"\b(?:supine|back|position)\w*\b[^.\n]{0,60}\b(?:worse|better|more|"
                     r"higher|lower|less|fewer|similar|same|twice|double)\b",
                     text or "", re.IGNORECASE) is not None


#: A question about another night of the same person ("compare this with his study from
#: last night", "has it changed since the baseline study?"): the library does not link a
#: person's nights. "Last night" alone is this recording ("did he snore last night?"): it
#: counts only beside a comparison.
PREVIOUS_NIGHT = re.compile(r"\b(?:previous|earlier|prior|baseline|older|last)\s+(?:night'?s?\s+)?"
                            r"(?:study|studies|recording|psg|sleep study|night)\b|\b(?:study|"
                            r"recording|psg) from last night\b", re.IGNORECASE)
_COMPARES = re.compile(r"\b(?:compar\w*|versus|vs\.?|than|chang\w*|differ\w*|since|"
                       r"improv\w*|progress\w*)\b", re.IGNORECASE)

#: What the assistant says of such a question (the planner's answer begins with it).
UNLINKED_NIGHTS = ("This library does not link nights of the same person, so I cannot find "
                   "an earlier night of this patient.")

_SAYS_UNLINKED = re.compile(r"\bnot link|\bcannot (?:find|compare|access)|\bcan't (?:find|"
                            r"compare|access)|\bno (?:earlier|previous|prior|other) "
                            r"(?:night|study|recording)s?\b|\bnot (?:available|linked|"
                            r"the same (?:person|patient))\b|\bother (?:patients?|people)\b",
                            re.IGNORECASE)


def unlinked_night_note(question: str, text: str) -> str | None:
    """The note an answer needs when the question asks about another night of this patient.

    Asked "Compare this with his study from last night", the 1.5 B model answered "The
    closest night to the current one is sim-01002-osa_mild ... with a cosine similarity of
    0.652": the library's most similar night, another person's, as if it were his. Such an
    answer that does not say the nights are not linked gets :data:`UNLINKED_NIGHTS` and what
    the nights named are.

    Returns
    -------
    str or None
    """
    if not asks_previous_night(question) or _SAYS_UNLINKED.search(text or ""):
        return None
    return (UNLINKED_NIGHTS + " Nights named here are other people's, the most similar in the "
            "library by SleepLM's night embedding.")


def asks_previous_night(question: str) -> bool:
    """Whether ``question`` asks about another night of this patient (a previous study, or
    last night's beside a comparison: "last night" alone is this recording)."""
    q = question or ""
    found = [m.group(0).lower().split() for m in PREVIOUS_NIGHT.finditer(q)]
    if not found:
        return False
    if all(f[0] == "last" and f[1].startswith("night") for f in found):
        return _COMPARES.search(q) is not None
    return True
