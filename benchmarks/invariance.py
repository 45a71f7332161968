"""Invariance of SleepLM to what real recordings vary in: the same held-out nights, transformed.

For each transform of :data:`sleeplm.simulate.augment.TRANSFORMS` (amplitude, DC offset,
sampling rate, filters, notch, line noise, 1/f background, sweat, movement, electrode pops, one
derivation, a frontal derivation where central ones are expected), the same simulated nights of
**test-split** Sleep-EDF subjects (never seen in training) are staged zero-shot and captioned,
untransformed and transformed. Per transform: staging accuracy and Cohen's kappa against the
driving hypnogram, agreement with the untransformed staging, and for a sample of epochs the
holistic caption's stated stage (right, and unchanged) and the share of caption clauses kept
(Jaccard of the clause sets). Prints a table and writes ``invariance.json``.

A checkpoint that is robust by construction keeps the agreement near 1 and the accuracy near the
untransformed row; the default checkpoint was trained without these transforms, so this table is
its "before".

Usage: ``python benchmarks/invariance.py [--nights 3] [--hours 2] [--checkpoint DIR]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROFILES = ("healthy_young", "osa_moderate", "healthy_older", "insomnia")


def crop(rec, start_s: float, stop_s: float):
    """The part of a recording between two epoch-aligned times (s), as a new Recording."""
    from sleeplm.recording import Recording, Signal

    sig = {k: Signal(s.name, s.segment(start_s, stop_s), s.sfreq, s.unit, s.label)
           for k, s in rec.signals.items()}
    e0, e1 = int(start_s // rec.epoch_sec), int(stop_s // rec.epoch_sec)
    ev = rec.events[(rec.events["onset"] >= start_s) & (rec.events["onset"] < stop_s)].copy()
    ev["onset"] -= start_s
    return Recording(signals=sig, stages=rec.stages[e0:e1], events=ev.reset_index(drop=True),
                     info=rec.info, epoch_sec=rec.epoch_sec, notes=list(rec.notes))


def test_nights(n: int, hours: float, seed: int = 300) -> list:
    """``n`` simulated nights of test-split subjects, each cut to ``hours`` from sleep onset."""
    from sleeplm.corpus.build import split_of
    from sleeplm.data import hypnogram_ids, subject_of
    from sleeplm.simulate import simulate_night

    ids = [i for i in hypnogram_ids() if split_of(subject_of(i)) == "test"][:n]
    out = []
    for k, hid in enumerate(ids):
        night = simulate_night(hypnogram=hid, profile=PROFILES[k % len(PROFILES)],
                               seed=seed + k, patient_id=f"inv-{hid}")
        rec = night.recording
        onset = int(np.flatnonzero(np.isin(rec.stages, ("N1", "N2", "N3", "R")))[0])
        start = max(onset - 10, 0) * rec.epoch_sec
        out.append(crop(rec, start, min(start + hours * 3600, rec.duration)))
    return out


def clauses(text: str) -> set[str]:
    """A caption's clauses, lower-case, for the Jaccard of two captions."""
    import re

    return {c.strip().lower() for c in re.split(r"[.;]|, ", text) if c.strip()}


def run(out: Path, checkpoint: Path | None = None, nights: int = 3, hours: float = 2.0,
        caption_every: int = 10, transforms: list[str] | None = None) -> dict:
    """Stage and caption every night untransformed and under each transform."""
    import torch
    from sklearn.metrics import cohen_kappa_score
    from tqdm import tqdm

    from sleeplm.corpus.preprocess import ModelInputConfig, epoch_tensor
    from sleeplm.library.patients import embed_epochs
    from sleeplm.model import prompts as P
    from sleeplm.model.captioning import caption_epochs, read_facts
    from sleeplm.model.network import default_checkpoint, load_model
    from sleeplm.model.tokenizer import CaptionTokenizer
    from sleeplm.model.zeroshot import class_embeddings, stage_scores
    from sleeplm.simulate.augment import TRANSFORMS, apply_transform

    t0 = time.perf_counter()
    ck = Path(checkpoint or default_checkpoint())
    model = load_model(ck)
    tok = CaptionTokenizer.load(ck / "tokenizer.json")
    mc = json.loads((ck / "config.json").read_text())
    cfg = ModelInputConfig(channels=tuple(mc["channels"]), sfreq=float(mc["sfreq"]),
                           epoch_sec=float(mc["epoch_sec"]))
    classes = class_embeddings(model, tok, P.STAGE_PROMPTS, list(P.STAGES))
    recs = test_nights(nights, hours)
    names = ["none"] + list(transforms or TRANSFORMS)

    def read(rec) -> tuple[np.ndarray, list[str]]:
        mi = epoch_tensor(rec, cfg)
        emb = embed_epochs(model, mi.x, mi.mask)
        pred = np.asarray(P.STAGES)[stage_scores(emb, classes).argmax(1)]
        idx = np.arange(0, mi.n_epochs, caption_every)
        x = torch.from_numpy(np.asarray(mi.x[idx], np.float32))
        m = torch.from_numpy(np.broadcast_to(mi.mask, (idx.size, mi.mask.size)).copy())
        caps = [c.text for c in caption_epochs(model, tok, x, m, channels=cfg.channels)]
        return pred, caps

    base = {}
    rows: dict[str, dict] = {}
    for name in tqdm(names, desc="transforms", unit="transform"):
        truth_all, pred_all, agree, cap_right, cap_same, jac = [], [], [], [], [], []
        for k, rec in enumerate(recs):
            r = rec if name == "none" else apply_transform(rec, name, seed=k)
            pred, caps = read(r)
            truth = np.asarray(rec.stages[: pred.size]).astype(str)
            if name == "none":
                base[k] = (pred, caps)
            b_pred, b_caps = base[k]
            truth_all += list(truth)
            pred_all += list(pred)
            agree += list(pred == b_pred)
            for j, (c, bc) in enumerate(zip(caps, b_caps)):
                st, bst = read_facts(c)["stage"], read_facts(bc)["stage"]
                cap_right.append(st == truth[j * caption_every])
                cap_same.append(st == bst)
                a, b = clauses(c), clauses(bc)
                jac.append(len(a & b) / len(a | b) if a | b else 1.0)
        t, p = np.asarray(truth_all), np.asarray(pred_all)
        rows[name] = {"epochs": int(t.size), "accuracy": round(float((t == p).mean()), 4),
                      "kappa": round(float(cohen_kappa_score(t, p)), 4),
                      "agreement": round(float(np.mean(agree)), 4),
                      "captions": len(cap_right),
                      "caption_stage_right": round(float(np.mean(cap_right)), 4),
                      "caption_stage_unchanged": round(float(np.mean(cap_same)), 4),
                      "caption_clauses_kept": round(float(np.mean(jac)), 4)}
    report = {"checkpoint": str(ck), "nights": [r.info.patient_id for r in recs],
              "hours_per_night": hours, "caption_every": caption_every, "transforms": rows,
              "seconds": round(time.perf_counter() - t0, 1),
              "note": "simulated nights of test-split subjects; the default checkpoint was "
                      "trained without these transforms"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "invariance.json").write_text(json.dumps(report, indent=1))
    return report


def table(report: dict) -> str:
    """The invariance table as Markdown."""
    lines = ["| transform | staging acc | kappa | same stage as untransformed | caption stage "
             "right | caption stage unchanged | caption clauses kept |",
             "|---|---|---|---|---|---|---|"]
    for name, r in report["transforms"].items():
        lines.append(f"| {name} | {r['accuracy']:.3f} | {r['kappa']:.3f} | {r['agreement']:.3f} "
                     f"| {r['caption_stage_right']:.3f} | {r['caption_stage_unchanged']:.3f} | "
                     f"{r['caption_clauses_kept']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--nights", type=int, default=3)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--caption-every", type=int, default=10,
                    help="caption every k-th epoch (default 10)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "invariance")
    args = ap.parse_args(argv)
    report = run(args.out, args.checkpoint, args.nights, args.hours, args.caption_every)
    print(f"{len(report['nights'])} nights x {report['hours_per_night']} h "
          f"({report['transforms']['none']['epochs']} epochs), checkpoint {report['checkpoint']}")
    print(table(report))
    print(f"wrote {args.out / 'invariance.json'} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
