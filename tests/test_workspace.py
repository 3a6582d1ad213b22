"""`make lab` works in a git-ignored workspace that follows the course without overwriting the learner."""

import os
from pathlib import Path

import pytest

from mechlearn import workspace


@pytest.fixture
def course(tmp_path: Path) -> dict[str, Path]:
    """A small course: two chapters, their solutions, and an empty place for the workspace."""
    chapters, solutions = tmp_path / "chapters", tmp_path / "solutions"
    for folder in (chapters / "1_foundations", solutions / "1_foundations"):
        folder.mkdir(parents=True)
    for name in ("01.ipynb", "02.ipynb"):
        (chapters / "1_foundations" / name).write_text(f"exercise {name}")
        (solutions / "1_foundations" / name).write_text(f"solution {name}")
    return {"chapters": chapters, "solutions": solutions, "workspace": tmp_path / "workspace"}


def sync(course: dict[str, Path]) -> workspace.SyncReport:
    return workspace.sync(course["workspace"], course["chapters"], course["solutions"])


def test_first_use_copies_every_chapter_and_the_solutions_read_only(course) -> None:
    report = sync(course)
    assert report.copied == ["1_foundations/01.ipynb", "1_foundations/02.ipynb"]
    assert (course["workspace"] / "1_foundations" / "01.ipynb").read_text() == "exercise 01.ipynb"
    solution = course["workspace"] / "solutions" / "1_foundations" / "01.ipynb"
    assert solution.read_text() == "solution 01.ipynb"
    assert not os.stat(solution).st_mode & 0o222


def test_the_learners_work_is_never_overwritten(course) -> None:
    sync(course)
    mine = course["workspace"] / "1_foundations" / "01.ipynb"
    mine.write_text("my answers")
    (course["chapters"] / "1_foundations" / "01.ipynb").write_text("exercise 01, revised")
    (course["chapters"] / "1_foundations" / "02.ipynb").write_text("exercise 02, revised")

    report = sync(course)
    assert mine.read_text() == "my answers"
    assert report.kept == ["1_foundations/01.ipynb"]
    # the chapter the learner never touched follows the course
    assert report.updated == ["1_foundations/02.ipynb"]
    assert (course["workspace"] / "1_foundations" / "02.ipynb").read_text() == "exercise 02, revised"
    # and the learner's version stays theirs on every later sync
    assert sync(course).copied == [] and mine.read_text() == "my answers"


def test_edits_while_the_course_is_unchanged_are_not_reported(course) -> None:
    sync(course)
    (course["workspace"] / "1_foundations" / "01.ipynb").write_text("my answers")
    report = sync(course)
    assert report == workspace.SyncReport()


def test_lost_fingerprints_never_cost_the_learner_their_work(course) -> None:
    sync(course)
    mine = course["workspace"] / "1_foundations" / "01.ipynb"
    mine.write_text("my answers")
    (course["workspace"] / ".mechlearn-copies.json").write_text("{not json")
    (course["chapters"] / "1_foundations" / "01.ipynb").write_text("exercise 01, revised")

    assert sync(course).kept == ["1_foundations/01.ipynb"]
    assert mine.read_text() == "my answers"


def test_a_chapter_added_later_is_copied_in(course) -> None:
    sync(course)
    (course["chapters"] / "2_projects").mkdir()
    (course["chapters"] / "2_projects" / "01.ipynb").write_text("a mini-project")
    (course["solutions"] / "2_projects").mkdir()
    (course["solutions"] / "2_projects" / "01.ipynb").write_text("its solution")

    assert sync(course).copied == ["2_projects/01.ipynb"]
    assert (course["workspace"] / "solutions" / "2_projects" / "01.ipynb").read_text() == "its solution"


def test_solutions_are_refreshed_even_though_they_are_read_only(course) -> None:
    sync(course)
    (course["solutions"] / "1_foundations" / "01.ipynb").write_text("solution, revised")
    sync(course)
    assert (course["workspace"] / "solutions" / "1_foundations" / "01.ipynb").read_text() == "solution, revised"


def test_checkpoints_are_not_course_files(course) -> None:
    checkpoints = course["chapters"] / "1_foundations" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    (checkpoints / "01-checkpoint.ipynb").write_text("autosave")
    assert all(".ipynb_checkpoints" not in key for key in sync(course).copied)


@pytest.mark.bad_input
def test_a_missing_course_folder_is_named(course, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="course folder .*nowhere"):
        workspace.sync(course["workspace"], tmp_path / "nowhere", course["solutions"])


def test_the_workspace_is_ignored_by_git() -> None:
    assert workspace.WORKSPACE == workspace.ROOT / "workspace"
    assert "workspace/" in (workspace.ROOT / ".gitignore").read_text().splitlines()
