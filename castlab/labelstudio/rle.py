"""Vectorised codec for Label Studio's brush RLE (the ``rle-pack`` bit format).

Label Studio stores a brush mask as the RLE of a flat RGBA byte array (H x W x 4). The stream is a
57-bit header (value count: 32 bits, word size - 1: 5 bits, four run-length field sizes - 1: 4 bits
each) followed by tokens: ``1 <size index:2> <length - 1> <value>`` repeats one value, ``0 <size
index:2> <count - 1> <value>...`` lists values one by one. The last byte is zero-padded.

:func:`encode` writes exactly the bytes of ``label_studio_sdk.converter.brush.mask2rle(mask * 255)``
(every channel 255 inside the mask, 0 outside) and :func:`decode` reads any valid stream (including
literal runs the Label Studio frontend writes), keeping the alpha channel: 1 where it is nonzero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)  # bits of the length field for size index 0..3 (what the SDK writes)
HEADER_BITS = 32 + 5 + 4 * 4
CHANNELS = 4
INSIDE = 255
_MAX_CHUNK = 2**16  # longest run one 16-bit length field can hold


def _check_shape(height: int, width: int) -> None:
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"mask size must be at least 1x1, got {width}x{height} (width x height)")
    if int(height) * int(width) * CHANNELS >= 2**32:
        raise ValueError(f"mask {width}x{height} is too large for Label Studio's 32-bit RLE value count")


def _write_bits(out: np.ndarray, starts: np.ndarray, values: np.ndarray, widths: np.ndarray) -> None:
    """Write each value's `width` low bits, most significant first, at bit offset `starts`."""
    for j in range(int(widths.max(initial=0))):
        sel = widths > j
        shift = (widths[sel] - 1 - j).astype(np.uint64)
        out[starts[sel] + j] = ((values[sel] >> shift) & np.uint64(1)).astype(np.uint8)


def encode(mask: np.ndarray) -> list[int]:
    """Label Studio brush RLE of a 2-D mask (nonzero = inside), as a list of byte values."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D (height x width), got shape {arr.shape}")
    height, width = arr.shape
    _check_shape(height, width)
    flat = (arr != 0).ravel()
    n = flat.size
    change = np.flatnonzero(flat[1:] != flat[:-1])
    ends = np.append(change, n - 1)
    run_len = np.diff(np.append(-1, ends)).astype(np.int64) * CHANNELS  # runs of RGBA values
    run_val = np.where(flat[ends], INSIDE, 0).astype(np.uint64)

    # Runs longer than 256 use 16-bit length fields, split into chunks of 2**16 as the SDK does.
    long_run = run_len > 256
    chunks = np.where(long_run, (run_len - 1) // _MAX_CHUNK, 0)
    per_run = chunks + 1
    tok_run = np.repeat(np.arange(run_len.size), per_run)
    k = np.arange(tok_run.size) - np.repeat(np.cumsum(per_run) - per_run, per_run)
    is_long = long_run[tok_run]
    length = np.where(is_long & (k < chunks[tok_run]), _MAX_CHUNK, run_len[tok_run] - k * _MAX_CHUNK)
    idx = np.where(is_long, 3, np.searchsorted(np.array([8, 16, 256]), length, side="left"))
    literal = ~is_long & (length == 1)
    idx = np.where(literal, 0, idx)
    size_bits = np.array(RLE_SIZES, dtype=np.int64)[idx]
    widths = 3 + size_bits + WORD_SIZE
    tokens = (
        (np.where(literal, 0, 1).astype(np.uint64) << (widths - 1).astype(np.uint64))
        | (idx.astype(np.uint64) << (widths - 3).astype(np.uint64))
        | ((length - 1).astype(np.uint64) << np.uint64(WORD_SIZE))
        | run_val[tok_run]
    )

    num = n * CHANNELS
    header = [(num, 32), (WORD_SIZE - 1, 5)] + [(s - 1, 4) for s in RLE_SIZES]
    h_vals = np.array([v for v, _ in header], dtype=np.uint64)
    h_widths = np.array([w for _, w in header], dtype=np.int64)
    total = HEADER_BITS + int(widths.sum())
    total += 8 - total % 8  # the SDK always pads, a whole zero byte when already aligned
    bits = np.zeros(total, dtype=np.uint8)
    _write_bits(bits, np.cumsum(h_widths) - h_widths, h_vals, h_widths)
    _write_bits(bits, HEADER_BITS + np.cumsum(widths) - widths, tokens, widths)
    return np.packbits(bits).tolist()


def _as_bytes(rle: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(rle)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"RLE must be a non-empty flat list of byte values, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.mod(arr, 1) == 0):
            raise ValueError(f"RLE values must be integers 0..255, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"RLE values must be integers 0..255, found {arr.min()}..{arr.max()}")
    return arr.astype(np.uint8)


def _read(data: np.ndarray, pos: np.ndarray, nbits: int) -> np.ndarray:
    """Values of `nbits` (<= 32) bits starting at bit offsets `pos` of the byte array `data`."""
    padded = np.concatenate([data, np.zeros(5, np.uint8)]).astype(np.uint64)
    b = pos >> 3
    word = np.zeros(pos.shape, dtype=np.uint64)
    for i in range(5):
        word = (word << np.uint64(8)) | padded[b + i]
    shift = (40 - (pos & 7) - nbits).astype(np.uint64)
    return (word >> shift) & np.uint64((1 << nbits) - 1)


def decode(rle: Sequence[int] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Mask (uint8 0/1, height x width) of a Label Studio brush RLE: 1 where alpha is nonzero.

    Raises ValueError when the stream is malformed or holds a different number of pixels.
    """
    _check_shape(height, width)
    data = _as_bytes(rle)
    nbits = data.size * 8
    if nbits < HEADER_BITS:
        raise ValueError(f"RLE is too short ({data.size} bytes) to hold its 57-bit header")
    header = _read(data, np.array([0, 32, 37, 41, 45, 49], dtype=np.int64), 32)
    num = int(header[0])
    word = int(header[1] >> np.uint64(27)) + 1
    sizes = np.array([int(h >> np.uint64(28)) + 1 for h in header[2:]], dtype=np.uint32)
    expected = int(height) * int(width) * CHANNELS
    if num != expected:
        raise ValueError(
            f"RLE holds {num} values ({num / CHANNELS:g} RGBA pixels) but the mask is {width}x{height} "
            f"({int(height) * int(width)} pixels): original_width/original_height do not match the RLE"
        )

    # For every bit offset p: the 32 bits starting at p (MSB first), from the bytes at p // 8.
    pad = np.concatenate([data, np.zeros(4, np.uint8)]).astype(np.uint32)
    w32 = (pad[:-4] << 24) | (pad[1:-3] << 16) | (pad[2:-2] << 8) | pad[3:-1]
    win = (w32[:, None] << np.arange(8, dtype=np.uint32)[None, :]).ravel()
    key = win >> np.uint32(29)  # repeat flag and size index
    size_bits = np.concatenate([sizes, sizes])[key]
    count = ((win << np.uint32(3)) >> (np.uint32(32) - size_bits)) + np.uint32(1)
    del win
    repeat = key >= 4
    step = size_bits + np.uint32(3 + word)
    literal = ~repeat
    step[literal] += (count[literal] - np.uint32(1)) * np.uint32(word)

    # Token starts: a short sequential walk (one step per token) over precomputed arrays.
    count_at, step_at = memoryview(count), memoryview(step)
    starts: list[int] = []
    append = starts.append
    p, filled = HEADER_BITS, 0
    while filled < num:
        if p >= nbits:
            raise ValueError(f"RLE is truncated: {filled} of {num} values decoded when the data ended")
        append(p)
        filled += count_at[p]
        p += step_at[p]
    s = np.array(starts, dtype=np.int64)
    if int((s + step[s]).max()) > nbits:
        raise ValueError(f"RLE is truncated: its last run needs more than the {data.size} bytes given")

    # Bit offset of every value (a repeat token's single value serves its whole run), alpha only.
    tok_count = count[s].astype(np.int64)
    value_base = s + 3 + size_bits[s]
    if repeat[s].all():
        alpha = np.repeat(_read(data, value_base, word), tok_count)[CHANNELS - 1 : num : CHANNELS]
    else:
        first = np.cumsum(tok_count) - tok_count
        k = np.arange(int(tok_count.sum()), dtype=np.int64) - np.repeat(first, tok_count)
        pos = np.repeat(value_base, tok_count) + np.where(np.repeat(repeat[s], tok_count), 0, k * word)
        alpha = _read(data, pos[CHANNELS - 1 : num : CHANNELS], word)
    return (alpha != 0).astype(np.uint8).reshape(int(height), int(width))
