from pathlib import Path

import pytest

from castlab.config import load_config
from castlab.errors import InputError
from castlab.layers import write_instance_layers
from castlab.workspace import Run, relative_to_workspace, resolve_in_workspace, write_text_atomic


def test_run_folder_records_resolved_config(workspace: Path):
    cfg = load_config()
    run = Run.create("curate", cfg)
    assert run.path.parent == workspace / "runs"
    assert "blur_threshold: 80.0" in (run.path / "config.yaml").read_text()


def test_media_root_refuses_escapes(workspace: Path):
    inside = workspace / "runs" / "x.jpg"
    assert relative_to_workspace(inside) == "runs/x.jpg"
    assert resolve_in_workspace("runs/x.jpg") == inside
    for bad in ("../secret.txt", "runs/../../etc/passwd", "/etc/passwd"):
        with pytest.raises(InputError, match="outside the media root"):
            resolve_in_workspace(bad)
    with pytest.raises(InputError, match="outside the workspace root"):
        relative_to_workspace(workspace.parent / "elsewhere.jpg")


def test_no_overwrite_without_force(tmp_path: Path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "first", force=False)
    with pytest.raises(InputError, match="--force"):
        write_text_atomic(target, "second", force=False)
    write_text_atomic(target, "second", force=True)
    assert target.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp files left behind


def test_instance_layers_match_the_mask(tmp_path: Path):
    import numpy as np
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[5:15, 10:30] = True
    out = write_instance_layers(image, mask, tmp_path, "inst:v:000001:0")
    assert out["bbox"] == [10, 5, 20, 10] and out["area"] == 200
    crop = np.asarray(Image.open(out["crop_path"]))
    assert crop.shape == (10, 20, 4) and (crop[..., 3] == 255).all()
    assert (crop[..., :3] == image[5:15, 10:30]).all()
    with pytest.raises(ValueError, match="does not match"):
        write_instance_layers(image, mask[:10], tmp_path, "x")
