"""Othello boards, probe readings, move predictions and the Othello explorer (chapter 04)."""

from __future__ import annotations

import math
from typing import Sequence

import einops
import ipywidgets as widgets
from IPython.display import display
import plotly.graph_objects as go
import plotly.io as pio
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechlearn.tasks.othello import BLACK, WHITE, OthelloTask
from mechlearn.validation import describe, is_int
from mechlearn.viz.widgets import EXPLORER_CLASS, step_button


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
        legend=dict(orientation="h", x=0.5, xanchor="center", y=0, yanchor="top", font_size=10, itemwidth=30),
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
        self.previous, self.next = step_button(self.position, "◀", -1), step_button(self.position, "▶", 1)
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
        # Three 240-px boards fit side by side beside an open file browser in a 1280-px window; narrower, they wrap.
        t, px = self.position.value, 240
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
