"""Headless Chromium for tests that open a page as a user would (Debian's ``chromium``; .ci/run installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def chromium() -> str:
    """The browser's executable; skips the test without one, fails it when CASTLAB_REQUIRE_CHROMIUM=1."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("CASTLAB_REQUIRE_CHROMIUM") == "1":
            pytest.fail("CASTLAB_REQUIRE_CHROMIUM=1 but no chromium is installed (Debian: apt-get install chromium)")
        pytest.skip("no chromium here (Debian: apt-get install chromium; .ci/run installs it)")
    return found


def _run(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           *args, page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def rendered_dom(page: Path, profile: Path) -> str:
    """The DOM of `page` after the browser has loaded it (`profile`: a throwaway user-data dir)."""
    return _run(page, profile, "--dump-dom").stdout


def screenshot(page: Path, profile: Path, out: Path, size: str = "1000,1400") -> Path:
    """A PNG of `page` as the browser draws it."""
    _run(page, profile, f"--screenshot={out}", f"--window-size={size}")
    return out
