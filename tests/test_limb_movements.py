"""Tests of sleeplm.clinical.limb_movements on synthetic leg EMG with known movements."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sleeplm.clinical.limb_movements import (
    LM_COLUMNS,
    _respiratory_excluded,
    detect_leg_movements,
    periodic_limb_movements,
    plm_measures,
)
from sleeplm.errors import MissingChannelError, SignalQualityError
from sleeplm.recording import EventType, Recording, Signal, make_events

FS = 200.0
N_SEC = 3600
STAGES = np.array(["W"] * 10 + ["N2"] * 110)  # 5 min wake, then 55 min N2
TST_H = 110 * 30 / 3600

# --- the truth
SERIES = [600.0 + 20 * k for k in range(30)]              # 30 PLMs (left; every 3rd bilateral)
BILATERAL = SERIES[::3]
ISOLATED = [1500.0, 1700.0, 2000.0, 2200.0, 2210.0]       # LMs, never PLMs
RESP_SERIES = [2500.0 + 25 * k for k in range(5)]         # right leg; the 3rd follows an apnea
APNEA = (2530.0, 19.8)                                    # ends 0.2 s before the LM at 2550
WAKE_LMS = [100.0, 200.0]                                 # LMs in wake: not in the sleep indices
DURATION = 1.5
N_SLEEP_LMS = len(SERIES) + len(ISOLATED) + len(RESP_SERIES)  # 40
N_PLMS = len(SERIES)                                          # 30


def _burst(x: np.ndarray, rng, onset: float, dur: float, sd: float) -> None:
    a, b = int(round(onset * FS)), int(round((onset + dur) * FS))
    x[a:b] += rng.normal(0, sd, b - a)


def synth_emg(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left and right leg EMG (µV): 2 µV noise, 30 µV bursts at the known times."""
    rng = np.random.default_rng(seed)
    n = int(N_SEC * FS)
    left = rng.normal(0, 2.0, n)
    right = rng.normal(0, 2.0, n)
    for t in SERIES + ISOLATED + WAKE_LMS:
        _burst(left, rng, t, DURATION, 30.0)
    for t in BILATERAL:
        _burst(right, rng, t + 0.3, DURATION, 30.0)     # overlapping -> one bilateral LM
    for t in RESP_SERIES:
        _burst(right, rng, t, DURATION, 30.0)
    _burst(left, rng, 3000.0, 12.0, 30.0)   # too long (> 10 s): no LM
    _burst(left, rng, 3100.0, 0.3, 30.0)    # too short (< 0.5 s): no LM
    _burst(left, rng, 3200.0, 2.0, 4.0)     # too small (< 8 µV above rest): no LM
    return left, right


@pytest.fixture(scope="module")
def emg():
    return synth_emg()


def emg_recording(left, right, *, stages=STAGES, events=None) -> Recording:
    signals = {}
    if left is not None:
        signals["EMG_LEG"] = Signal("EMG_LEG", left, FS, "µV")
    if right is not None:
        signals["EMG_LEG_R"] = Signal("EMG_LEG_R", right, FS, "µV")
    if events is None:
        events = make_events([{"onset": APNEA[0], "duration": APNEA[1],
                               "type": EventType.OBSTRUCTIVE_APNEA}])
    return Recording(signals=signals, stages=stages, events=events)


def by_name(measures):
    return {m.name: m for m in measures}


# ------------------------------------------------------------------------------- detection
def test_detect_leg_movements_finds_the_known_movements(emg):
    lm = detect_leg_movements(emg_recording(*emg))
    assert list(lm.columns) == list(LM_COLUMNS)
    truth = np.sort(np.array(WAKE_LMS + SERIES + ISOLATED + RESP_SERIES))
    assert len(lm) == truth.size
    # onset within 0.1 s: the 0.1-s envelope window blurs edges by at most half of it
    np.testing.assert_allclose(lm["onset"].to_numpy(), truth, atol=0.1)
    bil = lm[lm["side"] == "bilateral"]
    np.testing.assert_allclose(bil["onset"].to_numpy(), BILATERAL, atol=0.1)
    np.testing.assert_allclose(bil["duration"].to_numpy(), DURATION + 0.3, atol=0.15)
    mono = lm[lm["side"] != "bilateral"]
    np.testing.assert_allclose(mono["duration"].to_numpy(), DURATION, atol=0.15)
    assert set(lm["side"]) == {"left", "right", "bilateral"}
    assert (lm.loc[lm["onset"].between(2490, 2610), "side"] == "right").all()
    assert (lm["peak_uv"] > 15).all()


def test_single_leg_channel(emg):
    left, _ = emg
    lm = detect_leg_movements(emg_recording(left, None))
    assert set(lm["side"]) == {"single"}
    assert len(lm) == len(WAKE_LMS) + len(SERIES) + len(ISOLATED)


def test_no_leg_emg_channel():
    rec = Recording(signals={"SPO2": Signal("SPO2", np.full(100, 96.0), 1.0, "%")})
    with pytest.raises(MissingChannelError):
        detect_leg_movements(rec)


def test_flat_leg_emg_is_quality_error():
    rec = emg_recording(np.zeros(int(60 * FS)), None, stages=np.array(["N2"] * 2),
                        events=make_events())
    with pytest.raises(SignalQualityError):
        detect_leg_movements(rec)
    with pytest.raises(SignalQualityError):  # and nothing scored to fall back to
        plm_measures(rec)


# ----------------------------------------------------------------------- PLM series rules
def lms(onsets, dur=1.0, index=None) -> pd.DataFrame:
    return pd.DataFrame({"onset": np.asarray(onsets, float), "duration": dur}, index=index)


def test_plm_series_rules():
    assert periodic_limb_movements(lms([0, 20, 40, 60, 80, 100])).all()
    assert not periodic_limb_movements(lms([0, 20, 40])).any()
    # an interval < 5 s or > 90 s ends the series
    s = periodic_limb_movements(lms([0, 20, 24, 44, 64, 84]))
    assert s.tolist() == [False, False, True, True, True, True]
    s = periodic_limb_movements(lms([0, 20, 40, 60, 155, 175, 195]))
    assert s.tolist() == [True] * 4 + [False] * 3
    # limits are inclusive: 5 s and 90 s
    assert periodic_limb_movements(lms([0, 5, 95, 100])).all()
    assert periodic_limb_movements(lms([])).empty


def test_plm_keeps_index_and_order():
    df = lms([60, 0, 40, 20], index=[7, 3, 9, 1])
    s = periodic_limb_movements(df)
    assert s.index.tolist() == [7, 3, 9, 1] and s.all() and s.dtype == bool


def test_respiratory_exclusion_breaks_series():
    onsets = [0, 25, 50, 75, 100]
    resp = pd.DataFrame({"onset": [30.0], "duration": [19.8]})  # ends at 49.8 s
    assert periodic_limb_movements(lms(onsets)).all()
    assert not periodic_limb_movements(lms(onsets), respiratory=resp).any()
    # 0.5 s window on both sides of the event, and during it
    for on, excluded in ((50.2, True), (50.4, False), (29.0, True), (28.0, False), (40.0, True)):
        df = lms([on], dur=0.5)
        assert bool(_respiratory_excluded(df, resp)[0]) is excluded, on


# ------------------------------------------------------------------------------- measures
@pytest.fixture(scope="module")
def emg_measures(emg):
    return by_name(plm_measures(emg_recording(*emg)))


def test_plm_measures_from_emg(emg_measures):
    m = emg_measures
    assert [k for k in m] == ["lm_index", "plm_count", "plmi"]
    assert m["lm_index"].value == pytest.approx(N_SLEEP_LMS / TST_H)
    assert m["plm_count"].value == N_PLMS and m["plm_count"].unit == "count"
    assert m["plmi"].value == pytest.approx(N_PLMS / TST_H)
    assert m["plmi"].unit == "events/h"
    starts = [a for a, _ in m["plmi"].evidence.intervals]
    np.testing.assert_allclose(starts, SERIES, atol=0.1)
    assert len(m["lm_index"].evidence.intervals) == N_SLEEP_LMS
    assert "leg EMG" in m["plmi"].reason


def test_without_respiratory_events_the_second_series_counts(emg):
    m = by_name(plm_measures(emg_recording(*emg, events=make_events())))
    assert m["plm_count"].value == N_PLMS + len(RESP_SERIES)


def test_unstaged_counts_everything_per_monitoring_hour(emg):
    m = by_name(plm_measures(emg_recording(*emg, stages=None)))
    assert m["lm_index"].value == pytest.approx(N_SLEEP_LMS + len(WAKE_LMS))
    assert m["plmi"].value == pytest.approx(N_PLMS)
    for v in m.values():
        assert "no sleep staging" in v.reason and "monitoring time" in v.reason


def scored_events(with_plm: bool = False) -> pd.DataFrame:
    rows = [{"onset": t, "duration": DURATION, "type": EventType.LIMB_MOVEMENT}
            for t in WAKE_LMS + SERIES + ISOLATED + RESP_SERIES]
    rows.append({"onset": APNEA[0], "duration": APNEA[1], "type": EventType.HYPOPNEA})
    if with_plm:
        rows += [{"onset": t, "duration": DURATION, "type": EventType.PLM}
                 for t in (150.0, 700.0, 720.0, 740.0, 760.0)]
    return make_events(rows)


def test_plm_measures_from_scored_limb_movements():
    rec = Recording(stages=STAGES, events=scored_events())
    m = by_name(plm_measures(rec))
    assert m["lm_index"].value == pytest.approx(N_SLEEP_LMS / TST_H)
    assert m["plm_count"].value == N_PLMS
    assert "scored limb-movement events" in m["plmi"].reason
    ev = rec.events
    ids = ev.index[(ev["type"] == "limb_movement") & ev["onset"].isin(SERIES)].tolist()
    assert m["plmi"].evidence.event_ids == sorted(ids)


def test_scored_per_leg_events_are_combined():
    rows = [{"onset": t, "duration": DURATION, "type": "limb_movement", "channel": "left"}
            for t in SERIES]
    rows += [{"onset": t + 0.3, "duration": DURATION, "type": "limb_movement", "channel": "right"}
             for t in SERIES]
    m = by_name(plm_measures(Recording(stages=STAGES, events=make_events(rows))))
    assert m["plm_count"].value == N_PLMS
    assert len(m["plmi"].evidence.event_ids) == 2 * N_PLMS


def test_scored_plm_events_count_directly():
    rec = Recording(stages=STAGES, events=scored_events(with_plm=True))
    m = by_name(plm_measures(rec))
    # 4 of the 5 PLM events are in sleep (150 s is wake); LM events at 700-760 s overlap them
    assert m["plm_count"].value == 4
    assert m["lm_index"].value == pytest.approx(N_SLEEP_LMS / TST_H)
    assert "scored PLM events" in m["plmi"].reason


def test_plm_measures_missing_without_source():
    rec = Recording(signals={"SPO2": Signal("SPO2", np.full(3600, 96.0), 1.0, "%")},
                    stages=STAGES)
    with pytest.raises(MissingChannelError, match="EMG_LEG.*limb-movement"):
        plm_measures(rec)
