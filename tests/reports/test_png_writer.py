"""The report's own PNG writer and string renderer (``servesim.reports._style``).

``save_figure`` draws with a renderer that rasterises each plain-text string as one bitmap and
writes the PNG itself (filter 0, zlib level 1), both for speed. These tests pin that the file
decodes to exactly the pixels Agg drew, and that the text lands where matplotlib's own
renderer puts it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from servesim.reports._style import DPI, new_figure, png_bytes, save_figure


@pytest.mark.parametrize("opaque", [True, False])
def test_png_bytes_decode_to_the_same_pixels(opaque: bool) -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (37, 53, 4), dtype=np.uint8)
    if opaque:
        rgba[..., 3] = 255
    image = Image.open(io.BytesIO(png_bytes(rgba)))
    assert image.mode == ("RGB" if opaque else "RGBA")
    assert image.size == (53, 37)
    assert image.info["dpi"] == pytest.approx((DPI, DPI), abs=0.01)
    np.testing.assert_array_equal(np.asarray(image), rgba[..., :3] if opaque else rgba)
    assert png_bytes(rgba) == png_bytes(rgba.copy())


def _text_figure() -> Figure:
    fig = new_figure(width_in=4.0, height_in=2.0)
    fig.text(0.1, 0.6, "TTFT p99 (ms), 1,260 tokens", fontsize=9)
    fig.text(0.05, 0.1, "rotated label", fontsize=8, rotation=90)
    fig.suptitle("Request latency", y=0.97)
    return fig


def _ink(pixels: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(pixels[..., :3].min(axis=2) < 128)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_saved_text_sits_where_matplotlib_draws_it(tmp_path: Path) -> None:
    path = save_figure(_text_figure(), tmp_path / "text.png")
    ours = np.asarray(Image.open(path).convert("RGB"))
    canvas = FigureCanvasAgg(_text_figure())  # matplotlib's own per-glyph text path
    canvas.draw()
    theirs = np.asarray(canvas.buffer_rgba())[..., :3]
    assert ours.shape == theirs.shape
    # Each text's ink, and all of it together, within a pixel of matplotlib's.
    for window in ((slice(None), slice(None)), (slice(0, 40), slice(None)),
                   (slice(None), slice(0, 40)), (slice(40, 140), slice(40, None))):  # fmt: skip
        assert np.allclose(_ink(ours[window]), _ink(theirs[window]), atol=1), window
    # Same amount of ink, give or take antialiasing.
    dark = [(a[..., :3].min(axis=2) < 128).sum() for a in (ours, theirs)]
    assert abs(dark[0] - dark[1]) <= 0.1 * dark[1]


def test_saved_figure_bytes_repeat(tmp_path: Path) -> None:
    first = save_figure(_text_figure(), tmp_path / "a.png").read_bytes()
    assert save_figure(_text_figure(), tmp_path / "b.png").read_bytes() == first
