"""Benchmark: the SleepLM embedding store, its exact (flat) search and chromadb's HNSW, against
bare numpy.

For each size N in ``--sizes``, in one run:

* builds an :class:`sleeplm.library.index.EmbeddingIndex` in a fresh temporary folder from N synthetic
  unit vectors (dim 128) laid out like real epochs: nights of ``--epochs-per-night`` epochs,
  stages drawn with typical proportions, vectors clustered by stage and by night (real
  embeddings are not uniform on the sphere, and HNSW recall depends on that), added night by
  night through ``add_night`` — the build throughput is vectors/s of that whole path;
* times ``--queries`` queries (k = 10, vectors of a held-out night), without a filter and with
  ``where={"stage": "R"}`` (about 20 % of the rows), through ``query_epochs`` of two clients of
  that one store: ``search="exact"`` (the default for an embedded store: the flat mirror of
  :mod:`sleeplm.library.flat_index`, metadata filter included, hits built as ``Hit`` objects) and
  ``search="hnsw"`` (chromadb's approximate index, as a Chroma server would answer);
* times the floor on the same vectors and queries: bare exact brute-force search in numpy (one
  matrix product, ``argpartition``, sort of the k best; the filter as a precomputed mask);
* reports recall@10 of both clients' hits against the bare exact ones (1.0 for the flat path
  by construction, checked).

Prints a table and writes ``benchmarks/results/index.json``. The machine is shared and noisy:
read the ratios, not the milliseconds.

Usage: ``python benchmarks/index.py [--sizes 100000 1000000] [--queries 200] [--ef-search 100]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

STAGES = ("W", "N1", "N2", "N3", "R")
STAGE_P = (0.12, 0.06, 0.47, 0.15, 0.20)  # typical share of a night's epochs


class Generator:
    """Synthetic epoch embeddings: stage centroid + night offset + noise, unit length."""

    def __init__(self, dim: int, seed: int) -> None:
        self.dim = dim
        self.rng = np.random.default_rng(seed)
        c = self.rng.normal(size=(len(STAGES), dim))
        self.centroids = c / np.linalg.norm(c, axis=1, keepdims=True)

    def night(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(stage indices [n], float32 unit vectors [n, dim])`` of one night."""
        rng = self.rng
        stages = rng.choice(len(STAGES), size=n, p=STAGE_P)
        offset = rng.normal(size=self.dim) / np.sqrt(self.dim)
        x = (self.centroids[stages] + 0.6 * offset
             + rng.normal(size=(n, self.dim)) / np.sqrt(self.dim))
        return stages, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_topk(mat: np.ndarray, q: np.ndarray, k: int,
               mask: np.ndarray | None = None) -> np.ndarray:
    """Row indices of the k largest cosine similarities (unit rows), best first."""
    sims = mat @ q
    if mask is not None:
        sims = np.where(mask, sims, -np.inf)
        k = min(k, int(mask.sum()))
    top = np.argpartition(-sims, k - 1)[:k]
    return top[np.argsort(-sims[top])]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def bench_size(n: int, args: argparse.Namespace) -> dict:
    from sleeplm.library.index import EmbeddingIndex, EpochRecord, IndexConfig, NightRecord

    gen = Generator(args.dim, seed=args.seed)
    per_night = args.epochs_per_night
    n_nights = -(-n // per_night)
    mat = np.empty((n, args.dim), np.float32)
    stage_of = np.empty(n, np.int8)
    ids: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="sleeplm-index-bench-", dir=args.store_dir))
    try:
        # the exact client (the default); its add_night writes chromadb and the flat mirror
        index = EmbeddingIndex(IndexConfig(path=root / "store", model_version="bench",
                                           ef_search=args.ef_search))
        gen_s = 0.0
        t_build = time.perf_counter()
        row = 0
        for i in range(n_nights):
            t0 = time.perf_counter()
            m = min(per_night, n - row)
            stages, vecs = gen.night(m)
            patient, night = f"p{i // 2:05d}", f"n{i % 2}"
            epochs = [EpochRecord(patient=patient, night=night, epoch=j, start_s=30.0 * j,
                                  stage=STAGES[s], position="supine", profile="bench")
                      for j, s in enumerate(stages)]
            rec = NightRecord(patient=patient, night=night, profile="bench", n_epochs=m,
                              extra={"ahi": float(i % 40)})
            mat[row:row + m], stage_of[row:row + m] = vecs, stages
            ids.extend(f"{patient}/{night}/{j:05d}" for j in range(m))
            night_vec = vecs.mean(axis=0)
            gen_s += time.perf_counter() - t0
            index.add_night(rec, night_vec, epochs, vecs)
            row += m
            if args.verbose and (i + 1) % max(1, n_nights // 10) == 0:
                print(f"  {row:,}/{n:,} vectors, {time.perf_counter() - t_build:.0f} s", flush=True)
        build_s = time.perf_counter() - t_build - gen_s
        assert index.count()["epochs"] == n, index.count()
        disk = dir_mib(root / "store")

        qgen = Generator(args.dim, seed=args.seed)  # same stage centroids ...
        qgen.rng = np.random.default_rng(args.seed + 1)  # ... a held-out night
        _, queries = qgen.night(args.queries)
        r_mask = stage_of == STAGES.index("R")
        row_of = {rid: i for i, rid in enumerate(ids)}

        out: dict = {"n": n, "dim": args.dim, "nights": n_nights, "build_s": round(build_s, 2),
                     "build_vectors_per_s": round(n / build_s, 1), "disk_mib": round(disk, 1),
                     "generate_s_excluded": round(gen_s, 2)}
        hnsw = EmbeddingIndex(IndexConfig(path=root / "store", model_version="bench",
                                          ef_search=args.ef_search, search="hnsw"))
        t0 = time.perf_counter()
        index.query_epochs(queries[0], k=args.k)  # loads the flat mirror
        out["flat_load_s"] = round(time.perf_counter() - t0, 2)
        clients = (("exact", index), ("chromadb", hnsw))
        for label, where, mask in (("unfiltered", None, None),
                                   ("stage_R", {"stage": "R"}, r_mask)):
            for _, client in clients:  # warm-up
                client.query_epochs(queries[0], k=args.k, where=where)
            exact_topk(mat, queries[0], args.k, mask)
            times: dict[str, list[float]] = {"exact": [], "chromadb": [], "numpy": []}
            recall: dict[str, list[float]] = {"exact": [], "chromadb": []}
            for q in queries:  # interleaved, so drift hits all alike
                t0 = time.perf_counter()
                best = exact_topk(mat, q, args.k, mask)
                times["numpy"].append(time.perf_counter() - t0)
                for name, client in clients:
                    t0 = time.perf_counter()
                    hits = client.query_epochs(q, k=args.k, where=where)
                    times[name].append(time.perf_counter() - t0)
                    got = {row_of[h.id] for h in hits}
                    recall[name].append(len(got & set(best.tolist())) / len(best))
                    if where is not None:
                        assert all(h.stage == "R" for h in hits)
            entry: dict = {}
            for name in ("exact", "chromadb", "numpy"):
                entry[f"{name}_p50_ms"] = round(pct(times[name], 50), 3)
                entry[f"{name}_p95_ms"] = round(pct(times[name], 95), 3)
            for name in ("exact", "chromadb"):
                entry[f"ratio_p50_{name}_over_numpy"] = round(
                    pct(times[name], 50) / pct(times["numpy"], 50), 3)
                entry[f"{name}_recall_at_k"] = round(float(np.mean(recall[name])), 4)
                entry[f"{name}_recall_at_k_min"] = round(float(np.min(recall[name])), 2)
            out[label] = entry
        hnsw.close()
        index.close()
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--epochs-per-night", type=int, default=1000)
    parser.add_argument("--ef-search", type=int, default=100, help="HNSW ef_search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store-dir", type=Path, default=None,
                        help="folder for the temporary stores (default: the system's temp)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    import chromadb

    rows = []
    for n in args.sizes:
        print(f"N = {n:,}: building ...", flush=True)
        rows.append(bench_size(n, args))

    print(f"\nchromadb {chromadb.__version__} embedded store: sleeplm exact (flat) search vs "
          f"chromadb HNSW (ef_search={args.ef_search}) vs bare numpy; dim {args.dim}, "
          f"k = {args.k}, {args.queries} queries")
    print(f"{'N':>10}{'build vec/s':>13}{'disk MiB':>10}  {'filter':<11}"
          f"{'exact p50/p95 ms':>18}{'HNSW p50/p95 ms':>18}{'numpy p50/p95':>16}"
          f"{'exact/numpy':>12}{'HNSW recall':>12}")
    for r in rows:
        for label in ("unfiltered", "stage_R"):
            q = r[label]
            first = label == "unfiltered"
            size = f"{r['n']:,}" if first else ""
            rate = f"{r['build_vectors_per_s']:,.0f}" if first else ""
            disk = f"{r['disk_mib']:.0f}" if first else ""
            print(f"{size:>10}{rate:>13}{disk:>10}  {label:<11}"
                  f"{q['exact_p50_ms']:>9.2f}/{q['exact_p95_ms']:<8.2f}"
                  f"{q['chromadb_p50_ms']:>9.2f}/{q['chromadb_p95_ms']:<8.2f}"
                  f"{q['numpy_p50_ms']:>8.2f}/{q['numpy_p95_ms']:<7.2f}"
                  f"{q['ratio_p50_exact_over_numpy']:>12.2f}{q['chromadb_recall_at_k']:>12.3f}")
    report = {
        "chromadb_version": chromadb.__version__,
        "numpy_version": np.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "settings": {"dim": args.dim, "k": args.k, "queries": args.queries,
                     "epochs_per_night": args.epochs_per_night, "ef_search": args.ef_search,
                     "ef_construction": 100, "max_neighbors": 16, "seed": args.seed,
                     "filter": {"stage": "R"},
                     "paths": {"exact": "EmbeddingIndex(search='exact'), the default",
                               "chromadb": "EmbeddingIndex(search='hnsw')",
                               "numpy": "bare numpy matmul + argpartition (the floor)"}},
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'index.json'}")


if __name__ == "__main__":
    main()
