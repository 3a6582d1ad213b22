"""Reading the residual stream: its decomposition, the logit lens and direct logit attribution.

Taught in chapter 02. The residual stream at the end of the model is a sum: the token
embedding, the positional embedding, every head's output `z_h @ W_O[h]`, every layer's
`b_O`, and every MLP's output. The final LayerNorm is not linear, because it divides by
the norm of the whole sum; but with its scale frozen at the value the run cached
(`ln_final.hook_scale`) it is an affine map, so each component's share of the logits can
be read off on its own and the shares add up to the logits (Elhage et al. 2021, "A
Mathematical Framework for Transformer Circuits").
"""

from __future__ import annotations

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.model_bridge import TransformerBridge

from mechlearn.validation import check_finite, check_token_ids, describe, is_int

__all__ = [
    "head_outputs",
    "residual_components",
    "apply_final_ln",
    "logit_lens",
    "logit_attribution",
    "direct_logit_attribution",
    "logit_lens_top_tokens",
]


def _cached(cache: ActivationCache, name: str) -> Tensor:
    """`cache[name]`, or a KeyError that says how to get it."""
    if not isinstance(cache, ActivationCache):
        raise TypeError(f"cache must be the ActivationCache of model.run_with_cache(tokens), got {describe(cache)}.")
    if name not in cache:
        raise KeyError(
            f"the cache has no {name!r}: run model.run_with_cache(tokens) without a names_filter that drops it."
        )
    return cache[name]


def _check_layer(model: TransformerBridge, layer: int) -> None:
    if not is_int(layer) or not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must be an int in [0, {model.cfg.n_layers}), got {layer!r}.")


def head_outputs(cache: ActivationCache, model: TransformerBridge, layer: int) -> Float[Tensor, "head batch pos d_model"]:
    """What each head of `layer` writes into the residual stream: `z_h @ W_O[h]`, without `b_O`.

    Summed over heads and added to `b_O`, they give the layer's `hook_attn_out`.
    """
    _check_layer(model, layer)
    z = _cached(cache, f"blocks.{layer}.attn.hook_z")
    if z.shape[-2:] != model.W_O.shape[1:3]:
        raise ValueError(
            f"cache holds z of shape {tuple(z.shape)}, which does not fit the model's {model.cfg.n_heads} heads of "
            f"d_head={model.cfg.d_head}: pass the model that made the cache."
        )
    W_O = model.blocks[layer].attn.W_O
    return einops.einsum(z, W_O, "batch pos head d_head, head d_head d_model -> head batch pos d_model")


def residual_components(
    cache: ActivationCache, model: TransformerBridge
) -> tuple[Float[Tensor, "component batch pos d_model"], list[str]]:
    """The final residual stream split into the pieces that were added to it, and their labels.

    In order: `embed`, `pos_embed`, then for every layer `l` its heads `L{l}H{h}`, its
    attention bias `L{l} b_O` and, unless the model is attention-only, `L{l} MLP`. The
    components sum to `blocks.{n_layers - 1}.hook_resid_post`.
    """
    embed = _cached(cache, "hook_embed")
    components, labels = [embed, _cached(cache, "hook_pos_embed")], ["embed", "pos_embed"]
    for layer in range(model.cfg.n_layers):
        components.extend(head_outputs(cache, model, layer))
        labels.extend(f"L{layer}H{head}" for head in range(model.cfg.n_heads))
        # b_O is added once per layer, whatever the heads do, so it is a component of its own.
        components.append(model.blocks[layer].attn.b_O.expand_as(embed))
        labels.append(f"L{layer} b_O")
        if not model.cfg.attn_only:
            components.append(_cached(cache, f"blocks.{layer}.hook_mlp_out"))
            labels.append(f"L{layer} MLP")
    return torch.stack(components), labels


def _check_stream(name: str, value: object, model: TransformerBridge) -> None:
    """Refuse anything but a finite float tensor [... batch pos d_model] in the model's d_model."""
    if not isinstance(value, Tensor) or not value.is_floating_point() or value.ndim < 3 or value.shape[-1] != model.cfg.d_model:
        raise ValueError(f"{name} must be a float tensor of shape [... batch pos {model.cfg.d_model}] (d_model last), got {describe(value)}.")
    check_finite(value, name)


def apply_final_ln(
    resid: Float[Tensor, "*component batch pos d_model"],
    cache: ActivationCache,
    model: TransformerBridge,
    add_bias: bool = True,
) -> Float[Tensor, "*component batch pos d_model"]:
    """The model's final LayerNorm with its scale frozen at the cached `ln_final.hook_scale`.

    With the scale frozen, `x -> centre(x) / scale * w` is linear, so applied to each of
    a stack of components it gives pieces that add up to the normalised sum. The bias
    `b` belongs to the sum, not to any component: pass `add_bias=False` for components
    and add `b` once. Works for every `normalization_type` a toy model may have (LN,
    LNPre, RMS, or none).
    """
    _check_stream("resid", resid, model)
    normalization = model.cfg.normalization_type
    if normalization is None:
        return resid
    scale = _cached(cache, "ln_final.hook_scale")
    if resid.shape[-3:-1] != scale.shape[:2]:
        raise ValueError(
            f"resid has batch and pos sizes {tuple(resid.shape[-3:-1])}, but the cache was made on "
            f"{tuple(scale.shape[:2])}: the frozen scale only fits the run that cached it."
        )
    if normalization != "RMS":
        resid = resid - resid.mean(dim=-1, keepdim=True)
    normalised = resid / scale
    if normalization == "LNPre":
        return normalised
    normalised = normalised * model.ln_final.w
    if add_bias and normalization == "LN":
        normalised = normalised + model.ln_final.b
    return normalised


def logit_lens(cache: ActivationCache, model: TransformerBridge) -> Float[Tensor, "layer_plus_1 batch pos d_vocab"]:
    """What the model would predict if it stopped before each layer, and at the end.

    Entry `l` unembeds the residual stream entering layer `l`; the last entry unembeds the
    final residual stream and equals the model's logits (nostalgebraist 2020, "interpreting
    GPT: the logit lens"). Unlike `apply_final_ln`, each residual stream gets its own
    LayerNorm scale: stopping early means the final LayerNorm sees that stream, whose norm
    is smaller than the final one.
    """
    n_layers = model.cfg.n_layers
    streams = [_cached(cache, f"blocks.{layer}.hook_resid_pre") for layer in range(n_layers)]
    streams.append(_cached(cache, f"blocks.{n_layers - 1}.hook_resid_post"))
    normalised = model.ln_final(torch.stack(streams))
    return einops.einsum(normalised, model.W_U, "layer batch pos d_model, d_model d_vocab -> layer batch pos d_vocab") + model.b_U


def logit_attribution(
    components: Float[Tensor, "*component batch pos d_model"],
    cache: ActivationCache,
    model: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
) -> Float[Tensor, "*component batch pos_minus_1"]:
    """Each component's direct contribution to the logit of the correct next token.

    Position `i` is scored on token `i + 1`, as in `mechlearn.train.next_token_loss`. The
    contributions of all `residual_components`, plus `(ln_final.b @ W_U + b_U)[token]`,
    add up to the model's logit of the correct token.
    """
    _check_stream("components", components, model)
    check_token_ids(tokens, "tokens", model.cfg.d_vocab, model.cfg.n_ctx)
    if tokens.shape != components.shape[-3:-1]:
        raise ValueError(
            f"tokens has shape {tuple(tokens.shape)}, but the components have batch and pos sizes "
            f"{tuple(components.shape[-3:-1])}: pass the tokens the cache was made from."
        )
    normalised = apply_final_ln(components, cache, model, add_bias=False)[..., :-1, :]
    correct_directions = einops.rearrange(model.W_U[:, tokens[:, 1:].to(model.W_U.device)], "d_model batch pos -> batch pos d_model")
    return einops.einsum(normalised, correct_directions, "... batch pos d_model, batch pos d_model -> ... batch pos")


def direct_logit_attribution(
    cache: ActivationCache, model: TransformerBridge, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "layer head batch pos_minus_1"]:
    """How much each head's output, read directly through the frozen final LayerNorm and
    the unembedding, raises the logit of the correct next token."""
    heads = torch.stack([head_outputs(cache, model, layer) for layer in range(model.cfg.n_layers)])
    return logit_attribution(heads, cache, model, tokens)


def logit_lens_top_tokens(model: TransformerBridge, prompt: str, pos: int = -1) -> list[str]:
    """The logit lens's top token at position `pos` of `prompt`: before each layer, then the model's own.

    For a model with a tokenizer, such as GPT-2 from `mechlearn.models.load_pretrained`
    (chapter 02's optional section). The last entry is the model's own top prediction.
    """
    if not isinstance(prompt, str) or not prompt:
        raise TypeError(f"prompt must be a non-empty str, got {prompt!r}.")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("model has no tokenizer, so it cannot read a text prompt; use logit_lens on a cache instead.")
    tokens = model.to_tokens(prompt)
    if not is_int(pos) or not -tokens.shape[1] <= pos < tokens.shape[1]:
        raise ValueError(f"pos must be an int index into the prompt's {tokens.shape[1]} tokens, got {pos!r}.")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        top = logit_lens(cache, model)[:, 0, pos].argmax(dim=-1)
    return [model.to_string(token) for token in top]
