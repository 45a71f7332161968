"""Reading EDF/EDF+/BDF files at native rates, and every way a file can be bad."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from conftest import write_mixed_rate_edf
from sleeplm.errors import (
    EmptyRecordingError,
    MissingChannelError,
    RecordingFileError,
    SignalQualityError,
    TruncatedFileError,
    UnsupportedFormatError,
)
from sleeplm.io import edf as edf_module
from sleeplm.io import read_recording
from sleeplm.io.edf import read_edf_header
from sleeplm.io.edf_writer import write_edf
from sleeplm.recording import POSITIONS, EventType, Recording, RecordingInfo, Signal, make_events


def _patch(path: Path, offset: int, text: str, width: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + width] = text.ljust(width).encode("ascii")
    path.write_bytes(bytes(raw))


# ---------------------------------------------------------------------------- good files
def test_mixed_rates_stay_native_and_values_match_edfio(mixed_edf):
    import edfio

    path, written = mixed_edf
    rec = read_recording(path, annotations=None)
    assert rec.signals["EEG_C4"].sfreq == 256
    assert rec.signals["EOG_L"].sfreq == 128
    assert rec.signals["SPO2"].sfreq == 1
    assert rec.signals["SPO2"].data.size == 120  # not upsampled to 256 Hz
    assert rec.signals["THORAX"].sfreq == 10
    reference = {s.label: s.data for s in edfio.read_edf(path).signals}
    for name in ("EEG_C4", "EOG_L", "SPO2", "THORAX"):
        sig = rec.signals[name]
        np.testing.assert_allclose(sig.data, reference[sig.label], atol=1e-3)
    assert rec.signals["SPO2"].unit == "%"
    assert rec.signals["EEG_C4"].unit == "µV"
    assert rec.signals["EEG_C4"].data.dtype == np.float32


def test_units_normalised_to_microvolts(mixed_edf):
    path, written = mixed_edf
    chin = read_recording(path, annotations=None).signals["EMG_CHIN"]
    assert chin.unit == "µV"
    # written in mV: 1000x larger in µV (quantisation of 16 bits over the range: ~1e-3 µV)
    np.testing.assert_allclose(chin.data, written["Chin1-Chin2"] * 1000, atol=0.05)


def test_position_decoded_and_unmapped_kept(mixed_edf):
    path, _ = mixed_edf
    rec = read_recording(path, annotations=None, position_coding="shhs")
    pos = rec.signals["POSITION"]
    assert pos.unit == "position"
    # SHHS coding: 2 supine, 0 right, 1 left, 3 prone, in quarters of the night
    quarters = [POSITIONS[int(pos.data[i])] for i in (0, 130, 260, 470)]
    assert quarters == ["supine", "right", "left", "prone"]
    assert "Temp_rectal" in rec.signals  # unmapped label kept, sanitised
    assert rec.signals["Temp_rectal"].label == "Temp rectal"


def test_metadata_from_header(mixed_edf):
    path, _ = mixed_edf
    rec = read_recording(path, annotations=None)
    assert rec.info.patient_id == "PT-17"
    assert rec.info.sex == "F"
    assert rec.info.start_time is not None and rec.info.start_time.time() == dt.time(22, 15)
    assert rec.duration == pytest.approx(120)


def test_agrees_with_mne_on_same_rate_channel(mixed_edf):
    import mne

    path, _ = mixed_edf
    rec = read_recording(path, annotations=None)
    raw = mne.io.read_raw_edf(path, preload=True, verbose="error")
    mne_eeg = raw.get_data(picks=["EEG C4-M1"])[0] * 1e6  # V -> µV
    np.testing.assert_allclose(rec.signals["EEG_C4"].data, mne_eeg, atol=1e-3)


def test_chunked_streaming_gives_same_data(mixed_edf, monkeypatch):
    path, _ = mixed_edf
    whole = read_recording(path, annotations=None)
    monkeypatch.setattr(edf_module, "CHUNK_BYTES", 3000)  # a few records per chunk
    chunked = read_recording(path, annotations=None)
    for name, sig in whole.signals.items():
        np.testing.assert_array_equal(sig.data, chunked.signals[name].data)


def test_channel_subset_is_the_only_thing_read(mixed_edf):
    path, _ = mixed_edf
    rec = read_recording(path, annotations=None, channels=["SPO2", "EEG_C4"])
    assert sorted(rec.signals) == ["EEG_C4", "SPO2"]


def test_bdf_24_bit(tmp_path):
    import edfio
    import mne

    rng = np.random.default_rng(3)
    x = rng.normal(0, 50, 60 * 512)
    s = rng.normal(95, 1, 60)
    path = tmp_path / "night.bdf"
    edfio.Bdf([edfio.BdfSignal(x, 512, label="C3-M2", physical_dimension="uV",
                               physical_range=(-300, 300)),
               edfio.BdfSignal(s, 1, label="SpO2", physical_dimension="%",
                               physical_range=(0, 100))]).write(path)
    rec = read_recording(path, annotations=None)
    assert rec.signals["EEG_C3"].sfreq == 512 and rec.signals["SPO2"].sfreq == 1
    raw = mne.io.read_raw_bdf(path, preload=True, verbose="error")
    np.testing.assert_allclose(rec.signals["EEG_C3"].data, raw.get_data(picks=["C3-M2"])[0] * 1e6,
                               atol=1e-3)
    np.testing.assert_allclose(rec.signals["EEG_C3"].data, x, atol=1e-3)  # 24-bit precision


def test_edf_plus_roundtrip_with_embedded_annotations(tmp_path):
    rng = np.random.default_rng(1)
    stages = np.array(["W"] * 4 + ["N1"] * 2 + ["N2"] * 6 + ["N3"] * 4 + ["R"] * 4)
    rec = Recording(
        signals={"EEG_C3": Signal("EEG_C3", rng.normal(0, 20, 600 * 128), 128, "µV", "C3-M2"),
                 "SPO2": Signal("SPO2", np.full(600, 96.0), 1, "%", "SpO2")},
        stages=stages,
        events=make_events([{"onset": 200, "duration": 15, "type": "obstructive_apnea",
                             "label": "Obstructive apnea"},
                            {"onset": 400, "duration": 3, "type": "arousal", "label": "Arousal"}]),
        info=RecordingInfo(patient_id="rt1"),
    )
    path = write_edf(rec, tmp_path / "rt1.edf")
    back = read_recording(path, annotations=None)
    np.testing.assert_array_equal(back.stages, stages)
    assert list(back.events["type"]) == [EventType.OBSTRUCTIVE_APNEA.value, EventType.AROUSAL.value]
    assert back.events["onset"].tolist() == [200.0, 400.0]
    np.testing.assert_allclose(back.signals["EEG_C3"].data, rec.signals["EEG_C3"].data, atol=0.01)


def test_user_alias_maps_odd_label(tmp_path):
    path = tmp_path / "odd.edf"
    write_mixed_rate_edf(path, labels={"Kanal 7": (100.0, "uV"), "SaO2": (1.0, "%")})
    rec = read_recording(path, annotations=None)
    assert "EEG_C4" not in rec.signals and "Kanal_7" in rec.signals
    rec = read_recording(path, annotations=None, channel_aliases={"kanal 7": "EEG_C4"})
    assert rec.signals["EEG_C4"].label == "Kanal 7"
    with pytest.raises(ValueError, match="not a canonical channel"):
        read_recording(path, annotations=None, channel_aliases={"Kanal 7": "EEG_Z9"})


def test_hostile_patient_id_is_sanitised(tmp_path):
    import edfio

    path = tmp_path / "h.edf"
    edfio.Edf([edfio.EdfSignal(np.zeros(10), 1, label="SpO2", physical_range=(0, 100))],
              patient=edfio.Patient(code="../../etc/<x>")).write(path)
    rec = read_recording(path, annotations=None)
    assert rec.info.patient_id == "etc_x"
    assert "/" not in rec.info.patient_id and "<" not in rec.info.patient_id


# ---------------------------------------------------------------------------- bad files
def test_not_an_edf(tmp_path):
    path = tmp_path / "notes.edf"
    path.write_text("this is a text file, not a polysomnogram\n" * 20)
    with pytest.raises(RecordingFileError, match="not an EDF/EDF\\+/BDF file"):
        read_recording(path)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.edf"
    empty.write_bytes(b"")
    with pytest.raises(EmptyRecordingError, match="empty"):
        read_recording(empty)
    with pytest.raises(RecordingFileError, match="no such file"):
        read_recording(tmp_path / "missing.edf")
    short = tmp_path / "short.edf"
    short.write_bytes(b"0       " + b" " * 50)
    with pytest.raises(RecordingFileError, match="shorter than the 256-byte EDF header"):
        read_recording(short)


def test_truncated_file(mixed_edf):
    path, _ = mixed_edf
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - len(raw) // 3])
    with pytest.raises(TruncatedFileError, match="truncated.*allow_truncated=True"):
        read_recording(path, annotations=None)
    rec = read_recording(path, annotations=None, allow_truncated=True)
    assert 70 <= rec.duration < 120
    assert any("truncated" in n for n in rec.notes)


def test_header_lies_about_length(mixed_edf):
    path, _ = mixed_edf
    _patch(path, 236, "500", 8)  # 500 records declared, 120 present
    with pytest.raises(TruncatedFileError, match="declares 500 data records"):
        read_recording(path, annotations=None)
    _patch(path, 184, "1024", 8)  # header bytes contradict the number of signals
    with pytest.raises(RecordingFileError, match="header says it is 1024 bytes"):
        read_recording(path, annotations=None)


def test_zero_length_recording(mixed_edf):
    path, _ = mixed_edf
    header = read_edf_header(path)
    path.write_bytes(path.read_bytes()[: header.header_bytes])
    _patch(path, 236, "0", 8)
    with pytest.raises(EmptyRecordingError, match="no data records"):
        read_recording(path, annotations=None)


def test_corrupt_numeric_field_and_edf_plus_d(mixed_edf):
    path, _ = mixed_edf
    original = path.read_bytes()
    _patch(path, 244, "abc", 8)
    with pytest.raises(RecordingFileError, match="duration of a data record.*'abc'"):
        read_recording(path, annotations=None)
    path.write_bytes(original)
    _patch(path, 192, "EDF+D", 44)
    with pytest.raises(UnsupportedFormatError, match="discontinuous"):
        read_recording(path, annotations=None)


def test_flat_and_nan_channels_are_flagged_where_needed():
    rec = Recording(signals={"SPO2": Signal("SPO2", np.full(100, np.nan), 1, "%", "SaO2"),
                             "ECG": Signal("ECG", np.zeros(1000), 100, "µV", "EKG")})
    with pytest.raises(SignalQualityError, match="all its samples are NaN"):
        rec.require("SPO2", purpose="oximetry")
    with pytest.raises(SignalQualityError, match="flat"):
        rec.require("ECG", purpose="heart rate")
    with pytest.raises(MissingChannelError, match="needs a EEG_C3 or EEG_C4 channel.*SPO2"):
        rec.require("EEG_C3", "EEG_C4", purpose="staging")
