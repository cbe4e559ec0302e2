"""castlab.labelstudio.rle against label-studio-sdk's reference brush codec: exact round trips both ways."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle

from castlab.labelstudio import rle


def _sdk_alpha(data: list[int], height: int, width: int) -> np.ndarray:
    return decode_rle(data).reshape(height, width, 4)[:, :, 3]


def _masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    one_in = np.zeros((9, 13), np.uint8)
    one_in[4, 7] = 1
    bands = np.zeros((37, 211), np.uint8)  # runs of 2..8, 9..16, 17..256 and > 256 values
    bands[3, 5:7] = 1
    bands[5, 20:24] = 1
    bands[9, 40:100] = 1
    bands[12:20, :] = 1
    return {
        "empty": np.zeros((31, 17), np.uint8),
        "full": np.ones((31, 17), np.uint8),
        "pixel_in": np.ones((1, 1), np.uint8),
        "pixel_out": np.zeros((1, 1), np.uint8),
        "one_pixel_odd_size": one_in,
        "random_dense": (rng.random((47, 33)) > 0.5).astype(np.uint8),
        "random_sparse": (rng.random((61, 89)) > 0.97).astype(np.uint8),
        "checkerboard": (np.indices((15, 21)).sum(0) % 2).astype(np.uint8),
        "bands": bands,
        "long_full_run": np.ones((200, 401), np.uint8),  # > 2**16 values: split into 16-bit chunks
        "row_vector": (rng.random((1, 157)) > 0.5).astype(np.uint8),
        "column_vector": (rng.random((157, 1)) > 0.5).astype(np.uint8),
    }


MASKS = _masks()


@pytest.mark.parametrize("name", sorted(MASKS))
def test_encode_writes_the_sdk_bytes_and_the_sdk_decodes_them(name: str):
    mask = MASKS[name]
    ours = rle.encode(mask)
    assert ours == mask2rle(mask * 255)
    assert np.array_equal(_sdk_alpha(ours, *mask.shape), mask * 255)


@pytest.mark.parametrize("name", sorted(MASKS))
@pytest.mark.parametrize("inside", [1, 255])
def test_decode_reads_sdk_rle_exactly(name: str, inside: int):
    mask = MASKS[name]
    decoded = rle.decode(mask2rle(mask * inside), *mask.shape)
    assert decoded.dtype == np.uint8 and decoded.shape == mask.shape
    assert np.array_equal(decoded, mask)


def test_round_trip_of_many_random_masks():
    rng = np.random.default_rng(5)
    for _ in range(25):
        height, width = rng.integers(1, 70, size=2)
        mask = rng.random((height, width)) > rng.random()
        assert np.array_equal(rle.decode(rle.encode(mask), height, width), mask.astype(np.uint8))


def test_any_nonzero_value_or_dtype_counts_as_inside():
    values = np.array([[0, 1, 7], [255, 0, -3]])
    expected = rle.encode((values != 0).astype(np.uint8))
    for arr in (values, values.astype(bool), values.astype(np.float32), values.astype(np.int16)):
        assert rle.encode(arr) == expected


def test_decode_reads_single_values_and_arbitrary_channels():
    """The SDK writes length-1 literals for lone values; alpha is what counts."""
    rng = np.random.default_rng(9)
    height, width = 6, 7
    rgba = rng.integers(0, 3, size=height * width * 4).astype(np.uint8)
    rgba[:60] = 9  # one long run too
    data = encode_rle(rgba)
    assert np.array_equal(rle.decode(data, height, width), (rgba.reshape(height, width, 4)[:, :, 3] != 0))


def _stream(num: int, tokens: list[str]) -> list[int]:
    """Bytes of an rle-pack stream (word size 8, field sizes 3/4/8/16) from token bit strings."""
    bits = f"{num:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16)) + "".join(tokens)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def test_decode_reads_multi_value_literal_runs_like_the_frontend_writes():
    # 3 pixels: literal of 6 values (10, 20, 30, 40, 0, 0), then 2 values of 0, then a run of 4 x 255.
    literal = "0" + "00" + f"{6 - 1:03b}" + "".join(f"{v:08b}" for v in (10, 20, 30, 40, 0, 0))
    zeros = "1" + "00" + f"{2 - 1:03b}" + f"{0:08b}"
    run = "1" + "01" + f"{4 - 1:04b}" + f"{255:08b}"
    data = _stream(12, [literal, zeros, run])
    expected = np.array([[1, 0, 1]], np.uint8)
    assert np.array_equal(rle.decode(data, 1, 3), expected)
    assert np.array_equal(_sdk_alpha(data, 1, 3) != 0, expected.astype(bool))


def test_decode_refuses_a_size_mismatch():
    data = rle.encode(np.ones((10, 20), np.uint8))
    with pytest.raises(ValueError, match="200 RGBA pixels.*20x11"):
        rle.decode(data, 11, 20)
    with pytest.raises(ValueError, match="original_width/original_height"):
        rle.decode(data, 10, 21)


@pytest.mark.parametrize(
    "data, problem",
    [
        ([], "non-empty"),
        ([1, 2, 3], "too short"),
        ([0, 0, 3, 32, 56, 300], "0..255"),
        ([[0, 1], [2, 3]], "flat list"),
        ([0.5] * 10, "integers"),
    ],
)
def test_decode_refuses_malformed_data(data, problem):
    with pytest.raises(ValueError, match=problem):
        rle.decode(data, 10, 20)


def test_decode_refuses_truncated_data():
    mask = (np.indices((10, 20)).sum(0) % 2).astype(np.uint8)
    data = rle.encode(mask)
    with pytest.raises(ValueError, match="truncated"):
        rle.decode(data[: len(data) // 2], 10, 20)


def test_encode_and_decode_refuse_bad_shapes():
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="at least 1x1"):
        rle.encode(np.zeros((0, 5), np.uint8))
    with pytest.raises(ValueError, match="at least 1x1"):
        rle.decode(rle.encode(np.ones((2, 2))), 0, 4)
