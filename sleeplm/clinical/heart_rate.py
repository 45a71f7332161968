"""Heart rate during sleep and per stage, from an HR channel or from ECG R-peaks.

The AASM Manual (v2.6/v3, cardiac rules) asks the report for the average heart rate during
sleep and the highest heart rate during sleep and during recording; sinus bradycardia is
< 40 bpm and tachycardia > 90 bpm sustained. Those rules refer to sustained rates, so the
minimum and maximum here are taken over **per-epoch medians** (30 s) rather than over single
beats, which one missed or extra R-peak would otherwise decide.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import signal as sps

from sleeplm._logging import logger
from sleeplm.clinical.measure import Evidence, Measure
from sleeplm.clinical.sleep_time import sleep_time
from sleeplm.errors import SignalQualityError
from sleeplm.recording import (EPOCH_SEC, PLAUSIBLE_HR_BPM, PLAUSIBLE_RR_SEC, SLEEP_STAGES,
                               EventType, Recording, Signal)

__all__ = [
    "HR_MIN_BPM",
    "HR_MAX_BPM",
    "RR_MIN_SEC",
    "RR_MAX_SEC",
    "POST_EVENT_SEC",
    "heart_rate_series",
    "heart_rate_measures",
    "respiratory_event_heart_rate",
]

#: Plausible heart rate, bpm; HR-channel values outside are artifacts.
HR_MIN_BPM, HR_MAX_BPM = PLAUSIBLE_HR_BPM
#: Plausible RR interval, s (about 220 and 25 bpm).
RR_MIN_SEC, RR_MAX_SEC = PLAUSIBLE_RR_SEC
#: An RR interval deviating by more than this fraction from the median of its 11 neighbours is
#: a missed/extra beat or an ectopic one (a loosened form of the 20 % rule of HRV editing).
_RR_OUTLIER_FRAC = 0.3
#: Refractory period between R-peaks, s.
_MIN_PEAK_DIST = 0.25
#: An epoch needs this many seconds of valid heart rate to enter the per-epoch medians.
_MIN_COVER_SEC = 15.0
#: A HR channel needs this many seconds of values in range to be used instead of the ECG.
_MIN_HR_CHANNEL_SEC = 60.0
_STAGE_ORDER = ("W", "N1", "N2", "N3", "R")
#: Seconds after an apnea or hypopnea ends in which the heart-rate peak that follows it is
#: looked for (the rise at the event's termination and arousal).
POST_EVENT_SEC = 15.0
#: The peak after an event is the highest mean of this many consecutive seconds (no single
#: beat decides it).
_PEAK_WINDOW_SEC = 5
_WORD = {"mean": "Mean", "min": "Lowest", "max": "Highest"}


def _from_hr_channel(sig: Signal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times (s), HR (bpm) and weights (s each value stands for) of the in-range samples."""
    v = np.asarray(sig.data, dtype=float)
    ok = np.isfinite(v) & (v >= HR_MIN_BPM) & (v <= HR_MAX_BPM)
    t = np.arange(v.size) / float(sig.sfreq)
    return t[ok], v[ok], np.full(int(ok.sum()), 1.0 / float(sig.sfreq))


def _r_peaks(sig: Signal) -> np.ndarray:
    """Sample indices of the R-peaks of an ECG channel (any polarity)."""
    fs = float(sig.sfreq)
    hi = min(20.0, 0.4 * fs)
    if hi < 10.0:
        raise SignalQualityError(
            f"R-peak detection needs ECG sampled at >= 50 Hz (QRS band 5-20 Hz); ECG (label "
            f"'{sig.label}') is sampled at {fs:g} Hz."
        )
    x = np.asarray(sig.data, dtype=float).copy()
    bad = ~np.isfinite(x)
    if bad.all():
        return np.zeros(0, dtype=int)
    x[bad] = np.median(x[~bad])
    # QRS band: 5-20 Hz (Pan & Tompkins 1985 used 5-15 Hz) removes baseline wander and most
    # of the P/T wave energy.
    sos = sps.butter(3, [5.0, hi], btype="bandpass", fs=fs, output="sos")
    y = sps.sosfiltfilt(sos, x)
    y[bad] = 0.0

    # polarity per 5-min block: the R deflection is the larger extreme of the filtered signal
    blk = max(int(round(300 * fs)), 1)
    n = y.size
    feat = np.empty(n)
    for a in range(0, n, blk):
        seg = y[a : a + blk]
        up, down = np.percentile(seg, [99.5, 0.5])
        feat[a : a + blk] = seg if abs(up) >= abs(down) else -seg

    # adaptive height: 35 % of the running R amplitude (median over ~12.5 s of the maxima of
    # 2.5-s blocks, each holding at least one beat at >= 25 bpm), and above the noise floor
    b = max(int(round(2.5 * fs)), 1)
    nb = int(math.ceil(n / b))
    pad = np.full(nb * b, -np.inf)
    pad[:n] = feat
    blockmax = pad.reshape(nb, b).max(axis=1)
    env = pd.Series(blockmax).rolling(5, center=True, min_periods=1).median().to_numpy()
    noise = 1.4826 * np.median(np.abs(feat - np.median(feat)))
    height = np.maximum(0.35 * np.repeat(env, b)[:n], 4.0 * noise)
    height = np.maximum(height, 1e-12)
    peaks, _ = sps.find_peaks(feat, height=height, distance=max(int(round(_MIN_PEAK_DIST * fs)), 1))
    if bad.any():
        peaks = peaks[~bad[peaks]]
    return peaks


def _from_ecg(sig: Signal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times (s, of the 2nd beat), HR (bpm) and weights (RR, s) of the accepted RR intervals."""
    fs = float(sig.sfreq)
    peaks = _r_peaks(sig)
    if peaks.size < 2:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    rr = np.diff(peaks) / fs
    t = peaks[1:] / fs
    ok = (rr >= RR_MIN_SEC) & (rr <= RR_MAX_SEC)
    bad = ~np.isfinite(np.asarray(sig.data, dtype=float))
    if bad.any():  # no interval spanning invalid samples
        cbad = np.r_[0, np.cumsum(bad)]
        ok &= (cbad[peaks[1:]] - cbad[peaks[:-1]]) == 0
    rr_ok = pd.Series(np.where(ok, rr, np.nan))
    local = rr_ok.rolling(11, center=True, min_periods=3).median().to_numpy()
    with np.errstate(invalid="ignore"):
        ok &= ~(np.abs(rr - local) > _RR_OUTLIER_FRAC * local)
    return t[ok], 60.0 / rr[ok], rr[ok]


def _series(rec: Recording) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Heart rate series with per-value weights (seconds covered) and its source."""
    rec.require("HR", "ECG", purpose="heart rate")  # raises when neither exists / is usable
    problems = []
    hr = rec.signals.get("HR")
    if hr is not None and hr.quality_problem() is None:
        t, v, w = _from_hr_channel(hr)
        if w.sum() >= _MIN_HR_CHANNEL_SEC:
            return t, v, w, "HR channel"
        problems.append(f"HR (label '{hr.label}') has only {w.sum():.0f} s of values within "
                        f"{HR_MIN_BPM:g}-{HR_MAX_BPM:g} bpm")
    ecg = rec.signals.get("ECG")
    if ecg is not None and ecg.quality_problem() is None:
        t, v, w = _from_ecg(ecg)
        if w.sum() >= _MIN_HR_CHANNEL_SEC:
            if problems:
                logger.info("heart rate: %s; using ECG R-peaks", problems[0])
            return t, v, w, "ECG R-peaks"
        problems.append(f"ECG (label '{ecg.label}') gave only {w.sum():.0f} s of plausible "
                        f"RR intervals ({RR_MIN_SEC:g}-{RR_MAX_SEC:g} s)")
    raise SignalQualityError(
        "heart rate needs a usable HR or ECG channel, but " + "; ".join(problems)
        + ". Check the sensors in the source file."
    )


def heart_rate_series(rec: Recording) -> tuple[np.ndarray, np.ndarray, str]:
    """Instantaneous heart rate over the night.

    A HR channel is preferred when it has >= 1 min of values within 25-220 bpm (values outside
    are dropped). Otherwise R-peaks are detected on the ECG: 5-20 Hz Butterworth band-pass
    (zero phase), polarity chosen per 5-min block (the larger of the 99.5th / 0.5th percentile
    deflections is the R wave, so inverted leads work), peaks at least 0.25 s apart above an
    adaptive height (35 % of the running R amplitude, and 4 robust SDs above the noise); RR
    intervals outside 0.27-2.4 s, spanning invalid samples, or deviating > 30 % from the median
    of their 11 neighbours (missed/extra/ectopic beats) are rejected.

    Parameters
    ----------
    rec : Recording
        Needs a ``HR`` (bpm) or ``ECG`` (µV) channel.

    Returns
    -------
    times : numpy.ndarray
        Seconds from the recording start (HR samples, or the second R-peak of each interval).
    hr : numpy.ndarray
        Heart rate, bpm (only valid values).
    source : str
        ``"HR channel"`` or ``"ECG R-peaks"``.

    Raises
    ------
    MissingChannelError
        Neither HR nor ECG is in the recording.
    SignalQualityError
        They exist but give no usable heart rate.
    """
    t, v, _, src = _series(rec)
    return t, v, src


def _epoch_table(rec: Recording, staged: bool) -> tuple[pd.DataFrame, str]:
    """Per-epoch median HR (bpm) of the epochs with enough valid heart rate."""
    t, v, w, src = _series(rec)
    if staged:
        ep = rec.epoch_index(t)
        start = rec.stage_onset
        length = rec.epoch_sec
    else:  # pseudo-epochs of 30 s from the start
        ep = np.floor(t / EPOCH_SEC).astype(int)
        start, length = 0.0, EPOCH_SEC
    keep = ep >= 0
    df = pd.DataFrame({"epoch": ep[keep], "hr": v[keep], "w": w[keep]})
    g = df.groupby("epoch").agg(hr=("hr", "median"), cover=("w", "sum"))
    g = g[g["cover"] >= _MIN_COVER_SEC].copy()
    idx = g.index.to_numpy().astype(int)
    g["stage"] = rec.stages[idx] if staged else "UNS"
    g["start"] = start + idx * length
    g["end"] = g["start"] + length
    return g, src


def _stats(
    g: pd.DataFrame, suffix: str, what: str, staged: bool, reason: str
) -> list[Measure]:
    """Mean, min and max of the per-epoch medians in ``g``."""

    def evid(rows: pd.DataFrame, note: str) -> Evidence:
        if staged:
            return Evidence.from_epochs(rows.index.to_numpy(), note=note)
        return Evidence(intervals=[(float(a), float(b)) for a, b in zip(rows["start"], rows["end"])],
                        note=note)

    out = [Measure(name=f"hr_mean{suffix}", label=f"{_WORD['mean']} heart rate {what}",
                   value=float(g["hr"].mean()), unit="bpm",
                   evidence=evid(g, f"mean of {len(g)} per-epoch median heart rates"),
                   reason=reason)]
    for fn, word in (("idxmin", "min"), ("idxmax", "max")):
        e = getattr(g["hr"], fn)()
        row = g.loc[[e]]
        label = f"{_WORD[word]} heart rate {what}"
        out.append(Measure(name=f"hr_{word}{suffix}", label=label, value=float(row["hr"].iloc[0]),
                           unit="bpm", evidence=evid(row, f"{word} of per-epoch medians"),
                           reason=reason))
    return out


def heart_rate_measures(rec: Recording) -> list[Measure]:
    """Mean, minimum and maximum heart rate during sleep and per stage, bpm.

    The heart rate of :func:`heart_rate_series` is summarised per 30-s epoch by its median
    (epochs need >= 15 s of valid heart rate). ``hr_mean`` is the mean of the per-epoch medians
    of the sleep epochs; ``hr_min`` / ``hr_max`` are their minimum / maximum -- a robust
    min/max: a sustained rate over half an epoch at least, never a single beat. The same per
    stage: ``hr_mean_W``, ``hr_min_W``, ``hr_max_W``, then N1, N2, N3, R (a stage without
    epochs, or without usable heart rate in them, gives :meth:`Measure.missing`). Evidence: the
    epochs used (the epoch of the extreme for min/max).

    Without a hypnogram, ``hr_mean``/``hr_min``/``hr_max`` cover the whole recording in 30-s
    windows (evidence as time intervals; ``reason`` says so) and per-stage ones are missing.

    Parameters
    ----------
    rec : Recording
        Needs a ``HR`` or ``ECG`` channel.

    Returns
    -------
    list of Measure
        hr_mean, hr_min, hr_max, then mean/min/max for W, N1, N2, N3, R.

    Raises
    ------
    MissingChannelError
        Neither HR nor ECG is present.
    SignalQualityError
        No usable heart rate could be derived from them.
    """
    staged = sleep_time(rec).staged
    g, src = _epoch_table(rec, staged)
    base_reason = f"from {src}; per-epoch (30 s) medians"
    out: list[Measure] = []
    if staged:
        sl = g[np.isin(g["stage"].to_numpy(), SLEEP_STAGES)]
        if len(sl):
            out += _stats(sl, "", "during sleep", True, base_reason)
        else:
            why = ("no sleep epochs scored" if not np.isin(rec.stages, SLEEP_STAGES).any()
                   else "no usable heart rate during sleep epochs")
            out += [Measure.missing(f"hr_{k}", f"{_WORD[k]} heart rate during sleep", "bpm", why)
                    for k in ("mean", "min", "max")]
        for stage in _STAGE_ORDER:
            rows = g[g["stage"].to_numpy() == stage]
            what = f"in stage {stage}"
            if len(rows):
                out += _stats(rows, f"_{stage}", what, True, base_reason)
                continue
            why = (f"no {stage} epochs scored" if not np.any(rec.stages == stage)
                   else f"no usable heart rate during {stage} epochs")
            out += [Measure.missing(f"hr_{k}_{stage}", f"{_WORD[k]} heart rate {what}", "bpm", why)
                    for k in ("mean", "min", "max")]
        return out

    reason = base_reason + "; no sleep staging: computed over the whole recording (monitoring time)"
    if len(g):
        out += _stats(g, "", "during recording", False, reason)
    else:
        out += [Measure.missing(f"hr_{k}", f"{_WORD[k]} heart rate", "bpm",
                                "no 30-s window with enough valid heart rate")
                for k in ("mean", "min", "max")]
    for stage in _STAGE_ORDER:
        out += [Measure.missing(f"hr_{k}_{stage}", f"{_WORD[k]} heart rate in stage {stage}",
                                "bpm", "no sleep staging") for k in ("mean", "min", "max")]
    return out


def _per_second(t: np.ndarray, v: np.ndarray, w: np.ndarray, n: int) -> np.ndarray:
    """Heart rate per second of the recording (bpm, weighted mean of the values whose time
    falls in that second; NaN for a second without one)."""
    sec = np.floor(t).astype(int)
    keep = (sec >= 0) & (sec < n)
    num = np.bincount(sec[keep], weights=v[keep] * w[keep], minlength=n)
    den = np.bincount(sec[keep], weights=w[keep], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def respiratory_event_heart_rate(rec: Recording) -> list[Measure]:
    """Heart rate during the scored apneas and hypopneas, and its rise after them, bpm.

    Obstructive events typically slow the heart while breathing stops and speed it up when
    the event ends with an arousal (the cyclic variation of heart rate). For each apnea or
    hypopnea with heart rate over at least half of its seconds, and over at least 3 of the
    :data:`POST_EVENT_SEC` seconds after it ends: the mean heart rate during the event, and
    the peak after it (the highest mean over 5 consecutive seconds). Reported: the mean over
    those events of each, and of the rise (peak after minus mean during).

    Parameters
    ----------
    rec : Recording
        Needs a ``HR`` or ``ECG`` channel and scored apneas or hypopneas.

    Returns
    -------
    list of Measure
        ``hr_resp_event_mean``, ``hr_resp_post_peak``, ``hr_resp_rise`` (bpm); evidence: the
        events used. Missing, with the reason, when no apnea or hypopnea is scored or none has
        heart rate around it.

    Raises
    ------
    MissingChannelError
        Neither HR nor ECG is present.
    SignalQualityError
        No usable heart rate could be derived from them.
    """
    labels = {
        "hr_resp_event_mean": "Mean heart rate during apneas and hypopneas",
        "hr_resp_post_peak": f"Mean peak heart rate in the {POST_EVENT_SEC:g} s after apneas "
                             "and hypopneas",
        "hr_resp_rise": "Mean heart-rate rise after apneas and hypopneas (peak after minus "
                        "mean during)",
    }
    events = rec.events_of(*EventType.apneas(), EventType.HYPOPNEA)
    if events.empty:
        return [Measure.missing(k, lab, "bpm", "no apneas or hypopneas scored")
                for k, lab in labels.items()]
    t, v, w, src = _series(rec)
    n = int(math.ceil(max(rec.duration, float(t.max()) + 1.0 if t.size else 0.0)))
    hr = _per_second(t, v, w, n)
    post_n = int(POST_EVENT_SEC)
    ids, during, peaks = [], [], []
    for eid, onset, dur in zip(events.index, events["onset"], events["duration"]):
        a, b = int(math.floor(onset)), int(math.ceil(onset + dur))
        if b <= a or a < 0 or b + post_n > n:
            continue
        inside = hr[a:b]
        if np.isfinite(inside).sum() < 0.5 * (b - a):
            continue
        after = pd.Series(hr[b:b + post_n])
        if after.notna().sum() < 3:
            continue
        peak = after.rolling(_PEAK_WINDOW_SEC, min_periods=3).mean().max()
        if not np.isfinite(peak):
            continue
        ids.append(int(eid))
        during.append(float(np.nanmean(inside)))
        peaks.append(float(peak))
    if not ids:
        return [Measure.missing(k, lab, "bpm", f"no apnea or hypopnea with heart rate ({src}) "
                                "during it and after it") for k, lab in labels.items()]
    note = (f"{len(ids)} of {len(events)} apneas and hypopneas with heart rate during and "
            f"after them")
    reason = f"from {src}; per-event means, then averaged over events"
    values = {"hr_resp_event_mean": float(np.mean(during)),
              "hr_resp_post_peak": float(np.mean(peaks)),
              "hr_resp_rise": float(np.mean(np.asarray(peaks) - np.asarray(during)))}
    return [Measure(name=k, label=labels[k], value=values[k], unit="bpm",
                    evidence=Evidence(event_ids=ids, note=note), reason=reason)
            for k in labels]
