"""The write-ahead journal of the in-memory store in durable mode (LSTM_SERVE_DURABLE): every acknowledged step
survives a SIGKILL.

Every mutating call of `MemoryStateStore` (create, save_many, reset, fork, delete, and the capacity evictions
they cause) appends ONE frame to the journal and waits for ONE fsync before it returns; the engine calls
save_many once per batch, so a batch costs one write and one fsync however many rows it has (group commit). The
write is done on the event loop (a copy into the page cache: appends stay in call order), the fsync in a thread,
so the loop keeps serving meanwhile. Removals by TTL are not journaled: they follow from the times recorded, and
a replay expires those sessions again.

Entries carry whole sessions (id, position, version, times, h and C), not deltas, so a replay is a sequence of
upserts and removals. Each entry has a sequence number from the store's version counter, which only grows;
a snapshot records the counter (`next_version`) at its capture, so a replay skips every entry the snapshot
already holds.

Files: `<snapshot>.journal.<generation>`, each opened with a header (magic, state shape, model fingerprint). A
snapshot's capture starts a new generation; once that snapshot is safely written, the older generations are
deleted (compaction). At start the snapshot is restored, then every generation is replayed in order on top of it,
then compacted into a fresh snapshot.

Frame: `<u32 payload length><u32 CRC-32 of the payload>` + payload; payload: entries, each `<u8 kind><u64 seq>
<u16 id length>` + id (UTF-8), then for the put kinds `<i64 position><i64 version><f64 created><f64 last used>
<f64 expires><f64 ttl>` + h + C (float32 little-endian, layers x hidden each), for the removal kinds nothing.
A frame cut short at the end of the last file (the process died in the middle of a write that was never
acknowledged) is ignored with a warning; a frame that fails its CRC with more data after it is corruption: the
replay stops there with an error, and the file is moved aside to `<name>.corrupt`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"LSJ1"
FRAME = struct.Struct("<II")  # payload length, CRC-32
FILE_HEADER = struct.Struct("<4sIIH")  # magic, layers, hidden, fingerprint length (+ the fingerprint)
ENTRY = struct.Struct("<BQH")  # kind, sequence number, id length (+ the id)
RECORD = struct.Struct("<qqdddd")  # position, version, created, last used, expires, ttl
_F32 = np.dtype("<f4")

CREATE, SAVE, RESET, FORK, DELETE, EVICT = 1, 2, 3, 4, 5, 6
PUT_KINDS = frozenset({CREATE, SAVE, RESET, FORK})
REMOVAL_REASON = {DELETE: "deleted", EVICT: "capacity"}


class JournalError(Exception):
    """A journal that cannot be replayed past some point (a CRC failure mid-file, a bad header)."""


@dataclass(frozen=True, slots=True)
class Entry:
    kind: int
    seq: int
    session_id: str
    position: int = 0
    version: int = 0
    created: float = 0.0
    last_used: float = 0.0
    expires: float = 0.0
    ttl: float = 0.0
    h: np.ndarray | None = None  # (layers, hidden) float32, put kinds only
    c: np.ndarray | None = None


def put_entry(
    kind: int,
    seq: int,
    session_id: str,
    record: tuple[int, int, float, float, float, float],
    h: np.ndarray,
    c: np.ndarray,
) -> bytes:
    """One upsert: `record` is (position, version, created, last used, expires, ttl); h, c (layers, hidden)."""
    sid = session_id.encode()
    return b"".join(
        (
            ENTRY.pack(kind, seq, len(sid)),
            sid,
            RECORD.pack(*record),
            np.ascontiguousarray(h, dtype=_F32).tobytes(),
            np.ascontiguousarray(c, dtype=_F32).tobytes(),
        )
    )


def removal_entry(kind: int, seq: int, session_id: str) -> bytes:
    sid = session_id.encode()
    return ENTRY.pack(kind, seq, len(sid)) + sid


def frame(entries: list[bytes]) -> bytes:
    payload = b"".join(entries)
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def file_header(shape: tuple[int, int], fingerprint: str) -> bytes:
    fp = fingerprint.encode()
    return FILE_HEADER.pack(MAGIC, shape[0], shape[1], len(fp)) + fp


def parse_entries(payload: bytes, shape: tuple[int, int]) -> Iterator[Entry]:
    state = shape[0] * shape[1] * 4
    at = 0
    while at < len(payload):
        kind, seq, n = ENTRY.unpack_from(payload, at)
        at += ENTRY.size
        sid = payload[at : at + n].decode()
        at += n
        if kind in PUT_KINDS:
            position, version, created, used, expires, ttl = RECORD.unpack_from(payload, at)
            at += RECORD.size
            h = np.frombuffer(payload, _F32, shape[0] * shape[1], at).reshape(shape).astype(np.float32)
            c = np.frombuffer(payload, _F32, shape[0] * shape[1], at + state).reshape(shape).astype(np.float32)
            at += 2 * state
            yield Entry(kind, seq, sid, position, version, created, used, expires, ttl, h, c)
        elif kind in REMOVAL_REASON:
            yield Entry(kind, seq, sid)
        else:
            raise JournalError(f"unknown entry kind {kind}")


def read_file(path: Path, shape: tuple[int, int], fingerprint: str) -> tuple[list[Entry], str | None]:
    """Every entry of one journal file, and the problem that ended the reading early, if any: a torn tail (a
    warning) or raises JournalError for corruption (a CRC failure mid-file, another model's journal)."""
    data = path.read_bytes()
    expected = file_header(shape, fingerprint)
    if len(data) < len(expected):
        return [], "the file header is cut short" if data else None
    if data[: len(expected)] != expected:
        raise JournalError(f"{path.name} was written for another model or state shape, or is not a journal")
    at = len(expected)
    entries: list[Entry] = []
    while at < len(data):
        if len(data) - at < FRAME.size:
            return entries, f"a frame header cut short at byte {at}"
        length, crc = FRAME.unpack_from(data, at)
        end = at + FRAME.size + length
        if end > len(data):
            return entries, f"a frame cut short at byte {at} ({len(data) - at - FRAME.size} of {length} bytes)"
        payload = data[at + FRAME.size : end]
        if zlib.crc32(payload) != crc:
            if end == len(data):
                return entries, f"the last frame (byte {at}) fails its CRC"
            raise JournalError(f"{path.name}: the frame at byte {at} fails its CRC, {len(data) - end} bytes follow")
        try:
            entries.extend(parse_entries(payload, shape))
        except (struct.error, UnicodeDecodeError, ValueError) as exc:
            raise JournalError(f"{path.name}: the frame at byte {at} is malformed: {exc}") from None
        at = end
    return entries, None


class _Segment:
    """One open journal file; closed once retired and no fsync of it is in flight."""

    def __init__(self, path: Path, generation: int, header: bytes) -> None:
        self.path = path
        self.generation = generation
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.pending = 0
        self.retired = False
        self.last_seq = 0
        if os.fstat(self.fd).st_size == 0:
            os.write(self.fd, header)
            os.fsync(self.fd)

    def close_if_done(self) -> None:
        if self.retired and self.pending == 0 and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Journal:
    """Appends frames to the current generation's file; `rotate` starts the next one, `compact` deletes the
    generations a written snapshot holds."""

    def __init__(self, base: Path, shape: tuple[int, int], fingerprint: str) -> None:
        self.base = base
        self.shape = shape
        self.fingerprint = fingerprint
        self._header = file_header(shape, fingerprint)
        self._retired: list[_Segment] = []
        self._current: _Segment | None = None
        self.frames = 0
        self.fsyncs = 0

    # ---- files -------------------------------------------------------------------------------------------
    def files(self) -> list[tuple[int, Path]]:
        """The journal files present, oldest generation first."""
        pattern = re.compile(re.escape(self.base.name) + r"\.journal\.(\d+)")
        found = []
        for p in self.base.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def _path(self, generation: int) -> Path:
        return self.base.with_name(f"{self.base.name}.journal.{generation:08d}")

    def read_all(self, after_seq: int) -> list[Entry]:
        """Every entry newer than `after_seq` (what the restored snapshot holds), oldest first. A torn tail is
        ignored with a warning; corruption stops the replay there (error log; the file moved to .corrupt)."""
        out: list[Entry] = []
        files = self.files()
        for i, (_, path) in enumerate(files):
            try:
                entries, problem = read_file(path, self.shape, self.fingerprint)
            except (JournalError, OSError) as exc:
                aside = path.with_name(path.name + ".corrupt")
                with contextlib.suppress(OSError):
                    os.replace(path, aside)
                log.error(
                    "session journal replay stopped: %s; %s moved to %s, %d later file(s) not replayed",
                    exc,
                    path.name,
                    aside.name,
                    len(files) - i - 1,
                    extra={"path": str(path), "moved_to": str(aside)},
                )
                for _, later in files[i + 1 :]:
                    with contextlib.suppress(OSError):
                        os.replace(later, later.with_name(later.name + ".corrupt"))
                break
            out.extend(e for e in entries if e.seq > after_seq)
            if problem is not None:
                log.warning(
                    "session journal %s: %s; ignored (a write the process died in, never acknowledged)",
                    path.name,
                    problem,
                    extra={"path": str(path)},
                )
        return out

    def open(self) -> None:
        """Start appending, in a generation after every file present."""
        files = self.files()
        self._current = _Segment(
            self._path(files[-1][0] + 1 if files else 1), files[-1][0] + 1 if files else 1, self._header
        )
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.base.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- writing -----------------------------------------------------------------------------------------
    async def append(self, entries: list[bytes], last_seq: int) -> None:
        """One frame written now (in call order), then one fsync in a thread; returns once it is on disk."""
        segment = self._current
        if segment is None:
            raise RuntimeError("the journal is not open")
        data = frame(entries)
        written = os.write(segment.fd, data)
        if written != len(data):  # a short write to a regular file: the disk is full
            raise OSError(f"short write to {segment.path.name}: {written} of {len(data)} bytes")
        segment.last_seq = max(segment.last_seq, last_seq)
        segment.pending += 1
        self.frames += 1
        try:
            await asyncio.to_thread(os.fsync, segment.fd)
            self.fsyncs += 1
        finally:
            segment.pending -= 1
            segment.close_if_done()

    def rotate(self) -> None:
        """The next generation takes the appends from now on (called at a snapshot's capture)."""
        old = self._current
        if old is None:
            return
        self._current = _Segment(self._path(old.generation + 1), old.generation + 1, self._header)
        self._fsync_dir()
        old.retired = True
        self._retired.append(old)
        old.close_if_done()

    def compact(self, snapshot_seq: int) -> int:
        """Delete the retired generations whose every entry a written snapshot (captured at `snapshot_seq`) holds;
        also the files left by earlier runs (already replayed and snapshotted). Returns how many were deleted."""
        removed = 0
        keep: list[_Segment] = []
        for segment in self._retired:
            if segment.last_seq <= snapshot_seq:
                with contextlib.suppress(FileNotFoundError):
                    segment.path.unlink()
                removed += 1
            else:
                keep.append(segment)
        self._retired = keep
        current = self._current.generation if self._current is not None else None
        live = {s.generation for s in keep} | ({current} if current is not None else set())
        for generation, path in self.files():
            if generation not in live and (current is None or generation < current):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def close(self) -> None:
        for segment in [*self._retired, *([self._current] if self._current else [])]:
            segment.retired = True
            segment.pending = 0
            segment.close_if_done()
        self._retired = []
        self._current = None
