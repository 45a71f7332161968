"""Training loop (training.train): end-to-end tiny run, exact resume, 2-process DDP step."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from conftest import TINY_CHANNELS, build_tiny_corpus
from sleeplm.model.network import load_model
from sleeplm.corpus.shards import corpus_texts
from sleeplm.model.tokenizer import train_tokenizer
from training.config import TrainConfig, apply_overrides
from training.train import (Dist, build_model, build_optimizer, cosine_lr, main,
                            make_dataset, model_config_for, train, train_step)

TINY = ROOT / "training" / "configs" / "tiny.json"
#: both subjects hash to the train split (see tests/test_shards.py)
PLAN = (("healthy_young", 11, "SC4011E0"), ("osa_moderate", 12, "SC4031E0"))
CHANNELS = TINY_CHANNELS


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out, rep = build_tiny_corpus(tmp_path_factory, PLAN, "train")
    assert rep.nights_per_split == {"train": 2}
    return out


@pytest.fixture(scope="module")
def tokenizer_file(corpus, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("train_tok") / "tokenizer.json"
    train_tokenizer(corpus_texts(corpus, "train"), vocab_size=300).save(path)
    return path


def _cfg(corpus: Path, out: Path, *overrides: str) -> TrainConfig:
    return TrainConfig.load(TINY, [f"corpus_dir={corpus}", f"out_dir={out}", *overrides])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# ------------------------------------------------------------------------------ config
def test_config_overrides_and_validation(tmp_path):
    cfg = TrainConfig.load(TINY, ["batch_size=3", "model.d_model=64", "precision=bf16",
                                  "systems=[\"brain\", \"cardiac\"]", "corpus_dir=/x"])
    assert cfg.batch_size == 3 and cfg.model["d_model"] == 64 and cfg.model["n_heads"] == 2
    assert cfg.precision == "bf16" and cfg.systems == ("brain", "cardiac")
    assert cfg.corpus_dir == "/x"
    again = TrainConfig.model_validate_json(cfg.to_json())
    assert again == cfg
    for bad in (["precision=fp16"], ["model.nope=1"], ["model.vocab_size=10"], ["batch_size=0"],
                ["device=tpu"], ["systems=[\"kidney\"]"], ["model.d_model=33"], ["nope=1"]):
        with pytest.raises(ValueError):
            TrainConfig.load(TINY, bad)
    with pytest.raises(ValueError):
        apply_overrides({}, ["novalue"])
    TrainConfig.load(TINY.parent / "default.json")  # the shipped recipe validates
    assert cosine_lr(0, warmup=4, total=20) == 0.25 and cosine_lr(3, warmup=4, total=20) == 1
    assert cosine_lr(20, warmup=4, total=20) == pytest.approx(0.0)
    assert cosine_lr(12, warmup=4, total=20, min_ratio=0.2) == pytest.approx(0.6)


# ------------------------------------------------------------------------------ end to end
def test_tiny_run_end_to_end(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(["--config", str(TINY), "--set", f"corpus_dir={corpus}",
                 "--set", f"out_dir={out}"]) == 0
    assert (out / "tokenizer.json").exists()  # trained on the train split on the first run
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    loss = np.array([float(r["loss"]) for r in rows])
    assert np.isfinite(loss).all()
    assert loss[-5:].mean() < 0.9 * loss[:5].mean(), loss
    caption = np.array([float(r["caption"]) for r in rows])
    assert caption[-5:].mean() < 0.85 * caption[:5].mean(), caption
    for k in ("contrastive", "caption", "reconstruction", "lr", "logit_scale",
              "samples_per_s"):
        assert all(np.isfinite(float(r[k])) for r in rows), k
    assert float(rows[0]["lr"]) < float(rows[3]["lr"])  # warmup
    assert int(rows[-1]["epoch"]) >= 1  # 136 samples / batch 8: crossed an epoch boundary
    model = load_model(out / "final")
    assert model.cfg.channels == CHANNELS and model.cfg.sfreq == 16 and model.cfg.d_model == 32
    assert (out / "final" / "tokenizer.json").exists()
    saved = json.loads((out / "final" / "train_config.json").read_text())
    assert saved["max_steps"] == 30 and saved["corpus_dir"] == str(corpus)
    x = torch.zeros(2, len(CHANNELS), 480)
    emb, _, _ = model.encode_signal(x)
    assert emb.shape == (2, 16)
    state = torch.load(out / "checkpoint-last" / "state.pt", weights_only=False)
    assert state["step"] == 30 and "optimizer" in state and len(state["rng"]) == 1


# ------------------------------------------------------------------------------ resume
def test_exact_resume(corpus, tokenizer_file, tmp_path):
    # dropout and patch masking on (RNG must be restored); batch 32 -> 7 steps per epoch, so
    # the runs cross an epoch boundary and the stop at 9 lies inside epoch 1
    n = int(pd.read_csv(corpus / "manifest.csv")["epochs"].sum())
    assert n // 32 == 7
    common = ["batch_size=32", "max_steps=12", "model.dropout=0.1", "checkpoint_every=4"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    for d in (straight, split):
        d.mkdir()
        shutil.copy(tokenizer_file, d / "tokenizer.json")
    train(_cfg(corpus, straight, *common))
    assert train(_cfg(corpus, split, *common, "stop_at_step=9")) is None
    state = torch.load(split / "checkpoint-last" / "state.pt", weights_only=False)
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (9, 1, 2)
    assert not (split / "final").exists()
    assert train(_cfg(corpus, split, *common), resume=True) == split / "final"
    a, b = _weights(straight / "final"), _weights(split / "final")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [int(r["step"]) for r in csv.DictReader(open(split / "metrics.csv"))]
    assert steps == list(range(1, 13))  # appended on resume


# ------------------------------------------------------------------------------ DDP
def _ddp_rank_step(rank: int, world: int, cfg_json: str, batch_file: str) -> dict:
    """One DDP training step of ``rank``; returns its state and the global-batch metrics. Every
    object holding the process group (DDP's reducer, the autograd graph of the gathers) is
    gone when this returns."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sleeplm.model.network import SleepLMConfig

    cfg = TrainConfig.model_validate_json(cfg_json)
    data = torch.load(batch_file, weights_only=False)
    torch.manual_seed(0)
    model = build_model(SleepLMConfig.model_validate(data["model_cfg"]), cfg)
    opt = build_optimizer(model, cfg)
    net = DDP(model, find_unused_parameters=True)
    B = cfg.batch_size
    # each rank its half of the samples; the bank negatives are the same on every rank
    part = {k: v if k.startswith("negative_") else v[rank * B:(rank + 1) * B]
            for k, v in data["batch"].items()}
    m = train_step(net, opt, [part], cfg, torch.device("cpu"))
    terms = torch.tensor([m["contrastive"], m["caption"]], dtype=torch.float64)
    dist.all_reduce(terms)  # mean over the ranks = the global-batch mean
    m["contrastive"], m["caption"] = (terms / world).tolist()
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "metrics": m}


def _ddp_worker(rank: int, world: int, init_file: str, cfg_json: str, batch_file: str,
                out_file: str) -> None:
    import gc

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        result = _ddp_rank_step(rank, world, cfg_json, batch_file)
        if rank == 0:
            torch.save(result, out_file)
        # The process group is torn down only once nothing holds it (a DDP reducer still alive
        # at teardown is destroyed at interpreter exit, where gloo's threads abort: seen in CI
        # under load) and both ranks are done with it (a rank leaving early aborts the other).
        del result
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_step_matches_single_process(corpus, tokenizer_file, tmp_path):
    from sleeplm.model.tokenizer import CaptionTokenizer
    from sleeplm.corpus.shards import collate

    # no reconstruction (its random patch mask would differ per process) and captions all
    # truncated to max_text_len (equal token counts per rank, so the DDP-averaged caption
    # mean equals the global one); the contrastive term is gathered with grad + local loss
    B = 4
    cfg = _cfg(corpus, tmp_path / "ddp", f"batch_size={B}", "max_text_len=10",
               "model.reconstruction_weight=0", "gather_with_grad=true", "local_loss=true",
               "lr=0.001", 'contrastive_clauses=["respiratory_events", "arousals"]',
               "contrastive_weights=[1.0, 0.5, 1.0]")
    tok = CaptionTokenizer.load(tokenizer_file)
    mcfg = model_config_for(cfg, tok)
    ds = make_dataset(cfg, mcfg, tok, Dist(), epoch=0)
    samples = []
    for s in ds:
        if s["system"] >= 0:
            samples.append(s)
        if len(samples) == 2 * B:
            break
    batch = collate(samples)
    batch = {k: v for k, v in batch.items() if k in ("x", "mask", "text_ids", "system",
                                                       "contrastive_ids", "contrastive_keys",
                                                       "clause_keyset")}
    assert batch["clause_keyset"].shape[0] == 2 * B
    # the clause texts repeat across the two ranks' halves ("no respiratory events"): the
    # multi-positive targets must be built from the keys of both ranks
    clause_keys = batch["contrastive_keys"][:, -1]
    assert len(set(clause_keys.tolist())) < len(clause_keys)
    # extra negatives from the clause bank: the same columns on every rank
    from sleeplm.corpus.shards import ClauseBank
    from training.train import add_negatives

    bank = ClauseBank.from_corpus(corpus, "train", cfg.contrastive_clauses)
    add_negatives([batch], bank, tok, cfg.model_copy(update={"clause_negatives": 6}), step=0)
    assert batch["negative_ids"].shape == (6, cfg.max_text_len)
    lens = (batch["text_ids"] != tok.pad_id).sum(1)
    assert (lens == lens[0]).all()  # precondition for the caption-mean equality
    batch_file, out_file = tmp_path / "batch.pt", tmp_path / "ddp_out.pt"
    torch.save({"batch": batch, "model_cfg": mcfg.model_dump(mode="json")}, batch_file)

    torch.manual_seed(0)
    ref = build_model(mcfg, cfg)
    opt = build_optimizer(ref, cfg)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    m_ref = train_step(ref, opt, [batch], cfg, torch.device("cpu"))

    torch.multiprocessing.spawn(
        _ddp_worker, args=(2, str(tmp_path / "init"), cfg.to_json(), str(batch_file),
                           str(out_file)), nprocs=2, join=True)
    got = torch.load(out_file, weights_only=False)
    moved = 0
    for k, v in ref.state_dict().items():
        assert torch.allclose(got["state"][k], v, atol=1e-5, rtol=0), \
            (k, (got["state"][k] - v).abs().max())
        moved += int(not torch.equal(v, before[k]))
    assert moved > 10  # the step did change the weights
    # the contrastive loss over the gathered batch equals the single-process one
    assert got["metrics"]["contrastive"] == pytest.approx(m_ref["contrastive"], abs=1e-5)
    assert got["metrics"]["caption"] == pytest.approx(m_ref["caption"], abs=1e-5)
