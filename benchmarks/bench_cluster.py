"""Identity clustering: castlab.identity.cluster (UMAP + HDBSCAN, k-means, agglomerative) on labelled
ArcFace-like embeddings.

Synthetic 512-d face embeddings of K characters with the structure face embeddings have: a centre per
identity; per-view sub-centres (front 50 %, three-quarter 35 %, profile 15 %; cosine 0.86 / 0.74 to the
front) with the head angle jittered (sd 12 degrees) between them; lighting as a random mix of 6
directions shared by every character (a common confound); per-instance noise of varying strength
(blur, occlusion). Same-identity pairs have cosine ~0.56 (5-95 %: 0.41-0.71), other pairs ~0.01
(sd 0.04), as for ArcFace on real faces. Character sizes follow a long tail (1/rank^0.8: main
characters have hundreds of instances, side characters dozens). A share of outliers (8 %) are not
characters: half are scattered (props, misdetections), half are background extras seen 2-6 times.

For each method the benchmark reports clusters found, purity (share of clustered points whose cluster's
majority identity is theirs; outliers count as errors), coverage (non-noise share), identity recall
(share of character instances clustered), outliers called noise, ARI (all points, noise as one
label) and time. k-means is given the true K (an oracle the others do not get). There is no speed
goal; the quality goal is the default method's (hdbscan) purity >= 0.95 and ARI >= 0.9 at every size.
Times are taken after a warm-up call (numba compiles once a process); the first-call cost is measured
separately, in fresh processes with an empty numba cache vs with the cache filled.

    .venv/bin/python benchmarks/bench_cluster.py                          # 10k and 100k (~15 min on 2 cores)
    .venv/bin/python benchmarks/bench_cluster.py --sizes 3000 --no-jit    # quick (~1 min)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VIEWS = (("front", 0.50, 0.0), ("three-quarter", 0.35, 0.6), ("profile", 0.15, 0.9))  # share, offset from centre


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def face_embeddings(
    n: int, k: int = 20, d: int = 512, outlier_share: float = 0.08, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`n` unit embeddings (float32) and their identity (0..k-1, -1 = outlier); see the module docstring."""
    rng = np.random.default_rng(seed)
    n_out = int(round(n * outlier_share))
    weights = 1.0 / np.arange(1, k + 1) ** 0.8
    sizes = np.floor(weights / weights.sum() * (n - n_out)).astype(int)
    sizes[0] += n - n_out - sizes.sum()
    lights = _unit(rng.normal(size=(6, d)))
    anchors = np.array([0.0, 45.0, 90.0])
    parts, truth = [], []
    for i, size in enumerate(sizes):
        centre = _unit(rng.normal(size=d))
        views = np.stack([_unit(centre + offset * _unit(rng.normal(size=d))) for _, _, offset in VIEWS])
        view = rng.choice(len(VIEWS), size=size, p=[share for _, share, _ in VIEWS])
        angle = np.clip(anchors[view] + rng.normal(0, 12, size), 0, 90)
        seg = np.minimum((angle // 45).astype(int), 1)
        f = ((angle - 45 * seg) / 45)[:, None]
        pose = (1 - f) * views[seg] + f * views[seg + 1]
        light = rng.dirichlet(np.full(6, 0.5), size) * rng.uniform(0, 0.35, (size, 1))
        noise = rng.uniform(0.6, 1.3, (size, 1)) * 0.8 * _unit(rng.normal(size=(size, d)))
        parts.append(pose + light @ lights + noise)
        truth.append(np.full(size, i))
    scattered = n_out // 2
    parts.append(_unit(rng.normal(size=(scattered, d))))
    left = n_out - scattered
    while left > 0:  # background extras: a few instances each
        m = min(int(rng.integers(2, 7)), left)
        parts.append(_unit(rng.normal(size=d)) + 0.8 * _unit(rng.normal(size=(m, d))))
        left -= m
    truth.append(np.full(n_out, -1))
    order = rng.permutation(n)
    return _unit(np.vstack(parts)).astype(np.float32)[order], np.concatenate(truth)[order]


def scores(truth: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score

    clustered = labels >= 0
    right = 0
    for c in np.unique(labels[clustered]):
        members = truth[labels == c]
        ids = members[members >= 0]
        right += int(np.bincount(ids).max()) if len(ids) else 0
    n_ids = int(truth.max()) + 1
    majority = {int(np.bincount(truth[(labels == c) & (truth >= 0)], minlength=n_ids).argmax())
                for c in np.unique(labels[clustered]) if np.any((labels == c) & (truth >= 0))}
    return {
        "clusters": len(np.unique(labels[clustered])),
        "identities_found": len(majority),
        "purity": right / max(1, int(clustered.sum())),
        "coverage": float(clustered.mean()),
        "identity_recall": float(clustered[truth >= 0].mean()),
        "outliers_noise": float((~clustered[truth < 0]).mean()) if np.any(truth < 0) else 1.0,
        "ari": float(adjusted_rand_score(truth, labels)),
    }


def run_method(x: np.ndarray, truth: np.ndarray, settings, name: str) -> dict:
    from castlab.identity.cluster import cluster_embeddings

    start = time.perf_counter()
    result = cluster_embeddings(x, settings, progress=False)
    seconds = time.perf_counter() - start
    return {"name": name, "seconds": seconds, "timings": result.timings, "silhouette": result.silhouette,
            **scores(truth, result.labels)}


def jit_worker(n: int) -> None:
    """In a fresh process: time importing castlab.identity.cluster and the first cluster_embeddings call."""
    start = time.perf_counter()
    from castlab.runtime import setup_runtime

    setup_runtime()  # as the entry points do (NUMBA_CACHE_DIR is set by the parent here)
    from castlab.config import load_config
    from castlab.identity.cluster import ClusterSettings, cluster_embeddings

    imported = time.perf_counter()
    x, _ = face_embeddings(n, k=5, seed=3)
    settings = ClusterSettings.from_config(load_config())
    before = time.perf_counter()
    cluster_embeddings(x, settings, progress=False)
    first = time.perf_counter() - before
    before = time.perf_counter()
    cluster_embeddings(x, settings, progress=False)
    second = time.perf_counter() - before
    print(json.dumps({"import": imported - start, "first": first, "second": second}))


def jit_costs(n: int) -> tuple[dict, dict]:
    """Two fresh processes sharing a new, empty NUMBA_CACHE_DIR: the first fills it, the second uses it."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = []
        for _ in range(2):
            out = subprocess.run([sys.executable, __file__, "--jit-worker", str(n)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
    return runs[0], runs[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="embeddings per run")
    parser.add_argument("--identities", type=int, default=20, help="characters K (default 20)")
    parser.add_argument("--outliers", type=float, default=0.08, help="share of non-character instances")
    parser.add_argument("--methods", nargs="+", default=["hdbscan", "kmeans", "agglomerative"])
    parser.add_argument("--jit-sizes", type=int, nargs="*", default=[2000, 6000],
                        help="first-call JIT measured at these sizes (UMAP uses exact neighbours below 4096)")
    parser.add_argument("--no-jit", action="store_true", help="skip the fresh-process JIT measurement")
    parser.add_argument("--jit-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.jit_worker:
        jit_worker(args.jit_worker)
        return 0

    from castlab.runtime import setup_runtime

    setup_runtime()  # numba's cache in .cache/numba, as the entry points do
    from castlab.config import load_config
    from castlab.identity.cluster import ClusterSettings

    base = ClusterSettings.from_config(load_config())
    print(f"{args.identities} characters, 512-d, outliers {args.outliers:.0%}, {os.cpu_count()} CPUs; defaults: "
          f"min_cluster_size {base.min_cluster_size}, min_samples {base.min_samples}, metric {base.metric}, "
          f"PCA {base.pca_components} -> UMAP {base.umap_components} (neighbours {base.umap_neighbors}), "
          f"merge_similarity {base.merge_similarity}, member_min_similarity {base.member_min_similarity}")
    from castlab.identity.cluster import cluster_embeddings

    start = time.perf_counter()  # numba compiles UMAP/pynndescent once a process: keep that out of the timings
    cluster_embeddings(face_embeddings(5000, k=5, seed=9)[0], base, progress=False)
    print(f"warm-up (5000 embeddings, this process's first call: numba JIT/cache loads): "
          f"{time.perf_counter() - start:.1f} s")
    totals: dict[str, dict[int, float]] = {}
    ok = True
    header = (f"  {'method':<30} {'clusters':>8} {'ids':>4} {'purity':>7} {'coverage':>8} {'id recall':>9} "
              f"{'outl->noise':>11} {'ARI':>6} {'time s':>8}")
    for n in args.sizes:
        x, truth = face_embeddings(n, k=args.identities, outlier_share=args.outliers)
        print(f"\n{n} embeddings ({int((truth >= 0).sum())} character instances, {int((truth < 0).sum())} outliers)")
        print(header)
        runs = []
        for method in args.methods:
            settings = dataclasses.replace(base, method=method, kmeans_clusters=args.identities)
            label = method + (" (true K)" if method == "kmeans" else "")
            runs.append(run_method(x, truth, settings, label))
            totals.setdefault(method, {})[n] = runs[-1]["seconds"]
        if n == args.sizes[0] and "hdbscan" in args.methods:  # what the clean-up adds (one extra UMAP run)
            raw = dataclasses.replace(base, merge_similarity=None, member_min_similarity=-1.0)
            runs.append(run_method(x, truth, raw, "hdbscan, no merge/outlier rule"))
        for r in runs:
            print(f"  {r['name']:<30} {r['clusters']:>8} {r['identities_found']:>4} {r['purity']:>7.3f} "
                  f"{r['coverage']:>8.3f} {r['identity_recall']:>9.3f} {r['outliers_noise']:>11.3f} {r['ari']:>6.3f} "
                  f"{r['seconds']:>8.1f}")
        default = runs[args.methods.index("hdbscan")] if "hdbscan" in args.methods else None
        if default:
            steps = ", ".join(f"{k} {v:.1f}" for k, v in default["timings"].items())
            print(f"  hdbscan steps (s): {steps}")
            ok &= default["purity"] >= 0.95 and default["ari"] >= 0.9
    if len(args.sizes) > 1:
        small, big = min(args.sizes), max(args.sizes)
        print(f"\ntime growth {small} -> {big} embeddings (x{big / small:.0f} points):")
        for method, by_n in totals.items():
            print(f"  {method:<14} {by_n[small]:7.1f} s -> {by_n[big]:7.1f} s  growth x{by_n[big] / by_n[small]:.1f}")
    if not args.no_jit:
        print("\nfirst call in a fresh process (import castlab.identity.cluster + first clustering; numba JIT):")
        for n in args.jit_sizes:
            cold, warm = jit_costs(n)
            print(f"  {n} embeddings: empty cache import {cold['import']:.1f} s + first call {cold['first']:.1f} s; "
                  f"cache filled: import {warm['import']:.1f} s + first call {warm['first']:.1f} s "
                  f"(second call in a process: {warm['second']:.1f} s); "
                  f"x{(cold['import'] + cold['first']) / (warm['import'] + warm['first']):.1f} faster with the cache")
    print(f"\nquality goal (hdbscan purity >= 0.95 and ARI >= 0.9 at every size): {'met' if ok else 'NOT met'}; "
          "no speed goal (report)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
