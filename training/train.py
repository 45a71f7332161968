"""Train SleepLM on a corpus (open_clip's training design, sized for small machines).

Usage::

    python -m training.train --config training/configs/tiny.json --set corpus_dir=CORPUS \\
        --set out_dir=runs/tiny [--set model.d_model=64] [--resume]
    torchrun --nproc_per_node 2 -m training.train --config training/configs/default.json ...

Layout of ``out_dir``::

    tokenizer.json           trained on the corpus train split on the first run (rank 0)
    metrics.csv              one row per optimiser step (rank 0), appended on resume
    tb/                      TensorBoard events (only when ``tensorboard`` is importable)
    checkpoint-last/         config.json + model.safetensors + tokenizer.json (save_model)
                             + state.pt (optimizer, scheduler, step, epoch, step_in_epoch,
                             per-rank RNG states, train config)
    final/                   the final model (save_model with tokenizer) + train_config.json

Step semantics. One optimiser step = ``grad_accum`` micro-batches of ``batch_size`` samples
on every rank (global batch ``world * grad_accum * batch_size``). Before a step every rank
fetches its ``grad_accum`` micro-batches and the ranks all-reduce (MIN) a "have them all"
flag; when any rank runs dry the epoch ends on every rank at the same step, so DDP never
waits on a missing rank (the leftover samples of the other ranks are dropped for that epoch,
like ``drop_last``). The contrastive loss gathers the embeddings of all ranks (gather with
grad + local loss, as open_clip), so its gradient equals the single-process gradient on the
global batch; the caption / reconstruction terms are per-rank means averaged by DDP.

Resume. ``state.pt`` stores the data position (epoch, steps done in that epoch): a resumed
run rebuilds that epoch's loader (dataset order is a function of seed + epoch; the DataLoader
has its own generator seeded the same way), skips ``steps_done * grad_accum`` micro-batches
and then restores the python / numpy / torch RNG states saved at the checkpoint, so training
N steps straight and N/2 + resume + N/2 give the same weights (``num_workers=0`` or any
fixed worker count, fp32, deterministic kernels).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from sleeplm._logging import logger
from sleeplm.model.losses import MAX_LOGIT_SCALE
from sleeplm.model.network import SleepLM, SleepLMConfig, count_parameters, load_model, save_model
from sleeplm.corpus.shards import ClauseBank, EpochShardDataset, collate
from sleeplm.corpus.shards import corpus_texts
from sleeplm.model.tokenizer import CaptionTokenizer, train_tokenizer
from training.config import TrainConfig

__all__ = ["main", "train", "train_step", "build_model", "build_optimizer", "cosine_lr",
           "Dist", "init_distributed", "load_or_train_tokenizer", "model_config_for"]

METRIC_FIELDS = ("step", "epoch", "loss", "contrastive", "caption", "reconstruction", "lr",
                 "logit_scale", "grad_norm", "samples_per_s", "time")


# ---------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def _pick_device(want: str, local_rank: int) -> torch.device:
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> Dist:
    """Join the torchrun process group (``WORLD_SIZE`` > 1: nccl on CUDA, gloo on CPU);
    a plain process (or a group already initialised by the caller) works as is."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return Dist(rank, world, local, _pick_device(device, local))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, 0, _pick_device(device, 0))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


# ---------------------------------------------------------------------------- model & data
def load_or_train_tokenizer(cfg: TrainConfig, d: Dist) -> tuple[CaptionTokenizer, Path]:
    """``out/tokenizer.json``: trained on the train split by rank 0 when absent, then loaded
    by every rank (the others wait at a barrier)."""
    path = Path(cfg.out_dir) / "tokenizer.json"
    if d.main and not path.exists() and cfg.init_from:
        src = Path(cfg.init_from) / "tokenizer.json"
        if not src.exists():
            raise FileNotFoundError(f"init_from {cfg.init_from}: no tokenizer.json (a model "
                                    "folder written by training is expected)")
        logger.info("fine-tuning: the tokenizer of %s", cfg.init_from)
        shutil.copyfile(src, path)
    if d.main and not path.exists():
        logger.info("training the caption tokenizer (vocab %d) on %s/train", cfg.vocab_size,
                    cfg.corpus_dir)
        tok = train_tokenizer(corpus_texts(cfg.corpus_dir, "train"), vocab_size=cfg.vocab_size,
                              min_frequency=cfg.tokenizer_min_frequency)
        tmp = path.with_suffix(".tmp")
        tok.save(tmp)
        os.replace(tmp, path)
    d.barrier()
    return CaptionTokenizer.load(path), path


def model_config_for(cfg: TrainConfig, tokenizer: CaptionTokenizer) -> SleepLMConfig:
    """SleepLMConfig: corpus rate/epoch and channels, tokenizer ids, then ``cfg.model``."""
    mi = json.loads((Path(cfg.corpus_dir) / "config.json").read_text())["model_input"]
    kw: dict[str, Any] = dict(channels=tuple(mi["channels"]), sfreq=float(mi["sfreq"]),
                              epoch_sec=float(mi["epoch_sec"]))
    kw.update(cfg.model)
    kw.update(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
              eos_id=tokenizer.eos_id, max_text_len=cfg.max_text_len,
              context_epochs=cfg.context_epochs, sfreq=float(mi["sfreq"]),
              epoch_sec=float(mi["epoch_sec"]))
    return SleepLMConfig(**kw)


def build_model(model_cfg: SleepLMConfig, cfg: TrainConfig) -> SleepLM:
    """A fresh SleepLM whose contrastive loss uses ``cfg``'s gather/local-loss settings; with
    ``cfg.init_from``, the weights of that model folder (fine-tuning)."""
    model = SleepLM(model_cfg)
    if cfg.init_from:
        start = load_model(cfg.init_from)
        if start.cfg.model_dump() != model_cfg.model_dump():
            diff = sorted(k for k, v in model_cfg.model_dump().items()
                          if start.cfg.model_dump().get(k) != v)
            raise ValueError(f"init_from {cfg.init_from}: its model config differs from this "
                             f"run's in {diff}; fine-tuning needs the same architecture")
        model.load_state_dict(start.state_dict())
    model.loss_fn.clip.local_loss = cfg.local_loss
    model.loss_fn.clip.gather_with_grad = cfg.gather_with_grad
    if cfg.contrastive_weights is not None:
        model.loss_fn.text_weights = tuple(cfg.contrastive_weights)
    return model


def _no_decay(name: str, p: nn.Parameter) -> bool:
    """open_clip's rule (1-d tensors: biases, norms, logit scale) plus embeddings/queries."""
    leaf = name.rsplit(".", 1)[-1]
    return p.ndim < 2 or "emb" in name or leaf in ("pos", "pool_query", "logit_scale")


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if _no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def cosine_lr(step: int, *, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier for step ``step`` (0-based): linear warmup to 1 over ``warmup`` steps,
    then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def make_dataset(cfg: TrainConfig, model_cfg: SleepLMConfig, tokenizer: CaptionTokenizer,
                 d: Dist, split: str = "train", epoch: int = 0) -> EpochShardDataset:
    return EpochShardDataset(cfg.corpus_dir, split, channels=model_cfg.channels,
                             tokenizer=tokenizer, max_text_len=cfg.max_text_len,
                             systems=cfg.systems,
                             shuffle_buffer=cfg.shuffle_buffer if split == "train" else 0,
                             seed=cfg.seed, epoch=epoch, context_epochs=cfg.context_epochs,
                             rank=d.rank, world_size=d.world_size,
                             contrastive_system=cfg.contrastive_system,
                             contrastive_clauses=cfg.contrastive_clauses,
                             event_repeat=cfg.event_repeat if split == "train" else 0,
                             modality_dropout=cfg.modality_dropout if split == "train" else 0.0,
                             augment=cfg.augment if split == "train" else 0.0)


def make_loader(ds: EpochShardDataset, cfg: TrainConfig, epoch: int, d: Dist):
    g = torch.Generator()
    g.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + d.rank)
    return torch.utils.data.DataLoader(
        ds, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=collate,
        drop_last=True, generator=g, pin_memory=d.device.type == "cuda",
        persistent_workers=False)


def estimate_total_steps(cfg: TrainConfig, world: int) -> int:
    """``epochs x floor(train epochs / global batch)`` from the corpus manifest."""
    import pandas as pd

    man = pd.read_csv(Path(cfg.corpus_dir) / "manifest.csv")
    ok = man[(man["split"] == "train") & (man["status"] == "ok")]
    n = int(ok["epochs"].sum())
    per_epoch = n // (world * cfg.batch_size * cfg.grad_accum)
    if per_epoch < 1:
        raise ValueError(f"the train split has {n} epochs: less than one global batch")
    return cfg.epochs * per_epoch


def _all_have(flag: bool, d: Dist) -> bool:
    """True when every rank has ``flag`` (all-reduce MIN)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=d.device if dist.get_backend() == "nccl"
                     else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _sum_ranks(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """All-reduce SUM of a small CPU tensor (moved to the device for nccl)."""
    if not d.enabled:
        return t
    x = t.to(d.device) if dist.get_backend() == "nccl" else t.clone()
    dist.all_reduce(x)
    return x.cpu()


def _next_micro_batches(it: Iterator[dict], n: int) -> list[dict] | None:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            return None
    return out


def add_negatives(micro_batches: Sequence[dict], bank: ClauseBank, tokenizer: CaptionTokenizer,
                  cfg: TrainConfig, step: int) -> None:
    """Put ``cfg.clause_negatives`` bank clauses (``negative_ids``/``negative_keys``) into each
    micro-batch; the draw depends on (seed, step, micro-batch) only, so every rank scores the
    same extra columns."""
    for i, b in enumerate(micro_batches):
        drawn = bank.sample(cfg.clause_negatives, (cfg.seed, step, i, 0xBA))
        b["negative_ids"] = torch.stack([
            torch.tensor(ids + [tokenizer.pad_id] * (cfg.max_text_len - len(ids)))
            for ids in (tokenizer.encode(t, cfg.max_text_len) for t, _ in drawn)])
        b["negative_keys"] = torch.tensor([k for _, k in drawn], dtype=torch.long)


# ---------------------------------------------------------------------------- the step
def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(batch: dict, device: torch.device) -> dict:
    nb = device.type == "cuda"
    return {k: (v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: Sequence[dict],
               cfg: TrainConfig, device: torch.device,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> dict[str, float]:
    """One optimiser step over ``micro_batches`` (this rank's share): forward/backward each
    (``no_sync`` on all but the last under DDP; each loss divided by their number), clip,
    step, scheduler step, clamp the logit scale to ``[0, log 100]``. Returns this rank's mean
    loss terms, ``lr``, ``logit_scale`` and ``grad_norm``."""
    model.train()
    raw = model.module if isinstance(model, DDP) else model
    n = len(micro_batches)
    sums = {"loss": 0.0, "contrastive": 0.0, "caption": 0.0, "reconstruction": 0.0}
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(micro_batches):
        b = _to(batch, device)
        sync = isinstance(model, DDP) and i < n - 1
        with (model.no_sync() if sync else contextlib.nullcontext()):
            with _autocast(cfg, device):
                out = model(b["x"], b["mask"], b["text_ids"], b["system"].clamp(min=0),
                            contrastive_ids=b.get("contrastive_ids"),
                            contrastive_keys=b.get("contrastive_keys"),
                            negative_ids=b.get("negative_ids"),
                            negative_keys=b.get("negative_keys"),
                            clause_keyset=b.get("clause_keyset"))
            (out["loss"] / n).backward()
        for k in sums:
            sums[k] += float(out[k].detach()) / n
    grad_norm = float("nan")
    if cfg.grad_clip > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    with torch.no_grad():
        raw.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
    return {**sums, "lr": lr, "logit_scale": float(raw.logit_scale.detach().exp()),
            "grad_norm": grad_norm}


@torch.no_grad()
def evaluate_loss(model: nn.Module, cfg: TrainConfig, model_cfg: SleepLMConfig,
                  tokenizer: CaptionTokenizer, d: Dist) -> dict[str, float] | None:
    """Mean validation loss over at most ``eval_batches`` batches per rank (no patch masking
    randomness beyond the model's own; all ranks take part, stopping together)."""
    ds = make_dataset(cfg, model_cfg, tokenizer, d, split="validation")
    if not ds.shards:
        return None
    raw = model.module if isinstance(model, DDP) else model
    raw.eval()
    loader = make_loader(ds, cfg, 0, d)
    it = iter(loader)
    sums = torch.zeros(5, dtype=torch.float64)
    for _ in range(cfg.eval_batches):
        got = _next_micro_batches(it, 1)
        if not _all_have(got is not None, d):
            break
        b = _to(got[0], d.device)
        with _autocast(cfg, d.device):
            out = raw(b["x"], b["mask"], b["text_ids"], b["system"].clamp(min=0),
                      mask_patches=raw.cfg.reconstruction_weight > 0,
                      contrastive_ids=b.get("contrastive_ids"),
                      contrastive_keys=b.get("contrastive_keys"))
        sums += torch.tensor([1.0] + [float(out[k]) for k in
                                      ("loss", "contrastive", "caption", "reconstruction")],
                             dtype=torch.float64)
    raw.train()
    sums = _sum_ranks(sums, d)
    if sums[0] == 0:
        return None
    return {k: float(sums[i + 1] / sums[0]) for i, k in
            enumerate(("val_loss", "val_contrastive", "val_caption", "val_reconstruction"))}


# ---------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(),
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(folder: Path, model: SleepLM, optimizer, scheduler, cfg: TrainConfig,
                    tokenizer_path: Path, *, step: int, epoch: int, step_in_epoch: int,
                    d: Dist) -> None:
    """Collective (every rank calls it: RNG states are gathered); rank 0 writes."""
    rng = _rng_state()
    if d.enabled:
        all_rng: list = [None] * d.world_size
        dist.all_gather_object(all_rng, rng)
    else:
        all_rng = [rng]
    if d.main:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(model, tmp, tokenizer_path)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "step": step, "epoch": epoch, "step_in_epoch": step_in_epoch,
                    "rng": all_rng, "world_size": d.world_size,
                    "train_config": json.loads(cfg.to_json())}, tmp / "state.pt")
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    d.barrier()


def _load_state(folder: Path, model: SleepLM, device: torch.device) -> dict:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
    return torch.load(folder / "state.pt", map_location="cpu", weights_only=False)


# ---------------------------------------------------------------------------- logging
class MetricsWriter:
    """Rank-0 CSV (+ TensorBoard when importable) writer; a no-op on other ranks."""

    def __init__(self, out: Path, enabled: bool, resume: bool):
        self.enabled = enabled
        self.tb = None
        self._csv = None
        if not enabled:
            return
        path = out / "metrics.csv"
        fresh = not (resume and path.exists())
        self._file = open(path, "w" if fresh else "a", newline="")
        self._fields = list(METRIC_FIELDS) + ["val_loss", "val_contrastive", "val_caption",
                                              "val_reconstruction"]
        self._csv = csv.DictWriter(self._file, fieldnames=self._fields, extrasaction="ignore")
        if fresh:
            self._csv.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"))
        except Exception:  # tensorboard not installed
            logger.info("tensorboard is not importable: metrics go to metrics.csv only")

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self._csv.writerow(row)
        self._file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch", "time") and isinstance(v, float) \
                        and math.isfinite(v):
                    self.tb.add_scalar(f"train/{k}" if not k.startswith("val_") else
                                       f"val/{k[4:]}", v, row["step"])

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self.tb is not None:
                self.tb.close()


# ---------------------------------------------------------------------------- the run
def train(cfg: TrainConfig, resume: bool = False) -> Path | None:
    """Run (or resume) training; returns ``out/final`` when training finished (None when it
    stopped at ``stop_at_step``)."""
    d = init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    d.barrier()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP broadcasts anyway)

    tokenizer, tok_path = load_or_train_tokenizer(cfg, d)
    model_cfg = model_config_for(cfg, tokenizer)
    model = build_model(model_cfg, cfg).to(d.device)
    optimizer = build_optimizer(model, cfg)
    total = cfg.max_steps or estimate_total_steps(cfg, d.world_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr(s, warmup=cfg.warmup_steps, total=total,
                                       min_ratio=cfg.min_lr_ratio))
    step, epoch, step_in_epoch, rng = 0, 0, 0, None
    ckpt = out / "checkpoint-last"
    if resume and (ckpt / "state.pt").exists():
        state = _load_state(ckpt, model, d.device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        if state["world_size"] == d.world_size:
            rng = state["rng"][d.rank]
        else:
            logger.warning("resume with world size %d (checkpoint %d): RNG states reseeded",
                           d.world_size, state["world_size"])
        if d.main:
            logger.info("resumed from %s at step %d (epoch %d, %d steps into it)", ckpt, step,
                        epoch, step_in_epoch)
    elif resume and d.main:
        logger.warning("--resume: no checkpoint in %s, starting fresh", ckpt)
    if rng is None:
        torch.manual_seed(cfg.seed + 1009 * d.rank)  # distinct dropout/mask draws per rank
        np.random.seed(cfg.seed + d.rank)
        random.seed(cfg.seed + d.rank)

    net: nn.Module = model
    if d.enabled:
        net = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                  find_unused_parameters=True)
    if d.main:
        logger.info("SleepLM %s parameters, world %d, global batch %d, %d steps, device %s",
                    f"{count_parameters(model):,}", d.world_size,
                    d.world_size * cfg.batch_size * cfg.grad_accum, total, d.device)
        cfg.save(out / "train_config.json")
    writer = MetricsWriter(out, d.main, resume and step > 0)
    stop = min(total, cfg.stop_at_step or total)
    bar = None
    if d.main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop, initial=step, desc="train", dynamic_ncols=True,
                   file=sys.stderr)

    ds = make_dataset(cfg, model_cfg, tokenizer, d, epoch=epoch)
    bank = None
    if cfg.clause_negatives and cfg.contrastive_clauses:
        bank = ClauseBank.from_corpus(cfg.corpus_dir, "train", cfg.contrastive_clauses)
        if d.main:
            logger.info("clause bank: %d distinct clauses over %s; %d drawn per step as "
                        "extra negatives", len(bank), sorted(bank.groups),
                        cfg.clause_negatives)
    last_ckpt = step if resume else -1
    while step < stop and epoch < cfg.epochs:
        ds.set_epoch(epoch)
        it = iter(make_loader(ds, cfg, epoch, d))
        for _ in range(step_in_epoch * cfg.grad_accum):  # resume: skip consumed batches
            next(it)
        if rng is not None:
            _set_rng_state(rng)
            rng = None
        while step < stop:
            t0 = time.perf_counter()
            mbs = _next_micro_batches(it, cfg.grad_accum)
            if not _all_have(mbs is not None, d):
                break
            if bank is not None:
                add_negatives(mbs, bank, tokenizer, cfg, step)
            m = train_step(net, optimizer, mbs, cfg, d.device, scheduler)
            step += 1
            step_in_epoch += 1
            if d.enabled:  # log the mean over ranks
                terms = ("loss", "contrastive", "caption", "reconstruction")
                v = _sum_ranks(torch.tensor([m[k] for k in terms], dtype=torch.float64), d)
                m.update(zip(terms, (v / d.world_size).tolist()))
            dt = time.perf_counter() - t0
            row = {"step": step, "epoch": epoch, **m, "time": round(time.time(), 3),
                   "samples_per_s": d.world_size * cfg.batch_size * cfg.grad_accum / dt}
            if cfg.eval_every and step % cfg.eval_every == 0:
                row.update(evaluate_loss(net, cfg, model_cfg, tokenizer, d) or {})
            writer.write(row)
            if bar is not None:
                bar.update(1)
                if step % cfg.log_every == 0 or step == stop:
                    bar.set_postfix(loss=f"{m['loss']:.3f}", lr=f"{m['lr']:.2e}")
            if d.main and not cfg.progress and (step % cfg.log_every == 0 or step == stop):
                logger.info("step %d epoch %d loss %.4f (c %.3f cap %.3f rec %.3f) lr %.2e",
                            step, epoch, m["loss"], m["contrastive"], m["caption"],
                            m["reconstruction"], m["lr"])
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < stop:
                save_checkpoint(ckpt, model, optimizer, scheduler, cfg, tok_path, step=step,
                                epoch=epoch, step_in_epoch=step_in_epoch, d=d)
                last_ckpt = step
        else:  # stopped inside the epoch
            break
        epoch += 1
        step_in_epoch = 0
    if bar is not None:
        bar.close()
    writer.close()
    finished = step >= total or epoch >= cfg.epochs
    if step != last_ckpt:
        save_checkpoint(ckpt, model, optimizer, scheduler, cfg, tok_path, step=step,
                        epoch=epoch, step_in_epoch=step_in_epoch, d=d)
    final = None
    if finished:
        final = out / "final"
        if d.main:
            save_model(model, final, tok_path)
            cfg.save(final / "train_config.json")
            logger.info("finished at step %d: %s", step, final)
    elif d.main:
        logger.info("stopped at step %d (checkpoint %s); continue with --resume", step, ckpt)
    d.barrier()  # every rank is done before any tears the process group down
    return final


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TrainConfig JSON file (training/configs/*.json)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field (JSON value), dotted for model fields: "
                        "--set model.d_model=64; repeatable")
    p.add_argument("--resume", action="store_true",
                   help="continue from out_dir/checkpoint-last (exact: data position, RNG)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = TrainConfig.load(args.config, args.overrides)
    try:
        train(cfg, resume=args.resume)
    finally:
        if dist.is_available() and dist.is_initialized():
            # nothing may still hold the group when it goes (a DDP reducer left to interpreter
            # exit is destroyed there, where gloo's threads abort the process)
            gc.collect()
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
