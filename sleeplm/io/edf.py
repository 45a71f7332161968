"""Read EDF, EDF+C and BDF files channel by channel at each channel's native rate.

``mne.io.read_raw_edf`` resamples every channel of a mixed-rate file to the highest rate when it
loads data, so a 1-Hz SpO2 channel next to a 256-Hz EEG would come back with 256 samples per
second (and eight bytes each). Here the header is parsed directly (EDF spec, Kemp et al. 1992;
EDF+, Kemp & Olivan 2003; BDF is the same layout with 24-bit samples), checked against the file
size, and the data records are streamed in chunks of a few MiB into one float32 array per
channel at its own rate. Peak memory is the output plus one chunk. MNE remains the reference
reader in the tests (values must agree) and parses nothing here that it would parse better.
"""

from __future__ import annotations

import codecs
import datetime as _dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from sleeplm._logging import logger
from sleeplm.errors import (
    EmptyRecordingError,
    RecordingFileError,
    TruncatedFileError,
    UnsupportedFormatError,
)

__all__ = [
    "EdfSignalHeader",
    "EdfHeader",
    "read_edf_header",
    "read_edf_signals",
    "parse_tals",
    "calibration_problem",
    "decode_header_text",
]

#: Bytes read per chunk while streaming data records.
CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class EdfSignalHeader:
    """Header of one signal of an EDF/BDF file."""

    index: int
    label: str
    transducer: str
    unit: str
    physical_min: float
    physical_max: float
    digital_min: int
    digital_max: int
    prefilter: str
    samples_per_record: int

    @property
    def is_annotation(self) -> bool:
        return self.label.strip() in ("EDF Annotations", "BDF Annotations")

    @property
    def gain(self) -> float:
        return (self.physical_max - self.physical_min) / (self.digital_max - self.digital_min)

    @property
    def offset(self) -> float:
        return self.physical_min - self.digital_min * self.gain


@dataclass
class EdfHeader:
    """Parsed header of an EDF/EDF+/BDF file.

    Attributes
    ----------
    n_records : int
        Number of complete data records that can actually be read.
    record_sec : float
        Duration of one data record, seconds.
    """

    path: Path
    kind: str  # "EDF", "EDF+C", "EDF+D", "BDF", "BDF+C"
    patient: str
    recording: str
    start: _dt.datetime | None
    header_bytes: int
    n_records: int
    n_records_declared: int
    record_sec: float
    signals: list[EdfSignalHeader]
    bytes_per_sample: int
    notes: list[str] = field(default_factory=list)

    @property
    def record_bytes(self) -> int:
        return sum(s.samples_per_record for s in self.signals) * self.bytes_per_sample

    @property
    def duration(self) -> float:
        """Duration of the readable data, seconds."""
        return self.n_records * self.record_sec

    def sfreq(self, sig: EdfSignalHeader) -> float:
        """Sampling rate of a signal, Hz."""
        return sig.samples_per_record / self.record_sec


def decode_header_text(raw: bytes) -> str:
    """Text of an EDF header field: UTF-8 where the bytes are UTF-8, else Latin-1.

    EDF asks for ASCII, but exports write their labels in UTF-8 (Nox: ``1 Impédance``,
    ``RIP-Phase °``) or in a Latin-1 code page (older European systems). UTF-8 is tried first:
    Latin-1 text with accents is almost never valid UTF-8. A multi-byte character cut by the
    field's fixed width at its end is dropped rather than turning the field into Latin-1.
    """
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(raw, final=False).strip()
    except UnicodeDecodeError:
        return raw.decode("latin-1").strip()


def _field(raw: bytes, what: str, path: Path) -> str:
    try:
        return decode_header_text(raw)
    except Exception as exc:  # pragma: no cover - latin-1 decodes every byte
        raise RecordingFileError(f"{path.name}: header field {what} cannot be decoded") from exc


def _number(text: str, what: str, path: Path, *, integer: bool = False) -> float:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        raise RecordingFileError(
            f"{path.name}: header field '{what}' should be a number but is '{text}'. The file is "
            "not a valid EDF/BDF file or its header is corrupt; re-export it from the recording "
            "software."
        ) from None


def _parse_start(date: str, time: str, recording: str) -> _dt.datetime | None:
    try:
        day, month, year = (int(x) for x in date.split("."))
        hh, mm, ss = (int(x) for x in time.split("."))
    except ValueError:
        return None
    year += 1900 if year >= 85 else 2000  # EDF spec: 1985 is the clipping date
    m = re.search(r"Startdate (\d{2})-([A-Z]{3})-(\d{4})", recording)
    if m:  # EDF+ carries the four-digit year in the recording field
        year = int(m.group(3))
    try:
        return _dt.datetime(year, month, day, hh, mm, ss)
    except ValueError:
        return None


def read_edf_header(path: str | os.PathLike, *, allow_truncated: bool = False) -> EdfHeader:
    """Parse and validate the header of an EDF, EDF+ or BDF file.

    Parameters
    ----------
    path : path-like
        The signal file.
    allow_truncated : bool
        Accept a file with fewer data records than its header declares, keeping the complete
        ones (a note says how much is missing). By default such a file raises.

    Raises
    ------
    RecordingFileError
        Not an EDF/BDF file, or a header that contradicts itself.
    TruncatedFileError
        The file is shorter than its header says (and ``allow_truncated`` is False).
    EmptyRecordingError
        The file holds no data records.
    UnsupportedFormatError
        A discontinuous EDF+D/BDF+D file.
    """
    path = Path(path)
    if not path.exists():
        raise RecordingFileError(f"{path}: no such file. Check the path and try again.")
    if path.is_dir():
        raise RecordingFileError(f"{path} is a folder; give the path of an .edf or .bdf file.")
    size = path.stat().st_size
    if size == 0:
        raise EmptyRecordingError(f"{path.name} is empty (0 bytes); the upload or copy failed.")
    with path.open("rb") as f:
        main = f.read(256)
        if len(main) < 256:
            raise RecordingFileError(
                f"{path.name} is {size} bytes, shorter than the 256-byte EDF header: it is not an "
                "EDF/BDF file or it was cut off during transfer."
            )
        if main[:8] == b"0       ":
            bytes_per_sample, family = 2, "EDF"
        elif main[:1] == b"\xff" and main[1:8] == b"BIOSEMI":
            bytes_per_sample, family = 3, "BDF"
        else:
            raise RecordingFileError(
                f"{path.name} is not an EDF/EDF+/BDF file: its first bytes are {main[:8]!r}, not "
                "'0       ' (EDF) or '\\xffBIOSEMI' (BDF). Export the recording as EDF(+) from "
                "your PSG software."
            )
        patient = _field(main[8:88], "patient", path)
        recording = _field(main[88:168], "recording", path)
        start = _parse_start(_field(main[168:176], "startdate", path),
                             _field(main[176:184], "starttime", path), recording)
        header_bytes = int(_number(_field(main[184:192], "header bytes", path), "header bytes",
                                   path, integer=True))
        reserved = _field(main[192:236], "reserved", path)
        n_records_declared = int(_number(_field(main[236:244], "number of data records", path),
                                         "number of data records", path, integer=True))
        record_sec = _number(_field(main[244:252], "duration of a data record", path),
                             "duration of a data record", path)
        ns = int(_number(_field(main[252:256], "number of signals", path), "number of signals",
                         path, integer=True))
        if ns <= 0 or ns > 4096:
            raise RecordingFileError(f"{path.name}: header declares {ns} signals; expected 1-4096.")
        if header_bytes != 256 * (ns + 1):
            raise RecordingFileError(
                f"{path.name}: header says it is {header_bytes} bytes long, but {ns} signals need "
                f"{256 * (ns + 1)} bytes. The header is corrupt; re-export the file."
            )
        sig_raw = f.read(256 * ns)
        if len(sig_raw) < 256 * ns:
            raise RecordingFileError(
                f"{path.name}: the file ends inside its header ({size} bytes, header needs "
                f"{header_bytes}); it was cut off during transfer."
            )

    def column(offset: int, width: int) -> list[str]:
        start_at = offset * ns
        return [
            decode_header_text(sig_raw[start_at + i * width : start_at + (i + 1) * width])
            for i in range(ns)
        ]

    labels = column(0, 16)
    transducers = column(16, 80)
    units = column(96, 8)
    pmin = column(104, 8)
    pmax = column(112, 8)
    dmin = column(120, 8)
    dmax = column(128, 8)
    prefilters = column(136, 80)
    nsamp = column(216, 8)

    signals = []
    for i in range(ns):
        what = f"signal {i + 1} ('{labels[i]}')"
        n = int(_number(nsamp[i], f"samples per record of {what}", path, integer=True))
        if n <= 0:
            raise RecordingFileError(
                f"{path.name}: {what} declares {n} samples per data record; expected a positive "
                "number. The header is corrupt."
            )
        signals.append(
            EdfSignalHeader(
                index=i,
                label=labels[i],
                transducer=transducers[i],
                unit=units[i],
                physical_min=_number(pmin[i], f"physical minimum of {what}", path),
                physical_max=_number(pmax[i], f"physical maximum of {what}", path),
                digital_min=int(_number(dmin[i], f"digital minimum of {what}", path, integer=True)),
                digital_max=int(_number(dmax[i], f"digital maximum of {what}", path, integer=True)),
                prefilter=prefilters[i],
                samples_per_record=n,
            )
        )

    kind = family
    if reserved.startswith("EDF+D") or reserved.startswith("BDF+D"):
        raise UnsupportedFormatError(
            f"{path.name} is a discontinuous {reserved[:5]} file (recording with gaps); sleeplm "
            "reads continuous files only. Export the night as continuous EDF+C, or split it "
            "into continuous parts."
        )
    if reserved.startswith(("EDF+C", "BDF+C")):
        kind = reserved[:5]

    header = EdfHeader(
        path=path,
        kind=kind,
        patient=patient,
        recording=recording,
        start=start,
        header_bytes=header_bytes,
        n_records=max(n_records_declared, 0),
        n_records_declared=n_records_declared,
        record_sec=record_sec,
        signals=signals,
        bytes_per_sample=bytes_per_sample,
    )
    if record_sec <= 0 and any(not s.is_annotation for s in signals):
        raise RecordingFileError(
            f"{path.name}: data record duration is {record_sec:g} s; a file with signals needs a "
            "positive duration. The header is corrupt."
        )
    data_bytes = size - header_bytes
    available = data_bytes // header.record_bytes if header.record_bytes else 0
    if n_records_declared == -1:  # allowed while recording; the size tells
        header.n_records = available
        header.notes.append(f"header gave -1 data records; {available} found from the file size")
    elif available < n_records_declared:
        missing = (n_records_declared - available) * record_sec
        message = (
            f"{path.name} is truncated: its header declares {n_records_declared} data records "
            f"({n_records_declared * record_sec / 3600:.2f} h) but the file holds only "
            f"{available} complete ones ({available * record_sec / 3600:.2f} h; "
            f"{missing / 60:.1f} min missing)."
        )
        if not allow_truncated:
            raise TruncatedFileError(
                message + " Copy the file again, or read the complete part with "
                "allow_truncated=True (command line: --allow-truncated)."
            )
        logger.warning(message)
        header.notes.append(message + " Only the complete records were read.")
        header.n_records = available
    elif data_bytes > n_records_declared * header.record_bytes:
        extra = data_bytes - n_records_declared * header.record_bytes
        header.notes.append(f"ignored {extra} bytes after the last declared data record")
    if header.n_records == 0:
        raise EmptyRecordingError(
            f"{path.name} holds no data records (zero-length recording); nothing to analyse."
        )
    return header


def _decode_chunk(raw: np.ndarray, n_rec: int, header: EdfHeader) -> np.ndarray:
    """Digital samples of a chunk as a (n_rec, samples_per_record_total) integer array."""
    if header.bytes_per_sample == 2:
        return raw.view("<i2").reshape(n_rec, -1)
    b = raw.reshape(n_rec, -1, 3).astype(np.int32)
    values = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    return np.where(values >= 1 << 23, values - (1 << 24), values)


def read_edf_signals(
    header: EdfHeader,
    indices: Iterable[int],
    *,
    progress: bool = False,
) -> tuple[dict[int, np.ndarray], bytes]:
    """Stream the data records once and return the chosen signals in physical units.

    Parameters
    ----------
    header : EdfHeader
        From :func:`read_edf_header`.
    indices : iterable of int
        Signal indices to return (annotation signals are always collected as raw bytes).
    progress : bool
        Show a progress bar (tqdm) on the command line.

    Returns
    -------
    signals : dict of int to numpy.ndarray
        float32 samples in the file's physical unit, at each signal's native rate.
    tal_bytes : bytes
        The concatenated bytes of the EDF+ annotation signals (time-stamped annotation lists).
    """
    wanted = sorted(set(indices))
    offsets = np.cumsum([0] + [s.samples_per_record for s in header.signals])
    ann = [s.index for s in header.signals if s.is_annotation]
    out = {i: np.empty(header.n_records * header.signals[i].samples_per_record, np.float32)
           for i in wanted}
    tal_parts: list[bytes] = []
    records_per_chunk = max(1, CHUNK_BYTES // max(header.record_bytes, 1))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=header.n_records, unit="rec", desc=header.path.name, leave=False)
    with header.path.open("rb") as f:
        f.seek(header.header_bytes)
        done = 0
        while done < header.n_records:
            n_rec = min(records_per_chunk, header.n_records - done)
            raw = np.fromfile(f, dtype=np.uint8, count=n_rec * header.record_bytes)
            if raw.size < n_rec * header.record_bytes:  # file shrank while reading
                raise TruncatedFileError(f"{header.path.name} ended while reading data records.")
            digital = _decode_chunk(raw, n_rec, header)
            for i in wanted:
                sig = header.signals[i]
                n = sig.samples_per_record
                block = digital[:, offsets[i] : offsets[i] + n].reshape(-1)
                dst = out[i][done * n : (done + n_rec) * n]
                np.multiply(block, sig.gain, out=dst, casting="unsafe")
                dst += sig.offset
            for i in ann:
                if header.bytes_per_sample == 2:
                    block = raw.reshape(n_rec, -1)[:, offsets[i] * 2 : offsets[i + 1] * 2]
                else:
                    block = raw.reshape(n_rec, -1)[:, offsets[i] * 3 : offsets[i + 1] * 3]
                tal_parts.append(block.tobytes())
            done += n_rec
            if bar is not None:
                bar.update(n_rec)
    if bar is not None:
        bar.close()
    return out, b"".join(tal_parts)


_TAL = re.compile(rb"([+-]\d+(?:\.\d*)?)(?:\x15(\d+(?:\.\d*)?))?\x14(.*?)\x14\x00", re.S)


def parse_tals(tal_bytes: bytes) -> list[tuple[float, float, str]]:
    """Parse EDF+ time-stamped annotation lists into (onset s, duration s, text) triples.

    The per-record time-keeping annotations (empty text) are skipped.
    """
    events = []
    for onset, duration, texts in _TAL.findall(tal_bytes):
        for text in texts.split(b"\x14"):
            label = text.decode("utf-8", errors="replace").strip()
            if label:
                events.append((float(onset), float(duration) if duration else 0.0, label))
    return events


def calibration_problem(sig: EdfSignalHeader) -> str | None:
    """Why a signal's calibration is unusable, or None when it is fine."""
    if sig.digital_max <= sig.digital_min:
        return f"digital range {sig.digital_min}..{sig.digital_max} is empty"
    if sig.physical_max == sig.physical_min:
        return f"physical range {sig.physical_min:g}..{sig.physical_max:g} is empty"
    return None

