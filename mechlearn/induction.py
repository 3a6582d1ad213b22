"""Induction heads and the heads that feed them (taught in chapter 03).

The scores follow Olsson et al. (2022), "In-context Learning and Induction Heads", and
the TransformerLens/ARENA conventions. They are measured on repeated random tokens
`[BOS, x_1 … x_L, x_1 … x_L]`, where the only way to predict the second half is to
look back at the first:

- a *previous-token* head attends from each position to the one before it;
- a *duplicate-token* head attends from `x_i` in the second half to `x_i` in the first;
- an *induction* head attends from `x_i` in the second half to `x_{i+1}` in the first
  (the token that came after the earlier occurrence), offset `L - 1` back.

Each score is the mean attention weight on the position the definition names, so it
lies in [0, 1] and is 1 exactly for a head that does nothing else. K-composition
(Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits") measures how
much a later head's keys read what an earlier head wrote; Q- and V-composition, how much
its queries or values do. The weights also say what a head does on its own (the copying
score of its OV circuit, the positional part of its QK circuit), and its attention scores
split into one term per pair of sources, which shows the K-composition term at work.
Finally, `train_monitored` and `phase_change_step` find the step at which an induction
head forms during training (Olsson et al. 2022, argument 1).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.model_bridge import TransformerBridge

from mechlearn.device import generator_for
from mechlearn.models import ModelConfig, load_pretrained, make_model, model_device
from mechlearn.patching import run_with_heads_ablated
from mechlearn.tasks import Task
from mechlearn.tasks.induction import LabelledTokens
from mechlearn.train import TrainConfig, next_token_loss, train
from mechlearn.validation import check_finite, check_number, check_same_device, check_tensor, check_token_ids, describe, is_int

DEFAULT_THRESHOLD = 0.5
"""A head counts when more than half of its attention goes where the score looks.

A head that spreads its attention evenly over n positions scores about 1/n, so on a
random model every score stays far below this; a head that does the job scores near 1.
"""

Head = tuple[int, int]  # (layer, head)


# --- data ------------------------------------------------------------------------------------


def repeated_random_tokens(
    d_vocab: int, seq_len: int, batch: int, generator: torch.Generator | None = None, bos: int | None = None
) -> Int[Tensor, "batch pos"]:
    """`[BOS, x_1 … x_L, x_1 … x_L]` with `x_1 … x_L` distinct random tokens (never BOS).

    Without `bos` the sequences are `[x_1 … x_L, x_1 … x_L]`. Either way the repeated block
    is the last `2 * seq_len` positions, which is where the scores below look. The tokens
    are distinct so that each one has a single earlier occurrence: with a small vocabulary,
    tokens drawn independently collide often, and even a perfect induction head would then
    split its attention between the matches and score below 1.
    """
    for name, value in (("d_vocab", d_vocab), ("seq_len", seq_len), ("batch", batch)):
        if not is_int(value) or value < 1:
            raise ValueError(f"repeated_random_tokens: {name} must be a positive int, got {value!r}.")
    if bos is not None and not (is_int(bos) and 0 <= bos < d_vocab):
        raise ValueError(f"repeated_random_tokens: bos must be a token id in [0, {d_vocab}), got {bos}.")
    n_choices = d_vocab - (bos is not None)
    if seq_len > n_choices:
        raise ValueError(
            f"repeated_random_tokens: seq_len={seq_len} is more than the {n_choices} distinct tokens the vocabulary offers."
        )
    # The first seq_len entries of a random permutation of the vocabulary, for each sequence.
    first_half = torch.rand(batch, n_choices, generator=generator).argsort(dim=-1)[:, :seq_len]
    if bos is not None:
        first_half = first_half + (first_half >= bos).long()  # skip over the BOS id
    repeated = einops.repeat(first_half, "batch pos -> batch (copy pos)", copy=2)
    if bos is None:
        return repeated
    return torch.cat([torch.full((batch, 1), bos), repeated], dim=-1)


# --- attention patterns ----------------------------------------------------------------------


def stack_patterns(cache: ActivationCache) -> Float[Tensor, "layer batch head query_pos key_pos"]:
    """Every layer's `hook_pattern` from a cache, stacked along a new first axis."""
    if not isinstance(cache, ActivationCache):
        raise TypeError(f"cache must be the ActivationCache of model.run_with_cache, got {describe(cache)}.")
    n_layers = len([name for name in cache.keys() if name.endswith("attn.hook_pattern")])
    if n_layers == 0:
        raise ValueError("stack_patterns: the cache holds no blocks.{l}.attn.hook_pattern; run_with_cache must keep them.")
    return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(n_layers)])


@torch.no_grad()
def repeated_tokens_patterns(
    model: TransformerBridge, seq_len: int, batch: int = 32, seed: int = 0, bos: int | None = None
) -> tuple[Int[Tensor, "batch pos"], Float[Tensor, "layer batch head query_pos key_pos"]]:
    """Run `model` on repeated random tokens; return the tokens and every layer's attention."""
    _validate_seq_len(model, seq_len, bos)
    generator = generator_for("induction.repeated_tokens", seed)
    tokens = repeated_random_tokens(model.cfg.d_vocab, seq_len, batch, generator, bos).to(model_device(model))
    # Keep only the patterns: the rest of the cache would cost memory and time for nothing.
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_pattern"))
    return tokens, stack_patterns(cache)


def _validate_seq_len(model: TransformerBridge, seq_len: int, bos: int | None) -> None:
    if not is_int(seq_len) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}.")
    length = 2 * seq_len + (bos is not None)
    if length > model.cfg.n_ctx:
        raise ValueError(
            f"seq_len={seq_len} makes sequences of {length} tokens, longer than the model's n_ctx={model.cfg.n_ctx}."
        )


def _as_patterns(patterns: Float[Tensor, "layer batch head query_pos key_pos"] | ActivationCache) -> Tensor:
    if isinstance(patterns, ActivationCache):
        patterns = stack_patterns(patterns)
    if not isinstance(patterns, Tensor) or patterns.ndim != 5 or not patterns.is_floating_point() or patterns.numel() == 0:
        raise ValueError(
            f"patterns must be an ActivationCache or a non-empty float tensor [layer batch head query_pos key_pos], "
            f"got {describe(patterns)}; stack one layer's pattern with pattern[None]."
        )
    if patterns.shape[-1] != patterns.shape[-2]:
        raise ValueError(f"patterns must be square in query_pos and key_pos, got {tuple(patterns.shape)}.")
    check_finite(patterns, "patterns")
    # Attention weights are probabilities; a little slack for a softmax's rounding.
    if ((patterns < 0) | (patterns > 1 + 1e-4)).any():
        raise ValueError("patterns must be attention weights in [0, 1]; pass hook_pattern, not hook_attn_scores.")
    return patterns


def _mean_on_diagonal(
    patterns: Float[Tensor, "layer batch head query_pos key_pos"], offset: int, first_query: int
) -> Float[Tensor, "layer head"]:
    """Mean attention from each query q >= first_query to key q - offset."""
    stripe = patterns.diagonal(offset=-offset, dim1=-2, dim2=-1)  # entry j is query offset + j
    return einops.reduce(stripe[..., first_query - offset :], "layer batch head query -> layer head", "mean")


def _validate_repeat(patterns: Tensor, seq_len: int) -> None:
    if not is_int(seq_len) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}.")
    if 2 * seq_len > patterns.shape[-1]:
        raise ValueError(
            f"seq_len={seq_len} needs at least {2 * seq_len} positions, but the patterns cover {patterns.shape[-1]}."
        )


def previous_token_scores(
    patterns: Float[Tensor, "layer batch head query_pos key_pos"] | ActivationCache,
) -> Float[Tensor, "layer head"]:
    """Mean attention from each position to the one just before it (position 0 has none)."""
    patterns = _as_patterns(patterns)
    return _mean_on_diagonal(patterns, offset=1, first_query=1)


def duplicate_token_scores(
    patterns: Float[Tensor, "layer batch head query_pos key_pos"] | ActivationCache, seq_len: int
) -> Float[Tensor, "layer head"]:
    """Mean attention from each second-half token to the same token in the first half.

    The repeated block is the last `2 * seq_len` positions, so the first occurrence of
    the token at position q is at q - seq_len.
    """
    patterns = _as_patterns(patterns)
    _validate_repeat(patterns, seq_len)
    return _mean_on_diagonal(patterns, offset=seq_len, first_query=patterns.shape[-1] - seq_len)


def induction_scores(
    patterns: Float[Tensor, "layer batch head query_pos key_pos"] | ActivationCache, seq_len: int
) -> Float[Tensor, "layer head"]:
    """Mean attention from each second-half token to the token after its first occurrence.

    That token sits at q - seq_len + 1: the head looks up what followed the current token
    last time, which is what it will copy as its prediction.
    """
    patterns = _as_patterns(patterns)
    _validate_repeat(patterns, seq_len)
    return _mean_on_diagonal(patterns, offset=seq_len - 1, first_query=patterns.shape[-1] - seq_len)


# --- finding heads ---------------------------------------------------------------------------


def heads_above(scores: Float[Tensor, "layer head"], threshold: float = DEFAULT_THRESHOLD) -> list[Head]:
    """The (layer, head) pairs whose score is at least `threshold`, in order."""
    if not isinstance(scores, Tensor) or scores.ndim != 2:
        raise ValueError(f"scores must be a [layer head] tensor, got {describe(scores)}.")
    check_finite(scores, "scores")  # a NaN score would silently pass as no head
    check_number(threshold, "threshold")
    return [tuple(index) for index in (scores >= threshold).nonzero().tolist()]


def _default_seq_len(model: TransformerBridge, bos: int | None) -> int:
    """The longest repeat that fits in the model's context."""
    return (model.cfg.n_ctx - (bos is not None)) // 2


def find_induction_heads(
    model: TransformerBridge,
    threshold: float = DEFAULT_THRESHOLD,
    seq_len: int | None = None,
    batch: int = 32,
    seed: int = 0,
    bos: int | None = None,
) -> list[Head]:
    """The heads whose induction score on repeated random tokens is at least `threshold`.

    `seq_len` defaults to the longest repeat that fits in `n_ctx`; pass `bos` if the model
    was trained with sequences that start with a BOS token.
    """
    seq_len = _default_seq_len(model, bos) if seq_len is None else seq_len
    _, patterns = repeated_tokens_patterns(model, seq_len, batch, seed, bos)
    return heads_above(induction_scores(patterns, seq_len), threshold)


def find_previous_token_heads(
    model: TransformerBridge,
    threshold: float = DEFAULT_THRESHOLD,
    seq_len: int | None = None,
    batch: int = 32,
    seed: int = 0,
    bos: int | None = None,
) -> list[Head]:
    """The heads whose previous-token score on repeated random tokens is at least `threshold`."""
    seq_len = _default_seq_len(model, bos) if seq_len is None else seq_len
    _, patterns = repeated_tokens_patterns(model, seq_len, batch, seed, bos)
    return heads_above(previous_token_scores(patterns), threshold)


# --- composition -----------------------------------------------------------------------------


COMPOSITION_KINDS = ("q", "k", "v")
"""Which input of the later head reads the earlier head's output: its queries, keys or values."""


@torch.no_grad()
def composition_scores(
    model: TransformerBridge, kind: str, earlier_layer: int = 0, later_layer: int = 1
) -> Float[Tensor, "earlier_head later_head"]:
    """How much each later head's queries, keys or values read what each earlier head writes (Elhage et al. 2021).

    Taught in chapter 03 (exercises 6 and 7). Elhage et al. (2021), "A Mathematical Framework
    for Transformer Circuits", section "Composition scores": for head A in `earlier_layer` and
    head B in `later_layer` the score is `||W_OV^A R^B||_F / (||W_OV^A||_F ||R^B||_F)`, where
    the reading matrix `R^B` is

    - `W_QK^B` for `kind="q"`: the residual stream enters `x W_QK y^T` from the left at the query;
    - `(W_QK^B)^T` for `kind="k"`: it enters from the right at the key, hence the transpose;
    - `W_OV^B` for `kind="v"`: the values read it and write it on.

    `W_QK = W_Q W_K^T` and `W_OV = W_V W_O` are `FactoredMatrix` objects, so no
    d_model x d_model product is formed. It equals the matching entries of
    `model.all_composition_scores(kind.upper())`, except that a head with all-zero weights
    scores 0 rather than NaN; like it, it reads the raw weights (any LayerNorm weights in
    between are not folded in).
    """
    if kind not in COMPOSITION_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, COMPOSITION_KINDS))}, got {kind!r}.")
    if model.cfg.n_layers < 2:
        raise ValueError(f"composition_scores needs a model with at least 2 layers; this one has {model.cfg.n_layers}.")
    if not (is_int(earlier_layer) and is_int(later_layer) and 0 <= earlier_layer < later_layer < model.cfg.n_layers):
        raise ValueError(
            f"composition_scores needs 0 <= earlier_layer < later_layer < {model.cfg.n_layers}, "
            f"got earlier_layer={earlier_layer}, later_layer={later_layer}."
        )
    weights = (model.W_V[earlier_layer], model.W_O[earlier_layer], model.W_Q[later_layer], model.W_K[later_layer])
    weights += (model.W_V[later_layer], model.W_O[later_layer])
    if not all(torch.isfinite(weight).all() for weight in weights):
        raise ValueError("model has NaN or inf in its attention weights, so its composition scores would mean nothing.")
    writes = model.OV[earlier_layer]  # [earlier_head d_model d_model]
    reads = {"q": model.QK[later_layer], "k": model.QK[later_layer].T, "v": model.OV[later_layer]}[kind]
    composed = writes[:, None] @ reads[None, :]
    norms = writes.norm()[:, None] * reads.norm()[None, :]
    # A head whose weights are all zero writes or reads nothing: it composes with nothing (not 0/0).
    return torch.where(norms > 0, composed.norm() / norms.clamp(min=torch.finfo(norms.dtype).tiny), 0.0)


def k_composition_scores(
    model: TransformerBridge, earlier_layer: int = 0, later_layer: int = 1
) -> Float[Tensor, "earlier_head later_head"]:
    """How much each later head's keys read what each earlier head writes (taught in chapter 03, exercise 6).

    `composition_scores(model, "k", ...)`: `||W_OV^A (W_QK^B)^T||_F / (||W_OV^A||_F ||W_QK^B||_F)`.
    """
    return composition_scores(model, "k", earlier_layer, later_layer)


# --- losses and ablations ----------------------------------------------------------------------


def loss_on_tokens(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"]
) -> Float[Tensor, ""]:
    """Mean cross-entropy of predicting the tokens marked in `mask`, each from the position before.

    `mask` marks tokens, not predictions (e.g. `repeated` from `InductionTask.sample_labelled`):
    the prediction of token t is made at t - 1, so this is `next_token_loss` with `mask[:, 1:]`.
    """
    check_tensor(logits, "logits", 3, floating=True)
    check_token_ids(tokens, "tokens", d_vocab=logits.shape[-1])
    check_same_device("tokens", tokens, "logits", logits)
    if logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must have the batch and pos sizes of tokens {tuple(tokens.shape)}.")
    check_finite(logits, "logits")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor of shape {tuple(tokens.shape)}, got {describe(mask)}.")
    if mask.shape != tokens.shape:
        raise ValueError(f"mask must have the shape of tokens {tuple(tokens.shape)}, got {tuple(mask.shape)}.")
    if mask[:, 0].any():
        raise ValueError("mask marks position 0, which no position predicts; mark tokens from position 1 on.")
    if not mask.any():
        raise ValueError("mask marks no tokens, so there is no loss to average.")
    return next_token_loss(logits, tokens, mask[:, 1:])


@torch.no_grad()
def ablation_cost(
    model: TransformerBridge, tokens: Int[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"], heads: list[Head]
) -> float:
    """How much the loss on the `mask`ed tokens rises (nats) when `heads` are zero-ablated together."""
    check_token_ids(tokens, "tokens", model.cfg.d_vocab, model.cfg.n_ctx)
    tokens = tokens.to(model_device(model))
    clean = loss_on_tokens(model(tokens), tokens, mask)
    ablated = loss_on_tokens(run_with_heads_ablated(model, tokens, heads), tokens, mask)
    return (ablated - clean).item()


# --- the induction circuit of a trained model ---------------------------------------------------


def head_label(layer: int, head: int) -> str:
    """`L1H0` for layer 1, head 0: TransformerLens's name for a head."""
    return f"L{layer}H{head}"


def _per_head(name: str, scores: Float[Tensor, "layer head"]) -> dict[str, float]:
    return {f"{name}_{head_label(layer, head)}": score for (layer, head), score in _enumerate_heads(scores)}


def _enumerate_heads(scores: Float[Tensor, "layer head"]) -> list[tuple[Head, float]]:
    return [((layer, head), scores[layer, head].item()) for layer in range(scores.shape[0]) for head in range(scores.shape[1])]


def _check_labelled(labelled: object) -> None:
    if not isinstance(labelled, LabelledTokens):
        raise TypeError(f"labelled must be a LabelledTokens (from InductionTask.sample_labelled), got {describe(labelled)}.")


def training_monitor(
    labelled: LabelledTokens, seq_len: int, bos: int | None, n_sequences: int = 32, seed: int = 0
) -> Callable[[TransformerBridge, Tensor], dict[str, float]]:
    """An `eval_fn` for `mechlearn.train.train` that records the induction phase change.

    Each call returns the loss on the `first` and `repeated` tokens of `labelled` (a fixed
    held-out batch), every head's induction and previous-token score on repeated random
    tokens of length `seq_len`, and `seconds` since the monitor was made: make it just
    before training starts.
    """
    _check_labelled(labelled)
    start = time.perf_counter()

    @torch.no_grad()
    def monitor(model: TransformerBridge, eval_tokens: Tensor) -> dict[str, float]:
        tokens = labelled.tokens.to(model_device(model))
        logits = model(tokens)
        _, patterns = repeated_tokens_patterns(model, seq_len, n_sequences, seed, bos)
        return {
            "seconds": time.perf_counter() - start,
            "loss_first": loss_on_tokens(logits, tokens, labelled.first).item(),
            "loss_repeated": loss_on_tokens(logits, tokens, labelled.repeated).item(),
            **_per_head("induction_score", induction_scores(patterns, seq_len)),
            **_per_head("previous_token_score", previous_token_scores(patterns)),
        }

    return monitor


def first_record_where(history: list[dict[str, float]], key_prefix: str, threshold: float) -> dict[str, float] | None:
    """The first history record in which some `key_prefix*` metric reached `threshold`, or None.

    E.g. `first_record_where(card["history"], "induction_score_L1", 0.8)["seconds"]` is how long
    training took to grow a layer-1 head with induction score 0.8.
    """
    check_number(threshold, "threshold")
    for record in history:
        if any(value >= threshold for key, value in record.items() if key.startswith(key_prefix)):
            return record
    return None


@torch.no_grad()
def induction_circuit_summary(
    model: TransformerBridge,
    labelled: LabelledTokens,
    bos: int | None,
    seq_len: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """The numbers that say a 2-layer model holds a previous-token -> induction circuit.

    Scores come from repeated random tokens; losses and ablations from `labelled` (tokens
    with `repeated` and `first` masks). The circuit is the layer-0 heads with
    previous-token score >= `threshold` and the layer-1 heads with induction score >=
    `threshold`; each group is zero-ablated together, and every head alone.
    """
    _check_labelled(labelled)
    check_number(threshold, "threshold")
    if model.cfg.n_layers != 2:
        raise ValueError(f"induction_circuit_summary reads a 2-layer model; this one has {model.cfg.n_layers} layers.")
    seq_len = _default_seq_len(model, bos) if seq_len is None else seq_len
    _, patterns = repeated_tokens_patterns(model, seq_len, bos=bos)
    previous = previous_token_scores(patterns)
    induction = induction_scores(patterns, seq_len)
    previous_token_heads = [head for head in heads_above(previous, threshold) if head[0] == 0]
    induction_heads = [head for head in heads_above(induction, threshold) if head[0] == 1]
    circuit = previous_token_heads + induction_heads

    tokens = labelled.tokens.to(model_device(model))
    logits = model(tokens)
    single_head_costs = {
        head_label(*head): ablation_cost(model, tokens, labelled.repeated, [head]) for head, _ in _enumerate_heads(previous)
    }
    outside = [cost for label, cost in single_head_costs.items() if label not in {head_label(*head) for head in circuit}]
    composition = k_composition_scores(model)
    strongest = divmod(int(composition.argmax()), composition.shape[1])
    return {
        "seq_len": seq_len,
        "threshold": threshold,
        "previous_token_scores": previous.tolist(),
        "duplicate_token_scores": duplicate_token_scores(patterns, seq_len).tolist(),
        "induction_scores": induction.tolist(),
        "previous_token_heads": [list(head) for head in previous_token_heads],
        "induction_heads": [list(head) for head in induction_heads],
        "loss_first": loss_on_tokens(logits, tokens, labelled.first).item(),
        "loss_repeated": loss_on_tokens(logits, tokens, labelled.repeated).item(),
        "ablate_previous_token_heads": ablation_cost(model, tokens, labelled.repeated, previous_token_heads),
        "ablate_induction_heads": ablation_cost(model, tokens, labelled.repeated, induction_heads),
        "ablate_single_head": single_head_costs,
        "ablate_worst_head_outside_circuit": max(outside, default=0.0),
        "k_composition_scores": composition.tolist(),
        "strongest_k_composition": [[0, strongest[0]], [1, strongest[1]]],
    }


# --- the phase change, from a training run of your own -------------------------------------------


def train_monitored(
    task: Task,
    model_config: ModelConfig,
    training: TrainConfig,
    labelled: LabelledTokens,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> tuple[TransformerBridge, list[dict[str, float]]]:
    """Train a fresh model of shape `model_config` on `task`, watched by `training_monitor` (taught in chapter 03, exercise 13).

    The monitor measures the loss on `labelled`'s first and repeated tokens and every head's
    induction and previous-token scores on repeated random tokens of length
    `(task.n_ctx - 1) // 2` after `task.bos`: the longest repeat that fits. Returns the
    trained model and the history of `mechlearn.train.train`, one record every
    `training.eval_every` steps.
    """
    _check_labelled(labelled)
    if not isinstance(model_config, ModelConfig):
        raise TypeError(f"model_config must be a mechlearn.models.ModelConfig, got {describe(model_config)}.")
    model = make_model(model_config, device=device)
    monitor = training_monitor(labelled, seq_len=(task.n_ctx - 1) // 2, bos=task.bos)
    return model, train(model, task, training, eval_fn=monitor, progress=progress)


def phase_change_step(history: list[dict[str, float]], key: str = "loss_repeated", min_drop: float = 1.0) -> int | None:
    """The step at which `key` has first fallen halfway from its start to its lowest value (taught in chapter 03, exercise 14).

    The start is the first record's value. A run in which `key` never falls by at least
    `min_drop` below its start has no phase change: the answer is then None. Halfway is
    where a sharp drop is steepest, and unlike the steepest single step between two
    records, it does not move with the noise of one evaluation.
    """
    if not isinstance(history, list) or not history or not all(isinstance(record, dict) for record in history):
        raise ValueError(f"history must be a non-empty list of records (dicts) from mechlearn.train.train, got {describe(history)}.")
    missing = [i for i, record in enumerate(history) if key not in record or "step" not in record]
    if missing:
        raise KeyError(f"history record {missing[0]} has no 'step' or no {key!r}; train with eval_fn=training_monitor(...).")
    check_number(min_drop, "min_drop", minimum=0.0)
    values = [record[key] for record in history]
    if not all(math.isfinite(value) for value in values):
        raise ValueError(f"history holds a NaN or infinite {key!r}, so no step can be said to be its phase change.")
    start, lowest = values[0], min(values)
    if start - lowest < min_drop:
        return None
    halfway = (start + lowest) / 2
    return next(int(record["step"]) for record, value in zip(history, values) if value <= halfway)


# --- reading the weights: OV copying, positional QK ------------------------------------------------


def _check_head(model: TransformerBridge, layer: int, head: int) -> None:
    if not isinstance(model, TransformerBridge):
        raise TypeError(f"model must be a TransformerBridge, got {describe(model)}.")
    if not (is_int(layer) and 0 <= layer < model.cfg.n_layers and is_int(head) and 0 <= head < model.cfg.n_heads):
        raise ValueError(
            f"(layer, head) must be in [0, {model.cfg.n_layers}) x [0, {model.cfg.n_heads}), got ({layer!r}, {head!r})."
        )


@torch.no_grad()
def copying_score(model: TransformerBridge, layer: int, head: int) -> float:
    """How much a head's full OV circuit copies: `sum(Re λ) / sum(|λ|)` over the eigenvalues λ of `W_E W_OV W_U` (chapter 03, exercise 8).

    Elhage et al. (2021), "A Mathematical Framework for Transformer Circuits", section
    "Copying / Primitive Instruction-Following": a head that copies maps each token to its
    own logit, so `W_E W_OV W_U` has positive eigenvalues and the score is near 1; a head
    that suppresses what it attends to scores near -1, and a random head near 0. The
    eigenvalues come from the low-rank factors (`FactoredMatrix.eigenvalues`), so no
    `d_vocab x d_vocab` matrix is diagonalised. A head whose circuit is zero scores 0.
    LayerNorm is left out, as in the paper.
    """
    _check_head(model, layer, head)
    eigenvalues = (model.W_E @ model.OV[layer, head] @ model.W_U).eigenvalues
    total = eigenvalues.abs().sum()
    return 0.0 if total == 0 else (eigenvalues.real.sum() / total).item()


@torch.no_grad()
def positional_qk(model: TransformerBridge, layer: int, head: int) -> Float[Tensor, "query_pos key_pos"]:
    """The positional part of a head's QK circuit, `W_pos W_QK W_pos^T`, with future keys at -inf (chapter 03, exercise 9).

    Entry `[q, k]` is the attention score a query at position `q` gives a key at position
    `k` from the position embeddings alone (biases, tokens and LayerNorm left out). The
    causal mask hides keys after the query, so those entries are -inf.
    """
    _check_head(model, layer, head)
    scores = (model.W_pos @ model.QK[layer, head] @ model.W_pos.T).AB
    future = torch.ones_like(scores, dtype=torch.bool).triu(diagonal=1)
    return scores.masked_fill(future, -math.inf)


def offset_fraction(scores: Float[Tensor, "query_pos key_pos"], offset: int) -> float:
    """The fraction of queries `q >= offset` whose highest-scoring key is `q - offset` (chapter 03, exercise 10).

    A previous-token head's `positional_qk` scores 1 at `offset=1`; a head that ignores
    position picks its best key at random and scores near `1 / q` on average.
    """
    check_tensor(scores, "scores", 2, floating=True)
    if scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be square [query_pos key_pos], got shape {tuple(scores.shape)}.")
    if not (is_int(offset) and 0 <= offset < scores.shape[0]):
        raise ValueError(f"offset must be an int in [0, {scores.shape[0]}), got {offset!r}.")
    if scores.isnan().any():
        raise ValueError("scores holds NaN, so no key can be said to score highest.")
    queries = torch.arange(offset, scores.shape[0], device=scores.device)
    return (scores[queries].argmax(dim=-1) == queries - offset).float().mean().item()


# --- decomposed attention scores ------------------------------------------------------------------


@torch.no_grad()
def attention_input_components(
    model: TransformerBridge, cache: ActivationCache, layer: int
) -> tuple[list[str], Float[Tensor, "component batch pos d_model"]]:
    """What a head in `layer` reads, split by source: embedding, position, each earlier head, and constants.

    The parts of the residual stream before `layer` are the token embedding, the position
    embedding, each earlier head's output `z_h W_O[h]`, and the output biases `b_O`. When the
    model has LayerNorm, each part is centred and divided by the scale the cache holds for
    that position (`ln1.hook_scale`), then multiplied by the LayerNorm weight, so the parts
    still add up to exactly what the queries and keys read; the LayerNorm bias joins the
    constants. Labels: "embed", "pos", "L0H0", ..., "bias". Taught in chapter 03, section 10.
    """
    if not isinstance(cache, ActivationCache):
        raise TypeError(f"cache must be the ActivationCache of model.run_with_cache, got {describe(cache)}.")
    _check_head(model, layer, 0)
    if not model.cfg.attn_only:
        raise ValueError("attention_input_components splits attention-only models; this one has MLPs, which mix the parts.")
    normalization = model.cfg.normalization_type
    if normalization not in (None, "LN", "LNPre"):
        raise ValueError(f"attention_input_components handles LayerNorm (LN, LNPre) or none, not {normalization!r}.")
    labels = ["embed", "pos"]
    parts = [cache["hook_embed"], cache["hook_pos_embed"].expand_as(cache["hook_embed"])]
    constant = torch.zeros_like(parts[0])
    for earlier in range(layer):
        z = cache[f"blocks.{earlier}.attn.hook_z"]
        heads = einops.einsum(z, model.W_O[earlier], "batch pos head d_head, head d_head d_model -> head batch pos d_model")
        labels += [head_label(earlier, head) for head in range(model.cfg.n_heads)]
        parts += list(heads)
        constant = constant + model.b_O[earlier]
    parts.append(constant)
    stack = torch.stack(parts)
    if normalization is not None:
        block = model.blocks[layer]
        scale = cache[f"blocks.{layer}.ln1.hook_scale"]  # [batch pos 1]
        stack = (stack - stack.mean(dim=-1, keepdim=True)) / scale
        if normalization == "LN":
            stack = stack * block.ln1.weight
            stack[-1] = stack[-1] + block.ln1.bias
    return [*labels, "bias"], stack


@torch.no_grad()
def attention_score_terms(
    model: TransformerBridge, components: Float[Tensor, "component batch pos d_model"], layer: int, head: int
) -> Float[Tensor, "query_component key_component batch query_pos key_pos"]:
    """A head's attention scores split into one term per (query part, key part) pair (chapter 03, exercise 11).

    Each part is sent through `W_Q` at the query and `W_K` at the key; the biases `b_Q` and
    `b_K` join the last part (the constants of `attention_input_components`). Term `[i, j]`
    is `(part_i W_Q)(part_j W_K)^T / sqrt(d_head)` at every query and key position, so the
    terms add up to the head's attention scores before the causal mask.
    """
    _check_head(model, layer, head)
    check_tensor(components, "components", 4, floating=True)
    if components.shape[-1] != model.cfg.d_model:
        raise ValueError(f"components must end in d_model={model.cfg.d_model}, got shape {tuple(components.shape)}.")
    queries = einops.einsum(components, model.W_Q[layer, head], "part batch pos d_model, d_model d_head -> part batch pos d_head")
    keys = einops.einsum(components, model.W_K[layer, head], "part batch pos d_model, d_model d_head -> part batch pos d_head")
    queries[-1] = queries[-1] + model.b_Q[layer, head]
    keys[-1] = keys[-1] + model.b_K[layer, head]
    terms = einops.einsum(queries, keys, "q_part batch q_pos d_head, k_part batch k_pos d_head -> q_part k_part batch q_pos k_pos")
    return terms / math.sqrt(model.cfg.d_head)


def induction_key_contrast(
    terms: Float[Tensor, "query_component key_component batch query_pos key_pos"], seq_len: int
) -> Float[Tensor, "query_component key_component"]:
    """How much each term raises the induction key above the other keys (chapter 03, exercise 12).

    On repeated tokens (the repeat is the last `2 * seq_len` positions), for each
    second-half query `q`: the term at the induction key `q - seq_len + 1`, minus the term's
    mean over the other keys the query can see (`k <= q`); averaged over queries and batch.
    The contrasts add up to the full score's, since each is linear in the term.
    """
    check_tensor(terms, "terms", 5, floating=True)
    n_pos = terms.shape[-1]
    if terms.shape[-2] != n_pos:
        raise ValueError(f"terms must be square in query_pos and key_pos, got shape {tuple(terms.shape)}.")
    if not (is_int(seq_len) and 1 <= seq_len and 2 * seq_len <= n_pos):
        raise ValueError(f"seq_len must be an int with 2 * seq_len <= {n_pos} positions, got {seq_len!r}.")
    queries = torch.arange(n_pos - seq_len, n_pos, device=terms.device)
    rows = terms[..., queries, :]  # [q_part k_part batch query key]
    at_induction = rows.gather(-1, (queries - seq_len + 1)[:, None].expand(*rows.shape[:-1], 1))[..., 0]
    visible = torch.arange(n_pos, device=terms.device)[None, :] <= queries[:, None]  # [query key]
    others = (rows * visible).sum(dim=-1) - at_induction
    contrast = at_induction - others / (visible.sum(dim=-1) - 1)
    return einops.reduce(contrast, "q_part k_part batch query -> q_part k_part", "mean")


# --- a real model (optional) -------------------------------------------------------------------------


def find_pretrained_induction_heads(
    name: str = "gpt2",
    seq_len: int = 50,
    batch: int = 8,
    threshold: float = DEFAULT_THRESHOLD,
    device: str | torch.device | None = None,
) -> list[Head]:
    """The induction heads of a pretrained model, e.g. GPT-2 (the optional section of chapter 03).

    Loads `name` with `mechlearn.models.load_pretrained`, which raises
    `mechlearn.models.PretrainedUnavailable` when there is no network and no cached copy,
    and runs `find_induction_heads` on repeated random tokens after the tokenizer's BOS.
    The repeat is kept short: the default for a model with n_ctx=1024 would be 511 tokens
    twice over, slow on a CPU for no better answer.
    """
    model = load_pretrained(name, device=device)
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    return find_induction_heads(model, threshold=threshold, seq_len=seq_len, batch=batch, bos=bos)
