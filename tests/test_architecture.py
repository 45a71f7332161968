"""Sleep architecture agrees with YASA on 39 real Sleep-EDF hypnograms."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import YASA_NAMES, YASA_SAME

from sleeplm.clinical.architecture import architecture_from_stages, sleep_architecture
from sleeplm.data import hypnogram_ids, hypnogram_path, subject_of
from sleeplm.errors import MissingChannelError
from sleeplm.io import read_recording
from sleeplm.recording import Recording



def test_all_39_bundled():
    ids = hypnogram_ids()
    assert len(ids) == 39
    assert len({subject_of(i) for i in ids}) == 20


@pytest.mark.parametrize("rec_id", hypnogram_ids())
def test_statistics_match_yasa(rec_id):
    yasa = pytest.importorskip("yasa")
    rec = read_recording(hypnogram_path(rec_id))
    ours = {m.name: m.value for m in sleep_architecture(rec)}
    theirs = yasa.Hypnogram([YASA_NAMES[s] for s in rec.stages], n_stages=5).sleep_statistics()
    for name, key in YASA_SAME.items():
        assert ours[name] == pytest.approx(theirs[key], abs=1e-3), (name, key)
    if "UNS" in theirs:
        assert ours["uns_min"] == pytest.approx(theirs["UNS"])
    # REM latency differs on purpose: AASM counts from sleep onset, YASA from the recording start.
    assert ours["rem_latency_min"] == pytest.approx(theirs["Lat_REM"] - theirs["SOL"])


def test_rk_stages_3_and_4_become_n3_and_question_mark_unscored():
    raw = [line.strip() for line in hypnogram_path("SC4001E0").read_text().splitlines() if line.strip()]
    rec = read_recording(hypnogram_path("SC4001E0"))
    assert rec.n_epochs == len(raw)
    assert int(np.sum(rec.stages == "N3")) == raw.count("3") + raw.count("4")
    assert int(np.sum(rec.stages == "UNS")) == raw.count("?")
    assert int(np.sum(rec.stages == "W")) == raw.count("W")


def test_hand_computed_small_hypnogram():
    # W W N1 N2 N2 W N2 R R W  -> 10 epochs of 30 s
    st = np.array(["W", "W", "N1", "N2", "N2", "W", "N2", "R", "R", "W"])
    m = {x.name: x for x in architecture_from_stages(st)}
    assert m["tib_min"].value == 5.0
    assert m["spt_min"].value == 3.5  # epochs 2..8
    assert m["tst_min"].value == 3.0
    assert m["waso_min"].value == 0.5
    assert m["sleep_onset_latency_min"].value == 1.0
    assert m["rem_latency_min"].value == 2.5  # epoch 2 -> epoch 7
    assert m["awakenings"].value == 1
    assert m["fragmentation_index"].value == pytest.approx(2 / (3.0 / 60))  # 2 sleep->wake
    assert m["sleep_efficiency_pct"].value == pytest.approx(60.0)
    assert m["tst_min"].evidence.epochs == [(2, 4), (6, 8)]
    assert m["rem_latency_min"].evidence.epochs == [(2, 2), (7, 7)]


def test_no_sleep_and_no_hypnogram():
    m = {x.name: x for x in architecture_from_stages(np.array(["W"] * 6))}
    assert m["tst_min"].value == 0 and m["sleep_onset_latency_min"].value is None
    with pytest.raises(MissingChannelError, match="needs scored sleep stages"):
        sleep_architecture(Recording())


def test_the_sleep_onset_and_first_rem_evidence_give_their_clock_times():
    """"when did they first hit REM?": the evidence named the epochs only, and a 1.5 B model
    answered with the sleep onset's epoch; with the night's start it names their times."""
    import datetime as dt

    stages = np.array(["W"] * 4 + ["N1", "N2"] + ["R"] * 3 + ["W"])
    ms = {m.name: m for m in architecture_from_stages(stages)}
    assert ms["rem_latency_min"].evidence.note == "sleep onset and first R epoch"
    start = dt.datetime(2026, 1, 1, 22, 15, 0)
    ms = {m.name: m for m in architecture_from_stages(stages, start=start)}
    assert ms["rem_latency_min"].value == 1.0  # the same numbers
    assert ms["rem_latency_min"].evidence.note == ("sleep onset (22:17:00) and first R epoch "
                                                   "(22:18:00)")
    assert ms["sleep_onset_latency_min"].evidence.note == "first sleep epoch (22:17:00)"
