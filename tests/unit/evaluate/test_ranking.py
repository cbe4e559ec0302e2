"""Checkpoint aggregates (seed bootstrap), gates, Pareto front and recommendation on small hand-made tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from castlab.config import load_config
from castlab.errors import InputError
from castlab.evaluate.ranking import aggregate, rank, weight_key

PROMPTS = {"identity": ["identity/front", "identity/profile"], "editability": ["editability/outfit"],
           "leakage": ["leakage/class"], "caption": ["caption/0"]}


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny")


def renders_for(name, step, weight, seeds, *, identity=0.5, clip_t=0.3, leakage=0.0, drift=0.1, memorisation=0.5,
                jitter=0.0, arcface=None):
    """One render per prompt x seed; identity-family margins = `identity` + `jitter` * (+1 | -1 by seed parity)."""
    out = []
    for family, ids in PROMPTS.items():
        for prompt_id in ids:
            for seed in seeds:
                sign = 1 if seed % 2 else -1
                out.append({
                    "checkpoint": name, "step": step, "weight": weight, "family": family, "prompt_id": prompt_id,
                    "prompt": prompt_id, "scoring_prompt": prompt_id, "seed": seed,
                    "file": f"{name}/{prompt_id}_{seed}.png",
                    "identity_margin": (leakage if family == "leakage" else identity + jitter * sign),
                    "detected": seed != seeds[0], "arcface": arcface,
                    "clip_t": clip_t + (0.1 if family == "editability" else 0.0),
                    "memorisation": memorisation if family != "leakage" else None,
                    "drift": (drift if family == "leakage" and weight is not None else None),
                })
    return out


def table(**checkpoints):
    """Hand-made aggregates: name=(step, {metric: mean}); the base model is the entry named 'base'."""
    out = {}
    for name, (step, means) in checkpoints.items():
        metrics = {m: {"mean": v, "low": v, "high": v} for m, v in means.items()}
        key = weight_key(None if name == "base" else 1.0)
        out[name] = {"checkpoint": name, "step": step, "weights": {key: metrics}}
    return out


BASE = (None, {"identity": 0.0, "prompt_following": 0.3, "diversity": 0.4, "memorisation": 0.5, "leakage": 0.25})
OK = {"leakage": 0.25, "drift": 0.1, "memorisation": 0.5, "diversity": 0.4}


# ---------------------------------------------------------------- aggregate


def test_aggregate_means_follow_the_families(cfg):
    renders = renders_for("base", None, None, [1, 2, 3]) + renders_for("ck", 100, 1.0, [1, 2, 3], identity=0.6)
    renders += renders_for("ck", 100, 0.7, [1, 2, 3], identity=0.4, arcface=0.8)
    agg = aggregate(renders, cfg)
    assert set(agg) == {"base", "ck"} and set(agg["ck"]["weights"]) == {"1.0", "0.7"}
    assert set(agg["base"]["weights"]) == {"none"} and agg["ck"]["step"] == 100
    full = agg["ck"]["weights"]["1.0"]
    assert full["identity"]["mean"] == pytest.approx(0.6)  # leakage margins (0.0) left out
    assert full["leakage"]["mean"] == pytest.approx(0.0)
    assert full["prompt_following"]["mean"] == pytest.approx(0.4)  # editability only
    assert full["clip_t"]["mean"] == pytest.approx((4 * 0.3 + 0.4) / 5)  # every family
    assert full["detection_rate"]["mean"] == pytest.approx(2 / 3)
    assert full["arcface"] is None and agg["ck"]["weights"]["0.7"]["arcface"]["mean"] == pytest.approx(0.8)
    assert agg["ck"]["weights"]["0.7"]["identity"]["mean"] == pytest.approx(0.4)
    assert agg["base"]["weights"]["none"]["drift"] is None and full["drift"]["mean"] == pytest.approx(0.1)
    assert full["diversity"] is None and full["images"] == 15 and full["seeds"] == [1, 2, 3]
    json.dumps(agg)


def test_intervals_contain_the_mean_and_shrink_with_more_seeds(cfg):
    few = aggregate(renders_for("ck", 1, 1.0, list(range(1, 5)), jitter=0.2), cfg)["ck"]["weights"]["1.0"]
    many = aggregate(renders_for("ck", 1, 1.0, list(range(1, 41)), jitter=0.2), cfg)["ck"]["weights"]["1.0"]
    for stats in (few["identity"], many["identity"]):
        assert stats["low"] < stats["mean"] < stats["high"]
        assert stats["mean"] == pytest.approx(0.5)
    width = {n: s["identity"]["high"] - s["identity"]["low"] for n, s in (("few", few), ("many", many))}
    assert width["many"] < 0.6 * width["few"]
    constant = few["memorisation"]
    assert constant["low"] == pytest.approx(constant["mean"]) == pytest.approx(constant["high"])


def test_bootstrap_is_deterministic_and_follows_the_seed(cfg):
    renders = renders_for("ck", 1, 1.0, [1, 2, 3, 4, 5], jitter=0.3)
    renders[0]["identity_margin"] = 2.0  # skew it so resamples differ
    cfg = cfg.with_overrides({"evaluation": {"bootstrap": 20}})
    first, again = aggregate(renders, cfg), aggregate(renders, cfg)
    assert first == again
    other = aggregate(renders, cfg.with_overrides({"seed": 99}))
    assert other["ck"]["weights"]["1.0"]["identity"] != first["ck"]["weights"]["1.0"]["identity"]
    fewer = aggregate(renders, cfg.with_overrides({"evaluation": {"bootstrap": 10}}))  # the estimate needs no draws
    assert fewer["ck"]["weights"]["1.0"]["identity"]["mean"] == first["ck"]["weights"]["1.0"]["identity"]["mean"]


def test_diversity_from_embeddings_uses_distinct_drawn_seeds(cfg):
    renders = renders_for("ck", 1, 1.0, [1, 2])
    dim = 8
    eye = np.eye(dim)
    # identity/front: orthogonal across seeds (distance 1); every other prompt: identical (distance 0)
    keyed = {(r["checkpoint"], 1.0, r["prompt_id"], r["seed"]):
             (eye[r["seed"]] if r["prompt_id"] == "identity/front" else eye[0]) for r in renders}
    aligned = np.stack([keyed[(r["checkpoint"], 1.0, r["prompt_id"], r["seed"])] for r in renders])
    by_map = aggregate(renders, cfg, keyed)["ck"]["weights"]["1.0"]
    by_rows = aggregate(renders, cfg, aligned)["ck"]["weights"]["1.0"]
    assert by_map == by_rows
    assert by_map["diversity_by_prompt"] == {"caption/0": 0.0, "editability/outfit": 0.0, "identity/front": 1.0,
                                             "identity/profile": 0.0}  # the leakage prompt is left out
    # with two seeds, a draw holds both (same value) or one (no pair: left out) -- never a diluted value
    assert by_map["diversity"] == {"mean": 0.25, "low": 0.25, "high": 0.25}
    with pytest.raises(ValueError, match="align"):
        aggregate(renders, cfg, aligned[:-1])


def test_bad_renders_are_named(cfg):
    renders = renders_for("ck", 1, 1.0, [1, 2])
    missing = [dict(r) for r in renders]
    missing[3]["identity_margin"] = None
    with pytest.raises(InputError, match="identity_margin") as err:
        aggregate(missing, cfg)
    assert err.value.path == missing[3]["file"]
    with pytest.raises(InputError, match="duplicate"):
        aggregate(renders + renders[:1], cfg)
    with pytest.raises(InputError, match="family"):
        aggregate([{**renders[0], "family": "style"}], cfg)


# ---------------------------------------------------------------- rank


@pytest.mark.parametrize("metric,at,over,gate", [
    ("leakage", 0.30, 0.31, "leaks"),  # base 0.25, max_leakage_gain 0.05
    ("drift", 0.5, 0.51, "leaks"),
    ("memorisation", 0.97, 0.971, "memorises"),
    ("diversity", 0.2, 0.199, "collapses"),  # min_diversity_ratio 0.5 x base 0.4
])
def test_gates_fire_above_the_threshold_only(cfg, metric, at, over, gate):
    result = rank(table(base=BASE, edge=(1, {**OK, "identity": 0.5, "prompt_following": 0.5, metric: at}),
                        beyond=(2, {**OK, "identity": 0.6, "prompt_following": 0.6, metric: over})), cfg)
    edge, beyond = result["checkpoints"]["edge"], result["checkpoints"]["beyond"]
    assert edge["status"] == "recommended" and edge["gates"][gate] is False
    assert beyond["status"] == "gated" and beyond["gates"][gate] is True and beyond["rank"] is None
    reason = " ".join(beyond["reasons"])
    assert reason.startswith(gate) and f"{over:.3f}" in reason
    assert result["ranking"] == ["edge"] and result["recommended"] == "edge"


def test_dominated_checkpoints_leave_the_front(cfg):
    result = rank(table(base=BASE, a=(1, {**OK, "identity": 0.5, "prompt_following": 0.5}),
                        b=(2, {**OK, "identity": 0.4, "prompt_following": 0.4}),
                        c=(3, {**OK, "identity": 0.6, "prompt_following": 0.3})), cfg)
    rows = result["checkpoints"]
    assert rows["b"]["status"] == "dominated" and rows["b"]["dominated_by"] == ["a"]
    assert "dominated by a" in rows["b"]["reasons"][-1]
    assert {rows["a"]["status"], rows["c"]["status"]} == {"recommended", "pareto"}
    assert set(result["front"]) == {"a", "c"} and result["ranking"][-1] == "b"
    assert [rows[n]["rank"] for n in result["ranking"]] == [1, 2, 3]


def test_maximin_beats_the_best_identity(cfg):
    result = rank(table(base=BASE, sharp=(3, {**OK, "identity": 0.9, "prompt_following": 0.1}),
                        balanced=(2, {**OK, "identity": 0.7, "prompt_following": 0.7}),
                        loose=(1, {**OK, "identity": 0.1, "prompt_following": 0.9})), cfg)
    assert result["recommended"] == "balanced"
    rows = result["checkpoints"]
    assert rows["balanced"]["score"] == pytest.approx(0.75) and rows["sharp"]["score"] == pytest.approx(0.0)
    assert rows["sharp"]["normalised"]["identity"] == 1.0 and rows["sharp"]["status"] == "pareto"
    assert result["front"][0] == "balanced" and result["ranking"] == result["front"]
    assert list(rows) == result["ranking"]
    json.dumps(result)


def test_all_gated_means_no_recommendation(cfg):
    result = rank(table(base=BASE, a=(1, {**OK, "identity": 0.5, "prompt_following": 0.5, "memorisation": 0.99}),
                        b=(2, {**OK, "identity": 0.6, "prompt_following": 0.6, "drift": 0.9})), cfg)
    assert result["recommended"] is None and result["front"] == [] and result["ranking"] == []
    assert "no checkpoint passed" in result["reason"]
    assert {r["status"] for r in result["checkpoints"].values()} == {"gated"}
    assert list(result["checkpoints"]) == ["a", "b"]


def test_ties_go_to_the_higher_step_then_the_name(cfg):
    same = {**OK, "identity": 0.5, "prompt_following": 0.5}
    result = rank(table(base=BASE, early=(100, same), late=(200, same)), cfg)
    assert result["recommended"] == "late" and "tied with early" in result["reason"]
    rows = result["checkpoints"]
    assert rows["early"]["normalised"]["identity"] == 0.5 and rows["early"]["status"] == "pareto"
    by_name = rank(table(base=BASE, zeta=(100, same), alpha=(100, same)), cfg)
    assert by_name["recommended"] == "alpha" and by_name["ranking"] == ["alpha", "zeta"]


def test_missing_base_or_metric_is_explained(cfg):
    with pytest.raises(ValueError, match="base"):
        rank(table(a=(1, {**OK, "identity": 0.5, "prompt_following": 0.5})), cfg)
    result = rank(table(base=BASE, a=(1, {"identity": 0.5, "prompt_following": 0.5}),
                        b=(2, {"identity": 0.5})), cfg)
    assert result["recommended"] == "a"
    assert result["checkpoints"]["a"]["gates"] == {"leaks": None, "memorises": None, "collapses": None}
    assert "not applied" in result["checkpoints"]["a"]["reasons"][0]
    b = result["checkpoints"]["b"]
    assert b["status"] == "gated" and "prompt_following" in b["reasons"][0]


def test_aggregate_then_rank_end_to_end(cfg):
    seeds = [1, 2, 3, 4]
    renders = renders_for("base", None, None, seeds, identity=0.0, leakage=0.1)
    renders += renders_for("untrained", 0, 1.0, seeds, identity=0.0, clip_t=0.35, leakage=0.1, jitter=0.05)
    renders += renders_for("early", 50, 1.0, seeds, identity=0.3, clip_t=0.30, leakage=0.1, jitter=0.05)
    renders += renders_for("converged", 100, 1.0, seeds, identity=0.6, clip_t=0.32, leakage=0.1, jitter=0.05)
    renders += renders_for("leaky", 150, 1.0, seeds, identity=0.7, clip_t=0.32, leakage=0.4, jitter=0.05)
    renders += renders_for("converged", 100, 0.7, seeds, identity=0.9, clip_t=0.9)  # reported, never ranked
    result = rank(aggregate(renders, cfg), cfg)
    rows = result["checkpoints"]
    assert result["recommended"] == "converged" and rows["early"]["dominated_by"] == ["converged"]
    assert rows["untrained"]["status"] == "pareto"
    assert rows["leaky"]["status"] == "gated" and rows["leaky"]["gates"]["leaks"] is True
    assert rows["untrained"]["metrics"]["identity"] < rows["early"]["metrics"]["identity"] < \
        rows["converged"]["metrics"]["identity"]
    assert result["weight"] == 1.0 and result["base"]["metrics"]["leakage"] == pytest.approx(0.1)
