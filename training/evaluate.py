"""Held-out evaluation of a SleepLM checkpoint.

Usage::

    python -m training.evaluate --checkpoint CKPT --corpus CORPUS [--split test] [--out DIR]
        [--max-epochs N] [--ablations DIR1,DIR2,...] [--no-yasa] [--allow-train]

Writes ``eval.json`` and ``eval.md`` into ``--out`` (default: the checkpoint folder). Python:
``evaluate(checkpoint, corpus, split="test", ...) -> dict``.

Only held-out nights are evaluated (``validation`` or ``test``; the corpus split is by
subject). ``split="train"`` is refused unless ``allow_train=True`` (debugging only; the result
then carries a warning). Sections (each metric comes with its ``n``):

* ``zero_shot_staging``: class embedding = normalised mean text embedding of the stage prompts
  (:mod:`sleeplm.model.prompts`); predicted stage = argmax cosine with the epoch embedding. Epochs
  with a W/N1/N2/N3/R label only. Accuracy, macro-F1 (over the labels present in truth or
  prediction), Cohen's kappa, confusion matrix (rows true, columns predicted, order W N1 N2 N3
  R). ``yasa``: YASA SleepStaging on the nights' raw EDF (corpus manifest ``source``; C4 else C3,
  EOG_L, EMG_CHIN), compared on the same epochs (and SleepLM on exactly that subset).
* ``few_shot``: k = 1, 5, 10 support epochs per class drawn (seeded, 5 draws) from the held-out
  split; the query set is every other labelled epoch. Prototype (nearest class mean by cosine)
  and logistic regression (sklearn, L2, C=1) on the embeddings; mean and sd over draws of
  accuracy and macro-F1. Classes with <= k epochs are left out of that k.
* ``retrieval``: up to 1,000 epochs (seeded sample) with a holistic caption; signal->text and
  text->signal recall@1/5/10. A candidate whose caption text equals the query's caption counts as
  correct (identical captions are indistinguishable); rank = number of wrong candidates scoring
  strictly higher than the best correct one.
* ``captioning``: greedy captions (holistic system token, <= 64 tokens) for a seeded sample of <= 200 epochs,
  checked with the checkpoint's calibrated thresholds when it has them
  (:mod:`sleeplm.model.captioning`; the greedy captions' figures are kept under ``greedy``);
  corpus BLEU-4 (uniform weights, brevity penalty, add-one smoothing of the 2-4-gram precisions,
  none for unigrams, so disjoint texts give 0) and mean ROUGE-L F1 (LCS, beta = 1) on lower-cased
  word/number/punctuation tokens; facts read back with :func:`read_facts` from both texts: stage
  accuracy, and micro precision/recall of event mentions (apnea, hypopnea, desaturation,
  arousal, limb_movement) over (epoch, event) pairs; ``reader_check`` = how often the reader
  recovers the reference facts from the reference text (a check of the reader itself).
* ``localisation``: per query (:data:`sleeplm.model.prompts.LOCALISATION_QUERIES`) every epoch gets
  the margin ``cos(query) - max(cos(background), cos(rivals))``
  (:func:`sleeplm.model.zeroshot.known_query_margins`; background: the captions' wording for the
  event's absence, rivals: e.g. hypopnea for apnea); epochs with a margin above the
  checkpoint's threshold for the query are positive, and runs of positive epochs closer than
  its ``max_gap`` quiet epochs merge into intervals (the checkpoint's ``calibration.json``,
  chosen on the validation split by :mod:`training.calibrate`; without one: margin > 0,
  consecutive epochs; with one, the plain rule's figures are reported too). Truth: epochs whose
  captions' facts contain the event (respiratory_events, desaturations, spindles > 0,
  arousals > 0), merged the same way. Intervals are matched one-to-one (greedy by IoU) at
  IoU >= 0.3: event-level precision, recall, F1; plus the epoch-level AUROC of the margin.
* ``unseen_tasks``: night embedding = normalised mean of its epoch embeddings; OSA severity from
  the night facts' ``ahi_3a_per_h`` (< 5 none, < 15 mild, < 30 moderate, else severe) and PLM
  disorder (``plmi_per_h`` >= 15) predicted by the nearest prompt class. Baseline: the majority
  class of the train split's nights (``majority_train``) and the best constant on the evaluated
  nights (``majority_eval``, an upper bound for any constant). ``osa_severity_from_epochs``:
  a second zero-shot route: epochs where one kind of respiratory event (obstructive, central,
  mixed apnea, hypopnea: :data:`sleeplm.model.prompts.RESPIRATORY_EVENT_PROMPTS`) reads more like the
  epoch than "no respiratory events" (:func:`sleeplm.model.zeroshot.any_margins`) by more than the
  checkpoint's event-index threshold, merged into runs (gaps up to its ``max_gap``), each run
  counting ``max(1, round(epochs / epochs_per_event))`` events, in epochs the zero-shot staging
  calls sleep, per hour of that sleep (:func:`night_event_index`), then the AASM cut-offs.
  Only the prompts find the events; the three numbers of the rule come from the validation
  nights (``calibration.json``), never from these labels on the evaluated split.
* ``night_retrieval``: the ``retrieve`` tool's night-to-night rule
  (:func:`sleeplm.library.flat_index.centred_scores`: cosine of the night embeddings' deviations from
  the mean of the evaluated nights) against the plain cosine of the night embeddings, in the
  same run: for each night with another night of its profile among the evaluated ones, is the
  first neighbour of the same profile; chance = the mean share of same-profile nights among
  the others. Profiles come from the ``profile`` column of the library manifest next to the
  nights' source files (simulated libraries); without profiles the section says so.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import re
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from sleeplm.model import prompts as P
from sleeplm.library.patients import night_embedding
from sleeplm.model.captioning import CheckedCaption, caption_epochs, read_facts
from sleeplm._logging import logger
from sleeplm.model.calibration import GENERATIVE_PREFIX, Calibration, load_calibration
from sleeplm.model.zeroshot import (any_margins, class_embeddings, embed_texts,
                              generative_query_scores, known_query_margins,
                              localisation_margins, night_event_index, rule_intervals,
                              to_intervals)

__all__ = ["evaluate", "evaluate_many", "localisation_margins", "night_event_index", "read_facts", "reference_facts", "bleu4", "rouge_l",
           "interval_f1", "pooled_interval_f1", "localisation_truth", "night_event_inputs",
           "respiratory_event_margins", "generative_query_margins", "GENERATIVE_PREFIX", "to_intervals", "classification_metrics", "majority_baseline",
           "retrieval_recall", "severity_class", "to_markdown", "main"]

HELD_OUT = ("validation", "test")
STAGES = P.STAGES
EVENTS = ("apnea", "hypopnea", "desaturation", "arousal", "limb_movement")


# ------------------------------------------------------------------------------ text metrics
_TOKEN = re.compile(r"[a-z]+|\d+(?:\.\d+)?|[^\w\s]")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(str(text).lower())


def _ngrams(tok: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tok[i:i + n]) for i in range(len(tok) - n + 1))


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (one reference each): clipped n-gram counts summed over the corpus,
    add-one smoothing for n = 2..4 only, brevity penalty. Identical corpora -> 1, no shared
    unigram -> 0."""
    match, total = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for h, r in zip(hypotheses, references):
        ht, rt = _tokens(h), _tokens(r)
        hyp_len, ref_len = hyp_len + len(ht), ref_len + len(rt)
        for n in range(1, 5):
            hc, rc = _ngrams(ht, n), _ngrams(rt, n)
            match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(len(ht) - n + 1, 0)
    if hyp_len == 0 or match[0] == 0:
        return 0.0
    logp = math.log(match[0] / total[0])
    for n in range(1, 4):
        logp += math.log((match[n] + 1) / (total[n] + 1))
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return float(bp * math.exp(logp / 4))


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) of one pair: LCS / len, harmonic mean of precision and recall."""
    h, r = _tokens(hypothesis), _tokens(reference)
    lcs = _lcs(h, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return float(2 * p * rec / (p + rec))


# ------------------------------------------------------------------------------ fact reader
# read_facts: sleeplm.model.captioning (the caption check reads captions with the same rules)


def reference_facts(facts: dict) -> dict:
    """The same structure as :func:`read_facts` from a caption's stored ``facts`` dict."""
    ev = set()
    resp = facts.get("respiratory_events")
    if isinstance(resp, dict):
        resp = [k for k, v in resp.items() if v]
    for t in resp or ():
        ev.add("hypopnea" if t == "hypopnea" else "apnea")
    if facts.get("desaturations"):
        ev.add("desaturation")
    if (facts.get("arousals") or 0) > 0:
        ev.add("arousal")
    if (facts.get("plm") or 0) > 0 or (facts.get("limb_movements") or 0) > 0:
        ev.add("limb_movement")
    stage = facts.get("stage")
    return {"stage": stage if stage in STAGES else None, "events": sorted(ev),
            "no_respiratory_events": isinstance(facts.get("respiratory_events"), list)
            and not facts["respiratory_events"]}


def _fact_scores(generated: Sequence[str], ref_facts: Sequence[dict]) -> dict:
    stage_ok = stage_n = tp = fp = fn = nr_ok = nr_n = 0
    for text, ref in zip(generated, ref_facts):
        got = read_facts(text)
        if ref["stage"] is not None:
            stage_n += 1
            stage_ok += got["stage"] == ref["stage"]
        g, r = set(got["events"]), set(ref["events"])
        tp, fp, fn = tp + len(g & r), fp + len(g - r), fn + len(r - g)
        if ref["no_respiratory_events"] or "apnea" in r or "hypopnea" in r:
            nr_n += 1
            nr_ok += got["no_respiratory_events"] == ref["no_respiratory_events"]
    return {"stage_accuracy": _ratio(stage_ok, stage_n), "n_stage": stage_n,
            "event_precision": _ratio(tp, tp + fp), "n_event_mentions_generated": tp + fp,
            "event_recall": _ratio(tp, tp + fn), "n_event_mentions_reference": tp + fn,
            "no_resp_events_accuracy": _ratio(nr_ok, nr_n), "n_no_resp": nr_n}


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b else None


# ------------------------------------------------------------------------------ classification
def classification_metrics(true: Sequence, pred: Sequence, labels: Sequence = STAGES) -> dict:
    """accuracy, macro-F1, Cohen's kappa, confusion (rows true, cols pred, in ``labels``), n."""
    from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score

    true, pred = np.asarray(true, dtype=object), np.asarray(pred, dtype=object)
    n = int(true.size)
    if n == 0:
        return {"n": 0, "accuracy": None, "macro_f1": None, "kappa": None, "confusion": [],
                "labels": list(labels)}
    present = [lab for lab in labels if lab in set(true) | set(pred)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = float(cohen_kappa_score(true, pred, labels=list(labels)))
    return {"n": n, "accuracy": float(np.mean(true == pred)),
            "macro_f1": float(f1_score(true, pred, labels=present, average="macro",
                                       zero_division=0)),
            "kappa": kappa if math.isfinite(kappa) else 0.0,
            "confusion": confusion_matrix(true, pred, labels=list(labels)).tolist(),
            "labels": list(labels)}


def majority_baseline(train_labels: Sequence, eval_labels: Sequence) -> dict:
    """Constant predictors: the majority class of ``train_labels`` (ties: first in sorted
    order; falls back to ``eval_labels`` when empty) and the best constant on
    ``eval_labels``; their accuracies on ``eval_labels``."""
    ev = list(eval_labels)
    src = list(train_labels) or ev

    def top(xs):
        c = Counter(xs)
        return sorted(c, key=lambda k: (-c[k], str(k)))[0] if c else None

    maj_t, maj_e = top(src), top(ev)
    acc = (lambda lab: float(np.mean([y == lab for y in ev])) if ev else None)
    return {"majority_train_class": maj_t, "majority_train_accuracy": acc(maj_t),
            "majority_train_source": "train" if list(train_labels) else "eval",
            "majority_eval_class": maj_e, "majority_eval_accuracy": acc(maj_e), "n": len(ev)}


def severity_class(ahi: float) -> str:
    """AASM OSA severity of an AHI (/h): < 5 none, < 15 mild, < 30 moderate, else severe."""
    return "none" if ahi < 5 else "mild" if ahi < 15 else "moderate" if ahi < 30 else "severe"


# ------------------------------------------------------------------------------ retrieval
def retrieval_recall(sig: np.ndarray, txt: np.ndarray, texts: Sequence[str],
                     ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k both ways for paired unit vectors; identical texts count as correct."""
    n = len(texts)
    sim = sig @ txt.T  # [signal, text]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(texts):
        groups[t].append(i)
    correct = np.zeros((n, n), dtype=bool)
    for idx in groups.values():
        correct[np.ix_(idx, idx)] = True
    out: dict[str, Any] = {"n": n, "n_unique_texts": len(groups)}
    for name, s in (("signal_to_text", sim), ("text_to_signal", sim.T)):
        best = np.where(correct, s, -np.inf).max(1)
        rank = (np.where(correct, -np.inf, s) > best[:, None]).sum(1)
        for k in ks:
            out[f"{name}_r@{k}"] = float(np.mean(rank < k)) if n else None
    for k in ks:
        out[f"chance_r@{k}"] = min(1.0, k / max(len(groups), 1))
    return out


# ------------------------------------------------------------------------------ localisation
def _iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = min(a[1], b[1]) - max(a[0], b[0]) + 1
    if inter <= 0:
        return 0.0
    return inter / ((a[1] - a[0] + 1) + (b[1] - b[0] + 1) - inter)


def interval_f1(pred: Sequence[tuple[int, int]], true: Sequence[tuple[int, int]],
                iou: float = 0.3) -> dict:
    """One-to-one greedy matching (highest IoU first) of inclusive epoch intervals; a pair
    counts when IoU >= ``iou`` (> 0). Returns tp, n_pred, n_true, precision, recall, f1 (None
    when undefined)."""
    if not 0 < iou <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    # only overlapping pairs can reach IoU > 0: true intervals sorted by start; each pred
    # interval scans back from the last one starting before its end while some earlier true
    # interval may still reach it (running maximum of the ends)
    order = sorted(range(len(true)), key=lambda j: true[j][0])
    starts = [true[j][0] for j in order]
    max_end = list(itertools.accumulate((true[j][1] for j in order), max))
    pairs = []
    for i, p in enumerate(pred):
        k = bisect.bisect_right(starts, p[1]) - 1
        while k >= 0 and max_end[k] >= p[0]:
            v = _iou(p, true[order[k]])
            if v > 0:
                pairs.append((v, i, order[k]))
            k -= 1
    pairs.sort(reverse=True)
    used_p, used_t, tp = set(), set(), 0
    for v, i, j in pairs:
        if v < iou:
            break
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        tp += 1
    prec, rec = _ratio(tp, len(pred)), _ratio(tp, len(true))
    f1 = (2 * prec * rec / (prec + rec) if prec and rec else
          (0.0 if (len(pred) or len(true)) else None))
    return {"tp": tp, "n_pred": len(pred), "n_true": len(true), "precision": prec,
            "recall": rec, "f1": f1}


def _truth_events(facts_list: Iterable[dict]) -> set[str]:
    ev = set()
    for f in facts_list:
        resp = f.get("respiratory_events") or ()
        if isinstance(resp, dict):
            resp = [k for k, v in resp.items() if v]
        if "obstructive_apnea" in resp:
            ev.add("obstructive_apnea")
        if "hypopnea" in resp:
            ev.add("hypopnea")
        if f.get("desaturations"):
            ev.add("desaturation")
        if (f.get("spindles") or 0) > 0:
            ev.add("spindles")
        if (f.get("arousals") or 0) > 0:
            ev.add("arousal")
    return ev


# ------------------------------------------------------------------------------ model io
def _load(checkpoint: str | Path):
    from sleeplm.model.network import load_model
    from sleeplm.model.tokenizer import CaptionTokenizer

    ck = Path(checkpoint)
    tok_path = ck / "tokenizer.json"
    if not tok_path.exists():
        raise FileNotFoundError(f"{tok_path} missing: save the checkpoint with tokenizer_path")
    return load_model(ck), CaptionTokenizer.load(tok_path)


def _windows(data: dict, idx: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, 2k+1, C, T]`` windows of neighbouring loaded epochs of the same night."""
    where = {(n, int(e)): i for i, (n, e) in enumerate(zip(data["night"], data["epoch"]))}
    x, m = data["x"], data["mask"]
    xs = np.zeros((len(idx), 2 * k + 1) + x.shape[1:], np.float32)
    ms = np.zeros((len(idx), 2 * k + 1, m.shape[1]), bool)
    for r, i in enumerate(idx):
        for w, d in enumerate(range(-k, k + 1)):
            j = where.get((data["night"][i], int(data["epoch"][i]) + d))
            if j is not None:
                xs[r, w], ms[r, w] = x[j], m[j]
    return torch.from_numpy(xs), torch.from_numpy(ms)


def _inputs(model, data: dict, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    k = model.cfg.context_epochs
    if k > 0:
        return _windows(data, idx, k)
    return (torch.from_numpy(data["x"][idx].astype(np.float32)),
            torch.from_numpy(data["mask"][idx]))


@torch.no_grad()
def _embed_signals(model, data: dict, batch: int = 64) -> np.ndarray:
    n = len(data["key"])
    out = []
    for s in range(0, n, batch):
        x, m = _inputs(model, data, np.arange(s, min(n, s + batch)))
        out.append(model.encode_signal(x, m)[0].float().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.embed_dim), np.float32)


# ------------------------------------------------------------------------------ corpus io
def _corpus_meta(corpus: Path, split: str, keys: set[str]) -> tuple[dict, dict, dict]:
    """(epoch key -> {system: facts}, epoch key -> onset_s, night -> night JSON) for ``keys``."""
    from sleeplm.corpus.shards import iter_shard_json, list_shards, night_samples

    facts: dict[str, dict] = {}
    onset: dict[str, float] = {}
    for shard in list_shards(corpus, split, "epochs"):
        for key, meta in iter_shard_json(shard):
            if key in keys:
                facts[key] = {c["system"]: c.get("facts") or {} for c in
                              reversed(meta.get("captions", ()))}  # first caption wins
                onset[key] = float(meta.get("onset_s", 0.0))
    nights = {n["night"]: n for n in night_samples(corpus, split)}
    return facts, onset, nights


def _night_fact(night: dict, name: str) -> float | None:
    for c in (night.get("captions") or {}).get("night", ()):
        v = (c.get("facts") or {}).get(name)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
    return None


def _load_data(corpus: Path, split: str, channels, max_epochs, sfreq: float) -> dict:
    from sleeplm.corpus.shards import _corpus_config, load_split_epochs

    mi = _corpus_config(corpus).get("model_input", {})
    if mi.get("sfreq") is not None and abs(float(mi["sfreq"]) - sfreq) > 1e-6:
        raise ValueError(f"corpus sfreq {mi['sfreq']} != model sfreq {sfreq}")
    return load_split_epochs(corpus, split, channels, max_epochs=max_epochs)


# ------------------------------------------------------------------------------ sections
def _zero_shot(model, tok, emb, data) -> tuple[dict, np.ndarray, np.ndarray]:
    lab = data["stage_id"] >= 0
    cls = class_embeddings(model, tok, P.STAGE_PROMPTS, STAGES)
    pred = np.asarray(STAGES, dtype=object)[(emb @ cls.T).argmax(1)]
    true = np.asarray([STAGES[i] if i >= 0 else None for i in data["stage_id"]], dtype=object)
    out = classification_metrics(true[lab], pred[lab])
    out["prompts_per_class"] = {s: len(P.STAGE_PROMPTS[s]) for s in STAGES}
    return out, pred, true


def _yasa(corpus: Path, data: dict, onsets: dict, nights: dict, pred_lm: np.ndarray,
          true: np.ndarray, epoch_sec: float) -> dict:
    try:
        import pandas as pd
        import yasa  # noqa: F401
    except Exception as exc:  # pragma: no cover - yasa is installed here
        return {"available": False, "reason": f"yasa not importable: {exc}"}
    man_path = corpus / "manifest.csv"
    if not man_path.exists():
        return {"available": False, "reason": f"{man_path} missing"}
    man = pd.read_csv(man_path)
    sources = {str(r["night"]): str(r["source"]) for _, r in man.iterrows()
               if isinstance(r.get("source"), str)}
    y_true, y_yasa, y_lm, reasons, used = [], [], [], {}, []
    for night in dict.fromkeys(data["night"]):
        src = sources.get(night)
        if not src or not Path(src).exists():
            reasons[night] = f"raw file not reachable: {src}"
            continue
        try:
            hyp = _yasa_night(src)
        except Exception as exc:
            reasons[night] = f"{type(exc).__name__}: {exc}"
            continue
        used.append(night)
        for i in np.flatnonzero(data["night"] == night):
            j = int(round(onsets.get(data["key"][i], data["epoch"][i] * epoch_sec) / epoch_sec))
            if true[i] is None or not 0 <= j < len(hyp):
                continue
            y_true.append(true[i])
            y_yasa.append(hyp[j])
            y_lm.append(pred_lm[i])
    if not used:
        return {"available": False, "reason": "; ".join(f"{k}: {v}" for k, v in reasons.items())
                or "no nights"}
    return {"available": True, "nights": len(used), "skipped": reasons,
            "yasa": classification_metrics(y_true, y_yasa),
            "sleeplm_same_epochs": classification_metrics(y_true, y_lm)}


def _yasa_night(path: str) -> np.ndarray:
    """YASA's staging of a night's raw file (EEG, EOG and chin EMG all required here, so the
    baseline is YASA's full model), through :func:`sleeplm.clinical.staging.auto_stage`."""
    from sleeplm.clinical.staging import auto_stage
    from sleeplm.io import read_recording

    rec = read_recording(path, channels=["EEG_C4", "EEG_C3", "EOG_L", "EMG_CHIN"],
                         annotations=None)
    eeg = "EEG_C4" if "EEG_C4" in rec else "EEG_C3"
    for need in (eeg, "EOG_L", "EMG_CHIN"):
        if need not in rec:
            raise ValueError(f"{need} absent from {path}")
    return np.array(auto_stage(rec).stages, dtype=object)


def _few_shot(emb: np.ndarray, true: np.ndarray, seed: int, shots=(1, 5, 10), draws: int = 5
              ) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    lab = np.flatnonzero(true != None)  # noqa: E711
    y = true[lab]
    out: dict[str, Any] = {}
    for k in shots:
        classes = [c for c in STAGES if (y == c).sum() > k]
        res = {"prototype": {"accuracy": [], "macro_f1": []},
               "linear_probe": {"accuracy": [], "macro_f1": []}}
        n_query = []
        if len(classes) >= 2:
            for d in range(draws):
                rng = np.random.default_rng([seed, k, d])
                sup = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False)
                                      for c in classes])
                qmask = np.isin(y, classes)
                qmask[sup] = False
                q = np.flatnonzero(qmask)
                n_query.append(len(q))
                xs, ys, xq, yq = emb[lab[sup]], y[sup], emb[lab[q]], y[q]
                proto = np.stack([xs[ys == c].mean(0) for c in classes])
                proto /= np.maximum(np.linalg.norm(proto, axis=1, keepdims=True), 1e-12)
                pp = np.asarray(classes, dtype=object)[(xq @ proto.T).argmax(1)]
                clf = LogisticRegression(C=1.0, max_iter=1000).fit(xs, ys.astype(str))
                pl = clf.predict(xq)
                for name, pr in (("prototype", pp), ("linear_probe", pl)):
                    res[name]["accuracy"].append(float(np.mean(pr.astype(str) == yq.astype(str))))
                    res[name]["macro_f1"].append(float(f1_score(
                        yq.astype(str), pr.astype(str), labels=classes, average="macro",
                        zero_division=0)))
        entry: dict[str, Any] = {"k": k, "classes": classes, "draws": len(n_query),
                                 "n_query": int(np.mean(n_query)) if n_query else 0}
        for name, r in res.items():
            for m, v in r.items():
                entry[f"{name}_{m}"] = float(np.mean(v)) if v else None
                entry[f"{name}_{m}_sd"] = float(np.std(v)) if v else None
        out[f"{k}-shot"] = entry
    return out


def caption_indices(data: dict, sample: int, seed: int, stream: int = 7) -> np.ndarray:
    """Seeded sample (sorted indices) of at most ``sample`` loaded epochs with a holistic
    caption; ``stream`` keeps the calibration's sample apart from the evaluation's."""
    have = np.flatnonzero(np.asarray([bool(c) for c in data["caption_holistic"]]))
    rng = np.random.default_rng([seed, stream])
    return np.sort(rng.choice(have, min(sample, len(have)), replace=False)) if len(have) else have


def checked_captions(model, tok, data: dict, idx: np.ndarray, thresholds: dict | None,
                     batch: int = 50, max_len: int = 64) -> list[CheckedCaption]:
    """Holistic captions of epochs ``idx`` (:func:`sleeplm.model.captioning.caption_epochs`: greedy,
    then checked with ``thresholds`` when given)."""
    out: list[CheckedCaption] = []
    for s in range(0, len(idx), batch):
        x, m = _inputs(model, data, idx[s:s + batch])
        out += caption_epochs(model, tok, x, m, "holistic", max_len, thresholds)
    return out


def _captioning(model, tok, data, facts, sample: int, seed: int, cal: Calibration | None = None,
                batch: int = 50, max_len: int = 64) -> dict:
    idx = caption_indices(data, sample, seed)
    thresholds = dict(cal.captions) if cal is not None and cal.captions else None
    caps = checked_captions(model, tok, data, idx, thresholds, batch, max_len)
    gen = [c.text for c in caps]
    refs = [str(data["caption_holistic"][i]) for i in idx]
    ref_f = [reference_facts(facts.get(data["key"][i], {}).get("holistic", {})) for i in idx]
    reader_ok = [read_facts(r) == f for r, f in zip(refs, ref_f)]
    withdrawn = Counter(q for c in caps for q in c.rejected)
    out = {"n": len(idx), "bleu4": bleu4(gen, refs) if len(idx) else None,
           "rouge_l": float(np.mean([rouge_l(g, r) for g, r in zip(gen, refs)])) if len(idx)
           else None, **_fact_scores(gen, ref_f),
           "checked": thresholds is not None, "check_thresholds": thresholds,
           "n_captions_changed": sum(bool(c.withdrawn) for c in caps),
           "greedy": {"bleu4": bleu4([c.greedy for c in caps], refs) if len(idx) else None,
                      **_fact_scores([c.greedy for c in caps], ref_f)},
           "reader_check": _ratio(sum(reader_ok), len(reader_ok)),
           "examples": [{"key": str(data["key"][i]), "reference": r, "generated": c.text,
                         **({"greedy": c.greedy} if c.withdrawn else {})}
                        for i, r, c in list(zip(idx, refs, caps))[:5]]}
    if withdrawn:
        out["withdrawn_by_query"] = dict(sorted(withdrawn.items()))
    return out


def pooled_interval_f1(nights: np.ndarray, epochs: np.ndarray, margins: np.ndarray,
                       truth: np.ndarray, rule: Any = None, iou: float = 0.3) -> dict:
    """Event-level precision, recall and F1 over several nights: per night, intervals from the
    margins by ``rule`` (:func:`sleeplm.model.zeroshot.rule_intervals`; None: margin > 0) matched to
    the runs of true epochs (:func:`interval_f1`), counts pooled over nights."""
    tp = n_pred = n_true = 0
    for night in dict.fromkeys(nights):
        rows = np.flatnonzero(nights == night)
        r = interval_f1(rule_intervals(epochs[rows], margins[rows], rule),
                        to_intervals(epochs[rows], truth[rows]), iou)
        tp, n_pred, n_true = tp + r["tp"], n_pred + r["n_pred"], n_true + r["n_true"]
    prec, rec = _ratio(tp, n_pred), _ratio(tp, n_true)
    return {"tp": tp, "n_pred": n_pred, "n_true": n_true, "precision": prec, "recall": rec,
            "f1": (2 * prec * rec / (prec + rec) if prec and rec else
                   (0.0 if n_pred or n_true else None))}


def localisation_truth(data: dict, facts: dict, names: Sequence[str]) -> np.ndarray:
    """``[N, len(names)]`` bool: epochs whose captions' facts contain each query's event."""
    truth = [_truth_events(facts.get(k, {}).values()) for k in data["key"]]
    return np.asarray([[n in t for n in names] for t in truth], dtype=bool).reshape(
        len(truth), len(names))


@torch.no_grad()
def generative_query_margins(model, tok, data: dict, stages: Sequence[str], batch: int = 64
                             ) -> tuple[list[str], np.ndarray]:
    """Caption-decoder evidence ``[N, Q]`` (nats) for the generative queries
    (:data:`sleeplm.model.prompts.GENERATIVE_QUERIES`), every loaded epoch scored after its stage
    phrase ``stages[i]`` (the zero-shot staging):
    :func:`sleeplm.model.zeroshot.generative_query_scores`. Returns the query names and the margins."""
    names = list(P.GENERATIVE_QUERIES)
    n = len(data["key"])
    out = np.zeros((n, len(names)), np.float32)
    for s in range(0, n, batch):
        idx = np.arange(s, min(n, s + batch))
        x, m = _inputs(model, data, idx)
        _, tokens, valid = model.encode_signal(x, m)
        out[idx] = generative_query_scores(model, tok, tokens, valid,
                                           [str(stages[i]) for i in idx], names)
    return names, out


def _localisation(model, tok, emb, data, facts, cal: Calibration, iou: float = 0.3,
                  stage_pred: Sequence[str] | None = None) -> dict:
    from sklearn.metrics import roc_auc_score

    names = list(P.LOCALISATION_QUERIES)
    scores = known_query_margins(emb, lambda t, c: class_embeddings(model, tok, t, c), names)
    truth = localisation_truth(data, facts, names)
    out: dict[str, Any] = {
        "rule": "epoch positive when closer to the query's prompts than to its absence "
                "prompts and to any rival query's by more than the checkpoint's threshold; "
                "runs of positive epochs, closer than its max_gap merged; IoU >= "
                f"{iou}", "calibration": _calibration_note(cal)}
    for qi, name in enumerate(names):
        y = truth[:, qi]
        rule = cal.interval_rule(name)
        auc = (float(roc_auc_score(y, scores[:, qi])) if 0 < y.sum() < len(y) else None)
        out[name] = {**pooled_interval_f1(data["night"], data["epoch"], scores[:, qi], y, rule,
                                          iou),
                     "threshold": rule.threshold, "max_gap": rule.max_gap,
                     "epoch_auroc": auc, "n_epochs": int(len(y)),
                     "n_positive_epochs": int(y.sum())}
        if name in cal.localisation:
            out[name]["plain_rule"] = pooled_interval_f1(data["night"], data["epoch"],
                                                         scores[:, qi], y, None, iou)
    if stage_pred is not None:
        gnames, gen = generative_query_margins(model, tok, data, stage_pred)
        for gi, name in enumerate(gnames):
            y = truth[:, names.index(name)]
            rule = cal.interval_rule(GENERATIVE_PREFIX + name)
            auc = (float(roc_auc_score(y, gen[:, gi])) if 0 < y.sum() < len(y) else None)
            out[name]["generative"] = {
                **pooled_interval_f1(data["night"], data["epoch"], gen[:, gi], y, rule, iou),
                "threshold": rule.threshold, "max_gap": rule.max_gap, "epoch_auroc": auc,
                "plain_rule": pooled_interval_f1(data["night"], data["epoch"], gen[:, gi], y,
                                                 None, iou)}
    return out


def _calibration_note(cal: Calibration) -> dict:
    if cal.is_plain:
        return {"calibrated": False, "rule": "plain: margin > 0, consecutive epochs, one event "
                                             "per run (no calibration.json)"}
    return {"calibrated": True, "chosen_on": f"{cal.corpus} split {cal.split} "
                                             f"({cal.n_nights} nights, {cal.n_epochs} epochs)",
            "weights_sha256": cal.weights_sha256}


def _unseen(model, tok, emb, data, nights: dict, train_nights: dict,
            stage_pred: np.ndarray, cal: Calibration | None = None) -> dict:
    names = list(dict.fromkeys(data["night"]))
    nemb = np.stack([night_embedding(emb[data["night"] == n]) for n in names]) if names else \
        np.zeros((0, emb.shape[1]))
    out: dict[str, Any] = {"n_nights": len(names)}
    tasks = (("osa_severity", "ahi_3a_per_h", severity_class, P.OSA_SEVERITY_PROMPTS,
              P.OSA_SEVERITY_CLASSES),
             ("plm_disorder", "plmi_per_h", lambda v: "yes" if v >= 15 else "no", P.PLM_PROMPTS,
              P.PLM_CLASSES))
    for task, fact, to_cls, table, classes in tasks:
        cls = class_embeddings(model, tok, table, classes)
        rows, ys = [], []
        for i, n in enumerate(names):
            v = _night_fact(nights.get(n, {}), fact)
            if v is not None:
                rows.append(i)
                ys.append(to_cls(v))
        pred = [classes[j] for j in (nemb[rows] @ cls.T).argmax(1)] if rows else []
        train_y = [to_cls(v) for n in train_nights.values()
                   if (v := _night_fact(n, fact)) is not None]
        out[task] = {"truth_fact": fact, "method": "night embedding (mean of epochs) vs "
                     "severity prompts", **classification_metrics(ys, pred, classes),
                     "baseline": majority_baseline(train_y, ys),
                     "truth_counts": dict(Counter(ys))}
    # OSA severity, second zero-shot route: event epochs found by prompts, counted per hour
    cal = cal or Calibration()
    per_night, ahi = night_event_inputs(data, respiratory_event_margins(model, tok, emb),
                                        stage_pred, nights)
    epoch_sec = float(model.cfg.epoch_sec)

    def estimate(rule):
        est = {n: night_event_index(*per_night[n], epoch_sec, rule) for n in ahi}
        pred = [severity_class(v) if math.isfinite(v) else "none" for v in est.values()]
        return est, pred

    ys = [severity_class(v) for v in ahi.values()]
    est, pred = estimate(cal.event_index)
    idx = {n: {"estimated_index_per_h": round(est[n], 1), "ahi_3a_per_h": round(v, 1)}
           for n, v in ahi.items()}
    train_y = [severity_class(v) for n in train_nights.values()
               if (v := _night_fact(n, "ahi_3a_per_h")) is not None]
    rule = cal.event_index
    out["osa_severity_from_epochs"] = {
        "truth_fact": "ahi_3a_per_h",
        "method": "event epochs (any kind of respiratory event closer than its absence by more "
                  f"than {rule.threshold:g}), runs closer than {rule.max_gap} epochs merged, "
                  + (f"a run counting round(epochs / {rule.epochs_per_event:g}) events"
                     if rule.epochs_per_event > 0 else "one event per run")
                  + ", per hour of zero-shot-staged sleep, AASM cut-offs 5/15/30",
        "rule": rule.model_dump(), "calibration": _calibration_note(cal),
        **classification_metrics(ys, pred, P.OSA_SEVERITY_CLASSES),
        "baseline": majority_baseline(train_y, ys), "truth_counts": dict(Counter(ys)),
        "per_night": idx}
    if not cal.is_plain:
        plain = classification_metrics(ys, estimate(None)[1], P.OSA_SEVERITY_CLASSES)
        out["osa_severity_from_epochs"]["plain_rule"] = {
            k: plain[k] for k in ("accuracy", "macro_f1", "n")}
    return out


def night_event_inputs(data: dict, margins: np.ndarray, stage_pred: np.ndarray, nights: dict
                       ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                                  dict[str, float]]:
    """Per night with a true AHI: (margins, epoch numbers, asleep) in epoch order, the
    arguments of :func:`sleeplm.model.zeroshot.night_event_index` (asleep = zero-shot staging says
    not W), and night -> true AHI (``ahi_3a_per_h`` of the night facts)."""
    per_night, ahi = {}, {}
    for n in dict.fromkeys(data["night"]):
        v = _night_fact(nights.get(n, {}), "ahi_3a_per_h")
        if v is None:
            continue
        rows = np.flatnonzero(data["night"] == n)
        order = rows[np.argsort(data["epoch"][rows])]
        per_night[n] = (margins[order], data["epoch"][order], stage_pred[order] != "W")
        ahi[n] = v
    return per_night, ahi


def respiratory_event_margins(model, tok, emb: np.ndarray) -> np.ndarray:
    """Per-epoch evidence of any respiratory event (:func:`sleeplm.model.zeroshot.any_margins` with
    :data:`sleeplm.model.prompts.RESPIRATORY_EVENT_PROMPTS` against "no respiratory events")."""
    kinds = list(P.RESPIRATORY_EVENT_PROMPTS)
    ev = class_embeddings(model, tok, P.RESPIRATORY_EVENT_PROMPTS, kinds)
    bg = class_embeddings(model, tok, {"b": P.LOCALISATION_BACKGROUND["hypopnea"]}, ["b"])[0]
    return any_margins(emb, ev, bg)


def _night_profiles(corpus: Path) -> dict[str, str]:
    """night -> profile, from the ``profile`` column of the manifest.csv next to each night's
    source file (the corpus manifest's ``source``); {} when there is none."""
    import pandas as pd

    man = corpus / "manifest.csv"
    if not man.exists():
        return {}
    out: dict[str, str] = {}
    cache: dict[Path, dict[str, str]] = {}
    for row in pd.read_csv(man).to_dict("records"):
        src = Path(str(row.get("source") or ""))
        if not src.is_absolute():
            src = (corpus.parent / src) if not (corpus / src).exists() else corpus / src
        lib = src.parent / "manifest.csv"
        if lib not in cache:
            cache[lib] = {}
            if lib.exists():
                lm = pd.read_csv(lib)
                if {"patient_id", "profile"} <= set(lm.columns):
                    cache[lib] = {str(a): str(b) for a, b in zip(lm["patient_id"], lm["profile"])
                                  if isinstance(b, str) and b}
        prof = cache[lib].get(str(row.get("patient_id")))
        if prof:
            out[str(row["night"])] = prof
    return out


def _night_retrieval(emb: np.ndarray, data: dict, profiles: dict[str, str]) -> dict:
    from sleeplm.library.flat_index import centred_scores

    names = [n for n in dict.fromkeys(data["night"]) if n in profiles]
    counts = Counter(profiles[n] for n in names)
    queries = [n for n in names if counts[profiles[n]] > 1]
    if not queries:
        return {"available": False, "n_nights": len(names),
                "reason": "no two evaluated nights share a known profile"
                          if names else "no profiles for these nights"}
    V = np.stack([night_embedding(emb[data["night"] == n]) for n in names])
    out: dict[str, Any] = {"available": True, "n_nights": len(names), "n_queries": len(queries),
                           "chance_top1": float(np.mean([(counts[profiles[q]] - 1)
                                                         / (len(names) - 1) for q in queries]))}
    for rule in ("centred", "plain"):
        top1, rr, per = [], [], {}
        for q in queries:
            i = names.index(q)
            sc = centred_scores(V, V[i]) if rule == "centred" else V @ V[i]
            order = [j for j in np.argsort(-sc, kind="stable") if j != i]
            same = [profiles[names[j]] == profiles[q] for j in order]
            top1.append(bool(same[0]))
            rr.append(1.0 / (1 + same.index(True)))
            per[q] = names[order[0]]
        out[rule] = {"same_profile_top1": float(np.mean(top1)), "mrr": float(np.mean(rr)),
                     "first_neighbour": per}
    return out


# ------------------------------------------------------------------------------ driver
def evaluate(checkpoint: str | Path, corpus: str | Path, split: str = "test", *,
             max_epochs: int | None = None, yasa: bool = True, allow_train: bool = False,
             seed: int = 0, caption_sample: int = 200, retrieval_candidates: int = 1000,
             _cache: dict | None = None) -> dict:
    """Evaluate one checkpoint on a held-out split; returns the result dict (see the module
    docstring). ``max_epochs`` keeps the first N epochs of the split (corpus order: whole
    nights first)."""
    if split not in HELD_OUT:
        if not (allow_train and split == "train"):
            raise ValueError(f"split {split!r} refused: evaluate held-out nights only "
                             f"({', '.join(HELD_OUT)}); allow_train=True for debugging")
    t0 = time.time()
    corpus = Path(corpus)
    model, tok = _load(checkpoint)
    cal = load_calibration(checkpoint)
    if not cal.is_plain and cal.split == split and Path(cal.corpus).resolve() == corpus.resolve():
        logger.warning("evaluating on the split the checkpoint's decision rules were chosen on "
                       "(%s): localisation and event-index figures are not held-out figures",
                       split)
    cache = _cache if _cache is not None else {}
    ckey = (tuple(model.cfg.channels), split, max_epochs)
    if ckey not in cache:
        data = _load_data(corpus, split, model.cfg.channels, max_epochs, model.cfg.sfreq)
        facts, onsets, nights = _corpus_meta(corpus, split, set(data["key"]))
        from sleeplm.corpus.shards import night_samples
        train_nights = {n["night"]: n for n in night_samples(corpus, "train")}
        cache[ckey] = (data, facts, onsets, nights, train_nights)
    data, facts, onsets, nights, train_nights = cache[ckey]
    n = len(data["key"])
    if n == 0:
        raise ValueError(f"no epochs in split {split!r} of {corpus}")
    timings: dict[str, float] = {}

    def tick(name, t):
        timings[name] = round(time.time() - t, 2)
        return time.time()

    t = time.time()
    emb = _embed_signals(model, data)
    t = tick("embed", t)
    res: dict[str, Any] = {"checkpoint": str(checkpoint), "corpus": str(corpus), "split": split,
                           "n_epochs": n, "n_nights": len(set(data["night"])), "seed": seed}
    if split == "train":
        res["warning"] = "evaluated on the TRAIN split (allow_train): not a held-out result"
    zs, pred, true = _zero_shot(model, tok, emb, data)
    if yasa:
        epoch_sec = float(model.cfg.epoch_sec)
        zs["yasa"] = _yasa(corpus, data, onsets, nights, pred, true, epoch_sec)
    else:
        zs["yasa"] = {"available": False, "reason": "disabled (yasa=False / --no-yasa)"}
    res["zero_shot_staging"] = zs
    t = tick("zero_shot_staging", t)
    res["few_shot"] = _few_shot(emb, true, seed)
    t = tick("few_shot", t)
    have = np.flatnonzero(np.asarray([bool(c) for c in data["caption_holistic"]]))
    rng = np.random.default_rng([seed, 3])
    ridx = np.sort(rng.choice(have, min(retrieval_candidates, len(have)), replace=False))
    texts = [str(data["caption_holistic"][i]) for i in ridx]
    res["retrieval"] = retrieval_recall(emb[ridx], embed_texts(model, tok, texts), texts)
    t = tick("retrieval", t)
    res["captioning"] = _captioning(model, tok, data, facts, caption_sample, seed, cal)
    t = tick("captioning", t)
    res["localisation"] = _localisation(model, tok, emb, data, facts, cal,
                                         stage_pred=pred)
    t = tick("localisation", t)
    res["unseen_tasks"] = _unseen(model, tok, emb, data, nights, train_nights, pred, cal)
    t = tick("unseen_tasks", t)
    res["night_retrieval"] = _night_retrieval(emb, data, _night_profiles(corpus))
    t = tick("night_retrieval", t)
    timings["total"] = round(time.time() - t0, 2)
    res["timings_s"] = timings
    return res


def evaluate_many(checkpoints: Sequence[str | Path], corpus: str | Path, split: str = "test",
                  **kw) -> dict:
    """:func:`evaluate` for each checkpoint (data loaded once per channel set)."""
    cache: dict = {}
    results = {str(c): evaluate(c, corpus, split, _cache=cache, **kw) for c in checkpoints}
    return {"ablations": results, "table": [_summary_row(k, r) for k, r in results.items()]}


def _summary_row(name: str, r: dict) -> dict:
    zs, ret, cap = r["zero_shot_staging"], r["retrieval"], r["captioning"]
    fs = r["few_shot"].get("5-shot", {})
    loc = [v["f1"] for k, v in r["localisation"].items()
           if isinstance(v, dict) and v.get("f1") is not None]
    return {"checkpoint": name, "n_epochs": r["n_epochs"], "zs_acc": zs["accuracy"],
            "zs_macro_f1": zs["macro_f1"], "zs_kappa": zs["kappa"],
            "5shot_probe_acc": fs.get("linear_probe_accuracy"),
            "s2t_r@1": ret.get("signal_to_text_r@1"), "t2s_r@1": ret.get("text_to_signal_r@1"),
            "s2t_r@10": ret.get("signal_to_text_r@10"), "bleu4": cap["bleu4"],
            "rouge_l": cap["rouge_l"], "cap_stage_acc": cap["stage_accuracy"],
            "loc_mean_f1": float(np.mean(loc)) if loc else None,
            "osa_acc": r["unseen_tasks"]["osa_severity"]["accuracy"],
            "osa_acc_epochs": r["unseen_tasks"].get("osa_severity_from_epochs", {}).get(
                "accuracy")}


# ------------------------------------------------------------------------------ markdown
def _f(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(res: dict) -> str:
    """Markdown report of :func:`evaluate` (or :func:`evaluate_many`) output."""
    if "ablations" in res:
        rows = res["table"]
        parts = ["# SleepLM ablations", "", _table(list(rows[0]), [list(r.values()) for r in rows])]
        for name, r in res["ablations"].items():
            parts += ["", to_markdown(r).replace("\n# ", "\n## ", 1)]
        return "\n".join(parts)
    out = [f"# SleepLM evaluation: {res['checkpoint']}", "",
           f"Corpus `{res['corpus']}`, split **{res['split']}**, {res['n_epochs']} epochs, "
           f"{res['n_nights']} nights, seed {res['seed']}."]
    if res.get("warning"):
        out += ["", f"**WARNING: {res['warning']}**"]
    zs = res["zero_shot_staging"]
    rows = [["SleepLM zero-shot (all epochs)", zs["n"], zs["accuracy"], zs["macro_f1"],
             zs["kappa"]]]
    y = zs["yasa"]
    if y.get("available"):
        for label, m in (("SleepLM zero-shot (YASA epochs)", y["sleeplm_same_epochs"]),
                         ("YASA SleepStaging", y["yasa"])):
            rows.append([label, m["n"], m["accuracy"], m["macro_f1"], m["kappa"]])
    out += ["", "## Zero-shot 5-stage staging", "",
            _table(["method", "n", "accuracy", "macro-F1", "kappa"], rows)]
    if not y.get("available"):
        out += ["", f"YASA unavailable: {y.get('reason')}"]
    out += ["", "Confusion (rows true, columns predicted):", "",
            _table(["true \\ pred", *STAGES], [[s, *r] for s, r in zip(STAGES, zs["confusion"])])]
    out += ["", "## Few-shot (held-out support, mean ± sd over draws)", "",
            _table(["k/class", "n query", "draws", "proto acc", "proto F1", "probe acc",
                    "probe F1"],
                   [[v["k"], v["n_query"], v["draws"],
                     *(f"{_f(v[m])} ± {_f(v[m + '_sd'])}" for m in
                       ("prototype_accuracy", "prototype_macro_f1", "linear_probe_accuracy",
                        "linear_probe_macro_f1"))] for v in res["few_shot"].values()])]
    r = res["retrieval"]
    out += ["", f"## Retrieval (n = {r['n']} pairs, {r['n_unique_texts']} distinct captions)", "",
            _table(["direction", "R@1", "R@5", "R@10"],
                   [[d, r[f"{d}_r@1"], r[f"{d}_r@5"], r[f"{d}_r@10"]]
                    for d in ("signal_to_text", "text_to_signal")]
                   + [["chance", r["chance_r@1"], r["chance_r@5"], r["chance_r@10"]]])]
    c = res["captioning"]
    out += ["", f"## Captioning (holistic, n = {c['n']})", "",
            _table(["metric", "value", "n"],
                   [["BLEU-4", c["bleu4"], c["n"]], ["ROUGE-L F1", c["rouge_l"], c["n"]],
                    ["stage correct", c["stage_accuracy"], c["n_stage"]],
                    ["event precision", c["event_precision"], c["n_event_mentions_generated"]],
                    ["event recall", c["event_recall"], c["n_event_mentions_reference"]],
                    ["'no respiratory events' agreement", c["no_resp_events_accuracy"],
                     c["n_no_resp"]],
                    ["fact reader on references", c["reader_check"], c["n"]]])]
    g = c.get("greedy")
    if c.get("checked") and g:
        out += ["", f"Caption check (thresholds {c['check_thresholds']}, chosen on validation; "
                    f"{c['n_captions_changed']} of {c['n']} captions changed): greedy captions "
                    "before the check, same epochs:", "",
                _table(["captions", "event precision", "event recall", "stage correct",
                        "BLEU-4"],
                       [["greedy", g["event_precision"], g["event_recall"],
                         g["stage_accuracy"], g["bleu4"]],
                        ["checked", c["event_precision"], c["event_recall"],
                         c["stage_accuracy"], c["bleu4"]]])]
    for ex in c["examples"][:3]:
        out += ["", f"- `{ex['key']}` ref: {ex['reference']}", f"  gen: {ex['generated']}"]
    loc = res["localisation"]
    qs = {k: v for k, v in loc.items() if isinstance(v, dict) and "f1" in v}
    note = loc.get("calibration", {})
    out += ["", f"## Language-guided localisation ({loc['rule']})", "",
            ("Decision rules (threshold, max gap) chosen on " + note["chosen_on"]
             + " (`calibration.json`, `python -m training.calibrate`); the plain rule (margin "
               "> 0, gap 0) on the same nights in the last column."
             if note.get("calibrated") else "Plain rule: margin > 0, consecutive epochs."), "",
            _table(["query", "threshold / gap", "true intervals", "pred intervals", "TP",
                    "precision", "recall", "F1", "epoch AUROC", "pos epochs / n",
                    "F1 plain rule"],
                   [[k, f"{v.get('threshold', 0.0):+.2f} / {v.get('max_gap', 0)}", v["n_true"],
                     v["n_pred"], v["tp"], v["precision"], v["recall"], v["f1"],
                     v["epoch_auroc"], f"{v['n_positive_epochs']}/{v['n_epochs']}",
                     (v.get("plain_rule") or v)["f1"]]
                    for k, v in qs.items()])]
    gen = {k: v["generative"] for k, v in qs.items() if isinstance(v.get("generative"), dict)}
    if gen:
        out += ["", "Generative localisation (caption decoder, no label trained): evidence = "
                    "log p(a clause naming the event) - log p(its rival clauses), each written "
                    "after the epoch's zero-shot stage phrase (nats; threshold and gap chosen "
                    "on the same validation nights as above).", "",
                _table(["query", "threshold / gap", "true intervals", "pred intervals", "TP",
                        "precision", "recall", "F1", "epoch AUROC", "F1 plain rule"],
                       [[k, f"{v['threshold']:+.2f} / {v['max_gap']}", v["n_true"], v["n_pred"],
                         v["tp"], v["precision"], v["recall"], v["f1"], v["epoch_auroc"],
                         v["plain_rule"]["f1"]] for k, v in gen.items()])]
    u = res["unseen_tasks"]
    rows = []
    for task in ("osa_severity", "osa_severity_from_epochs", "plm_disorder"):
        if task not in u:
            continue
        v = u[task]
        b = v["baseline"]
        name = task + (f" (plain rule: {_f(v['plain_rule']['accuracy'])})"
                       if v.get("plain_rule") else "")
        rows.append([name, v["n"], v["accuracy"], v["macro_f1"],
                     f"{_f(b['majority_train_accuracy'])} ({b['majority_train_class']}, "
                     f"from {b['majority_train_source']})",
                     f"{_f(b['majority_eval_accuracy'])} ({b['majority_eval_class']})",
                     json.dumps(v["truth_counts"])])
    out += ["", "## Unseen night-level tasks (zero-shot; never trained as labels)", "",
            "`osa_severity`/`plm_disorder`: night embedding (mean of its epochs) against "
            "severity prompts. `osa_severity_from_epochs`: epochs closer to one kind of "
            "respiratory event than to 'no respiratory events' (by more than the checkpoint's "
            "threshold), runs (gaps merged, long runs counted as several events by the "
            "checkpoint's rule) per hour of zero-shot-staged sleep, AASM cut-offs.", "",
            _table(["task", "n nights", "accuracy", "macro-F1", "majority (train)",
                    "best constant (eval)", "truth counts"], rows)]
    nr = res.get("night_retrieval")
    if nr is not None:
        out += ["", "## Night-to-night retrieval (same profile first)", ""]
        if nr.get("available"):
            out += [f"{nr['n_queries']} query nights (a same-profile night among the other "
                    f"{nr['n_nights'] - 1}); chance of a same-profile first neighbour "
                    f"{_f(nr['chance_top1'])}.", "",
                    _table(["rule", "same profile first", "MRR"],
                           [["centred cosine (the retrieve tool)",
                             nr["centred"]["same_profile_top1"], nr["centred"]["mrr"]],
                            ["plain cosine of night embeddings",
                             nr["plain"]["same_profile_top1"], nr["plain"]["mrr"]]])]
        else:
            out += [f"Not available: {nr['reason']}."]
    out += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in res["timings_s"].items())]
    return "\n".join(out) + "\n"


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_report(res: dict, out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(res, indent=1, default=_json_default))
    (out / "eval.md").write_text(to_markdown(res))
    return out / "eval.json", out / "eval.md"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="checkpoint folder (config.json, model.safetensors, "
                                         "tokenizer.json)")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", default=None, help="output folder (default: the checkpoint)")
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--ablations", default=None, help="comma-separated checkpoint folders")
    ap.add_argument("--no-yasa", action="store_true")
    ap.add_argument("--allow-train", action="store_true",
                    help="debugging only: allow --split train (not a held-out result)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--caption-sample", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    if a.split == "train" and not a.allow_train:
        ap.error("--split train refused: evaluation uses held-out nights only "
                 "(pass --allow-train to debug on train)")
    kw = dict(max_epochs=a.max_epochs, yasa=not a.no_yasa, allow_train=a.allow_train,
              seed=a.seed, caption_sample=a.caption_sample)
    if a.ablations:
        cks = [c for c in a.ablations.split(",") if c] + ([a.checkpoint] if a.checkpoint else [])
        res = evaluate_many(cks, a.corpus, a.split, **kw)
        out = a.out or "."
    else:
        if not a.checkpoint:
            ap.error("--checkpoint or --ablations is required")
        res = evaluate(a.checkpoint, a.corpus, a.split, **kw)
        out = a.out or a.checkpoint
    js, md = write_report(res, out)
    print(md.read_text())
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
