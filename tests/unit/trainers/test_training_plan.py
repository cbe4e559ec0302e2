from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from run_builder import character_run

from castlab.config import load_config
from castlab.dataset import run as build_datasets
from castlab.dataset.kohya import tomllib
from castlab.errors import InputError
from trainers.config import parse_resolution, read_caption, read_plan
from trainers.data import build_items, dataset_summary, epoch_batches, static_captions
from trainers.latents import ImageJob, LatentCache, load_pixels


@pytest.fixture
def dataset(workspace):
    run = workspace / "runs" / "r"
    character_run(run, [{"identity": "Alice"} for _ in range(5)])
    cfg = load_config(profile="tiny", extra={"dataset": {"resolution": 128, "min_instances": 1}})
    return build_datasets([run], cfg, workspace / "d")["datasets"]["Alice"]


def test_plan_reads_the_pair_castlab_writes(dataset):
    plan = read_plan(Path(dataset["training_toml"]))
    assert plan.args["resolution"] == (64, 64) and Path(plan.args["output_dir"]).name == "checkpoints"
    (spec,) = plan.datasets
    assert spec.resolution == (64, 64) and spec.values["enable_bucket"] is True
    (subset,) = spec.subsets
    assert subset["alpha_mask"] is True and subset["class_tokens"] == dataset["class_tokens"]
    assert subset["num_repeats"] == dataset["num_repeats"] and subset["caption_extension"] == ".txt"
    assert len(subset.images) == dataset["train"] and all(p.suffix == ".png" for p in subset.images)
    assert subset["keep_tokens"] == 1 and subset["flip_aug"] is False  # from the subset / [general]


def test_unsupported_and_missing_things_are_named(dataset, tmp_path):
    config = Path(dataset["dataset_config"])
    data = tomllib.loads(config.read_text())
    data["datasets"][0]["subsets"][0]["color_aug"] = True
    import tomli_w

    config.write_text(tomli_w.dumps(data))
    with pytest.raises(InputError, match=r"does not support color_aug = True"):
        read_plan(Path(dataset["training_toml"]))
    data["datasets"][0]["subsets"][0]["color_aug"] = False
    data["datasets"][0]["subsets"][0]["image_dir"] = str(tmp_path / "nowhere")
    config.write_text(tomli_w.dumps(data))
    with pytest.raises(InputError, match="nowhere: subset image_dir does not exist"):
        read_plan(Path(dataset["training_toml"]))


def test_resolution_forms():
    assert parse_resolution("512", "t") == (512, 512) == parse_resolution(512, "t")
    assert parse_resolution("768,512", "t") == (768, 512) == parse_resolution([768, 512], "t")
    with pytest.raises(InputError, match="multiples of 8"):
        parse_resolution("513", "t")


def test_caption_is_the_first_line_else_class_tokens(tmp_path):
    image = tmp_path / "a.png"
    image.with_suffix(".txt").write_text("first line\nsecond line\n")
    assert read_caption(image, ".txt", "tok cls") == "first line"
    assert read_caption(tmp_path / "b.png", ".txt", "tok cls") == "tok cls"
    with pytest.raises(InputError, match="no caption file"):
        read_caption(tmp_path / "b.png", ".txt", None)


def test_latents_are_cached_on_disk_and_reused(models_workspace, tmp_path):
    from castlab.models.diffusion import load_base_pipeline

    pipe, version = load_base_pipeline(load_config(profile="tiny"))
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = np.arange(60, dtype=np.uint8)[None] * 4
    rgba[:, 20:, 3] = 255  # left third transparent
    path = tmp_path / "img.png"
    Image.fromarray(rgba, "RGBA").save(path)
    job = ImageJob(path, resized=(48, 32), crop_top_left=(8, 0), bucket=(32, 32))
    pixels, alpha = load_pixels(job)
    assert pixels.shape == (3, 32, 32) and alpha.shape == (1, 32, 32)
    assert alpha[0, :, :4].max() < 0.5 and alpha[0, :, -4:].min() > 0.99  # crop offset kept the mask's place
    flipped, flipped_alpha = load_pixels(ImageJob(path, (48, 32), (8, 0), (32, 32), flip=True))
    assert torch.equal(flipped_alpha, alpha.flip(-1)) and torch.equal(flipped, pixels.flip(-1))

    first = LatentCache(pipe.vae, version, tmp_path / "cache")
    a = first.get(job)
    assert first.hits == {"memory": 0, "disk": 0, "encoded": 1} and a.mean.shape == (4, 16, 16)
    first.get(job)
    assert first.hits["memory"] == 1
    second = LatentCache(pipe.vae, version, tmp_path / "cache")  # another run: from disk, nothing encoded
    b = second.get(job)
    assert second.hits == {"memory": 0, "disk": 1, "encoded": 0}
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std) and torch.equal(a.alpha, b.alpha)
    other_vae = LatentCache(pipe.vae, version + "-other", tmp_path / "cache")
    other_vae.get(job)
    assert other_vae.hits["encoded"] == 1  # the key includes the VAE
    (tmp_path / "cache").joinpath(next(p.name for p in (tmp_path / "cache").iterdir())).write_bytes(b"junk")
    again = LatentCache(pipe.vae, version, tmp_path / "cache")
    again.get(job)
    assert sum(again.hits.values()) == 1  # a damaged file is re-encoded or read, never an error


def test_items_are_bucketed_and_epochs_are_seeded(dataset):
    plan = read_plan(Path(dataset["training_toml"]))
    items, notes = build_items(plan)
    assert len(items) == dataset["train"] and notes and notes[0].startswith("dataset 0: ")
    for item in items:
        w, h = item.placement.bucket
        assert w % 64 == 0 and h % 64 == 0 and item.alpha_mask and item.caption.startswith(dataset["class_tokens"])
    batches, _ = epoch_batches(items, seed=1, epoch=1)
    flat = [i.key for b in batches for i in b]
    assert sorted(flat) == sorted(i.key for i in items for _ in range(i.repeats))  # every repeat, nothing dropped
    assert all(len({i.placement.bucket for i in b}) == 1 for b in batches)
    again, _ = epoch_batches(items, seed=1, epoch=1)
    other, _ = epoch_batches(items, seed=1, epoch=2)
    assert [[i.key for i in b] for b in again] == [[i.key for i in b] for b in batches]
    assert [[i.key for i in b] for b in other] != [[i.key for i in b] for b in batches]
    assert static_captions(items)  # castlab's datasets do not shuffle captions
    summary = dataset_summary(plan, items)
    assert summary["num_train_images"] == dataset["train"] * dataset["num_repeats"]
    (entry,) = summary["datasets"]
    (subset,) = entry["subsets"]
    assert subset["img_count"] == dataset["train"] and subset["num_repeats"] == dataset["num_repeats"]
    assert all(c.startswith(dataset["class_tokens"]) for c in subset["captions"])
    counted = sum(b["count"] for b in entry["bucket_info"]["buckets"].values())
    assert counted == summary["num_train_images"]
