"""Every exercise check fails, with a hint, on the exercise notebook.

That the checks pass on the solutions needs no second run: nbval executes every solution
notebook, and a failing check raises there. Here each exercise notebook runs once. Checks
are functions decorated with `mechlearn.checks.check`; with MECHLEARN_CHECK_LOG set to a
file, each check call appends a JSON line {"check", "passed", "message"} there instead of
raising, so one run of a notebook records every check it reached.
"""

import ast
import json
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel

from mechlearn.course import ROOT, exercise_count, make_exercise_notebook

CELL_TIMEOUT = 120  # seconds; no cell takes half a minute

EXERCISES = [
    path
    for path in sorted((ROOT / "solutions").rglob("*.ipynb"))
    if ".ipynb_checkpoints" not in path.parts
    and exercise_count(nbformat.read(path, as_version=4)) > 0
]


def run_notebook(nb: nbformat.NotebookNode, cwd: Path, log: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Execute `nb` in a fresh python3 kernel, past cells that raise, and return the check records it logged.

    jupyter_client's blocking client runs the cells, as under nbval: nbclient's asynchronous one
    now and then waited for a reply the idle kernel had already sent (about one run in five).
    """
    with monkeypatch.context() as env:  # the kernel inherits os.environ when it starts
        env.setenv("MECHLEARN_CHECK_LOG", str(log))
        env.delenv("PLOTLY_RENDERER", raising=False)
        manager, client = start_new_kernel(kernel_name="python3", cwd=str(cwd))
    try:
        for cell in nb.cells:
            if cell.cell_type == "code":
                client.execute_interactive(cell.source, timeout=CELL_TIMEOUT, output_hook=lambda _message: None)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]


def checks_called(nb: nbformat.NotebookNode) -> set[str]:
    """Labels of the checks the notebook's code calls, e.g. {'layer_norm'} for `check_layer_norm(...)`."""
    labels = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", "")
                if name.startswith("check_"):
                    labels.add(name.removeprefix("check_"))
    return labels


@pytest.mark.parametrize("solution", EXERCISES, ids=lambda p: str(p.relative_to(ROOT)))
def test_checks_fail_on_the_exercise(solution: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(solution, as_version=4)
    checks = checks_called(nb)
    assert len(checks) >= exercise_count(nb), (
        f"{exercise_count(nb)} exercises but only {len(checks)} checks called: {sorted(checks)}; "
        "give every exercise a check"
    )

    exercise = make_exercise_notebook(nb)
    records = run_notebook(exercise, solution.parent, tmp_path / "checks.jsonl", monkeypatch)
    reached = {r["check"] for r in records}
    assert checks <= reached, f"checks never ran on the exercise notebook: {sorted(checks - reached)}"
    passed = sorted({r["check"] for r in records if r["check"] in checks and r["passed"]})
    assert passed == [], f"checks pass on the unsolved exercise: {passed}"
    no_hint = [r for r in records if not r["passed"] and "Hint:" not in r["message"]]
    assert no_hint == [], f"failure messages without 'Hint:': {no_hint}"


def test_checks_called_finds_plain_and_module_calls() -> None:
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("%matplotlib inline\ncheck_layer_norm(layer_norm)"),
            nbformat.v4.new_code_cell("ch03.check_induction_scores(f)\nprint(check)"),
            nbformat.v4.new_markdown_cell("check_not_code(x)"),
        ]
    )
    assert checks_called(nb) == {"layer_norm", "induction_scores"}
