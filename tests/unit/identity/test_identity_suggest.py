"""Nearest-neighbour identity suggestions that learn from each answer."""

from __future__ import annotations

import numpy as np
import pytest

from castlab.identity.suggest import IdentityIndex


def _identities(seed: int = 0, n: int = 3, per: int = 10, dim: int = 64, spread: float = 0.15):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n, dim))
    return [(f"id{i}", centres[i] + spread * np.linalg.norm(centres[i]) * rng.normal(size=dim) / np.sqrt(dim))
            for i in range(n) for _ in range(per)], centres


def test_suggests_the_identity_of_the_nearest_reviewed_neighbours():
    samples, centres = _identities()
    index = IdentityIndex(k=5)
    for j, (name, vec) in enumerate(samples):
        index.learn(f"r{j}", "face", vec, name)
    for i, centre in enumerate(centres):
        got = index.suggest("face", centre)
        assert got is not None and got.identity == f"id{i}" and 0 < got.score <= 1
    assert index.suggest("clip", centres[0]) is None  # routes are never mixed


def test_learns_from_a_correction_without_rebuilding():
    samples, centres = _identities(per=1)
    index = IdentityIndex(k=1, min_similarity=-1.0)
    index.learn("a", "face", samples[0][1], "id0")
    index.learn("b", "face", samples[1][1], "id1")
    assert index.suggest("face", samples[0][1], exclude="a").identity == "id1"  # its own answer excluded
    index.learn("a", "face", samples[0][1], "Bob")  # the reviewer renamed it (webhook)
    assert index.suggest("face", samples[0][1]).identity == "Bob"
    assert len(index) == 2
    index.learn("a", "face", samples[0][1], None)  # answer withdrawn
    assert len(index) == 1 and index.suggest("face", samples[0][1]).identity == "id1"


def test_nothing_close_enough_gives_no_suggestion():
    index = IdentityIndex(min_similarity=0.9)
    index.learn("a", "face", np.eye(8)[0], "id0")
    assert index.suggest("face", np.eye(8)[1]) is None
    assert IdentityIndex().suggest("face", np.ones(8)) is None
    with pytest.raises(ValueError, match="zero"):
        index.learn("z", "face", np.zeros(8), "x")
