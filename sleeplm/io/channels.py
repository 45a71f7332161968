"""Channel aliases, units and position codings of real-world PSG files.

Labels are matched case-insensitively after removing spaces and punctuation, so "C4-M1",
"c4/m1" and "EEG C4-M1" all meet the same entry. Cohort-specific tables (SHHS, MESA, MrOS,
CFS) override the generic one where a label means different things in different cohorts (e.g.
"EEG2" is C3-A2 in SHHS-2 but Cz-Oz in MESA).

References for the labels: the NSRR montage pages of SHHS-1/2, MESA, MrOS and CFS, the
Sleep-EDF Expanded database description, and exports of Compumedics, Embla/Natus and Nox
systems. Users extend the table with ``channel_aliases={"My label": "EEG_C4"}``.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from sleeplm._logging import logger
from sleeplm.recording import POSITIONS

__all__ = [
    "CANONICAL_CHANNELS",
    "ALIASES",
    "COHORT_ALIASES",
    "POSITION_CODINGS",
    "normalise_label",
    "canonical_channel",
    "detect_cohort",
    "unit_scale",
    "decode_position",
    "ANGLE_CODINGS",
    "is_angle_channel",
    "decode_position_angle",
]

#: Canonical channels and what they hold.
CANONICAL_CHANNELS: dict[str, str] = {
    "EEG_C3": "central EEG, C3 referred to the contralateral mastoid",
    "EEG_C4": "central EEG, C4 referred to the contralateral mastoid",
    "EEG_F": "frontal EEG (F3/F4/Fz-Cz/Fpz-Cz)",
    "EEG_O": "occipital EEG (O1/O2/Cz-Oz/Pz-Oz)",
    "EOG_L": "left (or horizontal) EOG",
    "EOG_R": "right EOG",
    "EMG_CHIN": "submental (chin) EMG",
    "EMG_LEG": "left (or single) anterior tibialis EMG",
    "EMG_LEG_R": "right anterior tibialis EMG",
    "ECG": "electrocardiogram",
    "AIRFLOW": "oronasal thermal airflow",
    "NASAL_PRESSURE": "nasal pressure (cannula)",
    "THORAX": "thoracic respiratory effort",
    "ABDOMEN": "abdominal respiratory effort",
    "SPO2": "oxygen saturation",
    "POSITION": "body position",
    "HR": "heart (pulse) rate",
    "SNORE": "snore sensor",
    "PLETH": "photoplethysmogram",
}

#: Which canonical channels are electrophysiology, stored in µV.
MICROVOLT_CHANNELS = frozenset(
    {"EEG_C3", "EEG_C4", "EEG_F", "EEG_O", "EOG_L", "EOG_R", "EMG_CHIN", "EMG_LEG", "EMG_LEG_R", "ECG"}
)

_STRIP = re.compile(r"[\s_\-/:.()\[\]\\,+]+")


def normalise_label(label: str) -> str:
    """Lower-case a channel label and drop spaces and punctuation ("EEG C4-M1" -> "eegc4m1")."""
    return _STRIP.sub("", str(label).strip().lower()).replace("µ", "u")


def _table(spec: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    table: dict[str, str] = {}
    for canonical, labels in spec.items():
        for lab in labels:
            table[normalise_label(lab)] = canonical
    return table


# Generic labels, from clinical exports and the cohorts where they are unambiguous.
ALIASES: dict[str, str] = _table(
    {
        "EEG_C3": ("C3", "C3-M2", "C3-A2", "C3-M1M2", "C3-AVG", "EEG C3-A2", "EEG(sec)", "EEG sec",
                   "EEG 2", "EEG_SEC", "C3-LE", "C3-REF"),
        "EEG_C4": ("C4", "C4-M1", "C4-A1", "C4-M1M2", "C4-AVG", "EEG C4-A1", "EEG",
                   "C4-LE", "C4-REF"),
        "EEG_F": ("F3", "F4", "F3-M2", "F4-M1", "F3-A2", "F4-A1", "Fz", "Fz-Cz", "Fpz-Cz",
                  "EEG Fpz-Cz", "Fp1-M2", "Fp2-M1", "Fz-M1", "Fz-A1"),
        "EEG_O": ("O1", "O2", "O1-M2", "O2-M1", "O1-A2", "O2-A1", "Oz", "Cz-Oz", "Pz-Oz",
                  "EEG Pz-Oz", "Oz-Cz"),
        "EOG_L": ("E1", "E1-M2", "E1-M1", "E1-FPz", "E1-A2", "LOC", "LOC-A2", "LOC-M2", "EOG(L)",
                  "EOG L", "EOG-L", "EOGL", "L-EOG", "LEOG", "EOG left", "Left EOG",
                  "EOG horizontal", "EOG E1-M2", "E1:M2"),
        "EOG_R": ("E2", "E2-M1", "E2-M2", "E2-FPz", "E2-A1", "ROC", "ROC-A1", "ROC-M1", "EOG(R)",
                  "EOG R", "EOG-R", "EOGR", "R-EOG", "REOG", "EOG right", "Right EOG",
                  "EOG E2-M1"),
        "EMG_CHIN": ("EMG", "Chin", "CHIN", "Chin1-Chin2", "Chin1-Chin3", "Chin2-Chin1",
                     "Chin EMG", "EMG Chin", "EMG submental", "Submental", "L Chin", "R Chin",
                     "L Chin-R Chin", "LChin", "RChin", "Chin-Fz", "Lchin-Cchin", "EMG1",
                     "CHIN1", "Chin 1-Chin 2", "EMG Chin1-Chin2"),
        "EMG_LEG": ("Leg", "LLeg", "L Leg", "Leg L", "Leg/L", "Left Leg", "LAT", "L-LEG", "LLEG1",
                    "Leg 1", "LEG1", "EMG LAT", "L-Leg1", "Lleg-Lleg2", "LEG(L)", "Leg EMG",
                    "Legs", "PLM", "PLM l", "Tib L", "TIB-L"),
        "EMG_LEG_R": ("RLeg", "R Leg", "Leg R", "Leg/R", "Right Leg", "RAT", "R-LEG", "RLEG1",
                      "Leg 2", "LEG2", "EMG RAT", "R-Leg1", "Rleg-Rleg2", "LEG(R)", "PLM r",
                      "Tib R", "TIB-R"),
        "ECG": ("ECG", "EKG", "ECG1", "ECG I", "ECG II", "ECG L", "ECG R", "ECG L-ECG R",
                "ECG1-ECG2", "EKG1", "EKG-R-EKG-L", "ECGL", "ECGR", "ECG lead I",
                "ECG lead II", "ECG2"),
        "AIRFLOW": ("Airflow", "AIRFLOW", "Air flow", "Flow", "Therm", "Thermistor",
                    "Oral Thermistor", "Nasal-Oral Thermistor", "Oronasal", "Resp oro-nasal",
                    "Thermocouple", "Oro-nasal flow", "Resp Flow", "Flow Th", "Thermal flow",
                    "Resp Therm"),
        "NASAL_PRESSURE": ("Nasal Pressure", "NASAL PRES", "Nasal Pres", "Pres", "Pressure",
                           "PTAF", "Cannula", "Cannula Flow", "Nasal", "Nasal Flow", "Flow Patient",
                           "NPRE", "nas_pres", "NEW AIR", "New A/F", "NasalP", "Nasal Cannula",
                           "Resp nasal"),
        "THORAX": ("Thorax", "THOR RES", "Thor", "Thoracic", "Chest", "THOR EFFORT", "Thor Effort",
                   "Effort THO", "RIP Thora", "Resp chest", "Thoracic Effort", "CHEST RES",
                   "Thorax RIP", "RIP Thorax", "Resp Thorax"),
        "ABDOMEN": ("Abdomen", "ABDO RES", "Abdo", "ABD", "Abdominal", "ABDO EFFORT", "Abdo Effort",
                    "Effort ABD", "RIP Abdom", "Resp abdomen", "Abdominal Effort", "ABDM",
                    "Abdomen RIP", "RIP Abdomen", "Resp Abdomen"),
        "SPO2": ("SpO2", "SaO2", "SAT", "Sat", "SpO2 %", "Oxygen Saturation", "OSAT", "SPO2-1",
                 "O2 Sat", "SaO2 Nonin", "Oximetry", "SpO2 Nonin", "spo2(%)"),
        "POSITION": ("Position", "POSITION", "Pos", "Body", "Body Position", "BodyPos", "Pos Sensor",
                     "Posit", "Position Sensor"),
        "HR": ("HR", "H.R.", "Heart Rate", "Pulse", "PULSE", "PR", "Pulse Rate", "DHR", "HeartRate",
               "Puls"),
        "SNORE": ("Snore", "SNORE", "Snoring", "Mic", "Microphone", "Snore Mic", "Sound"),
        "PLETH": ("Pleth", "PlethWV", "RD-Pleth", "Plethysmogram", "PPG", "Pleth Wave",
                  "Plethysmography"),
    }
)

# Labels whose meaning depends on the cohort.
COHORT_ALIASES: dict[str, dict[str, str]] = {
    # SHHS channel 17 is the thermistor airflow whatever its label ("AIRFLOW", "NEW AIR",
    # "new A/F"): SHHS recorded no nasal pressure (NSRR SHHS equipment notes, docs/VENDORS.md).
    "shhs": _table({"EEG_C3": ("EEG(sec)", "EEG2", "EEG 2"), "EEG_C4": ("EEG",),
                    "AIRFLOW": ("NEW AIR", "New A/F", "NEWAIR", "AUX")}),
    "mesa": _table(
        {
            "EEG_F": ("EEG1",),  # Fz-Cz
            "EEG_O": ("EEG2",),  # Cz-Oz
            "EEG_C4": ("EEG3",),  # C4-M1
            "AIRFLOW": ("Flow",),
            "NASAL_PRESSURE": ("Pres",),
            "EMG_LEG": ("Leg",),
        }
    ),
    "cfs": _table({"EMG_CHIN": ("EMG1",), "ECG": ("ECG1",)}),
    "sleep-edf": _table({"EEG_F": ("EEG Fpz-Cz",), "EEG_O": ("EEG Pz-Oz",)}),
}

#: How each cohort codes the POSITION channel: raw value -> index into POSITIONS.
#: From the NSRR montage notes (Compumedics: 0 right, 1 left, 2 supine, 3 prone; MESA/Embla-style:
#: 0 right, 1 supine, 2 left, 3 prone, 4 upright). "generic" is the sleeplm and EDF-export
#: convention: 0 supine, 1 left, 2 right, 3 prone, 4 upright. Verify against your site's coding
#: and pass ``position_coding`` (a name or a dict) when it differs.
POSITION_CODINGS: dict[str, dict[int, str]] = {
    "generic": {0: "supine", 1: "left", 2: "right", 3: "prone", 4: "upright"},
    "shhs": {0: "right", 1: "left", 2: "supine", 3: "prone"},
    "mros": {0: "right", 1: "left", 2: "supine", 3: "prone"},
    "cfs": {0: "right", 1: "left", 2: "supine", 3: "prone"},
    "mesa": {0: "right", 1: "supine", 2: "left", 3: "prone", 4: "upright"},
    # SOMNOmedics SOMNOscreen "Lage": 1 face down, 2 upright, 3 left, 4 right, 5 upside down
    # (head down: no position of ours, so unknown), 6 face up (docs/VENDORS.md).
    "somnomedics": {1: "prone", 2: "upright", 3: "left", 4: "right", 6: "supine"},
}

_COHORT_PATTERNS = (
    (re.compile(r"^shhs[12]?[-_]", re.I), "shhs"),
    (re.compile(r"^mesa[-_]", re.I), "mesa"),
    (re.compile(r"^mros[-_]", re.I), "mros"),
    (re.compile(r"^cfs[-_]", re.I), "cfs"),
    (re.compile(r"^S[CT]\d{4}[A-Z0-9]{2}", re.I), "sleep-edf"),
)


def detect_cohort(file_name: str) -> str | None:
    """Guess the cohort from an NSRR/Sleep-EDF file name ("shhs1-200001.edf" -> "shhs")."""
    for pattern, cohort in _COHORT_PATTERNS:
        if pattern.match(file_name):
            return cohort
    return None


def canonical_channel(
    label: str,
    *,
    cohort: str | None = None,
    user_aliases: Mapping[str, str] | None = None,
) -> str | None:
    """Canonical name of a channel label, or None when it is not a known PSG channel.

    Parameters
    ----------
    label : str
        The label as it appears in the file.
    cohort : str, optional
        Cohort whose labels take precedence ("shhs", "mesa", "mros", "cfs", "sleep-edf").
    user_aliases : mapping, optional
        The user's own ``{label: canonical}``; wins over every table.
    """
    key = normalise_label(label)
    if user_aliases:
        for lab, canon in user_aliases.items():
            if normalise_label(lab) == key:
                if canon not in CANONICAL_CHANNELS:
                    raise ValueError(
                        f"channel_aliases maps '{lab}' to '{canon}', which is not a canonical "
                        f"channel; use one of {sorted(CANONICAL_CHANNELS)}."
                    )
                return canon
    if cohort and key in COHORT_ALIASES.get(cohort, {}):
        return COHORT_ALIASES[cohort][key]
    if key in ALIASES:
        return ALIASES[key]
    # "EEG C4-M1", "EOG E1-M2", "EMG Chin": retry without the modality prefix.
    for prefix in ("eeg", "eog", "emg", "ecg", "resp"):
        if key.startswith(prefix) and key[len(prefix):] in ALIASES:
            return ALIASES[key[len(prefix):]]
    return None


_VOLT_SCALE = {"v": 1e6, "mv": 1e3, "uv": 1.0, "µv": 1.0, "μv": 1.0, "nv": 1e-3}


def unit_scale(canonical: str | None, unit: str, data: np.ndarray | None = None) -> tuple[float, str]:
    """Factor that brings a channel to its canonical unit, and that unit.

    EEG/EOG/EMG/ECG go to µV; SpO2 to % (a 0-1 fraction is multiplied by 100); other channels
    keep their unit. An electrophysiology channel without a unit is assumed to be in µV (EDF
    writers that leave the field blank almost always mean µV) and this is logged.
    """
    u = unit.strip()
    key = u.lower().replace("μ", "u").replace("µ", "u")
    if canonical in MICROVOLT_CHANNELS:
        if key in _VOLT_SCALE:
            return _VOLT_SCALE[key], "µV"
        logger.info("Channel %s has unit %r; assuming µV", canonical, unit)
        return 1.0, "µV"
    if canonical == "SPO2":
        if key in ("%", "percent", "pct", "%spo2", "%sao2"):
            return 1.0, "%"
        if data is not None and data.size and np.nanmax(np.abs(data)) <= 1.0 + 1e-6:
            return 100.0, "%"
        return 1.0, "%"
    if canonical == "HR":
        return 1.0, "bpm"
    return 1.0, u


def decode_position(values: np.ndarray, coding: str | Mapping[int, str] = "generic") -> np.ndarray:
    """Decode raw position values into indices of :data:`~sleeplm.recording.POSITIONS`.

    Parameters
    ----------
    values : numpy.ndarray
        Raw samples of the position channel (codes, possibly scaled back from EDF's digital
        range, so they are rounded first).
    coding : str or mapping
        A name in :data:`POSITION_CODINGS` or a ``{code: position}`` mapping.

    Returns
    -------
    numpy.ndarray
        float32 indices into POSITIONS; NaN for codes the coding does not define.
    """
    mapping = POSITION_CODINGS[coding] if isinstance(coding, str) else dict(coding)
    lookup = {int(k): POSITIONS.index(v) for k, v in mapping.items()}
    rounded = np.round(np.asarray(values, dtype=float))
    out = np.full(rounded.shape, np.nan, dtype=np.float32)
    for code, idx in lookup.items():
        out[rounded == code] = idx
    n_bad = int(np.isnan(out).sum() - np.isnan(rounded).sum())
    if n_bad:
        logger.warning(
            "%d position samples had codes outside the %s coding; marked unknown",
            n_bad,
            coding if isinstance(coding, str) else "given",
        )
    return out


#: How a body-rotation angle (degrees, -180..180 about the body's long axis) maps to positions:
#: the angle of the supine position and the sign of a turn to the left. Sectors of 90 degrees
#: around each of supine, left, prone and right. Pass ``angle_coding`` to the reader when your
#: system differs (docs/VENDORS.md).
ANGLE_CODINGS: dict[str, dict[str, float]] = {
    # Nox PosAngle: 0 = supine, +90 = left side, -90 = right side, +-180 = prone (see
    # docs/VENDORS.md for the source of this convention and how to check it on a study).
    "nox": {"supine": 0.0, "left_sign": 1.0},
    "left_negative": {"supine": 0.0, "left_sign": -1.0},
}


def is_angle_channel(label: str, unit: str) -> bool:
    """Whether a POSITION channel holds an angle in degrees rather than position codes."""
    u = str(unit).strip().lower()
    return u in ("deg", "degree", "degrees", "°", "º") or "angle" in normalise_label(label)


def decode_position_angle(values: np.ndarray, coding: str | Mapping[str, float] = "nox"
                          ) -> np.ndarray:
    """Decode a body-rotation angle (degrees) into indices of :data:`~sleeplm.recording.POSITIONS`.

    Parameters
    ----------
    values : numpy.ndarray
        Angles in degrees (any range: they are wrapped to -180..180).
    coding : str or mapping
        A name in :data:`ANGLE_CODINGS`, or ``{"supine": degrees, "left_sign": +1 or -1}``.

    Returns
    -------
    numpy.ndarray
        float32 indices into POSITIONS (supine, left, right or prone); NaN where the angle is.
    """
    spec = ANGLE_CODINGS[coding] if isinstance(coding, str) else dict(coding)
    a = np.asarray(values, dtype=float) - float(spec["supine"])
    a = (a + 180.0) % 360.0 - 180.0  # -180..180, 0 = supine
    a = a * float(np.sign(spec["left_sign"]) or 1.0)  # positive = towards the left side
    out = np.full(a.shape, np.nan, dtype=np.float32)
    out[np.abs(a) <= 45] = POSITIONS.index("supine")
    out[(a > 45) & (a < 135)] = POSITIONS.index("left")
    out[(a < -45) & (a > -135)] = POSITIONS.index("right")
    out[np.abs(a) >= 135] = POSITIONS.index("prone")
    out[np.isnan(a)] = np.nan
    return out
