"""Training-time modality dropout and real-recording artefacts (sleeplm.corpus.robustness), and
their use by EpochShardDataset and training (fine-tuning from a checkpoint included)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_CHANNELS, build_tiny_corpus
from sleeplm.captions.modalities import MODALITIES, absent_modalities, modalities_of
from sleeplm.corpus.robustness import (AUGMENTATIONS, BRAIN_ROWS, MODALITY_SUBSETS,
                                       augment_epoch, choose_subset, drop_modalities, texts_for)
from sleeplm.corpus.shards import EpochShardDataset, corpus_texts
from sleeplm.model.tokenizer import train_tokenizer

#: SC401 and SC403 hash to train, SC402 to test (sleeplm.corpus.build.split_of).
PLAN = (("osa_moderate", 21, "SC4011E0"), ("healthy_young", 22, "SC4031E0"),
        ("osa_moderate", 23, "SC4021E0"))
FULL = ("EEG_C4", "EEG_C3", "EEG_F", "EEG_O", "EOG_L", "EOG_R", "EMG_CHIN", "EMG_LEG", "ECG",
        "AIRFLOW", "NASAL_PRESSURE", "THORAX", "ABDOMEN", "SPO2", "HR", "POSITION")
CLAUSES = ("stage", "respiratory_events", "desaturations", "arousals", "spindles",
           "rapid_eye_movements")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out, rep = build_tiny_corpus(tmp_path_factory, PLAN, "robust", shard_size=40)
    assert rep.nights_per_split == {"train": 2, "test": 1}
    return out


def _said(text: str, kept: list[str]) -> set[str]:
    """Modalities a text describes that the kept channels do not support."""
    return set(modalities_of(text)) & absent_modalities(kept)


# ------------------------------------------------------------------------------ subsets
def test_choose_subset_draws_every_montage_and_keeps_only_present_channels():
    rng = np.random.default_rng(0)
    present = np.ones(len(FULL), bool)
    present[FULL.index("HR")] = False  # a night without an HR channel
    seen: Counter = Counter()
    for _ in range(2000):
        got = choose_subset(FULL, present, rng, 0.6)
        if got is None:
            seen[None] += 1
            continue
        name, keep = got
        seen[name] += 1
        kept = {c for c, k in zip(FULL, keep) if k}
        assert kept and kept <= set(MODALITY_SUBSETS[name]) and "HR" not in kept
        if name == "one EEG derivation":
            assert len(kept) == 1 and next(iter(kept)).startswith("EEG_")
    assert set(seen) == set(MODALITY_SUBSETS) - {"HR only"} | {None}  # HR only: nothing kept
    assert 0.35 < seen[None] / 2000 < 0.5  # 0.4 not drawn, plus the HR-only draws
    assert choose_subset(FULL, present, rng, 0.0) is None


def test_drop_modalities_zeroes_and_unmasks_without_touching_the_input():
    x = np.ones((3, len(FULL), 8), np.float32)
    mask = np.ones((3, len(FULL)), bool)
    keep = np.array([c.startswith("EOG") for c in FULL])
    y, m = drop_modalities(x, mask, keep)
    assert np.all(y[:, ~keep] == 0) and np.all(y[:, keep] == 1) and np.all(m == keep)
    assert np.all(x == 1) and mask.all()


def test_texts_for_leaves_nothing_about_dropped_channels():
    text = ("Stage N2 sleep; 2 spindles; SpO2 down to 88%; heart at 65 bpm; an obstructive "
            "apnea scored; slow eye movements on the EOG.")
    for name, chans in MODALITY_SUBSETS.items():
        keep = np.array([c in chans for c in FULL])
        kept = [c for c, k in zip(FULL, keep) if k]
        (cut,) = texts_for([text], FULL, keep)
        assert not _said(cut, kept), (name, cut)
    keep = np.array([c == "SPO2" for c in FULL])
    assert texts_for([text], FULL, keep) == ["SpO2 down to 88%."]
    assert texts_for([text, ""], FULL, np.ones(len(FULL), bool)) == [text, ""]


# ------------------------------------------------------------------------------ artefacts
def test_augment_epoch_changes_only_present_brain_rows_and_is_seeded():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(len(FULL), 1920)).astype(np.float32)
    mask = np.ones(len(FULL), bool)
    mask[FULL.index("EEG_O")] = False
    brain = [i for i, c in enumerate(FULL) if c in BRAIN_ROWS and mask[i]]
    other = [i for i in range(len(FULL)) if i not in brain]
    names: Counter = Counter()
    for s in range(300):
        y, applied = augment_epoch(x, mask, FULL, np.random.default_rng(s), 64.0)
        names.update(applied)
        np.testing.assert_array_equal(y[other], x[other])
        assert np.abs(y).max() <= 20.0
        if applied:
            assert not np.allclose(y[brain], x[brain])
        y2, applied2 = augment_epoch(x, mask, FULL, np.random.default_rng(s), 64.0)
        np.testing.assert_array_equal(y, y2)
        assert applied == applied2
    assert set(names) == set(AUGMENTATIONS)
    for name, p in AUGMENTATIONS.items():  # each drawn about as often as its probability
        assert abs(names[name] / 300 - p) < 0.08, name
    assert augment_epoch(x, mask, FULL, np.random.default_rng(0), 64.0, strength=0) == (x, [])


def test_low_pass_removes_the_band_a_50_hz_montage_lacks():
    t = np.arange(1920) / 64.0
    row = (np.sin(2 * np.pi * 2 * t) + np.sin(2 * np.pi * 28 * t)).astype(np.float32)
    x = np.zeros((len(FULL), 1920), np.float32)
    x[0] = row
    mask = np.zeros(len(FULL), bool)
    mask[0] = True
    for s in range(200):
        y, applied = augment_epoch(x, mask, FULL, np.random.default_rng(s), 64.0)
        if applied == ["low-pass 15-25 Hz (a 50-Hz montage, a 35-Hz filter)"]:
            spec = np.abs(np.fft.rfft(y[0]))
            f = np.fft.rfftfreq(1920, 1 / 64.0)
            assert spec[np.argmin(abs(f - 28))] < 0.05 * spec[np.argmin(abs(f - 2))]
            break
    else:
        pytest.fail("the low-pass alone was never drawn in 200 seeds")


# ------------------------------------------------------------------------------ dataset
def test_dataset_without_dropout_is_unchanged(corpus):
    a = list(EpochShardDataset(corpus, "train", shuffle_buffer=0,
                               contrastive_system=("holistic", "brain"),
                               contrastive_clauses=CLAUSES))
    b = list(EpochShardDataset(corpus, "train", shuffle_buffer=0,
                               contrastive_system=("holistic", "brain"),
                               contrastive_clauses=CLAUSES, modality_dropout=0.0, augment=0.0))
    assert len(a) == len(b) > 0
    for s, t in zip(a, b):
        assert torch.equal(s["x"], t["x"]) and s["text"] == t["text"]
        assert s["contrastive_text"] == t["contrastive_text"]
        assert "modalities" not in s and "modalities" not in t


def test_dropout_samples_never_pair_a_signal_with_text_about_an_absent_channel(corpus):
    ds = EpochShardDataset(corpus, "train", shuffle_buffer=0, modality_dropout=0.7,
                           contrastive_system=("holistic", "brain"),
                           contrastive_clauses=CLAUSES, seed=5)
    full = {s["key"]: s for s in EpochShardDataset(corpus, "train", shuffle_buffer=0)}
    dropped: Counter = Counter()
    for s in ds:
        kept = [c for c, m in zip(TINY_CHANNELS, s["mask"].tolist()) if m]
        if not s["modalities"]:
            assert torch.equal(s["mask"], full[s["key"]]["mask"])
            continue
        dropped[s["modalities"]] += 1
        assert set(kept) <= set(MODALITY_SUBSETS[s["modalities"]])
        assert torch.all(s["x"][~s["mask"]] == 0)
        for text in [s["text"], *s["contrastive_text"]]:
            assert text and not _said(text, kept), (s["modalities"], text)
        assert s["system"] >= 0
    # the tiny corpus has EEG_C3, EOG_L, EMG_CHIN, ECG, THORAX, SPO2: every montage but HR only
    assert set(dropped) == set(MODALITY_SUBSETS) - {"HR only"}
    assert sum(dropped.values()) > 0.4 * len(full)


def test_dropout_and_augmentation_are_reproducible_and_vary_by_epoch(corpus):
    def run(epoch):
        ds = EpochShardDataset(corpus, "train", shuffle_buffer=0, modality_dropout=0.5,
                               augment=1.0, seed=1, epoch=epoch)
        return [(s["key"], s["modalities"], s["x"]) for s in ds]

    a, b, c = run(0), run(0), run(1)
    assert [(k, m) for k, m, _ in a] == [(k, m) for k, m, _ in b]
    assert all(torch.equal(x, y) for (_, _, x), (_, _, y) in zip(a, b))
    assert [m for _, m, _ in a] != [m for _, m, _ in c]


def test_fine_tuning_with_dropout_starts_from_the_checkpoint(corpus, tmp_path):
    from training.config import TrainConfig
    from training.train import train
    from sleeplm.model.network import load_model

    base = TrainConfig(corpus_dir=str(corpus), out_dir=str(tmp_path / "base"),
                       model={"d_model": 32, "embed_dim": 32, "n_heads": 2, "signal_layers": 1,
                              "text_layers": 1, "decoder_layers": 1, "patch_sec": 2.0},
                       vocab_size=300, batch_size=8, max_steps=2, warmup_steps=0,
                       progress=False, shuffle_buffer=0)
    first = train(base)
    start = load_model(first)
    tuned_cfg = base.model_copy(update={"out_dir": str(tmp_path / "tuned"),
                                        "init_from": str(first), "modality_dropout": 0.5,
                                        "augment": 1.0, "lr": 1e-12, "weight_decay": 0.0})
    tuned = load_model(train(tuned_cfg))
    assert (tmp_path / "tuned" / "tokenizer.json").read_bytes() == \
        (Path(first) / "tokenizer.json").read_bytes()
    for (k, v), (_, w) in zip(start.state_dict().items(), tuned.state_dict().items()):
        assert torch.allclose(v, w, atol=1e-5), k  # lr ~0: the weights are the start's
    saved = json.loads((tmp_path / "tuned" / "train_config.json").read_text())
    assert saved["init_from"] == str(first) and saved["modality_dropout"] == 0.5
    bad = tuned_cfg.model_copy(update={"out_dir": str(tmp_path / "bad"),
                                       "model": {**base.model, "d_model": 64,
                                                 "embed_dim": 64}})
    with pytest.raises(ValueError, match="same architecture"):
        train(bad)


def test_modalities_table_names_channels_of_the_model_input():
    every = set(FULL) | {"EMG_LEG_R"}
    for name, (_, chans) in MODALITIES.items():
        assert set(chans) <= every, name


def test_modalities_benchmark_masks_each_montage(corpus, tmp_path):
    from benchmarks.modalities import montages, run, table
    from conftest import corpus_checkpoint

    ck = corpus_checkpoint(corpus, tmp_path / "ck")
    report = run(corpus, "test", [Path(ck), Path(ck)], max_epochs=None, captions=6, seed=0,
                 out=tmp_path / "out")
    assert json.loads((tmp_path / "out" / "modalities.json").read_text()) == report
    a, b = (r["montages"] for r in report["results"])
    assert a == b  # the same checkpoint twice gives the same figures
    assert list(a) == list(montages())
    # the tiny corpus has EEG_C3, EOG_L, EMG_CHIN, ECG, THORAX, SPO2
    assert a["HR only"] == {"epochs": 0} and a["one EEG derivation (C4)"] == {"epochs": 0}
    assert "staging_accuracy" in a["EEG only"] and "staging_accuracy" in a["EOG only"]
    assert "staging_accuracy" not in a["SpO2 only"]  # no stage without EEG or EOG
    assert a["full montage"]["epochs"] == report["epochs"] > 0
    for row in a.values():
        if row["epochs"]:
            assert 0 <= row["captions_describing_absent"] <= 1 and row["captions"] == 6
    assert a["full montage"]["captions_describing_absent"] == 0  # nothing is absent
    with pytest.raises(ValueError, match="held-out"):
        run(corpus, "train", [Path(ck)], max_epochs=None, captions=2, seed=0, out=tmp_path)
    assert "| SpO2 only | ck | - | - |" in table(report)
