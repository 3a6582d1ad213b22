"""Toy transformers: a small config, `make_model`, and save/load with a JSON card.

Every toy model in the course is a TransformerLens 4 `TransformerBridge` built with
`boot_native`, so hook names (`blocks.0.attn.hook_pattern`) and weight names (`W_Q`,
`W_OV`) are the ones used across the field. Taught in chapter 01.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match its card."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The shape of a toy transformer. Names follow TransformerLens."""

    d_vocab: int
    n_ctx: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_head: int = 16
    d_mlp: int | None = 256  # None means attention-only
    act_fn: Literal["gelu", "relu", "gelu_new", "silu"] = "gelu"
    normalization_type: Literal["LN", "LNPre", "RMS"] | None = "LN"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_vocab", "n_ctx", "d_model", "n_layers", "n_heads", "d_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}.")
        if self.d_mlp is not None and (not isinstance(self.d_mlp, int) or self.d_mlp < 1):
            raise ValueError(f"ModelConfig.d_mlp must be a positive int or None, got {self.d_mlp!r}.")

    @property
    def attn_only(self) -> bool:
        return self.d_mlp is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "ModelConfig":
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown ModelConfig fields {sorted(unknown)}.")
        return cls(**fields)


def make_model(config: ModelConfig, device: str | torch.device | None = None) -> TransformerBridge:
    """A randomly initialised `TransformerBridge` of this shape (seeded by `config.seed`)."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"make_model expects a ModelConfig, got {type(config).__name__}.")
    bridge_config = TransformerBridgeConfig(
        d_vocab=config.d_vocab,
        n_ctx=config.n_ctx,
        d_model=config.d_model,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        d_head=config.d_head,
        d_mlp=config.d_mlp,
        attn_only=config.attn_only,
        act_fn=config.act_fn,
        normalization_type=config.normalization_type,
        seed=config.seed,
    )
    model = TransformerBridge.boot_native(bridge_config, device=device)
    model.mechlearn_config = config  # so save_model can write the card without guessing
    return model


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's parameters live on."""
    return next(model.parameters()).device


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_model(model: TransformerBridge, path: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Write `path.safetensors` and a JSON card `path.json` (config, your notes, sha256).

    Returns the path of the card.
    """
    config = getattr(model, "mechlearn_config", None)
    if config is None:
        raise ValueError("save_model needs a model made by mechlearn.models.make_model (it has no ModelConfig).")
    path = Path(path).with_suffix("")
    path.parent.mkdir(parents=True, exist_ok=True)
    weights_path = path.with_suffix(".safetensors")
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, weights_path)
    full_card = {"config": config.to_dict(), **(card or {}), "sha256": sha256_of(weights_path)}
    card_path = path.with_suffix(".json")
    card_path.write_text(json.dumps(full_card, indent=2) + "\n")
    return card_path


def read_card(path: str | Path) -> dict[str, Any]:
    """The JSON card saved next to a checkpoint."""
    card_path = Path(path).with_suffix(".json")
    if not card_path.is_file():
        raise CheckpointError(f"No model card at {card_path}: save the model with mechlearn.models.save_model.")
    try:
        return json.loads(card_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"The model card {card_path} is not valid JSON ({error}); rebuild the checkpoint.") from None


def load_model(path: str | Path, device: str | torch.device | None = None) -> TransformerBridge:
    """Load a checkpoint written by `save_model`, after checking its sha256 against the card."""
    path = Path(path).with_suffix("")
    card = read_card(path)
    weights_path = path.with_suffix(".safetensors")
    if not weights_path.is_file():
        raise CheckpointError(f"The weights file {weights_path} is missing; rebuild the checkpoint.")
    if sha256_of(weights_path) != card.get("sha256"):
        raise CheckpointError(
            f"{weights_path} does not match the sha256 on its card (the file is corrupted or was "
            "changed); rebuild it."
        )
    try:
        state_dict = load_file(weights_path)
    except SafetensorError as error:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file ({error}); rebuild it.") from None
    model = make_model(ModelConfig.from_dict(card["config"]), device=device)
    model.load_state_dict(state_dict)
    model.eval()
    return model
