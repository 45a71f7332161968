"""How close to real are simulated nights? YASA judges them, and our own code is checked on them.

For >= 10 simulated nights driven by real Sleep-EDF hypnograms of different subjects:

1. YASA's SleepStaging (trained on thousands of real NSRR nights) stages the simulated EEG+EOG+EMG;
   accuracy, macro-F1 and Cohen's kappa against the driving hypnogram (target: accuracy >= 0.75,
   kappa >= 0.65; human scorers agree at about kappa 0.76).
2. YASA's spindle, slow-wave and rapid-eye-movement detectors against the events placed
   (target: precision and recall >= 0.6 each).
3. Relative EEG band power per stage next to published adult values.
4. The SpO2-based ODI and the AHI of sleeplm.clinical, read back from the written files,
   against the events placed (target: within 10 %).
5. Speed: simulating and writing one 8-hour night (target < 10 s on one core).

Prints tables and writes ``benchmarks/results/realism.json``. These are simulated nights; the
numbers say how well the simulator imitates real PSG as seen by tools trained on real PSG.

Usage: ``python benchmarks/realism.py [--nights 10] [--seed 0]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from realism_brain import PUBLISHED_RELATIVE, band_powers, detect_all, staging_agreement  # noqa: E402

from sleeplm.clinical import clinical_summary  # noqa: E402
from sleeplm.data import hypnogram_ids, subject_of  # noqa: E402
from sleeplm.io import read_recording  # noqa: E402
from sleeplm.simulate import PROFILES, simulate_night, write_study  # noqa: E402


def _placed_rates(night) -> dict[str, float]:
    """AHI and ODI (3 %) of the events placed, per hour of TST, counting events in sleep."""
    rec = night.recording
    tst_h = np.isin(rec.stages, ("N1", "N2", "N3", "R")).sum() * rec.epoch_sec / 3600
    truth = night.truth
    resp = truth[truth["type"].isin(["obstructive_apnea", "central_apnea", "mixed_apnea",
                                     "hypopnea"])]
    resp_in_sleep = np.isin(rec.stage_at(resp["onset"].to_numpy()), ("N1", "N2", "N3", "R"))
    desat = truth[truth["type"] == "desaturation"]
    deep = desat["attributes"].map(lambda a: a["drop"] >= 3).to_numpy(dtype=bool)
    desat_in_sleep = np.isin(rec.stage_at(desat["onset"].to_numpy()), ("N1", "N2", "N3", "R"))
    return {"ahi": resp_in_sleep.sum() / tst_h, "odi3": (deep & desat_in_sleep).sum() / tst_h}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    # One night per subject (never both nights of a subject), profiles in turn.
    by_subject: dict[str, str] = {}
    for rid in hypnogram_ids():
        by_subject.setdefault(subject_of(rid), rid)
    sources = list(by_subject.values())[: args.nights]
    profiles = list(PROFILES)
    rows, staging, detect, powers, timing = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k, source in enumerate(sources):
            profile = profiles[k % len(profiles)]
            t0 = time.perf_counter()
            night = simulate_night(source, profile, seed=args.seed + k)
            t_sim = time.perf_counter() - t0
            files = write_study(night, tmp)
            t_all = time.perf_counter() - t0
            hours = night.recording.duration / 3600
            timing.append({"hours": hours, "simulate_s": t_sim, "simulate_and_write_s": t_all})
            rec = night.recording
            sig = rec.signals
            staging.append(staging_agreement(
                rec.stages, sig["EEG_C4"].data, sig["EOG_L"].data, sig["EMG_CHIN"].data,
                sig["EEG_C4"].sfreq, age=rec.info.age, male=rec.info.sex == "M",
                emg_sf=sig["EMG_CHIN"].sfreq))
            detect.append(detect_all({k: v.data for k, v in sig.items()}, rec.stages,
                                     night.truth, sf=sig["EEG_C4"].sfreq))
            powers.append(band_powers(sig["EEG_C4"].data, sig["EEG_C4"].sfreq, rec.stages)
                          .to_dict(orient="index"))
            back = clinical_summary(read_recording(files.edf))
            placed = _placed_rates(night)
            rows.append({"night": rec.info.patient_id, "source": source, "profile": profile,
                         "ahi_placed": placed["ahi"], "ahi_measured": back.value("ahi_3a"),
                         "odi_placed": placed["odi3"], "odi_measured": back.value("odi3"),
                         **{f"staging_{m}": staging[-1][m] for m in ("accuracy", "macro_f1",
                                                                      "kappa")}})
            print(f"[{k + 1}/{len(sources)}] {source} {profile:<18} {hours:.1f} h  "
                  f"sim+write {t_all:.1f} s  acc {staging[-1]['accuracy']:.2f} "
                  f"kappa {staging[-1]['kappa']:.2f}", flush=True)

    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

    y_true = np.concatenate([np.asarray(s["true"]) for s in staging])
    y_pred = np.concatenate([np.asarray(s["predicted"]) for s in staging])
    pooled = {"accuracy": accuracy_score(y_true, y_pred),
              "macro_f1": f1_score(y_true, y_pred, average="macro"),
              "kappa": cohen_kappa_score(y_true, y_pred)}
    print("\n1. YASA SleepStaging on simulated nights (EEG C4 + EOG + chin EMG)")
    print(f"{'':<22}{'accuracy':>10}{'macro-F1':>10}{'kappa':>8}")
    print(f"{'pooled epochs':<22}{pooled['accuracy']:>10.3f}{pooled['macro_f1']:>10.3f}"
          f"{pooled['kappa']:>8.3f}")
    mean = {m: float(np.mean([s[m] for s in staging])) for m in ("accuracy", "macro_f1", "kappa")}
    print(f"{'mean of nights':<22}{mean['accuracy']:>10.3f}{mean['macro_f1']:>10.3f}"
          f"{mean['kappa']:>8.3f}")
    print("target: accuracy >= 0.75, kappa >= 0.65")

    print("\n2. YASA detectors against placed events")
    det_summary = {}
    print(f"{'detector':<22}{'precision':>10}{'recall':>8}{'placed':>8}{'found':>8}")
    for kind in detect[0]:
        tp = sum(d[kind]["n_matched"] for d in detect)
        n_truth = sum(d[kind]["n_truth"] for d in detect)
        n_found = sum(d[kind]["n_detected"] for d in detect)
        prec, rec_ = tp / max(n_found, 1), tp / max(n_truth, 1)
        det_summary[kind] = {"precision": prec, "recall": rec_, "placed": n_truth,
                             "found": n_found}
        print(f"{kind:<22}{prec:>10.3f}{rec_:>8.3f}{n_truth:>8}{n_found:>8}")
    print("target: precision and recall >= 0.6")

    print("\n3. Relative EEG band power (C4) per stage, mean of nights")
    bands = ["delta", "theta", "alpha", "sigma", "beta"]
    print("(in brackets: adult reference ranges, see benchmarks/realism_brain.py)")
    print(f"{'stage':<8}" + "".join(f"{b:>15}" for b in bands))
    power_table = {}
    for stage in ("W", "N1", "N2", "N3", "R"):
        vals = [p[stage] for p in powers if stage in p]
        if not vals:
            continue
        power_table[stage] = {b: float(np.mean([v[b] for v in vals])) for b in bands}
        ref = PUBLISHED_RELATIVE.get(stage, {})
        print(f"{stage:<8}" + "".join(
            f"{power_table[stage][b]:>6.2f} [{ref[b][0]:.2f}-{ref[b][1]:.2f}]" if b in ref
            else f"{power_table[stage][b]:>15.2f}" for b in bands))

    print("\n4. Indices measured from the written files vs events placed")
    print(f"{'night':<28}{'AHI placed':>11}{'AHI':>8}{'ODI placed':>12}{'ODI3':>8}")
    errs_ahi, errs_odi = [], []
    for r in rows:
        print(f"{r['night']:<28}{r['ahi_placed']:>11.1f}{r['ahi_measured']:>8.1f}"
              f"{r['odi_placed']:>12.1f}{r['odi_measured']:>8.1f}")
        if r["ahi_placed"] >= 5:
            errs_ahi.append(abs(r["ahi_measured"] - r["ahi_placed"]) / r["ahi_placed"])
        if r["odi_placed"] >= 5:
            errs_odi.append(abs(r["odi_measured"] - r["odi_placed"]) / r["odi_placed"])
    print(f"largest relative error where placed >= 5/h: AHI {max(errs_ahi, default=0):.1%}, "
          f"ODI {max(errs_odi, default=0):.1%} (target <= 10 %)")

    per_8h = [t["simulate_and_write_s"] / t["hours"] * 8 for t in timing]
    print(f"\n5. Speed: simulate + write, scaled to 8 h: median {np.median(per_8h):.1f} s "
          f"(max {max(per_8h):.1f} s; target < 10 s on one core)")

    args.out.mkdir(parents=True, exist_ok=True)
    report = {"nights": len(rows), "staging_pooled": pooled, "staging_mean": mean,
              "detectors": det_summary, "band_power": power_table, "indices": rows,
              "max_rel_error_ahi": max(errs_ahi, default=0.0),
              "max_rel_error_odi": max(errs_odi, default=0.0),
              "seconds_per_8h_night": float(np.median(per_8h)), "timing": timing}
    (args.out / "realism.json").write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {args.out / 'realism.json'}")


if __name__ == "__main__":
    main()
