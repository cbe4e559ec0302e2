"""The checkpoints review project (``label_configs/checkpoints.xml``): blind pairs of LoRA checkpoints.

One task per pair of :func:`castlab.evaluate.human.pair_plan`: two images of the same prompt and seed, one per
checkpoint. The task shows only the prompt and two image URLs. The images are served from
``<eval_dir>/blind/<opaque>.png`` (hard links or copies of the renders), so neither the URL nor the task data
holds a checkpoint name or a render path. Which checkpoint is on which side lives only in
``<eval_dir>/checkpoints_push.json``::

    {"project_id", "title", "run" (evaluation folder, workspace-relative), "profile", "weight",
     "checkpoints": [compared, castlab's order], "tasks", "new_tasks",
     "pairs": {pair key: {"left", "right", "prompt_id", "seed", "left_file", "right_file", "task_id"}}}

Pair keys (``castlab_key``, shown to nobody but opaque anyway) hash the evaluation folder, the two checkpoints,
the prompt id and the seed: pushing again adds no task, and a pair already pushed keeps the sides it was shown
with. Pairs of earlier pushes stay in the mapping (their tasks stay in Label Studio).

``sync_checkpoint_picks`` reads each reviewer's latest answer on every task (``tie``/``both bad`` from the
verdict Choices win over a side clicked in the same annotation), fits Bradley–Terry
(:mod:`castlab.evaluate.human`), and writes ``<eval_dir>/human_pick.json``::

    {"run", "project_id", "title", "profile", "tie_rule", "checkpoints", "castlab_recommended",
     "tasks", "answered_tasks", "answers": {"left", "right", "tie", "both bad": n}, "comparisons",
     "scores": {name: log-strength}, "ranking": [names], "chosen": name | None, "tied_top": bool,
     "agreement": {"kendall_tau", "top1_hit", "n_pairs", "n_checkpoints"}, "updated": ISO time}
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from castlab.config import PROJECT_ROOT, Config
from castlab.errors import InputError
from castlab.evaluate.human import ANSWERS, BOTH_BAD, LEFT, RIGHT, TIE, TIE_RULE, agreement, human_ranking
from castlab.labelstudio import client
from castlab.reviews.hooks import watch_project
from castlab.workspace import relative_to_workspace, write_json_atomic

LABEL_CONFIG = PROJECT_ROOT / "label_configs" / "checkpoints.xml"
PUSH_NAME = "checkpoints_push.json"
PICK_NAME = "human_pick.json"
BLIND_DIR = "blind"
def project_title(cfg: Config) -> str:
    """``labelstudio.checkpoints_title``."""
    return str(cfg.labelstudio.checkpoints_title)


def _hash(*parts: object) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _blind_image(eval_dir: Path, run: str, file: str) -> Path:
    """``<eval_dir>/blind/<opaque>.png``: a hard link (else a copy) of the render `file`, renewed when the
    render was rewritten since."""
    source = eval_dir / file
    if not source.is_file():
        raise InputError(source, "render image of a checkpoint pair does not exist")
    target = eval_dir / BLIND_DIR / f"{_hash(run, file)}{source.suffix}"
    if not (target.exists() and (os.path.samefile(source, target) or filecmp.cmp(source, target, shallow=False))):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    return target


def read_push(eval_dir: Path) -> dict[str, Any]:
    """``checkpoints_push.json`` of the evaluation folder ({} when nothing was pushed yet)."""
    path = Path(eval_dir) / PUSH_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(path, f"is not a readable checkpoints push record ({type(exc).__name__})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("pairs", {}), dict):
        raise InputError(path, "is not a checkpoints push record (expected a mapping with 'pairs')")
    return data


def build_pair_tasks(eval_dir: Path, pairs: list[dict[str, Any]], previous: dict[str, Any] | None = None
                     ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(Label Studio tasks, pair key → mapping) for `pairs`; a pair already in `previous` (an earlier push's
    ``pairs``) keeps its sides. Task data: ``left``, ``right`` (blind image URLs), ``prompt``, ``castlab_key``,
    ``castlab_run``."""
    eval_dir = Path(eval_dir).resolve()
    run = relative_to_workspace(eval_dir)
    previous = previous or {}
    tasks, mapping = [], {}
    for pair in pairs:
        key = f"checkpoints:{_hash(run, pair['key'])}"
        entry = {k: pair[k] for k in ("left", "right", "prompt_id", "seed", "left_file", "right_file")}
        old = previous.get(key)
        if old and {old.get("left"), old.get("right")} == {pair["left"], pair["right"]} and old["left"] != pair["left"]:
            entry.update(left=pair["right"], right=pair["left"], left_file=pair["right_file"],
                         right_file=pair["left_file"])
        if key in mapping:
            raise ValueError(f"pair {pair['key']!r} appears twice in the plan")
        mapping[key] = entry
        tasks.append({"data": {
            "left": client.local_file_url(_blind_image(eval_dir, run, entry["left_file"])),
            "right": client.local_file_url(_blind_image(eval_dir, run, entry["right_file"])),
            "prompt": str(pair.get("prompt") or ""), "castlab_key": key, "castlab_run": run,
        }})  # fmt: skip
    return tasks, mapping


def push_checkpoint_pairs(ls: Any, eval_dir: Path, pairs: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """Create/reuse the checkpoints project, serve the blind images, push new pair tasks; writes
    ``checkpoints_push.json`` (see the module doc). No pairs: nothing reaches Label Studio."""
    eval_dir = Path(eval_dir).resolve()
    if not eval_dir.is_dir():
        raise InputError(eval_dir, "evaluation folder does not exist")
    previous = read_push(eval_dir)
    rankings = {tuple(p.get("ranking") or ()) for p in pairs}
    if len(rankings) > 1:
        raise ValueError(f"pairs disagree on castlab's ranking: {sorted(rankings)}")
    checkpoints = list(rankings.pop()) if rankings else list(previous.get("checkpoints") or [])
    tasks, mapping = build_pair_tasks(eval_dir, pairs, previous.get("pairs"))
    title = project_title(cfg)
    summary: dict[str, Any] = {"project_id": previous.get("project_id"), "title": title,
                               "run": relative_to_workspace(eval_dir), "profile": cfg.profile,
                               "weight": float(cfg.evaluation.lora_weights[0]), "checkpoints": checkpoints,
                               "tasks": 0, "new_tasks": 0}
    pushed: dict[str, Any] = dict(previous.get("pairs") or {})
    if tasks:
        project_id = client.ensure_project(ls, title, LABEL_CONFIG.read_text(encoding="utf-8"))
        watch_project(ls, project_id, cfg)  # its reviews move the pipeline (castlab.reviews)
        client.ensure_local_storage(ls, project_id, eval_dir / BLIND_DIR)
        result = client.push_tasks(ls, project_id, tasks)
        for key, task_id in result.items():
            pushed[key] = {**mapping[key], "task_id": int(task_id)}
        summary.update(project_id=int(project_id), tasks=len(result), new_tasks=len(result.created))
    summary["pairs"] = pushed
    write_json_atomic(eval_dir / PUSH_NAME, summary)
    return summary


def pair_answer(annotation: dict[str, Any]) -> str | None:
    """``left``/``right``/``tie``/``both bad`` of one annotation (a verdict Choice wins over a clicked side);
    None when it holds no answer."""
    side = verdict = None
    for result in annotation.get("result") or []:
        value = result.get("value") or {}
        if result.get("type") == "pairwise" and value.get("selected") in (LEFT, RIGHT):
            side = value["selected"]
        elif result.get("from_name") == "verdict" and value.get("choices"):
            chosen = str(value["choices"][0])
            verdict = chosen if chosen in (TIE, BOTH_BAD) else verdict
    return verdict or side


def task_answers(task: dict[str, Any]) -> list[str]:
    """The answer of each reviewer's latest (not cancelled) annotation on a task."""
    latest: dict[Any, dict[str, Any]] = {}
    for annotation in task.get("annotations") or []:
        if annotation.get("was_cancelled"):
            continue
        who = annotation.get("completed_by")
        order = (str(annotation.get("updated_at") or ""), int(annotation.get("id") or 0))
        if who not in latest or order > (str(latest[who].get("updated_at") or ""), int(latest[who].get("id") or 0)):
            latest[who] = annotation
    answers = (pair_answer(a) for a in latest.values())
    return [a for a in answers if a is not None]


def sync_checkpoint_picks(ls: Any, eval_dir: Path, cfg: Config) -> dict[str, Any]:
    """Map the reviewers' answers back to checkpoints, rank them (Bradley–Terry) and measure castlab's
    agreement; writes ``human_pick.json`` (see the module doc) and returns it."""
    eval_dir = Path(eval_dir).resolve()
    push = read_push(eval_dir)
    if not push:
        raise InputError(eval_dir / PUSH_NAME, "does not exist: push the checkpoint pairs before syncing picks")
    pairs, checkpoints = push.get("pairs") or {}, list(push.get("checkpoints") or [])
    title = str(push.get("title") or project_title(cfg))
    outcomes, answered = [], 0
    for task in client.run_tasks(ls, title, str(push["run"])) if pairs else []:
        pair = pairs.get(str((task.get("data") or {}).get("castlab_key")))
        if pair is None:
            continue
        answers = task_answers(task)
        answered += int(bool(answers))
        outcomes += [(pair["left"], pair["right"], answer) for answer in answers if answer in ANSWERS]
    names = sorted({*checkpoints, *(p["left"] for p in pairs.values()), *(p["right"] for p in pairs.values())},
                   key=lambda n: (checkpoints.index(n) if n in checkpoints else len(checkpoints), n))
    human = human_ranking(names, outcomes, prefer=checkpoints)
    pick = {
        "run": push["run"], "project_id": push.get("project_id"), "title": title, "profile": cfg.profile,
        "tie_rule": TIE_RULE, "checkpoints": checkpoints,
        "castlab_recommended": checkpoints[0] if checkpoints else None,
        "tasks": len(pairs), "answered_tasks": answered, **human,
        "agreement": agreement(checkpoints, human),
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    write_json_atomic(eval_dir / PICK_NAME, pick)
    return pick
