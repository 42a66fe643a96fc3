"""Where a run's prompts come from (`prompts` in the config): one prompt, or a dataset's first N, each
searched exactly as given or refused."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import field_validator, model_validator

from ttsf_core.config_base import _Frozen

DEFAULT_DATASET = "data-is-better-together/open-image-preferences-v1-binarized"
MAX_PROMPT_CHARS = 20_000  # a T5 encoder reads 512 tokens (~2-3k characters); beyond this is not a prompt
# Control characters a prompt cannot carry (NUL, escape codes): tab, line feed and carriage return can.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
PROMPT_ALLOWED = "a non-empty text without control characters (tabs and line breaks are kept as they are)"


def prompt_problem(text: str) -> str | None:
    """Why `text` cannot be searched as it is (None: it can). A prompt is never changed: it is searched
    exactly as given, or refused."""
    if not text.strip():
        return "it is blank"
    control = _CONTROL.search(text)
    if control is not None:
        return f"it holds the control character {control.group()!r} at character {control.start()}"
    if len(text) > MAX_PROMPT_CHARS:
        return f"it has {len(text)} characters, over {MAX_PROMPT_CHARS}"
    return None


class PromptSource(_Frozen):
    """Where prompts come from: one `prompt`, or the first `num_prompts` of a dataset."""

    prompt: str | None = None
    dataset: str = DEFAULT_DATASET
    dataset_split: str = "train"
    prompt_column: str = "prompt"
    num_prompts: int | Literal["all"] | None = 2

    @model_validator(mode="before")
    @classmethod
    def _one_prompt_has_no_count(cls, data: Any) -> Any:
        # One prompt is not a dataset: its count is None unless given (and then refused below).
        if isinstance(data, dict) and data.get("prompt") is not None and "num_prompts" not in data:
            return {**data, "num_prompts": None}
        return data

    @field_validator("prompt")
    @classmethod
    def _prompt_searchable(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"allowed: a text of at most {MAX_PROMPT_CHARS} characters")
        if prompt_problem(value) is not None:
            raise ValueError(f"allowed: {PROMPT_ALLOWED}")
        return value

    @field_validator("num_prompts", mode="before")
    @classmethod
    def _num_prompts(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("none", "null", ""):
                return None
            if text == "all":
                return "all"
            if text.isdigit():
                value = int(text)
            else:
                raise ValueError("allowed: a positive integer or 'all'")
        if isinstance(value, bool) or (isinstance(value, int) and value < 1):
            raise ValueError("allowed: a positive integer or 'all'")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "PromptSource":
        if self.prompt is not None and self.num_prompts is not None:
            raise ValueError(f"num_prompts: received {self.num_prompts!r} together with a prompt, allowed: no count "
                             "with --prompt (or None); a count selects dataset prompts")
        if self.prompt is None and self.num_prompts is None:
            raise ValueError("num_prompts: received None, allowed: a positive integer or 'all' (None only together "
                             "with --prompt)")
        return self


