"""Heart-rate studies from beat series: the bundled Apnea-ECG nights, CSV exports, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from sleeplm.clinical.heart_rate import heart_rate_measures
from sleeplm.data import apnea_ecg_group, apnea_ecg_ids, apnea_ecg_path, apnea_ecg_split
from sleeplm.errors import BeatSeriesError, EmptyRecordingError, RecordingFileError
from sleeplm.io import read_recording
from sleeplm.io.beats import (RR_MAX_SEC, RR_MIN_SEC, beats_recording, looks_like_beat_table,
                               read_beats, read_minute_labels)
from sleeplm.recording import EventType


def _beats(minutes: float = 20.0, hr: float = 60.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rr = 60.0 / hr + rng.normal(0, 0.03, int(minutes * hr))
    return 1.0 + np.cumsum(rr)


def test_every_bundled_night_reads_with_its_labels():
    ids = apnea_ecg_ids()
    assert len(ids) == 52 and {apnea_ecg_group(i) for i in ids} == {"a", "b", "c"}
    splits = {s: [i for i in ids if apnea_ecg_split(i) == s] for s in ("train", "validation", "test")}
    assert [len(v) for v in splits.values()] == [21, 14, 17]
    for rid in ids:
        rec = read_beats(apnea_ecg_path(rid))
        with np.load(apnea_ecg_path(rid)) as z:
            t, lab = z["beat_time_s"], z["apnea_minute"]
        hr = rec["HR"]
        assert hr.unit == "bpm" and hr.sfreq == 4.0 and rec.stages is None
        assert abs(rec.duration - (t[-1] + 1)) < 1.0
        good = hr.data[np.isfinite(hr.data)]
        assert good.size > 0.9 * hr.data.size
        assert 60 / RR_MAX_SEC <= good.min() and good.max() <= 60 / RR_MIN_SEC
        apnea = rec.events_of(EventType.APNEA_MINUTE)
        assert len(apnea) == int(lab.sum())
        assert (apnea["duration"] == 60).all()
        assert sorted(apnea["attributes"].map(lambda a: a["minute"])) == list(np.flatnonzero(lab))
        assert "no ECG waveform" in " ".join(rec.notes) and "ECG" not in rec.signals
    # the real data's beat-detection artefacts are kept as data and counted, not hidden
    a01 = read_beats(apnea_ecg_path("a01"))
    assert any("set to NaN" in n for n in a01.notes)


def test_read_recording_dispatches_beat_files_and_keeps_hypnograms(tmp_path):
    rec = read_recording(apnea_ecg_path("c01"))
    assert "HR" in rec.signals and rec.info.patient_id == "c01"
    hyp = tmp_path / "night.csv"
    hyp.write_text("stage\nW\nN1\nN2\n")
    assert not looks_like_beat_table(hyp)
    assert read_recording(hyp).stages.tolist() == ["W", "N1", "N2"]
    beats = tmp_path / "holter.csv"
    beats.write_text("beat_time_s\n" + "\n".join(f"{t:.3f}" for t in _beats()))
    assert looks_like_beat_table(beats)
    assert "HR" in read_recording(beats).signals


@pytest.mark.parametrize("header,scale,kind", [
    ("beat_time_s", 1.0, "times"), ("rr_ms", 1000.0, "rr"), ("RR interval (ms)", 1000.0, "rr"),
    (None, 1000.0, "rr"), (None, 1.0, "times"), ("time,rr_s", 1.0, "both")])
def test_csv_exports_of_times_and_intervals(tmp_path, header, scale, kind):
    t = _beats(hr=70.0)
    rr = np.diff(np.r_[0.0, t])
    if kind == "both":
        body = [f"{a:.4f},{b:.4f}" for a, b in zip(t, rr)]
    else:
        body = [f"{v * scale:.4f}" for v in (t if kind == "times" else rr)]
    path = tmp_path / "export.csv"
    path.write_text("\n".join(([header] if header else []) + body) + "\n")
    rec = read_beats(path)
    hr = rec["HR"].data
    assert abs(np.nanmedian(hr) - 70.0) < 2.0
    assert rec.notes[0].startswith("export.csv: read column")


def test_minute_labels_from_a_letter_file(tmp_path):
    lab = tmp_path / "labels.txt"
    lab.write_text("minute label\n0:00 N\n0:01 A\n0:02 A\n0:03 N\n")
    assert read_minute_labels(lab).tolist() == [0, 1, 1, 0]
    path = tmp_path / "b.csv"
    path.write_text("rr_ms\n" + "\n".join(["900"] * 600))
    rec = read_beats(path, minute_labels=lab)
    assert rec.events_of(EventType.APNEA_MINUTE)["onset"].tolist() == [60.0, 120.0]
    bad = tmp_path / "bad.txt"
    bad.write_text("N\nA\nmaybe\n")
    with pytest.raises(BeatSeriesError, match="line 3.*'maybe'"):
        read_minute_labels(bad)


def test_gaps_and_artefacts_are_reported_not_fatal():
    t = _beats(30)
    t = np.r_[t[:600], t[600:] + 120.0]  # two minutes without beats
    t = np.sort(np.r_[t, t[100] + 0.05])  # an extra detection 50 ms after a beat
    rec = beats_recording(t, source="x")
    text = " ".join(rec.notes)
    assert "1 gap(s) over 10 s" in text and "set to NaN" in text
    hr = rec["HR"]
    gap = hr.segment(t[599] + 5, t[600] - 5)
    assert np.isnan(gap).all()


@pytest.mark.parametrize("times,error,match", [
    ([1.0, 2.0, 1.5, 3.0] + list(np.arange(4, 2000, 1.0)), BeatSeriesError, "beat 2 at 1.500 s"),
    (list(np.arange(1000, 2_000_000, 900.0)), BeatSeriesError, "milliseconds"),
    ([1.0, 2.0], EmptyRecordingError, "2 beat"),
    ([1.0, np.nan, 3.0, 4.0], BeatSeriesError, "non-finite"),
    (list(np.arange(0, 100, 1.0)), BeatSeriesError, "usable heart rate"),
])
def test_bad_series_get_specific_errors(times, error, match):
    with pytest.raises(error, match=match):
        beats_recording(times, source="bad")


def test_bad_files_get_specific_errors(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(EmptyRecordingError, match="empty"):
        read_beats(empty)
    two = tmp_path / "two.csv"
    two.write_text("1.0,2.0\n2.0,3.0\n")
    with pytest.raises(BeatSeriesError, match="no header"):
        read_beats(two)
    text = tmp_path / "t.csv"
    text.write_text("rr_ms\n900\n910\nabc\n")
    with pytest.raises(BeatSeriesError, match="line 4"):
        read_beats(text)
    npz = tmp_path / "x.npz"
    np.savez(npz, hr=np.ones(3))
    with pytest.raises(BeatSeriesError, match="beat_time_s"):
        read_beats(npz)
    junk = tmp_path / "y.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(RecordingFileError, match="not a readable .npz"):
        read_beats(junk)


def test_heart_rate_measures_on_a_beat_study():
    rec = read_beats(apnea_ecg_path("c05"))
    ms = {m.name: m for m in heart_rate_measures(rec)}
    assert 40 < ms["hr_mean"].value < 90
    assert "whole recording" in ms["hr_mean"].reason
