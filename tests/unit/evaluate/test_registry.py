"""The LoRA registry <workspace>/loras.yaml: round trip, replacement, validation, corrupt files."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import yaml

from castlab.config import load_config
from castlab.errors import InputError
from castlab.evaluate.registry import REGISTRY_NAME, read_registry, register_lora


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny")


def entry(tmp: Path, name: str = "bunny", **changes) -> dict:
    lora = tmp / f"{name}-000400.safetensors"
    lora.write_bytes(b"not read by the registry")
    base = {"name": name, "character": "Bunny", "trigger": "cstlb", "class_word": "character",
            "base_model": "tiny-sd15-abc", "arch": "sd15", "file": str(lora),
            "metrics": {"identity": {"mean": 0.4, "low": 0.3, "high": 0.5}, "prompt_following": 0.27,
                        "arcface": None},
            "chosen_by": "castlab", "evaluation": str(tmp / "evaluation"), "checkpoint": lora.stem, "step": 400}
    return {**base, **changes}


def test_round_trip(cfg, workspace: Path):
    assert read_registry(cfg) == {}
    path = register_lora(entry(workspace), cfg)
    assert path == workspace / REGISTRY_NAME
    got = read_registry(cfg)["bunny"]
    assert got["metrics"] == {"identity": 0.4, "prompt_following": 0.27, "arcface": None}  # aggregates → means
    assert got["profile"] == "tiny" and got["chosen_by"] == "castlab" and got["step"] == 400
    assert datetime.fromisoformat(got["updated"]).tzinfo is not None
    raw = yaml.safe_load(path.read_text())
    assert [e["name"] for e in raw["loras"]] == ["bunny"]
    assert not list(workspace.glob(f".{REGISTRY_NAME}.*.yaml"))  # no temporary left behind


def test_one_entry_per_name_replaced_whole(cfg, workspace: Path):
    register_lora(entry(workspace, "squirrel"), cfg)
    register_lora(entry(workspace), cfg)
    register_lora(entry(workspace, chosen_by="reviewers", metrics={"identity": 0.5}, step=None,
                        agreement={"kendall_tau": 1.0, "top1_hit": True}), cfg)
    registry = read_registry(cfg)
    assert list(registry) == ["bunny", "squirrel"]
    bunny = registry["bunny"]
    assert bunny["chosen_by"] == "reviewers" and bunny["metrics"] == {"identity": 0.5}  # nothing stale kept
    assert bunny["agreement"]["top1_hit"] is True and bunny["step"] is None
    assert (workspace / REGISTRY_NAME).read_text().count("name: bunny") == 1


@pytest.mark.parametrize("changes, match", [
    ({"arch": "sd3"}, "arch must be one of"),
    ({"chosen_by": "me"}, "chosen_by"),
    ({"trigger": " "}, "trigger must be a non-empty string"),
    ({"file": "relative.safetensors"}, "absolute path"),
    ({"metrics": {"identity": "high"}}, "not a number"),
    ({"colour": "blue"}, "unknown fields colour"),
    ({"character": None}, "missing character"),
])
def test_bad_entries_are_refused(cfg, workspace: Path, changes, match):
    with pytest.raises(ValueError, match=match):
        register_lora(entry(workspace, **changes), cfg)
    assert not (workspace / REGISTRY_NAME).exists()


def test_missing_lora_file_names_the_file(cfg, workspace: Path):
    missing = workspace / "gone.safetensors"
    with pytest.raises(InputError, match="gone.safetensors.*does not exist"):
        register_lora(entry(workspace, file=str(missing)), cfg)


@pytest.mark.parametrize("text, match", [
    ("loras: [name: {", "not a readable LoRA registry"),
    ("- just\n- a list\n", "expected a mapping with a 'loras' list"),
    ("loras:\n- name: x\n", "loras\\[0\\]: .*missing"),
    ("loras:\n- 3\n", "loras\\[0\\] is not a mapping"),
])
def test_corrupt_registry_names_the_file(cfg, workspace: Path, text, match):
    (workspace / REGISTRY_NAME).write_text(text)
    with pytest.raises(InputError, match=match) as info:
        read_registry(cfg)
    assert info.value.path == str(workspace / REGISTRY_NAME)
    with pytest.raises(InputError):  # never silently overwritten
        register_lora(entry(workspace), cfg)
    assert (workspace / REGISTRY_NAME).read_text() == text


def test_duplicate_names_in_the_file_are_corrupt(cfg, workspace: Path):
    register_lora(entry(workspace), cfg)
    path = workspace / REGISTRY_NAME
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({"loras": data["loras"] * 2}))
    with pytest.raises(InputError, match="appears twice"):
        read_registry(cfg)
