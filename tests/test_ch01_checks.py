"""Chapter 01 checks pass on the reference answers and fail, with a hint, on typical mistakes."""

import math

import einops
import pytest
import torch
import torch.nn.functional as F
from check_helpers import expect_failure

from mechlearn import sampling, transformer, zoo
from mechlearn.checks import ch01
from mechlearn.models import ModelConfig, make_model
from mechlearn.tasks import SortingTask
from mechlearn.transformer import layer_norm

# --- every check passes on the library's reference answer ---------------------------------

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


@pytest.mark.parametrize("mistake", [layer_norm_unbiased, layer_norm_without_w_b])
def test_layer_norm_mistakes(mistake) -> None:
    expect_failure(ch01.check_layer_norm, mistake, hint_contains="biased variance")


def test_embed_with_transposed_w_e() -> None:
    def embed(tokens, W_E):
        return W_E.T[:, tokens]  # (d_model, batch, pos)

    message = expect_failure(ch01.check_embed, embed)
    assert "has shape (24, 2, 9), expected (2, 9, 24)" in message


def test_embed_one_hot_in_integers() -> None:
    def embed(tokens, W_E):
        return F.one_hot(tokens, W_E.shape[0]) @ W_E.long()

    expect_failure(ch01.check_embed, embed, hint_contains="floating point")


def test_pos_embed_without_batch_dimension() -> None:
    def pos_embed(tokens, W_pos):
        return W_pos[: tokens.shape[1]]

    message = expect_failure(ch01.check_pos_embed, pos_embed)
    assert "has shape (9, 24), expected (2, 9, 24)" in message


def test_pos_embed_whole_w_pos() -> None:
    def pos_embed(tokens, W_pos):
        return einops.repeat(W_pos, "pos d -> b pos d", b=tokens.shape[0])

    expect_failure(ch01.check_pos_embed, pos_embed)


def scores_with(scale):
    def attention_scores(x, W_Q, b_Q, W_K, b_K):
        q = einops.einsum(x, W_Q, "b p d, h d e -> b p h e") + b_Q
        k = einops.einsum(x, W_K, "b p d, h d e -> b p h e") + b_K
        return einops.einsum(q, k, "b q h e, b k h e -> b h q k") / scale(x, W_Q)

    return attention_scores


@pytest.mark.parametrize(
    "scale",
    [lambda x, W_Q: math.sqrt(x.shape[-1]), lambda x, W_Q: 1.0, lambda x, W_Q: W_Q.shape[-1]],
    ids=["sqrt_d_model", "unscaled", "d_head_without_sqrt"],
)
def test_attention_scores_wrong_scale(scale) -> None:
    expect_failure(ch01.check_attention_scores, scores_with(scale), hint_contains="sqrt(d_head)")


def test_attention_scores_without_biases() -> None:
    def attention_scores(x, W_Q, b_Q, W_K, b_K):
        return scores_with(lambda x, W_Q: math.sqrt(W_Q.shape[-1]))(x, W_Q, 0 * b_Q, W_K, 0 * b_K)

    expect_failure(ch01.check_attention_scores, attention_scores)


def mask_with(keep):
    def apply_causal_mask(scores):
        n_q, n_k = scores.shape[-2:]
        return scores.masked_fill(~keep(torch.ones(n_q, n_k, dtype=torch.bool)), float("-inf"))

    return apply_causal_mask


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
    message = expect_failure(ch01.check_apply_causal_mask, mistake)
    assert "infinite value(s) where finite values were expected" in message


def test_causal_mask_mistake_gets_the_mask_hint() -> None:
    expect_failure(ch01.check_apply_causal_mask, mask_with(lambda ones: ones.tril(diagonal=-1)), hint_contains="diagonal=1")


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


def attention_with(softmax_dim=-1, use_b_V=True, use_b_O=True):
    def attention(x, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O):
        scores = transformer.apply_causal_mask(transformer.attention_scores(x, W_Q, b_Q, W_K, b_K))
        pattern = scores.softmax(dim=softmax_dim).nan_to_num()
        v = einops.einsum(x, W_V, "b p d, h d e -> b p h e") + (b_V if use_b_V else 0)
        z = einops.einsum(pattern, v, "b h q k, b k h e -> b q h e")
        return einops.einsum(z, W_O, "b p h e, h e d -> b p d") + (b_O if use_b_O else 0)

    return attention


@pytest.mark.parametrize(
    "mistake",
    [attention_with(softmax_dim=-2), attention_with(use_b_V=False), attention_with(use_b_O=False)],
    ids=["softmax_over_queries", "no_b_V", "no_b_O"],
)
def test_attention_mistakes(mistake) -> None:
    expect_failure(ch01.check_attention, mistake, hint_contains="softmax over key_pos")


def mlp_with(activation):
    def mlp(x, W_in, b_in, W_out, b_out):
        return activation(x @ W_in + b_in) @ W_out + b_out

    return mlp


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


def test_unembed_returning_probabilities() -> None:
    def unembed(x, W_U, b_U):
        return (x @ W_U + b_U).softmax(dim=-1)

    expect_failure(ch01.check_unembed, unembed, hint_contains="W_U + b_U")


def test_unembed_forgetting_b_u() -> None:
    def unembed(x, W_U, b_U):
        return x @ W_U

    expect_failure(ch01.check_unembed, unembed, hint_contains="b_U")


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


@pytest.mark.parametrize("mistake", [BlockWithoutResidual, BlockWithParallelMlp])
def test_transformer_block_mistakes(mistake) -> None:
    expect_failure(ch01.check_transformer_block, mistake, hint_contains="resid_mid = resid_pre + attention")


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


@pytest.mark.parametrize("mistake", [TransformerWithoutFinalLayerNorm, TransformerWithoutPosEmbed])
def test_transformer_mistakes(mistake) -> None:
    expect_failure(ch01.check_transformer, mistake, hint_contains="the final LayerNorm")


def test_sample_next_token_multiplying_by_temperature() -> None:
    def sample_next_token(logits, temperature=1.0, generator=None):
        if temperature == 0:
            return logits.argmax(dim=-1)
        return torch.multinomial((logits * temperature).softmax(dim=-1), 1, generator=generator)[:, 0]

    message = expect_failure(ch01.check_sample_next_token, sample_next_token, hint_contains="divide the logits")
    assert "frequencies" in message


def test_sample_next_token_returning_probabilities() -> None:
    def sample_next_token(logits, temperature=1.0, generator=None):
        if temperature == 0:
            return logits.argmax(dim=-1)
        return (logits / temperature).softmax(dim=-1)

    message = expect_failure(ch01.check_sample_next_token, sample_next_token)
    assert "the samples has shape (20000, 4), expected (20000,)" in message


def test_sample_next_token_greedy_wrong() -> None:
    def sample_next_token(logits, temperature=1.0, generator=None):
        return logits.argmin(dim=-1) if temperature == 0 else sampling.sample_next_token(logits, temperature, generator)

    expect_failure(ch01.check_sample_next_token, sample_next_token, hint_contains="argmax")


def test_trained_sorter_fails_on_untrained_model() -> None:
    task = SortingTask()
    untrained = make_model(ModelConfig(d_vocab=task.d_vocab, n_ctx=task.n_ctx, d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=None))
    message = expect_failure(ch01.check_trained_sorter, untrained, hint_contains="train for more steps")
    assert "of the sorted digits correctly" in message


def test_trained_sorter_fails_on_a_non_model() -> None:
    expect_failure(ch01.check_trained_sorter, "sort-digits-2l")


def test_failing_check_logs_instead_of_raising(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("MECHLEARN_CHECK_LOG", str(log))
    ch01.check_mlp(mlp_with(F.relu))
    ch01.check_mlp(transformer.mlp)
    out = capsys.readouterr().out
    assert out.startswith("✗ mlp: ") and "✓ mlp: all tests passed" in out
    assert [line.count('"passed": true') for line in log.read_text().splitlines()] == [0, 1]
