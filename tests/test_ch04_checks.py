"""Chapter 04 checks pass on the library's answers and fail, with a hint, on typical mistakes."""

import pytest
import torch
import torch.nn.functional as F
from check_helpers import expect_failure

from mechlearn import probes
from mechlearn.checks import ch04
from mechlearn.probes import LinearProbe

REFERENCE_ANSWERS = [
    (ch04.check_residual_stack, probes.residual_stack),
    (ch04.check_train_probe, probes.train_probe),
    (ch04.check_accuracy_by_layer, lambda *args: probes.accuracy_by_layer(*args, progress=False)),
    (ch04.check_control_labels, probes.control_labels),
    (ch04.check_class_direction, probes.class_direction),
    (ch04.check_steering_hook, probes.steering_hook),
]


@pytest.mark.parametrize("check, answer", REFERENCE_ANSWERS, ids=lambda x: getattr(x, "__name__", ""))
def test_check_passes_on_the_library(check, answer, capsys) -> None:
    check(answer)
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("check", [check for check, _ in REFERENCE_ANSWERS], ids=lambda check: check.__name__)
def test_a_stub_fails_as_not_implemented(check) -> None:
    def stub(*args, **kwargs):
        raise NotImplementedError("exercise 4")

    assert "not implemented" in expect_failure(check, stub, hint_contains="NotImplementedError")


# --- residual_stack -----------------------------------------------------------------------


def cached_stack(model, tokens, names, dim=0):
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return torch.stack([cache[name] for name in names], dim=dim)


@pytest.mark.mistake
def test_residual_stack_without_the_final_resid_post() -> None:
    def resid_pre_only(model, tokens):
        return cached_stack(model, tokens, [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)])

    expect_failure(ch04.check_residual_stack, resid_pre_only, hint_contains="hook_resid_post")


@pytest.mark.mistake
def test_residual_stack_without_the_embedding() -> None:
    def resid_post_only(model, tokens):
        return cached_stack(model, tokens, [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)])

    expect_failure(ch04.check_residual_stack, resid_post_only, hint_contains="n_layers + 1")


@pytest.mark.mistake
def test_residual_stack_along_the_batch_dimension() -> None:
    def stacked_second(model, tokens):
        n_layers = model.cfg.n_layers
        names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]
        return cached_stack(model, tokens, names, dim=1)

    expect_failure(ch04.check_residual_stack, stacked_second, hint_contains="another order")


def test_residual_stack_from_accumulated_resid_passes(capsys) -> None:
    """Another correct answer: the cache's own stack of the stream after each block."""

    def accumulated(model, tokens):
        _, cache = model.run_with_cache(tokens)
        return cache.accumulated_resid()

    ch04.check_residual_stack(accumulated)
    assert "✓" in capsys.readouterr().out


# --- train_probe ----------------------------------------------------------------------------


def adam_trained(loss_of):
    """A learner's train_probe: full-batch Adam on the loss `loss_of(logits, labels)`."""

    def train_probe(activations, labels, n_classes):
        probe = LinearProbe(activations.shape[1], labels.shape[1], n_classes)
        optimizer = torch.optim.Adam(probe.parameters(), lr=0.05)
        for _ in range(50):
            loss = loss_of(probe(activations), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return probe

    return train_probe


def test_a_plain_learner_loop_passes(capsys) -> None:
    """No normalisation, early stopping or minibatches: the check asks for a probe that reads, not for our recipe."""
    ch04.check_train_probe(adam_trained(lambda logits, labels: F.cross_entropy(logits.permute(0, 2, 1), labels)))
    assert "✓" in capsys.readouterr().out


@pytest.mark.mistake
def test_train_probe_returning_an_untrained_probe() -> None:
    def untrained(activations, labels, n_classes):
        return LinearProbe(activations.shape[1], labels.shape[1], n_classes)

    message = expect_failure(ch04.check_train_probe, untrained, hint_contains="optimizer.step()")
    assert "majority-class baseline" in message


@pytest.mark.mistake
def test_train_probe_with_the_classes_last() -> None:
    """With 5 targets and 3 classes, cross_entropy reads the targets as classes and refuses the labels' shape."""
    message = expect_failure(ch04.check_train_probe, adam_trained(F.cross_entropy))
    assert "raised RuntimeError" in message


@pytest.mark.mistake
def test_train_probe_reshaping_instead_of_permuting() -> None:
    """`reshape` to [n class target] runs, but scrambles which logit belongs to which class: it learns garbage."""

    def scrambled(logits, labels):
        n, n_targets, n_classes = logits.shape
        return F.cross_entropy(logits.reshape(n, n_classes, n_targets), labels)

    expect_failure(ch04.check_train_probe, adam_trained(scrambled), hint_contains="class dimension")


@pytest.mark.mistake
def test_train_probe_returning_the_weights() -> None:
    def weights(activations, labels, n_classes):
        return probes.train_probe(activations, labels, n_classes).weight

    message = expect_failure(ch04.check_train_probe, weights, hint_contains="return probe")
    assert "returned Parameter, expected a LinearProbe" in message


@pytest.mark.mistake
def test_train_probe_normalising_in_place() -> None:
    """`-=` and `/=` on the activations train a fine probe, and spoil the caller's activations."""

    def in_place(activations, labels, n_classes):
        mean = activations.mean(dim=0)
        activations -= mean
        scale = activations.square().mean().sqrt()
        activations /= scale
        probe = probes.train_probe(activations, labels, n_classes)
        with torch.no_grad():
            probe.weight /= scale
            probe.bias -= torch.einsum("d,dtc->tc", mean, probe.weight)
        return probe

    message = expect_failure(ch04.check_train_probe, in_place, hint_contains="x = x - m")
    assert "changed its argument `activations` in place" in message


@pytest.mark.mistake
def test_train_probe_with_the_classes_found_in_the_labels() -> None:
    def classes_seen(activations, labels, n_classes):
        return probes.train_probe(activations, labels, int(labels.max()) + 1)

    message = expect_failure(ch04.check_train_probe, classes_seen, hint_contains="n_classes as given")
    assert "expected (16, 5, 4)" in message


def normalising(fold_scale=True):
    """A learner's train_probe: it trains on centred activations of unit RMS, then folds the shift (and the scale) back."""

    def train_probe(activations, labels, n_classes):
        mean = activations.mean(dim=0)
        scale = (activations - mean).square().mean().sqrt()
        probe = probes.train_probe((activations - mean) / scale, labels, n_classes)
        with torch.no_grad():
            if fold_scale:
                probe.weight /= scale
            probe.bias -= torch.einsum("d,dtc->tc", mean, probe.weight)
        return probe

    return train_probe


def test_train_probe_normalising_and_folding_back_passes(capsys) -> None:
    ch04.check_train_probe(normalising())
    assert "✓" in capsys.readouterr().out


@pytest.mark.mistake
def test_train_probe_without_folding_the_scale_back() -> None:
    """The weights stay those for unit-RMS activations: 4 times too large against the bias, so the class bias loses."""
    message = expect_failure(ch04.check_train_probe, normalising(fold_scale=False), hint_contains="weight / scale")
    assert "accuracy 0.80" in message


# --- accuracy_by_layer ------------------------------------------------------------------------


@pytest.mark.mistake
def test_accuracy_by_layer_reusing_the_first_layers_probe() -> None:
    def first_probe_everywhere(stack_train, labels_train, stack_test, labels_test, n_classes):
        probe = probes.train_probe(stack_train[0], labels_train, n_classes)
        return torch.stack([probes.probe_accuracy(probe, layer, labels_test).mean() for layer in stack_test])

    expect_failure(ch04.check_accuracy_by_layer, first_probe_everywhere, hint_contains="stack_train[layer]")


@pytest.mark.mistake
def test_accuracy_by_layer_returning_a_list() -> None:
    def as_list(stack_train, labels_train, stack_test, labels_test, n_classes):
        return [
            probes.probe_accuracy(probes.train_probe(train, labels_train, n_classes), test, labels_test).mean().item()
            for train, test in zip(stack_train, stack_test)
        ]

    message = expect_failure(ch04.check_accuracy_by_layer, as_list, hint_contains="torch.stack")
    assert "returned list" in message


@pytest.mark.mistake
def test_accuracy_by_layer_per_target() -> None:
    def per_target(stack_train, labels_train, stack_test, labels_test, n_classes):
        return torch.stack(
            [
                probes.probe_accuracy(probes.train_probe(train, labels_train, n_classes), test, labels_test)
                for train, test in zip(stack_train, stack_test)
            ]
        )

    message = expect_failure(ch04.check_accuracy_by_layer, per_target, hint_contains=".mean()")
    assert "(3, 5)" in message


@pytest.mark.mistake
def test_accuracy_by_layer_scored_on_the_training_rows() -> None:
    def on_train(stack_train, labels_train, stack_test, labels_test, n_classes):
        return torch.stack(
            [probes.probe_accuracy(probes.train_probe(train, labels_train, n_classes), train, labels_train).mean() for train in stack_train]
        )

    expect_failure(ch04.check_accuracy_by_layer, on_train, hint_contains="stack_test[layer]")


@pytest.mark.mistake
def test_accuracy_by_layer_trained_on_the_test_rows() -> None:
    def on_test(stack_train, labels_train, stack_test, labels_test, n_classes):
        return torch.stack(
            [probes.probe_accuracy(probes.train_probe(test, labels_test, n_classes), test, labels_test).mean() for test in stack_test]
        )

    expect_failure(ch04.check_accuracy_by_layer, on_test, hint_contains="stack_train[layer]")


# --- control_labels ---------------------------------------------------------------------------


def class_frequencies(labels, n_classes):
    return F.one_hot(labels, n_classes).sum(dim=0).float()  # [target class]


@pytest.mark.mistake
def test_control_labels_per_row() -> None:
    def per_row(labels, types, n_classes, seed=0):
        generator = torch.Generator().manual_seed(seed)
        return torch.multinomial(class_frequencies(labels, n_classes), len(labels), replacement=True, generator=generator).T

    expect_failure(ch04.check_control_labels, per_row, hint_contains="types.unique")


@pytest.mark.mistake
def test_control_labels_from_the_global_rng() -> None:
    def global_rng(labels, types, n_classes, seed=0):
        unique_types, type_of_row = types.unique(return_inverse=True)
        classes = torch.multinomial(class_frequencies(labels, n_classes), len(unique_types), replacement=True)
        return classes[:, type_of_row].T

    expect_failure(ch04.check_control_labels, global_rng, hint_contains="manual_seed")


@pytest.mark.mistake
def test_control_labels_with_a_fixed_seed() -> None:
    def seed_zero(labels, types, n_classes, seed=0):
        unique_types, type_of_row = types.unique(return_inverse=True)
        generator = torch.Generator().manual_seed(0)
        classes = torch.multinomial(class_frequencies(labels, n_classes), len(unique_types), replacement=True, generator=generator)
        return classes[:, type_of_row].T

    expect_failure(ch04.check_control_labels, seed_zero, hint_contains="manual_seed")


def uniform_per_type(labels, types, n_classes, seed=0):
    unique_types, type_of_row = types.unique(return_inverse=True)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_classes, (len(unique_types), labels.shape[1]), generator=generator)[type_of_row]


@pytest.mark.mistake
def test_control_labels_with_uniform_classes() -> None:
    expect_failure(ch04.check_control_labels, uniform_per_type, hint_contains="THAT target")


@pytest.mark.mistake
def test_control_labels_with_the_frequencies_of_all_targets_pooled() -> None:
    def pooled(labels, types, n_classes, seed=0):
        unique_types, type_of_row = types.unique(return_inverse=True)
        generator = torch.Generator().manual_seed(seed)
        frequencies = F.one_hot(labels, n_classes).sum(dim=(0, 1)).float()  # [class], not [target class]
        classes = torch.multinomial(frequencies, len(unique_types) * labels.shape[1], replacement=True, generator=generator)
        return classes.reshape(len(unique_types), labels.shape[1])[type_of_row]

    expect_failure(ch04.check_control_labels, pooled, hint_contains="pooled")


def per_target(index_of=lambda types, type_of_row: type_of_row, seed_per_target=False):
    """A learner's control_labels that draws one target at a time, each from that target's class counts."""

    def control_labels(labels, types, n_classes, seed=0):
        unique_types, type_of_row = types.unique(return_inverse=True)
        counts = class_frequencies(labels, n_classes)
        generator = torch.Generator().manual_seed(seed)
        classes = []
        for target_counts in counts:
            if seed_per_target:
                generator = torch.Generator().manual_seed(seed)
            classes.append(torch.multinomial(target_counts, len(unique_types), replacement=True, generator=generator))
        return torch.stack(classes)[:, index_of(types, type_of_row)].T

    return control_labels


def test_control_labels_one_target_at_a_time_passes(capsys) -> None:
    """Another correct answer: a loop over the targets, all drawn from one generator."""
    ch04.check_control_labels(per_target())
    assert "✓" in capsys.readouterr().out


@pytest.mark.mistake
def test_control_labels_indexing_with_the_types_themselves() -> None:
    """`classes[:, types]` works only while the types happen to be 0..n_types-1."""
    message = expect_failure(ch04.check_control_labels, per_target(index_of=lambda types, _: types))
    assert "raised IndexError" in message


@pytest.mark.mistake
def test_control_labels_reseeding_for_every_target() -> None:
    message = expect_failure(ch04.check_control_labels, per_target(seed_per_target=True), hint_contains="re-seeding")
    assert "for independent draws" in message


@pytest.mark.mistake
def test_control_labels_drawn_from_each_types_own_rows() -> None:
    """Class counts per (type, target): the control labels echo the real ones."""

    def per_type(labels, types, n_classes, seed=0):
        unique_types, type_of_row = types.unique(return_inverse=True)
        counts = torch.zeros(len(unique_types), labels.shape[1], n_classes).index_add_(0, type_of_row, F.one_hot(labels, n_classes).float())
        generator = torch.Generator().manual_seed(seed)
        classes = torch.multinomial(counts.flatten(0, 1), 1, generator=generator).view(len(unique_types), labels.shape[1])
        return classes[type_of_row]

    message = expect_failure(ch04.check_control_labels, per_type, hint_contains="ALL rows")
    assert "(chance)" in message


@pytest.mark.mistake
def test_control_labels_with_torch_manual_seed() -> None:
    def global_seed(labels, types, n_classes, seed=0):
        torch.manual_seed(seed)
        unique_types, type_of_row = types.unique(return_inverse=True)
        return torch.multinomial(class_frequencies(labels, n_classes), len(unique_types), replacement=True)[:, type_of_row].T

    state = torch.random.get_rng_state()
    message = expect_failure(ch04.check_control_labels, global_seed, hint_contains="torch.manual_seed")
    torch.random.set_rng_state(state)
    assert "global random state" in message


# --- class_direction --------------------------------------------------------------------------


@pytest.mark.mistake
def test_class_direction_from_minus_to() -> None:
    def flipped(probe, target, from_class, to_class):
        difference = probe.weight[:, target, from_class] - probe.weight[:, target, to_class]
        return (difference / difference.norm()).detach()

    expect_failure(ch04.check_class_direction, flipped, hint_contains="to minus from")


@pytest.mark.mistake
def test_class_direction_not_normalised() -> None:
    def raw(probe, target, from_class, to_class):
        return (probe.weight[:, target, to_class] - probe.weight[:, target, from_class]).detach()

    expect_failure(ch04.check_class_direction, raw, hint_contains="norm")


@pytest.mark.mistake
def test_class_direction_normalised_over_the_targets() -> None:
    def over_targets(probe, target, from_class, to_class):
        differences = probe.weight[:, :, to_class] - probe.weight[:, :, from_class]  # [d_model target]
        return (differences / differences.norm(dim=1, keepdim=True))[:, target].detach()

    expect_failure(ch04.check_class_direction, over_targets, hint_contains="norm")


@pytest.mark.mistake
def test_class_direction_not_detached() -> None:
    def attached(probe, target, from_class, to_class):
        difference = probe.weight[:, target, to_class] - probe.weight[:, target, from_class]
        return difference / difference.norm()

    message = expect_failure(ch04.check_class_direction, attached, hint_contains=".detach()")
    assert "still requires grad" in message


@pytest.mark.mistake
def test_class_direction_editing_the_probe_in_place() -> None:
    def in_place(probe, target, from_class, to_class):
        difference = probe.weight.detach()[:, target, to_class]  # a view of the weights
        difference -= probe.weight.detach()[:, target, from_class]
        difference /= difference.norm()
        return difference

    message = expect_failure(ch04.check_class_direction, in_place, hint_contains="shares its storage")
    assert "changed the probe's weights" in message


# --- steering_hook ----------------------------------------------------------------------------


@pytest.mark.mistake
def test_steering_hook_editing_in_place() -> None:
    def in_place(direction, scale, positions=None):
        def hook(activation, hook):
            batch, n_pos, _ = activation.shape
            steer = scale * direction.expand(batch, -1)
            chosen = torch.arange(n_pos).expand(batch, -1) if positions is None else positions.expand(batch, -1)
            for row in range(batch):
                activation[row, chosen[row]] += steer[row]
            return activation

        return hook

    message = expect_failure(ch04.check_steering_hook, in_place, hint_contains="in place")
    assert "changed the activation it was given" in message


@pytest.mark.mistake
def test_steering_hook_ignoring_positions() -> None:
    def everywhere(direction, scale, positions=None):
        def hook(activation, hook):
            return activation + scale * direction.expand(activation.shape[0], -1)[:, None, :]

        return hook

    message = expect_failure(ch04.check_steering_hook, everywhere, hint_contains="only at the chosen positions")
    assert "positions [0, 3]" in message


@pytest.mark.mistake
def test_steering_hook_without_the_scale() -> None:
    def unscaled(direction, scale, positions=None):
        def hook(activation, hook):
            batch, n_pos, _ = activation.shape
            chosen = torch.ones(batch, n_pos) if positions is None else F.one_hot(positions.expand(batch, -1), n_pos).amax(dim=1)
            return activation + chosen[:, :, None] * direction.expand(batch, -1)[:, None, :]

        return hook

    message = expect_failure(ch04.check_steering_hook, unscaled)
    assert "every position" in message


def index_added(direction, scale, positions=None, first_column_only=False):
    """A learner's steering hook: a copy of the activation with the steer added by advanced indexing."""

    def hook(activation, hook):
        batch, n_pos, _ = activation.shape
        steer = scale * direction.expand(batch, -1)  # [batch d_model]
        chosen = torch.arange(n_pos).expand(batch, -1) if positions is None else positions.expand(batch, -1)
        if first_column_only:
            chosen = chosen[:, :1]
        steered = activation.clone()
        steered[torch.arange(batch)[:, None], chosen] += steer[:, None, :]
        return steered

    return hook


def test_steering_hook_by_indexing_a_copy_passes(capsys) -> None:
    ch04.check_steering_hook(index_added)
    assert "✓" in capsys.readouterr().out


@pytest.mark.mistake
def test_steering_hook_with_one_position_per_sequence_only() -> None:
    """`positions[:, 0]` is right while every sequence has one position, and drops the rest of [batch k]."""

    def first_only(direction, scale, positions=None):
        return index_added(direction, scale, positions, first_column_only=positions is not None and positions.ndim == 2)

    message = expect_failure(ch04.check_steering_hook, first_only, hint_contains="only at the chosen positions")
    assert "two positions per sequence" in message


@pytest.mark.mistake
def test_steering_hook_scaling_the_direction_in_place() -> None:
    def scaled_in_place(direction, scale, positions=None):
        def hook(activation, hook):
            direction.mul_(scale)  # right on the first call, and the direction is scaled again on the next
            return index_added(direction, 1.0, positions)(activation, hook)

        return hook

    message = expect_failure(ch04.check_steering_hook, scaled_in_place, hint_contains="not `x -= mean`")
    assert "changed its argument `direction` in place" in message


@pytest.mark.mistake
def test_steering_hook_broadcasting_the_direction_over_positions() -> None:
    """`activation + scale * direction` is right for one direction, and fails for one per sequence."""

    def broadcast(direction, scale, positions=None):
        if positions is not None:
            return index_added(direction, scale, positions)
        return lambda activation, hook: activation + scale * direction

    message = expect_failure(ch04.check_steering_hook, broadcast)
    assert "raised RuntimeError" in message
