"""Which time counts as sleep: the denominator of every index.

With a hypnogram, indices are per hour of total sleep time (TST) and only events during sleep
epochs count. Without one (a home sleep apnea test), they are per hour of monitoring time and
every event counts; the basis is then named in the measure's caveat (REI rather than AHI).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sleeplm.recording import SLEEP_STAGES, Recording

__all__ = ["SleepTime", "sleep_time", "in_sleep"]


@dataclass(frozen=True)
class SleepTime:
    """The time base of the indices.

    Attributes
    ----------
    hours : float
        Hours of TST (staged) or of monitoring time (unstaged).
    staged : bool
        True when ``hours`` is TST from a hypnogram.
    basis : str
        "total sleep time" or "monitoring time (no sleep staging)".
    """

    hours: float
    staged: bool
    basis: str


def sleep_time(rec: Recording) -> SleepTime:
    """Return the time base of indices for ``rec``."""
    if rec.has_stages:
        n_sleep = int(np.isin(rec.stages, SLEEP_STAGES).sum())
        return SleepTime(n_sleep * rec.epoch_sec / 3600.0, True, "total sleep time")
    return SleepTime(rec.duration / 3600.0, False, "monitoring time (no sleep staging)")


def in_sleep(rec: Recording, times: np.ndarray | float) -> np.ndarray:
    """True for each time (s) that falls in a sleep epoch, or anywhere when unstaged."""
    t = np.atleast_1d(np.asarray(times, dtype=float))
    if not rec.has_stages:
        return (t >= 0) & (t <= rec.duration)
    return np.isin(rec.stage_at(t), SLEEP_STAGES)
