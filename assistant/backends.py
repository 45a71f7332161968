"""LLM backends, chosen by configuration, and the redaction of identifiers before data leave.

:func:`make_chat_model` turns an :class:`~assistant.config.AssistantConfig` into a LangChain
chat model, so the agent graph is the same for every backend:

``offline``
    the embedded :class:`~assistant.planner.OfflinePlanner` (nothing leaves this machine);
``openai``
    any OpenAI-compatible server (vLLM, llama.cpp server, LM Studio, hosted APIs) at
    ``base_url`` through ``langchain_openai.ChatOpenAI``;
``ollama``
    an Ollama server through ``langchain_ollama.ChatOllama``;
``transformers``
    a local causal LM folder loaded with ``local_files_only=True``
    (:class:`LocalTransformersChatModel`).

:func:`sends_data_off_machine` says whether a backend's host is outside this machine (anything
but 127.0.0.0/8, ::1 and ``localhost``); :func:`describe_backend` says so in one line for the
user. Before anything is sent to such a host, :class:`Redactor` replaces every identifier of the
study (the EDF header's patient code, name and birth date, the recording's admin code,
technician and date, the file names) by the study id, either around one chat model
(:class:`RedactingChatModel`) or around every model call of an agent
(:class:`RedactionMiddleware`).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import os
import re
import uuid
from collections.abc import (
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from langchain.agents.middleware import AgentMiddleware
from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from assistant.config import AssistantConfig, ConfigError
from sleeplm._logging import logger
from sleeplm.errors import SleepLMError
from sleeplm.recording import safe_identifier

if TYPE_CHECKING:
    from sleeplm.library.patients import ProcessedPatient
    from sleeplm.recording import Recording
    from tools.context import ToolContext

__all__ = [
    "DEFAULT_OLLAMA_URL",
    "BackendConfigError",
    "LocalTransformersChatModel",
    "RedactingChatModel",
    "RedactionError",
    "RedactionMiddleware",
    "Redactor",
    "backend_url",
    "describe_backend",
    "header_identifiers",
    "is_loopback_host",
    "make_chat_model",
    "sends_data_off_machine",
]

#: Where ``backend="ollama"`` connects when ``base_url`` is not set (Ollama's own default).
DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
#: API key sent to a loopback OpenAI-compatible server that needs none (llama.cpp, vLLM).
LOCAL_API_KEY = "not-needed"


class BackendConfigError(ConfigError):
    """The configuration does not say enough to build the chosen LLM backend."""


class RedactionError(SleepLMError, RuntimeError):
    """The study's identifiers could not be collected, so nothing may be sent off the machine."""


# ------------------------------------------------------------------------------ backends


def backend_url(config: AssistantConfig) -> str | None:
    """The URL the backend connects to, or None for the in-process backends.

    ``ollama`` without ``base_url`` means :data:`DEFAULT_OLLAMA_URL`; ``openai`` without
    ``base_url`` has no URL (and :func:`make_chat_model` refuses it).
    """
    if config.backend in ("offline", "transformers"):
        return None
    if config.backend == "ollama":
        return config.base_url or DEFAULT_OLLAMA_URL
    return config.base_url


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1, IPv4-mapped 127.x).

    Host names are not resolved: any other name counts as another machine, which errs on the
    side of telling the user that data leave.
    """
    if not host:
        return False
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def sends_data_off_machine(config: AssistantConfig) -> bool:
    """Whether the configured backend sends the conversation to another machine.

    ``offline`` and ``transformers`` never do. ``openai``/``ollama`` do unless their host is
    loopback; an ``openai`` backend without ``base_url`` counts as remote.
    """
    url = backend_url(config)
    if config.backend in ("offline", "transformers"):
        return False
    if url is None:
        return True
    return not is_loopback_host(urlsplit(url).hostname)


def describe_backend(config: AssistantConfig) -> str:
    """One line for the user: which LLM answers and whether patient data leave this machine."""
    if config.backend == "offline":
        return "offline planner (nothing leaves this machine)"
    if config.backend == "transformers":
        return (f"local transformers model at {config.local_model_path} "
                "(nothing leaves this machine)")
    kind = "OpenAI-compatible server" if config.backend == "openai" else "Ollama server"
    url = backend_url(config) or "(no base_url set)"
    shown = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}" if "://" in url else url
    model = f"model {config.model}" if config.model else "no model set"
    if sends_data_off_machine(config):
        return (f"{kind} at {shown} ({model}): patient data LEAVES this machine; identifiers "
                "are replaced by the study id")
    return f"{kind} at {shown} ({model}; data stays on this machine)"


def _require(config: AssistantConfig, field: str, example: str) -> str:
    value = getattr(config, field)
    if not value:
        env = f"SLEEPLM_ASSISTANT_{field.upper()}"
        raise BackendConfigError(
            f"backend {config.backend!r} needs {field}: set it in the config file, the "
            f"{env} environment variable or the --{field.replace('_', '-')} option "
            f"(e.g. {example})")
    return str(value)


def make_chat_model(config: AssistantConfig, *, redactor: Redactor | None = None,
                    max_tokens: int | None = None) -> BaseChatModel:
    """The LangChain chat model of the configured backend.

    Parameters
    ----------
    config : AssistantConfig
    redactor : Redactor, optional
        When given and the backend sends data off this machine, the model is wrapped in a
        :class:`RedactingChatModel` so every message is redacted before it is sent. (An agent
        that changes patient uses :class:`RedactionMiddleware` instead.)
    max_tokens : int, optional
        Most tokens generated per answer (default: the server's own limit). OpenAI-compatible
        servers get it under both names, ``max_completion_tokens`` and the older
        ``max_tokens`` that llama-cpp-python's server reads.

    Returns
    -------
    BaseChatModel

    Raises
    ------
    BackendConfigError
        A missing ``base_url``/``model``/``local_model_path``, a missing API key for a remote
        server, or the backend's package not installed.
    """
    logger.info("LLM backend: %s", describe_backend(config))
    if config.backend == "offline":
        # the planner loads an embedding model: imported on demand
        from assistant.planner import OfflinePlanner

        return OfflinePlanner(router_threshold=config.router_threshold)
    if config.backend == "transformers":
        path = config.local_model_path
        if path is None:
            raise BackendConfigError(
                "backend 'transformers' needs local_model_path: set it in the config file, the "
                "SLEEPLM_ASSISTANT_LOCAL_MODEL_PATH environment variable or the "
                "--local-model-path option (a folder with config.json, the weights and the "
                "tokenizer of an instruction-tuned causal LM)")
        _check_model_folder(Path(path))
        return LocalTransformersChatModel(model_path=Path(path), temperature=config.temperature,
                                          **({"max_new_tokens": max_tokens} if max_tokens
                                             else {}))

    model_name = _require(config, "model", "gemma3 or Qwen2.5-7B-Instruct")
    remote = sends_data_off_machine(config)
    if config.backend == "openai":
        base_url = _require(config, "base_url", "http://127.0.0.1:8080/v1 for a llama.cpp "
                                                "server, https://api.openai.com/v1 for OpenAI")
        key = os.environ.get(config.api_key_env)
        if not key:
            if remote:
                raise BackendConfigError(
                    f"the server at {base_url} is not on this machine and the environment "
                    f"variable {config.api_key_env} (api_key_env) that should hold its API key "
                    "is not set: export it, or name another variable with api_key_env")
            key = LOCAL_API_KEY
        try:
            from langchain_openai import ChatOpenAI
        except ImportError as exc:
            raise BackendConfigError("backend 'openai' needs the langchain-openai package: "
                                     "pip install langchain-openai") from exc
        limit: dict[str, Any] = ({"max_tokens": max_tokens,
                                  "extra_body": {"max_tokens": max_tokens}} if max_tokens else {})
        model: BaseChatModel = ChatOpenAI(
            base_url=base_url, model=model_name, api_key=key, timeout=config.timeout_s,
            max_retries=config.max_retries, temperature=config.temperature, **limit)
    else:
        try:
            from langchain_ollama import ChatOllama
        except ImportError as exc:
            raise BackendConfigError("backend 'ollama' needs the langchain-ollama package: "
                                     "pip install langchain-ollama") from exc
        model = ChatOllama(base_url=backend_url(config), model=model_name,
                           temperature=config.temperature, num_predict=max_tokens,
                           client_kwargs={"timeout": config.timeout_s})
    if remote and redactor is not None:
        return RedactingChatModel(inner=model, redactor=redactor)
    return model


# ----------------------------------------------------------------------------- redaction

#: Words that never count as identifiers on their own (generic header or file-name words).
_STOPWORDS = frozenset({
    "male", "female", "man", "woman", "boy", "girl", "patient", "subject", "unknown",
    "anonymous", "anon", "none", "null", "test", "study", "sleep", "night", "psg", "edf", "bdf",
    "recording", "hypnogram", "annotations", "annotation", "signals", "data", "startdate",
    "child", "adult", "yr", "yrs", "year", "years", "mr", "mrs", "ms", "dr", "the", "and",
})
_SEP = r"[\s_\-.,/]"
_SPLIT = re.compile(_SEP + "+")
_AGE = re.compile(r"^\d{1,3}\s*(y|yr|yrs|year|years)$", re.IGNORECASE)
_PLACEHOLDER = frozenset({"", "x", "xx", "xxx", "-", "?", "unknown", "anonymous"})
_NAME_PART = re.compile(r"^[^\W\d_][^\W\d_'’-]*$")
_MIN_DIGITS = 5  # purely numeric identifiers shorter than this are not redacted


def _date_variants(text: str) -> list[str]:
    """``text`` and its other spellings when it is an EDF+ date (``02-MAR-1951``)."""
    try:
        d = _dt.datetime.strptime(text.strip(), "%d-%b-%Y").date()
    except ValueError:
        return [text]
    return [text, d.isoformat(), d.strftime("%d.%m.%Y"), d.strftime("%d/%m/%Y"),
            d.strftime("%m/%d/%Y"), d.strftime("%Y/%m/%d"), f"{d.day} {d:%B %Y}",
            f"{d:%B} {d.day}, {d.year}", f"{d.day} {d:%b %Y}", f"{d:%b} {d.day}, {d.year}"]


def _name_variants(name: str) -> list[str]:
    """A person's name (``Jane_Q_Doe``), reversed, and its distinctive parts."""
    parts = [p for p in _SPLIT.split(name) if p]
    out = [name]
    if len(parts) >= 2:
        out.append(" ".join(reversed(parts)))
        out.append(f"{parts[-1]}, {' '.join(parts[:-1])}")
    out += [p for p in parts if len(p) >= 3 and _NAME_PART.match(p)
            and p.casefold() not in _STOPWORDS]
    return out


def _id_like(token: str) -> bool:
    """A token that looks like a record number or code (digits, maybe with letters)."""
    digits = sum(c.isdigit() for c in token)
    return len(token) >= 4 and digits >= 2 and not _AGE.match(token)


def _free_text_identifiers(text: str) -> list[str]:
    """A free-text header field: the whole field, its name-like and id-like tokens."""
    text = text.strip()
    if text.casefold() in _PLACEHOLDER:
        return []
    tokens = text.split()
    out = [text] if len(tokens) > 1 else []
    for tok in tokens:
        if tok.casefold() in _PLACEHOLDER:
            continue
        if _id_like(tok):
            out.append(tok)
        elif _NAME_PART.match(tok.replace("_", "")) or "_" in tok:
            out += _name_variants(tok)
    return out


def header_identifiers(patient_field: str, recording_field: str = "") -> list[str]:
    """Identifiers in an EDF/EDF+ header's patient and recording fields.

    EDF+ patient fields are ``code sex birthdate name [more]``: the code, birth date (in its
    usual spellings), name (with spaces, underscores, reversed, and its parts) and the extra
    id-like tokens are identifiers; the sex is not. EDF+ recording fields are ``Startdate
    dd-MMM-yyyy admincode technician equipment [more]``: the date, admin code and technician
    are; the equipment is not. Plain-EDF fields are free text: the whole field and its name- or
    id-like tokens. ``X`` (unknown) subfields are skipped.
    """
    out: list[str] = []
    parts = patient_field.split()
    if len(parts) >= 2 and parts[1].upper() in ("M", "F", "X"):
        code, birth, name, more = (parts[0], parts[2] if len(parts) > 2 else "X",
                                   parts[3] if len(parts) > 3 else "X", parts[4:])
        if code.casefold() not in _PLACEHOLDER:
            # the Recording's patient_id is the code made safe: that spelling too
            out += [code, safe_identifier(code)]
        if birth.casefold() not in _PLACEHOLDER:
            out += _date_variants(birth)
        if name.casefold() not in _PLACEHOLDER:
            out += _name_variants(name)
        out += [t for t in more if _id_like(t)]
    else:
        out += _free_text_identifiers(patient_field)
    rparts = recording_field.split()
    if len(rparts) >= 2 and rparts[0].lower() == "startdate":
        date, admin, tech = (rparts[1], rparts[2] if len(rparts) > 2 else "X",
                             rparts[3] if len(rparts) > 3 else "X")
        if date.casefold() not in _PLACEHOLDER:
            out += _date_variants(date)
        if admin.casefold() not in _PLACEHOLDER:
            out.append(admin)
        if tech.casefold() not in _PLACEHOLDER:
            out += _name_variants(tech)
        out += [t for t in rparts[5:] if _id_like(t)]
    else:
        out += _free_text_identifiers(recording_field)
    return out


def _file_identifiers(path: str | os.PathLike) -> list[str]:
    """A study file's name and stem (``SC4011E0-PSG.edf``, ``SC4011E0-PSG``)."""
    p = Path(path)
    return [p.name, p.stem] if p.name else []


def _pattern(identifier: str) -> str:
    """Regex for an identifier whose separators may be spaces, underscores, dashes, dots."""
    parts = [re.escape(p) for p in _SPLIT.split(identifier.strip()) if p]
    return (_SEP + "*").join(parts)


#: Keys of message content blocks and tool payloads whose values are never text to redact.
_OPAQUE_KEYS = frozenset({"type", "id", "tool_call_id", "index", "data", "base64", "image_url",
                          "url", "mime_type", "source_type"})


class Redactor:
    """Replaces a study's identifiers by its study id, in text and in LangChain messages.

    Matching ignores case and treats spaces, underscores, dashes, dots, commas and slashes
    between the parts of an identifier as interchangeable (``Jane_Doe`` also matches ``jane
    doe``, ``JANE-DOE`` and ``JaneDoe``); an identifier only matches as a whole token, never
    inside a longer word or number. The study id itself is never altered. Generic words
    (``female``, ``study``...) and numbers with fewer than five digits are not identifiers, so
    that no clinical number is ever replaced.

    Parameters
    ----------
    study_id : str
        What every identifier becomes (the library's patient id).
    identifiers : iterable of str
        Names, codes, dates and file names to remove.
    """

    def __init__(self, study_id: str, identifiers: Iterable[str] = ()) -> None:
        if not study_id or not str(study_id).strip():
            raise RedactionError("a Redactor needs the study id that replaces identifiers")
        self.study_id = str(study_id)
        study_re = re.compile(re.escape(self.study_id), re.IGNORECASE)
        kept: dict[str, str] = {}
        for ident in identifiers:
            ident = str(ident).strip()
            pattern = _pattern(ident)
            if not pattern or len(ident) < 2:
                continue
            compact = re.sub(_SEP, "", ident)
            if compact.isdigit() and len(compact) < _MIN_DIGITS:
                logger.warning("identifier %r is a short number: not redacted (it could be a "
                               "clinical value)", ident)
                continue
            if ident.casefold() in _STOPWORDS or study_re.fullmatch(ident) or re.fullmatch(
                    pattern, self.study_id, re.IGNORECASE):
                continue
            kept.setdefault(ident.casefold(), ident)
        self._identifiers = tuple(sorted(kept.values(), key=lambda s: (-len(s), s.casefold())))
        self._study_re = study_re
        sid = re.escape(self.study_id)
        self._repeats = re.compile(rf"{sid}(?:[\s_,]+{sid})+")
        if self._identifiers:
            alternation = "|".join(_pattern(i) for i in self._identifiers)
            self._regex: re.Pattern[str] | None = re.compile(
                rf"(?<![^\W_])(?:{alternation})(?![^\W_])", re.IGNORECASE)
        else:
            self._regex = None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_files(cls, study_id: str, files: Iterable[str | os.PathLike],
                   extra: Iterable[str] = ()) -> Redactor:
        """The identifiers of study files: EDF/BDF headers (patient and recording fields) and
        every file's name.

        Raises
        ------
        RedactionError
            An EDF/BDF header cannot be read (nothing may then leave the machine).
        """
        from sleeplm.io.edf import read_edf_header
        from sleeplm.io.reader import SIGNAL_SUFFIXES

        idents = list(extra)
        for f in files:
            if f is None:
                continue
            path = Path(f)
            idents += _file_identifiers(path)
            if path.suffix.lower() in SIGNAL_SUFFIXES:
                try:
                    header = read_edf_header(path, allow_truncated=True)
                except (OSError, ValueError) as exc:
                    raise RedactionError(
                        f"cannot read the header of {path.name} to remove its identifiers "
                        f"({exc}); nothing is sent to a remote LLM. Fix the file or use a "
                        "backend on this machine.") from exc
                idents += header_identifiers(header.patient, header.recording)
        return cls(study_id, idents)

    @classmethod
    def from_recording(cls, recording: Recording, study_id: str,
                       files: Sequence[str | os.PathLike] = ()) -> Redactor:
        """From a Recording's metadata (patient id, source file) plus its files' headers."""
        info = recording.info
        extra = [info.patient_id] if info.patient_id not in ("unknown", "") else []
        if info.source:
            source = info.source.replace("(SIMULATED)", "").strip()
            extra += _file_identifiers(source)
        return cls.from_files(study_id, files, extra)

    @classmethod
    def from_patient(cls, patient: ProcessedPatient) -> Redactor:
        """From a processed patient of the library: its signal and annotation files."""
        study = patient.study
        files = [study.signal_path] + ([study.annotation_path] if study.annotation_path else [])
        return cls.from_files(patient.patient, files)

    @classmethod
    def for_context(cls, ctx: ToolContext | None) -> Redactor | None:
        """The current patient's redactor (memoised in the context), None without a patient."""
        if ctx is None or not getattr(ctx, "patient", None):
            return None
        pid = ctx.require_patient()
        return ctx.memo(("assistant.redactor", pid), lambda: cls.from_patient(ctx.processed()))

    # -- use --------------------------------------------------------------------------------------
    @property
    def identifiers(self) -> tuple[str, ...]:
        """What is removed, longest first."""
        return self._identifiers

    def redact(self, text: str) -> str:
        """``text`` with every identifier replaced by the study id."""
        if self._regex is None or not text:
            return text
        pieces, last = [], 0
        for m in self._study_re.finditer(text):  # never touch the study id itself
            pieces.append(self._regex.sub(self.study_id, text[last:m.start()]))
            pieces.append(m.group(0))
            last = m.end()
        pieces.append(self._regex.sub(self.study_id, text[last:]))
        # "Jane Doe" -> "<id> <id>" -> "<id>"
        return self._repeats.sub(self.study_id, "".join(pieces))

    def _redact_obj(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, Mapping):
            return {k: (v if k in _OPAQUE_KEYS else self._redact_obj(v)) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self._redact_obj(v) for v in obj]
        return obj

    def redact_message(self, message: BaseMessage) -> BaseMessage:
        """A copy of ``message`` with its content, tool-call arguments and extra fields
        redacted."""
        update: dict[str, Any] = {"content": self._redact_obj(message.content),
                                  "additional_kwargs": self._redact_obj(message.additional_kwargs)}
        if isinstance(message, AIMessage):
            update["tool_calls"] = [{**tc, "args": self._redact_obj(tc["args"])}
                                    for tc in message.tool_calls]
            update["invalid_tool_calls"] = [{**tc, "args": self._redact_obj(tc.get("args"))}
                                            for tc in message.invalid_tool_calls]
            if isinstance(message, AIMessageChunk):
                update["tool_call_chunks"] = [{**tc, "args": self._redact_obj(tc.get("args"))}
                                              for tc in message.tool_call_chunks]
        return message.model_copy(update=update)

    def redact_messages(self, messages: Iterable[BaseMessage]) -> list[BaseMessage]:
        """Every message redacted (see :meth:`redact_message`)."""
        return [self.redact_message(m) for m in messages]

    def __repr__(self) -> str:
        return f"Redactor(study_id={self.study_id!r}, {len(self._identifiers)} identifiers)"


class RedactingChatModel(BaseChatModel):
    """A chat model that redacts every message before its inner model sees it.

    Tools bound with :meth:`bind_tools` are bound to the inner model; the answer comes back
    unchanged (it can only mention the study id).

    Attributes
    ----------
    inner : Runnable
        The real chat model (or one with tools bound).
    redactor : Redactor
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: Runnable = Field(description="the chat model that receives redacted messages")
    redactor: Redactor

    @property
    def _llm_type(self) -> str:
        inner = self.inner
        return f"redacting-{getattr(inner, '_llm_type', type(inner).__name__)}"

    def _call_kwargs(self, stop: list[str] | None, run_manager: Any, kwargs: dict) -> dict:
        out = dict(kwargs)
        if stop is not None:
            out["stop"] = stop
        # run_manager is not forwarded: this model's own callbacks already see the call and
        # its tokens; forwarding them would report every token twice
        return out

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
                  ) -> ChatResult:
        answer = self.inner.invoke(self.redactor.redact_messages(messages),
                                   **self._call_kwargs(stop, run_manager, kwargs))
        return ChatResult(generations=[ChatGeneration(message=answer)])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        answer = await self.inner.ainvoke(self.redactor.redact_messages(messages),
                                          **self._call_kwargs(stop, run_manager, kwargs))
        return ChatResult(generations=[ChatGeneration(message=answer)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
                ) -> Iterator[ChatGenerationChunk]:
        for chunk in self.inner.stream(self.redactor.redact_messages(messages),
                                       **self._call_kwargs(stop, run_manager, kwargs)):
            yield ChatGenerationChunk(message=chunk)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in self.inner.astream(self.redactor.redact_messages(messages),
                                              **self._call_kwargs(stop, run_manager, kwargs)):
            yield ChatGenerationChunk(message=chunk)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> RedactingChatModel:
        """The inner model with ``tools`` bound, still behind the redaction."""
        bind = getattr(self.inner, "bind_tools", None)
        if bind is None:
            raise TypeError(f"the wrapped {type(self.inner).__name__} already has tools bound "
                            "or cannot call tools: wrap the bare chat model instead")
        return RedactingChatModel(inner=bind(tools, **kwargs), redactor=self.redactor)


class RedactionMiddleware(AgentMiddleware):
    """Agent middleware that redacts the system message and every message of each model call.

    Parameters
    ----------
    redactor : Redactor or callable, optional
        A fixed redactor, or a function of the runtime context (the
        :class:`~tools.context.ToolContext`) returning the current patient's redactor or None
        (nothing to redact). Default: :meth:`Redactor.for_context`.
    """

    def __init__(self, redactor: Redactor | Callable[[Any], Redactor | None] | None = None
                 ) -> None:
        super().__init__()
        self._redactor = redactor if redactor is not None else Redactor.for_context

    def _for(self, request: Any) -> Redactor | None:
        if isinstance(self._redactor, Redactor):
            return self._redactor
        runtime = getattr(request, "runtime", None)
        return self._redactor(getattr(runtime, "context", None))

    def _redacted(self, request: Any) -> Any:
        red = self._for(request)
        if red is None:
            return request
        system = request.system_message
        return request.override(
            messages=red.redact_messages(request.messages),
            system_message=red.redact_message(system) if system is not None else None)

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        """Call the model with the redacted request."""
        return handler(self._redacted(request))

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        """Async :meth:`wrap_model_call`."""
        return await handler(self._redacted(request))


# ------------------------------------------------------------------ local transformers model

_TOOL_CALL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def _message_dict(m: BaseMessage) -> dict[str, Any]:
    """A LangChain message as a chat-template turn (role, content, tool calls)."""
    if isinstance(m, SystemMessage):
        return {"role": "system", "content": m.text}
    if isinstance(m, HumanMessage):
        return {"role": "user", "content": m.text}
    if isinstance(m, ToolMessage):
        return {"role": "tool", "content": m.text, "tool_call_id": m.tool_call_id}
    if isinstance(m, AIMessage):
        turn: dict[str, Any] = {"role": "assistant", "content": m.text}
        if m.tool_calls:
            turn["tool_calls"] = [{"type": "function", "id": tc.get("id"),
                                   "function": {"name": tc["name"], "arguments": tc["args"]}}
                                  for tc in m.tool_calls]
        return turn
    return {"role": "user", "content": m.text}


def _parse_tool_calls(text: str, names: set[str]) -> tuple[str, list[dict[str, Any]]]:
    """Tool calls written as ``<tool_call>{"name":..., "arguments":...}</tool_call>`` (Hermes,
    Qwen) or as one bare JSON object (Llama 3 ``{"name":..., "parameters":...}``)."""
    blobs = _TOOL_CALL_TAG.findall(text)
    rest = _TOOL_CALL_TAG.sub("", text).strip()
    if not blobs and text.strip().startswith("{"):
        blobs, rest = [text.strip()], ""
    calls = []
    for blob in blobs:
        try:
            obj = json.loads(blob)
        except json.JSONDecodeError:
            logger.warning("local model wrote an unreadable tool call: %.200s", blob)
            continue
        if not isinstance(obj, dict) or obj.get("name") not in names:
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = {}
        calls.append({"name": obj["name"], "args": args if isinstance(args, dict) else {},
                      "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"})
    if blobs and not calls:  # nothing usable: keep the text as the answer
        return text.strip(), []
    return rest, calls


def _check_model_folder(path: Path) -> None:
    """Raise :class:`BackendConfigError` unless ``path`` holds a transformers model."""
    if not (Path(path) / "config.json").is_file():
        raise BackendConfigError(
            f"local_model_path {path} is not a transformers model folder (no config.json "
            "there): point it at a folder saved with save_pretrained, e.g. a downloaded "
            "instruction-tuned model")


class LocalTransformersChatModel(BaseChatModel):
    """A local transformers causal LM as a LangChain chat model (nothing leaves the machine).

    The folder is loaded once, on the first call, with ``local_files_only=True``. Prompts are
    built with the tokenizer's chat template (with the bound tools when the template takes
    them); tool calls are read from ``<tool_call>{...}</tool_call>`` blocks or one bare JSON
    object naming a bound tool.

    Attributes
    ----------
    model_path : pathlib.Path
        Folder with ``config.json``, the weights and the tokenizer (with a chat template).
    max_new_tokens : int
        Tokens generated per answer at most.
    temperature : float
        0 for greedy decoding.
    tools : list of dict
        OpenAI-format schemas of the bound tools.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_path: Path
    max_new_tokens: int = Field(default=512, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    tools: list[dict[str, Any]] = Field(default_factory=list)
    _loaded: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def _llm_type(self) -> str:
        return "local-transformers"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": str(self.model_path), "max_new_tokens": self.max_new_tokens}

    def _load(self) -> tuple[Any, Any]:
        if not self._loaded:
            _check_model_folder(self.model_path)
            try:
                from transformers import AutoModelForCausalLM, AutoTokenizer
            except ImportError as exc:
                raise BackendConfigError("backend 'transformers' needs the transformers "
                                         "package: pip install transformers") from exc
            tok = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
            if not getattr(tok, "chat_template", None):
                raise BackendConfigError(
                    f"the tokenizer at {self.model_path} has no chat template: use an "
                    "instruction-tuned model (its tokenizer_config.json has chat_template)")
            model = AutoModelForCausalLM.from_pretrained(self.model_path, local_files_only=True)
            model.eval()
            self._loaded.update(tokenizer=tok, model=model)
            logger.info("loaded local model %s", self.model_path)
        return self._loaded["tokenizer"], self._loaded["model"]

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
                  ) -> ChatResult:
        import torch

        tok, model = self._load()
        turns = [_message_dict(m) for m in messages]
        inputs = tok.apply_chat_template(turns, tools=self.tools or None,
                                         add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)
        n_prompt = inputs["input_ids"].shape[1]
        sample = self.temperature > 0
        gen_kwargs: dict[str, Any] = {"max_new_tokens": int(kwargs.get("max_tokens",
                                                                       self.max_new_tokens)),
                                      "do_sample": sample}
        if sample:
            gen_kwargs["temperature"] = self.temperature
        if tok.pad_token_id is None and tok.eos_token_id is not None:
            gen_kwargs["pad_token_id"] = tok.eos_token_id
        with torch.inference_mode():
            out = model.generate(**inputs, **gen_kwargs)
        text = tok.decode(out[0, n_prompt:], skip_special_tokens=True)
        for s in stop or ():
            if s and s in text:
                text = text[: text.index(s)]
        names = {t["function"]["name"] for t in self.tools}
        content, calls = _parse_tool_calls(text, names) if names else (text.strip(), [])
        message = AIMessage(content=content, tool_calls=calls,
                            usage_metadata={"input_tokens": n_prompt,
                                            "output_tokens": int(out.shape[1] - n_prompt),
                                            "total_tokens": int(out.shape[1])})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> LocalTransformersChatModel:
        """A copy that offers ``tools`` to the model (the loaded weights are shared)."""
        bound = self.model_copy(update={"tools": [convert_to_openai_tool(t) for t in tools]})
        bound._loaded = self._loaded
        return bound


def redact_writer(writer: Any, ctx: ToolContext) -> Any:
    """The report writer to use for ``ctx``'s patient.

    A writer marked ``sends_off_machine`` (an :class:`~assistant.report.LLMWriter` on a
    backend that is not on this machine) gets its chat model wrapped in a
    :class:`RedactingChatModel` for this patient, so no header identifier leaves; any other
    writer (``None``: the templates, or a local LLM) is returned as it is.

    Raises
    ------
    RedactionError
        The patient's header cannot be read (nothing is sent then).
    """
    if writer is None or not getattr(writer, "sends_off_machine", False):
        return writer
    from assistant.report import LLMWriter

    redactor = Redactor.for_context(ctx)
    if redactor is None:
        raise RedactionError("no patient selected: cannot redact before sending to the LLM")
    return LLMWriter(RedactingChatModel(inner=writer.chat_model, redactor=redactor),
                     name=writer.name)
