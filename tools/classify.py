"""classify: zero-shot (labels in words) or few-shot (example epochs) probabilities.

Zero-shot: each label is a class vector from :func:`sleeplm.model.zeroshot.class_embeddings`; a label
that names an AASM stage ("REM sleep", "N2", "wake", "deep sleep", ...) uses that stage's
:data:`sleeplm.model.prompts.STAGE_PROMPTS`, the very class vectors of the evaluation's zero-shot
staging, any other label is embedded as written. Few-shot: each label's prototype is the
normalised mean embedding of its example epochs (the evaluation's prototype classifier).

The target (an epoch, a range or the night) is scored by
:func:`sleeplm.model.zeroshot.stage_scores` (cosine) of its embedding: the epoch's own, the
normalised mean of a range's epochs, the night embedding for a whole night. Probabilities are
``softmax(logit_scale * cosine)`` over the labels, with the model's learned contrastive
temperature. For a range or a night each epoch's own best label is counted too.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sleeplm.model import prompts as P
from sleeplm.model.zeroshot import stage_scores
from tools.common import (
    Requirement,
    Span,
    TimeSelection,
    check_requirements,
    requirements_for,
    resolve_selection,
)
from tools.context import ToolContext
from tools.errors import EmptyQueryError, TimeRangeError

__all__ = [
    "STAGE_ALIASES",
    "WEAK_GAP",
    "ClassifyInput",
    "ClassifyOutput",
    "LabelScore",
    "classify",
    "stage_of_label",
]

#: A top-1 minus top-2 cosine gap below this is reported as a weak decision.
WEAK_GAP = 0.02
#: Label wordings that name an AASM stage (compared lower-case, punctuation removed).
STAGE_ALIASES: dict[str, tuple[str, ...]] = {
    "W": ("w", "wake", "awake", "wakefulness", "stage w", "wake w"),
    "N1": ("n1", "stage n1", "n1 sleep", "stage 1", "stage 1 sleep", "light sleep n1",
           "light sleep"),
    "N2": ("n2", "stage n2", "n2 sleep", "stage n2 sleep", "stage 2", "stage 2 sleep"),
    "N3": ("n3", "stage n3", "n3 sleep", "deep sleep", "slow wave sleep", "sws", "stage 3",
           "deep slow wave sleep", "deep slow wave sleep n3"),
    "R": ("r", "rem", "rem sleep", "stage r", "rem sleep r", "rapid eye movement sleep",
          "paradoxical sleep", "stage rem"),
}


def _key(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower().replace("-", " ")).split())


def stage_of_label(label: str) -> str | None:
    """The AASM stage a label names (``"REM sleep"`` -> ``"R"``), or None."""
    k = _key(label)
    for stage, names in STAGE_ALIASES.items():
        if k in names:
            return stage
    return None


class ClassifyInput(BaseModel):
    """Arguments of :func:`classify`.

    Attributes
    ----------
    labels : list of str
        Zero-shot labels in words (at least two), e.g. ``["REM sleep", "N2"]``.
    examples : dict of str to list of int, optional
        Few-shot: label -> example epochs of this patient (at least two labels); replaces
        ``labels``.
    target : TimeSelection or None
        What to classify: an epoch, a range or (default) the whole night.
    """

    model_config = ConfigDict(extra="forbid")

    labels: list[str] = Field(default_factory=list, description="labels in words (>= 2)")
    examples: dict[str, list[int]] | None = Field(
        default=None, description="few-shot: label -> example epoch indices of this patient")
    target: TimeSelection | None = Field(default=None, description="epoch, range or night")


class LabelScore(BaseModel):
    """One label's score.

    Attributes
    ----------
    label : str
    probability : float
        Softmax over the labels of ``logit_scale * cosine`` (unit: probability, 0-1).
    cosine : float
        Cosine similarity of the target with the label's class vector.
    epochs_won : int
        Epochs of the target whose own best label this is.
    class_source : str
        ``"STAGE_PROMPTS[R]"``, ``"label text"`` or ``"prototype of epochs [...]"``.
    """

    label: str
    probability: float
    cosine: float
    epochs_won: int = 0
    class_source: str = ""
    unit: str = "probability"


class ClassifyOutput(BaseModel):
    """Result of :func:`classify`.

    Attributes
    ----------
    patient : str
    mode : {"zero-shot", "few-shot"}
    scope : {"epoch", "range", "night"}
    span : Span
        The target's epochs, times and stages.
    scores : list of LabelScore
        Best first.
    per_epoch : list of str
        Each target epoch's best label (epoch ``span.first_epoch + i``).
    logit_scale : float
        The model's contrastive temperature used in the softmax.
    weak : bool
        Top-1 and top-2 cosines differ by less than :data:`WEAK_GAP`.
    warnings : list of str
    refusal : str or None
        The night lacks the signals the labels need; nothing is scored.
    requirements : list of Requirement
    method : str
    """

    patient: str
    mode: Literal["zero-shot", "few-shot"]
    scope: Literal["epoch", "range", "night"]
    span: Span | None = None
    scores: list[LabelScore] = Field(default_factory=list)
    per_epoch: list[str] = Field(default_factory=list)
    logit_scale: float | None = None
    weak: bool = False
    warnings: list[str] = Field(default_factory=list)
    refusal: str | None = None
    requirements: list[Requirement] = Field(default_factory=list)
    method: str = ""

    def summary(self) -> str:
        """A short text for the LLM."""
        if self.refusal:
            return f"Cannot classify: {self.refusal}"
        where = self.span.describe() if self.span else self.scope
        lines = [f"{self.mode} classification of {where}:"]
        # "best in 0 epochs" was read by a 1.5 B model as "the best match in epoch 0"
        total = sum(s.epochs_won for s in self.scores)
        lines += [f"- {s.label}: p={s.probability:.2f} (cos {s.cosine:.3f}"
                  + (f", the top label of {s.epochs_won} of {total} epochs"
                     if self.scope != "epoch" else "") + ")"
                  for s in self.scores]
        lines += [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def classify(ctx: ToolContext, request: ClassifyInput) -> ClassifyOutput:
    """Zero-shot or few-shot label probabilities for an epoch, a range or the night.

    Parameters
    ----------
    ctx : ToolContext
    request : ClassifyInput

    Returns
    -------
    ClassifyOutput
        Labels best first with probability (0-1) and cosine; ``weak`` and ``warnings`` when the
        decision is close; ``refusal`` when the night lacks the needed signals.

    Raises
    ------
    EmptyQueryError
        Fewer than two distinct non-blank labels (or few-shot labels), or a label without
        examples.
    TimeRangeError
        The target or an example epoch lies outside the night.
    """
    p = ctx.processed()
    emb = np.asarray(p.epoch_embeddings, dtype=np.float32)
    few = request.examples is not None
    if few:
        labels = [str(k).strip() for k in request.examples if str(k).strip()]
    else:
        labels = list(dict.fromkeys(s.strip() for s in request.labels if s and s.strip()))
    if len(labels) < 2:
        raise EmptyQueryError("give at least two distinct labels to choose between (e.g. "
                              "['REM sleep', 'N2 sleep']), or examples for two or more labels")
    sel = resolve_selection(p, request.target)
    a, b = sel.span.first_epoch, sel.span.last_epoch
    mode: Literal["zero-shot", "few-shot"] = "few-shot" if few else "zero-shot"
    out = ClassifyOutput(patient=p.patient, mode=mode, scope=sel.scope, span=sel.span)
    if not few:
        needs = requirements_for(" ; ".join(labels))
        out.requirements, refusal = check_requirements(p, needs)
        if refusal:
            out.refusal = refusal
            return out
        stages = [stage_of_label(lab) for lab in labels]
        table, sources = {}, []
        for lab, st in zip(labels, stages):
            table[lab] = list(P.STAGE_PROMPTS[st]) if st else [lab]
            sources.append(f"STAGE_PROMPTS[{st}]" if st else "label text")
        classes = ctx.class_vectors(table, labels)
        out.method = ("zero-shot: class vector = normalised mean text embedding of the label's "
                      "prompts (sleeplm.model.zeroshot.class_embeddings); softmax(logit_scale * cos)")
    else:
        rows, sources = [], []
        n = p.n_epochs
        for lab in labels:
            eps = sorted({int(e) for e in request.examples[lab]})
            if not eps:
                raise EmptyQueryError(f"label {lab!r} has no example epochs")
            bad = [e for e in eps if e < 0 or e >= n]
            if bad:
                raise TimeRangeError(f"example epochs {bad} of {lab!r} are outside the night "
                                     f"(epochs 0-{n - 1})")
            rows.append(_unit(emb[eps].mean(0)))
            sources.append(f"prototype of epochs {eps}")
            if any(a <= e <= b for e in eps):
                out.warnings.append(f"the target includes example epochs of {lab!r}; its score "
                                    "there is optimistic")
        classes = np.stack(rows).astype(np.float32)
        out.method = ("few-shot: prototype = normalised mean embedding of each label's example "
                      "epochs; softmax(logit_scale * cos)")
    if sel.scope == "night":
        target = np.asarray(p.night_embedding, dtype=np.float32)
    else:
        target = _unit(emb[a:b + 1].mean(0))
    cos = stage_scores(target[None, :], classes)[0]
    scale = ctx.logit_scale()
    prob = _softmax(scale * cos.astype(np.float64))
    per = stage_scores(emb[a:b + 1], classes).argmax(1)
    won = Counter(int(i) for i in per)
    out.per_epoch = [labels[int(i)] for i in per]
    out.logit_scale = scale
    out.scores = sorted((LabelScore(label=lab, probability=float(prob[i]), cosine=float(cos[i]),
                                    epochs_won=won.get(i, 0), class_source=sources[i])
                         for i, lab in enumerate(labels)),
                        key=lambda s: -s.probability)
    gap = out.scores[0].cosine - out.scores[1].cosine
    if gap < WEAK_GAP:
        out.weak = True
        out.warnings.append(f"weak decision: '{out.scores[0].label}' leads "
                            f"'{out.scores[1].label}' by only {gap:.3f} in cosine (under "
                            f"{WEAK_GAP}); the model does not clearly separate these labels here")
    return out
