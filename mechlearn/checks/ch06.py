"""Checks for chapter 06, sparse autoencoders.

The answers come from `mechlearn.sae` on small inputs built so that the usual mistakes
show: SAEs with non-zero biases, decoder rows that are not unit norm and top-k
pre-activations that are negative; data whose mean is far from zero and whose dimensions
have different variances; unnormalised directions, one of them pointing against a true
feature; and a hand-set induction circuit whose loss an imperfect SAE partly recovers.
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechlearn import sae as sae_lib
from mechlearn.checks.core import call_learner, check, expect, expect_tensor
from mechlearn.handcrafted import induction_circuit_model
from mechlearn.induction import repeated_random_tokens
from mechlearn.sae import SAE, SAEConfig
from mechlearn.train import next_token_loss
from mechlearn.validation import describe

BATCH, D_IN, D_SAE, K = 8, 6, 16, 3


def _sae(kind: str, seed: int) -> SAE:
    """Random weights, decoder rows of random norms, and biases far from zero.

    The encoder bias is mostly negative, so that some inputs have fewer than K positive
    pre-activations (a TopK SAE without its ReLU keeps negative latents there) and others
    more than K (keeping K + 1 shows there).
    """
    generator = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, kind=kind, k=K, l1_coefficient=0.3))
    with torch.no_grad():
        sae.W_enc.copy_(0.5 * torch.randn(D_IN, D_SAE, generator=generator))
        sae.b_enc.copy_(0.5 * torch.randn(D_SAE, generator=generator) - 1.5)
        sae.W_dec.copy_(torch.randn(D_SAE, D_IN, generator=generator))
        sae.b_dec.copy_(torch.randn(D_IN, generator=generator) + 1.0)
    return sae


def _activations(seed: int) -> Tensor:
    return torch.randn(BATCH, D_IN, generator=torch.Generator().manual_seed(seed))


def _number(value: object, what: str) -> float:
    """`value` as a float: a Python number and a one-element tensor are both fine."""
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    expect(
        is_number or (isinstance(value, Tensor) and value.numel() == 1),
        f"{what} should be one number, got {describe(value)}",
        hint="reduce to a single number (sum or average over the right dimensions) and return it as a float or a 0-d tensor.",
    )
    return float(value.detach() if isinstance(value, Tensor) else value)


def _expect_number(actual: object, expected: float, *, what: str, hint: str, tolerance: float = 1e-4) -> None:
    value = _number(actual, what)
    expect(
        math.isclose(value, expected, rel_tol=tolerance, abs_tol=tolerance),
        f"{what} is {value:.6g}, expected {expected:.6g}",
        hint=hint,
    )


def _pair(result: object) -> tuple[Tensor, Tensor]:
    shapes = None
    if isinstance(result, (tuple, list)):
        shapes = [tuple(item.shape) if isinstance(item, Tensor) else describe(item) for item in result]
    expect(
        shapes == [(BATCH, D_IN), (BATCH, D_SAE)],
        f"sae_forward returned {shapes or describe(result)}, expected a pair (reconstruction {(BATCH, D_IN)}, latents {(BATCH, D_SAE)})",
        hint="return `reconstruction, latents`, in that order: x is [batch d_in], the latents [batch d_sae].",
    )
    return result[0], result[1]


def _expect_top_k(latents: Tensor) -> None:
    most = int((latents != 0).sum(dim=-1).max())
    expect(
        most <= K,
        f"a TopK SAE with k={K} gave an input {most} non-zero latents",
        hint="keep each input's k largest pre-activations and set every other latent to zero "
        "(torch.topk gives their values and indices).",
    )
    lowest = latents.min().item()
    expect(
        lowest >= 0,
        f"the TopK latents include negative values (down to {lowest:.4g})",
        hint="apply a ReLU to the k values you keep: a pre-activation can be among the k largest and still be negative.",
    )


LATENTS_HINT = (
    "the pre-activations are x minus b_dec (did you subtract it before encoding?), times W_enc (the encoder, not W_dec.T), plus b_enc"
)
LATENTS_HINTS = {
    "relu": f"{LATENTS_HINT}; then a ReLU.",
    "topk": f"{LATENTS_HINT}; then keep each input's k LARGEST, ReLU them, and zero the rest.",
}


@check
def check_sae_forward(sae_forward) -> None:
    """(reconstruction, latents) of a ReLU and a TopK SAE with non-zero biases, compared with SAE.forward."""
    for kind in sae_lib.KINDS:
        sae, x = _sae(kind, seed=2), _activations(seed=1)
        with torch.no_grad():
            expected_reconstruction, expected_latents = sae(x)
        given = x.clone()
        reconstruction, latents = _pair(call_learner(sae_forward, sae, given))
        expect(
            torch.equal(given, x),
            "sae_forward changed the activations x it was given",
            hint="compute `x - sae.b_dec` as a new tensor rather than with `x -= sae.b_dec`: the caller still needs x.",
        )
        if kind == "topk":
            _expect_top_k(latents.detach())
        expect_tensor(latents, expected_latents, what=f"the {kind} SAE's latents", hint=LATENTS_HINTS[kind])
        expect_tensor(
            reconstruction,
            expected_reconstruction,
            what=f"the {kind} SAE's reconstruction",
            hint="decode the latents with W_dec as it is ([d_sae d_in], no transpose) and add b_dec back.",
        )


@check
def check_sae_loss(sae_loss) -> None:
    """mse, l1 and loss of a ReLU and a TopK SAE whose decoder rows are not unit norm, compared with mechlearn.sae."""
    for kind in sae_lib.KINDS:
        sae, x = _sae(kind, seed=0), _activations(seed=3)
        expected = sae_lib.sae_loss(sae, x)
        keys = ["loss", "mse", "l1"] if kind == "relu" else ["loss", "mse"]
        result = call_learner(sae_loss, sae, x.clone())
        got = f"a dict with the keys {sorted(result)}" if isinstance(result, dict) else describe(result)
        expect(
            isinstance(result, dict) and all(key in result for key in keys),
            f"for a {kind} SAE sae_loss returned {got}, expected a dict with the keys {keys}",
            hint='return a dict such as {"loss": ..., "mse": ...}, with "l1" too for a ReLU SAE.',
        )
        _expect_number(
            result["mse"],
            expected["mse"].item(),
            what=f"the {kind} SAE's mse",
            hint="square the error, SUM it over d_in (each input's squared distance), then AVERAGE over the inputs.",
        )
        if kind == "relu":
            _expect_number(
                result["l1"],
                expected["l1"].item(),
                what="the ReLU SAE's l1",
                hint="weight each latent by the norm of its decoder row (W_dec[i] has norm != 1 here), SUM over the "
                "latents, then AVERAGE over the inputs.",
            )
        _expect_number(
            result["loss"],
            expected["loss"].item(),
            what=f"the {kind} SAE's loss",
            hint="a ReLU SAE's loss is the mse plus sae.config.l1_coefficient times the l1; a TopK SAE is sparse by "
            "construction, so its loss is the mse alone, with no L1 term.",
        )


@check
def check_l0(l0) -> None:
    """Inputs with 0, 1, 3, 5 and all 12 latents active, some of them as small as 1e-6."""
    latents = torch.zeros(5, 12)
    latents[1, 3] = 1e-6
    latents[2, :3] = torch.tensor([0.5, 2.0, 1e-6])
    latents[3, 2:7] = torch.tensor([0.3, 1e-6, 4.0, 0.01, 1.5])
    latents[4] = torch.linspace(1e-6, 3.0, 12)
    _expect_number(
        call_learner(l0, latents.clone()),
        sae_lib.l0(latents),
        what="the L0 of latents with 0, 1, 3, 5 and 12 active latents per input",
        hint="count the non-zero latents of EACH input (a latent of 1e-6 counts: compare with 0, not a threshold), "
        "then average those counts over the inputs.",
    )


@check
def check_explained_variance(explained_variance) -> None:
    """Data with a large mean and dimensions of different variances, reconstructed with noise."""
    generator = torch.Generator().manual_seed(4)
    x = torch.tensor([10.0, -5.0, 3.0, 20.0]) + torch.randn(64, 4, generator=generator) * torch.tensor([0.5, 1.0, 2.0, 4.0])
    reconstruction = x + 0.7 * torch.randn(64, 4, generator=generator)
    _expect_number(
        call_learner(explained_variance, x.clone(), reconstruction.clone()),
        sae_lib.explained_variance(x, reconstruction),
        what="the explained variance",
        hint="it is 1 minus the fraction of variance UNexplained; the variance is that of x around its mean input "
        "(x.mean(dim=0), one mean per dimension), and the fraction is one ratio of two totals over all entries, "
        "not an average of per-dimension ratios.",
    )


@check
def check_window_dead_fraction(window_dead_fraction) -> None:
    """Latents at, just below and just above the window, for two windows (the notebook's 100 and another)."""
    steps_since_fired = torch.tensor([0, 5, 99, 100, 101, 250, 100, 3, 42])
    for dead_window in (100, 42):
        _expect_number(
            call_learner(window_dead_fraction, steps_since_fired.clone(), dead_window),
            sae_lib.window_dead_fraction(steps_since_fired, dead_window),
            what=f"the dead fraction of steps_since_fired={steps_since_fired.tolist()} with dead_window={dead_window}",
            hint="a latent is dead once its steps_since_fired REACHES dead_window (>=, not >; compare with the "
            "dead_window you are given); return the fraction of latents that are dead, not their count.",
        )


@check
def check_held_out_dead_fraction(held_out_dead_fraction) -> None:
    """Latents that fire on one input only: the last, so that latent 5 is alive in the whole batch and dead in its first half."""
    latents = torch.tensor(
        [
            [0.0, 2.0, 0.0, 0.0, 0.5, 0.0],
            [0.0, 0.0, 0.0, 0.0, 1.5, 0.0],
            [0.0, 0.3, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 7.0],
        ]
    )
    for batch in (latents, latents[:2]):
        _expect_number(
            call_learner(held_out_dead_fraction, batch.clone()),
            sae_lib.held_out_dead_fraction(batch),
            what=f"the held-out dead fraction of latents={batch.tolist()}",
            hint="a latent is dead on held-out data if it is zero on EVERY input (a column of zeros); a latent that "
            "fires on a single input is alive. Return the fraction of latents (columns), not of inputs or a count.",
        )


@check
def check_mmcs(mmcs) -> None:
    """Unnormalised directions, more learned than true, one learned row pointing against a true feature."""
    generator = torch.Generator().manual_seed(5)
    true = torch.randn(3, 4, generator=generator) * torch.tensor([[0.5], [2.0], [3.0]])
    noise = torch.randn(3, 4, generator=generator)
    learned = torch.stack([2.5 * true[0] + 0.3 * noise[0], -0.7 * true[1], 4.0 * true[2] + 3.0 * noise[1], 2.0 * noise[2], true.sum(dim=0)])
    _expect_number(
        call_learner(mmcs, learned.clone(), true.clone()),
        sae_lib.mmcs(learned, true),
        what="the MMCS of 5 learned directions against 3 true features",
        hint="normalise every row to unit length; for each TRUE feature take its largest signed cosine similarity with "
        "any learned direction (no absolute value: a latent pointing against a feature cannot represent it), "
        "then average over the true features.",
    )


INDUCTION_VOCAB, REPEAT_LEN, HOOK_NAME = 12, 7, "blocks.1.hook_resid_pre"


@functools.lru_cache(maxsize=1)
def _induction_model() -> TransformerBridge:
    """A hand-set induction circuit, softened (sharpness 5) so that its clean loss is not exactly zero."""
    return induction_circuit_model(
        d_vocab=INDUCTION_VOCAB, n_ctx=16, n_heads=1, previous_token_head=0, induction_head=0, sharpness=5.0
    ).model


def _repeat_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """The next-token loss on the repeated half, the only tokens an induction circuit can predict."""
    predicts_a_repeat = torch.arange(tokens.shape[1] - 1, device=tokens.device) >= REPEAT_LEN + 1
    return next_token_loss(logits, tokens, predicts_a_repeat)


class _ShapeCheckingSAE(SAE):
    """An SAE that says what to do when it is given a whole [batch pos d_model] activation.

    The library's SAE would fail deep inside its own code, and the learner would be shown
    that line of mechlearn rather than their own.
    """

    def encode(self, x: Tensor) -> Tensor:
        _expect_flat(x)
        return super().encode(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _expect_flat(x)
        return super().forward(x)


def _expect_flat(x: Tensor) -> None:
    if x.ndim != 2:
        raise ValueError(
            f"the SAE reads activations of shape [n d_in], got shape {tuple(x.shape)}: flatten batch and pos "
            "into one dimension for the SAE, and reshape its reconstruction back."
        )


def _shrinking_sae(d: int, shrink: float) -> SAE:
    """relu(x - shrink) - relu(-x - shrink): each coordinate pulled towards 0, a decent but lossy SAE (d_sae = 2 d)."""
    sae = _ShapeCheckingSAE(SAEConfig(d_in=d, d_sae=2 * d))
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)], dim=1))
        sae.b_enc.fill_(-shrink)
        sae.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)]))
        sae.b_dec.zero_()
    return sae


@check
def check_loss_recovered(loss_recovered) -> None:
    """An SAE that recovers part of an induction circuit's loss, compared with mechlearn.sae."""
    model = _induction_model()
    tokens = repeated_random_tokens(INDUCTION_VOCAB, REPEAT_LEN, 8, torch.Generator().manual_seed(0), bos=0)
    sae = _shrinking_sae(model.cfg.d_model, shrink=0.3)
    expected = sae_lib.loss_recovered(model, tokens, HOOK_NAME, sae, _repeat_loss)
    with torch.no_grad():
        clean = _repeat_loss(model(tokens), tokens).item()
        zeroed = model.run_with_hooks(tokens, fwd_hooks=[(HOOK_NAME, lambda activation, hook: torch.zeros_like(activation))])
        zero = _repeat_loss(zeroed, tokens).item()
    spliced = zero - expected * (zero - clean)  # the library's L_sae, recovered from its ratio
    _expect_number(
        call_learner(loss_recovered, model, tokens.clone(), HOOK_NAME, sae, _repeat_loss),
        expected,
        what=f"the loss recovered (L_clean = {clean:.4f}, L_sae = {spliced:.4f}, L_zero = {zero:.4f})",
        hint="(L_zero - L_sae) / (L_zero - L_clean): how much of the loss that zeroing costs the SAE wins back. "
        "Splice in the SAE's reconstruction (not its latents), flattening [batch pos d_model] to [batch*pos d_model] "
        "for the SAE and reshaping back.",
    )
