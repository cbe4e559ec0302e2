"""demo: the whole thin path on real animated footage, unattended.

curate (frames → SAM2 → Label Studio) → ML backend connected and asked once interactively →
demo reviewer accepts the predictions → review-sync → identify → demo reviewer names the clusters →
review-sync → caption → demo reviewer accepts the captions → review-sync → dataset → train → evaluate → the run
report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from castlab.config import Config
from castlab.errors import InputError
from castlab.manifest import Manifest
from castlab.reviews.advance import claim
from castlab.workspace import workspace_root
from flows.caption import caption, labelstudio, resolve_config
from flows.curate import curate
from flows.dataset import dataset
from flows.evaluate import evaluate
from flows.identify import identify
from flows.report import report as run_report
from flows.review_sync import review_sync
from flows.train import train


@task(name="connect-ml-backend")
def connect_backend_task(cfg: Config, project_id: int, run_dir: str) -> dict[str, Any]:
    """Connect the running castlab ML backend and make one interactive keypoint request."""
    from castlab import stack
    from castlab.labelstudio import backends
    from castlab.labelstudio.connection import labelstudio_connection
    backend = stack.status(cfg).get("ml_backend") or {}
    if not backend.get("healthy"):
        get_run_logger().warning("ML backend is not running (castlab up --backend); skipping")
        return {"connected": False}
    url, token = labelstudio_connection(cfg)
    backend_id = backends.ensure_ml_backend(labelstudio(cfg), project_id, backend["url"])
    frame = next(r for r in Manifest.for_run(Path(run_dir)).rows(kind="frame", status="kept") if r.get("ls_task_id"))
    context = {"result": [{
        "type": "keypointlabels", "from_name": "kp", "to_name": "image", "is_positive": True,
        "original_width": frame["width"], "original_height": frame["height"],
        "value": {"x": 50.0, "y": 50.0, "width": 1.0, "keypointlabels": ["character"]},
    }]}
    answer = backends.interactive_annotate(url, token, backend_id, int(frame["ls_task_id"]), context)
    regions = len(((answer.get("data") or answer).get("result")) or [])
    return {"connected": True, "backend_id": backend_id, "url": backend["url"], "interactive_regions": regions}


@task(name="demo-reviewer")
def demo_review_task(cfg: Config, run_dir: str) -> int:
    from castlab.labelstudio.projects.masks import accept_predictions
    return accept_predictions(labelstudio(cfg), Manifest.for_run(Path(run_dir)))


@task(name="demo-identity-reviewer")
def demo_name_clusters_task(cfg: Config, run_dir: str) -> int:
    from castlab.labelstudio.projects.identity import name_clusters
    return name_clusters(labelstudio(cfg), Path(run_dir), cfg)


@task(name="demo-caption-reviewer")
def demo_accept_captions_task(cfg: Config, run_dir: str) -> int:
    from castlab.labelstudio.projects.captions import accept_caption_predictions
    return accept_caption_predictions(labelstudio(cfg), Path(run_dir), cfg)


@flow(name="demo")
def demo(
    video: str | None = None,
    config_files: list[str] | None = None,
    preset: str | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    from castlab.sample_media import big_buck_bunny

    logger = get_run_logger()
    kwargs = {"config_files": config_files, "preset": preset, "profile": profile}
    cfg = resolve_config(**kwargs)
    if video is None:
        video = str(big_buck_bunny(workspace_root() / "media" / "samples"))
        logger.info("sample video: %s (Big Buck Bunny, (c) Blender Foundation, CC-BY 3.0)", video)
    cur = curate(video=video, **kwargs)
    run_dir = cur["run_dir"]
    for stage in ("identify", "caption", "dataset"):  # the demo runs them itself: its scripted reviews, seen by
        claim(Path(run_dir), stage, {"by": "demo"})    # the webhook receiver, must not start them a second time
    project_id = cur["labelstudio"]["project_id"]
    backend = connect_backend_task(cfg, project_id, run_dir)
    accepted = demo_review_task(cfg, run_dir)
    synced = review_sync(run_dir=run_dir, **kwargs)
    identities = identify(run_dir=run_dir, **kwargs)
    named = accepted_captions = 0
    captions: dict[str, Any] = {"skipped": "no identity cluster, so no reviewed identity to caption"}
    if identities.get("clusters"):
        named = demo_name_clusters_task(cfg, run_dir)
        review_sync(run_dir=run_dir, **kwargs)
        captions = caption(run_dir=run_dir, **kwargs)
        accepted_captions = demo_accept_captions_task(cfg, run_dir)
        review_sync(run_dir=run_dir, **kwargs)
    else:
        logger.warning("caption skipped: %s", captions["skipped"])
    built = dataset(run_dirs=[run_dir], **kwargs)  # one dataset per reviewed character (the named cluster)
    if not built["datasets"]:
        raise InputError(run_dir, f"no character dataset was built ({built['skipped']})")
    name, data = next(iter(built["datasets"].items()))
    logger.info("training on the dataset of %s (%d images)", name, data["images"])
    checkpoints = train(training_toml=data["training_toml"], **kwargs)
    report = evaluate(checkpoints=checkpoints, dataset=data["out_dir"], **kwargs)
    page = run_report(run_dirs=[run_dir], **kwargs)[str(Path(run_dir).resolve())]["html"]
    from castlab.labelstudio.connection import labelstudio_connection

    ls_url, _ = labelstudio_connection(cfg)
    return {
        "profile": cfg.profile,
        "curate_run": run_dir,
        "frames_report": cur["report"]["report.md"],
        "contact_sheet": cur["report"]["contact_sheet.png"],
        "label_studio_project": f"{ls_url}/projects/{project_id}",
        "label_studio_tasks": cur["labelstudio"]["tasks"],
        "new_tasks_this_run": cur["labelstudio"]["new_tasks"],
        "ml_backend": backend,
        "demo_annotations_created": accepted,
        "review_sync": synced,
        "identities": {k: identities.get(k) for k in ("instances", "routes", "clusters", "noise", "reason", "report")},
        "clusters_named": named,
        "captions": {k: captions.get(k) for k in ("instances", "status", "flagged", "style", "report", "labelstudio",
                                                  "skipped") if k in captions},
        "captions_accepted": accepted_captions,
        "datasets": {n: {k: d[k] for k in ("out_dir", "images", "train", "val", "rejected", "trigger", "small")}
                     for n, d in built["datasets"].items()},
        "dataset_skipped": built["skipped"],
        "dataset": data["out_dir"],
        "dataset_report": data["report"]["report"],
        "training_toml": data["training_toml"],
        "checkpoints": checkpoints,
        "evaluation": report.get("out_dir"),
        "recommended": report.get("recommended_file"),
        "recommendation_reason": report.get("reason"),
        "comparison": str(Path(report["out_dir"]) / report["files"]["comparison_png"]),
        "checkpoints_project": (report.get("labelstudio") or {}).get("project_id"),
        "checkpoint_pairs": (report.get("labelstudio") or {}).get("tasks"),
        "registry": report.get("registry"),
        "run_report": page,
    }
