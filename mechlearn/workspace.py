"""Keep the learner's work apart from the course's source.

`make lab` opens JupyterLab in `workspace/` (git-ignored), not in `chapters/`: JupyterLab
autosaves a learner's code and outputs into the notebook they work in, and those files
must neither break the tests nor collide with the next `git pull`. Each run of

    python -m mechlearn.workspace

brings the workspace up to date with the course:

- a chapter the workspace lacks is copied in (on first use, that is every chapter);
- a chapter the learner has not touched since it was copied follows the course's updates;
- a chapter the learner has touched is never overwritten: the update waits in `chapters/`;
- `workspace/solutions/` holds read-only copies of the solutions, refreshed every time.

The workspace remembers a fingerprint of each copy it made, so "touched" means "differs
from what was copied", whatever the file's timestamps say.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mechlearn.course import ROOT

WORKSPACE = ROOT / "workspace"
_COPIES = ".mechlearn-copies.json"  # {relative path: sha256 of the copy the workspace made}
_SOLUTIONS = "solutions"


@dataclass
class SyncReport:
    """What one sync did, by path relative to the workspace."""

    copied: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # touched by the learner while the course changed


def sync(
    workspace: Path = WORKSPACE, chapters: Path = ROOT / "chapters", solutions: Path = ROOT / "solutions"
) -> SyncReport:
    """Bring `workspace` up to date with `chapters` and `solutions` (see the module docstring)."""
    for source in (chapters, solutions):
        if not source.is_dir():
            raise FileNotFoundError(f"the course folder {source} does not exist; run this from a clone of mechlearn")
    workspace.mkdir(parents=True, exist_ok=True)
    copies_file = workspace / _COPIES
    copies = _read_copies(copies_file)
    report = SyncReport()
    for relative in _course_files(chapters):
        _sync_chapter(chapters / relative, workspace / relative, relative.as_posix(), copies, report)
    _refresh_solutions(solutions, workspace / _SOLUTIONS)
    copies_file.write_text(json.dumps(copies, indent=1, sort_keys=True) + "\n")
    return report


def _read_copies(copies_file: Path) -> dict[str, str]:
    """The fingerprints of earlier copies; none if the file is missing or unreadable.

    Without them every existing file counts as the learner's, so nothing is overwritten.
    """
    try:
        copies = json.loads(copies_file.read_text())
    except (OSError, ValueError):
        return {}
    return copies if isinstance(copies, dict) else {}


def _course_files(folder: Path) -> list[Path]:
    """Every file under `folder`, relative to it, without JupyterLab's checkpoints."""
    return sorted(
        path.relative_to(folder)
        for path in folder.rglob("*")
        if path.is_file() and ".ipynb_checkpoints" not in path.parts
    )


def _sync_chapter(source: Path, target: Path, key: str, copies: dict[str, str], report: SyncReport) -> None:
    new, copied = _fingerprint(source), copies.get(key)
    if not target.exists():
        report.copied.append(key)
    elif (current := _fingerprint(target)) == new:
        copies[key] = new  # already the course's version, whoever put it there
        return
    elif current != copied:  # the learner's version: never overwritten
        if new != copied:
            report.kept.append(key)
        return
    else:
        report.updated.append(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    copies[key] = new


def _refresh_solutions(solutions: Path, target: Path) -> None:
    """Read-only copies, so a learner can open a solution in the lab but never save over it."""
    if target.exists():
        for path in target.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(target)
    for relative in _course_files(solutions):
        copy = target / relative
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(solutions / relative, copy)
        copy.chmod(0o444)


def _fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=WORKSPACE, help="the learner's folder (default: workspace/)")
    report = sync(parser.parse_args(argv).workspace)
    for key in report.copied:
        print(f"new in your workspace: {key}")
    for key in report.updated:
        print(f"updated (you had not changed it): {key}")
    for key in report.kept:
        print(f"kept your version of {key}; the course's update is in chapters/{key}")


if __name__ == "__main__":
    main()
