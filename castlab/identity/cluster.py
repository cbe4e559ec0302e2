"""Identity clustering of character embeddings.

:func:`cluster_embeddings` groups embeddings (one per character instance, e.g. ArcFace-like face
embeddings) into identities:

1. rows are L2-normalised (a zero or non-finite row is *invalid*: noise, never clustered);
2. PCA to ``clustering.pca_components`` (skipped when the points or dimensions are that few);
3. ``hdbscan`` (default): UMAP with ``clustering.metric`` to ``umap_components`` dimensions
   (``umap_neighbors``, ``umap_min_dist``; the neighbours drop to n - 1 when there are fewer points),
   then HDBSCAN (``min_cluster_size``, ``min_samples``) on the UMAP output. When HDBSCAN finds no
   cluster at all it runs once more allowing a single cluster, so one identity is one cluster.
   ``kmeans`` (``kmeans_clusters``) and ``agglomerative`` (average linkage, distance threshold
   ``agglomerative_distance``) run on the PCA output instead; cosine means rows normalised again for
   k-means and the cosine metric for agglomerative (all pairs need O(n^2) memory, 40 GB at 100k: beyond
   10k points agglomerative links the mean vectors of 5k k-means micro-clusters, and each point takes
   its micro-cluster's label);
4. the same clean-up for every method, in the L2-normalised input space: clusters whose mean
   directions are at least ``merge_similarity`` alike are one identity (views of one face split
   into several density modes); a member less similar than ``member_min_similarity`` to its
   cluster's mean direction (leaving itself out) is noise (UMAP gathers scattered outliers, such
   as props and background extras, into blobs of their own); a cluster left smaller than
   ``min_cluster_size`` is noise. Clusters are then numbered by size, 0 = largest.

The 2-D embedding for plots is a second UMAP to 2-D (``min_dist`` 0.1, the same metric and
neighbours; for HDBSCAN it reuses the first UMAP's neighbour graph where UMAP kept one), or the
first UMAP itself when ``umap_components`` is 2. Beyond 20k points the second UMAP embeds a seeded
random sample of 20k (it would double the time at 100k); the other points have NaN coordinates and
the scatter plot says it shows a sample. Too few points for UMAP: the first two PCA axes.

UMAP and pynndescent compile with numba on first use (11-15 s a process). The entry points point
``NUMBA_CACHE_DIR`` at ``.cache/numba`` in the project (:func:`castlab.runtime.setup_runtime`) and the
first UMAP run turns numba's on-disk cache on for UMAP's own compiled functions, so later processes
load them; pynndescent's nearest-neighbour descent (used by UMAP from 4096 points) takes functions as
arguments, which numba cannot cache, so large inputs still pay about 15 s once a process.

The review folders and pictures are written by :mod:`castlab.identity.outputs`.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from castlab.config import Config

METHODS = ("hdbscan", "kmeans", "agglomerative")
METRICS = ("cosine", "euclidean")
NOISE = -1
SILHOUETTE_MAX_POINTS = 5000       # silhouette on a seeded sample beyond this (it is O(n^2))
AGGLOMERATIVE_FULL_MAX = 10_000    # beyond this, agglomerative links k-means micro-clusters (all pairs: O(n^2) memory)
AGGLOMERATIVE_MICRO = 5_000        # ... this many
PLOT_MIN_DIST = 0.1                # min_dist of the 2-D plot UMAP (UMAP's default: readable spread)
PLOT_MAX_POINTS = 20_000           # the 2-D plot UMAP embeds a seeded sample of this many beyond it
_UMAP_CACHED = False


def _import_umap() -> Any:
    """``umap.UMAP``, with numba's disk cache switched on for UMAP's compiled functions (once a process).

    UMAP declares almost none of them ``cache=True`` (pynndescent some); without this every process
    recompiles them (10-25 s). Only done when a cache folder is configured
    (NUMBA_CACHE_DIR, see :func:`castlab.runtime.setup_runtime`); any failure leaves them uncached.
    """
    global _UMAP_CACHED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap/pynndescent import-time deprecation noise
        import umap

    if not _UMAP_CACHED:
        _UMAP_CACHED = True
        try:
            _enable_numba_caching(("umap", "pynndescent"))
        except Exception:  # noqa: BLE001 - an optimisation only
            pass
    return umap.UMAP


# Parameters through which umap/pynndescent pass compiled functions (distance metrics, kernels). numba types
# such an argument by the function's address, so a cached copy never matches in another process and every
# run would add one more to the cache: those functions stay uncached (pynndescent marks them cache=False).
_FUNCTION_PARAMETERS = frozenset({"dist", "metric", "kernel", "ground_metric", "deheap_sort_function", "fallback"})


def _enable_numba_caching(packages: tuple[str, ...]) -> int:
    """Turn numba's disk cache on for the packages' compiled functions that have none; returns how many."""
    import inspect

    from numba.core import config as numba_config
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    if not numba_config.CACHE_DIR:
        return 0
    count = 0
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in packages:
            continue
        for obj in list(vars(module).values()):
            if not isinstance(obj, Dispatcher) or not isinstance(getattr(obj, "_cache", None), NullCache):
                continue
            if _FUNCTION_PARAMETERS & set(inspect.signature(obj.py_func).parameters):
                continue
            obj.enable_caching()
            count += 1
    return count


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class ClusterSettings:
    """The ``clustering.*`` settings (and the top-level ``seed``), validated."""

    method: str
    min_cluster_size: int
    min_samples: int | None
    metric: str
    pca_components: int | None
    umap_components: int
    umap_neighbors: int
    umap_min_dist: float
    kmeans_clusters: int
    agglomerative_distance: float
    merge_similarity: float | None
    member_min_similarity: float
    seed: int | None

    @classmethod
    def from_config(cls, cfg: Config) -> ClusterSettings:
        """The validated ``clustering.*`` settings and the run's seed."""
        c = cfg.clustering
        return cls(
            method=c.method, min_cluster_size=c.min_cluster_size, min_samples=c.min_samples, metric=c.metric,
            pca_components=c.pca_components or None, umap_components=c.umap_components,
            umap_neighbors=c.umap_neighbors, umap_min_dist=c.umap_min_dist, kmeans_clusters=c.kmeans_clusters,
            agglomerative_distance=c.agglomerative_distance, merge_similarity=c.merge_similarity,
            member_min_similarity=c.member_min_similarity, seed=cfg.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- clustering


@dataclass
class ClusterResult:
    """Labels (-1 = noise; clusters numbered by size, 0 = largest) and what the report shows."""

    labels: np.ndarray
    probabilities: np.ndarray                 # HDBSCAN membership strength; 1.0 for k-means/agglomerative; 0 noise
    sizes: list[int]
    persistence: list[float | None]           # HDBSCAN cluster_persistence_ (max over merged parts); None otherwise
    silhouette: float | None                  # cosine (the configured metric) on the PCA space, non-noise points
    parameters: dict[str, Any]
    embedding_2d: np.ndarray
    reason: str | None = None                 # why the result is degenerate (all noise, too few points), else None
    notes: list[str] = field(default_factory=list)
    merged_from: list[list[int]] = field(default_factory=list)  # the method's raw cluster ids in each cluster
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return len(self.sizes)

    @property
    def n_noise(self) -> int:
        return int(np.count_nonzero(self.labels == NOISE))

    @property
    def noise_share(self) -> float:
        return self.n_noise / len(self.labels) if len(self.labels) else 0.0


def _unit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised rows (float32) and the mask of valid rows (finite, non-zero)."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], x, 0.0), axis=1)
    valid = finite & (norms > 1e-12)
    out = np.zeros(x.shape, dtype=np.float32)
    out[valid] = (x[valid] / norms[valid, None]).astype(np.float32)
    return out, valid


def unit(a: np.ndarray) -> np.ndarray:
    """`a` scaled to unit length along its last axis (zero vectors stay zero)."""
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / np.maximum(norms, 1e-12)


class _Steps:
    """A tqdm bar over named steps, which also times them."""

    def __init__(self, names: list[str], progress: bool) -> None:
        self.bar = tqdm(total=len(names), desc="clustering", unit="step", disable=not progress, leave=False)
        self.timings: dict[str, float] = {}
        self._name: str | None = None
        self._start = 0.0

    def start(self, name: str) -> None:
        self._stop()
        self._name, self._start = name, time.perf_counter()
        self.bar.set_postfix_str(name)

    def _stop(self) -> None:
        if self._name is not None:
            self.timings[self._name] = round(time.perf_counter() - self._start, 4)
            self.bar.update(1)
            self._name = None

    def close(self) -> dict[str, float]:
        self._stop()
        self.bar.close()
        return self.timings


def cluster_embeddings(x: np.ndarray, settings: ClusterSettings, progress: bool = True) -> ClusterResult:
    """Cluster embeddings (one row per instance) into identities; see the module docstring."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (rows x dimensions), got shape {x.shape}")
    n, d = x.shape
    unit, valid = _unit_rows(x) if n else (np.zeros((0, d), np.float32), np.zeros(0, bool))
    idx = np.flatnonzero(valid)
    m = len(idx)
    params: dict[str, Any] = {**settings.to_dict(), "points": n, "dimensions": d}
    notes: list[str] = []
    if m < n:
        notes.append(f"{n - m} invalid embeddings (zero or not finite): noise, not clustered")
    labels = np.full(n, NOISE, dtype=np.int64)
    probabilities = np.zeros(n, dtype=np.float64)
    embedding_2d = np.full((n, 2), np.nan, dtype=np.float32)

    if m < settings.min_cluster_size:
        what = "no valid embeddings" if m == 0 else f"only {m} valid embeddings"
        reason = f"{what}, fewer than clustering.min_cluster_size={settings.min_cluster_size}: all noise"
        if m:
            embedding_2d[idx] = _pca(unit[idx], 2, settings.seed)
        params["pca_used"] = None
        return ClusterResult(labels, probabilities, [], [], None, params, embedding_2d, reason, notes)

    use_umap = settings.method == "hdbscan" and m >= max(4, settings.umap_components + 2)
    steps = _Steps(["pca"] + (["umap"] if use_umap else []) + [settings.method, "clean-up", "silhouette", "plot"],
                   progress)
    steps.start("pca")
    points = unit[idx]
    pca_used = bool(settings.pca_components and min(m, d) > settings.pca_components)
    feats = _pca(points, settings.pca_components, settings.seed) if pca_used else points  # type: ignore[arg-type]
    params["pca_used"] = pca_used
    neighbors = max(2, min(settings.umap_neighbors, m - 1))
    if neighbors != settings.umap_neighbors:
        notes.append(f"umap_neighbors {settings.umap_neighbors} lowered to {neighbors} ({m} points)")
    params["umap_neighbors_used"] = neighbors if settings.method == "hdbscan" else None
    umap_model = None
    persistence_raw: dict[int, float] = {}
    single, tree = False, None

    if settings.method == "hdbscan":
        if use_umap:
            steps.start("umap")
            umap_model, space = _umap(feats, settings, settings.umap_components, neighbors, settings.umap_min_dist)
        else:
            space = feats
            notes.append(f"{m} points are too few for UMAP: HDBSCAN ran on the PCA/input space")
        steps.start("hdbscan")
        raw, probs, persistence_raw, single, tree = _hdbscan(space, settings)
        params["single_cluster_fallback"] = single
        if single:
            notes.append("HDBSCAN found no split: re-run allowing a single cluster")
    elif settings.method == "kmeans":
        steps.start("kmeans")
        raw = _kmeans(feats, settings)
        probs = np.ones(m)
        k_used = min(settings.kmeans_clusters, m)
        params["kmeans_clusters_used"] = k_used
        if k_used != settings.kmeans_clusters:
            notes.append(f"kmeans_clusters {settings.kmeans_clusters} lowered to {k_used} ({m} points)")
    else:
        steps.start("agglomerative")
        raw, connectivity = _agglomerative(feats, settings)
        probs = np.ones(m)
        params["agglomerative_on"] = connectivity

    steps.start("clean-up")
    probs = np.asarray(probs, dtype=np.float64).copy()
    final, groups, clean_notes = _clean_up(points, raw, probs, settings, tree)
    notes += clean_notes
    if single and groups and not _one_identity(points[final == 0], settings):
        final[:] = NOISE
        groups = []
        notes.append(f"the single cluster HDBSCAN allowed mixes identities (its two halves are less than "
                     f"merge_similarity={settings.merge_similarity} alike): noise")
    labels[idx] = final
    probabilities[idx] = np.where(final >= 0, probs, 0.0)
    sizes = [int(np.count_nonzero(final == k)) for k in range(len(groups))]
    persistence: list[float | None] = [
        max(persistence_raw[g] for g in group) if persistence_raw else None for group in groups
    ]

    steps.start("silhouette")
    silhouette = _silhouette(feats, final, settings)

    steps.start("plot")
    if settings.method == "hdbscan" and use_umap and settings.umap_components == 2:
        embedding_2d[idx] = space
        params["plot_embedding"] = "the clustering UMAP (umap_components = 2)"
    else:
        params["plot_embedding"] = _plot_embedding(feats, points, idx, embedding_2d, umap_model, neighbors, settings)
        if params["plot_embedding"].startswith("a second UMAP"):
            params["plot_points"] = int(np.isfinite(embedding_2d[:, 0]).sum())
    timings = steps.close()

    reason = None
    if not sizes:
        reason = (f"no cluster found: all {n} points are noise (clustering.min_cluster_size="
                  f"{settings.min_cluster_size}, min_samples={settings.min_samples})")
    elif len(sizes) == 1:
        notes.append("one cluster: a single identity")
    return ClusterResult(labels, probabilities, sizes, persistence, silhouette, params, embedding_2d, reason, notes,
                         groups, timings)


def _plot_embedding(
    feats: np.ndarray, points: np.ndarray, idx: np.ndarray, out: np.ndarray, umap_model: Any, neighbors: int,
    s: ClusterSettings,
) -> str:
    """Fill `out` (rows `idx`) with the 2-D plot embedding; returns what it is. A failing UMAP falls back to PCA."""
    m = len(idx)
    if m >= 4:
        sample = np.arange(m)
        if m > PLOT_MAX_POINTS:
            sample = np.sort(np.random.default_rng(s.seed).choice(m, PLOT_MAX_POINTS, replace=False))
        knn = _knn_of(umap_model) if len(sample) == m else None
        try:
            _, plot = _umap(feats[sample], s, 2, neighbors, PLOT_MIN_DIST, knn)
        except Exception as exc:  # noqa: BLE001 - the plot must not cost the clustering
            out[idx] = _pca(points, 2, s.seed)
            return f"the first two PCA axes (the 2-D UMAP failed: {exc})"
        out[idx[sample]] = plot
        return f"a second UMAP to 2-D (min_dist {PLOT_MIN_DIST}" + (
            ", the first UMAP's neighbour graph" if knn is not None else "") + (
            f", a seeded sample of {len(sample)} of {m} points" if len(sample) < m else "") + ")"
    out[idx] = _pca(points, 2, s.seed)
    return "the first two PCA axes (too few points for UMAP)"


def _pca(points: np.ndarray, components: int, seed: int | None) -> np.ndarray:
    """PCA to `components` (fewer when the data has fewer points or dimensions)."""
    from sklearn.decomposition import PCA

    k = min(components, points.shape[0], points.shape[1])
    out = np.zeros((points.shape[0], components), dtype=np.float32)
    if points.shape[0] >= 2 and k >= 1:
        out[:, :k] = PCA(k, random_state=seed).fit_transform(points).astype(np.float32)
    return out


def _umap(
    feats: np.ndarray, s: ClusterSettings, components: int, neighbors: int, min_dist: float,
    knn: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Any, np.ndarray]:
    umap_cls = _import_umap()
    m = feats.shape[0]
    kwargs: dict[str, Any] = {
        "n_neighbors": neighbors, "n_components": components, "min_dist": min_dist, "metric": s.metric,
        "random_state": s.seed, "init": "spectral" if m > components + 2 else "random",
    }
    if knn is not None:
        kwargs["precomputed_knn"] = knn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state, spectral fallbacks, knn search index
        model = umap_cls(**kwargs)
        out = model.fit_transform(feats)
    return model, np.asarray(out, dtype=np.float32)


def _knn_of(model: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The first UMAP's neighbour graph (kept only when it ran nearest-neighbour descent, >= 4096 points)."""
    if model is None:
        return None
    ind, dist = getattr(model, "_knn_indices", None), getattr(model, "_knn_dists", None)
    if isinstance(ind, np.ndarray) and isinstance(dist, np.ndarray) and ind.shape == dist.shape:
        return ind, dist
    return None


def _hdbscan(
    space: np.ndarray, s: ClusterSettings
) -> tuple[np.ndarray, np.ndarray, dict[int, float], bool, _Tree | None]:
    """Labels, membership probabilities, persistence per label, whether the single-cluster re-run was used,
    and the condensed tree."""
    import hdbscan

    m = space.shape[0]
    min_samples = None if s.min_samples is None else min(s.min_samples, m - 1)
    single = False
    for allow_single in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = hdbscan.HDBSCAN(
                min_cluster_size=s.min_cluster_size, min_samples=min_samples, allow_single_cluster=allow_single,
            ).fit(space.astype(np.float64))
        if model.labels_.max() >= 0:
            single = allow_single
            break
    labels = np.asarray(model.labels_, dtype=np.int64)
    persistence = {k: float(v) for k, v in enumerate(np.atleast_1d(model.cluster_persistence_))}
    try:
        tree: _Tree | None = _Tree(model.condensed_tree_.to_numpy(), labels)
    except Exception:  # noqa: BLE001 - without the tree, merged clusters are the union of their parts
        tree = None
    return labels, np.asarray(model.probabilities_, dtype=np.float64), persistence, single, tree


class _Tree:
    """HDBSCAN's condensed tree, to merge selected clusters as the tree does (their common ancestor)."""

    def __init__(self, condensed: np.ndarray, labels: np.ndarray) -> None:
        m = len(labels)
        points = condensed[condensed["child"] < m]
        if len(points) != m:
            raise ValueError("condensed tree does not hold every point")
        self.point_node = np.empty(m, dtype=np.int64)
        self.point_node[points["child"]] = points["parent"] - m
        self.point_lambda = np.empty(m, dtype=np.float64)
        self.point_lambda[points["child"]] = points["lambda_val"]
        nodes = condensed[condensed["child"] >= m]
        count = int(max(condensed["parent"].max(), nodes["child"].max() if len(nodes) else m)) - m + 1
        self.parent = np.full(count, -1, dtype=np.int64)
        self.parent[nodes["child"] - m] = nodes["parent"] - m
        children: list[list[int]] = [[] for _ in range(count)]
        for c in range(1, count):
            if self.parent[c] >= 0:
                children[self.parent[c]].append(c)
        self.tin = np.zeros(count, dtype=np.int64)
        self.tout = np.zeros(count, dtype=np.int64)
        self.depth = np.zeros(count, dtype=np.int64)
        clock, stack = 0, [(0, False)]
        while stack:  # iterative DFS from the root (node 0 = hdbscan's node m)
            node, done = stack.pop()
            if done:
                self.tout[node] = clock
                continue
            self.tin[node] = clock
            clock += 1
            stack.append((node, True))
            for c in children[node]:
                self.depth[c] = self.depth[node] + 1
                stack.append((c, False))
        self.selected = {int(k): self._lca_all(self.point_node[labels == k]) for k in np.unique(labels) if k >= 0}

    def _lca(self, a: int, b: int) -> int:
        while self.depth[a] > self.depth[b]:
            a = int(self.parent[a])
        while self.depth[b] > self.depth[a]:
            b = int(self.parent[b])
        while a != b:
            a, b = int(self.parent[a]), int(self.parent[b])
        return a

    def _lca_all(self, nodes: np.ndarray) -> int:
        """Lowest common ancestor: that of the nodes first and last in DFS order."""
        order = self.tin[nodes]
        return self._lca(int(nodes[np.argmin(order)]), int(nodes[np.argmax(order)]))

    def _under(self, nodes: np.ndarray, top: int) -> np.ndarray:
        return (self.tin[nodes] >= self.tin[top]) & (self.tin[nodes] < self.tout[top])

    def members(self, group: list[int], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Points under the common ancestor of `group`'s clusters and their HDBSCAN-style probabilities,
        or None when another selected cluster lies under that ancestor too."""
        top = self._lca_all(np.array([self.selected[k] for k in group]))
        others = np.array([node for k, node in self.selected.items() if k not in group], dtype=np.int64)
        if len(others) and self._under(others, top).any():
            return None
        mask = self._under(self.point_node, top) & ((labels < 0) | np.isin(labels, group))
        lam = self.point_lambda[mask]
        finite = lam[np.isfinite(lam)]
        top_lambda = float(finite.max()) if len(finite) else 0.0
        probs = np.where(np.isfinite(lam), np.minimum(lam, top_lambda) / top_lambda if top_lambda > 0 else 1.0, 1.0)
        return mask, probs


def _kmeans(feats: np.ndarray, s: ClusterSettings) -> np.ndarray:
    from sklearn.cluster import KMeans

    data = unit(feats) if s.metric == "cosine" else feats
    k = min(s.kmeans_clusters, feats.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct points than clusters (duplicates): fewer clusters
        return KMeans(n_clusters=k, n_init="auto", random_state=s.seed).fit_predict(data).astype(np.int64)


def _agglomerative(feats: np.ndarray, s: ClusterSettings) -> tuple[np.ndarray, str]:
    """Average-linkage labels; beyond AGGLOMERATIVE_FULL_MAX points, on micro-clusters (all pairs: O(n^2) memory)."""
    from sklearn.cluster import AgglomerativeClustering

    m = feats.shape[0]
    data, micro, how = feats, None, "all pairs"
    if m > AGGLOMERATIVE_FULL_MAX:
        data, micro = _micro_clusters(feats, AGGLOMERATIVE_MICRO, s)
        how = f"mean vectors of {len(data)} micro-clusters ({m} > {AGGLOMERATIVE_FULL_MAX} points)"
    model = AgglomerativeClustering(
        n_clusters=None, distance_threshold=s.agglomerative_distance, metric=s.metric, linkage="average",
    )
    labels = model.fit_predict(data).astype(np.int64)
    return (labels if micro is None else labels[micro]), how


def _micro_clusters(feats: np.ndarray, k: int, s: ClusterSettings, rounds: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """About `k` mean vectors and each point's index into them: seeded random centres, `rounds` Lloyd steps."""
    rng = np.random.default_rng(s.seed)
    base = (unit(feats) if s.metric == "cosine" else feats).astype(np.float32)
    centres = base[rng.choice(len(base), k, replace=False)]
    for step in range(rounds + 1):
        assign = np.empty(len(base), dtype=np.int64)
        sq = (centres**2).sum(axis=1)
        for start in range(0, len(base), 8192):  # blockwise nearest centre: memory stays 8192 x k
            block = base[start:start + 8192]
            assign[start:start + 8192] = np.argmin(sq[None, :] - 2.0 * block @ centres.T, axis=1)
        counts = np.bincount(assign, minlength=len(centres))
        used = counts > 0
        assign = (np.cumsum(used) - 1)[assign]  # drop centres nobody chose
        counts = counts[used]
        if step == rounds:
            break
        sums = np.zeros((len(counts), base.shape[1]), dtype=np.float64)
        np.add.at(sums, assign, base)
        centres = (sums / counts[:, None]).astype(np.float32)
        if s.metric == "cosine":
            centres = unit(centres)
    means = np.zeros((len(counts), feats.shape[1]), dtype=np.float64)
    np.add.at(means, assign, feats)
    return means / counts[:, None], assign


def _clean_up(
    points: np.ndarray, raw: np.ndarray, probs: np.ndarray, s: ClusterSettings, tree: _Tree | None = None
) -> tuple[np.ndarray, list[list[int]], list[str]]:
    """Merge alike clusters, drop dissimilar members and small clusters, number clusters by size.

    `points` are the L2-normalised inputs, `probs` the membership probabilities (updated in place for
    points a merge adds). With HDBSCAN's `tree`, a merged cluster is everything under its parts' common
    ancestor (the points HDBSCAN left as noise between them included) when no other cluster is under it.
    Returns the final labels, the raw ids in each final cluster, notes.
    """
    notes: list[str] = []
    raw_ids = [int(k) for k in np.unique(raw) if k >= 0]
    groups: list[list[int]] = [[k] for k in raw_ids]
    if s.merge_similarity is not None and len(groups) > 1:
        sums = [points[raw == k].sum(axis=0, dtype=np.float64) for k in raw_ids]
        before = len(groups)
        groups, _ = _merge(groups, sums, s.merge_similarity)
        if len(groups) < before:
            notes.append(f"{before} clusters merged into {len(groups)}: mean directions >= "
                         f"{s.merge_similarity} cosine alike")
    merged = np.full(len(raw), NOISE, dtype=np.int64)
    for g, group in enumerate(groups):
        merged[np.isin(raw, group)] = g
    added = 0
    for g, group in enumerate(groups):
        found = tree.members(group, raw) if tree is not None and len(group) > 1 else None
        if found is not None:
            mask, member_probs = found
            added += int(np.count_nonzero(mask & (merged < 0)))
            merged[mask] = g
            probs[mask] = member_probs
    if added:
        notes.append(f"{added} point(s) HDBSCAN left as noise between merged parts joined their cluster")
    dropped = 0
    if s.member_min_similarity > -1.0 and groups:
        member = merged >= 0
        totals = np.zeros((len(groups), points.shape[1]), dtype=np.float64)
        np.add.at(totals, merged[member], points[member])
        rest = totals[merged[member]] - points[member]  # each member's cluster without itself
        rest_norm = np.linalg.norm(rest, axis=1)
        sim = np.where(rest_norm > 1e-12, np.einsum("ij,ij->i", points[member], rest) / np.maximum(rest_norm, 1e-12),
                       1.0)  # a cluster of one: nothing to compare with (the size rule drops it)
        low = sim < s.member_min_similarity
        dropped = int(np.count_nonzero(low))
        merged[np.flatnonzero(member)[low]] = NOISE
    if dropped:
        notes.append(f"{dropped} member(s) less than {s.member_min_similarity} cosine alike to their cluster: noise")
    sizes = np.bincount(merged[merged >= 0], minlength=len(groups))
    keep = [int(g) for g in np.argsort(-sizes, kind="stable") if sizes[g] >= s.min_cluster_size]
    if len(keep) < len(groups):
        notes.append(f"{len(groups) - len(keep)} cluster(s) left with fewer than min_cluster_size="
                     f"{s.min_cluster_size} members: noise")
    new_of = np.full(len(groups), NOISE, dtype=np.int64)
    new_of[keep] = np.arange(len(keep))
    final = np.where(merged >= 0, new_of[np.maximum(merged, 0)] if groups else NOISE, NOISE)
    return final.astype(np.int64), [sorted(groups[g]) for g in keep], notes


def _one_identity(members: np.ndarray, s: ClusterSettings) -> bool:
    """Whether the two k-means halves of a cluster's (L2-normalised) members are merge_similarity alike."""
    from sklearn.cluster import KMeans

    if s.merge_similarity is None or len(members) < 4:
        return True
    halves = KMeans(n_clusters=2, n_init="auto", random_state=s.seed).fit_predict(members)
    if halves.min() == halves.max():
        return True
    a, b = unit(members[halves == 0].sum(axis=0)), unit(members[halves == 1].sum(axis=0))
    return float(a @ b) >= s.merge_similarity


def _merge(
    groups: list[list[int]], sums: list[np.ndarray], threshold: float
) -> tuple[list[list[int]], list[np.ndarray]]:
    """Greedy: merge the two clusters with the most alike mean directions while they are >= `threshold`."""
    groups, sums = [list(g) for g in groups], list(sums)
    while len(groups) > 1:
        directions = unit(np.stack(sums))
        sim = directions @ directions.T
        np.fill_diagonal(sim, -np.inf)
        a, b = np.unravel_index(int(np.argmax(sim)), sim.shape)
        if sim[a, b] < threshold:
            break
        a, b = min(a, b), max(a, b)
        groups[a] += groups.pop(b)
        sums[a] = sums[a] + sums.pop(b)
    return groups, sums


def _silhouette(feats: np.ndarray, labels: np.ndarray, s: ClusterSettings) -> float | None:
    """Silhouette over the clustered points (a seeded sample of SILHOUETTE_MAX_POINTS beyond that)."""
    from sklearn.metrics import silhouette_score

    member = labels >= 0
    k = len(np.unique(labels[member]))
    if k < 2 or np.count_nonzero(member) <= k:
        return None
    data, lab = feats[member], labels[member]
    if len(lab) > SILHOUETTE_MAX_POINTS:
        pick = np.random.default_rng(s.seed).choice(len(lab), SILHOUETTE_MAX_POINTS, replace=False)
        data, lab = data[pick], lab[pick]
        if len(np.unique(lab)) < 2:
            return None
    return round(float(silhouette_score(data, lab, metric=s.metric)), 4)
