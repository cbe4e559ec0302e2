"""The blind human pick without Label Studio: pair plan, Bradley–Terry, ties, agreement, blind task data, answers."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from castlab.config import load_config
from castlab.evaluate.human import (
    BOTH_BAD,
    LEFT,
    RIGHT,
    TIE,
    agreement,
    bradley_terry,
    compared_checkpoints,
    human_ranking,
    kendall_tau,
    pair_plan,
)
from castlab.labelstudio.projects.checkpoints import BLIND_DIR, build_pair_tasks, pair_answer, task_answers

PROMPTS = {"identity": ["identity/front", "identity/profile"], "editability": ["editability/outfit"],
           "caption": ["caption/0"], "leakage": ["leakage/class"]}
SEEDS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny")


def renders(names: list[str], weights=(1.0, 0.7)) -> list[dict]:
    out = [{"checkpoint": "base", "weight": None, "family": "identity", "prompt_id": "identity/front",
            "prompt": "a character", "scoring_prompt": "a character", "seed": 1, "file": "base/x.png"}]
    for name in names:
        for weight in weights:
            for family, ids in PROMPTS.items():
                for pid in ids:
                    for seed in SEEDS:
                        out.append({"checkpoint": name, "step": 100, "weight": weight, "family": family,
                                    "prompt_id": pid, "prompt": f"cstlb character, {pid}",
                                    "scoring_prompt": f"a character, {pid}", "seed": seed,
                                    "file": f"{name}/w{weight}/{pid.replace('/', '_')}_s{seed}.png"})
    return out


def ranked(front: list[str], dominated: list[str] = (), gated: list[str] = ()) -> dict:
    """The shape of castlab.evaluate.ranking.rank's result (only what the pair plan reads)."""
    status = {n: "pareto" for n in front} | {n: "dominated" for n in dominated} | {n: "gated" for n in gated}
    if front:
        status[front[0]] = "recommended"
    return {"weight": 1.0, "front": list(front), "ranking": [*front, *dominated],
            "recommended": front[0] if front else None,
            "checkpoints": {n: {"checkpoint": n, "status": s} for n, s in status.items()}}


# ------------------------------------------------------------------ pair plan


def test_pairs_cover_the_front_on_the_same_prompt_and_seed(cfg):
    names = ["ck-a", "ck-b", "ck-c"]
    report = ranked(names, dominated=["ck-d"], gated=["ck-e"])
    pairs = pair_plan(report, renders(names + ["ck-d", "ck-e"]), cfg)
    judged = sum(len(v) for k, v in PROMPTS.items() if k != "leakage") * len(SEEDS)
    assert len(pairs) == 3 * judged  # every front matchup, every shared non-leakage prompt id and seed
    matchups = Counter(frozenset((p["left"], p["right"])) for p in pairs)
    assert set(matchups) == {frozenset(m) for m in (("ck-a", "ck-b"), ("ck-a", "ck-c"), ("ck-b", "ck-c"))}
    for p in pairs:
        assert not p["prompt_id"].startswith("leakage")
        for side in ("left", "right"):  # same prompt id and seed, weight 1.0 images
            assert p[f"{side}_file"] == f"{p[side]}/w1.0/{p['prompt_id'].replace('/', '_')}_s{p['seed']}.png"
        assert p["ranking"] == names and p["prompt"] == f"a character, {p['prompt_id']}"
        assert not any(n in p["key"] for n in names)
    assert len({p["key"] for p in pairs}) == len(pairs)
    for matchup in matchups:  # position bias cancels: each checkpoint on the left in half of its pairs
        lefts = Counter(p["left"] for p in pairs if frozenset((p["left"], p["right"])) == matchup)
        assert abs(lefts[min(matchup)] - lefts[max(matchup)]) <= 1


def test_pair_plan_is_seeded_random(cfg):
    names = ["ck-a", "ck-b", "ck-c"]
    first = pair_plan(ranked(names), renders(names), cfg)
    assert first == pair_plan(ranked(names), renders(names), cfg)  # reproducible
    other = pair_plan(ranked(names), renders(names), cfg.with_overrides({"seed": cfg.seed + 1}))
    assert {p["key"] for p in first} == {p["key"] for p in other}  # the same pairs (keys do not depend on it) ...
    sides = {p["key"]: p["left"] for p in first}
    assert any(sides[p["key"]] != p["left"] for p in other)  # ... on other sides
    assert [p["key"] for p in first] != [p["key"] for p in other]  # ... in another order
    # interleaved, not grouped by matchup or prompt: the task order is shuffled
    order = [frozenset((p["left"], p["right"])) for p in first]
    assert order != sorted(order, key=lambda m: sorted(m))
    # dropping one checkpoint keeps the surviving matchup's pairs (keys and sides) unchanged
    fewer = pair_plan(ranked(names[:2]), renders(names), cfg)
    kept = {p["key"]: (p["left"], p["right"]) for p in first if {p["left"], p["right"]} == set(names[:2])}
    assert {p["key"]: (p["left"], p["right"]) for p in fewer} == kept


def test_front_of_one_meets_the_next_best_and_too_few_kept_make_no_pairs(cfg):
    assert compared_checkpoints(ranked(["ck-a"], dominated=["ck-b", "ck-c"])) == ["ck-a", "ck-b"]
    pairs = pair_plan(ranked(["ck-a"], dominated=["ck-b", "ck-c"]), renders(["ck-a", "ck-b", "ck-c"]), cfg)
    assert pairs and {frozenset((p["left"], p["right"])) for p in pairs} == {frozenset(("ck-a", "ck-b"))}
    assert pair_plan(ranked(["ck-a"], gated=["ck-b"]), renders(["ck-a", "ck-b"]), cfg) == []
    assert pair_plan(ranked([], gated=["ck-a", "ck-b"]), renders(["ck-a", "ck-b"]), cfg) == []
    assert pair_plan({"ranking": ranked(["ck-a", "ck-b"])}, renders(["ck-a", "ck-b"]), cfg)  # nested in a report
    with pytest.raises(ValueError, match="front"):
        pair_plan({"checkpoints": {}}, [], cfg)


def test_max_per_matchup_covers_every_prompt_before_a_second_seed(cfg):
    pairs = pair_plan(ranked(["ck-a", "ck-b"]), renders(["ck-a", "ck-b"]), cfg, max_per_matchup=4)
    assert len(pairs) == 4 and len({p["prompt_id"] for p in pairs}) == 4
    assert pair_plan(ranked(["ck-a", "ck-b"]), renders(["ck-a", "ck-b"], weights=(0.7,)), cfg) == []


# ------------------------------------------------------------------ Bradley–Terry


def simulated(strengths: dict[str, float], n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """Answers of a reviewer who follows the BT model with these log-strengths, on random sides."""
    rng = np.random.default_rng(seed)
    names = list(strengths)
    out = []
    for _ in range(n):
        left, right = rng.choice(names, size=2, replace=False)
        p_left = 1 / (1 + np.exp(strengths[right] - strengths[left]))
        out.append((str(left), str(right), LEFT if rng.random() < p_left else RIGHT))
    return out


def test_bradley_terry_recovers_a_known_order():
    truth = {"ck-a": -1.0, "ck-b": 1.5, "ck-c": 0.2, "ck-d": 0.8}
    outcomes = simulated(truth, 600)
    scores = bradley_terry(list(truth), outcomes)
    assert sorted(scores, key=scores.get, reverse=True) == ["ck-b", "ck-d", "ck-c", "ck-a"]
    assert abs(sum(scores.values())) < 1e-9
    fitted = np.array([scores[n] for n in truth])
    assert np.abs(fitted - (np.array(list(truth.values())) - np.mean(list(truth.values())))).max() < 0.35
    result = human_ranking(list(truth), outcomes)
    assert result["chosen"] == "ck-b" and result["comparisons"] == 600 and not result["tied_top"]


def test_ties_are_half_wins_and_both_bad_is_no_comparison():
    names = ["ck-a", "ck-b"]
    only_ties = bradley_terry(names, [("ck-a", "ck-b", TIE)] * 5)
    assert only_ties["ck-a"] == pytest.approx(only_ties["ck-b"], abs=1e-9)
    win = bradley_terry(names, [("ck-a", "ck-b", LEFT)])
    diluted = bradley_terry(names, [("ck-a", "ck-b", LEFT)] + [("ck-b", "ck-a", TIE)] * 4)
    assert 0 < diluted["ck-a"] - diluted["ck-b"] < win["ck-a"] - win["ck-b"]  # ties pull the two together
    three_to_one = bradley_terry(names, [("ck-a", "ck-b", LEFT)] * 3 + [("ck-a", "ck-b", RIGHT)])
    two_and_two_ties = bradley_terry(names, [("ck-a", "ck-b", LEFT)] * 2 + [("ck-a", "ck-b", TIE)] * 2)
    assert three_to_one == pytest.approx(two_and_two_ties)  # 2 wins + 2 half wins each way = 3 : 1
    noisy = [("ck-a", "ck-b", LEFT), ("ck-b", "ck-a", BOTH_BAD), ("ck-a", "ck-b", BOTH_BAD)]
    assert bradley_terry(names, noisy) == pytest.approx(win)
    result = human_ranking(names, noisy)
    assert result["answers"] == {LEFT: 1, RIGHT: 0, TIE: 0, BOTH_BAD: 2} and result["comparisons"] == 1


def test_no_comparison_chooses_nothing_and_bad_outcomes_are_refused():
    result = human_ranking(["ck-a", "ck-b"], [("ck-a", "ck-b", BOTH_BAD)])
    assert result["chosen"] is None and result["scores"] == {"ck-a": 0.0, "ck-b": 0.0}
    assert human_ranking(["ck-a", "ck-b"], [("ck-a", "ck-b", TIE)], prefer=["ck-b", "ck-a"])["ranking"] == [
        "ck-b", "ck-a"]  # equal scores keep castlab's order
    with pytest.raises(ValueError, match="not one of"):
        bradley_terry(["ck-a", "ck-b"], [("ck-a", "ck-b", "maybe")])
    with pytest.raises(ValueError, match="ck-x"):
        bradley_terry(["ck-a", "ck-b"], [("ck-a", "ck-x", LEFT)])


# ------------------------------------------------------------------ agreement


def test_agreement_numbers():
    assert agreement(["a", "b", "c"], ["a", "b", "c"]) == {"kendall_tau": 1.0, "top1_hit": True, "n_pairs": 0,
                                                          "n_checkpoints": 3}
    reverse = agreement(["a", "b", "c"], ["c", "b", "a"], n_pairs=7)
    assert reverse["kendall_tau"] == pytest.approx(-1.0) and reverse["top1_hit"] is False and reverse["n_pairs"] == 7
    one_swap = agreement(["a", "b", "c"], ["b", "a", "c"])  # 2 concordant, 1 discordant of 3 pairs
    assert one_swap["kendall_tau"] == pytest.approx(1 / 3) and one_swap["top1_hit"] is False
    assert agreement(["a", "b"], ["b", "a"])["kendall_tau"] == pytest.approx(-1.0)
    assert agreement(["a"], ["a"])["kendall_tau"] is None
    tied = human_ranking(["a", "b"], [("a", "b", TIE)], prefer=["a", "b"])
    assert agreement(["a", "b"], tied) == {"kendall_tau": None, "top1_hit": None, "n_pairs": 1, "n_checkpoints": 2}
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(2 / 3)


# ------------------------------------------------------------------ blind tasks and answers


def test_task_data_is_blind(cfg, workspace: Path):
    names = ["ck-alpha", "ck-beta"]
    eval_dir = workspace / "runs" / "eval-1" / "evaluation"
    pairs = pair_plan(ranked(names), renders(names), cfg, max_per_matchup=3)
    for p in pairs:
        for side in ("left", "right"):
            path = eval_dir / p[f"{side}_file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (len(p[side]) * 20, p["seed"] * 40, 0)).save(path)
    tasks, mapping = build_pair_tasks(eval_dir, pairs)
    assert len(tasks) == 3 and set(mapping) == {t["data"]["castlab_key"] for t in tasks}
    for task in tasks:
        text = json.dumps(task["data"])
        pair = mapping[task["data"]["castlab_key"]]
        for secret in (*names, "w1.0", pair["left_file"], pair["right_file"], "_s1", "identity_"):
            assert secret not in text
        assert set(task["data"]) == {"left", "right", "prompt", "castlab_key", "castlab_run"}
        for side in ("left", "right"):
            served = workspace / task["data"][side].split("?d=", 1)[1]
            assert served.parent == eval_dir / BLIND_DIR
            assert served.read_bytes() == (eval_dir / pair[f"{side}_file"]).read_bytes()
    rewritten = eval_dir / pairs[0]["left_file"]  # a render written again (atomically): the blind copy follows
    rewritten.unlink()
    Image.new("RGB", (8, 8), (255, 255, 255)).save(rewritten)
    tasks, _ = build_pair_tasks(eval_dir, pairs)
    task = next(t for t in tasks if mapping[t["data"]["castlab_key"]]["left_file"] == pairs[0]["left_file"])
    assert (workspace / task["data"]["left"].split("?d=", 1)[1]).read_bytes() == rewritten.read_bytes()
    swapped = {k: {**v, "left": v["right"], "right": v["left"]} for k, v in mapping.items()}
    _, again = build_pair_tasks(eval_dir, pairs, previous=swapped)
    assert {k: (v["left"], v["right"]) for k, v in again.items()} == {
        k: (v["left"], v["right"]) for k, v in swapped.items()}  # a pushed pair keeps the sides it was shown with


def _annotation(answer_id: int, user: int, pick: str | None = None, verdict: str | None = None,
                cancelled: bool = False) -> dict:
    result = []
    if pick:
        result.append({"from_name": "pick", "to_name": "pick", "type": "pairwise", "value": {"selected": pick}})
    if verdict:
        result.append({"from_name": "verdict", "to_name": "left", "type": "choices", "value": {"choices": [verdict]}})
    return {"id": answer_id, "completed_by": user, "updated_at": f"2025-01-01T00:00:{answer_id:02d}Z",
            "was_cancelled": cancelled, "result": result}


def test_answers_of_annotations():
    assert pair_answer(_annotation(1, 1, pick=RIGHT)) == RIGHT
    assert pair_answer(_annotation(1, 1, pick=LEFT, verdict=TIE)) == TIE  # the verdict wins over a clicked side
    assert pair_answer(_annotation(1, 1, verdict=BOTH_BAD)) == BOTH_BAD
    assert pair_answer(_annotation(1, 1)) is None
    task = {"annotations": [_annotation(1, 1, pick=LEFT), _annotation(2, 1, pick=RIGHT),  # user 1 changed mind
                            _annotation(3, 2, pick=LEFT), _annotation(4, 2, verdict=TIE, cancelled=True),
                            _annotation(5, 3)]}  # an empty answer counts as none
    assert sorted(task_answers(task)) == [LEFT, RIGHT]


def test_no_pairs_reach_no_label_studio_and_pick_nothing(cfg, workspace: Path):
    from castlab.errors import InputError
    from castlab.labelstudio.projects.checkpoints import PICK_NAME, push_checkpoint_pairs, sync_checkpoint_picks

    eval_dir = workspace / "runs" / "eval-2" / "evaluation"
    eval_dir.mkdir(parents=True)
    with pytest.raises(InputError, match="push the checkpoint pairs"):
        sync_checkpoint_picks(None, eval_dir, cfg)
    pairs = pair_plan(ranked(["ck-a"], gated=["ck-b"]), renders(["ck-a", "ck-b"]), cfg)
    summary = push_checkpoint_pairs(None, eval_dir, pairs, cfg)  # ls=None: it is never touched
    assert summary["tasks"] == 0 and summary["pairs"] == {} and summary["project_id"] is None
    pick = sync_checkpoint_picks(None, eval_dir, cfg)
    assert pick["chosen"] is None and pick["agreement"]["top1_hit"] is None
    assert json.loads((eval_dir / PICK_NAME).read_text())["chosen"] is None
