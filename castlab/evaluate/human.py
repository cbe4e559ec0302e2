"""The blind human pick: which checkpoints go head to head, Bradley–Terry over the answers, agreement with castlab.

:func:`pair_plan` turns the ranking (:func:`castlab.evaluate.ranking.rank`) and the renders into blind pairs:
the Pareto front's members against each other (a front of one: it against the next-best kept checkpoint; fewer
than two kept checkpoints: no pairs), on the same prompt id and seed, at the ranked LoRA weight, over the
non-leakage families (a trigger-free prompt shows no character to judge). Sides and order are randomised by
hashes seeded with ``cfg.seed``: reproducible, and stable when pairs are added or removed. Within a matchup the
pairs cover every prompt once before a second seed of any prompt, and the better-ranked checkpoint is on the
left in half of them (position bias cancels).

Answers are ``left`` / ``right`` / ``tie`` / ``both bad``. :func:`bradley_terry` fits log-strengths with
``choix.ilsr_pairwise``. **Ties count as half a win for each side**: every decisive answer enters twice and a tie
once in each direction (with the regulariser doubled too, so that it weighs as ``alpha`` does on undoubled
data); dropping ties would throw away a reviewer's "these are equally good", which pulls the two together.
**Both bad is no comparison**: it says nothing about which of the two is better (it is counted, not fitted).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from castlab.config import Config

LEFT, RIGHT, TIE, BOTH_BAD = "left", "right", "tie", "both bad"
ANSWERS = (LEFT, RIGHT, TIE, BOTH_BAD)
JUDGED_FAMILIES = ("identity", "editability", "caption")  # leakage prompts have no character to judge
TIE_RULE = "a tie is half a win for each side; both bad is no comparison"

Outcome = tuple[str, str, str]  # (left checkpoint, right checkpoint, answer)


def _digest(*parts: object) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()


def _ranked(report: Mapping[str, Any]) -> Mapping[str, Any]:
    """The :func:`rank` result, given it or a report that holds it (under ``ranking``/``rank``)."""
    if "front" in report and "ranking" in report:
        return report
    for key in ("ranking", "rank", "ranked"):
        inner = report.get(key)
        if isinstance(inner, Mapping) and "front" in inner and "ranking" in inner:
            return inner
    raise ValueError("pair_plan needs the ranking (castlab.evaluate.ranking.rank): a dict with 'front' and 'ranking'")


def compared_checkpoints(report: Mapping[str, Any]) -> list[str]:
    """The checkpoints a reviewer compares, in castlab's order: the Pareto front (best first); a front of one
    plus the next-best kept checkpoint; [] with fewer than two kept checkpoints."""
    ranked = _ranked(report)
    front, ranking = list(ranked["front"]), list(ranked["ranking"])
    if len(front) >= 2:
        return front
    rest = [name for name in ranking if name not in front]
    return front + rest[:1] if front and rest else []


def pair_plan(report: Mapping[str, Any], renders: Iterable[Mapping[str, Any]], cfg: Config,
              max_per_matchup: int | None = None) -> list[dict[str, Any]]:
    """Blind pairs for the checkpoints of :func:`compared_checkpoints` (see the module doc), in a seeded random
    order. Each pair::

        {"key": opaque id (of the two checkpoints, prompt id and seed; not of the sides or cfg.seed),
         "left": checkpoint, "right": checkpoint, "prompt_id", "prompt",
         "seed", "left_file", "right_file" (render files, relative to the evaluation folder),
         "ranking": the compared checkpoints in castlab's order (what the human ranking is measured against)}

    Checkpoint names and files are for castlab's own bookkeeping: the Label Studio task built from a pair shows
    neither (:mod:`castlab.labelstudio.projects.checkpoints`). `max_per_matchup` caps the pairs per two
    checkpoints (all prompts first, then further seeds); None keeps every shared prompt id and seed.
    """
    if max_per_matchup is not None and max_per_matchup < 1:
        raise ValueError(f"max_per_matchup must be >= 1 or None, got {max_per_matchup}")
    ranked = _ranked(report)
    names = compared_checkpoints(ranked)
    weight = float(ranked.get("weight", cfg.evaluation.lora_weights[0]))
    salt = int(cfg.seed)
    images: dict[str, dict[tuple[str, int], Mapping[str, Any]]] = {name: {} for name in names}
    for r in renders:
        if (r.get("checkpoint") in images and r.get("family") in JUDGED_FAMILIES and r.get("weight") is not None
                and abs(float(r["weight"]) - weight) < 1e-9):
            images[str(r["checkpoint"])][(str(r["prompt_id"]), int(r["seed"]))] = r
    pairs: list[dict[str, Any]] = []
    for a, b in itertools.combinations(names, 2):  # a is ranked above b
        shared = sorted(set(images[a]) & set(images[b]))
        seed_rank = {}
        for prompt_id in {p for p, _ in shared}:
            seeds = sorted((s for p, s in shared if p == prompt_id), key=lambda s: _digest(salt, a, b, prompt_id, s))
            seed_rank.update({(prompt_id, s): i for i, s in enumerate(seeds)})
        order = sorted(shared, key=lambda ps: (seed_rank[ps], _digest(salt, a, b, ps[0])))
        if max_per_matchup is not None:
            order = order[:max_per_matchup]
        flip = int(_digest(salt, "side", a, b)[:8], 16) % 2
        for i, (prompt_id, seed) in enumerate(order):
            left, right = (a, b) if (i + flip) % 2 == 0 else (b, a)
            render = images[left][(prompt_id, seed)]
            pairs.append({
                "key": _digest("pair", *sorted((a, b)), prompt_id, seed)[:16],
                "left": left, "right": right, "prompt_id": prompt_id,
                "prompt": str(render.get("scoring_prompt") or render.get("prompt") or ""), "seed": seed,
                "left_file": str(images[left][(prompt_id, seed)]["file"]),
                "right_file": str(images[right][(prompt_id, seed)]["file"]),
                "ranking": list(names),
            })  # fmt: skip
    return sorted(pairs, key=lambda p: _digest(salt, "order", p["key"]))


def _check_outcomes(names: Sequence[str], outcomes: Iterable[Outcome]) -> list[Outcome]:
    known = set(names)
    checked = []
    for left, right, answer in outcomes:
        if answer not in ANSWERS:
            raise ValueError(f"answer {answer!r} is not one of {ANSWERS}")
        for name in (left, right):
            if name not in known:
                raise ValueError(f"outcome names {name!r}, which is not among the ranked checkpoints {list(names)}")
        if left == right:
            raise ValueError(f"outcome compares {left!r} with itself")
        checked.append((left, right, answer))
    return checked


def bradley_terry(names: Sequence[str], outcomes: Iterable[Outcome], alpha: float = 0.01) -> dict[str, float]:
    """Bradley–Terry log-strength of every name (mean 0; higher = preferred) from ``(left, right, answer)``
    outcomes, via ``choix.ilsr_pairwise`` (ties and both-bad: see the module doc). No comparisons: all 0."""
    import choix

    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"names must be unique: {names}")
    index = {name: i for i, name in enumerate(names)}
    data: list[tuple[int, int]] = []
    for left, right, answer in _check_outcomes(names, outcomes):
        i, j = index[left], index[right]
        if answer == LEFT:
            data += [(i, j), (i, j)]
        elif answer == RIGHT:
            data += [(j, i), (j, i)]
        elif answer == TIE:
            data += [(i, j), (j, i)]
    if not data or len(names) < 2:
        return dict.fromkeys(names, 0.0)
    params = choix.ilsr_pairwise(len(names), data, alpha=2 * alpha)
    params = params - params.mean()
    return {name: float(params[index[name]]) for name in names}


def human_ranking(names: Sequence[str], outcomes: Iterable[Outcome], alpha: float = 0.01,
                  prefer: Sequence[str] | None = None) -> dict[str, Any]:
    """Scores, ranking and the chosen checkpoint (its top; None without a comparison). Equal scores are ordered
    by `prefer` (castlab's order: reviewers who cannot separate two leave castlab's choice), then by name::

        {"scores": {name: float}, "ranking": [names], "chosen": name | None, "tied_top": bool,
         "answers": {"left", "right", "tie", "both bad": count}, "comparisons": answers fitted (not both bad)}
    """
    outcomes = _check_outcomes(names, outcomes)
    counts = Counter(answer for _, _, answer in outcomes)
    scores = bradley_terry(names, outcomes, alpha)
    position = {name: i for i, name in enumerate(prefer or [])}
    ranking = sorted(scores, key=lambda n: (-round(scores[n], 9), position.get(n, len(position)), n))
    comparisons = sum(counts[a] for a in (LEFT, RIGHT, TIE))
    chosen = ranking[0] if comparisons and ranking else None
    tied_top = bool(chosen and len(ranking) > 1 and abs(scores[ranking[0]] - scores[ranking[1]]) <= 1e-9)
    return {"scores": scores, "ranking": ranking, "chosen": chosen, "tied_top": tied_top,
            "answers": {a: counts[a] for a in ANSWERS}, "comparisons": comparisons}


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two paired score lists (None when undefined: fewer than two items, or one list
    constant)."""
    from scipy.stats import kendalltau

    if len(x) != len(y):
        raise ValueError(f"kendall_tau needs paired lists, got {len(x)} and {len(y)} values")
    if len(x) < 2:
        return None
    tau = kendalltau(np.asarray(x, dtype=float), np.asarray(y, dtype=float)).statistic
    return None if tau is None or not np.isfinite(tau) else float(tau)


def agreement(castlab_ranking: Sequence[str], human_ranking: Sequence[str] | Mapping[str, Any],
              n_pairs: int | None = None) -> dict[str, Any]:
    """How well castlab's order of the compared checkpoints matches the reviewers' ::

        {"kendall_tau": tau-b over the checkpoints both rank (None if fewer than two, or the human scores
                        are all equal), "top1_hit": castlab's first == the human choice (None without one),
         "n_pairs": the answered pairs the human ranking rests on, "n_checkpoints": int}

    `human_ranking`: a list of names (best first) or the :func:`human_ranking` dict (its scores then decide
    ties, its ``comparisons`` is `n_pairs` unless given, and a tied top leaves ``top1_hit`` None).
    """
    if isinstance(human_ranking, Mapping):
        scores = dict(human_ranking["scores"])
        order = list(human_ranking["ranking"])
        chosen = None if human_ranking.get("tied_top") else human_ranking.get("chosen")
        n_pairs = int(human_ranking.get("comparisons", 0)) if n_pairs is None else n_pairs
    else:
        order = list(human_ranking)
        scores = {name: -float(i) for i, name in enumerate(order)}
        chosen = order[0] if order else None
    common = [name for name in castlab_ranking if name in scores]
    tau = kendall_tau([-float(i) for i in range(len(common))], [scores[name] for name in common])
    top1 = None if chosen is None or not castlab_ranking else castlab_ranking[0] == chosen
    return {"kendall_tau": tau, "top1_hit": top1, "n_pairs": int(n_pairs or 0), "n_checkpoints": len(common)}
