"""The caption report of a caption run: ``caption_report.json``, ``caption_report.md`` and ``caption_tokens.png``.

Counts per record status, a histogram of caption lengths in CLIP tokens (bins of 5 from 0 to 80, plus an
overflow bin and the counts outside the ``min_tokens``/``max_tokens`` limits), flags per reason and per detail
(``"hallucination_term:logo"`` → reason ``hallucination_term``, detail ``logo``), the most frequent caption
terms, the share of reviewed captions that reviewers edited, and per-identity counts.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from castlab.pictures import font, save_png, tiny_stamp
from castlab.workspace import write_json_atomic, write_text_atomic

REPORT_JSON = "caption_report.json"
REPORT_MD = "caption_report.md"
TOKENS_PNG = "caption_tokens.png"
STATUSES = ("ok", "schema_error", "image_error", "no_identity")
BIN_WIDTH, BIN_TOP = 5, 80
NO_IDENTITY = "(no identity)"
CHART_SIZE = (900, 420)

STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each either few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself neither nor not
of off on once only or other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up upon very was we were what
when where which while who whom why will with within without would you your yours yourself yourselves
""".split())
_WORD = re.compile(r"[a-z0-9]+(?:['’-][a-z0-9]+)*")


def _words(text: str) -> list[str]:
    """Lower-case words of `text` (hyphenated words kept whole, possessive 's dropped)."""
    words = []
    for word in _WORD.findall(text.lower()):
        word = re.sub(r"['’]s$", "", word)
        words.append(word)
    return words


def top_terms(texts: Iterable[str], exclude: Iterable[str] = (), n: int = 20) -> list[tuple[str, int]]:
    """The `n` most frequent words of `texts` less stop words, numbers, single letters and `exclude`.

    Ordered by count (descending), then term; the words of each `exclude` entry are excluded (case-insensitive).
    """
    skip = STOP_WORDS | {w for entry in exclude for w in _words(str(entry))}
    counts = Counter(
        w for text in texts if text for w in _words(text)
        if w not in skip and len(w) > 1 and any(c.isalpha() for c in w)
    )
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def token_histogram(tokens: Iterable[int], min_tokens: int = 40, max_tokens: int = 77) -> dict[str, Any]:
    """Counts per 5-token bin ``[lo, hi)`` from 0 to 80 (then ``[80, None)``), and below/above the limits."""
    values = [int(t) for t in tokens]
    edges = list(range(0, BIN_TOP, BIN_WIDTH))
    bins = [{"lo": lo, "hi": lo + BIN_WIDTH, "count": sum(lo <= v < lo + BIN_WIDTH for v in values)} for lo in edges]
    bins.append({"lo": BIN_TOP, "hi": None, "count": sum(v >= BIN_TOP for v in values)})
    return {
        "captions": len(values),
        "bins": bins,
        "min_tokens": min_tokens,
        "max_tokens": max_tokens,
        "below_min": sum(v < min_tokens for v in values),
        "above_max": sum(v > max_tokens for v in values),
        "mean": round(sum(values) / len(values), 2) if values else None,
        "max": max(values) if values else None,
    }


def _final_text(record: dict[str, Any]) -> str | None:
    """The reviewed caption where there is one, else the caption prediction."""
    text = record.get("reviewed_caption")
    return text if text is not None else record.get("caption")


def _final_tokens(record: dict[str, Any]) -> int | None:
    """CLIP tokens of the reviewed caption where there is one, else of the caption prediction."""
    tokens = record.get("reviewed_tokens")
    return tokens if tokens is not None else record.get("tokens")


def _edited(record: dict[str, Any]) -> bool | None:
    """Whether a reviewer changed the text; None when not reviewed (``edited`` wins over comparing texts)."""
    if record.get("edited") is not None:
        return bool(record["edited"])
    if record.get("reviewed_caption") is None:
        return None
    return str(record["reviewed_caption"]).strip() != str(record.get("caption") or "").strip()


def caption_counts(
    records: list[dict[str, Any]], min_tokens: int = 40, max_tokens: int = 77, trigger_words: Sequence[str] = ()
) -> dict[str, Any]:
    """The report's numbers for caption `records` (no files written)."""
    status = Counter(str(r.get("status")) for r in records)
    flags: Counter[str] = Counter()
    details: dict[str, Counter[str]] = {}
    for r in records:
        for flag in r.get("flags") or []:
            reason, _, detail = str(flag).partition(":")
            flags[reason] += 1
            if detail:
                details.setdefault(reason, Counter())[detail] += 1
    review = [_edited(r) for r in records]
    reviewed, edited = sum(e is not None for e in review), sum(e is True for e in review)
    texts = [t for t in map(_final_text, records) if t]
    identities: dict[str, dict[str, int]] = {}
    for r in records:
        entry = identities.setdefault(str(r["identity"]) if r.get("identity") else NO_IDENTITY,
                                      {"records": 0, "captions": 0, "flagged": 0})
        entry["records"] += 1
        entry["captions"] += bool(_final_text(r))
        entry["flagged"] += bool(r.get("flags"))
    return {
        "records": len(records),
        "status": {**{s: status.get(s, 0) for s in STATUSES}, **{s: c for s, c in sorted(status.items())
                                                                 if s not in STATUSES}},
        "tokens": token_histogram((t for t in map(_final_tokens, records) if t is not None), min_tokens, max_tokens),
        "flagged": sum(bool(r.get("flags")) for r in records),
        "flags": dict(sorted(flags.items(), key=lambda kv: (-kv[1], kv[0]))),
        "flag_details": {reason: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
                         for reason, c in sorted(details.items())},
        "top_terms": [[term, count] for term, count in top_terms(texts, trigger_words)],
        "trigger_words": list(trigger_words),
        "review": {"reviewed": reviewed, "edited": edited,
                   "edited_share": round(edited / reviewed, 4) if reviewed else None},
        "identities": dict(sorted(identities.items())),
    }


def write_caption_report(
    out_dir: Path,
    records: list[dict[str, Any]],
    profile: str,
    min_tokens: int = 40,
    max_tokens: int = 77,
    trigger_words: Sequence[str] = (),
) -> dict[str, Any]:
    """Write the three caption report files into `out_dir`; returns the report with their paths under ``files``."""
    out_dir = Path(out_dir)
    report = {**caption_counts(records, min_tokens, max_tokens, trigger_words), "profile": profile}
    files = {name: str(out_dir / name) for name in (REPORT_JSON, REPORT_MD, TOKENS_PNG)}
    save_png(token_chart(report["tokens"], stamp=tiny_stamp(profile)), out_dir / TOKENS_PNG)
    write_text_atomic(out_dir / REPORT_MD, caption_markdown(report))
    report["files"] = files
    write_json_atomic(out_dir / REPORT_JSON, report)
    return report


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> list[str]:
    """A Markdown table; `align` has "l" or "r" per column (default: first column left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return lines


def caption_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown, linking ``caption_tokens.png``."""
    tok, review = report["tokens"], report["review"]
    share = "n/a (nothing reviewed yet)" if review["edited_share"] is None else f"{review['edited_share']:.1%}"
    lines = ["# Caption report", "", f"Model profile: **{report['profile']}**", "",
             f"{report['records']} records, {report['flagged']} flagged.", "", "## Records per status", ""]
    lines += _table(["status", "records"], report["status"].items())
    lines += ["", "## Caption length (CLIP tokens)", "",
              f"{tok['captions']} captions, mean {tok['mean']}, longest {tok['max']}; "
              f"{tok['below_min']} below {tok['min_tokens']}, {tok['above_max']} above {tok['max_tokens']}.", "",
              f"![caption length histogram]({TOKENS_PNG})", "", "## Flags per reason", ""]
    details = report["flag_details"]
    flag_rows = [(reason, count, ", ".join(f"{d} ({c})" for d, c in details.get(reason, {}).items()))
                 for reason, count in report["flags"].items()]
    lines += _table(["reason", "flags", "details"], flag_rows, "lrl") if flag_rows else ["No flags."]
    lines += ["", "## Most frequent terms", ""]
    lines += _table(["term", "count"], report["top_terms"]) if report["top_terms"] else ["No captions."]
    lines += ["", "## Review", "", f"{review['reviewed']} reviewed, {review['edited']} edited: edited share {share}.",
              "", "## Per identity", ""]
    id_rows = [(name, e["records"], e["captions"], e["flagged"]) for name, e in report["identities"].items()]
    lines += _table(["identity", "records", "captions", "flagged"], id_rows) if id_rows else ["No records."]
    return "\n".join(lines) + "\n"


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, face: Any, anchor: str) -> None:
    """Black `text` placed by a two-letter anchor (l/m/r, t/m/b), also with Pillow's bitmap fallback font."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=face)
    dx = {"l": 0, "m": (x1 - x0) / 2, "r": x1 - x0}[anchor[0]]
    dy = {"t": 0, "m": (y1 - y0) / 2, "b": y1 - y0}[anchor[1]]
    draw.text((xy[0] - dx - x0, xy[1] - dy - y0), text, fill=(0, 0, 0), font=face)


def _dashed_vline(draw: ImageDraw.ImageDraw, x: float, top: int, bottom: int, colour: tuple[int, int, int]) -> None:
    for y in range(top, bottom, 8):
        draw.line((x, y, x, min(y + 4, bottom)), fill=colour, width=2)


def token_chart(hist: dict[str, Any], stamp: str = "") -> Image.Image:
    """A bar chart of `hist` (from ``token_histogram``) with the min/max token limits marked as dashed lines."""
    width, height = CHART_SIZE
    left, right, top, bottom = 70, 20, 58, height - 50
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    small = font(12)
    draw.text((left, 10), f"Caption length in CLIP tokens: {hist['captions']} captions{stamp}", fill=(0, 0, 0),
              font=font(14))
    bins = hist["bins"]
    span = BIN_TOP + BIN_WIDTH  # the overflow bin is drawn as one more 5-token bin
    scale = (width - left - right) / span
    peak = max((b["count"] for b in bins), default=0) or 1
    draw.line((left, top, left, bottom), fill=(0, 0, 0))
    draw.line((left, bottom, width - right, bottom), fill=(0, 0, 0))
    for value in sorted({round(peak * i / 4) for i in range(5)}):  # y ticks
        y = bottom - value / peak * (bottom - top)
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        _text(draw, (left - 8, y), str(value), small, "rm")
    for b in bins:
        x0, x1 = left + b["lo"] * scale + 2, left + (b["lo"] + BIN_WIDTH) * scale - 2
        if b["count"]:
            draw.rectangle((x0, bottom - b["count"] / peak * (bottom - top), x1, bottom), fill=(70, 120, 180))
        label = f"{b['lo']}+" if b["hi"] is None else str(b["lo"])
        _text(draw, (left + b["lo"] * scale, bottom + 6), label, small, "mt")
    for name, value, colour in (("min", hist["min_tokens"], (200, 120, 0)), ("max", hist["max_tokens"], (200, 0, 0))):
        x = left + min(value, span) * scale
        _dashed_vline(draw, x, top, bottom, colour)
        draw.text((x + 4, top - 18), f"{name} {value}", fill=colour, font=small)
    _text(draw, ((left + width - right) / 2, height - 8), "CLIP tokens per caption", small, "mb")
    draw.text((8, top - 36), "captions", fill=(0, 0, 0), font=small)
    return image
