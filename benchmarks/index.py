"""Benchmark: the SleepLM embedding store (embedded chromadb, HNSW) against exact numpy search.

For each size N in ``--sizes``, in one run:

* builds an :class:`sleeplm.index.EmbeddingIndex` in a fresh temporary folder from N synthetic
  unit vectors (dim 128) laid out like real epochs: nights of ``--epochs-per-night`` epochs,
  stages drawn with typical proportions, vectors clustered by stage and by night (real
  embeddings are not uniform on the sphere, and HNSW recall depends on that), added night by
  night through ``add_night`` — the build throughput is vectors/s of that whole path;
* times ``--queries`` queries (k = 10, vectors of a held-out night), without a filter and with
  ``where={"stage": "R"}`` (about 20 % of the rows), through ``query_epochs``;
* times the peer on the same vectors and queries: exact brute-force search in numpy (one matrix
  product, ``argpartition``, sort of the k best; the filter as a mask), in-memory float32;
* reports recall@10 of chromadb's approximate (HNSW) hits against the exact ones.

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
    from sleeplm.index import EmbeddingIndex, EpochRecord, IndexConfig, NightRecord

    gen = Generator(args.dim, seed=args.seed)
    per_night = args.epochs_per_night
    n_nights = -(-n // per_night)
    mat = np.empty((n, args.dim), np.float32)
    stage_of = np.empty(n, np.int8)
    ids: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="sleeplm-index-bench-", dir=args.store_dir))
    try:
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
        for label, where, mask in (("unfiltered", None, None),
                                   ("stage_R", {"stage": "R"}, r_mask)):
            index.query_epochs(queries[0], k=args.k, where=where)  # warm-up
            exact_topk(mat, queries[0], args.k, mask)
            t_hnsw, t_exact, recall = [], [], []
            for q in queries:  # interleaved, so drift hits both alike
                t0 = time.perf_counter()
                hits = index.query_epochs(q, k=args.k, where=where)
                t_hnsw.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                best = exact_topk(mat, q, args.k, mask)
                t_exact.append(time.perf_counter() - t0)
                got = {row_of[h.id] for h in hits}
                recall.append(len(got & set(best.tolist())) / len(best))
                if where is not None:
                    assert all(h.stage == "R" for h in hits)
            out[label] = {
                "chromadb_p50_ms": round(pct(t_hnsw, 50), 3),
                "chromadb_p95_ms": round(pct(t_hnsw, 95), 3),
                "exact_p50_ms": round(pct(t_exact, 50), 3),
                "exact_p95_ms": round(pct(t_exact, 95), 3),
                "ratio_p50_chromadb_over_exact": round(pct(t_hnsw, 50) / pct(t_exact, 50), 3),
                "recall_at_k": round(float(np.mean(recall)), 4),
                "recall_at_k_min": round(float(np.min(recall)), 2),
                "queries_recall_below_half": int(np.sum(np.asarray(recall) < 0.5)),
            }
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

    print(f"\nchromadb {chromadb.__version__} (embedded, HNSW cosine, ef_search={args.ef_search})"
          f" vs exact numpy search; dim {args.dim}, k = {args.k}, {args.queries} queries")
    print(f"{'N':>10}{'build vec/s':>13}{'disk MiB':>10}  {'filter':<11}{'chroma p50/p95 ms':>19}"
          f"{'exact p50/p95 ms':>18}{'ratio p50':>11}{'recall@k':>10}")
    for r in rows:
        for label in ("unfiltered", "stage_R"):
            q = r[label]
            first = label == "unfiltered"
            size = f"{r['n']:,}" if first else ""
            rate = f"{r['build_vectors_per_s']:,.0f}" if first else ""
            disk = f"{r['disk_mib']:.0f}" if first else ""
            print(f"{size:>10}{rate:>13}{disk:>10}  {label:<11}"
                  f"{q['chromadb_p50_ms']:>10.2f}/{q['chromadb_p95_ms']:<8.2f}"
                  f"{q['exact_p50_ms']:>9.2f}/{q['exact_p95_ms']:<8.2f}"
                  f"{q['ratio_p50_chromadb_over_exact']:>11.2f}{q['recall_at_k']:>10.3f}")
    report = {
        "chromadb_version": chromadb.__version__,
        "numpy_version": np.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "settings": {"dim": args.dim, "k": args.k, "queries": args.queries,
                     "epochs_per_night": args.epochs_per_night, "ef_search": args.ef_search,
                     "ef_construction": 100, "max_neighbors": 16, "seed": args.seed,
                     "filter": {"stage": "R"}, "peer": "exact numpy (matmul + argpartition)"},
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'index.json'}")


if __name__ == "__main__":
    main()
