"""Tests of sleeplm.simulate.cardiorespiratory, checked with the project's own clinical code.

Short hand-built plans (N2 nights of 50 min with 12 well-separated events, a stage ladder for
heart rate, a Cheyne-Stokes run) and one 8-h night for the runtime.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import maximum_filter1d, minimum_filter1d

from sleeplm.clinical.heart_rate import heart_rate_series
from sleeplm.clinical.oximetry import detect_desaturations
from sleeplm.recording import Recording, Signal
from sleeplm.simulate.cardiorespiratory import (
    CARDIORESPIRATORY_CHANNELS,
    DESAT_TRUTH_COLUMNS,
    HR_STAGE_OFFSET,
    simulate_cardiorespiratory,
)
from sleeplm.simulate.plan import (
    AROUSAL_COLUMNS,
    LEG_COLUMNS,
    RATES,
    RESPIRATORY_COLUMNS,
    NightPlan,
)

FS = RATES["AIRFLOW"]
TYPES = ("obstructive_apnea", "central_apnea", "mixed_apnea", "hypopnea")


def make_plan(stages, rows=(), arousals=(), position=None, **kw) -> NightPlan:
    stages = np.asarray(stages)
    n_sec = int(stages.size * 30)
    return NightPlan(
        stages=stages,
        position=np.zeros(n_sec, dtype=np.int8) if position is None else position,
        respiratory=pd.DataFrame(list(rows), columns=list(RESPIRATORY_COLUMNS)),
        arousals=pd.DataFrame(list(arousals), columns=list(AROUSAL_COLUMNS)),
        leg_movements=pd.DataFrame(columns=list(LEG_COLUMNS)),
        **kw,
    )


def event_plan(seed: int = 0, n: int = 12) -> NightPlan:
    """~50 min of N2 with ``n`` events (all four types), 2-3 min apart, 4-8 % desaturations."""
    rng = np.random.default_rng(1000 + seed)
    rows, arousals, t = [], [], 180.0
    for k in range(n):
        dur = float(rng.uniform(12, 35))
        aro = bool(k % 2)
        rows.append({"onset": t, "duration": dur, "type": TYPES[k % 4],
                     "desat_depth": float(rng.uniform(4, 8)), "arousal": aro, "periodic": False})
        if aro:
            arousals.append({"onset": t + dur + 0.5, "duration": 6.0, "cause": "respiratory"})
        t += dur + float(rng.uniform(140, 180))
    n_ep = int(np.ceil((t + 60) / 30))
    return make_plan(["N2"] * n_ep, rows, arousals, breathing_rate=float(rng.uniform(12, 18)),
                     heart_rate=float(rng.uniform(55, 70)), age=float(rng.uniform(25, 75)))


@pytest.fixture(scope="module")
def night():
    plan = event_plan(0)
    signals, desats = simulate_cardiorespiratory(plan, np.random.default_rng(0))
    return plan, signals, desats


def p2p(x: np.ndarray, win: float = 5.0) -> np.ndarray:
    """Peak-to-peak excursion in a sliding window (s), like a scorer's eye on the trace."""
    w = int(win * FS)
    return maximum_filter1d(x, w) - minimum_filter1d(x, w)


def reduction(x: np.ndarray, onset: float, end: float) -> float:
    """Fractional drop of the excursion inside the event vs the 2 minutes before it."""
    env = p2p(x)
    base = np.median(env[int((onset - 120) * FS): int(onset * FS)])
    inside = np.median(env[int((onset + 2.5) * FS): int((end - 2.5) * FS)])
    return 1.0 - inside / base


# --------------------------------------------------------------------------- shape & rates
def test_channels_lengths_rates_and_units(night):
    plan, sig, desats = night
    assert set(sig) == set(CARDIORESPIRATORY_CHANNELS)
    for name, x in sig.items():
        assert x.dtype == np.float32, name
        assert x.size == int(round(plan.duration * RATES[name])), name
        assert np.isfinite(x).all(), name
    spo2 = sig["SPO2"].astype(float)
    assert np.allclose(spo2 * 10, np.round(spo2 * 10), atol=1e-3)  # 0.1 % steps
    assert 80 < spo2.min() and spo2.max() <= 100
    assert np.allclose(sig["HR"], np.round(sig["HR"]))
    assert 35 < sig["HR"].min() and sig["HR"].max() < 130
    assert 600 < np.percentile(sig["ECG"], 99.9) < 1600  # R waves ~1000 µV
    for name in ("AIRFLOW", "THORAX", "ABDOMEN"):
        assert 20 < np.percentile(np.abs(sig[name]), 99) < 200, name
    assert list(desats.columns) == list(DESAT_TRUTH_COLUMNS)


def test_breathing_rate_follows_the_plan(night):
    plan, sig, _ = night
    x = sig["ABDOMEN"][: int(170 * FS)].astype(float)  # quiet N2 before the first event
    x -= x.mean()
    ups = np.flatnonzero((x[:-1] < 0) & (x[1:] >= 0))
    rate = 60.0 * (ups.size - 1) / ((ups[-1] - ups[0]) / FS)
    assert rate == pytest.approx(plan.breathing_rate, rel=0.12)


def test_deterministic_for_a_seed():
    plan = event_plan(1, n=4)
    a, da = simulate_cardiorespiratory(plan, np.random.default_rng(7))
    b, db = simulate_cardiorespiratory(plan, np.random.default_rng(7))
    c, _ = simulate_cardiorespiratory(plan, np.random.default_rng(8))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    pd.testing.assert_frame_equal(da, db)
    assert not np.array_equal(a["ECG"], c["ECG"])


# --------------------------------------------------------------------------- SpO2
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_desaturations_found_by_the_project_odi(seed):
    plan = event_plan(seed) if seed else event_plan(0)
    sig, truth = simulate_cardiorespiratory(plan, np.random.default_rng(seed))
    n = len(plan.respiratory)
    assert len(truth) == n  # every planned >= 3 % dip, nothing else
    np.testing.assert_allclose(truth["depth"], plan.respiratory["desat_depth"])
    det = detect_desaturations(Signal("SPO2", sig["SPO2"], 1.0, "%"))
    assert abs(len(det) - n) <= max(1, round(0.05 * n))
    ends = (plan.respiratory["onset"] + plan.respiratory["duration"]).to_numpy()
    for r, end in zip(truth.itertuples(), ends):
        hit = det[(det["onset"] >= r.onset - 10) & (det["onset"] <= r.onset + r.duration)]
        assert len(hit) == 1, f"desaturation at {r.onset} s not found once"
        assert hit["depth"].iloc[0] == pytest.approx(r.depth, abs=0.75)
        # nadir 15-30 s after the event (1-s sampling and noise: a few seconds of slack)
        assert 12 <= hit["nadir_time"].iloc[0] - end <= 34


def test_no_events_no_desaturations_no_apneas():
    plan = make_plan(["W"] * 4 + ["N2"] * 60 + ["R"] * 20)
    sig, truth = simulate_cardiorespiratory(plan, np.random.default_rng(3))
    assert truth.empty and list(truth.columns) == list(DESAT_TRUTH_COLUMNS)
    assert len(detect_desaturations(Signal("SPO2", sig["SPO2"], 1.0, "%"))) == 0
    # no unplanned apnea: the flow excursion never stays below 20 % of its median for 10 s
    env = p2p(sig["NASAL_PRESSURE"].astype(float))
    low = env < 0.2 * np.median(env)
    runs = np.diff(np.r_[0, low.astype(int), 0])
    longest = (np.flatnonzero(runs == -1) - np.flatnonzero(runs == 1)).max(initial=0)
    assert longest < 10 * FS


# --------------------------------------------------------------------------- flow and effort
def test_flow_drops_by_event_type(night):
    plan, sig, _ = night
    for r in plan.respiratory.itertuples():
        end = r.onset + r.duration
        for name in ("AIRFLOW", "NASAL_PRESSURE"):
            drop = reduction(sig[name].astype(float), r.onset, end)
            if r.type == "hypopnea":
                assert 0.3 <= drop <= 0.9, (name, r.onset, drop)
            else:
                assert drop >= 0.9, (name, r.type, r.onset, drop)


def test_effort_paradox_in_obstructive_and_absent_in_central(night):
    plan, sig, _ = night
    th, ab = sig["THORAX"].astype(float), sig["ABDOMEN"].astype(float)
    for r in plan.respiratory.itertuples():
        a, b = int(r.onset * FS), int((r.onset + r.duration) * FS)
        effort = 1.0 - reduction(ab, r.onset, r.onset + r.duration)
        if r.type == "obstructive_apnea":
            assert np.corrcoef(th[a:b], ab[a:b])[0, 1] < -0.5
            assert effort > 0.7  # effort continues
        elif r.type == "central_apnea":
            assert effort < 0.1
            assert 1.0 - reduction(th, r.onset, r.onset + r.duration) < 0.1
        elif r.type == "hypopnea":
            assert effort > 0.6
            assert np.corrcoef(th[a:b], ab[a:b])[0, 1] > 0


def test_flow_limitation_flattens_nasal_pressure_in_hypopneas(night):
    plan, sig, _ = night
    x = sig["NASAL_PRESSURE"].astype(float)

    def flatness(a: float, b: float) -> float:
        """Median over inspirations of mean / peak flow (2/pi = 0.64 for a half-sine)."""
        seg = x[int(a * FS): int(b * FS)]
        pos = seg > 0.1 * np.percentile(seg, 99)
        edges = np.diff(np.r_[0, pos.astype(int), 0])
        ratios = [seg[i:j].mean() / seg[i:j].max()
                  for i, j in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))
                  if j - i > 0.5 * FS]
        return float(np.median(ratios))

    for r in plan.respiratory[plan.respiratory["type"] == "hypopnea"].itertuples():
        inside = flatness(r.onset + 1, r.onset + r.duration - 1)
        before = flatness(r.onset - 100, r.onset - 40)
        assert inside > before + 0.05, (inside, before)


def test_cheyne_stokes_crescendo_decrescendo():
    rows = [{"onset": 120.0 + k * 60.0, "duration": 20.0, "type": "central_apnea",
             "desat_depth": 4.0, "arousal": False, "periodic": True} for k in range(6)]
    plan = make_plan(["N2"] * 20, rows)
    sig, truth = simulate_cardiorespiratory(plan, np.random.default_rng(5))
    env = p2p(sig["AIRFLOW"].astype(float), 3.0)
    for k in range(5):
        end, nxt = 140.0 + k * 60.0, 180.0 + k * 60.0
        mid = env[int((end + 17) * FS): int((end + 23) * FS)].mean()
        edge = max(env[int((end + 1) * FS): int((end + 4) * FS)].mean(),
                   env[int((nxt - 4) * FS): int((nxt - 1) * FS)].mean())
        assert mid > 1.5 * edge
    assert len(truth) == 6


# --------------------------------------------------------------------------- heart
def test_heart_rate_per_stage_from_ecg_r_peaks():
    order = ("W", "N1", "N2", "N3", "R")
    stages = [s for s in order for _ in range(20)]  # 10 min each
    for seed, hr0 in ((0, 58.0), (1, 66.0)):
        plan = make_plan(stages, heart_rate=hr0, age=30.0 + 30 * seed)
        sig, _ = simulate_cardiorespiratory(plan, np.random.default_rng(seed))
        rec = Recording(signals={"ECG": Signal("ECG", sig["ECG"], RATES["ECG"], "µV")},
                        stages=np.array(stages))
        t, hr, source = heart_rate_series(rec)
        assert source == "ECG R-peaks"
        for i, stage in enumerate(order):
            want = hr0 + HR_STAGE_OFFSET[stage]
            sel = (t > i * 600 + 60) & (t < (i + 1) * 600)
            assert np.mean(hr[sel]) == pytest.approx(want, abs=2.0), stage
            hr_ch = sig["HR"][i * 600 + 60: (i + 1) * 600]
            assert np.mean(hr_ch) == pytest.approx(want, abs=2.0), stage
        # every beat found: R-peak count matches the rate
        assert hr.size > 0.95 * 3000 * (hr0 + 2.4) / 60


def test_cyclic_variation_of_heart_rate(night):
    plan, sig, _ = night
    hr = sig["HR"].astype(float)
    for r in plan.respiratory[plan.respiratory["type"] != "hypopnea"].itertuples():
        end = int(r.onset + r.duration)
        during = hr[end - 8: end].mean()
        after = hr[end + 2: end + 12].max()
        assert after - during >= 6.0  # bradycardia in the apnea, surge at its end


# --------------------------------------------------------------------------- runtime
def test_eight_hour_night_is_fast():
    rng = np.random.default_rng(11)
    cycle = ["N1"] * 4 + ["N2"] * 40 + ["N3"] * 30 + ["N2"] * 20 + ["R"] * 26
    stages = ["W"] * 20 + cycle * 7 + ["W"] * 100
    rows, t = [], 900.0
    while t < len(stages) * 30 - 400:
        dur = float(rng.uniform(12, 40))
        rows.append({"onset": t, "duration": dur, "type": TYPES[int(rng.integers(4))],
                     "desat_depth": float(rng.uniform(0, 10)), "arousal": bool(rng.random() < .5),
                     "periodic": False})
        t += dur + float(rng.uniform(20, 200))
    pos = np.repeat(np.array([0, 1, 2, 0, 3], dtype=np.int8), len(stages) * 6)
    plan = make_plan(stages, rows, position=pos)
    assert plan.duration == 8 * 3600
    t0 = time.perf_counter()
    sig, truth = simulate_cardiorespiratory(plan, np.random.default_rng(0))
    elapsed = time.perf_counter() - t0
    print(f"8-h night with {len(rows)} events: {elapsed:.2f} s")
    assert elapsed < 6.0  # ~1 s on one idle core; slack for loaded CI machines
    assert sig["ECG"].size == 8 * 3600 * 256
    assert len(truth) == int((plan.respiratory["desat_depth"] >= 3).sum())
