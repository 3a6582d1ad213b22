"""Sorting: read a list of digits, then write it in ascending order (chapter 01).

A sequence is `BOS x_1 … x_L SEP y_1 … y_L` with `y` the sorted `x`. The answer is
determined by the input, so a perfect model reaches zero loss on the sorted half:
how close a model gets is a number we can check, not a judgement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from mechlearn.tasks.base import check_int_fields, check_sample_args


@dataclass(frozen=True)
class SortingTask:
    n_digits: int = 10
    length: int = 6

    def __post_init__(self) -> None:
        check_int_fields(self, "n_digits", "length")
        if self.n_digits < 2 or self.length < 1:
            raise ValueError(f"SortingTask needs n_digits >= 2 and length >= 1, got {self}.")

    @property
    def sep(self) -> int:
        return self.n_digits

    @property
    def bos(self) -> int:
        return self.n_digits + 1

    @property
    def d_vocab(self) -> int:
        return self.n_digits + 2

    @property
    def n_ctx(self) -> int:
        return 2 * self.length + 2

    @property
    def prompt_length(self) -> int:
        """Tokens up to and including SEP: what a model is given before it sorts."""
        return self.length + 2

    def sample(self, batch_size: int, generator: torch.Generator) -> Int[Tensor, "batch pos"]:
        check_sample_args(batch_size, generator)
        digits = torch.randint(0, self.n_digits, (batch_size, self.length), generator=generator)
        bos = torch.full((batch_size, 1), self.bos)
        sep = torch.full((batch_size, 1), self.sep)
        return torch.cat([bos, digits, sep, digits.sort(dim=-1).values], dim=-1)

    @property
    def target_mask(self) -> Bool[Tensor, "pos_minus_1"]:
        # Prediction i is of token i + 1; only the sorted half is determined by the input.
        mask = torch.zeros(self.n_ctx - 1, dtype=torch.bool)
        mask[self.prompt_length - 1 :] = True
        return mask

    def decode(self, tokens: Int[Tensor, "pos"]) -> str:
        names = {self.bos: "", self.sep: "→"}
        return " ".join(names.get(int(t), str(int(t))) for t in tokens).strip()
