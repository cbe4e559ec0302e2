"""The report of a character dataset folder: ``dataset_report.md``, ``contact_sheet.png`` and ``histograms.png``.

Everything is read from the dataset's ``metadata.json`` (passed in as a dict) and its ``images/``:

- ``contact_sheet.png``: the selected images grouped by view (front, three_quarter, profile, unknown, then any
  other view), one labelled band per view, highest quality first, at most :data:`TILES_PER_VIEW` tiles each.
  Each tile shows the RGBA image over a checkerboard, so the soft mask (alpha) is visible; the flat grey around
  it is outside the image. Validation images are outlined in orange and captioned ``val``.
- ``histograms.png``: selected images per view and per shot (train and val stacked) and caption length in
  CLIP tokens, with CLIP's 77-token window marked.
- ``dataset_report.md``: the summary a newcomer reads first; it links the two pictures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, UnidentifiedImageError

from castlab.captions.report import token_histogram
from castlab.models.tokenizers import MODEL_MAX_LENGTH as CLIP_LIMIT
from castlab.pictures import CAPTION_SIZE, Grid, font, save_png, thumbnail, tiny_stamp
from castlab.workspace import write_text_atomic

REPORT_MD = "dataset_report.md"
CONTACT_SHEET = "contact_sheet.png"
HISTOGRAMS = "histograms.png"
VIEW_ORDER = ("front", "three_quarter", "profile", "unknown")
SOURCE_ORDER = ("reviewed", "predicted", "template")
TILES_PER_VIEW, SHEET_COLUMNS, TILE = 24, 8, 128
TOP_SHOTS = 30
PAD, CAPTION_H, TITLE_H, HEADER_H = 6, 14, 44, 22
HEADER_COLOUR = (222, 230, 242)        # the bar naming a view band on the contact sheet
MARGIN_COLOUR = (70, 70, 70)           # tile area outside the image
CHECKER = ((205, 205, 205), (150, 150, 150), 8)  # two colours and square size behind transparent pixels
MISSING_COLOUR = (120, 40, 40)
VAL_COLOUR = (230, 140, 40)
TRAIN_COLOUR = (70, 120, 180)
LIMIT_COLOUR = (200, 0, 0)
CHART_WIDTH, BAR_ROW, LABEL_W = 900, 18, 190
REASONS_SHOWN = 3

SOURCE_MEANING = {
    "reviewed": "written or approved by a person in the caption review",
    "predicted": "the captioning model's text, not reviewed",
    "template": "built from the trigger, class word and review choices (no caption text was available)",
}
REJECT_MEANING = {
    "duplicate": "near-identical to an image already selected",
    "view_quota": "its view already had its share of the dataset",
    "low_quality": "below the quality bar",
    "caption_flagged": "its caption was flagged in caption QC",
    "missing_file": "its crop or mask file was not found",
    "over_target": "the dataset already had target_size.max images",
}


def _view(entry: dict[str, Any]) -> str:
    return str(entry.get("view") or "unknown")


def view_order(views: Iterable[str]) -> list[str]:
    """The distinct `views` in report order: front, three_quarter, profile, unknown, then the others sorted."""
    present = set(views)
    return [v for v in VIEW_ORDER if v in present] + sorted(present - set(VIEW_ORDER))


def view_groups(images: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """`images` grouped by view in :func:`view_order`, each group highest quality first (ties: metadata order)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in images:
        groups.setdefault(_view(entry), []).append(entry)
    return [(v, sorted(groups[v], key=lambda e: -float(e.get("quality") or 0.0))) for v in view_order(groups)]


def shot_counts(images: Sequence[dict[str, Any]], top: int = TOP_SHOTS) -> list[tuple[str, int, int]]:
    """(shot, train, val) for the `top` shots with most images (ties by shot key), the rest summed as "other"."""
    train: Counter[str] = Counter()
    val: Counter[str] = Counter()
    for entry in images:
        (val if entry.get("split") == "val" else train)[str(entry.get("shot_key") or "(no shot)")] += 1
    ranked = sorted(set(train) | set(val), key=lambda s: (-(train[s] + val[s]), s))
    rows = [(s, train[s], val[s]) for s in ranked[:top]]
    rest = ranked[top:]
    if rest:
        rows.append((f"other ({len(rest)} shots)", sum(train[s] for s in rest), sum(val[s] for s in rest)))
    return rows


def _title(metadata: dict[str, Any]) -> str:
    counts = metadata.get("counts") or {}
    return (f"{metadata.get('character', '?')} - trigger \"{metadata.get('class_tokens') or metadata.get('trigger')}\""
            f" - {counts.get('selected', len(metadata.get('images') or []))} selected ({counts.get('train', '?')} "
            f"train, {counts.get('val', '?')} val), {counts.get('rejected', '?')} rejected"
            f"{tiny_stamp(metadata.get('profile'))}")


# --- contact sheet -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Band:
    """One view's band on the contact sheet: `total` images, the first `shown` drawn, inside pixel `box`."""

    view: str
    total: int
    shown: int
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1), the header bar included

    @property
    def more(self) -> int:
        return self.total - self.shown


def _checker(size: tuple[int, int]) -> Image.Image:
    light, dark, step = CHECKER
    board = Image.new("RGB", size, light)
    draw = ImageDraw.Draw(board)
    for y in range(0, size[1], step):
        for x in range((y // step) % 2 * step, size[0], 2 * step):
            draw.rectangle((x, y, x + step - 1, y + step - 1), fill=dark)
    return board


def checker_tile(path: Path, box: tuple[int, int] = (TILE, TILE)) -> Image.Image:
    """`path` fitted into `box` over a checkerboard (alpha shows as the board), on a flat margin colour.

    A missing or unreadable file gives a plain :data:`MISSING_COLOUR` tile.
    """
    try:
        with Image.open(path) as im:
            im = im.convert("RGBA")
            im.thumbnail(box)
    except (OSError, UnidentifiedImageError):
        return thumbnail(None, box, missing=MISSING_COLOUR)
    board = _checker(im.size).convert("RGBA")
    board.alpha_composite(im)
    tile = Image.new("RGB", box, MARGIN_COLOUR)
    tile.paste(board.convert("RGB"), ((box[0] - im.width) // 2, (box[1] - im.height) // 2))
    return tile


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, size: int = CAPTION_SIZE) -> str:
    """`text` shortened from the left ("…" + its tail, where names differ) to fit `width` pixels."""
    face = font(size)
    if draw.textlength(text, font=face) <= width:
        return text
    while text and draw.textlength("…" + text, font=face) > width:
        text = text[1:]
    return "…" + text


def _caption(draw: ImageDraw.ImageDraw, entry: dict[str, Any], present: bool) -> str:
    name = str(entry.get("name") or Path(str(entry.get("image") or "?")).stem)
    prefix = ("val " if entry.get("split") == "val" else "") + ("missing " if not present else "")
    return prefix + _fit(draw, name, TILE - 2 - int(draw.textlength(prefix, font=font(CAPTION_SIZE))))


def _image_path(dataset_dir: Path, entry: dict[str, Any]) -> Path:
    return dataset_dir / str(entry.get("image") or f"images/{entry.get('name')}.png")


def contact_sheet(
    dataset_dir: Path, metadata: dict[str, Any], tiles_per_view: int = TILES_PER_VIEW, columns: int = SHEET_COLUMNS,
) -> tuple[Image.Image, list[Band]]:
    """The contact sheet of the dataset's selected images and where each view's band lies on it."""
    groups = view_groups(metadata.get("images") or [])
    grids = [Grid(columns, max(1, -(-min(len(g), tiles_per_view) // columns)), (TILE, TILE), PAD,
                  caption_h=CAPTION_H, top=HEADER_H) for _, g in groups]
    width = Grid(columns, 1, (TILE, TILE), PAD).size[0]
    height = TITLE_H + sum(g.size[1] for g in grids) + (0 if groups else 30)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, 6), _title(metadata), fill=(0, 0, 0), font=font(14))
    draw.text((PAD, 26), "checkerboard = transparent (outside the soft mask); orange outline = val split; "
              "highest quality first", fill=(90, 90, 90), font=font(11))
    if not groups:
        draw.text((PAD, TITLE_H + 4), "No images were selected.", fill=(120, 120, 120), font=font(14))
    bands, y = [], TITLE_H
    for (view, entries), grid in zip(groups, grids, strict=True):
        shown = entries[:tiles_per_view]
        band, band_draw = grid.sheet()
        band_draw.rectangle((0, 0, width - 1, HEADER_H - 2), fill=HEADER_COLOUR)
        label = f"{view}: {len(entries)} image{'s' if len(entries) != 1 else ''}"
        label += f" ({sum(e.get('split') == 'val' for e in entries)} val)"
        if len(entries) > len(shown):
            label += f", first {len(shown)} shown, +{len(entries) - len(shown)} more"
        band_draw.text((PAD, 4), label, fill=(0, 0, 0), font=font(13))
        for j, entry in enumerate(shown):
            path = _image_path(dataset_dir, entry)
            present = path.is_file()
            column, row = j % columns, j // columns
            grid.put(band, band_draw, column, row, checker_tile(path), _caption(band_draw, entry, present))
            if entry.get("split") == "val":
                x, top = grid.origin(column, row)
                band_draw.rectangle((x - 2, top - 2, x + TILE + 1, top + TILE + 1), outline=VAL_COLOUR, width=2)
        sheet.paste(band, (0, y))
        bands.append(Band(view, len(entries), len(shown), (0, y, width, y + band.height)))
        y += band.height
    return sheet, bands


# --- histograms ----------------------------------------------------------------------------------------------------


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int, anchor: str,
          fill: tuple[int, int, int] = (0, 0, 0)) -> None:
    """`text` placed by a two-letter anchor (l/m/r, t/m/b), also with Pillow's bitmap fallback font."""
    face = font(size)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=face)
    dx = {"l": 0, "m": (x1 - x0) / 2, "r": x1 - x0}[anchor[0]]
    dy = {"t": 0, "m": (y1 - y0) / 2, "b": y1 - y0}[anchor[1]]
    draw.text((xy[0] - dx - x0, xy[1] - dy - y0), text, fill=fill, font=face)


def _bars_height(n: int) -> int:
    return 30 + max(1, n) * BAR_ROW + 34


def _bars(draw: ImageDraw.ImageDraw, top: int, title: str, rows: Sequence[tuple[str, int, int]], axis: str) -> None:
    """Horizontal bars, train then val stacked, labelled on the left and with their counts on the right."""
    draw.text((12, top + 6), title, fill=(0, 0, 0), font=font(14))
    left, right = LABEL_W, CHART_WIDTH - 110
    y0 = top + 30
    peak = max((t + v for _, t, v in rows), default=0) or 1
    scale = (right - left) / peak
    if not rows:
        draw.text((left + 8, y0 + 2), "no images", fill=(120, 120, 120), font=font(12))
    for i, (label, train, val) in enumerate(rows):
        y = y0 + i * BAR_ROW
        _text(draw, (left - 8, y + BAR_ROW / 2), _fit(draw, label, LABEL_W - 20, 12), 12, "rm")
        if train:
            draw.rectangle((left, y + 3, left + train * scale, y + BAR_ROW - 3), fill=TRAIN_COLOUR)
        if val:
            draw.rectangle((left + train * scale, y + 3, left + (train + val) * scale, y + BAR_ROW - 3),
                           fill=VAL_COLOUR)
        count = f"{train + val}" + (f" ({val} val)" if val else "")
        _text(draw, (left + (train + val) * scale + 6, y + BAR_ROW / 2), count, 12, "lm")
    bottom = y0 + max(1, len(rows)) * BAR_ROW
    draw.line((left, y0, left, bottom), fill=(0, 0, 0))
    draw.line((left, bottom, right, bottom), fill=(0, 0, 0))
    _text(draw, ((left + right) / 2, bottom + 8), axis, 12, "mt")


def _legend(draw: ImageDraw.ImageDraw, y: int) -> None:
    x = CHART_WIDTH - 200
    for name, colour in (("train", TRAIN_COLOUR), ("val", VAL_COLOUR)):
        draw.rectangle((x, y + 2, x + 12, y + 14), fill=colour)
        draw.text((x + 18, y + 1), name, fill=(0, 0, 0), font=font(12))
        x += 70


TOKENS_H = 300


def _tokens(draw: ImageDraw.ImageDraw, top: int, tokens: Sequence[int], missing: int) -> None:
    """A histogram of caption lengths (bins of 5, 80+ last) with the CLIP limit as a dashed red line."""
    hist = token_histogram(tokens, min_tokens=0, max_tokens=CLIP_LIMIT)
    bins = hist["bins"]
    width_bin = bins[0]["hi"] - bins[0]["lo"]
    span = bins[-1]["lo"] + width_bin  # the overflow bin is drawn as one more bin
    title = f"Caption length in CLIP tokens: {hist['captions']} captions, {hist['above_max']} over {CLIP_LIMIT}"
    title += f" ({missing} without a token count)" if missing else ""
    draw.text((12, top + 6), title, fill=(0, 0, 0), font=font(14))
    left, right, y_top, bottom = 70, CHART_WIDTH - 20, top + 48, top + TOKENS_H - 46
    scale = (right - left) / span
    peak = max((b["count"] for b in bins), default=0) or 1
    draw.line((left, y_top, left, bottom), fill=(0, 0, 0))
    draw.line((left, bottom, right, bottom), fill=(0, 0, 0))
    for value in sorted({round(peak * i / 4) for i in range(5)}):
        y = bottom - value / peak * (bottom - y_top)
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        _text(draw, (left - 8, y), str(value), 12, "rm")
    for b in bins:
        x0, x1 = left + b["lo"] * scale + 2, left + (b["lo"] + width_bin) * scale - 2
        if b["count"]:
            y = bottom - b["count"] / peak * (bottom - y_top)
            draw.rectangle((x0, y, x1, bottom), fill=TRAIN_COLOUR)
            _text(draw, ((x0 + x1) / 2, y - 2), str(b["count"]), 11, "mb")
        _text(draw, (left + b["lo"] * scale, bottom + 6), f"{b['lo']}+" if b["hi"] is None else str(b["lo"]), 12,
              "mt")
    x = left + CLIP_LIMIT * scale
    for y in range(y_top - 6, bottom, 8):
        draw.line((x, y, x, min(y + 4, bottom)), fill=LIMIT_COLOUR, width=2)
    _text(draw, (x - 4, y_top - 10), f"CLIP limit {CLIP_LIMIT}", 12, "rb", LIMIT_COLOUR)
    _text(draw, ((left + right) / 2, top + TOKENS_H - 14), "CLIP tokens per caption (bins of 5)", 12, "mb")
    draw.text((8, y_top - 26), "captions", fill=(0, 0, 0), font=font(12))


def histograms(metadata: dict[str, Any]) -> Image.Image:
    """Three charts stacked: selected images per view, per shot (top :data:`TOP_SHOTS`), caption length."""
    images = metadata.get("images") or []
    views = [(v, sum(e.get("split") != "val" for e in g), sum(e.get("split") == "val" for e in g))
             for v, g in view_groups(images)]
    shots = shot_counts(images)
    n_shots = len({str(e.get("shot_key") or "(no shot)") for e in images})
    tokens = [int(e["caption_tokens"]) for e in images if e.get("caption_tokens") is not None]
    title_h = 36
    heights = [_bars_height(len(views)), _bars_height(len(shots)), TOKENS_H]
    image = Image.new("RGB", (CHART_WIDTH, title_h + sum(heights)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((12, 10), _title(metadata), fill=(0, 0, 0), font=font(15))
    _legend(draw, title_h + 6)
    y = title_h
    _bars(draw, y, f"Selected images per view ({len(images)} images)", views, "selected images")
    y += heights[0]
    draw.line((0, y, CHART_WIDTH, y), fill=(220, 220, 220))
    shots_title = f"Selected images per shot ({n_shots} shots" + (f", top {TOP_SHOTS} shown)" if
                                                                   n_shots > TOP_SHOTS else ")")
    _bars(draw, y, shots_title, shots, "selected images")
    y += heights[1]
    draw.line((0, y, CHART_WIDTH, y), fill=(220, 220, 220))
    _tokens(draw, y, tokens, len(images) - len(tokens))
    return image


# --- markdown ------------------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> list[str]:
    """A Markdown table; `align` has "l" or "r" per column (default: first column left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |" for row in rows]
    return lines


def _short(text: str, n: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def long_captions(metadata: dict[str, Any], limit: int = CLIP_LIMIT) -> list[dict[str, Any]]:
    """Images whose caption is over `limit` CLIP tokens (listed in ``long_captions`` or counted so)."""
    listed = set(metadata.get("long_captions") or [])
    return [e for e in metadata.get("images") or []
            if e.get("name") in listed or (e.get("caption_tokens") or 0) > limit]


def dataset_markdown(metadata: dict[str, Any]) -> str:
    """``dataset_report.md`` for `metadata` (the ``metadata.json`` object)."""
    images = metadata.get("images") or []
    rejected = metadata.get("rejected") or []
    val = sum(e.get("split") == "val" for e in images)
    counts = {"candidates": len(images) + len(rejected), "selected": len(images), "train": len(images) - val,
              "val": val, "rejected": len(rejected), **(metadata.get("counts") or {})}
    profile, repeats = metadata.get("profile"), metadata.get("num_repeats")
    target = metadata.get("target_size") or {}
    trigger, class_word = metadata.get("trigger", "?"), metadata.get("class_word", "?")
    class_tokens = metadata.get("class_tokens") or f"{trigger} {class_word}"
    lines = [f"# Dataset report: {metadata.get('character', '?')}{tiny_stamp(profile)}", ""]
    if profile == "tiny":
        lines += ["> **Tiny profile:** these images, masks and captions come from random-weight models (castlab's "
                  "`tiny` profile). They test the pipeline, not quality; do not train a real LoRA on them.", ""]
    lines += [
        f"A LoRA training dataset for one character, **{metadata.get('character', '?')}**. `images/` holds "
        "RGBA PNGs: the colour is the crop of the original frame around the character"
        + (" composited onto a neutral colour" if metadata.get("background") == "neutral" else "")
        + ", the alpha channel is the "
        "character's soft mask (kohya reads it with `alpha_mask = true`, so training focuses on the character). "
        f"`captions/` holds one caption per image; each starts with the trigger and class word `{class_tokens}`. "
        f"`kohya/` holds the train split in kohya's folder layout, read through `dataset_config.toml`; "
        "`training.toml` is the kohya sd-scripts config.", "",
        "## Summary", "",
    ]
    background = metadata.get("background")
    background_text = {"original": "original (the real frame background is kept around the character)",
                       "neutral": "neutral (the character is composited onto a plain colour)"}.get(
        str(background), str(background))
    lines += _table(["setting", "value"], [
        ("character", metadata.get("character", "?")),
        ("trigger token", f"`{trigger}`"),
        ("class word", f"`{class_word}`"),
        ("class tokens (caption start)", f"`{class_tokens}`"),
        ("resolution", metadata.get("resolution", "?")),
        ("background", background_text),
        ("num_repeats", repeats),
        ("target size", f"{target.get('min', '?')}–{target.get('max', '?')} images"),
        ("model profile", profile),
    ], "ll")
    runs = metadata.get("runs") or []
    lines += ["", f"Source runs ({len(runs)}):", ""] + [f"- `{r}`" for r in runs] + (["- (none listed)"]
                                                                                     if not runs else [])
    lines += ["", "## Counts", ""]
    lines += _table(["candidates", "selected", "train", "val", "rejected"],
                    [[counts[k] for k in ("candidates", "selected", "train", "val", "rejected")]], "rrrrr")
    if isinstance(repeats, int) and isinstance(counts["train"], int):
        lines += ["", f"One epoch is {counts['train']} train images × num_repeats {repeats} = "
                  f"{counts['train'] * repeats} image steps (before batching)."]
    if metadata.get("small"):
        lines += ["", f"> **Warning: small dataset.** Only {counts['selected']} images were selected, fewer than "
                  f"the target minimum of {target.get('min', '?')}. kohya repeats each train image num_repeats = "
                  f"{repeats} times per epoch to fill the epoch, so the model sees the same few images often and "
                  "may overfit (copy their poses, backgrounds and lighting). To grow the dataset, review more "
                  "instances of this character or curate more video."]
    lines += ["", "## Views", ""]
    view_rows = [(v, len(g), sum(e.get("split") != "val" for e in g), sum(e.get("split") == "val" for e in g),
                  f"{len(g) / len(images):.0%}") for v, g in view_groups(images)]
    lines += _table(["view", "selected", "train", "val", "share"], view_rows) if view_rows else ["No images."]
    shots = shot_counts(images, top=len(images))
    lines += ["", "## Shots", "", f"The selected images come from {len(shots)} shot{'s' if len(shots) != 1 else ''}"
              + (f"; the most used shot ({shots[0][0]}) gives {shots[0][1] + shots[0][2]} images." if shots else "."),
              f"Per-shot counts are in [{HISTOGRAMS}]({HISTOGRAMS})."]
    lines += ["", "## Captions", ""]
    sources = Counter(str(e.get("caption_source") or "unknown") for e in images)
    source_rows = [(s, sources.get(s, 0), SOURCE_MEANING.get(s, ""))
                   for s in [*SOURCE_ORDER, *sorted(set(sources) - set(SOURCE_ORDER))]]
    lines += _table(["caption source", "images", "meaning"], source_rows, "lrl")
    tokens = [int(e["caption_tokens"]) for e in images if e.get("caption_tokens") is not None]
    if tokens:
        lines += ["", f"Caption length: mean {sum(tokens) / len(tokens):.1f} CLIP tokens, longest {max(tokens)}."]
    long = long_captions(metadata)
    lines += ["", f"### Long captions (over {CLIP_LIMIT} CLIP tokens): {len(long)}", ""]
    if long:
        lines += [f"CLIP's text encoder reads {CLIP_LIMIT} tokens; the rest of these captions is cut off in training "
                  "unless kohya's `max_token_length` is raised. Shorten them, or accept that their ends are unseen.",
                  ""]
        lines += [f"- `{e.get('name')}` ({e.get('caption_tokens', '?')} tokens): {_short(e.get('caption', ''))}"
                  for e in long]
    else:
        lines += ["None: every caption fits CLIP's window."]
    lines += ["", "## Rejected candidates", ""]
    by_code: dict[str, list[dict[str, Any]]] = {}
    for entry in rejected:
        by_code.setdefault(str(entry.get("code") or "unknown"), []).append(entry)
    ranked = sorted(by_code.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    if ranked:
        code_rows = [(code, len(entries), REJECT_MEANING.get(code, "")) for code, entries in ranked]
        lines += _table(["code", "candidates", "meaning"], code_rows, "lrl")
        for code, entries in ranked:
            more = f", the first {REASONS_SHOWN}" if len(entries) > REASONS_SHOWN else ""
            lines += ["", f"**{code}** ({len(entries)}{more}):", ""]
            lines += [f"- `{e.get('row_id', '?')}`: {e.get('reason', '')}" for e in entries[:REASONS_SHOWN]]
    else:
        lines += ["No candidates were rejected."]
    lines += ["", "## Pictures", "",
              f"- [{CONTACT_SHEET}]({CONTACT_SHEET}): the selected images by view (checkerboard = outside the "
              "soft mask; orange outline = val split).",
              f"- [{HISTOGRAMS}]({HISTOGRAMS}): images per view and per shot, caption length in CLIP tokens.", "",
              f"![contact sheet]({CONTACT_SHEET})", "", f"![histograms]({HISTOGRAMS})"]
    return "\n".join(lines) + "\n"


def write_dataset_report(dataset_dir: Path, metadata: dict[str, Any]) -> dict[str, str]:
    """Write the report files into `dataset_dir` (replacing earlier ones); returns {kind: path relative to it}."""
    dataset_dir = Path(dataset_dir)
    sheet, _ = contact_sheet(dataset_dir, metadata)
    save_png(sheet, dataset_dir / CONTACT_SHEET)
    save_png(histograms(metadata), dataset_dir / HISTOGRAMS)
    write_text_atomic(dataset_dir / REPORT_MD, dataset_markdown(metadata))
    return {"report": REPORT_MD, "contact_sheet": CONTACT_SHEET, "histograms": HISTOGRAMS}
