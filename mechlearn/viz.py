"""Plotly figures and ipywidgets explorers used across the course (first used in chapter 01)."""

from __future__ import annotations

import html
import itertools
import math
from typing import Sequence

import einops
import ipywidgets as widgets
from IPython.display import display
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache

from mechlearn.superposition import PHASE_NAMES, interference
from mechlearn.tasks.othello import BLACK, WHITE, OthelloTask
from mechlearn.validation import check_finite, check_tensor, describe, is_int


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


def plot_attention_patterns(
    patterns: Float[Tensor, "n_heads query_pos key_pos"], labels: Sequence[str], title: str = "Attention patterns"
) -> go.Figure:
    """One heatmap per head: row = the query position, column = the key it attends to."""
    check_tensor(patterns, "patterns", 3, floating=True)
    check_finite(patterns, "patterns")
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


EXPLORER_CLASS = "mechlearn-explorer"  # how the browser test finds an explorer in the page


class AttentionExplorer(widgets.VBox):
    """Pick a layer, a head and a sequence; see that head's attention pattern (chapter 03).

    Built from a cache, so exploring never re-runs the model.
    """

    def __init__(self, cache: ActivationCache, labels: Sequence[Sequence[str]]):
        n_layers = sum(1 for name in cache.keys() if name.endswith("attn.hook_pattern"))
        if n_layers == 0:
            raise ValueError("the cache holds no attention patterns; run the model with run_with_cache first.")
        batch, n_heads = cache["blocks.0.attn.hook_pattern"].shape[:2]
        if len(labels) != batch:
            raise ValueError(f"labels has {len(labels)} sequences but the cache has {batch}.")
        self.cache, self.labels = cache, labels
        self.layer = widgets.Dropdown(options=range(n_layers), description="layer")
        self.head = widgets.Dropdown(options=range(n_heads), description="head")
        self.sequence = widgets.IntSlider(min=0, max=batch - 1, description="sequence")
        self.output = widgets.Output()
        for control in (self.layer, self.head, self.sequence):
            control.observe(lambda _: self.redraw(), names="value")
        super().__init__([widgets.HBox([self.layer, self.head, self.sequence]), self.output])
        self.add_class(EXPLORER_CLASS)
        self.redraw()

    def redraw(self) -> None:
        pattern = self.cache[f"blocks.{self.layer.value}.attn.hook_pattern"][self.sequence.value, self.head.value]
        title = f"Layer {self.layer.value}, head {self.head.value}, sequence {self.sequence.value}"
        self.figure = plot_attention_patterns(pattern[None], self.labels[self.sequence.value], title=title)
        self.output.clear_output(wait=True)
        with self.output:
            display(self.figure)


# --- Othello boards (chapter 04) -------------------------------------------------------------------
# Every board figure shares one frame: a green board with grid lines, columns A.. on top, row 1 at
# the top (as `OthelloTask.cell_name` names cells), square cells, and a pixel size from which the
# disc markers are scaled so they fill their cells.

_BOARD_GREEN, _GRID_COLOUR, _DISC_OUTLINE = "#1e7b3c", "#0b3a1c", "#202020"
_MARGIN = dict(l=36, r=14, t=84, b=56)  # room for the modebar, the title, the column letters, a two-row legend
_COLORBAR_PX = 80
_DEFAULT_PX = 320
# A probe's classes 1 and 2 get disc colours only when they are colours; "mine" and "theirs" are not.
_DISC_COLOURS = {"black": "#111111", "white": "#f4f4f4"}
_OTHER_CLASS_COLOURS = ("#ff9f1c", "#4cc9f0")
_PLAYER_NAMES = {BLACK: "Black", WHITE: "White"}
# plotly_white cut down to the trace types a board draws. A figure validates its whole template when it is
# built, and the full one (defaults for every trace type) took most of a board's build time.
_WHITE = pio.templates["plotly_white"]
_BOARD_TEMPLATE = go.layout.Template(layout=_WHITE.layout, data=dict(scatter=_WHITE.data.scatter,
                                                                     heatmap=_WHITE.data.heatmap))


def _board_side(values: Tensor, name: str, per_cell: tuple[int, ...] = ()) -> int:
    """The side of the square board that `values` covers: one entry per cell, each of shape `per_cell`."""
    n_cells = values.shape[0] if values.ndim else 0
    side = math.isqrt(n_cells)
    if tuple(values.shape[1:]) != per_cell or side * side != n_cells or not 2 <= side <= 8:
        expected = ", ".join(["cell", *map(str, per_cell)])
        raise ValueError(f"{name} has shape {tuple(values.shape)}; it needs shape [{expected}], "
                         f"one entry per cell of a square board from 2 x 2 to 8 x 8.")
    return side


def _check_size(size: object) -> None:
    if size is not None and (not is_int(size) or size < 100):
        raise ValueError(f"size must be None or the figure's width in pixels, an int of at least 100, got {size!r}.")


def _check_legal(legal: Tensor, n_cells: int) -> None:
    if tuple(legal.shape) != (n_cells,):
        raise ValueError(f"legal has shape {tuple(legal.shape)} but the board has {n_cells} cells; "
                         "pass one position's states.legal[game, pos].")


def _cell_px(side: int, px: int) -> float:
    return (px - _MARGIN["l"] - _MARGIN["r"]) / side


def _cell_markers(
    cells: Int[Tensor, "n"], side: int, px: int, name: str, hover: Sequence[str],
    scale: float | Float[Tensor, "n"] = 0.84, showlegend: bool = True, **marker,
) -> go.Scatter:
    """Markers centred on `cells` (flat indices), `scale` of a cell wide (one for all, or one each)."""
    size = (torch.as_tensor(scale) * _cell_px(side, px)).tolist()
    # Opacity 1 stated, because plotly fades markers that have one size each (it takes them for bubbles).
    return go.Scatter(
        x=(cells % side).tolist(), y=(cells // side).tolist(), mode="markers", name=name, text=list(hover),
        hoverinfo="text", showlegend=showlegend, marker=dict(size=size, opacity=1, **marker),
    )


def _cell_names(side: int) -> list[str]:
    """`OthelloTask.cell_name` for every cell, for a board of any side."""
    return [f"{'ABCDEFGH'[cell % side]}{cell // side + 1}" for cell in range(side * side)]


def _board_figure(traces: list, side: int, title: str, px: int, colorbar: bool = False) -> go.Figure:
    """The traces on an Othello board: green, gridded, square, labelled like `OthelloTask.cell_name`."""
    grid = [dict(type="line", x0=k - 0.5, x1=k - 0.5, y0=-0.5, y1=side - 0.5) for k in range(side + 1)]
    grid += [dict(type="line", x0=-0.5, x1=side - 0.5, y0=k - 0.5, y1=k - 0.5) for k in range(side + 1)]
    board_px = px - _MARGIN["l"] - _MARGIN["r"]
    # constrain="domain" shrinks the plot area to the square board instead of padding it with green.
    axis = dict(tickvals=list(range(side)), showgrid=False, zeroline=False, fixedrange=True, ticks="",
                constrain="domain")
    # The whole layout in one call: every update_layout validates again, and the feature browser draws many boards.
    return go.Figure(traces, layout=dict(
        # Just above the column letters, below the modebar that plotly puts at the top right.
        title=dict(text=title, x=0, xref="paper", y=1, yref="paper", yanchor="bottom", pad=dict(b=24), font_size=14),
        width=px + (_COLORBAR_PX if colorbar else 0), height=board_px + _MARGIN["t"] + _MARGIN["b"],
        margin=dict(_MARGIN, r=_MARGIN["r"] + (_COLORBAR_PX if colorbar else 0)),
        plot_bgcolor=_BOARD_GREEN, template=_BOARD_TEMPLATE,
        shapes=[dict(line=dict(color=_GRID_COLOUR, width=2), layer="below", **line) for line in grid],
        legend=dict(orientation="h", x=0.5, xanchor="center", y=0, yanchor="top", font_size=11),
        xaxis=dict(axis, range=[-0.5, side - 0.5], ticktext=list("ABCDEFGH"[:side]), side="top"),
        yaxis=dict(axis, range=[side - 0.5, -0.5], ticktext=[str(row + 1) for row in range(side)],
                   scaleanchor="x", scaleratio=1),
    ))


def _cell_heatmap(values: Float[Tensor, "cell"], side: int, hover: Sequence[str], name: str, **colour) -> go.Heatmap:
    """`values` as the board's cells, `hover` on each, coloured as `colour` says (colorscale, zmin, zmax)."""
    return go.Heatmap(
        z=einops.rearrange(values, "(row col) -> row col", row=side).tolist(),
        hovertext=[hover[row * side:(row + 1) * side] for row in range(side)], hoverinfo="text", xgap=2, ygap=2,
        colorbar=dict(title=name, thickness=12, len=0.8), showscale=True, name=name, **colour,
    )


def plot_board(
    board: Int[Tensor, "row col"] | Int[Tensor, "cell"],
    legal: Bool[Tensor, "cell"] | None = None,
    title: str = "",
    size: int | None = None,
    last_move: int | None = None,
) -> go.Figure:
    """One Othello board as the players see it (chapter 04).

    `board` holds BLACK = 1, WHITE = -1 and EMPTY = 0 (as `OthelloTask.replay` returns it);
    `legal` marks the next player's legal moves as small hollow dots; `last_move` (a cell index)
    gets a red dot. `size` is the figure's width in pixels.
    """
    _check_size(size)
    if not isinstance(board, Tensor):
        raise TypeError(f"board must be a tensor [row col] or [cell], got {describe(board)}.")
    if board.ndim == 2 and board.shape[0] != board.shape[1]:
        raise ValueError(f"board has shape {tuple(board.shape)}; a [row col] board must be square.")
    flat = board.detach().cpu().flatten() if board.ndim == 2 else board.detach().cpu()
    side = _board_side(flat, "board")
    if not torch.isin(flat, torch.tensor([BLACK, WHITE, 0])).all():
        raise ValueError("board must hold only 1 (black), -1 (white) and 0 (empty), as OthelloTask.replay gives it.")
    px, names = size or _DEFAULT_PX, _cell_names(side)
    traces = []
    for colour, name in ((BLACK, "black"), (WHITE, "white")):
        cells = (flat == colour).nonzero()[:, 0]
        traces.append(_cell_markers(cells, side, px, name, [f"{names[c]}: {name}" for c in cells],
                                   color=_DISC_COLOURS[name], line=dict(color=_DISC_OUTLINE, width=1.5)))
    if legal is not None:
        _check_legal(legal, flat.numel())
        cells = legal.detach().cpu().nonzero()[:, 0]
        traces.append(_cell_markers(cells, side, px, "legal move", [f"{names[c]}: legal" for c in cells], scale=0.3,
                                   symbol="circle-open", color="#d9d9d9", line=dict(width=2)))
    if last_move is not None:
        if not is_int(last_move) or not 0 <= last_move < side * side:
            raise ValueError(f"last_move must be a cell index in [0, {side * side}), got {last_move}.")
        hover = [f"{names[last_move]}: last move"]
        last = _cell_markers(torch.tensor([last_move]), side, px, "last move", hover, scale=0.22, color="#e8322b")
        traces.append(last)
    return _board_figure(traces, side, title, px)


def plot_probe_reading(
    probabilities: Float[Tensor, "cell n_classes"],
    class_names: tuple[str, str, str],
    title: str = "",
    size: int | None = None,
) -> go.Figure:
    """What a 3-way per-cell probe believes about the board (chapter 04).

    How to read it: each cell shows the probe's most likely class. Class 0 (empty) leaves the
    cell bare green; classes 1 and 2 are discs, black and white when the classes are named
    "black" and "white", orange and cyan otherwise (e.g. "mine" and "theirs", whose colours
    change with the player to move). A disc's width is the probability of its class: a full disc
    is certain, a small one (down to a third of a cell, a guess) unsure. Hover over any cell
    for all three probabilities.
    """
    if len(class_names) != 3:
        raise ValueError(f"class_names must name 3 classes (empty, then the two sides), got {len(class_names)}.")
    _check_size(size)
    side = _board_side(probabilities, "probabilities", per_cell=(3,))
    probabilities = probabilities.detach().cpu().float()
    if not ((probabilities >= 0) & (probabilities <= 1)).all():  # NaN fails too
        raise ValueError("probabilities must lie in [0, 1]: softmax the probe's logits over the classes first.")
    px, names = size or _DEFAULT_PX, _cell_names(side)
    confidence, reading = probabilities.max(dim=-1)
    hover = ["<br>".join([names[c], *(f"{n} {p:.2f}" for n, p in zip(class_names, probabilities[c].tolist()))])
             for c in range(side * side)]
    sides = zip(class_names[1:], _OTHER_CLASS_COLOURS)
    colours = ["rgba(0,0,0,0)", *(_DISC_COLOURS.get(name, other) for name, other in sides)]
    traces = []
    for k, (name, colour) in enumerate(zip(class_names, colours)):
        cells = (reading == k).nonzero()[:, 0]
        # Size, not opacity, carries confidence: faded discs on green read as new colours.
        # Empty cells get an invisible full-cell marker so they still answer to hover.
        scale = 0.84 * confidence[cells] if k else 0.84
        outline = dict(color=_DISC_OUTLINE if k else "rgba(0,0,0,0)", width=1.5)
        traces.append(_cell_markers(cells, side, px, name, [hover[c] for c in cells], scale=scale, color=colour,
                                   showlegend=k > 0, line=outline))
    return _board_figure(traces, side, title, px)


def plot_move_predictions(
    probabilities: Float[Tensor, "cell"], legal: Bool[Tensor, "cell"], title: str = "", size: int | None = None
) -> go.Figure:
    """The model's next-move distribution as a heatmap on the board, legal cells outlined (chapter 04).

    A dark cell without an outline is a confident illegal move; an outlined pale cell is a legal
    move the model missed. The colour scale runs from 0 to the largest probability.
    """
    _check_size(size)
    side = _board_side(probabilities, "probabilities")
    _check_legal(legal, side * side)
    probabilities, legal = probabilities.detach().cpu().float(), legal.detach().cpu()
    if not ((probabilities >= 0) & (probabilities <= 1)).all():  # NaN fails too
        raise ValueError("probabilities must lie in [0, 1]: softmax the logits over the vocabulary and keep the cells.")
    px, names = size or _DEFAULT_PX, _cell_names(side)
    hover = [f"{name}: P = {p:.3f}, {'legal' if ok else 'illegal'}"
             for name, p, ok in zip(names, probabilities.tolist(), legal.tolist())]
    heatmap = _cell_heatmap(probabilities, side, hover, "P(move)", colorscale="Blues", zmin=0,
                            zmax=max(probabilities.max().item(), 1e-6))
    cells = legal.nonzero()[:, 0]
    outlines = _cell_markers(cells, side, px, "legal move", [hover[c] for c in cells], scale=0.9,
                             symbol="square-open", color="#ff7f0e", line=dict(width=3))
    return _board_figure([heatmap, outlines], side, title, px, colorbar=True)


def plot_probe_accuracy_by_layer(
    accuracies: dict[str, Sequence[float]], baseline: float | None = None, title: str = "Probe accuracy by layer"
) -> go.Figure:
    """Probe accuracy at each point of the residual stream, one line per series (chapter 04).

    Index l of every series is the residual stream after l blocks: 0 is the embedding, then
    "after block 0", and so on. `baseline` (e.g. always guessing the majority class) is drawn dashed.
    """
    if not accuracies:
        raise ValueError("accuracies is empty: pass {series name: one accuracy per layer, embedding first}.")
    lengths = {len(values) for values in accuracies.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"every series in accuracies must have one value per layer plus the embedding (n_layers + 1), "
                         f"all the same length; got lengths {sorted(lengths)}.")
    if any(not 0 <= a <= 1 for values in accuracies.values() for a in values):
        raise ValueError("accuracies must be fractions in [0, 1], not percentages.")
    if baseline is not None and not (isinstance(baseline, (int, float)) and 0 <= baseline <= 1):
        raise ValueError(f"baseline must be None or a fraction in [0, 1], got {baseline!r}.")
    layers = list(range(lengths.pop()))
    figure = go.Figure([go.Scatter(x=layers, y=list(values), name=name, mode="lines+markers")
                        for name, values in accuracies.items()])
    if baseline is not None:
        figure.add_trace(go.Scatter(x=[layers[0], layers[-1]], y=[baseline, baseline], name="majority-class baseline",
                                    mode="lines", line=dict(dash="dash", color="grey")))
    figure.update_layout(title=title, template="plotly_white", width=640, height=380, yaxis_title="accuracy")
    figure.update_xaxes(tickvals=layers, ticktext=["embed", *(f"after block {l}" for l in layers[:-1])])
    return figure.update_yaxes(range=[0, 1.02])


def _step_button(control: widgets.ValueWidget, label: str, step: int) -> widgets.Button:
    """A button that moves a bounded integer control by `step`; the control clamps, so either end stays put."""
    button = widgets.Button(description=label, layout=dict(width="40px"))
    button.on_click(lambda _: setattr(control, "value", control.value + step))
    return button


class OthelloExplorer(widgets.VBox):
    """Step through one game: the true board, the probe's reading and the model's move predictions (chapter 04).

    Takes precomputed probabilities, so it never runs a model: `move_probabilities` is the
    softmax over the vocabulary sliced to the cells (`logits.softmax(-1)[0, :, :task.n_cells]`),
    `probe_probabilities` the probe's softmax at every position (omit it to show two boards).
    Position t is the board after t moves, and the model's prediction there is for move t + 1.
    """

    def __init__(
        self,
        task: OthelloTask,
        tokens: Int[Tensor, "pos"],
        move_probabilities: Float[Tensor, "pos cell"],
        probe_probabilities: Float[Tensor, "pos cell n_classes"] | None = None,
        class_names: tuple[str, str, str] = ("empty", "mine", "theirs"),
    ):
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be one game, a [pos] tensor (index the batch); got {tuple(tokens.shape)}.")
        n_pos, n_cells = tokens.shape[0], task.n_cells
        if tuple(move_probabilities.shape) != (n_pos, n_cells):
            raise ValueError(f"move_probabilities has shape {tuple(move_probabilities.shape)} but the game needs "
                             f"{(n_pos, n_cells)}: one distribution over the {n_cells} cells per position.")
        if len(class_names) != 3:
            raise ValueError(f"class_names must name 3 classes (empty, then the two sides), got {len(class_names)}.")
        if probe_probabilities is not None and tuple(probe_probabilities.shape) != (n_pos, n_cells, 3):
            raise ValueError(f"probe_probabilities has shape {tuple(probe_probabilities.shape)} "
                             f"but the game needs {(n_pos, n_cells, 3)}.")
        self.task, self.tokens, self.class_names = task, tokens.cpu(), class_names
        self.move_probabilities, self.probe_probabilities = move_probabilities, probe_probabilities
        self.states = task.replay(self.tokens[None])
        n_moves = int((self.tokens < n_cells).sum())
        self.position = widgets.IntSlider(min=0, max=n_moves, description="position")
        self.previous, self.next = _step_button(self.position, "◀", -1), _step_button(self.position, "▶", 1)
        self.caption = widgets.HTML()
        self.outputs = [widgets.Output() for _ in range(2 if probe_probabilities is None else 3)]
        self.position.observe(lambda _: self.redraw(), names="value")
        controls = widgets.HBox([self.previous, self.position, self.next])
        # The boards wrap onto a second row where the notebook is narrower than all three.
        super().__init__([controls, self.caption, widgets.HBox(self.outputs, layout=dict(flex_flow="row wrap"))])
        self.add_class(EXPLORER_CLASS)
        self.redraw()

    def describe(self, position: int) -> str:
        """The move just played, who moves next and how many legal moves they have."""
        colour, players = _PLAYER_NAMES, self.states.players[0]
        line = "Start"
        if position > 0:
            move = self.task.cell_name(self.tokens[position])
            line = f"Move {position}: {colour[int(players[position - 1])]} played {move}"
        player = int(players[position])
        if player == 0:
            board = self.states.boards[0, position]
            return f"{line}. Game over: black {int((board == BLACK).sum())}, white {int((board == WHITE).sum())}."
        passed = f" ({colour[-player]} has no move and passes)" if self.states.passed[0, position] else ""
        return f"{line}. {colour[player]} to move{passed}, {int(self.states.legal[0, position].sum())} legal moves."

    def redraw(self) -> None:
        t, px = self.position.value, 300  # three boards side by side fit a notebook
        legal = self.states.legal[0, t]
        last_move = int(self.tokens[t]) if t > 0 else None
        self.figures = [plot_board(self.states.boards[0, t], legal, title="True board", size=px, last_move=last_move)]
        if self.probe_probabilities is not None:
            # "mine" is the player to move (black once the game is over, as in GameStates.cell_classes).
            mine = _PLAYER_NAMES[int(self.states.players[0, t]) or BLACK]
            title = f"Probe's reading (mine = {mine})" if "mine" in self.class_names else "Probe's reading"
            self.figures.append(plot_probe_reading(self.probe_probabilities[t], self.class_names, title, size=px))
        predictions = plot_move_predictions(self.move_probabilities[t], legal, title="Predicted next move", size=px)
        self.figures.append(predictions)
        self.caption.value = f"<b>{self.describe(t)}</b>"
        for output, figure in zip(self.outputs, self.figures):
            output.clear_output(wait=True)
            with output:
                display(figure)


# --- Toy models of superposition (chapter 05) ------------------------------------------------------

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


# --- Sparse autoencoders (chapter 06) --------------------------------------------------------------

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
        self.previous, self.next = _step_button(self.latent, "◀", -1), _step_button(self.latent, "▶", 1)
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
