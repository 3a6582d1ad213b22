"""mechlearn.probes: residual stacks, linear probes with early stopping, baselines, control tasks, steering."""

import math

import pytest
import torch
from bad_inputs import needs_cuda, raises_one_sentence
from transformer_lens.hook_points import HookPoint

from mechlearn.device import generator_for
from mechlearn.models import ModelConfig, make_model
from mechlearn.probes import (
    LinearProbe,
    ProbeConfig,
    _probe_loss,
    _split_rows,
    accuracy_by_layer,
    class_direction,
    control_labels,
    majority_accuracy,
    probe_accuracy,
    residual_stack,
    steering_hook,
    train_probe,
)

D_MODEL, N_TARGETS, N_CLASSES = 32, 6, 3
FAST = ProbeConfig(batch_size=256, max_epochs=10)


def planted(n: int, seed: int = 0, offset: float = 3.0, scale: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations (shifted and scaled, like a residual stream) whose labels are the argmax of a linear map."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(D_MODEL, N_TARGETS, N_CLASSES, generator=torch.Generator().manual_seed(123))
    x = torch.randn(n, D_MODEL, generator=generator)
    labels = torch.einsum("nd,dtc->ntc", x, directions).argmax(dim=-1)
    return offset + scale * x, labels


def noise_labels(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, N_CLASSES, (n, N_TARGETS), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return make_model(ModelConfig(d_vocab=38, n_ctx=33, d_model=32, n_layers=2, n_heads=2, d_head=16, d_mlp=64))


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 38, (3, 10), generator=torch.Generator().manual_seed(0))


def hook_point(name: str = "blocks.1.hook_resid_pre") -> HookPoint:
    point = HookPoint()
    point.name = name
    return point


# --- residual_stack ----------------------------------------------------------------------


def test_residual_stack_is_the_stream_after_each_block(model, tokens) -> None:
    stack = residual_stack(model, tokens)
    assert stack.shape == (3, 3, 10, 32)  # n_layers + 1 entries
    assert not stack.requires_grad
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(stack[0], cache["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(stack[0], cache["hook_embed"] + cache["hook_pos_embed"])
    torch.testing.assert_close(stack[1], cache["blocks.1.hook_resid_pre"])
    torch.testing.assert_close(stack[1], cache["blocks.0.hook_resid_post"])
    torch.testing.assert_close(stack[-1], cache["blocks.1.hook_resid_post"])


# --- training ----------------------------------------------------------------------------


def test_probe_finds_planted_linear_structure_but_not_noise() -> None:
    train_x, train_y = planted(4000)
    test_x, test_y = planted(1000, seed=1)
    probe = train_probe(train_x, train_y, N_CLASSES, FAST)
    assert probe.weight.shape == (D_MODEL, N_TARGETS, N_CLASSES) and probe.bias.shape == (N_TARGETS, N_CLASSES)
    assert probe(test_x).shape == (1000, N_TARGETS, N_CLASSES)
    accuracy = probe_accuracy(probe, test_x, test_y)
    assert accuracy.shape == (N_TARGETS,)
    assert accuracy.min() > 0.9, accuracy
    assert (accuracy > majority_accuracy(train_y, test_y, N_CLASSES) + 0.4).all()

    noise_probe = train_probe(train_x, noise_labels(4000), N_CLASSES, FAST)
    test_noise = noise_labels(1000, seed=2)
    noise_accuracy = probe_accuracy(noise_probe, test_x, test_noise)
    assert (noise_accuracy - majority_accuracy(noise_labels(4000), test_noise, N_CLASSES)).abs().max() < 0.06


def test_early_stopping_stops_and_returns_the_best_weights() -> None:
    x, _ = planted(400)
    labels = noise_labels(400)
    config = ProbeConfig(batch_size=32, lr=0.05, max_epochs=50, patience=3)
    probe = train_probe(x, labels, N_CLASSES, config)
    losses = probe.validation_losses
    assert len(losses) < config.max_epochs  # overfitting noise makes the validation loss rise
    best_epoch = losses.index(min(losses))
    assert len(losses) == best_epoch + config.patience + 1
    assert losses[-1] > min(losses)
    _, val_rows = _split_rows(len(x), config.validation_fraction, generator_for("probes.split_and_shuffle", config.seed))
    with torch.no_grad():
        returned_loss = _probe_loss(probe, x[val_rows], labels[val_rows]).item()
    assert returned_loss == pytest.approx(min(losses), rel=1e-4)


def test_training_is_deterministic_under_the_seed() -> None:
    x, labels = planted(1000)
    config = ProbeConfig(batch_size=128, max_epochs=3)
    first, second = train_probe(x, labels, N_CLASSES, config), train_probe(x, labels, N_CLASSES, config)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    other = train_probe(x, labels, N_CLASSES, ProbeConfig(batch_size=128, max_epochs=3, seed=1))
    assert not torch.equal(first.weight, other.weight)


def test_accuracy_by_layer_separates_a_readable_layer_from_a_noise_layer() -> None:
    train_x, train_y = planted(3000)
    test_x, test_y = planted(600, seed=1)
    generator = torch.Generator().manual_seed(5)
    stack_train = torch.stack([torch.randn(3000, D_MODEL, generator=generator), train_x])
    stack_test = torch.stack([torch.randn(600, D_MODEL, generator=generator), test_x])
    accuracy = accuracy_by_layer(stack_train, train_y, stack_test, test_y, N_CLASSES, FAST, progress=False)
    assert accuracy.shape == (2,)
    assert accuracy[1] > 0.9
    assert accuracy[0] < majority_accuracy(train_y, test_y, N_CLASSES).mean() + 0.05


# --- baselines and controls --------------------------------------------------------------


def test_majority_accuracy_predicts_each_targets_most_common_training_class() -> None:
    train = torch.tensor([[0, 2], [0, 2], [1, 2], [0, 1]])
    test = torch.tensor([[0, 2], [1, 2], [0, 0], [0, 2]])
    torch.testing.assert_close(majority_accuracy(train, test, 3), torch.tensor([0.75, 0.75]))


def test_control_labels_depend_only_on_type_and_keep_the_distribution() -> None:
    generator = torch.Generator().manual_seed(0)
    n = 20000
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33]])
    labels = torch.stack([torch.multinomial(p, n, replacement=True, generator=generator) for p in probabilities], dim=1)
    types = torch.randint(0, 400, (n,), generator=generator)
    control = control_labels(labels, types, 3, seed=0)
    assert control.shape == labels.shape and control.dtype == labels.dtype
    for row_type in range(0, 400, 37):
        rows = control[types == row_type]
        assert (rows == rows[0]).all()
    real_frequencies = torch.nn.functional.one_hot(labels, 3).float().mean(dim=0)
    control_frequencies = torch.nn.functional.one_hot(control, 3).float().mean(dim=0)
    assert (real_frequencies - control_frequencies).abs().max() < 0.08
    assert (control != labels).float().mean() > 0.3  # they are not the real labels
    assert torch.equal(control, control_labels(labels, types, 3, seed=0))
    assert not torch.equal(control, control_labels(labels, types, 3, seed=1))


# --- directions and steering -------------------------------------------------------------


def test_class_direction_moves_one_logit_difference_by_the_expected_amount() -> None:
    probe = LinearProbe(D_MODEL, N_TARGETS, N_CLASSES)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(D_MODEL, N_TARGETS, N_CLASSES, generator=torch.Generator().manual_seed(0)))
    direction = class_direction(probe, target=4, from_class=0, to_class=2)
    assert direction.shape == (D_MODEL,)
    assert direction.norm().item() == pytest.approx(1.0)
    x = torch.randn(5, D_MODEL, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before, after = probe(x)[:, 4], probe(x + 3.0 * direction)[:, 4]
    gap = (probe.weight[:, 4, 2] - probe.weight[:, 4, 0]).norm().item()
    torch.testing.assert_close((after[:, 2] - after[:, 0]) - (before[:, 2] - before[:, 0]), torch.full((5,), 3.0 * gap))


def test_steering_hook_adds_at_the_chosen_positions_only() -> None:
    activation = torch.randn(2, 5, 4)
    original = activation.clone()
    direction = torch.tensor([1.0, 0.0, 0.0, 0.0])
    steered = steering_hook(direction, 2.0, positions=torch.tensor([1, 3]))(activation, hook_point())
    assert torch.equal(activation, original)  # the input is untouched
    expected = original.clone()
    expected[:, [1, 3], 0] += 2.0
    torch.testing.assert_close(steered, expected)
    torch.testing.assert_close(steering_hook(direction, -1.0)(activation, hook_point()), original - direction)


def test_steering_hook_takes_one_direction_and_one_position_per_sequence() -> None:
    activation = torch.zeros(2, 4, 3)
    directions = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    steered = steering_hook(directions, 1.0, positions=torch.tensor([[0], [2]]))(activation, hook_point())
    expected = torch.zeros(2, 4, 3)
    expected[0, 0] = directions[0]
    expected[1, 2] = directions[1]
    assert torch.equal(steered, expected)


def test_steering_in_a_model_changes_only_later_positions(model, tokens) -> None:
    clean = model(tokens)
    direction = torch.randn(32, generator=torch.Generator().manual_seed(0))
    hooks = [("blocks.1.hook_resid_pre", steering_hook(direction, 10.0, positions=torch.tensor([4])))]
    steered = model.run_with_hooks(tokens, fwd_hooks=hooks)
    torch.testing.assert_close(steered[:, :4], clean[:, :4])  # attention is causal
    assert (steered[:, 4] - clean[:, 4]).abs().max() > 1e-2


# --- validation --------------------------------------------------------------------------

X, Y = planted(50)
PROBE = LinearProbe(D_MODEL, N_TARGETS, N_CLASSES)


def with_nan_weight(probe: LinearProbe) -> LinearProbe:
    broken = LinearProbe(D_MODEL, N_TARGETS, N_CLASSES)
    with torch.no_grad():
        broken.weight[0, 0, 0] = math.nan
    return broken


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: train_probe(X, Y[:40], N_CLASSES), ValueError, "labels has 40 rows but the activations have 50"),
        (lambda: train_probe(X, Y.float(), N_CLASSES), TypeError, "labels must be an integer tensor"),
        (lambda: train_probe(X, Y + 1, N_CLASSES), ValueError, r"labels must hold classes in \[0, 3\)"),
        (lambda: train_probe(X, Y - 1, N_CLASSES), ValueError, r"labels must hold classes in \[0, 3\)"),
        (lambda: train_probe(X[0], Y, N_CLASSES), TypeError, r"activations must be a float tensor of shape \[n d_model\]"),
        (lambda: train_probe(X.long(), Y, N_CLASSES), TypeError, "activations must be a float tensor"),
        (lambda: train_probe(torch.where(X > 8, math.nan, X), Y, N_CLASSES), ValueError, "activations contains NaN or inf"),
        (lambda: train_probe(X, Y, 1), ValueError, "n_classes must be an int of at least 2"),
        (lambda: train_probe(X[:1], Y[:1], N_CLASSES), ValueError, "at least 2 rows"),
        (lambda: train_probe(X, Y, N_CLASSES, config={"lr": 1}), TypeError, "config must be a ProbeConfig"),
        (lambda: ProbeConfig(lr=0.0), ValueError, "ProbeConfig.lr must be a positive number"),
        (lambda: ProbeConfig(batch_size=0), ValueError, "ProbeConfig.batch_size must be an int of at least 1"),
        (lambda: ProbeConfig(patience=0), ValueError, "ProbeConfig.patience"),
        (lambda: ProbeConfig(validation_fraction=1.0), ValueError, "ProbeConfig.validation_fraction"),
        (lambda: ProbeConfig(weight_decay=-1.0), ValueError, "ProbeConfig.weight_decay"),
        (lambda: LinearProbe(0, 2, 3), ValueError, "LinearProbe needs d_model to be a positive int"),
        (lambda: probe_accuracy(PROBE, X[:, :8], Y), ValueError, "The probe reads d_model=32"),
        (lambda: probe_accuracy(PROBE, X, Y[:, :2]), ValueError, "predicts 6 targets"),
        (lambda: probe_accuracy("probe", X, Y), TypeError, "probe must be a LinearProbe"),
        (lambda: majority_accuracy(Y, Y[:, :2], N_CLASSES), ValueError, "same number of targets"),
        (lambda: control_labels(Y, torch.zeros(49, dtype=torch.long), N_CLASSES), ValueError, "types must be an integer tensor with one entry per row"),
        (lambda: control_labels(Y, torch.zeros(50), N_CLASSES), ValueError, "types must be an integer tensor"),
        (lambda: accuracy_by_layer(X[None], Y, X[None, :, :8], Y, N_CLASSES), ValueError, "same layers and d_model"),
        (lambda: accuracy_by_layer(X, Y, X, Y, N_CLASSES), TypeError, r"stack_train must be a float tensor of shape \[layer n d_model\]"),
        (lambda: class_direction(PROBE, 6, 0, 1), ValueError, r"target must be an int in \[0, 6\)"),
        (lambda: class_direction(PROBE, 0, 0, 3), ValueError, r"to_class must be an int in \[0, 3\)"),
        (lambda: class_direction(PROBE, 0, 1, 1), ValueError, "pick two different classes"),
        (lambda: class_direction(PROBE, 0, 0, 1), ValueError, "train it first"),
        (lambda: probe_accuracy(PROBE, X[:0], Y[:0]), ValueError, "activations is empty"),
        (lambda: probe_accuracy(PROBE, X.double(), Y.float()), TypeError, "labels must be an integer tensor"),
        (lambda: majority_accuracy(Y, Y[:0], N_CLASSES), ValueError, "test_labels has no rows"),
        (lambda: train_probe(X.to("meta"), Y, N_CLASSES), ValueError, "activations is on the meta device"),
        (lambda: accuracy_by_layer(X[None], Y[:40], X[None], Y, N_CLASSES), ValueError, "labels_train has 40 rows"),
        (lambda: accuracy_by_layer(X[None], Y, X[None], Y + 3, N_CLASSES), ValueError, r"labels_test must hold classes in \[0, 3\)"),
        (lambda: class_direction(with_nan_weight(PROBE), 0, 0, 1), ValueError, "probe.weight contains NaN or inf"),
        (lambda: steering_hook(torch.full((4,), math.nan), 1.0), ValueError, "direction contains NaN or inf"),
        (lambda: ProbeConfig(seed=0.5), ValueError, "ProbeConfig.seed must be an int"),
        (lambda: ProbeConfig(lr="fast"), ValueError, "ProbeConfig.lr must be a finite number"),
        (lambda: ProbeConfig(validation_fraction=math.nan), ValueError, "ProbeConfig.validation_fraction must be a finite number"),
        (lambda: PROBE(X[:, :8]), ValueError, r"activations must be a tensor of shape \[n 32\]"),
        (lambda: PROBE(X.long()), TypeError, "activations must be a float tensor"),
        pytest.param(lambda: probe_accuracy(PROBE, X.cuda(), Y.cuda()), ValueError, "activations is on cuda", marks=needs_cuda),
        pytest.param(lambda: train_probe(X.cuda(), Y, N_CLASSES), ValueError, "labels is on cpu", marks=needs_cuda),
        pytest.param(lambda: majority_accuracy(Y, Y.cuda(), N_CLASSES), ValueError, "test_labels is on cuda", marks=needs_cuda),
        (lambda: steering_hook(torch.zeros(2, 3, 4), 1.0), TypeError, "direction must be a float tensor"),
        (lambda: steering_hook(torch.zeros(4), math.inf), TypeError, "scale must be a finite number"),
        (lambda: steering_hook(torch.zeros(4), 1.0, positions=torch.tensor([0.5])), TypeError, "positions must be None or an integer tensor"),
    ],
)
def test_bad_arguments_get_a_clear_error(call, error, match) -> None:
    with raises_one_sentence(error, match):
        call()


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("bad_tokens", "error", "match"),
    [
        (torch.zeros(3, 4), TypeError, r"tokens must be an integer tensor of shape \[batch pos\]"),
        (torch.full((3, 4), 38), ValueError, r"tokens must hold token ids in \[0, 38\)"),
        (torch.zeros(3, 34, dtype=torch.long), ValueError, "n_ctx=33"),
        (torch.zeros(0, 4, dtype=torch.long), ValueError, "tokens is empty"),
    ],
    ids=["float", "beyond d_vocab", "beyond n_ctx", "empty"],
)
def test_residual_stack_names_bad_tokens(model, bad_tokens, error, match) -> None:
    with raises_one_sentence(error, match):
        residual_stack(model, bad_tokens)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("hook", "match"),
    [
        (steering_hook(torch.ones(3), 1.0), "direction has size 3 but the activation at blocks.1.hook_resid_pre has d_model=4"),
        (steering_hook(torch.ones(3, 4), 1.0), "direction has 3 rows but the batch at blocks.1.hook_resid_pre has 2 sequences"),
        (steering_hook(torch.ones(4), 1.0, positions=torch.tensor([[0], [1], [2]])), "positions has 3 rows"),
        (steering_hook(torch.ones(4), 1.0, positions=torch.tensor([5])), r"positions must lie in \[0, 5\)"),
    ],
)
def test_steering_hook_checks_the_activation_it_is_given(hook, match) -> None:
    with raises_one_sentence(ValueError, match):
        hook(torch.zeros(2, 5, 4), hook_point())


def test_float64_activations_are_cast_not_refused() -> None:
    x, y = planted(200)
    probe = train_probe(x.double(), y, N_CLASSES, ProbeConfig(batch_size=64, max_epochs=2))
    assert probe.weight.dtype == torch.float32
    torch.testing.assert_close(probe_accuracy(probe, x.double(), y), probe_accuracy(probe, x, y))
