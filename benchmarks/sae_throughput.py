"""Train the same SAE with mechlearn.sae and with SAELens on the same activations; compare speed and quality.

The activations are the residual stream of the `othello-6x6-4l` zoo model before block 2
(`blocks.2.hook_resid_pre`, d_model 128) at every position still in play of random games,
scaled to a mean norm of sqrt(d_model) (SAELens's "expected_average_only_in"), cached once
to a temporary file that both trainers read. Both train an SAE of the same kind and size
with Adam at the same learning rate, batch size and number of steps; everything else is
each library's own recipe (see the README).

SAELens pins TransformerLens < 4, so it runs in its own environment,
`benchmarks/.venv-saelens`, which this script creates on first use (about 2 GB, a minute
or two) and reuses. Its side runs in a subprocess of that environment (this same file,
with `--saelens-worker`), which writes its timing as JSON and its trained weights; this
is why the mechlearn imports sit inside the functions that need them.

Speed: activations per second over a whole training run, timed after a short warm-up
run of the same trainer. Compute: the FLOPs each trainer computes in a step (see
`Run.flops_per_step`: a dense step needs 5 matmuls of 2 * batch * d_in * d_sae FLOPs; SAELens
computes 6, mechlearn's TopK step, which decodes only the k active latents, fewer), compared
with the FLOP/s of a large fp32 matmul timed in the same run, and, labelled as such, the
dense-equivalent FLOP/s (5 matmuls a step whatever is computed). Quality at equal compute: explained
variance and L0 of both trained SAEs on activations from other games, both measured by
mechlearn.sae.

Every batch size (`--batch-sizes`, 1024 and 4096 by default) gets its own round of runs: in
each repeat, every kind's mechlearn run and SAELens run, one after the other, so that a busy
spell of the machine tends to slow them all. Besides mechlearn against SAELens, this prints
mechlearn's TopK against its ReLU at each batch size (same d_sae, batch and threads).

    python benchmarks/sae_throughput.py                  # ReLU and TopK at batch 1024 and 4096, 2 threads
    python benchmarks/sae_throughput.py --no-saelens --repeats 3        # mechlearn's TopK / ReLU only
    python benchmarks/sae_throughput.py --kinds relu --batch-sizes 4096 --steps 100 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SAELENS_ENV = Path(__file__).resolve().parent / ".venv-saelens"
HOOK_NAME = "blocks.2.hook_resid_pre"
PEAK_MATMUL_SIZE = 4096
SPEEDUP_GOAL = 1.5
PEAK_FRACTION_GOAL = 0.5
TOPK_OVER_RELU_GOAL = 1.0
ACTIVATIONS_PER_RUN = 200 * 4096  # a timed run's default length: 200 steps at batch 4096, 800 at 1024


@dataclasses.dataclass(frozen=True)
class Run:
    """What both trainers are asked to do: train one SAE from scratch."""

    kind: str  # "relu" (ReLU + L1 penalty) or "topk"
    d_in: int
    d_sae: int
    k: int
    l1_coefficient: float
    lr: float
    batch_size: int
    steps: int
    warmup_steps: int
    seed: int
    threads: int

    @property
    def matmul_flops(self) -> int:
        """One [batch d_in] x [d_in d_sae]-sized matmul: 2 * batch * d_in * d_sae FLOPs."""
        return 2 * self.batch_size * self.d_in * self.d_sae

    @property
    def dense_flops_per_step(self) -> int:
        """5 such matmuls: what a step computes when it decodes all d_sae latents.

        They are the encoder and decoder forward, then the gradients of the decoder's weights and input and of
        the encoder's weights. Nothing needs the gradient of the data, so the usual "backward = 2 forwards"
        would count one matmul too many.
        """
        return 5 * self.matmul_flops

    def flops_per_step(self, trainer: str) -> int:
        """The FLOPs that `trainer` ("mechlearn" or "saelens") computes in one step.

        mechlearn's ReLU step computes the dense step's 5 matmuls. Its TopK step works on the k active
        latents of each input: 1 of those matmuls (the encoder forward, whose output `topk` needs whole) and
        4 products of 2 * batch * k * d_in FLOPs (the decoder forward, the k entries per input of the
        decoder's input gradient, and the weight gradients of decoder and encoder). SAELens decodes densely
        and subtracts b_dec from its input before encoding, so its backward also computes the encoder input's
        gradient (for b_dec's): 6 matmuls.
        """
        if trainer == "saelens":
            return 6 * self.matmul_flops
        if self.kind == "topk":
            return self.matmul_flops + 4 * 2 * self.batch_size * self.k * self.d_in
        return self.dense_flops_per_step


# The SAELens side: runs in benchmarks/.venv-saelens, where mechlearn cannot be imported.


def saelens_worker(spec_path: Path) -> None:
    """Train with SAELens's own `SAETrainer.fit`, as the JSON at `spec_path` says; write the seconds and the weights."""
    from sae_lens import __version__
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.standard_sae import (
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
    )
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    spec = json.loads(spec_path.read_text())
    run = Run(**spec["run"])
    torch.set_num_threads(run.threads)
    activations = torch.load(spec["activations"])

    def train(steps: int) -> tuple[float, torch.nn.Module]:
        torch.manual_seed(run.seed)  # SAELens initialises its weights from the global generator
        if run.kind == "relu":
            sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=run.d_in, d_sae=run.d_sae, l1_coefficient=run.l1_coefficient))
        else:
            sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=run.d_in, d_sae=run.d_sae, k=run.k))
        config = SAETrainerConfig(
            total_training_samples=steps * run.batch_size,
            train_batch_size_samples=run.batch_size,
            lr=run.lr,
            lr_end=run.lr / 10,  # required, though the constant schedule ignores it; SAELens's runner sets it so
            logger=LoggingConfig(log_to_wandb=False),  # no wandb, hence no evals; no checkpoints by default
        )
        generator = torch.Generator().manual_seed(run.seed)
        # Batches drawn with replacement, as mechlearn's trainer draws them, so both time the same sampling.
        batches = (activations[torch.randint(len(activations), (run.batch_size,), generator=generator)] for _ in itertools.count())
        start = time.perf_counter()
        SAETrainer(cfg=config, sae=sae, data_provider=batches).fit()
        return time.perf_counter() - start, sae

    train(run.warmup_steps)
    seconds, sae = train(run.steps)
    weights = sae.state_dict()
    sae.process_state_dict_for_saving_inference(weights)  # TopK: folds the decoder norms into the encoder
    torch.save({name: weights[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}, spec["weights"])
    Path(spec["result"]).write_text(json.dumps({"seconds": seconds, "version": __version__}))


# The mechlearn side: runs in the main environment.


def saelens_python() -> Path:
    """The Python of the SAELens environment, created on first use with the same torch as this one."""
    python = SAELENS_ENV / "bin" / "python"
    has_saelens = "import importlib.util, sys; sys.exit(importlib.util.find_spec('sae_lens') is None)"
    if python.exists() and subprocess.run([python, "-c", has_saelens], check=False).returncode == 0:
        return python
    print(f"Creating the SAELens environment in {SAELENS_ENV} (once; a minute or two) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", SAELENS_ENV], check=True)
    # torch first, pinned to ours: left to itself, pip would pull a CUDA build of several GB.
    for requirement in (f"torch=={torch.__version__.split('+')[0]}", "sae-lens"):
        subprocess.run([python, "-m", "pip", "install", "--quiet", requirement], check=True)
    return python


def cache_activations(n_rows: int, seed: int) -> torch.Tensor:
    """`n_rows` residual-stream vectors at `HOOK_NAME` of the Othello model, scaled to mean norm sqrt(d_model)."""
    from mechlearn import zoo
    from mechlearn.tasks import OthelloTask

    model = zoo.load("othello-6x6-4l")
    task = OthelloTask()
    generator = torch.Generator().manual_seed(seed)
    chunks, n = [], 0
    with torch.no_grad():
        while n < n_rows:
            tokens = task.sample(4096, generator)
            _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == HOOK_NAME)
            chunks.append(cache[HOOK_NAME][task.replay(tokens).in_play])
            n += len(chunks[-1])
    rows = torch.cat(chunks)[:n_rows]
    return rows * (math.sqrt(rows.shape[1]) / rows.norm(dim=1).mean())


def peak_flops(size: int = PEAK_MATMUL_SIZE, repeats: int = 10) -> float:
    """FLOP/s of the fastest of `repeats` fp32 [size size] @ [size size] matmuls (after one untimed)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def mechlearn_sae(run: Run, steps: int) -> torch.nn.Module:
    """A fresh mechlearn SAE for `run`, configured to train for `steps` steps."""
    from mechlearn.sae import SAE, SAEConfig

    return SAE(SAEConfig(
        d_in=run.d_in, d_sae=run.d_sae, kind=run.kind, k=run.k, l1_coefficient=run.l1_coefficient, lr=run.lr,
        batch_size=run.batch_size, steps=steps, seed=run.seed,
        lr_decay=0.0, normalize_activations=False,  # as SAELens here: a constant lr, on activations scaled once beforehand
    ))


def train_mechlearn(run: Run, activations: torch.Tensor) -> tuple[float, torch.nn.Module]:
    """Seconds of `train_sae` for `run.steps` steps (after a warm-up run), and the trained SAE."""
    from mechlearn.sae import train_sae

    train_sae(mechlearn_sae(run, run.warmup_steps), activations, progress=False)
    sae = mechlearn_sae(run, run.steps)
    start = time.perf_counter()
    train_sae(sae, activations, progress=False)
    return time.perf_counter() - start, sae


def train_saelens(run: Run, python: Path, activations_path: Path) -> tuple[float, str, torch.nn.Module]:
    """Seconds of SAELens's `SAETrainer.fit` for `run.steps` steps, SAELens's version, and its SAE as a mechlearn SAE."""
    directory = activations_path.parent
    spec = {
        "run": dataclasses.asdict(run),
        "activations": str(activations_path),
        "weights": str(directory / "saelens-weights.pt"),
        "result": str(directory / "saelens-result.json"),
    }
    spec_path = directory / "saelens-spec.json"
    spec_path.write_text(json.dumps(spec))
    subprocess.run([python, __file__, "--saelens-worker", spec_path], check=True, env={**os.environ, "TQDM_DISABLE": "1"})
    result = json.loads(Path(spec["result"]).read_text())
    # The same parameter names and, with the decoder norms folded in, the same forward pass.
    sae = mechlearn_sae(run, run.steps)
    sae.load_state_dict(torch.load(spec["weights"]))
    return result["seconds"], result["version"], sae


def quality(sae: torch.nn.Module, held_out: torch.Tensor) -> dict[str, float]:
    """Explained variance and L0 on `held_out`."""
    from mechlearn.sae import explained_variance, l0

    with torch.no_grad():
        reconstruction, latents = sae(held_out)
    return {"explained_variance": round(explained_variance(held_out, reconstruction), 4), "l0": round(l0(latents), 2)}


def compare(runs: list[Run], repeats: int, python: Path | None, activations: torch.Tensor, activations_path: Path,
            held_out: torch.Tensor) -> list[dict]:
    """Train every run with mechlearn and (unless `python` is None) SAELens `repeats` times, alternating all of them.

    The fastest of the repeats counts (all train the same SAE). `activations_path` holds `activations`, for the
    SAELens side. One dict per run: each trainer's seconds, speed, compute and quality, and mechlearn's speedup.
    """
    trainers = ("mechlearn", "saelens") if python else ("mechlearn",)
    seconds = {(run.kind, name): [] for run in runs for name in trainers}
    trained, versions = {}, {}
    for _ in range(repeats):  # alternating, so that a busy spell of the machine tends to slow all of them
        for run in runs:
            run_seconds, trained[run.kind, "mechlearn"] = train_mechlearn(run, activations)
            seconds[run.kind, "mechlearn"].append(round(run_seconds, 2))
            if python:
                run_seconds, versions[run.kind], trained[run.kind, "saelens"] = train_saelens(run, python, activations_path)
                seconds[run.kind, "saelens"].append(round(run_seconds, 2))
    comparisons = []
    for run in runs:
        comparison = {"kind": run.kind, "batch_size": run.batch_size, "steps": run.steps, "sae_lens_version": versions.get(run.kind)}
        for name in trainers:
            fastest = min(seconds[run.kind, name])
            comparison[name] = {
                "seconds": seconds[run.kind, name],
                "activations_per_s": round(run.steps * run.batch_size / fastest),
                "flops_per_s": run.steps * run.flops_per_step(name) / fastest,
                "dense_equivalent_flops_per_s": run.steps * run.dense_flops_per_step / fastest,
                **quality(trained[run.kind, name], held_out),
            }
        if python:
            comparison["speedup"] = round(comparison["mechlearn"]["activations_per_s"] / comparison["saelens"]["activations_per_s"], 2)
        comparisons.append(comparison)
    return comparisons


def topk_over_relu(comparisons: list[dict]) -> dict[int, float]:
    """mechlearn's TopK activations/s over its ReLU activations/s, per batch size where both kinds ran."""
    speed = {(c["batch_size"], c["kind"]): c["mechlearn"]["activations_per_s"] for c in comparisons}
    return {batch: round(speed[batch, "topk"] / speed[batch, "relu"], 2)
            for batch in sorted({batch for batch, _ in speed}) if (batch, "relu") in speed and (batch, "topk") in speed}


def print_table(report: dict) -> None:
    run, comparisons = report["run"], report["comparisons"]
    saelens = next((c["sae_lens_version"] for c in comparisons if c["sae_lens_version"]), None)
    print(f"torch {report['torch']}, SAELens {saelens or '(not run)'}, {run['threads']} threads; "
          f"fp32 matmul peak ({PEAK_MATMUL_SIZE}x{PEAK_MATMUL_SIZE}): {report['peak_flops_per_s'] / 1e9:.1f} GFLOP/s")
    print(f"SAE {run['d_in']} -> {run['d_sae']}, lr {run['lr']}, L1 coefficient {run['l1_coefficient']} (relu), "
          f"k {run['k']} (topk); {report['rows']} training activations, {report['held_out_rows']} held out")
    print(f"load average (1 min) before: {report['load_average_before']:.2f}, after: {report['load_average_after']:.2f}")
    peak = report["peak_flops_per_s"]
    print(f"{'batch':>5} {'steps':>5} {'kind':<5} {'trainer':<10} {'act/s':>8} {'GFLOP/s':>8} {'of peak':>8} {'dense-eq.':>9} "
          f"{'expl. var':>9} {'L0':>7}  seconds per run")
    for comparison in comparisons:
        for name in ("mechlearn", "saelens"):
            if name not in comparison:
                continue
            row = comparison[name]
            print(f"{comparison['batch_size']:>5} {comparison['steps']:>5} {comparison['kind']:<5} {name:<10} "
                  f"{row['activations_per_s']:>8} {row['flops_per_s'] / 1e9:>8.1f} "
                  f"{row['flops_per_s'] / peak:>8.0%} {row['dense_equivalent_flops_per_s'] / peak:>9.0%} "
                  f"{row['explained_variance']:>9.3f} {row['l0']:>7.1f}  " + ", ".join(f"{seconds:.1f}" for seconds in row["seconds"]))
    print("GFLOP/s and 'of peak' count the FLOPs each trainer computes (see Run.flops_per_step); 'dense-eq.' counts "
          "the 5 dense matmuls a step needs, whatever it computes")
    for comparison in comparisons:
        line = f"batch {comparison['batch_size']}, {comparison['kind']}: "
        if "speedup" in comparison:
            line += f"mechlearn / SAELens = {comparison['speedup']:.2f}x (goal >= {SPEEDUP_GOAL}x); "
        print(line + f"mechlearn at {comparison['mechlearn']['flops_per_s'] / peak:.0%} of peak (goal >= {PEAK_FRACTION_GOAL:.0%})")
    for batch, ratio in report["topk_over_relu"].items():
        print(f"batch {batch}: mechlearn TopK / ReLU activations/s = {ratio:.2f}x (goal >= {TOPK_OVER_RELU_GOAL}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", choices=("relu", "topk"), default=["relu", "topk"], help="SAE kinds to compare")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--rows", type=int, default=200_000, help="cached training activations")
    parser.add_argument("--held-out-rows", type=int, default=20_000, help="activations from other games, for quality")
    parser.add_argument("--d-sae", type=int, default=1024, help="latents (d_in is 128)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096], help="one round of runs each")
    parser.add_argument("--steps", type=int, help=f"training steps of a timed run (default: {ACTIVATIONS_PER_RUN:,} "
                        "activations' worth, 200 steps at batch 4096, 800 at 1024)")
    parser.add_argument("--warmup-steps", type=int, default=10, help="training steps of the untimed warm-up run")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--l1-coefficient", type=float, default=1.0, help="ReLU SAEs")
    parser.add_argument("--k", type=int, default=16, help="TopK SAEs")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per trainer and kind; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-saelens", action="store_true", help="time mechlearn only (no SAELens environment needed)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--saelens-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.saelens_worker:
        saelens_worker(args.saelens_worker)
        return
    torch.set_num_threads(args.threads)
    load_average = os.getloadavg()[0]  # other jobs on the machine slow both trainers and the peak

    python = None if args.no_saelens else saelens_python()
    activations = cache_activations(args.rows, args.seed)
    held_out = cache_activations(args.held_out_rows, args.seed + 1)
    runs = [
        [Run(kind=kind, d_in=activations.shape[1], d_sae=args.d_sae, k=args.k, l1_coefficient=args.l1_coefficient,
             lr=args.lr, batch_size=batch_size, steps=args.steps or max(1, ACTIVATIONS_PER_RUN // batch_size),
             warmup_steps=args.warmup_steps, seed=args.seed, threads=args.threads)
         for kind in args.kinds]
        for batch_size in args.batch_sizes
    ]
    peak_before = peak_flops()
    with tempfile.TemporaryDirectory() as directory:
        activations_path = Path(directory) / "activations.pt"
        torch.save(activations, activations_path)
        comparisons = [comparison for same_batch in runs
                       for comparison in compare(same_batch, args.repeats, python, activations, activations_path, held_out)]
    # The best of before and after: a busy machine lowers the peak, which would flatter the trainers.
    peak = max(peak_before, peak_flops())
    shared = {name: value for name, value in dataclasses.asdict(runs[0][0]).items() if name not in ("kind", "batch_size", "steps")}
    report = {
        "torch": torch.__version__, "load_average_before": load_average, "load_average_after": os.getloadavg()[0],
        "peak_flops_per_s": peak, "rows": len(activations), "held_out_rows": len(held_out),
        "run": shared, "comparisons": comparisons, "topk_over_relu": topk_over_relu(comparisons),
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
