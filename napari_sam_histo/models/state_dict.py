"""Read weights files safely: ``torch.load(weights_only=True)``, one clear error per failure.

Before loading, the first bytes tell what the file is, so that a file that is no PyTorch checkpoint
at all (empty, text, an HTML error page saved as ``.pt``, random bytes, a plain Python pickle, a
zip archive that ``torch.save`` did not write, a zip cut short) is reported as "<file> is not a
PyTorch checkpoint (...)", and the ``weights_only`` refusal ("loading it would run code from the
file") is kept for real checkpoints whose pickle asks for Python classes or functions.

Which of the two a refusal by ``torch.load`` is does not rest on the wording of torch's message
(it differs between torch versions and between a class and a blocked module such as ``os``): the
pickle is read again with ``pickletools``, which decodes its opcodes and runs nothing. A pickle that
decodes to its end was refused for what it asks for; one that does not is truncated or corrupt.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import CheckpointError

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format (since 1.6) is a zip archive
# torch's legacy format starts with a pickled magic number (LONG1, 10 bytes little-endian)
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_HEAD = 64


def _size_text(size: int) -> str:
    return f"{size} bytes" if size < 10_000 else f"{size / 2**20:.1f} MiB"


def _describe_head(head: bytes) -> str:
    """What a file that is neither of torch's formats looks like, from its first bytes."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it is a plain Python pickle, not a file written by torch.save"
    text = None
    for cut in range(4):  # the 64 bytes read may end inside a multi-byte character
        try:
            text = head[:len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            pass
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        if first.startswith("version https://git-lfs"):
            return "it is a Git LFS pointer file, not the file itself; fetch it with `git lfs pull`"
        if first.lower().startswith(("<!doctype html", "<html", "<?xml")):
            return f"it is an HTML/XML page ({first!r}), perhaps an error page saved instead of the download"
        return f"it is text, starting {first!r}" if first else "it holds only blank text"
    return (f"it starts with bytes {head[:8].hex(' ')}, neither a zip archive (torch.save) nor "
            f"torch's legacy format")


def _not_a_checkpoint(path: Path, size: int) -> str | None:
    """Why ``path`` is not a PyTorch checkpoint at all, or ``None`` when its header is one."""
    if size == 0:
        return "the file is empty, 0 bytes"
    with open(path, "rb") as stream:
        head = stream.read(_HEAD)
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return (f"truncated or corrupt: a zip archive whose end is missing or damaged, {_size_text(size)}; "
                    f"was the download or copy interrupted?")
        if not any(name.endswith("data.pkl") for name in names):
            return (f"a zip archive without the data.pkl that torch.save writes ({len(names)} "
                    f"file{'' if len(names) == 1 else 's'} in it)")
        return None
    if _LEGACY_MAGIC in head[:32]:
        return None
    return _describe_head(head)


# the names a plain checkpoint's pickle refers to: torch's tensor and storage rebuilders, the ordered
# dict of a state_dict, the codec numpy's byte strings go through
_TENSOR_MODULES = ("torch",)
_TENSOR_GLOBALS = frozenset({"collections.OrderedDict", "_codecs.encode"})
_LEGACY_PICKLES = 4  # magic number, protocol, system info, then the object itself


def _is_tensor_global(name: str) -> bool:
    return name in _TENSOR_GLOBALS or name.split(".")[0] in _TENSOR_MODULES


def _scan_globals(stream, found: list[str]) -> None:
    """Append the ``module.name`` globals of the one pickle at ``stream``'s position to ``found``;
    ``pickletools.genops`` only decodes opcodes, it runs nothing. Raises on a damaged pickle."""
    memo: dict[int, object] = {}
    pushed: list[object] = []  # what the ops pushed, strings kept (enough for STACK_GLOBAL's two)
    stopped = False
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            found.append(".".join(str(arg).split(" ", 1)))
        elif name == "STACK_GLOBAL":
            module, attribute = pushed[-2:] if len(pushed) >= 2 else (None, None)
            found.append(f"{module}.{attribute}" if isinstance(module, str) and isinstance(attribute, str)
                         else "a global named on the stack")
        if name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = pushed[-1] if pushed else None
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(int(arg)))
        elif isinstance(arg, (str, bytes)) and name not in ("GLOBAL", "INST"):
            pushed.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
        elif name != "FRAME":
            pushed.append(None)
        del pushed[:-2]
        stopped = name == "STOP"
    if not stopped:
        raise EOFError("the pickle ends before its STOP opcode")


def _pickle_globals(path: Path) -> list[str] | None:
    """The Python globals that the checkpoint's pickle asks for, read without running anything;
    ``None`` when the pickle does not decode to its end (truncated or corrupt)."""
    found: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = min((n for n in archive.namelist() if n.endswith("data.pkl")), key=lambda n: n.count("/"))
                with archive.open(name) as stream:
                    _scan_globals(stream, found)
        else:
            with open(path, "rb") as stream:
                for _ in range(_LEGACY_PICKLES):
                    _scan_globals(stream, found)
    except Exception:  # noqa: BLE001 - any failure to decode is a damaged pickle, nothing ran
        return None
    return found


def read_checkpoint(path: str | Path) -> dict:
    """Load a ``.pt``/``.pth`` file with ``weights_only=True``; raise ``CheckpointError`` naming it."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file.")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    try:
        size = path.stat().st_size
        why = _not_a_checkpoint(path, size)
    except OSError as err:
        raise CheckpointError(f"Cannot read checkpoint {path}: {err.strerror or err}.") from err
    if why is not None:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({why}).")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        asks_for = _pickle_globals(path)
        if asks_for is None:
            raise CheckpointError(f"Cannot read checkpoint {path}: the file is truncated or corrupt "
                                  f"({_size_text(size)}; its pickle cannot be read).") from err
        named = [g for g in asks_for if not _is_tensor_global(g)]
        if not named:  # torch refused one of its own names: say the one its message gives
            named = re.findall(r"GLOBAL ([\w.]+)", str(err))[:1]
        needs = f"; it needs {', '.join(dict.fromkeys(named))}" if named else ""
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain values; it is refused because "
            f"loading it would run code from the file ({err.__class__.__name__}{needs})."
        ) from err
    except MemoryError:
        raise
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... for damaged contents
        detail = str(err).splitlines()[0][:200] if str(err) else err.__class__.__name__
        raise CheckpointError(f"Cannot read checkpoint {path}: the file is truncated or corrupt "
                              f"({_size_text(size)}; {detail}).") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a dictionary of weights.")
    return data


def sam_state_dict(data: dict) -> OrderedDict[str, torch.Tensor]:
    """The SAM weights inside a checkpoint: a plain state dict, or torch_em's training format
    (``model_state`` with ``sam.``-prefixed keys, as micro-sam's fine-tuned models are stored)."""
    state = data.get("model_state", data)
    if not isinstance(state, dict):
        raise CheckpointError("The checkpoint's 'model_state' is not a dictionary of weights.")
    prefix = "sam."
    return OrderedDict(
        (key[len(prefix):] if key.startswith(prefix) else key, value)
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    )
