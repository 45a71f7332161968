"""Loading the pre-training corpus (:mod:`sleeplm.corpus.build`) for training and evaluation.

* :class:`EpochShardDataset` streams epoch samples of one split from ``epochs/{split}-*.tar``:
  shards are split across DataLoader workers and distributed ranks (each sample once per
  training epoch), shard order and a shuffle buffer are seeded by ``seed``/``epoch``, channels
  are re-ordered by name, and one caption per sample is drawn (seeded) from the systems that
  caption that epoch. With ``context_epochs=k`` it yields windows of ``2k+1`` neighbouring
  epochs of the same night.
* :func:`collate` stacks a list of samples into a batch.
* :func:`night_samples` iterates the night-level samples (``nights/{split}-*.tar``).
* :func:`load_split_epochs` reads a whole split into numpy arrays (evaluation).
* :func:`corpus_texts` yields every caption text of a split (the tokenizer is trained on them).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset

from sleeplm._logging import logger
from sleeplm.captions.caption import SYSTEMS
from sleeplm.captions.modalities import withdraw_absent
from sleeplm.corpus.build import read_shard
from sleeplm.corpus.robustness import augment_epoch, choose_subset, drop_modalities

__all__ = ["EpochShardDataset", "collate", "night_samples", "load_split_epochs", "list_shards",
           "iter_shard_json", "corpus_channels", "stage_id", "STAGE_IDS", "EVENT_FACTS",
           "has_event", "fact_key", "ClauseBank", "corpus_texts"]

#: Integer stage labels; anything else (UNS, "?", movement) is -1.
STAGE_IDS: dict[str, int] = {"W": 0, "N1": 1, "N2": 2, "N3": 3, "N4": 3, "R": 4}


def stage_id(stage: str) -> int:
    """W=0, N1=1, N2=2, N3 (and R&K N4)=3, R=4, anything else -1."""
    return STAGE_IDS.get(str(stage), -1)


# ---------------------------------------------------------------------------------- corpus io
def list_shards(corpus_dir: str | os.PathLike, split: str, kind: str = "epochs") -> list[Path]:
    """Sorted ``{corpus_dir}/{kind}/{split}-*.tar``."""
    return sorted((Path(corpus_dir) / kind).glob(f"{split}-*.tar"))


def iter_shard_json(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """``(key, json)`` of every sample of a shard, without reading the signals."""
    with tarfile.open(path) as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".json"):
                key = m.name.split(".", 1)[0]
                yield key, json.loads(tar.extractfile(m).read())


def _corpus_config(corpus_dir: str | os.PathLike) -> dict:
    path = Path(corpus_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{corpus_dir} is not a corpus folder (no config.json); build "
                                "one with sleeplm.corpus.build.build_corpus")
    return json.loads(path.read_text())


def corpus_channels(corpus_dir: str | os.PathLike) -> tuple[str, ...]:
    """Channel order of the corpus tensors (``config.json``'s model input)."""
    return tuple(_corpus_config(corpus_dir)["model_input"]["channels"])


def _channel_index(corpus: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"channels must be unique; got {list(wanted)}")
    pos = {c: i for i, c in enumerate(corpus)}
    return np.array([pos.get(c, -1) for c in wanted], dtype=np.int64)


def _remap(x: np.ndarray, mask: Sequence[bool], index: np.ndarray,
           dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Corpus ``[C0, T]`` and mask ``[C0]`` -> requested ``[C, T]``, mask ``[C]``."""
    present = index >= 0
    out = np.zeros((len(index), x.shape[-1]), dtype=dtype)
    out[present] = x[index[present]]
    m = np.zeros(len(index), dtype=bool)
    m[present] = np.asarray(mask, dtype=bool)[index[present]]
    return out, m


# ---------------------------------------------------------------------------------- helpers
def _dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of torch.distributed, ``(0, 1)`` when not initialised."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return 0, 1


def _worker_info() -> tuple[int, int]:
    """``(worker id, number of workers)`` of the current DataLoader worker; ``(0, 1)`` outside."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return 0, 1
    return int(info.id), int(info.num_workers)


def _key_seed(*parts: Any) -> int:
    return zlib.crc32(":".join(str(p) for p in parts).encode())


def _partition(units: Sequence[int], part: int, parts: int,
               read: Any) -> Iterator[Any]:
    """Items of ``read(unit)`` for one of ``parts`` partitions.

    With at least as many units (shards) as partitions, partition ``p`` reads units
    ``p, p+parts, ...``; with fewer, every partition reads every unit and keeps every
    ``parts``-th item (no partition is left empty; each item still goes to exactly one).
    """
    if parts <= 1:
        for u in units:
            yield from read(u)
    elif len(units) >= parts:
        for u in units[part::parts]:
            yield from read(u)
    else:
        j = 0
        for u in units:
            for item in read(u):
                if j % parts == part:
                    yield item
                j += 1


def _read_end(path: str | os.PathLike, n: int, *, last: bool) -> list[dict]:
    """The first (``last=False``) or last ``n`` samples of a shard, as :func:`read_shard` gives
    them; only their members are decompressed/parsed (the tar headers are scanned)."""
    if n <= 0:
        return []
    if not last:
        out = []
        for sample in read_shard(path):
            out.append(sample)
            if len(out) >= n:
                break
        return out
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        keys: list[str] = []
        for m in members:
            key = m.name.split(".", 1)[0]
            if not keys or keys[-1] != key:
                keys.append(key)
        wanted = set(keys[-n:])
        samples: dict[str, dict] = {}
        for m in members:
            key, ext = m.name.split(".", 1)
            if key not in wanted:
                continue
            cur = samples.setdefault(key, {"key": key, "json": None, "x": None})
            data = tar.extractfile(m).read()
            if ext == "json":
                cur["json"] = json.loads(data)
            elif ext == "x.npy":
                cur["x"] = np.load(io.BytesIO(data), allow_pickle=False)
        return [samples[k] for k in keys[-n:]]


class _Night:
    """The epochs of one night (in shard order), stacked for windowing."""

    __slots__ = ("samples", "x", "masks", "pos")

    def __init__(self, samples: list[dict]) -> None:
        self.x = np.stack([s["x"] for s in samples])
        self.samples = [{"key": s["key"], "json": s["json"]} for s in samples]  # x only once
        self.masks = np.array([s["json"]["mask"] for s in samples], dtype=bool)
        self.pos = {int(s["json"]["epoch"]): i for i, s in enumerate(samples)}


# ---------------------------------------------------------------------------------- dataset
class EpochShardDataset(IterableDataset):
    """Epoch samples of one corpus split, streamed from its WebDataset-style tar shards.

    Parameters
    ----------
    corpus_dir : path-like
        Corpus folder written by :func:`sleeplm.corpus.build.build_corpus`.
    split : str
        "train", "validation" or "test".
    channels : sequence of str, optional
        Channel order of ``x``, by name (default: the corpus order). A channel the corpus lacks
        is a zero row with mask False.
    tokenizer : CaptionTokenizer, optional
        When given, samples carry ``text_ids`` (LongTensor ``[max_text_len]``, padded).
    max_text_len : int
        Length of ``text_ids``.
    systems : sequence of str
        Systems whose captions may be drawn (a subset of SYSTEMS).
    shuffle_buffer : int
        Size of the sample shuffle buffer. ``0`` (or 1) turns shuffling off entirely: shards
        are read in sorted order and samples in shard order (evaluation).
    seed, epoch : int
        Seed the shard order, the shuffle buffer and the caption draws. Call
        :meth:`set_epoch` every training epoch (as with ``DistributedSampler``).
    context_epochs : int
        ``k > 0``: ``x`` is ``[2k+1, C, T]`` (the epoch in the middle, its neighbours of the
        same night around it; missing neighbours at the night's edges are zeros) and ``mask``
        is ``[2k+1, C]`` (False for every channel of a missing neighbour).
    rank, world_size : int, optional
        Override the torch.distributed rank / world size (default: read when iterating).

    Each sample is a dict: ``x`` float32 ``[C, T]``, ``mask`` bool ``[C]``, ``system`` (index
    into SYSTEMS of the drawn caption; -1 when the epoch has no caption of ``systems``),
    ``text`` ("" then), ``text_ids`` (with a tokenizer), ``stage`` (str), ``stage_id`` (W=0,
    N1=1, N2=2, N3=3, R=4, else -1), ``key``, ``night``, ``epoch`` (index in the night),
    ``facts`` (JSON string of the drawn caption's facts). With ``contrastive_system`` (e.g.
    ``"holistic"``) a sample also carries ``contrastive_text`` (the epoch's caption of that
    system, drawn seeded; the drawn ``text`` when the epoch has none) and, with a tokenizer,
    ``contrastive_ids`` ``[max_text_len]``: the text paired with the signal in the contrastive
    loss, while ``text``/``text_ids`` stay the caption decoder's target. With a sequence of
    systems (e.g. ``("holistic", "brain")``) they are a list of texts and ``[S, max_text_len]``.
    With ``contrastive_clauses`` (fact keys such as ``"respiratory_events"``) one more text is
    paired: a single *clause* of the epoch's captions ("an obstructive apnea scored", "no
    arousal", "2 spindles"; the corpus stores each caption's clauses), drawn seeded, uniformly
    over the fact keys the epoch's clauses state, then over the clauses stating that key.
    Every contrastive text also gets an integer key (``contrastive_keys``, :func:`fact_key`
    of the facts it states): samples whose texts state the same facts, in whatever phrasing
    ("no respiratory events" / "no apnea or hypopnea scored"), are positives of each other.
    For the clause pair a sample also carries ``clause_keyset`` (``[CLAUSE_KEYSET]``, -1
    padded): the keys of **every** finding clause true of the epoch, so that another sample's
    "no respiratory events" is a positive, not a negative, of an epoch whose drawn clause was
    "no arousal" but that had no respiratory event either.
    ``event_repeat = r`` yields every epoch whose captions state an event (a respiratory
    event, a desaturation, an arousal, a limb movement) ``1 + r`` times per pass, each copy
    with its own caption draws: rare findings get more of the gradient.
    ``modality_dropout = p`` shows a sample, with probability p, with only one of
    :data:`sleeplm.corpus.robustness.MODALITY_SUBSETS` of its channels (EEG only, EOG only, HR
    only, ...: mask False and zeros for the rest) and cuts every text paired with it (caption,
    contrastive texts, clause) to what the kept channels can support; such a sample carries
    ``modalities`` (the subset's name; "" otherwise). ``augment = s`` applies
    :func:`sleeplm.corpus.robustness.augment_epoch` (real-recording artefacts of the EEG/EOG rows)
    with its probabilities times ``s``. Both are seeded per sample and off by default (turn them
    on for the train split only).

    Partitioning: shard files are dealt to ``world_size * num_workers`` partitions
    (rank-major), after a shuffle of the shard order by ``(seed, epoch)`` common to all of
    them; with fewer shards than partitions every partition reads all shards and keeps every
    n-th sample. Partitions may get unequal numbers of samples (whole shards). With context,
    a partition yields the windows centred on the samples of its shards and reads the k
    neighbours across shard boundaries from the tail/head of the adjacent shards.
    """

    def __init__(self, corpus_dir: str | os.PathLike, split: str, *,
                 channels: Sequence[str] | None = None, tokenizer: Any = None,
                 max_text_len: int = 96, systems: Sequence[str] = SYSTEMS,
                 shuffle_buffer: int = 1000, seed: int = 0, epoch: int = 0,
                 context_epochs: int = 0, rank: int | None = None,
                 world_size: int | None = None,
                 contrastive_system: str | Sequence[str] | None = None,
                 contrastive_clauses: Sequence[str] | None = None,
                 event_repeat: int = 0, modality_dropout: float = 0.0,
                 augment: float = 0.0) -> None:
        super().__init__()
        self.corpus_dir = Path(corpus_dir)
        self.split = split
        cfg = _corpus_config(self.corpus_dir)
        mi = cfg["model_input"]
        self.corpus_channels: tuple[str, ...] = tuple(mi["channels"])
        self.channels: tuple[str, ...] = tuple(channels) if channels is not None \
            else self.corpus_channels
        self._index = _channel_index(self.corpus_channels, self.channels)
        missing = [c for c, i in zip(self.channels, self._index) if i < 0]
        if missing:
            logger.info("shards: channels %s are not in the corpus: zeros, mask False", missing)
        self.samples_per_epoch = int(round(float(mi["sfreq"]) * float(mi["epoch_sec"])))
        bad = [s for s in systems if s not in SYSTEMS]
        if bad:
            raise ValueError(f"unknown systems {bad}; expected a subset of {SYSTEMS}")
        self.systems = tuple(systems)
        several = contrastive_system is not None and not isinstance(contrastive_system, str)
        wanted = tuple(contrastive_system) if several else (
            () if contrastive_system is None else (contrastive_system,))
        if any(c not in SYSTEMS for c in wanted) or (several and not wanted):
            raise ValueError(f"unknown contrastive_system {contrastive_system!r}; expected one "
                             f"or more of {SYSTEMS}")
        self.contrastive_system = contrastive_system
        self._contrastive = wanted
        self.contrastive_clauses = tuple(contrastive_clauses or ())
        self._several = several or bool(self.contrastive_clauses)
        if event_repeat < 0:
            raise ValueError("event_repeat must be >= 0")
        self.event_repeat = int(event_repeat)
        if not 0 <= modality_dropout <= 1:
            raise ValueError(f"modality_dropout must be in [0, 1], got {modality_dropout}")
        if augment < 0:
            raise ValueError(f"augment must be >= 0, got {augment}")
        self.modality_dropout = float(modality_dropout)
        self.augment = float(augment)
        self.sfreq = float(mi["sfreq"])
        self.tokenizer = tokenizer
        if tokenizer is not None and max_text_len < 2:
            raise ValueError("max_text_len must be at least 2")
        self.max_text_len = int(max_text_len)
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.epoch = int(epoch)
        if context_epochs < 0:
            raise ValueError("context_epochs must be >= 0")
        self.context_epochs = int(context_epochs)
        self.shards: list[Path] = list_shards(self.corpus_dir, split, "epochs")
        if not self.shards:
            logger.warning("shards: no %s shards in %s", split, self.corpus_dir / "epochs")
        self._rank = rank
        self._world_size = world_size
        # captured now (main process) in case workers are spawned without the process group
        self._dist_at_init = _dist_info()

    # ------------------------------------------------------------------ public helpers
    def set_epoch(self, epoch: int) -> None:
        """Training epoch: reseeds the shard order, the shuffle buffer and caption draws."""
        self.epoch = int(epoch)

    @property
    def shuffle(self) -> bool:
        return self.shuffle_buffer > 1

    def _rank_world(self) -> tuple[int, int]:
        rank, world = _dist_info()
        if world == 1 and self._dist_at_init[1] > 1:  # spawned worker without process group
            rank, world = self._dist_at_init
        if self._rank is not None:
            rank = self._rank
        if self._world_size is not None:
            world = self._world_size
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        return rank, world

    # ------------------------------------------------------------------ reading
    def _shard_order(self) -> list[int]:
        order = list(range(len(self.shards)))
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, 0x5A4D])
            order = [int(i) for i in rng.permutation(len(order))]
        return order

    def _samples_of(self, s: int) -> Iterator[dict]:
        yield from read_shard(self.shards[s])

    def _windows_of(self, s: int) -> Iterator[tuple[_Night, int]]:
        """``(night, index)`` for every sample of shard ``s``; the night holds the sample's
        neighbours, read from the tail of earlier and the head of later shards as needed."""
        k = self.context_epochs
        own = list(read_shard(self.shards[s]))
        if not own:
            return
        before: list[dict] = []
        t = s - 1
        while len(before) < k and t >= 0:
            before = _read_end(self.shards[t], k - len(before), last=True) + before
            t -= 1
        after: list[dict] = []
        t = s + 1
        while len(after) < k and t < len(self.shards):
            after += _read_end(self.shards[t], k - len(after), last=False)
            t += 1
        seq = before + own
        seq += after
        groups: list[list[dict]] = []
        for sample in seq:
            if groups and groups[-1][0]["json"]["night"] == sample["json"]["night"]:
                groups[-1].append(sample)
            else:
                groups.append([sample])
        nights = [_Night(g) for g in groups]
        owned = {id(x) for x in own}
        for night, g in zip(nights, groups):
            for i, sample in enumerate(g):
                if id(sample) in owned:
                    yield night, i

    def _entries(self, part: int, parts: int) -> Iterator[Any]:
        order = self._shard_order()
        read = self._windows_of if self.context_epochs else self._samples_of
        yield from _partition(order, part, parts, read)

    def _shuffled(self, entries: Iterable[Any], rng: np.random.Generator) -> Iterator[Any]:
        if not self.shuffle:
            yield from entries
            return
        buf: list[Any] = []
        for e in entries:
            if len(buf) < self.shuffle_buffer:
                buf.append(e)
                continue
            j = int(rng.integers(len(buf)))
            yield buf[j]
            buf[j] = e
        rng.shuffle(buf)
        yield from buf

    def _repeated(self, entries: Iterable[Any]) -> Iterator[tuple[Any, int]]:
        for e in entries:
            meta = e[0].samples[e[1]]["json"] if isinstance(e, tuple) else e["json"]
            reps = 1 + (self.event_repeat if self.event_repeat and has_event(meta) else 0)
            for r in range(reps):
                yield e, r

    def __iter__(self) -> Iterator[dict]:
        rank, world = self._rank_world()
        wid, nworkers = _worker_info()
        part, parts = rank * nworkers + wid, world * nworkers
        rng = np.random.default_rng([self.seed, self.epoch, rank, wid, 0xB0F])
        for entry, rep in self._shuffled(self._repeated(self._entries(part, parts)), rng):
            yield self._item(entry, rep)

    # ------------------------------------------------------------------ samples
    def _draw_caption(self, meta: dict, key: str, rep: int = 0) -> tuple[int, str, str]:
        caps = [c for c in meta.get("captions", ()) if c.get("system") in self.systems
                and c.get("text")]
        if not caps:
            return -1, "", "{}"
        rng = np.random.default_rng([self.seed, self.epoch, _key_seed(key, rep) if rep
                                     else _key_seed(key)])
        have = sorted({c["system"] for c in caps}, key=SYSTEMS.index)
        system = have[int(rng.integers(len(have)))]
        of_system = [c for c in caps if c["system"] == system]
        cap = of_system[int(rng.integers(len(of_system)))] if len(of_system) > 1 else of_system[0]
        facts = json.dumps(cap.get("facts", {}), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
        return SYSTEMS.index(system), cap["text"], facts

    def _item(self, entry: Any, rep: int = 0) -> dict:
        if isinstance(entry, tuple):  # (night, index): a context window
            night, i = entry
            sample = night.samples[i]
            meta = sample["json"]
            k = self.context_epochs
            n_ch = len(self.channels)
            x = np.zeros((2 * k + 1, n_ch, night.x.shape[-1]), dtype=np.float32)
            mask = np.zeros((2 * k + 1, n_ch), dtype=bool)
            centre = int(meta["epoch"])
            for w, d in enumerate(range(-k, k + 1)):
                j = night.pos.get(centre + d)
                if j is not None:
                    x[w], mask[w] = _remap(night.x[j], night.masks[j], self._index)
        else:
            sample = entry
            meta = sample["json"]
            x, mask = _remap(sample["x"], meta["mask"], self._index)
        key = sample["key"]
        system, text, facts = self._draw_caption(meta, key, rep)
        vrng = np.random.default_rng([self.seed, self.epoch, _key_seed(key), rep, 0xD0])
        kept, subset = None, ""
        centre_mask = mask if mask.ndim == 1 else mask[self.context_epochs]
        drop = choose_subset(self.channels, centre_mask, vrng, self.modality_dropout)
        if drop is not None:
            kept = [c for c, k in zip(self.channels, drop[1]) if k]
            cut = self._cut_caption(meta, text, system, facts, kept)
            if cut[0]:
                text, system, facts = cut
                subset = drop[0]
                x, mask = drop_modalities(x, mask, drop[1])
            else:  # nothing of the epoch's captions survives this montage: show it whole
                kept = None
        if self.augment > 0:
            if x.ndim == 2:
                x, _ = augment_epoch(x, mask, self.channels, vrng, self.sfreq, self.augment)
            else:
                for w in range(x.shape[0]):
                    x[w], _ = augment_epoch(x[w], mask[w], self.channels, vrng, self.sfreq,
                                            self.augment)
        out = {"x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
               "mask": torch.from_numpy(mask), "system": system,
               "text": text, "stage": str(meta["stage"]), "stage_id": stage_id(meta["stage"]),
               "key": key, "night": meta["night"], "epoch": int(meta["epoch"]), "facts": facts}
        if self.modality_dropout > 0:
            out["modalities"] = subset
        drawn = (text, json.loads(facts))
        pair = [self._cut(self._contrastive_text(meta, key, c, rep), kept) or drawn
                for c in self._contrastive]
        if self.contrastive_clauses:
            pair.append(self._clause_text(meta, key, rep, kept) or drawn)
            true = dict.fromkeys([fact_key(pair[-1][1])] + self._clause_keys(meta, kept))
            ks = list(true)[:CLAUSE_KEYSET]
            out["clause_keyset"] = torch.tensor(ks + [-1] * (CLAUSE_KEYSET - len(ks)),
                                                dtype=torch.long)
        keys = torch.tensor([fact_key(f) for _, f in pair], dtype=torch.long)
        pair = [t for t, _ in pair]
        if pair:
            out["contrastive_text"] = pair if self._several else pair[0]
            out["contrastive_keys"] = keys if self._several else keys[0]
        if self.tokenizer is not None:
            out["text_ids"] = self._ids(text)
            if pair:
                ids = [self._ids(t) for t in pair]
                out["contrastive_ids"] = torch.stack(ids) if self._several else ids[0]
        return out

    def _cut(self, item: tuple[str, dict] | None, kept: list[str] | None
             ) -> tuple[str, dict] | None:
        """``(text, facts)`` cut to the ``kept`` channels (None: unchanged). A changed text
        states fewer facts than its caption's: its key is then that of the text itself, so
        only samples given the same words are positives. None when nothing is left."""
        if item is None or kept is None:
            return item
        new, gone = withdraw_absent(item[0], kept)
        if not gone:
            return item
        return (new, {"text": new}) if new else None

    def _cut_caption(self, meta: dict, text: str, system: int, facts: str, kept: list[str]
                     ) -> tuple[str, int, str]:
        """The drawn caption cut to ``kept``; when nothing of it is left, the holistic caption
        (then any system's) cut to ``kept``; ``("", -1, "{}")`` when none survives."""
        cut = self._cut((text, json.loads(facts)), kept) if text else None
        if cut is not None:
            return cut[0], system, json.dumps(cut[1], sort_keys=True, separators=(",", ":"),
                                               ensure_ascii=False)
        order = sorted(self.systems, key=lambda s: (s != "holistic", SYSTEMS.index(s)))
        for name in order:
            for c in meta.get("captions", ()):
                if c.get("system") == name and c.get("text"):
                    got = self._cut((c["text"], c.get("facts") or {}), kept)
                    if got is not None:
                        return got[0], SYSTEMS.index(name), json.dumps(
                            got[1], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "", -1, "{}"

    def _ids(self, text: str) -> torch.Tensor:
        ids = self.tokenizer.encode(text, self.max_text_len)
        t = torch.full((self.max_text_len,), int(self.tokenizer.pad_id), dtype=torch.long)
        t[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return t

    def _contrastive_text(self, meta: dict, key: str, system: str, rep: int = 0
                          ) -> tuple[str, dict] | None:
        """``(text, facts)`` of the epoch's caption of ``system`` (seeded draw), or None."""
        caps = [(c["text"], c.get("facts") or {}) for c in meta.get("captions", ())
                if c.get("system") == system and c.get("text")]
        if len(caps) <= 1:
            return caps[0] if caps else None
        words = [self.seed, self.epoch, _key_seed(key), 0xC0, SYSTEMS.index(system)]
        rng = np.random.default_rng(words + [rep] if rep else words)
        return caps[int(rng.integers(len(caps)))]

    def _clause_keys(self, meta: dict, kept: list[str] | None = None) -> list[int]:
        """:func:`fact_key` of every clause of the epoch's captions that states one of
        ``contrastive_clauses``: everything true of the epoch that a clause pair can say (with
        ``kept``, only the clauses those channels support)."""
        out: dict[int, None] = {}
        for c in meta.get("captions", ()):
            for cl in c.get("clauses") or ():
                f = cl.get("facts") or {}
                if kept is not None and withdraw_absent(cl.get("text") or "", kept)[1]:
                    continue
                if any(k in f for k in self.contrastive_clauses):
                    out.setdefault(fact_key(f))
        return list(out)

    def _clause_text(self, meta: dict, key: str, rep: int = 0,
                     kept: list[str] | None = None) -> tuple[str, dict] | None:
        """``(text, facts)`` of one clause stating one of ``contrastive_clauses`` (see the
        class docstring); None when the epoch's captions have none (e.g. a corpus built before
        clauses were stored, or none is supported by the ``kept`` channels)."""
        by_key: dict[str, list[tuple[str, dict]]] = {}
        for c in meta.get("captions", ()):
            for cl in c.get("clauses") or ():
                if kept is not None and withdraw_absent(cl.get("text") or "", kept)[1]:
                    continue
                for k in self.contrastive_clauses:
                    if k in (cl.get("facts") or {}) and cl.get("text"):
                        by_key.setdefault(k, []).append((cl["text"], cl["facts"]))
        if not by_key:
            return None
        rng = np.random.default_rng([self.seed, self.epoch, _key_seed(key), 0xC1, rep])
        names = sorted(by_key)
        texts = by_key[names[int(rng.integers(len(names)))]]
        return texts[int(rng.integers(len(texts)))]

    def __repr__(self) -> str:
        return (f"EpochShardDataset({str(self.corpus_dir)!r}, {self.split!r}, "
                f"shards={len(self.shards)}, channels={len(self.channels)}, "
                f"context_epochs={self.context_epochs})")


#: Length of a sample's ``clause_keyset`` (padded with -1).
CLAUSE_KEYSET = 16
#: Fact keys of a caption that state an event (see ``EpochShardDataset(event_repeat=...)``).
EVENT_FACTS: tuple[str, ...] = ("respiratory_events", "desaturations", "arousals", "plm",
                                "limb_movements")


def has_event(meta: dict) -> bool:
    """Whether an epoch sample's captions state an event (a non-empty / non-zero value of one
    of :data:`EVENT_FACTS`)."""
    for c in meta.get("captions", ()):
        f = c.get("facts") or {}
        for k in EVENT_FACTS:
            if f.get(k):
                return True
    return False


class ClauseBank:
    """The distinct finding clauses of a corpus split, grouped by the fact key they state (see
    ``EpochShardDataset(contrastive_clauses=...)``), to be drawn as extra contrastive
    negatives: rare findings ("an obstructive apnea scored") then compete with the common
    ones ("no respiratory events") in every batch, not only in the few batches that hold an
    epoch with that finding, which is what puts the zero of a query-versus-absence margin
    where it belongs. A drawn clause is a positive, not a negative, for a signal whose own
    clause states the same facts (:func:`fact_key`).

    Parameters
    ----------
    groups : dict of str to list of (str, dict)
        Fact key -> its distinct clauses, ``(text, facts)``.
    """

    def __init__(self, groups: dict[str, list[tuple[str, dict]]]) -> None:
        self.groups: dict[str, list[tuple[str, int]]] = {}
        for k, items in groups.items():
            uniq = {t: fact_key(f) for t, f in items}
            if uniq:
                self.groups[k] = sorted(uniq.items())
        self._keys = sorted(self.groups)

    @classmethod
    def from_corpus(cls, corpus_dir: str | os.PathLike, split: str,
                    keys: Sequence[str]) -> "ClauseBank":
        """Scan the split's epoch JSON (no signals) for the clauses stating ``keys``."""
        groups: dict[str, dict[str, dict]] = {k: {} for k in keys}
        for shard in list_shards(corpus_dir, split, "epochs"):
            for _, meta in iter_shard_json(shard):
                for c in meta.get("captions", ()):
                    for cl in c.get("clauses") or ():
                        for k in keys:
                            if k in (cl.get("facts") or {}) and cl.get("text"):
                                groups[k][cl["text"]] = cl["facts"]
        return cls({k: list(v.items()) for k, v in groups.items()})

    def __len__(self) -> int:
        return sum(len(v) for v in self.groups.values())

    def sample(self, n: int, seed: Sequence[int]) -> list[tuple[str, int]]:
        """``n`` distinct clauses ``(text, fact key)`` (fewer when the bank is smaller): a
        fact key uniformly, then one of its texts uniformly; seeded, so every rank draws the
        same ones."""
        if not self._keys or n <= 0:
            return []
        rng = np.random.default_rng(list(seed))
        n = min(n, len(self))
        out: dict[str, int] = {}
        while len(out) < n:
            items = self.groups[self._keys[int(rng.integers(len(self._keys)))]]
            text, k = items[int(rng.integers(len(items)))]
            out.setdefault(text, k)
        return list(out.items())


def fact_key(facts: dict) -> int:
    """Integer key of what a contrastive text states (CRC-32 of its facts as sorted JSON): two
    samples with equal keys are positives of each other in the contrastive loss."""
    return zlib.crc32(json.dumps(facts, sort_keys=True, separators=(",", ":"),
                                 ensure_ascii=False).encode())


def collate(batch: Sequence[dict]) -> dict:
    """Stack a list of samples: tensors stacked, ints/bools/floats to tensors, strings as lists."""
    if not batch:
        return {}
    out: dict[str, Any] = {}
    for k in batch[0]:
        vals = [b[k] for b in batch]
        v0 = vals[0]
        if isinstance(v0, torch.Tensor):
            out[k] = torch.stack(vals)
        elif isinstance(v0, (bool, np.bool_)):
            out[k] = torch.tensor(vals, dtype=torch.bool)
        elif isinstance(v0, (int, np.integer)):
            out[k] = torch.tensor(vals, dtype=torch.long)
        elif isinstance(v0, (float, np.floating)):
            out[k] = torch.tensor(vals, dtype=torch.float32)
        else:
            out[k] = list(vals)
    return out


EpochShardDataset.collate = staticmethod(collate)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------- nights
def night_samples(corpus_dir: str | os.PathLike, split: str) -> Iterator[dict]:
    """The night samples of a split (``nights/{split}-*.tar``), in sorted order.

    Each is the night's JSON (night, subject, epochs, stages, channels, mask, missing,
    captions: {night, segments, events}) plus ``key``.
    """
    for shard in list_shards(corpus_dir, split, "nights"):
        for key, meta in iter_shard_json(shard):
            yield {"key": key, **meta}


# ---------------------------------------------------------------------------------- in memory
def load_split_epochs(corpus_dir: str | os.PathLike, split: str,
                      channels: Sequence[str] | None = None,
                      max_epochs: int | None = None) -> dict[str, np.ndarray]:
    """A whole split in memory, in corpus order (sorted shards), for evaluation.

    Returns
    -------
    dict of numpy arrays, N epochs:
        ``x`` float16 ``[N, C, T]`` (channels by name; absent ones zero), ``mask`` bool
        ``[N, C]``, ``stage_id`` int64 ``[N]``, ``stage`` str ``[N]``, ``night`` str ``[N]``,
        ``epoch`` int64 ``[N]``, ``key`` str ``[N]``, and per system ``caption_<system>``
        str ``[N]`` (the epoch's first caption of that system, "" when none).
    """
    index = _channel_index(corpus_channels(corpus_dir),
                           channels if channels is not None else corpus_channels(corpus_dir))
    xs: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    cols: dict[str, list] = {k: [] for k in ("stage_id", "stage", "night", "epoch", "key")}
    caps: dict[str, list[str]] = {s: [] for s in SYSTEMS}
    done = False
    for shard in list_shards(corpus_dir, split, "epochs"):
        for sample in read_shard(shard):
            if max_epochs is not None and len(xs) >= max_epochs:
                done = True
                break
            meta = sample["json"]
            x, m = _remap(sample["x"], meta["mask"], index, dtype=np.float16)
            xs.append(x)
            masks.append(m)
            cols["stage_id"].append(stage_id(meta["stage"]))
            cols["stage"].append(str(meta["stage"]))
            cols["night"].append(meta["night"])
            cols["epoch"].append(int(meta["epoch"]))
            cols["key"].append(sample["key"])
            first: dict[str, str] = {}
            for c in meta.get("captions", ()):
                if c.get("level", "epoch") == "epoch":
                    first.setdefault(c["system"], c["text"])
            for c in meta.get("captions", ()):
                first.setdefault(c["system"], c["text"])
            for s in SYSTEMS:
                caps[s].append(first.get(s, ""))
        if done:
            break
    n_ch = len(index)
    t = xs[0].shape[-1] if xs else int(round(
        _corpus_config(corpus_dir)["model_input"]["sfreq"]
        * _corpus_config(corpus_dir)["model_input"]["epoch_sec"]))
    out: dict[str, np.ndarray] = {
        "x": np.stack(xs) if xs else np.zeros((0, n_ch, t), dtype=np.float16),
        "mask": np.stack(masks) if masks else np.zeros((0, n_ch), dtype=bool),
        "stage_id": np.asarray(cols["stage_id"], dtype=np.int64),
        "stage": np.asarray(cols["stage"], dtype=object),
        "night": np.asarray(cols["night"], dtype=object),
        "epoch": np.asarray(cols["epoch"], dtype=np.int64),
        "key": np.asarray(cols["key"], dtype=object),
    }
    for s in SYSTEMS:
        out[f"caption_{s}"] = np.asarray(caps[s], dtype=object)
    return out


def corpus_texts(corpus_dir: str | os.PathLike, split: str = "train") -> Iterator[str]:
    """Every caption text of a split: epoch captions, then night/segment/event captions.

    Reads ``epochs/{split}-*.tar`` (JSON members only, the signals are skipped) and
    ``nights/{split}-*.tar`` in sorted order.
    """
    root = Path(corpus_dir)
    for shard in list_shards(root, split, kind="epochs"):
        for _key, meta in iter_shard_json(shard):
            for cap in meta.get("captions", ()):
                if cap.get("text"):
                    yield cap["text"]
    for shard in list_shards(root, split, kind="nights"):
        for _key, meta in iter_shard_json(shard):
            caps = meta.get("captions", {})
            for level in ("night", "segments", "events"):
                for cap in caps.get(level, ()):
                    if cap.get("text"):
                        yield cap["text"]
