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

from mechlearn.models import model_device, vocab_and_context
from mechlearn.tasks import Task
from mechlearn.validation import check_finite, check_positive_int, check_same_device, check_tensor, check_token_ids, describe, is_int, is_number

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
            check_positive_int(getattr(self, name), f"TrainConfig.{name}")
        if not is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be an int >= 0, got {self.warmup_steps!r}.")
        if not is_int(self.seed):
            raise ValueError(f"TrainConfig.seed must be an int, got {self.seed!r}.")
        for name, zero_ok in (("lr", False), ("weight_decay", True), ("grad_clip", False)):
            value = getattr(self, name)
            if not (is_number(value) and (0 < value < math.inf or (zero_ok and value == 0))):
                kind = "non-negative" if zero_ok else "positive"
                raise ValueError(f"TrainConfig.{name} must be a {kind} finite number, got {value!r}.")


def next_token_loss(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    target_mask: Bool[Tensor, "pos_minus_1"] | Bool[Tensor, "batch pos_minus_1"] | None = None,
) -> Float[Tensor, ""]:
    """Mean cross-entropy of predicting token i + 1 from position i, over the masked predictions.

    The mask is one row for every sequence (a task's `target_mask`) or one row per sequence
    (e.g. the repeated tokens of each sequence, `repeated[:, 1:]`).
    """
    _check_next_token_args(logits, tokens, target_mask)
    return _next_token_loss(logits, tokens, target_mask)


def next_token_accuracy(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    target_mask: Bool[Tensor, "pos_minus_1"] | Bool[Tensor, "batch pos_minus_1"] | None = None,
) -> float:
    """Fraction of masked predictions where the most likely next token is the right one."""
    _check_next_token_args(logits, tokens, target_mask)
    correct = logits[:, :-1].argmax(dim=-1) == tokens[:, 1:]
    if target_mask is not None:
        correct = correct[target_mask.to(tokens.device).expand_as(correct)]
    return correct.float().mean().item()


def _next_token_loss(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    target_mask: Bool[Tensor, "pos_minus_1"] | Bool[Tensor, "batch pos_minus_1"] | None,
) -> Float[Tensor, ""]:
    """`next_token_loss` without its checks, for the training loop, which checks its first batch only."""
    log_probs = logits[:, :-1].log_softmax(dim=-1)
    correct_log_probs = log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    if target_mask is not None:
        correct_log_probs = correct_log_probs[target_mask.to(tokens.device).expand_as(correct_log_probs)]
    return -correct_log_probs.mean()


def _check_next_token_args(logits: Tensor, tokens: Tensor, target_mask: Tensor | None, finite: bool = True) -> None:
    """Refuse what would otherwise give a raw gather error, a nan (an empty mask) or a wrong number."""
    check_tensor(logits, "logits", 3, floating=True)
    check_token_ids(tokens, "tokens", logits.shape[-1])
    check_same_device("tokens", tokens, "logits", logits)
    if tokens.shape != logits.shape[:2]:
        raise ValueError(f"tokens must have the logits' [batch pos] shape {tuple(logits.shape[:2])}, got {describe(tokens)}.")
    if tokens.shape[1] < 2:
        raise ValueError(f"tokens must have at least 2 positions (one to predict from, one to predict), got {describe(tokens)}.")
    if finite:
        check_finite(logits, "logits")
    if target_mask is None:
        return
    predictions = (tokens.shape[0], tokens.shape[1] - 1)
    if not isinstance(target_mask, Tensor) or target_mask.dtype != torch.bool:
        raise TypeError(f"target_mask must be a bool tensor, got {describe(target_mask)}.")
    check_tensor(target_mask, "target_mask", (1, 2), floating=False)
    if target_mask.shape not in (predictions[1:], predictions):
        raise ValueError(f"target_mask must have shape {predictions[1:]} or {predictions} (one entry per prediction), got {describe(target_mask)}.")
    if not target_mask.any():
        raise ValueError("target_mask is all False, so there is no prediction to average over.")


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if not is_int(step) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}.")
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def task_loss(task: Task, logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
    """The task's own `loss` when it has one (Othello grades whole legal-move sets), else next-token cross-entropy."""
    _check_task_args(task, logits, tokens)
    return _task_loss(task, logits, tokens)


def _task_loss(task: Task, logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
    """`task_loss` without the next-token checks, for the training loop, which checks its first batch only."""
    return task.loss(logits, tokens) if hasattr(task, "loss") else _next_token_loss(logits, tokens, task.target_mask)


def _check_task(task: object) -> None:
    if not isinstance(task, Task):
        raise TypeError(f"task must be a task from mechlearn.tasks, got {type(task).__name__}.")


def _check_task_args(task: object, logits: Tensor, tokens: Tensor, finite: bool = True) -> None:
    """A task's own `loss` and `accuracy` check their arguments; next-token ones are checked here."""
    _check_task(task)
    if not hasattr(task, "loss"):
        _check_next_token_args(logits, tokens, task.target_mask, finite)


def task_accuracy(task: Task, logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> float:
    """The task's own `accuracy` when it has one, else next-token accuracy."""
    _check_task(task)
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
    _check_train_args(model, task, config, eval_fn)
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
        logits = model(tokens)
        if step == 0:  # later batches come from the same sampler; a nan loss is reported below with its likely cause
            _check_task_args(task, logits, tokens, finite=False)
        loss = _task_loss(task, logits, tokens)
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


def _check_train_args(model: torch.nn.Module, task: Task, config: TrainConfig, eval_fn: EvalFn | None) -> None:
    """Refuse, before the first step, a model that cannot read the task or a run that cannot start."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}.")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be None or a function (model, tokens) -> dict, got {type(eval_fn).__name__}.")
    d_vocab, n_ctx = vocab_and_context(model)
    if d_vocab is not None and task.d_vocab > d_vocab:
        raise ValueError(f"task has d_vocab={task.d_vocab} but the model only {d_vocab}; make the model with the task's d_vocab.")
    if n_ctx is not None and task.n_ctx > n_ctx:
        raise ValueError(f"task has n_ctx={task.n_ctx} but the model only {n_ctx}; make the model with the task's n_ctx.")
    for name, parameter in model.named_parameters():
        check_finite(parameter.detach(), f"The model's parameter {name}")
