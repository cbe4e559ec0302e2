"""Aspect-ratio buckets, image placement and per-epoch batch order, with kohya sd-scripts' arithmetic.

Follows sd-scripts ``library/model_util.py`` ``make_bucket_resolutions`` and ``library/train_util.py``
``BucketManager`` (``select_bucket``, ``round_to_steps``, ``get_crop_ltrb``), ``trim_and_resize_if_required``
(centre crop), ``BaseDataset.adjust_min_max_bucket_reso_by_steps`` / ``make_buckets`` / ``shuffle_buckets``.
Sizes are ``(width, height)`` throughout, as in sd-scripts.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

Size = tuple[int, int]

# sd-scripts' defaults (library/train_util.py add_dataset_arguments, library/config_util.py *DatasetParams)
DEFAULT_MIN_RESO = 256
DEFAULT_MAX_RESO = 1024
DEFAULT_STEPS = 64


def parse_resolution(value: object) -> Size:
    """``512``, ``"512"``, ``"768,512"`` or ``[768, 512]`` → ``(width, height)`` (sd-scripts' forms)."""
    if isinstance(value, str):
        parts: list[object] = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    try:
        if any(isinstance(p, bool) or isinstance(p, float) for p in parts):
            raise ValueError
        sizes = [int(p) for p in parts]  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"resolution must be 'size', 'width,height' or [width, height]; got {value!r}") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) <= 0:
        raise ValueError(f"resolution must be one or two positive integers; got {value!r}")
    return sizes[0], sizes[1]


def _lookup(layers: Sequence[Mapping], key: str, default: object) -> object:
    """First non-None value of ``key`` in ``layers`` (sd-scripts' BlueprintGenerator.search_value)."""
    for layer in layers:
        value = layer.get(key)
        if value is not None:
            return value
    return default


def _as_int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer; got {value!r}")
    return value


def _as_bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false; got {value!r}")
    return value


@dataclass(frozen=True)
class BucketSettings:
    """Dataset bucketing options (kohya keys ``resolution``, ``enable_bucket``, ``min_bucket_reso``,
    ``max_bucket_reso``, ``bucket_reso_steps``, ``bucket_no_upscale``). Min/max/steps/no_upscale only
    matter when ``enable`` is true."""

    resolution: Size
    enable: bool = False
    min_reso: int = DEFAULT_MIN_RESO
    max_reso: int = DEFAULT_MAX_RESO
    steps: int = DEFAULT_STEPS
    no_upscale: bool = False

    def __post_init__(self) -> None:
        w, h = self.resolution
        if w <= 0 or h <= 0:
            raise ValueError(f"resolution must be positive; got {self.resolution}")
        if not self.enable:
            return
        if self.steps <= 0:
            raise ValueError(f"bucket_reso_steps must be positive; got {self.steps}")
        for key, value in (("min_bucket_reso", self.min_reso), ("max_bucket_reso", self.max_reso)):
            if value <= 0 or value % self.steps:
                raise ValueError(f"{key} ({value}) must be a positive multiple of bucket_reso_steps ({self.steps})")
        if min(w, h) < self.min_reso:
            raise ValueError(f"min_bucket_reso ({self.min_reso}) exceeds the smaller resolution side {min(w, h)}")
        if max(w, h) > self.max_reso:
            raise ValueError(f"max_bucket_reso ({self.max_reso}) is below the larger resolution side {max(w, h)}")

    @classmethod
    def from_config(cls, *layers: Mapping) -> BucketSettings:
        """Read kohya keys from config layers, most specific first (``dataset``, ``general``, the flattened
        ``--config_file``); the first non-None value wins, else sd-scripts' default. As sd-scripts does,
        min/max_bucket_reso that are not multiples of bucket_reso_steps are rounded down/up (with a warning)."""
        raw_resolution = _lookup(layers, "resolution", None)
        if raw_resolution is None:
            raise ValueError("resolution is required (dataset, [general] or training config)")
        enable = _as_bool(_lookup(layers, "enable_bucket", False), "enable_bucket")
        min_reso = _as_int(_lookup(layers, "min_bucket_reso", DEFAULT_MIN_RESO), "min_bucket_reso")
        max_reso = _as_int(_lookup(layers, "max_bucket_reso", DEFAULT_MAX_RESO), "max_bucket_reso")
        steps = _as_int(_lookup(layers, "bucket_reso_steps", DEFAULT_STEPS), "bucket_reso_steps")
        no_upscale = _as_bool(_lookup(layers, "bucket_no_upscale", False), "bucket_no_upscale")
        if enable and steps > 0:
            if min_reso % steps:
                log.warning("min_bucket_reso %d rounded down to %d (a multiple of bucket_reso_steps %d)",
                            min_reso, min_reso - min_reso % steps, steps)
                min_reso -= min_reso % steps
            if max_reso % steps:
                log.warning("max_bucket_reso %d rounded up to %d (a multiple of bucket_reso_steps %d)",
                            max_reso, max_reso + steps - max_reso % steps, steps)
                max_reso += steps - max_reso % steps
        return cls(parse_resolution(raw_resolution), enable, min_reso, max_reso, steps, no_upscale)


def bucket_resolutions(settings: BucketSettings) -> list[Size]:
    """The predefined buckets, sorted: sd-scripts' ``make_bucket_resolutions`` (area of ``resolution``, sides in
    ``[min_reso, max_reso]`` stepped by ``steps``). Without bucketing, the one fixed ``resolution``. With
    ``no_upscale`` there are none: each image's bucket follows from its own size (returns ``[]``)."""
    if not settings.enable:
        return [settings.resolution]
    if settings.no_upscale:
        return []
    step, lo, hi = settings.steps, settings.min_reso, settings.max_reso
    area = settings.resolution[0] * settings.resolution[1]
    square = int(math.sqrt(area) // step) * step
    found = {(square, square)}
    for width in range(lo, hi + 1, step):
        height = min(hi, (area // width) // step * step)
        if height >= lo:
            found.update({(width, height), (height, width)})
    return sorted(found)


@dataclass(frozen=True)
class Placement:
    """Where one image goes: resize ``original`` to ``resized``, then cut ``bucket`` at ``crop_offset``.

    ``crop_offset`` is the (left, top) pixel offset of the centre crop inside the resized image.
    ``crop_top_left`` / ``crop_top_left_flipped`` are SDXL's crop conditioning as sd-scripts feeds it
    ((top, left), from ``get_crop_ltrb``, for the unflipped / horizontally flipped image). Note sd-scripts
    computes them as if the image were fitted *inside* the bucket, so they need not match ``crop_offset``.
    """

    bucket: Size
    resized: Size
    original: Size
    crop_offset: Size
    crop_top_left: Size
    crop_top_left_flipped: Size

    @property
    def aspect_error(self) -> float:
        """Bucket aspect minus image aspect (sd-scripts' ``ar_error``)."""
        return self.bucket[0] / self.bucket[1] - self.original[0] / self.original[1]


def _round_to_steps(x: float, steps: int) -> int:
    rounded = int(x + 0.5)
    return rounded - rounded % steps


def _shrink_only_size(width: int, height: int, max_area: int, steps: int) -> Size:
    """``select_bucket`` with ``bucket_no_upscale``: the resized size (the original unless over ``max_area``)."""
    if width * height <= max_area:
        return width, height
    aspect = width / height
    fit_w = math.sqrt(max_area * aspect)
    fit_h = max_area / fit_w
    w_rounded = _round_to_steps(fit_w, steps)
    h_for_w = _round_to_steps(w_rounded / aspect, steps)
    h_rounded = _round_to_steps(fit_h, steps)
    w_for_h = _round_to_steps(h_rounded * aspect, steps)
    if 0 in (w_rounded, h_for_w, h_rounded):
        raise ValueError(f"image {width}x{height}: too thin for bucket_reso_steps {steps} (zero-size bucket)")
    if abs(w_rounded / h_for_w - aspect) < abs(w_for_h / h_rounded - aspect):
        return w_rounded, int(w_rounded / aspect + 0.5)
    return int(h_rounded * aspect + 0.5), h_rounded


def _crop_ltrb(bucket: Size, original: Size) -> tuple[float, float, float, float]:
    """sd-scripts' ``BucketManager.get_crop_ltrb`` (Stability AI's convention)."""
    bucket_aspect = bucket[0] / bucket[1]
    image_aspect = original[0] / original[1]
    if bucket_aspect > image_aspect:
        fit_w, fit_h = bucket[1] * image_aspect, float(bucket[1])
    else:
        fit_w, fit_h = float(bucket[0]), bucket[0] / image_aspect
    left = (bucket[0] - fit_w) // 2
    top = (bucket[1] - fit_h) // 2
    return left, top, left + fit_w, top + fit_h


def place(image_size: Size, settings: BucketSettings, buckets: Sequence[Size] | None = None) -> Placement:
    """Choose the bucket, resized size and crop of an image of ``image_size`` (sd-scripts ``select_bucket``).

    ``buckets`` defaults to ``bucket_resolutions(settings)`` (pass it in when placing many images). Without
    bucketing sd-scripts' latent-caching path applies: resize to cover ``resolution`` and centre-crop.
    Raises ValueError for an empty image or one that would get a zero-size bucket.
    """
    width, height = image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"image {width}x{height}: empty image")
    if settings.enable and settings.no_upscale:
        resized = _shrink_only_size(width, height, settings.resolution[0] * settings.resolution[1], settings.steps)
        bucket = (resized[0] - resized[0] % settings.steps, resized[1] - resized[1] % settings.steps)
        if 0 in bucket:
            raise ValueError(f"image {width}x{height}: zero-size bucket {bucket[0]}x{bucket[1]} "
                             f"(a side is below bucket_reso_steps {settings.steps}; bucket_no_upscale never enlarges)")
    else:
        candidates = list(buckets) if buckets is not None else bucket_resolutions(settings)
        if not candidates:
            raise ValueError("no bucket resolutions to choose from")
        aspect = width / height
        if (width, height) in candidates:
            bucket = (width, height)
        else:  # closest aspect ratio; the first (smallest) one on ties, like numpy's argmin
            bucket = min(candidates, key=lambda b: abs(b[0] / b[1] - aspect))
        scale = bucket[1] / height if aspect > bucket[0] / bucket[1] else bucket[0] / width
        resized = (int(width * scale + 0.5), int(height * scale + 0.5))
    offset = ((resized[0] - bucket[0]) // 2 if resized[0] > bucket[0] else 0,
              (resized[1] - bucket[1]) // 2 if resized[1] > bucket[1] else 0)
    left, top, right, _ = _crop_ltrb(bucket, (width, height))
    return Placement(bucket=bucket, resized=resized, original=(width, height), crop_offset=offset,
                     crop_top_left=(int(top), int(left)), crop_top_left_flipped=(int(top), int(bucket[0] - right)))


def plan_batches(
    placements: Mapping[str, Size],
    batch_size: int,
    rng: random.Random,
    repeats: Mapping[str, int] | None = None,
) -> tuple[list[list[str]], list[str]]:
    """One epoch's batches: each batch holds items of one bucket; nothing is dropped.

    Like sd-scripts' ``make_buckets`` + ``shuffle_buckets``: buckets in sorted order, each item added
    ``repeats[key]`` times (default 1) in ``placements`` order, cut into ``ceil(n / batch_size)`` batches; then
    ``rng`` shuffles the batch order and, bucket by bucket, the items inside each bucket. A bucket whose count
    is not a multiple of ``batch_size`` yields one short batch (as in sd-scripts); each is described in the
    returned notes.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    by_bucket: dict[Size, list[str]] = {}
    for key, bucket in placements.items():
        count = 1 if repeats is None else repeats.get(key, 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"num_repeats of {key!r} must be a positive integer; got {count!r}")
        by_bucket.setdefault(tuple(bucket), []).extend([key] * count)
    order = sorted(by_bucket)
    slots = [(b, i) for b, bucket in enumerate(order) for i in range(math.ceil(len(by_bucket[bucket]) / batch_size))]
    rng.shuffle(slots)
    for bucket in order:
        rng.shuffle(by_bucket[bucket])
    batches = [by_bucket[order[b]][i * batch_size:(i + 1) * batch_size] for b, i in slots]
    notes = []
    for w, h in order:
        n = len(by_bucket[(w, h)])
        if n % batch_size:
            what = "fewer items than" if n < batch_size else "a count not divisible by"
            notes.append(f"bucket {w}x{h}: {n} item(s), {what} batch_size {batch_size}; "
                         f"one short batch of {n % batch_size} each epoch")
    return batches, notes
