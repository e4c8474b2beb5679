"""Atomic outputs: a folder appears whole under its name, or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlprune.io import write_dir_atomic


def _write(folder: Path, text: str) -> None:
    (folder / "a.txt").write_text(text)
    (folder / "sub").mkdir()
    (folder / "sub" / "b.txt").write_text(text)


def test_a_folder_is_written_whole_and_replaces_the_one_there(tmp_path):
    target = tmp_path / "out"
    write_dir_atomic(target, lambda d: _write(d, "old"))
    write_dir_atomic(target, lambda d: _write(d, "new"))
    assert (target / "a.txt").read_text() == (target / "sub" / "b.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left
    assert target.stat().st_mode & 0o777 != 0o700  # the usual mode, not mkdtemp's


def test_a_failed_write_leaves_the_old_folder_and_no_temporary_one(tmp_path):
    target = tmp_path / "out"
    write_dir_atomic(target, lambda d: _write(d, "old"))

    def fail(folder: Path) -> None:
        (folder / "a.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomic(target, fail)
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
