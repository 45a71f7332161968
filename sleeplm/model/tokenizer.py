"""Caption tokenizer: a byte-level BPE trained offline on the corpus captions.

:func:`train_tokenizer` trains a :mod:`tokenizers` byte-level BPE (ByteLevel pre-tokenizer and
decoder, no prefix space, so ``decode(encode(text)) == text`` for any text) from an iterable of
caption texts (:func:`sleeplm.corpus.shards.corpus_texts` yields those of one corpus split: train
the tokenizer on ``"train"`` only, so nothing of validation/test leaks into the vocabulary).

Special tokens have fixed ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, then one per
system of :data:`sleeplm.captions.caption.SYSTEMS` (``<brain>`` 4 ... ``<holistic>`` 8).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import torch

from sleeplm.captions.caption import SYSTEMS

__all__ = ["CaptionTokenizer", "train_tokenizer", "SPECIAL_TOKENS"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
#: Special tokens in id order: pad=0, bos=1, eos=2, unk=3, then one per system.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK) + tuple(f"<{s}>" for s in SYSTEMS)


class CaptionTokenizer:
    """Encode captions to fixed-length id sequences (``BOS tokens EOS pad...``) and back.

    Wraps a :class:`tokenizers.Tokenizer`; picklable (DataLoader workers).
    """

    def __init__(self, tokenizer) -> None:  # tokenizers.Tokenizer
        self._tok = tokenizer
        ids = {}
        for name in SPECIAL_TOKENS:
            i = tokenizer.token_to_id(name)
            if i is None:
                raise ValueError(f"tokenizer lacks the special token {name!r}")
            ids[name] = int(i)
        self._special = ids
        self._special_ids = frozenset(ids.values())

    # ------------------------------------------------------------------ properties
    @property
    def pad_id(self) -> int:
        return self._special[PAD]

    @property
    def bos_id(self) -> int:
        return self._special[BOS]

    @property
    def eos_id(self) -> int:
        return self._special[EOS]

    @property
    def unk_id(self) -> int:
        return self._special[UNK]

    @property
    def vocab_size(self) -> int:
        """Number of ids (special tokens included); an embedding needs this many rows."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def backend(self):
        """The underlying :class:`tokenizers.Tokenizer`."""
        return self._tok

    def system_id(self, name: str) -> int:
        """Id of the system token ``<name>`` (``name`` one of SYSTEMS)."""
        try:
            return self._special[f"<{name}>"]
        except KeyError:
            raise ValueError(f"unknown system {name!r}; expected one of {SYSTEMS}") from None

    def __len__(self) -> int:
        return self.vocab_size

    # ------------------------------------------------------------------ encode / decode
    def _wrap(self, ids: Sequence[int], max_len: int | None) -> list[int]:
        out = [self.bos_id, *ids, self.eos_id]
        if max_len is not None:
            if max_len < 2:
                raise ValueError("max_len must be at least 2 (BOS and EOS)")
            if len(out) > max_len:
                out = out[: max_len - 1] + [self.eos_id]
        return out

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """``[BOS, tokens..., EOS]``; longer than ``max_len``: truncated, EOS kept last."""
        return self._wrap(self._tok.encode(text, add_special_tokens=False).ids, max_len)

    def encode_batch(self, texts: Sequence[str], max_len: int) -> torch.Tensor:
        """LongTensor ``[B, max_len]``: :meth:`encode` of each text, right-padded with pad_id."""
        out = torch.full((len(texts), max_len), self.pad_id, dtype=torch.long)
        if not texts:
            return out
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        for row, enc in enumerate(encs):
            ids = self._wrap(enc.ids, max_len)
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of ``ids``: stops at the first EOS, skips special tokens (BOS, pad, systems)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        keep = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in self._special_ids:
                keep.append(i)
        return self._tok.decode(keep, skip_special_tokens=True)

    def decode_batch(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(row) for row in ids]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as a :mod:`tokenizers` JSON file."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CaptionTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def to_str(self) -> str:
        """The tokenizer JSON as a string (e.g. to store inside a checkpoint)."""
        return self._tok.to_str()

    @classmethod
    def from_str(cls, text: str) -> "CaptionTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    def __getstate__(self) -> dict:
        return {"json": self._tok.to_str()}

    def __setstate__(self, state: dict) -> None:
        from tokenizers import Tokenizer

        self.__init__(Tokenizer.from_str(state["json"]))

    def __repr__(self) -> str:
        return f"CaptionTokenizer(vocab_size={self.vocab_size})"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4000,
                    min_frequency: int = 2) -> CaptionTokenizer:
    """Train a byte-level BPE on ``texts`` (offline; deterministic for the same texts).

    The vocabulary holds the special tokens (fixed ids, see the module docstring), the 256
    byte symbols (so any text encodes without ``<unk>``) and merges up to ``vocab_size``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size), min_frequency=int(min_frequency),
        special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # the trainer counts words; merges are chosen by count, ties broken deterministically
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    return CaptionTokenizer(tok)
