"""Finding the cgroup hierarchies and writing limits, for v1 and v2 layouts (v2 on a fake tree:
the machines these tests run on have v1; the real v1 path is tested in
tests/integration/test_local_limits.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from substratus.runtimes.local import limits

V1_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V1_CGROUP = """\
9:name=systemd:/
4:memory:/jobs/abc
1:cpu,cpuacct:/
0::/
"""


def test_v1_hierarchies_are_found_per_controller(tmp_path: Path) -> None:
    (tmp_path / "sys/fs/cgroup/unified").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/unified/cgroup.controllers").write_text("\n")  # hybrid: empty
    found = limits.hierarchies(V1_MOUNTINFO, V1_CGROUP, root=tmp_path)
    cg = tmp_path / "sys/fs/cgroup"
    assert [(h.version, h.own, sorted(h.controllers)) for h in found] == [
        (1, cg / "cpu,cpuacct", ["cpu"]),
        (1, cg / "memory/jobs/abc", ["memory"]),
    ]
    # v1 runs nest inside the supervisor's own cgroup, so they stay within its limits.
    assert limits._parent(found[1]) == cg / "memory/jobs/abc/substratus"


def fake_v2(tmp_path: Path) -> limits.Hierarchy:
    root = tmp_path / "cg"
    own = root / "user.slice" / "app.scope"
    own.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    (root / "user.slice" / "cgroup.subtree_control").write_text("memory\n")
    mountinfo = f"41 31 0:38 / {root} rw - cgroup2 cgroup2 rw\n"
    [h] = limits.hierarchies(mountinfo, "0::/user.slice/app.scope\n")
    return h


def test_v2_run_cgroup_goes_beside_the_supervisor_with_both_limits(tmp_path: Path) -> None:
    h = fake_v2(tmp_path)
    assert h.version == 2 and h.controllers == {"cpu", "memory"}
    # A v2 cgroup holding processes cannot hand controllers to children: the parent goes beside.
    parent = tmp_path / "cg" / "user.slice" / limits.PARENT
    (parent).mkdir()
    (parent / "cgroup.subtree_control").write_text("")
    [path] = limits.create("run-1", 1.5, 0.25, found=[h])
    assert path == parent / "run-1"
    assert (path / "memory.max").read_text() == "1500000000"
    assert (path / "cpu.max").read_text() == "25000 100000"
    assert (parent / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (tmp_path / "cg/user.slice/cgroup.subtree_control").read_text() == "+cpu +memory"


def test_missing_controller_is_a_clear_error(tmp_path: Path) -> None:
    h = limits.Hierarchy(1, tmp_path, tmp_path, frozenset({"cpu"}))
    with pytest.raises(limits.CgroupError, match="memory controller"):
        limits.create("run-1", 1.0, None, found=[h])
    assert limits.create("run-1", None, None, found=[h]) == []


def test_unwritable_hierarchy_is_a_clear_error(tmp_path: Path) -> None:
    h = limits.Hierarchy(1, tmp_path / "absent", tmp_path / "absent", frozenset({"memory"}))
    with pytest.raises(limits.CgroupError, match="cannot set up a cgroup"):
        limits.create("run-1", 1.0, None, found=[h])
    assert not (tmp_path / "absent").exists()


def test_run_names_are_unique_per_run_directory_and_short() -> None:
    a = limits.run_name(Path("/h1/runs/x"), "default.models.m.g1-a1")
    b = limits.run_name(Path("/h2/runs/x"), "default.models.m.g1-a1")
    assert a != b and a.startswith("default.models.m.g1-a1-")
    assert len(limits.run_name(Path("/h"), "n" * 400)) < 255
