"""SleepLM's captions, and each event clause checked against the decoder's own evidence.

Greedy decoding writes one token at a time and commits to it: a small decoder trained on
shuffled clauses may name a hypopnea it only half believes, or write "no arousal" and, four
clauses later, "1 scored arousal". :func:`caption_epochs` decodes greedily, then checks every
clause that names an event of :data:`sleeplm.model.prompts.GENERATIVE_QUERIES` (hypopnea,
obstructive apnea, arousal) with the decoder's generative margin for that event
(:func:`sleeplm.model.zeroshot.clause_logprobs`, :func:`~sleeplm.model.zeroshot.generative_margins`: the
log-probability of the clauses naming the event minus that of its rival clauses, in nats,
right after the caption's own stage phrase):

* margin below the checkpoint's threshold: the clause (or the part of it joined by "and"
  that names the event) is withdrawn;
* margin at or above it: the clause stays, and a clause contradicting it ("no arousal" next
  to "1 scored arousal", "no respiratory events" next to "a hypopnea") is withdrawn.

The thresholds are a property of the checkpoint, chosen on the validation split by
``python -m training.calibrate`` (``captions`` in ``calibration.json``,
:mod:`sleeplm.model.calibration`); without them the greedy caption is returned unchanged. Nothing is
added to a caption: the check only withdraws what the decoder's evidence does not carry.

:func:`read_facts` reads the stage and the events back from a caption's words (the held-out
evaluation scores captions with it; the check reads the caption's stage with it).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, Field

from sleeplm.captions.modalities import join_clauses, split_clauses, withdraw_absent

__all__ = ["read_facts", "CHECKED_QUERIES", "CheckedCaption", "mentions", "withdraw",
           "check_captions", "caption_epochs"]

# ------------------------------------------------------------------------------ fact reader
_STAGE_RX = {
    "W": re.compile(r"\bwake\b|\bawake\b|\bstage w\b|\(w\)"),
    "N1": re.compile(r"\bn1\b"),
    "N2": re.compile(r"\bn2\b"),
    "N3": re.compile(r"\bn3\b|slow-wave sleep"),
    "R": re.compile(r"\brem\b|\(r\)|\bstage r\b|rapid-eye-movement sleep"),
}
_NO_RESP = re.compile(r"no respiratory events|no apnea or hypopnea( scored)?|"
                      r"breathing without scored events|normal breathing events-wise")
_NO_AROUSAL = re.compile(r"\bno arousals?( scored)?")
_NEGATED = re.compile(r"\bno arousals?( scored)?|no leg movements( on the leg emg)?|legs quiet|"
                      r"no phasic chin twitches")
_EVENT_RX = {
    "apnea": re.compile(r"\bapneas?\b"),
    "hypopnea": re.compile(r"\bhypopneas?\b"),
    "desaturation": re.compile(r"\bdesaturations?\b"),
    "arousal": re.compile(r"\barousals?\b"),
    "limb_movement": re.compile(r"limb movements?|\bplms?\b|leg movements?"),
}


def read_facts(text: str) -> dict:
    """Facts read back from a caption text with keyword rules: ``stage`` (the earliest stage
    phrase, None if none), ``events`` (sorted subset of apnea, hypopnea, desaturation,
    arousal, limb_movement mentioned, negated phrases such as "no arousal" removed first) and
    ``no_respiratory_events`` (bool)."""
    t = str(text).lower()
    hits = [(m.start(), s) for s, rx in _STAGE_RX.items() for m in [rx.search(t)] if m]
    stage = min(hits)[1] if hits else None
    no_resp = bool(_NO_RESP.search(t))
    rest = _NEGATED.sub(" ", _NO_RESP.sub(" ", t))
    events = sorted(e for e, rx in _EVENT_RX.items() if rx.search(rest))
    return {"stage": stage, "events": events, "no_respiratory_events": no_resp}


# ------------------------------------------------------------------------------ clauses
#: Generative query -> (a positive mention of its event, the clause that denies it).
CHECKED_QUERIES: dict[str, tuple[re.Pattern, re.Pattern]] = {
    "hypopnea": (re.compile(r"\bhypopneas?\b"), _NO_RESP),
    "obstructive_apnea": (re.compile(r"\bobstructive apneas?\b"), _NO_RESP),
    "arousal": (re.compile(r"\barousals?\b"), _NO_AROUSAL),
}


def mentions(part: str, query: str) -> bool:
    """True when ``part`` of a caption names ``query``'s event as present ("no arousal" does
    not name an arousal)."""
    low = _NEGATED.sub(" ", str(part).lower())
    return bool(CHECKED_QUERIES[query][0].search(low))


def _denies(part: str, query: str) -> bool:
    return bool(CHECKED_QUERIES[query][1].search(str(part).lower()))


def withdraw(text: str, rejected: Sequence[str] = (), confirmed: Sequence[str] = ()
             ) -> tuple[str, list[str]]:
    """``text`` without its mentions of the ``rejected`` queries' events and without the
    clauses that deny a ``confirmed`` query's event (queries of :data:`CHECKED_QUERIES`).

    A clause naming two events ("a hypopnea and an obstructive apnea") loses only the part
    that names a rejected one. Returns the new text and the withdrawn parts, in order.
    """
    clauses, style = split_clauses(text)
    kept, gone = [], []
    for clause in clauses:
        parts = clause.split(" and ")
        keep = [p for p in parts if not any(mentions(p, q) for q in rejected)]
        if any(_denies(clause, q) and not any(mentions(clause, q2) for q2 in CHECKED_QUERIES)
               for q in confirmed):
            keep = []
        gone += [p for p in parts if p not in keep]
        if keep:
            kept.append(" and ".join(keep))
    if not gone:
        return str(text).strip(), []
    return join_clauses(kept, style), gone


class CheckedCaption(BaseModel):
    """One generated caption after the check (:func:`check_captions`)."""

    text: str = Field(description="the caption after the check")
    greedy: str = Field(description="the decoder's greedy caption, before the check")
    stage: str | None = Field(None, description="the stage the clauses were scored after")
    margins: dict[str, float] = Field(default_factory=dict,
                                      description="generative margin (nats) of each event "
                                                  "the greedy caption named")
    withdrawn: list[str] = Field(default_factory=list, description="the parts taken out")
    absent: list[str] = Field(default_factory=list, description="parts withdrawn because they "
                                                                "describe a modality the "
                                                                "recording does not have")
    rejected: list[str] = Field(default_factory=list, description="queries whose mention was "
                                                                  "withdrawn (margin below "
                                                                  "its threshold)")


def check_captions(model: Any, tokenizer: Any, tokens: Any, valid: Any, texts: Sequence[str],
                   thresholds: Mapping[str, float], stages: Sequence[str | None] | None = None
                   ) -> list[CheckedCaption]:
    """Check greedy holistic ``texts`` of epochs with signal tokens ``tokens [B, N, d]`` /
    ``valid [B, N]`` (see the module docstring).

    Parameters
    ----------
    thresholds : mapping
        Query of :data:`CHECKED_QUERIES` -> margin threshold (nats); an unlisted query is not
        checked.
    stages : sequence, optional
        Stage to score after when a caption names none (e.g. the zero-shot staging); a
        caption with neither is returned unchecked.
    """
    from sleeplm.model import prompts as P
    from sleeplm.model.zeroshot import generative_query_scores

    if len(texts) != tokens.shape[0]:
        raise ValueError(f"{len(texts)} captions for {tokens.shape[0]} epochs")
    out = [CheckedCaption(text=str(t).strip(), greedy=str(t).strip()) for t in texts]
    queries = [q for q in thresholds if q in CHECKED_QUERIES and q in P.GENERATIVE_QUERIES]
    todo, named = [], {}
    for i, c in enumerate(out):
        stage = read_facts(c.greedy)["stage"] or (stages[i] if stages is not None else None)
        c.stage = stage if stage in P.STAGES else None
        named[i] = [q for q in queries if mentions(c.greedy, q)]
        if c.stage and named[i]:
            todo.append(i)
    if not todo:
        return out
    sel = np.asarray(todo)
    scores = generative_query_scores(model, tokenizer, tokens[sel], valid[sel],
                                     [out[i].stage for i in todo], queries)
    for j, i in enumerate(todo):
        c, margin = out[i], dict(zip(queries, scores[j]))
        c.margins = {q: round(float(margin[q]), 3) for q in named[i]}
        rejected = [q for q in named[i] if margin[q] < float(thresholds[q])]
        confirmed = [q for q in named[i] if q not in rejected]
        c.rejected = rejected
        c.text, c.withdrawn = withdraw(c.greedy, rejected, confirmed)
    return out


def caption_epochs(model: Any, tokenizer: Any, x: Any, mask: Any = None,
                   system: str = "holistic", max_len: int = 64,
                   thresholds: Mapping[str, float] | None = None,
                   channels: Sequence[str] | None = None) -> list[CheckedCaption]:
    """Caption a batch of epochs (``x [B, C, T]`` or context windows, ``mask`` as for
    ``SleepLM.encode_signal``): greedy decoding, then, for holistic captions and when
    ``thresholds`` are given (``Calibration.captions``), the check of :func:`check_captions`.
    The signals are encoded once for both.

    With ``channels`` (the names of the C input channels) and a ``mask``, every caption then
    loses the parts that describe a modality its epoch does not have (:func:`withdraw_absent`,
    listed in ``withdrawn`` and ``absent``), whatever the system asked for.
    """
    out = _caption_epochs(model, tokenizer, x, mask, system, max_len, thresholds)
    if channels is None or mask is None:
        return out
    m = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask, dtype=bool)
    m = m.reshape(m.shape[0], -1, m.shape[-1]).any(axis=1)  # context windows: any epoch
    for c, row in zip(out, m):
        present = [ch for ch, ok in zip(channels, row) if ok]
        c.text, gone = withdraw_absent(c.text, present)
        c.absent = gone
        c.withdrawn += gone
    return out


def _caption_epochs(model: Any, tokenizer: Any, x: Any, mask: Any, system: str, max_len: int,
                    thresholds: Mapping[str, float] | None) -> list[CheckedCaption]:
    import torch

    from sleeplm.model import prompts as P
    from sleeplm.model.zeroshot import class_embeddings

    with torch.inference_mode():
        emb, tokens, valid = model.encode_signal(x, mask)
        ids = model.generate_from_tokens(tokens, valid, system=system, max_len=max_len)
        texts = [t.strip() for t in tokenizer.decode_batch(ids.cpu())]
        if system != "holistic" or not thresholds:
            return [CheckedCaption(text=t, greedy=t) for t in texts]
        stages: list[str | None] = [None] * len(texts)
        if any(read_facts(t)["stage"] is None for t in texts):  # zero-shot stage as fallback
            cls = class_embeddings(model, tokenizer, P.STAGE_PROMPTS, list(P.STAGES))
            best = (emb.float().cpu().numpy() @ np.asarray(cls).T).argmax(1)
            stages = [P.STAGES[int(k)] for k in best]
        return check_captions(model, tokenizer, tokens, valid, texts, thresholds, stages)
