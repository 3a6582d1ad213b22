"""The training loop every chapter uses (taught in chapter 01).

Data come fresh from a task's generator at every step, so there is no dataset to
download and no epoch to overfit. The loop is deterministic under `TrainConfig.seed`
and runs wherever the model's parameters live.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechlearn.models import model_device
from mechlearn.tasks import Task

EvalFn = Callable[[torch.nn.Module, Int[Tensor, "batch pos"]], dict[str, float]]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batch_size: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}.")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr}.")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError("TrainConfig needs warmup_steps >= 0, weight_decay >= 0 and grad_clip > 0.")


def next_token_loss(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    target_mask: Bool[Tensor, "pos_minus_1"] | Bool[Tensor, "batch pos_minus_1"] | None = None,
) -> Float[Tensor, ""]:
    """Mean cross-entropy of predicting token i + 1 from position i, over the masked predictions.

    The mask is one row for every sequence (a task's `target_mask`) or one row per sequence
    (e.g. the repeated tokens of each sequence, `repeated[:, 1:]`).
    """
    log_probs = logits[:, :-1].log_softmax(dim=-1)
    correct_log_probs = log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    if target_mask is not None:
        correct_log_probs = correct_log_probs[target_mask.to(tokens.device).expand_as(correct_log_probs)]
    return -correct_log_probs.mean()


def next_token_accuracy(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    target_mask: Bool[Tensor, "pos_minus_1"] | Bool[Tensor, "batch pos_minus_1"] | None = None,
) -> float:
    """Fraction of masked predictions where the most likely next token is the right one."""
    correct = logits[:, :-1].argmax(dim=-1) == tokens[:, 1:]
    if target_mask is not None:
        correct = correct[target_mask.to(tokens.device).expand_as(correct)]
    return correct.float().mean().item()


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def task_loss(task: Task, logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
    """The task's own `loss` when it has one (Othello grades whole legal-move sets), else next-token cross-entropy."""
    if hasattr(task, "loss"):
        return task.loss(logits, tokens)
    return next_token_loss(logits, tokens, task.target_mask)


def task_accuracy(task: Task, logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> float:
    """The task's own `accuracy` when it has one, else next-token accuracy."""
    if hasattr(task, "accuracy"):
        return task.accuracy(logits, tokens)
    return next_token_accuracy(logits, tokens, task.target_mask)


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, tokens: Int[Tensor, "batch pos"], eval_fn: EvalFn | None) -> dict[str, float]:
    was_training = model.training
    model.eval()
    logits = model(tokens)
    metrics = {
        "eval_loss": task_loss(task, logits, tokens).item(),
        "eval_accuracy": task_accuracy(task, logits, tokens),
    }
    if eval_fn is not None:
        metrics.update(eval_fn(model, tokens))
    model.train(was_training)
    return metrics


def train(
    model: torch.nn.Module,
    task: Task,
    config: TrainConfig = TrainConfig(),
    eval_fn: EvalFn | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train `model` (tokens -> logits) on `task` with AdamW; return the eval history.

    Every `eval_every` steps (and after the last) one record is appended:
    `{"step", "train_loss", "eval_loss", "eval_accuracy", **eval_fn(model, eval_tokens)}`.
    """
    if not isinstance(task, Task):
        raise TypeError(f"train expects a task from mechlearn.tasks, got {type(task).__name__}.")
    device = model_device(model)
    generator = torch.Generator().manual_seed(config.seed)
    eval_tokens = task.sample(config.eval_batch_size, generator).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    model.train()
    bar = tqdm(range(config.steps), desc="training", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        tokens = task.sample(config.batch_size, generator).to(device)
        loss = task_loss(task, model(tokens), tokens)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"The training loss became {loss.item()} at step {step}; lower TrainConfig.lr.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            record = {"step": step + 1, "train_loss": loss.item(), **evaluate(model, task, eval_tokens, eval_fn)}
            history.append(record)
            bar.set_postfix(loss=f"{record['eval_loss']:.3f}", acc=f"{record['eval_accuracy']:.2f}")
    model.eval()
    return history
