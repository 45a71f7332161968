"""Plan a night's events: body position, respiratory events, arousals and leg movements.

With ``statistics="real"``, placement follows physiology and real scoring: respiratory events
come in runs with the real durations, gaps, run lengths, type mix and per-stage rates of the
UCDDB nights (:mod:`sleeplm.simulate.real_stats`); a run starts in sleep, likelier supine
(Oksenberg 1997), and goes on through awakenings as in real nights; central apneas in NREM in
Cheyne-Stokes cycles of 45-75 s (Javaheri 2016), AASM minimum durations (apnea/hypopnea >= 10 s,
arousal >= 3 s, leg movement 0.5-10 s), PLM series of >= 4 movements 5-90 s apart (AASM;
typical 20-40 s), and no
event overlapping another. ``statistics="v1"`` (the default until the default checkpoint is
retrained on "real" nights) places each respiratory event on its own, anywhere free in sleep,
with uniform durations and fixed stage weights: the nights the shipped checkpoint learned.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sleeplm.recording import POSITIONS, SLEEP_STAGES
from sleeplm.simulate.plan import AROUSAL_COLUMNS, LEG_COLUMNS, RESPIRATORY_COLUMNS, NightPlan
from sleeplm.simulate.profiles import Profile, v1_profile
from sleeplm.simulate.real_stats import (
    clustering_for_ahi,
    event_durations,
    event_type_mix,
    stage_rate_ratios,
)

__all__ = ["plan_night", "plan_positions", "STATISTICS"]

#: Stage weights of the v1 placement (what the shipped checkpoint was trained on).
_STAGE_WEIGHT_V1 = {"W": 0.0, "N1": 0.8, "N2": 1.0, "N3": 0.4, "R": 1.0}
#: Event statistics of the planner: "v1" (the shipped SleepLM checkpoint's training nights) or
#: "real" (the UCDDB nights' runs, durations, mix and stage rates).
STATISTICS = ("v1", "real")

#: A run of respiratory events starts at least this far (s) from any other event where it can.
#: Longer (the 90-s run threshold) leaves too few places in severe nights and lengthens the gaps.
_RUN_CLEARANCE_S = 30

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


class _Placer:
    """The respiratory events of one night as they are placed; both planners share it.

    ``add`` draws the event's desaturation and arousal and takes its seconds on the timeline;
    ``cheyne_stokes`` places the periodic central apneas of a Cheyne-Stokes profile first.
    """

    def __init__(self, n_sec: int, stage_sec: np.ndarray, sleep: np.ndarray, profile: Profile,
                 rng: np.random.Generator, timeline: _Timeline) -> None:
        self.n_sec, self.stage_sec, self.profile = n_sec, stage_sec, profile
        self.rng, self.timeline = rng, timeline
        self.sleep_csum = np.r_[0, np.cumsum(~sleep)]
        self.rows: list[dict] = []

    def in_sleep(self, onset: int, dur: float) -> bool:
        """True when ``[onset, onset + dur)`` (s) lies wholly in sleep."""
        end = min(int(np.ceil(onset + dur)), self.n_sec)
        return self.sleep_csum[end] - self.sleep_csum[onset] == 0

    def add(self, onset: float, dur: float, etype: str, periodic: bool = False) -> None:
        """Place one event at ``onset`` (s) lasting ``dur`` (s)."""
        rng, is_hyp = self.rng, etype == "hypopnea"
        if is_hyp and rng.random() < 0.25:  # hypopnea scored on its arousal, small desaturation
            depth, arousal = rng.uniform(0.0, 2.0), True
        else:
            lo, hi = self.profile.desat_depth
            depth = rng.uniform(max(lo, 3.6) if is_hyp else lo, max(hi, 3.7))
            arousal = rng.random() < (0.6 if not is_hyp else 0.5)
        if etype == "central_apnea" and periodic:
            arousal = rng.random() < 0.2
        self.rows.append({"onset": float(onset), "duration": float(dur), "type": etype,
                          "desat_depth": float(depth), "arousal": bool(arousal),
                          "periodic": bool(periodic)})
        self.timeline.take(onset, dur)

    def cheyne_stokes(self, n_target: int, mix: dict[str, float], types: list[str]
                      ) -> tuple[int, list[str], np.ndarray]:
        """Central apneas in crescendo-decrescendo runs in NREM; returns the events still to
        place and the types and shares left for them."""
        rng, n_sec = self.rng, self.n_sec
        n_central = int(round(n_target * mix.get("central_apnea", 0)))
        nrem = np.isin(self.stage_sec, ("N1", "N2"))
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
                if onset + dur + 20 >= n_sec or not nrem[onset] or not self.in_sleep(onset, dur):
                    break
                if not self.timeline.free_onsets(dur, 10, 10)[onset]:
                    break
                self.add(onset, dur, "central_apnea", periodic=True)
                n_central -= 1
                if n_central <= 0:
                    break
        n_target -= sum(r["periodic"] for r in self.rows)
        types = [t for t in types if t != "central_apnea"] or ["hypopnea"]
        shares = np.array([mix.get(t, 0) for t in types], dtype=float)
        shares = shares / shares.sum() if shares.sum() else np.full(len(types), 1 / len(types))
        return n_target, types, shares

    def frame(self) -> pd.DataFrame:
        """The placed events, by onset (:data:`~sleeplm.simulate.plan.RESPIRATORY_COLUMNS`)."""
        return pd.DataFrame(self.rows, columns=list(RESPIRATORY_COLUMNS)).sort_values(
            "onset", ignore_index=True)


def _stage_weights(profile: Profile) -> dict[str, float]:
    """Relative event rate of each stage: UCDDB's, or the profile's REM factor over N2."""
    weights = {"W": 0.0, **stage_rate_ratios()}
    if profile.rem_factor is not None:
        weights["R"] = profile.rem_factor * weights["N2"]
    return weights


def _event_drawer(profile: Profile, rng: np.random.Generator, types: list[str],
                  shares: np.ndarray):
    """A function drawing (type, duration s) of one event: real UCDDB durations per type
    unless the profile sets its own range."""
    real = event_durations()

    def draw() -> tuple[str, float]:
        etype = str(rng.choice(types, p=shares))
        if profile.event_duration is not None:
            return etype, float(rng.uniform(*profile.event_duration))
        pool = real[etype] if real[etype].size else real["hypopnea"]
        return etype, float(pool[int(rng.integers(pool.size))])

    return draw


def _respiratory(stages, position, profile, rng, timeline, epoch_sec):
    """Respiratory events in runs, as in real nights (UCDDB).

    Events come in runs (clusters): a run starts at a sleep second chosen with the stage weights
    of :func:`_stage_weights` and the supine factor; its length (events) and its sequence of
    gaps (end to next onset, <= :data:`~sleeplm.simulate.real_stats.CLUSTER_GAP_S`) are those
    of a real run of the UCDDB nights nearest in AHI; it goes on through wake inside the sleep
    period (those events are not counted towards the target AHI) and ends early at another
    event or at the end of the sleep period.
    Durations and the type mix are UCDDB's unless the profile sets its own; Cheyne-Stokes runs
    of central apneas keep their own periodic placement.
    """
    n_sec = position.size
    stage_sec = np.repeat(stages, int(epoch_sec))[:n_sec]
    sleep = np.isin(stage_sec, SLEEP_STAGES)
    tst_h = sleep.sum() / 3600
    ahi_target = rng.uniform(*profile.ahi)
    n_target = int(round(ahi_target * tst_h))
    stage_w = _stage_weights(profile)
    weight = np.vectorize(stage_w.get)(stage_sec).astype(float)
    weight[position == POSITIONS.index("supine")] *= profile.supine_factor
    mix = profile.event_mix if profile.event_mix is not None else event_type_mix()
    types = list(mix)
    shares = np.array([mix[t] for t in types], dtype=float)
    shares /= shares.sum()
    placer = _Placer(n_sec, stage_sec, sleep, profile, rng, timeline)
    if profile.cheyne_stokes:
        n_target, types, shares = placer.cheyne_stokes(n_target, mix, types)

    draw = _event_drawer(profile, rng, types, shares)
    # A run goes on through awakenings inside the sleep period: in UCDDB one event in six
    # starts in an epoch scored wake, most of them inside wake bouts of minutes (the epoch
    # rule scores wake while the breathing events go on); only runs start in sleep.
    asleep = np.flatnonzero(sleep)
    period = (int(asleep[0]), int(asleep[-1]) + 1) if asleep.size else (0, 0)
    runs, _ = clustering_for_ahi(round(float(ahi_target), 1))
    placed, tries = 0, 0
    while placed < n_target and tries < 10 * n_target + 50:
        tries += 1
        run = runs[int(rng.integers(len(runs)))] if runs else np.zeros(0)
        etype, dur = draw()
        # a run starts clear of the other events where it can
        ok = timeline.free_onsets(dur, _RUN_CLEARANCE_S, _RUN_CLEARANCE_S) & sleep
        if not ok.any():
            ok = timeline.free_onsets(dur, 12, 15) & sleep
        onset = _pick(weight * ok, rng)
        if onset is None:
            break
        if not placer.in_sleep(onset, dur):
            continue
        placer.add(onset, dur, etype)
        placed += 1
        end = onset + dur
        for j, gap in enumerate(run):  # replay the real run's gaps
            if placed >= n_target:
                break
            etype, dur = draw()
            for attempt in range(4):  # another of its gaps when wake or an event is in the way
                if attempt:
                    gap = run[int(rng.integers(run.size))]
                nxt = int(round(end + float(gap)))
                fits = (period[0] <= nxt and nxt + dur + 2 < min(period[1], n_sec) and not
                        timeline.busy[max(nxt - 2, 0) : int(np.ceil(nxt + dur)) + 3].any())
                if fits:
                    break
            if not fits:
                break
            placer.add(nxt, dur, etype)
            placed += int(sleep[nxt])  # events in wake epochs do not count in the AHI
            end = nxt + dur
    return placer.frame()


def _respiratory_v1(stages, position, profile, rng, timeline, epoch_sec):
    """The placement the shipped SleepLM checkpoint was trained on: ``n_target`` events placed
    one by one, each anywhere free in sleep (uniform durations of the profile, the v1 stage
    weights :data:`_STAGE_WEIGHT_V1` times the REM and supine factors), no runs."""
    n_sec = position.size
    stage_sec = np.repeat(stages, int(epoch_sec))[:n_sec]
    sleep = np.isin(stage_sec, SLEEP_STAGES)
    tst_h = sleep.sum() / 3600
    n_target = int(round(rng.uniform(*profile.ahi) * tst_h))
    weight = np.vectorize(_STAGE_WEIGHT_V1.get)(stage_sec).astype(float)
    weight[stage_sec == "R"] *= profile.rem_factor
    weight[position == POSITIONS.index("supine")] *= profile.supine_factor
    types = list(profile.event_mix)
    shares = np.array([profile.event_mix[t] for t in types], dtype=float)
    shares /= shares.sum()
    placer = _Placer(n_sec, stage_sec, sleep, profile, rng, timeline)
    if profile.cheyne_stokes:
        n_target, types, shares = placer.cheyne_stokes(n_target, profile.event_mix, types)

    for _ in range(max(n_target, 0)):
        etype = str(rng.choice(types, p=shares))
        dur = rng.uniform(*profile.event_duration)
        ok = timeline.free_onsets(dur, 12, 15) & sleep
        onset = _pick(weight * ok, rng)
        if onset is None:
            break
        if not placer.in_sleep(onset, dur):
            continue
        placer.add(onset, dur, etype)
    return placer.frame()


def _arousals(stages, respiratory, profile, rng, timeline, epoch_sec, cut_at_next=True):
    n_sec = timeline.busy.size
    stage_sec = np.repeat(stages, int(epoch_sec))[:n_sec]
    sleep = np.isin(stage_sec, SLEEP_STAGES)
    rows = []
    nxt_onsets = np.r_[respiratory["onset"].to_numpy(dtype=float)[1:], np.inf]
    for r, nxt in zip(respiratory.itertuples(), nxt_onsets):
        if r.arousal:
            onset = r.onset + r.duration + rng.uniform(0.0, 2.0)
            # an arousal ends before the next event of a run starts (real gaps reach 8 s)
            dur = rng.uniform(3, 12)
            if cut_at_next:
                dur = min(dur, max(3.0, nxt - onset - 1.0))
            rows.append({"onset": onset, "duration": dur, "cause": "respiratory"})
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
               epoch_sec: float = 30.0, statistics: str = "v1") -> NightPlan:
    """Decide everything that happens in the night before any signal is drawn.

    Parameters
    ----------
    stages : numpy.ndarray
        W, N1, N2, N3, R per epoch.
    profile : Profile
    rng : numpy.random.Generator
    epoch_sec : float
        Epoch length, s.
    statistics : {"v1", "real"}
        How respiratory events are placed: "v1" (default), one by one with the profile's (or
        the v1) uniform durations, mix and stage weights, as in the nights the shipped SleepLM
        checkpoint was trained on; "real", in runs with the durations, gaps, type mix and
        stage rates of the UCDDB nights (:mod:`sleeplm.simulate.real_stats`).

    Returns
    -------
    NightPlan
    """
    if statistics not in STATISTICS:
        raise ValueError(f"statistics must be one of {STATISTICS}, got {statistics!r}")
    n_sec = int(stages.size * epoch_sec)
    position = plan_positions(stages, rng.uniform(*profile.supine_share), rng, epoch_sec)
    timeline = _Timeline(n_sec)
    if statistics == "v1":
        respiratory = _respiratory_v1(stages, position, v1_profile(profile), rng, timeline,
                                      epoch_sec)
    else:
        respiratory = _respiratory(stages, position, profile, rng, timeline, epoch_sec)
    arousal_rows = _arousals(stages, respiratory, profile, rng, timeline, epoch_sec,
                             cut_at_next=statistics == "real")
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
        statistics=statistics,
    )
