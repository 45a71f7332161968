"""Pre-training corpus: nights of PSG -> model-input epochs + captions, in WebDataset shards.

:func:`build_corpus` reads every night (:func:`sleeplm.io.read_recording`), cuts it into model
input (:func:`sleeplm.corpus.preprocess.epoch_tensor`), captions it (:func:`sleeplm.captions.caption_night`)
and writes::

    out/
      config.json               ModelInputConfig + corpus parameters (the build's fingerprint)
      manifest.csv              night, subject, split, epochs, status, error, patient_id, hours, source
      report.json               corpus statistics (see CorpusReport)
      work/<night>.tar          one finished night (resume cache; written atomically)
      epochs/<split>-000000.tar epoch samples, ~shard_size per shard
      nights/<split>-000000.tar night samples, ~shard_size per shard

An **epoch sample** (key ``<night>_e<epoch:05d>``) is two tar members:

* ``<key>.x.npy``: float16 ``[C, T]`` (channels of ``config.json``, model rate);
* ``<key>.json``: ``{"night", "patient_id", "subject", "split", "epoch", "onset_s", "stage",
  "mask": [C bools], "invalid": [C fractions], "captions": [{"level", "system", "text",
  "facts", "start", "end", "clauses": [{"text", "facts"}, ...]}, ...]}`` (``clauses``: the
  caption's clauses as written, since format ``sleeplm-corpus-2``).

A **night sample** (key ``<night>``) is one member ``<night>.json``: ``{"night", "patient_id",
"subject", "split", "epochs", "stages": [N labels], "epoch_onset_s", "channels", "mask",
"missing": {what: why}, "captions": {"night": [...], "segments": [...], "events": [...]}}``.

Splits are by subject (a stable SHA-256 of the subject id, not of the seed), so nights of one
subject are never on two sides. Shards hold nights in sorted order, so loaders should shuffle
with a buffer (and shuffle shards). Building is resumable: a night's samples are first written
to ``work/<night>.tar`` (temp file + ``os.replace``); a rerun skips those nights and re-packs
the shards, which are byte-identical for the same inputs (sorted nights and members, tar
metadata fixed: mtime 0, uid/gid 0, mode 0644, no user names).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import statistics
import tarfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, Field

from sleeplm._logging import logger
from sleeplm.corpus.preprocess import ModelInputConfig, epoch_tensor
from sleeplm.errors import SleepLMError
from sleeplm.recording import safe_identifier

__all__ = ["build_corpus", "CorpusReport", "SPLITS", "split_of", "subject_for", "read_shard",
           "RAY_TASK_RETRIES", "RayClusterError", "RayOutcome", "ray_map", "ray_session"]

SPLITS: tuple[str, ...] = ("train", "validation", "test")
MANIFEST_COLUMNS = ("night", "subject", "split", "epochs", "status", "error", "patient_id",
                    "hours", "source")
STAGE_KEYS = ("reading", "captioning", "tensor", "writing")
_SIGNAL_SUFFIXES = {".edf", ".bdf"}
_SLEEP_EDF_ID = re.compile(r"^S[CT]\d{4}", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_STATS_MEMBER = "__stats__.json"


# ---------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class _Job:
    night: str
    path: str
    subject: str | None  # known before reading (manifest / Sleep-EDF file name)
    patient_id: str | None


def _night_id(text: str) -> str:
    # WebDataset splits a key at the first dot of the member's base name: no dots in keys.
    return safe_identifier(text, max_len=96).replace(".", "_")


def _is_signal_file(p: Path) -> bool:
    return (p.is_file() and p.suffix.lower() in _SIGNAL_SUFFIXES
            and "hypnogram" not in p.name.lower())


def subject_for(*, hypnogram_source: str | None = None, patient_id: str | None = None,
                night: str | None = None) -> str:
    """Subject id used for the split.

    A night driven by a Sleep-EDF recording ("SC4012E0", simulated or real) belongs to that
    Sleep-EDF subject (:func:`sleeplm.data.subject_of`, "SC401"); else to its patient id; else
    to the night itself.
    """
    from sleeplm.data import subject_of

    for text in (hypnogram_source, night):
        if isinstance(text, str) and _SLEEP_EDF_ID.match(text):
            return subject_of(text.upper())
    if isinstance(patient_id, str) and patient_id.strip() and patient_id not in ("unknown", "X"):
        return safe_identifier(patient_id)
    return night or "unknown"


def split_of(subject: str, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """Stable split of a subject: SHA-256 of its id, mapped onto ``fractions``."""
    h = int.from_bytes(hashlib.sha256(subject.encode()).digest()[:8], "big") / 2.0**64
    edge = 0.0
    total = float(sum(fractions))
    for name, frac in zip(SPLITS, fractions):
        edge += frac / total
        if h < edge:
            return name
    return SPLITS[len(fractions) - 1]


def _jobs_from_manifest(path: Path) -> list[_Job]:
    import pandas as pd

    df = pd.read_csv(path)
    jobs = []
    for row in df.to_dict("records"):
        status = str(row.get("status", "ok"))
        edf = row.get("edf")
        if status != "ok" or not isinstance(edf, str) or not edf:
            logger.warning("manifest %s: skipping %s (status %s)", path, row.get("patient_id"),
                           status)
            continue
        p = (path.parent / edf)
        night = _night_id(p.stem)
        pid = row.get("patient_id")
        pid = str(pid) if isinstance(pid, str) else None
        src = row.get("hypnogram_source")
        jobs.append(_Job(night, str(p), subject_for(hypnogram_source=src if isinstance(src, str)
                                                    else None, patient_id=pid, night=night), pid))
    return jobs


def _resolve_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike],
                    out: Path) -> list[_Job]:
    if isinstance(inputs, (str, os.PathLike)):
        p = Path(inputs)
        if p.is_file() and p.suffix.lower() == ".csv":
            jobs = _jobs_from_manifest(p)
        elif p.is_dir():
            known = {}
            if (p / "manifest.csv").exists():
                known = {Path(j.path).name: j for j in _jobs_from_manifest(p / "manifest.csv")}
            out_r = out.resolve()
            jobs = []
            for f in sorted(p.rglob("*")):
                if not _is_signal_file(f) or out_r in f.resolve().parents:
                    continue
                if f.name in known and f.parent == p:
                    jobs.append(known[f.name])
                    continue
                rel = f.relative_to(p).with_suffix("")
                night = _night_id("_".join(rel.parts))
                jobs.append(_Job(night, str(f), subject_for(night=night) if _SLEEP_EDF_ID.match(
                    night) else None, None))
        elif p.is_file():
            night = _night_id(p.stem)
            jobs = [_Job(night, str(p), None, None)]
        else:
            raise FileNotFoundError(f"build_corpus input {p} is neither a folder, a manifest.csv "
                                    "nor a signal file")
    else:
        jobs = []
        for item in inputs:
            f = Path(item)
            night = _night_id(f.stem)
            jobs.append(_Job(night, str(f), subject_for(night=night) if _SLEEP_EDF_ID.match(night)
                             else None, None))
    # unique night ids, deterministic
    seen: Counter[str] = Counter()
    unique = []
    for job in sorted(jobs, key=lambda j: (j.night, j.path)):
        seen[job.night] += 1
        if seen[job.night] > 1:
            job = _Job(f"{job.night}-{seen[job.night]}", job.path, job.subject, job.patient_id)
        unique.append(job)
    return unique


# ---------------------------------------------------------------------------------- tar io
def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=_json_default).encode()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _finite(obj: Any) -> Any:
    """Replace NaN/inf in nested facts by None (JSON has no NaN)."""
    if isinstance(obj, float) or isinstance(obj, np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _caption_dict(cap: Any) -> dict:
    return _finite(cap.model_dump(mode="json"))


# ---------------------------------------------------------------------------------- one night
def _night_seed(seed: int, night: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{night}".encode()).digest()[:4], "big") >> 1


def _process_night(job: _Job, work_dir: str, config_json: str, seed: int, segment_min: float,
                   fractions: tuple[float, ...]) -> dict:
    """Read, tensor, caption and write one night to ``work/<night>.tar``; never raises."""
    cfg = ModelInputConfig.from_json(config_json)
    row: dict[str, Any] = {"night": job.night, "subject": job.subject or job.night,
                           "split": split_of(job.subject or job.night, fractions), "epochs": 0,
                           "status": "failed", "error": "", "patient_id": job.patient_id or "",
                           "hours": 0.0, "source": job.path}
    timings = dict.fromkeys(STAGE_KEYS, 0.0)
    try:
        from sleeplm.captions import caption_night
        from sleeplm.io import read_recording

        t0 = time.perf_counter()
        rec = read_recording(job.path)
        timings["reading"] = time.perf_counter() - t0
        pid = job.patient_id or rec.info.patient_id
        subject = job.subject or subject_for(patient_id=pid, night=job.night)
        row.update(patient_id=pid, subject=subject, split=split_of(subject, fractions),
                   hours=round(rec.duration / 3600, 3))

        t0 = time.perf_counter()
        mi = epoch_tensor(rec, cfg)
        timings["tensor"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        caps = caption_night(rec, seed=_night_seed(seed, job.night), segment_min=segment_min)
        timings["captioning"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        stats = _write_night(job, row, rec, mi, caps, Path(work_dir), timings)
        timings["writing"] = time.perf_counter() - t0
        stats["timings"] = timings
        _finish_work_tar(Path(work_dir), job.night, stats)
        row.update(status="ok", epochs=mi.n_epochs)
        row["stats"] = stats
    except Exception as exc:  # batch boundary: report and carry on with the next night
        logger.error("corpus: night %s (%s) failed: %s: %s", job.night, job.path,
                     type(exc).__name__, exc)
        logger.debug("%s", traceback.format_exc())
        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        row["status"] = "failed"
        for tmp in Path(work_dir).glob(f"{job.night}.tar.tmp*"):
            tmp.unlink(missing_ok=True)
    row["timings"] = timings
    return row


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _caption_stats(caps_by_level: dict[str, list[dict]]) -> dict:
    per: Counter[str] = Counter()
    lengths: Counter[int] = Counter()
    vocab: set[str] = set()
    for level, caps in caps_by_level.items():
        for cap in caps:
            per[f"{level}/{cap['system']}"] += 1
            words = _words(cap["text"])
            lengths[len(cap["text"].split())] += 1
            vocab.update(words)
    return {"captions": dict(per), "lengths": {str(k): v for k, v in lengths.items()},
            "vocab": sorted(vocab)}


def _write_night(job: _Job, row: dict, rec: Any, mi: Any, caps: Any, work: Path,
                 timings: dict) -> dict:
    by_epoch = {ec.epoch: ec for ec in caps.epochs}
    mask = [bool(m) for m in mi.mask]
    epoch_caps: list[dict] = []
    tmp = work / f"{job.night}.tar.tmp{os.getpid()}"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(mi.n_epochs):
            key = f"{job.night}_e{i:05d}"
            ec = by_epoch.get(i)
            captions = [_caption_dict(c) for c in ec.captions] if ec is not None else []
            epoch_caps.extend(captions)
            meta = {"night": job.night, "patient_id": row["patient_id"],
                    "subject": row["subject"], "split": row["split"], "epoch": i,
                    "onset_s": float(mi.onsets[i]), "stage": str(mi.stages[i]), "mask": mask,
                    "invalid": [round(float(v), 4) for v in mi.invalid[i]],
                    "captions": captions}
            _add_bytes(tar, f"{key}.json", _json_bytes(meta))
            _add_bytes(tar, f"{key}.x.npy", _npy_bytes(mi.x[i]))
        night_caps = {"night": [_caption_dict(c) for c in caps.night],
                      "segments": [_caption_dict(c) for c in caps.segments],
                      "events": [_caption_dict(c) for c in caps.events]}
        night_meta = {"night": job.night, "patient_id": row["patient_id"],
                      "subject": row["subject"], "split": row["split"],
                      "epochs": mi.n_epochs, "stages": [str(s) for s in mi.stages],
                      "epoch_onset_s": float(mi.onsets[0]) if mi.n_epochs else 0.0,
                      "channels": list(mi.channels), "mask": mask,
                      "missing": dict(caps.missing), "captions": night_caps}
        _add_bytes(tar, f"{job.night}.json", _json_bytes(night_meta))
    stats = _caption_stats({"epoch": epoch_caps, "event": night_caps["events"],
                            "segment": night_caps["segments"], "night": night_caps["night"]})
    stats.update(
        hours=float(rec.duration / 3600), epochs=mi.n_epochs,
        stages=dict(Counter(str(s) for s in mi.stages)),
        events=dict(Counter(str(t) for t in rec.events["type"])) if len(rec.events) else {},
        row={k: row[k] for k in ("night", "subject", "split", "patient_id", "hours", "source")},
        tmp=str(tmp))
    return stats


def _finish_work_tar(work: Path, night: str, stats: dict) -> None:
    tmp = Path(stats.pop("tmp"))
    with tarfile.open(tmp, "a", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, _STATS_MEMBER, _json_bytes(stats))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, work / f"{night}.tar")


def _read_stats(work_tar: Path) -> dict:
    with tarfile.open(work_tar) as tar:
        member = tar.getmember(_STATS_MEMBER)
        return json.loads(tar.extractfile(member).read())


# ---------------------------------------------------------------------------------- packing
def _write_shards(folder: Path, split: str, samples: Iterable[tuple[str, list[tuple[str, bytes]]]],
                  shard_size: int) -> list[Path]:
    """Write ``<split>-%06d.tar`` shards of ``shard_size`` samples each (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    tar = None
    count = 0
    tmp = None

    def close() -> None:
        nonlocal tar, tmp
        if tar is not None:
            tar.close()
            final = folder / f"{split}-{len(written):06d}.tar"
            os.replace(tmp, final)
            written.append(final)
            tar = None

    for _key, members in samples:
        if tar is None:
            tmp = folder / f".{split}-{len(written):06d}.tar.tmp"
            tar = tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT)
            count = 0
        for name, data in sorted(members):
            _add_bytes(tar, name, data)
        count += 1
        if count >= shard_size:
            close()
    close()
    return written


def _samples_of(work_tar: Path, nights: bool) -> Iterable[tuple[str, list[tuple[str, bytes]]]]:
    """Samples of one night's work tar: its epoch samples (nights=False) or its night sample."""
    night_member = f"{work_tar.stem}.json"
    with tarfile.open(work_tar) as tar:
        key, members = None, []
        for m in tar:
            if m.name == _STATS_MEMBER or not m.isfile():
                continue
            if (m.name == night_member) != nights:
                continue
            k = m.name.split(".", 1)[0]
            if key is not None and k != key:
                yield key, members
                members = []
            key = k
            members.append((m.name, tar.extractfile(m).read()))
        if key is not None:
            yield key, members


def _pack(out: Path, ok_rows: list[dict], shard_size: int) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for kind in ("epochs", "nights"):
        folder = out / kind
        keep: set[Path] = set()
        for split in SPLITS:
            rows = sorted((r for r in ok_rows if r["split"] == split), key=lambda r: r["night"])

            def stream(rows=rows, kind=kind):
                for r in rows:
                    yield from _samples_of(out / "work" / f"{r['night']}.tar", kind == "nights")

            shards = _write_shards(folder, split, stream(), shard_size) if rows else []
            keep.update(shards)
            counts.setdefault(kind, {})[split] = len(shards)
        if folder.exists():  # shards of an earlier, larger build are stale
            for f in folder.glob("*.tar"):
                if f not in keep:
                    f.unlink()
    return counts


# ---------------------------------------------------------------------------------- report
class CorpusReport(BaseModel):
    """What a corpus holds, and what building it cost."""

    out: str
    nights: int = 0
    nights_failed: int = 0
    nights_recomputed: int = 0
    nights_per_split: dict[str, int] = Field(default_factory=dict)
    subjects_per_split: dict[str, int] = Field(default_factory=dict)
    hours: float = 0.0
    epochs: int = 0
    epochs_per_stage: dict[str, int] = Field(default_factory=dict)
    events_per_type: dict[str, int] = Field(default_factory=dict)
    captions_per_level_system: dict[str, int] = Field(default_factory=dict)
    caption_words: dict[str, float] = Field(default_factory=dict)
    vocabulary: int = 0
    bytes_per_epoch: float = 0.0
    shard_bytes: dict[str, int] = Field(default_factory=dict)
    shards: dict[str, dict[str, int]] = Field(default_factory=dict)
    seconds_per_night: dict[str, float] = Field(default_factory=dict)
    seconds_total: float = 0.0
    seconds_packing: float = 0.0
    failed: dict[str, str] = Field(default_factory=dict)

    def to_table(self) -> str:
        """The report as text for people."""
        lines = [f"Corpus {self.out}",
                 f"  nights        {self.nights} ok, {self.nights_failed} failed "
                 f"({self.nights_recomputed} computed this run), {self.hours:.1f} h, "
                 f"{self.epochs} epochs",
                 "  splits        " + ", ".join(
                     f"{s} {self.nights_per_split.get(s, 0)} nights / "
                     f"{self.subjects_per_split.get(s, 0)} subjects" for s in SPLITS),
                 "  stages        " + ", ".join(f"{k} {v}" for k, v in
                                                 sorted(self.epochs_per_stage.items())),
                 "  events        " + (", ".join(f"{k} {v}" for k, v in sorted(
                     self.events_per_type.items())) or "none")]
        lines.append("  captions      " + (", ".join(f"{k} {v}" for k, v in sorted(
            self.captions_per_level_system.items())) or "none"))
        w = self.caption_words
        if w:
            lines.append(f"  caption words mean {w.get('mean', 0):.1f}, median "
                         f"{w.get('median', 0):g}, max {w.get('max', 0):g}; vocabulary "
                         f"{self.vocabulary} words")
        lines.append(f"  disk          {self.bytes_per_epoch / 1024:.1f} KiB per epoch; shards "
                     + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in self.shard_bytes.items()))
        s = self.seconds_per_night
        lines.append("  s per night   " + ", ".join(f"{k} {s.get(k, 0):.2f}" for k in
                                                    (*STAGE_KEYS, "total")))
        lines.append(f"  wall          {self.seconds_total:.1f} s (packing "
                     f"{self.seconds_packing:.1f} s)")
        for night, err in sorted(self.failed.items()):
            lines.append(f"  FAILED        {night}: {err}")
        return "\n".join(lines)


def _report(out: Path, rows: list[dict], stats: dict[str, dict], recomputed: int,
            shards: dict, seconds_total: float, seconds_packing: float) -> CorpusReport:
    ok = [r for r in rows if r["status"] == "ok"]
    rep = CorpusReport(out=str(out), nights=len(ok), nights_failed=len(rows) - len(ok),
                       nights_recomputed=recomputed, shards=shards,
                       seconds_total=round(seconds_total, 3),
                       seconds_packing=round(seconds_packing, 3))
    stage_c: Counter[str] = Counter()
    event_c: Counter[str] = Counter()
    cap_c: Counter[str] = Counter()
    lengths: Counter[int] = Counter()
    vocab: set[str] = set()
    timing = dict.fromkeys(STAGE_KEYS, 0.0)
    for r in ok:
        st = stats[r["night"]]
        rep.hours += st["hours"]
        rep.epochs += st["epochs"]
        stage_c.update(st["stages"])
        event_c.update(st["events"])
        cap_c.update(st["captions"])
        lengths.update({int(k): v for k, v in st["lengths"].items()})
        vocab.update(st["vocab"])
        for k in STAGE_KEYS:
            timing[k] += st["timings"].get(k, 0.0)
    rep.hours = round(rep.hours, 3)
    rep.nights_per_split = dict(Counter(r["split"] for r in ok))
    rep.subjects_per_split = {s: len({r["subject"] for r in ok if r["split"] == s})
                              for s in SPLITS}
    rep.epochs_per_stage = dict(sorted(stage_c.items()))
    rep.events_per_type = dict(sorted(event_c.items()))
    rep.captions_per_level_system = dict(sorted(cap_c.items()))
    if lengths:
        flat_n = sum(lengths.values())
        values = sorted(lengths.elements())
        rep.caption_words = {"mean": round(sum(k * v for k, v in lengths.items()) / flat_n, 2),
                             "median": float(statistics.median(values)),
                             "max": float(max(lengths)), "count": float(flat_n)}
    rep.vocabulary = len(vocab)
    for kind in ("epochs", "nights"):
        rep.shard_bytes[kind] = sum(f.stat().st_size for f in (out / kind).glob("*.tar")) \
            if (out / kind).exists() else 0
    rep.bytes_per_epoch = round(rep.shard_bytes["epochs"] / rep.epochs, 1) if rep.epochs else 0.0
    if ok:
        rep.seconds_per_night = {k: round(v / len(ok), 3) for k, v in timing.items()}
        rep.seconds_per_night["total"] = round(sum(timing.values()) / len(ok), 3)
    rep.failed = {r["night"]: r["error"] for r in rows if r["status"] != "ok"}
    return rep


# ---------------------------------------------------------------------------------- ray
#: Times Ray re-runs a task whose worker process or node died (a task's own exception is not
#: retried: it is the item's error). Two lost nodes in a row still finish the item.
RAY_TASK_RETRIES = 3
#: Seconds to wait for a TCP connection to a Ray head given by address before giving up.
RAY_CONNECT_TIMEOUT_S = 5.0


class RayClusterError(SleepLMError, ConnectionError):
    """The Ray cluster named by an address cannot be reached."""


@dataclass
class RayOutcome:
    """One finished Ray task of :func:`ray_map`.

    Attributes
    ----------
    key : str
        The item's key as given to :func:`ray_map`.
    value : Any
        What the function returned (None when ``error`` is set).
    error : BaseException or None
        Why the item has no value: its worker or node died more than
        :data:`RAY_TASK_RETRIES` times, the function raised, or the task ran past the hard
        time limit (then ``timed_out``).
    node : str
        Id of the Ray node that ran it ("" when unknown).
    seconds : float
        Wall time from submission to result, s.
    timed_out : bool
    """

    key: str
    value: Any = None
    error: BaseException | None = None
    node: str = ""
    seconds: float = 0.0
    timed_out: bool = False


def _require_ray() -> Any:
    # No telemetry: Ray reports usage statistics unless told not to (read once, at import)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray  # noqa: PLC0415 - optional backend, imported only on request
    except ImportError as exc:
        raise ImportError("backend='ray' needs the optional 'ray' package (pip install "
                          "'sleeplm[ray]'); use backend='process' (the default) otherwise"
                          ) from exc
    return ray


def _probe_ray_head(address: str) -> None:
    """Fail fast (``ray.init`` waits minutes) when nothing listens at ``host:port``."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():  # "auto", "local" or a form ray.init resolves itself
        return
    import socket

    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                      timeout=RAY_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise RayClusterError(
            f"cannot reach the Ray cluster at {address!r} ({exc}): start its head node with "
            "'ray start --head --port=PORT' and give that address (host:port), or leave the "
            "address out to run Ray on this machine") from exc


@contextmanager
def ray_session(ray: Any, address: str | None = None,
                num_cpus: int | None = None) -> Iterator[int]:
    """Connect to a Ray cluster (or start Ray here) for the length of one run.

    Parameters
    ----------
    ray : module
        The imported ``ray`` package.
    address : str, optional
        A running cluster's head, ``host:port`` (``ray start --head``), ``ray://host:port``
        or ``auto``. None: ``RAY_ADDRESS`` when set, else a Ray instance on this machine with
        ``num_cpus``. Ignored when this process is already connected to Ray.
    num_cpus : int, optional
        CPUs of a Ray instance started here.

    Yields
    ------
    int
        CPUs of the whole cluster (at least 1).

    Raises
    ------
    RayClusterError
        Nothing answers at ``address``.
    """
    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            _probe_ray_head(address)
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, TimeoutError) as exc:
                raise RayClusterError(f"cannot join the Ray cluster at {address!r}: {exc}"
                                      ) from exc
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        yield max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if started:
            ray.shutdown()


def _call_on_node(fn: Callable[..., Any], *args: Any) -> tuple[Any, str]:
    """Run ``fn(*args)`` in a Ray worker; return its value and this node's id."""
    import ray  # noqa: PLC0415 - runs inside a Ray worker

    return fn(*args), ray.get_runtime_context().get_node_id()


def ray_map(ray: Any, fn: Callable[..., Any], calls: Sequence[tuple[str, tuple]], *,
            in_flight: int, hard_timeout_s: float | None = None) -> Iterator[RayOutcome]:
    """Run ``fn(*args)`` for every ``(key, args)`` as Ray tasks; yield each as it finishes.

    One CPU per task, spread over the nodes; at most ``in_flight`` tasks submitted at once
    (the rest wait on the driver, so a huge list costs no cluster memory). A task whose
    worker process or node dies is run again on a live node, up to :data:`RAY_TASK_RETRIES`
    times, so ``fn`` must be idempotent (write its outputs atomically). Pass paths in
    ``args``, not data: each worker reads its own inputs from storage every node sees.

    Parameters
    ----------
    ray : module
        The ``ray`` package, connected (see :func:`ray_session`).
    fn : callable
        A module-level function (Ray ships it by reference).
    calls : sequence of (str, tuple)
        Key and arguments of each task.
    in_flight : int
        Tasks submitted at once.
    hard_timeout_s : float, optional
        A task running longer, s, is cancelled (force) and yielded with ``timed_out``.

    Yields
    ------
    RayOutcome
        In the order the tasks finish.
    """
    remote = ray.remote(_call_on_node).options(
        num_cpus=1, max_retries=RAY_TASK_RETRIES, retry_exceptions=False,
        scheduling_strategy="SPREAD")
    queue = list(calls)
    queue.reverse()  # pop() from the end keeps the given order
    running: dict[Any, tuple[str, float]] = {}
    while queue or running:
        while queue and len(running) < max(1, in_flight):
            key, args = queue.pop()
            running[remote.remote(fn, *args)] = (key, time.monotonic())
        done, _ = ray.wait(list(running), num_returns=1,
                           timeout=5.0 if hard_timeout_s else None)
        for ref in done:
            key, started = running.pop(ref)
            seconds = time.monotonic() - started
            try:
                value, node = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the caller turns it into the item's error
                cause = getattr(exc, "cause", None)  # RayTaskError: fn's own exception
                yield RayOutcome(key, error=cause if isinstance(cause, Exception) else exc,
                                 seconds=seconds)
            else:
                yield RayOutcome(key, value=value, node=node, seconds=seconds)
        if hard_timeout_s:
            now = time.monotonic()
            for ref, (key, started) in list(running.items()):
                if now - started > hard_timeout_s:
                    ray.cancel(ref, force=True)
                    running.pop(ref)
                    yield RayOutcome(key, seconds=now - started, timed_out=True,
                                     error=TimeoutError(f"{key} did not finish within "
                                                        f"{hard_timeout_s:g} s"))


def _run_ray(jobs: list[_Job], args: tuple, workers: int, bar: Any,
             address: str | None = None) -> list[dict]:
    """Nights as Ray tasks (:func:`ray_map`), streamed back as they finish."""
    ray = _require_ray()
    by_night = {job.night: job for job in jobs}
    work = os.path.abspath(args[0])
    # a worker's current folder is not the driver's: give it absolute paths
    calls = [(job.night, (_Job(job.night, os.path.abspath(job.path), job.subject,
                               job.patient_id), work, *args[1:])) for job in jobs]
    rows: list[dict] = []
    counts = Counter()
    nodes: Counter[str] = Counter()
    with ray_session(ray, address, workers or None) as cpus:
        logger.info("corpus: %d nights as Ray tasks over %d CPUs", len(jobs), cpus)
        for res in ray_map(ray, _process_night, calls, in_flight=2 * max(workers, cpus)):
            job = by_night[res.key]
            if res.error is not None:  # its worker or node died past every retry
                row = _crashed_row(job, res.error)
            else:
                row = res.value
                row["source"] = job.path  # as the local backends write it
                nodes[res.node] += 1
                logger.info("corpus: night %s %s on Ray node %s", job.night, row["status"],
                            res.node)
            rows.append(row)
            counts[row["status"]] += 1
            bar.set_postfix(ok=counts["ok"], failed=counts["failed"], refresh=False)
            bar.update()
    logger.info("corpus: nights per Ray node: %s", dict(nodes))
    for tmp in Path(work).glob("*.tar.tmp*"):  # left by a worker whose node was killed
        tmp.unlink(missing_ok=True)
    return rows


# ---------------------------------------------------------------------------------- build
def _crashed_row(job: _Job, exc: BaseException) -> dict:
    logger.error("corpus: worker for night %s died: %s", job.night, exc)
    subject = job.subject or job.night
    return {"night": job.night, "subject": subject, "split": split_of(subject), "epochs": 0,
            "status": "failed", "error": f"worker died: {type(exc).__name__}: {exc}"[:500],
            "patient_id": job.patient_id or "", "hours": 0.0, "source": job.path,
            "timings": dict.fromkeys(STAGE_KEYS, 0.0)}


def build_corpus(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    workers: int = 1,
    seed: int = 0,
    config: ModelInputConfig | None = None,
    shard_size: int = 1000,
    progress: bool = True,
    segment_min: float = 5.0,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    backend: Literal["process", "ray"] = "process",
    ray_address: str | None = None,
) -> CorpusReport:
    """Build (or resume) a pre-training corpus of epoch and night samples.

    Parameters
    ----------
    inputs : path-like or sequence of path-like
        A folder of EDF/BDF studies (searched recursively; a ``manifest.csv`` in it, as written
        by :func:`sleeplm.simulate.simulate_library`, gives subjects), a ``manifest.csv``, or a
        list of signal files. Annotations are found next to each file.
    out : path-like
        Corpus folder (see the module docstring for its layout).
    workers : int
        Nights processed in parallel (processes).
    seed : int
        Caption seed; each night's seed is derived from it and the night id.
    config : ModelInputConfig, optional
        Channels, model rate, epoch length. Must match the one an interrupted build used.
    shard_size : int
        Samples per shard.
    progress : bool
        Show a progress bar.
    segment_min : float
        Segment length of segment captions, minutes.
    split_fractions : three floats
        train / validation / test fractions of subjects.
    backend : {"process", "ray"}
        ``"ray"`` runs the nights as Ray tasks (``pip install 'sleeplm[ray]'``, imported only
        then): each task reads its night from ``inputs`` and writes ``work/<night>.tar``
        itself, so on a cluster both must be on storage every node mounts at the same path
        (see docs/RAY.md). A night whose node dies is run again on a live node.
    ray_address : str, optional
        The Ray cluster to run on (``host:port`` of its head); None: ``RAY_ADDRESS``, else Ray
        on this machine with ``workers`` CPUs.

    Returns
    -------
    CorpusReport
        Also written to ``out/report.json``; ``out/manifest.csv`` lists every night.

    Raises
    ------
    RayClusterError
        ``backend="ray"`` and nothing answers at ``ray_address``.
    """
    t_start = time.perf_counter()
    if backend not in ("process", "ray"):
        raise ValueError(f"backend must be 'process' or 'ray', got {backend!r}")
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    if backend == "ray":
        _require_ray()  # fail before any work
    cfg = config or ModelInputConfig()
    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    fractions = tuple(float(f) for f in split_fractions)
    fingerprint = {"model_input": cfg.model_dump(mode="json"), "seed": seed,
                   "segment_min": segment_min, "split_fractions": list(fractions),
                   "format": "sleeplm-corpus-2"}
    fp_path = out / "config.json"
    if fp_path.exists():
        old = json.loads(fp_path.read_text())
        if old != fingerprint:
            raise ValueError(f"{out} was built with other settings ({fp_path}); use a new output "
                             "folder, or delete it to rebuild")
    else:
        fp_path.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")

    jobs = _resolve_inputs(inputs, out)
    for stale in work.glob("*.tar.tmp*"):  # nights in flight when an earlier run was killed
        stale.unlink(missing_ok=True)
    done = {job.night for job in jobs if (work / f"{job.night}.tar").exists()}
    todo = [job for job in jobs if job.night not in done]
    logger.info("corpus: %d nights, %d already built, %d to do", len(jobs), len(done), len(todo))

    from tqdm import tqdm

    rows: list[dict] = []
    stats: dict[str, dict] = {}
    for job in jobs:
        if job.night in done:
            try:
                st = _read_stats(work / f"{job.night}.tar")
            except (tarfile.TarError, KeyError, OSError, ValueError) as exc:
                logger.warning("corpus: work tar of %s unreadable (%s); recomputing", job.night,
                               exc)
                (work / f"{job.night}.tar").unlink(missing_ok=True)
                todo.append(job)
                continue
            stats[job.night] = st
            rows.append({**st["row"], "epochs": st["epochs"], "status": "ok", "error": "",
                         "hours": round(st["hours"], 3)})
    args = (str(work), cfg.to_json(), seed, segment_min, fractions)
    bar = tqdm(total=len(todo), unit="night", desc="corpus", disable=not progress)
    new_rows: list[dict] = []
    if backend == "ray":
        new_rows = _run_ray(todo, args, workers, bar, ray_address)
    elif workers <= 1:
        for job in todo:
            new_rows.append(_process_night(job, *args))
            bar.update()
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_process_night, job, *args): job for job in todo}
            for fut in as_completed(futures):
                try:
                    new_rows.append(fut.result())
                except Exception as exc:  # the worker process died (e.g. out of memory)
                    new_rows.append(_crashed_row(futures[fut], exc))
                bar.update()
    bar.close()
    for row in new_rows:
        st = row.pop("stats", None)
        row.pop("timings", None)
        if st is not None:
            stats[row["night"]] = st
    rows.extend(new_rows)
    rows.sort(key=lambda r: r["night"])

    t_pack = time.perf_counter()
    ok_rows = [r for r in rows if r["status"] == "ok"]
    shards = _pack(out, ok_rows, shard_size)
    seconds_packing = time.perf_counter() - t_pack

    import pandas as pd

    manifest = pd.DataFrame(rows).reindex(columns=list(MANIFEST_COLUMNS))
    manifest.to_csv(out / "manifest.csv", index=False)
    report = _report(out, rows, stats, recomputed=len(new_rows), shards=shards,
                     seconds_total=time.perf_counter() - t_start, seconds_packing=seconds_packing)
    (out / "report.json").write_text(report.model_dump_json(indent=2) + "\n")
    if report.nights_failed:
        logger.warning("corpus: %d of %d nights failed; see %s", report.nights_failed,
                       len(rows), out / "manifest.csv")
    return report


def read_shard(path: str | os.PathLike) -> Iterable[dict]:
    """Iterate over the samples of a shard: ``{"key", "json": dict, "x": array or None}``."""
    with tarfile.open(path) as tar:
        current: dict | None = None
        for m in tar:
            key, ext = m.name.split(".", 1)
            if current is not None and current["key"] != key:
                yield current
                current = None
            if current is None:
                current = {"key": key, "json": None, "x": None}
            data = tar.extractfile(m).read()
            if ext == "json":
                current["json"] = json.loads(data)
            elif ext == "x.npy":
                current["x"] = np.load(io.BytesIO(data), allow_pickle=False)
        if current is not None:
            yield current
