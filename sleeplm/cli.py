"""Command line: ``sleeplm info|stats FILE``, ``sleeplm example``, ``sleeplm simulate``,
``sleeplm build-corpus``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from sleeplm.errors import SleepLMError

__all__ = ["main"]


def _alias(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected LABEL=CANONICAL (e.g. 'EEG A=EEG_C4'), got '{text}'")
    label, canon = text.rsplit("=", 1)
    return label.strip(), canon.strip()


def _add_reading_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="EDF/EDF+/BDF signal file, or a hypnogram (CSV/TXT/XML) alone")
    p.add_argument("--annotations", "-a", default="auto",
                   help="annotation file (Sleep-EDF hypnogram EDF+, NSRR/Profusion XML, CSV/TXT); "
                        "default: look next to the signal file; 'none' to ignore")
    p.add_argument("--alias", action="append", type=_alias, default=[], metavar="LABEL=CANONICAL",
                   help="map a channel label to a canonical channel (repeatable)")
    p.add_argument("--cohort", default="auto", help="shhs, mesa, mros, cfs, sleep-edf or auto")
    p.add_argument("--allow-truncated", action="store_true",
                   help="read the complete part of a file shorter than its header says")
    p.add_argument("--trim-annotations", action="store_true",
                   help="cut stages/events that run past the end of the signals")


def _read(args: argparse.Namespace):
    from sleeplm.io import read_recording

    annotations = None if str(args.annotations).lower() == "none" else args.annotations
    return read_recording(
        args.file,
        annotations=annotations,
        channel_aliases=dict(args.alias) or None,
        cohort=None if args.cohort == "none" else args.cohort,
        allow_truncated=args.allow_truncated,
        on_overflow="trim" if args.trim_annotations else "raise",
        progress=sys.stderr.isatty(),
    )


def _print_stats(rec, as_json: bool) -> None:
    from sleeplm.clinical import clinical_summary

    summary = clinical_summary(rec)
    if as_json:
        print(json.dumps(summary.model_dump(mode="json"), indent=2))
    else:
        print(summary.to_text())


def _example(args: argparse.Namespace) -> None:
    import pandas as pd

    from sleeplm.io import read_recording
    from sleeplm.simulate import PROFILES, example_library

    if args.patient not in PROFILES:
        raise KeyError(f"no example patient '{args.patient}'; choose from {sorted(PROFILES)}")
    from sleeplm.simulate.library import default_example_folder

    if not (default_example_folder() / "manifest.csv").exists():
        print(f"Generating the example patients (simulated nights) in {default_example_folder()}; "
              "this happens once and takes about a minute.", file=sys.stderr)
    folder = example_library(progress=sys.stderr.isatty())
    manifest = pd.read_csv(folder / "manifest.csv")
    row = manifest[manifest["profile"] == args.patient].iloc[0]
    rec = read_recording(folder / row["edf"])  # its -nsrr.xml is found next to it
    if not args.json:
        print(f"Example patient {row['patient_id']} ({PROFILES[args.patient].description}, "
              f"{row['age']:.0f} y, {row['sex']}): a SIMULATED night driven by the real Sleep-EDF "
              f"hypnogram {row['hypnogram_source']}, read back from {folder / row['edf']} and its "
              "NSRR XML. Not a real patient.\n")
    _print_stats(rec, args.json)


_DREEM_COHORTS = {"dodh": "DOD-H (healthy)", "dodo": "DOD-O (obstructive sleep apnea)"}


def _agreement(args: argparse.Namespace) -> int:
    """`sleeplm agreement`: each scorer vs the consensus of the others, pooled over nights."""
    from sleeplm.clinical.consensus import pooled_agreement, read_scorings, stages_from_codes

    nights: dict = {}
    groups: dict[str, str] = {}
    try:
        if args.dreem or not args.scorings:
            from sleeplm.data import dreem_cohort, dreem_night_ids, dreem_scorings

            cohort = None if (args.dreem or "all") == "all" else args.dreem
            for nid in dreem_night_ids(cohort):
                nights[nid] = stages_from_codes(dreem_scorings(nid))
                groups[nid] = _DREEM_COHORTS[dreem_cohort(nid)]
        for path in args.scorings or []:
            for nid, rows in read_scorings(path).items():
                key = nid if nid not in nights else f"{path}:{nid}"
                nights[key] = rows
                groups[key] = str(path)
        what = f"{len(nights)} nights"
        if not args.scorings:
            what += " of the Dreem Open Datasets" + (
                f", {_DREEM_COHORTS[args.dreem]}" if args.dreem in _DREEM_COHORTS else "")
        report = pooled_agreement(
            nights, groups=groups if len(set(groups.values())) > 1 else None,
            label=f"All {what}: each scorer vs the consensus of the others, epochs pooled")
    except (OSError, ValueError) as exc:
        print(f"sleeplm: error: {exc}", file=sys.stderr)
        return 2
    for name, g in report.groups.items():
        g.label = f"{name}, {g.n_nights} nights"
    print(report.to_table())
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(report.model_dump(mode="json"), indent=1) + "\n",
                                   encoding="utf-8")
        print(f"\nJSON (pooled, per group, per night; confusion rows: the scorer, columns: the "
              f"consensus of the others) written to {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sleeplm`` command."""
    parser = argparse.ArgumentParser(prog="sleeplm", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the reader does")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="channels, rates, units, duration and annotations, and "
                            "what every channel of the file was taken as, and why")
    _add_reading_options(p_info)
    p_stats = sub.add_parser("stats", help="AASM-style report numbers")
    _add_reading_options(p_stats)
    p_stats.add_argument("--json", action="store_true", help="print JSON instead of text")
    p_ex = sub.add_parser("example", help="report of an example patient (a simulated night, "
                          "read back from its EDF+ and NSRR XML)")
    p_ex.add_argument("--patient", default="osa_moderate",
                      help="example patient by profile (default osa_moderate)")
    p_ex.add_argument("--real-hypnogram", metavar="ID",
                      help="instead: architecture of a bundled real Sleep-EDF hypnogram (e.g. SC4001E0)")
    p_ex.add_argument("--json", action="store_true")
    p_sim = sub.add_parser("simulate", help="simulate a library of patients (EDF+, NSRR XML, "
                           "hypnogram, truth, manifest.csv)")
    p_sim.add_argument("--n", type=int, default=10, help="number of nights (default 10)")
    p_sim.add_argument("--out", required=True, help="library folder")
    p_sim.add_argument("--profiles", nargs="+", help="profiles to use in turn (default: all)")
    p_sim.add_argument("--seed", type=int, default=0, help="seed of the first night")
    p_sim.add_argument("--workers", type=int, default=1, help="processes")
    p_sim.add_argument("--hypnogram", help="stage source for every night: a bundled Sleep-EDF "
                       "or Dreem id, 'markov', 'dreem' or 'real' (default: a bundled Sleep-EDF "
                       "night picked by each seed)")
    p_sim.add_argument("--statistics", choices=("v1", "real"), default="v1",
                       help="event and heart-rate statistics: v1 (default, the shipped "
                            "checkpoint's nights) or real (UCDDB / Apnea-ECG; docs/REALISM.md)")
    p_sim.add_argument("--noise", choices=("clean", "real"), default="clean",
                       help="realistic EEG noise and scorer ambiguity (default clean)")
    p_corpus = sub.add_parser("build-corpus", help="pre-training corpus: model-input epochs + "
                              "captions in WebDataset shards (resumable)")
    p_corpus.add_argument("--input", required=True, metavar="DIR|MANIFEST",
                          help="folder of EDF studies, or a manifest.csv of a simulated library")
    p_corpus.add_argument("--out", required=True, help="corpus folder")
    p_corpus.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p_corpus.add_argument("--seed", type=int, default=0, help="caption seed (default 0)")
    p_corpus.add_argument("--shard-size", type=int, default=1000,
                          help="samples per shard (default 1000)")
    p_corpus.add_argument("--backend", choices=("process", "ray"), default="process",
                          help="processes (default) or Ray tasks (pip install 'sleeplm[ray]')")
    p_corpus.add_argument("--ray-address", metavar="HOST:PORT",
                          help="with --backend ray: the Ray cluster's head (default: "
                               "$RAY_ADDRESS, else Ray on this machine); see docs/RAY.md")
    p_agree = sub.add_parser("agreement", help="multi-scorer hypnograms: each scorer vs the "
                             "consensus of the others (accuracy, kappa, F1), pooled over nights")
    p_agree.add_argument("--dreem", choices=["all", "dodh", "dodo"],
                         help="the bundled Dreem nights scored by 5 experts (default: all, "
                              "unless --scorings is given)")
    p_agree.add_argument("--scorings", nargs="+", metavar="DIR|CSV",
                         help="a folder with one sub-folder per scorer of <night>.json lists, "
                              "or a CSV with one column per scorer (stages or Dreem codes)")
    p_agree.add_argument("--json", metavar="OUT", help="also write the reports as JSON to OUT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "example" and args.real_hypnogram:
            from sleeplm.data import hypnogram_path
            from sleeplm.io import read_recording

            rec = read_recording(hypnogram_path(args.real_hypnogram))
            if not args.json:
                print("Bundled example: a real expert-scored Sleep-EDF hypnogram (no signals, so "
                      "only sleep architecture can be computed). Sleep-EDF cassette hypnograms "
                      "span the whole ~22-h recording, so time in bed, sleep efficiency and "
                      "sleep-onset latency include the day's wake.\n")
            _print_stats(rec, args.json)
        elif args.command == "example":
            _example(args)
        elif args.command == "simulate":
            from sleeplm.simulate import simulate_library

            manifest = simulate_library(args.n, args.out, profiles=args.profiles, seed=args.seed,
                                        workers=args.workers, hypnogram=args.hypnogram,
                                        progress=sys.stderr.isatty(),
                                        statistics=args.statistics, noise=args.noise)
            ok = int((manifest["status"] == "ok").sum())
            print(f"{ok} of {len(manifest)} nights written to {args.out} (manifest.csv); "
                  "these are SIMULATED nights, not real patients.")
            if ok < len(manifest):
                return 1
        elif args.command == "build-corpus":
            from sleeplm.corpus.build import build_corpus

            try:
                report = build_corpus(args.input, args.out, workers=args.workers, seed=args.seed,
                                      shard_size=args.shard_size, progress=sys.stderr.isatty(),
                                      backend=args.backend, ray_address=args.ray_address)
            except (FileNotFoundError, ValueError, ImportError, ConnectionError) as exc:
                print(f"sleeplm: error: {exc}", file=sys.stderr)
                return 2
            print(report.to_table())
            if report.nights_failed:
                return 1
        elif args.command == "agreement":
            return _agreement(args)
        elif args.command == "info":
            rec = _read(args)
            print(rec.summary())
            if rec.stages is not None:
                print(f"  hypnogram: {rec.n_epochs} epochs of {rec.epoch_sec:g} s "
                      f"({rec.info.annotation_source})")
            if len(rec.events):
                counts = rec.events["type"].value_counts()
                print("  events: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            for note in rec.notes:
                print(f"  note: {note}")
            print("Channels, as read:")
            for line in rec.reading_report().splitlines():
                print(f"  {line}")
        else:
            _print_stats(_read(args), args.json)
    except (SleepLMError, KeyError) as exc:
        print(f"sleeplm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
