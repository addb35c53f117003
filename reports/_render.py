"""One template engine (Jinja2) and one stylesheet for every servesim report.

The run report (:mod:`servesim.reports.report`) and the capacity-plan report
(:mod:`servesim.reports.plan_report`) both render ``templates/*.html.j2`` (HTML, autoescaped)
and ``templates/*.md.j2`` (Markdown, user text through the ``md`` filter). Every HTML page
extends ``_base.html.j2``, which inlines ``report.css`` and ``report.js`` and, once per page,
plotly.js from the installed ``plotly`` package, so the file works offline with no server and
fetches nothing when opened. Every page carries the servesim version in its footer.

Output is deterministic: no timestamps, no absolute paths, dictionaries dumped in a fixed order.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from servesim.reports._format import md_escape

TEMPLATES = Path(__file__).parent / "templates"


def servesim_version() -> str:
    """``servesim.__version__`` (``"0+unknown"`` in a source tree that was never installed)."""
    import servesim

    return str(getattr(servesim, "__version__", "0+unknown"))


@functools.cache
def plotly_js() -> str:
    """The minified plotly.js bundled with the ``plotly`` Python package (read, never fetched).

    Located without importing ``plotly`` (whose import is slow and not needed here).

    Raises:
        RuntimeError: the ``plotly`` package or its bundled script is missing.
    """
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the plotly package is not installed: pip install 'plotly>=6,<8'")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "package_data" / "plotly.min.js"
        if path.is_file():
            # "</script" inside the bundle would end the inline <script> element early.
            return path.read_text(encoding="utf-8").replace("</script", "<\\/script")
    raise RuntimeError("plotly is installed without package_data/plotly.min.js; reinstall it")


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = md_escape
    env.filters["sortkey"] = lambda c: "" if c.sort is None else repr(float(c.sort))
    return env


def _asset(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def render(template: str, /, **context: Any) -> str:
    """Render ``templates/<template>`` with ``context`` plus ``version``, ``css`` and ``js``."""
    context.setdefault("version", servesim_version())
    if template.endswith(".html.j2"):
        context.setdefault("css", _asset("report.css"))
        context.setdefault("js", _asset("report.js"))
        figures = context.get("figures") or ()
        context.setdefault("plotly_js", plotly_js() if figures else "")
    return _environment().get_template(template).render(**context)


def _clean(x: Any) -> Any:
    """JSON-safe copy: NaN/inf -> null, numpy -> Python, floats to 6 significant digits."""
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "f":
            return [None if not math.isfinite(v) else float(f"{v:.6g}") for v in x.tolist()]
        return [_clean(v) for v in x.tolist()]
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float | np.floating):
        v = float(x)
        return float(f"{v:.6g}") if math.isfinite(v) else None
    if isinstance(x, np.integer | np.bool_):
        return x.item()
    return x


def figure_json(figure: Mapping[str, Any]) -> str:
    """A figure spec (``{"data": [...], "layout": {...}}``) as compact, deterministic JSON that is
    safe inside ``<script type="application/json">`` (``<``, ``>`` and ``&`` escaped)."""
    text = json.dumps(_clean(figure), separators=(",", ":"), allow_nan=False, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
