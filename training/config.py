"""Training configuration: :class:`TrainConfig`, loaded from JSON with ``--set`` overrides.

``TrainConfig.load("training/configs/tiny.json", ["batch_size=4", "model.d_model=64"])``
reads the JSON file (keys starting with ``_`` such as ``_comment`` are ignored), applies each
``key=value`` override (the value is parsed as JSON when it can be, else kept as a string;
``model.<field>`` sets a :class:`sleeplm.model.network.SleepLMConfig` field) and validates the lot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sleeplm.captions.caption import SYSTEMS
from sleeplm.model.network import SleepLMConfig

__all__ = ["TrainConfig", "parse_override", "apply_overrides"]

#: SleepLMConfig fields that training sets itself (from the corpus and the tokenizer).
_DERIVED = {"sfreq", "epoch_sec", "vocab_size", "pad_id", "bos_id", "eos_id", "max_text_len",
            "context_epochs"}


class TrainConfig(BaseModel):
    """Everything one training run needs (saved as ``train_config.json`` next to the model)."""

    model_config = ConfigDict(extra="forbid")

    # io
    corpus_dir: str
    out_dir: str
    # model: overrides merged into SleepLMConfig (sfreq/epoch_sec come from the corpus,
    # vocab/pad/bos/eos from the tokenizer, max_text_len/context_epochs from below;
    # channels default to the corpus channels)
    model: dict[str, Any] = Field(default_factory=dict)
    vocab_size: int = Field(default=4000, gt=16)  # tokenizer target vocabulary
    tokenizer_min_frequency: int = Field(default=2, ge=1)
    max_text_len: int = Field(default=96, ge=2)
    context_epochs: int = Field(default=0, ge=0)
    systems: tuple[str, ...] = SYSTEMS
    # texts paired with the signal in the contrastive loss: the epoch's caption of this system,
    # or of each of these systems (mean of their CLIP losses); the decoder still learns every
    # system's captions; None = the drawn caption itself
    contrastive_system: str | tuple[str, ...] | None = ("holistic", "brain")
    # one more contrastive text: a single clause stating one of these caption fact keys
    # (e.g. "respiratory_events"), equal texts being positives of each other; None = off
    contrastive_clauses: tuple[str, ...] | None = None
    # weights of the contrastive texts (contrastive_system's, then the clause); None = mean
    contrastive_weights: tuple[float, ...] | None = None
    # extra passes over epochs whose captions state an event (train split only)
    event_repeat: int = Field(default=0, ge=0)
    # distinct finding clauses of the train split drawn per step as extra negatives of the
    # clause pair (sleeplm.corpus.shards.ClauseBank); 0 = off
    clause_negatives: int = Field(default=0, ge=0)
    # probability of showing a train sample with only one modality subset of its channels
    # (sleeplm.corpus.robustness.MODALITY_SUBSETS), its texts cut to what those support
    modality_dropout: float = Field(default=0.0, ge=0, le=1)
    # real-recording artefacts on the EEG/EOG rows (sleeplm.corpus.robustness.augment_epoch):
    # a multiplier of their probabilities; 0 = off
    augment: float = Field(default=0.0, ge=0)
    # fine-tune: start from this model folder's weights and tokenizer (same architecture)
    init_from: str | None = None
    shuffle_buffer: int = Field(default=1000, ge=0)
    # optimisation
    batch_size: int = Field(default=32, ge=1)  # per process, per micro-step
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=5e-4, gt=0)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)  # cosine floor, fraction of lr
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, gt=0, lt=1)
    beta2: float = Field(default=0.98, gt=0, lt=1)
    eps: float = Field(default=1e-6, gt=0)
    grad_clip: float = Field(default=1.0, ge=0)  # 0 = off
    warmup_steps: int = Field(default=100, ge=0)
    max_steps: int | None = Field(default=None, ge=1)  # None: epochs x steps/epoch estimate
    epochs: int = Field(default=1, ge=1)
    stop_at_step: int | None = Field(default=None, ge=1)  # halt early (schedule unchanged)
    gather_with_grad: bool = True
    local_loss: bool = True
    # runtime
    seed: int = 0
    num_workers: int = Field(default=0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, ge=1)  # torch.set_num_threads per process
    log_every: int = Field(default=10, ge=1)
    eval_every: int = Field(default=0, ge=0)  # 0 = no validation loss
    eval_batches: int = Field(default=20, ge=1)
    checkpoint_every: int = Field(default=0, ge=0)  # 0 = only at the end / stop
    progress: bool = True

    @field_validator("systems")
    @classmethod
    def _systems(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in v if s not in SYSTEMS]
        if bad or not v:
            raise ValueError(f"systems must be a non-empty subset of {SYSTEMS}, got {v}")
        return v

    @field_validator("contrastive_system")
    @classmethod
    def _contrastive_system(cls, v: str | tuple[str, ...] | None
                            ) -> str | tuple[str, ...] | None:
        items = (v,) if isinstance(v, str) else (v or ())
        if (v is not None and not items) or any(c not in SYSTEMS for c in items):
            raise ValueError(f"contrastive_system must be one or more of {SYSTEMS} or null, "
                             f"got {v!r}")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: dict[str, Any]) -> dict[str, Any]:
        fields = set(SleepLMConfig.model_fields)
        unknown = sorted(set(v) - fields)
        if unknown:
            raise ValueError(f"unknown model fields {unknown}; SleepLMConfig has {sorted(fields)}")
        derived = sorted(set(v) & _DERIVED)
        if derived:
            raise ValueError(f"model fields {derived} are set by training (corpus, tokenizer, "
                             "max_text_len, context_epochs); set those instead")
        return v

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.contrastive_weights is not None:
            n = (0 if self.contrastive_system is None else 1 if isinstance(
                self.contrastive_system, str) else len(self.contrastive_system))
            n += 1 if self.contrastive_clauses else 0
            if len(self.contrastive_weights) != n or n < 2 or \
                    any(w < 0 for w in self.contrastive_weights) or \
                    sum(self.contrastive_weights) <= 0:
                raise ValueError(f"contrastive_weights needs one weight >= 0 per contrastive "
                                 f"text ({n}: contrastive_system, then the clause), with a "
                                 f"positive sum; got {self.contrastive_weights}")
        if self.stop_at_step is not None and self.max_steps is not None \
                and self.stop_at_step > self.max_steps:
            raise ValueError("stop_at_step must be <= max_steps")
        # fail early on an impossible model (channels/sfreq are checked once the corpus is read)
        probe = {k: v for k, v in self.model.items()}
        SleepLMConfig(**{**probe, "max_text_len": self.max_text_len,
                         "context_epochs": self.context_epochs})
        return self

    # ------------------------------------------------------------------ io
    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
             **kwargs: Any) -> "TrainConfig":
        """JSON file (optional) -> ``kwargs`` -> ``key=value`` overrides -> validated config."""
        data: dict[str, Any] = {}
        if path is not None:
            data = json.loads(Path(path).read_text())
            if not isinstance(data, dict):
                raise ValueError(f"{path}: a training config must be a JSON object")
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        data.update(kwargs)
        return cls.model_validate(apply_overrides(data, overrides))

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> ``(["a", "b"], 3)``; the value is JSON if it parses, else a string."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ValueError(f"override {item!r} has an empty key")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with every ``key=value`` (dotted keys into nested dicts) applied."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        parts, value = parse_override(item)
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ValueError(f"override {item!r}: {p!r} is not an object")
            node = nxt
        node[parts[-1]] = value
    return out
