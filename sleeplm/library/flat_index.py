"""Exact (flat) cosine search over a mirror of an embedded chromadb collection.

chromadb's HNSW index is approximate: on this project's clustered SleepLM vectors its recall@10
at ``ef_search`` 100 was 0.70 at 100k and 0.39 at 1M epoch vectors, and a metadata filter
(``stage = R``) pushed its query time past a second at 1M (``benchmarks/index.py``). A flat
matrix product over every stored vector is exact and, at up to a few million 128-d vectors,
faster on a small CPU: one ``[N, E] @ [E]`` product (memory-bound, ~0.5 GB read per query at
1M float32 vectors) plus a partial sort.

:class:`FlatVectors` keeps that matrix. Its source of truth on disk is a folder of one
``.npz`` file per *group* (a night: its epoch rows, or its one night row) holding the group's
ids, float32 unit vectors and metadata columns; the files are written atomically next to the
chromadb store by :class:`sleeplm.library.index.EmbeddingIndex`, which keeps both in step. A
``GENERATION`` file changes with every write, so a reader in another process (the batch runner's
workers, the app) sees new nights on its next query: only changed files are read again.

:func:`match_where` evaluates chromadb's ``where`` filter language on the metadata columns
(``{"stage": "R"}``, ``$eq``, ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte``, ``$in``, ``$nin``,
``$and``, ``$or``), with chromadb's rule that a row without the key never matches.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sleeplm._logging import logger

__all__ = ["FlatVectors", "UnsupportedFilterError", "centred_scores", "match_where",
           "group_file_name"]

_GENERATION = "GENERATION"
_SEP = "+"  # never in a safe identifier (letters, digits, '.', '_', '-')
_COMPARE = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less,
            "$lte": np.less_equal}


class UnsupportedFilterError(ValueError):
    """A ``where`` filter uses an operator the flat search does not evaluate."""


def group_file_name(*parts: str) -> str:
    """File name of a group, e.g. ``("p1", "night1") -> "p1+night1.npz"`` (parts must be safe
    identifiers, which never hold ``+``)."""
    for p in parts:
        if not p or _SEP in p or "/" in p or "\\" in p or p in (".", ".."):
            raise ValueError(f"unsafe group name part {p!r}")
    return _SEP.join(parts) + ".npz"


# ------------------------------------------------------------------------------ columns
class _Column:
    """One metadata key over all rows: values (numpy) and which rows have the key. String
    columns are also held as integer codes, so that equality filters compare integers."""

    def __init__(self, values: np.ndarray, present: np.ndarray) -> None:
        self.values = values
        self.present = present
        self.is_str = values.dtype.kind == "U"
        self.is_bool = values.dtype.kind == "b"
        if self.is_str:
            self.labels, self.codes = np.unique(values, return_inverse=True)
        else:
            self.labels, self.codes = None, None

    def equal(self, value: Any) -> np.ndarray:
        if isinstance(value, bool):
            if not self.is_bool:
                return np.zeros(self.present.shape, bool)
            return self.present & (self.values == value)
        if isinstance(value, str):
            if not self.is_str:
                return np.zeros(self.present.shape, bool)
            i = int(np.searchsorted(self.labels, value))
            if i >= len(self.labels) or self.labels[i] != value:
                return np.zeros(self.present.shape, bool)
            return self.present & (self.codes == i)
        if isinstance(value, (int, float, np.integer, np.floating)):
            if self.is_str or self.is_bool:
                return np.zeros(self.present.shape, bool)
            return self.present & (self.values == value)
        raise UnsupportedFilterError(f"cannot compare metadata with {type(value).__name__} "
                                     f"{value!r}; use a string, number or bool")

    def compare(self, op: str, value: Any) -> np.ndarray:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                              np.floating)):
            raise UnsupportedFilterError(f"{op} needs a number; got {value!r}")
        if self.is_str or self.is_bool:
            return np.zeros(self.present.shape, bool)
        return self.present & _COMPARE[op](self.values, value)


def _merge_columns(groups: Sequence[dict[str, np.ndarray]],
                   presence: Sequence[dict[str, np.ndarray]], sizes: Sequence[int]
                   ) -> dict[str, _Column]:
    """One :class:`_Column` per key over the concatenated groups (``presence[g][key]``: which
    rows of group ``g`` have the key, when not all of them do)."""
    keys: dict[str, None] = {}
    for g in groups:
        keys.update(dict.fromkeys(g))
    out: dict[str, _Column] = {}
    for key in keys:
        kinds = {g[key].dtype.kind for g in groups if key in g}
        kind = "U" if "U" in kinds else "f" if "f" in kinds else next(iter(kinds))
        parts, present = [], []
        for g, pres, n in zip(groups, presence, sizes):
            if key in g:
                v = g[key]
                parts.append(v.astype(str) if kind == "U" and v.dtype.kind != "U" else v)
                present.append(pres[key].astype(bool) if key in pres else np.ones(n, bool))
            else:
                parts.append(np.full(n, "" if kind == "U" else False if kind == "b" else 0))
                present.append(np.zeros(n, bool))
        values = np.concatenate(parts)
        if kind == "f":
            values = values.astype(np.float64)
        out[key] = _Column(values, np.concatenate(present))
    return out


def match_where(columns: Mapping[str, _Column], where: Mapping[str, Any] | None, n: int
                ) -> np.ndarray:
    """Rows (bool ``[n]``) that pass a chromadb-style ``where`` filter.

    Raises
    ------
    UnsupportedFilterError
        An operator other than ``$eq $ne $gt $gte $lt $lte $in $nin $and $or``, or a value of
        the wrong type for its operator.
    """
    if not where:
        return np.ones(n, bool)
    keep = np.ones(n, bool)
    for key, cond in where.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, (list, tuple)) or not cond:
                raise UnsupportedFilterError(f"{key} needs a non-empty list of filters")
            parts = [match_where(columns, c, n) for c in cond]
            keep &= np.logical_and.reduce(parts) if key == "$and" else np.logical_or.reduce(parts)
            continue
        if key.startswith("$"):
            raise UnsupportedFilterError(f"unknown logical operator {key!r}")
        col = columns.get(key)
        if col is None:  # no row has the key: nothing matches
            return np.zeros(n, bool)
        if not isinstance(cond, Mapping):
            keep &= col.equal(cond)
            continue
        for op, value in cond.items():
            if op == "$eq":
                keep &= col.equal(value)
            elif op == "$ne":
                keep &= col.present & ~col.equal(value)
            elif op in _COMPARE:
                keep &= col.compare(op, value)
            elif op in ("$in", "$nin"):
                if not isinstance(value, (list, tuple)):
                    raise UnsupportedFilterError(f"{op} needs a list; got {value!r}")
                hit = np.zeros(n, bool)
                for v in value:
                    hit |= col.equal(v)
                keep &= hit if op == "$in" else (col.present & ~hit)
            else:
                raise UnsupportedFilterError(f"unknown operator {op!r} on {key!r}")
    return keep


# --------------------------------------------------------------------------------- store
class FlatVectors:
    """An in-memory matrix of unit vectors with metadata columns, backed by one ``.npz`` per
    group in ``folder``.

    Parameters
    ----------
    folder : Path
        Where the group files live (created if missing).

    Notes
    -----
    Memory: 4 bytes per dimension per row (512 MiB for 1M 128-d vectors), plus the metadata
    columns. The matrix is read lazily, on the first query.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, tuple[int, dict[str, np.ndarray]]] = {}  # name -> (mtime, data)
        self._generation: str | None = None
        self._matrix = np.zeros((0, 0), np.float32)
        self._ids = np.zeros(0, dtype="U1")
        self._columns: dict[str, _Column] = {}
        self._groups: list[str] = []

    # ------------------------------------------------------------------ writing
    def _bump(self) -> None:
        tmp = self.folder / f".{_GENERATION}.{uuid.uuid4().hex}"
        tmp.write_text(uuid.uuid4().hex)
        os.replace(tmp, self.folder / _GENERATION)

    def write(self, name: str, ids: Sequence[str], vectors: np.ndarray,
              metadatas: Sequence[Mapping[str, Any]]) -> None:
        """Write (or replace) group ``name`` (see :func:`group_file_name`): row ids, unit
        vectors ``[n, E]`` and one metadata dict per row (str, int, float or bool values)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids) or len(metadatas) != len(ids):
            raise ValueError(f"group {name}: {len(ids)} ids, {len(metadatas)} metadata rows and "
                             f"vectors of shape {vectors.shape} do not match")
        keys: dict[str, None] = {}
        for m in metadatas:
            keys.update(dict.fromkeys(m))
        arrays: dict[str, np.ndarray] = {"__ids__": np.asarray(list(ids), dtype=str),
                                         "__vectors__": vectors}
        for k in keys:
            if all(k in m for m in metadatas):
                arrays[f"m.{k}"] = np.asarray([m[k] for m in metadatas])
            else:  # some rows lack the key: a fill of the same type, plus a presence mask
                first = next(m[k] for m in metadatas if k in m)
                fill = "" if isinstance(first, str) else False if isinstance(first, bool) else 0
                arrays[f"m.{k}"] = np.asarray([m.get(k, fill) for m in metadatas])
                arrays[f"p.{k}"] = np.asarray([k in m for m in metadatas])
        path = self.folder / name
        tmp = self.folder / f".{name}.{uuid.uuid4().hex}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        self._bump()

    def delete(self, names: Sequence[str]) -> int:
        """Remove groups by file name; returns how many existed."""
        n = 0
        for name in names:
            try:
                (self.folder / name).unlink()
                n += 1
            except FileNotFoundError:
                pass
        if n:
            self._bump()
        return n

    def names(self, prefix: str = "") -> list[str]:
        """Group file names on disk, optionally those starting with ``prefix``."""
        return sorted(p.name for p in self.folder.glob(f"{prefix}*.npz")
                      if not p.name.startswith("."))

    def clear(self) -> None:
        """Remove every group."""
        self.delete(self.names())

    # ------------------------------------------------------------------ reading
    def _refresh(self) -> None:
        gen_path = self.folder / _GENERATION
        try:
            gen = gen_path.read_text()
        except FileNotFoundError:
            gen = ""
        if gen == self._generation:
            return
        seen: dict[str, int] = {}
        for entry in os.scandir(self.folder):
            if entry.name.endswith(".npz") and not entry.name.startswith("."):
                seen[entry.name] = entry.stat().st_mtime_ns
        changed = False
        for name in list(self._files):
            if name not in seen:
                del self._files[name]
                changed = True
        for name, mtime in seen.items():
            if name in self._files and self._files[name][0] == mtime:
                continue
            try:
                with np.load(self.folder / name, allow_pickle=False) as z:
                    self._files[name] = (mtime, {k: z[k] for k in z.files})
            except FileNotFoundError:  # removed between listing and reading
                self._files.pop(name, None)
            changed = True
        self._generation = gen
        if changed or not self._groups and self._files:
            self._assemble()

    def _assemble(self) -> None:
        names = sorted(self._files)
        datas = [self._files[n][1] for n in names]
        sizes = [len(d["__ids__"]) for d in datas]
        dims = {d["__vectors__"].shape[1] for d in datas if len(d["__ids__"])}
        if len(dims) > 1:
            raise ValueError(f"the flat mirror in {self.folder} mixes embedding widths {dims}")
        dim = dims.pop() if dims else 0
        self._matrix = (np.concatenate([d["__vectors__"] for d in datas if len(d["__ids__"])])
                        if dim else np.zeros((0, 0), np.float32))
        self._ids = (np.concatenate([d["__ids__"] for d in datas]) if datas
                     else np.zeros(0, dtype="U1"))
        values = [{k[2:]: v for k, v in d.items() if k.startswith("m.")} for d in datas]
        presence = [{k[2:]: v for k, v in d.items() if k.startswith("p.")} for d in datas]
        merged = _merge_columns(values, presence, sizes)
        self._columns = merged
        self._groups = names
        logger.debug("flat index %s: %d rows in %d groups", self.folder, len(self._ids),
                     len(names))

    def __len__(self) -> int:
        self._refresh()
        return int(len(self._ids))

    def metadata(self, row: int) -> dict[str, Any]:
        """The metadata dict of row ``row`` (as written; keys a row lacks are left out)."""
        out: dict[str, Any] = {}
        for k, col in self._columns.items():
            if col.present[row]:
                v = col.values[row]
                out[k] = v.item() if hasattr(v, "item") else v
        return out

    def centred_search(self, vector: np.ndarray, k: int, where: Mapping[str, Any] | None = None
                       ) -> list[tuple[str, float, dict[str, Any]]]:
        """:meth:`search` on vectors centred on the mean of **all** stored rows: the cosine of
        ``vector - mean`` with ``row - mean`` (see :func:`centred_scores`)."""
        self._refresh()
        n = len(self._ids)
        if n == 0 or k < 1:
            return []
        keep = match_where(self._columns, where, n) if where else np.ones(n, bool)
        scores = np.where(keep, centred_scores(self._matrix, vector), -np.inf)
        return self._top(scores, min(k, int(keep.sum())))

    def _top(self, scores: np.ndarray, k: int) -> list[tuple[str, float, dict[str, Any]]]:
        n = len(scores)
        k = min(k, n)
        if k < 1:
            return []
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.lexsort((top, -scores[top]))]
        return [(str(self._ids[i]), float(scores[i]), self.metadata(int(i))) for i in top]

    def search(self, vector: np.ndarray, k: int, where: Mapping[str, Any] | None = None
               ) -> list[tuple[str, float, dict[str, Any]]]:
        """The ``k`` rows with the highest cosine to the unit ``vector``, best first (ties by
        row order): ``(id, cosine, metadata)``.

        Raises
        ------
        UnsupportedFilterError
            ``where`` uses an operator :func:`match_where` does not evaluate.
        """
        self._refresh()
        n = len(self._ids)
        if n == 0 or k < 1:
            return []
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self._matrix.shape[1]:
            raise ValueError(f"query has {vec.shape[0]} dimensions, the flat index "
                             f"{self._matrix.shape[1]}")
        keep = match_where(self._columns, where, n) if where else None
        scores = self._matrix @ vec
        if keep is not None:
            scores = np.where(keep, scores, -np.inf)
            k = min(k, int(keep.sum()))
        return self._top(scores, k)


def centred_scores(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Cosine of ``vector - m`` with every ``row - m``, ``m`` the mean row of ``matrix``
    (``[N, E]``); ``[N]``. What every row shares (for nights: the stage mix of a typical night,
    the usual heart rate) drops out, so what sets one row apart decides its neighbours. A row
    equal to the mean scores 0."""
    m = np.asarray(matrix, dtype=np.float64)
    mu = m.mean(0)
    d = m - mu
    q = np.asarray(vector, dtype=np.float64).reshape(-1) - mu
    dn = np.linalg.norm(d, axis=1)
    qn = float(np.linalg.norm(q))
    out = np.zeros(len(m))
    ok = dn > 1e-12
    if qn > 1e-12:
        out[ok] = (d[ok] @ q) / (dn[ok] * qn)
    return out
