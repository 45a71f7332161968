"""Simulated EEG, EOG and chin EMG of a planned night, with the truth of the micro-events.

:func:`simulate_brain` renders a :class:`~sleeplm.simulate.plan.NightPlan` into the four EEG
derivations (``EEG_C3`` ~ C3-M2, ``EEG_C4`` ~ C4-M1, ``EEG_F`` ~ F4-M1, ``EEG_O`` ~ O2-M1),
the two EOG derivations (``EOG_L`` ~ E1-M2, ``EOG_R`` ~ E2-M2) and the chin EMG, in µV at the
native rates of :data:`~sleeplm.simulate.plan.RATES`, and returns the table of the graphoelements
it placed (spindles, K-complexes, slow waves, rapid eye movements).

How it is drawn
---------------
* **EEG background**: a Gaussian process whose spectrum is an aperiodic 1/f^chi component plus
  alpha, theta and beta peaks, re-drawn every 2 s: each 4-s window gets a random-phase spectrum
  with the spectral weights of its stage (and of its own random state: eyes open/closed, alpha
  bursts...), is inverse-FFT'd, multiplied by a sine window and overlap-added at 50 %.
  sin^2 + cos^2 = 1, so the variance is constant inside a stage and stage changes blend over
  ~2-4 s. The four derivations share 60 % of the background variance (volume conduction). The
  background has no power above 40 Hz (clinical EEG low-pass, AASM: 35 Hz).
* **Graphoelements** are added as explicit waveforms with a topography (gain per derivation):
  spindles, K-complexes, slow waves, vertex sharp waves, sawtooth waves and the speed-up of
  arousals.
* **EOG** = eye-movement dipole (horizontal component out of phase, blinks in phase) + frontal
  EEG volume-conducted into both eye channels (in phase) + a little noise.
* **Chin EMG** = 10-100 Hz noise times an envelope (tonic level per stage, phasic twitches,
  arousal and movement bursts).
* Mains interference at ``plan.mains_hz`` (a few µV) on every channel.

Reference values (adults; the numbers used are in the tables below)
-------------------------------------------------------------------
* AASM Manual for the Scoring of Sleep and Associated Events v2.6 (2020) / v3 (2023), and
  Iber C et al. (2007) AASM manual v1: W = alpha (8-13 Hz) over the occiput with eyes closed,
  blinks (0.5-2 Hz) and rapid eye movements with eyes open, normal-high chin tone; N1 = alpha
  replaced by low-amplitude mixed-frequency (4-7 Hz) activity for > 50 % of the epoch, vertex
  sharp waves (< 0.5 s, central max), slow eye movements (rolling, sinusoidal, initial
  deflection > 500 ms); N2 = K-complexes (negative sharp wave then positive, >= 0.5 s, frontal
  max) and spindles (11-16 Hz, >= 0.5 s, central max); N3 = slow waves 0.5-2 Hz with
  peak-to-peak > 75 µV over the frontal derivation for > 20 % of the epoch; R = low-amplitude
  mixed frequency, sawtooth waves (2-6 Hz, central max), rapid eye movements (conjugate,
  irregular, sharply peaked, initial deflection < 500 ms), lowest chin EMG of the night with
  transient (0.1-0.25 s) phasic bursts; arousal = abrupt shift to alpha, theta and/or > 16 Hz
  for >= 3 s (with increased chin EMG in R).
* Rechtschaffen A, Kales A (1968): R&K stage 3 = 20-50 % and stage 4 > 50 % of the epoch
  with > 75 µV delta waves (both mapped to N3 here; the occupancy is drawn in 25-70 %, higher
  early in the night: slow-wave activity decays across the night, process S of Borbely AA,
  Hum Neurobiol 1982;1:195 and Achermann P et al., Brain Res Bull 1993;31:97).
* Purcell SM et al., Nat Commun 2017;8:15930 (spindles in ~11,600 NSRR nights): density ~2-6
  per minute of N2 at C3/C4, duration ~0.5-2 s (mean ~0.8-1 s), fast spindles ~13-14 Hz
  centro-parietal, slow spindles ~11-12 Hz frontal; fewer in N3.
* Massimini M et al., J Neurosci 2004;24:6862 and Riedner BA et al., Sleep 2007;30:1643
  (slow waves): negative half-wave 0.3-1 s (frequency ~0.5-1.5 Hz), peak-to-peak ~75-250 µV,
  frontal maximum, origin mostly fronto-central; amplitude and density fall with age (Carrier
  J et al., Eur J Neurosci 2011;33:758).
* Halasz P, Sleep Med Rev 2005 and Colrain IM, Sleep 2005;28:255 (K-complexes): ~1-3 per minute
  of N2, 100-250 µV frontal, often followed by a spindle.
* Carskadon MA, Dement WC, Normal human sleep, in Principles and Practice of Sleep Medicine
  (and the AASM manual) for the EOG: blinks in wake (eyes open ~10-20/min), slow rolling eye
  movements (~0.1-0.5 Hz) at sleep onset and in N1, bursts of rapid eye movements in REM
  (deflections 50-300 µV with E1-M2/E2-M2, opposite polarity on the two sides), delta of the
  frontal EEG visible in phase on both EOG channels in N3.
* Relative band powers (C4, adults) of the background, approximate ranges of e.g. Carrier J et
  al., Psychophysiology 2001;38:232 and the sleep-EEG literature: delta ~0.7-0.9 in N3, ~0.6-0.75
  in N2; alpha highest in relaxed wake and at the occiput; sigma highest in N2.
* Chin EMG (10-100 Hz, rms): wake ~10-20 µV, falling N1 > N2 > N3, REM atonia ~1-2 µV with
  phasic twitches; REM sleep without atonia (AASM v2.6, RSWA): tonic activity at NREM level and
  excessive phasic bursts (0.1-5 s, >= 4x background).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.fft as sfft

from sleeplm.recording import EVENT_COLUMNS, EventType
from sleeplm.simulate.plan import RATES, NightPlan

__all__ = [
    "EEG_CHANNELS",
    "EOG_CHANNELS",
    "BRAIN_CHANNELS",
    "STAGE_EEG",
    "CHIN_EMG_RMS",
    "simulate_brain",
]

EEG_CHANNELS: tuple[str, ...] = ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O")
EOG_CHANNELS: tuple[str, ...] = ("EOG_L", "EOG_R")
BRAIN_CHANNELS: tuple[str, ...] = EEG_CHANNELS + EOG_CHANNELS + ("EMG_CHIN",)

_STAGE_LIST = ("W", "N1", "N2", "N3", "R")
_CODE = {s: i for i, s in enumerate(_STAGE_LIST)}

#: Background EEG per stage at the central derivation (µV rms in 0.4-30 Hz of each component):
#: ``ap`` aperiodic 1/f^chi part, ``alpha`` (value at EEG_O, eyes closed), ``theta``, ``beta``,
#: ``sigma`` (background sigma besides the discrete spindles).
#: Graphoelements (spindles, K-complexes, slow waves...) come on top.
STAGE_EEG: dict[str, dict[str, float]] = {
    "W": dict(ap=11.0, chi=1.4, alpha=20.0, theta=3.5, beta=4.5, sigma=1.5),
    "N1": dict(ap=11.5, chi=1.7, alpha=6.0, theta=6.0, beta=3.0, sigma=2.0),
    "N2": dict(ap=14.0, chi=2.0, alpha=4.0, theta=5.0, beta=2.5, sigma=2.5),
    "N3": dict(ap=18.0, chi=2.3, alpha=3.0, theta=6.0, beta=2.5, sigma=3.0),
    "R": dict(ap=11.0, chi=1.7, alpha=6.0, theta=5.5, beta=3.5, sigma=2.0),
}
#: Gains of the background components on each derivation (C3, C4, F, O).
_TOPO = {
    "ap": np.array([1.0, 1.0, 1.08, 0.85]),
    "alpha": np.array([0.45, 0.45, 0.3, 1.0]),
    "theta": np.array([1.0, 1.0, 1.0, 0.7]),
    "beta": np.array([1.0, 1.0, 1.1, 0.9]),
    "sigma": np.array([1.0, 1.0, 0.8, 0.6]),
}
#: Chin EMG tonic level per stage, µV rms in 10-100 Hz (R: atonia).
CHIN_EMG_RMS: dict[str, float] = {"W": 12.0, "N1": 7.0, "N2": 5.0, "N3": 4.2, "R": 1.5}
_RSWA_TONIC = 6.0  # µV rms: REM keeps NREM-level tone

_WIN_SEC = 4.0  # background synthesis window (2-s hop)
_SHARED = 0.6  # share of the background variance common to the EEG derivations
_EEG_LOWPASS_HZ = 40.0  # EEG/EOG background drawn up to here (AASM low-pass 35 Hz)


# --------------------------------------------------------------------------- helpers
def _sine_window(length: int) -> np.ndarray:
    return np.sin(np.pi * (np.arange(length) + 0.5) / length)


def _ola(spectra: np.ndarray, length: int, n: int) -> np.ndarray:
    """Overlap-add (50 %, sine windows) of the inverse FFTs of ``spectra`` (K, <= length//2+1).

    Window ``k`` is centred on sample ``k * length/2``; the result has ``n`` samples (float32).
    Missing high-frequency bins are zero.
    """
    hop = length // 2
    frames = sfft.irfft(np.ascontiguousarray(spectra), n=length, axis=1)
    frames *= _sine_window(length).astype(frames.dtype)
    out = frames[:-1, hop:] + frames[1:, :hop]
    return out.reshape(-1)[:n]


def _complex_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Complex64 Gaussian noise, real and imaginary parts of unit variance."""
    return rng.standard_normal(tuple(shape) + (2,), dtype=np.float32).view(np.complex64)[..., 0]


def _spectral_scale(fs: float, length: int) -> float:
    """Factor turning a one-sided PSD (µV²/Hz) into irfft coefficient amplitudes."""
    return np.sqrt(fs * length / 4.0)


def _unit_band_psd(freqs: np.ndarray, shape: np.ndarray, lo: float = 0.4, hi: float = 30.0) -> np.ndarray:
    """Scale a spectral shape to unit variance (µV²) over lo-hi Hz."""
    df = freqs[1] - freqs[0]
    band = (freqs >= lo) & (freqs <= hi)
    return shape / max(float(shape[band].sum() * df), 1e-12)


def _hp(freqs: np.ndarray, fc: float, order: int = 2) -> np.ndarray:
    """Power response of an order-``order`` Butterworth high-pass (EEG amplifier, ~0.3 Hz)."""
    r = (freqs / fc) ** (2 * order)
    return r / (1.0 + r)


def _render(n: int, starts: np.ndarray, waves: np.ndarray) -> np.ndarray:
    """Sum of waveforms ``waves`` (n_events, m) starting at samples ``starts`` (n-sample array)."""
    if len(starts) == 0:
        return np.zeros(n)
    m = waves.shape[1]
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(m)[None, :]
    ok = (idx >= 0) & (idx < n) & (waves != 0)
    return np.bincount(idx[ok], weights=waves[ok], minlength=n)[:n]


def _poisson_times(rng: np.random.Generator, rate: np.ndarray, min_gap: float = 0.0) -> np.ndarray:
    """Times (s) of an inhomogeneous Poisson process of ``rate`` per second (one value per s)."""
    rate = np.asarray(rate, dtype=float)
    rmax = float(rate.max()) if rate.size else 0.0
    if rmax <= 0:
        return np.zeros(0)
    t = np.sort(rng.uniform(0.0, rate.size, rng.poisson(rmax * rate.size)))
    t = t[rng.uniform(0.0, rmax, t.size) < rate[np.minimum(t.astype(int), rate.size - 1)]]
    if min_gap > 0 and t.size > 1:
        t = t[np.r_[True, np.diff(t) >= min_gap]]
    return t


def _per_second(values_per_epoch: np.ndarray, epoch_sec: float) -> np.ndarray:
    return np.repeat(values_per_epoch, int(round(epoch_sec)))


def _hann_bump(t: np.ndarray, dur: np.ndarray) -> np.ndarray:
    """sin^2 bump of duration ``dur`` (broadcast, t and dur in s), zero outside [0, dur)."""
    x = t / dur
    return np.where((x >= 0) & (x < 1), np.sin(np.pi * np.clip(x, 0, 1)) ** 2, 0.0)


def _half_waves(t: np.ndarray, d_neg: np.ndarray, d_pos: np.ndarray, a_neg: np.ndarray,
                a_pos: np.ndarray, sharp: float = 1.0) -> np.ndarray:
    """A negative half-wave (duration d_neg, depth a_neg) then a positive one (d_pos, a_pos)."""
    neg = (t >= 0) & (t < d_neg)
    pos = (t >= d_neg) & (t < d_neg + d_pos)
    s_neg = np.sin(np.pi * np.clip(t / d_neg, 0, 1)) ** sharp
    s_pos = np.sin(np.pi * np.clip((t - d_neg) / d_pos, 0, 1))
    return np.where(neg, -a_neg * s_neg, 0.0) + np.where(pos, a_pos * s_pos, 0.0)


def _saccade(t: np.ndarray, rise: np.ndarray, tau: np.ndarray, amp: np.ndarray) -> np.ndarray:
    """EOG of a saccade through an AC-coupled amplifier: smooth step of ``rise`` s, then decay."""
    up = 0.5 - 0.5 * np.cos(np.pi * np.clip(t / rise, 0, 1))
    decay = np.exp(-np.clip(t - rise, 0, None) / tau)
    return np.where(t >= 0, amp * up * decay, 0.0)


def _truth_rows(onset, duration, etype: EventType, channel, attributes: list[dict]) -> pd.DataFrame:
    n = len(onset)
    chan = list(channel) if not isinstance(channel, str) else [channel] * n
    return pd.DataFrame({
        "onset": np.asarray(onset, dtype=float), "duration": np.asarray(duration, dtype=float),
        "type": [etype.value] * n, "label": [etype.value] * n, "channel": chan,
        "attributes": attributes,
    }, columns=list(EVENT_COLUMNS))


def _attrs(**cols) -> list[dict]:
    keys = list(cols)
    arrays = [np.round(np.asarray(v, dtype=float), 3) for v in cols.values()]
    return [dict(zip(keys, map(float, vals))) for vals in zip(*arrays)] if arrays else []


# --------------------------------------------------------------------------- main
def simulate_brain(plan: NightPlan, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Render the EEG, EOG and chin EMG of a planned night.

    Parameters
    ----------
    plan : NightPlan
        Stages per epoch, arousals (``onset``, ``duration``), ``age``, ``rswa``, ``mains_hz``.
    rng : numpy.random.Generator
        The only source of randomness (same seed, same night).

    Returns
    -------
    signals : dict of str to numpy.ndarray
        float32 µV arrays ``EEG_C3``, ``EEG_C4``, ``EEG_F``, ``EEG_O``, ``EOG_L``, ``EOG_R`` (at
        ``RATES[name]`` Hz) and ``EMG_CHIN``, each ``plan.duration * RATES[name]`` samples.
    truth : pandas.DataFrame
        The placed micro-events, columns ``onset``, ``duration`` (s), ``type`` (``spindle``,
        ``k_complex``, ``slow_wave``, ``rapid_eye_movement``), ``label``, ``channel`` (the
        derivation where the event is largest) and ``attributes`` (amplitude_uv: peak for
        spindles, peak-to-peak for K-complexes and slow waves, deflection for eye movements
        (µV); frequency_hz...). Sorted by onset. Rapid eye movements are listed for REM sleep
        only (wake saccades, blinks, slow eye movements, vertex and sawtooth waves are drawn
        but not listed).
    """
    stages = np.asarray([s if s in _CODE else "W" for s in np.asarray(plan.stages).astype(str)])
    codes = np.array([_CODE[s] for s in stages], dtype=int)
    epoch = float(plan.epoch_sec)
    n_ep = codes.size
    fs = float(RATES["EEG_C4"])
    fs_emg = float(RATES["EMG_CHIN"])
    n = int(round(plan.duration * fs))
    n_emg = int(round(plan.duration * fs_emg))
    age = float(plan.age) if plan.age is not None else 40.0
    arousals = plan.arousals if plan.arousals is not None else pd.DataFrame(columns=["onset", "duration"])
    ar_on = arousals["onset"].to_numpy(dtype=float) if len(arousals) else np.zeros(0)
    ar_du = np.clip(arousals["duration"].to_numpy(dtype=float), 1.0, 30.0) if len(arousals) else np.zeros(0)

    # ---- the subject (night-level random traits)
    age_f = float(np.clip(1.0 - 0.007 * (age - 30.0), 0.6, 1.1))  # delta/SW amplitude (Carrier 2011)
    subj = dict(
        eeg_gain=float(rng.lognormal(0.0, 0.1)),
        iaf=float(np.clip(rng.normal(10.0 - 0.01 * max(age - 30, 0), 0.6), 8.5, 11.5)),
        sp_freq=float(np.clip(rng.normal(13.5, 0.35), 12.8, 14.3)),
        sp_density=float(rng.uniform(3.0, 5.5)),  # per min of N2 (Purcell 2017)
        kc_density=float(rng.uniform(1.0, 2.5)),  # per min of N2 (Halasz 2005)
        emg_gain=float(rng.lognormal(0.0, 0.2)),
        spill=float(rng.uniform(0.5, 0.75)),  # frontal EEG seen on the EOG
    )
    g = subj["eeg_gain"]

    # ---- per-epoch context
    asleep = codes != 0
    near_sleep = np.zeros(n_ep, dtype=bool)  # wake epochs within 2 epochs of sleep: drowsy
    for k in (1, 2):
        near_sleep[:-k] |= asleep[k:]
        near_sleep[k:] |= asleep[:-k]
    near_sleep &= ~asleep

    # ======================================================================= EEG background
    L = int(round(_WIN_SEC * fs))
    hop = L // 2
    n_win = int(np.ceil(n / hop)) + 1
    t_win = np.arange(n_win) * hop / fs  # window centres, s
    ep_win = np.clip((t_win // epoch).astype(int), 0, n_ep - 1)
    st_win = codes[ep_win]
    freqs = np.fft.rfftfreq(L, 1.0 / fs)
    freqs = freqs[freqs <= _EEG_LOWPASS_HZ]  # amplifier low-pass: higher bins are zero
    hp = _hp(freqs, 0.3)
    f_safe = np.maximum(freqs, 0.05)
    # basis spectra (unit variance in 0.4-30 Hz): 5 aperiodic + alpha, slow alpha, theta, beta
    basis = []
    for s in _STAGE_LIST:
        chi = STAGE_EEG[s]["chi"]
        basis.append(_unit_band_psd(freqs, hp / (0.6 ** chi + f_safe ** chi)))
    iaf = subj["iaf"]
    basis.append(_unit_band_psd(freqs, np.exp(-0.5 * ((freqs - iaf) / 0.9) ** 2)))
    basis.append(_unit_band_psd(freqs, np.exp(-0.5 * ((freqs - (iaf - 1.5)) / 0.9) ** 2)))
    basis.append(_unit_band_psd(freqs, np.exp(-0.5 * ((freqs - 5.8) / 1.3) ** 2)))
    basis.append(_unit_band_psd(freqs, np.exp(-0.5 * ((freqs - 21.0) / 6.0) ** 2) * (freqs < 45)))
    basis.append(_unit_band_psd(freqs, np.exp(-0.5 * ((freqs - 13.5) / 2.0) ** 2)))
    basis = np.asarray(basis)  # (10, n_freq)
    basis[:, 0] = 0.0

    # per-window random state
    # wake: eyes closed (alpha) / open (no alpha, more beta) as a two-state process of ~5-40 s runs
    runs = np.cumsum(rng.exponential(7.0, n_win // 2 + 8)).astype(int)
    run_id = np.searchsorted(runs, np.arange(n_win), side="right")
    u_run = rng.uniform(size=run_id.max() + 1)[run_id]
    p_closed = np.where(near_sleep[ep_win], 0.85, 0.5)
    eyes_closed = (st_win == 0) & (u_run < p_closed)
    ap_w = rng.lognormal(0.0, 0.12, n_win)
    alpha_w = np.zeros(n_win)
    alpha_amp = rng.lognormal(0.0, 0.3, n_win)
    w_sel = st_win == 0
    alpha_w[w_sel] = np.where(eyes_closed[w_sel], 1.0, 0.12) * alpha_amp[w_sel]
    alpha_w[w_sel & near_sleep[ep_win]] *= 0.8
    n1 = st_win == 1  # alpha in < 50 % of N1, intermittent
    alpha_w[n1] = (rng.uniform(size=n1.sum()) < 0.35) * alpha_amp[n1]
    other = (st_win >= 2) & (st_win <= 3)
    alpha_w[other] = alpha_amp[other]
    rem = st_win == 4
    slow_alpha_w = np.where(rem, (rng.uniform(size=n_win) < 0.4) * alpha_amp, 0.0)
    beta_w = rng.lognormal(0.0, 0.2, n_win) * np.where(w_sel & ~eyes_closed, 1.6, 1.0)
    theta_w = rng.lognormal(0.0, 0.2, n_win)
    sigma_w = rng.lognormal(0.0, 0.25, n_win)

    par = {k: np.array([STAGE_EEG[s][k] for s in _STAGE_LIST]) for k in ("ap", "alpha", "theta", "beta", "sigma")}
    var_ap = (g * par["ap"][st_win]) ** 2 * ap_w ** 2
    var_ap = var_ap * np.where(st_win >= 2, age_f ** 2, 1.0)
    var_alpha = (g * par["alpha"][st_win]) ** 2 * alpha_w ** 2
    var_salpha = (g * par["alpha"][st_win]) ** 2 * slow_alpha_w ** 2
    var_theta = (g * par["theta"][st_win]) ** 2 * theta_w ** 2
    var_beta = (g * par["beta"][st_win]) ** 2 * beta_w ** 2
    var_sigma = (g * par["sigma"][st_win]) ** 2 * sigma_w ** 2

    scale = _spectral_scale(fs, L)
    z_common = _complex_noise(rng, (n_win, freqs.size))
    eeg: dict[str, np.ndarray] = {}
    onehot = np.zeros((n_win, 5))
    onehot[np.arange(n_win), st_win] = 1.0
    for ci, name in enumerate(EEG_CHANNELS):
        weights = np.column_stack([
            onehot * (var_ap * _TOPO["ap"][ci] ** 2)[:, None],
            var_alpha * _TOPO["alpha"][ci] ** 2,
            var_salpha * _TOPO["alpha"][ci] ** 2,
            var_theta * _TOPO["theta"][ci] ** 2,
            var_beta * _TOPO["beta"][ci] ** 2,
            var_sigma * _TOPO["sigma"][ci] ** 2,
        ])
        amp = np.sqrt(weights @ basis).astype(np.float32) * np.float32(scale)
        z = _complex_noise(rng, (n_win, freqs.size))  # this derivation's own part
        z *= np.float32(np.sqrt(1 - _SHARED))
        z += np.float32(np.sqrt(_SHARED)) * z_common
        z *= amp
        eeg[name] = _ola(z, L, n)  # float32
        del z

    # ======================================================================= graphoelements
    truth_parts: list[pd.DataFrame] = []
    ch_idx = {c: i for i, c in enumerate(EEG_CHANNELS)}

    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def place(starts_s, waves, topo):  # topo (n_events, 4): rendered once, at the end
        starts = np.round(np.asarray(starts_s) * fs).astype(np.int64)
        idx = starts[:, None] + np.arange(waves.shape[1])[None, :]
        ok = (idx >= 0) & (idx < n) & (waves != 0)
        rows = np.broadcast_to(np.arange(len(starts))[:, None], idx.shape)[ok]
        pieces.append((idx[ok], waves[ok], topo[rows]))

    ep_sec_stage = _per_second(codes, epoch)  # stage code per second

    # ---- slow waves: trains covering a per-epoch fraction of N3 (25-70 %) and a little of N2
    # slow-wave activity decays over the night (process S; Borbely 1982, Achermann 1993)
    first_sleep = int(np.argmax(asleep)) if asleep.any() else 0
    hours_asleep = np.clip(np.arange(n_ep) - first_sleep, 0, None) * epoch / 3600.0
    decay = np.exp(-hours_asleep / 3.5)
    occ = np.zeros(n_ep)
    n3 = codes == 3
    occ[n3] = 0.25 + 0.45 * rng.uniform(0.35, 1.0, n3.sum()) * (0.4 + 0.6 * decay[n3])
    n2 = codes == 2
    deep_next = np.zeros(n_ep, dtype=bool)  # N2 next to N3 gets more slow waves
    deep_next[:-1] |= n3[1:]
    deep_next[1:] |= n3[:-1]
    occ[n2] = np.where(deep_next[n2], rng.uniform(0.08, 0.16, n2.sum()), rng.uniform(0.0, 0.08, n2.sum()))
    sw_on, sw_f, sw_amp = [], [], []
    for e in np.flatnonzero(occ > 0):
        f = np.clip(rng.lognormal(np.log(0.95), 0.22, 48), 0.55, 1.8)
        d = 1.0 / f
        k = int(np.searchsorted(np.cumsum(d), occ[e] * epoch)) + 1
        d, f = d[:k], f[:k]
        free = max(epoch - d.sum(), 0.0)
        gaps = rng.dirichlet(np.full(k + 1, 0.4)) * free
        on = e * epoch + gaps[0] + np.r_[0.0, np.cumsum(d[:-1] + gaps[1:-1])]
        sw_on.append(on)
        sw_f.append(f)
        base = (140.0 if codes[e] == 3 else 115.0) * (0.85 + 0.25 * decay[e])
        sw_amp.append(np.clip(rng.lognormal(np.log(base * max(age_f, 0.75)), 0.22, k), 85.0, 300.0))
    if sw_on:
        sw_on, sw_f, sw_amp = map(np.concatenate, (sw_on, sw_f, sw_amp))
        sw_amp = sw_amp * g
        period = 1.0 / sw_f
        frac_neg = rng.uniform(0.5, 0.62, sw_on.size)
        a_neg = sw_amp * rng.uniform(0.55, 0.65, sw_on.size)
        m = int(np.ceil(period.max() * fs)) + 1
        t = np.arange(m)[None, :] / fs
        waves = _half_waves(t, (period * frac_neg)[:, None], (period * (1 - frac_neg))[:, None],
                            a_neg[:, None], (sw_amp - a_neg)[:, None])
        topo = np.column_stack([np.full(sw_on.size, 0.8), np.full(sw_on.size, 0.8),
                                np.ones(sw_on.size), np.full(sw_on.size, 0.45)])
        topo = topo * rng.uniform(0.9, 1.1, topo.shape)
        topo[:, 2] = 1.0
        place(sw_on, waves, topo)
        truth_parts.append(_truth_rows(sw_on, period, EventType.SLOW_WAVE, "EEG_F",
                                       _attrs(amplitude_uv=sw_amp, frequency_hz=sw_f)))

    # ---- K-complexes in N2, half of them followed by a spindle
    kc_rate = np.where(ep_sec_stage == 2, subj["kc_density"] / 60.0, 0.0)
    kc_on = _poisson_times(rng, kc_rate, min_gap=5.0)
    kc_spindle = np.zeros(0)
    if kc_on.size:
        nk = kc_on.size
        d_neg = rng.uniform(0.25, 0.45, nk)
        d_pos = rng.uniform(0.45, 0.8, nk)
        ptp = np.clip(rng.lognormal(np.log(150.0 * max(age_f, 0.75)), 0.25, nk), 90.0, 320.0) * g
        a_neg = ptp * rng.uniform(0.5, 0.6, nk)
        m = int(np.ceil(1.4 * fs))
        t = np.arange(m)[None, :] / fs
        waves = _half_waves(t, d_neg[:, None], d_pos[:, None], a_neg[:, None], (ptp - a_neg)[:, None], sharp=1.6)
        topo = np.column_stack([np.full(nk, 0.85), np.full(nk, 0.85), np.ones(nk), np.full(nk, 0.35)])
        place(kc_on, waves, topo)
        truth_parts.append(_truth_rows(kc_on, d_neg + d_pos, EventType.K_COMPLEX, "EEG_F",
                                       _attrs(amplitude_uv=ptp)))
        follow = rng.uniform(size=nk) < 0.5
        kc_spindle = kc_on[follow] + d_neg[follow] + rng.uniform(0.0, 0.4, follow.sum())

    # ---- spindles: N2 (subject density), N3 (40 % of it); 15 % slow frontal ones
    sp_rate = np.select([ep_sec_stage == 2, ep_sec_stage == 3], [subj["sp_density"] / 60.0,
                                                                  0.4 * subj["sp_density"] / 60.0], 0.0)
    sp_on = np.sort(np.r_[_poisson_times(rng, sp_rate), kc_spindle])
    if sp_on.size > 1:
        sp_on = sp_on[np.r_[True, np.diff(sp_on) >= 2.5]]
    sp_on = sp_on[np.isin(codes[np.minimum((sp_on // epoch).astype(int), n_ep - 1)], (2, 3))]
    if sp_on.size:
        ns = sp_on.size
        slow = rng.uniform(size=ns) < 0.15
        freq = np.where(slow, rng.uniform(11.0, 12.5, ns),
                        np.clip(rng.normal(subj["sp_freq"], 0.4, ns), 12.5, 15.0))
        dur = np.clip(rng.lognormal(np.log(1.0), 0.3, ns), 0.5, 2.0)
        amp = np.clip(rng.lognormal(np.log(31.0), 0.25, ns), 15.0, 60.0) * g  # peak, µV
        phase = rng.uniform(0, 2 * np.pi, ns)
        m = int(np.ceil(2.0 * fs)) + 1
        t = np.arange(m)[None, :] / fs
        skew_t = np.clip(t / dur[:, None], 0, 1) ** 0.8  # peak at ~40 % of the spindle
        env = np.where(t < dur[:, None], np.sin(np.pi * skew_t) ** 2, 0.0)
        waves = amp[:, None] * env * np.sin(2 * np.pi * freq[:, None] * t + phase[:, None])
        topo = np.where(slow[:, None], np.array([0.7, 0.7, 1.0, 0.4]), np.array([1.0, 1.0, 0.7, 0.5]))
        topo = topo * rng.uniform(0.85, 1.0, (ns, 4))
        place(sp_on, waves, topo)
        best = np.argmax(topo, axis=1)
        chan = np.array(EEG_CHANNELS)[best]
        truth_parts.append(_truth_rows(sp_on, dur, EventType.SPINDLE, chan,
                                       _attrs(amplitude_uv=amp * topo[np.arange(ns), best], frequency_hz=freq)))

    # ---- vertex sharp waves (N1, a few in N2)
    vx_rate = np.select([ep_sec_stage == 1, ep_sec_stage == 2], [2.0 / 60.0, 0.3 / 60.0], 0.0)
    vx_on = _poisson_times(rng, vx_rate, min_gap=3.0)
    if vx_on.size:
        nv = vx_on.size
        t = np.arange(int(0.7 * fs))[None, :] / fs
        waves = _half_waves(t, rng.uniform(0.15, 0.3, nv)[:, None], rng.uniform(0.2, 0.35, nv)[:, None],
                            (rng.uniform(40, 90, nv) * g)[:, None], (rng.uniform(10, 25, nv) * g)[:, None], sharp=1.8)
        place(vx_on, waves, np.tile([1.0, 1.0, 0.7, 0.3], (nv, 1)))

    # ---- sawtooth waves in REM: trains of 2-5 Hz
    saw_on = _poisson_times(rng, np.where(ep_sec_stage == 4, 1.0 / 60.0, 0.0), min_gap=4.0)
    if saw_on.size:
        nw = saw_on.size
        f = rng.uniform(2.0, 5.0, nw)
        dur = np.minimum(rng.integers(3, 9, nw) / f, 3.0)
        m = int(np.ceil(3.0 * fs))
        t = np.arange(m)[None, :] / fs
        ph = (t * f[:, None]) % 1.0
        saw = np.where(ph < 0.75, ph / 0.75, (1.0 - ph) / 0.25) * 2 - 1  # slow rise, fast fall
        waves = (rng.uniform(20, 45, nw) * g)[:, None] * saw * _hann_bump(t, dur[:, None]) ** 0.5
        place(saw_on, waves, np.tile([1.0, 1.0, 0.8, 0.5], (nw, 1)))

    # ---- arousals: abrupt alpha/theta/beta speed-up for their duration (>= 3 s)
    if ar_on.size:
        for on, du in zip(ar_on, ar_du):
            i0 = int(round(on * fs))
            m = int(round(du * fs))
            if i0 >= n or m <= 0:
                continue
            m = min(m, n - i0)
            spec_f = np.fft.rfftfreq(m, 1.0 / fs)
            shape = (np.exp(-0.5 * ((spec_f - iaf) / 1.0) ** 2) + 0.6 * np.exp(-0.5 * ((spec_f - 20) / 5) ** 2)
                     + 0.3 * np.exp(-0.5 * ((spec_f - 6) / 1.2) ** 2))
            x = np.fft.irfft(np.sqrt(shape) * _complex_noise(rng, (1, spec_f.size))[0], n=m)
            x /= max(x.std(), 1e-9)
            ramp = np.minimum(1.0, np.minimum(np.arange(m), m - 1 - np.arange(m)) / (0.3 * fs))
            x *= ramp * g * rng.uniform(15.0, 25.0)
            for c, gain in zip(EEG_CHANNELS, (0.8, 0.8, 0.7, 1.0)):
                eeg[c][i0:i0 + m] += gain * x

    if pieces:
        idx_all = np.concatenate([p[0] for p in pieces])
        w_all = np.concatenate([p[1] for p in pieces])
        topo_all = np.concatenate([p[2] for p in pieces])
        for c, i in ch_idx.items():
            eeg[c] += np.bincount(idx_all, weights=w_all * topo_all[:, i], minlength=n)[:n]

    # ======================================================================= EOG
    eog_h = np.zeros(n, dtype=np.float32)  # horizontal: + on EOG_L, - on EOG_R
    eog_v = np.zeros(n, dtype=np.float32)  # blinks: same sign on both
    sec_state = np.zeros(n_ep * int(epoch), dtype=int)  # 0 sleep, 1 eyes open, 2 eyes closed (wake)
    t_sec = np.arange(sec_state.size)
    win_of_sec = np.minimum(np.round(t_sec * fs / hop).astype(int), n_win - 1)
    sec_wake = ep_sec_stage == 0
    sec_state[sec_wake] = np.where(eyes_closed[win_of_sec[sec_wake]], 2, 1)
    # blinks: ~15/min eyes open, ~3/min eyes closed
    bl_rate = np.select([sec_state == 1, sec_state == 2], [15 / 60.0, 3 / 60.0], 0.0)
    bl_on = _poisson_times(rng, bl_rate, min_gap=0.8)
    if bl_on.size:
        nb = bl_on.size
        t = np.arange(int(0.6 * fs))[None, :] / fs
        waves = (rng.uniform(60, 220, nb))[:, None] * _hann_bump(t, rng.uniform(0.25, 0.45, nb)[:, None])
        eog_v += _render(n, np.round(bl_on * fs).astype(np.int64), waves)
    # wake saccades (~25/min eyes open), REMs in R (bursts), with AC-coupled decay
    sac_on = _poisson_times(rng, np.where(sec_state == 1, 25 / 60.0, 0.0), min_gap=0.5)
    # REM bursts: per-epoch phasic intensity (tonic epochs have none)
    rem_ep = codes == 4
    intensity = np.where(rem_ep, (rng.uniform(size=n_ep) < 0.75) * rng.gamma(2.0, 0.9, n_ep), 0.0)  # bursts/30 s
    burst_c = _poisson_times(rng, _per_second(intensity / epoch, epoch), min_gap=3.0)
    if burst_c.size:
        k = rng.geometric(0.35, burst_c.size)
        k = np.minimum(k, 8)
        rid = np.repeat(np.arange(burst_c.size), k)
        pos_in = np.arange(rid.size) - np.repeat(np.cumsum(k) - k, k)
        spacing = rng.uniform(0.45, 1.1, rid.size)
        spacing[pos_in == 0] = 0.0
        cum = np.cumsum(spacing)
        cum -= np.repeat(cum[np.cumsum(k) - k], k)
        rem_on = burst_c[rid] + cum
        rem_on = rem_on[codes[np.minimum((rem_on // epoch).astype(int), n_ep - 1)] == 4]
    else:
        rem_on = np.zeros(0)
    n_rem = rem_on.size
    all_on = np.r_[sac_on, rem_on]
    if all_on.size:
        na = all_on.size
        amp = np.clip(rng.lognormal(np.log(130.0), 0.35, na), 50.0, 300.0)
        amp[: sac_on.size] = rng.uniform(30.0, 180.0, sac_on.size)
        sign = rng.choice([-1.0, 1.0], na)
        rise = rng.uniform(0.08, 0.25, na)
        tau = rng.uniform(0.35, 0.7, na)
        t = np.arange(int(2.5 * fs))[None, :] / fs
        waves = _saccade(t, rise[:, None], tau[:, None], (amp * sign)[:, None])
        eog_h += _render(n, np.round(all_on * fs).astype(np.int64), waves)
        if n_rem:
            r = slice(sac_on.size, na)
            truth_parts.append(_truth_rows(
                rem_on, rise[r] + tau[r], EventType.RAPID_EYE_MOVEMENT, "EOG_L",
                _attrs(amplitude_uv=amp[r], direction=sign[r], rise_s=rise[r])))
    # slow eye movements: N1 (and drowsy wake, a few N2 epochs), rolling 0.1-0.5 Hz
    sem_p = np.select([codes == 1, near_sleep, codes == 2], [0.8, 0.35, 0.05], 0.0)
    sem_ep = np.flatnonzero(rng.uniform(size=n_ep) < sem_p)
    if sem_ep.size:
        ne = sem_ep.size
        f = rng.uniform(0.12, 0.45, ne)
        dur = rng.uniform(10.0, 25.0, ne)  # rolling for most of the epoch
        on = sem_ep * epoch + rng.uniform(0, np.maximum(epoch - dur, 0.1))
        t = np.arange(int(25.0 * fs))[None, :] / fs
        waves = (rng.uniform(40, 110, ne) * rng.choice([-1, 1], ne))[:, None] * np.sin(
            2 * np.pi * f[:, None] * t) * _hann_bump(t, dur[:, None]) ** 0.5
        eog_h += _render(n, np.round(on * fs).astype(np.int64), waves)

    frontal_brain = eeg["EEG_F"].copy()
    # eye-movement artefacts in the EEG (mostly frontal)
    for c, gv, gh in (("EEG_F", 0.2, 0.08), ("EEG_C3", 0.04, 0.03), ("EEG_C4", 0.04, 0.03)):
        eeg[c] += gv * eog_v + gh * eog_h
    nf_eog = int(np.searchsorted(freqs, 20.0, side="right"))  # own EOG noise: < 20 Hz
    eog_noise_psd = _unit_band_psd(freqs[:nf_eog], hp[:nf_eog] / (1.0 + f_safe[:nf_eog] ** 1.5))[None, :]
    spill_l = subj["spill"] * rng.uniform(0.9, 1.1)
    spill_r = subj["spill"] * rng.uniform(0.9, 1.1)
    eog = {}
    for name, sgn, spill in (("EOG_L", 1.0, spill_l), ("EOG_R", -1.0, spill_r)):
        own = _ola(np.sqrt(eog_noise_psd * 9.0).astype(np.float32) * np.float32(scale)
                   * _complex_noise(rng, (n_win, nf_eog)), L, n)
        eog[name] = spill * frontal_brain + sgn * eog_h + eog_v + own

    # ======================================================================= chin EMG
    emg_lvl = np.array([CHIN_EMG_RMS[s] for s in _STAGE_LIST])[codes] * rng.lognormal(0.0, 0.12, n_ep)
    # wake: eyes-open periods carry more tone; drowsy wake less
    if plan.rswa:
        emg_lvl[codes == 4] = _RSWA_TONIC * rng.lognormal(0.0, 0.15, (codes == 4).sum())
    # NREM tone decreases slowly through the night
    emg_lvl[codes > 0] *= np.linspace(1.1, 0.9, n_ep)[codes > 0]
    per_sec = _per_second(emg_lvl, epoch) * rng.lognormal(0.0, 0.1, n_ep * int(epoch))
    per_sec[sec_state == 1] *= 1.3
    per_sec[sec_state == 2] *= 0.8
    kern = np.ones(3) / 3
    per_sec = np.convolve(np.r_[per_sec[0], per_sec, per_sec[-1]], kern, mode="same")[1:-1]
    step = 32  # envelope drawn on a 1/8-s grid (256 Hz), then held
    t_c = (np.arange(-(-n_emg // step)) + 0.5) * step / fs_emg
    env = np.repeat((np.interp(t_c, np.arange(per_sec.size) + 0.5, per_sec) * subj["emg_gain"]).astype(np.float32),
                    step)[:n_emg]
    bursts_on, bursts_du, bursts_amp = [], [], []
    # phasic REM twitches (0.1-0.5 s); RSWA: many long phasic bursts
    rem_sec = ep_sec_stage == 4
    tw = _poisson_times(rng, np.where(rem_sec, (12.0 if plan.rswa else 3.0) / 60.0, 0.0), min_gap=0.5)
    if tw.size:
        bursts_on.append(tw)
        if plan.rswa:
            bursts_du.append(rng.uniform(0.3, 3.0, tw.size))
            bursts_amp.append(rng.uniform(15.0, 40.0, tw.size))
        else:
            bursts_du.append(rng.uniform(0.1, 0.5, tw.size))
            bursts_amp.append(rng.uniform(5.0, 15.0, tw.size))
    # body movements in wake
    mv = _poisson_times(rng, np.where(sec_wake, 1.0 / 60.0, 0.0), min_gap=5.0)
    if mv.size:
        bursts_on.append(mv)
        bursts_du.append(rng.uniform(1.0, 5.0, mv.size))
        bursts_amp.append(rng.uniform(20.0, 60.0, mv.size))
    # arousals: chin burst (always in R, 70 % otherwise)
    if ar_on.size:
        st_ar = codes[np.minimum((ar_on // epoch).astype(int), n_ep - 1)]
        keep = (st_ar == 4) | (rng.uniform(size=ar_on.size) < 0.7)
        bursts_on.append(ar_on[keep])
        bursts_du.append(ar_du[keep] * rng.uniform(0.5, 1.0, keep.sum()))
        bursts_amp.append(rng.uniform(10.0, 30.0, keep.sum()))
    b_on, b_du, b_amp = (np.concatenate(v) if v else np.zeros(0) for v in (bursts_on, bursts_du, bursts_amp))
    if b_on.size:
        m = int(np.ceil(b_du.max() * fs_emg)) + 1
        t = np.arange(m)[None, :] / fs_emg
        ramp = 0.03
        shape = np.clip(np.minimum(t / ramp, (b_du[:, None] - t) / ramp), 0.0, 1.0)
        env += _render(n_emg, np.round(b_on * fs_emg).astype(np.int64), b_amp[:, None] * subj["emg_gain"] * shape)
    emg = _band_noise(rng, n_emg, fs_emg, 10.0, 100.0) * env

    # ======================================================================= mains, output
    out: dict[str, np.ndarray] = {}
    mains = float(plan.mains_hz or 50.0)
    for name in EEG_CHANNELS + EOG_CHANNELS:
        src = eeg[name] if name in eeg else eog[name]
        src += _mains(n, fs, mains, rng.uniform(0.5, 2.5), rng.uniform(0, 2 * np.pi))
        out[name] = src.astype(np.float32, copy=False)
    emg += _mains(n_emg, fs_emg, mains, rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi))
    out["EMG_CHIN"] = emg.astype(np.float32, copy=False)

    if truth_parts:
        truth = pd.concat(truth_parts, ignore_index=True)
        truth = truth[truth["onset"] < plan.duration]
        truth = truth.sort_values("onset", kind="stable").reset_index(drop=True)
    else:
        truth = pd.DataFrame({c: pd.Series(dtype=float if c in ("onset", "duration") else object)
                              for c in EVENT_COLUMNS})
    return out, truth


def _mains(n: int, fs: float, hz: float, amp: float, phase: float) -> np.ndarray:
    """Mains interference: ``amp`` µV sine at ``hz``, tiled from one period of whole seconds."""
    period = 1 if float(hz).is_integer() and float(fs).is_integer() else 0
    if period:
        one = (amp * np.sin(2 * np.pi * hz * np.arange(int(fs)) / fs + phase)).astype(np.float32)
        return np.tile(one, n // int(fs) + 1)[:n]
    return (amp * np.sin(2 * np.pi * hz * np.arange(n) / fs + phase)).astype(np.float32)


def _band_noise(rng: np.random.Generator, n: int, fs: float, lo: float, hi: float) -> np.ndarray:
    """Unit-variance Gaussian noise with a flat spectrum between ``lo`` and ``hi`` Hz."""
    L = int(round(fs))  # 1-s windows
    L += L % 2
    freqs = np.fft.rfftfreq(L, 1.0 / fs)
    i_lo, i_hi = int(np.searchsorted(freqs, lo)), int(np.searchsorted(freqs, hi, side="right"))
    df = freqs[1] - freqs[0]
    amp = np.float32(np.sqrt(1.0 / ((i_hi - i_lo) * df)) * _spectral_scale(fs, L))
    n_win = int(np.ceil(n / (L // 2))) + 1
    spec = np.zeros((n_win, i_hi), dtype=np.complex64)
    spec[:, i_lo:] = _complex_noise(rng, (n_win, i_hi - i_lo))
    spec *= amp
    return _ola(spec, L, n)
