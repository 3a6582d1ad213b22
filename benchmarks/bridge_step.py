"""Time one training step of the TransformerBridge against a plain PyTorch model of the same shape.

A step is forward, backward and AdamW on one batch. Both models have the shape of the
`induction-2l` zoo model and see the same tokens; their steps are interleaved, so a busy
machine slows both alike. We report the median over many steps and the ratio.

    python benchmarks/bridge_step.py              # the machine's threads
    python benchmarks/bridge_step.py --threads 1 --steps 300
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mechlearn import zoo
from mechlearn.models import make_model
from mechlearn.train import next_token_loss
from mechlearn.transformer import Transformer


def step_seconds(model: torch.nn.Module, tokens: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
    """Wall-clock seconds of one forward + backward + AdamW step."""
    start = time.perf_counter()
    loss = next_token_loss(model(tokens), tokens)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per model (after 20 warm-up steps)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's batch size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    recipe = zoo.recipe("induction-2l")
    batch_size = args.batch_size or recipe.training.batch_size
    tokens = recipe.task.sample(batch_size, torch.Generator().manual_seed(0))
    models = {"bridge": make_model(recipe.model), "plain": Transformer(recipe.model)}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-3) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for step in range(20 + args.steps):
        for name, model in models.items():
            seconds = step_seconds(model, tokens, optimizers[name])
            if step >= 20:
                times[name].append(seconds)

    config = recipe.model
    print(
        f"shape: {config.n_layers} layers, {config.n_heads} heads x {config.d_head}, d_model {config.d_model}, "
        f"attention-only={config.attn_only}, batch {batch_size} x {config.n_ctx} tokens; "
        f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps each"
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"{name:>6}: median {1000 * median:.2f} ms/step (p10 {1000 * _quantile(times[name], 0.1):.2f}, p90 {1000 * _quantile(times[name], 0.9):.2f})")
    print(f"bridge / plain: {medians['bridge'] / medians['plain']:.2f}")


def _quantile(values: list[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))]


if __name__ == "__main__":
    main()
