"""Everything a route needs, as typed dependencies: the model registry, the engine, its generation, inspection and
V2 sequence services, and the settings. create_app puts them on app.state; nothing else reads app.state.

Which engine: a route with a session in its path (`{id}`) gets the engine of the model version the session is
pinned to (from the id alone, service/session_ids.py); a V2 route the one its `{name}` (and `{version}`) path names;
any other route the default model's latest version. Routes whose body names a model (`model`, `version`) ask the
registry themselves (`RegistryDep.resolve`). The Generator, Inspector and Sequences are the chosen engine's.

HTTPConnection rather than Request, so that WebSocket routes depend on them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from service.config import Settings
from service.engine.engine import Engine
from service.engine.generation import Generator
from service.engine.inspection import Inspector
from service.engine.sequences import Sequences
from service.registry import ModelRegistry, Unit
from service.security.keys import KeyRing


async def get_registry(connection: HTTPConnection) -> ModelRegistry:
    registry: ModelRegistry = connection.app.state.registry
    return registry


def _noted(connection: HTTPConnection, unit: Unit) -> Unit:
    """Record the model version a request works on: the one middleware counts the request under it
    (lstm_serve_model_requests_total), bounded by the versions loaded, never by client input."""
    state = connection.scope.setdefault("state", {})
    state["model"], state["model_version"] = unit.name, unit.version
    return unit


class Models:
    """The model registry as one request sees it: the version it resolves is recorded for its metrics."""

    def __init__(self, registry: ModelRegistry, connection: HTTPConnection) -> None:
        self._registry = registry
        self._connection = connection

    def resolve(self, name: str | None = None, version: str | int | None = None) -> Unit:
        return _noted(self._connection, self._registry.resolve(name, version))

    def for_session(self, session_id: str) -> Unit:
        return _noted(self._connection, self._registry.for_session(session_id))


# async: a plain def dependency would be run in a worker thread, a needless hop (and reordering) per request
async def get_unit(connection: HTTPConnection) -> Unit:
    """The model version this request works on: its session's, its V2 path's, or the default's."""
    models = Models(connection.app.state.registry, connection)
    params = connection.path_params
    session_id = params.get("id")
    if session_id is not None:
        return models.for_session(session_id)
    name = params.get("name")
    if name is not None and connection.url.path.startswith("/v2/models/"):
        return models.resolve(name, params.get("version"))
    return models.resolve()


async def get_models(connection: HTTPConnection) -> Models:
    return Models(connection.app.state.registry, connection)


async def get_engine(connection: HTTPConnection) -> Engine:
    params = connection.path_params
    if "id" not in params and "name" not in params:  # readiness, model facts: the default model's engine
        registry: ModelRegistry = connection.app.state.registry
        return registry.default_engine()
    return (await get_unit(connection)).engine


async def get_settings(connection: HTTPConnection) -> Settings:
    settings: Settings = connection.app.state.settings
    return settings


async def get_generator(connection: HTTPConnection) -> Generator:
    return (await get_unit(connection)).generator


async def get_inspector(connection: HTTPConnection) -> Inspector:
    return (await get_unit(connection)).inspector


async def get_sequences(connection: HTTPConnection) -> Sequences:
    return (await get_unit(connection)).sequences


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
UnitDep = Annotated[Unit, Depends(get_unit)]
ModelsDep = Annotated[Models, Depends(get_models)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
GeneratorDep = Annotated[Generator, Depends(get_generator)]
InspectorDep = Annotated[Inspector, Depends(get_inspector)]
SequencesDep = Annotated[Sequences, Depends(get_sequences)]


@dataclass(frozen=True, slots=True)
class Keys:
    """The API keys and, of them, the admin keys (the repository API needs one whenever keys are on)."""

    api: KeyRing
    admin: KeyRing


async def get_keys(connection: HTTPConnection) -> Keys:
    return Keys(api=connection.app.state.keys, admin=connection.app.state.admin_keys)


KeysDep = Annotated[Keys, Depends(get_keys)]
