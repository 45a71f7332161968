"""Tests of sleeplm.clinical.oximetry on synthetic SpO2 with known dips and artifacts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sleeplm.clinical.oximetry import (
    DESAT_COLUMNS,
    clean_spo2,
    desaturations_near,
    detect_desaturations,
    oximetry_measures,
)
from sleeplm.errors import MissingChannelError, SignalQualityError
from sleeplm.recording import Recording, Signal, make_events

BASE = 96.0


def v_dip(x: np.ndarray, start: int, depth: float, fall: int = 5, rise: int = 5) -> None:
    """Insert a V-shaped dip: linear fall over ``fall`` s to base - depth, linear rise."""
    base = x[start]
    for k in range(fall + 1):
        x[start + k] = base - depth * k / fall
    for k in range(1, rise + 1):
        x[start + fall + k] = base - depth + depth * k / rise


def spo2_signal(x: np.ndarray, sfreq: float = 1.0) -> Signal:
    return Signal("SPO2", np.repeat(x, int(sfreq)) if sfreq >= 1 else x, sfreq, "%")


def by_name(measures):
    return {m.name: m for m in measures}


# ------------------------------------------------------------------------------ clean_spo2
def test_clean_spo2_averages_per_second_ignoring_invalid_samples():
    data = np.array([96, 0, 96, 96,  95, 95, 127, 95,  94, 94, 94, 94] * 3, dtype=float)
    x, rate = clean_spo2(Signal("SPO2", data, 4.0, "%"))
    assert rate == 1.0
    assert x.size == 9
    np.testing.assert_allclose(x[:3], [96, 95, 94], atol=1e-5)


def test_clean_spo2_holds_samples_below_1hz():
    x, rate = clean_spo2(Signal("SPO2", np.array([95, 96, 97, 96], float), 0.5, "%"))
    assert rate == 1.0
    np.testing.assert_allclose(x, [95, 95, 96, 96, 97, 97, 96, 96])


def test_clean_spo2_removes_range_spike_step_and_islands():
    x = np.full(300, BASE)
    x[50:60] = 0.0           # drop-out
    x[70:75] = 101.0         # out of range
    x[100] = 85.0            # single-sample spike (> 4 % from both neighbours)
    x[150:200] = 60.0        # probe-off step: 36 % in 1 s is impossible
    x[230:240] = 0.0         # island of 3 s between two drop-outs
    x[243:253] = 0.0
    y, _ = clean_spo2(spo2_signal(x))
    assert np.isnan(y[50:60]).all() and np.isnan(y[70:75]).all()
    assert np.isnan(y[100]) and np.isfinite(y[99]) and np.isfinite(y[101])
    assert np.isnan(y[150])  # the step itself
    assert np.isnan(y[240:243]).all()  # short island dropped
    assert np.isfinite(y[:50]).all() and np.isfinite(y[260:]).all()


def test_clean_spo2_keeps_fast_but_physiological_recovery():
    x = np.full(60, BASE)
    x[20:30] = [95, 93, 91, 89, 87, 85, 90, 95, 96, 96]  # 5 %/s resaturation
    y, _ = clean_spo2(spo2_signal(x))
    assert np.isfinite(y).all()


# --------------------------------------------------------------------- detect_desaturations
@pytest.mark.parametrize("sfreq", [1.0, 4.0])
def test_detects_each_5pct_dip_and_no_2pct_dip(sfreq):
    n_dips = 20
    x = np.full(100 + 90 * n_dips + 100, BASE)
    starts = [100 + 90 * k for k in range(n_dips)]
    for s in starts:
        v_dip(x, s, 5.0)
    # 2 % dips in between must not count at drop=3
    for s in starts:
        v_dip(x, s + 45, 2.0)
    d = detect_desaturations(spo2_signal(x, sfreq), drop=3.0)
    assert list(d.columns) == list(DESAT_COLUMNS)
    assert len(d) == n_dips
    # onset: the last second within 1 % of baseline (1 s after the first falling sample here)
    np.testing.assert_allclose(d["onset"], np.array(starts) + 1, atol=1)
    np.testing.assert_allclose(d["nadir_time"], np.array(starts) + 5, atol=0)
    np.testing.assert_allclose(d["depth"], 5.0, atol=1e-4)
    np.testing.assert_allclose(d["baseline"], BASE, atol=1e-4)
    assert (d["duration"] > 3).all() and (d["duration"] < 15).all()

    only_small = np.full(2000, BASE)
    for s in range(100, 1900, 90):
        v_dip(only_small, s, 2.0)
    assert len(detect_desaturations(spo2_signal(only_small, sfreq), drop=3.0)) == 0


def test_detection_on_quantised_noisy_trace():
    rng = np.random.default_rng(0)
    x = np.full(2000, BASE)
    starts = list(range(100, 1900, 90))
    for s in starts:
        v_dip(x, s, 5.0, fall=8, rise=6)
    x = np.round(x + rng.uniform(-0.4, 0.4, x.size))  # integer % like real oximeters
    d = detect_desaturations(spo2_signal(x), drop=3.0)
    assert len(d) == len(starts)
    assert np.all(np.abs(d["onset"].to_numpy() - np.array(starts)) <= 3)


def test_cyclic_desaturations_count_one_by_one_and_drop4():
    # 96 -> 90 -> 94 -> 90 -> 94 ...: partial recoveries still separate the events
    x = np.full(400, BASE)
    t = 50
    for _ in range(5):
        x[t : t + 6] = np.linspace(x[t - 1], 90, 6)
        x[t + 6 : t + 12] = np.linspace(90, 94, 6)
        t += 12
    x[t : t + 4] = [95, 96, 96, 96]
    assert len(detect_desaturations(spo2_signal(x), drop=3.0)) == 5
    d4 = detect_desaturations(spo2_signal(x), drop=4.0)
    assert len(d4) >= 1 and (d4["depth"] >= 4).all()


def test_nothing_detected_across_gaps_or_too_fast():
    x = np.full(400, BASE)
    # fall interrupted by a drop-out: the baseline cannot be carried across the gap
    x[100:103] = [95, 94, 93.5]
    x[103:113] = 0.0
    x[113:130] = 92.0
    x[130:] = BASE
    # a fall running straight into a drop-out (probe coming off) is no event
    x[200:205] = [95, 94, 93, 92, 91]
    x[205:220] = 0.0
    d = detect_desaturations(spo2_signal(x), drop=3.0)
    assert len(d) == 0


def test_invalid_signal_gives_empty_table():
    d = detect_desaturations(Signal("SPO2", np.r_[np.zeros(50), np.full(50, 127.0)], 1.0, "%"))
    assert d.empty and list(d.columns) == list(DESAT_COLUMNS)
    with pytest.raises(ValueError):
        detect_desaturations(spo2_signal(np.full(100, BASE)), drop=0)


def test_desaturations_near():
    desats = pd.DataFrame({"onset": [10.0, 50.0, 75.0, 200.0], "depth": [3, 4, 5, 6]})
    near = desaturations_near(desats, 40.0, 60.0, lag=30.0)
    assert near["onset"].tolist() == [50.0, 75.0]
    assert desaturations_near(desats, 40.0, 60.0, lag=10.0)["onset"].tolist() == [50.0]
    assert desaturations_near(desats.iloc[:0], 0, 10).empty


# ------------------------------------------------------------------------ oximetry_measures
N_SEC = 3600
SLEEP_START, SLEEP_END = 600, 3480  # W 0-19, N2 20-99, R 100-115, W 116-119
TST_H = (SLEEP_END - SLEEP_START) / 3600.0


def night(sfreq: float = 4.0):
    """A 1-h recording with known dips and artifacts; returns (rec, truth_1hz, invalid mask)."""
    x = np.full(N_SEC, BASE)
    v_dip(x, 300, 5.0)                      # in wake: not counted when staged
    for k in range(10):
        v_dip(x, 700 + 90 * k, 5.0)         # 10 x 5 % in N2
    for k in range(6):
        v_dip(x, 1700 + 90 * k, 3.5)        # 6 x 3.5 % in N2: ODI3 only
    for k in range(4):
        v_dip(x, 2300 + 60 * k, 2.0)        # 4 x 2 %: never
    x[2600:2605] = [96, 94, 92, 90, 88]     # a prolonged desaturation to 88 %
    x[2605:2724] = 88.0
    x[2724:2728] = [90, 92, 94, 96]
    for s in (3050, 3150, 3250):
        v_dip(x, s, 5.0)                    # 3 x 5 % in R
    truth = x.copy()
    invalid = np.zeros(N_SEC, dtype=bool)
    x[1930:1960] = 0.0                      # drop-out, 30 s
    x[2200:2210] = 127.0                    # out of range, 10 s
    x[2500] = 80.0                          # spike, 1 s
    for a, b in ((1930, 1960), (2200, 2210), (2500, 2501)):
        invalid[a:b] = True
    stages = np.array(["W"] * 20 + ["N2"] * 80 + ["R"] * 16 + ["W"] * 4)
    rec = Recording(signals={"SPO2": spo2_signal(x, sfreq)}, stages=stages)
    return rec, truth, invalid


@pytest.fixture(scope="module")
def night_measures():
    rec, truth, invalid = night()
    return by_name(oximetry_measures(rec)), truth, invalid


def test_measures_names_units(night_measures):
    m, _, _ = night_measures
    assert list(m) == ["spo2_baseline", "spo2_mean", "spo2_nadir", "odi3", "odi4",
                       "t90_min", "t90_pct", "spo2_artifact_pct"]
    units = {"spo2_baseline": "%", "spo2_mean": "%", "spo2_nadir": "%", "odi3": "events/h",
             "odi4": "events/h", "t90_min": "min", "t90_pct": "%", "spo2_artifact_pct": "%"}
    assert {k: v.unit for k, v in m.items()} == units
    assert all(v.value is not None for v in m.values())


def test_measures_values(night_measures):
    m, truth, invalid = night_measures
    sleep = np.zeros(N_SEC, dtype=bool)
    sleep[SLEEP_START:SLEEP_END] = True
    assert m["spo2_baseline"].value == pytest.approx(BASE)
    assert "wake before sleep onset" in m["spo2_baseline"].reason
    assert m["spo2_mean"].value == pytest.approx(truth[sleep & ~invalid].mean(), abs=1e-4)
    assert m["spo2_nadir"].value == pytest.approx(88.0, abs=1e-4)
    (a, b), = m["spo2_nadir"].evidence.intervals
    assert 2604 <= a < b <= 2724
    # 10 + 6 + 1 + 3 desaturations >= 3 % in sleep; 10 + 1 + 3 of >= 4 %
    assert m["odi3"].value == pytest.approx(20 / TST_H)
    assert m["odi4"].value == pytest.approx(14 / TST_H)
    assert len(m["odi3"].evidence.intervals) == 20
    assert all(SLEEP_START <= a < SLEEP_END for a, _ in m["odi3"].evidence.intervals)
    assert m["t90_min"].value == pytest.approx(120 / 60)
    valid_sleep = int((sleep & ~invalid).sum())
    assert m["t90_pct"].value == pytest.approx(100 * 120 / valid_sleep)
    assert m["spo2_artifact_pct"].value == pytest.approx(100 * 41 / (SLEEP_END - SLEEP_START))
    assert sum(b - a for a, b in m["spo2_artifact_pct"].evidence.intervals) == 41
    assert m["odi3"].evidence.n_epochs == 0 and m["spo2_mean"].evidence.n_epochs == 96


def test_measures_one_hz_same_as_four_hz(night_measures):
    m4, _, _ = night_measures
    rec, _, _ = night(sfreq=1.0)
    m1 = by_name(oximetry_measures(rec))
    for k in m4:
        assert m1[k].value == pytest.approx(m4[k].value, abs=1e-4), k


def test_unstaged_uses_whole_recording_per_monitoring_hour():
    rec, _, _ = night()
    rec.stages = None
    m = by_name(oximetry_measures(rec))
    # the wake dip counts too, per hour of monitoring time (1 h)
    assert m["odi3"].value == pytest.approx(21.0)
    assert m["odi4"].value == pytest.approx(15.0)
    for k in m:
        assert "no sleep staging" in m[k].reason and "monitoring" in m[k].reason, k
    assert "outside desaturations" in m["spo2_baseline"].reason
    assert m["spo2_artifact_pct"].value == pytest.approx(100 * 41 / N_SEC)


def test_baseline_falls_back_to_sleep_outside_desaturations():
    rec, _, _ = night()
    st = rec.stages.copy()
    st[1:20] = "N2"  # only 30 s of wake before sleep onset
    rec.stages = st
    m = by_name(oximetry_measures(rec))
    assert m["spo2_baseline"].value == pytest.approx(BASE)
    assert "outside desaturations" in m["spo2_baseline"].reason


def test_no_spo2_channel():
    rec = Recording(signals={"HR": Signal("HR", np.full(100, 60.0), 1.0, "bpm")})
    with pytest.raises(MissingChannelError):
        oximetry_measures(rec)


@pytest.mark.parametrize("data", [np.full(600, np.nan), np.zeros(600),
                                  np.tile([0.0, 127.0], 300)])
def test_unusable_spo2(data):
    rec = Recording(signals={"SPO2": Signal("SPO2", data, 1.0, "%")},
                    stages=np.array(["N2"] * 20), events=make_events())
    with pytest.raises(SignalQualityError):
        oximetry_measures(rec)


def test_the_nadir_evidence_gives_its_clock_time_when_the_start_is_known():
    """"lowest O2 sat and when did it happen": the evidence gave seconds only ("at 2855 s"),
    and a 1.5 B model answered with them; with the recording's start it gives the clock."""
    import datetime as dt

    from sleeplm.recording import RecordingInfo

    rec, _truth, _invalid = night()
    (a, _b), = by_name(oximetry_measures(rec))["spo2_nadir"].evidence.intervals
    assert by_name(oximetry_measures(rec))["spo2_nadir"].evidence.note.endswith(f"at {a:.0f} s")
    rec.info = RecordingInfo(start_time=dt.datetime(2026, 1, 1, 22, 0, 0))
    note = by_name(oximetry_measures(rec))["spo2_nadir"].evidence.note
    clock = (dt.datetime(2026, 1, 1, 22, 0, 0) + dt.timedelta(seconds=a)).strftime("%H:%M:%S")
    assert note.endswith(f"at {a:.0f} s ({clock})")
