"""Representative frames of a shot of unknown length: bounded candidates, then one pick per equal slice."""

from __future__ import annotations

from dataclasses import dataclass, field

import av


@dataclass(eq=False)
class Candidate:
    """A decoded frame: waiting for its shot to be certain, or held as a candidate of its shot."""

    index: int  # within the segment being decoded
    time_s: float
    frame: av.VideoFrame | None
    sharp: float = 0.0
    corrupt: bool = False


@dataclass
class ShotSampler:
    """Candidates of a shot of unknown length, at most 4k+1: the sharpest frame of each block of `stride`.

    When there are more blocks than 4k the stride doubles and neighbouring blocks merge (the sharper
    frame stays), so the candidates are the sharpest frames of an even grid over the shot so far.
    """

    k: int
    start: int = 0
    stride: int = 1
    blocks: dict[int, Candidate] = field(default_factory=dict)

    @staticmethod
    def _rank(item: Candidate) -> tuple[bool, float]:
        return (not item.corrupt, item.sharp)

    def add(self, item: Candidate) -> None:
        block = (item.index - self.start) // self.stride
        held = self.blocks.get(block)
        if held is None or self._rank(item) > self._rank(held):
            self.blocks[block] = item
        if len(self.blocks) > 4 * self.k:
            self.stride *= 2
            merged: dict[int, Candidate] = {}
            for number in sorted(self.blocks):
                item = self.blocks[number]
                if number // 2 not in merged or self._rank(item) > self._rank(merged[number // 2]):
                    merged[number // 2] = item
            self.blocks = merged

    @property
    def items(self) -> list[Candidate]:
        return [self.blocks[b] for b in sorted(self.blocks)]

    def pick(self, length: int) -> list[Candidate]:
        """One frame per equal slice of the shot (k slices, fewer for a shorter shot): the sharpest there."""
        items = self.items
        if not items or length <= 0:
            return []
        slices = min(self.k, length)
        chosen: dict[int, Candidate] = {}
        for j in range(slices):
            lo, hi = self.start + j * length // slices, self.start + (j + 1) * length // slices
            centre = (lo + hi - 1) / 2
            inside = [it for it in items if lo <= it.index < hi]
            if inside:
                best = max(inside, key=lambda it: (*self._rank(it), -abs(it.index - centre), -it.index))
            else:  # a coarse stride can leave a slice empty: the nearest candidate not yet chosen
                rest = [it for it in items if it.index not in chosen]
                if not rest:
                    continue
                best = min(rest, key=lambda it: (abs(it.index - centre), it.index))
            chosen[best.index] = best
        return [chosen[i] for i in sorted(chosen)]
