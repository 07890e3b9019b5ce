"""A tamper-evident audit trail: one record per model selection and per LLM call.

Records are hash-chained: each holds the SHA-256 of the one before it and its own, computed over
its canonical JSON, so a deleted, reordered or edited line breaks the chain and ``verify`` says
where. Removing lines from the end leaves a shorter chain that still holds: compare the head
hash ``verify`` reports with one kept elsewhere (the CLI prints it at the end of a run) to catch
that too.

``AuditLog(path)`` appends each record to ``path`` as it is made (from a writer thread, off the
event loop), continuing the chain of what the file already holds, so a killed run keeps what it
wrote; ``flush_jsonl(path)`` writes every record made so far to another file. Known secrets (the
API keys a client was given) are replaced by ``[redacted]`` in every record.

A process killed in the middle of a write leaves a last line with no newline that is not a
record: ``verify`` reports it as an incomplete write (the chain before it is intact), and the
next ``AuditLog(path)`` drops it, with a warning, before continuing the chain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.files import write_atomically

log = logging.getLogger(__name__)

GENESIS = "0" * 64  # what the first record of a chain follows
REDACTED = "[redacted]"
_FIELDS = ("seq", "time", "kind", "project_id", "task_id", "data", "prev")
INCOMPLETE = "last record incomplete (a write cut off)"
_BLOCK = 65536  # bytes read at a time when looking for the end of the file's chain


class AuditError(OrchestratorError):
    """The audit file cannot be read or written."""


@dataclass(frozen=True)
class AuditRecord:
    """``kind``: ``decision`` (a model selection: role, candidates with their reasons, policy
    exclusions and allowed violations, the choice) or ``call`` (task, phase, model, provider,
    tokens, cost reserved and settled, cache or journal hit, attempts, outcome)."""

    seq: int
    time: str  # ISO 8601, UTC
    kind: str
    project_id: str | None
    task_id: str | None
    data: dict[str, Any]
    prev: str
    hash: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def record_hash(fields: Mapping[str, Any]) -> str:
    body = {name: fields[name] for name in _FIELDS}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class AuditLog:
    """The records of an orchestrator's runs, in order (``records``); see the module."""

    def __init__(self, path: str | Path | None = None, *, secrets: Iterable[str] = ()) -> None:
        self.records: list[AuditRecord] = []
        self.path = Path(path) if path is not None else None
        self._secrets: set[str] = set()
        self.add_secrets(secrets)
        self._lock = threading.Lock()
        self._seq, self._head = 0, GENESIS
        self._writer: _LineWriter | None = None
        if self.path is not None:
            self._seq, self._head = _chain_end(self.path)
            self._writer = _LineWriter(self.path)

    @property
    def head(self) -> str:
        """The hash of the latest record: the whole chain's fingerprint."""
        return self._head

    def add_secrets(self, values: Iterable[str]) -> None:
        """Strings never to appear in a record (short ones are ignored: they are no keys)."""
        self._secrets.update(v for v in values if v and len(v) >= 8)

    def record(
        self,
        kind: str,
        data: Mapping[str, Any],
        *,
        project_id: str | None = None,
        task_id: str | None = None,
    ) -> AuditRecord:
        with self._lock:  # records may come from several threads and event loops
            fields = {
                "seq": self._seq,
                "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                "kind": kind,
                "project_id": project_id,
                "task_id": task_id,
                "data": self._clean(dict(data)),
                "prev": self._head,
            }
            entry = AuditRecord(**fields, hash=record_hash(fields))
            self._seq, self._head = entry.seq + 1, entry.hash
            self.records.append(entry)
            if self._writer is not None:
                self._writer.put(entry.to_json())
        return entry

    def flush_jsonl(self, path: str | Path) -> Path:
        """Every record made so far, one JSON object a line, into ``path`` (replaced atomically;
        the live file of ``AuditLog(path)`` is written as records are made and needs no flush)."""
        target = Path(path)
        if self.path is not None and target.resolve() == self.path.resolve():
            self.sync()
            return target
        lines = "".join(r.to_json() + "\n" for r in list(self.records))
        try:
            write_atomically(target, lines)
        except OSError as error:
            raise AuditError(f"cannot write audit log {target}: {error.strerror}") from None
        return target

    def sync(self, timeout: float | None = 10.0) -> None:
        """Wait until every record is in the live file (blocking: call it off the event loop)."""
        if self._writer is not None:
            self._writer.sync(timeout)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, Mapping):
            return {str(k): self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)  # strict JSON has no infinity
        if value is None or isinstance(value, bool | int | float):
            return value
        return self._clean(str(value))


@dataclass(frozen=True)
class AuditCheck:
    """What ``verify`` found: ``ok`` with the record count and the head hash, or the first
    ``problem`` and its line (1-based). ``incomplete``: the file ends in a line cut off in
    mid-write, left out of the count (it is no sign of tampering)."""

    ok: bool
    records: int
    head: str
    problem: str = ""
    line: int | None = None
    incomplete: bool = False

    def describe(self, path: str | Path) -> str:
        if not self.ok:
            return f"{path}: line {self.line}: {self.problem}"
        text = f"{path}: {self.records} records, chain intact; head {self.head}"
        return f"{text}; {INCOMPLETE}, ignored" if self.incomplete else text


def verify(source: str | Path | Iterable[str], *, head: str | None = None) -> AuditCheck:
    """Check a JSONL audit trail's chain; with ``head``, also that it ends at that hash (which
    catches lines removed from the end)."""
    incomplete = False
    if isinstance(source, str | os.PathLike):
        lines, incomplete = _read_records(Path(source))
    else:
        lines = list(source)
    previous, expected_seq = GENESIS, 0
    count = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = _parse(line)
        if fields is None:
            return AuditCheck(False, count, previous, "not an audit record", number)
        if record_hash(fields) != fields["hash"]:
            return AuditCheck(False, count, previous, "edited: its hash does not match", number)
        if fields["prev"] != previous or fields["seq"] != expected_seq:
            what = "records before it are missing" if count == 0 else "a record is missing or moved"
            return AuditCheck(False, count, previous, f"breaks the chain: {what}", number)
        previous, expected_seq, count = fields["hash"], fields["seq"] + 1, count + 1
    if head is not None and head != previous:
        return AuditCheck(
            False, count, previous, f"ends at {previous}, not at the head {head}", len(lines)
        )
    return AuditCheck(True, count, previous, incomplete=incomplete)


def _read_records(path: Path) -> tuple[list[str], bool]:
    """The lines of ``path``, and whether a last line cut off in mid-write was left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AuditError(f"cannot read audit log {path}: {error}") from None
    lines = text.splitlines()
    if _cut_off(text, lines[-1] if lines else ""):
        return lines[:-1], True
    return lines, False


def _cut_off(text: str, last_line: str) -> bool:
    """Whether the file's last line is an interrupted write: no newline yet, and not a
    whole record (one whose newline alone is missing is complete)."""
    return bool(text) and not text.endswith("\n") and _parse(last_line) is None


def _parse(line: str) -> dict[str, Any] | None:
    try:
        fields = json.loads(line)
    except ValueError:
        return None
    if not isinstance(fields, dict) or not all(k in fields for k in (*_FIELDS, "hash")):
        return None
    if not isinstance(fields["seq"], int) or not isinstance(fields["hash"], str):
        return None
    return fields


def _chain_end(path: Path) -> tuple[int, str]:
    """The next sequence number and the head of the chain ``path`` already holds, once a last
    write cut off in mid-line is settled."""
    try:
        with path.open("r+b") as handle:
            _settle_last_write(path, handle)
            last = _last_record_line(handle)
    except FileNotFoundError:
        return 0, GENESIS
    except OSError as error:
        raise ConfigError(f"cannot read audit log {path}: {error.strerror}") from None
    if last is None:
        return 0, GENESIS
    fields = _parse(last)
    if fields is None:
        raise ConfigError(
            f"audit log {path} ends in a damaged line: check it with --verify-audit, or use "
            "another file"
        )
    return fields["seq"] + 1, fields["hash"]


def _settle_last_write(path: Path, handle: BinaryIO) -> None:
    """End the file with a newline: a whole record whose newline is missing gets one, a record
    cut off in mid-write is dropped (it was never complete, so the chain goes on without it)."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return
    handle.seek(size - 1)
    if handle.read(1) == b"\n":
        return
    start = _line_start(handle, size)
    handle.seek(start)
    if _parse(handle.read().decode("utf-8", errors="replace")) is not None:
        handle.write(b"\n")
        return
    log.warning(
        "audit log %s: %s (%d bytes at its end, from a run killed while writing); "
        "dropped, and the chain goes on from the record before it",
        path, INCOMPLETE, size - start,
    )  # fmt: skip
    handle.truncate(start)


def _last_record_line(handle: BinaryIO) -> str | None:
    """The last line of the file that is not blank, or None."""
    end = handle.seek(0, os.SEEK_END)
    while end > 0:
        start = _line_start(handle, end - 1)  # the line before the newline at end - 1
        handle.seek(start)
        line = handle.read(end - start).decode("utf-8", errors="replace")
        if line.strip():
            return line.rstrip("\n")
        end = start
    return None


def _line_start(handle: BinaryIO, end: int) -> int:
    """Where the line holding the bytes just before ``end`` starts: after the newline before it."""
    position = end
    while position > 0:
        step = min(_BLOCK, position)
        handle.seek(position - step)
        found = handle.read(step).rfind(b"\n")
        if found >= 0:
            return position - step + found + 1
        position -= step
    return 0


@dataclass
class _LineWriter:
    """Appends lines to a file from a thread of its own, in order, each flushed as written."""

    path: Path
    _queue: queue.SimpleQueue[str | None] = field(default_factory=queue.SimpleQueue)
    _thread: threading.Thread | None = None
    _pending: int = 0
    _done: threading.Condition = field(default_factory=threading.Condition)
    _failed: bool = False

    def put(self, line: str) -> None:
        with self._done:
            self._pending += 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-log", daemon=True)
            self._thread.start()
        self._queue.put(line)

    def sync(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                self._done.wait(left)

    def close(self) -> None:
        self.sync(10.0)
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(1.0)

    def _run(self) -> None:
        try:
            handle = self.path.open("a", encoding="utf-8")
        except OSError as error:
            self._fail(error)
            handle = None
        while True:
            line = self._queue.get()
            if line is None:
                break
            if handle is not None:
                try:
                    handle.write(line + "\n")
                    handle.flush()
                except OSError as error:
                    self._fail(error)
            with self._done:
                self._pending -= 1
                self._done.notify_all()
        if handle is not None:
            handle.close()

    def _fail(self, error: OSError) -> None:
        if not self._failed:
            self._failed = True
            log.warning("cannot write the audit log %s: %s", self.path, error.strerror)
