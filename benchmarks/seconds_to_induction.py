"""Train the `induction-2l` recipe from scratch and report when its induction head appears.

The recipe's monitor measures, every `eval_every` steps, each layer-1 head's induction
score on repeated random tokens; we report the step and the wall-clock seconds (since
training began, evaluation included) at which the best one first reached 0.8, and the
circuit numbers of the trained model. Nothing is written into the package.

    python benchmarks/seconds_to_induction.py             # the machine's threads
    python benchmarks/seconds_to_induction.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from mechlearn import zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as directory:
        zoo.train("induction-2l", directory=Path(directory), progress=False)
        metrics = zoo.card("induction-2l", directory=Path(directory))["metrics"]
    print(f"torch {torch.__version__}, {args.threads} threads")
    print(f"induction score >= {zoo.INDUCTION_SCORE_TARGET} at step {metrics['step_to_induction']}, "
          f"after {metrics['seconds_to_induction']} s")
    print(f"whole recipe ({zoo.recipe('induction-2l').training.steps} steps): {metrics['train_seconds']} s")
    print(json.dumps(metrics["circuit"], indent=1))


if __name__ == "__main__":
    main()
