"""A transformer from scratch, in einops: the reference answer to chapter 01.

Read it top to bottom: it follows the data through the model. Parameter names are
TransformerLens's (`W_E`, `W_Q`, `b_O`, ...), so `Transformer.load_weights_from` can
copy any toy `TransformerBridge` of the same shape and the two agree to 1e-5.
"""

from __future__ import annotations

import math

import einops
import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechlearn.models import ModelConfig
from mechlearn.validation import check_tensor, check_token_ids, describe, is_number


def _residual(x: Tensor, name: str, weight: Tensor, d_model_dim: int) -> Float[Tensor, "batch pos d_model"]:
    """`x` checked against `weight` (its `d_model` on axis `d_model_dim`) and cast to its dtype: einsum
    refuses to mix float64 activations with float32 weights."""
    check_tensor(x, name, 3, floating=True)
    d_model = weight.shape[d_model_dim]
    if x.shape[-1] != d_model:
        raise ValueError(f"{name} must end in d_model={d_model} (from the weights), got {describe(x)}.")
    return x.to(weight.dtype)


def _check_config(config: object) -> None:
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a mechlearn.models.ModelConfig, got {type(config).__name__}.")


def layer_norm(
    x: Float[Tensor, "batch pos d_model"],
    w: Float[Tensor, "d_model"],
    b: Float[Tensor, "d_model"],
    eps: float = 1e-5,
) -> Float[Tensor, "batch pos d_model"]:
    """Centre each residual vector, scale it to unit variance, then apply `w` and `b`."""
    check_tensor(x, "x", (1, 2, 3, 4), floating=True)
    for name, param in (("w", w), ("b", b)):
        check_tensor(param, name, 1, floating=True)
        if param.shape[0] != x.shape[-1]:
            raise ValueError(f"{name} must have x's last dim {x.shape[-1]} entries, got {describe(param)}.")
    if not (is_number(eps) and 0 < eps < math.inf):
        raise ValueError(f"eps must be a small positive number (it keeps the scale away from zero), got {eps!r}.")
    centred = x - x.mean(dim=-1, keepdim=True)
    scale = (centred.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
    return centred / scale * w + b


def embed(tokens: Int[Tensor, "batch pos"], W_E: Float[Tensor, "d_vocab d_model"]) -> Float[Tensor, "batch pos d_model"]:
    """Look up each token's row of the embedding matrix."""
    check_token_ids(tokens, "tokens", W_E.shape[0])
    return W_E[tokens]


def pos_embed(tokens: Int[Tensor, "batch pos"], W_pos: Float[Tensor, "n_ctx d_model"]) -> Float[Tensor, "batch pos d_model"]:
    """The learned vector of each position, repeated over the batch."""
    check_token_ids(tokens, "tokens", None, W_pos.shape[0])
    batch, seq_len = tokens.shape
    return einops.repeat(W_pos[:seq_len], "pos d_model -> batch pos d_model", batch=batch)


def attention_scores(
    x: Float[Tensor, "batch pos d_model"],
    W_Q: Float[Tensor, "n_heads d_model d_head"],
    b_Q: Float[Tensor, "n_heads d_head"],
    W_K: Float[Tensor, "n_heads d_model d_head"],
    b_K: Float[Tensor, "n_heads d_head"],
) -> Float[Tensor, "batch n_heads query_pos key_pos"]:
    """Query-key dot products of every head, divided by sqrt(d_head)."""
    x = _residual(x, "x", W_Q, 1)
    q = einops.einsum(x, W_Q, "batch pos d_model, head d_model d_head -> batch pos head d_head") + b_Q
    k = einops.einsum(x, W_K, "batch pos d_model, head d_model d_head -> batch pos head d_head") + b_K
    scores = einops.einsum(q, k, "batch q_pos head d_head, batch k_pos head d_head -> batch head q_pos k_pos")
    return scores / math.sqrt(W_Q.shape[-1])


def apply_causal_mask(scores: Float[Tensor, "batch n_heads query_pos key_pos"]) -> Float[Tensor, "batch n_heads query_pos key_pos"]:
    """Set the score of every key after its query to -inf, so softmax gives it zero weight."""
    check_tensor(scores, "scores", 4, floating=True)
    n_query, n_key = scores.shape[-2:]
    future = torch.triu(torch.ones(n_query, n_key, dtype=torch.bool, device=scores.device), diagonal=1)
    return scores.masked_fill(future, float("-inf"))


def attention(
    x: Float[Tensor, "batch pos d_model"],
    W_Q: Float[Tensor, "n_heads d_model d_head"],
    b_Q: Float[Tensor, "n_heads d_head"],
    W_K: Float[Tensor, "n_heads d_model d_head"],
    b_K: Float[Tensor, "n_heads d_head"],
    W_V: Float[Tensor, "n_heads d_model d_head"],
    b_V: Float[Tensor, "n_heads d_head"],
    W_O: Float[Tensor, "n_heads d_head d_model"],
    b_O: Float[Tensor, "d_model"],
) -> Float[Tensor, "batch pos d_model"]:
    """Causal multi-head self-attention: scores, mask, pattern, weighted values z, output."""
    x = _residual(x, "x", W_Q, 1)
    pattern = apply_causal_mask(attention_scores(x, W_Q, b_Q, W_K, b_K)).softmax(dim=-1)
    v = einops.einsum(x, W_V, "batch pos d_model, head d_model d_head -> batch pos head d_head") + b_V
    z = einops.einsum(pattern, v, "batch head q_pos k_pos, batch k_pos head d_head -> batch q_pos head d_head")
    return einops.einsum(z, W_O, "batch pos head d_head, head d_head d_model -> batch pos d_model") + b_O


def mlp(
    x: Float[Tensor, "batch pos d_model"],
    W_in: Float[Tensor, "d_model d_mlp"],
    b_in: Float[Tensor, "d_mlp"],
    W_out: Float[Tensor, "d_mlp d_model"],
    b_out: Float[Tensor, "d_model"],
) -> Float[Tensor, "batch pos d_model"]:
    """Up-project, GELU, down-project: the same function at every position."""
    x = _residual(x, "x", W_in, 0)
    hidden = F.gelu(einops.einsum(x, W_in, "batch pos d_model, d_model d_mlp -> batch pos d_mlp") + b_in)
    return einops.einsum(hidden, W_out, "batch pos d_mlp, d_mlp d_model -> batch pos d_model") + b_out


def unembed(
    x: Float[Tensor, "batch pos d_model"], W_U: Float[Tensor, "d_model d_vocab"], b_U: Float[Tensor, "d_vocab"]
) -> Float[Tensor, "batch pos d_vocab"]:
    """Map the final residual stream to one logit per vocabulary item."""
    x = _residual(x, "x", W_U, 0)
    return einops.einsum(x, W_U, "batch pos d_model, d_model d_vocab -> batch pos d_vocab") + b_U


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: the attention and MLP outputs are added to the residual stream."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        _check_config(config)
        n_heads, d_model, d_head = config.n_heads, config.d_model, config.d_head
        self.ln1_w, self.ln1_b = nn.Parameter(torch.ones(d_model)), nn.Parameter(torch.zeros(d_model))
        self.W_Q, self.W_K, self.W_V = (nn.Parameter(torch.randn(n_heads, d_model, d_head) / math.sqrt(d_model)) for _ in range(3))
        self.b_Q, self.b_K, self.b_V = (nn.Parameter(torch.zeros(n_heads, d_head)) for _ in range(3))
        self.W_O = nn.Parameter(torch.randn(n_heads, d_head, d_model) / math.sqrt(n_heads * d_head))
        self.b_O = nn.Parameter(torch.zeros(d_model))
        self.has_mlp = not config.attn_only
        if self.has_mlp:
            self.ln2_w, self.ln2_b = nn.Parameter(torch.ones(d_model)), nn.Parameter(torch.zeros(d_model))
            self.W_in = nn.Parameter(torch.randn(d_model, config.d_mlp) / math.sqrt(d_model))
            self.b_in = nn.Parameter(torch.zeros(config.d_mlp))
            self.W_out = nn.Parameter(torch.randn(config.d_mlp, d_model) / math.sqrt(config.d_mlp))
            self.b_out = nn.Parameter(torch.zeros(d_model))

    def forward(self, resid_pre: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = _residual(resid_pre, "resid_pre", self.ln1_w, 0)
        normed = layer_norm(resid_pre, self.ln1_w, self.ln1_b)
        resid_mid = resid_pre + attention(normed, self.W_Q, self.b_Q, self.W_K, self.b_K, self.W_V, self.b_V, self.W_O, self.b_O)
        return self.add_mlp(resid_mid)

    def add_mlp(self, resid_mid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """The second half of the block: `resid_mid` plus the MLP of its LayerNorm (unchanged when attention-only)."""
        if not self.has_mlp:
            return resid_mid
        return resid_mid + mlp(layer_norm(resid_mid, self.ln2_w, self.ln2_b), self.W_in, self.b_in, self.W_out, self.b_out)


class Transformer(nn.Module):
    """Embed, run the blocks, apply the final LayerNorm, unembed."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        _check_config(config)
        if (config.act_fn, config.normalization_type) != ("gelu", "LN"):
            raise ValueError(
                f"This from-scratch Transformer implements GELU and LayerNorm only; the config asks for "
                f"act_fn={config.act_fn!r} and normalization_type={config.normalization_type!r}."
            )
        self.config = config
        self.W_E = nn.Parameter(torch.randn(config.d_vocab, config.d_model) / math.sqrt(config.d_model))
        self.W_pos = nn.Parameter(torch.randn(config.n_ctx, config.d_model) / math.sqrt(config.d_model))
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.ln_final_w, self.ln_final_b = nn.Parameter(torch.ones(config.d_model)), nn.Parameter(torch.zeros(config.d_model))
        self.W_U = nn.Parameter(torch.randn(config.d_model, config.d_vocab) / math.sqrt(config.d_model))
        self.b_U = nn.Parameter(torch.zeros(config.d_vocab))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        resid = embed(tokens, self.W_E) + pos_embed(tokens, self.W_pos)
        for block in self.blocks:
            resid = block(resid)
        return unembed(layer_norm(resid, self.ln_final_w, self.ln_final_b), self.W_U, self.b_U)


KVCache = list[tuple[Float[Tensor, "batch pos n_heads d_head"], Float[Tensor, "batch pos n_heads d_head"]]]
"""Every block's keys and values so far, one `(keys, values)` pair per block."""


def empty_kv_cache(model: Transformer, batch: int, device: torch.device) -> KVCache:
    """A cache that holds no position yet, for `batch` sequences."""
    n_heads, d_head = model.config.n_heads, model.config.d_head
    nothing = torch.zeros(batch, 0, n_heads, d_head, device=device, dtype=model.W_E.dtype)
    return [(nothing, nothing) for _ in model.blocks]


def attention_with_kv_cache(
    block: TransformerBlock,
    x: Float[Tensor, "batch new_pos d_model"],
    keys: Float[Tensor, "batch cached_pos n_heads d_head"],
    values: Float[Tensor, "batch cached_pos n_heads d_head"],
) -> tuple[Float[Tensor, "batch new_pos d_model"], Float[Tensor, "batch pos n_heads d_head"], Float[Tensor, "batch pos n_heads d_head"]]:
    """`block`'s attention for the new positions `x` (already through ln1), which come after the cached ones.

    Their queries attend to the cached keys and values and to their own; returns the attention output
    and the keys and values with the new positions appended. Chapter 01 teaches it (generation with a KV cache).
    """

    def project(W: Tensor, b: Tensor) -> Float[Tensor, "batch new_pos n_heads d_head"]:
        return einops.einsum(x, W, "batch pos d_model, head d_model d_head -> batch pos head d_head") + b

    keys = torch.cat([keys, project(block.W_K, block.b_K)], dim=1)
    values = torch.cat([values, project(block.W_V, block.b_V)], dim=1)
    scores = einops.einsum(
        project(block.W_Q, block.b_Q), keys, "batch q_pos head d_head, batch k_pos head d_head -> batch head q_pos k_pos"
    ) / math.sqrt(block.W_Q.shape[-1])
    # The queries are the last n_new of the n_all positions: only later new positions are in their future.
    n_new, n_all = scores.shape[-2:]
    future = torch.triu(torch.ones(n_new, n_all, dtype=torch.bool, device=x.device), diagonal=n_all - n_new + 1)
    pattern = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    z = einops.einsum(pattern, values, "batch head q_pos k_pos, batch k_pos head d_head -> batch q_pos head d_head")
    return einops.einsum(z, block.W_O, "batch pos head d_head, head d_head d_model -> batch pos d_model") + block.b_O, keys, values


def forward_with_kv_cache(
    model: Transformer, tokens: Int[Tensor, "batch new_pos"], cache: KVCache
) -> tuple[Float[Tensor, "batch new_pos d_vocab"], KVCache]:
    """The logits of `tokens`, which follow the positions in `cache`, and the cache extended by them.

    Only the new positions run through the model; each takes the positional embedding of its
    absolute position. Chapter 01 teaches it (generation with a KV cache).
    """
    check_token_ids(tokens, "tokens", model.config.d_vocab)
    if not isinstance(cache, list) or len(cache) != len(model.blocks):
        raise ValueError(f"cache must be a list of one (keys, values) pair per block ({len(model.blocks)}); start one with empty_kv_cache.")
    start, n_ctx = cache[0][0].shape[1], model.config.n_ctx
    if start + tokens.shape[1] > n_ctx:
        raise ValueError(f"the cache holds {start} positions and tokens adds {tokens.shape[1]}, more than the model's n_ctx={n_ctx}; ask for fewer.")
    resid = embed(tokens, model.W_E) + model.W_pos[start : start + tokens.shape[1]]
    extended = []
    for block, (keys, values) in zip(model.blocks, cache):
        attn_out, keys, values = attention_with_kv_cache(block, layer_norm(resid, block.ln1_w, block.ln1_b), keys, values)
        resid = block.add_mlp(resid + attn_out)
        extended.append((keys, values))
    return unembed(layer_norm(resid, model.ln_final_w, model.ln_final_b), model.W_U, model.b_U), extended


def _copy(target: nn.Parameter, source: Tensor, name: str) -> None:
    """Copy one weight, refusing a shape mismatch that `copy_` would broadcast or report without the name."""
    if target.shape != source.shape:
        raise ValueError(
            f"The bridge's {name} has shape {tuple(source.shape)} but yours has {tuple(target.shape)}; build yours with the bridge's config."
        )
    target.copy_(source)


@torch.no_grad()
def load_block_weights_from(block: TransformerBlock, source: nn.Module) -> TransformerBlock:
    """Copy one `TransformerBridge` block (`bridge.blocks[l]`) into a from-scratch block.

    An attention-only block takes just the attention half of a source block that has an MLP.
    """
    if block.has_mlp and not hasattr(source, "mlp"):
        raise ValueError("block has an MLP but the source block has none; build it with the bridge's config.")
    _copy(block.ln1_w, source.ln1.w, "ln1.w")
    _copy(block.ln1_b, source.ln1.b, "ln1.b")
    for name in ("W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V", "W_O", "b_O"):
        _copy(getattr(block, name), getattr(source.attn, name), name)
    if block.has_mlp:
        _copy(block.ln2_w, source.ln2.w, "ln2.w")
        _copy(block.ln2_b, source.ln2.b, "ln2.b")
        for name in ("W_in", "b_in", "W_out", "b_out"):
            _copy(getattr(block, name), getattr(source.mlp, name), name)
    return block


@torch.no_grad()
def load_weights_from(model: Transformer, bridge: TransformerBridge) -> Transformer:
    """Copy a `TransformerBridge`'s weights into a from-scratch `Transformer` of the same shape."""
    if not isinstance(bridge, TransformerBridge):
        raise TypeError(f"bridge must be a TransformerBridge, got {type(bridge).__name__}.")
    if len(model.blocks) != len(bridge.blocks):
        raise ValueError(
            f"model has {len(model.blocks)} blocks but the bridge has {len(bridge.blocks)}; build it with the bridge's config."
        )
    # A block may take half of a source block (see above); a whole model must match the bridge.
    ours, theirs = model.blocks[0].has_mlp, hasattr(bridge.blocks[0], "mlp")
    if ours != theirs:
        raise ValueError(
            f"model {'has' if ours else 'has no'} MLPs but the bridge {'has them' if theirs else 'has none'}; "
            "build it with the bridge's config."
        )
    _copy(model.W_E, bridge.W_E, "W_E")
    _copy(model.W_pos, bridge.W_pos, "W_pos")
    for block, source in zip(model.blocks, bridge.blocks):
        load_block_weights_from(block, source)
    _copy(model.ln_final_w, bridge.ln_final.w, "ln_final.w")
    _copy(model.ln_final_b, bridge.ln_final.b, "ln_final.b")
    _copy(model.W_U, bridge.W_U, "W_U")
    _copy(model.b_U, bridge.b_U, "b_U")
    return model
