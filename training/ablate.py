"""Loss ablations: the full objective and each of its three terms removed, same budget.

Usage::

    python -m training.ablate --config training/configs/default.json --corpus corpus/ \\
        --out runs/ablations --steps 300 [--tokenizer runs/default/tokenizer.json]
        [--split test] [--no-yasa] [--set key=value ...]

Trains four models from the same config, seed and data order, differing only in one loss
weight (``full``; ``no_contrastive``, ``no_caption``, ``no_reconstruction`` set that weight
to 0), each for ``--steps`` optimiser steps with the schedule of that many steps, then
evaluates all four on the held-out split with :func:`training.evaluate.evaluate_many` and
writes ``eval.json`` / ``eval.md`` (one summary table, then every section per model) into
``--out``. A finished variant (``{out}/{name}/final`` exists) is not trained again, so an
interrupted run resumes where it stopped.

Without a contrastive term the text tower is never trained, so every zero-shot figure of
``no_contrastive`` is that of an untrained text encoder: that row measures what the
contrastive loss brings.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

from sleeplm._logging import logger

__all__ = ["VARIANTS", "ablate", "main"]

#: Variant name -> model-config overrides.
VARIANTS: dict[str, dict[str, float]] = {
    "full": {},
    "no_contrastive": {"contrastive_weight": 0.0},
    "no_caption": {"caption_weight": 0.0},
    "no_reconstruction": {"reconstruction_weight": 0.0},
}


def ablate(config: str | Path, corpus: str | Path, out: str | Path, steps: int,
           overrides: Sequence[str] = (), split: str = "test", yasa: bool = True,
           variants: Sequence[str] = tuple(VARIANTS), caption_sample: int = 200,
           max_epochs: int | None = None, tokenizer: str | Path | None = None) -> dict:
    """Train (or reuse) each variant for ``steps`` steps and evaluate them together.

    Parameters
    ----------
    config : path
        Training config (JSON) shared by every variant.
    corpus : path
        Corpus folder (training shards and the held-out split).
    out : path
        Folder of the variants' runs (``{out}/{name}``) and of the report.
    steps : int
        Optimiser steps per variant (``max_steps``; warm-up is capped at a tenth of it).
    overrides : sequence of str
        Extra ``key=value`` config overrides for every variant.
    tokenizer : path, optional
        A tokenizer file trained on this corpus's train split (e.g. the default run's) that
        every variant uses instead of training its own (same vocabulary for all, and faster).

    Returns
    -------
    dict
        :func:`training.evaluate.evaluate_many`'s result, keyed by variant name.
    """
    from training.config import TrainConfig
    from training.evaluate import evaluate_many, write_report
    from training.train import train

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if steps < 1:
        raise ValueError("steps must be >= 1")
    out = Path(out)
    finals = {}
    for name in variants:
        run = out / name
        final = run / "final"
        if not final.exists():
            if tokenizer is not None:
                run.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tokenizer, run / "tokenizer.json")
            base = TrainConfig.load(config, overrides)
            warm = min(base.warmup_steps, max(1, steps // 10))
            sets = [*overrides, f"corpus_dir={corpus}", f"out_dir={run}", f"max_steps={steps}",
                    f"warmup_steps={warm}", "checkpoint_every=0", "eval_every=0"]
            sets += [f"model.{k}={v}" for k, v in VARIANTS[name].items()]
            logger.info("ablation %s: training %d steps into %s", name, steps, run)
            train(TrainConfig.load(config, sets))
        finals[name] = final
    res = evaluate_many([str(p) for p in finals.values()], corpus, split, yasa=yasa,
                        caption_sample=caption_sample, max_epochs=max_epochs)
    # name the rows by variant rather than by folder
    by_path = {str(p): n for n, p in finals.items()}
    res["ablations"] = {by_path[k]: v for k, v in res["ablations"].items()}
    for row in res["table"]:
        row["checkpoint"] = by_path[row["checkpoint"]]
    res["steps"] = steps
    write_report(res, out)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.ablate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--no-yasa", action="store_true")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--caption-sample", type=int, default=200)
    ap.add_argument("--tokenizer", default=None,
                    help="tokenizer.json every variant uses (default: each trains its own)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args(argv)
    res = ablate(a.config, a.corpus, a.out, a.steps, a.set, a.split, yasa=not a.no_yasa,
                 variants=[v for v in a.variants.split(",") if v],
                 caption_sample=a.caption_sample, tokenizer=a.tokenizer)
    print((Path(a.out) / "eval.md").read_text())
    print(f"wrote {Path(a.out) / 'eval.json'}", file=sys.stderr)
    return 0 if res else 1


if __name__ == "__main__":
    raise SystemExit(main())
