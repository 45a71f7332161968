"""Nuisance that real recordings carry: movement, electrode pops, drop-outs.

Added after the physiological signals are drawn, each recorded in the truth table as an
``artifact`` event with its kind and channel, so that later tools can be tested on finding them.
Mains interference is drawn with the EEG/EMG themselves (:mod:`sleeplm.simulate.brain`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sleeplm.simulate.plan import RATES, NightPlan

__all__ = ["add_artifacts", "DROPOUT_CANDIDATES"]

#: Channels that may drop out for a while (not the ones staging relies on: C4, EOG_L, chin).
DROPOUT_CANDIDATES = ("EEG_O", "EEG_F", "EOG_R", "NASAL_PRESSURE", "EMG_LEG_R", "SNORE")
_EXG = ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O", "EOG_L", "EOG_R")


def _window(n: int) -> np.ndarray:
    """Smooth on/off ramp for a segment of n samples (Tukey-like)."""
    ramp = max(1, n // 8)
    w = np.ones(n)
    edge = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
    w[:ramp], w[n - ramp :] = edge, edge[::-1]
    return w


def _quiet_times(busy: list[tuple[float, float]], duration: float, n_sec: float,
                 rng: np.random.Generator, margin: float) -> float | None:
    for _ in range(50):
        t = rng.uniform(60, n_sec - duration - 60)
        if all(t + duration + margin < a or t > b + margin for a, b in busy):
            return float(t)
    return None


def add_artifacts(signals: dict[str, np.ndarray], plan: NightPlan, desaturations: pd.DataFrame,
                  rng: np.random.Generator) -> list[dict]:
    """Add movement artifacts, electrode pops, a channel drop-out and SpO2 drop-outs in place.

    Parameters
    ----------
    signals : dict of str to numpy.ndarray
        Canonical channels at :data:`RATES`; modified in place.
    plan : NightPlan
    desaturations : pandas.DataFrame
        The desaturations drawn (onset, duration), kept clear of SpO2 drop-outs so that the
        oximetry truth stays measurable.
    rng : numpy.random.Generator

    Returns
    -------
    list of dict
        Truth rows (onset s, duration s, type "artifact", channel, attributes {"kind": ...}).
    """
    n_sec = plan.duration
    truth: list[dict] = []

    # Movement: at every position change, a few seconds of large slow deflections on EEG/EOG
    # and a broadband burst on chin EMG and the effort belts.
    changes = np.flatnonzero(np.diff(plan.position.astype(int)) != 0) + 1
    for t in changes.astype(float):
        dur = rng.uniform(2.0, 8.0)
        for name in _EXG + ("EMG_CHIN", "THORAX", "ABDOMEN"):
            if name not in signals:
                continue
            sf = RATES[name]
            i0, n = int(t * sf), int(dur * sf)
            if i0 + n >= signals[name].size:
                continue
            scale = {"EMG_CHIN": 60.0, "THORAX": 150.0, "ABDOMEN": 150.0}.get(name, 250.0)
            if name == "EMG_CHIN":
                burst = rng.normal(0, scale, n)
            else:
                walk = np.cumsum(rng.normal(0, 1, n))
                walk -= np.linspace(walk[0], walk[-1], n)
                burst = scale * walk / (np.abs(walk).max() + 1e-9)
            signals[name][i0 : i0 + n] += (burst * _window(n)).astype(np.float32)
        truth.append({"onset": t, "duration": dur, "type": "artifact", "channel": None,
                      "label": "Movement artifact", "attributes": {"kind": "movement"}})

    # Electrode pops: a step that decays over a fraction of a second, on one EEG/EOG channel.
    for _ in range(int(rng.integers(2, 7))):
        name = str(rng.choice(["EEG_C3", "EEG_O", "EEG_F", "EOG_R"]))
        sf = RATES[name]
        t = rng.uniform(0, n_sec - 5)
        i0 = int(t * sf)
        n = int(3 * sf)
        tau = rng.uniform(0.2, 0.8)
        pop = rng.choice([-1, 1]) * rng.uniform(100, 300) * np.exp(-np.arange(n) / (tau * sf))
        signals[name][i0 : i0 + n] += pop.astype(np.float32)
        truth.append({"onset": t, "duration": 3 * tau, "type": "artifact", "channel": name,
                      "label": "Electrode pop", "attributes": {"kind": "electrode_pop"}})

    # One channel drops out for 10-40 minutes (a lead off): flat, a hair of amplifier noise.
    name = str(rng.choice([c for c in DROPOUT_CANDIDATES if c in signals]))
    sf = RATES[name]
    dur = rng.uniform(600, 2400)
    t = rng.uniform(0.1 * n_sec, max(0.1 * n_sec, 0.9 * n_sec - dur))
    i0, n = int(t * sf), int(dur * sf)
    signals[name][i0 : i0 + n] = rng.normal(0, 0.05, min(n, signals[name].size - i0))
    truth.append({"onset": t, "duration": dur, "type": "artifact", "channel": name,
                  "label": f"{name} signal lost", "attributes": {"kind": "dropout"}})

    # SpO2 probe drop-outs to 0 %, away from desaturations (the oximeter truth stays clean).
    busy = [(float(r.onset), float(r.onset + r.duration)) for r in desaturations.itertuples()]
    busy += [(float(r.onset), float(r.onset + r.duration + 40))
             for r in plan.respiratory.itertuples()]
    for _ in range(int(rng.integers(1, 4))):
        dur = float(rng.uniform(10, 60))
        t = _quiet_times(busy, dur, n_sec, rng, margin=60.0)
        if t is None:
            continue
        signals["SPO2"][int(t) : int(t + dur)] = 0.0
        busy.append((t, t + dur))
        truth.append({"onset": t, "duration": dur, "type": "artifact", "channel": "SPO2",
                      "label": "SpO2 artifact", "attributes": {"kind": "spo2_dropout"}})
    return truth
