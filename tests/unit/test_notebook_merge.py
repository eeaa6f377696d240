"""The three-way rule of the notebook sync (cli/notebook/merge.py)."""

from __future__ import annotations

from substratus.cli.notebook.merge import Planned, Step, conflict_name, plan


def steps(base: dict[str, str], local: dict[str, str], remote: dict[str, str]) -> dict[str, Step]:
    return {p.path: p.step for p in plan(base, local, remote)}


def test_a_change_on_one_side_goes_to_the_other() -> None:
    base = {"a.py": "1", "b.py": "1"}
    assert steps(base, {"a.py": "2", "b.py": "1"}, {"a.py": "1", "b.py": "1"}) == {
        "a.py": Step.PUSH
    }
    assert steps(base, {"a.py": "1", "b.py": "1"}, {"a.py": "1", "b.py": "3"}) == {
        "b.py": Step.PULL
    }


def test_new_files_and_deletions_travel_both_ways() -> None:
    base = {"gone-here.py": "1", "gone-there.py": "1"}
    local = {"gone-there.py": "1", "new-here.py": "x"}
    remote = {"gone-here.py": "1", "new-there.py": "y"}
    assert steps(base, local, remote) == {
        "gone-here.py": Step.DELETE_REMOTE,
        "gone-there.py": Step.DELETE_LOCAL,
        "new-here.py": Step.PUSH,
        "new-there.py": Step.PULL,
    }


def test_the_same_edit_on_both_sides_is_agreed_and_unchanged_paths_plan_nothing() -> None:
    assert steps({"a": "1", "b": "1"}, {"a": "2", "b": "1"}, {"a": "2", "b": "1"}) == {
        "a": Step.AGREE
    }
    assert steps({"a": "1"}, {}, {}) == {"a": Step.FORGET}


def test_different_edits_on_both_sides_are_a_conflict() -> None:
    assert steps({"a": "1"}, {"a": "2"}, {"a": "3"}) == {"a": Step.CONFLICT}
    # No base (the first sync): a path that differs is a conflict, never overwritten.
    assert steps({}, {"a": "2"}, {"a": "3"}) == {"a": Step.CONFLICT}


def test_an_edit_wins_over_a_deletion_and_says_so() -> None:
    assert plan({"a": "1"}, {}, {"a": "2"}) == [Planned(Step.PULL, "a", restored=True)]
    assert plan({"a": "1"}, {"a": "2"}, {}) == [Planned(Step.PUSH, "a", restored=True)]
    # Without a base there was nothing to restore: a plain copy.
    assert plan({}, {}, {"a": "2"}) == [Planned(Step.PULL, "a")]


def test_conflict_copies_sit_beside_the_file_and_never_overwrite() -> None:
    stamp = "20261201-104800"
    assert conflict_name("src/train.py", stamp, set()) == (
        "src/train.notebook-conflict-20261201-104800.py"
    )
    assert conflict_name("Makefile", stamp, set()) == "Makefile.notebook-conflict-20261201-104800"
    taken = {"a.notebook-conflict-20261201-104800.py"}
    assert conflict_name("a.py", stamp, taken) == "a.notebook-conflict-20261201-104800-1.py"
