"""Checks for chapter 05, toy models of superposition.

The answers come from `mechlearn.superposition` on small inputs built so that the usual
mistakes show: weights with features of different norms and a zero column, biases that
push some outputs below zero, importances that differ per instance and feature, 2-in-1
models on both sides of 0 and near the threshold, classified with two thresholds. Sampled
features are checked per cell, for independence between every pair of cells, and for a
generator that is used, not replaced.
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


PROBABILITY = torch.tensor([[0.9, 0.5, 0.1], [0.02, 1.0, 0.0], [0.5, 0.5, 0.3]])
N_SAMPLES = 20_000


def _cell_names(flat_index: int) -> str:
    instance, feature = divmod(flat_index, PROBABILITY.shape[1])
    return f"(instance {instance}, feature {feature}, probability {PROBABILITY[instance, feature].item():g})"


def _worst_pair(deviation: Tensor) -> tuple[int, int]:
    """The off-diagonal (i, j) with the largest deviation."""
    worst = int(deviation.fill_diagonal_(0).argmax())
    return divmod(worst, deviation.shape[1])


def _expect_independent(features: Tensor) -> None:
    """Presence and values independent across every pair of (instance, feature) cells."""
    present = (features != 0).flatten(1).float()  # [batch cell]
    flat = PROBABILITY.flatten()
    together = present.T @ present / len(present)  # [cell cell]
    i, j = _worst_pair((together - torch.outer(flat, flat)).abs())
    expect(
        abs(together[i, j] - flat[i] * flat[j]) < 0.02,
        f"cells {_cell_names(i)} and {_cell_names(j)} are present together in {together[i, j]:.1%} of examples, "
        f"expected {flat[i] * flat[j]:.1%}",
        hint="draw a separate random number for every (example, instance, feature), so features are present independently.",
    )
    centred = (features.flatten(1) - 0.5) * present  # uniform values have mean 1/2 and variance 1/12
    both = present.T @ present
    correlation = 12 * (centred.T @ centred) / both.clamp_min(1)
    correlation[both < 1000] = 0  # too few examples to tell
    i, j = _worst_pair(correlation.abs())
    expect(
        correlation[i, j].abs() < 0.1,
        f"the values of cells {_cell_names(i)} and {_cell_names(j)} have correlation {correlation[i, j]:.2f} where both "
        "are present, expected about 0",
        hint="draw the values with one torch.rand of the full shape (batch_size, *feature_probability.shape), not one "
        "value per example or per instance.",
    )


def _expect_uniform_per_cell(features: Tensor) -> None:
    """In every (instance, feature) cell present often enough, the values spread like uniform [0, 1] ones."""
    for instance, feature in torch.nonzero(PROBABILITY >= 0.05).tolist():
        values = features[:, instance, feature]
        values = values[values != 0]
        expect(
            abs(values.mean().item() - 0.5) < 0.03 and abs(values.std().item() - 12**-0.5) < 0.03,
            f"the values of instance {instance}, feature {feature} have mean {values.mean():.3f} and standard deviation "
            f"{values.std():.3f}, expected those of uniform [0, 1] values: 0.5 and {12**-0.5:.3f}",
            hint="draw a fresh value for every (example, instance, feature): one torch.rand of the full shape.",
        )


def _expect_seeded(sample_features, features: Tensor, generator: torch.Generator) -> None:
    """The seed repeats the data, another seed changes it, and the generator moves on from call to call."""
    again = call_learner(sample_features, N_SAMPLES, PROBABILITY.clone(), torch.Generator().manual_seed(0))
    expect(
        torch.equal(features, again),
        "the same seed gave different features",
        hint="draw every random number with `generator=generator`, so a seeded generator repeats the data.",
    )
    small = call_learner(sample_features, 100, PROBABILITY.clone(), torch.Generator().manual_seed(0))
    for label, other in (
        ("seeds 0 and 1 gave", torch.Generator().manual_seed(1)),
        ("a second call with the same generator gave", generator),
    ):
        expect(
            not torch.equal(small, call_learner(sample_features, 100, PROBABILITY.clone(), other)),
            f"{label} the same features",
            hint="draw from the `generator` you are given (`generator=generator`), so each call moves it on; "
            "do not create, seed or copy a generator inside the function.",
        )


@check
def check_sample_features(sample_features) -> None:
    """Each feature present with its own probability, independently, uniform in [0, 1] when present, repeatable under a seed."""
    generator = torch.Generator().manual_seed(0)
    features = call_learner(sample_features, N_SAMPLES, PROBABILITY.clone(), generator)
    expected_shape = (N_SAMPLES, *PROBABILITY.shape)
    expect(
        isinstance(features, Tensor) and tuple(features.shape) == expected_shape,
        f"sample_features returned {type(features).__name__} {tuple(getattr(features, 'shape', ()))}, expected shape {expected_shape}",
        hint="the result is [batch, *feature_probability.shape]: one value per (example, instance, feature).",
    )
    present = (features != 0).float().mean(dim=0)
    expect(
        (present - PROBABILITY).abs().max() < 0.02,
        f"features are present with frequencies {_rounded(present)}, expected about {_rounded(PROBABILITY)}",
        hint="compare torch.rand(...) < feature_probability: a feature is present where the draw is BELOW its probability.",
    )
    values = features[features != 0]
    expect(
        values.min() >= 0 and values.max() <= 1 and abs(values.mean().item() - 0.5) < 0.02,
        f"present features should be uniform in [0, 1] (mean 0.5), got mean {values.mean():.3f} and max {values.max():.3f}",
        hint="draw the values with torch.rand (uniform in [0, 1)), not torch.randn, and keep them only where present.",
    )
    _expect_uniform_per_cell(features)
    _expect_independent(features)
    _expect_seeded(sample_features, features, generator)


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


# Hand-made 2-in-1 models: dropped, dedicated, antipodal pairs, same-side pairs on either side of 0, and two near
# the threshold. A threshold of 0.95 moves three of them: a learner's 0.5 written in place of `threshold` shows.
PHASE_W = torch.tensor(
    [[1.0, 0.1], [-0.05, 1.0], [0.9, -1.0], [1.0, 0.8], [-1.1, 0.9], [0.8, 1.0], [-0.8, -1.0], [-1.0, -0.8], [0.05, -1.0], [0.6, -0.7]]
)[:, None, :]


@check
def check_classify_phase(classify_phase) -> None:
    """Hand-made 2-in-1 models, with the default threshold and with another, compared with mechlearn.superposition."""
    n_models = len(PHASE_W)
    for threshold in (None, 0.95):
        extra = () if threshold is None else (threshold,)
        expected = superposition.classify_phase(PHASE_W, *extra)
        actual = call_learner(classify_phase, PHASE_W.clone(), *extra)
        expect(
            isinstance(actual, Tensor) and tuple(actual.shape) == (n_models,),
            f"classify_phase returned {type(actual).__name__} {tuple(getattr(actual, 'shape', ()))}, "
            f"expected one class per instance: shape {(n_models,)}",
            hint="return a tensor of class indices into PHASE_NAMES, one per instance.",
        )
        with_threshold = "" if threshold is None else f" with threshold={threshold}"
        expect(
            torch.equal(actual.long(), expected),
            f"classify_phase gave {actual.tolist()} for the models W[:, 0] = {_rounded(PHASE_W[:, 0])}{with_threshold}, "
            f"expected {expected.tolist()} ({', '.join(superposition.PHASE_NAMES[i] for i in expected)})",
            hint="superposition needs BOTH features represented (norm > 0.5) with opposite signs; feature 1 has a "
            "dedicated dimension when it alone is represented (or is the longer of a same-side pair, on either side of 0)."
            if threshold is None
            else f"a feature is represented when its norm exceeds `threshold` (here {threshold}), not a fixed 0.5.",
        )
