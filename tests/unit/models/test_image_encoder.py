import numpy as np
import pytest
from PIL import Image

from castlab.config import load_config
from castlab.errors import ConfigError
from castlab.models.image_encoder import TINY_CONFIG, ImageEncoder, load_image_encoder


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny")


@pytest.fixture(scope="module")
def encoder(cfg) -> ImageEncoder:
    return load_image_encoder(cfg)


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40 + 12 * i, 64, 3), dtype=np.uint8)) for i in range(n)]


def full_cfg(**image_encoder):
    return load_config(profile="full", extra={"models": {"full": {"image_encoder": image_encoder}}})


def test_tiny_is_a_small_stamped_dinov2(encoder, cfg):
    assert type(encoder.model).__name__ == "Dinov2Model"
    assert encoder.model.config.hidden_size == TINY_CONFIG["hidden_size"]
    assert encoder.model_version.startswith("tiny-dinov2-") and encoder.model_version.endswith(f"-s{cfg.seed}")
    assert sum(p.numel() for p in encoder.model.parameters()) < 1_000_000
    assert encoder.dim == 2 * TINY_CONFIG["hidden_size"]


def test_embeddings_are_unit_rows_of_any_input(encoder):
    ims = images(3) + [images(1)[0].convert("RGBA"), images(1, 5)[0].convert("L")]
    out = encoder.encode(ims)
    assert out.shape == (5, encoder.dim) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(out[0], out[1])
    assert np.allclose(out[3], out[0], atol=1e-5)  # RGBA of the same pixels: same embedding
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_batches_match_single_images(encoder):
    ims = images(4, 1)
    together = encoder.encode(ims)
    alone = np.concatenate([encoder.encode([im]) for im in ims])
    assert np.allclose(together, alone, atol=1e-5)


def test_seeded_and_deterministic(encoder, cfg):
    ims = images(2, 2)
    same = load_image_encoder(cfg)
    assert same.model_version == encoder.model_version
    assert np.array_equal(same.encode(ims), encoder.encode(ims))
    other = load_image_encoder(load_config(profile="tiny", extra={"seed": int(cfg.seed) + 1}))
    assert other.model_version != encoder.model_version and other.model_version.startswith("tiny-dinov2-")
    assert not np.allclose(other.encode(ims), encoder.encode(ims))


def test_unknown_tiny_arch_names_the_setting():
    cfg = load_config(profile="tiny", extra={"models": {"tiny": {"image_encoder": {"arch": "dino-huge"}}}})
    with pytest.raises(ConfigError, match=r"models\.tiny\.image_encoder\.arch.*dino-huge"):
        load_image_encoder(cfg)


def test_missing_full_model_is_a_config_error_not_a_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = full_cfg(model="castlab-test/no-such-dinov2", local_files_only=True)
    with pytest.raises(ConfigError) as err:
        load_image_encoder(cfg)
    message = str(err.value)
    assert "models.full.image_encoder.model" in message and "castlab-test/no-such-dinov2" in message
    assert "local_files_only" in message and "never" in message


def test_full_model_unset_or_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"models\.full\.image_encoder\.model is not set"):
        load_image_encoder(full_cfg(model=None))
    with pytest.raises(ConfigError, match="does not exist"):
        load_image_encoder(full_cfg(model=str(tmp_path / "nowhere")))


def test_full_loads_a_local_dinov2_folder(encoder, tmp_path):
    folder = tmp_path / "my-dinov2"
    encoder.model.save_pretrained(folder)
    encoder.processor.save_pretrained(folder)
    full = load_image_encoder(full_cfg(model=str(folder)))
    assert full.model_version == "dinov2-my-dinov2" and not full.model_version.startswith("tiny-")
    ims = images(2, 3)
    assert np.allclose(full.encode(ims), encoder.encode(ims), atol=1e-5)


def test_full_rejects_a_model_that_is_not_dinov2(tmp_path):
    from transformers import ViTConfig

    folder = tmp_path / "vit"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(folder)
    with pytest.raises(ConfigError, match="not DINOv2"):
        load_image_encoder(full_cfg(model=str(folder)))
