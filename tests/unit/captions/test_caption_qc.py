"""Caption QC: neutralising uncertain fields, identity majorities, each flag on a crafted case, priority."""

from __future__ import annotations

import copy

import pytest

from castlab.captions.qc import flag_reason, identity_majorities, min_clip_score, neutralise, qc_flags, review_priority
from castlab.captions.text import assemble_caption
from castlab.config import load_config

FIELDS = {
    "outfit": "a red scarf",
    "materials": {"skin": "soft fur", "cloth": "knitted wool", "hair": "fluffy tuft"},
    "lighting": {"key": "soft key light", "rim": "cool rim light", "fill": "warm fill light"},
    "camera": {"shot_size": "medium shot", "angle": "low angle"},
    "view": "three-quarter view",
    "expression": "smiling",
    "action": "waving at the camera",
    "background": "a sunny meadow in spring with tall grass and flowers",
    "final_caption": "A bunny in a red scarf waves in a meadow.",
}
KNOWN = ["Bunny", "Fox", "character_3", "Bo", "Bo Peep"]
USUAL = {"materials.skin": "soft fur", "materials.hair": "fluffy tuft"}


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny", extra={"models": {"tiny": {"captioner": {"min_clip_score": 0.2}}}})


def _record(character: str = "Bunny", **changes: str) -> dict:
    record = {"character": character, **copy.deepcopy(FIELDS)}
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = record
        for part in parents:
            target = target[part]
        target[leaf] = value
    return record


def _flags(cfg, record, identity="Bunny", usual=USUAL, clip_score=0.3, caption=None):
    caption = caption or assemble_caption(record, cfg, usual=usual)
    return qc_flags(record, identity=identity, known_identities=KNOWN, usual=usual, clip_score=clip_score,
                    caption=caption, cfg=cfg)  # fmt: skip


def test_clean_record_has_no_flags(cfg):
    record = _record()
    assert not assemble_caption(record, cfg).short
    assert _flags(cfg, record) == []
    assert review_priority([]) == 0


def test_neutralise_replaces_and_flags_without_mutating(cfg):
    fields = copy.deepcopy(FIELDS)
    fields.update(expression="Unknown", action="not sure, maybe jumping", view="unknown", outfit="n/a")
    fields["lighting"] = {**fields["lighting"], "key": "unknown"}
    before = copy.deepcopy(fields)
    out, flags = neutralise(fields, cfg)
    assert fields == before
    neutral = cfg.captions.neutral_terms
    assert out["expression"] == neutral["expression"] and out["action"] == neutral["action"]
    assert out["view"] == neutral["view"] and out["outfit"] == "" and out["lighting"]["key"] == neutral["lighting.key"]
    assert sorted(flags) == ["uncertain:action", "uncertain:expression", "uncertain:lighting.key", "uncertain:outfit",
                             "uncertain:view"]  # fmt: skip
    assert out["background"] == FIELDS["background"]
    # a word that merely contains a marker is not one ("nonexistent" vs "none"); a missing neutral term = ""
    clean, none = neutralise({**FIELDS, "background": "a nonexistent city"}, cfg)
    assert none == [] and clean["background"] == "a nonexistent city"
    cfg2 = load_config(profile="tiny", extra={"captions": {"neutral_terms": {"expression": None}}})
    assert neutralise({"expression": "unsure"}, cfg2)[0]["expression"] == ""


def test_character_mismatch(cfg):
    assert "character_mismatch" in _flags(cfg, _record("Fox"))
    assert "character_mismatch" not in _flags(cfg, _record("  bunny "))  # normalised names
    named = _record(final_caption="Fox and a bunny in a meadow.")
    assert "character_mismatch" in _flags(cfg, named)
    default_name = _record(action="hugging character_3")
    assert "character_mismatch" in _flags(cfg, default_name)
    # whole words only, and the own name does not count as a shorter other name
    assert "character_mismatch" not in _flags(cfg, _record(action="foxtrot dancing"))
    bo_peep = _record("Bo Peep", final_caption="Bo Peep waves.")
    assert "character_mismatch" not in _flags(cfg, bo_peep, identity="Bo Peep")


def test_invariant_disagrees(cfg):
    odd = _record(materials__skin="glossy scales")
    assert _flags(cfg, odd) == ["invariant_disagrees:materials.skin"]
    assert _flags(cfg, _record(materials__skin="Soft fur.")) == []
    assert _flags(cfg, odd, usual={}) == []  # no majority → no flag
    assert _flags(cfg, _record(materials__skin="")) == []  # neutral/empty is not compared


def test_identity_majorities_need_three(cfg):
    rows = [{"character": "Bunny", "materials": {"skin": s}} for s in ("Soft fur", "soft fur ", "a soft fur", "scales")]
    rows += [{"character": "fox", "materials": {"skin": s}} for s in ("red fur", "red fur", "unknown", "")]
    rows += [{"character": "Owl", "materials.skin": s} for s in ["grey feathers", "brown feathers"] * 3]
    maj = identity_majorities(rows, ["materials.skin"], cfg=cfg)
    assert maj["Bunny"] == {"materials.skin": "soft fur"}  # keyed by the name as given
    assert "fox" not in maj  # only 2 countable captions
    assert maj["Owl"] == {"materials.skin": "brown feathers"}  # 3-3 tie → alphabetical
    assert identity_majorities(rows, ["materials.skin"], min_count=2, cfg=cfg)["fox"] == {"materials.skin": "red fur"}
    assert identity_majorities(rows, ["materials.skin"], min_count=4, cfg=cfg) == {}
    variants = [{"character": c, "materials": {"skin": "soft fur"}} for c in ("Bunny", " bunny", "BUNNY")]
    assert identity_majorities(variants, ["materials.skin"]) == {"Bunny": {"materials.skin": "soft fur"}}
    two = variants[:2]
    assert identity_majorities(two, ["materials.skin"], cfg=cfg) == {}


def test_low_clip_score(cfg):
    assert min_clip_score(cfg) == pytest.approx(0.2)
    assert "low_clip_score" in _flags(cfg, _record(), clip_score=0.1)
    assert "low_clip_score" not in _flags(cfg, _record(), clip_score=0.25)
    assert "low_clip_score" not in _flags(cfg, _record(), clip_score=None)
    off = load_config(profile="tiny", extra={"models": {"tiny": {"captioner": {"min_clip_score": None}}}})
    assert min_clip_score(off) is None and "low_clip_score" not in _flags(off, _record(), clip_score=0.0)
    fallback = load_config(profile="full", extra={"captions": {"min_clip_score": 0.4}})
    if "min_clip_score" not in fallback.model("captioner"):
        assert min_clip_score(fallback) == pytest.approx(0.4)


def test_hallucination_terms(cfg):
    flags = _flags(cfg, _record(background="a wall with a big logo", final_caption="A photo of a bunny."))
    assert "hallucination_term:logo" in flags and "hallucination_term:photo" in flags
    assert "hallucination_term:two characters" in _flags(cfg, _record(action="hugging, two  characters visible"))
    assert not any(f.startswith("hallucination") for f in _flags(cfg, _record(action="texting a friend")))


def test_too_short_and_too_long(cfg):
    record = _record(background="unknown", expression="unknown", action="unknown", outfit="unknown", view="unknown",
                     materials__cloth="unknown", lighting__key="unknown")  # fmt: skip
    short = assemble_caption(record, cfg)
    assert short.short and "too_short" in _flags(cfg, record, caption=short)
    from dataclasses import replace

    assert "too_long" in _flags(cfg, _record(), caption=replace(assemble_caption(_record(), cfg), long=True))


def test_flags_sorted_unique_and_priority(cfg):
    record = _record("Fox", final_caption="Fox with a logo and another logo.", materials__skin="scales")
    flags = _flags(cfg, record, clip_score=0.0)
    assert flags == sorted(set(flags)) and flags.count("character_mismatch") == 1
    assert flag_reason("hallucination_term:logo") == "hallucination_term" and flag_reason("too_short") == "too_short"
    mismatch = review_priority(["character_mismatch"])
    mid = [review_priority([f]) for f in ("invariant_disagrees:materials.skin", "hallucination_term:logo",
                                          "low_clip_score")]  # fmt: skip
    low = [review_priority([f]) for f in ("uncertain:view", "too_short")]
    assert mismatch > max(mid) and min(mid) > max(low) and min(low) > 0
    assert review_priority(["uncertain:view", "too_short"]) > review_priority(["uncertain:view"])
    assert review_priority(["character_mismatch"]) > review_priority([f"uncertain:{i}" for i in range(20)])
