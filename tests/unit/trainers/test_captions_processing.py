import random

import pytest

from trainers.captions import CaptionSettings, caption_variants_are_static, process_caption

CAPTION = "hero, red coat, smiling, outdoors, night, full body, looking at viewer"
TAGS = [t.strip() for t in CAPTION.split(",")]


def run(caption: str, epoch: int = 1, seed: int = 0, **options) -> str:
    return process_caption(caption, CaptionSettings(**options), random.Random(seed), epoch)


def test_static_settings_keep_the_first_line_and_apply_prefix_suffix_and_secondary_separator():
    s = CaptionSettings(caption_prefix="cstlb", caption_suffix="3d", secondary_separator=";;;")
    assert caption_variants_are_static(s)
    assert process_caption("a;;;b, c\nsecond line", s, random.Random(0), 1) == "cstlb a,b, c"
    assert not caption_variants_are_static(CaptionSettings(shuffle_caption=True))
    assert not caption_variants_are_static(CaptionSettings(caption_dropout_every_n_epochs=2))
    assert not caption_variants_are_static(CaptionSettings(enable_wildcard=True))


def test_keep_tokens_stay_in_place_while_the_rest_shuffle():
    outs = {run(CAPTION, seed=seed, shuffle_caption=True, keep_tokens=2) for seed in range(20)}
    assert len(outs) > 5
    for out in outs:
        tags = out.split(", ")
        assert tags[:2] == TAGS[:2] and sorted(tags[2:]) == sorted(TAGS[2:])


def test_keep_tokens_separator_fixes_head_and_tail():
    caption = "hero, red coat ||| a, b, c, d, e ||| masterpiece, best"
    for seed in range(10):
        tags = run(caption, seed=seed, shuffle_caption=True, keep_tokens=5, keep_tokens_separator="|||").split(", ")
        assert tags[:2] == ["hero", "red coat"] and tags[-2:] == ["masterpiece", "best"]
        assert sorted(tags[2:-2]) == ["a", "b", "c", "d", "e"]


def test_custom_separator_splits_tokens_and_output_is_comma_joined_like_sd_scripts():
    out = run("x; y; z", seed=3, shuffle_caption=True, caption_separator=";")
    assert sorted(out.split(", ")) == ["x", "y", "z"]


def test_dropout_rate_one_gives_empty_caption():
    assert all(run(CAPTION, seed=s, caption_dropout_rate=1.0) == "" for s in range(5))
    assert run(CAPTION, caption_dropout_rate=0.0) == CAPTION


def test_every_n_epochs_drops_exactly_on_those_epochs():
    dropped = [e for e in range(1, 13) if run(CAPTION, epoch=e, caption_dropout_every_n_epochs=3) == ""]
    assert dropped == [3, 6, 9, 12]


def test_tag_dropout_never_drops_kept_tokens():
    for seed in range(30):
        tags = run(CAPTION, seed=seed, keep_tokens=1, caption_tag_dropout_rate=0.9).split(", ")
        assert tags[0] == "hero" and set(tags[1:]) <= set(TAGS[1:])
    assert run(CAPTION, keep_tokens=1, caption_tag_dropout_rate=1.0) == "hero"


def test_seeded_reproducibility():
    options = {"shuffle_caption": True, "caption_tag_dropout_rate": 0.3, "caption_dropout_rate": 0.2}
    first = [run(CAPTION, seed=s, **options) for s in range(10)]
    assert first == [run(CAPTION, seed=s, **options) for s in range(10)]
    assert len(set(first)) > 3


def test_wildcards_choose_one_option_and_keep_escaped_braces():
    outs = {run("{cat|dog} on {{mat}}\nbird on {{mat}}", seed=s, enable_wildcard=True) for s in range(40)}
    assert outs == {"cat on {mat}", "dog on {mat}", "bird on {mat}"}


def test_token_warmup_grows_the_flexible_tokens():
    s = CaptionSettings(keep_tokens=1, token_warmup_min=1, token_warmup_step=4)
    lengths = [len(process_caption(CAPTION, s, random.Random(0), 1, step=k).split(", ")) for k in range(6)]
    assert lengths == [2, 3, 4, 5, 7, 7]  # 1 kept + floor(step * (6 - 1) / 4) + 1 flexible, full from step 4
    with pytest.raises(ValueError, match="max_train_steps"):
        process_caption(CAPTION, CaptionSettings(token_warmup_step=0.5), random.Random(0), 1)


def test_from_subset_falls_back_to_general_then_default_and_validates():
    s = CaptionSettings.from_subset({"keep_tokens": 1}, {"keep_tokens": 3, "shuffle_caption": True})
    assert (s.keep_tokens, s.shuffle_caption, s.caption_separator, s.token_warmup_min) == (1, True, ",", 1)
    with pytest.raises(ValueError, match="caption_dropout_rate"):
        CaptionSettings.from_subset({"caption_dropout_rate": 1.5})
    with pytest.raises(ValueError, match="keep_tokens"):
        CaptionSettings.from_subset({}, {"keep_tokens": "2"})
