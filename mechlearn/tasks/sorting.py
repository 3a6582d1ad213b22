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
        return self._with_sorted_half(digits)

    def lowered_pairs(
        self, batch_size: int, pos: int, generator: torch.Generator
    ) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]:
        """Pairs of lists that differ in one digit: in the second, the digit at `pos` is lowered
        below every other digit of the list, so the first sorted digit changes (chapter 02's
        activation patching). The first lists use the digits 1 to n_digits - 1, so there is
        always a smaller digit to lower to.
        """
        check_sample_args(batch_size, generator)
        if not isinstance(pos, int) or isinstance(pos, bool) or not 1 <= pos <= self.length:
            raise ValueError(f"pos must be the position of a digit, an int in [1, {self.length}], got {pos!r}.")
        digits = torch.randint(1, self.n_digits, (batch_size, self.length), generator=generator)
        originals = self._with_sorted_half(digits)
        lowered_digits = digits.clone()
        smallest = digits.min(dim=-1).values
        lowered_digits[:, pos - 1] = (torch.rand(batch_size, generator=generator) * smallest).long()
        return originals, self._with_sorted_half(lowered_digits)

    def _with_sorted_half(self, digits: Int[Tensor, "batch length"]) -> Int[Tensor, "batch seq"]:
        bos = torch.full((len(digits), 1), self.bos)
        sep = torch.full((len(digits), 1), self.sep)
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
