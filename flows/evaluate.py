"""evaluate: prompt suite x seeds per checkpoint → identity, prompt following, diversity, memorisation, leakage →
gates, Pareto front, recommendation → the registry and a blind pairwise review of the front in Label Studio."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from castlab.config import Config
from castlab.workspace import Run, relative_to_workspace
from flows.common import LABEL_STUDIO_RETRIES, labelstudio, resolve_config


@task(name="evaluate-checkpoints")
def evaluate_task(checkpoints: list[str], out_dir: str, dataset: str | None, force: bool, cfg: Config
                  ) -> dict[str, Any]:
    from castlab.evaluate.stage import evaluate_checkpoints

    return evaluate_checkpoints([Path(c) for c in checkpoints], Path(out_dir), cfg, force=force,
                                dataset=Path(dataset) if dataset else None)


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
    from castlab.evaluate.stage import registry_entry

    cfg = resolve_config(config_files, preset, profile)
    target = Path(out_dir) if out_dir else Run.create("evaluate", cfg).path
    if push:  # Label Studio serves the blind pairs from the workspace: fail before rendering, not after
        relative_to_workspace(target)
    report = evaluate_task(checkpoints, str(target), dataset, force, cfg)
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
