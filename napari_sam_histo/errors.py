"""Errors a user can act on.

Every error the core raises for bad input or a bad file is a ``SamHistoError`` whose message names
the file or value and what was expected. The CLI and the widgets show the message, never a
traceback.
"""


class SamHistoError(Exception):
    """Base class: something the user can fix (a file, a value, a missing download)."""


class WeightsError(SamHistoError):
    """A weights file is missing, cannot be fetched, or fails its hash check."""


class CheckpointError(SamHistoError):
    """A checkpoint file cannot be read, or does not hold what was expected."""


class InputError(SamHistoError, ValueError):
    """An image, a click or a parameter is not usable."""


class DiskFullError(InputError, OSError):
    """A file could not be written because its disk (or the user's quota) is full.

    Also an ``OSError`` (``errno`` is ``ENOSPC`` or ``EDQUOT``), so code that already treats a
    failed write as an ``OSError`` (e.g. an optional cache) keeps doing so."""

    def __init__(self, message: str, errno_value: int | None = None):
        super().__init__(message)
        self.errno = errno_value
