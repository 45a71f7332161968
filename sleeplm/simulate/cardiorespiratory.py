"""Cardiorespiratory channels of a simulated night: airflow, effort, snore, SpO2, ECG, pulse.

:func:`simulate_cardiorespiratory` renders the breathing, oxygen saturation and heart of a
:class:`~sleeplm.simulate.plan.NightPlan`. The plan is the truth: every apnea, hypopnea and
desaturation drawn here is one the plan asked for, and the desaturations actually drawn are
returned as a table.

How it is drawn
---------------
**Breaths.** A sequence of breaths is generated first (one short Python loop per breath, about
7,000 per night): each has a period drawn around ``60 / plan.breathing_rate`` scaled by the
stage (faster and irregular in wake and REM, slow and very regular in N3: breath-to-breath CV
~3 % in N3 vs ~20 % in REM; Douglas 1982, Gould 1988), an inspiratory fraction Ti/Ttot ~0.42,
a tidal amplitude (minute ventilation ~10 % lower in NREM and REM than in quiet wake; Douglas
et al., Thorax 1982;37:840), and occasional sighs (about 2x the tidal volume, a few per hour,
followed by a longer breath). Breath boundaries are aligned to event onsets and ends, so an
event starts with its first reduced breath and ends with its first recovery breath, as scorers
mark them (AASM Manual v2.6/v3, respiratory rules). Central apneas (and the central part of
mixed apneas) have no breaths at all.

Per sample (32 Hz), each breath is a normalised lung-volume curve (cosine rise during
inspiration, faster passive expiration and an end-expiratory pause) and its derivative, the
flow. Envelopes per sample (flow gain, effort gain, thoraco-abdominal phase angle, inspiratory
flow limitation, recovery boost, snore loudness) encode the events:

* **obstructive apnea**: flow drop >= 96 % (AASM: >= 90 % of the pre-event baseline, >= 10 s),
  effort continuing and rising through the event, rib cage and abdomen moving paradoxically
  (phase angle -> 180 deg within a few breaths);
* **central apnea**: no breaths, no effort (only small cardiogenic oscillations on the nasal
  pressure, the sign of an open airway);
* **mixed apnea**: central first 30-50 %, then obstructive efforts without flow;
* **hypopnea**: flow 30-55 % of baseline (AASM: >= 30 % drop), effort kept,
  flattened "flow-limited" inspiratory nasal-pressure profile (Hosselet 1998), mild phase lag;
  a Cheyne-Stokes (``periodic``) hypopnea is central instead (effort falls with the flow);
* **recovery**: the first breaths after an event are 1.3-2x larger (and loud snores after
  obstructive events);
* **Cheyne-Stokes breathing**: ``periodic`` events sit in crescendo-decrescendo cycles of
  40-90 s (AASM v2.6: >= 3 consecutive central apneas/hypopneas separated by crescendo-
  decrescendo breathing with a cycle length >= 40 s; Javaheri 2016);
* **position**: the rib-cage / abdominal share of the RIP signals and their DC offset change
  with each position change (RIP is AC-coupled here, 0.015 Hz); the rib-cage contribution falls
  in REM (intercostal hypotonia; Tabachnik 1981).

AIRFLOW is an oronasal thermistor (a slow sensor: first-order lag 0.25 s), NASAL_PRESSURE a
nasal-cannula pressure in cmH2O-like units (square-root linearised, so proportional to flow, and
the one that shows flow limitation), THORAX / ABDOMEN RIP bands, SNORE a 32-Hz vibration
(piezo-like: white carrier times a loudness envelope during inspiration, saturating at +-400).

**SpO2** (1 Hz, 0.1 % resolution): ``plan.baseline_spo2`` awake, 0.3-0.9 % lower in sleep
(slightly lower in REM), a slow random drift (+-0.25 %), oximeter-averaged noise and a few
small spontaneous dips (0.5-1.6 %, never near the 3 % scoring threshold). Every event with
``desat_depth > 0`` is followed by a dip of exactly that depth below the local baseline: the
fall begins at the finger ~0.6-0.85 x the circulation delay after the event onset and the nadir
comes 15-30 s after the event ends (lung-to-finger circulation delay ~20-40 s; Berry et al.
2012, Kryger's Principles and Practice of Sleep Medicine), then SpO2 recovers over 10-20 s
(faster than it fell). Consecutive dips never overlap (a recovery is shortened, at worst the
next fall delayed), so each planned desaturation is one detectable event. Dips of >= 3 % are
returned in the truth table (AASM desaturations; smaller planned dips are drawn but not
listed).

**Heart** (Guilleminault et al., Lancet 1984;1:126, cyclic variation of heart rate; Bonnet &
Arand 1997, heart rate rising with arousals; Trinder et al. 2001, stage effects; Somers 1993):
instantaneous rate = ``plan.heart_rate`` (quiet N2) + stage offset (W +9, N1 +3, N2 0, N3 -3,
REM +3 bpm, reached over ~20 s) + slow drift (+-0.7 bpm) + stage-dependent variability (largest
in REM and wake) + respiratory sinus arrhythmia (rate up in inspiration, amplitude falling with
age, largest in N3, absent when breathing stops) + bradycardia deepening through apneas
(4-8 bpm; 1-3 in hypopneas) and a surge at their end (6-10 bpm after apneas, 3-6 after
hypopneas) plus 8-12 bpm more with an arousal (peak ~5 s after its onset). R-peaks are placed
by integrating that rate; each beat is a sum of Gaussian P, Q, R (~1000 uV), S and T waves with
a rate-corrected QT (Bazett-like ``sqrt(RR)`` scaling), respiration-modulated R amplitude,
baseline wander, white noise, mains hum and EMG noise in wake/arousals. HR is the same
instantaneous rate as an oximeter's pulse rate: 1 Hz, trailing 4-s average, integer bpm.

Runtime: an 8-h night takes about 1 s on one core (most of it the 256-Hz ECG).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import signal as sps
from scipy.ndimage import uniform_filter1d

from sleeplm.recording import POSITIONS
from sleeplm.simulate.plan import RATES, NightPlan

__all__ = [
    "CARDIORESPIRATORY_CHANNELS",
    "DESAT_TRUTH_COLUMNS",
    "HR_STAGE_OFFSET",
    "simulate_cardiorespiratory",
]

#: Channels drawn by :func:`simulate_cardiorespiratory`.
CARDIORESPIRATORY_CHANNELS: tuple[str, ...] = (
    "AIRFLOW", "NASAL_PRESSURE", "THORAX", "ABDOMEN", "SNORE", "SPO2", "ECG", "HR")
#: Columns of the desaturation truth table: onset (s, start of the fall), duration (s, until
#: SpO2 is back at baseline), depth (%), nadir (%), baseline (%).
DESAT_TRUTH_COLUMNS: tuple[str, ...] = ("onset", "duration", "depth", "nadir", "baseline")
#: Heart-rate offset of each stage from quiet N2, bpm (Trinder 2001; Somers 1993).
HR_STAGE_OFFSET: dict[str, float] = {"W": 9.0, "N1": 3.0, "N2": 0.0, "N3": -3.0, "R": 3.0}
#: Smallest depth (%) of a desaturation listed in the truth table (AASM 3 % rule).
_MIN_SCORED_DESAT = 3.0

_STAGE_ORDER = ("W", "N1", "N2", "N3", "R")
_CODE = {s: i for i, s in enumerate(_STAGE_ORDER)}
# Per stage (W, N1, N2, N3, R) ---------------------------------------------------------------
_RATE_FACTOR = np.array([1.05, 1.02, 1.00, 0.96, 1.10])   # breathing rate vs quiet N2
_RATE_CV = np.array([0.14, 0.10, 0.06, 0.03, 0.18])      # breath-to-breath period CV
_AMP_FACTOR = np.array([1.00, 0.97, 0.95, 0.99, 0.86])   # tidal amplitude (VE ~10 % lower asleep)
_AMP_CV = np.array([0.16, 0.10, 0.07, 0.04, 0.18])       # breath-to-breath amplitude CV
_SIGH_P = np.array([0.012, 0.010, 0.005, 0.002, 0.005])  # sigh probability per breath
_RATE_VAR = np.array([0.10, 0.05, 0.02, 0.01, 0.12])     # fast log-rate wander (REM irregular)
_HR_OFFSET = np.array([HR_STAGE_OFFSET[s] for s in _STAGE_ORDER])
_HR_VAR = np.array([2.5, 1.2, 0.8, 0.5, 3.0])            # short-term HR variability SD, bpm
#: (the "real" statistics scale it by 1.4, as real heart rate varies more)
#: Faster heart-rate wander (s, bpm): the 0.03-0.15 Hz power of real heart rate (Apnea-ECG)
#: that the 20-s variability alone leaves out.
_HR_FAST_TAU, _HR_FAST_SD = 5.0, 1.8
#: SD of the log of each event's and arousal's heart-rate surge (spread of real rises).
_SURGE_LOG_SD = 0.4
#: Share of an event's bradycardia gone by its end (the heart speeds up before breathing resumes).
_BRADY_EASE = 0.6
_RSA_STAGE = np.array([0.6, 0.9, 1.0, 1.2, 0.6])         # vagal RSA strongest in N3
_SPO2_OFFSET = np.array([0.0, -0.3, -0.6, -0.6, -0.9])   # SpO2 vs awake baseline, %
_THORAX_STAGE = np.array([1.0, 1.0, 1.0, 1.0, 0.7])      # rib cage share falls in REM
_THETA_STAGE = np.array([0.03, 0.03, 0.03, 0.03, 0.07])  # normal thoraco-abdominal lag, cycles
_FLOWLIM_STAGE = np.array([0.0, 0.05, 0.10, 0.10, 0.15])  # baseline inspiratory flattening
_SNORE_STAGE = np.array([0.1, 0.6, 1.0, 1.1, 0.6])
# Per position (supine, left, right, prone, upright) ----------------------------------------
_POS_THORAX = np.array([1.00, 0.90, 1.10, 0.75, 1.10])
_POS_ABDOMEN = np.array([1.00, 1.10, 0.90, 0.70, 0.80])
_POS_SNORE = np.array([1.6, 0.7, 0.7, 0.8, 0.3])
_POS_ECG = np.array([1.00, 0.92, 1.06, 0.88, 1.00])
assert len(_POS_THORAX) == len(POSITIONS)

_FS = 32.0           # respiratory rate of this module (all effort/flow channels)
_EXP_ACTIVE = 0.8    # share of expiration with flow (then end-expiratory pause)
_FLAT = 0.45        # plateau of a flow-limited inspiration (fraction of the half-sine peak)
_APNEAS = ("obstructive_apnea", "central_apnea", "mixed_apnea")


# ----------------------------------------------------------------------------- helpers
def _ou(rng: np.random.Generator, n: int, fs: float, tau: float, sigma: float) -> np.ndarray:
    """Stationary Ornstein-Uhlenbeck noise (AR(1)), ``n`` samples at ``fs`` Hz."""
    if n <= 0:
        return np.zeros(0)
    a = math.exp(-1.0 / (fs * tau))
    e = rng.standard_normal(n) * sigma * math.sqrt(1.0 - a * a)
    zi = np.array([a * sigma * rng.standard_normal()])
    y, _ = sps.lfilter([1.0], [1.0, -a], e, zi=zi)
    return y


def _smooth_exp(x: np.ndarray, fs: float, tau: float) -> np.ndarray:
    """First-order low-pass (exponential smoothing) starting at ``x[0]``."""
    a = math.exp(-1.0 / (fs * tau))
    y, _ = sps.lfilter([1.0 - a], [1.0, -a], x, zi=np.array([a * x[0]]) if x.size else None)
    return y


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """Cut or pad (with the last value) to ``n`` values."""
    if x.size >= n:
        return x[:n]
    fill = x[-1] if x.size else 0
    return np.r_[x, np.full(n - x.size, fill, dtype=x.dtype)]


def _gamma_bump(x: np.ndarray, peak: float) -> np.ndarray:
    """``(x/peak) exp(1 - x/peak)`` for x >= 0 (1 at ``peak``), 0 before."""
    y = np.clip(x, 0, None) / peak
    return y * np.exp(1.0 - y)


def _events(plan: NightPlan, T: float) -> pd.DataFrame:
    """The plan's respiratory events, sorted, clipped to the night, with defaults."""
    ev = plan.respiratory.copy() if plan.respiratory is not None else pd.DataFrame()
    for col, default in (("onset", 0.0), ("duration", 0.0), ("type", "hypopnea"),
                         ("desat_depth", 0.0), ("arousal", False), ("periodic", False)):
        if col not in ev.columns:
            ev[col] = default
    if ev.empty:
        return ev.reset_index(drop=True)
    ev["onset"] = ev["onset"].astype(float).clip(0, T)
    ev["end"] = (ev["onset"] + ev["duration"].astype(float)).clip(0, T)
    ev = ev[ev["end"] - ev["onset"] > 1.0].copy()
    ev["desat_depth"] = ev["desat_depth"].fillna(0).astype(float)
    ev["arousal"] = ev["arousal"].fillna(False).astype(bool)
    ev["periodic"] = ev["periodic"].fillna(False).astype(bool)
    ev["type"] = ev["type"].astype(str)
    return ev.sort_values("onset", kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- breaths
def _breaths(plan, ev, mixed_cut, stage_sec, T, rng):
    """Breath starts (s), pause flags (no breath: central apnea) and sigh flags."""
    n_sec = stage_sec.size
    # slow (all night) and fast (stage-scaled) wander of the breathing rate, log units
    lograte = (_ou(rng, n_sec, 1.0, 300.0, 0.04)
               + _ou(rng, n_sec, 1.0, 15.0, 1.0) * _RATE_VAR[stage_sec])
    period = 60.0 / plan.breathing_rate / _RATE_FACTOR[stage_sec] * np.exp(-lograte)
    cv = _RATE_CV[stage_sec]
    psigh = _SIGH_P[stage_sec].copy()
    busy = np.zeros(n_sec, dtype=bool)  # no sigh near an event (keeps baselines honest)
    pauses = []
    bounds = []
    for k, r in enumerate(ev.itertuples()):
        busy[max(int(r.onset) - 20, 0): int(r.end) + 30] = True
        bounds += [r.onset, r.end]
        if r.type == "central_apnea":
            pauses.append((r.onset, r.end))
        elif r.type == "mixed_apnea":
            pauses.append((r.onset, mixed_cut[k]))
            bounds.append(mixed_cut[k])
    psigh[busy] = 0.0
    bounds = sorted(set(float(b) for b in bounds))
    pauses.sort()
    nb, npz = len(bounds), len(pauses)
    n_max = int(T / 1.2) + 2 * nb + 16
    z = rng.standard_normal(n_max).tolist()
    u = rng.random(n_max).tolist()
    period, cv, psigh = period.tolist(), cv.tolist(), psigh.tolist()

    starts: list[float] = []
    pause: list[bool] = []
    sigh: list[bool] = []
    t, i, bi, pi = 0.0, 0, 0, 0
    post_sigh = False
    eps = 1e-6
    while t < T - 0.5 and i < n_max:
        while pi < npz and pauses[pi][1] <= t + eps:
            pi += 1
        if pi < npz and pauses[pi][0] <= t + eps:
            starts.append(t)
            pause.append(True)
            sigh.append(False)
            t = pauses[pi][1]
            post_sigh = False
            continue
        while bi < nb and bounds[bi] <= t + eps:
            bi += 1
        s = min(int(t), n_sec - 1)
        c = cv[s]
        d = period[s] * math.exp(c * z[i] - 0.5 * c * c)
        is_sigh = u[i] < psigh[s]
        i += 1
        if is_sigh:
            d *= 1.5
        if post_sigh:
            d *= 1.3
        d = min(max(d, 1.5), 12.0)
        if bi < nb and bounds[bi] < t + d:
            gap = bounds[bi] - t
            if gap < 0.5 * d and starts and not pause[-1]:
                t = bounds[bi]  # the previous breath stretches to the event boundary
                continue
            d = gap
            is_sigh = False
        starts.append(t)
        pause.append(False)
        sigh.append(is_sigh)
        post_sigh = is_sigh
        t += d
    return np.array(starts), np.array(pause, dtype=bool), np.array(sigh, dtype=bool)


def _shapes(phi: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised volume (0..1), flow (peak inspiratory 1) and flow-limited flow at ``phi``."""
    insp = phi < r
    xi = np.where(insp, phi / r, 0.0)
    xe = np.where(insp, 0.0, np.minimum((phi - r) / (1.0 - r) / _EXP_ACTIVE, 1.0))
    si = np.sin(np.pi * xi)
    vol = np.where(insp, 0.5 * (1.0 - np.cos(np.pi * xi)), 0.5 * (1.0 + np.cos(np.pi * xe)))
    fexp = -(r / (_EXP_ACTIVE * (1.0 - r))) * np.sin(np.pi * xe)
    flow = np.where(insp, si, fexp)
    flat = np.where(insp, np.minimum(si, _FLAT) / _FLAT, fexp)
    return vol, flow, flat


# ----------------------------------------------------------------------------- main
def simulate_cardiorespiratory(
    plan: NightPlan, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Draw the cardiorespiratory channels of a planned night.

    Parameters
    ----------
    plan : NightPlan
        Stages, position, respiratory events, arousals and the subject's baseline values.
        Read only.
    rng : numpy.random.Generator
        The only source of randomness: the same seed gives the same signals.

    Returns
    -------
    signals : dict of str to numpy.ndarray
        float32 arrays, each of ``plan.duration * RATES[name]`` samples: ``AIRFLOW`` (thermistor,
        a.u., about +-60 in quiet breathing), ``NASAL_PRESSURE`` (cmH2O-like, about +-1.2),
        ``THORAX`` and ``ABDOMEN`` (RIP, a.u., about +-55), ``SNORE`` (a.u.), ``SPO2`` (%, 1 Hz,
        0.1 % steps), ``ECG`` (uV, 256 Hz) and ``HR`` (bpm, 1 Hz, integer pulse rate).
    desaturations : pandas.DataFrame
        One row per desaturation of >= 3 % drawn (all caused by planned events), columns
        :data:`DESAT_TRUTH_COLUMNS`: ``onset`` (s, start of the fall), ``duration`` (s, fall
        and recovery), ``depth`` (%), ``nadir`` (%), ``baseline`` (%), sorted by onset.
        Desaturations whose nadir would fall after the end of the night are not listed.
    """
    T = float(plan.duration)
    n_sec = int(round(T))
    n32 = int(round(T * _FS))
    # ---------------------------------------------------------------- stage & position
    codes = np.array([_CODE.get(str(s), 0) for s in plan.stages], dtype=np.int64)
    stage_sec = _fit(np.repeat(codes, int(round(plan.epoch_sec))), n_sec)
    stage32 = np.repeat(stage_sec, int(_FS))[:n32]
    pos = np.asarray(plan.position, dtype=float).reshape(-1)
    pos = np.where(np.isfinite(pos), pos, 0).astype(np.int64)
    pos_sec = np.clip(_fit(pos, n_sec), 0, len(POSITIONS) - 1)
    pos32 = np.repeat(pos_sec, int(_FS))[:n32]
    t32 = np.arange(n32) / _FS

    ev = _events(plan, T)
    n_ev = len(ev)
    mixed_cut = np.zeros(n_ev)
    if n_ev:
        frac = rng.uniform(0.3, 0.5, n_ev)
        mixed_cut = (ev["onset"] + frac * (ev["end"] - ev["onset"])).to_numpy()

    # ---------------------------------------------------------------- breaths
    starts, pause_b, sigh_b = _breaths(plan, ev, mixed_cut, stage_sec, T, rng)
    nbr = starts.size
    durs = np.diff(np.r_[starts, T])
    st_b = stage_sec[np.clip(starts.astype(int), 0, n_sec - 1)]
    cv_b = _AMP_CV[st_b]
    amp_b = _AMP_FACTOR[st_b] * np.exp(cv_b * rng.standard_normal(nbr) - 0.5 * cv_b**2)
    amp_b *= np.where(sigh_b, rng.uniform(2.0, 2.6, nbr), 1.0)
    ti_b = np.clip(rng.normal(0.42, 0.025, nbr), 0.34, 0.5)
    snore_b = np.exp(0.5 * rng.standard_normal(nbr) - 0.125)

    bidx = np.searchsorted(starts, t32, side="right") - 1
    bidx = np.clip(bidx, 0, nbr - 1)
    phi = np.clip((t32 - starts[bidx]) / durs[bidx], 0.0, 1.0 - 1e-9)
    r32 = ti_b[bidx]
    paused = pause_b[bidx]
    vol, flow, flat = _shapes(phi, r32)
    amp_slow = (_ou(rng, n_sec, 1.0, 120.0, 0.05)
                + _ou(rng, n_sec, 1.0, 10.0, 1.0) * np.where(stage_sec == 4, 0.1, 0.03))
    amp32 = uniform_filter1d(amp_b[bidx] * np.repeat(np.exp(amp_slow), int(_FS))[:n32], 32)

    # ---------------------------------------------------------------- event envelopes
    g_flow = np.ones(n32)
    g_eff = np.ones(n32)
    theta = _THETA_STAGE[stage32].copy()
    flowlim = _FLOWLIM_STAGE[stage32].copy()
    boost = np.zeros(n32)
    snore_x = np.zeros(n32)
    csb = np.ones(n32)
    cardio_mask = np.zeros(n32)
    hr_ev = np.zeros(n32)
    obstructive_like = 0

    def idx(t: float) -> int:
        return int(min(max(round(t * _FS), 0), n32))

    onsets = ev["onset"].to_numpy() if n_ev else np.zeros(0)
    ends = ev["end"].to_numpy() if n_ev else np.zeros(0)
    u_ev = rng.random((n_ev, 8))
    real = plan.statistics == "real"  # "v1": the heart of the shipped checkpoint's nights
    hr_u = (np.column_stack([rng.random(n_ev), rng.standard_normal(n_ev), rng.random(n_ev)])
            if real else None)
    for k, r in enumerate(ev.itertuples()):
        a, b = idx(r.onset), idx(r.end)
        n = b - a
        if n <= 0:
            continue
        x = np.arange(n) / _FS
        dur = r.end - r.onset
        nxt = onsets[k + 1] if k + 1 < n_ev else T
        uu = u_ev[k]
        kind = r.type
        if kind == "obstructive_apnea":
            obstructive_like += 1
            g_flow[a:b] *= 0.04 * uu[0]
            g_eff[a:b] *= np.linspace(0.9, 1.3 + 0.3 * uu[1], n)
            theta[a:b] = 0.5 - 0.22 * np.exp(-x / 4.0)
            flowlim[a:b] = 1.0
        elif kind == "central_apnea":
            g_flow[a:b] *= 0.03 * uu[0]
            g_eff[a:b] *= 0.03 * uu[1]
            cardio_mask[a:b] = 1.0
        elif kind == "mixed_apnea":
            obstructive_like += 1
            c = idx(mixed_cut[k])
            g_flow[a:b] *= 0.04 * uu[0]
            g_eff[a:c] *= 0.03 * uu[1]
            cardio_mask[a:c] = 1.0
            g_eff[c:b] *= np.linspace(0.6, 1.3 + 0.3 * uu[2], b - c)
            theta[c:b] = 0.5 - 0.2 * np.exp(-np.arange(b - c) / _FS / 3.0)
            flowlim[c:b] = 1.0
        else:  # hypopnea
            gain = 0.3 + 0.25 * uu[0]
            g_flow[a:b] *= gain
            if r.periodic:  # central hypopnea of Cheyne-Stokes breathing
                g_eff[a:b] *= gain
            else:
                obstructive_like += 1
                g_eff[a:b] *= 0.75 + 0.25 * uu[1]
                theta[a:b] = np.maximum(theta[a:b], 0.08 + 0.12 * uu[2])
                flowlim[a:b] = 1.0
        if kind != "central_apnea" and not (kind == "hypopnea" and r.periodic):
            # inspiratory flattening builds up over the breaths before an obstructive event
            p = idx(max(r.onset - 15.0, ends[k - 1] if k else 0.0))
            if a > p:
                flowlim[p:a] = np.maximum(flowlim[p:a], np.linspace(0.0, 0.6, a - p))
        # recovery: larger breaths (none in Cheyne-Stokes, whose hyperpnea is the envelope)
        stop = idx(min(r.end + 25.0, nxt))
        if stop > b and not r.periodic:
            big = (0.6 + 0.4 * uu[3]) if kind in _APNEAS else (0.25 + 0.2 * uu[3])
            y = np.arange(stop - b) / _FS
            boost[b:stop] = np.maximum(boost[b:stop], big * np.exp(-y / 7.0))
            if kind != "central_apnea":
                loud = (2.0 + 2.0 * uu[4]) * np.exp(-y / 6.0)
                snore_x[b:stop] = np.maximum(snore_x[b:stop], loud)
        # heart: bradycardia through the event, easing before its end, and a surge peaking 5-14 s
        # after it (Guilleminault 1984); surge sizes vary from event to event as in the
        # apnea minutes of Apnea-ECG (log-normal factor; constants set by hand against all 52
        # Apnea-ECG nights, compared in benchmarks/realism_real.py)
        brady = (4.0 + 4.0 * uu[5]) if kind in _APNEAS else (1.0 + 2.0 * uu[5])
        depth = np.minimum(1.0, x / max(0.6 * dur, 1.0))
        surge = (6.0 + 4.0 * uu[6]) if kind in _APNEAS else (3.0 + 3.0 * uu[6])
        stop = idx(r.end + 45.0)
        y = np.arange(stop - b) / _FS
        if not real:  # v1: bradycardia to the end, one surge shape
            hr_ev[a:b] -= brady * depth
            hr_ev[b:stop] += surge * _gamma_bump(y, 5.0) - brady * np.exp(-y / 2.0)
            continue
        ease = (0.5 + 0.4 * hr_u[k, 0]) * dur  # when the heart starts to speed up again
        late = x > ease
        depth[late] *= 1.0 - _BRADY_EASE * (x[late] - ease) / max(dur - ease, 1e-6)
        hr_ev[a:b] -= brady * depth
        surge *= float(np.clip(np.exp(_SURGE_LOG_SD * hr_u[k, 1]), 0.4, 2.5))
        hr_ev[b:stop] += (surge * _gamma_bump(y, 5.0 + 9.0 * hr_u[k, 2])
                          - brady * (1.0 - _BRADY_EASE) * np.exp(-y / 2.0))

    # Cheyne-Stokes: crescendo-decrescendo ventilation between periodic events
    per = np.flatnonzero(ev["periodic"].to_numpy()) if n_ev else np.zeros(0, dtype=int)
    for j, k in enumerate(per):
        e_end = ends[k]
        nxt_any = onsets[k + 1] if k + 1 < n_ev else T
        hi = 1.5 + 0.4 * rng.random()
        lo = 0.3
        prev_periodic = j > 0 and onsets[k] - ends[per[j - 1]] <= 90.0
        if not prev_periodic:  # decrescendo into the first event of a run
            a0 = idx(max(onsets[k] - 20.0, ends[k - 1] if k else 0.0))
            a1 = idx(onsets[k])
            if a1 > a0:
                csb[a0:a1] = np.linspace(1.0, lo, a1 - a0)
        if j + 1 < len(per) and onsets[per[j + 1]] - e_end <= 90.0 and per[j + 1] == k + 1:
            a0, a1 = idx(e_end), idx(onsets[per[j + 1]])
            xx = np.linspace(0.0, 1.0, max(a1 - a0, 1), endpoint=False)
            csb[a0:a1] = lo + (hi - lo) * np.sin(np.pi * xx) ** 1.5
        else:  # last of a run: one hyperpnea back to normal breathing
            a0, a1 = idx(e_end), idx(min(e_end + 30.0, nxt_any))
            xx = np.linspace(0.0, 1.0, max(a1 - a0, 1), endpoint=False)
            rise = np.minimum(xx * 2.0, 1.0)
            csb[a0:a1] = np.where(xx < 0.5, lo + (hi - lo) * np.sin(np.pi * xx) ** 1.5,
                                  1.0 + (hi - 1.0) * np.sin(np.pi * xx)) * rise + (1 - rise) * lo

    # arousals: a few bigger breaths and a heart-rate surge (Bonnet & Arand 1997)
    ar = plan.arousals if plan.arousals is not None else pd.DataFrame()
    ar_on = ar["onset"].to_numpy(dtype=float) if len(ar) else np.zeros(0)
    ar_du = ar["duration"].to_numpy(dtype=float) if len(ar) else np.zeros(0)
    extra_ar = [(float(e), 6.0) for e, aro in zip(ends, ev["arousal"] if n_ev else [])
                if aro and not np.any(np.abs(ar_on - e) <= 5.0)]
    all_ar = list(zip(ar_on.tolist(), ar_du.tolist())) + extra_ar
    u_ar = rng.random((len(all_ar), 2))
    ar_gain = (np.clip(np.exp(_SURGE_LOG_SD * rng.standard_normal(len(all_ar))), 0.4, 2.5)
               if real else np.ones(len(all_ar)))
    for (on, du), uu, gain in zip(all_ar, u_ar, ar_gain):
        a = idx(on)
        stop = idx(on + du + 40.0)
        if stop <= a:
            continue
        y = np.arange(stop - a) / _FS
        hr_ev[a:stop] += gain * (8.0 + 4.0 * uu[0]) * _gamma_bump(y, min(5.0 + 0.3 * du, 10.0))
        s1 = idx(on + min(du, 10.0))
        if not np.any((onsets <= on) & (ends >= on - 5.0)):  # not an event's recovery
            boost[a:s1] = np.maximum(boost[a:s1], 0.3 * uu[1])

    # ---------------------------------------------------------------- respiratory signals
    f = 16  # 0.5-s smoothing of the envelopes: no step inside a breath
    g_flow = uniform_filter1d(g_flow * csb, f)
    g_eff = uniform_filter1d(g_eff * csb, f)
    theta = uniform_filter1d(theta, f)
    flowlim = np.clip(uniform_filter1d(flowlim, 64), 0.0, 1.0)
    boost = 1.0 + uniform_filter1d(boost, f)
    flow_amp = amp32 * g_flow * boost
    eff_amp = amp32 * g_eff * boost

    phi_th = np.mod(phi - theta, 1.0)
    vol_th, _, _ = _shapes(phi_th, r32)
    vol = np.where(paused, 0.0, vol)
    vol_th = np.where(paused, 0.0, vol_th)
    flow = np.where(paused, 0.0, flow)
    flat = np.where(paused, 0.0, flat)

    sens = np.exp(rng.normal(0.0, 0.15, 5))  # sensor gains of this study
    # thermistor: a slow sensor (first-order lag)
    therm = 60.0 * sens[0] * flow_amp * flow
    airflow = _smooth_exp(therm, _FS, 0.25) + 0.4 * rng.standard_normal(n32)
    nflow = (1.0 - flowlim) * flow + flowlim * flat
    nasal = 1.2 * sens[1] * flow_amp * nflow + 0.01 * rng.standard_normal(n32)

    # ---------------------------------------------------------------- heart rate
    t1 = np.arange(n_sec, dtype=float)
    hr_var = (_ou(rng, n_sec, 1.0, 20.0, 1.0) * _HR_VAR[stage_sec] * (1.4 if real else 1.0)
              + _ou(rng, n_sec, 1.0, 900.0, 0.7))
    if real:  # faster wander, as real heart rate has
        hr_var += _ou(rng, n_sec, 1.0, _HR_FAST_TAU, _HR_FAST_SD)
    hr_base = plan.heart_rate + _smooth_exp(_HR_OFFSET[stage32].astype(float), _FS, 20.0)
    rsa_amp = float(np.clip(5.5 - 0.07 * (plan.age - 20.0), 1.5, 6.0))
    rsa = (rsa_amp * _RSA_STAGE[stage32] * np.clip(g_eff * boost, 0.0, 1.5)
           * _smooth_exp(flow, _FS, 0.8))
    hr32 = hr_base + np.interp(t32, t1 + 0.5, hr_var) + rsa + hr_ev
    hr32 = np.clip(hr32, 30.0, 180.0)

    beat_phase = np.cumsum(hr32 / 60.0 / _FS) + rng.random()
    k_beats = np.arange(1, int(beat_phase[-1]) + 1) if n32 else np.zeros(0)
    beats = np.interp(k_beats, beat_phase, t32) + rng.normal(0.0, 0.003, k_beats.size)
    beats = np.sort(beats[(beats > 0.35) & (beats < T - 0.6)])

    # cardiogenic oscillations on nasal pressure and effort during central apneas
    if beats.size > 2:
        cph = np.interp(t32, beats, np.arange(beats.size, dtype=float))
        cosc = np.cos(2 * np.pi * cph) * uniform_filter1d(cardio_mask, 32)
        nasal += 0.02 * sens[1] * cosc
    else:
        cosc = np.zeros(n32)

    # ---------------------------------------------------------------- effort (RIP)
    th_gain = 110.0 * sens[2] * _POS_THORAX[pos32] * _THORAX_STAGE[stage32]
    ab_gain = 110.0 * sens[3] * _POS_ABDOMEN[pos32]
    th_gain = uniform_filter1d(th_gain, 64)
    ab_gain = uniform_filter1d(ab_gain, 64)
    seg_off = rng.normal(0.0, 15.0, (len(POSITIONS), 2))
    # volume about its breath mean (~0.44): a pause rests a little below the mid-level, as an
    # AC-coupled band at the end-expiratory position does, without a long drift back
    thorax = th_gain * eff_amp * (vol_th - 0.3) + seg_off[pos32, 0] + 0.4 * cosc
    abdomen = ab_gain * eff_amp * (vol - 0.3) + seg_off[pos32, 1] + 0.4 * cosc
    hp_b, hp_a = sps.butter(1, 0.015, "highpass", fs=_FS)
    zi = sps.lfilter_zi(hp_b, hp_a)
    thorax = sps.lfilter(hp_b, hp_a, thorax, zi=zi * thorax[0])[0] if n32 else thorax
    abdomen = sps.lfilter(hp_b, hp_a, abdomen, zi=zi * abdomen[0])[0] if n32 else abdomen
    thorax += 0.5 * rng.standard_normal(n32)
    abdomen += 0.5 * rng.standard_normal(n32)

    # ---------------------------------------------------------------- snore
    n_sleep_h = max(float(np.isin(stage_sec, (1, 2, 3, 4)).sum()) / 3600.0, 0.5)
    snorer = 0.15 + 0.85 * min(1.0, obstructive_like / n_sleep_h / 15.0)
    p_on = min(1.0, 0.2 + 0.8 * snorer)
    on_b = rng.random(nbr) < p_on
    loud = (snorer * _POS_SNORE[pos32] * _SNORE_STAGE[stage32] * (0.25 + 1.5 * flowlim)
            * np.where(on_b, snore_b, 0.0)[bidx] + snore_x)
    env = loud * np.clip(nflow, 0.0, None) * flow_amp
    snore = 25.0 * env * rng.standard_normal(n32) + 0.5 * rng.standard_normal(n32)
    snore = 400.0 * np.tanh(snore / 400.0)  # the amplifier saturates on the loudest snores

    # ---------------------------------------------------------------- SpO2
    spo2, desats = _spo2(plan, ev, stage_sec, n_sec, rng)

    # ---------------------------------------------------------------- ECG and pulse rate
    ecg = _ecg(plan, beats, t32, vol, eff_amp, pos32, stage_sec, all_ar, T, rng)
    n1 = int(round(T * RATES["HR"]))
    hr_sec = _fit(hr32[: (n32 // int(_FS)) * int(_FS)].reshape(-1, int(_FS)).mean(axis=1), n1)
    hr_sec = np.round(uniform_filter1d(hr_sec, 4, origin=1))  # trailing 4-s average, as oximeters

    out = {
        "AIRFLOW": airflow,
        "NASAL_PRESSURE": nasal,
        "THORAX": thorax,
        "ABDOMEN": abdomen,
        "SNORE": snore,
        "SPO2": spo2,
        "ECG": ecg,
        "HR": hr_sec,
    }
    for name in out:
        out[name] = _fit(np.asarray(out[name], dtype=np.float32), int(round(T * RATES[name])))
    return out, desats


# ----------------------------------------------------------------------------- SpO2
def _spo2(plan: NightPlan, ev: pd.DataFrame, stage_sec: np.ndarray, n_sec: int,
          rng: np.random.Generator) -> tuple[np.ndarray, pd.DataFrame]:
    """SpO2 at 1 Hz and the table of the desaturations of >= 3 % drawn."""
    n1 = int(round(plan.duration * RATES["SPO2"]))
    t = np.arange(n_sec, dtype=float)
    base = (plan.baseline_spo2 + _smooth_exp(_SPO2_OFFSET[stage_sec].astype(float), 1.0, 60.0)
            + _ou(rng, n_sec, 1.0, 900.0, 0.25))
    deficit = np.zeros(n_sec)

    # event desaturations: fall after the circulation delay, nadir 15-30 s after the end
    sel = ev[ev["desat_depth"] > 0] if len(ev) else ev
    m = len(sel)
    fs = np.zeros(m)
    nd = np.zeros(m)
    re = np.zeros(m)
    depth = sel["desat_depth"].to_numpy(dtype=float) if m else np.zeros(0)
    if m:
        on = sel["onset"].to_numpy(dtype=float)
        en = sel["end"].to_numpy(dtype=float)
        lag = np.clip(rng.uniform(15.0, 25.0, m) + np.clip((plan.age - 50.0) * 0.1, 0.0, 4.0)
                      + np.where(sel["periodic"].to_numpy(), 3.0, 0.0), 15.0, 30.0)
        nd = np.round(en + lag)
        fs = np.round(on + lag * rng.uniform(0.6, 0.85, m))
        fs = np.minimum(fs, nd - 5.0)
        re = nd + np.round(rng.uniform(10.0, 20.0, m))
        for i in range(1, m):  # no overlap: shorten the previous recovery, else delay the fall
            if fs[i] < re[i - 1]:
                re[i - 1] = max(nd[i - 1] + 6.0, fs[i])
                if fs[i] < re[i - 1]:
                    fs[i] = re[i - 1]
                    nd[i] = max(nd[i], fs[i] + 5.0)
                    re[i] = max(re[i], nd[i] + 6.0)
        for i in range(m):
            a, b, c = int(fs[i]), int(nd[i]), int(re[i])
            if a >= n_sec:
                continue
            x = (t[a : min(b, n_sec)] - fs[i]) / (nd[i] - fs[i])
            # gentle start, accelerating fall (steep part of the dissociation curve), sharp
            # nadir, fast then slowing resaturation: the saw-tooth of apnea desaturations
            deficit[a : min(b, n_sec)] = depth[i] * (1.0 - np.cos(0.5 * np.pi * x))
            if b < n_sec:
                y = (t[b : min(c, n_sec)] - nd[i]) / (re[i] - nd[i])
                deficit[b : min(c, n_sec)] = depth[i] * (1.0 - np.sin(0.5 * np.pi * y))

    # small spontaneous dips in sleep (< 2 %), away from the event desaturations
    sleep_sec = np.flatnonzero(stage_sec > 0)
    n_dips = rng.poisson(3.0 * sleep_sec.size / 3600.0) if sleep_sec.size else 0
    for _ in range(n_dips):
        c0 = float(sleep_sec[rng.integers(sleep_sec.size)])
        fall, rise, d = rng.uniform(8, 15), rng.uniform(8, 12), rng.uniform(0.5, 1.6)
        if c0 + fall + rise >= n_sec or np.any((c0 < re + 60.0) & (c0 + fall + rise > fs - 60.0)):
            continue
        a, b, c = int(c0), int(c0 + fall), int(c0 + fall + rise)
        dip_fall = d * 0.5 * (1 - np.cos(np.pi * (t[a:b] - c0) / fall))
        dip_rise = d * 0.5 * (1 + np.cos(np.pi * (t[b:c] - c0 - fall) / rise))
        deficit[a:b] = np.maximum(deficit[a:b], dip_fall)
        deficit[b:c] = np.maximum(deficit[b:c], dip_rise)

    noise = uniform_filter1d(rng.normal(0.0, 0.1, n_sec), 3)
    spo2 = np.clip(base - deficit + noise, 50.0, 100.0)
    spo2 = _fit(np.round(spo2, 1), n1)

    rows = []
    for i in range(m):
        if depth[i] < _MIN_SCORED_DESAT or nd[i] + 2.0 >= n_sec:
            continue
        b0 = float(base[int(nd[i])])
        rows.append((fs[i], min(re[i], n_sec) - fs[i], depth[i], round(b0 - depth[i], 1),
                     round(b0, 1)))
    desats = pd.DataFrame(rows, columns=list(DESAT_TRUTH_COLUMNS)).astype(float)
    return spo2, desats.sort_values("onset", ignore_index=True)


# ----------------------------------------------------------------------------- ECG
def _ecg(plan, beats, t32, vol, eff_amp, pos32, stage_sec, arousals, T, rng) -> np.ndarray:
    """ECG at 256 Hz (uV): Gaussian PQRST per beat, wander, noise, mains, EMG."""
    fs = RATES["ECG"]
    n = int(round(T * fs))
    out = np.zeros(n, dtype=np.float32)
    nb = beats.size
    if nb:
        rr = np.diff(np.r_[beats[0] - 1.0, beats])
        qt = np.sqrt(np.clip(rr, 0.4, 1.6)).astype(np.float32)  # Bazett-like QT scaling
        # respiration modulates the R amplitude (ECG-derived respiration), position the axis
        resp = np.interp(beats, t32, vol * np.clip(eff_amp, 0, 2)) - 0.5
        gain = (1000.0 * math.exp(rng.normal(0.0, 0.15)) * (1.0 + 0.08 * resp)
                * _POS_ECG[pos32[np.clip((beats * _FS).astype(int), 0, pos32.size - 1)]]
                * np.exp(rng.normal(0.0, 0.02, nb))).astype(np.float32)
        t_amp = (0.30 * np.exp(rng.normal(0.0, 0.05, nb))).astype(np.float32)
        pre, post = int(0.30 * fs), int(0.55 * fs)
        cols = np.arange(pre + post, dtype=np.int64)
        chunk = 2048  # beats per block: bounded temporaries
        for c0 in range(0, nb, chunk):
            bt = beats[c0 : c0 + chunk]
            i0 = np.floor(bt * fs).astype(np.int64) - pre
            ii = i0[:, None] + cols[None, :]
            tt = (ii / fs - bt[:, None]).astype(np.float32)
            s = qt[c0 : c0 + chunk, None]

            def gauss(mu, sd, amp):
                return amp * np.exp(-0.5 * ((tt - mu) / sd) ** 2)

            wave = (gauss(-0.16, 0.025, 0.12) + gauss(-0.028, 0.008, -0.10)
                    + gauss(0.0, 0.009, 1.0) + gauss(0.028, 0.009, -0.25)
                    + gauss(0.26 * s, 0.045 * s, t_amp[c0 : c0 + chunk, None]))
            wave *= gain[c0 : c0 + chunk, None]
            lo, hi = max(int(ii[0, 0]), 0), min(int(ii[-1, -1]) + 1, n)
            if hi <= lo:
                continue
            ii, wave = ii.ravel(), wave.ravel()
            ok = (ii >= lo) & (ii < hi)
            out[lo:hi] += np.bincount(ii[ok] - lo, weights=wave[ok], minlength=hi - lo)
    # baseline wander: breathing (chest impedance and heart axis) plus a slow random drift
    slow = (40.0 * vol * np.clip(eff_amp, 0, 2)
            + np.interp(t32, np.arange(stage_sec.size) + 0.5,
                        _ou(rng, stage_sec.size, 1.0, 20.0, 60.0)))
    out += _upsample(slow, int(round(fs / _FS)), n)
    emg_sd = np.where(stage_sec == 0, 15.0, 3.0).astype(np.float32)
    for on, du in arousals:  # muscle noise in wake and arousals
        emg_sd[max(int(on), 0): int(on + du) + 1] = 15.0
    out += rng.standard_normal(n, dtype=np.float32) * (6.0 + _fit(np.repeat(emg_sd, int(fs)), n))
    out += _mains(plan.mains_hz, fs, n, rng.uniform(0, 2 * np.pi), 3.0)
    return out


def _upsample(x: np.ndarray, k: int, n: int) -> np.ndarray:
    """Linear interpolation of ``x`` to ``k`` times its rate, ``n`` samples (float32)."""
    x = np.asarray(x, dtype=np.float32)
    if x.size < 2:
        return np.full(n, x[0] if x.size else 0.0, dtype=np.float32)
    frac = (np.arange(k, dtype=np.float32) / k)[None, :]
    y = (x[:-1, None] + (x[1:] - x[:-1])[:, None] * frac).ravel()
    return _fit(np.r_[y, np.full(k, x[-1], dtype=np.float32)], n)


def _mains(hz: float, fs: float, n: int, phase: float, amp: float) -> np.ndarray:
    """Mains hum; tiled from one exact period when the rates allow it (they usually do)."""
    if float(hz).is_integer() and float(fs).is_integer() and hz > 0:
        period = int(fs) // math.gcd(int(fs), int(hz))
        one = amp * np.sin(2 * np.pi * hz * np.arange(period) / fs + phase)
        return np.resize(one.astype(np.float32), n)
    return (amp * np.sin(2 * np.pi * hz * np.arange(n) / fs + phase)).astype(np.float32)
