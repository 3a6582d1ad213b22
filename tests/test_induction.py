"""mechlearn.induction: scores on hand-built patterns, finders on known and random models, K-composition."""

import copy
import math
import re

import pytest
import torch
from bad_inputs import needs_cuda, raises_one_sentence

from mechlearn import induction, zoo
from mechlearn.handcrafted import induction_circuit_model
from mechlearn.models import ModelConfig, make_model
from mechlearn.tasks import InductionTask
from mechlearn.train import TrainConfig, next_token_loss

N_POS, SEQ_LEN = 9, 4  # [BOS, x1..x4, x1..x4]


def stripe_pattern(offset: int, first_query: int, n_pos: int = N_POS) -> torch.Tensor:
    """One head's pattern [q k]: queries >= first_query attend `offset` back, the rest to themselves."""
    pattern = torch.zeros(n_pos, n_pos)
    for query in range(n_pos):
        pattern[query, query - offset if query >= first_query else query] = 1.0
    return pattern


def uniform_pattern(n_pos: int = N_POS) -> torch.Tensor:
    causal = torch.ones(n_pos, n_pos).tril()
    return causal / causal.sum(dim=-1, keepdim=True)


def stack(*heads: torch.Tensor, batch: int = 3) -> torch.Tensor:
    """[layer=1 batch head q k] from per-head [q k] patterns."""
    return torch.stack(heads)[None, None].expand(1, batch, -1, -1, -1).clone()


@pytest.fixture(scope="module")
def circuit():
    return induction_circuit_model(d_vocab=64, n_ctx=24, n_heads=3, previous_token_head=2, induction_head=1)


@pytest.fixture(scope="module")
def random_model():
    return make_model(ModelConfig(d_vocab=16, n_ctx=24, d_model=24, n_layers=2, n_heads=3, d_head=8, d_mlp=None, seed=1))


# --- repeated random tokens ----------------------------------------------------------------


def test_repeated_random_tokens_with_bos() -> None:
    tokens = induction.repeated_random_tokens(10, 6, 50, torch.Generator().manual_seed(0), bos=3)
    assert tokens.shape == (50, 13) and tokens.dtype == torch.long
    assert (tokens[:, 0] == 3).all()
    assert torch.equal(tokens[:, 1:7], tokens[:, 7:])
    body = tokens[:, 1:]
    assert not (body == 3).any() and body.min() >= 0 and body.max() == 9  # BOS is skipped, 9 still drawn
    # Distinct tokens in each half, so each token has exactly one earlier occurrence.
    assert all(len(set(row)) == 6 for row in tokens[:, 1:7].tolist())
    assert len({tuple(row) for row in tokens[:, 1:7].tolist()}) == 50
    assert torch.equal(tokens, induction.repeated_random_tokens(10, 6, 50, torch.Generator().manual_seed(0), bos=3))


def test_repeated_random_tokens_without_bos() -> None:
    tokens = induction.repeated_random_tokens(10, 6, 4, torch.Generator().manual_seed(0))
    assert tokens.shape == (4, 12)
    assert torch.equal(tokens[:, :6], tokens[:, 6:])


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "args, message",
    [((0, 4, 2), "d_vocab must be a positive int"), ((10, 0, 2), "seq_len must be"), ((10, 4, 0), "batch must be")],
)
def test_repeated_random_tokens_validation(args, message) -> None:
    with pytest.raises(ValueError, match=message):
        induction.repeated_random_tokens(*args)
    with pytest.raises(ValueError, match=r"bos must be a token id in \[0, 10\)"):
        induction.repeated_random_tokens(10, 4, 2, bos=10)


@pytest.mark.bad_input
def test_repeated_random_tokens_needs_enough_distinct_tokens() -> None:
    assert induction.repeated_random_tokens(10, 9, 2, bos=0).shape == (2, 19)
    with pytest.raises(ValueError, match="seq_len=10 is more than the 9 distinct tokens"):
        induction.repeated_random_tokens(10, 10, 2, bos=0)


# --- scores on patterns whose answer is known ----------------------------------------------


def test_scores_of_exact_patterns() -> None:
    first_copy = N_POS - SEQ_LEN
    patterns = stack(
        stripe_pattern(1, 1),  # previous token everywhere
        stripe_pattern(SEQ_LEN - 1, first_copy),  # induction: to the token after the first occurrence
        stripe_pattern(SEQ_LEN, first_copy),  # duplicate: to the first occurrence itself
        stripe_pattern(0, 0),  # attends to itself
    )
    torch.testing.assert_close(induction.previous_token_scores(patterns), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(induction.induction_scores(patterns, SEQ_LEN), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(induction.duplicate_token_scores(patterns, SEQ_LEN), torch.tensor([[0.0, 0.0, 1.0, 0.0]]))


def test_scores_of_a_uniform_pattern() -> None:
    patterns = stack(uniform_pattern())
    # Query q spreads 1 / (q + 1) over keys 0..q.
    previous = sum(1 / (q + 1) for q in range(1, N_POS)) / (N_POS - 1)
    second_half = sum(1 / (q + 1) for q in range(N_POS - SEQ_LEN, N_POS)) / SEQ_LEN
    assert induction.previous_token_scores(patterns).item() == pytest.approx(previous)
    assert induction.induction_scores(patterns, SEQ_LEN).item() == pytest.approx(second_half)
    assert induction.duplicate_token_scores(patterns, SEQ_LEN).item() == pytest.approx(second_half)


def test_scores_average_over_the_batch_and_keep_layers_apart() -> None:
    half = torch.stack([stripe_pattern(1, 1), stripe_pattern(0, 0)])  # sequence 0 previous-token, sequence 1 self
    patterns = torch.stack([half[:, None], half.flip(0)[:, None]])  # [layer=2 batch=2 head=1 q k]
    torch.testing.assert_close(induction.previous_token_scores(patterns), torch.tensor([[0.5], [0.5]]))
    layered = torch.stack([stack(stripe_pattern(1, 1))[0], stack(stripe_pattern(0, 0))[0]])
    torch.testing.assert_close(induction.previous_token_scores(layered), torch.tensor([[1.0], [0.0]]))


def test_a_cache_gives_the_same_scores_as_stacked_patterns(circuit) -> None:
    tokens = induction.repeated_random_tokens(64, 8, 4, torch.Generator().manual_seed(0), bos=0)
    _, cache = circuit.model.run_with_cache(tokens)
    patterns = induction.stack_patterns(cache)
    assert patterns.shape == (2, 4, 3, 17, 17)
    torch.testing.assert_close(induction.induction_scores(cache, 8), induction.induction_scores(patterns, 8))
    torch.testing.assert_close(induction.previous_token_scores(cache), induction.previous_token_scores(patterns))


@pytest.mark.bad_input
def test_pattern_validation() -> None:
    with pytest.raises(ValueError, match=r"patterns must be an ActivationCache or a non-empty float tensor \[layer batch head query_pos key_pos\], got torch.float32 tensor of shape \(3, 1, 9, 9\)"):
        induction.previous_token_scores(torch.zeros(3, 1, 9, 9))
    with pytest.raises(ValueError, match="square"):
        induction.previous_token_scores(torch.zeros(1, 3, 1, 9, 8))
    with pytest.raises(ValueError, match="seq_len=5 needs at least 10 positions, but the patterns cover 9"):
        induction.induction_scores(stack(uniform_pattern()), 5)
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        induction.duplicate_token_scores(stack(uniform_pattern()), 0)


# --- finders on models whose answer is known ------------------------------------------------


def test_the_hand_set_circuit_scores_as_planted(circuit) -> None:
    _, patterns = induction.repeated_tokens_patterns(circuit.model, 10, batch=16, bos=0)
    assert patterns.shape == (2, 16, 3, 21, 21)
    previous, scores = induction.previous_token_scores(patterns), induction.induction_scores(patterns, 10)
    assert previous[0, 2] > 0.99 and scores[1, 1] > 0.99
    not_previous, not_induction = torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)
    not_previous[0, 2] = not_induction[1, 1] = False
    assert previous[not_previous].max() < 0.3 and scores[not_induction].max() < 0.3


def test_finders_name_exactly_the_planted_heads(circuit) -> None:
    assert induction.find_induction_heads(circuit.model, bos=0) == [circuit.induction_head] == [(1, 1)]
    assert induction.find_previous_token_heads(circuit.model, bos=0) == [circuit.previous_token_head] == [(0, 2)]
    assert induction.find_induction_heads(circuit.model, seq_len=5, batch=8, seed=3) == [(1, 1)]


def test_finders_find_nothing_in_a_random_model(random_model) -> None:
    assert induction.find_induction_heads(random_model) == []
    assert induction.find_previous_token_heads(random_model) == []
    # ...even with a threshold a tenth of the default.
    assert induction.find_induction_heads(random_model, threshold=0.2) == []


@pytest.mark.bad_input
def test_seq_len_must_fit_the_context(random_model) -> None:
    with pytest.raises(ValueError, match="seq_len=12 makes sequences of 25 tokens, longer than the model's n_ctx=24"):
        induction.find_induction_heads(random_model, seq_len=12, bos=0)
    assert induction.find_induction_heads(random_model, seq_len=12) == []  # 24 tokens fit without BOS


def test_heads_above() -> None:
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.49]])
    assert induction.heads_above(scores) == [(0, 1), (1, 0)]
    assert induction.heads_above(scores, threshold=0.95) == []
    with pytest.raises(ValueError, match=r"scores must be a \[layer head\] tensor"):
        induction.heads_above(torch.zeros(3))


# --- K-composition ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_composition_matches_transformer_lens(kind) -> None:
    model = make_model(ModelConfig(d_vocab=12, n_ctx=10, d_model=20, n_layers=3, n_heads=3, d_head=6, d_mlp=None, seed=2))
    reference = model.all_composition_scores(kind.upper()).scores  # [layer head layer head]
    for earlier, later in [(0, 1), (0, 2), (1, 2)]:
        scores = induction.composition_scores(model, kind, earlier, later)
        assert scores.shape == (3, 3)
        torch.testing.assert_close(scores, reference[earlier, :, later, :])


def test_composition_by_hand() -> None:
    # ||W_OV^A R^B||_F / (||W_OV^A||_F ||R^B||_F) with the full matrices written out.
    model = make_model(ModelConfig(d_vocab=12, n_ctx=10, d_model=16, n_layers=2, n_heads=2, d_head=4, d_mlp=None, seed=5))
    with torch.no_grad():
        for a in range(2):
            for b in range(2):
                ov = model.W_V[0, a] @ model.W_O[0, a]
                qk = model.W_Q[1, b] @ model.W_K[1, b].T
                reads = {"q": qk, "k": qk.T, "v": model.W_V[1, b] @ model.W_O[1, b]}
                for kind, read in reads.items():
                    expected = torch.linalg.norm(ov @ read) / (torch.linalg.norm(ov) * torch.linalg.norm(read))
                    actual = induction.composition_scores(model, kind)[a, b].item()
                    assert actual == pytest.approx(expected.item(), rel=1e-4), kind
    assert torch.equal(induction.k_composition_scores(model), induction.composition_scores(model, "k"))


def test_composition_kinds_differ(random_model) -> None:
    q, k, v = (induction.composition_scores(random_model, kind) for kind in "qkv")
    assert not torch.allclose(q, k) and not torch.allclose(k, v) and not torch.allclose(q, v)


def test_k_composition_is_largest_for_the_planted_pair(circuit) -> None:
    scores = induction.k_composition_scores(circuit.model)
    assert scores.argmax().item() == 2 * 3 + 1  # (previous-token head 2, induction head 1)


def test_the_planted_circuit_composes_through_keys_only(circuit) -> None:
    # Only the induction head's W_K reads the previous-token head's subspace; its W_Q and W_OV do not.
    assert induction.composition_scores(circuit.model, "k")[2, 1] > 0.1
    assert induction.composition_scores(circuit.model, "q").max() == 0
    assert induction.composition_scores(circuit.model, "v").max() == 0


@pytest.mark.bad_input
def test_k_composition_validation(random_model) -> None:
    one_layer = make_model(ModelConfig(d_vocab=8, n_ctx=8, d_model=8, n_layers=1, n_heads=2, d_head=4, d_mlp=None))
    with pytest.raises(ValueError, match="needs a model with at least 2 layers; this one has 1"):
        induction.k_composition_scores(one_layer)
    with pytest.raises(ValueError, match="0 <= earlier_layer < later_layer < 2"):
        induction.k_composition_scores(random_model, 1, 1)
    with pytest.raises(ValueError, match="0 <= earlier_layer < later_layer < 2"):
        induction.composition_scores(random_model, "v", 1, 0)


# --- losses and ablations ----------------------------------------------------------------


def test_loss_on_tokens_reads_each_token_from_the_position_before() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=generator)
    tokens = torch.randint(0, 7, (2, 5), generator=generator)
    mask = torch.tensor([[False, False, True, False, True], [False, True, False, False, False]])
    log_probs = logits.log_softmax(dim=-1)
    by_hand = -(log_probs[0, 1, tokens[0, 2]] + log_probs[0, 3, tokens[0, 4]] + log_probs[1, 0, tokens[1, 1]]) / 3
    torch.testing.assert_close(induction.loss_on_tokens(logits, tokens, mask), by_hand)
    torch.testing.assert_close(induction.loss_on_tokens(logits, tokens, mask), next_token_loss(logits, tokens, mask[:, 1:]))
    with pytest.raises(ValueError, match="position 0"):
        induction.loss_on_tokens(logits, tokens, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="marks no tokens"):
        induction.loss_on_tokens(logits, tokens, torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask must have the shape of tokens \(2, 5\)"):
        induction.loss_on_tokens(logits, tokens, mask[:, 1:])


def test_ablation_cost_on_the_hand_set_circuit(circuit) -> None:
    tokens = induction.repeated_random_tokens(64, 10, 32, torch.Generator().manual_seed(0), bos=0)
    repeated = torch.zeros_like(tokens, dtype=torch.bool)
    repeated[:, 12:] = True  # the copy after its first token
    assert induction.ablation_cost(circuit.model, tokens, repeated, []) == 0.0
    assert induction.ablation_cost(circuit.model, tokens, repeated, [circuit.induction_head]) > 2.0
    assert induction.ablation_cost(circuit.model, tokens, repeated, [circuit.previous_token_head]) > 2.0
    assert induction.ablation_cost(circuit.model, tokens, repeated, [(0, 0), (1, 2)]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="heads must be"):
        induction.ablation_cost(circuit.model, tokens, repeated, [(2, 0)])


# --- watching training, and the summary of a circuit --------------------------------------------


def test_training_monitor_logs_losses_scores_and_time(circuit) -> None:
    task = InductionTask(n_tokens=63, n_ctx=24, min_repeat_len=3, max_repeat_len=6, bigram_fraction=0.0)
    labelled = task.sample_labelled(16, torch.Generator().manual_seed(0))
    record = induction.training_monitor(labelled, seq_len=8, bos=0)(circuit.model, labelled.tokens)
    assert set(record) == {"seconds", "loss_first", "loss_repeated"} | {
        f"{name}_L{layer}H{head}" for name in ("induction_score", "previous_token_score") for layer in (0, 1) for head in range(3)
    }
    assert record["seconds"] >= 0
    assert record["induction_score_L1H1"] > 0.9 and record["previous_token_score_L0H2"] > 0.9
    assert record["loss_repeated"] < 0.5 < record["loss_first"]


def test_first_record_where() -> None:
    history = [{"step": 1, "score_L1H0": 0.1, "score_L1H1": 0.5}, {"step": 2, "score_L1H0": 0.9}, {"step": 3, "score_L1H1": 0.95}]
    assert induction.first_record_where(history, "score_L1", 0.8)["step"] == 2
    assert induction.first_record_where(history, "score_L1H1", 0.8)["step"] == 3
    assert induction.first_record_where(history, "score_L1", 0.99) is None


def test_circuit_summary_of_the_hand_set_circuit(circuit) -> None:
    task = InductionTask(n_tokens=63, n_ctx=24, min_repeat_len=3, max_repeat_len=6, bigram_fraction=0.0)
    summary = induction.induction_circuit_summary(circuit.model, task.sample_labelled(64, torch.Generator().manual_seed(0)), bos=0)
    assert summary["previous_token_heads"] == [[0, 2]] and summary["induction_heads"] == [[1, 1]]
    assert summary["strongest_k_composition"] == [[0, 2], [1, 1]]
    assert summary["ablate_induction_heads"] > 1 and summary["ablate_previous_token_heads"] > 1
    assert summary["ablate_worst_head_outside_circuit"] == pytest.approx(0.0, abs=1e-6)
    assert set(summary["ablate_single_head"]) == {f"L{layer}H{head}" for layer in (0, 1) for head in range(3)}
    assert summary["loss_first"] - summary["loss_repeated"] > 1
    assert not math.isnan(summary["loss_repeated"])


# --- bad input -------------------------------------------------------------------------------

LOGITS, TOKENS = torch.zeros(2, 5, 7), torch.zeros(2, 5, dtype=torch.long)
MASK = torch.tensor([[False, True, True, True, True]] * 2)
GOOD_PATTERNS = stack(uniform_pattern())


def with_nan(weights: torch.Tensor) -> torch.Tensor:
    broken = weights.clone()
    broken.view(-1)[0] = float("nan")
    return broken


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: induction.repeated_random_tokens(10, 4, True), ValueError, "batch"),
        (lambda: induction.repeated_random_tokens(10, 4, 2, bos=0.5), ValueError, "bos"),
        (lambda: induction.induction_scores(GOOD_PATTERNS.long(), 4), ValueError, "patterns"),
        (lambda: induction.induction_scores(GOOD_PATTERNS[:, :0], 4), ValueError, "patterns"),
        (lambda: induction.induction_scores(with_nan(GOOD_PATTERNS), 4), ValueError, "patterns"),
        (lambda: induction.previous_token_scores(GOOD_PATTERNS * 3 - 1), ValueError, "patterns"),
        (lambda: induction.previous_token_scores(GOOD_PATTERNS.to("meta")), ValueError, "patterns"),
        (lambda: induction.duplicate_token_scores(GOOD_PATTERNS, 4.0), ValueError, "seq_len"),
        (lambda: induction.heads_above(torch.zeros(2, 3), threshold=float("nan")), ValueError, "threshold"),
        (lambda: induction.heads_above(torch.zeros(2, 3), threshold="0.5"), ValueError, "threshold"),
        (lambda: induction.loss_on_tokens(LOGITS, TOKENS, MASK.long()), TypeError, "mask"),
        (lambda: induction.loss_on_tokens(LOGITS, TOKENS.float(), MASK), TypeError, "tokens"),
        (lambda: induction.loss_on_tokens(LOGITS, TOKENS + 7, MASK), ValueError, "tokens"),
        (lambda: induction.loss_on_tokens(LOGITS[:, :4], TOKENS, MASK), ValueError, "logits"),
        (lambda: induction.loss_on_tokens(LOGITS[0], TOKENS, MASK), ValueError, "logits"),
        (lambda: induction.loss_on_tokens(with_nan(LOGITS), TOKENS, MASK), ValueError, "logits"),
        (lambda: induction.loss_on_tokens(LOGITS.to("meta"), TOKENS, MASK), ValueError, "logits"),
        (lambda: induction.training_monitor(TOKENS, 4, 0), TypeError, "labelled"),
        (lambda: induction.stack_patterns({"blocks.0.attn.hook_pattern": GOOD_PATTERNS[0]}), TypeError, "cache"),
        (lambda: induction.heads_above(torch.tensor([[math.nan, 0.9]])), ValueError, "scores"),
        (lambda: induction.first_record_where([{"induction_score_L1H0": 0.9}], "induction_score", "0.8"), ValueError, "threshold"),
        pytest.param(lambda: induction.loss_on_tokens(LOGITS.cuda(), TOKENS, MASK), ValueError, "tokens", marks=needs_cuda),
    ],
    ids=[
        "bool batch", "float bos", "int patterns", "empty patterns", "NaN patterns", "patterns outside [0, 1]",
        "meta patterns", "float seq_len", "NaN threshold", "string threshold", "int mask", "float tokens",
        "tokens beyond d_vocab", "logits shorter than tokens", "logits without batch", "NaN logits",
        "meta logits", "tokens for labelled", "a dict for cache", "NaN scores", "a string threshold",
        "tokens and logits on two devices",
    ],
)
def test_bad_argument_is_named(call, error, name) -> None:
    with raises_one_sentence(error, re.escape(name)):
        call()


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda model: induction.find_induction_heads(model, seq_len=0), ValueError, "seq_len"),
        (lambda model: induction.find_previous_token_heads(model, threshold=None), ValueError, "threshold"),
        (lambda model: induction.k_composition_scores(model, 0.0, 1), ValueError, "earlier_layer"),
        (lambda model: induction.composition_scores(model, "K"), ValueError, "kind"),
        (lambda model: induction.composition_scores(model, None), ValueError, "kind"),
        (lambda model: induction.ablation_cost(model, TOKENS + 16, MASK, []), ValueError, "tokens"),
        (lambda model: induction.ablation_cost(model, torch.zeros(2, 25, dtype=torch.long), MASK, []), ValueError, "n_ctx"),
        (lambda model: induction.induction_circuit_summary(model, TOKENS, bos=0), TypeError, "labelled"),
    ],
    ids=[
        "zero seq_len",
        "no threshold",
        "float layer",
        "upper-case kind",
        "no kind",
        "tokens beyond d_vocab",
        "tokens beyond n_ctx",
        "tokens for labelled",
    ],
)
def test_bad_argument_to_a_model_function_is_named(random_model, call, error, name) -> None:
    with raises_one_sentence(error, re.escape(name)):
        call(random_model)


@pytest.mark.bad_input
def test_nan_weights_are_named_not_scored(random_model) -> None:
    broken = copy.deepcopy(random_model)
    with torch.no_grad():
        broken.blocks[0].attn.W_V[0, 0, 0] = float("nan")
    with raises_one_sentence(ValueError, "model"):
        induction.k_composition_scores(broken)
    broken_values = copy.deepcopy(random_model)
    with torch.no_grad():
        broken_values.blocks[1].attn.W_V[0, 0, 0] = float("inf")
    with raises_one_sentence(ValueError, "model"):
        induction.composition_scores(broken_values, "v")


# --- the phase change ----------------------------------------------------------------------------


def record_history(values: list[float], every: int = 50, key: str = "loss_repeated") -> list[dict[str, float]]:
    return [{"step": every * (i + 1), key: value} for i, value in enumerate(values)]


def test_phase_change_step_is_halfway_to_the_lowest_value() -> None:
    # start 4.0, lowest 1.0: halfway is 2.5, first reached at the fourth record (step 200).
    history = record_history([4.0, 3.9, 3.0, 2.5, 1.0, 1.6])
    assert induction.phase_change_step(history) == 200
    assert induction.phase_change_step(history, min_drop=3.5) is None  # it fell by 3.0 only
    assert induction.phase_change_step(record_history([3.9, 3.8, 3.5, 3.4])) is None


def test_phase_change_step_on_the_zoo_run_is_where_the_induction_score_arrives() -> None:
    card = zoo.card("induction-2l")
    found = induction.phase_change_step(card["history"])
    assert abs(found - card["metrics"]["step_to_induction"]) <= card["recipe"]["training"]["eval_every"]
    # The score rises rather than falls: its phase change is where its negative is halfway down.
    scores = [{"step": r["step"], "minus_score": -max(v for k, v in r.items() if k.startswith("induction_score_L1"))} for r in card["history"]]
    assert abs(induction.phase_change_step(scores, "minus_score", min_drop=0.5) - found) <= 50


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "history, error, match",
    [
        ([], ValueError, "history"),
        ([{"step": 50}], KeyError, "loss_repeated"),
        (record_history([3.0, float("nan")]), ValueError, "NaN"),
    ],
    ids=["empty", "no_key", "nan"],
)
def test_phase_change_step_validation(history, error, match) -> None:
    with pytest.raises(error, match=match):
        induction.phase_change_step(history)


def test_train_monitored_records_the_monitor_and_is_deterministic() -> None:
    task = zoo.INDUCTION_TASK
    config = ModelConfig(d_vocab=task.d_vocab, n_ctx=task.n_ctx, d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=None, seed=3)
    training = TrainConfig(steps=6, batch_size=8, warmup_steps=1, eval_every=3, eval_batch_size=16, seed=3)
    labelled = task.sample_labelled(32, torch.Generator().manual_seed(0))
    (model, history), (_, again) = (induction.train_monitored(task, config, training, labelled) for _ in range(2))
    assert [record["step"] for record in history] == [3, 6]
    assert {"loss_first", "loss_repeated", "induction_score_L1H1", "previous_token_score_L0H0"} <= set(history[-1])
    assert history[-1]["loss_repeated"] == again[-1]["loss_repeated"]
    with raises_one_sentence(TypeError, "model_config"):
        induction.train_monitored(task, "2 layers", training, labelled)


# --- OV copying and positional QK ----------------------------------------------------------------


def test_copying_score_of_the_planted_heads(circuit) -> None:
    assert induction.copying_score(circuit.model, *circuit.induction_head) == pytest.approx(1.0)
    assert induction.copying_score(circuit.model, *circuit.previous_token_head) == 0.0  # it writes where W_U never reads
    negated = copy.deepcopy(circuit.model)
    with torch.no_grad():
        negated.blocks[1].attn.o.weight.neg_()
    assert induction.copying_score(negated, *circuit.induction_head) == pytest.approx(-1.0)


def test_copying_score_of_random_heads_is_near_zero(random_model) -> None:
    scores = [induction.copying_score(random_model, layer, head) for layer in range(2) for head in range(3)]
    assert max(abs(score) for score in scores) < 0.5


def test_positional_qk_of_the_planted_previous_token_head(circuit) -> None:
    scores = induction.positional_qk(circuit.model, *circuit.previous_token_head)
    assert scores.shape == (24, 24)
    assert torch.isneginf(scores[torch.ones(24, 24, dtype=torch.bool).triu(diagonal=1)]).all()
    assert induction.offset_fraction(scores, 1) == 1.0
    assert induction.offset_fraction(scores, 2) == 0.0


def test_offset_fraction_counts_only_queries_that_have_the_key() -> None:
    scores = torch.tensor([[0.0, -1, -1], [1.0, 0.0, -1], [0.0, 1.0, 0.5]]).masked_fill(torch.ones(3, 3, dtype=torch.bool).triu(1), -math.inf)
    assert induction.offset_fraction(scores, 1) == 1.0  # queries 1 and 2 score the key before them highest
    assert induction.offset_fraction(scores, 2) == 0.0
    assert induction.offset_fraction(scores, 0) == pytest.approx(1 / 3)


@pytest.mark.bad_input
def test_weight_readers_name_bad_arguments(random_model) -> None:
    with raises_one_sentence(ValueError, r"\(layer, head\)"):
        induction.copying_score(random_model, 2, 0)
    with raises_one_sentence(ValueError, "offset"):
        induction.offset_fraction(torch.zeros(4, 4), 4)
    with raises_one_sentence(ValueError, "square"):
        induction.offset_fraction(torch.zeros(4, 5), 1)


# --- decomposed attention scores -------------------------------------------------------------------


@pytest.mark.parametrize("which", ["circuit", "zoo"])
def test_score_terms_add_up_to_the_attention_scores(which, circuit) -> None:
    model, bos = (circuit.model, 0) if which == "circuit" else (zoo.load("induction-2l"), zoo.INDUCTION_TASK.bos)
    seq_len = (model.cfg.n_ctx - 1) // 2
    tokens = induction.repeated_random_tokens(model.cfg.d_vocab, seq_len, 4, torch.Generator().manual_seed(0), bos=bos)
    _, cache = model.run_with_cache(tokens)
    labels, components = induction.attention_input_components(model, cache, 1)
    assert labels == ["embed", "pos", *(f"L0H{h}" for h in range(model.cfg.n_heads)), "bias"]
    torch.testing.assert_close(components.sum(dim=0), cache["blocks.1.attn.q.hook_in"], atol=1e-5, rtol=0)
    for head in range(model.cfg.n_heads):
        terms = induction.attention_score_terms(model, components, 1, head)
        q, k = cache["blocks.1.attn.hook_q"][:, :, head], cache["blocks.1.attn.hook_k"][:, :, head]
        torch.testing.assert_close(terms.sum(dim=(0, 1)), q @ k.transpose(-1, -2) / math.sqrt(model.cfg.d_head), atol=1e-4, rtol=0)


def test_only_the_k_composition_term_lifts_the_planted_induction_key(circuit) -> None:
    tokens = induction.repeated_random_tokens(64, 11, 4, torch.Generator().manual_seed(0), bos=0)
    _, cache = circuit.model.run_with_cache(tokens)
    labels, components = induction.attention_input_components(circuit.model, cache, 1)
    contrast = induction.induction_key_contrast(induction.attention_score_terms(circuit.model, components, *circuit.induction_head), 11)
    k_term = (labels.index("embed"), labels.index("L0H2"))
    assert contrast[k_term] == pytest.approx(20.0, abs=1e-3)  # the sharpness
    contrast[k_term] = 0.0
    assert contrast.abs().max() < 1e-4


@pytest.mark.bad_input
def test_decomposition_names_bad_arguments(circuit) -> None:
    with raises_one_sentence(TypeError, "cache"):
        induction.attention_input_components(circuit.model, {}, 1)
    with raises_one_sentence(ValueError, "d_model"):
        induction.attention_score_terms(circuit.model, torch.zeros(3, 1, 4, 5), 1, 0)
    with raises_one_sentence(ValueError, "seq_len"):
        induction.induction_key_contrast(torch.zeros(2, 2, 1, 6, 6), 4)


# --- a pretrained model (offline: a tiny random GPT-2 saved to a folder) ----------------------------


def test_find_pretrained_induction_heads_on_a_local_gpt2(tmp_path) -> None:
    from test_pretrained import save_tiny_gpt2

    save_tiny_gpt2(tmp_path)
    heads = induction.find_pretrained_induction_heads(str(tmp_path), seq_len=8, batch=4, device="cpu")
    assert heads == []  # random weights: no induction head
    planted_low = induction.find_pretrained_induction_heads(str(tmp_path), seq_len=8, batch=4, threshold=0.0, device="cpu")
    assert planted_low == [(layer, head) for layer in range(2) for head in range(4)]  # the scores were computed for every head


def test_find_pretrained_induction_heads_offline_raises_pretrained_unavailable(tmp_path, monkeypatch) -> None:
    """Not in the cache and no opt-in to downloads: refused before anything touches the network."""
    import huggingface_hub.constants

    from mechlearn.models import ONLINE_FLAG, PretrainedUnavailable

    monkeypatch.delenv(ONLINE_FLAG, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(PretrainedUnavailable, match=ONLINE_FLAG):
        induction.find_pretrained_induction_heads("gpt2", device="cpu")
