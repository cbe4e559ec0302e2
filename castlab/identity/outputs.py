"""The review folders and pictures of an identity clustering (:func:`castlab.identity.cluster.cluster_embeddings`).

:func:`write_cluster_outputs` writes ``character_<k>/`` and ``noise/`` with each row's crop (hard link, else
copy), ``cluster_report.json``, ``umap_scatter.png`` (the 2-D embedding coloured by cluster) and
``contact_sheets/character_<k>.png`` (plus ``contact_sheets/noise.png``): the most confident members first.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from castlab.errors import InputError
from castlab.identity.cluster import NOISE, ClusterResult
from castlab.layers import safe_name
from castlab.pictures import Grid, font, palette_colour, save_png, thumbnail, tiny_stamp
from castlab.workspace import write_json_atomic

REPORT = "cluster_report.json"
SCATTER = "umap_scatter.png"
SHEETS = "contact_sheets"
NOISE_DIR = "noise"
SCATTER_SIZE = (960, 720)          # umap_scatter.png: plot area + legend column
SHEET_COLUMNS, SHEET_MAX, SHEET_TILE = 8, 48, 112  # contact sheets: 8 columns, the 48 most confident members
_CHARACTER_DIR = re.compile(r"character_\d+")


def _unique_names(rows: list[dict[str, Any]]) -> list[str]:
    names, used = [], set()
    for i, row in enumerate(rows):
        row_id = str(row.get("row_id") or f"row-{i}")
        name = safe_name(row_id)
        if name in used:
            name = f"{name}-{hashlib.sha1(row_id.encode()).hexdigest()[:8]}"
        used.add(name)
        names.append(name)
    return names


def _profile_of(rows: list[dict[str, Any]], profile: str | None) -> str | None:
    if profile:
        return profile
    for row in rows:
        if str(row.get("profile") or "") == "tiny" or str(row.get("model_version") or "").startswith("tiny-"):
            return "tiny"
    return next((str(r["profile"]) for r in rows if r.get("profile")), None)


def _existing_outputs(out_dir: Path) -> list[Path]:
    if not out_dir.is_dir():
        return []
    fixed = [out_dir / REPORT, out_dir / SCATTER, out_dir / SHEETS, out_dir / NOISE_DIR]
    return [p for p in fixed if p.exists()] + sorted(
        p for p in out_dir.iterdir() if _CHARACTER_DIR.fullmatch(p.name)
    )


def _place(src: Path, dst: Path) -> str:
    """Hard-link `src` to `dst`, else copy; returns "link" or "copy"."""
    try:
        os.link(src, dst)
        return "link"
    except OSError:
        shutil.copy2(src, dst)
        return "copy"


def write_cluster_outputs(
    out_dir: Path,
    rows: list[dict[str, Any]],
    result: ClusterResult,
    crop_key: str = "crop_path",
    *,
    force: bool = False,
    profile: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the review folders of `result` (rows aligned with its labels) into `out_dir`; returns the report.

    Rows without an existing crop file are listed under ``missing_crops`` and still counted. Existing
    outputs raise InputError unless `force`, which removes the previous ``character_*``, ``noise`` and
    ``contact_sheets`` folders first (nothing else in `out_dir` is touched).
    """
    out_dir = Path(out_dir)
    if len(rows) != len(result.labels):
        raise InputError(out_dir, f"{len(rows)} rows but {len(result.labels)} cluster labels")
    existing = _existing_outputs(out_dir)
    if existing and not force:
        raise InputError(existing[0], "already exists (pass --force to overwrite)")
    for path in existing:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.name != REPORT and path.name != SCATTER:  # those two are replaced atomically
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)

    names = _unique_names(rows)
    ids = [str(row.get("row_id") or f"row-{i}") for i, row in enumerate(rows)]
    folders = [f"character_{k}" for k in range(result.n_clusters)]
    for folder in [*folders, NOISE_DIR]:
        (out_dir / folder).mkdir()
    placed: dict[int, Path] = {}
    missing: list[str] = []
    how: dict[str, int] = {"link": 0, "copy": 0}
    for i in tqdm(range(len(rows)), desc="cluster folders", unit="crop", disable=not progress, leave=False):
        value = rows[i].get(crop_key)
        src = Path(str(value)) if isinstance(value, str | os.PathLike) and str(value) else None
        if src is None or not src.is_file():
            missing.append(ids[i])
            continue
        label = int(result.labels[i])
        dst = out_dir / (folders[label] if label >= 0 else NOISE_DIR) / f"{names[i]}{src.suffix}"
        how[_place(src, dst)] += 1
        placed[i] = dst

    order = _confident_first(result)
    stamp = tiny_stamp(_profile_of(rows, profile))
    clusters = []
    for k, folder in enumerate(folders):
        members = order[k]
        sheet = f"{SHEETS}/{folder}.png"
        save_png(contact_sheet(f"{folder}: {len(members)} members{stamp}", members, placed, result, ids),
                 out_dir / sheet)
        clusters.append({
            "id": k, "folder": folder, "size": result.sizes[k],
            "persistence": None if result.persistence[k] is None else round(float(result.persistence[k]), 4),
            "mean_probability": round(float(result.probabilities[members].mean()), 4),
            "merged_from": result.merged_from[k] if k < len(result.merged_from) else [k],
            "contact_sheet": sheet, "members": [ids[i] for i in members],
        })
    noise_members = [int(i) for i in np.flatnonzero(result.labels == NOISE)]
    files = {"report": REPORT, "scatter": SCATTER, "contact_sheets": [c["contact_sheet"] for c in clusters]}
    if noise_members:
        files["noise_sheet"] = f"{SHEETS}/noise.png"
        save_png(contact_sheet(f"noise: {len(noise_members)} points{stamp}", noise_members, placed, result, ids),
                 out_dir / files["noise_sheet"])
    save_png(scatter_plot(result, stamp=stamp), out_dir / SCATTER)

    n = len(rows)
    report: dict[str, Any] = {
        "method": result.parameters.get("method"),
        **({"profile": p} if (p := _profile_of(rows, profile)) else {}),
        "counts": {
            "points": n, "clustered": n - result.n_noise, "noise": result.n_noise, "clusters": result.n_clusters,
            "crops_linked": how["link"], "crops_copied": how["copy"], "missing_crops": len(missing),
        },
        "noise_share": round(result.noise_share, 4),
        "silhouette": result.silhouette,
        "reason": result.reason,
        "notes": result.notes,
        "parameters": result.parameters,
        "timings_s": result.timings,
        "clusters": clusters,
        "noise": {"folder": NOISE_DIR, "size": len(noise_members), "members": [ids[i] for i in noise_members]},
        "missing_crops": missing,
        "files": files,
    }
    write_json_atomic(out_dir / REPORT, report)
    return report


def _confident_first(result: ClusterResult) -> list[list[int]]:
    """Member indices of each cluster, most confident (highest probability) first, ties by row order."""
    out = []
    for k in range(result.n_clusters):
        members = np.flatnonzero(result.labels == k)
        out.append([int(i) for i in members[np.argsort(-result.probabilities[members], kind="stable")]])
    return out




def contact_sheet(
    title: str, members: list[int], placed: dict[int, Path], result: ClusterResult, ids: list[str],
) -> Image.Image:
    """A grid of up to SHEET_MAX member thumbnails (in the given order), titled, each captioned."""
    shown = members[:SHEET_MAX]
    pad = 6
    grid = Grid(SHEET_COLUMNS, max(1, math.ceil(len(shown) / SHEET_COLUMNS)), (SHEET_TILE, SHEET_TILE), pad,
                caption_h=14, top=26 - pad, bottom=pad)  # a 26 px title band to the first row
    sheet, draw = grid.sheet()
    if len(members) > len(shown):
        title += f" ({len(shown)} most confident shown)"
    draw.text((pad, 6), title, fill=(0, 0, 0), font=font(14))
    for j, i in enumerate(shown):
        caption = f"p={result.probabilities[i]:.2f} {ids[i].rsplit(':', 2)[-2] if ':' in ids[i] else ids[i]}"
        tile = thumbnail(placed.get(i), (SHEET_TILE, SHEET_TILE), background=(127, 127, 127), missing=(60, 60, 60))
        grid.put(sheet, draw, j % SHEET_COLUMNS, j // SHEET_COLUMNS, tile, caption[:20])
    return sheet


def scatter_plot(result: ClusterResult, legend_max: int = 30, stamp: str = "") -> Image.Image:
    """The 2-D embedding coloured by cluster (noise grey), with a legend of cluster sizes."""
    width, height = SCATTER_SIZE
    legend_w, pad, title_h = 230, 16, 30
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    n = len(result.labels)
    title = f"2-D embedding: {n} points, {result.n_clusters} clusters, noise {result.noise_share:.1%}"
    shown = result.parameters.get("plot_points")
    if shown is not None and shown < n:
        title += f" (a sample of {shown} shown)"
    title += stamp
    draw.text((pad, 8), title, fill=(0, 0, 0), font=font(14))
    box = (pad, title_h, width - legend_w - pad, height - pad)
    draw.rectangle(box, outline=(200, 200, 200))
    xy = np.asarray(result.embedding_2d, dtype=np.float64)
    ok = np.isfinite(xy).all(axis=1) if n else np.zeros(0, bool)
    if ok.any():
        lo, hi = xy[ok].min(axis=0), xy[ok].max(axis=0)
        span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
        inner = np.array([box[2] - box[0] - 16, box[3] - box[1] - 16], dtype=np.float64)
        px = (xy - lo) / span * inner + np.array([box[0] + 8, box[1] + 8])
        px[:, 1] = box[3] + box[1] - px[:, 1]  # y up
        r = 1 if n > 20_000 else 2 if n > 2_000 else 3
        order = [NOISE, *range(result.n_clusters)]
        for k in order:
            colour = (175, 175, 175) if k == NOISE else palette_colour(k)
            for x, y in px[ok & (result.labels == k)]:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    else:
        draw.text((box[0] + 12, box[1] + 12), "no points to plot", fill=(120, 120, 120), font=font(13))
    lx, ly, small = width - legend_w, title_h, font(12)
    entries = [(f"character_{k} ({result.sizes[k]})", palette_colour(k))
               for k in range(min(result.n_clusters, legend_max))]
    if result.n_clusters > legend_max:
        entries.append((f"... {result.n_clusters - legend_max} more clusters", (255, 255, 255)))
    entries.append((f"noise ({result.n_noise})", (175, 175, 175)))
    for j, (text, colour) in enumerate(entries):
        y = ly + j * 20
        if y > height - 20:
            break
        draw.rectangle((lx, y + 3, lx + 12, y + 15), fill=colour, outline=(90, 90, 90))
        draw.text((lx + 18, y + 2), text, fill=(0, 0, 0), font=small)
    return image
