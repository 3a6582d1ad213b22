"""mechlearn.tasks.induction: InductionTask (bigram text and random-offset repeats) and the fixed-offset pitfall."""

import math
from collections import Counter

import pytest
import torch
from bad_inputs import raises_one_sentence

from mechlearn.tasks import FixedOffsetRepeatTask, InductionTask, LabelledTokens, Task

TASK = InductionTask()


def sample(task: InductionTask, batch: int = 256, seed: int = 0) -> LabelledTokens:
    return task.sample_labelled(batch, torch.Generator().manual_seed(seed))


def with_copies(monkeypatch: pytest.MonkeyPatch, task: InductionTask, copy_from: list[int]) -> LabelledTokens:
    """One sequence of `task` whose copies are exactly `copy_from` (-1: not a copy)."""
    monkeypatch.setattr(InductionTask, "_copy_sources", lambda self, batch, generator: torch.tensor([copy_from]))
    return task.sample_labelled(1, torch.Generator().manual_seed(0))


def positions(mask: torch.Tensor) -> list[int]:
    return torch.nonzero(mask)[:, 0].tolist()


# --- the Task protocol and the layout -------------------------------------------------------


def test_layout_and_protocol() -> None:
    assert isinstance(TASK, Task) and isinstance(FixedOffsetRepeatTask(), Task)
    assert (TASK.bos, TASK.d_vocab) == (TASK.n_tokens, TASK.n_tokens + 1)
    labelled = sample(TASK)
    tokens = labelled.tokens
    assert tokens.shape == (256, TASK.n_ctx) and tokens.dtype == torch.long
    assert (tokens[:, 0] == TASK.bos).all()
    assert ((tokens[:, 1:] >= 0) & (tokens[:, 1:] < TASK.n_tokens)).all()
    assert labelled.repeated.dtype == labelled.first.dtype == torch.bool
    assert labelled.repeated.shape == labelled.first.shape == tokens.shape
    assert torch.equal(TASK.sample(256, torch.Generator().manual_seed(0)), tokens)
    assert TASK.target_mask.shape == (TASK.n_ctx - 1,) and TASK.target_mask.all()


def test_sampling_is_deterministic_under_the_generator() -> None:
    first, again, other = sample(TASK, seed=3), sample(TASK, seed=3), sample(TASK, seed=4)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first.tokens, other.tokens)
    assert not torch.equal(first.repeated, other.repeated)


# --- the repeats -----------------------------------------------------------------------------


def test_every_repeated_token_is_predictable_by_induction() -> None:
    # Token t is repeated only if an earlier `first` token p follows the same token:
    # tokens[p - 1] == tokens[t - 1] and tokens[p] == tokens[t].
    labelled = sample(TASK, batch=128)
    tokens, repeated, first = labelled
    assert repeated.any(dim=-1).sum() > (0.9 - TASK.bigram_fraction) * 128
    for row, t in torch.nonzero(repeated).tolist():
        earlier = [p for p in positions(first[row]) if p < t]
        assert any(tokens[row, p - 1] == tokens[row, t - 1] and tokens[row, p] == tokens[row, t] for p in earlier), (row, t)
    # Each repeated token has exactly one first occurrence.
    assert torch.equal(repeated.sum(dim=-1), first.sum(dim=-1))
    assert not (repeated & first).any()


def test_masks_on_one_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    task = InductionTask(n_ctx=12, min_repeat_len=2, max_repeat_len=4, bigram_fraction=0.0)
    # Positions 1..3 are copied to 6..8.
    tokens, repeated, first = with_copies(monkeypatch, task, [-1, -1, -1, -1, -1, -1, 1, 2, 3, -1, -1, -1])
    assert torch.equal(tokens[0, 6:9], tokens[0, 1:4])
    # The first token of a copy (6) cannot be predicted: nothing says a copy starts there.
    assert positions(repeated[0]) == [7, 8]
    assert positions(first[0]) == [2, 3]


def test_masks_on_copies_that_meet(monkeypatch: pytest.MonkeyPatch) -> None:
    task = InductionTask(n_ctx=12, min_repeat_len=2, max_repeat_len=4, bigram_fraction=0.0)
    # 1..3 -> 6..8 and 4..5 -> 9..10: the copies meet where the originals meet, so 9 follows 8
    # exactly as 4 follows 3 and is predictable too.
    _, repeated, first = with_copies(monkeypatch, task, [-1, -1, -1, -1, -1, -1, 1, 2, 3, 4, 5, -1])
    assert positions(repeated[0]) == [7, 8, 9, 10]
    assert positions(first[0]) == [2, 3, 4, 5]
    # 4..5 -> 6..7 then 1..3 -> 8..10: token 8 (a copy of 1) follows a copy of 5, not of 0.
    _, repeated, first = with_copies(monkeypatch, task, [-1, -1, -1, -1, -1, -1, 4, 5, 1, 2, 3, -1])
    assert positions(repeated[0]) == [7, 9, 10]
    assert positions(first[0]) == [2, 3, 5]


def test_offsets_and_lengths_vary_so_position_does_not_tell() -> None:
    task = InductionTask(bigram_fraction=0.0)
    copy_from = task._copy_sources(4000, torch.Generator().manual_seed(0))
    pos = torch.arange(task.n_ctx).expand_as(copy_from)
    in_copy = copy_from >= 0
    offsets = (pos - copy_from)[in_copy]
    assert len(set(offsets.tolist())) > 15
    assert offsets.min() >= task.min_repeat_len and offsets.max() <= task.n_ctx - 1 - task.min_repeat_len
    # The best guess from position alone (the most common offset at each position) is rarely right.
    by_position = Counter(zip(pos[in_copy].tolist(), offsets.tolist()))
    best = Counter()
    for (p, _), count in by_position.items():
        best[p] = max(best[p], count)
    assert sum(best.values()) / len(offsets) < 0.15
    # Lengths: maximal runs of consecutive copied positions span the whole range.
    starts = in_copy & ~torch.cat([torch.zeros(4000, 1, dtype=torch.bool), in_copy[:, :-1]], dim=-1)
    assert starts.sum(dim=-1).min() >= 1  # every sequence has at least one repeat
    assert starts.sum(dim=-1).max() == task.n_repeats
    run_lengths = Counter()
    for row in range(200):
        run = 0
        for inside in in_copy[row].tolist() + [False]:
            if inside:
                run += 1
            elif run:
                run_lengths[run] += 1
                run = 0
    assert min(run_lengths) == task.min_repeat_len
    assert max(run_lengths) >= task.max_repeat_len


# --- the bigram text -------------------------------------------------------------------------


def test_bigram_chain_is_fixed_by_chain_seed() -> None:
    assert torch.equal(InductionTask(chain_seed=1).successors, InductionTask(chain_seed=1).successors)
    assert not torch.equal(InductionTask(chain_seed=1).successors, InductionTask(chain_seed=2).successors)
    successors = TASK.successors
    assert successors.shape == (TASK.n_tokens, TASK.branching)
    assert all(len(set(row)) == TASK.branching for row in successors.tolist())  # distinct successors
    assert TASK.bigram_loss == pytest.approx(math.log(TASK.branching))


def test_bigram_sequences_follow_the_chain() -> None:
    task = InductionTask(bigram_fraction=0.5, chain_seed=7)
    tokens, repeated, _ = sample(task, batch=400)
    is_bigram = ~repeated.any(dim=-1)  # random-token sequences always hold a repeat
    assert 150 < is_bigram.sum() < 250
    allowed = [set(row) for row in task.successors.tolist()]
    text = tokens[is_bigram, 1:]
    assert all(b in allowed[a] for row in text.tolist() for a, b in zip(row, row[1:]))
    # Random-token sequences do not follow it: most of their transitions are not in the chain.
    noise = tokens[~is_bigram, 1:].tolist()
    in_chain = sum(b in allowed[a] for row in noise for a, b in zip(row, row[1:])) / sum(len(row) - 1 for row in noise)
    assert in_chain < 0.5


def test_no_bigram_text_when_the_fraction_is_zero() -> None:
    _, repeated, _ = sample(InductionTask(bigram_fraction=0.0), batch=300)
    assert repeated.any(dim=-1).all()


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "fields, message",
    [
        ({"n_tokens": 1}, "n_tokens must be at least 2"),
        ({"branching": 0}, "branching must be in"),
        ({"branching": 49}, "branching must be in"),
        ({"bigram_fraction": 1.0}, "bigram_fraction must be in"),
        ({"n_repeats": 0}, "n_repeats must be at least 1"),
        ({"min_repeat_len": 1}, "min_repeat_len <= max_repeat_len"),
        ({"min_repeat_len": 6, "max_repeat_len": 5}, "min_repeat_len <= max_repeat_len"),
        ({"n_ctx": 20, "max_repeat_len": 10}, "n_ctx=20 is too short"),
    ],
)
def test_induction_task_validation(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        InductionTask(**fields)


def test_decode_marks_bos() -> None:
    assert TASK.decode(torch.tensor([TASK.bos, 3, 17, 3])) == "| 3 17 3"


# --- the fixed-offset pitfall ---------------------------------------------------------------


def test_fixed_offset_layout_and_masks() -> None:
    task = FixedOffsetRepeatTask(n_tokens=10, length=4)
    assert (task.bos, task.d_vocab, task.n_ctx) == (10, 11, 9)
    tokens, repeated, first = task.sample_labelled(50, torch.Generator().manual_seed(0))
    assert tokens.shape == (50, 9)
    assert (tokens[:, 0] == 10).all()
    assert torch.equal(tokens[:, 1:5], tokens[:, 5:])
    assert ((tokens[:, 1:] >= 0) & (tokens[:, 1:] < 10)).all()
    # [BOS x1 x2 x3 x4 x1 x2 x3 x4]: x2..x4 of the copy are predictable by induction.
    assert all(positions(row) == [6, 7, 8] for row in repeated)
    assert all(positions(row) == [2, 3, 4] for row in first)
    assert torch.equal(task.sample(50, torch.Generator().manual_seed(0)), tokens)
    assert task.target_mask.all() and task.target_mask.shape == (8,)
    assert task.decode(tokens[0]).startswith("| ")


@pytest.mark.bad_input
def test_fixed_offset_validation() -> None:
    with pytest.raises(ValueError, match="n_tokens >= 2 and length >= 2"):
        FixedOffsetRepeatTask(length=1)


# --- bad inputs: every one named in one sentence (issue 11) -------------------------------------


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: InductionTask(n_tokens=48.0), ValueError, "InductionTask.n_tokens must be an int, got 48.0"),
        (lambda: InductionTask(chain_seed=0.5), ValueError, "InductionTask.chain_seed must be an int, got 0.5"),
        (lambda: InductionTask(bigram_fraction="0.1"), ValueError, r"InductionTask.bigram_fraction must be a number in \[0, 1\), got '0.1'"),
        (lambda: FixedOffsetRepeatTask(length=4.0), ValueError, "FixedOffsetRepeatTask.length must be an int, got 4.0"),
        (lambda: TASK.sample_labelled(0, torch.Generator()), ValueError, "batch_size must be a positive int, got 0"),
        (lambda: TASK.sample(-3, torch.Generator()), ValueError, "batch_size must be a positive int, got -3"),
        (lambda: TASK.sample(2, "seed 0"), TypeError, "generator must be a torch.Generator, got str"),
        (lambda: FixedOffsetRepeatTask().sample_labelled(2.5, torch.Generator()), ValueError, "batch_size must be a positive int, got 2.5"),
    ],
    ids=["float-n-tokens", "float-chain-seed", "str-bigram-fraction", "float-length", "zero-batch", "negative-batch", "str-generator",
         "fixed-offset-float-batch"],
)
def test_induction_tasks_name_bad_inputs(call, error, match: str) -> None:
    with raises_one_sentence(error, match):
        call()
