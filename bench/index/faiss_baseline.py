"""The faiss-cpu baseline for the index benchmark: HNSW (IndexHNSWFlat) over the same vectors and
held-out queries as a dim-search index directory, at the same M, ef_construction and ef values.
An index with a post-processing transform (`post_process` in index.json) has it applied first,
from the files the index saved, so faiss searches the very vectors dim-search's graph holds.

usage: faiss_baseline.py INDEX_DIR M EF_CONSTRUCTION THREADS K EF [EF ...]
Prints one JSON object: build_seconds and, per ef, recall_at_k and queries_per_second.
"""

import json
import sys
import time

import faiss
import numpy as np


def main():
    index_dir, m, ef_construction, threads, k = sys.argv[1], *map(int, sys.argv[2:6])
    efs = [int(v) for v in sys.argv[6:]]
    faiss.omp_set_num_threads(threads)
    info = json.load(open(f"{index_dir}/index.json"))
    vectors = np.load(f"{index_dir}/vectors.npy").astype(np.float32)
    held_out = np.array(info["held_out"], dtype=np.int64)
    indexed = np.setdiff1d(np.arange(len(vectors)), held_out)
    pca = info.get("post_process")
    if pca:
        mean = np.load(f"{index_dir}/pca_mean.npy").astype(np.float64).reshape(-1)
        components = np.load(f"{index_dir}/pca_components.npy").astype(np.float64)
        variances = np.load(f"{index_dir}/pca_variances.npy").astype(np.float64).reshape(-1)
        scales = 1.0 / np.sqrt(variances + pca["eps"]) if pca["whiten"] else np.ones_like(variances)
        vectors = (((vectors - mean) @ components.T) * scales).astype(np.float32)
    cosine = info["params"]["metric"] == "cosine"
    if cosine:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    base, queries = np.ascontiguousarray(vectors[indexed]), np.ascontiguousarray(vectors[held_out])
    metric = faiss.METRIC_INNER_PRODUCT if cosine else faiss.METRIC_L2
    exact = faiss.IndexFlat(base.shape[1], metric)
    exact.add(base)
    _, truth = exact.search(queries, k)
    index = faiss.IndexHNSWFlat(base.shape[1], m, metric)
    index.hnsw.efConstruction = ef_construction
    started = time.perf_counter()
    index.add(base)
    build_seconds = time.perf_counter() - started
    results = []
    for ef in efs:
        index.hnsw.efSearch = max(ef, k)
        seconds = float("inf")
        for _ in range(3):  # best of three, as dim-search eval does
            started = time.perf_counter()
            _, found = index.search(queries, k)
            seconds = min(seconds, time.perf_counter() - started)
        recall = np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)])
        results.append({"ef": ef, "recall_at_k": float(recall), "queries_per_second": len(queries) / seconds})
    print(json.dumps({"build_seconds": build_seconds, "indexed": len(base), "queries": len(queries), "searches": results}))


if __name__ == "__main__":
    main()
