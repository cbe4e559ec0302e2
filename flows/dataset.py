"""dataset: reviewed instances of one or more curate runs → one dataset per reviewed character; or, with
``dataset_type``, the prepared records of a type (background, style, lighting, pose, expression) → one dataset of
that type (a run not prepared for the type is prepared first, without review tasks: the dataset then uses the
predictions)."""

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


@task(name="build-type-dataset")
def build_type_task(run_dirs: list[str], name: str, out_dir: str, force: bool, cfg: Config) -> dict[str, Any]:
    """The dataset of type `name` (reads the runs' prepared records; writes only `out_dir`)."""
    from castlab.dataset.stage import build_type

    return build_type(name, [Path(r) for r in run_dirs], Path(out_dir), cfg, force=force)


def _report_artifact(summary: dict[str, Any], what: str) -> None:
    report = Path(summary["report"]["report"])
    create_markdown_artifact(key="dataset-report", markdown=report.read_text(encoding="utf-8"), description=what)
    get_run_logger().info("%s at %s: %d images (%d train, %d val), %d rejected%s", what, summary["out_dir"],
                          summary["images"], summary["train"], summary["val"], summary["rejected"],
                          " — SMALL (below the target minimum)" if summary["small"] else "")


def _type_dataset(run_dirs: list[str], name: str, out_dir: str | None, force: bool, cfg: Config,
                  settings: dict[str, Any]) -> dict[str, Any]:
    from castlab.dataset.stage import dataset_folder
    from castlab.typed.stage import read_records
    from flows.prepare import prepare

    for run_dir in run_dirs:
        if not read_records(Path(run_dir), name):
            get_run_logger().info("%s is not prepared for %s datasets: preparing it now (no review tasks: "
                                  "`castlab prepare %s --type %s` pushes them)", run_dir, name, run_dir, name)
            prepare(run_dir=run_dir, dataset_type=name, push=False, **settings)
    root = Path(out_dir) if out_dir else Run.create(f"dataset-{name}", cfg).path
    summary = build_type_task(list(run_dirs), name, str(dataset_folder(root, name)), force, cfg)
    _report_artifact(summary, f"{name} dataset")
    return {"out_root": str(root), "datasets": {name: summary}, "skipped": {}, "notes": []}


@flow(name="dataset")
def dataset(
    run_dirs: list[str],
    character: str | None = None,
    out_dir: str | None = None,
    force: bool = False,
    dataset_type: str = "character",
    config_files: list[str] | None = None,
    preset: str | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """Build one dataset per reviewed character of `run_dirs` (or only `character`) under `out_dir`
    (default: a new dataset run folder), each in ``<out_dir>/<character>/``; with `dataset_type` (background,
    style, lighting, pose, expression) the one dataset of that type in ``<out_dir>/<type>/``."""
    from castlab.dataset.stage import dataset_folder

    cfg = resolve_config(config_files, preset, profile)
    if dataset_type != "character":
        from castlab.typed.spec import dataset_type as known_type

        known_type(dataset_type)
        return _type_dataset(list(run_dirs), dataset_type, out_dir, force, cfg,
                             {"config_files": config_files, "preset": preset, "profile": profile})
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
        _report_artifact(summary, f"dataset of {name}")
    return {"out_root": str(root), "datasets": datasets, "skipped": plan["skipped"], "notes": plan["notes"]}
