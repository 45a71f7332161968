"""Simulated leg EMG (left and right anterior tibialis) with the planned leg movements.

Resting tibialis EMG is low-amplitude broadband noise (~1-2 µV rms in 10-100 Hz); a leg
movement is a burst of muscle activity lasting 0.5-10 s (AASM Manual v2.6/v3, movement rules:
onset at an EMG rise of >= 8 µV above the resting EMG, offset when it stays < 2 µV above it for
>= 0.5 s; Zucconi M et al., Sleep Med 2006;7:175; Ferri R et al., Sleep Med 2016;26:86). Here
each burst has an rms amplitude of 20-80 µV with slow irregular modulation (motor-unit
recruitment is not constant) and 30-ms rise and fall, so that
:func:`sleeplm.clinical.limb_movements.detect_leg_movements` finds it at its planned onset and
with its planned duration (within ~0.1 s).
"""

from __future__ import annotations

import numpy as np

from sleeplm.simulate.brain import _band_noise, _mains
from sleeplm.simulate.plan import RATES, NightPlan

__all__ = ["LEG_CHANNELS", "LEG_REST_RMS", "simulate_leg_emg"]

#: Left and right leg EMG channels.
LEG_CHANNELS: tuple[str, ...] = ("EMG_LEG", "EMG_LEG_R")
#: Range of the resting EMG, µV rms (10-100 Hz).
LEG_REST_RMS: tuple[float, float] = (1.0, 2.0)
_BURST_RMS = (20.0, 80.0)  # µV rms of a movement burst
_RAMP_SEC = 0.03
_SMOOTHING_SEC = 0.06

_SIDES = {"left": (0,), "right": (1,), "bilateral": (0, 1), "single": (0,)}


def simulate_leg_emg(plan: NightPlan, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw both leg EMG channels of a planned night.

    Parameters
    ----------
    plan : NightPlan
        ``plan.leg_movements`` (``onset``, ``duration`` s, ``side`` left/right/bilateral) gives
        the bursts; ``plan.mains_hz`` the mains frequency.
    rng : numpy.random.Generator

    Returns
    -------
    dict of str to numpy.ndarray
        ``EMG_LEG`` (left) and ``EMG_LEG_R`` (right), float32 µV at ``RATES`` (256 Hz), each
        ``plan.duration * 256`` samples.
    """
    fs = float(RATES["EMG_LEG"])
    n = int(round(plan.duration * fs))
    lm = plan.leg_movements
    if lm is not None and len(lm):
        on = lm["onset"].to_numpy(dtype=float)
        # the detector's 0.1-s envelope smoothing lengthens a burst by ~0.06 s: compensate
        du = np.clip(lm["duration"].to_numpy(dtype=float) - _SMOOTHING_SEC, 0.1, None)
        side = lm["side"].astype(str).str.lower().to_numpy() if "side" in lm else np.full(on.size, "left")
    else:
        on = du = np.zeros(0)
        side = np.zeros(0, dtype=str)
    amp = rng.uniform(*_BURST_RMS, on.size)
    out = {}
    for ci, name in enumerate(LEG_CHANNELS):
        rest = rng.uniform(*LEG_REST_RMS)
        # slow drift of the resting level (+-15 %, minutes), as electrode impedance changes
        n_knots = max(int(plan.duration // 300) + 2, 2)
        drift = np.interp(np.arange(n), np.linspace(0, n, n_knots), rng.uniform(0.85, 1.15, n_knots))
        env = rest * drift
        sel = np.array([ci in _SIDES.get(s, (0, 1)) for s in side], dtype=bool)
        if sel.any():
            env = env + _burst_envelope(n, fs, on[sel], du[sel], amp[sel] * rng.uniform(0.85, 1.15, sel.sum()), rng)
        x = _band_noise(rng, n, fs, 10.0, 100.0) * env
        x += _mains(n, fs, float(plan.mains_hz or 50.0), rng.uniform(0.3, 1.0), rng.uniform(0, 2 * np.pi))
        out[name] = x.astype(np.float32)
    return out


def _burst_envelope(n: int, fs: float, onsets: np.ndarray, durations: np.ndarray, amps: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Sum of trapezoid envelopes (rms µV) with a +-25 % modulation every ~0.2 s."""
    m = int(np.ceil(durations.max() * fs)) + 1
    t = np.arange(m)[None, :] / fs
    ramp = np.clip(np.minimum(t / _RAMP_SEC, (durations[:, None] - t) / _RAMP_SEC), 0.0, 1.0)
    knots = rng.uniform(0.75, 1.25, (onsets.size, int(np.ceil(m / (0.2 * fs))) + 2))
    pos = np.arange(m) / (0.2 * fs)
    i0 = pos.astype(int)
    frac = pos - i0
    mod = knots[:, i0] * (1 - frac) + knots[:, i0 + 1] * frac
    waves = amps[:, None] * ramp * mod
    idx = np.round(onsets * fs).astype(np.int64)[:, None] + np.arange(m)[None, :]
    ok = (idx >= 0) & (idx < n) & (waves > 0)
    return np.bincount(idx[ok], weights=waves[ok], minlength=n)[:n]
