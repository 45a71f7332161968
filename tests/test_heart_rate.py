"""Tests of sleeplm.clinical.heart_rate on a synthetic ECG and HR channel with known rates."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import fftconvolve

from sleeplm.clinical.heart_rate import (POST_EVENT_SEC, heart_rate_measures, heart_rate_series,
                                        respiratory_event_heart_rate)
from sleeplm.errors import MissingChannelError, SignalQualityError
from sleeplm.recording import Recording, Signal, make_events

FS = 256.0
# 30 min: W 0-9, N1 10-14, N2 15-34, N3 35-44, R 45-54, W 55-59
STAGES = np.array(["W"] * 10 + ["N1"] * 5 + ["N2"] * 20 + ["N3"] * 10 + ["R"] * 10 + ["W"] * 5)
RATE = {"W": 80.0, "N1": 70.0, "N2": 62.0, "N3": 56.0, "R": 74.0}
DUR = STAGES.size * 30.0


def beat_times() -> np.ndarray:
    t, out = 0.4, []
    while t < DUR - 0.5:
        out.append(t)
        t += 60.0 / RATE[STAGES[int(t // 30)]]
    return np.array(out)


def _gauss(tt: np.ndarray, mu: float, sd: float, amp: float) -> np.ndarray:
    return amp * np.exp(-0.5 * ((tt - mu) / sd) ** 2)


def synth_ecg(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ECG (µV) at 256 Hz: P-QRS-T complexes at the beats, baseline wander and noise."""
    rng = np.random.default_rng(seed)
    beats = beat_times()
    tt = np.arange(-0.3, 0.45, 1 / FS)
    template = (_gauss(tt, -0.16, 0.025, 100) - _gauss(tt, -0.025, 0.006, 150)
                + _gauss(tt, 0.0, 0.008, 1000) - _gauss(tt, 0.025, 0.006, 200)
                + _gauss(tt, 0.25, 0.04, 250))
    n = int(DUR * FS)
    imp = np.zeros(n)
    imp[np.round(beats * FS).astype(int)] = 1.0
    c = int(round(0.3 * FS))
    ecg = fftconvolve(imp, template)[c : c + n]
    t = np.arange(n) / FS
    ecg += 200 * np.sin(2 * np.pi * 0.3 * t) + rng.normal(0, 20, n)
    return ecg, beats


@pytest.fixture(scope="module")
def ecg_data():
    return synth_ecg()


def by_name(measures):
    return {m.name: m for m in measures}


def hr_channel(values_per_sec: np.ndarray) -> Signal:
    return Signal("HR", values_per_sec, 1.0, "bpm")


def stage_rates_per_sec(stages: np.ndarray = STAGES) -> np.ndarray:
    return np.repeat([RATE[s] for s in stages], 30).astype(float)


# -------------------------------------------------------------------------------- series
@pytest.mark.parametrize("polarity", [1.0, -1.0])
def test_ecg_r_peaks_recover_beats(ecg_data, polarity):
    ecg, beats = ecg_data
    rec = Recording(signals={"ECG": Signal("ECG", polarity * ecg, FS, "µV")}, stages=STAGES)
    t, hr, src = heart_rate_series(rec)
    assert src == "ECG R-peaks"
    # nearly every RR interval found (a few may be rejected at stage changes), none spurious
    assert len(t) >= 0.97 * (beats.size - 1)
    assert len(t) <= beats.size - 1
    assert hr.min() > 54 and hr.max() < 82
    # each detected beat time is a true beat (within 20 ms)
    err = np.abs(t[:, None] - beats[None, :]).min(axis=1)
    assert np.all(err < 0.02)


@pytest.mark.parametrize("polarity", [1.0, -1.0])
def test_ecg_measures_per_stage(ecg_data, polarity):
    ecg, _ = ecg_data
    rec = Recording(signals={"ECG": Signal("ECG", polarity * ecg, FS, "µV")}, stages=STAGES)
    m = by_name(heart_rate_measures(rec))
    # R-peaks fall on samples (1/256 s): per-epoch medians within 0.5 bpm of the true rate
    for stage, rate in RATE.items():
        assert m[f"hr_mean_{stage}"].value == pytest.approx(rate, abs=0.5), stage
        assert m[f"hr_min_{stage}"].value == pytest.approx(rate, abs=0.5), stage
        assert m[f"hr_max_{stage}"].value == pytest.approx(rate, abs=0.5), stage
        assert m[f"hr_mean_{stage}"].unit == "bpm"
    assert m["hr_min"].value == pytest.approx(56.0, abs=0.5)
    assert m["hr_max"].value == pytest.approx(74.0, abs=0.5)
    sleep_epochs = 45
    expected = (5 * 70 + 20 * 62 + 10 * 56 + 10 * 74) / sleep_epochs
    assert m["hr_mean"].value == pytest.approx(expected, abs=0.5)
    assert m["hr_mean"].evidence.n_epochs == sleep_epochs
    assert m["hr_mean_N2"].evidence.epochs == [(15, 34)]
    a, b = m["hr_min"].evidence.epochs[0]
    assert a == b and STAGES[a] == "N3"
    assert "ECG R-peaks" in m["hr_mean"].reason


def test_hr_channel_preferred_and_range_filtered(ecg_data):
    ecg, _ = ecg_data
    hr = stage_rates_per_sec()
    hr[100:110] = 0.0      # drop-out
    hr[500:505] = 300.0    # out of range
    hr[1000] = 150.0       # a single in-range spike must not decide the maximum
    rec = Recording(signals={"HR": hr_channel(hr), "ECG": Signal("ECG", ecg, FS, "µV")},
                    stages=STAGES)
    t, v, src = heart_rate_series(rec)
    assert src == "HR channel"
    assert v.size == hr.size - 15 and v.min() >= 25 and v.max() <= 220
    m = by_name(heart_rate_measures(rec))
    assert m["hr_max"].value == pytest.approx(74.0)
    assert m["hr_max_N2"].value == pytest.approx(62.0)
    assert m["hr_min"].value == pytest.approx(56.0)
    assert m["hr_mean_W"].value == pytest.approx(80.0)
    assert "HR channel" in m["hr_mean"].reason


def test_unusable_hr_channel_falls_back_to_ecg(ecg_data):
    ecg, _ = ecg_data
    bad_hr = np.tile([0.0, 300.0], int(DUR) // 2)  # not flat, but never in range
    rec = Recording(signals={"HR": hr_channel(bad_hr), "ECG": Signal("ECG", ecg, FS, "µV")},
                    stages=STAGES)
    assert heart_rate_series(rec)[2] == "ECG R-peaks"
    only_bad = Recording(signals={"HR": hr_channel(bad_hr)}, stages=STAGES)
    with pytest.raises(SignalQualityError):
        heart_rate_series(only_bad)


def test_absent_stage_is_missing_with_reason():
    stages = STAGES.copy()
    stages[stages == "N1"] = "N2"
    rec = Recording(signals={"HR": hr_channel(stage_rates_per_sec(stages))}, stages=stages)
    m = by_name(heart_rate_measures(rec))
    for k in ("mean", "min", "max"):
        assert m[f"hr_{k}_N1"].value is None
        assert "no N1 epochs" in m[f"hr_{k}_N1"].reason
    assert m["hr_mean_N2"].value == pytest.approx(62.0)


def test_unstaged_whole_recording():
    rec = Recording(signals={"HR": hr_channel(stage_rates_per_sec())})
    m = by_name(heart_rate_measures(rec))
    assert m["hr_min"].value == pytest.approx(56.0)
    assert m["hr_max"].value == pytest.approx(80.0)
    assert "no sleep staging" in m["hr_mean"].reason
    assert m["hr_min"].evidence.intervals and not m["hr_min"].evidence.epochs
    assert m["hr_mean_N2"].value is None and "no sleep staging" in m["hr_mean_N2"].reason


def test_no_hr_no_ecg():
    rec = Recording(signals={"SPO2": Signal("SPO2", np.full(100, 96.0), 1.0, "%")},
                    stages=np.array(["N2"] * 4))
    with pytest.raises(MissingChannelError):
        heart_rate_series(rec)
    with pytest.raises(MissingChannelError):
        heart_rate_measures(rec)


def test_flat_ecg_is_quality_error():
    rec = Recording(signals={"ECG": Signal("ECG", np.zeros(int(60 * FS)), FS, "µV")})
    with pytest.raises(SignalQualityError):
        heart_rate_measures(rec)


def test_heart_rate_around_apneas_and_hypopneas(ecg_data):
    """Bradycardia during each event, a rise after it: the known rates come back, from the HR
    channel and from the ECG's R-peaks alike."""
    hr = np.full(int(DUR), 64.0)
    events = []
    for k, onset in enumerate(range(900, 1500, 60)):  # 10 events of 20 s in N2/N3
        hr[onset:onset + 20] = 56.0
        hr[onset + 20:onset + 28] = 80.0  # 8 s at 80 bpm after each: the 5-s peak is 80
        events.append({"onset": float(onset), "duration": 20.0,
                       "type": "hypopnea" if k % 2 else "obstructive_apnea"})
    events.append({"onset": 1600.0, "duration": 12.0, "type": "arousal"})  # not respiratory
    events.append({"onset": DUR - 10.0, "duration": 8.0, "type": "central_apnea"})  # no after
    rec = Recording(signals={"HR": hr_channel(hr)}, stages=STAGES, events=make_events(events))
    m = by_name(respiratory_event_heart_rate(rec))
    assert list(m) == ["hr_resp_event_mean", "hr_resp_post_peak", "hr_resp_rise"]
    assert m["hr_resp_event_mean"].value == pytest.approx(56.0)
    assert m["hr_resp_post_peak"].value == pytest.approx(80.0)
    assert m["hr_resp_rise"].value == pytest.approx(24.0)
    assert len(m["hr_resp_rise"].evidence.event_ids) == 10
    assert "10 of 11 apneas and hypopneas" in m["hr_resp_rise"].evidence.note
    assert f"{POST_EVENT_SEC:g} s after" in m["hr_resp_post_peak"].label

    # no apnea or hypopnea scored: missing, with the reason
    quiet = Recording(signals={"HR": hr_channel(hr)}, stages=STAGES,
                      events=make_events([{"onset": 100.0, "duration": 5.0, "type": "arousal"}]))
    for meas in respiratory_event_heart_rate(quiet):
        assert meas.value is None and "no apneas or hypopneas scored" in meas.reason

    # the same from the ECG's beats (a real R-peak detector, not the HR channel)
    ecg, _ = ecg_data
    rec_ecg = Recording(signals={"ECG": Signal("ECG", ecg, FS, "µV")}, stages=STAGES,
                        events=make_events(events[:10]))
    e = by_name(respiratory_event_heart_rate(rec_ecg))
    # the synthetic ECG beats at the stage rates (N2 62, N3 56 bpm): no rise after the events
    assert 55.0 <= e["hr_resp_event_mean"].value <= 63.0
    assert abs(e["hr_resp_rise"].value) < 5.0
    assert "ECG R-peaks" in e["hr_resp_rise"].reason
