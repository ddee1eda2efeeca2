"""Check an audit directory's hash chain and say precisely what is wrong, and where.

Kinds of damage (the first one found is reported; verification stops there):

* ``edited`` -- a record's hash does not match its content, or its ``hash`` no longer matches
  the ``prev_hash`` of the record after it (changed and re-hashed), or it is not JSON, or the
  line is not byte for byte the canonical encoding of what it parses to (JSON escapes,
  duplicate keys, spacing, key order: parsers and grep would read different things);
* ``downgraded`` -- a record is not HMAC-keyed where it must be: after the trail's first keyed
  record, or anywhere when a key is given (the chain mode never goes down);
* ``deleted`` -- records are missing inside a file (a gap in ``seq``);
* ``inserted`` -- a record whose ``seq`` / ``prev_hash`` do not belong where it stands;
* ``reordered`` -- the missing ``seq`` turns up a little later: records were moved;
* ``missing-file`` -- records are missing across a file boundary (a rotated file is gone);
* ``truncated`` -- the trail ends before the last record ``audit.head`` (or an anchor) says
  was written;
* ``head`` -- ``audit.head`` is missing (one is written from the first start on) or, with a
  key, its MAC does not match;
* ``anchor`` -- a record differs from the chain head published to an external anchor.

Records missing from the start of the trail are accepted only when they are whole files and a
chained ``pruned`` record (written by ``audit.retention``) names exactly the removed range and
the last removed hash.

A torn last line of a file (a crash mid-write) is a *warning*: it is not part of the chain,
and the writer continued from the last intact record.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from proxy.audit.anchor import Anchor
from proxy.audit.chain import (
    GENESIS,
    HMAC_SHA256,
    SHA256,
    canonical,
    hasher,
    head_mac,
    sealed_line,
)
from proxy.audit.jsonl import HEAD, TrailFile, head_exists, iter_raw_lines, read_head, trail_files
from proxy.audit.trailid import read_trail_id
from proxy.errors import AuditError

KINDS = (
    "edited",
    "downgraded",
    "deleted",
    "inserted",
    "reordered",
    "missing-file",
    "truncated",
    "head",
    "anchor",
    "torn",
)
LOOKAHEAD = 1000  # records searched ahead to tell a reordering from a deletion
_WRONG_KEY_PROBE = 50  # keyed records tried before a failing first one means "wrong key"


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
    raw: bytes

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
    # Wraps the record stream (a progress bar on a terminal); identity by default.
    watch: Callable[[Iterator[_Record]], Iterator[_Record]] | None = None
    warnings: list[Finding] = field(default_factory=list)
    _buffer: deque[_Record] = field(default_factory=deque)
    _source: Iterator[_Record] | None = None
    _error: _Unreadable | None = None  # met while reading ahead; raised when reached

    def __post_init__(self) -> None:
        records = self._records()
        self._source = self.watch(records) if self.watch is not None else records

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
            return _Record(trail_file, lineno, False, data, raw)
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
    anchors: Iterable[Anchor] = (),
    watch: Callable[[Iterator[Any]], Iterator[Any]] | None = None,
) -> VerifyResult:
    """Verify every file of the trail in ``directory``; see the module docstring.

    ``allow_pruned`` also accepts whole oldest files removed without a ``pruned`` record (by
    hand, before ``audit.retention``), as a warning. ``anchors`` are chain heads published
    elsewhere; every one must match the trail. ``watch`` wraps the stream of records read
    (e.g. a progress bar). Raises :class:`AuditError` for bad input: no
    such directory, no trail files, keyed records without a key, a key that matches none.
    """
    base = Path(directory)
    if not base.is_dir():
        raise AuditError(f"no audit directory at {str(base)!r}")
    files = trail_files(base)
    if not files:
        raise AuditError(
            f"no audit trail files in {str(base)!r} (expected audit.jsonl or audit-*.jsonl[.gz])"
        )
    scanner = _Scanner(files, watch)
    checker = _Checker(key, allow_pruned, _own_anchors(base, anchors))
    try:
        problem = checker.run(scanner)
    except _Unreadable as exc:
        problem = exc.finding
    if problem is None:
        problem = checker.finish(scanner.warnings)
    if problem is None:
        problem = _check_head(base, checker, key, scanner.warnings)
    return VerifyResult(
        records=checker.count,
        first_seq=checker.first_seq,
        last_seq=checker.last.seq if checker.last else None,
        files=len(files),
        problem=problem,
        warnings=tuple(scanner.warnings),
    )


class _Checker:
    def __init__(self, key: bytes | None, allow_pruned: bool, anchors: Iterable[Anchor]) -> None:
        self.sha = hasher(None)
        self.keyed = hasher(key) if key is not None else None
        self.allow_pruned = allow_pruned
        self.expected = 1
        self.prev_hash = GENESIS
        self.count = 0
        self.first_seq: int | None = None
        self.first: _Record | None = None
        self.last: _Record | None = None
        self.first_keyed: _Record | None = None
        self.keyed_verified = 0
        # The missing start of the trail, until a pruned record accounts for it.
        self.unproven_start: _Record | None = None
        self.anchors: dict[int, list[Anchor]] = {}
        for anchor in anchors:
            self.anchors.setdefault(anchor.seq, []).append(anchor)

    def hash_ok(self, record: _Record, scanner: _Scanner) -> bool:
        data = record.data
        kind = data.get("chain")
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
        ok = bool(digest(canonical(data)) == data["hash"])
        if kind == HMAC_SHA256:
            if ok:
                self.keyed_verified += 1
            elif self.keyed_verified == 0 and not self._key_matches_any(scanner):
                raise AuditError(
                    f"the HMAC key matches no record of the trail (first keyed record at "
                    f"{record.where}): wrong key?"
                )
        return ok

    def _key_matches_any(self, scanner: _Scanner) -> bool:
        """Whether any of the next keyed records verifies: if none does, the key is wrong
        (reporting every record as edited would point at the wrong problem)."""
        assert self.keyed is not None
        tried = 0
        for index in range(LOOKAHEAD):
            ahead = scanner.peek(index)
            if ahead is None or tried >= _WRONG_KEY_PROBE:
                break
            if ahead.data.get("chain") == HMAC_SHA256:
                tried += 1
                if self.keyed(canonical(ahead.data)) == ahead.data["hash"]:
                    return True
        return False

    def run(self, scanner: _Scanner) -> Finding | None:
        while (record := scanner.pop()) is not None:
            if self.count == 0 and record.seq != 1:
                problem = self.pruned_start(record)
                if problem is not None:
                    return problem
            problem = self.check(record, scanner)
            if problem is not None:
                return problem
            self.accept(record)
        return None

    def pruned_start(self, record: _Record) -> Finding | None:
        """The trail starts after seq 1: acceptable only at the start of a whole file, and
        only if a pruned record later says so (or ``--allow-pruned`` for files removed by hand)."""
        named = record.file.first_seq
        if not record.first_in_file or (named is not None and named != record.seq):
            return None  # the ordinary gap checks name it (deleted from the start of a file)
        self.expected = record.seq
        self.prev_hash = str(record.data.get("prev_hash"))
        self.unproven_start = record
        return None

    def accept(self, record: _Record) -> None:
        if self.first is None:
            self.first = record
            self.first_seq = record.seq
        self.count += 1
        self.expected = record.seq + 1
        self.prev_hash = record.data["hash"]
        self.last = record
        data = record.data
        if self.first_keyed is None and data.get("chain") == HMAC_SHA256:
            self.first_keyed = record
        start = self.unproven_start
        if (
            start is not None
            and data.get("type") == "pruned"
            and data.get("last_seq") == start.seq - 1
            and data.get("last_hash") == start.data.get("prev_hash")
        ):
            self.unproven_start = None

    def anchored(self, record: _Record) -> Finding | None:
        for anchor in self.anchors.get(record.seq, ()):
            if anchor.hash != record.data["hash"]:
                return _finding(
                    "anchor",
                    record,
                    f"the record differs from the chain head published to {anchor.source}"
                    f"{' at ' + anchor.ts if anchor.ts else ''}: the trail was rewritten",
                )
        return None

    def finish(self, warnings: list[Finding]) -> Finding | None:
        """Checks that need the whole trail: the start, the chain mode, the anchors."""
        start = self.unproven_start
        if start is not None:
            missing = "seq 1" if start.seq == 2 else f"seq 1..{start.seq - 1}"
            if not self.allow_pruned:
                return _finding(
                    "missing-file",
                    start,
                    f"{missing} missing before {start.file.path.name}, and no pruned record "
                    "accounts for them: files were removed by hand (pass --allow-pruned if "
                    "that was retention) or the start of the trail was cut off",
                )
            warnings.append(
                _finding(
                    "missing-file",
                    start,
                    f"{missing} missing: accepted because of --allow-pruned (no pruned record "
                    "proves they were removed by retention)",
                )
            )
        if self.keyed is not None and self.first is not None:
            if self.first_keyed is None:
                return _finding(
                    "downgraded",
                    self.first,
                    "no record carries an HMAC although a key was given: the trail was written "
                    "without audit.hmac_key_file, or rewritten without the key",
                )
            if self.first_keyed.seq != self.first_seq:
                warnings.append(
                    _finding(
                        "downgraded",
                        self.first_keyed,
                        f"records before seq {self.first_keyed.seq} are not keyed (written "
                        "before audit.hmac_key_file was set): the key does not protect them",
                    )
                )
        last = self.last
        if last is not None:
            beyond = [a for seq, items in self.anchors.items() if seq > last.seq for a in items]
            if beyond:
                newest = max(beyond, key=lambda a: a.seq)
                return Finding(
                    "truncated",
                    last.file.path.name,
                    last.line + 1,
                    last.seq + 1,
                    f"{newest.source} says seq {newest.seq} was written but the trail ends at "
                    f"seq {last.seq}: seq {last.seq + 1}..{newest.seq} are missing",
                )
        return None

    def check(self, record: _Record, scanner: _Scanner) -> Finding | None:
        seq = record.seq
        expected = self.expected
        if record.raw != sealed_line(record.data):
            return _finding(
                "edited",
                record,
                "the line is not in the writer's canonical form (JSON escapes, a duplicate "
                "key, spacing or key order changed): it was edited",
            )
        downgrade = self.downgraded(record)
        if downgrade is not None:
            return downgrade
        own_ok = self.hash_ok(record, scanner)
        linked = record.data.get("prev_hash") == self.prev_hash
        if seq == expected:
            if own_ok and linked:
                return self.anchored(record)
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

    def downgraded(self, record: _Record) -> Finding | None:
        kind = record.data.get("chain")
        if kind == HMAC_SHA256:
            return None
        if self.keyed is not None and kind == SHA256 and self.first_keyed is None:
            return None  # a plain start before the key was set: warned about in finish()
        if self.first_keyed is not None or (self.keyed is not None and kind is None):
            return _finding(
                "downgraded",
                record,
                f"the record is not HMAC-keyed (chain {kind!r}) where the trail is keyed"
                + (f" since {self.first_keyed.where}" if self.first_keyed else "")
                + ": rewritten without the key",
            )
        return None

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


def _own_anchors(base: Path, anchors: Iterable[Anchor]) -> list[Anchor]:
    """The anchors published for this trail (by ``audit.id``); an error when anchors were
    given and none is this trail's, so a replaced ``audit.id`` cannot dodge them."""
    given = list(anchors)
    if not given:
        return []
    trail_id = read_trail_id(base)
    own = [a for a in given if a.trail_id == trail_id]
    if not own:
        raise AuditError(
            f"none of the {len(given)} anchors is for this trail (audit.id {trail_id}): "
            "wrong anchor source, or audit.id was replaced"
        )
    return own


def _check_head(
    base: Path, checker: _Checker, key: bytes | None, warnings: list[Finding]
) -> Finding | None:
    head = read_head(base)
    last = checker.last
    last_seq = last.seq if last else 0
    if head is None:
        if head_exists(base):
            return Finding("head", HEAD, 0, None, "audit.head is not readable: it was altered")
        return Finding(
            "head",
            HEAD,
            0,
            None,
            "audit.head is missing (the writer creates it at its first start): it was "
            "removed, so records cut off the end of the newest file could go unnoticed",
        )
    if key is not None and (head.mac is None or head.mac != head_mac(key, head.seq, head.hash)):
        return Finding(
            "head",
            HEAD,
            0,
            head.seq,
            "audit.head does not carry a valid MAC for this key: it was rewritten",
        )
    if key is None and head.mac is not None and checker.first_keyed is None and last is not None:
        return _finding(
            "downgraded",
            last,
            "audit.head carries a MAC, so the writer had an HMAC key, but no record is keyed: "
            "the trail was rewritten without the key",
        )
    if head.seq > last_seq:
        name = last.file.path.name if last else HEAD
        return Finding(
            "truncated",
            name,
            (last.line + 1) if last else 0,
            last_seq + 1,
            f"audit.head says seq {head.seq} was written but the trail ends at seq {last_seq}:"
            f" seq {last_seq + 1}..{head.seq} are missing",
        )
    if last is not None and head.seq == last_seq and head.hash != last.data["hash"]:
        return _finding("edited", last, "the newest record's hash differs from audit.head")
    return None


def _finding(kind: str, record: _Record, message: str) -> Finding:
    return Finding(kind, record.file.path.name, record.line, record.seq, message)
