"""localize: where in this night does something described in words happen?

Scoring for known queries is :func:`sleeplm.zeroshot.known_query_margins`, the function the
held-out evaluation (``training/evaluate.py``) uses: every epoch gets the margin
``cos(epoch, query) - max(cos(epoch, background), cos(epoch, rival queries))`` of its SleepLM
embedding.

The background (what the query is contrasted with):

* a **known query** (a key of :data:`sleeplm.prompts.LOCALISATION_QUERIES`, e.g.
  ``"obstructive apnea"``, ``"spindles"``, one of its prompts or of its
  :data:`~sleeplm.prompts.LOCALISATION_ALIASES`): the query vector is the normalised mean of
  that entry's prompts, the background the matching
  :data:`~sleeplm.prompts.LOCALISATION_BACKGROUND` entry (the captions' wording for the event's
  absence) and its :data:`~sleeplm.prompts.LOCALISATION_RIVALS` (an apnea must also read more
  like an apnea than like a hypopnea), exactly as in the evaluation; the default threshold and
  the largest gap of quiet epochs inside one interval are the checkpoint's decision rule for
  that query (``calibration.json``, chosen on validation nights by ``python -m
  training.calibrate``; :mod:`sleeplm.calibration`), the rule the evaluation scores; without
  one, threshold 0 and no gap;
* **free text**: no absence wording is known, so the background is the night itself: the
  margin is ``cos(epoch, query)`` minus the night's median of that cosine over all its epochs
  (the query's background similarity in this night). Half the night is above 0 by
  construction, so the default threshold is a robust two-sigma above the median:
  ``2 * 1.4826 * MAD`` of the night's cosines.

Runs of epochs above the threshold (:func:`sleeplm.zeroshot.to_intervals`, runs closer than
the gap merged) are the intervals; each is scored by its peak margin and listed best first. A best margin under
:data:`WEAK_MARGIN` is reported as weak. A query naming a signal the night lacks (SpO2 for a
desaturation, EEG for spindles) is refused (see :func:`tools.common.requirements_for`).
"""

from __future__ import annotations

import re

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sleeplm import prompts as P
from sleeplm.zeroshot import known_query_margins, stage_scores, to_intervals
from tools.common import (
    Requirement,
    Span,
    TimeSelection,
    check_requirements,
    recording_start,
    requirements_for,
    resolve_selection,
    span_of,
)
from tools.context import ToolContext
from tools.errors import EmptyQueryError

__all__ = [
    "KNOWN_QUERY_NEEDS",
    "WEAK_MARGIN",
    "EpochMargins",
    "LocalizeInput",
    "LocalizeOutput",
    "ScoredInterval",
    "epoch_margins",
    "localize",
    "match_known_query",
]

#: A best margin below this (cosine units) is reported as weak evidence.
WEAK_MARGIN = 0.05
#: Signals the known queries need.
KNOWN_QUERY_NEEDS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "obstructive_apnea": [("respiratory effort or airflow",
                           ("AIRFLOW", "NASAL_PRESSURE", "THORAX", "ABDOMEN"))],
    "hypopnea": [("respiratory effort or airflow",
                  ("AIRFLOW", "NASAL_PRESSURE", "THORAX", "ABDOMEN"))],
    "desaturation": [("SpO2", ("SPO2",))],
    "spindles": [("EEG", ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O"))],
    "arousal": [("EEG", ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O"))],
}


def _norm(text: str) -> str:
    t = re.sub(r"[^a-z0-9% ]+", " ", text.lower().replace("_", " ").replace("-", " "))
    t = " ".join(t.split())
    t = re.sub(r"\bapnoea", "apnea", t)
    return t[:-1] if t.endswith("s") and not t.endswith("ss") else t


def match_known_query(query: str) -> str | None:
    """The :data:`~sleeplm.prompts.LOCALISATION_QUERIES` key ``query`` names, or None.

    Matches the key ("obstructive_apnea", "obstructive apnea", "obstructive apneas"), one of
    its prompts or one of its aliases, ignoring case, punctuation and a plural ``s``.
    """
    q = _norm(query)
    for key, prompts in P.LOCALISATION_QUERIES.items():
        names = [key, *prompts, *P.LOCALISATION_ALIASES.get(key, ())]
        if q in {_norm(p) for p in names}:
            return key
    return None


class LocalizeInput(BaseModel):
    """Arguments of :func:`localize`.

    Attributes
    ----------
    query : str
        What to find, in words ("obstructive apnea", "bursts of fast EEG").
    threshold : float or None
        Margin (cosine units) an epoch must exceed; None: 0 for a known query, the night's
        robust two-sigma for free text (see the module docstring).
    limit : int
        At most this many intervals, best first.
    within : TimeSelection or None
        Search only this part of the night (default: all of it).
    """

    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="what to find, in words, e.g. 'obstructive apnea'")
    threshold: float | None = Field(default=None, description="minimum margin (cosine units); "
                                    "default: 0 for known events, a robust 2-sigma otherwise")
    limit: int = Field(default=10, ge=1, le=200, description="at most this many intervals")
    within: TimeSelection | None = Field(default=None, description="search only this part")


class ScoredInterval(BaseModel):
    """One run of epochs where the query scores above the threshold.

    Attributes
    ----------
    span : Span
        Epochs, seconds, clock times and stages.
    score : float
        Peak margin in the run (cosine units).
    mean_score : float
        Mean margin over the run (cosine units).
    peak_epoch : int
        Epoch of the peak.
    unit : str
        ``"cosine margin"``.
    """

    span: Span
    score: float
    mean_score: float
    peak_epoch: int
    unit: str = "cosine margin"


class EpochMargins(BaseModel):
    """Per-epoch margins of a query over a whole night (what :func:`localize` ranks).

    Attributes
    ----------
    margins : list of float
        One per epoch (cosine units).
    known_query : str or None
        The matched :data:`~sleeplm.prompts.LOCALISATION_QUERIES` key.
    background : str
        What the query was contrasted with.
    default_threshold : float
        The threshold used when none is given.
    max_gap : int
        Runs of positive epochs closer than this many quiet epochs are one interval.
    rule_source : str
        Where the threshold and gap come from.
    """

    margins: list[float]
    known_query: str | None
    background: str
    default_threshold: float
    max_gap: int = 0
    rule_source: str = ""


class LocalizeOutput(BaseModel):
    """Result of :func:`localize`.

    Attributes
    ----------
    patient, query : str
    known_query : str or None
        The known event the query was matched to (its prompts and background were used).
    background : str
        What the query was contrasted with.
    threshold : float
        Threshold used (cosine margin).
    max_gap : int
        Quiet epochs allowed inside one interval.
    rule_source : str
        Where the default threshold and gap come from.
    intervals : list of ScoredInterval
        Best first, at most ``limit``.
    n_intervals_total : int
        Intervals above the threshold before the limit.
    n_epochs_searched : int
    best_epoch : int or None
        The epoch with the highest margin in the searched part, and ``best_score`` its margin.
    best_score : float or None
    weak : bool
        True when the best margin is under :data:`WEAK_MARGIN`: the model barely tells the query
        from its background here.
    warnings : list of str
    refusal : str or None
        Set when the night lacks the signals the query needs; nothing is scored then.
    requirements : list of Requirement
    method : str
    """

    patient: str
    query: str
    known_query: str | None = None
    background: str = ""
    threshold: float | None = None
    max_gap: int = 0
    rule_source: str = ""
    intervals: list[ScoredInterval] = Field(default_factory=list)
    n_intervals_total: int = 0
    n_epochs_searched: int = 0
    best_epoch: int | None = None
    best_score: float | None = None
    weak: bool = False
    warnings: list[str] = Field(default_factory=list)
    refusal: str | None = None
    requirements: list[Requirement] = Field(default_factory=list)
    method: str = ""

    def summary(self) -> str:
        """A short text for the LLM."""
        if self.refusal:
            return f"Cannot localise '{self.query}': {self.refusal}"
        head = (f"'{self.query}'" + (f" (known event {self.known_query})" if self.known_query
                                     else "") + f", margin vs {self.background}")
        if not self.intervals:
            lines = [f"No interval of {head} exceeds the threshold {self.threshold:.3f}."]
        else:
            gap = (f" (runs up to {self.max_gap} quiet epochs apart merged)" if self.max_gap
                   else "")
            lines = [f"{self.n_intervals_total} interval(s) of {head} above {self.threshold:.3f}"
                     f"{gap}; best {len(self.intervals)}:"]
            lines += [f"- {iv.span.describe()}: peak {iv.score:.3f} at epoch {iv.peak_epoch}"
                      for iv in self.intervals]
        lines += [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _mad_threshold(cos: np.ndarray) -> float:
    med = float(np.median(cos))
    return 2.0 * 1.4826 * float(np.median(np.abs(cos - med)))


def epoch_margins(ctx: ToolContext, query: str) -> EpochMargins:
    """Per-epoch margins of ``query`` for the current patient (see the module docstring).

    Raises
    ------
    EmptyQueryError
        ``query`` is blank.
    """
    if not query or not query.strip():
        raise EmptyQueryError("the query is empty: say in words what to look for, e.g. "
                              "'obstructive apnea' or 'bursts of fast EEG'")
    p = ctx.processed()
    emb = np.asarray(p.epoch_embeddings, dtype=np.float32)
    known = match_known_query(query)
    if known is not None:
        margins = known_query_margins(emb, ctx.class_vectors, [known])[:, 0]
        rivals = P.LOCALISATION_RIVALS.get(known, [])
        cal = ctx.calibration
        rule = cal.interval_rule(known)
        return EpochMargins(margins=[float(v) for v in margins], known_query=known,
                            background="the absence wording of LOCALISATION_BACKGROUND["
                                       f"'{known}']: " + "; ".join(
                                           P.LOCALISATION_BACKGROUND[known])
                            + (f", and the rival queries {', '.join(rivals)}" if rivals
                               else ""),
                            default_threshold=rule.threshold, max_gap=rule.max_gap,
                            rule_source=(f"the checkpoint's rule for {known}, chosen on "
                                         f"{cal.n_nights} validation nights"
                                         if known in cal.localisation else
                                         "plain rule (margin > 0; the checkpoint has no "
                                         "calibration for this query)"))
    q = ctx.class_vectors({"query": [query.strip()]}, ["query"])
    cos = stage_scores(emb, q)[:, 0]
    margins = cos - float(np.median(cos)) if cos.size else cos
    return EpochMargins(margins=[float(v) for v in margins], known_query=None,
                        background="the night's median cosine with the query (generic "
                                   "background for free text)",
                        default_threshold=_mad_threshold(cos) if cos.size else 0.0,
                        rule_source="two robust SDs above the night's median (free text)")


def localize(ctx: ToolContext, request: LocalizeInput) -> LocalizeOutput:
    """Find where in the current night the query happens: scored intervals, best first.

    Parameters
    ----------
    ctx : ToolContext
        The current patient, library and model.
    request : LocalizeInput

    Returns
    -------
    LocalizeOutput
        Intervals with epochs, seconds, clock times, stages and their margin (cosine units);
        ``refusal`` set when the night lacks the needed signals; ``weak`` when the best margin is
        under :data:`WEAK_MARGIN`.

    Raises
    ------
    EmptyQueryError
        Blank query.
    TimeRangeError
        ``within`` lies outside the night.
    NoPatientError, UnknownPatientError
        No current patient / an unknown one.
    """
    query = (request.query or "").strip()
    if not query:
        raise EmptyQueryError("the query is empty: say in words what to look for, e.g. "
                              "'obstructive apnea' or 'bursts of fast EEG'")
    p = ctx.processed()
    sel = resolve_selection(p, request.within)
    known = match_known_query(query)
    needs = KNOWN_QUERY_NEEDS.get(known, []) if known else requirements_for(query)
    reqs, refusal = check_requirements(p, needs)
    out = LocalizeOutput(patient=p.patient, query=query, known_query=known, requirements=reqs,
                         method="zero-shot: cos(epoch, query) - background (sleeplm.zeroshot."
                                "known_query_margins for known events); runs of epochs above "
                                "the threshold")
    if refusal:
        out.refusal = refusal
        return out
    em = epoch_margins(ctx, query)
    margins = np.asarray(em.margins, dtype=float)
    thr = em.default_threshold if request.threshold is None else float(request.threshold)
    a, b = sel.span.first_epoch, sel.span.last_epoch
    idx = np.arange(a, b + 1)
    m = margins[a:b + 1]
    runs = to_intervals(idx, m > thr, max_gap=em.max_gap)
    t0 = recording_start(p)
    ivs = []
    for first, last in runs:
        seg = margins[first:last + 1]
        k = int(np.argmax(seg))
        ivs.append(ScoredInterval(span=span_of(p, first, last, t0), score=float(seg[k]),
                                  mean_score=float(seg.mean()), peak_epoch=first + k))
    ivs.sort(key=lambda iv: (-iv.score, iv.span.first_epoch))
    best = int(idx[int(np.argmax(m))]) if m.size else None
    out.known_query, out.background, out.threshold = em.known_query, em.background, thr
    out.max_gap = em.max_gap
    out.rule_source = (em.rule_source if request.threshold is None else
                       f"threshold given by the caller; gap: {em.rule_source}")
    out.intervals, out.n_intervals_total = ivs[:request.limit], len(ivs)
    out.n_epochs_searched = int(m.size)
    out.best_epoch = best
    out.best_score = float(margins[best]) if best is not None else None
    out.weak = out.best_score is None or out.best_score < WEAK_MARGIN
    if out.weak:
        out.warnings.append(
            f"weak evidence: the best margin in the searched part is "
            f"{out.best_score if out.best_score is not None else float('nan'):.3f} (under "
            f"{WEAK_MARGIN}); the model barely separates '{query}' from its background here, "
            "so treat these intervals as unreliable")
    if not ivs:
        out.warnings.append(f"no epoch exceeds the threshold {thr:.3f}")
    if known is None:
        out.warnings.append("free-text query: contrasted with the night's median similarity, "
                            "so scores are relative to this night, not absolute evidence")
    return out
