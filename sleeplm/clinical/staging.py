"""Automatic sleep staging of an unscored study, by a stager validated on real nights.

A study without a scored hypnogram still deserves its sleep architecture, its stage-dependent
indices and answers about its stages. :func:`auto_stage` stages it with YASA's
``SleepStaging`` (a LightGBM classifier on EEG, optionally EOG and chin EMG features, trained
and validated on thousands of real PSG nights: median accuracy 87.5 % and Cohen's kappa 0.82
against human scorers on held-out nights, Vallat & Walker, eLife 2021). The result is labelled
automatic everywhere it is used: it is never presented as a scored hypnogram, and SleepLM's own
zero-shot reading of the stages (the ``classify`` tool) is not used for any number.

When YASA cannot run (no EEG channel, EEG sampled below 100 Hz, fewer than 5 minutes of
signal), :class:`StagingUnavailable` says why; the study then stays unscored and the
stage-dependent numbers are reported as unavailable with that reason.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sleeplm.errors import SleepLMError
from sleeplm.recording import EPOCH_SEC, Recording

__all__ = ["AutoStaging", "StagingUnavailable", "auto_stage", "apply_auto_staging",
           "STAGER", "PUBLISHED_ACCURACY"]

#: The stager and its published real-data performance (held-out nights, human scorers).
STAGER = "YASA SleepStaging"
PUBLISHED_ACCURACY = ("median accuracy 87.5 % and Cohen's kappa 0.82 against human scorers on "
                      "held-out real nights (Vallat & Walker, eLife 2021)")
_EEG_ORDER = ("EEG_C4", "EEG_C3", "EEG_F", "EEG_O")
_MIN_SFREQ = 100.0
_MIN_SECONDS = 300.0
_YASA_TO_AASM = {"W": "W", "WAKE": "W", "N1": "N1", "N2": "N2", "N3": "N3", "R": "R",
                 "REM": "R"}


class StagingUnavailable(SleepLMError, ValueError):
    """Automatic staging cannot run on this recording (the message says why)."""


class AutoStaging(BaseModel):
    """Stages from the automatic stager, with what it used and how much to trust it.

    Attributes
    ----------
    stages : list of str
        One of W, N1, N2, N3, R per 30-s epoch from the start of the signals.
    confidence : list of float
        The stager's probability of the chosen stage, per epoch (0-1).
    stager, version : str
    channels : dict of str to str
        Which channel of the recording it used as EEG, EOG and EMG.
    published_accuracy : str
    """

    model_config = ConfigDict(extra="forbid")

    stages: list[str]
    confidence: list[float] = Field(default_factory=list)
    stager: str = STAGER
    version: str = ""
    channels: dict[str, str] = Field(default_factory=dict)
    published_accuracy: str = PUBLISHED_ACCURACY

    def source(self) -> str:
        """The hypnogram's source, as the reports and tools name it."""
        used = ", ".join(f"{k} {v}" for k, v in self.channels.items())
        return (f"automatic staging by {self.stager} {self.version} ({used}), not scored by a "
                f"person; {self.published_accuracy}")


def auto_stage(rec: Recording) -> AutoStaging:
    """Stage ``rec`` in 30-s epochs with YASA's SleepStaging.

    Uses the first of EEG_C4, EEG_C3, EEG_F, EEG_O that is present and usable, and EOG_L and
    EMG_CHIN when they are there at a usable rate (YASA's EEG+EOG+EMG model is its most
    accurate; EEG alone works).

    Raises
    ------
    StagingUnavailable
        No usable EEG, EEG below 100 Hz, or less than 5 minutes of signal.
    """
    import mne
    import yasa

    eeg = next((c for c in _EEG_ORDER if c in rec.signals and _usable(rec, c)), None)
    if eeg is None:
        have = ", ".join(rec.channels) or "none"
        raise StagingUnavailable(f"automatic staging needs an EEG channel (C4, C3, F or O); "
                                 f"this recording has {have}")
    sf = float(rec.signals[eeg].sfreq)
    if sf < _MIN_SFREQ:
        raise StagingUnavailable(f"automatic staging needs EEG sampled at {_MIN_SFREQ:.0f} Hz "
                                 f"or more; {eeg} is at {sf:g} Hz")
    if rec.signals[eeg].duration < _MIN_SECONDS:
        raise StagingUnavailable(f"automatic staging needs at least {_MIN_SECONDS / 60:.0f} "
                                 f"minutes of EEG; this recording has "
                                 f"{rec.signals[eeg].duration / 60:.1f}")
    used = {"EEG": eeg}
    names, kinds, data = ["EEG"], ["eeg"], [_at(rec, eeg, sf)]
    for role, chan, kind in (("EOG", "EOG_L", "eog"), ("EMG", "EMG_CHIN", "emg")):
        if chan in rec.signals and _usable(rec, chan) and rec.signals[chan].sfreq >= 50:
            used[role] = chan
            names.append(role)
            kinds.append(kind)
            data.append(_at(rec, chan, sf))
    n = min(len(d) for d in data)
    x = np.vstack([np.nan_to_num(d[:n]) for d in data]) * 1e-6  # µV -> V for MNE
    raw = mne.io.RawArray(x, mne.create_info(names, sf, kinds), verbose=False)
    meta = {}
    if rec.info.age is not None and rec.info.sex in ("M", "F"):
        meta = {"age": float(rec.info.age), "male": rec.info.sex == "M"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sls = yasa.SleepStaging(raw, eeg_name="EEG", eog_name=used.get("EOG") and "EOG",
                                emg_name=used.get("EMG") and "EMG", metadata=meta or None)
        hyp = sls.predict()
    labels = np.asarray(getattr(hyp, "hypno", hyp)).astype(str)
    stages = [_YASA_TO_AASM.get(s.upper(), "W") for s in labels]
    proba = getattr(hyp, "proba", None)  # a yasa.Hypnogram carries the stage probabilities
    conf = (np.asarray(proba, dtype=float).max(axis=1) if proba is not None
            and np.ndim(proba) == 2 else np.full(len(stages), np.nan))
    return AutoStaging(stages=stages, confidence=[round(float(c), 3) for c in conf],
                       version=str(getattr(yasa, "__version__", "")), channels=used)


def apply_auto_staging(rec: Recording, staging: AutoStaging) -> Recording:
    """Give ``rec`` the automatic stages (in place), labelled as automatic in its info and
    notes. A recording that has scored stages is left as it is."""
    if rec.stages is not None:
        return rec
    rec.stages = np.asarray(staging.stages, dtype="<U3")
    rec.stage_onset = 0.0
    rec.epoch_sec = EPOCH_SEC
    rec.info.annotation_source = staging.source()
    rec.notes.append(f"Sleep stages: {staging.source()}.")
    return rec


def _usable(rec: Recording, name: str) -> bool:
    d = np.asarray(rec.signals[name].data, dtype=float)
    return d.size > 0 and np.isfinite(d).mean() > 0.5 and float(np.nanstd(d)) > 0


def _at(rec: Recording, name: str, sf: float) -> np.ndarray:
    from scipy.signal import resample_poly

    sig = rec.signals[name]
    d = np.asarray(sig.data, dtype=float)
    if abs(sig.sfreq - sf) > 1e-6:
        frac = Fraction(sf / sig.sfreq).limit_denominator(1000)
        d = resample_poly(np.nan_to_num(d), frac.numerator, frac.denominator)
    return d
