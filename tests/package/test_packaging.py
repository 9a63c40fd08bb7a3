import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_is_valid_and_found_by_the_entry_point():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-sam-histo")
    assert manifest.name == "napari-sam-histo"
    assert [s.key for s in manifest.contributions.sample_data] == ["cmu1_region"]
    result = subprocess.run([sys.executable, "-m", "npe2", "validate", str(ROOT / "napari.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_core_imports_no_qt():
    code = (
        "import sys\n"
        "import napari_sam_histo.cli, napari_sam_histo.demo, napari_sam_histo.perf\n"
        "import napari_sam_histo.engine.session, napari_sam_histo.engine.embedding_cache\n"
        "import napari_sam_histo.models.decoders, napari_sam_histo.slides.reader\n"
        "import napari_sam_histo.evaluation.clicker, napari_sam_histo._napari.sample_data\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sample_data_is_the_real_slide():
    from napari_sam_histo._napari.sample_data import cmu1_region

    [(data, meta, kind)] = cmu1_region()
    assert kind == "image" and data.shape == (2967, 2220, 3) and meta["rgb"]
    assert meta["scale"] == (0.499, 0.499)


@pytest.mark.slow
def test_wheel_carries_the_manifest_and_the_sample(tmp_path):
    import zipfile

    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(ROOT),
         "-w", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    [wheel] = tmp_path.glob("napari_sam_histo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_sam_histo/napari.yaml" in names
    assert "napari_sam_histo/resources/cmu-1-small-region.svs" in names
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "napari-sam-histo = napari_sam_histo:napari.yaml" in entry_points


def test_slides_import_nothing_of_the_engine():
    # one direction: the engine reads slides; slides know nothing of tiles, sessions or models
    import ast
    from pathlib import Path

    import napari_sam_histo.slides as slides

    offenders = []
    for path in Path(slides.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and "engine" in node.module.split("."):
                offenders.append(f"{path.name}: from {'.' * node.level}{node.module}")
    assert offenders == []
