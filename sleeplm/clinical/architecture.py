"""Sleep architecture from a hypnogram (AASM Manual, v2.6/v3 report parameters).

Definitions (all durations in minutes, from 30-s epochs):

* TIB, time in bed: every epoch of the hypnogram (the hypnogram is taken to span lights-off to
  lights-on; sleeplm does not guess lights-off).
* SPT, sleep period time: first to last sleep epoch, inclusive.
* TST, total sleep time: N1 + N2 + N3 + R epochs (unscored epochs never count as sleep).
* WASO: wake epochs within the SPT.
* Sleep efficiency: TST / TIB x 100 (%).
* Sleep-onset latency: start of the hypnogram to the first sleep epoch.
* REM latency: **sleep onset** to the first R epoch (AASM). YASA measures it from the start of
  the recording; the two differ by exactly the sleep-onset latency.
* Awakenings: runs of one or more wake epochs within the SPT.
* Fragmentation index: transitions from sleep into wake per hour of TST.
* Stage minutes and % of TST per stage.

These coincide with ``yasa.Hypnogram.sleep_statistics()`` (TIB, SPT, WASO, TST, SE, SME, SOL,
SFI, stage minutes and percentages); the tests check that on 39 real Sleep-EDF hypnograms.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np

from sleeplm.clinical.measure import Evidence, Measure, true_runs
from sleeplm.errors import MissingChannelError
from sleeplm.recording import EPOCH_SEC, SLEEP_STAGES, STAGES, Recording, clock_of

__all__ = ["sleep_architecture", "architecture_from_stages", "STAGE_NAMES",
           "SLEEP_EFFICIENCY_REFERENCE_PCT"]

#: Sleep efficiency below this (%) is commonly called low: a reference, not a patient number.
SLEEP_EFFICIENCY_REFERENCE_PCT = 85.0

STAGE_NAMES = {"W": "Wake", "N1": "N1", "N2": "N2", "N3": "N3", "R": "REM", "UNS": "Unscored"}


def _at(start: _dt.datetime | None, epoch: int, epoch_sec: float) -> str:
    """" (HH:MM:SS)", the clock time at which ``epoch`` starts; "" without a start."""
    return "" if start is None else f" ({clock_of(start, epoch * epoch_sec)})"


def architecture_from_stages(stages: np.ndarray, epoch_sec: float = EPOCH_SEC,
                             start: _dt.datetime | None = None) -> list[Measure]:
    """Sleep-architecture measures of a hypnogram.

    Parameters
    ----------
    stages : numpy.ndarray
        One of ``W, N1, N2, N3, R, UNS`` per epoch.
    epoch_sec : float
        Epoch length, seconds.
    start : datetime, optional
        When the first epoch starts: the sleep onset's and the first R epoch's evidence then
        give their clock times ("sleep onset (22:31:00) and first R epoch (23:52:00)").

    Returns
    -------
    list of Measure
        tib_min, spt_min, tst_min, waso_min, sleep_efficiency_pct, sleep_maintenance_pct,
        sleep_onset_latency_min, rem_latency_min, awakenings, fragmentation_index, then
        ``<stage>_min`` and ``<stage>_pct_tst`` for W/N1/N2/N3/R (and UNS minutes).
    """
    stages = np.asarray(stages)
    if stages.size == 0:
        raise MissingChannelError("Sleep architecture needs a hypnogram; this one has no epochs.")
    epoch_min = epoch_sec / 60.0
    n = stages.size
    is_sleep = np.isin(stages, SLEEP_STAGES)
    sleep_idx = np.flatnonzero(is_sleep)
    all_epochs = np.arange(n)
    out: list[Measure] = [
        Measure(name="tib_min", label="Time in bed", value=n * epoch_min, unit="min",
                evidence=Evidence.from_epochs(all_epochs, "every epoch of the hypnogram")),
    ]
    if sleep_idx.size == 0:
        reason = "no sleep epoch was scored"
        out += [
            Measure(name="tst_min", label="Total sleep time", value=0.0, unit="min"),
            Measure(name="sleep_efficiency_pct", label="Sleep efficiency", value=0.0, unit="%"),
        ]
        for name, label, unit in (
            ("spt_min", "Sleep period time", "min"),
            ("waso_min", "Wake after sleep onset", "min"),
            ("sleep_onset_latency_min", "Sleep-onset latency", "min"),
            ("rem_latency_min", "REM latency (from sleep onset)", "min"),
        ):
            out.append(Measure.missing(name, label, unit, reason))
        return out

    first, last = int(sleep_idx[0]), int(sleep_idx[-1])
    spt = np.arange(first, last + 1)
    tst_epochs = sleep_idx
    wake_in_spt = spt[stages[spt] == "W"]
    tst = tst_epochs.size * epoch_min
    spt_min = spt.size * epoch_min
    out += [
        Measure(name="spt_min", label="Sleep period time", value=spt_min, unit="min",
                evidence=Evidence.from_epochs(spt, "first to last sleep epoch")),
        Measure(name="tst_min", label="Total sleep time", value=tst, unit="min",
                evidence=Evidence.from_epochs(tst_epochs, "N1, N2, N3 and R epochs")),
        Measure(name="waso_min", label="Wake after sleep onset", value=wake_in_spt.size * epoch_min,
                unit="min", evidence=Evidence.from_epochs(wake_in_spt, "wake epochs within SPT")),
        Measure(name="sleep_efficiency_pct", label="Sleep efficiency", value=100 * tst / (n * epoch_min),
                unit="%", evidence=Evidence.from_epochs(tst_epochs, "TST / TIB")),
        Measure(name="sleep_maintenance_pct", label="Sleep maintenance efficiency",
                value=100 * tst / spt_min, unit="%",
                evidence=Evidence.from_epochs(tst_epochs, "TST / SPT")),
        Measure(name="sleep_onset_latency_min", label="Sleep-onset latency", value=first * epoch_min,
                unit="min", evidence=Evidence.from_epochs(
                    [first], f"first sleep epoch{_at(start, first, epoch_sec)}")),
    ]
    rem_idx = np.flatnonzero(stages == "R")
    if rem_idx.size:
        out.append(Measure(name="rem_latency_min", label="REM latency (from sleep onset)",
                           value=(rem_idx[0] - first) * epoch_min, unit="min",
                           evidence=Evidence.from_epochs(
                               [first, int(rem_idx[0])],
                               f"sleep onset{_at(start, first, epoch_sec)} and first R epoch"
                               f"{_at(start, int(rem_idx[0]), epoch_sec)}")))
    else:
        out.append(Measure.missing("rem_latency_min", "REM latency (from sleep onset)", "min",
                                   "no REM sleep was scored"))
    wake_runs = [(a, b - 1) for a, b in true_runs(stages[spt] == "W")]
    out.append(Measure(name="awakenings", label="Awakenings", value=float(len(wake_runs)),
                       unit="count",
                       evidence=Evidence(epochs=[(a + first, b + first) for a, b in wake_runs],
                                         note="runs of wake within SPT")))
    to_wake = np.flatnonzero(is_sleep[:-1] & (stages[1:] == "W")) + 1
    out.append(Measure(name="fragmentation_index", label="Sleep fragmentation index",
                       value=to_wake.size / (tst / 60.0), unit="/h",
                       evidence=Evidence.from_epochs(to_wake, "sleep-to-wake transitions")))
    for stage in STAGES:
        idx = np.flatnonzero(stages == stage)
        if stage == "UNS" and idx.size == 0:
            continue
        key = stage.lower()
        out.append(Measure(name=f"{key}_min", label=f"{STAGE_NAMES[stage]} time",
                           value=idx.size * epoch_min, unit="min",
                           evidence=Evidence.from_epochs(idx, f"{stage} epochs")))
        if stage in SLEEP_STAGES:
            out.append(Measure(name=f"{key}_pct_tst", label=f"{STAGE_NAMES[stage]} (% of TST)",
                               value=100 * idx.size * epoch_min / tst, unit="%",
                               evidence=Evidence.from_epochs(idx, f"{stage} epochs / TST")))
    return out


def sleep_architecture(rec: Recording) -> list[Measure]:
    """Sleep-architecture measures of a recording's hypnogram.

    Raises
    ------
    MissingChannelError
        The recording has no scored hypnogram (e.g. a home sleep apnea test).
    """
    if not rec.has_stages:
        raise MissingChannelError(
            "Sleep architecture needs scored sleep stages; this recording has none. Give the "
            "hypnogram with annotations=... (Sleep-EDF hypnogram, NSRR/Profusion XML or CSV)."
        )
    return architecture_from_stages(rec.stages, rec.epoch_sec, start=rec.info.start_time)
