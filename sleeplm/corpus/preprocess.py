"""Model input: a Recording cut into 30-s epochs of a fixed channel list at one model rate.

:func:`epoch_tensor` turns a :class:`~sleeplm.recording.Recording` (channels at their native
rates and units, some perhaps missing) into a :class:`ModelInput`: a float16 tensor
``x[N, C, T]`` (N epochs, C channels of :attr:`ModelInputConfig.channels`, T = epoch_sec *
sfreq samples), a presence mask ``mask[C]``, the epochs' stages and onsets, and per epoch and
channel the fraction of samples that were invalid and replaced by 0.

Per channel family:

* **EEG, EOG, ECG, effort and flow** (``EEG_*``, ``EOG_*``, ``ECG``, ``AIRFLOW``,
  ``NASAL_PRESSURE``, ``THORAX``, ``ABDOMEN`` and any other channel): resampled with
  :func:`scipy.signal.resample_poly` (polyphase, anti-aliased), then a robust per-night
  normalisation ``(x - median) / (IQR / 1.349)`` (the IQR of a Gaussian is 1.349 sigma, so the
  result is in "robust standard deviations"), clipped to ``±clip`` (20). Median and IQR ignore
  invalid samples and are robust to the movement artefacts and electrode pops that would
  dominate a mean / standard deviation.
* **EMG** (``EMG_CHIN``, ``EMG_LEG``): muscle activity lives above ~10 Hz (surface EMG power is
  mostly 20-250 Hz), and a 64-Hz model rate keeps only 0-32 Hz, so resampling the raw EMG would
  throw away nearly all of it, and aliasing-free low-passing would leave mostly ECG artefact and
  movement. What staging and limb-movement scoring use is the *amplitude* of the EMG (atonia in
  REM, twitches, leg-movement bursts). So each EMG is high-passed at ``emg_band_hz`` (10 Hz,
  4th-order Butterworth, zero phase), rectified, and low-passed at ``emg_envelope_hz`` (10 Hz)
  at its native rate. That envelope fits a 64-Hz stream, is resampled like the others, and is
  normalised robustly (a per-night scale keeps REM atonia versus wake tone). A native rate too
  low to hold the > 10 Hz band (< 25 Hz, i.e. already an envelope) is only resampled.
* **SPO2**: ``(x - 90) / 10``; samples below 50 % (including the 0 that many oximeters write
  when the probe is off) or NaN are invalid: 0 in the output and counted in ``invalid``.
* **HR**: ``(x - 60) / 20``; NaN or non-positive values are invalid.
* **POSITION**: the integer code of the published SleepLM input contract (0 right, 1 left,
  2 supine, 3 prone, 4 upright, -1 unknown; :data:`SLEEPLM_POSITION_CODES`), held sample by
  sample (a code is not a waveform, so it is not filtered); unknown samples are -1 and counted as
  invalid.

Invalid samples (NaN, off-range oximetry) are bridged by linear interpolation before filtering
(so a gap does not ring through the anti-aliasing filter) and then written as 0 and counted in
``ModelInput.invalid``. A channel that is absent, unusable (all NaN, flat) or without any valid
sample is a zero row with ``mask`` False: missing is never silently "present".

Work is float32, one channel at a time; the output is float16 (an 8-h night with 16 channels at
64 Hz is ~59 MB).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy import signal as sps

from sleeplm.recording import POSITIONS, Recording, Signal

__all__ = ["ModelInputConfig", "ModelInput", "epoch_tensor", "describe", "DEFAULT_CHANNELS",
           "EMG_CHANNELS", "SLEEPLM_POSITION_CODES"]

DEFAULT_CHANNELS: tuple[str, ...] = (
    "EEG_C4", "EEG_C3", "EEG_F", "EEG_O", "EOG_L", "EOG_R", "EMG_CHIN", "EMG_LEG", "ECG",
    "AIRFLOW", "NASAL_PRESSURE", "THORAX", "ABDOMEN", "SPO2", "HR", "POSITION",
)
#: Position codes of the published SleepLM input contract; -1 is unknown.
SLEEPLM_POSITION_CODES: dict[str, int] = {"right": 0, "left": 1, "supine": 2, "prone": 3,
                                          "upright": 4}
_SLEEPLM_CODE_OF_INDEX = np.array([SLEEPLM_POSITION_CODES[p] for p in POSITIONS], dtype=np.int8)
#: Channels turned into their high-band amplitude envelope before resampling.
EMG_CHANNELS: frozenset[str] = frozenset({"EMG_CHIN", "EMG_LEG", "EMG_LEG_R"})
_IQR_TO_SIGMA = 1.349


class ModelInputConfig(BaseModel):
    """What the model sees. Travels with every checkpoint (``to_json`` / ``from_json``).

    Attributes
    ----------
    channels : tuple of str
        Canonical channel names, in tensor order.
    sfreq : float
        Model sampling rate, Hz.
    epoch_sec : float
        Epoch length, seconds (``sfreq * epoch_sec`` must be a whole number of samples).
    clip : float
        Normalised values are clipped to ``±clip``.
    emg_band_hz : float
        EMG high-pass corner, Hz: the band whose amplitude is kept.
    emg_envelope_hz : float
        Low-pass corner of the rectified EMG, Hz.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    channels: tuple[str, ...] = DEFAULT_CHANNELS
    sfreq: float = Field(default=64.0, gt=0)
    epoch_sec: float = Field(default=30.0, gt=0)
    clip: float = Field(default=20.0, gt=0)
    emg_band_hz: float = Field(default=10.0, gt=0)
    emg_envelope_hz: float = Field(default=10.0, gt=0)

    @field_validator("channels")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("channels must name at least one channel")
        if len(set(value)) != len(value):
            raise ValueError(f"channels must be unique; got {value}")
        return tuple(value)

    @property
    def samples_per_epoch(self) -> int:
        """T: samples of one epoch at the model rate."""
        t = self.sfreq * self.epoch_sec
        if abs(t - round(t)) > 1e-6:
            raise ValueError(f"sfreq * epoch_sec must be a whole number of samples, got {t}")
        return int(round(t))

    def to_json(self) -> str:
        """JSON text (sorted keys), e.g. to store next to a checkpoint."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelInputConfig":
        """Inverse of :meth:`to_json`."""
        return cls.model_validate(json.loads(text))


@dataclass
class ModelInput:
    """A night as the model sees it.

    Attributes
    ----------
    x : numpy.ndarray
        float16 ``[N, C, T]``.
    mask : numpy.ndarray
        bool ``[C]``: the channel is present and usable (False rows are all zero).
    stages : numpy.ndarray
        ``[N]`` stage labels of :data:`sleeplm.recording.STAGES` (``UNS`` without a hypnogram).
    onsets : numpy.ndarray
        ``[N]`` epoch onsets, seconds from the recording start.
    invalid : numpy.ndarray
        float32 ``[N, C]``: fraction of each epoch's samples that were invalid and set to 0.
    channels : tuple of str
        Channel names of axis 1.
    config : ModelInputConfig
    notes : list of str
        Why a channel is masked, and other things handled.
    """

    x: np.ndarray
    mask: np.ndarray
    stages: np.ndarray
    onsets: np.ndarray
    invalid: np.ndarray
    channels: tuple[str, ...]
    config: ModelInputConfig
    notes: list[str]

    @property
    def n_epochs(self) -> int:
        return int(self.x.shape[0])


def _ratio(native: float, target: float) -> tuple[int, int]:
    frac = Fraction(target / native).limit_denominator(1000)
    if frac.numerator == 0:
        raise ValueError(f"cannot resample {native} Hz to {target} Hz")
    return frac.numerator, frac.denominator


def _bridge(x: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """Replace invalid samples by linear interpolation of valid neighbours (in place)."""
    if invalid.any():
        idx = np.flatnonzero(~invalid)
        bad = np.flatnonzero(invalid)
        x[bad] = np.interp(bad, idx, x[idx]).astype(np.float32)
    return x


def _emg_envelope(x: np.ndarray, fs: float, cfg: ModelInputConfig) -> np.ndarray:
    nyq = fs / 2
    if nyq <= cfg.emg_band_hz * 1.25:  # cannot hold the high band: treat as an envelope already
        return x
    hp = sps.butter(4, cfg.emg_band_hz, "highpass", fs=fs, output="sos")
    y = np.abs(sps.sosfiltfilt(hp, x).astype(np.float32, copy=False))
    lp = sps.butter(4, min(cfg.emg_envelope_hz, nyq * 0.9), "lowpass", fs=fs, output="sos")
    return sps.sosfiltfilt(lp, y).astype(np.float32, copy=False)


def _resample(x: np.ndarray, fs: float, target: float) -> np.ndarray:
    if fs == target:
        return x
    up, down = _ratio(fs, target)
    return sps.resample_poly(x, up, down, padtype="edge").astype(np.float32, copy=False)


def _hold(x: np.ndarray, fs: float, target: float, n_out: int) -> np.ndarray:
    """Sample-and-hold (nearest earlier sample) onto the model grid: for codes and masks."""
    idx = np.floor(np.arange(n_out) * (fs / target) + 1e-9).astype(np.int64)
    np.clip(idx, 0, max(x.size - 1, 0), out=idx)
    return x[idx]


def _robust(y: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    values = y[valid]
    if values.size > 2_000_000:  # a regular subsample is plenty for quartiles
        values = values[:: values.size // 1_000_000]
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    scale = float(q3 - q1) / _IQR_TO_SIGMA
    if not np.isfinite(scale) or scale <= 0:  # mostly constant: fall back to the MAD / std
        scale = float(np.std(values))
    return float(med), scale


def _channel(sig: Signal, name: str, cfg: ModelInputConfig, n_out: int
             ) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """One channel on the model grid: (values float32 [n_out], invalid bool [n_out], problem)."""
    problem = sig.quality_problem()
    if problem is not None:
        return None, None, problem
    fs, target = float(sig.sfreq), float(cfg.sfreq)
    x = np.array(sig.data, dtype=np.float32, copy=True)
    if name == "SPO2":
        with np.errstate(invalid="ignore"):
            invalid = ~np.isfinite(x) | (x < 50)
    elif name == "HR":
        with np.errstate(invalid="ignore"):
            invalid = ~np.isfinite(x) | (x <= 0)
    else:
        invalid = ~np.isfinite(x)
    if invalid.all():
        return None, None, "it has no valid sample"

    if name == "POSITION":
        x[invalid] = 0.0
        codes = _SLEEPLM_CODE_OF_INDEX[np.clip(x.astype(int), 0, len(POSITIONS) - 1)]
        y = _hold(codes.astype(np.float32), fs, target, n_out)
        inv = _hold(invalid, fs, target, n_out)
        y[inv] = -1.0
        return y.astype(np.float32, copy=False), inv, None

    _bridge(x, invalid)
    if name in EMG_CHANNELS:
        x = _emg_envelope(x, fs, cfg)
    y = _resample(x, fs, target)
    del x
    y = y[:n_out] if y.size >= n_out else np.concatenate([y, np.zeros(n_out - y.size, np.float32)])
    inv = _hold(invalid, fs, target, n_out) if invalid.any() else np.zeros(n_out, bool)
    n_native = int(round(sig.data.size * target / fs))
    if n_native < n_out:  # past the end of the signal: padding, invalid
        inv[n_native:] = True
    if name == "SPO2":
        y -= 90.0
        y /= 10.0
    elif name == "HR":
        y -= 60.0
        y /= 20.0
    else:
        med, scale = _robust(y, ~inv)
        if scale <= 0 or not np.isfinite(scale):
            return None, None, "it has no variation after resampling"
        y -= med
        y /= scale
    np.clip(y, -cfg.clip, cfg.clip, out=y)
    y[inv] = 0.0
    return y, inv, None


def epoch_tensor(rec: Recording, config: ModelInputConfig | None = None) -> ModelInput:
    """Cut a recording into model-input epochs.

    Parameters
    ----------
    rec : Recording
        Channels at their native rates; a hypnogram when scored (its epochs are used).
    config : ModelInputConfig, optional
        Channels, model rate and epoch length (default :class:`ModelInputConfig`).

    Returns
    -------
    ModelInput
        With one epoch per hypnogram epoch (``rec.stage_onset + i * epoch_sec``); without a
        hypnogram, one per whole ``epoch_sec`` of the signals, staged ``UNS``. Signal past the
        end of a channel is 0 and counted invalid.

    Raises
    ------
    ValueError
        The hypnogram's epoch length differs from ``config.epoch_sec``.
    """
    cfg = config or ModelInputConfig()
    T = cfg.samples_per_epoch
    notes: list[str] = []
    if rec.stages is not None and rec.n_epochs > 0:
        if abs(rec.epoch_sec - cfg.epoch_sec) > 1e-9:
            raise ValueError(f"the hypnogram has {rec.epoch_sec:g}-s epochs but the model input "
                             f"uses {cfg.epoch_sec:g}-s epochs")
        n = rec.n_epochs
        stages = np.asarray(rec.stages, dtype="<U3")
        start = float(rec.stage_onset)
    else:
        durations = [s.duration for s in rec.signals.values()]
        n = int(np.floor(max(durations, default=0.0) / cfg.epoch_sec + 1e-9))
        stages = np.full(n, "UNS", dtype="<U3")
        start = 0.0
        notes.append("no hypnogram: epochs cut from the start of the signals, staged UNS")
    onsets = start + np.arange(n) * cfg.epoch_sec
    C = len(cfg.channels)
    x = np.zeros((n, C, T), dtype=np.float16)
    mask = np.zeros(C, dtype=bool)
    invalid = np.ones((n, C), dtype=np.float32)
    offset = int(round(start * cfg.sfreq))
    n_grid = offset + n * T
    for c, name in enumerate(cfg.channels):
        sig = rec.signals.get(name)
        if sig is None:
            notes.append(f"{name}: absent")
            continue
        if n == 0:
            continue
        y, inv, problem = _channel(sig, name, cfg, max(n_grid, 0))
        if y is None:
            notes.append(f"{name}: masked, {problem}")
            continue
        if offset < 0:  # epochs before the signals start (unusual): pad the front
            y = np.concatenate([np.zeros(-offset, np.float32), y])
            inv = np.concatenate([np.ones(-offset, bool), inv])
            lo = 0
        else:
            lo = offset
        seg = y[lo:lo + n * T].reshape(n, T)
        x[:, c, :] = seg  # float32 -> float16 cast on assignment
        invalid[:, c] = inv[lo:lo + n * T].reshape(n, T).mean(axis=1)
        mask[c] = True
    invalid[:, ~mask] = 0.0  # masked rows are "absent", not "invalid"
    return ModelInput(x=x, mask=mask, stages=stages, onsets=onsets.astype(np.float64),
                      invalid=invalid, channels=tuple(cfg.channels), config=cfg, notes=notes)


def describe(mi: ModelInput) -> dict[str, Any]:
    """Small JSON-able summary of a ModelInput (shapes, present channels)."""
    return {"epochs": mi.n_epochs, "shape": list(mi.x.shape),
            "present": [c for c, m in zip(mi.channels, mi.mask) if m],
            "absent": [c for c, m in zip(mi.channels, mi.mask) if not m]}
