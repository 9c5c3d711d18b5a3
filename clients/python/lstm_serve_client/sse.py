"""Server-sent events: an incremental text/event-stream decoder, and the generate stream's protocol on top of it."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from .errors import LstmServeError, error_from_body
from .results import Generation, TokenEvent, _generation

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental text/event-stream parser (the WHATWG HTML "event stream interpretation"), fed raw bytes.

    Chunks may split anywhere, inside a UTF-8 character or between the CR and LF of a line end. Comments
    (keep-alive pings) are skipped; an event without data lines is not dispatched; an event left unterminated
    at the end of the stream is discarded, as the specification requires.
    """

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""  # the current incomplete line
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Events completed by this chunk, in order."""
        text = self._utf8.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        buffer = self._buffer + text
        # A CR at the very end may be the first half of a CRLF: wait for the next chunk to know.
        held_cr = buffer.endswith("\r")
        if held_cr:
            buffer = buffer[:-1]
        *lines, rest = _LINE_END.split(buffer)
        self._buffer = rest + ("\r" if held_cr else "")
        events: list[ServerSentEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent(data="\n".join(data), event=event or "message", id=self._last_id, retry=self._retry)


class _GenerationProtocol:
    """The generate stream's events: tokens, then one final event, then `[DONE]`; or an error event.

    Fed raw chunks; returns the token events each completes. An error event is raised only after the tokens
    before it in the same chunk have been handed out, by `finished()`.
    """

    def __init__(self, status: int, on_result: Callable[[Generation], None]) -> None:
        self._status = status
        self._on_result = on_result
        self._decoder = SSEDecoder()
        self._ids: list[int] = []
        self._error: LstmServeError | None = None
        self.result: Generation | None = None
        self.done = False  # [DONE] seen, or an error

    def feed(self, chunk: bytes) -> list[TokenEvent]:
        tokens: list[TokenEvent] = []
        for event in self._decoder.feed(chunk):
            if self.done:
                break
            token = self._handle(event.data)
            if token is not None:
                tokens.append(token)
        return tokens

    def finished(self) -> bool:
        """True once the stream is complete; raises the error event if one came."""
        if self._error is not None:
            raise self._error
        return self.done

    def end_of_stream(self) -> None:
        """The connection closed: fine after the final event (even without `[DONE]`), an error before it."""
        self.finished()
        if self.result is None:
            raise LstmServeError(
                self._status, "incomplete_stream", "the event stream ended before the generation's final event"
            )

    def _handle(self, data: str) -> TokenEvent | None:
        if data == "[DONE]":
            self.done = True
            if self.result is None:
                self._error = LstmServeError(
                    self._status,
                    "incomplete_stream",
                    "the event stream sent [DONE] before the generation's final event",
                )
            return None
        try:
            body = json.loads(data)
            if not isinstance(body, dict):
                raise ValueError("an event is not a JSON object")
            if "error" in body:
                self._error, self.done = error_from_body(self._status, body), True
                return None
            if self.result is not None:  # anything between the final event and [DONE] is ignored
                return None
            if "finish_reason" in body:
                self.result = _generation(body, tokens=list(self._ids))
                self._on_result(self.result)
                return None
            if "token" in body:
                event = TokenEvent(token=str(body["token"]), id=int(body["id"]), position=int(body["position"]))
                self._ids.append(event.id)
                return event
        except (ValueError, KeyError, TypeError) as e:
            self._error, self.done = LstmServeError(self._status, "invalid_response", f"bad stream event: {e}"), True
        return None  # an event of a kind this client does not know: skipped
