"""Less clean signals: what makes real nights harder to stage than clean simulated ones.

Simulated EEG/EOG/EMG are drawn from each epoch's stage alone, so every epoch is a textbook
example of its stage and automatic staging scores better on them than on real PSG (YASA: kappa
0.85 on our clean nights, 0.82 published on real ones). Real epochs are often ambiguous: the
five Dreem scorers disagree with their own consensus on one epoch in eight (12.5 %), far more
next to a stage change (:func:`sleeplm.simulate.real_stats.scorer_disagreement`). With
``noise="real"`` (:func:`sleeplm.simulate.simulate_night`) a night gets:

* **ambiguous epochs**: each epoch, with the probability that a real scorer would stage it
  differently (by stage and by whether it borders a stage change, times
  :data:`AMBIGUITY_SCALE`), is drawn as a blend of its own stage and the stage that scorer
  would pick (drawn from the real alternatives). The label stays the consensus stage; the
  signal carries features of both (the blend weight of the other stage is 0.3-0.7);
* **inter-subject variability**: per-night gains of the EEG (log-SD 0.2), EOG (0.25) and chin
  EMG (0.4) (electrode impedance, skull thickness, muscle tone differ between people);
* **slow drift** on the EEG and EOG (sweat and electrode-skin potentials: < 0.5 Hz, SD 5-25 µV
  per night).

Micro-events (spindles, K-complexes, slow waves, eye movements) drawn in the other stage's
share of an ambiguous epoch are not listed in the truth table. The clean level stays the
default because the shipped SleepLM checkpoint was trained on clean nights; the realistic
level is the one ``benchmarks/realism_real.py`` measures and the one recommended for the next
training corpus.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.ndimage import uniform_filter1d

from sleeplm.simulate.plan import RATES, NightPlan
from sleeplm.simulate.real_stats import scorer_disagreement

__all__ = ["NOISE_LEVELS", "AMBIGUITY_SCALE", "ambiguous_stages", "add_realism"]

#: Signal levels of :func:`sleeplm.simulate.simulate_night`.
NOISE_LEVELS: tuple[str, ...] = ("clean", "real")
#: Multiplies the real scorers' disagreement probability (1 = as often as a Dreem scorer).
AMBIGUITY_SCALE: float = 1.0
_STAGES = ("W", "N1", "N2", "N3", "R")
_BRAIN = ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O", "EOG_L", "EOG_R", "EMG_CHIN")


def ambiguous_stages(stages: np.ndarray, rng: np.random.Generator,
                     scale: float = AMBIGUITY_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """Draw the ambiguous epochs of a night and the stage each one leans to.

    Parameters
    ----------
    stages : numpy.ndarray
        W, N1, N2, N3, R per 30-s epoch (the consensus label).
    rng : numpy.random.Generator
    scale : float
        Multiplies the real disagreement probability.

    Returns
    -------
    other : numpy.ndarray
        The stage another scorer would pick (same as ``stages`` where the epoch is clear).
    weight : numpy.ndarray
        Share (0-1) of the other stage in each epoch's signal; 0 where clear.
    """
    stages = np.asarray(stages).astype(str)
    table = scorer_disagreement()
    border = np.zeros(stages.size, dtype=bool)
    border[1:] |= stages[1:] != stages[:-1]
    border[:-1] |= stages[:-1] != stages[1:]
    u = rng.random((stages.size, 3))
    other = stages.copy()
    weight = np.zeros(stages.size)
    for i, (s, b) in enumerate(zip(stages, border)):
        if s not in _STAGES:
            continue
        p, alt = table[(str(s), bool(b))]
        if u[i, 0] < min(1.0, p * scale):
            other[i] = _STAGES[int(np.searchsorted(np.cumsum(alt), u[i, 1] * alt.sum()))]
            weight[i] = 0.3 + 0.4 * u[i, 2]
    return other, weight


def _per_sample(weight: np.ndarray, epoch_sec: float, fs: float, n: int) -> np.ndarray:
    """Epoch weights as a per-sample curve with 2-s ramps between epochs."""
    w = np.repeat(weight, int(round(epoch_sec * fs)))
    w = np.r_[w, np.zeros(max(0, n - w.size))][:n]
    return np.clip(uniform_filter1d(w, max(1, int(2 * fs))), 0.0, 1.0)


def _slow_drift(rng: np.random.Generator, n: int, fs: float, sd: float) -> np.ndarray:
    """Band-limited (< 0.5 Hz) Gaussian drift with standard deviation ``sd``."""
    step = int(fs)  # one value per second, then smoothed and interpolated
    m = n // step + 2
    x = uniform_filter1d(rng.standard_normal(m), 3)
    x = (x - x.mean()) / (x.std() + 1e-9) * sd
    return np.interp(np.arange(n) / step, np.arange(m), x)


def add_realism(signals: dict[str, np.ndarray], plan: NightPlan, rng: np.random.Generator,
                render) -> dict:
    """Make a night's EEG, EOG and chin EMG less clean, in place.

    Parameters
    ----------
    signals : dict of str to numpy.ndarray
        The rendered channels (µV at :data:`~sleeplm.simulate.plan.RATES`); changed in place.
    plan : NightPlan
    rng : numpy.random.Generator
    render : callable
        ``render(plan, rng) -> (signals, truth)``: draws the brain channels of a plan (the
        simulator's :func:`~sleeplm.simulate.brain.simulate_brain`), used to draw the other
        stage of ambiguous epochs.

    Returns
    -------
    dict
        ``ambiguous_epochs`` (count), ``gains`` per channel group.
    """
    other, weight = ambiguous_stages(plan.stages, rng)
    if weight.any():
        alt_plan = dataclasses.replace(plan, stages=other)
        alt, _ = render(alt_plan, np.random.default_rng(rng.integers(2**63)))
        for name in _BRAIN:
            if name not in signals or name not in alt:
                continue
            x = signals[name]
            w = _per_sample(weight, plan.epoch_sec, RATES[name], x.size)
            # power-preserving blend of two independent draws
            signals[name] = (np.sqrt(1 - w) * x + np.sqrt(w) * alt[name][: x.size]).astype(
                np.float32)
    gains = {"eeg": float(np.exp(rng.normal(0, 0.2))), "eog": float(np.exp(rng.normal(0, 0.25))),
             "emg": float(np.exp(rng.normal(0, 0.4)))}
    for name in _BRAIN:
        if name not in signals:
            continue
        group = "eog" if name.startswith("EOG") else "emg" if name.startswith("EMG") else "eeg"
        x = signals[name].astype(float) * gains[group]
        if group != "emg":
            x += _slow_drift(rng, x.size, RATES[name], rng.uniform(5.0, 25.0))
        signals[name] = x.astype(np.float32)
    return {"ambiguous_epochs": int((weight > 0).sum()), "gains": gains}
