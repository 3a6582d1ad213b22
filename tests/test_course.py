"""The chapter generator (mechlearn.course) and the state of the committed notebooks."""

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from mechlearn import course
from mechlearn.course import (
    ROOT,
    build,
    exercise_count,
    make_exercise_notebook,
    out_of_date,
    stub_source,
)

SOLUTIONS = sorted(
    p for p in (ROOT / "solutions").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
)
NOTEBOOKS = SOLUTIONS + sorted(
    p for p in (ROOT / "chapters").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def stub(name: str, indent: str = "    ") -> str:
    return (
        f'{indent}raise NotImplementedError("Exercise: write `{name}` (see its docstring), '
        'then run this cell again.")'
    )


FUNCTION = '''\
import torch

def layer_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Normalise x over its last dimension."""
    ### BEGIN SOLUTION
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / (x.var(-1, keepdim=True) + eps).sqrt()
    ### END SOLUTION

check_layer_norm(layer_norm)'''


# --- stub_source -------------------------------------------------------------


def test_stub_function_keeps_signature_and_docstring() -> None:
    assert stub_source(FUNCTION) == "\n".join(
        [
            "import torch",
            "",
            "def layer_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:",
            '    """Normalise x over its last dimension."""',
            stub("layer_norm"),
            "",
            "check_layer_norm(layer_norm)",
        ]
    )


def test_stub_method_is_named_class_dot_method() -> None:
    source = '''\
class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(
        self,
        x: Tensor,
    ) -> Tensor:
        """Causal self-attention."""
        ### BEGIN SOLUTION
        q = x @ self.W_Q
        return q
        ### END SOLUTION'''
    stubbed = stub_source(source)
    assert stubbed.splitlines()[-1] == stub("Attention.forward", indent=" " * 8)
    assert "self.W_Q" not in stubbed and "### " not in stubbed
    assert '        """Causal self-attention."""' in stubbed


def test_stub_two_regions_in_one_cell() -> None:
    source = '''\
def f(x):
    """Double."""
    ### BEGIN SOLUTION
    return 2 * x
    ### END SOLUTION


def g(x):
    """Triple."""
    ### BEGIN SOLUTION
    return 3 * x
    ### END SOLUTION'''
    assert stub_source(source).splitlines() == [
        "def f(x):",
        '    """Double."""',
        stub("f"),
        "",
        "",
        "def g(x):",
        '    """Triple."""',
        stub("g"),
    ]


def test_stub_keeps_indentation_of_nested_region() -> None:
    source = """\
def train(model, steps):
    \"\"\"Train.\"\"\"
    for step in range(steps):
        ### BEGIN SOLUTION
        loss = model.loss()
        loss.backward()
        ### END SOLUTION
    return model"""
    assert stub_source(source).splitlines() == [
        "def train(model, steps):",
        '    """Train."""',
        "    for step in range(steps):",
        stub("train", indent=" " * 8),
        "    return model",
    ]


def test_stub_region_outside_a_function() -> None:
    source = "%matplotlib inline\n### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION\nprint(answer)"
    assert stub_source(source) == (
        "%matplotlib inline\n"
        'raise NotImplementedError("Exercise: fill in this cell, then run this cell again.")\n'
        "print(answer)"
    )


def test_stub_without_regions_is_unchanged() -> None:
    source = "x = 1\n# ### not a marker: BEGIN SOLUTION\n"
    assert stub_source(source) == source


@pytest.mark.parametrize(
    "source, problem",
    [
        ("### BEGIN SOLUTION\nx = 1", "no matching END"),
        ("x = 1\n### END SOLUTION", "no matching BEGIN"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n### END SOLUTION", "nested"),
    ],
)
def test_stub_rejects_unbalanced_markers(source: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        stub_source(source)


# --- make_exercise_notebook --------------------------------------------------


def small_notebook() -> nbformat.NotebookNode:
    out = new_output("stream", name="stdout", text="hello\n")
    return new_notebook(
        cells=[
            new_markdown_cell("# Chapter", metadata={"tags": ["intro"]}),
            new_code_cell(FUNCTION, execution_count=1, outputs=[out]),
            new_code_cell("secret = 1", metadata={"tags": ["solution-only"]}),
            new_markdown_cell("answer", metadata={"tags": ["solution-only"]}),
            new_code_cell("show()", execution_count=2, outputs=[out], metadata={"tags": ["keep-output"]}),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )


def test_exercise_notebook() -> None:
    solution = small_notebook()
    exercise = make_exercise_notebook(solution)
    assert [c.source for c in exercise.cells] == ["# Chapter", stub_source(FUNCTION), "show()"]
    intro, code, kept = exercise.cells
    assert intro == solution.cells[0]
    assert code.outputs == [] and code.execution_count is None
    assert kept.outputs == solution.cells[4].outputs and kept.execution_count == 2
    assert exercise.metadata == solution.metadata
    assert solution.cells[1].source == FUNCTION and len(solution.cells) == 5, "input was modified"
    nbformat.validate(exercise)


def test_exercise_count() -> None:
    nb = small_notebook()
    assert exercise_count(nb) == 1
    nb.cells.append(new_code_cell(FUNCTION + "\n\n" + FUNCTION))
    nb.cells.append(new_code_cell(FUNCTION, metadata={"tags": ["solution-only"]}))
    assert exercise_count(nb) == 3


def test_build_writes_twins_and_removes_orphans(tmp_path: Path) -> None:
    source = tmp_path / "solutions" / "1_part" / "01_x.ipynb"
    source.parent.mkdir(parents=True)
    nbformat.write(small_notebook(), source)
    orphan = tmp_path / "chapters" / "gone.ipynb"
    orphan.parent.mkdir()
    orphan.write_text("{}")
    assert set(out_of_date(tmp_path)) == {tmp_path / "chapters" / "1_part" / "01_x.ipynb", orphan}
    assert build(tmp_path) == [tmp_path / "chapters" / "1_part" / "01_x.ipynb"]
    assert not orphan.exists()
    assert out_of_date(tmp_path) == []
    written = nbformat.read(tmp_path / "chapters" / "1_part" / "01_x.ipynb", as_version=4)
    assert written == make_exercise_notebook(nbformat.read(source, as_version=4))


def test_main_check_and_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(course, "ROOT", tmp_path)
    (tmp_path / "solutions").mkdir()
    nbformat.write(small_notebook(), tmp_path / "solutions" / "01_x.ipynb")
    assert course.main(["check"]) == 1
    out = capsys.readouterr().out
    assert "chapters/01_x.ipynb" in out and "run python -m mechlearn.course build" in out
    assert course.main(["build"]) == 0
    assert course.main(["check"]) == 0
    assert "OK" in capsys.readouterr().out


# --- the committed notebooks -------------------------------------------------


def test_chapters_are_generated_from_solutions() -> None:
    stale = out_of_date(ROOT)
    assert stale == [], (
        f"chapters/ is out of date: {[rel(p) for p in stale]}; "
        "run python -m mechlearn.course build (chapters/ is never edited by hand)"
    )


@pytest.mark.parametrize("solution", SOLUTIONS, ids=rel)
def test_solution_has_generated_twin(solution: Path) -> None:
    twin = ROOT / "chapters" / solution.relative_to(ROOT / "solutions")
    assert twin.exists(), f"{rel(twin)} is missing; run python -m mechlearn.course build"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=rel)
def test_solution_cells_have_ids(solution: Path) -> None:
    # Without ids nbformat invents random ones, so the generated twin would change on every build.
    raw = json.loads(solution.read_text(encoding="utf-8"))
    if (raw["nbformat"], raw["nbformat_minor"]) >= (4, 5):
        missing = [i for i, cell in enumerate(raw["cells"]) if "id" not in cell]
        assert missing == [], f"{rel(solution)}: cells {missing} have no id; open and save it in Jupyter"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=rel)
def test_committed_notebook_has_no_outputs(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        and "keep-output" not in cell.metadata.get("tags", [])
        and (cell.outputs or cell.execution_count is not None)
    ]
    assert dirty == [], (
        f"{rel(notebook)}: code cells {dirty} carry outputs or execution counts; clear them "
        "(e.g. jupyter nbconvert --clear-output --inplace), or tag a cell 'keep-output'"
    )
