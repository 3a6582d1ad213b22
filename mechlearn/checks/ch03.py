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

import copy
import functools
import math

import torch
from transformer_lens.model_bridge import TransformerBridge

from mechlearn import induction, zoo
from mechlearn.checks.core import call_learner, call_learner_read_only, check, expect, expect_tensor
from mechlearn.handcrafted import InductionCircuit, induction_circuit_model
from mechlearn.models import ModelConfig, make_model, model_device
from mechlearn.train import TrainConfig
from mechlearn.validation import is_int

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


# --- the phase change ------------------------------------------------------------------------------


def _tiny_run(seed: int) -> tuple[ModelConfig, TrainConfig]:
    """A model and a run small enough to train twice in a second; the seed changes both."""
    task = zoo.INDUCTION_TASK
    model_config = ModelConfig(
        d_vocab=task.d_vocab, n_ctx=task.n_ctx, d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=None, seed=seed
    )
    training = TrainConfig(steps=12, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=4 + seed, eval_batch_size=16, seed=seed)
    return model_config, training


@check
def check_train_induction_model(train_induction_model) -> None:
    """Two tiny runs (two seeds, two evaluation intervals) give the library's model and history."""
    for seed in (1, 2):
        model_config, training = _tiny_run(seed)
        result = call_learner(train_induction_model, model_config, training)
        expect(
            isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], TransformerBridge) and isinstance(result[1], list),
            f"train_induction_model should return (model, history), a TransformerBridge and a list; you returned {type(result).__name__}.",
            "return model, train(model, task, training, eval_fn=monitor, progress=False).",
        )
        model, history = result
        reference_model, reference = induction.train_monitored(
            zoo.INDUCTION_TASK, model_config, training, zoo.held_out_labelled(zoo.INDUCTION_TASK, 256), device=model_device(model)
        )
        steps = [record.get("step") if isinstance(record, dict) else record for record in history]
        expected_steps = [record["step"] for record in reference]
        expect(
            steps == expected_steps,
            f"with steps={training.steps} and eval_every={training.eval_every} the history should have records at steps "
            f"{expected_steps}; yours has {steps}.",
            "pass the TrainConfig you are given to train, unchanged.",
        )
        missing = [key for key in reference[0] if key != "seconds" and key not in history[0]]
        expect(
            not missing,
            f"your history's records have no {missing[0]!r}." if missing else "",
            "pass eval_fn=training_monitor(zoo.held_out_labelled(task, 256), seq_len=(task.n_ctx - 1) // 2, bos=task.bos) to train.",
        )
        for key in ("train_loss", "loss_repeated", "induction_score_L1H0", "previous_token_score_L0H1"):
            mine, theirs = history[-1][key], reference[-1][key]
            expect(
                abs(mine - theirs) < 1e-4,
                f"after {training.steps} steps (seed {seed}) your history has {key}={mine:.5f}, the library's {theirs:.5f}.",
                "make the model with make_model(model_config, device=device) (its seed is in the config), and monitor with "
                "zoo.held_out_labelled(task, 256) and seq_len=(task.n_ctx - 1) // 2 after task.bos.",
            )
        trained = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference_model.state_dict().values()))
        expect(trained, "the model you returned is not the one the run trained.", "return the model you passed to train.")


def _sigmoid_history(
    every: int, n_records: int, start: float, end: float, at: float, width: float, noise: float, seed: int, key: str = "loss_repeated"
) -> list[dict[str, float]]:
    """A training history whose `key` falls from `start` to `end` around step `at`, with noise."""
    generator = torch.Generator().manual_seed(seed)
    history = []
    for step in range(every, every * (n_records + 1), every):
        value = end + (start - end) / (1 + math.exp((step - at) / width))
        value += noise * torch.randn(1, generator=generator).item()
        history.append({"step": step, "loss_first": start, key: value, "induction_score_L1H0": 0.0})
    return history


_PHASE_CHANGE_RULE = (
    "the answer is record['step'] (not an index) of the first record at or below halfway between the first value and "
    "the lowest (not the last); the steepest step between two records moves with the noise."
)


def _phase_change_cases() -> list[tuple[str, list[dict[str, float]], dict, str]]:
    """(what, history, keyword arguments, hint) for histories whose answers differ."""
    gradual = _sigmoid_history(every=20, n_records=40, start=3.5, end=1.0, at=400, width=120, noise=0.08, seed=3)
    rebound = _sigmoid_history(every=50, n_records=30, start=3.9, end=0.8, at=600, width=15, noise=0.0, seed=0)
    for i, record in enumerate(rebound[14:]):  # the loss creeps back up after its lowest point
        record["loss_repeated"] += 0.05 * i
    other_key = _sigmoid_history(every=25, n_records=40, start=3.8, end=1.1, at=700, width=25, noise=0.02, seed=4, key="eval_loss")
    for record in other_key:
        record["loss_repeated"] = 3.8
    flat = _sigmoid_history(every=50, n_records=30, start=3.9, end=3.4, at=500, width=30, noise=0.03, seed=5)
    drop_of_1_4 = _sigmoid_history(25, 80, 3.0, 1.6, 1210, 40, 0.02, seed=2)
    return [
        ("a sharp drop near step 420", _sigmoid_history(50, 40, 3.87, 0.9, 420, 20, 0.03, seed=1), {}, ""),
        ("a drop from 3.0 to 1.6 nats near step 1210", drop_of_1_4, {}, "halfway depends on this run's start and lowest, not on a fixed number of nats;"),
        ("a gradual, noisy decline", gradual, {}, ""),
        ("a loss that creeps back up after its lowest point", rebound, {}, "halfway is to the lowest value, not the last;"),
        ("a history where eval_loss drops", other_key, {"key": "eval_loss"}, "read the key you are given;"),
        ("a loss that falls by only 0.5 nats", flat, {}, "return None when the value never falls by min_drop below its start;"),
        ("a drop of 1.4 nats with min_drop=2.0", drop_of_1_4, {"min_drop": 2.0}, "use the min_drop you are given;"),
    ]


@check
def check_phase_change_step(phase_change_step) -> None:
    """The halfway step on histories with different drops, intervals and noise; None without a drop; the zoo's own run."""
    cases = _phase_change_cases()
    card = zoo.card("induction-2l")
    cases.append(("the zoo model's training history", card["history"], {}, ""))
    for what, history, settings, note in cases:
        expected = induction.phase_change_step(history, **settings)
        actual = call_learner(phase_change_step, copy.deepcopy(history), **settings)
        expect(
            actual is None if expected is None else (is_int(actual) and actual == expected),
            f"on {what} ({', '.join(f'{k}={v}' for k, v in settings.items()) or 'default arguments'}) the phase change is at "
            f"{'no step (None)' if expected is None else f'step {expected}'}; you returned {actual!r}.",
            f"{note} {_PHASE_CHANGE_RULE}".strip(),
        )
    truth = card["metrics"]["step_to_induction"]
    every = card["recipe"]["training"]["eval_every"]
    found = call_learner(phase_change_step, copy.deepcopy(card["history"]))
    expect(
        abs(found - truth) <= every,
        f"on the zoo's run you found step {found}, but the induction score passed {zoo.INDUCTION_SCORE_TARGET} at step {truth}.",
        _PHASE_CHANGE_RULE,
    )


# --- OV and QK circuits ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def negated_circuit() -> TransformerBridge:
    """The hand-set circuit with its induction head's output negated: it suppresses what it attends to."""
    model = copy.deepcopy(circuit().model)
    with torch.no_grad():
        model.blocks[1].attn.o.weight.neg_()
    return model


@check
def check_copying_score(copying_score) -> None:
    """1 for the planted induction head, -1 when its output is negated, 0 for zero heads, the library's on trained and random heads."""
    cases = [
        ("the hand-set circuit", circuit().model, [(1, 0), (1, 1), (0, 1)]),
        ("the hand-set circuit with its induction head negated", negated_circuit(), [(1, 0)]),
        ("a random model", random_model(), [(0, 0), (1, 1), (1, 2)]),
        ("the zoo's induction-2l", zoo_model(), [(1, 0), (0, 1)]),
    ]
    for name, model, heads in cases:
        for layer, head in heads:
            expected = induction.copying_score(model, layer, head)
            actual = call_learner_read_only(copying_score, model, layer, head)
            expect(
                isinstance(actual, float) and abs(actual - expected) < 1e-4,
                f"on {name}, head ({layer}, {head}) should have copying score {expected:.4f}; you returned {actual!r}.",
                "take the eigenvalues of the full OV circuit model.W_E @ model.OV[layer, head] @ model.W_U (.eigenvalues), "
                "then sum of the real parts over sum of the absolute values (a float, 0.0 when every eigenvalue is 0); "
                "a head that suppresses scores below 0, and counting positive eigenvalues treats a tiny one like a large one.",
            )


@check
def check_positional_qk(positional_qk) -> None:
    """Equals W_pos W_QK W_pos^T with future keys masked, for the planted previous-token head and trained and random heads."""
    cases = [
        ("the hand-set circuit", circuit().model, (0, 1)),
        ("the zoo's induction-2l", zoo_model(), (0, 1)),
        ("the zoo's induction-2l", zoo_model(), (1, 0)),
        ("a random model", random_model(), (0, 2)),
    ]
    for name, model, (layer, head) in cases:
        expect_tensor(
            call_learner_read_only(positional_qk, model, layer, head),
            induction.positional_qk(model, layer, head),
            what=f"the positional QK circuit of head ({layer}, {head}) of {name}",
            atol=1e-4,
            rtol=1e-4,
            hint="(model.W_pos @ model.QK[layer, head] @ model.W_pos.T).AB is [query_pos key_pos]: queries on the left; "
            "then set the entries above the diagonal (keys after the query) to -inf, keeping the diagonal.",
        )


def _planted_offsets(n_pos: int, offset: int, fraction: float, seed: int) -> torch.Tensor:
    """Causal scores in which a known share of the queries q >= offset score key q - offset highest."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_pos, n_pos, generator=generator)
    for query in range(offset, n_pos):
        if torch.rand(1, generator=generator).item() < fraction:
            scores[query, query - offset] = scores[query, : query + 1].max() + 1
    return scores.masked_fill(torch.ones(n_pos, n_pos, dtype=torch.bool).triu(diagonal=1), -math.inf)


@check
def check_offset_fraction(offset_fraction) -> None:
    """1 and 0 on the planted previous-token head; the library's answer on scores with a known share of planted offsets."""
    previous = induction.positional_qk(circuit().model, *circuit().previous_token_head)
    cases = [
        ("the planted previous-token head", previous, 1),
        ("the planted previous-token head", previous, 2),
        ("random scores with offset 1 planted in about 60% of rows", _planted_offsets(20, 1, 0.6, seed=0), 1),
        ("random scores with offset 3 planted in about 40% of rows", _planted_offsets(20, 3, 0.4, seed=1), 3),
        ("the same scores, asked about offset 2", _planted_offsets(20, 3, 0.4, seed=1), 2),
    ]
    for what, scores, offset in cases:
        expected = induction.offset_fraction(scores, offset)
        actual = call_learner_read_only(offset_fraction, scores, offset)
        expect(
            isinstance(actual, float) and abs(actual - expected) < 1e-6,
            f"on {what}, offset={offset}: the fraction should be {expected:.4f}; you returned {actual!r}.",
            "for each query q from offset on (earlier queries have no key q - offset), take the argmax over keys (the last "
            "axis) and count how often it is q - offset; return a float.",
        )


# --- decomposed attention scores -------------------------------------------------------------------


def _components(model: TransformerBridge, bos: int, batch: int = 4):
    seq_len = (model.cfg.n_ctx - 1) // 2
    tokens = induction.repeated_random_tokens(model.cfg.d_vocab, seq_len, batch, torch.Generator().manual_seed(2), bos=bos)
    _, cache = model.run_with_cache(tokens.to(model_device(model)))
    return cache, induction.attention_input_components(model, cache, 1)[1]


@check
def check_attention_score_terms(attention_score_terms) -> None:
    """The library's terms on the hand-set circuit, the zoo model (with LayerNorm and biases) and a random model; they add up to the scores."""
    cases = [
        ("the hand-set circuit", circuit().model, BOS, 0),
        ("the zoo's induction-2l", zoo_model(), zoo.INDUCTION_TASK.bos, 1),
        ("a random model", random_model(), BOS, 2),
    ]
    for name, model, bos, head in cases:
        cache, components = _components(model, bos)
        actual = call_learner_read_only(attention_score_terms, model, components, 1, head)
        what = f"the score terms of head (1, {head}) of {name}"
        hint = (
            "send every part through W_Q[layer, head] (queries) and W_K[layer, head] (keys), add b_Q and b_K to the last "
            "part only, then one einsum over d_head for every (query part, key part) pair, divided by sqrt(d_head)."
        )
        expect_tensor(actual, induction.attention_score_terms(model, components, 1, head), what=what, atol=1e-4, rtol=1e-4, hint=hint)
        queries, keys = cache["blocks.1.attn.hook_q"][:, :, head], cache["blocks.1.attn.hook_k"][:, :, head]
        scores = torch.einsum("bqd,bkd->bqk", queries, keys) / math.sqrt(model.cfg.d_head)
        expect_tensor(actual.sum(dim=(0, 1)), scores, what=f"the sum of {what}", atol=1e-4, rtol=1e-4, hint=hint)


@functools.lru_cache(maxsize=1)
def random_terms() -> torch.Tensor:
    """Terms [3 query parts, 2 key parts, batch 4, 13, 13] after a prefix of 3 positions, different everywhere."""
    return torch.randn(3, 2, 4, 13, 13, generator=torch.Generator().manual_seed(7))


@check
def check_induction_key_contrast(induction_key_contrast) -> None:
    """The library's contrasts on the hand-set circuit's terms and on random terms with a prefix before the repeat."""
    _, components = _components(circuit().model, BOS)
    planted = induction.attention_score_terms(circuit().model, components, *circuit().induction_head)
    cases = [
        ("the hand-set circuit's induction head", planted, (circuit().model.cfg.n_ctx - 1) // 2),
        ("random terms (seq_len=5, after 3 other positions)", random_terms(), RANDOM_SEQ_LEN),
    ]
    for what, terms, seq_len in cases:
        expect_tensor(
            call_learner_read_only(induction_key_contrast, terms, seq_len),
            induction.induction_key_contrast(terms, seq_len),
            what=f"the induction-key contrasts on {what}",
            atol=1e-4,
            rtol=1e-4,
            hint="for each of the last seq_len queries q: the term at key q - seq_len + 1 minus the mean of the term over "
            "the other keys k <= q (leave out that key and every future key); then average over queries and batch.",
        )
