"""The zoo's recipes: for each model, the task, the shape, the training settings and the seed.

Adding a model to the zoo means adding a recipe here and a line to RECIPES, then running
`mechlearn.zoo.train(name)` to write its checkpoint and card.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechlearn.induction import (
    first_record_where,
    induction_circuit_summary,
    induction_scores,
    loss_on_tokens,
    repeated_tokens_patterns,
    training_monitor,
)
from mechlearn.models import ModelConfig, make_model
from mechlearn.probes import accuracy_by_layer, residual_stack
from mechlearn.tasks import FixedOffsetRepeatTask, InductionTask, LabelledTokens, SortingTask, Task
from mechlearn.tasks.othello import OthelloTask, legal_move_accuracy
from mechlearn.train import EvalFn, TrainConfig
from mechlearn.validation import check_positive_int

HELD_OUT_SEED = 10_000  # held-out evaluation data never share a seed with training data


@dataclass(frozen=True)
class Recipe:
    """Everything needed to rebuild a zoo model from nothing."""

    description: str
    chapter: str
    task: Task
    model: ModelConfig
    training: TrainConfig
    monitor: Callable[[], EvalFn] | None = None
    """Makes a fresh `eval_fn` for one training run; what it returns joins each history record."""
    card_metrics: Callable[[TransformerBridge, list[dict[str, float]]], dict[str, Any]] | None = None
    """Extra numbers for the card, from the trained model and its training history."""


def _sorter_recipe() -> Recipe:
    task = SortingTask(n_digits=10, length=6)
    return Recipe(
        description="Sorts 6 digits: reads `BOS x1..x6 SEP` and writes the digits in ascending order.",
        chapter="1_foundations/01_transformers_from_scratch",
        task=task,
        model=ModelConfig(d_vocab=task.d_vocab, n_ctx=task.n_ctx, d_model=64, n_layers=2, n_heads=4, d_head=16, d_mlp=256, seed=0),
        training=TrainConfig(steps=1000, batch_size=64, lr=3e-3, eval_every=100, seed=0),
    )


# --- chapter 03: induction heads ----------------------------------------------------------------

INDUCTION_TASK = InductionTask(
    n_tokens=48, n_ctx=33, n_repeats=2, min_repeat_len=4, max_repeat_len=12, bigram_fraction=0.1, branching=16, chain_seed=0
)
INDUCTION_SCORE_TARGET = 0.8  # the score the chapter asserts, and the one whose arrival time we report


def held_out_labelled(task: InductionTask | FixedOffsetRepeatTask, n_sequences: int = 1000) -> LabelledTokens:
    """Labelled sequences drawn with the held-out seed: the batch the chapter-03 cards are measured on."""
    check_positive_int(n_sequences, "n_sequences")
    return task.sample_labelled(n_sequences, torch.Generator().manual_seed(HELD_OUT_SEED))


def _induction_monitor() -> EvalFn:
    task = INDUCTION_TASK
    return training_monitor(held_out_labelled(task, 256), seq_len=(task.n_ctx - 1) // 2, bos=task.bos)


def _induction_card_metrics(model: TransformerBridge, history: list[dict[str, float]]) -> dict[str, Any]:
    arrival = first_record_where(history, "induction_score_L1", INDUCTION_SCORE_TARGET)
    return {
        "circuit": induction_circuit_summary(model, held_out_labelled(INDUCTION_TASK), INDUCTION_TASK.bos),
        "step_to_induction": None if arrival is None else arrival["step"],
        "seconds_to_induction": None if arrival is None else round(arrival["seconds"], 1),
    }


def _induction_recipe() -> Recipe:
    task = INDUCTION_TASK
    return Recipe(
        description="A 2-layer attention-only transformer with a previous-token head in layer 0 and induction "
        "heads in layer 1, trained on bigram text mixed with random tokens repeated at random offsets.",
        chapter="1_foundations/03_induction_heads",
        task=task,
        model=ModelConfig(
            d_vocab=task.d_vocab, n_ctx=task.n_ctx, d_model=64, n_layers=2, n_heads=2, d_head=32, d_mlp=None, seed=0
        ),
        training=TrainConfig(steps=3000, batch_size=64, lr=6e-3, weight_decay=0.0, eval_every=50, eval_batch_size=256, seed=0),
        monitor=_induction_monitor,
        card_metrics=_induction_card_metrics,
    )


FIXED_OFFSET_TASK = FixedOffsetRepeatTask(n_tokens=INDUCTION_TASK.n_tokens, length=(INDUCTION_TASK.n_ctx - 1) // 2)


def _fixed_offset_monitor() -> EvalFn:
    task = FIXED_OFFSET_TASK
    return training_monitor(held_out_labelled(task, 256), seq_len=task.length, bos=task.bos)


@torch.no_grad()
def _fixed_offset_card_metrics(model: TransformerBridge, history: list[dict[str, float]]) -> dict[str, Any]:
    """How the one-layer model does on its own fixed offset, and on InductionTask's random offsets."""
    fixed, random_offsets = held_out_labelled(FIXED_OFFSET_TASK), held_out_labelled(INDUCTION_TASK)
    fixed_logits, random_logits = model(fixed.tokens), model(random_offsets.tokens)
    shorter = FIXED_OFFSET_TASK.length // 2
    return {
        "uniform_loss": math.log(FIXED_OFFSET_TASK.n_tokens),
        "loss_repeated_fixed_offset": loss_on_tokens(fixed_logits, fixed.tokens, fixed.repeated).item(),
        "loss_first_fixed_offset": loss_on_tokens(fixed_logits, fixed.tokens, fixed.first).item(),
        "loss_repeated_random_offsets": loss_on_tokens(random_logits, random_offsets.tokens, random_offsets.repeated).item(),
        "loss_first_random_offsets": loss_on_tokens(random_logits, random_offsets.tokens, random_offsets.first).item(),
        # A positional head looks like an induction head when measured at the offset it learned.
        f"induction_scores_seq_len_{FIXED_OFFSET_TASK.length}": _induction_scores_at(model, FIXED_OFFSET_TASK.length),
        f"induction_scores_seq_len_{shorter}": _induction_scores_at(model, shorter),
    }


def _induction_scores_at(model: TransformerBridge, seq_len: int) -> list[list[float]]:
    _, patterns = repeated_tokens_patterns(model, seq_len, bos=FIXED_OFFSET_TASK.bos)
    return induction_scores(patterns, seq_len).tolist()


def _fixed_offset_recipe() -> Recipe:
    task = FIXED_OFFSET_TASK
    return Recipe(
        description="The pitfall of chapter 03: a 1-layer attention-only transformer that predicts the second "
        "half of [BOS, x, x] by position alone, and fails on repeats at random offsets.",
        chapter="1_foundations/03_induction_heads",
        task=task,
        model=ModelConfig(
            d_vocab=task.d_vocab, n_ctx=task.n_ctx, d_model=64, n_layers=1, n_heads=2, d_head=32, d_mlp=None, seed=0
        ),
        training=TrainConfig(steps=1000, batch_size=64, lr=3e-3, weight_decay=0.0, eval_every=50, seed=0),
        monitor=_fixed_offset_monitor,
        card_metrics=_fixed_offset_card_metrics,
    )


# --- chapter 04: a world model you can check ---------------------------------------------------

OTHELLO_TASK = OthelloTask(size=6)


def _othello_monitor() -> EvalFn:
    games = OTHELLO_TASK.sample(512, torch.Generator().manual_seed(HELD_OUT_SEED))
    states = OTHELLO_TASK.replay(games)

    @torch.no_grad()
    def held_out_legal_moves(model: torch.nn.Module, tokens: Tensor) -> dict[str, float]:
        logits = model(games.to(tokens.device))
        return {f"held_out_{name}": value for name, value in legal_move_accuracy(logits, states).items()}

    return held_out_legal_moves


@torch.no_grad()
def _othello_card_metrics(model: TransformerBridge, history: list[dict[str, float]]) -> dict[str, Any]:
    """Legal moves and a mine / theirs board probe on held-out games, each beside a random model's."""
    random_model = make_model(dataclasses.replace(model.mechlearn_config, seed=model.mechlearn_config.seed + 1))
    metrics: dict[str, Any] = {}
    for prefix, measured in (("held_out", model), ("random_model", random_model)):
        metrics |= {f"{prefix}_{name}": round(value, 5) for name, value in _othello_legal_moves(measured).items()}
        by_layer = _mine_theirs_probe_by_layer(measured)
        metrics |= {f"{prefix}_probe_mine_theirs_by_layer": [round(v, 5) for v in by_layer], f"{prefix}_probe_mine_theirs_best": round(max(by_layer), 5)}
    return metrics


def _othello_legal_moves(model: TransformerBridge) -> dict[str, float]:
    tokens = OTHELLO_TASK.sample(1000, torch.Generator().manual_seed(HELD_OUT_SEED))
    return legal_move_accuracy(model(tokens), OTHELLO_TASK.replay(tokens))


def _mine_theirs_probe_by_layer(model: TransformerBridge, n_train_games: int = 2000, n_test_games: int = 500) -> list[float]:
    """Test accuracy of a linear mine / empty / theirs probe per cell, after 0..n_layers blocks.

    Probes train on games drawn with HELD_OUT_SEED + 1 and are tested on HELD_OUT_SEED games, at
    every position in play but the opening (the same board in every game): chapter 04's setup.
    """
    train_games = OTHELLO_TASK.sample(n_train_games, torch.Generator().manual_seed(HELD_OUT_SEED + 1))
    test_games = OTHELLO_TASK.sample(n_test_games, torch.Generator().manual_seed(HELD_OUT_SEED))
    (train_stack, train_labels), (test_stack, test_labels) = _stack_and_labels(model, train_games), _stack_and_labels(model, test_games)
    with torch.enable_grad():
        return accuracy_by_layer(train_stack, train_labels, test_stack, test_labels, n_classes=3, progress=False).tolist()


def _stack_and_labels(model: TransformerBridge, games: Tensor) -> tuple[Tensor, Tensor]:
    states = OTHELLO_TASK.replay(games)
    keep = states.in_play.clone()
    keep[:, 0] = False  # the opening board is the same in every game
    stack = torch.cat([residual_stack(model, chunk) for chunk in games.split(500)], dim=1)
    return stack[:, keep], states.cell_classes("mine_theirs")[keep]


def _othello_recipe() -> Recipe:
    task = OTHELLO_TASK
    return Recipe(
        description="Predicts the legal next moves of 6x6 Othello from the moves so far; it never sees the board.",
        chapter="1_foundations/04_probing_world_models",
        task=task,
        model=ModelConfig(d_vocab=task.d_vocab, n_ctx=task.n_ctx, d_model=128, n_layers=4, n_heads=4, d_head=32, d_mlp=512, seed=0),
        # 2M fresh games, about 75 minutes on 2 CPU cores; the held-out curves still improve at the end.
        training=TrainConfig(steps=8000, batch_size=256, lr=3e-3, warmup_steps=200, eval_every=250, eval_batch_size=512, seed=0),
        monitor=_othello_monitor,
        card_metrics=_othello_card_metrics,
    )


RECIPES: dict[str, Recipe] = {
    "sort-digits-2l": _sorter_recipe(),
    "induction-2l": _induction_recipe(),
    "repeat-fixed-offset-1l": _fixed_offset_recipe(),
    "othello-6x6-4l": _othello_recipe(),
}
