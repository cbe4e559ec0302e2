"""Showcase videos: frames → MP4s PyAV opens with the right count, size and rate; interpolation by ffmpeg's
minterpolate or a (fake) RIFE tool; overlays inside their masks; no silent overwrite; clear errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from castlab.config import load_config
from castlab.errors import ConfigError, InputError
from castlab.video.showcase import (
    Overlay,
    ShowcaseError,
    draw_overlay,
    has_filter,
    label_colour,
    write_showcase,
)

WIDTH, HEIGHT = 48, 34

FAKE_RIFE = textwrap.dedent("""
    import sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    frames = [np.asarray(Image.open(p), np.float32) for p in sorted(source.glob("*.png"))]
    out = []
    for a, b in zip(frames, frames[1:]):
        out += [a, (a + b) / 2]
    out.append(frames[-1])
    for i, frame in enumerate(out):
        Image.fromarray(frame.round().astype(np.uint8)).save(target / f"img{i:08d}.png")
""")


def settings(**showcase):
    return load_config(extra={"video": {"showcase": showcase}}).settings.video.showcase


def moving_frames(n: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> list[np.ndarray]:
    """`n` RGB frames (width x height `size`): a bright square sliding right on a dark gradient."""
    width, height = size
    frames = []
    for k in range(n):
        rgb = np.zeros((height, width, 3), np.uint8)
        rgb[..., 2] = np.linspace(20, 120, width, dtype=np.uint8)[None, :]
        rgb[8:20, 2 + 2 * k:14 + 2 * k] = (240, 220, 60)
        frames.append(rgb)
    return frames


def probe(path: Path) -> tuple[int, int, int, float]:
    """(decoded frames, width, height, average rate) of the MP4 at `path`."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, stream.codec_context.width, stream.codec_context.height, float(stream.average_rate)


def fake_rife(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_rife.py"
    script.write_text(FAKE_RIFE, encoding="utf-8")
    return [sys.executable, str(script), "{input}", "{output}"]


def test_frames_become_an_mp4_of_the_right_count_size_and_rate(tmp_path):
    out = tmp_path / "show" / "clip.mp4"
    summary = write_showcase(moving_frames(10), out, 12, settings(interpolate="none"), progress=False)
    assert probe(out) == (10, WIDTH, HEIGHT, 12.0)
    assert summary["path"] == str(out) and summary["frames_in"] == 10 and summary["frames_out"] == 10
    assert summary["fps"] == 12.0 and summary["interpolation"] == "none" and summary["seconds"] >= 0
    assert [p.name for p in out.parent.iterdir()] == ["clip.mp4"]  # no temporary file left beside it


def test_odd_sides_are_made_even(tmp_path):
    out = tmp_path / "odd.mp4"
    summary = write_showcase(moving_frames(6, (WIDTH - 1, HEIGHT - 1)), out, 8, settings(), progress=False)
    assert probe(out)[:3] == (6, WIDTH, HEIGHT)
    assert (summary["width"], summary["height"]) == (WIDTH, HEIGHT)
    with av.open(str(out)) as container:
        first = next(iter(container.decode(video=0))).to_ndarray(format="rgb24").astype(int)
    assert np.abs(first[:, -1] - first[:, -2]).mean() < 10  # the added column repeats the edge, not black


def test_image_paths_are_read(tmp_path):
    paths = []
    for k, rgb in enumerate(moving_frames(5)):
        paths.append(tmp_path / f"f{k}.jpg")
        Image.fromarray(rgb).save(paths[-1])
    out = tmp_path / "paths.mp4"
    write_showcase(paths, out, 5, settings(), progress=False)
    assert probe(out)[:3] == (5, WIDTH, HEIGHT)


def test_bundled_ffmpeg_has_minterpolate():
    assert has_filter("minterpolate")
    assert not has_filter("no_such_filter")


def test_minterpolate_roughly_doubles_the_frames(tmp_path):
    out = tmp_path / "smooth.mp4"
    n = 12
    summary = write_showcase(moving_frames(n), out, 8, settings(interpolate="minterpolate", target_fps=16),
                             progress=False)
    count, width, height, rate = probe(out)
    assert 1.5 * n <= count <= 2 * n + 1  # minterpolate ends at the last source frame: about 2n - 3
    assert (width, height, rate) == (WIDTH, HEIGHT, 16.0)
    assert summary["frames_out"] == count and summary["interpolation"] == "minterpolate"


def test_rife_runs_the_configured_tool_and_encodes_its_frames(tmp_path):
    out = tmp_path / "rife.mp4"
    n = 8
    chosen = settings(interpolate="rife", target_fps=16, rife_command=fake_rife(tmp_path))
    summary = write_showcase(moving_frames(n), out, 8, chosen, progress=False)
    assert probe(out) == (2 * n - 1, WIDTH, HEIGHT, 16.0)
    assert summary["frames_in"] == n and summary["frames_out"] == 2 * n - 1 and summary["fps"] == 16.0
    with av.open(str(out)) as container:  # the tool's blended frame sits between source frames 0 and 1
        middle = next(f for i, f in enumerate(container.decode(video=0)) if i == 1).to_ndarray(format="rgb24")
    sources = moving_frames(2)
    assert np.abs(middle.astype(int) - (sources[0].astype(int) + sources[1]) // 2).mean() < 8


def test_rife_without_a_command_names_the_setting(tmp_path):
    out = tmp_path / "rife.mp4"
    with pytest.raises(ConfigError, match=r"video\.showcase\.rife_command"):
        write_showcase(moving_frames(4), out, 8, settings(interpolate="rife", rife_command=None), progress=False)
    assert not out.exists()


def test_a_failing_rife_tool_is_a_clear_error(tmp_path):
    command = [sys.executable, "-c", "import sys; sys.stderr.write('model weights not found\\n'); sys.exit(3)"]
    with pytest.raises(ShowcaseError, match=r"(?s)exit 3.*model weights not found"):
        write_showcase(moving_frames(4), tmp_path / "x.mp4", 8, settings(interpolate="rife", rife_command=command),
                       progress=False)
    with pytest.raises(ConfigError, match=r"video\.showcase\.rife_command"):
        write_showcase(moving_frames(4), tmp_path / "x.mp4", 8,
                       settings(interpolate="rife", rife_command=[str(tmp_path / "no-such-rife")]), progress=False)
    assert not (tmp_path / "x.mp4").exists()


def test_ffmpeg_failure_carries_its_stderr(tmp_path):
    """A tool that writes frames ffmpeg cannot decode: ffmpeg fails and its stderr is in the error."""
    command = [sys.executable, "-c",
               "import sys, pathlib; [(pathlib.Path(sys.argv[1]) / f'{i}.png').write_bytes(b'junk') for i in range(3)]",
               "{output}"]
    out = tmp_path / "broken.mp4"
    with pytest.raises(ShowcaseError, match=r"(?s)ffmpeg failed \(exit \d+\).*\n.+"):
        write_showcase(moving_frames(3), out, 8, settings(interpolate="rife", rife_command=command), progress=False)
    assert list(tmp_path.glob("*.mp4")) == [] and not list(tmp_path.glob(".broken*"))


def test_overlay_tints_inside_the_mask_only():
    rgb = np.full((64, 96, 3), 100, np.uint8)
    mask = np.zeros((64, 96), bool)
    mask[30:50, 40:70] = True
    drawn = draw_overlay(rgb, Overlay([(mask, "", (255, 0, 0))]), 0.5)
    assert drawn.shape == rgb.shape and drawn.dtype == np.uint8
    assert (drawn[mask][:, 0] > 150).all() and (drawn[mask][:, 1] < 60).all()  # red, half over grey
    far = np.ones_like(mask)
    far[27:53, 37:73] = False
    assert (drawn[far] == 100).all()


def test_overlay_label_is_drawn_near_the_mask_and_labels_get_distinct_colours():
    rgb = np.full((64, 96, 3), 100, np.uint8)
    left, right = np.zeros((64, 96), bool), np.zeros((64, 96), bool)
    left[20:50, 5:40] = True
    right[20:50, 55:90] = True
    drawn = draw_overlay(rgb, Overlay([(left, "alice", None), (right, "bob", None)]), 0.45)
    assert label_colour("alice") != label_colour("bob")
    assert label_colour("alice") == label_colour("alice")
    tint_left, tint_right = drawn[40:48, 8:36].reshape(-1, 3), drawn[40:48, 58:86].reshape(-1, 3)  # below the text
    assert (tint_left == tint_left[0]).all() and (tint_right == tint_right[0]).all()
    assert np.abs(tint_left[0].astype(int) - tint_right[0]).max() > 20
    assert (drawn[:15] == 100).all() and (drawn[55:] == 100).all()  # the labels sit inside the masks' top-left
    plain = draw_overlay(rgb, Overlay([(left, "", None)]), 0.45)
    assert (drawn[22:30, 6:20] != plain[22:30, 6:20]).any()  # the label's text and its dark box


def test_overlay_mask_of_another_size_is_an_input_error():
    with pytest.raises(InputError, match="mask is 10x10"):
        draw_overlay(np.zeros((34, 48, 3), np.uint8), Overlay([(np.ones((10, 10), bool), "x", None)]), 0.5)


def test_overlays_are_drawn_into_the_video(tmp_path):
    frames = moving_frames(4)
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[4:30, 4:44] = True
    plain, tinted = tmp_path / "plain.mp4", tmp_path / "tinted.mp4"
    write_showcase(frames, plain, 8, settings(), progress=False)
    write_showcase(frames, tinted, 8, settings(overlay_alpha=0.8),
                   overlays=[Overlay([(mask, "", (0, 255, 0))]), None, None, None], progress=False)
    with av.open(str(plain)) as a, av.open(str(tinted)) as b:
        pa = [f.to_ndarray(format="rgb24").astype(int) for f in a.decode(video=0)]
        pb = [f.to_ndarray(format="rgb24").astype(int) for f in b.decode(video=0)]
    assert (pb[0][10:24, 10:38, 1] - pa[0][10:24, 10:38, 1]).mean() > 60  # green over the first frame
    assert np.abs(pb[3] - pa[3]).mean() < 3  # later frames without overlay stay as they were
    with pytest.raises(InputError, match="4 frames but 2 overlays"):
        write_showcase(frames, tmp_path / "n.mp4", 8, settings(), overlays=[None, None], progress=False)


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"old")
    with pytest.raises(InputError, match="--force"):
        write_showcase(moving_frames(4), out, 8, settings(), progress=False)
    assert out.read_bytes() == b"old"
    write_showcase(moving_frames(4), out, 8, settings(), force=True, progress=False)
    assert probe(out)[:3] == (4, WIDTH, HEIGHT)


def test_zero_frames_or_mixed_sizes_are_input_errors(tmp_path):
    out = tmp_path / "bad.mp4"
    with pytest.raises(InputError, match="no frames"):
        write_showcase([], out, 8, settings(), progress=False)
    mixed = moving_frames(3) + moving_frames(1, (40, 30))
    with pytest.raises(InputError, match=r"frame 3.*40x30.*48x34"):
        write_showcase(mixed, out, 8, settings(), progress=False)
    with pytest.raises(InputError, match="cannot read"):
        write_showcase([tmp_path / "missing.png"], out, 8, settings(), progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
