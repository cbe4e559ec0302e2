"""Identity clustering on synthetic embeddings with known identities.

UMAP compiles with numba: the first run of this file in a fresh checkout takes ~30 s on 2 cores (the
compiled code is cached in `.cache/numba`); later runs take about 5 s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from castlab.config import PROJECT_ROOT, load_config
from castlab.errors import ConfigError, InputError
from castlab.identity.cluster import NOISE, ClusterSettings, cluster_embeddings
from castlab.identity.outputs import REPORT, SCATTER, SCATTER_SIZE, SHEET_COLUMNS, SHEET_TILE, write_cluster_outputs


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def identities(sizes: list[int], outliers: int = 0, seed: int = 0, d: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random centres (same-identity cosine ~0.6, others ~0) plus random outliers (-1)."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(len(sizes), d)))
    parts = [_unit(centres[i] + 0.8 * _unit(rng.normal(size=(k, d)))) for i, k in enumerate(sizes)]
    parts.append(_unit(rng.normal(size=(outliers, d))))
    truth = np.concatenate([np.full(k, i) for i, k in enumerate(sizes)] + [np.full(outliers, -1)])
    order = rng.permutation(len(truth))
    return np.vstack(parts)[order], truth[order]


@pytest.fixture(scope="module")
def settings() -> ClusterSettings:
    return ClusterSettings.from_config(load_config())


@pytest.fixture(scope="module")
def four(settings: ClusterSettings):
    """4 identities x 40 + 20 outliers, clustered once with the defaults (HDBSCAN)."""
    x, truth = identities([40] * 4, outliers=20)
    return x, truth, cluster_embeddings(x, settings, progress=False)


def test_settings_come_from_the_config(settings: ClusterSettings) -> None:
    cfg = load_config()
    assert settings.method == "hdbscan"
    assert (settings.min_cluster_size, settings.min_samples, settings.metric) == (12, 2, "cosine")
    assert (settings.pca_components, settings.umap_components, settings.umap_neighbors) == (50, 5, 15)
    assert settings.umap_min_dist == 0.0 and settings.kmeans_clusters == 8
    assert settings.agglomerative_distance == 0.5
    assert settings.seed == cfg.seed
    other = ClusterSettings.from_config(load_config(extra={"seed": 7, "clustering": {"min_cluster_size": 30}}))
    assert (other.seed, other.min_cluster_size) == (7, 30)


@pytest.mark.parametrize(
    ("key", "value"),
    [("method", "dbscan"), ("min_cluster_size", 1), ("min_cluster_size", "12"), ("min_samples", 0),
     ("metric", "manhattan"), ("pca_components", -1), ("umap_components", 1), ("umap_neighbors", True),
     ("umap_min_dist", 2.0), ("kmeans_clusters", 0), ("agglomerative_distance", 0), ("merge_similarity", 1.5)],
)
def test_bad_settings_name_their_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"clustering.{key}"):
        ClusterSettings.from_config(load_config(extra={"clustering": {key: value}}))


def test_hdbscan_recovers_identities_and_marks_outliers_noise(four) -> None:
    x, truth, result = four
    assert adjusted_rand_score(truth, result.labels) > 0.9
    assert np.mean(result.labels[truth == -1] == NOISE) >= 0.8
    assert result.n_clusters == 4 and sorted(result.sizes, reverse=True) == result.sizes
    assert set(np.unique(result.labels)) == {NOISE, 0, 1, 2, 3}
    assert all(p is not None and p > 0 for p in result.persistence)
    assert result.silhouette is not None and result.silhouette > 0.2
    assert np.all((result.probabilities >= 0) & (result.probabilities <= 1))
    assert np.all(result.probabilities[result.labels == NOISE] == 0)
    assert result.embedding_2d.shape == (len(x), 2) and np.isfinite(result.embedding_2d).all()
    assert result.reason is None
    assert result.parameters["pca_used"] is True and result.parameters["min_cluster_size"] == 12


@pytest.mark.parametrize("method", ["kmeans", "agglomerative"])
def test_kmeans_and_agglomerative_run(settings: ClusterSettings, method: str) -> None:
    x, truth = identities([40] * 4, outliers=20, seed=1)
    result = cluster_embeddings(x, dataclasses.replace(settings, method=method, kmeans_clusters=4), progress=False)
    assert result.parameters["method"] == method
    assert adjusted_rand_score(truth, result.labels) > 0.9
    assert np.all(result.probabilities[result.labels >= 0] == 1.0)
    assert all(p is None for p in result.persistence)
    assert np.isfinite(result.embedding_2d).all()


def test_min_cluster_size_is_honoured(settings: ClusterSettings) -> None:
    x, truth = identities([60, 40, 20], outliers=10, seed=2)
    result = cluster_embeddings(x, dataclasses.replace(settings, min_cluster_size=30), progress=False)
    assert result.sizes == [60, 40]
    assert np.all(result.labels[truth == 2] == NOISE)  # the group of 20 is smaller than 30
    every = cluster_embeddings(x[truth != 0], dataclasses.replace(settings, min_cluster_size=70), progress=False)
    assert every.n_clusters == 0 and every.n_noise == len(every.labels)
    assert "no cluster found" in every.reason and "min_cluster_size=70" in every.reason


def test_a_single_identity_is_one_cluster(settings: ClusterSettings) -> None:
    x, _ = identities([80])
    result = cluster_embeddings(x, settings, progress=False)
    assert result.sizes == [80] and result.silhouette is None
    assert "single identity" in " ".join(result.notes)


def test_tiny_inputs_are_all_noise_with_a_reason(settings: ClusterSettings) -> None:
    x, _ = identities([5])
    result = cluster_embeddings(x, settings, progress=False)
    assert result.n_clusters == 0 and np.all(result.labels == NOISE)
    assert "fewer than clustering.min_cluster_size=12" in result.reason
    empty = cluster_embeddings(np.zeros((0, 512)), settings, progress=False)
    assert len(empty.labels) == 0 and "no valid embeddings" in empty.reason


def test_fewer_points_than_neighbours_and_invalid_rows(settings: ClusterSettings) -> None:
    x, _ = identities([14])
    x[0] = 0.0  # a failed embedding: noise, never clustered
    result = cluster_embeddings(x, settings, progress=False)
    assert result.parameters["umap_neighbors_used"] == 12
    assert result.labels[0] == NOISE and result.n_clusters == 1
    assert any("invalid" in n for n in result.notes) and any("lowered to 12" in n for n in result.notes)


def _rows(tmp_path: Path, n: int) -> list[dict]:
    crops = tmp_path / "crops"
    crops.mkdir()
    rows = []
    for i in range(n):
        path = crops / f"{i}.png"
        Image.new("RGBA", (30, 40), (i % 255, 80, 160, 255)).save(path)
        rows.append({"row_id": f"inst:vid:{i:06d}:0", "crop_path": str(path), "model_version": "tiny-sam2"})
    return rows


def test_outputs_folders_report_and_pictures(tmp_path: Path, four) -> None:
    x, truth, result = four
    rows = _rows(tmp_path, len(x))
    rows[1]["crop_path"] = str(tmp_path / "gone.png")
    out = tmp_path / "clusters"
    report = write_cluster_outputs(out, rows, result, progress=False)

    for k, size in enumerate(result.sizes):
        files = sorted((out / f"character_{k}").iterdir())
        assert len(files) == size - int(result.labels[1] == k)
        assert all(f.name.startswith("inst_vid_") and f.suffix == ".png" for f in files)
        sheet = Image.open(out / "contact_sheets" / f"character_{k}.png")
        assert sheet.width == 6 + SHEET_COLUMNS * (SHEET_TILE + 6)
    assert len(list((out / "noise").iterdir())) == result.n_noise - int(result.labels[1] == NOISE)
    assert (out / "character_0" / "inst_vid_000000_0.png").exists() or result.labels[0] != 0
    assert Image.open(out / SCATTER).size == SCATTER_SIZE
    assert (out / "contact_sheets" / "noise.png").exists()

    saved = json.loads((out / REPORT).read_text())
    assert saved == json.loads(json.dumps(report, default=str))
    assert saved["profile"] == "tiny"
    assert saved["counts"]["clusters"] == 4 and saved["counts"]["points"] == len(x)
    assert saved["counts"]["missing_crops"] == 1 and saved["missing_crops"] == [rows[1]["row_id"]]
    assert saved["noise_share"] == round(result.noise_share, 4) and saved["silhouette"] == result.silhouette
    assert [c["size"] for c in saved["clusters"]] == result.sizes
    assert {"persistence", "members", "contact_sheet", "merged_from"} <= set(saved["clusters"][0])
    assert saved["parameters"]["min_samples"] == 2 and saved["reason"] is None
    assert sum(len(c["members"]) for c in saved["clusters"]) + saved["noise"]["size"] == len(x)


def test_no_overwrite_without_force(tmp_path: Path, settings: ClusterSettings) -> None:
    x, _ = identities([5])
    result = cluster_embeddings(x, settings, progress=False)
    rows = _rows(tmp_path, len(x))
    out = tmp_path / "clusters"
    report = write_cluster_outputs(out, rows, result, progress=False)
    assert report["reason"] and report["counts"]["noise"] == 5
    assert Image.open(out / SCATTER).size == SCATTER_SIZE
    (out / "character_7").mkdir()  # left by an earlier run
    with pytest.raises(InputError, match=REPORT):
        write_cluster_outputs(out, rows, result, progress=False)
    write_cluster_outputs(out, rows, result, force=True, progress=False)
    assert not (out / "character_7").exists() and len(list((out / "noise").iterdir())) == 5
    with pytest.raises(InputError, match="rows but"):
        write_cluster_outputs(tmp_path / "other", rows[:3], result, progress=False)


def test_importing_sets_no_environment_and_setup_runtime_points_numba_at_the_project(tmp_path: Path) -> None:
    code = (
        "import os, json; before = dict(os.environ)\n"
        "import castlab.identity.cluster, castlab.identity.outputs\n"
        "imported = dict(os.environ)\n"
        "from castlab.runtime import setup_runtime; setup_runtime(); setup_runtime()\n"
        "print(json.dumps([imported == before, os.environ.get('NUMBA_CACHE_DIR')]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                         check=True)
    unchanged, cache = json.loads(run.stdout.strip().splitlines()[-1])
    assert unchanged and cache == str(PROJECT_ROOT / ".cache" / "numba")
    env["NUMBA_CACHE_DIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                         check=True)
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [True, str(tmp_path)]
