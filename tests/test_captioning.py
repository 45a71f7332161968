"""The caption check (:mod:`sleeplm.model.captioning`): clause withdrawal in each caption style, the
margins it scores against the generative scorer, and the threshold search of calibrate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sleeplm.model import prompts as P
from sleeplm.model.captioning import (CheckedCaption, caption_epochs, check_captions, mentions,
                                read_facts, withdraw)
from sleeplm.captions.phrasing import stage_phrases
from sleeplm.model.network import SleepLM, SleepLMConfig
from sleeplm.model.tokenizer import train_tokenizer
from sleeplm.model.zeroshot import clause_logprobs, generative_margins
from training import calibrate as C


@pytest.mark.parametrize("text, rejected, confirmed, want, gone", [
    ("Stage N1; SpO2 down to 94%; normal breathing events-wise; HR 67 bpm; 1 scored arousal.",
     ["arousal"], [], "Stage N1; SpO2 down to 94%; normal breathing events-wise; HR 67 bpm.",
     ["1 scored arousal"]),
    ("Stage R (REM), no arousal, lowest SpO2 96%, HR 65 bpm, and a hypopnea.", ["hypopnea"], [],
     "Stage R (REM), no arousal, lowest SpO2 96%, and HR 65 bpm.", ["a hypopnea"]),
    ("Stage R (REM); a hypopnea; no arousal; HR 74 bpm; 1 scored arousal.", [],
     ["hypopnea", "arousal"], "Stage R (REM); a hypopnea; HR 74 bpm; 1 scored arousal.",
     ["no arousal"]),
    ("Stage N2 sleep. A hypopnea and an obstructive apnea. HR 60 bpm. No arousal.",
     ["hypopnea"], ["obstructive_apnea"],
     "Stage N2 sleep. An obstructive apnea. HR 60 bpm. No arousal.", ["A hypopnea"]),
    ("Stage N2 sleep; no respiratory events; a hypopnea; HR 60 bpm.", [], ["hypopnea"],
     "Stage N2 sleep; a hypopnea; HR 60 bpm.", ["no respiratory events"]),
    ("Awake, stage W, HR 70 bpm, and 1 arousal.", ["arousal"], [],
     "Awake, stage W, and HR 70 bpm.", ["1 arousal"]),
])
def test_withdraw_in_every_caption_style(text, rejected, confirmed, want, gone):
    out, taken = withdraw(text, rejected, confirmed)
    assert out == want and taken == gone
    facts = read_facts(out)
    for q in rejected:
        assert not any(mentions(p, q) for p in out.split(";"))
    assert facts["stage"] == read_facts(text)["stage"]


def test_withdraw_leaves_a_caption_without_the_events_alone():
    text = "Stage N2 sleep; no arousals scored; HR 60 bpm."
    assert withdraw(text, ["arousal", "hypopnea"], []) == (text, [])
    assert not mentions("no arousal", "arousal") and mentions("2 arousals", "arousal")


@pytest.fixture(scope="module")
def tiny():
    texts = [f"{stage_phrases(s)[0].capitalize()}; {c}; HR 60 bpm." for s in P.STAGES
             for c in ("a hypopnea", "1 scored arousal", "no arousal", "an obstructive apnea",
                       "no respiratory events", "2 hypopneas", "a central apnea")] * 2
    tok = train_tokenizer(texts, vocab_size=320, min_frequency=1)
    torch.manual_seed(0)
    model = SleepLM(SleepLMConfig.tiny(vocab_size=tok.vocab_size, max_text_len=64)).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, model.cfg.n_channels, model.cfg.samples_per_epoch, generator=g)
    x[:, model.cfg.channels.index("POSITION")] = 2.0
    return model, tok, x


def test_check_scores_the_named_events_with_the_generative_margins(tiny):
    model, tok, x = tiny
    with torch.no_grad():
        _, tokens, valid = model.encode_signal(x)
    texts = ["Stage N2 sleep; a hypopnea; no arousal; 1 scored arousal.",
             "REM sleep (R); no respiratory events; HR 60 bpm.",
             "HR 60 bpm; an obstructive apnea."]  # no stage phrase: the fallback stage is used
    thr = {"hypopnea": 0.0, "arousal": 0.0, "obstructive_apnea": 0.0}
    out = check_captions(model, tok, tokens, valid, texts, thr, stages=[None, None, "W"])
    clauses = list(dict.fromkeys(c for q in thr for part in P.GENERATIVE_QUERIES[q]
                                 for c in part))
    lp = clause_logprobs(model, tok, tokens[[0, 2]], valid[[0, 2]], ["N2", "W"], clauses)
    for row, (i, qs) in enumerate([(0, ("hypopnea", "arousal")), (2, ("obstructive_apnea",))]):
        c = out[i]
        assert sorted(c.margins) == sorted(qs)
        for q in qs:
            want = generative_margins(lp, clauses, *P.GENERATIVE_QUERIES[q])[row]
            assert c.margins[q] == pytest.approx(float(want), abs=2e-3)
            assert (q in c.rejected) == (want < 0.0)
        assert read_facts(c.text)["events"] == sorted(
            {"hypopnea": "hypopnea", "arousal": "arousal", "obstructive_apnea": "apnea"}[q]
            for q in qs if q not in c.rejected)
    assert out[0].stage == "N2" and out[2].stage == "W"
    assert out[1].margins == {} and out[1].text == out[1].greedy == texts[1]
    # thresholds of -inf and +inf: nothing withdrawn but contradictions / every mention
    keep = check_captions(model, tok, tokens, valid, texts, {q: -math.inf for q in thr})
    assert keep[0].text == "Stage N2 sleep; a hypopnea; 1 scored arousal."
    drop = check_captions(model, tok, tokens, valid, texts, {q: math.inf for q in thr})
    assert drop[0].text == "Stage N2 sleep; no arousal." and drop[0].rejected == [
        "hypopnea", "arousal"]
    assert drop[2].margins == {}  # no stage and no fallback: left unchecked
    with pytest.raises(ValueError, match="2 captions for 3 epochs"):
        check_captions(model, tok, tokens, valid, texts[:2], thr)


def test_caption_epochs_is_greedy_without_thresholds(tiny):
    model, tok, x = tiny
    greedy = [t.strip() for t in tok.decode_batch(model.generate(x, max_len=20))]
    plain = caption_epochs(model, tok, x, max_len=20)
    assert [c.text for c in plain] == greedy and all(c.greedy == c.text for c in plain)
    checked = caption_epochs(model, tok, x, max_len=20, thresholds={"hypopnea": 0.5})
    assert [c.greedy for c in checked] == greedy
    for c in checked:
        assert set(read_facts(c.text)["events"]) <= set(read_facts(c.greedy)["events"])
    other = caption_epochs(model, tok, x, system="respiration", max_len=20,
                           thresholds={"hypopnea": 0.5})
    assert all(c.text == c.greedy and not c.margins for c in other)


def _cap(text: str, **margins: float) -> CheckedCaption:
    return CheckedCaption(text=text, greedy=text, stage="N2", margins=margins)


def test_choose_caption_thresholds_drops_weak_mentions_only_where_it_helps():
    ref_h = {"stage": "N2", "events": ["hypopnea"], "no_respiratory_events": False}
    ref_0 = {"stage": "N2", "events": [], "no_respiratory_events": True}
    caps, refs = [], []
    for m in (2.0, 1.5, 1.2, 0.9):  # true hypopneas: strong evidence
        caps.append(_cap("Stage N2 sleep; a hypopnea; 1 arousal.", hypopnea=m, arousal=3.0))
        refs.append({**ref_h, "events": ["arousal", "hypopnea"]})
    for m in (-1.0, -0.5, 0.2):  # false hypopneas: weak evidence
        caps.append(_cap("Stage N2 sleep; a hypopnea; no arousal.", hypopnea=m))
        refs.append(ref_0)
    chosen, scores, greedy = C.choose_caption_thresholds(caps, refs,
                                                         ["hypopnea", "arousal"])
    assert greedy["event_precision"] == pytest.approx(8 / 11)
    assert 0.2 < chosen["hypopnea"] <= 0.9
    assert "arousal" not in chosen  # every arousal mention is right: no check
    assert scores["event_precision"] == 1.0 and scores["event_recall"] == 1.0
    # the scores are those of the texts after withdrawal
    again = C.caption_check_scores(caps, refs, chosen)
    assert again == scores
    none, s0, g0 = C.choose_caption_thresholds(caps[:4], refs[:4], ["hypopnea"])
    assert none == {} and s0 == g0
