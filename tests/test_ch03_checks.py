"""Chapter 03 checks pass on the library's answers and fail, with a hint, on typical mistakes."""

import pytest
import torch
from check_helpers import expect_failure

from mechlearn import induction
from mechlearn.checks import ch03
from mechlearn.patching import run_with_heads_ablated
from mechlearn.train import next_token_loss

REFERENCE_ANSWERS = [
    (ch03.check_previous_token_scores, induction.previous_token_scores),
    (ch03.check_duplicate_token_scores, induction.duplicate_token_scores),
    (ch03.check_induction_scores, induction.induction_scores),
    (ch03.check_find_induction_heads, induction.find_induction_heads),
    (ch03.check_k_composition_scores, induction.k_composition_scores),
    (ch03.check_ablation_cost, induction.ablation_cost),
]


@pytest.mark.parametrize("check, answer", REFERENCE_ANSWERS, ids=lambda x: getattr(x, "__name__", ""))
def test_check_passes_on_the_library(check, answer, capsys) -> None:
    check(answer)
    assert "✓" in capsys.readouterr().out


def stripe_mean(offset: int, second_half_only: bool, seq_len: int = 0):
    def scores(patterns, *args):
        stripe = patterns.diagonal(offset=-offset, dim1=-2, dim2=-1)
        if second_half_only:
            stripe = stripe[..., -seq_len:]
        return stripe.mean(dim=(1, 3))

    return scores


def test_previous_token_on_the_main_diagonal() -> None:
    expect_failure(ch03.check_previous_token_scores, stripe_mean(0, False), hint_contains="offset=-1")


def test_previous_token_scores_in_the_wrong_axis_order() -> None:
    expect_failure(ch03.check_previous_token_scores, lambda p: stripe_mean(1, False)(p).T)


def test_duplicate_scores_over_every_query() -> None:
    expect_failure(ch03.check_duplicate_token_scores, lambda p, n: stripe_mean(n, False)(p), hint_contains="second-half")


def test_induction_with_the_duplicate_offset() -> None:
    expect_failure(ch03.check_induction_scores, lambda p, n: stripe_mean(n, True, n)(p), hint_contains="seq_len + 1")


def test_induction_over_every_query() -> None:
    expect_failure(ch03.check_induction_scores, lambda p, n: stripe_mean(n - 1, False)(p))


def test_finder_returning_the_top_head_of_every_layer() -> None:
    def find(model, threshold=0.5, seq_len=12, bos=None):
        _, patterns = induction.repeated_tokens_patterns(model, seq_len, bos=bos)
        scores = induction.induction_scores(patterns, seq_len)
        return [(layer, int(scores[layer].argmax())) for layer in range(scores.shape[0])]

    expect_failure(ch03.check_find_induction_heads, find, hint_contains="threshold")


def test_finder_with_duplicate_scores() -> None:
    def find(model, threshold=0.5, seq_len=12, bos=None):
        _, patterns = induction.repeated_tokens_patterns(model, seq_len, bos=bos)
        return induction.heads_above(induction.duplicate_token_scores(patterns, seq_len), threshold)

    expect_failure(ch03.check_find_induction_heads, find)


def test_q_composition_instead_of_k() -> None:
    def q_composition(model):
        writes, reads = model.OV[0], model.QK[1]
        return (writes[:, None] @ reads[None, :]).norm() / (writes.norm()[:, None] * reads.norm()[None, :])

    expect_failure(ch03.check_k_composition_scores, q_composition, hint_contains="QK[1].T")


def test_k_composition_without_normalising() -> None:
    expect_failure(ch03.check_k_composition_scores, lambda model: (model.OV[0][:, None] @ model.QK[1].T[None, :]).norm())


def test_ablation_cost_returning_the_ablated_loss() -> None:
    def ablated_loss(model, tokens, mask, heads):
        return next_token_loss(run_with_heads_ablated(model, tokens, heads), tokens, mask[:, 1:]).item()

    expect_failure(ch03.check_ablation_cost, ablated_loss, hint_contains="ablated_loss - clean_loss")


def test_ablation_cost_over_every_token() -> None:
    def every_token(model, tokens, mask, heads):
        clean = next_token_loss(model(tokens), tokens)
        return (next_token_loss(run_with_heads_ablated(model, tokens, heads), tokens) - clean).item()

    expect_failure(ch03.check_ablation_cost, every_token)


def test_ablation_cost_as_a_tensor() -> None:
    def as_tensor(model, tokens, mask, heads):
        return torch.tensor(induction.ablation_cost(model, tokens, mask, heads))

    expect_failure(ch03.check_ablation_cost, as_tensor, hint_contains=".item()")
