"""Benchmark: build the pre-training corpus from simulated full nights.

1. One night on one core (``workers=1``): seconds per night split by stage of the work
   (reading the EDF + NSRR XML, captioning incl. event detection, model-input tensor, writing
   the work tar), also scaled to an 8-hour night.
2. ``--nights`` nights with ``--workers`` processes: wall time, nights per hour.
3. Bytes per epoch in the epoch shards.

The simulated nights (full nights driven by bundled Sleep-EDF hypnograms, 6-10 h) are written
first and not timed. The machine is shared and noisy: read the split, not the last decimal.

Usage: ``python benchmarks/corpus.py [--nights 4] [--workers 2] [--out benchmarks/results]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("reading", "captioning", "tensor", "writing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--keep", help="keep the simulated library and corpora in this folder")
    args = parser.parse_args(argv)

    from sleeplm.corpus.build import build_corpus
    from sleeplm.simulate import simulate_library

    tmp_ctx = tempfile.TemporaryDirectory(prefix="sleeplm-corpus-bench-")
    root = Path(args.keep) if args.keep else Path(tmp_ctx.name)
    lib = root / "library"
    profiles = ("osa_moderate", "healthy_young", "insomnia", "osa_severe", "healthy_older",
                "plm_disorder", "csa_cheyne_stokes", "narcolepsy", "rbd", "osa_mild")
    plan = [(profiles[i % len(profiles)], 2001 + i) for i in range(args.nights)]
    t0 = time.perf_counter()
    manifest = simulate_library(len(plan), lib, plan=plan, workers=args.workers, progress=False)
    print(f"simulated {len(manifest)} nights ({manifest['hours'].sum():.1f} h) in "
          f"{time.perf_counter() - t0:.0f} s (not timed below)", file=sys.stderr)

    # 1. one night, one core
    first = lib / manifest["edf"].iloc[0]
    hours1 = float(manifest["hours"].iloc[0])
    t0 = time.perf_counter()
    rep1 = build_corpus([first], root / "one", workers=1, progress=False)
    wall1 = time.perf_counter() - t0
    split = {k: rep1.seconds_per_night.get(k, 0.0) for k in STAGES}
    per8 = {k: v * 8.0 / hours1 for k, v in split.items()}

    # 2. several nights, several workers
    t0 = time.perf_counter()
    rep2 = build_corpus(lib, root / "many", workers=args.workers, progress=False)
    wall2 = time.perf_counter() - t0
    hours2 = rep2.hours

    result = {
        "one_night": {"hours": hours1, "epochs": rep1.epochs, "wall_s": round(wall1, 2),
                      "split_s": split, "split_s_per_8h": {k: round(v, 3) for k, v in per8.items()},
                      "total_s_per_8h": round(sum(per8.values()), 2),
                      "packing_s": rep1.seconds_packing,
                      "dominant": max(split, key=split.get)},
        "parallel": {"nights": rep2.nights, "failed": rep2.nights_failed, "hours": hours2,
                     "workers": args.workers, "wall_s": round(wall2, 2),
                     "nights_per_hour": round(rep2.nights / wall2 * 3600, 1),
                     "recording_hours_per_hour": round(hours2 / wall2 * 3600, 1),
                     "split_s_per_night": rep2.seconds_per_night,
                     "packing_s": rep2.seconds_packing},
        "bytes_per_epoch": rep2.bytes_per_epoch,
        "shard_bytes": rep2.shard_bytes,
        "captions_per_level_system": rep2.captions_per_level_system,
        "caption_words": rep2.caption_words,
        "vocabulary": rep2.vocabulary,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"One simulated night ({hours1:.2f} h, {rep1.epochs} epochs) on one core:")
    print(f"  {'stage':<12}{'s/night':>10}{'s per 8 h':>12}")
    for k in STAGES:
        print(f"  {k:<12}{split[k]:>10.2f}{per8[k]:>12.2f}")
    print(f"  {'total':<12}{sum(split.values()):>10.2f}{sum(per8.values()):>12.2f}"
          f"   (target < 30 s per 8 h; dominated by {result['one_night']['dominant']})")
    print(f"{rep2.nights} nights ({hours2:.1f} h) with {args.workers} workers: {wall2:.1f} s wall, "
          f"{result['parallel']['nights_per_hour']:.0f} nights/hour "
          f"(packing {rep2.seconds_packing:.1f} s)")
    print(f"Disk: {rep2.bytes_per_epoch / 1024:.1f} KiB per epoch "
          f"({rep2.bytes_per_epoch:.0f} bytes)")
    print(f"wrote {out / 'corpus.json'}")
    tmp_ctx.cleanup()
    return 0 if rep2.nights_failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
