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


# --- the sweeps and the normalised logit difference ---------------------------------------------


def test_head_ablation_sweep_is_each_heads_loss_minus_the_clean_loss(model, tokens) -> None:
    mask = torch.arange(CONFIG.n_ctx - 1) >= 2
    sweep = patching.head_ablation_sweep(model, tokens, "zero", mask)
    assert sweep.shape == (CONFIG.n_layers, CONFIG.n_heads)
    clean = next_token_loss(model(tokens), tokens, mask)
    for layer, head in [(0, 2), (1, 0)]:
        expected = next_token_loss(without_heads(model, [(layer, head)])(tokens), tokens, mask) - clean
        assert torch.allclose(sweep[layer, head], expected, atol=1e-5)
    assert (sweep.abs() > 1e-4).all()  # every head of this perturbed model matters a little


def test_head_ablation_sweep_of_mean_ablation_on_identical_sequences_is_zero(model, tokens) -> None:
    same = tokens[:1].expand(4, -1)
    assert patching.head_ablation_sweep(model, same, "mean").abs().max() < 1e-5


def random_logits(seed: int, batch: int = 5, n_pos: int = 4, d_vocab: int = 7):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n_pos, d_vocab, generator=generator) for _ in range(3)], torch.randint(0, d_vocab, (2, batch), generator=generator)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normalised_logit_difference_is_0_on_corrupted_1_on_clean_and_linear_between(seed) -> None:
    (patched, clean, corrupted), (clean_answers, corrupted_answers) = random_logits(seed)
    metric = lambda logits: patching.normalised_logit_difference(logits, clean, corrupted, 2, clean_answers, corrupted_answers)  # noqa: E731
    assert metric(corrupted).abs() < 1e-6 and (metric(clean) - 1).abs() < 1e-6
    assert (metric(0.25 * clean + 0.75 * corrupted) - 0.25).abs() < 1e-5
    # Logits and log-probabilities give the same value: the softmax's normaliser cancels in a difference.
    assert (metric(patched) - metric(patched.log_softmax(dim=-1))).abs() < 1e-5


def test_normalised_logit_difference_divides_the_means_not_each_sequence() -> None:
    (patched, clean, corrupted), (clean_answers, corrupted_answers) = random_logits(3)
    ld = lambda logits: patching.logit_difference(logits, 1, clean_answers, corrupted_answers)  # noqa: E731
    value = patching.normalised_logit_difference(patched, clean, corrupted, 1, clean_answers, corrupted_answers)
    assert torch.allclose(value, (ld(patched) - ld(corrupted)) / (ld(clean) - ld(corrupted)))
    rows = torch.arange(5)
    by_hand = (clean[rows, 1, clean_answers] - clean[rows, 1, corrupted_answers]).mean()
    assert torch.allclose(ld(clean), by_hand)


def test_patch_every_position_at_the_embedding_is_editing_each_token(model, tokens) -> None:
    source = source_of(tokens)
    _, source_cache = model.run_with_cache(source)
    metric = lambda logits: logits[..., 0].mean()  # noqa: E731
    sweep = patching.patch_every_position(model, tokens, source_cache, ["hook_embed", "blocks.1.hook_resid_post"], metric)
    assert sweep.shape == (2, CONFIG.n_ctx)
    for pos in [0, 4, CONFIG.n_ctx - 1]:
        edited = tokens.clone()
        edited[:, pos] = source[:, pos]
        assert torch.allclose(sweep[0, pos], metric(model(edited)), atol=1e-5)
    # At the final stream, position pos takes the source's logits there and leaves the others alone.
    source_logits, clean_logits = model(source), model(tokens)
    pos = 3
    expected = clean_logits.clone()
    expected[:, pos] = source_logits[:, pos]
    assert torch.allclose(sweep[1, pos], metric(expected), atol=1e-5)


def test_patch_every_head_at_a_position_matches_patching_that_head_by_hand(model, tokens) -> None:
    _, source_cache = model.run_with_cache(source_of(tokens))
    metric = lambda logits: (logits[..., 1] - logits[..., 2]).mean()  # noqa: E731
    sweep = patching.patch_every_head(model, tokens, source_cache, 5, metric)
    assert sweep.shape == (CONFIG.n_layers, CONFIG.n_heads)
    source_z = source_cache[hook_z(1)]

    def by_hand(z, hook):
        z = z.clone()
        z[:, 5, 2] = source_z[:, 5, 2]
        return z

    assert torch.allclose(sweep[1, 2], metric(model.run_with_hooks(tokens, fwd_hooks=[(hook_z(1), by_hand)])), atol=1e-5)
    # Patching a head from a run on the same tokens changes nothing.
    _, same_cache = model.run_with_cache(tokens)
    assert torch.allclose(patching.patch_every_head(model, tokens, same_cache, 5, metric), metric(model(tokens)).expand(2, 3), atol=1e-5)


def test_patch_head_hook_touches_only_its_head_at_its_position() -> None:
    generator = torch.Generator().manual_seed(5)
    z, source = torch.randn(2, 6, 3, 4, generator=generator), torch.randn(2, 6, 3, 4, generator=generator)
    patched = patching.patch_head_hook(1, 4, source)(z.clone(), None)
    expected = z.clone()
    expected[:, 4, 1] = source[:, 4, 1]
    assert torch.equal(patched, expected)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda logits, answers: patching.logit_difference(logits, 9, answers, answers), ValueError, "pos"),
        (lambda logits, answers: patching.logit_difference(logits, 1, answers[:3], answers), ValueError, "answers"),
        (lambda logits, answers: patching.logit_difference(logits, 1, answers, answers + 7), ValueError, "wrong_answers"),
        (lambda logits, answers: patching.logit_difference(logits[0], 1, answers, answers), ValueError, "logits"),
        (lambda logits, answers: patching.normalised_logit_difference(logits, logits, logits, 1, answers, (answers + 1) % 7), ValueError, "nothing to normalise"),
        (lambda logits, answers: patching.normalised_logit_difference(logits, logits[:, :2], logits, 1, answers, answers), ValueError, "clean_logits"),
    ],
    ids=["pos out of range", "answers too short", "answer beyond d_vocab", "logits without batch", "clean equals corrupted", "clean of another shape"],
)
def test_bad_metric_argument_is_named(call, error, name) -> None:
    (logits, _, _), (answers, _) = random_logits(4)
    with raises_one_sentence(error, re.escape(name)):
        call(logits, answers)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda model, tokens, cache: patching.patch_every_position(model, tokens, cache, ["blocks.0.hook_nothing"], lambda logits: logits.mean()), ValueError, "which clean_cache lacks"),
        (lambda model, tokens, cache: patching.patch_every_position(model, tokens, cache, "hook_embed", lambda logits: logits.mean()), ValueError, "hook_names"),
        (lambda model, tokens, cache: patching.patch_every_position(model, tokens, cache, ["hook_embed"], lambda logits: logits[:, -1, 0]), ValueError, "metric must return one float"),
        (lambda model, tokens, cache: patching.patch_every_position(model, tokens, None, ["hook_embed"], lambda logits: logits.mean()), TypeError, "clean_cache"),
        (lambda model, tokens, cache: patching.patch_every_head(model, tokens, cache, 9, lambda logits: logits.mean()), ValueError, "pos 9"),
        (lambda model, tokens, cache: patching.patch_every_head(model, tokens, cache, 1, "mean"), TypeError, "metric"),
        (lambda model, tokens, cache: patching.patch_head_hook(3, 0, cache["blocks.0.attn.hook_z"]), ValueError, "head 3"),
    ],
    ids=["missing hook name", "one name, not a list", "metric per sequence", "no cache", "pos beyond", "metric not callable", "head beyond"],
)
def test_bad_patching_argument_is_named(model, tokens, call, error, name) -> None:
    _, cache = model.run_with_cache(source_of(tokens))
    with raises_one_sentence(error, re.escape(name)):
        call(model, tokens, cache)
