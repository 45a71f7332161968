"""Zero-shot scoring with SleepLM: text prompts against epoch embeddings.

One code path for the held-out evaluation (:mod:`training.evaluate`) and the assistant's tools:
both embed prompts with :func:`class_embeddings`, score epochs with cosine similarity or with
the query-versus-absence margin of :func:`localisation_margins`, turn per-epoch decisions into
intervals with :func:`to_intervals`, and estimate a night-level event index with
:func:`night_event_index`. Nothing here was trained as a label: the prompts are free text
(:mod:`sleeplm.model.prompts`).

Embeddings are unit vectors (``SleepLM.encode_signal`` / ``encode_text`` normalise them), so a
dot product is a cosine similarity in [-1, 1].
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["embed_texts", "class_embeddings", "stage_scores", "localisation_margins",
           "known_query_margins", "any_margins", "to_intervals", "rule_intervals",
           "count_events", "night_event_index", "clause_logprobs", "generative_margins",
           "generative_query_scores"]


def embed_texts(model: Any, tokenizer: Any, texts: Sequence[str], batch: int = 256
                ) -> np.ndarray:
    """Unit text embeddings ``[len(texts), E]`` (float32) from SleepLM's text tower.

    Parameters
    ----------
    model : SleepLM
        A loaded model (:func:`sleeplm.model.network.load_model`).
    tokenizer : CaptionTokenizer
        The checkpoint's tokenizer (``tokenizer.json``).
    texts : sequence of str
        Free text; each is cut at the model's ``max_text_len`` tokens.
    """
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            ids = tokenizer.encode_batch(list(texts[i:i + batch]), max_len=model.cfg.max_text_len)
            out.append(model.encode_text(ids).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.embed_dim), np.float32)


def class_embeddings(model: Any, tokenizer: Any, table: Mapping[str, Sequence[str]],
                     classes: Sequence[str]) -> np.ndarray:
    """One unit vector per class ``[len(classes), E]``: the normalised mean of the embeddings
    of that class's prompts (``table[class]``, at least one each)."""
    rows = []
    for c in classes:
        prompts = list(table[c])
        if not prompts:
            raise ValueError(f"class {c!r} has no prompt")
        e = embed_texts(model, tokenizer, prompts).mean(0)
        rows.append(e / max(float(np.linalg.norm(e)), 1e-12))
    return np.stack(rows).astype(np.float32)


def stage_scores(emb: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Cosine of every epoch ``emb [N, E]`` with every class vector ``[K, E]``: ``[N, K]``."""
    return np.asarray(emb) @ np.asarray(classes).T


def localisation_margins(emb: np.ndarray, query: np.ndarray, background: np.ndarray
                         ) -> np.ndarray:
    """Zero-shot per-epoch evidence for a query: ``cos(epoch, query) - cos(epoch, background)``
    (unit vectors; ``emb [N, E]``, ``query``/``background`` ``[E]`` or ``[Q, E]``, row i of the
    query paired with row i of the background). Positive means the epoch reads more like the
    query than like the query's absence."""
    return np.asarray(emb) @ np.asarray(query).T - np.asarray(emb) @ np.asarray(background).T


def known_query_margins(emb: np.ndarray, embed: Callable[[Mapping[str, Sequence[str]],
                                                          Sequence[str]], np.ndarray],
                        keys: Sequence[str]) -> np.ndarray:
    """Margins ``[N, len(keys)]`` of the known localisation queries
    (:data:`sleeplm.model.prompts.LOCALISATION_QUERIES`): ``cos(epoch, query)`` minus the highest of
    ``cos(epoch, absence)`` (:data:`~sleeplm.model.prompts.LOCALISATION_BACKGROUND`) and
    ``cos(epoch, rival query)`` (:data:`~sleeplm.model.prompts.LOCALISATION_RIVALS`). ``embed(table,
    classes)`` gives class vectors (:func:`class_embeddings` with a model and tokenizer, or a
    cache of them): the held-out evaluation and the ``localize`` tool both score through
    here."""
    from sleeplm.model import prompts as P

    emb = np.asarray(emb)
    out = np.zeros((emb.shape[0], len(keys)), dtype=np.float32)
    for j, key in enumerate(keys):
        q = embed(P.LOCALISATION_QUERIES, [key])[0]
        alts = [embed(P.LOCALISATION_BACKGROUND, [key])[0]]
        alts += [embed(P.LOCALISATION_QUERIES, [r])[0] for r in P.LOCALISATION_RIVALS.get(key, ())]
        out[:, j] = emb @ q - np.max(np.stack([emb @ a for a in alts]), 0)
    return out


def any_margins(emb: np.ndarray, queries: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Per-epoch evidence that **any** of several queries fits: ``max_k cos(epoch, query_k) -
    cos(epoch, background)`` (``queries [K, E]``, ``background [E]``): one prompt class per kind
    of event (obstructive, central, mixed apnea, hypopnea) instead of the mean of their
    prompts, which lies between the kinds and fits none of them well."""
    e = np.asarray(emb)
    return (e @ np.asarray(queries).T).max(1) - e @ np.asarray(background)


def to_intervals(epochs: Sequence[int], positive: Sequence[bool], max_gap: int = 0
                 ) -> list[tuple[int, int]]:
    """Runs of consecutive positive epoch numbers as inclusive ``(first, last)`` intervals.

    Parameters
    ----------
    epochs : sequence of int
        Epoch numbers (any order; sorted here).
    positive : sequence of bool
        Whether each epoch is positive.
    max_gap : int
        Runs separated by at most this many epoch numbers that are not positive merge into
        one interval (0: only consecutive epochs form a run).
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0 epochs, got {max_gap}")
    out: list[list[int]] = []
    for e, p in sorted(zip((int(e) for e in epochs), (bool(p) for p in positive))):
        if not p:
            continue
        if out and e <= out[-1][1] + 1 + max_gap:
            out[-1][1] = e
        else:
            out.append([e, e])
    return [tuple(x) for x in out]


def rule_intervals(epochs: Sequence[int], margins: Sequence[float], rule: Any = None
                   ) -> list[tuple[int, int]]:
    """Intervals of epochs whose margin is above ``rule.threshold``, runs closer than
    ``rule.max_gap`` quiet epochs merged (:class:`sleeplm.model.calibration.IntervalRule`; None:
    margin > 0, consecutive epochs only)."""
    thr = float(getattr(rule, "threshold", 0.0))
    gap = int(getattr(rule, "max_gap", 0))
    return to_intervals(epochs, np.asarray(margins, dtype=float) > thr, max_gap=gap)


def count_events(intervals: Sequence[tuple[int, int]], epochs_per_event: float = 0.0) -> int:
    """Events in inclusive epoch intervals: each interval counts ``max(1, round(length /
    epochs_per_event))`` (0: one per interval)."""
    if epochs_per_event <= 0:
        return len(intervals)
    return int(sum(max(1, round((b - a + 1) / epochs_per_event)) for a, b in intervals))


def night_event_index(margins: np.ndarray, epochs: np.ndarray, asleep: np.ndarray,
                      epoch_sec: float = 30.0, rule: Any = None) -> float:
    """Zero-shot event index of one night (events/h of predicted sleep): intervals of epochs
    with an event margin above the rule's threshold (:func:`rule_intervals`), in
    predicted-sleep epochs only, counted by :func:`count_events`, per hour of predicted sleep.
    NaN when no epoch is asleep.

    Parameters
    ----------
    margins : array [N]
        Event margin per epoch (:func:`any_margins`; cosine units).
    epochs : array [N]
        Epoch numbers in the night (consecutive numbers form one run).
    asleep : array of bool [N]
        Epochs the (zero-shot) staging calls sleep.
    epoch_sec : float
        Epoch length (s).
    rule : sleeplm.model.calibration.EventIndexRule, optional
        Threshold, gap and epochs per event chosen on validation nights
        (:mod:`sleeplm.model.calibration`); None: margin > 0, consecutive epochs, one event per run.
    """
    asleep = np.asarray(asleep, dtype=bool)
    sleep_h = float(np.sum(asleep)) * epoch_sec / 3600.0
    if sleep_h <= 0:
        return float("nan")
    m = np.where(asleep, np.asarray(margins, dtype=float), -np.inf)
    ivs = rule_intervals(epochs, m, rule)
    return count_events(ivs, float(getattr(rule, "epochs_per_event", 0.0))) / sleep_h


def clause_logprobs(model: Any, tokenizer: Any, tokens: Any, valid: Any, stages: Sequence[str],
                    clauses: Sequence[str], system: str = "holistic") -> np.ndarray:
    """Caption-decoder log-probabilities ``[B, len(clauses)]`` (nats) of each clause written
    as the second clause of a caption: ``"<Stage phrase>; <clause>;"``, the stage phrase the
    captioner writes for ``stages[b]`` (the first of :data:`sleeplm.model.prompts.STAGE_PROMPTS`).

    The stage phrase is the same for every clause of an epoch, so differences between clauses
    are differences of the clause (and its closing ``;``) given the signal: a CoCa-style
    generative score, no label trained.

    Parameters
    ----------
    model : SleepLM
    tokenizer : CaptionTokenizer
    tokens, valid : torch.Tensor
        Signal tokens ``[B, N, d]`` and their mask ``[B, N]`` from ``model.encode_signal``.
    stages : sequence of str
        One AASM stage per epoch (W, N1, N2, N3, R), e.g. the zero-shot staging.
    clauses : sequence of str
        Clause texts in the captions' wording.
    system : str
        Caption system token (default holistic).
    """
    import torch

    from sleeplm.model.prompts import STAGE_PROMPTS

    if len(stages) != tokens.shape[0]:
        raise ValueError(f"{len(stages)} stages for {tokens.shape[0]} epochs")
    if not clauses:
        raise ValueError("no clause to score")
    cache: dict[str, Any] = {}
    rows = []
    for s in stages:
        if s not in cache:
            phrase = STAGE_PROMPTS[str(s)][0].rstrip(".")  # the captioner's first stage phrase
            cache[s] = tokenizer.encode_batch([f"{phrase}; {c};" for c in clauses],
                                              max_len=model.cfg.max_text_len)
        rows.append(cache[s])
    width = max(r.shape[1] for r in rows)
    ids = torch.stack([torch.nn.functional.pad(r, (0, width - r.shape[1]),
                                               value=tokenizer.pad_id) for r in rows])
    B, H, L = ids.shape
    ids = ids.view(B * H, L).to(tokens.device)
    inp, tgt = ids[:, :-1], ids[:, 1:]
    sys_idx = model._system(system, B * H, tokens.device)
    with torch.inference_mode():
        logits = model.decoder(inp, sys_idx, tokens.repeat_interleave(H, 0),
                               valid.repeat_interleave(H, 0))
        lp = torch.log_softmax(logits.float(), -1).gather(-1, tgt[..., None])[..., 0]
        lp = lp.masked_fill((tgt == tokenizer.pad_id) | (tgt == tokenizer.eos_id), 0.0)
    return lp.sum(-1).view(B, H).cpu().numpy().astype(np.float32)


def generative_margins(logp: np.ndarray, clauses: Sequence[str], positive: Sequence[str],
                       rivals: Sequence[str]) -> np.ndarray:
    """Per-epoch evidence ``log sum_pos p - log sum_rival p`` (nats) from
    :func:`clause_logprobs` columns named by ``clauses``: positive means the decoder would
    rather write a clause that mentions the event than one of its rivals."""
    col = {c: i for i, c in enumerate(clauses)}
    missing = [c for c in (*positive, *rivals) if c not in col]
    if missing:
        raise KeyError(f"clauses not scored: {missing}")

    def lse(names):
        a = np.asarray(logp, dtype=np.float64)[:, [col[c] for c in names]]
        m = a.max(1, keepdims=True)
        return m[:, 0] + np.log(np.exp(a - m).sum(1))

    return (lse(positive) - lse(rivals)).astype(np.float32)


def generative_query_scores(model: Any, tokenizer: Any, tokens: Any, valid: Any,
                            stages: Sequence[str], queries: Sequence[str]) -> np.ndarray:
    """Caption-decoder evidence ``[B, len(queries)]`` (nats) for generative queries
    (:data:`sleeplm.model.prompts.GENERATIVE_QUERIES`): :func:`clause_logprobs` of every clause the
    queries name, after each epoch's stage phrase ``stages[b]``, then
    :func:`generative_margins` per query. The held-out evaluation and the ``localize`` tool
    score through here."""
    from sleeplm.model.prompts import GENERATIVE_QUERIES

    unknown = [q for q in queries if q not in GENERATIVE_QUERIES]
    if unknown:
        raise ValueError(f"no generative clauses for {unknown}: known are "
                         f"{sorted(GENERATIVE_QUERIES)}")
    clauses = list(dict.fromkeys(c for q in queries for part in GENERATIVE_QUERIES[q]
                                 for c in part))
    if tokens.shape[0] == 0:
        return np.zeros((0, len(queries)), np.float32)
    logp = clause_logprobs(model, tokenizer, tokens, valid, stages, clauses)
    return np.stack([generative_margins(logp, clauses, *GENERATIVE_QUERIES[q])
                     for q in queries], 1).astype(np.float32)
