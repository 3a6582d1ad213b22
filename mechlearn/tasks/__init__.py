"""Synthetic tasks whose latent structure we know, so every result can be graded.

A task is a small object with `d_vocab`, `n_ctx`, `sample(batch_size, generator)` and
`target_mask` (which next-token predictions count towards the loss). A task may also define
`loss(logits, tokens)` and `accuracy(logits, tokens)` when next-token prediction is not its
objective (Othello grades whole sets of legal moves).
"""

from mechlearn.tasks.base import Task
from mechlearn.tasks.induction import FixedOffsetRepeatTask, InductionTask, LabelledTokens
from mechlearn.tasks.othello import GameStates, OthelloTask
from mechlearn.tasks.sorting import SortingTask

__all__ = ["Task", "SortingTask", "InductionTask", "FixedOffsetRepeatTask", "LabelledTokens", "OthelloTask", "GameStates"]
