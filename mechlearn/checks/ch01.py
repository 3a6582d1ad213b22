"""Checks for chapter 01, transformers from scratch.

Each check runs the learner's code next to a TransformerLens native model with the
same weights and compares the two to 1e-5. The reference model has random weights,
biases and LayerNorm parameters, so forgetting a bias or a LayerNorm scale shows.
"""

from __future__ import annotations

import functools
import math

import torch
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.model_bridge import TransformerBridge

from mechlearn.checks.core import call_learner, check, expect, expect_tensor
from mechlearn.models import ModelConfig, make_model, model_device
from mechlearn.tasks import SortingTask
from mechlearn.train import next_token_accuracy
from mechlearn.transformer import load_block_weights_from, load_weights_from

# d_head * n_heads != d_model, so an einsum that mixes up the two axes fails loudly.
CONFIG = ModelConfig(d_vocab=13, n_ctx=16, d_model=24, n_layers=2, n_heads=3, d_head=5, d_mlp=40, seed=1)
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


@functools.lru_cache(maxsize=1)
def reference() -> tuple[TransformerBridge, torch.Tensor, ActivationCache]:
    """The TransformerLens model the learner's code is compared with, its input and cache."""
    model = make_model(CONFIG, device="cpu")
    generator = torch.Generator().manual_seed(CONFIG.seed)
    with torch.no_grad():
        # b_U is a buffer, not a parameter, in TransformerLens's native model: perturb it too.
        for weight in [*model.parameters(), model.unembed.bias]:
            weight.add_(0.1 * torch.randn(weight.shape, generator=generator))
    tokens = torch.randint(0, CONFIG.d_vocab, (2, 9), generator=generator)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return model, tokens, cache


def _weights(module: torch.nn.Module, *names: str) -> list[torch.Tensor]:
    """Copies of the named weights, so a learner's in-place edit cannot spoil the reference."""
    return [getattr(module, name).detach().clone() for name in names]


@check
def check_layer_norm(layer_norm) -> None:
    """`layer_norm(x, w, b)` equals the first LayerNorm of the reference model."""
    model, _, cache = reference()
    actual = call_learner(layer_norm, cache["blocks.0.hook_resid_pre"].clone(), *_weights(model.blocks[0].ln1, "w", "b"))
    expect_tensor(
        actual,
        cache["blocks.0.ln1.hook_out"],
        what="the output of layer_norm",
        hint="subtract the mean over d_model, divide by sqrt(variance + eps) with the biased variance "
        "(the mean of the squares), then multiply by w and add b.",
        **TOLERANCE,
    )


@check
def check_embed(embed) -> None:
    """`embed(tokens, W_E)` equals `hook_embed`."""
    model, tokens, cache = reference()
    actual = call_learner(embed, tokens.clone(), *_weights(model, "W_E"))
    expect_tensor(actual, cache["hook_embed"], what="the output of embed", hint="index the rows of W_E with the tokens.", **TOLERANCE)


@check
def check_pos_embed(pos_embed) -> None:
    """`pos_embed(tokens, W_pos)` equals `hook_pos_embed`, one copy per sequence in the batch."""
    model, tokens, cache = reference()
    actual = call_learner(pos_embed, tokens.clone(), *_weights(model, "W_pos"))
    expect_tensor(
        actual,
        cache["hook_pos_embed"],
        what="the output of pos_embed",
        hint="take the first seq_len rows of W_pos and repeat them over the batch (einops.repeat).",
        **TOLERANCE,
    )


@check
def check_attention_scores(attention_scores) -> None:
    """Scores equal the dot products of TransformerLens's queries and keys over sqrt(d_head)."""
    model, _, cache = reference()
    q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]
    expected = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(CONFIG.d_head)
    weights = _weights(model.blocks[0].attn, "W_Q", "b_Q", "W_K", "b_K")
    actual = call_learner(attention_scores, cache["blocks.0.ln1.hook_out"].clone(), *weights)
    expect_tensor(
        actual,
        expected,
        what="the attention scores",
        hint="q and k have shape (batch, pos, head, d_head); contract over d_head to get "
        "(batch, head, query_pos, key_pos), add the biases, and divide by sqrt(d_head), not sqrt(d_model).",
        **TOLERANCE,
    )


@check
def check_apply_causal_mask(apply_causal_mask) -> None:
    """Keys after the query get -inf; softmax of the result is TransformerLens's pattern."""
    _, _, cache = reference()
    scores = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    future = torch.ones(5, 5, dtype=torch.bool).triu(diagonal=1)
    expected = scores.masked_fill(future, float("-inf"))
    hint = "mask where key_pos > query_pos (torch.triu(..., diagonal=1)); a query may attend to itself."
    expect_tensor(call_learner(apply_causal_mask, scores.clone()), expected, what="the masked scores", hint=hint, **TOLERANCE)
    # Rectangular and longer inputs too: the mask must come from the scores' shape, not a constant.
    q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]
    real_scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(CONFIG.d_head)
    pattern = call_learner(apply_causal_mask, real_scores.clone()).softmax(dim=-1)
    expect_tensor(pattern, cache["blocks.0.attn.hook_pattern"], what="softmax of your masked scores", hint=hint, **TOLERANCE)


@check
def check_attention(attention) -> None:
    """The whole attention layer equals `hook_attn_out` of layer 0."""
    model, _, cache = reference()
    weights = _weights(model.blocks[0].attn, "W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V", "W_O", "b_O")
    actual = call_learner(attention, cache["blocks.0.ln1.hook_out"].clone(), *weights)
    expect_tensor(
        actual,
        cache["blocks.0.hook_attn_out"],
        what="the output of attention",
        hint="pattern = softmax over key_pos of the masked scores; z = pattern-weighted sum of v; "
        "the output sums each head's z @ W_O over heads, plus b_O.",
        **TOLERANCE,
    )


@check
def check_mlp(mlp) -> None:
    """The MLP equals `hook_mlp_out` of layer 0."""
    model, _, cache = reference()
    weights = _weights(model.blocks[0].mlp, "W_in", "b_in", "W_out", "b_out")
    actual = call_learner(mlp, cache["blocks.0.ln2.hook_out"].clone(), *weights)
    expect_tensor(
        actual,
        cache["blocks.0.hook_mlp_out"],
        what="the output of mlp",
        hint="x @ W_in + b_in, then GELU (torch.nn.functional.gelu, the exact one), then @ W_out + b_out.",
        **TOLERANCE,
    )


@check
def check_unembed(unembed) -> None:
    """Unembedding the final LayerNorm's output gives the model's logits."""
    model, tokens, cache = reference()
    actual = call_learner(unembed, cache["ln_final.hook_out"].clone(), *_weights(model, "W_U", "b_U"))
    expect_tensor(actual, model(tokens).detach(), what="the logits from unembed", hint="x @ W_U + b_U.", **TOLERANCE)


@check
def check_transformer_block(TransformerBlock) -> None:
    """A block with layer 1's weights maps `resid_pre` to `resid_post` as TransformerLens does."""
    model, _, cache = reference()
    block = load_block_weights_from(call_learner(TransformerBlock, CONFIG), model.blocks[1])
    actual = call_learner(block, cache["blocks.1.hook_resid_pre"].clone())
    expect_tensor(
        actual,
        cache["blocks.1.hook_resid_post"],
        what="the output of your TransformerBlock",
        hint="resid_mid = resid_pre + attention(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid)).",
        **TOLERANCE,
    )


@check
def check_transformer(Transformer) -> None:
    """The whole model, loaded with the reference weights, gives TransformerLens's logits."""
    model, tokens, _ = reference()
    yours = load_weights_from(call_learner(Transformer, CONFIG), model)
    actual = call_learner(yours, tokens.clone())
    expect_tensor(
        actual,
        model(tokens).detach(),
        what="the logits of your Transformer",
        hint="embed + pos_embed, every block in order, the final LayerNorm, then unembed.",
        **TOLERANCE,
    )


@check
def check_sample_next_token(sample_next_token) -> None:
    """Greedy at temperature 0; at temperature T the draws follow softmax(logits / T)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, generator=generator)
    greedy = call_learner(sample_next_token, logits.clone(), 0.0, generator)
    expect_tensor(greedy, logits.argmax(dim=-1), what="the greedy samples (temperature 0)", hint="at temperature 0 return the argmax.")
    row = torch.tensor([2.0, 1.0, 0.0, -1.0])
    n_draws, temperature = 20_000, 2.0
    draws = call_learner(sample_next_token, row.repeat(n_draws, 1), temperature, generator)
    expect_tensor(draws, torch.zeros(n_draws, dtype=torch.long), what="the samples", atol=math.inf, hint="return one token id per row.")
    frequencies = torch.bincount(draws, minlength=len(row)).float() / n_draws
    expected = (row / temperature).softmax(dim=-1)
    expect(
        (frequencies - expected).abs().max().item() < 0.02,
        f"at temperature {temperature} the tokens were drawn with frequencies {frequencies.numpy().round(3).tolist()}, "
        f"but softmax(logits / T) is {expected.numpy().round(3).tolist()}.",
        "divide the logits by the temperature before the softmax, then draw with torch.multinomial.",
    )


@check
def check_trained_sorter(model, min_accuracy: float = 0.95) -> None:
    """A trained model gets the sorted half right on held-out sequences."""
    task = SortingTask()
    tokens = task.sample(500, torch.Generator().manual_seed(12_345)).to(model_device(model))
    logits = call_learner(model, tokens)
    expected_shape = torch.zeros(500, task.n_ctx, task.d_vocab, device=tokens.device)
    expect_tensor(logits, expected_shape, what="the model's logits", atol=math.inf, hint="the model maps tokens to logits.")
    accuracy = next_token_accuracy(logits.detach(), tokens, task.target_mask)
    expect(
        accuracy >= min_accuracy,
        f"the model predicts {accuracy:.1%} of the sorted digits correctly; a trained model reaches at least {min_accuracy:.0%}.",
        "train for more steps, or check that the loss went down in the plot above.",
    )
