"""mechlearn.sampling: bad arguments are named in one sentence (the sampling itself is tested in test_transformer.py)."""

import math

import pytest
import torch
from bad_inputs import raises_one_sentence

from mechlearn.models import ModelConfig, make_model
from mechlearn.sampling import generate, sample_next_token

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
