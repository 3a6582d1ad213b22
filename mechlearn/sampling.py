"""Sampling from a model: greedily, with a temperature, top-k or top-p, and greedily with a KV cache (taught in chapter 01)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlearn.device import generator_for
from mechlearn.models import model_device, vocab_and_context
from mechlearn.transformer import Transformer, empty_kv_cache, forward_with_kv_cache
from mechlearn.validation import check_tensor, check_token_ids, is_int, is_number


def _check_temperature(temperature: object) -> None:
    if not (is_number(temperature) and 0 <= temperature < math.inf):
        raise ValueError(f"temperature must be >= 0 and finite (0 is greedy), got {temperature!r}.")


def _check_sampling_arguments(logits: object, temperature: object, generator: object) -> None:
    check_tensor(logits, "logits", 2, floating=True)
    if not (logits < math.inf).all():  # -inf is allowed: it is how a token is masked out
        raise ValueError("logits contains NaN or +inf; find where it was produced.")
    _check_temperature(temperature)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be None or a torch.Generator, got {type(generator).__name__}.")
    if generator is not None and generator.device.type != logits.device.type:
        raise ValueError(f"generator is on {generator.device} but logits is on {logits.device}; make it with torch.Generator({logits.device.type!r}).")


def sample_next_token(
    logits: Float[Tensor, "batch d_vocab"], temperature: float = 1.0, generator: torch.Generator | None = None
) -> Int[Tensor, "batch"]:
    """Greedy (the most likely token) when `temperature == 0`, else a draw from softmax(logits / T)."""
    _check_sampling_arguments(logits, temperature, generator)
    return _draw(logits, temperature, generator)


def _draw(logits: Float[Tensor, "batch d_vocab"], temperature: float, generator: torch.Generator | None) -> Int[Tensor, "batch"]:
    """`sample_next_token` on arguments already checked (top-k and top-p check theirs once)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = (logits / temperature).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]


def sample_top_k(
    logits: Float[Tensor, "batch d_vocab"], k: int, temperature: float = 1.0, generator: torch.Generator | None = None
) -> Int[Tensor, "batch"]:
    """A draw from softmax(logits / T) renormalised over each row's k largest logits; greedy at T = 0.

    Chapter 01 teaches it, after Fan et al. (2018), *Hierarchical Neural Story Generation*, §5.4.
    """
    _check_sampling_arguments(logits, temperature, generator)
    if not is_int(k) or not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"k must be an int from 1 to d_vocab={logits.shape[-1]}, got {k!r}.")
    top = logits.topk(k, dim=-1)
    # Exactly k tokens stay, even when the k-th largest logit is tied with one left out.
    kept = torch.full_like(logits, -math.inf).scatter(-1, top.indices, top.values)
    return _draw(kept, temperature, generator)


def sample_top_p(
    logits: Float[Tensor, "batch d_vocab"], p: float, temperature: float = 1.0, generator: torch.Generator | None = None
) -> Int[Tensor, "batch"]:
    """Nucleus sampling: a draw from softmax(logits / T) renormalised over the smallest set of most likely
    tokens whose probabilities add up to at least `p`; greedy at T = 0.

    The nucleus is taken from the distribution at temperature T, the one sampled from.
    Chapter 01 teaches it, after Holtzman et al. (2020), *The Curious Case of Neural Text
    Degeneration*, §3.1.
    """
    _check_sampling_arguments(logits, temperature, generator)
    if not (is_number(p) and 0 < p <= 1):
        raise ValueError(f"p must be a number in (0, 1], got {p!r}.")
    if temperature == 0:
        return logits.argmax(dim=-1)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = (sorted_logits / temperature).softmax(dim=-1)
    # A token stays if the mass before it is below p, so the token that crosses p stays too.
    outside = probs.cumsum(dim=-1) - probs >= p
    kept = torch.empty_like(logits).scatter(-1, order, sorted_logits.masked_fill(outside, -math.inf))
    return _draw(kept, temperature, generator)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt: Int[Tensor, "batch prompt_pos"],
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
) -> Int[Tensor, "batch pos"]:
    """Extend `prompt` one token at a time, feeding each sample back in."""
    _check_prompt_and_count(model, prompt, max_new_tokens)
    _check_temperature(temperature)
    generator = generator_for("sampling.generate", seed, model_device(model))
    tokens = prompt.to(model_device(model))
    for _ in range(max_new_tokens):
        next_token = sample_next_token(model(tokens)[:, -1], temperature, generator)
        tokens = torch.cat([tokens, next_token[:, None]], dim=-1)
    return tokens


def _check_prompt_and_count(model: torch.nn.Module, prompt: object, max_new_tokens: object) -> None:
    """Token ids the model can read, and a count of new tokens that stays within its n_ctx."""
    d_vocab, n_ctx = vocab_and_context(model)
    check_token_ids(prompt, "prompt", d_vocab, n_ctx)
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}.")
    if n_ctx is not None and prompt.shape[-1] + max_new_tokens > n_ctx:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} after a prompt of {prompt.shape[-1]} tokens passes the model's n_ctx={n_ctx}; ask for fewer."
        )


@torch.no_grad()
def generate_with_kv_cache(
    model: Transformer, prompt: Int[Tensor, "batch prompt_pos"], max_new_tokens: int
) -> Int[Tensor, "batch pos"]:
    """Greedy `generate` that runs every position through the model once.

    The prompt runs once and leaves each block's keys and values in a cache; every new token
    then runs alone, attending to the cache and itself, and appends its own keys and values.
    Without a cache, n new tokens cost about n²/2 forward positions; with it, n. The tokens equal
    `generate(model, prompt, max_new_tokens)`'s. Chapter 01 teaches it.
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be a mechlearn.transformer.Transformer, got {type(model).__name__}.")
    _check_prompt_and_count(model, prompt, max_new_tokens)
    tokens = prompt.to(model_device(model))
    cache = empty_kv_cache(model, tokens.shape[0], tokens.device)
    new = tokens
    for _ in range(max_new_tokens):
        logits, cache = forward_with_kv_cache(model, new, cache)
        new = logits[:, -1].argmax(dim=-1, keepdim=True)
        tokens = torch.cat([tokens, new], dim=-1)
    return tokens


@torch.no_grad()
def continue_text(
    model: torch.nn.Module,
    prompt: str,
    max_new_tokens: int,
    sampler: Callable[..., Int[Tensor, "batch"]],
    seed: int = 0,
) -> str:
    """`prompt` and `max_new_tokens` more tokens, each drawn by `sampler(last_logits, generator=...)`.

    For a model with a tokenizer, such as GPT-2 from `mechlearn.models.load_pretrained`
    (chapter 01's optional section); `sampler` is any of this module's samplers with its
    settings bound, e.g. `functools.partial(sample_top_p, p=0.9)`.
    """
    if not isinstance(prompt, str) or not prompt:
        raise TypeError(f"prompt must be a non-empty str, got {prompt!r}.")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("model has no tokenizer, so it cannot read a text prompt; use generate on token ids instead.")
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}.")
    if not callable(sampler):
        raise TypeError(f"sampler must be a function (logits, generator=...) -> token ids, got {type(sampler).__name__}.")
    tokens = model.to_tokens(prompt)
    if tokens.shape[-1] + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(f"{tokens.shape[-1]} prompt tokens and max_new_tokens={max_new_tokens} pass the model's n_ctx={model.cfg.n_ctx}; ask for fewer.")
    generator = generator_for("sampling.continue_text", seed, tokens.device)
    for _ in range(max_new_tokens):
        next_token = sampler(model(tokens)[:, -1], generator=generator)
        tokens = torch.cat([tokens, next_token[:, None]], dim=-1)
    return model.to_string(tokens[0])
