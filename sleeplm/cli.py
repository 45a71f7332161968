"""Command line: ``sleeplm info FILE``, ``sleeplm stats FILE``, ``sleeplm example``."""

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sleeplm`` command."""
    parser = argparse.ArgumentParser(prog="sleeplm", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the reader does")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="channels, rates, units, duration and annotations")
    _add_reading_options(p_info)
    p_stats = sub.add_parser("stats", help="AASM-style report numbers")
    _add_reading_options(p_stats)
    p_stats.add_argument("--json", action="store_true", help="print JSON instead of text")
    p_ex = sub.add_parser("example", help="report of a bundled real Sleep-EDF hypnogram")
    p_ex.add_argument("--id", default="SC4001E0", help="bundled recording id (default SC4001E0)")
    p_ex.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "example":
            from sleeplm.data import hypnogram_path
            from sleeplm.io import read_recording

            rec = read_recording(hypnogram_path(args.id))
            if not args.json:
                print("Bundled example: a real expert-scored Sleep-EDF hypnogram (no signals, so "
                      "only sleep architecture can be computed). Sleep-EDF cassette hypnograms "
                      "span the whole ~22-h recording, so time in bed, sleep efficiency and "
                      "sleep-onset latency include the day's wake.\n")
            _print_stats(rec, args.json)
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
        else:
            _print_stats(_read(args), args.json)
    except (SleepLMError, KeyError) as exc:
        print(f"sleeplm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
