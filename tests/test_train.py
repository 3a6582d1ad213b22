"""mechlearn.train (the training loop, loss, schedule) and mechlearn.tasks.SortingTask."""

import math

import pytest
import torch
from bad_inputs import raises_one_sentence

from mechlearn.models import ModelConfig, make_model
from mechlearn.tasks import SortingTask, Task
from mechlearn.train import TrainConfig, learning_rate, next_token_accuracy, next_token_loss, task_accuracy, task_loss, train

TASK = SortingTask(n_digits=5, length=3)
FAST = TrainConfig(steps=60, batch_size=32, lr=1e-2, warmup_steps=5, eval_every=20, eval_batch_size=128)


def tiny_model(seed: int = 0, d_mlp: int | None = 32):
    return make_model(
        ModelConfig(d_vocab=TASK.d_vocab, n_ctx=TASK.n_ctx, d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=d_mlp, seed=seed)
    )


# --- the training loop -------------------------------------------------------------------


def test_loss_decreases_on_sorting() -> None:
    model = tiny_model()
    eval_tokens = TASK.sample(256, torch.Generator().manual_seed(99))
    with torch.no_grad():
        before = next_token_loss(model(eval_tokens), eval_tokens, TASK.target_mask).item()
    history = train(model, TASK, FAST, progress=False)
    assert [record["step"] for record in history] == [20, 40, 60]
    assert set(history[0]) == {"step", "train_loss", "eval_loss", "eval_accuracy"}
    assert before > 1.0  # about log(5) for an untrained model
    assert history[-1]["eval_loss"] < 0.3 * before
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    assert history[-1]["eval_accuracy"] > 0.8
    assert not model.training
    with torch.no_grad():
        after = next_token_loss(model(eval_tokens), eval_tokens, TASK.target_mask).item()
    assert after < 0.3 * before


def test_training_is_deterministic_under_the_seed() -> None:
    config = TrainConfig(steps=10, batch_size=16, lr=1e-2, warmup_steps=2, eval_every=5, eval_batch_size=64)
    first_model, second_model = tiny_model(), tiny_model()
    first = train(first_model, TASK, config, progress=False)
    second = train(second_model, TASK, config, progress=False)
    assert first == second
    for a, b in zip(first_model.parameters(), second_model.parameters(), strict=True):
        assert torch.equal(a, b)
    other_data = train(tiny_model(), TASK, TrainConfig(**{**config.__dict__, "seed": 1}), progress=False)
    assert other_data != first
    assert other_data[-1]["train_loss"] != first[-1]["train_loss"]


def test_eval_fn_results_join_the_history() -> None:
    calls = []

    def eval_fn(model, tokens):
        calls.append(tokens.shape)
        return {"n_eval": float(tokens.shape[0])}

    history = train(tiny_model(d_mlp=None), TASK, TrainConfig(steps=3, batch_size=4, eval_every=2, eval_batch_size=8), eval_fn, progress=False)
    assert [record["step"] for record in history] == [2, 3]  # every eval_every steps and after the last
    assert all(record["n_eval"] == 8.0 for record in history)
    assert calls == [torch.Size([8, TASK.n_ctx])] * 2


@pytest.mark.bad_input
def test_train_rejects_a_non_task() -> None:
    with pytest.raises(TypeError, match="train expects a task from mechlearn.tasks, got str"):
        train(tiny_model(), "sorting", FAST, progress=False)


class NaNModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(TASK.d_vocab))

    def forward(self, tokens):
        return torch.full((*tokens.shape, TASK.d_vocab), float("nan")) * self.weight


def test_nan_loss_raises_floating_point_error() -> None:
    with pytest.raises(FloatingPointError, match=r"became nan at step 0; lower TrainConfig\.lr"):
        train(NaNModel(), TASK, FAST, progress=False)


@pytest.mark.bad_input
def test_infinite_learning_rate_is_rejected() -> None:
    with pytest.raises(ValueError, match="TrainConfig.lr"):
        TrainConfig(lr=float("inf"))


def test_huge_learning_rate_raises_floating_point_error() -> None:
    config = TrainConfig(steps=20, batch_size=8, lr=1e30, warmup_steps=0, eval_every=20, eval_batch_size=8)
    with pytest.raises(FloatingPointError, match=r"The training loss became (nan|inf) at step \d+; lower TrainConfig\.lr"):
        train(tiny_model(), TASK, config, progress=False)


# --- loss, accuracy, schedule --------------------------------------------------------------


def test_next_token_loss_matches_manual_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, generator=generator)
    tokens = torch.randint(0, 4, (2, 5), generator=generator)
    mask = torch.tensor([False, True, False, True])

    def manual(positions):
        terms = [
            -torch.log(torch.exp(logits[b, i, tokens[b, i + 1]]) / torch.exp(logits[b, i]).sum())
            for b in range(2)
            for i in positions
        ]
        return torch.stack(terms).mean()

    torch.testing.assert_close(next_token_loss(logits, tokens), manual(range(4)))
    torch.testing.assert_close(next_token_loss(logits, tokens, mask), manual([1, 3]))
    assert not torch.isclose(next_token_loss(logits, tokens, mask), manual(range(4)))
    torch.testing.assert_close(
        next_token_loss(logits, tokens), torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 4), tokens[:, 1:].reshape(-1))
    )


def test_next_token_accuracy_counts_masked_positions() -> None:
    tokens = torch.tensor([[0, 1, 2, 3]])
    # Predictions at positions 0, 1, 2 are 1 (right), 0 (wrong), 3 (right).
    logits = torch.nn.functional.one_hot(torch.tensor([[1, 0, 3, 0]]), 4).float()
    assert next_token_accuracy(logits, tokens) == pytest.approx(2 / 3)
    assert next_token_accuracy(logits, tokens, torch.tensor([False, True, True])) == pytest.approx(1 / 2)
    assert next_token_accuracy(logits, tokens, torch.tensor([True, False, True])) == 1.0


def test_learning_rate_warmup_and_cosine() -> None:
    config = TrainConfig(steps=100, lr=2e-3, warmup_steps=10)
    assert learning_rate(0, config) == pytest.approx(2e-3 / 10)
    assert learning_rate(4, config) == pytest.approx(2e-3 * 5 / 10)
    assert learning_rate(9, config) == pytest.approx(2e-3)  # the peak, at the end of warm-up
    assert learning_rate(10, config) == pytest.approx(2e-3)
    assert learning_rate(55, config) == pytest.approx(2e-3 * 0.55)  # half-way down the cosine
    assert learning_rate(100, config) == pytest.approx(2e-4)  # a tenth of the peak
    rates = [learning_rate(step, config) for step in range(100)]
    assert all(a < b for a, b in zip(rates[:10], rates[1:10]))
    assert all(a > b for a, b in zip(rates[10:], rates[11:]))
    assert min(rates[10:]) > 2e-4  # the floor is reached only at step == steps
    no_warmup = TrainConfig(steps=10, lr=1.0, warmup_steps=0)
    assert learning_rate(0, no_warmup) == pytest.approx(1.0)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "field, value",
    [("steps", 0), ("batch_size", 0), ("eval_every", 0), ("eval_batch_size", -1), ("lr", 0.0), ("lr", -1e-3), ("lr", math.nan)],
)
def test_train_config_validation(field: str, value) -> None:
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field} must be"):
        TrainConfig(**{field: value})


# --- SortingTask ---------------------------------------------------------------------------


def test_sorting_task_layout() -> None:
    task = SortingTask(n_digits=10, length=6)
    assert isinstance(task, Task)
    assert (task.sep, task.bos, task.d_vocab, task.n_ctx, task.prompt_length) == (10, 11, 12, 14, 8)
    tokens = task.sample(200, torch.Generator().manual_seed(0))
    assert tokens.shape == (200, 14) and tokens.dtype == torch.long
    assert (tokens[:, 0] == task.bos).all()
    assert (tokens[:, 7] == task.sep).all()
    unsorted, sorted_half = tokens[:, 1:7], tokens[:, 8:]
    assert ((unsorted >= 0) & (unsorted < 10)).all()
    assert (sorted_half[:, 1:] >= sorted_half[:, :-1]).all()
    assert torch.equal(sorted_half, unsorted.sort(dim=-1).values)  # a permutation of the input
    assert not torch.equal(unsorted, sorted_half)  # the inputs are not already sorted
    assert len(set(map(tuple, unsorted.tolist()))) > 190  # fresh random digits
    # The generator decides the data.
    assert torch.equal(tokens, task.sample(200, torch.Generator().manual_seed(0)))
    assert not torch.equal(tokens, task.sample(200, torch.Generator().manual_seed(1)))


def test_sorting_target_mask_covers_exactly_the_sorted_half() -> None:
    task = SortingTask(n_digits=10, length=6)
    mask = task.target_mask
    assert mask.shape == (task.n_ctx - 1,) and mask.dtype == torch.bool
    predicted_positions = (torch.nonzero(mask)[:, 0] + 1).tolist()  # prediction i is of token i + 1
    assert predicted_positions == list(range(task.prompt_length, task.n_ctx))
    assert len(predicted_positions) == task.length


def test_sorting_decode_and_validation() -> None:
    task = SortingTask(n_digits=10, length=3)
    assert task.decode(torch.tensor([11, 3, 1, 2, 10, 1, 2, 3])) == "3 1 2 → 1 2 3"
    with pytest.raises(ValueError, match="n_digits >= 2"):
        SortingTask(n_digits=1)
    with pytest.raises(ValueError, match="length >= 1"):
        SortingTask(length=0)


def test_masks_may_differ_per_sequence() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=generator)
    tokens = torch.randint(0, 5, (2, 4), generator=generator)
    per_sequence = torch.tensor([[True, False, False], [False, False, True]])
    log_probs = logits.log_softmax(-1)
    expected = -(log_probs[0, 0, tokens[0, 1]] + log_probs[1, 2, tokens[1, 3]]) / 2
    assert torch.allclose(next_token_loss(logits, tokens, per_sequence), expected)
    shared = torch.tensor([True, False, True])
    assert torch.allclose(next_token_loss(logits, tokens, shared), next_token_loss(logits, tokens, shared.expand(2, 3)))
    correct = (logits[:, :-1].argmax(-1) == tokens[:, 1:])[per_sequence].float().mean().item()
    assert next_token_accuracy(logits, tokens, per_sequence) == correct


# --- tasks with their own objective ------------------------------------------------------


def test_a_task_with_its_own_loss_is_trained_on_that_loss() -> None:
    """Othello grades whole legal-move sets: training must call `task.loss`, and evaluation `task.accuracy`."""
    from mechlearn.tasks import OthelloTask

    task = OthelloTask(size=4)
    model = make_model(ModelConfig(d_vocab=task.d_vocab, n_ctx=task.n_ctx, d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=32))
    tokens = task.sample(64, torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = task.loss(model(tokens), tokens).item()
    history = train(model, task, TrainConfig(steps=40, batch_size=32, lr=1e-2, warmup_steps=5, eval_every=20, eval_batch_size=64), progress=False)
    with torch.no_grad():
        logits = model(tokens)
    assert task.loss(logits, tokens).item() < before
    assert history[-1]["eval_accuracy"] > 0.5  # top-1 legal: a random guess among 12 cells is legal far less often
    assert history[-1]["eval_loss"] != pytest.approx(next_token_loss(logits, tokens).item(), rel=1e-3)


# --- bad inputs: every one named in one sentence (issue 11) -------------------------------------

LOGITS = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))
TOKENS = torch.randint(0, 5, (2, 4), generator=torch.Generator().manual_seed(1))
NAN_LOGITS = LOGITS.clone()
NAN_LOGITS[0, 0, 0] = math.nan


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "logits, tokens, mask, error, match",
    [
        (LOGITS[0], TOKENS, None, ValueError, "logits must have 3 dims"),
        (LOGITS.long(), TOKENS, None, TypeError, "logits must be a float tensor"),
        (NAN_LOGITS, TOKENS, None, ValueError, "logits contains NaN or inf"),
        (LOGITS, TOKENS.float(), None, TypeError, "tokens must be an integer tensor"),
        (LOGITS, TOKENS + 5, None, ValueError, r"tokens must hold token ids in \[0, 5\)"),
        (LOGITS, TOKENS[:, :3], None, ValueError, r"tokens must have the logits' \[batch pos\] shape \(2, 4\)"),
        (LOGITS[:, :1], TOKENS[:, :1], None, ValueError, "tokens must have at least 2 positions"),
        (LOGITS[:0], TOKENS[:0], None, ValueError, "logits is empty"),
        (LOGITS, TOKENS.to("meta"), None, ValueError, "tokens is on the meta device"),
        (LOGITS, TOKENS, torch.ones(3), TypeError, "target_mask must be a bool tensor, got torch.float32"),
        (LOGITS, TOKENS, torch.ones(3, dtype=torch.long), TypeError, "target_mask must be a bool tensor"),
        (LOGITS, TOKENS, torch.ones(4, dtype=torch.bool), ValueError, r"target_mask must have shape \(3,\) or \(2, 3\)"),
        (LOGITS, TOKENS, torch.zeros(3, dtype=torch.bool), ValueError, "target_mask is all False"),
    ],
    ids=["logits-2-dims", "logits-int", "logits-nan", "tokens-float", "tokens-vocab", "tokens-shape", "one-position", "empty-batch",
         "tokens-meta", "mask-float", "mask-long", "mask-shape", "mask-all-false"],
)
def test_next_token_loss_names_bad_inputs(logits, tokens, mask, error, match: str) -> None:
    with raises_one_sentence(error, match):
        next_token_loss(logits, tokens, mask)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "logits, tokens, mask, match",
    [(LOGITS, TOKENS, torch.zeros(2, 3, dtype=torch.bool), "target_mask is all False"), (LOGITS[:0], TOKENS[:0], None, "logits is empty")],
    ids=["mask-all-false", "empty-batch"],
)
def test_next_token_accuracy_raises_where_it_returned_nan(logits, tokens, mask, match: str) -> None:
    with raises_one_sentence(ValueError, match):
        next_token_accuracy(logits, tokens, mask)


@pytest.mark.bad_input
@pytest.mark.parametrize("metric", [task_loss, task_accuracy])
def test_task_metrics_name_a_non_task(metric) -> None:
    with raises_one_sentence(TypeError, "task must be a task from mechlearn.tasks, got str"):
        metric("sorting", LOGITS, TOKENS)


@pytest.mark.bad_input
def test_learning_rate_names_a_negative_step() -> None:
    with raises_one_sentence(ValueError, "step must be an int >= 0, got -1"):
        learning_rate(-1, TrainConfig())


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "field, value",
    [("steps", 10.5), ("batch_size", True), ("warmup_steps", -1), ("weight_decay", -0.1), ("grad_clip", 0.0), ("grad_clip", math.inf),
     ("lr", "1e-3"), ("seed", 0.5)],
)
def test_train_config_names_bad_types_and_ranges(field: str, value) -> None:
    with raises_one_sentence(ValueError, rf"TrainConfig\.{field} must be"):
        TrainConfig(**{field: value})


def nan_weight_model():
    model = tiny_model()
    with torch.no_grad():
        model.W_E[0, 0] = math.nan
    return model


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "make, kwargs, error, match",
    [
        (tiny_model, {"config": {"steps": 3}}, TypeError, "config must be a TrainConfig, got dict"),
        (tiny_model, {"eval_fn": "accuracy"}, TypeError, "eval_fn must be None or a function"),
        (lambda: make_model(ModelConfig(d_vocab=4, n_ctx=TASK.n_ctx, d_model=8, n_layers=1, n_heads=1, d_head=8)), {}, ValueError,
         "task has d_vocab=7 but the model only 4"),
        (lambda: make_model(ModelConfig(d_vocab=TASK.d_vocab, n_ctx=4, d_model=8, n_layers=1, n_heads=1, d_head=8)), {}, ValueError,
         "task has n_ctx=8 but the model only 4"),
        (nan_weight_model, {}, ValueError, "The model's parameter .* contains NaN or inf"),
        (torch.nn.ReLU, {}, ValueError, r"model \(ReLU\) has no parameters"),
    ],
    ids=["config-dict", "eval-fn-str", "small-vocab", "short-context", "nan-weights", "no-parameters"],
)
def test_train_names_bad_inputs_before_the_first_step(make, kwargs, error, match: str) -> None:
    with raises_one_sentence(error, match):
        train(make(), TASK, progress=False, **kwargs)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: SortingTask(n_digits=10.0), ValueError, "SortingTask.n_digits must be an int, got 10.0"),
        (lambda: TASK.sample(0, torch.Generator()), ValueError, "batch_size must be a positive int, got 0"),
        pytest.param(lambda: TASK.sample(2, torch.Generator(device="cuda")), ValueError, "generator must be a CPU generator",
                     marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA generator")),
    ],
    ids=["float-n-digits", "zero-batch", "cuda-generator"],
)
def test_sorting_task_names_bad_inputs(call, error, match: str) -> None:
    with raises_one_sentence(error, match):
        call()


@pytest.mark.parametrize("pos", [1, 3, 6])
def test_lowered_pairs_differ_in_one_digit_that_becomes_the_smallest(pos) -> None:
    task = SortingTask()
    originals, lowered = task.lowered_pairs(50, pos, torch.Generator().manual_seed(pos))
    digits, lowered_digits = originals[:, 1 : task.length + 1], lowered[:, 1 : task.length + 1]
    assert digits.min() >= 1
    differs = (digits != lowered_digits).nonzero()[:, 1]
    assert (differs == pos - 1).all() and len(differs) == 50
    others = torch.cat([lowered_digits[:, : pos - 1], lowered_digits[:, pos:]], dim=1)
    assert (lowered_digits[:, pos - 1] < others.min(dim=1).values).all()
    for sequences in (originals, lowered):
        assert torch.equal(sequences[:, task.prompt_length :], sequences[:, 1 : task.length + 1].sort(dim=-1).values)
        assert (sequences[:, task.length + 1] == task.sep).all() and (sequences[:, 0] == task.bos).all()
    assert (originals[:, task.prompt_length] != lowered[:, task.prompt_length]).all()


@pytest.mark.bad_input
@pytest.mark.parametrize("pos", [0, 7, 2.0, True])
def test_lowered_pairs_name_a_bad_position(pos) -> None:
    with raises_one_sentence(ValueError, "pos"):
        SortingTask().lowered_pairs(4, pos, torch.Generator().manual_seed(0))
