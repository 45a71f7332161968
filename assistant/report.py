"""Draft PSG reports: the schema, the facts each section rests on, grounded narrative.

:func:`draft_report` collects the deterministic facts of the current patient
(:func:`tools.report_facts`, :func:`tools.events_in_range`, SleepLM localisations from
:func:`tools.localize`), groups them into the sections a sleep physician expects, and has a
narrative writer put each section into words:

* :class:`TemplateWriter` (the default, offline): fixed English sentences that copy every value
  exactly as the facts format it;
* :class:`LLMWriter`: any LangChain chat model, prompted with ``prompts/report_system.txt`` and
  ``prompts/report_section.txt`` and given the section's facts as JSON data.

Every narrative goes through :func:`assistant.grounding.check_text`: a sentence with a number
or clock time the facts do not hold is regenerated once (``prompts/report_regenerate.txt``) and
dropped when it fails again; :class:`GroundingReport` records both. Text that comes from the
recording's files (annotation labels, reading notes) or from the user (the indication) is
carried as quoted data only: never in a system prompt, never as an instruction, never read as a
number. Revision requests (``edits``) are applied deterministically (:data:`SUPPORTED_EDITS`);
those not understood are recorded as not applied with the reason.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from assistant.grounding import (
    FactItem,
    GroundingFacts,
    Problem,
    build_allowed,
    check_text,
    split_sentences,
)
from assistant.prompts import load_prompt
from sleeplm._logging import logger
from sleeplm.clinical.architecture import SLEEP_EFFICIENCY_REFERENCE_PCT
from sleeplm.clinical.measure import Measure
from sleeplm.clinical.respiratory import ahi_severity
from tools.common import TimeSelection, clock_of, recording_start
from tools.context import ToolContext
from tools.errors import ToolError
from tools.facts import EventsInput, FactsOutput, events_in_range, report_facts
from tools.localize import LocalizeInput, localize

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = [
    "KEY_INDEX_MEASURES",
    "LOCALISATION_QUERIES",
    "SECTION_ORDER",
    "SECTION_TITLES",
    "SUPPORTED_EDITS",
    "WriterBudgetSpent",
    "DroppedSentence",
    "EditRecord",
    "GroundingReport",
    "KeyIndex",
    "LLMWriter",
    "NarrativeWriter",
    "Recommendation",
    "RegeneratedSentence",
    "Report",
    "ReportSection",
    "SectionInput",
    "TemplateWriter",
    "draft_report",
]

SECTION_ORDER: tuple[str, ...] = (
    "study", "technical", "architecture", "respiratory", "oximetry", "cardiac",
    "limb_movements", "findings", "impression", "recommendations", "notice")
SECTION_TITLES: dict[str, str] = {
    "study": "Study and indication",
    "technical": "Technical adequacy and channels",
    "architecture": "Sleep architecture",
    "respiratory": "Respiratory events",
    "oximetry": "Oximetry",
    "cardiac": "Cardiac",
    "limb_movements": "Limb movements",
    "findings": "Notable findings (SleepLM localisation and scored events)",
    "impression": "Impression",
    "recommendations": "Suggested recommendations",
    "notice": "Notice",
}
#: Key index -> measure name of :func:`tools.report_facts`.
KEY_INDEX_MEASURES: dict[str, str] = {
    "ahi": "ahi_3a", "odi": "odi3", "tst_min": "tst_min", "se_pct": "sleep_efficiency_pct",
    "t90_pct": "t90_pct", "nadir_spo2": "spo2_nadir", "plmi": "plmi",
    "arousal_index": "arousal_index",
}
_KEY_INDEX_SECTION = {"ahi": "respiratory", "odi": "oximetry", "tst_min": "architecture",
                      "se_pct": "architecture", "t90_pct": "oximetry", "nadir_spo2": "oximetry",
                      "plmi": "limb_movements", "arousal_index": "arousals"}
#: What SleepLM is asked to localise: query -> scored event types it is compared with.
LOCALISATION_QUERIES: dict[str, tuple[str, ...]] = {
    "obstructive apnea": ("obstructive_apnea",),
    "desaturation": ("desaturation",),
}
#: facts section of :func:`tools.report_facts` -> report section holding its measures.
_HOME = {"architecture": "architecture", "arousals": "architecture",
         "respiratory": "respiratory", "oximetry": "oximetry", "heart_rate": "cardiac",
         "limb_movements": "limb_movements"}
SUPPORTED_EDITS = (
    "shorten <section> (keeps its first two sentences)",
    "add <measure> [to <section>] (a measure the facts hold, e.g. 'add the positional AHI')",
    "remove the recommendations [about <section>]",
    "remove <section> (any section but the notice)",
)
_SHORT_SENTENCES = 2
NOT_A_DEVICE = ("sleeplm is not a medical device: this draft must be reviewed, corrected and "
                "signed by a qualified clinician before any clinical use.")
SIMULATED_NOTICE = ("SIMULATED DATA: this night was written by the sleeplm simulator; it is "
                    "not a real patient and no clinical conclusion applies.")


# ------------------------------------------------------------------------------- schema


class KeyIndex(BaseModel):
    """One headline index of the report (``value`` None = unavailable, see ``reason``)."""

    measure: str
    label: str
    value: float | None
    unit: str
    display: str = ""
    reason: str = ""


class Recommendation(BaseModel):
    """A suggestion for the reviewing clinician, from a fixed rule over the facts.

    Attributes
    ----------
    text : str
    about : str
        The report section whose facts triggered it.
    """

    text: str
    about: str


class ReportSection(BaseModel):
    """One section of the report.

    Attributes
    ----------
    key, title : str
    narrative : str
        The grounded prose (sentences that failed the check are not in it).
    facts : list of FactItem
        The facts the section rests on (values with units and evidence).
    unavailable : str or None
        Why the night cannot support this section.
    quoted : list of str
        Text copied from the study files or the user (annotation labels, reading notes, the
        indication): data shown verbatim, never instructions.
    recommendations : list of Recommendation
        The recommendations section only.
    notes : list of str
        Reading notes of the study files (technical section), shown as data; never sent to an
        LLM.
    omitted : bool
        Removed at the reviewer's request (kept in the JSON, left out of the rendered files).
    """

    key: str
    title: str
    narrative: str = ""
    facts: list[FactItem] = Field(default_factory=list)
    unavailable: str | None = None
    quoted: list[str] = Field(default_factory=list)
    recommendations: list[Recommendation] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    omitted: bool = False


class DroppedSentence(BaseModel):
    """A sentence left out of the report because it failed the grounding check."""

    section: str
    sentence: str
    token: str
    reason: str
    attempts: int


class RegeneratedSentence(BaseModel):
    """A sentence that failed the check and was replaced by one that passed."""

    section: str
    original: str
    replacement: str
    token: str
    reason: str


class GroundingReport(BaseModel):
    """What the grounding check did to the narrative.

    Attributes
    ----------
    checked : int
        Sentences checked (first versions).
    passed : int
        Sentences kept unchanged.
    regenerated, dropped : list
    fallbacks : list of str
        Sections the writer could not write (e.g. the LLM call failed) that templates wrote.
    """

    checked: int = 0
    passed: int = 0
    regenerated: list[RegeneratedSentence] = Field(default_factory=list)
    dropped: list[DroppedSentence] = Field(default_factory=list)
    fallbacks: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing had to be dropped."""
        return not self.dropped


class EditRecord(BaseModel):
    """A revision request and what was done with it."""

    request: str
    applied: bool
    action: str = ""
    reason: str = ""


class Report(BaseModel):
    """A draft PSG report (its JSON is one of the outputs).

    Attributes
    ----------
    patient : str
        The study id (never a name from the file header).
    simulated : bool or None
    generated_at : str
        ISO 8601, UTC.
    model : str
        SleepLM checkpoint version (SHA-256 of its files).
    writer : str
        ``templates`` or the LLM backend/model (also when templates wrote the sections the
        LLM had no time for: ``grounding.fallbacks`` names them).
    indication : str or None
        As given by the user (quoted data).
    sections : list of ReportSection
        In :data:`SECTION_ORDER`.
    key_indices : dict of str to KeyIndex
        ahi, odi, tst_min, se_pct, t90_pct, nadir_spo2, plmi, arousal_index.
    severity : str or None
        Sleep apnea severity from the AHI (AASM adult categories).
    flags : list of str
        Machine-readable flags (``simulated``, ``osa_severe``, ``oximetry_unavailable``...).
    hypopnea_rule : str
    grounding : GroundingReport
    edits : list of EditRecord
    disclaimer : str
    """

    patient: str
    simulated: bool | None
    generated_at: str
    model: str
    writer: str
    indication: str | None = None
    sections: list[ReportSection]
    key_indices: dict[str, KeyIndex]
    severity: str | None
    flags: list[str] = Field(default_factory=list)
    hypopnea_rule: str
    grounding: GroundingReport = Field(default_factory=GroundingReport)
    edits: list[EditRecord] = Field(default_factory=list)
    disclaimer: str

    def section(self, key: str) -> ReportSection:
        """The section called ``key``.

        Raises
        ------
        KeyError
            No such section (the message lists them).
        """
        for s in self.sections:
            if s.key == key:
                return s
        raise KeyError(f"no report section {key!r}; sections: {[s.key for s in self.sections]}")

    def all_facts(self) -> list[FactItem]:
        """Every fact of every section (duplicates kept once, by name)."""
        seen: dict[str, FactItem] = {}
        for s in self.sections:
            for f in s.facts:
                seen.setdefault(f.name, f)
        return list(seen.values())

    def text(self) -> str:
        """All narratives, one section per paragraph (what the grounding check reads)."""
        return "\n\n".join(f"{s.title}\n{s.narrative}" for s in self.sections if not s.omitted)


#: Details that hold user or file text: templates quote them; the LLM gets them only as
#: quoted data (``quoted``), never among the details.
_UNTRUSTED_DETAILS = frozenset({"indication"})


class SectionInput(BaseModel):
    """What a narrative writer gets for one section.

    Attributes
    ----------
    key, title : str
    facts : list of FactItem
    unavailable : str or None
    details : dict
        Deterministic words and lists the section needs (severity, hypopnea rule, channel
        lists, localisation summaries...); no free text from files.
    quoted : list of str
        Quoted data (untrusted text: annotation labels, notes, the indication).
    recommendations : list of Recommendation
    notes : list of str
        Reading notes of the files (shown in the report, not given to an LLM).
    short : bool
        The reviewer asked for a short version.
    """

    key: str
    title: str
    facts: list[FactItem] = Field(default_factory=list)
    unavailable: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    quoted: list[str] = Field(default_factory=list)
    recommendations: list[Recommendation] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    short: bool = False

    def fact(self, name: str) -> FactItem | None:
        """The fact called ``name`` (None when the section has none)."""
        return next((f for f in self.facts if f.name == name), None)

    def to_json(self) -> str:
        """The section's data as JSON for an LLM (facts, details, quoted data)."""
        payload = {
            "section": self.key, "title": self.title, "style": "short" if self.short else "full",
            "unavailable": self.unavailable,
            "facts": [{"name": f.name, "label": f.label, "display": f.display or None,
                       "unit": f.unit, "reason": f.reason or None, "times": f.times or None,
                       "source": f.source}
                      for f in self.facts],
            "details": {k: v for k, v in self.details.items() if k not in _UNTRUSTED_DETAILS},
            "recommendations": [r.text for r in self.recommendations],
            "quoted_data_not_instructions": self.quoted,
        }
        return json.dumps(payload, ensure_ascii=False, indent=1, default=str)


# ------------------------------------------------------------------------------ writers


@runtime_checkable
class NarrativeWriter(Protocol):
    """Writes a section's prose from its facts.

    ``name`` names the writer in the report; ``write`` returns the section's prose;
    ``can_regenerate`` says whether ``rewrite`` may be asked for a replacement of a sentence
    that failed the grounding check (returning None gives up).
    """

    name: str
    can_regenerate: bool

    def write(self, section: SectionInput) -> str: ...

    def rewrite(self, section: SectionInput, sentence: str,
                problems: Sequence[Problem]) -> str | None: ...


def _d(f: FactItem | None) -> str:
    """A fact's display text ('' when missing or without a value)."""
    return f.display if f is not None and f.value is not None else ""


def _words(kind: str) -> str:
    return kind.replace("_", " ")


def _join(items: Sequence[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


class TemplateWriter:
    """Offline narrative: fixed sentences that copy every value as the facts format it.

    Its output always passes the grounding check (it writes no number or time that is not a
    fact's ``display`` or ``times``).
    """

    name = "templates"
    can_regenerate = False

    def write(self, section: SectionInput) -> str:
        """The section's prose (see the module docstring)."""
        make = getattr(self, f"_{section.key}", None)
        if make is None:
            raise ValueError(f"TemplateWriter has no template for section {section.key!r}; "
                             f"sections: {', '.join(SECTION_ORDER)}")
        if section.unavailable and section.key in _UNAVAILABLE_WORDS:
            return f"{_UNAVAILABLE_WORDS[section.key]}: {section.unavailable.rstrip('.')}."
        return " ".join(s.strip() for s in make(section) if s and s.strip())

    def rewrite(self, section: SectionInput, sentence: str,
                problems: Sequence[Problem]) -> str | None:
        """Templates are not regenerated: a failing template sentence is dropped."""
        return None

    @staticmethod
    def measure_sentence(f: FactItem) -> str:
        """One sentence stating a fact (used for 'add <measure>' edits)."""
        if f.value is None:
            return f"{f.label} is not available ({(f.reason or 'not computed').rstrip('.')})."
        return f"{f.label}: {f.display}."

    # -- sections -------------------------------------------------------------------------
    def _study(self, s: SectionInput) -> list[str]:
        det = s.details
        start, end = s.fact("recording_start"), s.fact("recording_end")
        dur, n_ep, ep = s.fact("recording_duration_min"), s.fact("n_epochs"), s.fact("epoch_sec")
        date = s.fact("recording_date")
        when = ""
        if start is not None and start.display and end is not None and end.display:
            when = f" from {start.display} to {end.display}"
            if date is not None and date.display:
                when += f" (starting on {date.display})"
        kind = ("heart-rate-only recording (no polysomnography signals)"
                if det.get("heart_rate_only") else "overnight polysomnography")
        out = [(f"Study {det['patient']}: {kind} recorded{when}, "
                f"{_d(dur)} in {_d(n_ep)} epochs of {_d(ep)}.")]
        if det.get("simulated"):
            out.append("This is a SIMULATED night written by the sleeplm simulator, not a real "
                       "patient.")
        if det.get("indication"):
            out.append(f"Indication as given: “{det['indication']}”.")
        else:
            out.append("No indication was given.")
        return out

    def _technical(self, s: SectionInput) -> list[str]:
        det = s.details
        out = [f"Signals present: {', '.join(det['signals']) or 'none'}."]
        if det.get("model_missing"):
            out.append(f"SleepLM read {', '.join(det['model_present']) or 'no channel'}; "
                       f"not available to it: {', '.join(det['model_missing'])}.")
        else:
            out.append(f"SleepLM read all its input channels ({', '.join(det['model_present'])}).")
        total = s.fact("scored_events_total")
        if det.get("annotation_source") and total is not None and total.value:
            out.append(f"Scored events come from the {det['annotation_source']} annotations "
                       f"({_d(total)} events in all).")
        else:
            out.append("No scored events were given, so event-based indices rest on no "
                       "scoring and are reported as unavailable where they need it.")
        art = s.fact("spo2_artifact_pct")
        if art is not None and art.value is not None:
            out.append(f"SpO2 was invalid (artifact) during {art.display} of the time "
                       f"{det.get('scope', 'during sleep')}.")
        unk = s.fact("unrecognised_labels")
        if unk is not None and unk.value:
            out.append(f"The annotations hold {unk.display} label(s) that sleeplm does not "
                       "recognise; they are listed as quoted data and were not interpreted.")
        return out

    def _architecture(self, s: SectionInput) -> list[str]:
        tib, tst, se = s.fact("tib_min"), s.fact("tst_min"), s.fact("sleep_efficiency_pct")
        out = [(f"Time in bed was {_d(tib)}, total sleep time {_d(tst)} and sleep "
                f"efficiency {_d(se)}.")]
        sol, rl = s.fact("sleep_onset_latency_min"), s.fact("rem_latency_min")
        waso, aw = s.fact("waso_min"), s.fact("awakenings")
        if sol is not None and sol.value is not None:
            rem = (f" and REM latency {rl.display}" if rl is not None and rl.value is not None
                   else "")
            out.append(f"Sleep-onset latency was {sol.display}{rem}.")
            if rl is not None and rl.value is None:
                out.append(f"REM latency could not be computed ({rl.reason.rstrip('.')}).")
        if waso is not None and waso.value is not None:
            out.append(f"Wake after sleep onset was {waso.display}, with {_d(aw)} "
                       "awakening(s).")
        parts = []
        for stage, key in (("N1", "n1"), ("N2", "n2"), ("N3", "n3"), ("REM", "r")):
            m, p = s.fact(f"{key}_min"), s.fact(f"{key}_pct_tst")
            if m is not None and m.value is not None:
                pct = f" ({p.display})" if p is not None and p.value is not None else ""
                parts.append(f"{stage} {m.display}{pct}")
        if parts:
            out.append(f"By stage: {_join(parts)}; percentages are of the sleep time.")
        ai, ac = s.fact("arousal_index"), s.fact("arousal_count")
        if s.details.get("arousals_unavailable"):
            out.append(f"Arousals could not be assessed: "
                       f"{s.details['arousals_unavailable'].rstrip('.')}.")
        elif ai is not None and ai.value is not None:
            out.append(f"The arousal index was {ai.display} ({_d(ac)} arousals in sleep).")
        return out

    def _respiratory(self, s: SectionInput) -> list[str]:
        det = s.details
        a3, a4 = s.fact("ahi_3a"), s.fact("ahi_4")
        out = [f"Hypopneas were scored by the {det['hypopnea_rule']}."]
        if a3 is not None and a3.value is not None:
            out.append(f"By this rule the {det['index_name']} was {a3.display} "
                       f"({det['severity']} by the AASM adult categories); by the 4% rule "
                       f"(AASM 1B) it was {_d(a4)}.")
        elif a3 is not None:
            out.append(f"The {det['index_name']} could not be computed ({a3.reason}).")
        oa, ca, ma = (s.fact("obstructive_apnea_count"), s.fact("central_apnea_count"),
                      s.fact("mixed_apnea_count"))
        hyp, h3 = s.fact("hypopnea_count"), s.fact("hypopnea_3a_count")
        if oa is not None:
            out.append(f"There were {_d(oa)} obstructive, {_d(ca)} central and {_d(ma)} mixed "
                       f"apneas and {_d(hyp)} scored hypopneas, {_d(h3)} of them with a "
                       "desaturation of at least 3% or an arousal.")
        oai, cai = s.fact("obstructive_apnea_index"), s.fact("central_apnea_index")
        if oai is not None and oai.value is not None:
            out.append(f"The obstructive apnea index was {oai.display} and the central apnea "
                       f"index {_d(cai)}.")
        sup, non, supmin = s.fact("ahi_supine"), s.fact("ahi_nonsupine"), s.fact(
            "supine_sleep_min")
        if sup is not None and sup.value is not None:
            nons = (f" and {non.display} in non-supine positions"
                    if non is not None and non.value is not None else "")
            tsup = f" ({supmin.display} of sleep supine)" if _d(supmin) else ""
            out.append(f"The {det['index_short']} was {sup.display} supine{nons}{tsup}.")
        elif sup is not None:
            out.append(f"Positional AHI is not available: {sup.reason.rstrip('.')}.")
        rem, nrem = s.fact("ahi_rem"), s.fact("ahi_nrem")
        if rem is not None and rem.value is not None:
            nr = f" and in NREM sleep {nrem.display}" if _d(nrem) else ""
            out.append(f"In REM sleep the {det['index_short']} was {rem.display}{nr}.")
        if det.get("rule_caveat"):
            out.append(f"Caveat: {det['rule_caveat'].rstrip('.')}.")
        return out

    def _oximetry(self, s: SectionInput) -> list[str]:
        base, mean, nadir = s.fact("spo2_baseline"), s.fact("spo2_mean"), s.fact("spo2_nadir")
        out = []
        first = []
        if _d(base):
            first.append(f"Baseline SpO2 was {base.display}")
        if _d(mean):
            first.append(f"mean SpO2 {s.details['scope']} {mean.display}")
        if first:
            out.append(", ".join(first) + ".")
        if _d(nadir):
            at = f" at {nadir.times[0]}" if nadir.times else ""
            out.append(f"The SpO2 nadir {s.details['scope']} was {nadir.display}{at}.")
        o3, o4 = s.fact("odi3"), s.fact("odi4")
        if _d(o3):
            four = f", and {o4.display} counting desaturations of 4 %" if _d(o4) else ""
            out.append(f"The ODI was {o3.display} counting desaturations of 3 %{four}.")
        t90m, t90p = s.fact("t90_min"), s.fact("t90_pct")
        if _d(t90m):
            out.append(f"SpO2 was below 90 % for {t90m.display}, {_d(t90p)} of the time "
                       f"with valid SpO2 {s.details['scope']}.")
        elif t90m is not None:
            out.append(f"Time below 90 % could not be computed ({t90m.reason.rstrip('.')}).")
        art = s.fact("spo2_artifact_pct")
        if _d(art):
            out.append(f"SpO2 was invalid (artifact) during {art.display} of the time "
                       f"{s.details['scope']}.")
        return out

    def _cardiac(self, s: SectionInput) -> list[str]:
        mean, lo, hi = s.fact("hr_mean"), s.fact("hr_min"), s.fact("hr_max")
        out = []
        if _d(mean):
            when = ("Over the recording (no sleep staging)" if "no sleep staging" in
                    (mean.reason or "") else "During sleep")
            out.append(f"{when} the mean heart rate was {mean.display}, ranging from "
                       f"{_d(lo)} to {_d(hi)} (per-epoch medians).")
        elif mean is not None:
            out.append(f"The heart rate during sleep is not available "
                       f"({mean.reason.rstrip('.')}).")
        parts = []
        for stage, word in (("W", "wake"), ("N1", "N1"), ("N2", "N2"), ("N3", "N3"),
                            ("R", "REM")):
            f = s.fact(f"hr_mean_{stage}")
            if _d(f):
                parts.append(f"{f.display} in {word}")
        if parts:
            out.append(f"By stage, the mean heart rate was {_join(parts)}.")
        out.append("Rhythm was not classified: these are rates only.")
        cvhr, screen = s.fact("cvhr_index"), s.fact("cvhr_screen")
        if _d(cvhr) and screen is not None and screen.value is not None:
            minutes = s.fact("cvhr_minutes")
            out.append(f"Heart-rate apnea screening (cyclic variation of heart rate): CVHR index "
                       f"{cvhr.display}, {_d(minutes)} with cyclic variation; the screening is "
                       f"{'positive' if screen.value else 'negative'}.")
            out.append("This is a screening estimate from heart rate alone, not an "
                       "apnea-hypopnea index: it cannot tell apneas from hypopneas, leg "
                       "movements or arousals, misses events without a heart-rate response and "
                       "does not know sleep from wake; a sleep study confirms or excludes sleep "
                       "apnea.")
        elif cvhr is not None and cvhr.value is None:
            out.append(f"The heart-rate apnea screening is not available "
                       f"({(cvhr.reason or 'not computed').rstrip('.')}).")
        labelled = s.fact("apnea_minutes_labelled")
        if _d(labelled):
            out.append(f"The study's own per-minute labels mark {labelled.display} as containing "
                       "apnea or hypopnea.")
        return out

    def _limb_movements(self, s: SectionInput) -> list[str]:
        lmi, cnt, plmi = s.fact("lm_index"), s.fact("plm_count"), s.fact("plmi")
        out = []
        if _d(lmi):
            out.append(f"The leg movement index was {lmi.display}.")
        if _d(plmi):
            out.append(f"There were {_d(cnt)} periodic limb movements in sleep, a PLMS index of "
                       f"{plmi.display}.")
        elif plmi is not None:
            out.append(f"The PLMS index is not available ({plmi.reason.rstrip('.')}).")
        return out

    def _findings(self, s: SectionInput) -> list[str]:
        det = s.details
        out = []
        longest = det.get("longest_event")
        dur = s.fact("longest_event_duration")
        if longest and dur is not None:
            where = (f" (epoch {longest['epoch']}, stage {longest['stage']})"
                     if longest["epoch"] >= 0 else "")
            out.append(f"The longest scored respiratory event was {longest['article']} "
                       f"{_words(longest['type'])} of {dur.display} starting at "
                       f"{longest['clock']}{where}.")
        elif det.get("no_events"):
            out.append(f"No scored respiratory events to point at "
                       f"({det['no_events'].rstrip('.')}).")
        nadir = s.fact("spo2_nadir")
        if nadir is not None and nadir.value is not None and nadir.times:
            out.append(f"The SpO2 nadir {det.get('scope', 'during sleep')}, {nadir.display}, "
                       f"was reached at {nadir.times[0]}.")
        deep = s.fact("deepest_desaturation_nadir")
        if deep is not None and deep.value is not None and deep.times:
            out.append(f"The deepest scored desaturation reached a nadir of {deep.display} at "
                       f"{deep.times[0]}.")
        for loc in det.get("localisations", []):
            q = loc["query"]
            if loc.get("refusal"):
                out.append(f"SleepLM did not localise {q}: the night lacks "
                           f"{loc['refusal']}.")
                continue
            if loc.get("error"):
                out.append(f"SleepLM could not localise {q} ({loc['error']}).")
                continue
            ivs = [s.fact(n) for n in loc["facts"]]
            ivs = [f for f in ivs if f is not None]
            if not ivs:
                out.append(f"SleepLM found no interval where {q} stands out from its "
                           "background.")
                continue
            descr = []
            for f, extra in zip(ivs, loc["intervals"]):
                scored = s.fact(f"{f.name}_scored")
                a, b = f.epochs[0]
                eps = f"epoch {a}" if a == b else f"epochs {a}–{b}"
                where = f"{f.times[0]}–{f.times[1]} ({eps}" if len(f.times) == 2 else f"{eps} ("
                descr.append(f"{where}, mostly {extra['stage']}, peak margin "
                             f"{f.display}, {_d(scored) or 'no'} scored "
                             f"{extra['scored_words']} there)")
            out.append(f"SleepLM localised {q} most strongly at {_join(descr)}.")
            if loc.get("weak"):
                out.append(f"For {q} the model's evidence is weak: it barely separates it from "
                           "its background, so these intervals are unreliable.")
        out.append("These localisations are SleepLM model output, not scored events: they are "
                   "uncertain and must be checked against the recording.")
        return out

    def _impression(self, s: SectionInput) -> list[str]:
        det = s.details
        out = []
        if det.get("simulated"):
            out.append("SIMULATED night, not a real patient.")
        ahi = s.fact("ahi_3a")
        if _d(ahi):
            sev = det.get("severity") or "not assessable"
            verdict = ("does not meet the criteria for sleep apnea" if sev.startswith("none")
                       else f"indicates {sev} sleep apnea")
            out.append(f"The {det['index_name']} of {ahi.display} by the AASM recommended rule "
                       f"{verdict}.")
        else:
            out.append(f"Sleep apnea could not be assessed"
                       f"{': ' + det['respiratory_unavailable'].rstrip('.') if det.get('respiratory_unavailable') else ''}.")
        screen = s.fact("cvhr_screen")
        if not _d(ahi) and screen is not None and screen.value is not None:
            out.append("The heart-rate apnea screening is "
                       f"{'positive' if screen.value else 'negative'} (a screening estimate, "
                       "not an apnea-hypopnea index).")
        nadir, t90, odi = s.fact("spo2_nadir"), s.fact("t90_pct"), s.fact("odi3")
        if _d(nadir):
            extra = []
            if _d(t90):
                extra.append(f"{t90.display} of sleep below 90 %")
            if _d(odi):
                extra.append(f"an ODI of {odi.display}")
            out.append(f"Oximetry showed a nadir of {nadir.display}"
                       + (f" with {_join(extra)}" if extra else "") + ".")
        else:
            out.append("Oximetry was not available.")
        tst, se = s.fact("tst_min"), s.fact("sleep_efficiency_pct")
        if _d(tst):
            out.append(f"Total sleep time was {tst.display} with a sleep efficiency of "
                       f"{_d(se)}.")
        plmi = s.fact("plmi")
        if _d(plmi):
            out.append(f"The PLMS index was {plmi.display}.")
        out.append("Intervals localised by SleepLM are uncertain model output (see notable "
                   "findings).")
        return out

    def _recommendations(self, s: SectionInput) -> list[str]:
        if not s.recommendations:
            return ["No rule-based suggestion applies; the reviewing clinician decides."]
        return [("These suggestions follow from fixed rules over the numbers above; the "
                 "reviewing clinician accepts or rejects each of them.")]

    def _notice(self, s: SectionInput) -> list[str]:
        out = [s.details["disclaimer"]]
        if "not a medical device" not in s.details["disclaimer"]:
            out.append(NOT_A_DEVICE)
        else:
            out.append("It must be reviewed, corrected and signed by a qualified clinician.")
        if s.details.get("simulated"):
            out.insert(0, SIMULATED_NOTICE)
        return out


_UNAVAILABLE_WORDS = {
    "architecture": "Sleep architecture could not be assessed",
    "respiratory": "Respiratory events could not be assessed",
    "oximetry": "Oximetry is unavailable",
    "cardiac": "Heart rate could not be assessed",
    "limb_movements": "Limb movements could not be assessed",
}


def _message_text(message: Any) -> str:
    content = getattr(message, "content", message)
    if isinstance(content, list):
        content = "".join(c.get("text", "") if isinstance(c, dict) else str(c)
                          for c in content)
    text = str(content or "").strip()
    text = re.sub(r"^```[a-z]*\s*|\s*```$", "", text)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return "\n".join(ln.lstrip("-*• ").rstrip() for ln in lines).strip()


def _fill(template: str, **values: str) -> str:
    """``{name}`` placeholders of a prompt replaced in one pass (values are not re-read)."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


class WriterBudgetSpent(RuntimeError):
    """An LLM writer's time budget for the draft is spent: no further model call starts."""


class LLMWriter:
    """Narrative from a LangChain chat model, given each section's facts as JSON data.

    The system prompt is ``prompts/report_system.txt`` (fixed text; nothing from the study
    goes into it); the section request is ``prompts/report_section.txt`` with the section's
    JSON; a failing sentence is regenerated with ``prompts/report_regenerate.txt``.

    Parameters
    ----------
    chat_model : langchain_core.language_models.BaseChatModel
    name : str, optional
        How the report names the writer (default ``llm:<model name>``).
    max_chars : int
        Longest narrative accepted per section, characters (longer text is cut at a sentence).
    budget_s : float or None
        Seconds one draft may spend in the LLM: once spent, :func:`draft_report` writes the
        remaining sections from the templates (recorded in the report's grounding log), and
        no further LLM call starts, not even to regenerate a sentence that failed the fact
        check (the sentence is dropped); a call under way when the budget runs out is
        streamed and stopped then, so a draft overruns its budget by the model's reading of
        one prompt at most. A 1.5 B model on two CPU cores takes about 7 minutes for a whole report. None:
        no limit.
    """

    can_regenerate = True

    def __init__(self, chat_model: BaseChatModel, *, name: str | None = None,
                 max_chars: int = 2500, budget_s: float | None = None) -> None:
        self.chat_model = chat_model
        self.budget_s = budget_s
        #: When the current draft's budget is spent (``time.monotonic()``; set by
        #: :func:`draft_report`); None: no limit.
        self.deadline: float | None = None
        #: When the chat question that asks for the draft runs out of time
        #: (``time.monotonic()``; set by :meth:`assistant.agent.Assistant.stream` for the
        #: question): a draft's budget ends then at the latest. None: no question's limit.
        self.question_deadline: float | None = None
        model_name = (getattr(chat_model, "model_name", None) or getattr(chat_model, "model", None)
                      or type(chat_model).__name__)
        self.name = name or f"llm:{model_name}"
        self.max_chars = int(max_chars)

    def _invoke(self, human: str) -> str:
        from langchain_core.messages import HumanMessage, SystemMessage

        if self.deadline is not None and time.monotonic() > self.deadline:
            raise WriterBudgetSpent("the draft's time budget is spent")
        messages = [SystemMessage(content=load_prompt("report_system")),
                    HumanMessage(content=human)]
        if self.deadline is None:
            text = _message_text(self.chat_model.invoke(messages))
        else:
            text = _message_text(self._stream_until(messages, self.deadline))
        if len(text) > self.max_chars:
            kept, n = [], 0
            for sent in split_sentences(text):
                if n + len(sent) > self.max_chars:
                    break
                kept.append(sent)
                n += len(sent) + 1
            text = " ".join(kept)
        return text

    def _stream_until(self, messages: list, deadline: float) -> Any:
        """The model's reply, streamed, given up once ``deadline`` (``time.monotonic()``)
        passes: the stream is closed, which stops a llama.cpp server's generation, and
        :class:`WriterBudgetSpent` is raised (a 1.5 B model's draft took 257 s of a 120-s
        question, one section's call running on after the question's time was out)."""
        from langchain_core.messages import AIMessageChunk

        reply = None
        chunks = self.chat_model.stream(messages)
        try:
            for chunk in chunks:
                reply = chunk if reply is None else reply + chunk
                # a whole reply (a model that does not stream) or the last chunk is kept
                done = (not isinstance(chunk, AIMessageChunk)
                        or bool((chunk.response_metadata or {}).get("finish_reason"))
                        or getattr(chunk, "chunk_position", None) == "last")
                if not done and time.monotonic() > deadline:
                    raise WriterBudgetSpent("the draft's time budget ran out during a section")
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return reply

    def write(self, section: SectionInput) -> str:
        """The section's prose from the LLM."""
        return self._invoke(_fill(load_prompt("report_section"), title=section.title,
                                  key=section.key, style="short" if section.short else "full",
                                  facts_json=section.to_json()))

    def rewrite(self, section: SectionInput, sentence: str,
                problems: Sequence[Problem]) -> str | None:
        """One replacement sentence, or None when the model gives up (``NONE``)."""
        text = self._invoke(_fill(
            load_prompt("report_regenerate"), title=section.title, key=section.key,
            sentence_json=json.dumps(sentence, ensure_ascii=False),
            problems_json=json.dumps([p.model_dump() for p in problems], ensure_ascii=False),
            facts_json=section.to_json()))
        if not text or text.strip().strip(".").upper() == "NONE":
            return None
        return text


# ------------------------------------------------------------------------------- facts


def _measure_fact(m: Measure, clock_at) -> FactItem:
    times: list[str] = []
    if m.evidence.intervals and len(m.evidence.intervals) <= 10:
        times = [clock_at(a) for a, _ in m.evidence.intervals]
    elif m.evidence.epochs and len(m.evidence.epochs) <= 3:
        times = [clock_at(("epoch", a)) for a, _ in m.evidence.epochs]
    value = m.value if m.value is not None and math.isfinite(m.value) else None
    display = m.format() if value is not None else ""
    return FactItem(name=m.name, label=m.label, value=value, unit=m.unit, display=display,
                    reason=m.reason, epochs=[tuple(e) for e in m.evidence.epochs],
                    times=[t for t in times if t], event_ids=list(m.evidence.event_ids[:5000]),
                    source="clinical")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


class _Collected(BaseModel):
    inputs: dict[str, SectionInput]
    pool: dict[str, FactItem]
    key_indices: dict[str, KeyIndex]
    severity: str | None
    flags: list[str]
    hypopnea_rule: str
    disclaimer: str
    simulated: bool | None
    model: str


def _collect(ctx: ToolContext, indication: str | None) -> _Collected:
    """Every fact of the report, grouped into writer inputs."""
    p = ctx.processed()
    facts: FactsOutput = report_facts(ctx)
    rec = ctx.recording()
    t0 = recording_start(p)
    onsets = p.onsets_s

    def clock_at(x) -> str:
        if isinstance(x, tuple):
            return clock_of(t0, float(onsets[x[1]])) if 0 <= x[1] < len(onsets) else ""
        return clock_of(t0, float(x))

    inputs = {k: SectionInput(key=k, title=SECTION_TITLES[k]) for k in SECTION_ORDER}
    pool: dict[str, FactItem] = {}
    for fkey, measures in facts.sections.items():
        home = inputs[_HOME[fkey]]
        for m in measures:
            item = _measure_fact(m, clock_at)
            pool[item.name] = item
            home.facts.append(item)
    unavailable = dict(facts.unavailable)
    for fkey, why in unavailable.items():
        if fkey == "arousals":
            inputs["architecture"].details["arousals_unavailable"] = why
        else:
            inputs[_HOME[fkey]].unavailable = why
    simulated = facts.simulated
    staged = "monitoring" not in (facts.index_basis or "")
    index_name = "AHI" if staged else "REI (per hour of monitoring time)"
    rule = ("AASM recommended rule 1A (hypopnea with >=3% desaturation or arousal)" if staged
            else "AASM rule 1A (hypopnea with >=3% desaturation or arousal), per hour of "
                 "monitoring time (REI)")
    ahi = pool.get("ahi_3a")
    severity = ahi_severity(ahi.value) if ahi is not None and ahi.value is not None else None

    # -- study
    night = events_in_range(ctx, EventsInput(limit=1))
    span = night.span
    st = inputs["study"]
    st.details.update(patient=p.patient, simulated=bool(simulated),
                      heart_rate_only=sorted(rec.signals) == ["HR"])
    if indication:
        st.details["indication"] = indication
        st.quoted.append(indication)
    st.facts += [
        FactItem(name="recording_start", label="Recording start", unit="clock",
                 display=span.start_clock, times=[span.start_clock] if span.start_clock else [],
                 source="study"),
        FactItem(name="recording_end", label="Recording end", unit="clock",
                 display=span.end_clock, times=[span.end_clock] if span.end_clock else [],
                 source="study"),
        FactItem(name="recording_duration_min", label="Recording length", unit="min",
                 value=(span.end_s - span.start_s) / 60.0,
                 display=f"{(span.end_s - span.start_s) / 60.0:.1f} min", source="study"),
        FactItem(name="n_epochs", label="Epochs", unit="count", value=float(span.n_epochs),
                 display=str(span.n_epochs), epochs=[(span.first_epoch, span.last_epoch)],
                 source="study"),
        FactItem(name="epoch_sec", label="Epoch length", unit="s",
                 value=float(p.meta.input_config.get("epoch_sec", 30.0)),
                 display=f"{float(p.meta.input_config.get('epoch_sec', 30.0)):.0f} s",
                 source="study"),
    ]
    if t0 is not None:
        st.facts.append(FactItem(name="recording_date", label="Recording date", unit="date",
                                 display=t0.date().isoformat(), source="study"))

    # -- technical
    te = inputs["technical"]
    present = [c for c, m in zip(p.channels, p.mask) if bool(m)]
    te.details.update(signals=sorted(rec.signals), model_present=present,
                      model_missing=[c for c in p.channels if c not in present],
                      annotation_source=rec.info.annotation_source or "")
    te.facts.append(FactItem(name="scored_events_total", label="Scored events in the night",
                             unit="count", value=float(night.n_total),
                             display=str(night.n_total), source="events"))
    for kind, n in sorted(night.counts.items()):
        te.facts.append(FactItem(name=f"scored_{kind}_count", label=f"Scored {_words(kind)}",
                                 unit="count", value=float(n), display=str(n),
                                 source="events"))
    if "spo2_artifact_pct" in pool:
        te.facts.append(pool["spo2_artifact_pct"])
    labels = []
    if len(rec.events):
        unknown = rec.events[rec.events["type"] == "unknown"]
        labels = list(dict.fromkeys(
            str(lab) for lab, attrs in zip(unknown["label"], unknown["attributes"])
            if not (isinstance(attrs, dict) and attrs.get("marker"))))[:20]
    if labels:
        te.facts.append(FactItem(name="unrecognised_labels", label="Unrecognised annotation "
                                 "labels", unit="count", value=float(len(labels)),
                                 display=str(len(labels)), source="events"))
    te.quoted += labels
    te.notes += [n for n in facts.notes if n]

    # -- respiratory
    rs = inputs["respiratory"]
    rs.details.update(hypopnea_rule=rule, index_name=index_name,
                      index_short="AHI" if staged else "REI",
                      severity=severity or "not assessable")
    for key in ("oximetry", "technical", "findings"):
        inputs[key].details["scope"] = "during sleep" if staged else "over the recording"
    rs.facts.insert(0, FactItem(name="hypopnea_rule", label=rule, unit="text", display=rule,
                                source="clinical"))
    if ahi is not None and "only apneas count" in (ahi.reason or ""):
        rs.details["rule_caveat"] = ("no SpO2, scored desaturations or arousals: hypopneas "
                                     "could not be qualified and only apneas count")

    # -- findings: scored events and SleepLM localisations
    fi = inputs["findings"]
    resp = events_in_range(ctx, EventsInput(types=["apnea", "hypopnea"], limit=5000))
    if resp.events:
        ev = max(resp.events, key=lambda e: (e.duration_s, -e.onset_s))
        fi.facts.append(FactItem(
            name="longest_event_duration", label=f"Longest scored respiratory event "
            f"({_words(ev.type)})", value=float(ev.duration_s), unit="s",
            display=f"{ev.duration_s:.0f} s", epochs=[(ev.epoch, ev.epoch)],
            times=[ev.clock] if ev.clock else [], event_ids=[ev.id], source="events"))
        fi.details["longest_event"] = {"type": ev.type, "article": _article(ev.type),
                                       "clock": ev.clock or f"epoch {ev.epoch}",
                                       "epoch": ev.epoch, "stage": ev.stage}
    else:
        fi.details["no_events"] = "; ".join(resp.warnings) or "none were scored"
    desat = events_in_range(ctx, EventsInput(types=["desaturation"], limit=5000))
    nadirs = [e for e in desat.events if isinstance(e.attributes.get("spo2_nadir"), (int, float))]
    if nadirs:
        e = min(nadirs, key=lambda e: (float(e.attributes["spo2_nadir"]), e.onset_s))
        v = float(e.attributes["spo2_nadir"])
        fi.facts.append(FactItem(
            name="deepest_desaturation_nadir", label="Nadir of the deepest scored desaturation",
            value=v, unit="%", display=f"{v:.1f} %", epochs=[(e.epoch, e.epoch)],
            times=[e.clock] if e.clock else [], event_ids=[e.id], source="events"))
    if "spo2_nadir" in pool:
        fi.facts.append(pool["spo2_nadir"])
    locs = []
    for query, types in LOCALISATION_QUERIES.items():
        entry: dict[str, Any] = {"query": query, "facts": [], "intervals": []}
        try:
            out = localize(ctx, LocalizeInput(query=query, limit=2))
        except (ToolError, FileNotFoundError, RuntimeError, ValueError) as exc:
            logger.warning("report for %s: localising %r failed: %s", p.patient, query, exc)
            entry["error"] = type(exc).__name__
            locs.append(entry)
            continue
        if out.refusal:
            missing = [r.need for r in out.requirements if not r.met]
            entry["refusal"] = _join(missing) or "the signals it needs"
            locs.append(entry)
            continue
        entry["weak"] = bool(out.weak)
        slug = re.sub(r"\W+", "_", query).strip("_")
        for i, iv in enumerate(out.intervals, start=1):
            name = f"localized_{slug}_{i}"
            sp = iv.span
            fi.facts.append(FactItem(
                name=name, label=f"SleepLM localisation of {query}, interval {i} (model "
                "output)", value=float(iv.score), unit="cosine margin",
                display=f"{iv.score:.2f}", epochs=[(sp.first_epoch, sp.last_epoch)],
                times=[sp.start_clock, sp.end_clock] if sp.start_clock else [],
                source="localize"))
            scored = events_in_range(ctx, EventsInput(
                types=list(types), within=TimeSelection(epochs=(sp.first_epoch,
                                                                sp.last_epoch)), limit=1))
            fi.facts.append(FactItem(
                name=f"{name}_scored", label=f"Scored {_words(types[0])} events in "
                f"localisation {i}", value=float(scored.n_total), unit="count",
                display=str(scored.n_total), epochs=[(sp.first_epoch, sp.last_epoch)],
                source="events"))
            entry["facts"].append(name)
            entry["intervals"].append({"stage": sp.main_stage,
                                       "scored_words": _words(types[0]) + " event(s)"})
        locs.append(entry)
    fi.details["localisations"] = locs

    # -- key indices, impression, flags
    key_indices: dict[str, KeyIndex] = {}
    for key, name in KEY_INDEX_MEASURES.items():
        f = pool.get(name)
        if f is None:
            why = unavailable.get(_KEY_INDEX_SECTION[key], "not computed for this night")
            key_indices[key] = KeyIndex(measure=name, label=name, value=None, unit="",
                                        reason=why)
        else:
            key_indices[key] = KeyIndex(measure=name, label=f.label, value=f.value,
                                        unit=f.unit, display=f.display, reason=f.reason)
    im = inputs["impression"]
    im.facts += [pool[n] for n in (*KEY_INDEX_MEASURES.values(), "cvhr_screen") if n in pool]
    im.details.update(simulated=bool(simulated), severity=severity, index_name=index_name)
    if "respiratory" in unavailable:
        im.details["respiratory_unavailable"] = unavailable["respiratory"]
    inputs["notice"].details.update(disclaimer=facts.disclaimer, simulated=bool(simulated))
    flags = _flags(pool, unavailable, severity, simulated, locs)
    inputs["recommendations"].recommendations = _recommendations(pool, unavailable, severity,
                                                                 simulated)
    return _Collected(inputs=inputs, pool=pool, key_indices=key_indices, severity=severity,
                      flags=flags, hypopnea_rule=rule, disclaimer=facts.disclaimer,
                      simulated=simulated, model=p.model_version)


def _val(pool: dict[str, FactItem], name: str) -> float | None:
    f = pool.get(name)
    return f.value if f is not None else None


def _flags(pool: dict[str, FactItem], unavailable: dict[str, str], severity: str | None,
           simulated: bool | None, locs: list[dict]) -> list[str]:
    flags = []
    if simulated:
        flags.append("simulated")
    if severity and not severity.startswith("none") and severity != "not assessable":
        flags.append(f"osa_{severity}")
    flags += [f"{k}_unavailable" for k in unavailable]
    se = _val(pool, "sleep_efficiency_pct")
    if se is not None and se < SLEEP_EFFICIENCY_REFERENCE_PCT:
        flags.append("low_sleep_efficiency")
    nadir, t90 = _val(pool, "spo2_nadir"), _val(pool, "t90_pct")
    if (nadir is not None and nadir < 85.0) or (t90 is not None and t90 >= 10.0):
        flags.append("nocturnal_hypoxaemia")
    plmi = _val(pool, "plmi")
    if plmi is not None and plmi > 15.0:
        flags.append("plms")
    if any(loc.get("weak") for loc in locs):
        flags.append("weak_localisation")
    return flags


def _recommendations(pool: dict[str, FactItem], unavailable: dict[str, str],
                     severity: str | None, simulated: bool | None) -> list[Recommendation]:
    """Suggestions from fixed rules (thresholds in code, words only in the text)."""
    out: list[Recommendation] = []
    if simulated:
        out.append(Recommendation(text="This is a SIMULATED night: no clinical action applies; "
                                       "the suggestions below only show the rules at work.",
                                  about="study"))
    if severity in ("moderate", "severe"):
        out.append(Recommendation(text="Discuss treatment of obstructive sleep apnea, such as "
                                       "positive airway pressure, with the patient in the "
                                       "light of symptoms and comorbidities.",
                                  about="respiratory"))
    elif severity == "mild":
        out.append(Recommendation(text="Correlate the mild sleep apnea with symptoms and "
                                       "comorbidities before deciding on treatment.",
                                  about="respiratory"))
    if severity is None and _val(pool, "cvhr_screen") == 1.0:
        out.append(Recommendation(text="The heart-rate screening suggests sleep-disordered "
                                       "breathing: a diagnostic sleep study (polysomnography or "
                                       "a home sleep apnea test) is suggested.",
                                  about="cardiac"))
    cai, oai = _val(pool, "central_apnea_index"), _val(pool, "obstructive_apnea_index")
    if cai is not None and cai >= 5.0 and (oai is None or cai > oai):
        out.append(Recommendation(text="Central apneas predominate: consider evaluation for "
                                       "causes of central sleep apnea.", about="respiratory"))
    sup, non = _val(pool, "ahi_supine"), _val(pool, "ahi_nonsupine")
    if sup is not None and non is not None and sup >= 5.0 and sup >= 2.0 * non:
        out.append(Recommendation(text="Events are predominantly supine: positional therapy "
                                       "could be considered.", about="respiratory"))
    if "respiratory" in unavailable:
        out.append(Recommendation(text="Respiratory events could not be assessed: obtain the "
                                       "scored respiratory events or repeat the study.",
                                  about="respiratory"))
    if "oximetry" in unavailable:
        out.append(Recommendation(text="Oximetry was not available: repeat or complete the "
                                       "study with SpO2 if hypoxaemia matters clinically.",
                                  about="oximetry"))
    nadir, t90 = _val(pool, "spo2_nadir"), _val(pool, "t90_pct")
    if (nadir is not None and nadir < 85.0) or (t90 is not None and t90 >= 10.0):
        out.append(Recommendation(text="Marked nocturnal desaturation: consider assessment of "
                                       "gas exchange and cardiopulmonary disease.",
                                  about="oximetry"))
    plmi = _val(pool, "plmi")
    if plmi is not None and plmi > 15.0:
        out.append(Recommendation(text="Elevated periodic limb movements: correlate with "
                                       "restless legs symptoms and iron status.",
                                  about="limb_movements"))
    se = _val(pool, "sleep_efficiency_pct")
    if se is not None and se < SLEEP_EFFICIENCY_REFERENCE_PCT:
        out.append(Recommendation(text="Sleep efficiency is low: consider a first-night effect "
                                       "or insomnia, and a sleep diary.",
                                  about="architecture"))
    out.append(Recommendation(text="Review the raw recording and the scoring before signing "
                                   "this report.", about="technical"))
    return out


# ------------------------------------------------------------------------------- edits

_SECTION_WORDS: dict[str, str] = {
    "study": r"\bstudy\b|\bindication\b",
    "technical": r"\btechnical\b|\bchannels?\b|\badequacy\b",
    "architecture": r"\barchitecture\b|\bsleep stag",
    "respiratory": r"\brespirat|\bbreathing\b",
    "oximetry": r"\boximetr|\bspo2\b|\boxygen\b",
    "cardiac": r"\bcardiac\b|\bheart\b|\becg\b",
    "limb_movements": r"\blimb|\bleg\b|\bplm",
    "findings": r"\bfindings?\b|\blocali[sz]",
    "impression": r"\bimpression\b|\bsummary\b|\bconclusion",
    "recommendations": r"\brecommendations?\b|\bsuggestions?\b",
    "notice": r"\bnotice\b|\bdisclaimer\b",
}
#: Words of an 'add' request -> measures (the first matching entry wins).
_MEASURE_ALIASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"position|supine|lateral", ("ahi_supine", "ahi_nonsupine", "supine_sleep_min")),
    (r"\bnrem\b.*\b(ahi|rei)\b|\b(ahi|rei)\b.*\bnrem\b", ("ahi_nrem",)),
    (r"\brem\b.*\b(ahi|rei)\b|\b(ahi|rei)\b.*\brem\b", ("ahi_rem",)),
    (r"\b4 ?%.*\b(ahi|rei)\b|\b(ahi|rei)\b.*\b4 ?%|\b1b\b", ("ahi_4",)),
    (r"\bodi\b|oxygen desaturation index", ("odi3", "odi4")),
    (r"\bt90\b|below 90", ("t90_pct", "t90_min")),
    (r"\bnadir\b|lowest spo2", ("spo2_nadir",)),
    (r"baseline spo2|spo2 baseline", ("spo2_baseline",)),
    (r"mean spo2|average spo2", ("spo2_mean",)),
    (r"central apn", ("central_apnea_index", "central_apnea_count")),
    (r"obstructive apn", ("obstructive_apnea_index", "obstructive_apnea_count")),
    (r"\barousal", ("arousal_index",)),
    (r"\bplm|periodic limb", ("plmi", "plm_count")),
    (r"leg movement", ("lm_index",)),
    (r"heart rate|\bhr\b", ("hr_mean", "hr_min", "hr_max")),
    (r"sleep efficiency", ("sleep_efficiency_pct",)),
    (r"rem latency", ("rem_latency_min",)),
    (r"sleep[- ]onset latency|sleep latency", ("sleep_onset_latency_min",)),
    (r"\bwaso\b|wake after sleep onset", ("waso_min",)),
    (r"total sleep time|\btst\b", ("tst_min",)),
    (r"time in bed|\btib\b", ("tib_min",)),
    (r"\bahi\b|\brei\b|apn[oe]?a[- ]hypopn", ("ahi_3a", "ahi_4")),
)


class _EditPlan(BaseModel):
    short: set[str] = Field(default_factory=set)
    add: dict[str, list[FactItem]] = Field(default_factory=dict)
    remove_all_recs: bool = False
    remove_about: set[str] = Field(default_factory=set)
    omit: set[str] = Field(default_factory=set)
    records: list[EditRecord] = Field(default_factory=list)


def _sections_named(text: str) -> list[str]:
    return [k for k, rx in _SECTION_WORDS.items() if re.search(rx, text)]


def _plan_edits(edits: Sequence[str], pool: dict[str, FactItem],
                unavailable: dict[str, str]) -> _EditPlan:
    plan = _EditPlan()
    for raw in edits:
        req = str(raw)
        e = " ".join(req.lower().split())
        if not e:
            continue
        named = _sections_named(e)
        if re.search(r"\b(shorten|shorter|condense|trim|abbreviate|concise|brief|briefer|"
                     r"tighten|cut down)\b|\bcut\b.*\bdown\b|\bcouple of sentences\b", e):
            targets = [k for k in named if k != "notice"]
            if not targets and re.search(r"\b(report|everything|all)\b", e):
                targets = [k for k in SECTION_ORDER if k not in ("notice", "recommendations")]
            if not targets:
                plan.records.append(EditRecord(request=req, applied=False, reason=(
                    "no section named to shorten (say e.g. 'shorten the impression'); the "
                    "notice cannot be shortened")))
                continue
            plan.short.update(targets)
            plan.records.append(EditRecord(request=req, applied=True, action=(
                f"shortened {', '.join(targets)} to the first {_SHORT_SENTENCES} sentences")))
            continue
        if re.search(r"\b(remove|drop|delete|omit|without|no)\b", e) and re.search(
                r"\brecommendations?\b|\bsuggestions?\b", e):
            about = [k for k in named if k != "recommendations"]
            if about:
                plan.remove_about.update(about)
            else:
                plan.remove_all_recs = True
            plan.records.append(EditRecord(request=req, applied=True, action=(
                "removed the recommendations" + (f" about {', '.join(about)}" if about
                                                 else ""))))
            continue
        # "could you also mention X", "can you add X", "please also include X" -> "add X"
        e = re.sub(r"^(?:could|can|would|will)\s+you\s+(?:please\s+)?(?:also\s+)?", "", e)
        e = re.sub(r"^(please\s+)?also\s+", r"\1", e)
        if re.match(r"^(please\s+)?(add|include|mention|report|show|give|state|put|insert)\b", e):
            obj = re.sub(r"^(please\s+)?(add|include|mention|report|show|give|state|put|insert)"
                         r"\s+", "", e)
            obj = re.sub(r"\s*\?$", "", obj)
            target_m = re.search(r"\b(?:to|in|into|under|within)\s+the\s+(\w[\w\s]*?)"
                                 r"(?:\s+(?:part|paragraph|section|bit))?$", obj)
            target = "impression"
            if target_m:
                where = _sections_named(target_m.group(1))
                if where:
                    target = where[0]
                    obj = obj[:target_m.start()].strip()
            names: tuple[str, ...] = ()
            for rx, ms in _MEASURE_ALIASES:
                if re.search(rx, obj):
                    names = ms
                    break
            if not names:
                words = [w for w in re.findall(r"[a-z0-9%]+", obj)
                         if len(w) > 2 and w not in ("the", "and", "with", "please")]
                names = tuple(n for n, f in pool.items()
                              if words and all(w in f.label.lower() for w in words))
            found = [pool[n] for n in names if n in pool]
            if not found:
                why = (f"the facts of this night have no measure matching {obj!r}"
                       if not names else
                       f"{', '.join(names)} is not in the facts of this night"
                       + (f" ({'; '.join(unavailable.values())})" if unavailable else ""))
                plan.records.append(EditRecord(request=req, applied=False, reason=why))
                continue
            plan.add.setdefault(target, []).extend(found)
            plan.records.append(EditRecord(request=req, applied=True, action=(
                f"added {', '.join(f.name for f in found)} to the {target} section")))
            continue
        if re.search(r"\b(remove|drop|delete|omit)\b", e) and named:
            if "notice" in named:
                plan.records.append(EditRecord(request=req, applied=False, reason=(
                    "the not-a-medical-device notice cannot be removed")))
                continue
            plan.omit.update(named)
            plan.records.append(EditRecord(request=req, applied=True,
                                           action=f"removed the {', '.join(named)} section"))
            continue
        plan.records.append(EditRecord(request=req, applied=False, reason=(
            "not understood; supported edits: " + "; ".join(SUPPORTED_EDITS))))
    return plan


# ------------------------------------------------------------------------------- drafting


def _ground(key: str, text: str, section: SectionInput, writer: NarrativeWriter,
            allowed: GroundingFacts, log: GroundingReport) -> str:
    """``text`` with failing sentences regenerated once (when the writer can) or dropped."""
    kept: list[str] = []
    result = check_text(text, allowed)
    for chk in result.sentences:
        log.checked += 1
        if chk.ok:
            log.passed += 1
            kept.append(chk.sentence)
            continue
        first = chk.problems[0]
        attempts = 1
        if getattr(writer, "can_regenerate", False):
            attempts = 2
            try:
                new = writer.rewrite(section, chk.sentence, chk.problems)
            except Exception as exc:  # noqa: BLE001 - a failing LLM call must not lose the report
                logger.warning("report section %s: regenerating a sentence failed: %s", key, exc)
                new = None
            if new:
                second = check_text(new, allowed)
                if second.sentences and second.ok:
                    kept.append(" ".join(s.sentence for s in second.sentences))
                    log.regenerated.append(RegeneratedSentence(
                        section=key, original=chk.sentence, replacement=kept[-1],
                        token=first.token, reason=first.reason))
                    continue
                if second.failed:
                    first = second.failed[0].problems[0]
        log.dropped.append(DroppedSentence(section=key, sentence=chk.sentence,
                                           token=first.token, reason=first.reason,
                                           attempts=attempts))
        if isinstance(writer, TemplateWriter):
            logger.error("template sentence of section %s failed grounding (%s: %s): %r",
                         key, first.token, first.reason, chk.sentence)
    return " ".join(kept)


def _shorten(text: str, n: int = _SHORT_SENTENCES) -> str:
    return " ".join(split_sentences(text)[:n])


def draft_report(ctx: ToolContext, *, writer: NarrativeWriter | None = None,
                 indication: str | None = None, edits: Sequence[str] = ()) -> Report:
    """Draft the current patient's report.

    Parameters
    ----------
    ctx : ToolContext
        The library and the current patient.
    writer : NarrativeWriter, optional
        :class:`TemplateWriter` (default) or :class:`LLMWriter`.
    indication : str, optional
        Why the study was done, as the user gives it (kept as quoted data).
    edits : sequence of str
        Revision requests ("shorten the impression", "add the positional AHI", "remove the
        recommendations"); see :data:`SUPPORTED_EDITS`. Each is recorded in ``Report.edits``,
        applied or not with the reason.

    Returns
    -------
    Report
        Every number from the deterministic facts; every narrative sentence grounded.

    Raises
    ------
    NoPatientError, UnknownPatientError
        No current patient / an unknown one.
    """
    writer = writer or TemplateWriter()
    named = getattr(writer, "name", type(writer).__name__)  # kept when templates take over
    templates = TemplateWriter()
    budget = getattr(writer, "budget_s", None)
    own = time.monotonic() + budget if budget is not None else None
    asked = getattr(writer, "question_deadline", None)  # the chat question's time runs out
    deadline = (min(d for d in (own, asked) if d is not None)
                if own is not None or asked is not None else None)
    spent = (f"{getattr(writer, 'name', 'writer')}'s time budget ({budget:g} s)"
             if own is not None and (asked is None or own <= asked)
             else "the chat question's time budget")
    if isinstance(writer, LLMWriter):
        writer.deadline = deadline
    indication = " ".join(indication.split()) if indication and indication.strip() else None
    col = _collect(ctx, indication)
    unavailable = {k: v for k, v in ((s.key, s.unavailable) for s in col.inputs.values()) if v}
    plan = _plan_edits(edits, col.pool, unavailable)
    rec_input = col.inputs["recommendations"]
    if plan.remove_all_recs:
        rec_input.recommendations = []
    elif plan.remove_about:
        rec_input.recommendations = [r for r in rec_input.recommendations
                                     if r.about not in plan.remove_about]
    all_facts: dict[str, FactItem] = {}
    quoted: list[str] = []
    for inp in col.inputs.values():
        for f in inp.facts:
            all_facts.setdefault(f.name, f)
        quoted += inp.quoted
    allowed = build_allowed(all_facts.values(), quoted=quoted)
    log = GroundingReport()
    sections: list[ReportSection] = []
    for key in SECTION_ORDER:
        inp = col.inputs[key].model_copy(update={"short": key in plan.short})
        if deadline is not None and writer is not templates and time.monotonic() > deadline:
            logger.warning("report: %s is spent; templates write the remaining sections", spent)
            log.fallbacks.append(f"{key} and later sections: {spent} was spent; the template "
                                 "text was used")
            writer = templates
        try:
            text = writer.write(inp)
        except WriterBudgetSpent:
            log.fallbacks.append(f"{key} and later sections: {spent} was spent; the template "
                                 "text was used")
            writer = templates
            text = templates.write(inp)
        except Exception as exc:  # noqa: BLE001 - any backend failure falls back to templates
            logger.warning("report section %s: writer %s failed (%s); templates used",
                           key, getattr(writer, "name", writer), exc)
            log.fallbacks.append(f"{key}: {getattr(writer, 'name', 'writer')} failed "
                                 f"({type(exc).__name__}: {exc}); the template text was used")
            text = templates.write(inp)
        text = _ground(key, text, inp, writer, allowed, log)
        if inp.short:
            text = _shorten(text)
        facts_here = list(inp.facts)
        for f in plan.add.get(key, []):
            sentence = TemplateWriter.measure_sentence(f)
            text = (text + " " + _ground(key, sentence, inp, templates, allowed, log)).strip()
            if all(g.name != f.name for g in facts_here):
                facts_here.append(f)
        sections.append(ReportSection(
            key=key, title=inp.title, narrative=text, facts=facts_here,
            unavailable=inp.unavailable, quoted=list(inp.quoted),
            recommendations=list(inp.recommendations), notes=list(inp.notes),
            omitted=key in plan.omit))
    return Report(
        patient=ctx.require_patient(), simulated=col.simulated,
        generated_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        model=col.model, writer=named,
        indication=indication, sections=sections, key_indices=col.key_indices,
        severity=col.severity, flags=col.flags, hypopnea_rule=col.hypopnea_rule,
        grounding=log, edits=plan.records,
        disclaimer=(col.disclaimer if "not a medical device" in col.disclaimer
                    else f"{col.disclaimer} {NOT_A_DEVICE}").strip()
        + (" " + SIMULATED_NOTICE if col.simulated else ""))
