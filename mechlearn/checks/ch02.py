"""Checks for chapter 02, hooks, caches and the residual stream.

Each check runs the learner's code on a small TransformerLens native model whose weights,
biases and LayerNorm parameters are all perturbed away from their initial values, so
that leaving out `b_O`, the positional embedding or the LayerNorm's `w` shows. The
answers come from TransformerLens itself wherever it computes them: the cache
(`hook_attn_out`, `ln_final.hook_out`, the residual streams), the model's logits, runs
with a head's weights removed, and runs on edited tokens. Where the answer is a
definition rather than something the model computes (one head's share of the logits),
it comes from `mechlearn.attribution`, whose tests tie it to the model's logits.

The experiments the chapter's result rests on (ablating every head, patching every
position, patching every head) are graded twice: against the library on that small model,
then by their outcome on the zoo's sorter, where we know the answer (L0H2 is the head it
cannot do without; the smallest digit moves from its own position to `SEP` in layer 0's
attention), and on a control that must not show it (a random model of the same shape).

The learner's code gets copies of the cache, the tokens and every activation a hook sees,
and must leave them as they were: in the notebook, an activation edited in place would
silently change the learner's own cache too. It must also leave the model as it was, with
no weight edited and no hook left attached.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from typing import Any, Callable

import torch
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.model_bridge import TransformerBridge

from mechlearn import attribution, patching, zoo
from mechlearn.checks.core import CheckFailed, call_learner, call_learner_read_only, check, expect, expect_tensor
from mechlearn.models import ModelConfig, make_model
from mechlearn.patching import mean_ablate_head_hook
from mechlearn.tasks import SortingTask
from mechlearn.train import next_token_loss

# d_head * n_heads != d_model, so an einsum that mixes up the two axes fails loudly.
CONFIG = ModelConfig(d_vocab=13, n_ctx=12, d_model=24, n_layers=2, n_heads=3, d_head=5, d_mlp=40, seed=2)
TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}
FINAL_RESID = f"blocks.{CONFIG.n_layers - 1}.hook_resid_post"


@functools.lru_cache(maxsize=1)
def reference() -> tuple[TransformerBridge, Tensor, ActivationCache]:
    """The model the learner's code runs on, a batch of tokens and the cache of that batch.

    Checks call the learner with `call_learner_read_only`, which hands it copies of these,
    so a function that edits a tensor in place cannot spoil the answers.
    """
    model = make_model(CONFIG, device="cpu")
    generator = torch.Generator().manual_seed(CONFIG.seed)
    with torch.no_grad():
        # b_U is a buffer, not a parameter, in TransformerLens's native model: perturb it too.
        for weight in [*model.parameters(), model.unembed.bias]:
            weight.add_(0.2 * torch.randn(weight.shape, generator=generator))
        tokens = torch.randint(0, CONFIG.d_vocab, (3, 10), generator=generator)
        _, cache = model.run_with_cache(tokens)
    model.eval()
    return model, tokens, cache


def _logits(model: TransformerBridge, tokens: Tensor, fwd_hooks: list[tuple[str, Callable]] = ()) -> Tensor:
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))


@functools.lru_cache(maxsize=8)
def _without_heads(heads: tuple[tuple[int, int], ...]) -> TransformerBridge:
    """A copy of the reference model in which the listed heads write nothing (their W_O is zero)."""
    model = copy.deepcopy(reference()[0])
    with torch.no_grad():
        for layer, head in heads:
            model.blocks[layer].attn.W_O[head] = 0.0  # W_O is a view of the output projection
            if model.blocks[layer].attn.W_O[head].any():
                raise RuntimeError("TransformerLens no longer lets W_O be edited in place; update this check.")
    return model


def _learner_hook(make_hook: Callable, *args: Any) -> Callable:
    """The hook the learner's factory returns, wrapped so that its errors name the learner's code."""
    learner_hook = call_learner(make_hook, *args)
    expect(
        callable(learner_hook),
        f"`{make_hook.__name__}` returned {type(learner_hook).__name__}, expected a hook function",
        hint="define `def hook(activation, hook): ...` inside and return it (the function, not its result).",
    )
    return lambda activation, hook: call_learner_read_only(learner_hook, activation, hook)


def _missing_piece(difference: Tensor, pieces: dict[str, Tensor]) -> str:
    """The name of the piece that `difference` equals, or ''."""
    for name, piece in pieces.items():
        if torch.allclose(difference, piece.expand_as(difference), atol=1e-4, rtol=1e-3):
            return name
    return ""


# --- the cache and the residual stream ------------------------------------------------------


@check
def check_head_outputs(head_outputs) -> None:
    """`head_outputs(cache, model, layer)` are the heads' shares of `hook_attn_out`."""
    model, _, cache = reference()
    for layer in range(CONFIG.n_layers):
        actual = call_learner_read_only(head_outputs, cache, model, layer)
        expected = attribution.head_outputs(cache, model, layer)
        hint = "z is [batch pos head d_head] and W_O is [head d_head d_model]: contract d_head only and keep head first."
        expect_tensor(actual, expected, what=f"head_outputs of layer {layer}", atol=math.inf, hint=hint)
        expect_tensor(
            actual.sum(dim=0) + model.blocks[layer].attn.b_O,
            cache[f"blocks.{layer}.hook_attn_out"],
            what=f"the sum of your head outputs plus b_O in layer {layer}",
            hint="each head's output is z_h @ W_O[h], with the z cached at blocks.{layer}.attn.hook_z; leave b_O out.",
            **TOLERANCE,
        )
        expect_tensor(
            actual,
            expected,
            what=f"head_outputs of layer {layer}",
            hint="they add up to the right total but are split between the heads wrongly: entry h is what head h "
            "alone writes, from its own z and its own W_O, with the heads in order.",
            **TOLERANCE,
        )


@check
def check_residual_components(residual_components) -> None:
    """The components add up to the final residual stream and are the right pieces in order."""
    model, _, cache = reference()
    result = call_learner_read_only(residual_components, cache, model)
    expect(
        isinstance(result, tuple) and len(result) == 2,
        f"expected a tuple (components, labels), got {type(result).__name__}",
        hint="end with `return torch.stack(components), labels`.",
    )
    components, labels = result
    expected, expected_labels = attribution.residual_components(cache, model)
    expect(isinstance(components, Tensor), f"the components are a {type(components).__name__}", "stack them with torch.stack.")
    expect(
        components.ndim == 4 and components.shape[1:] == expected.shape[1:],
        f"the components have shape {tuple(components.shape)}, expected [component batch pos d_model] = "
        f"[{len(expected_labels)}, {', '.join(map(str, expected.shape[1:]))}]",
        hint="stack the pieces along a new first axis: torch.stack(list_of_pieces).",
    )
    _expect_sum_is_final_residual(components.detach(), model, cache)
    expect(
        len(components) == len(expected_labels),
        f"you returned {len(components)} components, expected {len(expected_labels)}: {', '.join(expected_labels)}",
        hint="one component per head (split each layer's attention with head_outputs), plus one b_O and one MLP per layer.",
    )
    expect_tensor(
        components,
        expected,
        what="the components",
        hint=f"the order is {', '.join(expected_labels)}.",
        **TOLERANCE,
    )
    expect(
        isinstance(labels, list) and len(labels) == len(expected_labels) and all(isinstance(l, str) for l in labels),
        f"expected {len(expected_labels)} labels (str), one per component, got {labels!r}",
        hint=f"e.g. {expected_labels}.",
    )
    wrong = [i for i, (label, right) in enumerate(zip(labels, expected_labels)) if label != right]
    if wrong:
        raise CheckFailed(
            f"{len(wrong)} of your {len(labels)} labels are wrong; the first is label {wrong[0]}: "
            f"expected {expected_labels[wrong[0]]!r}, got {labels[wrong[0]]!r}",
            hint="label i names component i, in the docstring's format and order; layers and heads count from 0.",
        )


def _expect_sum_is_final_residual(components: Tensor, model: TransformerBridge, cache: ActivationCache) -> None:
    """The sum of the components is the final residual stream; if not, name the missing piece."""
    total, final = components.sum(dim=0), cache[FINAL_RESID]
    if torch.allclose(total, final, **TOLERANCE):
        return
    layers = range(CONFIG.n_layers)
    missing = _missing_piece(
        final - total,
        {
            "the positional embedding (hook_pos_embed)": cache["hook_pos_embed"],
            "the token embedding (hook_embed)": cache["hook_embed"],
            "each layer's b_O": sum(model.blocks[layer].attn.b_O for layer in layers),
            "the MLP outputs (hook_mlp_out)": sum(cache[f"blocks.{layer}.hook_mlp_out"] for layer in layers),
        },
    )
    worst = (final - total).abs().max().item()
    raise CheckFailed(
        f"your components add up to something that differs from {FINAL_RESID} by up to {worst:.3g}"
        + (f": it is missing exactly {missing}" if missing else ""),
        hint="the residual stream is embed + pos_embed + every head's output + every layer's b_O "
        "(added once per layer, whatever the heads do) + every MLP's output.",
    )


@check
def check_apply_final_ln(apply_final_ln) -> None:
    """The final LayerNorm with the cached scale: exact on the full stream, additive on components."""
    model, _, cache = reference()
    expect_tensor(
        call_learner_read_only(apply_final_ln, cache[FINAL_RESID], cache, model),
        cache["ln_final.hook_out"],
        what="apply_final_ln of the final residual stream",
        hint="centre over d_model, divide by cache['ln_final.hook_scale'], multiply by model.ln_final.w, add model.ln_final.b.",
        **TOLERANCE,
    )
    components, _ = attribution.residual_components(cache, model)
    actual = call_learner_read_only(apply_final_ln, components, cache, model, add_bias=False)
    expected = attribution.apply_final_ln(components, cache, model, add_bias=False)
    what = "apply_final_ln of a stack of components with add_bias=False"
    expect_tensor(
        actual,
        expected,
        what=what,
        atol=math.inf,
        hint="the function must work on any number of leading dimensions: mean over the last one, keepdim=True.",
    )
    expect_tensor(
        actual.sum(dim=0) + model.ln_final.b,
        cache["ln_final.hook_out"],
        what="the sum of your normalised components plus ln_final.b",
        hint="use the cached scale for every component (recomputing it from each component breaks the sum), "
        "and add b only when add_bias is True.",
        **TOLERANCE,
    )
    expect_tensor(
        actual,
        expected,
        what=what,
        hint="the normalised components add up right but are split between the components wrongly: "
        "normalise each component on its own, from its own values.",
        **TOLERANCE,
    )


@check
def check_logit_lens(logit_lens) -> None:
    """Entry l is what the model would output if the layers from l on were skipped."""
    model, tokens, cache = reference()
    actual = call_learner_read_only(logit_lens, cache, model)
    skipped = [
        _logits(model, tokens, [(FINAL_RESID, lambda resid, hook, l=layer: cache[f"blocks.{l}.hook_resid_pre"])])
        for layer in range(CONFIG.n_layers)
    ]
    expected = torch.stack([*skipped, _logits(model, tokens)])
    hint = "stack the resid_pre of every layer and the final resid_post, apply model.ln_final (it computes each stream's own scale), then @ W_U + b_U."
    expect_tensor(actual, expected, what="the logit lens", atol=math.inf, hint=hint)
    expect_tensor(actual[-1], expected[-1], what="the last entry of the logit lens (the model's own logits)", hint=hint, **TOLERANCE)
    expect_tensor(
        actual,
        expected,
        what="the logit lens",
        hint="stopping early means the final LayerNorm normalises that earlier stream with its own scale; "
        "the cached ln_final scale belongs to the final stream only.",
        **TOLERANCE,
    )


@check
def check_direct_logit_attribution(direct_logit_attribution) -> None:
    """Each head's output, through the frozen final LayerNorm, onto the correct next token's unembedding."""
    model, tokens, cache = reference()
    actual = call_learner_read_only(direct_logit_attribution, cache, model, tokens)
    expected = attribution.direct_logit_attribution(cache, model, tokens)
    expect_tensor(
        actual,
        expected,
        what="the direct logit attribution",
        hint="position i is scored on the next token, tokens[:, 1:], so drop the last position; use each head's "
        "z_h @ W_O[h], centred, divided by the cached ln_final scale and multiplied by ln_final.w (no b), "
        "then dotted with the W_U column of that token.",
        **TOLERANCE,
    )


# --- hooks -------------------------------------------------------------------------------------


@check
def check_zero_ablate_head_hook(zero_ablate_head_hook) -> None:
    """With the hook on hook_z, the model behaves as if the head's W_O were zero."""
    model, tokens, _ = reference()
    for layer, head in [(0, 1), (1, 2)]:
        hook = _learner_hook(zero_ablate_head_hook, head)
        expect_tensor(
            _logits(model, tokens, [(f"blocks.{layer}.attn.hook_z", hook)]),
            _logits(_without_heads(((layer, head),)), tokens),
            what=f"the logits with head {head} of layer {layer} zero-ablated",
            hint="hook_z is [batch pos head d_head]: zero z[:, :, head] only (z[:, head] would zero a position), "
            "and return the new z.",
            **TOLERANCE,
        )


@check
def check_mean_ablate_head_hook(mean_ablate_head_hook) -> None:
    """The head's z becomes the given mean at every position; the other heads keep theirs."""
    model, tokens, _ = reference()
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(2, 6, CONFIG.n_heads, CONFIG.d_head, generator=generator)
    mean_z = torch.randn(6, CONFIG.n_heads, CONFIG.d_head, generator=generator)
    hook_point = model.hook_dict["blocks.0.attn.hook_z"]
    expected = z.clone()
    expected[:, :, 1] = mean_z[:, 1]
    expect_tensor(
        _learner_hook(mean_ablate_head_hook, 1, mean_z.clone())(z.clone(), hook_point),
        expected,
        what="your hook's output on a random z (head 1 ablated)",
        hint="replace z[:, :, head] by mean_z[:, head] (the given mean, one vector per position), keep the other heads, return z.",
        **TOLERANCE,
    )
    # With a mean of zero, mean-ablation is zero-ablation, which TransformerLens computes by zeroing W_O.
    zeros = torch.zeros(tokens.shape[1], CONFIG.n_heads, CONFIG.d_head)
    expect_tensor(
        _logits(model, tokens, [("blocks.1.attn.hook_z", _learner_hook(mean_ablate_head_hook, 0, zeros))]),
        _logits(_without_heads(((1, 0),)), tokens),
        what="the logits with head 0 of layer 1 replaced by a zero mean",
        hint="hook_z is [batch pos head d_head]: overwrite z[:, :, head] only, and return the new z.",
        **TOLERANCE,
    )


@check
def check_loss_with_heads_ablated(loss_with_heads_ablated) -> None:
    """Zero-ablation matches the model without those heads; mean-ablation uses the clean means."""
    model, tokens, _ = reference()
    mask = torch.arange(tokens.shape[1] - 1) >= 4
    cases = [([], "zero", None), ([(0, 1)], "zero", None), ([(0, 1), (1, 2), (1, 0)], "zero", mask)]
    for heads, mode, case_mask in cases:
        expected = next_token_loss(_logits(_without_heads(tuple(heads)), tokens), tokens, case_mask)
        actual = call_learner_read_only(loss_with_heads_ablated, model, tokens, list(heads), mode, case_mask)
        expect_tensor(
            actual,
            expected,
            what=f"the loss with heads {heads} zero-ablated" + (" on the masked predictions" if case_mask is not None else ""),
            hint="one hook per (layer, head), all in one run_with_hooks; then next_token_loss(logits, tokens, mask), "
            "which also handles mask=None.",
            **TOLERANCE,
        )
    heads = [(0, 2), (1, 1)]
    with torch.no_grad():
        _, clean = model.run_with_cache(tokens)
    hooks = [(f"blocks.{l}.attn.hook_z", mean_ablate_head_hook(h, clean[f"blocks.{l}.attn.hook_z"].mean(dim=0))) for l, h in heads]
    expect_tensor(
        call_learner_read_only(loss_with_heads_ablated, model, tokens, list(heads), "mean", mask),
        next_token_loss(_logits(model, tokens, hooks), tokens, mask),
        what=f"the loss with heads {heads} mean-ablated",
        hint="take each layer's mean z over the batch from ONE clean run (run_with_cache) before ablating anything, "
        "so that ablating a layer-0 head does not change the mean used in layer 1.",
        **TOLERANCE,
    )


@check
def check_patch_position_hook(patch_position_hook) -> None:
    """Patching the embedding at one position is the same as running on the edited tokens."""
    model, tokens, _ = reference()
    source_tokens = (tokens + 1 + torch.arange(tokens.shape[1])) % CONFIG.d_vocab  # differs at every position
    with torch.no_grad():
        _, source_cache = model.run_with_cache(source_tokens)
    hint = "overwrite only activation[:, pos] (position is the second axis) with source_activation[:, pos], and return it."
    for pos in [0, 4, tokens.shape[1] - 1]:
        edited = tokens.clone()
        edited[:, pos] = source_tokens[:, pos]
        hook = _learner_hook(patch_position_hook, pos, source_cache["hook_embed"].clone())
        expect_tensor(
            _logits(model, tokens, [("hook_embed", hook)]),
            _logits(model, edited),
            what=f"the logits with the embedding of position {pos} patched",
            hint=hint,
            **TOLERANCE,
        )
    # Called directly, on an activation of another shape: only position `pos` changes.
    generator = torch.Generator().manual_seed(4)
    activation, source = torch.randn(2, 7, 3, 4, generator=generator), torch.randn(2, 7, 3, 4, generator=generator)
    expected = activation.clone()
    expected[:, 2] = source[:, 2]
    hook_point = model.hook_dict["blocks.0.attn.hook_z"]
    expect_tensor(
        _learner_hook(patch_position_hook, 2, source.clone())(activation.clone(), hook_point),
        expected,
        what="your hook's output on a random [batch pos head d_head] activation with pos=2",
        hint=hint,
        **TOLERANCE,
    )


# --- the experiments, graded by their outcome on the zoo sorter -------------------------------


SORTER = "sort-digits-2l"
CHANGED_POS = 3  # the digit x3 is lowered in the patching pairs


@functools.lru_cache(maxsize=1)
def sorter_and_control() -> tuple[TransformerBridge, TransformerBridge]:
    """The zoo's sorter (whose circuit the chapter finds) and a random model of the same shape."""
    sorter = zoo.load(SORTER, device="cpu")
    control = make_model(dataclasses.replace(sorter.mechlearn_config, seed=1), device="cpu")
    return sorter, control


@functools.lru_cache(maxsize=2)
def patching_experiment(on_control: bool) -> tuple[TransformerBridge, Tensor, ActivationCache, Callable[[Tensor], Tensor]]:
    """The chapter's patching experiment on the sorter (or on the control): the model, the corrupted
    prompts, the cache of their twins with x3 lowered, and the first-digit metric (0 = corrupted, 1 = clean)."""
    model = sorter_and_control()[on_control]
    task = SortingTask()
    corrupted, clean = task.lowered_pairs(80, CHANGED_POS, torch.Generator().manual_seed(5))
    prompt_length = task.prompt_length
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean[:, :prompt_length])
        corrupted_logits = model(corrupted[:, :prompt_length])

    def first_digit_flipped(logits: Tensor) -> Tensor:
        return patching.normalised_logit_difference(
            logits, clean_logits, corrupted_logits, prompt_length - 1, clean[:, prompt_length], corrupted[:, prompt_length]
        )

    return model, corrupted[:, :prompt_length], clean_cache, first_digit_flipped


@check
def check_head_ablation_sweep(head_ablation_sweep) -> None:
    """The loss increase of every head ablated alone; on the sorter it singles out L0H2, on a random model nothing."""
    model, tokens, _ = reference()
    mask = torch.arange(tokens.shape[1] - 1) >= 3
    hint = (
        "entry [layer, head] is loss_with_heads_ablated(model, tokens, [(layer, head)], mode, mask) minus the clean "
        "loss (heads=[]), with the same mode and mask, one head at a time."
    )
    for mode, case_mask in [("zero", None), ("mean", mask)]:
        expect_tensor(
            call_learner_read_only(head_ablation_sweep, model, tokens, mode, case_mask),
            patching.head_ablation_sweep(model, tokens, mode, case_mask),
            what=f"the {mode}-ablation sweep" + (" on the masked predictions" if case_mask is not None else ""),
            hint=hint,
            **TOLERANCE,
        )
    sorter, control = sorter_and_control()
    task = SortingTask()
    sorter_tokens = task.sample(100, torch.Generator().manual_seed(6))
    found = call_learner_read_only(head_ablation_sweep, sorter, sorter_tokens, "mean", task.target_mask)
    layer, head = divmod(int(found.argmax()), sorter.cfg.n_heads)
    expect(
        (layer, head) == (0, 2) and found[0, 2] > 0.2 and found[1].max() < 0.01,
        f"on the zoo sorter your sweep says the head that matters most is L{layer}H{head} (+{found.max():.3f} nats) "
        f"and the largest layer-1 head costs {found[1].max():.4f}; expected L0H2, costing more than 0.2 nats, "
        "and no layer-1 head costing more than 0.01",
        hint=hint,
    )
    on_control = call_learner_read_only(head_ablation_sweep, control, sorter_tokens, "mean", task.target_mask)
    expect(
        on_control.max() < 0.1,
        f"on a random model of the sorter's shape your sweep finds a head costing {on_control.max():.3f} nats; "
        "a random model has no head it needs, so every entry should be below 0.1",
        hint=hint,
    )


@check
def check_normalised_logit_difference(normalised_logit_difference) -> None:
    """(LD(patched) - LD(corrupted)) / (LD(clean) - LD(corrupted)) on batch means; 0 on the corrupted run, 1 on the clean."""
    hint = (
        "LD(logits) is the batch mean of logits[:, pos, clean_answers] - logits[:, pos, corrupted_answers]; take it for "
        "the patched, clean and corrupted logits, then (patched - corrupted) / (clean - corrupted), one division of means."
    )
    for seed, pos in [(7, 2), (8, 4), (9, 0)]:
        generator = torch.Generator().manual_seed(seed)
        batch, n_pos, d_vocab = 6, 5, 9
        patched, clean, corrupted = (3 * torch.randn(batch, n_pos, d_vocab, generator=generator) for _ in range(3))
        clean_answers = torch.randint(0, d_vocab, (batch,), generator=generator)
        corrupted_answers = (clean_answers + torch.randint(1, d_vocab, (batch,), generator=generator)) % d_vocab
        args = (clean, corrupted, pos, clean_answers, corrupted_answers)
        for name, logits, expected in [("the clean logits", clean, 1.0), ("the corrupted logits", corrupted, 0.0)]:
            expect_tensor(
                call_learner_read_only(normalised_logit_difference, logits, *args),
                torch.tensor(expected),
                what=f"your metric with {name} as the patched logits",
                hint="the metric is 0 when the patched run is the corrupted run and 1 when it is the clean run: " + hint,
                **TOLERANCE,
            )
        expect_tensor(
            call_learner_read_only(normalised_logit_difference, patched, *args),
            patching.normalised_logit_difference(patched, *args),
            what=f"your metric on random logits at position {pos}",
            hint=hint,
            **TOLERANCE,
        )



@functools.lru_cache(maxsize=1)
def clean_reference_cache() -> ActivationCache:
    """The cache of a "clean" batch of the reference model's tokens, for the patching sweeps to patch from."""
    model, tokens, _ = reference()
    with torch.no_grad():
        _, cache = model.run_with_cache((tokens * 5 + 2) % CONFIG.d_vocab)
    return cache

@check
def check_patch_every_position(patch_every_position) -> None:
    """Equals the library's sweep; on the sorter the new digit moves from x3 to SEP in layer 0, on a random model it does not."""
    model, tokens, _ = reference()
    clean_cache = clean_reference_cache()
    weights = torch.linspace(-1.0, 2.0, tokens.shape[1])

    def metric(logits: Tensor) -> Tensor:
        """Every position and two tokens count, with different weights, so any misplaced patch shows."""
        return ((logits[..., 0] - logits[..., 1]) * weights).mean()

    hook_names = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.hook_mlp_out", FINAL_RESID]
    expect_tensor(
        call_learner_read_only(patch_every_position, model, tokens, clean_cache, hook_names, metric),
        patching.patch_every_position(model, tokens, clean_cache, hook_names, metric),
        what="your sweep on a small random model",
        hint="for each hook name (rows) and each position (columns): run the CORRUPTED tokens with "
        "patch_position_hook(pos, clean_cache[name]) on that hook alone, and record metric(patched logits).",
        **TOLERANCE,
    )
    sep = SortingTask().prompt_length - 1
    names = ["blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.1.hook_resid_pre"]
    hint = "patch from the clean cache into the corrupted run, and score it with the metric you are given."
    rows = []
    for on_control in (False, True):
        model_, prompts, prompt_cache, flipped = patching_experiment(on_control)
        rows.append(dict(zip(names, call_learner_read_only(patch_every_position, model_, prompts, prompt_cache, names, flipped))))
    row, control = rows
    expect(
        row["blocks.0.hook_resid_pre"][CHANGED_POS] > 0.95 and row["blocks.1.hook_resid_pre"][sep] > 0.95
        and row["blocks.1.hook_resid_pre"][CHANGED_POS] < 0.05 and row["blocks.0.hook_attn_out"][sep] > 0.9,
        "on the zoo sorter, entering layer 0 the new digit should live at x3 (> 0.95 there) and entering layer 1 at SEP "
        f"(> 0.95 there, < 0.05 at x3), with layer 0's attention output at SEP above 0.9; your sweep gives "
        f"{row['blocks.0.hook_resid_pre'][CHANGED_POS]:.2f}, {row['blocks.1.hook_resid_pre'][sep]:.2f}, "
        f"{row['blocks.1.hook_resid_pre'][CHANGED_POS]:.2f} and {row['blocks.0.hook_attn_out'][sep]:.2f}",
        hint=hint,
    )
    handover = control["blocks.1.hook_resid_pre"]
    expect(
        not (handover[sep] > 0.95 and handover[CHANGED_POS] < 0.05),
        f"on a random model of the sorter's shape your sweep also shows the digit handed over from x3 ({handover[CHANGED_POS]:.2f}) "
        f"to SEP ({handover[sep]:.2f}) entering layer 1; an untrained model should not move it cleanly",
        hint=hint,
    )


@check
def check_patch_every_head(patch_every_head) -> None:
    """Equals the library's sweep; on the sorter L0H0 carries most of the new digit to SEP and layer 1 none, on a random model not."""
    model, tokens, _ = reference()
    clean_cache = clean_reference_cache()

    def metric(logits: Tensor) -> Tensor:
        return (logits[..., 0] - logits[..., 1]).mean()

    hint = (
        "for each (layer, head): run the CORRUPTED tokens with a hook on blocks.{layer}.attn.hook_z that copies "
        "clean_cache's z of that head at position pos only (z[:, pos, head]), and record metric(patched logits)."
    )
    for pos in [2, tokens.shape[1] - 1]:
        expect_tensor(
            call_learner_read_only(patch_every_head, model, tokens, clean_cache, pos, metric),
            patching.patch_every_head(model, tokens, clean_cache, pos, metric),
            what=f"your sweep on a small random model at position {pos}",
            hint=hint,
            **TOLERANCE,
        )
    sorter_heads, control_heads = (
        call_learner_read_only(patch_every_head, model_, prompts, prompt_cache, SortingTask().prompt_length - 1, flipped)
        for model_, prompts, prompt_cache, flipped in (patching_experiment(False), patching_experiment(True))
    )
    layer, head = divmod(int(sorter_heads.argmax()), sorter_heads.shape[1])
    expect(
        (layer, head) == (0, 0) and sorter_heads[0, 0] > 0.5 and sorter_heads[1].abs().sum() < 0.1,
        f"on the zoo sorter your sweep says L{layer}H{head} carries most of the first digit to SEP ({sorter_heads.max():.2f}) "
        f"and layer 1's heads {sorter_heads[1].abs().sum():.2f} together; expected L0H0, above 0.5, and layer 1 below 0.1",
        hint=hint,
    )
    expect(
        not (control_heads[0].max() > 0.5 and control_heads[1].abs().sum() < 0.1),
        "on a random model of the sorter's shape your sweep finds one layer-0 head carrying the digit and an idle "
        "layer 1, as in the sorter; an untrained model should not",
        hint=hint,
    )
