"""Multi-scorer hypnograms: the consensus vote, leave-one-out agreement, the `sleeplm agreement`
command, and the sleep architecture of the 80 real Dreem consensus hypnograms against YASA."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import YASA_NAMES, YASA_SAME
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score

from sleeplm.cli import main
from sleeplm.clinical import (
    consensus_hypnogram, pooled_agreement, read_scorings, scorer_agreement, stages_from_codes,
)
from sleeplm.clinical.architecture import architecture_from_stages
from sleeplm.clinical.consensus import DREEM_CODES, SCORED_STAGES
from sleeplm.data import DREEM_STAGES, dreem_cohort, dreem_night_ids, dreem_scorings
from sleeplm.errors import UnknownStageError

# --------------------------------------------------------------------------- the vote
def test_majority_and_agreement_share():
    r = consensus_hypnogram([["W", "N2", "R", "N3"],
                             ["W", "N2", "N2", "N3"],
                             ["N1", "N2", "R", "N3"]])
    assert r.stages.tolist() == ["W", "N2", "R", "N3"]
    assert r.agreement.tolist() == pytest.approx([2 / 3, 1.0, 2 / 3, 1.0])
    assert r.n_scored.tolist() == [3, 3, 3, 3] and not r.tied.any()
    assert r.scorer_names == ("scorer_1", "scorer_2", "scorer_3")


def test_unscored_is_no_vote_and_an_epoch_nobody_scored_stays_unscored():
    r = consensus_hypnogram({"a": ["UNS", "UNS", "N2", "UNS"],
                             "b": ["UNS", "R", "UNS", "W"],
                             "c": ["UNS", "R", "N2", "N1"]})
    # epoch 0: nobody; 1: R,R; 2: N2,N2 (a and c); 3: W vs N1 (a tie of two single votes)
    assert r.stages.tolist()[:3] == ["UNS", "R", "N2"]
    assert r.n_scored.tolist() == [0, 2, 2, 2]
    assert np.isnan(r.agreement[0]) and r.agreement[1:3].tolist() == [1.0, 1.0]
    assert r.agreement[3] == 0.5 and r.tied.tolist() == [False, False, False, True]
    assert r.scorer_names == ("a", "b", "c")


def _tie_break_night():
    """Four scorers; scorer_1 errs a lot, scorer_2 a little, scorer_3 and _4 agree."""
    base = np.array(["W", "N1", "N2", "N3", "R"] * 6)
    s = np.tile(base, (4, 1))
    s[0, ::3] = "W"         # scorer_1: 10 epochs called W whatever they were
    s[1, [2, 7]] = "N1"     # scorer_2: two errors
    ties = np.array([["R", "W"], ["R", "N1"], ["N2", "UNS"], ["N2", "N3"]])  # scorer x epoch
    return np.hstack([s, ties])


def test_tie_goes_to_the_best_ranked_scorer_among_those_tied():
    r = consensus_hypnogram(_tie_break_night())
    # ranking by kappa vs the others' unique majority: scorer_3 and _4 both agree fully
    # (equal kappa, input order kept), then scorer_2, then scorer_1
    assert r.ranking == ("scorer_3", "scorer_4", "scorer_2", "scorer_1")
    kappa = r.ranking_kappa
    assert kappa["scorer_3"] == kappa["scorer_4"] > kappa["scorer_2"] > kappa["scorer_1"]
    # 2-2 tie (R: scorers 1, 2; N2: scorers 3, 4) -> scorer_3's N2, not scorer_1's R;
    # 1-1-1 tie (W, N1, N3; scorer_3 did not score) -> scorer_4's N3
    assert r.stages[-2:].tolist() == ["N2", "N3"]
    assert r.tied[-2:].all() and not r.tied[:-2].any()


def test_weights_change_the_vote():
    night = [["R", "W"], ["N2", "W"], ["N2", "N1"]]
    assert consensus_hypnogram(night).stages.tolist() == ["N2", "W"]
    assert consensus_hypnogram(night, weights=[3, 1, 1]).stages.tolist() == ["R", "W"]


# --------------------------------------------------------------------------- agreement
def test_leave_one_out_known_answer():
    a = ["W", "W", "N2", "N2", "R", "R"]
    b = ["W", "W", "N2", "N2", "R", "N2"]
    c = ["W", "N1", "N2", "N3", "R", "R"]
    rep = scorer_agreement([a, b, c])
    # two scorers have symmetric kappas, so their ties go to the first in input order:
    # the consensus of (b, c) is b, that of (a, c) and of (a, b) is a
    assert rep.scorer("scorer_1").accuracy == pytest.approx(5 / 6)
    assert rep.scorer("scorer_1").kappa == pytest.approx(cohen_kappa_score(a, b))
    assert rep.scorer("scorer_2").accuracy == pytest.approx(5 / 6)
    assert rep.scorer("scorer_3").accuracy == pytest.approx(4 / 6)
    assert rep.scorer("scorer_3").kappa == pytest.approx(cohen_kappa_score(c, a))
    assert rep.scorer("scorer_3").confusion == confusion_matrix(
        c, a, labels=list(SCORED_STAGES)).tolist()
    assert rep.scorer("scorer_3").f1["N1"] == 0.0 and rep.scorer("scorer_1").f1["N1"] is None
    assert rep.scorer("scorer_3").n_epochs == 6
    assert rep.mean_accuracy == pytest.approx((5 / 6 + 5 / 6 + 4 / 6) / 3)
    assert rep.confusion_axes.startswith("rows: the scorer")


def test_metrics_match_sklearn_against_the_consensus_of_the_others():
    rng = np.random.default_rng(0)
    truth = rng.choice(SCORED_STAGES, size=400, p=[0.2, 0.1, 0.4, 0.15, 0.15])
    night = np.tile(truth, (4, 1)).astype("<U3")
    for k in range(4):
        flip = rng.random(400) < 0.1 + 0.05 * k
        night[k, flip] = rng.choice(SCORED_STAGES, size=flip.sum())
        night[k, rng.random(400) < 0.03] = "UNS"
    rep = scorer_agreement(night)
    for k, entry in enumerate(rep.scorers):
        ref = consensus_hypnogram(np.delete(night, k, axis=0)).stages
        both = (night[k] != "UNS") & (ref != "UNS")
        y, r = night[k][both], ref[both]
        assert entry.n_epochs == both.sum()
        assert entry.accuracy == pytest.approx(accuracy_score(r, y))
        assert entry.kappa == pytest.approx(cohen_kappa_score(r, y))
        labels = list(SCORED_STAGES)
        per_stage = f1_score(r, y, labels=labels, average=None)
        assert list(entry.f1.values()) == pytest.approx(list(per_stage))
        assert entry.macro_f1 == pytest.approx(f1_score(r, y, labels=labels, average="macro"))
        assert entry.confusion == confusion_matrix(y, r, labels=labels).tolist()


def test_pooled_sums_the_nights_epochs():
    rng = np.random.default_rng(1)
    nights = {f"n{i}": rng.choice(SCORED_STAGES, size=(3, 60 + 10 * i)) for i in range(3)}
    out = pooled_agreement(nights, groups={"n0": "x", "n1": "x", "n2": "y"})
    assert set(out.nights) == {"n0", "n1", "n2"} and list(out.groups) == ["x", "y"]
    assert out.pooled.n_nights == 3 and out.groups["x"].n_nights == 2
    for k in range(3):
        summed = sum(np.array(out.nights[n].scorers[k].confusion) for n in nights)
        assert out.pooled.scorers[k].confusion == summed.tolist()
        assert out.pooled.scorers[k].n_epochs == summed.sum()
        assert out.pooled.scorers[k].accuracy == pytest.approx(np.trace(summed) / summed.sum())
    assert out.groups["y"].scorers[0].confusion == out.nights["n2"].scorers[0].confusion


# --------------------------------------------------------------------------- errors
def test_errors_say_what_to_do():
    with pytest.raises(ValueError, match="at least 2 scorers"):
        scorer_agreement([["W", "N2"]])
    with pytest.raises(ValueError, match="different lengths.*Pad the shorter"):
        consensus_hypnogram([["W", "N2"], ["W"]])
    with pytest.raises(ValueError, match=r"shape \(n_scorers, n_epochs\)"):
        consensus_hypnogram(np.array(["W", "N2"]))
    with pytest.raises(UnknownStageError, match="unknown stage labels.*'REM'"):
        consensus_hypnogram([["W", "REM"], ["W", "R"]])
    with pytest.raises(UnknownStageError, match="stages_from_codes"):
        consensus_hypnogram(np.zeros((2, 5), dtype=int))
    with pytest.raises(UnknownStageError, match=r"unknown stage codes \[7\]"):
        stages_from_codes([0, 7])
    with pytest.raises(ValueError, match="one number per scorer"):
        consensus_hypnogram([["W"], ["W"]], weights=[1.0])
    with pytest.raises(ValueError, match="positive"):
        consensus_hypnogram([["W"], ["W"]], weights=[1.0, 0.0])
    with pytest.raises(ValueError, match="same scorers"):
        pooled_agreement({"a": {"x": ["W"], "y": ["W"]}, "b": {"x": ["W"], "z": ["W"]}})


def test_dreem_codes_convert():
    assert DREEM_CODES == DREEM_STAGES  # one coding, defined where clinical may see it
    assert stages_from_codes(np.array([[0, 1, 2], [3, 4, -1]], dtype=np.int8)).tolist() == [
        ["W", "N1", "N2"], ["N3", "R", "UNS"]]


# --------------------------------------------------------------------------- files
def _write_dreem_layout(folder, nights: dict[str, np.ndarray]) -> None:
    for k in range(5):
        (folder / f"scorer_{k + 1}").mkdir(parents=True)
        for nid, codes in nights.items():
            (folder / f"scorer_{k + 1}" / f"{nid}.json").write_text(json.dumps(codes[k].tolist()))


def test_read_scorings_folder_and_csv(tmp_path):
    nid = dreem_night_ids("dodh")[0]
    _write_dreem_layout(tmp_path / "dreem", {nid: dreem_scorings(nid)})
    # a ragged night with stage strings, and one night only some scorers have
    for k in range(5):
        stages = ["W", "N2", "R"][: 3 - (k == 4)]
        (tmp_path / "dreem" / f"scorer_{k + 1}" / "short.json").write_text(json.dumps(stages))
    (tmp_path / "dreem" / "scorer_1" / "lonely.json").write_text("[0, 1]")
    got = read_scorings(tmp_path / "dreem")
    assert sorted(got) == sorted([nid, "short"])
    expected = stages_from_codes(dreem_scorings(nid))
    assert np.array_equal(np.vstack(list(got[nid].values())), expected)
    assert got["short"]["scorer_5"].tolist() == ["W", "N2", "UNS"]
    csv = tmp_path / "night7.csv"
    csv.write_text("epoch,alice,bob,carol\n0,W,0,W\n1,N2,2,\n2,R,4,R\n")
    rows = read_scorings(csv)["night7"]
    assert list(rows) == ["alice", "bob", "carol"]
    assert rows["bob"].tolist() == ["W", "N2", "R"] and rows["carol"].tolist() == ["W", "UNS", "R"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_scorings(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no scorer sub-folder"):
        read_scorings(tmp_path)  # holds dreem/ and a CSV, but no scorer folder of JSON itself
    (tmp_path / "bad.csv").write_text("a,b\nW,X1\n")
    with pytest.raises(UnknownStageError, match="bad.csv, column b: unknown stage 'X1'"):
        read_scorings(tmp_path / "bad.csv")


# --------------------------------------------------------------------------- real nights
@pytest.fixture(scope="module")
def dreem():
    nights = {nid: stages_from_codes(dreem_scorings(nid)) for nid in dreem_night_ids()}
    groups = {nid: dreem_cohort(nid) for nid in nights}
    return nights, groups, pooled_agreement(nights, groups=groups)


def test_consensus_of_all_80_real_nights(dreem):
    nights, groups, _ = dreem
    assert len(nights) == 80 and sorted(set(groups.values())) == ["dodh", "dodo"]
    assert list(groups.values()).count("dodh") == 25
    n_tied = n_epochs = 0
    for nid, night in nights.items():
        r = consensus_hypnogram(night)
        assert r.n_epochs == night.shape[1] > 700
        # every epoch is scored by someone (scorers start at different lights-off times)
        assert (r.n_scored >= 1).all() and not (r.stages == "UNS").any()
        assert set(r.stages) <= set(SCORED_STAGES) and np.nanmin(r.agreement) >= 0.2
        n_tied += int(r.tied.sum())
        n_epochs += r.n_epochs
    assert n_epochs == 85911
    assert 0.01 < n_tied / n_epochs < 0.05  # ties are decided on ~2.4% of the epochs


def test_real_scorers_agree_with_the_others_like_the_literature(dreem):
    _, _, out = dreem
    pooled = out.pooled
    assert pooled.n_nights == 80 and len(pooled.scorers) == 5
    kappas = [s.kappa for s in pooled.scorers]
    assert all(0.65 < k < 0.85 for k in kappas), kappas  # measured 0.714-0.771
    assert pooled.mean_kappa == pytest.approx(0.747, abs=0.005)  # literature: about 0.76
    assert pooled.mean_accuracy == pytest.approx(0.822, abs=0.005)
    assert pooled.mean_macro_f1 == pytest.approx(0.753, abs=0.005)
    # N1 is the stage experts agree on least, wake and REM the most
    assert min(pooled.mean_f1, key=pooled.mean_f1.get) == "N1"
    assert pooled.mean_f1["N1"] < 0.5 < 0.85 < pooled.mean_f1["W"]
    h, o = out.groups["dodh"], out.groups["dodo"]
    assert (h.n_nights, o.n_nights) == (25, 55)
    assert h.mean_kappa == pytest.approx(0.761, abs=0.005)
    assert o.mean_kappa == pytest.approx(0.739, abs=0.005)
    assert o.mean_kappa < h.mean_kappa and o.mean_f1["N3"] < h.mean_f1["N3"]  # OSA nights
    for s in pooled.scorers:
        assert sum(map(sum, s.confusion)) == s.n_epochs > 75_000
    assert len(out.nights) == 80


# --------------------------------------------------------------------------- command line
def test_cli_agreement_on_the_dreem_nights(dreem, tmp_path, capsys):
    out_json = tmp_path / "agreement.json"
    assert main(["agreement", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    pooled = dreem[2].pooled
    assert "All 80 nights of the Dreem Open Datasets" in text
    assert "DOD-H (healthy), 25 nights" in text
    assert "DOD-O (obstructive sleep apnea), 55 nights" in text
    assert "macro-F1" in text and "F1 N1" in text
    mean_row = next(line for line in text.splitlines() if line.startswith("mean"))
    assert f"{pooled.mean_kappa:.3f}" in mean_row and f"{pooled.mean_accuracy:.3f}" in mean_row
    data = json.loads(out_json.read_text())
    assert data["pooled"]["n_nights"] == 80 and len(data["nights"]) == 80
    assert data["pooled"]["mean_kappa"] == pytest.approx(pooled.mean_kappa)
    assert set(data["groups"]) == {"DOD-H (healthy)", "DOD-O (obstructive sleep apnea)"}
    assert data["pooled"]["confusion_axes"].startswith("rows: the scorer")

    assert main(["agreement", "--dreem", "dodo"]) == 0
    text = capsys.readouterr().out
    assert "All 55 nights of the Dreem Open Datasets, DOD-O" in text and "DOD-H" not in text


def test_cli_agreement_on_user_files(tmp_path, capsys):
    ids = dreem_night_ids("dodo")[:2]
    codes = {nid: dreem_scorings(nid) for nid in ids}
    _write_dreem_layout(tmp_path / "scorers", codes)
    csv = tmp_path / "extra.csv"
    csv.write_text("s1,s2,s3,s4,s5\n" + "\n".join(",".join(map(str, col))
                                                 for col in codes[ids[0]].T) + "\n")
    out_json = tmp_path / "a.json"
    folder = str(tmp_path / "scorers")
    assert main(["agreement", "--scorings", folder, "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "All 2 nights: each scorer" in text
    expected = pooled_agreement({nid: stages_from_codes(c) for nid, c in codes.items()})
    assert json.loads(out_json.read_text())["pooled"]["mean_kappa"] == pytest.approx(
        expected.pooled.mean_kappa)
    # scorer names differ between the folder (scorer_1..) and the CSV (s1..): a clear error
    assert main(["agreement", "--scorings", str(tmp_path / "scorers"), str(csv)]) == 2
    assert "same scorers" in capsys.readouterr().err
    assert main(["agreement", "--scorings", str(csv)]) == 0
    assert "s5" in capsys.readouterr().out


def test_cli_agreement_errors(tmp_path, capsys):
    assert main(["agreement", "--scorings", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    one = tmp_path / "one.csv"
    one.write_text("alice\nW\nN2\n")
    assert main(["agreement", "--scorings", str(one)]) == 2
    assert "at least 2 scorers" in capsys.readouterr().err


# --------------------------------------------------------------------------- architecture


def _max_differences(hypnograms) -> tuple[dict[str, float], int]:
    """Largest |ours - YASA| per measure, and how many hypnograms have no REM at all."""
    yasa = pytest.importorskip("yasa")
    worst = dict.fromkeys([*YASA_SAME, "rem_latency_min", "uns_min"], 0.0)
    no_rem = 0
    for stages in hypnograms:
        ours = {m.name: m.value for m in architecture_from_stages(stages)}
        theirs = yasa.Hypnogram([YASA_NAMES[s] for s in stages], n_stages=5).sleep_statistics()
        for name, key in YASA_SAME.items():
            worst[name] = max(worst[name], abs(ours[name] - theirs[key]))
        # REM latency: AASM (ours) from sleep onset, YASA from the start of the hypnogram
        if ours["rem_latency_min"] is None:  # no REM scored: ours is missing, YASA's NaN
            assert np.isnan(theirs["Lat_REM"])
            no_rem += 1
        else:
            worst["rem_latency_min"] = max(worst["rem_latency_min"], abs(
                ours["rem_latency_min"] - (theirs["Lat_REM"] - theirs["SOL"])))
        worst["uns_min"] = max(worst["uns_min"], abs(ours.get("uns_min", 0.0)
                                                     - theirs.get("UNS", 0.0)))
    return worst, no_rem


def test_architecture_of_the_80_consensus_hypnograms_matches_yasa(dreem):
    nights = dreem[0]
    worst, no_rem = _max_differences(consensus_hypnogram(n).stages for n in nights.values())
    # minutes and counts agree exactly; YASA rounds SE, SME, SFI and the % to 3 decimals
    assert max(worst.values()) < 1e-3, worst
    assert no_rem == 2  # two DOD-O consensus nights hold no REM epoch at all


def test_architecture_of_the_400_single_scorer_hypnograms_matches_yasa(dreem):
    # the scorers' own hypnograms carry the unscored (UNS) epochs before their lights-off:
    # both count them in TIB and SOL (so SE falls), neither counts them as sleep or wake
    nights = dreem[0]
    worst, no_rem = _max_differences(row for n in nights.values() for row in n)
    assert max(worst.values()) < 1e-3, worst
    assert no_rem == 10
