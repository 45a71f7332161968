"""Generative (caption-decoder) zero-shot scores: :func:`sleeplm.model.zeroshot.clause_logprobs`
and :func:`~sleeplm.model.zeroshot.generative_margins`, checked against a token-by-token decoder
loop on a tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sleeplm.model import prompts as P
from sleeplm.captions.phrasing import stage_phrases
from sleeplm.model.network import SleepLM, SleepLMConfig, system_index
from sleeplm.model.tokenizer import train_tokenizer
from sleeplm.model.zeroshot import clause_logprobs, generative_margins

CLAUSES = ["a hypopnea", "no respiratory events", "an obstructive apnea and a hypopnea"]


@pytest.fixture(scope="module")
def tiny():
    texts = [f"{stage_phrases(s)[0].capitalize()}; {c}; HR 60 bpm." for s in
             ("W", "N1", "N2", "N3", "R") for c in CLAUSES] * 3
    tok = train_tokenizer(texts, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = SleepLM(SleepLMConfig.tiny(vocab_size=tok.vocab_size, max_text_len=64)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, model.cfg.n_channels, model.cfg.samples_per_epoch, generator=g)
    x[:, model.cfg.channels.index("POSITION")] = 2.0
    with torch.no_grad():
        _, tokens, valid = model.encode_signal(x)
    return model, tok, tokens, valid


def _loop_logprob(model, tok, tokens, valid, text: str) -> float:
    """Sum of log p(next token) over a caption, one decoder call per prefix."""
    ids = tok.encode(text)  # BOS ... EOS
    sys_idx = torch.tensor([system_index("holistic")])
    total = 0.0
    with torch.no_grad():
        for t in range(1, len(ids) - 1):  # targets: every token after BOS, EOS excluded
            logits = model.decoder(torch.tensor([ids[:t]]), sys_idx, tokens, valid)[0, -1]
            total += float(torch.log_softmax(logits.float(), -1)[ids[t]])
    return total


def test_clause_logprobs_match_a_token_by_token_loop(tiny):
    model, tok, tokens, valid = tiny
    stages = ["N2", "R", "W"]
    lp = clause_logprobs(model, tok, tokens, valid, stages, CLAUSES)
    assert lp.shape == (3, len(CLAUSES)) and np.isfinite(lp).all() and (lp < 0).all()
    for b, s in enumerate(stages):
        phrase = stage_phrases(s)[0]
        for h, c in enumerate(CLAUSES):
            want = _loop_logprob(model, tok, tokens[b:b + 1], valid[b:b + 1],
                                 f"{phrase[:1].upper() + phrase[1:]}; {c};")
            assert lp[b, h] == pytest.approx(want, abs=1e-4)
    # padding of shorter clauses and the other epochs in the batch change nothing
    alone = clause_logprobs(model, tok, tokens[1:2], valid[1:2], ["R"], CLAUSES[:1])
    assert alone[0, 0] == pytest.approx(lp[1, 0], abs=1e-5)


def test_clause_logprobs_errors(tiny):
    model, tok, tokens, valid = tiny
    with pytest.raises(ValueError, match="2 stages for 3 epochs"):
        clause_logprobs(model, tok, tokens, valid, ["N2", "N2"], CLAUSES)
    with pytest.raises(ValueError, match="no clause"):
        clause_logprobs(model, tok, tokens, valid, ["N2"] * 3, [])


def test_generative_margins_are_log_ratios_of_summed_probabilities():
    logp = np.log(np.array([[0.2, 0.1, 0.3], [0.01, 0.5, 0.04]]))
    m = generative_margins(logp, ["a", "b", "c"], ["a"], ["b", "c"])
    np.testing.assert_allclose(m, np.log([0.2 / 0.4, 0.01 / 0.54]), rtol=1e-5)
    m2 = generative_margins(logp, ["a", "b", "c"], ["a", "c"], ["b"])
    np.testing.assert_allclose(m2, np.log([0.5 / 0.1, 0.05 / 0.5]), rtol=1e-5)
    with pytest.raises(KeyError, match="not scored"):
        generative_margins(logp, ["a", "b", "c"], ["a"], ["zzz"])


def test_generative_queries_use_the_captioners_wording():
    from sleeplm.captions.epoch import _event_list

    for name, (pos, rivals) in P.GENERATIVE_QUERIES.items():
        assert pos and rivals and not set(pos) & set(rivals), name
    assert _event_list(["hypopnea"]) in P.GENERATIVE_QUERIES["hypopnea"][0]
    assert _event_list(["hypopnea", "hypopnea"]) in P.GENERATIVE_QUERIES["hypopnea"][0]
    assert _event_list(["obstructive_apnea"]) in P.GENERATIVE_QUERIES["obstructive_apnea"][0]
