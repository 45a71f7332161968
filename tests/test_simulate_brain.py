"""Tests of the EEG/EOG/chin-EMG simulator (sleeplm.simulate.brain) and the leg EMG (muscle)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import signal as sps

from sleeplm.clinical.limb_movements import detect_leg_movements
from sleeplm.recording import EVENT_COLUMNS, EventType, Recording, Signal
from sleeplm.simulate.brain import BRAIN_CHANNELS, simulate_brain
from sleeplm.simulate.muscle import simulate_leg_emg
from sleeplm.simulate.plan import AROUSAL_COLUMNS, LEG_COLUMNS, RATES, RESPIRATORY_COLUMNS, NightPlan

FS = 128.0
# 33 min: wake, sleep onset, N2, N3, REM
STAGES = np.array(["W"] * 12 + ["N1"] * 6 + ["N2"] * 14 + ["N3"] * 14 + ["R"] * 20)


def make_plan(stages=STAGES, *, rswa=False, arousals=None, legs=None, mains_hz=50.0) -> NightPlan:
    n = len(stages)
    empty = lambda cols: pd.DataFrame({c: pd.Series(dtype=float) for c in cols})  # noqa: E731
    return NightPlan(stages=np.asarray(stages), position=np.zeros(n * 30),
                     respiratory=empty(RESPIRATORY_COLUMNS),
                     arousals=arousals if arousals is not None else empty(AROUSAL_COLUMNS),
                     leg_movements=legs if legs is not None else empty(LEG_COLUMNS),
                     age=30.0, sex="F", rswa=rswa, mains_hz=mains_hz)


@pytest.fixture(scope="module")
def night():
    plan = make_plan()
    sig, truth = simulate_brain(plan, np.random.default_rng(11))
    return plan, sig, truth


def _epochs(x: np.ndarray, fs: float, stages: np.ndarray, stage: str, skip_edges: bool = True) -> np.ndarray:
    """Epochs (rows) of one stage, leaving out those next to a stage change."""
    spe = int(30 * fs)
    idx = [i for i, s in enumerate(stages) if s == stage and (not skip_edges or (
        0 < i < len(stages) - 1 and stages[i - 1] == s and stages[i + 1] == s))]
    return np.asarray(x[: len(stages) * spe]).reshape(len(stages), spe)[idx]


def _band(epochs: np.ndarray, fs: float, lo: float, hi: float) -> np.ndarray:
    f, p = sps.welch(epochs, fs, nperseg=int(4 * fs), axis=-1)
    return p[..., (f >= lo) & (f < hi)].sum(-1) * (f[1] - f[0])


def _bandpass(x: np.ndarray, fs: float, lo: float, hi: float) -> np.ndarray:
    return sps.sosfiltfilt(sps.butter(4, [lo, hi], btype="band", fs=fs, output="sos"), np.asarray(x, float))


# --------------------------------------------------------------------------- API
def test_deterministic_for_a_seed():
    plan = make_plan(STAGES[:20])
    a, ta = simulate_brain(plan, np.random.default_rng(3))
    b, tb = simulate_brain(plan, np.random.default_rng(3))
    c, _ = simulate_brain(plan, np.random.default_rng(4))
    for name in BRAIN_CHANNELS:
        np.testing.assert_array_equal(a[name], b[name])
    pd.testing.assert_frame_equal(ta, tb)
    assert not np.array_equal(a["EEG_C4"], c["EEG_C4"])


def test_shapes_rates_units(night):
    plan, sig, truth = night
    assert set(sig) == set(BRAIN_CHANNELS)
    for name, x in sig.items():
        assert x.dtype == np.float32
        assert x.shape == (int(plan.duration * RATES[name]),), name
        assert np.isfinite(x).all()
        assert 0.5 < float(np.std(x)) < 200.0, name  # µV, not V
    assert list(truth.columns) == list(EVENT_COLUMNS)
    kinds = set(truth["type"])
    assert {EventType.SPINDLE.value, EventType.K_COMPLEX.value, EventType.SLOW_WAVE.value,
            EventType.RAPID_EYE_MOVEMENT.value} <= kinds
    assert truth["onset"].is_monotonic_increasing
    assert all(isinstance(a, dict) and "amplitude_uv" in a for a in truth["attributes"])


def test_events_respect_their_stages(night):
    plan, _, truth = night
    st = plan.stage_at(truth["onset"].to_numpy())
    assert set(st[truth["type"] == "spindle"]) <= {"N2", "N3"}
    assert set(st[truth["type"] == "k_complex"]) <= {"N2"}
    assert set(st[truth["type"] == "slow_wave"]) <= {"N2", "N3"}
    assert set(st[truth["type"] == "rapid_eye_movement"]) == {"R"}
    n2_min = (plan.stages == "N2").sum() / 2
    assert 1.5 <= ((truth["type"] == "spindle") & (st == "N2")).sum() / n2_min <= 7.0  # per min


# --------------------------------------------------------------------------- EEG
def test_n3_has_much_more_delta_than_wake(night):
    plan, sig, _ = night
    delta_w = _band(_epochs(sig["EEG_C4"], FS, plan.stages, "W"), FS, 0.5, 4).mean()
    delta_n3 = _band(_epochs(sig["EEG_C4"], FS, plan.stages, "N3"), FS, 0.5, 4).mean()
    assert delta_n3 > 5 * delta_w


def test_n3_slow_waves_over_75_uv_at_truth_times(night):
    plan, sig, truth = night
    sw = truth[(truth["type"] == "slow_wave") & (plan.stage_at(truth["onset"].to_numpy()) == "N3")]
    assert len(sw) > 100
    x = _bandpass(sig["EEG_F"], FS, 0.3, 4.0)
    ptp = np.array([np.ptp(x[int(o * FS): int((o + d) * FS) + 1]) for o, d in zip(sw["onset"], sw["duration"])])
    assert np.mean(ptp > 75) > 0.85
    # AASM: > 20 % of each N3 epoch is slow waves
    occ = sw.groupby((sw["onset"] // 30).astype(int))["duration"].sum() / 30
    assert (occ > 0.2).all()
    # frontal maximum
    xc = _bandpass(sig["EEG_C4"], FS, 0.3, 4.0)
    ptp_c = np.array([np.ptp(xc[int(o * FS): int((o + d) * FS) + 1]) for o, d in zip(sw["onset"], sw["duration"])])
    assert np.median(ptp) > np.median(ptp_c)


def test_wake_has_more_occipital_alpha_than_n2(night):
    plan, sig, _ = night
    a_w = _band(_epochs(sig["EEG_O"], FS, plan.stages, "W"), FS, 8, 12).mean()
    a_n2 = _band(_epochs(sig["EEG_O"], FS, plan.stages, "N2"), FS, 8, 12).mean()
    assert a_w > 2 * a_n2
    # occipital > central in wake
    a_c = _band(_epochs(sig["EEG_C4"], FS, plan.stages, "W"), FS, 8, 12).mean()
    assert a_w > 1.5 * a_c


def test_spindles_carry_sigma_power(night):
    plan, sig, truth = night
    sp = truth[(truth["type"] == "spindle") & truth["channel"].isin(["EEG_C3", "EEG_C4"])]
    assert len(sp) > 10
    assert all(11 <= a["frequency_hz"] <= 16 for a in sp["attributes"])
    assert ((sp["duration"] >= 0.5) & (sp["duration"] <= 2.0)).all()
    pw = _bandpass(sig["EEG_C4"], FS, 11, 16) ** 2
    inside = np.array([pw[int(o * FS): int((o + d) * FS)].mean() for o, d in zip(sp["onset"], sp["duration"])])
    # reference: 1-s N2 segments at least 2 s away from any spindle
    n2 = np.flatnonzero(plan.stages == "N2")
    starts = np.arange(n2[0] * 30, (n2[-1] + 1) * 30 - 1, 1.0)
    all_sp = truth[truth["type"] == "spindle"]
    far = [t for t in starts if np.all(np.abs(all_sp["onset"].to_numpy() - t) > 3.0)]
    ref = np.median([pw[int(t * FS): int((t + 1) * FS)].mean() for t in far])
    assert np.median(inside) > 4 * ref


def test_arousal_speeds_up_the_eeg_and_chin():
    stages = np.array(["N2"] * 10 + ["R"] * 10)
    arousals = pd.DataFrame({"onset": [150.0, 450.0], "duration": [10.0, 8.0], "cause": "spontaneous"})
    sig, _ = simulate_brain(make_plan(stages, arousals=arousals), np.random.default_rng(2))
    fast = _bandpass(sig["EEG_C4"], FS, 8, 30) ** 2
    assert fast[int(151 * FS): int(159 * FS)].mean() > 2 * fast[int(40 * FS): int(140 * FS)].mean()
    # in REM an arousal needs a chin EMG increase (AASM)
    emg = sig["EMG_CHIN"].astype(float) ** 2
    fs_e = RATES["EMG_CHIN"]
    assert emg[int(450.2 * fs_e): int(453 * fs_e)].mean() > 4 * emg[int(320 * fs_e): int(440 * fs_e)].mean()


def test_mains_line_present():
    sig, _ = simulate_brain(make_plan(STAGES[:8], mains_hz=60.0), np.random.default_rng(0))
    f, p = sps.welch(sig["EEG_C3"].astype(float), FS, nperseg=1024)
    k = np.argmin(np.abs(f - 60.0))
    assert p[k] > 20 * np.median(p[(f > 45) & (f < 58)])


# --------------------------------------------------------------------------- EMG / EOG
def _rms_by_stage(x, fs, stages, stage):
    return float(np.sqrt(np.mean(_epochs(x, fs, stages, stage).astype(float) ** 2)))


def test_rem_atonia_and_rswa(night):
    plan, sig, _ = night
    fs = RATES["EMG_CHIN"]
    w, n2, n3, r = (_rms_by_stage(sig["EMG_CHIN"], fs, plan.stages, s) for s in ("W", "N2", "N3", "R"))
    assert w > n2 > n3 > r
    assert r < 0.3 * w
    sig2, _ = simulate_brain(make_plan(rswa=True), np.random.default_rng(11))
    w2, n2_2, r2 = (_rms_by_stage(sig2["EMG_CHIN"], fs, plan.stages, s) for s in ("W", "N2", "R"))
    assert r2 > 0.5 * w2
    assert r2 > n2_2
    assert r2 > 3 * r


def test_rem_eye_movements_out_of_phase(night):
    plan, sig, truth = night
    rem = truth[(truth["type"] == "rapid_eye_movement") & (truth["onset"] < plan.duration - 1)]
    assert len(rem) > 5
    amps = np.array([a["amplitude_uv"] for a in rem["attributes"]])
    assert (amps >= 50).all() and (amps <= 300).all()
    assert all(a["rise_s"] < 0.5 for a in rem["attributes"])
    left = _bandpass(sig["EOG_L"], FS, 0.3, 5)
    right = _bandpass(sig["EOG_R"], FS, 0.3, 5)
    corr = [np.corrcoef(left[int(o * FS): int((o + 0.5) * FS)], right[int(o * FS): int((o + 0.5) * FS)])[0, 1]
            for o in rem["onset"]]
    assert np.median(corr) < -0.5
    # N3: the frontal slow waves are seen in phase on both EOG channels
    l3 = _epochs(_bandpass(sig["EOG_L"], FS, 0.3, 2), FS, plan.stages, "N3").ravel()
    r3 = _epochs(_bandpass(sig["EOG_R"], FS, 0.3, 2), FS, plan.stages, "N3").ravel()
    assert np.corrcoef(l3, r3)[0, 1] > 0.5


def test_slow_eye_movements_at_sleep_onset(night):
    plan, sig, _ = night
    # horizontal (out-of-phase) component: the in-phase EEG spill-over cancels
    horiz = _bandpass((sig["EOG_L"].astype(float) - sig["EOG_R"]) / 2, FS, 0.1, 0.6)
    n1 = np.mean(np.std(_epochs(horiz, FS, plan.stages, "N1", skip_edges=False), axis=1))
    n2 = np.median(np.std(_epochs(horiz, FS, plan.stages, "N2"), axis=1))
    assert n1 > 2 * n2


# --------------------------------------------------------------------------- leg EMG
def test_leg_bursts_found_by_the_detector():
    stages = np.array(["W"] * 4 + ["N2"] * 36)
    onsets = [150.0, 200.0, 260.5, 320.0, 400.0, 455.0, 600.0, 700.0, 800.0, 1000.0]
    durs = [0.6, 1.5, 3.0, 2.0, 9.0, 1.0, 5.0, 0.8, 2.5, 4.0]
    sides = ["left", "right", "bilateral", "left", "right", "bilateral", "left", "right", "bilateral", "left"]
    legs = pd.DataFrame({"onset": onsets, "duration": durs, "side": sides, "periodic": False})
    plan = make_plan(stages, legs=legs)
    sig = simulate_leg_emg(plan, np.random.default_rng(5))
    assert set(sig) == {"EMG_LEG", "EMG_LEG_R"}
    for x in sig.values():
        assert x.dtype == np.float32 and x.size == int(plan.duration * RATES["EMG_LEG"])
    rest = sig["EMG_LEG"][: int(140 * RATES["EMG_LEG"])].astype(float)
    assert 0.7 < np.std(rest) < 2.5
    rec = Recording(signals={k: Signal(k, v, RATES[k], "µV") for k, v in sig.items()}, stages=stages)
    det = detect_leg_movements(rec)
    assert len(det) == len(onsets)
    for o, d, s in zip(onsets, durs, sides):
        k = int(np.argmin(np.abs(det["onset"].to_numpy() - o)))
        assert abs(det["onset"].iloc[k] - o) < 0.25
        assert abs(det["duration"].iloc[k] - d) < 0.3
        assert det["side"].iloc[k] == s
