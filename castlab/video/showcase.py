"""Showcase videos: frames → an H.264 MP4 (yuv420p) with the ffmpeg binary of the ``imageio-ffmpeg`` wheel.

The frames (RGB arrays or image files) are written as PNGs into a temporary folder, with mask/identity overlays
drawn on request (:class:`Overlay`, :func:`draw_overlay`), padded by one pixel where a side is odd (yuv420p needs
even sides), then encoded at ``video.showcase.crf``. Interpolation (``video.showcase.interpolate``) brings the
video to ``target_fps``: ``minterpolate`` is ffmpeg's motion-interpolation filter, ``rife`` runs the external
tool ``rife_command`` (an argv list; placeholders :data:`RIFE_PLACEHOLDERS`) on the frames folder and encodes the
frames it writes. The MP4 is written beside `out` under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError
from tqdm import tqdm

from castlab.errors import CastlabError, ConfigError, InputError
from castlab.pictures import TAB20, font, palette_colour
from castlab.settings import ShowcaseSettings
from castlab.workspace import atomic_path

CODEC = "libx264"
PIX_FMT = "yuv420p"
FRAME_PATTERN = "%06d"  # frame files are 000000.png, 000001.png, ... (ffmpeg's image2 pattern)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
RIFE_PLACEHOLDERS = ("{input}", "{output}", "{factor}", "{frames}")
LABEL_SIZE = 10
STDERR_LINES = 12  # the last lines of a failing tool's stderr that go into the error


Colour = tuple[int, int, int]


class ShowcaseError(CastlabError, RuntimeError):
    """ffmpeg or the RIFE tool failed; the message carries the command's exit status and the tail of its stderr."""


@dataclass(frozen=True)
class Overlay:
    """What to draw on one frame: (boolean mask, label, colour or None for the label's own colour) per object."""

    items: Sequence[tuple[np.ndarray, str, Colour | None]] = field(default_factory=tuple)


def ffmpeg_exe() -> str:
    """The ffmpeg binary bundled with the ``imageio-ffmpeg`` wheel."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def has_filter(name: str) -> bool:
    """Whether the bundled ffmpeg has the video filter `name` (e.g. ``minterpolate``)."""
    done = subprocess.run([ffmpeg_exe(), "-hide_banner", "-filters"], check=False, capture_output=True, text=True)
    return any(len(parts) > 1 and parts[1] == name for parts in (line.split() for line in done.stdout.splitlines()))


def label_colour(label: str) -> Colour:
    """A stable colour for `label`: its hash picks one of the 20 well-separated :data:`~castlab.pictures.TAB20`
    colours, the same in every run and process (two labels share a colour only when their hashes collide, 1 in 20)."""
    digest = hashlib.sha1(label.encode("utf-8")).digest()
    return palette_colour(int.from_bytes(digest[:4], "big") % len(TAB20))


def _outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of `mask` with a 4-neighbour outside it (or on the image border)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def draw_overlay(rgb: np.ndarray, overlay: Overlay, alpha: float) -> np.ndarray:
    """`rgb` (H x W x 3 uint8) with each mask tinted at opacity `alpha`, outlined, and labelled at its top-left.

    Masks are drawn in order (later ones on top); an empty mask draws nothing; a mask of another size is an
    InputError.
    """
    height, width = rgb.shape[:2]
    out = rgb.astype(np.float32)
    labels: list[tuple[int, int, str, Colour]] = []
    for mask, label, colour in overlay.items:
        mask = np.asarray(mask, bool)
        if mask.shape != (height, width):
            raise InputError(f"overlay '{label}'",
                             f"mask is {mask.shape[1]}x{mask.shape[0]}, frame is {width}x{height}")
        if not mask.any():
            continue
        tint = np.asarray(colour or label_colour(label), np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * tint
        out[_outline(mask)] = tint
        ys, xs = np.nonzero(mask)
        labels.append((int(xs.min()), int(ys.min()), label, colour or label_colour(label)))
    image = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    if labels:
        draw = ImageDraw.Draw(image)
        text_font = font(LABEL_SIZE)
        for x, y, label, colour in labels:
            if not label:
                continue
            left, top, right, bottom = draw.textbbox((0, 0), label, font=text_font)
            x = max(0, min(x + 1, width - (right - left) - 2))
            y = max(0, min(y + 1, height - (bottom - top) - 2))
            draw.rectangle((x, y, x + right - left + 1, y + bottom - top + 1), fill=(0, 0, 0))
            draw.text((x + 1 - left, y + 1 - top), label, fill=colour, font=text_font)
    return np.asarray(image)


def _rgb(frame: np.ndarray | Path | str, index: int) -> np.ndarray:
    """Frame `index` as an H x W x 3 uint8 array (an image file is read and converted to RGB)."""
    if isinstance(frame, (str, Path)):
        try:
            with Image.open(frame) as image:
                return np.asarray(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise InputError(frame, f"cannot read the frame image ({exc})") from exc
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        raise InputError(f"frame {index}", f"expected uint8 pixels, got {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InputError(f"frame {index}", f"expected an H x W x 3 RGB array, got shape {array.shape}")
    return array[..., :3]


def _even(rgb: np.ndarray) -> np.ndarray:
    """`rgb` padded by one edge pixel on the right/bottom where a side is odd (yuv420p halves both sides)."""
    height, width = rgb.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return rgb
    return np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def _rate(fps: float) -> str:
    """`fps` as ffmpeg reads a rate: an exact fraction (``30000/1001``) or an integer (``24``)."""
    rate = Fraction(fps).limit_denominator(1001)
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def _tail(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-STDERR_LINES:]) or "(no output on stderr)"


def _run(argv: list[str], what: str) -> None:
    """Run `argv` (no shell); a non-zero exit is a :class:`ShowcaseError` with the tail of its stderr."""
    done = subprocess.run(argv, check=False, capture_output=True)
    if done.returncode != 0:
        command = shlex.join([Path(argv[0]).name, *argv[1:]])
        raise ShowcaseError(f"{what} failed (exit {done.returncode}): {command}\n{_tail(done.stderr)}")


def _write_frames(
    frames: Sequence[np.ndarray] | Sequence[Path],
    folder: Path,
    overlays: Sequence[Overlay | None] | None,
    alpha: float,
    progress: bool,
) -> tuple[int, int]:
    """Write `frames` (overlays drawn, sides made even) as numbered PNGs into `folder`; their (width, height)."""
    size: tuple[int, int] | None = None
    for index, frame in enumerate(tqdm(frames, desc="showcase frames", unit="frame", disable=not progress,
                                       leave=False)):
        rgb = _rgb(frame, index)
        if size is None:
            size = (rgb.shape[1], rgb.shape[0])
        elif (rgb.shape[1], rgb.shape[0]) != size:
            raise InputError(frame if isinstance(frame, (str, Path)) else f"frame {index}",
                             f"is {rgb.shape[1]}x{rgb.shape[0]}, frame 0 is {size[0]}x{size[1]} "
                             "(all frames of a showcase must have one size)")
        overlay = overlays[index] if overlays is not None else None
        if overlay is not None:
            rgb = draw_overlay(rgb, overlay, alpha)
        Image.fromarray(np.ascontiguousarray(_even(rgb))).save(folder / f"{FRAME_PATTERN % index}.png",
                                                             compress_level=1)
    assert size is not None
    return size


def _sequence(folder: Path, into: Path) -> str:
    """Move the images a tool wrote into `folder` (sorted by name) to `into` as a numbered sequence; the
    image2 pattern that reads them."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ShowcaseError(f"the RIFE tool wrote no frames into its output folder {folder}")
    suffixes = {p.suffix.lower() for p in files}
    if len(suffixes) > 1:
        raise ShowcaseError(f"the RIFE tool wrote frames of several formats ({', '.join(sorted(suffixes))})")
    suffix = suffixes.pop()
    into.mkdir()
    for index, path in enumerate(files):
        shutil.move(str(path), into / f"{FRAME_PATTERN % index}{suffix}")
    return str(into / f"{FRAME_PATTERN}{suffix}")


def _rife(settings: ShowcaseSettings, frames_dir: Path, work: Path, count: int, fps: float) -> str:
    """Run ``rife_command`` on `frames_dir`; the image2 pattern of the frames it wrote (renumbered)."""
    assert settings.rife_command  # checked by write_showcase before any work
    output = work / "rife"
    output.mkdir()
    factor = settings.target_fps / fps
    values = {"{input}": str(frames_dir), "{output}": str(output), "{factor}": f"{factor:g}",
              "{frames}": str(max(count, round(count * factor)))}
    argv = []
    for arg in settings.rife_command:
        for placeholder, value in values.items():
            arg = arg.replace(placeholder, value)
        argv.append(arg)
    try:
        _run(argv, "the RIFE tool (video.showcase.rife_command)")
    except FileNotFoundError as exc:
        raise ConfigError(f"video.showcase.rife_command: cannot run {argv[0]!r} ({exc.strerror})") from exc
    return _sequence(output, work / "rife-sequence")


def _probe(path: Path) -> tuple[int, float, int, int]:
    """(frames, frames per second, width, height) of the first video stream of `path`."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = stream.frames or sum(1 for _ in container.decode(stream))
        rate = float(stream.average_rate or stream.base_rate or 0)
        return frames, rate, stream.codec_context.width, stream.codec_context.height


def write_showcase(
    frames: Sequence[np.ndarray] | Sequence[Path],
    out: Path,
    fps: float,
    settings: ShowcaseSettings,
    overlays: Sequence[Overlay | None] | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode `frames` (RGB uint8 arrays or image paths, all one size) at `fps` into the MP4 `out`.

    `fps` is the frames' own rate (the caller resolves ``settings.fps`` or the source's rate). `overlays` (one per
    frame, None for none) are drawn at ``settings.overlay_alpha``. Interpolation follows ``settings.interpolate``.
    Returns a summary: path, frames_in, frames_out, fps (of the MP4), width, height, interpolation, seconds.
    """
    started = time.monotonic()
    out = Path(out)
    if out.exists() and not force:
        raise InputError(out, "already exists (pass --force to overwrite)")
    if len(frames) == 0:
        raise InputError(out, "no frames to encode")
    if overlays is not None and len(overlays) != len(frames):
        raise InputError(out, f"{len(frames)} frames but {len(overlays)} overlays")
    if settings.interpolate == "rife" and not settings.rife_command:
        raise ConfigError("video.showcase.interpolate is 'rife' but video.showcase.rife_command is not set "
                          f"(set it to the argv list of a RIFE tool; placeholders {' '.join(RIFE_PLACEHOLDERS)})")
    if settings.interpolate == "minterpolate" and not has_filter("minterpolate"):
        raise ConfigError("video.showcase.interpolate: the bundled ffmpeg has no 'minterpolate' filter "
                          "(use 'none' or 'rife')")
    with tempfile.TemporaryDirectory(prefix="castlab-showcase-") as tmp:
        work = Path(tmp)
        frames_dir = work / "frames"
        frames_dir.mkdir()
        _write_frames(frames, frames_dir, overlays, settings.overlay_alpha, progress)
        pattern, rate, filters = str(frames_dir / f"{FRAME_PATTERN}.png"), fps, []
        if settings.interpolate == "minterpolate":
            filters.append(f"minterpolate=fps={_rate(settings.target_fps)}:mi_mode=mci")
        elif settings.interpolate == "rife":
            pattern, rate = _rife(settings, frames_dir, work, len(frames), fps), settings.target_fps
        filters.append("pad=ceil(iw/2)*2:ceil(ih/2)*2")  # the RIFE tool's frames may have odd sides
        with atomic_path(out) as tmp_out:
            _run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                  "-framerate", _rate(rate), "-start_number", "0", "-i", pattern,
                  "-vf", ",".join(filters), "-c:v", CODEC, "-pix_fmt", PIX_FMT, "-crf", str(settings.crf),
                  "-movflags", "+faststart", str(tmp_out)], "ffmpeg")
            try:
                frames_out, out_fps, width, height = _probe(tmp_out)
            except (av.FFmpegError, IndexError) as exc:
                raise ShowcaseError(f"ffmpeg wrote no readable video ({exc})") from exc
            if frames_out == 0:
                raise ShowcaseError("ffmpeg wrote a video without frames")
    return {"path": str(out), "frames_in": len(frames), "frames_out": frames_out, "fps": out_fps,
            "width": width, "height": height, "interpolation": settings.interpolate,
            "seconds": round(time.monotonic() - started, 3)}

