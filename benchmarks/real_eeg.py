"""Benchmark on real data you download yourself: SleepLM's zero-shot staging vs YASA's staging,
on the same epochs of real PSG, against the expert's hypnogram.

Nothing here downloads anything. Get the Sleep-EDF Expanded recordings from PhysioNet (e.g.
``SC4001E0-PSG.edf`` with ``SC4001EC-Hypnogram.edf``; the cassette files are 100 Hz Fpz-Cz /
Pz-Oz EEG, horizontal EOG and a 1-Hz chin EMG envelope) into one folder, then::

    python benchmarks/real_eeg.py --sleep-edf DIR [--checkpoint DIR] [--wake-margin-min 30]

Every PSG file with its hypnogram is read through the patient library (the assistant's own
path: reader, model input, SleepLM embeddings, cached in ``--cache``), staged zero-shot by
SleepLM (argmax of the stage prompts, :mod:`sleeplm.model.zeroshot`) and by YASA's
``SleepStaging`` (:func:`sleeplm.clinical.staging.auto_stage`, the automatic staging of
unscored studies). Both are scored on the same scored epochs (unscored and movement epochs
left out; wake further than ``--wake-margin-min`` from sleep trimmed, as is usual for the long
Sleep-EDF cassette recordings): accuracy, Cohen's kappa and per-stage F1, per night and pooled.
Prints a table and writes ``real_eeg.json`` to ``--out``.

``--dreams DIR`` does the same on the DREAMS Spindles database (University of Mons; eight
30-min excerpts ``excerptN.edf`` with ``Hypnogram_excerptN.txt``, 5-s R&K stages read as 30-s
epochs, and ``Visual_scoring1/2_excerptN.txt``, two experts' spindles), and adds **spindle
localisation** per 30-s epoch against each expert: SleepLM's "sleep spindles" query (margin >
0, :func:`sleeplm.model.zeroshot.known_query_margins`, as the ``localize`` tool), YASA's
``spindles_detect`` on the same EEG channel, and flagging every epoch (the baseline to beat):
precision, recall and F1 of epochs holding an expert's spindle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("W", "N1", "N2", "N3", "R")


def scored_epochs(truth: np.ndarray, wake_margin_epochs: int | None) -> np.ndarray:
    """Indices of the epochs to score: a stage of :data:`STAGES` (not UNS), and, with a margin,
    no further than that many epochs from the first / last sleep epoch."""
    truth = np.asarray(truth).astype(str)
    keep = np.isin(truth, STAGES)
    sleep = np.flatnonzero(np.isin(truth, STAGES[1:]))
    if wake_margin_epochs is not None and sleep.size:
        idx = np.arange(truth.size)
        keep &= (idx >= sleep[0] - wake_margin_epochs) & (idx <= sleep[-1] + wake_margin_epochs)
    return np.flatnonzero(keep)


def metrics(truth, pred) -> dict:
    """Accuracy, Cohen's kappa and per-stage F1 (stages of :data:`STAGES`)."""
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

    truth, pred = np.asarray(truth).astype(str), np.asarray(pred).astype(str)
    if truth.size == 0:
        return {"n_epochs": 0}
    f1 = f1_score(truth, pred, labels=list(STAGES), average=None, zero_division=0)
    present = [s for s in STAGES if (truth == s).any()]
    return {"n_epochs": int(truth.size), "accuracy": round(float(accuracy_score(truth, pred)), 4),
            "kappa": round(float(cohen_kappa_score(truth, pred)), 4),
            "macro_f1": round(float(np.mean([f for s, f in zip(STAGES, f1) if s in present])), 4),
            "f1": {s: round(float(f), 4) for s, f in zip(STAGES, f1) if s in present}}


def stage_classes(lib) -> np.ndarray:
    """The checkpoint's stage class vectors (one per stage of the zero-shot prompt table)."""
    from sleeplm.model import prompts as P
    from sleeplm.model.tokenizer import CaptionTokenizer
    from sleeplm.model.zeroshot import class_embeddings

    tok = CaptionTokenizer.load(lib.model_dir / "tokenizer.json")
    return class_embeddings(lib.model, tok, P.STAGE_PROMPTS, list(P.STAGES))


def sleeplm_stages(lib, patient: str, classes: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth, SleepLM zero-shot stage, onset s) of every model epoch of a library patient."""
    from sleeplm.model import prompts as P
    from sleeplm.model.zeroshot import stage_scores

    p = lib.open(patient, progress=False)
    pred = np.asarray(P.STAGES)[stage_scores(np.asarray(p.epoch_embeddings), classes).argmax(1)]
    return np.asarray(p.stages).astype(str), pred.astype(str), np.asarray(p.onsets_s, float)


def yasa_stages(lib, patient: str, onsets_s: np.ndarray) -> tuple[np.ndarray | None, str]:
    """YASA's stage at each onset (None and the reason when it cannot stage the night)."""
    from sleeplm.clinical.staging import StagingUnavailable, auto_stage
    from sleeplm.recording import Recording

    rec = lib.open(patient, progress=False).recording()
    try:
        staging = auto_stage(Recording(signals=rec.signals, info=rec.info))
    except StagingUnavailable as exc:
        return None, str(exc)
    hyp = np.asarray(staging.stages, dtype=object)
    j = np.clip((onsets_s // 30).astype(int), 0, len(hyp) - 1)
    return hyp[j].astype(str), ", ".join(f"{k} {v}" for k, v in staging.channels.items())


def epoch_flags(events, onsets_s: np.ndarray, epoch_sec: float = 30.0) -> np.ndarray:
    """True for each epoch (onset in s) that an event (``onset``, ``duration`` s) overlaps."""
    out = np.zeros(len(onsets_s), dtype=bool)
    for on, dur in zip(events["onset"], events["duration"]):
        out |= (onsets_s < on + dur) & (onsets_s + epoch_sec > on)
    return out


def flag_metrics(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Epoch-level precision, recall and F1 of flags against the truth."""
    truth, pred = np.asarray(truth, bool), np.asarray(pred, bool)
    tp = int((truth & pred).sum())
    prec = tp / pred.sum() if pred.sum() else 0.0
    rec = tp / truth.sum() if truth.sum() else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"epochs": int(truth.size), "truth_epochs": int(truth.sum()),
            "flagged": int(pred.sum()), "precision": round(float(prec), 4),
            "recall": round(float(rec), 4), "f1": round(float(f1), 4)}


def dreams_spindles(lib, patient: str, folder: Path, onsets_s: np.ndarray) -> dict:
    """Spindle epochs of each DREAMS expert vs SleepLM's query, YASA's detector, all epochs."""
    import yasa

    from sleeplm.io.dreams import read_dreams_events
    from sleeplm.model import prompts as P
    from sleeplm.model.tokenizer import CaptionTokenizer
    from sleeplm.model.zeroshot import class_embeddings, known_query_margins

    experts = {}
    for k in (1, 2):
        f = folder / f"Visual_scoring{k}_{patient}.txt"
        if f.is_file():
            experts[f"expert{k}"] = epoch_flags(read_dreams_events(f), onsets_s)
    if not experts:
        return {"skipped": "no Visual_scoring files"}
    p = lib.open(patient, progress=False)
    tok = CaptionTokenizer.load(lib.model_dir / "tokenizer.json")
    margins = known_query_margins(np.asarray(p.epoch_embeddings),
                                  lambda table, keys: class_embeddings(lib.model, tok, table, keys),
                                  ["spindles"])[:, 0]
    methods = {"sleeplm": margins > 0, "every_epoch": np.ones(len(onsets_s), bool)}
    rec = p.recording()
    eeg = next((c for c in ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O") if c in rec.signals), None)
    if eeg is not None:
        sig = rec.signals[eeg]
        sp = yasa.spindles_detect(np.asarray(sig.data, float), sig.sfreq, verbose="ERROR")
        det = sp.summary() if sp is not None else None
        ev = ({"onset": det["Start"].to_numpy(), "duration": det["Duration"].to_numpy()}
              if det is not None else {"onset": [], "duration": []})
        methods["yasa"] = epoch_flags(ev, onsets_s)
    out = {"eeg": eeg}
    for ename, truth in experts.items():
        out[ename] = {m: flag_metrics(truth, pred) for m, pred in methods.items()}
    return out


def run(sleep_edf: Path, out: Path, checkpoint: Path | None = None,
        cache: Path | None = None, wake_margin_min: float | None = 30.0,
        dataset: str = "sleep-edf") -> dict:
    """Run the benchmark over a folder of PSG + hypnogram pairs (Sleep-EDF, or the DREAMS
    Spindles excerpts with ``dataset="dreams"``); return the report."""
    from sleeplm.library.patients import PatientLibrary
    from sleeplm.model.network import default_checkpoint

    lib = PatientLibrary(sleep_edf, model_dir=checkpoint or default_checkpoint(),
                         cache_dir=cache or (out / "cache"))
    margin = None if wake_margin_min is None else int(round(wake_margin_min * 2))
    classes = stage_classes(lib)  # once: the prompts' embeddings do not depend on the night
    nights, pooled = {}, {"truth": [], "sleeplm": [], "yasa": [], "truth_yasa": []}
    for pid in lib.patients():
        entry = lib.study(pid)
        if entry.annotation_path is None:
            nights[pid] = {"skipped": "no hypnogram next to the PSG file"}
            continue
        t0 = time.perf_counter()
        truth, lm, onsets = sleeplm_stages(lib, pid, classes)
        idx = scored_epochs(truth, margin)
        ya, how = yasa_stages(lib, pid, onsets)
        row = {"epochs_scored": int(idx.size), "sleeplm": metrics(truth[idx], lm[idx])}
        pooled["truth"] += list(truth[idx])
        pooled["sleeplm"] += list(lm[idx])
        if ya is None:
            row["yasa"] = {"unavailable": how}
        else:
            row["yasa"] = metrics(truth[idx], ya[idx]) | {"channels": how}
            pooled["truth_yasa"] += list(truth[idx])
            pooled["yasa"] += list(ya[idx])
        if dataset == "dreams":
            row["spindles"] = dreams_spindles(lib, pid, sleep_edf, onsets)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        nights[pid] = row
    report = {
        "data": str(sleep_edf), "dataset": dataset, "checkpoint": str(lib.model_dir),
        "wake_margin_min": wake_margin_min, "nights": nights,
        "pooled": {"sleeplm": metrics(pooled["truth"], pooled["sleeplm"]),
                   "yasa": metrics(pooled["truth_yasa"], pooled["yasa"]),
                   "yasa_nights": sum(1 for r in nights.values()
                                      if "accuracy" in r.get("yasa", {}))},
        "note": "SleepLM's default checkpoint was trained on simulated nights only; YASA's "
                "staging was trained and validated on real PSG.",
    }
    if dataset == "dreams":
        report["pooled"]["spindles"] = pooled_spindles(nights)
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_eeg.json").write_text(json.dumps(report, indent=1))
    return report


def pooled_spindles(nights: dict) -> dict:
    """Spindle flag counts summed over excerpts, per expert and method, as metrics."""
    out: dict = {}
    for row in nights.values():
        for ename, per in row.get("spindles", {}).items():
            if not isinstance(per, dict) or ename == "eeg":
                continue
            for m, r in per.items():
                acc = out.setdefault(ename, {}).setdefault(m, {"tp": 0, "flagged": 0,
                                                               "truth": 0, "epochs": 0})
                acc["tp"] += round(r["recall"] * r["truth_epochs"])
                acc["flagged"] += r["flagged"]
                acc["truth"] += r["truth_epochs"]
                acc["epochs"] += r["epochs"]
    for ename, per in out.items():
        for m, a in per.items():
            prec = a["tp"] / a["flagged"] if a["flagged"] else 0.0
            rec = a["tp"] / a["truth"] if a["truth"] else 0.0
            per[m] = {"epochs": a["epochs"], "truth_epochs": a["truth"], "flagged": a["flagged"],
                      "precision": round(prec, 4), "recall": round(rec, 4),
                      "f1": round(2 * prec * rec / (prec + rec), 4) if prec + rec else 0.0}
    return out


def table(report: dict) -> str:
    """The report as a text table (per night and pooled)."""
    def cell(m: dict) -> str:
        if "accuracy" not in m:
            return f"{'n/a':>18}"
        return f"{m['accuracy']:>8.3f} {m['kappa']:>9.3f}"

    lines = [f"{'night':<24} {'epochs':>7}  {'SleepLM acc':>8} {'kappa':>9}  "
             f"{'YASA acc':>8} {'kappa':>9}"]
    for pid, r in report["nights"].items():
        if "skipped" in r:
            lines.append(f"{pid:<24} skipped: {r['skipped']}")
            continue
        lines.append(f"{pid:<24} {r['epochs_scored']:>7}  {cell(r['sleeplm'])}  "
                     f"{cell(r['yasa'])}")
    p = report["pooled"]
    lines.append(f"{'pooled':<24} {p['sleeplm'].get('n_epochs', 0):>7}  {cell(p['sleeplm'])}  "
                 f"{cell(p['yasa'])}")
    for name in ("sleeplm", "yasa"):
        if "f1" in p[name]:
            lines.append(f"  {name} per-stage F1: " + ", ".join(
                f"{s} {v:.2f}" for s, v in p[name]["f1"].items()))
    for ename, per in report["pooled"].get("spindles", {}).items():
        lines.append(f"  spindle epochs vs {ename} (pooled): " + "; ".join(
            f"{m} P {r['precision']:.2f} R {r['recall']:.2f} F1 {r['f1']:.2f}"
            for m, r in per.items()))
    lines.append(report["note"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--sleep-edf", type=Path,
                     help="folder of Sleep-EDF *-PSG.edf files with their *-Hypnogram.edf")
    src.add_argument("--dreams", type=Path,
                     help="folder of the DREAMS Spindles database (excerptN.edf, "
                          "Hypnogram_excerptN.txt, Visual_scoring1/2_excerptN.txt)")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="SleepLM checkpoint (default: $SLEEPLM_MODEL or models/sleeplm-default)")
    ap.add_argument("--cache", type=Path, default=None, help="library cache (default OUT/cache)")
    ap.add_argument("--wake-margin-min", type=float, default=30.0,
                    help="score wake only this close to sleep, minutes (negative: all wake)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    folder = args.sleep_edf or args.dreams
    dataset = "sleep-edf" if args.sleep_edf else "dreams"
    if not folder.is_dir():
        ap.error(f"--{dataset} {folder} is not a folder")
    margin = None if args.wake_margin_min < 0 or dataset == "dreams" else args.wake_margin_min
    report = run(folder, args.out, args.checkpoint, args.cache, margin, dataset=dataset)
    print(table(report))
    print(f"written: {args.out / 'real_eeg.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
