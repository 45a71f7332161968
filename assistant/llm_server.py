"""A local llama.cpp server that this process starts, watches and stops.

:class:`LlamaServer` runs ``python -m llama_cpp.server`` (llama-cpp-python's OpenAI-compatible
server) with a GGUF model on a loopback port, waits until it answers ``/v1/models``, and keeps
its output in a log file. When the server dies, whether while loading or in the middle of a
completion, it is named as such: :class:`LLMServerCrashed` says how it exited ("the llama.cpp
server exited with signal 11 (SIGSEGV)") and quotes the end of its log, instead of the
"Connection error" that the HTTP client would otherwise report.

    with LlamaServer("model.gguf", alias="qwen") as server:
        config = AssistantConfig(backend="openai", base_url=server.url, model="qwen")
        with server.watch():       # a crash inside becomes LLMServerCrashed
            answer = make_chat_model(config).invoke("Sleep apnea is")

``python demo.py --gguf model.gguf`` starts one for the app; the tests start one with the small
GGUF model a test dependency ships.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from sleeplm._logging import logger
from sleeplm.errors import SleepLMError

__all__ = ["LlamaServer", "LLMServerError", "LLMServerCrashed", "exit_description",
           "exit_with_parent"]

PARENT_POLL_S = 1.0
"""Seconds between a server's checks that the process which started it still runs."""


def exit_with_parent(parent_pid: int, *, poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """Stop this process when the process that started it is gone.

    A server started by a benchmark or an app must not outlive it: a parent killed by a
    signal runs no clean-up, and its llama.cpp server would keep ~1 GB of memory and its
    CPU threads. A daemon thread checks every ``poll_s`` seconds that ``parent_pid`` is still
    this process's parent (an orphan is handed to another process) and sends this process
    SIGTERM, which the server answers by shutting down, when it is not.

    Parameters
    ----------
    parent_pid : int
        The process id of the parent, as the parent saw it (``os.getpid()`` there).
    poll_s : float
        Seconds between checks.

    Returns
    -------
    threading.Thread
        The (daemon) thread that watches.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        logger.warning("the process that started this server (pid %d) is gone; stopping",
                       parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    if os.getppid() != parent_pid:  # the parent died before this line ran
        os.kill(os.getpid(), signal.SIGTERM)
    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def launcher(body: str, parent_pid: int | None = None) -> str:
    """The ``python -c`` code that starts a server child: the project importable without an
    install, :func:`exit_with_parent` watching ``parent_pid`` (default: this process), then
    ``body`` (which reads its options from ``sys.argv[1:]``)."""
    root = str(Path(__file__).resolve().parents[1])
    parent = os.getpid() if parent_pid is None else int(parent_pid)
    return (f"import sys; sys.path.insert(0, {root!r}); "
            f"from assistant.llm_server import exit_with_parent; exit_with_parent({parent}); "
            f"{body}")


class LLMServerError(SleepLMError, RuntimeError):
    """The local LLM server could not be started or stopped answering."""


class LLMServerCrashed(LLMServerError):
    """The local LLM server process has exited (crashed, killed or failed to load)."""


def exit_description(returncode: int) -> str:
    """How a process ended, from its return code, in words.

    Parameters
    ----------
    returncode : int
        ``Popen.returncode``: negative for a signal (POSIX), else the exit code.

    Returns
    -------
    str
        e.g. ``"signal 11 (SIGSEGV)"`` or ``"code 1"``.
    """
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
        return f"signal {-returncode} ({name})"
    return f"code {returncode}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """``python -m llama_cpp.server`` with one GGUF model, on 127.0.0.1.

    Parameters
    ----------
    model : path
        The GGUF file.
    alias : str
        The model name the server answers to (``AssistantConfig.model``).
    port : int, optional
        TCP port (default: a free one).
    n_ctx : int
        Context window, tokens.
    n_threads : int, optional
        CPU threads (default: at most 4, no more than the machine has).
    log_path : path, optional
        Where the server's output goes (default: a temporary file, kept after a crash).
    startup_timeout_s : float
        Seconds to wait for the model to load and the server to answer.
    extra_args : sequence of str
        More ``llama_cpp.server`` options, e.g. ``("--chat_format", "chatml-function-calling")``.
    python : str
        The interpreter that runs the server (default: this one).
    """

    def __init__(self, model: str | os.PathLike, *, alias: str = "local",
                 port: int | None = None, n_ctx: int = 4096, n_threads: int | None = None,
                 log_path: str | os.PathLike | None = None, startup_timeout_s: float = 120.0,
                 extra_args: Sequence[str] = (), python: str = sys.executable) -> None:
        self.model = Path(model)
        self.alias = alias
        self.port = int(port) if port else _free_port()
        self.n_ctx = int(n_ctx)
        self.n_threads = int(n_threads or min(4, os.cpu_count() or 1))
        self._temporary_log = log_path is None
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.startup_timeout_s = float(startup_timeout_s)
        self.extra_args = tuple(extra_args)
        self.python = python
        self.proc: subprocess.Popen | None = None

    # -- state ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def server_args(self) -> list[str]:
        """The ``llama_cpp.server`` options."""
        return ["--model", str(self.model), "--model_alias", self.alias, "--host", "127.0.0.1",
                "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.n_threads), "--verbose", "False", *self.extra_args]

    @property
    def command(self) -> list[str]:
        """The server's command line: ``python -m llama_cpp.server`` run through
        :func:`launcher`, so that the server stops when this process is gone."""
        body = ("import runpy; sys.argv = ['llama_cpp.server', *sys.argv[1:]]; "
                "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)")
        return [self.python, "-c", launcher(body), *self.server_args]

    def exited(self) -> str | None:
        """``None`` while the server runs, else how it ended (``"signal 11 (SIGSEGV)"``)."""
        if self.proc is None:
            return "never started"
        code = self.proc.poll()
        return None if code is None else exit_description(code)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's output."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-chars:].strip()

    def crash_report(self) -> str | None:
        """``None`` while the server runs, else what to tell the user: how it exited and the
        end of its log."""
        how = self.exited()
        if how is None:
            return None
        tail = self.log_tail()
        return (f"the llama.cpp server ({self.model.name}) exited with {how}"
                + (f"; the end of its log ({self.log_path}):\n{tail}" if tail
                   else f" and wrote nothing to its log ({self.log_path})"))

    def check(self) -> None:
        """Raise :class:`LLMServerCrashed` if the server has exited."""
        report = self.crash_report()
        if report is not None:
            raise LLMServerCrashed(report)

    @contextlib.contextmanager
    def watch(self) -> Iterator[LlamaServer]:
        """Run a block that talks to the server; if it fails and the server has exited, raise
        :class:`LLMServerCrashed` (from the original error) instead."""
        try:
            yield self
        except Exception as exc:
            report = self.crash_report()
            if report is not None:
                raise LLMServerCrashed(report) from exc
            raise

    # -- life ----------------------------------------------------------------------------
    def start(self) -> LlamaServer:
        """Start the server and wait until it lists its model.

        Raises
        ------
        FileNotFoundError
            The GGUF file does not exist.
        LLMServerError
            llama-cpp-python is missing, or the server did not answer in time.
        LLMServerCrashed
            The server exited while loading.
        """
        if not self.model.is_file():
            raise FileNotFoundError(f"GGUF model {self.model} not found")
        try:
            import llama_cpp  # noqa: F401  (the server runs in a subprocess; fail early here)
        except ImportError as exc:
            raise LLMServerError("llama-cpp-python is not installed: ./run installs it, or "
                                 "pip install 'llama-cpp-python[server]'") from exc
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, stdin=subprocess.DEVNULL)
        logger.info("llama.cpp server starting on %s (pid %d, log %s)", self.url, self.proc.pid,
                    self.log_path)
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            self.check()
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError,
                                     json.JSONDecodeError):
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as resp:
                    ids = [m.get("id") for m in json.load(resp).get("data", [])]
                if self.alias in ids:
                    return self
                self.stop()
                raise LLMServerError(f"the server on port {self.port} serves {ids}, not "
                                     f"{self.alias!r}: is another server on that port?")
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise LLMServerError(f"the llama.cpp server did not answer within "
                                     f"{self.startup_timeout_s:.0f} s; the end of its log:\n"
                                     f"{tail}")
            time.sleep(0.25)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server (terminate, then kill); a temporary log is removed then, and kept
        when the server had already ended on its own (a crash to read)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout_s)
        if self._temporary_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> LlamaServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
