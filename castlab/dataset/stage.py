"""The dataset stage: one dataset per reviewed character of one or more curate runs, or one dataset of a type
(background, style, lighting, pose, expression) from their prepared records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from castlab.config import Config
from castlab.dataset.assemble import assemble, assemble_character
from castlab.dataset.candidates import CharacterPool, gather
from castlab.errors import InputError
from castlab.layers import safe_name


def characters_to_build(pool: CharacterPool, cfg: Config, character: str | None = None) -> tuple[list[str], dict]:
    """(names to build, names skipped → why). With `character`: that one (InputError listing the known names
    when unknown); else every character with at least ``dataset.min_instances`` reviewed instances."""
    if character:
        return [pool.find(character)], {}
    minimum = int(cfg.dataset.min_instances)
    names = [n for n in pool.names() if len(pool.by_name[n]) >= minimum]
    skipped = {n: f"{len(pool.by_name[n])} reviewed instances < dataset.min_instances {minimum}"
               for n in pool.names() if n not in names}
    if not names:
        listing = ", ".join(f"{n} ({len(pool.by_name[n])})" for n in pool.names())
        raise InputError(", ".join(map(str, pool.runs)), f"no character has dataset.min_instances={minimum} "
                         f"reviewed instances (known: {listing}); pass --character NAME to build one anyway")
    return names, skipped


def dataset_folder(out_root: Path, name: str) -> Path:
    return Path(out_root) / safe_name(name)


def build_type(name: str, run_dirs: list[Path], out_dir: Path, cfg: Config, force: bool = False) -> dict[str, Any]:
    """The dataset of type `name` (background, style, lighting, pose, expression) from the runs' prepared records."""
    from castlab.typed.recipes import gather_typed, type_recipe

    candidates, rejected = gather_typed(run_dirs, name, cfg)
    if not candidates:
        reasons = sorted({r["code"] for r in rejected})
        raise InputError(", ".join(map(str, run_dirs)), f"no {name} candidate passed preparation "
                                                        f"({len(rejected)} rejected: {', '.join(reasons) or 'none'})")
    return assemble(type_recipe(name, cfg), candidates, out_dir, cfg, runs=run_dirs, force=force, rejected=rejected)


def run(
    run_dirs: list[Path] | Path, cfg: Config, out_root: Path, character: str | None = None, force: bool = False,
    dataset_type: str = "character",
) -> dict[str, Any]:
    """Build the datasets of `run_dirs` (manifests are only read) under ``out_root/<character>/``, or with
    `dataset_type` the one dataset of that type under ``out_root/<type>/``."""
    runs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(r) for r in run_dirs]
    if dataset_type != "character":
        built = build_type(dataset_type, runs, dataset_folder(out_root, dataset_type), cfg, force)
        return {"out_root": str(out_root), "datasets": {dataset_type: built}, "skipped": {}, "notes": []}
    pool = gather(runs)
    names, skipped = characters_to_build(pool, cfg, character)
    datasets = {name: assemble_character(name, pool.by_name[name], dataset_folder(out_root, name), cfg,
                                         runs=runs, force=force) for name in names}
    return {"out_root": str(out_root), "datasets": datasets, "skipped": skipped, "notes": pool.notes}
