"""Multi-scorer hypnograms: a consensus hypnogram and each scorer's agreement with the others.

When several experts score the same night, the consensus is a per-epoch majority vote and the
agreement of each expert with the consensus of the *other* experts (leave-one-out) is the human
ceiling that automatic staging is compared against (Guillot et al., IEEE TNSRE 28(9):1955-1965,
2020: about 0.76 kappa on the Dreem Open Datasets).

Holds
-----
* :func:`consensus_hypnogram` -> :class:`ConsensusResult`: the vote of one night, with the
  share of scorers that agree with it per epoch.
* :func:`scorer_agreement` -> :class:`AgreementReport`: each scorer vs the consensus of the
  others on one night (accuracy, Cohen's kappa, macro-F1, per-stage F1, 5x5 confusion).
* :func:`pooled_agreement` -> :class:`PooledAgreement`: the same with epochs pooled over many
  nights, per night and per group of nights (e.g. cohorts).
* :func:`stages_from_codes` (Dreem integer codes -> stage strings) and :func:`read_scorings`
  (a Dreem-layout folder or a CSV with one column per scorer -> arrays).

Conventions
-----------
Scorings are stage strings (``W, N1, N2, N3, R, UNS``) of shape ``(n_scorers, n_epochs)``, one
30-s epoch per column. ``UNS`` (not scored: artefact, outside a scorer's lights-off window) is
no vote: an epoch's consensus is decided by the scorers who scored it, and an epoch nobody
scored stays ``UNS``. Ties between stages go to the vote of the best-ranked scorer among those
who voted for a tied stage, as in Dreem's consensus: scorers are ranked by Cohen's kappa
against the plain majority of the other scorers, computed on the epochs where that majority
is unique (no tie-break is needed to rank, so the rule is not circular); equal kappas keep the
scorers' order. The consensus of "the others" in a leave-one-out comparison is
:func:`consensus_hypnogram` applied to the other scorers' rows (their own ranking), and only
epochs that both the scorer and that consensus scored are compared.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from pydantic import BaseModel, Field

from sleeplm._logging import logger
from sleeplm.errors import UnknownStageError
from sleeplm.recording import STAGES

__all__ = [
    "SCORED_STAGES", "DREEM_CODES", "ConsensusResult", "ScorerAgreement", "AgreementReport",
    "PooledAgreement", "consensus_hypnogram", "scorer_agreement", "pooled_agreement",
    "stages_from_codes", "read_scorings",
]

#: The stages a scorer can vote for, in the order of every per-stage list and confusion axis.
SCORED_STAGES: tuple[str, ...] = ("W", "N1", "N2", "N3", "R")
#: Dreem Open Datasets integer codes (also ``sleeplm.data.DREEM_STAGES``); -1 = not scored.
DREEM_CODES: dict[int, str] = {0: "W", 1: "N1", 2: "N2", 3: "N3", 4: "R", -1: "UNS"}
CONFUSION_AXES = "rows: the scorer; columns: the consensus of the other scorers"

_CODE_OF = {s: i for i, s in enumerate(SCORED_STAGES)} | {"UNS": -1}
_N = len(SCORED_STAGES)

#: One night's scorings: an array (n_scorers, n_epochs), rows, or {scorer name: 1-D stages}.
Scorings = Union[np.ndarray, Sequence[Sequence[str]], Mapping[str, Sequence[str]]]


# --------------------------------------------------------------------------- inputs
def stages_from_codes(codes: Any, mapping: Mapping[int, str] | None = None) -> np.ndarray:
    """Stage strings of integer-coded hypnograms.

    Parameters
    ----------
    codes : array-like of int
        Any shape, e.g. ``sleeplm.data.dreem_scorings(night)`` of shape (5, n_epochs).
    mapping : dict, optional
        Code -> stage (one of ``W, N1, N2, N3, R, UNS``); default :data:`DREEM_CODES`
        (0 W, 1 N1, 2 N2, 3 N3, 4 R, -1 not scored).

    Returns
    -------
    numpy.ndarray
        ``<U3`` stages, same shape as ``codes``.

    Raises
    ------
    UnknownStageError
        A code the mapping does not define.
    """
    mapping = DREEM_CODES if mapping is None else mapping
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(int)
        else:
            raise UnknownStageError(
                f"stages_from_codes needs integer codes; got values of type {arr.dtype}. "
                "Pass stage strings (W, N1, N2, N3, R, UNS) straight to the consensus functions."
            )
    unknown = sorted(set(np.unique(arr).tolist()) - set(mapping))
    if unknown:
        raise UnknownStageError(
            f"unknown stage codes {unknown}; the mapping defines {sorted(mapping)} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(mapping.items()))}). Pass mapping=... "
            "for another coding."
        )
    out = np.empty(arr.shape, dtype="<U3")
    for code, stage in mapping.items():
        out[arr == code] = stage
    return out


def _codes_of_stages(rows: np.ndarray) -> np.ndarray:
    """Stage strings (any shape) -> int8 codes 0..4, -1 for UNS."""
    if rows.dtype.kind not in "UO":
        raise UnknownStageError(
            f"scorings must be stage strings ({', '.join(STAGES)}); found values of type "
            f"{rows.dtype}. Convert integer codes with stages_from_codes() (Dreem: 0 W, 1 N1, "
            "2 N2, 3 N3, 4 R, -1 not scored)."
        )
    rows = rows.astype(str)
    unknown = sorted(set(np.unique(rows).tolist()) - set(_CODE_OF))
    if unknown:
        raise UnknownStageError(
            f"unknown stage labels {unknown[:10]}; scorings must be among {STAGES}. Map them "
            "with sleeplm.io.labels.stage_from_label, or convert integer codes with "
            "stages_from_codes()."
        )
    out = np.full(rows.shape, -1, dtype=np.int8)
    for stage, code in _CODE_OF.items():
        out[rows == stage] = code
    return out


def _as_codes(scorings: Scorings, scorer_names: Sequence[str] | None,
              ) -> tuple[np.ndarray, list[str]]:
    """Validate one night's scorings -> int8 codes (n_scorers, n_epochs) and scorer names."""
    if isinstance(scorings, Mapping):
        names = [str(k) for k in scorings]
        rows: list[Any] = [np.asarray(v) for v in scorings.values()]
    else:
        names = []
        rows = [np.asarray(scorings)] if isinstance(scorings, np.ndarray) else \
            [np.asarray(r) for r in scorings]
        if isinstance(scorings, np.ndarray):
            arr = rows[0]
            if arr.ndim != 2:
                raise ValueError(
                    f"scorings must have shape (n_scorers, n_epochs); got shape {arr.shape}. "
                    "Stack one hypnogram per scorer as rows (np.vstack)."
                )
            rows = list(arr)
    if not rows:
        raise ValueError("no scorings given; pass one hypnogram per scorer, shape "
                         "(n_scorers, n_epochs)")
    if any(r.ndim != 1 for r in rows):
        raise ValueError(
            f"each scorer's hypnogram must be 1-D (one stage per epoch); got shapes "
            f"{[r.shape for r in rows]}"
        )
    lengths = [r.size for r in rows]
    if len(set(lengths)) > 1:
        raise ValueError(
            f"the scorers' hypnograms have different lengths {lengths} (epochs); they must cover "
            "the same epochs. Pad the shorter ones with 'UNS' at the end (or trim them)."
        )
    if lengths[0] == 0:
        raise ValueError("the hypnograms have no epochs")
    arr = np.vstack(rows)
    codes = _codes_of_stages(arr.astype(str) if arr.dtype.kind == "S" else arr)
    if scorer_names is not None:
        if len(scorer_names) != len(rows):
            raise ValueError(f"{len(scorer_names)} scorer names for {len(rows)} scorers")
        names = [str(n) for n in scorer_names]
    elif not names:
        names = [f"scorer_{k + 1}" for k in range(len(rows))]
    if len(set(names)) != len(names):
        raise ValueError(f"scorer names must be unique; got {names}")
    return codes, names


def _as_weights(weights: Sequence[float] | None, n_scorers: int) -> np.ndarray:
    if weights is None:
        return np.ones(n_scorers)
    w = np.asarray(weights, dtype=float)
    if w.shape != (n_scorers,):
        raise ValueError(f"weights must hold one number per scorer ({n_scorers}); got shape "
                         f"{w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"weights must be positive finite numbers; got {w.tolist()}")
    return w


# --------------------------------------------------------------------------- the vote
def _majority(codes: np.ndarray, weights: np.ndarray, ranking: Sequence[int] | None,
              ) -> tuple[np.ndarray, np.ndarray]:
    """Weighted vote per epoch -> (consensus codes, tied mask).

    With ``ranking`` None, tied epochs keep an arbitrary top stage (callers mask them out).
    """
    n_epochs = codes.shape[1]
    cols = np.arange(n_epochs)
    votes = np.zeros((_N, n_epochs))
    for k, row in enumerate(codes):
        scored = row >= 0
        votes[row[scored], cols[scored]] += weights[k]
    top = votes.max(axis=0)
    scored = top > 0
    is_top = np.isclose(votes, top, rtol=1e-9, atol=0.0) & scored
    out = np.where(scored, votes.argmax(axis=0), -1).astype(np.int8)
    tied = is_top.sum(axis=0) > 1
    if ranking is not None and tied.any():
        open_ = tied.copy()
        for k in ranking:
            row = codes[k]
            take = open_ & (row >= 0)
            take[take] = is_top[row[take], cols[take]]
            out[take] = row[take]
            open_ &= ~take
    return out, tied


def _confusion(scorer: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """5x5 counts, rows the scorer's stage, columns the reference's, both scored.

    ``sklearn.metrics.confusion_matrix(scorer, reference, labels=[0..4])`` on those epochs
    (the tests check it); a bincount here because it runs thousands of times per cohort.
    """
    both = (scorer >= 0) & (reference >= 0)
    pair = scorer[both].astype(np.int64) * _N + reference[both]
    return np.bincount(pair, minlength=_N * _N).reshape(_N, _N)


def _scores(cm: np.ndarray) -> dict[str, Any]:
    """Accuracy, Cohen's kappa, per-stage and macro F1 of a confusion matrix.

    The same values as ``sklearn.metrics`` accuracy_score, cohen_kappa_score and f1_score on
    the epochs behind ``cm`` (all three are symmetric in the two raters). Undefined values are
    None: kappa when both raters used one and the same stage only, a stage's F1 when neither
    rater used it (excluded from the macro mean).
    """
    n = int(cm.sum())
    if n == 0:
        return {"n_epochs": 0, "accuracy": None, "kappa": None, "macro_f1": None,
                "f1": {s: None for s in SCORED_STAGES}}
    rows, cols = cm.sum(axis=1), cm.sum(axis=0)
    acc = float(np.trace(cm)) / n
    expected = float((rows * cols).sum()) / n ** 2
    kappa = (acc - expected) / (1 - expected) if expected < 1 else None
    f1: dict[str, float | None] = {}
    for i, stage in enumerate(SCORED_STAGES):
        denom = rows[i] + cols[i]
        f1[stage] = float(2 * cm[i, i] / denom) if denom else None
    defined = [v for v in f1.values() if v is not None]
    return {"n_epochs": n, "accuracy": acc, "kappa": kappa,
            "macro_f1": float(np.mean(defined)) if defined else None, "f1": f1}


def _kappa(scorer: np.ndarray, reference: np.ndarray) -> float:
    k = _scores(_confusion(scorer, reference))["kappa"]
    return math.nan if k is None else float(k)


def _rank(codes: np.ndarray, weights: np.ndarray) -> tuple[list[int], list[float]]:
    """Scorers best first by kappa vs the others' unique majority, and each one's kappa."""
    n = len(codes)
    kappas = []
    for k in range(n):
        others = [j for j in range(n) if j != k]
        if not others:
            kappas.append(math.nan)
            continue
        ref, tied = _majority(codes[others], weights[others], ranking=None)
        ref = np.where(tied, -1, ref)
        kappas.append(_kappa(codes[k], ref))
    order = sorted(range(n), key=lambda k: (-(kappas[k] if not math.isnan(kappas[k]) else -2.0), k))
    return order, kappas


def _consensus_codes(codes: np.ndarray, weights: np.ndarray,
                     ) -> tuple[np.ndarray, np.ndarray, list[int], list[float]]:
    order, kappas = _rank(codes, weights)
    cons, tied = _majority(codes, weights, order)
    return cons, tied, order, kappas


@dataclass(frozen=True)
class ConsensusResult:
    """The consensus hypnogram of one night.

    Attributes
    ----------
    stages : numpy.ndarray
        ``<U3`` consensus stage per 30-s epoch; ``UNS`` where no scorer scored.
    agreement : numpy.ndarray
        Share (0-1) of the scorers who scored an epoch that voted for its consensus stage; NaN
        where nobody scored it.
    n_scored : numpy.ndarray
        Number of scorers who scored each epoch.
    tied : numpy.ndarray
        True where the vote was tied and the tie-break decided.
    ranking : tuple of str
        Scorer names, best first: the tie-break order.
    ranking_kappa : dict
        Scorer name -> Cohen's kappa vs the unique majority of the other scorers (NaN when
        undefined), the ranking criterion.
    scorer_names : tuple of str
        Names of the rows of the scorings, in input order.
    """

    stages: np.ndarray
    agreement: np.ndarray
    n_scored: np.ndarray
    tied: np.ndarray
    ranking: tuple[str, ...]
    ranking_kappa: dict[str, float]
    scorer_names: tuple[str, ...]

    @property
    def n_epochs(self) -> int:
        """Number of 30-s epochs."""
        return int(self.stages.size)


def consensus_hypnogram(scorings: Scorings, weights: Sequence[float] | None = None, *,
                        scorer_names: Sequence[str] | None = None) -> ConsensusResult:
    """Per-epoch majority vote of several scorers' hypnograms.

    Parameters
    ----------
    scorings : array-like or mapping
        Stage strings (``W, N1, N2, N3, R, UNS``) of shape (n_scorers, n_epochs), 30-s epochs
        aligned across scorers, or {scorer name: 1-D stages}. ``UNS`` is no vote. Convert
        integer codes first with :func:`stages_from_codes`.
    weights : sequence of float, optional
        Positive vote weight per scorer (default 1 each).
    scorer_names : sequence of str, optional
        Names of the rows (default ``scorer_1`` ...; the keys of a mapping).

    Returns
    -------
    ConsensusResult
        The consensus stages, the per-epoch agreement share, and the tie-break ranking.

    Notes
    -----
    A tie (two or more stages with the same top vote) takes the vote of the best-ranked
    scorer among those who voted for a tied stage. Scorers are ranked by Cohen's kappa
    against the plain majority of the others, on the epochs where that majority is unique;
    equal kappas (or undefined ones, ranked last) keep the input order.

    Examples
    --------
    >>> r = consensus_hypnogram([["W", "N2", "R"], ["W", "N2", "N2"], ["N1", "N2", "R"]])
    >>> r.stages.tolist(), r.agreement.round(2).tolist()
    (['W', 'N2', 'R'], [0.67, 1.0, 0.67])
    """
    codes, names = _as_codes(scorings, scorer_names)
    w = _as_weights(weights, len(codes))
    cons, tied, order, kappas = _consensus_codes(codes, w)
    n_scored = (codes >= 0).sum(axis=0)
    n_agree = ((codes == cons) & (cons >= 0)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(n_scored > 0, n_agree / np.maximum(n_scored, 1), np.nan)
    stages = np.array([*SCORED_STAGES, "UNS"], dtype="<U3")[cons]  # -1 indexes UNS
    return ConsensusResult(
        stages=stages, agreement=agreement, n_scored=n_scored, tied=tied,
        ranking=tuple(names[k] for k in order),
        ranking_kappa={names[k]: kappas[k] for k in range(len(names))},
        scorer_names=tuple(names),
    )


# --------------------------------------------------------------------------- agreement
class ScorerAgreement(BaseModel):
    """One scorer vs the consensus of the other scorers (leave-one-out)."""

    scorer: str
    n_epochs: int = Field(description="epochs compared: scored by this scorer and by the others' "
                                      "consensus (30 s each)")
    accuracy: float | None = Field(description="share of compared epochs with the same stage, 0-1")
    kappa: float | None = Field(description="Cohen's kappa (None if undefined)")
    macro_f1: float | None = Field(description="mean of the per-stage F1 that are defined, 0-1")
    f1: dict[str, float | None] = Field(description="F1 per stage W, N1, N2, N3, R (None if "
                                                    "neither used the stage)")
    confusion: list[list[int]] = Field(
        description="5x5 epoch counts; rows: this scorer, columns: the consensus of the "
                    "others, order W N1 N2 N3 R")


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


class AgreementReport(BaseModel):
    """Each scorer vs the consensus of the others, over one night or pooled over nights."""

    label: str = ""
    n_nights: int
    stages: list[str] = Field(default_factory=lambda: list(SCORED_STAGES))
    confusion_axes: str = CONFUSION_AXES
    scorers: list[ScorerAgreement]
    mean_accuracy: float | None = Field(description="mean over scorers")
    mean_kappa: float | None = Field(description="mean over scorers")
    mean_macro_f1: float | None = Field(description="mean over scorers")
    mean_f1: dict[str, float | None] = Field(description="per-stage F1, mean over scorers")

    def scorer(self, name: str) -> ScorerAgreement:
        """The entry of one scorer, by name."""
        for s in self.scorers:
            if s.scorer == name:
                return s
        raise KeyError(f"no scorer {name!r}; the report has {[s.scorer for s in self.scorers]}")

    def to_table(self) -> str:
        """A text table: one row per scorer and the mean over scorers."""
        def f(v: float | None) -> str:
            return "   -" if v is None else f"{v:.3f}"

        width = max([len("scorer"), len("mean")] + [len(s.scorer) for s in self.scorers])
        head = (f"{'scorer':<{width}}  {'epochs':>7}  {'accuracy':>8}  {'kappa':>6}  "
                f"{'macro-F1':>8}  " + "  ".join(f"{'F1 ' + s:>6}" for s in SCORED_STAGES))
        lines = [self.label] if self.label else []
        lines += [head, "-" * len(head)]
        for s in self.scorers:
            lines.append(f"{s.scorer:<{width}}  {s.n_epochs:>7}  {f(s.accuracy):>8}  "
                         f"{f(s.kappa):>6}  {f(s.macro_f1):>8}  "
                         + "  ".join(f"{f(s.f1[st]):>6}" for st in SCORED_STAGES))
        lines.append(f"{'mean':<{width}}  {'':>7}  {f(self.mean_accuracy):>8}  "
                     f"{f(self.mean_kappa):>6}  {f(self.mean_macro_f1):>8}  "
                     + "  ".join(f"{f(self.mean_f1[st]):>6}" for st in SCORED_STAGES))
        return "\n".join(lines)


def _report(names: Sequence[str], confusions: Sequence[np.ndarray], n_nights: int,
            label: str = "") -> AgreementReport:
    rows = []
    for name, cm in zip(names, confusions):
        rows.append(ScorerAgreement(scorer=name, confusion=cm.astype(int).tolist(), **_scores(cm)))
    return AgreementReport(
        label=label, n_nights=n_nights, scorers=rows,
        mean_accuracy=_mean([r.accuracy for r in rows]),
        mean_kappa=_mean([r.kappa for r in rows]),
        mean_macro_f1=_mean([r.macro_f1 for r in rows]),
        mean_f1={s: _mean([r.f1[s] for r in rows]) for s in SCORED_STAGES},
    )


def _loo_confusions(codes: np.ndarray, weights: np.ndarray) -> list[np.ndarray]:
    n = len(codes)
    if n < 2:
        raise ValueError(
            f"agreement needs at least 2 scorers (each is compared with the consensus of the "
            f"others); got {n}. Pass one hypnogram per scorer as rows."
        )
    out = []
    for k in range(n):
        others = [j for j in range(n) if j != k]
        ref, _, _, _ = _consensus_codes(codes[others], weights[others])
        out.append(_confusion(codes[k], ref))
    return out


def scorer_agreement(scorings: Scorings, weights: Sequence[float] | None = None, *,
                     scorer_names: Sequence[str] | None = None, label: str = "",
                     ) -> AgreementReport:
    """Each scorer of one night vs the consensus of the other scorers (leave-one-out).

    Parameters
    ----------
    scorings : array-like or mapping
        As for :func:`consensus_hypnogram`: stage strings (n_scorers >= 2, n_epochs).
    weights : sequence of float, optional
        Vote weights per scorer, used in the others' consensus.
    scorer_names : sequence of str, optional
        Names of the rows.
    label : str
        Title of the report (e.g. the night's id).

    Returns
    -------
    AgreementReport
        Per scorer: epochs compared (both scored), accuracy, Cohen's kappa, macro-F1, F1 per
        stage and the 5x5 confusion (rows: the scorer, columns: the others' consensus); and
        the means over scorers.

    Raises
    ------
    ValueError
        Fewer than 2 scorers, or rows of unequal length.
    UnknownStageError
        A label outside ``W, N1, N2, N3, R, UNS``.
    """
    codes, names = _as_codes(scorings, scorer_names)
    w = _as_weights(weights, len(codes))
    return _report(names, _loo_confusions(codes, w), 1, label)


class PooledAgreement(BaseModel):
    """Leave-one-out agreement over many nights: pooled epochs, per group and per night."""

    pooled: AgreementReport = Field(description="epochs of every night pooled per scorer")
    groups: dict[str, AgreementReport] = Field(
        default_factory=dict, description="epochs pooled within each group of nights")
    nights: dict[str, AgreementReport] = Field(description="one report per night")

    def to_table(self) -> str:
        """The pooled table, then one per group."""
        return "\n\n".join([self.pooled.to_table()]
                           + [g.to_table() for g in self.groups.values()])


def pooled_agreement(nights: Mapping[str, Scorings] | Sequence[Scorings],
                     groups: Mapping[str, str] | None = None,
                     weights: Sequence[float] | None = None, *,
                     scorer_names: Sequence[str] | None = None,
                     label: str = "") -> PooledAgreement:
    """Leave-one-out agreement of each scorer, epochs pooled over many nights.

    Each night's consensus of the others is built on that night alone; the epochs compared
    are then pooled per scorer over the nights (equivalently, the nights' confusion matrices
    are summed) before accuracy, kappa and F1 are computed.

    Parameters
    ----------
    nights : mapping or sequence
        {night id: scorings} (or a list, ids ``night_1`` ...); each as for
        :func:`scorer_agreement`, the same scorers in the same order every night.
    groups : mapping, optional
        Night id -> group name (e.g. cohort); each group gets a pooled report too.
    weights : sequence of float, optional
        Vote weights per scorer.
    scorer_names : sequence of str, optional
        Names of the rows (default: a mapping's keys, else ``scorer_1`` ...).
    label : str
        Title of the pooled report.

    Returns
    -------
    PooledAgreement
        ``pooled``, ``groups`` (in order of first appearance) and ``nights``.
    """
    items = list(nights.items()) if isinstance(nights, Mapping) else \
        [(f"night_{i + 1}", s) for i, s in enumerate(nights)]
    if not items:
        raise ValueError("no nights given; pass {night id: scorings (n_scorers, n_epochs)}")
    groups = dict(groups or {})
    missing = [nid for nid, _ in items if groups and nid not in groups]
    if missing:
        raise ValueError(f"nights without a group: {missing[:5]}; give every night a group or "
                         "pass groups=None")
    names: list[str] | None = None
    per_night: dict[str, AgreementReport] = {}
    confusions: dict[str, list[np.ndarray]] = {}
    for nid, scorings in items:
        codes, night_names = _as_codes(scorings, scorer_names)
        if names is None:
            names = night_names
        elif night_names != names:
            raise ValueError(f"night {nid!r} has scorers {night_names}; the first night had "
                             f"{names}. Give every night the same scorers in the same order.")
        cms = _loo_confusions(codes, _as_weights(weights, len(codes)))
        confusions[nid] = cms
        per_night[nid] = _report(names, cms, 1, str(nid))
    assert names is not None

    def pool(ids: list[str], title: str) -> AgreementReport:
        summed = [sum(confusions[i][k] for i in ids) for k in range(len(names))]
        return _report(names, summed, len(ids), title)

    all_ids = [nid for nid, _ in items]
    by_group: dict[str, list[str]] = {}
    for nid in all_ids:
        if groups:
            by_group.setdefault(groups[nid], []).append(nid)
    return PooledAgreement(
        pooled=pool(all_ids, label),
        groups={g: pool(ids, g) for g, ids in by_group.items()},
        nights=per_night,
    )


# --------------------------------------------------------------------------- files
def _stages_of_values(values: Sequence[Any], where: str) -> np.ndarray:
    """A file's per-epoch values (Dreem codes or stage strings; empty = UNS) -> stages."""
    out = []
    for v in values:
        text = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip()
        try:
            code: int | None = int(text)
        except ValueError:
            code = None
        if not text:
            out.append("UNS")
        elif text.upper() in _CODE_OF:
            out.append(text.upper())
        elif code in DREEM_CODES:
            out.append(DREEM_CODES[code])
        else:
            raise UnknownStageError(f"{where}: unknown stage {v!r}; use {STAGES} or the Dreem "
                                    "codes (0 W, 1 N1, 2 N2, 3 N3, 4 R, -1 not scored)")
    return np.array(out, dtype="<U3")


def _padded(rows: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    n = max(r.size for r in rows.values())
    if any(r.size != n for r in rows.values()):
        logger.warning("%s: the scorers' hypnograms have different lengths %s; the shorter ones "
                       "are padded with UNS (not scored) at the end", where,
                       {k: r.size for k, r in rows.items()})
    pad = np.full(n, "UNS", dtype="<U3")
    return {k: np.concatenate([r, pad[r.size:]]) for k, r in rows.items()}


def read_scorings(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Read several scorers' hypnograms from files.

    Parameters
    ----------
    path : str or Path
        Either a folder in the Dreem layout: one sub-folder per scorer, each holding one JSON
        list per night (``<night>.json``, one value per 30-s epoch); or a CSV file of one night
        with one column per scorer and one row per epoch (a column named ``epoch`` is
        skipped). Values are stage strings (``W, N1, N2, N3, R, UNS``) or Dreem codes (0 W,
        1 N1, 2 N2, 3 N3, 4 R, -1 not scored); an empty cell is not scored.

    Returns
    -------
    dict
        Night id (file stem) -> {scorer (sub-folder or column name): ``<U3`` stages}. Shorter
        hypnograms are padded with ``UNS`` at the end (with a warning); a folder's nights are
        those every scorer has (the others are left out with a warning).

    Raises
    ------
    FileNotFoundError
        The path does not exist, or a folder holds no scorer sub-folder with JSON files.
    UnknownStageError
        A value that is neither a stage nor a Dreem code.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(f"{path}: expected a CSV file (one column per scorer) or a folder "
                             "with one sub-folder of JSON hypnograms per scorer")
        import pandas as pd

        table = pd.read_csv(path, dtype=object, keep_default_na=True)
        table = table.drop(columns=[c for c in table.columns if str(c).lower() == "epoch"])
        if table.shape[1] == 0:
            raise ValueError(f"{path}: no scorer columns")
        rows = {str(c): _stages_of_values(table[c].tolist(), f"{path.name}, column {c}")
                for c in table.columns}
        return {path.stem: _padded(rows, str(path))}
    scorer_dirs = sorted(p for p in path.iterdir() if p.is_dir() and any(p.glob("*.json")))
    if not scorer_dirs:
        raise FileNotFoundError(
            f"{path}: no scorer sub-folder with JSON hypnograms; expected <folder>/<scorer>/"
            "<night>.json (one JSON list per night)"
        )
    per_scorer = {d.name: {p.stem for p in d.glob("*.json")} for d in scorer_dirs}
    common = sorted(set.intersection(*per_scorer.values()))
    partial = sorted(set.union(*per_scorer.values()) - set(common))
    if partial:
        logger.warning("%s: nights not scored by every scorer are left out: %s", path, partial)
    if not common:
        raise FileNotFoundError(f"{path}: no night is scored by every scorer {sorted(per_scorer)}")
    out: dict[str, dict[str, np.ndarray]] = {}
    for night in common:
        rows = {}
        for d in scorer_dirs:
            f = d / f"{night}.json"
            values = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(values, list):
                raise ValueError(f"{f}: expected a JSON list (one stage per epoch)")
            rows[d.name] = _stages_of_values(values, f"{d.name}/{f.name}")
        out[night] = _padded(rows, f"{path}/{night}")
    return out
