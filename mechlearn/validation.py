"""Small helpers the library's argument checks share, so every error names what it got the same way."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def describe(value: object) -> str:
    """What a bad argument was, for an error message: a tensor's dtype and shape, or the type's name."""
    return f"{value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def is_int(value: object) -> bool:
    """An int and not a bool (which Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_tensor(name: str, value: object, shape: str, kind: str = "float") -> None:
    """Refuse, naming `name`, anything but a non-empty tensor of `kind` ("float", "integer" or "bool") with `shape`'s dims.

    `shape` spells the dims for the message, e.g. "[batch pos]"; its number of words is the number of dims.
    """
    dtypes = {"float": lambda t: t.is_floating_point(), "integer": _is_int_dtype, "bool": lambda t: t.dtype == torch.bool}
    message = f"{name} must be a non-empty {kind} tensor of shape {shape}, got {describe(value)}."
    if not isinstance(value, Tensor) or not dtypes[kind](value):
        raise TypeError(message)
    if value.ndim != len(shape.strip("[]").split()) or value.numel() == 0:
        raise ValueError(message)
    check_not_meta(name, value)


def check_not_meta(name: str, value: Tensor) -> None:
    """Refuse a tensor on the meta device, which has a shape but no values to compute with."""
    if value.is_meta:
        raise ValueError(f"{name} is on the meta device, which holds no values; make it on a real device.")


def _is_int_dtype(value: Tensor) -> bool:
    return not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool


def check_finite(name: str, value: Tensor) -> None:
    """Refuse a tensor holding NaN or inf, naming `name` (one sync: call it once per public call, not per step)."""
    check_not_meta(name, value)
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or inf; drop those entries (or fix the run that produced them).")


def check_same_device(name: str, value: Tensor, device: torch.device, owner: str) -> None:
    """Refuse `value` unless it lives on `device`, the device of `owner` (e.g. "the model", "x")."""
    if value.device != torch.device(device):
        raise ValueError(f"{name} is on {value.device} but {owner} is on {device}; move it there with .to({str(device)!r}).")


def check_tokens(tokens: object, cfg: object, name: str = "tokens") -> None:
    """Refuse anything but a [batch pos] integer tensor of ids in [0, cfg.d_vocab) at most cfg.n_ctx long."""
    check_tensor(name, tokens, "[batch pos]", kind="integer")
    if tokens.shape[1] > cfg.n_ctx:
        raise ValueError(f"{name} has {tokens.shape[1]} positions, more than the model's n_ctx={cfg.n_ctx}.")
    low, high = tokens.min().item(), tokens.max().item()
    if low < 0 or high >= cfg.d_vocab:
        raise ValueError(f"{name} must hold token ids in [0, {cfg.d_vocab}), got ids from {low} to {high}.")


def check_number(name: str, value: object, minimum: float = -math.inf) -> None:
    """Refuse anything but a finite real number of at least `minimum` (a bool, NaN or inf included)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (math.isfinite(value) and value >= minimum):
        bound = "" if minimum == -math.inf else f" of at least {minimum}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}.")
