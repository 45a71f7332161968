"""The patient library: a folder of studies, processed once and cached.

A library is a folder of studies (EDF/BDF signal files plus their annotation files, or anything
:func:`sleeplm.io.read_recording` reads), optionally with a ``manifest.csv`` as written by
:func:`sleeplm.simulate.simulate_library` (columns ``patient_id``, ``edf``, ``annotations``,
``profile``, ``status``, ...; paths relative to the library folder). Without a manifest every
``*.edf`` / ``*.bdf`` file under the folder is a study (Sleep-EDF ``*-Hypnogram.edf`` files are
annotations, not studies) and its annotation file is found by
:func:`sleeplm.io.annotations.find_annotation_file`.

Opening a patient (:meth:`PatientLibrary.open`) the first time reads the study, computes its
clinical facts (:func:`sleeplm.clinical.clinical_summary`), cuts the model input
(:func:`sleeplm.corpus.preprocess.epoch_tensor`) and embeds every epoch with SleepLM; everything is
written to a cache folder::

    <cache_dir>/<patient>/<key>/
        meta.json                 CacheMeta: key parts, shapes, notes, timings per stage (s)
        facts.json                ClinicalSummary (model_dump_json)
        x.npy                     float16 [N, C, T] model input (opened as a memory map)
        mask.npy                  bool [C] channel present
        invalid.npy               float32 [N, C] fraction of invalid samples per epoch/channel
        stages.npy                <U3 [N] stage labels
        onsets.npy                float64 [N] epoch onsets, s from the recording start
        epoch_embeddings.npy      float32 [N, E] unit-norm epoch embeddings
        night_embedding.npy       float32 [E] L2-normalised mean of the epoch embeddings
        captions/                 captions made on demand later (see ProcessedPatient)

The key is the SHA-256 of the content hashes of the signal and annotation files, the model
version (SHA-256 of the checkpoint's ``config.json`` and ``model.safetensors``), the
:class:`~sleeplm.corpus.preprocess.ModelInputConfig`, the sleeplm version and :data:`CACHE_FORMAT`:
a changed file, model or input contract gives a new key and the study is processed again; an
unchanged one is loaded back in milliseconds (the epoch tensor is memory-mapped, not read).
The folder is written under a temporary name and renamed into place in one step, so a crash
never leaves a half-written cache that would be read as complete. Older keys of the same
patient are removed after a successful processing.

Content hashes are remembered in ``<cache_dir>/hashes.json`` by file size, inode, ``mtime_ns``
and ``ctime_ns`` (like git's index), so reopening a large study does not re-read it; a file
modified within :data:`RACY_SECONDS` of being hashed is always hashed again. Pass
``trust_file_stats=False`` to hash every time.

Patient ids name folders, so they are validated (:func:`validate_patient_id`): no path
separators, no ``..``, no control characters, no leading dot, at most 64 characters, and only
letters, digits, ``.``, ``_`` and ``-``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import difflib
import hashlib
import json
import os
import re
import secrets
import shutil
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sleeplm import __version__
from sleeplm._logging import logger
from sleeplm.clinical.summary import ClinicalSummary
from sleeplm.errors import SleepLMError
from sleeplm.corpus.preprocess import ModelInputConfig
from sleeplm.recording import Recording, safe_identifier

if TYPE_CHECKING:  # sleeplm.model.network imports torch: only when a study has to be embedded
    from sleeplm.model.network import SleepLM

__all__ = [
    "CACHE_FORMAT", "DEFAULT_CACHE_NAME", "MANIFEST_NAME", "MAX_PATIENT_ID_LEN", "CacheMeta",
    "InvalidPatientIdError", "ManifestError", "PatientLibrary", "PatientProcessingError",
    "ProcessedPatient", "StudyEntry", "UnknownPatientError", "cache_key", "embed_epochs",
    "file_sha256", "night_embedding", "patient_id_from_name", "validate_patient_id",
]

#: Version of the cache layout; bump it when what is cached, or how, changes.
CACHE_FORMAT = 5  # 2: unscored studies are staged automatically (auto_staging.json);
#                   3: the facts hold the heart rate around apneas and hypopneas;
#                   4: the SpO2 nadir's evidence gives its clock time;
#                   5: so do the sleep onset's and the first R epoch's
#: Longest accepted patient id, in characters.
MAX_PATIENT_ID_LEN = 64
MANIFEST_NAME = "manifest.csv"
#: Default cache folder, inside the library folder (hidden, so it is never scanned for studies).
DEFAULT_CACHE_NAME = ".sleeplm-cache"
#: Epochs per forward pass when embedding.
EMBED_BATCH = 64
#: A file modified less than this many seconds before it was hashed is hashed again next time.
RACY_SECONDS = 2.0
# Same names as sleeplm.model.network.CONFIG_NAME / WEIGHTS_NAME; not imported from there because
# importing sleeplm.model.network imports torch, which reopening a cached patient must not need.
_CONFIG_NAME, _WEIGHTS_NAME = "config.json", "model.safetensors"
_SIGNAL_SUFFIXES = frozenset({".edf", ".bdf", ".npz"})  # .npz: beat series (sleeplm.io.beats)
_CHUNK = 1 << 20
_KEY_CHARS = 32  # hex characters of the key used as folder name (the full key is in meta.json)
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 3600.0
_META, _FACTS = "meta.json", "facts.json"
#: The automatic staging of a study that came without scored stages (sleeplm.clinical.staging).
_AUTO_STAGING = "auto_staging.json"
_ARRAYS = ("x", "mask", "invalid", "stages", "onsets", "epoch_embeddings", "night_embedding")
_WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                               *(f"lpt{i}" for i in range(1, 10))})
STAGE_KEYS = ("read", "clinical", "tensor", "embed", "write")


# ------------------------------------------------------------------------------------ errors


class InvalidPatientIdError(SleepLMError, ValueError):
    """A patient id that cannot safely name a folder (path separators, ``..``, control
    characters, a leading dot, too long, or characters outside letters, digits, ``._-``)."""


class UnknownPatientError(SleepLMError, KeyError):
    """A valid patient id that the library does not hold."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ManifestError(SleepLMError, ValueError):
    """The library's ``manifest.csv`` is unreadable or lacks the ``edf`` column."""


class PatientProcessingError(SleepLMError):
    """Processing a study failed in a way no more specific error describes."""


# ------------------------------------------------------------------------------- patient ids


def _shown(text: str, limit: int = 40) -> str:
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def validate_patient_id(patient: str) -> str:
    """Check that ``patient`` is safe to use as a folder name, log field and HTML text.

    Parameters
    ----------
    patient : str
        The untrusted id (from a manifest, a URL or a chat message).

    Returns
    -------
    str
        ``patient`` itself.

    Raises
    ------
    InvalidPatientIdError
        Not a string, empty, longer than :data:`MAX_PATIENT_ID_LEN` characters, with a path
        separator, ``..``, a control character or a leading dot, a reserved device name, or
        not equal to its :func:`sleeplm.recording.safe_identifier` form.
    """
    if not isinstance(patient, str):
        raise InvalidPatientIdError(f"a patient id must be a string, got {type(patient).__name__}")
    problem = None
    if not patient:
        problem = "is empty"
    elif any(unicodedata.category(c) == "Cc" for c in patient):
        problem = "contains control characters"
    elif "/" in patient or "\\" in patient or (os.altsep and os.altsep in patient):
        problem = "contains a path separator"
    elif ".." in patient:
        problem = "contains '..'"
    elif patient.startswith("."):
        problem = "starts with a dot"
    elif len(patient) > MAX_PATIENT_ID_LEN:
        problem = f"is {len(patient)} characters long (at most {MAX_PATIENT_ID_LEN})"
    elif patient.split(".")[0].lower() in _WINDOWS_RESERVED:
        problem = "is a reserved device name"
    elif safe_identifier(patient, max_len=MAX_PATIENT_ID_LEN) != patient:
        problem = ("may hold only letters, digits, '.', '_' and '-' and may not end with '.' or "
                   f"'_' (a safe form is {safe_identifier(patient, max_len=MAX_PATIENT_ID_LEN)!r})")
    if problem:
        raise InvalidPatientIdError(f"patient id {_shown(patient)} {problem}; patient ids name "
                                    "cache folders, so they must be plain file names")
    return patient


def patient_id_from_name(name: str) -> str:
    """A valid patient id made from a file name or other untrusted text (never raises).

    Parameters
    ----------
    name : str
        E.g. a signal file's stem, ``"SC4001E0-PSG"``.

    Returns
    -------
    str
        ``safe_identifier(name)`` with runs of dots collapsed and reserved names suffixed, so
        that :func:`validate_patient_id` accepts it.
    """
    pid = safe_identifier(re.sub(r"\.{2,}", ".", str(name)), max_len=MAX_PATIENT_ID_LEN)
    if pid.split(".")[0].lower() in _WINDOWS_RESERVED:
        pid = f"{pid[:MAX_PATIENT_ID_LEN - 8]}_patient"
    return validate_patient_id(pid)


# ------------------------------------------------------------------------------------ models


class StudyEntry(BaseModel):
    """One study of the library, as discovered (nothing read yet).

    Attributes
    ----------
    patient : str
        Validated patient id.
    signal_path : pathlib.Path
        The EDF/BDF file.
    annotation_path : pathlib.Path or None
        Its annotation file (NSRR XML, hypnogram, ...), None when there is none.
    profile : str
        The simulated profile from the manifest ("" when unknown).
    simulated : bool or None
        True for a night written by the sleeplm simulator (known from the manifest, or once
        read, from the EDF header); None when not known yet.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    patient: str
    signal_path: Path
    annotation_path: Path | None = None
    profile: str = ""
    simulated: bool | None = None


class CacheMeta(BaseModel):
    """``meta.json`` of a processed patient: what the cache was made from, and how long it took.

    Attributes
    ----------
    format : int
        :data:`CACHE_FORMAT` of the writer.
    key : str
        Full SHA-256 cache key (the folder name is its first 32 hex characters).
    patient : str
    study : StudyEntry
    signal_sha256, annotation_sha256 : str, str or None
        Content hashes of the input files.
    model_version : str
        SHA-256 of the checkpoint's ``config.json`` and ``model.safetensors``.
    model_dir : str
        Checkpoint folder used.
    input_config : dict
        The :class:`~sleeplm.corpus.preprocess.ModelInputConfig` used.
    sleeplm_version : str
    created_utc : str
        ISO time of processing.
    n_epochs, embed_dim, context_epochs : int
    channels : list of str
        Channel order of ``x`` axis 1.
    present : list of str
        Channels present and usable (``mask`` True).
    simulated : bool or None
        The EDF header says the night was written by the sleeplm simulator.
    notes : list of str
        Reading and model-input notes (masked channels and why, SIMULATED, ...).
    timings : dict of str to float
        Seconds spent per stage: ``read``, ``clinical``, ``tensor``, ``embed``, ``write``.
    """

    model_config = ConfigDict(extra="forbid")

    format: int
    key: str
    patient: str
    study: StudyEntry
    signal_sha256: str
    annotation_sha256: str | None
    model_version: str
    model_dir: str
    input_config: dict[str, Any]
    sleeplm_version: str
    created_utc: str
    n_epochs: int = Field(ge=0)
    embed_dim: int = Field(gt=0)
    context_epochs: int = Field(ge=0)
    channels: list[str]
    present: list[str]
    simulated: bool | None = None
    notes: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)


@dataclasses.dataclass(eq=False)
class ProcessedPatient:
    """A processed study, loaded from its cache folder.

    Captions made on demand (by later tools) belong in :attr:`captions_dir`
    (``<cache folder>/captions/``), one JSON file per request named by a safe identifier of
    the request, each written to a temporary name and renamed into place (``os.replace``), so
    they share the cache folder's key and go away with it when the study or model changes.

    Attributes
    ----------
    patient : str
    study : StudyEntry
    path : pathlib.Path
        The cache folder.
    meta : CacheMeta
    facts : ClinicalSummary
        The report's numbers.
    x : numpy.ndarray
        float16 ``[N, C, T]`` model input, a read-only memory map.
    mask : numpy.ndarray
        bool ``[C]``: channel present and usable.
    invalid : numpy.ndarray
        float32 ``[N, C]``: fraction of each epoch's samples that were invalid.
    stages : numpy.ndarray
        ``<U3 [N]`` stage labels (``UNS`` when unscored).
    onsets_s : numpy.ndarray
        float64 ``[N]``: epoch onsets, seconds from the recording start.
    epoch_embeddings : numpy.ndarray
        float32 ``[N, E]``, unit-norm rows.
    night_embedding : numpy.ndarray
        float32 ``[E]``, unit norm (zeros for a night without epochs).
    from_cache : bool
        True when this call found a complete cache (nothing was read or embedded).
    open_s : float
        Seconds this :meth:`PatientLibrary.open` call took.
    """

    patient: str
    study: StudyEntry
    path: Path
    meta: CacheMeta
    facts: ClinicalSummary
    x: np.ndarray
    mask: np.ndarray
    invalid: np.ndarray
    stages: np.ndarray
    onsets_s: np.ndarray
    epoch_embeddings: np.ndarray
    night_embedding: np.ndarray
    from_cache: bool
    open_s: float = 0.0
    _recording: Recording | None = dataclasses.field(default=None, repr=False)

    @property
    def model_version(self) -> str:
        """SHA-256 of the checkpoint that made the embeddings."""
        return self.meta.model_version

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per processing stage (``read``, ``clinical``, ``tensor``, ``embed``,
        ``write``) when the cache was made."""
        return dict(self.meta.timings)

    @property
    def channels(self) -> tuple[str, ...]:
        """Channel names of ``x`` axis 1."""
        return tuple(self.meta.channels)

    @property
    def n_epochs(self) -> int:
        return int(self.meta.n_epochs)

    @property
    def captions_dir(self) -> Path:
        """Where captions made on demand are kept (created when first asked for)."""
        folder = self.path / "captions"
        folder.mkdir(exist_ok=True)
        return folder

    def recording(self) -> Recording:
        """The study read again, raw signals at their native rates (read once, then kept).

        Raises
        ------
        RecordingFileError, AnnotationError, OSError
            As :func:`sleeplm.io.read_recording`, with the patient id in the message.
        """
        if self._recording is None:
            rec = _read_study(self.study)
            staged = self.path / _AUTO_STAGING
            if rec.stages is None and staged.is_file():
                from sleeplm.clinical.staging import AutoStaging, apply_auto_staging

                apply_auto_staging(rec, AutoStaging.model_validate_json(staged.read_text()))
            self._recording = rec
        return self._recording


# ----------------------------------------------------------------------------------- hashing


def file_sha256(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """SHA-256 (hex) of a file's bytes, read in ``chunk_size``-byte chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


class _HashMemo:
    """Content hashes remembered by file identity and stat (``hashes.json``)."""

    def __init__(self, path: Path, trust_stats: bool):
        self.path, self.trust = path, trust_stats
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False
        if trust_stats and path.is_file():
            try:
                data = json.loads(path.read_text())
                if isinstance(data, dict):
                    self.entries = {k: v for k, v in data.items() if isinstance(v, dict)}
            except (OSError, ValueError) as exc:
                logger.warning("ignoring unreadable hash memo %s: %s", path, exc)

    @staticmethod
    def _stat(st: os.stat_result) -> dict[str, int]:
        return {"size": st.st_size, "ino": st.st_ino, "dev": st.st_dev,
                "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}

    def sha256(self, path: Path) -> str:
        name = str(path.resolve())
        st = path.stat()
        ident = self._stat(st)
        old = self.entries.get(name)
        if (self.trust and old is not None and {k: old.get(k) for k in ident} == ident
                and isinstance(old.get("sha256"), str)):
            return old["sha256"]
        hashed_at = time.time_ns()
        digest = file_sha256(path)
        racy = max(st.st_mtime_ns, st.st_ctime_ns) >= hashed_at - int(RACY_SECONDS * 1e9)
        if self.trust and not racy:
            self.entries[name] = {**ident, "sha256": digest}
            self.dirty = True
        elif name in self.entries:
            del self.entries[name]
            self.dirty = True
        return digest

    def save(self) -> None:
        if not (self.trust and self.dirty):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{_TMP_PREFIX}{self.path.name}.{secrets.token_hex(4)}")
            tmp.write_text(json.dumps(self.entries, sort_keys=True))
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError as exc:  # a memo only saves time; never fail an open over it
            logger.warning("could not save the hash memo %s: %s", self.path, exc)


def cache_key(signal_sha256: str, annotation_sha256: str | None, model_version: str,
              input_config: ModelInputConfig) -> str:
    """The cache key (SHA-256 hex) of a study processed by a model.

    Parameters
    ----------
    signal_sha256, annotation_sha256 : str, str or None
        Content hashes of the signal and annotation files.
    model_version : str
        SHA-256 of the checkpoint files.
    input_config : ModelInputConfig
        Model input contract.
    """
    payload = {"format": CACHE_FORMAT, "sleeplm": __version__, "signal": signal_sha256,
               "annotations": annotation_sha256, "model": model_version,
               "input": json.loads(input_config.to_json())}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------- embedding


def embed_epochs(model: SleepLM, x: np.ndarray, mask: np.ndarray, *,
                 batch_size: int = EMBED_BATCH, progress: bool = False,
                 desc: str = "embedding") -> np.ndarray:
    """Embed every epoch of a night.

    Parameters
    ----------
    model : SleepLM
        Its ``cfg.channels`` / ``samples_per_epoch`` must match ``x``.
    x : numpy.ndarray
        ``[N, C, T]`` model input (float16 or float32; a memory map is fine).
    mask : numpy.ndarray
        bool ``[C]`` channel present.
    batch_size : int
        Epochs per forward pass.
    progress : bool
        Show a tqdm bar.
    desc : str
        The bar's label.

    Returns
    -------
    numpy.ndarray
        float32 ``[N, E]`` unit-norm embeddings. With ``model.cfg.context_epochs = k > 0`` each
        epoch is embedded in its window of ``2k + 1`` neighbours; neighbours beyond the night's
        edges are zeros with every channel masked.
    """
    import torch
    from tqdm import tqdm

    n, C = int(x.shape[0]), int(x.shape[1])
    k, E = int(model.cfg.context_epochs), int(model.cfg.embed_dim)
    out = np.zeros((n, E), dtype=np.float32)
    if n == 0:
        return out
    mask = np.asarray(mask, dtype=bool).reshape(C)
    device = model.logit_scale.device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress,
                          leave=False):
                e = min(n, s + batch_size)
                if k == 0:
                    xb = np.asarray(x[s:e], dtype=np.float32)
                    mb = np.broadcast_to(mask, (e - s, C)).copy()
                else:
                    lo, hi = max(0, s - k), min(n, e + k)
                    block = np.asarray(x[lo:hi], dtype=np.float32)
                    nb = np.arange(s, e)[:, None] + np.arange(-k, k + 1)[None, :]
                    ok = (nb >= 0) & (nb < n)
                    xb = block[np.clip(nb, lo, hi - 1) - lo]  # [b, 2k+1, C, T]
                    xb[~ok] = 0.0
                    mb = ok[:, :, None] & mask[None, None, :]
                emb = model.encode_signal(torch.from_numpy(xb).to(device),
                                          torch.from_numpy(mb).to(device))[0]
                out[s:e] = emb.float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def night_embedding(epoch_embeddings: np.ndarray) -> np.ndarray:
    """L2-normalised mean of a night's epoch embeddings (float32 ``[E]``; zeros when empty)."""
    emb = np.asarray(epoch_embeddings, dtype=np.float32)
    if emb.shape[0] == 0:
        return np.zeros(emb.shape[1], dtype=np.float32)
    mean = emb.mean(axis=0, dtype=np.float64)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 1e-12 else mean).astype(np.float32)


# ----------------------------------------------------------------------------------- helpers


def _reraise_for(patient: str, exc: BaseException) -> NoReturn:
    """Raise ``exc`` again, same type where possible, with the patient id in front."""
    msg = f"patient '{patient}': {exc}"
    try:
        new = type(exc)(msg)
    except TypeError:  # an exception type with another constructor
        new = PatientProcessingError(msg)
    raise new from exc


def _read_study(entry: StudyEntry) -> Recording:
    from sleeplm.io.reader import read_recording

    try:
        return read_recording(entry.signal_path, annotations=entry.annotation_path)
    except (SleepLMError, OSError, ValueError) as exc:
        _reraise_for(entry.patient, exc)


@contextmanager
def _stage(timings: dict[str, float], name: str, patient: str) -> Iterator[None]:
    t = time.perf_counter()
    try:
        yield
    except (SleepLMError, OSError, ValueError) as exc:
        if f"patient '{patient}'" in str(exc):
            raise
        _reraise_for(patient, exc)
    finally:
        timings[name] = round(time.perf_counter() - t, 4)


def _fsync_write(path: Path, data: bytes | None = None, array: np.ndarray | None = None) -> None:
    with open(path, "wb") as f:
        if array is not None:
            np.save(f, array, allow_pickle=False)
        else:
            f.write(data or b"")
        f.flush()
        os.fsync(f.fileno())


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _is_signal_file(p: Path) -> bool:
    return p.suffix.lower() in _SIGNAL_SUFFIXES and "hypnogram" not in p.name.lower()


def _truthy(text: str | None) -> bool | None:
    t = (text or "").strip().lower()
    if t in ("1", "true", "yes", "y"):
        return True
    if t in ("0", "false", "no", "n"):
        return False
    return None


# ----------------------------------------------------------------------------------- library


class PatientLibrary:
    """A folder of studies whose derived artefacts are computed once and cached.

    Parameters
    ----------
    root : pathlib.Path
        The library folder (a ``manifest.csv`` in it lists the studies; else every EDF/BDF
        file under it is one).
    model_dir : pathlib.Path, optional
        SleepLM checkpoint folder (``config.json``, ``model.safetensors``); default
        :func:`sleeplm.model.network.default_checkpoint`. Loaded on first need, once.
    cache_dir : pathlib.Path, optional
        Where processed patients are kept; default ``root / ".sleeplm-cache"``.
    device : str
        Torch device for embedding.
    trust_file_stats : bool
        Reuse a file's remembered content hash while its size, inode and times are unchanged
        (default); False hashes the files on every open.
    manifest : path-like, optional
        A manifest CSV of any name listing the studies (paths relative to ``root``); default
        ``<root>/manifest.csv`` when present, else a scan of ``root``.

    Raises
    ------
    FileNotFoundError
        ``root`` is not a folder.
    ManifestError
        ``manifest.csv`` is unreadable or lacks an ``edf`` column.

    Examples
    --------
    >>> lib = PatientLibrary(Path("library"), model_dir=Path("models/sleeplm-default"))
    >>> p = lib.open(lib.patients()[0])          # processes once; later opens load the cache
    >>> p.facts.value("ahi_3a"), p.epoch_embeddings.shape
    """

    def __init__(self, root: Path, model_dir: Path | None = None, cache_dir: Path | None = None,
                 *, device: str = "cpu", trust_file_stats: bool = True,
                 manifest: Path | None = None):
        self.root = Path(root)
        #: The manifest listing the studies (default ``<root>/manifest.csv`` when present).
        self.manifest = Path(manifest) if manifest is not None else self.root / MANIFEST_NAME
        if not self.root.is_dir():
            raise FileNotFoundError(f"patient library folder {self.root} does not exist (a "
                                    "library is a folder of EDF/BDF studies, optionally with "
                                    "a manifest.csv)")
        self.cache_dir = (Path(cache_dir) if cache_dir is not None
                          else self.root / DEFAULT_CACHE_NAME)
        self.device = device
        self.trust_file_stats = trust_file_stats
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self._model: SleepLM | None = None
        self._model_version: str | None = None
        self._model_cfg: dict[str, Any] | None = None
        self._memo: _HashMemo | None = None
        #: Studies left out at discovery, by patient id (or file), with the reason.
        self.skipped: dict[str, str] = {}
        self._studies = self._discover()
        logger.debug("patient library %s: %d studies, %d skipped", self.root,
                     len(self._studies), len(self.skipped))

    # -- discovery --------------------------------------------------------------------------

    def _discover(self) -> dict[str, StudyEntry]:
        if self.manifest.name != MANIFEST_NAME and not self.manifest.is_file():
            raise ManifestError(f"manifest {self.manifest} does not exist")
        entries = (self._from_manifest(self.manifest) if self.manifest.is_file()
                   else self._from_scan())
        return dict(sorted(entries.items()))

    def _skip(self, what: str, why: str) -> None:
        logger.warning("patient library %s: skipping %s: %s", self.root, what, why)
        self.skipped[what] = why

    def _from_manifest(self, manifest: Path) -> dict[str, StudyEntry]:
        from sleeplm.io.annotations import find_annotation_file

        try:
            with open(manifest, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                columns = set(reader.fieldnames or ())
                rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ManifestError(f"cannot read {manifest}: {exc}") from exc
        if "edf" not in columns:
            raise ManifestError(f"{manifest} has no 'edf' column (columns: "
                                f"{sorted(columns)}); a library manifest lists one study per "
                                "row with its signal file in 'edf', as simulate_library writes")
        from_simulator = {"profile", "seed", "hypnogram_source"} <= columns
        out: dict[str, StudyEntry] = {}
        for i, row in enumerate(rows, start=2):
            edf = (row.get("edf") or "").strip()
            raw_id = (row.get("patient_id") or "").strip() or Path(edf).stem
            what = raw_id or f"row {i}"
            status = (row.get("status") or "ok").strip()
            if status != "ok":
                self._skip(what, f"manifest status is '{status}'")
                continue
            try:
                pid = validate_patient_id(raw_id)
            except InvalidPatientIdError as exc:
                self._skip(f"row {i}", str(exc))
                continue
            if pid in out:
                self._skip(f"{pid} (row {i})", "the patient id is listed twice")
                continue
            if not edf:
                self._skip(pid, "no signal file in the 'edf' column")
                continue
            signal = self.root / edf
            if Path(edf).is_absolute() or not _inside(signal, self.root):
                self._skip(pid, f"signal file {edf!r} is outside the library folder")
                continue
            if not signal.is_file():
                self._skip(pid, f"signal file {edf!r} does not exist")
                continue
            ann_text = (row.get("annotations") or "").strip()
            annotation: Path | None
            if ann_text:
                annotation = self.root / ann_text
                if Path(ann_text).is_absolute() or not _inside(annotation, self.root):
                    self._skip(pid, f"annotation file {ann_text!r} is outside the library folder")
                    continue
                if not annotation.is_file():
                    self._skip(pid, f"annotation file {ann_text!r} does not exist")
                    continue
            else:
                annotation = find_annotation_file(signal)
            simulated = _truthy(row.get("simulated"))
            if simulated is None and from_simulator:
                simulated = True
            out[pid] = StudyEntry(patient=pid, signal_path=signal, annotation_path=annotation,
                                  profile=(row.get("profile") or "").strip(),
                                  simulated=simulated)
        return out

    def _from_scan(self) -> dict[str, StudyEntry]:
        from sleeplm.io.annotations import find_annotation_file

        cache = self.cache_dir.resolve()
        found: list[tuple[str, Path]] = []
        for f in sorted(self.root.rglob("*")):
            rel = f.relative_to(self.root)
            if any(part.startswith(".") for part in rel.parts) or not _is_signal_file(f):
                continue
            if not f.is_file() or cache == f.resolve() or cache in f.resolve().parents:
                continue
            found.append(("_".join(rel.with_suffix("").parts), f))
        out: dict[str, StudyEntry] = {}
        for name, f in found:
            base = patient_id_from_name(name)
            pid, n = base, 1
            while pid in out:
                n += 1
                pid = f"{base[:MAX_PATIENT_ID_LEN - 6]}-{n}"
            out[pid] = StudyEntry(patient=pid, signal_path=f,
                                  annotation_path=find_annotation_file(f))
        return out

    # -- listing ----------------------------------------------------------------------------

    def patients(self) -> list[str]:
        """Patient ids of the library, sorted."""
        return list(self._studies)

    def __len__(self) -> int:
        return len(self._studies)

    def __contains__(self, patient: object) -> bool:
        return isinstance(patient, str) and patient in self._studies

    def study(self, patient: str) -> StudyEntry:
        """The study of ``patient``.

        Raises
        ------
        InvalidPatientIdError
            ``patient`` is not a safe id (see :func:`validate_patient_id`).
        UnknownPatientError
            No such patient; the message gives the library's size and close matches.
        """
        validate_patient_id(patient)
        entry = self._studies.get(patient)
        if entry is not None:
            return entry
        if patient in self.skipped:
            raise UnknownPatientError(f"patient '{patient}' is listed in "
                                      f"{self.root / MANIFEST_NAME} but was left out: "
                                      f"{self.skipped[patient]}")
        ids = self.patients()
        close = difflib.get_close_matches(patient, ids, n=5, cutoff=0.5)
        if not close:  # ids often share a long prefix; try case and substring matches too
            low = patient.lower()
            close = [p for p in ids if low in p.lower() or p.lower() in low][:5]
        hint = (f"close matches: {', '.join(close)}" if close
                else "no close match" + (f"; some ids: {', '.join(ids[:3])}" if ids else ""))
        raise UnknownPatientError(f"no patient '{patient}' in the library at {self.root} "
                                  f"({len(ids)} patients); {hint}")

    # -- model ------------------------------------------------------------------------------

    @property
    def model_dir(self) -> Path:
        """The checkpoint folder (resolved on first use; default ``default_checkpoint()``)."""
        if self._model_dir is None:
            from sleeplm.model.network import default_checkpoint

            self._model_dir = default_checkpoint()
        return self._model_dir

    def _model_config(self) -> dict[str, Any]:
        if self._model_cfg is None:
            path = self.model_dir / _CONFIG_NAME
            if not path.is_file() or not (self.model_dir / _WEIGHTS_NAME).is_file():
                raise FileNotFoundError(
                    f"{self.model_dir} is not a SleepLM checkpoint: it needs {_CONFIG_NAME} and "
                    f"{_WEIGHTS_NAME} (as written by sleeplm.model.network.save_model)")
            cfg = json.loads(path.read_text())
            need = ("channels", "sfreq", "epoch_sec", "context_epochs", "embed_dim")
            if not all(k in cfg for k in need):  # an older or partial config: fill defaults
                from sleeplm.model.network import SleepLMConfig

                cfg = SleepLMConfig.from_json(path.read_text()).model_dump(mode="json")
            self._model_cfg = cfg
        return self._model_cfg

    def input_config(self) -> ModelInputConfig:
        """The model input contract of the checkpoint (its channels, rate and epoch)."""
        cfg = self._model_config()
        return ModelInputConfig(channels=tuple(cfg["channels"]), sfreq=float(cfg["sfreq"]),
                                epoch_sec=float(cfg["epoch_sec"]))

    @property
    def model_version(self) -> str:
        """SHA-256 (hex) of the checkpoint's ``config.json`` and ``model.safetensors`` bytes."""
        if self._model_version is None:
            self._model_config()  # checks the files exist
            memo = self._hash_memo()
            h = hashlib.sha256()
            for name in (_CONFIG_NAME, _WEIGHTS_NAME):
                h.update(name.encode() + b"\0" + memo.sha256(self.model_dir / name).encode())
            memo.save()
            self._model_version = h.hexdigest()
        return self._model_version

    @property
    def model(self) -> SleepLM:
        """The SleepLM, loaded once (eval mode) on first use."""
        if self._model is None:
            from sleeplm.model.network import load_model

            t = time.perf_counter()
            self._model = load_model(self.model_dir, device=self.device)
            logger.info("loaded SleepLM from %s in %.2f s", self.model_dir,
                        time.perf_counter() - t)
        return self._model

    # -- cache ------------------------------------------------------------------------------

    def _hash_memo(self) -> _HashMemo:
        if self._memo is None:
            self._memo = _HashMemo(self.cache_dir / "hashes.json", self.trust_file_stats)
        return self._memo

    def cache_key(self, patient: str) -> str:
        """The current cache key of ``patient`` (hashes its files and the model)."""
        entry = self.study(patient)
        return self._key_parts(entry)[0]

    def _key_parts(self, entry: StudyEntry) -> tuple[str, str, str | None]:
        memo = self._hash_memo()
        try:
            sig = memo.sha256(entry.signal_path)
            ann = memo.sha256(entry.annotation_path) if entry.annotation_path else None
        except OSError as exc:
            _reraise_for(entry.patient, exc)
        memo.save()
        return cache_key(sig, ann, self.model_version, self.input_config()), sig, ann

    def cache_path(self, patient: str) -> Path:
        """The cache folder ``patient`` has (or will have) under the current key."""
        return self.cache_dir / self.study(patient).patient / self.cache_key(patient)[:_KEY_CHARS]

    def is_cached(self, patient: str) -> bool:
        """True when ``patient`` is processed under the current files and model."""
        key = self.cache_key(patient)
        return self._load(self.study(patient), self.cache_dir / patient / key[:_KEY_CHARS],
                          key, from_cache=True, quiet=True) is not None

    def _load(self, entry: StudyEntry, folder: Path, key: str, *, from_cache: bool,
              quiet: bool = False) -> ProcessedPatient | None:
        """The cache in ``folder`` if it is complete and made under ``key``, else None."""
        if not (folder / _META).is_file():
            return None
        try:
            meta = CacheMeta.model_validate_json((folder / _META).read_text())
            if meta.format != CACHE_FORMAT or meta.key != key or meta.patient != entry.patient:
                raise ValueError("it was made under another key or format")
            facts = ClinicalSummary.model_validate_json((folder / _FACTS).read_text())
            arrays: dict[str, np.ndarray] = {}
            for name in _ARRAYS:
                mmap = "r" if name == "x" and meta.n_epochs > 0 else None
                arrays[name] = np.load(folder / f"{name}.npy", mmap_mode=mmap, allow_pickle=False)
            n, C, E = meta.n_epochs, len(meta.channels), meta.embed_dim
            shapes = {"x": (n, C), "mask": (C,), "invalid": (n, C), "stages": (n,),
                      "onsets": (n,), "epoch_embeddings": (n, E), "night_embedding": (E,)}
            for name, shape in shapes.items():
                if arrays[name].shape[:len(shape)] != shape:
                    raise ValueError(f"{name}.npy has shape {arrays[name].shape}, "
                                     f"expected {shape}")
        except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            if not quiet:
                logger.warning("patient %s: cache %s is unusable (%s); processing again",
                               entry.patient, folder, exc)
            return None
        if entry.simulated is None and meta.simulated is not None:
            entry = entry.model_copy(update={"simulated": meta.simulated})
        return ProcessedPatient(
            patient=entry.patient, study=entry, path=folder, meta=meta, facts=facts,
            x=arrays["x"], mask=arrays["mask"], invalid=arrays["invalid"],
            stages=arrays["stages"], onsets_s=arrays["onsets"],
            epoch_embeddings=arrays["epoch_embeddings"],
            night_embedding=arrays["night_embedding"], from_cache=from_cache)

    def open(self, patient: str, progress: bool = True) -> ProcessedPatient:
        """The processed patient: from its cache, or processed now and cached.

        Parameters
        ----------
        patient : str
            Patient id (see :meth:`patients`).
        progress : bool
            Show a progress bar while embedding.

        Returns
        -------
        ProcessedPatient
            ``from_cache`` says whether it was loaded (True) or processed (False).

        Raises
        ------
        InvalidPatientIdError, UnknownPatientError
            See :meth:`study`.
        RecordingFileError, TruncatedFileError, AnnotationError, OSError, ValueError
            The study cannot be read or cut into epochs (the reader's own error, with the
            patient id in the message); nothing is cached.
        FileNotFoundError
            The model checkpoint is missing.
        """
        t0 = time.perf_counter()
        entry = self.study(patient)
        key, sig, ann = self._key_parts(entry)
        folder = self.cache_dir / entry.patient / key[:_KEY_CHARS]
        done = self._load(entry, folder, key, from_cache=True)
        if done is None:
            self._process(entry, folder, key, sig, ann, progress)
            done = self._load(entry, folder, key, from_cache=False)
            if done is None:  # pragma: no cover - only when the disk is failing under us
                raise PatientProcessingError(f"patient '{entry.patient}': the cache written to "
                                             f"{folder} cannot be read back")
        done.open_s = time.perf_counter() - t0
        logger.debug("patient %s: %s in %.3f s", entry.patient,
                     "loaded from cache" if done.from_cache else "processed", done.open_s)
        return done

    # -- processing -------------------------------------------------------------------------

    def _process(self, entry: StudyEntry, folder: Path, key: str, sig: str, ann: str | None,
                 progress: bool) -> None:
        from sleeplm.clinical.summary import clinical_summary
        from sleeplm.corpus.preprocess import epoch_tensor

        pid = entry.patient
        logger.info("processing patient %s (%s)", pid, entry.signal_path.name)
        cfg = self.input_config()
        timings: dict[str, float] = {}
        with _stage(timings, "read", pid):
            rec = _read_study(entry)
        staging = None
        if rec.stages is None:  # unscored: stage it automatically, labelled as such
            from sleeplm.clinical.staging import StagingUnavailable, apply_auto_staging, auto_stage

            with _stage(timings, "auto_staging", pid):
                try:
                    staging = auto_stage(rec)
                    apply_auto_staging(rec, staging)
                except StagingUnavailable as exc:
                    rec.notes.append(f"No scored sleep stages, and no automatic staging: {exc}. "
                                     "Stage-dependent numbers are unavailable; give the scored "
                                     "hypnogram with the study to have them.")
        with _stage(timings, "clinical", pid):
            facts = clinical_summary(rec)
        with _stage(timings, "tensor", pid):
            mi = epoch_tensor(rec, cfg)
        model = self.model
        if tuple(model.cfg.channels) != cfg.channels:  # config.json and weights disagree
            raise PatientProcessingError(f"patient '{pid}': the loaded model's channels "
                                         f"{model.cfg.channels} differ from {cfg.channels}")
        with _stage(timings, "embed", pid):
            emb = embed_epochs(model, mi.x, mi.mask, progress=progress, desc=f"embedding {pid}")
            night = night_embedding(emb)
        simulated = "SIMULATED" in (rec.info.source or "")
        if not mi.mask.any():
            logger.warning("patient %s: none of the model's channels %s is present; its "
                           "embeddings carry no signal", pid, list(cfg.channels))
        study = entry if entry.simulated is not None else entry.model_copy(
            update={"simulated": simulated})
        parent = self.cache_dir / pid
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f"{_TMP_PREFIX}{key[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            t = time.perf_counter()
            arrays = {"x": mi.x, "mask": mi.mask, "invalid": mi.invalid,
                      "stages": np.asarray(mi.stages, dtype="<U3"),
                      "onsets": np.asarray(mi.onsets, dtype=np.float64),
                      "epoch_embeddings": emb, "night_embedding": night}
            for name, arr in arrays.items():
                _fsync_write(tmp / f"{name}.npy", array=arr)
            _fsync_write(tmp / _FACTS, facts.model_dump_json().encode())
            if staging is not None:
                _fsync_write(tmp / _AUTO_STAGING, staging.model_dump_json().encode())
            (tmp / "captions").mkdir()
            timings["write"] = round(time.perf_counter() - t, 4)
            meta = CacheMeta(
                format=CACHE_FORMAT, key=key, patient=pid, study=study, signal_sha256=sig,
                annotation_sha256=ann, model_version=self.model_version,
                model_dir=str(self.model_dir), input_config=json.loads(cfg.to_json()),
                sleeplm_version=__version__,
                created_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                n_epochs=mi.n_epochs, embed_dim=int(emb.shape[1]),
                context_epochs=int(model.cfg.context_epochs), channels=list(mi.channels),
                present=[c for c, m in zip(mi.channels, mi.mask) if m], simulated=simulated,
                notes=list(rec.notes) + list(mi.notes), timings=timings)
            _fsync_write(tmp / _META, meta.model_dump_json(indent=1).encode())
            if folder.exists():  # an unusable leftover, or a concurrent writer that won
                if self._load(entry, folder, key, from_cache=True, quiet=True) is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                    return
                shutil.rmtree(folder)
            try:
                os.replace(tmp, folder)
            except OSError:  # another process renamed its complete copy in first
                if self._load(entry, folder, key, from_cache=True, quiet=True) is None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                return
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("patient %s processed in %.2f s (%s)", pid, sum(timings.values()),
                    ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
        self._remove_old(parent, keep=folder)

    @staticmethod
    def _remove_old(parent: Path, keep: Path) -> None:
        """Remove older keys of a patient, and temporary folders left by crashed runs."""
        now = time.time()
        for old in parent.iterdir():
            if old == keep or not old.is_dir():
                continue
            try:
                if old.name.startswith(_TMP_PREFIX):
                    if now - old.stat().st_mtime < _STALE_TMP_SECONDS:
                        continue  # maybe another process writing right now
                elif not re.fullmatch(f"[0-9a-f]{{{_KEY_CHARS}}}", old.name):
                    continue  # not ours
                shutil.rmtree(old)
                logger.debug("removed old cache %s", old)
            except OSError as exc:
                logger.warning("could not remove old cache %s: %s", old, exc)
