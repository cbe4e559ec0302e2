"""Caption assembly: lead first, only varying traits, real CLIP token window, deterministic dropping."""

from __future__ import annotations

import copy
import re

import pytest

from castlab.captions.text import assemble_caption, caption_from_choices, count_clip_tokens, field_order
from castlab.config import load_config
from castlab.errors import ConfigError
from castlab.models.tokenizers import clip_tokenizer

FIELDS = {
    "character": "bunny",
    "outfit": "a red scarf",
    "materials": {"skin": "soft subsurface fur", "cloth": "knitted wool", "hair": "stylised clumped hair"},
    "lighting": {"key": "soft key light", "rim": "cool rim light", "fill": "warm fill light"},
    "camera": {"shot_size": "medium shot", "angle": "low angle"},
    "view": "three-quarter view",
    "expression": "smiling",
    "action": "waving at the camera",
    "background": "a sunny meadow",
    "final_caption": "A bunny in a red scarf waves in a meadow.",
}


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny", extra={"captions": {"style": "natural"}})  # tests pick tags explicitly


def _fields(**changes: str) -> dict:
    fields = copy.deepcopy(FIELDS)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = fields
        for part in parents:
            target = target[part]
        target[leaf] = value
    return fields


def test_lead_prefix_first_and_varying_parts_in_reading_order(cfg):
    cap = assemble_caption(FIELDS, cfg, style="natural")
    lead = f"{cfg.dataset.trigger_token} {cfg.dataset.class_word}"
    assert cap.text.startswith(f"{lead}, {cfg.dataset.caption_prefix}, ")
    for phrase in ("three-quarter view", "smiling", "waving at the camera", "wearing a red scarf",
                   "soft key light", "medium shot", "in a sunny meadow"):  # fmt: skip
        assert phrase in cap.text
    assert cap.text.index("three-quarter view") < cap.text.index("smiling") < cap.text.index("in a sunny meadow")
    assert cap.parts[0] == "view" and "final_caption" not in cap.parts and "character" not in cap.parts
    assert "bunny" not in cap.text  # the trigger stands for the character
    assert not cap.dropped and not cap.long


def test_invariant_fields_never_appear(cfg):
    invariant = cfg.captions.invariant_fields
    assert invariant
    for style in ("natural", "tags"):
        cap = assemble_caption(FIELDS, cfg, style=style)
        assert not set(invariant) & set(cap.parts)
        assert "subsurface" not in cap.text and "clumped" not in cap.text
    # even when the config lists them as parts
    order = [*cfg.captions.field_order, "materials.skin"]
    cfg2 = load_config(profile="tiny", extra={"captions": {"field_order": order}})
    assert "subsurface" not in assemble_caption(FIELDS, cfg2).text


def test_outfit_only_when_it_differs_from_usual(cfg):
    assert "red scarf" in assemble_caption(FIELDS, cfg).text
    assert "red scarf" in assemble_caption(FIELDS, cfg, usual={"outfit": "blue overalls"}).text
    same = assemble_caption(FIELDS, cfg, usual={"outfit": "Red  Scarf."})
    assert "scarf" not in same.text and "outfit" not in same.parts


def test_token_count_is_the_real_clip_tokenizers(cfg):
    tok = clip_tokenizer()
    for style in ("natural", "tags"):
        cap = assemble_caption(FIELDS, cfg, style=style)
        assert cap.tokens == len(tok(cap.text).input_ids) == count_clip_tokens(cap.text)
    assert count_clip_tokens("") == 2  # BOS + EOS
    assert count_clip_tokens("cstlb character") == len(tok("cstlb character").input_ids)


def test_long_caption_drops_least_important_parts_first(cfg):
    long = _fields(background="a " + "very long and winding mountain road " * 6,
                   materials__cloth="glossy " * 20 + "plastic")  # fmt: skip
    cap = assemble_caption(long, cfg)
    assert cap.tokens <= cfg.dataset.caption_max_tokens and not cap.long
    assert cap.tokens == count_clip_tokens(cap.text)
    order = field_order(cfg)
    assert cap.dropped, "expected parts to be dropped"
    # dropped in reverse importance, and every kept part is more important than every dropped one
    assert cap.dropped == sorted(cap.dropped, key=order.index, reverse=True)
    assert max(order.index(p) for p in cap.parts) < min(order.index(p) for p in cap.dropped)
    assert cap.dropped[0] == order[-1] and "background" in cap.dropped
    assert "mountain" not in cap.text and "glossy" not in cap.text
    assert assemble_caption(long, cfg) == cap  # deterministic


def test_one_huge_part_is_cut_at_a_word_boundary(cfg):
    words = [f"word{i}" for i in range(120)]
    cap = assemble_caption(_fields(view="unknown", expression=" ".join(words)), cfg)
    assert cap.parts == ["expression"] and cap.tokens <= cfg.dataset.caption_max_tokens
    kept = cap.text.split(", ")[-1].split()
    assert kept and kept == words[: len(kept)]  # whole words, in order
    assert "action" in cap.dropped and "expression" not in cap.dropped


def test_short_caption_is_kept_and_marked(cfg):
    sparse = {"view": "side view", "expression": "unknown", "lighting": {"key": "unknown"}}
    cap = assemble_caption(sparse, cfg)
    assert cap.short and cap.tokens < cfg.dataset.caption_min_tokens
    assert cap.text.endswith(", side view") and cap.parts == ["view"]
    assert not assemble_caption(FIELDS, cfg).short


def test_tags_style_has_no_articles_and_differs(cfg):
    natural = assemble_caption(FIELDS, cfg, style="natural")
    tags = assemble_caption(FIELDS, cfg, style="tags")
    assert tags.text != natural.text and tags.parts == natural.parts
    assert not re.search(r"\b(a|an|the)\b", tags.text)
    assert "wearing" not in tags.text and ", red scarf," in tags.text and "sunny meadow" in tags.text
    assert tags.text == tags.text.lower()
    assert "cstlb character" in tags.text.split(", ")[0]


def test_unknown_and_empty_values_never_appear(cfg):
    fields = _fields(view="unknown", outfit="unknown outfit", background="", action="Not sure",
                     lighting__rim="unknown", camera__angle="unknown")  # fmt: skip
    for style in ("natural", "tags"):
        cap = assemble_caption(fields, cfg, style=style)
        assert "unknown" not in cap.text.lower() and "not sure" not in cap.text.lower()
        assert not {"view", "outfit", "background", "action", "lighting.rim", "camera.angle"} & set(cap.parts)
        assert ", ," not in cap.text and not cap.text.endswith(", ")


def test_caption_from_choices_rebuilds_from_corrections(cfg):
    cap = caption_from_choices(FIELDS, {"view": "back view", "camera.shot_size": "full shot"}, cfg)
    assert "back view" in cap.text and "full shot" in cap.text
    assert "three-quarter view" not in cap.text and "medium shot" not in cap.text
    assert FIELDS["view"] == "three-quarter view"  # base untouched
    with pytest.raises(ValueError):
        caption_from_choices(FIELDS, {"view": "sideways"}, cfg)
    with pytest.raises(ValueError):
        caption_from_choices(FIELDS, {"lighting.moon": "bright"}, cfg)


def test_config_errors(cfg):
    with pytest.raises(ConfigError, match="style"):
        assemble_caption(FIELDS, cfg, style="prose")
    for bad in ("final_caption", "character", "lighting.moon"):
        broken = load_config(profile="tiny", extra={"captions": {"field_order": ["view", bad]}})
        with pytest.raises(ConfigError, match="field_order"):
            assemble_caption(FIELDS, broken)


def test_auto_style_follows_the_base_model():
    from castlab.captions.text import resolve_style

    assert resolve_style(load_config(profile="tiny")) == "tags"  # tiny SD1.5
    sdxl = load_config(profile="full", extra={"models": {"full": {"base_model": {"arch": "sdxl"}}}})
    assert resolve_style(sdxl) == "natural" and resolve_style(sdxl, "tags") == "tags"
    with pytest.raises(ConfigError, match="captions.style"):
        resolve_style(sdxl, "poetry")
