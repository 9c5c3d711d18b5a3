"""How routes reach the engine: it lives on app.state, put there by create_app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.engine.engine import Engine


async def get_engine(request: Request) -> Engine:
    # async: a plain def dependency would be run in a worker thread, a needless hop (and reordering) per request
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]
