"""Body position at given times, from the POSITION channel or scored position changes."""

from __future__ import annotations

import numpy as np

from sleeplm.recording import POSITIONS, EventType, Recording

__all__ = ["position_at", "has_position"]


def has_position(rec: Recording) -> bool:
    """True when the recording says anything about body position."""
    if "POSITION" in rec.signals and rec.signals["POSITION"].quality_problem() is None:
        return True
    return not rec.events_of(EventType.POSITION_CHANGE).empty


def position_at(rec: Recording, times: np.ndarray | float) -> np.ndarray:
    """Body position ("supine", "left", "right", "prone", "upright" or "unknown") at each time.

    The POSITION channel wins when usable; otherwise the last scored position change before each
    time applies (``attributes["position"]`` of ``position_change`` events).

    Parameters
    ----------
    times : array-like
        Seconds from the recording start.
    """
    t = np.atleast_1d(np.asarray(times, dtype=float))
    out = np.full(t.shape, "unknown", dtype="<U8")
    names = np.array(POSITIONS + ("unknown",), dtype="<U8")
    sig = rec.signals.get("POSITION")
    if sig is not None and sig.quality_problem() is None:
        idx = np.clip(np.round(t * sig.sfreq).astype(int), 0, sig.data.size - 1)
        codes = sig.data[idx]
        codes = np.where(np.isfinite(codes), codes, len(POSITIONS)).astype(int)
        return names[np.clip(codes, 0, len(POSITIONS))]
    changes = rec.events_of(EventType.POSITION_CHANGE)
    if changes.empty:
        return out
    onsets = changes["onset"].to_numpy()
    pos = np.array([str(a.get("position", "unknown")) for a in changes["attributes"]], dtype="<U8")
    k = np.searchsorted(onsets, t, side="right") - 1
    ok = k >= 0
    out[ok] = pos[k[ok]]
    return out
