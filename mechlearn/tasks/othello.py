"""Mini-Othello: a world whose state we know at every move (chapter 04).

A model reads a game as a sequence of moves, never the board. Because we replay every
game with the rules, we know at each position what the model could know: which cells
are empty, black or white, whose turn it is, and which moves are legal. That latent
state is the ground truth its probes (chapter 04) and sparse autoencoders (chapter 06)
are graded against.

The rules are Othello's on a `size x size` board (6 x 6 by default, or 4 x 4):

- Black moves first. The four centre cells start white, black / black, white.
- A move goes on an empty cell and must outflank: in at least one of the 8 directions,
  a line of the opponent's stones ends in one of the mover's own. Every outflanked
  stone flips.
- A player with no legal move passes; when neither can move, the game ends.

A token is the index of the cell played, `row * size + column`, shown as e.g. `C4`
(column letter, row number). Every game is `BOS move_1 move_2 ...`, padded with PAD
after it ends, so the state after `t` moves sits at token position `t`.

Everything is batched in torch: a board is `Int[Tensor, "batch row col"]` holding
`BLACK = 1`, `WHITE = -1` or `EMPTY = 0`. Multiplying by the player to move (`1` or
`-1`) turns it into the mover's view: `1` mine, `-1` theirs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, NamedTuple

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechlearn.tasks.base import check_int_fields, check_sample_args
from mechlearn.validation import check_finite, check_positive_int, check_tensor, describe

EMPTY, BLACK, WHITE = 0, 1, -1
DIRECTIONS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
Encoding = Literal["mine_theirs", "black_white"]
CLASS_NAMES: dict[str, tuple[str, str, str]] = {
    "mine_theirs": ("empty", "mine", "theirs"),
    "black_white": ("empty", "black", "white"),
}


def initial_boards(batch_size: int, size: int = 6) -> Int[Tensor, "batch row col"]:
    check_positive_int(batch_size, "batch_size")
    _check_size(size)
    board = torch.zeros(batch_size, size, size, dtype=torch.long)
    centre = size // 2
    board[:, centre - 1, centre - 1] = board[:, centre, centre] = WHITE
    board[:, centre - 1, centre] = board[:, centre, centre - 1] = BLACK
    return board


def _check_size(size: object) -> None:
    # An 8 x 8 bitboard needs all 64 bits, and torch has no unsigned int64.
    if size not in (4, 6) or not isinstance(size, int):
        raise ValueError(f"size must be 4 or 6, got {size!r}.")


def _check_boards(boards: object, players: object, moves: object = None) -> None:
    """Boards of EMPTY / BLACK / WHITE, one player (BLACK or WHITE) per board, and moves that are cells or -1."""
    check_tensor(boards, "boards", 3, floating=False)
    batch, size = boards.shape[0], boards.shape[-1]
    if boards.shape[1] != size or size not in (4, 6):
        raise ValueError(f"boards must be [batch row col] with 4 x 4 or 6 x 6 boards, got {describe(boards)}.")
    if ((boards < -1) | (boards > 1)).any():
        raise ValueError("boards must hold EMPTY (0), BLACK (1) or WHITE (-1) only.")
    _check_one_per_board(players, "players", batch, torch.tensor([BLACK, WHITE]), "BLACK (1) or WHITE (-1)")
    if moves is not None:
        _check_one_per_board(moves, "moves", batch, torch.arange(-1, size * size), f"a cell in [0, {size * size}) or -1")


def _check_one_per_board(values: object, name: str, batch: int, allowed: Tensor, what: str) -> None:
    check_tensor(values, name, 1, floating=False)
    if values.shape[0] != batch:
        raise ValueError(f"{name} must have one entry per board ({batch}), got {describe(values)}.")
    if not torch.isin(values.cpu(), allowed).all():
        raise ValueError(f"{name} must hold {what} only, got values from {int(values.min())} to {int(values.max())}.")


# --- bitboards: a board side as one integer, bit `row * size + col` set where it has a stone -------
# Shifting a bitboard moves every stone one step in a direction at once, so the rules run as
# a few dozen integer operations on the whole batch: the trick fast Othello engines use.


@functools.cache
def _edge_masks(size: int) -> dict[int, int]:
    """For a column step, the bits a stone must not be on before it moves (it would wrap round a row)."""
    first_col = sum(1 << (row * size) for row in range(size))
    last_col = first_col << (size - 1)
    return {-1: ~first_col, 0: -1, 1: ~last_col}


def _shift(bits: Int[Tensor, "batch"], row_step: int, col_step: int, size: int) -> Int[Tensor, "batch"]:
    """Every stone moved one step along (row_step, col_step); stones that leave the board vanish."""
    bits = bits & _edge_masks(size)[col_step]
    offset = row_step * size + col_step
    moved = bits << offset if offset > 0 else bits >> -offset
    return moved & ((1 << (size * size)) - 1)


def _outflanked_runs(theirs: Int[Tensor, "batch"], start: Int[Tensor, "batch"], row_step: int, col_step: int, size: int) -> tuple[Int[Tensor, "batch"], Int[Tensor, "batch"]]:
    """Walking from the stones of `start`: the runs of their stones met, and the cells just past each run."""
    run = _shift(start, row_step, col_step, size) & theirs
    for _ in range(size - 3):  # a run is at most size - 2 stones long
        run |= _shift(run, row_step, col_step, size) & theirs
    return run, _shift(run, row_step, col_step, size)


def _legal_bits(mine: Int[Tensor, "batch"], theirs: Int[Tensor, "batch"], size: int) -> Int[Tensor, "batch"]:
    """Empty cells where a stone would close a run of their stones against one of mine."""
    empty = ~(mine | theirs) & ((1 << (size * size)) - 1)
    legal = torch.zeros_like(mine)
    for row_step, col_step in DIRECTIONS:
        # Walk from my stones over their runs: an empty cell just past a run outflanks it.
        _, past_run = _outflanked_runs(theirs, mine, row_step, col_step, size)
        legal |= past_run & empty
    return legal


def _flipped_bits(mine: Int[Tensor, "batch"], theirs: Int[Tensor, "batch"], move: Int[Tensor, "batch"], size: int) -> Int[Tensor, "batch"]:
    """Their stones that a stone placed on `move` (one bit) outflanks."""
    flipped = torch.zeros_like(mine)
    for row_step, col_step in DIRECTIONS:
        run, past_run = _outflanked_runs(theirs, move, row_step, col_step, size)
        flipped |= torch.where((past_run & mine) != 0, run, 0)
    return flipped


def _to_bits(cells: Bool[Tensor, "batch cell"]) -> Int[Tensor, "batch"]:
    return (cells.long() << torch.arange(cells.shape[-1])).sum(dim=-1)


def _from_bits(bits: Int[Tensor, "batch"], n_cells: int) -> Bool[Tensor, "batch cell"]:
    return ((bits[:, None] >> torch.arange(n_cells)) & 1).bool()


def _cells(bits: Int[Tensor, "*batch"], size: int) -> Bool[Tensor, "*batch row col"]:
    return _from_bits(bits.flatten(), size * size).view(*bits.shape, size, size)


def _sides(boards: Int[Tensor, "batch row col"], players: Int[Tensor, "batch"]) -> tuple[Int[Tensor, "batch"], Int[Tensor, "batch"]]:
    """The bitboards of the player to move and of their opponent."""
    mover_view = einops.rearrange(boards * players[:, None, None], "batch row col -> batch (row col)")
    return _to_bits(mover_view == 1), _to_bits(mover_view == -1)


def legal_moves(boards: Int[Tensor, "batch row col"], players: Int[Tensor, "batch"]) -> Bool[Tensor, "batch cell"]:
    """Which cells `players` may play on: empty cells that outflank in at least one direction."""
    _check_boards(boards, players)
    size = boards.shape[-1]
    return _from_bits(_legal_bits(*_sides(boards, players), size), size * size)


def play(boards: Int[Tensor, "batch row col"], players: Int[Tensor, "batch"], moves: Int[Tensor, "batch"]) -> Int[Tensor, "batch row col"]:
    """The boards after each player places a stone on `moves` (a cell index; -1 leaves that board as it is)."""
    _check_boards(boards, players, moves)
    size = boards.shape[-1]
    mine, theirs = _sides(boards, players)
    mine, theirs = _play_bits(mine, theirs, moves, size)
    mover_view = _from_bits(mine, size * size).long() - _from_bits(theirs, size * size).long()
    return einops.rearrange(mover_view, "batch (row col) -> batch row col", row=size) * players[:, None, None]


def _play_bits(mine: Int[Tensor, "batch"], theirs: Int[Tensor, "batch"], moves: Int[Tensor, "batch"], size: int) -> tuple[Int[Tensor, "batch"], Int[Tensor, "batch"]]:
    playing = moves >= 0
    move = torch.where(playing, 1 << moves.clamp(min=0), 0)
    if ((move & _legal_bits(mine, theirs, size)) != move).any():
        raise ValueError("play was given an illegal move; check it against legal_moves first.")
    flipped = _flipped_bits(mine, theirs, move, size)
    return mine | move | flipped, theirs & ~flipped


class GameStates(NamedTuple):
    """The true state at every token position of a batch of games (position t: after t moves)."""

    boards: Int[Tensor, "batch pos row col"]  # EMPTY / BLACK / WHITE
    players: Int[Tensor, "batch pos"]  # who moves next (after any pass); 0 once the game is over
    legal: Bool[Tensor, "batch pos cell"]  # the next player's legal moves; none once the game is over
    passed: Bool[Tensor, "batch pos"]  # the player after the last mover had to pass

    def cell_classes(self, encoding: Encoding = "mine_theirs") -> Int[Tensor, "batch pos cell"]:
        """Each cell as a class: 0 empty, 1 mine / black, 2 theirs / white (see `CLASS_NAMES`).

        "mine" is the player to move next. After the game ends no one moves, so both
        encodings read as black/white there.
        """
        view = self.boards
        if encoding == "mine_theirs":
            view = view * torch.where(self.players == 0, 1, self.players)[..., None, None]
        elif encoding != "black_white":
            raise ValueError(f"encoding must be 'mine_theirs' or 'black_white', got {encoding!r}.")
        classes = torch.where(view == 1, 1, torch.where(view == -1, 2, 0))
        return einops.rearrange(classes, "batch pos row col -> batch pos (row col)")

    @property
    def in_play(self) -> Bool[Tensor, "batch pos"]:
        """Positions where someone still has a move: the ones a legal-move prediction is graded on."""
        return self.players != 0


class _Turn(NamedTuple):
    """A batch of games between moves, as bitboards."""

    black: Int[Tensor, "batch"]
    white: Int[Tensor, "batch"]
    players: Int[Tensor, "batch"]  # who moves next; 0 once the game is over
    legal: Int[Tensor, "batch"]  # the next player's legal moves, as bits
    passed: Bool[Tensor, "batch"]  # the next player's opponent had to pass


def _first_turn(batch_size: int, size: int) -> _Turn:
    black, white = _sides(initial_boards(batch_size, size), torch.full((batch_size,), BLACK))
    return _Turn(black, white, torch.full((batch_size,), BLACK), _legal_bits(black, white, size), torch.zeros(batch_size, dtype=torch.bool))


def _next_turn(turn: _Turn, moves: Int[Tensor, "batch"], size: int) -> _Turn:
    """Play `moves` (-1 where a game ends here), then find who moves next: the opponent, or the
    same player again if the opponent must pass, or no one (0) if neither can move."""
    black_moves = turn.players == BLACK
    mine, theirs = torch.where(black_moves, turn.black, turn.white), torch.where(black_moves, turn.white, turn.black)
    mine, theirs = _play_bits(mine, theirs, moves, size)
    black, white = torch.where(black_moves, mine, theirs), torch.where(black_moves, theirs, mine)
    opponent_legal, mover_legal = _legal_bits(theirs, mine, size), _legal_bits(mine, theirs, size)
    still_playing = (moves >= 0) & (turn.players != 0)
    opponent_can, mover_can = (opponent_legal != 0) & still_playing, (mover_legal != 0) & still_playing
    players = torch.where(opponent_can, -turn.players, torch.where(mover_can, turn.players, 0))
    legal = torch.where(opponent_can, opponent_legal, torch.where(mover_can, mover_legal, 0))
    return _Turn(black, white, players, legal, ~opponent_can & mover_can)


@dataclass(frozen=True)
class OthelloTask:
    """Random legal games of mini-Othello, as move tokens after a BOS token.

    `sample` plays uniformly random legal moves, like the synthetic dataset of
    Li et al. 2023 ("Emergent World Representations", section 2). A model trained on
    it is trained on `loss`: at every position still in play, cross-entropy
    against the uniform distribution over the legal moves, which is what a perfect
    next-move predictor for random games outputs.
    """

    size: int = 6

    def __post_init__(self) -> None:
        check_int_fields(self, "size")
        if self.size not in (4, 6):  # an 8 x 8 bitboard needs all 64 bits, and torch has no unsigned int64
            raise ValueError(f"OthelloTask.size must be 4 or 6, got {self.size}.")

    @property
    def n_cells(self) -> int:
        return self.size * self.size

    @property
    def max_moves(self) -> int:
        return self.n_cells - 4

    @property
    def bos(self) -> int:
        return self.n_cells

    @property
    def pad(self) -> int:
        return self.n_cells + 1

    @property
    def d_vocab(self) -> int:
        return self.n_cells + 2

    @property
    def n_ctx(self) -> int:
        return self.max_moves + 1

    @property
    def target_mask(self) -> Bool[Tensor, "pos_minus_1"]:
        # Which predictions count depends on each game's length; `loss` reads it from the states.
        return torch.ones(self.n_ctx - 1, dtype=torch.bool)

    def sample(self, batch_size: int, generator: torch.Generator) -> Int[Tensor, "batch pos"]:
        """Random legal games: BOS, then moves, then PAD once the game is over."""
        check_sample_args(batch_size, generator)
        tokens = torch.full((batch_size, self.n_ctx), self.pad)
        tokens[:, 0] = self.bos
        turn = _first_turn(batch_size, self.size)
        for position in range(1, self.n_ctx):
            in_play = turn.players != 0
            if not in_play.any():
                break
            # Finished games draw from all cells; their draw is thrown away.
            weights = torch.where(in_play[:, None], _from_bits(turn.legal, self.n_cells).float(), 1.0)
            moves = torch.where(in_play, torch.multinomial(weights, 1, generator=generator)[:, 0], -1)
            tokens[:, position] = torch.where(in_play, moves, self.pad)
            turn = _next_turn(turn, moves, self.size)
        return tokens

    def replay(self, tokens: Int[Tensor, "batch pos"]) -> GameStates:
        """The true state at every position of `tokens` (games from `sample`, or prefixes of them)."""
        self._validate(tokens)
        turn = _first_turn(tokens.shape[0], self.size)
        turns = [turn]
        for position in range(1, tokens.shape[1]):
            moves = tokens[:, position].cpu()
            is_move = moves < self.n_cells
            if (is_move & (turn.players == 0)).any():
                raise ValueError(f"A game in tokens has a move at position {position} after it was over.")
            turn = _next_turn(turn, torch.where(is_move, moves, -1), self.size)
            turns.append(turn)
        black, white, players, legal, passed = (torch.stack(parts, dim=1) for parts in zip(*turns))
        boards = _cells(black, self.size).long() * BLACK + _cells(white, self.size).long() * WHITE
        return GameStates(boards, players, _cells(legal, self.size).flatten(-2), passed)

    def loss(self, logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
        """Cross-entropy against the uniform distribution over legal moves, at positions in play."""
        states = self.replay(tokens)
        _check_move_logits(logits, states)
        legal = states.legal.to(logits.device)
        target = legal.float() / legal.sum(dim=-1, keepdim=True).clamp(min=1)
        log_probs = logits[..., : self.n_cells].log_softmax(dim=-1)
        per_position = -torch.where(legal, target * log_probs, 0.0).sum(dim=-1)  # 0 * -inf would be nan
        return per_position[states.in_play.to(logits.device)].mean()

    def accuracy(self, logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> float:
        """Fraction of positions in play where the top-1 predicted move is legal."""
        return legal_move_accuracy(logits, self.replay(tokens))["top1_legal"]

    def _validate(self, tokens: Tensor) -> None:
        check_tensor(tokens, "tokens", 2, floating=False)
        if tokens.dtype != torch.long:
            raise ValueError(f"tokens must be a [batch pos] tensor of longs, got {tuple(tokens.shape)} {tokens.dtype}.")
        if not (tokens[:, 0] == self.bos).all():
            raise ValueError(f"Every game must start with BOS (token {self.bos}).")
        if ((tokens < 0) | (tokens >= self.d_vocab)).any():
            raise ValueError(f"tokens must lie in [0, {self.d_vocab}), got values from {tokens.min()} to {tokens.max()}.")

    def cell_name(self, cell: int) -> str:
        if not 0 <= int(cell) < self.n_cells:
            raise ValueError(f"cell must be in [0, {self.n_cells}), got {cell!r}.")
        row, col = divmod(int(cell), self.size)
        return f"{'ABCDEFGH'[col]}{row + 1}"

    def decode(self, tokens: Int[Tensor, "pos"]) -> str:
        names = {self.bos: "", self.pad: ""}
        return " ".join(names.get(int(t), self.cell_name(int(t)) if int(t) < self.n_cells else "") for t in tokens).strip()


def legal_move_accuracy(logits: Float[Tensor, "batch pos d_vocab"], states: GameStates) -> dict[str, float]:
    """How well the logits predict the legal moves, over the positions in play.

    - `top1_legal`: the most likely move is legal.
    - `topk_exact`: with k the number of legal moves, the k most likely moves are exactly the legal set.
    - `illegal_mass`: the probability the model puts on illegal moves (a softmax over the cells,
      the distribution `OthelloTask.loss` trains), on average.
    """
    _check_move_logits(logits, states)
    check_finite(logits, "logits")
    n_cells = states.legal.shape[-1]
    legal = states.legal.to(logits.device)
    in_play = states.in_play.to(logits.device)
    move_logits = logits[..., :n_cells]
    top1_legal = legal.gather(-1, move_logits.argmax(dim=-1, keepdim=True))[..., 0]
    ranks = move_logits.argsort(dim=-1, descending=True).argsort(dim=-1)
    predicted_set = ranks < legal.sum(dim=-1, keepdim=True)
    topk_exact = (predicted_set == legal).all(dim=-1)
    illegal_mass = torch.where(legal, 0.0, move_logits.softmax(dim=-1)).sum(dim=-1)
    return {
        "top1_legal": top1_legal[in_play].float().mean().item(),
        "topk_exact": topk_exact[in_play].float().mean().item(),
        "illegal_mass": illegal_mass[in_play].mean().item(),
    }


def _check_move_logits(logits: object, states: GameStates) -> None:
    """Logits with one row per position of the replayed games and a logit for every cell."""
    if not isinstance(states, GameStates):
        raise TypeError(f"states must be the GameStates that OthelloTask.replay returns, got {type(states).__name__}.")
    check_tensor(logits, "logits", 3, floating=True)
    batch, pos, n_cells = states.legal.shape
    if logits.shape[:2] != (batch, pos) or logits.shape[-1] < n_cells:
        raise ValueError(f"logits must be [batch={batch} pos={pos} d_vocab>={n_cells}] like the games, got {describe(logits)}.")


def board_after(task: OthelloTask, moves: list[str]) -> Int[Tensor, "row col"]:
    """The board after a game written as cell names, e.g. `["C2", "B2"]`: for hand-worked examples."""
    names = {task.cell_name(cell): cell for cell in range(task.n_cells)}
    unknown = [move for move in moves if str(move).upper() not in names]
    if unknown:
        raise ValueError(f"moves must be cell names from A1 to {task.cell_name(task.n_cells - 1)}, got {unknown}.")
    tokens = torch.tensor([[task.bos] + [names[m.upper()] for m in moves]])
    return task.replay(tokens).boards[0, -1]
