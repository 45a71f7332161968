"""Captions: hand-made facts, determinism, missing channels, JSON facts, truth on a short night."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from sleeplm.captions import Caption, NightCaptions, caption_night
from sleeplm.captions.phrasing import article, compose, Clause, make_rng
from sleeplm.recording import Recording, RecordingInfo, Signal, make_events

ROOT = Path(__file__).resolve().parents[1]


def _load_truth_module():
    spec = importlib.util.spec_from_file_location("caption_truth", ROOT / "benchmarks" / "caption_truth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- hand-made
def _apnea_recording() -> Recording:
    n_sec = 600
    t = np.arange(n_sec)
    spo2 = np.full(n_sec, 95.0)
    spo2[150:166] = np.linspace(95.0, 90.0, 16)
    spo2[166:186] = np.linspace(90.0, 95.0, 20)
    fs = 10.0
    tf = np.arange(int(n_sec * fs)) / fs
    flow = np.sin(2 * np.pi * 0.25 * tf)
    flow[(tf >= 120) & (tf < 144)] *= 0.05
    signals = {
        "SPO2": Signal("SPO2", spo2, 1.0, "%"),
        "AIRFLOW": Signal("AIRFLOW", flow, fs, "a.u."),
        "POSITION": Signal("POSITION", np.r_[np.zeros(n_sec - 30), np.ones(30)], 1.0, "position"),
        "HR": Signal("HR", 60 + 2 * np.sin(t / 40.0), 1.0, "bpm"),
    }
    events = make_events([
        {"onset": 120.0, "duration": 24.0, "type": "obstructive_apnea"},
        {"onset": 150.0, "duration": 36.0, "type": "desaturation",
         "attributes": {"spo2_baseline": 95.0, "spo2_nadir": 90.0}},
    ])
    return Recording(signals=signals, stages=np.array(["N2"] * 20), events=events,
                     info=RecordingInfo(patient_id="hand", annotation_source="test"))


@pytest.fixture(scope="module")
def apnea_captions() -> NightCaptions:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return caption_night(_apnea_recording(), seed=0)


def test_apnea_event_sentence(apnea_captions):
    apneas = [c for c in apnea_captions.events if c.facts.get("event") == "obstructive_apnea"]
    assert len(apneas) == 1
    c = apneas[0]
    assert c.facts["duration_s"] == 24 and "24-s obstructive apnea" in c.text
    assert c.facts["desat_drop_pct"] == 5 and c.facts["desat_nadir_pct"] == 90
    assert "5% desaturation to 90%" in c.text
    assert c.facts["stage"] == "N2" and c.facts["position"] == "supine"
    assert c.facts["effort"] == "continuing" and c.facts["arousal"] is False
    assert "supine" in c.text and "N2" in c.text
    desat = [c for c in apnea_captions.events if c.facts.get("event") == "desaturation"]
    assert len(desat) == 1 and desat[0].facts["desat_nadir_pct"] == 90
    assert desat[0].facts["after_event"] == "obstructive_apnea"


def test_epoch_with_and_without_events(apnea_captions):
    ep4 = {c.system: c for c in apnea_captions.epochs[4].captions}  # 120-150 s: the apnea
    assert ep4["respiration"].facts["respiratory_events"] == ["obstructive_apnea"]
    assert "obstructive apnea" in ep4["respiration"].text
    ep0 = {c.system: c for c in apnea_captions.epochs[0].captions}
    assert ep0["respiration"].facts["respiratory_events"] == []
    assert any(p in ep0["respiration"].text.lower() for p in
               ("no respiratory events", "no apnea or hypopnea", "without scored events"))
    assert not [c for c in apnea_captions.events if c.start < 30 and c.end > 0]
    ep5 = {c.system: c for c in apnea_captions.epochs[5].captions}  # desaturation starts
    assert ep5["respiration"].facts["desaturations"] == [{"drop_pct": 5, "nadir_pct": 90}]
    assert "brain" in apnea_captions.missing  # no EEG in this recording


def test_article_and_compose():
    assert article("8% desaturation") == "an 8% desaturation"
    assert article("18-s apnea") == "an 18-s apnea"
    assert article("24-s apnea") == "a 24-s apnea"
    assert article("obstructive apnea") == "an obstructive apnea"
    text, facts = compose(make_rng(0, 1), [Clause(["x 1"], {"a": np.int64(1)}),
                                          Clause(["y 2"], {"b": np.float32(2.0)})])
    assert facts == {"a": 1, "b": 2.0} and text.endswith(".")
    assert isinstance(facts["a"], int)


# ----------------------------------------------------------------------------- simulated
STAGES = (["W"] * 6 + ["N1"] * 4 + ["N2"] * 40 + ["N3"] * 40 + ["N2"] * 20 + ["R"] * 40
          + ["N2"] * 20 + ["W"] * 10)


@pytest.fixture(scope="module")
def short_night():
    from sleeplm.simulate import simulate_night

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate_night(np.array(STAGES), "osa_moderate", seed=5)


@pytest.fixture(scope="module")
def short_no_hr(short_night):
    rec = short_night.recording
    return dataclasses.replace(rec, signals={k: v for k, v in rec.signals.items() if k != "HR"})


@pytest.fixture(scope="module")
def short_captions(short_no_hr):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return caption_night(short_no_hr, seed=0)


def test_determinism(short_no_hr, short_captions):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = caption_night(short_no_hr, seed=0)
        other = caption_night(short_no_hr, seed=1)
    assert again.model_dump() == short_captions.model_dump()
    texts0 = [c.text for e in short_captions.epochs for c in e.captions]
    texts1 = [c.text for e in other.epochs for c in e.captions]
    assert texts0 != texts1
    facts0 = [c.facts for e in short_captions.epochs for c in e.captions]
    facts1 = [c.facts for e in other.epochs for c in e.captions]
    assert facts0 == facts1
    assert [c.facts for c in short_captions.events] == [c.facts for c in other.events]
    assert [c.facts for c in short_captions.night] == [c.facts for c in other.night]


def test_all_levels_and_json(short_night, short_captions):
    nc = short_captions
    n = short_night.recording.n_epochs
    assert len(nc.epochs) == n
    assert [e.stage for e in nc.epochs] == list(short_night.recording.stages)
    assert nc.events and nc.segments and nc.night
    assert len(nc.segments) == int(np.ceil(n / 10))
    systems = {c.system for e in nc.epochs for c in e.captions}
    assert systems == {"brain", "cardiac", "respiration", "somatic", "holistic"}
    for c in [c for e in nc.epochs for c in e.captions] + nc.events + nc.segments + nc.night:
        assert isinstance(c, Caption) and c.text
        json.dumps(c.facts)  # facts are JSON-serialisable
    json.dumps(nc.model_dump())


def test_numbers_in_text(short_captions):
    """Every number in an epoch caption's facts is written in its text (zero as "no ...")."""
    for e in short_captions.epochs[::7]:
        for c in e.captions:
            for k, v in c.facts.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0:
                    assert f"{abs(v):g}" in c.text, (k, v, c.text)
                elif v == 0 and not isinstance(v, bool):
                    assert any(w in c.text.lower() for w in ("no ", "quiet", "steady", "stable")), (k, c.text)


def test_no_eeg_night(short_night):
    rec = short_night.recording
    no_eeg = dataclasses.replace(rec, signals={k: v for k, v in rec.signals.items()
                                               if not k.startswith(("EEG", "EOG"))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nc = caption_night(no_eeg, seed=0)
    assert "brain" in nc.missing and "EEG" in nc.missing["brain"]
    systems = {c.system for e in nc.epochs for c in e.captions}
    assert {"respiration", "cardiac", "somatic", "holistic"} <= systems
    assert "brain" not in systems
    assert any(c.facts.get("respiratory_events") for e in nc.epochs for c in e.captions)


def test_truth_short_night(short_night, short_captions):
    mod = _load_truth_module()
    res = mod.truth_check(short_night, short_captions, hr_truth_rec=short_night.recording)
    assert res["stage_accuracy"] == 1.0
    for section in ("epoch_events", "event_captions"):
        for key, d in res[section].items():
            if d["n_true"]:
                assert d["precision"] >= 0.95 and d["recall"] >= 0.95, (section, key, d)
    for key, d in res["micro"].items():
        assert d["epochs_true"] > 0, key
        assert d["precision"] >= 0.7 and d["recall"] >= 0.7, (key, d)
    assert res["duration_within_2s"] >= 0.95
    if res["n_nadirs"]:
        assert res["nadir_within_1pct"] >= 0.95
    assert res["hr_within_3bpm"] >= 0.95
