"""What the Benchmark dock remembers between openings and napari sessions: the dataset and the
report folder last used.

They live in a ``QSettings`` of the plugin's own (organisation ``napari-sam-histo``, application
``benchmark-dock``, an ini file in the user's configuration folder, e.g.
``~/.config/napari-sam-histo/benchmark-dock.ini`` on Linux); nothing else is stored, and nothing of
napari's own settings is touched. A path is remembered as typed, checked only when Run is pressed.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QSettings

ORGANIZATION, APPLICATION = "napari-sam-histo", "benchmark-dock"
DATASET_KEY, REPORT_KEY = "paths/dataset", "paths/report_folder"
DEFAULT_REPORT_FOLDER = Path.home() / "napari-sam-histo-benchmark"


def user_settings() -> QSettings:
    """The plugin's own settings file in the user's configuration folder."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)


class BenchmarkPaths:
    """The dataset and report folder paths, read from and written to ``settings``."""

    def __init__(self, settings: QSettings) -> None:
        self.settings = settings

    @property
    def dataset(self) -> str:
        return str(self.settings.value(DATASET_KEY, "", type=str))

    @property
    def report_folder(self) -> str:
        return str(self.settings.value(REPORT_KEY, "", type=str)) or str(DEFAULT_REPORT_FOLDER)

    def remember(self, dataset: str | None = None, report_folder: str | None = None) -> None:
        """Store the paths given (``None``: leave that one as it is) and write them to disk."""
        for key, value in ((DATASET_KEY, dataset), (REPORT_KEY, report_folder)):
            if value is not None:
                self.settings.setValue(key, value.strip())
        self.settings.sync()
