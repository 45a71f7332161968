"""SleepLM: a small CoCa-style sleep-signal / language model, in one file (nanoGPT style).

Read top to bottom: config, building blocks, signal encoder, text encoder, caption decoder, the
model, then save / load. Nothing is downloaded; there are no hub weights.

Design (after SleepLM, arXiv 2602.23605, with open_clip's CoCa as the reference recipe):

* **Signal encoder.** An epoch ``x [B, C, T]`` (64 Hz, 1920 samples) is cut into 2-s patches
  (``P = 15`` per channel, ``L = 128`` samples). Each waveform channel has its own linear patch
  embedding ``L -> d``, plus (``spectral_patches``, default on) its own linear map of the
  patch's log power spectrum (``L/2+1`` rfft bins, 0.5-Hz resolution): a transformer on raw
  samples has to learn band power (spindles, alpha, delta) from scratch, the spectrum hands it
  over, which is what makes a CPU-sized model learn in an hour; ``POSITION`` is a code, not a waveform, so its patch token is a learned
  embedding of the per-patch mode of the code (-1 unknown, 0 right, 1 left, 2 supine, 3 prone,
  4 upright). A learned channel embedding and patch-position embedding are added, and a pre-LN
  transformer runs over all ``C x P`` tokens. Absent channels (``mask`` False) are zeroed at the
  input and hidden from every attention as keys, so their data cannot change anything. A learned
  query attention-pools the tokens into an epoch vector. With ``epoch_tokens`` each channel also
  gets one token for the whole epoch, a linear map of its 15 patches' mean, SD, minimum and
  maximum: respiratory events and desaturations last 10 s or more, longer than a patch, and this
  token hands the encoder the epoch's slow course (breathing amplitude, SpO2 level) directly. With ``context_epochs = k > 0`` the
  input is ``[B, 2k+1, C, T]``: every epoch is encoded, a small context transformer runs over the
  ``2k+1`` epoch vectors (epochs with no present channel are hidden) and the centre output is
  kept. The vector is projected to ``embed_dim`` and L2-normalised.
* **Text encoder.** Token + position embeddings, a bidirectional pre-LN transformer with a
  padding mask, mean over the non-pad tokens, projection, L2 normalisation.
* **Caption decoder.** A causal pre-LN transformer with cross-attention to the (centre epoch's)
  signal tokens, masked like the encoder. Its input is ``[system token, BOS, caption ...]``
  where the system token is one of ``n_systems`` learned embeddings (brain, cardiac,
  respiration, somatic, holistic; :data:`sleeplm.captions.caption.SYSTEMS`). The LM head is
  **tied** to the decoder's token embedding (no separate weight is stored).
* **Reconstruction.** In training a random ``recon_mask_ratio`` of the present, non-POSITION
  patches has its patch embedding replaced by a learned mask embedding before the encoder; a
  per-channel linear head predicts the original 64 samples from those token outputs; MSE over
  the masked patches. One encoder pass serves all three losses (the contrastive and caption
  losses also see the masked input, as in FLIP-style masked training).

Sizes: the default config (d_model 128, 4 signal / 2 text / 2 decoder layers, vocab 4000, 12
channels) has about 3.4 M parameters, ~14 MB as float32 safetensors (``tests/test_model.py``
checks <= 25 MB); one forward + backward of a 32-epoch batch takes ~0.65 s on 2 CPU cores
(1-s patches without the spectrum: ~2.1 s, the attention runs over 360 instead of 180 tokens).

Caption token convention: ``text_ids [B, L]`` are right-padded with ``pad_id``; a leading
``bos_id`` is optional (stripped) and a final ``eos_id`` is optional (added when missing), so
ids straight from a tokenizer with or without special tokens both work. Captions longer than
``max_text_len`` tokens (EOS included) are truncated (then without EOS).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from sleeplm.model.losses import MAX_LOGIT_SCALE, SleepLMLoss

__all__ = ["SleepLMConfig", "SleepLM", "SLEEPLM_CHANNELS", "DEFAULT_MODEL_CHANNELS",
           "save_model", "load_model", "count_parameters", "system_index",
           "DEFAULT_CHECKPOINT", "default_checkpoint"]

#: Channel order of the published SleepLM input contract.
SLEEPLM_CHANNELS: tuple[str, ...] = ("ECG", "ABDOMEN", "THORAX", "AIRFLOW", "EOG_L", "EOG_R",
                                     "EEG_C3", "EEG_C4", "EMG_CHIN", "POSITION")
#: Our default: the published order plus oximetry and leg EMG.
DEFAULT_MODEL_CHANNELS: tuple[str, ...] = SLEEPLM_CHANNELS + ("SPO2", "EMG_LEG")
_N_POSITION_CODES = 6  # -1 unknown, 0..4 -> embedding rows 0..5


# ----------------------------------------------------------------------------------- config


class SleepLMConfig(BaseModel):
    """Everything needed to rebuild a :class:`SleepLM` (stored as ``config.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # input contract (must match sleeplm.corpus.preprocess.ModelInputConfig)
    channels: tuple[str, ...] = DEFAULT_MODEL_CHANNELS
    sfreq: float = Field(default=64.0, gt=0)
    epoch_sec: float = Field(default=30.0, gt=0)
    patch_sec: float = Field(default=2.0, gt=0)
    spectral_patches: bool = True
    epoch_tokens: bool = False
    # signal tower
    d_model: int = Field(default=128, gt=0)
    n_heads: int = Field(default=4, gt=0)
    signal_layers: int = Field(default=4, ge=1)
    context_epochs: int = Field(default=0, ge=0)
    context_layers: int = Field(default=1, ge=1)
    # text tower and decoder
    vocab_size: int = Field(default=4000, gt=3)
    max_text_len: int = Field(default=96, gt=1)
    text_layers: int = Field(default=2, ge=1)
    decoder_layers: int = Field(default=2, ge=1)
    pad_id: int = Field(default=0, ge=0)
    bos_id: int = Field(default=1, ge=0)
    eos_id: int = Field(default=2, ge=0)
    n_systems: int = Field(default=5, ge=1)
    # shared
    embed_dim: int = Field(default=128, gt=0)
    mlp_ratio: float = Field(default=4.0, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    # training objective
    recon_mask_ratio: float = Field(default=0.3, ge=0, lt=1)
    contrastive_weight: float = Field(default=1.0, ge=0)
    caption_weight: float = Field(default=1.0, ge=0)
    reconstruction_weight: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "SleepLMConfig":
        if len(set(self.channels)) != len(self.channels) or not self.channels:
            raise ValueError(f"channels must be non-empty and unique, got {self.channels}")
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        t, p = self.sfreq * self.epoch_sec, self.sfreq * self.patch_sec
        if abs(t - round(t)) > 1e-6 or abs(p - round(p)) > 1e-6 or round(t) % round(p):
            raise ValueError("epoch and patch must be whole numbers of samples, patch | epoch")
        if len({self.pad_id, self.bos_id, self.eos_id}) != 3:
            raise ValueError("pad_id, bos_id and eos_id must differ")
        if max(self.pad_id, self.bos_id, self.eos_id) >= self.vocab_size:
            raise ValueError("special token ids must be < vocab_size")
        return self

    @property
    def samples_per_epoch(self) -> int:
        return int(round(self.sfreq * self.epoch_sec))

    @property
    def patch_len(self) -> int:
        return int(round(self.sfreq * self.patch_sec))

    @property
    def n_patches(self) -> int:
        return self.samples_per_epoch // self.patch_len

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "SleepLMConfig":
        return cls.model_validate(json.loads(text))

    @classmethod
    def tiny(cls, **overrides) -> "SleepLMConfig":
        """A test-sized model (d_model 32, one layer per tower, vocab 300)."""
        kw = dict(d_model=32, n_heads=2, signal_layers=1, context_layers=1, text_layers=1,
                  decoder_layers=1, embed_dim=16, vocab_size=300, max_text_len=24,
                  dropout=0.0)
        kw.update(overrides)
        return cls(**kw)


def system_index(system: str | int) -> int:
    """Index of a caption system name (``"brain"`` ... ``"holistic"``) for ``system``."""
    if isinstance(system, int):
        return system
    from sleeplm.captions.caption import SYSTEMS

    return SYSTEMS.index(system)


# ------------------------------------------------------------------------------ building blocks


def _safe_keys(key_valid: Tensor) -> Tensor:
    """Key mask with rows that hide every key opened up (so softmax never sees only -inf).
    Callers make such rows' content data-independent, so this leaks nothing."""
    return key_valid | ~key_valid.any(dim=-1, keepdim=True)


class Attention(nn.Module):
    """Multi-head (self or cross) attention on ``F.scaled_dot_product_attention``."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: Tensor, context: Tensor | None = None, key_valid: Tensor | None = None,
                causal: bool = False) -> Tensor:
        context = x if context is None else context
        B, Lq, d = x.shape
        Lk, h = context.shape[1], self.n_heads
        q = self.q(x).view(B, Lq, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(B, Lk, 2, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None if key_valid is None else _safe_keys(key_valid)[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, Lq, d))


class MLP(nn.Module):
    def __init__(self, d: int, ratio: float, dropout: float):
        super().__init__()
        hidden = int(d * ratio)
        self.fc, self.proj, self.drop = nn.Linear(d, hidden), nn.Linear(hidden, d), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, d: int, n_heads: int, mlp_ratio: float, dropout: float,
                 cross: bool = False):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d), Attention(d, n_heads, dropout)
        self.ln_x = nn.LayerNorm(d) if cross else None
        self.xattn = Attention(d, n_heads, dropout) if cross else None
        self.ln2, self.mlp = nn.LayerNorm(d), MLP(d, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_valid: Tensor | None = None, causal: bool = False,
                memory: Tensor | None = None, memory_valid: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), key_valid=key_valid, causal=causal))
        if self.xattn is not None:
            x = x + self.drop(self.xattn(self.ln_x(x), memory, key_valid=memory_valid))
        return x + self.mlp(self.ln2(x))


# ------------------------------------------------------------------------------ signal encoder


class SignalEncoder(nn.Module):
    """``x [B, C, T]``, ``mask [B, C]`` -> epoch vector ``[B, d]``, tokens ``[B, N, d]``
    (``N = C*P`` patch tokens, then ``C`` epoch tokens with ``epoch_tokens``)."""

    def __init__(self, cfg: SleepLMConfig):
        super().__init__()
        C, P, L, d = cfg.n_channels, cfg.n_patches, cfg.patch_len, cfg.d_model
        self.C, self.P, self.L = C, P, L
        self.pos_channel = cfg.channels.index("POSITION") if "POSITION" in cfg.channels else -1
        self.patch_w = nn.Parameter(torch.randn(C, L, d) / math.sqrt(L))  # per-channel Linear
        self.patch_b = nn.Parameter(torch.zeros(C, d))
        self.n_freq = L // 2 + 1 if cfg.spectral_patches else 0
        if self.n_freq:  # per-channel Linear on the patch's log power spectrum
            self.spec_w = nn.Parameter(torch.randn(C, self.n_freq, d) / math.sqrt(self.n_freq))
        self.epoch_tokens = cfg.epoch_tokens
        if self.epoch_tokens:  # per-channel Linear on the epoch's per-patch mean/std/min/max
            self.stat_w = nn.Parameter(torch.randn(C, 4 * P, d) / math.sqrt(4 * P))
            self.stat_b = nn.Parameter(torch.zeros(C, d))
            self.epoch_tok_emb = nn.Parameter(torch.randn(d) * 0.02)
        self.position_emb = nn.Embedding(_N_POSITION_CODES, d)  # body-position codes
        self.channel_emb = nn.Parameter(torch.randn(C, d) * 0.02)
        self.patch_pos_emb = nn.Parameter(torch.randn(P, d) * 0.02)
        self.mask_emb = nn.Parameter(torch.randn(d) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.signal_layers))
        self.ln_f = nn.LayerNorm(d)
        self.pool_query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pool = Attention(d, cfg.n_heads, 0.0)
        self.ln_pool = nn.LayerNorm(d)
        self.recon_w = nn.Parameter(torch.zeros(C, d, L))  # per-channel Linear d -> L
        self.recon_b = nn.Parameter(torch.zeros(C, L))

    def patches(self, x: Tensor) -> Tensor:
        """``[B, C, T]`` -> ``[B, C, P, L]``."""
        return x.reshape(x.shape[0], self.C, self.P, self.L)

    @staticmethod
    def log_spectrum(p: Tensor) -> Tensor:
        """``[..., L]`` patches -> ``[..., L//2+1]`` log power per rfft bin, ``log1p(|X|^2/L)``
        (a z-scored channel's bins are ~0.7 on white noise; an all-zero patch gives 0)."""
        return torch.log1p(torch.fft.rfft(p.float(), dim=-1).abs().pow(2) / p.shape[-1])

    @staticmethod
    def patch_stats(p: Tensor, hidden: Tensor | None = None) -> Tensor:
        """``[B, C, P, L]`` -> ``[B, C, 4P]``: each patch's mean, standard deviation, minimum
        and maximum (robust-SD units), patch-major; patches in ``hidden [B, C, P]`` (masked for
        reconstruction) give zeros, so the epoch token cannot leak what is to be
        reconstructed."""
        st = torch.stack([p.mean(-1), p.std(-1, unbiased=False), p.amin(-1), p.amax(-1)], -1)
        if hidden is not None:
            st = st.masked_fill(hidden[..., None], 0.0)
        return st.flatten(2)

    def forward(self, x: Tensor, mask: Tensor, patch_mask: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns ``(epoch [B, d], tokens [B, N, d], token_valid [B, N],
        recon [B, C, P, L])`` (``recon`` is the head's prediction for every patch)."""
        B = x.shape[0]
        x = torch.nan_to_num(x.float()) * mask[:, :, None].float()  # absent rows: exactly 0
        p = self.patches(x)
        tok = torch.einsum("bcpl,cld->bcpd", p, self.patch_w) + self.patch_b[:, None, :]
        if self.n_freq:
            tok = tok + torch.einsum("bcpf,cfd->bcpd", self.log_spectrum(p), self.spec_w)
        if self.pos_channel >= 0:
            codes = p[:, self.pos_channel].round().long().clamp(-1, 4) + 1  # [B, P, L] 0..5
            mode = F.one_hot(codes, _N_POSITION_CODES).sum(2).argmax(-1)  # [B, P]
            is_pos = torch.zeros(self.C, dtype=torch.bool, device=x.device)
            is_pos[self.pos_channel] = True
            tok = torch.where(is_pos[None, :, None, None], self.position_emb(mode)[:, None], tok)
        if patch_mask is not None:
            tok = torch.where(patch_mask[..., None], self.mask_emb.to(tok.dtype), tok)
        tok = tok + self.channel_emb[None, :, None, :] + self.patch_pos_emb[None, None]
        h = tok.reshape(B, self.C * self.P, -1)
        valid = mask[:, :, None].expand(B, self.C, self.P).reshape(B, -1)
        if self.epoch_tokens:  # one token per channel for the whole epoch's slow course
            et = torch.einsum("bcf,cfd->bcd", self.patch_stats(p, patch_mask), self.stat_w)
            et = et + self.stat_b + self.channel_emb + self.epoch_tok_emb
            h, valid = torch.cat([h, et], 1), torch.cat([valid, mask], 1)
        h = self.drop(h)
        for block in self.blocks:
            h = block(h, key_valid=valid)
        h = self.ln_f(h)
        pooled = self.pool(self.pool_query.expand(B, -1, -1), h, key_valid=valid)
        pooled = self.ln_pool(pooled[:, 0])
        hp = h[:, :self.C * self.P].reshape(B, self.C, self.P, -1)
        recon = torch.einsum("bcpd,cdl->bcpl", hp, self.recon_w) + self.recon_b[:, None, :]
        return pooled, h, valid, recon


class ContextEncoder(nn.Module):
    """Transformer over ``2k+1`` neighbouring epoch vectors; returns the centre one."""

    def __init__(self, cfg: SleepLMConfig):
        super().__init__()
        d, K = cfg.d_model, 2 * cfg.context_epochs + 1
        self.pos = nn.Parameter(torch.randn(K, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.context_layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, epochs: Tensor, valid: Tensor) -> Tensor:
        """``epochs [B, K, d]``, ``valid [B, K]`` -> centre ``[B, d]``."""
        K = epochs.shape[1]
        valid = valid.clone()
        valid[:, K // 2] = True  # the centre always attends to itself
        h = epochs + self.pos[None]
        for block in self.blocks:
            h = block(h, key_valid=valid)
        return self.ln_f(h[:, K // 2])


# -------------------------------------------------------------------------------- text encoder


class TextEncoder(nn.Module):
    """``ids [B, L]`` -> mean-pooled ``[B, d]`` over non-pad tokens."""

    def __init__(self, cfg: SleepLMConfig):
        super().__init__()
        d = cfg.d_model
        self.pad_id = cfg.pad_id
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = nn.Parameter(torch.randn(cfg.max_text_len, d) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.text_layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids: Tensor) -> Tensor:
        ids = ids[:, : self.pos_emb.shape[0]]
        valid = ids != self.pad_id
        h = self.drop(self.tok_emb(ids) + self.pos_emb[None, : ids.shape[1]])
        for block in self.blocks:
            h = block(h, key_valid=valid)
        h = self.ln_f(h)
        w = valid.float()[..., None]
        return (h * w).sum(1) / w.sum(1).clamp(min=1.0)  # an empty caption pools to 0


# ----------------------------------------------------------------------------- caption decoder


class CaptionDecoder(nn.Module):
    """Causal decoder over ``[system, BOS, tokens...]`` with cross-attention to signal tokens.
    The LM head is tied to ``tok_emb``."""

    def __init__(self, cfg: SleepLMConfig):
        super().__init__()
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.system_emb = nn.Embedding(cfg.n_systems, d)
        self.pos_emb = nn.Parameter(torch.randn(cfg.max_text_len + 1, d) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.mlp_ratio, cfg.dropout, cross=True)
                                    for _ in range(cfg.decoder_layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids: Tensor, system: Tensor, memory: Tensor, memory_valid: Tensor
                ) -> Tensor:
        """``ids [B, L]`` (starting with BOS) -> logits ``[B, L, V]`` (position i predicts
        token i+1; the system token's own output is dropped)."""
        h = torch.cat([self.system_emb(system)[:, None], self.tok_emb(ids)], dim=1)
        h = self.drop(h + self.pos_emb[None, : h.shape[1]])
        for block in self.blocks:
            h = block(h, causal=True, memory=memory, memory_valid=memory_valid)
        h = self.ln_f(h[:, 1:])
        return F.linear(h, self.tok_emb.weight)  # tied LM head


# ---------------------------------------------------------------------------------- the model


class SleepLM(nn.Module):
    """Signal encoder + text encoder (contrastive) + caption decoder + reconstruction head."""

    def __init__(self, cfg: SleepLMConfig):
        super().__init__()
        self.cfg = cfg
        d, E = cfg.d_model, cfg.embed_dim
        self.signal = SignalEncoder(cfg)
        self.context = ContextEncoder(cfg) if cfg.context_epochs > 0 else None
        self.signal_proj = nn.Linear(d, E, bias=False)
        self.text = TextEncoder(cfg)
        self.text_proj = nn.Linear(d, E, bias=False)
        self.decoder = CaptionDecoder(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.loss_fn = SleepLMLoss(cfg.contrastive_weight, cfg.caption_weight,
                                   cfg.reconstruction_weight, pad_id=cfg.pad_id)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    # -- inputs -------------------------------------------------------------------------------

    def _inputs(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Check shapes; broadcast ``mask`` to ``x``'s leading dims: ``[B, C]`` or
        ``[B, K, C]``."""
        cfg = self.cfg
        lead = 2 if cfg.context_epochs > 0 else 1
        want = ((2 * cfg.context_epochs + 1,) if lead == 2 else ()) + (cfg.n_channels,
                                                                       cfg.samples_per_epoch)
        if x.dim() != lead + 2 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must be [B, {', '.join(map(str, want))}], got {tuple(x.shape)}")
        x = x.to(self.logit_scale.device)
        if mask is None:
            mask = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
        mask = torch.as_tensor(mask, device=x.device).bool()
        if lead == 2 and mask.dim() == 2 and mask.shape[0] == x.shape[0]:
            mask = mask[:, None]  # one mask for all neighbours
        return x, mask.expand(x.shape[:-1])

    def _random_patch_mask(self, mask: Tensor) -> Tensor:
        """``[B, C, P]``: True where a present, non-POSITION patch is masked for
        reconstruction."""
        B, C = mask.shape
        eligible = mask[:, :, None].expand(B, C, self.cfg.n_patches).clone()
        if self.signal.pos_channel >= 0:
            eligible[:, self.signal.pos_channel] = False
        rnd = torch.rand(eligible.shape, device=mask.device)
        return eligible & (rnd < self.cfg.recon_mask_ratio)

    def _encode(self, x: Tensor, mask: Tensor | None, mask_patches: bool):
        x, mask = self._inputs(x, mask)
        B = x.shape[0]
        xf, mf = x.reshape(-1, *x.shape[-2:]), mask.reshape(-1, mask.shape[-1])
        patch_mask = self._random_patch_mask(mf) if mask_patches else None
        pooled, tokens, valid, recon = self.signal(xf, mf, patch_mask)
        if self.context is not None:
            K = x.shape[1]
            pooled = self.context(pooled.view(B, K, -1), mf.view(B, K, -1).any(-1))
            tokens, valid = tokens.view(B, K, *tokens.shape[1:]), valid.view(B, K, -1)
            tokens, valid = tokens[:, K // 2], valid[:, K // 2]
        emb = F.normalize(self.signal_proj(pooled), dim=-1)
        target = self.signal.patches(torch.nan_to_num(xf.float()))
        return emb, tokens, valid, recon, target, patch_mask

    # -- public API ---------------------------------------------------------------------------

    def encode_signal(self, x: Tensor, mask: Tensor | None = None
                      ) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, C, T]`` (or ``[B, 2k+1, C, T]`` with context), ``mask [B, C]`` (or
        ``[B, 2k+1, C]``; None = all present) -> ``(embedding [B, E] unit-norm,
        tokens [B, N, d], token_mask [B, N])`` (tokens of the centre epoch)."""
        emb, tokens, valid, *_ = self._encode(x, mask, mask_patches=False)
        return emb, tokens, valid

    def encode_text(self, ids: Tensor) -> Tensor:
        """``ids [B, L]`` (pad = ``pad_id``) -> unit-norm ``[B, E]``."""
        ids, _, _ = self.prepare_text(ids)
        return F.normalize(self.text_proj(self.text(ids)), dim=-1)

    def prepare_text(self, text_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalise captions to ``(tokens, decoder_input, targets)``, all ``[B, L']``:
        ``tokens`` = caption + EOS (no BOS), ``decoder_input`` = BOS + caption, ``targets`` =
        caption + EOS; padded with ``pad_id``; at most ``max_text_len`` long."""
        cfg = self.cfg
        rows = []
        for row in text_ids.tolist():
            row = [t for t in row if t != cfg.pad_id]
            if row and row[0] == cfg.bos_id:
                row = row[1:]
            if not row or row[-1] != cfg.eos_id:
                row = row + [cfg.eos_id]
            rows.append(row[: cfg.max_text_len])
        L = max(len(r) for r in rows)
        tokens = torch.full((len(rows), L), cfg.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        tokens = tokens.to(text_ids.device)
        bos = torch.full_like(tokens[:, :1], cfg.bos_id)
        dec_in = torch.cat([bos, tokens[:, :-1]], dim=1)
        dec_in = dec_in.masked_fill(torch.cat([bos != bos, tokens[:, :-1] == cfg.pad_id], 1),
                                    cfg.pad_id)
        return tokens, dec_in, tokens

    def _system(self, system, B: int, device) -> Tensor:
        if isinstance(system, (int, str)):
            system = [system_index(system)] * B
        elif isinstance(system, (list, tuple)):
            system = [system_index(s) for s in system]
        return torch.as_tensor(system, dtype=torch.long, device=device).reshape(B)

    @property
    def logit_scale_value(self) -> Tensor:
        return self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def forward(self, x: Tensor, mask: Tensor | None, text_ids: Tensor, system,
                mask_patches: bool | None = None, contrastive_ids: Tensor | None = None,
                contrastive_keys: Tensor | None = None, negative_ids: Tensor | None = None,
                negative_keys: Tensor | None = None, clause_keyset: Tensor | None = None
                ) -> dict[str, Tensor]:
        """Training step losses. ``system``: ``[B]`` indices, one int/name, or a list.
        ``text_ids`` are the caption decoder's targets; ``contrastive_ids`` (default: the
        same) the texts paired with the signals in the contrastive loss: ``[B, L]``, or
        ``[B, S, L]`` for ``S`` captions per signal (the mean of the ``S`` CLIP losses, or
        their weighted mean with ``loss_fn.text_weights``); ``contrastive_keys`` (``[B]`` or
        ``[B, S]`` integers, optional) mark equal texts, which are then positives of each
        other (:class:`sleeplm.model.losses.ClipLoss`). ``negative_ids`` ``[M, L]`` with
        ``negative_keys`` ``[M]``: extra texts (e.g. a :class:`sleeplm.corpus.shards.ClauseBank`
        draw) scored against every signal as negatives of the last contrastive text;
        ``clause_keyset`` ``[B, K]``: the keys of every text true of each signal, for that
        last text (:meth:`sleeplm.model.losses.ClipLoss.forward`).
        Patches are masked for reconstruction when ``mask_patches`` (default: in training
        mode with a positive reconstruction weight). Returns ``loss``, ``contrastive``,
        ``caption``, ``reconstruction``, ``logit_scale``."""
        cfg = self.cfg
        if mask_patches is None:
            mask_patches = self.training and cfg.reconstruction_weight > 0
        emb, tokens, valid, recon, target, patch_mask = self._encode(x, mask, mask_patches)
        B = emb.shape[0]
        text_ids = text_ids.to(emb.device)
        tokens_txt, dec_in, targets = self.prepare_text(text_ids)
        kw = {}
        if cfg.contrastive_weight > 0:
            if contrastive_ids is None:
                text_emb = self.encode_text(tokens_txt)
            elif contrastive_ids.dim() == 3:  # [B, S, L] -> [S, B, E]
                text_emb = torch.stack([self.encode_text(contrastive_ids[:, j].to(emb.device))
                                        for j in range(contrastive_ids.shape[1])])
            else:
                text_emb = self.encode_text(contrastive_ids.to(emb.device))
            kw.update(image_features=emb, text_features=text_emb,
                      logit_scale=self.logit_scale_value,
                      text_keys=None if contrastive_keys is None else contrastive_keys.to(
                          emb.device))
            if clause_keyset is not None:
                kw.update(keysets=clause_keyset.to(emb.device))
            if negative_ids is not None and negative_ids.shape[0]:
                kw.update(extra_text_features=self.encode_text(negative_ids.to(emb.device)),
                          extra_keys=negative_keys)
        if cfg.caption_weight > 0:
            logits = self.decoder(dec_in, self._system(system, B, emb.device), tokens, valid)
            kw.update(logits=logits, targets=targets)
        if cfg.reconstruction_weight > 0:
            pm = patch_mask if patch_mask is not None else torch.zeros(
                recon.shape[:-1], dtype=torch.bool, device=recon.device)
            kw.update(recon_pred=recon, recon_target=target, recon_mask=pm)
        if not kw:  # every weight is 0
            kw = dict(image_features=emb)
        out = self.loss_fn(**kw)
        out["logit_scale"] = self.logit_scale_value.detach()
        return out

    @torch.no_grad()
    def generate(self, x: Tensor, mask: Tensor | None = None, system=4, max_len: int = 64,
                 bos_id: int | None = None, eos_id: int | None = None) -> Tensor:
        """Greedy captions ``[B, <= max_len]`` without BOS; a row ends at its EOS (kept) and
        is padded with ``pad_id`` after it. No kv cache: every step re-runs the decoder."""
        _, tokens, valid = self.encode_signal(x, mask)
        return self.generate_from_tokens(tokens, valid, system, max_len, bos_id, eos_id)

    @torch.no_grad()
    def generate_from_tokens(self, tokens: Tensor, valid: Tensor, system=4, max_len: int = 64,
                             bos_id: int | None = None, eos_id: int | None = None) -> Tensor:
        """:meth:`generate` from signal tokens ``[B, N, d]`` and their mask ``[B, N]``
        (``encode_signal``), so a caller that also scores clauses encodes once."""
        cfg = self.cfg
        bos_id = cfg.bos_id if bos_id is None else bos_id
        eos_id = cfg.eos_id if eos_id is None else eos_id
        max_len = min(max_len, cfg.max_text_len)
        B, dev = tokens.shape[0], tokens.device
        sys_idx = self._system(system, B, dev)
        ids = torch.full((B, 1), bos_id, dtype=torch.long, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        for _ in range(max_len):
            logits = self.decoder(ids, sys_idx, tokens, valid)[:, -1]
            logits[:, [bos_id, cfg.pad_id]] = float("-inf")  # never emit BOS or padding
            nxt = logits.argmax(-1)
            nxt = nxt.masked_fill(done, cfg.pad_id)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done = done | (nxt == eos_id)
            if bool(done.all()):
                break
        return ids[:, 1:]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (unique) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ------------------------------------------------------------------------------ save and load

CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME = "config.json", "model.safetensors", "tokenizer.json"
#: The checkpoint shipped in the repository (trained on SIMULATED nights; see its MODEL_CARD.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "sleeplm-default"


def default_checkpoint() -> Path:
    """The checkpoint the tools use: ``$SLEEPLM_MODEL`` when set (e.g. your own checkpoint
    trained on real PSG), else the shipped :data:`DEFAULT_CHECKPOINT`.

    Raises
    ------
    FileNotFoundError
        When the folder lacks ``config.json``, ``model.safetensors`` or ``tokenizer.json``.
    """
    env = os.environ.get("SLEEPLM_MODEL", "").strip()
    path = Path(env).expanduser() if env else DEFAULT_CHECKPOINT
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME) if not (path / n).is_file()]
    if missing:
        where = "$SLEEPLM_MODEL" if env else "the shipped default checkpoint"
        raise FileNotFoundError(
            f"{where} at {path} lacks {', '.join(missing)}: point SLEEPLM_MODEL at a folder "
            "written by training (config.json, model.safetensors, tokenizer.json)")
    return path


def save_model(model: SleepLM, folder: str | Path, tokenizer_path: str | Path | None = None
               ) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (and a copy of the tokenizer file as
    ``tokenizer.json``) into ``folder``. The LM head is tied by construction (``F.linear`` on
    the decoder embedding), so the state dict has no shared tensors."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(model.cfg.to_json())
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "model": "sleeplm"})
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, folder / TOKENIZER_NAME)
    return folder


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> SleepLM:
    """Inverse of :func:`save_model` (strict); the model is returned in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a SleepLM checkpoint: {name} is missing "
                                    "(a checkpoint folder holds config.json and "
                                    "model.safetensors, as written by save_model)")
    cfg = SleepLMConfig.from_json((folder / CONFIG_NAME).read_text())
    model = SleepLM(cfg)
    model.load_state_dict(load_file(str(folder / WEIGHTS_NAME), device=str(device)), strict=True)
    return model.to(device).eval()
