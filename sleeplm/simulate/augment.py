"""What real recordings vary in, as transforms of a recording's EEG and EOG.

Real PSG differs from one lab, montage and night to the next in ways that say nothing about
sleep: amplitude scale and DC offset, the derivation (Fpz-Cz, Pz-Oz, C3-M2, C4-M1, ...), the
sampling rate (50-512 Hz), the recorder's filters (0.3-35 Hz, a notch, or broadband), mains
interference, the slope of the 1/f background, sweat (slow drifts), movement bursts and
electrode pops. Each transform here changes one of those on a copy of a recording, so that a
model can be measured for invariance (``benchmarks/invariance.py``: staging and captions of the
same held-out nights before and after each one) and trained to be robust to them.

Every transform takes ``(recording, rng)`` and returns a new :class:`Recording`; stages, events
and the other channels are kept. Amplitudes are in µV, as the channels are.
"""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Callable

import numpy as np
from scipy import signal as sps

from sleeplm.recording import Recording, Signal

__all__ = ["BRAIN_CHANNELS", "TRANSFORMS", "apply_transform", "scale_amplitude", "dc_offset",
           "resample_brain", "bandpass", "notch", "line_noise", "pink_noise", "sweat",
           "movement_bursts", "electrode_pops", "single_derivation", "frontal_as_central"]

#: Channels the transforms act on.
BRAIN_CHANNELS: tuple[str, ...] = ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O", "EOG_L", "EOG_R")

Transform = Callable[[Recording, np.random.Generator], Recording]


def _copy(rec: Recording) -> Recording:
    out = copy.copy(rec)
    out.signals = dict(rec.signals)
    out.notes = list(rec.notes)
    return out


def _map(rec: Recording, fn: Callable[[Signal], Signal], note: str) -> Recording:
    out = _copy(rec)
    for name in BRAIN_CHANNELS:
        if name in out.signals:
            out.signals[name] = fn(out.signals[name])
    out.notes.append(f"transformed: {note}")
    return out


def _with(sig: Signal, data: np.ndarray, sfreq: float | None = None) -> Signal:
    return Signal(sig.name, np.asarray(data, np.float32), sfreq or sig.sfreq, sig.unit, sig.label)


def scale_amplitude(rec: Recording, rng: np.random.Generator, factor: float = 2.0) -> Recording:
    """Multiply EEG/EOG by ``factor`` (an amplifier's gain, a subject's skull)."""
    return _map(rec, lambda s: _with(s, s.data * factor), f"amplitude x{factor:g}")


def dc_offset(rec: Recording, rng: np.random.Generator, offset_uv: float = 250.0) -> Recording:
    """Add a constant ``offset_uv`` (an uncorrected DC-coupled amplifier)."""
    return _map(rec, lambda s: _with(s, s.data + offset_uv), f"DC offset {offset_uv:g} µV")


def resample_brain(rec: Recording, rng: np.random.Generator, rate: float = 50.0) -> Recording:
    """Resample EEG/EOG to ``rate`` Hz with an anti-alias filter (a 50-Hz or 512-Hz montage)."""
    def go(s: Signal) -> Signal:
        frac = Fraction(rate / s.sfreq).limit_denominator(1000)
        x = np.nan_to_num(np.asarray(s.data, float))
        return _with(s, sps.resample_poly(x, frac.numerator, frac.denominator), rate)
    return _map(rec, go, f"resampled to {rate:g} Hz")


def _filter(sig: Signal, sos: np.ndarray) -> Signal:
    return _with(sig, sps.sosfiltfilt(sos, np.nan_to_num(np.asarray(sig.data, float))))


def bandpass(rec: Recording, rng: np.random.Generator, low: float = 0.3, high: float = 35.0
             ) -> Recording:
    """Band-pass EEG/EOG to ``low``-``high`` Hz (a recorder's display filter burned in)."""
    def go(s: Signal) -> Signal:
        hi = min(high, 0.45 * s.sfreq)
        return _filter(s, sps.butter(2, [low, hi], btype="bandpass", fs=s.sfreq, output="sos"))
    return _map(rec, go, f"band-pass {low:g}-{high:g} Hz")


def notch(rec: Recording, rng: np.random.Generator, freq: float = 50.0) -> Recording:
    """A mains notch at ``freq`` Hz (Q 30), where the rate allows it."""
    def go(s: Signal) -> Signal:
        if freq >= 0.5 * s.sfreq:
            return s
        b, a = sps.iirnotch(freq, 30.0, fs=s.sfreq)
        return _with(s, sps.filtfilt(b, a, np.nan_to_num(np.asarray(s.data, float))))
    return _map(rec, go, f"notch {freq:g} Hz")


def line_noise(rec: Recording, rng: np.random.Generator, freq: float = 50.0,
               amplitude_uv: float = 20.0) -> Recording:
    """Add mains interference of ``amplitude_uv`` at ``freq`` Hz (a poor ground)."""
    def go(s: Signal) -> Signal:
        t = np.arange(s.data.size) / s.sfreq
        return _with(s, s.data + amplitude_uv * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3)))
    return _map(rec, go, f"{freq:g}-Hz line noise {amplitude_uv:g} µV")


def pink_noise(rec: Recording, rng: np.random.Generator, rms_uv: float = 10.0) -> Recording:
    """Add 1/f noise of ``rms_uv`` RMS: a steeper background slope than the subject's own."""
    def go(s: Signal) -> Signal:
        n = s.data.size
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / s.sfreq)
        spec[1:] /= np.sqrt(f[1:])
        spec[0] = 0
        x = np.fft.irfft(spec, n)
        return _with(s, s.data + rms_uv * x / (np.std(x) + 1e-12))
    return _map(rec, go, f"1/f noise {rms_uv:g} µV RMS")


def sweat(rec: Recording, rng: np.random.Generator, amplitude_uv: float = 60.0) -> Recording:
    """Add a slow 0.05-0.5 Hz drift of ``amplitude_uv`` (sweat artefact)."""
    def go(s: Signal) -> Signal:
        n = s.data.size
        x = rng.standard_normal(n)
        sos = sps.butter(2, [0.05, 0.5], btype="bandpass", fs=s.sfreq, output="sos")
        d = sps.sosfiltfilt(sos, x)
        return _with(s, s.data + amplitude_uv * d / (np.abs(d).max() + 1e-12))
    return _map(rec, go, f"sweat drift {amplitude_uv:g} µV")


def movement_bursts(rec: Recording, rng: np.random.Generator, per_hour: float = 20.0,
                    amplitude_uv: float = 150.0) -> Recording:
    """Add broadband bursts of 1-5 s, ``per_hour`` times an hour (body movements)."""
    dur = rec.duration
    starts = rng.uniform(0, max(dur - 5, 1), int(per_hour * dur / 3600))
    lengths = rng.uniform(1, 5, starts.size)

    def go(s: Signal) -> Signal:
        x = np.array(s.data, dtype=np.float32)
        for a, L in zip(starts, lengths):
            i, j = int(a * s.sfreq), int((a + L) * s.sfreq)
            x[i:j] += amplitude_uv * rng.standard_normal(max(j - i, 0)).astype(np.float32)
        return _with(s, x)
    return _map(rec, go, f"{per_hour:g} movement bursts/h of {amplitude_uv:g} µV")


def electrode_pops(rec: Recording, rng: np.random.Generator, per_hour: float = 10.0,
                   amplitude_uv: float = 300.0) -> Recording:
    """Add electrode pops: a step of ``amplitude_uv`` decaying over ~0.5 s, ``per_hour``."""
    def go(s: Signal) -> Signal:
        x = np.array(s.data, dtype=np.float32)
        n = x.size
        for a in rng.uniform(0, n / s.sfreq, int(per_hour * rec.duration / 3600)):
            i = int(a * s.sfreq)
            k = np.arange(n - i) / s.sfreq
            x[i:] += (rng.choice([-1, 1]) * amplitude_uv * np.exp(-k / 0.5)).astype(np.float32)
        return _with(s, x)
    return _map(rec, go, f"{per_hour:g} electrode pops/h of {amplitude_uv:g} µV")


def single_derivation(rec: Recording, rng: np.random.Generator, keep: str = "EEG_C4"
                      ) -> Recording:
    """Keep one EEG derivation and drop the others (a one-channel EEG montage)."""
    out = _copy(rec)
    for name in ("EEG_C3", "EEG_C4", "EEG_F", "EEG_O"):
        if name != keep:
            out.signals.pop(name, None)
    out.notes.append(f"transformed: EEG {keep} only")
    return out


def frontal_as_central(rec: Recording, rng: np.random.Generator) -> Recording:
    """The frontal derivation (Fpz-Cz-like) offered where central ones are expected, as a
    Sleep-EDF montage gives them; the central channels are dropped."""
    out = _copy(rec)
    if "EEG_F" not in out.signals:
        return out
    f = out.signals["EEG_F"]
    out.signals.pop("EEG_C3", None)
    out.signals["EEG_C4"] = Signal("EEG_C4", f.data, f.sfreq, f.unit, f.label)
    out.signals.pop("EEG_F")
    out.notes.append("transformed: frontal derivation as the only (central) EEG")
    return out


#: The transforms of the invariance table, by name.
TRANSFORMS: dict[str, Transform] = {
    "amplitude x0.5": lambda r, g: scale_amplitude(r, g, 0.5),
    "amplitude x2": lambda r, g: scale_amplitude(r, g, 2.0),
    "DC offset 250 uV": lambda r, g: dc_offset(r, g, 250.0),
    "50 Hz sampling": lambda r, g: resample_brain(r, g, 50.0),
    "512 Hz sampling": lambda r, g: resample_brain(r, g, 512.0),
    "band-pass 0.3-35 Hz": lambda r, g: bandpass(r, g, 0.3, 35.0),
    "notch 50 Hz": lambda r, g: notch(r, g, 50.0),
    "line noise 50 Hz 20 uV": lambda r, g: line_noise(r, g, 50.0, 20.0),
    "1/f noise 10 uV": lambda r, g: pink_noise(r, g, 10.0),
    "sweat 60 uV": lambda r, g: sweat(r, g, 60.0),
    "movement bursts 20/h": lambda r, g: movement_bursts(r, g, 20.0, 150.0),
    "electrode pops 10/h": lambda r, g: electrode_pops(r, g, 10.0, 300.0),
    "one derivation (C4)": lambda r, g: single_derivation(r, g, "EEG_C4"),
    "frontal as central": frontal_as_central,
}


def apply_transform(rec: Recording, name: str, seed: int = 0) -> Recording:
    """Apply the transform ``name`` of :data:`TRANSFORMS` with a seeded generator."""
    if name not in TRANSFORMS:
        raise KeyError(f"unknown transform {name!r}; choose from {list(TRANSFORMS)}")
    return TRANSFORMS[name](rec, np.random.default_rng(seed))
