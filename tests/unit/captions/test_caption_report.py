import json
from pathlib import Path

import numpy as np
from PIL import Image

from castlab.captions.report import (
    REPORT_JSON,
    REPORT_MD,
    TOKENS_PNG,
    token_histogram,
    top_terms,
    write_caption_report,
)

TRIGGER = ("sks", "woman")


def _record(row_id: str, identity: str | None = "mia", status: str = "ok", caption: str | None = None,
            tokens: int | None = None, flags: tuple[str, ...] = (), reviewed: str | None = None,
            edited: bool | None = None) -> dict:
    return {"row_id": row_id, "identity": identity, "status": status, "error": None if status == "ok" else "x",
            "fields": {} if status == "ok" else None, "caption": caption, "tokens": tokens, "dropped": [],
            "flags": list(flags), "clip_score": 0.3, "style": "natural", "model_version": "tiny-captioner-1",
            "reviewed_caption": reviewed, "edited": edited}


def _records() -> list[dict]:
    return [
        _record("r1", caption="sks woman with red hair, red jacket and a blue scarf", tokens=12,
                flags=("hallucination_term:logo", "low_clip_score"), reviewed="sks woman with red hair", edited=True),
        _record("r2", caption="sks woman in a red jacket, 3 buttons", tokens=42,
                flags=("hallucination_term:logo", "uncertain:view"), reviewed="sks woman in a red jacket, 3 buttons",
                edited=False),
        _record("r3", identity="tom", caption="Tom's blue jacket, smiling", tokens=79,
                flags=("hallucination_term:text",)),
        _record("r4", identity="tom", caption="blue jacket", tokens=85),
        _record("r5", identity="tom", status="schema_error"),
        _record("r6", status="image_error"),
        _record("r7", identity=None, status="no_identity"),
    ]


def test_report_counts(tmp_path: Path):
    report = write_caption_report(tmp_path, _records(), "full", trigger_words=TRIGGER)
    data = json.loads((tmp_path / REPORT_JSON).read_text())
    assert data["records"] == 7
    assert data["status"] == {"ok": 4, "schema_error": 1, "image_error": 1, "no_identity": 1}
    bins = {b["lo"]: b["count"] for b in data["tokens"]["bins"]}
    assert len(bins) == 17 and sum(bins.values()) == 4
    assert bins[10] == 1 and bins[40] == 1 and bins[75] == 1 and bins[80] == 1 and bins[0] == 0
    assert data["tokens"]["below_min"] == 1 and data["tokens"]["above_max"] == 2
    assert data["flags"] == {"hallucination_term": 3, "low_clip_score": 1, "uncertain": 1}
    assert data["flag_details"] == {"hallucination_term": {"logo": 2, "text": 1}, "uncertain": {"view": 1}}
    assert data["flagged"] == 3
    assert data["review"] == {"reviewed": 2, "edited": 1, "edited_share": 0.5}
    assert data["identities"] == {
        "(no identity)": {"records": 1, "captions": 0, "flagged": 0},
        "mia": {"records": 3, "captions": 2, "flagged": 2},
        "tom": {"records": 3, "captions": 2, "flagged": 1},
    }
    terms = dict(data["top_terms"])
    assert terms["jacket"] == 3 and terms["blue"] == 2 and terms["red"] == 2 and terms["tom"] == 1
    assert "scarf" not in terms  # the reviewed caption replaces the prediction
    assert not {"sks", "woman", "a", "with", "in", "and", "3"} & set(terms)
    assert data["profile"] == "full"
    assert report["files"] == {name: str(tmp_path / name) for name in (REPORT_JSON, REPORT_MD, TOKENS_PNG)}
    markdown = (tmp_path / REPORT_MD).read_text()
    assert f"]({TOKENS_PNG})" in markdown and "| hallucination_term | 3 | logo (2), text (1) |" in markdown
    assert "edited share 50.0%" in markdown


def test_top_terms_order_and_exclusions():
    texts = ["The sks woman wears a green coat.", "Green coat, green boots; 2 boots!", "Sks WOMAN's hat"]
    assert top_terms(texts, exclude=TRIGGER) == [("green", 3), ("boots", 2), ("coat", 2), ("hat", 1), ("wears", 1)]
    assert top_terms(texts, n=4) == [("green", 3), ("boots", 2), ("coat", 2), ("sks", 2)]


def test_token_histogram_limits():
    hist = token_histogram([0, 4, 5, 39, 40, 77, 78, 200], min_tokens=40, max_tokens=77)
    counts = [b["count"] for b in hist["bins"]]
    assert counts[0] == 2 and counts[1] == 1 and counts[7] == 1 and counts[8] == 1 and counts[15] == 2
    assert counts[16] == 1 and hist["below_min"] == 4 and hist["above_max"] == 2


def test_png_valid_and_tiny_stamp_differs(tmp_path: Path):
    write_caption_report(tmp_path / "full", _records(), "full")
    write_caption_report(tmp_path / "tiny", _records(), "tiny")
    with Image.open(tmp_path / "full" / TOKENS_PNG) as full, Image.open(tmp_path / "tiny" / TOKENS_PNG) as tiny:
        assert full.format == "PNG" and full.width > 0 and full.height > 0
        assert full.size == tiny.size
        a, b = np.asarray(full.convert("RGB")), np.asarray(tiny.convert("RGB"))
    assert (a != b).any()


def test_nothing_reviewed_and_empty(tmp_path: Path):
    records = [_record("r1", caption="blue jacket", tokens=10)]
    assert write_caption_report(tmp_path / "a", records, "full")["review"]["edited_share"] is None
    report = write_caption_report(tmp_path / "b", [], "tiny")
    data = json.loads((tmp_path / "b" / REPORT_JSON).read_text())
    assert data["records"] == 0 and data["status"] == {"ok": 0, "schema_error": 0, "image_error": 0, "no_identity": 0}
    assert data["review"] == {"reviewed": 0, "edited": 0, "edited_share": None}
    assert data["top_terms"] == [] and data["flags"] == {} and data["identities"] == {}
    assert all(b["count"] == 0 for b in data["tokens"]["bins"]) and data["tokens"]["mean"] is None
    assert Path(report["files"][TOKENS_PNG]).stat().st_size > 0 and (tmp_path / "b" / REPORT_MD).is_file()
