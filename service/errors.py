"""Serving exceptions, shared by the engine and the state stores: what can go wrong in serving, free of HTTP.

`service/api/errors.py` is the one place that maps each of these to a status code and an error code.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose; anything else is a bug."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SessionNotFound(EngineError):
    """No session with this id exists, nor existed recently (or it was deleted by its client)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} does not exist")
        self.session_id = session_id


class SessionExpired(EngineError):
    """The session existed but was removed by the server: idle past its TTL, or evicted for capacity."""

    def __init__(self, session_id: str, reason: str) -> None:
        why = "it was idle longer than its TTL" if reason == "ttl" else "it was evicted to make room for new sessions"
        super().__init__(f"session {session_id!r} no longer exists: {why}")
        self.session_id = session_id
        self.reason = reason


class InvalidInput(EngineError):
    """A request the engine cannot serve as asked (empty input, both text and tokens, too long, ...)."""

    def __init__(self, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.code = code


class InvalidToken(InvalidInput):
    """A character outside the vocabulary, or a token id outside [0, vocab_size), at a position of the input."""

    def __init__(self, message: str, position: int, char: str | None = None, token_id: int | None = None) -> None:
        super().__init__(message, code="invalid_token")
        self.position = position
        self.char = char
        self.token_id = token_id


class PositionConflict(EngineError):
    """Optimistic concurrency failed: the session is not at the position the client expected."""

    def __init__(self, session_id: str, expected: int | None, actual: int, retries: int = 0) -> None:
        if expected is None:  # the client stated no position: other writers kept changing the session
            message = (
                f"session {session_id!r} was changed by another writer while this request ran (it is now at "
                f"position {actual}); tried {retries + 1} times; nothing changed"
            )
        else:
            message = f"session {session_id!r} is at position {actual}, not the expected {expected}; nothing changed"
        super().__init__(message)
        self.session_id = session_id
        self.expected = expected
        self.actual = actual


class VersionConflict(EngineError):
    """A state store refused a compare-and-set write: the session changed since it was read.

    The batcher turns it into a PositionConflict naming the position the work item had read.
    """

    def __init__(self, session_id: str, actual_position: int) -> None:
        super().__init__(f"session {session_id!r} changed while the request ran (now at {actual_position})")
        self.session_id = session_id
        self.actual_position = actual_position


class TooManySessions(EngineError):
    """The store is full and no session is idle long enough to be evicted."""

    def __init__(self, max_sessions: int, retry_after: float, per_key: bool = False) -> None:
        holder = "this API key holds its" if per_key else "the server holds its"
        super().__init__(
            f"{holder} maximum of {max_sessions} active sessions; retry in {retry_after:.0f} s "
            "or delete sessions you no longer need"
        )
        self.max_sessions = max_sessions
        self.retry_after = retry_after
        self.per_key = per_key


class TooManyStreams(EngineError):
    """An API key already runs its maximum number of concurrent generations."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this API key already runs its maximum of {limit} concurrent generations; wait for one to finish"
        )
        self.limit = limit


class RequestTimeout(EngineError):
    """A request did not get its answer within request_timeout_s; it was abandoned and changed nothing."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"the request took longer than the server's request_timeout_s of {timeout_s:g} s and was "
            "abandoned; nothing changed"
        )


class StateMismatch(EngineError):
    """An imported state does not belong to the loaded model (fingerprint, shape or dtype differ) or is corrupt."""


class NotReady(EngineError):
    """The model is not loaded and warmed up yet."""

    def __init__(self) -> None:
        super().__init__("the model is not loaded and warmed up yet; retry shortly")


class Draining(EngineError):
    """The server is shutting down and accepts no new work."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down and accepts no new work; retry on another instance")


class StateStoreUnavailable(EngineError):
    """The state store cannot be reached (a remote store); no session was changed."""


class SequenceNotStarted(InvalidInput):
    """An Open Inference Protocol request continues a sequence that was never started, has ended or has expired."""

    def __init__(self, sequence_id: int | str) -> None:
        super().__init__(
            f"sequence {sequence_id!r} was never started, has ended, or has expired; send its first request with "
            "parameters.sequence_start = true",
            code="sequence_not_started",
        )
        self.sequence_id = sequence_id


class UnknownModel(EngineError):
    """A request names a model (OpenAI `model`, a V2 model or version) that this server does not serve."""

    def __init__(self, requested: str, served: str) -> None:
        super().__init__(f"model {requested!r} is not served here; this server serves {served!r}")
        self.requested = requested
        self.served = served


class ModelUnloaded(EngineError):
    """The session's model version was unloaded with force=true: its sessions ended with it."""

    def __init__(self, model: str, version: str) -> None:
        super().__init__(
            f"version {version} of model {model!r} was unloaded and its sessions ended; create a new session "
            "(on the model's current version)"
        )
        self.model = model
        self.version = version
