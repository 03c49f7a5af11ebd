"""Inline SVG charts for the pages: histograms with labelled axes, and a scatter that stays
light at a million points.

No chart library and no script: the CSP forbids inline scripts and the pages load nothing
from elsewhere, so charts are SVG drawn on the server. Text that reaches a chart (a title, a
label) goes through Jinja's autoescape in the template; the numbers and the path data built
here are formatted from floats, never from request text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

__all__ = ["histogram", "scatter", "layout", "Scatter", "MAX_POINTS", "SMALL_SCATTER", "N_COLOURS", "fmt"]

#: At most this many points are drawn; a larger map is a fixed random sample (said on the page).
MAX_POINTS = 50_000
#: Up to this many points, each is its own link with a tooltip; above, points are path data.
SMALL_SCATTER = 2_000
#: Colour classes (`.c0` .. `.c7` in style.css), low to high.
N_COLOURS = 8
_W, _H = 640.0, 420.0  # scatter plot area
_HW, _HH = 400.0, 150.0  # histogram plot area
_LEFT, _BOTTOM, _TOP = 52.0, 40.0, 8.0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: float) -> str:
    """A tick label: short, exact enough to read."""
    if value == 0:
        return "0"
    a = abs(value)
    if a >= 10_000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def histogram(values: Sequence[Any], heights: Sequence[Any], *, xlabel: str, ylabel: str,
              label: str, signed: bool = False) -> Optional[dict[str, Any]]:
    """Bars and axes for an SVG histogram of (bin value, count) pairs, or None when nothing
    finite is stored (Neuronpedia's histograms hold NaN and infinities now and then).

    `signed` colours bars below zero apart (the logit histogram)."""
    pairs = sorted((float(x), float(h)) for x, h in zip(values, heights) if _finite(x) and _finite(h) and h >= 0)
    if not pairs:
        return None
    xs = np.array([p[0] for p in pairs])
    hs = np.array([p[1] for p in pairs])
    x0, x1 = float(xs[0]), float(xs[-1])
    span = (x1 - x0) or 1.0
    step = span / max(len(pairs) - 1, 1) if len(pairs) > 1 else 1.0
    lo, hi = x0 - step / 2, x1 + step / 2
    top = float(hs.max()) or 1.0
    bw = max(_HW * step / (hi - lo) - 1.0, 0.8)
    bars = []
    for x, h in pairs:
        bh = _HH * h / top
        cx = _LEFT + _HW * (x - lo) / (hi - lo)
        bars.append({"x": round(cx - bw / 2, 2), "w": round(bw, 2), "y": round(_TOP + _HH - bh, 2), "h": round(bh, 2),
                     "cls": "neg" if signed and x < 0 else "bar", "title": f"{fmt(x)}: {h:,.0f}"})
    xticks = [{"x": round(_LEFT + _HW * (v - lo) / (hi - lo), 2), "label": fmt(v)}
              for v in np.linspace(x0, x1, 5)]
    yticks = [{"y": round(_TOP + _HH - _HH * f, 2), "label": fmt(top * f)} for f in (0.0, 0.5, 1.0)]
    return {"bars": bars, "xticks": xticks, "yticks": yticks, "xlabel": xlabel, "ylabel": ylabel, "label": label,
            "left": _LEFT, "top": _TOP, "pw": _HW, "ph": _HH, "width": _LEFT + _HW + 12, "height": _TOP + _HH + _BOTTOM,
            "axis_y": _TOP + _HH}


def _classes(colour: np.ndarray) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Each point's colour class (quantile bins of `colour`; NaN is -1) and the legend."""
    cls = np.full(colour.shape, -1, dtype=np.int64)
    ok = np.isfinite(colour)
    if not ok.any():
        return cls, []
    edges = np.unique(np.quantile(colour[ok], np.linspace(0, 1, N_COLOURS + 1)))
    if len(edges) < 2:
        cls[ok] = N_COLOURS - 1
        return cls, [{"cls": f"c{N_COLOURS - 1}", "label": fmt(float(edges[0]))}]
    bins = np.clip(np.searchsorted(edges, colour[ok], side="right") - 1, 0, len(edges) - 2)
    # spread the bins over the palette so that few bins still run from low to high colours
    scale = (N_COLOURS - 1) / max(len(edges) - 2, 1)
    cls[ok] = np.round(bins * scale).astype(np.int64)
    legend = [{"cls": f"c{int(round(b * scale))}", "label": f"{fmt(float(edges[b]))} – {fmt(float(edges[b + 1]))}"}
              for b in range(len(edges) - 1)]
    return cls, legend


@dataclass(frozen=True)
class Scatter:
    """A laid-out map: the chart for the template (without hits) and where each point went."""

    chart: dict[str, Any]
    index: np.ndarray  # sorted feature indices
    order: np.ndarray  # position of index[k] in px/py
    px: np.ndarray
    py: np.ndarray

    def with_hits(self, hits: Sequence[tuple[int, str]]) -> dict[str, Any]:
        """The chart with `hits` (index, title) ringed on top, each a link; hits without a
        point on this map are left out."""
        out = dict(self.chart)
        out["hits"] = []
        n = len(self.index)
        if not hits or not n:
            return out
        wanted = np.asarray([h[0] for h in hits], dtype=np.int64)
        at = np.minimum(np.searchsorted(self.index, wanted), n - 1)
        for (idx, title), pos in zip(hits, at.tolist()):
            if int(self.index[pos]) == int(idx):
                i = int(self.order[pos])
                out["hits"].append({"index": int(idx), "cx": float(self.px[i]), "cy": float(self.py[i]),
                                    "title": f"{idx}: {title}"})
        return out


def scatter(index: np.ndarray, x: np.ndarray, y: np.ndarray, colour: np.ndarray, *,
            titles: Optional[Sequence[Optional[str]]] = None, hits: Sequence[tuple[int, str]] = (),
            max_points: Optional[int] = None) -> dict[str, Any]:
    """`layout(...)` with `hits` ringed: the chart for the template."""
    return layout(index, x, y, colour, titles=titles, max_points=max_points).with_hits(hits)


def layout(index: np.ndarray, x: np.ndarray, y: np.ndarray, colour: np.ndarray, *,
           titles: Optional[Sequence[Optional[str]]] = None, max_points: Optional[int] = None) -> Scatter:
    """A scatter of (x, y) coloured by `colour` (quantile classes).

    Above `max_points` a fixed random sample (seed 0, so the same map each time) is drawn.
    Up to `SMALL_SCATTER` points each point is a circle with a link and a tooltip (`titles`);
    above, each colour class is one `<path>` of dots, which keeps a 50,000-point map to about
    a megabyte of HTML and a browser that draws it at once."""
    max_points = MAX_POINTS if max_points is None else max_points
    n = int(len(index))
    keep = np.arange(n)
    if n > max_points:
        keep = np.sort(np.random.default_rng(0).choice(n, size=max_points, replace=False))
    x0, x1 = float(np.min(x)), float(np.max(x))
    y0, y1 = float(np.min(y)), float(np.max(y))
    sx, sy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    px = np.round(10 + (_W - 20) * (x - x0) / sx, 1)
    py = np.round(10 + (_H - 20) * (1 - (y - y0) / sy), 1)
    cls, legend = _classes(colour.astype(np.float64))
    out: dict[str, Any] = {"width": _W, "height": _H, "total": n, "shown": int(len(keep)), "sampled": n > max_points,
                           "legend": legend, "points": [], "paths": [], "hits": []}
    if len(keep) <= SMALL_SCATTER:
        out["points"] = [{"index": int(index[i]), "cx": float(px[i]), "cy": float(py[i]), "cls": f"c{cls[i]}" if cls[i] >= 0 else "cn",
                          "title": f"{int(index[i])}: {(titles[i] if titles is not None else None) or ''}"} for i in keep]
    else:
        kx, ky, kc = px[keep], py[keep], cls[keep]
        for c in range(-1, N_COLOURS):
            sel = kc == c
            if not sel.any():
                continue
            flat = np.empty(2 * int(sel.sum()))
            flat[0::2], flat[1::2] = kx[sel], ky[sel]
            d = ("M%.1f %.1fh0" * (len(flat) // 2)) % tuple(flat.tolist())  # one C-level format, not 50,000
            out["paths"].append({"cls": f"c{c}" if c >= 0 else "cn", "d": d})
    order = np.argsort(index, kind="stable")
    return Scatter(out, np.asarray(index[order], dtype=np.int64), order, px, py)
