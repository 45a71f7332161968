"""Decision rules of zero-shot scores: intervals with gaps, event counts, the grid searches of
training.calibrate, calibration.json next to the weights, and calibrate -> evaluate end to
end on a tiny corpus with a validation night."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from conftest import build_tiny_corpus, corpus_checkpoint
from sleeplm.model.calibration import (CALIBRATION_NAME, Calibration, EventIndexRule, IntervalRule,
                                 load_calibration, save_calibration, weights_digest)
from sleeplm.model.zeroshot import count_events, night_event_index, rule_intervals, to_intervals
from training import calibrate as C
from training import evaluate as ev

#: SC401 hashes to train, SC402 to test, SC419 to validation (sleeplm.corpus.build.split_of).
PLAN = (("healthy_young", 31, "SC4011E0"), ("osa_moderate", 32, "SC4021E0"),
        ("osa_severe", 33, "SC4191E0"))


def test_gaps_merge_runs_and_count_events():
    ep = np.arange(12)
    pos = [1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 1, 1]
    assert to_intervals(ep, pos) == [(0, 1), (3, 3), (6, 6), (10, 11)]
    assert to_intervals(ep, pos, max_gap=1) == [(0, 3), (6, 6), (10, 11)]
    assert to_intervals(ep, pos, max_gap=2) == [(0, 6), (10, 11)]
    assert to_intervals(ep, pos, max_gap=3) == [(0, 11)]
    with pytest.raises(ValueError, match="max_gap"):
        to_intervals(ep, pos, max_gap=-1)
    m = np.asarray([0.05, 0.2, -0.1, 0.05, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.01, 0.2])
    assert rule_intervals(ep, m) == [(0, 1), (3, 3), (6, 6), (10, 11)]
    assert rule_intervals(ep, m, IntervalRule(threshold=0.04)) == [(0, 1), (3, 3), (6, 6),
                                                                  (11, 11)]
    assert rule_intervals(ep, m, IntervalRule(threshold=0.04, max_gap=2)) == [(0, 6), (11, 11)]
    assert count_events([(0, 1), (3, 8)]) == 2
    assert count_events([(0, 1), (3, 8)], epochs_per_event=2) == 1 + 3
    assert count_events([(0, 0)], epochs_per_event=4) == 1  # a short run is still one event


def test_event_index_rule_counts_long_runs_as_several_events():
    # one hour of sleep (120 epochs): a run of 40 epochs is 1 event by the plain rule, 20
    # by 2 epochs per event
    m = np.full(120, -1.0)
    m[10:50] = 0.5
    ep, asleep = np.arange(120), np.ones(120, bool)
    assert night_event_index(m, ep, asleep) == pytest.approx(1.0)
    assert night_event_index(m, ep, asleep, rule=EventIndexRule(epochs_per_event=2)) == \
        pytest.approx(20.0)
    # wake epochs never count, and are not sleep time
    asleep[10:30] = False
    assert night_event_index(m, ep, asleep, rule=EventIndexRule(epochs_per_event=2)) == \
        pytest.approx(10 / (100 / 120))


def _night(rng, n=240, events=30, length=2, dip=True):
    """Margins and truth of one synthetic night: events of ``length`` epochs score high, with
    a one-epoch dip inside half of the longer ones (``dip``), background noise elsewhere."""
    truth = np.zeros(n, bool)
    starts = rng.choice(np.arange(2, n - 8, 7), events, replace=False)
    for s in starts:
        truth[s:s + length] = True
    m = rng.normal(-0.15, 0.03, n)
    m[truth] = rng.normal(0.12, 0.03, truth.sum())
    if dip:
        for s in starts[::2]:
            if length >= 3:
                m[s + 1] = -0.05  # the event's middle epoch reads quiet
    return m, truth


def test_choose_interval_rule_finds_the_gap_and_never_loses_to_plain():
    rng = np.random.default_rng(0)
    parts = [_night(rng, length=3) for _ in range(3)]
    m = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    nights = np.repeat(np.asarray(["a", "b", "c"], dtype=object), 240)
    ep = np.tile(np.arange(240), 3)
    rule, chosen, plain = C.choose_interval_rule(nights, ep, m, y)
    assert rule.max_gap >= 1  # bridging the dip turns two half-events into one
    assert chosen["f1"] > plain["f1"] and chosen["f1"] > 0.95
    # margins shifted by a constant: the threshold follows them
    rule2, chosen2, _ = C.choose_interval_rule(nights, ep, m + 0.08, y)
    assert chosen2["f1"] == pytest.approx(chosen["f1"], abs=0.02) and rule2.threshold > 0


def test_choose_event_index_rule_reads_severity_of_merged_runs():
    rng = np.random.default_rng(1)
    per, ahi = {}, {}
    for k, true_ahi in enumerate((2.0, 8.0, 20.0, 45.0, 60.0, 3.0)):
        n = 240  # 2 hours
        events = int(true_ahi * 2)
        m = np.full(n, -0.2) + rng.normal(0, 0.01, n)
        # events of 2 epochs, back to back in severe nights: runs merge
        pos = np.zeros(n, bool)
        spacing = max(2, n // max(events, 1))
        for i in range(events):
            pos[i * spacing:i * spacing + 2] = True
        m[pos] = 0.1
        per[f"n{k}"] = (m, np.arange(n), np.ones(n, bool))
        ahi[f"n{k}"] = true_ahi
    rule, chosen, plain = C.choose_event_index_rule(per, ahi, epochs_per_event=(0.0, 2.0),
                                                    gaps=(0, 1))
    assert chosen["accuracy"] >= plain["accuracy"]
    assert chosen["accuracy"] == 1.0 and rule.epochs_per_event == 2.0
    with pytest.raises(ValueError, match="no night"):
        C.choose_event_index_rule({}, ahi)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    corpus, report = build_tiny_corpus(tmp_path_factory, PLAN, "cal")
    assert report.nights_per_split.get("validation") == 1
    ck = corpus_checkpoint(corpus, tmp_path_factory.mktemp("cal_ck"))
    return corpus, ck


def test_calibration_file_round_trip_and_stale_weights(tmp_path, setup, caplog):
    _, ck = setup
    assert load_calibration(tmp_path).is_plain and load_calibration(None).is_plain
    cal = Calibration(weights_sha256=weights_digest(ck), n_nights=2,
                      localisation={"hypopnea": IntervalRule(threshold=0.03, max_gap=1)},
                      event_index=EventIndexRule(threshold=0.02, epochs_per_event=2))
    folder = tmp_path / "ck"
    folder.mkdir()
    for f in ck.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    save_calibration(cal, folder)
    back = load_calibration(folder)
    assert back == cal and not back.is_plain
    assert back.interval_rule("hypopnea").max_gap == 1
    assert back.interval_rule("spindles") == IntervalRule()  # not calibrated: plain
    # other weights: the file is ignored, with a warning naming the fix
    (folder / "model.safetensors").write_bytes(b"other weights")
    with caplog.at_level(logging.WARNING, logger="sleeplm"):
        assert load_calibration(folder).is_plain
    assert "other weights" in caplog.text and "training.calibrate" in caplog.text
    (folder / CALIBRATION_NAME).write_text("{not json")
    assert load_calibration(folder).is_plain


def test_calibrate_refuses_other_splits(setup):
    corpus, ck = setup
    for split in ("test", "train"):
        with pytest.raises(ValueError, match="validation split only"):
            C.calibrate(ck, corpus, split)
    assert C.main(["--checkpoint", str(ck), "--corpus", str(corpus), "--split", "test"]) == 2
    if not (ck / CALIBRATION_NAME).exists():  # --only captions keeps rules that must exist
        with pytest.raises(ValueError, match="without --only first"):
            C.calibrate(ck, corpus, only="captions")
    with pytest.raises(ValueError, match="only='rules'"):
        C.calibrate(ck, corpus, only="rules")


def test_calibrate_then_evaluate_uses_the_rules(setup, capsys):
    corpus, ck = setup
    assert not (ck / CALIBRATION_NAME).exists()
    plain = ev.evaluate(ck, corpus, "test", caption_sample=10, yasa=False)
    assert plain["localisation"]["calibration"]["calibrated"] is False
    assert C.main(["--checkpoint", str(ck), "--corpus", str(corpus)]) == 0
    printed = capsys.readouterr().out
    assert "Decision rules chosen on" in printed and "event index" in printed
    saved = json.loads((ck / CALIBRATION_NAME).read_text())
    assert saved["split"] == "validation" and saved["n_nights"] == 1
    assert saved["weights_sha256"] == weights_digest(ck)
    cal = load_calibration(ck)
    # on the calibration night, the chosen rule is at least as good as the plain one
    for name, r in cal.validation.items():
        if name not in ("event_index", "captions"):
            assert (r["chosen"]["f1"] or 0) >= (r["plain"]["f1"] or 0), name
    assert cal.validation["event_index"]["chosen"]["accuracy"] >= \
        cal.validation["event_index"]["plain"]["accuracy"]
    res = ev.evaluate(ck, corpus, "test", caption_sample=10, yasa=False)
    loc = res["localisation"]
    assert loc["calibration"]["calibrated"] is True
    assert "validation" in loc["calibration"]["chosen_on"]
    for name, rule in cal.localisation.items():
        if name.startswith(ev.GENERATIVE_PREFIX):  # the caption decoder's rule, same nights
            g = loc[name[len(ev.GENERATIVE_PREFIX):]]["generative"]
            assert g["threshold"] == rule.threshold and g["max_gap"] == rule.max_gap
            assert g["plain_rule"]["f1"] == plain["localisation"][
                name[len(ev.GENERATIVE_PREFIX):]]["generative"]["f1"]
            continue
        assert loc[name]["threshold"] == rule.threshold and loc[name]["max_gap"] == rule.max_gap
        assert loc[name]["plain_rule"]["f1"] == plain["localisation"][name]["f1"]
    assert any(n.startswith(ev.GENERATIVE_PREFIX) for n in cal.localisation)
    sev = res["unseen_tasks"]["osa_severity_from_epochs"]
    assert sev["rule"] == cal.event_index.model_dump()
    assert sev["plain_rule"]["accuracy"] == \
        plain["unseen_tasks"]["osa_severity_from_epochs"]["accuracy"]
    md = ev.to_markdown(res)
    assert "chosen on" in md and "F1 plain rule" in md and "Generative localisation" in md
    # the caption check: chosen on validation captions, never worse there than greedy
    cr = cal.validation["captions"]
    assert cr["n_captions"] > 0 and set(cal.captions) <= {"hypopnea", "arousal",
                                                          "obstructive_apnea"}
    f1 = lambda r: 2 * (r["event_precision"] or 0) * (r["event_recall"] or 0) / max(  # noqa
        (r["event_precision"] or 0) + (r["event_recall"] or 0), 1e-12)
    assert f1(cr["chosen"]) >= f1(cr["greedy"])
    cap, cap0 = res["captioning"], plain["captioning"]
    assert cap["checked"] is bool(cal.captions) and cap0["checked"] is False
    for k in ("event_precision", "event_recall", "stage_accuracy", "bleu4"):
        assert cap["greedy"][k] == cap0[k] == cap0["greedy"][k]  # same epochs, same greedy
    # --only captions: a new caption check, every other rule kept as it was
    before = json.loads((ck / CALIBRATION_NAME).read_text())
    assert C.main(["--checkpoint", str(ck), "--corpus", str(corpus), "--only", "captions",
                   "--caption-sample", "7"]) == 0
    after = json.loads((ck / CALIBRATION_NAME).read_text())
    assert after["validation"]["captions"]["n_captions"] == 7
    for k in ("localisation", "event_index", "weights_sha256", "n_epochs"):
        assert after[k] == before[k], k
