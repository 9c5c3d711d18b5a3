"""Everything a route needs, as typed dependencies: the engine, its generation, inspection and V2 sequence
services, and the settings. create_app puts them on app.state; nothing else reads app.state.

HTTPConnection rather than Request, so that WebSocket routes depend on them the same way.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from service.config import Settings
from service.engine.engine import Engine
from service.engine.generation import Generator
from service.engine.inspection import Inspector
from service.engine.sequences import Sequences


# async: a plain def dependency would be run in a worker thread, a needless hop (and reordering) per request
async def get_engine(connection: HTTPConnection) -> Engine:
    engine: Engine = connection.app.state.engine
    return engine


async def get_settings(connection: HTTPConnection) -> Settings:
    settings: Settings = connection.app.state.settings
    return settings


async def get_generator(connection: HTTPConnection) -> Generator:
    generator: Generator = connection.app.state.generator
    return generator


async def get_inspector(connection: HTTPConnection) -> Inspector:
    inspector: Inspector = connection.app.state.inspector
    return inspector


async def get_sequences(connection: HTTPConnection) -> Sequences:
    sequences: Sequences = connection.app.state.sequences
    return sequences


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
GeneratorDep = Annotated[Generator, Depends(get_generator)]
InspectorDep = Annotated[Inspector, Depends(get_inspector)]
SequencesDep = Annotated[Sequences, Depends(get_sequences)]
