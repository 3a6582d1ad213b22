"""Toy models of superposition: feature geometry, interference, phase diagrams (chapter 05)."""

from __future__ import annotations

import math
from typing import Sequence

import einops
import plotly.express as px
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlearn.superposition import PHASE_NAMES, interference
from mechlearn.validation import check_finite, check_tensor, is_int


_PHASE_COLOURS = ("#c9c9c9", "#4c78a8", "#e45756")  # not represented, dedicated dimension, superposition
# The fractions of a dimension that features take in the paper's geometries, with a nudge (pixels) for labels that crowd.
_DIMENSIONALITY_GUIDES = ((1, "1 own dimension", 0), (3 / 4, "3/4 tetrahedron", 0), (2 / 3, "2/3 triangle", 0),
                          (1 / 2, "1/2 antipodal pair", 0), (2 / 5, "2/5 pentagon", 5), (3 / 8, "3/8 square antiprism", -5))


def _instance_titles(titles: Sequence[str] | None, n_instances: int) -> list[str]:
    if titles is None:
        return [f"instance {i}" for i in range(n_instances)]
    if len(titles) != n_instances:
        raise ValueError(f"titles has {len(titles)} entries but W has {n_instances} instances; give one title each.")
    return list(titles)


def plot_feature_geometry(
    W: Float[Tensor, "instance hidden feature"],
    importance: Float[Tensor, "instance feature"] | Float[Tensor, "feature"] | None = None,
    titles: Sequence[str] | None = None,
    columns: int = 4,
) -> go.Figure:
    """Each feature's direction W[:, i] in the 2-D hidden space, one square panel per instance (chapter 05).

    The signature figure of Elhage et al. (2022), "Toy Models of Superposition": a line from the
    origin to a dot per feature, coloured by its importance. Dense features show as at most two
    orthogonal lines (the rest shrunk to the origin); sparse ones as more lines than dimensions,
    e.g. a pentagon. The dotted circle has radius 1, about the length of a represented feature.
    """
    if not isinstance(W, Tensor) or W.ndim != 3 or W.shape[1] != 2:
        raise ValueError(f"plot_feature_geometry draws a ToyModel's W with n_hidden = 2, shape [instance, 2, feature], "
                         f"got shape {tuple(getattr(W, 'shape', ()))}; plot_interference works for any n_hidden.")
    check_finite(W, "W")
    if not is_int(columns) or columns < 1:
        raise ValueError(f"columns must be a positive int, got {columns!r}.")
    n_instances, _, n_features = W.shape
    W = W.detach().cpu().float()
    titles = _instance_titles(titles, n_instances)
    if importance is not None:
        importance = importance.detach().cpu().float()
        if importance.shape not in ((n_features,), (n_instances, n_features)):
            raise ValueError(f"importance has shape {tuple(importance.shape)}; it needs shape [feature] = ({n_features},) "
                             f"or [instance feature] = {(n_instances, n_features)}.")
        importance = importance.expand(n_instances, n_features)
        low, high = importance.min().item(), importance.max().item()
        scaled = (importance - low) / max(high - low, 1e-12)
    columns = min(columns, n_instances)
    rows = math.ceil(n_instances / columns)
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=titles, horizontal_spacing=0.04, vertical_spacing=0.12)
    reach = max(1.2, 1.1 * torch.linalg.vector_norm(W, dim=1).max().item())
    for instance in range(n_instances):
        row, col = instance // columns + 1, instance % columns + 1
        x, y = W[instance].tolist()
        colours = (sample_colorscale("Viridis", scaled[instance].tolist()) if importance is not None
                   else ["#1f77b4"] * n_features)
        hover = [f"{titles[instance]}, feature {i}: ({x[i]:.2f}, {y[i]:.2f}), length {math.hypot(x[i], y[i]):.2f}"
                 + (f", importance {importance[instance, i]:.3g}" if importance is not None else "")
                 for i in range(n_features)]
        for i in range(n_features):
            figure.add_trace(go.Scatter(x=[0, x[i]], y=[0, y[i]], mode="lines", line=dict(color=colours[i], width=2),
                                        hoverinfo="skip", showlegend=False), row=row, col=col)
        marker = dict(size=8, color=colours)
        if importance is not None:  # the dots share a colour axis, which draws the colour bar for the lines too
            marker.update(color=importance[instance].tolist(), coloraxis="coloraxis")
        figure.add_trace(go.Scatter(x=x, y=y, mode="markers", marker=marker, text=hover, hoverinfo="text",
                                    name=titles[instance], showlegend=False), row=row, col=col)
        # The unit circle: a represented feature reaches about to it.
        figure.add_shape(type="circle", x0=-1, y0=-1, x1=1, y1=1, line=dict(color="#dddddd", width=1, dash="dot"),
                         layer="below", row=row, col=col)
    panel = 200
    figure.update_layout(template="plotly_white", width=panel * columns + (120 if importance is not None else 40),
                         height=panel * rows + 60, margin=dict(l=20, r=20, t=50, b=20))
    if importance is not None:
        figure.update_layout(coloraxis=dict(colorscale="Viridis", cmin=low, cmax=high,
                                            colorbar=dict(title="importance", thickness=12)))
    axis = dict(range=[-reach, reach], showticklabels=False, zeroline=True, zerolinecolor="#bbbbbb", showgrid=False,
                fixedrange=True)
    figure.update_xaxes(axis)
    figure.update_yaxes(axis)
    for instance in range(n_instances):  # every panel square: each y axis follows its own x axis
        suffix = "" if instance == 0 else str(instance + 1)
        figure.layout[f"yaxis{suffix}"].update(scaleanchor=f"x{suffix}", scaleratio=1)
    return figure


def plot_interference(W: Float[Tensor, "instance hidden feature"], titles: Sequence[str] | None = None) -> go.Figure:
    """W^T W for every instance side by side, blue positive and red negative, white at 0 (chapter 05).

    The diagonal is each feature's squared length (about 1 when represented, 0 when dropped); an
    off-diagonal entry is the interference between two features. Dense features give a few ones
    on the diagonal and zeros elsewhere; superposition shows as off-diagonal colour.
    """
    gram = interference(W).cpu().float()
    titles = _instance_titles(titles, W.shape[0])
    limit = max(gram.abs().max().item(), 1e-6)
    columns = min(len(titles), 4)
    rows = math.ceil(len(titles) / columns)
    figure = px.imshow(gram.numpy(), facet_col=0, facet_col_wrap=columns, facet_row_spacing=0.3 / rows,
                       color_continuous_scale="RdBu", zmin=-limit, zmax=limit,
                       labels={"x": "feature j", "y": "feature i", "color": "WᵀW"}, title="Interference WᵀW")
    figure.for_each_annotation(lambda a: a.update(text=titles[int(a.text.split("=")[-1])]))
    return figure.update_layout(template="plotly_white", width=180 * columns + 160, height=200 * rows + 120)


def _log_edges(centres: Tensor) -> list[float]:
    """Cell edges halfway (in log space) between log-spaced centres, so heatmap cells fill a log axis evenly."""
    logs = centres.log10()
    if len(logs) == 1:
        return (10 ** torch.stack([logs - 0.5, logs + 0.5]).flatten()).tolist()
    middles = (logs[1:] + logs[:-1]) / 2
    edges = torch.cat([2 * logs[:1] - middles[:1], middles, 2 * logs[-1:] - middles[-1:]])
    return (10**edges).tolist()


def plot_phase_diagram(
    classes: Int[Tensor, "r d"], relative_importance: Float[Tensor, "r"], feature_density: Float[Tensor, "d"]
) -> go.Figure:
    """What a model of 2 features in 1 dimension does with feature 1, at each importance and density (chapter 05).

    Elhage et al. (2022), "Superposition as a Phase Change": `classes` index `PHASE_NAMES`
    (as `mechlearn.superposition.phase_diagram` returns them). Dense features (right): feature 1 is
    dropped when it matters less than feature 0 and takes the dimension when it matters more.
    Sparse features (left): both share the dimension in superposition.
    """
    check_tensor(classes, "classes", 2, floating=False)
    for name, values in (("relative_importance", relative_importance), ("feature_density", feature_density)):
        check_tensor(values, name, 1, floating=True)
        if not (values > 0).all() or not torch.isfinite(values).all():
            raise ValueError(f"{name} must be positive and finite, for its log axis.")
    if classes.shape != (len(relative_importance), len(feature_density)):
        raise ValueError(f"classes has shape {tuple(classes.shape)} but needs one row per relative importance and one "
                         f"column per density: {(len(relative_importance), len(feature_density))}.")
    classes = classes.detach().cpu()
    if classes.numel() and (classes.min() < 0 or classes.max() >= len(PHASE_NAMES)):
        raise ValueError(f"classes must be indices into PHASE_NAMES (0 to {len(PHASE_NAMES) - 1}), as phase_diagram returns.")
    importance, density = relative_importance.detach().cpu().float(), feature_density.detach().cpu().float()
    hover = [[f"density {d:.3g}, relative importance {r:.3g}: {PHASE_NAMES[c]}"
              for d, c in zip(density.tolist(), row)] for r, row in zip(importance.tolist(), classes.tolist())]
    n = len(PHASE_NAMES)
    # A stepped colour scale: class k fills [k / n, (k + 1) / n] with its own colour.
    scale = [[fraction, colour] for k, colour in enumerate(_PHASE_COLOURS) for fraction in (k / n, (k + 1) / n)]
    heatmap = go.Heatmap(z=classes.tolist(), x=_log_edges(density), y=_log_edges(importance), zmin=-0.5, zmax=n - 0.5,
                         colorscale=scale, showscale=False, text=hover, hoverinfo="text", xgap=1, ygap=1)
    # Heatmaps have no legend entries, so each phase gets an empty scatter trace that shows one.
    legend = [go.Scatter(x=[None], y=[None], mode="markers", name=name, marker=dict(symbol="square", size=14, color=colour))
              for name, colour in zip(PHASE_NAMES, _PHASE_COLOURS)]
    figure = go.Figure([heatmap, *legend])
    figure.update_layout(template="plotly_white", width=620, height=460, title="2 features in 1 dimension",
                         legend=dict(title="feature 1 is"))
    figure.update_xaxes(type="log", title="feature density", dtick=1, showgrid=False)
    return figure.update_yaxes(type="log", title="relative importance of feature 1", dtick=1, showgrid=False)


def plot_feature_dimensionality(
    dimensionality: Float[Tensor, "instance feature"], feature_density: Float[Tensor, "instance"]
) -> go.Figure:
    """Each feature's dimensionality against 1 / density, one column of dots per instance (chapter 05).

    Elhage et al. (2022), "Feature Dimensionality": as features get sparser they pack tighter,
    and rather than spreading evenly the dimensionalities stick to the fractions of a few
    geometries, drawn as dotted lines: 1 (a dimension of its own), 3/4 (tetrahedron), 2/3
    (triangle), 1/2 (antipodal pair), 2/5 (pentagon), 3/8 (square antiprism). Features the
    model drops sit near 0.
    """
    check_tensor(dimensionality, "dimensionality", 2, floating=True)
    check_finite(dimensionality, "dimensionality")
    n_instances, n_features = dimensionality.shape
    if feature_density.shape != (n_instances,):
        raise ValueError(f"feature_density has shape {tuple(feature_density.shape)}; it needs one density per instance, "
                         f"shape ({n_instances},).")
    density = feature_density.detach().cpu().float()
    if not ((density > 0) & (density <= 1)).all():
        raise ValueError("feature_density must lie in (0, 1]: the probability that each feature is present.")
    dimensionality = dimensionality.detach().cpu().float()
    x = einops.repeat(1 / density, "instance -> (instance feature)", feature=n_features)
    hover = [f"instance {i}, feature {f}: D = {dimensionality[i, f]:.3f}, density {density[i]:.3g}"
             for i in range(n_instances) for f in range(n_features)]
    figure = go.Figure(go.Scatter(x=x.tolist(), y=dimensionality.flatten().tolist(), mode="markers", text=hover,
                                  hoverinfo="text", marker=dict(size=7, color="#1f77b4", opacity=0.6), name="features"))
    for value, label, nudge in _DIMENSIONALITY_GUIDES:
        figure.add_hline(y=value, line=dict(dash="dot", color="grey", width=1), annotation_text=label,
                         annotation_position="right", annotation_yshift=nudge, annotation_font_size=11)
    figure.update_layout(template="plotly_white", width=760, height=440, title="Feature dimensionality",
                         margin=dict(r=150), showlegend=False)
    figure.update_xaxes(type="log", title="1 / feature density", dtick=1)
    return figure.update_yaxes(title="dimensionality", range=[-0.05, 1.1])
