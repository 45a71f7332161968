"""The simulator: deterministic, profiles land in their clinical ranges, files round-trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sleeplm.clinical import clinical_summary
from sleeplm.clinical.oximetry import detect_desaturations
from sleeplm.io import read_recording
from sleeplm.io.annotations import read_hypnogram_text
from sleeplm.io.channels import canonical_channel
from sleeplm.data import hypnogram_path
from sleeplm.recording import SLEEP_STAGES
from sleeplm.simulate import PROFILES, simulate_library, simulate_night, write_study
from sleeplm.simulate.study import LABEL_STYLES


def _short_hypnogram(hours: float = 3.0) -> np.ndarray:
    """The first ``hours`` of a real night, from its sleep onset (keeps the tests fast)."""
    st = read_hypnogram_text(hypnogram_path("SC4001E0")).stages
    first = int(np.flatnonzero(np.isin(st, SLEEP_STAGES))[0])
    return st[first - 10 : first + int(hours * 120)]


@pytest.fixture(scope="module")
def nights():
    hyp = _short_hypnogram()
    return {name: simulate_night(hyp, name, seed=11) for name in PROFILES}


def _summary(night):
    return clinical_summary(night.recording)


def test_deterministic_for_a_seed():
    hyp = _short_hypnogram(1.0)
    a = simulate_night(hyp, "osa_moderate", seed=5)
    b = simulate_night(hyp, "osa_moderate", seed=5)
    c = simulate_night(hyp, "osa_moderate", seed=6)
    for name, sig in a.recording.signals.items():
        np.testing.assert_array_equal(sig.data, b.recording.signals[name].data)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert not np.array_equal(a.recording.signals["EEG_C4"].data, c.recording.signals["EEG_C4"].data)


def test_native_rates_and_channels(nights):
    rec = nights["healthy_young"].recording
    assert rec.signals["SPO2"].sfreq == 1 and rec.signals["EEG_C4"].sfreq == 128
    assert rec.signals["ECG"].sfreq == 256 and rec.signals["THORAX"].sfreq == 32
    for name, sig in rec.signals.items():
        assert sig.duration == pytest.approx(rec.n_epochs * 30), name
    kinds = set(nights["osa_severe"].truth["type"])
    assert {"spindle", "k_complex", "slow_wave", "rapid_eye_movement", "obstructive_apnea",
            "hypopnea", "desaturation", "arousal", "artifact"} <= kinds


@pytest.mark.parametrize("profile,low,high", [
    ("healthy_young", 0, 5), ("healthy_older", 0, 5), ("osa_mild", 5, 15),
    ("osa_moderate", 15, 30), ("osa_severe", 30, 200), ("csa_cheyne_stokes", 15, 200),
    ("plm_disorder", 0, 5), ("insomnia", 0, 5), ("narcolepsy", 0, 5), ("rbd", 0, 5),
])
def test_profiles_land_in_their_ahi_category(nights, profile, low, high):
    ahi = _summary(nights[profile]).value("ahi_3a")
    assert low <= ahi < high, (profile, ahi)


def test_profile_signatures(nights):
    s = {name: _summary(n) for name, n in nights.items()}
    assert s["csa_cheyne_stokes"].value("central_apnea_index") > \
        s["csa_cheyne_stokes"].value("obstructive_apnea_index")
    assert s["osa_moderate"].value("ahi_supine") > s["osa_moderate"].value("ahi_nonsupine")
    assert s["plm_disorder"].value("plmi") > 15 > s["healthy_young"].value("plmi")
    assert s["insomnia"].value("sleep_onset_latency_min") > 30
    assert s["insomnia"].value("waso_min") > 30
    assert s["narcolepsy"].value("rem_latency_min") <= 15
    assert s["healthy_older"].value("n3_pct_tst") < s["healthy_young"].value("n3_pct_tst")


def test_rem_without_atonia_shows_in_chin_emg(nights):
    def rem_to_n2_ratio(night):
        rec = night.recording
        emg = rec.signals["EMG_CHIN"]
        stage = np.repeat(rec.stages, int(30 * emg.sfreq))
        rms = {s: float(np.sqrt(np.mean(emg.data[stage == s] ** 2))) for s in ("R", "N2")}
        return rms["R"] / rms["N2"]

    assert rem_to_n2_ratio(nights["rbd"]) > 2 * rem_to_n2_ratio(nights["healthy_young"])


def test_odi_matches_placed_desaturations(nights):
    night = nights["osa_severe"]
    truth = night.truth[night.truth["type"] == "desaturation"]
    placed = int((truth["attributes"].map(lambda a: a["drop"]) >= 3).sum())
    found = len(detect_desaturations(night.recording.signals["SPO2"], drop=3.0))
    assert found == pytest.approx(placed, rel=0.1)


def test_airflow_really_drops_during_apneas(nights):
    rec = nights["osa_severe"].recording
    flow = rec.signals["AIRFLOW"]
    ratios = []
    for ev in rec.events_of("obstructive_apnea", "central_apnea").itertuples():
        during = flow.segment(ev.onset + 2, ev.onset + ev.duration - 2)
        before = flow.segment(ev.onset - 60, ev.onset - 5)
        if during.size and before.size:
            ratios.append(np.std(during) / np.std(before))
    assert len(ratios) > 10 and np.median(ratios) < 0.2
    thorax, abdomen = rec.signals["THORAX"], rec.signals["ABDOMEN"]
    corr = [np.corrcoef(thorax.segment(e.onset + 3, e.onset + e.duration - 2),
                        abdomen.segment(e.onset + 3, e.onset + e.duration - 2))[0, 1]
            for e in rec.events_of("obstructive_apnea").itertuples() if e.duration > 12]
    assert np.median(corr) < 0  # paradoxical effort


def test_files_round_trip_through_the_readers(nights, tmp_path):
    night = nights["osa_moderate"]
    files = write_study(night, tmp_path)
    back = read_recording(files.edf)  # finds <id>-nsrr.xml by name
    assert "SIMULATED" in back.notes[0] and "SIMULATED" in back.info.source
    assert set(back.signals) == set(night.recording.signals)
    for name, sig in night.recording.signals.items():
        assert back.signals[name].sfreq == sig.sfreq
        assert back.signals[name].label in {style[name] for style in LABEL_STYLES.values()}
    np.testing.assert_array_equal(back.stages, night.recording.stages)
    assert back.events["type"].value_counts().to_dict() == \
        night.recording.events["type"].value_counts().to_dict()
    ours = clinical_summary(night.recording)
    theirs = clinical_summary(back)
    for name in ("ahi_3a", "ahi_4", "odi3", "tst_min", "plmi", "arousal_index", "hr_mean"):
        assert theirs.value(name) == pytest.approx(ours.value(name), rel=0.02, abs=0.2), name
    hyp = read_recording(files.hypnogram)
    np.testing.assert_array_equal(hyp.stages, night.recording.stages)
    truth = pd.read_csv(files.truth)
    assert len(truth) == len(night.truth)


def test_every_label_style_maps_back():
    for style, labels in LABEL_STYLES.items():
        for canonical, label in labels.items():
            assert canonical_channel(label) == canonical, (style, label)


def test_library_manifest_and_failures_do_not_stop_the_batch(tmp_path):
    with pytest.raises(KeyError, match="unknown profile"):
        simulate_library(1, tmp_path, profiles=["no_such"], progress=False)
    manifest = simulate_library(2, tmp_path, profiles=["healthy_young"], seed=3,
                                hypnogram="no_such_hypnogram", progress=False)
    assert (manifest["status"].str.startswith("failed")).all()
    manifest = simulate_library(1, tmp_path, profiles=["osa_mild"], seed=3, progress=False)
    assert list(manifest["status"]) == ["ok"]
    assert (tmp_path / manifest["edf"][0]).exists()
    assert {"patient_id", "profile", "age", "sex", "seed"} <= set(manifest.columns)


def test_library_plan_gives_each_night_its_own_hypnogram(tmp_path):
    # a plan's third item overrides ``hypnogram`` for that night only (both ids are missing,
    # so each night fails fast, naming the source it was given)
    manifest = simulate_library(0, tmp_path, plan=[("osa_mild", 5, "no_such_one"),
                                                   ("osa_mild", 6)],
                                hypnogram="no_such_default", progress=False)
    status = dict(zip(manifest["seed"], manifest["status"]))
    assert "no_such_one" in status[5] and "no_such_default" not in status[5]
    assert "no_such_default" in status[6]


def test_library_runs_into_one_folder_add_up(tmp_path):
    # two runs with different seeds make one manifest; a patient simulated again replaces its
    # row (missing stage sources: each night fails fast, which is still a manifest row)
    simulate_library(2, tmp_path, profiles=["osa_mild"], seed=10, hypnogram="no_such_a",
                     progress=False)
    run2 = simulate_library(2, tmp_path, profiles=["osa_mild"], seed=11, hypnogram="no_such_b",
                            progress=False)
    assert list(run2["seed"]) == [11, 12]
    on_disk = pd.read_csv(tmp_path / "manifest.csv")
    assert list(on_disk["seed"]) == [10, 11, 12]
    assert on_disk["patient_id"].is_unique
    status = dict(zip(on_disk["seed"], on_disk["status"]))
    assert "no_such_a" in status[10] and "no_such_b" in status[11]
