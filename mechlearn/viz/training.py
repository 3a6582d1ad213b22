"""Training curves (chapter 01)."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

from mechlearn.validation import describe


def plot_training_history(
    history: list[dict[str, float]],
    metrics: Sequence[str] = ("train_loss", "eval_loss"),
    title: str = "Training",
    log_y: bool = True,
) -> go.Figure:
    """Curves of `metrics` against the step, from the records `mechlearn.train.train` returns.

    A log scale (the default) shows both the first fast drop and the slow tail of a loss.
    """
    if not isinstance(history, list) or not all(isinstance(record, dict) for record in history):
        raise TypeError(f"history must be a list of records (dicts), as mechlearn.train.train returns, got {describe(history)}.")
    if not history:
        raise ValueError("history is empty: train for at least one eval step (TrainConfig.eval_every).")
    missing = [m for m in metrics if m not in history[0]]
    if missing:
        raise KeyError(f"history has no {missing}; it has {sorted(history[0])}.")
    steps = [record["step"] for record in history]
    figure = go.Figure([go.Scatter(x=steps, y=[r[m] for r in history], name=m, mode="lines") for m in metrics])
    figure.update_layout(title=title, xaxis_title="step", yaxis_title=", ".join(metrics), template="plotly_white")
    return figure.update_yaxes(type="log" if log_y else "linear")
