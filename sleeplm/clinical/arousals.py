"""Arousal index (AASM): scored arousals during sleep per hour of TST, overall and by cause."""

from __future__ import annotations

from sleeplm.clinical.measure import Evidence, Measure
from sleeplm.clinical.sleep_time import in_sleep, sleep_time
from sleeplm.errors import MissingChannelError
from sleeplm.recording import EventType, Recording

__all__ = ["arousal_measures"]

_CAUSES = ("respiratory", "spontaneous", "limb")


def arousal_measures(rec: Recording) -> list[Measure]:
    """Arousal count and indices (events/h of TST), overall and per cause.

    Causes come from the scored label ("Arousal (ARES)" -> respiratory, "(API)"/"spontaneous",
    limb movement arousals); arousals without a cause count in the overall index only.
    """
    st = sleep_time(rec)
    ar = rec.events_of(EventType.AROUSAL)
    if ar.empty:
        has_eeg = any(c.startswith("EEG_") for c in rec.signals)
        if rec.info.annotation_source is None or not has_eeg:
            raise MissingChannelError(
                "The arousal index needs scored arousals, and there are none: "
                + ("no annotations were given" if rec.info.annotation_source is None else
                   "the recording has no EEG channel, so none could have been scored")
                + ". Give the scored events (NSRR/Profusion XML or EDF+ annotations)."
            )
    ar = ar[in_sleep(rec, ar["onset"].to_numpy())] if len(ar) else ar
    caveat = "" if st.staged else "per hour of monitoring time (no sleep staging)"
    if ar.empty:
        caveat = "; ".join(x for x in (caveat, "no arousals in the annotations") if x)
    ids = [int(i) for i in ar.index]
    out = [Measure(name="arousal_count", label="Arousals in sleep", value=float(len(ar)),
                   unit="count", evidence=Evidence(event_ids=ids))]
    if st.hours <= 0:
        out.append(Measure.missing("arousal_index", "Arousal index", "events/h", "no sleep time"))
        return out
    out.append(Measure(name="arousal_index", label="Arousal index", value=len(ar) / st.hours,
                       unit="events/h", evidence=Evidence(event_ids=ids), reason=caveat))
    causes = [str(a.get("cause", "unspecified")) for a in ar["attributes"]]
    for cause in _CAUSES:
        sel = [i for i, c in zip(ids, causes) if c == cause]
        if sel:
            out.append(Measure(name=f"{cause}_arousal_index", label=f"{cause.title()} arousal index",
                               value=len(sel) / st.hours, unit="events/h",
                               evidence=Evidence(event_ids=sel), reason=caveat))
    return out
