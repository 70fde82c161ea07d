"""The agent's file tools on real files: confinement, exact edits, size caps, atomic writes.

Every refusal is checked twice: it raises ToolError, and no byte on disk changed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine.tools import Tools, ToolError

TRAIN = "import math\n\nDEPTH = 4\nWIDTH = 128\nLR = 0.04\nLR2 = 0.04\n"


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "trainer").mkdir(parents=True)
    (root / "trainer" / "train.py").write_text(TRAIN)
    os.chmod(root / "trainer" / "train.py", 0o754)
    (root / "program.md").write_text("# program\n")
    (tmp_path / "outside.txt").write_text("secret\n")
    return root


def tools(root: Path, **kw) -> Tools:
    return Tools(root, ["trainer/train.py", "trainer/new.py"], **kw)


def snapshot(base: Path) -> dict[str, bytes]:
    """Every regular file under base (the workspace's parent, so outside files count too)."""
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file() and not p.is_symlink()}


def refused(t: Tools, call, *args) -> ToolError:
    base = t.root.parent
    before = snapshot(base)
    with pytest.raises(ToolError) as info:
        call(*args)
    assert snapshot(base) == before
    assert "\n" not in str(info.value)
    assert not t.touched
    return info.value


def all_calls(t: Tools, path):
    return [
        (t.read_file, path),
        (t.edit_file, path, "DEPTH = 4", "DEPTH = 8"),
        (t.write_file, path, "x = 1\n"),
        (t.resolve, path),
    ]


# -- confinement --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "../outside.txt",
        "/etc/passwd",
        "trainer/../../outside.txt",
        "trainer/../trainer/train.py",
        "~/x",
        "program.md",
        "trainer",
        "trainer/other.py",
        "",
        "  ",
        "trainer/train.py\nprogram.md",
        "trainer/train.py\x00",
        None,
        42,
        ["trainer/train.py"],
    ],
)
def test_bad_paths_are_refused_for_every_tool(ws, path):
    t = tools(ws)
    for call, *args in all_calls(t, path):
        refused(t, call, *args)


def test_absolute_path_into_the_workspace_is_refused(ws):
    t = tools(ws)
    refused(t, t.read_file, str(ws / "trainer" / "train.py"))


def test_equivalent_relative_spellings_are_accepted(ws):
    t = tools(ws)
    for spelling in ("trainer/train.py", "./trainer/train.py", "trainer//train.py", "trainer/./train.py"):
        assert t.resolve(spelling) == ws.resolve() / "trainer" / "train.py"
        assert t.read_file(spelling) == TRAIN


def test_symlinked_file_to_outside_is_refused(ws):
    target = ws / "trainer" / "train.py"
    target.unlink()
    target.symlink_to(ws.parent / "outside.txt")
    t = tools(ws)
    for call, *args in all_calls(t, "trainer/train.py"):
        err = refused(t, call, *args)
        assert "symlink" in str(err)
    assert target.is_symlink() and (ws.parent / "outside.txt").read_text() == "secret\n"


def test_symlinked_file_to_another_workspace_file_is_refused(ws):
    target = ws / "trainer" / "train.py"
    target.unlink()
    target.symlink_to(ws / "program.md")
    t = tools(ws)
    for call, *args in all_calls(t, "trainer/train.py"):
        refused(t, call, *args)
    assert (ws / "program.md").read_text() == "# program\n"


def test_symlinked_parent_folder_is_refused(ws, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "train.py").write_text(TRAIN)
    os.rename(ws / "trainer", tmp_path / "old_trainer")
    (ws / "trainer").symlink_to(elsewhere, target_is_directory=True)
    t = tools(ws)
    for call, *args in all_calls(t, "trainer/train.py"):
        refused(t, call, *args)
    refused(t, t.write_file, "trainer/new.py", "x = 1\n")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["train.py"]


def test_workspace_root_given_through_a_symlink_works(ws, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(ws, target_is_directory=True)
    t = tools(link)
    assert t.read_file("trainer/train.py") == TRAIN


def test_bad_editable_list_is_a_programming_error(ws):
    with pytest.raises(ValueError):
        Tools(ws, ["../x"])


# -- edit_file ----------------------------------------------------------------------------


def test_edit_replaces_exactly_one_occurrence(ws):
    t = tools(ws)
    msg = t.edit_file("trainer/train.py", "DEPTH = 4", "DEPTH = 8")
    assert "line 3" in msg and "\n" not in msg
    assert (ws / "trainer" / "train.py").read_text() == TRAIN.replace("DEPTH = 4", "DEPTH = 8")
    assert t.touched == {"trainer/train.py"}


def test_edit_missing_old_string_says_zero(ws):
    t = tools(ws)
    err = refused(t, t.edit_file, "trainer/train.py", "DEPTH = 5", "DEPTH = 8")
    assert "0 occurrences" in str(err)


def test_edit_ambiguous_old_string_says_how_many(ws):
    t = tools(ws)
    err = refused(t, t.edit_file, "trainer/train.py", "= 0.04", "= 0.05")
    assert "2 times" in str(err)


@pytest.mark.parametrize(
    "old, new",
    [("", "x"), ("DEPTH = 4", "DEPTH = 4"), (None, "x"), ("DEPTH = 4", 8), (b"DEPTH = 4", "DEPTH = 8")],
)
def test_edit_malformed_arguments_are_refused(ws, old, new):
    t = tools(ws)
    refused(t, t.edit_file, "trainer/train.py", old, new)


def test_edit_of_a_missing_file_is_refused(ws):
    t = tools(ws)
    err = refused(t, t.edit_file, "trainer/new.py", "a", "b")
    assert "does not exist" in str(err)


# -- sizes ----------------------------------------------------------------------------------


def test_size_cap_on_write_edit_and_read(ws):
    t = tools(ws, max_bytes=200)
    refused(t, t.write_file, "trainer/train.py", "x" * 201)
    refused(t, t.write_file, "trainer/train.py", "é" * 101)  # 202 bytes in UTF-8
    refused(t, t.edit_file, "trainer/train.py", "DEPTH = 4", "DEPTH = " + "9" * 200)
    assert t.write_file("trainer/train.py", "x" * 200)
    small = tools(ws, max_bytes=100)
    (ws / "trainer" / "train.py").write_text("y" * 101)
    refused(small, small.read_file, "trainer/train.py")


def test_non_utf8_content_is_refused(ws):
    t = tools(ws)
    refused(t, t.write_file, "trainer/train.py", "bad \udc80 surrogate")
    (ws / "trainer" / "train.py").write_bytes(b"\xff\xfe\x00")
    refused(t, t.read_file, "trainer/train.py")


# -- writes ---------------------------------------------------------------------------------


def test_write_is_atomic_and_keeps_the_mode(ws):
    t = tools(ws)
    path = ws / "trainer" / "train.py"
    inode = path.stat().st_ino
    t.write_file("trainer/train.py", "DEPTH = 6\n")
    assert path.read_text() == "DEPTH = 6\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o754
    assert path.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.py"]  # no temp file left
    t.edit_file("trainer/train.py", "6", "7")
    assert stat.S_IMODE(path.stat().st_mode) == 0o754


def test_write_creates_a_new_editable_file(ws):
    t = tools(ws)
    t.write_file("./trainer/new.py", "A = 1\n")
    assert (ws / "trainer" / "new.py").read_text() == "A = 1\n"
    assert t.touched == {"trainer/new.py"}


def test_a_failed_replace_leaves_the_file_and_no_temp(ws, monkeypatch):
    t = tools(ws)

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    err = refused(t, t.write_file, "trainer/train.py", "DEPTH = 6\n")
    assert "No space" in str(err)
    assert sorted(p.name for p in (ws / "trainer").iterdir()) == ["train.py"]


def test_write_over_a_folder_is_refused(ws):
    (ws / "trainer" / "new.py").mkdir()
    t = tools(ws)
    refused(t, t.write_file, "trainer/new.py", "x = 1\n")
    refused(t, t.read_file, "trainer/new.py")


# -- notes ----------------------------------------------------------------------------------


def test_notes_are_kept_in_order_and_bad_ones_refused(ws):
    t = tools(ws)
    t.note("warmdown helps")
    t.note("  depth 6 is too slow  ")
    assert t.notes == ["warmdown helps", "depth 6 is too slow"]
    for bad in ("", "   ", None, 3, "x" * 10_000):
        with pytest.raises(ToolError):
            t.note(bad)
    assert len(t.notes) == 2
