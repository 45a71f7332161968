"""training.evaluate on a tiny corpus with an untrained tiny model (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import build_tiny_corpus, corpus_checkpoint
from training import evaluate as ev

#: SC401 and SC403 hash to train, SC402 to test (sleeplm.corpus.build.split_of).
PLAN = (("healthy_young", 11, "SC4011E0"), ("osa_moderate", 12, "SC4031E0"),
        ("osa_moderate", 13, "SC4021E0"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    corpus, _ = build_tiny_corpus(tmp_path_factory, PLAN, "eval")
    ck = corpus_checkpoint(corpus, tmp_path_factory.mktemp("eval_ck"))
    return corpus, ck


@pytest.fixture(scope="module")
def result(setup) -> dict:
    corpus, ck = setup
    return ev.evaluate(ck, corpus, "test", caption_sample=40)


def _unit(v):
    return v is None or 0.0 <= v <= 1.0


def test_sections_and_ranges(result, setup):
    r = result
    n = r["n_epochs"]
    assert n > 50 and r["split"] == "test" and r["n_nights"] == 1
    zs = r["zero_shot_staging"]
    assert zs["n"] == n and np.asarray(zs["confusion"]).sum() == n
    assert all(_unit(zs[k]) for k in ("accuracy", "macro_f1")) and -1 <= zs["kappa"] <= 1
    y = zs["yasa"]
    assert "available" in y
    if y["available"]:
        assert np.asarray(y["yasa"]["confusion"]).sum() == y["yasa"]["n"] > 0
        assert y["sleeplm_same_epochs"]["n"] == y["yasa"]["n"]
    else:
        assert y["reason"]
    for k in ("1-shot", "5-shot", "10-shot"):
        f = r["few_shot"][k]
        assert f["draws"] == 5 and f["n_query"] > 0
        assert all(_unit(f[m]) for m in ("prototype_accuracy", "prototype_macro_f1",
                                          "linear_probe_accuracy", "linear_probe_macro_f1"))
    ret = r["retrieval"]
    assert ret["n"] == n
    for d in ("signal_to_text", "text_to_signal"):
        vals = [ret[f"{d}_r@{k}"] for k in (1, 5, 10)]
        assert all(_unit(v) for v in vals) and vals == sorted(vals)
    cap = r["captioning"]
    assert cap["n"] == 40 and _unit(cap["bleu4"]) and _unit(cap["rouge_l"])
    assert _unit(cap["stage_accuracy"]) and _unit(cap["event_precision"])
    assert _unit(cap["event_recall"]) and cap["reader_check"] == 1.0
    loc = r["localisation"]
    for q in ("obstructive_apnea", "hypopnea", "desaturation", "spindles", "arousal"):
        v = loc[q]
        assert v["n_epochs"] == n and _unit(v["f1"]) and _unit(v["precision"])
    assert loc["spindles"]["n_true"] > 0
    u = r["unseen_tasks"]
    for task in ("osa_severity", "osa_severity_from_epochs", "plm_disorder"):
        assert u[task]["n"] == 1 and _unit(u[task]["accuracy"])
    est = u["osa_severity_from_epochs"]["per_night"]
    assert len(est) == 1 and next(iter(est.values()))["ahi_3a_per_h"] > 15
    assert u["osa_severity"]["truth_counts"] == {"moderate": 1}  # AHI 22/h
    assert u["osa_severity"]["baseline"]["majority_train_source"] == "train"
    nr = r["night_retrieval"]  # one test night: nothing to retrieve, and it says why
    assert nr["available"] is False and "profile" in nr["reason"]
    md = ev.to_markdown(r)
    for title in ("Zero-shot", "Few-shot", "Retrieval", "Captioning", "localisation",
                  "Unseen", "Night-to-night"):
        assert title in md
    json.dumps(r, default=ev._json_default)


def test_cli_ablations_and_train_refused(setup, tmp_path, capsys):
    corpus, ck = setup
    with pytest.raises(ValueError, match="refused"):
        ev.evaluate(ck, corpus, "train")
    with pytest.raises(SystemExit):
        ev.main(["--checkpoint", str(ck), "--corpus", str(corpus), "--split", "train"])
    assert ev.main(["--ablations", f"{ck},{ck}", "--corpus", str(corpus), "--out",
                    str(tmp_path), "--max-epochs", "40", "--no-yasa",
                    "--caption-sample", "8"]) == 0
    res = json.loads((tmp_path / "eval.json").read_text())
    assert len(res["table"]) == 1 and res["table"][0]["n_epochs"] == 40  # same folder twice
    assert "# SleepLM ablations" in (tmp_path / "eval.md").read_text()
    dbg = ev.evaluate(ck, corpus, "train", allow_train=True, max_epochs=30, yasa=False,
                      caption_sample=4)
    assert "TRAIN" in dbg["warning"]


def test_bleu_rouge_hand_cases():
    a, b = "stage N2 sleep; 2 spindles.", "hello world foo"
    assert ev.bleu4([a], [a]) == pytest.approx(1.0)
    assert ev.rouge_l(a, a) == pytest.approx(1.0)
    assert ev.bleu4([b], [a]) == 0.0 and ev.rouge_l(b, a) == 0.0
    # tokens: [the, cat, sat] vs [the, cat, ran]: LCS 2 -> P = R = 2/3
    assert ev.rouge_l("the cat sat", "the cat ran") == pytest.approx(2 / 3)
    # p1 = 2/3, p2 = (1+1)/(2+1), p3 = (0+1)/(1+1), p4 = (0+1)/(0+1); BP = 1
    want = (2 / 3 * 2 / 3 * 1 / 2 * 1) ** 0.25
    assert ev.bleu4(["the cat sat"], ["the cat ran"]) == pytest.approx(want)
    # brevity penalty: hypothesis 2 tokens, reference 4
    want = np.exp(1 - 4 / 2) * (1 * (1 + 1) / (1 + 1) * 1 * 1) ** 0.25
    assert ev.bleu4(["a b"], ["a b c d"]) == pytest.approx(want)


def test_fact_reader():
    f = ev.read_facts("Stage N2 sleep; no arousal; 2 spindles; a hypopnea; HR 58 bpm.")
    assert f == {"stage": "N2", "events": ["hypopnea"], "no_respiratory_events": False}
    f = ev.read_facts("Wake (W), HR 69 bpm, no respiratory events, and SpO2 down to 96%.")
    assert f == {"stage": "W", "events": [], "no_respiratory_events": True}
    f = ev.read_facts("REM sleep (R); 2 obstructive apneas; 1 arousal; 2 PLMs; 3 rapid eye "
                      "movements")
    assert f["stage"] == "R" and f["events"] == ["apnea", "arousal", "limb_movement"]
    f = ev.read_facts("Deep slow-wave sleep (N3); a 4% desaturation to 90% starting")
    assert f["stage"] == "N3" and f["events"] == ["desaturation"]
    assert ev.read_facts("")["stage"] is None
    ref = ev.reference_facts({"stage": "N2", "respiratory_events": ["obstructive_apnea",
                                                                    "hypopnea"],
                              "arousals": 1, "plm": 0})
    assert ref == {"stage": "N2", "events": ["apnea", "arousal", "hypopnea"],
                   "no_respiratory_events": False}


def test_localisation_intervals_hand_case():
    ep = list(range(10))
    assert ev.to_intervals(ep, [0, 1, 1, 0, 0, 1, 0, 1, 1, 1]) == [(1, 2), (5, 5), (7, 9)]
    true = [(1, 2), (5, 5), (7, 9)]
    pred = [(2, 4), (8, 8), (0, 0)]  # IoU 1/4 (<0.3), 1/3 (ok), 0
    r = ev.interval_f1(pred, true, iou=0.3)
    assert (r["tp"], r["n_pred"], r["n_true"]) == (1, 3, 3)
    assert r["precision"] == r["recall"] == r["f1"] == pytest.approx(1 / 3)
    assert ev.interval_f1([], [])["f1"] is None and ev.interval_f1([(0, 1)], [])["f1"] == 0.0
    assert ev.interval_f1(true, true)["f1"] == 1.0


def test_localisation_margins_and_event_index_hand_cases():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    q, bg = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    np.testing.assert_allclose(ev.localisation_margins(emb, q, bg), [1.0, -1.0, -0.2])
    both = ev.localisation_margins(emb, np.stack([q, bg]), np.stack([bg, q]))
    np.testing.assert_allclose(both, [[1.0, -1.0], [-1.0, 1.0], [-0.2, 0.2]])
    # any of several queries: the best one against the background
    from sleeplm.model.zeroshot import any_margins

    np.testing.assert_allclose(any_margins(emb, np.stack([q, [0.6, 0.8]]), bg),
                               [1.0 - 0.0, 0.8 - 1.0, 1.0 - 0.8])
    # 2 h asleep (240 epochs), three runs of event epochs, one of them in wake -> 2 events/2 h
    epochs = np.arange(250)
    m = -np.ones(250)
    m[[10, 11, 50, 245]] = 1.0
    asleep = epochs < 240
    assert ev.night_event_index(m, epochs, asleep) == pytest.approx(1.0)
    assert np.isnan(ev.night_event_index(m, epochs, np.zeros(250, bool)))


def test_night_retrieval_hand_case():
    """Four nights, two profiles sharing one large common direction: every night's deviation
    from the mean points at its partner."""
    common = np.array([10.0, 0, 0, 0])
    night_vec = {"a1": common + [0, 1, 0, 0.3], "a2": common + [0, 1, 0, -0.3],
                 "b1": common + [0, -1, 0.3, 0], "b2": common + [0, -1, -0.3, 0]}
    names = list(night_vec)
    rng = np.random.default_rng(0)
    emb, night = [], []
    for n in names:
        e = night_vec[n] + 0.01 * rng.normal(size=(20, 4))
        emb.append(e / np.linalg.norm(e, axis=1, keepdims=True))
        night += [n] * 20
    data = {"night": np.asarray(night, dtype=object)}
    out = ev._night_retrieval(np.concatenate(emb), data,
                              {"a1": "A", "a2": "A", "b1": "B", "b2": "B"})
    assert out["available"] and out["n_queries"] == 4
    assert out["chance_top1"] == pytest.approx(1 / 3)
    assert out["centred"]["same_profile_top1"] == 1.0 and out["centred"]["mrr"] == 1.0
    assert out["centred"]["first_neighbour"] == {"a1": "a2", "a2": "a1", "b1": "b2",
                                                 "b2": "b1"}
    assert ev._night_retrieval(np.concatenate(emb), data, {"a1": "A", "b1": "B"})[
        "available"] is False


def test_majority_and_retrieval_hand_cases():
    b = ev.majority_baseline(["mild", "mild", "none"], ["none", "mild", "severe", "none"])
    assert b["majority_train_class"] == "mild" and b["majority_train_accuracy"] == 0.25
    assert b["majority_eval_class"] == "none" and b["majority_eval_accuracy"] == 0.5
    assert ev.majority_baseline([], ["a", "b", "b"])["majority_train_accuracy"] == \
        pytest.approx(2 / 3)
    assert [ev.severity_class(v) for v in (0, 5, 14.9, 15, 30)] == \
        ["none", "mild", "mild", "moderate", "severe"]
    e = np.eye(4)
    r = ev.retrieval_recall(e, e, ["a", "b", "c", "d"])
    assert r["signal_to_text_r@1"] == r["text_to_signal_r@1"] == 1.0
    r = ev.retrieval_recall(e, e[[1, 0, 2, 3]], ["a", "b", "c", "d"], ks=(1, 2))
    assert r["signal_to_text_r@1"] == 0.5 and r["signal_to_text_r@2"] == 1.0
    m = ev.classification_metrics(["W", "N2", "N2"], ["W", "N2", "R"])
    assert m["accuracy"] == pytest.approx(2 / 3) and np.asarray(m["confusion"]).sum() == 3


def test_ablate_trains_each_variant_and_reports_one_table(setup, tmp_path):
    from training.ablate import VARIANTS, ablate

    corpus, _ = setup
    tiny = Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.json"
    res = ablate(tiny, corpus, tmp_path, steps=2, yasa=False, caption_sample=4, max_epochs=30)
    assert [r["checkpoint"] for r in res["table"]] == list(VARIANTS)
    for name, weights in VARIANTS.items():
        cfg = json.loads((tmp_path / name / "final" / "config.json").read_text())
        for k in ("contrastive_weight", "caption_weight", "reconstruction_weight"):
            assert cfg[k] == weights.get(k, 1.0), (name, k)
        tc = json.loads((tmp_path / name / "final" / "train_config.json").read_text())
        assert tc["max_steps"] == 2
    md = (tmp_path / "eval.md").read_text()
    assert "# SleepLM ablations" in md and "no_reconstruction" in md
    # a finished variant is reused, not retrained
    stamp = (tmp_path / "full" / "final" / "model.safetensors").stat().st_mtime_ns
    ablate(tiny, corpus, tmp_path, steps=2, yasa=False, caption_sample=4, max_epochs=30,
           variants=["full"])
    assert (tmp_path / "full" / "final" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="unknown variants"):
        ablate(tiny, corpus, tmp_path, steps=2, variants=["no_everything"])
