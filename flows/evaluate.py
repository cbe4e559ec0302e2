"""evaluate: prompt suite x seeds per checkpoint → identity, prompt following, diversity, memorisation, leakage →
gates, Pareto front, recommendation → the registry and a blind pairwise review of the front in Label Studio.

Rendering fans out on the run's task runner (``orchestration``): one task embeds the references, then one GPU task
renders and scores the base model, and one each checkpoint (at every ``evaluation.lora_weights``); they write
images and embeddings to the evaluation folder and return paths and per-image numbers. One task ranks them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from castlab.config import Config
from castlab.orchestration import gpu_resources, rerun_on_configured_runner, runs_elsewhere, worker_models
from castlab.workspace import Run, relative_to_workspace
from flows.common import LABEL_STUDIO_RETRIES, labelstudio, resolve_config, results_with_progress

MODELS = "evaluate"  # the worker_models name of the base pipeline, DINOv2, the face analyzer and open_clip


@task(name="plan-evaluation")
def plan_task(checkpoints: list[str], out_dir: str, dataset: str | None, force: bool, cfg: Config
              ) -> dict[str, Any]:
    from castlab.evaluate.stage import plan_evaluation

    return plan_evaluation([Path(c) for c in checkpoints], Path(out_dir), cfg, force=force,
                           dataset=Path(dataset) if dataset else None)


@task(name="embed-references")
def references_task(plan: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """The architecture check and the reference embeddings, once for every render task."""
    from castlab.evaluate.stage import load_models, reference_embeddings

    with worker_models(MODELS, cfg, load_models) as models:
        return reference_embeddings(plan, cfg, models)


@task(name="render-checkpoint")
def render_task(group: list[dict[str, Any]], plan: dict[str, Any], references: str, cfg: Config
                ) -> dict[str, Any]:
    """Render and score one model state group: the base model, or a checkpoint at each weight (models loaded
    once per worker process)."""
    from castlab.evaluate.stage import load_models, render_group

    with worker_models(MODELS, cfg, load_models) as models:
        return render_group(plan, group, references, cfg, models)


@task(name="rank-checkpoints")
def rank_task(plan: dict[str, Any], references: dict[str, Any], parts: list[dict[str, Any]], cfg: Config
              ) -> dict[str, Any]:
    from castlab.evaluate.stage import finish_evaluation

    return finish_evaluation(plan, references, parts, cfg)


@task(name="push-checkpoint-pairs", **LABEL_STUDIO_RETRIES)
def push_pairs_task(out_dir: str, cfg: Config) -> dict[str, Any]:
    from castlab.evaluate.human import pair_plan
    from castlab.evaluate.stage import REPORT_NAME
    from castlab.labelstudio.projects.checkpoints import push_checkpoint_pairs

    report = json.loads((Path(out_dir) / REPORT_NAME).read_text(encoding="utf-8"))
    pairs = pair_plan(report["ranking"], report["renders"], cfg, int(cfg.evaluation.pairs_per_matchup))
    return push_checkpoint_pairs(labelstudio(cfg) if pairs else None, Path(out_dir), pairs, cfg)


def summary_markdown(report: dict[str, Any]) -> str:
    """The ranking as a Markdown table with every checkpoint's status and reasons."""
    lines = [f"# Checkpoint evaluation: {report['character']}", ""]
    if report.get("note"):
        lines += [f"> **{report['note']}**", ""]
    lines += [f"**Recommended:** {report['recommended'] or 'none'} — {report.get('reason') or ''}", "",
              "| checkpoint | step | status | rank | identity | prompt following | diversity | memorisation | "
              "leakage | reasons |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in (report["ranking"].get("checkpoints") or {}).items():
        m = row.get("metrics") or {}
        cells = [f"{m[k]:.3f}" if isinstance(m.get(k), float) else "—" for k in
                 ("identity", "prompt_following", "diversity", "memorisation", "leakage")]
        reasons = "; ".join(row.get("reasons") or []).replace("|", "/")
        lines.append(f"| {name} | {row.get('step')} | {row.get('status')} | {row.get('rank') or '—'} | "
                     f"{' | '.join(cells)} | {reasons} |")
    lines += ["", f"Files in `{report['out_dir']}`: " + ", ".join(sorted(report.get("files", {}).values()))]
    return "\n".join(lines) + "\n"


@flow(name="evaluate")
def evaluate(
    checkpoints: list[str],
    out_dir: str | None = None,
    dataset: str | None = None,
    push: bool = True,
    register: bool = True,
    force: bool = False,
    config_files: list[str] | None = None,
    preset: str | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """Evaluate `checkpoints` against the base model, recommend one, register it (``loras.yaml``) and push the
    Pareto front as blind pairs to Label Studio's checkpoints project (review-sync on the evaluation folder
    brings the reviewers' pick back)."""
    from castlab.evaluate.registry import register_lora
    from castlab.evaluate.stage import for_dataset_type, registry_entry, state_groups

    cfg = resolve_config(config_files, preset, profile)
    if runs_elsewhere(cfg):  # a deployment run under orchestration.task_runner: dask | ray
        return rerun_on_configured_runner(evaluate, cfg, {
            "checkpoints": checkpoints, "out_dir": out_dir, "dataset": dataset, "push": push, "register": register,
            "force": force, "config_files": config_files, "preset": preset, "profile": profile})
    target = Path(out_dir) if out_dir else Run.create("evaluate", cfg).path
    if push:  # Label Studio serves the blind pairs from the workspace: fail before rendering, not after
        relative_to_workspace(target)
    plan = plan_task(checkpoints, str(target), dataset, force, cfg)
    cfg = for_dataset_type(cfg, plan["dataset_type"])  # beyond characters the identity is the whole image
    groups = state_groups(plan)
    per_state = len(plan["specs"]) * len(cfg.evaluation.seeds)
    with gpu_resources(cfg):
        references = references_task.submit(plan, cfg).result()
        futures = render_task.map(groups, unmapped(plan), unmapped(references["file"]), unmapped(cfg))
        parts = results_with_progress(futures, [len(g) * per_state for g in groups], "evaluate: render", unit="img")
    report = rank_task(plan, references, parts, cfg)
    create_markdown_artifact(key="evaluation-report", markdown=summary_markdown(report),
                             description=f"checkpoint evaluation of {report['character']}")
    create_table_artifact(key="checkpoint-ranking", table=[
        {"checkpoint": name, "status": row.get("status"), "rank": row.get("rank"),
         **{k: v for k, v in (row.get("metrics") or {}).items() if k in ("identity", "prompt_following")}}
        for name, row in (report["ranking"].get("checkpoints") or {}).items()])
    logger = get_run_logger()
    if register and report.get("recommended"):
        report["registry"] = str(register_lora(registry_entry(report, report["recommended"], "castlab"), cfg))
    if push:
        report["labelstudio"] = push_pairs_task(str(target), cfg)
    logger.info("evaluation written to %s; recommended %s", target, report.get("recommended"))
    return report
