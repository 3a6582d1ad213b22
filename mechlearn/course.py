"""Generate the exercise notebooks in chapters/ from the complete notebooks in solutions/.

A solution notebook marks each exercise in its code cells with the nbgrader convention::

    def layer_norm(x, w, b, eps=1e-5):
        '''Normalise ... (the signature and docstring stay in the exercise)'''
        ### BEGIN SOLUTION
        mean = x.mean(-1, keepdim=True)
        ...
        ### END SOLUTION

The generator replaces each marked region, markers included, by one
``raise NotImplementedError(...)`` line that names the exercise, drops cells tagged
``solution-only``, and clears outputs except in cells tagged ``keep-output``.
chapters/ is never edited by hand:

    python -m mechlearn.course build   # regenerate chapters/ from solutions/
    python -m mechlearn.course check   # exit 1 if chapters/ is out of date
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
from pathlib import Path

import nbformat
from nbformat import NotebookNode

ROOT = Path(__file__).resolve().parents[1]

_BEGIN = re.compile(r"^(\s*)###\s*BEGIN SOLUTION\s*$")
_END = re.compile(r"^\s*###\s*END SOLUTION\s*$")
_MAGIC = re.compile(r"^\s*[%!]")
_SOLUTION_ONLY = "solution-only"
_KEEP_OUTPUT = "keep-output"


def _regions(lines: list[str]) -> list[tuple[int, int]]:
    """(begin, end) line indices of each solution region; ValueError if markers are unbalanced."""
    regions: list[tuple[int, int]] = []
    begin: int | None = None
    for i, line in enumerate(lines):
        if _BEGIN.match(line):
            if begin is not None:
                raise ValueError(
                    f"nested '### BEGIN SOLUTION' at line {i + 1} "
                    f"(the region opened at line {begin + 1} is not closed)"
                )
            begin = i
        elif _END.match(line):
            if begin is None:
                raise ValueError(f"'### END SOLUTION' at line {i + 1} has no matching BEGIN")
            regions.append((begin, i))
            begin = None
    if begin is not None:
        raise ValueError(f"'### BEGIN SOLUTION' at line {begin + 1} has no matching END")
    return regions


def _enclosing_name(tree: ast.Module | None, line: int) -> str | None:
    """Name of the innermost function around 1-based `line`, as `Class.method` for a method."""
    if tree is None:
        return None
    best: tuple[ast.FunctionDef | ast.AsyncFunctionDef, ast.AST] | None = None  # (function, parent)
    for parent in ast.walk(tree):
        for node in ast.iter_child_nodes(parent):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.lineno < line <= (node.end_lineno or node.lineno)
                and (best is None or node.lineno > best[0].lineno)
            ):
                best = (node, parent)
    if best is None:
        return None
    func, parent = best
    return f"{parent.name}.{func.name}" if isinstance(parent, ast.ClassDef) else func.name


def _parse(lines: list[str]) -> ast.Module | None:
    """Parse a cell, blanking IPython magics (line numbers kept); None if it is not Python."""
    try:
        return ast.parse("\n".join("" if _MAGIC.match(line) else line for line in lines))
    except SyntaxError:
        return None


def stub_source(source: str) -> str:
    """Replace each solution region of a code cell by one `raise NotImplementedError` line."""
    lines = source.split("\n")
    regions = _regions(lines)
    if not regions:
        return source
    tree = _parse(lines)
    out: list[str] = []
    start = 0
    for begin, end in regions:
        indent = _BEGIN.match(lines[begin]).group(1)
        name = _enclosing_name(tree, begin + 1)
        task = f"write `{name}` (see its docstring)" if name else "fill in this cell"
        out += lines[start:begin]
        out.append(f'{indent}raise NotImplementedError("Exercise: {task}, then run this cell again.")')
        start = end + 1
    out += lines[start:]
    return "\n".join(out)


def _tags(cell: NotebookNode) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def make_exercise_notebook(nb: NotebookNode) -> NotebookNode:
    """The exercise version of a solution notebook (the input is not modified)."""
    nb = copy.deepcopy(nb)
    nb.cells = [cell for cell in nb.cells if _SOLUTION_ONLY not in _tags(cell)]
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        try:
            cell.source = stub_source(cell.source)
        except ValueError as e:
            raise ValueError(f"code cell {i}: {e}") from e
        if _KEEP_OUTPUT not in _tags(cell):
            cell.outputs = []
            cell.execution_count = None
    return nb


def exercise_count(nb: NotebookNode) -> int:
    """Number of solution regions in the code cells that become exercises."""
    return sum(
        len(_regions(cell.source.split("\n")))
        for cell in nb.cells
        if cell.cell_type == "code" and _SOLUTION_ONLY not in _tags(cell)
    )


def _notebooks(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _expected(root: Path) -> dict[Path, str]:
    """Each chapters/ notebook path and the exact text build writes there."""
    expected = {}
    for source in _notebooks(root / "solutions"):
        try:
            nb = make_exercise_notebook(nbformat.read(source, as_version=4))
        except ValueError as e:
            raise ValueError(f"{source.relative_to(root)}: {e}") from e
        target = root / "chapters" / source.relative_to(root / "solutions")
        expected[target] = nbformat.writes(nb) + "\n"
    return expected


def build(root: Path = ROOT) -> list[Path]:
    """Write chapters/ from solutions/, delete orphaned chapter notebooks; return written paths."""
    expected = _expected(root)
    for orphan in set(_notebooks(root / "chapters")) - set(expected):
        orphan.unlink()
    for target, text in expected.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8", newline="\n")
    return list(expected)


def out_of_date(root: Path = ROOT) -> list[Path]:
    """chapters/ notebooks that build would write, change or delete."""
    expected = _expected(root)
    stale = [
        target
        for target, text in expected.items()
        if not target.exists() or target.read_bytes() != text.encode("utf-8")
    ]
    orphans = set(_notebooks(root / "chapters")) - set(expected)
    return sorted(stale + list(orphans))


def main(argv: list[str] | None = None) -> int:
    """`build` regenerates chapters/; `check` exits 1 when chapters/ is out of date."""
    parser = argparse.ArgumentParser(prog="python -m mechlearn.course")
    parser.add_argument("command", choices=["build", "check"])
    args = parser.parse_args(argv)
    if args.command == "build":
        for path in build(ROOT):
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    stale = out_of_date(ROOT)
    if stale:
        print("chapters/ is out of date:")
        for path in stale:
            print(f"  {path.relative_to(ROOT)}")
        print("fix: run python -m mechlearn.course build")
        return 1
    print("OK: chapters/ matches solutions/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
