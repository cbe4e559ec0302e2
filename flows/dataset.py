"""dataset: reviewed instances of one or more curate runs → one dataset per reviewed character."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from castlab.config import Config
from castlab.workspace import Run
from flows.common import resolve_config


@task(name="plan-datasets")
def plan_task(run_dirs: list[str], character: str | None, cfg: Config) -> dict[str, Any]:
    """Which characters get a dataset (and which are skipped, with why)."""
    from castlab.dataset.candidates import gather
    from castlab.dataset.stage import characters_to_build

    pool = gather([Path(r) for r in run_dirs])
    names, skipped = characters_to_build(pool, cfg, character)
    return {"names": names, "skipped": skipped, "notes": pool.notes}


@task(name="build-character-dataset")
def build_task(run_dirs: list[str], name: str, out_dir: str, force: bool, cfg: Config) -> dict[str, Any]:
    """One character's dataset (reads the runs' manifests; writes only `out_dir`)."""
    from castlab.dataset.assemble import assemble_character
    from castlab.dataset.candidates import gather

    runs = [Path(r) for r in run_dirs]
    pool = gather(runs)
    return assemble_character(name, pool.by_name[pool.find(name)], Path(out_dir), cfg, runs=runs, force=force)


@flow(name="dataset")
def dataset(
    run_dirs: list[str],
    character: str | None = None,
    out_dir: str | None = None,
    force: bool = False,
    config_files: list[str] | None = None,
    preset: str | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """Build one dataset per reviewed character of `run_dirs` (or only `character`) under `out_dir`
    (default: a new dataset run folder), each in ``<out_dir>/<character>/``."""
    from castlab.dataset.stage import dataset_folder

    cfg = resolve_config(config_files, preset, profile)
    logger = get_run_logger()
    plan = plan_task(list(run_dirs), character, cfg)
    for note in plan["notes"]:
        logger.warning(note)
    for name, why in plan["skipped"].items():
        logger.info("no dataset for %s: %s", name, why)
    root = Path(out_dir) if out_dir else Run.create("dataset", cfg).path
    datasets: dict[str, Any] = {}
    for name in plan["names"]:
        summary = build_task(list(run_dirs), name, str(dataset_folder(root, name)), force, cfg)
        datasets[name] = summary
        report = Path(summary["report"]["report"])
        create_markdown_artifact(key="dataset-report", markdown=report.read_text(encoding="utf-8"),
                                 description=f"dataset of {name}")
        logger.info("dataset of %s at %s: %d images (%d train, %d val), %d rejected%s", name, summary["out_dir"],
                    summary["images"], summary["train"], summary["val"], summary["rejected"],
                    " — SMALL (below dataset.target_size_min)" if summary["small"] else "")
    return {"out_root": str(root), "datasets": datasets, "skipped": plan["skipped"], "notes": plan["notes"]}
