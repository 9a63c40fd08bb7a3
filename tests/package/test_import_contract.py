"""The import contracts of ``.importlinter`` (layers, no Qt outside ``_napari``, no cycles) hold,
counting imports inside functions; and an upward, Qt or circular import breaks them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".importlinter"
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint_imports(package_parent: Path = ROOT) -> subprocess.CompletedProcess:
    """``lint-imports`` with the repository's contracts on the ``napari_sam_histo`` in ``package_parent``."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([sys.executable, "-c", LINT, "--config", str(CONFIG), "--no-cache"],
                          cwd=package_parent, env=env, capture_output=True, text=True)


def test_the_package_keeps_its_import_contracts():
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kept, 0 broken" in result.stdout, result.stdout


@pytest.fixture
def package_copy(tmp_path):
    """The package's Python files in ``tmp_path`` (the contracts are checked on the copy)."""
    shutil.copytree(ROOT / "napari_sam_histo", tmp_path / "napari_sam_histo",
                    ignore=lambda folder, names: [n for n in names if n == "__pycache__"
                                                  or (Path(folder, n).is_file() and not n.endswith(".py"))])
    return tmp_path


def add_import(package_parent: Path, module: str, line: str) -> None:
    path = package_parent / "napari_sam_histo" / module
    path.write_text(path.read_text() + f"\n\ndef _added():\n    {line}\n")


@pytest.mark.parametrize("module, line, broken", [
    ("slides/reader.py", "from ..evaluation import metrics", ("napari_sam_histo.slides is not allowed to import "
                                                              "napari_sam_histo.evaluation")),
    ("engine/tiles.py", "from .._napari import reader", ("napari_sam_histo.engine is not allowed to import "
                                                        "napari_sam_histo._napari")),
    ("evaluation/runner.py", "import qtpy", "napari_sam_histo.evaluation is not allowed to import qtpy"),
    ("cli/__init__.py", "import napari", "napari_sam_histo.cli is not allowed to import napari"),
    ("slides/boxes.py", "from . import reader", "No cycles are allowed in napari_sam_histo.slides"),
])
def test_an_import_against_the_contracts_breaks_them(package_copy, module, line, broken):
    assert lint_imports(package_copy).returncode == 0  # the copy itself is clean
    add_import(package_copy, module, line)
    result = lint_imports(package_copy)
    assert result.returncode != 0
    assert broken in " ".join(result.stdout.split()), result.stdout
