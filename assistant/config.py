"""The assistant's configuration: which LLM, which library, which limits.

One pydantic model, read from (later wins): its defaults, a JSON or TOML file, the
``SLEEPLM_ASSISTANT_*`` environment variables, then explicit overrides (the CLI flags or the
app's options).

>>> cfg = AssistantConfig.load(backend="openai", base_url="http://127.0.0.1:8080/v1",
...                            model="gemma")                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sleeplm.errors import SleepLMError

__all__ = ["AssistantConfig", "ConfigError", "ENV_PREFIX", "default_state_dir"]

#: Environment variables ``SLEEPLM_ASSISTANT_<FIELD>`` (upper case) set any field.
ENV_PREFIX = "SLEEPLM_ASSISTANT_"

Backend = Literal["offline", "openai", "ollama", "transformers"]


class ConfigError(SleepLMError, ValueError):
    """A configuration file, variable or option that cannot be used."""


def default_state_dir() -> Path:
    """Where conversations and drafts are kept: ``$SLEEPLM_HOME/assistant`` (default
    ``~/.cache/sleeplm/assistant``)."""
    home = os.environ.get("SLEEPLM_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "sleeplm") / "assistant"


class AssistantConfig(BaseModel):
    """Everything the assistant needs besides the patient.

    Attributes
    ----------
    backend : {"offline", "openai", "ollama", "transformers"}
        ``offline`` (default) is the embedded planner: no network, no API key. ``openai`` is
        any OpenAI-compatible server (vLLM, llama.cpp server, hosted APIs) at ``base_url``;
        ``ollama`` an Ollama server; ``transformers`` a local causal LM at
        ``local_model_path``.
    base_url, model : str, optional
        Server address (e.g. ``http://127.0.0.1:8080/v1``) and model name.
    api_key_env : str
        Environment variable holding the API key (local servers need none).
    temperature : float
    timeout_s : float
        Per-request timeout toward a remote LLM, seconds.
    max_retries : int
        Retries of a failed model call (network errors, rate limits).
    max_tool_calls, max_model_calls : int
        Per question: the agent stops with a clear message past these.
    library : pathlib.Path, optional
        The patient library folder (``None``: the example patients).
    state_dir : pathlib.Path
        Conversations (SQLite), report drafts and figures.
    local_model_path : pathlib.Path, optional
        Folder of a transformers model (``backend="transformers"``), loaded with
        ``local_files_only``.
    router_threshold : float
        Cosine similarity below which the offline planner says it did not understand.
    time_budget_s : float
        Per question with an LLM backend: past this many seconds the offline planner answers
        instead (checked before every model and tool call and when the model asks for more
        tools; one model call is bounded by ``timeout_s``).
    fallback : bool
        With an LLM backend, let the offline planner answer a question the LLM could not (no
        tool call where one was needed, an unreadable tool call, failed or looping tool calls,
        a failed model call, the time budget). ``False``: such a question stops with a message.
    max_repeats : int
        Identical tool calls (same tool, same arguments) in one question are not run again;
        after this many blocked repeats the loop stops.
    max_tool_errors : int
        Failed tool calls in one question before the fallback answers.
    compact_tools : bool
        For LLMs with small context windows (4k tokens): short tool descriptions and argument
        schemas, and tool results cut to ``compact_result_chars`` in what the LLM reads (the
        user still sees every result in full).
    compact_history_chars : int
        In compact mode, characters of earlier questions' messages the LLM reads: the most
        recent whole questions that fit (their tool calls and results together); older ones
        are left out of what the LLM reads (the stored conversation keeps them). 0 = all.
    compact_result_chars : int
        Characters of a tool result of the current question the LLM reads in compact mode
        (a quarter of that for earlier questions).
    shortlist_tools : int
        For small LLMs (1-3 B parameters), which pick the wrong tool among many: offer the LLM
        only this many tools, those the offline planner ranks first for the question, with the
        planner's proposed first call as a hint after the question (the LLM may follow it
        or not; see :class:`~assistant.planner.ToolShortlist`). Needs ``fallback``. 0 (the
        default) = every tool, no hint. ``demo.py --gguf`` uses 4.
    report_budget_s : float or None
        Seconds the LLM may spend writing one report draft; the remaining sections are then
        written from the templates (the report records it). None (default): no limit;
        ``demo.py --gguf`` uses 120.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backend: Backend = "offline"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    max_tool_calls: int = Field(default=8, ge=1, le=100)
    max_model_calls: int = Field(default=12, ge=1, le=200)
    library: Path | None = None
    state_dir: Path = Field(default_factory=default_state_dir)
    local_model_path: Path | None = None
    router_threshold: float = Field(default=0.35, ge=0.0, le=1.0)
    time_budget_s: float = Field(default=120.0, gt=0)
    fallback: bool = True
    max_repeats: int = Field(default=2, ge=1, le=20)
    max_tool_errors: int = Field(default=2, ge=1, le=50)
    compact_tools: bool = False
    compact_result_chars: int = Field(default=1200, ge=200, le=100_000)
    compact_history_chars: int = Field(default=2400, ge=0, le=1_000_000)
    shortlist_tools: int = Field(default=0, ge=0, le=50)
    report_budget_s: float | None = Field(default=None, gt=0)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
        return v.rstrip("/") if v else v

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, env: dict[str, str] | None = None,
             **overrides: Any) -> "AssistantConfig":
        """Defaults, then the file at ``path`` (JSON or TOML), then ``SLEEPLM_ASSISTANT_*``
        variables, then ``overrides`` (``None`` values are ignored).

        Raises
        ------
        ConfigError
            An unreadable file, an unknown field or an invalid value (the message names it).
        """
        data: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            try:
                text = p.read_text(encoding="utf-8")
                data.update(tomllib.loads(text) if p.suffix.lower() == ".toml"
                            else json.loads(text))
            except FileNotFoundError:
                raise ConfigError(f"assistant config file {p} does not exist") from None
            except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"assistant config file {p} is not valid "
                                  f"{'TOML' if p.suffix.lower() == '.toml' else 'JSON'}: "
                                  f"{exc}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"assistant config file {p} must hold an object of fields")
        env = os.environ if env is None else env
        for key, value in env.items():
            if key.startswith(ENV_PREFIX):
                data[key[len(ENV_PREFIX):].lower()] = value
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "config"
            raise ConfigError(f"assistant configuration: {where}: {first['msg']} "
                              f"(fields: {', '.join(cls.model_fields)})") from None

    @property
    def memory_path(self) -> Path:
        """The SQLite file of the per-patient conversations."""
        return self.state_dir / "conversations.sqlite"
