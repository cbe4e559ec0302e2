"""The frame-curation report of a curate run: ``report.md``, ``report.csv`` and ``contact_sheet.png``.

Counts per stage (frames decoded → selected → past the quality gates → past the safety gate → past dedup →
kept, with the train/val split) and per rejection reason (``reject_codes``; a frame failing two gates counts
under both), per video and in total. The contact sheet shows kept examples and examples of every
rejection reason so people can check the gates by eye, except ``nsfw`` frames: their tiles are blank,
captioned with the score (the files stay in ``frames/`` for whoever must check them).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from castlab.frames.quality import DUPLICATE, NSFW, REASON_CODES, UNREADABLE, WRITE_FAILED
from castlab.pictures import Grid, font, save_png, thumbnail
from castlab.workspace import write_text_atomic

REPORT_MD = "report.md"
REPORT_CSV = "report.csv"
CONTACT_SHEET = "contact_sheet.png"
EXAMPLES_PER_ROW = 6


def _codes(row: dict[str, Any]) -> list[str]:
    value = row.get("reject_codes")
    return [c for c in str(value).split(";") if c] if isinstance(value, str) else []


def frame_counts(rows: list[dict[str, Any]], shots: dict[str, Any]) -> dict[str, Any]:
    """Stage and reason counts for frame rows of one or more videos; `shots` is ``shots.json``'s data."""
    videos = shots.get("videos", {})
    gated = [r for r in rows if any(c not in (DUPLICATE, NSFW, UNREADABLE, WRITE_FAILED) for c in _codes(r))]
    failed = [r for r in rows if any(c in (UNREADABLE, WRITE_FAILED) for c in _codes(r))]
    unsafe = [r for r in rows if NSFW in _codes(r)]
    duplicates = [r for r in rows if DUPLICATE in _codes(r)]
    kept = [r for r in rows if r.get("status") == "kept"]
    stages = {
        "videos": len(videos),
        "videos failed": len(shots.get("failed", {})),
        "shots": sum(len(v.get("shots", [])) for v in videos.values()),
        "frames decoded": sum(int(v.get("frames_decoded") or 0) for v in videos.values()),
        "decode errors": sum(len(v.get("decode_errors", [])) for v in videos.values()),
        "frames selected": len(rows),
        "rejected by quality gates": len(gated),
        "rejected as nsfw": len(unsafe),
        "rejected as duplicates": len(duplicates),
        "frames failed": len(failed),
        "kept": len(kept),
        "kept train": sum(1 for r in kept if r.get("split") == "train"),
        "kept val": sum(1 for r in kept if r.get("split") == "val"),
    }
    reasons = Counter(code for r in rows for code in _codes(r))
    models = sorted({str(r["safety_model"]) for r in rows if isinstance(r.get("safety_model"), str)})
    return {"stages": stages, "reasons": {code: reasons.get(code, 0) for code in REASON_CODES},
            "safety_models": models}


def failed_inputs(shots: dict[str, Any]) -> list[dict[str, str]]:
    """``{"input", "reason"}`` of every video the run could not read (``shots.json``'s ``failed`` section)."""
    return [{"input": str(entry.get("video", key)), "reason": str(entry.get("reason", ""))}
            for key, entry in sorted((shots.get("failed") or {}).items())]


def write_report(run_dir: Path, rows: list[dict[str, Any]], profile: str | None = None) -> dict[str, Any]:
    """Write the three report files into `run_dir`; returns the totals and the file paths."""
    run_dir = Path(run_dir)
    shots_path = run_dir / "shots.json"
    shots = json.loads(shots_path.read_text(encoding="utf-8")) if shots_path.is_file() else {"videos": {}}
    total = frame_counts(rows, shots)
    per_video = {
        vid: frame_counts([r for r in rows if r.get("video_id") == vid], {"videos": {vid: entry}})
        for vid, entry in shots.get("videos", {}).items()
    }
    write_text_atomic(run_dir / REPORT_CSV, _csv(total, per_video))
    save_png(contact_sheet(rows), run_dir / CONTACT_SHEET)
    markdown = report_markdown(run_dir.name, total, per_video, shots, profile)
    write_text_atomic(run_dir / REPORT_MD, markdown + f"\n![kept and rejected examples]({CONTACT_SHEET})\n")
    return {
        **total,
        "failed_inputs": failed_inputs(shots),
        "markdown": markdown,
        "files": {name: str(run_dir / name) for name in (REPORT_MD, REPORT_CSV, CONTACT_SHEET)},
    }


def _csv(total: dict[str, Any], per_video: dict[str, dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["scope", "section", "name", "count"])
    for scope, counts in [("all", total), *per_video.items()]:
        for section in ("stages", "reasons"):
            for name, count in counts[section].items():
                writer.writerow([scope, section.rstrip("s"), name, count])
    return out.getvalue()


def report_markdown(
    run_name: str,
    total: dict[str, Any],
    per_video: dict[str, dict[str, Any]],
    shots: dict[str, Any],
    profile: str | None = None,
) -> str:
    """The report as Markdown (also used as the Prefect artifact, which cannot show local images)."""
    videos = shots.get("videos", {})
    names = {vid: Path(entry.get("video", vid)).name for vid, entry in videos.items()}
    cols = ["all", *per_video]
    header = "| | " + " | ".join(["all"] + [names[v] for v in per_video]) + " |"
    rule = "|---|" + "---:|" * len(cols)
    lines = [f"# Frame curation report: `{run_name}`", ""]
    if profile:
        lines += [f"Model profile: **{profile}**", ""]
    if total.get("safety_models"):
        lines += ["Safety model: " + ", ".join(f"`{m}`" for m in total["safety_models"]), ""]
    failed = failed_inputs(shots)
    if failed:  # skipped inputs first: the counts below leave them out
        lines += ["## Failed inputs", "", *[f"- {Path(f['input']).name}: {f['reason']}" for f in failed], ""]
    for section, title in (("stages", "Counts per stage"), ("reasons", "Rejections per reason")):
        lines += [f"## {title}", "", header, rule]
        for name in total[section]:
            values = [total[section][name]] + [per_video[v][section][name] for v in per_video]
            lines.append(f"| {name} | " + " | ".join(str(x) for x in values) + " |")
        lines.append("")
    errors = [(names[vid], e) for vid, entry in videos.items() for e in entry.get("decode_errors", [])]
    if errors:
        lines += ["## Decode errors", ""] + [f"- {name}: {json.dumps(e)}" for name, e in errors[:50]]
        lines += [f"- … {len(errors) - 50} more in shots.json" if len(errors) > 50 else "", ""]
    return "\n".join(lines)


def contact_sheet(rows: list[dict[str, Any]], tile: tuple[int, int] = (160, 90)) -> Image.Image:
    """One row of examples for "kept" and one per rejection reason present, each tile labelled."""
    groups: list[tuple[str, list[dict[str, Any]]]] = [("kept", [r for r in rows if r.get("status") == "kept"])]
    for code in REASON_CODES:
        members = [r for r in rows if code in _codes(r)]
        if members:
            groups.append((code, members))
    grid = Grid(EXAMPLES_PER_ROW, len(groups), tile, pad=4, caption_h=14, left=120)  # 120 px of row labels
    sheet, draw = grid.sheet()
    big = font(13)
    for i, (name, members) in enumerate(groups):
        y = grid.origin(0, i)[1]
        draw.text((6, y + tile[1] // 2 - 8), f"{name}\n({len(members)})", fill=(0, 0, 0), font=big)
        for j, row in enumerate(_spread(members, EXAMPLES_PER_ROW)):
            caption = f"#{row.get('frame_index')} {row.get('shot_id', '')}"
            if name == "duplicate":
                caption = f"#{row.get('frame_index')} = {str(row.get('duplicate_of', '')).rsplit(':', 1)[-1]}"
            elif name != "kept":
                caption = f"#{row.get('frame_index')} " + _metric_for(name, row)
            picture = None if name == NSFW else Path(str(row["path"]))  # never show an unsafe frame
            grid.put(sheet, draw, j, i, thumbnail(picture, tile), caption[:30])
    return sheet


def _spread(items: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Up to `k` items spread over the list (sorted by time), not just the first few."""
    items = sorted(items, key=lambda r: (str(r.get("video_id")), float(r.get("time_s") or 0)))
    if len(items) <= k:
        return items
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def _metric_for(code: str, row: dict[str, Any]) -> str:
    metric = {"blur": "blur", "too_dark": "brightness", "too_bright": "brightness", "low_contrast": "contrast"}
    if code in metric and row.get(metric[code]) is not None:
        return f"{metric[code]} {float(row[metric[code]]):.1f}"
    if code == "too_small":
        return f"{row.get('width')}x{row.get('height')}"
    if code == NSFW and row.get("nsfw_score") is not None:
        return f"nsfw {float(row['nsfw_score']):.2f}"
    return code
