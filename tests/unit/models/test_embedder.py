import numpy as np
import pytest
from PIL import Image

from castlab.config import load_config
from castlab.errors import ConfigError
from castlab.models.embedder import Embedder, load_embedder


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny")


@pytest.fixture(scope="module")
def embedder(cfg) -> Embedder:
    return load_embedder(cfg)


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8)) for i in range(n)]


def test_tiny_is_stamped_and_uses_the_configured_arch(embedder, cfg):
    arch = cfg.model("embedder").arch
    assert embedder.model_version.startswith(f"tiny-openclip-{arch}-")
    assert sum(p.numel() for p in embedder.model.parameters()) < 10_000_000


def test_embeddings_are_unit_vectors(embedder):
    img = embedder.encode_images(images(3) + [images(1)[0].convert("RGBA")])
    txt = embedder.encode_texts(["a cat", "cstlb character", "", "x"])
    assert img.shape == (4, embedder.dim) and txt.shape == (4, embedder.dim)
    assert np.allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(img[0], img[1]) and not np.allclose(txt[0], txt[1])
    assert embedder.encode_images([]).shape == (0, embedder.dim)


def test_clip_t_is_pairwise_cosine(embedder):
    ims, texts = images(3), ["one", "two", "three"]
    scores = embedder.clip_t(ims, texts)
    expected = np.sum(embedder.encode_images(ims) * embedder.encode_texts(texts), axis=1)
    assert len(scores) == 3 and np.allclose(scores, expected, atol=1e-6)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    with pytest.raises(ValueError, match="one text per image"):
        embedder.clip_t(ims, texts[:2])


def test_seeded_weights(embedder, cfg):
    ims = images(2)
    same = load_embedder(cfg)
    assert same.model_version == embedder.model_version
    assert np.array_equal(same.encode_images(ims), embedder.encode_images(ims))
    other = load_embedder(load_config(profile="tiny", extra={"seed": int(cfg.seed) + 1}))
    assert other.model_version != embedder.model_version
    assert not np.allclose(other.encode_images(ims), embedder.encode_images(ims))


def test_full_profile_needs_pretrained_weights(tmp_path):
    with pytest.raises(ConfigError, match=r"models\.full\.embedder\.pretrained"):
        load_embedder(load_config(profile="full"))
    missing = tmp_path / "nope.safetensors"
    cfg = load_config(profile="full", extra={"models": {"full": {"embedder": {"pretrained": str(missing)}}}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_embedder(cfg)


def test_unknown_tiny_arch_is_a_config_error():
    cfg = load_config(profile="tiny", extra={"models": {"tiny": {"embedder": {"arch": "no-such-clip"}}}})
    with pytest.raises(ConfigError, match=r"models\.tiny\.embedder\.arch"):
        load_embedder(cfg)
