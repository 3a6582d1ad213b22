"""Checks for chapter 05, toy models of superposition.

The answers come from `mechlearn.superposition` on small inputs built so that the usual
mistakes show: weights with features of different norms and a zero column, biases that
push some outputs below zero, importances that differ per instance and feature.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechlearn import superposition
from mechlearn.checks.core import call_learner, check, expect, expect_tensor

N_INSTANCES, N_HIDDEN, N_FEATURES = 3, 2, 5


def _weights(seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(N_INSTANCES, N_HIDDEN, N_FEATURES, generator=generator)
    W[1, :, 3] = 0.0  # a dropped feature
    b_final = 0.3 * torch.randn(N_INSTANCES, N_FEATURES, generator=generator)
    return W, b_final


def _rounded(values: Tensor) -> list:
    return [[round(value, 2) for value in row] for row in values.tolist()]


@check
def check_sample_features(sample_features) -> None:
    """Each feature present with its own probability, uniform in [0, 1] when present, repeatable under a seed."""
    probability = torch.tensor([[0.9, 0.5, 0.1], [0.02, 1.0, 0.0]])
    features = call_learner(sample_features, 20_000, probability.clone(), torch.Generator().manual_seed(0))
    expect(
        isinstance(features, Tensor) and tuple(features.shape) == (20_000, 2, 3),
        f"sample_features returned {type(features).__name__} {tuple(getattr(features, 'shape', ()))}, expected shape (20000, 2, 3)",
        hint="the result is [batch, *feature_probability.shape]: one value per (example, instance, feature).",
    )
    present = (features != 0).float().mean(dim=0)
    expect(
        (present - probability).abs().max() < 0.02,
        f"features are present with frequencies {_rounded(present)}, expected about {_rounded(probability)}",
        hint="compare torch.rand(...) < feature_probability: a feature is present where the draw is BELOW its probability.",
    )
    values = features[features != 0]
    expect(
        values.min() >= 0 and values.max() <= 1 and abs(values.mean().item() - 0.5) < 0.02,
        f"present features should be uniform in [0, 1] (mean 0.5), got mean {values.mean():.3f} and max {values.max():.3f}",
        hint="draw the values with torch.rand (uniform in [0, 1)), not torch.randn, and keep them only where present.",
    )
    both = ((features[:, 0, 0] != 0) & (features[:, 0, 1] != 0)).float().mean()
    expect(
        abs(both.item() - 0.45) < 0.02,
        f"features 0 and 1 of instance 0 (probabilities 0.9 and 0.5) are present together in {both:.1%} of examples, expected 45%",
        hint="draw a separate random number for every (example, instance, feature), so features are present independently.",
    )
    again = call_learner(sample_features, 20_000, probability.clone(), torch.Generator().manual_seed(0))
    expect(
        torch.equal(features, again),
        "the same seed gave different features",
        hint="draw every random number with `generator=generator`, so a seeded generator repeats the data.",
    )


@check
def check_toy_forward(toy_forward) -> None:
    """h = W x, then x' = ReLU(W^T h + b), per instance; compared with mechlearn.superposition.ToyModel."""
    W, b_final = _weights()
    model = superposition.ToyModel(superposition.ToyModelConfig(N_FEATURES, N_HIDDEN, N_INSTANCES))
    with torch.no_grad():
        model.W.copy_(W)
        model.b_final.copy_(b_final)
        features = torch.rand(7, N_INSTANCES, N_FEATURES, generator=torch.Generator().manual_seed(1))
        expected = model(features)
    expect_tensor(
        call_learner(toy_forward, W.clone(), b_final.clone(), features.clone()),
        expected,
        what="the toy model's output",
        hint="hidden = einsum(features, W, 'batch instance feature, instance hidden feature -> batch instance hidden'); "
        "then the same W back to features, add b_final, and apply ReLU last.",
    )


@check
def check_importance_weighted_loss(importance_weighted_loss) -> None:
    """sum over instances and features of importance * (x - x')^2, averaged over the batch."""
    generator = torch.Generator().manual_seed(2)
    output, features = torch.rand(6, N_INSTANCES, N_FEATURES, generator=generator), torch.rand(6, N_INSTANCES, N_FEATURES, generator=generator)
    importance = torch.rand(N_INSTANCES, N_FEATURES, generator=generator)
    expect_tensor(
        call_learner(importance_weighted_loss, output.clone(), features.clone(), importance.clone()),
        superposition.importance_weighted_loss(output, features, importance),
        what="the importance-weighted loss",
        hint="weight each squared error by its feature's importance, SUM over features and instances, and take the "
        "MEAN over the batch only; the result is a 0-d tensor.",
    )


@check
def check_feature_dimensionality(feature_dimensionality) -> None:
    """D_i = ||W_i||^2 / sum_j (Ŵ_i · W_j)^2 per instance, 0 for a dropped feature; compared with mechlearn.superposition."""
    W, _ = _weights(3)
    expect_tensor(
        call_learner(feature_dimensionality, W.clone()),
        superposition.feature_dimensionality(W),
        what="the feature dimensionalities",
        atol=1e-5,
        hint="with G = W^T W per instance ([instance feature feature]), D_i = G_ii^2 / sum_j G_ij^2; "
        "clamp the denominator away from 0 so a dropped feature gives 0, not NaN.",
    )


@check
def check_classify_phase(classify_phase) -> None:
    """Hand-made 2-in-1 models: dropped, dedicated, antipodal pair, and a same-side pair."""
    W = torch.tensor([[[1.0, 0.1]], [[-0.05, 1.0]], [[0.9, -1.0]], [[1.0, 0.8]], [[-1.1, 0.9]], [[0.8, 1.0]]])
    expected = superposition.classify_phase(W)
    actual = call_learner(classify_phase, W.clone())
    expect(
        isinstance(actual, Tensor) and tuple(actual.shape) == (6,),
        f"classify_phase returned {type(actual).__name__} {tuple(getattr(actual, 'shape', ()))}, expected one class per instance: shape (6,)",
        hint="return a tensor of class indices into PHASE_NAMES, one per instance.",
    )
    expect(
        torch.equal(actual.long(), expected),
        f"classify_phase gave {actual.tolist()} for these six models, expected {expected.tolist()} "
        f"({', '.join(superposition.PHASE_NAMES[i] for i in expected)})",
        hint="superposition needs BOTH features represented (norm > 0.5) with opposite signs; feature 1 has a "
        "dedicated dimension when it alone is represented (or is the longer of a same-side pair).",
    )
