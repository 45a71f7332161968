"""localize: where in this night does something described in words happen?

Scoring for known queries is :func:`sleeplm.model.zeroshot.known_query_margins`, the function the
held-out evaluation (``training/evaluate.py``) uses: every epoch gets the margin
``cos(epoch, query) - max(cos(epoch, background), cos(epoch, rival queries))`` of its SleepLM
embedding.

The background (what the query is contrasted with):

* a **known query** (a key of :data:`sleeplm.model.prompts.LOCALISATION_QUERIES`, e.g.
  ``"obstructive apnea"``, ``"spindles"``, one of its prompts or of its
  :data:`~sleeplm.model.prompts.LOCALISATION_ALIASES`): the query vector is the normalised mean of
  that entry's prompts, the background the matching
  :data:`~sleeplm.model.prompts.LOCALISATION_BACKGROUND` entry (the captions' wording for the event's
  absence) and its :data:`~sleeplm.model.prompts.LOCALISATION_RIVALS` (an apnea must also read more
  like an apnea than like a hypopnea), exactly as in the evaluation; the default threshold and
  the largest gap of quiet epochs inside one interval are the checkpoint's decision rule for
  that query (``calibration.json``, chosen on validation nights by ``python -m
  training.calibrate``; :mod:`sleeplm.model.calibration`), the rule the evaluation scores; without
  one, threshold 0 and no gap;
* **free text**: no absence wording is known, so the background is the night itself: the
  margin is ``cos(epoch, query)`` minus the night's median of that cosine over all its epochs
  (the query's background similarity in this night). Half the night is above 0 by
  construction, so the default threshold is a robust two-sigma above the median:
  ``2 * 1.4826 * MAD`` of the night's cosines.

``scorer="generative"`` scores a known event that has caption-decoder clauses
(:data:`sleeplm.model.prompts.GENERATIVE_QUERIES`: hypopnea, obstructive apnea, arousal) with the
decoder instead: per epoch, the log-probability of the clauses naming the event minus that of
its rival clauses, right after the epoch's zero-shot stage phrase
(:func:`sleeplm.model.zeroshot.generative_query_scores`, the evaluation's "generative localisation"),
in nats, with the checkpoint's ``generative:<query>`` rule. It costs a decoder pass per epoch
(tens of seconds for a night on a CPU, then kept in the patient's cache); the default
``contrastive`` scorer says when the generative one did materially better on the validation
nights.

Runs of epochs above the threshold (:func:`sleeplm.model.zeroshot.to_intervals`, runs closer than
the gap merged) are the intervals; each is scored by its peak margin and listed best first. A best margin under
:data:`WEAK_MARGIN` is reported as weak. A query naming a signal the night lacks (SpO2 for a
desaturation, EEG for spindles) is refused (see :func:`tools.common.requirements_for`).
"""

from __future__ import annotations

import os
import re
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sleeplm.model import prompts as P
from sleeplm._logging import logger
from sleeplm.model.calibration import GENERATIVE_PREFIX
from sleeplm.model.zeroshot import (generative_query_scores, known_query_margins, stage_scores,
                              to_intervals)
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
from tools.errors import EmptyQueryError, UnsupportedScorerError

__all__ = [
    "GENERATIVE_HINT_GAIN",
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
#: Validation F1 gain of the generative scorer over the contrastive one above which a
#: contrastive answer points to it.
GENERATIVE_HINT_GAIN = 0.1
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
    """The :data:`~sleeplm.model.prompts.LOCALISATION_QUERIES` key ``query`` names, or None.

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
    scorer : {"contrastive", "generative"}
        Embedding margins (fast, default) or the caption decoder's evidence for a known
        hypopnea / obstructive apnea / arousal query (slower; see the module docstring).
    """

    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="what to find, in words, e.g. 'obstructive apnea'")
    threshold: float | None = Field(default=None, description="minimum margin (cosine units); "
                                    "default: 0 for known events, a robust 2-sigma otherwise")
    limit: int = Field(default=10, ge=1, le=200, description="at most this many intervals")
    within: TimeSelection | None = Field(default=None, description="search only this part")
    scorer: Literal["contrastive", "generative"] = Field(
        default="contrastive", description="'generative': score a known hypopnea, obstructive "
        "apnea or arousal query with the caption decoder (slower, better for hypopneas)")


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
        ``"cosine margin"``, or ``"nats"`` for the generative scorer.
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
        The matched :data:`~sleeplm.model.prompts.LOCALISATION_QUERIES` key.
    background : str
        What the query was contrasted with.
    default_threshold : float
        The threshold used when none is given.
    max_gap : int
        Runs of positive epochs closer than this many quiet epochs are one interval.
    rule_source : str
        Where the threshold and gap come from.
    scorer : str
        ``contrastive`` or ``generative``.
    unit : str
        ``cosine margin`` or ``nats``.
    """

    margins: list[float]
    known_query: str | None
    background: str
    default_threshold: float
    max_gap: int = 0
    rule_source: str = ""
    scorer: str = "contrastive"
    unit: str = "cosine margin"


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
    scorer: str = "contrastive"
    unit: str = "cosine margin"

    def summary(self) -> str:
        """A short text for the LLM."""
        if self.refusal:
            return f"Cannot localise '{self.query}': {self.refusal}"
        head = (f"'{self.query}'" + (f" (known event {self.known_query})" if self.known_query
                                     else "") + f", {self.unit} vs {self.background}")
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


def _generative_margins(ctx: ToolContext, known: str) -> np.ndarray:
    """The caption decoder's evidence (nats) for ``known`` in every epoch of the current
    patient, after each epoch's zero-shot stage; kept in the patient's ``captions/`` cache."""
    import torch
    from tqdm import tqdm

    from tools.caption import _model_inputs

    p = ctx.processed()

    def make() -> np.ndarray:
        path = p.captions_dir / f"generative-{known}.npy"
        if path.is_file():
            try:
                cached = np.load(path)
                if cached.shape == (p.n_epochs,):
                    return cached
            except (ValueError, OSError):
                pass  # unreadable: score again
        model, tok = ctx.model, ctx.tokenizer
        emb = np.asarray(p.epoch_embeddings, dtype=np.float32)
        stages = np.asarray(P.STAGES)[stage_scores(emb, ctx.class_vectors(
            P.STAGE_PROMPTS, list(P.STAGES))).argmax(1)] if len(emb) else np.asarray([])
        out = np.zeros(p.n_epochs, np.float32)
        dev = model.logit_scale.device
        k = int(model.cfg.context_epochs)
        logger.info("localize: caption-decoder scoring of %s over %d epochs", known, p.n_epochs)
        for s in tqdm(range(0, p.n_epochs, 32), desc=f"scoring {known}", unit="batch",
                      disable=None):
            idx = np.arange(s, min(p.n_epochs, s + 32))
            x, m = _model_inputs(p, idx, k)
            with torch.inference_mode():
                _, tokens, valid = model.encode_signal(torch.from_numpy(x).to(dev),
                                                       torch.from_numpy(m).to(dev))
                out[idx] = generative_query_scores(model, tok, tokens, valid,
                                                   [str(v) for v in stages[idx]], [known])[:, 0]
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        with open(tmp, "wb") as f:
            np.save(f, out)
        os.replace(tmp, path)
        return out

    return ctx.memo(("generative_margins", p.patient, known), make)


def _generative_hint(ctx: ToolContext, known: str) -> str | None:
    """A pointer to the generative scorer when it did materially better on validation."""
    cal = ctx.calibration
    g = cal.validation.get(GENERATIVE_PREFIX + known, {}).get("chosen", {}).get("f1")
    c = cal.validation.get(known, {}).get("chosen", {}).get("f1")
    if g is None or c is None or g < c + GENERATIVE_HINT_GAIN:
        return None
    return (f"on {cal.n_nights} validation nights the caption-decoder scorer found {known} "
            f"better (event F1 {g:.2f} vs {c:.2f}); ask again with scorer='generative' "
            "(slower: a decoder pass per epoch)")


def epoch_margins(ctx: ToolContext, query: str, scorer: str = "contrastive") -> EpochMargins:
    """Per-epoch margins of ``query`` for the current patient (see the module docstring).

    Raises
    ------
    EmptyQueryError
        ``query`` is blank.
    UnsupportedScorerError
        ``scorer="generative"`` for a query without caption-decoder clauses.
    """
    if not query or not query.strip():
        raise EmptyQueryError("the query is empty: say in words what to look for, e.g. "
                              "'obstructive apnea' or 'bursts of fast EEG'")
    p = ctx.processed()
    emb = np.asarray(p.epoch_embeddings, dtype=np.float32)
    known = match_known_query(query)
    if scorer == "generative":
        if known not in P.GENERATIVE_QUERIES:
            raise UnsupportedScorerError(f"the generative scorer knows {', '.join(P.GENERATIVE_QUERIES)}; "
                             f"'{query}' is not one of them: use scorer='contrastive'")
        cal = ctx.calibration
        rule = cal.interval_rule(GENERATIVE_PREFIX + known)
        pos, riv = P.GENERATIVE_QUERIES[known]
        return EpochMargins(
            margins=[float(v) for v in _generative_margins(ctx, known)], known_query=known,
            background="the rival clauses " + "; ".join(riv) + " (caption decoder, after "
                       "the epoch's zero-shot stage)",
            default_threshold=rule.threshold, max_gap=rule.max_gap, scorer="generative",
            unit="nats",
            rule_source=(f"the checkpoint's generative rule for {known}, chosen on "
                         f"{cal.n_nights} validation nights"
                         if GENERATIVE_PREFIX + known in cal.localisation else
                         "plain rule (margin > 0; the checkpoint has no calibration for the "
                         "generative scorer)"))
    if scorer != "contrastive":
        raise UnsupportedScorerError(f"unknown scorer {scorer!r}: use 'contrastive' or 'generative'")
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
                         method="zero-shot: cos(epoch, query) - background (sleeplm.model.zeroshot."
                                "known_query_margins for known events); runs of epochs above "
                                "the threshold")
    if refusal:
        out.refusal = refusal
        return out
    if request.scorer == "generative" and known not in P.GENERATIVE_QUERIES:
        raise UnsupportedScorerError(
            f"the generative scorer knows {', '.join(P.GENERATIVE_QUERIES)} only; "
            f"'{query}' is not one of them: ask again without scorer='generative'")
    em = epoch_margins(ctx, query, request.scorer)
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
                                  mean_score=float(seg.mean()), peak_epoch=first + k,
                                  unit=em.unit))
    ivs.sort(key=lambda iv: (-iv.score, iv.span.first_epoch))
    best = int(idx[int(np.argmax(m))]) if m.size else None
    out.known_query, out.background, out.threshold = em.known_query, em.background, thr
    out.max_gap, out.scorer, out.unit = em.max_gap, em.scorer, em.unit
    if em.scorer == "generative":
        out.method = ("zero-shot, caption decoder: log p(clauses naming the event) - log p(rival "
                      "clauses) after the epoch's zero-shot stage phrase (sleeplm.model.zeroshot."
                      "generative_query_scores); runs of epochs above the threshold")
    out.rule_source = (em.rule_source if request.threshold is None else
                       f"threshold given by the caller; gap: {em.rule_source}")
    out.intervals, out.n_intervals_total = ivs[:request.limit], len(ivs)
    out.n_epochs_searched = int(m.size)
    out.best_epoch = best
    out.best_score = float(margins[best]) if best is not None else None
    weak_at = 0.0 if em.scorer == "generative" else WEAK_MARGIN
    out.weak = out.best_score is None or out.best_score < weak_at
    if out.weak:
        out.warnings.append(
            f"weak evidence: the best margin in the searched part is "
            f"{out.best_score if out.best_score is not None else float('nan'):.3f} (under "
            f"{weak_at} {em.unit}); the model barely separates '{query}' from its background here, "
            "so treat these intervals as unreliable")
    if not ivs:
        out.warnings.append(f"no epoch exceeds the threshold {thr:.3f}")
    if em.scorer == "contrastive" and known in P.GENERATIVE_QUERIES:
        hint = _generative_hint(ctx, known)
        if hint:
            out.warnings.append(hint)
    if known is None:
        out.warnings.append("free-text query: contrasted with the night's median similarity, "
                            "so scores are relative to this night, not absolute evidence")
    return out
