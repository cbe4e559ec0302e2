"""One decode pass over a segment of a video: score every frame, cut shots, keep candidates, write frames.

See :mod:`castlab.frames.extract` for how passes over parallel segments are stitched into the result of one.
"""

from __future__ import annotations

import queue
import threading
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter
from tqdm import tqdm

from castlab.errors import ConfigError
from castlab.frames.quality import sharpness
from castlab.frames.scene_cuts import DETECTOR_WIDTH, CutFilter, content_score
from castlab.frames.settings import FrameSettings
from castlab.frames.shot_sampler import Candidate, ShotSampler
from castlab.frames.video import VideoInfo, open_video, orient, video_stream
from castlab.workspace import atomic_path

PREFETCH_FRAMES = 4  # decoded frames queued ahead of the per-frame work


@dataclass(frozen=True)
class Segment:
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
class OpenShot:
    """A shot whose start or end a worker cannot know: its candidates wait for the merge."""

    start: int
    end: int
    sampler: ShotSampler
    interval_rows: list[int]


class PassOwner(Protocol):
    """What a pass reads from the extraction that runs it (:class:`castlab.frames.extract.Extractor`)."""

    settings: FrameSettings
    info: VideoInfo
    fps: Any
    encode_params: list[int]

    def interval_slot(self, time_s: float | None) -> int: ...

    def frame_path(self, seg: Segment, index: int) -> Path: ...


class FramePass:
    """Decode one segment: score every frame, cut shots, keep candidates, write what is certain."""

    def __init__(self, ex: PassOwner, seg: Segment, bar: tqdm) -> None:
        self.ex, self.s, self.seg, self.bar = ex, ex.settings, seg, bar
        self.n = 0
        self._produced = 0  # frames handed over by the decode thread (errors are numbered with it)
        self.pts = array("q")
        self.times = array("d")
        self.durations = array("d")
        self.above: list[int] = []
        self.rows: dict[int, dict[str, Any]] = {}
        self.closed: set[tuple[int, int]] = set()
        self.open: list[OpenShot] = []
        self.errors: list[dict[str, Any]] = []
        self.first_hsv: np.ndarray | None = None
        self.last_hsv: np.ndarray | None = None
        self.first_item: Candidate | None = None  # its interval pick depends on the previous segment
        self.reached_stop = seg.stop_pts is None
        self.first_pts: int | None = None
        self._hsv: np.ndarray | None = None
        # After a split the detector starts as in the middle of a video, the last cut long past (the
        # likely state there), so a cut soon after the split is found as in one pass; the merge checks.
        self._flash = CutFilter(self.s.min_scene_len, ex.fps, primed=not seg.head_closed)
        self._known_cuts = deque(sorted(seg.cuts)) if seg.cuts is not None else None
        self._cuts: deque[int] = deque()
        self._pending: deque[Candidate] = deque()
        self._last_above = -(1 << 62)  # newest frame above the threshold: the only place a cut can still land
        self._shot_start: int | None = None
        self._sampler = ShotSampler(max(self.s.per_shot, 1))
        self._interval_rows: list[int] = []
        self._previous_time = seg.previous_time
        self._reformatter = VideoReformatter()  # keeps its swscale context: 2x faster than frame.reformat
        self._small = (DETECTOR_WIDTH, DETECTOR_WIDTH)
        self._fps = ex.fps

    # decode ------------------------------------------------------------------------------------------
    def run(self, threads: int) -> FramePass:
        info = self.ex.info
        scale = min(1.0, DETECTOR_WIDTH / info.coded_width) if info.coded_width else 1.0
        self._small = (max(2, round(info.coded_width * scale)), max(2, round(info.coded_height * scale)))
        done = 0
        for frame, time_s in prefetch(self._frames(threads), PREFETCH_FRAMES):
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
                    raise NotSplittable("a frame without a timestamp")
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
        item = Candidate(index, time_s, frame, corrupt=bool(frame.is_corrupt))
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

    def _commit(self, item: Candidate) -> None:
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
        self._sampler = ShotSampler(max(self.s.per_shot, 1), start=start)
        self._interval_rows = []

    def _close_shot(self, end: int) -> None:
        assert self._shot_start is not None
        start = self._shot_start
        if (start == 0 and not self.seg.head_closed) or (end == self.n and not self.seg.tail_closed):
            self.open.append(OpenShot(start, end, self._sampler, self._interval_rows))
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
    def finish_shot(self, sampler: ShotSampler, start: int, end: int, interval_rows: list[int]) -> None:
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

    def write(self, item: Candidate, selected_by: str) -> None:
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


def prefetch(source: Iterator[Any], depth: int) -> Iterator[Any]:
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


class NotSplittable(Exception):
    """The parallel passes cannot be stitched exactly; the video is decoded in one pass instead."""
