"""Device choice, seeding and determinism (taught in chapter 01).

Every notebook calls `device()` once and moves models and data there, so the same
notebook runs on a laptop CPU and on a GPU without edits.
"""

from __future__ import annotations

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
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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


def use_deterministic_algorithms(enabled: bool = True) -> None:
    """Ask torch for deterministic kernels, so a GPU run repeats itself exactly.

    CUDA's cuBLAS needs `CUBLAS_WORKSPACE_CONFIG` set for that; we set it when absent.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
