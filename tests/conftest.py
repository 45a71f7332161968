"""Shared fixtures: short recordings written to real EDF files."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MNE_DONTWRITE_HOME", "true")

from sleeplm.recording import Recording, RecordingInfo, Signal  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "sleeplm" / "data" / "sleep-edf-hypnograms"


def write_mixed_rate_edf(path: Path, seconds: int = 120, seed: int = 0,
                         labels: dict[str, tuple[float, str]] | None = None) -> dict[str, np.ndarray]:
    """Write an EDF with channels at different rates through edfio; return the data written."""
    import edfio

    rng = np.random.default_rng(seed)
    labels = labels or {
        "EEG C4-M1": (256.0, "uV"),
        "E1-M2": (128.0, "uV"),
        "Chin1-Chin2": (200.0, "mV"),
        "SaO2": (1.0, "%"),
        "THOR RES": (10.0, "uV"),
        "Position": (4.0, ""),
        "Temp rectal": (1.0, "degC"),
    }
    data, signals = {}, []
    for label, (rate, unit) in labels.items():
        n = int(seconds * rate)
        if label == "SaO2":
            x = 94 + 2 * np.sin(np.arange(n) / 30)
        elif label == "Position":
            x = np.repeat([2.0, 0.0, 1.0, 3.0], n // 4 + 1)[:n]
        elif unit == "mV":
            x = rng.normal(0, 0.02, n)
        else:
            x = rng.normal(0, 30, n)
        data[label] = x
        signals.append(edfio.EdfSignal(x, sampling_frequency=rate, label=label,
                                       physical_dimension=unit,
                                       physical_range=(float(x.min()) - 1, float(x.max()) + 1)))
    edfio.Edf(signals, patient=edfio.Patient(code="PT-17", sex="F"),
              starttime=dt.time(22, 15, 0), data_record_duration=1).write(path)
    return data


@pytest.fixture
def mixed_edf(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / "study.edf"
    return path, write_mixed_rate_edf(path)


def make_recording(hours: float = 1.0, *, stages: list[str] | None = None, seed: int = 0,
                   channels: dict[str, Signal] | None = None) -> Recording:
    """A Recording built in memory (no file), for clinical tests."""
    n_epochs = int(hours * 120)
    stages_arr = np.array(stages if stages is not None else ["N2"] * n_epochs)
    return Recording(signals=channels or {}, stages=stages_arr,
                     info=RecordingInfo(patient_id=f"test{seed}"))
