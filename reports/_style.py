"""Shared look of every servesim figure: palettes, labels and a deterministic ``savefig``.

Variants keep one colour across every figure of a report: the colour is picked by the
variant's position in ``summary.json`` (the scenario's order), never by name or hash, so
``paged-16`` is the same blue in the CDFs, the timelines and the roofline.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import matplotlib
import numpy as np
import numpy.typing as npt

matplotlib.use("Agg")  # headless: reports run in CI and on servers without a display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg, get_hinting_flag
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, Locator, LogLocator, MaxNLocator, NullLocator

#: Fixed variant palette (matplotlib's tab10, then tab20's lighter half): index = variant order.
VARIANT_PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
)

#: KV memory split, bottom to top of the stack, with the colours of the PagedAttention
#: paper's Figure 2 (token states green, reservation amber, internal fragmentation red,
#: external fragmentation grey) plus the cached-evictable and free parts.
KV_PARTS: tuple[tuple[str, str, str], ...] = (
    # (steps.parquet column, label, colour)
    ("kv_token_state_slots", "token states", "#4daf4a"),
    ("kv_reserved_slots", "reserved", "#ffbf00"),
    ("kv_internal_frag_slots", "internal fragmentation", "#e41a1c"),
    ("kv_external_frag_slots", "external fragmentation", "#7f7f7f"),
    ("kv_cached_slots", "cached (evictable)", "#80b1d3"),
    ("kv_free_slots", "free", "#eeeeee"),
)

#: The summary.json keys that carry the same split as time-weighted fractions.
KV_SUMMARY_KEYS: tuple[str, ...] = (
    "kv_token_state_frac",
    "kv_reserved_frac",
    "kv_internal_frag_frac",
    "kv_external_frag_frac",
    "kv_cached_frac",
    "kv_free_frac",
)

#: Step time split by bound: (steps.parquet column, label, colour).
BOUND_PARTS: tuple[tuple[str, str, str], ...] = (
    ("compute_s", "compute", "#d62728"),
    ("weight_read_s", "weight reads", "#1f77b4"),
    ("kv_read_s", "KV reads", "#2ca02c"),
    ("comm_s", "communication", "#9467bd"),
    ("overhead_s", "overhead", "#7f7f7f"),
)

#: Figure resolution of the PNGs (report.md and the plan figures).
DPI = 100

#: Suffix -> unit shown in an axis label (longest suffix first).
_UNIT_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("_per_s_per_user", "/s per user"),
    ("_per_s_per_gpu", "/s per GPU"),
    ("_per_s", "/s"),
    ("_ms", "ms"),
    ("_s", "s"),
    ("_bytes", "bytes"),
    ("_tokens", "tokens"),
    ("_frac", "fraction"),
)


def variant_colors(variants: Sequence[str]) -> Mapping[str, str]:
    """Map each variant to its fixed colour by position (the palette repeats after 16)."""
    return MappingProxyType(
        {v: VARIANT_PALETTE[i % len(VARIANT_PALETTE)] for i, v in enumerate(variants)}
    )


def axis_label(column: str) -> str:
    """Human axis label from a unit-suffixed column name.

    ``"p99_ttft_ms"`` -> ``"p99 ttft (ms)"``, ``"rate_per_s"`` -> ``"rate (1/s)"``,
    ``"tokens_per_s_per_gpu"`` -> ``"tokens/s per GPU"``.
    """
    for suffix, unit in _UNIT_SUFFIXES:
        if column.endswith(suffix) and len(column) > len(suffix):
            stem = column[: -len(suffix)].replace("_", " ")
            if unit == "/s" and stem in {"rate", "request rate", "arrival rate"}:
                unit = "requests/s"
            elif unit.startswith("/"):
                return f"{stem}{unit}"  # "tokens_per_s_per_gpu" -> "tokens/s per GPU"
            return f"{stem} ({unit})"
    return column.replace("_", " ")


def new_figure(*, width_in: float = 8.0, height_in: float = 4.5) -> Figure:
    """A fresh figure not registered with pyplot's global state (no leaks between reports).

    No layout engine: constrained layout measures every text twice and was most of a report's
    drawing time, so figures place their axes with :func:`place_axes` (margins in inches) and
    a test checks that every text box lies inside the figure.
    """
    return Figure(figsize=(width_in, height_in), dpi=DPI)


def place_axes(
    fig: Figure,
    rows: int,
    cols: int,
    *,
    left_in: float = 0.75,
    right_in: float = 0.2,
    top_in: float = 0.55,
    bottom_in: float = 0.55,
    wspace_in: float = 0.6,
    hspace_in: float = 0.6,
    sharex: bool = False,
    sharey: bool = False,
    xbins: int = 5,
    ybins: int = 5,
) -> list[Axes]:
    """A rows x cols grid of axes with fixed margins and gaps given in inches.

    ``xbins``/``ybins`` cap the number of tick intervals (each tick is several artists to
    build and draw; small panels read well with two or three).
    """
    w, h = fig.get_size_inches()
    axes = fig.subplots(rows, cols, squeeze=False, sharex=sharex, sharey=sharey).ravel().tolist()
    panel_w = max(0.5, (w - left_in - right_in - wspace_in * (cols - 1)) / cols)
    panel_h = max(0.5, (h - top_in - bottom_in - hspace_in * (rows - 1)) / rows)
    fig.subplots_adjust(
        left=left_in / w,
        right=1 - right_in / w,
        top=1 - top_in / h,
        bottom=bottom_in / h,
        wspace=wspace_in / panel_w,
        hspace=hspace_in / panel_h,
    )
    for ax in axes:
        ax.xaxis.set_major_locator(InViewLocator(MaxNLocator(nbins=xbins)))
        ax.yaxis.set_major_locator(InViewLocator(MaxNLocator(nbins=ybins)))
    return axes


class InViewLocator(Locator):
    """``base``'s tick locations, less those outside the axis's view interval.

    matplotlib's locators return a tick beyond each end of the view, and the axis builds a
    full tick (two marks, a grid line and two labels) for every location before it drops the
    ones it cannot draw; a third of a report's ticks were built and never drawn. The same
    ticks are drawn (the same tolerance as matplotlib's own test for "inside the view").
    """

    def __init__(self, base: Locator) -> None:
        self.base = base

    def set_axis(self, axis: Axis) -> None:  # type: ignore[override]
        super().set_axis(axis)
        self.base.set_axis(axis)

    def __call__(self) -> npt.NDArray[np.float64]:
        locs = np.asarray(self.base(), dtype=np.float64)
        if self.axis is None or not len(locs):
            return locs
        transform = self.axis.get_transform()
        lo, hi = sorted(transform.transform(np.asarray(self.axis.get_view_interval())))
        with np.errstate(invalid="ignore", divide="ignore"):
            t = transform.transform(locs)
        slack = 1e-10 * (hi - lo)
        return locs[(t >= lo - slack) & (t <= hi + slack)]

    def tick_values(self, vmin: float, vmax: float) -> npt.NDArray[np.float64]:
        return np.asarray(self.base.tick_values(vmin, vmax), dtype=np.float64)

    def view_limits(self, vmin: float, vmax: float) -> tuple[float, float]:
        return self.base.view_limits(vmin, vmax)  # type: ignore[no-any-return]

    def nonsingular(self, v0: float, v1: float) -> tuple[float, float]:
        return self.base.nonsingular(v0, v1)  # type: ignore[no-any-return]


def legend_rows(labels: Sequence[str], width_in: float, *, fontsize: float = 8) -> tuple[int, int]:
    """(ncols, nrows) for a legend of ``labels`` that fits in ``width_in`` inches.

    Each entry is estimated at its handle plus 0.6 x fontsize per character (generous for the
    default sans-serif), so a legend never runs past the figure edge.
    """
    char_in = 0.6 * fontsize / 72
    entry_in = 0.75 + char_in * max((len(s) for s in labels), default=1)
    ncols = max(1, min(len(labels), int((width_in - 0.3) // entry_in)))
    return ncols, -(-len(labels) // ncols)


def _si(value: float) -> str:
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def si_log_ticks(axis: Axis) -> None:
    """Log-axis tick labels with SI prefixes (``100T`` FLOP/s), no mathtext, no minor ticks."""
    axis.set_major_locator(InViewLocator(LogLocator()))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: _si(v)))
    axis.set_minor_locator(NullLocator())


def plain_log_ticks(axis: Axis) -> None:
    """Log-axis tick labels as plain numbers (``1000``, ``0.01``) instead of mathtext powers:
    the same information, and mathtext parsing was a large share of drawing time."""
    axis.set_major_locator(InViewLocator(LogLocator()))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_locator(NullLocator())  # minor ticks of a log axis cost more than they say


def set_title(ax: Axes, text: str, **kwargs: object) -> None:
    """``ax.set_title`` at a fixed height: matplotlib otherwise measures every tick label to
    place each title, which was a large share of drawing time."""
    ax.set_title(text, y=1.0, pad=6, **kwargs)  # type: ignore[arg-type]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(rgba: npt.NDArray[np.uint8], dpi: float = DPI) -> bytes:
    """A PNG of an (h, w, 4) uint8 image: RGB when every pixel is opaque (a report figure on
    its white background), else RGBA; the resolution in a ``pHYs`` chunk, nothing else.

    Written here rather than by Pillow: Pillow tries all five PNG row filters on every row
    (adaptive filtering) before compressing, which was half of the time spent writing a
    report's PNGs. Filter 0 (none) with zlib level 1 deflates plot images (long runs of one
    colour) to a smaller file than Pillow's level 1, at a fraction of the time. Same image,
    same bytes every time: no timestamp, no version.
    """
    h, w, _ = rgba.shape
    opaque = bool(rgba[..., 3].min() == 255)
    pixels = rgba[..., :3] if opaque else rgba
    rows = np.empty((h, 1 + w * pixels.shape[2]), dtype=np.uint8)
    rows[:, 0] = 0  # filter type 0 (none) on every row
    rows[:, 1:] = pixels.reshape(h, -1)
    ppm = round(dpi / 0.0254)  # pixels per metre
    header = struct.pack(">IIBBBBB", w, h, 8, 2 if opaque else 6, 0, 0, 0)
    return b"".join((
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", header),
        _png_chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1)),
        _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)),
        _png_chunk(b"IEND", b""),
    ))  # fmt: skip


class _StringRenderer(RendererAgg):
    """Agg, drawing each plain-text string as one bitmap.

    matplotlib 3.11 draws text glyph by glyph (a Python loop that sets the size and transform,
    renders and blends every glyph; drawing text was a quarter to a third of a report figure's
    time); up to 3.10 it rasterised each string into one bitmap in C and blended that once,
    which takes about 16 % off the Azure-hour figures' drawing. This renderer keeps the
    3.10 way for plain text, with the same layout and hinting as 3.11's own measurement of the
    string (``set_text``), so text sits where matplotlib placed it and reads the same. Mathtext,
    and any FreeType build without the string bitmap calls, go through matplotlib's own path.
    Upstream is making the per-glyph path faster (matplotlib PR #32120, merged after 3.11.2);
    this can go once that is released.
    """

    def draw_text(  # type: ignore[override]
        self, gc: Any, x: float, y: float, s: str, prop: Any, angle: float,
        ismath: bool | str = False, mtext: Any = None,
    ) -> None:  # fmt: skip
        font = self._prepare_font(prop) if not ismath else None
        if font is None or not hasattr(font, "draw_glyphs_to_bitmap"):
            super().draw_text(gc, x, y, s, prop, angle, ismath, mtext)
            return
        font.set_text(s, 0, flags=get_hinting_flag())  # angle 0: draw_text_image rotates
        font.draw_glyphs_to_bitmap(antialiased=gc.get_antialiased())
        descent = font.get_descent() / 64.0
        xo, yo = (v / 64.0 for v in font.get_bitmap_offset())
        xd, yd = descent * math.sin(math.radians(angle)), descent * math.cos(math.radians(angle))
        self._renderer.draw_text_image(np.asarray(font.get_image()), round(x + xo + xd),
                                       round(y + yo + yd) + 1, angle, gc)  # fmt: skip


class _ReportCanvas(FigureCanvasAgg):
    """The Agg canvas of :func:`save_figure`, with :class:`_StringRenderer`."""

    def get_renderer(self) -> RendererAgg:  # type: ignore[override]
        w, h = self.get_width_height(physical=True)
        key = (w, h, self.figure.dpi)
        if getattr(self, "_string_renderer_key", None) != key:
            self.renderer = _StringRenderer(w, h, self.figure.dpi)
            self._string_renderer_key = key
        return self.renderer


def save_figure(fig: Figure, path: Path) -> Path:
    """Draw ``fig`` with Agg at :data:`DPI` and write it as a PNG (:func:`png_bytes`), so the
    bytes are reproducible. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.set_dpi(DPI)
    canvas = _ReportCanvas(fig)
    canvas.draw()
    path.write_bytes(png_bytes(np.asarray(canvas.buffer_rgba()), DPI))
    plt.close(fig)  # harmless for Figure() objects; frees pyplot ones passed in by callers
    return path
