"""Turn identity review decisions into one named identity per instance (pure logic, no I/O).

Two levels of decisions come back from Label Studio:

- **cluster** decisions (the cluster-level project, one task per cluster, shown as a contact sheet):
  ``name`` (give the cluster an identity name), ``merge`` (into another cluster), ``noise`` (its members
  are no character identity), ``split`` (the cluster mixes identities: its members wait for instance
  review);
- **instance** decisions (the instance-level project, one task per instance, preselected from its
  cluster): an identity from the list (a cluster's default name ``character_<k>`` or a reviewed name), a
  new name typed in, or "not a character". They override their cluster's decision.

Clear outcomes for the awkward cases, never a lost instance:

- names are compared without case and surrounding/double spaces: two clusters named "Bob" and " bob"
  are one identity (spelt as first seen, clusters in order) and the report lists the merge by name;
- a merge follows chains (3 → 5 → 2); a merge into a cluster that does not exist (any more), or a cycle,
  is not applied: the cluster keeps its own identity and the report says why;
- an undecided cluster keeps its default name ``character_<k>`` (state ``unreviewed``); noise (-1) has
  no identity unless an instance decision gives one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NOISE = -1
NOT_A_CHARACTER = "not a character"
CLUSTER_KINDS = ("name", "merge", "noise", "split")


def default_name(cluster: int) -> str:
    return f"character_{cluster}"


def cluster_of_default_name(name: str) -> int | None:
    match = re.fullmatch(r"character_(\d+)", name.strip())
    return int(match.group(1)) if match else None


def normalise(name: str) -> str:
    """The form names are compared in: trimmed, inner spaces collapsed, case-folded."""
    return " ".join(name.split()).casefold()


@dataclass(frozen=True)
class ClusterDecision:
    kind: str  # name | merge | noise | split
    name: str | None = None  # for "name"
    merge_into: int | None = None  # for "merge"

    def __post_init__(self) -> None:
        if self.kind not in CLUSTER_KINDS:
            raise ValueError(f"cluster decision must be one of {CLUSTER_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class InstanceDecision:
    identity: str | None = None  # a listed identity, a default cluster name or a new name
    not_character: bool = False


@dataclass
class Resolved:
    identity: str | None
    state: str  # reviewed | cluster | unreviewed | noise | split | not_character
    source: str  # instance | cluster | none


@dataclass
class Resolution:
    instances: dict[str, Resolved]
    cluster_identity: dict[int, str | None]
    notes: list[str] = field(default_factory=list)


def resolve(
    membership: dict[str, int],
    clusters: dict[int, ClusterDecision],
    instances: dict[str, InstanceDecision] | None = None,
) -> Resolution:
    """`membership`: instance row id → cluster (-1 noise); decisions by cluster and by instance."""
    instances = instances or {}
    notes: list[str] = []
    known = sorted({c for c in membership.values() if c != NOISE} | {c for c in clusters if c != NOISE})
    spelling: dict[str, str] = {}  # normalised name → the spelling first seen

    def canonical(name: str, where: str) -> str:
        key = normalise(name)
        first = spelling.setdefault(key, " ".join(name.split()))
        if first != " ".join(name.split()):
            notes.append(f"{where}: name {name!r} is the identity {first!r} (same name)")
        return first

    # 1. each cluster's own outcome (names first, in cluster order, so spellings are stable)
    own: dict[int, tuple[str, str | None]] = {}  # cluster → (state, identity)
    for c in known:
        decision = clusters.get(c)
        if decision is None:
            own[c] = ("unreviewed", default_name(c))
        elif decision.kind == "name":
            if decision.name and decision.name.strip():
                own[c] = ("cluster", canonical(decision.name, default_name(c)))
            else:
                notes.append(f"{default_name(c)}: 'name' without a name; kept as {default_name(c)}")
                own[c] = ("unreviewed", default_name(c))
        elif decision.kind == "noise":
            own[c] = ("noise", None)
        elif decision.kind == "split":
            own[c] = ("split", None)
        else:
            own[c] = ("merge", None)
    # 2. merges, following chains
    final: dict[int, tuple[str, str | None]] = {}
    for c in known:
        state, identity = own[c]
        if state != "merge":
            final[c] = (state, identity)
            continue
        seen, target = [c], clusters[c].merge_into
        while True:
            if target is None or target not in own:
                notes.append(f"{default_name(c)}: merge into {default_name(target) if target is not None else '?'}"
                             " not applied: no such cluster; it keeps its own identity")
                final[c] = ("unreviewed", default_name(c))
                break
            if target in seen:
                notes.append(f"{default_name(c)}: merge chain {' → '.join(map(str, [*seen, target]))} is a cycle;"
                             " not applied")
                final[c] = ("unreviewed", default_name(c))
                break
            t_state, t_identity = own[target]
            if t_state != "merge":
                final[c] = ("cluster" if t_state == "cluster" else t_state, t_identity)
                break
            seen.append(target)
            target = clusters[target].merge_into
    cluster_identity = {c: final[c][1] for c in known}
    # 3. instances: their own decision wins, else their cluster's
    resolved: dict[str, Resolved] = {}
    for row_id, cluster in membership.items():
        decision = instances.get(row_id)
        if decision is not None and decision.not_character:
            resolved[row_id] = Resolved(None, "not_character", "instance")
            continue
        if decision is not None and decision.identity and decision.identity.strip():
            named = cluster_of_default_name(decision.identity)
            if named is not None and named in cluster_identity:  # "character_3" means whatever cluster 3 became
                target = cluster_identity[named]
                if target is not None:
                    resolved[row_id] = Resolved(target, "reviewed", "instance")
                    continue
            resolved[row_id] = Resolved(canonical(decision.identity, row_id), "reviewed", "instance")
            continue
        if cluster == NOISE:
            resolved[row_id] = Resolved(None, "noise", "none")
            continue
        state, identity = final[cluster]
        resolved[row_id] = Resolved(identity, state, "cluster" if state == "cluster" else "none")
    return Resolution(resolved, cluster_identity, notes)
