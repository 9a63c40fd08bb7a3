import os

import pytest

from napari_sam_histo.atomic import atomic_path
from napari_sam_histo.errors import InputError


def test_failed_write_leaves_the_previous_file_intact(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["out.png"]


def test_successful_write_replaces_and_refuses_overwrite_when_asked(tmp_path):
    target = tmp_path / "out.png"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(InputError, match="exists already"):
        with atomic_path(target, overwrite=False):
            pass


def test_unwritable_destination_is_a_clear_error(tmp_path):
    # A folder that cannot be created (its parent is a file) fails like a read-only one, also as root.
    blocker = tmp_path / "report.txt"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="Cannot write to .*report.txt"):
        with atomic_path(blocker / "x.png"):
            pass


def test_written_files_get_ordinary_permissions(tmp_path):
    with atomic_path(tmp_path / "r.json") as tmp:
        tmp.write_text("{}")
    assert (tmp_path / "r.json").stat().st_mode & 0o044 == 0o044  # readable by group and others
