"""Named, pretrained toy models that ship inside the package (introduced in chapter 01).

Each model has a recipe (task, model shape, training settings, seed; see `recipes.py`) and a checkpoint:
`checkpoints/NAME.safetensors` plus a JSON card with the config, the recipe, the final
metrics and the sha256 of the weights. `load(name)` checks the hash; `train(name)`
rebuilds the checkpoint from its recipe, so nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from mechlearn.models import CheckpointError, load_model, make_model, model_device, read_card, save_model
from mechlearn.sampling import generate
from mechlearn.tasks import SortingTask, Task
from mechlearn.train import task_accuracy, task_loss, train as train_model
from mechlearn.validation import check_positive_int
from mechlearn.zoo.recipes import RECIPES, Recipe

# What the chapters use from the recipes: their tasks, held-out data and the score chapter 03 asserts.
from mechlearn.zoo.recipes import (  # noqa: F401
    FIXED_OFFSET_TASK,
    HELD_OUT_SEED,
    INDUCTION_SCORE_TARGET,
    INDUCTION_TASK,
    OTHELLO_TASK,
    held_out_labelled,
)

CHECKPOINTS = Path(__file__).parent / "checkpoints"




def list_models() -> list[str]:
    """Names of the models in the zoo."""
    return sorted(RECIPES)


def recipe(name: str) -> Recipe:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str naming a zoo model (see mechlearn.zoo.list_models()), got {type(name).__name__}.")
    if name not in RECIPES:
        close = difflib.get_close_matches(str(name), RECIPES, n=1)
        suggestion = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"There is no zoo model called {name!r}.{suggestion} Available: {', '.join(list_models())}.")
    return RECIPES[name]


def card(name: str, directory: Path | None = None) -> dict[str, Any]:
    """The JSON card of a zoo model: config, recipe, metrics, sha256."""
    recipe(name)
    return read_card(_checkpoint_path(name, directory))


def _checkpoint_path(name: str, directory: str | Path | None) -> Path:
    if directory is not None and not isinstance(directory, (str, Path)):
        raise TypeError(f"directory must be a folder path or None, got {type(directory).__name__}.")
    return Path(directory or CHECKPOINTS) / name


def load(name: str, device: str | torch.device | None = None, directory: Path | None = None) -> TransformerBridge:
    """A zoo model, ready to use, after verifying its checkpoint against the card's sha256 and its recipe."""
    expected = recipe(name).model.to_dict()
    try:
        model = load_model(_checkpoint_path(name, directory), device=device)
        if model.mechlearn_config.to_dict() != expected:
            raise CheckpointError(f"The card of {name!r} gives a config other than its recipe's, so the checkpoint is stale")
    except CheckpointError as error:
        raise CheckpointError(f"{str(error).rstrip('.')} (to rebuild it from its recipe, run mechlearn.zoo.train({name!r})).") from None
    return model


def train(name: str, directory: Path | None = None, progress: bool = True, device: str | torch.device | None = None) -> TransformerBridge:
    """Rebuild a zoo model from its recipe and write its checkpoint and card (on the CPU unless `device` says otherwise)."""
    rebuilt = recipe(name)
    _checkpoint_path(name, directory)  # refused now, not after the training
    model = make_model(rebuilt.model, device)
    eval_fn = rebuilt.monitor() if rebuilt.monitor else None
    start = time.perf_counter()
    history = train_model(model, rebuilt.task, rebuilt.training, eval_fn=eval_fn, progress=progress)
    save_trained(name, model, history, time.perf_counter() - start, directory)
    return model


def save_trained(name: str, model: TransformerBridge, history: list[dict[str, float]], seconds: float, directory: Path | None = None) -> Path:
    """Write the checkpoint and card of a model just trained from `name`'s recipe; returns the card's path.

    `train` calls this; it is separate so that a long run (e.g. on another machine) can be
    trained with the recipe's settings and carded afterwards. Leaves the model on the CPU.
    """
    rebuilt = recipe(name)
    trained_on = str(model_device(model))
    model.to("cpu")  # the card's numbers are measured, and the weights saved, on the CPU
    extra_metrics = rebuilt.card_metrics(model, history) if rebuilt.card_metrics else {}
    card = {
        "name": name,
        "description": rebuilt.description,
        "chapter": rebuilt.chapter,
        "recipe": {
            "task": {"generator": f"mechlearn.tasks.{type(rebuilt.task).__name__}", **dataclasses.asdict(rebuilt.task)},
            "training": dataclasses.asdict(rebuilt.training),
            "data_seed": rebuilt.training.seed,
            "held_out_seed": HELD_OUT_SEED,
        },
        "metrics": {
            **held_out_metrics(model, rebuilt.task),
            **extra_metrics,
            "train_seconds": round(seconds, 1),
            "device": trained_on,
            "threads": torch.get_num_threads(),
        },
        "history": history,
        "versions": {"torch": torch.__version__, "transformer_lens": version("transformer_lens")},
    }
    return save_model(model, _checkpoint_path(name, directory), card)


@torch.no_grad()
def held_out_metrics(model: torch.nn.Module, task: Task, n_sequences: int = 1000) -> dict[str, float]:
    """Loss and accuracy on sequences drawn with a seed training never used."""
    check_positive_int(n_sequences, "n_sequences")
    tokens = task.sample(n_sequences, torch.Generator().manual_seed(HELD_OUT_SEED))
    logits = model(tokens)
    metrics = {
        "held_out_loss": round(task_loss(task, logits, tokens).item(), 5),
        "held_out_token_accuracy": round(task_accuracy(task, logits, tokens), 5),
    }
    if isinstance(task, SortingTask):
        completions = generate(model, tokens[:, : task.prompt_length], task.length)
        metrics["held_out_sequence_accuracy"] = (completions == tokens).all(dim=-1).float().mean().item()
    return metrics
