"""Shared fixtures. Core tests import no Qt; no test touches the network."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import numpy as np
import pytest

warnings.filterwarnings("ignore", message="Overwriting tiny_vit")
warnings.filterwarnings("ignore", category=FutureWarning)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_SLIDE = ROOT / "resources" / "cmu-1-small-region.svs"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open an internet connection fails the test loudly."""

    def refuse(self, address, *args, **kwargs):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")):
            return real_connect(self, address, *args, **kwargs)
        if self.family == socket.AF_UNIX:
            return real_connect(self, address, *args, **kwargs)
        raise AssertionError(f"test tried to reach the network: {address}")

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A cache with no weights in it, and no micro-sam cache either."""
    monkeypatch.setenv("NAPARI_SAM_HISTO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MICROSAM_CACHEDIR", str(tmp_path / "microsam"))
    monkeypatch.delenv("NAPARI_SAM_HISTO_WEIGHTS", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny_model():
    from napari_sam_histo.models.registry import random_model

    return random_model("tiny", "cpu")


@pytest.fixture(scope="session")
def mobile_sam():
    """The real MobileSAM weights (scripts/test fetches them before pytest runs)."""
    from napari_sam_histo.errors import WeightsError
    from napari_sam_histo.models.registry import load_model

    try:
        return load_model("vit_t", "cpu")
    except WeightsError as err:
        pytest.fail(f"MobileSAM weights are needed for behaviour tests: {err}")


@pytest.fixture(scope="session")
def sample_source():
    from napari_sam_histo.slides.reader import open_image

    return open_image(SAMPLE_SLIDE)


@pytest.fixture
def patches_dir(tmp_path):
    """Six synthetic patches in three 'cases' (manifest column case_id), blobs on noise (the
    training tests' data, in tests/training and tests/models)."""
    import csv

    from .evaluation.test_benchmark import _disk, write_pair

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        mask = _disk((48, 48), (20 + i, 24), 10 + i)
        image = rng.integers(0, 60, (48, 48, 3), dtype=np.uint8)
        image[mask] += 150
        write_pair(root, f"p{i}", image, (mask * 255).astype(np.uint8))
        rows.append({"stem": f"p{i}", "case_id": f"case{i // 2}"})
    with open(root / "manifest.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["stem", "case_id"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_collection_modifyitems(config, items):
    """Markers from what a test needs, so that every test carries them without each file saying so:
    ``weights`` for the real MobileSAM (the ``mobile_sam`` fixture), ``gui`` for a napari window
    (``make_napari_viewer``, or a ``test_gui_*`` file). ``pytest -m "not slow and not gui"`` is the
    quick run for development; CI runs everything."""
    for item in items:
        names = item.fixturenames if isinstance(item, pytest.Function) else ()
        if "mobile_sam" in names:
            item.add_marker(pytest.mark.weights)
        if "make_napari_viewer" in names or item.path.name.startswith("test_gui_"):
            item.add_marker(pytest.mark.gui)
