"""OpenAI-compatible completions: POST /v1/completions and GET /v1/models, so that the official openai client (and
tools built on it) can complete and stream from the LSTM. An extra body field, `session_id`, continues a session.

Stop strings follow OpenAI: the returned text ends before the stop string that matched (a continued session has
consumed it all the same). While streaming, text that could be the start of a stop string is held back until it
is known not to be one, so a client never sees part of a stop string.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import APIRouter, Request, Response

from service.api.access import CallerDep, check_owner
from service.api.deps import ModelsDep, RegistryDep, SettingsDep
from service.api.errors import responses
from service.api.schemas_openai import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    ModelVersionCard,
    Usage,
)
from service.api.sse import SSE_RESPONSES, event_stream
from service.engine.generation import Finished, Token
from service.errors import EngineError, UnknownModel

router = APIRouter(tags=["openai"])


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that a stop string starts with: it may yet become that stop, or is one
    (the generation then ends, and `finished` drops it)."""
    longest = min(len(text), max((len(s) for s in stops), default=0))
    for n in range(longest, 0, -1):
        if any(s.startswith(text[-n:]) for s in stops):
            return n
    return 0


def _without_stop(text: str, result: Finished) -> str:
    if result.finish_reason == "stop" and result.stop and text.endswith(result.stop):
        return text[: len(text) - len(result.stop)]
    return text


def _usage(result: Finished) -> Usage:
    generated = len(result.tokens)
    return Usage(
        prompt_tokens=result.prompt_tokens, completion_tokens=generated, total_tokens=result.prompt_tokens + generated
    )


class CompletionChunks:
    """One completion's answer: whole (`completion`), or as stream chunks (`token`, `finished`)."""

    def __init__(self, *, model: str, fingerprint: str, stops: Sequence[str], include_usage: bool) -> None:
        self._head: dict[str, Any] = {
            "id": f"cmpl-{secrets.token_hex(12)}",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": fingerprint,
        }
        self._stops = tuple(stops)
        self._include_usage = include_usage
        self._pending = ""  # generated text not sent yet: it may be the start of a stop string

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
        return Completion(**self._head, choices=choices, usage=usage)

    def completion(self, result: Finished) -> Completion:
        text = _without_stop(result.text, result)
        return self._chunk([CompletionChoice(text=text, finish_reason=result.finish_reason)], _usage(result))

    def token(self, token: Token) -> Iterable[dict[str, Any]]:
        self._pending += token.token
        ready = len(self._pending) - _held_back(self._pending, self._stops)
        if ready == 0:
            return []
        text, self._pending = self._pending[:ready], self._pending[ready:]
        return [self._chunk([CompletionChoice(text=text, finish_reason=None)]).model_dump()]

    def finished(self, result: Finished) -> Iterable[dict[str, Any]]:
        last = CompletionChoice(text=_without_stop(self._pending, result), finish_reason=result.finish_reason)
        chunks = [self._chunk([last]).model_dump()]
        if self._include_usage:  # as OpenAI sends it: one more chunk, with no choices
            chunks.append(self._chunk([], _usage(result)).model_dump())
        return chunks


@router.get("/v1/models", response_model=ModelList, responses=responses())
async def models(registry: RegistryDep) -> ModelList:
    """The served models, as the OpenAI API lists models, each with its loaded versions (and those unloading,
    still serving their sessions)."""
    registry.default_engine().check_serving()
    cards: dict[str, ModelCard] = {}
    for unit in sorted(registry.units(), key=lambda u: (u.name, u.order)):
        if unit.state not in ("READY", "UNLOADING"):
            continue
        model = unit.engine.model
        card = cards.get(unit.name)
        if card is None:
            try:
                created = int(model.path.stat().st_mtime)
            except OSError:  # a version whose folder was removed (it is unloading)
                created = int(unit.loaded_at)
            card = cards[unit.name] = ModelCard(id=unit.name, created=created)
        sessions = None
        with contextlib.suppress(EngineError):
            sessions = (await unit.engine.session_stats()).active
        card.versions.append(
            ModelVersionCard(
                version=unit.version, state=unit.state, sessions=sessions, fingerprint=model.metadata.fingerprint
            )
        )
    return ModelList(data=list(cards.values()))


def _model_of(name: str) -> tuple[str, str | None]:
    """`name`, or `name:version` for one version of a repository's model."""
    base, sep, version = name.rpartition(":")
    return (base, version) if sep and base and version.isdigit() else (name, None)


@router.post(
    "/v1/completions", response_model=Completion, responses={**SSE_RESPONSES, **responses(400, 404, 409, 413, 422)}
)
async def completions(
    body: CompletionRequest,
    registry: ModelsDep,
    settings: SettingsDep,
    request: Request,
    caller: CallerDep,
) -> Response | Completion:
    """Complete the prompt, in the shape of OpenAI's completions API (streamed with `"stream": true`). With
    `session_id`, the prompt and the completion are fed to that session, which remembers them (on the session's
    model version). `model` is a model's name (its latest version) or `name:version`."""
    name, version = _model_of(body.model)
    if body.session_id is not None:
        check_owner(request, body.session_id)
        unit = registry.for_session(body.session_id)
        if name != unit.name or (version is not None and version != unit.version):
            raise UnknownModel(body.model, f"{unit.name} (the session's model, version {unit.version})")
    else:
        unit = registry.resolve(name, version)
    generator = unit.generator
    meta = unit.engine.model.metadata
    params = generator.params(
        max_tokens=body.max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_k=body.top_k,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stops(),
    )
    text, tokens = body.prompt_input()
    plan = await generator.prepare(params, session_id=body.session_id, text=text, tokens=tokens, owner=caller)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    chunks = CompletionChunks(
        model=unit.name, fingerprint=meta.fingerprint, stops=body.stops(), include_usage=include_usage
    )
    if body.stream:
        return event_stream(generator.stream_groups(plan), chunks, settings.shutdown_grace_s)
    return chunks.completion(await generator.run(plan))
