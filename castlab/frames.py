"""Video → shots → representative frames, in one streaming decode pass (PyAV).

Modes (``frames.mode`` or the `mode` argument):

- ``scene``: cut detection with PySceneDetect's ``ContentDetector``; ``frames.frames_per_shot`` frames
  spread evenly over each shot (the centres of equal slices of the shot).
- ``interval``: one frame every ``frames.interval_seconds`` (shots are still detected, for shot ids).
- ``hybrid``: both selections, merged.

Memory stays bounded: only the last ``min_scene_length + 1`` decoded frames (the detector may report
a cut that far back) and at most ``4 * frames_per_shot + 1`` candidates of the current shot are held,
as decoded YUV frames; candidates thin out by doubling their stride as a shot grows, so the kept
frames are an even spread to within that stride.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
from av.video.reformatter import VideoReformatter
from scenedetect import ContentDetector, FrameTimecode
from tqdm import tqdm

from castlab.config import Config
from castlab.errors import ConfigError
from castlab.quality import QualityGates
from castlab.video import VideoInfo, open_video, probe_video, video_stream
from castlab.workspace import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

MODES = ("scene", "interval", "hybrid")
DETECTOR_WIDTH = 256  # PySceneDetect's own auto-downscale target width
SHOTS_NAME = "shots.json"


def scene_detector_threshold(cfg: Config) -> float:
    """``frames.scene_threshold`` (normalised) → ``ContentDetector(threshold=...)``.

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


def extract_frames(video: Path, out_dir: Path, cfg: Config, mode: str | None = None) -> list[dict[str, Any]]:
    """Decode `video` once and write the selected frames plus ``shots.json``; return manifest rows.

    Writes ``out_dir/frames/<videoid>_<frameidx:06d>.<frames.image_format>`` and merges this
    video's shots into ``out_dir/shots.json``. Every written frame gets a row; frames failing the
    quality gates (:mod:`castlab.quality`) stay as rows with ``status="rejected"``, a ``reject_reason``
    and ``reject_codes``. Undecodable packets are skipped and frames the
    decoder flags as corrupt are rejected; both are recorded under ``decode_errors`` in ``shots.json``.
    """
    mode = mode or str(cfg.get("frames.mode"))
    if mode not in MODES:
        raise ConfigError(f"frames.mode must be one of {MODES}, got {mode!r}")
    video = Path(video).resolve()
    out_dir = Path(out_dir).resolve()
    info = probe_video(video)
    extractor = _Extractor(info, out_dir, cfg, mode)
    extractor.run()
    _merge_shots(out_dir / SHOTS_NAME, info, extractor)
    return sorted(extractor.rows, key=lambda r: r["frame_index"])


@dataclass
class _Pending:
    index: int
    time_s: float
    frame: av.VideoFrame
    corrupt: bool = False


@dataclass
class _EvenSampler:
    """Keeps ≤ 4k+1 candidates of a shot of unknown length at a doubling stride."""

    k: int
    stride: int = 1
    items: list[_Pending] = field(default_factory=list)
    start: int = 0

    def add(self, item: _Pending) -> None:
        offset = item.index - self.start
        if offset % self.stride:
            return
        self.items.append(item)
        if len(self.items) > 4 * self.k:
            self.stride *= 2
            self.items = [it for it in self.items if (it.index - self.start) % self.stride == 0]

    def pick(self, length: int) -> list[_Pending]:
        """The candidates nearest to the centres of `k` equal slices of the shot (every frame if shorter)."""
        if not self.items or length <= 0:
            return []
        chosen: dict[int, _Pending] = {}
        slices = min(self.k, length)
        for j in range(slices):
            target = self.start + int((j + 0.5) * length / slices)
            best = min(self.items, key=lambda it: (abs(it.index - target), it.index))
            chosen[best.index] = best
        return [chosen[i] for i in sorted(chosen)]


class _Extractor:
    def __init__(self, info: VideoInfo, out_dir: Path, cfg: Config, mode: str) -> None:
        self.info = info
        self.mode = mode
        self.frames_dir = out_dir / "frames"
        self.frames_dir.mkdir(parents=True, exist_ok=True)
        self.ext = str(cfg.get("frames.image_format")).lower().lstrip(".")
        self.jpeg_quality = int(cfg.get("frames.jpeg_quality"))
        self.per_shot = int(cfg.get("frames.frames_per_shot"))
        self.interval = float(cfg.get("frames.interval_seconds"))
        if mode in ("scene", "hybrid") and self.per_shot < 1:
            raise ConfigError(f"frames.frames_per_shot must be >= 1, got {self.per_shot}")
        if mode in ("interval", "hybrid") and self.interval <= 0:
            raise ConfigError(f"frames.interval_seconds must be > 0, got {self.interval}")
        self.gates = QualityGates.from_config(cfg)
        self.min_scene_len = int(cfg.get("frames.min_scene_length"))
        self.threshold = scene_detector_threshold(cfg)
        self.detector = ContentDetector(threshold=self.threshold, min_scene_len=self.min_scene_len)
        self.fps = Fraction(info.fps).limit_denominator(100000) if info.fps else Fraction(25)
        self.window = int(getattr(self.detector, "event_buffer_length", self.min_scene_len)) + 1
        self.rows: list[dict[str, Any]] = []
        self.written: set[int] = set()
        self.shots: list[dict[str, Any]] = []
        self.decode_errors: list[dict[str, Any]] = []
        self.decoded = 0
        self._cuts: deque[int] = deque()
        self._pending: deque[_Pending] = deque()
        self._shot_start: tuple[int, float] | None = None
        self._sampler = _EvenSampler(max(self.per_shot, 1))
        self._next_interval = 0.0
        self._last_time = 0.0
        self._small = (DETECTOR_WIDTH, DETECTOR_WIDTH)
        self._reformatter = VideoReformatter()  # keeps its swscale context: 2x faster than frame.reformat

    # -- decode loop -------------------------------------------------------------------------
    def run(self) -> None:
        container = open_video(Path(self.info.path))
        with container:
            stream = video_stream(container)
            stream.thread_type = "AUTO"
            start, base = stream.start_time or 0, stream.time_base
            scale = min(1.0, DETECTOR_WIDTH / self.info.width)
            self._small = (max(2, round(self.info.width * scale)), max(2, round(self.info.height * scale)))
            desc = f"frames {Path(self.info.path).name}"
            with tqdm(total=self.info.frames, unit="frame", desc=desc, mininterval=0.5, leave=False) as bar:
                for frame in self._frames(container, stream):
                    if frame.pts is not None and base is not None:
                        time_s = float((frame.pts - start) * base)
                    else:
                        time_s = self.decoded / float(self.fps)
                    self._feed(frame, time_s)
                    bar.update(1)
            if self.decoded:
                for cut in self.detector.post_process(FrameTimecode(self.decoded - 1, fps=self.fps)):
                    self._cuts.append(int(cut.frame_num))
        while self._pending:
            self._commit(self._pending.popleft())
        if self._shot_start is not None:
            self._close_shot(self.decoded, self._last_time + 1.0 / float(self.fps))
        if self.decode_errors:
            log.warning("%s: %d decode error(s), see shots.json", self.info.path, len(self.decode_errors))

    def _feed(self, frame: av.VideoFrame, time_s: float) -> None:
        """Detector first; the frame then waits in the pending window until its shot is certain."""
        index = self.decoded
        self.decoded += 1
        self._last_time = time_s
        small = self._reformatter.reformat(
            frame, width=self._small[0], height=self._small[1], format="bgr24", interpolation="FAST_BILINEAR"
        ).to_ndarray()
        for cut in self.detector.process_frame(FrameTimecode(index, fps=self.fps), small):
            self._cuts.append(int(cut.frame_num))
        corrupt = bool(getattr(frame, "is_corrupt", False))
        if corrupt:
            self.decode_errors.append({"frame": index, "error": "decoder flagged the frame as corrupt"})
        self._pending.append(_Pending(index, time_s, frame, corrupt))
        while len(self._pending) > self.window:
            self._commit(self._pending.popleft())

    def _frames(self, container: av.container.InputContainer, stream: Any) -> Iterator[av.VideoFrame]:
        """Every decodable frame; a corrupt packet is recorded and skipped, a broken demux ends the video."""
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                self.decode_errors.append({"after_frame": self.decoded, "error": f"demux: {exc}"})
                return
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                self.decode_errors.append({"after_frame": self.decoded, "pts": packet.pts, "error": str(exc)})
                continue
            yield from decoded

    # -- shot bookkeeping ----------------------------------------------------------------------
    def _commit(self, item: _Pending) -> None:
        """`item` is older than any cut the detector can still report: its shot is final."""
        if self._shot_start is None:
            self._open_shot(item.index, item.time_s)
        cut_here = False
        while self._cuts and self._cuts[0] <= item.index:
            cut_here = self._cuts.popleft() > self._shot_start[0] or cut_here
        if cut_here:  # a cut reported late would land here too: boundaries follow the rows
            self._close_shot(item.index, item.time_s)
            self._open_shot(item.index, item.time_s)
        if self.mode in ("scene", "hybrid"):
            self._sampler.add(item)
        if self.mode in ("interval", "hybrid") and item.time_s + 1e-6 >= self._next_interval:
            self._write(item, "interval")
            while self._next_interval <= item.time_s + 1e-6:
                self._next_interval += self.interval

    def _open_shot(self, start: int, start_time: float) -> None:
        self._shot_start = (start, start_time)
        self._sampler = _EvenSampler(max(self.per_shot, 1), start=start)

    def _close_shot(self, end: int, end_time: float) -> None:
        assert self._shot_start is not None
        start, start_time = self._shot_start
        for item in self._sampler.pick(end - start):
            self._write(item, "scene")
        self.shots.append({
            "shot_id": self._shot_id(), "index": len(self.shots), "start_frame": start, "end_frame": end,
            "frames": end - start, "start_time": round(start_time, 4), "end_time": round(end_time, 4),
        })
        self._shot_start = None

    def _shot_id(self) -> str:
        return f"{self.info.video_id}_s{len(self.shots):04d}"

    # -- output ------------------------------------------------------------------------------
    def _write(self, item: _Pending, selected_by: str) -> None:
        if item.index in self.written:
            return
        self.written.add(item.index)
        bgr = item.frame.to_ndarray(format="bgr24")
        height, width = bgr.shape[:2]
        path = self.frames_dir / f"{self.info.video_id}_{item.index:06d}.{self.ext}"
        params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality] if self.ext in ("jpg", "jpeg") else []
        with atomic_path(path) as tmp:
            if not cv2.imwrite(str(tmp), bgr, params):
                raise ConfigError(f"frames.image_format {self.ext!r}: OpenCV cannot write this format")
        metrics, failed = self.gates.assess(bgr, item.corrupt)
        self.rows.append({
            "row_id": f"frame:{self.info.video_id}:{item.index}",
            "kind": "frame",
            "parent_id": None,
            "video": self.info.path,
            "video_id": self.info.video_id,
            "shot_id": self._shot_id(),
            "frame_index": item.index,
            "time_s": round(item.time_s, 4),
            "path": str(path),
            "width": width,
            "height": height,
            **metrics,
            "selected_by": selected_by,
            "status": "rejected" if failed else "kept",
            "reject_reason": "; ".join(text for _, text in failed) if failed else None,
            "reject_codes": ";".join(code for code, _ in failed) if failed else None,
        })
        item.frame = None  # type: ignore[assignment]  # release the decoded picture early


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
        "height": info.height, "frames_decoded": ex.decoded, "frames_declared": info.frames, "mode": ex.mode,
        "detector": {"name": "ContentDetector", "threshold": ex.threshold, "min_scene_len": ex.min_scene_len},
        "decode_errors": ex.decode_errors, "shots": ex.shots,
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
