"""Draft reports for every patient of a library, resumably, with a summary table.

:func:`run_batch` takes a library folder (studies plus an optional ``manifest.csv``) or a
manifest CSV, and for each patient: opens it through :class:`~sleeplm.library.patients.PatientLibrary`
(processed once, then cached), builds a :class:`~tools.ToolContext`, drafts the report
(:func:`assistant.report.draft_report`) and writes it in every format
(:func:`assistant.render.write_report_files`) into ``<out_dir>/<patient>/``. The output folder
then holds::

    <out_dir>/
        summary.csv, summary.json      one row per patient (written atomically at the end)
        <patient>/
            report.md|html|pdf|json    as write_report_files names them, plus its figures
            status.json                written atomically, last: the patient is finished

Resumable and idempotent: a patient is skipped when its ``status.json`` says ``ok``, its input
key (content hashes of the study files, the SleepLM checkpoint, the model input contract), the
model version and the narrative writer are unchanged, and every output file asked for is still
there with the size and SHA-256 recorded. A crash loses only the patients in flight (no
``status.json`` yet); a patient that fails becomes an error row (error class and message) and
the others carry on; patients in error are tried again by the next run.

Concurrency: ``workers=1`` runs in this process; ``workers>1`` runs a spawn-context
:class:`~concurrent.futures.ProcessPoolExecutor` with at most ``workers`` patients in flight,
each worker opening the library and loading SleepLM once; a worker that dies only fails the
patients it held (each is tried once more in a fresh pool). ``backend="ray"`` runs the same
per-patient function as Ray tasks on this machine or on a cluster (``ray_address``; ``ray`` is
optional and imported only then): each task reads its study from the shared library path,
each worker loads SleepLM once, and a patient whose node dies is run again on a live node
(see docs/RAY.md).

Every report says when its night is SIMULATED, and that it is a draft for review by a sleep
physician, not the output of a medical device.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import hashlib
import io
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sleeplm._logging import logger
from sleeplm.errors import SleepLMError
from sleeplm.library.patients import MANIFEST_NAME, PatientLibrary, validate_patient_id

if TYPE_CHECKING:
    from assistant.config import AssistantConfig
    from tools import ToolContext

__all__ = [
    "FORMATS", "INDEX_KEYS", "NOTICE", "STAGES", "STATUS_NAME", "BatchError", "BatchSummary",
    "PatientRow", "PatientStatus", "PatientTimeoutError", "WorkerDiedError", "open_library",
    "report_patient", "run_batch", "writer_for",
]

#: Report formats write_report_files knows.
FORMATS = ("md", "html", "pdf", "json")
#: Key indices of the summary table, in column order (the names of ``Report.key_indices``).
INDEX_KEYS = ("tst_min", "se_pct", "ahi", "odi", "t90_pct", "nadir_spo2", "plmi",
              "arousal_index")
#: Per-patient stages timed (seconds) in each row.
STAGES = ("processing", "tools", "drafting", "rendering")
STATUS_NAME = "status.json"
SUMMARY_CSV, SUMMARY_JSON = "summary.csv", "summary.json"
#: Version of status.json; a change redoes every patient.
STATUS_FORMAT = 1
NOTICE = ("Draft reports for review by a sleep physician; not a medical device and not a "
          "diagnosis.")
#: A worker that overruns the per-patient timeout by this factor (plus 30 s) is stopped.
_HARD_FACTOR = 2.0
_MAX_ATTEMPTS = 2  # a patient whose worker died is tried once more in a fresh pool


# ------------------------------------------------------------------------------------ errors


class BatchError(SleepLMError, ValueError):
    """A batch that cannot start: bad source, output folder or options."""


class PatientTimeoutError(SleepLMError):
    """A patient took longer than the per-patient timeout (``timeout_s``)."""


class WorkerDiedError(SleepLMError):
    """The worker process running a patient died (out of memory, a crash in native code)."""


# ------------------------------------------------------------------------------------ models


class PatientRow(BaseModel):
    """One row of the summary table.

    Attributes
    ----------
    patient : str
        The study id (or, for a manifest row that names no valid study, what the row said).
    status : {"ok", "error", "skipped"}
        ``skipped``: finished by an earlier run and unchanged (its values are that run's).
    simulated : bool or None
        The night is SIMULATED (None: unknown).
    tst_min, se_pct, ahi, odi, t90_pct, nadir_spo2, plmi, arousal_index : float or None
        Key indices of the report (min, %, /h, /h, %, %, /h, /h); None when unavailable.
    severity : str or None
        OSA severity from the AHI rule.
    flags : list of str
        The report's flags.
    error_type, error : str
        Error class and message of a failed patient ("" otherwise).
    seconds : float
        Wall time of the patient, s.
    processing_s, tools_s, drafting_s, rendering_s : float
        Time per stage, s: opening/processing the study, the deterministic tool outputs
        (facts, events), drafting the report, writing its files.
    outputs : dict of str to str
        Output file per format, relative to the batch output folder.
    """

    model_config = ConfigDict(extra="forbid")

    patient: str
    status: Literal["ok", "error", "skipped"]
    simulated: bool | None = None
    tst_min: float | None = None
    se_pct: float | None = None
    ahi: float | None = None
    odi: float | None = None
    t90_pct: float | None = None
    nadir_spo2: float | None = None
    plmi: float | None = None
    arousal_index: float | None = None
    severity: str | None = None
    flags: list[str] = Field(default_factory=list)
    error_type: str = ""
    error: str = ""
    seconds: float = 0.0
    processing_s: float = 0.0
    tools_s: float = 0.0
    drafting_s: float = 0.0
    rendering_s: float = 0.0
    outputs: dict[str, str] = Field(default_factory=dict)


class _OutputFile(BaseModel):
    path: str  # relative to the patient folder
    bytes: int
    sha256: str


class PatientStatus(BaseModel):
    """``<out_dir>/<patient>/status.json``: what a finished (or failed) patient was made from.

    Attributes
    ----------
    format : int
    patient : str
    status : {"ok", "error"}
    input_key : str
        The library's cache key (study file hashes, model version, input contract).
    model_version : str
        SHA-256 of the SleepLM checkpoint.
    writer : str
        The narrative writer (``templates`` or the LLM backend and model).
    outputs : dict of str to _OutputFile
        Per format: file name, size (bytes), SHA-256.
    row : PatientRow
    finished_utc : str
    """

    model_config = ConfigDict(extra="forbid")

    format: int = STATUS_FORMAT
    patient: str
    status: Literal["ok", "error"]
    input_key: str = ""
    model_version: str = ""
    writer: str = ""
    outputs: dict[str, _OutputFile] = Field(default_factory=dict)
    row: PatientRow
    finished_utc: str


class BatchSummary(BaseModel):
    """The result of :func:`run_batch` (also ``summary.json``; rows also ``summary.csv``).

    Attributes
    ----------
    source, out_dir : str
    backend : str
    workers : int
    formats : list of str
    writer : str
    started_utc : str
    seconds : float
        Wall time of the run, s.
    n_patients, n_ok, n_error, n_skipped : int
    reports_per_hour : float or None
        Patients finished by this run per hour of wall time (None when none ran).
    stage_seconds : dict of str to float
        Seconds per stage summed over the patients this run processed.
    n_simulated : int
        Rows whose night is SIMULATED.
    notice : str
    rows : list of PatientRow
    """

    source: str
    out_dir: str
    backend: str
    workers: int
    formats: list[str]
    writer: str
    started_utc: str
    seconds: float
    n_patients: int
    n_ok: int
    n_error: int
    n_skipped: int
    reports_per_hour: float | None
    stage_seconds: dict[str, float]
    n_simulated: int
    notice: str
    rows: list[PatientRow]

    @property
    def ok(self) -> bool:
        """No patient failed."""
        return self.n_error == 0

    def to_table(self, limit: int = 50) -> str:
        """A plain-text table of the rows (at most ``limit``) and the totals."""
        head = (f"{'patient':<32} {'status':<8} {'AHI':>6} {'ODI':>6} {'TST':>6} {'SE':>6} "
                f"{'sev':<9} {'s':>6}  error")
        lines = [head, "-" * len(head)]

        def num(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        for r in self.rows[:limit]:
            sim = "*" if r.simulated else " "
            lines.append(f"{(r.patient + sim)[:32]:<32} {r.status:<8} {num(r.ahi):>6} "
                         f"{num(r.odi):>6} {num(r.tst_min):>6} {num(r.se_pct):>6} "
                         f"{(r.severity or '-')[:9]:<9} {r.seconds:>6.1f}  "
                         + (f"{r.error_type}: {r.error}"[:90] if r.status == "error" else ""))
        if len(self.rows) > limit:
            lines.append(f"... and {len(self.rows) - limit} more rows (see {SUMMARY_CSV})")
        rate = "-" if self.reports_per_hour is None else f"{self.reports_per_hour:.0f}"
        lines.append(f"{self.n_patients} patients: {self.n_ok} ok, {self.n_skipped} skipped "
                     f"(already done), {self.n_error} errors in {self.seconds:.1f} s "
                     f"({rate} reports/hour, {self.workers} worker(s), {self.backend})")
        if self.n_simulated:
            lines.append(f"* SIMULATED night ({self.n_simulated} of {self.n_patients}): not a "
                         "real patient.")
        lines.append(self.notice)
        return "\n".join(lines)


# ------------------------------------------------------------------------------ the library


def open_library(source: str | os.PathLike, *, model_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None) -> PatientLibrary:
    """The patient library of a batch source.

    Parameters
    ----------
    source : path-like
        A library folder (with or without ``manifest.csv``) or a manifest CSV file (paths in
        it relative to its folder).
    model_dir : path-like, optional
        SleepLM checkpoint (default :func:`sleeplm.model.network.default_checkpoint`).
    cache_dir : path-like, optional
        Cache of processed patients (default ``<library>/.sleeplm-cache``).

    Raises
    ------
    BatchError
        ``source`` does not exist or is a file other than a CSV.
    ManifestError
        The manifest is unreadable or lacks its ``edf`` column.
    """
    src = Path(source)
    kwargs = {"model_dir": Path(model_dir) if model_dir else None,
              "cache_dir": Path(cache_dir) if cache_dir else None}
    if src.is_dir():
        return PatientLibrary(src, **kwargs)
    if src.is_file() and src.suffix.lower() == ".csv":
        if src.name == MANIFEST_NAME:
            return PatientLibrary(src.parent, **kwargs)
        return PatientLibrary(src.parent, manifest=src, **kwargs)
    if src.exists():
        raise BatchError(f"batch input {src} is neither a library folder nor a manifest CSV")
    raise BatchError(f"batch input {src} does not exist: give a library folder (EDF/BDF "
                     "studies, optionally with manifest.csv) or a manifest CSV")


# ---------------------------------------------------------------------------- per patient


@dataclasses.dataclass(frozen=True)
class _Setup:
    """Everything a worker needs (picklable): the same for every patient of a batch."""

    source: str
    model_dir: str | None
    cache_dir: str | None
    out_dir: str
    formats: tuple[str, ...]
    config_json: str | None
    timeout_s: float | None


@dataclasses.dataclass
class _Worker:
    setup: _Setup
    library: PatientLibrary
    writer: Any
    writer_name: str


_STATE: _Worker | None = None


def _config_of(config_json: str | None) -> AssistantConfig | None:
    if config_json is None:
        return None
    from assistant.config import AssistantConfig

    return AssistantConfig.model_validate_json(config_json)


def writer_for(config: AssistantConfig | None) -> tuple[Any, str]:
    """The narrative writer of ``config`` and its name (recorded in ``status.json``).

    Returns
    -------
    writer : NarrativeWriter or None
        None for no config or ``backend="offline"``: :func:`assistant.report.draft_report`
        then writes with its templates.
    name : str
        ``templates`` or ``<backend>:<model>``.
    """
    if config is None or config.backend == "offline":
        return None, "templates"
    from assistant.backends import make_chat_model, sends_data_off_machine
    from assistant.report import LLMWriter

    writer = LLMWriter(make_chat_model(config))
    # redacted per patient before each report (assistant.backends.redact_writer)
    writer.sends_off_machine = sends_data_off_machine(config)
    return writer, _writer_name(config)


def _writer_name(config: AssistantConfig | None) -> str:
    if config is None or config.backend == "offline":
        return "templates"
    return f"{config.backend}:{config.model or ''}"


def _worker(setup: _Setup) -> _Worker:
    """This process's library and writer for ``setup``, made once (the model loads once)."""
    global _STATE
    if _STATE is None or _STATE.setup != setup:
        library = open_library(setup.source, model_dir=setup.model_dir,
                               cache_dir=setup.cache_dir)
        writer, name = writer_for(_config_of(setup.config_json))
        _STATE = _Worker(setup=setup, library=library, writer=writer, writer_name=name)
    return _STATE


def _init_worker(setup: _Setup, threads: int) -> None:
    """ProcessPoolExecutor initializer: limit threads, open the library once."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    _worker(setup)


@contextmanager
def _time_limit(seconds: float | None, patient: str) -> Iterator[None]:
    """Raise :class:`PatientTimeoutError` when the block runs longer than ``seconds``.

    In the main thread of a process (a pool worker, or ``workers=1`` from a script) a
    SIGALRM interrupts the work; elsewhere the block runs to its end and is failed after.
    """
    if not seconds:
        yield
        return
    message = (f"patient '{patient}' took longer than the {seconds:g} s timeout; raise "
               "--timeout for long nights or slow LLM backends")
    armed = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    old = None
    if armed:
        def _alarm(signum: int, frame: Any) -> None:
            raise PatientTimeoutError(message)

        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    if time.perf_counter() - t0 > seconds:  # the work swallowed the alarm, or none was armed
        raise PatientTimeoutError(message)


def _indices(report: Any) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in INDEX_KEYS:
        item = (report.key_indices or {}).get(key)
        value = getattr(item, "value", None)
        out[key] = (round(float(value), 3) if value is not None and math.isfinite(float(value))
                    else None)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """:func:`assistant.render.atomic_write`, creating the folder first."""
    from assistant.render import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _error_row(patient: str, exc: BaseException, seconds: float = 0.0,
               timings: dict[str, float] | None = None) -> PatientRow:
    text = " ".join(str(exc).split()) or repr(exc)
    return PatientRow(patient=patient, status="error", error_type=type(exc).__name__,
                      error=text[:1000], seconds=round(seconds, 3),
                      **{f"{k}_s": round(v, 4) for k, v in (timings or {}).items()})


def report_patient(library: PatientLibrary, patient: str, out_dir: Path, *,
                   formats: Sequence[str] = FORMATS, writer: Any = None,
                   writer_name: str = "templates", timeout_s: float | None = None,
                   indication: str | None = None,
                   context: Callable[[PatientLibrary, str, Path], ToolContext] | None = None,
                   ) -> PatientRow:
    """Draft one patient's report and write it into ``out_dir/<patient>/`` (never raises
    for a patient's own failure: that becomes an error row).

    Parameters
    ----------
    library : PatientLibrary
    patient : str
        Validated here; an invalid or unknown id gives an error row.
    out_dir : pathlib.Path
        The batch output folder.
    formats : sequence of str
        Among ``md``, ``html``, ``pdf``, ``json``.
    writer : NarrativeWriter, optional
        None: the offline templates.
    writer_name : str
        Recorded in ``status.json`` (a changed writer redoes the patient).
    timeout_s : float, optional
        Per-patient limit, s.
    indication : str, optional
        Reason for the study, passed to :func:`~assistant.report.draft_report`.
    context : callable, optional
        Makes the :class:`~tools.ToolContext` (default: library, patient, figures under the
        patient's folder).

    Returns
    -------
    PatientRow
        ``ok`` with the key indices and stage timings, or ``error`` with the reason.
    """
    t0 = time.perf_counter()
    timings = dict.fromkeys(STAGES, 0.0)
    try:
        validate_patient_id(patient)
        folder = Path(out_dir) / patient
        with _time_limit(timeout_s, patient):
            row, status = _report_one(library, patient, folder, Path(out_dir), formats, writer,
                                      writer_name, indication, context, timings)
        row.seconds = round(time.perf_counter() - t0, 3)
        status.row = row
        _atomic_write(folder / STATUS_NAME, status.model_dump_json(indent=1).encode())
        return row
    except Exception as exc:  # batch boundary: the patient fails, the batch carries on
        logger.error("batch: patient %s failed: %s: %s", patient, type(exc).__name__, exc)
        row = _error_row(patient, exc, time.perf_counter() - t0, timings)
        try:
            validate_patient_id(patient)
            status = PatientStatus(patient=patient, status="error", writer=writer_name, row=row,
                                   finished_utc=_now())
            _atomic_write(Path(out_dir) / patient / STATUS_NAME,
                          status.model_dump_json(indent=1).encode())
        except Exception as exc2:  # noqa: BLE001 - an invalid id has no folder; disk trouble
            logger.debug("batch: no status.json for %r: %s", patient, exc2)
        return row


def _report_one(library: PatientLibrary, patient: str, folder: Path, out_dir: Path,
                formats: Sequence[str], writer: Any, writer_name: str, indication: str | None,
                context: Callable[[PatientLibrary, str, Path], ToolContext] | None,
                timings: dict[str, float]) -> tuple[PatientRow, PatientStatus]:
    from assistant.render import write_report_files
    from assistant.report import draft_report
    from tools import ToolContext, report_facts

    t = time.perf_counter()
    processed = library.open(patient, progress=False)
    timings["processing"] = time.perf_counter() - t
    ctx = (context(library, patient, out_dir) if context is not None
           else ToolContext(library=library, patient=patient, output_dir=out_dir))
    t = time.perf_counter()
    ctx.processed()
    report_facts(ctx)
    ctx.recording()  # the scored events the report lists (read once, kept in the context)
    timings["tools"] = time.perf_counter() - t
    t = time.perf_counter()
    if writer is not None:
        from assistant.backends import redact_writer

        writer = redact_writer(writer, ctx)
    report = draft_report(ctx, writer=writer, indication=indication)
    timings["drafting"] = time.perf_counter() - t
    t = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    paths = write_report_files(report, folder, formats=tuple(formats), ctx=ctx)
    timings["rendering"] = time.perf_counter() - t
    missing = [f for f in formats if f not in paths or not Path(paths[f]).is_file()]
    if missing:
        raise BatchError(f"patient '{patient}': write_report_files wrote no "
                         f"{', '.join(missing)} file")
    outputs = {f: _OutputFile(path=os.path.relpath(paths[f], folder),
                              bytes=Path(paths[f]).stat().st_size, sha256=_sha256(Path(paths[f])))
               for f in formats}
    simulated = report.simulated if report.simulated is not None else processed.study.simulated
    row = PatientRow(patient=patient, status="ok", simulated=simulated, **_indices(report),
                     severity=report.severity, flags=[str(f) for f in report.flags],
                     outputs={f: str(Path(patient) / o.path) for f, o in outputs.items()},
                     **{f"{k}_s": round(v, 4) for k, v in timings.items()})
    status = PatientStatus(patient=patient, status="ok", input_key=processed.meta.key,
                           model_version=processed.model_version, writer=writer_name,
                           outputs=outputs, row=row, finished_utc=_now())
    return row, status


def _run_one(setup: _Setup, patient: str) -> dict[str, Any]:
    """The per-patient function of every backend: one patient in this (worker) process."""
    state = _worker(setup)
    row = report_patient(state.library, patient, Path(setup.out_dir), formats=setup.formats,
                         writer=state.writer, writer_name=state.writer_name,
                         timeout_s=setup.timeout_s)
    return row.model_dump(mode="json")


# ------------------------------------------------------------------------------ resuming


def _finished(library: PatientLibrary, patient: str, out_dir: Path, formats: Sequence[str],
              writer_name: str) -> PatientRow | None:
    """The earlier row of a patient whose outputs are complete and up to date, else None."""
    path = out_dir / patient / STATUS_NAME
    if not path.is_file():
        return None
    try:
        status = PatientStatus.model_validate_json(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("batch: %s is unreadable (%s); redoing %s", path, exc, patient)
        return None
    if status.status != "ok" or status.patient != patient or status.writer != writer_name:
        return None
    try:
        if (status.input_key != library.cache_key(patient)
                or status.model_version != library.model_version):
            return None
    except Exception as exc:  # noqa: BLE001 - the worker will report the real error
        logger.debug("batch: cannot key %s (%s); redoing it", patient, exc)
        return None
    for fmt in formats:
        out = status.outputs.get(fmt)
        if out is None:
            return None
        file = out_dir / patient / out.path
        try:
            if file.stat().st_size != out.bytes or _sha256(file) != out.sha256:
                return None
        except OSError:
            return None
    return status.row.model_copy(update={"status": "skipped"})


# ------------------------------------------------------------------------------- runners


def _run_serial(setup: _Setup, todo: list[str], on_row: Callable[[PatientRow], None]) -> None:
    for pid in todo:
        on_row(PatientRow.model_validate(_run_one(setup, pid)))


def _run_pool(setup: _Setup, todo: list[str], workers: int,
              on_row: Callable[[PatientRow], None]) -> None:
    """Bounded process pool: at most ``workers`` patients in flight; a dead worker fails only
    the patients it may have held, each retried once in a fresh pool."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // workers)
    queue = list(todo)
    attempts: dict[str, int] = {}
    hard = (setup.timeout_s * _HARD_FACTOR + 30.0) if setup.timeout_s else None
    ctx = mp.get_context("spawn")
    while queue:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                   initializer=_init_worker, initargs=(setup, threads))
        running: dict[Future, tuple[str, float]] = {}
        broken = False
        try:
            while (queue or running) and not broken:
                while queue and len(running) < workers:
                    pid = queue.pop(0)
                    attempts[pid] = attempts.get(pid, 0) + 1
                    running[pool.submit(_run_one, setup, pid)] = (pid, time.monotonic())
                done, _ = wait(running, timeout=5.0 if hard else None,
                               return_when=FIRST_COMPLETED)
                for fut in done:
                    pid, started = running.pop(fut)
                    try:
                        on_row(PatientRow.model_validate(fut.result()))
                    except BrokenProcessPool as exc:
                        broken = True
                        _retry_or_fail(pid, attempts, queue, on_row, WorkerDiedError(
                            f"patient '{pid}': the worker process died ({exc}); it may have "
                            "run out of memory"), time.monotonic() - started)
                    except Exception as exc:  # noqa: BLE001 - e.g. a result that does not unpickle
                        on_row(_error_row(pid, exc, time.monotonic() - started))
                overdue = [f for f, (_, s) in running.items()
                           if hard and time.monotonic() - s > hard]
                if overdue:  # the worker ignores the alarm (stuck in native code): stop it
                    for fut in overdue:
                        pid, started = running.pop(fut)
                        on_row(_error_row(pid, PatientTimeoutError(
                            f"patient '{pid}' did not finish within {hard:g} s (timeout "
                            f"{setup.timeout_s:g} s) and its worker was stopped"),
                            time.monotonic() - started))
                        attempts[pid] = _MAX_ATTEMPTS
                    _stop_workers(pool)
                    broken = True
            for pid, started in list(running.values()):  # in flight when the pool broke
                _retry_or_fail(pid, attempts, queue, on_row, WorkerDiedError(
                    f"patient '{pid}': its worker process pool broke"), time.monotonic() - started)
        finally:
            pool.shutdown(wait=not broken, cancel_futures=True)


def _retry_or_fail(pid: str, attempts: dict[str, int], queue: list[str],
                   on_row: Callable[[PatientRow], None], exc: Exception, seconds: float) -> None:
    if attempts.get(pid, 0) < _MAX_ATTEMPTS:
        logger.warning("batch: %s; trying patient %s again", exc, pid)
        queue.insert(0, pid)
    else:
        on_row(_error_row(pid, exc, seconds))


def _stop_workers(pool: Any) -> None:
    # ProcessPoolExecutor has no public way to stop a busy worker before Python 3.14
    stop = getattr(pool, "terminate_workers", None)
    if stop is not None:
        stop()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()


def _require_ray() -> Any:
    """The ``ray`` module (imported as the corpus builder does: no usage statistics sent)."""
    from sleeplm.corpus.build import _require_ray as require  # noqa: PLC0415

    try:
        return require()
    except ImportError as exc:
        raise BatchError(str(exc)) from exc


def _run_ray(setup: _Setup, todo: list[str], workers: int,
             on_row: Callable[[PatientRow], None], address: str | None = None) -> None:
    """The same per-patient function as Ray tasks, streamed back as they finish.

    Each task gets the patient id and :class:`_Setup` (paths), reads the study itself and
    loads SleepLM once per worker process (:func:`_worker`); at most twice the cluster's CPUs
    are in flight. A patient whose worker or node dies is run again on a live node
    (:data:`sleeplm.corpus.build.RAY_TASK_RETRIES` times): its files are written atomically
    and ``status.json`` last, so a rerun leaves one complete report.
    """
    from sleeplm.corpus.build import ray_map, ray_session

    ray = _require_ray()
    hard = (setup.timeout_s * _HARD_FACTOR + 30.0) if setup.timeout_s else None
    nodes: dict[str, int] = {}
    with ray_session(ray, address, workers) as cpus:
        logger.info("batch: %d patients as Ray tasks over %d CPUs", len(todo), cpus)
        calls = [(pid, (setup, pid)) for pid in todo]
        for res in ray_map(ray, _run_one, calls, in_flight=2 * max(workers, cpus),
                           hard_timeout_s=hard):
            pid = res.key
            if res.timed_out:
                on_row(_error_row(pid, PatientTimeoutError(
                    f"patient '{pid}' did not finish within {hard:g} s (timeout "
                    f"{setup.timeout_s:g} s); its task was cancelled"), res.seconds))
            elif res.error is not None:
                on_row(_error_row(pid, res.error if isinstance(res.error, SleepLMError) else
                                  WorkerDiedError(f"patient '{pid}': its Ray worker or node "
                                                  f"failed ({type(res.error).__name__}: "
                                                  f"{res.error})"), res.seconds))
            else:
                row = PatientRow.model_validate(res.value)
                nodes[res.node] = nodes.get(res.node, 0) + 1
                logger.info("batch: patient %s %s on Ray node %s", pid, row.status, res.node)
                on_row(row)
    logger.info("batch: patients per Ray node: %s", nodes)
    out = Path(setup.out_dir)
    for pid in todo:  # temporary files of a write cut short when a node was killed
        for tmp in (out / pid).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------- batch


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list):
        value = "; ".join(str(v) for v in value)
    if isinstance(value, dict):
        value = " ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value  # a spreadsheet must not run a cell as a formula
    return "" if value is None else value


def _write_summary(out_dir: Path, summary: BatchSummary) -> None:
    columns = list(PatientRow.model_fields)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in summary.rows:
        data = row.model_dump(mode="json")
        w.writerow([_csv_cell(data[c]) for c in columns])
    _atomic_write(out_dir / SUMMARY_CSV, buf.getvalue().encode())
    _atomic_write(out_dir / SUMMARY_JSON, summary.model_dump_json(indent=1).encode())


def run_batch(source: str | os.PathLike, out_dir: str | os.PathLike, *, workers: int = 1,
              formats: Sequence[str] = FORMATS, timeout_s: float | None = None,
              backend: Literal["process", "ray"] = "process",
              config: AssistantConfig | None = None, progress: bool = True,
              model_dir: str | os.PathLike | None = None,
              cache_dir: str | os.PathLike | None = None,
              patients: Sequence[str] | None = None,
              ray_address: str | None = None) -> BatchSummary:
    """Draft and write the report of every patient of a library (resumable).

    Parameters
    ----------
    source : path-like
        A library folder or a manifest CSV (see :func:`open_library`).
    out_dir : path-like
        Output folder: one sub-folder per patient plus ``summary.csv`` / ``summary.json``.
    workers : int
        Patients in flight at once; 1 runs in this process.
    formats : sequence of str
        Report formats among ``md``, ``html``, ``pdf``, ``json``.
    timeout_s : float, optional
        Per-patient limit, s (a patient past it becomes an error row).
    backend : {"process", "ray"}
        ``ray`` runs the patients as Ray tasks (``pip install 'sleeplm[ray]'``): on a
        cluster, ``source``, the checkpoint, the cache and ``out_dir`` must be on storage
        every node mounts at the same path (see docs/RAY.md).
    config : AssistantConfig, optional
        Chooses the narrative writer (None or ``backend="offline"``: the templates).
    progress : bool
        Show a progress bar with an ETA.
    model_dir, cache_dir : path-like, optional
        SleepLM checkpoint and processed-patient cache (library defaults otherwise).
    patients : sequence of str, optional
        Only these patients (default: all of the source).
    ray_address : str, optional
        ``backend="ray"``: the cluster's head (``host:port``); None: ``RAY_ADDRESS``, else
        Ray on this machine with ``workers`` CPUs.

    Returns
    -------
    BatchSummary
        Also written to ``out_dir/summary.json`` (and the rows to ``summary.csv``).

    Raises
    ------
    BatchError
        Bad source, options, or an output folder that is a file.
    RayClusterError
        ``backend="ray"`` and nothing answers at ``ray_address``.
    ManifestError
        An unreadable manifest.
    """
    t0 = time.perf_counter()
    started = _now()
    fmts = tuple(dict.fromkeys(str(f).strip().lower() for f in formats))
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise BatchError(f"unknown report format(s) {bad or formats!r}: choose from "
                         f"{', '.join(FORMATS)}")
    if workers < 1:
        raise BatchError(f"workers must be at least 1, got {workers}")
    if backend not in ("process", "ray"):
        raise BatchError(f"backend must be 'process' or 'ray', got {backend!r}")
    if timeout_s is not None and not timeout_s > 0:
        raise BatchError(f"timeout_s must be positive seconds, got {timeout_s}")
    if backend == "ray":
        _require_ray()  # fail before any work
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BatchError(f"batch output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    library = open_library(source, model_dir=model_dir, cache_dir=cache_dir)
    writer_name = _writer_name(config)
    setup = _Setup(source=str(Path(source).resolve()),
                   model_dir=str(library.model_dir.resolve()),
                   cache_dir=str(library.cache_dir.resolve()), out_dir=str(out.resolve()),
                   formats=fmts, config_json=config.model_dump_json() if config else None,
                   timeout_s=timeout_s)

    rows: dict[str, PatientRow] = {}
    ids = library.patients() if patients is None else list(patients)
    if patients is None:  # manifest rows the library left out are error rows too
        for what, why in library.skipped.items():
            rows[what] = PatientRow(patient=what, status="error", error_type="ManifestEntryError",
                                    error=why)
    todo: list[str] = []
    for pid in ids:
        earlier = None
        try:
            validate_patient_id(pid)
            earlier = _finished(library, pid, out, fmts, writer_name)
        except Exception as exc:  # an invalid id given in ``patients``
            rows[pid] = _error_row(pid, exc)
            continue
        if earlier is not None:
            rows[pid] = earlier
        else:
            todo.append(pid)
    logger.info("batch: %d patients, %d already done, %d to do, %d left out", len(ids),
                len(ids) - len(todo), len(todo), len(library.skipped))

    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="patient", desc="reports", disable=not progress,
               dynamic_ncols=True)
    counts = {"ok": 0, "error": 0}

    def on_row(row: PatientRow) -> None:
        rows[row.patient] = row
        counts[row.status] = counts.get(row.status, 0) + 1
        bar.set_postfix(ok=counts["ok"], errors=counts["error"], refresh=False)
        bar.update()

    try:
        if not todo:
            pass
        elif backend == "ray":
            _run_ray(setup, todo, workers, on_row, ray_address)
        elif workers == 1 or len(todo) == 1:
            _run_serial(setup, todo, on_row)
        else:
            _run_pool(setup, todo, min(workers, len(todo)), on_row)
    finally:
        bar.close()

    ordered = [rows[k] for k in sorted(rows)]
    done_now = [r for r in ordered if r.status == "ok"]
    seconds = time.perf_counter() - t0
    summary = BatchSummary(
        source=str(source), out_dir=str(out), backend=backend, workers=workers,
        formats=list(fmts), writer=writer_name, started_utc=started, seconds=round(seconds, 3),
        n_patients=len(ordered), n_ok=len(done_now),
        n_error=sum(r.status == "error" for r in ordered),
        n_skipped=sum(r.status == "skipped" for r in ordered),
        reports_per_hour=(round(len(done_now) / seconds * 3600.0, 1) if done_now else None),
        stage_seconds={s: round(sum(getattr(r, f"{s}_s") for r in done_now), 3)
                       for s in STAGES},
        n_simulated=sum(bool(r.simulated) for r in ordered), notice=NOTICE, rows=ordered)
    _write_summary(out, summary)
    logger.info("batch: %d ok, %d skipped, %d errors in %.1f s; summary in %s", summary.n_ok,
                summary.n_skipped, summary.n_error, seconds, out / SUMMARY_CSV)
    return summary
