"""Toy models of superposition (chapter 05), after Elhage et al. (2022) "Toy Models of Superposition".

A toy model squeezes `n_features` sparse features through `n_hidden < n_features` dimensions
and tries to read them back out: h = W x, x' = ReLU(W^T h + b). Each feature i gets a
direction W[:, i] in the hidden space. When features are dense the model keeps the most
important `n_hidden` of them, each in its own orthogonal dimension, and drops the rest, as
PCA would. When features are sparse it stores more features than it has dimensions, in
directions that are not orthogonal (superposition), and the ReLU filters out the
interference, which two features only cause when both are active at once.

Many small models train at once as the "instances" of one batched model, each with its own
feature probabilities and importances, so a whole sweep is one training run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechlearn.device import generator_for
from mechlearn.validation import check_finite, check_number, check_same_device, check_tensor, describe, is_int

__all__ = [
    "ToyModelConfig",
    "ToyModel",
    "sample_features",
    "instance_losses",
    "importance_weighted_loss",
    "ToyTrainConfig",
    "train_toy_model",
    "represented",
    "interference",
    "feature_dimensionality",
    "PHASE_NAMES",
    "PHASE_TRAIN_CONFIG",
    "classify_phase",
    "phase_diagram",
]


@dataclass(frozen=True)
class ToyModelConfig:
    """The shape of a batch of toy models: `n_instances` independent models of `n_features` in `n_hidden` dimensions."""

    n_features: int = 5
    n_hidden: int = 2
    n_instances: int = 8

    def __post_init__(self) -> None:
        for name in ("n_features", "n_hidden", "n_instances"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"ToyModelConfig.{name} must be a positive int, got {getattr(self, name)!r}.")


class ToyModel(torch.nn.Module):
    """x -> h = W x -> x' = ReLU(W^T h + b), the ReLU output model of Elhage et al. (2022), "Demonstrating Superposition".

    `W[instance, :, i]` is the direction feature i writes to the hidden space; the same W
    reads it back (tied weights), and `b_final` lets the ReLU cut off small interference.
    """

    def __init__(self, config: ToyModelConfig = ToyModelConfig(), seed: int = 0) -> None:
        super().__init__()
        if not isinstance(config, ToyModelConfig):
            raise TypeError(f"config must be a ToyModelConfig, got {type(config).__name__}.")
        self.config = config
        generator = generator_for("superposition.init", seed)
        shape = (config.n_instances, config.n_hidden, config.n_features)
        # Xavier-normal for each instance's [hidden feature] matrix, as in the paper's code.
        std = math.sqrt(2 / (config.n_hidden + config.n_features))
        self.W: Float[Tensor, "instance hidden feature"] = torch.nn.Parameter(torch.randn(shape, generator=generator) * std)
        self.b_final: Float[Tensor, "instance feature"] = torch.nn.Parameter(torch.zeros(config.n_instances, config.n_features))

    def forward(self, features: Float[Tensor, "batch instance feature"]) -> Float[Tensor, "batch instance feature"]:
        # Shape, dtype and device only: this runs every training step, where a check of the values would wait for the device.
        expected = (self.config.n_instances, self.config.n_features)
        if not isinstance(features, Tensor) or features.ndim != 3 or tuple(features.shape[1:]) != expected:
            raise ValueError(f"features must have shape [batch, {expected[0]}, {expected[1]}] (batch instance feature), "
                             f"got {describe(features)}.")
        if not features.is_floating_point():
            raise TypeError(f"features must be a float tensor, got {describe(features)}.")
        check_same_device("features", features, "the model", self.W)
        hidden = einops.einsum(features.to(self.W.dtype), self.W, "batch instance feature, instance hidden feature -> batch instance hidden")
        out = einops.einsum(hidden, self.W, "batch instance hidden, instance hidden feature -> batch instance feature")
        return F.relu(out + self.b_final)


def sample_features(
    batch_size: int, feature_probability: Float[Tensor, "instance feature"], generator: torch.Generator
) -> Float[Tensor, "batch instance feature"]:
    """The paper's synthetic data: each feature is present with its probability, then uniform in [0, 1]; zero otherwise.

    The random numbers come from `generator` on its own device, so a CPU generator gives the
    same data whatever device `feature_probability` (and so the result) lives on.
    """
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if not isinstance(feature_probability, Tensor) or not feature_probability.is_floating_point():
        raise TypeError(f"feature_probability must be a float tensor [instance feature], got {describe(feature_probability)}.")
    _check_probability(feature_probability)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. mechlearn.generator_for(...)), got {describe(generator)}.")
    return _sample_features(batch_size, feature_probability, generator)


def _check_probability(feature_probability: Tensor) -> None:
    if not ((feature_probability >= 0) & (feature_probability <= 1)).all():
        raise ValueError("feature_probability must lie in [0, 1]: it is the chance that each feature is present.")


def _sample_features(
    batch_size: int, feature_probability: Float[Tensor, "instance feature"], generator: torch.Generator
) -> Float[Tensor, "batch instance feature"]:
    shape = (batch_size, *feature_probability.shape)
    values = torch.rand(shape, generator=generator, device=generator.device)
    present = torch.rand(shape, generator=generator, device=generator.device) < feature_probability.to(generator.device)
    return torch.where(present, values, 0.0).to(feature_probability.device)


def instance_losses(
    output: Float[Tensor, "batch instance feature"],
    features: Float[Tensor, "batch instance feature"],
    importance: Float[Tensor, "instance feature"],
) -> Float[Tensor, "instance"]:
    """Each instance's loss: importance * (x - x')^2 summed over features, averaged over the batch."""
    _check_loss_inputs(output, features, importance)
    return _instance_losses(output, features, importance)


def _check_loss_inputs(output: object, features: object, importance: object) -> None:
    check_tensor(features, "features", 3, floating=True)
    check_tensor(output, "output", 3, floating=True)
    if output.shape != features.shape:
        raise ValueError(f"output {tuple(output.shape)} and features {tuple(features.shape)} must have the same shape.")
    check_same_device("output", output, "features", features)
    importance = _broadcast("importance", importance, tuple(features.shape[1:]))
    check_same_device("importance", importance, "features", features)
    for name, value in (("output", output), ("features", features), ("importance", importance)):
        check_finite(value, name)


def _instance_losses(
    output: Float[Tensor, "batch instance feature"],
    features: Float[Tensor, "batch instance feature"],
    importance: Float[Tensor, "instance feature"],
) -> Float[Tensor, "instance"]:
    error = importance * (features - output) ** 2
    return einops.reduce(error, "batch instance feature -> batch instance", "sum").mean(dim=0)


def importance_weighted_loss(
    output: Float[Tensor, "batch instance feature"],
    features: Float[Tensor, "batch instance feature"],
    importance: Float[Tensor, "instance feature"],
) -> Float[Tensor, ""]:
    """The paper's loss, sum_i I_i (x_i - x'_i)^2 averaged over the batch, summed over instances.

    Summing over instances gives every instance the gradient of its own loss, so all of them
    train independently in one run.
    """
    return instance_losses(output, features, importance).sum()


@dataclass(frozen=True)
class ToyTrainConfig:
    """How `train_toy_model` trains. The defaults give the 5-in-2 results of chapter 05 in a few seconds on one core."""

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-2  # ten times the paper's, for a tenth of its 10,000 steps
    log_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"ToyTrainConfig.{name} must be a positive int, got {getattr(self, name)!r}.")
        check_number(self.lr, "ToyTrainConfig.lr", minimum=0)
        if not 0 < self.lr < math.inf:
            raise ValueError(f"ToyTrainConfig.lr must be a positive number, got {self.lr}.")
        if not is_int(self.seed):
            raise ValueError(f"ToyTrainConfig.seed must be an int, got {self.seed!r}.")


def _per_instance(name: str, values: object, config: ToyModelConfig) -> Float[Tensor, "instance feature"]:
    """`values` broadcast to [instance feature], or one clear error."""
    return _broadcast(name, values, (config.n_instances, config.n_features))


def _broadcast(name: str, values: object, shape: tuple[int, int]) -> Float[Tensor, "instance feature"]:
    if not isinstance(values, Tensor) or not values.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor that broadcasts to [instance feature] = {shape}, "
                        f"got {describe(values)}.")
    try:
        return values.expand(shape)
    except RuntimeError:
        raise ValueError(f"{name} has shape {tuple(values.shape)}, which does not broadcast to "
                         f"[instance feature] = {shape}.") from None


def train_toy_model(
    model: ToyModel,
    feature_probability: Float[Tensor, "instance feature"],
    importance: Float[Tensor, "instance feature"],
    config: ToyTrainConfig = ToyTrainConfig(),
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train every instance of `model` on fresh `sample_features` batches with Adam; return the loss history.

    `feature_probability` and `importance` may be anything that broadcasts to [instance feature]
    (e.g. `0.9 ** torch.arange(n_features)` for the same importances in every instance). Every
    `config.log_every` steps (and after the last) one record `{"step", "train_loss"}` is appended,
    the loss summed over instances. Runs on the model's device, deterministically given `config.seed`.
    """
    if not isinstance(model, ToyModel):
        raise TypeError(f"model must be a ToyModel, got {type(model).__name__}.")
    if not isinstance(config, ToyTrainConfig):
        raise TypeError(f"config must be a ToyTrainConfig, got {type(config).__name__}.")
    feature_probability = _per_instance("feature_probability", feature_probability, model.config)
    importance = _per_instance("importance", importance, model.config)
    _check_probability(feature_probability)
    if not ((importance >= 0) & torch.isfinite(importance)).all():
        raise ValueError("importance must be finite and non-negative.")
    device = model.W.device
    feature_probability, importance = feature_probability.to(device), importance.to(device)
    generator = generator_for("superposition.features", config.seed)
    # Plain Adam, no weight decay: decay would shrink the norms that tell us which features are represented.
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history: list[dict[str, float]] = []
    bar = tqdm(range(config.steps), desc="training toy models", disable=not progress)
    for step in bar:
        features = _sample_features(config.batch_size, feature_probability, generator)  # checked once, above
        loss = _instance_losses(model(features), features, importance).sum()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"The training loss became {loss.item()} at step {step}; lower ToyTrainConfig.lr.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            history.append({"step": step + 1, "train_loss": loss.item()})
            bar.set_postfix(loss=f"{history[-1]['train_loss']:.4f}")
    return history


def _check_W(W: object) -> None:
    if not isinstance(W, Tensor) or W.ndim != 3 or not W.dtype.is_floating_point:
        raise TypeError(f"W must be a float tensor of shape [instance hidden feature] (a ToyModel's W), got {describe(W)}.")
    check_finite(W, "W")


def represented(W: Float[Tensor, "instance hidden feature"], threshold: float = 0.5) -> Bool[Tensor, "instance feature"]:
    """Which features the model represents: those whose direction ||W[:, i]|| is longer than `threshold`.

    A represented feature comes back out with a weight of about ||W[:, i]||^2 = 1; a dropped
    one has W[:, i] near 0.
    """
    _check_W(W)
    check_number(threshold, "threshold", minimum=0)
    return torch.linalg.vector_norm(W.detach(), dim=1) > threshold


def interference(W: Float[Tensor, "instance hidden feature"]) -> Float[Tensor, "instance feature feature"]:
    """W^T W: entry (i, j) is how much feature j's direction lands on feature i's.

    Elhage et al. (2022) plot it in "Demonstrating Superposition". The diagonal holds the
    squared norms ||W[:, i]||^2 (about 1 for represented features); an off-diagonal entry far
    from 0 means the two features share dimensions and interfere.
    """
    _check_W(W)
    W = W.detach()
    return einops.einsum(W, W, "instance hidden feature_i, instance hidden feature_j -> instance feature_i feature_j")


def feature_dimensionality(W: Float[Tensor, "instance hidden feature"]) -> Float[Tensor, "instance feature"]:
    """The fraction of a dimension each feature gets (Elhage et al., section "Feature Dimensionality").

    D_i = ||W_i||^2 / sum_j (Ŵ_i · W_j)^2, with Ŵ_i the unit vector along W_i: 1 for a feature
    with a dimension of its own, 1/2 for an antipodal pair, 2/5 for each corner of a pentagon,
    and about 0 for a feature the model drops. Multiplying the top and bottom by ||W_i||^2
    gives D_i = G_ii^2 / sum_j G_ij^2 in terms of the Gram matrix G = `interference(W)`.
    """
    gram = interference(W)
    # For a dropped feature (W_i = 0) both sides are 0; the clamp makes that 0, not NaN.
    return gram.diagonal(dim1=-2, dim2=-1) ** 2 / gram.square().sum(dim=-1).clamp_min(1e-30)


# --- "Superposition as a Phase Change" ------------------------------------------------------------

PHASE_NAMES = ("not represented", "dedicated dimension", "superposition")
PHASE_TRAIN_CONFIG = ToyTrainConfig(steps=200, batch_size=256)
_EVAL_BATCH = 8192  # enough to see features co-occur at a density of 1%


def classify_phase(W: Float[Tensor, "instance 1 2"], threshold: float = 0.5) -> Int[Tensor, "instance"]:
    """What a model of 2 features in 1 dimension did with feature 1, as an index into `PHASE_NAMES`.

    2 (superposition): both features are represented, antipodally (W = [w, -w]), so the ReLU
    cuts off the negative interference each causes the other. 1 (dedicated dimension): feature 1
    is represented and feature 0 is not. 0 (not represented): feature 1 is not represented.
    Training sometimes stops with both features on the same side of the dimension, where they
    cannot both be read back; such a pair counts as the longer feature having the dimension.
    """
    _check_W(W)
    if W.shape[1:] != (1, 2):
        raise ValueError(f"classify_phase needs W of 2 features in 1 dimension, [instance, 1, 2], got {tuple(W.shape)}.")
    shown = represented(W, threshold)
    w0, w1 = W.detach()[:, 0, 0], W.detach()[:, 0, 1]
    superposed = shown.all(dim=1) & (w0 * w1 < 0)
    feature_1_has_it = shown[:, 1] & (w1.abs() > w0.abs())
    return torch.where(superposed, 2, torch.where(feature_1_has_it, 1, 0))


def phase_diagram(
    relative_importance: Float[Tensor, "r"],
    feature_density: Float[Tensor, "d"],
    config: ToyTrainConfig = PHASE_TRAIN_CONFIG,
    restarts: int = 8,
    threshold: float = 0.5,
    progress: bool = True,
) -> Int[Tensor, "r d"]:
    """The phase of 2 features in 1 dimension for every pair (relative importance, feature density).

    After Elhage et al. (2022), section "Superposition as a Phase Change". Feature 0 has
    importance 1, feature 1 importance r; both are present with the same density.
    Every cell is trained `restarts` times from different initialisations, all as instances of
    one batched run, and the restart with the lowest loss on a fresh batch is classified by
    `classify_phase`. Restarts matter: two features that start on the same side of their one
    dimension rarely get past each other to sit antipodally, so about half of all runs miss
    superposition where it is best; with 8 restarts a cell misses it about once in 256.
    Returns indices into `PHASE_NAMES`, on the device of `relative_importance`.
    """
    for name, values in (("relative_importance", relative_importance), ("feature_density", feature_density)):
        if not isinstance(values, Tensor) or values.ndim != 1 or len(values) == 0 or not values.dtype.is_floating_point:
            raise TypeError(f"{name} must be a non-empty 1-D float tensor, got {describe(values)}.")
    if not ((relative_importance > 0) & torch.isfinite(relative_importance)).all():
        raise ValueError("relative_importance must be positive and finite (e.g. torch.logspace(-1, 1, 6)).")
    if not ((feature_density > 0) & (feature_density <= 1)).all():
        raise ValueError("feature_density must lie in (0, 1] (e.g. torch.logspace(-2, 0, 6)).")
    if not is_int(restarts) or restarts < 1:
        raise ValueError(f"restarts must be a positive int, got {restarts!r}.")
    if not isinstance(config, ToyTrainConfig):
        raise TypeError(f"config must be a ToyTrainConfig, got {type(config).__name__}.")
    check_number(threshold, "threshold", minimum=0)
    n_r, n_d = len(relative_importance), len(feature_density)
    device = relative_importance.device
    # Instances are laid out (restart r d): restart-major, so each restart is one copy of the grid.
    importance = torch.stack([torch.ones_like(relative_importance), relative_importance], dim=-1)
    importance = einops.repeat(importance, "r feature -> (restart r d) feature", restart=restarts, d=n_d)
    probability = einops.repeat(feature_density.to(device), "d -> (restart r d) 2", restart=restarts, r=n_r)
    model = ToyModel(ToyModelConfig(n_features=2, n_hidden=1, n_instances=restarts * n_r * n_d), seed=config.seed).to(device)
    train_toy_model(model, probability, importance, config, progress)
    with torch.no_grad():
        features = sample_features(_EVAL_BATCH, probability, generator_for("superposition.eval_features", config.seed))
        losses = instance_losses(model(features), features, importance)
    best = einops.rearrange(losses, "(restart cell) -> restart cell", restart=restarts).argmin(dim=0)
    W = einops.rearrange(model.W.detach(), "(restart cell) hidden feature -> restart cell hidden feature", restart=restarts)
    classes = classify_phase(W[best, torch.arange(n_r * n_d, device=device)], threshold)
    return einops.rearrange(classes, "(r d) -> r d", r=n_r)
