"""The SleepLM embedding store: precomputed epoch and night embeddings in chromadb.

Two collections hold unit-length SleepLM embeddings with their metadata:

* **epochs** — one row per 30-s epoch, id ``"{patient}/{night}/{epoch:05d}"``, metadata
  ``patient``, ``night``, ``epoch`` (index in the night), ``start_s`` (seconds from the start of
  the recording), ``clock`` (``"HH:MM:SS"`` or ``""``), ``stage`` (W/N1/N2/N3/R/UNS),
  ``position`` and ``profile`` (``""`` where unknown);
* **nights** — one row per night, id ``"{patient}/{night}"``, metadata ``patient``, ``night``,
  ``profile``, ``n_epochs`` and the caller's numeric summary fields (``ahi``, ``tst_min``, ...).

Both use cosine space; :class:`Hit` scores are cosine similarities (``1 - distance``). chromadb
never embeds anything here: the collections carry an embedding function that raises
:class:`EmbeddingFunctionCalledError` when called, so chromadb's default ONNX model is never
downloaded, and anonymised telemetry is switched off.

A store is tied to one model version (``IndexConfig.model_version``, kept in each collection's
metadata) and one embedding width per collection: vectors of another model version or width are
refused with :class:`ModelVersionMismatchError` / :class:`EmbeddingDimensionError`.

>>> config = IndexConfig(path="store/", model_version="sleeplm-0.1")       # doctest: +SKIP
>>> index = EmbeddingIndex(config)                                         # doctest: +SKIP
>>> index.add_night(night, night_vec, epochs, epoch_vecs)                  # doctest: +SKIP
>>> index.query_epochs(vec, k=5, where={"stage": "R"}, exclude_patient="p1")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self

# Before chromadb reads its settings: no anonymised usage reports leave the machine.
os.environ["ANONYMIZED_TELEMETRY"] = "False"

import chromadb  # noqa: E402
import chromadb.errors  # noqa: E402
import numpy as np  # noqa: E402
from chromadb.api.types import EmbeddingFunction  # noqa: E402
from chromadb.config import Settings  # noqa: E402
from chromadb.utils.embedding_functions import register_embedding_function  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator  # noqa: E402

from sleeplm._logging import logger  # noqa: E402
from sleeplm.errors import SleepLMError  # noqa: E402
from sleeplm.library.flat_index import FlatVectors, UnsupportedFilterError, group_file_name  # noqa: E402
from sleeplm.recording import STAGES, safe_identifier  # noqa: E402

__all__ = [
    "EmbeddingDimensionError",
    "EmbeddingFunctionCalledError",
    "EmbeddingIndex",
    "EmbeddingIndexError",
    "EpochRecord",
    "Hit",
    "IndexConfig",
    "ModelVersionMismatchError",
    "NightRecord",
    "NonFiniteEmbeddingError",
    "UnsafeIdentifierError",
    "epoch_id",
    "night_id",
]

#: Metadata keys of a night row that ``NightRecord.extra`` may not use.
NIGHT_RESERVED_KEYS: frozenset[str] = frozenset({"patient", "night", "profile", "n_epochs"})
#: Metadata keys of an epoch row.
EPOCH_KEYS: tuple[str, ...] = ("patient", "night", "epoch", "start_s", "clock", "stage",
                               "position", "profile")

_CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d:[0-5]\d$")
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")
_EXTRA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_PAGE = 10_000  # rows per get() page when listing metadata
#: Sub-folder of an embedded store holding the exact-search mirror (:mod:`sleeplm.library.flat_index`).
FLAT_FOLDER = "sleeplm-flat"


# --------------------------------------------------------------------------------- errors
class EmbeddingIndexError(SleepLMError, ValueError):
    """Base class of the embedding store's errors."""


class ModelVersionMismatchError(EmbeddingIndexError):
    """The store holds embeddings of another SleepLM model version than the one asked for."""


class EmbeddingDimensionError(EmbeddingIndexError):
    """An embedding's width differs from the store's, or an array has the wrong shape."""


class NonFiniteEmbeddingError(EmbeddingIndexError):
    """An embedding holds NaN or infinite values, or is all zeros (no direction)."""


class UnsafeIdentifierError(EmbeddingIndexError):
    """A patient or night id would not survive :func:`sleeplm.recording.safe_identifier`."""


class EmbeddingFunctionCalledError(SleepLMError, RuntimeError):
    """chromadb was asked to embed text: this store only takes precomputed SleepLM vectors."""


def _check_identifier(value: str, what: str) -> str:
    value = str(value)
    safe = safe_identifier(value)
    if safe != value:
        raise UnsafeIdentifierError(
            f"{what} id {value!r} is not a safe identifier (its safe form is {safe!r}): use only "
            "letters, digits, '.', '_' and '-', no leading or trailing '.'/'_', at most 64 "
            "characters; pass sleeplm.recording.safe_identifier(id) if that is what you mean")
    return value


def epoch_id(patient: str, night: str, epoch: int) -> str:
    """Row id of an epoch: ``"{patient}/{night}/{epoch:05d}"``."""
    return f"{patient}/{night}/{int(epoch):05d}"


def night_id(patient: str, night: str) -> str:
    """Row id of a night: ``"{patient}/{night}"``."""
    return f"{patient}/{night}"


# ------------------------------------------------------------------- embedding function
class PrecomputedOnly(EmbeddingFunction):  # type: ignore[type-arg]
    """chromadb embedding function that refuses to embed: vectors come from SleepLM.

    Registered under the name ``"sleeplm-precomputed"`` so that a reopened collection finds it
    again instead of falling back to chromadb's default (downloading) ONNX model.
    """

    def __init__(self) -> None:
        pass

    def __call__(self, input: Any) -> Any:  # chromadb's parameter name
        raise EmbeddingFunctionCalledError(
            "this store holds precomputed SleepLM embeddings and never embeds documents or "
            "query texts; pass embeddings= / query_embeddings= (numpy vectors) instead")

    @staticmethod
    def name() -> str:
        return "sleeplm-precomputed"

    def get_config(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> PrecomputedOnly:
        return PrecomputedOnly()

    def default_space(self) -> Literal["cosine"]:  # type: ignore[override]
        return "cosine"

    def supported_spaces(self) -> list[Literal["cosine"]]:  # type: ignore[override]
        return ["cosine"]


# Called, not used as a decorator: some chromadb 1.0.x releases return None from it.
register_embedding_function(PrecomputedOnly)


# ------------------------------------------------------------------------------ models
class IndexConfig(BaseModel):
    """Where the store lives and which model's embeddings it holds.

    Attributes
    ----------
    path : Path or None
        Folder of an embedded (on-disk) chromadb store; created if missing.
    host : str or None
        Host of a running Chroma server, used instead of ``path`` (``chromadb.HttpClient``).
    port : int
        Port of that server.
    epochs_collection, nights_collection : str
        Collection names (3-512 characters of ``[A-Za-z0-9._-]``).
    model_version : str
        SleepLM model version whose embeddings the store holds; kept in the collections'
        metadata, vectors of another version are refused.
    ef_construction, ef_search, max_neighbors : int
        HNSW parameters, applied when the collections are created (ignored afterwards).
    search : {"auto", "exact", "hnsw"}
        How queries are answered. ``"exact"``: a flat cosine search over every stored vector
        (:mod:`sleeplm.library.flat_index`, a mirror of the collections in ``path/sleeplm-flat``),
        exact and, up to a few million epochs, faster than HNSW on a small CPU; ``"hnsw"``:
        chromadb's approximate index; ``"auto"`` (default): exact for an embedded store, HNSW
        for a Chroma server (whose vectors are not on this machine).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path | None = None
    host: str | None = None
    port: int = Field(default=8000, ge=1, le=65535)
    epochs_collection: str = "sleeplm_epochs"
    nights_collection: str = "sleeplm_nights"
    model_version: str = Field(min_length=1, max_length=200)
    ef_construction: int = Field(default=100, ge=1)
    ef_search: int = Field(default=100, ge=1)
    max_neighbors: int = Field(default=16, ge=2)
    search: Literal["auto", "exact", "hnsw"] = "auto"

    @property
    def exact(self) -> bool:
        """Whether queries use the flat (exact) search."""
        return self.search == "exact" or (self.search == "auto" and self.path is not None)

    @field_validator("epochs_collection", "nights_collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        if not _COLLECTION_NAME.match(value):
            raise ValueError(f"collection name {value!r} must be 3-512 characters of "
                             "[A-Za-z0-9._-], starting and ending with a letter or digit")
        return value

    @model_validator(mode="after")
    def _one_place(self) -> IndexConfig:
        if (self.path is None) == (self.host is None):
            raise ValueError("give exactly one of path (an embedded store folder) or host (a "
                             f"Chroma server); got path={self.path!r}, host={self.host!r}")
        if self.epochs_collection == self.nights_collection:
            raise ValueError("epochs_collection and nights_collection must differ; both are "
                             f"{self.epochs_collection!r}")
        if self.search == "exact" and self.path is None:
            raise ValueError("search='exact' needs an embedded store (path=...): a Chroma "
                             "server's vectors are searched by its own HNSW index; use "
                             "search='auto' or 'hnsw' with host=")
        return self


class EpochRecord(BaseModel):
    """Metadata of one epoch's embedding.

    Attributes
    ----------
    patient, night : str
        Safe identifiers (see :func:`sleeplm.recording.safe_identifier`).
    epoch : int
        Index of the epoch in the night, from 0.
    start_s : float
        Start of the epoch, seconds from the start of the recording.
    clock : str
        Wall-clock start ``"HH:MM:SS"``, or ``""`` if unknown.
    stage : str
        Scored stage, one of W, N1, N2, N3, R, UNS.
    position : str
        Body position (e.g. ``"supine"``), or ``""`` if unknown.
    profile : str
        Known profile of the night (e.g. the simulated profile name), or ``""``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    patient: str
    night: str
    epoch: int = Field(ge=0)
    start_s: float = Field(ge=0, allow_inf_nan=False)
    clock: str = ""
    stage: str = "UNS"
    position: str = ""
    profile: str = ""

    @field_validator("patient", "night")
    @classmethod
    def _safe(cls, value: str, info: Any) -> str:
        try:
            return _check_identifier(value, info.field_name)
        except UnsafeIdentifierError as exc:  # pydantic wraps ValueErrors it sees
            raise ValueError(str(exc)) from None

    @field_validator("clock")
    @classmethod
    def _clock(cls, value: str) -> str:
        if value and not _CLOCK.match(value):
            raise ValueError(f"clock must be 'HH:MM:SS' (24 h) or ''; got {value!r}")
        return value

    @field_validator("stage")
    @classmethod
    def _stage(cls, value: str) -> str:
        if value not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}; got {value!r}")
        return value


ExtraValue = bool | int | float | str


class NightRecord(BaseModel):
    """Metadata of one night's embedding.

    Attributes
    ----------
    patient, night : str
        Safe identifiers.
    profile : str
        Known profile of the night, or ``""``.
    n_epochs : int
        Number of epochs of the night.
    extra : dict of str to str, int, float or bool
        Summary fields stored as their own metadata keys, filterable in ``where``
        (e.g. ``{"ahi": 23.5, "tst_min": 402.0}``; units in the key name or by convention).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    patient: str
    night: str
    profile: str = ""
    n_epochs: int = Field(ge=0)
    extra: dict[str, ExtraValue] = Field(default_factory=dict)

    @field_validator("patient", "night")
    @classmethod
    def _safe(cls, value: str, info: Any) -> str:
        try:
            return _check_identifier(value, info.field_name)
        except UnsafeIdentifierError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("extra")
    @classmethod
    def _extra(cls, value: dict[str, ExtraValue]) -> dict[str, ExtraValue]:
        for key, v in value.items():
            if key in NIGHT_RESERVED_KEYS:
                raise ValueError(f"extra key {key!r} is reserved ({sorted(NIGHT_RESERVED_KEYS)})")
            if not _EXTRA_KEY.match(key):
                raise ValueError(f"extra key {key!r} must be a Python-like name "
                                 "([A-Za-z_][A-Za-z0-9_]*, at most 64 characters)")
            if isinstance(v, float) and not np.isfinite(v):
                raise ValueError(f"extra[{key!r}] must be finite; got {v}")
        return value


class Hit(BaseModel):
    """One query result: the row's id, its cosine similarity and its metadata.

    Epoch hits fill ``epoch``, ``start_s``, ``clock``, ``stage`` and ``position``; night hits fill
    ``n_epochs`` and ``extra``.

    Attributes
    ----------
    id : str
        Row id (``patient/night/epoch`` or ``patient/night``).
    score : float
        Cosine similarity to the query, ``1 - cosine distance`` (1 = same direction).
    kind : {"epoch", "night"}
        Which collection the hit comes from.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    score: float
    kind: Literal["epoch", "night"]
    patient: str
    night: str
    profile: str = ""
    epoch: int | None = None
    start_s: float | None = None
    clock: str = ""
    stage: str = ""
    position: str = ""
    n_epochs: int | None = None
    extra: dict[str, ExtraValue] = Field(default_factory=dict)

    def epoch_record(self) -> EpochRecord:
        """The hit as an :class:`EpochRecord` (epoch hits only)."""
        if self.kind != "epoch":
            raise TypeError(f"hit {self.id!r} is a night, not an epoch")
        return EpochRecord(patient=self.patient, night=self.night, epoch=self.epoch,
                           start_s=self.start_s, clock=self.clock, stage=self.stage,
                           position=self.position, profile=self.profile)

    def night_record(self) -> NightRecord:
        """The hit as a :class:`NightRecord` (night hits only)."""
        if self.kind != "night":
            raise TypeError(f"hit {self.id!r} is an epoch, not a night")
        return NightRecord(patient=self.patient, night=self.night, profile=self.profile,
                           n_epochs=self.n_epochs or 0, extra=self.extra)


# ------------------------------------------------------------------------------- vectors
def _unit_rows(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` (2-D) as float32 rows of unit length; refuses NaN/inf and zero rows."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise EmbeddingDimensionError(f"{what} must be a 2-D array [n, dim] with dim >= 1; "
                                      f"got shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise NonFiniteEmbeddingError(
            f"{what} holds NaN or infinite values in {int(bad.sum())} row(s) (first: row "
            f"{int(np.flatnonzero(bad)[0])}); check the model's output before indexing")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():
        raise NonFiniteEmbeddingError(
            f"{what} has {int(zero.sum())} all-zero row(s) (first: row "
            f"{int(np.flatnonzero(zero)[0])}); a zero vector has no cosine similarity")
    return (arr / norms).astype(np.float32)


def _query_vector(vector: np.ndarray) -> np.ndarray:
    arr = np.asarray(vector)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise EmbeddingDimensionError(f"a query vector must be 1-D [dim]; got shape {arr.shape}")
    return _unit_rows(arr[None, :], "query vector")


# --------------------------------------------------------------------------------- store
class EmbeddingIndex:
    """Epoch and night embeddings of one SleepLM model version, in chromadb.

    Parameters
    ----------
    config : IndexConfig
        Where the store lives (embedded folder or Chroma server) and the model version.

    Notes
    -----
    Opening a store written for another ``model_version`` succeeds, so that it can be inspected
    (:meth:`count`, :meth:`patients`) or emptied (:meth:`remove_patient`, :meth:`clear`), but
    :meth:`add_night` and the queries raise :class:`ModelVersionMismatchError`.
    chromadb has no transactions: a failure in the middle of :meth:`add_night` can leave that
    night partly written; adding it again repairs it.
    """

    def __init__(self, config: IndexConfig) -> None:
        self.config = config
        settings = Settings(anonymized_telemetry=False)
        if config.path is not None:
            path = Path(config.path).expanduser()
            path.mkdir(parents=True, exist_ok=True)
            self._client = chromadb.PersistentClient(path=str(path), settings=settings)
            where = str(path)
        else:
            self._client = chromadb.HttpClient(host=config.host, port=config.port,
                                               settings=settings)
            where = f"http://{config.host}:{config.port}"
        self._max_batch = max(1, int(self._client.get_max_batch_size()))
        self._dims: dict[str, int] = {}  # collection name -> embedding width (cache)
        self._flat: dict[str, FlatVectors] = {}
        self._flat_checked: set[str] = set()
        if config.exact:
            root = Path(config.path).expanduser() / FLAT_FOLDER  # type: ignore[arg-type]
            self._flat = {name: FlatVectors(root / name)
                          for name in (config.epochs_collection, config.nights_collection)}
        self._open_collections()
        logger.info("embedding index at %s (model %s): %s", where, config.model_version,
                    self.count())

    # ------------------------------------------------------------------------ lifecycle
    def _open_collections(self) -> None:
        cfg = self.config
        configuration: Any = {"hnsw": {"space": "cosine", "ef_construction": cfg.ef_construction,
                                       "ef_search": cfg.ef_search,
                                       "max_neighbors": cfg.max_neighbors}}
        meta = {"model_version": cfg.model_version, "sleeplm_index": 1}
        self._epochs = self._client.get_or_create_collection(
            cfg.epochs_collection, configuration=dict(configuration), metadata=dict(meta),
            embedding_function=PrecomputedOnly())
        self._nights = self._client.get_or_create_collection(
            cfg.nights_collection, configuration=dict(configuration), metadata=dict(meta),
            embedding_function=PrecomputedOnly())

    def close(self) -> None:
        """Release the client (an embedded store's files are closed when its last client is)."""
        close = getattr(self._client, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def clear(self) -> None:
        """Delete both collections (every vector and the model-version tie) and recreate them
        empty for ``config.model_version``: the way to rebuild a store for a new model."""
        for name in (self.config.epochs_collection, self.config.nights_collection):
            try:
                self._client.delete_collection(name)
            except (ValueError, chromadb.errors.NotFoundError):  # already gone
                pass
        self._dims.clear()
        for flat in self._flat.values():
            flat.clear()
        self._open_collections()
        logger.info("embedding index cleared for model %s", self.config.model_version)

    # ----------------------------------------------------------------- metadata checks
    def _collection_meta(self, collection: Any) -> dict[str, Any]:
        # Re-read: another client may have written the width since this one opened it.
        fresh = self._client.get_collection(collection.name, embedding_function=PrecomputedOnly())
        return dict(fresh.metadata or {})

    def _check_version(self, collection: Any) -> dict[str, Any]:
        meta = dict(collection.metadata or {})
        stored = meta.get("model_version")
        if stored != self.config.model_version:
            where = self.config.path or f"{self.config.host}:{self.config.port}"
            raise ModelVersionMismatchError(
                f"collection {collection.name!r} at {where} holds embeddings of SleepLM model "
                f"version {stored!r}, not {self.config.model_version!r}; vectors of different "
                "models are not comparable. Rebuild it for the new model (EmbeddingIndex.clear() "
                "then add every night again) or use another path / collection names")
        return meta

    def _dim(self, collection: Any) -> int | None:
        meta = self._check_version(collection)
        if collection.name in self._dims:
            return self._dims[collection.name]
        if "dim" not in meta:
            meta = self._collection_meta(collection)
        if meta.get("dim") is None:
            return None
        self._dims[collection.name] = int(meta["dim"])
        return self._dims[collection.name]

    def _ensure_dim(self, collection: Any, dim: int, what: str) -> None:
        stored = self._dim(collection)
        if stored is None:
            meta = self._collection_meta(collection)
            meta["dim"] = int(dim)
            collection.modify(metadata=meta)
            self._dims[collection.name] = int(dim)
            logger.debug("collection %s: embedding width set to %d", collection.name, dim)
        elif stored != dim:
            raise EmbeddingDimensionError(
                f"{what} have {dim} dimensions but collection {collection.name!r} holds "
                f"{stored}-dimensional embeddings; use the model that built the store, or "
                "rebuild it (EmbeddingIndex.clear()) or use another path")

    # ----------------------------------------------------------------------- writing
    def add_night(self, night: NightRecord, night_embedding: np.ndarray,
                  epochs: Sequence[EpochRecord], epoch_embeddings: np.ndarray) -> None:
        """Add one night (its embedding and its epochs'), replacing what the store held for it.

        Parameters
        ----------
        night : NightRecord
            The night's metadata.
        night_embedding : numpy.ndarray, shape (E,)
            The night's embedding (any scale; stored at unit length).
        epochs : sequence of EpochRecord
            Its epochs, each with the night's ``patient`` and ``night`` and a distinct ``epoch``.
        epoch_embeddings : numpy.ndarray, shape (N, E')
            One embedding per epoch, in the order of ``epochs`` (stored at unit length).

        Raises
        ------
        ModelVersionMismatchError
            The store belongs to another model version.
        EmbeddingDimensionError
            Shapes disagree with each other or with the store's widths.
        NonFiniteEmbeddingError
            A vector holds NaN/inf or is all zeros.
        ValueError
            Epochs of another night, or repeated epoch indices.
        """
        epochs = list(epochs)
        night_vec = _query_vector(night_embedding)
        epoch_arr = np.asarray(epoch_embeddings)
        if epoch_arr.ndim != 2 or epoch_arr.shape[0] != len(epochs):
            raise EmbeddingDimensionError(
                f"epoch_embeddings must be [n_epochs, dim] with one row per epoch record "
                f"({len(epochs)}); got shape {epoch_arr.shape}")
        epoch_vecs = (_unit_rows(epoch_arr, "epoch_embeddings") if epochs
                      else np.zeros((0, 0), np.float32))
        seen: set[int] = set()
        for rec in epochs:
            if (rec.patient, rec.night) != (night.patient, night.night):
                raise ValueError(f"epoch {rec.epoch} belongs to {rec.patient}/{rec.night}, not "
                                 f"to the night being added ({night.patient}/{night.night})")
            if rec.epoch in seen:
                raise ValueError(f"epoch index {rec.epoch} appears twice in "
                                 f"{night.patient}/{night.night}")
            seen.add(rec.epoch)
        if night.n_epochs != len(epochs):
            logger.warning("night %s/%s: n_epochs=%d but %d epoch records given", night.patient,
                           night.night, night.n_epochs, len(epochs))

        self._ensure_dim(self._nights, night_vec.shape[1], "night embeddings")
        if epochs:
            self._ensure_dim(self._epochs, epoch_vecs.shape[1], "epoch embeddings")
        else:
            self._check_version(self._epochs)

        removed = self._delete(self._epochs, {"$and": [{"patient": night.patient},
                                                       {"night": night.night}]})
        nid = night_id(night.patient, night.night)
        self._nights.delete(ids=[nid])
        if removed:
            logger.info("replacing %s: %d old epoch rows removed", nid, removed)

        night_meta: dict[str, Any] = {"patient": night.patient, "night": night.night,
                                      "profile": night.profile, "n_epochs": night.n_epochs,
                                      **night.extra}
        self._nights.upsert(ids=[nid], embeddings=night_vec, metadatas=[night_meta])
        ids = [epoch_id(r.patient, r.night, r.epoch) for r in epochs]
        metas = [{"patient": r.patient, "night": r.night, "epoch": r.epoch,
                  "start_s": float(r.start_s), "clock": r.clock, "stage": r.stage,
                  "position": r.position, "profile": r.profile} for r in epochs]
        for lo in range(0, len(ids), self._max_batch):
            hi = lo + self._max_batch
            self._epochs.upsert(ids=ids[lo:hi], embeddings=epoch_vecs[lo:hi],
                                metadatas=metas[lo:hi])  # type: ignore[arg-type]
        if self._flat:
            group = group_file_name(night.patient, night.night)
            self._flat[self._nights.name].write(group, [nid], night_vec, [night_meta])
            if ids:
                self._flat[self._epochs.name].write(group, ids, epoch_vecs, metas)
            else:
                self._flat[self._epochs.name].delete([group])
        logger.debug("added %s with %d epochs", nid, len(ids))

    def _delete(self, collection: Any, where: dict[str, Any]) -> int:
        ids = self._ids(collection, where)
        for lo in range(0, len(ids), self._max_batch):
            collection.delete(ids=ids[lo:lo + self._max_batch])
        return len(ids)

    def _ids(self, collection: Any, where: dict[str, Any]) -> list[str]:
        out: list[str] = []
        offset = 0
        while True:
            page = collection.get(where=where, include=[], limit=_PAGE, offset=offset)
            out.extend(page["ids"])
            if len(page["ids"]) < _PAGE:
                return out
            offset += _PAGE

    def remove_patient(self, patient: str) -> int:
        """Delete every epoch and night of ``patient``.

        Returns
        -------
        int
            Number of rows removed (epochs plus nights); 0 for an unknown patient.
        """
        _check_identifier(patient, "patient")
        n = self._delete(self._epochs, {"patient": patient})
        n += self._delete(self._nights, {"patient": patient})
        for flat in self._flat.values():
            flat.delete(flat.names(prefix=group_file_name(patient, "x")[:-len("x.npz")]))
        logger.info("removed patient %s: %d rows", patient, n)
        return n

    # ----------------------------------------------------------------------- reading
    def query_epochs(self, vector: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None,
                     exclude_patient: str | None = None) -> list[Hit]:
        """The ``k`` epochs most similar (cosine) to ``vector``, best first.

        Parameters
        ----------
        vector : numpy.ndarray, shape (E,)
            Query embedding (any scale; normalised here).
        k : int
            Number of hits wanted (>= 1); fewer come back when fewer rows match.
        where : dict, optional
            chromadb metadata filter, e.g. ``{"stage": "R"}`` or ``{"patient": {"$ne": "p1"}}``.
        exclude_patient : str, optional
            Leave this patient's epochs out (e.g. the patient being reported on).

        Returns
        -------
        list of Hit
            Empty when the store (or the filter) holds no epoch.

        Notes
        -----
        With ``config.exact`` (an embedded store, by default) the search is exact; with a
        Chroma server it is chromadb's approximate HNSW search, which can miss hits.
        """
        return self._query(self._epochs, "epoch", vector, k, where, exclude_patient)

    def query_nights(self, vector: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None,
                     exclude_patient: str | None = None, centred: bool = False) -> list[Hit]:
        """The ``k`` nights most similar (cosine) to ``vector``, best first.

        Parameters are those of :meth:`query_epochs`; ``where`` can filter on the night's
        ``extra`` fields too (e.g. ``{"ahi": {"$gte": 15}}``). With ``centred`` the score is
        the cosine of the query's and each night's deviation from the mean of every stored
        night (:func:`sleeplm.library.flat_index.centred_scores`): the similarity of night to night,
        with what all nights share left out. Always exact (the nights collection is small).
        """
        if not centred:
            return self._query(self._nights, "night", vector, k, where, exclude_patient)
        self._check_k(k)
        vec, filt = self._query_parts(self._nights, vector, where, exclude_patient)
        flat = self._flat.get(self._nights.name)
        if flat is not None:
            self._check_mirror(self._nights, flat)
            found = flat.centred_search(vec[0], int(k), filt)
        elif self._nights.count() == 0:
            return []
        else:
            found = self._centred_from_chroma(vec[0], int(k), filt)
        return [_hit("night", rid, score, meta) for rid, score, meta in found]

    def _centred_from_chroma(self, vec: np.ndarray, k: int, filt: dict[str, Any] | None
                             ) -> list[tuple[str, float, dict[str, Any]]]:
        from sleeplm.library.flat_index import centred_scores

        ids, vecs, metas = [], [], []
        offset = 0
        while True:
            page = self._nights.get(include=["embeddings", "metadatas"], limit=_PAGE,
                                    offset=offset)
            ids += list(page["ids"])
            vecs += [np.asarray(v, dtype=np.float32) for v in page["embeddings"]]
            metas += [dict(m or {}) for m in page["metadatas"]]
            if len(page["ids"]) < _PAGE:
                break
            offset += _PAGE
        scores = centred_scores(np.stack(vecs), vec)
        allowed = set(self._ids(self._nights, filt)) if filt else None
        order = sorted((i for i in range(len(ids)) if allowed is None or ids[i] in allowed),
                       key=lambda i: (-scores[i], i))[:k]
        return [(ids[i], float(scores[i]), metas[i]) for i in order]

    @staticmethod
    def _check_k(k: Any) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1; got {k!r}")

    def _query_parts(self, collection: Any, vector: np.ndarray, where: Mapping[str, Any] | None,
                     exclude_patient: str | None) -> tuple[np.ndarray, dict[str, Any] | None]:
        vec = _query_vector(vector)
        dim = self._dim(collection)
        if dim is not None and vec.shape[1] != dim:
            raise EmbeddingDimensionError(
                f"query vector has {vec.shape[1]} dimensions but collection "
                f"{collection.name!r} holds {dim}-dimensional embeddings")
        clauses: list[dict[str, Any]] = [dict(where)] if where else []
        if exclude_patient is not None:
            clauses.append({"patient": {"$ne": _check_identifier(exclude_patient, "patient")}})
        filt = None if not clauses else clauses[0] if len(clauses) == 1 else {"$and": clauses}
        return vec, filt

    def _query(self, collection: Any, kind: Literal["epoch", "night"], vector: np.ndarray, k: int,
               where: Mapping[str, Any] | None, exclude_patient: str | None) -> list[Hit]:
        self._check_k(k)
        vec, filt = self._query_parts(collection, vector, where, exclude_patient)
        flat = self._flat.get(collection.name)
        if flat is not None:
            self._check_mirror(collection, flat)
            try:
                return [_hit(kind, rid, score, meta)
                        for rid, score, meta in flat.search(vec[0], int(k), filt)]
            except UnsupportedFilterError as exc:
                logger.info("exact search cannot evaluate filter %s (%s): HNSW instead", filt,
                            exc)
        n = collection.count()
        if n == 0:
            return []
        res = collection.query(query_embeddings=vec, n_results=int(min(k, n)), where=filt,
                               include=["metadatas", "distances"])
        hits = []
        for rid, dist, meta in zip(res["ids"][0], res["distances"][0], res["metadatas"][0]):
            hits.append(_hit(kind, rid, 1.0 - float(dist), dict(meta or {})))
        return hits

    def _check_mirror(self, collection: Any, flat: FlatVectors) -> None:
        """Once per collection and process: the flat mirror holds as many rows as chromadb;
        otherwise (a store written before the mirror existed, or a write cut short) it is
        rebuilt from chromadb's vectors."""
        if collection.name in self._flat_checked:
            return
        n = collection.count()
        if len(flat) != n:
            logger.warning("exact-search mirror of %s holds %d rows, chromadb %d: rebuilding it "
                           "from chromadb", collection.name, len(flat), n)
            self._rebuild_mirror(collection, flat)
        self._flat_checked.add(collection.name)

    def _rebuild_mirror(self, collection: Any, flat: FlatVectors) -> None:
        groups: dict[str, tuple[list[str], list[np.ndarray], list[dict[str, Any]]]] = {}
        offset = 0
        while True:
            page = collection.get(include=["embeddings", "metadatas"], limit=_PAGE,
                                  offset=offset)
            for rid, vec, meta in zip(page["ids"], page["embeddings"], page["metadatas"]):
                meta = dict(meta or {})
                g = groups.setdefault(group_file_name(str(meta["patient"]), str(meta["night"])),
                                      ([], [], []))
                g[0].append(rid)
                g[1].append(np.asarray(vec, dtype=np.float32))
                g[2].append(meta)
            if len(page["ids"]) < _PAGE:
                break
            offset += _PAGE
        flat.clear()
        for name, (ids, vecs, metas) in groups.items():
            order = np.argsort(ids, kind="stable")
            flat.write(name, [ids[i] for i in order], np.stack([vecs[i] for i in order]),
                       [metas[i] for i in order])

    def patients(self) -> list[str]:
        """Sorted ids of the patients with at least one night in the store."""
        out: set[str] = set()
        offset = 0
        while True:
            page = self._nights.get(include=["metadatas"], limit=_PAGE, offset=offset)
            out.update(str(m["patient"]) for m in page["metadatas"] or [] if m)
            if len(page["ids"]) < _PAGE:
                return sorted(out)
            offset += _PAGE

    def count(self) -> dict[str, int]:
        """Rows per collection: ``{"epochs": n, "nights": m}``."""
        return {"epochs": int(self._epochs.count()), "nights": int(self._nights.count())}

    def has_night(self, patient: str, night: str) -> bool:
        """Whether the store holds this night."""
        _check_identifier(patient, "patient")
        _check_identifier(night, "night")
        return bool(self._nights.get(ids=[night_id(patient, night)], include=[])["ids"])


def _hit(kind: Literal["epoch", "night"], rid: str, score: float, meta: dict[str, Any]) -> Hit:
    base = {"id": rid, "score": score, "kind": kind, "patient": str(meta.get("patient", "")),
            "night": str(meta.get("night", "")), "profile": str(meta.get("profile", ""))}
    if kind == "epoch":
        return Hit(**base, epoch=int(meta["epoch"]), start_s=float(meta["start_s"]),
                   clock=str(meta.get("clock", "")), stage=str(meta.get("stage", "")),
                   position=str(meta.get("position", "")))
    extra = {key: v for key, v in meta.items() if key not in NIGHT_RESERVED_KEYS}
    return Hit(**base, n_epochs=int(meta.get("n_epochs", 0)), extra=extra)
