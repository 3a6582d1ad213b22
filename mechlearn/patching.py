"""Hook functions that ablate heads or patch activations, the loss with heads ablated,
the normalised logit difference, and the sweeps that ablate every head or patch every position.

Taught in chapter 02 and used again in chapter 03 (ablating induction heads) and
chapter 07 (activation and path patching). A TransformerLens hook function takes the
activation at a hook point and the `HookPoint`, and returns the activation the rest of
the model should see:

    model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_ablate_head_hook(2))])

Every hook here returns a modified copy: the original activation may also live in a
cache, and editing it in place would silently change the cache too.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge

from mechlearn.models import model_device
from mechlearn.train import next_token_loss
from mechlearn.validation import check_finite, check_tensor, check_token_ids, describe, is_int

__all__ = [
    "HookFn",
    "zero_ablate_head_hook",
    "mean_ablate_head_hook",
    "patch_position_hook",
    "head_ablation_hooks",
    "run_with_heads_ablated",
    "loss_with_heads_ablated",
    "head_ablation_sweep",
    "logit_difference",
    "normalised_logit_difference",
    "patch_every_position",
    "patch_head_hook",
    "patch_every_head",
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


def head_ablation_sweep(
    model: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    mode: AblationMode = "zero",
    mask: Bool[Tensor, "pos_minus_1"] | None = None,
) -> Float[Tensor, "layer head"]:
    """How much the loss rises when each head, alone, is ablated: entry `[layer, head]`.

    Each entry is `loss_with_heads_ablated(model, tokens, [(layer, head)], mode, mask)`
    minus the clean loss, so a head the model does not need scores about 0. Chapter 02
    (exercise 9) uses it to find the sorter's indispensable head.
    """
    clean_loss = loss_with_heads_ablated(model, tokens, [], mode, mask)  # checks every argument
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    losses = [
        torch.stack([loss_with_heads_ablated(model, tokens, [(layer, head)], mode, mask) for head in range(n_heads)])
        for layer in range(n_layers)
    ]
    return torch.stack(losses) - clean_loss


def _check_answers(name: str, answers: object, logits: Tensor) -> None:
    batch, d_vocab = logits.shape[0], logits.shape[-1]
    if not (isinstance(answers, Tensor) and answers.ndim == 1 and len(answers) == batch):
        raise ValueError(f"{name} must be a 1-d tensor of token ids, one per sequence ({batch}), got {describe(answers)}.")
    check_token_ids(answers, name, d_vocab, ndim=1)


def logit_difference(
    logits: Float[Tensor, "batch pos d_vocab"],
    pos: int,
    answers: Int[Tensor, "batch"],
    wrong_answers: Int[Tensor, "batch"],
) -> Float[Tensor, ""]:
    """`logits[b, pos, answers[b]] - logits[b, pos, wrong_answers[b]]`, averaged over the batch.

    Taught in chapter 02. A difference of two logits of one prediction is the same for the
    logits and the log-probabilities (the softmax's normaliser cancels), and unlike a
    probability it does not saturate (Heimersheim & Nanda 2024, section 4).
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.ndim != 3:
        raise ValueError(f"logits must be a float tensor of shape [batch pos d_vocab], got {describe(logits)}.")
    if not is_int(pos) or not -logits.shape[1] <= pos < logits.shape[1]:
        raise ValueError(f"pos must be an int index into the {logits.shape[1]} positions, got {pos!r}.")
    _check_answers("answers", answers, logits)
    _check_answers("wrong_answers", wrong_answers, logits)
    at_pos = logits[:, pos]
    right = at_pos.gather(-1, answers.to(logits.device)[:, None])[:, 0]
    wrong = at_pos.gather(-1, wrong_answers.to(logits.device)[:, None])[:, 0]
    return (right - wrong).mean()


def normalised_logit_difference(
    patched_logits: Float[Tensor, "batch pos d_vocab"],
    clean_logits: Float[Tensor, "batch pos d_vocab"],
    corrupted_logits: Float[Tensor, "batch pos d_vocab"],
    pos: int,
    clean_answers: Int[Tensor, "batch"],
    corrupted_answers: Int[Tensor, "batch"],
) -> Float[Tensor, ""]:
    """How far a patched run has moved from the corrupted run towards the clean one: 0 = corrupted, 1 = clean.

    With `LD = logit_difference(logits, pos, clean_answers, corrupted_answers)`, the value is
    `(LD(patched) - LD(corrupted)) / (LD(clean) - LD(corrupted))`: the batch-mean logit
    differences are normalised, not each sequence's, so one sequence whose two runs nearly
    agree cannot blow the average up (Heimersheim & Nanda 2024, section 4). Taught in
    chapter 02 (exercise 11).
    """
    for name, logits in [("clean_logits", clean_logits), ("corrupted_logits", corrupted_logits)]:
        if not isinstance(logits, Tensor) or not isinstance(patched_logits, Tensor) or logits.shape != patched_logits.shape:
            raise ValueError(f"{name} must have the shape of patched_logits, got {describe(logits)}.")
    patched, clean, corrupted = (
        logit_difference(logits, pos, clean_answers, corrupted_answers)
        for logits in (patched_logits, clean_logits, corrupted_logits)
    )
    if not (clean - corrupted).abs() > 1e-6:
        raise ValueError("the clean and corrupted runs have the same logit difference, so there is nothing to normalise by.")
    return (patched - corrupted) / (clean - corrupted)


Metric = Callable[[Tensor], Tensor]


def _scalar(value: object, what: str) -> Tensor:
    if not (isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point()):
        raise ValueError(f"metric must return one float (a 0-dim tensor) for {what}, got {describe(value)}.")
    return value.reshape(())


def _check_patching_args(model: TransformerBridge, corrupted_tokens: object, clean_cache: object, metric: object) -> None:
    check_token_ids(corrupted_tokens, "corrupted_tokens", model.cfg.d_vocab, model.cfg.n_ctx)
    if not hasattr(clean_cache, "keys") or not hasattr(clean_cache, "__getitem__"):
        raise TypeError(f"clean_cache must be the cache of model.run_with_cache(clean_tokens), got {describe(clean_cache)}.")
    if not callable(metric):
        raise TypeError(f"metric must be a function of the patched logits, got {describe(metric)}.")


def patch_every_position(
    model: TransformerBridge,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: dict[str, Tensor],
    hook_names: Sequence[str],
    metric: Metric,
) -> Float[Tensor, "hook pos"]:
    """Activation patching at every position: entry `[i, pos]` is `metric` of the corrupted run
    with position `pos` of `clean_cache[hook_names[i]]` patched in (`patch_position_hook`).

    This is *denoising* (Heimersheim & Nanda 2024, section 2): a high value says that one
    activation, at one place and one position, is enough to carry what differs in the
    clean run. Taught in chapter 02 (exercise 12), where it finds the position and the
    layer at which the sorter moves the smallest digit.
    """
    _check_patching_args(model, corrupted_tokens, clean_cache, metric)
    if isinstance(hook_names, str) or not hook_names:
        raise ValueError(f"hook_names must be a non-empty list of hook names, got {hook_names!r}.")
    missing = [name for name in hook_names if name not in clean_cache.keys()]
    if missing:
        raise ValueError(f"hook_names holds {missing[0]!r}, which clean_cache lacks: cache the clean run without a names_filter that drops it.")
    tokens = corrupted_tokens.to(model_device(model))
    rows = []
    for name in hook_names:
        row = []
        for pos in range(tokens.shape[1]):
            logits = model.run_with_hooks(tokens, fwd_hooks=[(name, patch_position_hook(pos, clean_cache[name]))])
            row.append(_scalar(metric(logits), f"{name} at position {pos}"))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def patch_head_hook(head: int, pos: int, source_z: Float[Tensor, "batch source_pos head d_head"]) -> HookFn:
    """A hook for `blocks.{l}.attn.hook_z` that gives head `head`, at position `pos`, its `z` from another run.

    Every other head, and this head at every other position, keeps its own `z`: only what
    this one head writes at this one position is swapped. Taught in chapter 02.
    """
    _check_index("head", head)
    _check_index("pos", pos)
    check_tensor(source_z, "source_z", 4, floating=True)
    check_finite(source_z, "source_z")
    if head >= source_z.shape[2] or pos >= source_z.shape[1]:
        raise ValueError(f"head {head} at position {pos} is not in source_z of shape {tuple(source_z.shape)} [batch pos head d_head].")

    def hook(z: Float[Tensor, "batch pos head d_head"], hook: HookPoint) -> Float[Tensor, "batch pos head d_head"]:
        _check_head_in(z, head)
        if source_z.shape[0] != z.shape[0] or source_z.shape[2:] != z.shape[2:] or pos >= z.shape[1]:
            raise ValueError(f"source_z has shape {tuple(source_z.shape)}, which does not fit z of shape {tuple(z.shape)} at {hook.name}.")
        patched = z.clone()
        patched[:, pos, head] = source_z[:, pos, head].to(z.device)
        return patched

    return hook


def patch_every_head(
    model: TransformerBridge,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: dict[str, Tensor],
    pos: int,
    metric: Metric,
) -> Float[Tensor, "layer head"]:
    """Head-output patching: entry `[layer, head]` is `metric` of the corrupted run with that
    one head's `z` at position `pos` taken from `clean_cache` (`patch_head_hook`).

    Taught in chapter 02 (exercise 13), where it names the head that carries the smallest
    digit to the position that writes it.
    """
    _check_patching_args(model, corrupted_tokens, clean_cache, metric)
    tokens = corrupted_tokens.to(model_device(model))
    _check_index("pos", pos)
    if pos >= tokens.shape[1]:
        raise ValueError(f"pos {pos} is beyond the {tokens.shape[1]} positions of corrupted_tokens.")
    rows = []
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        row = []
        for head in range(model.cfg.n_heads):
            logits = model.run_with_hooks(tokens, fwd_hooks=[(name, patch_head_hook(head, pos, clean_cache[name]))])
            row.append(_scalar(metric(logits), f"head {head} of layer {layer}"))
        rows.append(torch.stack(row))
    return torch.stack(rows)
