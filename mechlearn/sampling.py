"""Sampling from a model, greedily or with a temperature (taught in chapter 01)."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlearn.device import generator_for
from mechlearn.models import model_device


def sample_next_token(
    logits: Float[Tensor, "batch d_vocab"], temperature: float = 1.0, generator: torch.Generator | None = None
) -> Int[Tensor, "batch"]:
    """Greedy (the most likely token) when `temperature == 0`, else a draw from softmax(logits / T)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = (logits / temperature).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt: Int[Tensor, "batch prompt_pos"],
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
) -> Int[Tensor, "batch pos"]:
    """Extend `prompt` one token at a time, feeding each sample back in."""
    generator = generator_for("sampling.generate", seed, model_device(model))
    tokens = prompt.to(model_device(model))
    for _ in range(max_new_tokens):
        next_token = sample_next_token(model(tokens)[:, -1], temperature, generator)
        tokens = torch.cat([tokens, next_token[:, None]], dim=-1)
    return tokens
