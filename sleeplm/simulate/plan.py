"""The plan of a simulated night: what happens when, before any signal is drawn.

A :class:`NightPlan` is decided first (stages from a real hypnogram, body position, respiratory
events, arousals, leg movements); the signal generators then render it. Every generator reads
the plan and never changes it, so the plan is the ground truth of the scored events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["RATES", "NightPlan", "RESPIRATORY_COLUMNS", "AROUSAL_COLUMNS", "LEG_COLUMNS"]

#: Native sampling rates of simulated channels, Hz (typical of clinical and NSRR montages:
#: SHHS EEG 125 Hz, MESA/MrOS EEG 256 Hz, effort and flow 10-32 Hz, oximetry 1 Hz).
RATES: dict[str, float] = {
    "EEG_C3": 128.0, "EEG_C4": 128.0, "EEG_F": 128.0, "EEG_O": 128.0,
    "EOG_L": 128.0, "EOG_R": 128.0,
    "EMG_CHIN": 256.0, "EMG_LEG": 256.0, "EMG_LEG_R": 256.0,
    "ECG": 256.0,
    "AIRFLOW": 32.0, "NASAL_PRESSURE": 32.0, "THORAX": 32.0, "ABDOMEN": 32.0,
    "SNORE": 32.0,
    "SPO2": 1.0, "HR": 1.0, "POSITION": 1.0,
}

#: Columns of ``NightPlan.respiratory``: onset/duration in s; type one of obstructive_apnea,
#: central_apnea, mixed_apnea, hypopnea; desat_depth in % (0 = no desaturation follows);
#: arousal True when the event ends in an arousal; periodic True inside Cheyne-Stokes cycles.
RESPIRATORY_COLUMNS = ("onset", "duration", "type", "desat_depth", "arousal", "periodic")
#: Columns of ``NightPlan.arousals``: onset/duration in s, cause respiratory/spontaneous/limb.
AROUSAL_COLUMNS = ("onset", "duration", "cause")
#: Columns of ``NightPlan.leg_movements``: onset/duration in s, side left/right/bilateral,
#: periodic True when part of a PLM series.
LEG_COLUMNS = ("onset", "duration", "side", "periodic")


@dataclass
class NightPlan:
    """What happens in a simulated night.

    Attributes
    ----------
    stages : numpy.ndarray
        One of W, N1, N2, N3, R per 30-s epoch (no UNS).
    position : numpy.ndarray
        Body position per second (index into :data:`sleeplm.recording.POSITIONS`).
    respiratory, arousals, leg_movements : pandas.DataFrame
        Planned events (see the column constants).
    age : float
        Years.
    sex : str
        "M" or "F".
    rswa : bool
        REM sleep without atonia (chin tone kept, many phasic bursts in REM).
    baseline_spo2 : float
        Awake SpO2, %.
    breathing_rate : float
        Breaths per minute in quiet NREM sleep.
    heart_rate : float
        Heart rate in quiet NREM sleep, bpm.
    mains_hz : float
        Mains frequency of the site, 50 or 60 Hz.
    statistics : str
        "v1" or "real": the event and heart-rate statistics the night was planned with
        (:func:`sleeplm.simulate.events.plan_night`).
    """

    stages: np.ndarray
    position: np.ndarray
    respiratory: pd.DataFrame
    arousals: pd.DataFrame
    leg_movements: pd.DataFrame
    age: float = 40.0
    sex: str = "F"
    rswa: bool = False
    baseline_spo2: float = 96.0
    breathing_rate: float = 14.0
    heart_rate: float = 60.0
    mains_hz: float = 50.0
    epoch_sec: float = 30.0
    notes: list[str] = field(default_factory=list)
    statistics: str = "v1"

    @property
    def duration(self) -> float:
        """Length of the night, seconds."""
        return self.stages.size * self.epoch_sec

    def stage_at(self, times: np.ndarray) -> np.ndarray:
        """Stage at each time (s)."""
        idx = np.clip((np.asarray(times) // self.epoch_sec).astype(int), 0, self.stages.size - 1)
        return self.stages[idx]

    def stage_per_sample(self, sfreq: float) -> np.ndarray:
        """Stage of every sample of a channel at ``sfreq`` Hz."""
        return np.repeat(self.stages, int(round(self.epoch_sec * sfreq)))
