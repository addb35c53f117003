"""How numbers and user text are written in reports: one place for every report and table.

Rules (issue 14): counts print as integers (``1`` GPU, ``4,476`` tok/s), durations in the unit
that reads (``842 ms``, ``12.7 s``, ``18.0 min``), fractions as percentages, and text that
comes from the user (scenario descriptions, variant names) is escaped for Markdown so it can
add no heading, link or remote image to ``report.md``. HTML escaping is Jinja2's autoescape.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

GiB = 1 << 30  # binary gibibyte, as hwmodels.units.GiB (kept local: reports stands alone)

NA = "n/a"


def num(x: Any) -> float | None:
    """``x`` as a finite float, or None (missing, null, NaN, inf, non-numeric)."""
    if isinstance(x, bool):
        return float(x)
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_int(x: Any) -> str:
    """Rounded to an integer with thousands separators: ``4475.6`` -> ``"4,476"``."""
    f = num(x)
    return NA if f is None else f"{round(f):,d}"


def fmt_num(x: Any, digits: int = 1) -> str:
    """Fixed decimals with thousands separators; an integral value prints as an integer."""
    f = num(x)
    if f is None:
        return NA
    if f == round(f) and abs(f) < 1e15:
        return f"{round(f):,d}"
    return f"{f:,.{digits}f}"


def fmt_auto(x: Any) -> str:
    """A measured quantity at a precision that reads: 3 significant digits below 100, an
    integer from 100 up, and an integer whenever the value is one (``1.0`` -> ``"1"``)."""
    f = num(x)
    if f is None:
        return NA
    if f == round(f) or abs(f) >= 100:
        return f"{round(f):,d}"
    if abs(f) >= 10:
        return f"{f:.1f}"
    if abs(f) >= 1:
        return f"{f:.2f}"
    return f"{f:.3g}"


def fmt_pct(x: Any, digits: int = 1) -> str:
    """A fraction (0..1) as a percentage: ``0.3454`` -> ``"34.5%"``."""
    f = num(x)
    return NA if f is None else f"{100 * f:.{digits}f}%"


def fmt_gib(x: Any) -> str:
    """Bytes in GiB (2^30): ``"36.60 GiB"``."""
    f = num(x)
    return NA if f is None else f"{f / GiB:,.2f} GiB"


def fmt_usd(x: Any) -> str:
    """Dollars, two decimals (four below one cent)."""
    f = num(x)
    if f is None:
        return NA
    return f"${f:,.2f}" if abs(f) >= 0.01 or f == 0 else f"${f:.4f}"


def fmt_ms(x: Any) -> str:
    """A duration given in milliseconds, in the unit that reads.

    ``0.42`` -> ``"0.42 ms"``, ``842.1`` -> ``"842 ms"``, ``12_700`` -> ``"12.7 s"``,
    ``1_078_571`` -> ``"18.0 min"``, ``9_000_000`` -> ``"2.50 h"``.
    """
    f = num(x)
    if f is None:
        return NA
    a = abs(f)
    if a < 1_000 and f == round(f):
        return f"{f:.0f} ms"  # a round target (an SLO of 50 ms) stays round
    if a < 10:
        return f"{f:.2f} ms"
    if a < 100:
        return f"{f:.1f} ms"
    if a < 1_000:
        return f"{f:.0f} ms"
    if a < 10_000:
        return f"{f / 1e3:.2f} s"
    if a < 60_000:
        return f"{f / 1e3:.1f} s"
    if a < 7_200_000:
        return f"{f / 60e3:.1f} min"
    return f"{f / 3_600e3:.2f} h"


def fmt_s(x: Any) -> str:
    """A duration in seconds, in the unit that reads (see :func:`fmt_ms`)."""
    f = num(x)
    return NA if f is None else fmt_ms(1e3 * f)


# Markdown: characters that can open a construct anywhere in a line (emphasis, code, links,
# images, raw HTML, entities, tables, strikethrough), and the ones that only matter at the
# start of a line (headings, block quotes, lists, setext underlines).
_MD_INLINE = re.compile(r"([\\`*_\[\]<>|!~&#])")
_MD_LINE_START = re.compile(r"^(\s*)(\d{1,9})?([-+.)])(?=\s|$)")


def md_escape(text: Any) -> str:
    """User text made inert in Markdown: one line, every construct backslash-escaped.

    Newlines collapse to spaces (so no line can become a heading, list or table row), and
    every character that opens inline Markdown or raw HTML is escaped (so ``![x](http://...)``
    stays text: no remote image is fetched when ``report.md`` is viewed).
    """
    one_line = " ".join(str(text).split())
    escaped = _MD_INLINE.sub(r"\\\1", one_line)
    # A line opening with "- ", "+ " or "12. " would start a list: escape its marker.
    return _MD_LINE_START.sub(lambda m: m.group(1) + (m.group(2) or "") + "\\" + m.group(3), escaped)


@dataclass(frozen=True, slots=True)
class Cell:
    """One table cell: the text shown and the value a sortable table sorts by.

    ``sort`` is a number (sorted numerically, missing last) or None (sorted by ``text``).
    """

    text: str
    sort: float | None = None


@dataclass(frozen=True, slots=True)
class Table:
    """A table for both renderers: a header and rows of :class:`Cell`.

    ``numeric[i]`` right-aligns column ``i``; ``caption`` is an optional line above it.
    """

    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    numeric: tuple[bool, ...] = ()
    caption: str = ""

    @property
    def alignments(self) -> tuple[bool, ...]:
        """Per column: right-aligned (numeric) or not; the first column is left-aligned."""
        if self.numeric:
            return self.numeric
        return (False,) + (True,) * (len(self.header) - 1)


def cell(text: str, sort: Any = None) -> Cell:
    """A :class:`Cell` whose sort key is ``sort`` if it is a finite number, else text order."""
    return Cell(text, num(sort))
