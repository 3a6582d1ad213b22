"""Checks for chapter 04, probing a world model.

Probes are graded on data whose answer is planted: activations are Gaussian, and each
target's label is the argmax of a known linear map of them, so a working probe must reach
high held-out accuracy, and a probe that never trained stays at the majority baseline.
Layer sweeps get one layer with the planted structure in both its training and test rows,
and two with it on one side only. Control labels are checked statistically, on labels that
lean on sparse type ids. The directions and the steering hook are compared with
`mechlearn.probes` on the same inputs; train_probe, class_direction and steering_hook must
also leave their arguments as they were.
"""

from __future__ import annotations

import copy
import functools

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechlearn import probes
from mechlearn.checks.core import call_learner, call_learner_read_only, check, expect, expect_tensor
from mechlearn.models import ModelConfig, make_model
from mechlearn.tasks import OthelloTask

N_CLASSES, N_TARGETS, D_MODEL = 3, 5, 16


class Planted:
    """Activations and the labels a known linear map assigns to them, split into train and test.

    The activations are off-centre and scaled, and the map has a bias per class, so that a
    probe trained on normalised activations reads the labels only if both the shift and the
    scale are folded back into it: without the scale, its weights outweigh its bias 4 to 1.
    """

    def __init__(self, n_rows: int = 40_000, seed: int = 0, informative: bool = True) -> None:
        generator = torch.Generator().manual_seed(seed)
        activations = 3.0 + 4.0 * torch.randn(n_rows, D_MODEL, generator=generator)
        readout = torch.randn(D_MODEL, N_TARGETS, N_CLASSES, generator=generator)
        class_bias = 2.0 * torch.randn(N_TARGETS, N_CLASSES, generator=generator)
        if informative:
            labels = (torch.einsum("nd,dtc->ntc", (activations - 3.0) / 4.0, readout) + class_bias).argmax(dim=-1)
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


def _expect_untouched(name: str, given: dict[str, tuple[Tensor, Tensor]]) -> None:
    """Each argument the learner was given (a copy) still equals its original."""
    for argument, (passed, original) in given.items():
        expect(
            torch.equal(passed, original),
            f"`{name}` changed its argument `{argument}` in place",
            hint="work on new tensors (`x = x - mean`, not `x -= mean`): the caller still needs its own.",
        )


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
    # One class more than the labels use: the probe's size must come from n_classes, not from labels.max() + 1.
    n_classes = N_CLASSES + 1
    probe = _as_probe(
        call_learner_read_only(train_probe, data.train_activations, data.train_labels, n_classes), "train_probe"
    )
    expected_shape = (D_MODEL, N_TARGETS, n_classes)
    expect(
        tuple(probe.weight.shape) == expected_shape,
        f"with n_classes={n_classes}, the probe's weight has shape {tuple(probe.weight.shape)}, expected {expected_shape}",
        hint="LinearProbe(d_model, n_targets, n_classes): d_model = activations.shape[1], n_targets = labels.shape[1], "
        "and n_classes as given (a class may be missing from the labels).",
    )
    accuracy = probes.probe_accuracy(probe, data.test_activations, data.test_labels).mean().item()
    baseline = probes.majority_accuracy(data.train_labels, data.test_labels, n_classes).mean().item()
    expect(
        accuracy >= 0.9,
        f"your probe reads held-out planted labels with accuracy {accuracy:.2f}, expected at least 0.90 "
        f"(the majority-class baseline is {baseline:.2f})",
        hint="does the loop update the probe (optimizer.step() after loss.backward())? Is the cross-entropy over "
        "the class dimension (F.cross_entropy wants the classes second: [n class target])? Does it return the "
        "best-validation weights, not the initial ones? If it trains on normalised activations, does it fold both "
        "back into the probe (weight / scale, then bias minus mean @ weight)?",
    )


@check
def check_accuracy_by_layer(accuracy_by_layer) -> None:
    """One probe per layer, scored on held-out rows: high only where the held-out rows carry the structure too."""
    readable, noise = planted(), Planted(seed=1, informative=False)
    # Layer 0 has the structure in its test rows only, layer 2 in its training rows only: a probe trained on
    # the test rows would look good on layer 0, and one scored on its training rows on layer 2.
    stack_train = torch.stack([noise.train_activations, readable.train_activations, readable.train_activations])
    stack_test = torch.stack([readable.test_activations, readable.test_activations, noise.test_activations])
    result = call_learner(accuracy_by_layer, stack_train, readable.train_labels.clone(), stack_test, readable.test_labels.clone(), N_CLASSES)
    expect(
        isinstance(result, Tensor) and tuple(result.shape) == (3,),
        f"accuracy_by_layer returned {type(result).__name__} {tuple(getattr(result, 'shape', ()))}, expected a tensor of shape (3,): one accuracy per layer",
        hint="train one probe per layer, take its probe_accuracy(...).mean() on that layer's test activations, and torch.stack them.",
    )
    accuracies = [round(value, 2) for value in result.tolist()]
    chance = probes.majority_accuracy(readable.train_labels, readable.test_labels, N_CLASSES).mean().item() + 0.1
    expect(
        accuracies[1] >= 0.9 and accuracies[0] <= chance and accuracies[2] <= chance,
        f"expected a high accuracy (>= 0.90) only on layer 1, where both the training and the held-out activations "
        f"carry the labels, and at most {chance:.2f} (the majority baseline + 0.10) on layers 0 and 2, where one of "
        f"them is noise; got {accuracies}",
        hint="train each layer's probe on stack_train[layer] and score it on stack_test[layer] (never on the rows it was trained on), "
        "with the same labels for every layer.",
    )


N_TYPES, N_ROWS = 500, 30_000
# Each target has its own skewed class mix, so drawing classes uniformly, or from the mix of all targets, shows.
CLASS_MIX = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])


def _typed_labels() -> tuple[Tensor, Tensor, Tensor]:
    """(labels [n target], types [n], type_of_row [n]): labels with CLASS_MIX per target that lean on each row's type.

    Types are sparse ids in random order, each on a different number of rows, so that a type
    is not its own index; a row keeps its type's class with probability 0.7, so that classes
    drawn from a type's own rows echo the real labels.
    """
    generator = torch.Generator().manual_seed(0)
    type_ids = torch.randperm(100_000, generator=generator)[:N_TYPES]
    type_of_row = torch.randint(0, N_TYPES, (N_ROWS,), generator=generator)
    class_of_type = torch.multinomial(CLASS_MIX, N_TYPES, replacement=True, generator=generator)  # [target type]
    fresh = torch.multinomial(CLASS_MIX, N_ROWS, replacement=True, generator=generator)  # [target n]
    keeps_type_class = torch.rand(N_ROWS, generator=generator) < 0.7
    labels = torch.where(keeps_type_class, class_of_type[:, type_of_row], fresh).T
    return labels, type_ids[type_of_row], type_of_row


def _agreement(a: Int[Tensor, "n"], b: Int[Tensor, "n"]) -> tuple[float, float]:
    """How often a and b agree, and how often they would if drawn independently with their own class mixes."""
    mix_a, mix_b = (torch.nn.functional.one_hot(x, N_CLASSES).float().mean(dim=0) for x in (a, b))
    return (a == b).float().mean().item(), (mix_a * mix_b).sum().item()


@check
def check_control_labels(control_labels) -> None:
    """Control labels depend only on the type, keep each target's class mix, are drawn independently, and are seeded."""
    labels, types, type_of_row = _typed_labels()
    global_state = torch.random.get_rng_state()
    result = call_learner(control_labels, labels.clone(), types.clone(), N_CLASSES, 0)
    expect(
        torch.equal(torch.random.get_rng_state(), global_state),
        "control_labels changed torch's global random state",
        hint="make a torch.Generator().manual_seed(seed) and pass it to torch.multinomial: drawing without it, or "
        "calling torch.manual_seed, disturbs every other random draw in the notebook.",
    )
    expected_shape = tuple(labels.shape)
    expect(
        isinstance(result, Tensor) and tuple(result.shape) == expected_shape and not result.dtype.is_floating_point,
        f"control_labels returned {type(result).__name__} {tuple(getattr(result, 'shape', ()))}, expected an integer tensor of shape {expected_shape}",
        hint="return one class per row and target, as integers (torch.multinomial gives longs).",
    )
    first_row = torch.full((N_TYPES,), N_ROWS).scatter_reduce(0, type_of_row, torch.arange(N_ROWS), "amin")
    per_type = result[first_row]  # [type target]
    expect(
        torch.equal(result, per_type[type_of_row]),
        "rows of the same type got different control labels",
        hint="draw one class per (type, target), then look it up for each row: `classes[:, type_of_row]` with "
        "`unique_types, type_of_row = types.unique(return_inverse=True)` (the types are ids, not indices).",
    )
    control_mix = torch.nn.functional.one_hot(per_type, N_CLASSES).float().mean(dim=0)  # [target class]
    worst = (control_mix - CLASS_MIX).abs().max().item()
    expect(
        worst < 0.12,
        f"the control labels' class mix per target is off from the real labels' by up to {worst:.2f}",
        hint="draw each target's classes from THAT target's class counts in `labels` (F.one_hot(labels, n_classes).sum(dim=0) "
        "is [target class]), not uniformly and not from all targets pooled.",
    )
    for target in range(N_TARGETS):
        agree, by_chance = _agreement(result[:, target], labels[:, target])
        expect(
            agree - by_chance < 0.1,
            f"target {target}'s control labels agree with its real labels on {agree:.0%} of the rows, expected about "
            f"{by_chance:.0%} (chance)",
            hint="draw from each target's class counts over ALL rows, not over the rows of each type: control labels "
            "must say nothing about the real ones.",
        )
        for other in range(target + 1, N_TARGETS):
            agree, by_chance = _agreement(per_type[:, target], per_type[:, other])
            expect(
                abs(agree - by_chance) < 0.1,
                f"targets {target} and {other} got the same control class for {agree:.0%} of the types, expected about "
                f"{by_chance:.0%} for independent draws",
                hint="seed one generator once and draw every target's classes from it: re-seeding for each target "
                "repeats the same random numbers.",
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
    """The unit vector from one class's weights to another's, compared with mechlearn.probes; the probe is left alone."""
    probe = copy.deepcopy(trained_planted_probe())  # a copy: a learner's in-place edit must not spoil later checks
    weight = probe.weight.detach().clone()
    for target, from_class, to_class in [(0, 1, 2), (3, 2, 0), (4, 0, 1)]:
        expected = probes.class_direction(probe, target, from_class, to_class)
        direction = call_learner(class_direction, probe, target, from_class, to_class)
        expect(
            torch.equal(probe.weight, weight),
            "class_direction changed the probe's weights",
            hint="`.detach()` shares its storage with the weights, so `difference -= ...` or `/=` on it edits the probe: "
            "compute new tensors (`a - b`, `d / d.norm()`) instead.",
        )
        what = f"the direction of target {target} from class {from_class} to class {to_class}"
        expect_tensor(
            direction,
            expected,
            what=what,
            hint="take probe.weight[:, target, to_class] - probe.weight[:, target, from_class] (to minus from), "
            "detach it, and divide by its norm.",
        )
        expect(
            not direction.requires_grad,
            f"{what} still requires grad: it is tied to the probe's training graph",
            hint="`.detach()` the difference of the weights before normalising it.",
        )


@check
def check_steering_hook(steering_hook) -> None:
    """The hook adds scale * direction at the chosen positions only, and leaves its input and arguments alone."""
    generator = torch.Generator().manual_seed(0)
    activation = torch.randn(2, 5, D_MODEL, generator=generator)
    one_direction, per_row = torch.randn(D_MODEL, generator=generator), torch.randn(2, D_MODEL, generator=generator)
    cases = [
        (one_direction, 2.0, None, "one direction at every position"),
        (one_direction, -1.5, torch.tensor([0, 3]), "one direction at positions [0, 3]"),
        (per_row, 0.5, torch.tensor([[1], [4]]), "one direction and one position per sequence"),
        (per_row, -0.5, None, "one direction per sequence, at every position"),
        (per_row, 1.5, torch.tensor([[0, 2], [4, 1]]), "one direction and two positions per sequence"),
    ]
    for direction, scale, positions, label in cases:
        arguments = {"direction": (direction.clone(), direction)}
        if positions is not None:
            arguments["positions"] = (positions.clone(), positions)
        hook = call_learner(steering_hook, arguments["direction"][0], scale, arguments.get("positions", (None,))[0])
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
        _expect_untouched("steering_hook", arguments)
