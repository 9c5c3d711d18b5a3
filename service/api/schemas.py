"""Every request and response body of the HTTP API, with limits, descriptions and examples for /docs.

Limits that depend on settings (text length, TTL) are enforced by the engine; the bounds here are hard sanity
bounds so that no input, however large, gets far.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from service.engine.state_io import PortableState
from service.engine.topk import TokenProb
from service.state.store import SessionRecord

HARD_MAX_INPUT = 1_000_000
MAX_TOP_K = 1024

TEXT_DESCRIPTION = (
    "Characters to feed, every one in the model's vocabulary (GET /v1/model). At most the server's "
    "max_text_length. Give `text` or `tokens`, not both."
)
TOKENS_DESCRIPTION = "Token ids to feed instead of text, each in [0, vocab_size)."
TOP_K_DESCRIPTION = "How many of the most likely next tokens to return; above the vocabulary size returns all."


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


class Strict(BaseModel):
    # Unknown fields are refused (422) rather than ignored: a typo such as "topk" must not pass silently.
    model_config = ConfigDict(extra="forbid")


# ---- errors ------------------------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str = Field(
        description="Stable machine-readable code, e.g. session_not_found, invalid_token.", examples=["invalid_token"]
    )
    message: str = Field(
        description="What went wrong, for humans.",
        examples=["character 'é' (U+00E9) at position 3 is not in the vocabulary"],
    )
    details: dict[str, Any] | None = Field(
        default=None,
        description="Structured facts about the error when there are any (e.g. char and position).",
        examples=[{"char": "é", "position": 3}],
    )


class ErrorResponse(BaseModel):
    """Every error has this shape, whatever the status code."""

    error: ErrorDetail = Field(description="What went wrong.")


# ---- shared ------------------------------------------------------------------------------------------------
class TokenProbability(BaseModel):
    token: str = Field(description="The next character.", examples=["e"])
    id: int = Field(description="Its token id.", examples=[7])
    prob: float = Field(description="Its probability under the model, in [0, 1].", examples=[0.91])

    @classmethod
    def of(cls, tp: TokenProb) -> TokenProbability:
        return cls(token=tp.token, id=tp.id, prob=tp.prob)


class InputFields(Strict):
    text: str | None = Field(default=None, min_length=1, max_length=HARD_MAX_INPUT, description=TEXT_DESCRIPTION)
    tokens: list[StrictInt] | None = Field(
        default=None, min_length=1, max_length=HARD_MAX_INPUT, description=TOKENS_DESCRIPTION
    )
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K, description=TOP_K_DESCRIPTION)

    @model_validator(mode="after")
    def _not_both(self) -> Self:
        if self.text is not None and self.tokens is not None:
            raise ValueError("give either 'text' or 'tokens', not both")
        return self


class ModelChoice(BaseModel):
    """Which model (and version) new work runs on, with a model repository; sessions keep theirs for life."""

    model: str | None = Field(
        default=None, max_length=256, description="The model's name (GET /v1/models); default: the default model."
    )
    version: int | str | None = Field(
        default=None, description="The model's version; default: its latest loaded version."
    )


class RequiredInput(InputFields):
    @model_validator(mode="after")
    def _one(self) -> Self:
        if self.text is None and self.tokens is None:
            raise ValueError("give 'text' or 'tokens'")
        return self


# ---- stateless prediction ----------------------------------------------------------------------------------
class PredictRequest(RequiredInput, ModelChoice):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "To be, or not to ", "top_k": 5}]})


class PredictResponse(BaseModel):
    next: list[TokenProbability] = Field(description="The most likely next tokens, most likely first.")
    position: int = Field(description="Tokens consumed (the length of the input).", examples=[17])


# ---- state export / import ---------------------------------------------------------------------------------
class SessionState(Strict):
    """A session's LSTM state, portable between servers running the same model."""

    model_fingerprint: str = Field(
        description="Fingerprint of the weights the state belongs to (GET /v1/model).", examples=["sha256:3f1c..."]
    )
    position: int = Field(
        ge=0, description="Tokens the session had consumed (a restored one: at most 2**50).", examples=[17]
    )
    shape: list[int] = Field(
        min_length=2, max_length=2, description="Shape of h and of c each: [layers, hidden].", examples=[[2, 512]]
    )
    dtype: str = Field(description="Element type; always float32.", examples=["float32"])
    h: str = Field(description="Hidden state h: base64 of little-endian float32, row-major [layers, hidden].")
    c: str = Field(description="Cell state C: base64 of little-endian float32, row-major [layers, hidden].")

    @classmethod
    def of(cls, s: PortableState) -> SessionState:
        return cls(
            model_fingerprint=s.model_fingerprint, position=s.position, shape=list(s.shape), dtype=s.dtype, h=s.h, c=s.c
        )

    def portable(self) -> PortableState:
        shape = (self.shape[0], self.shape[1])
        return PortableState(self.model_fingerprint, self.position, shape, self.dtype, self.h, self.c)


# ---- sessions ----------------------------------------------------------------------------------------------
TTL_DESCRIPTION = "Idle seconds before the session expires (default: the server's session_ttl_s)."


class CreateSessionRequest(InputFields, ModelChoice):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{}, {"text": "ROMEO:\n", "top_k": 3}, {"ttl_seconds": 600}]}
    )
    ttl_seconds: float | None = Field(default=None, gt=0, description=TTL_DESCRIPTION)
    state: SessionState | None = Field(
        default=None,
        description="Restore an exported state (GET /v1/sessions/{id}/state) instead of starting from zeros; "
        "refused unless it belongs to the loaded model. `text`/`tokens`, if given, are fed after it.",
    )


class SessionCreated(BaseModel):
    session_id: str = Field(
        description="Id of the new session (128 random bits: keep it secret).", examples=["q3Jx0b1s8T1nZq4lJYd2xA"]
    )
    position: int = Field(description="Tokens consumed so far.", examples=[0])
    expires_at: datetime = Field(description="When the session expires if left idle (UTC).")
    next: list[TokenProbability] | None = Field(
        default=None, description="Only when `text` or `tokens` primed the session: the most likely next tokens."
    )
    model: str | None = Field(default=None, description="The model the session runs on, for its whole life.")
    version: str | None = Field(default=None, description="The model version the session is pinned to.")

    @classmethod
    def of(cls, r: SessionRecord, nxt: list[TokenProb] | None, model: tuple[str, str] | None = None) -> SessionCreated:
        return cls(
            session_id=r.session_id,
            position=r.position,
            expires_at=utc(r.expires_at),
            next=None if nxt is None else [TokenProbability.of(t) for t in nxt],
            model=None if model is None else model[0],
            version=None if model is None else model[1],
        )


class SessionPredictRequest(RequiredInput):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"text": "To be, or not to ", "top_k": 5}, {"text": "be", "expected_position": 17}]
        }
    )
    expected_position: int | None = Field(
        default=None,
        ge=0,
        description="Optimistic concurrency: apply only if the session is at this position, else 409 and nothing "
        "changes.",
    )


SESSION_FIELDS = frozenset(SessionPredictRequest.model_fields)


@dataclass(frozen=True, slots=True)
class PlainPredict:
    """A session predict body that plainly passes SessionPredictRequest's validation, as it would come out."""

    text: str | None
    tokens: list[int] | None
    top_k: int
    expected_position: int | None


def _int_in(value: object, low: int, high: int | None = None) -> bool:
    # Exactly int: pydantic's lax mode would turn 5.0, "5" or True into 5; those take FastAPI's path instead.
    return type(value) is int and low <= value and (high is None or value <= high)


def _plain_text(text: object) -> bool:
    return type(text) is str and 1 <= len(text) <= HARD_MAX_INPUT


def _plain_tokens(tokens: object) -> bool:
    # StrictInt: exactly int (a bool is refused by pydantic too, and takes FastAPI's path).
    return type(tokens) is list and 1 <= len(tokens) <= HARD_MAX_INPUT and all(type(t) is int for t in tokens)


def plain_session_predict(data: object) -> PlainPredict | None:
    """The parsed JSON body as SessionPredictRequest would validate it, when it plainly passes: a JSON object of
    its fields only, each of its exact type and within its bounds, one of `text` or `tokens`. None for anything
    else, valid or not: that body goes through FastAPI, whose validation (errors included) stays the reference.
    Keep in step with SessionPredictRequest (tests/service/api/test_fast_predict.py checks the two agree)."""
    if type(data) is not dict or not data.keys() <= SESSION_FIELDS:
        return None
    text, tokens = data.get("text"), data.get("tokens")
    top_k, expected = data.get("top_k", 5), data.get("expected_position")
    if not _int_in(top_k, 1, MAX_TOP_K) or not (expected is None or _int_in(expected, 0)):
        return None
    plain_input = _plain_tokens(tokens) if text is None else tokens is None and _plain_text(text)
    if not plain_input:
        return None
    return PlainPredict(text, tokens, top_k, expected)


SESSION_ID = "The session's id."


class SessionPredictResponse(BaseModel):
    session_id: str = Field(description=SESSION_ID)
    position: int = Field(description="Tokens the session has consumed, this request's included.")
    expires_at: datetime = Field(description="When the session expires if left idle (UTC).")
    next: list[TokenProbability] = Field(description="The most likely next tokens, most likely first.")


class SessionInfo(BaseModel):
    session_id: str = Field(description=SESSION_ID)
    position: int = Field(description="Tokens consumed since creation or the last reset.")
    created_at: datetime = Field(description="When the session was created (UTC).")
    last_used_at: datetime = Field(description="When a request last changed the session (UTC).")
    expires_at: datetime = Field(description="When the session expires if left idle (UTC).")
    ttl_seconds: float = Field(description="Idle seconds after which the session expires.")
    model: str | None = Field(default=None, description="The model the session runs on, for its whole life.")
    version: str | None = Field(default=None, description="The model version the session is pinned to.")

    @classmethod
    def of(cls, r: SessionRecord, model: tuple[str, str] | None = None) -> SessionInfo:
        return cls(
            session_id=r.session_id,
            position=r.position,
            created_at=utc(r.created_at),
            last_used_at=utc(r.last_used_at),
            expires_at=utc(r.expires_at),
            ttl_seconds=r.ttl_s,
            model=None if model is None else model[0],
            version=None if model is None else model[1],
        )


class ForkRequest(Strict):
    ttl_seconds: float | None = Field(default=None, gt=0, description="TTL of the new session (default: the source's).")


class ForkResponse(SessionInfo):
    forked_from: str = Field(description="The session whose state was copied.")


# ---- model and health --------------------------------------------------------------------------------------
class BatchingInfo(BaseModel):
    max_batch_size: int = Field(description="Most work items in one ONNX Runtime batch.")
    max_batch_delay_ms: float = Field(description="Longest a work item waits for others to share its batch.")


class SessionsInfo(BaseModel):
    backend: str = Field(description="Where session states live: memory or redis.")
    active: int = Field(description="Sessions held now.")
    max_sessions: int = Field(description="Most sessions held at once; beyond it, idle ones are evicted or 429.")
    default_ttl_seconds: float = Field(description="TTL of a session created without ttl_seconds.")
    max_ttl_seconds: float = Field(description="Largest ttl_seconds accepted.")
    state_bytes: int = Field(description="Raw bytes of one session's state: layers x 2 x hidden x 4.")
    evicted: dict[str, int] = Field(description="Sessions removed so far by reason: ttl, capacity, deleted.")


class LimitsInfo(BaseModel):
    max_text_length: int = Field(description="Most characters or token ids one request may feed.")
    max_request_bytes: int = Field(description="Largest request body accepted (413 above).")


class ModelInfo(BaseModel):
    name: str = Field(description="Model name from the ONNX metadata.")
    version: str = Field(description="Model version from the ONNX metadata.")
    fingerprint: str = Field(description="SHA-256 over the weights; exported states carry it.")
    val_loss: float | None = Field(description="Validation loss in nats per character, when recorded.")
    vocabulary: str = Field(description="Every character the model knows, in token-id order.")
    vocab_size: int = Field(description="Characters in the vocabulary.")
    embed_size: int = Field(description="Embedding width.")
    layers: int = Field(description="Stacked LSTM layers.")
    hidden_size: int = Field(description="Units per layer; a session's state is layers x 2 x hidden_size floats.")
    peephole: bool = Field(description="Whether the cells have peephole connections.")
    precision: str = Field(
        default="fp32", description="fp32, or int8 for a dynamically quantized artifact (LSTM weights in int8)."
    )
    provider: str = Field(description="ONNX Runtime execution provider in use: cpu or cuda.")
    batching: BatchingInfo = Field(description="Dynamic batching settings.")
    sessions: SessionsInfo = Field(description="Session store state and settings.")
    limits: LimitsInfo = Field(description="Request limits.")


class Status(BaseModel):
    status: str = Field(description="ok (liveness) or ready (readiness).", examples=["ok"])
