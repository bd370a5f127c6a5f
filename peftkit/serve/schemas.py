"""Request bodies (pydantic). Limits that depend on the server's flags (inputs per request, text
length, max_new_tokens) are checked by the app, which names the limit in its 413/422 error.
Unknown fields are ignored, so OpenAI clients that send more than peftkit reads work unchanged."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PredictRequest(_Body):
    """``inputs``: texts; for a sentence-pair classifier also pairs, ``[a, b]`` or ``{"text": a, "text_pair": b}``
    (the adapter's task reads them: `peftkit.tasks.Task.parse_input`)."""

    adapter: str
    inputs: list[str | list[str] | dict[str, str]] = Field(min_length=1)
    max_new_tokens: int | None = Field(default=None, ge=1)


class LoadAdapterRequest(_Body):
    name: str
    path: str


class CompletionRequest(_Body):
    """OpenAI ``/v1/completions``; ``model`` names the adapter. Decoding is greedy: sampling
    fields (temperature, top_p, ...) are accepted and ignored."""

    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False


class ChatMessage(_Body):
    role: str
    content: str


class ChatCompletionRequest(_Body):
    """OpenAI ``/v1/chat/completions``: one user message (the layout peftkit's SFT trains)."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
