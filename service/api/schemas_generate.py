"""Request and response bodies of generation (HTTP and WebSocket) and of gate inspection.

Limits that depend on settings (max_generate_tokens, max_inspect_length, the vocabulary size for top_k) are
enforced by the engine; the bounds here are hard sanity bounds.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from service.api.schemas import (
    HARD_MAX_INPUT,
    SESSION_ID,
    TEXT_DESCRIPTION,
    TOKENS_DESCRIPTION,
    ModelChoice,
    Strict,
    TokenProbability,
)
from service.engine.generation import Finished
from service.engine.sampling import MAX_SEED

HARD_MAX_TOKENS = 100_000
MAX_INSPECT_UNITS = 65_536
GateName = Literal["f", "i", "c_tilde", "o", "c", "h"]
MAX_STOPS = 16
MAX_STOP_LENGTH = 256


class SamplingFields(Strict):
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        le=HARD_MAX_TOKENS,
        description="Most tokens to generate; at most the server's max_generate_tokens (default 100, or that "
        "limit if lower).",
    )
    temperature: float = Field(default=1.0, ge=0, description="Softmax temperature; 0 = greedy (argmax).")
    top_k: int = Field(default=0, ge=0, le=1024, description="Sample among the k most likely tokens only; 0 = off.")
    top_p: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Nucleus sampling: the smallest most-likely-first set reaching this probability; 1 = off.",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Makes the output reproducible: the same state, parameters and seed give the same tokens, "
        "whatever else the server is doing (exactly with the fp32 model; the int8 model's logits move slightly with "
        "what shares its batch, see README). Drawn at random when omitted.",
    )
    stop: list[str] = Field(
        default_factory=list,
        max_length=MAX_STOPS,
        description="Stop strings: generation ends once the text ends with one of them (it is included in the "
        "text: the session has consumed it).",
    )

    @model_validator(mode="after")
    def _stops(self) -> Self:
        if any(not s or len(s) > MAX_STOP_LENGTH for s in self.stop):
            raise ValueError(f"stop strings must have 1 to {MAX_STOP_LENGTH} characters")
        return self


class PromptFields(SamplingFields):
    text: str | None = Field(default=None, min_length=1, max_length=HARD_MAX_INPUT, description=TEXT_DESCRIPTION)
    tokens: list[StrictInt] | None = Field(
        default=None, min_length=1, max_length=HARD_MAX_INPUT, description=TOKENS_DESCRIPTION
    )

    @model_validator(mode="after")
    def _not_both(self) -> Self:
        if self.text is not None and self.tokens is not None:
            raise ValueError("give either 'text' or 'tokens', not both")
        return self


STREAM_DESCRIPTION = (
    'Stream the tokens as server-sent events: `data: {"token", "id", "position"}` per token, '
    "then a final event with finish_reason, text, tokens and position, then `data: [DONE]`."
)


class SessionGenerationFields(PromptFields):
    expected_position: int | None = Field(
        default=None,
        ge=0,
        description="Optimistic concurrency: generate only if the session is at this position, else 409 and "
        "nothing changes.",
    )


class SessionGenerateRequest(SessionGenerationFields):
    """Continue the session: feed the prompt if one is given, then generate; every token advances the session."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "max_tokens": 200,
                    "temperature": 0.8,
                    "top_k": 0,
                    "top_p": 1.0,
                    "seed": 42,
                    "stop": ["\n\n"],
                    "stream": False,
                }
            ]
        }
    )
    stream: bool = Field(default=False, description=STREAM_DESCRIPTION)


class GenerateRequest(PromptFields, ModelChoice):
    """Stateless generation from a zero state: the prompt is required and nothing is stored."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"text": "ROMEO:\n", "max_tokens": 200, "temperature": 0.8, "seed": 42, "stop": ["\n\n"]}]
        }
    )
    stream: bool = Field(default=False, description=STREAM_DESCRIPTION)

    @model_validator(mode="after")
    def _prompt(self) -> Self:
        if self.text is None and self.tokens is None:
            raise ValueError("give a prompt: 'text' or 'tokens'")
        return self


class GenerateResponse(BaseModel):
    text: str = Field(description="The generated text (a stop string that ended it included).")
    tokens: list[int] = Field(description="Its token ids.")
    finish_reason: Literal["length", "stop"] = Field(
        description="length: max_tokens were generated; stop: the text ends with a stop string."
    )
    position: int = Field(description="The session's position after the generation (stateless: prompt + tokens).")

    @classmethod
    def of(cls, result: Finished) -> GenerateResponse:
        return cls(
            text=result.text, tokens=list(result.tokens), finish_reason=result.finish_reason, position=result.position
        )


class TokenEventBody(BaseModel):
    """One streamed token (an SSE event or a WebSocket frame)."""

    token: str = Field(description="The generated character.")
    id: int = Field(description="Its token id.")
    position: int = Field(description="The session's position after it.")


# ---- WebSocket frames ----------------------------------------------------------------------------------------
class GenerateFrame(Strict):
    """`{"generate": {...}}`: answered with token frames, then a final frame (as the SSE events)."""

    generate: SessionGenerationFields = Field(
        description="Generation parameters, and an optional prompt to feed first."
    )


# ---- inspection ----------------------------------------------------------------------------------------------
class InspectRequest(Strict, ModelChoice):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "To be"}]})
    text: str | None = Field(
        default=None,
        min_length=1,
        max_length=HARD_MAX_INPUT,
        description="Characters to feed; at most the server's max_inspect_length.",
    )
    tokens: list[StrictInt] | None = Field(
        default=None, min_length=1, max_length=HARD_MAX_INPUT, description=TOKENS_DESCRIPTION
    )
    top_k: int = Field(default=5, ge=1, le=1024, description="How many of the most likely next tokens to return.")
    # The compact options: a full answer holds layers x 6 x hidden_size floats per character.
    units: (
        Annotated[int, Field(ge=1, le=MAX_INSPECT_UNITS)]
        | list[Annotated[int, Field(ge=0, lt=MAX_INSPECT_UNITS)]]
        | None
    ) = Field(
        default=None,
        description="Only some units of every vector: a number N gives, per layer, the N most active units (the "
        "largest standard deviation of tanh(C) over the input, then the largest mean |C|), most active first; a "
        "list gives those units, in that order. The answer's `units` names them. Omitted: every unit.",
        examples=[16, [3, 141]],
    )
    gates: list[GateName] | None = Field(
        default=None,
        min_length=1,
        description="Only these vectors (the means always cover all six). Omitted: all six.",
        examples=[["f", "i", "o", "c"]],
    )
    precision: int | None = Field(
        default=None, ge=1, le=8, description="Round every value to this many decimal places. Omitted: float32."
    )

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.text is None) == (self.tokens is None):
            raise ValueError("give exactly one of 'text' and 'tokens'")
        if isinstance(self.units, list) and not 1 <= len(self.units) <= MAX_INSPECT_UNITS:
            raise ValueError(f"units: give 1 to {MAX_INSPECT_UNITS} unit indices")
        return self


GATE_MEANS = "Each vector's mean, to see at a glance what the cell kept (f near 1) and forgot (f near 0)."


class GateMeans(BaseModel):
    f: float = Field(description="Mean of the forget gate.")
    i: float = Field(description="Mean of the input gate.")
    c_tilde: float = Field(description="Mean of the candidate.")
    o: float = Field(description="Mean of the output gate.")
    c: float = Field(description="Mean of the cell state.")
    h: float = Field(description="Mean of the hidden state.")


ABSENT = " Absent when the request's `gates` leaves it out."


class LayerGatesBody(BaseModel):
    layer: int = Field(description="0 is the layer that reads the embedding.")
    f: list[float] | None = Field(
        default=None,
        description="Forget gate f = sigmoid(W_f [h_{t-1}, x_t] + b_f): how much of C_{t-1} is kept." + ABSENT,
    )
    i: list[float] | None = Field(
        default=None, description="Input gate i: how much of the candidate is written." + ABSENT
    )
    c_tilde: list[float] | None = Field(
        default=None, description="Candidate c~ = tanh(W_c [h_{t-1}, x_t] + b_c)." + ABSENT
    )
    o: list[float] | None = Field(
        default=None, description="Output gate o: how much of tanh(C_t) becomes h_t." + ABSENT
    )
    c: list[float] | None = Field(default=None, description="Cell state C_t = f * C_{t-1} + i * c~." + ABSENT)
    h: list[float] | None = Field(default=None, description="Hidden state h_t = o * tanh(C_t)." + ABSENT)
    mean: GateMeans = Field(description=GATE_MEANS)


class InspectStep(BaseModel):
    char: str = Field(description="The character fed.")
    id: int = Field(description="Its token id.")
    position: int = Field(description="The position after it.")
    layers: list[LayerGatesBody] = Field(description="Every layer's gates at this character, bottom layer first.")


class InspectResponse(BaseModel):
    session_id: str | None = Field(default=None, description=SESSION_ID + " Absent when stateless.")
    position: int = Field(description="The position after the input.")
    layers: int = Field(description="Stacked LSTM layers.")
    hidden_size: int = Field(description="Units per layer (every vector's length unless `units` was given).")
    units: list[list[int]] | None = Field(
        default=None,
        description="Only when the request gave `units`: per layer, the units every vector holds, in order.",
    )
    steps: list[InspectStep] = Field(description="One entry per character fed, in order.")
    next: list[TokenProbability] = Field(description="The most likely next tokens, most likely first.")
    deviation: dict[str, float] = Field(
        description="Largest absolute difference between the final h, c and logits computed here (float64, from "
        "the weights in the ONNX file) and those ONNX Runtime computed for the served model."
    )
