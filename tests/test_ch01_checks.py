"""Chapter 01 checks pass on the reference answers and fail, with a hint, on typical mistakes."""

import math

import einops
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from check_helpers import expect_failure

from mechlearn import sampling, transformer, zoo
from mechlearn.checks import ch01
from mechlearn.models import ModelConfig, make_model
from mechlearn.tasks import SortingTask
from mechlearn.train import next_token_loss
from mechlearn.transformer import layer_norm

# --- every check passes on the library's reference answer ---------------------------------


def train_step(model, optimizer, tokens, target_mask, loss_fn=next_token_loss, zero_grad=True, step=True):
    """The notebook's answer, built on the library's loss; the flags make its mistakes."""
    loss = loss_fn(model(tokens), tokens, target_mask)
    if zero_grad:
        optimizer.zero_grad()
    loss.backward()
    if step:
        optimizer.step()
    return loss.item()


REFERENCE_ANSWERS = [
    (ch01.check_layer_norm, transformer.layer_norm),
    (ch01.check_embed, transformer.embed),
    (ch01.check_pos_embed, transformer.pos_embed),
    (ch01.check_attention_scores, transformer.attention_scores),
    (ch01.check_apply_causal_mask, transformer.apply_causal_mask),
    (ch01.check_attention, transformer.attention),
    (ch01.check_mlp, transformer.mlp),
    (ch01.check_unembed, transformer.unembed),
    (ch01.check_transformer_block, transformer.TransformerBlock),
    (ch01.check_transformer, transformer.Transformer),
    (ch01.check_sample_next_token, sampling.sample_next_token),
    (ch01.check_sample_top_k, sampling.sample_top_k),
    (ch01.check_sample_top_p, sampling.sample_top_p),
    (ch01.check_generate_with_kv_cache, sampling.generate_with_kv_cache),
    (ch01.check_train_step, train_step),
]


@pytest.mark.parametrize("check, answer", REFERENCE_ANSWERS, ids=lambda x: getattr(x, "__name__", ""))
def test_check_passes_on_reference(check, answer, capsys: pytest.CaptureFixture) -> None:
    check(answer)
    label = check.__name__.removeprefix("check_")
    assert capsys.readouterr().out == f"✓ {label}: all tests passed\n"


def test_trained_sorter_passes_on_the_zoo_model(capsys: pytest.CaptureFixture) -> None:
    ch01.check_trained_sorter(zoo.load("sort-digits-2l"))
    assert capsys.readouterr().out == "✓ trained_sorter: all tests passed\n"


# --- typical mistakes ---------------------------------------------------------------------


def layer_norm_unbiased(x, w, b, eps=1e-5):
    return (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + eps).sqrt() * w + b


def layer_norm_without_w_b(x, w, b, eps=1e-5):
    return (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True, unbiased=False) + eps).sqrt()


def layer_norm_with_constant_eps(x, w, b, eps=1e-5):
    return layer_norm(x, w, b, eps=1e-5)  # ignores the eps it was given


def layer_norm_eps_outside_root(x, w, b, eps=1e-5):
    centred = x - x.mean(-1, keepdim=True)
    return centred / (centred.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w + b


@pytest.mark.mistake
@pytest.mark.parametrize(
    "mistake", [layer_norm_unbiased, layer_norm_without_w_b, layer_norm_with_constant_eps, layer_norm_eps_outside_root]
)
def test_layer_norm_mistakes(mistake) -> None:
    expect_failure(ch01.check_layer_norm, mistake, hint_contains="biased variance")


def test_layer_norm_ignoring_eps_gets_the_eps_hint() -> None:
    message = expect_failure(ch01.check_layer_norm, layer_norm_with_constant_eps, hint_contains="use the `eps` argument")
    assert "eps=0.001" in message


@pytest.mark.mistake
def test_layer_norm_editing_x_in_place() -> None:
    def layer_norm_in_place(x, w, b, eps=1e-5):
        x -= x.mean(-1, keepdim=True)
        x /= (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        return x * w + b

    message = expect_failure(ch01.check_layer_norm, layer_norm_in_place, hint_contains="in-place")
    assert "changed its argument `x` in place" in message


@pytest.mark.parametrize(
    "answer",
    [
        lambda x, w, b, eps=1e-5: F.layer_norm(x, x.shape[-1:], w, b, eps),
        lambda x, w, b, eps=1e-5: (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + eps) * w + b,
    ],
    ids=["F_layer_norm", "rsqrt_of_biased_var"],
)
def test_layer_norm_alternatives_pass(answer) -> None:
    ch01.check_layer_norm(answer)


@pytest.mark.mistake
def test_embed_with_transposed_w_e() -> None:
    def embed(tokens, W_E):
        return W_E.T[:, tokens]  # (d_model, batch, pos)

    message = expect_failure(ch01.check_embed, embed)
    assert "has shape (24, 2, 9), expected (2, 9, 24)" in message


@pytest.mark.mistake
def test_embed_one_hot_in_integers() -> None:
    def embed(tokens, W_E):
        return F.one_hot(tokens, W_E.shape[0]) @ W_E.long()

    expect_failure(ch01.check_embed, embed, hint_contains="floating point")


@pytest.mark.mistake
def test_embed_one_hot_sized_by_the_tokens() -> None:
    def embed(tokens, W_E):
        return F.one_hot(tokens).float() @ W_E  # as wide as the largest token in the batch, not the vocabulary

    message = expect_failure(ch01.check_embed, embed, hint_contains="whether or not it occurs")
    assert message.startswith("✗ embed: for the tokens [[3, 0, 3], [1, 1, 7]]: `embed` raised RuntimeError")


@pytest.mark.parametrize(
    "answer",
    [lambda tokens, W_E: F.embedding(tokens, W_E), lambda tokens, W_E: F.one_hot(tokens, W_E.shape[0]).to(W_E.dtype) @ W_E],
    ids=["F_embedding", "one_hot_over_the_vocabulary"],
)
def test_embed_alternatives_pass(answer) -> None:
    ch01.check_embed(answer)


@pytest.mark.mistake
def test_pos_embed_without_batch_dimension() -> None:
    def pos_embed(tokens, W_pos):
        return W_pos[: tokens.shape[1]]

    message = expect_failure(ch01.check_pos_embed, pos_embed)
    assert "has shape (9, 24), expected (2, 9, 24)" in message


@pytest.mark.mistake
def test_pos_embed_whole_w_pos() -> None:
    def pos_embed(tokens, W_pos):
        return einops.repeat(W_pos, "pos d -> b pos d", b=tokens.shape[0])

    expect_failure(ch01.check_pos_embed, pos_embed)


@pytest.mark.mistake
def test_pos_embed_indexed_by_token_ids() -> None:
    def pos_embed(tokens, W_pos):
        return W_pos[tokens]  # the embedding of position `token`, not of the token's position

    expect_failure(ch01.check_pos_embed, pos_embed, hint_contains="first seq_len rows")


def scores_with(scale):
    def attention_scores(x, W_Q, b_Q, W_K, b_K):
        q = einops.einsum(x, W_Q, "b p d, h d e -> b p h e") + b_Q
        k = einops.einsum(x, W_K, "b p d, h d e -> b p h e") + b_K
        return einops.einsum(q, k, "b q h e, b k h e -> b h q k") / scale(x, W_Q)

    return attention_scores


@pytest.mark.mistake
@pytest.mark.parametrize(
    "scale",
    [lambda x, W_Q: math.sqrt(x.shape[-1]), lambda x, W_Q: 1.0, lambda x, W_Q: W_Q.shape[-1]],
    ids=["sqrt_d_model", "unscaled", "d_head_without_sqrt"],
)
def test_attention_scores_wrong_scale(scale) -> None:
    expect_failure(ch01.check_attention_scores, scores_with(scale), hint_contains="sqrt(d_head)")


@pytest.mark.mistake
def test_attention_scores_without_biases() -> None:
    def attention_scores(x, W_Q, b_Q, W_K, b_K):
        return scores_with(lambda x, W_Q: math.sqrt(W_Q.shape[-1]))(x, W_Q, 0 * b_Q, W_K, 0 * b_K)

    expect_failure(ch01.check_attention_scores, attention_scores)


def mask_with(keep):
    def apply_causal_mask(scores):
        n_q, n_k = scores.shape[-2:]
        return scores.masked_fill(~keep(torch.ones(n_q, n_k, dtype=torch.bool)), float("-inf"))

    return apply_causal_mask


@pytest.mark.mistake
@pytest.mark.parametrize(
    "mistake",
    [
        mask_with(lambda ones: ones.tril(diagonal=-1)),  # masks the diagonal too
        mask_with(lambda ones: ones.triu(diagonal=0)),  # masks the past instead of the future
        mask_with(lambda ones: ones.triu(diagonal=1) | ~ones),  # keeps only the future
    ],
    ids=["masks_diagonal", "masks_lower_triangle", "keeps_only_future"],
)
def test_causal_mask_mistakes(mistake) -> None:
    message = expect_failure(ch01.check_apply_causal_mask, mistake, hint_contains="diagonal=1")
    assert "infinite value(s) where finite values were expected" in message


@pytest.mark.mistake
def test_causal_mask_zeroing_the_future() -> None:
    def apply_causal_mask(scores):
        return scores.tril()  # a score of 0 still gets softmax weight

    message = expect_failure(ch01.check_apply_causal_mask, apply_causal_mask, hint_contains="diagonal=1")
    assert "expected -inf, got 0" in message


@pytest.mark.mistake
def test_causal_mask_of_fixed_size() -> None:
    fixed = torch.ones(5, 5, dtype=torch.bool).triu(diagonal=1)

    def apply_causal_mask(scores):
        return scores.masked_fill(fixed, float("-inf"))  # only works for 5 positions

    message = expect_failure(ch01.check_apply_causal_mask, apply_causal_mask)
    assert "raised RuntimeError" in message


def test_causal_mask_with_large_negative_number_passes(capsys: pytest.CaptureFixture) -> None:
    def apply_causal_mask(scores):
        future = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(diagonal=1)
        return scores.masked_fill(future, -1e9)

    ch01.check_apply_causal_mask(apply_causal_mask)
    assert "✓ apply_causal_mask" in capsys.readouterr().out


def test_causal_mask_filled_in_place_passes() -> None:
    # Attention builds its scores afresh, so masking them in place (as ARENA does) is no mistake.
    def apply_causal_mask(scores):
        return scores.masked_fill_(torch.ones(scores.shape[-2:], dtype=torch.bool).triu(diagonal=1), float("-inf"))

    ch01.check_apply_causal_mask(apply_causal_mask)


def attention_with(softmax_dim=-1, use_b_V=True, use_b_O=True, mask=transformer.apply_causal_mask, head_reduction="sum"):
    def attention(x, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O):
        scores = mask(transformer.attention_scores(x, W_Q, b_Q, W_K, b_K))
        pattern = scores.softmax(dim=softmax_dim).nan_to_num()
        v = einops.einsum(x, W_V, "b p d, h d e -> b p h e") + (b_V if use_b_V else 0)
        z = einops.einsum(pattern, v, "b h q k, b k h e -> b q h e")
        per_head = einops.einsum(z, W_O, "b p h e, h e d -> b p h d")
        return einops.reduce(per_head, "b p h d -> b p d", head_reduction) + (b_O if use_b_O else 0)

    return attention


@pytest.mark.mistake
@pytest.mark.parametrize(
    "mistake",
    [
        attention_with(softmax_dim=-2),
        attention_with(use_b_V=False),
        attention_with(use_b_O=False),
        attention_with(mask=lambda scores: scores),
        attention_with(head_reduction="mean"),
    ],
    ids=["softmax_over_queries", "no_b_V", "no_b_O", "no_causal_mask", "mean_over_heads"],
)
def test_attention_mistakes(mistake) -> None:
    expect_failure(ch01.check_attention, mistake, hint_contains="softmax over key_pos")


def mlp_with(activation):
    def mlp(x, W_in, b_in, W_out, b_out):
        return activation(x @ W_in + b_in) @ W_out + b_out

    return mlp


@pytest.mark.mistake
@pytest.mark.parametrize(
    "activation",
    [F.relu, lambda h: F.gelu(h, approximate="tanh"), lambda h: h],
    ids=["relu", "gelu_tanh", "no_activation"],
)
def test_mlp_mistakes(activation) -> None:
    expect_failure(ch01.check_mlp, mlp_with(activation), hint_contains="GELU")


def test_mlp_reference_matches_hand_written() -> None:
    # The einops reference is the same function as the plain matmul version above.
    ch01.check_mlp(mlp_with(F.gelu))


@pytest.mark.mistake
def test_unembed_returning_probabilities() -> None:
    def unembed(x, W_U, b_U):
        return (x @ W_U + b_U).softmax(dim=-1)

    expect_failure(ch01.check_unembed, unembed, hint_contains="W_U + b_U")


@pytest.mark.mistake
def test_unembed_forgetting_b_u() -> None:
    def unembed(x, W_U, b_U):
        return x @ W_U

    expect_failure(ch01.check_unembed, unembed, hint_contains="b_U")


@pytest.mark.mistake
def test_unembed_with_transposed_w_u() -> None:
    def unembed(x, W_U, b_U):
        return x @ W_U.T + b_U

    message = expect_failure(ch01.check_unembed, unembed)
    assert "`unembed` raised RuntimeError" in message


class BlockWithoutResidual(transformer.TransformerBlock):
    def forward(self, resid_pre):
        attn_out = transformer.attention(
            layer_norm(resid_pre, self.ln1_w, self.ln1_b), self.W_Q, self.b_Q, self.W_K, self.b_K, self.W_V, self.b_V, self.W_O, self.b_O
        )
        return attn_out + transformer.mlp(layer_norm(attn_out, self.ln2_w, self.ln2_b), self.W_in, self.b_in, self.W_out, self.b_out)


class BlockWithParallelMlp(transformer.TransformerBlock):
    def forward(self, resid_pre):
        normed = layer_norm(resid_pre, self.ln1_w, self.ln1_b)
        attn_out = transformer.attention(normed, self.W_Q, self.b_Q, self.W_K, self.b_K, self.W_V, self.b_V, self.W_O, self.b_O)
        mlp_out = transformer.mlp(layer_norm(resid_pre, self.ln2_w, self.ln2_b), self.W_in, self.b_in, self.W_out, self.b_out)
        return resid_pre + attn_out + mlp_out  # the MLP must read resid_mid, not resid_pre


class BlockAlwaysWithMlp(transformer.TransformerBlock):
    """Runs the MLP half whatever the config says, as a forward without the `has_mlp` branch does."""

    def forward(self, resid_pre):
        self.has_mlp = True
        return super().forward(resid_pre)


@pytest.mark.mistake
@pytest.mark.parametrize("mistake", [BlockWithoutResidual, BlockWithParallelMlp])
def test_transformer_block_mistakes(mistake) -> None:
    expect_failure(ch01.check_transformer_block, mistake, hint_contains="resid_mid = resid_pre + attention")


@pytest.mark.mistake
def test_transformer_block_ignoring_attn_only() -> None:
    message = expect_failure(ch01.check_transformer_block, BlockAlwaysWithMlp, hint_contains="self.has_mlp")
    assert message.startswith("✗ transformer_block: with an attention-only config (d_mlp=None): `BlockAlwaysWithMlp` raised")
    assert "no attribute 'ln2_w'" in message


class TransformerWithoutFinalLayerNorm(transformer.Transformer):
    def forward(self, tokens):
        resid = transformer.embed(tokens, self.W_E) + transformer.pos_embed(tokens, self.W_pos)
        for block in self.blocks:
            resid = block(resid)
        return transformer.unembed(resid, self.W_U, self.b_U)


class TransformerWithoutPosEmbed(transformer.Transformer):
    def forward(self, tokens):
        resid = transformer.embed(tokens, self.W_E)
        for block in self.blocks:
            resid = block(resid)
        return transformer.unembed(layer_norm(resid, self.ln_final_w, self.ln_final_b), self.W_U, self.b_U)


@pytest.mark.mistake
@pytest.mark.parametrize("mistake", [TransformerWithoutFinalLayerNorm, TransformerWithoutPosEmbed])
def test_transformer_mistakes(mistake) -> None:
    expect_failure(ch01.check_transformer, mistake, hint_contains="the final LayerNorm")


def loss_over_every_position(logits, tokens, target_mask):
    return next_token_loss(logits, tokens)


def loss_without_the_shift(logits, tokens, target_mask):
    correct = logits.log_softmax(dim=-1).gather(-1, tokens[..., None])[..., 0][:, 1:]
    return -correct[:, target_mask].mean()


@pytest.mark.mistake
@pytest.mark.parametrize(
    "mistake, problem",
    [
        (lambda *args: train_step(*args, loss_fn=loss_over_every_position), "at step 1 train_step returned the loss"),
        (lambda *args: train_step(*args, loss_fn=loss_without_the_shift), "at step 1 train_step returned the loss"),
        (lambda *args: train_step(*args, zero_grad=False), "after step 2"),
        (lambda *args: train_step(*args, step=False), "after step 1"),
    ],
    ids=["every_position", "no_shift", "no_zero_grad", "no_step"],
)
def test_train_step_mistakes(mistake, problem: str) -> None:
    message = expect_failure(ch01.check_train_step, mistake, hint_contains="optimizer.zero_grad(), loss.backward()")
    assert problem in message


@pytest.mark.mistake
def test_train_step_returning_the_loss_tensor() -> None:
    def returns_tensor(model, optimizer, tokens, target_mask):
        train_step(model, optimizer, tokens, target_mask)
        return next_token_loss(model(tokens), tokens, target_mask)

    message = expect_failure(ch01.check_train_step, returns_tensor, hint_contains="loss.item()")
    assert "returned Tensor, expected a float" in message


def sampler(draw):
    """A `sample_next_token` that is greedy at temperature 0 and otherwise returns `draw(logits, temperature, generator)`."""

    def sample_next_token(logits, temperature=1.0, generator=None):
        return logits.argmax(dim=-1) if temperature == 0 else draw(logits, temperature, generator)

    return sample_next_token


def multinomial(probs, generator):
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def divide_in_place(logits, temperature, generator):
    logits /= temperature
    return multinomial(logits.softmax(dim=-1), generator)


def inverse_cdf(n_uniforms):
    """Invert each row's CDF at a uniform draw: one per row is right, one for the whole batch ties the rows together."""

    def draw(logits, temperature, generator):
        uniforms = torch.rand(n_uniforms(logits), 1, generator=generator)
        cdf = (logits / temperature).softmax(dim=-1).cumsum(dim=-1)
        return torch.searchsorted(cdf, uniforms.expand(len(logits), 1).contiguous())[:, 0].clamp(max=logits.shape[-1] - 1)

    return draw


@pytest.mark.mistake
def test_sample_next_token_multiplying_by_temperature() -> None:
    sample_next_token = sampler(lambda logits, T, g: multinomial((logits * T).softmax(dim=-1), g))
    message = expect_failure(ch01.check_sample_next_token, sample_next_token, hint_contains="divide the logits")
    assert "frequencies" in message


@pytest.mark.mistake
@pytest.mark.parametrize(
    "draw",
    [
        lambda logits, T, g: torch.multinomial((logits[0] / T).softmax(dim=-1), len(logits), replacement=True, generator=g),
        inverse_cdf(n_uniforms=lambda logits: 1),
    ],
    ids=["first_row_for_all", "one_uniform_for_the_batch"],
)
def test_sample_next_token_rows_not_drawn_apart(draw) -> None:
    message = expect_failure(ch01.check_sample_next_token, sampler(draw), hint_contains="each row has its own distribution")
    assert "frequencies" in message


@pytest.mark.mistake
@pytest.mark.parametrize(
    "draw",
    [
        lambda logits, T, g: multinomial((logits / T).softmax(dim=-1), None),
        lambda logits, T, g: torch.distributions.Categorical(logits=logits / T).sample(),
    ],
    ids=["global_random_state", "categorical_distribution"],
)
def test_sample_next_token_ignoring_the_generator(draw) -> None:
    message = expect_failure(ch01.check_sample_next_token, sampler(draw), hint_contains="`generator` argument")
    assert "seeded alike drew different tokens" in message


@pytest.mark.mistake
def test_sample_next_token_with_its_own_generator() -> None:
    own = sampler(lambda logits, T, g: multinomial((logits / T).softmax(dim=-1), torch.Generator().manual_seed(0)))
    message = expect_failure(ch01.check_sample_next_token, own, hint_contains="`generator` passed in")
    assert "different seeds drew the same tokens" in message


@pytest.mark.mistake
def test_sample_next_token_dividing_logits_in_place() -> None:
    message = expect_failure(ch01.check_sample_next_token, sampler(divide_in_place), hint_contains="in-place")
    assert "changed its argument `logits` in place" in message


@pytest.mark.parametrize(
    "draw",
    [
        lambda logits, T, g: (logits / T - torch.rand(logits.shape, generator=g).log().neg().log()).argmax(dim=-1),
        inverse_cdf(n_uniforms=len),
    ],
    ids=["gumbel_max", "inverse_cdf"],
)
def test_sample_next_token_alternatives_pass(draw) -> None:
    ch01.check_sample_next_token(sampler(draw))


@pytest.mark.mistake
def test_sample_next_token_returning_probabilities() -> None:
    message = expect_failure(ch01.check_sample_next_token, sampler(lambda logits, T, g: (logits / T).softmax(dim=-1)))
    assert "the samples has shape (40000, 4), expected (40000,)" in message


@pytest.mark.mistake
def test_sample_next_token_greedy_wrong() -> None:
    def sample_next_token(logits, temperature=1.0, generator=None):
        return logits.argmin(dim=-1) if temperature == 0 else sampling.sample_next_token(logits, temperature, generator)

    expect_failure(ch01.check_sample_next_token, sample_next_token, hint_contains="argmax")


def greedy_or(draw):
    """A top-k or top-p sampler that is greedy at temperature 0 and otherwise returns `draw(logits, cutoff, temperature, generator)`."""

    def sample(logits, cutoff, temperature=1.0, generator=None):
        return logits.argmax(dim=-1) if temperature == 0 else draw(logits, cutoff, temperature, generator)

    return sample


def top_k_keeping(n_kept):
    return greedy_or(lambda logits, k, T, g: sampling.sample_top_k(logits, min(n_kept(k), logits.shape[-1]), T, g))


def top_k_positions(logits, k, temperature, generator):
    return sampling.sample_next_token(logits.topk(k, dim=-1).values, temperature, generator)


def top_k_in_place(logits, k, temperature, generator):
    logits[logits < logits.topk(k, dim=-1).values[:, -1:]] = -math.inf
    return sampling.sample_next_token(logits, temperature, generator)


def top_k_by_threshold(logits, k, temperature, generator):
    """Keeps every token tied with the k-th largest logit: right wherever the k-th is not tied with one outside."""
    kth = logits.topk(k, dim=-1).values[:, -1:]
    return sampling.sample_next_token(logits.masked_fill(logits < kth, -math.inf), temperature, generator)


@pytest.mark.mistake
@pytest.mark.parametrize("n_kept", [lambda k: k + 1, lambda k: k - 1], ids=["k_plus_one", "k_minus_one"])
def test_sample_top_k_keeping_the_wrong_number(n_kept) -> None:
    message = expect_failure(ch01.check_sample_top_k, top_k_keeping(n_kept), hint_contains="k largest logits")
    assert "with k=3 at temperature 1.5 the row with logits" in message and "should come up, and no other" in message


@pytest.mark.mistake
def test_sample_top_k_returning_positions_in_the_sorted_row() -> None:
    message = expect_failure(ch01.check_sample_top_k, greedy_or(top_k_positions), hint_contains="map them back to the vocabulary")
    assert "drew the tokens [0, 1, 2], but [1, 2, 4] should come up" in message


@pytest.mark.mistake
def test_sample_top_k_returning_positions_fails_greedy_too() -> None:
    def sample(logits, k, temperature=1.0, generator=None):
        return top_k_positions(logits, k, max(temperature, 1e-6), generator)

    message = expect_failure(ch01.check_sample_top_k, sample, hint_contains="not positions in the sorted row")
    assert "the greedy samples (temperature 0)" in message


@pytest.mark.mistake
def test_sample_top_k_ignoring_the_temperature() -> None:
    mistake = greedy_or(lambda logits, k, T, g: sampling.sample_top_k(logits, k, 1.0, g))
    message = expect_failure(ch01.check_sample_top_k, mistake, hint_contains="softmax(logits / T)")
    assert "with k=3 at temperature 1.5" in message and "frequencies" in message


@pytest.mark.mistake
@pytest.mark.parametrize(
    "check, reference",
    [(ch01.check_sample_top_k, sampling.sample_top_k), (ch01.check_sample_top_p, sampling.sample_top_p)],
    ids=["top_k", "top_p"],
)
def test_filters_ignoring_the_generator(check, reference) -> None:
    mistake = greedy_or(lambda logits, cutoff, T, g: reference(logits, cutoff, T, None))
    message = expect_failure(check, mistake, hint_contains="`generator` argument")
    assert "seeded alike drew different tokens" in message


@pytest.mark.mistake
def test_sample_top_k_masking_in_place() -> None:
    message = expect_failure(ch01.check_sample_top_k, greedy_or(top_k_in_place), hint_contains="in-place")
    assert "changed its argument `logits` in place" in message


def test_sample_top_k_by_threshold_passes() -> None:
    ch01.check_sample_top_k(greedy_or(top_k_by_threshold))


def nucleus(logits, p, temperature, crossing_stays=True):
    """Sorted probabilities at temperature T, their vocabulary ids, and which of them are in the nucleus."""
    probs, order = (logits / temperature).softmax(dim=-1).sort(dim=-1, descending=True)
    mass = probs.cumsum(dim=-1) - probs if crossing_stays else probs.cumsum(dim=-1)
    return probs, order, mass < p


def top_p_excluding_the_crossing_token(logits, p, temperature, generator):
    probs, order, kept = nucleus(logits, p, temperature, crossing_stays=False)
    return order.gather(-1, multinomial(probs * kept, generator)[:, None])[:, 0]


def top_p_nucleus_before_temperature(logits, p, temperature, generator):
    _, order, kept = nucleus(logits, p, 1.0)
    sorted_logits = logits.gather(-1, order).masked_fill(~kept, -math.inf)
    return order.gather(-1, sampling.sample_next_token(sorted_logits, temperature, generator)[:, None])[:, 0]


def top_p_without_renormalising(logits, p, temperature, generator):
    """Inverts the kept probabilities' CDF at a uniform draw: the mass left out all goes to the last kept token."""
    probs, order, kept = nucleus(logits, p, temperature)
    position = torch.searchsorted((probs * kept).cumsum(dim=-1), torch.rand(len(logits), 1, generator=generator))
    return order.gather(-1, position.minimum(kept.sum(dim=-1, keepdim=True) - 1))[:, 0]


def top_p_positions(logits, p, temperature, generator):
    probs, _, kept = nucleus(logits, p, temperature)
    return multinomial(probs * kept, generator)


@pytest.mark.mistake
@pytest.mark.parametrize(
    "draw, hint, problem",
    [
        (top_p_excluding_the_crossing_token, "so the token that crosses p stays", "should come up, and no other"),
        (top_p_nucleus_before_temperature, "divide by T and softmax first", "should come up, and no other"),
        (top_p_without_renormalising, "which renormalises it", "renormalised over the tokens kept"),
        (top_p_positions, "map them back to the vocabulary", "drew the tokens [0, 1, 2], but [1, 2, 4] should come up"),
    ],
    ids=["crossing_token_left_out", "nucleus_before_temperature", "not_renormalised", "positions_in_the_sorted_row"],
)
def test_sample_top_p_mistakes(draw, hint: str, problem: str) -> None:
    message = expect_failure(ch01.check_sample_top_p, greedy_or(draw), hint_contains=hint)
    assert "with p=0.85 at temperature 1.5 the row with logits" in message and problem in message


@pytest.mark.mistake
def test_sample_top_p_crossing_token_left_out_at_small_p() -> None:
    """With p below the top token's probability, leaving out the crossing token leaves nothing to draw."""

    def sample(logits, p, temperature=1.0, generator=None):
        mistake = sampling.sample_top_p if p > 0.5 else greedy_or(top_p_excluding_the_crossing_token)
        return mistake(logits, p, temperature, generator)

    message = expect_failure(ch01.check_sample_top_p, sample, hint_contains="so the token that crosses p stays")
    assert message.startswith("✗ sample_top_p: with p=0.3 at temperature 1.0: `sample` raised RuntimeError")


@pytest.mark.mistake
def test_trained_sorter_fails_on_untrained_model() -> None:
    task = SortingTask()
    untrained = make_model(ModelConfig(d_vocab=task.d_vocab, n_ctx=task.n_ctx, d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=None))
    message = expect_failure(ch01.check_trained_sorter, untrained, hint_contains="train for more steps")
    assert "of the sorted digits correctly" in message


@pytest.mark.mistake
def test_trained_sorter_fails_on_a_non_model() -> None:
    expect_failure(ch01.check_trained_sorter, "sort-digits-2l")


class PeeksAtTheNextToken(nn.Module):
    """Perfect on the sorted half, because it reads the answer: what a model without a causal mask learns."""

    def __init__(self):
        super().__init__()
        self.confidence = nn.Parameter(torch.tensor(10.0))

    def forward(self, tokens):
        return self.confidence * F.one_hot(tokens.roll(-1, dims=1), SortingTask().d_vocab).float()


@pytest.mark.mistake
def test_trained_sorter_that_sees_the_future() -> None:
    message = expect_failure(ch01.check_trained_sorter, PeeksAtTheNextToken(), hint_contains="causal mask")
    assert "the logits up to SEP once the digits after it are changed" in message


def test_failing_check_logs_instead_of_raising(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("MECHLEARN_CHECK_LOG", str(log))
    ch01.check_mlp(mlp_with(F.relu))
    ch01.check_mlp(transformer.mlp)
    out = capsys.readouterr().out
    assert out.startswith("✗ mlp: ") and "✓ mlp: all tests passed" in out
    assert [line.count('"passed": true') for line in log.read_text().splitlines()] == [0, 1]


# --- generation with a KV cache --------------------------------------------------------------


def kv_cache_generator(position_zero=False, append=True, mask=False, cache_residual=False, only_new=False):
    """A learner's `generate_with_kv_cache`, written from the chapter's pieces; each flag makes one typical mistake."""

    def project(x, W, b):
        return einops.einsum(x, W, "batch pos d_model, head d_model d_head -> batch pos head d_head") + b

    def attend(block, x, cached):
        """`block`'s attention for the positions `x` after the cached ones; the cache to keep."""
        normed = layer_norm(x, block.ln1_w, block.ln1_b)
        if cache_residual:  # keeps the residual stream and projects it without ln1
            kept = torch.cat([cached, x], dim=1) if cached is not None else x
            keys, values = project(kept, block.W_K, block.b_K), project(kept, block.W_V, block.b_V)
        else:
            new_keys, new_values = project(normed, block.W_K, block.b_K), project(normed, block.W_V, block.b_V)
            keys = torch.cat([cached[0], new_keys], dim=1) if cached is not None else new_keys
            values = torch.cat([cached[1], new_values], dim=1) if cached is not None else new_values
            kept = (keys, values) if append or cached is None else cached
        scores = einops.einsum(project(normed, block.W_Q, block.b_Q), keys, "b q h d, b k h d -> b h q k") / math.sqrt(block.W_Q.shape[-1])
        if x.shape[1] > 1 or mask:
            scores = transformer.apply_causal_mask(scores)
        z = einops.einsum(scores.softmax(dim=-1), values, "b h q k, b k h d -> b q h d")
        return einops.einsum(z, block.W_O, "b q h d, h d m -> b q m") + block.b_O, kept

    @torch.no_grad()
    def generate_with_kv_cache(model, prompt, max_new_tokens):
        caches, tokens, new = [None] * len(model.blocks), prompt, prompt
        for _ in range(max_new_tokens):
            start = 0 if position_zero else tokens.shape[1] - new.shape[1]
            resid = model.W_E[new] + model.W_pos[start : start + new.shape[1]]
            for layer, block in enumerate(model.blocks):
                attn_out, caches[layer] = attend(block, resid, caches[layer])
                resid = block.add_mlp(resid + attn_out)
            logits = transformer.unembed(layer_norm(resid, model.ln_final_w, model.ln_final_b), model.W_U, model.b_U)
            new = logits[:, -1:].argmax(dim=-1)
            tokens = torch.cat([tokens, new], dim=-1)
        return tokens[:, prompt.shape[1] :] if only_new else tokens

    return generate_with_kv_cache


def test_kv_cache_check_passes_on_a_learners_answer(capsys: pytest.CaptureFixture) -> None:
    ch01.check_generate_with_kv_cache(kv_cache_generator())
    assert capsys.readouterr().out == "✓ generate_with_kv_cache: all tests passed\n"


@pytest.mark.mistake
def test_kv_cache_with_position_zero_for_every_new_token() -> None:
    message = expect_failure(ch01.check_generate_with_kv_cache, kv_cache_generator(position_zero=True), hint_contains="absolute position")
    assert "attention outputs only b_O" in message


@pytest.mark.mistake
@pytest.mark.parametrize(
    "mistake", [{"append": False}, {"mask": True}, {"cache_residual": True}], ids=["not-appending", "masking-one-query", "caching-the-residual"]
)
def test_kv_cache_mistakes(mistake) -> None:
    expect_failure(ch01.check_generate_with_kv_cache, kv_cache_generator(**mistake), hint_contains="appended to the cache")


@pytest.mark.mistake
def test_kv_cache_returning_only_the_new_tokens() -> None:
    message = expect_failure(ch01.check_generate_with_kv_cache, kv_cache_generator(only_new=True), hint_contains="the prompt followed by")
    assert "returned only the 8 new tokens" in message


@pytest.mark.mistake
def test_kv_cache_check_refuses_generation_without_a_cache() -> None:
    uncached = lambda model, prompt, max_new_tokens: sampling.generate(model, prompt, max_new_tokens)  # noqa: E731
    expect_failure(ch01.check_generate_with_kv_cache, uncached, hint_contains="each position runs once")
