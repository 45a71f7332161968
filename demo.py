"""The chat app: ``python demo.py`` serves it on http://127.0.0.1:7860.

Options pick the interface, the port, a password, the LLM backend and the patient library;
nothing is fetched from the internet (no share link, analytics and telemetry off, system
fonts), and with the default offline planner no patient data leave this machine.

    python demo.py                                   # SIMULATED example patients, offline
    python demo.py --library /data/psg               # your EDF/BDF studies
    python demo.py --llm openai --base-url http://127.0.0.1:8080/v1 --model gemma
    python demo.py --gguf model.gguf                 # starts a local llama.cpp server for it
    python demo.py --host 0.0.0.0 --auth alice:secret
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before gradio or huggingface_hub are imported: no analytics, no hub calls, no telemetry.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("MNE_DONTWRITE_HOME", "true")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    ap = argparse.ArgumentParser(prog="python demo.py",
                                 description="SleepLM sleep-study assistant (Gradio app). Not a "
                                             "medical device.")
    ap.add_argument("--host", default="127.0.0.1",
                    help="interface to bind (default 127.0.0.1; anything else exposes the app "
                         "to the network: use --auth)")
    ap.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    ap.add_argument("--auth", metavar="USER:PASS", default=None,
                    help="ask for this user name and password in the page")
    ap.add_argument("--config", type=Path, default=None,
                    help="assistant configuration file (JSON or TOML)")
    ap.add_argument("--llm", choices=["offline", "openai", "ollama", "transformers"],
                    default=None, help="LLM backend (default offline: the embedded planner)")
    ap.add_argument("--base-url", default=None,
                    help="server of the openai/ollama backend, e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--model", default=None, help="model name at that server")
    ap.add_argument("--gguf", type=Path, default=None, metavar="FILE",
                    help="start a local llama.cpp server (loopback) with this GGUF model and "
                         "answer with it (implies --llm openai; needs llama-cpp-python)")
    ap.add_argument("--n-ctx", type=int, default=4096,
                    help="context window of the --gguf server, tokens (default 4096)")
    ap.add_argument("--library", type=Path, default=None,
                    help="patient library folder (EDF/BDF studies with annotations; default: "
                         "the SIMULATED example patients)")
    ap.add_argument("--max-upload-mb", type=float, default=512.0,
                    help="largest upload accepted, MB (default 512)")
    return ap.parse_args(argv)


def _auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth must be USER:PASS with both parts non-empty")
    return user, password


def main(argv: list[str] | None = None) -> int:
    """Parse the options, build the assistant and serve the app until interrupted."""
    args = parse_args(argv)
    auth = _auth(args.auth)
    from assistant.agent import Assistant
    from assistant.app import serve
    from assistant.backends import describe_backend, is_loopback_host
    from assistant.config import AssistantConfig
    from sleeplm._logging import logger
    from sleeplm.errors import SleepLMError

    if not is_loopback_host(args.host) and auth is None:
        msg = (f"WARNING: serving on {args.host} without --auth: anyone who can reach this "
               "machine can read the patients' data. Use --auth USER:PASS, or --host 127.0.0.1.")
        logger.warning(msg)
        print(msg, file=sys.stderr)
    server = None
    try:
        backend, base_url, model = args.llm, args.base_url, args.model
        if args.gguf is not None:
            from assistant.gguf_parts import TOOL_CHAT_FORMAT, ToolCallingLlamaServer

            if args.llm not in (None, "openai") or args.base_url:
                raise SystemExit("--gguf starts its own server: leave out --llm/--base-url")
            model = model or args.gguf.stem
            print(f"Starting a llama.cpp server for {args.gguf} ...", file=sys.stderr)
            # the model's own chat template with tools and tool results (llama-cpp-python's
            # stock formats drop tool results or return tool calls as text)
            server = ToolCallingLlamaServer(args.gguf, alias=model, n_ctx=args.n_ctx,
                                            extra_args=("--chat_format",
                                                        TOOL_CHAT_FORMAT)).start()
            backend, base_url = "openai", server.url
        config = AssistantConfig.load(args.config, backend=backend, base_url=base_url,
                                      model=model, library=args.library)
        if server is not None:  # a 1.5 B model: the planner shortlists its tools
            config = config.model_copy(update={"shortlist_tools": 4, "report_budget_s": 120.0})
        if server is not None and args.n_ctx <= 4096:  # the full tool schemas need ~5.6k
            config = config.model_copy(update={"compact_tools": True})
        if config.library is not None and not Path(config.library).is_dir():
            raise SystemExit(f"--library {config.library} is not a folder of EDF/BDF studies")
        print(f"Backend: {describe_backend(config)}", file=sys.stderr)
        assistant = Assistant(config, llm_server=server)
    except (SleepLMError, FileNotFoundError) as exc:
        if server is not None:
            server.stop()
        raise SystemExit(f"cannot start the assistant: {exc}") from None
    try:
        _, url = serve(assistant, host=args.host, port=args.port, auth=auth,
                       max_upload_mb=args.max_upload_mb)
        print(f"Serving on {url}", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
