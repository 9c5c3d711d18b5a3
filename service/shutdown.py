"""Serving under uvicorn with a graceful shutdown on SIGTERM (and SIGINT).

The sequence:
1. The signal arrives: the engine starts shutting down at once, from the signal handler: /readyz answers 503
   `draining`, new sessions (create, fork) and new streams are refused with 503 `draining`; requests already
   running, and requests to existing sessions that are already on their way, are still served.
   With `shutdown_delay_s`, the server keeps listening that long (a load balancer polling /readyz sees the 503
   and takes the replica out) before step 2; a second signal skips the rest of the delay.
2. uvicorn (at its next 0.1 s tick) stops accepting connections, closes idle keep-alive connections and waits for
   the running requests and streams, at most `shutdown_grace_s` seconds; it cancels what is left after that.
3. The lifespan shutdown drains the engine: queued batch items run, the batcher stops, the in-memory store writes
   its final snapshot (when LSTM_SERVE_SNAPSHOT_PATH is set), the Redis connection pool closes.
4. The process exits 0, or 1 if the final snapshot could not be written (the sessions changed since the last good
   one are lost, and a supervisor should know). uvicorn re-raises the signal it handled once it is done; a SIGTERM
   handler installed here swallows it, so the exit status says "clean shutdown" rather than "killed by SIGTERM".
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from service.config import Settings
from service.security.connections import guarded_protocol, raise_open_files_limit

log = logging.getLogger(__name__)

STARTUP_FAILURE = 3  # uvicorn's exit status when the lifespan startup fails
UNCLEAN_SHUTDOWN = 1  # the drain finished but could not keep everything: the final snapshot failed
RESERVED_FILES = 64  # descriptors kept for the model, logs, snapshots and Redis beside the connections


class GracefulServer(uvicorn.Server):
    """uvicorn's Server, telling the app the moment a shutdown signal arrives, and starting its own shutdown (the
    listener closed, the drain) `delay_s` later."""

    def __init__(self, config: uvicorn.Config, on_shutdown_signal: Callable[[], None], delay_s: float = 0.0) -> None:
        super().__init__(config)
        self._on_shutdown_signal = on_shutdown_signal
        self._delay_s = delay_s
        self._delayed: tuple[int, float] | None = None  # (signal, when uvicorn's shutdown starts)
        self._delay_used = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_shutdown_signal()
        if self._delay_s > 0 and not self._delay_used and not self.should_exit:
            self._delay_used = True
            self._delayed = (sig, time.monotonic() + self._delay_s)
            return
        self._delayed = None  # a second signal: no more waiting
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._delayed is not None and time.monotonic() >= self._delayed[1]:
            sig, _ = self._delayed
            self._delayed = None
            super().handle_exit(sig, None)
        return await super().on_tick(counter)


def _clean_exit(signum: int, frame: FrameType | None) -> None:
    """The SIGTERM uvicorn re-raises after its graceful shutdown: the shutdown is done, exit normally."""


def serve(app: FastAPI, settings: Settings) -> int:
    """Run the app until SIGTERM/SIGINT; the process's exit status (0 after a graceful shutdown)."""
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    open_files = raise_open_files_limit()
    if settings.max_connections and settings.max_connections > open_files - RESERVED_FILES:
        log.warning(
            "max_connections is above what the open-files limit allows; connections beyond it fail to be accepted",
            extra={"max_connections": settings.max_connections, "open_files_limit": open_files},
        )
    http = guarded_protocol(AutoHTTPProtocol, settings.header_timeout_s, settings.max_connections)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="auto",
        http=http,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
    )
    server = GracefulServer(config, app.state.registry.begin_shutdown, settings.shutdown_delay_s)
    previous = signal.signal(signal.SIGTERM, _clean_exit)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        return STARTUP_FAILURE
    return 0 if app.state.registry.clean else UNCLEAN_SHUTDOWN
