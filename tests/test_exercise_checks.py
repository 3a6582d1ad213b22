"""Every exercise check passes on the solution notebook and fails, with a hint, on the exercise.

Checks are functions decorated with `mechlearn.checks.check`. With MECHLEARN_CHECK_LOG set
to a file, each check call appends a JSON line {"check", "passed", "message"} there instead
of raising, so one run of a notebook records every check it reached.
"""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from mechlearn.course import ROOT, exercise_count, make_exercise_notebook

# No cell takes a minute; a cell "running" for five has lost its reply (see the rerun below).
CELL_TIMEOUT = 300

EXERCISES = [
    path
    for path in sorted((ROOT / "solutions").rglob("*.ipynb"))
    if ".ipynb_checkpoints" not in path.parts
    and exercise_count(nbformat.read(path, as_version=4)) > 0
]


def run_notebook(
    nb: nbformat.NotebookNode, cwd: Path, log: Path, allow_errors: bool, monkeypatch: pytest.MonkeyPatch
) -> list[dict]:
    """Execute `nb` in a fresh python3 kernel and return the check records it logged."""
    log.unlink(missing_ok=True)
    with monkeypatch.context() as env:  # the kernel inherits os.environ when it starts
        env.setenv("MECHLEARN_CHECK_LOG", str(log))
        env.delenv("PLOTLY_RENDERER", raising=False)
        NotebookClient(
            nb,
            kernel_name="python3",
            timeout=CELL_TIMEOUT,
            allow_errors=allow_errors,
            resources={"metadata": {"path": str(cwd)}},
        ).execute()
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]


# Now and then nbclient waits for a reply that the kernel, idle, has already sent (the current
# nbclient, jupyter_client and pyzmq; seen about once in five long runs): one rerun on a cell timeout,
# and on no other failure.
@pytest.mark.flaky(reruns=1, only_rerun=["CellTimeoutError"])
@pytest.mark.parametrize("solution", EXERCISES, ids=lambda p: str(p.relative_to(ROOT)))
def test_checks_pass_on_solution_and_fail_on_exercise(
    solution: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = nbformat.read(solution, as_version=4)
    log = tmp_path / "checks.jsonl"

    records = run_notebook(nb, solution.parent, log, allow_errors=False, monkeypatch=monkeypatch)
    failed = [r for r in records if not r["passed"]]
    assert failed == [], f"checks fail on the solution: {failed}"
    checks = {r["check"] for r in records}
    assert len(checks) >= exercise_count(nb), (
        f"{exercise_count(nb)} exercises but only {len(checks)} checks ran: {sorted(checks)}; "
        "give every exercise a check"
    )

    exercise = make_exercise_notebook(nb)
    records = run_notebook(exercise, solution.parent, log, allow_errors=True, monkeypatch=monkeypatch)
    reached = {r["check"] for r in records}
    assert checks <= reached, f"checks never ran on the exercise notebook: {sorted(checks - reached)}"
    passed = sorted({r["check"] for r in records if r["check"] in checks and r["passed"]})
    assert passed == [], f"checks pass on the unsolved exercise: {passed}"
    no_hint = [r for r in records if not r["passed"] and "Hint:" not in r["message"]]
    assert no_hint == [], f"failure messages without 'Hint:': {no_hint}"
