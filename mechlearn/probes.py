"""Linear probes on the residual stream, their controls, and steering along a probe's directions.

Taught in chapter 04, after Li et al. (2023) "Emergent World Representations", Nanda (2023)
"Actually, Othello-GPT has a linear emergent world representation" and Hewitt & Liang (2019)
"Designing and Interpreting Probes with Control Tasks".

A probe is a small classifier trained to read a property of the world (here: what sits on
each board cell) from a model's activations. High probe accuracy shows that the property
can be decoded from the activations by a linear map, and that is all it shows:

- The information may be there without the model using it (correlation, not use).
- A probe may succeed by memorising its inputs rather than by reading a representation,
  so compare it with a baseline that predicts the most common class and with a control
  task whose labels depend only on the input type (Hewitt & Liang): a good probe is
  *selective*, far better on the real labels than on the control ones.
- Only an intervention shows use: move an activation along a probe's direction, and the
  model's output should change as if the world had changed (`class_direction`,
  `steering_hook`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.hook_points import HookPoint

from mechlearn.device import generator_for
from mechlearn.patching import HookFn
from mechlearn.validation import check_finite, check_number, check_same_device, check_token_ids, describe, is_int

__all__ = [
    "residual_stack",
    "ProbeConfig",
    "LinearProbe",
    "train_probe",
    "probe_accuracy",
    "majority_accuracy",
    "control_labels",
    "accuracy_by_layer",
    "class_direction",
    "steering_hook",
]


def _is_int_tensor(value: object) -> bool:
    return isinstance(value, Tensor) and not value.dtype.is_floating_point and not value.dtype.is_complex and value.dtype != torch.bool


def _check_activations(name: str, activations: object, ndim: int = 2) -> None:
    shape = "[n d_model]" if ndim == 2 else "[layer n d_model]"
    if not isinstance(activations, Tensor) or activations.ndim != ndim or not activations.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor of shape {shape}, got {describe(activations)}.")
    if activations.numel() == 0:
        raise ValueError(f"{name} is empty ({describe(activations)}), so there is nothing to probe.")
    check_finite(activations, name)


def _check_labels(name: str, labels: object, n_rows: int | None, n_classes: int) -> None:
    if not _is_int_tensor(labels) or labels.ndim != 2:
        raise TypeError(f"{name} must be an integer tensor of shape [n target], got {describe(labels)}.")
    if len(labels) == 0:
        raise ValueError(f"{name} has no rows, so there is nothing to score.")
    if n_rows is not None and labels.shape[0] != n_rows:
        raise ValueError(f"{name} has {labels.shape[0]} rows but the activations have {n_rows}: give one row of labels per activation.")
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{name} must hold classes in [0, {n_classes}), got values from {labels.min().item()} to {labels.max().item()}.")


def _check_n_classes(n_classes: object) -> None:
    if not is_int(n_classes) or n_classes < 2:
        raise ValueError(f"n_classes must be an int of at least 2, got {n_classes!r}.")


@torch.no_grad()
def residual_stack(model: torch.nn.Module, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer batch pos d_model"]:
    """The residual stream after 0, 1, ..., n_layers blocks, stacked (n_layers + 1 entries).

    Entry `l` is `blocks.{l}.hook_resid_pre` (entry 0 is the embedding) and the last entry is
    `blocks.{n_layers - 1}.hook_resid_post`, the stream the unembedding reads. The result
    stays on the model's device; for many games, call it on chunks and move each to the CPU.
    """
    if not _is_int_tensor(tokens) or tokens.ndim != 2:
        raise TypeError(f"tokens must be an integer tensor of shape [batch pos], got {describe(tokens)}.")
    check_token_ids(tokens, "tokens", model.cfg.d_vocab, model.cfg.n_ctx)
    tokens = tokens.to(next(model.parameters()).device)
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return torch.stack([cache[name] for name in names])


@dataclass(frozen=True)
class ProbeConfig:
    """How `train_probe` fits a probe. The defaults fit 60,000 rows of d_model 128 in about two seconds on one core."""

    lr: float = 3e-2  # for activations scaled to unit RMS, which train_probe does itself
    weight_decay: float = 1e-2
    batch_size: int = 4096
    max_epochs: int = 10
    patience: int = 2  # stop after this many epochs without a better validation loss
    validation_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_epochs", "patience"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"ProbeConfig.{name} must be an int of at least 1, got {getattr(self, name)!r}.")
        for name in ("lr", "weight_decay", "validation_fraction"):
            check_number(getattr(self, name), f"ProbeConfig.{name}", minimum=0)
        if not 0 < self.lr < math.inf:
            raise ValueError(f"ProbeConfig.lr must be a positive number, got {self.lr}.")
        if not is_int(self.seed):
            raise ValueError(f"ProbeConfig.seed must be an int, got {self.seed!r}.")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"ProbeConfig.weight_decay must be a non-negative number, got {self.weight_decay}.")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"ProbeConfig.validation_fraction must be strictly between 0 and 1, got {self.validation_fraction}.")


class LinearProbe(torch.nn.Module):
    """One linear classifier per target (e.g. per board cell), all applied at once.

    `validation_losses` holds the validation loss after each epoch once `train_probe` has run.
    """

    def __init__(self, d_model: int, n_targets: int, n_classes: int) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("n_targets", n_targets), ("n_classes", n_classes)):
            if not is_int(value) or value < 1:
                raise ValueError(f"LinearProbe needs {name} to be a positive int, got {value!r}.")
        # Logistic regression is convex, so starting from zero loses nothing and needs no seed.
        self.weight = torch.nn.Parameter(torch.zeros(d_model, n_targets, n_classes))
        self.bias = torch.nn.Parameter(torch.zeros(n_targets, n_classes))
        self.validation_losses: list[float] = []

    def forward(self, activations: Float[Tensor, "n d_model"]) -> Float[Tensor, "n target n_classes"]:
        # Shape and dtype only: this runs every training step, where a check of the values would wait for the device.
        if not isinstance(activations, Tensor) or activations.ndim != 2 or activations.shape[1] != len(self.weight):
            raise ValueError(f"activations must be a tensor of shape [n {len(self.weight)}] (the probe's d_model), got {describe(activations)}.")
        if not activations.is_floating_point():
            raise TypeError(f"activations must be a float tensor, got {describe(activations)}.")
        return einops.einsum(activations.to(self.weight.dtype), self.weight, "n d_model, d_model target c -> n target c") + self.bias


def _probe_loss(probe: LinearProbe, activations: Float[Tensor, "n d_model"], labels: Int[Tensor, "n target"]) -> Float[Tensor, ""]:
    """Cross-entropy averaged over rows and targets."""
    # cross_entropy wants the classes second; with a trailing target dimension it is also several times faster.
    return F.cross_entropy(einops.rearrange(probe(activations), "n target c -> n c target"), labels)


def _split_rows(n_rows: int, validation_fraction: float, generator: torch.Generator) -> tuple[Int[Tensor, "n_train"], Int[Tensor, "n_val"]]:
    """A random (train, validation) split of the row indices."""
    n_val = max(1, round(n_rows * validation_fraction))
    if n_rows - n_val < 1:
        raise ValueError(f"train_probe needs at least 2 rows of activations to hold some out for validation, got {n_rows}.")
    rows = torch.randperm(n_rows, generator=generator)
    return rows[n_val:], rows[:n_val]


def train_probe(
    activations: Float[Tensor, "n d_model"],
    labels: Int[Tensor, "n target"],
    n_classes: int,
    config: ProbeConfig = ProbeConfig(),
    progress: bool = False,
) -> LinearProbe:
    """Fit a `LinearProbe` that predicts `labels` from `activations`, with early stopping.

    AdamW on shuffled minibatches. `config.validation_fraction` of the rows are held out;
    training stops once their loss has not improved for `config.patience` epochs, and the
    probe comes back with the weights of its best epoch. Runs on the activations' device,
    deterministically given `config.seed`.
    """
    _check_activations("activations", activations)
    _check_n_classes(n_classes)
    _check_labels("labels", labels, activations.shape[0], n_classes)
    if not isinstance(config, ProbeConfig):
        raise TypeError(f"config must be a ProbeConfig, got {type(config).__name__}.")
    check_same_device("labels", labels, "activations", activations)
    activations = activations.float()  # the probe's dtype: float64 (or half) activations are cast, not refused
    # Adam's steps have a fixed size in weight units, so train on centred activations of unit RMS
    # (the same lr then suits every layer) and fold the shift and scale into the weights at the end.
    mean = activations.mean(dim=0)
    scale = (activations - mean).square().mean().sqrt().clamp_min(1e-8)
    activations = (activations - mean) / scale
    generator = generator_for("probes.split_and_shuffle", config.seed)
    train_rows, val_rows = (rows.to(activations.device) for rows in _split_rows(len(activations), config.validation_fraction, generator))
    probe = LinearProbe(activations.shape[1], labels.shape[1], n_classes).to(activations.device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best_loss, best_state, epochs_since_best = math.inf, copy.deepcopy(probe.state_dict()), 0
    bar = tqdm(range(config.max_epochs), desc="probe epochs", disable=not progress)
    for _ in bar:
        shuffled = train_rows[torch.randperm(len(train_rows), generator=generator).to(activations.device)]
        for batch in shuffled.split(config.batch_size):
            loss = _probe_loss(probe, activations[batch], labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val_loss = _probe_loss(probe, activations[val_rows], labels[val_rows]).item()
        probe.validation_losses.append(val_loss)
        bar.set_postfix(val_loss=f"{val_loss:.4f}")
        if val_loss < best_loss:
            best_loss, best_state, epochs_since_best = val_loss, copy.deepcopy(probe.state_dict()), 0
        else:
            epochs_since_best += 1
            if epochs_since_best >= config.patience:
                break
    probe.load_state_dict(best_state)
    with torch.no_grad():  # logits = ((x - mean) / scale) @ W + b = x @ (W / scale) + (b - mean @ W / scale)
        probe.weight /= scale
        probe.bias -= einops.einsum(mean, probe.weight, "d_model, d_model target c -> target c")
    return probe.eval()


def _check_probe_inputs(probe: object, activations: object, labels: object) -> None:
    if not isinstance(probe, LinearProbe):
        raise TypeError(f"probe must be a LinearProbe, got {type(probe).__name__}.")
    _check_activations("activations", activations)
    d_model, n_targets, n_classes = probe.weight.shape
    _check_labels("labels", labels, activations.shape[0], n_classes)
    check_same_device("activations", activations, "the probe", probe.weight)
    check_same_device("labels", labels, "the probe", probe.weight)
    if activations.shape[1] != d_model or labels.shape[1] != n_targets:
        raise ValueError(
            f"The probe reads d_model={d_model} and predicts {n_targets} targets, but the activations have "
            f"d_model={activations.shape[1]} and the labels {labels.shape[1]} targets: use activations and labels like the ones it was trained on."
        )


@torch.no_grad()
def probe_accuracy(probe: LinearProbe, activations: Float[Tensor, "n d_model"], labels: Int[Tensor, "n target"]) -> Float[Tensor, "target"]:
    """The fraction of rows on which the probe predicts each target's class correctly."""
    _check_probe_inputs(probe, activations, labels)
    return (probe(activations).argmax(dim=-1) == labels).float().mean(dim=0)


def majority_accuracy(
    train_labels: Int[Tensor, "n target"], test_labels: Int[Tensor, "m target"], n_classes: int
) -> Float[Tensor, "target"]:
    """The accuracy on `test_labels` of always predicting each target's most common class in `train_labels`.

    A probe is worth something only where it beats this baseline.
    """
    _check_n_classes(n_classes)
    _check_labels("train_labels", train_labels, None, n_classes)
    _check_labels("test_labels", test_labels, None, n_classes)
    check_same_device("test_labels", test_labels, "train_labels", train_labels)
    if train_labels.shape[1] != test_labels.shape[1] or len(train_labels) == 0:
        raise ValueError(
            f"train_labels ({tuple(train_labels.shape)}) and test_labels ({tuple(test_labels.shape)}) "
            "must have the same number of targets, and train_labels at least one row."
        )
    counts = F.one_hot(train_labels, n_classes).sum(dim=0)  # [target class]
    return (test_labels == counts.argmax(dim=-1)).float().mean(dim=0)


def control_labels(labels: Int[Tensor, "n target"], types: Int[Tensor, "n"], n_classes: int, seed: int = 0) -> Int[Tensor, "n target"]:
    """Hewitt & Liang's control task: labels that depend only on each row's type.

    Every distinct value in `types` (say the last move and the position, encoded as one int)
    gets, for each target, one random class drawn from that target's class frequencies in
    `labels`. The control labels have about the same distribution as the real ones but say
    nothing about the world, so a probe can fit them only by memorising types. Deterministic
    given `seed`.
    """
    _check_n_classes(n_classes)
    _check_labels("labels", labels, None, n_classes)
    if not _is_int_tensor(types) or types.shape != labels.shape[:1]:
        raise ValueError(f"types must be an integer tensor with one entry per row of labels ({len(labels)}), got {describe(types)}.")
    frequencies = F.one_hot(labels, n_classes).sum(dim=0).float().cpu()  # [target class]
    unique_types, type_of_row = types.cpu().unique(return_inverse=True)
    generator = generator_for("probes.control_labels", seed)
    class_of_type = torch.multinomial(frequencies, len(unique_types), replacement=True, generator=generator)  # [target type]
    return einops.rearrange(class_of_type[:, type_of_row], "target n -> n target").to(labels.device)


def accuracy_by_layer(
    stack_train: Float[Tensor, "layer n d_model"],
    labels_train: Int[Tensor, "n target"],
    stack_test: Float[Tensor, "layer m d_model"],
    labels_test: Int[Tensor, "m target"],
    n_classes: int,
    config: ProbeConfig = ProbeConfig(),
    progress: bool = True,
) -> Float[Tensor, "layer"]:
    """Train one probe per layer of `stack_train` and return its test accuracy, averaged over targets."""
    _check_activations("stack_train", stack_train, ndim=3)
    _check_activations("stack_test", stack_test, ndim=3)
    _check_n_classes(n_classes)
    _check_labels("labels_train", labels_train, stack_train.shape[1], n_classes)
    _check_labels("labels_test", labels_test, stack_test.shape[1], n_classes)
    if stack_train.shape[0] != stack_test.shape[0] or stack_train.shape[2] != stack_test.shape[2]:
        raise ValueError(
            f"stack_train {tuple(stack_train.shape)} and stack_test {tuple(stack_test.shape)} must have the same "
            "layers and d_model: take both from residual_stack of the same model."
        )
    accuracies = []
    for layer in tqdm(range(len(stack_train)), desc="layers", disable=not progress):
        probe = train_probe(stack_train[layer], labels_train, n_classes, config)
        accuracies.append(probe_accuracy(probe, stack_test[layer], labels_test).mean())
    return torch.stack(accuracies)


def class_direction(probe: LinearProbe, target: int, from_class: int, to_class: int) -> Float[Tensor, "d_model"]:
    """The unit vector that moves target `target` from `from_class` towards `to_class`.

    It points along `weight[:, target, to_class] - weight[:, target, from_class]`, so adding
    `scale` times it to an activation raises that target's `to_class` logit minus its
    `from_class` logit by exactly `scale * |weight[:, target, to_class] - weight[:, target, from_class]|`
    (the other targets' logits may move too: their directions need not be orthogonal).
    """
    if not isinstance(probe, LinearProbe):
        raise TypeError(f"probe must be a LinearProbe, got {type(probe).__name__}.")
    _, n_targets, n_classes = probe.weight.shape
    check_finite(probe.weight, "probe.weight")
    if not is_int(target) or not 0 <= target < n_targets:
        raise ValueError(f"target must be an int in [0, {n_targets}), got {target!r}.")
    for name, value in (("from_class", from_class), ("to_class", to_class)):
        if not is_int(value) or not 0 <= value < n_classes:
            raise ValueError(f"{name} must be an int in [0, {n_classes}), got {value!r}.")
    if from_class == to_class:
        raise ValueError(f"from_class and to_class are both {from_class}; pick two different classes.")
    difference = (probe.weight[:, target, to_class] - probe.weight[:, target, from_class]).detach()
    if difference.norm() == 0:
        raise ValueError("The probe does not tell these two classes apart (their weights are equal); train it first.")
    return difference / difference.norm()


def steering_hook(
    direction: Float[Tensor, "d_model"] | Float[Tensor, "batch d_model"],
    scale: float,
    positions: Int[Tensor, "k"] | Int[Tensor, "batch k"] | None = None,
) -> HookFn:
    """A hook for `blocks.{l}.hook_resid_pre` (or any [batch pos d_model] hook) that adds `scale * direction`.

    - `direction` is one vector for every sequence, or one row per sequence (when each game
      should flip a different cell).
    - `positions` are the positions to edit: None for all, a 1-D tensor for the same
      positions in every sequence, or a [batch k] tensor for k positions per sequence
      (`positions[:, None]` for one each).

    The hook returns an edited copy; the activation it is given is left as it was.
    """
    if not isinstance(direction, Tensor) or direction.ndim not in (1, 2) or not direction.dtype.is_floating_point:
        raise TypeError(f"direction must be a float tensor of shape [d_model] or [batch d_model], got {describe(direction)}.")
    check_finite(direction, "direction")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite number, got {scale!r}.")
    if positions is not None and (not _is_int_tensor(positions) or positions.ndim not in (1, 2)):
        raise TypeError(f"positions must be None or an integer tensor of shape [k] or [batch k], got {describe(positions)}.")

    def hook(activation: Float[Tensor, "batch pos d_model"], hook: HookPoint) -> Float[Tensor, "batch pos d_model"]:
        batch, n_pos, d_model = activation.shape
        if direction.shape[-1] != d_model:
            raise ValueError(f"direction has size {direction.shape[-1]} but the activation at {hook.name} has d_model={d_model}.")
        for name, value in (("direction", direction), ("positions", positions)):
            if value is not None and value.ndim == 2 and value.shape[0] != batch:
                raise ValueError(f"{name} has {value.shape[0]} rows but the batch at {hook.name} has {batch} sequences.")
        if positions is not None and positions.numel() and (positions.min() < 0 or positions.max() >= n_pos):
            raise ValueError(f"positions must lie in [0, {n_pos}) at {hook.name}, got {positions.tolist()}.")
        if positions is None:
            edited = torch.ones(batch, n_pos, device=activation.device)
        else:
            edited = F.one_hot(positions.to(activation.device).long().expand(batch, -1), n_pos).amax(dim=1)
        steer = scale * direction.to(activation).expand(batch, -1)
        return activation + einops.einsum(edited.to(activation), steer, "batch pos, batch d_model -> batch pos d_model")

    return hook
