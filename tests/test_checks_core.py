"""Tests for mechlearn.checks.core: every learner mistake must end as one readable CheckFailed."""

from __future__ import annotations

import json
import linecache

import numpy as np
import pytest
import torch

from mechlearn.checks import CheckFailed, call_learner, call_learner_read_only, check, expect, expect_tensor

WHAT = "the output of f"
EXPECTED = torch.arange(6, dtype=torch.float32).reshape(2, 3)


def failure_of(actual: object, expected: torch.Tensor = EXPECTED, **kwargs: object) -> str:
    """The message expect_tensor raises for `actual`; fails the test if it raises nothing."""
    with pytest.raises(CheckFailed) as info:
        expect_tensor(actual, expected, what=WHAT, **kwargs)
    return str(info.value)


# --- CheckFailed and expect -------------------------------------------------------------


def test_check_failed_message_and_attributes() -> None:
    error = CheckFailed("wrong answer", hint="try again")
    assert isinstance(error, AssertionError)
    assert (error.problem, error.hint) == ("wrong answer", "try again")
    assert str(error) == "wrong answer\nHint: try again"
    assert str(CheckFailed("wrong answer")) == "wrong answer"


def test_render_traceback_shows_the_message() -> None:
    lines = CheckFailed("the output of f has shape (3,)", hint="reshape it")._render_traceback_()
    assert "✗" in lines[0]
    assert "the output of f has shape (3,)" in lines[0]
    assert "Hint: reshape it" in lines


def test_expect() -> None:
    expect(True, "never shown")
    with pytest.raises(CheckFailed, match="x must be positive"):
        expect(False, "x must be positive", hint="use abs")


# --- expect_tensor: what passes ---------------------------------------------------------


def test_correct_values_pass() -> None:
    expect_tensor(EXPECTED.clone(), EXPECTED, what=WHAT)
    expect_tensor(EXPECTED + 1e-7, EXPECTED, what=WHAT)


def test_tensor_requiring_grad_is_compared() -> None:
    actual = EXPECTED.clone().requires_grad_()
    expect_tensor(actual * 1, EXPECTED, what=WHAT)


def test_large_negative_number_matches_minus_inf_mask() -> None:
    expected = torch.tensor([[0.5, float("-inf")], [0.25, 1.0]])
    expect_tensor(torch.tensor([[0.5, -1e9], [0.25, 1.0]]), expected, what=WHAT)
    expect_tensor(expected.clone(), expected, what=WHAT)


def test_unmasked_position_where_minus_inf_expected_fails() -> None:
    expected = torch.tensor([[0.5, float("-inf")], [0.25, 1.0]])
    message = failure_of(torch.tensor([[0.5, 0.0], [0.25, 1.0]]), expected)
    assert "(0, 1)" in message
    assert "expected -inf, got 0" in message


# --- expect_tensor: wrong types ---------------------------------------------------------


def test_none_asks_about_return() -> None:
    message = failure_of(None)
    assert "None" in message
    assert "`return`" in message
    assert "(2, 3)" in message


def test_numpy_array_suggests_conversion() -> None:
    message = failure_of(np.zeros((2, 3), dtype=np.float32))
    assert "NumPy" in message
    assert "torch.from_numpy" in message


def test_list_suggests_stack() -> None:
    message = failure_of([torch.zeros(3), torch.zeros(3)])
    assert "got list" in message
    assert "torch.stack" in message


def test_tuple_is_rejected() -> None:
    assert "got tuple" in failure_of((EXPECTED,))


def test_string_is_rejected() -> None:
    message = failure_of("tensor([0., 1.])")
    assert "got str" in message
    assert "torch.Tensor" in message


def test_python_number_is_rejected() -> None:
    message = failure_of(2.5, torch.tensor(2.5))
    assert "got float" in message
    assert ".item()" in message


def test_sparse_tensor_is_rejected() -> None:
    assert "to_dense" in failure_of(EXPECTED.to_sparse())


# --- expect_tensor: shape, dtype, device ------------------------------------------------


def test_wrong_shape_names_both_shapes() -> None:
    message = failure_of(torch.zeros(6))
    assert "shape" in message
    assert "(6,)" in message
    assert "(2, 3)" in message


def test_transposed_shape_is_recognised() -> None:
    message = failure_of(EXPECTED.T)
    assert "(3, 2)" in message
    assert "transposed" in message


def test_permuted_shape_is_recognised() -> None:
    message = failure_of(torch.zeros(3, 4, 2), torch.zeros(2, 3, 4))
    assert "another order" in message


def test_extra_dimension_of_size_one_is_recognised() -> None:
    message = failure_of(EXPECTED.unsqueeze(1))
    assert "(2, 1, 3)" in message
    assert "extra dimension of size 1 at position 1" in message


def test_missing_dimension_of_size_one_is_recognised() -> None:
    message = failure_of(torch.zeros(2), torch.zeros(2, 1))
    assert "missing at position 1" in message
    assert "keepdim=True" in message


def test_float64_is_named() -> None:
    message = failure_of(EXPECTED.double())
    assert "dtype" in message
    assert "float64" in message
    assert "float32" in message
    assert "dtype=x.dtype" in message


def test_integer_result_suggests_float() -> None:
    message = failure_of(EXPECTED.long())
    assert "int64" in message
    assert ".float()" in message


def test_bool_against_float_is_a_dtype_problem() -> None:
    assert "torch.bool" in failure_of(EXPECTED > 2)


def test_wrong_device_is_named() -> None:
    message = failure_of(torch.empty(2, 3, device="meta"))
    assert "device" in message
    assert "meta" in message
    assert "device=x.device" in message


def test_meta_tensor_with_wrong_shape_reports_shape() -> None:
    assert "(3, 2)" in failure_of(torch.empty(3, 2, device="meta"))


# --- expect_tensor: values --------------------------------------------------------------


def test_nan_is_counted() -> None:
    actual = EXPECTED.clone()
    actual[0, 1] = actual[1, 2] = float("nan")
    message = failure_of(actual)
    assert "2 NaN" in message
    assert "eps" in message


def test_inf_is_counted() -> None:
    actual = EXPECTED.clone()
    actual[1, 0] = float("inf")
    message = failure_of(actual)
    assert "1 infinite" in message
    assert "division by zero" in message


def test_wrong_values_give_index_and_largest_difference() -> None:
    actual = EXPECTED.clone()
    actual[0, 2] += 0.5
    actual[1, 1] -= 3.0
    message = failure_of(actual, hint="did you subtract the mean?")
    assert "2 of 6" in message
    assert "largest absolute difference is 3" in message
    assert "(1, 1)" in message
    assert "expected 4, got 1" in message
    assert "Hint: did you subtract the mean?" in message


def test_values_are_shown_to_four_significant_digits() -> None:
    message = failure_of(torch.tensor([0.123456]), torch.tensor([0.987654]))
    assert "expected 0.9877, got 0.1235" in message


def test_zero_dim_tensor_with_wrong_value() -> None:
    message = failure_of(torch.tensor(1.5), torch.tensor(1.0))
    assert "at index ()" in message
    assert "got 1.5" in message


def test_bool_tensors_compare_by_value() -> None:
    expected = torch.tensor([True, False, True])
    expect_tensor(expected.clone(), expected, what=WHAT)
    assert "index (1,)" in failure_of(torch.tensor([True, True, True]), expected)


def test_tolerances_are_respected() -> None:
    expect_tensor(EXPECTED + 0.01, EXPECTED, what=WHAT, atol=0.1)
    failure_of(EXPECTED + 0.01, EXPECTED, atol=1e-3)


# --- call_learner -----------------------------------------------------------------------


def learner_helper(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 2:
        raise ValueError("x must be a matrix")  # the line the message must show
    return x


def learner_function(x: torch.Tensor) -> torch.Tensor:
    return learner_helper(x) * 2


def test_call_learner_returns_the_result() -> None:
    assert call_learner(learner_function, torch.ones(1, 1)).item() == 2.0
    assert call_learner(dict, a=1) == {"a": 1}


def test_not_callable_is_rejected() -> None:
    with pytest.raises(CheckFailed, match="expected a function, got Tensor"):
        call_learner(torch.zeros(3), torch.zeros(3))


def test_not_implemented_says_so() -> None:
    def layer_norm(x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("exercise 1.2")

    with pytest.raises(CheckFailed) as info:
        call_learner(layer_norm, torch.zeros(3))
    message = str(info.value)
    assert "`layer_norm` is not implemented yet" in message
    assert "exercise 1.2" in message
    assert "raise NotImplementedError" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_exception_deep_inside_shows_the_learners_line() -> None:
    with pytest.raises(CheckFailed) as info:
        call_learner(learner_function, torch.zeros(3))
    message = str(info.value)
    assert "`learner_function` raised ValueError: x must be a matrix" in message
    assert 'raise ValueError("x must be a matrix")  # the line the message must show' in message
    assert "test_checks_core.py" not in message
    assert "Hint:" in message
    assert info.value.__suppress_context__


def test_exception_inside_torch_points_at_the_learners_call() -> None:
    def attention(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, normalized_shape=(5,))

    message = str(pytest.raises(CheckFailed, call_learner, attention, torch.zeros(2, 3)).value)
    assert "RuntimeError" in message
    assert "torch.nn.functional.layer_norm(x, normalized_shape=(5,))" in message


def test_exception_in_a_notebook_cell_shows_the_line_without_filename() -> None:
    # ipykernel compiles each cell under a temporary file name and registers it in linecache.
    filename = "/tmp/ipykernel_123/456.py"
    source = "def attn_scores(q, k):\n    return q @ k\n"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict = {}
    exec(compile(source, filename, "exec"), namespace)
    try:
        with pytest.raises(CheckFailed) as info:
            call_learner(namespace["attn_scores"], torch.zeros(2, 3), torch.zeros(2, 3))
    finally:
        del linecache.cache[filename]
    message = str(info.value)
    assert "line 2: return q @ k" in message
    assert "ipykernel" not in message


# --- call_learner_read_only ----------------------------------------------------------------


def add_one_in_place(x: torch.Tensor) -> torch.Tensor:
    x += 1
    return x


def test_read_only_returns_the_result_and_leaves_the_original_alone() -> None:
    x = torch.zeros(3)
    assert torch.equal(call_learner_read_only(lambda t, n: t + n, x, n=2), torch.full((3,), 2.0))
    with pytest.raises(CheckFailed, match="`add_one_in_place` changed its argument `x` in place") as failure:
        call_learner_read_only(add_one_in_place, x)
    assert ".clone()" in failure.value.hint
    assert torch.equal(x, torch.zeros(3)), "the learner must have edited a copy"


def test_read_only_sees_nan_as_unchanged_and_a_new_shape_as_changed() -> None:
    call_learner_read_only(lambda t: t * 2, torch.tensor([float("nan"), 1.0]))
    with pytest.raises(CheckFailed, match="changed its argument `t` in place"):
        call_learner_read_only(lambda t: t.resize_(1), torch.zeros(3))


def test_read_only_names_an_edited_cache_but_lets_it_grow() -> None:
    from transformer_lens.ActivationCache import ActivationCache

    cache = ActivationCache({"hook_embed": torch.zeros(2)}, model=None)
    call_learner_read_only(lambda cache: cache.cache_dict.update(hook_result=torch.ones(2)), cache)  # as stack_head_results does

    def edit(cache):
        cache["hook_embed"][0] = 1.0

    with pytest.raises(CheckFailed, match="changed its argument `cache` in place"):
        call_learner_read_only(edit, cache)
    assert torch.equal(cache["hook_embed"], torch.zeros(2))


@pytest.fixture(scope="module")
def tiny_model():
    from mechlearn.models import ModelConfig, make_model

    return make_model(ModelConfig(d_vocab=5, n_ctx=4, d_model=8, n_layers=1, n_heads=2, d_head=4, d_mlp=None))


def test_read_only_restores_a_model_whose_weights_were_edited(tiny_model) -> None:
    before = tiny_model.W_E.clone()

    def zero_the_embedding(model):
        with torch.no_grad():
            model.W_E[:] = 0.0

    with pytest.raises(CheckFailed, match="changed the model's weights in place") as failure:
        call_learner_read_only(zero_the_embedding, tiny_model)
    assert "copy.deepcopy(model)" in failure.value.hint
    assert torch.equal(tiny_model.W_E, before)


def test_read_only_removes_a_hook_left_attached(tiny_model) -> None:
    tokens = torch.tensor([[1, 2, 3]])
    clean = tiny_model(tokens)

    def add_hook(model):
        model.add_hook("blocks.0.attn.hook_z", lambda z, hook: z * 0)

    with pytest.raises(CheckFailed, match="left 1 hook\\(s\\) attached to the model") as failure:
        call_learner_read_only(add_hook, tiny_model)
    assert "reset_hooks()" in failure.value.hint
    assert torch.equal(tiny_model(tokens), clean)


def test_read_only_restores_the_model_when_the_learner_crashes(tiny_model) -> None:
    before = tiny_model.W_E.clone()

    def zero_then_crash(model):
        with torch.no_grad():
            model.W_E[:] = 0.0
        raise RuntimeError("oops")

    with pytest.raises(CheckFailed, match="raised RuntimeError: oops"):
        call_learner_read_only(zero_then_crash, tiny_model)
    assert torch.equal(tiny_model.W_E, before)


# --- @check -----------------------------------------------------------------------------


@check
def check_double(fn: object) -> None:
    """A miniature chapter check: `fn` must double its input."""
    x = torch.arange(3, dtype=torch.float32)
    expect_tensor(call_learner(fn, x), 2 * x, what="the output of double")


@check
def check_length(fn: object) -> None:
    """A check that trips over a wrong return type on its own."""
    expect(call_learner(fn).shape == (3,), "wrong shape")


def test_check_keeps_the_name() -> None:
    assert check_double.__name__ == "check_double"
    assert "double its input" in check_double.__doc__


def test_check_prints_tick_on_success(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_double(lambda x: 2 * x) is None
    assert capsys.readouterr().out == "✓ double: all tests passed\n"


def test_check_reraises_with_label() -> None:
    with pytest.raises(CheckFailed) as info:
        check_double(lambda x: 3 * x)
    assert info.value.problem.startswith("✗ double: the output of double has 2 of 3 values wrong")
    assert str(info.value).startswith("✗ double:")
    assert info.value.__suppress_context__
    assert info.value._render_traceback_()[0].count("✗") == 1


def test_check_reports_learner_exceptions_with_label() -> None:
    with pytest.raises(CheckFailed, match=r"✗ double: `<lambda>` raised ZeroDivisionError"):
        check_double(lambda x: 1 / 0)


def test_check_turns_its_own_crash_into_a_failure() -> None:
    with pytest.raises(CheckFailed) as info:
        check_length(lambda: [1, 2, 3])
    message = str(info.value)
    assert "✗ length: the check could not use what your function returned" in message
    assert "AttributeError" in message
    assert "docstring" in message


def test_check_records_and_does_not_raise_when_logging(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "checks.jsonl"
    monkeypatch.setenv("MECHLEARN_CHECK_LOG", str(log))

    assert check_double(lambda x: x) is None
    assert check_double(lambda x: x + x) is None
    assert check_length(lambda: None) is None

    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [(r["check"], r["passed"]) for r in records] == [("double", False), ("double", True), ("length", False)]
    assert records[0]["message"].startswith("✗ double: the output of double has")
    assert "Hint:" in records[0]["message"]
    assert records[1]["message"] == ""
    assert "NoneType" in records[2]["message"]
    out = capsys.readouterr().out
    assert "✗ double:" in out and "✓ double: all tests passed" in out
