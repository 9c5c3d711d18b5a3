"""Generation: POST /v1/sessions/{id}/generate continues a session, POST /v1/generate starts from a prompt alone.

Both answer the whole generation at once, or stream it as server-sent events with `"stream": true`. Every
concurrent generation advances in the engine's shared batches, one token per stream per batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Response

from service.api.access import CallerDep, SessionId
from service.api.deps import GeneratorDep, ModelsDep, SettingsDep
from service.api.errors import responses
from service.api.schemas_generate import (
    GenerateRequest,
    GenerateResponse,
    SamplingFields,
    SessionGenerateRequest,
)
from service.api.sse import SSE_RESPONSES, event_stream
from service.engine.generation import Finished, GenerationParams, Generator, Plan, Token

router = APIRouter(tags=["generation"])


class NativeEvents:
    """The native stream: `{"token", "id", "position"}` per token, then the final result."""

    def token(self, token: Token) -> Iterable[dict[str, Any]]:
        # TokenEventBody's fields, written directly: this runs once per streamed token.
        return [{"token": token.token, "id": token.id, "position": token.position}]

    def finished(self, result: Finished) -> Iterable[dict[str, Any]]:
        return [GenerateResponse.of(result).model_dump()]


def sampling_params(generator: Generator, fields: SamplingFields) -> GenerationParams:
    """The request's sampling fields checked against the model and the server's limits (InvalidInput if not)."""
    return generator.params(
        max_tokens=fields.max_tokens,
        temperature=fields.temperature,
        top_k=fields.top_k,
        top_p=fields.top_p,
        seed=fields.seed,
        stop=fields.stop,
    )


async def _answer(generator: Generator, plan: Plan, stream: bool, settings: SettingsDep) -> Response | GenerateResponse:
    if stream:
        return event_stream(generator.stream_groups(plan), NativeEvents(), settings.shutdown_grace_s)
    return GenerateResponse.of(await generator.run(plan))


@router.post(
    "/v1/sessions/{id}/generate",
    response_model=GenerateResponse,
    responses={**SSE_RESPONSES, **responses(400, 404, 409, 413, 422)},
)
async def session_generate(
    session_id: SessionId,
    body: SessionGenerateRequest,
    generator: GeneratorDep,
    settings: SettingsDep,
    caller: CallerDep,
) -> Response | GenerateResponse:
    """Generate from the session's state (feeding `text` or `tokens` first if given). The generated tokens advance
    the session: it remembers what it wrote, and its position grows by one per token. A streaming client that
    disconnects stops the generation at once, and the session keeps exactly the tokens that were sent. With
    `expected_position` it runs only if the session is there (409 if not)."""
    plan = await generator.prepare(
        sampling_params(generator, body),
        session_id=session_id,
        text=body.text,
        tokens=body.tokens,
        expected_position=body.expected_position,
        owner=caller,
    )
    return await _answer(generator, plan, body.stream, settings)


@router.post(
    "/v1/generate", response_model=GenerateResponse, responses={**SSE_RESPONSES, **responses(400, 404, 413, 422)}
)
async def generate(
    body: GenerateRequest, registry: ModelsDep, settings: SettingsDep, caller: CallerDep
) -> Response | GenerateResponse:
    """Stateless generation: feed the prompt from a zero state and generate; nothing is stored. `model` and
    `version` choose the model (default: the default model's latest version)."""
    generator = registry.resolve(body.model, body.version).generator
    plan = await generator.prepare(sampling_params(generator, body), text=body.text, tokens=body.tokens, owner=caller)
    return await _answer(generator, plan, body.stream, settings)
