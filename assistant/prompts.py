"""The assistant's prompts: text files in ``prompts/`` at the repository root.

Prompts are data, not strings buried in code: a clinician or prompt engineer edits
``prompts/<name>.txt`` and nothing else. ``$SLEEPLM_PROMPTS`` points at another folder.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from sleeplm.errors import SleepLMError

__all__ = ["PromptNotFoundError", "load_prompt", "prompts_dir"]

_NAME = re.compile(r"^[a-z0-9_]{1,64}$")


class PromptNotFoundError(SleepLMError, FileNotFoundError):
    """A prompt file that is not there."""


def prompts_dir() -> Path:
    """``$SLEEPLM_PROMPTS`` or the ``prompts/`` folder next to the ``assistant`` package."""
    env = os.environ.get("SLEEPLM_PROMPTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "prompts"


@functools.lru_cache(maxsize=64)
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def load_prompt(name: str) -> str:
    """The text of ``prompts/<name>.txt``, stripped.

    Raises
    ------
    PromptNotFoundError
        No such prompt (the message lists those there).
    ValueError
        A name that is not lower-case letters, digits and underscores.
    """
    if not _NAME.match(name):
        raise ValueError(f"prompt name {name!r}: use lower-case letters, digits and '_'")
    path = prompts_dir() / f"{name}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in prompts_dir().glob("*.txt"))
        raise PromptNotFoundError(f"no prompt {path}; prompts there: {have}")
    return _read(path)
