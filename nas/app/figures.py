"""Plotly figures of the explorer: the 3-D trade-off, its three 2-D projections, a spec as a stack of blocks and a
spec's per-layer activation memory. Pure functions of a trial table (:func:`nas.app.core.trial_frame`)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from nas.app.core import CATEGORIES, CATEGORY_LABELS, PARAM_PREFIX, TRAINED_CATEGORIES

STATUS_COLOURS = {
    "front": "#d62728",       # red
    "feasible": "#1f77b4",    # blue
    "infeasible": "#ff7f0e",  # orange
    "rejected": "#9e9e9e",    # grey
    "failed": "#6d4c41",      # brown
    "running": "#2ca02c",     # green
}
SYMBOLS_2D = {"front": "circle", "feasible": "circle", "infeasible": "x", "rejected": "diamond-open",
              "failed": "x-open", "running": "circle-open"}
SYMBOLS_3D = {"front": "circle", "feasible": "circle", "infeasible": "x", "rejected": "diamond-open",
              "failed": "cross", "running": "circle-open"}
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#eeca3b", "#9d755d", "#ff9da6",
           "#bab0ac", "#17becf", "#7f7f7f")
LIMIT_COLOUR = "#c62828"
WEBGL_ABOVE = 1000  # 2-D charts switch to WebGL (Scattergl) above this many points
MAX_DISCRETE = 12

AXES = {
    "memory_kb": "peak memory (KB)",
    "energy_mj": "energy per inference (mJ)",
    "metric": "INT8 metric",
}


SHORT = {"memory_kb": "memory", "energy_mj": "energy", "metric": "INT8 {m}"}


def axis_title(key: str, metric_name: str) -> str:
    return f"INT8 {metric_name}" if key == "metric" else AXES[key]


def _colour_groups(df: pd.DataFrame, colour: str) -> tuple[str, list[tuple[str, np.ndarray, Any]]]:
    """How points are coloured: ('discrete', [(label, row mask, colour)]) or ('continuous', [(label, mask, values)])."""
    if colour == "category":
        groups = [(CATEGORY_LABELS[c], (df["category"] == c).to_numpy(), STATUS_COLOURS[c]) for c in CATEGORIES]
        return "discrete", [g for g in groups if g[1].any()]
    values = df[colour]
    distinct = values.dropna().unique().tolist()
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in distinct)
    if numeric and len(distinct) > MAX_DISCRETE:
        return "continuous", [("", np.ones(len(df), dtype=bool), values.to_numpy(dtype=float))]
    try:
        distinct = sorted(distinct)
    except TypeError:
        distinct = sorted(distinct, key=str)
    name = colour[len(PARAM_PREFIX):] if colour.startswith(PARAM_PREFIX) else colour
    groups = [(f"{name} = {v}", (values == v).to_numpy(), PALETTE[i % len(PALETTE)]) for i, v in enumerate(distinct)]
    missing = values.isna().to_numpy()
    if missing.any():
        groups.append((f"{name}: none", missing, "#cccccc"))
    return "discrete", groups


def _symbols(df: pd.DataFrame, table: dict[str, str]) -> list[str]:
    return [table[c] for c in df["category"]]


def _front_overlay(df: pd.DataFrame, x: str, y: str, z: str | None, colour: str) -> Any | None:
    """Rings around the front's points when the colour is a parameter (with status colours the front is red)."""
    front = df[df["category"] == "front"]
    if colour == "category" or front.empty:
        return None
    common = dict(mode="markers", name=CATEGORY_LABELS["front"], hoverinfo="skip", customdata=front["number"],
                  showlegend=True)
    if z is None:
        cls = go.Scattergl if len(df) > WEBGL_ABOVE else go.Scatter
        return cls(x=front[x], y=front[y], marker=dict(size=17, symbol="circle-open",
                                                     line=dict(width=2.5, color=STATUS_COLOURS["front"])), **common)
    return go.Scatter3d(x=front[x], y=front[y], z=front[z],
                        marker=dict(size=9, symbol="circle-open", color=STATUS_COLOURS["front"],
                                    line=dict(width=3, color=STATUS_COLOURS["front"])), **common)


def _marker(kind: str, value: Any, mask_df: pd.DataFrame, *, size: float, three_d: bool, show_scale: bool,
            colour_label: str) -> dict[str, Any]:
    symbols = _symbols(mask_df, SYMBOLS_3D if three_d else SYMBOLS_2D)
    front = (mask_df["category"] == "front").to_numpy()
    sizes = np.where(front, size * 1.5, size)
    m: dict[str, Any] = dict(symbol=symbols, size=sizes, opacity=1.0 if len(mask_df) <= 300 else 0.75)
    if kind == "continuous":
        m.update(color=value, colorscale="Viridis", showscale=show_scale,
                 colorbar=dict(title=dict(text=colour_label), thickness=12, len=0.6))
    else:
        m.update(color=value)
    if not three_d:
        m["line"] = dict(width=np.where(front, 1.5, 0.5).tolist(), color="#222222")
    return m


def tradeoff_3d(df: pd.DataFrame, colour: str, colour_label: str, metric_name: str,
                limits: dict[str, tuple[float, str]], log_axes: bool = False, height: int = 520) -> go.Figure:
    """INT8 metric vs peak memory vs energy, one point per trained trial; limit planes for memory and energy."""
    pts = df[df["category"].isin(TRAINED_CATEGORIES) & df["metric"].notna() & df["memory_kb"].notna()
             & df["energy_mj"].notna()]
    fig = go.Figure()
    kind, groups = _colour_groups(pts, colour)
    for label, mask, value in groups:
        sub = pts[mask]
        if sub.empty:
            continue
        val = value[mask] if kind == "continuous" else value
        fig.add_trace(go.Scatter3d(
            x=sub["memory_kb"], y=sub["energy_mj"], z=sub["metric"], mode="markers", name=label or colour_label,
            customdata=sub["number"], text=sub["hover"], hovertemplate="%{text}<extra></extra>",
            marker=_marker(kind, val, sub, size=7, three_d=True, show_scale=True, colour_label=colour_label),
            showlegend=kind == "discrete"))
    overlay = _front_overlay(pts, "memory_kb", "energy_mj", "metric", colour)
    if overlay is not None:
        fig.add_trace(overlay)
    if not pts.empty:
        z0, z1 = float(pts["metric"].min()), float(pts["metric"].max())
        x0, x1 = float(pts["memory_kb"].min()), float(pts["memory_kb"].max())
        y0, y1 = float(pts["energy_mj"].min()), float(pts["energy_mj"].max())
        if "memory_kb" in limits and limit_in_view(pts["memory_kb"], limits["memory_kb"][0]):
            lim, label = limits["memory_kb"]
            x1 = max(x1, lim)
            fig.add_trace(_plane("x", lim, (y0, y1), (z0, z1), label))
        if "energy_mj" in limits and limit_in_view(pts["energy_mj"], limits["energy_mj"][0]):
            lim, label = limits["energy_mj"]
            fig.add_trace(_plane("y", lim, (x0, x1), (z0, z1), label))
    axis = dict(type="log") if log_axes else {}
    fig.update_layout(
        height=height, margin=dict(l=0, r=0, t=30, b=0), uirevision="tradeoff-3d",
        title=dict(text=f"INT8 {metric_name} vs peak memory vs energy", x=0.01, font=dict(size=14)),
        legend=dict(orientation="h", yanchor="bottom", y=-0.02, x=0, font=dict(size=11)),
        scene=dict(xaxis=dict(title=dict(text=AXES["memory_kb"]), **axis),
                   yaxis=dict(title=dict(text=AXES["energy_mj"]), **axis),
                   zaxis=dict(title=dict(text=f"INT8 {metric_name}")),
                   camera=dict(eye=dict(x=1.6, y=-1.6, z=0.9))),
    )
    return fig


LIMIT_VIEW_FACTOR = 2.5  # a limit more than this far above every point is named at the edge, not drawn


def limit_in_view(values: Any, limit: float) -> bool:
    """Draw a limit when some point is near or beyond it (within LIMIT_VIEW_FACTOR of the largest value)."""
    if values is None:
        return True
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return not len(arr) or limit <= LIMIT_VIEW_FACTOR * float(arr.max())


def _plane(axis: str, value: float, span_a: tuple[float, float], span_b: tuple[float, float], label: str) -> go.Mesh3d:
    """A translucent limit plane: memory = value (axis 'x') or energy = value (axis 'y') across the other two."""
    a0, a1 = span_a
    b0, b1 = span_b
    if a0 == a1:
        a1 = a0 + 1e-9 + abs(a0) * 0.05
    if b0 == b1:
        b1 = b0 + 1e-9 + abs(b0) * 0.05
    if axis == "x":
        x, y, z = [value] * 4, [a0, a1, a1, a0], [b0, b0, b1, b1]
    else:
        x, y, z = [a0, a1, a1, a0], [value] * 4, [b0, b0, b1, b1]
    return go.Mesh3d(x=x, y=y, z=z, i=[0, 0], j=[1, 2], k=[2, 3], color=LIMIT_COLOUR, opacity=0.12, name=label,
                     showlegend=True, hoverinfo="name", flatshading=True)


def projection(df: pd.DataFrame, x: str, y: str, colour: str, colour_label: str, metric_name: str,
               limits: dict[str, tuple[float, str]], *, include_untrained: bool = False, log_axes: bool = False,
               height: int = 380) -> go.Figure:
    """One 2-D projection of the trade-off. With ``include_untrained`` (memory vs energy), rejected, failed and
    running trials are drawn too, at their estimated memory."""
    pts = df if include_untrained else df[df["category"].isin(TRAINED_CATEGORIES)]
    pts = pts[pts[x].notna() & pts[y].notna()]
    cls = go.Scattergl if len(pts) > WEBGL_ABOVE else go.Scatter
    fig = go.Figure()
    kind, groups = _colour_groups(pts, colour)
    for label, mask, value in groups:
        sub = pts[mask]
        if sub.empty:
            continue
        val = value[mask] if kind == "continuous" else value
        fig.add_trace(cls(x=sub[x], y=sub[y], mode="markers", name=label or colour_label, customdata=sub["number"],
                          text=sub["hover"], hovertemplate="%{text}<extra></extra>",
                          marker=_marker(kind, val, sub, size=9, three_d=False, show_scale=False,
                                         colour_label=colour_label),
                          showlegend=kind == "discrete"))
    overlay = _front_overlay(pts, x, y, None, colour)
    if overlay is not None:
        fig.add_trace(overlay)
    xaxis: dict[str, Any] = dict(title=dict(text=axis_title(x, metric_name)), zeroline=False)
    yaxis: dict[str, Any] = dict(title=dict(text=axis_title(y, metric_name)), zeroline=False)
    if log_axes:
        for key, ax in ((x, xaxis), (y, yaxis)):
            if key != "metric":
                ax["type"] = "log"
    for key, ax, vertical in ((x, xaxis, True), (y, yaxis, False)):
        if key not in limits:
            continue
        value, label = limits[key]
        if not limit_in_view(pts[key] if not pts.empty else None, value) and not log_axes:
            # far above every point: drawing it would squash the points into a corner; say where it is
            fig.add_annotation(xref="paper", yref="paper", x=1 if vertical else 0.01, y=0.02 if vertical else 1,
                               xanchor="right" if vertical else "left", yanchor="bottom" if vertical else "top",
                               text=f"{label} →" if vertical else f"↑ {label}", showarrow=False,
                               font=dict(color=LIMIT_COLOUR, size=11))
            continue
        line = dict(color=LIMIT_COLOUR, width=2, dash="dash")
        if vertical:
            fig.add_vline(x=value, line=line, annotation_text=label, annotation_position="top left",
                          annotation_font_color=LIMIT_COLOUR)
        else:
            fig.add_hline(y=value, line=line, annotation_text=label, annotation_position="bottom right",
                          annotation_font_color=LIMIT_COLOUR)
        if not pts.empty and not log_axes:  # keep the line in view
            ax["range"] = [min(0.0, float(pts[key].min())), max(float(pts[key].max()), value) * 1.06]
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=40, b=10), uirevision=f"proj-{x}-{y}",
        title=dict(text=f"{SHORT[y].format(m=metric_name)} vs {SHORT[x].format(m=metric_name)}", x=0.01,
                   font=dict(size=14)),
        xaxis=xaxis, yaxis=yaxis, showlegend=False, clickmode="event+select", dragmode="zoom",
    )
    return fig


# --------------------------------------------------------------------------------------------- one trial

KIND_COLOURS = {"input": "#bab0ac", "cn": "#4c78a8", "ds": "#72b7b2", "ir": "#f58518", "rb": "#b279a2",
                "head": "#54a24b"}
KIND_NAMES = {"cn": "conv", "ds": "dw-separable", "ir": "inv. residual", "rb": "basic residual"}
ACT_NAMES = {"relu": "ReLU", "relu6": "ReLU6", "hswish": "h-swish"}


def spec_stack(spec: Any, height: int | None = None) -> go.Figure:
    """A spec as a stack of blocks, input at the top: width grows with the channels, colour tells the block kind."""
    rows: list[tuple[str, str, int, str]] = []  # kind, label, channels, size text
    size = spec.resolution
    rows.append(("input", f"input {spec.resolution}×{spec.resolution}×{spec.channels}", spec.input_channels,
                 f"{size}×{size}"))
    for b in spec.blocks:
        size = math.ceil(size / b.stride)
        parts = [f"{KIND_NAMES[b.kind]}", f"k{b.kernel}", f"s{b.stride}"]
        if b.kind == "ir":
            parts.append(f"e{b.expansion:g}")
        parts.append(f"{spec.channels_of(b)} ch")
        if b.se:
            parts.append(f"SE {b.se:g}")
        parts.append(ACT_NAMES.get(b.act, b.act))
        label = " · ".join(parts) + (f"  ×{b.repeats}" if b.repeats > 1 else "")
        rows.append((b.kind, label, spec.channels_of(b), f"{size}×{size}"))
    h = spec.head
    if h.kind == "classifier":
        head = f"pool → {'dense ' + str(h.hidden) + ' → ' if h.hidden else ''}dense {h.classes} → softmax"
        rows.append(("head", head, h.classes, ""))
    else:
        head = f"gaze head: 1x1 conv {h.conv_channels} → dense {h.hidden} → 2 × {h.output_scale:g}·tanh"
        rows.append(("head", head, 2, ""))
    widest = max(math.log2(max(2, r[2])) for r in rows)
    fig = go.Figure()
    shapes, annotations = [], []
    for i, (kind, label, ch, sz) in enumerate(rows):
        half = 0.08 + 0.42 * math.log2(max(2, ch)) / widest     # box width grows with log2(channels)
        shapes.append(dict(type="rect", x0=-0.5 - half, x1=-0.5 + half, y0=-i - 0.4, y1=-i + 0.4,
                           fillcolor=KIND_COLOURS[kind], opacity=0.9, line=dict(width=1, color="#333333")))
        annotations.append(dict(x=0.08, y=-i, text=label, showarrow=False, xanchor="left",
                                font=dict(size=12, color="#111111")))
        if sz:
            annotations.append(dict(x=-0.5, y=-i, text=sz, showarrow=False, font=dict(size=10, color="#ffffff")))
    # an invisible trace so hovering a row tells it, and the axes exist
    fig.add_trace(go.Scatter(x=[-0.5] * len(rows), y=[-i for i in range(len(rows))], mode="markers",
                             marker=dict(opacity=0), text=[r[1] for r in rows], hovertemplate="%{text}<extra></extra>",
                             showlegend=False))
    fig.update_layout(shapes=shapes, annotations=annotations, height=height or 34 * len(rows) + 50,
                      margin=dict(l=10, r=10, t=30, b=10),
                      title=dict(text="architecture (input at the top; box width ~ log channels)", x=0.01,
                                 font=dict(size=14)),
                      xaxis=dict(visible=False, range=[-1.05, 2.6], fixedrange=True),
                      yaxis=dict(visible=False, range=[-len(rows) + 0.45, 0.55], fixedrange=True),
                      plot_bgcolor="rgba(0,0,0,0)")
    return fig


def layer_memory(prof: Any, limit_kb: float | None = None) -> go.Figure:
    """Activation memory alive at each op (KB), the peak op marked, and the planned TFLM arena head."""
    layers = prof.layers
    kb = np.array([layer.live_bytes for layer in layers], dtype=float) / 1024.0
    colours = ["#90a4ae"] * len(layers)
    colours[prof.peak_layer] = STATUS_COLOURS["front"]
    text = [f"#{layer.index} {layer.name} ({layer.kind}) out {'×'.join(map(str, layer.shape))}"
            f"<br>{layer.live_bytes / 1024:,.1f} KB live · {layer.macs:,} MACs" for layer in layers]
    fig = go.Figure(go.Bar(x=[layer.index for layer in layers], y=kb, marker_color=colours, text=text,
                           hovertemplate="%{text}<extra></extra>", textposition="none", name="live activations"))
    peak = layers[prof.peak_layer]
    fig.add_annotation(x=peak.index, y=kb[prof.peak_layer], text=f"peak: {peak.name} ({peak.kind}) "
                       f"{peak.live_bytes / 1024:,.1f} KB", showarrow=True, arrowhead=2, ax=40, ay=-30,
                       font=dict(color=STATUS_COLOURS["front"]))
    head_kb = prof.activation_bytes / 1024.0
    fig.add_hline(y=head_kb, line=dict(color="#37474f", width=1.5, dash="dot"),
                  annotation_text=f"planned TFLM arena (activations) {head_kb:,.1f} KB",
                  annotation_position="top right")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), bargap=0.15, showlegend=False,
                      title=dict(text="activation memory per layer (estimated, INT8)", x=0.01, font=dict(size=14)),
                      xaxis=dict(title=dict(text="op (execution order)")),
                      yaxis=dict(title=dict(text="live activations (KB)"), range=[0, max(kb.max(), head_kb) * 1.2]))
    return fig
