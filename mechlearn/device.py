"""Device choice, seeding and determinism (taught in chapter 01).

Every notebook calls `device()` once and moves models and data there, so the same
notebook runs on a laptop CPU and on a GPU without edits.

Random draws in the library come from `generator_for(stream, seed)`: one stream per purpose
(an SAE's initial decoder, a planted dictionary, a probe's validation split, ...), so equal
seeds never make two independent things share random numbers. Otherwise an SAE seeded 0
would start on exactly the planted dictionary seeded 0 that it is meant to find. The
exceptions, such as the token stream the zoo's checkpoints were trained on, are listed with
their reasons in `tests/test_randomness.py`.
"""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch


def device() -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU.

    Set the environment variable `MECHLEARN_DEVICE` (e.g. to `cpu`) to override.
    """
    forced = os.environ.get("MECHLEARN_DEVICE")
    if forced:
        return _available_device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _has_mps():
        return torch.device("mps")
    return torch.device("cpu")


def _has_mps() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def _available_device(name: str) -> torch.device:
    """`MECHLEARN_DEVICE` as a torch device, refused in one sentence if it is not a device or not on this machine."""
    return available_device(name, "MECHLEARN_DEVICE", "unset it to let mechlearn choose")


def available_device(value: str | torch.device, name: str = "device", fix: str = "pass mechlearn.device.device() instead") -> torch.device:
    """`value` as a torch device on this machine, else one sentence naming `name` (`device="cuad"`, CUDA on a laptop)."""
    if not isinstance(value, (str, torch.device)):
        raise TypeError(f"{name} must be a str or torch.device, got {type(value).__name__}.")
    try:
        chosen = torch.device(value)
    except RuntimeError:
        raise ValueError(f"{name}={value!r} is not a device torch knows; use cpu, cuda, cuda:1 or mps.") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (chosen.index or 0) < torch.cuda.device_count(),
        "mps": _has_mps(),
    }
    if not available.get(chosen.type, False):
        raise ValueError(f"{name}={value!r}, but this machine has no such device; {fix}.")
    return chosen


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and return a torch generator seeded the same way.

    Pass the generator to data samplers so the data stream does not depend on how many
    random numbers model code happened to draw.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}.")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def generator_for(stream: str, seed: int, device: str | torch.device | None = None) -> torch.Generator:
    """A torch generator for one purpose: the same `(stream, seed)` repeats, different streams are independent.

    `stream` names what the numbers are for (`"sae.init"`, `"sparse_features.dictionary"`);
    the generator is seeded with a hash of the stream and the seed, so `generator_for("a", 0)`
    and `generator_for("b", 0)` share nothing, and neither matches `torch.Generator().manual_seed(0)`.
    """
    if not isinstance(stream, str) or not stream:
        raise ValueError(f"stream must be a non-empty string naming what the random numbers are for, got {stream!r}.")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}.")
    digest = hashlib.blake2b(f"{stream}/{seed}".encode(), digest_size=8).digest()
    return torch.Generator(device).manual_seed(int.from_bytes(digest, "little") >> 1)  # 63 bits: a non-negative int64


def use_deterministic_algorithms(enabled: bool = True) -> None:
    """Ask torch for deterministic kernels, so a GPU run repeats itself exactly.

    CUDA's cuBLAS needs `CUBLAS_WORKSPACE_CONFIG` set for that; we set it when absent.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
