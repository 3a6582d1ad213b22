"""mechlearn.tasks.othello: the rules on hand-worked 6 x 6 positions, sampled games, the ground-truth
states, the grading helpers, and a cross-check of the bitboards against a plain-Python Othello."""

import math

import pytest
import torch
from bad_inputs import raises_one_sentence

from mechlearn.tasks import OthelloTask, Task
from mechlearn.tasks.othello import BLACK, CLASS_NAMES, WHITE, board_after, initial_boards, legal_move_accuracy, legal_moves, play

TASK = OthelloTask()
NAMES = {TASK.cell_name(cell): cell for cell in range(TASK.n_cells)}


def cells(*names: str) -> list[int]:
    return sorted(NAMES[name] for name in names)


def board_from(diagram: str) -> torch.Tensor:
    """A 6 x 6 board from a diagram: a header of column letters, then one line per row,
    `B` black, `W` white, `.` empty, `*` empty (the cell about to be played)."""
    lines = diagram.strip().splitlines()
    assert lines[0].split() == list("ABCDEF")
    symbols = {"B": BLACK, "W": WHITE, ".": 0, "*": 0}
    rows = [[symbols[s] for s in line.split()[1:]] for line in lines[1:]]
    assert len(rows) == 6 and all(len(row) == 6 for row in rows)
    return torch.tensor(rows)


def legal_names(board: torch.Tensor, player: int) -> list[str]:
    legal = legal_moves(board[None], torch.tensor([player]))[0]
    return [TASK.cell_name(cell) for cell in torch.nonzero(legal)[:, 0].tolist()]


def play_one(board: torch.Tensor, player: int, name: str) -> torch.Tensor:
    return play(board[None], torch.tensor([player]), torch.tensor([NAMES[name]]))[0]


def sample(batch: int = 200, seed: int = 0) -> torch.Tensor:
    return TASK.sample(batch, torch.Generator().manual_seed(seed))


def game_lengths(tokens: torch.Tensor) -> torch.Tensor:
    return (tokens[:, 1:] < TASK.n_cells).sum(dim=-1)


# --- layout, names and the opening ------------------------------------------------------------


def test_layout_and_protocol() -> None:
    assert isinstance(TASK, Task)
    assert (TASK.n_cells, TASK.bos, TASK.pad, TASK.d_vocab, TASK.n_ctx, TASK.max_moves) == (36, 36, 37, 38, 33, 32)
    assert [TASK.cell_name(c) for c in (0, 5, 6, 9, 35)] == ["A1", "F1", "A2", "D2", "F6"]
    for size in (5, 8):
        with pytest.raises(ValueError, match="size"):
            OthelloTask(size=size)


def test_opening_moves_and_first_flip() -> None:
    #   A B C D E F        Black's moves each outflank one white centre stone:
    # 1 . . . . . .        C2 (down over C3 to C4), B3 (right over C3 to D3),
    # 2 . . * . . .        E4 (left over D4 to C4), D5 (up over D4 to D3).
    # 3 . * W B . .
    # 4 . . B W * .
    # 5 . . . * . .
    # 6 . . . . . .
    start = board_after(TASK, [])
    assert torch.equal(start, board_from("""
      A B C D E F
    1 . . . . . .
    2 . . . . . .
    3 . . W B . .
    4 . . B W . .
    5 . . . . . .
    6 . . . . . ."""))
    assert legal_names(start, BLACK) == ["C2", "B3", "E4", "D5"]
    states = TASK.replay(torch.tensor([[TASK.bos]]))
    assert torch.nonzero(states.legal[0, 0])[:, 0].tolist() == cells("C2", "B3", "E4", "D5")
    assert states.players[0, 0] == BLACK
    # C2 flips C3 and nothing else.
    assert torch.equal(board_after(TASK, ["C2"]), board_from("""
      A B C D E F
    1 . . . . . .
    2 . . B . . .
    3 . . B B . .
    4 . . B W . .
    5 . . . . . .
    6 . . . . . ."""))
    assert torch.equal(board_after(TASK, ["c2"]), board_after(TASK, ["C2"]))


# --- flips ---------------------------------------------------------------------------------------


def test_one_move_flips_along_all_eight_directions() -> None:
    # Black plays C3. Every direction holds a white run closed by a black stone:
    # up C2 | down C4 C5 | left B3 | right D3 E3 | up-left B2 | up-right D2 | down-left B4 | down-right D4 E5.
    # D5 is white but on none of C3's eight lines, so it stays white.
    before = board_from("""
      A B C D E F
    1 B . B . B .
    2 . W W W . .
    3 B W * W W B
    4 . W W W . .
    5 B . W W W .
    6 . . B . . B""")
    after = board_from("""
      A B C D E F
    1 B . B . B .
    2 . B B B . .
    3 B B B B B B
    4 . B B B . .
    5 B . B W B .
    6 . . B . . B""")
    assert "C3" in legal_names(before, BLACK)
    assert torch.equal(play_one(before, BLACK, "C3"), after)
    # The same position with colours swapped, played by white, flips the same stones.
    assert torch.equal(play_one(-before, WHITE, "C3"), -after)


def test_runs_that_are_not_closed_do_not_flip() -> None:
    # Black plays C3. Closed: left B3 (by A3), down C4 (by C5).
    # Not closed: up C2 C1 (board edge), right D3 E3 (empty F3), down-right D4 E5 F6 (edge),
    # up-left B2 (empty A1). Up-right D2 is black already, down-left B4 is empty.
    before = board_from("""
      A B C D E F
    1 . . W . . .
    2 . W W B . .
    3 B W * W W .
    4 . . W W . .
    5 . . B . W .
    6 . . . . . W""")
    after = board_from("""
      A B C D E F
    1 . . W . . .
    2 . W W B . .
    3 B B B W W .
    4 . . B W . .
    5 . . B . W .
    6 . . . . . W""")
    assert torch.equal(play_one(before, BLACK, "C3"), after)


def test_the_longest_runs_flip() -> None:
    # On 6 x 6 a run is at most 4 stones. F1 closes B1..E1 against A1; the diagonal E2..B5 between F1 and A6
    # is open at both ends, so it does not flip and A6 is not yet legal.
    before = board_from("""
      A B C D E F
    1 B W W W W *
    2 . . . . W .
    3 . . . W . .
    4 . . W . . .
    5 . W . . . .
    6 * . . . . .""")
    assert legal_names(before, BLACK) == ["F1"]
    row_closed = play_one(before, BLACK, "F1")
    assert torch.equal(row_closed[0], torch.ones(6, dtype=torch.long))  # the whole first row is black
    assert torch.equal(row_closed[1:], before[1:])
    # Now F1 is black, A6 closes the 4-stone diagonal.
    assert "A6" in legal_names(row_closed, BLACK)
    both = play_one(row_closed, BLACK, "A6")
    assert (both.flatten()[cells("A6", "B5", "C4", "D3", "E2", "F1")] == BLACK).all()
    assert (both != 0).sum() == 11 and (both == WHITE).sum() == 0


# A bitboard numbers cells row * 6 + col, so one step right from column F lands on column A of the
# next row, and one step left from column A on column F of the row above. Each direction gets
# (a cell, a white stone next to it on the side edge, the cell a wrapping shift past that stone reaches).
WRAPS = {
    "right": ("E2", "F2", "A3"),
    "left": ("B3", "A3", "F2"),
    "down-right": ("E2", "F3", "A5"),
    "up-right": ("E3", "F2", "A2"),
    "down-left": ("B2", "A3", "F3"),
    "up-left": ("B4", "A3", "F1"),
}


@pytest.mark.parametrize("direction", WRAPS)
def test_runs_into_the_side_edge_never_make_a_move_legal(direction: str) -> None:
    # Black on the first cell, white on the edge, nothing else: black has no move, least of all the wrapped cell.
    black, white, wrapped = WRAPS[direction]
    board = torch.zeros(6, 6, dtype=torch.long)
    board.view(-1)[NAMES[black]], board.view(-1)[NAMES[white]] = BLACK, WHITE
    assert legal_names(board, BLACK) == []
    with pytest.raises(ValueError, match="illegal move"):
        play_one(board, BLACK, wrapped)
    # White, walking back over the black stone, has exactly one move, in the opposite direction.
    assert len(legal_names(board, WHITE)) == 1


@pytest.mark.parametrize("direction", WRAPS)
def test_runs_into_the_side_edge_never_flip(direction: str) -> None:
    # Black plays the first cell, made legal by white then black straight below it; with a black stone on
    # the wrapped cell, a wrapping shift would also flip the white edge stone.
    move, edge_white, wrapped_black = (NAMES[name] for name in WRAPS[direction])
    board = torch.zeros(36, dtype=torch.long)
    board[[edge_white, move + 6]] = WHITE
    board[[wrapped_black, move + 12]] = BLACK
    expected = board.clone()
    expected[[move, move + 6]] = BLACK  # only the run straight below flips
    board, expected = board.view(6, 6), expected.view(6, 6)
    assert torch.equal(play_one(board, BLACK, TASK.cell_name(move)), expected)


def test_play_rejects_illegal_moves_and_skips_minus_one() -> None:
    start = board_after(TASK, [])
    with pytest.raises(ValueError, match="illegal move"):
        play_one(start, BLACK, "C3")  # occupied
    with pytest.raises(ValueError, match="illegal move"):
        play_one(start, BLACK, "A1")  # empty, outflanks nothing
    with pytest.raises(ValueError, match="illegal move"):
        play_one(start, WHITE, "C2")  # legal for black, not for white
    boards = torch.stack([start, start])
    after = play(boards, torch.tensor([BLACK, WHITE]), torch.tensor([NAMES["C2"], -1]))
    assert torch.equal(after[0], board_after(TASK, ["C2"]))
    assert torch.equal(after[1], start)


# --- passes and the end of the game -------------------------------------------------------------


def test_constructed_forced_pass() -> None:
    # Black's only stone B1 sits behind white A1 on the edge: black cannot move, white can (C1).
    board = board_from("""
      A B C D E F
    1 W B . . . .
    2 . . . . . .
    3 . . . . . .
    4 . . . . . .
    5 . . . . . .
    6 . . . . . .""")
    assert legal_names(board, BLACK) == []
    assert legal_names(board, WHITE) == ["C1"]


def test_sampled_pass_repeats_the_mover_and_mine_follows_them() -> None:
    tokens = sample()
    states = TASK.replay(tokens)
    games, positions = torch.nonzero(states.passed, as_tuple=True)
    assert len(games) > 0
    mine = states.cell_classes("mine_theirs")
    black_white = states.cell_classes("black_white")
    for game, t in zip(games.tolist()[:20], positions.tolist()[:20]):
        mover = int(states.players[game, t - 1])
        # The move at t was played by `mover`; the opponent cannot answer, so `mover` moves again.
        assert int(states.players[game, t]) == mover != 0
        board = states.boards[game, t]
        assert legal_names(board, -mover) == []
        assert legal_names(board, mover) != []
        assert torch.equal(states.legal[game, t], legal_moves(board[None], torch.tensor([mover]))[0])
        # At t - 1 and t the same colour is "mine".
        for s in (t - 1, t):
            expected = black_white[game, s] if mover == BLACK else torch.tensor([0, 2, 1])[black_white[game, s]]
            assert torch.equal(mine[game, s], expected)
    # Without a pass the player to move alternates.
    played = states.players[:, :-1] != 0
    alternates = states.players[:, 1:] == -states.players[:, :-1]
    ends = states.players[:, 1:] == 0
    assert ((alternates | states.passed[:, 1:] | ends) | ~played).all()
    assert (states.passed[:, 1:] == (played & (states.players[:, 1:] == states.players[:, :-1]))).all()


def test_game_end_and_padding() -> None:
    tokens = sample()
    states = TASK.replay(tokens)
    lengths = game_lengths(tokens)
    short = torch.nonzero(lengths < TASK.max_moves)[:, 0].tolist()
    assert short, "seed 0 should hold a game that ends before the board is full"
    for game in range(tokens.shape[0]):
        end = int(lengths[game])
        assert (tokens[game, 1 : end + 1] < TASK.n_cells).all()
        assert (tokens[game, end + 1 :] == TASK.pad).all()
        assert (states.players[game, :end] != 0).all() and (states.players[game, end:] == 0).all()
        assert states.in_play[game, :end].all() and not states.in_play[game, end:].any()
        assert not states.legal[game, end:].any()
        final = states.boards[game, end]
        assert legal_names(final, BLACK) == [] and legal_names(final, WHITE) == []
        assert (states.boards[game, end:] == final).all()
    for game in short:
        assert (states.boards[game, -1] == 0).any()  # ended with empty cells left


# --- sampled games --------------------------------------------------------------------------------


def test_sample_is_seeded_and_every_move_is_legal() -> None:
    tokens = sample(300, seed=1)
    assert tokens.shape == (300, TASK.n_ctx) and tokens.dtype == torch.long
    assert torch.equal(tokens, sample(300, seed=1))
    assert not torch.equal(tokens, sample(300, seed=2))
    assert (tokens[:, 0] == TASK.bos).all() and (tokens[:, 1:] != TASK.bos).all()
    states = TASK.replay(tokens)
    for t in range(1, TASK.n_ctx):
        moving = tokens[:, t] < TASK.n_cells
        before = legal_moves(states.boards[moving, t - 1], states.players[moving, t - 1])
        assert before.gather(-1, tokens[moving, t, None]).all()
        assert torch.equal(before, states.legal[moving, t - 1])
    # Each move adds one stone: 4 + t stones after t moves, then the count stops.
    stones = (states.boards != 0).sum(dim=(-1, -2))
    expected = 4 + torch.minimum(torch.arange(TASK.n_ctx), game_lengths(tokens)[:, None])
    assert torch.equal(stones, expected)


def test_cell_classes_on_a_known_position() -> None:
    tokens = torch.tensor([[TASK.bos, NAMES["C2"], NAMES["B2"]]])
    states = TASK.replay(tokens)
    assert states.players[0].tolist() == [BLACK, WHITE, BLACK]
    # After C2 (white to move): black C2 C3 C4 D3, white D4.
    black_white = states.cell_classes("black_white")[0, 1]
    mine_theirs = states.cell_classes("mine_theirs")[0, 1]
    assert torch.nonzero(black_white == 1)[:, 0].tolist() == cells("C2", "C3", "D3", "C4")
    assert torch.nonzero(black_white == 2)[:, 0].tolist() == cells("D4")
    assert torch.nonzero(mine_theirs == 1)[:, 0].tolist() == cells("D4")
    assert torch.nonzero(mine_theirs == 2)[:, 0].tolist() == cells("C2", "C3", "D3", "C4")
    assert ((black_white == 0) == (mine_theirs == 0)).all() and (black_white == 0).sum() == 31
    assert CLASS_NAMES["mine_theirs"][1] == "mine" and CLASS_NAMES["black_white"][2] == "white"
    # White's B2 flips C3 (diagonal to D4): black to move, so mine == black.
    assert torch.equal(states.cell_classes("mine_theirs")[0, 2], states.cell_classes("black_white")[0, 2])
    assert torch.nonzero(states.cell_classes("black_white")[0, 2] == 2)[:, 0].tolist() == cells("B2", "C3", "D4")
    with pytest.raises(ValueError, match="encoding"):
        states.cell_classes("colour")


# --- grading helpers ------------------------------------------------------------------------------


def perfect_logits(legal: torch.Tensor) -> torch.Tensor:
    """0 on the legal moves, -1e9 on the illegal ones, and the largest logits on BOS and PAD (ignored)."""
    logits = torch.where(legal, 0.0, -1e9)
    return torch.cat([logits, torch.full((*legal.shape[:-1], 2), 10.0)], dim=-1)


def test_legal_move_accuracy() -> None:
    tokens = sample(50)
    states = TASK.replay(tokens)
    logits = perfect_logits(states.legal)
    # BOS and PAD hold the largest logits, and are not moves: no illegal mass.
    assert legal_move_accuracy(logits, states) == {"top1_legal": 1.0, "topk_exact": 1.0, "illegal_mass": 0.0}
    assert TASK.accuracy(logits, tokens) == 1.0
    n_legal = states.legal.sum(dim=-1)[states.in_play].float()
    # One illegal move above every legal one: the top move is never legal, the top-k set never exact,
    # and it holds e^5 / (e^5 + n_legal) of the probability.
    illegal = states.legal.float().argmin(dim=-1, keepdim=True)
    assert not states.legal.gather(-1, illegal)[states.in_play].any()
    wrong = legal_move_accuracy(logits.scatter(-1, illegal, 5.0), states)
    assert wrong["top1_legal"] == 0.0 and wrong["topk_exact"] == 0.0
    assert wrong["illegal_mass"] == pytest.approx((math.e**5 / (math.e**5 + n_legal)).mean().item(), rel=1e-5)
    # Just under the legal moves, the illegal move leaves the rankings right, but not the probabilities.
    under = legal_move_accuracy(logits.scatter(-1, illegal, -1.0), states)
    assert under["top1_legal"] == 1.0 and under["topk_exact"] == 1.0
    assert under["illegal_mass"] == pytest.approx((math.e**-1 / (math.e**-1 + n_legal)).mean().item(), rel=1e-5)
    # A legal move pushed under the illegal one: the set is never exact, and the top move is still
    # legal exactly where the position has another legal move.
    first_legal = states.legal.float().argmax(dim=-1, keepdim=True)
    swapped = logits.scatter(-1, first_legal, -2.0).scatter(-1, illegal, -1.0)
    several = (states.legal.sum(dim=-1) > 1)[states.in_play].float().mean().item()
    assert 0.0 < several < 1.0
    scores = legal_move_accuracy(swapped, states)
    assert scores["topk_exact"] == 0.0 and math.isclose(scores["top1_legal"], several)


def test_loss_of_the_uniform_legal_prediction() -> None:
    tokens = sample(50)
    states = TASK.replay(tokens)
    n_legal = states.legal.sum(dim=-1)[states.in_play].float()
    entropy = n_legal.log().mean()
    assert math.isclose(TASK.loss(perfect_logits(states.legal), tokens).item(), entropy.item(), rel_tol=1e-5)
    assert math.isclose(TASK.loss(perfect_logits(states.legal), tokens).item(), entropy.item(), rel_tol=1e-5)
    # -inf on the illegal moves is the same prediction and must give the same (finite) loss.
    minus_inf = perfect_logits(states.legal).masked_fill(perfect_logits(states.legal) < -1, -math.inf)
    assert math.isclose(TASK.loss(minus_inf, tokens).item(), entropy.item(), rel_tol=1e-5)
    # Uniform over all 36 cells costs log 36 at every position in play.
    uniform = torch.zeros(*tokens.shape, TASK.d_vocab)
    assert math.isclose(TASK.loss(uniform, tokens).item(), math.log(36), rel_tol=1e-5)


# --- replay's argument checks --------------------------------------------------------------------


@pytest.mark.bad_input
def test_replay_rejects_bad_tokens() -> None:
    tokens = sample(20)
    with pytest.raises(ValueError, match="BOS"):
        TASK.replay(tokens[:, 1:])
    for bad in (-1, TASK.d_vocab):
        broken = tokens.clone()
        broken[3, 5] = bad
        with pytest.raises(ValueError, match="tokens must lie in"):
            TASK.replay(broken)
    with pytest.raises(TypeError, match="tokens must be"):
        TASK.replay(tokens.float())
    ended = torch.nonzero(game_lengths(sample()) < TASK.max_moves)[0, 0]
    game = sample()[ended : ended + 1].clone()
    end = int(game_lengths(game)[0])
    game[0, end + 1] = torch.nonzero(TASK.replay(game).boards[0, -1].flatten() == 0)[0, 0]
    with pytest.raises(ValueError, match="after it was over"):
        TASK.replay(game)
    illegal = torch.tensor([[TASK.bos, NAMES["A1"]]])
    with pytest.raises(ValueError, match="illegal move"):
        TASK.replay(illegal)


# --- cross-check against a plain-Python Othello ------------------------------------------------------

STEPS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]


def reference_flips(board: list[list[int]], player: int, row: int, col: int) -> list[tuple[int, int]]:
    """The stones `player` flips by playing (row, col), walking each direction cell by cell."""
    size, flips = len(board), []
    for dr, dc in STEPS:
        run, r, c = [], row + dr, col + dc
        while 0 <= r < size and 0 <= c < size and board[r][c] == -player:
            run.append((r, c))
            r, c = r + dr, c + dc
        if run and 0 <= r < size and 0 <= c < size and board[r][c] == player:
            flips += run
    return flips


def reference_legal(board: list[list[int]], player: int) -> set[int]:
    size = len(board)
    return {r * size + c for r in range(size) for c in range(size) if board[r][c] == 0 and reference_flips(board, player, r, c)}


def reference_game(moves: list[int], size: int) -> list[tuple[list[list[int]], int, set[int]]]:
    """(board, player to move, legal moves) after each prefix of `moves`, 0 / empty once the game is over."""
    board = [[0] * size for _ in range(size)]
    mid = size // 2
    board[mid - 1][mid - 1] = board[mid][mid] = -1
    board[mid - 1][mid] = board[mid][mid - 1] = 1
    player = 1
    states = [([row[:] for row in board], player, reference_legal(board, player))]
    for move in moves:
        row, col = divmod(move, size)
        assert player != 0 and move in reference_legal(board, player)
        for r, c in reference_flips(board, player, row, col) + [(row, col)]:
            board[r][c] = player
        if reference_legal(board, -player):
            player = -player
        elif not reference_legal(board, player):
            player = 0
        states.append(([row[:] for row in board], player, reference_legal(board, player) if player else set()))
    return states


@pytest.mark.parametrize(("size", "n_games"), [(6, 200), (4, 50)])
def test_replay_matches_a_plain_python_othello(size: int, n_games: int) -> None:
    task = OthelloTask(size=size)
    tokens = task.sample(n_games, torch.Generator().manual_seed(size))
    states = task.replay(tokens)
    assert states.passed.any()
    for game in range(n_games):
        moves = [m for m in tokens[game, 1:].tolist() if m < task.n_cells]
        expected = reference_game(moves, size)
        expected += [expected[-1]] * (task.n_ctx - len(expected))
        assert expected[-1][1] == 0
        for t, (board, player, legal) in enumerate(expected):
            assert states.boards[game, t].tolist() == board
            assert int(states.players[game, t]) == player
            assert set(torch.nonzero(states.legal[game, t])[:, 0].tolist()) == legal


# --- bad inputs: every one named in one sentence (issue 11) -------------------------------------

GAMES = TASK.sample(4, torch.Generator().manual_seed(3))
STATES = TASK.replay(GAMES)
MOVE_LOGITS = torch.randn(4, TASK.n_ctx, TASK.d_vocab, generator=torch.Generator().manual_seed(4))
BOARDS = initial_boards(2)
PLAYERS = torch.tensor([BLACK, WHITE])


def nan_at_start(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.clone()
    logits[0, 0, 0] = math.nan
    return logits


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: OthelloTask(size=6.0), ValueError, "OthelloTask.size must be an int, got 6.0"),
        (lambda: TASK.sample(0, torch.Generator()), ValueError, "batch_size must be a positive int, got 0"),
        (lambda: TASK.sample(2.0, torch.Generator()), ValueError, "batch_size must be a positive int, got 2.0"),
        (lambda: TASK.sample(2, 0), TypeError, "generator must be a torch.Generator, got int"),
        (lambda: TASK.replay(GAMES[:0]), ValueError, "tokens is empty"),
        (lambda: TASK.replay(GAMES.tolist()), TypeError, "tokens must be a tensor, got list"),
        (lambda: TASK.loss(MOVE_LOGITS[:, :5], GAMES), ValueError, r"logits must be \[batch=4 pos=33 d_vocab>=36\] like the games"),
        (lambda: TASK.loss(MOVE_LOGITS[..., :20], GAMES), ValueError, "d_vocab>=36"),
        (lambda: TASK.loss(MOVE_LOGITS.long(), GAMES), TypeError, "logits must be a float tensor"),
        (lambda: legal_move_accuracy(MOVE_LOGITS, GAMES), TypeError, "states must be the GameStates that OthelloTask.replay returns"),
        (lambda: legal_move_accuracy(nan_at_start(MOVE_LOGITS), STATES), ValueError, "logits contains NaN or inf"),
        (lambda: legal_moves(BOARDS[0], PLAYERS), ValueError, "boards must have 3 dims"),
        (lambda: legal_moves(torch.zeros(2, 5, 5, dtype=torch.long), PLAYERS), ValueError, "boards must be .batch row col. with 4 x 4 or 6 x 6"),
        (lambda: legal_moves(BOARDS * 2, PLAYERS), ValueError, r"boards must hold EMPTY \(0\), BLACK \(1\) or WHITE \(-1\) only"),
        (lambda: legal_moves(BOARDS.float(), PLAYERS), TypeError, "boards must be an integer tensor"),
        (lambda: legal_moves(BOARDS, torch.tensor([BLACK, 0])), ValueError, r"players must hold BLACK \(1\) or WHITE \(-1\) only"),
        (lambda: legal_moves(BOARDS, PLAYERS[:1]), ValueError, r"players must have one entry per board \(2\)"),
        (lambda: play(BOARDS, PLAYERS, torch.tensor([36, -1])), ValueError, r"moves must hold a cell in \[0, 36\) or -1 only"),
        (lambda: play(BOARDS, PLAYERS, torch.tensor([1.0, -1.0])), TypeError, "moves must be an integer tensor"),
        (lambda: TASK.cell_name(36), ValueError, r"cell must be in \[0, 36\), got 36"),
        (lambda: board_after(TASK, ["C2", "Z9"]), ValueError, r"moves must be cell names from A1 to F6, got \['Z9'\]"),
        (lambda: initial_boards(0), ValueError, "batch_size must be a positive int"),
        (lambda: initial_boards(2, size=5), ValueError, "size must be 4 or 6, got 5"),
    ],
    ids=["float-size", "zero-batch", "float-batch", "int-generator", "replay-empty", "replay-list", "loss-shape", "loss-vocab", "loss-int",
         "accuracy-states", "accuracy-nan", "boards-dims", "boards-5x5", "boards-values", "boards-float", "players-zero", "players-length",
         "moves-range", "moves-float", "cell-name", "board-after-name", "initial-zero", "initial-size"],
)
def test_othello_names_bad_inputs(call, error, match: str) -> None:
    with raises_one_sentence(error, match):
        call()
