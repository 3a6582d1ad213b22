"""Small helpers the library's argument checks share, so every error names what it got the same way."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


def describe(value: object) -> str:
    """What a bad argument was, for an error message: a tensor's dtype and shape, or the type's name."""
    return f"{value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def is_int(value: object) -> bool:
    """An int and not a bool (which Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A real number (NumPy's included) and not a bool: what a rate, a temperature or a fraction may be."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(value: object, name: str) -> None:
    """Refuse anything but an int >= 1 (a size or a count), naming `name`."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def check_tensor(value: object, name: str, ndim: int | tuple[int, ...], floating: bool) -> Tensor:
    """Refuse a non-tensor, a tensor on `meta`, the wrong number of dims, an empty one, or the wrong
    dtype family (`floating=False`: token ids or other integers; float64 passes where floats are needed)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor, got {describe(value)}.")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if value.ndim not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dims, got {describe(value)}.")
    check_not_meta(value, name)
    if value.numel() == 0:
        raise ValueError(f"{name} is empty ({describe(value)}); pass at least one element along every dim.")
    if value.is_floating_point() != floating:
        raise TypeError(f"{name} must be {'a float' if floating else 'an integer'} tensor, got {describe(value)}.")
    return value


def check_finite(value: Tensor, name: str) -> None:
    """Refuse NaN or inf, which would only surface later as a nan loss or a plausible wrong number."""
    check_not_meta(value, name)
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or inf; find where it was produced.")


def check_token_ids(
    tokens: object, name: str, d_vocab: int | None, n_ctx: int | None = None, ndim: int | tuple[int, ...] = 2
) -> Tensor:
    """Token ids a model with `d_vocab` and `n_ctx` can read: integers in [0, d_vocab), at most n_ctx per sequence."""
    check_tensor(tokens, name, ndim, floating=False)
    if tokens.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of token ids, got {describe(tokens)}.")
    if n_ctx is not None and tokens.shape[-1] > n_ctx:
        raise ValueError(f"{name} has {tokens.shape[-1]} positions, more than the model's n_ctx={n_ctx}; shorten it.")
    if d_vocab is not None and ((tokens < 0) | (tokens >= d_vocab)).any():
        raise ValueError(
            f"{name} must hold token ids in [0, {d_vocab}), got values from {int(tokens.min())} to {int(tokens.max())}."
        )
    return tokens


def check_same_device(name: str, tensor: Tensor, other_name: str, other: torch.device | Tensor) -> None:
    """Refuse tensors on different devices, naming both, before torch does so deep inside a kernel."""
    other_device = other.device if isinstance(other, Tensor) else torch.device(other)
    if tensor.device != other_device:
        raise ValueError(f"{name} is on {tensor.device} but {other_name} is on {other_device}; move them to one device.")


def check_not_meta(value: Tensor, name: str) -> None:
    """Refuse a tensor on the meta device, which has a shape but no values to check or compute with."""
    if value.is_meta:
        raise ValueError(f"{name} is on the meta device and holds no values; build it on a real device.")


def check_number(value: object, name: str, minimum: float = -math.inf) -> None:
    """Refuse anything but a finite real number of at least `minimum` (a bool, NaN or inf included)."""
    if not is_number(value) or not (math.isfinite(value) and value >= minimum):
        bound = "" if minimum == -math.inf else f" of at least {minimum}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}.")
