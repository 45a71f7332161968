"""Which modality a piece of caption text describes, and captions cut to the channels present.

An EEG-only night's caption cannot speak of SpO2, heart rate or eye movements, and a night
without EEG or EOG cannot be given a sleep stage. :data:`MODALITIES` maps the words of a
caption clause to the model-input channels one of which must be present for the clause to be
said; :func:`withdraw_absent` drops the clauses (or the parts of a clause joined by "and") that
describe a modality the recording does not have. Deterministic: the words decide, not a model.

Used twice: on what the caption decoder writes (:mod:`sleeplm.model.captioning`: nothing about
an absent channel reaches the user) and on the training texts when training drops modalities
(:mod:`sleeplm.corpus.robustness`: an epoch shown without its SpO2 is paired with a text that
says nothing about SpO2).
"""

from __future__ import annotations

import re
from typing import Sequence

__all__ = ["MODALITIES", "modalities_of", "withdraw_absent", "absent_modalities",
           "split_clauses", "join_clauses"]


def split_clauses(text: str) -> tuple[list[str], str]:
    """Clauses of a caption and its style: ``;`` lists, sentences, or a comma list whose
    last item starts with "and"."""
    t = str(text).strip()
    t = t[:-1] if t.endswith(".") else t
    if ";" in t:
        return [c.strip() for c in t.split(";") if c.strip()], "; "
    if ". " in t:
        return [c.strip() for c in t.split(". ") if c.strip()], ". "
    parts = [c.strip() for c in t.split(",") if c.strip()]
    if len(parts) > 1 and parts[-1].startswith("and "):
        parts[-1] = parts[-1][4:].strip()
    return parts, ", "


def join_clauses(clauses: list[str], style: str) -> str:
    if not clauses:
        return ""
    if style == ". ":
        clauses = [c[:1].upper() + c[1:] for c in clauses]
    elif style == ", " and len(clauses) > 2:
        clauses = clauses[:-1] + ["and " + clauses[-1]]
    return style.join(clauses) + "."


_EEG = ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O")
_EOG = ("EOG_L", "EOG_R")
#: What a caption clause can describe -> (words that describe it, the model-input channels of
#: which at least one must be present for a clause to say it). Sleep stages need EEG or EOG.
MODALITIES: dict[str, tuple[re.Pattern, tuple[str, ...]]] = {
    name: (re.compile(pattern), channels) for name, pattern, channels in (
        ("EEG", r"spindle|k-complex|\beeg\b|\balpha\b|\btheta\b|\bdelta\b|\bbeta\b"
                r"|slow waves?\b|slow-wave activity|sawtooth|vertex|\barousals?\b|occiput"
                r"|\bbands?\b|power", _EEG),
        ("EOG", r"eye movements?|\beog\b|\brems\b|saccad|blink|\beyes\b", _EOG),
        ("chin EMG", r"\bchin\b|submental|atonia|muscle tone|\btone\b|twitch", ("EMG_CHIN",)),
        ("leg EMG", r"\blegs?\b|\blimb|\bplms?\b|kick", ("EMG_LEG", "EMG_LEG_R")),
        ("ECG or heart rate", r"heart|\bbpm\b|\becg\b|cardiac|brady|tachy|\bhr\b|pulse",
         ("ECG", "HR")),
        ("SpO2", r"spo2|sao2|saturation|desaturation|oxygen|oximetr", ("SPO2",)),
        ("airflow or effort", r"apn[oe]as?\b|hypopn[oe]as?\b|breath|respirat|airflow|\bflow\b"
                              r"|effort|snor|paradox", ("AIRFLOW", "NASAL_PRESSURE", "THORAX",
                                                        "ABDOMEN")),
        ("body position", r"supine|prone|lateral|\bposition|upright|on the (?:left|right) side",
         ("POSITION",)),
        ("EEG or EOG (to stage sleep)", r"\bstage\b|\bn[1-3]\b|\brem\b|\(r\)|\(w\)|\bwake\b|\bawake\b"
                        r"|slow-wave sleep|\bsleep\b", _EEG + _EOG),
    )
}


def modalities_of(part: str) -> list[str]:
    """The modalities (keys of :data:`MODALITIES`) a piece of caption text describes."""
    low = str(part).lower()
    return [name for name, (rx, _) in MODALITIES.items() if rx.search(low)]


def absent_modalities(present: Sequence[str]) -> set[str]:
    """The modalities (keys of :data:`MODALITIES`) none of whose channels is in ``present``."""
    have = set(present)
    return {name for name, (_, chans) in MODALITIES.items() if not have & set(chans)}


def withdraw_absent(text: str, present: Sequence[str]) -> tuple[str, list[str]]:
    """``text`` without the parts that describe a modality none of whose channels is in
    ``present`` (the model-input channels the recording has): an EEG-only night's caption
    cannot speak of SpO2, heart rate or eye movements, and a night without EEG or EOG cannot
    be given a sleep stage. Deterministic: the words decide, not the model.

    Returns the new text and the withdrawn parts, each as ``"<part> (needs <modality>, which
    this recording does not have)"``.
    """
    absent = absent_modalities(present)
    if not absent:
        return str(text).strip(), []
    clauses, style = split_clauses(text)
    kept, gone = [], []
    for clause in clauses:
        keep = []
        for part in clause.split(" and "):
            missing = [m for m in modalities_of(part) if m in absent]
            if missing:
                gone.append(f"{part} (needs {'; '.join(missing)}, which this recording does "
                            "not have)")
            else:
                keep.append(part)
        if keep:
            kept.append(" and ".join(keep))
    if not gone:
        return str(text).strip(), []
    return join_clauses(kept, style), gone


