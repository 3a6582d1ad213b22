"""Toy transformers: a small config, `make_model`, and save/load with a JSON card.

Every toy model in the course is a TransformerLens 4 `TransformerBridge` built with
`boot_native`, so hook names (`blocks.0.attn.hook_pattern`) and weight names (`W_Q`,
`W_OV`) are the ones used across the field. Taught in chapter 01.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import socket
import types
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import huggingface_hub
import huggingface_hub.constants
import torch
# Importing the transformers source attaches TransformerBridge.boot_transformers.
import transformer_lens.model_bridge.sources.transformers  # noqa: F401
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

from mechlearn.device import available_device
from mechlearn.validation import check_finite, check_same_device, check_token_ids, is_int


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match its card."""


ACTIVATIONS = ("gelu", "relu", "gelu_new", "silu")
ONLINE_FLAG = "MECHLEARN_ONLINE"  # set to "1" to let load_pretrained download a model
NORMALIZATIONS = ("LN", "LNPre", "RMS", None)


def _is_positive_int(value: object) -> bool:
    return is_int(value) and value >= 1


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
            if not _is_positive_int(getattr(self, name)):
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {getattr(self, name)!r}.")
        if self.d_mlp is not None and not _is_positive_int(self.d_mlp):
            raise ValueError(f"ModelConfig.d_mlp must be a positive int or None, got {self.d_mlp!r}.")
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"ModelConfig.act_fn must be one of {ACTIVATIONS}, got {self.act_fn!r}.")
        if self.normalization_type not in NORMALIZATIONS:
            raise ValueError(f"ModelConfig.normalization_type must be one of {NORMALIZATIONS}, got {self.normalization_type!r}.")
        if not is_int(self.seed):
            raise ValueError(f"ModelConfig.seed must be an int, got {self.seed!r}.")

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
    model = TransformerBridge.boot_native(bridge_config, device=None if device is None else available_device(device))
    model.mechlearn_config = config  # so save_model can write the card without guessing
    # An instance attribute, not a forward pre-hook: run_with_cache and run_with_hooks call
    # self.forward directly, and they must check the tokens too.
    model.forward = types.MethodType(_forward_checking_tokens, model)
    return model


def _forward_checking_tokens(self: TransformerBridge, input: Any, *args: Any, **kwargs: Any) -> Any:
    """The bridge's forward, after checking the tokens against the config.

    TransformerLens indexes `W_E` with the ids unchecked: an id outside the vocabulary is a
    bare IndexError on the CPU and a device-side assert that kills the kernel on CUDA.
    A 3-dim float input is a batch of embeddings, which the bridge accepts as they are.
    """
    is_embeddings = isinstance(input, torch.Tensor) and input.is_floating_point() and input.ndim == 3
    if kwargs.get("start_at_layer") is None and not is_embeddings:
        config = self.mechlearn_config
        check_token_ids(input, "tokens", config.d_vocab, config.n_ctx, ndim=(1, 2))
        check_same_device("tokens", input, "the model", model_device(self))
    return type(self).forward(self, input, *args, **kwargs)


def vocab_and_context(model: torch.nn.Module) -> tuple[int | None, int | None]:
    """`(d_vocab, n_ctx)` of a toy bridge, a pretrained bridge or a from-scratch `Transformer`; `None`s when unknown."""
    config = getattr(model, "mechlearn_config", None) or getattr(model, "cfg", None) or getattr(model, "config", None)
    return getattr(config, "d_vocab", None), getattr(config, "n_ctx", None)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's parameters live on."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise ValueError(f"model ({type(model).__name__}) has no parameters, so it has no device to run on.")
    return parameter.device


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_model(model: TransformerBridge, path: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Write `path.safetensors` and a JSON card `path.json` (config, your notes, sha256).

    Returns the path of the card.
    """
    config = getattr(model, "mechlearn_config", None)
    if config is None:
        raise ValueError("save_model needs a model made by mechlearn.models.make_model (it has no ModelConfig).")
    path = _as_path(path).with_suffix("")
    if card is not None and not isinstance(card, dict):
        raise TypeError(f"card must be a dict of notes, got {type(card).__name__}.")
    if card and {"config", "sha256"} & set(card):
        raise ValueError(f"card must not set {sorted({'config', 'sha256'} & set(card))}: save_model writes those from the weights.")
    for name, weight in model.state_dict().items():
        check_finite(weight, f"The model's weight {name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    weights_path = path.with_suffix(".safetensors")
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, weights_path)
    full_card = {"config": config.to_dict(), **(card or {}), "sha256": sha256_of(weights_path)}
    card_path = path.with_suffix(".json")
    card_path.write_text(json.dumps(full_card, indent=2) + "\n")
    return card_path


def _as_path(path: object) -> Path:
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}.")
    return Path(path)


def read_card(path: str | Path) -> dict[str, Any]:
    """The JSON card saved next to a checkpoint."""
    card_path = _as_path(path).with_suffix(".json")
    if not card_path.is_file():
        raise CheckpointError(f"No model card at {card_path}: save the model with mechlearn.models.save_model.")
    try:
        return json.loads(card_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"The model card {card_path} is not valid JSON ({error}); rebuild the checkpoint.") from None


def load_model(path: str | Path, device: str | torch.device | None = None) -> TransformerBridge:
    """Load a checkpoint written by `save_model`, after checking its sha256 against the card."""
    path = _as_path(path).with_suffix("")
    card = read_card(path)
    weights_path = path.with_suffix(".safetensors")
    if not weights_path.is_file():
        raise CheckpointError(f"The weights file {weights_path} is missing; rebuild the checkpoint.")
    if "sha256" not in card:
        raise CheckpointError(f"The card {path.with_suffix('.json')} has no sha256 field to check the weights against; rebuild the checkpoint.")
    if sha256_of(weights_path) != card["sha256"]:
        raise CheckpointError(
            f"{weights_path} does not match the sha256 on its card (the file is corrupted or was "
            "changed); rebuild it."
        )
    try:
        state_dict = load_file(weights_path)
    except SafetensorError as error:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file ({error}); rebuild it.") from None
    model = make_model(_card_config(card, path), device=device)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError:
        raise CheckpointError(f"The weights in {weights_path} do not have the shapes its card's config gives; rebuild it.") from None
    if not all(torch.isfinite(weight).all() for weight in state_dict.values()):
        raise CheckpointError(f"{weights_path} holds NaN or inf weights; rebuild it.")
    model.eval()
    return model


def _card_config(card: dict[str, Any], path: Path) -> ModelConfig:
    """The card's `config` field as a ModelConfig, or a CheckpointError saying what is wrong with it."""
    if not isinstance(card.get("config"), dict):
        raise CheckpointError(f"The card {path.with_suffix('.json')} has no config field; rebuild the checkpoint.")
    try:
        return ModelConfig.from_dict(card["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"The card {path.with_suffix('.json')} has a bad config ({error}); rebuild the checkpoint.") from None


# --- Pretrained models from the Hugging Face hub (optional extras, chapter 02) --------------


class PretrainedUnavailable(RuntimeError):
    """A pretrained model cannot be loaded: no network and no cached copy."""


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the hub could not be reached", from whichever HTTP stacks exist."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    # (module, attribute) pairs imported lazily: huggingface_hub has moved between requests,
    # httpx and httpx2 across versions, and any of them may be absent.
    for module, attribute in (
        ("huggingface_hub.errors", "LocalEntryNotFoundError"),  # offline, or not cached
        ("huggingface_hub.errors", "OfflineModeIsEnabled"),
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests.exceptions", "ConnectionError"),
        ("requests.exceptions", "Timeout"),
    ):
        try:
            types.append(getattr(importlib.import_module(module), attribute))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def _is_network_failure(error: BaseException) -> bool:
    """Whether `error` or anything in its cause/context chain is a network failure.

    transformers wraps hub errors in a plain OSError, and an OSError alone could also mean a
    misspelt repo name, so we look for the network error underneath instead.
    """
    network_errors = _network_error_types()
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, network_errors):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _looks_like_path(name: str) -> bool:
    """Whether `name` is meant as a folder rather than a hub id like "gpt2" or "org/model"."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or Path(name).is_absolute()


def load_pretrained(name: str, device: str | torch.device | None = None, **kwargs: Any) -> TransformerBridge:
    """Load a real pretrained model (e.g. "gpt2") as a `TransformerBridge`.

    Optional: real models are extras, used in the optional sections of chapters 01-03; every
    required exercise runs offline on the toy models in `mechlearn.zoo`. A hub model not yet in
    the local Hugging Face cache is downloaded only when `MECHLEARN_ONLINE=1` is set (no
    default path downloads anything); after that it comes from the cache.
    `name` is a hub id or a folder written by `save_pretrained`; `kwargs` go to
    `TransformerBridge.boot_transformers` (e.g. `dtype`).
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"load_pretrained: name must be a non-empty str, got {name!r}.")
    device = None if device is None else available_device(device)  # before any download
    folder = Path(name).expanduser()
    if folder.exists() or _looks_like_path(name):
        # A local folder: check it up front, since transformers would try the hub with it
        # and report a confusing "Repo id must be in the form ..." error.
        if not folder.is_dir():
            problem = "is not a folder" if folder.exists() else "does not exist"
            raise FileNotFoundError(f"load_pretrained: the folder {str(folder)!r} {problem}.")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"load_pretrained: {str(folder)!r} has no config.json; save a model there with "
                "model.save_pretrained(folder)."
            )
        return TransformerBridge.boot_transformers(str(folder), device=device, **kwargs)
    if not _is_cached(name) and os.environ.get(ONLINE_FLAG) != "1":
        raise PretrainedUnavailable(
            f"{name!r} is not in the local Hugging Face cache, and mechlearn downloads a model only when asked: "
            f"set the environment variable {ONLINE_FLAG}=1 (with a network connection) to fetch it once."
        )
    if not huggingface_hub.constants.HF_HUB_OFFLINE and not _is_cached(name) and not _hub_reachable():
        raise _unavailable(name)  # now, not after the hub client's half a minute of retries
    try:
        return TransformerBridge.boot_transformers(name, device=device, **kwargs)
    except Exception as error:
        if not _is_network_failure(error):
            raise  # e.g. a misspelt repo name: the hub's own message is the clearest
        # `from None`: the chain is pages of HTTP retries that only hide the one fact that matters.
        raise _unavailable(name) from None


def _unavailable(name: str) -> PretrainedUnavailable:
    return PretrainedUnavailable(
        f"Could not load {name!r}: there is no network connection and it is not in the local "
        "Hugging Face cache; the course runs offline on its own toy models, see "
        "mechlearn.zoo.list_models() and mechlearn.zoo.load(name)."
    )


def _is_cached(name: str) -> bool:
    """Whether the hub model `name` has a config in the local Hugging Face cache."""
    return isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a connection to the hub opens within `timeout` seconds."""
    endpoint = urllib.parse.urlsplit(huggingface_hub.constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True
