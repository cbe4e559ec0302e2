"""Per-checkpoint aggregates with seed-bootstrap intervals, then gates, the Pareto front and the recommendation.

:func:`aggregate` turns scored renders (the contract's per-image dicts) into, per checkpoint and LoRA weight::

    {"<checkpoint>": {"checkpoint": str, "step": int | None,
                      "weights": {"1.0": {"images": int, "seeds": [int, ...],
                                          "identity": {"mean", "low", "high"} | None, ...,
                                          "diversity_by_prompt": {prompt_id: float}}}}}

Weight keys are :func:`weight_key` (``"1.0"``, ``"0.7"``; ``"none"`` for the base model). A metric without a
single value (e.g. ``drift`` of the base model, ``arcface`` without faces) is ``None``.

Metrics (:data:`METRICS`, per render key and families): identity = mean ``identity_margin`` over the identity,
editability and caption families; prompt_following = mean ``clip_t`` over editability; memorisation = mean
``memorisation`` over those three families; leakage = mean ``identity_margin`` and drift = mean ``drift`` over the
leakage family; detection_rate = share of ``detected`` and arcface = mean ``arcface`` (where not None) over the
identity families; clip_t = mean ``clip_t`` over every family. diversity = the mean over prompt ids (non-leakage
families) of the mean pairwise ``1 - cosine`` between the DINOv2 embeddings of that prompt's seeds; it needs the
`embeddings` argument and is ``None`` without it.

Intervals: the run's distinct seeds are resampled with replacement ``evaluation.bootstrap`` times
(``np.random.default_rng(cfg.seed)``; the same resamples for every checkpoint, so comparisons are paired). A mean
over a resample counts each image once per draw of its seed; diversity over a resample uses the *distinct* drawn
seeds of each prompt (a repeated seed would add zero-distance pairs), leaving out prompts with fewer than two.
``low``/``high`` are the 2.5th/97.5th percentiles; ``mean`` is the estimate on all seeds.

:func:`rank` applies ``evaluation.gates`` at the ranked weight (``evaluation.lora_weights[0]``) against the base
model, min-max normalises every metric over the run's checkpoints (base excluded; plain min-max, 0 = lowest value
whatever the metric's direction; all equal -> 0.5), keeps the Pareto front of (identity, prompt_following) among the
checkpoints that pass, and recommends the front member with the highest ``min(norm identity, norm
prompt_following)`` (ties: higher step, then name). Gates compare means; a value exactly at a threshold passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from castlab.config import Config
from castlab.errors import InputError

FAMILIES = ("identity", "editability", "leakage", "caption")
IDENTITY_FAMILIES = ("identity", "editability", "caption")
REQUIRED_KEYS = ("identity_margin", "clip_t")  # every render must carry them (a missed face is a margin, not a gap)

# aggregate name -> (render key, families it is averaged over); diversity is computed from embeddings
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "identity": ("identity_margin", IDENTITY_FAMILIES),
    "prompt_following": ("clip_t", ("editability",)),
    "memorisation": ("memorisation", IDENTITY_FAMILIES),
    "leakage": ("identity_margin", ("leakage",)),
    "drift": ("drift", ("leakage",)),
    "detection_rate": ("detected", IDENTITY_FAMILIES),
    "arcface": ("arcface", IDENTITY_FAMILIES),
    "clip_t": ("clip_t", FAMILIES),
}
METRIC_ORDER = ("identity", "prompt_following", "diversity", "memorisation", "leakage", "drift",
                "detection_rate", "arcface", "clip_t")
STATUSES = ("recommended", "pareto", "dominated", "gated")
_EPS = 1e-9  # float slack for "at the threshold" and for ties

EmbeddingKey = tuple[str, float | None, str, int]  # (checkpoint, weight, prompt_id, seed)
Embeddings = Mapping[EmbeddingKey, np.ndarray] | Sequence[np.ndarray] | np.ndarray


def weight_key(weight: float | None) -> str:
    """The JSON key of a LoRA weight: ``"1.0"``, ``"0.7"``; ``"none"`` for the base model."""
    return "none" if weight is None else repr(float(weight))


def _weight(value: Any) -> float | None:
    return None if value is None else float(value)


def _check(renders: list[dict[str, Any]]) -> None:
    seen: set[tuple[Any, ...]] = set()
    for r in renders:
        where = r.get("file") or f"{r.get('checkpoint')}/{r.get('prompt_id')}/{r.get('seed')}"
        if r.get("family") not in FAMILIES:
            raise InputError(where, f"render family {r.get('family')!r} is not one of {FAMILIES}")
        for key in ("checkpoint", "prompt_id", "seed", *REQUIRED_KEYS):
            if r.get(key) is None:
                raise InputError(where, f"render has no {key!r} (score the renders before ranking)")
        key = (r["checkpoint"], _weight(r.get("weight")), r["prompt_id"], int(r["seed"]))
        if key in seen:
            raise InputError(where, f"duplicate render {key}")
        seen.add(key)


def _resample_counts(n_seeds: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_seeds) multiplicities of each seed in each bootstrap draw."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    return (drawn[:, :, None] == np.arange(n_seeds)).sum(axis=1).astype(float)


def _interval(estimate: float, samples: np.ndarray) -> dict[str, float]:
    finite = samples[np.isfinite(samples)]
    low, high = np.percentile(finite, [2.5, 97.5]) if finite.size else (estimate, estimate)
    return {"mean": float(estimate), "low": float(low), "high": float(high)}


def _mean_metric(values: list[tuple[int, float]], counts: np.ndarray) -> dict[str, float] | None:
    """Mean of (seed index, value) pairs with its bootstrap interval (`counts` from :func:`_resample_counts`)."""
    if not values:
        return None
    n_seeds = counts.shape[1]
    idx = np.array([i for i, _ in values])
    vals = np.array([v for _, v in values], dtype=float)
    sums = np.bincount(idx, weights=vals, minlength=n_seeds)
    ns = np.bincount(idx, minlength=n_seeds).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = (counts @ sums) / (counts @ ns)
    return _interval(sums.sum() / ns.sum(), samples)


def _pairwise_distance(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    return 1.0 - unit @ unit.T


def _diversity(per_prompt: dict[str, dict[int, np.ndarray]], present: np.ndarray
               ) -> tuple[dict[str, float] | None, dict[str, float]]:
    """Diversity aggregate + per-prompt values; `per_prompt[prompt_id][seed index]` = embedding."""
    full, samples = [], []
    by_prompt: dict[str, float] = {}
    for prompt_id, by_seed in sorted(per_prompt.items()):
        if len(by_seed) < 2:
            continue
        seeds = sorted(by_seed)
        dist = _pairwise_distance(np.stack([np.asarray(by_seed[s], dtype=float).ravel() for s in seeds]))
        k = len(seeds)
        by_prompt[prompt_id] = float(dist[np.triu_indices(k, 1)].mean())
        full.append(by_prompt[prompt_id])
        p = present[:, seeds].astype(float)  # (B, k) distinct drawn seeds of this prompt
        n = p.sum(axis=1)
        pairs = n * (n - 1) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            samples.append(np.where(pairs > 0, np.einsum("bi,ij,bj->b", p, dist, p) / 2 / pairs, np.nan))
    if not full:
        return None, by_prompt
    stacked = np.stack(samples, axis=1)
    valid = np.isfinite(stacked).any(axis=1)
    per_draw = np.full(stacked.shape[0], np.nan)
    per_draw[valid] = np.nanmean(stacked[valid], axis=1)
    return _interval(float(np.mean(full)), per_draw), by_prompt


def _embedding_lookup(renders: list[dict[str, Any]], embeddings: Embeddings | None):
    if embeddings is None:
        return None
    if isinstance(embeddings, Mapping):
        def lookup(i: int, r: dict[str, Any]) -> np.ndarray:
            key = (r["checkpoint"], _weight(r.get("weight")), r["prompt_id"], int(r["seed"]))
            if key not in embeddings:
                raise ValueError(f"embeddings have no entry for render {key}")
            return embeddings[key]
        return lookup
    if len(embeddings) != len(renders):
        raise ValueError(f"embeddings: {len(embeddings)} rows for {len(renders)} renders (they must align)")
    return lambda i, r: embeddings[i]


def aggregate(renders: list[dict[str, Any]], cfg: Config, embeddings: Embeddings | None = None
              ) -> dict[str, dict[str, Any]]:
    """Per checkpoint and weight, every metric's mean with its seed-bootstrap 95 % interval (module docstring).

    `embeddings`: the DINOv2 embedding of each render, either aligned with `renders` (a sequence or an (n, d)
    array) or a mapping ``(checkpoint, weight, prompt_id, seed) -> vector``; without it diversity is ``None``.
    """
    _check(renders)
    lookup = _embedding_lookup(renders, embeddings)
    seeds = sorted({int(r["seed"]) for r in renders})
    seed_index = {s: i for i, s in enumerate(seeds)}
    counts = _resample_counts(len(seeds), int(cfg.evaluation.bootstrap), int(cfg.seed)) if seeds else None

    groups: dict[tuple[str, float | None], list[tuple[int, dict[str, Any]]]] = {}
    for i, r in enumerate(renders):
        groups.setdefault((r["checkpoint"], _weight(r.get("weight"))), []).append((i, r))

    result: dict[str, dict[str, Any]] = {}
    for (name, weight), members in groups.items():
        steps = {r.get("step") for _, r in members}
        if len(steps) > 1:
            raise InputError(name, f"renders of one checkpoint disagree on its step: {sorted(map(str, steps))}")
        entry = result.setdefault(name, {"checkpoint": name, "step": steps.pop(), "weights": {}})
        out: dict[str, Any] = {"images": len(members),
                               "seeds": sorted({int(r["seed"]) for _, r in members})}
        for metric in METRIC_ORDER:
            if metric == "diversity":
                continue
            key, families = METRICS[metric]
            values = [(seed_index[int(r["seed"])], float(r[key])) for _, r in members
                      if r["family"] in families and r.get(key) is not None]
            out[metric] = _mean_metric(values, counts)
        per_prompt: dict[str, dict[int, np.ndarray]] = {}
        if lookup is not None:
            for i, r in members:
                if r["family"] in IDENTITY_FAMILIES:
                    per_prompt.setdefault(r["prompt_id"], {})[seed_index[int(r["seed"])]] = lookup(i, r)
        out["diversity"], out["diversity_by_prompt"] = _diversity(per_prompt, counts > 0) if lookup else (None, {})
        entry["weights"][weight_key(weight)] = {k: out[k] for k in ("images", "seeds", *METRIC_ORDER,
                                                                      "diversity_by_prompt")}
    return result


# ---------------------------------------------------------------- ranking


def _means(metrics: dict[str, Any] | None) -> dict[str, float | None]:
    metrics = metrics or {}
    return {m: (metrics[m]["mean"] if metrics.get(m) else None) for m in METRIC_ORDER}


def _gate(m: dict[str, float | None], base: dict[str, float | None], gates: Any
          ) -> tuple[dict[str, bool | None], list[str], list[str]]:
    """Gate verdicts (None = not applicable), failure reasons, pass/skip notes."""
    fails: list[str] = []
    notes: list[str] = []
    verdict: dict[str, bool | None] = {"leaks": None, "memorises": None, "collapses": None}

    def check(name: str, bad: bool, fail: str, ok: str) -> None:
        verdict[name] = bool(verdict[name]) or bad
        (fails if bad else notes).append(fail if bad else ok)

    if m["leakage"] is not None and base["leakage"] is not None:
        gain, limit = m["leakage"] - base["leakage"], gates.max_leakage_gain
        check("leaks", gain > limit + _EPS,
              f"leaks: leakage {m['leakage']:.3f} is {gain:+.3f} over the base model's {base['leakage']:.3f} "
              f"(> max_leakage_gain {limit:.3f})", f"leakage gain {gain:+.3f} <= {limit:.3f}")
    else:
        notes.append("leakage-gain gate not applied (no leakage renders for this checkpoint or the base model)")
    if m["drift"] is not None:
        check("leaks", m["drift"] > gates.max_drift + _EPS,
              f"leaks: drift {m['drift']:.3f} from the base model's images > max_drift {gates.max_drift:.3f}",
              f"drift {m['drift']:.3f} <= {gates.max_drift:.3f}")
    else:
        notes.append("drift gate not applied (no drift values)")
    if m["memorisation"] is not None:
        check("memorises", m["memorisation"] > gates.max_memorisation + _EPS,
              f"memorises: memorisation {m['memorisation']:.3f} > max_memorisation {gates.max_memorisation:.3f}",
              f"memorisation {m['memorisation']:.3f} <= {gates.max_memorisation:.3f}")
    else:
        notes.append("memorisation gate not applied (no memorisation values)")
    if m["diversity"] is not None and base["diversity"] is not None:
        ratio = gates.min_diversity_ratio
        floor = ratio * base["diversity"]
        check("collapses", m["diversity"] < floor - _EPS,
              f"collapses: diversity {m['diversity']:.3f} < min_diversity_ratio {ratio:.2f} x base diversity "
              f"{base['diversity']:.3f} = {floor:.3f}", f"diversity {m['diversity']:.3f} >= {floor:.3f}")
    else:
        notes.append("diversity gate not applied (no diversity for this checkpoint or the base model)")
    return verdict, fails, notes


def _normalise(values: dict[str, float | None]) -> dict[str, float | None]:
    known = [v for v in values.values() if v is not None]
    if not known:
        return dict.fromkeys(values)
    lo, hi = min(known), max(known)
    span = hi - lo
    return {k: (None if v is None else 0.5 if span <= _EPS else (v - lo) / span) for k, v in values.items()}


def _dominates(a: dict[str, float | None], b: dict[str, float | None]) -> bool:
    ai, ap, bi, bp = a["identity"], a["prompt_following"], b["identity"], b["prompt_following"]
    return ai >= bi - _EPS and ap >= bp - _EPS and (ai > bi + _EPS or ap > bp + _EPS)


def rank(aggregates: dict[str, dict[str, Any]], cfg: Config, base: str = "base") -> dict[str, Any]:
    """Gate, normalise, find the Pareto front and recommend one checkpoint (module docstring). JSON-able::

        {"weight": 1.0, "base": {"checkpoint": "base", "metrics": {metric: mean}},
         "checkpoints": {name: {"checkpoint", "step", "status", "rank" (1.. for kept, None if gated),
                                "score" (min of the normalised identity and prompt following), "reasons": [str],
                                "gates": {"leaks"|"memorises"|"collapses": bool | None (not applied)},
                                "metrics": {metric: mean}, "normalised": {metric: 0..1},
                                "dominated_by": [name]}},
         "front": [names, best first], "ranking": [kept names, best first],
         "recommended": name | None, "reason": str}

    ``checkpoints`` is ordered as ``ranking``, then the gated ones by step and name.
    """
    if base not in aggregates:
        raise ValueError(f"aggregates have no {base!r} entry (the base model's renders); got {sorted(aggregates)}")
    ranked_weight = float(cfg.evaluation.lora_weights[0])
    gates = cfg.evaluation.gates
    base_weights = aggregates[base]["weights"]
    base_means = _means(base_weights.get(weight_key(None)) or next(iter(base_weights.values()), None))
    names = [n for n in aggregates if n != base]

    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        entry = aggregates[name]
        at_weight = entry["weights"].get(weight_key(ranked_weight))
        means = _means(at_weight)
        verdict, fails, notes = _gate(means, base_means, gates)
        if at_weight is None:
            fails = [f"not measurable: no renders at LoRA weight {ranked_weight}"]
        else:
            fails += [f"not measurable: no {m} (no renders of its families)"
                      for m in ("identity", "prompt_following") if means[m] is None]
        rows[name] = {"checkpoint": name, "step": entry.get("step"), "status": "gated" if fails else None,
                      "rank": None, "score": None,
                      "reasons": fails or [f"kept: passes the gates ({'; '.join(notes)})"],
                      "gates": verdict, "metrics": means, "normalised": {}, "dominated_by": []}

    for metric in METRIC_ORDER:
        for name, value in _normalise({n: rows[n]["metrics"][metric] for n in names}).items():
            rows[name]["normalised"][metric] = value
    kept = [n for n in names if rows[n]["status"] is None]
    for name in kept:
        norm = rows[name]["normalised"]
        rows[name]["score"] = min(norm["identity"], norm["prompt_following"])

    def order(name: str) -> tuple[Any, ...]:
        step = rows[name]["step"]
        return (-round(rows[name]["score"], 9), -(step if step is not None else -1), name)

    for name in kept:
        row = rows[name]
        row["dominated_by"] = sorted((o for o in kept if _dominates(rows[o]["metrics"], row["metrics"])), key=order)
        if row["dominated_by"]:
            row["status"] = "dominated"
            mi, mp = row["metrics"]["identity"], row["metrics"]["prompt_following"]
            row["reasons"].append("dominated by " + "; ".join(
                f"{o} (identity {rows[o]['metrics']['identity']:.3f} >= {mi:.3f}, prompt following "
                f"{rows[o]['metrics']['prompt_following']:.3f} >= {mp:.3f})" for o in row["dominated_by"]))
        else:
            row["status"] = "pareto"
            row["reasons"].append(f"on the Pareto front of identity x prompt following (score {row['score']:.3f} "
                                  f"= min(norm identity {row['normalised']['identity']:.3f}, norm prompt following "
                                  f"{row['normalised']['prompt_following']:.3f}))")
    front = sorted((n for n in kept if rows[n]["status"] == "pareto"), key=order)
    ranking = front + sorted((n for n in kept if rows[n]["status"] == "dominated"), key=order)
    for i, name in enumerate(ranking, 1):
        rows[name]["rank"] = i

    recommended = front[0] if front else None
    if recommended is None:
        reason = "no checkpoint passed the gates" if names else "no checkpoints to rank"
    else:
        top = rows[recommended]
        tied = [n for n in front[1:] if abs(rows[n]["score"] - top["score"]) <= _EPS]
        reason = (f"recommended: the highest lowest normalised score on the Pareto front, {top['score']:.3f} "
                  f"(identity {top['metrics']['identity']:.3f}, prompt following "
                  f"{top['metrics']['prompt_following']:.3f})")
        if tied:
            reason += f"; tied with {', '.join(tied)}: the higher step, then the name, wins"
        top["status"] = "recommended"
        top["reasons"].append(reason)

    gated = sorted((n for n in names if rows[n]["status"] == "gated"),
                   key=lambda n: (rows[n]["step"] if rows[n]["step"] is not None else -1, n))
    return {
        "weight": ranked_weight,
        "base": {"checkpoint": base, "metrics": base_means},
        "checkpoints": {n: rows[n] for n in ranking + gated},
        "front": front,
        "ranking": ranking,
        "recommended": recommended,
        "reason": reason,
    }
