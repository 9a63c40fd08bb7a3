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
