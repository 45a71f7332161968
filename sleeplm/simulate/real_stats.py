"""Empirical statistics of the bundled real data that drive the simulator.

Everything here is computed from the real files shipped in :mod:`sleeplm.data` on first use
and cached (no number is copied in by hand):

* **UCDDB** (25 real nights of adults referred for sleep-disordered breathing, every apnea and
  hypopnea scored): event durations per type, the type mix, the clustering of events (runs of
  events less than :data:`CLUSTER_GAP_S` apart: run lengths and within-run gaps, per night
  with its AHI) and events per hour in each sleep stage relative to all sleep.
  Events whose onset epoch is scored W (about 1 in 6; the epoch is scored wake when most of
  its 30 s is wake, yet an event may start in its sleep part or in a brief return to sleep)
  count in durations, type mix and gaps (they are part of the night's sequence of events) but
  not in the per-stage rates, since the simulator, like the AHI, places events in sleep only.
* **Dreem Open Datasets** (25 healthy, 55 OSA nights, 5 scorers each): consensus hypnograms,
  by :func:`sleeplm.clinical.consensus.consensus_hypnogram`.
* **Apnea-ECG** (52 real nights of beat-to-beat heart rate with per-minute apnea labels): the
  measurements the simulator's heart is compared with (``benchmarks/realism_real.py``) --
  heart-rate spectra per 5-min segment in apnea and normal minutes (share of the cyclic band,
  25-120 s periods), and the size and rise time of heart-rate peaks (trough to peak within
  40 s) in apnea and normal minutes. The labels are per minute, not per event, so the
  heart-rate response is measured per minute label, never aligned to event ends.

Which records the statistics are fitted on: all bundled ones unless a :func:`fit_records`
block (or a function's ``records`` argument) names a subset, so that simulated nights can be
compared with real records they were not fitted on (``benchmarks/realism_real.py``, held-out
mode). Nothing in the simulator is fitted to Apnea-ECG at run time (its heart-rate constants in
:mod:`sleeplm.simulate.cardiorespiratory` were set by hand against all 52 nights), and the
Sleep-EDF stage sources are read by :mod:`sleeplm.simulate.hypnograms` directly, so neither
has a subset here.

References: Goldberger et al., PhysioNet (2000) for UCDDB and Apnea-ECG; Penzel et al.,
Computers in Cardiology 27:255-258 (2000); Guillot et al., IEEE TNSRE 28(9):1955-1965 (2020);
Guilleminault et al., Lancet 1984;1:126 (cyclic variation of heart rate, 25-120 s cycles).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import signal as sps
from scipy.ndimage import median_filter

from sleeplm.clinical.consensus import consensus_hypnogram, stages_from_codes
from sleeplm.clinical.heart_rate import HR_MAX_BPM, HR_MIN_BPM
from sleeplm.data import (
    dreem_night_ids,
    dreem_scorings,
    ucddb_events,
    ucddb_record_ids,
    ucddb_stages,
)

__all__ = [
    "FitRecords", "fit_records", "current_fit",
    "CLUSTER_GAP_S", "EVENT_TYPES", "STAGE_KEYS", "NightEvents", "ucddb_nights",
    "event_durations", "event_type_mix", "stage_rate_ratios", "clustering_for_ahi",
    "event_gaps", "dreem_hypnogram", "dreem_ids_for", "scorer_disagreement", "CYCLIC_BAND_HZ",
    "hr_per_second", "hr_rises", "hr_segment_spectra", "band_share",
]

#: Events closer than this (s, from one event's end to the next one's onset) belong to one run.
#: 90 s keeps a run's cycle (event + gap) within the 25-120 s band of cyclic heart-rate
#: variation (Guilleminault 1984).
CLUSTER_GAP_S: float = 90.0
#: Respiratory event types of the simulator and of :func:`sleeplm.data.ucddb_events`.
EVENT_TYPES: tuple[str, ...] = ("obstructive_apnea", "central_apnea", "mixed_apnea", "hypopnea")
#: Sleep stages with their own event rate.
STAGE_KEYS: tuple[str, ...] = ("N1", "N2", "N3", "R")
_SLEEP = ("N1", "N2", "N3", "R")


# --------------------------------------------------------------------------- fitted records
@dataclass(frozen=True)
class FitRecords:
    """The real records the simulator's statistics are fitted on.

    Attributes
    ----------
    ucddb : tuple of str or None
        UCDDB record ids (event durations, type mix, stage rates, runs of events); None: all
        25 bundled nights.
    dreem : tuple of str or None
        Dreem night ids (the stage sequences drawn for ``hypnogram="dreem"`` / ``"real"``, and
        the scorer disagreement of ``noise="real"``); None: all 80 bundled nights.
    """

    ucddb: tuple[str, ...] | None = None
    dreem: tuple[str, ...] | None = None


_FIT: ContextVar[FitRecords] = ContextVar("sleeplm_real_stats_fit", default=FitRecords())


def _subset(dataset: str, records: Iterable[str], known: list[str]) -> tuple[str, ...]:
    """``records`` checked against the ``known`` ids, in the order of ``known``.

    Raises
    ------
    TypeError
        If ``records`` is a single string rather than a collection of ids.
    KeyError
        If an id is not a bundled record of ``dataset``.
    ValueError
        If ``records`` is empty.
    """
    if isinstance(records, str):
        raise TypeError(f"{dataset} records must be a collection of ids, got the string "
                        f"{records!r}")
    wanted = set(records)
    unknown = sorted(wanted.difference(known))
    if unknown:
        raise KeyError(f"no bundled {dataset} record(s) {unknown}")
    if not wanted:
        raise ValueError(f"an empty set of {dataset} records: statistics need at least one")
    return tuple(r for r in known if r in wanted)


def _ucddb_key(records: Iterable[str] | None) -> tuple[str, ...]:
    """The UCDDB ids to fit on: ``records``, else the current :func:`fit_records`, else all."""
    known = ucddb_record_ids()
    if records is None:
        records = _FIT.get().ucddb
    return tuple(known) if records is None else _subset("UCDDB", records, known)


def _dreem_key(records: Iterable[str] | None) -> tuple[str, ...]:
    """The Dreem ids to fit on: ``records``, else the current :func:`fit_records`, else all."""
    known = dreem_night_ids()
    if records is None:
        records = _FIT.get().dreem
    return tuple(known) if records is None else _subset("Dreem", records, known)


@contextmanager
def fit_records(*, ucddb: Iterable[str] | None = None, dreem: Iterable[str] | None = None
                ) -> Iterator[FitRecords]:
    """Fit the real statistics on a subset of the bundled records inside a ``with`` block.

    Everything that draws on the statistics in the block (``plan_night(...,
    statistics="real")``, ``simulate_night(..., statistics="real")``, Dreem stage sources,
    ``noise="real"``) uses only the named records, so that the simulated nights can be compared
    with the other records, held out. Outside any block all bundled records are used, exactly
    as before. Each subset is computed once and cached by its ids.

    Parameters
    ----------
    ucddb : iterable of str, optional
        UCDDB record ids (:func:`sleeplm.data.ucddb_record_ids`); None keeps the enclosing
        setting (all records outside any block).
    dreem : iterable of str, optional
        Dreem night ids (:func:`sleeplm.data.dreem_night_ids`); None keeps the enclosing
        setting. Drawing a stage sequence of a cohort (DOD-H or DOD-O) needs at least one of its
        nights in the subset.

    Yields
    ------
    FitRecords
        The setting in force in the block (ids in the bundled order).

    Raises
    ------
    KeyError
        If an id is not a bundled record.
    ValueError
        If a subset is empty.

    Notes
    -----
    The setting is a :class:`contextvars.ContextVar`: it holds in the thread (or asyncio task)
    that entered the block, not in worker threads or processes started from it.

    Examples
    --------
    >>> with fit_records(ucddb=["ucddb002", "ucddb003"]):  # doctest: +SKIP
    ...     plan = plan_night(stages, profile, rng, statistics="real")
    """
    outer = _FIT.get()
    fit = FitRecords(
        ucddb=outer.ucddb if ucddb is None else _subset("UCDDB", ucddb, ucddb_record_ids()),
        dreem=outer.dreem if dreem is None else _subset("Dreem", dreem, dreem_night_ids()))
    token = _FIT.set(fit)
    try:
        yield fit
    finally:
        _FIT.reset(token)


def current_fit() -> FitRecords:
    """The records the statistics are fitted on now, ids spelled out (all when no
    :func:`fit_records` block is active)."""
    return FitRecords(ucddb=_ucddb_key(None), dreem=_dreem_key(None))


# --------------------------------------------------------------------------- UCDDB events
@dataclass(frozen=True)
class NightEvents:
    """The events of one real UCDDB night.

    Attributes
    ----------
    record_id : str
    ahi : float
        Events in sleep per hour of sleep (events/h).
    onsets, durations : numpy.ndarray
        s from the recording start, sorted by onset; all events, those in W epochs too.
    types, stages : numpy.ndarray
        Event type and stage at onset of each event.
    sleep_hours : dict of str to float
        Hours in each of N1, N2, N3, R.
    """

    record_id: str
    ahi: float
    onsets: np.ndarray
    durations: np.ndarray
    types: np.ndarray
    stages: np.ndarray
    sleep_hours: dict[str, float]

    @property
    def gaps(self) -> np.ndarray:
        """s from each event's end to the next event's onset."""
        return event_gaps(self.onsets, self.durations)


def event_gaps(onsets: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """Inter-event gaps (s): next onset minus this event's end, events sorted by onset."""
    order = np.argsort(onsets, kind="stable")
    on = np.asarray(onsets, dtype=float)[order]
    end = on + np.asarray(durations, dtype=float)[order]
    return on[1:] - end[:-1]


def ucddb_nights(records: Iterable[str] | None = None) -> tuple[NightEvents, ...]:
    """The UCDDB nights with their events (see :class:`NightEvents`), in the bundled order.

    Parameters
    ----------
    records : iterable of str, optional
        Record ids; None: those of the current :func:`fit_records` block, else all 25.
    """
    key = _ucddb_key(records)
    return tuple(x for x in _all_ucddb_nights() if x.record_id in key)


@lru_cache(maxsize=1)
def _all_ucddb_nights() -> tuple[NightEvents, ...]:
    """All bundled UCDDB nights with their events."""
    ev = ucddb_events()
    out = []
    for rid in ucddb_record_ids():
        st = ucddb_stages(rid)
        e = ev[ev["record_id"] == rid].sort_values("onset", kind="stable")
        hours = {s: float((st == s).sum()) * 30.0 / 3600.0 for s in _SLEEP}
        tst = sum(hours.values())
        n_sleep = int(e["stage"].isin(_SLEEP).sum())
        out.append(NightEvents(
            record_id=rid, ahi=n_sleep / tst if tst > 0 else 0.0,
            onsets=e["onset"].to_numpy(dtype=float), durations=e["duration"].to_numpy(dtype=float),
            types=e["type"].to_numpy(dtype=str), stages=e["stage"].to_numpy(dtype=str),
            sleep_hours=hours))
    return tuple(out)


def _ucddb_events_of(key: tuple[str, ...]) -> pd.DataFrame:
    """UCDDB's event table restricted to the records of ``key``."""
    ev = ucddb_events()
    return ev[ev["record_id"].isin(key)]


def event_durations(records: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Real event durations (s, UCDDB's 1-s resolution) per event type, nights pooled.

    REM and NREM durations differ little in UCDDB (medians 16 and 17 s), so they are not split.

    Parameters
    ----------
    records : iterable of str, optional
        UCDDB record ids; None: those of the current :func:`fit_records` block, else all 25.

    Returns
    -------
    dict of str to numpy.ndarray
        Sorted durations (s) per type of :data:`EVENT_TYPES` (empty where the records hold
        none of that type).
    """
    return _event_durations(_ucddb_key(records))


@lru_cache(maxsize=8)
def _event_durations(key: tuple[str, ...]) -> dict[str, np.ndarray]:
    ev = _ucddb_events_of(key)
    return {t: np.sort(ev.loc[ev["type"] == t, "duration"].to_numpy(dtype=float))
            for t in EVENT_TYPES}


def event_type_mix(records: Iterable[str] | None = None) -> dict[str, float]:
    """Share of each event type among UCDDB's events (sums to 1).

    Parameters
    ----------
    records : iterable of str, optional
        UCDDB record ids; None: those of the current :func:`fit_records` block, else all 25.

    Raises
    ------
    ValueError
        If the records hold no events.
    """
    return _event_type_mix(_ucddb_key(records))


@lru_cache(maxsize=8)
def _event_type_mix(key: tuple[str, ...]) -> dict[str, float]:
    counts = _ucddb_events_of(key)["type"].value_counts()
    total = float(sum(counts.get(t, 0) for t in EVENT_TYPES))
    if total == 0:
        raise ValueError(f"UCDDB records {list(key)} hold no respiratory events: no type mix")
    return {t: float(counts.get(t, 0)) / total for t in EVENT_TYPES}


def stage_rate_ratios(records: Iterable[str] | None = None) -> dict[str, float]:
    """Events per hour in each sleep stage divided by events per hour of all sleep (pooled).

    Events with onset in W epochs are left out (see the module docstring).

    Parameters
    ----------
    records : iterable of str, optional
        UCDDB record ids; None: those of the current :func:`fit_records` block, else all 25.

    Raises
    ------
    ValueError
        If the records hold no sleep events, or no hour of one of N1, N2, N3, R.
    """
    return _stage_rate_ratios(_ucddb_key(records))


@lru_cache(maxsize=8)
def _stage_rate_ratios(key: tuple[str, ...]) -> dict[str, float]:
    nights = ucddb_nights(key)
    n = {s: sum(int((x.stages == s).sum()) for x in nights) for s in _SLEEP}
    h = {s: sum(x.sleep_hours[s] for x in nights) for s in _SLEEP}
    missing = [s for s in _SLEEP if h[s] <= 0]
    if missing or sum(n.values()) == 0:
        raise ValueError(f"UCDDB records {list(key)} hold no sleep events or no epoch of "
                         f"{missing}: no stage rates")
    overall = sum(n.values()) / sum(h.values())
    return {s: (n[s] / h[s]) / overall for s in _SLEEP}


def _run_gaps(gaps: np.ndarray) -> list[np.ndarray]:
    """The within-run gap sequence of each run (runs split at gaps > :data:`CLUSTER_GAP_S`);
    a run of L events has L - 1 gaps (an isolated event: none)."""
    cuts = np.flatnonzero(gaps > CLUSTER_GAP_S)
    edges = np.r_[-1, cuts, gaps.size]
    return [np.maximum(gaps[a + 1 : b], 0.0) for a, b in zip(edges[:-1], edges[1:])]


def clustering_for_ahi(ahi: float, k: int = 4, records: Iterable[str] | None = None
                       ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The runs of events of the ``k`` UCDDB nights nearest in AHI.

    Real gaps are more regular within a run than across runs (SD of log gap 0.46 within runs
    of >= 5 events, 0.66 pooled), so the simulator replays whole runs: their length and their
    sequence of gaps.

    Parameters
    ----------
    ahi : float
        Target apnea-hypopnea index, events/h (nearness is measured on log(1 + AHI)).
    k : int
        Number of real nights pooled.
    records : iterable of str, optional
        UCDDB record ids to choose from; None: those of the current :func:`fit_records` block,
        else all 25.

    Returns
    -------
    runs : tuple of numpy.ndarray
        Each run's gaps (s, end to next onset, <= :data:`CLUSTER_GAP_S`); its length in events
        is one more than its number of gaps.
    within_gaps : numpy.ndarray
        All those gaps pooled, sorted.
    """
    return _clustering_for_ahi(float(ahi), int(k), _ucddb_key(records))


@lru_cache(maxsize=64)
def _clustering_for_ahi(ahi: float, k: int, key: tuple[str, ...]
                        ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    nights = ucddb_nights(key)
    dist = np.abs(np.log1p([x.ahi for x in nights]) - np.log1p(max(float(ahi), 0.0)))
    chosen = [nights[i] for i in np.argsort(dist, kind="stable")[:k] if nights[i].onsets.size]
    runs = tuple(r for x in chosen for r in _run_gaps(x.gaps))
    within = np.concatenate(runs) if runs else np.zeros(0)
    return runs, np.sort(within)


# --------------------------------------------------------------------------- Dreem hypnograms
_DREEM_STAGE = np.array(["W", "N1", "N2", "N3", "R"])


@lru_cache(maxsize=128)
def dreem_hypnogram(night_id: str) -> np.ndarray:
    """Consensus hypnogram of one Dreem night (W, N1, N2, N3, R, UNS per 30-s epoch), by
    :func:`sleeplm.clinical.consensus.consensus_hypnogram` (majority of the five scorers, ties
    to the best-ranked scorer, Guillot et al. 2020)."""
    result = consensus_hypnogram(stages_from_codes(dreem_scorings(night_id)))
    return np.asarray(result.stages, dtype="<U3")


def dreem_ids_for(osa: bool, records: Iterable[str] | None = None) -> list[str]:
    """Dreem night ids of the OSA cohort (DOD-O) if ``osa``, else of the healthy one (DOD-H).

    Parameters
    ----------
    osa : bool
    records : iterable of str, optional
        Dreem night ids to choose from; None: those of the current :func:`fit_records` block,
        else all 80.

    Raises
    ------
    ValueError
        If none of the records belongs to the cohort.
    """
    key = _dreem_key(records)
    cohort = "dodo" if osa else "dodh"
    ids = [i for i in dreem_night_ids(cohort) if i in key]
    if not ids:
        raise ValueError(f"no Dreem night of cohort {cohort!r} among the {len(key)} fitted "
                         "nights; fit_records(dreem=...) needs nights of both DOD-H and DOD-O "
                         "to draw stage sequences of either")
    return ids


def scorer_disagreement(records: Iterable[str] | None = None
                        ) -> dict[tuple[str, bool], tuple[float, np.ndarray]]:
    """How often one Dreem scorer stages an epoch differently from the consensus, and how.

    Pooled over the Dreem nights (all 80, or ``records``, or those of the current
    :func:`fit_records` block) and their five scorers, per consensus stage and per
    whether the epoch borders a stage change (its previous or next consensus epoch differs):
    the probability that a scorer's stage differs from the consensus, and the distribution of
    the stage chosen instead (W, N1, N2, N3, R order). Epochs a scorer left unscored, and
    UNS consensus epochs, are left out.

    Parameters
    ----------
    records : iterable of str, optional
        Dreem night ids.

    Returns
    -------
    dict
        ``{(stage, borders_change): (p_disagree, p_alternative[5])}``.
    """
    return _scorer_disagreement(_dreem_key(records))


@lru_cache(maxsize=8)
def _scorer_disagreement(key: tuple[str, ...]
                         ) -> dict[tuple[str, bool], tuple[float, np.ndarray]]:
    names = [str(s) for s in _DREEM_STAGE]
    counts = {(s, b): np.zeros(5) for s in names for b in (False, True)}
    agree = {(s, b): 0 for s in names for b in (False, True)}
    code_of = {s: i for i, s in enumerate(names)}
    for nid in key:
        cons = dreem_hypnogram(nid)
        codes = dreem_scorings(nid).astype(int)
        border = np.zeros(cons.size, dtype=bool)
        border[1:] |= cons[1:] != cons[:-1]
        border[:-1] |= cons[:-1] != cons[1:]
        for s in names:
            for b in (False, True):
                sel = (cons == s) & (border == b)
                votes = codes[:, sel]
                votes = votes[votes >= 0]
                agree[(s, b)] += int((votes == code_of[s]).sum())
                counts[(s, b)] += np.bincount(votes[votes != code_of[s]], minlength=5)[:5]
    out = {}
    for key, c in counts.items():
        total = c.sum() + agree[key]
        out[key] = (float(c.sum() / total) if total else 0.0,
                    c / c.sum() if c.sum() else np.full(5, 0.2))
    return out


# --------------------------------------------------------------------------- heart rate
#: Cyclic band of heart-rate variation with apneas: periods of 25-120 s (Hz limits).
CYCLIC_BAND_HZ: tuple[float, float] = (1 / 120.0, 1 / 25.0)
_SEGMENT_S = 300
_RISE_WINDOW_S = 40
_RISE_PROMINENCE_BPM = 2.0


def hr_per_second(beat_time_s: np.ndarray, hr_bpm: np.ndarray, n_sec: int | None = None
                  ) -> np.ndarray:
    """Heart rate per second (bpm) from beats, with beat-detection artefacts removed.

    Beats outside 25-220 bpm are dropped, the rest interpolated at each second's centre, and
    values more than 25 % from their 15-s median replaced by that median.
    """
    t = np.asarray(beat_time_s, dtype=float)
    h = np.asarray(hr_bpm, dtype=float)
    ok = (h > HR_MIN_BPM) & (h < HR_MAX_BPM)
    n = int(t[-1]) if n_sec is None else int(n_sec)
    x = np.interp(np.arange(n) + 0.5, t[ok], h[ok])
    med = median_filter(x, 15, mode="nearest")
    return np.where(np.abs(x - med) > 0.25 * med, med, x)


def hr_rises(hr: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heart-rate rises: size (bpm) and rise time (s) of peaks whose time lies in ``mask``.

    The 1-Hz heart rate is smoothed over 5 s; a peak is a local maximum at least 2 bpm
    prominent and 20 s from the next; its rise is peak minus the lowest value in the 40 s
    before it, its rise time the seconds from that trough (the latest, if several) to the peak.
    """
    xs = np.convolve(np.asarray(hr, dtype=float), np.ones(5) / 5, "same")
    peaks, _ = sps.find_peaks(xs, distance=20, prominence=_RISE_PROMINENCE_BPM)
    peaks = peaks[np.asarray(mask, dtype=bool)[np.clip(peaks, 0, len(mask) - 1)]]
    size, ttp = [], []
    for p in peaks:
        lo = max(0, p - _RISE_WINDOW_S)
        tr = p - int(np.argmin(xs[lo : p + 1][::-1]))  # the latest lowest point
        size.append(xs[p] - xs[tr])
        ttp.append(p - tr)
    return np.asarray(size, dtype=float), np.asarray(ttp, dtype=float)


def hr_segment_spectra(hr: np.ndarray, minute_label: np.ndarray
                       ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Welch spectra of the heart rate per 5-min segment whose minutes share one label.

    Parameters
    ----------
    hr : numpy.ndarray
        Heart rate per second, bpm.
    minute_label : numpy.ndarray
        1 where the minute holds an apnea or hypopnea, 0 where not (Apnea-ECG's labels).

    Returns
    -------
    freqs : numpy.ndarray or None
        Hz (None when no segment qualifies).
    spectra : numpy.ndarray
        (n_segments, n_freqs), bpm²/Hz, one 300-s window each (mean removed).
    labels : numpy.ndarray
        The label of each segment.
    """
    lab = np.repeat(np.asarray(minute_label, dtype=int), 60)
    n = min(lab.size, len(hr))
    freqs, spectra, labels = None, [], []
    for k in range(0, n - _SEGMENT_S + 1, _SEGMENT_S):
        seg_lab = lab[k : k + _SEGMENT_S]
        if seg_lab.min() != seg_lab.max():
            continue
        seg = np.asarray(hr[k : k + _SEGMENT_S], dtype=float)
        freqs, p = sps.welch(seg - seg.mean(), fs=1.0, nperseg=_SEGMENT_S)
        spectra.append(p)
        labels.append(int(seg_lab[0]))
    return freqs, np.asarray(spectra), np.asarray(labels, dtype=int)


def band_share(freqs: np.ndarray, spectra: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """Share of each spectrum's power (1/300-0.5 Hz) inside ``band`` (Hz)."""
    total = spectra[:, (freqs >= 1 / _SEGMENT_S) & (freqs < 0.5)].sum(axis=1)
    inside = spectra[:, (freqs >= band[0]) & (freqs < band[1])].sum(axis=1)
    return inside / np.maximum(total, 1e-12)
