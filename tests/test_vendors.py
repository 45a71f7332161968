"""Vendor exports read right: files written with the labels, units, rates, digital ranges and
EDF+ annotation texts of the PSG systems clinics and cohorts use (docs/VENDORS.md).

Each writer reproduces what a system's export looks like in its header: a Nox A1 file holds the
referential electrodes in µV *and* the AASM derivations in V, UTF-8 labels (``1 Impédance``,
``RIP Phase °``), labels cut at 16 characters and thirty kinds of auxiliary channels; an
Alice file has two channels labelled ``Flow Patient``; a SOMNOmedics file has German labels,
``A:B`` derivations and its own position codes; an MrOS visit-1 file has C3, C4, A1 and A2
referential electrodes only, so the reader derives C3-A2 and C4-A1 itself.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import edfio
import numpy as np
import pytest

from sleeplm.io import read_recording
from sleeplm.io.edf import decode_header_text
from sleeplm.io.montage import auxiliary_kind, detect_system
from sleeplm.recording import POSITIONS, EventType

SECONDS = 120


def _wave(rate: float, seed: int, scale: float = 30.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(SECONDS * rate)
    return scale * np.sin(2 * np.pi * 1.3 * np.arange(n) / rate) + rng.normal(0, scale / 10, n)


def write_export(path: Path, channels: list[tuple[str, str, float, np.ndarray]], *,
                 recording: str = "", annotations: list[tuple[float, float, str]] = (),
                 raw_labels: dict[int, bytes] | None = None,
                 raw_units: dict[int, bytes] | None = None) -> Path:
    """Write an EDF(+) with exactly these (label, unit, rate, data) channels.

    ``raw_labels`` / ``raw_units`` patch header fields with bytes edfio would refuse (UTF-8
    text, as some exports write it)."""
    signals = []
    for label, unit, rate, data in channels:
        lo, hi = float(np.min(data)), float(np.max(data))
        pad = max(abs(hi - lo) * 0.01, 1e-6)
        signals.append(edfio.EdfSignal(np.asarray(data, float), sampling_frequency=rate,
                                       label=label, physical_dimension=unit,
                                       physical_range=(lo - pad, hi + pad)))
    rec = None
    if recording:
        rec = edfio.Recording(startdate=dt.date(2024, 3, 7), hospital_administration_code="X",
                              investigator_technician_code="X", equipment_code=recording)
    edfio.Edf(signals, patient=edfio.Patient(code="PT-1", sex="F"), recording=rec,
              starttime=dt.time(22, 0, 0), data_record_duration=1,
              annotations=[edfio.EdfAnnotation(o, d, text) for o, d, text in annotations]
              ).write(path)
    ns = len(channels) + (1 if annotations else 0)
    with open(path, "r+b") as f:
        for i, raw in (raw_labels or {}).items():
            f.seek(256 + 16 * i)
            f.write(raw.ljust(16, b" ")[:16])
        for i, raw in (raw_units or {}).items():
            f.seek(256 + ns * 96 + 8 * i)
            f.write(raw.ljust(8, b" ")[:8])
    return path


# ------------------------------------------------------------------ Nox A1 (Noxturnal)
def _nox(tmp_path: Path, *, lateral_marker: str = "position-left") -> tuple[Path, dict]:
    eeg = {name: _wave(200, k) for k, name in enumerate(("C3", "C4", "E1", "E2", "O1", "M1",
                                                          "M2"))}
    deriv = {"C3-M2": eeg["C3"] - eeg["M2"], "C4-M1": eeg["C4"] - eeg["M1"],
             "E1-M2": eeg["E1"] - eeg["M2"], "O1-M2": eeg["O1"] - eeg["M2"]}
    sat = np.linspace(93.8, 96.1, 3 * SECONDS)
    angle = np.concatenate([np.zeros(20 * 60), np.full(20 * 60, 90.0)])  # supine, then +90
    chans = [(k, "uV", 200, v) for k, v in eeg.items()]
    chans += [(k, "V", 200, v * 1e-6) for k, v in deriv.items()]  # Nox stores these in V
    chans += [
        ("Saturation", "%", 3, sat), ("SpO2 B-B", "%", 3, sat - 0.4),
        ("Pulse", "bpm", 3, np.full(3 * SECONDS, 61.0)), ("PosAngle", "deg", 20, angle),
        ("Chest", "", 25, _wave(25, 11, 1)), ("Abdomen", "", 25, _wave(25, 12, 1)),
        ("RIP Sum", "", 25, _wave(25, 13, 1)), ("RIP Flow", "", 25, _wave(25, 14, 1)),
        ("RIP Phase", "deg", 1, np.full(SECONDS, 12.0)),
        ("Nasal Pressure", "cmH2O", 200, _wave(200, 15, 1)), ("Flow", "", 200, _wave(200, 16, 1)),
        ("Snore", "", 200, _wave(200, 17, 1)),
        ("1 Impedance", "kOhm", 1, np.full(SECONDS, 4.0)),
        ("Left Leg Impedan", "kOhm", 1, np.full(SECONDS, 5.0)),
        ("Voltage (battery", "V", 1, np.full(SECONDS, 1.4)),
        ("Voltage (bluetoo", "V", 1, np.full(SECONDS, 3.1)),
        ("Light", "", 1, np.zeros(SECONDS)), ("Audio Volume dB", "dB", 100, _wave(100, 18, 5)),
        ("X Axis", "g", 20, _wave(20, 19, 0.1)), ("Activity", "", 20, _wave(20, 20, 0.1)),
    ]
    idx = {c[0]: i for i, c in enumerate(chans)}
    path = write_export(
        tmp_path / "nox-a1.edf", chans, recording="Nox_A1",
        annotations=[(0, 30, "sleep-n2,Manual"), (30, 30, "sleep-n2,Manual"),
                     (60, 30, "sleep-n3,Manual"), (90, 30, "sleep-rem,Manual"),
                     (40, 14, "apnea-obstructive,Manual"), (58, 10, "hypopnea,Manual"),
                     (62, 20, "oxygensaturation-drop,Manual"), (75, 1, "snorebreath,Manual"),
                     (80, 5, "arousal-respiratory,Manual"), (85, 1, "breath-normal,Manual"),
                     (70, 0, f"{lateral_marker},Manual")],
        # UTF-8 as Noxturnal writes it: the label "1 Impédance", the unit of the angles "°"
        raw_labels={idx["1 Impedance"]: "1 Impédance".encode(),
                    idx["RIP Phase"]: "RIP Phase °".encode()},
        raw_units={idx["PosAngle"]: "°".encode(), idx["RIP Phase"]: "°".encode()})
    return path, {"eeg": eeg, "sat": sat}


def test_nox_export_takes_aasm_derivations_spo2_and_sets_auxiliaries_apart(tmp_path):
    path, truth = _nox(tmp_path)
    rec = read_recording(path)
    assert rec.system == "Nox (Noxturnal)"
    # AASM derivations taken (stored in V, read in µV), not the referential electrodes
    for canon, label in (("EEG_C3", "C3-M2"), ("EEG_C4", "C4-M1"), ("EOG_L", "E1-M2"),
                         ("EEG_O", "O1-M2")):
        assert rec[canon].label == label and rec[canon].unit == "µV"
    np.testing.assert_allclose(rec.signals["EEG_C3"].data, truth["eeg"]["C3"] - truth["eeg"]["M2"],
                               atol=0.05)
    # no E2-M1 in the file: derived from the referential E2 and M1
    assert rec.signals["EOG_R"].label == "E2-M1 (derived)"
    np.testing.assert_allclose(rec.signals["EOG_R"].data, truth["eeg"]["E2"] - truth["eeg"]["M1"],
                               atol=0.05)
    assert "C3" in rec.signals and rec.signals["C3"].unit == "µV"  # kept under its own label
    # oximetry found: the averaged saturation, not the beat-to-beat one
    assert rec.signals["SPO2"].label == "Saturation"
    assert 93.7 < np.nanmin(rec.signals["SPO2"].data) and np.nanmax(rec.signals["SPO2"].data) < 96.2
    assert rec.signals["HR"].label == "Pulse" and rec.signals["THORAX"].label == "Chest"
    assert rec.signals["NASAL_PRESSURE"].label == "Nasal Pressure" and "AIRFLOW" not in rec.signals
    # position from the angle: supine first, then left (checked against the left marker)
    pos = rec.signals["POSITION"].data
    assert pos[0] == POSITIONS.index("supine") and pos[-1] == POSITIONS.index("left")
    # labels readable (UTF-8), auxiliary channels listed apart and not read
    report = {e.label: e for e in rec.channel_report}
    assert "1 Impédance" in report and "RIP Phase °" in report
    assert not any("Ã" in e.label for e in rec.channel_report)
    aux = {e.label for e in rec.channel_report if e.role == "auxiliary"}
    assert aux == {"1 Impédance", "Left Leg Impedan", "Voltage (battery", "Voltage (bluetoo",
                   "Light", "Audio Volume dB", "X Axis", "Activity"}
    assert not aux & {s.label for s in rec.signals.values()} and rec.auxiliary == {}
    assert "impedance" in report["1 Impédance"].reason
    # the reading report says what each channel was taken as, and why
    text = rec.reading_report()
    assert "C3-M2 -> EEG_C3: AASM derivation, preferred over referential C3" in text
    assert "Saturation -> SPO2" in text and "SpO2 B-B" in text
    assert report["RIP Flow"].role == "physiological" and "RIP" in report["RIP Flow"].reason
    assert "agrees with 1 of 1" in report["PosAngle"].reason


def test_nox_events_stages_and_unknown_labels(tmp_path):
    path, _ = _nox(tmp_path)
    rec = read_recording(path)
    assert list(rec.stages) == ["N2", "N2", "N3", "R"]
    types = dict(zip(rec.events["label"], rec.events["type"]))
    assert types["apnea-obstructive,Manual"] == EventType.OBSTRUCTIVE_APNEA.value
    assert types["hypopnea,Manual"] == EventType.HYPOPNEA.value
    assert types["oxygensaturation-drop,Manual"] == EventType.DESATURATION.value
    assert types["snorebreath,Manual"] == EventType.SNORE.value
    assert types["arousal-respiratory,Manual"] == EventType.AROUSAL.value
    assert types["position-left,Manual"] == EventType.POSITION_CHANGE.value
    # an unknown name is kept, verbatim, and reported: never dropped silently
    assert types["breath-normal,Manual"] == EventType.UNKNOWN.value
    assert "breath-normal,Manual" in rec.reading_report()


def test_angle_sides_follow_the_files_own_markers(tmp_path):
    path, _ = _nox(tmp_path, lateral_marker="position-right")
    rec = read_recording(path)
    assert rec.signals["POSITION"].data[-1] == POSITIONS.index("right")  # swapped to agree
    assert "left and right swapped" in rec.reading_report()
    # an explicit coding is the user's: no check, no swap
    rec = read_recording(path, angle_coding="nox")
    assert rec.signals["POSITION"].data[-1] == POSITIONS.index("left")


def test_aliases_still_override_everything_and_auxiliaries_can_be_read(tmp_path):
    path, _ = _nox(tmp_path)
    rec = read_recording(path, channel_aliases={"C3": "EEG_C3", "Light": "SNORE"},
                         include_auxiliary=True)
    assert rec.signals["EEG_C3"].label == "C3"
    assert rec.signals["SNORE"].label == "Light"  # even an auxiliary label, when the user says so
    assert "your channel_aliases entry" in rec.reading_report()
    assert {"Voltage_battery", "X_Axis"} <= set(rec.auxiliary)
    assert not set(rec.auxiliary) & set(rec.signals)


# ------------------------------------------------------------------ Compumedics (SHHS-1)
def test_compumedics_shhs_export(tmp_path):
    chans = [("SaO2", "%", 1, np.full(SECONDS, 95.0)), ("H.R.", "bpm", 1, np.full(SECONDS, 70.0)),
             ("EEG(sec)", "uV", 125, _wave(125, 1)), ("ECG", "mV", 125, _wave(125, 2, 1)),
             ("EMG", "uV", 125, _wave(125, 3)), ("EOG(L)", "uV", 50, _wave(50, 4)),
             ("EOG(R)", "uV", 50, _wave(50, 5)), ("EEG", "uV", 125, _wave(125, 6)),
             ("THOR RES", "", 10, _wave(10, 7, 1)), ("ABDO RES", "", 10, _wave(10, 8, 1)),
             ("POSITION", "", 1, np.repeat([2.0, 0.0], SECONDS // 2)),
             ("LIGHT", "", 1, np.ones(SECONDS)), ("NEW AIR", "", 10, _wave(10, 9, 1)),
             ("OX stat", "", 1, np.ones(SECONDS))]
    rec = read_recording(write_export(tmp_path / "shhs1-200001.edf", chans), annotations=None)
    assert rec.info.cohort == "shhs" and rec.system == "Compumedics (Profusion)"
    assert rec.signals["EEG_C3"].label == "EEG(sec)" and rec.signals["EEG_C4"].label == "EEG"
    assert rec.signals["ECG"].unit == "µV" and np.nanmax(np.abs(rec.signals["ECG"].data)) > 100  # mV -> µV
    assert rec.signals["SPO2"].label == "SaO2" and rec.signals["THORAX"].label == "THOR RES"
    assert rec.signals["AIRFLOW"].label == "NEW AIR"  # SHHS: a thermistor, whatever its label
    assert {e.label for e in rec.channel_report if e.role == "auxiliary"} == {"LIGHT", "OX stat"}
    pos = rec.signals["POSITION"].data  # SHHS: 0 right, 1 left, 2 supine, 3 prone
    assert pos[0] == POSITIONS.index("supine") and pos[-1] == POSITIONS.index("right")
    assert "'shhs' position coding" in rec.reading_report()


# ------------------------------------------------------------------ Natus Embla / RemLogic
def test_embla_export_and_remlogic_event_names(tmp_path):
    chans = [("Thorax", "", 10, _wave(10, 1, 1)), ("Abdomen", "", 10, _wave(10, 2, 1)),
             ("Sum", "", 10, _wave(10, 3, 1)), ("SpO2", "%", 3, np.full(3 * SECONDS, 96.0)),
             ("RD-Pleth", "", 75, _wave(75, 4, 1)), ("Pulse", "bpm", 3, np.full(3 * SECONDS, 58.0)),
             ("Snore", "", 10, _wave(10, 5, 1)), ("Nasal", "", 20, _wave(20, 6, 1)),
             ("EKG", "mV", 200, _wave(200, 7, 1)), ("Position", "", 10, np.zeros(10 * SECONDS)),
             ("Activity", "", 10, _wave(10, 8, 1))]
    path = write_export(tmp_path / "embletta.edf", chans, recording="Embla_Embletta_Gold",
                        annotations=[(0, 30, "SLEEP-S0"), (30, 30, "SLEEP-S2"),
                                     (60, 30, "SLEEP-S2"), (90, 30, "SLEEP-REM"),
                                     (35, 12, "APNEA-OBSTRUCTIVE"), (50, 20, "DESAT"),
                                     (52, 3, "AROUSAL-SPONT"), (66, 1, "SNORE"),
                                     (70, 0, "POSITION-SUPINE"), (75, 9, "RESP-RERA"),
                                     (80, 0, "LIGHTS-ON")])
    rec = read_recording(path)
    assert rec.system == "Natus (Embla / RemLogic / SandmanElite)"
    assert list(rec.stages) == ["W", "N2", "N2", "R"]
    assert {"THORAX", "ABDOMEN", "SPO2", "PLETH", "HR", "SNORE", "NASAL_PRESSURE", "ECG",
            "POSITION"} <= set(rec.signals)
    report = {e.label: e for e in rec.channel_report}
    assert report["Activity"].role == "auxiliary" and report["Sum"].role == "physiological"
    types = dict(zip(rec.events["label"], rec.events["type"]))
    assert types == {"APNEA-OBSTRUCTIVE": "obstructive_apnea", "DESAT": "desaturation",
                     "AROUSAL-SPONT": "arousal", "SNORE": "snore",
                     "POSITION-SUPINE": "position_change", "RESP-RERA": "arousal",
                     "LIGHTS-ON": "unknown"}
    assert "not recognised" not in rec.reading_report()  # LIGHTS-ON is a known marker


# ------------------------------------------------------------------ Philips Alice
def test_alice_export_with_two_flow_patient_channels(tmp_path):
    chans = [(lab, "uV", 200, _wave(200, k)) for k, lab in enumerate(
        ("EEG C3-A2", "EEG C4-A1", "EEG F4-A1", "EEG O2-A1", "EOG LOC-A2", "EOG ROC-A2",
         "EMG Chin", "Leg 1", "Leg 2", "ECG II"))]
    chans += [("Snore", "", 100, _wave(100, 20, 1)), ("Flow Patient", "", 100, _wave(100, 21, 1)),
              ("Flow Patient", "", 100, _wave(100, 22, 1)),
              ("Effort THO", "", 100, _wave(100, 23, 1)), ("Effort ABD", "", 100, _wave(100, 24, 1)),
              ("SpO2", "%", 1, np.full(SECONDS, 97.0)), ("Body", "", 1, np.zeros(SECONDS)),
              ("PulseRate", "bpm", 1, np.full(SECONDS, 66.0))]
    rec = read_recording(write_export(tmp_path / "alice.edf", chans))
    assert rec.system == "Philips (Alice / Sleepware)"
    report = rec.channel_report
    assert report[0].taken_as == "EEG_C3" and report[0].reason.startswith("AASM derivation")
    assert rec.signals["EOG_R"].label == "EOG ROC-A2"  # a derivation, if not the AASM one
    assert rec.signals["THORAX"].label == "Effort THO" and rec.signals["HR"].label == "PulseRate"
    flows = [e for e in report if e.label == "Flow Patient"]
    assert [e.role for e in flows] == ["physiological", "duplicate"]
    assert flows[0].taken_as == "NASAL_PRESSURE" and flows[1].taken_as in rec.signals
    assert "POSITION" in rec.signals


# ------------------------------------------------------------------ SOMNOmedics
def test_somnomedics_export_german_labels_and_position_codes(tmp_path):
    chans = [(lab, "uV", 256, _wave(256, k)) for k, lab in enumerate(
        ("C4:A1", "C3:A2", "F4:M1", "O2:M1", "EOGl:M1", "EOGr:M2", "EMGchin", "Bein l",
         "Bein r", "ECG"))]
    chans += [("Druck Flow", "", 32, _wave(32, 30, 1)), ("Thorax", "", 32, _wave(32, 31, 1)),
              ("Abdomen", "", 32, _wave(32, 32, 1)), ("Summe Effort", "", 32, _wave(32, 33, 1)),
              ("SpO2", "%", 4, np.full(4 * SECONDS, 94.0)), ("Puls", "bpm", 4, np.full(480, 70.0)),
              ("Lage", "", 1, np.repeat([6.0, 3.0], SECONDS // 2)),
              ("Licht", "", 1, np.zeros(SECONDS)), ("Akku", "V", 1, np.full(SECONDS, 3.0)),
              ("Beweg.", "", 4, _wave(4, 34, 1)), ("Schnarc", "", 32, _wave(32, 35, 1))]
    path = write_export(tmp_path / "domino.edf", chans, recording="Somnoscreen_Plus_1500")
    rec = read_recording(path)
    assert rec.system == "SOMNOmedics (DOMINO)"
    assert rec.signals["EEG_C4"].label == "C4:A1" and rec.signals["EEG_C3"].label == "C3:A2"
    assert rec.signals["EOG_L"].label == "EOGl:M1" and rec.signals["EMG_LEG_R"].label == "Bein r"
    assert rec.signals["NASAL_PRESSURE"].label == "Druck Flow" and rec.signals["SNORE"].label == "Schnarc"
    pos = rec.signals["POSITION"].data  # SOMNOscreen: 6 face up, 3 left
    assert pos[0] == POSITIONS.index("supine") and pos[-1] == POSITIONS.index("left")
    aux = {e.label: e.reason for e in rec.channel_report if e.role == "auxiliary"}
    assert set(aux) == {"Licht", "Akku", "Beweg."}


# ------------------------------------------------------------------ NSRR cohorts
def test_mesa_labels(tmp_path):
    labels = ("EKG", "EOG-L", "EOG-R", "EMG", "EEG1", "EEG2", "EEG3", "Pres", "Flow", "Snore",
              "Thor", "Abdo", "Leg", "Therm", "Pos", "Pleth", "OxStatus", "SpO2", "HR")
    chans = [(lab, "", 32, _wave(32, k, 1)) for k, lab in enumerate(labels)]
    rec = read_recording(write_export(tmp_path / "mesa-sleep-0001.edf", chans), annotations=None)
    assert rec.info.cohort == "mesa"
    assert (rec.signals["EEG_F"].label, rec.signals["EEG_O"].label, rec.signals["EEG_C4"].label) == ("EEG1", "EEG2",
                                                                            "EEG3")
    assert rec.signals["NASAL_PRESSURE"].label == "Pres" and rec.signals["AIRFLOW"].label == "Flow"
    assert [e.label for e in rec.channel_report if e.role == "auxiliary"] == ["OxStatus"]


def test_mros_referential_electrodes_are_derived(tmp_path):
    ref = {lab: _wave(256, k) for k, lab in enumerate(("C3", "C4", "A1", "A2", "LOC", "ROC"))}
    chans = [(lab, "uV", 256, x) for lab, x in ref.items()]
    chans += [("SAO2", "%", 1, np.full(SECONDS, 93.0)), ("STAT", "", 1, np.ones(SECONDS)),
              ("Cannula Flow", "", 64, _wave(64, 9, 1))]
    rec = read_recording(write_export(tmp_path / "mros-visit1-aa0001.edf", chans),
                         annotations=None)
    for canon, plus, minus in (("EEG_C3", "C3", "A2"), ("EEG_C4", "C4", "A1"),
                               ("EOG_L", "LOC", "A2"), ("EOG_R", "ROC", "A1")):
        assert rec[canon].label == f"{plus}-{minus} (derived)"
        np.testing.assert_allclose(rec[canon].data, ref[plus] - ref[minus], atol=0.05)
    assert "no EEG_C3 derivation in the file" in rec.reading_report()
    assert [e.label for e in rec.channel_report if e.role == "auxiliary"] == ["STAT"]


def test_a_referential_electrode_without_its_mastoid_is_taken_and_says_so(tmp_path):
    chans = [("C4", "uV", 200, _wave(200, 1)), ("M2", "uV", 100, _wave(100, 2))]
    rec = read_recording(write_export(tmp_path / "chat-like.edf", chans))
    assert rec.signals["EEG_C4"].label == "C4"
    assert "referential electrode C4" in rec.channel_report[0].reason


# ------------------------------------------------------------------ text and patterns
def test_header_text_is_utf8_with_a_latin1_fallback():
    assert decode_header_text("1 Impédance".encode()) == "1 Impédance"
    assert decode_header_text("1 Impédance".encode("latin-1")) == "1 Impédance"
    cut = "RIP-Phase °".encode()[:-1]  # a character cut by the field's width
    assert decode_header_text(cut) == "RIP-Phase"


@pytest.mark.parametrize("label, unit, kind", [
    ("1 Impédance", "", "impedance"), ("ECG Impedance", "kOhm", "impedance"),
    ("Voltage (battery", "V", "battery"), ("Akku", "", "battery"), ("Light", "", "light"),
    ("Audio Volume dB", "dB", "audio level"), ("Z Axis", "", "accelerometer"),
    ("Elevation", "", "accelerometer"), ("OxStatus", "", "device status"),
    ("EKG_Off", "", "device status"), ("Anything", "lux", "light"),
    ("Saturation", "%", None), ("Snore", "", None), ("PosAngle", "°", None), ("Pulse", "", None),
])
def test_auxiliary_kinds(label, unit, kind):
    assert auxiliary_kind(label, unit) == kind


def test_system_detection_needs_the_header_or_two_labels():
    assert detect_system(["C3", "PosAngle", "RIP Sum"]) == "Nox (Noxturnal)"
    assert detect_system(["C3", "RIP Sum"]) is None  # one hint is not enough
    assert detect_system(["C3"], "Startdate 07-MAR-2009 X X Cadwell_Easy_III") == "Cadwell"
