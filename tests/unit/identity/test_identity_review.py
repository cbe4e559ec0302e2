"""Identity review decisions → one identity per instance, including the awkward cases."""

from __future__ import annotations

import pytest

from castlab.identity.review import ClusterDecision, InstanceDecision, resolve

MEMBERS = {"a1": 0, "a2": 0, "b1": 1, "c1": 2, "d1": 3, "n1": -1}


def test_undecided_clusters_keep_their_default_names_and_noise_has_none():
    out = resolve(MEMBERS, {})
    assert out.instances["a1"].identity == "character_0" and out.instances["a1"].state == "unreviewed"
    assert out.instances["n1"].identity is None and out.instances["n1"].state == "noise"
    assert set(out.instances) == set(MEMBERS)  # nobody lost


def test_names_merges_noise_and_split_apply_to_members():
    decisions = {
        0: ClusterDecision("name", name="Bob"),
        1: ClusterDecision("merge", merge_into=2),
        2: ClusterDecision("merge", merge_into=0),  # a chain: 1 → 2 → 0
        3: ClusterDecision("split"),
    }
    out = resolve(MEMBERS, decisions)
    assert [out.instances[r].identity for r in ("a1", "a2", "b1", "c1")] == ["Bob"] * 4
    assert out.instances["b1"].state == "cluster"
    assert out.instances["d1"].identity is None and out.instances["d1"].state == "split"
    assert resolve(MEMBERS, {0: ClusterDecision("noise")}).instances["a1"].state == "noise"


def test_duplicate_names_are_one_identity():
    out = resolve(MEMBERS, {0: ClusterDecision("name", name="Bob"), 1: ClusterDecision("name", name="  bOB ")})
    assert out.instances["b1"].identity == "Bob"
    assert any("same name" in note for note in out.notes)


def test_merge_into_a_missing_cluster_or_a_cycle_is_not_applied():
    out = resolve(MEMBERS, {1: ClusterDecision("merge", merge_into=42)})
    assert out.instances["b1"].identity == "character_1"
    assert any("character_42" in n and "no such cluster" in n for n in out.notes)
    cycle = resolve(MEMBERS, {1: ClusterDecision("merge", merge_into=2), 2: ClusterDecision("merge", merge_into=1)})
    assert cycle.instances["b1"].identity == "character_1" and cycle.instances["c1"].identity == "character_2"
    assert any("cycle" in n for n in cycle.notes)


def test_instance_decisions_override_their_cluster():
    decisions = {0: ClusterDecision("name", name="Bob"), 2: ClusterDecision("name", name="Ann")}
    instances = {
        "a2": InstanceDecision(identity="character_2"),  # a default name means what that cluster became
        "b1": InstanceDecision(identity="Zed"),  # a new name
        "n1": InstanceDecision(identity="bob"),  # noise rescued, spelt as the identity already is
        "c1": InstanceDecision(not_character=True),
    }
    out = resolve(MEMBERS, decisions, instances)
    assert out.instances["a1"].identity == "Bob" and out.instances["a1"].source == "cluster"
    assert out.instances["a2"].identity == "Ann" and out.instances["a2"].source == "instance"
    assert out.instances["b1"].identity == "Zed"
    assert out.instances["n1"].identity == "Bob"
    assert out.instances["c1"].identity is None and out.instances["c1"].state == "not_character"


def test_single_identity_and_all_noise():
    single = resolve({"x": 0, "y": 0}, {0: ClusterDecision("name", name="Solo")})
    assert {r.identity for r in single.instances.values()} == {"Solo"}
    noise = resolve({"x": -1, "y": -1}, {})
    assert all(r.state == "noise" for r in noise.instances.values()) and noise.cluster_identity == {}


def test_unknown_decision_kind_is_refused():
    with pytest.raises(ValueError, match="cluster decision"):
        ClusterDecision("rename")
