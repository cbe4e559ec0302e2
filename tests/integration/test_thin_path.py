"""The thin path end to end under a real Prefect runtime against a real Label Studio server:
curate → (reviewer edits masks over the LS API) → review-sync → identify → (reviewer names a cluster) →
review-sync → dataset of that character only → train → evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from castlab.errors import InputError
from castlab.evaluate.registry import read_registry
from castlab.labelstudio import client
from castlab.manifest import Manifest

pytestmark = pytest.mark.integration


def make_video(path: Path, shots: int = 2, frames_per_shot: int = 30, size: tuple[int, int] = (320, 256)) -> Path:
    """A small h264 video with `shots` visually distinct shots (a moving figure on a plain set)."""
    import av

    width, height = size
    palette = [(30, 60, 200), (230, 200, 40), (40, 170, 60), (200, 40, 160)]  # far apart in hue: hard cuts
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for shot in range(shots):
            background = np.array(palette[shot % len(palette)])
            figure = 255 - background
            for i in range(frames_per_shot):
                img = np.empty((height, width, 3), np.uint8)
                img[:] = background
                yy, xx = np.mgrid[:height, :width]
                cx, cy = 80 + 3 * i + 40 * shot, height // 2
                img[((xx - cx) ** 2 / 40**2 + (yy - cy) ** 2 / 70**2) < 1] = figure
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path



def test_curate_bad_input_names_the_path(ls_env, tmp_path: Path):
    from flows.curate import curate

    with pytest.raises(InputError, match="does not exist"):
        curate(video=str(tmp_path / "nope.mp4"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=str(empty)):
        curate(video=str(empty))


def test_thin_path_end_to_end(ls_env, tmp_path: Path):
    from flows.curate import curate
    from flows.dataset import dataset
    from flows.evaluate import evaluate
    from flows.identify import identify
    from flows.review_sync import review_sync
    from flows.train import train

    video = _media(ls_env, "two shots.mp4")
    title = "thin path test"
    first = curate(video=str(video), mode="scene", project_title=title)
    ls = client.connect(ls_env.url, ls_env.token)
    project_id = first["labelstudio"]["project_id"]
    tasks = client.list_tasks(ls, project_id)
    assert len(tasks) == first["labelstudio"]["tasks"] > 0
    assert first["labelstudio"]["new_tasks"] == len(tasks)
    predicted = [t for t in tasks if t.get("predictions")]
    assert predicted, "curate pushed no mask predictions"
    for task in predicted:
        prediction = task["predictions"][0]
        assert str(prediction["model_version"]).startswith("tiny-")
        assert prediction["result"][0]["type"] == "brushlabels"
        assert task["data"]["image"].startswith("/data/local-files/?d=")

    # Re-running the flow on the same video creates no duplicate task.
    second = curate(video=str(video), mode="scene", project_title=title)
    assert second["labelstudio"]["new_tasks"] == 0
    assert len(client.list_tasks(ls, project_id)) == len(tasks)

    # A reviewer, over the API: corrects the first task's first mask, deletes the rest of its regions,
    # accepts every other task's prediction as is.
    run_dir = Path(second["run_dir"])
    corrected_mask = None
    for n, task in enumerate(predicted):
        result = [dict(r) for r in task["predictions"][0]["result"]]
        if n == 0:
            h, w = result[0]["original_height"], result[0]["original_width"]
            corrected_mask = np.zeros((h, w), np.uint8)
            corrected_mask[h // 4 : h // 2, w // 3 : w // 2] = 1
            corrected_mask[h // 4, w // 3] = 0  # an odd pixel, so the round trip is really exact
            edited = client.brush_result(corrected_mask, "character", w, h, region_id=result[0]["id"])
            result = [edited]
        client.create_annotation(ls, task["id"], result)

    counts = review_sync(run_dir=str(run_dir))
    assert counts["reviewed"] == len(predicted)
    assert counts["corrected"] == 1
    assert counts["accepted"] >= 0 and counts["removed"] == len(predicted[0]["predictions"][0]["result"]) - 1
    manifest = Manifest.load(run_dir / "manifest.parquet")
    corrected = [r for r in manifest.rows(kind="instance") if r.get("review_state") == "corrected"]
    assert len(corrected) == 1
    decoded = np.asarray(Image.open(corrected[0]["reviewed_mask_path"])) > 127
    assert np.array_equal(decoded, corrected_mask.astype(bool))
    rejected = manifest.rows(kind="instance", status="rejected")
    removed = [r for r in rejected if r["reject_reason"] == "removed in review"]
    assert len(removed) == counts["removed"]

    # identities: cluster, then a reviewer names cluster 0 "Hero" and leaves the others undecided
    with pytest.raises(InputError, match="no reviewed identities"):
        dataset(run_dirs=[str(run_dir)], out_dir=str(tmp_path / "too-early"))
    override = tmp_path / "small_clusters.yaml"
    override.write_text("clustering:\n  min_cluster_size: 3\n  min_samples: 1\ndataset:\n  min_instances: 2\n")
    ids = identify(run_dir=str(run_dir), config_files=[str(override)])
    assert ids["clusters"] >= 1, ids
    cluster_tasks = client.list_tasks(ls, ids["labelstudio"]["clusters"]["project_id"])
    ours = [t for t in cluster_tasks if t["data"]["castlab_run"] == f"runs/{run_dir.name}"]  # the project is shared
    client.create_annotation(ls, next(t for t in ours if t["data"]["cluster"] == 0)["id"], [
        {"from_name": "decision", "to_name": "sheet", "type": "choices", "value": {"choices": ["name"]}},
        {"from_name": "name", "to_name": "sheet", "type": "textarea", "value": {"text": ["Hero"]}}])
    review_sync(run_dir=str(run_dir), config_files=[str(override)])
    rows = Manifest.load(run_dir / "manifest.parquet").rows(kind="instance", status="kept")
    heroes = {r["row_id"] for r in rows if r.get("identity") == "Hero" and r.get("review_state")}
    assert heroes

    data = dataset(run_dirs=[str(run_dir)], out_dir=str(tmp_path / "dataset"), config_files=[str(override)])
    assert set(data["datasets"]) == {"Hero"}  # unreviewed clusters and noise get no dataset
    hero = data["datasets"]["Hero"]
    out = Path(hero["out_dir"])
    meta = json.loads((out / "metadata.json").read_text())
    assert {e["row_id"] for e in meta["images"]} | {r["row_id"] for r in meta["rejected"]} == heroes
    images = sorted((out / "images").glob("*.png"))
    assert len(images) == hero["images"] > 0 and all(Image.open(p).mode == "RGBA" for p in images)
    assert len(list((out / "captions").glob("*.txt"))) == len(images)
    assert (out / "dataset_report.md").is_file() and (out / "contact_sheet.png").is_file()
    data = hero

    checkpoints = train(training_toml=data["training_toml"])
    assert checkpoints and all(Path(c).suffix == ".safetensors" for c in checkpoints)

    # evaluate: the tiny models' scores are noise, so the gates are opened for the round trip to have pairs
    gates = tmp_path / "evaluation.yaml"
    gates.write_text("evaluation:\n  seeds: [1, 2]\n  steps: 2\n  lora_weights: [1.0]\n  gates: {max_leakage_gain: 9,"
                     " max_drift: 2, max_memorisation: 1, min_diversity_ratio: 0}\n")
    with pytest.raises(InputError, match="outside the workspace root"):  # LS could not serve the pairs
        evaluate(checkpoints=checkpoints, out_dir=str(tmp_path / "eval"), config_files=[str(gates)])
    report = evaluate(checkpoints=checkpoints, config_files=[str(gates)])  # a new evaluate run folder
    eval_dir = Path(report["out_dir"])
    quality = json.loads((eval_dir / "quality_evaluation.json").read_text())
    assert quality["profile"] == "tiny" and quality["character"] == "Hero"  # references from the trained dataset
    assert (eval_dir / "comparison.png").is_file() and (eval_dir / "grid_identity.png").is_file()
    recommended = report["recommended"]
    assert recommended in [Path(c).stem for c in checkpoints]  # nothing gated: one of them is recommended
    entry = read_registry()[quality["checkpoints"][0]["output_name"]]
    assert entry["chosen_by"] == "castlab" and Path(entry["file"]).stem == recommended

    # the reviewers always prefer the other checkpoint: review-sync ranks it first and registers it
    pushed = report["labelstudio"]
    assert pushed["tasks"] > 0 and pushed["new_tasks"] == pushed["tasks"]
    mapping = json.loads((eval_dir / "checkpoints_push.json").read_text())["pairs"]
    preferred = next(Path(c).stem for c in checkpoints if Path(c).stem != recommended)
    ours = [t for t in client.list_tasks(ls, pushed["project_id"]) if t["data"]["castlab_key"] in mapping]
    assert len(ours) == pushed["tasks"]  # the project is shared by evaluations: each has its own tasks
    for task in ours:
        pair = mapping[task["data"]["castlab_key"]]
        side = "left" if pair["left"] == preferred else "right"
        client.create_annotation(ls, task["id"], [{"from_name": "pick", "to_name": "pick", "type": "pairwise",
                                                   "value": {"selected": side}}])
    synced = review_sync(run_dir=str(eval_dir))["checkpoints"]
    assert synced["chosen"] == preferred and synced["ranking"][0] == preferred
    assert synced["agreement"]["top1_hit"] is False and synced["agreement"]["kendall_tau"] == -1.0
    entry = read_registry()[quality["checkpoints"][0]["output_name"]]
    assert entry["chosen_by"] == "reviewers" and Path(entry["file"]).stem == preferred
    assert evaluate(checkpoints=checkpoints, out_dir=str(eval_dir), config_files=[str(gates)],
                    force=True)["labelstudio"]["new_tasks"] == 0  # re-running never duplicates tasks


def _media(ls_server, name: str) -> Path:
    folder = Path(ls_server.workspace) / "media"
    folder.mkdir(parents=True, exist_ok=True)
    return make_video(folder / name)
