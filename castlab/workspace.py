"""Workspace layout and run folders.

The workspace root (``CASTLAB_WORKSPACE``, default ``./workspace``) holds ``runs/`` (one folder per
flow run), ``stack/`` (Label Studio and Prefect data, tokens, logs) and is Label Studio's local-files
document root, so every image a task shows lives under it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from castlab.config import Config
from castlab.errors import InputError


def workspace_root() -> Path:
    root = Path(os.environ.get("CASTLAB_WORKSPACE", "workspace")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def stack_dir() -> Path:
    path = workspace_root() / "stack"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def folder_in_place(folder: Path, marker: str) -> Iterator[Path]:
    """Yield a temporary sibling of `folder` to fill; it is renamed to `folder` when the block succeeds. When another
    process put a complete `folder` (one holding `marker`) there first, theirs is kept; nothing half-built remains."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / marker).is_file():  # not a lost race with another process: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; it replaces `target` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files: give outputs the usual umask-based mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(target: Path, text: str, force: bool = True) -> Path:
    if target.exists() and not force:
        raise InputError(target, "already exists (pass --force to overwrite)")
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def write_json_atomic(target: Path, data: Any, force: bool = True) -> Path:
    return write_text_atomic(target, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", force)


def read_json(path: Path) -> Any:
    """The JSON value in `path`; InputError naming the file when it is not valid JSON (or not UTF-8)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InputError(path, f"is not valid JSON ({exc})") from exc


def read_jsonl(path: Path) -> list[Any]:
    """One JSON value per non-empty line of `path`; InputError naming the file and line of a bad one."""
    values = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                values.append(json.loads(line))
            except ValueError as exc:
                raise InputError(path, f"line {number} is not JSON ({exc})") from exc
    return values


def prepare_output_dir(out_dir: Path, outputs: tuple[str, ...], force: bool, what: str, again: str) -> None:
    """An empty `out_dir` (created); a non-empty one only with `force`, and then only the `outputs` castlab writes
    there are removed, nothing else. InputError: "<what> folder is not empty (pass --force to <again>)"."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise InputError(out_dir, f"{what} folder is not empty (pass --force to {again})")
        for name in outputs:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def short_hash(path: Path, length: int = 12) -> str:
    """The first `length` hex digits of the file's SHA-256 (AUTOMATIC1111's short hash of a model file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by the owner only (0600): credentials and secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def relative_to_workspace(path: Path) -> str:
    """POSIX path of `path` relative to the workspace root (what Label Studio's local files serve)."""
    root = workspace_root()
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError as exc:
        raise InputError(path, f"is outside the workspace root {root}") from exc


def resolve_in_workspace(rel: str) -> Path:
    """Inverse of :func:`relative_to_workspace`; refuses anything that escapes the root."""
    root = workspace_root()
    candidate = (root / rel).resolve()
    if candidate != root and root not in candidate.parents:
        raise InputError(rel, "points outside the media root")
    return candidate


_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Run:
    """One flow run's folder: files, ``config.yaml`` and (for curate) the manifest."""

    path: Path
    name: str
    config: Config

    @classmethod
    def create(cls, name: str, config: Config, root: Path | None = None) -> Run:
        runs = root or workspace_root() / config.workspace.runs_dir
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
        path = Path(runs) / f"{stamp}-{_SLUG.sub('_', name)}"
        path.mkdir(parents=True, exist_ok=False)
        run = cls(path=path, name=name, config=config)
        write_text_atomic(path / "config.yaml", config.to_yaml())  # every value with the file it came from
        return run

    @classmethod
    def open(cls, path: str | Path, config: Config) -> Run:
        p = Path(path)
        if not p.is_dir():
            raise InputError(p, "run folder does not exist")
        return cls(path=p.resolve(), name=p.name, config=config)

    def sub(self, *parts: str) -> Path:
        path = self.path.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

