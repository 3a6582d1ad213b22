"""Sparse autoencoders: ReLU + L1 and TopK, a fast trainer that resamples dead latents, and metrics.

Taught in chapter 06, after Bricken et al. (2023) "Towards Monosemanticity" (Anthropic),
Anthropic's "Circuits Updates, April 2024" (the training recipe), Gao et al. (2024)
"Scaling and evaluating sparse autoencoders" (TopK) and Sharkey et al.
(2022) "Taking features out of superposition with sparse autoencoders" (ground-truth data
and mean max cosine similarity).

An SAE rewrites an activation `x` as a sparse, non-negative combination of many learned
directions (the decoder rows) plus a bias:

    latents        = act((x - b_dec) @ W_enc + b_enc)   # act: ReLU, or keep the k largest
    reconstruction = latents @ W_dec + b_dec

It is trained to reconstruct `x` while using few latents. On data built from known
features (`SparseFeatureData`) the decoder rows should line up with the true features
(`mmcs`); on a model's activations, `loss_recovered` says how much of the model's
performance survives when its activation is replaced by the reconstruction.

Everything runs on the device of the SAE's parameters. The trainer is written for speed:
minibatches are indexed from a tensor already on the device, the loop waits for the device
only at log steps, and the objective (`sae_loss`) has backward passes written by hand so that
a step spends its time in matmuls. A ReLU step computes the five [batch d_in] x [d_in d_sae]
matmuls it needs (encoder and decoder forward; the gradients of the decoder's weights and
input and of the encoder's weights: the data need none) and three passes over its
[batch d_sae] latents (`_ReLUAutoencoder`). A TopK step decodes only the k active latents
of each input, and takes the gradients on them only (for the decoder's input gradient, k entries
of its matmul per input: a sampled matmul), so that one such matmul, the encoder's, and its `topk`
are most of its cost (`_TopKAutoencoder`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.hook_points import HookPoint

from mechlearn.device import generator_for
from mechlearn.validation import check_finite, check_not_meta, check_number, check_same_device, check_token_ids, describe, is_int, is_number

__all__ = [
    "SAEConfig",
    "SAE",
    "sae_loss",
    "resample_dead_latents",
    "train_sae",
    "activation_scale",
    "l0",
    "mse",
    "explained_variance",
    "window_dead_fraction",
    "held_out_dead_fraction",
    "mmcs",
    "splice_hook",
    "loss_recovered",
    "BestLatents",
    "LatentScores",
    "score_latents",
    "SparseFeatureData",
]

KINDS = ("relu", "topk")
DEAD_REMEDIES = ("resample", "none")


@dataclass(frozen=True)
class SAEConfig:
    """The shape of an SAE and how `train_sae` trains it.

    - `kind="relu"`: latents are `relu(pre)`, kept sparse by an L1 penalty of weight
      `l1_coefficient` (see `sae_loss` for its exact form).
    - `kind="topk"`: latents are the `k` largest pre-activations of each input (then a
      ReLU); no penalty is needed, since at most k latents are active by construction.

    The defaults are meant to work unchanged: on 256 planted features in 32 dimensions
    with 5 active per input (`SparseFeatureData`), `SAEConfig(d_in=32, d_sae=256)` and its
    TopK twin recover the features (MMCS 0.96 to 0.98 over seeds 0 to 2, from about 0.48
    at initialisation) in a few seconds on one CPU thread.

    Scale. With `normalize_activations=True` (the default), `train_sae` trains on the
    activations times one number, `activation_scale(activations)`, that brings their mean
    norm to `sqrt(d_in)` (Anthropic's April 2024 recipe; SAELens's
    `normalize_activations="expected_average_only_in"`), and folds it back into the biases
    at the end, so the SAE returned works on the raw activations. `l1_coefficient` and `lr`
    are then free of the activations' scale: the same values serve a toy and a residual
    stream. With `False`, they are in the units of your activations.

    Choosing them:

    - `l1_coefficient` (ReLU only) trades reconstruction for sparsity. Train once and look
      at the last log record: raise it (try twice the value) if `l0` is too high, lower it
      if `explained_variance` is poor or if many latents die. Far too large a value (8 on
      the planted data, 4 on the Othello residual stream) does not just shrink the latents:
      training collapses to many tiny latents and an explained variance near or below 0.
      A typical normalised latent grows like `sqrt(d_in / L0)`, so wider activations bear a
      larger coefficient for the same sparsity. The default, 2, gives L0 about 10 (5 true) with
      explained variance 0.68 on the planted data and L0 about 18 with explained variance
      0.81 on the Othello model's residual stream (d_in 128, d_sae 512); the L1 penalty
      shrinks the latents, which is why a ReLU SAE explains less variance than a TopK SAE
      at the same L0.
    - `k` (TopK only) is the L0: pick about as many latents per input as you want active,
      more for wider activations (the chapter uses 16 on the Othello model); explained
      variance rises with k.
    - `lr`: Adam's learning rate. The default, 5e-3, is high because the runs are short
      (`steps * batch_size` = one million activations); it is linearly decayed to nearly zero
      over the last `lr_decay` fraction of the steps (Anthropic's recipe), which settles
      the weights. Lower it (and train longer) if the loss spikes, training raises a
      FloatingPointError, or many latents die; 1e-2 converges faster on small toys, and
      SAEs trained on billions of activations use about 1e-4.
    - `batch_size` and `steps`: the time is proportional to `steps * batch_size`; batches
      are drawn with replacement, so the number of distinct activations is yours to choose
      (50,000 for the planted data above). More steps help slowly; a run that is
      still improving at its end (watch `mse` and `l0` in the log) wants more of them.

    A latent is *dead* once it has not fired on any input for `dead_window` steps
    (`dead_window * batch_size` activations). With `dead_remedy="resample"` the trainer
    re-initialises dead latents every `dead_window` steps, but not after the last step,
    which would return them untrained (Bricken et al.; see `resample_dead_latents`); with
    `"none"` they stay dead.
    """

    d_in: int
    d_sae: int
    kind: Literal["relu", "topk"] = "relu"
    k: int = 8
    l1_coefficient: float = 2.0
    lr: float = 5e-3
    lr_decay: float = 0.2
    batch_size: int = 512
    steps: int = 2000
    dead_window: int = 400
    dead_remedy: Literal["resample", "none"] = "resample"
    normalize_activations: bool = True
    log_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae", "k", "batch_size", "steps", "dead_window", "log_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"SAEConfig.{name} must be an int of at least 1, got {getattr(self, name)!r}.")
        for name in ("l1_coefficient", "lr", "lr_decay"):
            check_number(getattr(self, name), f"SAEConfig.{name}", minimum=0)
        if self.kind not in KINDS:
            raise ValueError(f"SAEConfig.kind must be one of {KINDS}, got {self.kind!r}.")
        if self.dead_remedy not in DEAD_REMEDIES:
            raise ValueError(f"SAEConfig.dead_remedy must be one of {DEAD_REMEDIES}, got {self.dead_remedy!r}.")
        if self.kind == "topk" and self.k > self.d_sae:
            raise ValueError(f"SAEConfig.k ({self.k}) cannot exceed d_sae ({self.d_sae}): keep at most d_sae latents.")
        if not 0 <= self.l1_coefficient < math.inf:
            raise ValueError(f"SAEConfig.l1_coefficient must be a non-negative number, got {self.l1_coefficient}.")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"SAEConfig.lr must be a positive number, got {self.lr}.")
        if not 0 <= self.lr_decay <= 1:
            raise ValueError(f"SAEConfig.lr_decay must lie in [0, 1] (a fraction of the steps), got {self.lr_decay}.")
        if not is_int(self.seed):
            raise ValueError(f"SAEConfig.seed must be an int, got {self.seed!r}.")
        if not isinstance(self.normalize_activations, bool):
            raise ValueError(f"SAEConfig.normalize_activations must be True or False, got {self.normalize_activations!r}.")


class SAE(torch.nn.Module):
    """A sparse autoencoder with SAELens's parameter names (`W_enc`, `b_enc`, `W_dec`, `b_dec`).

    The decoder rows start as random unit vectors and the encoder as their transpose
    (Gao et al. 2024, Section 2.4), scaled by 0.1 for a ReLU SAE so that its first latents
    are small and the L1 penalty does not dominate its first steps (on Othello activations
    this lifts the explained variance after 200 steps from 0.73 to 0.91). Biases start at
    zero. Seeded by `config.seed`; move it with `.to(device)`.

    It reads and reconstructs activations in their own units, also after `train_sae` (which
    trains on normalised activations, then folds the scale into the biases): its latents
    are then those of the normalised SAE divided by the scale (see `activation_scale`).
    """

    def __init__(self, config: SAEConfig) -> None:
        super().__init__()
        if not isinstance(config, SAEConfig):
            raise TypeError(f"SAE expects an SAEConfig, got {type(config).__name__}.")
        self.config = config
        directions = torch.randn(config.d_sae, config.d_in, generator=generator_for("sae.init", config.seed))
        directions /= directions.norm(dim=1, keepdim=True)
        self.W_enc = torch.nn.Parameter((0.1 if config.kind == "relu" else 1.0) * directions.T)
        self.b_enc = torch.nn.Parameter(torch.zeros(config.d_sae))
        self.W_dec = torch.nn.Parameter(directions)
        self.b_dec = torch.nn.Parameter(torch.zeros(config.d_in))

    def pre_activations(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        """`(x - b_dec) @ W_enc + b_enc`, the encoder's input before its activation function."""
        return torch.addmm(self._encoder_bias(), self._checked("x", x, "d_in"), self.W_enc)

    def _checked(self, name: str, x: object, width_name: str) -> Float[Tensor, "batch width"]:
        """`x` in the SAE's dtype, once it is a finite [batch width] float tensor on the SAE's device."""
        _check_activations(name, x, getattr(self.config, width_name), width_name)
        check_same_device(name, x, "the SAE", self.W_enc)
        return x.to(self.W_enc.dtype)  # float64 (or half) inputs are cast, not refused

    def _encoder_bias(self) -> Float[Tensor, "d_sae"]:
        # Folding b_dec into the bias gives the same numbers, and spares the backward pass a
        # full [batch d_sae] x [d_sae d_in] matmul for b_dec's gradient through x - b_dec.
        return self.b_enc - self.b_dec @ self.W_enc

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        """The latents: the ReLU of the pre-activations, or (TopK) of each row's k largest, the rest set to zero."""
        pre = self.pre_activations(x)  # checks x
        if self.config.kind == "relu":
            return pre.relu()
        values, indices = pre.topk(self.config.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())

    def decode(self, latents: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_in"]:
        """`latents @ W_dec + b_dec`."""
        return torch.addmm(self.b_dec, self._checked("latents", latents, "d_sae"), self.W_dec)

    def forward(self, x: Float[Tensor, "batch d_in"]) -> tuple[Float[Tensor, "batch d_in"], Float[Tensor, "batch d_sae"]]:
        """(reconstruction, latents)."""
        latents = self.encode(x)  # checks x
        return torch.addmm(self.b_dec, latents, self.W_dec), latents

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Scale every decoder row to unit norm, in place.

        Without it the SAE could shrink its latents (and their L1 penalty) by growing the
        decoder rows, and TopK would compare latents on different scales.
        """
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))


def _check_sae(sae: object) -> None:
    """An SAE whose parameters have the shapes its config says and hold no NaN or inf."""
    if not isinstance(sae, SAE):
        raise TypeError(f"sae must be a mechlearn.sae.SAE, got {type(sae).__name__}.")
    d_in, d_sae = sae.config.d_in, sae.config.d_sae
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, shape in expected.items():
        parameter = getattr(sae, name)
        if tuple(parameter.shape) != shape:
            raise ValueError(
                f"sae.{name} has shape {tuple(parameter.shape)} but sae.config (d_in={d_in}, d_sae={d_sae}) says {shape}: "
                "load a checkpoint into an SAE made with its own config."
            )
        check_finite(parameter.detach(), f"sae.{name}")


def _check_activations(name: str, x: object, width: int, width_name: str = "d_in") -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 or not x.dtype.is_floating_point or x.shape[1] != width or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty float tensor of shape [n {width}] (the SAE's {width_name}), got {describe(x)}.")
    check_not_meta(x, name)
    # A sum is finite iff every entry is, unless it overflows; it is ten times faster than isfinite(x).all().
    if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; drop those rows (or fix the run that produced them).")


def _squared_error(x: Float[Tensor, "batch d_in"], reconstruction: Float[Tensor, "batch d_in"]) -> Float[Tensor, ""]:
    """Squared error summed over d_in and averaged over inputs (as Anthropic and SAELens do)."""
    return F.mse_loss(reconstruction, x, reduction="sum") / len(x)  # one fused pass, forward and backward


def _append_ones(x: Float[Tensor, "batch d"]) -> Float[Tensor, "batch d+1"]:
    """`x` with a column of ones, so that `_append_ones(x) @ cat([W, b[None]])` is `x @ W + b`.

    The bias then rides inside the matmul instead of costing a pass of its own, and its
    gradient comes out of the weight-gradient matmul (the last row of `_append_ones(x).T @ grad`).
    """
    return torch.cat([x, x.new_ones(len(x), 1)], dim=1)


class _ReLUAutoencoder(torch.autograd.Function):
    """A ReLU SAE's reconstruction and activity (its latents summed over the batch), with a backward pass by hand.

    Forward: `z = relu(x @ W_enc + bias)`, `r = z @ W_dec + b_dec`, `a = z.sum(0)`. Backward, from the
    loss's gradients `dr` and `da`: `dz = dr @ W_dec.T + da` (the same `da` added to every input's row),
    `dpre = dz` where `z > 0` and 0 elsewhere, then `dW_enc = x.T @ dpre`, `dbias = dpre.sum(0)`,
    `dW_dec = z.T @ dr`, `db_dec = dr.sum(0)` and `dx = dpre @ W_enc.T`. Plain autograd computes the
    same; written out, `bias` and `da` ride inside the matmuls (`_append_ones`), and the only passes
    over [batch d_sae] are the ReLU, its derivative and the sum `a`.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: Float[Tensor, "batch d_in"],
        W_enc: Float[Tensor, "d_in d_sae"],
        bias: Float[Tensor, "d_sae"],
        W_dec: Float[Tensor, "d_sae d_in"],
        b_dec: Float[Tensor, "d_in"],
    ) -> tuple[Float[Tensor, "batch d_in"], Float[Tensor, "d_sae"]]:
        x1 = _append_ones(x)
        latents = (x1 @ torch.cat([W_enc, bias[None]])).relu_()  # in place: the pre-activations are not needed again
        ctx.save_for_backward(x1, W_enc, W_dec, latents)
        return torch.addmm(b_dec, latents, W_dec), latents.T @ x.new_ones(len(x))  # faster than latents.sum(0)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx,
        grad_reconstruction: Float[Tensor, "batch d_in"],
        grad_activity: Float[Tensor, "d_sae"],
    ) -> tuple[Tensor | None, ...]:
        x1, W_enc, W_dec, latents = ctx.saved_tensors
        grad_latents = _append_ones(grad_reconstruction) @ torch.cat([W_dec.T, grad_activity[None]])
        # ReLU's own backward (dz where z > 0, 0 elsewhere), in place: dz is not needed again.
        grad_pre = torch.ops.aten.threshold_backward.grad_input(grad_latents, latents, 0, grad_input=grad_latents)
        grad_W1 = x1.T @ grad_pre  # [d_in + 1, d_sae]: W_enc's gradient, then the bias's
        grad_W_dec = (grad_reconstruction.T @ latents).T  # computed transposed: the faster layout on CPUs
        grad_x = grad_pre @ W_enc.T if ctx.needs_input_grad[0] else None
        return grad_x, grad_W1[:-1], grad_W1[-1], grad_W_dec, grad_reconstruction.sum(dim=0)


class _TopKAutoencoder(torch.autograd.Function):
    """A TopK SAE's reconstruction and activity, computed on the k active latents of each input only.

    Forward: `v, i` = the values (after a ReLU) and indices of the k largest of `x @ W_enc + bias` in
    each row, and `r[b] = sum_s v[b, s] W_dec[i[b, s]] + b_dec`: an `embedding_bag` of k decoder rows
    per input, not a [batch d_sae] x [d_sae d_in] matmul of mostly zeros. Backward, from `dr`:
    `dv[b, s] = dr[b] . W_dec[i[b, s]]` where `v > 0` and 0 elsewhere (latents not kept get nothing):
    k entries of `dr @ W_dec.T` per input, computed without the rest (`_sampled_matmul`). Then, summing
    over the pairs (b, s) of latent j, `dW_dec[j] = sum v[b, s] dr[b]`, `dW_enc[:, j] = sum dv[b, s] x[b]`
    and `dbias[j] = sum dv[b, s]`; `db_dec = dr.sum(0)`, `dx[b] = sum_s dv[b, s] W_enc[:, i[b, s]]`.
    Sorted by latent, the pairs form one bag per latent, so those sums are embedding bags too. Of the
    dense step's five matmuls, only the encoder's is left; it and the `topk` are most of the cost.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: Float[Tensor, "batch d_in"],
        W_enc: Float[Tensor, "d_in d_sae"],
        bias: Float[Tensor, "d_sae"],
        W_dec: Float[Tensor, "d_sae d_in"],
        b_dec: Float[Tensor, "d_in"],
        k: int,
    ) -> tuple[Float[Tensor, "batch d_in"], Float[Tensor, "d_sae"]]:
        values, indices = torch.addmm(bias, x, W_enc).topk(k, dim=-1, sorted=False)
        indices, order = indices.sort(dim=-1)  # each row's latents in order, as `_sampled_matmul` needs
        values = values.gather(-1, order).relu_()
        reconstruction = F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum").add_(b_dec)
        activity = torch.bincount(indices.flatten(), weights=values.flatten(), minlength=len(W_dec))
        ctx.mark_non_differentiable(activity)  # a TopK SAE's loss has no L1 term
        ctx.save_for_backward(x, W_enc, W_dec, values, indices)
        return reconstruction, activity

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_reconstruction: Float[Tensor, "batch d_in"], _: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, W_enc, W_dec, values, indices = ctx.saved_tensors
        grad_values = _sampled_matmul(grad_reconstruction, W_dec.T, indices).mul_(values > 0)
        latents = indices.flatten()
        order = latents.argsort(stable=True)  # the pairs (b, s), grouped by latent
        counts = torch.bincount(latents, minlength=len(W_dec))
        inputs, offsets = order // indices.shape[1], counts.cumsum(0) - counts

        def sum_per_latent(rows: Float[Tensor, "batch d"], weights: Float[Tensor, "batch k"]) -> Float[Tensor, "d_sae d"]:
            return F.embedding_bag(inputs, rows, offsets, per_sample_weights=weights.flatten()[order], mode="sum")

        grad_W_enc = sum_per_latent(x, grad_values).T  # one bag per latent gives it as [d_sae d_in]
        grad_bias = torch.bincount(latents, weights=grad_values.flatten(), minlength=len(W_dec))
        grad_W_dec = sum_per_latent(grad_reconstruction, values)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, W_enc.T.contiguous(), per_sample_weights=grad_values, mode="sum")
        return grad_x, grad_W_enc, grad_bias, grad_W_dec, grad_reconstruction.sum(dim=0), None


def _sampled_matmul(
    a: Float[Tensor, "batch d"], b: Float[Tensor, "d n"], columns: Int[Tensor, "batch k"]
) -> Float[Tensor, "batch k"]:
    """`(a @ b).gather(1, columns)`, on a CPU without computing the rest of `a @ b`: k dot products per row, not n.

    That is `torch.sparse.sampled_addmm` (SDDMM), which takes the entries to compute as the pattern of
    a sparse CSR matrix; CSR lists each row's columns in increasing order, so `columns` must be sorted
    along each row. Its values are added times `beta`, so they must be finite: zeros. At TopK's sizes
    this is 10 to 20 times faster than the dense matmul on a CPU. Other devices, whose support for
    sparse matrices varies, take the dense matmul, which a GPU computes fast anyway.
    """
    if a.device.type != "cpu":
        return (a @ b).gather(1, columns)
    batch, k = columns.shape
    with warnings.catch_warnings():  # torch warns, once, that sparse CSR support is in beta
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(
            torch.arange(0, batch * k + 1, k), columns.flatten(), a.new_zeros(batch * k), (batch, b.shape[1]),
            check_invariants=False,  # sorted by the caller; checking would cost a pass
        )
    return torch.sparse.sampled_addmm(pattern, a, b).values().view(batch, k)


def sae_loss(sae: SAE, x: Float[Tensor, "batch d_in"]) -> dict[str, Tensor]:
    """The training objective on a batch, as a dict of tensors.

    - `"mse"`: squared reconstruction error `||x - x'||^2`, summed over d_in, averaged over inputs.
    - `"loss"`: for a TopK SAE, the mse, since TopK is sparse by construction. A ReLU SAE adds
      `l1_coefficient * l1`, where `"l1"` is `mean over inputs of sum_i latent_i * ||W_dec[i]||`:
      the L1 of the latents weighted by the decoder row norms (Anthropic's April 2024 update;
      SAELens's standard SAE). The decoder is renormalised after every step, so the weights
      are 1 when the step starts and the value is Bricken et al.'s plain L1; the weighting
      keeps the gradient honest (shrinking latents by growing decoder rows does not pay).
    - `"activity"` (no gradient): each latent's activation summed over the batch; a latent
      fired on this batch iff its activity is positive.
    """
    _check_sae(sae)
    return _sae_loss(sae, sae._checked("x", x, "d_in"))


def _sae_loss(sae: SAE, x: Float[Tensor, "batch d_in"]) -> dict[str, Tensor]:
    """`sae_loss` without its checks, for the training loop (whose inputs `train_sae` checked once)."""
    # The numbers of `reconstruction, latents = sae(x)` and `activity = latents.sum(0)`, in fewer passes.
    inputs = (x, sae.W_enc, sae._encoder_bias(), sae.W_dec, sae.b_dec)
    if sae.config.kind == "topk":
        reconstruction, activity = _TopKAutoencoder.apply(*inputs, sae.config.k)
        error = _squared_error(x, reconstruction)
        return {"loss": error, "mse": error, "activity": activity}
    reconstruction, activity = _ReLUAutoencoder.apply(*inputs)
    error = _squared_error(x, reconstruction)
    l1 = activity @ sae.W_dec.norm(dim=1) / len(x)  # latents are >= 0, so activity is their L1, one entry per latent
    return {"loss": error + sae.config.l1_coefficient * l1, "mse": error, "l1": l1, "activity": activity.detach()}


@torch.no_grad()
def resample_dead_latents(
    sae: SAE, x: Float[Tensor, "batch d_in"], dead: Bool[Tensor, "d_sae"], optimizer: torch.optim.Adam, generator: torch.Generator
) -> None:
    """Re-initialise the `dead` latents towards inputs the SAE reconstructs badly (Bricken et al. 2023, "Neuron Resampling").

    Each dead latent draws a row of `x`, with probability proportional to the square of
    that row's loss (its squared reconstruction error). Its decoder row becomes the unit
    vector along `x - b_dec`, its encoder column the same vector times 0.2 times the mean
    encoder norm of the live latents, its encoder bias 0, and `optimizer` (the Adam that
    trains `sae`) forgets their moments. Works with masks of fixed shape, so it never
    waits for the device.
    """
    _check_sae(sae)
    if not isinstance(dead, Tensor) or dead.dtype != torch.bool or dead.shape != (sae.config.d_sae,):
        raise ValueError(f"dead must be a bool tensor of shape ({sae.config.d_sae},), one entry per latent, got {describe(dead)}.")
    if not isinstance(optimizer, torch.optim.Adam) or sae.W_enc not in optimizer.state:
        raise TypeError(f"optimizer must be the torch.optim.Adam that trains sae, after at least one step, got {describe(optimizer)}.")
    reconstruction, _ = sae(x)  # checks x
    error = (x - reconstruction).pow(2).sum(dim=-1)
    chosen = torch.multinomial(error.square() + 1e-12, sae.config.d_sae, replacement=True, generator=generator)
    directions = x[chosen] - sae.b_dec
    directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-8)
    live = (~dead).float()
    mean_live_norm = sae.W_enc.norm(dim=0) @ live / live.sum()
    scale = 0.2 * torch.where(live.sum() > 0, mean_live_norm, 1.0)
    sae.W_dec.copy_(torch.where(dead[:, None], directions, sae.W_dec))
    sae.W_enc.copy_(torch.where(dead[None, :], scale * directions.T, sae.W_enc))
    sae.b_enc.masked_fill_(dead, 0.0)
    for parameter, mask in ((sae.W_dec, dead[:, None]), (sae.W_enc, dead[None, :]), (sae.b_enc, dead)):
        for moment in ("exp_avg", "exp_avg_sq"):
            optimizer.state[parameter][moment].masked_fill_(mask, 0.0)


def activation_scale(activations: Float[Tensor, "n d_in"]) -> float:
    """The one number `s` that brings `activations` to a mean norm of `sqrt(d_in)`: `s = sqrt(d_in) / mean ||x||`.

    `train_sae` trains on `s * activations` (unless `normalize_activations=False`), as
    Anthropic's April 2024 update and SAELens's `normalize_activations="expected_average_only_in"`
    do: after it, every coordinate is of order 1 whatever model or layer the activations
    come from, so one `l1_coefficient` and one `lr` serve them all. A single scalar (not a
    per-dimension standardisation) keeps directions and cosines as they are.
    """
    if not isinstance(activations, Tensor) or activations.ndim != 2 or not activations.dtype.is_floating_point or len(activations) == 0:
        raise ValueError(f"activations must be a non-empty float tensor of shape [n d_in], got {describe(activations)}.")
    check_not_meta(activations, "activations")
    # In float64: the norms of large float32 activations can overflow float32.
    mean_norm = torch.linalg.vector_norm(activations, dim=1, dtype=torch.float64).mean().item()
    if not 0 < mean_norm < math.inf:
        raise ValueError(f"activations have mean norm {mean_norm}, so they cannot be scaled to norm sqrt(d_in): drop all-zero or non-finite data.")
    return math.sqrt(activations.shape[1]) / mean_norm


@torch.no_grad()
def _scale_biases(sae: SAE, factor: float) -> None:
    """Rewrite `sae` to read `factor * x` where it read `x` (its latents and reconstructions come out `factor` times larger).

    ReLU and TopK are positively homogeneous, so multiplying both biases by `factor` is
    enough: `act((f x - f b_dec) @ W_enc + f b_enc) = f act((x - b_dec) @ W_enc + b_enc)`, and the
    decoder rows keep their unit norm.
    """
    sae.b_enc.mul_(factor)
    sae.b_dec.mul_(factor)


def train_sae(sae: SAE, activations: Float[Tensor, "n d_in"], progress: bool = True) -> list[dict[str, float]]:
    """Train `sae` on `activations` with Adam, as `sae.config` says; return the log.

    With `normalize_activations=True` (the default) the SAE trains on `s * activations`,
    where `s = activation_scale(activations)` brings them to a mean norm of `sqrt(d_in)`,
    and the scale is folded back into the biases at the end (also if training is
    interrupted): the SAE returned reads and reconstructs the raw `activations`, its
    decoder rows are unit norm, and its latents are those of the scaled SAE divided by
    `s`. An SAE that has been trained before is first rescaled into the normalised space,
    so training can be continued. With `False`, it trains on the activations as they are.

    `activations` are moved to the SAE's device once. Each step draws `batch_size` rows
    (with replacement, from a generator seeded by `config.seed`), takes an Adam step on
    `sae_loss`, renormalises the decoder rows, and counts, for every latent, the steps
    since it last fired. With
    `dead_remedy="resample"`, latents that have not fired for `dead_window` steps are
    resampled every `dead_window` steps (and get a fresh window to fire), except after the
    last step: untrained, they would fire on many inputs (on the Othello model's residual
    stream, the ReLU SAE's L0 rose from 18 to 39).

    Every `log_every` steps (and after the last) one record is appended, measured on that
    step's batch: `{"step", "loss", "mse", "l0", "explained_variance", "window_dead_fraction"}`
    (`loss` before the step's update, the rest after). `mse` and `loss` are in the units of
    the raw `activations` (the normalised values divided by `s**2`; the ReLU SAE's `loss`
    is then `mse + (l1_coefficient / s) * l1`, with the L1 of the raw latents), so they
    compare across runs on the same activations; `l0`, `explained_variance` and
    `window_dead_fraction` do not depend on the scale. Only at log steps does the loop wait for the
    device, so that is also where a NaN loss is caught (a FloatingPointError): once NaN,
    the parameters stay NaN, so the next log step is sure to see it.
    """
    _check_sae(sae)
    config = sae.config
    _check_activations("activations", activations, config.d_in)
    activations = activations.to(sae.W_enc.device, sae.W_enc.dtype)  # float64 activations are cast, not refused
    scale = activation_scale(activations) if config.normalize_activations else 1.0
    _scale_biases(sae, scale)  # into the normalised space (a no-op on a fresh SAE: its biases are zero)
    try:
        return _train_scaled(sae, activations, scale, progress)
    finally:
        _scale_biases(sae, 1 / scale)  # back to raw units, even if training is interrupted


def _train_scaled(sae: SAE, activations: Float[Tensor, "n d_in"], scale: float, progress: bool) -> list[dict[str, float]]:
    """`train_sae`'s loop, on `scale * activations` (scaled one batch at a time: no scaled copy of them all)."""
    config = sae.config
    device = sae.W_enc.device
    generator = generator_for("sae.batches", config.seed, device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr, fused=True)  # one kernel per parameter, not a dozen
    steps_since_fired = torch.zeros(config.d_sae, dtype=torch.long, device=device)
    history: list[dict[str, float]] = []
    decay_steps = round(config.lr_decay * config.steps)
    bar = tqdm(range(1, config.steps + 1), desc="SAE steps", disable=not progress)
    for step in bar:
        if config.steps - step < decay_steps:  # the last decay_steps updates: lr down linearly, to lr / decay_steps
            optimizer.param_groups[0]["lr"] = config.lr * (config.steps - step + 1) / decay_steps
        rows = torch.randint(len(activations), (config.batch_size,), device=device, generator=generator)
        x = activations.index_select(0, rows)  # on the CPU several times faster than activations[rows]
        if scale != 1.0:
            x.mul_(scale)
        losses = _sae_loss(sae, x)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        sae.normalize_decoder()
        steps_since_fired.add_(1).masked_fill_(losses["activity"] > 0, 0)
        if config.dead_remedy == "resample" and step % config.dead_window == 0 and step < config.steps:  # a latent resampled by the last step would go untrained
            dead = steps_since_fired >= config.dead_window
            resample_dead_latents(sae, x, dead, optimizer, generator)
            steps_since_fired.masked_fill_(dead, 0)  # a fresh latent gets a full window to fire
        if step % config.log_every == 0 or step == config.steps:
            record = _record(sae, x, losses["loss"], steps_since_fired, step)
            for name in ("loss", "mse"):  # squared errors: back to the raw activations' units
                record[name] /= scale**2
            history.append(record)
            bar.set_postfix(mse=f"{record['mse']:.4f}", l0=f"{record['l0']:.1f}", dead=f"{record['window_dead_fraction']:.2f}")
    return history


@torch.no_grad()
def _record(sae: SAE, x: Float[Tensor, "batch d_in"], loss: Float[Tensor, ""], steps_since_fired: Int[Tensor, "d_sae"], step: int) -> dict[str, float]:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"The SAE's training loss became {loss.item()} by step {step}; lower SAEConfig.lr.")
    reconstruction, latents = sae(x)
    return {
        "step": step,
        "loss": loss.item(),
        "mse": mse(x, reconstruction),
        "l0": l0(latents),
        "explained_variance": explained_variance(x, reconstruction),
        "window_dead_fraction": window_dead_fraction(steps_since_fired, sae.config.dead_window),
    }


def _check_pair(x: object, reconstruction: object) -> None:
    for name, value in (("x", x), ("reconstruction", reconstruction)):
        if not isinstance(value, Tensor) or value.ndim != 2 or not value.dtype.is_floating_point or len(value) == 0:
            raise ValueError(f"{name} must be a non-empty float tensor of shape [batch d_in], got {describe(value)}.")
        check_not_meta(value, name)
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or inf, so no error measured on it would mean anything.")
    if x.shape != reconstruction.shape:
        raise ValueError(f"x {tuple(x.shape)} and reconstruction {tuple(reconstruction.shape)} must have the same shape.")
    check_same_device("reconstruction", reconstruction, "x", x)


def _check_latents(latents: object) -> None:
    if not isinstance(latents, Tensor) or latents.ndim != 2 or not latents.dtype.is_floating_point or len(latents) == 0:
        raise ValueError(f"latents must be a non-empty float tensor of shape [n d_sae], got {describe(latents)}.")
    check_not_meta(latents, "latents")
    if torch.isnan(latents).any():
        raise ValueError("latents contain NaN, which is neither active nor silent; check the SAE's weights and inputs.")


@torch.no_grad()
def l0(latents: Float[Tensor, "batch d_sae"]) -> float:
    """The mean number of active (non-zero) latents per input."""
    _check_latents(latents)
    return (latents != 0).sum(dim=-1).float().mean().item()


@torch.no_grad()
def mse(x: Float[Tensor, "batch d_in"], reconstruction: Float[Tensor, "batch d_in"]) -> float:
    """The squared error `||x - reconstruction||^2`, summed over d_in and averaged over inputs (the loss's `"mse"`)."""
    _check_pair(x, reconstruction)
    return _squared_error(x, reconstruction).item()


@torch.no_grad()
def explained_variance(x: Float[Tensor, "batch d_in"], reconstruction: Float[Tensor, "batch d_in"]) -> float:
    """`1 - sum ||x - x'||^2 / sum ||x - mean(x)||^2`: one minus the fraction of variance unexplained.

    1 is a perfect reconstruction; 0 is no better than predicting the mean input.
    """
    _check_pair(x, reconstruction)
    total = (x - x.mean(dim=0)).pow(2).sum()
    if total == 0:
        raise ValueError("x has no variance (all rows are equal), so there is no variance to explain.")
    return (1 - (x - reconstruction).pow(2).sum() / total).item()


def window_dead_fraction(steps_since_fired: Int[Tensor, "d_sae"], dead_window: int) -> float:
    """The fraction of latents silent during training: none of the last `dead_window` steps' batches fired them.

    What the trainer logs and resamples. A latent can pass this window on a rare training
    input and still never fire on new data: `held_out_dead_fraction` counts those.
    """
    if not isinstance(steps_since_fired, Tensor) or steps_since_fired.ndim != 1 or len(steps_since_fired) == 0:
        raise ValueError(f"steps_since_fired must be a non-empty tensor of shape [d_sae], got {describe(steps_since_fired)}.")
    if not is_int(dead_window) or dead_window < 1:
        raise ValueError(f"dead_window must be an int of at least 1, got {dead_window!r}.")
    return (steps_since_fired >= dead_window).float().mean().item()


@torch.no_grad()
def held_out_dead_fraction(latents: Float[Tensor, "n d_sae"]) -> float:
    """The fraction of latents that never fire (are never non-zero) on these inputs: pass the latents of held-out activations."""
    _check_latents(latents)
    return (latents == 0).all(dim=0).float().mean().item()


@torch.no_grad()
def mmcs(learned: Float[Tensor, "d_sae d_in"], true: Float[Tensor, "n_true d_in"]) -> float:
    """Mean max cosine similarity (MMCS; Sharkey et al. 2022, Figure 3): how well `learned` directions cover the `true` ones.

    For each true feature, the largest cosine similarity with any learned direction (pass
    `sae.W_dec`), averaged over the true features. Signed cosine, not its absolute value:
    SAE latents are non-negative, so a decoder row pointing against a feature cannot
    represent it. 1 means every true feature has a learned copy.
    """
    for name, value in (("learned", learned), ("true", true)):
        if not isinstance(value, Tensor) or value.ndim != 2 or not value.dtype.is_floating_point or len(value) == 0:
            raise ValueError(f"{name} must be a non-empty float tensor of shape [n d_in], got {describe(value)}.")
        check_finite(value.detach(), name)
    if learned.shape[1] != true.shape[1]:
        raise ValueError(f"learned has d_in={learned.shape[1]} but true has d_in={true.shape[1]}: compare directions in the same space.")
    cosines = F.normalize(true, dim=1) @ F.normalize(learned.to(true), dim=1).T  # [n_true d_sae]
    return cosines.max(dim=1).values.mean().item()


LossFn = Callable[[Float[Tensor, "batch pos d_vocab"], Int[Tensor, "batch pos"]], Float[Tensor, ""]]


def splice_hook(sae: SAE) -> Callable[[Float[Tensor, "batch pos d_in"], HookPoint], Float[Tensor, "batch pos d_in"]]:
    """A hook that replaces the activation by the SAE's reconstruction of it, for `model.run_with_hooks`."""
    _check_sae(sae)

    def splice(activation: Float[Tensor, "batch pos d_in"], hook: HookPoint) -> Float[Tensor, "batch pos d_in"]:
        if activation.shape[-1] != sae.config.d_in:
            raise ValueError(f"The activation at {hook.name} has size {activation.shape[-1]} but the SAE reads d_in={sae.config.d_in}.")
        reconstruction, _ = sae(activation.flatten(0, -2))
        return reconstruction.reshape(activation.shape)

    return splice


@torch.no_grad()
def loss_recovered(model: torch.nn.Module, tokens: Int[Tensor, "batch pos"], hook_name: str, sae: SAE, loss_fn: LossFn) -> float:
    """How much of the model's loss the SAE keeps when spliced in at `hook_name`.

    `(L_zero - L_sae) / (L_zero - L_clean)`, where `L_clean` is the model's loss, `L_sae` the
    loss with the activation at `hook_name` replaced by the SAE's reconstruction, and
    `L_zero` the loss with it replaced by zeros. 1: the SAE loses nothing; 0: as bad as
    deleting the activation. `loss_fn(logits, tokens)` is the scalar loss, e.g.
    `lambda logits, tokens: task_loss(task, logits, tokens)`.

    Zeroing an activation can be so destructive that even an untrained SAE scores well (on
    chapter 06's Othello model, about 0.8): read it beside an untrained SAE's, or look at the
    spliced loss itself (`splice_hook`).
    """
    _check_sae(sae)
    check_token_ids(tokens, "tokens", model.cfg.d_vocab, model.cfg.n_ctx)
    if hook_name not in model.hook_dict:
        raise ValueError(f"hook_name {hook_name!r} is not a hook point of the model; e.g. 'blocks.0.hook_resid_pre' is.")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function (logits, tokens) -> loss, got {describe(loss_fn)}.")
    tokens = tokens.to(next(model.parameters()).device)

    def zero(activation: Tensor, hook: HookPoint) -> Tensor:
        return torch.zeros_like(activation)

    clean = loss_fn(model(tokens), tokens)
    ablated = loss_fn(model.run_with_hooks(tokens, fwd_hooks=[(hook_name, zero)]), tokens)
    spliced = loss_fn(model.run_with_hooks(tokens, fwd_hooks=[(hook_name, splice_hook(sae))]), tokens)
    if ablated == clean:
        raise ValueError(f"Zero-ablating {hook_name} does not change the loss, so there is no loss for the SAE to recover.")
    return ((ablated - spliced) / (ablated - clean)).item()


# Binarise a latent at these fractions of its largest activation, as Karvonen et al. (2024) do.
THRESHOLDS = tuple(i / 10 for i in range(10))


class BestLatents(NamedTuple):
    """For every property, the latent that detects it best, and how well."""

    latent: Int[Tensor, "prop"]
    precision: Float[Tensor, "prop"]
    recall: Float[Tensor, "prop"]
    f1: Float[Tensor, "prop"]


class LatentScores(NamedTuple):
    """How well each latent detects each property, every (latent, property) pair at its best threshold."""

    f1: Float[Tensor, "d_sae prop"]
    precision: Float[Tensor, "d_sae prop"]
    recall: Float[Tensor, "d_sae prop"]
    threshold: Float[Tensor, "d_sae prop"]  # as a fraction of the latent's largest activation

    def best(self) -> BestLatents:
        """For every property, its best latent by F1, with that latent's precision, recall and F1."""
        f1, latent = self.f1.max(dim=0)
        pick = lambda scores: scores.gather(0, latent[None])[0]
        return BestLatents(latent, pick(self.precision), pick(self.recall), f1)

    def coverage(self) -> float:
        """The mean over properties of the best F1 (Karvonen et al.'s coverage): 1 if every property has a perfect detector."""
        return self.best().f1.mean().item()

    def captured(self, min_f1: float = 0.8) -> Bool[Tensor, "prop"]:
        """Which properties some latent detects with an F1 of at least `min_f1`."""
        check_number(min_f1, "min_f1", minimum=0)
        return self.best().f1 >= min_f1


@torch.no_grad()
def score_latents(
    latents: Float[Tensor, "n d_sae"], properties: Bool[Tensor, "n prop"], thresholds: tuple[float, ...] = THRESHOLDS
) -> LatentScores:
    """Score every latent as a detector of every known property of the inputs (Karvonen et al. 2024, Section 3).

    A latent "says yes" on an input when its activation exceeds a threshold, a fraction of
    its largest activation over these inputs (`thresholds`). Each (latent, property) pair is
    scored at the threshold with the best F1 = 2 TP / (yes + true), which weighs precision
    (when it says yes, the property holds) and recall (it says yes whenever the property
    holds) equally. On a board game the properties are the true board state ("C3 is mine"),
    so the scores say how much of the board the SAE's latents find.
    """
    _check_latents(latents)
    if not isinstance(properties, Tensor) or properties.dtype != torch.bool or properties.ndim != 2 or len(properties) != len(latents):
        raise ValueError(f"properties must be a bool tensor of shape [{len(latents)} prop] (one row per input), got {describe(properties)}.")
    if not isinstance(thresholds, (tuple, list)) or not thresholds or not all(is_number(t) and 0 <= t < 1 for t in thresholds):
        raise ValueError(f"thresholds must be a non-empty tuple of fractions in [0, 1) of each latent's largest activation, got {thresholds!r}.")
    n_true = properties.sum(dim=0)
    if (n_true == 0).any():
        raise ValueError(f"properties {n_true.eq(0).nonzero()[:, 0].tolist()} never hold on these inputs, so no latent can detect them: drop them.")
    truth, n_true = properties.to(latents), n_true.to(latents)
    largest = latents.max(dim=0, keepdim=True).values.clamp_min(1e-12)  # a dead latent never says yes
    best = LatentScores(*(torch.full((latents.shape[1], properties.shape[1]), -1.0, device=latents.device) for _ in range(4)))
    for threshold in thresholds:
        says_yes = (latents > threshold * largest).to(latents)
        n_yes = says_yes.sum(dim=0)[:, None]
        hits = says_yes.T @ truth  # [d_sae prop] true positives
        scores = LatentScores(2 * hits / (n_yes + n_true), hits / n_yes.clamp_min(1), hits / n_true, torch.full_like(hits, threshold))
        better = scores.f1 > best.f1
        best = LatentScores(*(torch.where(better, new, old) for new, old in zip(scores, best)))
    return best


@dataclass(frozen=True)
class SparseFeatureData:
    """Activations built from known features, to grade an SAE against the truth.

    A simpler version of Sharkey et al.'s (2022) toy data: their features are correlated
    and of unequal frequency, ours independent and equally frequent. The `n_features` true
    features are random unit vectors in `d_model` dimensions (more features than
    dimensions: superposition). In each input every feature is active independently with
    probability `features_per_input / n_features`, with a coefficient drawn uniformly from
    [0, 1]; the input is the sum of the active features times their coefficients.
    """

    n_features: int = 128
    d_model: int = 64
    features_per_input: float = 3.0  # the expected number of active features
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_features", "d_model"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"SparseFeatureData.{name} must be an int of at least 1, got {getattr(self, name)!r}.")
        check_number(self.features_per_input, "SparseFeatureData.features_per_input", minimum=0)
        if not 0 < self.features_per_input <= self.n_features:
            raise ValueError(f"SparseFeatureData.features_per_input must lie in (0, n_features={self.n_features}], got {self.features_per_input}.")
        if not is_int(self.seed):
            raise ValueError(f"SparseFeatureData.seed must be an int, got {self.seed!r}.")

    def dictionary(self) -> Float[Tensor, "n_features d_model"]:
        """The true features, one unit vector per row: the same for the same seed, and from a stream of their own,
        so an SAE seeded alike does not start on them."""
        features = torch.randn(self.n_features, self.d_model, generator=generator_for("sparse_features.dictionary", self.seed))
        return features / features.norm(dim=1, keepdim=True)

    def sample(self, n: int, generator: torch.Generator) -> Float[Tensor, "n d_model"]:
        """`n` inputs drawn with `generator` (a CPU generator; move the result to your device)."""
        if not is_int(n) or n < 1:
            raise ValueError(f"n must be an int of at least 1, got {n!r}.")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {describe(generator)}.")
        active = torch.rand(n, self.n_features, generator=generator) < self.features_per_input / self.n_features
        coefficients = torch.rand(n, self.n_features, generator=generator) * active
        return coefficients @ self.dictionary()
