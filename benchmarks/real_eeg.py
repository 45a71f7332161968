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


def run(sleep_edf: Path, out: Path, checkpoint: Path | None = None,
        cache: Path | None = None, wake_margin_min: float | None = 30.0) -> dict:
    """Run the benchmark over a folder of Sleep-EDF PSG + hypnogram pairs; return the report."""
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
        row["seconds"] = round(time.perf_counter() - t0, 2)
        nights[pid] = row
    report = {
        "data": str(sleep_edf), "checkpoint": str(lib.model_dir),
        "wake_margin_min": wake_margin_min, "nights": nights,
        "pooled": {"sleeplm": metrics(pooled["truth"], pooled["sleeplm"]),
                   "yasa": metrics(pooled["truth_yasa"], pooled["yasa"]),
                   "yasa_nights": sum(1 for r in nights.values()
                                      if "accuracy" in r.get("yasa", {}))},
        "note": "SleepLM's default checkpoint was trained on simulated nights only; YASA's "
                "staging was trained and validated on real PSG.",
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_eeg.json").write_text(json.dumps(report, indent=1))
    return report


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
    lines.append(report["note"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sleep-edf", type=Path, required=True,
                    help="folder of Sleep-EDF *-PSG.edf files with their *-Hypnogram.edf")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="SleepLM checkpoint (default: $SLEEPLM_MODEL or models/sleeplm-default)")
    ap.add_argument("--cache", type=Path, default=None, help="library cache (default OUT/cache)")
    ap.add_argument("--wake-margin-min", type=float, default=30.0,
                    help="score wake only this close to sleep, minutes (negative: all wake)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    if not args.sleep_edf.is_dir():
        ap.error(f"--sleep-edf {args.sleep_edf} is not a folder")
    report = run(args.sleep_edf, args.out, args.checkpoint, args.cache,
                 None if args.wake_margin_min < 0 else args.wake_margin_min)
    print(table(report))
    print(f"written: {args.out / 'real_eeg.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
