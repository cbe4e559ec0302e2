import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from castlab.config import load_config
from castlab.dataset.assemble import assemble_dataset, build_caption, letterbox, tomllib
from castlab.errors import InputError
from castlab.frames.splits import assign_splits, row_splits, split_by_shot

RES = 64
BG = (127, 127, 127)


def make_rows(folder: Path, shots: list[str], per_shot: int = 2, video: str = "vid") -> list[dict]:
    """RGBA crops (a coloured body on a transparent margin), `per_shot` frames per shot."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    rows = []
    for shot in shots:
        for k in range(per_shot):
            crop = np.zeros((80, 40, 4), np.uint8)  # tall: 1:2 aspect
            crop[..., :3] = rng.integers(0, 255, 3)
            crop[4:-4, 4:-4, 3] = 255
            path = folder / f"{shot}_{k}.png"
            Image.fromarray(crop, "RGBA").save(path)
            rows.append({"row_id": f"inst:{video}:{shot}:{k}", "crop_path": str(path), "shot_id": shot,
                         "video_id": video, "identity": "hero"})
    return rows


@pytest.fixture
def cfg():
    return load_config(profile="tiny", extra={"dataset": {"resolution": RES, "background_rgb": list(BG)}})


def test_assembles_images_captions_metadata_and_kohya_layout(workspace, tmp_path, cfg):
    rows = make_rows(tmp_path / "crops", ["s0", "s1", "s2", "s3"])
    rows[0]["caption"] = "a rabbit waving in a meadow"
    out = tmp_path / "ds"
    summary = assemble_dataset(rows, out, cfg, base_model="some/base-model")

    assert summary["images"] == 8 and summary["train"] + summary["val"] == 8
    assert summary["val_shots"] >= 1 and summary["train_shots"] >= 1
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["profile"] == "tiny" and len(meta["images"]) == 8
    by_shot: dict[str, set[str]] = {}
    for entry in meta["images"]:
        by_shot.setdefault(entry["shot_key"], set()).add(entry["split"])
        image = Image.open(out / entry["image"])
        assert image.size == (RES, RES) and image.mode == "RGB"
        caption = (out / entry["caption_file"]).read_text().strip()
        assert caption == entry["caption"] and caption.startswith("cstlb character")
        assert entry["caption_tokens"] > 2
    assert all(len(splits) == 1 for splits in by_shot.values()), "a shot straddles train and val"
    captions = {e["row_id"]: e["caption"] for e in meta["images"]}
    assert captions[rows[0]["row_id"]] == "cstlb character, a rabbit waving in a meadow"
    assert captions[rows[1]["row_id"]] == "cstlb character, 3d animated character"

    # letterboxed: neutral background on the sides, the crop's colour in the middle, aspect kept
    px = np.asarray(Image.open(out / meta["images"][1]["image"]))
    assert tuple(px[RES // 2, 2]) == BG and tuple(px[RES // 2, RES - 3]) == BG
    body = np.any(np.abs(px.astype(int) - BG).sum(axis=2) > 30, axis=0)
    assert 0.3 < body.sum() / RES < 0.6  # 40x80 crop → half the width

    kohya = Path(summary["kohya_dir"])
    repeats = summary["num_repeats"]
    assert kohya.parent == out / "kohya" and kohya.name == f"{repeats}_cstlb character"
    assert repeats * summary["train"] >= cfg.dataset.target_size_min
    train_names = {Path(e["image"]).stem for e in meta["images"] if e["split"] == "train"}
    assert {p.stem for p in kohya.glob("*.png")} == train_names == {p.stem for p in kohya.glob("*.txt")}

    dcfg = tomllib.loads((out / "dataset_config.toml").read_text())
    assert dcfg["general"]["flip_aug"] is False and dcfg["general"]["color_aug"] is False
    subset = dcfg["datasets"][0]["subsets"][0]
    assert Path(subset["image_dir"]) == kohya and subset["num_repeats"] == repeats
    assert subset["class_tokens"] == "cstlb character" and subset["caption_extension"] == ".txt"
    assert dcfg["datasets"][0]["resolution"] == cfg.models.tiny.base_model.resolution

    text = (out / "training.toml").read_text()
    assert "${" not in text
    training = tomllib.loads(text)
    flat = {k: v for section in training.values() for k, v in section.items()}
    assert flat["pretrained_model_name_or_path"] == "some/base-model"
    assert Path(flat["dataset_config"]) == out / "dataset_config.toml"
    assert Path(flat["output_dir"]) == out / "checkpoints"
    assert flat["clip_skip"] == cfg.training.clip_skip and flat["seed"] == cfg.seed
    assert flat["flip_aug"] is False and flat["color_aug"] is False
    for key, value in cfg.models.tiny.base_model.kohya.items():  # tiny profile overrides applied
        assert flat[key] == value
    for key in ("network_dim", "network_alpha", "learning_rate", "max_train_steps", "save_every_n_steps",
                "train_batch_size", "resolution", "mixed_precision", "output_name"):
        assert key in flat


def test_default_base_model_is_the_profiles(workspace, tmp_path, cfg):
    from castlab.models.diffusion import base_model_source

    summary = assemble_dataset(make_rows(tmp_path / "crops", ["s0"]), tmp_path / "ds", cfg)
    assert summary["base_model"] == base_model_source(cfg)
    assert Path(summary["base_model"]).name.startswith("sd15-tiny-")


def test_split_is_by_shot_and_seeded(tmp_path):
    rows = make_rows(tmp_path / "crops", [f"s{i}" for i in range(10)], per_shot=3)
    a = split_by_shot(rows, 0.2, seed=1)
    assert a == split_by_shot(list(reversed(rows)), 0.2, seed=1)
    assert sum(v == "val" for v in a.values()) == 2
    assert any(split_by_shot(rows, 0.2, seed=s) != a for s in range(2, 6))
    one = make_rows(tmp_path / "one", ["only"], per_shot=4)
    assert set(split_by_shot(one, 0.5, seed=1).values()) == {"train"}
    two = make_rows(tmp_path / "two", ["a", "b"])
    assert sorted(split_by_shot(two, 0.1, seed=1).values()) == ["train", "val"]
    # same shot id in two videos are two different shots
    both = make_rows(tmp_path / "v1", ["s"], video="v1") + make_rows(tmp_path / "v2", ["s"], video="v2")
    assert len(split_by_shot(both, 0.5, seed=0)) == 2


def test_splits_assigned_at_curate_time_are_kept(tmp_path):
    rows = assign_splits(make_rows(tmp_path / "crops", [f"s{i}" for i in range(6)], per_shot=2), 0.5, seed=3)
    assert {r["split"] for r in rows} == {"train", "val"}
    # the dataset sees only some of the shots: their curate-time split holds, whatever val_fraction says now
    subset = [r for r in rows if r["shot_id"] in ("s0", "s1", "s2")]
    expected = {f"{r['video_id']}/{r['shot_id']}": r["split"] for r in subset}
    assert row_splits(subset, 0.0, seed=99) == expected
    # a shot whose rows disagree (or rows without splits) falls back to a fresh split by shot
    assert subset[0]["shot_id"] == subset[1]["shot_id"]
    broken = [{**subset[0], "split": "val"}, {**subset[1], "split": "train"}] + subset[2:]
    assert row_splits(broken, 0.0, seed=99) == split_by_shot(broken, 0.0, seed=99)
    assert set(row_splits(broken, 0.0, seed=99).values()) == {"train"}


def test_training_overrides_from_config(workspace, tmp_path):
    cfg = load_config(profile="tiny", extra={"dataset": {"resolution": RES},
                                             "training": {"kohya": {"max_train_steps": 7, "network_dim": 3}}})
    summary = assemble_dataset(make_rows(tmp_path / "crops", ["s0"]), tmp_path / "ds", cfg)
    training = tomllib.loads(Path(summary["training_toml"]).read_text())
    assert training["training_arguments"]["max_train_steps"] == 7
    assert training["additional_network_arguments"]["network_dim"] == 3


def test_refuses_to_overwrite_without_force(workspace, tmp_path, cfg):
    rows = make_rows(tmp_path / "crops", ["s0", "s1"])
    out = tmp_path / "ds"
    assemble_dataset(rows, out, cfg)
    stale = out / "images" / "stale.png"
    stale.write_bytes(b"x")
    with pytest.raises(InputError, match="not empty"):
        assemble_dataset(rows, out, cfg)
    summary = assemble_dataset(rows[:2], out, cfg, force=True)
    assert summary["images"] == 2 and not stale.exists()
    assert len(list((out / "images").iterdir())) == 2


def test_bad_input(workspace, tmp_path, cfg):
    with pytest.raises(InputError, match="no reviewed instance rows"):
        assemble_dataset([], tmp_path / "empty", cfg)
    rows = make_rows(tmp_path / "crops", ["s0"])
    rows[1]["crop_path"] = str(tmp_path / "missing.png")
    with pytest.raises(InputError, match="missing.png: instance crop does not exist"):
        assemble_dataset(rows, tmp_path / "ds", cfg)
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    rows[1]["crop_path"] = str(broken)
    with pytest.raises(InputError, match="broken.png: instance crop is not a readable image"):
        assemble_dataset(rows, tmp_path / "ds2", cfg)
    with pytest.raises(InputError, match="repeat a row_id"):
        assemble_dataset([rows[0], rows[0]], tmp_path / "ds3", cfg)


def test_caption_template_uses_structured_fields(cfg):
    caption = build_caption({"view": "side view", "lighting": "rim light", "caption": float("nan")}, cfg)
    assert caption == "cstlb character, 3d animated character, side view, rim light"
    preset = load_config(profile="tiny", preset="2d")
    assert build_caption({}, preset) == "cstlb character, 2d animated character"
    assert build_caption({"caption": "CSTLB character smiling"}, cfg) == "CSTLB character smiling"


def test_letterbox_composites_alpha():
    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :10, 3] = 255  # left half opaque red, right half transparent
    out = np.asarray(letterbox(Image.fromarray(rgba, "RGBA"), 40, (0, 0, 255)))
    assert out.shape == (40, 40, 3)
    assert tuple(out[20, 5]) == (255, 0, 0) and tuple(out[20, 35]) == (0, 0, 255)
    assert tuple(out[2, 5]) == (0, 0, 255)  # padding above the 2:1 image


def test_crop_paths_relative_to_the_workspace(workspace, tmp_path, cfg):
    rows = make_rows(workspace / "runs" / "r1" / "character", ["s0"])
    for row in rows:
        row["crop_path"] = Path(row["crop_path"]).relative_to(workspace).as_posix()
    summary = assemble_dataset(rows, tmp_path / "ds", cfg)
    meta = json.loads(Path(summary["metadata"]).read_text())
    assert [Path(e["source_crop"]) for e in meta["images"]] == [workspace / r["crop_path"] for r in rows]
    rows[0]["crop_path"] = "../outside.png"
    with pytest.raises(InputError, match="outside"):
        assemble_dataset(rows, tmp_path / "ds2", cfg)
