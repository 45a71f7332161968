"""Plan a night's events: body position, respiratory events, arousals and leg movements.

Placement follows physiology: respiratory events only in sleep, likelier supine and in REM for
obstructive apnea (Oksenberg 1997; Koo 2008), central apneas in NREM in Cheyne-Stokes cycles of
45-75 s (Javaheri 2016), AASM minimum durations (apnea/hypopnea >= 10 s, arousal >= 3 s, leg
movement 0.5-10 s), PLM series of >= 4 movements 5-90 s apart (AASM; typical 20-40 s), and no
event overlapping another.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sleeplm.recording import POSITIONS, SLEEP_STAGES
from sleeplm.simulate.plan import AROUSAL_COLUMNS, LEG_COLUMNS, RESPIRATORY_COLUMNS, NightPlan
from sleeplm.simulate.profiles import Profile

__all__ = ["plan_night", "plan_positions"]

_STAGE_WEIGHT = {"W": 0.0, "N1": 0.8, "N2": 1.0, "N3": 0.4, "R": 1.0}


class _Timeline:
    """Seconds of the night already taken by an event (plus its margins)."""

    def __init__(self, n_sec: int) -> None:
        self.busy = np.zeros(n_sec, dtype=bool)

    def free_onsets(self, duration: float, before: float, after: float) -> np.ndarray:
        """Mask of onsets t whose window [t - before, t + duration + after) is free."""
        n = self.busy.size
        csum = np.r_[0, np.cumsum(self.busy)]
        t = np.arange(n)
        lo = np.clip(t - int(before), 0, n)
        hi = np.clip(t + int(np.ceil(duration + after)), 0, n)
        ok = (csum[hi] - csum[lo]) == 0
        ok &= t + duration < n
        return ok

    def take(self, onset: float, duration: float) -> None:
        self.busy[int(onset) : int(np.ceil(onset + duration)) + 1] = True


def _pick(weights: np.ndarray, rng: np.random.Generator) -> int | None:
    total = weights.sum()
    if total <= 0:
        return None
    return int(np.searchsorted(np.cumsum(weights), rng.random() * total))


def plan_positions(stages: np.ndarray, supine_share: float, rng: np.random.Generator,
                   epoch_sec: float = 30.0) -> np.ndarray:
    """Body position per second: changes happen at awakenings and, rarely, within sleep."""
    n_sec = int(stages.size * epoch_sec)
    wake = stages == "W"
    starts = np.flatnonzero(wake[1:] & ~wake[:-1]) + 1  # first epoch of each awakening
    changes = [s * epoch_sec + rng.uniform(0, epoch_sec) for s in starts if rng.random() < 0.6]
    n_extra = rng.poisson(n_sec / 3600 / 1.5)
    changes += list(rng.uniform(0, n_sec, n_extra))
    changes = sorted(c for c in changes if 0 < c < n_sec)
    position = np.empty(n_sec, dtype=np.int8)
    edges = [0] + [int(c) for c in changes] + [n_sec]
    previous = POSITIONS.index("supine")
    for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        if k == 0:
            pos = previous  # lights off lying on the back
        else:
            pos = previous
            while pos == previous:  # a change changes something
                if rng.random() < supine_share:
                    pos = POSITIONS.index("supine")
                else:
                    pos = POSITIONS.index(rng.choice(["left", "right", "left", "right", "prone"]))
        position[a:b] = pos
        previous = pos
    return position


def _respiratory(stages, position, profile, rng, timeline, epoch_sec):
    n_sec = position.size
    stage_sec = np.repeat(stages, int(epoch_sec))[:n_sec]
    sleep = np.isin(stage_sec, SLEEP_STAGES)
    tst_h = sleep.sum() / 3600
    n_target = int(round(rng.uniform(*profile.ahi) * tst_h))
    weight = np.vectorize(_STAGE_WEIGHT.get)(stage_sec).astype(float)
    weight[stage_sec == "R"] *= profile.rem_factor
    weight[position == POSITIONS.index("supine")] *= profile.supine_factor
    sleep_csum = np.r_[0, np.cumsum(~sleep)]
    types = list(profile.event_mix)
    shares = np.array([profile.event_mix[t] for t in types], dtype=float)
    shares /= shares.sum()
    rows: list[dict] = []

    def in_sleep(onset: int, dur: float) -> bool:
        end = min(int(np.ceil(onset + dur)), n_sec)
        return sleep_csum[end] - sleep_csum[onset] == 0

    def add(onset, dur, etype, periodic=False):
        is_hyp = etype == "hypopnea"
        if is_hyp and rng.random() < 0.25:  # hypopnea scored on its arousal, small desaturation
            depth, arousal = rng.uniform(0.0, 2.0), True
        else:
            lo, hi = profile.desat_depth
            depth = rng.uniform(max(lo, 3.6) if is_hyp else lo, max(hi, 3.7))
            arousal = rng.random() < (0.6 if not is_hyp else 0.5)
        if etype == "central_apnea" and periodic:
            arousal = rng.random() < 0.2
        rows.append({"onset": float(onset), "duration": float(dur), "type": etype,
                     "desat_depth": float(depth), "arousal": bool(arousal),
                     "periodic": bool(periodic)})
        timeline.take(onset, dur)

    if profile.cheyne_stokes:  # central apneas in crescendo-decrescendo runs in NREM
        n_central = int(round(n_target * profile.event_mix.get("central_apnea", 0)))
        nrem = np.isin(stage_sec, ("N1", "N2"))
        tries = 0
        while n_central > 0 and tries < 200:
            tries += 1
            start = _pick(nrem.astype(float), rng)
            if start is None:
                break
            cycle = rng.uniform(45, 75)
            for k in range(int(rng.integers(5, 16))):
                onset = int(start + k * cycle)
                dur = rng.uniform(12, 25)
                if onset + dur + 20 >= n_sec or not nrem[onset] or not in_sleep(onset, dur):
                    break
                if not timeline.free_onsets(dur, 10, 10)[onset]:
                    break
                add(onset, dur, "central_apnea", periodic=True)
                n_central -= 1
                if n_central <= 0:
                    break
        n_target -= sum(r["periodic"] for r in rows)
        types = [t for t in types if t != "central_apnea"] or ["hypopnea"]
        shares = np.array([profile.event_mix.get(t, 0) for t in types], dtype=float)
        shares = shares / shares.sum() if shares.sum() else np.full(len(types), 1 / len(types))

    for _ in range(max(n_target, 0)):
        etype = str(rng.choice(types, p=shares))
        dur = rng.uniform(*profile.event_duration)
        ok = timeline.free_onsets(dur, 12, 15) & sleep
        onset = _pick(weight * ok, rng)
        if onset is None:
            break
        if not in_sleep(onset, dur):
            continue
        add(onset, dur, etype)
    return pd.DataFrame(rows, columns=list(RESPIRATORY_COLUMNS)).sort_values("onset",
                                                                           ignore_index=True)


def _arousals(stages, respiratory, profile, rng, timeline, epoch_sec):
    n_sec = timeline.busy.size
    stage_sec = np.repeat(stages, int(epoch_sec))[:n_sec]
    sleep = np.isin(stage_sec, SLEEP_STAGES)
    rows = []
    for r in respiratory.itertuples():
        if r.arousal:
            onset = r.onset + r.duration + rng.uniform(0.0, 2.0)
            rows.append({"onset": onset, "duration": rng.uniform(3, 12), "cause": "respiratory"})
    n_spont = int(round(rng.uniform(*profile.spontaneous_arousal_index) * sleep.sum() / 3600))
    for _ in range(n_spont):
        dur = rng.uniform(3, 15)
        onset = _pick((timeline.free_onsets(dur, 10, 10) & sleep).astype(float), rng)
        if onset is None:
            break
        rows.append({"onset": float(onset) + rng.random(), "duration": dur, "cause": "spontaneous"})
        timeline.take(onset, dur)
    return rows


def _leg_movements(stages, profile, rng, timeline, epoch_sec):
    n_sec = timeline.busy.size
    stage_sec = np.repeat(stages, int(epoch_sec))[:n_sec]
    sleep = np.isin(stage_sec, SLEEP_STAGES)
    light = np.isin(stage_sec, ("N1", "N2"))
    sides = ("left", "right", "bilateral")
    rows: list[dict] = []
    lm_arousals: list[dict] = []
    n_plm = int(round(rng.uniform(*profile.plmi) * sleep.sum() / 3600))
    tries = 0
    while n_plm >= 4 and tries < 300:
        tries += 1
        length = int(min(n_plm, rng.integers(6, 31)))
        gaps = rng.uniform(15, 40, length - 1)
        start = _pick(light.astype(float), rng)
        if start is None:
            break
        onsets = start + np.r_[0, np.cumsum(gaps)]
        durs = rng.uniform(0.6, 4.0, length)
        if onsets[-1] + durs[-1] + 5 >= n_sec:
            continue
        idx = onsets.astype(int)
        if not light[idx].all():
            continue
        free = timeline.free_onsets(4.0, 3, 3)
        if not free[idx].all():
            continue
        for t, d in zip(onsets, durs):
            rows.append({"onset": float(t), "duration": float(d),
                         "side": str(rng.choice(sides, p=[0.35, 0.35, 0.3])), "periodic": True})
            if rng.random() < 0.15:
                lm_arousals.append({"onset": float(t) + 0.5, "duration": rng.uniform(3, 8),
                                    "cause": "limb"})
        timeline.take(onsets[0], onsets[-1] + durs[-1] - onsets[0])
        n_plm -= length
    # Isolated movements (2-6/h, also in wake), kept > 100 s from any other movement.
    n_iso = int(rng.uniform(2, 6) * n_sec / 3600)
    for _ in range(n_iso):
        dur = rng.uniform(0.6, 5.0)
        onset = _pick(timeline.free_onsets(dur, 100, 100).astype(float), rng)
        if onset is None:
            break
        rows.append({"onset": float(onset) + rng.random(), "duration": dur,
                     "side": str(rng.choice(sides)), "periodic": False})
        timeline.take(onset, dur)
    legs = pd.DataFrame(rows, columns=list(LEG_COLUMNS)).sort_values("onset", ignore_index=True)
    return legs, lm_arousals


def plan_night(stages: np.ndarray, profile: Profile, rng: np.random.Generator, *,
               epoch_sec: float = 30.0) -> NightPlan:
    """Decide everything that happens in the night before any signal is drawn.

    Parameters
    ----------
    stages : numpy.ndarray
        W, N1, N2, N3, R per epoch.
    profile : Profile
    rng : numpy.random.Generator

    Returns
    -------
    NightPlan
    """
    n_sec = int(stages.size * epoch_sec)
    position = plan_positions(stages, rng.uniform(*profile.supine_share), rng, epoch_sec)
    timeline = _Timeline(n_sec)
    respiratory = _respiratory(stages, position, profile, rng, timeline, epoch_sec)
    arousal_rows = _arousals(stages, respiratory, profile, rng, timeline, epoch_sec)
    legs, lm_arousals = _leg_movements(stages, profile, rng, timeline, epoch_sec)
    arousals = pd.DataFrame(arousal_rows + lm_arousals, columns=list(AROUSAL_COLUMNS))
    arousals = arousals[arousals["onset"] + arousals["duration"] < n_sec]
    arousals = arousals.sort_values("onset", ignore_index=True)
    male = rng.random() < profile.male_share
    return NightPlan(
        stages=stages,
        position=position,
        respiratory=respiratory,
        arousals=arousals,
        leg_movements=legs,
        age=float(round(rng.uniform(*profile.age))),
        sex="M" if male else "F",
        rswa=profile.rswa,
        baseline_spo2=float(rng.uniform(*profile.baseline_spo2)),
        breathing_rate=float(rng.uniform(*profile.breathing_rate)),
        heart_rate=float(rng.uniform(*profile.heart_rate)),
        mains_hz=float(rng.choice([50.0, 60.0])),
        epoch_sec=epoch_sec,
    )
