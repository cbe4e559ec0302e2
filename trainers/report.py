"""Pictures and text of a training run: the loss curve PNG and a Markdown summary (also the Prefect artifact)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from castlab.pictures import font, save_png, tiny_stamp

WIDTH, HEIGHT, MARGIN = 720, 320, 48
RAW, SMOOTH, VAL = (170, 190, 225), (40, 90, 180), (230, 120, 20)


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curve(losses: list[float], title: str, validation: list[dict] | None = None) -> Image.Image:
    """Training loss per optimizer step (light), its moving average (dark) and the validation loss (orange dots,
    fixed noise and timesteps), with labelled axes."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 10), title, fill="black", font=font(13))
    left, top, right, bottom = MARGIN, 36, WIDTH - 16, HEIGHT - MARGIN
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    draw.text((left + (right - left) // 2 - 30, bottom + 22), "optimizer step", fill="black", font=font(11))
    draw.text((8, (top + bottom) // 2 - 6), "loss", fill="black", font=font(11))
    if not losses:
        draw.text((left + 20, top + 20), "no steps", fill="black", font=font(12))
        return image
    val = [(int(v["step"]), float(v["loss"])) for v in validation or []]
    low, high = min(losses + [v for _, v in val]), max(losses + [v for _, v in val])
    span = (high - low) or 1.0

    def point(i: int, value: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(1, len(losses) - 1))
        return x, bottom - (bottom - top) * (value - low) / span

    for values, colour in ((losses, RAW), (moving_average(losses, max(1, len(losses) // 20)), SMOOTH)):
        if len(values) > 1:
            draw.line([point(i, v) for i, v in enumerate(values)], fill=colour, width=2 if colour == SMOOTH else 1)
    for step, value in val:
        x, y = point(step - 1, value)
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=VAL)
    if val:
        draw.text((right - 150, top - 14), "o validation loss", fill=VAL, font=font(11))
    for value in (low, high):
        draw.text((4, point(0, value)[1] - 6), f"{value:.3f}", fill="black", font=font(10))
    draw.text((right - 40, bottom + 6), str(len(losses)), fill="black", font=font(10))
    draw.text((left, bottom + 6), "1", fill="black", font=font(10))
    return image


def write_training_report(out_dir: Path, name: str, report: dict[str, Any]) -> dict[str, str]:
    """``<name>-loss.png`` and ``<name>-training.md`` beside the checkpoints; returns their paths."""
    stamp = tiny_stamp(report.get("profile"))
    png = out_dir / f"{name}-loss.png"
    save_png(loss_curve(list(report.get("losses") or []), f"{name}: training loss{stamp}",
                        report.get("validation")), png)
    losses = report.get("losses") or []
    head = sum(losses[:10]) / len(losses[:10]) if losses else float("nan")
    tail = sum(losses[-10:]) / len(losses[-10:]) if losses else float("nan")
    lines = [
        f"# Training {name}{stamp}", "",
        f"- steps: {report.get('steps')} of {report.get('max_steps')} (epoch {report.get('epoch')})"
        + (" — interrupted, resume from the last state" if report.get("interrupted") else ""),
        f"- loss: first 10 steps {head:.4f}, last 10 steps {tail:.4f}",
        f"- validation ({report.get('validation_images', 0)} images, fixed noise): "
        + (", ".join(f"step {v['step']}: {v['loss']:.4f}" for v in report.get("validation") or []) or "none"),
        f"- speed: {report.get('steps_per_second') or 0:.2f} steps/s; latent preparation "
        f"{report.get('prepare_seconds', 0):.1f} s (cache: {report.get('latent_cache')})",
        f"- base model: {report.get('base_model_version')}",
        "- checkpoints: " + ", ".join(Path(p).name for p in report.get("checkpoints") or []),
        "", "## Notes", "", *[f"- {n}" for n in report.get("notes") or ["none"]], "",
        f"![loss]({png.name})", "",
    ]
    md = out_dir / f"{name}-training.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    return {"loss_curve": str(png), "markdown": str(md)}
