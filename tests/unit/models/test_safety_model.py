from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from castlab.config import load_config
from castlab.errors import ConfigError
from castlab.models.safety import (
    TINY_ARCH,
    TINY_CONFIG,
    ClassifierScorer,
    ZeroShotScorer,
    load_safety_scorer,
)


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny")


@pytest.fixture(scope="module")
def scorer(cfg) -> ClassifierScorer:
    loaded = load_safety_scorer(cfg)
    assert isinstance(loaded, ClassifierScorer)
    return loaded


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40 + 12 * i, 64, 3), dtype=np.uint8)) for i in range(n)]


def full_cfg(**safety):
    return load_config(profile="full", extra={"models": {"full": {"safety": safety}}})


def test_tiny_is_a_small_stamped_vit_with_two_labels(scorer, cfg):
    assert type(scorer.model).__name__ == "ViTForImageClassification"
    assert scorer.model.config.hidden_size == TINY_CONFIG["hidden_size"]
    assert scorer.model.config.id2label == {0: "normal", 1: "nsfw"} and scorer.unsafe_ids == [1]
    assert sum(p.numel() for p in scorer.model.parameters()) < 100_000
    assert scorer.model_version.startswith(f"{TINY_ARCH}-") and scorer.model_version.endswith(f"-s{cfg.seed}")


def test_tiny_scores_are_probabilities_seeded_and_kept_at_the_default_bar(scorer, cfg):
    ims = [*images(3), images(1, 4)[0].convert("L"), images(1, 5)[0].convert("RGBA")]
    scores = scorer.score(ims)
    assert len(scores) == 5 and all(0.0 < s < 1.0 for s in scores)
    assert len(set(scores)) > 1  # the images differ, so do the scores
    # random weights hover near 0.5: the default threshold keeps every frame under the tiny profile
    assert all(s < float(cfg.safety.threshold) for s in scores)
    assert scorer.score([]) == []
    assert scorer.score(ims[:2]) == pytest.approx(scores[:2], abs=1e-6)  # batch size does not change a score
    assert load_safety_scorer(cfg).score(ims) == pytest.approx(scores, abs=1e-6)
    other = load_safety_scorer(load_config(profile="tiny", extra={"seed": int(cfg.seed) + 1}))
    assert other.model_version != scorer.model_version
    assert other.score(ims) != pytest.approx(scores, abs=1e-4)


def test_unsafe_labels_must_be_labels_of_the_model():
    cfg = load_config(profile="tiny", extra={"safety": {"unsafe_labels": ["porn"]}})
    with pytest.raises(ConfigError, match=r"safety\.unsafe_labels.*porn.*normal, nsfw"):
        load_safety_scorer(cfg)


def test_unknown_tiny_arch_names_the_setting():
    cfg = load_config(profile="tiny", extra={"models": {"tiny": {"safety": {"arch": "vit-huge"}}}})
    with pytest.raises(ConfigError, match=r"models\.tiny\.safety\.arch.*vit-huge"):
        load_safety_scorer(cfg)


def test_missing_full_model_is_a_config_error_not_a_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        load_safety_scorer(full_cfg(model="castlab-test/no-such-nsfw-classifier", local_files_only=True))
    message = str(err.value)
    assert "models.full.safety.model" in message and "castlab-test/no-such-nsfw-classifier" in message
    assert "local_files_only" in message and "never falls back to random weights" in message


def test_full_model_unset_or_missing_folder_names_the_setting(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"models\.full\.safety\.model is not set.*safety\.enabled: false"):
        load_safety_scorer(full_cfg(model=None))
    with pytest.raises(ConfigError, match=r"models\.full\.safety\.model: folder .*nope does not exist"):
        load_safety_scorer(full_cfg(model=str(tmp_path / "nope")))


def test_full_loads_a_local_classifier_folder_from_safetensors(scorer, tmp_path: Path):
    folder = tmp_path / "nsfw-classifier"
    scorer.model.save_pretrained(folder)
    scorer.processor.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    full = load_safety_scorer(full_cfg(model=str(folder), device="cpu"))
    assert isinstance(full, ClassifierScorer) and full.model_version == "nsfw-classifier"
    assert not full.model_version.startswith("tiny-")
    assert full.score(images(2, 7)) == pytest.approx(scorer.score(images(2, 7)), abs=1e-6)


def test_clip_backend_scores_zero_shot_with_the_embedder_role(cfg):
    prompts = {"clip_unsafe_prompts": ["unsafe one", "unsafe two"], "clip_safe_prompts": ["safe"]}
    clip = load_safety_scorer(load_config(profile="tiny", extra={"safety": {"backend": "clip", **prompts}}))
    assert isinstance(clip, ZeroShotScorer)
    assert clip.model_version.startswith("tiny-openclip-") and "+zeroshot-" in clip.model_version
    assert clip.logit_scale == pytest.approx(float(clip.embedder.model.logit_scale.detach().exp()))  # the model's own
    ims = images(3)
    scores = clip.score(ims)
    logits = clip.logit_scale * clip.embedder.encode_images(ims) @ clip.embedder.encode_texts(
        ["unsafe one", "unsafe two", "safe"]).T
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert scores == pytest.approx(probs[:, :2].sum(axis=1).tolist(), abs=1e-5)  # both unsafe prompts count
    default = load_safety_scorer(load_config(profile="tiny", extra={"safety": {"backend": "clip"}}))
    assert default.model_version != clip.model_version  # the prompts are part of the version
