"""The hand-set induction circuit does exactly what its docstring says."""

import math

import pytest
import torch
from bad_inputs import raises_one_sentence

from mechlearn.handcrafted import induction_circuit_model, set_weights

SEQ_LEN, BATCH, BOS = 12, 32, 0


@pytest.fixture(scope="module")
def repeated_distinct_tokens() -> torch.Tensor:
    """BOS, then 12 distinct tokens, then the same 12 again: induction is unambiguous."""
    generator = torch.Generator().manual_seed(0)
    first = torch.stack([torch.randperm(31, generator=generator)[:SEQ_LEN] + 1 for _ in range(BATCH)])
    return torch.cat([torch.full((BATCH, 1), BOS), first, first], dim=1)


def test_circuit_predicts_every_repeated_token(repeated_distinct_tokens) -> None:
    circuit = induction_circuit_model()
    logits = circuit.model(repeated_distinct_tokens)
    predictions = logits[:, SEQ_LEN + 1 : -1].argmax(dim=-1)
    assert torch.equal(predictions, repeated_distinct_tokens[:, SEQ_LEN + 2 :])


def test_planted_heads_attend_where_they_should(repeated_distinct_tokens) -> None:
    circuit = induction_circuit_model(previous_token_head=1, induction_head=0)
    _, cache = circuit.model.run_with_cache(repeated_distinct_tokens)
    previous = cache["blocks.0.attn.hook_pattern"][:, 1]
    induction = cache["blocks.1.attn.hook_pattern"][:, 0]
    assert previous.diagonal(offset=-1, dim1=-2, dim2=-1).min() > 0.99
    # Second-half query i attends to i - SEQ_LEN + 1: the token after the first occurrence.
    second_half = induction[:, SEQ_LEN + 1 :]
    assert second_half.diagonal(offset=2, dim1=-2, dim2=-1).min() > 0.99
    assert (circuit.previous_token_head, circuit.induction_head) == ((0, 1), (1, 0))


def test_other_heads_write_nothing(repeated_distinct_tokens) -> None:
    circuit = induction_circuit_model()
    _, cache = circuit.model.run_with_cache(repeated_distinct_tokens)
    unused = [(0, 1), (1, 0)]
    for layer, head in unused:
        assert cache[f"blocks.{layer}.attn.hook_z"][:, :, head].abs().max() == 0


@pytest.mark.bad_input
def test_bad_head_index_is_named() -> None:
    with pytest.raises(ValueError, match="previous_token_head and induction_head"):
        induction_circuit_model(n_heads=2, induction_head=2)


# --- bad inputs: every one named in one sentence (issue 11) -------------------------------------


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"d_vocab": 0}, ValueError, "d_vocab must be a positive int, got 0"),
        ({"n_ctx": -1}, ValueError, "n_ctx must be a positive int, got -1"),
        ({"n_heads": 2.0}, ValueError, "n_heads must be a positive int, got 2.0"),
        ({"previous_token_head": 0.0}, TypeError, "previous_token_head and induction_head must be ints"),
        ({"sharpness": 0.0}, ValueError, "sharpness must be a positive finite number"),
        ({"sharpness": math.nan}, ValueError, "sharpness must be a positive finite number"),
    ],
    ids=["zero-vocab", "negative-n-ctx", "float-n-heads", "float-head", "zero-sharpness", "nan-sharpness"],
)
def test_induction_circuit_model_names_bad_arguments(kwargs, error, match: str) -> None:
    with raises_one_sentence(error, match):
        induction_circuit_model(**kwargs)


def small_weights(model) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    heads = (cfg.n_layers, cfg.n_heads)
    return {
        "W_E": torch.zeros(cfg.d_vocab, cfg.d_model),
        "W_pos": torch.zeros(cfg.n_ctx, cfg.d_model),
        **{name: torch.zeros(*heads, cfg.d_model, cfg.d_head) for name in ("W_Q", "W_K", "W_V")},
        "W_O": torch.zeros(*heads, cfg.d_head, cfg.d_model),
        "W_U": torch.zeros(cfg.d_model, cfg.d_vocab),
    }


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "name, bad, error, match",
    [
        ("W_E", lambda w: w[:-1], ValueError, r"W_E must have shape \(4, 16\) for this model, got torch.float32 tensor of shape \(3, 16\)"),
        ("W_Q", lambda w: w.index_fill(-1, torch.tensor([0]), math.nan), ValueError, "W_Q contains NaN or inf"),
        ("W_O", lambda w: w.long(), TypeError, "W_O must be a float tensor"),
        ("W_U", lambda w: w[0], ValueError, "W_U must have 2 dims"),
    ],
    ids=["W_E-shape", "W_Q-nan", "W_O-int", "W_U-dims"],
)
def test_set_weights_names_a_weight_that_does_not_fit(name: str, bad, error, match: str) -> None:
    model = induction_circuit_model(d_vocab=4, n_ctx=4).model
    weights = small_weights(model)
    weights[name] = bad(weights[name])
    with raises_one_sentence(error, match):
        set_weights(model, **weights)


@pytest.mark.bad_input
def test_set_weights_needs_a_bridge() -> None:
    model = induction_circuit_model(d_vocab=4, n_ctx=4).model
    with raises_one_sentence(TypeError, "model must be a TransformerBridge"):
        set_weights(torch.nn.Linear(2, 2), **small_weights(model))
