"""The channel alias table covers the labels of the cohorts and clinical exports."""

from __future__ import annotations

import numpy as np
import pytest

from sleeplm.io.channels import (
    CANONICAL_CHANNELS,
    canonical_channel,
    decode_position,
    detect_cohort,
    unit_scale,
)
from sleeplm.recording import POSITIONS, safe_identifier

# label -> canonical, as found in real files of each source
REAL_LABELS = {
    # Sleep-EDF
    "EEG Fpz-Cz": "EEG_F", "EEG Pz-Oz": "EEG_O", "EOG horizontal": "EOG_L",
    "Resp oro-nasal": "AIRFLOW", "EMG submental": "EMG_CHIN",
    # SHHS-1/2
    "EEG": "EEG_C4", "EEG(sec)": "EEG_C3", "EOG(L)": "EOG_L", "EOG(R)": "EOG_R", "EMG": "EMG_CHIN",
    "ECG": "ECG", "SaO2": "SPO2", "H.R.": "HR", "THOR RES": "THORAX", "ABDO RES": "ABDOMEN",
    "POSITION": "POSITION", "AIRFLOW": "AIRFLOW", "NEW AIR": "NASAL_PRESSURE",
    # MESA (generic meaning)
    "EOG-L": "EOG_L", "EOG-R": "EOG_R", "EKG": "ECG", "Thor": "THORAX", "Abdo": "ABDOMEN",
    "SpO2": "SPO2", "Pos": "POSITION", "HR": "HR", "Snore": "SNORE", "Pleth": "PLETH",
    # MrOS
    "C3": "EEG_C3", "C4": "EEG_C4", "LOC": "EOG_L", "ROC": "EOG_R", "L Chin": "EMG_CHIN",
    "Leg L": "EMG_LEG", "Leg R": "EMG_LEG_R", "ECG L": "ECG", "Cannula Flow": "NASAL_PRESSURE",
    "Thoracic": "THORAX", "Abdominal": "ABDOMEN", "DHR": "HR",
    # CFS
    "NASAL PRES": "NASAL_PRESSURE", "THOR EFFORT": "THORAX", "ABDO EFFORT": "ABDOMEN",
    "PULSE": "HR", "PlethWV": "PLETH", "L Leg": "EMG_LEG", "R Leg": "EMG_LEG_R",
    # clinical exports
    "C4-M1": "EEG_C4", "C3-M2": "EEG_C3", "F4-M1": "EEG_F", "O2-M1": "EEG_O", "E1-M2": "EOG_L",
    "E2-M1": "EOG_R", "Chin1-Chin2": "EMG_CHIN", "LLeg": "EMG_LEG", "RLeg": "EMG_LEG_R",
    "ECG II": "ECG", "Flow": "AIRFLOW", "PTAF": "NASAL_PRESSURE", "Chest": "THORAX",
    "Abdomen": "ABDOMEN", "Body": "POSITION", "Pulse Rate": "HR", "EEG C4-M1": "EEG_C4",
    "eeg c3-m2": "EEG_C3", "c4/m1": "EEG_C4", "EOG E1-M2": "EOG_L",
}


@pytest.mark.parametrize("label,canonical", sorted(REAL_LABELS.items()))
def test_real_world_labels(label, canonical):
    assert canonical_channel(label) == canonical


def test_every_canonical_channel_has_aliases():
    mapped = set(REAL_LABELS.values())
    assert mapped == set(CANONICAL_CHANNELS)


def test_unknown_label_is_none():
    assert canonical_channel("Temp rectal") is None
    assert canonical_channel("Event marker") is None


def test_cohort_specific_meanings():
    assert detect_cohort("mesa-sleep-0001.edf") == "mesa"
    assert detect_cohort("shhs2-200077.edf") == "shhs"
    assert detect_cohort("SC4001E0-PSG.edf") == "sleep-edf"
    assert detect_cohort("patient7.edf") is None
    assert canonical_channel("EEG2", cohort="shhs") == "EEG_C3"
    assert canonical_channel("EEG2", cohort="mesa") == "EEG_O"
    assert canonical_channel("EEG1", cohort="mesa") == "EEG_F"
    assert canonical_channel("EEG3", cohort="mesa") == "EEG_C4"


def test_user_aliases_win():
    assert canonical_channel("EEG", user_aliases={"eeg": "EEG_C3"}) == "EEG_C3"


def test_unit_scales():
    assert unit_scale("EEG_C3", "mV") == (1000.0, "µV")
    assert unit_scale("ECG", "V") == (1e6, "µV")
    assert unit_scale("EOG_L", "uV") == (1.0, "µV")
    assert unit_scale("SPO2", "", np.array([0.95, 0.97])) == (100.0, "%")
    assert unit_scale("SPO2", "%", np.array([95.0])) == (1.0, "%")


def test_position_codings():
    raw = np.array([0, 1, 2, 3, 4, 7], dtype=float)
    shhs = [POSITIONS[int(i)] if np.isfinite(i) else None for i in decode_position(raw, "shhs")]
    assert shhs == ["right", "left", "supine", "prone", None, None]
    mesa = [POSITIONS[int(i)] if np.isfinite(i) else None for i in decode_position(raw, "mesa")]
    assert mesa == ["right", "supine", "left", "prone", "upright", None]
    custom = decode_position(np.array([5.0, 6.0]), {5: "supine", 6: "upright"})
    assert [POSITIONS[int(i)] for i in custom] == ["supine", "upright"]


@pytest.mark.parametrize("raw,safe", [("../../etc/passwd", "etc_passwd"), ("<script>x", "script_x"),
                                      ("PT 001", "PT_001"), ("...", "unknown"), ("ok-id_1.2", "ok-id_1.2")])
def test_safe_identifier(raw, safe):
    assert safe_identifier(raw) == safe
