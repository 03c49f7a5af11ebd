"""Pictures of subspace results: PNG (matplotlib) or self-contained HTML (plotly).

The format follows the output path's suffix (`.png` or `.html`), so a CLI `--out FILE` needs
no format flag. HTML files embed plotly.js (`include_plotlyjs=True`, ~4 MB) instead of
linking a CDN: a mirror is used offline, and a picture that needs the network to open is
not a picture. PNGs are drawn on an Agg canvas owned by the figure, without pyplot, so
plotting never switches the caller's matplotlib backend or leaks global figures.

Labels are what makes a geometry picture readable: pass explanations either as a sequence
aligned with the points or as a mapping feature id -> text; points are named
"#id explanation" on hover (HTML) and next to the point (PNG, when there are few enough).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import InvalidOptionError, InvalidPathError

if TYPE_CHECKING:
    from .subspace import ClusterResult, PCAResult

__all__ = ["plot_pca", "plot_umap", "plot_dendrogram", "PLOT_SUFFIXES"]

PLOT_SUFFIXES = (".png", ".html")
Labels = Optional[Union[Sequence[Optional[str]], Mapping[int, Optional[str]]]]

_MAX_ANNOTATED = 60  # PNG: name points only up to this many, beyond that text hides the picture
_LABEL_CHARS = 48


def _format(path: Union[str, Path]) -> tuple[Path, str]:
    """The output path and its format; refuses unknown suffixes before any work is done."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise InvalidPathError(f"plot path must end in .png or .html, got {p.name!r}", option="path")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p, suffix[1:]


def _texts(labels: Labels, features: np.ndarray) -> list[str]:
    """'#id explanation' per point ('#id' alone where no explanation is known)."""
    n = len(features)
    if labels is None:
        texts: list[Optional[str]] = [None] * n
    elif isinstance(labels, Mapping):
        texts = [labels.get(int(f)) for f in features]
    else:
        texts = list(labels)
        if len(texts) != n:
            raise InvalidOptionError(f"labels has {len(texts)} entries for {n} points", option="labels")
    return [f"#{int(f)} {t}" if t else f"#{int(f)}" for f, t in zip(features, texts)]


def _short(text: str) -> str:
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _scatter(
    xy: np.ndarray,
    texts: list[str],
    path: Path,
    fmt: str,
    *,
    colors: Optional[Sequence[Any]],
    title: str,
    xlabel: str,
    ylabel: str,
    annotate: bool,
) -> Path:
    keep = np.isfinite(xy).all(axis=1)  # UMAP leaves zero/NaN rows at NaN
    xy = xy[keep]
    texts = [t for t, k in zip(texts, keep) if k]
    col = None if colors is None else np.asarray(list(colors), dtype=object)[keep]
    numeric = col is not None and all(isinstance(c, (int, float, np.integer, np.floating)) for c in col)
    if fmt == "png":
        fig = _figure((8, 7))
        ax = fig.add_subplot(1, 1, 1)
        if col is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=14, alpha=0.8)
        elif numeric:
            sc = ax.scatter(xy[:, 0], xy[:, 1], s=14, alpha=0.8, c=col.astype(float), cmap="viridis")
            fig.colorbar(sc, ax=ax)
        else:
            for name in dict.fromkeys(col.tolist()):
                sel = col == name
                ax.scatter(xy[sel, 0], xy[sel, 1], s=14, alpha=0.8, label=str(name))
            if len(set(col.tolist())) <= 20:
                ax.legend(fontsize=7, loc="best")
        if annotate and len(xy) <= _MAX_ANNOTATED:
            for (x, y), t in zip(xy, texts):
                ax.annotate(_short(t), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(path, format="png")
        return path
    import plotly.graph_objects as go

    marker: dict[str, Any] = {"size": 7, "opacity": 0.85}
    if col is not None and numeric:
        marker.update(color=col.astype(float), colorscale="Viridis", showscale=True)
    show_text = annotate and len(xy) <= _MAX_ANNOTATED
    if col is not None and not numeric:
        fig = go.Figure()
        for name in dict.fromkeys(col.tolist()):
            sel = np.flatnonzero(col == name)
            fig.add_trace(go.Scatter(
                x=xy[sel, 0], y=xy[sel, 1], mode="markers+text" if show_text else "markers", name=str(name),
                hovertext=[texts[i] for i in sel], hoverinfo="text", marker=dict(marker),
                text=[_short(texts[i]) for i in sel] if show_text else None, textposition="top center",
            ))
    else:
        fig = go.Figure(go.Scatter(
            x=xy[:, 0], y=xy[:, 1], mode="markers+text" if show_text else "markers", hovertext=texts,
            hoverinfo="text", marker=marker, text=[_short(t) for t in texts] if show_text else None,
            textposition="top center",
        ))
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, template="plotly_white")
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def plot_pca(
    result: "PCAResult",
    labels: Labels,
    path: Union[str, Path],
    *,
    colors: Optional[Sequence[Any]] = None,
    title: Optional[str] = None,
) -> Path:
    """Scatter of the first two principal components, each point named by its explanation.

    Axis titles carry each component's explained-variance share, which says how much of the
    set the picture shows. Returns the path written.
    """
    p, fmt = _format(path)
    coords = np.asarray(result.coords, dtype=np.float64)
    if coords.shape[1] < 2:
        coords = np.column_stack([coords[:, 0], np.zeros(len(coords))])
    evr = list(np.asarray(result.explained_variance_ratio, dtype=float)) + [0.0, 0.0]
    return _scatter(
        coords[:, :2], _texts(labels, np.asarray(result.features)), p, fmt, colors=colors,
        title=title or f"PCA of {len(coords)} features", xlabel=f"PC1 ({evr[0]:.1%})", ylabel=f"PC2 ({evr[1]:.1%})",
        annotate=True,
    )


def plot_umap(
    coords: Any,
    labels: Labels,
    path: Union[str, Path],
    *,
    colors: Optional[Sequence[Any]] = None,
    features: Optional[Sequence[int]] = None,
    title: Optional[str] = None,
) -> Path:
    """Scatter of a UMAP layout (`umap_embed`'s output). NaN rows (zero/NaN features) are skipped.

    `features` are the ids of the rows of `coords` (default 0..n-1, i.e. all of a decoder),
    used to look labels up in a mapping and to name points. `colors` are per-point values:
    numbers get a colour scale, anything else (e.g. cluster labels) one colour per value.
    """
    p, fmt = _format(path)
    xy = np.asarray(coords.detach().cpu().numpy() if hasattr(coords, "detach") else coords, dtype=np.float64)
    ids = np.arange(len(xy)) if features is None else np.asarray(list(features), dtype=np.int64)
    if len(ids) != len(xy):
        raise InvalidOptionError(f"features has {len(ids)} ids for {len(xy)} points", option="features")
    return _scatter(
        xy[:, :2], _texts(labels, ids), p, fmt, colors=colors, title=title or f"UMAP of {len(xy)} features",
        xlabel="UMAP 1", ylabel="UMAP 2", annotate=True,
    )


def plot_dendrogram(
    result: "ClusterResult",
    labels: Labels,
    path: Union[str, Path],
    *,
    threshold: Optional[float] = None,
    title: Optional[str] = None,
) -> Path:
    """Dendrogram of a `cluster` result, leaves named by explanation, heights in cosine distance.

    `threshold` draws the cut line (and colours the clusters below it in the PNG).
    """
    from scipy.cluster.hierarchy import dendrogram

    p, fmt = _format(path)
    Z = np.asarray(result.linkage, dtype=np.float64)
    texts = [_short(t) for t in _texts(labels, np.asarray(result.features))]
    n = len(texts)
    ylabel = "cosine distance (1 - cos)" if result.method not in ("ward", "centroid", "median") else "distance"
    title = title or f"Clustering of {n} features ({result.method} linkage)"
    if fmt == "png":
        fig = _figure((max(8.0, min(0.18 * n, 60.0)), 7))
        ax = fig.add_subplot(1, 1, 1)
        dendrogram(Z, labels=texts, ax=ax, leaf_rotation=90, leaf_font_size=7 if n <= 150 else 4,
                   color_threshold=threshold if threshold is not None else None, no_labels=n > 400)
        if threshold is not None:
            ax.axhline(threshold, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(p, format="png")
        return p
    import plotly.graph_objects as go

    d = dendrogram(Z, labels=texts, no_plot=True, color_threshold=threshold if threshold is not None else None)
    fig = go.Figure()
    for xs, ys in zip(d["icoord"], d["dcoord"]):
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(width=1, color="#444"), hoverinfo="skip",
                                 showlegend=False))
    leaf_x = [5 + 10 * i for i in range(n)]  # scipy places leaf i of the ordering at x = 5 + 10 i
    fig.add_trace(go.Scatter(x=leaf_x, y=[0.0] * n, mode="markers", marker=dict(size=5), hovertext=d["ivl"],
                             hoverinfo="text", showlegend=False))
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dash", line_color="grey")
    fig.update_layout(
        title=title, yaxis_title=ylabel, template="plotly_white",
        xaxis=dict(tickmode="array", tickvals=leaf_x, ticktext=d["ivl"], tickangle=-90, tickfont=dict(size=8)),
    )
    fig.write_html(str(p), include_plotlyjs=True, full_html=True)
    return p
