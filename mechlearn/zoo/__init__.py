"""Named, pretrained toy models that ship inside the package (introduced in chapter 01).

Each model has a recipe (task, model shape, training settings, seed) and a checkpoint:
`checkpoints/NAME.safetensors` plus a JSON card with the config, the recipe, the final
metrics and the sha256 of the weights. `load(name)` checks the hash; `train(name)`
rebuilds the checkpoint from its recipe, so nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import time
from importlib.metadata import version
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from mechlearn.models import CheckpointError, ModelConfig, load_model, make_model, read_card, save_model
from mechlearn.sampling import generate
from mechlearn.tasks import SortingTask, Task
from mechlearn.train import TrainConfig, next_token_accuracy, next_token_loss, train as train_model

CHECKPOINTS = Path(__file__).parent / "checkpoints"
HELD_OUT_SEED = 10_000  # held-out evaluation data never share a seed with training data


@dataclass(frozen=True)
class Recipe:
    """Everything needed to rebuild a zoo model from nothing."""

    description: str
    chapter: str
    task: Task
    model: ModelConfig
    training: TrainConfig


def _sorter_recipe() -> Recipe:
    task = SortingTask(n_digits=10, length=6)
    return Recipe(
        description="Sorts 6 digits: reads `BOS x1..x6 SEP` and writes the digits in ascending order.",
        chapter="1_foundations/01_transformers_from_scratch",
        task=task,
        model=ModelConfig(d_vocab=task.d_vocab, n_ctx=task.n_ctx, d_model=64, n_layers=2, n_heads=4, d_head=16, d_mlp=256, seed=0),
        training=TrainConfig(steps=1000, batch_size=64, lr=3e-3, eval_every=100, seed=0),
    )


RECIPES: dict[str, Recipe] = {"sort-digits-2l": _sorter_recipe()}


def list_models() -> list[str]:
    """Names of the models in the zoo."""
    return sorted(RECIPES)


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        close = difflib.get_close_matches(str(name), RECIPES, n=1)
        suggestion = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"There is no zoo model called {name!r}.{suggestion} Available: {', '.join(list_models())}.")
    return RECIPES[name]


def card(name: str, directory: Path | None = None) -> dict[str, Any]:
    """The JSON card of a zoo model: config, recipe, metrics, sha256."""
    recipe(name)
    return read_card((directory or CHECKPOINTS) / name)


def load(name: str, device: str | torch.device | None = None, directory: Path | None = None) -> TransformerBridge:
    """A zoo model, ready to use, after verifying its checkpoint against the card's sha256."""
    recipe(name)
    try:
        return load_model((directory or CHECKPOINTS) / name, device=device)
    except CheckpointError as error:
        raise CheckpointError(f"{error} To rebuild it from its recipe, run mechlearn.zoo.train({name!r}).") from None


def train(name: str, directory: Path | None = None, progress: bool = True) -> TransformerBridge:
    """Rebuild a zoo model from its recipe and write its checkpoint and card."""
    rebuilt = recipe(name)
    model = make_model(rebuilt.model)
    start = time.perf_counter()
    history = train_model(model, rebuilt.task, rebuilt.training, progress=progress)
    seconds = time.perf_counter() - start
    card = {
        "name": name,
        "description": rebuilt.description,
        "chapter": rebuilt.chapter,
        "recipe": {
            "task": {"generator": f"mechlearn.tasks.{type(rebuilt.task).__name__}", **dataclasses.asdict(rebuilt.task)},
            "training": dataclasses.asdict(rebuilt.training),
            "data_seed": rebuilt.training.seed,
        },
        "metrics": {**held_out_metrics(model, rebuilt.task), "train_seconds": round(seconds, 1), "threads": torch.get_num_threads()},
        "history": history,
        "versions": {"torch": torch.__version__, "transformer_lens": version("transformer_lens")},
    }
    save_model(model, (directory or CHECKPOINTS) / name, card)
    return model


@torch.no_grad()
def held_out_metrics(model: torch.nn.Module, task: Task, n_sequences: int = 1000) -> dict[str, float]:
    """Loss and accuracy on sequences drawn with a seed training never used."""
    tokens = task.sample(n_sequences, torch.Generator().manual_seed(HELD_OUT_SEED))
    logits = model(tokens)
    metrics = {
        "held_out_loss": round(next_token_loss(logits, tokens, task.target_mask).item(), 5),
        "held_out_token_accuracy": round(next_token_accuracy(logits, tokens, task.target_mask), 5),
    }
    if isinstance(task, SortingTask):
        completions = generate(model, tokens[:, : task.prompt_length], task.length)
        metrics["held_out_sequence_accuracy"] = (completions == tokens).all(dim=-1).float().mean().item()
    return metrics
