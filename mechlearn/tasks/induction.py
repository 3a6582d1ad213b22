"""Sequences where copying from earlier in the context pays off (chapter 03).

`InductionTask` is the data the `induction-2l` zoo model learns from. It mixes bigram
text (a fixed random Markov chain: learnable token by token, through the direct path)
with random tokens in which segments are repeated at random offsets and lengths. The
repeated tokens can only be predicted by finding the earlier occurrence of the current
token and copying what came next: what an induction head does. Because the offset
changes from sequence to sequence, position alone never says where the copy is.

`FixedOffsetRepeatTask` is the pitfall: `[BOS, x, x]` with the repeat always `length`
tokens back. A single attention layer predicts its second half by position alone, no
induction head needed, so it is a poor test of in-context learning.

Both label their tokens: `repeated` marks tokens predictable by induction (inside a
second occurrence, after its first token), `first` marks the same tokens in the earlier
occurrence, so the two losses compare the same tokens with and without a copy to read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from mechlearn.tasks.base import check_int_fields, check_sample_args
from mechlearn.validation import is_number


class LabelledTokens(NamedTuple):
    tokens: Int[Tensor, "batch pos"]
    repeated: Bool[Tensor, "batch pos"]  # predictable by induction: in a copy, after its first token
    first: Bool[Tensor, "batch pos"]  # the same tokens in the occurrence the copy was taken from


def _decode(tokens: Int[Tensor, "pos"], bos: int) -> str:
    return " ".join("|" if int(t) == bos else str(int(t)) for t in tokens)


@dataclass(frozen=True)
class InductionTask:
    """Two kinds of sequence, mixed in every batch: bigram text, and random tokens with repeats.

    Every sequence is BOS then `n_ctx - 1` tokens from `range(n_tokens)`.

    - A fraction `bigram_fraction` of the sequences walk a fixed random Markov chain in
      which each token has `branching` possible successors, all equally likely. The chain
      is drawn from `chain_seed`, so it is part of the task and a model can learn it.
    - The others are uniform random tokens in which 1 to `n_repeats` segments, of lengths in
      `[min_repeat_len, max_repeat_len]`, are copied to a later place at a random offset.

    The two are kept apart on purpose: inside bigram text, a layer-0 head can find the
    previous token by content (which tokens here could have preceded me?) rather than by
    position, and the model then solves the repeats with a circuit the standard
    previous-token score does not see. Random tokens leave position as the only way.
    """

    n_tokens: int = 48
    n_ctx: int = 33
    n_repeats: int = 2
    min_repeat_len: int = 4
    max_repeat_len: int = 12
    bigram_fraction: float = 0.1
    branching: int = 16
    chain_seed: int = 0

    def __post_init__(self) -> None:
        check_int_fields(self, "n_tokens", "n_ctx", "n_repeats", "min_repeat_len", "max_repeat_len", "branching", "chain_seed")
        if not is_number(self.bigram_fraction):
            raise ValueError(f"InductionTask.bigram_fraction must be a number in [0, 1), got {self.bigram_fraction!r}.")
        if self.n_tokens < 2:
            raise ValueError(f"InductionTask.n_tokens must be at least 2, got {self.n_tokens}.")
        if not 1 <= self.branching <= self.n_tokens:
            raise ValueError(f"InductionTask.branching must be in [1, n_tokens={self.n_tokens}], got {self.branching}.")
        if not 0 <= self.bigram_fraction < 1:
            raise ValueError(f"InductionTask.bigram_fraction must be in [0, 1), got {self.bigram_fraction}.")
        if self.n_repeats < 1:
            raise ValueError(f"InductionTask.n_repeats must be at least 1, got {self.n_repeats}.")
        if not 2 <= self.min_repeat_len <= self.max_repeat_len:
            raise ValueError(
                f"InductionTask needs 2 <= min_repeat_len <= max_repeat_len, got {self.min_repeat_len} and {self.max_repeat_len}."
            )
        if 2 * self.max_repeat_len > self.n_ctx - 1:
            raise ValueError(
                f"InductionTask.n_ctx={self.n_ctx} is too short for repeats of up to {self.max_repeat_len} tokens "
                "(the original and its copy must both fit after BOS)."
            )

    @property
    def bos(self) -> int:
        return self.n_tokens

    @property
    def d_vocab(self) -> int:
        return self.n_tokens + 1

    @cached_property
    def successors(self) -> Int[Tensor, "n_tokens branching"]:
        """Row t lists the tokens that may follow t in the bigram chain."""
        generator = torch.Generator().manual_seed(self.chain_seed)
        return torch.stack([torch.randperm(self.n_tokens, generator=generator)[: self.branching] for _ in range(self.n_tokens)])

    @property
    def bigram_loss(self) -> float:
        """The best possible loss on bigram text after its first token: log(branching) nats."""
        return math.log(self.branching)

    @property
    def target_mask(self) -> Bool[Tensor, "pos_minus_1"]:
        return torch.ones(self.n_ctx - 1, dtype=torch.bool)

    def sample(self, batch_size: int, generator: torch.Generator) -> Int[Tensor, "batch pos"]:
        return self.sample_labelled(batch_size, generator).tokens

    def sample_labelled(self, batch_size: int, generator: torch.Generator) -> LabelledTokens:
        """Sequences with the masks of their repeated tokens and of those tokens' first occurrences."""
        check_sample_args(batch_size, generator)
        is_bigram = torch.rand(batch_size, generator=generator) < self.bigram_fraction
        copy_from = self._copy_sources(batch_size, generator)
        copy_from[is_bigram] = -1
        tokens = torch.randint(0, self.n_tokens, (batch_size, self.n_ctx), generator=generator)
        # Originals never overlap copies, so one gather copies every segment.
        tokens = torch.where(copy_from >= 0, tokens.gather(-1, copy_from.clamp(min=0)), tokens)
        tokens[is_bigram] = self._walk_chain(int(is_bigram.sum()), generator)
        tokens[:, 0] = self.bos
        # Token t can be predicted by induction when t - 1 is a copy of the token just before
        # the original of t: then "what followed t - 1 last time" is the answer.
        previous_copied_from = torch.cat([torch.full((batch_size, 1), -1), copy_from[:, :-1]], dim=-1)
        repeated = (copy_from >= 1) & (previous_copied_from == copy_from - 1)
        first = torch.zeros_like(repeated)
        rows, positions = repeated.nonzero(as_tuple=True)
        first[rows, copy_from[rows, positions]] = True
        return LabelledTokens(tokens, repeated, first)

    def _copy_sources(self, batch_size: int, generator: torch.Generator) -> Int[Tensor, "batch pos"]:
        """The position each token is copied from, or -1 where it is not a copy.

        Each repeat draws its length, then its offset (how far back the original is)
        uniformly from every offset that fits, then where the copy goes. A repeat that would
        overlap an earlier one is dropped, so a sequence holds 1 to n_repeats of them.
        """
        positions = torch.arange(self.n_ctx)
        copy_from = torch.full((batch_size, self.n_ctx), -1)
        used = torch.zeros(batch_size, self.n_ctx, dtype=torch.bool)
        used[:, 0] = True  # BOS
        for _ in range(self.n_repeats):
            length = torch.randint(self.min_repeat_len, self.max_repeat_len + 1, (batch_size, 1), generator=generator)
            # offset in [length, n_ctx - 1 - length], so original and copy fit after BOS without overlapping
            offset = length + _uniform_below(self.n_ctx - 2 * length, generator)
            copy_start = 1 + offset + _uniform_below(self.n_ctx - length - offset, generator)
            in_copy = (positions >= copy_start) & (positions < copy_start + length)
            in_original = (positions >= copy_start - offset) & (positions < copy_start - offset + length)
            fits = ~((in_copy | in_original) & used).any(dim=-1, keepdim=True)
            copy_from = torch.where(in_copy & fits, positions - offset, copy_from)
            used |= (in_copy | in_original) & fits
        return copy_from

    def _walk_chain(self, batch_size: int, generator: torch.Generator) -> Int[Tensor, "batch pos"]:
        """Bigram text: a uniform first token, then each token one of its predecessor's successors."""
        tokens = torch.full((batch_size, self.n_ctx), self.bos)
        tokens[:, 1] = torch.randint(0, self.n_tokens, (batch_size,), generator=generator)
        choices = torch.randint(0, self.branching, (batch_size, self.n_ctx), generator=generator)
        for position in range(2, self.n_ctx):
            tokens[:, position] = self.successors[tokens[:, position - 1], choices[:, position]]
        return tokens

    def decode(self, tokens: Int[Tensor, "pos"]) -> str:
        return _decode(tokens, self.bos)


def _uniform_below(high: Int[Tensor, "batch 1"], generator: torch.Generator) -> Int[Tensor, "batch 1"]:
    """An integer drawn uniformly from [0, high) in each row (torch.randint takes one bound for all)."""
    return (torch.rand(high.shape, generator=generator) * high).long()


@dataclass(frozen=True)
class FixedOffsetRepeatTask:
    """`[BOS, x_1 … x_L, x_1 … x_L]` with `x` uniform: the repeat is always `length` back.

    The pitfall of chapter 03: a one-layer model learns to attend `length - 1` positions
    back by position alone, so it solves this task without an induction head.
    """

    n_tokens: int = 48
    length: int = 24

    def __post_init__(self) -> None:
        check_int_fields(self, "n_tokens", "length")
        if self.n_tokens < 2 or self.length < 2:
            raise ValueError(f"FixedOffsetRepeatTask needs n_tokens >= 2 and length >= 2, got {self}.")

    @property
    def bos(self) -> int:
        return self.n_tokens

    @property
    def d_vocab(self) -> int:
        return self.n_tokens + 1

    @property
    def n_ctx(self) -> int:
        return 2 * self.length + 1

    @property
    def target_mask(self) -> Bool[Tensor, "pos_minus_1"]:
        return torch.ones(self.n_ctx - 1, dtype=torch.bool)

    def sample(self, batch_size: int, generator: torch.Generator) -> Int[Tensor, "batch pos"]:
        return self.sample_labelled(batch_size, generator).tokens

    def sample_labelled(self, batch_size: int, generator: torch.Generator) -> LabelledTokens:
        """Sequences with the masks of the second half (after its first token) and the matching first half."""
        check_sample_args(batch_size, generator)
        first_half = torch.randint(0, self.n_tokens, (batch_size, self.length), generator=generator)
        bos = torch.full((batch_size, 1), self.bos)
        tokens = torch.cat([bos, first_half, first_half], dim=-1)
        positions = torch.arange(self.n_ctx)
        repeated = (positions > self.length + 1).expand(batch_size, -1)
        first = ((positions > 1) & (positions <= self.length)).expand(batch_size, -1)
        return LabelledTokens(tokens, repeated.clone(), first.clone())

    def decode(self, tokens: Int[Tensor, "pos"]) -> str:
        return _decode(tokens, self.bos)
