"""Leg movements (LM) and periodic limb movements of sleep (PLMS).

Rules (AASM Manual for the Scoring of Sleep and Associated Events v2.6 / v3, "Movement rules",
and the WASM standard: Zucconi M et al., Sleep Med 2006;7:175-183; Ferri R et al., Sleep Med
2016;26:86-95):

* **LM** (AASM): lasts 0.5-10 s; starts where the EMG rises >= 8 µV above the resting EMG;
  ends at the start of a period of >= 0.5 s during which it stays < 2 µV above resting EMG.
* **Bilateral LM** (WASM 2016): monolateral LMs of the two legs that overlap or are separated
  by < 0.5 s (offset to onset) form one LM; it may last up to 15 s and hold up to 4
  monolateral LMs, else it is not counted.
* **PLM series** (AASM): >= 4 consecutive LMs with onset-to-onset intervals of 5-90 s.
* **Respiratory exclusion** (AASM v2.6, PLM rule note): an LM occurring from 0.5 s before to
  0.5 s after an apnea or hypopnea is not part of a PLM series.
* **PLMS index**: PLMs starting during sleep per hour of total sleep time.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import signal as sps
from scipy.ndimage import uniform_filter1d

from sleeplm._logging import logger
from sleeplm.clinical.measure import Evidence, Measure, true_runs
from sleeplm.clinical.sleep_time import in_sleep, sleep_time
from sleeplm.errors import MissingChannelError, SignalQualityError
from sleeplm.recording import EventType, Recording, Signal

__all__ = [
    "LM_ONSET_UV",
    "LM_OFFSET_UV",
    "LM_OFFSET_SEC",
    "LM_MIN_SEC",
    "LM_MAX_SEC",
    "BILATERAL_GAP_SEC",
    "BILATERAL_MAX_SEC",
    "PLM_MIN_COUNT",
    "PLM_MIN_INTERVAL",
    "PLM_MAX_INTERVAL",
    "RESP_EXCLUSION_SEC",
    "LM_COLUMNS",
    "detect_leg_movements",
    "periodic_limb_movements",
    "plm_measures",
]

#: AASM: LM onset is an EMG rise of >= 8 µV above resting EMG.
LM_ONSET_UV: float = 8.0
#: AASM: LM ends when the EMG stays < 2 µV above resting EMG ...
LM_OFFSET_UV: float = 2.0
#: ... for at least 0.5 s.
LM_OFFSET_SEC: float = 0.5
#: AASM: LM duration 0.5-10 s.
LM_MIN_SEC: float = 0.5
LM_MAX_SEC: float = 10.0
#: WASM 2016: LMs of the two legs overlapping or < 0.5 s apart form one bilateral LM ...
BILATERAL_GAP_SEC: float = 0.5
#: ... of at most 15 s and 4 monolateral LMs.
BILATERAL_MAX_SEC: float = 15.0
_BILATERAL_MAX_PARTS = 4
#: AASM: a PLM series has >= 4 LMs, 5-90 s apart onset to onset.
PLM_MIN_COUNT: int = 4
PLM_MIN_INTERVAL: float = 5.0
PLM_MAX_INTERVAL: float = 90.0
#: AASM v2.6: LMs from 0.5 s before to 0.5 s after an apnea/hypopnea are not PLMs.
RESP_EXCLUSION_SEC: float = 0.5
#: Columns of :func:`detect_leg_movements`.
LM_COLUMNS: tuple[str, ...] = ("onset", "duration", "side", "peak_uv")

_HIGHPASS_HZ = 10.0
_ENVELOPE_SEC = 0.1  # moving mean of the rectified EMG
_BASELINE_BLOCK_SEC = 10.0  # resting EMG: 20th percentile of the envelope per 10-s block...
_BASELINE_PCT = 20.0
_BASELINE_SMOOTH_BLOCKS = 31  # ... then the running median over ~5 min of blocks


def _empty_lm() -> pd.DataFrame:
    return pd.DataFrame({"onset": pd.Series(dtype=float), "duration": pd.Series(dtype=float),
                         "side": pd.Series(dtype=object), "peak_uv": pd.Series(dtype=float)})


def _envelope_above_baseline(sig: Signal) -> tuple[np.ndarray, np.ndarray]:
    """EMG envelope minus the resting EMG (µV), and the mask of invalid samples."""
    fs = float(sig.sfreq)
    x = np.asarray(sig.data, dtype=float).copy()
    bad = ~np.isfinite(x)
    x[bad] = np.median(x[~bad]) if (~bad).any() else 0.0
    cut = min(_HIGHPASS_HZ, 0.2 * fs)
    if cut < _HIGHPASS_HZ:
        logger.warning("%s sampled at %g Hz: high-pass at %g Hz instead of %g Hz",
                       sig.name, fs, cut, _HIGHPASS_HZ)
    sos = sps.butter(4, cut, btype="highpass", fs=fs, output="sos")
    y = np.abs(sps.sosfiltfilt(sos, x))
    env = uniform_filter1d(y, size=max(int(round(_ENVELOPE_SEC * fs)), 1), mode="nearest")
    env[bad] = np.nan

    # resting EMG: robust to bursts covering up to ~80 % of a block; follows slow drifts
    b = max(int(round(_BASELINE_BLOCK_SEC * fs)), 1)
    n = env.size
    nb = int(np.ceil(n / b))
    pad = np.full(nb * b, np.nan)
    pad[:n] = env
    blocks = pad.reshape(nb, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        pct = np.nanpercentile(blocks, _BASELINE_PCT, axis=1)
    base_b = pd.Series(pct).rolling(_BASELINE_SMOOTH_BLOCKS, center=True, min_periods=1).median()
    base_b = base_b.fillna(np.nanmedian(pct) if np.isfinite(pct).any() else 0.0).to_numpy()
    base = np.repeat(base_b, b)[:n]
    rel = env - base
    rel[bad] = 0.0
    return rel, bad


def _detect_channel(sig: Signal) -> pd.DataFrame:
    """Monolateral LMs of one leg EMG channel (onset, duration, peak_uv)."""
    fs = float(sig.sfreq)
    rel, bad = _envelope_above_baseline(sig)
    quiet_len = max(int(round(LM_OFFSET_SEC * fs)), 1)
    low = rel < LM_OFFSET_UV
    d = np.diff(np.r_[0, low.astype(np.int8), 0])
    starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    long_enough = ((stops - starts) >= quiet_len) | (starts == 0)  # leading stretch: no minimum
    mark = np.zeros(rel.size + 1, dtype=np.int32)
    np.add.at(mark, starts[long_enough], 1)
    np.add.at(mark, stops[long_enough], -1)
    quiet = np.cumsum(mark[:-1]) > 0
    hi = rel >= LM_ONSET_UV
    rows = []
    cbad = np.r_[0, np.cumsum(bad)]
    for a, b in true_runs(~quiet):
        h = np.flatnonzero(hi[a:b])
        if h.size == 0:
            continue
        on = a + int(h[0])
        dur = (b - on) / fs
        if not (LM_MIN_SEC - 1e-9 <= dur <= LM_MAX_SEC + 1e-9):
            continue
        if cbad[b] - cbad[on] > 0:
            continue
        rows.append((on / fs, dur, float(rel[on:b].max())))
    return pd.DataFrame(rows, columns=["onset", "duration", "peak_uv"]).astype(float)


def _combine_bilateral(lm: pd.DataFrame) -> tuple[pd.DataFrame, list[list]]:
    """Merge LMs of different sides that overlap or are < 0.5 s apart (WASM 2016).

    ``lm`` has onset, duration, side, peak_uv. Returns the merged table (side ``bilateral``
    for merged ones) and, per row, the index labels of the LMs it was made of. Merged LMs
    longer than 15 s or of more than 4 parts are dropped.
    """
    if lm.empty:
        return _empty_lm(), []
    lm = lm.sort_values("onset", kind="stable")
    groups: list[dict] = []
    for idx, on, du, side, pk in zip(lm.index, lm["onset"], lm["duration"], lm["side"], lm["peak_uv"]):
        end = on + du
        g = groups[-1] if groups else None
        if (g is not None and on - g["end"] < BILATERAL_GAP_SEC
                and (side not in g["sides"] or len(g["sides"]) > 1)):
            g["end"] = max(g["end"], end)
            g["sides"].add(side)
            g["peak"] = max(g["peak"], pk)
            g["ids"].append(idx)
        else:
            groups.append({"onset": on, "end": end, "sides": {side}, "peak": pk, "ids": [idx]})
    rows, ids = [], []
    for g in groups:
        dur = g["end"] - g["onset"]
        if len(g["sides"]) > 1 and (dur > BILATERAL_MAX_SEC + 1e-9 or len(g["ids"]) > _BILATERAL_MAX_PARTS):
            continue
        side = "bilateral" if len(g["sides"]) > 1 else next(iter(g["sides"]))
        rows.append((g["onset"], dur, side, g["peak"]))
        ids.append(g["ids"])
    if not rows:
        return _empty_lm(), []
    out = pd.DataFrame(rows, columns=list(LM_COLUMNS))
    return out, ids


def detect_leg_movements(rec: Recording) -> pd.DataFrame:
    """Detect leg movements on the leg EMG channels (AASM LM rules, WASM bilateral rule).

    Per channel (``EMG_LEG``, ``EMG_LEG_R``, whichever is present and usable):

    1. 4th-order Butterworth high-pass at 10 Hz (zero phase; at 0.2 x sfreq when the rate is
       below 50 Hz), rectified, moving mean over 0.1 s: the envelope, µV.
    2. Resting EMG: the 20th percentile of the envelope in each 10-s block, smoothed by a
       running median over 31 blocks (~5 min) -- robust to movements and to slow drifts.
    3. Onset: envelope >= 8 µV above resting EMG. Offset: start of the first period of
       >= 0.5 s with envelope < 2 µV above resting EMG. Movements lasting 0.5-10 s are kept;
       any touching invalid (NaN) samples are dropped.

    Then LMs of the two legs that overlap or are < 0.5 s apart become one ``bilateral`` LM
    (WASM 2016; dropped when longer than 15 s or of more than 4 monolateral LMs).

    Parameters
    ----------
    rec : Recording
        Needs ``EMG_LEG`` and/or ``EMG_LEG_R`` (µV).

    Returns
    -------
    pandas.DataFrame
        Columns ``onset`` (s), ``duration`` (s), ``side`` (``left``/``right``/``bilateral``;
        ``single`` when only ``EMG_LEG`` is recorded), ``peak_uv`` (largest envelope above
        resting EMG, µV), sorted by onset.

    Raises
    ------
    MissingChannelError
        Neither leg EMG channel exists.
    SignalQualityError
        They exist but none carries a signal (all NaN or flat).
    """
    rec.require("EMG_LEG", "EMG_LEG_R", purpose="leg-movement detection")
    both = "EMG_LEG" in rec and "EMG_LEG_R" in rec
    parts = []
    for name in ("EMG_LEG", "EMG_LEG_R"):
        sig = rec.signals.get(name)
        if sig is None:
            continue
        problem = sig.quality_problem()
        if problem is not None:
            logger.warning("leg-movement detection: skipping %s: %s", name, problem)
            continue
        d = _detect_channel(sig)
        d["side"] = "right" if name == "EMG_LEG_R" else ("left" if both else "single")
        parts.append(d)
    lm = pd.concat(parts, ignore_index=True) if parts else _empty_lm()
    if lm.empty:
        return _empty_lm()
    merged, _ = _combine_bilateral(lm[list(LM_COLUMNS)])
    return merged.sort_values("onset", kind="stable").reset_index(drop=True)


def _respiratory_excluded(lm: pd.DataFrame, respiratory: pd.DataFrame | None) -> np.ndarray:
    """True for LMs overlapping [resp onset - 0.5 s, resp end + 0.5 s] of any respiratory event."""
    n = len(lm)
    if respiratory is None or len(respiratory) == 0 or n == 0:
        return np.zeros(n, dtype=bool)
    on = lm["onset"].to_numpy(dtype=float)
    end = on + lm["duration"].to_numpy(dtype=float)
    r_on = respiratory["onset"].to_numpy(dtype=float)
    r_end = r_on + respiratory["duration"].to_numpy(dtype=float)
    lo = r_on - RESP_EXCLUSION_SEC
    hi = r_end + RESP_EXCLUSION_SEC
    excl = np.zeros(n, dtype=bool)
    for a, b in zip(lo, hi):
        excl |= (on <= b) & (end >= a)
    return excl


def periodic_limb_movements(
    lm: pd.DataFrame, *, respiratory: pd.DataFrame | None = None
) -> pd.Series:
    """Which leg movements belong to a PLM series (AASM).

    A PLM series is >= 4 consecutive LMs whose onset-to-onset intervals are all 5-90 s. An
    interval outside 5-90 s ends the series (the later LM may start a new one). LMs from 0.5 s
    before an apnea/hypopnea to 0.5 s after its end (AASM v2.6) are never PLMs and also end
    the series: intervals are not measured across them, so respiratory-related movements can
    never link otherwise unrelated ones into a series (the conservative choice; the AASM text
    leaves it open).

    Parameters
    ----------
    lm : pandas.DataFrame
        Leg movements with ``onset`` and ``duration`` (s), e.g. from
        :func:`detect_leg_movements` or scored events.
    respiratory : pandas.DataFrame, optional
        Apneas and hypopneas with ``onset`` and ``duration`` (s).

    Returns
    -------
    pandas.Series of bool
        Indexed like ``lm``: True for LMs that are PLMs.
    """
    n = len(lm)
    if n == 0:
        return pd.Series(np.zeros(0, dtype=bool), index=lm.index, name="plm")
    order = np.argsort(lm["onset"].to_numpy(dtype=float), kind="stable")
    on = lm["onset"].to_numpy(dtype=float)[order]
    excl = _respiratory_excluded(lm, respiratory)[order]
    plm = np.zeros(n, dtype=bool)
    run: list[int] = []

    def close() -> None:
        if len(run) >= PLM_MIN_COUNT:
            plm[run] = True
        run.clear()

    for k in range(n):
        if excl[k]:
            close()
            continue
        if run and PLM_MIN_INTERVAL - 1e-9 <= on[k] - on[run[-1]] <= PLM_MAX_INTERVAL + 1e-9:
            run.append(k)
        else:
            close()
            run.append(k)
    close()
    out = np.zeros(n, dtype=bool)
    out[order] = plm
    return pd.Series(out, index=lm.index, name="plm")


def _scored_movements(rec: Recording) -> tuple[pd.DataFrame, np.ndarray, list[list[int]], str]:
    """LMs from scored events: table, PLM flags, member event ids, and a description."""
    lm_ev = rec.events_of(EventType.LIMB_MOVEMENT)
    plm_ev = rec.events_of(EventType.PLM)
    resp = rec.events_of(*EventType.apneas(), EventType.HYPOPNEA)
    if len(plm_ev):
        # PLM-typed events are PLMs as scored; LM events overlapping one are the same movement
        p_on = plm_ev["onset"].to_numpy(dtype=float)
        p_end = p_on + plm_ev["duration"].to_numpy(dtype=float)
        keep = [i for i, o, d in zip(lm_ev.index, lm_ev["onset"], lm_ev["duration"])
                if not np.any((o <= p_end) & (o + d >= p_on))]
        table = pd.concat([plm_ev[["onset", "duration"]], lm_ev.loc[keep, ["onset", "duration"]]])
        flags = np.r_[np.ones(len(plm_ev), dtype=bool), np.zeros(len(keep), dtype=bool)]
        ids = [[int(i)] for i in table.index]
        return table, flags, ids, "scored PLM events (counted as PLMs as scored)"
    sides = lm_ev["channel"].fillna("scored").astype(str)
    table = pd.DataFrame({"onset": lm_ev["onset"].to_numpy(dtype=float),
                          "duration": lm_ev["duration"].to_numpy(dtype=float),
                          "side": sides.to_numpy(), "peak_uv": np.nan}, index=lm_ev.index)
    if sides.nunique() > 1:  # scored per leg: combine the two legs as for the EMG
        table, ids = _combine_bilateral(table)
        ids = [[int(i) for i in g] for g in ids]
    else:
        ids = [[int(i)] for i in table.index]
        table = table.reset_index(drop=True)
    flags = periodic_limb_movements(table, respiratory=resp).to_numpy()
    return table, flags, ids, "scored limb-movement events (PLM series by the AASM rules)"


def plm_measures(rec: Recording) -> list[Measure]:
    """LM index, PLM count and PLMS index.

    * ``lm_index`` (events/h): leg movements starting during sleep per hour of TST.
    * ``plm_count`` (count): PLMs (:func:`periodic_limb_movements`) starting during sleep;
      series are found over the whole night (wake LMs can link a series), then counted in sleep.
    * ``plmi`` (events/h): PLMS index, AASM -- ``plm_count`` per hour of TST.

    Source, named in each ``reason``: the leg EMG (:func:`detect_leg_movements`) when an
    ``EMG_LEG``/``EMG_LEG_R`` channel is present; otherwise scored events -- ``plm`` events are
    PLMs as scored (with ``limb_movement`` events not overlapping them as further LMs), else
    ``limb_movement`` events go through :func:`periodic_limb_movements` (scored per leg, i.e.
    with different ``channel`` values, they are first combined as bilateral LMs). If the EMG
    channels are all unusable, scored events are used when present. Apneas and hypopneas of
    ``rec.events`` exclude LMs around them from PLM series. Without a hypnogram, every movement
    counts per hour of monitoring time (said in ``reason``).

    Parameters
    ----------
    rec : Recording

    Returns
    -------
    list of Measure
        lm_index, plm_count, plmi.

    Raises
    ------
    MissingChannelError
        The recording has neither leg EMG nor scored limb-movement events.
    SignalQualityError
        Leg EMG channels exist but are unusable and no scored events can replace them.
    """
    st = sleep_time(rec)
    names = (("lm_index", "Leg movement index", "events/h"),
             ("plm_count", "Periodic limb movements in sleep", "count"),
             ("plmi", "PLMS index", "events/h"))
    has_emg = any(n in rec for n in ("EMG_LEG", "EMG_LEG_R"))
    has_scored = len(rec.events_of(EventType.LIMB_MOVEMENT, EventType.PLM)) > 0
    if not has_emg and not has_scored:
        raise MissingChannelError(
            "The PLM index needs a leg EMG channel (EMG_LEG / EMG_LEG_R) or scored "
            "limb-movement / PLM events; this recording has neither. Map the leg EMG with "
            "channel_aliases or give the scored events."
        )

    from_emg = False
    fallback = ""
    if has_emg:
        try:
            lm = detect_leg_movements(rec)
            resp = rec.events_of(*EventType.apneas(), EventType.HYPOPNEA)
            flags = periodic_limb_movements(lm, respiratory=resp).to_numpy()
            ids: list[list[int]] = []
            chans = [n for n in ("EMG_LEG", "EMG_LEG_R") if n in rec and rec[n].quality_problem() is None]
            source = "leg EMG (" + ", ".join(chans) + ")"
            from_emg = True
        except SignalQualityError as exc:
            if not has_scored:
                raise
            fallback = f"leg EMG unusable ({exc})"
    if not from_emg:
        lm, flags, ids, source = _scored_movements(rec)

    onsets = lm["onset"].to_numpy(dtype=float)
    sleep = in_sleep(rec, onsets) if len(lm) else np.zeros(0, dtype=bool)
    caveat = "" if st.staged else "no sleep staging: every movement counted, per hour of monitoring time"
    reason = "; ".join(p for p in (f"source: {source}", fallback, caveat) if p)

    def evidence(mask: np.ndarray, note: str) -> Evidence:
        if from_emg:
            sel = lm[mask]
            return Evidence(intervals=[(float(a), float(a + b)) for a, b in
                                       zip(sel["onset"], sel["duration"])], note=note)
        return Evidence(event_ids=sorted(i for k in np.flatnonzero(mask) for i in ids[k]), note=note)

    scope = "sleep" if st.staged else "the recording"
    lm_mask = sleep
    plm_mask = sleep & flags.astype(bool)
    lm_ev = evidence(lm_mask, f"{int(lm_mask.sum())} leg movements during {scope}")
    plm_ev = evidence(plm_mask, f"{int(plm_mask.sum())} PLMs during {scope}")
    out: list[Measure] = []
    if st.hours <= 0:
        out.append(Measure.missing("lm_index", names[0][1], "events/h", "no sleep time to divide by"))
    else:
        out.append(Measure(name="lm_index", label=names[0][1], value=lm_mask.sum() / st.hours,
                           unit="events/h", evidence=lm_ev, reason=reason))
    out.append(Measure(name="plm_count", label=names[1][1], value=float(plm_mask.sum()),
                       unit="count", evidence=plm_ev, reason=reason))
    if st.hours <= 0:
        out.append(Measure.missing("plmi", names[2][1], "events/h", "no sleep time to divide by"))
    else:
        out.append(Measure(name="plmi", label=names[2][1], value=plm_mask.sum() / st.hours,
                           unit="events/h", evidence=plm_ev, reason=reason))
    return out
