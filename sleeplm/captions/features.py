"""Measurements per 30-s epoch: the facts every caption is written from.

:func:`epoch_features` computes, for the whole night at once, one row per epoch of the
hypnogram (or per 30-s window from the start when there is none). Nothing is inferred from the
stage label alone: rhythms come from the EEG spectrum, micro-events from YASA's detectors (each
run once per night), tone from the chin EMG, and so on. Columns of a missing or unusable channel
are NaN and :attr:`EpochFeatures.missing` says what is missing and why.

Columns (units in the names):

* ``epoch``, ``start_s``, ``end_s``, ``stage`` (as scored; ``UNS`` without a hypnogram).
* EEG (``eeg_channel``: C4, else C3, F, O): ``abs_<band>_uv2`` and ``rel_<band>`` for delta
  0.5-4, theta 4-8, alpha 8-12, sigma 12-16 and beta 16-30 Hz (Welch, 4-s windows, relative to
  0.5-30 Hz); ``dominant_band`` (band with the largest share of 0.5-30 Hz power);
  ``occipital_alpha_rel`` (relative alpha at EEG_O). ``spindles`` (YASA ``spindles_detect``
  over N1/N2/N3, count of spindles starting in the epoch), ``slow_waves`` and
  ``slow_wave_pct`` (YASA ``sw_detect`` over N2/N3 on the frontal channel when present: count,
  and % of the epoch covered by detected slow waves), ``k_complex_like`` (isolated detected
  slow waves in N2, no other slow wave within 5 s: an approximation of K-complexes, not a
  K-complex detector), ``rem_theta_rel`` (relative 4-8 Hz power in REM epochs: a proxy for
  sawtooth-wave activity, not a sawtooth detector).
* EOG: ``rapid_eye_movements`` (YASA ``rem_detect`` on EOG_L/EOG_R, in W and R epochs),
  ``sem_rms_uv`` (RMS of the 0.1-0.5 Hz band of EOG_L - EOG_R: out-of-phase slow eye
  movements) and ``slow_eye_movements`` (flag: > 2x the night's median and > 10 µV).
* Chin EMG: ``chin_rms_uv`` (10-100 Hz), ``chin_rel_median`` (to the night's median),
  ``chin_twitches`` (bursts of 0.1-5 s whose 100-ms mean rectified EMG exceeds 4x the
  epoch's 20th percentile).
* Legs: ``leg_movements`` (from ``detect_leg_movements`` on the leg EMG, or from scored LM/PLM
  events when there is no leg EMG), ``scored_lm``, ``scored_plm`` (scored events overlapping).
* Heart: ``hr_bpm`` (mean of :func:`heart_rate_series` in the epoch), ``hr_change_bpm``.
* Breathing: ``breath_rate_bpm`` (breaths/min from peaks of AIRFLOW, else THORAX),
  ``flow_amp_rel`` (epoch flow amplitude / median of the 4 preceding epochs); scored
  respiratory events overlapping the epoch: ``n_obstructive_apnea`` ... ``n_hypopnea``,
  ``resp_event_ids``; ``spo2_mean``, ``spo2_min`` (cleaned, :func:`clean_spo2`),
  ``desat_depth``, ``desat_nadir`` (deepest detected desaturation starting in the epoch),
  ``scored_desat_ids``.
* ``arousal_ids`` (scored arousals overlapping), ``position`` (at the epoch's midpoint).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import signal as sps

from sleeplm.clinical.heart_rate import heart_rate_series
from sleeplm.clinical.limb_movements import detect_leg_movements
from sleeplm.clinical.measure import true_runs
from sleeplm.clinical.oximetry import clean_spo2, detect_desaturations
from sleeplm.clinical.position import has_position, position_at
from sleeplm.errors import MissingChannelError, SignalQualityError
from sleeplm.recording import EPOCH_SEC, EventType, Recording, Signal

__all__ = ["BANDS", "EEG_PREFERENCE", "RESP_TYPES", "EpochFeatures", "epoch_features"]

BANDS: dict[str, tuple[float, float]] = {
    "delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 12.0), "sigma": (12.0, 16.0),
    "beta": (16.0, 30.0)}
EEG_PREFERENCE = ("EEG_C4", "EEG_C3", "EEG_F", "EEG_O")
RESP_TYPES = ("obstructive_apnea", "central_apnea", "mixed_apnea", "apnea", "hypopnea")
_HYPNO = {"W": 0, "N1": 1, "N2": 2, "N3": 3, "R": 4}


@dataclass
class EpochFeatures:
    """The per-epoch table and what could not be measured.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per epoch (see the module docstring for the columns).
    missing : dict of str to str
        System or measurement -> why it is missing (e.g. ``{"brain": "no EEG channel"}``).
    desaturations : pandas.DataFrame
        Desaturations detected on the SpO2 signal (:func:`detect_desaturations`), or empty.
    leg_movements : pandas.DataFrame
        Detected leg movements (onset, duration...), or empty.
    sources : dict of str to str
        Where each family of measurements came from (channel names).
    timings : dict of str to float
        Seconds spent per step.
    """

    table: pd.DataFrame
    missing: dict[str, str] = field(default_factory=dict)
    desaturations: pd.DataFrame = field(default_factory=pd.DataFrame)
    leg_movements: pd.DataFrame = field(default_factory=pd.DataFrame)
    sources: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------ helpers
def _usable(rec: Recording, *names: str) -> Signal | None:
    for n in names:
        s = rec.signals.get(n)
        if s is not None and s.quality_problem() is None:
            return s
    return None


def _why_missing(rec: Recording, names: tuple[str, ...], what: str) -> str:
    present = [n for n in names if n in rec.signals]
    if not present:
        return f"no {what} channel ({', '.join(names)})"
    return f"{what} channel(s) {', '.join(present)} unusable ({rec.signals[present[0]].quality_problem()})"


def _epoch_matrix(sig: Signal, n_ep: int, onset: float, epoch_sec: float) -> np.ndarray:
    """(n_ep, samples per epoch) view of a signal; epochs past its end are NaN."""
    spe = int(round(epoch_sec * sig.sfreq))
    i0 = int(round(onset * sig.sfreq))
    x = np.asarray(sig.data[i0:], dtype=float)
    out = np.full(n_ep * spe, np.nan)
    m = min(x.size, out.size)
    out[:m] = x[:m]
    return out.reshape(n_ep, spe)


def _per_epoch_index(t: np.ndarray, n_ep: int, onset: float, epoch_sec: float) -> np.ndarray:
    idx = np.floor((np.asarray(t, dtype=float) - onset) / epoch_sec).astype(int)
    idx[(idx < 0) | (idx >= n_ep)] = -1
    return idx


def _count_by_epoch(t: np.ndarray, n_ep: int, onset: float, epoch_sec: float) -> np.ndarray:
    idx = _per_epoch_index(t, n_ep, onset, epoch_sec)
    return np.bincount(idx[idx >= 0], minlength=n_ep)[:n_ep].astype(float)


def _hypno(stages: np.ndarray, sf: float, n: int, epoch_sec: float, onset: float) -> np.ndarray:
    codes = np.array([_HYPNO.get(s, -1) for s in stages], dtype=int)
    up = np.repeat(codes, int(round(epoch_sec * sf)))
    lead = np.full(int(round(onset * sf)), -1)
    up = np.r_[lead, up]
    if up.size < n:
        up = np.r_[up, np.full(n - up.size, -1)]
    return up[:n]


def _overlapping(events: pd.DataFrame, starts: np.ndarray, ends: np.ndarray) -> list[list[int]]:
    """Event ids overlapping each epoch [start, end) (a zero-length event at its onset)."""
    out: list[list[int]] = [[] for _ in range(starts.size)]
    if events.empty:
        return out
    on = events["onset"].to_numpy(dtype=float)
    off = on + np.maximum(events["duration"].to_numpy(dtype=float), 1e-6)
    first = np.searchsorted(ends, on, side="right")   # first epoch whose end > onset
    last = np.searchsorted(starts, off, side="left") - 1  # last epoch whose start < offset
    for eid, a, b in zip(events.index, first, last):
        for k in range(max(a, 0), min(b, starts.size - 1) + 1):
            out[k].append(int(eid))
    return out


def _starting_in(events: pd.DataFrame, n_ep: int, onset: float, epoch_sec: float) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(n_ep)]
    if events.empty:
        return out
    idx = _per_epoch_index(events["onset"].to_numpy(dtype=float), n_ep, onset, epoch_sec)
    for eid, k in zip(events.index, idx):
        if k >= 0:
            out[k].append(int(eid))
    return out


# ------------------------------------------------------------------------------ systems
def _eeg(rec, df, stages, n_ep, onset, es, missing, sources, timings):
    sig = _usable(rec, *EEG_PREFERENCE)
    cols = [f"abs_{b}_uv2" for b in BANDS] + [f"rel_{b}" for b in BANDS] + [
        "spindles", "slow_waves", "slow_wave_pct", "k_complex_like", "rem_theta_rel",
        "occipital_alpha_rel"]
    for c in cols:
        df[c] = np.nan
    df["dominant_band"] = None
    if sig is None:
        missing["brain"] = _why_missing(rec, EEG_PREFERENCE, "EEG")
        return
    t0 = time.perf_counter()
    sources["eeg"] = sig.name
    sf = float(sig.sfreq)

    def bandpowers(s: Signal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = _epoch_matrix(s, n_ep, onset, es)
        bad = ~np.isfinite(x).all(axis=1)
        x = np.where(np.isfinite(x), x, 0.0)
        nper = int(min(4 * s.sfreq, x.shape[1]))
        f, p = sps.welch(x, fs=s.sfreq, nperseg=nper, axis=1)
        df_ = f[1] - f[0]
        total_m = (f >= 0.5) & (f < 30.0)
        total = p[:, total_m].sum(axis=1) * df_
        absp = np.column_stack([p[:, (f >= lo) & (f < hi)].sum(axis=1) * df_
                                for lo, hi in BANDS.values()])
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = absp / total[:, None]
        absp[bad] = np.nan
        rel[bad] = np.nan
        return absp, rel, bad

    absp, rel, bad = bandpowers(sig)
    for k, b in enumerate(BANDS):
        df[f"abs_{b}_uv2"] = absp[:, k]
        df[f"rel_{b}"] = rel[:, k]
    dom = np.array(list(BANDS), dtype=object)[np.nan_to_num(rel, nan=-1).argmax(axis=1)]
    dom[bad] = None
    df["dominant_band"] = dom
    df["rem_theta_rel"] = np.where(stages == "R", rel[:, 1], np.nan)
    occ = _usable(rec, "EEG_O")
    if occ is not None:
        _, rel_o, _ = bandpowers(occ)
        df["occipital_alpha_rel"] = rel_o[:, 2]
        sources["occipital"] = "EEG_O"
    timings["eeg_spectra"] = time.perf_counter() - t0

    # YASA detectors, once per night each
    import yasa

    staged = rec.has_stages
    x = np.nan_to_num(np.asarray(sig.data, dtype=float))
    hyp = _hypno(stages, sf, x.size, es, onset) if staged else None
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sp = yasa.spindles_detect(x, sf, hypno=hyp, include=(1, 2, 3), verbose="ERROR")
        except Exception as exc:  # noqa: BLE001 - detector failure: the counts stay NaN
            sp, missing["spindles"] = None, f"spindle detection failed: {exc}"
    if "spindles" not in missing:
        sp_on = sp.summary()["Start"].to_numpy(float) if sp is not None else np.zeros(0)
        cnt = _count_by_epoch(sp_on, n_ep, onset, es)
        cnt[bad] = np.nan
        df["spindles"] = cnt
    timings["spindles"] = time.perf_counter() - t0
    sources["spindles"] = f"YASA spindles_detect on {sig.name}"

    t0 = time.perf_counter()
    fsig = _usable(rec, "EEG_F") or sig
    xf = np.nan_to_num(np.asarray(fsig.data, dtype=float))
    hyp_f = _hypno(stages, fsig.sfreq, xf.size, es, onset) if staged else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sw = yasa.sw_detect(xf, fsig.sfreq, hypno=hyp_f, include=(2, 3), verbose="ERROR")
        except Exception as exc:  # noqa: BLE001
            sw, missing["slow_waves"] = None, f"slow-wave detection failed: {exc}"
    if "slow_waves" not in missing:
        if sw is not None:
            s = sw.summary()
            sw_on = s["Start"].to_numpy(float)
            sw_end = s["End"].to_numpy(float)
        else:
            sw_on = sw_end = np.zeros(0)
        cnt = _count_by_epoch(sw_on, n_ep, onset, es)
        # covered time per epoch (a wave spanning a boundary counts in its start epoch)
        idx = _per_epoch_index(sw_on, n_ep, onset, es)
        ok = idx >= 0
        cover = np.bincount(idx[ok], weights=(sw_end - sw_on)[ok], minlength=n_ep)[:n_ep]
        # K-complex-like: isolated detected slow waves (no other within 5 s) in N2
        if sw_on.size:
            gap_prev = np.r_[np.inf, np.diff(sw_on)]
            gap_next = np.r_[np.diff(sw_on), np.inf]
            iso = (gap_prev > 5.0) & (gap_next > 5.0)
            iso &= np.isin(stages[np.clip(idx, 0, n_ep - 1)], ("N2",)) & ok
            kc = _count_by_epoch(sw_on[iso], n_ep, onset, es)
        else:
            kc = np.zeros(n_ep)
        for arr in (cnt, cover, kc):
            arr[bad] = np.nan
        df["slow_waves"] = cnt
        df["slow_wave_pct"] = np.minimum(100.0 * cover / es, 100.0)
        df["k_complex_like"] = kc
    timings["slow_waves"] = time.perf_counter() - t0
    sources["slow_waves"] = f"YASA sw_detect on {fsig.name}"


def _eog(rec, df, stages, n_ep, onset, es, missing, sources, timings):
    df["rapid_eye_movements"] = np.nan
    df["sem_rms_uv"] = np.nan
    df["slow_eye_movements"] = None
    loc, roc = _usable(rec, "EOG_L"), _usable(rec, "EOG_R")
    if loc is None or roc is None or loc.sfreq != roc.sfreq:
        missing["eye_movements"] = _why_missing(rec, ("EOG_L", "EOG_R"), "EOG (both sides)")
        return
    import yasa

    t0 = time.perf_counter()
    sf = float(loc.sfreq)
    n = min(loc.data.size, roc.data.size)
    xl = np.nan_to_num(np.asarray(loc.data[:n], dtype=float))
    xr = np.nan_to_num(np.asarray(roc.data[:n], dtype=float))
    hyp = _hypno(stages, sf, n, es, onset) if rec.has_stages else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rem = yasa.rem_detect(xl, xr, sf, hypno=hyp, include=(0, 4), verbose="ERROR")
            on = rem.summary()["Start"].to_numpy(float) if rem is not None else np.zeros(0)
        except Exception as exc:  # noqa: BLE001
            on, missing["eye_movements"] = None, f"REM detection failed: {exc}"
    if on is not None:
        cnt = _count_by_epoch(on, n_ep, onset, es)
        if rec.has_stages:
            cnt[~np.isin(stages, ("W", "R"))] = np.nan  # not looked for outside W and R
        df["rapid_eye_movements"] = cnt
    sos = sps.butter(2, [0.1, 0.5], btype="bandpass", fs=sf, output="sos")
    d = sps.sosfiltfilt(sos, (xl - xr) / 2.0)
    m = _epoch_matrix(Signal("d", d, sf, "µV"), n_ep, onset, es)
    rms = np.sqrt(np.nanmean(m**2, axis=1))
    df["sem_rms_uv"] = rms
    med = np.nanmedian(rms) if np.isfinite(rms).any() else np.nan
    flag = (rms > 2.0 * med) & (rms > 10.0)
    df["slow_eye_movements"] = np.where(np.isfinite(rms), flag, None)
    sources["eog"] = "EOG_L/EOG_R"
    timings["eog"] = time.perf_counter() - t0


def _chin(rec, df, n_ep, onset, es, missing, sources):
    df["chin_rms_uv"] = np.nan
    df["chin_rel_median"] = np.nan
    df["chin_twitches"] = np.nan
    sig = _usable(rec, "EMG_CHIN")
    if sig is None:
        missing["chin_emg"] = _why_missing(rec, ("EMG_CHIN",), "chin EMG")
        return
    sf = float(sig.sfreq)
    x = np.asarray(sig.data, dtype=float)
    nanmask = ~np.isfinite(x)
    hi = min(100.0, 0.45 * sf)
    sos = sps.butter(4, [10.0, hi], btype="bandpass", fs=sf, output="sos") if hi > 12 else \
        sps.butter(4, 0.2 * sf, btype="highpass", fs=sf, output="sos")
    y = sps.sosfiltfilt(sos, np.nan_to_num(x))
    y[nanmask] = np.nan
    m = _epoch_matrix(Signal("c", y, sf, "µV"), n_ep, onset, es)
    rms = np.sqrt(np.nanmean(m**2, axis=1))
    df["chin_rms_uv"] = rms
    df["chin_rel_median"] = rms / np.nanmedian(rms)
    # twitches: 100-ms envelope above 4x the epoch's 20th percentile, lasting 0.1-5 s
    blk = max(int(round(0.1 * sf)), 1)
    per_ep = m.shape[1] // blk
    env = np.abs(m[:, : per_ep * blk]).reshape(n_ep, per_ep, blk).mean(axis=2)
    bg = np.nanpercentile(env, 20, axis=1, keepdims=True) if np.isfinite(env).any() else env
    above = np.nan_to_num(env > 4.0 * bg).astype(bool)
    flat = above.reshape(-1)
    counts = np.zeros(n_ep)
    for a, b in true_runs(flat):
        dur = (b - a) * blk / sf
        if 0.1 <= dur <= 5.0:
            counts[a // per_ep] += 1
    counts[~np.isfinite(rms)] = np.nan
    df["chin_twitches"] = counts
    sources["chin"] = "EMG_CHIN"


def epoch_features(rec: Recording) -> EpochFeatures:
    """Measure every epoch of a night (see the module docstring for the columns).

    Parameters
    ----------
    rec : Recording
        With a hypnogram (epochs as scored) or without (30-s windows from the start,
        stage ``UNS``).

    Returns
    -------
    EpochFeatures
    """
    t_all = time.perf_counter()
    es = float(rec.epoch_sec or EPOCH_SEC)
    if rec.stages is not None and rec.n_epochs > 0:
        n_ep, onset = rec.n_epochs, float(rec.stage_onset)
        stages = np.asarray(rec.stages).astype(str)
    else:
        onset = 0.0
        n_ep = int(np.floor(rec.duration / es))
        stages = np.full(n_ep, "UNS", dtype="<U3")
    starts = onset + np.arange(n_ep) * es
    ends = starts + es
    df = pd.DataFrame({"epoch": np.arange(n_ep), "start_s": starts, "end_s": ends,
                       "stage": stages})
    missing: dict[str, str] = {}
    sources: dict[str, str] = {}
    timings: dict[str, float] = {}
    if not rec.has_stages:
        missing["stages"] = "no scored hypnogram: 30-s windows from the start, stage unknown"

    _eeg(rec, df, stages, n_ep, onset, es, missing, sources, timings)
    _eog(rec, df, stages, n_ep, onset, es, missing, sources, timings)
    t0 = time.perf_counter()
    _chin(rec, df, n_ep, onset, es, missing, sources)
    timings["chin"] = time.perf_counter() - t0

    # legs
    t0 = time.perf_counter()
    lm_ev = rec.events_of(EventType.LIMB_MOVEMENT)
    plm_ev = rec.events_of(EventType.PLM)
    df["scored_lm_ids"] = _overlapping(lm_ev, starts, ends)
    df["scored_plm_ids"] = _overlapping(plm_ev, starts, ends)
    df["scored_lm"] = df["scored_lm_ids"].map(len).astype(float)
    df["scored_plm"] = df["scored_plm_ids"].map(len).astype(float)
    legs = pd.DataFrame(columns=["onset", "duration", "side", "peak_uv"])
    try:
        legs = detect_leg_movements(rec)
        df["leg_movements"] = _count_by_epoch(legs["onset"].to_numpy(float), n_ep, onset, es)
        sources["legs"] = "leg EMG (detect_leg_movements)"
    except (MissingChannelError, SignalQualityError) as exc:
        if len(lm_ev) or len(plm_ev):
            df["leg_movements"] = df["scored_lm"] + df["scored_plm"]
            sources["legs"] = "scored limb-movement events"
        else:
            df["leg_movements"] = np.nan
            missing["leg_movements"] = str(exc).split(";")[0]
    timings["legs"] = time.perf_counter() - t0

    # heart
    t0 = time.perf_counter()
    try:
        t_hr, hr, src = heart_rate_series(rec)
        idx = _per_epoch_index(t_hr, n_ep, onset, es)
        ok = idx >= 0
        s = np.bincount(idx[ok], weights=hr[ok], minlength=n_ep)[:n_ep]
        c = np.bincount(idx[ok], minlength=n_ep)[:n_ep]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_hr = np.where(c > 0, s / c, np.nan)
        # need at least 10 s worth of HR samples (or 5 beats) to state a mean
        mean_hr[c < 5] = np.nan
        df["hr_bpm"] = mean_hr
        df["hr_change_bpm"] = np.r_[np.nan, np.diff(mean_hr)]
        sources["heart"] = src
    except (MissingChannelError, SignalQualityError) as exc:
        df["hr_bpm"] = np.nan
        df["hr_change_bpm"] = np.nan
        missing["cardiac"] = str(exc).split(";")[0]
    timings["heart"] = time.perf_counter() - t0

    # breathing
    t0 = time.perf_counter()
    df["breath_rate_bpm"] = np.nan
    df["flow_amp_rel"] = np.nan
    flow = _usable(rec, "AIRFLOW", "NASAL_PRESSURE", "THORAX", "ABDOMEN")
    if flow is not None:
        sf = float(flow.sfreq)
        x = np.asarray(flow.data, dtype=float)
        nanm = ~np.isfinite(x)
        sos = sps.butter(2, [0.05, min(1.0, 0.45 * sf)], btype="bandpass", fs=sf, output="sos")
        y = sps.sosfiltfilt(sos, np.nan_to_num(x))
        y[nanm] = np.nan
        m = _epoch_matrix(Signal("f", y, sf, ""), n_ep, onset, es)
        amp = np.nanpercentile(m, 95, axis=1) - np.nanpercentile(m, 5, axis=1) \
            if np.isfinite(m).any() else np.full(n_ep, np.nan)
        prom = 0.25 * np.nanmedian(amp)
        peaks, _ = sps.find_peaks(np.nan_to_num(y), distance=max(int(1.5 * sf), 1), prominence=prom)
        cnt = _count_by_epoch(peaks / sf, n_ep, onset, es)
        cnt[~np.isfinite(amp)] = np.nan
        df["breath_rate_bpm"] = cnt * 60.0 / es
        prev = pd.Series(amp).shift(1).rolling(4, min_periods=2).median().to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            df["flow_amp_rel"] = amp / prev
        sources["breathing"] = flow.name
    else:
        missing["breathing"] = _why_missing(rec, ("AIRFLOW", "NASAL_PRESSURE", "THORAX", "ABDOMEN"),
                                            "airflow or effort")
    resp = rec.events_of(*RESP_TYPES)
    ids = _overlapping(resp, starts, ends)
    df["resp_event_ids"] = ids
    types = resp["type"].to_dict()
    for t in RESP_TYPES:
        df[f"n_{t}"] = [float(sum(types[i] == t for i in lst)) for lst in ids]

    df["spo2_mean"] = np.nan
    df["spo2_min"] = np.nan
    df["desat_depth"] = np.nan
    df["desat_nadir"] = np.nan
    desats = pd.DataFrame(columns=["onset", "duration", "nadir_time", "baseline", "nadir", "depth"])
    spo2 = _usable(rec, "SPO2")
    if spo2 is not None:
        x1, _ = clean_spo2(spo2)
        m = _epoch_matrix(Signal("s", x1, 1.0, "%"), n_ep, onset, es)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            valid = np.isfinite(m).sum(axis=1) >= 10
            df["spo2_mean"] = np.where(valid, np.nanmean(m, axis=1), np.nan)
            df["spo2_min"] = np.where(valid, np.nanmin(m, axis=1), np.nan)
        desats = detect_desaturations(spo2, drop=3.0)
        if len(desats):
            idx = _per_epoch_index(desats["onset"].to_numpy(float), n_ep, onset, es)
            d = desats.assign(ep=idx)[idx >= 0].sort_values("depth").groupby("ep").last()
            df.loc[d.index, "desat_depth"] = d["depth"].to_numpy()
            df.loc[d.index, "desat_nadir"] = d["nadir"].to_numpy()
        sources["spo2"] = "SPO2 (clean_spo2, detect_desaturations)"
    else:
        missing["spo2"] = _why_missing(rec, ("SPO2",), "SpO2")
    df["scored_desat_ids"] = _starting_in(rec.events_of(EventType.DESATURATION), n_ep, onset, es)
    df["arousal_ids"] = _overlapping(rec.events_of(EventType.AROUSAL), starts, ends)
    timings["respiration"] = time.perf_counter() - t0

    if has_position(rec):
        df["position"] = position_at(rec, starts + es / 2)
    else:
        df["position"] = "unknown"
        missing["position"] = "no POSITION channel or scored position changes"
    if "cardiac" in missing and "breathing" in missing and "spo2" in missing:
        missing["respiration"] = "no airflow, effort or SpO2 channel"
    if "chin_emg" in missing and "leg_movements" in missing:
        missing["somatic"] = "no chin or leg EMG, and no scored limb movements"
    timings["total"] = time.perf_counter() - t_all
    return EpochFeatures(table=df, missing=missing, desaturations=desats, leg_movements=legs,
                         sources=sources, timings=timings)


def scored_desaturation_numbers(rec: Recording, desats: pd.DataFrame,
                                tolerance_s: float = 15.0) -> dict[int, dict]:
    """Depth and nadir of each scored desaturation, measured where possible.

    Each scored ``desaturation`` event is matched to the detected desaturation
    (:func:`detect_desaturations`) whose onset is closest, within ``tolerance_s``; its measured
    depth/nadir are used (``source`` "SpO2 signal"). Unmatched events fall back to their scored
    attributes (``spo2_nadir``, ``spo2_baseline``, ``drop``; ``source`` "scored"), else None.

    Returns
    -------
    dict of event id to {"drop": float | None, "nadir": float | None, "source": str}
    """
    out: dict[int, dict] = {}
    scored = rec.events_of(EventType.DESATURATION)
    d_on = desats["onset"].to_numpy(float) if len(desats) else np.zeros(0)
    for eid, row in scored.iterrows():
        attrs = row["attributes"] or {}
        if d_on.size:
            k = int(np.argmin(np.abs(d_on - row["onset"])))
            if abs(d_on[k] - row["onset"]) <= tolerance_s:
                out[int(eid)] = {"drop": float(desats["depth"].iloc[k]),
                                 "nadir": float(desats["nadir"].iloc[k]), "source": "SpO2 signal"}
                continue
        nadir = attrs.get("spo2_nadir")
        drop = attrs.get("drop")
        if drop is None and nadir is not None and attrs.get("spo2_baseline") is not None:
            drop = float(attrs["spo2_baseline"]) - float(nadir)
        out[int(eid)] = {"drop": None if drop is None else float(drop),
                         "nadir": None if nadir is None else float(nadir), "source": "scored"}
    return out
