"""Simulate one night: plan it, draw every channel, add nuisance, keep the truth."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sleeplm.recording import POSITIONS, Recording, RecordingInfo, Signal, make_events
from sleeplm.simulate.artifacts import add_artifacts
from sleeplm.simulate.brain import simulate_brain
from sleeplm.simulate.cardiorespiratory import simulate_cardiorespiratory
from sleeplm.simulate.events import plan_night
from sleeplm.simulate.hypnograms import night_hypnogram
from sleeplm.simulate.muscle import simulate_leg_emg
from sleeplm.simulate.plan import RATES, NightPlan
from sleeplm.simulate.profiles import Profile, get_profile
from sleeplm.simulate.realism import NOISE_LEVELS, add_realism

__all__ = ["SimulatedNight", "simulate_night", "SCORED_TYPES"]

#: Event types a human scorer would score; the rest of the truth (spindles, slow waves, eye
#: movements, artifacts) stays in ``SimulatedNight.truth`` only.
SCORED_TYPES = ("obstructive_apnea", "central_apnea", "mixed_apnea", "hypopnea", "desaturation",
                "arousal", "limb_movement", "plm", "position_change")

_UNITS = {"SPO2": "%", "HR": "bpm", "AIRFLOW": "a.u.", "NASAL_PRESSURE": "cmH2O",
          "THORAX": "a.u.", "ABDOMEN": "a.u.", "SNORE": "a.u.", "POSITION": "position"}


@dataclass
class SimulatedNight:
    """A simulated night and everything known about it.

    Attributes
    ----------
    recording : Recording
        Signals, stages and the scored events (what a technician would have scored).
    truth : pandas.DataFrame
        Every event placed, scored or not (spindles, K-complexes, slow waves, eye movements,
        artifacts too), in the events-table format.
    plan : NightPlan
    profile : str
    seed : int
    hypnogram_source : str
        The Sleep-EDF or Dreem night id (or "markov", "given") whose stage sequence drove the
        night.
    """

    recording: Recording
    truth: pd.DataFrame
    plan: NightPlan
    profile: str
    seed: int
    hypnogram_source: str


def _plan_truth(plan: NightPlan, desats: pd.DataFrame) -> list[dict]:
    rows = []
    for r in plan.respiratory.itertuples():
        rows.append({"onset": r.onset, "duration": r.duration, "type": r.type,
                     "label": r.type.replace("_", " ").capitalize(),
                     "attributes": {"planned_desat": round(float(r.desat_depth), 2),
                                    "cheyne_stokes": bool(r.periodic)}})
    for r in desats.itertuples():
        rows.append({"onset": r.onset, "duration": r.duration, "type": "desaturation",
                     "label": "SpO2 desaturation",
                     "attributes": {"spo2_baseline": round(float(r.baseline), 1),
                                    "spo2_nadir": round(float(r.nadir), 1),
                                    "drop": round(float(r.depth), 1)}})
    for r in plan.arousals.itertuples():
        rows.append({"onset": r.onset, "duration": r.duration, "type": "arousal",
                     "label": f"Arousal ({r.cause})", "attributes": {"cause": r.cause}})
    for r in plan.leg_movements.itertuples():
        rows.append({"onset": r.onset, "duration": r.duration,
                     "type": "plm" if r.periodic else "limb_movement",
                     "label": "PLM" if r.periodic else "Limb movement",
                     "attributes": {"side": r.side}})
    pos = plan.position.astype(int)
    for t in np.flatnonzero(np.diff(pos) != 0) + 1:
        rows.append({"onset": float(t), "duration": 0.0, "type": "position_change",
                     "label": f"Position {POSITIONS[pos[t]]}",
                     "attributes": {"position": POSITIONS[pos[t]]}})
    return rows


def simulate_night(
    hypnogram: str | np.ndarray | None = None,
    profile: str | Profile = "healthy_young",
    seed: int = 0,
    *,
    patient_id: str | None = None,
    artifacts: bool = True,
    noise: str = "clean",
    statistics: str = "v1",
) -> SimulatedNight:
    """Simulate a full night of PSG with known truth.

    Parameters
    ----------
    hypnogram : str, array or None
        A bundled Sleep-EDF id ("SC4001E0") or Dreem night id, "markov" (YASA's stage model),
        "dreem" or "real" (a real night of the profile's cohort, see
        :func:`sleeplm.simulate.hypnograms.source_pool`), an array of stages, or None to pick
        a bundled Sleep-EDF night from the seed.
    profile : str or Profile
        One of :data:`sleeplm.simulate.PROFILES`.
    seed : int
        Everything is deterministic for a seed.
    patient_id : str, optional
        Defaults to ``sim-<profile>-<seed>``.
    artifacts : bool
        Add movement artifacts, electrode pops, a channel drop-out and SpO2 drop-outs.
    noise : str
        "clean" (default; what the shipped SleepLM checkpoint was trained on) or "real":
        ambiguous epochs blended with the stage a real scorer would pick instead, per-night
        channel gains and slow drift (:mod:`sleeplm.simulate.realism`), so that automatic
        staging scores about as on real PSG.
    statistics : str
        "v1" (default; the event and heart-rate statistics of the nights the shipped SleepLM
        checkpoint was trained on) or "real": respiratory events in runs with UCDDB's
        durations, gaps, type mix and stage rates, and heart rate with Apnea-ECG's variability
        and post-event rises (:mod:`sleeplm.simulate.real_stats`; docs/REALISM.md). The next
        training corpus is to use ``statistics="real", noise="real"``.

    Returns
    -------
    SimulatedNight
    """
    prof = get_profile(profile)
    if noise not in NOISE_LEVELS:
        raise ValueError(f"noise must be one of {NOISE_LEVELS}, got {noise!r}")
    # the 6th stream only feeds noise="real": the clean night of a seed is unchanged by it
    streams = np.random.SeedSequence(seed).spawn(6)
    rng_plan, rng_brain, rng_leg, rng_cr, rng_art, rng_real = (
        np.random.default_rng(s) for s in streams)
    stages, source = night_hypnogram(prof, rng_plan, hypnogram)
    plan = plan_night(stages, prof, rng_plan, statistics=statistics)

    signals, micro = simulate_brain(plan, rng_brain)
    if noise == "real":
        add_realism(signals, plan, rng_real, simulate_brain)
    signals.update(simulate_leg_emg(plan, rng_leg))
    cardio, desats = simulate_cardiorespiratory(plan, rng_cr)
    signals.update(cardio)
    signals["POSITION"] = plan.position.astype(np.float32)
    truth_rows = _plan_truth(plan, desats)
    if artifacts:
        truth_rows += add_artifacts(signals, plan, desats, rng_art)

    pid = patient_id or f"sim-{prof.name}-{seed}"
    rec_signals = {
        name: Signal(name, data, RATES[name], _UNITS.get(name, "µV"), name)
        for name, data in signals.items()
    }
    scored = make_events(r for r in truth_rows if r["type"] in SCORED_TYPES)
    truth = pd.concat([make_events(truth_rows), micro], ignore_index=True)
    truth = truth.sort_values("onset", kind="stable", ignore_index=True)
    start = dt.datetime(2026, 1, 1, 22, 0) + dt.timedelta(minutes=int(rng_plan.integers(0, 120)))
    info = RecordingInfo(patient_id=pid, age=plan.age, sex=plan.sex, start_time=start,
                         source=f"simulated ({prof.name}, seed {seed}, hypnogram {source}"
                                + (", real event statistics" if statistics == "real" else "")
                                + (", realistic noise)" if noise == "real" else ")"),
                         annotation_source="simulation truth")
    rec = Recording(signals=rec_signals, stages=stages, events=scored, info=info,
                    notes=[f"simulated night: profile {prof.name}, seed {seed}, stage sequence "
                           f"from {source}"])
    return SimulatedNight(recording=rec, truth=truth, plan=plan, profile=prof.name, seed=seed,
                          hypnogram_source=source)
