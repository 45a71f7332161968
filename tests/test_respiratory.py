"""AHI under both hypopnea rules, by position and stage, on a night with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from sleeplm.clinical.respiratory import ahi_severity, respiratory_events, respiratory_measures
from sleeplm.recording import POSITIONS, Recording, RecordingInfo, Signal, make_events

# 1 hour: epochs 0-9 wake (0-300 s), 10-89 N2 (300-2700 s), 90-119 REM (2700-3600 s).
STAGES = ["W"] * 10 + ["N2"] * 80 + ["R"] * 30
TST_H = 110 * 30 / 3600


def _dip(spo2: np.ndarray, start: int, depth: float) -> None:
    """A desaturation: 12-s fall of ``depth`` %, 15-s recovery (1-Hz samples)."""
    fall = np.linspace(0, depth, 13)
    rise = np.linspace(depth, 0, 16)[1:]
    shape = np.r_[fall, rise]
    spo2[start : start + shape.size] -= shape


def _night(with_spo2: bool = True, with_stages: bool = True, with_position: bool = True):
    spo2 = np.full(3600, 96.0)
    events = []

    def add(onset, etype, duration=15.0, desat=None, arousal=False):
        events.append({"onset": onset, "duration": duration, "type": etype, "label": etype})
        if desat:
            _dip(spo2, int(onset + duration + 5), desat)
        if arousal:
            events.append({"onset": onset + duration + 1, "duration": 5, "type": "arousal",
                           "label": "Arousal (ARES)", "attributes": {"cause": "respiratory"}})

    add(100, "obstructive_apnea", desat=5)  # in wake: never counted
    for t in (400, 500, 600, 700, 800):  # supine N2 (position: supine until 1800 s)
        add(t, "obstructive_apnea", desat=4.5)
    add(900, "mixed_apnea", desat=4.5)
    for t in (1000, 1100, 1200, 1300):  # >= 4 % desaturation: both rules
        add(t, "hypopnea", desat=5.0)
    for t in (1900, 2000, 2100):  # 3.5 %: 3 % rule only (non-supine)
        add(t, "hypopnea", desat=3.5)
    for t in (2200, 2300):  # arousal, no desaturation: 3 % rule only
        add(t, "hypopnea", arousal=True)
    for t in (2400, 2500):  # neither
        add(t, "hypopnea")
    for t in (2800, 3000):  # central apneas in REM, non-supine
        add(t, "central_apnea", desat=4.0)

    signals = {}
    if with_spo2:
        signals["SPO2"] = Signal("SPO2", spo2, 1.0, "%", "SaO2")
    if with_position:
        pos = np.where(np.arange(3600) < 1800, POSITIONS.index("supine"), POSITIONS.index("left"))
        signals["POSITION"] = Signal("POSITION", pos.astype(float), 1.0, "position", "Position")
    if not signals:
        signals["THORAX"] = Signal("THORAX", np.sin(np.arange(36000) / 5), 10.0, "uV")
    return Recording(signals=signals, stages=np.array(STAGES) if with_stages else None,
                     events=make_events(events), info=RecordingInfo(patient_id="resp"))


def _m(measures):
    return {m.name: m for m in measures}


def test_hypopnea_rules_and_ahi():
    m = _m(respiratory_measures(_night()))
    assert m["obstructive_apnea_count"].value == 5  # the wake apnea is excluded
    assert m["mixed_apnea_count"].value == 1
    assert m["central_apnea_count"].value == 2
    assert m["hypopnea_count"].value == 11
    assert m["hypopnea_3a_count"].value == 9
    assert m["hypopnea_4_count"].value == 4
    assert m["ahi_3a"].value == pytest.approx((8 + 9) / TST_H)
    assert m["ahi_4"].value == pytest.approx((8 + 4) / TST_H)
    assert m["apnea_index"].value == pytest.approx(8 / TST_H)
    assert m["central_apnea_index"].value == pytest.approx(2 / TST_H)
    assert m["ahi_3a"].unit == "events/h"
    assert "SpO2 signal" in m["ahi_3a"].reason
    assert len(m["ahi_3a"].evidence.event_ids) == 17


def test_positional_and_stage_ahi():
    m = _m(respiratory_measures(_night()))
    # supine sleep: 300-1800 s = 25 min; events 400..1300 (10 counted under 3 %/arousal rule)
    assert m["supine_sleep_min"].value == pytest.approx(25.0)
    assert m["ahi_supine"].value == pytest.approx(10 / (25 / 60))
    assert m["ahi_nonsupine"].value == pytest.approx(7 / (30 / 60))
    assert m["ahi_rem"].value == pytest.approx(2 / (15 / 60))
    assert m["ahi_nrem"].value == pytest.approx(15 / (40 / 60))


def test_scored_desaturations_replace_missing_spo2():
    rec = _night(with_spo2=False)
    # Score the desaturations instead, as NSRR files carry them (baseline/nadir).
    rows = rec.events.to_dict("records")
    for e in list(rows):
        if e["type"] == "hypopnea" and 1000 <= e["onset"] <= 1300:
            rows.append({"onset": e["onset"] + 20, "duration": 20, "type": "desaturation",
                         "label": "SpO2 desaturation",
                         "attributes": {"spo2_baseline": 96.0, "spo2_nadir": 91.0}})
    rec.events = make_events(rows)
    m = _m(respiratory_measures(rec))
    assert m["hypopnea_4_count"].value == 4
    assert m["hypopnea_3a_count"].value == 4 + 2  # plus the two with arousals
    assert "scored desaturation events" in m["ahi_3a"].reason


def test_home_sleep_apnea_test_without_staging():
    rec = _night(with_stages=False)
    m = _m(respiratory_measures(rec))
    # every event counts (the 'wake' apnea too), per hour of monitoring time
    assert m["ahi_3a"].value == pytest.approx(18)
    assert "monitoring time" in m["ahi_3a"].reason
    assert m["ahi_rem"].value is None and "no sleep staging" in m["ahi_rem"].reason


def test_no_position_information():
    m = _m(respiratory_measures(_night(with_position=False)))
    assert m["ahi_supine"].value is None
    assert "POSITION" in m["ahi_supine"].reason


def test_event_table_columns():
    ev = respiratory_events(_night())
    assert {"desat_depth", "arousal", "counts_3a", "counts_4", "position", "stage"} <= set(ev.columns)
    first_hyp = ev[ev["type"] == "hypopnea"].iloc[0]
    assert first_hyp["desat_depth"] == pytest.approx(5.0, abs=0.6)
    assert first_hyp["position"] == "supine" and first_hyp["stage"] == "N2"


@pytest.mark.parametrize("ahi,category", [(2, "none (normal)"), (5, "mild"), (14.9, "mild"),
                                          (15, "moderate"), (30, "severe"), (None, "not assessable")])
def test_severity(ahi, category):
    assert ahi_severity(ahi) == category


def test_no_scored_events_is_not_an_ahi_of_zero():
    from sleeplm.clinical.arousals import arousal_measures
    from sleeplm.errors import MissingChannelError

    hypnogram_only = Recording(stages=np.array(STAGES))
    with pytest.raises(MissingChannelError, match="no annotations were given"):
        respiratory_measures(hypnogram_only)
    with pytest.raises(MissingChannelError, match="no annotations were given"):
        arousal_measures(hypnogram_only)
    hypnogram_only.info.annotation_source = "text hypnogram"
    with pytest.raises(MissingChannelError, match="no respiratory channel"):
        respiratory_measures(hypnogram_only)
    # A PSG with respiratory channels whose annotations hold no apnea: a real zero, said so.
    rec = _night()
    rec.events = rec.events[~rec.events["type"].isin(
        ["obstructive_apnea", "central_apnea", "mixed_apnea", "hypopnea"])].reset_index(drop=True)
    rec.info.annotation_source = "nsrr-xml"
    m = _m(respiratory_measures(rec))
    assert m["ahi_3a"].value == 0 and "no apneas or hypopneas in the annotations" in m["ahi_3a"].reason
