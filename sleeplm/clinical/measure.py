"""A clinical number with its unit and the evidence it came from."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_serializer

__all__ = ["Evidence", "Measure", "epoch_ranges", "true_runs"]


def true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``[start, stop)`` index runs where ``mask`` is True."""
    m = np.asarray(mask, dtype=bool)
    if m.size == 0:
        return []
    d = np.diff(np.r_[0, m.astype(np.int8), 0])
    return [(int(a), int(b)) for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1))]


def epoch_ranges(epochs: Iterable[int]) -> list[tuple[int, int]]:
    """Compress sorted epoch indices into inclusive ``(first, last)`` runs."""
    arr = np.unique(np.asarray(list(epochs), dtype=int))
    if arr.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(arr) != 1)
    starts = np.r_[arr[0], arr[breaks + 1]]
    ends = np.r_[arr[breaks], arr[-1]]
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


class Evidence(BaseModel):
    """Where a number came from: epochs (inclusive index runs), event ids, time intervals.

    ``event_ids`` index the recording's events table for scored events; ``intervals`` give
    (start, end) seconds for things detected from the signals (e.g. SpO2 desaturations).
    """

    model_config = ConfigDict(frozen=True)

    epochs: list[tuple[int, int]] = Field(default_factory=list, description="inclusive epoch runs")
    event_ids: list[int] = Field(default_factory=list)
    intervals: list[tuple[float, float]] = Field(default_factory=list, description="seconds")
    note: str = ""

    @classmethod
    def from_epochs(cls, epochs: Iterable[int], note: str = "") -> "Evidence":
        return cls(epochs=epoch_ranges(epochs), note=note)

    @property
    def n_epochs(self) -> int:
        return sum(b - a + 1 for a, b in self.epochs)


class Measure(BaseModel):
    """One number of the report.

    Attributes
    ----------
    name : str
        Machine name (``ahi_3a``).
    label : str
        Human label ("AHI (AASM 3%/arousal rule)").
    value : float or None
        None when it cannot be computed (see ``reason``).
    unit : str
        ``min``, ``%``, ``events/h``, ``bpm``, ``count``...
    evidence : Evidence
        The epochs, events or intervals the value was computed from.
    reason : str
        Why ``value`` is None, or a caveat about it.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    label: str
    value: float | None
    unit: str
    evidence: Evidence = Field(default_factory=Evidence)
    reason: str = ""

    @field_serializer("value")
    def _finite(self, value: float | None) -> float | None:
        if value is None or not math.isfinite(value):
            return None
        return round(float(value), 4)

    def format(self, digits: int = 1) -> str:
        """Value with its unit, for people ("23.4 events/h"; "n/a (no SpO2)")."""
        if self.value is None or not math.isfinite(self.value):
            return f"n/a ({self.reason})" if self.reason else "n/a"
        if self.unit == "count":
            return f"{int(round(self.value))}"
        return f"{self.value:.{digits}f} {self.unit}"

    @classmethod
    def missing(cls, name: str, label: str, unit: str, reason: str) -> "Measure":
        """A measure that could not be computed, with the reason."""
        return cls(name=name, label=label, value=None, unit=unit, reason=reason)
