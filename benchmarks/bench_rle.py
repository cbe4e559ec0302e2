"""Brush RLE codec: castlab.labelstudio.rle vs label-studio-sdk's converter.brush on a worst-case 640x480 mask.

Worst case = a checkerboard (every pixel its own run). Both codecs run in this process, on the same
mask; the output must be identical before any time is reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from castlab.labelstudio import rle

HEIGHT, WIDTH = 480, 640


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> int:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    cases = {
        "worst case (checkerboard)": ((yy + xx) % 2).astype(np.uint8),
        "typical (one ellipse)": (((yy - 240) / 150) ** 2 + ((xx - 320) / 90) ** 2 < 1).astype(np.uint8),
    }
    print(f"mask {WIDTH}x{HEIGHT}; SDK timed once, castlab best of 5")
    for name, mask in cases.items():
        sdk_enc_s, sdk_rle = best_of(lambda m=mask: mask2rle(m * 255), 1)
        our_enc_s, our_rle = best_of(lambda m=mask: rle.encode(m), 5)
        if our_rle != sdk_rle:
            print(f"{name}: encode output differs from the SDK")
            return 1
        sdk_dec_s, sdk_mask = best_of(lambda r=sdk_rle: decode_rle(r).reshape(HEIGHT, WIDTH, 4)[:, :, 3], 1)
        our_dec_s, our_mask = best_of(lambda r=sdk_rle: rle.decode(r, HEIGHT, WIDTH), 5)
        if not (np.array_equal(our_mask, mask) and np.array_equal(sdk_mask != 0, mask.astype(bool))):
            print(f"{name}: decode output differs from the mask")
            return 1
        print(f"{name}: {len(sdk_rle)} RLE bytes")
        print(
            f"  encode  sdk {sdk_enc_s * 1e3:9.1f} ms   castlab {our_enc_s * 1e3:7.1f} ms   "
            f"speedup x{sdk_enc_s / our_enc_s:.1f}"
        )
        print(
            f"  decode  sdk {sdk_dec_s * 1e3:9.1f} ms   castlab {our_dec_s * 1e3:7.1f} ms   "
            f"speedup x{sdk_dec_s / our_dec_s:.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
