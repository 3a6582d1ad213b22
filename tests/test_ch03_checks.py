"""Chapter 03 checks pass on the library's answers and fail, with a hint, on typical mistakes."""

import copy
import dataclasses
import math

import einops
import numpy as np
import pytest
import torch
from check_helpers import expect_failure

from mechlearn import induction, zoo
from mechlearn.checks import ch03
from mechlearn.models import make_model
from mechlearn.patching import run_with_heads_ablated
from mechlearn.train import next_token_loss, train

REFERENCE_ANSWERS = [
    (ch03.check_previous_token_scores, induction.previous_token_scores),
    (ch03.check_duplicate_token_scores, induction.duplicate_token_scores),
    (ch03.check_induction_scores, induction.induction_scores),
    (ch03.check_find_induction_heads, induction.find_induction_heads),
    (ch03.check_k_composition_scores, induction.k_composition_scores),
    (ch03.check_composition_scores, induction.composition_scores),
    (ch03.check_ablation_cost, induction.ablation_cost),
    (ch03.check_phase_change_step, induction.phase_change_step),
    (ch03.check_copying_score, induction.copying_score),
    (ch03.check_positional_qk, induction.positional_qk),
    (ch03.check_offset_fraction, induction.offset_fraction),
    (ch03.check_attention_score_terms, induction.attention_score_terms),
    (ch03.check_induction_key_contrast, induction.induction_key_contrast),
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


@pytest.mark.mistake
def test_previous_token_on_the_main_diagonal() -> None:
    expect_failure(ch03.check_previous_token_scores, stripe_mean(0, False), hint_contains="offset=-1")


@pytest.mark.mistake
def test_previous_token_scores_in_the_wrong_axis_order() -> None:
    expect_failure(ch03.check_previous_token_scores, lambda p: stripe_mean(1, False)(p).T)


@pytest.mark.mistake
def test_duplicate_scores_over_every_query() -> None:
    expect_failure(ch03.check_duplicate_token_scores, lambda p, n: stripe_mean(n, False)(p), hint_contains="second-half")


@pytest.mark.mistake
def test_induction_with_the_duplicate_offset() -> None:
    expect_failure(ch03.check_induction_scores, lambda p, n: stripe_mean(n, True, n)(p), hint_contains="seq_len + 1")


@pytest.mark.mistake
def test_induction_over_every_query() -> None:
    expect_failure(ch03.check_induction_scores, lambda p, n: stripe_mean(n - 1, False)(p))


def first_sequence_only(offset_from_seq_len: int | None):
    """Scores from the first sequence of the batch: on the circuit, every sequence attends alike."""

    def scores(patterns, seq_len=None):
        offset = 1 if offset_from_seq_len is None else seq_len - offset_from_seq_len
        stripe = patterns[:, 0].diagonal(offset=-offset, dim1=-2, dim2=-1)
        return stripe.mean(dim=-1) if seq_len is None else stripe[..., -seq_len:].mean(dim=-1)

    return scores


def second_half_from_the_pattern_size(offset_from_seq_len: int):
    """seq_len taken as half the sequence, right only when the repeat fills it (after one BOS)."""

    def scores(patterns, seq_len):
        half = patterns.shape[-1] // 2
        stripe = patterns.diagonal(offset=-(half - offset_from_seq_len), dim1=-2, dim2=-1)
        return stripe[..., -half:].mean(dim=(1, 3))

    return scores


def skipping_a_fixed_number_of_queries(offset_from_seq_len: int):
    """The second half found by skipping a fixed number of stripe entries, right only with one BOS."""

    def scores(patterns, seq_len):
        offset = seq_len - offset_from_seq_len
        return patterns.diagonal(offset=-offset, dim1=-2, dim2=-1)[..., offset_from_seq_len + 1 :].mean(dim=(1, 3))

    return scores


@pytest.mark.mistake
@pytest.mark.parametrize(
    "check, wrong",
    [
        (ch03.check_previous_token_scores, first_sequence_only(None)),
        (ch03.check_duplicate_token_scores, first_sequence_only(0)),
        (ch03.check_induction_scores, first_sequence_only(1)),
        (ch03.check_duplicate_token_scores, second_half_from_the_pattern_size(0)),
        (ch03.check_induction_scores, second_half_from_the_pattern_size(1)),
        (ch03.check_duplicate_token_scores, skipping_a_fixed_number_of_queries(0)),
        (ch03.check_induction_scores, skipping_a_fixed_number_of_queries(1)),
    ],
    ids=[
        "previous_first_sequence",
        "duplicate_first_sequence",
        "induction_first_sequence",
        "duplicate_seq_len_from_size",
        "induction_seq_len_from_size",
        "duplicate_fixed_skip",
        "induction_fixed_skip",
    ],
)
def test_scores_right_only_on_the_circuit(check, wrong) -> None:
    message = expect_failure(check, wrong, hint_contains="every sequence")
    assert "on random patterns (seq_len=5" in message


@pytest.mark.mistake
def test_finder_returning_the_top_head_of_every_layer() -> None:
    def find(model, threshold=0.5, seq_len=12, bos=None):
        _, patterns = induction.repeated_tokens_patterns(model, seq_len, bos=bos)
        scores = induction.induction_scores(patterns, seq_len)
        return [(layer, int(scores[layer].argmax())) for layer in range(scores.shape[0])]

    expect_failure(ch03.check_find_induction_heads, find, hint_contains="threshold")


@pytest.mark.mistake
def test_finder_with_duplicate_scores() -> None:
    def find(model, threshold=0.5, seq_len=12, bos=None):
        _, patterns = induction.repeated_tokens_patterns(model, seq_len, bos=bos)
        return induction.heads_above(induction.duplicate_token_scores(patterns, seq_len), threshold)

    expect_failure(ch03.check_find_induction_heads, find)


def finder(seq_len_used=None, threshold_used=None, bos_used=True, only_the_best=False):
    """The library's finder with one argument ignored, or keeping only the best head."""

    def find(model, threshold=0.5, seq_len=12, bos=None):
        _, patterns = induction.repeated_tokens_patterns(model, seq_len_used or seq_len, bos=bos if bos_used else None)
        scores = induction.induction_scores(patterns, seq_len_used or seq_len)
        found = induction.heads_above(scores, threshold_used or threshold)
        if only_the_best:
            best = divmod(int(scores.argmax()), scores.shape[1])
            return [best] if best in found else []
        return found

    return find


@pytest.mark.mistake
@pytest.mark.parametrize(
    "find, hint",
    [
        (finder(only_the_best=True), "every head at or above"),
        (finder(threshold_used=0.5), "the threshold and seq_len you are given"),
        (finder(seq_len_used=12), "the threshold and seq_len you are given"),
        (finder(bos_used=False), "pass bos on"),
    ],
    ids=["only_the_best_head", "threshold_ignored", "seq_len_ignored", "bos_ignored"],
)
def test_finder_ignoring_an_argument(find, hint) -> None:
    message = expect_failure(ch03.check_find_induction_heads, find, hint_contains=hint)
    assert "on the hand-set circuit with threshold=" in message


@pytest.mark.mistake
def test_q_composition_instead_of_k() -> None:
    def q_composition(model):
        writes, reads = model.OV[0], model.QK[1]
        return (writes[:, None] @ reads[None, :]).norm() / (writes.norm()[:, None] * reads.norm()[None, :])

    expect_failure(ch03.check_k_composition_scores, q_composition, hint_contains="QK[1].T")


@pytest.mark.mistake
def test_k_composition_without_normalising() -> None:
    expect_failure(ch03.check_k_composition_scores, lambda model: (model.OV[0][:, None] @ model.QK[1].T[None, :]).norm())


def reads_in(layer: int, q: str = "q", k: str = "k", v: str = "v"):
    """The reading matrix of each kind in `layer`, with a kind's right matrix replaced by another kind's."""
    kinds = {"q": q, "k": k, "v": v}

    def reads(model, kind):
        return {"q": model.QK[layer], "k": model.QK[layer].T, "v": model.OV[layer]}[kinds[kind]]

    return reads


def composition(reads=reads_in(1), write_layer: int = 0, norm_of_reads=None):
    """A learner's composition_scores with one choice swapped; zero-weight heads score 0 as they should."""

    def scores(model, kind):
        left, right = model.OV[write_layer], reads(model, kind)
        norm_right = (norm_of_reads or reads)(model, kind).norm()
        return ((left[:, None] @ right[None, :]).norm() / (left.norm()[:, None] * norm_right[None, :])).nan_to_num()

    return scores


@pytest.mark.mistake
def test_v_composition_through_qk() -> None:
    expect_failure(
        ch03.check_composition_scores, composition(reads_in(1, v="q")), hint_contains="model.OV[1], its OV circuit, not its QK"
    )


@pytest.mark.mistake
@pytest.mark.parametrize("kind", ["q", "k"])
def test_q_and_k_with_the_transpose_swapped(kind) -> None:
    reads = reads_in(1, q="k") if kind == "q" else reads_in(1, k="q")
    message = expect_failure(ch03.check_composition_scores, composition(reads), hint_contains="transpose")
    assert f"kind={kind!r}" in message


@pytest.mark.mistake
def test_v_composition_normalised_by_the_qk_norm() -> None:
    # Copied from Q-composition: the product is right, the norm is still the query side's.
    expect_failure(
        ch03.check_composition_scores,
        composition(norm_of_reads=reads_in(1, v="q")),
        hint_contains="norms of the same two matrices",
    )


@pytest.mark.mistake
def test_composition_normalised_by_the_writer_twice() -> None:
    expect_failure(
        ch03.check_composition_scores,
        composition(norm_of_reads=lambda model, kind: model.OV[0]),
        hint_contains="norms of the same two matrices",
    )


@pytest.mark.mistake
def test_composition_with_the_layers_swapped() -> None:
    # Layer 1 writing and layer 0 reading: an earlier head cannot read a later one.
    expect_failure(ch03.check_composition_scores, composition(reads_in(0), write_layer=1), hint_contains="Layer 0 writes")


@pytest.mark.mistake
def test_v_composition_in_the_wrong_order() -> None:
    def values_first(model, kind):
        if kind != "v":
            return composition()(model, kind)
        return composition(reads_in(0), write_layer=1)(model, kind).T  # W_OV^B W_OV^A: layer 1's output read by layer 0

    expect_failure(ch03.check_composition_scores, values_first, hint_contains="Layer 0 writes")


@pytest.mark.mistake
def test_composition_with_nan_for_zero_weight_heads() -> None:
    def unguarded(model, kind):
        writes, reads = model.OV[0], reads_in(1)(model, kind)
        return (writes[:, None] @ reads[None, :]).norm() / (writes.norm()[:, None] * reads.norm()[None, :])

    message = expect_failure(ch03.check_composition_scores, unguarded, hint_contains="not NaN")
    assert "hand-set circuit" in message


@pytest.mark.mistake
def test_ablation_cost_returning_the_ablated_loss() -> None:
    def ablated_loss(model, tokens, mask, heads):
        return next_token_loss(run_with_heads_ablated(model, tokens, heads), tokens, mask[:, 1:]).item()

    expect_failure(ch03.check_ablation_cost, ablated_loss, hint_contains="ablated_loss - clean_loss")


@pytest.mark.mistake
def test_ablation_cost_over_every_token() -> None:
    def every_token(model, tokens, mask, heads):
        clean = next_token_loss(model(tokens), tokens)
        return (next_token_loss(run_with_heads_ablated(model, tokens, heads), tokens) - clean).item()

    expect_failure(ch03.check_ablation_cost, every_token)


@pytest.mark.mistake
def test_ablation_cost_as_a_tensor() -> None:
    def as_tensor(model, tokens, mask, heads):
        return torch.tensor(induction.ablation_cost(model, tokens, mask, heads))

    expect_failure(ch03.check_ablation_cost, as_tensor, hint_contains=".item()")


def cost_from(loss):
    """An ablation cost with the learner's own `loss(logits, tokens, mask)`."""

    @torch.no_grad()
    def ablation_cost(model, tokens, mask, heads):
        return (loss(run_with_heads_ablated(model, tokens, heads), tokens, mask) - loss(model(tokens), tokens, mask)).item()

    return ablation_cost


def per_token_loss(logits, tokens):
    return -logits[:, :-1].log_softmax(dim=-1).gather(-1, tokens[:, 1:, None])[..., 0]


@pytest.mark.mistake
@pytest.mark.parametrize(
    "loss",
    [
        lambda logits, tokens, mask: (
            (per_token_loss(logits, tokens) * mask[:, 1:]).sum(dim=1) / mask[:, 1:].sum(dim=1)
        ).mean(),
        lambda logits, tokens, mask: next_token_loss(logits, tokens, mask[0, 1:]),
    ],
    ids=["mean_of_each_sequences_mean", "first_row_of_the_mask"],
)
def test_ablation_cost_with_the_mask_of_equal_rows_in_mind(loss) -> None:
    expect_failure(ch03.check_ablation_cost, cost_from(loss), hint_contains="each sequence marks a different number")


@pytest.mark.mistake
@pytest.mark.parametrize(
    "cost",
    [
        lambda model, tokens, mask, heads: sum(induction.ablation_cost(model, tokens, mask, [head]) for head in heads),
        lambda model, tokens, mask, heads: induction.ablation_cost(model, tokens, mask, heads[:1]),
    ],
    ids=["sum_of_single_head_costs", "first_head_only"],
)
def test_ablation_cost_of_several_heads(cost) -> None:
    expect_failure(ch03.check_ablation_cost, cost, hint_contains="all in the same run")


@pytest.mark.mistake
def test_ablation_cost_zeroing_w_o_in_place(capsys) -> None:
    @torch.no_grad()
    def ablation_cost(model, tokens, mask, heads):
        clean = next_token_loss(model(tokens), tokens, mask[:, 1:])
        for layer, head in heads:
            model.blocks[layer].attn.W_O[head] = 0.0
        return (next_token_loss(model(tokens), tokens, mask[:, 1:]) - clean).item()

    message = expect_failure(ch03.check_ablation_cost, ablation_cost, hint_contains="copy.deepcopy(model)")
    assert "changed the model's weights in place" in message
    ch03.check_find_induction_heads(induction.find_induction_heads)
    assert "✓ find_induction_heads" in capsys.readouterr().out


# --- other correct answers pass ------------------------------------------------------------------


def induction_scores_by_indexing(patterns, seq_len):
    """Induction scores read at explicit query and key positions."""
    queries = torch.arange(patterns.shape[-1] - seq_len, patterns.shape[-1])
    return patterns[..., queries, queries - seq_len + 1].mean(dim=(1, 3))


def find_with_another_batch_and_order(model, threshold=0.5, seq_len=12, bos=None):
    """A smaller batch, another seed, and the heads listed head by head rather than layer by layer."""
    _, patterns = induction.repeated_tokens_patterns(model, seq_len, batch=8, seed=5, bos=bos)
    scores = induction.induction_scores(patterns, seq_len)
    n_layers, n_heads = scores.shape
    return [(layer, head) for head in range(n_heads) for layer in range(n_layers) if scores[layer, head] >= threshold]


@torch.no_grad()
def cost_on_a_copy_without_w_o(model, tokens, mask, heads):
    ablated = copy.deepcopy(model)
    for layer, head in heads:
        ablated.blocks[layer].attn.W_O[head] = 0.0
    losses = [next_token_loss(m(tokens), tokens, mask[:, 1:]) for m in (ablated, model)]
    return (losses[0] - losses[1]).item()


@pytest.mark.parametrize(
    "check, answer",
    [
        (ch03.check_induction_scores, induction_scores_by_indexing),
        (ch03.check_find_induction_heads, find_with_another_batch_and_order),
        (ch03.check_ablation_cost, cost_on_a_copy_without_w_o),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_check_passes_on_other_correct_answers(check, answer, capsys) -> None:
    check(answer)
    assert "✓" in capsys.readouterr().out


# --- exercise 13: the training run ----------------------------------------------------------------

TASK = zoo.INDUCTION_TASK


def trainer(seq_len=(TASK.n_ctx - 1) // 2, monitored=True, seed=None, eval_every=None, return_fresh=False):
    """A learner's train_induction_model with one choice changed."""

    def train_induction_model(model_config, training):
        config = model_config if seed is None else dataclasses.replace(model_config, seed=seed)
        model = make_model(config)
        run = training if eval_every is None else dataclasses.replace(training, eval_every=eval_every)
        monitor = induction.training_monitor(zoo.held_out_labelled(TASK, 256), seq_len=seq_len, bos=TASK.bos) if monitored else None
        history = train(model, TASK, run, eval_fn=monitor, progress=False)
        return (make_model(model_config) if return_fresh else model), history

    return train_induction_model


def test_train_check_passes_on_the_library(capsys) -> None:
    ch03.check_train_induction_model(
        lambda config, training: induction.train_monitored(TASK, config, training, zoo.held_out_labelled(TASK, 256))
    )
    assert "✓" in capsys.readouterr().out


def test_train_check_passes_on_a_learners_answer(capsys) -> None:
    ch03.check_train_induction_model(trainer())
    assert "✓" in capsys.readouterr().out


@pytest.mark.mistake
@pytest.mark.parametrize(
    "wrong, hint",
    [
        (trainer(monitored=False), "eval_fn=training_monitor"),
        (trainer(seq_len=8), "seq_len=(task.n_ctx - 1) // 2"),
        (trainer(seed=0), "its seed is in the config"),
        (trainer(eval_every=5), "TrainConfig you are given"),
        (trainer(return_fresh=True), "return the model you passed to train"),
    ],
    ids=["no_monitor", "monitor_seq_len", "model_seed_ignored", "eval_every_changed", "untrained_model_returned"],
)
def test_train_check_fails_on_mistakes(wrong, hint) -> None:
    expect_failure(ch03.check_train_induction_model, wrong, hint_contains=hint)


@pytest.mark.mistake
def test_train_check_fails_on_the_stub() -> None:
    def train_induction_model(model_config, training):
        raise NotImplementedError("Exercise: write `train_induction_model`")

    message = expect_failure(ch03.check_train_induction_model, train_induction_model)
    assert "not implemented yet" in message


# --- exercise 14: the phase change ---------------------------------------------------------------


def halfway_with(lowest=min, step_of=lambda i, record: int(record["step"]), key_used=None, min_drop_used=None, none=True):
    """The library's rule with one choice swapped: the low point, how the step is read, the key, min_drop, or no None."""

    def phase_change_step(history, key="loss_repeated", min_drop=1.0):
        values = [record[key_used or key] for record in history]
        start, low = values[0], lowest(values)
        if none and start - low < (min_drop_used or min_drop):
            return None
        return next(step_of(i, r) for i, (r, v) in enumerate(zip(history, values)) if v <= (start + low) / 2)

    return phase_change_step


def lowest_loss_step(history, key="loss_repeated", min_drop=1.0):
    values = [record[key] for record in history]
    return None if values[0] - min(values) < min_drop else int(history[int(np.argmin(values))]["step"])


def steepest_drop_step(history, key="loss_repeated", min_drop=1.0):
    values = [record[key] for record in history]
    if values[0] - min(values) < min_drop:
        return None
    drops = [values[i] - values[i + 1] for i in range(len(values) - 1)]
    return int(history[int(np.argmax(drops)) + 1]["step"])


def below_two_nats(history, key="loss_repeated", min_drop=1.0):
    values = [record[key] for record in history]
    if values[0] - min(values) < min_drop:
        return None
    return next((int(r["step"]) for r, v in zip(history, values) if v < 2.0), None)


@pytest.mark.mistake
@pytest.mark.parametrize(
    "wrong, hint",
    [
        (halfway_with(step_of=lambda i, record: i), "not an index"),
        (lowest_loss_step, ""),
        (steepest_drop_step, "steepest step"),
        (below_two_nats, "steepest step"),
        (halfway_with(lowest=lambda values: values[-1]), "not the last"),
        (halfway_with(none=False), "return None"),
        (halfway_with(key_used="loss_repeated"), "the key you are given"),
        (halfway_with(min_drop_used=1.0), "the min_drop you are given"),
    ],
    ids=["index", "lowest_loss", "steepest_drop", "fixed_threshold", "last_value", "never_none", "key_ignored", "min_drop_ignored"],
)
def test_phase_change_check_fails_on_mistakes(wrong, hint) -> None:
    expect_failure(ch03.check_phase_change_step, wrong, hint_contains=hint)


def phase_change_with_numpy(history, key="loss_repeated", min_drop=1.0):
    values = np.array([record[key] for record in history])
    if values[0] - values.min() < min_drop:
        return None
    return int(history[int(np.flatnonzero(values <= (values[0] + values.min()) / 2)[0])]["step"])


# --- exercises 8-12: weights and decomposed scores -------------------------------------------------


def copying(numerator=lambda ev: ev.real.sum(), denominator=lambda ev: ev.abs().sum(), matrix=None, guard=True, as_float=True):
    def copying_score(model, layer, head):
        circuit = matrix(model, layer, head) if matrix else model.W_E @ model.OV[layer, head] @ model.W_U
        eigenvalues = circuit.eigenvalues
        total = denominator(eigenvalues)
        if guard and total == 0:
            return 0.0
        score = numerator(eigenvalues) / total
        return score.item() if as_float else score

    return copying_score


@pytest.mark.mistake
@pytest.mark.parametrize(
    "wrong, hint",
    [
        (copying(numerator=lambda ev: (ev.real > 0).float().sum(), denominator=lambda ev: torch.tensor(float(len(ev)))), "counting"),
        (copying(matrix=lambda model, layer, head: model.OV[layer, head]), "W_E @ model.OV"),
        (copying(numerator=lambda ev: ev.real.abs().sum()), "suppresses"),
        (copying(guard=False), "0.0 when every eigenvalue is 0"),
        (copying(as_float=False), "a float"),
    ],
    ids=["fraction_positive", "ov_without_embeddings", "absolute_real_parts", "nan_for_zero_heads", "tensor"],
)
def test_copying_check_fails_on_mistakes(wrong, hint) -> None:
    expect_failure(ch03.check_copying_score, wrong, hint_contains=hint)


def copying_with_the_full_matrix(model, layer, head):
    """Every eigenvalue of the d_vocab x d_vocab matrix, tiny ones included."""
    eigenvalues = torch.linalg.eigvals((model.W_E @ model.OV[layer, head] @ model.W_U).AB.double())
    total = eigenvalues.abs().sum()
    return 0.0 if total < 1e-9 else (eigenvalues.real.sum() / total).item()


def positional(mask_diagonal=False, masked=True, transposed=False):
    def positional_qk(model, layer, head):
        qk = model.QK[layer, head].T if transposed else model.QK[layer, head]
        scores = (model.W_pos @ qk @ model.W_pos.T).AB
        if masked:
            scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(0 if mask_diagonal else 1), float("-inf"))
        return scores

    return positional_qk


@pytest.mark.mistake
@pytest.mark.parametrize(
    "wrong", [positional(masked=False), positional(mask_diagonal=True), positional(transposed=True)], ids=["unmasked", "diagonal_masked", "transposed"]
)
def test_positional_qk_check_fails_on_mistakes(wrong) -> None:
    expect_failure(ch03.check_positional_qk, wrong, hint_contains="keeping the diagonal")


def positional_with_a_large_negative_mask(model, layer, head):
    scores = model.W_pos @ model.W_Q[layer, head] @ (model.W_pos @ model.W_K[layer, head]).T
    return torch.where(torch.ones_like(scores, dtype=torch.bool).tril(), scores, -1e9)


def fraction(axis=-1, first_query=None, as_float=True):
    def offset_fraction(scores, offset):
        start = offset if first_query is None else first_query
        queries = torch.arange(start, scores.shape[0])
        best = scores[queries].argmax(dim=-1) if axis == -1 else scores.argmax(dim=0)[queries]
        result = (best == queries - offset).float().mean()
        return result.item() if as_float else result

    return offset_fraction


@pytest.mark.mistake
@pytest.mark.parametrize(
    "wrong", [fraction(axis=0), fraction(first_query=0), fraction(as_float=False)], ids=["argmax_over_queries", "every_query", "tensor"]
)
def test_offset_fraction_check_fails_on_mistakes(wrong) -> None:
    expect_failure(ch03.check_offset_fraction, wrong, hint_contains="earlier queries have no key")


def offset_fraction_by_loop(scores, offset):
    hits = [int(scores[q].argmax()) == q - offset for q in range(offset, scores.shape[0])]
    return sum(hits) / len(hits)


def terms(scale=True, biases=True, swapped=False, bias_everywhere=False):
    @torch.no_grad()
    def attention_score_terms(model, components, layer, head):
        w_q, w_k = model.W_Q[layer, head], model.W_K[layer, head]
        if swapped:
            w_q, w_k = w_k, w_q
        queries = einops.einsum(components, w_q, "p b s m, m h -> p b s h")
        keys = einops.einsum(components, w_k, "p b s m, m h -> p b s h")
        if biases:
            where = slice(None) if bias_everywhere else slice(-1, None)
            queries[where] += model.b_Q[layer, head]
            keys[where] += model.b_K[layer, head]
        result = einops.einsum(queries, keys, "qp b q h, kp b k h -> qp kp b q k")
        return result / math.sqrt(model.cfg.d_head) if scale else result

    return attention_score_terms


@pytest.mark.mistake
@pytest.mark.parametrize(
    "wrong",
    [terms(scale=False), terms(biases=False), terms(swapped=True), terms(bias_everywhere=True)],
    ids=["no_sqrt_d_head", "no_biases", "query_and_key_swapped", "biases_in_every_part"],
)
def test_score_terms_check_fails_on_mistakes(wrong) -> None:
    expect_failure(ch03.check_attention_score_terms, wrong, hint_contains="to the last part only")


@torch.no_grad()
def score_terms_by_loops(model, components, layer, head):
    n = components.shape[0]
    queries = components @ model.W_Q[layer, head]
    keys = components @ model.W_K[layer, head]
    queries[-1] = queries[-1] + model.b_Q[layer, head]
    keys[-1] = keys[-1] + model.b_K[layer, head]
    return torch.stack(
        [torch.stack([queries[i] @ keys[j].transpose(-1, -2) / model.cfg.d_head**0.5 for j in range(n)]) for i in range(n)]
    )


def contrast(key_offset=1, include_induction_key=False, every_key=False, first_query=None):
    def induction_key_contrast(terms, seq_len):
        n_pos = terms.shape[-1]
        queries = torch.arange(n_pos - seq_len if first_query is None else first_query, n_pos)
        rows = terms[..., queries, :]
        target = rows[..., torch.arange(len(queries)), queries - seq_len + key_offset - 1]
        visible = torch.ones(len(queries), n_pos, dtype=torch.bool) if every_key else torch.arange(n_pos)[None, :] <= queries[:, None]
        total = (rows * visible).sum(dim=-1)
        others = total / visible.sum(dim=-1) if include_induction_key else (total - target) / (visible.sum(dim=-1) - 1)
        return (target - others).mean(dim=(-2, -1))

    return induction_key_contrast


@pytest.mark.mistake
@pytest.mark.parametrize(
    "wrong",
    [contrast(key_offset=0), contrast(include_induction_key=True), contrast(every_key=True), contrast(first_query=1)],
    ids=["duplicate_key", "induction_key_in_the_mean", "future_keys", "every_query"],
)
def test_contrast_check_fails_on_mistakes(wrong) -> None:
    expect_failure(ch03.check_induction_key_contrast, wrong, hint_contains="leave out that key and every future key")


def contrast_by_loops(terms, seq_len):
    n_pos = terms.shape[-1]
    values = []
    for q in range(n_pos - seq_len, n_pos):
        key = q - seq_len + 1
        others = [k for k in range(q + 1) if k != key]
        values.append(terms[..., q, key] - terms[..., q, others].mean(dim=-1))
    return torch.stack(values, dim=-1).mean(dim=(-2, -1))


@pytest.mark.parametrize(
    "check, answer",
    [
        (ch03.check_phase_change_step, phase_change_with_numpy),
        (ch03.check_copying_score, copying_with_the_full_matrix),
        (ch03.check_positional_qk, positional_with_a_large_negative_mask),
        (ch03.check_offset_fraction, offset_fraction_by_loop),
        (ch03.check_attention_score_terms, score_terms_by_loops),
        (ch03.check_induction_key_contrast, contrast_by_loops),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_new_checks_pass_on_other_correct_answers(check, answer, capsys) -> None:
    check(answer)
    assert "✓" in capsys.readouterr().out
