"""Specific exceptions raised by :mod:`sleeplm`.

Every message says what was expected, what was found and what to do about it, so that the
command line, the chat app and the batch runner can show it to a person as it is.
"""

from __future__ import annotations

__all__ = [
    "SleepLMError",
    "RecordingFileError",
    "TruncatedFileError",
    "EmptyRecordingError",
    "MissingChannelError",
    "SignalQualityError",
    "AnnotationError",
    "UnknownStageError",
    "UnsupportedFormatError",
    "BeatSeriesError",
]


class SleepLMError(Exception):
    """Base class of every error raised on purpose by sleeplm."""


class RecordingFileError(SleepLMError, ValueError):
    """A signal file is not a readable EDF/EDF+/BDF file (wrong format, corrupt header)."""


class TruncatedFileError(RecordingFileError):
    """The file holds fewer data records than its header promises."""


class EmptyRecordingError(RecordingFileError):
    """The file (or the part of it asked for) holds no samples at all."""


class UnsupportedFormatError(RecordingFileError):
    """The file is of a kind sleeplm recognises but cannot read (e.g. discontinuous EDF+D)."""


class MissingChannelError(SleepLMError, LookupError):
    """A computation needs a channel that the recording does not have."""

    def __str__(self) -> str:  # LookupError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class SignalQualityError(SleepLMError, ValueError):
    """A channel exists but carries no usable signal (all NaN, flat, out of range)."""


class AnnotationError(SleepLMError, ValueError):
    """An annotation file is malformed, of an unknown kind, or inconsistent with the signals."""


class UnknownStageError(AnnotationError):
    """A hypnogram holds a stage label that none of the known vocabularies defines."""


class BeatSeriesError(RecordingFileError):
    """A beat-time / RR-interval series cannot be read as a heart-rate study (times going
    backwards, implausible rates throughout, too little usable data)."""
