"""The documentation site (docs/, mkdocs.yml) builds with `mkdocs build --strict`: a broken link or anchor, a page
missing from the nav, or a nav entry without its page fails the build, so it fails this test. The README's links
into docs/ point at pages that exist. mkdocs is in the dev extra: without it the build fails here, it is not skipped."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from castlab.config import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs"
CONFIG = PROJECT_ROOT / "mkdocs.yml"


def build(config: Path, site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def copy_project(tmp_path: Path) -> Path:
    """mkdocs.yml and docs/ in a folder of their own, to break on purpose."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy2(CONFIG, root / "mkdocs.yml")
    shutil.copytree(DOCS, root / "docs")
    return root


def test_the_docs_build_strict(tmp_path):
    done = build(CONFIG, tmp_path / "site", PROJECT_ROOT)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()


@pytest.mark.parametrize("broken", ["[gone](no-such-page.md)", "[gone](frames.md#no-such-section)"])
def test_a_broken_link_fails_the_build(tmp_path, broken):
    root = copy_project(tmp_path)
    page = root / "docs" / "quickstart.md"
    page.write_text(page.read_text(encoding="utf-8") + f"\nSee {broken}.\n", encoding="utf-8")
    done = build(root / "mkdocs.yml", tmp_path / "site", root)
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"a broken link {broken} built:\n{output}"
    assert "quickstart.md" in output, output


def test_a_page_left_out_of_the_nav_fails_the_build(tmp_path):
    root = copy_project(tmp_path)
    (root / "docs" / "orphan.md").write_text("# Orphan\n\nIn no nav.\n", encoding="utf-8")
    done = build(root / "mkdocs.yml", tmp_path / "site", root)
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"a page missing from the nav built:\n{output}"
    assert "orphan.md" in output, output


def test_every_page_is_in_the_nav():
    nav = set(re.findall(r"^\s*- [^:\n]+: (\S+\.md)\s*$", CONFIG.read_text(encoding="utf-8"), re.MULTILINE))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == nav, f"only in docs/: {sorted(pages - nav)}; only in the nav: {sorted(nav - pages)}"


def test_the_readme_links_into_docs_exist():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)\s]*)?\)", readme)
    assert links, "the README links into docs/"
    missing = sorted({link for link in links if not (PROJECT_ROOT / link).is_file()})
    assert not missing, f"README links to missing pages: {missing}"
