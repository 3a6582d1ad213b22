"""mechlearn.attribution: the residual stream decomposes exactly into the logits; lens and DLA."""

import re

import pytest
import torch
from bad_inputs import raises_one_sentence
from test_pretrained import save_tiny_gpt2

from mechlearn import attribution
from mechlearn.models import ModelConfig, load_pretrained, make_model


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def perturbed_model(d_mlp: int | None = 32, normalization_type: str | None = "LN", seed: int = 0):
    """A tiny model whose biases, LayerNorm weights and b_U are all far from their initial values."""
    model = make_model(
        ModelConfig(d_vocab=11, n_ctx=9, d_model=16, n_layers=2, n_heads=3, d_head=4, d_mlp=d_mlp,
                    normalization_type=normalization_type, seed=seed)
    )
    generator = torch.Generator().manual_seed(seed)
    for weight in [*model.parameters(), model.unembed.bias]:
        weight.add_(0.3 * torch.randn(weight.shape, generator=generator))
    return model


def run(model, batch: int = 4, seed: int = 1):
    tokens = torch.randint(0, model.cfg.d_vocab, (batch, model.cfg.n_ctx), generator=torch.Generator().manual_seed(seed))
    logits, cache = model.run_with_cache(tokens)
    return tokens, logits, cache


def final_resid(model, cache):
    return cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]


def summed_component_logits(model, cache):
    """The logits rebuilt from the components: each through the frozen LN and W_U, plus the biases once."""
    components, _ = attribution.residual_components(cache, model)
    per_component = attribution.apply_final_ln(components, cache, model, add_bias=False) @ model.W_U
    # The frozen LN maps zero to its bias (b for LN, nothing otherwise): the part no component owns.
    bias = attribution.apply_final_ln(torch.zeros_like(components[0]), cache, model) @ model.W_U + model.b_U
    return per_component.sum(dim=0) + bias


MODELS = {
    "mlp_ln": dict(d_mlp=32),
    "attn_only_ln": dict(d_mlp=None),
    "mlp_lnpre": dict(d_mlp=32, normalization_type="LNPre"),
    "mlp_rms": dict(d_mlp=32, normalization_type="RMS"),
    "attn_only_no_norm": dict(d_mlp=None, normalization_type=None),
}


@pytest.mark.parametrize("kind", MODELS)
def test_components_sum_to_the_final_residual_stream_and_the_logits(kind: str) -> None:
    model = perturbed_model(**MODELS[kind])
    _, logits, cache = run(model)
    components, labels = attribution.residual_components(cache, model)
    assert len(labels) == components.shape[0]
    assert (components.sum(dim=0) - final_resid(model, cache)).abs().max() < 1e-4
    assert (summed_component_logits(model, cache) - logits).abs().max() < 1e-4


def test_component_labels_follow_the_forward_pass() -> None:
    _, _, cache = run(mlp := perturbed_model())
    _, labels = attribution.residual_components(cache, mlp)
    assert labels == ["embed", "pos_embed", "L0H0", "L0H1", "L0H2", "L0 b_O", "L0 MLP",
                      "L1H0", "L1H1", "L1H2", "L1 b_O", "L1 MLP"]
    attn_only = perturbed_model(d_mlp=None)
    _, _, cache = run(attn_only)
    _, labels = attribution.residual_components(cache, attn_only)
    assert not any("MLP" in label for label in labels) and len(labels) == 2 + 2 * (3 + 1)


def test_b_o_is_its_own_component() -> None:
    model = perturbed_model()
    _, _, cache = run(model)
    components, labels = attribution.residual_components(cache, model)
    for layer in range(2):
        b_O = components[labels.index(f"L{layer} b_O")]
        assert torch.equal(b_O, model.blocks[layer].attn.b_O.expand_as(b_O))
        heads = attribution.head_outputs(cache, model, layer)
        assert (heads.sum(dim=0) + b_O - cache[f"blocks.{layer}.hook_attn_out"]).abs().max() < 1e-5


@pytest.mark.parametrize("normalization_type", ["LN", "LNPre", "RMS", None])
def test_apply_final_ln_on_the_final_stream_is_ln_final(normalization_type) -> None:
    model = perturbed_model(normalization_type=normalization_type)
    _, _, cache = run(model)
    expected = cache["ln_final.hook_out"]
    assert (attribution.apply_final_ln(final_resid(model, cache), cache, model) - expected).abs().max() < 1e-5


def test_a_per_component_layer_norm_does_not_add_up() -> None:
    # Why the scale is frozen: normalising each component on its own breaks the sum.
    model = perturbed_model()
    _, logits, cache = run(model)
    components, _ = attribution.residual_components(cache, model)
    each_normalised = model.ln_final(components).sum(dim=0)
    assert (each_normalised - cache["ln_final.hook_out"]).abs().max() > 1.0


def test_logit_lens_is_the_model_with_later_layers_skipped() -> None:
    model = perturbed_model()
    tokens, logits, cache = run(model)
    lens = attribution.logit_lens(cache, model)
    assert lens.shape == (3, 4, 9, 11)
    assert (lens[-1] - logits).abs().max() < 1e-5
    for layer in range(2):
        def skip_from_here(resid, hook, layer=layer):
            return cache[f"blocks.{layer}.hook_resid_pre"]

        skipped = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_post", skip_from_here)])
        assert (lens[layer] - skipped).abs().max() < 1e-5


def test_logit_lens_of_the_embeddings_uses_their_own_scale() -> None:
    model = perturbed_model()
    _, _, cache = run(model)
    frozen = attribution.apply_final_ln(cache["blocks.0.hook_resid_pre"], cache, model) @ model.W_U + model.b_U
    assert (attribution.logit_lens(cache, model)[0] - frozen).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["mlp_ln", "attn_only_ln"])
def test_attributions_add_up_to_the_correct_token_logit(kind: str) -> None:
    model = perturbed_model(**MODELS[kind])
    tokens, logits, cache = run(model)
    components, labels = attribution.residual_components(cache, model)
    attributions = attribution.logit_attribution(components, cache, model, tokens)
    assert attributions.shape == (len(labels), 4, 8)
    bias = (model.ln_final.b @ model.W_U + model.b_U)[tokens[:, 1:]]
    correct = logits[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    assert (attributions.sum(dim=0) + bias - correct).abs().max() < 1e-4
    # The per-head attribution is the same numbers, arranged [layer head batch pos_minus_1].
    dla = attribution.direct_logit_attribution(cache, model, tokens)
    assert dla.shape == (2, 3, 4, 8)
    assert torch.allclose(dla[1, 2], attributions[labels.index("L1H2")], atol=1e-6)


def test_dla_scores_position_i_on_token_i_plus_1() -> None:
    model = perturbed_model()
    tokens, _, cache = run(model)
    heads = attribution.head_outputs(cache, model, 0)[1]  # [batch pos d_model]
    normalised = attribution.apply_final_ln(heads, cache, model, add_bias=False)
    by_hand = normalised[2, 5] @ model.W_U[:, tokens[2, 6]]
    assert torch.allclose(attribution.direct_logit_attribution(cache, model, tokens)[0, 1, 2, 5], by_hand, atol=1e-6)


def test_works_on_a_hugging_face_gpt2(tmp_path) -> None:
    save_tiny_gpt2(tmp_path)
    model = load_pretrained(str(tmp_path), device="cpu")
    tokens, logits, cache = run(model, batch=2)
    assert (summed_component_logits(model, cache) - logits).abs().max() < 1e-4
    assert (attribution.logit_lens(cache, model)[-1] - logits).abs().max() < 1e-4


def test_the_optional_gpt2_section_runs_on_a_random_gpt2_shaped_model(tmp_path) -> None:
    """Chapter 02's optional GPT-2 code path, offline: the lens's last entry is the model's own top token."""
    save_tiny_gpt2(tmp_path)
    model = load_pretrained(str(tmp_path), device="cpu")
    prompt = "the cat sat on the mat"
    top_tokens = attribution.logit_lens_top_tokens(model, prompt)
    assert len(top_tokens) == model.cfg.n_layers + 1 and all(isinstance(token, str) for token in top_tokens)
    own_top = model(model.to_tokens(prompt))[0, -1].argmax()
    assert top_tokens[-1] == model.to_string(own_top)
    lens = attribution.logit_lens(model.run_with_cache(model.to_tokens(prompt))[1], model)[:, 0, 2].argmax(dim=-1)
    assert attribution.logit_lens_top_tokens(model, prompt, pos=2) == [model.to_string(token) for token in lens]


@pytest.mark.bad_input
def test_logit_lens_top_tokens_needs_a_tokenizer_and_a_prompt() -> None:
    with raises_one_sentence(ValueError, "tokenizer"):
        attribution.logit_lens_top_tokens(perturbed_model(), "hello")
    with raises_one_sentence(TypeError, "prompt"):
        attribution.logit_lens_top_tokens(perturbed_model(), "")


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.bad_input
def test_missing_cache_entry_says_how_to_get_it() -> None:
    model = perturbed_model()
    tokens = torch.zeros(1, 5, dtype=torch.long)
    _, partial = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_z"))
    with pytest.raises(KeyError, match="names_filter"):
        attribution.residual_components(partial, model)


@pytest.mark.bad_input
@pytest.mark.parametrize("layer", [-1, 2, 1.0, True])
def test_head_outputs_rejects_a_bad_layer(layer) -> None:
    model = perturbed_model()
    _, _, cache = run(model)
    with pytest.raises(ValueError, match="layer must be an int"):
        attribution.head_outputs(cache, model, layer)


@pytest.mark.bad_input
def test_apply_final_ln_rejects_a_stream_from_another_run() -> None:
    model = perturbed_model()
    _, _, cache = run(model)
    with pytest.raises(ValueError, match="resid has batch and pos sizes"):
        attribution.apply_final_ln(torch.zeros(2, 9, 16), cache, model)


@pytest.mark.bad_input
def test_logit_attribution_rejects_other_tokens() -> None:
    model = perturbed_model()
    tokens, _, cache = run(model)
    with pytest.raises(ValueError, match="tokens has shape"):
        attribution.direct_logit_attribution(cache, model, tokens[:, :-1])


@pytest.fixture(scope="module")
def ran():
    """A model, its tokens and its cache, shared by the bad-input table (which changes none of them)."""
    with torch.no_grad():
        model = perturbed_model()
        tokens, _, cache = run(model)
    return model, tokens, cache


def nan_at_start(values: torch.Tensor) -> torch.Tensor:
    broken = values.clone()
    broken.view(-1)[0] = float("nan")
    return broken


def with_4_heads():
    return make_model(ModelConfig(d_vocab=11, n_ctx=9, d_model=16, n_layers=2, n_heads=4, d_head=4, d_mlp=None))


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda model, tokens, cache: attribution.residual_components(cache["hook_embed"], model), TypeError, "cache"),
        (lambda model, tokens, cache: attribution.logit_lens({"hook_embed": cache["hook_embed"]}, model), TypeError, "cache"),
        (lambda model, tokens, cache: attribution.apply_final_ln(torch.zeros(4, 9, 15), cache, model), ValueError, "resid"),
        (lambda model, tokens, cache: attribution.apply_final_ln(torch.zeros(4, 9, 16, dtype=torch.long), cache, model), ValueError, "resid"),
        (lambda model, tokens, cache: attribution.apply_final_ln(nan_at_start(torch.zeros(4, 9, 16)), cache, model), ValueError, "resid"),
        (lambda model, tokens, cache: attribution.apply_final_ln(torch.zeros(9, 16), cache, model), ValueError, "resid"),
        (lambda model, tokens, cache: attribution.direct_logit_attribution(cache, model, tokens.float()), TypeError, "tokens"),
        (lambda model, tokens, cache: attribution.direct_logit_attribution(cache, model, tokens + 11), ValueError, "tokens"),
        (lambda model, tokens, cache: attribution.direct_logit_attribution(cache, model, tokens - 11), ValueError, "tokens"),
        (lambda model, tokens, cache: attribution.logit_attribution(torch.zeros(3, 4, 9, 16, device="meta"), cache, model, tokens), ValueError, "components"),
        (lambda model, tokens, cache: attribution.head_outputs(cache, with_4_heads(), 0), ValueError, "cache"),
    ],
    ids=[
        "a tensor for cache", "a dict for cache", "resid of another d_model", "int resid", "NaN resid", "resid without batch",
        "float tokens", "tokens beyond d_vocab", "negative tokens", "meta components", "cache of another model",
    ],
)
def test_bad_argument_is_named(ran, call, error, name) -> None:
    with raises_one_sentence(error, re.escape(name)):
        call(*ran)
