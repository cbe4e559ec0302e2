"""Rows and chunks: the unit every stage's ``process(rows, cfg, models)`` works on."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

Row = dict[str, Any]
T = TypeVar("T")


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` in order, `size` at a time (the last chunk may be shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start:start + size]
