"""Check an audit directory's hash chain and say precisely what is wrong, and where.

Kinds of damage (the first one found is reported; verification stops there):

* ``edited`` -- a record's hash does not match its content, or its ``hash`` no longer matches
  the ``prev_hash`` of the record after it (changed and re-hashed), or it is not JSON;
* ``deleted`` -- records are missing inside a file (a gap in ``seq``);
* ``inserted`` -- a record whose ``seq`` / ``prev_hash`` do not belong where it stands;
* ``reordered`` -- the missing ``seq`` turns up a little later: records were moved;
* ``missing-file`` -- records are missing across a file boundary (a rotated file is gone);
* ``truncated`` -- the trail ends before the last record ``audit.head`` says was written.

A torn last line of a file (a crash mid-write) is a *warning*: it is not part of the chain,
and the writer continued from the last intact record.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from proxy.audit.chain import GENESIS, HMAC_SHA256, SHA256, canonical, hasher
from proxy.audit.jsonl import HEAD, TrailFile, iter_raw_lines, read_head, trail_files
from proxy.errors import AuditError

KINDS = ("edited", "deleted", "inserted", "reordered", "missing-file", "truncated", "torn")
LOOKAHEAD = 1000  # records searched ahead to tell a reordering from a deletion


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    file: str
    line: int
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{self.kind}: {where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "file": self.file,
            "line": self.line,
            "seq": self.seq,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class VerifyResult:
    records: int
    first_seq: int | None
    last_seq: int | None
    files: int
    problem: Finding | None = None
    warnings: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        span = f"seq {self.first_seq}..{self.last_seq}" if self.records else "no records"
        return f"{self.records} records, {span}, files {self.files}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "files": self.files,
            "problem": self.problem.as_dict() if self.problem else None,
            "warnings": [w.as_dict() for w in self.warnings],
        }


@dataclass(slots=True)
class _Record:
    file: TrailFile
    line: int
    first_in_file: bool
    data: dict[str, Any]

    @property
    def seq(self) -> int:
        return int(self.data["seq"])

    @property
    def where(self) -> str:
        return f"{self.file.path.name}:{self.line}"


class _Unreadable(Exception):
    def __init__(self, finding: Finding) -> None:
        self.finding = finding


@dataclass(slots=True)
class _Scanner:
    """Intact records in trail order, with a bounded look-ahead buffer."""

    files: list[TrailFile]
    warnings: list[Finding] = field(default_factory=list)
    _buffer: deque[_Record] = field(default_factory=deque)
    _source: Iterator[_Record] | None = None
    _error: _Unreadable | None = None  # met while reading ahead; raised when reached

    def __post_init__(self) -> None:
        self._source = self._records()

    def _records(self) -> Iterator[_Record]:
        for trail_file in self.files:
            first = True
            lines = iter_raw_lines(trail_file.path)
            previous: bytes | None = None
            lineno = 0
            for raw in lines:
                if previous is not None:
                    record = self._parse(trail_file, lineno, previous, last=False)
                    if record is not None:
                        record.first_in_file = first
                        first = False
                        yield record
                previous = raw
                lineno += 1
            if previous is not None:
                record = self._parse(trail_file, lineno, previous, last=True)
                if record is not None:
                    record.first_in_file = first
                    yield record

    def _parse(self, trail_file: TrailFile, lineno: int, raw: bytes, last: bool) -> _Record | None:
        data: Any = None
        if raw.endswith(b"\n"):
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                data = None
        intact = (
            isinstance(data, dict)
            and type(data.get("seq")) is int
            and isinstance(data.get("hash"), str)
        )
        if intact:
            return _Record(trail_file, lineno, False, data)
        if last:
            self.warnings.append(
                Finding(
                    "torn",
                    trail_file.path.name,
                    lineno,
                    None,
                    f"a partial last line ({len(raw)} bytes, a crash mid-write) is not part "
                    "of the chain",
                )
            )
            return None
        raise _Unreadable(
            Finding(
                "edited",
                trail_file.path.name,
                lineno,
                None,
                "this line is not an audit record (not JSON, or no seq/hash)",
            )
        )

    def peek(self, index: int) -> _Record | None:
        assert self._source is not None
        while len(self._buffer) <= index:
            if self._error is not None:
                return None
            try:
                self._buffer.append(next(self._source))
            except StopIteration:
                return None
            except _Unreadable as exc:
                self._error = exc
                return None
        return self._buffer[index]

    def pop(self) -> _Record | None:
        record = self.peek(0)
        if record is None and self._error is not None:
            raise self._error
        if record is not None:
            self._buffer.popleft()
        return record


def verify_trail(
    directory: str | Path,
    key: bytes | None = None,
    *,
    allow_pruned: bool = False,
) -> VerifyResult:
    """Verify every file of the trail in ``directory``; see the module docstring."""
    base = Path(directory)
    if not base.is_dir():
        raise AuditError(f"no audit directory at {str(base)!r}")
    files = trail_files(base)
    scanner = _Scanner(files)
    checker = _Checker(key, allow_pruned)
    try:
        problem = checker.run(scanner)
    except _Unreadable as exc:
        problem = exc.finding
    if problem is None:
        problem = _check_head(base, checker, scanner.warnings)
    return VerifyResult(
        records=checker.count,
        first_seq=checker.first_seq,
        last_seq=checker.last.seq if checker.last else None,
        files=len(files),
        problem=problem,
        warnings=tuple(scanner.warnings),
    )


class _Checker:
    def __init__(self, key: bytes | None, allow_pruned: bool) -> None:
        self.sha = hasher(None)
        self.keyed = hasher(key) if key is not None else None
        self.allow_pruned = allow_pruned
        self.expected = 1
        self.prev_hash = GENESIS
        self.count = 0
        self.first_seq: int | None = None
        self.last: _Record | None = None

    def hash_ok(self, record: _Record) -> bool:
        data = record.data
        kind = data.get("chain", SHA256)
        if kind == SHA256:
            digest = self.sha
        elif kind == HMAC_SHA256:
            if self.keyed is None:
                raise AuditError(
                    f"{record.where}: records are HMAC-chained; pass --hmac-key-file "
                    "with the key of audit.hmac_key_file"
                )
            digest = self.keyed
        else:
            return False
        return bool(digest(canonical(data)) == data["hash"])

    def run(self, scanner: _Scanner) -> Finding | None:
        while (record := scanner.pop()) is not None:
            if self.count == 0 and self.allow_pruned:
                self.expected = record.seq
                self.prev_hash = str(record.data.get("prev_hash"))
            problem = self.check(record, scanner)
            if problem is not None:
                return problem
            self.accept(record)
        return None

    def accept(self, record: _Record) -> None:
        if self.first_seq is None:
            self.first_seq = record.seq
        self.count += 1
        self.expected = record.seq + 1
        self.prev_hash = record.data["hash"]
        self.last = record

    def check(self, record: _Record, scanner: _Scanner) -> Finding | None:
        seq = record.seq
        expected = self.expected
        own_ok = self.hash_ok(record)
        linked = record.data.get("prev_hash") == self.prev_hash
        if seq == expected:
            if own_ok and linked:
                return None
            following = scanner.peek(0)
            if following is not None and following.seq == seq:
                return _finding(
                    "inserted",
                    record,
                    f"a second record with seq {seq} follows: this one does not belong",
                )
            if not own_ok:
                return _finding("edited", record, "the record does not match its hash")
            if self.last is not None:
                return _finding(
                    "edited",
                    self.last,
                    f"its hash does not match the prev_hash of the next record "
                    f"({record.where}): one of the two was changed and re-hashed",
                )
            return _finding("inserted", record, "the first record does not start the chain")
        if seq < expected:
            return _finding(
                "inserted",
                record,
                f"seq {seq} comes after seq {expected - 1}: this record does not belong here",
            )
        return self.gap(record, scanner, own_ok)

    def gap(self, record: _Record, scanner: _Scanner, own_ok: bool) -> Finding:
        seq, expected = record.seq, self.expected
        missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
        for index in range(LOOKAHEAD):
            ahead = scanner.peek(index)
            if ahead is None:
                break
            if ahead.seq == seq:
                return _finding(
                    "inserted", record, f"seq {seq} appears twice: this copy does not belong"
                )
            if ahead.seq == expected:
                if not own_ok:
                    return _finding("inserted", record, "a record that does not belong here")
                return _finding(
                    "reordered",
                    record,
                    f"seq {seq} stands where seq {expected} belongs ({missing} follow later, "
                    f"at {ahead.where})",
                )
        named_first = record.file.first_seq
        if record.first_in_file and (named_first is None or named_first >= seq):
            before = self.last.file.path.name if self.last else "the start of the trail"
            return _finding(
                "missing-file",
                record,
                f"{missing} missing between {before} and {record.file.path.name}: a rotated "
                "file was removed (or the end of the previous file was cut off)",
            )
        if record.first_in_file and named_first is not None and named_first < seq:
            missing = (
                f"seq {named_first}"
                if seq == named_first + 1
                else (f"seq {named_first}..{seq - 1}")
            )
            return _finding(
                "deleted",
                record,
                f"{missing} deleted from the start of this file (its name says it begins at "
                f"seq {named_first})",
            )
        return _finding("deleted", record, f"{missing} deleted before this record")


def _check_head(base: Path, checker: _Checker, warnings: list[Finding]) -> Finding | None:
    head = read_head(base)
    last = checker.last
    last_seq = last.seq if last else 0
    if head is None:
        warnings.append(
            Finding(
                "truncated",
                HEAD,
                0,
                None,
                "no audit.head: records cut off the end of the newest file cannot be detected",
            )
        )
        return None
    head_seq, head_hash = head
    if head_seq > last_seq:
        name = last.file.path.name if last else HEAD
        return Finding(
            "truncated",
            name,
            (last.line + 1) if last else 0,
            last_seq + 1,
            f"audit.head says seq {head_seq} was written but the trail ends at seq {last_seq}:"
            f" seq {last_seq + 1}..{head_seq} are missing",
        )
    if last is not None and head_seq == last_seq and head_hash != last.data["hash"]:
        return _finding("edited", last, "the newest record's hash differs from audit.head")
    return None


def _finding(kind: str, record: _Record, message: str) -> Finding:
    return Finding(kind, record.file.path.name, record.line, record.seq, message)
