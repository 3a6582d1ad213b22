"""mechlearn.sampling: top-k and top-p keep the right tokens; bad arguments are named in one sentence.

Greedy and temperature sampling are tested in test_transformer.py.
"""

import functools
import math

import pytest
import torch
from bad_inputs import raises_one_sentence

from mechlearn.models import ModelConfig, make_model
from mechlearn.sampling import continue_text, generate, generate_with_kv_cache, sample_next_token, sample_top_k, sample_top_p
from mechlearn.transformer import Transformer

CONFIG = ModelConfig(d_vocab=5, n_ctx=6, d_model=8, n_layers=1, n_heads=2, d_head=4, d_mlp=None)
LOGITS = torch.tensor([[0.0, 5.0, 1.0], [3.0, -1.0, 2.0]])
PROMPT = torch.tensor([[0, 1, 2]])


@pytest.fixture(scope="module")
def model():
    return make_model(CONFIG)


def test_minus_infinity_still_masks_a_token() -> None:
    masked = LOGITS.clone()
    masked[:, 1] = -math.inf
    assert sample_next_token(masked, 0.0).tolist() == [2, 0]
    assert (sample_next_token(masked.repeat(50, 1), 1.0, torch.Generator().manual_seed(0)) != 1).all()


# Probabilities at T=1: 0.64, 0.23, 0.09, 0.03, 0.01 (the second row is the first, shuffled).
FILTER_ROWS = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0], [0.0, 1.0, -1.0, 3.0, 2.0]])


def drawn(sample, *args: object) -> list[set[int]]:
    """The set of tokens that came up in 2,000 draws from each row of FILTER_ROWS."""
    draws = sample(FILTER_ROWS.repeat(2000, 1), *args, torch.Generator().manual_seed(0)).reshape(2000, 2)
    return [set(column.tolist()) for column in draws.T]


@pytest.mark.parametrize("k, expected", [(1, [{0}, {3}]), (2, [{0, 1}, {3, 4}]), (5, [set(range(5))] * 2)])
def test_top_k_keeps_the_k_most_likely_tokens(k: int, expected: list[set[int]]) -> None:
    assert drawn(sample_top_k, k, 1.0) == expected


def test_top_k_keeps_exactly_k_tokens_when_the_kth_is_tied() -> None:
    tied = torch.tensor([[1.0, 1.0, 1.0, -5.0]]).repeat(2000, 1)
    assert len(set(sample_top_k(tied, 2, 1.0, torch.Generator().manual_seed(0)).tolist())) == 2


@pytest.mark.parametrize(
    "p, temperature, expected",
    [(0.5, 1.0, [{0}, {3}]), (0.8, 1.0, [{0, 1}, {3, 4}]), (0.8, 1.5, [{0, 1, 2}, {3, 4, 1}]), (1.0, 1.0, [set(range(5))] * 2)],
    ids=["first-crosses", "second-crosses", "temperature-widens", "all"],
)
def test_top_p_keeps_the_nucleus(p: float, temperature: float, expected: list[set[int]]) -> None:
    assert drawn(sample_top_p, p, temperature) == expected


@pytest.mark.parametrize("sample, cutoff", [(sample_top_k, 3), (sample_top_p, 0.9)], ids=["top_k", "top_p"])
def test_filters_are_greedy_at_temperature_zero_and_leave_logits_alone(sample, cutoff) -> None:
    logits = FILTER_ROWS.clone()
    assert sample(logits, cutoff, 0.0).tolist() == [0, 3]
    assert torch.equal(logits, FILTER_ROWS)


@pytest.mark.parametrize("sample, cutoff", [(sample_top_k, 4), (sample_top_p, 1.0)], ids=["top_k", "top_p"])
def test_filters_never_draw_a_masked_token(sample, cutoff) -> None:
    masked = FILTER_ROWS.clone()
    masked[:, 0] = -math.inf
    assert 0 not in sample(masked.repeat(500, 1), cutoff, 1.0, torch.Generator().manual_seed(0)).tolist()


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "sample, cutoff, error, match",
    [
        (sample_top_k, 0, ValueError, "k must be an int from 1 to d_vocab=3, got 0"),
        (sample_top_k, 4, ValueError, "k must be an int from 1 to d_vocab=3, got 4"),
        (sample_top_k, 2.0, ValueError, "k must be an int from 1 to d_vocab=3, got 2.0"),
        (sample_top_p, 0.0, ValueError, r"p must be a number in \(0, 1\], got 0.0"),
        (sample_top_p, 1.5, ValueError, r"p must be a number in \(0, 1\], got 1.5"),
        (sample_top_p, math.nan, ValueError, r"p must be a number in \(0, 1\], got nan"),
        (sample_top_p, "0.9", ValueError, r"p must be a number in \(0, 1\], got '0.9'"),
    ],
    ids=["k-zero", "k-past-vocab", "k-float", "p-zero", "p-above-one", "p-nan", "p-str"],
)
def test_filters_name_bad_cutoffs(sample, cutoff, error, match: str) -> None:
    with raises_one_sentence(error, match):
        sample(LOGITS, cutoff)


@pytest.mark.bad_input
@pytest.mark.parametrize("sample, cutoff", [(sample_top_k, 2), (sample_top_p, 0.9)], ids=["top_k", "top_p"])
def test_filters_name_bad_sampling_arguments(sample, cutoff) -> None:
    with raises_one_sentence(ValueError, "temperature must be >= 0"):
        sample(LOGITS, cutoff, -1.0)
    with raises_one_sentence(TypeError, "generator must be None or a torch.Generator, got int"):
        sample(LOGITS, cutoff, 1.0, 0)
    with raises_one_sentence(ValueError, "logits must have 2 dims"):
        sample(LOGITS[0], cutoff)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "logits, temperature, generator, error, match",
    [
        (LOGITS[0], 1.0, None, ValueError, "logits must have 2 dims"),
        (LOGITS.long(), 1.0, None, TypeError, "logits must be a float tensor"),
        (torch.zeros(0, 3), 1.0, None, ValueError, "logits is empty"),
        (torch.tensor([[0.0, math.nan]]), 1.0, None, ValueError, r"logits contains NaN or \+inf"),
        (torch.tensor([[0.0, math.inf]]), 0.0, None, ValueError, r"logits contains NaN or \+inf"),
        (LOGITS, -1.0, None, ValueError, "temperature must be >= 0"),
        (LOGITS, math.nan, None, ValueError, "temperature must be >= 0 and finite"),
        (LOGITS, "1", None, ValueError, "temperature must be >= 0 and finite"),
        (LOGITS, 1.0, 0, TypeError, "generator must be None or a torch.Generator, got int"),
    ],
    ids=["1-dim", "int", "empty", "nan", "inf", "negative-temperature", "nan-temperature", "str-temperature", "int-generator"],
)
def test_sample_next_token_names_bad_inputs(logits, temperature, generator, error, match: str) -> None:
    with raises_one_sentence(error, match):
        sample_next_token(logits, temperature, generator)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "prompt, kwargs, error, match",
    [
        (PROMPT, {"max_new_tokens": 4}, ValueError, "max_new_tokens=4 after a prompt of 3 tokens passes the model's n_ctx=6"),
        (torch.zeros(1, 7, dtype=torch.long), {"max_new_tokens": 0}, ValueError, "prompt has 7 positions, more than the model's n_ctx=6"),
        (torch.tensor([[0, 5]]), {"max_new_tokens": 1}, ValueError, r"prompt must hold token ids in \[0, 5\)"),
        (PROMPT.float(), {"max_new_tokens": 1}, TypeError, "prompt must be an integer tensor"),
        (PROMPT[0], {"max_new_tokens": 1}, ValueError, "prompt must have 2 dims"),
        (PROMPT, {"max_new_tokens": -1}, ValueError, "max_new_tokens must be an int >= 0, got -1"),
        (PROMPT, {"max_new_tokens": 2.0}, ValueError, "max_new_tokens must be an int >= 0, got 2.0"),
        (PROMPT, {"max_new_tokens": 1, "temperature": -0.5}, ValueError, "temperature must be >= 0"),
        (PROMPT, {"max_new_tokens": 1, "seed": 0.5}, TypeError, "seed must be an int"),
    ],
    ids=["past-n-ctx", "prompt-too-long", "prompt-vocab", "prompt-float", "prompt-1-dim", "negative-count", "float-count", "temperature", "seed"],
)
def test_generate_names_bad_inputs(model, prompt, kwargs, error, match: str) -> None:
    with raises_one_sentence(error, match):
        generate(model, prompt, **kwargs)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "prompt, max_new_tokens, error, match",
    [
        (PROMPT, 4, ValueError, "max_new_tokens=4 after a prompt of 3 tokens passes the model's n_ctx=6"),
        (torch.zeros(1, 7, dtype=torch.long), 0, ValueError, "prompt has 7 positions, more than the model's n_ctx=6"),
        (torch.tensor([[0, 5]]), 1, ValueError, r"prompt must hold token ids in \[0, 5\)"),
        (PROMPT.float(), 1, TypeError, "prompt must be an integer tensor"),
        (PROMPT, -1, ValueError, "max_new_tokens must be an int >= 0, got -1"),
    ],
    ids=["past-n-ctx", "prompt-too-long", "prompt-vocab", "prompt-float", "negative-count"],
)
def test_generate_with_kv_cache_names_bad_inputs(prompt, max_new_tokens, error, match: str) -> None:
    with raises_one_sentence(error, match):
        generate_with_kv_cache(Transformer(CONFIG), prompt, max_new_tokens)


@pytest.mark.bad_input
def test_generate_with_kv_cache_needs_a_from_scratch_transformer(model) -> None:
    with raises_one_sentence(TypeError, "model must be a mechlearn.transformer.Transformer, got TransformerBridge"):
        generate_with_kv_cache(model, PROMPT, 1)


# --- continue_text: the optional GPT-2 section of chapter 01, on a tiny random GPT-2 offline ------


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from test_pretrained import save_tiny_gpt2

    from mechlearn.models import load_pretrained

    folder = tmp_path_factory.mktemp("tiny_gpt2")
    save_tiny_gpt2(folder)
    return load_pretrained(str(folder), device="cpu")


def test_continue_text_extends_the_prompt_with_the_samplers_tokens(tiny_gpt2) -> None:
    greedy = functools.partial(sample_next_token, temperature=0.0)
    text = continue_text(tiny_gpt2, "abc", 6, greedy)
    tokens = tiny_gpt2.to_tokens("abc")
    for _ in range(6):  # the same greedy loop, written out
        tokens = torch.cat([tokens, tiny_gpt2(tokens)[:, -1].argmax(dim=-1, keepdim=True)], dim=-1)
    assert text == tiny_gpt2.to_string(tokens[0])
    nucleus = functools.partial(sample_top_p, p=0.9)
    assert continue_text(tiny_gpt2, "abc", 6, nucleus, seed=1) == continue_text(tiny_gpt2, "abc", 6, nucleus, seed=1)
    draws = {continue_text(tiny_gpt2, "abc", 6, nucleus, seed=seed) for seed in range(5)}
    assert len(draws) > 1  # a random model's nucleus is wide: different seeds, different text


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "args, error, match",
    [
        (("", 3), TypeError, "prompt must be a non-empty str"),
        (("abc", -1), ValueError, "max_new_tokens must be an int >= 0"),
        (("abc", 40), ValueError, "pass the model's n_ctx=32"),
    ],
    ids=["empty-prompt", "negative-count", "past-n-ctx"],
)
def test_continue_text_names_bad_arguments(tiny_gpt2, args, error, match) -> None:
    with raises_one_sentence(error, match):
        continue_text(tiny_gpt2, *args, sample_next_token)


@pytest.mark.bad_input
def test_continue_text_needs_a_tokenizer_and_a_sampler(tiny_gpt2) -> None:
    toy = make_model(ModelConfig(d_vocab=12, n_ctx=8))
    with raises_one_sentence(ValueError, "model has no tokenizer"):
        continue_text(toy, "abc", 2, sample_next_token)
    with raises_one_sentence(TypeError, "sampler must be a function"):
        continue_text(tiny_gpt2, "abc", 2, "top-p")
