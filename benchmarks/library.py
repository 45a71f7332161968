"""Benchmark: processing a patient into the library, and reopening it from the cache.

On one simulated 8-hour night written as EDF + NSRR XML, in one run:

* first-time processing by :class:`sleeplm.library.patients.PatientLibrary` with the shipped checkpoint
  (read, clinical facts, model input tensor, SleepLM embeddings, write), with its time split;
* reopening the processed patient from a new library object (the cache path: target < 1 s);
* indexing the night in the embedded chromadb store (:mod:`sleeplm.library.index`);
* the peer: YASA's ``SleepStaging`` of the same night (EEG + EOG + EMG), read from the same
  EDF with MNE, as YASA users do.

Prints a table and writes ``benchmarks/results/library.json``. The machine is shared and noisy:
read the ratios, not the seconds.

Usage: ``python benchmarks/library.py [--hours 8] [--checkpoint DIR]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _yasa_staging(edf: Path) -> float:
    import mne
    import yasa

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = mne.io.read_raw_edf(edf, preload=True, verbose=False)
        names = {n.upper(): n for n in raw.ch_names}
        eeg = next(names[k] for k in names if "C4" in k or "C3" in k)
        eog = next(names[k] for k in names if "EOG" in k or "LOC" in k or "E1" in k)
        emg = next(names[k] for k in names if "CHIN" in k or "EMG" in k)
        yasa.SleepStaging(raw, eeg_name=eeg, eog_name=eog, emg_name=emg,
                          metadata={"age": 50, "male": True}).predict()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    from sleeplm.library.index import EmbeddingIndex, EpochRecord, IndexConfig, NightRecord
    from sleeplm.library.patients import PatientLibrary
    from sleeplm.model.network import default_checkpoint
    from sleeplm.simulate import simulate_night, write_study

    ck = args.checkpoint or default_checkpoint()
    n_epochs = int(args.hours * 120)
    hyp = np.array((["W"] * 20 + ["N1"] * 10 + ["N2"] * 60 + ["N3"] * 40 + ["N2"] * 40
                    + ["R"] * 30) * (n_epochs // 200 + 1))[:n_epochs]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "library"
        files = write_study(simulate_night(hyp, "osa_moderate", seed=1), root)
        edf = Path(files.edf)
        lib = PatientLibrary(root, model_dir=ck, cache_dir=Path(tmp) / "cache")
        patient = lib.patients()[0]
        t0 = time.perf_counter()
        p = lib.open(patient, progress=False)
        first = time.perf_counter() - t0
        split = dict(p.timings)
        t0 = time.perf_counter()
        again = PatientLibrary(root, model_dir=ck, cache_dir=Path(tmp) / "cache").open(
            patient, progress=False)
        reopen = time.perf_counter() - t0
        assert again.from_cache
        index = EmbeddingIndex(IndexConfig(path=Path(tmp) / "index",
                                           model_version=lib.model_version))
        epochs = [EpochRecord(patient=patient, night=patient, epoch=i, start_s=float(s),
                              stage=str(st)) for i, (s, st) in
                  enumerate(zip(p.onsets_s, p.stages))]
        t0 = time.perf_counter()
        index.add_night(NightRecord(patient=patient, night=patient, n_epochs=p.n_epochs),
                        p.night_embedding, epochs, p.epoch_embeddings)
        t_index = time.perf_counter() - t0
        t_yasa = _yasa_staging(edf)
        size_mb = sum(f.stat().st_size for f in (Path(tmp) / "cache").rglob("*")
                      if f.is_file()) / 2**20

    rows = {"first processing (total)": first, **{f"  {k}": v for k, v in split.items()},
            "reopen from cache": reopen, "index the night (chromadb)": t_index,
            "YASA SleepStaging, same night (peer)": t_yasa}
    print(f"\nnight: {args.hours:.1f} h, {p.n_epochs} epochs, checkpoint {ck}")
    print(f"{'step':<40}{'seconds':>10}")
    for k, v in rows.items():
        print(f"{k:<40}{v:>10.2f}")
    print(f"{'ratio first processing / YASA staging':<40}{first / t_yasa:>10.2f}")
    print(f"{'ratio reopen / YASA staging':<40}{reopen / t_yasa:>10.4f}   (reopen target < 1 s)")
    print(f"cache on disk: {size_mb:.0f} MiB")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "library.json").write_text(json.dumps({
        "epochs": p.n_epochs, "seconds": rows, "ratio_first_vs_yasa": first / t_yasa,
        "ratio_reopen_vs_yasa": reopen / t_yasa, "cache_mib": size_mb, "checkpoint": str(ck)},
        indent=2))


if __name__ == "__main__":
    main()
