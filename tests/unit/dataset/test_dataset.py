import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from run_builder import character_run

from castlab.config import load_config
from castlab.dataset import run as build_datasets
from castlab.dataset.assemble import assemble_character, build_caption
from castlab.dataset.candidates import gather
from castlab.dataset.kohya import flatten_toml, tomllib
from castlab.dataset.triggers import Trigger, character_trigger, derive_trigger, is_rare_token
from castlab.errors import InputError
from castlab.manifest import Manifest
from castlab.models.tokenizers import count_clip_tokens

RES = 128


def make_cfg(**dataset):
    return load_config(profile="tiny", extra={"dataset": {"resolution": RES, "min_instances": 4, **dataset}})


@pytest.fixture
def cfg():
    return make_cfg()


def two_character_specs() -> list[dict]:
    """Alice (named cluster, 6), Bob (instance decisions, 5), and what must never enter a dataset."""
    specs = [{"identity": "Alice", "view": v, "shot": f"a{k % 3}"}
             for k, v in enumerate(["front", "front", "three_quarter", "profile", "front", "unknown"])]
    specs += [{"identity": "Bob", "identity_state": "reviewed", "shot": f"b{k % 2}"} for k in range(5)]
    specs += [{"identity": None, "identity_state": "noise"} for _ in range(3)]
    specs += [{"identity": None, "identity_state": "not_character"}]
    specs += [{"identity": "character_2", "identity_state": "unreviewed"} for _ in range(4)]
    specs += [{"identity": "Alice", "review_state": None}]  # identity reviewed, mask not
    specs += [{"identity": "Alice", "review_state": "rejected"}]
    return specs


def test_one_dataset_per_reviewed_character_and_nothing_else(workspace, cfg):
    run = workspace / "runs" / "r1"
    character_run(run, two_character_specs())
    before = (run / "manifest.parquet").read_bytes()
    result = build_datasets([run], cfg, workspace / "datasets")
    assert set(result["datasets"]) == {"Alice", "Bob"}
    allowed = {"Alice": {f"inst:vid:{k}:0" for k in range(6)}, "Bob": {f"inst:vid:{k}:0" for k in range(6, 11)}}
    triggers = set()
    for name, summary in result["datasets"].items():
        meta = json.loads(Path(summary["metadata"]).read_text())
        taken = {e["row_id"] for e in meta["images"]} | {r["row_id"] for r in meta["rejected"]}
        assert taken == allowed[name], f"{name}: {taken ^ allowed[name]}"
        assert meta["character"] == name and meta["counts"]["selected"] == len(allowed[name])
        assert all(e["caption"].startswith(meta["class_tokens"]) for e in meta["images"])
        assert Path(summary["out_dir"]).name == name and meta["small"] is True
        triggers.add(meta["trigger"])
    assert len(triggers) == 2
    # the curate run's manifest is only read
    assert (run / "manifest.parquet").read_bytes() == before


def test_min_instances_and_unknown_character(workspace):
    run = workspace / "runs" / "r1"
    character_run(run, two_character_specs())
    result = build_datasets([run], make_cfg(min_instances=6), workspace / "datasets")
    assert set(result["datasets"]) == {"Alice"} and "Bob" in result["skipped"]
    with pytest.raises(InputError, match=r"no reviewed character named 'Carol'; known: Alice \(6\), Bob \(5\)"):
        build_datasets([run], make_cfg(), workspace / "d2", character="Carol")
    only = build_datasets([run], make_cfg(min_instances=50), workspace / "d3", character="bob")  # any spelling
    assert set(only["datasets"]) == {"Bob"}
    with pytest.raises(InputError, match="no character has dataset.min_instances=50"):
        build_datasets([run], make_cfg(min_instances=50), workspace / "d4")


def test_runs_without_reviews_say_what_to_review(workspace, cfg):
    masks_only = workspace / "runs" / "masks-only"
    character_run(masks_only, [{"identity": "character_0", "identity_state": "unreviewed"}] * 2)
    with pytest.raises(InputError, match=r"masks-only: no reviewed identities .* identity projects"):
        build_datasets([masks_only], cfg, workspace / "out")
    nothing = workspace / "runs" / "nothing"
    character_run(nothing, [{"identity": "Alice", "review_state": None}])
    with pytest.raises(InputError, match=r"nothing: no reviewed instance masks: review the masks project"):
        build_datasets([nothing], cfg, workspace / "out")
    with pytest.raises(InputError, match="is not a curate run"):
        build_datasets([workspace], cfg, workspace / "out")


def test_two_runs_one_character_duplicates_removed_across_runs(workspace, cfg):
    shared = np.eye(16)[3]  # the same pose in both episodes: near-identical crops
    ep1, ep2 = workspace / "runs" / "ep1", workspace / "runs" / "ep2"
    character_run(ep1, [{"identity": "Alice", "clip": shared, "score": 0.95}]
                  + [{"identity": "Alice"} for _ in range(4)], video="ep1", seed=1)
    character_run(ep2, [{"identity": "alice ", "clip": shared, "score": 0.2}]
                  + [{"identity": "Alice"} for _ in range(4)], video="ep2", seed=2)
    result = build_datasets([ep1, ep2], cfg, workspace / "datasets", character="Alice")
    meta = json.loads(Path(result["datasets"]["Alice"]["metadata"]).read_text())
    assert {e["run"] for e in meta["images"]} == {"runs/ep1", "runs/ep2"} and meta["runs"] == ["runs/ep1", "runs/ep2"]
    duplicates = [r for r in meta["rejected"] if r["code"] == "duplicate"]
    assert [d["row_id"] for d in duplicates] == ["inst:ep2:0:0"]
    assert duplicates[0]["reason"].startswith("duplicate of inst:ep1:0:0 (cosine 1.0000")
    assert meta["counts"] == {"candidates": 10, "selected": 9, "train": 9, "val": 0, "rejected": 1}


def test_selection_to_target_with_view_quotas(workspace):
    cfg = make_cfg(target_size_min=4, target_size_max=10)
    specs = ([{"identity": "Alice", "view": "front", "shot": f"f{k % 4}"} for k in range(12)]
             + [{"identity": "Alice", "view": "three_quarter"} for _ in range(6)]
             + [{"identity": "Alice", "view": "profile"}]
             + [{"identity": "Alice", "view": "back"} for _ in range(3)])  # no quota of its own: unknown
    run = workspace / "runs" / "r"
    character_run(run, specs)
    meta = json.loads(Path(build_datasets([run], cfg, workspace / "d")["datasets"]["Alice"]["metadata"]).read_text())
    views = Counter(e["view"] for e in meta["images"])
    # shares 0.4/0.3/0.2/0.1 of 10: profile has 1 (all kept), its spare place goes to the view furthest below share
    assert len(meta["images"]) == 10 and views["profile"] == 1 and views["back"] == 1
    assert views["front"] == 4 + 1 and views["three_quarter"] == 3
    front_shots = Counter(e["shot_key"] for e in meta["images"] if e["view"] == "front")
    assert max(front_shots.values()) - min(front_shots.values()) <= 1 and len(front_shots) == 4  # spread over shots
    codes = Counter(r["code"] for r in meta["rejected"])
    assert codes == {"view_quota": 12} and meta["num_repeats"] == 1 and not meta["small"]
    assert meta["selection"]["max_similarity_from"] == "models.tiny.embedder.max_similarity"


def test_small_dataset_repeats_fill_the_epoch(workspace):
    cfg = make_cfg(target_size_min=20, val_fraction=0.0)
    run = workspace / "runs" / "r"
    character_run(run, [{"identity": "Alice"} for _ in range(6)])
    summary = build_datasets([run], cfg, workspace / "d")["datasets"]["Alice"]
    assert summary["small"] and summary["num_repeats"] == 4  # ceil(20 / 5 train... or 6)
    assert summary["num_repeats"] * summary["train"] >= 20
    assert "small" in Path(summary["report"]["report"]).read_text().lower()


def test_mask_round_trips_into_png_alpha_with_real_context(workspace, cfg):
    run = workspace / "runs" / "r"
    character_run(run, [{"identity": "Alice", "box": (20, 70, 40, 90)} for _ in range(4)], size=(96, 128))
    summary = build_datasets([run], cfg, workspace / "d")["datasets"]["Alice"]
    meta = json.loads(Path(summary["metadata"]).read_text())
    entry = next(e for e in meta["images"] if e["row_id"] == "inst:vid:0:0")
    image = Image.open(Path(summary["out_dir"]) / entry["image"])
    assert image.mode == "RGBA"
    # box 50x50 grown by 15 % per side (8 px), scaled towards 64² pixels: aspect kept, upscale ≤ max_upscale
    x0, y0, x1, y1 = entry["crop_box"]
    assert (x0, y0, x1, y1) == (32, 12, 98, 78) and entry["context"] == "frame"
    assert image.size == (round(66 * entry["scale"]),) * 2 and entry["scale"] <= cfg.dataset.max_upscale
    frame = Image.open(run / "frames" / "vid_0.png").convert("RGB").crop((x0, y0, x1, y1))
    crop_alpha = np.asarray(Image.open(Manifest.for_run(run).get("inst:vid:0:0")["crop_path"]).getchannel("A"))
    expected_alpha = np.zeros((66, 66), np.uint8)
    expected_alpha[8:58, 8:58] = crop_alpha
    expected = frame.copy()
    expected.putalpha(Image.fromarray(expected_alpha))
    expected = expected.resize(image.size, Image.Resampling.LANCZOS) if image.size != (66, 66) else expected
    got = np.asarray(image).astype(int)
    alpha = got[..., 3]
    assert np.abs(alpha - np.asarray(expected.getchannel("A")).astype(int)).max() <= 2
    assert alpha[0, 0] == 0 and alpha[image.height // 2, image.width // 2] == 255
    assert 0 < alpha[image.height // 2, round(8 * entry["scale"])] < 255 or entry["scale"] != 1.0  # soft edge kept
    # real background under alpha 0: the frame's own pixels, not a flat colour
    background = got[..., :3][alpha == 0]
    assert background.std() > 10

    neutral = make_cfg(background="neutral")
    summary = build_datasets([run], neutral, workspace / "n")["datasets"]["Alice"]
    image = np.asarray(Image.open(Path(summary["out_dir"]) / "images" / f"{entry['name']}.png")).astype(int)
    flat = image[..., :3][image[..., 3] == 0]
    assert (np.abs(flat - np.array(neutral.dataset.background_rgb)).max(axis=1) <= 1).all()


def test_crops_too_small_to_bucket_are_rejected(workspace, cfg):
    run = workspace / "runs" / "r"
    character_run(run, [{"identity": "Alice"}] * 3 + [{"identity": "Alice", "box": (10, 90, 60, 63)}])
    meta = json.loads(Path(build_datasets([run], cfg, workspace / "d")["datasets"]["Alice"]["metadata"]).read_text())
    small = [r for r in meta["rejected"] if r["row_id"] == "inst:vid:3:0"]
    assert small and small[0]["code"] == "low_quality" and "a side < 64 px" in small[0]["reason"]
    assert all(min(e["size"]) >= 64 for e in meta["images"]) and len(meta["images"]) == 3
    # the repeats follow what was written: 3 train images fill an epoch of target_size_min=200
    assert meta["num_repeats"] == 67
    kohya = workspace / "d" / "Alice" / "kohya"
    assert [p.name for p in kohya.iterdir()] == [f"67_{meta['class_tokens']}"]
    config = tomllib.loads((workspace / "d" / "Alice" / "dataset_config.toml").read_text())
    assert config["datasets"][0]["subsets"][0]["num_repeats"] == 67
    assert Path(config["datasets"][0]["subsets"][0]["image_dir"]) == kohya / f"67_{meta['class_tokens']}"


def test_missing_crop_is_rejected_and_the_rest_built(workspace, cfg):
    run = workspace / "runs" / "r"
    manifest = character_run(run, [{"identity": "Alice"} for _ in range(5)])
    Path(manifest.get("inst:vid:2:0")["crop_path"]).unlink()
    summary = build_datasets([run], cfg, workspace / "d")["datasets"]["Alice"]
    meta = json.loads(Path(summary["metadata"]).read_text())
    missing = [r for r in meta["rejected"] if r["code"] == "missing_file"]
    assert [r["row_id"] for r in missing] == ["inst:vid:2:0"] and "instance crop does not exist" in missing[0]["reason"]
    assert summary["images"] == 4


def test_never_overwrites_without_force(workspace, cfg):
    run = workspace / "runs" / "r"
    character_run(run, [{"identity": "Alice"} for _ in range(4)])
    build_datasets([run], cfg, workspace / "d")
    stale = workspace / "d" / "Alice" / "images" / "stale.png"
    stale.write_bytes(b"x")
    with pytest.raises(InputError, match="not empty .*--force"):
        build_datasets([run], cfg, workspace / "d")
    build_datasets([run], cfg, workspace / "d", force=True)
    assert not stale.exists() and len(list((workspace / "d" / "Alice" / "images").iterdir())) == 4


def test_low_quality_and_flagged_captions(workspace):
    cfg = make_cfg(min_quality=0.5)
    run = workspace / "runs" / "r"
    character_run(run, [{"identity": "Alice", "score": 0.9}] * 3
                  + [{"identity": "Alice", "score": 0.0, "box": (40, 44, 60, 64)}]  # tiny, low SAM2 score
                  + [{"identity": "Alice", "score": 0.6, "caption_flags": "low_clip_score"}]
                  + [{"identity": "Alice", "score": 0.6, "caption_flags": "too_long", "caption": "reviewed text"}])
    meta = json.loads(Path(build_datasets([run], cfg, workspace / "d")["datasets"]["Alice"]["metadata"]).read_text())
    codes = {r["row_id"]: r["code"] for r in meta["rejected"]}
    assert codes == {"inst:vid:3:0": "low_quality", "inst:vid:4:0": "caption_flagged"}
    reasons = {r["row_id"]: r["reason"] for r in meta["rejected"]}
    assert "caption flagged: low_clip_score" in reasons["inst:vid:4:0"]
    assert "inst:vid:5:0" in {e["row_id"] for e in meta["images"]}  # a reviewed caption's old flags do not count


def test_captions_prefer_reviewed_then_predicted_then_template(cfg):
    trigger = Trigger("zorvik", "rabbit", "config")
    assert build_caption({"caption": "cstlb character, hopping", "caption_pred": "x"}, cfg, trigger) \
        == "zorvik rabbit, hopping"
    assert build_caption({"caption_pred": "cstlb character, sitting"}, cfg, trigger) == "zorvik rabbit, sitting"
    assert build_caption({"caption": "Zorvik rabbit waving"}, cfg, trigger) == "Zorvik rabbit waving"
    assert build_caption({"view": "side view", "lighting": "rim light"}, cfg, trigger) \
        == "zorvik rabbit, 3d animated character, side view, rim light"


def test_long_captions_are_reported(workspace, cfg):
    run = workspace / "runs" / "r"
    long = "cstlb character, " + ", ".join(f"detail number {n}" for n in range(40))
    character_run(run, [{"identity": "Alice", "caption": long}] + [{"identity": "Alice"}] * 3)
    meta = json.loads(Path(build_datasets([run], cfg, workspace / "d")["datasets"]["Alice"]["metadata"]).read_text())
    assert meta["long_captions"] == ["inst_vid_0_0"]
    sources = Counter(e["caption_source"] for e in meta["images"])
    assert sources == {"reviewed": 1, "template": 3}


def test_triggers_config_first_else_stable_rare_tokens():
    cfg = load_config(profile="tiny", extra={"dataset": {"triggers": {"Alice": "alcx"},
                                                         "class_words": {"bob": "rabbit"}}})
    assert character_trigger(" alice", cfg) == Trigger("alcx", "character", "config")
    bob = character_trigger("Bob", cfg)
    assert bob.source == "derived" and bob.class_word == "rabbit" and bob.class_tokens == f"{bob.token} rabbit"
    assert bob.token == derive_trigger("bob") == derive_trigger(" BOB ")
    tokens = {derive_trigger(n) for n in ("Bob", "Alice", "Carol", "character_0", "character_1")}
    assert len(tokens) == 5
    for token in tokens:
        assert is_rare_token(token) and 1 <= count_clip_tokens(token) - 2 <= 2
    assert not is_rare_token("dog") and not is_rare_token("character")


def test_kohya_pair_passes_the_sd_scripts_schema(workspace, cfg):
    from kohya_schema import check_dataset_config, check_training_toml

    run = workspace / "runs" / "r"
    character_run(run, [{"identity": "Alice"} for _ in range(6)])
    summary = build_datasets([run], cfg, workspace / "d")["datasets"]["Alice"]
    training = tomllib.loads(Path(summary["training_toml"]).read_text())
    dataset = tomllib.loads(Path(summary["dataset_config"]).read_text())
    assert check_training_toml(training) == [] and check_dataset_config(dataset) == []
    flat = flatten_toml(training)
    assert flat["resolution"] == str(cfg.models.tiny.base_model.resolution)  # sd-scripts wants "N" / "W,H"
    assert Path(flat["dataset_config"]) == Path(summary["dataset_config"])
    assert Path(flat["output_dir"]).parent == Path(summary["out_dir"])
    assert flat["output_name"] == "castlab_alice"
    assert [d["resolution"] for d in dataset["datasets"]] == [cfg.models.tiny.base_model.resolution]
    subset = dataset["datasets"][0]["subsets"][0]
    assert subset["alpha_mask"] is True and subset["class_tokens"] == summary["class_tokens"]
    assert Path(subset["image_dir"]) == Path(summary["kohya_dir"]) and subset["num_repeats"] == summary["num_repeats"]
    assert dataset["general"]["flip_aug"] is False and dataset["general"]["color_aug"] is False
    train = sorted(p.stem for p in Path(subset["image_dir"]).glob("*.png"))
    assert train == sorted(p.stem for p in Path(subset["image_dir"]).glob("*.txt")) and len(train) == summary["train"]

    sdxl = load_config(profile="full", extra={"dataset": {"resolution": 1024, "min_instances": 1},
                                              "training": {"template": "configs/training/sdxl_lora.toml"}})
    pool = gather([run])
    out = assemble_character("Alice", pool.by_name["Alice"], workspace / "sdxl", sdxl, base_model="sdxl/base")
    training = tomllib.loads(Path(out["training_toml"]).read_text())
    dataset = tomllib.loads(Path(out["dataset_config"]).read_text())
    assert check_training_toml(training, sdxl=True) == [] and check_dataset_config(dataset, sdxl=True) == []
    assert flatten_toml(training)["resolution"] == "1024" and dataset["datasets"][0]["resolution"] == 1024
    assert dataset["datasets"][0]["bucket_reso_steps"] == 32
