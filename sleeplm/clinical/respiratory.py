"""Respiratory indices from scored apneas and hypopneas (AASM Manual v2.6/v3).

Apneas always count. A hypopnea counts under

* the **AASM recommended rule (1A, "3%/arousal")** when it is followed by a desaturation of
  >= 3 % or ends in an arousal, and under
* the **4% rule (1B, CMS)** when it is followed by a desaturation of >= 4 %.

"Followed by": a desaturation whose onset lies between the hypopnea onset and
:data:`DESAT_LAG_SEC` after its end (SpO2 lags airflow by the lung-to-finger circulation time,
typically 15-30 s, longer in heart failure), or an arousal whose onset lies between the hypopnea
onset and :data:`AROUSAL_LAG_SEC` after its end. Desaturations come from the SpO2 signal itself
when the recording has one (:func:`sleeplm.clinical.oximetry.detect_desaturations`), otherwise
from scored desaturation events (their depth from baseline and nadir; a scored desaturation of
unknown depth counts as >= 3 % only).

With a hypnogram, only events starting in sleep epochs count and indices are per hour of TST;
without one (home sleep apnea test), every event counts per hour of monitoring time (REI).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sleeplm.clinical.measure import Evidence, Measure
from sleeplm.clinical.oximetry import desaturations_near, detect_desaturations
from sleeplm.clinical.position import has_position, position_at
from sleeplm.clinical.sleep_time import in_sleep, sleep_time
from sleeplm.errors import MissingChannelError
from sleeplm.recording import EventType, Recording

__all__ = [
    "RESPIRATORY_CHANNELS",
    "DESAT_LAG_SEC",
    "AROUSAL_LAG_SEC",
    "respiratory_events",
    "respiratory_measures",
    "ahi_severity",
    "is_positional",
]

#: Channels from which respiratory events are scored; without any, none could have been.
RESPIRATORY_CHANNELS = ("AIRFLOW", "NASAL_PRESSURE", "THORAX", "ABDOMEN", "SPO2")
DESAT_LAG_SEC = 30.0
AROUSAL_LAG_SEC = 5.0
_APNEAS = tuple(t.value for t in EventType.apneas())


def ahi_severity(ahi: float | None) -> str:
    """AASM adult severity category of an AHI (events/h): <5 none, 5-15 mild, 15-30 moderate, >=30 severe."""
    if ahi is None or not np.isfinite(ahi):
        return "not assessable"
    if ahi < 5:
        return "none (normal)"
    if ahi < 15:
        return "mild"
    if ahi < 30:
        return "moderate"
    return "severe"


def is_positional(ahi_supine: float, ahi_nonsupine: float) -> bool:
    """Whether sleep apnea is positional by the usual criterion: a supine AHI at least twice
    the non-supine AHI (and above 0), both in events/h by the same scoring rule."""
    return bool(ahi_supine > 0 and ahi_supine >= 2.0 * ahi_nonsupine)


def _desaturations(rec: Recording) -> tuple[pd.DataFrame, str]:
    """Desaturations (onset, depth %) and where they came from."""
    sig = rec.signals.get("SPO2")
    if sig is not None and sig.quality_problem() is None:
        d = detect_desaturations(sig, drop=3.0)
        return d[["onset", "depth"]], "SpO2 signal"
    scored = rec.events_of(EventType.DESATURATION)
    depths = []
    for attrs in scored["attributes"]:
        depth = attrs.get("drop")
        if depth is None and "spo2_baseline" in attrs and "spo2_nadir" in attrs:
            depth = float(attrs["spo2_baseline"]) - float(attrs["spo2_nadir"])
        depths.append(3.0 if depth is None else float(depth))
    d = pd.DataFrame({"onset": scored["onset"].to_numpy(dtype=float), "depth": depths})
    return d, "scored desaturation events" if len(d) else "none"


def respiratory_events(rec: Recording) -> pd.DataFrame:
    """Scored apneas and hypopneas with everything the indices need.

    Returns
    -------
    pandas.DataFrame
        Indexed by event id, with onset/duration (s), type, ``in_sleep``, ``stage``,
        ``position``, ``desat_depth`` (% of the deepest associated desaturation, NaN if none),
        ``arousal`` (bool), ``counts_3a`` and ``counts_4`` (bool: counted under each rule).
    """
    ev = rec.events_of(*_APNEAS, EventType.HYPOPNEA).copy()
    if ev.empty:
        cols = ["onset", "duration", "type", "in_sleep", "stage", "position", "desat_depth",
                "arousal", "counts_3a", "counts_4"]
        return pd.DataFrame(columns=cols)
    desats, _ = _desaturations(rec)
    arousal_onsets = rec.events_of(EventType.AROUSAL)["onset"].to_numpy(dtype=float)
    depth, arousal = [], []
    for onset, dur in zip(ev["onset"], ev["duration"]):
        near = desaturations_near(desats, onset, onset + dur, lag=DESAT_LAG_SEC)
        depth.append(float(near["depth"].max()) if len(near) else np.nan)
        arousal.append(bool(np.any((arousal_onsets >= onset)
                                   & (arousal_onsets <= onset + dur + AROUSAL_LAG_SEC))))
    ev["in_sleep"] = in_sleep(rec, ev["onset"].to_numpy())
    ev["stage"] = rec.stage_at(ev["onset"].to_numpy())
    ev["position"] = position_at(rec, ev["onset"].to_numpy())
    ev["desat_depth"] = depth
    ev["arousal"] = arousal
    is_apnea = ev["type"].isin(_APNEAS).to_numpy()
    d = ev["desat_depth"].fillna(0).to_numpy()
    ev["counts_3a"] = is_apnea | (d >= 3.0) | ev["arousal"].to_numpy()
    ev["counts_4"] = is_apnea | (d >= 4.0)
    return ev[["onset", "duration", "type", "in_sleep", "stage", "position", "desat_depth",
               "arousal", "counts_3a", "counts_4"]]


def _index(name: str, label: str, ids: pd.Index, hours: float, reason: str) -> Measure:
    if hours <= 0:
        return Measure.missing(name, label, "events/h", "no sleep time to divide by")
    return Measure(name=name, label=label, value=len(ids) / hours, unit="events/h",
                   evidence=Evidence(event_ids=[int(i) for i in ids]), reason=reason)


def _count(name: str, label: str, ids: pd.Index) -> Measure:
    return Measure(name=name, label=label, value=float(len(ids)), unit="count",
                   evidence=Evidence(event_ids=[int(i) for i in ids]))


def respiratory_measures(rec: Recording) -> list[Measure]:
    """Apnea/hypopnea counts and indices, AHI under both hypopnea rules, by position and stage.

    Returns
    -------
    list of Measure
        Counts (``*_count``), indices (events/h): ``apnea_index``, ``obstructive_apnea_index``,
        ``central_apnea_index``, ``ahi_3a``, ``ahi_4``, ``ahi_supine``, ``ahi_nonsupine``,
        ``ahi_rem``, ``ahi_nrem`` (the positional and stage AHIs use the 3%/arousal rule), and
        ``supine_sleep_min``.
    """
    st = sleep_time(rec)
    ev = respiratory_events(rec)
    caveat = "" if st.staged else "per hour of monitoring time, no sleep staging (REI)"
    if ev.empty:
        has_channels = any(c in rec.signals for c in RESPIRATORY_CHANNELS)
        if rec.info.annotation_source is None or not has_channels:
            raise MissingChannelError(
                "Respiratory indices need scored apneas/hypopneas, and there are none: "
                + ("no annotations were given" if rec.info.annotation_source is None else
                   "the recording has no respiratory channel (" + ", ".join(RESPIRATORY_CHANNELS)
                   + "), so none could have been scored")
                + ". Give the scored events (NSRR/Profusion XML or EDF+ annotations)."
            )
        caveat = "; ".join(x for x in (caveat, f"no apneas or hypopneas in the annotations "
                                       f"({rec.info.annotation_source})") if x)
    counted = ev[ev["in_sleep"].astype(bool)] if len(ev) else ev
    _, desat_source = _desaturations(rec)
    hyp_rule_note = ""
    if desat_source == "none" and rec.events_of(EventType.AROUSAL).empty:
        hyp_rule_note = ("no SpO2 signal, scored desaturations or arousals: hypopneas could not "
                         "be qualified and only apneas count")
    out: list[Measure] = []
    by_type = {t: counted.index[counted["type"] == t] for t in _APNEAS + ("hypopnea",)}
    out.append(_count("obstructive_apnea_count", "Obstructive apneas", by_type["obstructive_apnea"]))
    out.append(_count("central_apnea_count", "Central apneas", by_type["central_apnea"]))
    out.append(_count("mixed_apnea_count", "Mixed apneas", by_type["mixed_apnea"]))
    if len(by_type["apnea"]):
        out.append(_count("unspecified_apnea_count", "Apneas of unspecified type", by_type["apnea"]))
    out.append(_count("hypopnea_count", "Hypopneas (all scored)", by_type["hypopnea"]))
    hyp = counted[counted["type"] == "hypopnea"]
    out.append(_count("hypopnea_3a_count", "Hypopneas with >=3% desaturation or arousal",
                      hyp.index[hyp["counts_3a"].astype(bool)]))
    out.append(_count("hypopnea_4_count", "Hypopneas with >=4% desaturation",
                      hyp.index[hyp["counts_4"].astype(bool)]))
    apnea_ids = counted.index[counted["type"].isin(_APNEAS)]
    out.append(_index("apnea_index", "Apnea index", apnea_ids, st.hours, caveat))
    out.append(_index("obstructive_apnea_index", "Obstructive apnea index",
                      by_type["obstructive_apnea"], st.hours, caveat))
    out.append(_index("central_apnea_index", "Central apnea index", by_type["central_apnea"],
                      st.hours, caveat))
    reason = "; ".join(x for x in (caveat, hyp_rule_note, f"desaturations from {desat_source}") if x)
    ids_3a = counted.index[counted["counts_3a"].astype(bool)] if len(counted) else counted.index
    ids_4 = counted.index[counted["counts_4"].astype(bool)] if len(counted) else counted.index
    out.append(_index("ahi_3a", "AHI (AASM recommended rule: hypopnea with >=3% desaturation "
                      "or arousal)", ids_3a, st.hours, reason))
    out.append(_index("ahi_4", "AHI (4% rule: hypopnea with >=4% desaturation)", ids_4,
                      st.hours, reason))

    # Positional AHI: time in each position sampled at each epoch (or 30-s window) midpoint.
    if has_position(rec):
        step = rec.epoch_sec
        mids = np.arange(step / 2, rec.duration, step)
        sleep_mid = in_sleep(rec, mids)
        supine_mid = position_at(rec, mids) == "supine"
        known_mid = position_at(rec, mids) != "unknown"
        h_sup = float(np.sum(sleep_mid & supine_mid)) * step / 3600
        h_non = float(np.sum(sleep_mid & known_mid & ~supine_mid)) * step / 3600
        out.append(Measure(name="supine_sleep_min", label="Sleep time supine", value=h_sup * 60,
                           unit="min", evidence=Evidence.from_epochs(
                               np.flatnonzero(sleep_mid & supine_mid), "supine sleep epochs")))
        sup = ids_3a[counted.loc[ids_3a, "position"] == "supine"] if len(ids_3a) else ids_3a
        non = ids_3a[counted.loc[ids_3a, "position"].isin(["left", "right", "prone", "upright"])] \
            if len(ids_3a) else ids_3a
        for name, label, ids, hours in (("ahi_supine", "AHI supine (3%/arousal rule)", sup, h_sup),
                                        ("ahi_nonsupine", "AHI non-supine (3%/arousal rule)", non,
                                         h_non)):
            if hours > 0:
                out.append(_index(name, label, ids, hours, caveat))
            else:
                out.append(Measure.missing(name, label, "events/h", "no sleep time in this position"))
    else:
        for name, label in (("ahi_supine", "AHI supine (3%/arousal rule)"),
                            ("ahi_nonsupine", "AHI non-supine (3%/arousal rule)")):
            out.append(Measure.missing(name, label, "events/h",
                                       "no POSITION channel or scored position changes"))

    # REM vs NREM AHI.
    for name, label, stages in (("ahi_rem", "AHI in REM (3%/arousal rule)", ("R",)),
                                ("ahi_nrem", "AHI in NREM (3%/arousal rule)", ("N1", "N2", "N3"))):
        if not st.staged:
            out.append(Measure.missing(name, label, "events/h", "no sleep staging"))
            continue
        hours = float(np.isin(rec.stages, stages).sum()) * rec.epoch_sec / 3600
        ids = ids_3a[counted.loc[ids_3a, "stage"].isin(stages)] if len(ids_3a) else ids_3a
        if hours > 0:
            out.append(_index(name, label, ids, hours, ""))
        else:
            out.append(Measure.missing(name, label, "events/h", f"no {'/'.join(stages)} sleep scored"))
    return out
