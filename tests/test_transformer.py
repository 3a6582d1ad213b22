"""The from-scratch reference transformer agrees with TransformerLens; sampling works.

The chapter 01 checks themselves (pass on these reference functions, fail on typical
mistakes) are tested in test_ch01_checks.py; here each function is compared with the
hooks of models of other shapes than the checks use.
"""

import dataclasses

import pytest
import torch
from bad_inputs import raises_one_sentence

from mechlearn import zoo
from mechlearn.models import ModelConfig, make_model
from mechlearn.sampling import generate, generate_with_kv_cache, sample_next_token
from mechlearn.tasks import SortingTask
from mechlearn.transformer import (
    Transformer,
    TransformerBlock,
    apply_causal_mask,
    attention,
    attention_scores,
    embed,
    empty_kv_cache,
    forward_with_kv_cache,
    layer_norm,
    load_weights_from,
    mlp,
    pos_embed,
    unembed,
)



TOL = {"atol": 1e-5, "rtol": 1e-5}
# n_heads * d_head != d_model, so mixed-up axes fail.
MLP_CONFIG = ModelConfig(d_vocab=11, n_ctx=12, d_model=20, n_layers=3, n_heads=3, d_head=4, d_mlp=36, seed=2)
ATTN_ONLY_CONFIG = ModelConfig(d_vocab=9, n_ctx=10, d_model=12, n_layers=2, n_heads=4, d_head=5, d_mlp=None, seed=3)


def perturbed_model(config: ModelConfig, seed: int = 0):
    """A bridge whose every weight, bias and LayerNorm parameter is random, b_U included."""
    model = make_model(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
        # The native unembed bias is a buffer, not a parameter; make it non-zero too.
        model.unembed.bias.add_(torch.randn(model.unembed.bias.shape, generator=generator))
    assert model.b_U.abs().min() > 0
    assert model.blocks[0].ln1.w.sub(1).abs().min() > 0
    return model.eval()


def tokens_for(config: ModelConfig, batch: int = 3, pos: int | None = None) -> torch.Tensor:
    pos = pos or config.n_ctx
    return torch.randint(0, config.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("config", [MLP_CONFIG, ATTN_ONLY_CONFIG], ids=["mlp", "attn_only"])
def test_reference_transformer_equals_bridge(config: ModelConfig) -> None:
    bridge = perturbed_model(config)
    ours = load_weights_from(Transformer(config), bridge)
    for tokens in (tokens_for(config), tokens_for(config, batch=1, pos=5)):
        with torch.no_grad():
            expected = bridge(tokens)
            actual = ours(tokens)
        assert actual.shape == (tokens.shape[0], tokens.shape[1], config.d_vocab)
        torch.testing.assert_close(actual, expected, **TOL)
    # A fresh Transformer (random weights) does not agree: the weights really were copied.
    with torch.no_grad():
        assert not torch.allclose(Transformer(config)(tokens), bridge(tokens), atol=1e-3)


def test_blocks_have_mlp_only_when_configured() -> None:
    assert TransformerBlock(MLP_CONFIG).has_mlp and hasattr(TransformerBlock(MLP_CONFIG), "W_in")
    attn_only = TransformerBlock(ATTN_ONLY_CONFIG)
    assert not attn_only.has_mlp and not hasattr(attn_only, "W_in")
    assert len(Transformer(MLP_CONFIG).blocks) == 3


def test_each_function_matches_its_hook() -> None:
    config = MLP_CONFIG
    model = perturbed_model(config, seed=1)
    tokens = tokens_for(config)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    close = lambda actual, name: torch.testing.assert_close(actual, cache[name], **TOL)  # noqa: E731

    close(embed(tokens, model.W_E), "hook_embed")
    close(pos_embed(tokens, model.W_pos), "hook_pos_embed")
    for layer, block in enumerate(model.blocks):
        prefix = f"blocks.{layer}"
        resid_pre = cache[f"{prefix}.hook_resid_pre"]
        close(layer_norm(resid_pre, block.ln1.w, block.ln1.b), f"{prefix}.ln1.hook_out")
        normed = cache[f"{prefix}.ln1.hook_out"]
        attn = block.attn
        scores = attention_scores(normed, attn.W_Q, attn.b_Q, attn.W_K, attn.b_K)
        torch.testing.assert_close(
            apply_causal_mask(scores).softmax(dim=-1), cache[f"{prefix}.attn.hook_pattern"], **TOL
        )
        close(attention(normed, attn.W_Q, attn.b_Q, attn.W_K, attn.b_K, attn.W_V, attn.b_V, attn.W_O, attn.b_O), f"{prefix}.hook_attn_out")
        close(resid_pre + cache[f"{prefix}.hook_attn_out"], f"{prefix}.hook_resid_mid")
        close(layer_norm(cache[f"{prefix}.hook_resid_mid"], block.ln2.w, block.ln2.b), f"{prefix}.ln2.hook_out")
        close(mlp(cache[f"{prefix}.ln2.hook_out"], block.mlp.W_in, block.mlp.b_in, block.mlp.W_out, block.mlp.b_out), f"{prefix}.hook_mlp_out")
        close(cache[f"{prefix}.hook_resid_mid"] + cache[f"{prefix}.hook_mlp_out"], f"{prefix}.hook_resid_post")
    close(layer_norm(cache[f"blocks.{config.n_layers - 1}.hook_resid_post"], model.ln_final.w, model.ln_final.b), "ln_final.hook_out")
    torch.testing.assert_close(unembed(cache["ln_final.hook_out"], model.W_U, model.b_U), logits, **TOL)


def test_causal_mask_shape_and_values() -> None:
    scores = torch.randn(1, 2, 3, 5)  # more keys than queries
    masked = apply_causal_mask(scores)
    future = torch.ones(3, 5, dtype=torch.bool).triu(diagonal=1)
    assert torch.isneginf(masked[..., future]).all()
    assert torch.equal(masked[..., ~future], scores[..., ~future])
    assert torch.isfinite(scores).all()  # not modified in place


# --- sampling ----------------------------------------------------------------------------


def test_sample_next_token() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, -1.0, 2.0]])
    assert sample_next_token(logits, 0.0).tolist() == [1, 0]
    first = sample_next_token(logits, 1.0, torch.Generator().manual_seed(0))
    assert first.shape == (2,) and first.dtype == torch.long
    assert torch.equal(first, sample_next_token(logits, 1.0, torch.Generator().manual_seed(0)))
    # At a tiny temperature sampling is greedy; at a huge one it is uniform.
    assert sample_next_token(logits.repeat(200, 1), 1e-3, torch.Generator().manual_seed(0)).tolist() == [1, 0] * 200
    hot = sample_next_token(torch.tensor([[0.0, 5.0, 1.0]]).repeat(3000, 1), 1e4, torch.Generator().manual_seed(0))
    assert (torch.bincount(hot, minlength=3) / 3000 - 1 / 3).abs().max() < 0.05
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sample_next_token(logits, -1.0)


def test_greedy_generate_sorts_held_out_prompts() -> None:
    model = zoo.load("sort-digits-2l")
    task = SortingTask(**{k: v for k, v in zoo.card("sort-digits-2l")["recipe"]["task"].items() if k != "generator"})
    tokens = task.sample(300, torch.Generator().manual_seed(31_337))  # a seed neither training nor the card used
    prompts = tokens[:, : task.prompt_length]
    completions = generate(model, prompts, max_new_tokens=task.length)
    assert completions.shape == tokens.shape
    assert torch.equal(completions[:, : task.prompt_length], prompts)
    sequence_accuracy = (completions == tokens).all(dim=-1).float().mean().item()
    assert sequence_accuracy >= 0.95, sequence_accuracy
    # The from-scratch transformer with the zoo weights generates the same completions.
    ours = load_weights_from(Transformer(model.mechlearn_config), model).eval()
    assert torch.equal(generate(ours, prompts[:50], max_new_tokens=task.length), completions[:50])


@pytest.mark.parametrize("config", [MLP_CONFIG, ATTN_ONLY_CONFIG], ids=["mlp", "attn_only"])
def test_kv_cache_gives_the_logits_and_tokens_of_the_whole_model(config: ModelConfig) -> None:
    ours = load_weights_from(Transformer(config), perturbed_model(config)).eval()
    prompt = tokens_for(config, batch=3, pos=3)
    tokens = generate_with_kv_cache(ours, prompt, config.n_ctx - 3)
    assert torch.equal(tokens, generate(ours, prompt, config.n_ctx - 3))
    # The prompt in one pass, then one position at a time: every step's logits are the whole model's.
    with torch.no_grad():
        logits, cache = forward_with_kv_cache(ours, tokens[:, :3], empty_kv_cache(ours, 3, tokens.device))
        steps = [logits]
        for position in range(3, config.n_ctx):
            logits, cache = forward_with_kv_cache(ours, tokens[:, position : position + 1], cache)
            steps.append(logits)
        torch.testing.assert_close(torch.cat(steps, dim=1), ours(tokens), **TOL)
    assert [keys.shape for keys, _ in cache] == [(3, config.n_ctx, config.n_heads, config.d_head)] * config.n_layers


@pytest.mark.bad_input
def test_forward_with_kv_cache_names_a_cache_that_would_pass_n_ctx() -> None:
    model = Transformer(SMALL)
    _, cache = forward_with_kv_cache(model, torch.zeros(1, 3, dtype=torch.long), empty_kv_cache(model, 1, torch.device("cpu")))
    with raises_one_sentence(ValueError, "the cache holds 3 positions and tokens adds 2, more than the model's n_ctx=4"):
        forward_with_kv_cache(model, torch.zeros(1, 2, dtype=torch.long), cache)
    with raises_one_sentence(ValueError, r"cache must be a list of one \(keys, values\) pair per block \(1\)"):
        forward_with_kv_cache(model, torch.zeros(1, 2, dtype=torch.long), [])


def test_generate_with_temperature_is_seeded() -> None:
    model = perturbed_model(ATTN_ONLY_CONFIG)
    prompt = tokens_for(ATTN_ONLY_CONFIG, batch=4, pos=2)
    first = generate(model, prompt, 5, temperature=1.0, seed=0)
    assert first.shape == (4, 7)
    assert torch.equal(first, generate(model, prompt, 5, temperature=1.0, seed=0))
    assert not torch.equal(
        torch.stack([generate(model, prompt, 5, temperature=1.0, seed=s) for s in range(1, 4)]), first.expand(3, -1, -1)
    )


@pytest.mark.bad_input
def test_from_scratch_transformer_refuses_configs_it_does_not_implement() -> None:
    with pytest.raises(ValueError, match="act_fn='relu'"):
        Transformer(ModelConfig(d_vocab=5, n_ctx=4, act_fn="relu"))


# --- bad inputs: every one named in one sentence (issue 11) -------------------------------------

SMALL = ModelConfig(d_vocab=5, n_ctx=4, d_model=6, n_layers=1, n_heads=2, d_head=3, d_mlp=8)
X = torch.randn(2, 3, SMALL.d_model)
BLOCK = TransformerBlock(SMALL)
ONES, ZEROS = torch.ones(SMALL.d_model), torch.zeros(SMALL.d_model)
ATTN = (BLOCK.W_Q, BLOCK.b_Q, BLOCK.W_K, BLOCK.b_K)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: layer_norm(X.long(), ONES, ZEROS), TypeError, "x must be a float tensor"),
        (lambda: layer_norm(X, torch.ones(5), ZEROS), ValueError, "w must have x's last dim 6 entries"),
        (lambda: layer_norm(X, ONES, torch.zeros(6, 1)), ValueError, "b must have 1 dims"),
        (lambda: layer_norm(X, ONES, ZEROS, eps=0.0), ValueError, "eps must be a small positive number"),
        (lambda: layer_norm(X, ONES, ZEROS, eps="1e-5"), ValueError, "eps must be a small positive number"),
        (lambda: layer_norm(torch.randn(0, 6), ONES, ZEROS), ValueError, "x is empty"),
        (lambda: embed(torch.tensor([[0, 5]]), BLOCK.W_Q[0].T), ValueError, r"tokens must hold token ids in \[0, 3\)"),
        (lambda: embed(torch.tensor([[0.0, 1.0]]), torch.randn(5, 6)), TypeError, "tokens must be an integer tensor"),
        (lambda: pos_embed(torch.zeros(1, 5, dtype=torch.long), torch.randn(4, 6)), ValueError, "tokens has 5 positions, more than the model's n_ctx=4"),
        (lambda: attention_scores(torch.randn(2, 3, 7), *ATTN), ValueError, r"x must end in d_model=6"),
        (lambda: attention(X[0], *ATTN, BLOCK.W_V, BLOCK.b_V, BLOCK.W_O, BLOCK.b_O), ValueError, "x must have 3 dims"),
        (lambda: apply_causal_mask(torch.randn(3, 3, 3)), ValueError, "scores must have 4 dims"),
        (lambda: mlp(X.int(), BLOCK.W_in, BLOCK.b_in, BLOCK.W_out, BLOCK.b_out), TypeError, "x must be a float tensor"),
        (lambda: unembed(torch.randn(2, 3, 4), torch.randn(6, 5), torch.zeros(5)), ValueError, "x must end in d_model=6"),
        (lambda: BLOCK(torch.randn(2, 3, 5)), ValueError, "resid_pre must end in d_model=6"),
        (lambda: Transformer(SMALL)(torch.zeros(1, 5, dtype=torch.long)), ValueError, "tokens has 5 positions, more than the model's n_ctx=4"),
        (lambda: Transformer(SMALL)(torch.tensor([[0, 5]])), ValueError, r"tokens must hold token ids in \[0, 5\)"),
        (lambda: Transformer(SMALL.to_dict()), TypeError, "config must be a mechlearn.models.ModelConfig, got dict"),
        (lambda: TransformerBlock(None), TypeError, "config must be a mechlearn.models.ModelConfig, got NoneType"),
    ],
    ids=["ln-int-x", "ln-w-length", "ln-b-dims", "ln-eps", "ln-str-eps", "ln-empty", "embed-vocab", "embed-float", "pos-embed-long", "scores-d-model",
         "attention-dims", "mask-dims", "mlp-int", "unembed-d-model", "block-d-model", "transformer-long", "transformer-vocab",
         "transformer-config", "block-config"],
)
def test_functions_name_bad_inputs(call, error, match: str) -> None:
    with raises_one_sentence(error, match):
        call()


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "ours, bridge, error, match",
    [
        (dataclasses.replace(SMALL, d_model=8, d_head=4), SMALL, ValueError, r"The bridge's W_E has shape \(5, 6\) but yours has \(5, 8\)"),
        (dataclasses.replace(SMALL, n_layers=2), SMALL, ValueError, "model has 2 blocks but the bridge has 1"),
        (dataclasses.replace(SMALL, d_mlp=None), SMALL, ValueError, "model has no MLPs but the bridge has them"),
        (SMALL, None, TypeError, "bridge must be a TransformerBridge, got Transformer"),
    ],
    ids=["shape", "n-layers", "mlp", "not-a-bridge"],
)
def test_load_weights_from_names_a_model_of_another_shape(ours, bridge, error, match: str) -> None:
    source = make_model(bridge) if bridge else Transformer(SMALL)
    with raises_one_sentence(error, match):
        load_weights_from(Transformer(ours), source)


def test_float64_activations_are_cast_to_the_weights_dtype() -> None:
    resid = torch.randn(2, 3, SMALL.d_model, dtype=torch.float64)
    torch.testing.assert_close(BLOCK(resid), BLOCK(resid.float()))
