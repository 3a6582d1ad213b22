"""Hook functions that ablate heads or patch activations, and the loss with heads ablated.

Taught in chapter 02 and used again in chapter 03 (ablating induction heads) and
chapter 07 (activation and path patching). A TransformerLens hook function takes the
activation at a hook point and the `HookPoint`, and returns the activation the rest of
the model should see:

    model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_ablate_head_hook(2))])

Every hook here returns a modified copy: the original activation may also live in a
cache, and editing it in place would silently change the cache too.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge

from mechlearn.models import model_device
from mechlearn.train import next_token_loss
from mechlearn.validation import check_finite, check_tensor, check_token_ids, describe

__all__ = [
    "HookFn",
    "zero_ablate_head_hook",
    "mean_ablate_head_hook",
    "patch_position_hook",
    "head_ablation_hooks",
    "run_with_heads_ablated",
    "loss_with_heads_ablated",
]

HookFn = Callable[[Tensor, HookPoint], Tensor]
AblationMode = Literal["zero", "mean"]
ABLATION_MODES = ("zero", "mean")


def _check_index(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}.")


def _check_head_in(z: Tensor, head: int) -> None:
    if z.ndim != 4 or head >= z.shape[2]:
        raise ValueError(
            f"head {head} does not fit an activation of shape {tuple(z.shape)}: attach this hook to "
            "blocks.{l}.attn.hook_z, whose shape is [batch pos head d_head]."
        )


def zero_ablate_head_hook(head: int) -> HookFn:
    """A hook for `blocks.{l}.attn.hook_z` that sets head `head`'s `z` to zero.

    The head then writes nothing into the residual stream (`b_O` is still added).
    """
    _check_index("head", head)

    def hook(z: Float[Tensor, "batch pos head d_head"], hook: HookPoint) -> Float[Tensor, "batch pos head d_head"]:
        _check_head_in(z, head)
        ablated = z.clone()
        ablated[:, :, head] = 0.0
        return ablated

    return hook


def mean_ablate_head_hook(head: int, mean_z: Float[Tensor, "pos head d_head"]) -> HookFn:
    """A hook for `blocks.{l}.attn.hook_z` that replaces head `head`'s `z` by its mean.

    `mean_z` is the layer's `z` averaged over a batch of sequences, e.g.
    `cache["blocks.1.attn.hook_z"].mean(0)`. Unlike zero-ablation, this keeps what the head
    writes on average and removes only what depends on the particular sequence, so the
    layers after it see an activation of the usual size.
    """
    _check_index("head", head)
    if not isinstance(mean_z, Tensor) or mean_z.ndim != 3:
        raise ValueError(f"mean_z must be a tensor of shape [pos head d_head], got {describe(mean_z)}.")
    check_tensor(mean_z, "mean_z", 3, floating=True)
    check_finite(mean_z, "mean_z")

    def hook(z: Float[Tensor, "batch pos head d_head"], hook: HookPoint) -> Float[Tensor, "batch pos head d_head"]:
        _check_head_in(z, head)
        if mean_z.shape[1:] != z.shape[2:] or mean_z.shape[0] < z.shape[1]:
            raise ValueError(f"mean_z has shape {tuple(mean_z.shape)}, which does not fit z of shape {tuple(z.shape)}.")
        ablated = z.clone()
        ablated[:, :, head] = mean_z[: z.shape[1], head].to(z.device)
        return ablated

    return hook


def patch_position_hook(pos: int, source_activation: Float[Tensor, "batch source_pos ..."]) -> HookFn:
    """A hook that overwrites position `pos` with the same position of `source_activation`.

    `source_activation` comes from another run at the same hook point, e.g.
    `source_cache["blocks.1.hook_resid_pre"]`. Every other position keeps its own value, so
    only what position `pos` carries is swapped. The two runs may have different lengths
    (say, a prompt and its continuation during generation) as long as both reach `pos`.
    """
    _check_index("pos", pos)
    fits = isinstance(source_activation, Tensor) and source_activation.is_floating_point() and source_activation.ndim >= 2
    if not fits or pos >= source_activation.shape[1]:
        raise ValueError(
            f"source_activation must be a float tensor of shape [batch pos ...] that reaches position {pos}, got {describe(source_activation)}."
        )
    check_finite(source_activation, "source_activation")

    def hook(activation: Float[Tensor, "batch pos ..."], hook: HookPoint) -> Float[Tensor, "batch pos ..."]:
        if source_activation.shape[0] != activation.shape[0] or source_activation.shape[2:] != activation.shape[2:]:
            raise ValueError(
                f"source_activation has shape {tuple(source_activation.shape)} but the activation at "
                f"{hook.name} has shape {tuple(activation.shape)}: cache it at the same hook point, on as many sequences."
            )
        if pos >= activation.shape[1]:
            raise ValueError(f"pos {pos} is beyond the {activation.shape[1]} positions at {hook.name}.")
        patched = activation.clone()
        patched[:, pos] = source_activation[:, pos].to(activation.device)
        return patched

    return hook


def _check_heads(model: TransformerBridge, heads: list[tuple[int, int]]) -> None:
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if not isinstance(heads, (list, tuple)):
        raise TypeError(f"heads must be a list of (layer, head) pairs, got {describe(heads)}.")
    for entry in heads:
        valid = (
            isinstance(entry, tuple)
            and len(entry) == 2
            and all(isinstance(i, int) and not isinstance(i, bool) for i in entry)
            and 0 <= entry[0] < n_layers
            and 0 <= entry[1] < n_heads
        )
        if not valid:
            raise ValueError(
                f"heads must be (layer, head) pairs with layer < {n_layers} and head < {n_heads}, got {entry!r}."
            )


def head_ablation_hooks(
    model: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    heads: list[tuple[int, int]],
    mode: AblationMode = "zero",
) -> list[tuple[str, HookFn]]:
    """The `fwd_hooks` that ablate every `(layer, head)` in `heads` at once.

    For `mode="mean"` the means come from a clean run on `tokens`, so ablating a head in
    layer 0 does not change the mean that replaces a head in layer 1.
    """
    if mode not in ABLATION_MODES:
        raise ValueError(f"mode must be one of {ABLATION_MODES}, got {mode!r}.")
    _check_heads(model, heads)
    check_token_ids(tokens, "tokens", model.cfg.d_vocab, model.cfg.n_ctx)
    tokens = tokens.to(model_device(model))
    if mode == "zero":
        return [(f"blocks.{layer}.attn.hook_z", zero_ablate_head_hook(head)) for layer, head in heads]
    names = {f"blocks.{layer}.attn.hook_z" for layer, _ in heads}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return [
        (f"blocks.{layer}.attn.hook_z", mean_ablate_head_hook(head, cache[f"blocks.{layer}.attn.hook_z"].mean(dim=0)))
        for layer, head in heads
    ]


def run_with_heads_ablated(
    model: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    heads: list[tuple[int, int]],
    mode: AblationMode = "zero",
) -> Float[Tensor, "batch pos d_vocab"]:
    """The model's logits with every `(layer, head)` in `heads` zero- or mean-ablated."""
    hooks = head_ablation_hooks(model, tokens, heads, mode)  # checks tokens
    return model.run_with_hooks(tokens.to(model_device(model)), fwd_hooks=hooks)


def loss_with_heads_ablated(
    model: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    heads: list[tuple[int, int]],
    mode: AblationMode = "zero",
    mask: Bool[Tensor, "pos_minus_1"] | None = None,
) -> Float[Tensor, ""]:
    """Mean next-token loss with `heads` ablated, over the predictions `mask` selects (all if None).

    The same loss as `mechlearn.train.next_token_loss`, so `heads=[]` gives the clean loss
    and the difference is what the heads were worth. For the loss at each position, take
    the logits from `run_with_heads_ablated` instead.
    """
    check_token_ids(tokens, "tokens", model.cfg.d_vocab, model.cfg.n_ctx)
    n_predictions = tokens.shape[1] - 1
    if n_predictions == 0:
        raise ValueError("tokens must have at least 2 positions, or there is no next token to predict.")
    if mask is not None and not (isinstance(mask, Tensor) and mask.dtype == torch.bool and mask.shape == (n_predictions,)):
        raise ValueError(
            f"mask must be a bool tensor of shape ({n_predictions},), one entry per next-token "
            f"prediction like task.target_mask; got {describe(mask)}."
        )
    if mask is not None and not mask.any():
        raise ValueError("mask selects no predictions, so there is no loss to average.")
    tokens = tokens.to(model_device(model))
    return next_token_loss(run_with_heads_ablated(model, tokens, heads, mode), tokens, mask)
