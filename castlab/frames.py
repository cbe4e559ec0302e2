"""Video → shots → representative frames, streaming, with the decode split over parallel workers (PyAV).

Modes (``frames.mode`` or the `mode` argument):

- ``scene``: cuts where PySceneDetect's ContentDetector puts them; ``frames.frames_per_shot`` frames per
  shot: the shot is cut into that many equal slices and each slice gives its sharpest frame
  (:func:`castlab.quality.sharpness` of the detector's downscaled grey picture, so it costs little).
- ``interval``: the first frame at or after every ``frames.interval_seconds`` of presentation time (pts,
  so variable frame rate is handled); shots are still detected, for shot ids.
- ``hybrid``: the union. A frame picked by both is written once (``selected_by="scene+interval"``); an
  interval frame within ``frames.hybrid_window`` frames (default ``min_scene_length // 2``) of a scene
  pick of the same shot is redundant: it is dropped and the scene pick becomes ``scene+interval``.

Frame indices count decoded frames in presentation order; times come from pts (variable frame rate).

Speed. ContentDetector compares every frame with the previous one, so every frame is decoded: h264/h265
P-frames chain back to the last keyframe, so even checking one cut needs the whole GOP before it, and
keyframes alone miss cuts (``benchmarks/bench_extract.py`` measures these alternatives). castlab uses the
cores instead: the video is split at keyframes into ``frames.workers`` segments decoded and scored in
parallel threads (FFmpeg and OpenCV release the GIL), each with a single-threaded decoder, which costs
less CPU per frame than FFmpeg's frame threading. The result is exactly that of one pass
(``frames.workers: 1``): workers record which frames score above the threshold, the cuts are replayed
over the whole video with PySceneDetect's ``FlashFilter`` (ContentDetector's min-scene-length logic), and
a shot no worker cut exactly as the replay (it straddles a split, or a worker guessed the detector state
at its split wrongly) is decoded again with the cuts known, so every shot's frames come from the same
candidates as in one pass.

Memory stays bounded: a worker holds decoded frames only while a cut may still be reported before them
(up to ``min_scene_length + 1`` frames after a frame above the threshold, none otherwise) and, per open
shot, at most ``4 * frames_per_shot + 1`` candidates: the sharpest frame of each block of a stride that
doubles as the shot grows; plus a few numbers per frame (pts, time, duration).
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import logging
import math
import os
import queue
import threading
from array import array
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter
from scenedetect import FrameTimecode
from scenedetect.detector import FlashFilter
from tqdm import tqdm

from castlab.config import Config
from castlab.errors import ConfigError, InputError
from castlab.quality import QualityGates, sharpness
from castlab.video import VideoInfo, open_video, orient, probe_video, video_stream
from castlab.workspace import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

MODES = ("scene", "interval", "hybrid")
DETECTOR_WIDTH = 256  # PySceneDetect's own auto-downscale target width
SHOTS_NAME = "shots.json"
SEEKABLE_FORMATS = ("mov", "mp4", "matroska", "webm")  # demuxers whose index seeks exactly to keyframes
PREFETCH_FRAMES = 4  # decoded frames queued ahead of the per-frame work
REDO_SEEK_BACK_FRAMES = 16  # more than any decoder reorder delay: the seek lands before the frame wanted
GAP_FACTOR = 1.5  # a pts step this many frame durations long means frames are missing
GAP_NEAR_ERROR_S = 2.0  # ... and it is a decode error when a decode problem lies this close


def scene_detector_threshold(cfg: Config) -> float:
    """``frames.scene_threshold`` (normalised) → ContentDetector threshold.

    PySceneDetect 0.6/0.7's ContentDetector scores each frame by the mean absolute difference of
    its H, S and V channels (8-bit, weights 1/1/1/0) from the previous frame: 0 for a still shot,
    typically 30–80 for a hard cut, at most ~255. Its default threshold is 27. castlab's setting is
    that value / 100, so ``0.3`` → ``30.0`` and ``0.27`` reproduces the detector's default.
    """
    value = float(cfg.get("frames.scene_threshold"))
    if not 0.0 < value <= 2.55:
        raise ConfigError(
            f"frames.scene_threshold must be in (0, 2.55] (x100 = ContentDetector threshold), got {value}"
        )
    return value * 100.0


def content_score(previous_hsv: np.ndarray, hsv: np.ndarray) -> float:
    """ContentDetector's frame score (default weights 1/1/1/0) between two HSV pictures, bit for bit.

    Same arithmetic as ``ContentDetector._calculate_frame_score``: per channel, the sum of absolute
    differences divided by the pixel count, then the weighted mean; the unit tests check equality.
    """
    sums = cv2.sumElems(cv2.absdiff(hsv, previous_hsv))
    pixels = float(hsv.shape[0] * hsv.shape[1])
    return (sums[0] / pixels * 1.0 + sums[1] / pixels * 1.0 + sums[2] / pixels * 1.0 + 0.0 * 0.0) / 3.0


class CutFilter:
    """PySceneDetect's ``FlashFilter`` in MERGE mode (how ContentDetector applies ``min_scene_len``).

    It is only called where it can act: the first frame, frames above the threshold, and the frame
    `length` after the last one above (before that it can neither emit nor change, after it nothing
    changes until the next frame above); the unit tests check this against feeding every frame.
    `primed` starts it as in the middle of a video, the last cut long past.
    """

    def __init__(self, length: int, fps: Fraction, primed: bool = False) -> None:
        self._flash = FlashFilter(mode=FlashFilter.Mode.MERGE, length=length)
        self._length, self._fps = length, fps
        self._last: int | None = None
        self._shift = 0
        if primed and length > 0:
            self._call(0, False)
            self._call(length, True)
            self._last, self._shift = length, 2 * length + 2

    def _call(self, number: int, above: bool) -> list[int]:
        found = self._flash.filter(timecode=FrameTimecode(number, fps=self._fps), above_threshold=above)
        return [int(timecode.frame_num) - self._shift for timecode in found]

    def feed(self, index: int, above: bool) -> list[int]:
        """Frame `index` (consecutive from 0) is / is not above the threshold: the cuts now reported."""
        number = index + self._shift
        if not (above or self._last is None or number == self._last + self._length):
            return []
        if above or self._last is None:
            self._last = number
        return self._call(number, above)


def replay_cuts(frames: int, above: set[int], min_scene_len: int, fps: Fraction) -> list[int]:
    """Cut frames ContentDetector reports for a video whose frames in `above` score >= the threshold."""
    flash = CutFilter(min_scene_len, fps)
    cuts: set[int] = set()
    for index in range(frames):
        cuts.update(flash.feed(index, index in above))
    return sorted(c for c in cuts if 0 < c < frames)


def extract_frames(
    video: Path, out_dir: Path, cfg: Config, mode: str | None = None, *, workers: int | None = None
) -> list[dict[str, Any]]:
    """Decode `video` and write the selected frames plus its entry in ``shots.json``; return manifest rows.

    Writes ``out_dir/frames/<videoid>_<frameidx:06d>.<frames.image_format>`` (upright: the display
    rotation is applied) and merges this video's shots into ``out_dir/shots.json``. Every written frame
    gets a row; frames failing the quality gates (:mod:`castlab.quality`) stay as rows with
    ``status="rejected"``, a ``reject_reason`` and ``reject_codes``. Undecodable packets are skipped,
    frames the decoder flags as corrupt are rejected, and lost frames are reported as gaps (frame and time
    range), all under ``decode_errors`` in ``shots.json``. `workers` overrides ``frames.workers``.
    """
    settings = _Settings.from_config(cfg, mode, workers)
    info = probe_video(Path(video).resolve())
    extractor = _Extractor(info, Path(out_dir).resolve(), settings)
    extractor.run()
    _merge_shots(Path(out_dir).resolve() / SHOTS_NAME, info, extractor)
    return sorted(extractor.rows, key=lambda r: r["frame_index"])


# -- settings --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Settings:
    mode: str
    per_shot: int
    interval: float
    ext: str
    jpeg_quality: int
    gates: QualityGates
    min_scene_len: int
    threshold: float
    hybrid_window: int
    workers: int
    segment_min_frames: int

    @classmethod
    def from_config(cls, cfg: Config, mode: str | None, workers: int | None) -> _Settings:
        mode = mode or str(cfg.get("frames.mode"))
        if mode not in MODES:
            raise ConfigError(f"frames.mode must be one of {MODES}, got {mode!r}")
        per_shot = int(cfg.get("frames.frames_per_shot"))
        interval = float(cfg.get("frames.interval_seconds"))
        if mode in ("scene", "hybrid") and per_shot < 1:
            raise ConfigError(f"frames.frames_per_shot must be >= 1, got {per_shot}")
        if mode in ("interval", "hybrid") and interval <= 0:
            raise ConfigError(f"frames.interval_seconds must be > 0, got {interval}")
        min_scene_len = int(cfg.get("frames.min_scene_length"))
        if min_scene_len < 0:
            raise ConfigError(f"frames.min_scene_length must be >= 0, got {min_scene_len}")
        window = cfg.get("frames.hybrid_window")
        window = max(1, min_scene_len // 2) if window is None else int(window)
        if window < 0:
            raise ConfigError(f"frames.hybrid_window must be >= 0 frames, got {window}")
        wanted = workers if workers is not None else cfg.get("frames.workers")
        if wanted == "auto":
            wanted = min(_cores(), 8)
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
            raise ConfigError(f"frames.workers must be 'auto' or an integer >= 1, got {wanted!r}")
        segment_min = int(cfg.get("frames.segment_min_frames"))
        if segment_min < 1:
            raise ConfigError(f"frames.segment_min_frames must be >= 1, got {segment_min}")
        return cls(
            mode=mode, per_shot=per_shot, interval=interval,
            ext=str(cfg.get("frames.image_format")).lower().lstrip("."),
            jpeg_quality=int(cfg.get("frames.jpeg_quality")), gates=QualityGates.from_config(cfg),
            min_scene_len=min_scene_len, threshold=scene_detector_threshold(cfg), hybrid_window=window,
            workers=wanted, segment_min_frames=segment_min,
        )

    @property
    def scene(self) -> bool:
        return self.mode in ("scene", "hybrid")

    @property
    def by_interval(self) -> bool:
        return self.mode in ("interval", "hybrid")


# -- shot candidates -------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Item:
    """A decoded frame: waiting for its shot to be certain, or held as a candidate of its shot."""

    index: int  # within the segment being decoded
    time_s: float
    frame: av.VideoFrame | None
    sharp: float = 0.0
    corrupt: bool = False


@dataclass
class _ShotSampler:
    """Candidates of a shot of unknown length, at most 4k+1: the sharpest frame of each block of `stride`.

    When there are more blocks than 4k the stride doubles and neighbouring blocks merge (the sharper
    frame stays), so the candidates are the sharpest frames of an even grid over the shot so far.
    """

    k: int
    start: int = 0
    stride: int = 1
    blocks: dict[int, _Item] = field(default_factory=dict)

    @staticmethod
    def _rank(item: _Item) -> tuple[bool, float]:
        return (not item.corrupt, item.sharp)

    def add(self, item: _Item) -> None:
        block = (item.index - self.start) // self.stride
        held = self.blocks.get(block)
        if held is None or self._rank(item) > self._rank(held):
            self.blocks[block] = item
        if len(self.blocks) > 4 * self.k:
            self.stride *= 2
            merged: dict[int, _Item] = {}
            for number in sorted(self.blocks):
                item = self.blocks[number]
                if number // 2 not in merged or self._rank(item) > self._rank(merged[number // 2]):
                    merged[number // 2] = item
            self.blocks = merged

    @property
    def items(self) -> list[_Item]:
        return [self.blocks[b] for b in sorted(self.blocks)]

    def pick(self, length: int) -> list[_Item]:
        """One frame per equal slice of the shot (k slices, fewer for a shorter shot): the sharpest there."""
        items = self.items
        if not items or length <= 0:
            return []
        slices = min(self.k, length)
        chosen: dict[int, _Item] = {}
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


# -- one decode pass over a segment ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Segment:
    number: int
    seek_pts: int | None = None  # seek here (backward to a keyframe) first; None: decode from the start
    start_pts: int | None = None  # frames before this pts belong to the previous segment
    stop_pts: int | None = None  # the first pts of the next segment
    offset: int | None = 0  # index of the segment's first frame in the video, when already known
    head_closed: bool = True  # the segment's first frame starts a shot
    tail_closed: bool = True  # the segment ends a shot (the video ends, or a known cut)
    cuts: tuple[int, ...] | None = None  # known cuts (segment-relative): no detection
    previous_time: float | None = None  # time of the frame before the segment (interval rule)
    seek_back_frames: int = 0  # seek this much before seek_pts (the index may hold decode timestamps)
    tag: str = "p0"


@dataclass
class _OpenShot:
    """A shot whose start or end a worker cannot know: its candidates wait for the merge."""

    start: int
    end: int
    sampler: _ShotSampler
    interval_rows: list[int]


class _Pass:
    """Decode one segment: score every frame, cut shots, keep candidates, write what is certain."""

    def __init__(self, ex: _Extractor, seg: _Segment, bar: tqdm) -> None:
        self.ex, self.s, self.seg, self.bar = ex, ex.settings, seg, bar
        self.n = 0
        self._produced = 0  # frames handed over by the decode thread (errors are numbered with it)
        self.pts = array("q")
        self.times = array("d")
        self.durations = array("d")
        self.above: list[int] = []
        self.rows: dict[int, dict[str, Any]] = {}
        self.closed: set[tuple[int, int]] = set()
        self.open: list[_OpenShot] = []
        self.errors: list[dict[str, Any]] = []
        self.first_hsv: np.ndarray | None = None
        self.last_hsv: np.ndarray | None = None
        self.first_item: _Item | None = None  # its interval pick depends on the previous segment
        self.reached_stop = seg.stop_pts is None
        self.first_pts: int | None = None
        self._hsv: np.ndarray | None = None
        # After a split the detector starts as in the middle of a video, the last cut long past (the
        # likely state there), so a cut soon after the split is found as in one pass; the merge checks.
        self._flash = CutFilter(self.s.min_scene_len, ex.fps, primed=not seg.head_closed)
        self._known_cuts = deque(sorted(seg.cuts)) if seg.cuts is not None else None
        self._cuts: deque[int] = deque()
        self._pending: deque[_Item] = deque()
        self._last_above = -(1 << 62)  # newest frame above the threshold: the only place a cut can still land
        self._shot_start: int | None = None
        self._sampler = _ShotSampler(max(self.s.per_shot, 1))
        self._interval_rows: list[int] = []
        self._previous_time = seg.previous_time
        self._reformatter = VideoReformatter()  # keeps its swscale context: 2x faster than frame.reformat
        self._small = (DETECTOR_WIDTH, DETECTOR_WIDTH)
        self._fps = ex.fps

    # decode ------------------------------------------------------------------------------------------
    def run(self, threads: int) -> _Pass:
        info = self.ex.info
        scale = min(1.0, DETECTOR_WIDTH / info.coded_width) if info.coded_width else 1.0
        self._small = (max(2, round(info.coded_width * scale)), max(2, round(info.coded_height * scale)))
        done = 0
        for frame, time_s in _prefetch(self._frames(threads), PREFETCH_FRAMES):
            self._feed(frame, time_s)
            done += 1
            if done == 64:
                self.bar.update(done)
                done = 0
        self.bar.update(done)
        self._finish()
        return self

    def _frames(self, threads: int) -> Iterator[tuple[av.VideoFrame, float]]:
        """Decodable frames of the segment in presentation order, with their time in seconds."""
        seg = self.seg
        with open_video(Path(self.ex.info.path)) as container:
            stream = video_stream(container)
            if threads == 1:
                stream.thread_count = 1
            else:
                stream.thread_type, stream.thread_count = "AUTO", max(0, threads)
            base = stream.time_base
            origin = stream.start_time or 0
            if seg.seek_pts is not None:
                back = int(seg.seek_back_frames / float(self._fps) / base) if base is not None else 0
                container.seek(seg.seek_pts - back, stream=stream, backward=True, any_frame=False)
            last_pts: int | None = None
            last_time = -1.0 / float(self._fps)
            for frame in self._decode(container, stream):
                pts = frame.pts
                if pts is not None:
                    if seg.start_pts is not None and pts < seg.start_pts:
                        continue  # an open-GOP leading picture of the previous segment
                    if seg.stop_pts is not None and pts >= seg.stop_pts:
                        self.reached_stop = True
                        return
                    if last_pts is not None and pts <= last_pts:
                        self.errors.append({"kind": "non_monotonic_pts", "after_frame": self._produced - 1,
                                            "pts": pts, "error": "frame dropped: its timestamp does not advance"})
                        continue
                    last_pts = pts
                    time_s = float((pts - origin) * base) if base is not None else last_time + 1.0 / float(self._fps)
                elif seg.start_pts is not None or seg.stop_pts is not None:
                    raise _NotSplittable("a frame without a timestamp")
                else:
                    time_s = last_time + 1.0 / float(self._fps)
                last_time = time_s
                duration = float(frame.duration * base) if frame.duration and base is not None else 0.0
                self.pts.append(pts if pts is not None else -1)
                self.durations.append(duration)
                self._produced += 1
                yield frame, time_s

    def _decode(self, container: av.container.InputContainer, stream: Any) -> Iterator[av.VideoFrame]:
        """Every decodable frame; a corrupt packet is recorded and skipped, a broken demux ends the video."""
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                self.errors.append({"kind": "demux_error", "after_frame": self._produced - 1, "error": str(exc)})
                return
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                when = float(packet.pts * stream.time_base) if packet.pts is not None and stream.time_base else None
                self.errors.append({"kind": "undecodable_packet", "after_frame": self._produced - 1,
                                    "pts": packet.pts, "time_s": when, "error": str(exc)})
                continue
            yield from decoded

    # per frame -------------------------------------------------------------------------------------------
    def _feed(self, frame: av.VideoFrame, time_s: float) -> None:
        """Score the frame; it then waits in the pending window until its shot is certain."""
        index = self.n
        self.n += 1
        self.times.append(time_s)
        if self.first_pts is None:
            self.first_pts = frame.pts
        small = self._reformatter.reformat(
            frame, width=self._small[0], height=self._small[1], format="bgr24", interpolation="FAST_BILINEAR"
        ).to_ndarray()
        item = _Item(index, time_s, frame, corrupt=bool(frame.is_corrupt))
        if item.corrupt:
            self.errors.append({"kind": "corrupt_frame", "frame": index, "time_s": round(time_s, 4),
                                "error": "decoder flagged the frame as corrupt"})
        if self._known_cuts is None:
            hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
            above = self._hsv is not None and content_score(self._hsv, hsv) >= self.s.threshold
            if above:
                self.above.append(index)
                self._last_above = index
            self._hsv = hsv
            if self.first_hsv is None:
                self.first_hsv = hsv
            self._cuts.extend(self._flash.feed(index, above))
        elif self._known_cuts and self._known_cuts[0] == index:
            self._cuts.append(self._known_cuts.popleft())
        if self.s.scene:
            item.sharp = sharpness(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
        self._pending.append(item)
        # The detector reports a cut at its newest frame above the threshold, at the latest
        # min_scene_len frames later: frames before that one, or all once that time is over, are certain.
        settled = self._known_cuts is not None or index - self._last_above > self.s.min_scene_len
        while self._pending and (settled or self._pending[0].index < self._last_above):
            self._commit(self._pending.popleft())

    def _commit(self, item: _Item) -> None:
        """`item` is older than any cut the detector can still report: its shot is final."""
        if self._shot_start is None:
            self._open_shot(item.index)
        cut_here = False
        while self._cuts and self._cuts[0] <= item.index:
            cut_here = self._cuts.popleft() > self._shot_start or cut_here
        if cut_here:  # a cut reported late would land here too: boundaries follow the rows
            self._close_shot(item.index)
            self._open_shot(item.index)
        if self.s.scene:
            self._sampler.add(item)
        if self.s.by_interval:
            if self._previous_time is None and item.index == 0 and not self.seg.head_closed:
                self.first_item = item  # decided by the merge, once the previous frame's time is known
            elif self.ex.interval_slot(item.time_s) > self.ex.interval_slot(self._previous_time):
                self._interval_rows.append(item.index)
                self.write(item, "interval")
        self._previous_time = item.time_s

    def _open_shot(self, start: int) -> None:
        self._shot_start = start
        self._sampler = _ShotSampler(max(self.s.per_shot, 1), start=start)
        self._interval_rows = []

    def _close_shot(self, end: int) -> None:
        assert self._shot_start is not None
        start = self._shot_start
        if (start == 0 and not self.seg.head_closed) or (end == self.n and not self.seg.tail_closed):
            self.open.append(_OpenShot(start, end, self._sampler, self._interval_rows))
        else:
            self.closed.add((start, end))
            self.finish_shot(self._sampler, start, end, self._interval_rows)
        self._shot_start = None

    def _finish(self) -> None:
        while self._pending:
            self._commit(self._pending.popleft())
        if self._shot_start is not None:
            self._close_shot(self.n)
        if self._known_cuts is None and self.n:
            self.last_hsv = self._hsv
        self._hsv = None

    # output ---------------------------------------------------------------------------------------------
    def finish_shot(self, sampler: _ShotSampler, start: int, end: int, interval_rows: list[int]) -> None:
        """Write the shot's scene picks; in hybrid mode drop interval frames next to a scene pick."""
        if not self.s.scene:
            return
        picks = sampler.pick(end - start)
        for item in picks:
            self.write(item, "scene")
        if self.s.by_interval:
            scene = [it.index for it in picks]
            for index in interval_rows:
                row = self.rows.get(index)
                if row is None or index in scene:
                    continue
                near = [p for p in scene if abs(p - index) <= self.s.hybrid_window]
                if near:
                    self._drop(index)
                    self.rows[min(near, key=lambda p: (abs(p - index), p))]["selected_by"] = "scene+interval"
        for item in sampler.items:
            item.frame = None

    def write(self, item: _Item, selected_by: str) -> None:
        row = self.rows.get(item.index)
        if row is not None:
            if selected_by not in row["selected_by"].split("+"):
                row["selected_by"] = "scene+interval"
            return
        if item.frame is None:  # pragma: no cover - a bookkeeping bug, not bad input
            raise RuntimeError(f"frame {item.index} of {self.ex.info.path} was released before it was written")
        bgr = orient(item.frame.to_ndarray(format="bgr24"), self.ex.info.orientation)
        path = self.ex.frame_path(self.seg, item.index)
        ok, data = cv2.imencode(f".{self.s.ext}", bgr, self.ex.encode_params)
        if not ok:
            raise ConfigError(f"frames.image_format {self.s.ext!r}: OpenCV cannot write this format")
        with atomic_path(path) as tmp:
            tmp.write_bytes(data.tobytes())
        metrics, failed = self.s.gates.assess(bgr, item.corrupt)
        height, width = bgr.shape[:2]
        self.rows[item.index] = {
            "row_id": None, "kind": "frame", "parent_id": None, "video": self.ex.info.path,
            "video_id": self.ex.info.video_id, "shot_id": None, "frame_index": item.index,
            "time_s": round(item.time_s, 4), "path": str(path), "width": width, "height": height, **metrics,
            "selected_by": selected_by, "status": "rejected" if failed else "kept",
            "reject_reason": "; ".join(text for _, text in failed) if failed else None,
            "reject_codes": ";".join(code for code, _ in failed) if failed else None,
        }

    def _drop(self, index: int) -> None:
        row = self.rows.pop(index)
        Path(row["path"]).unlink(missing_ok=True)

    def drop_range(self, start: int, end: int) -> None:
        """Forget (and delete) the rows of segment frames [start, end): another pass redoes them."""
        for index in [i for i in self.rows if start <= i < end]:
            self._drop(index)
        self.errors = [e for e in self.errors if not start <= e.get("frame", e.get("after_frame", -1)) < end]

    def release(self) -> None:
        """Let go of every decoded picture still held (open shots, the first frame)."""
        for shot in self.open:
            for item in shot.sampler.items:
                item.frame = None
        self.open = []
        self.first_item = None


def _prefetch(source: Iterator[Any], depth: int) -> Iterator[Any]:
    """Iterate `source` in its own thread, up to `depth` items ahead, so decoding overlaps the consumer."""
    buffer: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    break
            else:
                put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(_Failure(exc))
        finally:
            source.close()  # type: ignore[attr-defined]

    thread = threading.Thread(target=produce, name="castlab-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


@dataclass
class _Failure:
    exc: BaseException


class _NotSplittable(Exception):
    """The parallel passes cannot be stitched exactly; the video is decoded in one pass instead."""


# -- the whole video ---------------------------------------------------------------------------------------
class _Extractor:
    def __init__(self, info: VideoInfo, out_dir: Path, settings: _Settings) -> None:
        self.info = info
        self.settings = settings
        self.mode = settings.mode
        self.threshold = settings.threshold
        self.min_scene_len = settings.min_scene_len
        self.frames_dir = out_dir / "frames"
        self.frames_dir.mkdir(parents=True, exist_ok=True)
        self.fps = Fraction(info.fps).limit_denominator(100000) if info.fps else Fraction(25)
        ext = settings.ext
        self.encode_params = [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality] if ext in ("jpg", "jpeg") else []
        self.rows: list[dict[str, Any]] = []
        self.shots: list[dict[str, Any]] = []
        self.decode_errors: list[dict[str, Any]] = []
        self.timestamp_gaps: list[dict[str, Any]] = []
        self.decoded = 0
        self.redone_frames = 0
        self._all_passes: list[_Pass] = []

    def interval_slot(self, time_s: float | None) -> int:
        """Number of interval marks passed at `time_s` minus one (-1 before the video)."""
        if time_s is None:
            return -1
        return math.floor((max(time_s, 0.0) + 1e-6) / self.settings.interval)

    def frame_path(self, seg: _Segment, index: int) -> Path:
        if seg.offset is not None:
            return self.frames_dir / f"{self.info.video_id}_{seg.offset + index:06d}.{self.settings.ext}"
        return self.frames_dir / f".{self.info.video_id}_{seg.tag}_{index:06d}.part.{self.settings.ext}"

    # planning -------------------------------------------------------------------------------------------
    def _plan(self) -> list[_Segment]:
        """Split points: the keyframes FFmpeg seeks to for equal shares of the duration (or one segment).

        Only containers whose index makes seeking exact qualify; each split is the pts of the keyframe
        packet the seek lands on, and a pass starting there decodes exactly what one pass would.
        """
        count = min(self.settings.workers, self.info.frames // self.settings.segment_min_frames)
        if count < 2 or self.info.duration_s <= 0:
            return [_Segment(0)]
        with open_video(Path(self.info.path)) as container:
            if not any(name in SEEKABLE_FORMATS for name in container.format.name.split(",")):
                return [_Segment(0)]
            stream = video_stream(container)
            if stream.time_base is None:
                return [_Segment(0)]
            origin = stream.start_time or 0
            starts: list[tuple[int, int]] = []  # (seek target, pts of the keyframe it lands on)
            for j in range(1, count):
                target = origin + int(j * self.info.duration_s / count / stream.time_base)
                first = self._first_packet_pts(container, stream, target)  # the keyframe before target
                if first is not None and first < target:  # the one after, if nearer
                    later = self._first_packet_pts(container, stream, 2 * target - first)
                    if later is not None and target < later < 2 * target - first:
                        target, first = 2 * target - first, later
                if first is not None and first > (starts[-1][1] if starts else origin):
                    starts.append((target, first))
        if not starts:
            return [_Segment(0)]
        last = len(starts)
        segments = [_Segment(0, stop_pts=starts[0][1], tail_closed=False)]
        for j, (target, first) in enumerate(starts, start=1):
            segments.append(_Segment(
                j, seek_pts=target, start_pts=first, stop_pts=starts[j][1] if j < last else None, offset=None,
                head_closed=False, tail_closed=j == last, tag=f"p{j}",
            ))
        return segments

    @staticmethod
    def _first_packet_pts(container: av.container.InputContainer, stream: Any, stamp: int) -> int | None:
        try:
            container.seek(stamp, stream=stream, backward=True, any_frame=False)
            for packet in container.demux(stream):
                if packet.size:
                    return packet.pts if packet.is_keyframe else None
        except av.error.FFmpegError:
            return None
        return None

    # running ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        segments = self._plan()
        name = Path(self.info.path).name
        with tqdm(total=self.info.frames, unit="frame", desc=f"frames {name}", mininterval=0.5, leave=False) as bar:
            passes = self._run_passes(segments, bar)
            try:
                self._merge(passes, bar)
            except _NotSplittable as why:
                log.info("%s: parallel passes not usable (%s); decoding in one pass", self.info.path, why)
                self._reset()
                self._merge(self._run_passes([_Segment(0)], bar), bar)
        if self.decode_errors:
            log.warning("%s: %d decode error(s), see shots.json", self.info.path, len(self.decode_errors))

    def _reset(self) -> None:
        """Forget every pass (and delete what they wrote) before decoding again in one pass."""
        for p in self._all_passes:
            p.release()
            p.drop_range(0, p.n)
        self._all_passes = []
        self.rows, self.shots, self.decode_errors, self.timestamp_gaps = [], [], [], []
        self.redone_frames = 0

    def _run_passes(self, segments: list[_Segment], bar: tqdm) -> list[_Pass]:
        cores = _cores()
        threads = 0 if len(segments) == 1 else max(1, cores // len(segments))
        passes = [self._new_pass(seg, bar) for seg in segments]
        if len(passes) == 1:
            return [passes[0].run(threads)]
        failures: list[_NotSplittable] = []
        with ThreadPoolExecutor(len(passes), thread_name_prefix="castlab-frames") as pool:
            for future in [pool.submit(p.run, threads) for p in passes]:
                try:
                    future.result()
                except _NotSplittable as exc:
                    failures.append(exc)
        if failures:
            log.info("%s: %s; decoding in one pass", self.info.path, failures[0])
            self._reset()
            return self._run_passes([_Segment(0)], bar)
        return passes

    # merging -----------------------------------------------------------------------------------------------
    def _merge(self, passes: list[_Pass], bar: tqdm) -> None:
        """Stitch the passes: global cuts by replay, each shot resolved by exactly one pass, rows renamed."""
        for prev, cur in zip(passes, passes[1:], strict=False):
            if not cur.n or cur.first_pts != cur.seg.start_pts or not prev.reached_stop:
                raise _NotSplittable(f"segment {cur.seg.number} does not continue segment {prev.seg.number}")
        offsets = [0]
        for p in passes:
            offsets.append(offsets[-1] + p.n)
        n = offsets[-1]
        if n == 0:
            raise InputError(self.info.path, "has a video stream but no frame could be decoded")
        pts = array("q")
        times = array("d")
        above: set[int] = set()
        for p, off in zip(passes, offsets, strict=False):
            pts.extend(p.pts)
            times.extend(p.times)
            above.update(off + i for i in p.above)
        for k in range(1, len(passes)):
            prev_hsv, first_hsv = passes[k - 1].last_hsv, passes[k].first_hsv
            if prev_hsv is not None and first_hsv is not None and content_score(prev_hsv, first_hsv) >= self.threshold:
                above.add(offsets[k])
        cuts = replay_cuts(n, above, self.min_scene_len, self.fps)
        bounds = [0, *cuts, n]
        shots = list(zip(bounds, bounds[1:], strict=False))

        # A pass settles a shot when it cut exactly the same shot (its candidates are then the same
        # as in one pass); any other shot is decoded again, and what passes wrote there is dropped.
        redo: list[tuple[int, int]] = []
        for a, b in shots:
            k = bisect.bisect_right(offsets, a) - 1
            p, la, lb = passes[k], a - offsets[k], b - offsets[k]
            if lb > p.n:
                redo.append((a, b))
            elif (la, lb) not in p.closed:
                shot = next((o for o in p.open if (o.start, o.end) == (la, lb)), None)
                if shot is None:
                    redo.append((a, b))
                    continue
                if la == 0 and p.first_item is not None:
                    self._interval_first(p, times, offsets[k])
                p.finish_shot(shot.sampler, la, lb, shot.interval_rows)
        for p in passes:
            p.release()
        sources = [(p, off) for p, off in zip(passes, offsets, strict=False)]
        for a, b in _join(redo):
            for p, off in sources:
                p.drop_range(a - off, b - off)
            sources.append((self._redo(a, b, pts, times, cuts, bar), a))
        self._collect(sources, n, pts, times, passes, shots)

    def _interval_first(self, p: _Pass, times: array, offset: int) -> None:
        """The interval pick of a segment's first frame, now that the previous frame's time is known."""
        item = p.first_item
        if item is not None and self.interval_slot(times[offset]) > self.interval_slot(times[offset - 1]):
            p.write(item, "interval")
            for shot in p.open:
                if shot.start == 0:
                    shot.interval_rows.insert(0, 0)

    def _redo(self, a: int, b: int, pts: array, times: array, cuts: list[int], bar: tqdm) -> _Pass:
        """Decode frames [a, b) again, with the cuts known: shots no pass could settle alone."""
        bar.total += b - a
        self.redone_frames += b - a
        seg = _Segment(
            len(self._all_passes), seek_pts=pts[a] if a else None, start_pts=pts[a] if a else None,
            stop_pts=pts[b] if b < len(pts) else None, offset=a, cuts=tuple(c - a for c in cuts if a < c < b),
            previous_time=times[a - 1] if a else None, seek_back_frames=REDO_SEEK_BACK_FRAMES, tag=f"r{a}",
        )
        p = self._new_pass(seg, bar).run(0)
        if p.n != b - a or (a and p.first_pts != pts[a]):
            raise _NotSplittable(f"decoding frames {a}-{b} again gave {p.n} frames")
        return p

    def _new_pass(self, seg: _Segment, bar: tqdm) -> _Pass:
        p = _Pass(self, seg, bar)
        self._all_passes.append(p)
        return p

    def _collect(
        self, sources: list[tuple[_Pass, int]], n: int, pts: array, times: array, passes: list[_Pass],
        shots: list[tuple[int, int]],
    ) -> None:
        """Global frame indices, shot ids and final file names for every row; shots and decode errors."""
        self.decoded = n
        starts = [a for a, _ in shots]
        rows: list[dict[str, Any]] = []
        seen_errors: set[str] = set()
        for p, off in sources:
            for local, row in p.rows.items():
                index = off + local
                final = self.frames_dir / f"{self.info.video_id}_{index:06d}.{self.settings.ext}"
                if row["path"] != str(final):
                    os.replace(row["path"], final)
                shot = bisect.bisect_right(starts, index) - 1
                row.update(row_id=f"frame:{self.info.video_id}:{index}", frame_index=index, path=str(final),
                           shot_id=self._shot_id(shot))
                rows.append(row)
            for error in p.errors:
                error = {k: (off + v if k in ("frame", "after_frame") else v) for k, v in error.items()}
                key = json.dumps(error, sort_keys=True, default=str)
                if key not in seen_errors:  # a redone range reports its errors again
                    seen_errors.add(key)
                    self.decode_errors.append(error)
        rows.sort(key=lambda r: r["frame_index"])
        self.rows = rows
        durations = array("d")
        for p in passes:
            durations.extend(p.durations)
        last = durations[-1] if durations and durations[-1] > 0 else 1.0 / float(self.fps)
        for number, (a, b) in enumerate(shots):
            end_time = times[b] if b < n else times[n - 1] + last
            self.shots.append({
                "shot_id": self._shot_id(number), "index": number, "start_frame": a, "end_frame": b,
                "frames": b - a, "start_time": round(times[a], 4), "end_time": round(end_time, 4),
            })
        self._find_gaps(pts, times, durations)
        self.decode_errors.sort(key=lambda e: e.get("frame", e.get("after_frame", -1)))

    def _find_gaps(self, pts: array, times: array, durations: array) -> None:
        """Frames missing between two decoded ones: a lost-frames decode error when a decode problem is near.

        Other pts jumps are listed as ``timestamp_gaps`` (e.g. the joins of a concatenated file), except in
        variable frame rate videos, where uneven steps are the norm.
        """
        nominal = 1.0 / float(self.fps)
        problems = [e.get("time_s") for e in self.decode_errors if e.get("time_s") is not None]
        problems += [times[e["after_frame"]] for e in self.decode_errors
                     if e.get("time_s") is None and 0 <= e.get("after_frame", -1) < len(times)]
        for i in range(1, len(times)):
            if pts[i] < 0 or pts[i - 1] < 0:
                continue
            step = durations[i - 1] if durations[i - 1] > 0 else nominal
            delta = times[i] - times[i - 1]
            if delta <= GAP_FACTOR * step:
                continue
            gap = {"after_frame": i - 1, "before_frame": i, "from_time": round(times[i - 1], 4),
                   "to_time": round(times[i], 4), "missing_frames": max(1, round(delta / step) - 1)}
            if any(times[i - 1] - GAP_NEAR_ERROR_S <= t <= times[i] + GAP_NEAR_ERROR_S for t in problems):
                self.decode_errors.append({"kind": "lost_frames", **gap,
                                           "error": f"about {gap['missing_frames']} frame(s) lost"})
            elif not self.info.variable_frame_rate:
                self.timestamp_gaps.append(gap)

    def _shot_id(self, number: int) -> str:
        return f"{self.info.video_id}_s{number:04d}"


def _cores() -> int:
    """CPU cores this process may use."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _join(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _merge_shots(path: Path, info: VideoInfo, ex: _Extractor) -> None:
    """Add this video's shots to ``shots.json`` (one entry per video id; safe for parallel videos)."""
    entry = {
        "video": info.path, "video_id": info.video_id, "fps": info.fps, "width": info.width,
        "height": info.height, "rotation": info.rotation, "orientation": info.orientation,
        "variable_frame_rate": info.variable_frame_rate, "frames_decoded": ex.decoded,
        "frames_declared": info.frames, "mode": ex.mode,
        "detector": {"name": "ContentDetector", "threshold": ex.threshold, "min_scene_len": ex.min_scene_len},
        "passes": len(ex._all_passes), "redone_frames": ex.redone_frames,
        "decode_errors": ex.decode_errors, "timestamp_gaps": ex.timestamp_gaps,
        "shots": ex.shots,
    }
    with _locked(path.with_name(f".{path.name}.lock")):
        data: dict[str, Any] = {"videos": {}}
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                log.warning("%s is not valid JSON; rewriting it", path)
            data.setdefault("videos", {})
        data["videos"][info.video_id] = entry
        write_json_atomic(path, data)
