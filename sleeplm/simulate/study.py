"""Write a simulated night as a clinic would hand it over: EDF+, NSRR XML, hypnogram.

Channel labels are drawn per channel from the montages of several cohorts and vendors, so that
simulated files exercise the same alias table as real ones. Files written here are read back by
:func:`sleeplm.io.read_recording` like any other study.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sleeplm.io.edf_writer import SIMULATOR_EQUIPMENT, write_edf
from sleeplm.io.nsrr_writer import write_nsrr_xml
from sleeplm.recording import Signal, safe_identifier
from sleeplm.simulate.night import SimulatedNight

__all__ = ["LABEL_STYLES", "StudyFiles", "write_study"]

#: Real-world labels of each canonical channel, by montage (every one maps back through
#: sleeplm.io.channels without a cohort hint; the tests check this).
LABEL_STYLES: dict[str, dict[str, str]] = {
    "aasm": {"EEG_C3": "C3-M2", "EEG_C4": "C4-M1", "EEG_F": "F4-M1", "EEG_O": "O2-M1",
             "EOG_L": "E1-M2", "EOG_R": "E2-M1", "EMG_CHIN": "Chin1-Chin2", "EMG_LEG": "LLeg",
             "EMG_LEG_R": "RLeg", "ECG": "ECG II", "AIRFLOW": "Airflow",
             "NASAL_PRESSURE": "Nasal Pressure", "THORAX": "Thorax", "ABDOMEN": "Abdomen",
             "SNORE": "Snore", "SPO2": "SpO2", "HR": "Pulse", "POSITION": "Position"},
    "shhs": {"EEG_C3": "EEG(sec)", "EEG_C4": "EEG", "EEG_F": "F3-A2", "EEG_O": "O1-A2",
             "EOG_L": "EOG(L)", "EOG_R": "EOG(R)", "EMG_CHIN": "EMG", "EMG_LEG": "Leg L",
             "EMG_LEG_R": "Leg R", "ECG": "ECG", "AIRFLOW": "AIRFLOW",
             "NASAL_PRESSURE": "NEW AIR", "THORAX": "THOR RES", "ABDOMEN": "ABDO RES",
             "SNORE": "SNORE", "SPO2": "SaO2", "HR": "H.R.", "POSITION": "POSITION"},
    "mros": {"EEG_C3": "C3-A2", "EEG_C4": "C4-A1", "EEG_F": "Fz-Cz", "EEG_O": "Oz-Cz",
             "EOG_L": "LOC", "EOG_R": "ROC", "EMG_CHIN": "L Chin-R Chin", "EMG_LEG": "L Leg",
             "EMG_LEG_R": "R Leg", "ECG": "ECG L-ECG R", "AIRFLOW": "Thermistor",
             "NASAL_PRESSURE": "Cannula Flow", "THORAX": "Thoracic", "ABDOMEN": "Abdominal",
             "SNORE": "Snore Mic", "SPO2": "SpO2", "HR": "DHR", "POSITION": "Body"},
    "embla": {"EEG_C3": "EEG C3-M2", "EEG_C4": "EEG C4-M1", "EEG_F": "EEG F4-M1",
              "EEG_O": "EEG O2-M1", "EOG_L": "EOG E1-M2", "EOG_R": "EOG E2-M1",
              "EMG_CHIN": "EMG Chin", "EMG_LEG": "LAT", "EMG_LEG_R": "RAT", "ECG": "EKG",
              "AIRFLOW": "Flow Th", "NASAL_PRESSURE": "PTAF", "THORAX": "RIP Thorax",
              "ABDOMEN": "RIP Abdomen", "SNORE": "Snoring", "SPO2": "Sat", "HR": "Pulse Rate",
              "POSITION": "Pos"},
}


@dataclass(frozen=True)
class StudyFiles:
    """Paths of one written study."""

    edf: Path
    annotations: Path
    hypnogram: Path
    truth: Path


def write_study(night: SimulatedNight, folder: str | os.PathLike, *,
                rng: np.random.Generator | None = None) -> StudyFiles:
    """Write a simulated night to ``folder`` as ``<id>.edf``, ``<id>-nsrr.xml``,
    ``<id>-hypnogram.csv`` (one stage per 30-s epoch) and ``<id>-truth.csv`` (every placed
    event, micro-events included).

    Parameters
    ----------
    night : SimulatedNight
    folder : path-like
        Created when missing.
    rng : numpy.random.Generator, optional
        Picks the channel labels; by default seeded from the night's seed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rec = night.recording
    pid = safe_identifier(rec.info.patient_id)
    rng = rng or np.random.default_rng(night.seed + 7919)
    styles = list(LABEL_STYLES)
    labelled = {
        name: replace(sig, label=LABEL_STYLES[str(rng.choice(styles))].get(name, name))
        for name, sig in rec.signals.items()
    }
    rec_out = replace(rec, signals={k: Signal(k, s.data, s.sfreq, s.unit, s.label)
                                    for k, s in labelled.items()})
    files = StudyFiles(edf=folder / f"{pid}.edf", annotations=folder / f"{pid}-nsrr.xml",
                       hypnogram=folder / f"{pid}-hypnogram.csv", truth=folder / f"{pid}-truth.csv")
    write_edf(rec_out, files.edf, annotations=False, equipment=SIMULATOR_EQUIPMENT)
    write_nsrr_xml(rec, files.annotations)
    files.hypnogram.write_text("epoch,stage\n" + "".join(
        f"{i},{s}\n" for i, s in enumerate(rec.stages)))
    truth = night.truth.copy()
    truth["attributes"] = [json.dumps(a, sort_keys=True) for a in truth["attributes"]]
    truth.to_csv(files.truth, index=False, float_format="%.3f")
    return files
