"""Transformers with hand-set weights, whose mechanism we know exactly.

They are the ground truth that interpretability methods are graded against: a
head finder must name exactly the planted heads, and nothing else (chapter 03;
chapter 09 builds more of them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechlearn.models import ModelConfig, make_model
from mechlearn.validation import check_finite, check_positive_int, check_tensor, describe, is_int, is_number


@dataclass(frozen=True)
class InductionCircuit:
    """A hand-set two-layer induction circuit and the heads that implement it."""

    model: TransformerBridge
    previous_token_head: tuple[int, int]  # (layer, head), in layer 0
    induction_head: tuple[int, int]  # (layer, head), in layer 1


def induction_circuit_model(
    d_vocab: int = 32,
    n_ctx: int = 32,
    n_heads: int = 2,
    previous_token_head: int = 0,
    induction_head: int = 1,
    sharpness: float = 20.0,
) -> InductionCircuit:
    """An attention-only, LayerNorm-free model whose only working heads form an induction circuit.

    The residual stream has four one-hot subspaces: the current TOKEN, the PREVIOUS token
    (written by the layer-0 head), the OUTPUT the layer-1 head copies, and the POSITION.
    Layer 0's previous-token head attends from position i to i - 1 and copies that token
    into PREVIOUS. Layer 1's induction head attends from a token to every position whose
    PREVIOUS equals it, and copies the token found there into OUTPUT, which the
    unembedding reads. All other heads have zero weights.
    """
    for name, value in (("d_vocab", d_vocab), ("n_ctx", n_ctx), ("n_heads", n_heads)):
        check_positive_int(value, name)
    if not (is_int(previous_token_head) and is_int(induction_head)):
        raise TypeError(f"previous_token_head and induction_head must be ints, got {previous_token_head!r} and {induction_head!r}.")
    if not (is_number(sharpness) and 0 < sharpness < math.inf):
        raise ValueError(f"sharpness must be a positive finite number (the attention logit gap), got {sharpness!r}.")
    if not (0 <= previous_token_head < n_heads and 0 <= induction_head < n_heads):
        raise ValueError(f"previous_token_head and induction_head must be in [0, {n_heads}), got {previous_token_head} and {induction_head}.")
    token, previous, output = (slice(k * d_vocab, (k + 1) * d_vocab) for k in range(3))
    position = slice(3 * d_vocab, 3 * d_vocab + n_ctx)
    d_model, d_head = 3 * d_vocab + n_ctx, max(d_vocab, n_ctx)
    # TransformerLens divides scores by sqrt(d_head); undo that so `sharpness` is the logit gap.
    scale = sharpness * math.sqrt(d_head)
    config = ModelConfig(
        d_vocab=d_vocab, n_ctx=n_ctx, d_model=d_model, n_layers=2, n_heads=n_heads, d_head=d_head, d_mlp=None, normalization_type=None
    )
    W_Q, W_K, W_V = (torch.zeros(2, n_heads, d_model, d_head) for _ in range(3))
    W_O = torch.zeros(2, n_heads, d_head, d_model)
    one_hot = torch.eye(d_vocab)

    # Layer 0: query position i matches key position i - 1.
    W_Q[0, previous_token_head, position, :n_ctx] = scale * torch.eye(n_ctx)
    W_K[0, previous_token_head, position, 1:n_ctx] = torch.eye(n_ctx)[:, : n_ctx - 1]
    W_V[0, previous_token_head, token, :d_vocab] = one_hot
    W_O[0, previous_token_head, :d_vocab, previous] = one_hot
    # Layer 1: the current token matches the previous token stored at each key.
    W_Q[1, induction_head, token, :d_vocab] = scale * one_hot
    W_K[1, induction_head, previous, :d_vocab] = one_hot
    W_V[1, induction_head, token, :d_vocab] = one_hot
    W_O[1, induction_head, :d_vocab, output] = one_hot

    W_E = torch.zeros(d_vocab, d_model)
    W_E[:, token] = one_hot
    W_pos = torch.zeros(n_ctx, d_model)
    W_pos[:, position] = torch.eye(n_ctx)
    W_U = torch.zeros(d_model, d_vocab)
    W_U[output] = sharpness * one_hot

    model = make_model(config)
    set_weights(model, W_E=W_E, W_pos=W_pos, W_Q=W_Q, W_K=W_K, W_V=W_V, W_O=W_O, W_U=W_U)
    return InductionCircuit(model, (0, previous_token_head), (1, induction_head))


@torch.no_grad()
def set_weights(
    model: TransformerBridge,
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
    W_Q: Float[Tensor, "layer head d_model d_head"],
    W_K: Float[Tensor, "layer head d_model d_head"],
    W_V: Float[Tensor, "layer head d_model d_head"],
    W_O: Float[Tensor, "layer head d_head d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
) -> None:
    """Write TransformerLens-shaped weights into a native bridge and zero every bias."""
    if not isinstance(model, TransformerBridge):
        raise TypeError(f"model must be a TransformerBridge from mechlearn.models.make_model, got {type(model).__name__}.")
    cfg = model.cfg
    heads = (cfg.n_layers, cfg.n_heads)
    expected = {
        "W_E": (cfg.d_vocab, cfg.d_model),
        "W_pos": (cfg.n_ctx, cfg.d_model),
        **{name: (*heads, cfg.d_model, cfg.d_head) for name in ("W_Q", "W_K", "W_V")},
        "W_O": (*heads, cfg.d_head, cfg.d_model),
        "W_U": (cfg.d_model, cfg.d_vocab),
    }
    for name, weight in zip(expected, (W_E, W_pos, W_Q, W_K, W_V, W_O, W_U)):
        check_tensor(weight, name, len(expected[name]), floating=True)
        if weight.shape != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]} for this model, got {describe(weight)}.")
        check_finite(weight, name)
    state = {name: torch.zeros_like(value) for name, value in model.state_dict().items()}
    state["embed.weight"], state["pos_embed.weight"] = W_E, W_pos
    state["unembed.weight"] = einops.rearrange(W_U, "d_model d_vocab -> d_vocab d_model")
    for layer in range(W_Q.shape[0]):
        # nn.Linear stores [out, in]: every head's columns are stacked along `out`.
        for name, weight in (("q", W_Q), ("k", W_K), ("v", W_V)):
            state[f"blocks.{layer}.attn.{name}.weight"] = einops.rearrange(weight[layer], "head d_model d_head -> (head d_head) d_model")
        state[f"blocks.{layer}.attn.o.weight"] = einops.rearrange(W_O[layer], "head d_head d_model -> d_model (head d_head)")
    model.load_state_dict(state)
