import json
import os
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import yaml
from PIL import Image

from castlab.dataset.export import FORMATS, export_dataset, tomllib
from castlab.errors import InputError

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before `datasets` is imported (lazily, in the hf test)

TRIGGER, CLASS_WORD = "zorvik", "rabbit"
TOKENS = f"{TRIGGER} {CLASS_WORD}"
REPEATS = 3
# name, split, (w, h)
IMAGES = [("inst_a_0_0", "train", (24, 32)), ("inst_a_1_0", "train", (32, 20)), ("inst_b_0_0", "train", (16, 16)),
          ("inst_c_0_0", "val", (20, 28))]


def rgba(size: tuple[int, int], seed: int) -> np.ndarray:
    """Random RGB; alpha: 0 on the border, a soft ramp inside, 255 at the centre."""
    w, h = size
    px = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    alpha = ((xx * 37 + yy * 11 + seed) % 256).astype(np.uint8)
    alpha[:2], alpha[-2:], alpha[:, :2], alpha[:, -2:] = 0, 0, 0, 0
    alpha[h // 2, w // 2] = 255
    px[..., 3] = alpha
    return px


def caption(name: str) -> str:
    return f"{TOKENS}, {name.replace('_', ' ')}, front view"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A small dataset folder per the castlab dataset contract."""
    root = tmp_path / "dataset"
    kohya = root / "kohya" / f"{REPEATS}_{TOKENS}"
    for sub in ("images", "captions", kohya):
        (root / sub).mkdir(parents=True, exist_ok=True)
    entries = []
    for k, (name, split, size) in enumerate(IMAGES):
        Image.fromarray(rgba(size, k), "RGBA").save(root / "images" / f"{name}.png")
        (root / "captions" / f"{name}.txt").write_text(caption(name) + "\n", encoding="utf-8")
        if split == "train":
            os.link(root / "images" / f"{name}.png", kohya / f"{name}.png")
            os.link(root / "captions" / f"{name}.txt", kohya / f"{name}.txt")
        entries.append({"name": name, "image": f"images/{name}.png", "caption_file": f"captions/{name}.txt",
                        "caption": caption(name), "caption_tokens": 12, "caption_source": "reviewed", "split": split,
                        "row_id": f"inst:{k}", "run": "runs/x-curate", "shot_key": f"shot{k // 2}",
                        "view": "front", "quality": 0.5, "size": list(size), "crop_box": [0, 0, *size], "scale": 1.0})
    meta = {"format": "castlab-dataset/1", "profile": "tiny", "character": "Bunny", "trigger": TRIGGER,
            "class_word": CLASS_WORD, "class_tokens": TOKENS, "runs": ["runs/x-curate"], "resolution": 64,
            "background": "original", "num_repeats": REPEATS, "target_size": {"min": 10, "max": 20}, "small": True,
            "counts": {"candidates": 4, "selected": 4, "train": 3, "val": 1, "rejected": 0}, "images": entries,
            "rejected": [], "long_captions": []}
    (root / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    (root / "dataset_config.toml").write_text(tomli_w.dumps({
        "general": {"caption_extension": ".txt", "keep_tokens": 1},
        "datasets": [{"resolution": 64, "batch_size": 1, "subsets": [{
            "image_dir": str(kohya), "num_repeats": REPEATS, "class_tokens": TOKENS, "keep_tokens": 1,
            "alpha_mask": True, "caption_extension": ".txt"}]}],
    }), encoding="utf-8")
    (root / "training.toml").write_text(tomli_w.dumps({
        "model_arguments": {"pretrained_model_name_or_path": "some/base-model"},
        "additional_network_arguments": {"network_dim": 16, "network_alpha": 8},
        "optimizer_arguments": {"learning_rate": 1e-4},
        "dataset_arguments": {"dataset_config": str(root / "dataset_config.toml"), "resolution": 64},
        "training_arguments": {"output_dir": str(root / "checkpoints"), "max_train_steps": 100,
                               "train_batch_size": 1},
    }), encoding="utf-8")
    return root


def flatten_toml(toml: dict) -> dict:
    """sd-scripts' reading of a --config_file: top-level keys plus every section's keys."""
    flat = {}
    for key, value in toml.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def source_alpha(dataset: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(dataset / "images" / f"{name}.png"))[..., 3]


def names(split: str) -> list[str]:
    return sorted(n for n, s, _ in IMAGES if s == split)


def test_kohya_folder_and_tomls_point_into_the_export(dataset, tmp_path):
    out = tmp_path / "out"
    summary = export_dataset(dataset, out, "kohya")
    assert summary["format"] == "kohya" and summary["images"] == 3 and summary["other_files"] == []
    folder = out / f"{REPEATS}_{TOKENS}"
    assert sorted(p.stem for p in folder.glob("*.png")) == names("train")  # val image left out
    for name in names("train"):
        assert (folder / f"{name}.txt").read_text(encoding="utf-8") == caption(name) + "\n"
        assert os.path.samefile(folder / f"{name}.png", dataset / "images" / f"{name}.png")  # hard link
        assert np.array_equal(np.asarray(Image.open(folder / f"{name}.png"))[..., 3], source_alpha(dataset, name))
    assert str(folder / f"{names('train')[0]}.png") in summary["files"]

    dc = tomllib.loads((out / "dataset_config.toml").read_text(encoding="utf-8"))
    subset = dc["datasets"][0]["subsets"][0]
    assert Path(subset["image_dir"]) == folder.resolve() and Path(subset["image_dir"]).is_dir()
    assert subset["alpha_mask"] is True and subset["num_repeats"] == REPEATS
    training = flatten_toml(tomllib.loads((out / "training.toml").read_text(encoding="utf-8")))
    assert Path(training["dataset_config"]) == (out / "dataset_config.toml").resolve()
    assert Path(training["dataset_config"]).is_file()
    assert Path(training["output_dir"]) == (out / "checkpoints").resolve()
    assert training["pretrained_model_name_or_path"] == "some/base-model"
    assert str(dataset) not in (out / "training.toml").read_text() + (out / "dataset_config.toml").read_text()


def test_onetrainer_concepts_captions_and_masklabels(dataset, tmp_path):
    out = tmp_path / "out"
    summary = export_dataset(dataset, out, "onetrainer")
    assert summary["masks"] == 4 and Path(summary["config"]) == (out / "concepts.json").resolve()
    concepts = json.loads((out / "concepts.json").read_text(encoding="utf-8"))
    assert [c["type"] for c in concepts] == ["STANDARD", "VALIDATION"]
    for concept, split in zip(concepts, ("train", "val"), strict=True):
        assert concept["__version"] == 2 and concept["enabled"] is True
        assert concept["balancing"] == (float(REPEATS) if split == "train" else 1.0)
        assert concept["balancing_strategy"] == "REPEATS"
        assert concept["include_subdirectories"] is False
        assert concept["text"]["prompt_source"] == "sample"
        folder = Path(concept["path"])
        assert folder.is_dir() and folder.is_relative_to(out.resolve())
        images = sorted(p.stem for p in folder.glob("*.png") if not p.stem.endswith("-masklabel"))
        assert images == names(split)
        for name in images:
            assert (folder / f"{name}.txt").read_text(encoding="utf-8").strip() == caption(name)
            mask = Image.open(folder / f"{name}-masklabel.png")
            assert mask.mode == "L"
            assert np.array_equal(np.asarray(mask), source_alpha(dataset, name))


def test_aitoolkit_config_points_at_the_folders(dataset, tmp_path):
    out = tmp_path / "out"
    export_dataset(dataset, out, "aitoolkit")
    text = (out / "config.yaml").read_text(encoding="utf-8")
    job = yaml.safe_load(text)
    assert job["job"] == "extension"
    process = job["config"]["process"][0]
    assert process["type"] == "sd_trainer" and process["trigger_word"] == TRIGGER
    assert process["model"]["name_or_path"].startswith("FILL_ME") and "FILL_ME" in process["model"]["arch"]
    assert process["network"] == {"type": "lora", "linear": 16, "linear_alpha": 8}
    (ds,) = process["datasets"]
    assert ds["resolution"] == [64] and ds["caption_ext"] == "txt" and ds["num_repeats"] == REPEATS
    folder, masks = Path(ds["folder_path"]), Path(ds["mask_path"])
    assert folder.is_relative_to(out.resolve()) and masks.is_relative_to(out.resolve())
    assert not masks.is_relative_to(folder)  # ai-toolkit walks folder_path recursively
    assert sorted(p.stem for p in folder.glob("*.png")) == names("train")
    for name in names("train"):
        assert (folder / f"{name}.txt").read_text(encoding="utf-8").strip() == caption(name)
        assert np.array_equal(np.asarray(Image.open(masks / f"{name}.png").convert("L")), source_alpha(dataset, name))
    (item,) = process["train"]["validation_config"]["validation_items"]
    assert Path(item["image_path"]).is_file() and item["prompt"] == caption(names("val")[0])


def test_hf_imagefolder_loads_with_captions_rgba_and_masks(dataset, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    out = tmp_path / "out"
    export_dataset(dataset, out, "hf")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "hf-cache"))
    assert set(loaded) == {"train", "validation"}
    for split, hf_split in (("train", "train"), ("val", "validation")):
        rows = sorted(loaded[hf_split], key=lambda r: r["name"])
        assert [r["name"] for r in rows] == names(split)
        for row in rows:
            assert row["text"] == caption(row["name"])
            assert (row["trigger"], row["character"], row["view"]) == (TRIGGER, "Bunny", "front")
            assert row["caption_source"] == "reviewed" and row["shot_key"].startswith("shot")
            assert row["image"].mode == "RGBA"
            assert np.array_equal(np.asarray(row["image"])[..., 3], source_alpha(dataset, row["name"]))
            assert np.array_equal(np.asarray(row["mask"].convert("L")), source_alpha(dataset, row["name"]))


def test_refuses_non_empty_out_dir_unless_forced(dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        export_dataset(dataset, out, "kohya")
    export_dataset(dataset, out, "kohya", force=True)
    before = {p.name: p.read_bytes() for p in (dataset / "images").iterdir()}
    caption_before = (dataset / "captions" / "inst_a_0_0.txt").read_bytes()
    summary = export_dataset(dataset, out, "kohya", force=True)  # again, over its own hard links
    assert summary["images"] == 3 and (out / "notes.txt").read_text() == "mine"
    assert {p.name: p.read_bytes() for p in (dataset / "images").iterdir()} == before
    assert (dataset / "captions" / "inst_a_0_0.txt").read_bytes() == caption_before


def test_unknown_format_lists_the_known_ones(dataset, tmp_path):
    with pytest.raises(InputError) as err:
        export_dataset(dataset, tmp_path / "out", "diffusers")
    assert all(f in str(err.value) for f in FORMATS)
    assert not (tmp_path / "out").exists()


def test_missing_image_is_named(dataset, tmp_path):
    (dataset / "images" / "inst_b_0_0.png").unlink()
    with pytest.raises(InputError, match="inst_b_0_0.png"):
        export_dataset(dataset, tmp_path / "out", "hf")


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"trigger": "x"})])
def test_missing_or_invalid_metadata_is_named(dataset, tmp_path, content):
    meta = dataset / "metadata.json"
    if content is None:
        meta.unlink()
    else:
        meta.write_text(content)
    with pytest.raises(InputError, match="metadata.json"):
        export_dataset(dataset, tmp_path / "out", "onetrainer")


def test_refuses_paths_outside_the_dataset_and_exporting_into_it(dataset, tmp_path):
    with pytest.raises(InputError, match="is the dataset folder"):
        export_dataset(dataset, dataset, "hf", force=True)
    Image.new("RGBA", (8, 8)).save(tmp_path / "outside.png")
    meta = json.loads((dataset / "metadata.json").read_text())
    meta["images"][0]["image"] = "../outside.png"
    (dataset / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="outside the dataset folder"):
        export_dataset(dataset, tmp_path / "out", "kohya")
