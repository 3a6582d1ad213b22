"""mechlearn.superposition: toy models of superposition and the results of Elhage et al. (2022) in miniature."""

import math
import re

import pytest
import torch
from bad_inputs import needs_cuda, raises_one_sentence

from mechlearn.superposition import (
    PHASE_NAMES,
    ToyModel,
    ToyModelConfig,
    ToyTrainConfig,
    classify_phase,
    feature_dimensionality,
    importance_weighted_loss,
    instance_losses,
    interference,
    phase_diagram,
    represented,
    sample_features,
    train_toy_model,
)


def polygon(n: int, radius: float = 1.0) -> torch.Tensor:
    """W of one instance whose n features sit at the corners of a regular n-gon in 2 dimensions: [1 2 n]."""
    angles = 2 * math.pi * torch.arange(n) / n
    return radius * torch.stack([angles.cos(), angles.sin()])[None]


def cosines(W: torch.Tensor) -> torch.Tensor:
    """|cos| between the directions of every pair of features: [instance feature feature]."""
    gram = interference(W)
    norms = gram.diagonal(dim1=-2, dim2=-1).sqrt()
    return (gram / (norms[:, :, None] * norms[:, None, :])).abs()


# --- the model, the data and the loss --------------------------------------------------------------


@pytest.mark.bad_input
def test_config_rejects_bad_shapes() -> None:
    assert ToyModelConfig() == ToyModelConfig(n_features=5, n_hidden=2, n_instances=8)
    for bad in (dict(n_hidden=0), dict(n_features=2.0), dict(n_instances=True)):
        with pytest.raises(ValueError, match="ToyModelConfig.n_"):
            ToyModelConfig(**bad)
    with pytest.raises(ValueError, match="ToyTrainConfig.lr"):
        ToyTrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="ToyTrainConfig.steps"):
        ToyTrainConfig(steps=0)


def test_model_computes_relu_of_W_transpose_W_x_plus_b() -> None:
    model = ToyModel(ToyModelConfig(n_features=3, n_hidden=2, n_instances=2))
    with torch.no_grad():
        model.W.copy_(torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]], [[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]))
        model.b_final.copy_(torch.tensor([[0.0, 0.0, -1.0], [0.1, 0.2, 0.3]]))
    x = torch.tensor([[[1.0, 0.5, 0.0], [0.5, 1.0, 1.0]]])
    # Instance 0: h = (1, 0.5), W^T h = (1, 0.5, 0.5); the bias -1 takes feature 2 below 0 and the ReLU to 0.
    # Instance 1: h = (1, 0), W^T h = (2, 0, 0), plus the biases.
    expected = torch.tensor([[[1.0, 0.5, 0.0], [2.1, 0.2, 0.3]]])
    assert torch.allclose(model(x), expected)
    with pytest.raises(ValueError, match=r"features must have shape \[batch, 2, 3\]"):
        model(torch.zeros(4, 3, 2))


def test_model_init_is_seeded_and_xavier_scaled() -> None:
    config = ToyModelConfig(n_features=40, n_hidden=10, n_instances=50)
    first, again, other = ToyModel(config, seed=1), ToyModel(config, seed=1), ToyModel(config, seed=2)
    assert torch.equal(first.W, again.W) and not torch.equal(first.W, other.W)
    assert first.W.std().item() == pytest.approx(math.sqrt(2 / 50), rel=0.05)
    assert torch.equal(first.b_final, torch.zeros(50, 40))


def test_sample_features_are_present_with_their_probability_then_uniform() -> None:
    probability = torch.tensor([[0.0, 0.1, 0.5, 1.0]])
    features = sample_features(20_000, probability, torch.Generator().manual_seed(0))
    assert features.shape == (20_000, 1, 4)
    present = features > 0
    assert present.float().mean(dim=0)[0].tolist() == pytest.approx([0.0, 0.1, 0.5, 1.0], abs=0.015)
    values = features[present]
    assert values.max() < 1 and values.mean().item() == pytest.approx(0.5, abs=0.01)
    same = sample_features(20_000, probability, torch.Generator().manual_seed(0))
    assert torch.equal(features, same)


def test_loss_weights_squared_errors_sums_features_and_instances_and_averages_the_batch() -> None:
    features = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 0.0], [1.0, 0.0]]])  # [batch=2 instance=2 feature=2]
    output = torch.zeros_like(features)
    importance = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    # Instance 0: errors 1 and 0 -> (1 + 0) / 2. Instance 1: 3 * 0.25 + 0.25 = 1, and 3 * 1 = 3 -> (1 + 3) / 2.
    assert instance_losses(output, features, importance).tolist() == [0.5, 2.0]
    assert importance_weighted_loss(output, features, importance).item() == 2.5


def test_instances_train_independently() -> None:
    """An instance whose importance is zero gets no gradient, whatever the others do."""
    model = ToyModel(ToyModelConfig(n_instances=2))
    features = sample_features(64, torch.full((2, 5), 0.5), torch.Generator().manual_seed(0))
    importance = torch.stack([torch.ones(5), torch.zeros(5)])
    importance_weighted_loss(model(features), features, importance).backward()
    assert model.W.grad[0].abs().sum() > 0 and torch.equal(model.W.grad[1], torch.zeros(2, 5))


def test_training_is_deterministic_and_logs_the_loss() -> None:
    config = ToyTrainConfig(steps=30, log_every=10, seed=3)
    histories, weights = [], []
    for _ in range(2):
        model = ToyModel(ToyModelConfig(n_instances=2), seed=3)
        histories.append(train_toy_model(model, torch.tensor(0.2), torch.ones(5), config, progress=False))
        weights.append(model.W.detach().clone())
    assert [record["step"] for record in histories[0]] == [10, 20, 30]
    assert histories[0] == histories[1] and torch.equal(weights[0], weights[1])
    assert histories[0][-1]["train_loss"] < histories[0][0]["train_loss"]


@pytest.mark.bad_input
def test_training_checks_its_inputs_and_raises_on_nan() -> None:
    model = ToyModel(ToyModelConfig(n_instances=2))
    with pytest.raises(ValueError, match=r"importance has shape \(3,\), which does not broadcast"):
        train_toy_model(model, torch.tensor(0.1), torch.ones(3), progress=False)
    with pytest.raises(ValueError, match=r"feature_probability must lie in \[0, 1\]"):
        train_toy_model(model, torch.tensor(1.5), torch.ones(5), progress=False)
    with pytest.raises(TypeError, match="feature_probability must be a float tensor"):
        train_toy_model(model, 0.1, torch.ones(5), progress=False)
    with torch.no_grad():
        model.b_final[0, 0] = math.nan
    with pytest.raises(FloatingPointError, match="at step 0"):
        train_toy_model(model, torch.tensor(0.1), torch.ones(5), ToyTrainConfig(steps=2), progress=False)


# --- reading a model's geometry --------------------------------------------------------------------


def test_geometry_of_known_arrangements() -> None:
    square, pentagon = polygon(4), polygon(5)
    pair = torch.tensor([[[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]])  # an antipodal pair and a dropped feature
    assert feature_dimensionality(pentagon)[0].tolist() == pytest.approx([0.4] * 5, abs=1e-6)
    assert feature_dimensionality(polygon(5, radius=0.7))[0].tolist() == pytest.approx([0.4] * 5, abs=1e-6)
    assert feature_dimensionality(polygon(3))[0].tolist() == pytest.approx([2 / 3] * 3, abs=1e-6)
    assert feature_dimensionality(square)[0].tolist() == pytest.approx([0.5] * 4, abs=1e-6)
    assert feature_dimensionality(pair)[0].tolist() == [0.5, 0.5, 0.0]
    assert feature_dimensionality(torch.eye(3)[None]).tolist() == [[1.0, 1.0, 1.0]]
    assert interference(pair)[0].tolist() == [[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    assert interference(pentagon)[0, 0, 1].item() == pytest.approx(math.cos(2 * math.pi / 5))
    assert represented(torch.cat([polygon(5, 0.6), polygon(5, 0.4)])).tolist() == [[True] * 5, [False] * 5]
    with pytest.raises(TypeError, match=r"W must be a float tensor of shape \[instance hidden feature\]"):
        interference(torch.ones(2, 5))


def test_classify_phase_reads_feature_1() -> None:
    W = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.9, -1.0]], [[-1.0, 0.9]], [[0.0, 0.0]], [[0.6, 0.9]], [[-0.9, -0.6]]])
    assert classify_phase(W).tolist() == [0, 1, 2, 2, 0, 1, 0]  # the last two are stuck on the same side
    assert PHASE_NAMES[2] == "superposition"
    with pytest.raises(ValueError, match=r"\[instance, 1, 2\]"):
        classify_phase(polygon(5))


# --- the paper's results ---------------------------------------------------------------------------


def test_dense_features_get_orthogonal_dimensions_and_the_rest_are_dropped() -> None:
    """Feature probability 1: like PCA, the n_hidden most important features, orthogonal ("Demonstrating Superposition")."""
    model = ToyModel(ToyModelConfig(n_features=5, n_hidden=2, n_instances=8))
    # 2000 steps: after 1000, an instance or two may still be shrinking a third feature.
    train_toy_model(model, torch.tensor(1.0), 0.7 ** torch.arange(5.0), ToyTrainConfig(steps=2000), progress=False)
    shown = represented(model.W)
    assert shown[:, :2].all() and not shown[:, 2:].any()  # the two most important features, in every instance
    assert (cosines(model.W)[:, 0, 1].abs() < 0.1).all()


def test_sparse_features_form_a_pentagon() -> None:
    """Feature probability 0.05, equal importance: 5 features in 2 dimensions, each getting 2/5 of a dimension."""
    model = ToyModel(ToyModelConfig(n_features=5, n_hidden=2, n_instances=8))
    train_toy_model(model, torch.tensor(0.05), torch.ones(5), progress=False)
    assert (represented(model.W).sum(dim=1) >= 4).all()
    dimensionality = feature_dimensionality(model.W)
    pentagons = ((dimensionality - 0.4).abs() < 0.05).all(dim=1)
    assert pentagons.sum() >= 6
    # A regular pentagon: the features' directions, in order of angle, lie 72 degrees apart.
    W = model.W.detach()[pentagons]
    gaps = torch.atan2(W[:, 1], W[:, 0]).sort(dim=-1).values.diff(dim=-1)
    assert torch.allclose(gaps, torch.full_like(gaps, 2 * math.pi / 5), atol=0.1)


def test_two_sparse_features_in_one_dimension_sit_antipodally() -> None:
    model = ToyModel(ToyModelConfig(n_features=2, n_hidden=1, n_instances=8))
    train_toy_model(model, torch.tensor(0.02), torch.ones(2), ToyTrainConfig(steps=300), progress=False)
    W = model.W.detach()[:, 0]
    opposite = W[:, 0] * W[:, 1] < 0
    assert opposite.sum() >= 2  # about half the instances start on opposite sides and stay there
    assert torch.allclose(W[opposite].abs(), torch.ones_like(W[opposite]), atol=0.1)
    assert (classify_phase(model.W) == 2).tolist() == opposite.tolist()


def test_phase_diagram_has_the_papers_three_phases() -> None:
    """2 features in 1 dimension (Elhage et al., "Superposition as a Phase Change"), on a 6 x 6 grid."""
    relative_importance, density = torch.logspace(-1, 1, 6), torch.logspace(-2, 0, 6)
    classes = phase_diagram(relative_importance, density, progress=False)
    assert classes.shape == (6, 6) and set(classes.unique().tolist()) == {0, 1, 2}
    assert (classes[:, :3] == 2).all()  # sparse: superposition at every importance
    assert (classes[2:4, :5] == 2).all()  # similar importance: superposition until features are dense
    assert (classes[:3, 5] == 0).all()  # dense, less important: feature 1 is not represented
    assert (classes[3:, 5] == 1).all()  # dense, more important: feature 1 gets the dimension
    # Compare the simple theory: superposition (with b = 0) costs p^2 (1 + r) / 6, dropping the
    # less important feature min(1, r) Var(x) = min(1, r) (p / 3 - p^2 / 4).
    r, p = relative_importance[:, None], density[None, :]
    theory = torch.where(p**2 * (1 + r) / 6 < r.clamp(max=1) * (p / 3 - p**2 / 4), 2, (r > 1).long())
    assert (classes == theory).sum() >= 33


@pytest.mark.bad_input
def test_phase_diagram_checks_its_inputs() -> None:
    grid = torch.logspace(-1, 1, 3)
    with pytest.raises(ValueError, match=r"feature_density must lie in \(0, 1\]"):
        phase_diagram(grid, grid, progress=False)
    with pytest.raises(TypeError, match="relative_importance must be a non-empty 1-D float tensor"):
        phase_diagram(torch.ones(2, 2), torch.ones(2), progress=False)
    with pytest.raises(ValueError, match="restarts must be a positive int"):
        phase_diagram(grid, grid / 10, restarts=0, progress=False)


# --- bad input -------------------------------------------------------------------------------

MODEL = ToyModel(ToyModelConfig(n_features=3, n_hidden=2, n_instances=2))
X = torch.full((4, 2, 3), 0.5)
GENERATOR = torch.Generator().manual_seed(0)


def with_nan(values: torch.Tensor) -> torch.Tensor:
    broken = values.clone()
    broken.view(-1)[0] = math.nan
    return broken


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: MODEL(X.long()), TypeError, "features"),
        (lambda: MODEL(X[0]), ValueError, "features"),
        (lambda: MODEL(X.to("meta")), ValueError, "features"),
        (lambda: sample_features(0, torch.full((2, 3), 0.1), GENERATOR), ValueError, "batch_size"),
        (lambda: sample_features(4, torch.full((2, 3), 1.5), GENERATOR), ValueError, "feature_probability"),
        (lambda: sample_features(4, torch.full((2, 3), -0.1), GENERATOR), ValueError, "feature_probability"),
        (lambda: sample_features(4, torch.ones(2, 3, dtype=torch.long), GENERATOR), TypeError, "feature_probability"),
        (lambda: sample_features(4, torch.full((2, 3), 0.1), 0), TypeError, "generator"),
        (lambda: instance_losses(X, X, torch.ones(4)), ValueError, "importance"),
        (lambda: instance_losses(X, X, with_nan(torch.ones(2, 3))), ValueError, "importance"),
        (lambda: instance_losses(X[:2], X, torch.ones(3)), ValueError, "output"),
        (lambda: instance_losses(with_nan(X), X, torch.ones(3)), ValueError, "output"),
        (lambda: importance_weighted_loss(X, X[:0], torch.ones(3)), ValueError, "features"),
        (lambda: importance_weighted_loss(X, X.long(), torch.ones(3)), TypeError, "features"),
        (lambda: represented(with_nan(polygon(5))), ValueError, "W"),
        (lambda: feature_dimensionality(polygon(5).to("meta")), ValueError, "W"),
        (lambda: represented(polygon(5), threshold=-0.5), ValueError, "threshold"),
        (lambda: classify_phase(torch.ones(3, 1, 2), threshold=math.nan), ValueError, "threshold"),
        (lambda: phase_diagram(torch.tensor([math.inf]), torch.tensor([0.1]), progress=False), ValueError, "relative_importance"),
        (lambda: phase_diagram(torch.ones(1), torch.tensor([0.1]), config=ToyModelConfig(), progress=False), TypeError, "config"),
        (lambda: ToyModel(ToyModelConfig(), seed=0.5), TypeError, "seed"),
        (lambda: train_toy_model(MODEL, torch.tensor(0.1), torch.tensor(-1.0), progress=False), ValueError, "importance"),
        (lambda: ToyTrainConfig(lr=None), ValueError, "ToyTrainConfig.lr"),
        pytest.param(lambda: MODEL(X.cuda()), ValueError, "features", marks=needs_cuda),
        pytest.param(lambda: instance_losses(X.cuda(), X, torch.ones(3)), ValueError, "output", marks=needs_cuda),
    ],
    ids=[
        "int features", "features without batch", "meta features", "zero batch_size", "probability above 1",
        "negative probability", "int probability", "seed for generator", "importance of another shape", "NaN importance",
        "output of another batch", "NaN output", "empty batch", "int features in the loss", "NaN W", "meta W",
        "negative threshold", "NaN threshold", "inf importance", "a model config for config", "float seed",
        "negative importance", "no lr", "features on another device", "output on another device",
    ],
)
def test_bad_argument_is_named(call, error, name) -> None:
    with raises_one_sentence(error, re.escape(name)):
        call()


def test_float64_features_are_cast_not_refused() -> None:
    torch.testing.assert_close(MODEL(X.double()), MODEL(X))
