"""Checks for chapter 04, probing a world model.

Probes are graded on data whose answer is planted: activations are Gaussian, and each
target's label is the argmax of a known linear map of them, so a working probe must reach
high held-out accuracy, and a probe that never trained stays at the majority baseline.
Layer sweeps get one layer with the planted structure and one of pure noise. The
directions and the steering hook are compared with `mechlearn.probes` on the same inputs.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechlearn import probes
from mechlearn.checks.core import call_learner, check, expect, expect_tensor
from mechlearn.models import ModelConfig, make_model
from mechlearn.tasks import OthelloTask

N_CLASSES, N_TARGETS, D_MODEL = 3, 5, 16


class Planted:
    """Activations and the labels a known linear map assigns to them, split into train and test."""

    def __init__(self, n_rows: int = 40_000, seed: int = 0, informative: bool = True) -> None:
        generator = torch.Generator().manual_seed(seed)
        activations = 3.0 + 2.0 * torch.randn(n_rows, D_MODEL, generator=generator)  # off-centre and scaled on purpose
        readout = torch.randn(D_MODEL, N_TARGETS, N_CLASSES, generator=generator)
        if informative:
            labels = torch.einsum("nd,dtc->ntc", activations - 3.0, readout).argmax(dim=-1)
        else:
            labels = torch.randint(0, N_CLASSES, (n_rows, N_TARGETS), generator=generator)
        split = int(0.75 * n_rows)
        self.train_activations, self.test_activations = activations[:split], activations[split:]
        self.train_labels, self.test_labels = labels[:split], labels[split:]


@functools.lru_cache(maxsize=1)
def planted() -> Planted:
    return Planted()


@functools.lru_cache(maxsize=1)
def small_othello_model() -> tuple[TransformerBridge, Tensor]:
    task = OthelloTask()
    model = make_model(ModelConfig(d_vocab=task.d_vocab, n_ctx=task.n_ctx, d_model=24, n_layers=3, n_heads=2, d_head=8, d_mlp=32, seed=4))
    return model, task.sample(3, torch.Generator().manual_seed(4))


def _as_probe(result: object, name: str) -> probes.LinearProbe:
    expect(
        isinstance(result, probes.LinearProbe),
        f"`{name}` returned {type(result).__name__}, expected a LinearProbe",
        hint="create `probe = LinearProbe(d_model, n_targets, n_classes)`, train it, and `return probe`.",
    )
    return result


@check
def check_residual_stack(residual_stack) -> None:
    """The stream after 0, 1, ..., n_layers blocks, compared with mechlearn.probes on a small model."""
    model, tokens = small_othello_model()
    expect_tensor(
        call_learner(residual_stack, model, tokens.clone()),
        probes.residual_stack(model, tokens),
        what="the residual stack",
        hint="cache `blocks.{l}.hook_resid_pre` for every layer l, then the LAST block's `hook_resid_post` "
        "(n_layers + 1 entries in all), and torch.stack them along a new first dimension.",
    )


@check
def check_train_probe(train_probe) -> None:
    """On planted data, the trained probe reads the held-out labels well above the majority baseline."""
    data = planted()
    probe = _as_probe(call_learner(train_probe, data.train_activations.clone(), data.train_labels.clone(), N_CLASSES), "train_probe")
    expect(
        tuple(probe.weight.shape) == (D_MODEL, N_TARGETS, N_CLASSES),
        f"the probe's weight has shape {tuple(probe.weight.shape)}, expected {(D_MODEL, N_TARGETS, N_CLASSES)}",
        hint="LinearProbe(d_model, n_targets, n_classes): d_model = activations.shape[1], n_targets = labels.shape[1].",
    )
    accuracy = probes.probe_accuracy(probe, data.test_activations, data.test_labels).mean().item()
    baseline = probes.majority_accuracy(data.train_labels, data.test_labels, N_CLASSES).mean().item()
    expect(
        accuracy >= 0.9,
        f"your probe reads held-out planted labels with accuracy {accuracy:.2f}, expected at least 0.90 "
        f"(the majority-class baseline is {baseline:.2f})",
        hint="does the loop update the probe (optimizer.step() after loss.backward())? Is the cross-entropy over "
        "the class dimension (F.cross_entropy wants the classes second: [n class target])? Does it return the "
        "best-validation weights, not the initial ones?",
    )


@check
def check_accuracy_by_layer(accuracy_by_layer) -> None:
    """One probe per layer, scored on held-out rows: high only where the held-out rows carry the structure too."""
    readable, noise = planted(), Planted(seed=1, informative=False)
    # Layer 2 has the structure in its training rows only: a probe scored on its training rows would look good there.
    stack_train = torch.stack([noise.train_activations, readable.train_activations, readable.train_activations])
    stack_test = torch.stack([noise.test_activations, readable.test_activations, noise.test_activations])
    result = call_learner(accuracy_by_layer, stack_train, readable.train_labels.clone(), stack_test, readable.test_labels.clone(), N_CLASSES)
    expect(
        isinstance(result, Tensor) and tuple(result.shape) == (3,),
        f"accuracy_by_layer returned {type(result).__name__} {tuple(getattr(result, 'shape', ()))}, expected a tensor of shape (3,): one accuracy per layer",
        hint="train one probe per layer, take its probe_accuracy(...).mean() on that layer's test activations, and torch.stack them.",
    )
    accuracies = [round(value, 2) for value in result.tolist()]
    expect(
        accuracies[1] >= 0.9 and accuracies[0] <= 0.6 and accuracies[2] <= 0.6,
        f"expected a high accuracy (>= 0.90) only on layer 1, whose held-out activations carry the labels, and <= 0.60 "
        f"on layers 0 and 2, whose held-out activations are noise; got {accuracies}",
        hint="train each layer's probe on stack_train[layer] and score it on stack_test[layer] (never on the rows it was trained on), "
        "with the same labels for every layer.",
    )


N_TYPES = 500
# Each target has its own skewed class mix, so drawing classes uniformly, or from the mix of all targets, shows.
CLASS_MIX = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])


@check
def check_control_labels(control_labels) -> None:
    """Control labels depend only on the type, keep each target's class mix, and are seeded."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.multinomial(CLASS_MIX, 30_000, replacement=True, generator=generator).T  # [n target]
    types = torch.arange(len(labels)) % N_TYPES
    result = call_learner(control_labels, labels.clone(), types.clone(), N_CLASSES, 0)
    expected_shape = tuple(labels.shape)
    expect(
        isinstance(result, Tensor) and tuple(result.shape) == expected_shape and not result.dtype.is_floating_point,
        f"control_labels returned {type(result).__name__} {tuple(getattr(result, 'shape', ()))}, expected an integer tensor of shape {expected_shape}",
        hint="return one class per row and target, as integers (torch.multinomial gives longs).",
    )
    expect(
        torch.equal(result, result[:N_TYPES][types]),
        "rows of the same type got different control labels",
        hint="draw one class per (type, target), then look it up for each row: `classes[:, type_of_row]` with "
        "`types.unique(return_inverse=True)`.",
    )
    control_mix = torch.nn.functional.one_hot(result, N_CLASSES).float().mean(dim=0)  # [target class]
    worst = (control_mix - CLASS_MIX).abs().max().item()
    expect(
        worst < 0.12,
        f"the control labels' class mix per target is off from the real labels' by up to {worst:.2f}",
        hint="draw each target's classes from THAT target's class counts in `labels` (F.one_hot(labels, n_classes).sum(dim=0) "
        "is [target class]), not uniformly and not from all targets pooled.",
    )
    other_seed = call_learner(control_labels, labels.clone(), types.clone(), N_CLASSES, 1)
    expect(
        torch.equal(result, call_learner(control_labels, labels.clone(), types.clone(), N_CLASSES, 0)) and not torch.equal(result, other_seed),
        "control_labels does not depend on its seed as it should (the same seed must repeat, another seed must differ)",
        hint="make a torch.Generator().manual_seed(seed) and pass it to torch.multinomial.",
    )


@functools.lru_cache(maxsize=1)
def trained_planted_probe() -> probes.LinearProbe:
    data = planted()
    return probes.train_probe(data.train_activations, data.train_labels, N_CLASSES)


@check
def check_class_direction(class_direction) -> None:
    """The unit vector from one class's weights to another's, compared with mechlearn.probes."""
    probe = trained_planted_probe()
    for target, from_class, to_class in [(0, 1, 2), (3, 2, 0), (4, 0, 1)]:
        expect_tensor(
            call_learner(class_direction, probe, target, from_class, to_class),
            probes.class_direction(probe, target, from_class, to_class),
            what=f"the direction of target {target} from class {from_class} to class {to_class}",
            hint="take probe.weight[:, target, to_class] - probe.weight[:, target, from_class] (to minus from), "
            "detach it, and divide by its norm.",
        )


@check
def check_steering_hook(steering_hook) -> None:
    """The hook adds scale * direction at the chosen positions only, and leaves its input alone."""
    generator = torch.Generator().manual_seed(0)
    activation = torch.randn(2, 5, D_MODEL, generator=generator)
    one_direction, per_row = torch.randn(D_MODEL, generator=generator), torch.randn(2, D_MODEL, generator=generator)
    cases = [
        (one_direction, 2.0, None, "one direction at every position"),
        (one_direction, -1.5, torch.tensor([0, 3]), "one direction at positions [0, 3]"),
        (per_row, 0.5, torch.tensor([[1], [4]]), "one direction and one position per sequence"),
    ]
    for direction, scale, positions, label in cases:
        hook = call_learner(steering_hook, direction, scale, positions)
        given = activation.clone()
        expected = probes.steering_hook(direction, scale, positions)(activation.clone(), None)
        expect_tensor(
            call_learner(hook, given, None),
            expected,
            what=f"the steered activation ({label})",
            hint="add scale * direction only at the chosen positions: build a [batch pos] 0/1 mask of them and "
            "einsum it with the [batch d_model] steer (expand a single direction to every row).",
        )
        expect(
            torch.equal(given, activation),
            f"your hook changed the activation it was given ({label})",
            hint="return `activation + ...` rather than editing it in place with `+=` or index assignment.",
        )
