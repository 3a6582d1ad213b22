"""Checks for chapter 03, induction heads.

The ground truth is the hand-set induction circuit of `mechlearn.handcrafted`: its
previous-token head and induction head are known, so a score or a finder is right
when it names them, and nothing else. Its other heads have zero weights and attend
uniformly, whatever the tokens, so their scores are exact numbers that depend only on
`seq_len` and `bos`: thresholds on either side of them tell whether a finder uses those
arguments. Scores are also compared with `mechlearn.induction` on the circuit's patterns
and on random ones.
"""

from __future__ import annotations

import functools

import torch
from transformer_lens.model_bridge import TransformerBridge

from mechlearn import induction, zoo
from mechlearn.checks.core import call_learner_read_only, check, expect, expect_tensor
from mechlearn.handcrafted import InductionCircuit, induction_circuit_model
from mechlearn.models import ModelConfig, make_model

SEQ_LEN, BOS = 12, 0
RANDOM_SEQ_LEN = 5


@functools.lru_cache(maxsize=1)
def circuit() -> InductionCircuit:
    """Previous-token head (0, 1) and induction head (1, 0): not the first head, so an off-by-one shows."""
    return induction_circuit_model(d_vocab=32, n_ctx=32, n_heads=3, previous_token_head=1, induction_head=0)


@functools.lru_cache(maxsize=1)
def circuit_patterns() -> torch.Tensor:
    _, patterns = induction.repeated_tokens_patterns(circuit().model, SEQ_LEN, batch=16, seed=0, bos=BOS)
    return patterns


@functools.lru_cache(maxsize=1)
def random_patterns() -> torch.Tensor:
    """Causal attention patterns [layer batch head query key] that differ in every sequence and head.

    The repeated block (the last 2 * RANDOM_SEQ_LEN positions) follows a prefix of 3 positions,
    so a score that takes seq_len from the pattern's size, or skips a fixed number of
    positions for a BOS, misses it.
    """
    n_pos = 2 * RANDOM_SEQ_LEN + 3
    scores = torch.randn(2, 4, 3, n_pos, n_pos, generator=torch.Generator().manual_seed(0))
    future = torch.ones(n_pos, n_pos, dtype=torch.bool).triu(diagonal=1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


@functools.lru_cache(maxsize=1)
def random_model() -> TransformerBridge:
    return make_model(ModelConfig(d_vocab=32, n_ctx=32, n_layers=2, n_heads=3, d_head=8, d_model=24, d_mlp=None, seed=3))


def _expect_scores(learner_fn, reference_fn, *, takes_seq_len: bool, what: str, hint: str) -> None:
    """Compare on the circuit's patterns, then on random ones with another seq_len and a longer prefix."""
    cases = [
        (circuit_patterns(), SEQ_LEN, "", hint),
        (
            random_patterns(),
            RANDOM_SEQ_LEN,
            f" on random patterns (seq_len={RANDOM_SEQ_LEN}, after 3 other positions)",
            "every sequence of the batch attends differently here, and the repeated block does not start at "
            "position 1: average over every sequence, and place the second half with the seq_len you are given.",
        ),
    ]
    for patterns, seq_len, where, case_hint in cases:
        args = (seq_len,) if takes_seq_len else ()
        actual = call_learner_read_only(learner_fn, patterns, *args)
        expect_tensor(actual, reference_fn(patterns, *args), what=what + where, atol=1e-5, rtol=1e-4, hint=case_hint)


@check
def check_previous_token_scores(previous_token_scores) -> None:
    """On the hand-set circuit, head (0, 1) scores 1; the rest match the library."""
    _expect_scores(
        previous_token_scores,
        induction.previous_token_scores,
        takes_seq_len=False,
        what="the previous-token scores",
        hint="average pattern[..., q, q - 1] over the batch and over queries q >= 1: the diagonal just below "
        "the main one (Tensor.diagonal(offset=-1, dim1=-2, dim2=-1)).",
    )


@check
def check_duplicate_token_scores(duplicate_token_scores) -> None:
    """Attention from each second-half token to its first occurrence, seq_len back."""
    _expect_scores(
        duplicate_token_scores,
        induction.duplicate_token_scores,
        takes_seq_len=True,
        what="the duplicate-token scores",
        hint="the repeated block is the last 2 * seq_len positions; average pattern[..., q, q - seq_len] over "
        "second-half queries q only.",
    )


@check
def check_induction_scores(induction_scores) -> None:
    """Attention from each second-half token to the token after its first occurrence."""
    _expect_scores(
        induction_scores,
        induction.induction_scores,
        takes_seq_len=True,
        what="the induction scores",
        hint="the token after the first occurrence of position q is at q - seq_len + 1; average over "
        "second-half queries only.",
    )
    scores = call_learner_read_only(induction_scores, circuit_patterns(), SEQ_LEN)
    expect(
        scores.argmax().item() == 3,
        "your induction scores do not peak at the planted induction head (layer 1, head 0).",
        "index the pattern as [layer, batch, head, query_pos, key_pos].",
    )


@check
def check_find_induction_heads(find_induction_heads) -> None:
    """Names exactly the planted head on the hand-set circuit, no head on a random model, and the
    circuit's uniform heads exactly when the threshold is below their score for that seq_len and bos."""
    found = _found_heads(find_induction_heads, circuit().model, threshold=0.5, seq_len=SEQ_LEN, bos=BOS)
    expect(
        found == [circuit().induction_head],
        f"on the hand-set circuit you found {found}, but the only induction head is {circuit().induction_head}.",
        "run the model on repeated random tokens, compute induction_scores, keep (layer, head) pairs at or above the threshold.",
    )
    found = _found_heads(find_induction_heads, random_model(), threshold=0.5, seq_len=SEQ_LEN, bos=BOS)
    expect(
        found == [],
        f"on a randomly initialised model you found {found}; it has no induction heads.",
        "compare each score with the threshold, not with the other heads.",
    )
    # The uniform heads score 0.114 at seq_len=5 (0.053 at 12) and 0.170 at seq_len=3 with BOS (0.206 without).
    cases = [
        (0.1, 5, "use the threshold and seq_len you are given, and keep every head at or above the threshold."),
        (0.19, 3, "pass bos on to the function that makes the repeated tokens: with it every position moves by one."),
    ]
    for threshold, seq_len, hint in cases:
        settings = {"threshold": threshold, "seq_len": seq_len, "bos": BOS}
        found = _found_heads(find_induction_heads, circuit().model, **settings)
        expected = induction.find_induction_heads(circuit().model, **settings)
        expect(
            found == expected,
            f"on the hand-set circuit with {', '.join(f'{k}={v}' for k, v in settings.items())} you found {found}, "
            f"expected {expected}.",
            hint,
        )


def _found_heads(find_induction_heads, model: TransformerBridge, **settings) -> list[tuple[int, int]]:
    """The learner's heads as sorted (layer, head) pairs of ints: any order and any pair type will do."""
    found = call_learner_read_only(find_induction_heads, model, **settings)
    return sorted(tuple(int(i) for i in head) for head in found)


@check
def check_k_composition_scores(k_composition_scores) -> None:
    """Equals TransformerLens's `all_composition_scores("K")` between layers 0 and 1."""
    model = random_model()
    expected = model.all_composition_scores("K").scores[0, :, 1, :].detach()
    actual = call_learner_read_only(k_composition_scores, model)
    expect_tensor(
        actual,
        expected,
        what="the K-composition scores",
        atol=1e-5,
        rtol=1e-4,
        hint="||W_OV^A (W_QK^B)^T||_F / (||W_OV^A||_F ||W_QK^B||_F): model.OV[0] and model.QK[1].T are "
        "FactoredMatrix objects; broadcast them as [head_a, 1] @ [1, head_b] and use .norm().",
    )


@functools.lru_cache(maxsize=1)
def zoo_model() -> TransformerBridge:
    return zoo.load("induction-2l")


_READS = {
    "q": "Q-composition reads through the later head's query, the left side of x W_QK y^T: model.QK[1], "
    "no transpose (the transpose is K-composition)",
    "k": "K-composition reads through the later head's key, the right side of x W_QK y^T: model.QK[1].T "
    "(without the transpose it is Q-composition)",
    "v": "V-composition reads through the later head's values: model.OV[1], its OV circuit, not its QK",
}


@check
def check_composition_scores(composition_scores) -> None:
    """Equals `induction.composition_scores` for every kind, on a random model, the zoo's and the hand-set circuit."""
    models = [
        ("a random model", random_model()),
        ("the zoo's induction-2l", zoo_model()),
        ("the hand-set circuit", circuit().model),
    ]
    for name, model in models:
        for kind in induction.COMPOSITION_KINDS:
            expect_tensor(
                call_learner_read_only(composition_scores, model, kind),
                induction.composition_scores(model, kind),
                what=f"the {kind.upper()}-composition scores on {name} (kind={kind!r})",
                atol=1e-5,
                rtol=1e-4,
                hint=f"{_READS[kind]}. Layer 0 writes (model.OV[0], rows), layer 1 reads (columns); divide by the "
                "norms of the same two matrices you multiply, and give a head with all-zero weights (the hand-set "
                "circuit has some) the score 0, not NaN.",
            )


@check
def check_ablation_cost(ablation_cost) -> None:
    """Zero-ablating the planted induction head costs what the library measures; an unused head costs nothing."""
    model = circuit().model
    tokens = induction.repeated_random_tokens(32, SEQ_LEN, 16, torch.Generator().manual_seed(1), bos=BOS)
    repeated, first_half = torch.zeros_like(tokens, dtype=torch.bool), torch.zeros_like(tokens, dtype=torch.bool)
    repeated[:, SEQ_LEN + 2 :] = True
    first_half[:, 2 : SEQ_LEN + 1] = True  # unpredictable tokens: a high clean loss that ablation leaves alone
    ragged = torch.zeros_like(repeated)
    for row in range(len(tokens)):  # a different number of tokens, and different tokens, in every sequence
        ragged[row, SEQ_LEN + 2 : SEQ_LEN + 3 + 3 * row % (SEQ_LEN - 1)] = True
        ragged[row, 2 + row % SEQ_LEN] = True
    hint = "return ablated_loss - clean_loss as a float (.item()), with the heads' hook_z zeroed only at those heads."
    cases = [
        ([circuit().induction_head], repeated, hint),
        ([(1, 2)], repeated, hint),
        ([circuit().induction_head], first_half, hint),
        (
            [(1, 2), circuit().previous_token_head, circuit().induction_head],
            repeated,
            "ablate every head in the list, all in the same run: the cost of losing two heads together is not "
            "the sum of their costs.",
        ),
        (
            [circuit().induction_head],
            ragged,
            "here each sequence marks a different number of tokens: take each sequence's own row of the mask, "
            "and average over all the marked tokens at once.",
        ),
    ]
    for heads, mask, case_hint in cases:
        expected = induction.ablation_cost(model, tokens, mask, heads)
        actual = call_learner_read_only(ablation_cost, model, tokens, mask, heads)
        expect(
            isinstance(actual, float) and abs(actual - expected) < 1e-4,
            f"ablating {heads} should raise the loss on the masked tokens by {expected:.4f} nats; you returned {actual!r}.",
            case_hint,
        )
