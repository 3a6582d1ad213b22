"""Checks for chapter 01, transformers from scratch.

Each check runs the learner's code next to a TransformerLens native model with the
same weights and compares the two to 1e-5. The reference model has random weights,
biases and LayerNorm parameters, so forgetting a bias or a LayerNorm scale shows.
Where that one input cannot tell a near miss from the answer (a hard-coded eps, a
one-hot sized by the batch, an attention-only block), a second input is compared
with `mechlearn.transformer`; sampling is checked row by row and for its generator, and
generation with a KV cache token for token against greedy generation without one.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.model_bridge import TransformerBridge

from mechlearn import sampling, transformer
from mechlearn.checks.core import CheckFailed, call_learner, call_learner_read_only, check, expect, expect_tensor
from mechlearn.models import ModelConfig, make_model, model_device
from mechlearn.tasks import SortingTask
from mechlearn.train import next_token_accuracy, next_token_loss
from mechlearn.transformer import load_block_weights_from, load_weights_from

# d_head * n_heads != d_model, so an einsum that mixes up the two axes fails loudly.
CONFIG = ModelConfig(d_vocab=13, n_ctx=16, d_model=24, n_layers=2, n_heads=3, d_head=5, d_mlp=40, seed=1)
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


@functools.lru_cache(maxsize=1)
def reference() -> tuple[TransformerBridge, torch.Tensor, ActivationCache]:
    """The TransformerLens model the learner's code is compared with, its input and cache."""
    model = make_model(CONFIG, device="cpu")
    generator = torch.Generator().manual_seed(CONFIG.seed)
    with torch.no_grad():
        # b_U is a buffer, not a parameter, in TransformerLens's native model: perturb it too.
        for weight in [*model.parameters(), model.unembed.bias]:
            weight.add_(0.1 * torch.randn(weight.shape, generator=generator))
    tokens = torch.randint(0, CONFIG.d_vocab, (2, 9), generator=generator)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return model, tokens, cache


def _weights(module: torch.nn.Module, *names: str) -> list[torch.Tensor]:
    """Copies of the named weights, so a learner's in-place edit cannot spoil the reference."""
    return [getattr(module, name).detach().clone() for name in names]


def _call_on(case: str, hint: str, fn: object, *args: object, **kwargs: object) -> object:
    """`call_learner`, but a crash names the `case` the check was trying and gives the check's own hint."""
    try:
        return call_learner(fn, *args, **kwargs)
    except CheckFailed as failure:
        raise CheckFailed(f"{case}: {failure.problem}", hint) from None


@check
def check_layer_norm(layer_norm) -> None:
    """`layer_norm(x, w, b)` equals the first LayerNorm of the reference model, and follows `eps` where it matters."""
    model, _, cache = reference()
    x, (w, b) = cache["blocks.0.hook_resid_pre"], _weights(model.blocks[0].ln1, "w", "b")
    hint = (
        "subtract the mean over d_model, divide by sqrt(variance + eps) with the biased variance "
        "(the mean of the squares), then multiply by w and add b."
    )
    actual = call_learner_read_only(layer_norm, x, w, b)
    expect_tensor(actual, cache["blocks.0.ln1.hook_out"], what="the output of layer_norm", hint=hint, **TOLERANCE)
    # The rows' variance (about 1e-3 here) is near eps, so eps dropped, hard-coded or outside the root shows.
    small, eps = 0.1 * x, 1e-3
    expect_tensor(
        call_learner(layer_norm, small.clone(), w, b, eps=eps),
        transformer.layer_norm(small, w, b, eps=eps),
        what=f"the output of layer_norm(x, w, b, eps={eps}) on rows whose variance is close to eps",
        hint=f"use the `eps` argument, not a constant: {hint}",
        **TOLERANCE,
    )


@check
def check_embed(embed) -> None:
    """`embed(tokens, W_E)` equals `hook_embed`, also for tokens that leave out the last ids of the vocabulary."""
    model, tokens, cache = reference()
    (W_E,) = _weights(model, "W_E")
    hint = "index the rows of W_E with the tokens."
    expect_tensor(call_learner(embed, tokens.clone(), W_E), cache["hook_embed"], what="the output of embed", hint=hint, **TOLERANCE)
    # Without the highest token id, a one-hot encoding sized by the tokens instead of W_E comes out too narrow.
    few = torch.tensor([[3, 0, 3], [1, 1, 7]])
    case, hint = f"for the tokens {few.tolist()}", f"{hint} Every row of W_E is a possible token, whether or not it occurs in the batch."
    actual = _call_on(case, hint, embed, few.clone(), W_E)
    expect_tensor(actual, transformer.embed(few, W_E), what=f"the output of embed {case}", hint=hint, **TOLERANCE)


@check
def check_pos_embed(pos_embed) -> None:
    """`pos_embed(tokens, W_pos)` equals `hook_pos_embed`, one copy per sequence in the batch."""
    model, tokens, cache = reference()
    actual = call_learner(pos_embed, tokens.clone(), *_weights(model, "W_pos"))
    expect_tensor(
        actual,
        cache["hook_pos_embed"],
        what="the output of pos_embed",
        hint="take the first seq_len rows of W_pos and repeat them over the batch (einops.repeat).",
        **TOLERANCE,
    )


@check
def check_attention_scores(attention_scores) -> None:
    """Scores equal the dot products of TransformerLens's queries and keys over sqrt(d_head)."""
    model, _, cache = reference()
    q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]
    expected = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(CONFIG.d_head)
    weights = _weights(model.blocks[0].attn, "W_Q", "b_Q", "W_K", "b_K")
    actual = call_learner(attention_scores, cache["blocks.0.ln1.hook_out"].clone(), *weights)
    expect_tensor(
        actual,
        expected,
        what="the attention scores",
        hint="q and k have shape (batch, pos, head, d_head); contract over d_head to get "
        "(batch, head, query_pos, key_pos), add the biases, and divide by sqrt(d_head), not sqrt(d_model).",
        **TOLERANCE,
    )


@check
def check_apply_causal_mask(apply_causal_mask) -> None:
    """Keys after the query get -inf; softmax of the result is TransformerLens's pattern."""
    _, _, cache = reference()
    scores = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    future = torch.ones(5, 5, dtype=torch.bool).triu(diagonal=1)
    expected = scores.masked_fill(future, float("-inf"))
    hint = "mask where key_pos > query_pos (torch.triu(..., diagonal=1)); a query may attend to itself."
    expect_tensor(call_learner(apply_causal_mask, scores.clone()), expected, what="the masked scores", hint=hint, **TOLERANCE)
    # A longer input too: the mask must come from the scores' shape, not a constant.
    q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]
    real_scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(CONFIG.d_head)
    pattern = call_learner(apply_causal_mask, real_scores.clone()).softmax(dim=-1)
    expect_tensor(pattern, cache["blocks.0.attn.hook_pattern"], what="softmax of your masked scores", hint=hint, **TOLERANCE)


@check
def check_attention(attention) -> None:
    """The whole attention layer equals `hook_attn_out` of layer 0."""
    model, _, cache = reference()
    weights = _weights(model.blocks[0].attn, "W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V", "W_O", "b_O")
    actual = call_learner(attention, cache["blocks.0.ln1.hook_out"].clone(), *weights)
    expect_tensor(
        actual,
        cache["blocks.0.hook_attn_out"],
        what="the output of attention",
        hint="pattern = softmax over key_pos of the masked scores; z = pattern-weighted sum of v; "
        "the output sums each head's z @ W_O over heads, plus b_O.",
        **TOLERANCE,
    )


@check
def check_mlp(mlp) -> None:
    """The MLP equals `hook_mlp_out` of layer 0."""
    model, _, cache = reference()
    weights = _weights(model.blocks[0].mlp, "W_in", "b_in", "W_out", "b_out")
    actual = call_learner(mlp, cache["blocks.0.ln2.hook_out"].clone(), *weights)
    expect_tensor(
        actual,
        cache["blocks.0.hook_mlp_out"],
        what="the output of mlp",
        hint="x @ W_in + b_in, then GELU (torch.nn.functional.gelu, the exact one), then @ W_out + b_out.",
        **TOLERANCE,
    )


@check
def check_unembed(unembed) -> None:
    """Unembedding the final LayerNorm's output gives the model's logits."""
    model, tokens, cache = reference()
    actual = call_learner(unembed, cache["ln_final.hook_out"].clone(), *_weights(model, "W_U", "b_U"))
    expect_tensor(actual, model(tokens).detach(), what="the logits from unembed", hint="x @ W_U + b_U.", **TOLERANCE)


@check
def check_transformer_block(TransformerBlock) -> None:
    """A block with layer 1's weights maps `resid_pre` to `resid_post` as TransformerLens does; attention-only, to `resid_mid`."""
    model, _, cache = reference()
    resid_pre = cache["blocks.1.hook_resid_pre"]
    block = load_block_weights_from(call_learner(TransformerBlock, CONFIG), model.blocks[1])
    expect_tensor(
        call_learner(block, resid_pre.clone()),
        cache["blocks.1.hook_resid_post"],
        what="the output of your TransformerBlock",
        hint="resid_mid = resid_pre + attention(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid)).",
        **TOLERANCE,
    )
    # Chapter 03's models are attention-only: such a block has no MLP weights at all.
    case, hint = "with an attention-only config (d_mlp=None)", "with `config.attn_only` the block has no MLP: look at `self.has_mlp`."
    block = load_block_weights_from(_call_on(case, hint, TransformerBlock, dataclasses.replace(CONFIG, d_mlp=None)), model.blocks[1])
    actual = _call_on(case, hint, block, resid_pre.clone())
    expect_tensor(actual, cache["blocks.1.hook_resid_mid"], what=f"the output of your TransformerBlock {case}", hint=hint, **TOLERANCE)


@check
def check_transformer(Transformer) -> None:
    """The whole model, loaded with the reference weights, gives TransformerLens's logits."""
    model, tokens, _ = reference()
    yours = load_weights_from(call_learner(Transformer, CONFIG), model)
    actual = call_learner(yours, tokens.clone())
    expect_tensor(
        actual,
        model(tokens).detach(),
        what="the logits of your Transformer",
        hint="embed + pos_embed, every block in order, the final LayerNorm, then unembed.",
        **TOLERANCE,
    )


@check
def check_train_step(train_step) -> None:
    """Two calls on a small sorter move its weights as two SGD steps on the masked next-token loss do, and return that loss."""
    task = SortingTask()
    tokens = task.sample(16, torch.Generator().manual_seed(0))
    with torch.random.fork_rng():  # the notebook's own random state stays as it was
        torch.manual_seed(0)
        config = ModelConfig(d_vocab=task.d_vocab, n_ctx=task.n_ctx, d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=32)
        yours, expected = transformer.Transformer(config), transformer.Transformer(config)
    expected.load_state_dict(yours.state_dict())
    your_optimizer = torch.optim.SGD(yours.parameters(), lr=0.5)
    expected_optimizer = torch.optim.SGD(expected.parameters(), lr=0.5)
    hint = (
        "loss = the mean cross-entropy of predicting tokens[:, 1:] from logits[:, :-1], over the predictions "
        "target_mask marks; then optimizer.zero_grad(), loss.backward(), optimizer.step(), and return loss.item()."
    )
    for step in (1, 2):  # a second step shows gradients left over from the first
        loss = call_learner(train_step, yours, your_optimizer, tokens.clone(), task.target_mask.clone())
        expected_loss = next_token_loss(expected(tokens), tokens, task.target_mask)
        expected_optimizer.zero_grad()
        expected_loss.backward()
        expected_optimizer.step()
        expect(isinstance(loss, float), f"train_step returned {type(loss).__name__}, expected a float", hint="return loss.item().")
        expect(
            abs(loss - expected_loss.item()) < 1e-4,
            f"at step {step} train_step returned the loss {loss:.4f}, but the next-token loss on the sorted half is {expected_loss.item():.4f}",
            hint,
        )
        for name, parameter in yours.named_parameters():
            expect_tensor(
                parameter.detach(),
                expected.get_parameter(name).detach(),
                what=f"the weight {name} after step {step}",
                hint=f"{hint} Without zero_grad the gradients of every step add up; without step nothing changes.",
                atol=1e-5,
                rtol=1e-4,
            )


# Two rows with different distributions, so that every row must be sampled from its own.
SAMPLING_ROWS = torch.tensor([[2.0, 1.0, 0.0, -1.0], [-1.0, 0.5, 3.0, 0.0]])
# Three rows whose most likely tokens sit in different places (the last all negative): top-k and top-p
# must keep each row's own tokens and return their ids in the vocabulary, not positions in a sorted row.
FILTER_ROWS = torch.tensor(
    [[-1.0, 0.5, 3.0, 0.0, 2.0, -2.0], [1.0, -0.5, -3.0, 2.5, -1.5, 1.5], [-4.0, -2.0, -3.5, -1.0, -5.0, -2.5]]
)
TIED_ROW = torch.tensor([[0.0, 2.0, -1.0, 2.0, 1.0, -3.0]])
N_DRAWS = 20_000  # per row: a standard error under 0.004 against the 0.02 allowed
TOP_K_HINT = (
    "keep each row's k largest logits (`logits.topk(k, dim=-1)`), set every other logit to -inf, then sample "
    "from softmax(logits / T) as `sample_next_token` does; return vocabulary ids, not positions in the sorted row."
)
TOP_P_HINT = (
    "divide by T and softmax first, then sort each row's probabilities in descending order and keep every token "
    "whose cumulative probability *before* it is below p, so the token that crosses p stays; set the other logits "
    "to -inf and sample from softmax(logits / T) of what is left, which renormalises it; return vocabulary ids, "
    "not positions in the sorted row."
)


@check
def check_sample_next_token(sample_next_token) -> None:
    """Greedy at temperature 0; at temperature T each row's draws follow softmax(row / T), as the generator decides."""
    _expect_greedy_at_zero(sample_next_token, hint="at temperature 0 return the argmax.")
    _expect_rows_follow_softmax(sample_next_token, temperature=2.0, generator=torch.Generator().manual_seed(0))
    _expect_generator_decides(sample_next_token, 1.0)


@check
def check_sample_top_k(sample_top_k) -> None:
    """Each row's draws come from its k largest logits only, at softmax(logits / T) renormalised over them."""
    _expect_greedy_at_zero(sample_top_k, 3, hint=f"at temperature 0 return the argmax. {TOP_K_HINT}")
    generator = torch.Generator().manual_seed(0)
    for rows, k, temperature in [(FILTER_ROWS, 3, 1.5), (FILTER_ROWS, 1, 1.0), (TIED_ROW, 2, 1.0)]:
        expected = torch.stack([_top_k_probabilities(row, k, temperature) for row in rows])
        case = f"with k={k} at temperature {temperature}"
        _expect_rows_follow(sample_top_k, rows, k, temperature, generator=generator, expected=expected, case=case, hint=TOP_K_HINT)
    _expect_generator_decides(sample_top_k, 3, 1.0)


@check
def check_sample_top_p(sample_top_p) -> None:
    """Each row's draws come from its nucleus at temperature T, at softmax(logits / T) renormalised over it."""
    _expect_greedy_at_zero(sample_top_p, 0.85, hint=f"at temperature 0 return the argmax. {TOP_P_HINT}")
    generator = torch.Generator().manual_seed(0)
    # At T=1.5 the nuclei hold 3, 3 and 4 tokens; at T=1 they would hold 2, 3 and 3.
    for p, temperature in [(0.85, 1.5), (0.3, 1.0)]:
        expected = torch.stack([_nucleus_probabilities(row, p, temperature) for row in FILTER_ROWS])
        case = f"with p={p} at temperature {temperature}"
        _expect_rows_follow(sample_top_p, FILTER_ROWS, p, temperature, generator=generator, expected=expected, case=case, hint=TOP_P_HINT)
    _expect_generator_decides(sample_top_p, 0.85, 1.0)


def _top_k_probabilities(row: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """softmax(row / T) over the k most likely tokens, 0 elsewhere."""
    probs = (row.double() / temperature).softmax(dim=-1)
    kept = torch.zeros_like(probs)
    top = probs.topk(k).indices
    kept[top] = probs[top]
    return kept / kept.sum()


def _nucleus_probabilities(row: torch.Tensor, p: float, temperature: float) -> torch.Tensor:
    """softmax(row / T) over the most likely tokens, taken one by one until their mass reaches p; 0 elsewhere."""
    probs = (row.double() / temperature).softmax(dim=-1)
    kept = torch.zeros_like(probs)
    for token in probs.argsort(descending=True):
        kept[token] = probs[token]
        if kept.sum() >= p:
            break
    return kept / kept.sum()


def _expect_greedy_at_zero(sample, *cutoff: object, hint: str) -> None:
    """At temperature 0 every row gives its argmax."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, generator=generator)
    greedy = call_learner_read_only(sample, logits, *cutoff, 0.0, generator)
    expect_tensor(greedy, logits.argmax(dim=-1), what="the greedy samples (temperature 0)", hint=hint)


def _row_frequencies(sample, rows: torch.Tensor, *args: object, generator: torch.Generator, case: str, hint: str) -> list[torch.Tensor]:
    """How often each token came up in N_DRAWS draws from each row, the rows alternating in one batch."""
    n_rows, d_vocab = rows.shape
    logits = rows.repeat(N_DRAWS, 1)
    try:
        draws = call_learner_read_only(sample, logits, *args, generator)
    except CheckFailed as failure:
        crashed = " raised " in failure.problem
        raise CheckFailed(f"{case}: {failure.problem}", hint if crashed else failure.hint) from None
    expected_shape = torch.zeros(len(logits), dtype=torch.long)
    expect_tensor(draws, expected_shape, what="the samples", atol=math.inf, hint="return one token id per row.")
    expect(
        bool(((draws >= 0) & (draws < d_vocab)).all()),
        f"{case}: some samples are not token ids in [0, {d_vocab})",
        hint="return one token id per row, an index into the vocabulary.",
    )
    return [torch.bincount(column, minlength=d_vocab).double() / N_DRAWS for column in draws.reshape(N_DRAWS, n_rows).T]


def _expect_rows_follow_softmax(sample_next_token, temperature: float, generator: torch.Generator) -> None:
    """Many draws from each row of SAMPLING_ROWS come up with the frequencies softmax(row / T) gives."""
    hint = (
        "divide the logits by the temperature before the softmax, then draw with torch.multinomial; "
        "each row has its own distribution over the vocabulary."
    )
    case = f"at temperature {temperature}"
    rows_frequencies = _row_frequencies(sample_next_token, SAMPLING_ROWS, temperature, generator=generator, case=case, hint=hint)
    for row, frequencies in zip(SAMPLING_ROWS, rows_frequencies):
        expected = (row / temperature).double().softmax(dim=-1)
        expect(
            (frequencies - expected).abs().max().item() < 0.02,
            f"{case} the rows with logits {row.tolist()} drew tokens with frequencies "
            f"{frequencies.numpy().round(3).tolist()}, but softmax(logits / T) is {expected.numpy().round(3).tolist()}.",
            hint,
        )


def _expect_rows_follow(sample, rows: torch.Tensor, *args: object, generator: torch.Generator, expected: torch.Tensor, case: str, hint: str) -> None:
    """Each row draws exactly the tokens `expected` gives a probability, at those probabilities (to 0.02)."""
    for row, frequencies, probs in zip(rows, _row_frequencies(sample, rows, *args, generator=generator, case=case, hint=hint), expected):
        drawn, allowed = set(frequencies.nonzero()[:, 0].tolist()), set(probs.nonzero()[:, 0].tolist())
        positions = drawn != allowed and drawn <= set(range(len(allowed)))
        expect(
            drawn == allowed,
            f"{case} the row with logits {row.tolist()} drew the tokens {sorted(drawn)}, but {sorted(allowed)} should come up, and no other.",
            "those look like positions in the sorted row, not token ids: map them back to the vocabulary with the "
            "indices that `topk` or `sort` returned." if positions else hint,
        )
        expect(
            (frequencies - probs).abs().max().item() < 0.02,
            f"{case} the row with logits {row.tolist()} drew tokens with frequencies {frequencies.numpy().round(3).tolist()}, "
            f"but softmax(logits / T), renormalised over the tokens kept, is {probs.numpy().round(3).tolist()}.",
            hint,
        )


def _expect_generator_decides(sample, *args: object) -> None:
    """Generators seeded alike give the same draws, seeded differently other draws."""
    logits = SAMPLING_ROWS.repeat(500, 1)

    def draws(seed: int) -> torch.Tensor:
        return call_learner(sample, logits.clone(), *args, torch.Generator().manual_seed(seed))

    first, again, other = draws(1), draws(1), draws(2)
    expect(
        torch.equal(first, again),
        "two calls with generators seeded alike drew different tokens",
        hint="draw with the `generator` argument, not the global random state: pass it on to torch.multinomial.",
    )
    expect(
        not torch.equal(first, other),
        "generators with different seeds drew the same tokens",
        hint="draw with the `generator` passed in, not one your function makes or seeds itself.",
    )


@check
def check_trained_sorter(model, min_accuracy: float = 0.95) -> None:
    """A trained model gets the sorted half right on held-out sequences."""
    task = SortingTask()
    tokens = task.sample(500, torch.Generator().manual_seed(12_345)).to(model_device(model))
    logits = call_learner(model, tokens)
    expected_shape = torch.zeros(500, task.n_ctx, task.d_vocab, device=tokens.device)
    expect_tensor(logits, expected_shape, what="the model's logits", atol=math.inf, hint="the model maps tokens to logits.")
    accuracy = next_token_accuracy(logits.detach(), tokens, task.target_mask)
    expect(
        accuracy >= min_accuracy,
        f"the model predicts {accuracy:.1%} of the sorted digits correctly; a trained model reaches at least {min_accuracy:.0%}.",
        "train for more steps, or check that the loss went down in the plot above.",
    )
    # A model that sees later tokens copies the answer: changing the sorted half must leave the logits up to SEP alone.
    # A leak shows on any sequence, so a few keep the second forward pass cheap.
    few, prompt = slice(None, 50), slice(None, task.prompt_length)
    changed = tokens[few].clone()
    changed[:, task.prompt_length :] = (changed[:, task.prompt_length :] + 1) % task.n_digits
    expect_tensor(
        call_learner(model, changed)[:, prompt],
        logits[few, prompt].detach(),
        what="the logits up to SEP once the digits after it are changed",
        atol=1e-3,  # a leak moves logits by whole units; this leaves room for another batch size's rounding
        rtol=1e-3,
        hint="a position must not see the tokens after it: check the causal mask in your attention.",
    )


KV_CACHE_HINT = (
    "run the prompt once and keep every block's keys and values, computed from ln1 of that block's own input; then run "
    "each new token alone: its query attends to all cached keys plus its own key, with no causal mask (nothing comes "
    "after it), and its key and value are appended to the cache before the next token."
)
KV_POSITION_HINT = (
    "the new token sits at the absolute position prompt_length + i, not at 0: add W_pos[that position], "
    "not pos_embed of a 1-token sequence (which is always W_pos[0])."
)


def _kv_model(seed: int, attention_on: bool = True) -> transformer.Transformer:
    """A from-scratch model with random weights, biases and LayerNorm parameters; attention's output
    fixed at b_O when `attention_on` is False, so only the last token and its position decide the logits."""
    with torch.random.fork_rng():  # the notebook's own random state stays as it was
        torch.manual_seed(seed)
        model = transformer.Transformer(dataclasses.replace(CONFIG, seed=seed))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.3 * torch.randn(parameter.shape))
            if not attention_on:
                model.W_pos.mul_(5)  # so that the position moves the greedy token
                for block in model.blocks:
                    block.W_O.zero_()
    return model.eval()


def _expect_same_generation(generate_with_kv_cache, model, prompt: torch.Tensor, n_new: int, case: str, hint: str) -> None:
    """The learner's tokens equal uncached greedy generation's, with a hint for the shape mistakes."""
    expected = sampling.generate(model, prompt, n_new)
    whole_runs = []
    counter = model.register_forward_pre_hook(lambda *_: whole_runs.append(1))
    try:
        actual = call_learner_read_only(generate_with_kv_cache, model, prompt, n_new)
    except CheckFailed as failure:
        crashed = " raised " in failure.problem
        raise CheckFailed(f"{case}: {failure.problem}", hint if crashed else failure.hint) from None
    finally:
        counter.remove()
    expect(
        len(whole_runs) <= 1,
        f"{case}: your function called the whole model {len(whole_runs)} times, which is generation without a cache",
        "model(tokens) recomputes every position's keys and values; run the model's pieces yourself "
        "(embed, the blocks' LayerNorms, attention and MLPs, unembed) so that each position runs once.",
    )
    if isinstance(actual, torch.Tensor) and tuple(actual.shape) == (len(prompt), n_new):
        raise CheckFailed(
            f"{case}: your function returned only the {n_new} new tokens, shape {tuple(actual.shape)}",
            "return the prompt followed by the new tokens, shape (batch, prompt_pos + max_new_tokens), as generate does.",
        )
    expect_tensor(actual, expected, what=f"the tokens {case}", atol=math.inf, hint=hint)
    expect(
        torch.equal(actual[:, : prompt.shape[1]], expected[:, : prompt.shape[1]]),
        f"{case}: the output does not start with the prompt",
        "return the prompt followed by the new tokens, as generate does.",
    )
    wrong = (actual != expected).nonzero()
    if len(wrong):
        row, position = wrong[0].tolist()
        raise CheckFailed(
            f"{case}: new token {position - prompt.shape[1] + 1} of row {row} is {actual[row, position].item()}, but greedy "
            f"generation without a cache gives {expected[row, position].item()} (rows: yours {actual[row].tolist()}, "
            f"expected {expected[row].tolist()})",
            hint,
        )


@check
def check_generate_with_kv_cache(generate_with_kv_cache) -> None:
    """Greedy generation with a KV cache gives the tokens of greedy generation without one, on several models and prompts."""
    prompt = torch.randint(0, CONFIG.d_vocab, (4, 3), generator=torch.Generator().manual_seed(0))
    # With attention's output fixed, only a new token's own embedding and position decide what comes next.
    case = "on a model whose attention outputs only b_O, so the logits depend on the last token and its position alone"
    _expect_same_generation(generate_with_kv_cache, _kv_model(1, attention_on=False), prompt, 8, case, KV_POSITION_HINT)
    generator = torch.Generator().manual_seed(1)
    for seed in (1, 2):
        for prompt_length, n_new in [(1, 7), (4, 9), (9, 7)]:
            prompt = torch.randint(0, CONFIG.d_vocab, (3, prompt_length), generator=generator)
            case = f"for a batch of {len(prompt)} prompts of length {prompt_length} and {n_new} new tokens, on the model with seed {seed}"
            _expect_same_generation(generate_with_kv_cache, _kv_model(seed), prompt, n_new, case, KV_CACHE_HINT)
