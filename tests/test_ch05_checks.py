"""Chapter 05 checks pass on the library's answers and fail, with a hint, on typical mistakes."""

import einops
import pytest
import torch
import torch.nn.functional as F
from check_helpers import expect_failure

from mechlearn import superposition
from mechlearn.checks import ch05


def hidden_of(W, features):
    return einops.einsum(features, W, "batch instance feature, instance hidden feature -> batch instance hidden")


def back_to_features(W, hidden):
    return einops.einsum(hidden, W, "batch instance hidden, instance hidden feature -> batch instance feature")


def toy_forward(W, b_final, features):
    """The learner's forward pass: h = W x, x' = ReLU(W^T h + b), per instance."""
    return F.relu(back_to_features(W, hidden_of(W, features)) + b_final)


def toy_forward_with_the_model(W, b_final, features):
    """The learner's forward pass through the library's ToyModel, with W and b_final copied in."""
    n_instances, n_hidden, n_features = W.shape
    model = superposition.ToyModel(superposition.ToyModelConfig(n_features, n_hidden, n_instances))
    with torch.no_grad():
        model.W.copy_(W)
        model.b_final.copy_(b_final)
        return model(features)


REFERENCE_ANSWERS = [
    (ch05.check_sample_features, superposition.sample_features),
    (ch05.check_toy_forward, toy_forward),
    (ch05.check_toy_forward, toy_forward_with_the_model),
    (ch05.check_importance_weighted_loss, superposition.importance_weighted_loss),
    (ch05.check_feature_dimensionality, superposition.feature_dimensionality),
    (ch05.check_classify_phase, superposition.classify_phase),
]
CHECKS = [
    ch05.check_sample_features,
    ch05.check_toy_forward,
    ch05.check_importance_weighted_loss,
    ch05.check_feature_dimensionality,
    ch05.check_classify_phase,
]


@pytest.mark.parametrize("check, answer", REFERENCE_ANSWERS, ids=lambda x: getattr(x, "__name__", ""))
def test_check_passes_on_the_library(check, answer, capsys) -> None:
    check(answer)
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_a_stub_fails_as_not_implemented(check) -> None:
    def stub(*args, **kwargs):
        raise NotImplementedError("exercise 5")

    assert "not implemented" in expect_failure(check, stub, hint_contains="NotImplementedError")


# --- sample_features ----------------------------------------------------------------------


def test_sample_features_with_bernoulli_passes(capsys) -> None:
    """Another correct recipe: a Bernoulli mask times uniform values, drawn in the other order."""

    def bernoulli(batch_size, feature_probability, generator):
        shape = (batch_size, *feature_probability.shape)
        present = torch.bernoulli(feature_probability.expand(shape), generator=generator)
        return present * torch.rand(shape, generator=generator)

    ch05.check_sample_features(bernoulli)
    assert "✓" in capsys.readouterr().out


def masked_uniform(compare, values=torch.rand, mask_shape=lambda shape: shape, use_generator=True):
    """A learner's sample_features: uniform values where `compare(draw, probability)`, 0 elsewhere."""

    def sample_features(batch_size, feature_probability, generator):
        shape = (batch_size, *feature_probability.shape)
        rng = {"generator": generator} if use_generator else {}
        present = compare(torch.rand(mask_shape(shape), **rng), feature_probability)
        return torch.where(present, values(shape, **rng), 0.0)

    return sample_features


@pytest.mark.mistake
def test_sample_features_present_above_the_probability() -> None:
    message = expect_failure(ch05.check_sample_features, masked_uniform(torch.gt), hint_contains="BELOW")
    assert "frequencies" in message


@pytest.mark.mistake
def test_sample_features_ignoring_the_generator() -> None:
    expect_failure(ch05.check_sample_features, masked_uniform(torch.lt, use_generator=False), hint_contains="generator=generator")


@pytest.mark.mistake
def test_sample_features_with_one_mask_for_the_whole_batch() -> None:
    """A [instance feature] mask broadcast over the batch: every feature is always or never present."""
    sample_features = masked_uniform(torch.lt, mask_shape=lambda shape: shape[1:])
    expect_failure(ch05.check_sample_features, sample_features, hint_contains="BELOW")


@pytest.mark.mistake
def test_sample_features_reusing_the_mask_draw_as_the_value() -> None:
    """`u < p` keeps u itself, so present values are uniform in [0, p), not [0, 1]."""

    def reused(batch_size, feature_probability, generator):
        draw = torch.rand(batch_size, *feature_probability.shape, generator=generator)
        return torch.where(draw < feature_probability, draw, 0.0)

    expect_failure(ch05.check_sample_features, reused, hint_contains="torch.rand")


@pytest.mark.mistake
def test_sample_features_returning_the_mask() -> None:
    def mask_only(batch_size, feature_probability, generator):
        return (torch.rand(batch_size, *feature_probability.shape, generator=generator) < feature_probability).float()

    message = expect_failure(ch05.check_sample_features, mask_only, hint_contains="uniform")
    assert "mean 1.000" in message


@pytest.mark.mistake
def test_sample_features_with_randn_values_hints_at_rand() -> None:
    expect_failure(ch05.check_sample_features, masked_uniform(torch.lt, values=torch.randn), hint_contains="torch.randn")


@pytest.mark.mistake
def test_sample_features_as_instance_feature_batch() -> None:
    def batch_last(batch_size, feature_probability, generator):
        shape = (*feature_probability.shape, batch_size)
        present = torch.rand(shape, generator=generator) < feature_probability[..., None]
        return torch.where(present, torch.rand(shape, generator=generator), 0.0)

    message = expect_failure(ch05.check_sample_features, batch_last, hint_contains="[batch, *feature_probability.shape]")
    assert "(3, 3, 20000)" in message


@pytest.mark.mistake
def test_sample_features_with_one_draw_per_instance() -> None:
    def per_instance(batch_size, feature_probability, generator):
        n_instances, n_features = feature_probability.shape
        present = torch.rand(batch_size, n_instances, 1, generator=generator) < feature_probability
        return torch.where(present, torch.rand(batch_size, n_instances, n_features, generator=generator), 0.0)

    expect_failure(ch05.check_sample_features, per_instance)


def test_sample_features_rescaling_one_draw_passes(capsys) -> None:
    """Another correct recipe: one draw u, present where u < p, with the value u / p (uniform in [0, 1) given u < p)."""

    def rescaled(batch_size, feature_probability, generator):
        draw = torch.rand(batch_size, *feature_probability.shape, generator=generator)
        return torch.where(draw < feature_probability, draw / feature_probability, 0.0)

    ch05.check_sample_features(rescaled)
    assert "✓" in capsys.readouterr().out


def seeded_inside(make_generator):
    """A learner's sample_features that draws from `make_generator(generator)` instead of the generator it is given."""

    def sample_features(batch_size, feature_probability, generator):
        own = make_generator(generator)
        shape = (batch_size, *feature_probability.shape)
        return torch.where(torch.rand(shape, generator=own) < feature_probability, torch.rand(shape, generator=own), 0.0)

    return sample_features


def copy_of(generator):
    own = torch.Generator()
    own.set_state(generator.get_state())
    return own


@pytest.mark.mistake
@pytest.mark.parametrize(
    "make_generator, message",
    [(lambda _: torch.Generator().manual_seed(0), "seeds 0 and 1 gave the same"), (copy_of, "a second call with the same generator")],
    ids=["its_own_seed", "a_copy_of_the_generator"],
)
def test_sample_features_with_a_generator_of_its_own(make_generator, message) -> None:
    """The same seed repeats either way; but another seed, or the next training step, gets the same batch again."""
    assert message in expect_failure(ch05.check_sample_features, seeded_inside(make_generator), hint_contains="do not create, seed or copy")


@pytest.mark.mistake
def test_sample_features_with_one_mask_draw_for_all_instances() -> None:
    """A [batch 1 feature] draw: each instance's marginals are right, but the instances switch features on together."""
    shared = masked_uniform(torch.lt, mask_shape=lambda shape: (shape[0], 1, shape[2]))
    message = expect_failure(ch05.check_sample_features, shared, hint_contains="independently")
    assert "present together" in message


@pytest.mark.mistake
def test_sample_features_with_one_value_per_example() -> None:
    one_value = masked_uniform(torch.lt, values=lambda shape, **rng: torch.rand(shape[0], 1, 1, **rng))
    message = expect_failure(ch05.check_sample_features, one_value, hint_contains="one value per example")
    assert "correlation" in message


# --- toy_forward --------------------------------------------------------------------------


@pytest.mark.mistake
def test_toy_forward_without_the_relu() -> None:
    def linear(W, b_final, features):
        return back_to_features(W, hidden_of(W, features)) + b_final

    expect_failure(ch05.check_toy_forward, linear, hint_contains="ReLU")


@pytest.mark.mistake
def test_toy_forward_with_the_relu_before_the_bias() -> None:
    def relu_first(W, b_final, features):
        return F.relu(back_to_features(W, hidden_of(W, features))) + b_final

    expect_failure(ch05.check_toy_forward, relu_first, hint_contains="ReLU last")


@pytest.mark.mistake
def test_toy_forward_without_the_bias() -> None:
    def no_bias(W, b_final, features):
        return F.relu(back_to_features(W, hidden_of(W, features)))

    expect_failure(ch05.check_toy_forward, no_bias, hint_contains="b_final")


@pytest.mark.mistake
def test_toy_forward_with_W_not_transposed_on_the_way_back() -> None:
    """Batched matmul reads W as [instance hidden feature] both ways; the shapes do not line up."""

    def matmul(W, b_final, features):
        hidden = features @ W.transpose(-1, -2)  # [batch instance feature] @ [instance feature hidden]
        return F.relu(hidden @ W.transpose(-1, -2) + b_final)

    message = expect_failure(ch05.check_toy_forward, matmul)
    assert "`matmul` raised RuntimeError" in message


@pytest.mark.mistake
def test_toy_forward_with_one_instances_weights() -> None:
    def first_instance(W, b_final, features):
        hidden = einops.einsum(features, W[0], "batch instance feature, hidden feature -> batch instance hidden")
        return F.relu(einops.einsum(hidden, W[0], "batch instance hidden, hidden feature -> batch instance feature") + b_final)

    expect_failure(ch05.check_toy_forward, first_instance, hint_contains="einsum")


# --- importance_weighted_loss -------------------------------------------------------------


def reduced_error(reduce, weighted=True):
    """A learner's loss: `reduce` applied to the (importance-weighted) squared errors [batch instance feature]."""

    def importance_weighted_loss(output, features, importance):
        error = (features - output) ** 2
        return reduce(importance * error if weighted else error)

    return importance_weighted_loss


@pytest.mark.mistake
def test_importance_weighted_loss_with_the_mean_over_features() -> None:
    expect_failure(
        ch05.check_importance_weighted_loss,
        reduced_error(lambda error: error.mean(dim=2).sum(dim=1).mean()),
        hint_contains="SUM over features",
    )


@pytest.mark.mistake
def test_importance_weighted_loss_without_the_importance() -> None:
    expect_failure(
        ch05.check_importance_weighted_loss,
        reduced_error(lambda error: error.sum(dim=(1, 2)).mean(), weighted=False),
        hint_contains="importance",
    )


@pytest.mark.mistake
def test_importance_weighted_loss_with_the_mean_over_instances() -> None:
    expect_failure(
        ch05.check_importance_weighted_loss,
        reduced_error(lambda error: error.sum(dim=2).mean(dim=(0, 1))),
        hint_contains="MEAN over the batch only",
    )


@pytest.mark.mistake
def test_importance_weighted_loss_with_the_mean_over_everything() -> None:
    expect_failure(ch05.check_importance_weighted_loss, reduced_error(torch.mean), hint_contains="SUM")


@pytest.mark.mistake
def test_importance_weighted_loss_per_instance() -> None:
    message = expect_failure(
        ch05.check_importance_weighted_loss, reduced_error(lambda error: error.sum(dim=2).mean(dim=0)), hint_contains="0-d tensor"
    )
    assert "shape (3,), expected ()" in message


@pytest.mark.mistake
def test_importance_weighted_loss_as_a_float() -> None:
    message = expect_failure(ch05.check_importance_weighted_loss, reduced_error(lambda error: error.sum(dim=(1, 2)).mean().item()))
    assert "got float" in message


# --- feature_dimensionality ---------------------------------------------------------------


def gram(W):
    return einops.einsum(W, W, "instance hidden feature_i, instance hidden feature_j -> instance feature_i feature_j")


def test_feature_dimensionality_with_an_eps_passes(capsys) -> None:
    """Adding a small eps to the denominator is as good as clamping it."""

    def with_eps(W):
        G = gram(W)
        return G.diagonal(dim1=-2, dim2=-1) ** 2 / (G.square().sum(dim=-1) + 1e-12)

    ch05.check_feature_dimensionality(with_eps)
    assert "✓" in capsys.readouterr().out


@pytest.mark.mistake
def test_feature_dimensionality_without_the_square_in_the_numerator() -> None:
    def unsquared(W):
        G = gram(W)
        return G.diagonal(dim1=-2, dim2=-1) / G.square().sum(dim=-1).clamp_min(1e-30)

    expect_failure(ch05.check_feature_dimensionality, unsquared, hint_contains="G_ii^2")


@pytest.mark.mistake
def test_feature_dimensionality_without_the_clamp() -> None:
    def no_clamp(W):
        G = gram(W)
        return G.diagonal(dim1=-2, dim2=-1) ** 2 / G.square().sum(dim=-1)

    message = expect_failure(ch05.check_feature_dimensionality, no_clamp, hint_contains="clamp")
    assert "1 NaN" in message


@pytest.mark.mistake
def test_feature_dimensionality_normalised_along_the_features() -> None:
    """Ŵ_i = W_i / ||W_i|| with the norm taken over the features instead of the hidden dimensions."""

    def wrong_axis(W):
        unit = W / W.norm(dim=2, keepdim=True)
        dots = einops.einsum(unit, W, "instance hidden feature_i, instance hidden feature_j -> instance feature_i feature_j")
        return W.norm(dim=1) ** 2 / dots.square().sum(dim=-1).clamp_min(1e-30)

    expect_failure(ch05.check_feature_dimensionality, wrong_axis, hint_contains="G_ii^2")


@pytest.mark.mistake
def test_feature_dimensionality_with_the_hidden_gram_matrix() -> None:
    """W W^T is [instance hidden hidden]: its diagonal has one entry per hidden dimension, not per feature."""

    def hidden_gram(W):
        G = einops.einsum(W, W, "instance hidden_i feature, instance hidden_j feature -> instance hidden_i hidden_j")
        return G.diagonal(dim1=-2, dim2=-1) ** 2 / G.square().sum(dim=-1).clamp_min(1e-30)

    message = expect_failure(ch05.check_feature_dimensionality, hidden_gram)
    assert "shape (3, 2), expected (3, 5)" in message


@pytest.mark.mistake
def test_feature_dimensionality_with_norms_instead_of_dot_products() -> None:
    """||W_i||^2 / sum_j ||W_j||^2: the share of the total norm, blind to the angles between features."""

    def norm_share(W):
        squared_norms = W.square().sum(dim=1)
        return squared_norms / squared_norms.sum(dim=-1, keepdim=True)

    expect_failure(ch05.check_feature_dimensionality, norm_share, hint_contains="G_ij^2")


@pytest.mark.mistake
def test_feature_dimensionality_with_unsquared_dot_products() -> None:
    def absolute_dots(W):
        G = gram(W)
        unit_dots = G / W.norm(dim=1)[:, :, None].clamp_min(1e-15)  # Ŵ_i · W_j
        return W.norm(dim=1) ** 2 / unit_dots.abs().sum(dim=-1).clamp_min(1e-30)

    expect_failure(ch05.check_feature_dimensionality, absolute_dots, hint_contains="G_ij^2")


# --- classify_phase -----------------------------------------------------------------------


def phases(superposed_if, dedicated_if, threshold=0.5):
    """A learner's classify_phase from two rules on (w0, w1, represented0, represented1)."""

    def classify_phase(W, threshold=threshold):
        w0, w1 = W[:, 0, 0], W[:, 0, 1]
        shown0, shown1 = w0.abs() > threshold, w1.abs() > threshold
        superposed = superposed_if(w0, w1, shown0, shown1)
        dedicated = dedicated_if(w0, w1, shown0, shown1)
        return torch.where(superposed, 2, torch.where(dedicated, 1, 0))

    return classify_phase


def longer_or_alone(w0, w1, shown0, shown1):
    return shown1 & (w1.abs() > w0.abs())


@pytest.mark.mistake
def test_classify_phase_without_the_sign_check() -> None:
    message = expect_failure(
        ch05.check_classify_phase, phases(lambda w0, w1, shown0, shown1: shown0 & shown1, longer_or_alone), hint_contains="opposite signs"
    )
    assert "classify_phase gave" in message


@pytest.mark.mistake
def test_classify_phase_thresholding_W_not_its_size() -> None:
    def signed(W, threshold=0.5):
        shown = W[:, 0, :] > threshold
        superposed = shown.all(dim=1) & (W[:, 0, 0] * W[:, 0, 1] < 0)
        return torch.where(superposed, 2, torch.where(shown[:, 1] & ~shown[:, 0], 1, 0))

    expect_failure(ch05.check_classify_phase, signed, hint_contains="norm > 0.5")


@pytest.mark.mistake
def test_classify_phase_of_feature_0() -> None:
    def feature_0(W):
        return superposition.classify_phase(W.flip(-1))

    expect_failure(ch05.check_classify_phase, feature_0, hint_contains="feature 1")


@pytest.mark.mistake
def test_classify_phase_returning_a_list() -> None:
    def as_list(W):
        return superposition.classify_phase(W).tolist()

    message = expect_failure(ch05.check_classify_phase, as_list, hint_contains="tensor of class indices")
    assert "returned list" in message


@pytest.mark.mistake
def test_classify_phase_returning_one_hot() -> None:
    def one_hot(W):
        return F.one_hot(superposition.classify_phase(W), len(superposition.PHASE_NAMES))

    message = expect_failure(ch05.check_classify_phase, one_hot, hint_contains="one per instance")
    assert "expected one class per instance" in message


@pytest.mark.mistake
def test_classify_phase_ignoring_same_side_pairs() -> None:
    only_alone = phases(lambda w0, w1, shown0, shown1: shown0 & shown1 & (w0 * w1 < 0), lambda w0, w1, shown0, shown1: shown1 & ~shown0)
    expect_failure(ch05.check_classify_phase, only_alone, hint_contains="same-side pair")


@pytest.mark.mistake
def test_classify_phase_superposition_without_feature_0_represented() -> None:
    no_feature_0 = phases(lambda w0, w1, shown0, shown1: shown1 & (w0 * w1 < 0), longer_or_alone)
    expect_failure(ch05.check_classify_phase, no_feature_0, hint_contains="BOTH features represented")


@pytest.mark.mistake
def test_classify_phase_with_a_fixed_threshold() -> None:
    fixed = lambda W, threshold=0.5: superposition.classify_phase(W)  # noqa: E731
    message = expect_failure(ch05.check_classify_phase, fixed, hint_contains="not a fixed 0.5")
    assert "with threshold=0.95" in message


@pytest.mark.mistake
def test_classify_phase_comparing_signed_weights() -> None:
    """`w1 > w0` instead of `|w1| > |w0|`: right while the weights are positive."""
    signed_longer = phases(lambda w0, w1, shown0, shown1: shown0 & shown1 & (w0 * w1 < 0), lambda w0, w1, shown0, shown1: shown1 & (w1 > w0))
    expect_failure(ch05.check_classify_phase, signed_longer, hint_contains="on either side of 0")
