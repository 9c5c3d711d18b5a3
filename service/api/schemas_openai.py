"""The OpenAI completions API's bodies (POST /v1/completions, GET /v1/models), as far as a character LSTM can honour
them; options it cannot honour are refused by name rather than ignored."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from service.api.schemas import Strict
from service.api.schemas_generate import HARD_MAX_TOKENS, MAX_STOP_LENGTH
from service.engine.sampling import MAX_SEED

OPENAI_DEFAULT_MAX_TOKENS = 16  # the API's own default
MAX_OPENAI_STOPS = 4


class StreamOptions(Strict):
    include_usage: bool = Field(default=False, description="Send a last chunk with the token usage.")


class CompletionRequest(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "shakespeare-lstm",
                    "prompt": "ROMEO:\n",
                    "max_tokens": 100,
                    "temperature": 0.8,
                    "stream": True,
                },
                {
                    "model": "shakespeare-lstm",
                    "prompt": " and",
                    "max_tokens": 50,
                    "session_id": "q3Jx0b1s8T1nZq4lJYd2xA",
                },
            ]
        }
    )

    model: str = Field(description="The served model's name (GET /v1/models).")
    prompt: str | list[str] | list[StrictInt] = Field(
        default="", description="Text (or token ids) to feed before generating; one prompt per request."
    )
    max_tokens: int | None = Field(
        default=OPENAI_DEFAULT_MAX_TOKENS,
        ge=1,
        le=HARD_MAX_TOKENS,
        description="Most tokens to generate (at most the server's max_generate_tokens).",
    )
    temperature: float | None = Field(default=1.0, ge=0, description="0 = greedy.")
    top_p: float | None = Field(default=1.0, gt=0, le=1, description="Nucleus sampling; 1 = off.")
    n: int | None = Field(default=1, ge=1, le=1, description="Only 1.")
    stream: bool | None = Field(default=False, description="Stream `data:` chunks, then `data: [DONE]`.")
    stream_options: StreamOptions | None = Field(default=None, description="Streaming options.")
    stop: str | list[str] | None = Field(
        default=None, description="Up to 4 stop strings; the returned text ends before the one that matched."
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Makes the completion reproducible.")
    echo: bool | None = Field(default=False, description="Not supported (only false).")
    logprobs: int | None = Field(default=None, description="Not supported (only null or 0).")
    best_of: int | None = Field(default=None, ge=1, le=1, description="Only 1.")
    presence_penalty: float | None = Field(default=0.0, description="Not supported (only 0).")
    frequency_penalty: float | None = Field(default=0.0, description="Not supported (only 0).")
    logit_bias: dict[str, float] | None = Field(default=None, description="Not supported (only empty).")
    suffix: str | None = Field(default=None, description="Not supported (only null).")
    user: str | None = Field(default=None, max_length=256, description="Accepted and ignored.")
    # lstm-serve extensions
    session_id: str | None = Field(
        default=None,
        max_length=256,
        description="Continue this session (POST /v1/sessions) instead of starting fresh: the prompt and the "
        "completion advance it, stop string included.",
    )
    top_k: int = Field(default=0, ge=0, le=1024, description="Sample among the k most likely tokens; 0 = off.")

    @model_validator(mode="after")
    def _supported(self) -> Self:
        unsupported = [
            name
            for name, ok in (
                ("echo", not self.echo),
                ("logprobs", not self.logprobs),
                ("presence_penalty", not self.presence_penalty),
                ("frequency_penalty", not self.frequency_penalty),
                ("logit_bias", not self.logit_bias),
                ("suffix", self.suffix is None),
            )
            if not ok
        ]
        if unsupported:
            raise ValueError(f"not supported by this server: {', '.join(unsupported)}")
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) != 1:
            raise ValueError("one prompt per request")
        if any(not s or len(s) > MAX_STOP_LENGTH for s in self.stops()):
            raise ValueError(f"stop strings must have 1 to {MAX_STOP_LENGTH} characters")
        if len(self.stops()) > MAX_OPENAI_STOPS:
            raise ValueError(f"at most {MAX_OPENAI_STOPS} stop strings")
        return self

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def prompt_input(self) -> tuple[str | None, list[int] | None]:
        """(text, tokens) to feed; both None for an empty prompt (continue the session, or start from zeros)."""
        if isinstance(self.prompt, str):
            return (self.prompt or None), None
        if self.prompt and isinstance(self.prompt[0], str):
            return (str(self.prompt[0]) or None), None
        return None, ([int(t) for t in self.prompt] or None)


class CompletionChoice(BaseModel):
    text: str = Field(description="The completion (streamed: the next piece of it), without the stop string.")
    index: int = Field(default=0, description="Always 0: one completion per request.")
    logprobs: None = Field(default=None, description="Always null.")
    finish_reason: Literal["length", "stop"] | None = Field(
        description="length: max_tokens reached; stop: a stop string matched; null in all but the last chunk."
    )


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens (characters) of the prompt fed.")
    completion_tokens: int = Field(description="Tokens generated, a stop string included.")
    total_tokens: int = Field(description="Their sum.")


class Completion(BaseModel):
    """A completion, or one chunk of a streamed one (same shape; `usage` only where asked for)."""

    id: str = Field(description="Identifies the completion; every chunk of a stream carries the same one.")
    object: Literal["text_completion"] = Field(default="text_completion", description="Always text_completion.")
    created: int = Field(description="Unix time the completion started.")
    model: str = Field(description="The model that completed.")
    system_fingerprint: str = Field(description="The model's weight fingerprint: with a seed, same output.")
    choices: list[CompletionChoice] = Field(description="One choice (none in the streamed usage chunk).")
    usage: Usage | None = Field(default=None, description="Token counts (streamed: only if asked for).")


class ModelVersionCard(BaseModel):
    version: str = Field(description="The version (a repository's folder number).")
    state: str = Field(description="READY, or UNLOADING: unloaded, still serving its sessions until they end.")
    sessions: int | None = Field(default=None, description="Sessions pinned to this version now.")
    fingerprint: str = Field(description="SHA-256 over the version's weights.")


class ModelCard(BaseModel):
    id: str = Field(description="The model's name, for `model` in requests.")
    object: Literal["model"] = Field(default="model", description="Always model.")
    created: int = Field(description="Unix time of the model file.")
    owned_by: str = Field(default="lstm-serve", description="Always lstm-serve.")
    versions: list[ModelVersionCard] = Field(
        default_factory=list, description="The versions loaded (the latest serves requests naming no version)."
    )


class ModelList(BaseModel):
    object: Literal["list"] = Field(default="list", description="Always list.")
    data: list[ModelCard] = Field(description="The served models.")
