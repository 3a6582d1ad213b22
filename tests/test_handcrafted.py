"""The hand-set induction circuit does exactly what its docstring says."""

import pytest
import torch

from mechlearn.handcrafted import induction_circuit_model

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


def test_bad_head_index_is_named() -> None:
    with pytest.raises(ValueError, match="previous_token_head and induction_head"):
        induction_circuit_model(n_heads=2, induction_head=2)
