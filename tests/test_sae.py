"""mechlearn.sae: SAE maths, the objective, the trainer, dead-latent resampling, metrics and ground-truth data."""

import math
import re
from dataclasses import replace

import pytest
import torch
from bad_inputs import needs_cuda, raises_one_sentence

import mechlearn.sae
from mechlearn.models import ModelConfig, make_model
from mechlearn.sae import (
    SAE,
    SAEConfig,
    SparseFeatureData,
    window_dead_fraction,
    explained_variance,
    held_out_dead_fraction,
    l0,
    loss_recovered,
    mmcs,
    mse,
    resample_dead_latents,
    sae_loss,
    score_latents,
    splice_hook,
    train_sae,
    activation_scale,
)
from mechlearn.train import next_token_loss

DATA = SparseFeatureData(n_features=128, d_model=64, features_per_input=3.0)
# train_sae normalises the activations to a mean norm of sqrt(d_in), here a factor of about 8.9: these
# tests used l1_coefficient 0.15 on the raw activations before it did, which is 1.35 on the normalised
# ones; 1.5 keeps the trained SAE's L0 at most 5 (at 1.35 it is 5.1 with the learning rate's decay).
RELU = SAEConfig(d_in=64, d_sae=128, l1_coefficient=1.5, lr=1e-2, batch_size=1024, steps=300, dead_window=100)
TOPK = replace(RELU, kind="topk", k=5)  # k=4 drops the 4+ features of the busier inputs: explained variance 0.89 on fresh inputs


@pytest.fixture(scope="module")
def activations() -> torch.Tensor:
    return DATA.sample(20_000, torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def trained(activations) -> dict[str, tuple[SAE, list[dict[str, float]]]]:
    threads = torch.get_num_threads()  # module fixtures run before conftest's one_thread
    torch.set_num_threads(1)
    result = {}
    for config in (RELU, TOPK):
        sae = SAE(config)
        result[config.kind] = sae, train_sae(sae, activations, progress=False)
    torch.set_num_threads(threads)
    return result


def tiny_sae(kind: str = "relu", **fields) -> SAE:
    """A 2-in, 3-latent SAE with hand-set weights (decoder rows deliberately not unit norm)."""
    sae = SAE(SAEConfig(d_in=2, d_sae=3, kind=kind, k=1, **fields))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -0.5, 0.0]))
        sae.W_dec.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        sae.b_dec.copy_(torch.tensor([1.0, 0.0]))
    return sae


def killed(config: SAEConfig) -> SAE:
    """An SAE whose first half of latents can never fire: zero encoder columns and a negative bias."""
    sae = SAE(config)
    with torch.no_grad():
        sae.W_enc[:, : config.d_sae // 2] = 0.0
        sae.b_enc[: config.d_sae // 2] = -1.0
    return sae


# --- config and the SAE's maths ------------------------------------------------------------


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(d_in=0), "d_in"),
        (dict(d_sae=True), "d_sae"),
        (dict(lr="1e-3"), "SAEConfig.lr must be a finite number"),
        (dict(l1_coefficient=math.nan), "SAEConfig.l1_coefficient must be a finite number"),
        (dict(kind="gated"), "kind"),
        (dict(kind="topk", k=200), "cannot exceed d_sae"),
        (dict(dead_remedy="aux_k"), "dead_remedy"),
        (dict(l1_coefficient=-1.0), "l1_coefficient"),
        (dict(lr=0.0), "lr"),
        (dict(batch_size=0), "batch_size"),
        (dict(dead_window=0), "dead_window"),
        (dict(log_every=2.5), "log_every"),
        (dict(lr_decay=1.5), "lr_decay"),
        (dict(normalize_activations=1), "normalize_activations"),
    ],
)
def test_config_rejects_bad_fields(fields, message) -> None:
    with raises_one_sentence(ValueError, message):
        SAEConfig(**{"d_in": 8, "d_sae": 16, **fields})


def test_init_is_seeded_with_unit_decoder_rows_and_a_tied_encoder() -> None:
    sae = SAE(SAEConfig(d_in=8, d_sae=16))
    assert sae.W_enc.shape == (8, 16) and sae.W_dec.shape == (16, 8) and sae.b_enc.shape == (16,) and sae.b_dec.shape == (8,)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(16))
    torch.testing.assert_close(sae.W_enc, 0.1 * sae.W_dec.T)  # ReLU: a small tied encoder
    torch.testing.assert_close(SAE(SAEConfig(d_in=8, d_sae=16, kind="topk")).W_enc, sae.W_dec.T)
    assert not sae.b_enc.any() and not sae.b_dec.any()
    torch.testing.assert_close(SAE(SAEConfig(d_in=8, d_sae=16)).W_dec, sae.W_dec)
    assert not torch.allclose(SAE(SAEConfig(d_in=8, d_sae=16, seed=1)).W_dec, sae.W_dec)
    with pytest.raises(TypeError, match="SAEConfig"):
        SAE({"d_in": 8, "d_sae": 16})


def test_encode_subtracts_b_dec_then_applies_relu() -> None:
    sae = SAE(SAEConfig(d_in=8, d_sae=16))
    with torch.no_grad():
        sae.b_enc.normal_(generator=torch.Generator().manual_seed(0))
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    expected = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    torch.testing.assert_close(sae.encode(x), expected)
    reconstruction, latents = sae(x)
    torch.testing.assert_close(latents, expected)
    torch.testing.assert_close(reconstruction, expected @ sae.W_dec + sae.b_dec)


def test_topk_keeps_the_k_largest_pre_activations() -> None:
    sae = tiny_sae("topk")
    x = torch.tensor([[3.0, 2.0], [1.0, 3.0], [0.0, -1.0]])
    # pre = (x - b_dec) @ W_enc + b_enc: [[2, 1.5, 0], [0, 2.5, -3], [-1, -1.5, 0]]
    expected = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.5, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(sae.encode(x), expected)
    wider = SAE(SAEConfig(d_in=8, d_sae=16, kind="topk", k=4))
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    latents, pre = wider.encode(x), wider.pre_activations(x)
    assert ((latents != 0).sum(dim=1) <= 4).all() and (latents >= 0).all()
    torch.testing.assert_close(latents[latents != 0], pre[latents != 0])
    torch.testing.assert_close(latents.sum(dim=1), pre.topk(4, dim=1).values.relu().sum(dim=1))


def test_normalize_decoder_keeps_directions() -> None:
    sae = tiny_sae()
    with torch.no_grad():
        sae.W_dec[2] = torch.tensor([3.0, 4.0])
    sae.normalize_decoder()
    torch.testing.assert_close(sae.W_dec, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))


# --- the objective ---------------------------------------------------------------------------


def test_relu_loss_is_squared_error_plus_decoder_weighted_l1() -> None:
    sae = tiny_sae(l1_coefficient=0.5)
    x = torch.tensor([[3.0, 2.0], [1.0, 1.0]])
    # latents = relu(pre) = [[2, 1.5, 0], [0, 0.5, 0]]; reconstruction = latents @ W_dec + b_dec
    # = [[5, 1.5], [1, 0.5]]; squared errors 4.25 and 0.25; weighted L1: (2*2 + 1.5*1) and 0.5*1.
    losses = sae_loss(sae, x)
    assert losses["mse"].item() == pytest.approx((4.25 + 0.25) / 2)
    assert losses["l1"].item() == pytest.approx((5.5 + 0.5) / 2)
    assert losses["loss"].item() == pytest.approx(2.25 + 0.5 * 3.0)
    torch.testing.assert_close(losses["activity"], torch.tensor([2.0, 2.0, 0.0]))
    losses["loss"].backward()
    assert sae.W_dec.grad is not None and sae.b_dec.grad.abs().sum() > 0


def test_topk_loss_is_the_squared_error_alone() -> None:
    sae = tiny_sae("topk", l1_coefficient=0.5)
    x = torch.tensor([[3.0, 2.0], [1.0, 3.0]])
    # latents [[2, 0, 0], [0, 2.5, 0]]; reconstruction [[5, 0], [1, 2.5]]; squared errors 8 and 0.25
    losses = sae_loss(sae, x)
    assert losses["loss"].item() == pytest.approx(4.125) and set(losses) == {"loss", "mse", "activity"}
    torch.testing.assert_close(losses["activity"], torch.tensor([2.0, 2.5, 0.0]))


def plain_sae_loss(sae: SAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """sae_loss written the straightforward way: the SAE's forward pass and autograd, no hand-written backward."""
    reconstruction, latents = sae(x)
    error = (reconstruction - x).pow(2).sum(dim=-1).mean()
    activity = latents.sum(dim=0)
    if sae.config.kind == "topk":
        return {"loss": error, "mse": error, "activity": activity.detach()}
    l1 = activity @ sae.W_dec.norm(dim=1) / len(x)
    return {"loss": error + sae.config.l1_coefficient * l1, "mse": error, "l1": l1, "activity": activity.detach()}


@pytest.mark.parametrize("kind", ["relu", "topk"])
def test_hand_written_backward_passes_gradcheck(kind) -> None:
    generator = torch.Generator().manual_seed(0)
    x, W_enc, bias, W_dec, b_dec = (
        torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True) for shape in ((6, 3), (3, 5), (5,), (5, 3), (3,))
    )
    with torch.no_grad():
        bias -= 1.0  # some pre-activations kept by TopK are then negative, so the ReLU's derivative matters
    if kind == "relu":
        autoencoder = mechlearn.sae._ReLUAutoencoder.apply
    else:
        autoencoder = lambda *tensors: mechlearn.sae._TopKAutoencoder.apply(*tensors, 2)
    assert torch.autograd.gradcheck(autoencoder, (x, W_enc, bias, W_dec, b_dec))


def test_sampled_matmul_is_the_gathered_product() -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=generator, dtype=torch.float64), torch.randn(5, 11, generator=generator, dtype=torch.float64)
    columns = torch.rand(7, 11, generator=generator).topk(3, dim=1).indices.sort(dim=1).values
    torch.testing.assert_close(mechlearn.sae._sampled_matmul(a, b, columns), (a @ b).gather(1, columns))


@pytest.mark.parametrize("config", [RELU, TOPK])
def test_sae_loss_matches_plain_autograd(config) -> None:
    x = DATA.sample(256, torch.Generator().manual_seed(0)).requires_grad_()
    fast, plain = SAE(config), SAE(config)
    with torch.no_grad():
        for sae in (fast, plain):  # non-unit decoder rows and non-zero biases, so that every term of the gradient shows
            sae.W_dec.mul_(torch.linspace(0.5, 2.0, config.d_sae)[:, None])
            sae.b_enc.normal_(std=0.1, generator=torch.Generator().manual_seed(1))
            sae.b_dec.normal_(std=0.1, generator=torch.Generator().manual_seed(2))
    expected, got = plain_sae_loss(plain, x), sae_loss(fast, x)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
    grad_x, *grads = torch.autograd.grad(got["loss"], [x, *fast.parameters()])
    expected_grad_x, *expected_grads = torch.autograd.grad(expected["loss"], [x, *plain.parameters()])
    torch.testing.assert_close(grad_x, expected_grad_x)
    for (name, _), grad, expected_grad in zip(fast.named_parameters(), grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, msg=lambda message, name=name: f"{name}'s gradient: {message}")


@pytest.mark.parametrize("config", [RELU, TOPK])
def test_training_matches_plain_autograd(activations, config, monkeypatch) -> None:
    # In float64: in float32, rounding differences can flip a TopK choice within a few steps.
    config, activations = replace(config, steps=20, log_every=10), activations.double()
    fast, plain = SAE(config).double(), SAE(config).double()
    history = train_sae(fast, activations, progress=False)
    monkeypatch.setattr(mechlearn.sae, "sae_loss", plain_sae_loss)
    expected = train_sae(plain, activations, progress=False)
    for record, reference in zip(history, expected, strict=True):
        assert record == pytest.approx(reference, rel=1e-10)
    for parameter, reference in zip(fast.parameters(), plain.parameters()):
        torch.testing.assert_close(parameter, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("config", [RELU, TOPK])
def test_dead_latents_get_no_gradient(config) -> None:
    sae = killed(config)
    sae_loss(sae, DATA.sample(256, torch.Generator().manual_seed(0)))["loss"].backward()
    assert sae.W_enc.grad[:, :64].abs().sum() == 0 and sae.b_enc.grad[:64].abs().sum() == 0


def test_resampling_reinitialises_only_dead_latents() -> None:
    sae = SAE(RELU)
    optimizer = torch.optim.Adam(sae.parameters())
    x = DATA.sample(256, torch.Generator().manual_seed(0))
    sae_loss(sae, x)["loss"].backward()
    optimizer.step()
    before = {name: parameter.detach().clone() for name, parameter in sae.named_parameters()}
    dead = torch.zeros(128, dtype=torch.bool)
    dead[:10] = True
    resample_dead_latents(sae, x, dead, optimizer, torch.Generator().manual_seed(0))
    torch.testing.assert_close(sae.W_dec[10:], before["W_dec"][10:])
    torch.testing.assert_close(sae.W_enc[:, 10:], before["W_enc"][:, 10:])
    torch.testing.assert_close(sae.b_enc[10:], before["b_enc"][10:])
    torch.testing.assert_close(sae.W_dec[:10].norm(dim=1), torch.ones(10))
    inputs = torch.nn.functional.normalize(x - sae.b_dec, dim=1)
    assert (sae.W_dec[:10] @ inputs.T).max(dim=1).values.min() > 1 - 1e-5, "each new decoder row is an input's direction"
    torch.testing.assert_close(sae.W_enc[:, :10].T, 0.2 * before["W_enc"][:, 10:].norm(dim=0).mean() * sae.W_dec[:10])
    assert not sae.b_enc[:10].any()
    for parameter in (sae.W_dec, sae.b_enc):
        assert not optimizer.state[parameter]["exp_avg"][:10].any() and optimizer.state[parameter]["exp_avg"][10:].any()


# --- training --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["relu", "topk"])
def test_trained_sae_recovers_the_true_features(trained, activations, kind) -> None:
    sae, history = trained[kind]
    # The control: random unit vectors in 64 dimensions; the best of 128 lies about 0.3 from each feature.
    assert mmcs(SAE(sae.config).W_dec, DATA.dictionary()) < 0.4
    assert mmcs(sae.W_dec, DATA.dictionary()) >= 0.95
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(128))
    final = history[-1]
    assert [record["step"] for record in history] == [100, 200, 300]
    assert set(final) == {"step", "loss", "mse", "l0", "explained_variance", "window_dead_fraction"}
    assert final["explained_variance"] > 0.9 and final["window_dead_fraction"] == 0.0
    assert 2.0 <= final["l0"] <= 5.0, f"the data have 3 active features per input on average, the SAE {final['l0']}"
    assert history[0]["mse"] > final["mse"]
    x = DATA.sample(2000, torch.Generator().manual_seed(2))
    reconstruction, latents = sae(x)
    assert explained_variance(x, reconstruction) > 0.9, "it must generalise to fresh inputs"


def test_training_is_deterministic_under_the_seed(activations) -> None:
    config = replace(RELU, steps=60, log_every=20)
    first, second, other = SAE(config), SAE(config), SAE(replace(config, seed=1))
    history = train_sae(first, activations, progress=False)
    assert train_sae(second, activations, progress=False) == history
    torch.testing.assert_close(first.W_dec, second.W_dec, rtol=0, atol=0)
    assert train_sae(other, activations, progress=False) != history


def test_nan_loss_raises(activations) -> None:
    sae = SAE(replace(RELU, steps=5, log_every=5, lr=1e30))  # NaN weights would be refused up front: grow them in training
    with pytest.raises(FloatingPointError, match="lr"):
        train_sae(sae, activations, progress=False)


@pytest.mark.parametrize("config", [RELU, TOPK])
def test_resampling_revives_killed_latents(activations, config) -> None:
    config = replace(config, steps=250, dead_window=25, log_every=25)  # 150 were enough when a last resampling ended training and before normalisation slowed the biases
    x = DATA.sample(2000, torch.Generator().manual_seed(2))
    silent, history = {}, {}
    for remedy in ("none", "resample"):
        sae = killed(replace(config, dead_remedy=remedy))
        history[remedy] = train_sae(sae, activations, progress=False)
        silent[remedy] = held_out_dead_fraction(sae.encode(x))
    assert history["none"][-1]["window_dead_fraction"] == silent["none"] == 0.5, "the killed half can never fire on its own"
    assert silent["resample"] < 0.1 and history["resample"][-1]["window_dead_fraction"] < 0.1
    assert history["resample"][-1]["explained_variance"] > history["none"][-1]["explained_variance"] + 0.1


@pytest.mark.bad_input
def test_train_sae_checks_its_inputs(activations) -> None:
    sae = SAE(RELU)
    with pytest.raises(ValueError, match="d_in"):
        train_sae(sae, activations[:, :32], progress=False)
    for value in (math.nan, math.inf):
        bad = activations[:100].clone()
        bad[3, 4] = value
        with pytest.raises(ValueError, match="NaN or inf"):
            train_sae(sae, bad, progress=False)
    huge = torch.full((100, 64), 3e38)  # finite, though their sum overflows: the check must let them through
    with pytest.raises(FloatingPointError):  # and, unless normalised, the loss then overflows
        train_sae(SAE(replace(RELU, steps=1, normalize_activations=False)), huge, progress=False)
    with pytest.raises(TypeError, match="SAE"):
        train_sae(torch.nn.Linear(64, 128), activations, progress=False)


# --- normalisation and defaults --------------------------------------------------------------


def test_activation_scale_brings_the_mean_norm_to_sqrt_d_in(activations) -> None:
    scale = activation_scale(activations)
    assert (scale * activations).norm(dim=1).mean().item() == pytest.approx(8.0, rel=1e-5)  # sqrt(64)
    assert activation_scale(10 * activations) == pytest.approx(scale / 10, rel=1e-6)
    assert activation_scale(torch.full((10, 4), 3e38)) == pytest.approx(2 / (2 * 3e38))  # norms computed without overflow
    with pytest.raises(ValueError, match="mean norm"):
        activation_scale(torch.zeros(10, 4))


def test_normalised_training_is_training_on_scaled_activations_folded_back(activations) -> None:
    """The SAE returned reads raw activations: what the SAE trained on s * x does on s * x, divided by s."""
    config = replace(RELU, steps=60, log_every=20)
    scale = activation_scale(activations)
    folded, scaled = SAE(config), SAE(replace(config, normalize_activations=False))
    history = train_sae(folded, activations, progress=False)
    scaled_history = train_sae(scaled, scale * activations, progress=False)
    torch.testing.assert_close(folded.W_enc, scaled.W_enc)
    torch.testing.assert_close(folded.W_dec, scaled.W_dec)  # unit rows: the scale lives in the biases
    torch.testing.assert_close(folded.W_dec.norm(dim=1), torch.ones(config.d_sae))
    torch.testing.assert_close(scale * folded.b_enc, scaled.b_enc)
    torch.testing.assert_close(scale * folded.b_dec, scaled.b_dec)
    x = DATA.sample(500, torch.Generator().manual_seed(2))
    reconstruction, latents = folded(x)
    scaled_reconstruction, scaled_latents = scaled(scale * x)
    torch.testing.assert_close(scale * reconstruction, scaled_reconstruction)
    torch.testing.assert_close(scale * latents, scaled_latents)
    for record, scaled_record in zip(history, scaled_history, strict=True):  # mse and loss in raw units
        assert record["mse"] == pytest.approx(scaled_record["mse"] / scale**2, rel=1e-4)
        assert record["loss"] == pytest.approx(scaled_record["loss"] / scale**2, rel=1e-4)
        assert record["l0"] == scaled_record["l0"]
        assert record["explained_variance"] == pytest.approx(scaled_record["explained_variance"], abs=1e-5)


@pytest.mark.parametrize("kind", ["relu", "topk"])
def test_normalised_training_does_not_depend_on_the_activations_scale(activations, kind) -> None:
    config = replace(RELU, kind=kind, k=4, steps=60, log_every=20)
    sae, tenfold = SAE(config), SAE(config)
    history, tenfold_history = train_sae(sae, activations, progress=False), train_sae(tenfold, 10 * activations, progress=False)
    torch.testing.assert_close(tenfold.W_dec, sae.W_dec, rtol=1e-3, atol=1e-4)
    x = DATA.sample(500, torch.Generator().manual_seed(2))
    reconstruction, latents = sae(x)
    tenfold_reconstruction, tenfold_latents = tenfold(10 * x)
    torch.testing.assert_close(tenfold_latents, 10 * latents, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(tenfold_reconstruction, 10 * reconstruction, rtol=1e-3, atol=1e-3)
    assert history[-1]["l0"] == pytest.approx(tenfold_history[-1]["l0"], rel=1e-2)
    assert tenfold_history[-1]["mse"] == pytest.approx(100 * history[-1]["mse"], rel=1e-2)


def test_training_continues_an_already_trained_sae(activations) -> None:
    """A second call rescales the trained SAE into the normalised space first, so it picks up where the first left off."""
    sae = SAE(replace(RELU, steps=100, log_every=100))
    first = train_sae(sae, activations, progress=False)[-1]
    again = SAE(replace(sae.config, lr=1e-9, steps=1, log_every=1))  # a step that changes next to nothing
    again.load_state_dict(sae.state_dict())
    second = train_sae(again, activations, progress=False)[-1]
    for name, parameter in sae.named_parameters():
        torch.testing.assert_close(getattr(again, name), parameter, rtol=1e-4, atol=1e-5)
    assert second["mse"] == pytest.approx(first["mse"], rel=0.2)  # another batch, the same SAE


PLANTED = SparseFeatureData(n_features=256, d_model=32, features_per_input=5.0)


@pytest.mark.parametrize("kind, seed", [("relu", 0), ("topk", 1)])
def test_defaults_recover_planted_features(kind, seed) -> None:
    """With nothing but the shape set, 256 planted features in 32 dimensions, about 5 active per input, are found."""
    data = replace(PLANTED, seed=seed)
    sae = SAE(SAEConfig(d_in=32, d_sae=256, kind=kind, seed=seed))
    assert mmcs(sae.W_dec, data.dictionary()) <= 0.6, "the SAE must not start on the planted features"  # about 0.48
    history = train_sae(sae, data.sample(50_000, torch.Generator().manual_seed(1000 + seed)), progress=False)
    assert mmcs(sae.W_dec, data.dictionary()) >= 0.9  # 0.96 to 0.98 over seeds 0, 1 and 2
    x = data.sample(5_000, torch.Generator().manual_seed(2000 + seed))
    reconstruction, latents = sae(x)
    assert l0(latents) <= (12 if kind == "relu" else 8), "5 features are active per input"  # ReLU about 10
    assert explained_variance(x, reconstruction) > (0.6 if kind == "relu" else 0.8)
    assert history[-1]["window_dead_fraction"] == 0.0


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_on_hand_made_inputs() -> None:
    assert l0(torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])) == 1.5
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert mse(x, torch.tensor([[0.0, 0.0], [-1.0, 2.0]])) == 2.5  # (1 + 4) / 2 inputs
    assert explained_variance(x, x) == 1.0
    assert explained_variance(x, torch.zeros_like(x)) == 0.0  # the mean of x is 0
    assert explained_variance(x, torch.tensor([[0.5, 0.0], [-1.0, 0.0]])) == pytest.approx(1 - 0.25 / 2)
    assert window_dead_fraction(torch.tensor([0, 5, 10, 20]), 10) == 0.5
    assert held_out_dead_fraction(torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])) == 0.5


def test_mmcs_is_signed_and_scale_free() -> None:
    true = torch.eye(2)
    assert mmcs(torch.tensor([[3.0, 0.0], [1.0, 1.0]]), true) == pytest.approx((1 + 2**-0.5) / 2)
    assert mmcs(-true, true) == 0.0, "a direction pointing against a feature does not recover it"
    assert mmcs(torch.cat([5 * true, -true]), true) == pytest.approx(1.0)


@pytest.mark.bad_input
def test_metrics_check_their_inputs() -> None:
    with pytest.raises(ValueError, match="same shape"):
        mse(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="no variance"):
        explained_variance(torch.ones(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="d_in"):
        mmcs(torch.zeros(4, 3), torch.eye(2))
    with pytest.raises(ValueError, match="dead_window"):
        window_dead_fraction(torch.zeros(4), 0)
    with pytest.raises(ValueError, match="latents"):
        l0(torch.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        l0(torch.tensor([[0.0, float("nan")]]))  # NaN is not an active latent
    with pytest.raises(ValueError, match="non-empty"):
        l0(torch.zeros(0, 4))  # the mean of nothing would be nan
    for metric in (mse, explained_variance):
        with pytest.raises(ValueError, match="non-empty"):
            metric(torch.zeros(0, 2), torch.zeros(0, 2))
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match="reconstruction contains NaN or inf"):
                metric(torch.ones(3, 2), torch.full((3, 2), bad))
    for bad in (torch.zeros(0, 4), torch.zeros(4), torch.zeros(2, 4, dtype=torch.long)):
        with pytest.raises(ValueError, match="latents"):
            held_out_dead_fraction(bad)


# --- loss recovered --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return make_model(ModelConfig(d_vocab=20, n_ctx=12, d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32))


def identity_sae(d: int) -> SAE:
    """An SAE that reconstructs exactly: relu(x) - relu(-x) = x, with unit decoder rows."""
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d))
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)], dim=1))
        sae.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)]))
    return sae


def test_loss_recovered_is_one_for_a_perfect_sae_and_zero_for_a_zero_one(model) -> None:
    tokens = torch.randint(0, 20, (8, 12), generator=torch.Generator().manual_seed(0))
    hook_name = "blocks.1.hook_resid_pre"
    assert loss_recovered(model, tokens, hook_name, identity_sae(16), next_token_loss) == pytest.approx(1.0, abs=1e-5)
    silent = identity_sae(16)
    with torch.no_grad():
        silent.W_enc.zero_()
    assert loss_recovered(model, tokens, hook_name, silent, next_token_loss) == pytest.approx(0.0, abs=1e-6)
    partial = loss_recovered(model, tokens, hook_name, SAE(SAEConfig(d_in=16, d_sae=64)), next_token_loss)
    assert partial != pytest.approx(1.0) and partial != pytest.approx(0.0)
    with pytest.raises(ValueError, match="d_in=8"):
        loss_recovered(model, tokens, hook_name, identity_sae(8), next_token_loss)


def test_splice_hook_replaces_the_activation_by_the_reconstruction(model) -> None:
    tokens = torch.randint(0, 20, (8, 12), generator=torch.Generator().manual_seed(0))
    hook_name, sae = "blocks.1.hook_resid_pre", SAE(SAEConfig(d_in=16, d_sae=64))
    seen = {}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
        model.run_with_hooks(tokens, fwd_hooks=[(hook_name, splice_hook(sae)), (hook_name, lambda a, hook: seen.setdefault("a", a.clone()))])
        expected, _ = sae(cache[hook_name].flatten(0, 1))
    torch.testing.assert_close(seen["a"], expected.reshape(8, 12, 16))
    with pytest.raises(TypeError, match="SAE"):
        splice_hook("not an sae")


# --- ground-truth data -----------------------------------------------------------------------


def test_sparse_feature_data_are_sparse_non_negative_combinations_of_a_seeded_dictionary() -> None:
    data = SparseFeatureData(n_features=6, d_model=12, features_per_input=2.0, seed=3)
    dictionary = data.dictionary()
    torch.testing.assert_close(dictionary.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(dictionary, SparseFeatureData(n_features=6, d_model=12, seed=3).dictionary())
    assert not torch.allclose(dictionary, SparseFeatureData(n_features=6, d_model=12, seed=4).dictionary())
    x = data.sample(4000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, data.sample(4000, torch.Generator().manual_seed(0)))
    coefficients = x @ torch.linalg.pinv(dictionary)  # exact: 6 independent features in 12 dimensions
    assert coefficients.min() > -1e-4 and coefficients.max() < 1 + 1e-4
    assert (coefficients > 1e-4).sum(dim=1).float().mean().item() == pytest.approx(2.0, abs=0.1)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(n_features=0), "n_features"),
        (dict(d_model=-1), "d_model"),
        (dict(features_per_input=200.0), "features_per_input"),
        (dict(features_per_input="3"), "SparseFeatureData.features_per_input must be a finite number"),
    ],
)
def test_sparse_feature_data_rejects_bad_fields(fields, message) -> None:
    with raises_one_sentence(ValueError, message):
        SparseFeatureData(**fields)


# --- scoring latents against known properties ------------------------------------------------


def test_score_latents_finds_planted_detectors() -> None:
    generator = torch.Generator().manual_seed(0)
    properties = torch.rand(2000, 3, generator=generator) < 0.3
    latents = 0.05 * torch.rand(2000, 4, generator=generator)  # background noise below 10 % of a detector's peak
    latents[:, 2] += properties[:, 0].float()  # a perfect detector of property 0
    latents[:, 3] += 2 * (properties[:, 1] | properties[:, 2]).float()  # fires for either of 1 and 2
    scores = score_latents(latents, properties)
    assert scores.f1.shape == (4, 3)
    best = scores.best()
    assert best.latent.tolist() == [2, 3, 3]
    assert best.f1[0] == 1 and best.precision[0] == 1 and best.recall[0] == 1
    union = (properties[:, 1] | properties[:, 2]).float().sum()
    expected_precision = properties[:, 1].float().sum() / union  # it fires on the union, so precision is the share of property 1
    torch.testing.assert_close(best.precision[1], expected_precision)
    assert best.recall[1] == 1
    assert 0.1 <= scores.threshold[2, 0] < 1  # above the noise
    assert scores.captured(0.8).tolist() == [True, False, False]
    assert scores.coverage() == pytest.approx(best.f1.mean().item())


def test_score_latents_prefers_the_threshold_with_the_best_f1() -> None:
    properties = torch.tensor([True, True, False, False])[:, None]
    latents = torch.tensor([1.0, 0.6, 0.3, 0.0])[:, None]  # fires on a false row unless thresholded above 0.3
    scores = score_latents(latents, properties, thresholds=(0.0, 0.5))
    assert scores.f1.item() == 1 and scores.threshold.item() == 0.5
    assert score_latents(latents, properties, thresholds=(0.0,)).f1.item() == pytest.approx(2 * 2 / (3 + 2))


@pytest.mark.bad_input
def test_score_latents_checks_its_inputs() -> None:
    latents, properties = torch.rand(10, 4), torch.rand(10, 3) < 0.5
    properties[:, 1] = False
    with pytest.raises(ValueError, match=r"properties \[1\] never hold"):
        score_latents(latents, properties)
    with pytest.raises(ValueError, match="bool"):
        score_latents(latents, properties.float())
    with pytest.raises(ValueError, match="one row per input"):
        score_latents(latents, properties[:5])
    with pytest.raises(ValueError, match="latents"):
        score_latents(latents.long(), properties)


# --- bad input -------------------------------------------------------------------------------


def broken_sae(name: str, value: float = math.nan) -> SAE:
    sae = tiny_sae()
    with torch.no_grad():
        parameter = getattr(sae, name)
        parameter[(0,) * parameter.ndim] = value
    return sae


def resized_sae() -> SAE:
    """A 2-in SAE that was given the weights of a 3-in one: its state disagrees with its config."""
    sae = tiny_sae()
    sae.b_dec = torch.nn.Parameter(torch.zeros(3))
    return sae


X2 = torch.tensor([[1.0, 2.0], [0.5, -1.0], [0.0, 3.0]])
DEAD = torch.tensor([True, False, False])


def stepped_adam(sae: SAE) -> torch.optim.Adam:
    optimizer = torch.optim.Adam(sae.parameters())
    sae_loss(sae, X2)["loss"].backward()
    optimizer.step()
    return optimizer


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: tiny_sae()(X2[:, :1]), ValueError, "x"),
        (lambda: tiny_sae()(X2[0]), ValueError, "x"),
        (lambda: tiny_sae()(X2.long()), ValueError, "x"),
        (lambda: tiny_sae()(X2[:0]), ValueError, "x"),
        (lambda: tiny_sae().encode(X2.to("meta")), ValueError, "x"),
        (lambda: tiny_sae().encode(torch.where(X2 > 2, math.inf, X2)), ValueError, "x"),
        (lambda: tiny_sae().decode(X2), ValueError, "latents"),
        (lambda: sae_loss(tiny_sae(), X2[:, :1]), ValueError, "x"),
        (lambda: sae_loss(broken_sae("W_enc"), X2), ValueError, "sae.W_enc"),
        (lambda: train_sae(broken_sae("b_dec", math.inf), X2, progress=False), ValueError, "sae.b_dec"),
        (lambda: train_sae(resized_sae(), X2, progress=False), ValueError, "sae.b_dec"),
        (lambda: splice_hook(broken_sae("W_dec")), ValueError, "sae.W_dec"),
        (lambda: resample_dead_latents(tiny_sae(), X2, DEAD.float(), stepped_adam(tiny_sae()), torch.Generator()), ValueError, "dead"),
        (lambda: resample_dead_latents(tiny_sae(), X2, DEAD[:2], stepped_adam(tiny_sae()), torch.Generator()), ValueError, "dead"),
        (lambda: resample_dead_latents(tiny_sae(), X2, DEAD, torch.optim.Adam(tiny_sae().parameters()), torch.Generator()), TypeError, "optimizer"),
        (lambda: activation_scale(X2.to("meta")), ValueError, "activations"),
        (lambda: activation_scale(torch.full((3, 2), math.nan)), ValueError, "activations"),
        (lambda: mse(X2, X2.to("meta")), ValueError, "reconstruction"),
        (lambda: l0(X2.to("meta")), ValueError, "latents"),
        (lambda: window_dead_fraction(torch.zeros(0, dtype=torch.long), 10), ValueError, "steps_since_fired"),
        (lambda: mmcs(torch.full((3, 2), math.nan), X2), ValueError, "learned"),
        (lambda: mmcs(X2, torch.full((3, 2), math.inf)), ValueError, "true"),
        (lambda: score_latents(torch.full((3, 2), math.nan), DEAD[:, None]), ValueError, "latents"),
        (lambda: score_latents(X2.abs(), DEAD[:, None], thresholds=(0.5, 1.5)), ValueError, "thresholds"),
        (lambda: score_latents(X2.abs(), DEAD[:, None], thresholds=()), ValueError, "thresholds"),
        (lambda: score_latents(X2.abs(), DEAD[:, None]).captured(min_f1=math.nan), ValueError, "min_f1"),
        (lambda: SparseFeatureData(n_features=4, d_model=2).sample(3, 0), TypeError, "generator"),
        pytest.param(lambda: tiny_sae()(X2.cuda()), ValueError, "x", marks=needs_cuda),
        pytest.param(lambda: mse(X2, X2.cuda()), ValueError, "reconstruction", marks=needs_cuda),
    ],
    ids=[
        "x of another d_in", "x without batch", "int x", "empty x", "meta x", "inf x", "latents of the wrong width",
        "x of another d_in in sae_loss", "NaN encoder", "inf decoder bias", "state disagrees with config", "NaN decoder",
        "float dead", "dead of the wrong length", "an optimizer that never stepped", "meta activations",
        "NaN activations", "meta reconstruction", "meta latents", "no latents to count", "NaN learned", "inf true",
        "NaN latents to score", "a threshold above 1", "no thresholds", "NaN min_f1", "seed for generator",
        "x on another device", "reconstruction on another device",
    ],
)
def test_bad_argument_is_named(call, error, name) -> None:
    with raises_one_sentence(error, re.escape(name)):
        call()


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda model, tokens: loss_recovered(model, tokens, "blocks.1.hook_resid_prev", identity_sae(16), next_token_loss), ValueError, "hook_name"),
        (lambda model, tokens: loss_recovered(model, tokens + 20, "blocks.1.hook_resid_pre", identity_sae(16), next_token_loss), ValueError, "tokens"),
        (lambda model, tokens: loss_recovered(model, tokens.float(), "blocks.1.hook_resid_pre", identity_sae(16), next_token_loss), TypeError, "tokens"),
        (lambda model, tokens: loss_recovered(model, tokens, "blocks.1.hook_resid_pre", identity_sae(16), "next_token_loss"), TypeError, "loss_fn"),
    ],
    ids=["unknown hook", "tokens beyond d_vocab", "float tokens", "a string for loss_fn"],
)
def test_bad_argument_to_loss_recovered_is_named(model, call, error, name) -> None:
    tokens = torch.randint(0, 20, (2, 12), generator=torch.Generator().manual_seed(0))
    with raises_one_sentence(error, re.escape(name)):
        call(model, tokens)


def test_float64_inputs_are_cast_not_refused() -> None:
    sae = tiny_sae()
    reconstruction, latents = sae(X2.double())
    torch.testing.assert_close((reconstruction, latents), sae(X2))
    assert reconstruction.dtype == torch.float32
