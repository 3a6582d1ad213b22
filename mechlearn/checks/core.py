"""The machinery behind every exercise check.

A check calls the learner's function on small inputs and compares the result with
the expected answer. Whatever goes wrong (a wrong shape, dtype or device, a NaN, a
wrong return type, an exception inside the learner's code) ends as ONE `CheckFailed`
that says what was expected, what came back, and how to fix it, instead of a
traceback from deep inside the checker.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sysconfig
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformer_lens.ActivationCache import ActivationCache

__all__ = ["CheckFailed", "call_learner", "call_learner_read_only", "expect_tensor", "expect", "check"]

LOG_ENV_VAR = "MECHLEARN_CHECK_LOG"
"""If set to a file path, `@check` functions record their outcome there instead of raising."""

# Frames in these places are never the learner's code, so they are skipped when
# pointing at the line that raised.
_MECHLEARN_DIR = Path(__file__).resolve().parent.parent  # the checks and the library the learner calls
_STDLIB_DIR = Path(sysconfig.get_paths()["stdlib"]).resolve()
_LIBRARY_DIR_NAMES = {"site-packages", "dist-packages"}

# Masked attention scores are -inf in the reference; a learner who masks with a large
# negative number such as -1e9 gets the same softmax, so that counts as a match.
_MASKED_AT_MOST = -1e4

_RED, _RESET = "\033[31m", "\033[0m"


class CheckFailed(AssertionError):
    """A check failed: `problem` says what went wrong, `hint` how to fix it."""

    def __init__(self, problem: str, hint: str = "") -> None:
        super().__init__(f"{problem}\nHint: {hint}" if hint else problem)
        self.problem = problem
        self.hint = hint

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of a traceback: the learner needs the message, not our stack."""
        first, *rest = str(self).splitlines()
        if not first.startswith("✗"):
            first = f"✗ {first}"
        return [f"{_RED}{first}{_RESET}", *rest]


def expect(condition: bool, problem: str, hint: str = "") -> None:
    """Raise `CheckFailed(problem, hint)` unless `condition` holds."""
    if not condition:
        raise CheckFailed(problem, hint)


# --- calling the learner's code -------------------------------------------------------


def call_learner(fn: object, *args: Any, **kwargs: Any) -> Any:
    """Call the learner's function (or class) and return its result.

    Any exception it raises becomes a `CheckFailed` that names the function and the
    line of the learner's code that raised.
    """
    if not callable(fn):
        raise CheckFailed(
            f"expected a function, got {type(fn).__name__}",
            hint="pass the function itself, without calling it: `check_f(f)`, not `check_f(f(x))`",
        )
    name = getattr(fn, "__name__", type(fn).__name__)
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as error:
        raise _not_implemented(name, error) from None
    except Exception as error:
        raise _crashed(name, error) from None


def call_learner_read_only(fn: object, *args: Any, **kwargs: Any) -> Any:
    """`call_learner`, failing if the learner's code changed an argument it should only read.

    Tensors and activation caches go in as copies, so an in-place edit cannot spoil the
    check's own answers, and are compared with the originals afterwards. A model goes in
    as it is and must come back with the same weights and no hook left attached; if it
    does not, it is restored first, so the checks that use it afterwards still work.
    """
    originals = [*args, *kwargs.values()]
    copies = [_copy(value) for value in originals]
    models = {id(value): _ModelState(value) for value in originals if isinstance(value, torch.nn.Module)}
    try:
        result = call_learner(fn, *copies[: len(args)], **dict(zip(kwargs, copies[len(args) :])))
    finally:
        changes = [state.restore() for state in models.values()]
    name = getattr(fn, "__name__", type(fn).__name__)
    for change in changes:
        expect(not change, f"`{name}` {change}", hint=_MODEL_CHANGED_HINT)
    for argument, original, copy in zip([*_parameter_names(fn, len(args)), *kwargs], originals, copies):
        expect(
            _same(original, copy),
            f"`{name}` changed its argument `{argument}` in place",
            hint="in-place operations (`-=`, `/=`, index assignment, methods ending in `_`) overwrite a tensor the "
            "caller still needs, and an activation edited in place changes the cache it came from too: "
            "build a new tensor (`x = x - m`), or `.clone()` first",
        )
    return result


_MODEL_CHANGED_HINT = (
    "leave the model as you found it: ablate with hooks in `model.run_with_hooks`, which removes them when "
    "the run ends (after `model.add_hook`, call `model.reset_hooks()`), and edit weights only on a "
    "`copy.deepcopy(model)`"
)


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, ActivationCache):
        return ActivationCache({name: tensor.clone() for name, tensor in value.items()}, value.model)
    return value


def _same(original: Any, copy: Any) -> bool:
    """Whether the learner's copy still equals the original (NaN equal to NaN)."""
    if isinstance(original, ActivationCache):
        # New entries are fine: TransformerLens helpers such as stack_head_results cache what they compute.
        return all(name in copy.keys() and _same(original[name], copy[name]) for name in original.keys())
    if not isinstance(original, torch.Tensor):
        return True
    return (
        original.shape == copy.shape
        and original.dtype == copy.dtype
        and original.device == copy.device
        and bool(((original == copy) | (original.isnan() & copy.isnan())).all())
    )


def _parameter_names(fn: object, n_args: int) -> list[str]:
    """The names of the first `n_args` parameters of `fn`, for messages; positions where unknown."""
    try:
        parameters = [p.name for p in inspect.signature(fn).parameters.values() if p.kind <= p.POSITIONAL_OR_KEYWORD]
    except (TypeError, ValueError):
        parameters = []
    return [parameters[i] if i < len(parameters) else f"number {i + 1}" for i in range(n_args)]


class _ModelState:
    """A model's weights and hook count, to tell whether the learner's code changed them."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        self.n_hooks = _hook_count(model)

    def restore(self) -> str:
        """Undo what the learner's code changed; say what that was, or ''."""
        current = self.model.state_dict()
        changed = [name for name, saved in self.weights.items() if not _same(saved, current[name])]
        with torch.no_grad():
            for name in changed:
                current[name].copy_(self.weights[name])
        extra_hooks = _hook_count(self.model) - self.n_hooks
        if extra_hooks > 0 and hasattr(self.model, "reset_hooks"):
            self.model.reset_hooks()  # TransformerLens: removes the hooks added since, not the permanent ones
        if changed:
            return f"changed the model's weights in place ({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''})"
        return f"left {extra_hooks} hook(s) attached to the model" if extra_hooks > 0 else ""


def _hook_count(model: torch.nn.Module) -> int:
    """The hooks on a TransformerLens model's hook points (not the hooks TransformerLens keeps for itself)."""
    hook_points = {id(point): point for point in getattr(model, "hook_dict", {}).values()}  # names may alias
    return sum(len(point.fwd_hooks) + len(point.bwd_hooks) for point in hook_points.values())


def _not_implemented(name: str, error: NotImplementedError) -> CheckFailed:
    detail = f" ({error})" if str(error) else ""
    return CheckFailed(
        f"`{name}` is not implemented yet{detail}",
        hint="replace the `raise NotImplementedError` with your code",
    )


def _crashed(name: str, error: Exception) -> CheckFailed:
    message = f": {error}" if str(error) else ""
    location = _learner_location(error)
    return CheckFailed(
        f"`{name}` raised {type(error).__name__}{message}" + (f"\n  {location}" if location else ""),
        hint="check the shapes of the intermediate tensors against the docstring; "
        "`print(t.shape)` just before that line shows where they stop matching",
    )


def _learner_location(error: BaseException) -> str:
    """'line N: <source>' for the innermost frame of the learner's own code, or ''."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if _is_learner_file(f.filename)]
    if not frames:
        return ""
    frame = frames[-1]
    # The file name is left out: in a notebook it is a meaningless temporary path.
    return f"line {frame.lineno}: {frame.line}" if frame.line else f"line {frame.lineno}"


def _is_learner_file(filename: str) -> bool:
    """False for mechlearn (the checks and the library), the standard library and installed packages such as torch."""
    path = Path(filename).resolve()
    in_library = path.is_relative_to(_STDLIB_DIR) or bool(_LIBRARY_DIR_NAMES & set(path.parts))
    return not (in_library or path.is_relative_to(_MECHLEARN_DIR))


# --- comparing tensors ------------------------------------------------------------------


def expect_tensor(
    actual: object,
    expected: torch.Tensor,
    *,
    what: str,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    hint: str = "",
) -> None:
    """Check that `actual` is a tensor matching `expected` in shape, dtype, device and values.

    `what` names the tensor in messages, e.g. "the output of layer_norm". The checks go
    from the coarsest mistake to the finest, so the message names the first one that
    went wrong. Positions where `expected` is -inf accept any value <= -1e4.
    """
    actual = _expect_is_tensor(actual, expected, what)
    actual, expected = actual.detach(), expected.detach()
    _expect_same_shape(actual, expected, what, hint)
    _expect_same_dtype(actual, expected, what)
    _expect_same_device(actual, expected, what)
    _expect_finite(actual, expected, what, hint)
    _expect_close(actual, expected, what, atol=atol, rtol=rtol, hint=hint)


def _expect_is_tensor(actual: object, expected: torch.Tensor, what: str) -> torch.Tensor:
    if isinstance(actual, torch.Tensor):
        expect(
            actual.layout == torch.strided,
            f"{what} is a {actual.layout} tensor, expected an ordinary dense one",
            hint="convert it with `.to_dense()`",
        )
        return actual
    wanted = f"a torch.Tensor of shape {tuple(expected.shape)}"
    if actual is None:
        raise CheckFailed(
            f"expected {what} to be {wanted}, but your function returned None",
            hint="did you forget `return`?",
        )
    if isinstance(actual, np.ndarray):
        raise CheckFailed(
            f"expected {what} to be {wanted}, got a NumPy array",
            hint="stay in torch, or convert at the end with `torch.from_numpy(a)` or `torch.tensor(a)`",
        )
    raise CheckFailed(f"expected {what} to be {wanted}, got {type(actual).__name__}", hint=_type_hint(actual))


def _type_hint(actual: object) -> str:
    if isinstance(actual, (list, tuple)):
        return "combine the pieces into one tensor with `torch.stack` (new dimension) or `torch.cat` (existing one)"
    if isinstance(actual, (int, float, complex)):
        return "keep the result a tensor: `.item()` and Python arithmetic turn it into a plain number"
    return "return a torch.Tensor, as the docstring says"


def _expect_same_shape(actual: torch.Tensor, expected: torch.Tensor, what: str, hint: str) -> None:
    got, want = tuple(actual.shape), tuple(expected.shape)
    expect(got == want, f"{what} has shape {got}, expected {want}", hint=_shape_hint(got, want, hint))


def _shape_hint(got: tuple[int, ...], want: tuple[int, ...], check_hint: str) -> str:
    """A hint for the recognisable shape mistakes, else the check's own hint."""
    if len(got) >= 2 and got == want[::-1]:
        return "it looks transposed: check the order of the dimensions in your transpose, permute or einsum"
    if sorted(got) == sorted(want):
        return "the sizes are right but in another order: check your transpose, permute or einsum pattern"
    extra = _extra_unit_dim(got, want)
    if extra is not None:
        return f"you have an extra dimension of size 1 at position {extra}: drop `keepdim=True` or `.squeeze({extra})` it"
    missing = _extra_unit_dim(want, got)
    if missing is not None:
        return f"a dimension of size 1 is missing at position {missing}: reduce with `keepdim=True` or `.unsqueeze({missing})`"
    return check_hint or "follow the shapes in the docstring through each step; check which dimension each sum, mean or reshape acts on"


def _extra_unit_dim(longer: tuple[int, ...], shorter: tuple[int, ...]) -> int | None:
    """The position of a size-1 dimension whose removal turns `longer` into `shorter`, if any."""
    if len(longer) != len(shorter) + 1:
        return None
    for i, size in enumerate(longer):
        if size == 1 and longer[:i] + longer[i + 1 :] == shorter:
            return i
    return None


def _expect_same_dtype(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    if expected.dtype.is_floating_point and not actual.dtype.is_floating_point:
        hint = "do the arithmetic in floating point, e.g. with `.float()`, or create tensors with `dtype=x.dtype`"
    else:
        hint = (
            "create new tensors with `dtype=x.dtype` (a NumPy array becomes float64 and Python ints int64), "
            "or convert with `.to(x.dtype)`"
        )
    expect(actual.dtype == expected.dtype, f"{what} has dtype {actual.dtype}, expected {expected.dtype}", hint)


def _expect_same_device(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    expect(
        actual.device == expected.device,
        f"{what} is on device {actual.device}, expected {expected.device}",
        hint="create new tensors with `device=x.device`: torch.zeros, torch.arange and friends default to the CPU",
    )


def _expect_finite(actual: torch.Tensor, expected: torch.Tensor, what: str, hint: str) -> None:
    should_be_finite = torch.isfinite(expected)
    n_nan = int((torch.isnan(actual) & should_be_finite).sum())
    n_inf = int((torch.isinf(actual) & should_be_finite).sum())
    found = " and ".join(f"{n} {kind}" for n, kind in [(n_nan, "NaN"), (n_inf, "infinite")] if n)
    expect(
        not found,
        f"{what} has {found} value(s) where finite values were expected",
        # A check's own hint knows where infinities belong (e.g. a causal mask); the generic one guesses.
        hint=hint or "look for a division by zero, a log or sqrt of 0 or of a negative number, or a missing `eps`",
    )


def _expect_close(
    actual: torch.Tensor, expected: torch.Tensor, what: str, *, atol: float, rtol: float, hint: str
) -> None:
    # Compare in double (or complex) precision so bool and integer tensors work too.
    precise = torch.complex128 if actual.is_complex() else torch.float64
    actual, expected = actual.to(precise), expected.to(precise)
    matches = torch.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
    masked = (expected == float("-inf")) & (actual.real <= _MASKED_AT_MOST)
    wrong = ~(matches | masked)
    n_wrong = int(wrong.sum())
    if n_wrong == 0:
        return
    # inf - inf is NaN; count it as an infinitely large difference.
    inf = float("inf")
    difference = torch.where(wrong, (actual - expected).abs().nan_to_num(nan=inf, posinf=inf), -1.0)
    worst = int(difference.argmax())
    index = tuple(int(i) for i in np.unravel_index(worst, tuple(actual.shape)))
    raise CheckFailed(
        f"{what} has {n_wrong} of {actual.numel()} values wrong; the largest absolute difference is "
        f"{difference.flatten()[worst].item():.4g}, at index {index}: "
        f"expected {expected.flatten()[worst].item():.4g}, got {actual.flatten()[worst].item():.4g}",
        hint=hint or "compare your formula with the docstring, step by step on this small input",
    )


# --- the @check decorator ----------------------------------------------------------------


def check(func: Callable[..., None]) -> Callable[..., None]:
    """Turn a chapter's check function into one that reports a single ✓ or ✗ line.

    With the environment variable MECHLEARN_CHECK_LOG set to a file path, each outcome
    is also appended there as a JSON line and failures are printed instead of raised,
    so a test can run a whole exercise notebook and collect every check's outcome.
    """
    label = func.__name__.removeprefix("check_")

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        failure = _run_check(func, args, kwargs)
        if failure is None:
            _record(label, passed=True, message="")
            print(f"✓ {label}: all tests passed")
            return
        failure = CheckFailed(f"✗ {label}: {failure.problem}", failure.hint)
        if os.environ.get(LOG_ENV_VAR):
            _record(label, passed=False, message=str(failure))
            print(failure)
            return
        raise failure from None

    return wrapper


def _run_check(func: Callable[..., None], args: tuple, kwargs: dict) -> CheckFailed | None:
    """Run the check; return its failure, or None if it passed."""
    try:
        func(*args, **kwargs)
    except CheckFailed as failure:
        return failure
    except Exception as error:
        # The check itself tripped over the learner's result, e.g. `.shape` on a list.
        return CheckFailed(
            f"the check could not use what your function returned ({type(error).__name__}: {error})",
            hint="compare what you return with the shapes and types in the docstring",
        )
    return None


def _record(label: str, *, passed: bool, message: str) -> None:
    """Append the outcome to the MECHLEARN_CHECK_LOG file, if that variable is set."""
    log_path = os.environ.get(LOG_ENV_VAR)
    if not log_path:
        return
    line = json.dumps({"check": label, "passed": passed, "message": message}, ensure_ascii=False)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(line + "\n")
