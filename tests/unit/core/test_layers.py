"""The layered outputs of segmentation: soft-edged character crops and inpainted ``background/`` frames."""

import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from castlab.config import load_config
from castlab.errors import ConfigError
from castlab.labelstudio import client
from castlab.labelstudio.projects import masks as masks_project
from castlab.layers import safe_name, write_instance_layers
from castlab.manifest import Manifest
from castlab.models.segmenter import Instance
from castlab.segment.background import BackgroundSettings, inpaint_background, union_mask
from castlab.segment.instances import segment_frames

H, W = 96, 128
CENTER, RADIUS = (64.0, 48.0), 16.0  # (x, y)
ALPHA = 0.15


def gradient() -> np.ndarray:
    """A smooth RGB background: linear ramps in x and y."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    return np.dstack([40 + xs * 1.2, 30 + ys * 1.5, 120 + 0.5 * xs - 0.4 * ys]).round().astype(np.uint8)


def disc_probability(center: tuple[float, float] = CENTER, radius: float = RADIUS) -> np.ndarray:
    """SAM2-like probability of a disc: ~1 inside, ~0 outside, a soft ramp a few pixels wide at the edge."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    r = np.hypot(xs - center[0], ys - center[1])
    return (1.0 / (1.0 + np.exp(-(radius - r) / 1.5))).astype(np.float32)


def frame_with_disc(center: tuple[float, float] = CENTER, radius: float = RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """The gradient with a bright "character" disc painted on it, and the disc's boolean mask."""
    image = gradient()
    ys, xs = np.mgrid[0:H, 0:W]
    disc = np.hypot(xs - center[0], ys - center[1]) <= radius
    image[disc] = (250, 245, 240)
    return image, disc


class FakeSegmenter:
    """Stands in for :class:`Segmenter` in :func:`segment_frames`: one soft disc instance per frame."""

    model_version = "fake-seg"
    alpha = ALPHA

    def auto_instances(self, image: np.ndarray) -> list[Instance]:
        prob = disc_probability()
        mask = prob > ALPHA
        ys, xs = np.nonzero(mask)
        bbox = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
        return [Instance(mask, bbox, int(mask.sum()), 0.9, CENTER, alpha=prob)]


def frame_row(tmp_path: Path, image: np.ndarray, index: int = 7) -> dict:
    path = tmp_path / "frames" / f"frame_{index:06d}.png"  # PNG: pixels read back exactly
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return {"row_id": f"frame:vid:{index:06d}", "kind": "frame", "video_id": "vid", "shot_id": "vid:0",
            "frame_index": index, "split": "train", "path": str(path), "width": W, "height": H, "status": "kept"}


def background_cfg(**values):
    return load_config(profile="tiny", extra={"segmentation": values})


def test_crop_alpha_is_the_probability_inside_the_mask(tmp_path: Path):
    image, _ = frame_with_disc()
    prob = disc_probability()
    mask = prob > ALPHA
    out = write_instance_layers(image, mask, tmp_path, "inst:vid:7:0", alpha=prob)
    x, y, w, h = out["bbox"]
    stored = np.asarray(Image.open(out["mask_path"]))
    assert set(np.unique(stored)) == {0, 255} and np.array_equal(stored > 0, mask)  # the mask stays binary
    crop = np.asarray(Image.open(out["crop_path"]))
    assert crop.shape == (h, w, 4)
    a, inside, p = crop[..., 3], mask[y : y + h, x : x + w], prob[y : y + h, x : x + w]
    assert (a[~inside] == 0).all()  # 0 outside the mask, even where the probability is not 0
    assert (a[inside] > 0).all()
    assert np.abs(a[inside].astype(int) - np.rint(p[inside] * 255)).max() <= 1
    # anti-aliased edge: the mask's boundary pixels are partly transparent
    ring = mask & ~(cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    ring = ring[y : y + h, x : x + w]
    assert ring.any() and ((a[ring] > 0) & (a[ring] < 255)).all()
    assert (a[inside] == 255).any()  # and the core is opaque
    with pytest.raises(ValueError, match="alpha shape"):
        write_instance_layers(image, mask, tmp_path, "inst:vid:7:1", alpha=prob[:10])


def test_inpainting_removes_a_character_and_keeps_the_rest():
    image, disc = frame_with_disc()
    clean = gradient()
    out = inpaint_background(image, [disc], method="telea", radius=5, dilate_px=4)
    assert out.shape == image.shape and out.dtype == np.uint8
    before = np.abs(image.astype(int) - clean.astype(int))[disc].mean()
    error = np.abs(out.astype(int) - clean.astype(int))
    # Telea follows the gradient into the hole: ~7 levels off on average where the disc was ~130 off
    assert before > 100 and error[disc].mean() < 12 and error[disc].max() < 40, (error[disc].mean(), error[disc].max())
    hole = union_mask([disc], (H, W), 4)
    assert hole.sum() > disc.sum()  # dilated by a few pixels
    assert np.array_equal(out[~hole], image[~hole])  # untouched away from the character
    # two characters: both removed (union of masks)
    image2, disc2 = frame_with_disc(center=(20.0, 20.0), radius=10)
    image2[disc] = image[disc]
    both = inpaint_background(image2, [disc, disc2], method="telea", radius=5, dilate_px=4)
    assert np.abs(both.astype(int) - clean.astype(int))[disc | disc2].mean() < 12
    assert np.array_equal(inpaint_background(image, [], "telea", 5), image)  # nothing to remove


def test_unknown_or_unavailable_method_names_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    image, disc = frame_with_disc()
    with pytest.raises(ConfigError, match="segmentation.background_inpaint must be one of"):
        inpaint_background(image, [disc], method="blur")
    monkeypatch.setitem(sys.modules, "simple_lama_inpainting", None)  # not importable
    with pytest.raises(ConfigError, match="segmentation.background_inpaint: lama needs the simple-lama-inpainting"):
        inpaint_background(image, [disc], method="lama")
    cfg = background_cfg(background_inpaint="lama")
    with pytest.raises(ConfigError, match="segmentation.background_inpaint"):
        BackgroundSettings.from_config(cfg)
    row = frame_row(tmp_path, image)
    with pytest.raises(ConfigError, match="segmentation.background_inpaint"):
        segment_frames(FakeSegmenter(), [row], tmp_path / "run", cfg)
    assert not (tmp_path / "run" / "masks").exists()  # failed before any work
    # importable, but no weights on disk: never downloaded, never a silent Telea fallback
    monkeypatch.setitem(sys.modules, "simple_lama_inpainting", types.ModuleType("simple_lama_inpainting"))
    monkeypatch.setenv("LAMA_MODEL", str(tmp_path / "big-lama.pt"))
    with pytest.raises(ConfigError, match=r"segmentation.background_inpaint: lama weights not found at .*big-lama.pt"):
        inpaint_background(image, [disc], method="lama")
    with pytest.raises(ConfigError, match="background_dilate_px"):
        BackgroundSettings.from_config(background_cfg(background_dilate_px=-1))


def test_defaults_are_telea():
    settings = BackgroundSettings.from_config(load_config(profile="tiny"))
    assert settings == BackgroundSettings(method="telea", dilate_px=4, radius=5.0)


def test_segment_frames_writes_soft_crops_and_one_background_per_frame(tmp_path: Path):
    image, disc = frame_with_disc()
    row = frame_row(tmp_path, image)
    run = tmp_path / "run"
    rows = segment_frames(FakeSegmenter(), [row], run, background_cfg())
    expected = run.resolve() / "background" / f"{safe_name(row['row_id'])}.png"
    assert expected.name == "frame_vid_000007.png" and expected.is_file()
    assert [r["background_path"] for r in rows] == [str(expected)]
    results = json.loads((run / "segmentation_results.json").read_text())
    frame = results["frames"][0]
    assert frame["background_path"] == "background/frame_vid_000007.png"
    assert frame["instances"][0]["background_path"] == frame["background_path"]
    assert results["background_inpaint"] == "telea"
    bg = np.asarray(Image.open(expected))
    assert np.abs(bg.astype(int) - gradient().astype(int))[disc].mean() < 12  # the character is gone
    alpha = np.asarray(Image.open(rows[0]["crop_path"]))[..., 3]
    assert ((alpha > 0) & (alpha < 255)).any()  # the crop carries the soft alpha


def test_background_none_writes_no_background(tmp_path: Path):
    image, _ = frame_with_disc()
    run = tmp_path / "run"
    rows = segment_frames(FakeSegmenter(), [frame_row(tmp_path, image)], run, background_cfg(background_inpaint="none"))
    assert rows and all(r["background_path"] is None for r in rows)
    assert not (run / "background").exists()
    results = json.loads((run / "segmentation_results.json").read_text())
    assert results["frames"][0]["background_path"] is None and results["background_inpaint"] == "none"


def test_review_sync_recuts_the_background_from_reviewed_masks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A reviewer corrects one instance and deletes another: the reviewed background removes only the kept one."""
    image, disc = frame_with_disc()
    second_center = (20.0, 20.0)
    _, second = frame_with_disc(center=second_center, radius=10)
    image[second] = (10, 200, 10)
    run = tmp_path / "run"
    frame = frame_row(tmp_path, image) | {"ls_project_id": 1}
    manifest = Manifest.for_run(run)
    manifest.add_rows([frame])
    instances = []
    for k, mask in enumerate((disc, second)):
        row_id = f"inst:vid:7:{k}"
        layers = write_instance_layers(image, mask, run, row_id)
        instances.append({"row_id": row_id, "kind": "instance", "parent_id": frame["row_id"], "video_id": "vid",
                          "frame_index": 7, "mask_path": layers["mask_path"], "crop_path": layers["crop_path"],
                          "background_path": None, "score": 0.9, "model_version": "fake-seg"})
    manifest.add_rows(instances)
    corrected = disc.copy()
    corrected[int(CENTER[1]) - int(RADIUS) - 1, int(CENTER[0])] = True  # one more pixel: "corrected"
    result = client.brush_result(corrected, "character", W, H, region_id=masks_project.region_id("inst:vid:7:0"))
    task = {"id": 1, "data": {"castlab_key": frame["row_id"]},
            "annotations": [{"id": 5, "result": [result], "updated_at": "2024-01-01"}]}
    monkeypatch.setattr(client, "list_tasks", lambda ls, project_id: [task])
    counts = masks_project.sync_mask_reviews(None, manifest, run, background_cfg())
    assert (counts["corrected"], counts["removed"]) == (1, 1)
    expected = run / "background" / "reviewed" / "frame_vid_000007.png"
    assert expected.is_file()
    kept, removed = manifest.get("inst:vid:7:0"), manifest.get("inst:vid:7:1")
    assert kept["background_path"] == str(expected) and kept["review_state"] == "corrected"
    assert removed["status"] == "rejected" and removed["background_path"] is None
    bg = np.asarray(Image.open(expected))
    assert np.abs(bg.astype(int) - gradient().astype(int))[disc].mean() < 12  # the kept character is removed
    assert np.array_equal(bg[second], image[second])  # the deleted "character" is background now
    # The run's own config.yaml decides when no config is passed.
    (run / "config.yaml").write_text("segmentation:\n  background_inpaint: none\n")
    expected.unlink()
    masks_project.sync_mask_reviews(None, manifest, run)
    assert not expected.exists()


def test_review_sync_refuses_a_mask_of_another_size_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    image, disc = frame_with_disc()
    run = tmp_path / "run"
    frame = frame_row(tmp_path, image) | {"ls_project_id": 1}
    manifest = Manifest.for_run(run)
    manifest.add_rows([frame])
    layers = write_instance_layers(image, disc, run, "inst:vid:7:0")
    manifest.add_rows([{"row_id": "inst:vid:7:0", "kind": "instance", "parent_id": frame["row_id"],
                        "video_id": "vid", "frame_index": 7, "mask_path": layers["mask_path"],
                        "crop_path": layers["crop_path"], "score": 0.9, "model_version": "fake-seg"}])
    small = client.brush_result(np.ones((H // 2, W // 2), bool), "character", W // 2, H // 2, region_id="zz")
    broken = dict(client.brush_result(disc, "character", W, H, region_id="yy"), original_width=W + 1)
    for result in (small, broken):
        task = {"id": 9, "data": {"castlab_key": frame["row_id"]},
                "annotations": [{"id": 3, "result": [result], "updated_at": "2024-01-01"}]}
        monkeypatch.setattr(client, "list_tasks", lambda ls, project_id, task=task: [task])
        counts = masks_project.sync_mask_reviews(None, manifest, run, background_cfg())
        assert (counts["invalid"], counts["reviewed"], counts["removed"]) == (1, 0, 0)
        row = manifest.get(frame["row_id"])
        assert row["review_state"] == "invalid" and "task 9" in row["review_error"]
        assert manifest.get("inst:vid:7:0")["status"] == "kept"  # nothing of the bad annotation applied
    assert "region yy" in manifest.get(frame["row_id"])["review_error"]
