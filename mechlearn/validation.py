"""Small helpers the library's argument checks share, so every error names what it got the same way."""

from __future__ import annotations

from torch import Tensor


def describe(value: object) -> str:
    """What a bad argument was, for an error message: a tensor's dtype and shape, or the type's name."""
    return f"{value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def is_int(value: object) -> bool:
    """An int and not a bool (which Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool)
