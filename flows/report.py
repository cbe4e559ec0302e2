"""report: one page per curate run — funnel, identities, captions, training and evaluation, review analytics.

Writes ``<run>/report/`` (``report.html`` with its pictures embedded, ``report.md``, CSV tables; derived from the
run's files and Label Studio's tasks, so it is written again on every call) and Prefect artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from castlab.config import Config
from castlab.errors import InputError
from castlab.workspace import Run
from flows.common import LABEL_STUDIO_RETRIES, labelstudio, resolve_config


@task(name="list-review-tasks", **LABEL_STUDIO_RETRIES)
def review_tasks_task(run_dir: str, cfg: Config) -> dict[str, list[dict[str, Any]]]:
    from castlab.labelstudio.client import list_tasks
    from castlab.report.collect import project_ids

    ls = labelstudio(cfg)
    return {review: list_tasks(ls, project_id) for review, project_id in project_ids(Path(run_dir)).items()}


@task(name="write-report")
def write_report_task(run_dir: str, tasks: dict[str, list[dict[str, Any]]] | None, out_dir: str | None
                      ) -> dict[str, Any]:
    from castlab.report.collect import collect
    from castlab.report.render import markdown, tables, write

    data = collect(Path(run_dir), tasks)
    files = write(data, Path(out_dir) if out_dir else Path(run_dir) / "report")
    header, rows = tables(data)["funnel"]
    return {"files": files, "markdown": markdown(data),
            "funnel": [dict(zip(header, row, strict=True)) for row in rows if row[0] == "all"]}


@flow(name="report")
def report(run_dirs: list[str], out_dir: str | None = None, labelstudio_tasks: bool = True,
           config_files: list[str] | None = None, preset: str | None = None, profile: str | None = None
           ) -> dict[str, Any]:
    """The report of each curate run in `run_dirs` (`out_dir`: only with one run; default ``<run>/report``).
    Without `labelstudio_tasks`, or when Label Studio does not answer, the page says so and has no lead times."""
    logger = get_run_logger()
    cfg = resolve_config(config_files, preset, profile)
    if out_dir and len(run_dirs) > 1:
        raise InputError(out_dir, "--out takes one run; without it each run's report goes to <run>/report")
    written = {}
    for run_dir in run_dirs:
        run = Run.open(run_dir, cfg)
        if not (run.path / "manifest.parquet").is_file():
            raise InputError(run.path, "is not a curate run folder (no manifest.parquet)")
        tasks = None
        if labelstudio_tasks:
            try:
                tasks = review_tasks_task(str(run.path), cfg)
            except Exception as exc:  # the report is still worth having: say what is missing
                logger.warning("report %s: Label Studio not reachable (%s): no lead times", run.path.name, exc)
        result = write_report_task(str(run.path), tasks, out_dir)
        key = "run-report-" + "".join(c if c.isalnum() else "-" for c in run.path.name.lower())
        create_markdown_artifact(key=key, markdown=result["markdown"], description="castlab run report")
        create_table_artifact(key=f"{key}-funnel", table=result["funnel"], description="castlab run funnel")
        logger.info("report %s: %s", run.path.name, result["files"]["html"])
        written[str(run.path)] = result["files"]
    return written
