"""SleepLM on a partial montage: the same held-out epochs shown with only some of their channels.

Real studies often lack modalities: a headband has one EEG derivation, a Holter only heart
rate, an oximeter only SpO2, a home apnea test no EEG. For every montage of
:data:`sleeplm.corpus.robustness.MODALITY_SUBSETS` (plus the full one), the held-out epochs of a
corpus split (by subject; never trained on) are masked to that montage and, per checkpoint in
the same run:

* **staging**: zero-shot stage accuracy and Cohen's kappa against the scored stage, where the
  montage has EEG or EOG (without them the tools refuse to stage: a stage needs one of them);
* **apnea / desaturation evidence**: AUROC of the zero-shot localisation margin
  (:func:`sleeplm.model.zeroshot.known_query_margins`) for epochs with an obstructive apnea, and
  for epochs with a desaturation, against the others (0.5 = no information);
* **absent-channel captions**: the share of greedy holistic captions of a seeded sample that
  describe a modality the montage does not have, *before* the deterministic withdrawal
  (:func:`sleeplm.captions.modalities.withdraw_absent`; after it the share is 0 by
  construction): how often the model itself invents what it cannot see.

``--baseline DIR`` evaluates a second checkpoint on the same epochs (e.g. the one before a
retrain) for the before/after table. Prints a table and writes ``modalities.json``.

Usage: ``python benchmarks/modalities.py --corpus corpus [--split test] [--checkpoint DIR]
[--baseline DIR] [--max-epochs 4000] [--captions 150]``
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

#: "one EEG derivation" is C4 here (the derivation YASA and most cohorts prefer).
ONE_EEG = ("EEG_C4",)


def montages() -> dict[str, tuple[str, ...] | None]:
    """Montage name -> channels kept (None: all)."""
    from sleeplm.corpus.robustness import MODALITY_SUBSETS

    out: dict[str, tuple[str, ...] | None] = {"full montage": None}
    for name, chans in MODALITY_SUBSETS.items():
        out["one EEG derivation (C4)" if name == "one EEG derivation" else name] = \
            ONE_EEG if name == "one EEG derivation" else chans
    return out


def _auroc(score: np.ndarray, label: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if label.all() or not label.any():
        return None
    return round(float(roc_auc_score(label, score)), 4)


def embed(model, x: np.ndarray, mask: np.ndarray, batch: int = 256) -> np.ndarray:
    """Unit-norm embeddings ``[N, E]`` of epochs ``x [N, C, T]`` with per-epoch ``mask [N, C]``
    (the held-out epochs come from several nights, each with its own channels)."""
    import torch

    out = []
    model.eval()
    with torch.inference_mode():
        for s in range(0, len(x), batch):
            xb = torch.from_numpy(np.asarray(x[s:s + batch], np.float32))
            out.append(model.encode_signal(xb, torch.from_numpy(mask[s:s + batch]))[0].numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.embed_dim), np.float32)


def evaluate_checkpoint(ck: Path, data: dict, *, captions: int, seed: int) -> dict:
    """Every montage's figures for one checkpoint on the loaded epochs ``data``."""
    import torch
    from sklearn.metrics import cohen_kappa_score

    from sleeplm.captions.modalities import withdraw_absent
    from sleeplm.model import prompts as P
    from sleeplm.model.captioning import caption_epochs, read_facts
    from sleeplm.model.network import load_model
    from sleeplm.model.tokenizer import CaptionTokenizer
    from sleeplm.model.zeroshot import class_embeddings, known_query_margins, stage_scores

    model = load_model(ck)
    tok = CaptionTokenizer.load(ck / "tokenizer.json")
    channels = tuple(model.cfg.channels)
    classes = class_embeddings(model, tok, P.STAGE_PROMPTS, list(P.STAGES))
    cache: dict = {}

    def prompts(table, keys):
        k = (id(table), tuple(keys))
        if k not in cache:
            cache[k] = class_embeddings(model, tok, table, keys)
        return cache[k]

    facts = [read_facts(t) for t in data["caption_holistic"]]
    apnea = np.array(["apnea" in f["events"] for f in facts])
    desat = np.array(["desaturation" in f["events"] for f in facts])
    scored = np.isin(data["stage"], P.STAGES)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(data["stage"]), size=min(captions, len(data["stage"])),
                                replace=False))
    rows: dict[str, dict] = {}
    for name, keep in montages().items():
        keep_row = np.ones(len(channels), bool) if keep is None else \
            np.isin(np.asarray(channels), keep)
        mask = data["mask"] & keep_row[None, :]
        have = mask.any(1)
        row: dict = {"epochs": int(have.sum())}
        if not have.any():
            rows[name] = row
            continue
        emb = embed(model, data["x"], mask)
        can_stage = bool(keep is None or set(keep) & {"EEG_C4", "EEG_C3", "EEG_F", "EEG_O",
                                                     "EOG_L", "EOG_R"})
        if can_stage:
            sel = have & scored
            pred = np.asarray(P.STAGES)[stage_scores(emb[sel], classes).argmax(1)]
            truth = data["stage"][sel].astype(str)
            row.update(staging_accuracy=round(float((pred == truth).mean()), 4),
                       staging_kappa=round(float(cohen_kappa_score(truth, pred)), 4))
        margins = known_query_margins(emb, prompts, ["obstructive_apnea", "desaturation"])
        row.update(apnea_auroc=_auroc(margins[have, 0], apnea[have]),
                   desaturation_auroc=_auroc(margins[have, 1], desat[have]))
        idx = sample[have[sample]]
        x = torch.from_numpy(np.asarray(data["x"][idx], np.float32))
        m = torch.from_numpy(mask[idx])
        greedy = caption_epochs(model, tok, x, m)  # no channels: the decoder's own words
        absent = 0
        for c, mrow in zip(greedy, mask[idx]):
            present = [ch for ch, ok in zip(channels, mrow) if ok]
            absent += bool(withdraw_absent(c.text, present)[1])
        row.update(captions=int(idx.size),
                   captions_describing_absent=round(absent / max(idx.size, 1), 4))
        rows[name] = row
    return {"checkpoint": str(ck), "montages": rows}


def run(corpus: Path, split: str, checkpoints: list[Path], *, max_epochs: int | None,
        captions: int, seed: int, out: Path) -> dict:
    """Load the split once; evaluate each checkpoint; write ``modalities.json``."""
    from sleeplm.corpus.shards import load_split_epochs

    if split == "train":
        raise ValueError("evaluate on a held-out split (validation or test), not train")
    t0 = time.perf_counter()
    channels = tuple(json.loads((Path(checkpoints[0]) / "config.json").read_text())["channels"])
    data = load_split_epochs(corpus, split, channels)
    if max_epochs is not None and len(data["stage"]) > max_epochs:  # a seeded sample
        pick = np.sort(np.random.default_rng(seed).choice(len(data["stage"]), max_epochs,
                                                          replace=False))
        data = {k: v[pick] for k, v in data.items()}
    results = [evaluate_checkpoint(ck, data, captions=captions, seed=seed)
               for ck in checkpoints]
    report = {"corpus": str(corpus), "split": split, "epochs": int(len(data["stage"])),
              "nights": sorted(set(data["night"].tolist())), "results": results,
              "seconds": round(time.perf_counter() - t0, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "modalities.json").write_text(json.dumps(report, indent=1))
    return report


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def table(report: dict) -> str:
    """One Markdown table: a row per montage and checkpoint."""
    lines = ["| montage | checkpoint | staging acc | kappa | apnea AUROC | desaturation AUROC "
             "| greedy captions describing an absent channel |",
             "|---|---|---|---|---|---|---|"]
    names = list(report["results"][0]["montages"])
    for name in names:
        for res in report["results"]:
            r = res["montages"][name]
            lines.append(f"| {name} | {Path(res['checkpoint']).name} | "
                         f"{_f(r.get('staging_accuracy'))} | {_f(r.get('staging_kappa'))} | "
                         f"{_f(r.get('apnea_auroc'))} | {_f(r.get('desaturation_auroc'))} | "
                         f"{_f(r.get('captions_describing_absent'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from sleeplm.model.network import default_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a second checkpoint evaluated on the same epochs")
    ap.add_argument("--max-epochs", type=int, default=4000)
    ap.add_argument("--captions", type=int, default=150, help="greedy captions per montage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "modalities")
    args = ap.parse_args(argv)
    cks = [Path(args.checkpoint or default_checkpoint())]
    if args.baseline:
        cks.append(args.baseline)
    report = run(args.corpus, args.split, cks, max_epochs=args.max_epochs,
                 captions=args.captions, seed=args.seed, out=args.out)
    print(f"{report['epochs']} held-out epochs ({args.split}, {len(report['nights'])} nights)")
    print(table(report))
    print(f"wrote {args.out / 'modalities.json'} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
