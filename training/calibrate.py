"""Choose a checkpoint's zero-shot decision rules on the validation nights.

Usage::

    python -m training.calibrate --checkpoint CKPT --corpus CORPUS [--split validation]
                                 [--only captions]

Writes ``calibration.json`` into the checkpoint folder (:mod:`sleeplm.model.calibration`) and prints
what was chosen, next to the plain rule (margin > 0, consecutive epochs, one event per run) on
the same nights. Python: ``calibrate(checkpoint, corpus) -> Calibration``.

What is chosen, by grid search on the held-out **validation** split (the test split is
refused: rules chosen there would make the test figures training figures):

* per localisation query (:data:`sleeplm.model.prompts.LOCALISATION_QUERIES`): the margin threshold
  and the largest gap of quiet epochs inside one interval, maximising event-level F1 at IoU
  >= 0.3 pooled over the nights (:func:`training.evaluate.pooled_interval_f1`);
* per generative query (:data:`sleeplm.model.prompts.GENERATIVE_QUERIES`, caption-decoder evidence
  in nats, :func:`training.evaluate.generative_query_margins`): the same, stored as
  ``generative:<query>``;
* the caption check (:mod:`sleeplm.model.captioning`): per generative query, the margin threshold
  below which a greedy holistic caption's mention of the query's event is withdrawn (or no
  check), maximising the micro F1 of the event mentions read back from the captions of a
  seeded sample of validation epochs (coordinate ascent over the queries, two rounds), stored
  as ``captions``;
* the night-level respiratory event index (:func:`sleeplm.model.zeroshot.night_event_index`):
  threshold, gap and epochs per event, maximising the accuracy of the AASM severity class
  (none / mild / moderate / severe) over the nights, ties broken by the mean absolute error
  of log(1 + index).

Ties of F1 go to the smaller gap, then to the threshold nearest 0 (the plain rule), so a
rule moves away from the plain one only where it helps on these nights.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sleeplm.model import prompts as P
from sleeplm._logging import logger
from sleeplm.model.captioning import CHECKED_QUERIES, CheckedCaption, withdraw
from sleeplm.model.calibration import (Calibration, EventIndexRule, IntervalRule, load_calibration,
                                 save_calibration, weights_digest)
from sleeplm.model.zeroshot import class_embeddings, known_query_margins, night_event_index
from training import evaluate as E

__all__ = ["calibrate", "choose_interval_rule", "choose_event_index_rule",
           "choose_caption_thresholds", "caption_check_scores", "CAPTION_SAMPLE", "THRESHOLDS",
           "GAPS", "EPOCHS_PER_EVENT", "GENERATIVE_THRESHOLDS", "main"]

#: Margin thresholds searched (cosine units).
THRESHOLDS: tuple[float, ...] = tuple(round(t, 3) for t in np.arange(-0.10, 0.301, 0.01))
#: Thresholds searched for the generative (caption-decoder) queries (nats).
GENERATIVE_THRESHOLDS: tuple[float, ...] = tuple(round(t, 2) for t in np.arange(-4.0, 4.01, 0.25))
#: Validation epochs captioned to choose the caption check's thresholds.
CAPTION_SAMPLE = 3000
#: Gaps of quiet epochs searched.
GAPS: tuple[int, ...] = (0, 1, 2, 3, 4, 6)
#: Epochs per event searched for the night index (0: one event per interval).
EPOCHS_PER_EVENT: tuple[float, ...] = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)


def choose_interval_rule(nights: np.ndarray, epochs: np.ndarray, margins: np.ndarray,
                         truth: np.ndarray, thresholds: Sequence[float] = THRESHOLDS,
                         gaps: Sequence[int] = GAPS, iou: float = 0.3
                         ) -> tuple[IntervalRule, dict, dict]:
    """The rule with the best pooled event-level F1 on these nights.

    Returns
    -------
    rule : IntervalRule
    chosen : dict
        Its :func:`training.evaluate.pooled_interval_f1` result.
    plain : dict
        The plain rule's (margin > 0, gap 0) on the same nights.
    """
    plain = E.pooled_interval_f1(nights, epochs, margins, truth, None, iou)
    best_key, best = None, None
    for gap, thr in itertools.product(gaps, thresholds):
        rule = IntervalRule(threshold=float(thr), max_gap=int(gap))
        r = E.pooled_interval_f1(nights, epochs, margins, truth, rule, iou)
        key = (r["f1"] or 0.0, -gap, -abs(thr))
        if best_key is None or key > best_key:
            best_key, best = key, (rule, r)
    return best[0], best[1], plain


def _severity_score(est: dict[str, float], ahi: dict[str, float]) -> tuple[float, float]:
    ok = [E.severity_class(est[n]) == E.severity_class(ahi[n]) for n in ahi]
    err = [abs(math.log1p(max(est[n], 0.0)) - math.log1p(ahi[n])) for n in ahi]
    return float(np.mean(ok)) if ok else 0.0, float(np.mean(err)) if err else 0.0


def choose_event_index_rule(per_night: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                            ahi: dict[str, float], epoch_sec: float = 30.0,
                            thresholds: Sequence[float] = THRESHOLDS,
                            gaps: Sequence[int] = GAPS,
                            epochs_per_event: Sequence[float] = EPOCHS_PER_EVENT
                            ) -> tuple[EventIndexRule, dict, dict]:
    """The event-index rule with the best severity accuracy on these nights.

    Parameters
    ----------
    per_night : dict
        night -> (margins [N], epoch numbers [N], asleep [N] bool), epochs in order.
    ahi : dict
        night -> true AHI (events/h), the nights to score.

    Returns
    -------
    rule : EventIndexRule
    chosen, plain : dict
        ``accuracy``, ``log_mae`` and ``per_night`` estimates of the chosen and plain rules.
    """
    names = [n for n in ahi if n in per_night]
    if not names:
        raise ValueError("no night with both margins and a true AHI to calibrate on")

    def run(rule):
        est = {n: night_event_index(*per_night[n], epoch_sec, rule) for n in names}
        est = {n: (v if math.isfinite(v) else 0.0) for n, v in est.items()}
        acc, err = _severity_score(est, {n: ahi[n] for n in names})
        return {"accuracy": acc, "log_mae": err,
                "per_night": {n: round(v, 1) for n, v in est.items()}}

    plain = run(None)
    best_key, best = None, None
    for epe, gap, thr in itertools.product(epochs_per_event, gaps, thresholds):
        rule = EventIndexRule(threshold=float(thr), max_gap=int(gap),
                              epochs_per_event=float(epe))
        r = run(rule)
        key = (r["accuracy"], -r["log_mae"], -gap, -abs(thr))
        if best_key is None or key > best_key:
            best_key, best = key, (rule, r)
    return best[0], best[1], plain


def caption_check_scores(caps: Sequence[CheckedCaption], ref_facts: Sequence[dict],
                         thresholds: dict[str, float]) -> dict:
    """Fact scores (:func:`training.evaluate` captioning facts) of greedy captions checked with
    ``thresholds``; ``caps`` carry the margins of every event they name (checked with a
    threshold of -inf for every query, so nothing was withdrawn)."""
    texts = []
    for c in caps:
        named = [q for q in c.margins if q in thresholds]
        rejected = [q for q in named if c.margins[q] < thresholds[q]]
        confirmed = [q for q in named if q not in rejected]
        texts.append(withdraw(c.greedy, rejected, confirmed)[0] if named else c.greedy)
    return E._fact_scores(texts, ref_facts)


def choose_caption_thresholds(caps: Sequence[CheckedCaption], ref_facts: Sequence[dict],
                              queries: Sequence[str],
                              thresholds: Sequence[float] = GENERATIVE_THRESHOLDS,
                              rounds: int = 2) -> tuple[dict[str, float], dict, dict]:
    """Per query, no check or the threshold with the best micro F1 of caption event mentions
    (coordinate ascent, ``rounds`` passes; ties go to no check, then to the lowest threshold).

    Returns
    -------
    chosen : dict
        query -> threshold (queries left unchecked are absent).
    scores, greedy : dict
        :func:`caption_check_scores` with the chosen thresholds and without any check.
    """
    def f1(r):
        p, rc = r["event_precision"] or 0.0, r["event_recall"] or 0.0
        return 2 * p * rc / (p + rc) if p + rc else 0.0

    chosen: dict[str, float] = {}
    for _ in range(rounds):
        for q in queries:
            base = {k: v for k, v in chosen.items() if k != q}
            pick, pick_f1 = None, f1(caption_check_scores(caps, ref_facts, base))
            for t in thresholds:
                v = f1(caption_check_scores(caps, ref_facts, {**base, q: float(t)}))
                if v > pick_f1 + 1e-12:
                    pick, pick_f1 = float(t), v
            chosen = base if pick is None else {**base, q: pick}
    return (chosen, caption_check_scores(caps, ref_facts, chosen),
            caption_check_scores(caps, ref_facts, {}))


def _caption_rules(model, tok, data, facts, sample: int, seed: int) -> tuple[dict, dict]:
    idx = E.caption_indices(data, sample, seed, stream=11)
    logger.info("calibrate: caption check on %d captioned validation epochs", len(idx))
    queries = [q for q in P.GENERATIVE_QUERIES if q in CHECKED_QUERIES]
    with torch.no_grad():
        caps = E.checked_captions(model, tok, data, idx, {q: -math.inf for q in queries})
    ref_f = [E.reference_facts(facts.get(data["key"][i], {}).get("holistic", {})) for i in idx]
    chosen, scores, greedy = choose_caption_thresholds(caps, ref_f, queries)
    return chosen, {"n_captions": len(idx), "greedy": greedy, "chosen": scores}


def calibrate(checkpoint: str | Path, corpus: str | Path, split: str = "validation",
              write: bool = True, only: str | None = None,
              caption_sample: int = CAPTION_SAMPLE, seed: int = 0) -> Calibration:
    """Choose and (``write``) save the checkpoint's rules from ``split`` of ``corpus``.

    ``only="captions"`` chooses the caption check alone and keeps every other rule of the
    checkpoint's current ``calibration.json`` (which must belong to these weights).

    Raises
    ------
    ValueError
        ``split`` is not ``validation`` (the test split is for reporting only; the train
        split's margins are fitted), or it holds no epochs; ``only`` is not ``captions``, or
        there is no calibration of these weights to keep.
    """
    if only not in (None, "captions"):
        raise ValueError(f"only={only!r}: the one part that can be chosen alone is 'captions'")
    if split != "validation":
        raise ValueError(f"split {split!r} refused: decision rules are chosen on the validation "
                         "split only (test figures must stay held-out; train margins are "
                         "fitted)")
    t0 = time.time()
    corpus = Path(corpus)
    model, tok = E._load(checkpoint)
    data = E._load_data(corpus, split, model.cfg.channels, None, model.cfg.sfreq)
    if len(data["key"]) == 0:
        raise ValueError(f"no epochs in split {split!r} of {corpus}: build the corpus with "
                         "validation nights first")
    facts, _, nights = E._corpus_meta(corpus, split, set(data["key"]))
    if only == "captions":
        cal = load_calibration(checkpoint)
        if cal.is_plain or cal.weights_sha256 != weights_digest(checkpoint):
            raise ValueError(f"{checkpoint} has no calibration.json of these weights to keep: "
                             "run python -m training.calibrate without --only first")
        cal.captions, cal.validation["captions"] = _caption_rules(model, tok, data, facts,
                                                                  caption_sample, seed)
        if write:
            path = save_calibration(cal, checkpoint)
            logger.info("calibrate: wrote the caption check into %s in %.0f s", path,
                        time.time() - t0)
        return cal
    logger.info("calibrate: embedding %d epochs of %d nights", len(data["key"]),
                len(set(data["night"])))
    emb = E._embed_signals(model, data)
    names = list(P.LOCALISATION_QUERIES)
    scores = known_query_margins(emb, lambda t, c: class_embeddings(model, tok, t, c), names)
    truth = E.localisation_truth(data, facts, names)
    rules, report = {}, {}
    for qi, name in enumerate(names):
        if not truth[:, qi].any():
            logger.warning("calibrate: no %s epoch in %s; keeping the plain rule", name, split)
            continue
        rule, chosen, plain = choose_interval_rule(data["night"], data["epoch"], scores[:, qi],
                                                   truth[:, qi])
        rules[name] = rule
        report[name] = {"plain": plain, "chosen": chosen}
    _, pred, _ = E._zero_shot(model, tok, emb, data)
    logger.info("calibrate: generative queries (caption decoder) on %d epochs", len(pred))
    gnames, gen = E.generative_query_margins(model, tok, data, pred)
    for gi, name in enumerate(gnames):
        y = truth[:, names.index(name)]
        if not y.any():
            continue
        rule, chosen, plain = choose_interval_rule(data["night"], data["epoch"], gen[:, gi], y,
                                                   thresholds=GENERATIVE_THRESHOLDS)
        rules[E.GENERATIVE_PREFIX + name] = rule
        report[E.GENERATIVE_PREFIX + name] = {"plain": plain, "chosen": chosen}
    per_night, ahi = E.night_event_inputs(data, E.respiratory_event_margins(model, tok, emb),
                                          pred, nights)
    ev_rule, ev_chosen, ev_plain = choose_event_index_rule(per_night, ahi,
                                                           float(model.cfg.epoch_sec))
    report["event_index"] = {"plain": ev_plain, "chosen": ev_chosen,
                             "true_ahi": {n: round(v, 1) for n, v in ahi.items()},
                             "true_classes": dict(sorted(
                                 {c: sum(E.severity_class(v) == c for v in ahi.values())
                                  for c in P.OSA_SEVERITY_CLASSES}.items()))}
    captions, report["captions"] = _caption_rules(model, tok, data, facts, caption_sample, seed)
    cal = Calibration(weights_sha256=weights_digest(checkpoint), corpus=str(corpus),
                      split=split, n_nights=len(set(data["night"])), n_epochs=len(data["key"]),
                      localisation=rules, event_index=ev_rule, captions=captions,
                      validation=report)
    if write:
        path = save_calibration(cal, checkpoint)
        logger.info("calibrate: wrote %s in %.0f s", path, time.time() - t0)
    return cal


def to_markdown(cal: Calibration) -> str:
    """The chosen rules next to the plain rule on the calibration nights."""
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"# Decision rules chosen on {cal.corpus} split {cal.split} ({cal.n_nights} nights, "
             f"{cal.n_epochs} epochs)", "",
             "| query | threshold | max gap | F1 plain | F1 chosen | P / R chosen |",
             "|---|---|---|---|---|---|"]
    for name, rule in cal.localisation.items():
        r = cal.validation.get(name, {})
        c, p = r.get("chosen", {}), r.get("plain", {})
        lines.append(f"| {name} | {rule.threshold:+.2f} | {rule.max_gap} | {f(p.get('f1'))} | "
                     f"{f(c.get('f1'))} | {f(c.get('precision'))} / {f(c.get('recall'))} |")
    ev, r = cal.event_index, cal.validation.get("event_index", {})
    lines += ["", "| event index | threshold | max gap | epochs per event | severity acc. plain | "
                  "chosen |", "|---|---|---|---|---|---|",
              f"| respiratory | {ev.threshold:+.2f} | {ev.max_gap} | {ev.epochs_per_event:g} | "
              f"{f(r.get('plain', {}).get('accuracy'))} | "
              f"{f(r.get('chosen', {}).get('accuracy'))} |"]
    if r.get("true_classes"):
        lines += ["", f"Severity classes of the calibration nights: {r['true_classes']}."]
    cr = cal.validation.get("captions")
    if cr:
        g, c = cr["greedy"], cr["chosen"]
        lines += ["", f"Caption check ({cr['n_captions']} captioned epochs): thresholds "
                      f"{cal.captions or 'none (no check helps)'}", "",
                  "| captions | event precision | event recall | stage accuracy |",
                  "|---|---|---|---|",
                  f"| greedy | {f(g['event_precision'])} | {f(g['event_recall'])} | "
                  f"{f(g['stage_accuracy'])} |",
                  f"| checked | {f(c['event_precision'])} | {f(c['event_recall'])} | "
                  f"{f(c['stage_accuracy'])} |"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="checkpoint folder")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--split", default="validation", help="validation (the only one allowed)")
    ap.add_argument("--dry-run", action="store_true", help="print, do not write")
    ap.add_argument("--only", choices=["captions"], default=None,
                    help="choose only the caption check, keeping the other rules")
    ap.add_argument("--caption-sample", type=int, default=CAPTION_SAMPLE,
                    help=f"validation epochs captioned for the caption check "
                         f"(default {CAPTION_SAMPLE})")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    try:
        cal = calibrate(a.checkpoint, a.corpus, a.split, write=not a.dry_run, only=a.only,
                        caption_sample=a.caption_sample)
    except (ValueError, FileNotFoundError) as exc:
        print(f"calibrate: error: {exc}", file=sys.stderr)
        return 2
    print(to_markdown(cal))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
