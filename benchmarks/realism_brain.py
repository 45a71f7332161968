"""Realism of the simulated EEG/EOG/EMG, judged by YASA on nights driven by real hypnograms.

For each of N nights (one night per Sleep-EDF subject, cropped to 30 min before the first
and after the last sleep epoch, ``?`` mapped to W), :func:`sleeplm.simulate.brain.simulate_brain`
draws the signals, then:

* :func:`staging_agreement`: YASA's pre-trained staging classifier (Vallat & Walker, eLife
  2021; trained on ~3,000 real NSRR nights) stages the simulated C4 + E1 + chin channels; its
  stages are compared with the hypnogram the night was drawn from (accuracy, macro-F1, Cohen's
  kappa, confusion matrix). On real PSG YASA's accuracy against expert scoring is ~85 %
  (Vallat & Walker 2021); the targets here are accuracy >= 0.75 and kappa >= 0.65.
* :func:`detector_agreement`: YASA's spindle (Lacourse 2018, on EEG_C4, N2+N3), slow-wave
  (Massimini 2004 / Carrier 2011 criteria, on EEG_F, N2+N3) and rapid-eye-movement (Agarwal
  2005, on EOG_L/EOG_R, REM) detectors against the events the simulator placed (precision and
  recall with one-to-one onset matching); target >= 0.6 each.
* :func:`band_powers`: relative power per stage (delta 0.5-4, theta 4-8, alpha 8-12, sigma
  12-16, beta 16-30 Hz, relative to 0.5-30 Hz), printed next to published adult ranges.

Usage: ``python benchmarks/realism_brain.py [--nights 10] [--seed 0] [--jobs 2]
[--out benchmarks/results]``; prints the tables and writes ``realism_brain.json``.
Other benchmarks (``benchmarks/realism.py``) import the functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("MNE_DONTWRITE_HOME", "true")

STAGES5 = ("W", "N1", "N2", "N3", "R")
_YASA_TO_AASM = {"WAKE": "W", "W": "W", "N1": "N1", "N2": "N2", "N3": "N3", "REM": "R", "R": "R"}
_HYPNO_CODE = {"W": 0, "N1": 1, "N2": 2, "N3": 3, "R": 4}

#: Bands of :func:`band_powers`, Hz.
BANDS = {"delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 12.0), "sigma": (12.0, 16.0),
         "beta": (16.0, 30.0)}

#: Approximate published relative band powers of the adult sleep EEG at a central derivation
#: (0.5-30 Hz), as ranges. Compiled from spectral studies of healthy adults: Carrier J et al.,
#: Psychophysiology 2001;38:232-242 (ages 20-60, C3/C4); Dijk DJ, J Clin Sleep Med 2009;5:S6;
#: Aeschbach D & Borbely AA, J Sleep Res 1993;2:70 (sleep-onset alpha/theta); and the AASM
#: visual criteria (alpha dominant in relaxed wake at the occiput, sigma peak = spindles in N2).
#: The ranges are this project's rough reading of that literature (those papers mostly report
#: absolute spectra; referencing, age and normalisation move relative values), not numbers
#: tabulated there: read them as orders of magnitude, not as acceptance limits.
PUBLISHED_RELATIVE = {
    "W": {"delta": (0.30, 0.55), "theta": (0.10, 0.20), "alpha": (0.15, 0.35),
          "sigma": (0.03, 0.08), "beta": (0.07, 0.20)},
    "N1": {"delta": (0.40, 0.65), "theta": (0.15, 0.25), "alpha": (0.07, 0.15),
           "sigma": (0.03, 0.07), "beta": (0.04, 0.12)},
    "N2": {"delta": (0.60, 0.80), "theta": (0.08, 0.16), "alpha": (0.04, 0.09),
           "sigma": (0.04, 0.10), "beta": (0.02, 0.06)},
    "N3": {"delta": (0.75, 0.92), "theta": (0.04, 0.10), "alpha": (0.01, 0.04),
           "sigma": (0.01, 0.04), "beta": (0.005, 0.03)},
    "R": {"delta": (0.40, 0.65), "theta": (0.15, 0.25), "alpha": (0.07, 0.15),
          "sigma": (0.03, 0.07), "beta": (0.05, 0.15)},
}


# --------------------------------------------------------------------------- helpers
def crop_hypnogram(stages: np.ndarray, margin_epochs: int = 60) -> np.ndarray:
    """Map UNS to W and keep ``margin_epochs`` (30 min) before the first / after the last sleep."""
    st = np.where(np.asarray(stages).astype(str) == "UNS", "W", np.asarray(stages).astype(str))
    sleep = np.flatnonzero(st != "W")
    if sleep.size == 0:
        return st
    return st[max(sleep[0] - margin_epochs, 0): min(sleep[-1] + margin_epochs + 1, st.size)]


def _resample_to(x: np.ndarray, sf_from: float, sf_to: float) -> np.ndarray:
    if sf_from == sf_to:
        return np.asarray(x, dtype=float)
    from fractions import Fraction

    from scipy.signal import resample_poly

    fr = Fraction(sf_to / sf_from).limit_denominator(1000)
    return resample_poly(np.asarray(x, dtype=float), fr.numerator, fr.denominator)


def _metrics(true: np.ndarray, pred: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score

    labels = [s for s in STAGES5 if s in set(true) | set(pred)]
    cm = confusion_matrix(true, pred, labels=labels)
    return {
        "accuracy": float(accuracy_score(true, pred)),
        "macro_f1": float(f1_score(true, pred, labels=[s for s in STAGES5 if s in set(true)],
                                   average="macro", zero_division=0)),
        "kappa": float(cohen_kappa_score(true, pred)),
        "confusion": pd.DataFrame(cm, index=[f"true_{s}" for s in labels],
                                  columns=[f"pred_{s}" for s in labels]),
    }


# --------------------------------------------------------------------------- staging
def staging_agreement(stages_true, eeg_c4, eog_l, emg_chin, sf, age, male, *, emg_sf=None) -> dict:
    """Stage the signals with YASA's pre-trained classifier and compare with ``stages_true``.

    Parameters
    ----------
    stages_true : array of str
        W/N1/N2/N3/R per 30-s epoch (UNS is counted as W).
    eeg_c4, eog_l, emg_chin : numpy.ndarray
        µV. ``emg_chin`` at ``emg_sf`` (default ``sf``); it is resampled to ``sf``.
    sf : float
        Sampling rate of the EEG and EOG, Hz.
    age : float
        Years (YASA metadata).
    male : bool

    Returns
    -------
    dict
        ``accuracy``, ``macro_f1``, ``kappa`` (floats), ``confusion`` (DataFrame, rows true,
        columns predicted), ``predicted`` (array of W/N1/N2/N3/R) and ``true`` (the epochs
        compared).
    """
    import mne
    import yasa

    emg = _resample_to(emg_chin, float(emg_sf or sf), float(sf))
    n = min(len(eeg_c4), len(eog_l), len(emg))
    data = np.vstack([np.asarray(eeg_c4[:n], float), np.asarray(eog_l[:n], float), emg[:n]]) * 1e-6
    info = mne.create_info(["C4", "EOG", "EMG"], float(sf), ch_types=["eeg", "eog", "emg"])
    raw = mne.io.RawArray(data, info, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sls = yasa.SleepStaging(raw, eeg_name="C4", eog_name="EOG", emg_name="EMG",
                                metadata={"age": float(age), "male": bool(male)})
        hyp = sls.predict()
    pred = np.array([_YASA_TO_AASM.get(str(s).upper(), "W") for s in np.asarray(hyp.hypno)])
    true = np.asarray(stages_true).astype(str)
    true = np.where(true == "UNS", "W", true)
    k = min(pred.size, true.size)
    out = _metrics(true[:k], pred[:k])
    out["predicted"] = pred[:k]
    out["true"] = true[:k]
    return out


# --------------------------------------------------------------------------- detectors
def detector_agreement(truth: pd.DataFrame, detected: pd.DataFrame, tolerance_s: float) -> dict:
    """Precision and recall of detections against truth events, matched one-to-one by onset.

    Pairs (truth, detection) whose onsets differ by at most ``tolerance_s`` are matched
    greedily, closest first; each event is used once.

    Parameters
    ----------
    truth, detected : pandas.DataFrame
        With an ``onset`` column (s).
    tolerance_s : float

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1``, ``n_truth``, ``n_detected``, ``n_matched``,
        ``median_offset_s`` (detected - truth onset, matched pairs).
    """
    t = np.sort(np.asarray(truth["onset"], dtype=float)) if len(truth) else np.zeros(0)
    d = np.sort(np.asarray(detected["onset"], dtype=float)) if len(detected) else np.zeros(0)
    pairs = []
    if t.size and d.size:
        # candidate pairs: for each detection, truth onsets within the tolerance
        lo = np.searchsorted(t, d - tolerance_s, side="left")
        hi = np.searchsorted(t, d + tolerance_s, side="right")
        for j in range(d.size):
            for i in range(lo[j], hi[j]):
                pairs.append((abs(d[j] - t[i]), i, j))
    pairs.sort()
    used_t, used_d, offsets = set(), set(), []
    for _dist, i, j in pairs:
        if i in used_t or j in used_d:
            continue
        used_t.add(i)
        used_d.add(j)
        offsets.append(d[j] - t[i])
    m = len(used_t)
    precision = m / d.size if d.size else float("nan")
    recall = m / t.size if t.size else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if m else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "n_truth": int(t.size), "n_detected": int(d.size), "n_matched": int(m),
            "median_offset_s": float(np.median(offsets)) if offsets else float("nan")}


def _hypno_up(stages: np.ndarray, sf: float, n: int) -> np.ndarray:
    codes = np.array([_HYPNO_CODE.get(s, 0) for s in np.asarray(stages).astype(str)])
    up = np.repeat(codes, int(round(30 * sf)))
    if up.size < n:
        up = np.r_[up, np.full(n - up.size, up[-1] if up.size else 0)]
    return up[:n]


def _onsets(df: pd.DataFrame | None, column: str = "Start") -> pd.DataFrame:
    if df is None or len(df) == 0:
        return pd.DataFrame({"onset": pd.Series(dtype=float)})
    return pd.DataFrame({"onset": df[column].to_numpy(dtype=float)})


def detect_all(signals: dict, stages: np.ndarray, truth: pd.DataFrame, sf: float = 128.0) -> dict:
    """Run YASA's spindle, slow-wave and REM detectors and score them against ``truth``."""
    import yasa

    out = {}
    n = len(signals["EEG_C4"])
    hyp = _hypno_up(stages, sf, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = yasa.spindles_detect(np.asarray(signals["EEG_C4"], float), sf, hypno=hyp, include=(2, 3))
        sw = yasa.sw_detect(np.asarray(signals["EEG_F"], float), sf, hypno=hyp, include=(2, 3))
        rem = yasa.rem_detect(np.asarray(signals["EOG_L"], float), np.asarray(signals["EOG_R"], float),
                              sf, hypno=hyp, include=4)
    ep = lambda t: np.minimum((np.asarray(t, float) // 30).astype(int), len(stages) - 1)  # noqa: E731
    in_stage = lambda df, sts: df[np.isin(np.asarray(stages)[ep(df["onset"])], sts)]  # noqa: E731
    t_sp = in_stage(truth[truth["type"] == "spindle"], ["N2", "N3"])
    t_sw = in_stage(truth[truth["type"].isin(["slow_wave", "k_complex"])], ["N2", "N3"])
    t_rem = in_stage(truth[truth["type"] == "rapid_eye_movement"], ["R"])
    out["spindle"] = detector_agreement(t_sp, _onsets(sp.summary() if sp is not None else None), 1.0)
    out["spindle_central"] = detector_agreement(
        t_sp[t_sp["channel"].isin(["EEG_C3", "EEG_C4"])],
        _onsets(sp.summary() if sp is not None else None), 1.0)
    out["slow_wave"] = detector_agreement(t_sw, _onsets(sw.summary() if sw is not None else None), 0.5)
    out["rem"] = detector_agreement(t_rem, _onsets(rem.summary() if rem is not None else None), 0.5)
    return out


# --------------------------------------------------------------------------- spectra
def band_powers(eeg: np.ndarray, sf: float, stages: np.ndarray) -> pd.DataFrame:
    """Relative band power per stage (Welch, 4-s windows per 30-s epoch, mean over epochs).

    Returns
    -------
    pandas.DataFrame
        Index the stages present, columns :data:`BANDS` (fractions of 0.5-30 Hz power) and
        ``abs_uv2`` (absolute 0.5-30 Hz power, µV²).
    """
    from scipy.signal import welch

    spe = int(round(30 * sf))
    st = np.asarray(stages).astype(str)
    k = min(st.size, len(eeg) // spe)
    epochs = np.asarray(eeg[: k * spe], float).reshape(k, spe)
    f, p = welch(epochs, sf, nperseg=int(4 * sf), axis=1)
    df = f[1] - f[0]
    tot_band = (f >= 0.5) & (f < 30)
    total = p[:, tot_band].sum(1) * df
    rows = {}
    for s in STAGES5:
        sel = st[:k] == s
        if not sel.any():
            continue
        row = {}
        for b, (lo, hi) in BANDS.items():
            m = (f >= lo) & (f < hi)
            row[b] = float(np.mean(p[sel][:, m].sum(1) * df / total[sel]))
        row["abs_uv2"] = float(np.mean(total[sel]))
        rows[s] = row
    return pd.DataFrame.from_dict(rows, orient="index")


# --------------------------------------------------------------------------- one night
def simulate_for_benchmark(recording_id: str, seed: int):
    """Plan a night from a bundled hypnogram (cropped) and draw its brain signals."""
    from sleeplm.data import hypnogram_path
    from sleeplm.io import read_recording
    from sleeplm.simulate.brain import simulate_brain
    from sleeplm.simulate.plan import AROUSAL_COLUMNS, LEG_COLUMNS, RESPIRATORY_COLUMNS, NightPlan

    rng = np.random.default_rng(seed)
    stages = crop_hypnogram(read_recording(hypnogram_path(recording_id)).stages)
    sleep = np.flatnonzero(stages != "W")
    n_ar = rng.poisson(12 * sleep.size / 120)  # ~12 arousals/h of sleep, healthy young adults
    ep = rng.choice(sleep, size=min(n_ar, sleep.size), replace=False)
    arousals = pd.DataFrame({"onset": ep * 30.0 + rng.uniform(0, 24, ep.size),
                             "duration": rng.uniform(3, 15, ep.size), "cause": "spontaneous"},
                            columns=list(AROUSAL_COLUMNS))
    n = stages.size
    plan = NightPlan(stages=stages, position=np.zeros(int(n * 30)),
                     respiratory=pd.DataFrame(columns=list(RESPIRATORY_COLUMNS)),
                     arousals=arousals, leg_movements=pd.DataFrame(columns=list(LEG_COLUMNS)),
                     # Sleep-EDF SC subjects 0-19 were 25-34 years old (Kemp 2000)
                     age=float(rng.uniform(25, 34)), sex=str(rng.choice(["F", "M"])),
                     mains_hz=50.0)
    t0 = time.perf_counter()
    signals, truth = simulate_brain(plan, rng)
    return plan, signals, truth, time.perf_counter() - t0


def evaluate_night(recording_id: str, seed: int) -> dict:
    """Simulate one night and score staging, detectors and band powers."""
    plan, sig, truth, sim_s = simulate_for_benchmark(recording_id, seed)
    sf = 128.0
    st = staging_agreement(plan.stages, sig["EEG_C4"], sig["EOG_L"], sig["EMG_CHIN"], sf,
                           plan.age, plan.sex == "M", emg_sf=256.0)
    det = detect_all(sig, plan.stages, truth, sf)
    bp = {c: band_powers(sig[c], sf, plan.stages) for c in ("EEG_C4", "EEG_F", "EEG_O")}
    return {"id": recording_id, "seed": seed, "hours": plan.duration / 3600, "sim_seconds": sim_s,
            "staging": st, "detectors": det, "band_powers": bp}


# --------------------------------------------------------------------------- speed
def timing(hours: float = 8.0, repeats: int = 3, seed: int = 0) -> dict:
    """Seconds to draw an ``hours``-long night: simulate_brain + simulate_leg_emg, one process.

    The night: a real hypnogram (SC4001E0, cropped, cut or repeated to ``hours``), ~12
    arousals/h of sleep and ~30 leg movements/h (PLM series). ``first`` is the first call in
    this process (allocations, FFT plans), ``best`` the fastest of ``repeats`` calls.
    """
    from sleeplm.data import hypnogram_path
    from sleeplm.io import read_recording
    from sleeplm.simulate.brain import simulate_brain
    from sleeplm.simulate.muscle import simulate_leg_emg
    from sleeplm.simulate.plan import RESPIRATORY_COLUMNS, NightPlan

    rng = np.random.default_rng(seed)
    base = crop_hypnogram(read_recording(hypnogram_path("SC4001E0")).stages)
    n_ep = int(round(hours * 120))
    stages = np.resize(base, n_ep)
    sleep = np.flatnonzero(stages != "W")
    ep = rng.choice(sleep, size=int(12 * hours), replace=False)
    arousals = pd.DataFrame({"onset": ep * 30.0 + 5, "duration": rng.uniform(3, 15, ep.size),
                             "cause": "spontaneous"})
    lm_on = np.arange(600.0, n_ep * 30 - 60, 120.0)
    legs = pd.DataFrame({"onset": lm_on, "duration": rng.uniform(0.5, 5, lm_on.size),
                         "side": rng.choice(["left", "right", "bilateral"], lm_on.size),
                         "periodic": True})
    plan = NightPlan(stages=stages, position=np.zeros(n_ep * 30),
                     respiratory=pd.DataFrame(columns=list(RESPIRATORY_COLUMNS)),
                     arousals=arousals, leg_movements=legs, age=45.0)
    times = []
    for k in range(repeats):
        t0 = time.perf_counter()
        simulate_brain(plan, np.random.default_rng(seed + k))
        simulate_leg_emg(plan, np.random.default_rng(seed + k))
        times.append(time.perf_counter() - t0)
    return {"hours": hours, "first_s": times[0], "best_s": min(times), "all_s": times}


# --------------------------------------------------------------------------- report
def _nights(n: int) -> list[str]:
    from sleeplm.data import hypnogram_ids, subject_of

    seen, ids = set(), []
    for rid in hypnogram_ids():
        if subject_of(rid) not in seen:
            seen.add(subject_of(rid))
            ids.append(rid)
    return ids[:n]


def run(n_nights: int = 10, seed: int = 0, jobs: int = 1) -> dict:
    ids = _nights(n_nights)
    seeds = [seed + i for i in range(len(ids))]
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs) as ex:
            results = list(ex.map(evaluate_night, ids, seeds))
    else:
        results = [evaluate_night(i, s) for i, s in zip(ids, seeds)]

    true = np.concatenate([r["staging"]["true"] for r in results])
    pred = np.concatenate([r["staging"]["predicted"] for r in results])
    pooled = _metrics(true, pred)
    per_night = pd.DataFrame([{"id": r["id"], "hours": r["hours"], "sim_s": r["sim_seconds"],
                               **{k: r["staging"][k] for k in ("accuracy", "macro_f1", "kappa")}}
                              for r in results])
    det_rows = {}
    for kind in ("spindle", "spindle_central", "slow_wave", "rem"):
        n_t = sum(r["detectors"][kind]["n_truth"] for r in results)
        n_d = sum(r["detectors"][kind]["n_detected"] for r in results)
        n_m = sum(r["detectors"][kind]["n_matched"] for r in results)
        det_rows[kind] = {"precision": n_m / n_d if n_d else float("nan"),
                          "recall": n_m / n_t if n_t else float("nan"),
                          "n_truth": n_t, "n_detected": n_d,
                          "per_night_precision": float(np.nanmean([r["detectors"][kind]["precision"] for r in results])),
                          "per_night_recall": float(np.nanmean([r["detectors"][kind]["recall"] for r in results]))}
    bp = {}
    for c in ("EEG_C4", "EEG_F", "EEG_O"):
        frames = [r["band_powers"][c] for r in results]
        bp[c] = pd.concat(frames).groupby(level=0).mean().reindex([s for s in STAGES5 if any(s in f.index for f in frames)])
    return {"nights": [r["id"] for r in results], "pooled": pooled, "per_night": per_night,
            "detectors": det_rows, "band_powers": bp}


def _print_report(res: dict) -> None:
    pooled, per = res["pooled"], res["per_night"]
    print(f"\nYASA staging of {len(res['nights'])} simulated nights ({per['hours'].sum():.1f} h; "
          f"one night per Sleep-EDF subject, cropped)")
    print(per.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"pooled   : accuracy {pooled['accuracy']:.3f}  macro-F1 {pooled['macro_f1']:.3f}  "
          f"kappa {pooled['kappa']:.3f}   (target accuracy >= 0.75, kappa >= 0.65)")
    print(f"per night: accuracy {per['accuracy'].mean():.3f}  macro-F1 {per['macro_f1'].mean():.3f}  "
          f"kappa {per['kappa'].mean():.3f}")
    print("confusion (rows = hypnogram, columns = YASA):")
    print(pooled["confusion"].to_string())
    print("\nYASA detectors vs placed events (target precision and recall >= 0.6)")
    for k, v in res["detectors"].items():
        print(f"  {k:<16} precision {v['precision']:.3f}  recall {v['recall']:.3f}  "
              f"(truth {v['n_truth']}, detected {v['n_detected']})")
    print("\nRelative band power (0.5-30 Hz) per stage, simulated [published adult range]")
    for c, table in res["band_powers"].items():
        print(f"  {c}")
        for s, row in table.iterrows():
            cells = []
            for b in BANDS:
                lo, hi = PUBLISHED_RELATIVE[s][b]
                cells.append(f"{b} {row[b]:.3f} [{lo:.2f}-{hi:.2f}]" if c == "EEG_C4" else f"{b} {row[b]:.3f}")
            print(f"    {s:<3} " + "  ".join(cells) + f"  total {row['abs_uv2']:.0f} µV²")


def _jsonable(res: dict) -> dict:
    return {
        "nights": res["nights"],
        "pooled": {k: (v.to_dict() if isinstance(v, pd.DataFrame) else v) for k, v in res["pooled"].items()},
        "per_night": res["per_night"].to_dict(orient="records"),
        "per_night_mean": res["per_night"][["accuracy", "macro_f1", "kappa"]].mean().to_dict(),
        "detectors": res["detectors"],
        "band_powers": {c: t.to_dict(orient="index") for c, t in res["band_powers"].items()},
        "published_relative_c4": {s: {b: list(v) for b, v in d.items()} for s, d in PUBLISHED_RELATIVE.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nights", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    speed = timing()
    print(f"8-h night, simulate_brain + simulate_leg_emg (one process, one core): first call "
          f"{speed['first_s']:.2f} s, best of {len(speed['all_s'])} {speed['best_s']:.2f} s")
    res = run(args.nights, args.seed, args.jobs)
    _print_report(res)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "realism_brain.json"
    path.write_text(json.dumps({**_jsonable(res), "timing_8h": speed}, indent=2, default=float))
    print(f"\nwrote {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
