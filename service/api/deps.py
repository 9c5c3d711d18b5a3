"""How routes reach the engine: it lives on app.state, put there by create_app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from service.engine.engine import Engine
from service.engine.generation import Generator
from service.engine.inspection import Inspector
from service.engine.sequences import Sequences


async def get_engine(request: Request) -> Engine:
    # async: a plain def dependency would be run in a worker thread, a needless hop (and reordering) per request
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]


# Generation, inspection and V2 sequences: engine-level services made by create_app, one per app. HTTPConnection
# rather than Request so that WebSocket routes can depend on them too.
async def get_generator(connection: HTTPConnection) -> Generator:
    generator: Generator = connection.app.state.generator
    return generator


async def get_inspector(connection: HTTPConnection) -> Inspector:
    inspector: Inspector = connection.app.state.inspector
    return inspector


async def get_sequences(connection: HTTPConnection) -> Sequences:
    sequences: Sequences = connection.app.state.sequences
    return sequences


GeneratorDep = Annotated[Generator, Depends(get_generator)]
InspectorDep = Annotated[Inspector, Depends(get_inspector)]
SequencesDep = Annotated[Sequences, Depends(get_sequences)]
