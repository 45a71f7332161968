"""retrieve: similar epochs or nights across the library.

The query vector is a SleepLM embedding: a text's (normalised mean of its prompt embedding,
:func:`sleeplm.model.zeroshot.class_embeddings`), an epoch's, the normalised mean of an interval's
epochs, or the night embedding; hits come from :class:`sleeplm.library.index.EmbeddingIndex` (cosine
similarity, best first), with filters on stage and profile and the current patient left out by
default. When the current patient is kept, the query's own epochs (or night) are dropped from the
hits, so the first hit is never the query itself.

**Night to night** (``source="night"``, ``level="night"``) scores the *centred* cosine: the
cosine of the two nights' deviations from the mean of every night in the index
(``EmbeddingIndex.query_nights(centred=True)``). A night's embedding is the mean of its epochs,
so its raw direction is mostly what every night shares (a typical stage mix, heart rate and
SpO2 level); the deviation is what sets it apart (frequent apneas, periodic leg movements),
and it decides which nights come first. Text queries keep the plain cosine.

**By a measurement** (``source="measure"``): the library's nights ranked by one measure of
their clinical facts ("nights with lots of leg kicks": the PLMS index, highest first), from
each study's cached summary, with no embedding involved; ``score`` is then the measure's
value in its unit.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sleeplm.library.patients import validate_patient_id
from sleeplm.recording import STAGES
from tools.common import Span, TimeSelection, resolve_selection
from tools.context import ToolContext
from tools.errors import EmptyQueryError, TimeRangeError, UnknownMeasureError

__all__ = ["WEAK_TEXT_SIMILARITY", "RetrieveInput", "RetrieveOutput", "RetrievedItem", "rank_by_measure",
           "retrieve"]

#: A best text-to-signal cosine under this is reported as weak.
WEAK_TEXT_SIMILARITY = 0.1


class RetrieveInput(BaseModel):
    """Arguments of :func:`retrieve`.

    Attributes
    ----------
    source : {"text", "epoch", "interval", "night"}
        What the query is: words, an epoch or interval of the current patient, or its night.
    text : str or None
        The words (``source="text"``).
    selection : TimeSelection or None
        The epoch or interval (``source="epoch"`` / ``"interval"``).
    level : {"epoch", "night"}
        Return similar epochs or similar nights.
    k : int
        Number of hits.
    measure : str or None
        ``source="measure"``: the name of a report measure (``plmi``, ``ahi_3a``, ...).
    lowest_first : bool
        ``source="measure"``: rank the lowest values first (default: the highest).
    stage : str or None
        Only epochs of this stage (W, N1, N2, N3, R; epoch level).
    profile : str or None
        Only nights/epochs of this profile (e.g. ``"osa_severe"``).
    exclude_current_patient : bool
        Leave the current patient out (default True).
    """

    model_config = ConfigDict(extra="forbid")

    source: Literal["text", "epoch", "interval", "night", "measure"] = Field(
        description="text, an epoch or interval of this patient, this whole night, or a "
                    "measure to rank the library's nights by")
    text: str | None = Field(default=None, description="the words, for source='text'")
    selection: TimeSelection | None = Field(default=None,
                                            description="the epoch or interval of this patient")
    level: Literal["epoch", "night"] = Field(default="epoch",
                                             description="return similar epochs or nights")
    k: int = Field(default=5, ge=1, le=100, description="number of hits")
    stage: str | None = Field(default=None, description="only epochs of this stage")
    profile: str | None = Field(default=None, description="only this profile")
    exclude_current_patient: bool = Field(default=True,
                                          description="leave the current patient out")
    like_patient: str | None = Field(
        default=None, description="source='night': use this library patient's night as the "
                                  "query instead of the current one ('nights like patient X')")
    measure: str | None = Field(
        default=None, description="source='measure': the report measure to rank nights by, "
                                  "highest first (e.g. 'plmi', 'ahi_3a', 'arousal_index')")
    lowest_first: bool = Field(default=False, description="source='measure': lowest first")


class RetrievedItem(BaseModel):
    """One hit.

    Attributes
    ----------
    id : str
        ``patient/night/epoch`` or ``patient/night``.
    kind : {"epoch", "night"}
    patient, night, profile : str
    score : float
        Similarity with the query, -1..1: the cosine (``unit="cosine"``), or for night-to-night
        queries the cosine of both nights' deviations from the library's mean night
        (``unit="centred cosine"``); for ``source="measure"`` the measure's value, in its unit
        (``unit``, e.g. ``events/h``).
    unit : str
    epoch : int or None
    start_s : float or None
        Seconds from that recording's start.
    clock, stage : str
    n_epochs : int or None
    extra : dict
        Night summary fields (``ahi_3a`` in events/h, ``tst_min`` in min, ...); for
        ``source="measure"``, ``measure``: the measure ranked by (name, label, value, unit),
        so a value quoted after its label is checked as that measure's.
    """

    id: str
    kind: Literal["epoch", "night"]
    patient: str
    night: str
    profile: str = ""
    score: float
    unit: str = "cosine"
    epoch: int | None = None
    start_s: float | None = None
    clock: str = ""
    stage: str = ""
    n_epochs: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class RetrieveOutput(BaseModel):
    """Result of :func:`retrieve`.

    Attributes
    ----------
    patient : str
        The current patient.
    source, level : str
    query : str
        What the query vector was made from.
    query_span : Span or None
        The epochs of the query (epoch / interval / night sources).
    hits : list of RetrievedItem
        Best first.
    filters : dict
    weak : bool
    warnings : list of str
    """

    patient: str
    source: str
    level: str
    query: str
    query_span: Span | None = None
    hits: list[RetrievedItem] = Field(default_factory=list)
    filters: dict[str, Any] = Field(default_factory=dict)
    weak: bool = False
    warnings: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        """A short text for the LLM."""
        if self.source == "measure":
            lines = [f"{len(self.hits)} night(s) of the library ranked by {self.query}"
                     + (f" (filters {self.filters})" if self.filters else "") + ":"]
            lines += [f"- {h.patient} ({h.profile or 'profile unknown'}"
                      + ("; the current patient" if h.patient == self.patient else "")
                      + f"): {h.extra.get('measure', {}).get('label', '')} "
                        f"{_format_value(h.score, h.unit)}"
                      for h in self.hits]
            return "\n".join(lines + [f"Warning: {w}" for w in self.warnings])
        lines = [f"{len(self.hits)} {self.level}(s) most similar to {self.query}"
                 + (f" (filters {self.filters})" if self.filters else "") + ":"]
        for h in self.hits:
            if h.kind == "epoch":
                lines.append(f"- {h.patient} epoch {h.epoch} ({h.clock or f'{h.start_s:.0f} s'}, "
                             f"{h.stage}, {h.profile or 'profile unknown'}): cos {h.score:.3f}")
            else:
                lines.append(f"- {h.patient} ({h.profile or 'profile unknown'}, {h.n_epochs} "
                             f"epochs): {'centred ' if h.unit != 'cosine' else ''}cos "
                             f"{h.score:.3f}")
        lines += [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _format_value(value: float, unit: str) -> str:
    """A measure's value as the reports write it ("45.2 events/h", "23")."""
    from sleeplm.clinical.measure import Measure

    return Measure(name="v", label="v", value=value, unit=unit).format()


def rank_by_measure(ctx: ToolContext, request: RetrieveInput) -> RetrieveOutput:
    """The library's nights ranked by one measure of their clinical facts (``source="measure"``
    of :func:`retrieve`): each study's cached summary, no embedding.

    Raises
    ------
    EmptyQueryError
        No measure named.
    UnknownMeasureError
        No study of the library has a measure of that name (the message lists some).
    """
    name = (request.measure or "").strip()
    if not name:
        raise EmptyQueryError("ranking nights needs a measure, e.g. measure='plmi' (PLMS index) "
                              "or 'ahi_3a' (AHI)")
    p = ctx.processed()
    hits: list[RetrievedItem] = []
    left_out: list[str] = []
    known: set[str] = set()
    for pid in ctx.library.patients():
        if request.exclude_current_patient and pid == p.patient:
            continue
        study = ctx.library.study(pid)
        if request.profile and study.profile != request.profile.strip():
            continue
        facts = ctx.processed(pid).facts
        known |= {m.name for ms in facts.sections.values() for m in ms}
        try:
            m = facts.measure(name)
        except KeyError:
            left_out.append(f"{pid} (no {name})")
            continue
        if m.value is None or not np.isfinite(m.value):
            left_out.append(f"{pid} ({m.reason or 'not computable'})")
            continue
        hits.append(RetrievedItem(id=f"{pid}/night1", kind="night", patient=pid, night="night1",
                                  profile=study.profile, score=float(m.value), unit=m.unit,
                                  n_epochs=ctx.processed(pid).n_epochs,
                                  extra={"measure": {"name": m.name, "label": m.label,
                                                     "value": float(m.value), "unit": m.unit}}))
    if not hits and name not in known:
        raise UnknownMeasureError(f"no measure named {name!r} in the library's facts; some "
                                  "that are: " + ", ".join(sorted(known)[:25]))
    hits.sort(key=lambda h: h.score, reverse=not request.lowest_first)
    label = next((h.extra["measure"]["label"] for h in hits), name)
    out = RetrieveOutput(patient=p.patient, source="measure", level="night",
                         query=f"{label} ({'lowest' if request.lowest_first else 'highest'} "
                               "first)", hits=hits[:request.k],
                         filters={k: v for k, v in (("profile", request.profile),) if v})
    if left_out:
        out.warnings.append("left out: " + ", ".join(left_out))
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def retrieve(ctx: ToolContext, request: RetrieveInput) -> RetrieveOutput:
    """Similar epochs or nights across the library.

    Parameters
    ----------
    ctx : ToolContext
        Needs ``index`` (see :func:`tools.context.index_library`).
    request : RetrieveInput

    Returns
    -------
    RetrieveOutput
        Hits best first with their cosine similarity, epoch, clock time, stage and profile.

    Raises
    ------
    EmptyQueryError
        ``source="text"`` with blank text.
    TimeRangeError
        The epoch or interval lies outside the night, or is missing.
    ValueError
        An unknown stage filter.
    NoIndexError
        The context has no index.
    """
    if request.source == "measure":
        return rank_by_measure(ctx, request)
    index = ctx.require_index()
    p = ctx.processed()
    span: Span | None = None
    own_epochs: set[int] = set()
    if request.source == "text":
        text = (request.text or "").strip()
        if not text:
            raise EmptyQueryError("retrieval from text needs a non-empty text, e.g. 'REM sleep "
                                  "with many rapid eye movements'")
        vec = ctx.class_vectors({"q": [text]}, ["q"])[0]
        described = f"the text '{text}'"
    elif request.source == "night":
        q = p
        if request.like_patient and request.like_patient != p.patient:
            validate_patient_id(request.like_patient)
            q = ctx.library.open(request.like_patient, progress=False)  # unknown: lists ids
        vec = np.asarray(q.night_embedding, dtype=np.float32)
        described = f"the night of {q.patient}"
    else:
        if request.selection is None or request.selection.is_night:
            raise TimeRangeError(f"source='{request.source}' needs a selection (an epoch, "
                                 "epochs [first, last] or start/end times)")
        sel = resolve_selection(p, request.selection)
        span = sel.span
        a, b = span.first_epoch, span.last_epoch
        vec = _unit(np.asarray(p.epoch_embeddings[a:b + 1], dtype=np.float32).mean(0))
        own_epochs = set(range(a, b + 1))
        described = f"{p.patient} {span.describe()}"
    where: dict[str, Any] = {}
    if request.stage:
        st = request.stage.strip().upper()
        st = {"REM": "R", "WAKE": "W"}.get(st, st)
        if st not in STAGES:
            raise ValueError(f"unknown stage {request.stage!r}: use one of {STAGES}")
        if request.level == "night":
            raise ValueError("a stage filter applies to epochs; use level='epoch'")
        where["stage"] = st
    if request.profile:
        where["profile"] = request.profile.strip()
    filt = where if len(where) <= 1 else {"$and": [{k: v} for k, v in where.items()]}
    exclude = p.patient if request.exclude_current_patient else None
    extra_k = 0 if exclude else (len(own_epochs) if request.level == "epoch" else 1)
    if request.source == "night" and request.level == "night" and request.like_patient:
        extra_k += 1  # the query night itself comes back first and is skipped
    centred = request.source == "night" and request.level == "night"
    if request.level == "epoch":
        hits = index.query_epochs(vec, k=request.k + extra_k, where=filt or None,
                                  exclude_patient=exclude)
    else:
        hits = index.query_nights(vec, k=request.k + extra_k, where=filt or None,
                                  exclude_patient=exclude, centred=centred)
    items = []
    for h in hits:
        if h.patient == p.patient and not exclude:
            if request.level == "epoch" and h.epoch in own_epochs:
                continue
            if request.level == "night" and request.source == "night":
                continue
        if request.source == "night" and request.level == "night" and \
                h.patient == (request.like_patient or p.patient):
            continue  # the query night itself
        items.append(RetrievedItem(id=h.id, kind=h.kind, patient=h.patient, night=h.night,
                                   profile=h.profile, score=float(h.score),
                                   unit="centred cosine" if centred else "cosine",
                                   epoch=h.epoch,
                                   start_s=h.start_s, clock=h.clock, stage=h.stage,
                                   n_epochs=h.n_epochs, extra=dict(h.extra)))
    out = RetrieveOutput(patient=p.patient, source=request.source, level=request.level,
                         query=described, query_span=span, hits=items[:request.k],
                         filters={**where, **({"exclude_patient": exclude} if exclude else {})})
    if not out.hits:
        out.warnings.append("no match: the index holds nothing that passes the filters")
        out.weak = True
    elif request.source == "text" and out.hits[0].score < WEAK_TEXT_SIMILARITY:
        out.weak = True
        out.warnings.append(f"weak match: the best text-to-signal cosine is "
                            f"{out.hits[0].score:.3f} (under {WEAK_TEXT_SIMILARITY})")
    return out
