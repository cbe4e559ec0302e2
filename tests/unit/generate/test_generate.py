"""castlab generate on the tiny SD1.5: registered LoRAs composed at their weights (0 = without it), triggers put in,
presets and prompt-file options, parameters that round-trip from the PNG, clear errors, and the consistency check
flagging an off-model image and trying the next seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lora_checkpoints import character_datasets, random_lora
from PIL import Image

from castlab.config import load_config
from castlab.errors import InputError
from castlab.evaluate.registry import register_lora
from castlab.generate.pngmeta import read_parameters
from castlab.generate.prompts import parse_line, read_prompt_file
from castlab.generate.stage import generate


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny", extra={
        "evaluation": {"identity": {"region": "image"}},
        "generation": {"batch_size": 2, "presets": {"draft": {"steps": 2, "sampler": "euler_a",
                                                              "guidance_scale": 5.0, "size_scale": 1.0}},
                       "preset": "draft", "consistency": {"threshold": 0.65, "retries": 2}}})


@pytest.fixture(scope="module")
def loras(models_workspace, cfg, tmp_path_factory):
    """Two registered LoRAs on the tiny base: a character (with its dataset) and a style."""
    from castlab.models.diffusion import base_model_source, load_base_pipeline

    pipe, version = load_base_pipeline(cfg)
    root = tmp_path_factory.mktemp("loras")
    hero = character_datasets(root / "datasets")
    for name, seed, kind in (("castlab_zorvik", 1, "character"), ("castlab_glossy", 2, "style")):
        path = random_lora(pipe, root / f"{name}.safetensors", hero, seed=seed, steps=10, scale=0.5)
        register_lora({"name": name, "character": "Zorvik" if kind == "character" else "style",
                       "trigger": "zorvik" if kind == "character" else "glosk",
                       "class_word": "disc" if kind == "character" else "style", "base_model": version,
                       "arch": "sd15", "file": str(path), "metrics": {}, "chosen_by": "castlab",
                       "evaluation": str(root), "type": kind, "dataset": str(hero),
                       "base_model_source": base_model_source(cfg)}, cfg)
    return root


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32)


def test_weights_compose_and_zero_means_without(loras, cfg, tmp_path):
    line = [parse_line("a disc on a table --d 5")]
    runs = {}
    for label, chosen in (("none", []), ("zero", [("castlab_zorvik", 0.0), ("castlab_glossy", 0.0)]),
                          ("hero", [("castlab_zorvik", 1.0)]), ("both", [("castlab_zorvik", 1.0),
                                                                       ("castlab_glossy", 1.0)])):
        report = generate(line, chosen, tmp_path / label, cfg, check=False)
        runs[label] = pixels(Path(report["out_dir"]) / report["images"][0]["file"])
    assert np.abs(runs["none"] - runs["zero"]).max() == 0  # weight 0 = without the LoRA
    assert np.abs(runs["hero"] - runs["none"]).mean() > 1.0  # a LoRA at 1 changes the image ...
    assert np.abs(runs["both"] - runs["hero"]).mean() > 1.0  # ... and a second one on top changes it again


def test_parameters_round_trip_and_triggers(loras, cfg, tmp_path):
    lines, bad = read_prompt_file(write(tmp_path / "prompts.txt", [
        "# a comment", "", "zorvik disc jumping --n blurry --d 11 --s 3 --l 4.5 --ss ddim --w 72 --h 64",
        "a disc in the rain", "broken line --q 3"]))
    assert [b.problem for b in bad] == ["unknown option --q (known: --n, --w, --h, --d, --s, --l, --ss)"]
    report = generate(lines, [("castlab_zorvik", 0.8), ("castlab_glossy", 0.5)], tmp_path / "out", cfg,
                      bad_lines=bad, images=2, seed=100, check=False)
    assert report["counts"]["images"] == 4 and report["bad_lines"][0]["source"].endswith("prompts.txt:5")
    first, _, third, fourth = report["images"]
    params = read_parameters(Path(report["out_dir"]) / first["file"])
    assert params["prompt"] == "glosk style, zorvik disc jumping <lora:castlab_zorvik:0.8> <lora:castlab_glossy:0.5>"
    assert params["negative_prompt"] == "blurry"
    assert (params["Steps"], params["Sampler"], params["CFG scale"], params["Seed"], params["Size"]) == \
        ("3", "DDIM", "4.5", "11", "72x64")  # the line's options; its trigger was there, the style's put in front
    assert params["Lora hashes"] == ", ".join(f"{lo['name']}: {lo['file_hash']}" for lo in report["loras"])
    assert Image.open(Path(report["out_dir"]) / first["file"]).size == (72, 64)
    assert third["job"]["prompt"] == "zorvik disc, glosk style, a disc in the rain"
    assert (third["job"]["seed"], fourth["job"]["seed"]) == (102, 103)  # seed, seed + 1, ... over the batch
    assert third["job"]["steps"] == 2 and third["job"]["sampler"] == "euler_a"  # the preset
    assert (Path(report["out_dir"]) / "contact_sheet.png").is_file()
    assert json.loads((Path(report["out_dir"]) / "generation.json").read_text())["counts"]["images"] == 4


class EvenSeedsOffModel:
    """A consistency check that calls every image made with an even seed off-model (known truth)."""

    threshold = 0.65

    def __init__(self, seeds: list[int]) -> None:
        self.seeds = seeds
        self.pending: list[int] = []

    def scores(self, images):
        seeds, self.pending = self.pending[: len(images)], self.pending[len(images):]
        return [{"castlab_zorvik": 0.2 if s % 2 == 0 else 0.9} for s in seeds]

    def passes(self, scores):
        return all(v >= self.threshold for v in scores.values())


def test_off_model_images_are_flagged_and_made_again(loras, cfg, tmp_path, monkeypatch):
    from castlab.generate import stage

    check = EvenSeedsOffModel([])
    make = stage.Generator.make

    def recording(self, jobs):
        check.pending += [j.seed for j in jobs]
        return make(self, jobs)

    monkeypatch.setattr(stage.Generator, "make", recording)
    monkeypatch.setattr("castlab.generate.consistency.ConsistencyCheck.for_loras", lambda *a, **k: check)
    report = generate([parse_line("zorvik disc")], [("castlab_zorvik", 1.0)], tmp_path / "out", cfg, images=3,
                      seed=10)
    by_index = {r["index"]: r for r in report["images"]}
    assert [t["seed"] for t in by_index[0]["tries"]] == [10, 13]  # off-model at 10: the next free seed, 13, passes
    assert by_index[1]["passed_first_time"] and by_index[1]["tries"][0]["seed"] == 11
    assert [t["seed"] for t in by_index[2]["tries"]] == [12, 15]
    assert report["counts"] == {"prompts": 1, "images": 3, "passed_first_time": 1, "passed": 3, "flagged": 0,
                                "tries": 5}
    assert sorted(p.name for p in (Path(report["out_dir"]) / "rejected").iterdir()) == ["0000_s10.png",
                                                                                       "0002_s12.png"]


def test_the_real_check_flags_and_gives_up_after_the_retries(loras, cfg, tmp_path):
    strict = cfg.with_overrides({"generation": {"consistency": {"threshold": 1.0, "retries": 1}}})
    report = generate([parse_line("zorvik disc")], [("castlab_zorvik", 1.0)], tmp_path / "strict", strict)
    (record,) = report["images"]
    assert not record["passed"] and len(record["tries"]) == 2 and report["counts"]["flagged"] == 1
    assert 0.0 <= record["scores"]["castlab_zorvik"] < 1.0  # the DINOv2 similarity to the hero's crops
    lenient = cfg.with_overrides({"generation": {"consistency": {"threshold": 0.0}}})
    report = generate([parse_line("zorvik disc")], [("castlab_zorvik", 1.0)], tmp_path / "lenient", lenient)
    assert report["counts"]["passed_first_time"] == 1
    style_only = generate([parse_line("a disc")], [("castlab_glossy", 1.0)], tmp_path / "style", strict)
    assert style_only["consistency"] is None  # no character LoRA: nothing to check against


def test_bad_input_is_named(loras, cfg, tmp_path):
    with pytest.raises(InputError, match="castlab_nobody: is not a registered LoRA; known: castlab_glossy, "
                                         "castlab_zorvik"):
        generate([parse_line("x")], [("castlab_nobody", 1.0)], tmp_path / "a", cfg)
    assert not (tmp_path / "a").exists()  # nothing loaded or written first
    with pytest.raises(InputError, match="is not a generation preset; known: draft"):
        generate([parse_line("x")], [], tmp_path / "b", cfg, preset="ultra")
    with pytest.raises(ValueError, match=r"--d needs a int, got 'soon'"):
        parse_line("x --d soon")
    from castlab.evaluate.registry import edit_lora, read_registry

    twin = {**read_registry()["castlab_glossy"], "name": "castlab_twin", "trigger": "zorvik"}
    register_lora(twin, cfg)
    try:
        with pytest.raises(InputError, match="castlab_twin: has the trigger 'zorvik' of 'castlab_zorvik'"):
            generate([parse_line("x")], [("castlab_zorvik", 1.0), ("castlab_twin", 0.5)], tmp_path / "d", cfg)
    finally:
        edit_lora("castlab_twin", remove=True)
    generate([parse_line("x")], [], tmp_path / "c", cfg, check=False)
    with pytest.raises(InputError, match="not empty"):
        generate([parse_line("x")], [], tmp_path / "c", cfg, check=False)


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_registry_from_the_cli(loras, cfg, capsys):
    from flows.cli import main

    assert main(["loras", "list"]) == 0
    listed = capsys.readouterr().out
    assert "castlab_zorvik" in listed and "castlab_glossy" in listed and listed.count(" ok") == 2
    assert main(["loras", "set", "castlab_glossy", "trigger=glozz"]) == 0
    assert json.loads(capsys.readouterr().out)["trigger"] == "glozz"
    assert main(["loras", "set", "castlab_glossy", "file=/elsewhere.safetensors"]) == 2
    assert "file cannot be edited" in capsys.readouterr().err
    file = Path(json.loads((main(["loras", "show", "castlab_glossy"]), capsys.readouterr().out)[1])["file"])
    moved = file.with_suffix(".moved")
    file.rename(moved)
    try:
        assert main(["loras", "check"]) == 2
        assert f"castlab_glossy: LoRA file {file} is missing" in capsys.readouterr().err
        main(["loras", "list"])
        assert "is missing" in capsys.readouterr().out  # reported, never silently used
    finally:
        moved.rename(file)
    assert main(["loras", "set", "castlab_glossy", "trigger=glosk"]) == 0
    assert main(["loras", "check"]) == 0


def test_sdxl_base_with_an_sdxl_lora_and_a_family_mismatch(loras, cfg, tmp_path):
    from castlab.models.diffusion import base_model_source, load_base_pipeline

    source = base_model_source(cfg, "sdxl-tiny")
    pipe, version = load_base_pipeline(cfg, source=source)
    path = random_lora(pipe, tmp_path / "castlab_xl.safetensors", loras, seed=3, steps=5, scale=0.5)
    register_lora({"name": "castlab_xl", "character": "style", "trigger": "xlsty", "class_word": "style",
                   "base_model": version, "arch": "sdxl", "file": str(path), "metrics": {}, "chosen_by": "castlab",
                   "evaluation": str(tmp_path), "type": "style", "base_model_source": source}, cfg)
    line = [parse_line("a disc --d 4")]
    plain = generate(line, [], tmp_path / "plain", cfg, base=source, check=False)
    styled = generate(line, [("castlab_xl", 1.0)], tmp_path / "xl", cfg)  # the base comes from the LoRA's entry
    assert styled["base_model"] == version and styled["images"][0]["job"]["prompt"] == "xlsty style, a disc"
    a, b = (pixels(Path(r["out_dir"]) / r["images"][0]["file"]) for r in (plain, styled))
    assert np.abs(a - b).mean() > 1.0
    with pytest.raises(InputError, match="was trained for sd15, the base model is sdxl"):
        generate(line, [("castlab_zorvik", 1.0)], tmp_path / "mix", cfg, base=source)
    from castlab.evaluate.registry import edit_lora

    edit_lora("castlab_xl", remove=True)  # the module's registry as the other tests know it


@pytest.mark.parametrize("kind", ["canny", "depth", "pose"])
def test_controlnet_conditions_and_scale_zero_is_none(kind, loras, cfg, tmp_path):
    from castlab.generate.control import parse_control

    reference = tmp_path / "reference.png"
    yy, xx = np.mgrid[:96, :96]
    ring = (np.abs(np.hypot(xx - 48, yy - 48) - 30) < 4)[..., None]
    Image.fromarray(np.where(ring, (230, 40, 40), (120, 120, 120)).astype(np.uint8)).save(reference)
    line = [parse_line("zorvik disc --d 8")]
    made = {}
    for label, scale in (("none", None), ("zero", 0.0), ("full", 1.0)):
        control = None if scale is None else parse_control(f"{kind}={reference}", scale)
        report = generate(line, [("castlab_zorvik", 1.0)], tmp_path / label, cfg, check=False, control=control)
        made[label] = pixels(Path(report["out_dir"]) / report["images"][0]["file"])
        if control is not None:
            assert report["control"]["model"].startswith(f"tiny-controlnet-{kind}-sd15")
            params = read_parameters(Path(report["out_dir"]) / report["images"][0]["file"])
            assert params["ControlNet"].startswith(f"{kind} reference.png scale {scale:g}")
    assert np.abs(made["zero"] - made["none"]).max() <= 1.0  # scale 0: as if there were no ControlNet
    assert np.abs(made["full"] - made["none"]).mean() > 1.0  # the condition changes the image


def test_pose_skeleton_images_are_used_as_they_are(cfg, tmp_path):
    from castlab.generate.control import Control, condition, is_skeleton
    from castlab.pose.skeleton import draw_skeleton

    keypoints = np.zeros((17, 3), np.float32)
    keypoints[:, :2] = np.stack([np.linspace(20, 60, 17), np.linspace(10, 90, 17)], axis=1)
    keypoints[:, 2] = 1.0
    skeleton = Image.fromarray(draw_skeleton(keypoints, (80, 100), 0.3))
    skeleton.save(tmp_path / "skeleton.png")
    assert is_skeleton(skeleton) and not is_skeleton(Image.new("RGB", (80, 100), (120, 120, 120)))
    control = Control("pose", tmp_path / "skeleton.png", 1.0)
    made = condition(control, (80, 100), cfg, {})
    assert control.how == "skeleton image" and np.array_equal(np.asarray(made), np.asarray(skeleton))


def test_a_controlnet_of_the_other_family_is_refused(loras, cfg):
    from castlab.models.controlnet import check_controlnet, load_controlnet
    from castlab.models.diffusion import base_model_source, load_base_pipeline

    sd15, _ = load_base_pipeline(cfg)
    sdxl, _ = load_base_pipeline(cfg, source=base_model_source(cfg, "sdxl-tiny"))
    model, _ = load_controlnet(cfg, "canny", sd15)
    with pytest.raises(InputError, match="is a ControlNet for another base family .* the base model is sdxl"):
        check_controlnet(model, sdxl, "sd15-canny")
    with pytest.raises(InputError, match="is not a ControlNet kind"):
        load_controlnet(cfg, "normal", sd15)


def test_sdxl_controlnet(cfg, tmp_path, models_workspace):
    from castlab.generate.control import parse_control
    from castlab.models.diffusion import base_model_source

    source = base_model_source(cfg, "sdxl-tiny")
    reference = tmp_path / "edges.png"
    Image.fromarray(np.kron(np.eye(4, dtype=np.uint8) * 255, np.ones((24, 24), np.uint8))).save(reference)
    line = [parse_line("a disc --d 2")]
    plain = generate(line, [], tmp_path / "plain", cfg, base=source, check=False)
    canny = generate(line, [], tmp_path / "canny", cfg, base=source, check=False,
                     control=parse_control(f"canny={reference}", 1.0))
    assert canny["control"]["model"].startswith("tiny-controlnet-canny-sdxl")
    a, b = (pixels(Path(r["out_dir"]) / r["images"][0]["file"]) for r in (plain, canny))
    assert np.abs(a - b).mean() > 1.0
