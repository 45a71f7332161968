"""Specific errors raised by the tools (each message says what was expected and what to do)."""

from __future__ import annotations

from sleeplm.errors import SleepLMError

__all__ = [
    "EmptyQueryError",
    "NoIndexError",
    "NoPatientError",
    "TimeRangeError",
    "ToolError",
    "UnknownEventTypeError",
    "UnsupportedScorerError",
]


class ToolError(SleepLMError):
    """Base class of the errors raised on purpose by :mod:`tools`."""


class EmptyQueryError(ToolError, ValueError):
    """A text query or label list is empty or blank."""


class UnsupportedScorerError(ToolError, ValueError):
    """A scorer asked for a query it cannot score (e.g. the generative scorer, free text)."""


class TimeRangeError(ToolError, ValueError):
    """A time, epoch or range that is malformed or lies outside the night."""


class NoPatientError(ToolError, LookupError):
    """The tool needs a current patient and the context has none."""

    def __str__(self) -> str:  # LookupError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class NoIndexError(ToolError, LookupError):
    """Retrieval needs an embedding index and the context has none."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownEventTypeError(ToolError, ValueError):
    """An event type that :class:`sleeplm.recording.EventType` does not define."""


class UnknownMeasureError(ToolError, KeyError):
    """A measure name that no study's clinical facts define."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
