"""Oximetry: SpO2 cleaning, desaturation detection and the oximetry numbers of a PSG report.

The SpO2 channel is first brought to 1 Hz and cleaned of artifacts (:func:`clean_spo2`);
desaturations are then detected from the cleaned trace (:func:`detect_desaturations`), and the
report numbers (baseline, mean and nadir SpO2, ODI 3 %/4 %, T90, artifact percentage) are
computed over sleep (:func:`oximetry_measures`).

References
----------
* AASM Manual for the Scoring of Sleep and Associated Events, v2.6 (2020) and v3 (2023):
  desaturations of >= 3 % / >= 4 % from the pre-event baseline (hypopnea rules 1A / 1B);
  indices per hour of total sleep time.
* Taha BH et al. Automated detection and classification of sleep-disordered breathing from
  conventional polysomnography data. Sleep 1997;20:991-1001 (SpO2 artifact rules: values
  < 50 %, changes > 4 %/s).
* Levy J et al. Digital oximetry biomarkers for assessing respiratory function: standards of
  measurement, physiological interpretation, and clinical use. NPJ Digit Med 2021;4:1
  (range filter 50-100 %, delta filter, ODI with a baseline from the preceding 120 s).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sleeplm._logging import logger
from sleeplm.clinical.measure import Evidence, Measure, true_runs
from sleeplm.clinical.sleep_time import in_sleep, sleep_time
from sleeplm.errors import SignalQualityError
from sleeplm.recording import SLEEP_STAGES, Recording, Signal, clock_of

__all__ = [
    "SPO2_MIN_VALID",
    "SPO2_MAX_VALID",
    "SPIKE_DELTA",
    "MAX_RATE",
    "MIN_ISLAND_SEC",
    "DESAT_COLUMNS",
    "clean_spo2",
    "detect_desaturations",
    "desaturations_near",
    "oximetry_measures",
]

#: Lowest plausible SpO2, %. Lower readings (and the 0 % of sensor drop-outs) are artifacts
#: (Taha 1997; Levy 2021 "range filter").
SPO2_MIN_VALID: float = 50.0
#: Highest possible SpO2, %.
SPO2_MAX_VALID: float = 100.0
#: A 1-Hz sample that differs by more than this (%) from *both* valid neighbours, in the same
#: direction, is a single-sample spike (the 4 %/s delta rule of Taha 1997).
SPIKE_DELTA: float = 4.0
#: Fastest physiological SpO2 change, % per second. Real desaturation/resaturation slopes at
#: 1 Hz stay below ~2-4 %/s (Taha 1997 used 4 %/s); 10 %/s leaves margin for fast
#: resaturations after apneas and for 1-Hz quantisation, while rejecting the steps of probe-off
#: and motion artifacts. A sample not reachable from the last accepted one at this rate is
#: invalid.
MAX_RATE: float = 10.0
#: Valid runs shorter than this (s) between invalid data are dropped as unreliable.
MIN_ISLAND_SEC: float = 5.0
#: Columns of the desaturation table returned by :func:`detect_desaturations`.
DESAT_COLUMNS: tuple[str, ...] = ("onset", "duration", "nadir_time", "baseline", "nadir", "depth")

_EPS = 1e-6
#: Minimum wake before sleep onset (s) for the wake-based baseline SpO2.
_BASELINE_WAKE_SEC = 60.0
#: Above this share of invalid SpO2 during sleep (%), indices carry a caveat.
_ARTIFACT_CAVEAT_PCT = 10.0


# ---------------------------------------------------------------------------------- cleaning
def _to_1hz(data: np.ndarray, sfreq: float) -> np.ndarray:
    """Average per second ignoring NaN (sfreq >= 1) or hold samples (sfreq < 1)."""
    n = data.size
    if n == 0:
        return np.zeros(0)
    if sfreq >= 1.0:
        n_sec = int(math.ceil(n / sfreq - 1e-9))
        sec = np.floor(np.arange(n) / sfreq + 1e-9).astype(int)
        sec = np.minimum(sec, n_sec - 1)
        ok = np.isfinite(data)
        sums = np.bincount(sec[ok], weights=data[ok], minlength=n_sec)
        counts = np.bincount(sec[ok], minlength=n_sec)
        out = np.full(n_sec, np.nan)
        has = counts > 0
        out[has] = sums[has] / counts[has]
        return out
    n_sec = int(math.ceil(n / sfreq - 1e-9))
    idx = np.minimum(np.floor(np.arange(n_sec) * sfreq + 1e-9).astype(int), n - 1)
    return data[idx].astype(float)


def clean_spo2(signal: Signal) -> tuple[np.ndarray, float]:
    """SpO2 at 1 Hz with artifacts set to NaN.

    Steps, in order:

    1. Range: samples that are non-finite, <= 0 (sensor drop-out), < :data:`SPO2_MIN_VALID`
       (50 %) or > :data:`SPO2_MAX_VALID` (100 %) are invalid (Taha 1997; Levy 2021).
    2. Rate: to 1 Hz -- the mean of the valid samples of each second when the native rate is
       >= 1 Hz, sample-and-hold when it is below 1 Hz.
    3. Spikes: a second that differs by more than :data:`SPIKE_DELTA` (4 %) from both valid
       neighbours, in the same direction, is invalid.
    4. Impossible steps: walking forward, a second that is not reachable from the last accepted
       one at :data:`MAX_RATE` (10 %/s) is invalid; the allowance grows with the elapsed time,
       so after a step artifact the trace is accepted again within a few seconds.
    5. Islands: valid runs shorter than :data:`MIN_ISLAND_SEC` (5 s) are dropped.

    Parameters
    ----------
    signal : Signal
        The SpO2 channel, in %, at any rate.

    Returns
    -------
    spo2 : numpy.ndarray
        Float SpO2 (%) per second, sample ``k`` covering ``[k, k + 1)`` s; NaN where invalid.
        All NaN when nothing valid is left (the caller decides whether that is an error).
    rate : float
        Its sampling rate, 1.0 Hz.
    """
    data = np.asarray(signal.data, dtype=float).copy()
    bad = ~np.isfinite(data) | (data <= 0) | (data < SPO2_MIN_VALID) | (data > SPO2_MAX_VALID)
    data[bad] = np.nan
    x = _to_1hz(data, float(signal.sfreq))
    n = x.size
    if n == 0:
        return x, 1.0

    # 3. single-sample spikes (compare with the adjacent seconds when both are valid)
    if n >= 3:
        prev, cur, nxt = x[:-2], x[1:-1], x[2:]
        with np.errstate(invalid="ignore"):
            d1 = cur - prev
            d2 = cur - nxt
            spike = (np.abs(d1) > SPIKE_DELTA) & (np.abs(d2) > SPIKE_DELTA) & (np.sign(d1) == np.sign(d2))
        x[1:-1][spike] = np.nan

    # 4. steps faster than MAX_RATE from the last accepted value
    vi = np.flatnonzero(np.isfinite(x))
    jumpy = np.abs(np.diff(x[vi])) > MAX_RATE * np.diff(vi) + _EPS
    if np.any(jumpy):  # rare: only then walk sample by sample
        last_v = math.nan
        last_t = -1
        for i in range(n):
            v = x[i]
            if not math.isfinite(v):
                continue
            if last_t < 0 or abs(v - last_v) <= MAX_RATE * (i - last_t) + _EPS:
                last_v, last_t = v, i
            else:
                x[i] = np.nan

    # 5. short valid islands
    min_len = int(math.ceil(MIN_ISLAND_SEC))
    valid = np.isfinite(x)
    if not valid.all():
        for a, b in true_runs(valid):
            if b - a < min_len:
                x[a:b] = np.nan
    n_bad = int((~np.isfinite(x)).sum())
    if n_bad:
        logger.debug("clean_spo2: %d of %d s of %s invalid", n_bad, n, signal.name)
    return x, 1.0


# ---------------------------------------------------------------------------- desaturations
def _empty_desats() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=float) for c in DESAT_COLUMNS})


def _detect_1hz(
    x: np.ndarray,
    *,
    drop: float,
    lookback: float,
    min_fall: float,
    max_duration: float,
) -> pd.DataFrame:
    """The desaturation state machine on a cleaned 1-Hz trace (see detect_desaturations)."""
    n = x.size
    valid = np.isfinite(x)
    near = min(1.0, 0.5 * drop)  # "back at baseline" tolerance, %
    lb = max(int(round(lookback)), 1)
    rows = []
    win_start = 0
    i = 0
    while i < n:
        if not valid[i]:
            win_start = i + 1
            i += 1
            continue
        lo = max(win_start, i - lb)
        seg = x[lo : i + 1]
        base = float(seg.max())
        if x[i] > base - drop + _EPS:
            i += 1
            continue
        # start of the fall: last second still within `near` % of the baseline
        onset = lo + int(np.flatnonzero(seg >= base - near - _EPS)[-1])
        nadir, nadir_i = float(x[i]), i
        end = None
        k = i + 1
        while k < n:
            if not valid[k]:
                break
            if k - onset >= max_duration:
                end = k
                break
            v = float(x[k])
            if v < nadir:
                nadir, nadir_i = v, k
            elif v >= base - near - _EPS or v - nadir >= max(drop, 0.5 * (base - nadir)) - _EPS:
                end = k
                break
            k += 1
        if end is None:
            # cut by invalid data or by the end of the trace before recovering: keep it only if
            # the nadir was seen (SpO2 already rose >= 1 %); a fall running straight into a
            # gap is the usual signature of a probe coming off.
            last = k - 1
            if x[last] - nadir >= 1.0 - _EPS and nadir_i - onset >= min_fall - _EPS:
                rows.append((onset, last - onset + 1, nadir_i, base, nadir, base - nadir))
            win_start = k + 1
            i = k + 1
            continue
        if nadir_i - onset >= min_fall - _EPS:
            rows.append((onset, end - onset, nadir_i, base, nadir, base - nadir))
        win_start = end
        i = end
    if not rows:
        return _empty_desats()
    return pd.DataFrame(rows, columns=list(DESAT_COLUMNS)).astype(float)


def detect_desaturations(
    signal: Signal,
    *,
    drop: float = 3.0,
    lookback: float = 120.0,
    min_fall: float = 3.0,
    max_duration: float = 120.0,
) -> pd.DataFrame:
    """Detect oxygen desaturations of at least ``drop`` % from a pre-event baseline.

    Algorithm, on the cleaned 1-Hz trace of :func:`clean_spo2`:

    * **Baseline** at second ``i``: the maximum SpO2 over the preceding ``lookback`` s
      (120 s), never reaching back before the end of the previous desaturation nor across
      invalid data. The 120-s window makes slow drifts (< ``drop`` % in 2 min) no event.
    * **Trigger**: SpO2 <= baseline - ``drop``. The **onset** is the last second before the
      trigger at which SpO2 was still within 1 % of the baseline (start of the fall).
    * **Nadir**: the lowest SpO2 from the trigger until the end of the event.
    * **End**: the first second at which SpO2 is back within 1 % of the baseline, or has
      regained at least half of the fall (and at least ``drop`` %) -- so that the cyclic
      desaturations of consecutive apneas count one by one -- or ``max_duration`` s (120 s)
      after the onset.
    * **Minimum duration**: the fall (onset to nadir) lasts at least ``min_fall`` s (3 s).
    * **Gaps**: nothing is detected across invalid data. An event interrupted by invalid data
      (or the end of the trace) before it recovers is kept only when SpO2 had already risen by
      >= 1 % from its nadir; a fall running straight into a gap (probe coming off) is dropped.

    The AASM Manual (v2.6/v3) defines desaturations relative to the pre-event baseline but no
    detection algorithm; this one follows the usual automated ODI (e.g. Levy 2021).

    Parameters
    ----------
    signal : Signal
        SpO2 channel, %.
    drop : float
        Minimal fall from baseline, % (3 for ODI3 / AASM rule 1A, 4 for rule 1B). Must be > 0.
    lookback : float
        Baseline window, s.
    min_fall : float
        Minimal onset-to-nadir duration, s.
    max_duration : float
        Longest event, s; a longer one ends there.

    Returns
    -------
    pandas.DataFrame
        One row per desaturation, columns ``onset`` (s), ``duration`` (s), ``nadir_time`` (s),
        ``baseline`` (%), ``nadir`` (%), ``depth`` (%: baseline - nadir), sorted by onset.
        Empty (with those columns) when nothing is found or no valid SpO2 is left.
    """
    if not drop > 0:
        raise ValueError(f"drop must be a positive SpO2 fall in %, got {drop!r}")
    x, rate = clean_spo2(signal)
    if not np.isfinite(x).any():
        logger.warning("detect_desaturations: no valid SpO2 left in %s after cleaning", signal.name)
        return _empty_desats()
    out = _detect_1hz(x, drop=drop, lookback=lookback, min_fall=min_fall, max_duration=max_duration)
    for col in ("onset", "duration", "nadir_time"):
        out[col] = out[col] / rate
    return out.reset_index(drop=True)


def desaturations_near(
    desats: pd.DataFrame, start: float, end: float, *, lag: float = 30.0
) -> pd.DataFrame:
    """Desaturations whose onset lies in ``[start, end + lag]``.

    Used to decide whether a hypopnea is "associated with" a >= 3 % or >= 4 % desaturation
    (AASM Manual v2.6 rule VIII.4.A/B): SpO2 lags airflow by the circulation time, so a
    desaturation may start up to ``lag`` s after the event ends.

    Parameters
    ----------
    desats : pandas.DataFrame
        With at least an ``onset`` column (s), e.g. from :func:`detect_desaturations`.
    start, end : float
        The respiratory event, s.
    lag : float
        How long after ``end`` a desaturation may start, s.

    Returns
    -------
    pandas.DataFrame
        The matching rows of ``desats`` (same columns and index).
    """
    if desats is None or len(desats) == 0:
        return desats if desats is not None else _empty_desats()
    onset = desats["onset"].to_numpy(dtype=float)
    return desats[(onset >= start) & (onset <= end + lag)]


# ------------------------------------------------------------------------------- measures
def _intervals(runs: list[tuple[int, int]], offset: float = 0.0) -> list[tuple[float, float]]:
    return [(float(a) + offset, float(b) + offset) for a, b in runs]


def oximetry_measures(rec: Recording) -> list[Measure]:
    """The oximetry numbers of the report, from the SpO2 signal.

    Computed over sleep epochs (or over the whole recording when there is no hypnogram, said
    in each ``reason``), on the cleaned 1-Hz trace of :func:`clean_spo2`:

    * ``spo2_baseline`` (%): median SpO2 during wake before sleep onset when >= 1 min of valid
      data exists, else median SpO2 during sleep outside desaturations (the choice is named in
      ``reason`` and in the evidence note).
    * ``spo2_mean`` (%): mean SpO2 during sleep.
    * ``spo2_nadir`` (%): lowest SpO2 during sleep; evidence: the second where it occurred.
    * ``odi3`` / ``odi4`` (events/h): desaturations of >= 3 % / >= 4 %
      (:func:`detect_desaturations` with ``drop=3``; the >= 4 % ones are those of depth >= 4,
      so that ODI4 <= ODI3) starting in sleep, per hour of
      :func:`~sleeplm.clinical.sleep_time.sleep_time` (TST, AASM); evidence: their intervals.
    * ``t90_min`` (min) and ``t90_pct`` (%): time with SpO2 < 90 % during sleep, and its share
      of the sleep time with valid SpO2.
    * ``spo2_artifact_pct`` (%): share of the sleep time whose SpO2 is invalid (artifact,
      drop-out, or no signal).

    Parameters
    ----------
    rec : Recording
        Needs a usable ``SPO2`` channel.

    Returns
    -------
    list of Measure
        In the order above.

    Raises
    ------
    MissingChannelError
        The recording has no SPO2 channel.
    SignalQualityError
        The SPO2 channel is all NaN, flat, or has no valid sample left after cleaning.
    """
    sig = rec.require("SPO2", purpose="oximetry")
    x, _ = clean_spo2(sig)
    if not np.isfinite(x).any():
        raise SignalQualityError(
            f"oximetry needs SpO2 values between {SPO2_MIN_VALID:g} and {SPO2_MAX_VALID:g} %, but "
            f"every sample of SPO2 (label '{sig.label}', unit '{sig.unit}') is out of range or "
            "an artifact. Check that the channel really is SpO2 in %."
        )
    desats = _detect_1hz(x, drop=3.0, lookback=120.0, min_fall=3.0, max_duration=120.0)

    st = sleep_time(rec)
    n_tot = max(int(math.ceil(rec.duration - 1e-9)), x.size)
    spo2 = np.full(n_tot, np.nan)
    spo2[: x.size] = x
    t = np.arange(n_tot, dtype=float)
    sleep = in_sleep(rec, t + 0.5)  # the epoch of each second's middle
    valid = np.isfinite(spo2)
    vs = sleep & valid
    scope = "sleep" if st.staged else "the whole recording"
    caveat = "" if st.staged else "no sleep staging: computed over the whole recording (monitoring time)"
    epoch_of = rec.epoch_index(t + 0.5) if st.staged else None

    def evid_epochs(mask: np.ndarray, note: str = "") -> Evidence:
        if st.staged:
            ep = epoch_of[mask]
            return Evidence.from_epochs(ep[ep >= 0], note=note)
        return Evidence(intervals=_intervals(true_runs(mask)), note=note)

    n_sleep = int(sleep.sum())
    artifact_pct = 100.0 * float((sleep & ~valid).sum()) / n_sleep if n_sleep else math.nan
    art_caveat = ""
    if n_sleep and artifact_pct > _ARTIFACT_CAVEAT_PCT:
        art_caveat = (f"SpO2 invalid during {artifact_pct:.0f} % of {scope}; "
                      "indices may be underestimated")

    def join(*parts: str) -> str:
        return "; ".join(p for p in parts if p)

    out: list[Measure] = []
    # in_desat: seconds inside a detected desaturation
    in_desat = np.zeros(n_tot, dtype=bool)
    for on, du in zip(desats["onset"], desats["duration"]):
        in_desat[int(on) : int(on + du) + 1] = True

    # --- baseline
    name, label = "spo2_baseline", "Baseline SpO2"
    base_val, base_ev, base_how = None, None, ""
    if st.staged:
        sleep_idx = np.flatnonzero(np.isin(rec.stages, SLEEP_STAGES))
        onset_t = rec.stage_onset + float(sleep_idx[0]) * rec.epoch_sec if sleep_idx.size else math.inf
        wake_pre = (rec.stage_at(t + 0.5) == "W") & (t + 1 <= onset_t) & valid
        if wake_pre.sum() >= _BASELINE_WAKE_SEC:
            base_val = float(np.median(spo2[wake_pre]))
            base_how = "median SpO2 during wake before sleep onset"
            base_ev = evid_epochs(wake_pre, note=base_how)
    if base_val is None:
        m = sleep & valid & ~in_desat
        if m.any():
            base_val = float(np.median(spo2[m]))
            base_how = (f"median SpO2 during {scope} outside desaturations"
                        + (" (less than 1 min of wake before sleep onset)" if st.staged else ""))
            base_ev = evid_epochs(m, note=base_how)
    if base_val is None:
        out.append(Measure.missing(name, label, "%", f"no valid SpO2 during {scope}"))
    else:
        out.append(Measure(name=name, label=label, value=base_val, unit="%", evidence=base_ev,
                           reason=join(base_how, caveat)))

    # --- mean and nadir during sleep
    if vs.any():
        out.append(Measure(name="spo2_mean", label="Mean SpO2 during sleep",
                           value=float(np.mean(spo2[vs])), unit="%",
                           evidence=evid_epochs(vs, note=f"valid SpO2 during {scope}"),
                           reason=caveat))
        idx = np.flatnonzero(vs)
        k = int(idx[np.argmin(spo2[vs])])
        start = rec.info.start_time
        clock = "" if start is None else f" ({clock_of(start, k)})"
        note = f"lowest valid 1-s SpO2 during {scope}, at {k} s{clock}"
        ev = Evidence(epochs=[(int(epoch_of[k]),) * 2] if st.staged and epoch_of[k] >= 0 else [],
                      intervals=[(float(k), float(k + 1))], note=note)
        out.append(Measure(name="spo2_nadir", label="SpO2 nadir during sleep",
                           value=float(spo2[k]), unit="%", evidence=ev, reason=caveat))
    else:
        why = f"no valid SpO2 during {scope}"
        out.append(Measure.missing("spo2_mean", "Mean SpO2 during sleep", "%", why))
        out.append(Measure.missing("spo2_nadir", "SpO2 nadir during sleep", "%", why))

    # --- ODI 3 % / 4 %
    if len(desats):
        d_on = desats["onset"].to_numpy(dtype=float)
        d_in = in_sleep(rec, d_on)
    else:
        d_on, d_in = np.zeros(0), np.zeros(0, dtype=bool)
    for thr, name in ((3.0, "odi3"), (4.0, "odi4")):
        label = f"Oxygen desaturation index ({thr:g} %)"
        if st.hours <= 0:
            out.append(Measure.missing(name, label, "events/h", "no sleep time to divide by"))
            continue
        sel = d_in & (desats["depth"].to_numpy(dtype=float) >= thr - _EPS) if len(desats) else d_in
        rows = desats[sel]
        ev = Evidence(intervals=[(float(a), float(a + b)) for a, b in zip(rows["onset"], rows["duration"])],
                      note=f"{len(rows)} desaturations of >= {thr:g} % starting in {scope}")
        out.append(Measure(name=name, label=label, value=len(rows) / st.hours, unit="events/h",
                           evidence=ev, reason=join(f"per hour of {st.basis}" if st.staged else "", caveat, art_caveat)))

    # --- T90
    below = vs & (spo2 < 90.0)
    n_vs = int(vs.sum())
    below_ev = Evidence(intervals=_intervals(true_runs(below)),
                        note=f"seconds with SpO2 < 90 % during {scope}")
    if n_vs:
        out.append(Measure(name="t90_min", label="Time with SpO2 < 90 %",
                           value=float(below.sum()) / 60.0, unit="min", evidence=below_ev,
                           reason=join(caveat, art_caveat)))
        out.append(Measure(name="t90_pct", label="Share of sleep with SpO2 < 90 % (T90)",
                           value=100.0 * float(below.sum()) / n_vs, unit="%", evidence=below_ev,
                           reason=join(f"percent of {scope} time with valid SpO2", caveat)))
    else:
        why = f"no valid SpO2 during {scope}"
        out.append(Measure.missing("t90_min", "Time with SpO2 < 90 %", "min", why))
        out.append(Measure.missing("t90_pct", "Share of sleep with SpO2 < 90 % (T90)", "%", why))

    # --- artifact share
    if n_sleep:
        out.append(Measure(name="spo2_artifact_pct", label="SpO2 invalid (artifact)",
                           value=artifact_pct, unit="%",
                           evidence=Evidence(intervals=_intervals(true_runs(sleep & ~valid)),
                                             note=f"invalid SpO2 seconds during {scope}"),
                           reason=join(f"percent of {scope} without valid SpO2", caveat)))
    else:
        out.append(Measure.missing("spo2_artifact_pct", "SpO2 invalid (artifact)", "%",
                                   "no sleep epochs scored"))
    return out
