"""Pictures of an evaluation: a grid per prompt family, metric-vs-step curves, identity x prompt-following plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from castlab.pictures import TINY_STAMP, Grid, font

STATUS_COLOURS = {"recommended": (20, 140, 60), "pareto": (40, 90, 180), "dominated": (120, 120, 120),
                  "gated": (200, 40, 40), "base": (0, 0, 0)}
CURVES = ("identity", "prompt_following", "diversity", "memorisation", "leakage", "drift")
CURVE_COLOURS = ((40, 90, 180), (20, 140, 60), (150, 60, 170), (200, 120, 20), (200, 40, 40), (90, 90, 90))


def _stamp(image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
    draw.text((6, image.height - 20), TINY_STAMP.strip(" -").upper(), fill=(200, 0, 0), font=font(12))


def family_grid(out_dir: Path, family: str, rows: list[tuple[str, str]], renders: list[dict[str, Any]],
                tiny: bool, tile: int = 128) -> Image.Image:
    """Rows = base + checkpoints (name, label), columns = the family's prompts x seeds, same seed per column."""
    columns = list(dict.fromkeys((r["prompt_id"], int(r["seed"])) for r in renders if r["family"] == family))
    by_key = {(r["row"], r["prompt_id"], int(r["seed"])): r for r in renders if r["family"] == family}
    footer = 24 if tiny else 0
    layout = Grid(max(1, len(columns)), len(rows), (tile, tile), pad=4, left=230, top=34, bottom=footer)
    sheet, draw = layout.sheet()
    draw.text((6, 4), f"family: {family}", fill="black", font=font(13))
    for j, (prompt_id, seed) in enumerate(columns):
        x = layout.origin(j, 0)[0]
        draw.text((x + 2, 20), f"{prompt_id.split('/', 1)[-1]} / s{seed}"[:22], fill="black", font=font(10))
    for i, (row, label) in enumerate(rows):
        y = layout.origin(0, i)[1]
        for k, line in enumerate(label.splitlines()[:4]):
            draw.text((6, y + 8 + 15 * k), line[:36], fill="black" if k == 0 else (70, 70, 70), font=font(11))
        for j, (prompt_id, seed) in enumerate(columns):
            render = by_key.get((row, prompt_id, seed))
            if render is None:
                continue
            with Image.open(out_dir / render["file"]) as im:
                layout.put(sheet, draw, j, i, im.convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR))
    if tiny:
        _stamp(sheet, draw)
    return sheet


def _axes(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], x_label: str, y_label: str) -> None:
    left, top, right, bottom = box
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    draw.text(((left + right) // 2 - 30, bottom + 20), x_label, fill="black", font=font(11))
    draw.text((max(4, left - 40), top - 18), y_label, fill="black", font=font(11))


def metric_curves(points: list[dict[str, Any]], base: dict[str, Any], tiny: bool) -> Image.Image:
    """One panel per metric: the checkpoints' mean and 95 % interval against their step, the base model as a
    dashed line. `points`: {"step", "metrics": {metric: {"mean","low","high"} | None}} sorted by step."""
    panel_w, panel_h, margin = 360, 220, 48
    cols = 3
    rows = (len(CURVES) + cols - 1) // cols
    image = Image.new("RGB", (cols * panel_w, rows * panel_h + (24 if tiny else 0)), "white")
    draw = ImageDraw.Draw(image)
    steps = [int(p["step"]) for p in points if p.get("step") is not None]
    for n, (metric, colour) in enumerate(zip(CURVES, CURVE_COLOURS, strict=True)):
        ox, oy = (n % cols) * panel_w, (n // cols) * panel_h
        box = (ox + margin, oy + 30, ox + panel_w - 16, oy + panel_h - 40)
        _axes(draw, box, "step", metric)
        series = [(int(p["step"]), p["metrics"].get(metric)) for p in points
                  if p.get("step") is not None and p["metrics"].get(metric)]
        base_value = (base.get(metric) or {}).get("mean") if isinstance(base.get(metric), dict) else None
        values = [v for _, m in series for v in (m["low"], m["high"])] + ([base_value] if base_value is not None
                                                                            else [])
        if not series or not steps:
            draw.text((box[0] + 10, box[1] + 20), "not measured", fill=(120, 120, 120), font=font(11))
            continue
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        s_low, s_high = min(steps), max(steps)

        def xy(step: float, value: float, box=box, low=low, span=span, s_low=s_low, s_high=s_high) -> tuple:
            x = box[0] + (box[2] - box[0]) * ((step - s_low) / ((s_high - s_low) or 1))
            return x, box[3] - (box[3] - box[1]) * (value - low) / span

        if base_value is not None:
            y = xy(s_low, base_value)[1]
            for x in range(box[0], box[2], 10):
                draw.line([(x, y), (min(x + 5, box[2]), y)], fill=(0, 0, 0))
            draw.text((box[2] - 40, y - 13), "base", fill="black", font=font(10))
        for step, m in series:
            x, y_low = xy(step, m["low"])
            draw.line([(x, y_low), (x, xy(step, m["high"])[1])], fill=colour, width=1)
        if len(series) > 1:
            draw.line([xy(step, m["mean"]) for step, m in series], fill=colour, width=2)
        for step, m in series:
            x, y = xy(step, m["mean"])
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((ox + 2, box[1] - 2), f"{high:.4g}", fill="black", font=font(9))
        draw.text((ox + 2, box[3] - 8), f"{low:.4g}", fill="black", font=font(9))
        draw.text((box[0], box[3] + 4), str(s_low), fill="black", font=font(9))
        draw.text((box[2] - 30, box[3] + 4), str(s_high), fill="black", font=font(9))
    if tiny:
        _stamp(image, draw)
    return image


def comparison_plot(ranking: dict[str, Any], tiny: bool) -> Image.Image:
    """Identity (x) against prompt following (y) per checkpoint, coloured by status, the Pareto front joined,
    the recommendation circled, the base model as a black cross."""
    width, height, margin = 760, 520, 64
    image = Image.new("RGB", (width, height + (24 if tiny else 0)), "white")
    draw = ImageDraw.Draw(image)
    box = (margin, 40, width - 240, height - margin)
    _axes(draw, box, "identity margin", "prompt following (CLIP-T)")
    rows = dict(ranking.get("checkpoints") or {})
    base = (ranking.get("base") or {}).get("metrics") or {}
    pts = {n: (r["metrics"].get("identity"), r["metrics"].get("prompt_following")) for n, r in rows.items()}
    if base.get("identity") is not None and base.get("prompt_following") is not None:
        pts["base"] = (base["identity"], base["prompt_following"])
    pts = {n: p for n, p in pts.items() if p[0] is not None and p[1] is not None}
    if not pts:
        draw.text((box[0] + 10, box[1] + 20), "no measurable checkpoint", fill="black", font=font(12))
        return image
    xs, ys = [p[0] for p in pts.values()], [p[1] for p in pts.values()]
    x_low, x_span = min(xs), (max(xs) - min(xs)) or 1.0
    y_low, y_span = min(ys), (max(ys) - min(ys)) or 1.0

    def xy(p: tuple[float, float]) -> tuple[float, float]:
        return (box[0] + 12 + (box[2] - box[0] - 24) * (p[0] - x_low) / x_span,
                box[3] - 12 - (box[3] - box[1] - 24) * (p[1] - y_low) / y_span)

    front = [n for n in ranking.get("front") or [] if n in pts]
    if len(front) > 1:
        draw.line([xy(pts[n]) for n in sorted(front, key=lambda n: pts[n][0])], fill=STATUS_COLOURS["pareto"])
    for name, p in pts.items():
        status = "base" if name == "base" else rows[name]["status"]
        colour = STATUS_COLOURS[status]
        x, y = xy(p)
        if name == "base":
            draw.line([(x - 5, y - 5), (x + 5, y + 5)], fill=colour, width=2)
            draw.line([(x - 5, y + 5), (x + 5, y - 5)], fill=colour, width=2)
        else:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        if status == "recommended":
            draw.ellipse([x - 9, y - 9, x + 9, y + 9], outline=colour, width=2)
        draw.text((x + 8, y - 6), name if len(name) <= 30 else "…" + name[-29:], fill=colour, font=font(10))
    for k, (status, colour) in enumerate(STATUS_COLOURS.items()):
        y = height - margin - 18 * (len(STATUS_COLOURS) - k)
        draw.ellipse([width - 160, y + 3, width - 152, y + 11], fill=colour)
        draw.text((width - 145, y), status, fill=colour, font=font(11))
    draw.text((box[0], box[3] + 6), f"{x_low:.4g}", fill="black", font=font(9))
    draw.text((box[2] - 40, box[3] + 6), f"{x_low + x_span:.4g}", fill="black", font=font(9))
    draw.text((4, box[3] - 14), f"{y_low:.4g}", fill="black", font=font(9))
    draw.text((4, box[1]), f"{y_low + y_span:.4g}", fill="black", font=font(9))
    if tiny:
        _stamp(image, draw)
    return image
