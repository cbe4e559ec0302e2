"""A type's dataset from prepared records: the common contract (images, captions, kohya layout, TOMLs, metadata
with every reject and its reason, report), balanced labels, reviewed captions first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scene_run import scene_run

from castlab.config import load_config
from castlab.dataset import run as build_datasets
from castlab.dataset.kohya import read_toml
from castlab.errors import InputError
from castlab.typed.recipes import type_trigger
from castlab.typed.stage import write_records


def prepared_run(run: Path, labels: list[str], rejected: dict[int, str] | None = None,
                 reviews: dict[int, dict] | None = None) -> None:
    """A scene run with hand-written lighting records: frame k labelled `labels[k]` (time_of_day), distinct
    embeddings (no near-duplicates), `rejected[k]` a preparation reject reason, `reviews[k]` a review."""
    scene_run(run, scenes=1, per_scene=len(labels))
    records, ids = [], []
    for k, label in enumerate(labels):
        record = {"row_id": f"frame:vid:{k}", "type": "lighting", "status": "ok", "reason": None, "detail": None,
                  "image": str(run / "frames" / f"vid_{k}.png"), "source": None, "video_id": "vid",
                  "shot_id": f"s{k % 4}", "frame_index": k, "quality": 0.9, "model_version": "tiny-test",
                  "fields": {"setting": "indoor", "time_of_day": label, "weather": "clear", "key": "soft key light",
                             "rim": "unknown", "fill": "unknown", "final_caption": "x"},
                  "labels": {"time_of_day": label, "setting": "indoor", "luma_key": "mid-key"},
                  "caption_pred": f"{label}, indoor"}
        if k in (rejected or {}):
            record.update(status="rejected", reason=rejected[k], detail=f"{rejected[k]} on purpose")
        else:
            ids.append(record["row_id"])
        if k in (reviews or {}):
            record["review"] = reviews[k]
        records.append(record)
    write_records(run, "lighting", records)
    vectors = np.eye(len(ids), 16, dtype=np.float32)
    np.savez(run / "lighting" / "embeddings.npz", row_ids=np.asarray(ids), clip=vectors)


def make_cfg(**lighting):
    return load_config(profile="tiny", extra={"dataset": {"resolution": 128},
                                              "types": {"lighting": {"target_size_min": 2, **lighting}}})


def test_a_type_dataset_has_the_common_contract_and_balanced_labels(workspace):
    run = workspace / "runs" / "r1"
    labels = ["day"] * 6 + ["night"] * 2 + ["dusk"]
    review = {"state": "reviewed", "labels": {"time_of_day": "night"}, "caption": "moonlit kitchen, blue light",
              "edited": True}
    prepared_run(run, labels, rejected={8: "low_quality"}, reviews={7: review})
    cfg = make_cfg(target_size_max=4)
    result = build_datasets([run], cfg, workspace / "datasets", dataset_type="lighting")
    summary = result["datasets"]["lighting"]
    meta = json.loads(Path(summary["metadata"]).read_text())
    assert meta["type"] == "lighting" and meta["balance"] == "time_of_day" and meta["profile"] == "tiny"
    assert meta["views"] == {"day": 2, "night": 2}  # equal shares of what is there, the rest rejected by quota
    codes = {r["row_id"]: r["code"] for r in meta["rejected"]}
    assert codes["frame:vid:8"] == "low_quality"  # rejected at preparation, listed with its reason
    assert sorted(c for c in codes.values() if c == "label_quota") == ["label_quota"] * 4
    assert meta["counts"]["candidates"] == 9 and len(meta["images"]) + len(meta["rejected"]) == 9
    trigger = type_trigger("lighting", cfg)
    lead = f"{trigger.class_tokens}, {cfg.types.lighting.medium}"
    by_row = {e["row_id"]: e for e in meta["images"]}
    assert all(e["caption"].startswith(lead) for e in meta["images"])
    assert by_row["frame:vid:7"]["caption"] == f"{lead}, moonlit kitchen, blue light"
    assert by_row["frame:vid:7"]["caption_source"] == "reviewed"
    assert {e["caption_source"] for r, e in by_row.items() if r != "frame:vid:7"} == {"predicted"}
    out = Path(summary["out_dir"])
    for entry in meta["images"]:
        image = Image.open(out / entry["image"])
        assert image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255)  # whole image learnt
        assert (out / entry["caption_file"]).read_text().strip() == entry["caption"]
    kohya = Path(summary["kohya_dir"])
    assert kohya.name.endswith(f"_{trigger.class_tokens}") and len(list(kohya.glob("*.png"))) == summary["train"]
    subset = read_toml(out / "dataset_config.toml")["datasets"][0]["subsets"][0]
    assert subset["image_dir"] == str(kohya) and subset["class_tokens"] == trigger.class_tokens
    assert (out / "dataset_report.md").is_file() and (out / "contact_sheet.png").is_file()


def test_unprepared_runs_and_all_rejected_say_what_to_do(workspace):
    run = workspace / "runs" / "bare"
    scene_run(run, scenes=1, per_scene=2)
    with pytest.raises(InputError, match="castlab prepare .* --type background"):
        build_datasets([run], make_cfg(), workspace / "d1", dataset_type="background")
    gone = workspace / "runs" / "gone"
    prepared_run(gone, ["day", "day"], rejected={0: "character_score", 1: "low_quality"})
    with pytest.raises(InputError, match=r"no lighting candidate passed preparation \(2 rejected: character_score, "
                                         r"low_quality\)"):
        build_datasets([gone], make_cfg(), workspace / "d2", dataset_type="lighting")


def test_type_triggers_are_rare_stable_or_configured():
    from castlab.dataset.triggers import is_rare_token

    cfg = load_config(profile="tiny")
    derived = type_trigger("style", cfg)
    assert derived.source == "derived" and is_rare_token(derived.token) and derived.class_word == "style"
    assert type_trigger("style", cfg) == derived and type_trigger("background", cfg).token != derived.token
    configured = type_trigger("style", cfg.with_overrides({"types": {"style": {"trigger": "pxrstyle"}}}))
    assert configured.token == "pxrstyle" and configured.source == "config"
