"""The model registry: name -> version -> a running unit (its own ONNX Runtime session, batcher, state store
partition, snapshotter and Engine), built from Settings by the composition root.

Three ways to fill it:
- `model_repository` set: every version of every model in REPO/<name>/<version>/model.onnx, each its own Engine;
  new versions are picked up by polling (`model_repository_poll_s`) or the repository API (load/unload);
- otherwise one model file (`model_path`, or the bundled model): one unit, served exactly as a single model always
  was (session ids carry no model tag, metrics no model labels).

Sessions are pinned to their version for life: a repository's session ids carry the version's tag
(service/session_ids.py), so a route finds the session's engine from its id; an id without a tag belongs to the
default model's first-loaded version. States never mix: each version has its own memory store (and snapshot file
`<snapshot_path>.<name>.<version>`), or its own Redis key prefix (the store partitions by fingerprint).

Unloading a version (the API's unload, or its folder removed while polling) stops new sessions on it at once; its
sessions keep working until they end or expire, then the unit is stopped and freed (a drain). `force` ends them
at once: their requests are answered 410 model_unloaded. A version that fails to load is logged, counted
(lstm_serve_model_load_failures_total) and shown in the index with its reason; it never stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from model import repository as repo
from service.engine.engine import Engine
from service.engine.generation import Generator
from service.engine.inspection import Inspector
from service.engine.sequences import Sequences
from service.errors import EngineError, InvalidInput, ModelUnloaded, SessionNotFound, UnknownModel
from service.metrics import Metrics, ModelMetrics
from service.session_ids import model_tag, tagged_owner

if TYPE_CHECKING:
    from service.app import Serving
    from service.config import Settings

log = logging.getLogger(__name__)

UnitState = Literal["LOADING", "READY", "UNLOADING", "UNAVAILABLE"]
DRAIN_CHECK_S = 0.5  # how often a draining version's session count is looked at
BUNDLED_NAME = "shakespeare-lstm"  # the bundled model's name (the default model's default)


@dataclass(eq=False)
class Unit:
    """One loaded model version: the composition root's parts and the services routes use on its engine."""

    name: str
    version: str
    serving: Serving
    tagged: bool  # a repository's version: its session ids carry its tag
    path: Path | None = None
    state: UnitState = "LOADING"
    reason: str = ""
    loaded_at: float = 0.0
    order: int = 0  # load order, for "the default model's first-loaded version"
    generator: Generator = field(init=False)
    inspector: Inspector = field(init=False)
    sequences: Sequences = field(init=False)
    drainer: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.generator = Generator(self.serving.engine)
        self.inspector = Inspector(self.serving.engine)
        self.sequences = Sequences(self.serving.engine)

    @property
    def engine(self) -> Engine:
        return self.serving.engine

    @property
    def accepting(self) -> bool:
        """Takes new sessions and stateless work (loaded, not unloading)."""
        return self.state == "READY"

    def owner(self, principal: str) -> str:
        """The owner a new session on this version is created with (its tag in a repository)."""
        return tagged_owner(principal, self.name, self.version) if self.tagged else principal

    def label(self) -> str:
        return f"{self.name} v{self.version}"


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (0, version)


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics, serving_factory: type[Serving]) -> None:
        self.settings = settings
        self.metrics = metrics
        self._factory = serving_factory
        self.repository: Path | None = settings.model_repository
        self._units: dict[str, dict[str, Unit]] = {}
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}  # (name, version) -> (file mtime, reason)
        self._held_back: set[str] = set()  # models unloaded through the API: polling does not load them again
        self._forced: set[tuple[str, str]] = set()  # versions unloaded with force: their sessions answer 410
        self._order = 0
        self._poller: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one load/unload/poll at a time
        self._stopping = False
        self.clean = True
        if self.repository is None:
            self.default_name = ""  # the single model's name, known once loaded
            unit = Unit("", "", self._factory(settings, metrics), tagged=False, path=settings.model_path)
            self.primary = unit
            self._single: Unit | None = unit
        else:
            self._single = None
            models = repo.list_models(self.repository)
            self.default_name = settings.default_model or (models[0] if len(models) == 1 else BUNDLED_NAME)
            for mv in repo.scan(self.repository):
                self._add(mv.name, str(mv.version), mv.path)
            # The engine a SIGTERM reaches (app.state.engine) and that untagged ids belong to.
            first = self._units.get(self.default_name, {})
            self.primary = (
                first[min(first, key=_version_key)]
                if first
                else Unit(self.default_name, "0", self._factory(settings, metrics), tagged=True)
            )

    # ---- building and lifecycle -------------------------------------------------------------------------------
    def _add(self, name: str, version: str, path: Path) -> Unit:
        assert self.repository is not None
        s = self.settings
        snapshot = (
            None if s.snapshot_path is None else s.snapshot_path.with_name(f"{s.snapshot_path.name}.{name}.{version}")
        )
        unit_settings = s.model_copy(update={"model_path": path, "model_sha256": None, "snapshot_path": snapshot})
        serving = self._factory(unit_settings, ModelMetrics(self.metrics, name, version))
        unit = Unit(name, version, serving, tagged=True, path=path)
        self._units.setdefault(name, {})[version] = unit
        return unit

    async def _start_unit(self, unit: Unit) -> bool:
        unit.state = "LOADING"
        started = time.perf_counter()
        try:
            await unit.serving.start()
        except Exception as exc:
            if self._single is not None:
                raise  # one model: a model that cannot load stops the start, as it always did
            self._failed_load(unit, exc)
            return False
        self._order += 1
        unit.order, unit.loaded_at, unit.state, unit.reason = self._order, time.time(), "READY", ""
        if self._single is not None:
            meta = unit.engine.model.metadata
            unit.name, unit.version = meta.name, meta.version
            self.default_name = meta.name
            self._units = {unit.name: {unit.version: unit}}
        log.info(
            "model version loaded",
            extra={"model": unit.name, "version": unit.version, "seconds": round(time.perf_counter() - started, 3)},
        )
        self._refresh_ready()
        return True

    def _failed_load(self, unit: Unit, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        mtime = _mtime(unit.path)
        self._failed[(unit.name, unit.version)] = (mtime, reason)
        self.metrics.model_load_failures.labels(unit.name, unit.version).inc()
        log.error("model version failed to load", extra={"model": unit.name, "version": unit.version, "error": reason})
        self._units.get(unit.name, {}).pop(unit.version, None)
        if not self._units.get(unit.name):
            self._units.pop(unit.name, None)
        with contextlib.suppress(Exception):
            _forget_metrics(unit)
        # A failed start may have left a store open; stop what was built (quietly: it never served).
        asyncio.get_running_loop().create_task(_quiet_stop(unit))

    async def start(self) -> None:
        if self._single is not None:
            await self._start_unit(self._single)
            return
        await asyncio.gather(*(self._start_unit(u) for u in self.units()))
        if self.settings.model_repository_poll_s > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop(), name="lstm-serve-repository-poll")
        self._refresh_ready()

    def begin_shutdown(self) -> None:
        self._stopping = True
        for unit in self.units():
            unit.engine.begin_shutdown()

    async def stop(self) -> bool:
        """Stop polling and every unit (drained, snapshotted, closed); False when a final snapshot failed."""
        self._stopping = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        units = self.units()
        for unit in units:
            if unit.drainer is not None:
                unit.drainer.cancel()
        results = await asyncio.gather(*(u.serving.stop() for u in units), return_exceptions=True)
        self.clean = all(r is True for r in results)
        self.primary.serving.clean = self.clean  # what the process's exit status reads
        return self.clean

    def _refresh_ready(self) -> None:
        """lstm_serve_ready: the default model is loaded and warm."""
        if self._single is None:
            self.metrics.ready.set(1 if self._default_unit_or_none() is not None else 0)

    # ---- lookups ------------------------------------------------------------------------------------------------
    def units(self) -> list[Unit]:
        return [u for versions in self._units.values() for u in versions.values()]

    def _served(self) -> str:
        listed = [
            f"{name} (versions {', '.join(sorted(vs, key=_version_key))})"
            for name, vs in sorted(self._units.items())
            if any(u.accepting for u in vs.values())
        ]
        return "; ".join(listed) or "no model (none is loaded)"

    def _default_unit_or_none(self, name: str | None = None) -> Unit | None:
        versions = self._units.get(name or self.default_name, {})
        ready = [u for u in versions.values() if u.accepting]
        return max(ready, key=lambda u: _version_key(u.version)) if ready else None

    def default_engine(self) -> Engine:
        """The engine requests naming no model use: the default model's latest loaded version (for readiness too)."""
        if self._single is not None:
            return self._single.engine
        unit = self._default_unit_or_none()
        if unit is None:
            return self.primary.engine  # not ready: readiness says so
        return unit.engine

    def resolve(self, name: str | None = None, version: str | int | None = None) -> Unit:
        """The unit for new work naming a model (and version): the latest loaded version by default. An unknown
        (or unloading) model or version is UnknownModel, naming what is served."""
        if self._single is not None:
            unit = self._single
            if unit.state != "READY":
                return unit  # its engine answers not_ready (or draining)
            if name is not None and name != unit.name:
                raise UnknownModel(name, unit.name)
            if version is not None and str(version) != unit.version:
                raise UnknownModel(f"{unit.name} version {version}", f"{unit.name} version {unit.version}")
            return unit
        model = name or self.default_name
        if version is None:
            latest = self._default_unit_or_none(model)
            if latest is None:
                raise UnknownModel(model, self._served())
            return latest
        found = self._units.get(model, {}).get(str(version))
        if found is None or not found.accepting:
            raise UnknownModel(f"{model} version {version}", self._served())
        return found

    def for_session(self, session_id: str) -> Unit:
        """The unit a session lives on, from its id alone (untagged: the default model's first-loaded version)."""
        if self._single is not None:
            return self._single
        tag = model_tag(session_id)
        if tag is None:
            return self.primary
        unit = self._units.get(tag[0], {}).get(tag[1])
        if unit is None or unit.state == "UNAVAILABLE":
            if tag in self._forced:
                raise ModelUnloaded(*tag)
            raise SessionNotFound(session_id)
        return unit

    # ---- the repository: index, load, unload, poll ----------------------------------------------------------------
    async def index(self) -> list[dict[str, object]]:
        """Triton's repository index: every version loaded, loading, unloading or failed, with a reason."""
        rows: list[dict[str, object]] = []
        for unit in self.units():
            row: dict[str, object] = {"name": unit.name, "version": unit.version, "state": unit.state}
            if unit.state == "UNLOADING":
                with contextlib.suppress(EngineError):
                    sessions = (await unit.engine.session_stats()).active
                    row["reason"] = f"draining: {sessions} sessions left"
            rows.append(row)
        for (name, version), (_, reason) in self._failed.items():
            rows.append({"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason})
        if self.repository is not None:  # on disk but not loaded (unloaded through the API)
            known = {(str(r["name"]), str(r["version"])) for r in rows}
            for mv in repo.scan(self.repository):
                if (mv.name, str(mv.version)) not in known:
                    rows.append(
                        {"name": mv.name, "version": str(mv.version), "state": "UNAVAILABLE", "reason": "unloaded"}
                    )
        return sorted(rows, key=lambda r: (str(r["name"]), _version_key(str(r["version"]))))

    def _require_repository(self) -> Path:
        if self.repository is None:
            raise InvalidInput(
                "this server serves one model file; the repository API needs LSTM_SERVE_MODEL_REPOSITORY",
                code="no_repository",
            )
        return self.repository

    async def load(self, name: str) -> list[str]:
        """Load every version of `name` in the repository that is not loaded (failed ones are tried again);
        returns the versions that are loaded afterwards. UnknownModel if the repository has no such model."""
        root = self._require_repository()
        async with self._lock:
            self._held_back.discard(name)
            try:
                versions = repo.list_versions(root, name)
            except repo.RepositoryError:
                versions = []
            if not versions:
                raise UnknownModel(name, ", ".join(repo.list_models(root)) or "an empty repository")
            await self._load_missing(name, versions, retry_failed=True)
            loaded = [v for v, u in self._units.get(name, {}).items() if u.accepting]
        if not loaded:
            reasons = "; ".join(r for (n, _), (_, r) in self._failed.items() if n == name)
            raise InvalidInput(f"model {name!r} could not be loaded: {reasons}", code="model_load_failed")
        return sorted(loaded, key=_version_key)

    async def _load_missing(self, name: str, versions: list[int], *, retry_failed: bool) -> None:
        assert self.repository is not None
        new: list[Unit] = []
        for v in versions:
            version = str(v)
            existing = self._units.get(name, {}).get(version)
            if existing is not None and existing.state in ("READY", "LOADING"):
                continue
            if existing is not None and existing.state == "UNLOADING":
                existing.state = "READY"  # loaded again before it drained: it serves new sessions again
                if existing.drainer is not None:
                    existing.drainer.cancel()
                    existing.drainer = None
                self.metrics.model_draining.labels(name, version).set(0)
                continue
            path = repo.version_path(self.repository, name, v)
            failed = self._failed.get((name, version))
            if failed is not None and not retry_failed and failed[0] == _mtime(path):
                continue  # the same file failed before: wait for it to change
            self._failed.pop((name, version), None)
            self._forced.discard((name, version))
            new.append(self._add(name, version, path))
        if new:
            await asyncio.gather(*(self._start_unit(u) for u in new))

    async def unload(self, name: str, *, force: bool = False) -> list[str]:
        """Unload every version of `name`: new sessions stop at once; without force its sessions keep working
        until they end, then it is freed; with force they end now (410 model_unloaded)."""
        self._require_repository()
        async with self._lock:
            units = list(self._units.get(name, {}).values())
            if not units and not any(n == name for n, _ in self._failed):
                raise UnknownModel(name, self._served())
            self._held_back.add(name)
            for n, v in [k for k in self._failed if k[0] == name]:
                del self._failed[(n, v)]
            for unit in units:
                await self._unload_unit(unit, force=force)
        return [u.version for u in units]

    async def _unload_unit(self, unit: Unit, *, force: bool) -> None:
        if unit.state == "UNLOADING" and not force:
            return
        unit.state = "UNLOADING"
        self._refresh_ready()
        self.metrics.model_draining.labels(unit.name, unit.version).set(1)
        log.info("model version unloading", extra={"model": unit.name, "version": unit.version, "force": force})
        if force:
            if unit.drainer is not None:
                unit.drainer.cancel()
            self._forced.add((unit.name, unit.version))
            await self._free(unit, ended_sessions=True)
        elif unit.drainer is None:
            unit.drainer = asyncio.get_running_loop().create_task(self._drain(unit), name=f"drain {unit.label()}")

    async def _drain(self, unit: Unit) -> None:
        """Free the version once its last session has ended or expired (its sweeper keeps expiring them)."""
        while True:
            await asyncio.sleep(DRAIN_CHECK_S)
            try:
                left = (await unit.engine.session_stats()).active
            except EngineError:
                continue
            if left == 0:
                break
        async with self._lock:
            if unit.state == "UNLOADING":
                unit.drainer = None
                await self._free(unit, ended_sessions=False)

    async def _free(self, unit: Unit, *, ended_sessions: bool) -> None:
        unit.state = "UNAVAILABLE"
        versions = self._units.get(unit.name, {})
        if versions.get(unit.version) is unit:
            del versions[unit.version]
            if not versions:
                del self._units[unit.name]
        try:
            await unit.serving.stop()
        except Exception:
            log.exception("stopping an unloaded model version failed", extra={"model": unit.name})
        snapshot = unit.serving.settings.snapshot_path
        if ended_sessions and snapshot is not None:  # its sessions ended: they do not come back at the next start
            with contextlib.suppress(OSError):
                snapshot.unlink()
        _forget_metrics(unit)
        self._refresh_ready()
        log.info("model version freed", extra={"model": unit.name, "version": unit.version})

    async def poll_once(self) -> None:
        """Load the repository's new versions (and those whose failed file changed); unload (drain) the versions
        whose folder is gone. Models unloaded through the API stay unloaded until loaded through it."""
        if self.repository is None:
            return
        async with self._lock:
            on_disk = {(mv.name, str(mv.version)) for mv in repo.scan(self.repository)}
            for name in sorted({n for n, _ in on_disk} - self._held_back):
                await self._load_missing(name, sorted(int(v) for n, v in on_disk if n == name), retry_failed=False)
            for unit in self.units():
                if (unit.name, unit.version) not in on_disk and unit.state == "READY":
                    await self._unload_unit(unit, force=False)
            for key in [k for k in self._failed if k not in on_disk]:
                del self._failed[key]

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_repository_poll_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("polling the model repository failed")


def _mtime(path: Path | None) -> float:
    try:
        return path.stat().st_mtime if path is not None else 0.0
    except OSError:
        return 0.0


def _forget_metrics(unit: Unit) -> None:
    metrics = unit.engine.metrics
    if isinstance(metrics, ModelMetrics):
        metrics.forget()
        with contextlib.suppress(Exception):
            meta = unit.engine.model.metadata
            metrics.base.model_info.remove(meta.name, meta.version, meta.fingerprint, unit.engine.model.provider)


async def _quiet_stop(unit: Unit) -> None:
    with contextlib.suppress(Exception):
        await unit.serving.stop()
