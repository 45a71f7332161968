"""End to end: `sleeplm stats` on an EDF+ with an NSRR XML, and its errors."""

from __future__ import annotations

import json

import pytest

from conftest import write_nsrr_study
from sleeplm.cli import main
from sleeplm.clinical import clinical_summary
from sleeplm.io import read_recording


def test_stats_text_has_all_sections(nsrr_study, capsys):
    edf, xml, truth = nsrr_study
    assert main(["stats", str(edf), "--annotations", str(xml)]) == 0
    out = capsys.readouterr().out
    for heading in ("Sleep architecture", "Respiratory events", "Oximetry", "Arousals",
                    "Heart rate", "Total sleep time", "AHI (AASM recommended rule",
                    "AHI (4% rule", "ODI", "Not a medical device".lower()):
        assert heading.lower() in out.lower(), heading
    assert f"{truth['tst_h'] * 60:.1f} min" in out


def test_stats_json_numbers(nsrr_study, capsys):
    edf, xml, truth = nsrr_study
    assert main(["stats", str(edf), "-a", str(xml), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    measures = {m["name"]: m for sec in data["sections"].values() for m in sec}
    assert measures["tst_min"]["value"] == pytest.approx(truth["tst_h"] * 60)
    assert measures["ahi_3a"]["value"] == pytest.approx(truth["n_resp"] / truth["tst_h"], rel=1e-3)
    assert measures["ahi_4"]["value"] == pytest.approx(truth["n_resp"] / truth["tst_h"], rel=1e-3)
    assert measures["odi3"]["value"] == pytest.approx(truth["n_resp"] / truth["tst_h"], rel=0.05)
    # all events happen in the first hour, supine under SHHS's coding (2 = supine)
    assert measures["ahi_supine"]["value"] > 0 and measures["ahi_nonsupine"]["value"] == 0
    assert measures["hr_mean"]["unit"] == "bpm"
    assert data["disclaimer"].startswith("Draft for review")


def test_annotations_found_next_to_file_and_unknown_label_kept(nsrr_study):
    edf, _, truth = nsrr_study
    rec = read_recording(edf)  # shhs1-200001-nsrr.xml found by name
    assert rec.n_epochs == len(truth["stages"])
    unknown = rec.events[rec.events["type"] == "unknown"]
    assert list(unknown["label"]) == ["Strange thing|Strange thing"]
    assert rec.info.cohort == "shhs"


def test_home_sleep_apnea_test_gets_respiratory_numbers(tmp_path):
    edf, xml, truth = write_nsrr_study(tmp_path, "hsat-01", with_eeg=False, with_stages=False)
    rec = read_recording(edf, annotations=xml, cohort="shhs")
    summary = clinical_summary(rec)
    assert "architecture" in summary.unavailable
    assert "needs scored sleep stages" in summary.unavailable["architecture"]
    hours = truth["seconds"] / 3600
    assert summary.value("ahi_3a") == pytest.approx(truth["n_resp"] / hours, rel=1e-3)
    assert summary.value("odi3") == pytest.approx(truth["n_resp"] / hours, rel=0.05)
    assert "monitoring time" in summary.measure("ahi_3a").reason


def test_info_command(nsrr_study, capsys):
    edf, xml, _ = nsrr_study
    assert main(["info", str(edf)]) == 0
    out = capsys.readouterr().out
    assert "SPO2" in out and "1 Hz" in out and "EEG_C4" in out and "125 Hz" in out
    # the reading report: every channel, what it was taken as and why
    assert "Channels, as read:" in out and "EEG -> EEG_C4: the SHHS montage names it so" in out
    assert "not recognised" in out and "Strange thing" in out  # unknown events reported


def test_example_command(capsys):
    assert main(["example", "--real-hypnogram", "SC4001E0"]) == 0
    out = capsys.readouterr().out
    assert "Total sleep time" in out and "real expert-scored Sleep-EDF hypnogram" in out
    # no respiratory data at all: not reported as an AHI of 0
    assert "AHI" not in out and "Respiratory events: " in out


@pytest.mark.parametrize("content,message", [
    (b"not an edf at all" * 30, "not an EDF/EDF+/BDF file"),
    (b"", "empty"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.edf"
    bad.write_bytes(content)
    assert main(["stats", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sleeplm: error:") and message in err
    assert "Traceback" not in err


def test_cli_truncated_and_overflowing_annotations(nsrr_study, capsys):
    edf, xml, _ = nsrr_study
    raw = edf.read_bytes()
    edf.write_bytes(raw[: len(raw) // 2])
    assert main(["stats", str(edf), "-a", str(xml)]) == 2
    assert "--allow-truncated" in capsys.readouterr().err
    # reading the first hour only: the scored stages now run past the end of the signals
    assert main(["stats", str(edf), "-a", str(xml), "--allow-truncated"]) == 2
    assert "trim" in capsys.readouterr().err
    assert main(["stats", str(edf), "-a", str(xml), "--allow-truncated", "--trim-annotations"]) == 0


def test_flat_spo2_makes_oximetry_unavailable_not_the_whole_report(nsrr_study):
    edf, xml, truth = nsrr_study
    rec = read_recording(edf, annotations=xml)
    rec.signals["SPO2"].data[:] = 0.0  # a sensor that never worked
    summary = clinical_summary(rec)
    assert "oximetry" in summary.unavailable
    assert "SPO2" in summary.unavailable["oximetry"]
    assert summary.value("tst_min") == pytest.approx(truth["tst_h"] * 60)
    # hypopneas now qualify through scored desaturations and arousals instead
    assert summary.value("ahi_3a") == pytest.approx(truth["n_resp"] / truth["tst_h"], rel=1e-3)


def test_simulate_command_writes_a_library(tmp_path, capsys):
    out = tmp_path / "lib"
    assert main(["simulate", "--n", "2", "--out", str(out), "--profiles", "osa_severe",
                 "plm_disorder", "--seed", "40"]) == 0
    assert "2 of 2 nights" in capsys.readouterr().out
    manifest = (out / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 3 and "osa_severe" in manifest[1] and "plm_disorder" in manifest[2]
    assert main(["stats", str(out / "sim-00040-osa_severe.edf"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ahi = {m["name"]: m["value"] for sec in data["sections"].values() for m in sec}["ahi_3a"]
    assert ahi >= 30
    assert any("SIMULATED" in n for n in data["notes"])


def test_simulate_command_with_real_statistics_and_noise(tmp_path, capsys):
    from sleeplm.io import read_recording

    resp = ("obstructive_apnea", "central_apnea", "mixed_apnea", "hypopnea")
    events = {}
    for stats in ("v1", "real"):
        out = tmp_path / stats
        args = ["simulate", "--n", "1", "--out", str(out), "--profiles", "osa_moderate",
                "--seed", "7", "--statistics", stats]
        assert main(args + (["--noise", "real"] if stats == "real" else [])) == 0
        rec = read_recording(out / "sim-00007-osa_moderate.edf")
        events[stats] = rec.events[rec.events["type"].isin(resp)]
    assert events["v1"]["duration"].between(11.5, 30.5).all()  # v1: uniform 12-30 s
    assert not events["real"]["duration"].between(11.5, 30.5).all()  # UCDDB's durations
    with pytest.raises(SystemExit):
        main(["simulate", "--n", "1", "--out", str(tmp_path), "--statistics", "new"])


@pytest.mark.slow
def test_example_patients_generated_on_first_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLEEPLM_HOME", str(tmp_path))
    assert main(["example"]) == 0
    out = capsys.readouterr().out
    assert "SIMULATED night" in out and "AHI (AASM recommended rule" in out
    assert (tmp_path / "examples" / "manifest.csv").exists()
    assert main(["example", "--patient", "narcolepsy"]) == 0  # cached: no regeneration
    assert "sleep-onset REM" in capsys.readouterr().out
