"""The interface every synthetic task implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from mechlearn.validation import check_positive_int, is_int


@runtime_checkable
class Task(Protocol):
    d_vocab: int
    n_ctx: int

    def sample(self, batch_size: int, generator: torch.Generator) -> Int[Tensor, "batch pos"]:
        """Fresh sequences, all of length `n_ctx`, drawn with `generator`."""
        ...

    @property
    def target_mask(self) -> Bool[Tensor, "pos_minus_1"]:
        """Which of the `n_ctx - 1` next-token predictions the loss counts."""
        ...

    def decode(self, tokens: Int[Tensor, "pos"]) -> str:
        """A sequence as text a person can read."""
        ...


def check_sample_args(batch_size: object, generator: object) -> None:
    """`sample`'s arguments: a positive batch size, and a generator on the CPU, where every task draws."""
    check_positive_int(batch_size, "batch_size")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}.")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator (tasks sample on the CPU, then move), got one on {generator.device}.")


def check_int_fields(task: object, *names: str) -> None:
    """Refuse a float or bool where a task's size must be an int (the range checks come after)."""
    for name in names:
        if not is_int(getattr(task, name)):
            raise ValueError(f"{type(task).__name__}.{name} must be an int, got {getattr(task, name)!r}.")
