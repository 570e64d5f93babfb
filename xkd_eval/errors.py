"""Errors users see. Each carries one message that names the thing at fault and what to do."""

from __future__ import annotations


class XkdError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class UnknownNameError(XkdError, KeyError):
    """An unknown model, task, scorer or adapter name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AudioError(XkdError):
    """An item's audio is missing, unreadable or unusable."""


class DataFormatError(XkdError):
    """A data file does not have the expected layout."""
