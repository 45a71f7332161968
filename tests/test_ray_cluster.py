"""The Ray backend of the batch and of the corpus build, on a real two-node Ray cluster.

The cluster (:class:`benchmarks.ray_cluster.LocalRayCluster`) is a head node and a worker node
started with ``ray start --head`` / ``ray start --address`` as separate process trees on this
machine, one CPU each; the tests connect to it by address, as a user would to a real cluster.
The library: ten short simulated nights and one corrupt study (a text file named ``.edf``),
an untrained tiny SleepLM, the offline template writer.

* Both backends give the same reports (md, html, json equal byte for byte once the
  "Generated <time>" stamp is masked; figures equal byte for byte; the summary's numbers
  equal), and the same corpus shards byte for byte; the work ran on both nodes (node ids in
  the log).
* A worker node killed (SIGKILL of its raylet) while it runs a patient: the batch finishes on
  the head node, every report exists once, status.json is true (a rerun skips every good
  patient), the corrupt patient fails alone with its reader's error. The same for the corpus.
* An unreachable address fails at once with :class:`RayClusterError`; a missing ``ray``
  package names the extra to install.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_checkpoint, write_tiny_library

from assistant.batch import STATUS_NAME, BatchError, BatchSummary, run_batch
from sleeplm.corpus.build import RayClusterError, build_corpus

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("healthy_young", "osa_moderate", "osa_severe", "insomnia", "plm_disorder")
PLAN = tuple((PROFILES[i % len(PROFILES)], 61 + i, f"SC40{i % 4 + 1}1E0") for i in range(10))
GOOD = [f"sim-{seed:05d}-{profile}" for profile, seed, _ in PLAN]
BROKEN = "sim-broken"
FORMATS = ("md", "html", "json", "pdf")
_STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:\+00:00|Z)")


def _cluster_module():
    spec = importlib.util.spec_from_file_location("ray_cluster_bench",
                                                  ROOT / "benchmarks" / "ray_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(library folder, checkpoint, root): 10 simulated nights and a corrupt study."""
    root = tmp_path_factory.mktemp("raylib")
    lib = root / "lib"
    lib.mkdir()
    write_tiny_library(lib, PLAN)
    (lib / "broken.edf").write_text("this is a text file, not an EDF recording\n")
    man = pd.read_csv(lib / "manifest.csv")
    row = {c: "" for c in man.columns}
    row.update(patient_id=BROKEN, profile="healthy_young", edf="broken.edf", status="ok")
    pd.concat([man, pd.DataFrame([row])]).to_csv(lib / "manifest.csv", index=False)
    return lib, tiny_checkpoint(root), root


@pytest.fixture(scope="module")
def cluster():
    """A running head node plus worker node "b" (a killed worker is replaced by :func:`worker`)."""
    c = _cluster_module().LocalRayCluster(cpus_per_node=1)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in c.env_vars.items():  # this process is the driver
            mp.setenv(key, value)
        try:
            c.start()
            c.add_worker("b")
            yield c
        finally:
            c.shutdown()


@pytest.fixture
def worker(cluster):
    """The name of a live worker node (a fresh one when the last was killed)."""
    alive = [n for n, node in cluster.nodes.items() if n != "head" and node.alive()]
    return alive[0] if alive else cluster.add_worker(f"w{len(cluster.nodes)}").name


@pytest.fixture(scope="module")
def local_batch(env):
    """The batch over the library with the process backend, in this process."""
    lib, ck, root = env
    out = root / "local"
    return run_batch(lib, out, workers=1, formats=FORMATS, progress=False, model_dir=ck), out


@pytest.fixture(scope="module")
def local_corpus(env):
    lib, _, root = env
    out = root / "corpus-local"
    return build_corpus(lib, out, workers=1, shard_size=40, progress=False), out


# ------------------------------------------------------------------------------- helpers
def _nodes_in_log(caplog, what: str, after: float = 0.0) -> dict[str, str]:
    """Item -> Ray node id, from the "<item> <status> on Ray node <id>" log lines (logged after
    ``after``, a time.time())."""
    out = {}
    for rec in caplog.records:
        if rec.created < after:
            continue
        m = re.match(rf"{what}: (?:patient|night) (\S+) \w+ on Ray node (\w+)", rec.getMessage())
        if m:
            assert m.group(1) not in out, f"{m.group(1)} came back twice"
            out[m.group(1)] = m.group(2)
    return out


def _same_reports(a: Path, b: Path, patients: list[str]) -> None:
    """Every file of each patient's folder equal in both (the "Generated" time masked; the PDF,
    whose compressed text holds that time, by page count and size within 1 %)."""
    for pid in patients:
        fa = sorted(p.name for p in (a / pid).iterdir())
        assert fa == sorted(p.name for p in (b / pid).iterdir()), pid
        for name in fa:
            x, y = (a / pid / name).read_bytes(), (b / pid / name).read_bytes()
            if name == STATUS_NAME:
                continue  # hashes of the stamped files and timings: checked by the resume
            if name.endswith(".pdf"):
                pages = re.compile(rb"/Count (\d+)")
                assert pages.findall(x) == pages.findall(y), name
                assert abs(len(x) - len(y)) < 0.01 * len(x), name
            else:
                assert _STAMP.sub(b"T", x) == _STAMP.sub(b"T", y), f"{pid}/{name} differs"


def _numbers(summary: BatchSummary) -> dict[str, dict]:
    keep = ("status", "simulated", "tst_min", "se_pct", "ahi", "odi", "t90_pct", "nadir_spo2",
            "plmi", "arousal_index", "severity", "flags", "error_type", "error", "outputs")
    return {r.patient: {k: getattr(r, k) for k in keep} for r in summary.rows}


def _shards(corpus: Path) -> dict[str, bytes]:
    return {str(p.relative_to(corpus)): p.read_bytes()
            for kind in ("epochs", "nights") for p in sorted((corpus / kind).glob("*.tar"))}


class _KillWhenBusy(threading.Thread):
    """SIGKILLs a node's raylet once ``ready()`` holds and the node runs a task: mid-run."""

    def __init__(self, cluster, node: str, ready) -> None:
        super().__init__(daemon=True)
        self.cluster, self.node, self.ready = cluster, node, ready
        self.killed_at: float | None = None  # time.time() of the kill
        self.busy_pids: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        node = self.cluster.nodes[self.node]
        while not self.stop.is_set():
            busy = node.running_tasks()
            if busy and self.ready():
                self.busy_pids = busy
                self.killed_at = time.time()
                self.cluster.kill_node(self.node)
                return
            time.sleep(0.05)


# ------------------------------------------------------------------------------- errors
def test_unreachable_address_fails_fast(env, tmp_path):
    lib, ck, _ = env
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    t0 = time.monotonic()
    with pytest.raises(RayClusterError, match=rf"127.0.0.1:{port}.*ray start --head"):
        run_batch(lib, tmp_path / "o", backend="ray", ray_address=f"127.0.0.1:{port}",
                  model_dir=ck, progress=False, patients=GOOD[:1])
    with pytest.raises(RayClusterError, match="cannot reach"):
        build_corpus(lib, tmp_path / "c", backend="ray", ray_address=f"127.0.0.1:{port}",
                     progress=False)
    assert time.monotonic() - t0 < 30


def test_missing_ray_names_the_extra(env, tmp_path, monkeypatch):
    lib, ck, _ = env
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(BatchError, match=r"pip install 'sleeplm\[ray\]'"):
        run_batch(lib, tmp_path / "r", backend="ray", model_dir=ck)
    with pytest.raises(ImportError, match=r"sleeplm\[ray\]"):
        build_corpus([], tmp_path / "c", backend="ray", progress=False)


# ------------------------------------------------------------------------ two nodes
@pytest.mark.slow
def test_batch_on_two_nodes_matches_local(env, cluster, worker, local_batch, caplog):
    lib, ck, root = env
    local, local_out = local_batch
    ids = cluster.node_ids()
    assert set(ids) == {"head", worker}
    caplog.set_level(logging.INFO, logger="sleeplm")
    out = root / "ray"
    summary = run_batch(lib, out, workers=1, formats=FORMATS, backend="ray",
                        ray_address=cluster.address, progress=False, model_dir=ck)
    assert summary.backend == "ray" and (summary.n_ok, summary.n_error) == (10, 1)
    assert _numbers(summary) == _numbers(local)
    _same_reports(local_out, out, GOOD)
    ran_on = _nodes_in_log(caplog, "batch")
    assert set(ran_on) == {*GOOD, BROKEN}
    assert set(ran_on.values()) == {ids["head"], ids[worker]}  # both nodes did work
    bad = {r.patient: r for r in summary.rows}[BROKEN]
    assert bad.error_type == "RecordingFileError" and "broken.edf" in bad.error


@pytest.mark.slow
def test_corpus_on_two_nodes_matches_local(env, cluster, worker, local_corpus, caplog):
    lib, _, root = env
    local, local_out = local_corpus
    ids = cluster.node_ids()
    caplog.set_level(logging.INFO, logger="sleeplm")
    out = root / "corpus-ray"
    rep = build_corpus(lib, out, workers=1, shard_size=40, progress=False, backend="ray",
                       ray_address=cluster.address)
    assert (rep.nights, rep.nights_failed) == (local.nights, local.nights_failed) == (10, 1)
    assert _shards(out) == _shards(local_out) and _shards(out)  # byte-identical shards
    assert (out / "manifest.csv").read_bytes() == (local_out / "manifest.csv").read_bytes()
    for key in ("epochs", "epochs_per_stage", "events_per_type", "captions_per_level_system",
                "caption_words", "vocabulary", "shard_bytes", "nights_per_split", "failed"):
        assert getattr(rep, key) == getattr(local, key), key
    ran_on = _nodes_in_log(caplog, "corpus")
    assert len(ran_on) == 11 and set(ran_on.values()) == {ids["head"], ids[worker]}


# ------------------------------------------------------------------------------ faults
@pytest.mark.slow
def test_batch_survives_a_killed_worker_node(env, cluster, worker, local_batch, caplog):
    lib, ck, root = env
    local, local_out = local_batch
    ids = cluster.node_ids()
    caplog.set_level(logging.INFO, logger="sleeplm")
    out = root / "ray-fault"
    killer = _KillWhenBusy(cluster, worker,
                           ready=lambda: len(list(out.glob(f"*/{STATUS_NAME}"))) >= 1)
    killer.start()
    try:
        summary = run_batch(lib, out, workers=1, formats=FORMATS, backend="ray",
                            ray_address=cluster.address, progress=False, model_dir=ck)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed_at is not None, "the worker node was never busy: nothing was killed"
    assert not cluster.nodes[worker].alive()
    # every patient once, each good one ok with the local numbers; the corrupt one alone failed
    assert sorted(r.patient for r in summary.rows) == sorted([*GOOD, BROKEN])
    assert _numbers(summary) == _numbers(local)
    bad = {r.patient: r for r in summary.rows}[BROKEN]
    assert bad.status == "error" and bad.error_type == "RecordingFileError"
    assert "broken.edf" in bad.error
    # the patient the killed node held finished on the head node; nothing came back twice
    ran_on = _nodes_in_log(caplog, "batch")
    assert set(ran_on) == {*GOOD, BROKEN}
    assert set(_nodes_in_log(caplog, "batch", after=killer.killed_at + 2.0).values()) == {
        ids["head"]}  # what was left, the killed node's patient included, ran on the head
    # one complete report per patient and format, no temporary file left
    for pid in GOOD:
        for ext in FORMATS:
            assert len(list((out / pid).glob(f"*-report.{ext}"))) == 1, (pid, ext)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    _same_reports(local_out, out, GOOD)
    again = BatchSummary.model_validate_json((out / "summary.json").read_text())
    assert again.rows == summary.rows
    # the resume files are true: a rerun finds every report complete and redoes only the error
    rerun = run_batch(lib, out, workers=1, formats=FORMATS, progress=False, model_dir=ck)
    status = {r.patient: r.status for r in rerun.rows}
    assert status == {**dict.fromkeys(GOOD, "skipped"), BROKEN: "error"}


@pytest.mark.slow
def test_corpus_survives_a_killed_worker_node(env, cluster, worker, local_corpus, caplog):
    lib, _, root = env
    local, local_out = local_corpus
    ids = cluster.node_ids()
    caplog.set_level(logging.INFO, logger="sleeplm")
    out = root / "corpus-fault"
    killer = _KillWhenBusy(cluster, worker,
                           ready=lambda: len(list((out / "work").glob("*.tar"))) >= 1)
    killer.start()
    try:
        rep = build_corpus(lib, out, workers=1, shard_size=40, progress=False, backend="ray",
                           ray_address=cluster.address)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed_at is not None, "the worker node was never busy: nothing was killed"
    assert not cluster.nodes[worker].alive()
    assert (rep.nights, rep.nights_failed) == (10, 1)
    assert list(rep.failed) == ["broken"] and "RecordingFileError" in rep.failed["broken"]
    man = pd.read_csv(out / "manifest.csv")
    assert sorted(man["night"]) == sorted(pd.read_csv(local_out / "manifest.csv")["night"])
    assert _shards(out) == _shards(local_out)  # every night once, byte-identical
    assert not list((out / "work").glob("*.tmp*"))
    assert len(_nodes_in_log(caplog, "corpus")) == 11
    assert set(_nodes_in_log(caplog, "corpus", after=killer.killed_at + 2.0).values()) == {
        ids["head"]}
    # resuming rebuilds only the failed night and packs the same shards
    again = build_corpus(lib, out, workers=1, shard_size=40, progress=False)
    assert again.nights_recomputed == 1 and _shards(out) == _shards(local_out)
    assert json.loads((out / "report.json").read_text())["nights"] == 10


def test_ray_is_imported_with_usage_statistics_off(monkeypatch):
    """No telemetry: the backends import Ray with its usage statistics disabled."""
    from sleeplm.corpus.build import _require_ray

    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    assert _require_ray().__name__ == "ray"
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
