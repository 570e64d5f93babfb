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


class EndpointError(XkdError):
    """A model's endpoint or engine cannot go on (unreachable, key refused, model not served): the run stops,
    keeping every answer it has, and a rerun resumes."""


class PartialFailure(XkdError):
    """Some queries of a batch failed. ``answers`` holds every query's answer (None where it failed), ``failures``
    the failed positions' messages, and ``fatal`` an :class:`EndpointError` when the run cannot go on after it."""

    def __init__(self, answers: list, failures: dict[int, str], fatal: EndpointError | None = None) -> None:
        super().__init__(str(fatal) if fatal else f"{len(failures)} of {len(answers)} queries failed")
        self.answers, self.failures, self.fatal = answers, failures, fatal
