"""Installing the wheel into a napari a user already has must bring no Qt binding and change nothing.

A lab's napari comes from conda, the napari bundle (PySide6), pip with PyQt5, or is headless with
no binding at all; `pip install napari-sam-histo` goes into that environment. The napari here is a
fresh virtualenv that sees this venv's packages (napari, torch, ...) through a .pth file pointing at
a folder of symlinks to everything in site-packages *except* the Qt bindings, micro-sam (an extra:
it requires PyQt6) and this package, with, in some cases, a stand-in for the user's own binding (a
dist-info folder named PySide6 or PyQt5, which nothing requires).
pip then resolves the wheel against what is installed, offline: ``--no-index`` and ``--find-links``
only to the wheel's folder. So anything pip would want to add or replace, a Qt binding named by the
package, by an extra of napari or by a dependency such as micro-sam, makes resolution fail or shows
up in the report. Nothing is downloaded; no network is needed.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"
QT_BINDINGS = ("pyqt5", "pyqt6", "pyside2", "pyside6", "shiboken2", "shiboken6")  # and -qt6, -sip, -essentials...
# Extras of napari (and napari-console) that bring a binding: never in our core dependencies.
NAPARI_QT_EXTRAS = {"all", "qt", "pyqt", "pyqt5", "pyqt6", "pyside", "pyside2", "pyside6", "all-optional"}
# Core requirements allowed an exact pin or an upper bound, with the reason. None needs one now.
BOUNDED_OK: dict[str, str] = {}

pytestmark = pytest.mark.install


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def is_qt_binding(name: str) -> bool:
    return canonical(name).startswith(QT_BINDINGS)


def pip_env() -> dict[str, str]:
    """No pip configuration at all (this machine's global config adds indexes, find-links and a
    constraints file), no user site, no PYTHONPATH: pip sees only what the test gives it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PYTHONNOUSERSITE="1", PYTHONWARNINGS="ignore")
    return env


def run(args, cwd, check=True):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=pip_env())
    if check:
        assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", ROOT, "-w", out],
        cwd=out)
    [built] = out.glob("napari_sam_histo-*.whl")
    return built


def symlink_farm(root: Path, leave_out=()) -> Path:
    """This venv's site-packages as symlinks, less every Qt binding, napari-sam-histo and `leave_out`."""
    site = Path(sysconfig.get_paths()["purelib"])
    root.mkdir()
    for entry in site.iterdir():
        name = canonical(entry.name)
        if not (is_qt_binding(name) or "napari-sam-histo" in name or name.startswith(tuple(leave_out))
                or entry.suffix == ".pth"):
            (root / entry.name).symlink_to(entry)
    return root


@pytest.fixture(scope="module")
def without_qt(tmp_path_factory) -> Path:
    """A napari without Qt and without micro-sam (an optional extra, which requires PyQt6)."""
    return symlink_farm(tmp_path_factory.mktemp("farm") / "site", leave_out=("micro-sam",))


def make_napari_env(root: Path, farm: Path, binding: str | None) -> Path:
    """A fresh venv seeing `farm`, plus a stand-in dist-info for the user's own binding."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True, env=pip_env())
    own_site = root / "lib" / PY / "site-packages"
    (own_site / "existing-napari.pth").write_text(f"{farm}\n")
    if binding:
        name, version = binding.split("==")
        info = own_site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("conda\n")  # as a conda or bundle install would leave it
        (info / "RECORD").write_text("")
    return root / "bin" / "python"


LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json\n"
    "print(json.dumps(sorted([d.metadata['Name'], d.version] for d in m.distributions())))\n"
)


def distributions(python: Path, cwd: Path, then: str = "") -> dict[str, str]:
    """What `python` has installed, as napari's plugin discovery sees it (importlib.metadata)."""
    out = run([python, "-c", then + LIST_DISTRIBUTIONS], cwd=cwd).stdout.splitlines()[-1]
    found = [(canonical(name), version) for name, version in json.loads(out)]
    assert len({name for name, _ in found}) == len(found), "a distribution is there twice"
    return dict(found)


def dry_run_args(python: Path, requirement: str, wheel: Path, report: Path) -> list[str]:
    """pip's resolver against what `python` has installed, offline, its choice written to `report`."""
    return [str(a) for a in (python, "-m", "pip", "install", "--dry-run", "--quiet", "--report", report,
                             "--no-index", "--find-links", wheel.parent, requirement)]


@dataclass
class Scenario:
    root: Path
    python: Path
    binding: str | None
    before: dict[str, str]
    report: dict | None
    result: subprocess.CompletedProcess


def scenarios(wheel: Path, farm: Path, tmp: Path, cases: dict[str, tuple[str | None, str]]) -> dict[str, Scenario]:
    """For each case (binding, requirement): a fresh napari and pip's dry run into it, the dry runs
    side by side (each is seconds of CPU, resolving napari's and torch's trees)."""
    started = {}
    for key, (binding, requirement) in cases.items():
        root = tmp / key
        python = make_napari_env(root / "env", farm, binding)
        before = distributions(python, root)
        proc = subprocess.Popen(dry_run_args(python, requirement, wheel, root / "report.json"), cwd=root,
                                env=pip_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started[key] = (root, python, binding, before, proc)
    done = {}
    for key, (root, python, binding, before, proc) in started.items():
        out, err = proc.communicate(timeout=600)
        report = root / "report.json"
        done[key] = Scenario(root, python, binding, before, json.loads(report.read_text()) if report.exists() else None,
                             subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


BINDINGS = {"no-binding": None, "pyqt5": "PyQt5==5.15.11", "pyside6": "PySide6==6.9.1"}


@pytest.fixture(scope="module")
def existing_napari(wheel, without_qt, tmp_path_factory) -> dict[str, Scenario]:
    cases = {key: (binding, str(wheel)) for key, binding in BINDINGS.items()}
    return scenarios(wheel, without_qt, tmp_path_factory.mktemp("napari"), cases)


@pytest.mark.slow
def test_wheel_metadata_names_no_qt_binding_and_no_pins(wheel):
    archive = zipfile.ZipFile(wheel)
    metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    meta = email.parser.Parser().parsestr(metadata)
    requirements = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    core = [r for r in requirements if r.marker is None or "extra" not in str(r.marker)]
    extra = [r for r in requirements if r not in core]
    assert core and extra
    assert not [str(r) for r in core if is_qt_binding(r.name)], "a Qt binding outside an extra"
    napari = [r for r in core if canonical(r.name) == "napari"]
    assert napari and not (napari[0].extras & NAPARI_QT_EXTRAS), f"napari with a Qt extra: {napari[0]}"
    assert "micro-sam" not in {canonical(r.name) for r in core}, "micro-sam requires PyQt6: keep it an extra"
    bounded = {str(r) for r in core if canonical(r.name) not in BOUNDED_OK
               and any(s.operator in ("==", "===", "~=", "<", "<=") for s in r.specifier)}
    assert not bounded, f"pins or upper bounds in the core dependencies: {sorted(bounded)}"
    assert {"pyqt6", "microsam", "test"} <= set(meta.get_all("Provides-Extra"))
    pyqt6_extra = {canonical(r.name) for r in extra if 'extra == "pyqt6"' in str(r.marker)}
    assert "pyqt6" in pyqt6_extra, "scripts/setup relies on .[pyqt6] for the GUI tests"


@pytest.mark.parametrize("key", list(BINDINGS))
@pytest.mark.slow
def test_installing_into_an_existing_napari_adds_only_this_package(existing_napari, key):
    case = existing_napari[key]
    assert "napari" in case.before and "torch" in case.before and "micro-sam" not in case.before
    binding = [canonical(case.binding.split("==")[0])] if case.binding else []
    assert [n for n in case.before if is_qt_binding(n)] == binding
    if case.result.returncode != 0:
        pytest.fail(f"pip would not install the wheel into this napari offline:\n{case.result.stderr[-3000:]}")
    to_install = [(canonical(i["metadata"]["name"]), i["metadata"]["version"]) for i in case.report["install"]]
    assert to_install == [("napari-sam-histo", "0.1.0")], to_install


@pytest.mark.slow
def test_installed_for_real_napari_finds_it_and_nothing_else_changed(existing_napari, wheel):
    """Install what the resolver chose (just the wheel: --no-deps saves resolving twice): napari's
    plugin discovery finds it, imported from that venv, with still no PyQt6 and nothing else changed."""
    case = existing_napari["pyside6"]
    run([case.python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", wheel], cwd=case.root)
    check = ("import importlib.util, napari_sam_histo\n"
             "from npe2 import PluginManifest\n"
             "assert PluginManifest.from_distribution('napari-sam-histo').name == 'napari-sam-histo'\n"
             f"assert str(napari_sam_histo.__file__).startswith({str(case.root / 'env')!r}), napari_sam_histo.__file__\n"
             "assert importlib.util.find_spec('PyQt6') is None\n")
    after = distributions(case.python, case.root, then=check)
    assert after == {**case.before, "napari-sam-histo": "0.1.0"}


@pytest.mark.slow
def test_the_resolver_check_catches_a_qt_requirement(wheel, tmp_path):
    """The harness itself: asked for the [pyqt6] extra, or for micro-sam (here installed, as a user
    may have it, but it requires PyQt6), the same offline resolution fails for want of PyQt6."""
    farm = symlink_farm(tmp_path / "site")
    wanted_by = {"pyqt6": r"napari(-sam-histo)?\[pyqt6\]", "microsam": "micro-sam"}
    cases = {extra: ("PySide6==6.9.1", f"napari-sam-histo[{extra}] @ {wheel.as_uri()}") for extra in wanted_by}
    for extra, case in scenarios(wheel, farm, tmp_path, cases).items():
        result = case.result
        assert result.returncode != 0 and re.search(rf"requirement PyQt6\b.*\(from {wanted_by[extra]}", result.stderr), \
            f"[{extra}]: expected pip to fail for want of PyQt6:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
