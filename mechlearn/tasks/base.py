"""The interface every synthetic task implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Int
from torch import Tensor


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
