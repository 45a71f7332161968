"""Apnea screening from heart rate alone: cyclic variation of heart rate (CVHR).

Each obstructive apnea or hypopnea slows the heart a little while breathing is blocked and ends
in an arousal that speeds it up; a run of events therefore makes the heart rate swing up and
down once per event, every 25-120 s (Guilleminault et al., Lancet 1984; Hayano et al., Eur
Respir J 2011, whose CVHR index predicts AHI >= 15 from Holter recordings). This module finds
those swings deterministically:

1. the heart rate is averaged per second, implausible values (outside 25-220 bpm) and single
   beats that jump more than 25 % from their 15-s median are removed, and gaps up to 10 s are
   bridged;
2. each minute gets a **cyclic score**: the RMS of the heart rate band-passed to the CVHR
   periods (25-120 s) over the 5 minutes around it, divided by the RMS of the slower drift
   (120-600 s periods) plus 0.5 bpm -- large when the heart rate swings once per breathing
   event rather than wandering;
3. a minute is **flagged** when its score reaches ``score_threshold``; consecutive flagged
   minutes make an **episode**, and the heart-rate rises inside it (peaks standing at least
   ``min_rise_bpm`` above the troughs beside them, 25-120 s apart) are its evidence.

The record-level figure is the **CVHR index**: rises inside episodes per hour of analysable
heart rate. It is a screening estimate of sleep-disordered breathing, not an apnea-hypopnea
index: heart rate cannot tell apneas from hypopneas or from periodic leg movements and
arousals, it misses events without an autonomic response (common in older patients, with
beta-blockers, in atrial fibrillation or with a pacemaker), and it does not know when the
patient slept. The defaults were chosen on the validation nights of the bundled Apnea-ECG data
(``benchmarks/apnea_ecg.py``), never on its test nights.
"""

from __future__ import annotations

import warnings

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import signal as sps

from sleeplm.clinical.heart_rate import HR_MAX_BPM, HR_MIN_BPM
from sleeplm.clinical.measure import Evidence, Measure, true_runs
from sleeplm.errors import SignalQualityError
from sleeplm.recording import EventType, Recording

__all__ = ["CVHRParams", "CVHRResult", "cvhr_screening", "cvhr_measures", "hr_per_second",
           "SCREENING_LIMITS", "screening_applies"]

#: Said wherever the screening is shown.
SCREENING_LIMITS: str = (
    "Screening estimate from heart rate alone (cyclic variation of heart rate), not an "
    "apnea-hypopnea index: it cannot tell apneas from hypopneas, leg movements or arousals, "
    "misses events without a heart-rate response (older age, beta-blockers, atrial "
    "fibrillation, pacemaker) and does not know sleep from wake. Confirm with a sleep study.")

_RESPIRATORY_CHANNELS = ("AIRFLOW", "NASAL_PRESSURE", "THORAX", "ABDOMEN")
_RESPIRATORY_EVENTS = tuple(t.value for t in (*EventType.apneas(), EventType.HYPOPNEA))


def screening_applies(rec: Recording) -> bool:
    """True for a heart-rate study: an HR channel, and neither a respiratory channel nor scored
    apneas/hypopneas (where those exist, the AHI is the measure and the screening adds nothing)."""
    if "HR" not in rec.signals or any(c in rec.signals for c in _RESPIRATORY_CHANNELS):
        return False
    return not rec.events["type"].isin(_RESPIRATORY_EVENTS).any()


class CVHRParams(BaseModel):
    """Settings of the detector (thresholds chosen on Apnea-ECG validation nights).

    Attributes
    ----------
    min_period_s, max_period_s : float
        Periods of the cyclic band, s (one breathing event and its recovery).
    slow_period_s : float
        Longest period of the slow-drift band (from ``max_period_s``), s.
    window_s : float
        Length of the window around each minute the score is computed over, s.
    score_threshold : float
        Cyclic score from which a minute is flagged (dimensionless).
    min_rise_bpm : float
        Least prominence of a heart-rate rise counted as evidence, bpm.
    index_threshold : float
        CVHR index (rises in flagged episodes per hour) from which a night screens positive.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_period_s: float = Field(default=25.0, gt=0)
    max_period_s: float = Field(default=120.0, gt=0)
    slow_period_s: float = Field(default=600.0, gt=0)
    window_s: float = Field(default=300.0, ge=60)
    score_threshold: float = Field(default=1.77, gt=0)
    min_rise_bpm: float = Field(default=3.0, gt=0)
    index_threshold: float = Field(default=9.8, ge=0)


class CVHRResult(BaseModel):
    """The screening of one night.

    Attributes
    ----------
    minute_flag : list of int
        0/1 per minute from the recording start: 1 = the minute's cyclic score reaches the
        threshold.
    minute_score : list of float
        Cyclic score per minute (NaN where too little heart rate).
    rises_s : list of float
        Times of the HR rises inside episodes, s from the start.
    rise_bpm : list of float
        Their prominences, bpm.
    episodes : list of tuple of float
        (start, end) of each CVHR episode, s.
    analysable_h : float
        Hours with usable heart rate.
    cvhr_index : float
        Rises inside episodes per analysable hour.
    screen_positive : bool
        ``cvhr_index >= params.index_threshold``.
    params : CVHRParams
    limits : str
    """

    model_config = ConfigDict(extra="forbid")

    minute_flag: list[int]
    minute_score: list[float]
    rises_s: list[float]
    rise_bpm: list[float]
    episodes: list[tuple[float, float]]
    analysable_h: float
    cvhr_index: float
    screen_positive: bool
    params: CVHRParams
    limits: str = SCREENING_LIMITS

    @property
    def flagged_minutes(self) -> int:
        """Number of minutes flagged."""
        return int(sum(self.minute_flag))


def hr_per_second(rec: Recording) -> np.ndarray:
    """Heart rate per second of the recording, cleaned (bpm; NaN where unusable).

    Parameters
    ----------
    rec : Recording
        With an ``HR`` channel (any rate), e.g. from :func:`sleeplm.io.beats.read_beats`.

    Returns
    -------
    numpy.ndarray
        One value per second: mean of the in-range samples of that second, single outliers
        (> 25 % from the 15-s median) removed, gaps <= 10 s linearly bridged.
    """
    sig = rec.require("HR", purpose="the heart-rate apnea screening")
    v = np.asarray(sig.data, dtype=float)
    v[(v < HR_MIN_BPM) | (v > HR_MAX_BPM)] = np.nan
    per = max(int(round(sig.sfreq)), 1)
    n = int(v.size // per) if sig.sfreq >= 1 else v.size
    if sig.sfreq >= 1:
        blocks = v[: n * per].reshape(n, per)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN seconds stay NaN
            x = np.nanmean(blocks, axis=1)
    else:  # slower than 1 Hz: hold each value for its period
        x = np.repeat(v, int(round(1 / sig.sfreq)))
    med = _rolling_nanmedian(x, 15)
    x[np.abs(x - med) > 0.25 * med] = np.nan
    ok = np.isfinite(x)
    if ok.sum() >= 2:
        idx = np.arange(x.size)
        filled = np.interp(idx, idx[ok], x[ok])
        # bridge only short gaps
        run_start = np.flatnonzero(np.diff(np.r_[1, ok.astype(int)]) == -1)
        run_end = np.flatnonzero(np.diff(np.r_[ok.astype(int), 1]) == 1) + 1
        for a, b in zip(run_start, run_end):
            if b - a <= 10 and a > 0 and b < x.size:
                x[a:b] = filled[a:b]
    return x


def _rolling_nanmedian(x: np.ndarray, width: int) -> np.ndarray:
    from numpy.lib.stride_tricks import sliding_window_view

    pad = width // 2
    xp = np.pad(x, pad, mode="edge")
    win = sliding_window_view(xp, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows stay NaN
        return np.nanmedian(win, axis=1)[: x.size]


def _bandpass(filled: np.ndarray, lo_s: float, hi_s: float) -> np.ndarray:
    sos = sps.butter(2, [1 / hi_s, 1 / lo_s], btype="bandpass", fs=1.0, output="sos")
    return sps.sosfiltfilt(sos, filled - np.mean(filled))


def _window_rms(band: np.ndarray, n_min: int, window_s: float) -> np.ndarray:
    half = int(window_s // 2)
    out = np.full(n_min, np.nan)
    sq = np.where(np.isfinite(band), band**2, 0.0)
    ok = np.isfinite(band).astype(float)
    csq, cok = np.r_[0, np.cumsum(sq)], np.r_[0, np.cumsum(ok)]
    for k in range(n_min):
        a, b = max(0, 60 * k + 30 - half), min(band.size, 60 * k + 30 + half)
        if b > a and cok[b] - cok[a] >= 0.3 * (b - a) and cok[b] - cok[a] >= 30:
            out[k] = np.sqrt((csq[b] - csq[a]) / (cok[b] - cok[a]))
    return out


def cvhr_screening(rec: Recording, params: CVHRParams | None = None, *,
                   n_minutes: int | None = None) -> CVHRResult:
    """Screen one night for sleep-disordered breathing from its heart rate.

    Parameters
    ----------
    rec : Recording
        With an ``HR`` channel.
    params : CVHRParams, optional
    n_minutes : int, optional
        Minutes to report (e.g. the length of an expert's per-minute labels); default the
        recording's whole minutes.

    Returns
    -------
    CVHRResult

    Raises
    ------
    MissingChannelError
        No HR channel.
    SignalQualityError
        Less than 30 minutes of usable heart rate.
    """
    p = params or CVHRParams()
    x = hr_per_second(rec)
    ok = np.isfinite(x)
    analysable_s = float(ok.sum())
    if analysable_s < 1800:
        raise SignalQualityError(f"only {analysable_s / 60:.0f} min of usable heart rate; the "
                                 "screening needs at least 30 min")
    n_min = int(n_minutes if n_minutes is not None else x.size // 60)
    idx = np.arange(x.size)
    filled = np.interp(idx, idx[ok], x[ok])
    cyc = _bandpass(filled, p.min_period_s, p.max_period_s)
    slow = _bandpass(filled, p.max_period_s, p.slow_period_s)
    cyc[~ok], slow[~ok] = np.nan, np.nan
    with np.errstate(invalid="ignore"):
        score = _window_rms(cyc, n_min, p.window_s) / (_window_rms(slow, n_min, p.window_s) + 0.5)
    flag = (np.nan_to_num(score, nan=0.0) >= p.score_threshold).astype(int)
    episodes = [(60.0 * a, 60.0 * b) for a, b in true_runs(flag.astype(bool))]
    peaks = sps.find_peaks(np.nan_to_num(cyc), prominence=p.min_rise_bpm,
                           distance=int(p.min_period_s))[0]
    prom = sps.peak_prominences(np.nan_to_num(cyc), peaks)[0]
    inside = np.zeros(peaks.size, dtype=bool)
    for a, b in episodes:
        inside |= (peaks >= a) & (peaks < b)
    hours = analysable_s / 3600
    index = int(inside.sum()) / hours
    return CVHRResult(minute_flag=flag.tolist(),
                      minute_score=[float(v) for v in score],
                      rises_s=[float(r) for r in peaks[inside]],
                      rise_bpm=[float(v) for v in prom[inside]],
                      episodes=episodes, analysable_h=round(hours, 3),
                      cvhr_index=round(index, 2), screen_positive=index >= p.index_threshold,
                      params=p)


def cvhr_measures(rec: Recording, params: CVHRParams | None = None) -> list[Measure]:
    """The screening as report measures, each carrying the limits in its ``reason``.

    Returns
    -------
    list of Measure
        ``cvhr_index`` (rises/h; evidence: the episodes as time intervals), ``cvhr_minutes``
        (flagged minutes) and ``cvhr_screen`` (1 positive / 0 negative).
    """
    res = cvhr_screening(rec, params)
    labelled = rec.events[rec.events["type"] == EventType.APNEA_MINUTE.value]
    ev = Evidence(intervals=[(round(a, 1), round(b, 1)) for a, b in res.episodes],
                  note=f"{len(res.rises_s)} heart-rate rises in {len(res.episodes)} episodes")
    thr = res.params.index_threshold
    return [
        Measure(name="cvhr_index", label="CVHR index (heart-rate apnea screening, not an AHI)",
                value=res.cvhr_index, unit="/h", evidence=ev,
                reason=f"{len(res.rises_s)} heart-rate rises in {len(res.episodes)} cyclic "
                       f"episodes over {res.analysable_h:.1f} h of usable heart rate. "
                       + SCREENING_LIMITS),
        Measure(name="cvhr_minutes", label="Minutes with cyclic heart-rate variation",
                value=float(res.flagged_minutes), unit="min", evidence=ev,
                reason=f"minutes whose heart rate swings with a {res.params.min_period_s:.0f}-"
                       f"{res.params.max_period_s:.0f} s period (cyclic score >= "
                       f"{res.params.score_threshold:g})"),
        Measure(name="cvhr_screen", label="Heart-rate apnea screening (1 positive, 0 negative)",
                value=1.0 if res.screen_positive else 0.0, unit="", evidence=ev,
                reason=("positive" if res.screen_positive else "negative")
                       + f": CVHR index {res.cvhr_index:.1f}/h "
                       + (">=" if res.screen_positive else "<") + f" {thr:g}/h. "
                       + SCREENING_LIMITS),
    ] + ([Measure(name="apnea_minutes_labelled", label="Apnea minutes labelled by an expert",
                  value=float(len(labelled)), unit="min",
                  evidence=Evidence(event_ids=[int(i) for i in labelled.index[:200]]),
                  reason="minutes the study's own per-minute labels mark as containing apnea or "
                         "hypopnea (counted, not re-scored)")] if len(labelled) else [])
