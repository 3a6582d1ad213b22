"""Figures and explorers build without a browser and show the data they were given."""

import re

import numpy as np
import pytest
import torch
from bad_inputs import raises_one_sentence

from mechlearn import zoo
from mechlearn.tasks import OthelloTask, SortingTask
from mechlearn.tasks.othello import CLASS_NAMES
from mechlearn.viz import (
    AttentionExplorer,
    OthelloExplorer,
    plot_attention_patterns,
    plot_board,
    plot_move_predictions,
    plot_probe_accuracy_by_layer,
    plot_probe_reading,
    plot_training_history,
)

HISTORY = [{"step": 10, "train_loss": 2.0, "eval_loss": 2.1}, {"step": 20, "train_loss": 0.5, "eval_loss": 0.6}]


def test_training_history_plots_each_metric_on_a_log_scale() -> None:
    figure = plot_training_history(HISTORY)
    assert [trace.name for trace in figure.data] == ["train_loss", "eval_loss"]
    assert list(figure.data[1].y) == [2.1, 0.6]
    assert figure.layout.yaxis.type == "log"
    assert plot_training_history(HISTORY, log_y=False).layout.yaxis.type == "linear"


@pytest.mark.bad_input
def test_training_history_names_what_is_missing() -> None:
    with pytest.raises(KeyError, match="accuracy"):
        plot_training_history(HISTORY, metrics=("accuracy",))
    with pytest.raises(ValueError, match="history is empty"):
        plot_training_history([])


@pytest.mark.bad_input
def test_attention_patterns_need_one_label_per_key() -> None:
    with pytest.raises(ValueError, match="labels has 2 entries"):
        plot_attention_patterns(torch.rand(2, 3, 3), ["a", "b"])


@pytest.fixture(scope="module")
def sorter_cache():
    task = SortingTask()
    tokens = task.sample(3, torch.Generator().manual_seed(0))
    _, cache = zoo.load("sort-digits-2l").run_with_cache(tokens)
    labels = [["BOS", *task.decode(sequence[1:]).split()] for sequence in tokens]
    return cache, labels


def test_attention_explorer_follows_its_controls(sorter_cache) -> None:
    cache, labels = sorter_cache
    explorer = AttentionExplorer(cache, labels)
    assert np.allclose(explorer.figure.data[0].z, cache["blocks.0.attn.hook_pattern"][0, 0].numpy())
    explorer.layer.value, explorer.head.value, explorer.sequence.value = 1, 2, 2
    assert np.allclose(explorer.figure.data[0].z, cache["blocks.1.attn.hook_pattern"][2, 2].numpy())
    assert explorer.figure.layout.title.text == "Layer 1, head 2, sequence 2"
    assert [a.text for a in explorer.figure.layout.annotations] == ["head 2"]  # the panel names the head shown


@pytest.mark.bad_input
def test_attention_patterns_need_a_name_per_head() -> None:
    with pytest.raises(ValueError, match="heads names 1 heads but the patterns have 2"):
        plot_attention_patterns(torch.rand(2, 3, 3), ["a", "b", "c"], heads=[0])


@pytest.mark.bad_input
def test_attention_explorer_checks_labels(sorter_cache) -> None:
    cache, labels = sorter_cache
    with pytest.raises(ValueError, match="labels has 2 sequences but the cache has 3"):
        AttentionExplorer(cache, labels[:2])


# --- Othello (chapter 04) ---------------------------------------------------------------------------

OTHELLO = OthelloTask()


@pytest.fixture(scope="module")
def game():
    """One random game, its true states, and made-up move and probe probabilities for every position."""
    tokens = OTHELLO.sample(1, torch.Generator().manual_seed(1))[0]
    states = OTHELLO.replay(tokens[None])
    generator = torch.Generator().manual_seed(2)
    moves = (states.legal[0].float() * 3 + torch.randn(33, 36, generator=generator)).softmax(-1)
    classes = states.cell_classes("mine_theirs")[0]
    probe = (torch.nn.functional.one_hot(classes, 3) * 4.0 + torch.randn(33, 36, 3, generator=generator)).softmax(-1)
    return tokens, states, moves, probe


def cells_of(trace, side: int = 6) -> set[int]:
    """The flat cell indices a board trace's markers sit on (x = column, y = row)."""
    return {int(y) * side + int(x) for x, y in zip(trace.x, trace.y)}


def traces_by_name(figure) -> dict:
    return {trace.name: trace for trace in figure.data}


def test_board_draws_each_disc_and_legal_move_on_its_cell(game) -> None:
    tokens, states, _, _ = game
    board, legal = states.boards[0, 10], states.legal[0, 10]
    traces = traces_by_name(plot_board(board, legal, title="after 10", last_move=int(tokens[10])))
    flat = board.flatten()
    assert cells_of(traces["black"]) == set((flat == 1).nonzero()[:, 0].tolist())
    assert cells_of(traces["white"]) == set((flat == -1).nonzero()[:, 0].tolist())
    assert cells_of(traces["legal move"]) == set(legal.nonzero()[:, 0].tolist())
    assert cells_of(traces["last move"]) == {int(tokens[10])}
    assert traces["white"].marker.color != traces["black"].marker.color
    assert traces["white"].marker.line.color is not None  # an outline, so white shows on any background


def test_board_is_labelled_like_cell_names_and_square() -> None:
    figure = plot_board(torch.zeros(36, dtype=torch.long))
    assert list(figure.layout.xaxis.ticktext) == list("ABCDEF")
    assert list(figure.layout.yaxis.ticktext) == [str(row) for row in range(1, 7)]
    assert figure.layout.yaxis.range[0] > figure.layout.yaxis.range[1]  # row 1 at the top
    assert figure.layout.yaxis.scaleanchor == "x"
    top_left = plot_board(torch.tensor([[1, 0], [0, 0]])).data[0]
    assert (top_left.x, top_left.y, top_left.text) == ((0,), (0,), ("A1: black",))


def test_probe_reading_shows_the_most_likely_class_with_its_confidence() -> None:
    probabilities = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.0, 1.0, 0.0]])
    traces = traces_by_name(plot_probe_reading(probabilities, CLASS_NAMES["black_white"]))
    assert cells_of(traces["empty"], side=2) == {0} and cells_of(traces["white"], side=2) == {2}
    assert (list(traces["black"].x), list(traces["black"].y)) == ([1, 1], [0, 1])  # cells 1 (B1) and 3 (B2)
    assert list(traces["black"].marker.size) == pytest.approx([0.7 * traces["empty"].marker.size, traces["empty"].marker.size])
    assert traces["black"].marker.color == "#111111" and traces["white"].marker.color == "#f4f4f4"
    assert "black 0.30" in traces["white"].text[0] and "empty 0.10" in traces["white"].text[0]
    mine_theirs = traces_by_name(plot_probe_reading(probabilities, CLASS_NAMES["mine_theirs"]))
    assert mine_theirs["mine"].marker.color not in ("#111111", "#f4f4f4")  # mine is not a colour


def test_move_predictions_show_probabilities_and_outline_legal_cells() -> None:
    probabilities = torch.arange(16.0) / 120
    legal = torch.zeros(16, dtype=torch.bool)
    legal[[3, 12]] = True
    heatmap, outlines = plot_move_predictions(probabilities, legal).data
    assert np.allclose(np.array(heatmap.z), (probabilities.view(4, 4)).numpy())
    assert heatmap.zmax == pytest.approx(15 / 120)
    assert {(x, y) for x, y in zip(outlines.x, outlines.y)} == {(3, 0), (0, 3)}
    assert heatmap.hovertext[0][3] == "D1: P = 0.025, legal"


def test_probe_accuracy_has_a_line_per_series_and_a_dashed_baseline() -> None:
    accuracies = {"mine/theirs": [0.5, 0.8, 0.95], "black/white": [0.5, 0.6, 0.6]}
    figure = plot_probe_accuracy_by_layer(accuracies, baseline=0.45)
    assert [trace.name for trace in figure.data] == ["mine/theirs", "black/white", "majority-class baseline"]
    assert list(figure.data[0].y) == [0.5, 0.8, 0.95]
    assert figure.data[2].line.dash == "dash" and list(figure.data[2].y) == [0.45, 0.45]
    assert list(figure.layout.xaxis.ticktext) == ["embed", "after block 0", "after block 1"]
    assert len(plot_probe_accuracy_by_layer(accuracies).data) == 2


EMPTY_BOARD, ALL_LEGAL = torch.zeros(36, dtype=torch.long), torch.ones(36, dtype=torch.bool)
MINE_THEIRS = CLASS_NAMES["mine_theirs"]


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("plot", "message"),
    [
        (lambda: plot_board(torch.zeros(35, dtype=torch.long)), r"board has shape \(35,\)"),
        (lambda: plot_board(torch.zeros(6, 5, dtype=torch.long)), "must be square"),
        (lambda: plot_board(torch.full((6, 6), 2)), "board must hold only"),
        (lambda: plot_board(EMPTY_BOARD, legal=torch.ones(16, dtype=torch.bool)), "legal has shape"),
        (lambda: plot_probe_reading(torch.rand(36, 2), MINE_THEIRS), r"probabilities has shape \(36, 2\)"),
        (lambda: plot_probe_reading(torch.rand(33, 36, 3), MINE_THEIRS), r"needs shape \[cell, 3\]"),
        (lambda: plot_probe_reading(torch.rand(36, 3), ("mine", "theirs")), "class_names must name 3"),
        (lambda: plot_probe_reading(torch.randn(36, 3) * 5, MINE_THEIRS), "softmax the probe's logits"),
        (lambda: plot_board(EMPTY_BOARD, last_move=36), "last_move must be a cell index"),
        (lambda: plot_move_predictions(torch.rand(38), torch.ones(38, dtype=torch.bool)), r"probabilities has shape \(38,\)"),
        (lambda: plot_move_predictions(torch.rand(36), torch.ones(16, dtype=torch.bool)), "legal has shape"),
        (lambda: plot_move_predictions(torch.randn(36) * 5, ALL_LEGAL), r"\[0, 1\]"),
        (lambda: plot_probe_accuracy_by_layer({"a": [0.5, 0.6], "b": [0.5]}), r"all the same length; got lengths \[1, 2\]"),
        (lambda: plot_probe_accuracy_by_layer({"a": [50.0, 60.0]}), "not percentages"),
        (lambda: plot_probe_accuracy_by_layer({"a": [0.5, 0.6]}, baseline=50.0), "baseline must be None or a fraction"),
        (lambda: plot_board(EMPTY_BOARD, last_move=1.5), "last_move must be a cell index"),
        (lambda: plot_board(EMPTY_BOARD, size=-300), "size must be None or the figure's width"),
        (lambda: plot_probe_reading(torch.full((36, 3), float("nan")), MINE_THEIRS), "softmax the probe's logits"),
        (lambda: plot_move_predictions(torch.full((36,), float("nan")), ALL_LEGAL), r"\[0, 1\]"),
        (lambda: plot_attention_patterns(torch.rand(4, 4), ["a"] * 4), "patterns must have 3 dims"),
        (lambda: plot_attention_patterns(torch.full((1, 2, 2), float("nan")), ["a"] * 2), "patterns contains NaN"),
    ],
)
def test_board_figures_reject_bad_inputs(plot, message) -> None:
    with raises_one_sentence(ValueError, message):
        plot()


def test_othello_explorer_follows_its_slider(game) -> None:
    tokens, states, moves, probe = game
    explorer = OthelloExplorer(OTHELLO, tokens, moves, probe)
    n_moves = int((tokens < 36).sum())
    assert (explorer.position.min, explorer.position.max) == (0, n_moves)
    assert explorer.caption.value == "<b>Start. Black to move, 4 legal moves.</b>"
    board, reading, predictions = explorer.figures
    assert cells_of(traces_by_name(board)["black"]) == {15, 20}  # D3 and C4
    explorer.position.value = 7
    board, reading, predictions = explorer.figures
    black = set((states.boards[0, 7].flatten() == 1).nonzero()[:, 0].tolist())
    assert cells_of(traces_by_name(board)["black"]) == black
    assert cells_of(traces_by_name(board)["last move"]) == {int(tokens[7])}
    assert np.allclose(np.array(predictions.data[0].z).flatten(), moves[7].numpy())
    next_player = "Black" if states.players[0, 7] == 1 else "White"
    assert reading.layout.title.text == f"Probe's reading (mine = {next_player})"
    mover = "Black" if states.players[0, 6] == 1 else "White"
    assert explorer.caption.value.startswith(f"<b>Move 7: {mover} played {OTHELLO.cell_name(tokens[7])}.")
    explorer.next.click()
    assert explorer.position.value == 8
    explorer.position.value = n_moves
    explorer.next.click()
    assert explorer.position.value == n_moves and "Game over" in explorer.caption.value


def test_othello_explorer_without_a_probe_shows_two_boards(game) -> None:
    tokens, _, moves, _ = game
    assert len(OthelloExplorer(OTHELLO, tokens, moves).figures) == 2


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (lambda t, m, p: (t[None], m, p), "tokens must be one game"),
        (lambda t, m, p: (t, torch.rand(33, 38), p), "move_probabilities has shape"),
        (lambda t, m, p: (t, m, p[..., :2]), "probe_probabilities has shape"),
        (lambda t, m, p: (t, m, p, ("empty", "mine")), "class_names must name 3"),
    ],
)
def test_othello_explorer_checks_its_inputs(game, arguments, message) -> None:
    tokens, _, moves, probe = game
    with pytest.raises(ValueError, match=message):
        OthelloExplorer(OTHELLO, *arguments(tokens, moves, probe))


# --- Toy models of superposition (chapter 05) ------------------------------------------------------

from plotly.colors import sample_colorscale  # noqa: E402

from mechlearn.superposition import PHASE_NAMES  # noqa: E402
from mechlearn.viz import (  # noqa: E402
    plot_feature_dimensionality,
    plot_feature_geometry,
    plot_interference,
    plot_phase_diagram,
)

# Two instances of 3 features in 2 dimensions: an orthogonal pair plus a dropped feature, and a triangle.
TOY_W = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[1.0, -0.5, -0.5], [0.0, 0.866, -0.866]]])


def test_feature_geometry_draws_each_feature_from_the_origin_in_square_panels() -> None:
    figure = plot_feature_geometry(TOY_W, importance=torch.tensor([1.0, 0.5, 0.25]), titles=["pair", "triangle"])
    lines = [trace for trace in figure.data if trace.mode == "lines"]
    dots = [trace for trace in figure.data if trace.mode == "markers"]
    assert len(lines) == 6 and len(dots) == 2
    assert np.allclose(dots[1].x, [1.0, -0.5, -0.5]) and np.allclose(dots[1].y, [0.0, 0.866, -0.866])
    assert np.allclose([lines[4].x, lines[4].y], [[0, -0.5], [0, 0.866]])  # instance 1, feature 1: origin to its dot
    assert lines[3].xaxis == dots[1].xaxis == "x2"  # the second instance has its own panel
    assert figure.layout.yaxis.scaleanchor == "x" and figure.layout.yaxis2.scaleanchor == "x2"
    assert [a.text for a in figure.layout.annotations] == ["pair", "triangle"]
    # The most important feature takes the top of the colour scale, the least the bottom.
    assert lines[0].line.color == sample_colorscale("Viridis", [1.0])[0]
    assert lines[2].line.color == sample_colorscale("Viridis", [0.0])[0]
    assert list(dots[0].marker.color) == [1.0, 0.5, 0.25] and figure.layout.coloraxis.colorbar.title.text == "importance"
    assert len(plot_feature_geometry(TOY_W).data) == 8  # no importance: one colour, no colour bar


def test_interference_shows_W_transpose_W_on_a_scale_centred_at_zero() -> None:
    figure = plot_interference(TOY_W, titles=["pair", "triangle"])
    assert np.allclose(figure.data[0].z, np.eye(3) * [1, 1, 0])
    assert np.allclose(figure.data[1].z[0], [1.0, -0.5, -0.5], atol=1e-3)
    assert figure.layout.coloraxis.cmin == -figure.layout.coloraxis.cmax
    assert sorted(a.text for a in figure.layout.annotations) == ["pair", "triangle"]


def test_phase_diagram_colours_each_phase_on_log_axes() -> None:
    importance, density = torch.tensor([0.1, 1.0, 10.0]), torch.tensor([0.01, 0.1])
    classes = torch.tensor([[2, 0], [2, 2], [2, 1]])
    heatmap, *legend = plot_phase_diagram(classes, importance, density).data
    assert np.array_equal(heatmap.z, classes.numpy())
    assert np.allclose(heatmap.x, [10**-2.5, 10**-1.5, 10**-0.5])  # cell edges halfway in log space
    assert np.allclose(heatmap.y, [10**-1.5, 10**-0.5, 10**0.5, 10**1.5])
    assert [trace.name for trace in legend] == list(PHASE_NAMES)
    # A stepped scale over zmin = -0.5 .. zmax = 2.5 gives class k one colour, which its legend entry shows.
    assert (heatmap.zmin, heatmap.zmax) == (-0.5, 2.5)
    assert [stop for stop, _ in heatmap.colorscale] == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    for k, trace in enumerate(legend):
        assert trace.marker.color == heatmap.colorscale[2 * k][1] == heatmap.colorscale[2 * k + 1][1]
    assert "density 0.1, relative importance 10: dedicated dimension" == heatmap.text[2][1]
    layout = plot_phase_diagram(classes, importance, density).layout
    assert layout.xaxis.type == "log" and layout.yaxis.type == "log"


def test_feature_dimensionality_plots_each_feature_against_one_over_density() -> None:
    dimensionality = torch.tensor([[1.0, 1.0, 0.0], [0.4, 0.4, 0.4]])
    figure = plot_feature_dimensionality(dimensionality, torch.tensor([1.0, 0.05]))
    assert np.allclose(figure.data[0].x, [1, 1, 1, 20, 20, 20]) and np.allclose(figure.data[0].y, [1, 1, 0, 0.4, 0.4, 0.4])
    assert figure.layout.xaxis.type == "log"
    guides = sorted(shape.y0 for shape in figure.layout.shapes)
    assert guides == pytest.approx([3 / 8, 2 / 5, 1 / 2, 2 / 3, 3 / 4, 1])
    assert "2/5 pentagon" in [a.text for a in figure.layout.annotations]


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("plot", "message"),
    [
        (lambda: plot_feature_geometry(torch.zeros(2, 3, 5)), r"n_hidden = 2, shape \[instance, 2, feature\], got shape \(2, 3, 5\)"),
        (lambda: plot_feature_geometry(TOY_W, importance=torch.ones(4)), r"importance has shape \(4,\)"),
        (lambda: plot_feature_geometry(TOY_W, titles=["one"]), "titles has 1 entries but W has 2 instances"),
        (lambda: plot_phase_diagram(torch.zeros(2, 3, dtype=torch.long), torch.ones(3), torch.ones(2)), r"classes has shape \(2, 3\)"),
        (lambda: plot_phase_diagram(torch.full((1, 1), 3), torch.ones(1), torch.ones(1)), "indices into PHASE_NAMES"),
        (lambda: plot_feature_dimensionality(torch.ones(2, 3), torch.ones(3)), "one density per instance"),
        (lambda: plot_feature_dimensionality(torch.ones(2, 3), torch.tensor([0.5, 0.0])), r"feature_density must lie in \(0, 1\]"),
        (lambda: plot_feature_dimensionality(torch.ones(3), torch.ones(3)), "dimensionality must have 2 dims"),
        (lambda: plot_feature_dimensionality(torch.full((2, 3), float("nan")), torch.ones(2)), "dimensionality contains NaN"),
        (lambda: plot_feature_geometry(torch.full((2, 2, 5), float("inf"))), "W contains NaN or inf"),
        (lambda: plot_feature_geometry(TOY_W, columns=0), "columns must be a positive int"),
        (lambda: plot_interference(torch.full((2, 2, 5), float("nan"))), "W contains NaN or inf"),
        (lambda: plot_phase_diagram(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1), torch.ones(1)), "relative_importance must be positive"),
        (lambda: plot_phase_diagram(torch.zeros(1, 1, dtype=torch.long), torch.ones(1), torch.tensor([float("nan")])), "feature_density must be positive"),
    ],
)
def test_superposition_figures_reject_bad_inputs(plot, message) -> None:
    with raises_one_sentence(ValueError, message):
        plot()


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: plot_training_history({"step": 1, "train_loss": 0.5}), "history"),
        (lambda: plot_phase_diagram(torch.zeros(1, 1), torch.ones(1), torch.ones(1)), "classes"),
        (lambda: plot_board(EMPTY_BOARD.tolist()), "board"),
    ],
    ids=["a dict for history", "float classes", "a list for board"],
)
def test_a_wrong_type_is_named(call, name) -> None:
    with raises_one_sentence(TypeError, re.escape(name)):
        call()
