"""The lock files: exact pins that satisfy pyproject.toml, and the venv the tests run in was installed from them."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from castlab.config import PROJECT_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOCK = PROJECT_ROOT / "requirements.lock"


def pins(path: Path) -> dict[str, Version]:
    found = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and name and version, f"{path.name}:{number}: not an exact pin: {line!r}"
        found[canonicalize_name(name)] = Version(version)
    return found


def test_the_locks_pin_every_dependency_within_pyproject():
    locked = pins(LOCK)
    assert pins(PROJECT_ROOT / "requirements-labelstudio.lock")[canonicalize_name("label-studio")] == Version("1.23.2")
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"requirements.lock misses {requirement.name} (run make lock)"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock pins {requirement.name}=={locked[name]}, outside pyproject's {requirement} "
            "(run make lock)")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the lock is for Linux x86_64; elsewhere it is not used")
def test_this_venv_was_installed_from_the_lock():
    if Path(sys.prefix).resolve() != (PROJECT_ROOT / ".venv").resolve():
        pytest.skip("not running in the project's .venv (scripts/setup_venv.sh installs it from the lock)")
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()}
    differ = {name: (str(version), str(installed.get(name))) for name, version in pins(LOCK).items()
              if installed.get(name) != version}
    assert not differ, f"installed versions differ from requirements.lock (locked, installed): {differ}"
