"""Plotly figures used across the course (first used in chapter 01)."""

from __future__ import annotations

from typing import Sequence

import plotly.express as px
import plotly.graph_objects as go
from jaxtyping import Float
from torch import Tensor


def plot_training_history(
    history: list[dict[str, float]],
    metrics: Sequence[str] = ("train_loss", "eval_loss"),
    title: str = "Training",
    log_y: bool = True,
) -> go.Figure:
    """Curves of `metrics` against the step, from the records `mechlearn.train.train` returns.

    A log scale (the default) shows both the first fast drop and the slow tail of a loss.
    """
    if not history:
        raise ValueError("history is empty: train for at least one eval step (TrainConfig.eval_every).")
    missing = [m for m in metrics if m not in history[0]]
    if missing:
        raise KeyError(f"history has no {missing}; it has {sorted(history[0])}.")
    steps = [record["step"] for record in history]
    figure = go.Figure([go.Scatter(x=steps, y=[r[m] for r in history], name=m, mode="lines") for m in metrics])
    figure.update_layout(title=title, xaxis_title="step", yaxis_title=", ".join(metrics), template="plotly_white")
    return figure.update_yaxes(type="log" if log_y else "linear")


def plot_attention_patterns(
    patterns: Float[Tensor, "n_heads query_pos key_pos"], labels: Sequence[str], title: str = "Attention patterns"
) -> go.Figure:
    """One heatmap per head: row = the query position, column = the key it attends to."""
    n_heads, n_query, n_key = patterns.shape
    if len(labels) != n_key:
        raise ValueError(f"labels has {len(labels)} entries but the patterns have {n_key} key positions.")
    ticks = [f"{i}:{label}" for i, label in enumerate(labels)]
    figure = px.imshow(
        patterns.detach().cpu().numpy(),
        facet_col=0,
        facet_col_wrap=min(n_heads, 4),
        x=ticks,
        y=ticks[:n_query],
        color_continuous_scale="Blues",
        zmin=0,
        zmax=1,
        labels={"x": "key", "y": "query", "color": "attention"},
        title=title,
    )
    figure.for_each_annotation(lambda a: a.update(text=f"head {a.text.split('=')[-1]}"))
    return figure
