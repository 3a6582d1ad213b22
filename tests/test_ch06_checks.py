"""Chapter 06 checks pass on the library's answers and fail, with a hint, on typical mistakes."""

import einops
import pytest
import torch
import torch.nn.functional as F
from check_helpers import expect_failure

from mechlearn import sae as sae_lib
from mechlearn.checks import ch06

# --- learners' versions, correct by default, with one knob per mistake --------------------------


def keep_top_k(pre, k):
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


def learner_forward(centre=True, tied=False, select=keep_top_k, add_b_dec=True, swap=False):
    """A learner's sae_forward written with einsums."""

    def sae_forward(sae, x):
        encoder = sae.W_dec.T if tied else sae.W_enc
        pre = einops.einsum(x - sae.b_dec if centre else x, encoder, "batch d_in, d_in d_sae -> batch d_sae") + sae.b_enc
        latents = pre.relu() if sae.config.kind == "relu" else select(pre, sae.config.k)
        reconstruction = einops.einsum(latents, sae.W_dec, "batch d_sae, d_sae d_in -> batch d_in")
        if add_b_dec:
            reconstruction = reconstruction + sae.b_dec
        return (latents, reconstruction) if swap else (reconstruction, latents)

    return sae_forward


def library_forward(sae, x):
    return sae(x)


def learner_loss(mse_reduce=lambda error: error.sum(dim=-1).mean(), weighted=True, l1_reduce=torch.mean, l1_for_topk=False, as_floats=False):
    """A learner's sae_loss built on the SAE's own forward."""

    def sae_loss(sae, x):
        reconstruction, latents = sae(x)
        mse = mse_reduce((reconstruction - x).pow(2))
        per_latent = latents * sae.W_dec.norm(dim=1) if weighted else latents
        l1 = l1_reduce(per_latent.sum(dim=-1))
        losses = {"loss": mse, "mse": mse}
        if sae.config.kind == "relu" or l1_for_topk:
            losses.update(loss=mse + sae.config.l1_coefficient * l1, l1=l1)
        return {key: value.item() for key, value in losses.items()} if as_floats else losses

    return sae_loss


def learner_loss_recovered(ratio=lambda clean, spliced, zero: (zero - spliced) / (zero - clean), flatten=True, splice_latents=False):
    """A learner's loss_recovered with its own hooks."""

    def loss_recovered(model, tokens, hook_name, sae, loss_fn):
        def splice(activation, hook):
            reconstruction, latents = sae(activation.flatten(0, 1) if flatten else activation)
            return (latents if splice_latents else reconstruction).reshape(*activation.shape[:-1], -1)

        def zero(activation, hook):
            return torch.zeros_like(activation)

        clean = loss_fn(model(tokens), tokens)
        spliced = loss_fn(model.run_with_hooks(tokens, fwd_hooks=[(hook_name, splice)]), tokens)
        zeroed = loss_fn(model.run_with_hooks(tokens, fwd_hooks=[(hook_name, zero)]), tokens)
        return ratio(clean, spliced, zeroed).item()

    return loss_recovered


REFERENCE_ANSWERS = [
    (ch06.check_sae_forward, library_forward),
    (ch06.check_sae_forward, learner_forward()),
    (ch06.check_sae_loss, sae_lib.sae_loss),
    (ch06.check_sae_loss, learner_loss()),
    (ch06.check_sae_loss, learner_loss(as_floats=True)),
    (ch06.check_l0, sae_lib.l0),
    (ch06.check_l0, lambda latents: (latents > 0).sum(dim=-1).float().mean()),  # a 0-d tensor is fine
    (ch06.check_explained_variance, sae_lib.explained_variance),
    (ch06.check_window_dead_fraction, sae_lib.window_dead_fraction),
    (ch06.check_held_out_dead_fraction, sae_lib.held_out_dead_fraction),
    (ch06.check_held_out_dead_fraction, lambda latents: 1 - (latents > 0).any(dim=0).float().mean()),  # latents are >= 0
    (ch06.check_mmcs, sae_lib.mmcs),
    (ch06.check_loss_recovered, sae_lib.loss_recovered),
    (ch06.check_loss_recovered, learner_loss_recovered()),
]
CHECKS = [
    ch06.check_sae_forward,
    ch06.check_sae_loss,
    ch06.check_l0,
    ch06.check_explained_variance,
    ch06.check_window_dead_fraction,
    ch06.check_held_out_dead_fraction,
    ch06.check_mmcs,
    ch06.check_loss_recovered,
]


@pytest.mark.parametrize("check, answer", REFERENCE_ANSWERS, ids=lambda x: getattr(x, "__name__", ""))
def test_check_passes_on_the_library(check, answer, capsys) -> None:
    check(answer)
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_a_stub_fails_as_not_implemented(check) -> None:
    def stub(*args, **kwargs):
        raise NotImplementedError("exercise 6")

    assert "not implemented" in expect_failure(check, stub, hint_contains="NotImplementedError")


# --- sae_forward --------------------------------------------------------------------------------


@pytest.mark.mistake
def test_sae_forward_without_subtracting_b_dec() -> None:
    message = expect_failure(ch06.check_sae_forward, learner_forward(centre=False), hint_contains="subtract it before encoding")
    assert "the relu SAE's latents" in message


@pytest.mark.mistake
def test_sae_forward_encoding_with_the_decoder_transposed() -> None:
    expect_failure(ch06.check_sae_forward, learner_forward(tied=True), hint_contains="not W_dec.T")


@pytest.mark.mistake
def test_sae_forward_top_k_without_the_relu() -> None:
    def no_relu(pre, k):
        values, indices = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, values)

    message = expect_failure(ch06.check_sae_forward, learner_forward(select=no_relu), hint_contains="apply a ReLU")
    assert "negative values" in message


@pytest.mark.mistake
def test_sae_forward_top_k_keeping_every_positive_latent() -> None:
    message = expect_failure(ch06.check_sae_forward, learner_forward(select=lambda pre, k: pre.relu()), hint_contains="set every other latent to zero")
    assert "k=3" in message


@pytest.mark.mistake
def test_sae_forward_top_k_keeping_k_plus_one() -> None:
    message = expect_failure(ch06.check_sae_forward, learner_forward(select=lambda pre, k: keep_top_k(pre, k + 1)))
    assert "gave an input 4 non-zero latents" in message


@pytest.mark.mistake
def test_sae_forward_top_k_keeping_the_smallest() -> None:
    def smallest(pre, k):
        values, indices = pre.topk(k, dim=-1, largest=False)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    message = expect_failure(ch06.check_sae_forward, learner_forward(select=smallest), hint_contains="k LARGEST")
    assert "the topk SAE's latents" in message


@pytest.mark.mistake
def test_sae_forward_decoding_with_the_decoder_transposed() -> None:
    def transposed(sae, x):
        latents = library_forward(sae, x)[1]
        return latents @ sae.W_dec.T + sae.b_dec, latents

    message = expect_failure(ch06.check_sae_forward, transposed)
    assert "`transposed` raised RuntimeError" in message and "sae.W_dec.T" in message


@pytest.mark.mistake
def test_sae_forward_without_adding_b_dec_back() -> None:
    message = expect_failure(ch06.check_sae_forward, learner_forward(add_b_dec=False), hint_contains="add b_dec back")
    assert "reconstruction" in message


@pytest.mark.mistake
def test_sae_forward_in_the_wrong_order() -> None:
    message = expect_failure(ch06.check_sae_forward, learner_forward(swap=True), hint_contains="in that order")
    assert "[(8, 16), (8, 6)]" in message


@pytest.mark.mistake
def test_sae_forward_centring_x_in_place() -> None:
    def in_place(sae, x):
        x -= sae.b_dec
        latents = (x @ sae.W_enc + sae.b_enc).relu()
        if sae.config.kind == "topk":
            latents = keep_top_k(x @ sae.W_enc + sae.b_enc, sae.config.k)
        return latents @ sae.W_dec + sae.b_dec, latents

    message = expect_failure(ch06.check_sae_forward, in_place, hint_contains="x -= sae.b_dec")
    assert "changed the activations x it was given" in message


# --- sae_loss ------------------------------------------------------------------------------------


@pytest.mark.mistake
def test_sae_loss_with_the_mse_averaged_over_d_in() -> None:
    message = expect_failure(ch06.check_sae_loss, learner_loss(mse_reduce=torch.mean), hint_contains="SUM it over d_in")
    assert "the relu SAE's mse" in message


@pytest.mark.mistake
def test_sae_loss_with_an_unweighted_l1() -> None:
    message = expect_failure(ch06.check_sae_loss, learner_loss(weighted=False), hint_contains="norm of its decoder row")
    assert "l1 is" in message


@pytest.mark.mistake
def test_sae_loss_with_the_l1_summed_over_the_batch() -> None:
    expect_failure(ch06.check_sae_loss, learner_loss(l1_reduce=torch.sum), hint_contains="AVERAGE over the inputs")


@pytest.mark.mistake
def test_sae_loss_adding_an_l1_term_for_top_k() -> None:
    message = expect_failure(ch06.check_sae_loss, learner_loss(l1_for_topk=True), hint_contains="no L1 term")
    assert "the topk SAE's loss" in message


@pytest.mark.mistake
def test_sae_loss_without_the_l1_key() -> None:
    def mse_only(sae, x):
        reconstruction, _ = sae(x)
        mse = (reconstruction - x).pow(2).sum(dim=-1).mean()
        return {"loss": mse, "mse": mse}

    message = expect_failure(ch06.check_sae_loss, mse_only, hint_contains='"l1"')
    assert "['loss', 'mse']" in message


@pytest.mark.mistake
def test_sae_loss_returning_the_loss_alone() -> None:
    message = expect_failure(ch06.check_sae_loss, lambda sae, x: sae_lib.sae_loss(sae, x)["loss"], hint_contains="return a dict")
    assert "returned torch.float32 tensor of shape ()" in message


# --- l0 ------------------------------------------------------------------------------------------


@pytest.mark.mistake
def test_l0_with_a_threshold() -> None:
    message = expect_failure(ch06.check_l0, lambda latents: (latents > 1e-3).sum(dim=-1).float().mean(), hint_contains="1e-6 counts")
    assert "is 3.4, expected 4.2" in message


@pytest.mark.mistake
def test_l0_averaged_over_the_latents() -> None:
    expect_failure(ch06.check_l0, lambda latents: (latents != 0).float().mean(), hint_contains="count the non-zero latents of EACH input")


@pytest.mark.mistake
def test_l0_counted_over_the_whole_batch() -> None:
    expect_failure(ch06.check_l0, lambda latents: (latents != 0).sum(), hint_contains="average those counts")


@pytest.mark.mistake
def test_l0_per_input() -> None:
    message = expect_failure(ch06.check_l0, lambda latents: (latents != 0).sum(dim=-1), hint_contains="single number")
    assert "should be one number, got torch.int64 tensor of shape (5,)" in message


# --- explained_variance --------------------------------------------------------------------------


def fvu(error, x):
    return (error.pow(2).sum() / x.pow(2).sum()).item()


@pytest.mark.mistake
def test_explained_variance_without_subtracting_the_mean() -> None:
    message = expect_failure(ch06.check_explained_variance, lambda x, r: 1 - fvu(x - r, x), hint_contains="x.mean(dim=0)")
    assert "is 0.996068, expected 0.899236" in message


@pytest.mark.mistake
def test_explained_variance_around_the_mean_of_all_entries() -> None:
    expect_failure(ch06.check_explained_variance, lambda x, r: 1 - fvu(x - r, x - x.mean()), hint_contains="one mean per dimension")


@pytest.mark.mistake
def test_explained_variance_as_a_mean_of_per_dimension_ratios() -> None:
    def per_dimension(x, reconstruction):
        ratios = (x - reconstruction).pow(2).sum(dim=0) / (x - x.mean(dim=0)).pow(2).sum(dim=0)
        return 1 - ratios.mean()

    expect_failure(ch06.check_explained_variance, per_dimension, hint_contains="not an average of per-dimension ratios")


@pytest.mark.mistake
def test_explained_variance_returning_the_unexplained_fraction() -> None:
    expect_failure(ch06.check_explained_variance, lambda x, r: fvu(x - r, x - x.mean(dim=0)), hint_contains="1 minus")


# --- window_dead_fraction ------------------------------------------------------------------------


@pytest.mark.mistake
def test_window_dead_fraction_with_a_strict_comparison() -> None:
    message = expect_failure(ch06.check_window_dead_fraction, lambda steps, window: (steps > window).float().mean(), hint_contains=">=, not >")
    assert "is 0.222222, expected 0.444444" in message


@pytest.mark.mistake
def test_window_dead_fraction_as_a_count() -> None:
    expect_failure(ch06.check_window_dead_fraction, lambda steps, window: (steps >= window).sum(), hint_contains="not their count")


@pytest.mark.mistake
def test_window_dead_fraction_with_the_notebooks_window_written_in() -> None:
    written_in = lambda steps, window: (steps >= 100).float().mean()  # noqa: E731
    message = expect_failure(ch06.check_window_dead_fraction, written_in, hint_contains="dead_window you are given")
    assert "dead_window=42" in message


# --- held_out_dead_fraction ----------------------------------------------------------------------


@pytest.mark.mistake
@pytest.mark.parametrize(
    "mistake",
    [
        lambda latents: (latents == 0).all(dim=1).float().mean(),  # inputs with no active latent, not latents
        lambda latents: (latents == 0).all(dim=0).sum(),  # a count
        lambda latents: (latents == 0).float().mean(),  # the fraction of zero entries
        lambda latents: (latents == 0).any(dim=0).float().mean(),  # silent on some input, not on every one
        lambda latents: ((latents > 0).float().mean(dim=0) < 0.5).float().mean(),  # rarely firing counted as dead
        lambda latents: (latents[-1] == 0).float().mean(),  # the last input only
    ],
    ids=["per_input", "count", "zero_entries", "any_input", "rare_as_dead", "last_input"],
)
def test_held_out_dead_fraction_mistakes(mistake) -> None:
    expect_failure(ch06.check_held_out_dead_fraction, mistake, hint_contains="EVERY input")


@pytest.mark.bad_input
def test_held_out_dead_fraction_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        sae_lib.held_out_dead_fraction(torch.tensor([[0.0, float("nan")]]))


# --- mmcs ----------------------------------------------------------------------------------------


def cosines(learned, true, normalise=True):
    """[n_true d_sae]."""
    if normalise:
        learned, true = F.normalize(learned, dim=1), F.normalize(true, dim=1)
    return true @ learned.T


@pytest.mark.mistake
def test_mmcs_without_normalising() -> None:
    expect_failure(ch06.check_mmcs, lambda learned, true: cosines(learned, true, normalise=False).max(dim=1).values.mean(), hint_contains="unit length")


@pytest.mark.mistake
def test_mmcs_with_absolute_cosines() -> None:
    expect_failure(ch06.check_mmcs, lambda learned, true: cosines(learned, true).abs().max(dim=1).values.mean(), hint_contains="no absolute value")


@pytest.mark.mistake
def test_mmcs_averaged_over_the_learned_directions() -> None:
    expect_failure(ch06.check_mmcs, lambda learned, true: cosines(learned, true).max(dim=0).values.mean(), hint_contains="each TRUE feature")


@pytest.mark.mistake
def test_mmcs_with_the_mean_instead_of_the_max() -> None:
    expect_failure(ch06.check_mmcs, lambda learned, true: cosines(learned, true).mean(), hint_contains="largest")


# --- loss_recovered ------------------------------------------------------------------------------


@pytest.mark.mistake
def test_loss_recovered_upside_down() -> None:
    upside_down = learner_loss_recovered(ratio=lambda clean, spliced, zero: (zero - clean) / (zero - spliced))
    message = expect_failure(ch06.check_loss_recovered, upside_down, hint_contains="(L_zero - L_sae) / (L_zero - L_clean)")
    assert "L_clean = 0.1078" in message


@pytest.mark.mistake
def test_loss_recovered_as_the_clean_loss_over_the_sae_loss() -> None:
    clean_over_spliced = learner_loss_recovered(ratio=lambda clean, spliced, zero: clean / spliced)
    expect_failure(ch06.check_loss_recovered, clean_over_spliced, hint_contains="L_zero")


@pytest.mark.mistake
def test_loss_recovered_without_flattening_for_the_sae() -> None:
    message = expect_failure(ch06.check_loss_recovered, learner_loss_recovered(flatten=False))
    assert "`loss_recovered` raised ValueError: the SAE reads activations of shape [n d_in], got shape (8, 15, 52)" in message
    assert "flatten else activation" in message  # the learner's own line, not the library's


@pytest.mark.mistake
def test_loss_recovered_splicing_in_the_latents() -> None:
    message = expect_failure(ch06.check_loss_recovered, learner_loss_recovered(splice_latents=True))
    assert "`loss_recovered` raised RuntimeError" in message
