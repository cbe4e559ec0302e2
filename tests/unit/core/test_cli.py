import subprocess
import sys
from pathlib import Path

import pytest

from castlab.config import PROJECT_ROOT, load_config
from flows.cli import build_parser, main


def test_every_flow_has_a_command():
    parser = build_parser()
    for argv in (["curate", "v.mp4", "--mode", "interval"], ["review-sync", "r"], ["dataset", "r", "--force"],
                 ["dataset", "ep1", "ep2", "--character", "Bob", "--out", "d"], ["export", "d", "--format", "hf"],
                 ["train", "t.toml"], ["evaluate", "a.safetensors", "b.safetensors"], ["demo"],
                 ["up", "--backend"], ["down"], ["status"], ["prepare", "r", "--type", "pose", "--no-push"],
                 ["dataset", "r", "--type", "background"], ["pipeline", "v.mp4", "--types", "style", "expression"],
                 ["generate", "--lora", "bo:0.8", "--lora", "style", "--prompt", "bo --d 3", "--quality", "draft"],
                 ["loras", "list"], ["loras", "set", "bo", "trigger=zk"]):
        args = parser.parse_args(argv)
        assert callable(args.func)


def test_the_cli_knows_every_dataset_type():
    from castlab.typed import TYPE_NAMES
    from castlab.typed.spec import TYPES

    assert TYPE_NAMES == tuple(TYPES)  # the cheap list (CLI, reviews) and the types themselves agree
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prepare", "r", "--type", "hats"])


def test_cli_reports_bad_input_without_traceback(workspace: Path, capsys: pytest.CaptureFixture[str]):
    code = main(["dataset", str(workspace / "missing-run"), "--profile", "tiny"])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing-run" in err and "Traceback" not in err


def test_prefect_home_stays_in_the_workspace(workspace: Path):
    code = (
        "import os; from castlab.config import load_config; from flows.runtime import configure_prefect;"
        "print(configure_prefect(load_config())); print(os.environ['PREFECT_HOME'])"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PREFECT_")}
    env["CASTLAB_WORKSPACE"] = str(workspace)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] == "ephemeral"
    assert Path(out[1]).is_relative_to(workspace)
    env["PREFECT_API_URL"] = "http://127.0.0.1:1/api"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[:2] == ["server", "http://127.0.0.1:1/api"]
    assert load_config().prefect.host == "127.0.0.1"
