"""Benchmark: read an 8-hour, 16-channel, mixed-rate EDF into a Recording vs a plain MNE read.

Each reader runs in a fresh subprocess (so peak memory is its own), several times; the table
gives median wall time and peak resident memory above the interpreter's baseline after imports,
and the ratio sleeplm / MNE. The machine is shared and noisy: read the ratios, not the seconds.

Usage: ``python benchmarks/read_edf.py [--hours 8] [--repeats 3] [--out benchmarks/results]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# A typical clinical montage: label, rate (Hz), unit.
MONTAGE = [
    ("C3-M2", 256, "uV"), ("C4-M1", 256, "uV"), ("F4-M1", 256, "uV"), ("O2-M1", 256, "uV"),
    ("E1-M2", 256, "uV"), ("E2-M1", 256, "uV"), ("Chin1-Chin2", 256, "uV"), ("ECG II", 256, "uV"),
    ("LLeg", 128, "uV"), ("RLeg", 128, "uV"), ("Airflow", 32, "uV"), ("Nasal Pressure", 32, "cmH2O"),
    ("Thorax", 32, "uV"), ("Abdomen", 32, "uV"), ("SpO2", 1, "%"), ("Position", 1, ""),
]

CHILD = r"""
import json, sys, time
kind, path = sys.argv[1], sys.argv[2]
if kind == "sleeplm":
    from sleeplm.io import read_recording
    import sleeplm.io.annotations  # imported by read_recording; load it before measuring
else:
    import mne


def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])


def current_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


# Reset the high-water mark: a forked child inherits its parent's peak otherwise.
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = current_kib()
t0 = time.perf_counter()
if kind == "sleeplm":
    rec = read_recording(path, annotations=None)
    n = sum(s.data.size for s in rec.signals.values())
else:
    raw = mne.io.read_raw_edf(path, preload=True, verbose="error")
    n = raw._data.size
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed, "peak_mib": (peak_kib() - base) / 1024, "samples": n}))
"""


def write_night(path: Path, hours: float, seed: int = 0) -> None:
    """Write a mixed-rate EDF of ``hours`` with band-limited noise in every channel."""
    import edfio

    rng = np.random.default_rng(seed)
    n_sec = int(hours * 3600)
    signals = []
    for label, rate, unit in MONTAGE:
        n = n_sec * rate
        if label == "SpO2":
            data = np.clip(95 + np.cumsum(rng.normal(0, 0.05, n)), 80, 100)
        elif label == "Position":
            data = np.repeat(rng.integers(0, 4, n // 600 + 1), 600)[:n].astype(float)
        else:
            data = np.cumsum(rng.normal(0, 1, n)).astype(np.float64)
            data -= np.convolve(data, np.ones(64) / 64, mode="same")  # crude high-pass
            data *= 20
        signals.append(edfio.EdfSignal(data, sampling_frequency=rate, label=label,
                                       physical_dimension=unit,
                                       physical_range=(float(data.min()) - 1, float(data.max()) + 1)))
    edfio.Edf(signals, data_record_duration=1).write(path)


def run_child(kind: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(path)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--write-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_only:
        write_night(args.write_only, args.hours)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "night.edf"
        t0 = time.perf_counter()
        # Written in a child process, so that this parent stays small while readers run.
        subprocess.run([sys.executable, __file__, "--write-only", str(path), "--hours",
                        str(args.hours)], check=True)
        size_mib = path.stat().st_size / 2**20
        print(f"wrote {args.hours:g} h, {len(MONTAGE)} channels, {size_mib:.0f} MiB in "
              f"{time.perf_counter() - t0:.1f} s")
        results: dict[str, list[dict]] = {"sleeplm": [], "mne": []}
        for _ in range(args.repeats):
            for kind in ("sleeplm", "mne"):  # interleaved, so drift hits both alike
                results[kind].append(run_child(kind, path))
    rows = {}
    for kind, runs in results.items():
        rows[kind] = {
            "seconds": statistics.median(r["seconds"] for r in runs),
            "peak_mib": statistics.median(r["peak_mib"] for r in runs),
            "samples": runs[0]["samples"],
        }
    ratio_t = rows["sleeplm"]["seconds"] / rows["mne"]["seconds"]
    ratio_m = rows["sleeplm"]["peak_mib"] / rows["mne"]["peak_mib"]
    print(f"\n{'reader':<34}{'time (s)':>10}{'peak mem (MiB)':>16}{'samples':>14}")
    labels = {"sleeplm": "sleeplm.io.read_recording", "mne": "mne read_raw_edf(preload=True)"}
    for kind, row in rows.items():
        print(f"{labels[kind]:<34}{row['seconds']:>10.2f}{row['peak_mib']:>16.0f}{row['samples']:>14,}")
    print(f"{'ratio sleeplm / MNE':<34}{ratio_t:>10.2f}{ratio_m:>16.2f}")
    print(f"targets: time ratio <= 1.5 ({'met' if ratio_t <= 1.5 else 'MISSED'}), "
          f"memory ratio < 1 ({'met' if ratio_m < 1 else 'MISSED'})")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"hours": args.hours, "channels": len(MONTAGE), "file_mib": size_mib,
              "repeats": args.repeats, "results": rows, "time_ratio": ratio_t,
              "memory_ratio": ratio_m}
    (args.out / "read_edf.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'read_edf.json'}")


if __name__ == "__main__":
    main()
