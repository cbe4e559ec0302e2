"""The checkpoints project against a real Label Studio: blind pairs of a small fake evaluation folder are pushed
(twice: no duplicates), a scripted reviewer answers them through the API (Pairwise sides, a tie, a both-bad, one
left open), review-sync's ``sync_checkpoint_picks`` turns the answers into a Bradley–Terry ranking, the chosen
checkpoint and castlab's agreement, and the chosen checkpoint is registered in ``loras.yaml``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from PIL import Image

from castlab.config import load_config
from castlab.evaluate.human import pair_plan
from castlab.evaluate.registry import read_registry, register_lora
from castlab.labelstudio import client
from castlab.labelstudio.projects.checkpoints import (
    LABEL_CONFIG,
    PICK_NAME,
    PUSH_NAME,
    push_checkpoint_pairs,
    sync_checkpoint_picks,
)

pytestmark = pytest.mark.integration

CASTLAB_ORDER = ["ck-000200", "ck-000300", "ck-000100"]  # castlab's front, best first
REVIEWER_ORDER = ["ck-000300", "ck-000200", "ck-000100"]  # what the scripted reviewer prefers
PROMPTS = [("identity", "identity/front"), ("identity", "identity/profile"), ("editability", "editability/rain"),
           ("leakage", "leakage/class")]


def _evaluation(root: Path) -> tuple[Path, list[dict], dict]:
    """A fake evaluation folder: real PNGs per checkpoint, the renders, and a ranking in rank()'s shape."""
    eval_dir = root / "runs" / "ckpt-eval-it" / "evaluation"
    renders = []
    for c, name in enumerate(["base", *CASTLAB_ORDER]):
        for family, prompt_id in PROMPTS:
            for seed in (1, 2):
                file = f"{name}/{prompt_id.replace('/', '_')}_s{seed}.png"
                (eval_dir / file).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), (60 * c, 40 * seed, 100 if family == "leakage" else 0)).save(eval_dir / file)
                renders.append({"checkpoint": name, "step": None if name == "base" else int(name[-6:]),
                                "weight": None if name == "base" else 1.0, "family": family, "prompt_id": prompt_id,
                                "prompt": f"cstlb character, {prompt_id}",
                                "scoring_prompt": f"a character, {prompt_id}", "seed": seed, "file": file})
    rows = {name: {"checkpoint": name, "step": int(name[-6:]), "status": "pareto",
                   "metrics": {"identity": 0.1 * i, "prompt_following": 0.3 - 0.1 * i}}
            for i, name in enumerate(CASTLAB_ORDER, 1)}
    rows[CASTLAB_ORDER[0]]["status"] = "recommended"
    ranked = {"weight": 1.0, "checkpoints": rows, "front": CASTLAB_ORDER, "ranking": CASTLAB_ORDER,
              "recommended": CASTLAB_ORDER[0]}
    return eval_dir, renders, ranked


def _pick(left: str, right: str) -> list[dict]:
    side = "left" if REVIEWER_ORDER.index(left) < REVIEWER_ORDER.index(right) else "right"
    return [{"from_name": "pick", "to_name": "pick", "type": "pairwise", "value": {"selected": side}}]


def _verdict(value: str) -> list[dict]:
    return [{"from_name": "verdict", "to_name": "left", "type": "choices", "value": {"choices": [value]}}]


def test_blind_pairs_round_trip(ls_server):
    cfg = load_config(profile="tiny")
    ls = client.connect(ls_server.url, ls_server.token)
    eval_dir, renders, ranked = _evaluation(Path(ls_server.workspace))
    pairs = pair_plan(ranked, renders, cfg)
    assert len(pairs) == 3 * 3 * 2  # 3 matchups x 3 judged prompts x 2 seeds (no leakage prompts)

    first = push_checkpoint_pairs(ls, eval_dir, pairs, cfg)
    assert first["tasks"] == first["new_tasks"] == len(pairs)
    again = push_checkpoint_pairs(ls, eval_dir, pair_plan(ranked, renders, cfg), cfg)
    assert again["tasks"] == len(pairs) and again["new_tasks"] == 0
    project_id = first["project_id"]
    assert client.ensure_project(ls, first["title"], LABEL_CONFIG.read_text(encoding="utf-8")) == project_id
    tasks = sorted(client.list_tasks(ls, project_id), key=lambda t: t["id"])
    assert len(tasks) == len(pairs)  # no duplicates
    mapping = json.loads((eval_dir / PUSH_NAME).read_text())["pairs"]
    assert {t["data"]["castlab_key"] for t in tasks} == set(mapping)

    auth = {"Authorization": f"Token {ls_server.token}"}
    for task in tasks:  # blind: no checkpoint name or render path reaches Label Studio; the images are served
        text = json.dumps(task["data"])
        assert not any(name in text for name in ["base", *CASTLAB_ORDER])
        pair = mapping[task["data"]["castlab_key"]]
        assert pair["left_file"] not in text and pair["right_file"] not in text
        assert task["data"]["prompt"] == f"a character, {pair['prompt_id']}"
    served = requests.get(ls_server.url + tasks[0]["data"]["left"], headers=auth, timeout=30)
    assert served.status_code == 200
    assert served.content == (eval_dir / mapping[tasks[0]["data"]["castlab_key"]]["left_file"]).read_bytes()

    # the scripted reviewer: follows REVIEWER_ORDER, except one tie, one both-bad and one task left open
    for n, task in enumerate(tasks[:-1]):
        pair = mapping[task["data"]["castlab_key"]]
        result = _verdict("both bad") if n == 0 else _verdict("tie") if n == 1 else _pick(pair["left"], pair["right"])
        client.create_annotation(ls, task["id"], result)
    pick = sync_checkpoint_picks(ls, eval_dir, cfg)
    assert pick == json.loads((eval_dir / PICK_NAME).read_text())
    assert pick["tasks"] == len(pairs) and pick["answered_tasks"] == len(pairs) - 1
    assert pick["answers"] == {"left": pick["answers"]["left"], "right": len(pairs) - 3 - pick["answers"]["left"],
                               "tie": 1, "both bad": 1}
    assert pick["comparisons"] == len(pairs) - 2
    assert pick["ranking"] == REVIEWER_ORDER and pick["chosen"] == "ck-000300"
    scores = pick["scores"]
    assert scores["ck-000300"] > scores["ck-000200"] > scores["ck-000100"]
    assert pick["castlab_recommended"] == "ck-000200"
    assert pick["agreement"]["top1_hit"] is False and pick["agreement"]["n_pairs"] == len(pairs) - 2
    assert pick["agreement"]["kendall_tau"] == pytest.approx(1 / 3)  # one of three checkpoint pairs swapped

    assert push_checkpoint_pairs(ls, eval_dir, pairs, cfg)["new_tasks"] == 0  # re-running after reviews: no dupes
    assert sync_checkpoint_picks(ls, eval_dir, cfg)["ranking"] == REVIEWER_ORDER

    chosen = pick["chosen"]
    lora = Path(ls_server.workspace) / "loras" / f"{chosen}.safetensors"
    lora.parent.mkdir(parents=True, exist_ok=True)
    lora.write_bytes(b"stand-in for the chosen checkpoint file")
    path = register_lora({"name": "bunny", "character": "Bunny", "trigger": "cstlb", "class_word": "character",
                          "base_model": "tiny-sd15", "arch": "sd15", "file": str(lora),
                          "metrics": ranked["checkpoints"][chosen]["metrics"], "chosen_by": "reviewers",
                          "evaluation": str(eval_dir), "checkpoint": chosen, "agreement": pick["agreement"]}, cfg)
    assert path == Path(ls_server.workspace) / "loras.yaml"
    entry = read_registry(cfg)["bunny"]
    assert entry["file"] == str(lora) and entry["chosen_by"] == "reviewers" and entry["checkpoint"] == chosen
    assert entry["metrics"] == ranked["checkpoints"][chosen]["metrics"]
