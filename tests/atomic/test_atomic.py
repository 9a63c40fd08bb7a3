import errno
import os
import shutil

import pytest

from napari_sam_histo import atomic
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


# --- a full disk: ENOSPC anywhere in the write is one clear InputError naming the target ---

def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_names_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "slide.geojson"
    target.write_bytes(b"previous")
    with pytest.raises(InputError, match=r"Cannot write .*slide\.geojson: the disk is full") as caught:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            _no_space()
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC  # still an OSError
    assert "left as it was" in str(caught.value)
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["slide.geojson"]  # the temp file is gone


def test_a_full_disk_raised_from_inside_a_library_is_recognised(tmp_path):
    target = tmp_path / "labels.ome.tif"
    with pytest.raises(InputError, match="labels.ome.tif: the disk is full.*nothing was written"):
        with atomic_path(target):
            try:
                _no_space()
            except OSError as err:
                raise RuntimeError("writer failed") from err  # a library wrapping the OSError
    assert os.listdir(tmp_path) == []


def test_a_full_disk_when_creating_the_temp_file(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.tempfile, "mkstemp", _no_space)
    with pytest.raises(InputError, match=r"Cannot write .*report\.json: the disk is full"):
        with atomic_path(tmp_path / "report.json"):
            pytest.fail("the body must not run")
    assert os.listdir(tmp_path) == []


def test_a_full_disk_at_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")
    monkeypatch.setattr(atomic.os, "replace", _no_space)
    with pytest.raises(InputError, match=r"out\.png: the disk is full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["out.png"]


def test_a_write_failure_without_errno_on_an_almost_full_disk(tmp_path, monkeypatch):
    # torch.save reports a full disk as RuntimeError("... file write failed"), without an errno
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(InputError, match=r"dec\.pt: the disk is full"):
        with atomic_path(tmp_path / "dec.pt"):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="file write failed"):  # with space left it is not a full disk
        with atomic_path(tmp_path / "dec.pt"):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert os.listdir(tmp_path) == []
