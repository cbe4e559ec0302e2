"""Video → shots → representative frames, streaming, with the decode split over parallel workers (PyAV).

Modes (``frames.mode`` or the `mode` argument):

- ``scene``: cuts where PySceneDetect's ContentDetector puts them; ``frames.frames_per_shot`` frames per
  shot: the shot is cut into that many equal slices and each slice gives its sharpest frame
  (:func:`castlab.frames.quality.sharpness` of the detector's downscaled grey picture, so it costs little).
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

Modules: :mod:`castlab.frames.scene_cuts` (the detector's score and cut rule), :mod:`castlab.frames.shot_sampler`
(candidates and picks), :mod:`castlab.frames.decode_pass` (one segment's decode), :mod:`castlab.frames.settings`;
this one plans segments, stitches the passes and writes ``shots.json``.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import logging
import math
import os
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
from tqdm import tqdm

from castlab.config import Config
from castlab.errors import InputError
from castlab.frames.decode_pass import FramePass, NotSplittable, Segment
from castlab.frames.scene_cuts import content_score, replay_cuts
from castlab.frames.settings import MODES, FrameSettings, cpu_cores
from castlab.frames.video import VideoInfo, open_video, probe_video, video_stream
from castlab.workspace import write_json_atomic

__all__ = ["MODES", "SHOTS_NAME", "extract_frames", "record_failed_input"]

log = logging.getLogger(__name__)

SHOTS_NAME = "shots.json"
SEEKABLE_FORMATS = ("mov", "mp4", "matroska", "webm")  # demuxers whose index seeks exactly to keyframes
REDO_SEEK_BACK_FRAMES = 16  # more than any decoder reorder delay: the seek lands before the frame wanted
GAP_FACTOR = 1.5  # a pts step this many frame durations long means frames are missing
GAP_NEAR_ERROR_S = 2.0  # ... and it is a decode error when a decode problem lies this close


def extract_frames(
    video: Path, out_dir: Path, cfg: Config, mode: str | None = None, *, workers: int | None = None
) -> list[dict[str, Any]]:
    """Decode `video` and write the selected frames plus its entry in ``shots.json``; return manifest rows.

    Writes ``out_dir/frames/<videoid>_<frameidx:06d>.<frames.image_format>`` (upright: the display
    rotation is applied) and merges this video's shots into ``out_dir/shots.json``. Every written frame
    gets a row; frames failing the quality gates (:mod:`castlab.frames.quality`) stay as rows with
    ``status="rejected"``, a ``reject_reason`` and ``reject_codes``. Undecodable packets are skipped,
    frames the decoder flags as corrupt are rejected, and lost frames are reported as gaps (frame and time
    range), all under ``decode_errors`` in ``shots.json``. `workers` overrides ``frames.workers``.
    """
    settings = FrameSettings.from_config(cfg, mode, workers)
    info = probe_video(Path(video).resolve())
    extractor = Extractor(info, Path(out_dir).resolve(), settings)
    extractor.run()
    _merge_shots(Path(out_dir).resolve() / SHOTS_NAME, info, extractor)
    return sorted(extractor.rows, key=lambda r: r["frame_index"])


class Extractor:
    """One video: plan the segments, run their passes, stitch them, and hold the rows and shots."""

    def __init__(self, info: VideoInfo, out_dir: Path, settings: FrameSettings) -> None:
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
        self._all_passes: list[FramePass] = []

    def interval_slot(self, time_s: float | None) -> int:
        """Number of interval marks passed at `time_s` minus one (-1 before the video)."""
        if time_s is None:
            return -1
        return math.floor((max(time_s, 0.0) + 1e-6) / self.settings.interval)

    def frame_path(self, seg: Segment, index: int) -> Path:
        if seg.offset is not None:
            return self.frames_dir / f"{self.info.video_id}_{seg.offset + index:06d}.{self.settings.ext}"
        return self.frames_dir / f".{self.info.video_id}_{seg.tag}_{index:06d}.part.{self.settings.ext}"

    # planning -------------------------------------------------------------------------------------------
    def _plan(self) -> list[Segment]:
        """Split points: the keyframes FFmpeg seeks to for equal shares of the duration (or one segment).

        Only containers whose index makes seeking exact qualify; each split is the pts of the keyframe
        packet the seek lands on, and a pass starting there decodes exactly what one pass would.
        """
        count = min(self.settings.workers, self.info.frames // self.settings.segment_min_frames)
        if count < 2 or self.info.duration_s <= 0:
            return [Segment(0)]
        with open_video(Path(self.info.path)) as container:
            if not any(name in SEEKABLE_FORMATS for name in container.format.name.split(",")):
                return [Segment(0)]
            stream = video_stream(container)
            if stream.time_base is None:
                return [Segment(0)]
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
            return [Segment(0)]
        last = len(starts)
        segments = [Segment(0, stop_pts=starts[0][1], tail_closed=False)]
        for j, (target, first) in enumerate(starts, start=1):
            segments.append(Segment(
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
            except NotSplittable as why:
                log.info("%s: parallel passes not usable (%s); decoding in one pass", self.info.path, why)
                self._reset()
                self._merge(self._run_passes([Segment(0)], bar), bar)
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

    def _run_passes(self, segments: list[Segment], bar: tqdm) -> list[FramePass]:
        cores = cpu_cores()
        threads = 0 if len(segments) == 1 else max(1, cores // len(segments))
        passes = [self._new_pass(seg, bar) for seg in segments]
        if len(passes) == 1:
            return [passes[0].run(threads)]
        failures: list[NotSplittable] = []
        with ThreadPoolExecutor(len(passes), thread_name_prefix="castlab-frames") as pool:
            for future in [pool.submit(p.run, threads) for p in passes]:
                try:
                    future.result()
                except NotSplittable as exc:
                    failures.append(exc)
        if failures:
            log.info("%s: %s; decoding in one pass", self.info.path, failures[0])
            self._reset()
            return self._run_passes([Segment(0)], bar)
        return passes

    # merging -----------------------------------------------------------------------------------------------
    def _merge(self, passes: list[FramePass], bar: tqdm) -> None:
        """Stitch the passes: global cuts by replay, each shot resolved by exactly one pass, rows renamed."""
        for prev, cur in zip(passes, passes[1:], strict=False):
            if not cur.n or cur.first_pts != cur.seg.start_pts or not prev.reached_stop:
                raise NotSplittable(f"segment {cur.seg.number} does not continue segment {prev.seg.number}")
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

    def _interval_first(self, p: FramePass, times: array, offset: int) -> None:
        """The interval pick of a segment's first frame, now that the previous frame's time is known."""
        item = p.first_item
        if item is not None and self.interval_slot(times[offset]) > self.interval_slot(times[offset - 1]):
            p.write(item, "interval")
            for shot in p.open:
                if shot.start == 0:
                    shot.interval_rows.insert(0, 0)

    def _redo(self, a: int, b: int, pts: array, times: array, cuts: list[int], bar: tqdm) -> FramePass:
        """Decode frames [a, b) again, with the cuts known: shots no pass could settle alone."""
        bar.total += b - a
        self.redone_frames += b - a
        seg = Segment(
            len(self._all_passes), seek_pts=pts[a] if a else None, start_pts=pts[a] if a else None,
            stop_pts=pts[b] if b < len(pts) else None, offset=a, cuts=tuple(c - a for c in cuts if a < c < b),
            previous_time=times[a - 1] if a else None, seek_back_frames=REDO_SEEK_BACK_FRAMES, tag=f"r{a}",
        )
        p = self._new_pass(seg, bar).run(0)
        if p.n != b - a or (a and p.first_pts != pts[a]):
            raise NotSplittable(f"decoding frames {a}-{b} again gave {p.n} frames")
        return p

    def _new_pass(self, seg: Segment, bar: tqdm) -> FramePass:
        p = FramePass(self, seg, bar)
        self._all_passes.append(p)
        return p

    def _collect(
        self, sources: list[tuple[FramePass, int]], n: int, pts: array, times: array, passes: list[FramePass],
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


def _merge_shots(path: Path, info: VideoInfo, ex: Extractor) -> None:
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
    _update_shots(path, lambda data: data["videos"].__setitem__(info.video_id, entry))


def record_failed_input(out_dir: Path, key: str, entry: dict[str, Any]) -> None:
    """Add an input that could not be processed to ``shots.json``'s ``failed`` section (its reason with it)."""
    _update_shots(Path(out_dir).resolve() / SHOTS_NAME, lambda data: data.setdefault("failed", {})
                  .__setitem__(key, entry))


def _update_shots(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Read ``shots.json`` (a corrupt one is rewritten), apply `change`, write it back: under a lock, since the
    videos of a run are extracted in parallel."""
    with _locked(path.with_name(f".{path.name}.lock")):
        data: dict[str, Any] = {"videos": {}}
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                log.warning("%s is not valid JSON; rewriting it", path)
        data.setdefault("videos", {})
        change(data)
        write_json_atomic(path, data)
