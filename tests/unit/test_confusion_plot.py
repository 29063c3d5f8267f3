"""flows.reports.confusion_plot: the per-stage confusion-matrix PNG, drawn with Pillow."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from flows.reports.confusion_plot import blues, render_confusion


def test_blues_runs_from_near_white_to_dark_blue_and_clips() -> None:
    assert blues(0.0) == (0xF7, 0xFB, 0xFF) and blues(1.0) == (0x08, 0x30, 0x6B)
    assert blues(-3.0) == blues(0.0) and blues(7.0) == blues(1.0)
    ramp = [sum(blues(i / 20)) for i in range(21)]
    assert all(a > b for a, b in zip(ramp, ramp[1:], strict=False))  # every step darker


def test_cells_are_coloured_by_count(tmp_path: Path) -> None:
    counts = [[9 if i == j else 0 for j in range(4)] for i in range(4)]  # 4 peak cells, 12 empty ones
    image = Image.open(render_confusion(counts, ["a", "b", "c", "d"], "stage 1 (x): test 90.0%",
                                        tmp_path / "deep" / "c.png")).convert("RGB")
    pixels = list(image.getdata())
    dark, light = pixels.count(blues(1.0)), pixels.count(blues(0.0))
    assert dark > 0
    assert 2.5 < light / dark < 3.5  # three times the area, less the counts drawn in the cells


def test_many_classes_get_a_larger_figure_without_counts(tmp_path: Path) -> None:
    few = Image.open(render_confusion([[1, 0], [0, 1]], ["0", "1"], "t", tmp_path / "few.png"))
    n = 30
    many_counts = [[5 if i == j else 1 for j in range(n)] for i in range(n)]
    many = Image.open(render_confusion(many_counts, [f"class_{i}" for i in range(n)], "t", tmp_path / "many.png"))
    assert many.width > few.width and many.height > few.height
    assert many.format == few.format == "PNG"


def test_a_matrix_that_does_not_match_the_classes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad.png.*3 x 3"):
        render_confusion([[1, 0], [0, 1]], ["a", "b", "c"], "t", tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
