"""The SleepLM embedding store (sleeplm.library.index) on an embedded chromadb in tmp_path folders."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("chromadb")

from sleeplm.library.index import (  # noqa: E402
    EmbeddingDimensionError,
    EmbeddingFunctionCalledError,
    EmbeddingIndex,
    EpochRecord,
    Hit,
    IndexConfig,
    ModelVersionMismatchError,
    NightRecord,
    NonFiniteEmbeddingError,
    UnsafeIdentifierError,
)

DIM = 16
STAGE_CYCLE = ("W", "N1", "N2", "N3", "R")


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def night_data(patient: str, night: str, n: int, seed: int, profile: str = "healthy_young",
               dim: int = DIM) -> tuple[NightRecord, np.ndarray, list[EpochRecord], np.ndarray]:
    rng = np.random.default_rng(seed)
    epochs = [EpochRecord(patient=patient, night=night, epoch=i, start_s=30.0 * i,
                          clock=f"23:{i // 2 % 60:02d}:{30 * (i % 2):02d}",
                          stage=STAGE_CYCLE[i % 5], position="supine" if i % 3 else "left",
                          profile=profile) for i in range(n)]
    rec = NightRecord(patient=patient, night=night, profile=profile, n_epochs=n,
                      extra={"ahi": float(seed), "tst_min": 400.0 + seed, "simulated": True})
    return rec, unit(rng, 1, dim)[0], epochs, unit(rng, n, dim)


@pytest.fixture
def store(tmp_path):
    """An index with two patients: p1 (nights n1, n2) and p2 (night n1), 40 epochs each."""
    index = EmbeddingIndex(IndexConfig(path=tmp_path / "store", model_version="v1"))
    data = {("p1", "n1"): night_data("p1", "n1", 40, seed=1, profile="osa_moderate"),
            ("p1", "n2"): night_data("p1", "n2", 40, seed=2, profile="osa_moderate"),
            ("p2", "n1"): night_data("p2", "n1", 40, seed=3, profile="insomnia")}
    for args in data.values():
        index.add_night(*args)
    yield index, data
    index.close()


def test_counts_patients_and_has_night(store):
    index, _ = store
    assert index.count() == {"epochs": 120, "nights": 3}
    assert index.patients() == ["p1", "p2"]
    assert index.has_night("p1", "n2") and not index.has_night("p2", "n2")


def test_exact_vector_comes_first_with_score_one(store):
    index, data = store
    _, _, epochs, vecs = data[("p1", "n2")]
    hits = index.query_epochs(vecs[7] * 3.0, k=5)  # scale does not matter: unit-normalised
    assert len(hits) == 5 and all(isinstance(h, Hit) for h in hits)
    top = hits[0]
    assert top.id == "p1/n2/00007" and top.kind == "epoch"
    assert top.score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert top.epoch_record() == epochs[7]
    assert (top.stage, top.start_s, top.clock, top.position, top.profile) == (
        epochs[7].stage, 210.0, epochs[7].clock, epochs[7].position, "osa_moderate")


def test_scores_are_cosine_similarities(store):
    index, data = store
    all_ids, all_vecs = [], []
    for (p, n), (_, _, epochs, vecs) in data.items():
        all_ids += [f"{p}/{n}/{e.epoch:05d}" for e in epochs]
        all_vecs.append(vecs)
    mat = np.concatenate(all_vecs)
    q = unit(np.random.default_rng(99), 1)[0]
    sims = mat @ q
    exact = [all_ids[i] for i in np.argsort(-sims)[:5]]
    hits = index.query_epochs(q, k=5)
    assert [h.id for h in hits] == exact  # 120 rows: HNSW is exact at this size
    for h in hits:
        assert h.score == pytest.approx(sims[all_ids.index(h.id)], abs=1e-5)


def test_stage_filter_and_exclude_patient(store):
    index, data = store
    vecs = data[("p1", "n1")][3]
    q = vecs[4]  # epoch 4 is R
    hits = index.query_epochs(q, k=10, where={"stage": "R"})
    assert hits[0].id == "p1/n1/00004" and all(h.stage == "R" for h in hits)
    assert len(hits) == 10
    hits = index.query_epochs(q, k=10, exclude_patient="p1")
    assert hits and all(h.patient == "p2" for h in hits)
    hits = index.query_epochs(q, k=100, where={"stage": "R"}, exclude_patient="p1")
    assert len(hits) == 8 and all(h.patient == "p2" and h.stage == "R" for h in hits)
    hits = index.query_epochs(q, k=3, where={"patient": {"$ne": "p1"}})
    assert all(h.patient == "p2" for h in hits)


def test_k_larger_than_store_and_invalid_k(store):
    index, _ = store
    q = unit(np.random.default_rng(5), 1)[0]
    assert len(index.query_nights(q, k=50)) == 3
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="k must be"):
            index.query_epochs(q, k=bad)


def test_readding_a_night_replaces_it(store):
    index, data = store
    # Fewer epochs and new vectors: old rows beyond 20 must go, none may be duplicated.
    rec, nvec, epochs, vecs = night_data("p1", "n1", 20, seed=11, profile="osa_moderate")
    index.add_night(rec, nvec, epochs, vecs)
    assert index.count() == {"epochs": 100, "nights": 3}
    hit = index.query_epochs(vecs[3], k=1)[0]
    assert hit.id == "p1/n1/00003" and hit.score == pytest.approx(1.0, abs=1e-5)
    old = data[("p1", "n1")][3]
    assert index.query_epochs(old[30], k=1)[0].id != "p1/n1/00030"
    night_hit = index.query_nights(nvec, k=1)[0]
    assert night_hit.id == "p1/n1" and night_hit.extra["ahi"] == 11.0
    # Same night again, unchanged: nothing grows.
    index.add_night(rec, nvec, epochs, vecs)
    assert index.count() == {"epochs": 100, "nights": 3}


def test_remove_patient(store):
    index, _ = store
    assert index.remove_patient("p1") == 80 + 2
    assert index.count() == {"epochs": 40, "nights": 1}
    assert index.patients() == ["p2"]
    assert not index.has_night("p1", "n1")
    assert index.remove_patient("nobody") == 0
    q = unit(np.random.default_rng(6), 1)[0]
    assert all(h.patient == "p2" for h in index.query_epochs(q, k=40))


def test_persistence_in_a_new_index(tmp_path):
    path = tmp_path / "store"
    rec, nvec, epochs, vecs = night_data("p9", "night-1", 30, seed=4)
    with EmbeddingIndex(IndexConfig(path=path, model_version="v1")) as index:
        index.add_night(rec, nvec, epochs, vecs)
    import chromadb

    chromadb.api.client.SharedSystemClient.clear_system_cache()  # a truly fresh client
    with EmbeddingIndex(IndexConfig(path=path, model_version="v1")) as again:
        assert again.count() == {"epochs": 30, "nights": 1}
        assert again.patients() == ["p9"] and again.has_night("p9", "night-1")
        hit = again.query_epochs(vecs[12], k=1)[0]
        assert hit.id == "p9/night-1/00012" and hit.score == pytest.approx(1.0, abs=1e-5)
        with pytest.raises(EmbeddingDimensionError, match="16-dimensional"):
            again.query_epochs(np.ones(8), k=1)


def test_empty_index_query_returns_nothing(tmp_path):
    with EmbeddingIndex(IndexConfig(path=tmp_path / "empty", model_version="v1")) as index:
        q = unit(np.random.default_rng(0), 1)[0]
        assert index.query_epochs(q) == [] and index.query_nights(q, k=3) == []
        assert index.count() == {"epochs": 0, "nights": 0} and index.patients() == []


def test_model_version_mismatch(store, tmp_path):
    index, _ = store
    other = EmbeddingIndex(IndexConfig(path=tmp_path / "store", model_version="v2"))
    assert other.count()["epochs"] == 120  # still readable for inspection
    rec, nvec, epochs, vecs = night_data("p3", "n1", 5, seed=7)
    with pytest.raises(ModelVersionMismatchError, match="'v1'.*'v2'.*[Rr]ebuild"):
        other.add_night(rec, nvec, epochs, vecs)
    with pytest.raises(ModelVersionMismatchError):
        other.query_epochs(vecs[0])
    assert index.count()["epochs"] == 120
    other.clear()  # rebuild for v2
    other.add_night(rec, nvec, epochs, vecs)
    assert other.count() == {"epochs": 5, "nights": 1}
    other.close()


def test_dimension_errors(store):
    index, _ = store
    rec, nvec, epochs, vecs = night_data("p3", "n1", 5, seed=8, dim=DIM + 4)
    with pytest.raises(EmbeddingDimensionError, match=f"{DIM + 4} dimensions.*{DIM}-dimensional"):
        index.add_night(rec, nvec, epochs, vecs)
    rec, nvec, epochs, vecs = night_data("p3", "n1", 5, seed=8)
    with pytest.raises(EmbeddingDimensionError, match="one row per epoch"):
        index.add_night(rec, nvec, epochs, vecs[:4])
    with pytest.raises(EmbeddingDimensionError, match="1-D"):
        index.query_epochs(vecs[:2])
    assert index.count() == {"epochs": 120, "nights": 3}  # nothing written by failed adds


def test_nan_and_zero_vectors_are_refused(store):
    index, _ = store
    rec, nvec, epochs, vecs = night_data("p3", "n1", 5, seed=9)
    vecs[2, 3] = np.nan
    with pytest.raises(NonFiniteEmbeddingError, match="NaN.*row 2"):
        index.add_night(rec, nvec, epochs, vecs)
    with pytest.raises(NonFiniteEmbeddingError):
        index.query_epochs(np.full(DIM, np.inf))
    with pytest.raises(NonFiniteEmbeddingError, match="zero"):
        index.query_nights(np.zeros(DIM))
    assert isinstance(NonFiniteEmbeddingError("x"), ValueError)
    assert not index.has_night("p3", "n1")


@pytest.mark.parametrize("bad", ["../etc", "a b", "p1/n1", "", ".hidden", "x" * 65, "é"])
def test_hostile_patient_ids(store, bad):
    index, _ = store
    with pytest.raises(ValueError, match="not a safe identifier"):
        EpochRecord(patient=bad, night="n1", epoch=0, start_s=0.0)
    with pytest.raises(ValueError, match="not a safe identifier"):
        NightRecord(patient="p1", night=bad, n_epochs=0)
    with pytest.raises(UnsafeIdentifierError):
        index.remove_patient(bad)
    with pytest.raises(UnsafeIdentifierError):
        index.query_epochs(np.ones(DIM), exclude_patient=bad)


def test_records_are_validated():
    with pytest.raises(ValueError, match="stage"):
        EpochRecord(patient="p", night="n", epoch=0, start_s=0.0, stage="REM")
    with pytest.raises(ValueError, match="clock"):
        EpochRecord(patient="p", night="n", epoch=0, start_s=0.0, clock="25:00:00")
    with pytest.raises(ValueError, match="reserved"):
        NightRecord(patient="p", night="n", n_epochs=1, extra={"patient": "x"})
    with pytest.raises(ValueError):
        IndexConfig(model_version="v1")  # neither path nor host
    with pytest.raises(ValueError):
        IndexConfig(path="x", host="localhost", model_version="v1")


def test_epochs_of_another_night_are_refused(store):
    index, _ = store
    rec, nvec, epochs, vecs = night_data("p3", "n1", 5, seed=10)
    epochs[1] = EpochRecord(patient="p3", night="n2", epoch=1, start_s=30.0)
    with pytest.raises(ValueError, match="belongs to p3/n2"):
        index.add_night(rec, nvec, epochs, vecs)
    epochs[1] = EpochRecord(patient="p3", night="n1", epoch=0, start_s=30.0)
    with pytest.raises(ValueError, match="twice"):
        index.add_night(rec, nvec, epochs, vecs)


def test_nights_collection_query_and_extra_filter(store):
    index, data = store
    rec, nvec, _, _ = data[("p1", "n2")]
    hits = index.query_nights(nvec, k=3)
    assert hits[0].id == "p1/n2" and hits[0].kind == "night"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].night_record() == rec
    assert hits[0].extra == {"ahi": 2.0, "tst_min": 402.0, "simulated": True}
    assert hits[0].n_epochs == 40 and hits[0].profile == "osa_moderate"
    hits = index.query_nights(nvec, k=3, where={"ahi": {"$gte": 2.5}})
    assert [h.id for h in hits] == ["p2/n1"]
    hits = index.query_nights(nvec, k=3, exclude_patient="p1")
    assert [h.id for h in hits] == ["p2/n1"]


def test_chromadb_never_embeds_text(store):
    index, _ = store
    with pytest.raises(EmbeddingFunctionCalledError, match="precomputed"):
        index._epochs.add(ids=["t"], documents=["hello"])
    with pytest.raises(EmbeddingFunctionCalledError):
        index._nights.query(query_texts=["hello"], n_results=1)


def test_batched_upserts_respect_the_max_batch_size(tmp_path):
    index = EmbeddingIndex(IndexConfig(path=tmp_path / "b", model_version="v1"))
    index._max_batch = 7  # force several batches
    rec, nvec, epochs, vecs = night_data("p1", "n1", 30, seed=12)
    index.add_night(rec, nvec, epochs, vecs)
    assert index.count() == {"epochs": 30, "nights": 1}
    index.add_night(rec, nvec, epochs, vecs)  # deletes in batches too
    assert index.count() == {"epochs": 30, "nights": 1}
    assert index.query_epochs(vecs[29], k=1)[0].id == "p1/n1/00029"
    index.close()


# ------------------------------------------------------------------ exact (flat) search
def _ids(hits):
    return [h.id for h in hits]


@pytest.mark.parametrize("where", [
    None, {"stage": "R"}, {"stage": {"$in": ["N2", "N3"]}}, {"stage": {"$nin": ["W", "R"]}},
    {"patient": {"$ne": "p1"}}, {"epoch": {"$gte": 30}}, {"start_s": {"$lt": 300.0}},
    {"$and": [{"stage": "N2"}, {"position": "supine"}]},
    {"$or": [{"stage": "W"}, {"profile": "insomnia"}]},
    {"stage": {"$eq": "N1"}}, {"profile": "nobody"},
])
def test_exact_search_matches_hnsw_on_a_small_store(tmp_path, where):
    """On 120 vectors HNSW is exact, so both paths must return the same hits."""
    exact = EmbeddingIndex(IndexConfig(path=tmp_path / "e", model_version="v1", search="exact"))
    hnsw = EmbeddingIndex(IndexConfig(path=tmp_path / "h", model_version="v1", search="hnsw"))
    for seed, (p, n, prof) in enumerate((("p1", "n1", "osa_moderate"), ("p1", "n2", "osa_moderate"),
                                         ("p2", "n1", "insomnia"))):
        for index in (exact, hnsw):
            index.add_night(*night_data(p, n, 40, seed=seed + 1, profile=prof))
    assert exact._flat and not hnsw._flat
    for q in unit(np.random.default_rng(21), 4):
        a, b = exact.query_epochs(q, k=7, where=where), hnsw.query_epochs(q, k=7, where=where)
        assert _ids(a) == _ids(b)
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
        assert [h.epoch_record() for h in a] == [h.epoch_record() for h in b]
    night_where = {"ahi": {"$gt": 1.5}} if where is None else None
    a, b = exact.query_nights(q, k=3, where=night_where), hnsw.query_nights(q, k=3,
                                                                             where=night_where)
    assert [(h.id, h.extra) for h in a] == [(h.id, h.extra) for h in b]
    # centred night-to-night scores: the same on both paths, and equal to a hand computation
    a = exact.query_nights(q, k=3, where=night_where, centred=True)
    b = hnsw.query_nights(q, k=3, where=night_where, centred=True)
    assert _ids(a) == _ids(b) and [h.score for h in a] == pytest.approx([h.score for h in b])
    nights = {h.id: h for h in exact.query_nights(q, k=3)}
    assert len(nights) == 3
    _assert_centred(exact, q, night_where)
    exact.close()
    hnsw.close()


def _assert_centred(index, q, where):
    """query_nights(centred=True) against numpy on the stored night vectors."""
    rows = {}
    for seed, (p, n, prof) in enumerate((("p1", "n1", "osa_moderate"),
                                         ("p1", "n2", "osa_moderate"), ("p2", "n1", "insomnia"))):
        rec, nvec, _, _ = night_data(p, n, 40, seed=seed + 1, profile=prof)
        rows[f"{p}/{n}"] = (nvec / np.linalg.norm(nvec), rec.extra["ahi"])
    mu = np.mean([v for v, _ in rows.values()], 0)
    qd = q / np.linalg.norm(q) - mu
    want = {rid: float((v - mu) @ qd / np.linalg.norm(v - mu) / np.linalg.norm(qd))
            for rid, (v, ahi) in rows.items() if where is None or ahi > 1.5}
    got = {h.id: h.score for h in index.query_nights(q, k=10, where=where, centred=True)}
    assert got.keys() == want.keys()
    assert [got[k] for k in sorted(got)] == pytest.approx([want[k] for k in sorted(want)],
                                                          abs=1e-5)


def test_exact_search_sees_writes_of_another_client(tmp_path):
    """Two clients on one store (the app and a batch worker): the reader's next query sees
    nights added or removed by the writer."""
    path = tmp_path / "shared"
    reader = EmbeddingIndex(IndexConfig(path=path, model_version="v1"))
    writer = EmbeddingIndex(IndexConfig(path=path, model_version="v1"))
    writer.add_night(*night_data("p1", "n1", 10, seed=1))
    q = night_data("p2", "n1", 10, seed=2)
    assert {h.patient for h in reader.query_epochs(q[3][4], k=20)} == {"p1"}
    writer.add_night(*q)
    hit = reader.query_epochs(q[3][4], k=1)[0]
    assert hit.id == "p2/n1/00004" and hit.score == pytest.approx(1.0, abs=1e-5)
    writer.remove_patient("p2")
    assert {h.patient for h in reader.query_epochs(q[3][4], k=20)} == {"p1"}
    reader.close()
    writer.close()


def test_exact_mirror_is_rebuilt_from_chromadb(tmp_path):
    """A store whose mirror is missing (written before it existed) or out of step gets its
    mirror rebuilt from chromadb on the first query."""
    import shutil

    import chromadb

    from sleeplm.library.index import FLAT_FOLDER

    path = tmp_path / "old"
    data = [night_data("p1", "n1", 25, seed=1), night_data("p2", "n1", 25, seed=2)]
    with EmbeddingIndex(IndexConfig(path=path, model_version="v1", search="hnsw")) as old:
        for d in data:
            old.add_night(*d)
    assert not (path / FLAT_FOLDER).exists()
    chromadb.api.client.SharedSystemClient.clear_system_cache()
    with EmbeddingIndex(IndexConfig(path=path, model_version="v1")) as index:
        hit = index.query_epochs(data[1][3][17], k=1)[0]
        assert hit.id == "p2/n1/00017" and hit.score == pytest.approx(1.0, abs=1e-5)
        assert len(index._flat[index.config.epochs_collection]) == 50
        assert index.query_nights(data[0][1], k=1)[0].extra == data[0][0].extra
    shutil.rmtree(path / FLAT_FOLDER / "sleeplm_epochs")
    chromadb.api.client.SharedSystemClient.clear_system_cache()
    with EmbeddingIndex(IndexConfig(path=path, model_version="v1")) as index:
        assert index.query_epochs(data[0][3][3], k=1)[0].id == "p1/n1/00003"


def test_an_unknown_filter_operator_is_refused(store):
    index, data = store
    q = data[("p1", "n1")][3][0]
    with pytest.raises(Exception):  # chromadb itself refuses the operator
        index.query_epochs(q, k=3, where={"stage": {"$like": "N%"}})


def test_exact_search_needs_an_embedded_store():
    with pytest.raises(ValueError, match="embedded store"):
        IndexConfig(host="127.0.0.1", model_version="v1", search="exact")
    assert not IndexConfig(host="127.0.0.1", model_version="v1").exact


def test_match_where_rules():
    from sleeplm.library.flat_index import UnsupportedFilterError, _merge_columns, match_where

    groups = [{"a": np.array([1, 2, 3]), "s": np.array(["x", "y", "x"])},
              {"a": np.array([4.5, 5.0]), "b": np.array([True, False])}]
    cols = _merge_columns(groups, [{}, {}], [3, 2])
    m = lambda w: match_where(cols, w, 5).tolist()  # noqa: E731
    assert m({"a": {"$gt": 2}}) == [False, False, True, True, True]
    assert m({"s": "x"}) == [True, False, True, False, False]
    assert m({"s": {"$ne": "x"}}) == [False, True, False, False, False]  # no key: no match
    assert m({"b": True}) == [False, False, False, True, False]
    assert m({"missing": 1}) == [False] * 5
    assert m({"$or": [{"s": "y"}, {"a": 5.0}]}) == [False, True, False, False, True]
    assert m({"a": {"$in": [1, 5.0]}}) == [True, False, False, False, True]
    assert m({"a": "1"}) == [False] * 5  # a string never equals a number
    for bad in ({"a": {"$regex": "1"}}, {"$not": [{"a": 1}]}, {"a": {"$gt": "2"}},
                {"a": {"$in": 1}}, {"$and": []}):
        with pytest.raises(UnsupportedFilterError):
            match_where(cols, bad, 5)


# ----------------------------------------------------------------- a real Chroma server
@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    """``chroma run`` (the server chromadb ships) on a free loopback port."""
    import shutil
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    exe = Path(sys.executable).with_name("chroma")
    if not exe.exists() and shutil.which("chroma") is None:
        pytest.skip("the chroma server command is not installed")
    exe = exe if exe.exists() else Path(shutil.which("chroma"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path_factory.mktemp("chroma_server")
    log = open(data / "server.log", "wb")
    proc = subprocess.Popen([str(exe), "run", "--path", str(data / "db"), "--host",
                             "127.0.0.1", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT,
                            env={**__import__("os").environ, "ANONYMIZED_TELEMETRY": "False"})
    import chromadb
    from chromadb.config import Settings

    deadline = time.time() + 60
    while True:
        try:
            chromadb.HttpClient(host="127.0.0.1", port=port,
                                settings=Settings(anonymized_telemetry=False)).heartbeat()
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"chroma server did not start: {(data / 'server.log').read_text()}")
            time.sleep(0.3)
    yield port
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_a_chroma_server_is_a_configuration_change(chroma_server):
    """The same calls against a Chroma server (HNSW search there) as against the embedded
    store: add, query with filters, replace, remove."""
    cfg = IndexConfig(host="127.0.0.1", port=chroma_server, model_version="v1")
    assert cfg.search == "auto" and not cfg.exact
    with EmbeddingIndex(cfg) as index:
        index.clear()
        data = [night_data("p1", "n1", 30, seed=1, profile="osa_severe"),
                night_data("p2", "n1", 30, seed=2, profile="insomnia")]
        for d in data:
            index.add_night(*d)
        assert index.count() == {"epochs": 60, "nights": 2} and not index._flat
        hit = index.query_epochs(data[1][3][9], k=1)[0]
        assert hit.id == "p2/n1/00009" and hit.score == pytest.approx(1.0, abs=1e-5)
        assert hit.epoch_record() == data[1][2][9]
        hits = index.query_epochs(data[1][3][9], k=5, where={"stage": "N3"},
                                  exclude_patient="p2")
        assert hits and all(h.patient == "p1" and h.stage == "N3" for h in hits)
        assert index.query_nights(data[0][1], k=1)[0].extra == data[0][0].extra
        hits = index.query_nights(data[0][1], k=5, centred=True)
        assert [h.id for h in hits] == ["p1/n1", "p2/n1"]  # two nights: +1 and -1
        assert [h.score for h in hits] == pytest.approx([1.0, -1.0], abs=1e-5)
        index.add_night(*data[0])
        assert index.count() == {"epochs": 60, "nights": 2}
        assert index.remove_patient("p1") == 31
        assert index.patients() == ["p2"]
    with EmbeddingIndex(IndexConfig(host="127.0.0.1", port=chroma_server,
                                    model_version="v2")) as other:
        with pytest.raises(ModelVersionMismatchError):
            other.query_epochs(data[1][3][0], k=1)
