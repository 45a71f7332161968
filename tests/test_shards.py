"""Caption tokenizer (sleeplm.model.tokenizer) and corpus loading (sleeplm.corpus.shards)."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_CHANNELS, build_tiny_corpus
from sleeplm.captions.caption import SYSTEMS
from sleeplm.corpus.build import read_shard
from sleeplm.corpus import shards as shards_mod
from sleeplm.corpus.shards import (EpochShardDataset, collate, load_split_epochs, night_samples,
                            stage_id)
from sleeplm.corpus.shards import corpus_texts
from sleeplm.model.tokenizer import CaptionTokenizer, train_tokenizer

#: SC401 and SC403 hash to train, SC402 to test (sleeplm.corpus.build.split_of).
PLAN = (("healthy_young", 11, "SC4011E0"), ("osa_moderate", 12, "SC4031E0"),
        ("healthy_young", 13, "SC4021E0"))
CHANNELS = TINY_CHANNELS
SHARD = 30  # small shards: nights span shards, several shards per split


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out, rep = build_tiny_corpus(tmp_path_factory, PLAN, "shards", shard_size=SHARD)
    assert rep.nights_per_split == {"train": 2, "test": 1}
    return out


@pytest.fixture(scope="module")
def raw(corpus) -> dict[str, dict]:
    """Every train epoch sample straight from the shards: key -> {json, x}."""
    return {s["key"]: s for f in sorted((corpus / "epochs").glob("train-*.tar"))
            for s in read_shard(f)}


@pytest.fixture(scope="module")
def tokenizer(corpus) -> CaptionTokenizer:
    return train_tokenizer(corpus_texts(corpus, "train"), vocab_size=800, min_frequency=2)


def _keys(ds) -> list[str]:
    return [s["key"] for s in ds]


# ------------------------------------------------------------------------------ tokenizer
def test_corpus_texts_reads_only_its_split(corpus):
    def expected(split):
        texts = []
        for f in sorted((corpus / "epochs").glob(f"{split}-*.tar")):
            texts += [c["text"] for s in read_shard(f) for c in s["json"]["captions"]]
        for f in sorted((corpus / "nights").glob(f"{split}-*.tar")):
            for night in read_shard(f):
                caps = night["json"]["captions"]
                texts += [c["text"] for lv in ("night", "segments", "events") for c in caps[lv]]
        return texts

    train, test = list(corpus_texts(corpus, "train")), list(corpus_texts(corpus, "test"))
    assert train == expected("train") and test == expected("test")
    assert len(train) > len(test) > 0
    assert list(corpus_texts(corpus, "validation")) == []


def test_tokenizer_round_trip_and_specials(corpus, tokenizer, tmp_path):
    tok = tokenizer
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert [tok.system_id(s) for s in SYSTEMS] == [4, 5, 6, 7, 8]
    with pytest.raises(ValueError):
        tok.system_id("kidney")
    assert 300 < tok.vocab_size <= 800
    texts = sorted(set(corpus_texts(corpus, "train")))[:200] + \
        sorted(set(corpus_texts(corpus, "test")))[:50] + ["Chin tone 12.5 µV — unseen wörds!"]
    for t in texts:
        ids = tok.encode(t)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert tok.unk_id not in ids
        assert tok.decode(ids) == t
    # specials are skipped, decoding stops at EOS
    ids = tok.encode(texts[0])
    assert tok.decode([tok.system_id("brain")] + ids + tok.encode("junk")[1:]) == texts[0]
    # batch: padded with pad_id, truncation keeps EOS
    batch = tok.encode_batch([texts[0], "", texts[1] * 5], max_len=24)
    assert batch.shape == (3, 24) and batch.dtype == torch.long
    assert batch[1, :3].tolist() == [tok.bos_id, tok.eos_id, tok.pad_id]
    assert (batch[1, 2:] == tok.pad_id).all()
    assert batch[2, -1] == tok.eos_id and (batch[2] != tok.pad_id).all()
    short = tok.encode(texts[1] * 5, max_len=8)
    assert len(short) == 8 and short[-1] == tok.eos_id and short[0] == tok.bos_id
    assert batch[2, :23].tolist() == tok.encode(texts[1] * 5)[:23]
    assert texts[1].startswith(tok.decode(batch[2]))
    # save / load / pickle give the same ids
    tok.save(tmp_path / "tok.json")
    again = CaptionTokenizer.load(tmp_path / "tok.json")
    clone = pickle.loads(pickle.dumps(tok))
    for t in texts[:50]:
        assert again.encode(t, 40) == tok.encode(t, 40) == clone.encode(t, 40)
    assert again.vocab_size == tok.vocab_size
    # deterministic training
    twin = train_tokenizer(corpus_texts(corpus, "train"), vocab_size=800, min_frequency=2)
    assert twin.to_str() == tok.to_str()


# ------------------------------------------------------------------------------ dataset
def test_every_sample_once_across_workers_and_ranks(corpus, raw, monkeypatch):
    everything = sorted(raw)
    ds = EpochShardDataset(corpus, "train", shuffle_buffer=16, seed=3)
    assert len(ds.shards) == 8
    assert sorted(_keys(ds)) == everything

    def run(ranks: int, workers: int, **kw) -> list[list[str]]:
        parts = []
        for r in range(ranks):
            for w in range(workers):
                monkeypatch.setattr(shards_mod, "_dist_info", lambda r=r: (r, ranks))
                monkeypatch.setattr(shards_mod, "_worker_info", lambda w=w: (w, workers))
                parts.append(_keys(EpochShardDataset(corpus, "train", **kw)))
        return parts

    for ranks, workers, kw in ((1, 2, {}), (2, 1, {}), (2, 2, {"epoch": 1}),
                               (4, 3, {}),  # more partitions than shards
                               (2, 2, {"context_epochs": 1}), (3, 4, {"context_epochs": 1})):
        parts = run(ranks, workers, seed=5, shuffle_buffer=10, **kw)
        flat = [k for p in parts for k in p]
        assert sorted(flat) == everything, (ranks, workers, kw)  # once each, none missing
        assert all(parts), (ranks, workers, kw)  # nobody idle


def test_shuffle_deterministic_and_per_epoch(corpus, raw):
    a = _keys(EpochShardDataset(corpus, "train", shuffle_buffer=50, seed=1, epoch=0))
    b = _keys(EpochShardDataset(corpus, "train", shuffle_buffer=50, seed=1, epoch=0))
    ds = EpochShardDataset(corpus, "train", shuffle_buffer=50, seed=1, epoch=0)
    ds.set_epoch(1)
    c = _keys(ds)
    d = _keys(EpochShardDataset(corpus, "train", shuffle_buffer=50, seed=2, epoch=0))
    assert a == b and a != c and a != d and sorted(a) == sorted(c) == sorted(raw)
    assert _keys(EpochShardDataset(corpus, "train", shuffle_buffer=0)) == list(raw)  # no shuffle


def test_sample_content_channels_and_captions(corpus, raw):
    ds = EpochShardDataset(corpus, "train", channels=("SPO2", "NOPE", "EEG_C3"),
                           shuffle_buffer=0)
    samples = list(ds)
    for s in samples[::17]:
        src = raw[s["key"]]
        ref = src["x"].astype(np.float32)
        assert s["x"].dtype == torch.float32 and s["x"].shape == (3, ref.shape[-1])
        assert torch.equal(s["x"][0], torch.from_numpy(ref[CHANNELS.index("SPO2")]))
        assert torch.equal(s["x"][2], torch.from_numpy(ref[CHANNELS.index("EEG_C3")]))
        assert not s["x"][1].any()
        assert s["mask"].tolist() == [True, False, True]
        meta = src["json"]
        assert s["stage"] == meta["stage"] and s["stage_id"] == stage_id(meta["stage"])
        assert s["night"] == meta["night"] and s["epoch"] == meta["epoch"]
        cap = [c for c in meta["captions"] if c["text"] == s["text"]]
        assert cap and SYSTEMS[s["system"]] == cap[0]["system"]
        assert json.loads(s["facts"]) == cap[0]["facts"]
    assert {s["stage_id"] for s in samples} == {0, 1, 2, 3, 4}
    assert len(Counter(s["system"] for s in samples)) == 5  # draws spread over the systems
    again = list(EpochShardDataset(corpus, "train", channels=("SPO2", "NOPE", "EEG_C3"),
                                   shuffle_buffer=0))
    assert [s["text"] for s in again] == [s["text"] for s in samples]  # seeded draws
    only = EpochShardDataset(corpus, "train", systems=("cardiac",), shuffle_buffer=0)
    assert {s["system"] for s in only} == {SYSTEMS.index("cardiac")}
    with pytest.raises(ValueError):
        EpochShardDataset(corpus, "train", systems=("kidney",))


def test_contrastive_system_pairs_the_holistic_caption(corpus, raw, tokenizer):
    ds = EpochShardDataset(corpus, "train", shuffle_buffer=0, tokenizer=tokenizer,
                           max_text_len=64, contrastive_system="holistic")
    samples = list(ds)
    for s in samples[::11]:
        hol = [c["text"] for c in raw[s["key"]]["json"]["captions"] if c["system"] == "holistic"]
        assert s["contrastive_text"] in hol  # the pair's text is a holistic caption ...
        assert tokenizer.decode(s["contrastive_ids"]) == s["contrastive_text"][
            :len(tokenizer.decode(s["contrastive_ids"]))]
    # ... while the decoder's caption is still drawn from every system
    assert len(Counter(s["system"] for s in samples)) == 5
    assert "contrastive_text" not in next(iter(EpochShardDataset(corpus, "train",
                                                                 shuffle_buffer=0)))
    two = EpochShardDataset(corpus, "train", shuffle_buffer=0, tokenizer=tokenizer,
                            max_text_len=64, contrastive_system=("holistic", "brain"))
    for s in list(two)[::13]:
        caps = raw[s["key"]]["json"]["captions"]
        hol, brain = s["contrastive_text"]
        assert hol in [c["text"] for c in caps if c["system"] == "holistic"]
        assert brain in [c["text"] for c in caps if c["system"] == "brain"]
        assert s["contrastive_ids"].shape == (2, 64)
    batch = collate([s for s, _ in zip(two, range(3))])
    assert batch["contrastive_ids"].shape == (3, 2, 64)
    with pytest.raises(ValueError, match="contrastive_system"):
        EpochShardDataset(corpus, "train", contrastive_system="kidney")


def test_clause_pairs_and_their_keys(corpus, raw, tokenizer):
    """contrastive_clauses adds one clause of the epoch's captions that states a wanted fact;
    equal texts get equal keys."""
    from sleeplm.corpus.shards import fact_key

    wanted = ("respiratory_events", "arousals", "spindles")
    ds = EpochShardDataset(corpus, "train", shuffle_buffer=0, tokenizer=tokenizer,
                           max_text_len=64, contrastive_system=("holistic",),
                           contrastive_clauses=wanted)
    samples = list(ds)
    seen = Counter()
    for s in samples:
        hol, clause = s["contrastive_text"]
        caps = raw[s["key"]]["json"]["captions"]
        stating = {cl["text"]: (set(cl["facts"]) & set(wanted), cl["facts"]) for c in caps
                   for cl in c["clauses"]}
        assert clause in stating and stating[clause][0], (clause, stating)
        seen.update(stating[clause][0])
        assert s["contrastive_ids"].shape == (2, 64)
        hol_facts = next(c["facts"] for c in caps if c["text"] == hol)
        assert s["contrastive_keys"].tolist() == [fact_key(hol_facts),
                                                  fact_key(stating[clause][1])]
    assert set(seen) == set(wanted)  # every wanted fact gets drawn somewhere
    for s in samples[::7]:  # the keyset: every wanted clause true of the epoch, own key first
        caps = raw[s["key"]]["json"]["captions"]
        true = {fact_key(cl["facts"]) for c in caps for cl in c["clauses"]
                if set(cl["facts"]) & set(wanted)}
        ks = [k for k in s["clause_keyset"].tolist() if k != -1]
        assert ks[0] == int(s["contrastive_keys"][1]) and set(ks) == true | {ks[0]}
    # phrasings of the same facts share a key ("no arousal" / "no arousals scored")
    by_key = {}
    for s in samples:
        by_key.setdefault(int(s["contrastive_keys"][1]), set()).add(s["contrastive_text"][1])
    assert any(len(v) > 1 for v in by_key.values())
    assert fact_key({"a": 1, "b": []}) == fact_key({"b": [], "a": 1}) != fact_key({"a": 2})
    # every epoch caption's clauses are its text, piece by piece, with its facts
    for sample in list(raw.values())[::17]:
        for c in sample["json"]["captions"]:
            assert c["clauses"], c
            low = c["text"].lower()
            for cl in c["clauses"]:
                assert cl["text"].lower() in low
                assert all(c["facts"][k] == v for k, v in cl["facts"].items())


def test_clause_bank(corpus, raw):
    from sleeplm.corpus.shards import ClauseBank, fact_key

    wanted = ("respiratory_events", "arousals", "spindles")
    bank = ClauseBank.from_corpus(corpus, "train", wanted)
    want = {}
    for sample in raw.values():
        for c in sample["json"]["captions"]:
            for cl in c["clauses"]:
                for k in wanted:
                    if k in cl["facts"]:
                        want.setdefault(k, {})[cl["text"]] = fact_key(cl["facts"])
    assert {k: dict(v) for k, v in bank.groups.items()} == want
    a = bank.sample(10, (0, 3))
    assert a == bank.sample(10, (0, 3)) != bank.sample(10, (0, 4))
    assert len({t for t, _ in a}) == 10
    assert len(bank.sample(10_000, (1,))) == len(bank)
    assert ClauseBank({}).sample(5, (0,)) == []


def test_event_repeat_yields_event_epochs_again(corpus, raw):
    from sleeplm.corpus.shards import has_event

    base = _keys(EpochShardDataset(corpus, "train", shuffle_buffer=0))
    ds = EpochShardDataset(corpus, "train", shuffle_buffer=0, event_repeat=2,
                           contrastive_clauses=("respiratory_events", "arousals"))
    items = list(ds)
    counts = Counter(s["key"] for s in items)
    events = {k for k in base if has_event(raw[k]["json"])}
    assert events and len(events) < len(base)
    assert all(counts[k] == (3 if k in events else 1) for k in base)
    # the copies draw their captions and clauses anew
    draws = {}
    for s in items:
        if s["key"] in events:
            draws.setdefault(s["key"], set()).add((s["text"], s["contrastive_text"][-1]))
    assert sum(len(v) > 1 for v in draws.values()) > len(draws) // 3
    with pytest.raises(ValueError, match="event_repeat"):
        EpochShardDataset(corpus, "train", event_repeat=-1)


def test_context_windows(corpus, raw):
    k = 1
    ds = EpochShardDataset(corpus, "train", context_epochs=k, shuffle_buffer=20, seed=4)
    got = {s["key"]: s for s in ds}
    assert sorted(got) == sorted(raw)
    n_ch, t = len(CHANNELS), raw[next(iter(raw))]["x"].shape[-1]
    last = {}
    for key, s in raw.items():
        last[s["json"]["night"]] = max(last.get(s["json"]["night"], 0), s["json"]["epoch"])
    for key, s in got.items():
        assert s["x"].shape == (2 * k + 1, n_ch, t) and s["mask"].shape == (2 * k + 1, n_ch)
        assert torch.equal(s["x"][k], torch.from_numpy(raw[key]["x"].astype(np.float32)))
        night, e = s["night"], s["epoch"]
        for w, d in enumerate(range(-k, k + 1)):
            if 0 <= e + d <= last[night]:
                nb = raw[f"{night}_e{e + d:05d}"]["x"].astype(np.float32)
                assert torch.equal(s["x"][w], torch.from_numpy(nb)), (key, d)
                assert s["mask"][w].all()
            else:  # beyond the night's edge
                assert not s["mask"][w].any() and not s["x"][w].any(), (key, d)
    # a night that starts in the middle of a shard and one that crosses shards
    first = got["sim-00012-osa_moderate_e00000"]
    assert first["mask"][:, 0].tolist() == [False, True, True]
    edge = got["sim-00011-healthy_young_e00029"]  # e00030 lies in the next shard
    assert edge["mask"][:, 0].tolist() == [True, True, True]
    end = got[f"sim-00011-healthy_young_e{last['sim-00011-healthy_young']:05d}"]
    assert end["mask"][:, 0].tolist() == [True, True, False]


def test_dataloader_collate_with_tokenizer(corpus, tokenizer):
    ds = EpochShardDataset(corpus, "train", tokenizer=tokenizer, max_text_len=48,
                           shuffle_buffer=32, channels=("EEG_C3", "ABDOMEN"))
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=0, collate_fn=collate)
    n = 0
    for i, batch in enumerate(loader):
        b = len(batch["key"])
        n += b
        assert batch["x"].shape == (b, 2, 480) and batch["x"].dtype == torch.float32
        assert batch["mask"].shape == (b, 2) and batch["mask"].dtype == torch.bool
        assert not batch["mask"][:, 1].any()
        assert batch["text_ids"].shape == (b, 48) and batch["text_ids"].dtype == torch.long
        assert batch["system"].dtype == torch.long and batch["stage_id"].shape == (b,)
        assert isinstance(batch["text"], list) and isinstance(batch["facts"][0], str)
        if i == 0:
            for ids, text in zip(batch["text_ids"], batch["text"]):
                assert ids[0] == tokenizer.bos_id
                decoded = tokenizer.decode(ids)
                assert text.startswith(decoded) and (decoded == text or ids[-1] == 2)
    assert n == sum(1 for _ in EpochShardDataset(corpus, "train", shuffle_buffer=0))


def test_night_samples_and_load_split(corpus, raw):
    nights = list(night_samples(corpus, "train"))
    assert [n["night"] for n in nights] == ["sim-00011-healthy_young", "sim-00012-osa_moderate"]
    assert all(n["key"] == n["night"] and n["captions"]["night"] for n in nights)
    assert sum(n["epochs"] for n in nights) == len(raw)
    data = load_split_epochs(corpus, "train", ("ECG", "NOPE"))
    n = len(raw)
    assert data["x"].shape == (n, 2, 480) and data["x"].dtype == np.float16
    assert data["mask"].shape == (n, 2) and data["mask"][:, 0].all()
    assert not data["mask"][:, 1].any()
    assert list(data["key"]) == list(raw)
    first = raw[data["key"][0]]
    assert np.array_equal(data["x"][0, 0], first["x"][CHANNELS.index("ECG")])
    assert data["stage_id"].dtype == np.int64 and set(data["stage_id"]) == {0, 1, 2, 3, 4}
    for s in SYSTEMS:
        assert data[f"caption_{s}"].shape == (n,) and all(data[f"caption_{s}"])
    small = load_split_epochs(corpus, "test", None, max_epochs=5)
    assert small["x"].shape == (5, len(CHANNELS), 480)
    empty = load_split_epochs(corpus, "validation", None)
    assert empty["x"].shape == (0, len(CHANNELS), 480)
