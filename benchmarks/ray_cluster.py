"""Benchmark: batch reports and corpus nights per hour, local processes vs a two-node Ray cluster.

In one run, on the same simulated patients:

* starts a **real two-node Ray cluster on this machine** (:class:`LocalRayCluster`): a head
  node (``ray start --head``) and a worker node (``ray start --address``), each its own
  process tree with ``--cpus-per-node`` CPUs (default 1), talking over the machine's own
  address; its start-up is timed apart;
* runs :func:`assistant.batch.run_batch` over ``--patients`` simulated nights (offline
  template writer, md + json + pdf) with the process backend (``--workers`` processes,
  default 2) and with ``backend="ray"`` on the cluster: reports per hour of each;
* builds the pre-training corpus of the first ``--nights`` of them
  (:func:`sleeplm.corpus.build.build_corpus`) the same two ways: nights per hour of each,
  and checks that both backends give byte-identical shards.

Both backends have the same number of CPUs (``--workers`` = nodes x ``--cpus-per-node``), so
the ratio is Ray's overhead (connecting, scheduling, a worker process per node that loads
SleepLM once) on one machine, not a cluster's speed-up: on a real cluster the work per node is
the same and the nodes add up. Prints a table and writes ``benchmarks/results/ray_cluster.json``.
The machine is shared and noisy: read the ratios, not the seconds. The nights are SIMULATED.

Usage: ``python benchmarks/ray_cluster.py [--patients 8] [--nights 8] [--hours 1]
[--workers 2] [--checkpoint DIR]``

:class:`LocalRayCluster` is also what ``tests/test_ray_cluster.py`` starts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# run from a checkout: the repository root holds assistant/ and tools/ next to sleeplm/
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Environment of every Ray process started here: no usage statistics (nothing leaves the
#: machine), and a dead node noticed in ~3 s instead of ~15-30 s (GCS health checks).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_period_ms": "1000",
           "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3",
           "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}
_RAY_CLI = "from ray.scripts.scripts import main; main()"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process (Linux /proc)."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


@dataclass
class RayNode:
    """One ``ray start --block`` process (its own process group) and what it started."""

    name: str
    proc: subprocess.Popen
    log: Path
    pids: set[int] = field(default_factory=set)  # every descendant seen, for the clean-up

    def alive(self) -> bool:
        return self.proc.poll() is None

    def refresh(self) -> list[int]:
        """The node's processes now (also remembered for :meth:`LocalRayCluster.shutdown`)."""
        now = _descendants(self.proc.pid)
        self.pids.update(now)
        return now

    def raylet_pid(self) -> int:
        for pid in self.refresh():
            if "/raylet/raylet " in _cmdline(pid) + " ":
                return pid
        raise RuntimeError(f"Ray node {self.name}: no raylet process found (log {self.log})")

    def running_tasks(self, task: str = "_call_on_node") -> list[int]:
        """Worker processes of this node running ``task`` now (Ray titles them ray::<task>)."""
        return [p for p in self.refresh() if _cmdline(p).startswith(f"ray::{task}")]


class LocalRayCluster:
    """A real Ray cluster on this machine: a head node and worker nodes as separate processes.

    Each node is a ``ray start --block`` process started in a new session, with
    ``cpus_per_node`` CPUs and a custom resource ``node_<name>``; they talk over TCP on the
    machine's address, as the nodes of a real cluster do. Everything is stopped by process
    group and pid (never ``ray stop``, which would stop every Ray process of the machine).

    Ray's token authentication is off (``RAY_AUTH_MODE=disabled``): a driver process caches
    its authentication mode when it first imports ray, so a token set up later could not be
    used by it, and nothing is read from or written to ``~/.ray``. The cluster lives for one
    run on random ports; a real cluster should use a token (docs/RAY.md).

    Parameters
    ----------
    cpus_per_node : int
        CPUs each node offers to Ray.
    object_store_mb : int
        Object store of each node, MiB (the tasks return small rows: little is needed).
    """

    def __init__(self, cpus_per_node: int = 1, object_store_mb: int = 100) -> None:
        self.cpus_per_node = cpus_per_node
        self.object_store_mb = object_store_mb
        # short: Ray's Unix sockets live under it (a socket path is at most 107 bytes)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, RayNode] = {}
        #: What the nodes and a driver need in their environment.
        self.env_vars = {**RAY_ENV, "RAY_AUTH_MODE": "disabled"}
        self.env = {**os.environ, **self.env_vars}

    # ------------------------------------------------------------------------------ nodes
    def _start(self, name: str, args: list[str], timeout_s: float = 90.0) -> RayNode:
        log = self.temp_dir / f"{name}.log"
        cmd = [sys.executable, "-c", _RAY_CLI, "start", "--block", "--disable-usage-stats",
               f"--num-cpus={self.cpus_per_node}", f"--resources={json.dumps({f'node_{name}': 1})}",
               f"--object-store-memory={self.object_store_mb * 2**20}",
               "--min-worker-port=0", "--max-worker-port=0", *args]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=self.temp_dir, start_new_session=True)
        node = RayNode(name, proc, log)
        self.nodes[name] = node
        deadline = time.monotonic() + timeout_s
        while b"Ray runtime started" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                self.shutdown()
                raise RuntimeError(f"Ray node {name} did not start:\n"
                                   + log.read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        node.refresh()
        return node

    def start(self) -> LocalRayCluster:
        """Start the head node (GCS on :attr:`port`)."""
        self._start("head", ["--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                             "--include-dashboard=false",
                             f"--ray-client-server-port={_free_port()}",
                             f"--temp-dir={self.temp_dir}"])
        return self

    def add_worker(self, name: str) -> RayNode:
        """Start a worker node that joins the head."""
        if name in self.nodes and self.nodes[name].alive():
            raise ValueError(f"Ray node {name} is already running")
        return self._start(name, [f"--address={self.address}",
                                  "--node-ip-address=127.0.0.1"])

    def kill_node(self, name: str) -> int:
        """SIGKILL the raylet of node ``name`` (a node failure); returns its pid."""
        node = self.nodes[name]
        pid = node.raylet_pid()
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.proc.wait(timeout=30)  # `ray start --block` stops the rest of the node
        return pid

    def node_ids(self) -> dict[str, str]:
        """Node name -> Ray node id of the nodes alive now (connects briefly)."""
        import ray

        if ray.is_initialized():
            raise RuntimeError("this process is already connected to Ray")
        ray.init(address=self.address, log_to_driver=False)
        try:
            out = {}
            for n in ray.nodes():
                names = [k[5:] for k in n["Resources"] if k.startswith("node_")]
                if n["Alive"] and names:
                    out[names[0]] = n["NodeID"]
            return out
        finally:
            ray.shutdown()

    def shutdown(self) -> None:
        """Stop every node (process groups, then any process of theirs left) and clean up."""
        for node in self.nodes.values():
            if node.alive():
                node.refresh()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for node in self.nodes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.poll()
            for pid in node.pids:  # workers run in sessions of their own
                cmd = _cmdline(pid)  # a pid reused by another program is left alone
                if cmd.startswith("ray::") or "/site-packages/ray/" in cmd:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


# ------------------------------------------------------------------------------ benchmark
def _batch_bench() -> object:
    spec = importlib.util.spec_from_file_location("batch_bench", ROOT / "benchmarks" / "batch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shard_bytes(corpus: Path) -> dict[str, bytes]:
    return {str(p.relative_to(corpus)): p.read_bytes()
            for kind in ("epochs", "nights") for p in sorted((corpus / kind).glob("*.tar"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=8, help="batch patients (default 8)")
    parser.add_argument("--nights", type=int, default=8,
                        help="corpus nights, the first of the patients (default 8)")
    parser.add_argument("--hours", type=float, default=1.0,
                        help="night length, hours (default 1; 0: full simulated nights)")
    parser.add_argument("--nodes", type=int, default=2, help="Ray nodes, head included")
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--formats", default="md,json,pdf")
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    for k, v in {**RAY_ENV, "HF_HUB_OFFLINE": "1"}.items():
        os.environ.setdefault(k, v)
    workers = args.nodes * args.cpus_per_node
    formats = tuple(args.formats.split(","))

    from assistant.batch import run_batch
    from sleeplm.corpus.build import build_corpus
    from sleeplm.model.network import default_checkpoint

    ck = args.checkpoint or default_checkpoint()
    results: dict = {"patients": args.patients, "nights": args.nights,
                     "night_hours": args.hours or None, "nodes": args.nodes,
                     "cpus_per_node": args.cpus_per_node, "workers": workers,
                     "formats": list(formats), "checkpoint": str(ck), "simulated": True,
                     "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="sleeplm-ray-bench-") as tmp:
        root = Path(tmp)
        lib = root / "library"
        lib.mkdir()
        t0 = time.perf_counter()
        patients = _batch_bench()._simulate(lib, max(args.patients, args.nights),
                                            args.hours or None, args.seed, workers)
        results["simulation_s"] = round(time.perf_counter() - t0, 1)
        import pandas as pd

        man = pd.read_csv(lib / "manifest.csv")
        results["recording_hours"] = round(float(man["hours"].head(args.patients).sum()), 2)
        edfs = [lib / e for e in man["edf"].head(args.nights)]
        some = patients[: args.patients]
        # processed-patient cache filled once, so both backends do the same work per patient
        run_batch(lib, root / "warm", workers=workers, formats=("json",), progress=False,
                  model_dir=ck, patients=some)

        local = run_batch(lib, root / "local", workers=workers, formats=formats,
                          progress=False, model_dir=ck, patients=some)
        t0 = time.perf_counter()
        corpus_local = build_corpus(edfs, root / "corpus-local", workers=workers, progress=False)
        nights_local_s = time.perf_counter() - t0

        with LocalRayCluster(cpus_per_node=args.cpus_per_node) as cluster:
            os.environ.update(cluster.env_vars)  # this process is the driver
            t0 = time.perf_counter()
            cluster.start()
            for i in range(1, args.nodes):
                cluster.add_worker(f"w{i}")
            results["cluster_start_s"] = round(time.perf_counter() - t0, 1)
            ray_batch = run_batch(lib, root / "ray", workers=workers, formats=formats,
                                  progress=False, model_dir=ck, patients=some, backend="ray",
                                  ray_address=cluster.address)
            t0 = time.perf_counter()
            corpus_ray = build_corpus(edfs, root / "corpus-ray", workers=workers,
                                      progress=False, backend="ray",
                                      ray_address=cluster.address)
            nights_ray_s = time.perf_counter() - t0
        same_shards = _shard_bytes(root / "corpus-local") == _shard_bytes(root / "corpus-ray")

    def per_hour(n: int, seconds: float) -> float:
        return round(n / seconds * 3600.0, 1) if seconds > 0 else 0.0

    rows = {
        "batch": {"unit": "reports/hour", "n": args.patients,
                  "local_s": local.seconds, "ray_s": ray_batch.seconds,
                  "local_per_hour": per_hour(local.n_ok, local.seconds),
                  "ray_per_hour": per_hour(ray_batch.n_ok, ray_batch.seconds),
                  "local_ok": local.n_ok, "ray_ok": ray_batch.n_ok},
        "corpus": {"unit": "nights/hour", "n": args.nights,
                   "local_s": round(nights_local_s, 3), "ray_s": round(nights_ray_s, 3),
                   "local_per_hour": per_hour(corpus_local.nights, nights_local_s),
                   "ray_per_hour": per_hour(corpus_ray.nights, nights_ray_s),
                   "local_ok": corpus_local.nights, "ray_ok": corpus_ray.nights,
                   "identical_shards": same_shards},
    }
    for r in rows.values():
        r["ray_vs_local"] = round(r["ray_per_hour"] / r["local_per_hour"], 2) \
            if r["local_per_hour"] else None
    results["runs"] = rows

    print(f"\n{args.patients} patients / {args.nights} corpus nights, SIMULATED, "
          f"{args.hours or 'full'} h each; local: {workers} processes; Ray: {args.nodes} nodes x "
          f"{args.cpus_per_node} CPU on this machine (start-up {results['cluster_start_s']} s, "
          f"not counted); {os.cpu_count()} cores")
    head = f"{'work':<8}{'unit':<14}{'local s':>9}{'ray s':>9}{'local /h':>10}{'ray /h':>10}" \
           f"{'ray/local':>11}"
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        print(f"{name:<8}{r['unit']:<14}{r['local_s']:>9.1f}{r['ray_s']:>9.1f}"
              f"{r['local_per_hour']:>10.0f}{r['ray_per_hour']:>10.0f}"
              f"{(r['ray_vs_local'] or 0):>11.2f}")
    print(f"ok: batch {local.n_ok}/{ray_batch.n_ok}, corpus {corpus_local.nights}/"
          f"{corpus_ray.nights} (local/ray); corpus shards byte-identical: {same_shards}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_cluster.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if same_shards and local.n_ok == ray_batch.n_ok else 1


if __name__ == "__main__":
    sys.exit(main())
