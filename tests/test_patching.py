"""mechlearn.patching: ablation and patching hooks, and the loss with heads ablated."""

import copy
import re

import pytest
import torch
from bad_inputs import raises_one_sentence

from mechlearn import patching
from mechlearn.models import ModelConfig, make_model
from mechlearn.train import next_token_loss


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


CONFIG = ModelConfig(d_vocab=11, n_ctx=9, d_model=16, n_layers=2, n_heads=3, d_head=4, d_mlp=32, seed=0)


@pytest.fixture(scope="module")
def model():
    with torch.no_grad():
        model = make_model(CONFIG)
        generator = torch.Generator().manual_seed(0)
        for weight in model.parameters():
            weight.add_(0.3 * torch.randn(weight.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, CONFIG.d_vocab, (5, CONFIG.n_ctx), generator=torch.Generator().manual_seed(1))


def without_heads(model, heads):
    """A copy of `model` in which each listed head's W_O is zero: the head writes nothing."""
    stripped = copy.deepcopy(model)
    for layer, head in heads:
        stripped.blocks[layer].attn.W_O[head] = 0.0
        assert not stripped.blocks[layer].attn.W_O[head].any()
    return stripped


def hook_z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


# --- zero- and mean-ablation hooks ------------------------------------------------------------


@pytest.mark.parametrize("layer, head", [(0, 0), (0, 2), (1, 1)])
def test_zero_ablating_a_head_is_removing_its_w_o(model, tokens, layer, head) -> None:
    ablated = model.run_with_hooks(tokens, fwd_hooks=[(hook_z(layer), patching.zero_ablate_head_hook(head))])
    assert (ablated - without_heads(model, [(layer, head)])(tokens)).abs().max() < 1e-5
    assert (ablated - model(tokens)).abs().max() > 1e-2  # the head did matter


def test_zero_ablation_touches_only_its_head_and_leaves_the_input_alone() -> None:
    z = torch.randn(2, 5, 3, 4)
    original = z.clone()
    ablated = patching.zero_ablate_head_hook(1)(z, None)
    assert torch.equal(z, original)
    assert not ablated[:, :, 1].any()
    assert torch.equal(ablated[:, :, [0, 2]], z[:, :, [0, 2]])


def test_mean_ablation_uses_the_given_mean() -> None:
    z, mean_z = torch.randn(2, 5, 3, 4), torch.randn(7, 3, 4)  # a mean over a longer context is fine
    ablated = patching.mean_ablate_head_hook(2, mean_z)(z.clone(), None)
    assert torch.equal(ablated[:, :, 2], mean_z[:5, 2].expand(2, 5, 4))
    assert torch.equal(ablated[:, :, :2], z[:, :, :2])


def test_mean_ablation_with_a_zero_mean_is_zero_ablation(model, tokens) -> None:
    zeros = torch.zeros(CONFIG.n_ctx, CONFIG.n_heads, CONFIG.d_head)
    mean_ablated = model.run_with_hooks(tokens, fwd_hooks=[(hook_z(1), patching.mean_ablate_head_hook(0, zeros))])
    assert (mean_ablated - without_heads(model, [(1, 0)])(tokens)).abs().max() < 1e-5


def test_mean_ablation_on_identical_sequences_changes_nothing(model, tokens) -> None:
    copies = tokens[:1].repeat(4, 1)
    _, cache = model.run_with_cache(copies)
    mean_z = cache[hook_z(0)].mean(dim=0)
    ablated = model.run_with_hooks(copies, fwd_hooks=[(hook_z(0), patching.mean_ablate_head_hook(1, mean_z))])
    assert (ablated - model(copies)).abs().max() < 1e-5


# --- the position-patching hook -----------------------------------------------------------------


def source_of(tokens):
    """Tokens that differ from `tokens` at every position."""
    return (tokens + 1) % CONFIG.d_vocab


@pytest.mark.parametrize("pos", [0, 3, CONFIG.n_ctx - 1])
def test_patching_the_embedding_is_editing_the_token(model, tokens, pos) -> None:
    source = source_of(tokens)
    _, source_cache = model.run_with_cache(source)
    patched = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", patching.patch_position_hook(pos, source_cache["hook_embed"]))])
    edited = tokens.clone()
    edited[:, pos] = source[:, pos]
    assert (patched - model(edited)).abs().max() < 1e-5


def test_patching_one_position_changes_only_that_position_and_later_ones(model, tokens) -> None:
    pos, name = 4, "blocks.1.hook_resid_pre"
    _, source_cache = model.run_with_cache(source_of(tokens))
    patched = model.run_with_hooks(tokens, fwd_hooks=[(name, patching.patch_position_hook(pos, source_cache[name]))])
    change = (patched - model(tokens)).abs().amax(dim=(0, 2))  # [pos]
    assert (change[:pos] < 1e-6).all()
    assert (change[pos:] > 1e-3).all()


def test_patching_the_final_stream_gives_the_source_logits_at_that_position(model, tokens) -> None:
    pos, name = 6, "blocks.1.hook_resid_post"
    source = source_of(tokens)
    source_logits, source_cache = model.run_with_cache(source)
    patched = model.run_with_hooks(tokens, fwd_hooks=[(name, patching.patch_position_hook(pos, source_cache[name]))])
    assert (patched[:, pos] - source_logits[:, pos]).abs().max() < 1e-5
    others = [p for p in range(CONFIG.n_ctx) if p != pos]
    assert (patched[:, others] - model(tokens)[:, others]).abs().max() < 1e-6


def test_patching_from_a_shorter_run_during_generation(model, tokens) -> None:
    # A prompt's activation can be patched into the longer sequences that generation makes.
    pos = 2
    _, prompt_cache = model.run_with_cache(source_of(tokens)[:, :4])
    hook = patching.patch_position_hook(pos, prompt_cache["hook_embed"])
    patched = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", hook)])
    edited = tokens.clone()
    edited[:, pos] = source_of(tokens)[:, pos]
    assert (patched - model(edited)).abs().max() < 1e-5


@pytest.mark.bad_input
def test_patch_hook_rejects_a_source_of_another_batch(model, tokens) -> None:
    _, source_cache = model.run_with_cache(tokens[:2])
    hook = patching.patch_position_hook(1, source_cache["hook_embed"])
    with pytest.raises(ValueError, match="source_activation has shape"):
        model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", hook)])


@pytest.mark.bad_input
def test_patch_hook_rejects_a_position_the_activation_lacks(model, tokens) -> None:
    _, source_cache = model.run_with_cache(tokens)
    hook = patching.patch_position_hook(7, source_cache["hook_embed"])
    with pytest.raises(ValueError, match="pos 7 is beyond"):
        model.run_with_hooks(tokens[:, :5], fwd_hooks=[("hook_embed", hook)])


# --- the loss with heads ablated ---------------------------------------------------------------


def test_no_heads_gives_the_clean_loss(model, tokens) -> None:
    clean = next_token_loss(model(tokens), tokens)
    assert torch.allclose(patching.loss_with_heads_ablated(model, tokens, []), clean)
    assert torch.allclose(patching.loss_with_heads_ablated(model, tokens, [], mode="mean"), clean)


def test_zero_mode_ablates_every_listed_head_at_once(model, tokens) -> None:
    heads = [(0, 1), (1, 0), (1, 2)]
    mask = torch.arange(CONFIG.n_ctx - 1) >= 3
    expected = next_token_loss(without_heads(model, heads)(tokens), tokens, mask)
    actual = patching.loss_with_heads_ablated(model, tokens, heads, "zero", mask)
    assert actual.shape == () and torch.allclose(actual, expected, atol=1e-6)
    assert not torch.allclose(actual, patching.loss_with_heads_ablated(model, tokens, heads[:1], "zero", mask))


def test_mean_mode_uses_the_means_of_the_clean_run(model, tokens) -> None:
    heads = [(0, 2), (1, 1)]
    _, clean_cache = model.run_with_cache(tokens)
    hooks = [(hook_z(l), patching.mean_ablate_head_hook(h, clean_cache[hook_z(l)].mean(dim=0))) for l, h in heads]
    expected = next_token_loss(model.run_with_hooks(tokens, fwd_hooks=hooks), tokens)
    assert torch.allclose(patching.loss_with_heads_ablated(model, tokens, heads, "mean"), expected, atol=1e-6)
    assert not torch.allclose(patching.loss_with_heads_ablated(model, tokens, heads, "zero"), expected)


def test_the_mask_selects_the_predictions(model, tokens) -> None:
    only_last = torch.zeros(CONFIG.n_ctx - 1, dtype=torch.bool)
    only_last[-1] = True
    logits = patching.run_with_heads_ablated(model, tokens, [(0, 0)])
    log_probs = logits[:, -2].log_softmax(dim=-1)
    expected = -log_probs.gather(-1, tokens[:, -1:]).mean()
    assert torch.allclose(patching.loss_with_heads_ablated(model, tokens, [(0, 0)], mask=only_last), expected, atol=1e-6)


def test_works_on_an_attention_only_model() -> None:
    attn_only = make_model(ModelConfig(d_vocab=7, n_ctx=6, d_model=8, n_layers=2, n_heads=2, d_head=4, d_mlp=None))
    tokens = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(0))
    expected = next_token_loss(without_heads(attn_only, [(1, 1)])(tokens), tokens)
    assert torch.allclose(patching.loss_with_heads_ablated(attn_only, tokens, [(1, 1)]), expected, atol=1e-6)


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.bad_input
@pytest.mark.parametrize("heads", [[(2, 0)], [(0, 3)], [(0,)], [[0, 1]], [(0, 1.0)], [(-1, 0)]])
def test_bad_heads_are_named(model, tokens, heads) -> None:
    with pytest.raises(ValueError, match=r"heads must be \(layer, head\) pairs"):
        patching.loss_with_heads_ablated(model, tokens, heads)


@pytest.mark.bad_input
def test_bad_mode_is_named(model, tokens) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        patching.loss_with_heads_ablated(model, tokens, [(0, 0)], mode="resample")


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "mask", [torch.ones(CONFIG.n_ctx, dtype=torch.bool), torch.ones(CONFIG.n_ctx - 1), [True] * (CONFIG.n_ctx - 1)]
)
def test_bad_mask_is_named(model, tokens, mask) -> None:
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        patching.loss_with_heads_ablated(model, tokens, [(0, 0)], mask=mask)


@pytest.mark.bad_input
@pytest.mark.parametrize("make", [patching.zero_ablate_head_hook, lambda head: patching.mean_ablate_head_hook(head, torch.zeros(9, 3, 4))])
@pytest.mark.parametrize("head", [-1, 1.5, None])
def test_bad_head_index_is_named(make, head) -> None:
    with pytest.raises(ValueError, match="head must be a non-negative int"):
        make(head)


@pytest.mark.bad_input
def test_head_hook_on_the_wrong_hook_point_says_where_it_belongs(model, tokens) -> None:
    with pytest.raises(ValueError, match=r"attach this hook to blocks\.\{l\}\.attn\.hook_z"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", patching.zero_ablate_head_hook(2))])


@pytest.mark.bad_input
def test_mean_z_of_the_wrong_shape_is_named() -> None:
    with pytest.raises(ValueError, match=r"mean_z must be a tensor of shape \[pos head d_head\]"):
        patching.mean_ablate_head_hook(0, torch.zeros(3, 4))


NAN_Z = torch.zeros(9, 3, 4).index_fill(0, torch.tensor([2]), float("nan"))
TOKEN_CASES = {
    "too long": torch.zeros(2, CONFIG.n_ctx + 1, dtype=torch.long),
    "id at d_vocab": torch.full((2, 5), CONFIG.d_vocab),
    "negative id": torch.full((2, 5), -1),
    "float ids": torch.zeros(2, 5),
    "no dims for batch": torch.zeros(5, dtype=torch.long),
    "empty batch": torch.zeros(0, 5, dtype=torch.long),
    "on meta": torch.zeros(2, 5, dtype=torch.long, device="meta"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("function", [patching.loss_with_heads_ablated, patching.run_with_heads_ablated])
@pytest.mark.parametrize("bad_tokens", TOKEN_CASES.values(), ids=TOKEN_CASES.keys())
def test_bad_tokens_are_named(model, function, bad_tokens) -> None:
    error = TypeError if bad_tokens.is_floating_point() else ValueError
    with raises_one_sentence(error, "tokens"):
        function(model, bad_tokens, [(0, 0)])


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda model, tokens: patching.loss_with_heads_ablated(model, tokens[:, :1], []), ValueError, "tokens"),
        (lambda model, tokens: patching.loss_with_heads_ablated(model, tokens, [], mask=torch.zeros(CONFIG.n_ctx - 1, dtype=torch.bool)), ValueError, "mask"),
        (lambda model, tokens: patching.head_ablation_hooks(model, tokens, (0, 0)), ValueError, "heads"),
        (lambda model, tokens: patching.head_ablation_hooks(model, tokens, "L0H0"), TypeError, "heads"),
        (lambda model, tokens: patching.mean_ablate_head_hook(0, NAN_Z), ValueError, "mean_z"),
        (lambda model, tokens: patching.mean_ablate_head_hook(0, torch.zeros(9, 3, 4, dtype=torch.long)), TypeError, "mean_z"),
        (lambda model, tokens: patching.mean_ablate_head_hook(0, torch.zeros(9, 3, 4, device="meta")), ValueError, "mean_z"),
        (lambda model, tokens: patching.patch_position_hook(0, torch.zeros(5, 9, 16).index_fill(1, torch.tensor([4]), float("inf"))), ValueError, "source_activation"),
        (lambda model, tokens: patching.patch_position_hook(0, torch.zeros(5, 9, 16, dtype=torch.long)), ValueError, "source_activation"),
        (lambda model, tokens: patching.patch_position_hook(-1, torch.zeros(5, 9, 16)), ValueError, "pos"),
    ],
    ids=["one position", "all-False mask", "one pair, not a list", "a string", "NaN mean", "int mean", "meta mean", "inf source", "int source", "negative pos"],
)
def test_bad_argument_is_named(model, tokens, call, error, name) -> None:
    with raises_one_sentence(error, re.escape(name)):
        call(model, tokens)
