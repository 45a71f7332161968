"""Training-time variation of the model input: modalities dropped, and real-recording artefacts.

Two things real studies do to SleepLM's input that simulated full-montage nights never do:

* **They lack modalities.** A headband has one EEG derivation, a Holter has only heart rate,
  an oximeter only SpO2, a home apnea test no EEG at all. :func:`drop_modalities` keeps one of
  :data:`MODALITY_SUBSETS` of a sample's present channels (mask False and zeros for the others),
  so the encoder learns to work from any subset through the presence mask it already has, and
  :func:`texts_for` cuts every training text of that sample to what the kept channels can
  support (:func:`sleeplm.captions.modalities.withdraw_absent`): an epoch shown without SpO2 is
  never paired with "SpO2 down to 88 %", and one without EEG or EOG never with a stage.
* **Their brain signals vary** in ways that say nothing about sleep: filters (a 50-Hz montage
  keeps nothing above 25 Hz; a 0.3-Hz high-pass), a steeper 1/f background, sweat drifts,
  movement bursts, electrode pops, per-channel gain, and a frontal derivation where a central
  one is expected. :func:`augment_epoch` applies a random draw of these to the EEG and EOG rows
  of one model-input epoch (64 Hz, robust-SD units after the per-night normalisation of
  :mod:`sleeplm.corpus.preprocess`, which already makes a global gain or a DC offset
  invisible). The transforms of :mod:`sleeplm.simulate.augment` act on whole recordings at
  their native rates and are what ``benchmarks/invariance.py`` measures with; these are their
  counterparts on the model input, cheap enough for every training sample.

Both are seeded per sample by the caller (:class:`sleeplm.corpus.shards.EpochShardDataset`), so
a training run stays reproducible.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sleeplm.captions.modalities import withdraw_absent

__all__ = ["MODALITY_SUBSETS", "BRAIN_ROWS", "choose_subset", "drop_modalities", "texts_for",
           "augment_epoch", "AUGMENTATIONS"]

_EEG = ("EEG_C4", "EEG_C3", "EEG_F", "EEG_O")
_EOG = ("EOG_L", "EOG_R")
_CARDIORESPIRATORY = ("ECG", "AIRFLOW", "NASAL_PRESSURE", "THORAX", "ABDOMEN", "SPO2", "HR",
                      "POSITION")
#: Model-input channels :func:`augment_epoch` acts on.
BRAIN_ROWS: tuple[str, ...] = _EEG + _EOG

#: The montages training shows the encoder besides the full one: name -> the channels kept
#: (of those the sample has). "one EEG derivation" keeps one EEG channel, drawn per sample.
MODALITY_SUBSETS: dict[str, tuple[str, ...]] = {
    "EEG only": _EEG,
    "EOG only": _EOG,
    "EEG and EOG": _EEG + _EOG,
    "one EEG derivation": _EEG,
    "EEG, EOG and chin EMG": _EEG + _EOG + ("EMG_CHIN",),
    "cardiorespiratory only": _CARDIORESPIRATORY,
    "HR only": ("HR",),
    "SpO2 only": ("SPO2",),
}


def choose_subset(channels: Sequence[str], present: np.ndarray, rng: np.random.Generator,
                  p: float) -> tuple[str, np.ndarray] | None:
    """With probability ``p``, one of :data:`MODALITY_SUBSETS` (uniformly) and the mask of the
    channels it keeps.

    Parameters
    ----------
    channels : sequence of str
        Model-input channel names, in row order.
    present : ndarray of bool, shape (C,)
        The sample's presence mask.
    rng : numpy.random.Generator
    p : float
        Probability of dropping modalities at all.

    Returns
    -------
    (name, keep) or None
        None when nothing is dropped: not drawn, or the drawn subset keeps none of the
        sample's channels (an SpO2-only draw on a night without SpO2), or all of them.
    """
    if p <= 0 or rng.random() >= p:
        return None
    name = list(MODALITY_SUBSETS)[int(rng.integers(len(MODALITY_SUBSETS)))]
    wanted = set(MODALITY_SUBSETS[name])
    if name == "one EEG derivation":
        have = [c for c, m in zip(channels, present) if m and c in wanted]
        wanted = {have[int(rng.integers(len(have)))]} if have else set()
    keep = np.array([bool(m) and c in wanted for c, m in zip(channels, present)], dtype=bool)
    if not keep.any() or keep.sum() == np.asarray(present, bool).sum():
        return None
    return name, keep


def drop_modalities(x: np.ndarray, mask: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """``x [..., C, T]`` and ``mask [..., C]`` with every channel outside ``keep [C]`` zeroed
    and marked absent (in place on copies; the inputs are not changed)."""
    x = np.array(x, copy=True)
    mask = np.array(mask, copy=True)
    x[..., ~keep, :] = 0.0
    mask[..., ~keep] = False
    return x, mask


def texts_for(texts: Sequence[str], channels: Sequence[str], keep: np.ndarray) -> list[str]:
    """Each text without the parts that describe a modality none of whose channels is kept
    ("" when nothing of it is left)."""
    kept = [c for c, k in zip(channels, keep) if k]
    return [withdraw_absent(t, kept)[0] if t else t for t in texts]


# ------------------------------------------------------------------------------ artefacts
def _fft_filter(row: np.ndarray, sfreq: float, low: float | None, high: float | None
                ) -> np.ndarray:
    spec = np.fft.rfft(row)
    f = np.fft.rfftfreq(row.size, 1.0 / sfreq)
    if high is not None:
        spec[f > high] *= np.exp(-((f[f > high] - high) / 1.5) ** 2)  # smooth roll-off
    if low is not None:
        spec[f < low] = 0.0
    return np.fft.irfft(spec, n=row.size).astype(np.float32)


def _pink(n: int, rng: np.random.Generator, sfreq: float) -> np.ndarray:
    spec = rng.normal(size=n // 2 + 1) + 1j * rng.normal(size=n // 2 + 1)
    f = np.fft.rfftfreq(n, 1.0 / sfreq)
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0.0
    y = np.fft.irfft(spec, n=n)
    return (y / (y.std() + 1e-12)).astype(np.float32)


#: Name -> probability per sample. Amplitudes are in robust SD units of the normalised input.
AUGMENTATIONS: dict[str, float] = {
    "low-pass 15-25 Hz (a 50-Hz montage, a 35-Hz filter)": 0.2,
    "high-pass 0.3 Hz": 0.15,
    "1/f noise 0.1-0.5 SD": 0.25,
    "sweat drift 0.05-0.5 Hz": 0.15,
    "movement burst 1-5 s": 0.1,
    "electrode pop": 0.1,
    "channel gain 0.7-1.4": 0.25,
    "frontal derivation as central": 0.1,
}


def augment_epoch(x: np.ndarray, mask: np.ndarray, channels: Sequence[str],
                  rng: np.random.Generator, sfreq: float, strength: float = 1.0,
                  clip: float = 20.0) -> tuple[np.ndarray, list[str]]:
    """A random draw of :data:`AUGMENTATIONS` applied to the present EEG/EOG rows of one
    model-input epoch.

    Parameters
    ----------
    x : ndarray, shape (C, T)
        The epoch (robust-SD units).
    mask : ndarray of bool, shape (C,)
    channels : sequence of str
        Row names.
    rng : numpy.random.Generator
    sfreq : float
        Model rate, Hz.
    strength : float
        Multiplies every probability (0 = nothing; 1 = :data:`AUGMENTATIONS` as listed).
    clip : float
        The input's clip level (:mod:`sleeplm.corpus.preprocess`).

    Returns
    -------
    (x, applied)
        A new array and the names of the augmentations applied.
    """
    rows = [i for i, c in enumerate(channels) if c in BRAIN_ROWS and mask[i]]
    if strength <= 0 or not rows:
        return x, []
    x = np.array(x, dtype=np.float32, copy=True)
    n = x.shape[-1]
    t = np.arange(n, dtype=np.float32) / sfreq
    applied: list[str] = []
    names = list(AUGMENTATIONS)
    draw = {k: rng.random() < min(1.0, AUGMENTATIONS[k] * strength) for k in names}
    if draw[names[7]]:
        idx = {c: i for i, c in enumerate(channels)}
        f = idx.get("EEG_F")
        central = [idx[c] for c in ("EEG_C4", "EEG_C3") if c in idx and mask[idx[c]]]
        if f is not None and mask[f] and central:
            for i in central:
                x[i] = x[f]
            applied.append(names[7])
    if draw[names[0]]:
        high = float(rng.uniform(15.0, 25.0))
        for i in rows:
            x[i] = _fft_filter(x[i], sfreq, None, high)
        applied.append(names[0])
    if draw[names[1]]:
        for i in rows:
            x[i] = _fft_filter(x[i], sfreq, 0.3, None)
        applied.append(names[1])
    if draw[names[6]]:
        for i in rows:
            x[i] *= float(rng.uniform(0.7, 1.4))
        applied.append(names[6])
    if draw[names[2]]:
        for i in rows:
            x[i] += float(rng.uniform(0.1, 0.5)) * _pink(n, rng, sfreq)
        applied.append(names[2])
    if draw[names[3]]:
        f0 = float(rng.uniform(0.05, 0.5))
        amp = float(rng.uniform(0.5, 2.5))
        phase = float(rng.uniform(0, 2 * np.pi))
        for i in rows:
            x[i] += amp * float(rng.uniform(0.6, 1.0)) * np.sin(2 * np.pi * f0 * t + phase)
        applied.append(names[3])
    if draw[names[4]]:
        dur = int(rng.uniform(1.0, 5.0) * sfreq)
        start = int(rng.integers(0, max(1, n - dur)))
        env = np.hanning(dur).astype(np.float32)
        amp = float(rng.uniform(2.0, 8.0))
        for i in rows:
            x[i, start:start + dur] += amp * env * rng.normal(size=dur).astype(np.float32)
        applied.append(names[4])
    if draw[names[5]]:
        i = rows[int(rng.integers(len(rows)))]
        start = int(rng.integers(0, n))
        amp = float(rng.uniform(3.0, 10.0)) * (1 if rng.random() < 0.5 else -1)
        decay = np.exp(-np.arange(n - start) / (0.5 * sfreq / 3)).astype(np.float32)
        x[i, start:] += amp * decay
        applied.append(names[5])
    np.clip(x, -clip, clip, out=x)
    return x, applied
