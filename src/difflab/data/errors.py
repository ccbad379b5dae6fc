"""The one exception type of :mod:`difflab.data`."""

from __future__ import annotations


class DataError(ValueError):
    """A data set could not be loaded; the message is one line that says what to do."""
