import random
from collections import Counter

import pytest

from trainers.buckets import BucketSettings, bucket_resolutions, parse_resolution, place, plan_batches

# Expected values below were computed once by running kohya sd-scripts' own code (library/model_util.py
# make_bucket_resolutions; library/train_util.py BucketManager.select_bucket / get_crop_ltrb and the centre crop of
# trim_and_resize_if_required) in a throwaway script; they are sd-scripts' numbers, not ours.

SD_512 = [(256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576), (512, 512),
          (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256)]
SD_1024 = [(256, 2048), (288, 2048), (320, 2048), (352, 2048), (384, 2048), (416, 2048), (448, 2048), (480, 2048),
           (512, 1952), (512, 1984), (512, 2016), (512, 2048), (544, 1824), (544, 1856), (544, 1888), (544, 1920),
           (576, 1728), (576, 1760), (576, 1792), (608, 1664), (608, 1696), (640, 1568), (640, 1600), (640, 1632),
           (672, 1504), (672, 1536), (704, 1440), (704, 1472), (736, 1376), (736, 1408), (768, 1312), (768, 1344),
           (800, 1280), (832, 1216), (832, 1248), (864, 1184), (896, 1152), (928, 1120), (960, 1088), (992, 1056),
           (1024, 1024), (1056, 992), (1088, 960), (1120, 928), (1152, 896), (1184, 864), (1216, 832),
           (1248, 832), (1280, 800), (1312, 768), (1344, 768), (1376, 736), (1408, 736), (1440, 704), (1472, 704),
           (1504, 672), (1536, 672), (1568, 640), (1600, 640), (1632, 640), (1664, 608), (1696, 608), (1728, 576),
           (1760, 576), (1792, 576), (1824, 544), (1856, 544), (1888, 544), (1920, 544), (1952, 512), (1984, 512),
           (2016, 512), (2048, 256), (2048, 288), (2048, 320), (2048, 352), (2048, 384), (2048, 416), (2048, 448),
           (2048, 480), (2048, 512)]

UP_512 = BucketSettings((512, 512), enable=True, min_reso=256, max_reso=1024, steps=64)
NOUP_512 = BucketSettings((512, 512), enable=True, min_reso=256, max_reso=1024, steps=64, no_upscale=True)
UP_1024 = BucketSettings((1024, 1024), enable=True, min_reso=256, max_reso=2048, steps=32)
NOUP_1024 = BucketSettings((1024, 1024), enable=True, min_reso=256, max_reso=2048, steps=32, no_upscale=True)
FIXED = BucketSettings((512, 768))  # enable_bucket = false

# settings, image size -> bucket, resized, crop_offset (left, top px), crop_top_left (SDXL), crop_top_left flipped
PLACEMENTS = [
    (UP_512, (512, 512), (512, 512), (512, 512), (0, 0), (0, 0), (0, 0)),
    (UP_512, (1920, 1080), (640, 384), (683, 384), (21, 0), (12, 0), (12, 0)),
    (UP_512, (1080, 1920), (384, 640), (384, 683), (0, 21), (0, 12), (0, 12)),
    (UP_512, (640, 480), (576, 448), (597, 448), (10, 0), (8, 0), (8, 0)),
    (UP_512, (2000, 500), (1024, 256), (1024, 256), (0, 0), (0, 0), (0, 0)),
    (UP_512, (777, 333), (768, 320), (768, 329), (0, 4), (0, 10), (0, 11)),
    (UP_512, (100, 200), (320, 704), (352, 704), (16, 0), (32, 0), (32, 0)),
    (NOUP_512, (640, 480), (512, 384), (512, 384), (0, 0), (0, 0), (0, 0)),
    (NOUP_512, (1920, 1080), (640, 384), (683, 384), (21, 0), (12, 0), (12, 0)),
    (NOUP_512, (777, 333), (768, 320), (777, 333), (4, 6), (0, 10), (0, 11)),
    (NOUP_512, (100, 200), (64, 192), (100, 200), (18, 4), (32, 0), (32, 0)),
    (UP_1024, (640, 480), (1184, 864), (1184, 888), (0, 12), (0, 16), (0, 16)),
    (UP_1024, (300, 1000), (544, 1824), (547, 1824), (1, 0), (5, 0), (5, 0)),
    (UP_1024, (777, 333), (1536, 672), (1568, 672), (16, 0), (6, 0), (6, 0)),
    (NOUP_1024, (300, 1000), (288, 992), (300, 1000), (6, 4), (16, 0), (16, 0)),
    (NOUP_1024, (2000, 500), (1984, 480), (2000, 500), (8, 10), (0, 32), (0, 32)),
    (NOUP_1024, (1000, 1000), (992, 992), (1000, 1000), (4, 4), (0, 0), (0, 0)),
    (FIXED, (512, 512), (512, 768), (768, 768), (128, 0), (128, 0), (128, 0)),
    (FIXED, (1080, 1920), (512, 768), (512, 910), (0, 71), (0, 40), (0, 40)),
    (FIXED, (300, 1000), (512, 768), (512, 1707), (0, 469), (0, 140), (0, 141)),
    (FIXED, (1024, 768), (512, 768), (1024, 768), (256, 0), (192, 0), (192, 0)),
]


def test_bucket_resolutions_match_sd_scripts():
    assert bucket_resolutions(UP_512) == SD_512
    assert bucket_resolutions(UP_1024) == SD_1024
    assert bucket_resolutions(FIXED) == [(512, 768)]
    assert bucket_resolutions(NOUP_512) == []  # buckets follow each image's own size


@pytest.mark.parametrize(("settings", "size", "bucket", "resized", "offset", "ctl", "ctl_flipped"), PLACEMENTS)
def test_place_matches_sd_scripts(settings, size, bucket, resized, offset, ctl, ctl_flipped):
    p = place(size, settings, bucket_resolutions(settings))
    assert (p.bucket, p.resized, p.original) == (bucket, resized, size)
    assert (p.crop_offset, p.crop_top_left, p.crop_top_left_flipped) == (offset, ctl, ctl_flipped)
    assert p.resized[0] - p.crop_offset[0] >= p.bucket[0] and p.resized[1] - p.crop_offset[1] >= p.bucket[1]


def test_place_rejects_zero_size_buckets_naming_the_size():
    with pytest.raises(ValueError, match="40x300"):
        place((40, 300), NOUP_512)
    with pytest.raises(ValueError, match="0x10"):
        place((0, 10), UP_512)
    with pytest.raises(ValueError, match="30x9000"):  # over max area: shrinking makes the short side 0
        place((30, 9000), NOUP_512)


def test_settings_from_kohya_layers():
    s = BucketSettings.from_config({"resolution": [768, 512]}, {"enable_bucket": True}, {"resolution": 1024})
    assert s == BucketSettings((768, 512), True, 256, 1024, 64, False)  # sd-scripts defaults fill the rest
    s = BucketSettings.from_config({}, {"resolution": "1024,1024", "enable_bucket": True, "min_bucket_reso": 300,
                                        "max_bucket_reso": 2000, "bucket_reso_steps": 32, "bucket_no_upscale": True})
    assert (s.resolution, s.min_reso, s.max_reso, s.steps, s.no_upscale) == ((1024, 1024), 288, 2016, 32, True)
    assert parse_resolution("512") == (512, 512) and parse_resolution(640) == (640, 640)
    with pytest.raises(ValueError, match="resolution is required"):
        BucketSettings.from_config({"enable_bucket": True})
    with pytest.raises(ValueError, match="resolution"):
        parse_resolution("512,512,3")
    with pytest.raises(ValueError, match="min_bucket_reso"):
        BucketSettings.from_config({"resolution": 512, "enable_bucket": True, "min_bucket_reso": 768})
    with pytest.raises(ValueError, match="max_bucket_reso"):
        BucketSettings.from_config({"resolution": 2048, "enable_bucket": True})
    with pytest.raises(ValueError, match="enable_bucket"):
        BucketSettings.from_config({"resolution": 512, "enable_bucket": "yes"})


def test_plan_batches_covers_every_item_once_per_repeat_in_one_bucket_each():
    placements = {f"a{i}": (512, 512) for i in range(7)} | {f"b{i}": (640, 384) for i in range(2)} | {"c": (384, 640)}
    batches, notes = plan_batches(placements, 3, random.Random(1), repeats={"c": 2})
    assert Counter(k for b in batches for k in b) == Counter(list(placements) + ["c"])
    assert all(len({placements[k] for k in b}) == 1 and 1 <= len(b) <= 3 for b in batches)
    assert sorted(len(b) for b in batches) == [1, 2, 2, 3, 3]
    assert len(notes) == 3 and any("512x512" in n and "short batch of 1" in n for n in notes)
    assert any("640x384" in n and "fewer items than batch_size 3" in n for n in notes)


def test_plan_batches_order_is_seeded():
    placements = {f"k{i}": [(512, 512), (640, 384)][i % 2] for i in range(40)}
    first, _ = plan_batches(placements, 4, random.Random(7))
    assert plan_batches(placements, 4, random.Random(7))[0] == first
    assert plan_batches(placements, 4, random.Random(8))[0] != first
    assert plan_batches(placements, 4, random.Random(7))[1] == []  # every bucket divides evenly: no notes
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches(placements, 0, random.Random(7))
