"""Sparse autoencoders: dictionary sweeps, per-cell values and the feature browser (chapter 06)."""

from __future__ import annotations

import html
import itertools
from typing import Sequence

import ipywidgets as widgets
from IPython.display import display
import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechlearn.tasks.othello import BLACK, WHITE
from mechlearn.validation import check_finite, describe, is_int
from mechlearn.viz.othello import (
    _DEFAULT_PX,
    _PLAYER_NAMES,
    _board_figure,
    _board_side,
    _cell_heatmap,
    _cell_names,
    _check_size,
    plot_board,
)
from mechlearn.viz.widgets import EXPLORER_CLASS, step_button


_HISTOGRAM_BINS = 40
_SMALL_BOARD_PX = 200


def plot_cell_values(
    values: Float[Tensor, "cell"],
    title: str = "",
    size: int | None = None,
    colorscale: str = "RdBu",
    zmid: float | None = 0.0,
    zmin: float | None = None,
    zmax: float | None = None,
    colorbar_title: str = "",
) -> go.Figure:
    """One number per cell as a heatmap on the board, e.g. a latent's effect on each move's logit (chapter 06).

    With `zmid` (default 0) the colour range is symmetric around it, reaching the value farthest
    from it, so a diverging scale shows zmid as white: with "RdBu", blue cells are raised and red
    ones lowered. With `zmid=None` the range runs from the smallest value to the largest, for a
    sequential scale (e.g. each cell's best F1 with colorscale="Viridis", zmin=0, zmax=1).
    A `zmin` or `zmax` you pass replaces the one computed.
    """
    _check_size(size)
    side = _board_side(values, "values")
    values = values.detach().cpu().float()
    if not values.isfinite().all():
        raise ValueError("values must be finite: replace NaN and inf (e.g. with torch.nan_to_num) before plotting.")
    if zmid is None:
        low, high = values.min().item(), values.max().item()
    else:  # the floor keeps a colour range when every value equals zmid
        reach = max((values - zmid).abs().max().item(), 1e-6)
        low, high = zmid - reach, zmid + reach
    low, high = low if zmin is None else zmin, high if zmax is None else zmax
    if low > high:
        raise ValueError(f"the colour range runs from zmin={low:.3g} to zmax={high:.3g}: pass zmin below zmax.")
    hover = [f"{name}: {value:.3g}" for name, value in zip(_cell_names(side), values.tolist())]
    heatmap = _cell_heatmap(values, side, hover, colorbar_title, colorscale=colorscale, zmin=low, zmax=high)
    return _board_figure([heatmap], side, title, size or _DEFAULT_PX, colorbar=True)


def plot_dictionary_size_sweep(
    sizes: Sequence[int], series: dict[str, Sequence[float]], n_true: int, title: str = "Dictionary size sweep"
) -> go.Figure:
    """How SAE latents match known features as the dictionary grows, one line per series (chapter 06).

    For SAEs trained on `SparseFeatureData` with `n_true` features at each dictionary size d_sae in
    `sizes`: e.g. MMCS (Sharkey et al. 2022, Figure 3), the fraction of true features split over two
    or more latents (feature splitting; Bricken et al. 2023, "Feature Splitting") and the fraction
    of latents that merge two or more features. The dashed line marks n_true: a smaller dictionary
    cannot give every feature a latent of its own, so features must merge.
    """
    sizes = list(sizes)
    if not sizes or not all(is_int(s) and s > 0 for s in sizes) or sorted(set(sizes)) != sizes:
        raise ValueError(f"sizes must be increasing positive integers (the dictionary sizes d_sae), got {sizes}.")
    if not series or any(len(values) != len(sizes) for values in series.values()):
        raise ValueError(f"series must map each name to one value per size ({len(sizes)} values), got lengths "
                         f"{[len(values) for values in series.values()]}.")
    if any(not 0 <= value <= 1 for values in series.values() for value in values):
        raise ValueError("series values must be fractions in [0, 1], such as MMCS or a share of features or latents.")
    if not is_int(n_true) or n_true <= 0:
        raise ValueError(f"n_true must be a positive integer, the number of true features, got {n_true!r}.")
    figure = go.Figure([go.Scatter(x=sizes, y=list(values), name=name, mode="lines+markers",
                                   hovertemplate=f"d_sae %{{x}}: {name} %{{y:.3f}}<extra></extra>")
                        for name, values in series.items()])
    # A line trace, not add_vline: it stays in data coordinates on the log axis and labels itself in the legend.
    figure.add_trace(go.Scatter(x=[n_true, n_true], y=[0, 1], name="n true features", mode="lines",
                                line=dict(dash="dash", color="grey"),
                                hovertemplate=f"{n_true} true features<extra></extra>"))
    figure.update_layout(title=title, template="plotly_white", width=680, height=400, yaxis_title="fraction")
    # A log axis with a tick at each size: doubling sizes sit evenly spaced, as on a log2 axis.
    figure.update_xaxes(type="log", tickvals=sizes, ticktext=[str(s) for s in sizes], title="dictionary size d_sae")
    return figure.update_yaxes(range=[0, 1.02])


def _check_shape(name: str, value: object, shape: tuple[int, ...], meaning: str) -> None:
    if not isinstance(value, Tensor) or tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} ({meaning}), got {describe(value)}.")


def _activation_histogram(activations: Float[Tensor, "n_active"], highest: float) -> go.Figure:
    """Counts of one latent's non-zero activations, binned on its own device so only the counts travel."""
    width = max(highest, 1e-6) / _HISTOGRAM_BINS
    counts = torch.histc(activations.float(), bins=_HISTOGRAM_BINS, min=0, max=width * _HISTOGRAM_BINS).cpu()
    bars = go.Bar(x=((torch.arange(_HISTOGRAM_BINS) + 0.5) * width).tolist(), y=counts.tolist(), width=width,
                  marker_color="#4c78a8", hovertemplate="act %{x:.3g}: %{y} positions<extra></extra>")
    return go.Figure(bars, layout=dict(
        # As on the boards: the title sits just above the plot, below the modebar at the top right.
        title=dict(text=f"{len(activations):,} non-zero activations", x=0, xref="paper", y=1, yref="paper",
                   yanchor="bottom", pad=dict(b=12), font_size=14),
        template="plotly_white", width=320, height=300, margin=dict(l=50, r=10, t=70, b=40), bargap=0,
        xaxis_title="activation",
        yaxis=dict(type="log", title="positions", dtick=1),  # one label a decade: 2 and 5 crowd at this height
    ))


class FeatureBrowser(widgets.VBox):
    """Browse the latents of an SAE trained on the Othello model's residual stream (chapter 06).

    Takes precomputed tensors, so browsing never runs a model. For n positions: `boards` and
    `legal` (`states.boards` and `states.legal`, flattened to [n cell]), `latents` (the SAE's
    activations there, `sae.encode(resid)`), and per latent its `logit_effect` on each move
    (e.g. its decoder row times the unembedding of the cells). `players` (1 black, -1 white,
    0 game over) names who is to move on each board; `descriptions` give each latent a line,
    such as its best-matching board feature.

    For the latent picked it shows how often and how strongly it fires, the histogram of its
    non-zero activations, its logit effect on the board, and the `n_top` positions where it
    fires most (as in Bricken et al. 2023, "Towards Monosemanticity", the feature browser).
    """

    def __init__(
        self,
        boards: Int[Tensor, "n cell"],
        legal: Bool[Tensor, "n cell"],
        latents: Float[Tensor, "n d_sae"],
        logit_effect: Float[Tensor, "d_sae cell"],
        players: Int[Tensor, "n"] | None = None,
        descriptions: Sequence[str] | None = None,
        n_top: int = 6,
        latent: int = 0,
    ):
        if not isinstance(boards, Tensor) or boards.ndim != 2:
            raise ValueError(f"boards must be a [n cell] tensor (states.boards flattened over row and col), "
                             f"got {describe(boards)}.")
        _board_side(boards[0], "each board")
        n, n_cells = boards.shape
        if not isinstance(latents, Tensor) or latents.ndim != 2 or len(latents) != n:
            raise ValueError(f"latents must have shape [n d_sae] with n = {n}, one row per board, "
                             f"got {describe(latents)}.")
        d_sae = latents.shape[1]
        _check_shape("legal", legal, (n, n_cells), "one row of legal moves per board")
        _check_shape("logit_effect", logit_effect, (d_sae, n_cells), "per latent, its effect on each move's logit")
        if players is not None:
            _check_shape("players", players, (n,), "the player to move at each board")
            if not set(players.unique().tolist()) <= {BLACK, WHITE, 0}:
                raise ValueError("players must hold 1 (black), -1 (white) or 0 (game over), as GameStates.players "
                                 "does.")
        if descriptions is not None and len(descriptions) != d_sae:
            raise ValueError(f"descriptions has {len(descriptions)} lines but there are {d_sae} latents; "
                             "give one each.")
        check_finite(latents, "latents")
        if latents.min() < 0:
            raise ValueError("latents must be non-negative, as an SAE's activations after its ReLU are.")
        if not is_int(n_top) or n_top <= 0:
            raise ValueError(f"n_top must be a positive integer, the number of top positions to draw, got {n_top!r}.")
        if not is_int(latent) or not 0 <= latent < d_sae:
            raise ValueError(f"latent must be an index in [0, {d_sae}), got {latent!r}.")
        self.boards, self.legal, self.latents, self.logit_effect = boards, legal, latents, logit_effect
        self.players, self.descriptions, self.n_top = players, descriptions, n_top
        # One pass over all latents now, so a redraw reads two numbers instead of scanning n positions.
        self.fire_fraction = (latents > 0).float().mean(dim=0).cpu()
        self.max_activation = latents.max(dim=0).values.float().cpu()
        self.latent = widgets.BoundedIntText(value=latent, min=0, max=d_sae - 1, description="latent",
                                             layout=dict(width="180px"))
        self.previous, self.next = step_button(self.latent, "◀", -1), step_button(self.latent, "▶", 1)
        self.caption = widgets.HTML()
        self.outputs = [widgets.Output() for _ in range(2 + n_top)]
        self.latent.observe(lambda _: self.redraw(), names="value")
        top_row = widgets.HBox(self.outputs[2:], layout=dict(flex_flow="row wrap"))
        super().__init__([widgets.HBox([self.previous, self.latent, self.next]), self.caption,
                          widgets.HBox(self.outputs[:2]), top_row])
        self.add_class(EXPLORER_CLASS)
        self.redraw()

    def describe(self, latent: int) -> str:
        """The caption: the latent, its description, how often it fires and how strongly."""
        description = f" · {html.escape(self.descriptions[latent])}" if self.descriptions is not None else ""
        n, fraction = len(self.latents), self.fire_fraction[latent].item()
        if fraction == 0:
            return f"<b>Latent {latent}</b>{description} · dead: it never fires on these {n:,} positions."
        return (f"<b>Latent {latent}</b>{description} · fires on {fraction:.2%} of {n:,} positions, "
                f"max activation {self.max_activation[latent].item():.3g}")

    def _board_title(self, activation: float, position: int) -> str:
        if self.players is None:
            return f"act {activation:.2f}"
        player = int(self.players[position])
        return f"act {activation:.2f} · " + (f"{_PLAYER_NAMES[player].lower()} to move" if player else "game over")

    def redraw(self) -> None:
        latent = self.latent.value
        activations = self.latents[:, latent]
        active = activations[activations > 0]
        # Only positions where the latent fires: a dead latent gets no boards.
        top = activations.topk(min(self.n_top, len(active)))
        boards = [plot_board(self.boards[p], self.legal[p], title=self._board_title(a, p), size=_SMALL_BOARD_PX)
                  .update_layout(showlegend=False)
                  for a, p in zip(top.values.tolist(), top.indices.tolist())]
        effect = plot_cell_values(self.logit_effect[latent], title="Effect on each move's logit", size=260,
                                  colorbar_title="Δ logit")
        self.figures = [_activation_histogram(active, self.max_activation[latent].item()), effect, *boards]
        self.caption.value = self.describe(latent)
        for output, figure in itertools.zip_longest(self.outputs, self.figures):
            output.clear_output(wait=figure is not None)  # wait=True would keep a stale board when none follows
            if figure is not None:
                with output:
                    display(figure)
