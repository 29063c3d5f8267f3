"""A confusion-matrix PNG drawn with Pillow: one per registered stage, so it has to be cheap.

matplotlib took ~0.5 s per figure here (text layout of ~100 cell labels, tight_layout, Agg) plus its import,
and every stage's registration waits for its figure. Pillow (already loaded for the images) draws the same
figure in milliseconds: cells in matplotlib's "Blues", counts in the cells, class names on both axes, a title.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image, ImageFont

    from grasp_core.grasp import StepResult

    Font = ImageFont.ImageFont | ImageFont.FreeTypeFont

# ColorBrewer's 9-step Blues, as matplotlib's "Blues" colormap interpolates it
_BLUES = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b")
_PAD = 10
MAX_ANNOTATED = 20  # more classes than this: cells get no counts (they would not fit)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16)


def blues(t: float) -> tuple[int, int, int]:
    """The colour at `t` in [0, 1] (clipped) of a linear "Blues" ramp: near-white at 0, dark blue at 1."""
    x = min(max(t, 0.0), 1.0) * (len(_BLUES) - 1)
    i = min(int(x), len(_BLUES) - 2)
    low, high, f = _rgb(_BLUES[i]), _rgb(_BLUES[i + 1]), x - i
    return (round(low[0] + (high[0] - low[0]) * f), round(low[1] + (high[1] - low[1]) * f),
            round(low[2] + (high[2] - low[2]) * f))


def _text_box(text: str, font: Font) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(right - left), int(bottom - top)


def _paste_vertical(image: Image.Image, text: str, font: Font, centre: tuple[int, int]) -> None:
    """Draw `text` rotated 90 degrees (reading bottom to top), centred on `centre`."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (int(right - left) + 2, int(bottom - top) + 2), 0)
    ImageDraw.Draw(mask).text((1 - left, 1 - top), text, font=font, fill=255)
    mask = mask.rotate(90, expand=True)
    x, y = centre[0] - mask.width // 2, centre[1] - mask.height // 2
    image.paste((0, 0, 0), (x, y, x + mask.width, y + mask.height), mask)


def render_confusion(counts: Sequence[Sequence[int]], classes: Sequence[str], title: str, path: Path) -> Path:
    """Write `counts` (rows true, columns predicted) as a heat-map PNG at `path`; returns `path`."""
    from PIL import Image, ImageDraw, ImageFont

    n = len(classes)
    if n == 0 or len(counts) != n or any(len(row) != n for row in counts):
        raise ValueError(f"confusion matrix for {path.name}: expected {n} x {n} counts for classes {list(classes)}")
    cell = max(14, min(44, 480 // n))
    font, title_font = ImageFont.load_default(size=13), ImageFont.load_default(size=15)
    cell_font = ImageFont.load_default(size=max(8, min(12, cell // 3)))
    rotate_x = n > 10
    label_w = max(_text_box(str(c), font)[0] for c in classes)
    line_h = _text_box("Ag0", font)[1]
    title_w, title_h = _text_box(title, title_font)
    x_ticks_h = label_w if rotate_x else line_h
    left = _PAD + line_h + _PAD + label_w + 6  # "true", the row labels, a gap
    top = _PAD + title_h + _PAD
    grid = n * cell
    width = max(left + grid + 2 * _PAD, title_w + 2 * _PAD)
    height = top + grid + 6 + x_ticks_h + _PAD + line_h + _PAD  # ticks, "predicted"
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    peak = max((max(row) for row in counts), default=0) or 1
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            x, y = left + j * cell, top + i * cell
            draw.rectangle((x, y, x + cell, y + cell), fill=blues(value / peak))
            if n <= MAX_ANNOTATED:
                draw.text((x + cell / 2, y + cell / 2), str(value), font=cell_font, anchor="mm",
                          fill="white" if value > peak / 2 else "black")
    draw.rectangle((left, top, left + grid, top + grid), outline="black")
    for k, name in enumerate(classes):
        offset = k * cell + cell // 2  # the centre of row k and of column k
        draw.text((left - 6, top + offset), str(name), font=font, anchor="rm", fill="black")
        if rotate_x:
            _paste_vertical(image, str(name), font, (left + offset, top + grid + 6 + x_ticks_h // 2))
        else:
            draw.text((left + offset, top + grid + 6), str(name), font=font, anchor="mt", fill="black")
    draw.text((width // 2, _PAD), title, font=title_font, anchor="mt", fill="black")
    draw.text((left + grid // 2, height - _PAD), "predicted", font=font, anchor="md", fill="black")
    _paste_vertical(image, "true", font, (_PAD + line_h // 2, top + grid // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def confusion_png(result: StepResult, classes: tuple[str, ...] | list[str], path: Path) -> Path:
    """Plot the stage's test confusion matrix (rows true, columns predicted) as a PNG."""
    title = f"stage {result.stage} ({result.source_name}): test {result.test_accuracy:.1%}"
    return render_confusion(result.confusion, classes, title, path)
