"""The `castlab` command: manage the local stack and run each flow with its parameters.

Heavy imports (Prefect, torch) happen inside commands so `castlab --help` and `castlab status`
stay fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from castlab.config import Config, load_config
from castlab.errors import CastlabError, InputError, StackError
from castlab.runtime import setup_runtime
from castlab.typed import TYPE_NAMES

INPUTS_FAILED = 3  # exit status of curate/pipeline when some inputs could not be read (see --allow-failures)


def _config(args: argparse.Namespace) -> Config:
    return load_config(overrides=args.config or [], preset=args.preset, profile=args.profile)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", help="per-title override YAML (repeatable)")
    parser.add_argument("--preset", help="preset from configs/presets (e.g. 2d)")
    parser.add_argument("--profile", choices=["tiny", "full"], help="model profile (default from config)")


def _flow_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"config_files": args.config, "preset": args.preset, "profile": args.profile}


def _flow_config(args: argparse.Namespace) -> Config:
    """The config of a flow command; ``--task-runner`` (if given) sets ``CASTLAB_TASK_RUNNER``, which overrides
    ``orchestration.task_runner`` here and in the flow's own config."""
    if getattr(args, "task_runner", None):
        os.environ["CASTLAB_TASK_RUNNER"] = args.task_runner
    return _config(args)


def _run_flow(flow: Any, cfg: Config, **params: Any) -> Any:
    """Run `flow` on the task runner `cfg` configures (call after :func:`_prefect`: it needs the API URL)."""
    from castlab.orchestration import configured

    return configured(flow, cfg)(**params)


def _must_exist(*paths: str) -> None:
    """Fail fast, before Prefect starts, on an input path that does not exist."""
    for path in paths:
        if not Path(path).exists():
            raise InputError(path, "does not exist")


def _prefect(cfg: Config) -> str:
    from flows.runtime import configure_prefect

    runtime = configure_prefect(cfg)
    print(f"prefect: {runtime}", file=sys.stderr)
    return runtime


def cmd_up(args: argparse.Namespace) -> Any:
    from castlab import stack

    services = ["labelstudio", "prefect", "worker", "receiver"] + (["ml_backend"] if args.backend else [])
    if args.only:
        services = [args.only]
    return stack.up(_config(args), services=tuple(services))


def cmd_down(args: argparse.Namespace) -> Any:
    from castlab import stack

    return stack.down(_config(args))


def cmd_status(args: argparse.Namespace) -> Any:
    from castlab import stack

    if not args.run:
        return stack.status(_config(args))
    from castlab.pipeline.state import describe, find

    state = find(args.run)
    if state is None:
        raise InputError(args.run, "no pipeline run has this flow run id, name or run folder (see `castlab pipeline`)")
    lines = describe(state)
    api = stack.prefect_api_url(_config(args))
    if api:  # what Prefect says about the run (Suspended while a review is open, Crashed, ...)
        import requests

        try:
            run = requests.get(f"{api.rstrip('/')}/flow_runs/{state.flow_run_id}", timeout=5).json()
            lines.insert(1, f"  prefect: {run['state_name']} ({api.removesuffix('/api')}/runs/flow-run/"
                            f"{state.flow_run_id})")
        except (requests.RequestException, ValueError, KeyError):
            lines.insert(1, f"  prefect: {api} did not answer about this run")
    print("\n".join(lines))
    return None


def cmd_pipeline(args: argparse.Namespace) -> Any:
    """Submit the pipeline deployment: the stack's worker runs it, reviews in Label Studio move it on."""
    _must_exist(*args.videos, *(args.config or []))
    cfg = _config(args)
    if not _prefect(cfg).startswith("server"):
        raise StackError("castlab pipeline runs on the stack's worker and waits for reviews: start the stack "
                         "first (`castlab up`)")
    from castlab.frames.failures import check_videos

    _, failed = check_videos(args.videos)  # none readable: InputError
    if failed and not args.allow_failures:  # nothing submitted; main() exits with INPUTS_FAILED
        return {"submitted": False, "failed": failed}
    from prefect.deployments import run_deployment

    params = {"videos": [str(Path(v).resolve()) for v in args.videos], "mode": args.mode, "types": args.types,
              **_flow_kwargs(args), "config_files": [str(Path(c).resolve()) for c in args.config or []] or None}
    run = run_deployment("pipeline/pipeline", parameters=params, timeout=0, as_subflow=False)
    ui = os.environ["PREFECT_API_URL"].rstrip("/").removesuffix("/api")
    return {"flow_run": str(run.id), "name": run.name, "prefect_ui": f"{ui}/runs/flow-run/{run.id}",
            "status": f"castlab status {run.name}", **({"failed": failed} if failed else {})}


def cmd_curate(args: argparse.Namespace) -> Any:
    _must_exist(args.video)
    cfg = _flow_config(args)
    _prefect(cfg)
    from flows.curate import curate

    return _run_flow(curate, cfg, video=args.video, mode=args.mode, project_title=args.project,
                     push=not args.no_push, **_flow_kwargs(args))


def cmd_review_sync(args: argparse.Namespace) -> Any:
    _must_exist(args.run)
    cfg = _flow_config(args)
    _prefect(cfg)
    from flows.review_sync import review_sync

    return _run_flow(review_sync, cfg, run_dir=args.run, **_flow_kwargs(args))


def cmd_identify(args: argparse.Namespace) -> Any:
    _must_exist(args.run)
    cfg = _flow_config(args)
    _prefect(cfg)
    from flows.identify import identify

    return _run_flow(identify, cfg, run_dir=args.run, push=not args.no_push, force=args.force, **_flow_kwargs(args))


def cmd_caption(args: argparse.Namespace) -> Any:
    _must_exist(args.run)
    cfg = _flow_config(args)
    _prefect(cfg)
    from flows.caption import caption

    return _run_flow(caption, cfg, run_dir=args.run, push=not args.no_push, style=args.style, force=args.force,
                     sequences=args.sequences, **_flow_kwargs(args))


def cmd_propagate(args: argparse.Namespace) -> Any:
    _must_exist(args.run)
    cfg = _flow_config(args)
    _prefect(cfg)
    from flows.propagate import propagate

    return _run_flow(propagate, cfg, run_dir=args.run, instance=args.instance, push=not args.no_push,
                     force=args.force, **_flow_kwargs(args))


def cmd_track(args: argparse.Namespace) -> Any:
    _must_exist(args.run)
    if not (args.frame or args.instance):
        raise InputError(args.run, "say what to track: --frame FRAME_ID (its reviewed instances, or --query) or "
                                   "--instance ID (repeatable)")
    cfg = _flow_config(args)
    _prefect(cfg)
    from flows.video import track

    return _run_flow(track, cfg, run_dir=args.run, frame=args.frame, instances=args.instance, query=args.query,
                     push=not args.no_push, force=args.force, **_flow_kwargs(args))


def cmd_export_video(args: argparse.Namespace) -> Any:
    _must_exist(args.run, *([args.reference_image] if args.reference_image else []))
    cfg = _flow_config(args)
    _prefect(cfg)
    from flows.video import export_video

    return _run_flow(export_video, cfg, run_dir=args.run, format=args.format, out_dir=args.out,
                     reference_image=args.reference_image, prompt=args.prompt, include_pending=args.include_pending,
                     force=args.force, **_flow_kwargs(args))


def cmd_showcase(args: argparse.Namespace) -> Any:
    _must_exist(args.run)
    cfg = _flow_config(args)
    _prefect(cfg)
    from flows.video import showcase

    return _run_flow(showcase, cfg, run_dir=args.run, track_id=args.track, out=args.out, overlay=args.overlay,
                     interpolate=args.interpolate, force=args.force, **_flow_kwargs(args))


def cmd_dataset(args: argparse.Namespace) -> Any:
    _must_exist(*args.runs)
    cfg = _flow_config(args)
    _prefect(cfg)
    from flows.dataset import dataset

    return _run_flow(dataset, cfg, run_dirs=args.runs, character=args.character, out_dir=args.out,
                     force=args.force, dataset_type=args.type, **_flow_kwargs(args))


def cmd_prepare(args: argparse.Namespace) -> Any:
    _must_exist(args.run)
    cfg = _flow_config(args)
    _prefect(cfg)
    from flows.prepare import prepare

    return _run_flow(prepare, cfg, run_dir=args.run, dataset_type=args.type, push=not args.no_push,
                     force=args.force, **_flow_kwargs(args))


def cmd_export(args: argparse.Namespace) -> Any:
    _must_exist(args.dataset)
    from castlab.dataset.export import export_dataset

    out = Path(args.out) if args.out else Path(args.dataset) / "exports" / args.format
    return export_dataset(Path(args.dataset), out, args.format, force=args.force)


def cmd_train(args: argparse.Namespace) -> Any:
    _must_exist(args.toml)
    cfg = _flow_config(args)
    _prefect(cfg)
    from flows.train import train

    return _run_flow(train, cfg, training_toml=args.toml, force=args.force, resume=args.resume, **_flow_kwargs(args))


def cmd_evaluate(args: argparse.Namespace) -> Any:
    _must_exist(*args.checkpoints)
    cfg = _flow_config(args)
    _prefect(cfg)
    from flows.evaluate import evaluate

    if args.dataset:
        _must_exist(args.dataset)
    return _run_flow(evaluate, cfg, checkpoints=args.checkpoints, out_dir=args.out, dataset=args.dataset,
                     push=not args.no_push, register=not args.no_register, force=args.force, **_flow_kwargs(args))


def cmd_generate(args: argparse.Namespace) -> Any:
    _must_exist(*([args.prompt_file] if args.prompt_file else []))
    cfg = _flow_config(args)
    _prefect(cfg)
    from flows.generate import generate

    return _run_flow(generate, cfg, loras=args.lora, prompt=args.prompt, prompt_file=args.prompt_file,
                     out_dir=args.out, base=args.base, quality=args.quality, images=args.images, seed=args.seed,
                     check=not args.no_check, control=args.control, control_scale=args.control_scale,
                     device=args.device, force=args.force, **_flow_kwargs(args))


def cmd_loras(args: argparse.Namespace) -> Any:
    """The LoRA registry: list, show, check, set, remove."""
    from castlab.evaluate.registry import edit_lora, read_registry, registry_path, registry_problems

    entries = read_registry()
    if args.action == "list":
        problems = registry_problems(entries)
        rows = [(n, e.get("type", "character"), e["character"], f"{e['trigger']} {e['class_word']}", e["arch"],
                 e["chosen_by"], e.get("profile", "?"), "; ".join(problems.get(n, [])) or "ok")
                for n, e in sorted(entries.items())]
        header = ("name", "type", "character", "trigger", "arch", "chosen by", "profile", "state")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        print(f"{registry_path()}: {len(rows)} LoRA(s)")
        for row in [header, *rows]:
            print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        return None
    if args.action == "check":
        problems = registry_problems(entries)
        if problems:
            raise InputError(registry_path(), "; ".join(f"{n}: {', '.join(p)}" for n, p in problems.items()))
        return {"registry": str(registry_path()), "loras": len(entries), "problems": {}}
    if not args.name:
        raise InputError("loras", f"`castlab loras {args.action}` needs a LoRA name")
    if args.action == "show":
        if args.name not in entries:
            raise InputError(registry_path(), f"has no LoRA named {args.name!r}; known: "
                                              f"{', '.join(sorted(entries)) or 'none'}")
        return {**entries[args.name], "problems": registry_problems({args.name: entries[args.name]}).get(
            args.name, [])}
    if args.action == "remove":
        edit_lora(args.name, remove=True)
        return {"removed": args.name, "registry": str(registry_path())}
    changes = {}
    for pair in args.values:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(pair, "expected KEY=VALUE (e.g. trigger=zorvik)")
        changes[key.strip()] = float(value) if key.strip() == "weight" else value
    return edit_lora(args.name, changes)


def cmd_report(args: argparse.Namespace) -> Any:
    _must_exist(*args.runs)
    cfg = _config(args)
    _prefect(cfg)
    from flows.report import report

    return report(run_dirs=args.runs, out_dir=args.out, labelstudio_tasks=not args.no_labelstudio,
                  **_flow_kwargs(args))


def cmd_demo(args: argparse.Namespace) -> Any:
    cfg = _flow_config(args)
    _prefect(cfg)
    from flows.demo import demo

    result = _run_flow(demo, cfg, video=args.video, **_flow_kwargs(args))
    print(demo_summary(result), file=sys.stderr)
    return result


def _captions_line(captions: dict[str, Any]) -> str:
    if captions.get("skipped"):
        return f"skipped ({captions['skipped']})"
    return f"{captions.get('status')}, {captions.get('flagged')} flagged ({captions.get('report')})"


def demo_summary(result: dict[str, Any]) -> str:
    """Where every output of a demo run is, for people (the JSON goes to stdout for scripts)."""
    backend = result.get("ml_backend") or {}
    sync = result.get("review_sync") or {}
    lines = [
        "",
        f"castlab demo finished (profile: {result.get('profile')})",
        f"  Label Studio project : {result.get('label_studio_project')}"
        f"  ({result.get('label_studio_tasks')} tasks, {result.get('new_tasks_this_run')} new this run)",
        f"  curate run           : {result.get('curate_run')}",
        f"  frame report         : {result.get('frames_report')} (+ {Path(str(result.get('contact_sheet'))).name})",
        f"  ML backend           : {backend.get('url', 'not running')}"
        + (f" ({backend.get('interactive_regions')} regions from one keypoint)" if backend.get("connected") else ""),
        f"  review-sync          : {sync.get('reviewed', 0)} reviewed tasks, {sync.get('accepted', 0)} accepted /"
        f" {sync.get('corrected', 0)} corrected / {sync.get('added', 0)} added instances",
        f"  identities           : {(result.get('identities') or {}).get('clusters')} clusters,"
        f" {(result.get('identities') or {}).get('noise')} noise ({(result.get('identities') or {}).get('report')})",
        "  captions             : " + _captions_line(result.get("captions") or {}),
        *[f"  dataset              : {name}: {d['images']} images ({d['train']} train, {d['val']} val),"
          f" trigger {d['trigger']!r}, {d['rejected']} not taken{' (SMALL)' if d['small'] else ''} — {d['out_dir']}"
          for name, d in (result.get("datasets") or {}).items()],
        f"  dataset report       : {result.get('dataset_report')}",
        f"  training TOML        : {result.get('training_toml')}",
        f"  LoRA checkpoints     : {', '.join(result.get('checkpoints') or [])}",
        f"  evaluation           : {result.get('evaluation')}",
        f"  recommended          : {result.get('recommended')}",
        f"  comparison           : {result.get('comparison')}",
        f"  checkpoints project  : {result.get('checkpoints_project')} ({result.get('checkpoint_pairs')} blind pairs)",
        f"  LoRA registry        : {result.get('registry')}",
        f"  run report           : {result.get('run_report')}  (open it in a browser)",
    ]
    if result.get("profile") == "tiny":
        lines.append("  (tiny profile: random-weight models; the pictures show plumbing, not quality)")
    return "\n".join(lines)


def cmd_backend(args: argparse.Namespace) -> Any:
    from ml_backend.__main__ import main as backend_main

    argv = ["--host", args.host] if args.host else []
    argv += ["--port", str(args.port)] if args.port else []
    argv += [item for path in args.config or [] for item in ("--config", path)]
    argv += ["--preset", args.preset] if args.preset else []
    argv += ["--profile", args.profile] if args.profile else []
    backend_main(argv)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="castlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], Any], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        p.set_defaults(func=func)
        return p

    def add_flow(name: str, func: Callable[[argparse.Namespace], Any], help_text: str) -> argparse.ArgumentParser:
        p = add(name, func, help_text)
        p.add_argument("--task-runner", choices=["thread", "dask", "ray"],
                       help="where chunked tasks run (default: setting orchestration.task_runner; see "
                            "docs/pipeline.md, \"Scaling out\")")
        return p

    p = add("up", cmd_up, "start Label Studio, the Prefect server and a worker running castlab's deployments "
                          "(prefect.yaml) on 127.0.0.1")
    p.add_argument("--backend", action="store_true", help="also start the castlab ML backend")
    p.add_argument("--only", choices=["labelstudio", "prefect", "worker", "receiver", "ml_backend"],
                   help="start just this service (worker: deploys prefect.yaml first; needs the Prefect server)")
    add("down", cmd_down, "stop the local stack")
    p = add("status", cmd_status, "show the local stack's services and URLs, or where a pipeline run is")
    p.add_argument("run", nargs="?", help="a pipeline run: its flow run name or id, or its curate run folder")
    p = add("pipeline", cmd_pipeline, "videos → curate → review → identify → review → caption → review → dataset → "
                                      "train → evaluate → review → registry, on the stack's worker; each review "
                                      "moves it on")
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files or folders of videos")
    p.add_argument("--mode", choices=["scene", "interval", "hybrid"], help="frame selection (default from config)")
    p.add_argument("--types", nargs="+", choices=list(TYPE_NAMES), metavar="TYPE",
                   help=f"dataset types to build beside the characters ({', '.join(TYPE_NAMES)}): each is "
                        "prepared after the captions review, reviewed, built, trained and evaluated")
    p.add_argument("--allow-failures", action="store_true",
                   help="submit even when some videos cannot be read (they are recorded in the run, not processed)")
    p = add_flow("curate", cmd_curate, "video(s) → frames by shot → SAM2 instances → Label Studio masks project")
    p.add_argument("video", help="a video file or a folder of videos")
    p.add_argument("--mode", choices=["scene", "interval", "hybrid"], help="frame selection (default from config)")
    p.add_argument("--project", help="Label Studio project title (default from config)")
    p.add_argument("--no-push", action="store_true", help="do not push to Label Studio")
    p.add_argument("--allow-failures", action="store_true",
                   help=f"exit 0 even when some inputs could not be read (default: exit {INPUTS_FAILED}; they are "
                        "recorded in the run either way)")
    p = add_flow("review-sync", cmd_review_sync, "pull reviewed annotations back into a curate run's manifest")
    p.add_argument("run", help="curate run folder")
    p = add_flow("identify", cmd_identify,
                 "instances → face/open_clip embeddings → identity clusters → Label Studio review")
    p.add_argument("run", help="curate run folder")
    p.add_argument("--no-push", action="store_true", help="do not push to Label Studio")
    p.add_argument("--force", action="store_true", help="replace an earlier identity/ output of this run")
    p = add_flow("caption", cmd_caption, "identified instances → VLM schema captions → QC flags → Label Studio review")
    p.add_argument("run", help="curate run folder (after identify and review-sync)")
    p.add_argument("--style", choices=["natural", "tags", "auto"], help="caption style (default: captions.style)")
    p.add_argument("--sequences", action="store_true", help="also describe each shot's motion (8-12 frames)")
    p.add_argument("--no-push", action="store_true", help="do not push to Label Studio")
    p.add_argument("--force", action="store_true",
                   help="caption every instance again (default: only new or re-identified ones)")
    p = add_flow("propagate", cmd_propagate, "carry an instance's mask through its shot (SAM2 video) → Label Studio")
    p.add_argument("run", help="curate run folder")
    p.add_argument("instance", help="instance row id, e.g. inst:<video>:<frame>:0")
    p.add_argument("--no-push", action="store_true", help="do not push to Label Studio")
    p.add_argument("--force", action="store_true", help="propagate again over an earlier result")
    p = add_flow("track", cmd_track, "every object of a frame through its shot in one SAM2 pass (reviewed instances, "
                                      "named instances or a text query) → per-frame and video review tasks")
    p.add_argument("run", help="curate run folder")
    p.add_argument("--frame", help="frame row id, e.g. frame:<video>:<frame>: track its reviewed instances, or what "
                                   "--query finds on it")
    p.add_argument("--instance", action="append", help="instance row id to track (repeatable; all on one frame)")
    p.add_argument("--query", help='text query for an open-vocabulary detector, e.g. "teapot." (needs --frame)')
    p.add_argument("--no-push", action="store_true", help="do not push to Label Studio")
    p.add_argument("--force", action="store_true", help="track again over an earlier result")
    p = add_flow("export-video", cmd_export_video, "reviewed tracks → video-editing training clips (Wan VACE: "
                                                    "DiffSynth-Studio's metadata_vace.csv layout)")
    p.add_argument("run", help="curate run folder with tracks (castlab track, reviewed)")
    p.add_argument("--format", default="vace", choices=["vace"], help="export format (vace)")
    p.add_argument("--out", help="output folder (default: <run>/exports/vace)")
    p.add_argument("--reference-image", help="a product image to use as every clip's reference (default: the "
                                             "object's best reviewed crop)")
    p.add_argument("--prompt", help="every clip's prompt; {name} is the object's label (default: video.vace.prompt)")
    p.add_argument("--include-pending", action="store_true",
                   help="also export tracks nobody reviewed yet (default: accepted tracks only)")
    p.add_argument("--force", action="store_true", help="replace an existing export folder")
    p = add_flow("showcase", cmd_showcase, "a track → a showcase video (ffmpeg; optional frame interpolation and "
                                           "mask/identity overlays)")
    p.add_argument("run", help="curate run folder")
    p.add_argument("track", help="track id (a folder under <run>/tracks/)")
    p.add_argument("--out", help="output video (default: <run>/tracks/<track>/showcase.mp4)")
    p.add_argument("--overlay", action="store_true", help="draw every object's mask and label")
    p.add_argument("--interpolate", choices=["none", "minterpolate", "rife"],
                   help="frame interpolation (default: video.showcase.interpolate)")
    p.add_argument("--force", action="store_true", help="replace an existing video")
    p = add_flow("prepare", cmd_prepare, "a curate run → one dataset type's candidates (checked, embedded, labelled, "
                                    "captioned) → its Label Studio review project")
    p.add_argument("run", help="curate run folder")
    p.add_argument("--type", required=True, choices=list(TYPE_NAMES), help="the dataset type")
    p.add_argument("--no-push", action="store_true", help="do not push to Label Studio")
    p.add_argument("--force", action="store_true", help="prepare every candidate again (default: only new ones)")
    p = add_flow("dataset", cmd_dataset, "reviewed characters of curate runs → one dataset each (images with alpha "
                                    "masks, captions, metadata.json, kohya TOMLs, report); or one dataset of a type")
    p.add_argument("runs", nargs="+", metavar="RUN", help="curate run folder(s): a character across episodes")
    p.add_argument("--type", default="character", choices=["character", *TYPE_NAMES],
                   help="character (default: one dataset per reviewed character) or a type: one dataset from the "
                        "runs' prepared records (runs not prepared for it are prepared first)")
    p.add_argument("--character", help="build only this reviewed identity (default: every character with at least "
                                       "dataset.min_instances reviewed instances)")
    p.add_argument("--out", help="parent folder of the datasets, one <character>/ (or <type>/) each (default: a new "
                                 "dataset run)")
    p.add_argument("--force", action="store_true", help="rebuild an existing dataset folder")
    p = add("export", cmd_export, "a castlab dataset → another trainer's format")
    p.add_argument("dataset", help="a dataset folder written by `castlab dataset` (holds metadata.json)")
    p.add_argument("--format", required=True, choices=["kohya", "onetrainer", "aitoolkit", "hf"],
                   help="kohya sd-scripts pair, OneTrainer concepts, ai-toolkit folder + config, HF imagefolder")
    p.add_argument("--out", help="output folder (default: <dataset>/exports/<format>)")
    p.add_argument("--force", action="store_true", help="overwrite an existing export folder")
    p = add_flow("train", cmd_train, "train a LoRA from a kohya-compatible training TOML")
    p.add_argument("toml", help="training.toml written by `castlab dataset`")
    p.add_argument("--force", action="store_true", help="replace existing checkpoints of the same output_name")
    p.add_argument("--resume", help="a state folder (<name>-step00000100-state/) saved with save_state = true")
    p = add_flow("evaluate", cmd_evaluate, "rank checkpoints (identity, prompt following, leakage), recommend one, "
                                      "register it, push blind pairs to Label Studio")
    p.add_argument("checkpoints", nargs="+", help="kohya-format LoRA .safetensors files")
    p.add_argument("--dataset", help="the character's castlab dataset folder (reference crops; default: the one "
                                     "the checkpoints were trained from)")
    p.add_argument("--out", help="output folder (default: a new evaluate run folder)")
    p.add_argument("--no-push", action="store_true", help="do not push the checkpoints review to Label Studio")
    p.add_argument("--no-register", action="store_true", help="do not register the recommendation in loras.yaml")
    p.add_argument("--force", action="store_true", help="overwrite an existing quality_evaluation.json")
    p = add_flow("generate", cmd_generate, "registered LoRAs composed on a base model → images with their "
                                          "parameters, checked against the character (generation.json, contact "
                                          "sheet)")
    p.add_argument("--lora", action="append", default=[], metavar="NAME[:WEIGHT]",
                   help="a registered LoRA and its weight (default 1.0); repeat to compose several")
    p.add_argument("--prompt", help="one prompt (sd-scripts options allowed: --n, --w, --h, --d, --s, --l, --ss)")
    p.add_argument("--prompt-file", help="one prompt per line, sd-scripts' sample-prompt syntax")
    p.add_argument("--base", help="base model: diffusers folder, hub id or single-file checkpoint (default: the "
                                  "one the LoRAs were trained from)")
    p.add_argument("--quality", help="generation preset: draft, standard, high (default generation.preset)")
    p.add_argument("--images", type=int, default=1, help="images per prompt (seeds counting up)")
    p.add_argument("--seed", type=int, help="first seed (default: the config's seed)")
    p.add_argument("--no-check", action="store_true", help="skip the consistency check of character LoRAs")
    p.add_argument("--control", metavar="KIND=IMAGE", help="ControlNet condition: pose (a skeleton image, or a "
                                                          "frame whose pose is detected), depth or canny")
    p.add_argument("--control-scale", type=float, help="ControlNet conditioning scale (default "
                                                       "generation.control_scale)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--out", help="output folder (default: a new generate run folder)")
    p.add_argument("--force", action="store_true", help="generate into a non-empty output folder")
    p = add("loras", cmd_loras, "the LoRA registry (<workspace>/loras.yaml): list, show, check, set, remove")
    p.add_argument("action", choices=["list", "show", "check", "set", "remove"])
    p.add_argument("name", nargs="?", help="a registered LoRA's name (show, set, remove)")
    p.add_argument("values", nargs="*", metavar="KEY=VALUE", help="set: fields to change (character, trigger, "
                                                                  "class_word, weight, type)")
    p = add("report", cmd_report, "one page per curate run: funnel, identities, captions, training and evaluation, "
                                  "review analytics (<run>/report/: report.html, report.md, CSV tables)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="curate run folder(s)")
    p.add_argument("--out", help="output folder (one run only; default <run>/report, written again each time)")
    p.add_argument("--no-labelstudio", action="store_true", help="do not ask Label Studio (no annotator lead times)")
    p = add_flow("demo", cmd_demo, "the whole path on Big Buck Bunny (or --video): curate → … → evaluate")
    p.add_argument("--video", help="video to use instead of the Big Buck Bunny sample")
    p = add("backend", cmd_backend, "run the Label Studio ML backend in the foreground")
    p.add_argument("--host", help="bind address (default: setting ml_backend.host, 127.0.0.1)")
    p.add_argument("--port", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_runtime()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request drowns the flow logs
    try:
        result = args.func(args)
    except CastlabError as exc:
        print(f"castlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    failed = result.get("failed") if isinstance(result, dict) else None
    if failed and not getattr(args, "allow_failures", True):  # only commands with the flag
        print(f"castlab {args.command}: {len(failed)} input(s) failed (rerun with --allow-failures to accept):\n"
              + "\n".join(f"  {f['reason']}" for f in failed), file=sys.stderr)
        return INPUTS_FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
