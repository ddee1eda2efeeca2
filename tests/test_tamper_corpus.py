"""The tamper corpus: every way of rewriting the audit trail that the security review tried (and
the classic ones) is detected by ``pgwarden verify`` -- with the HMAC key where the forger does
not have it, and with an external anchor where there is no key at all.

Each case is a function that damages a freshly written trail the way a forger with write
access to the audit directory would; the test fails if ``verify`` calls the result intact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy import cli, config
from proxy.audit.anchor import anchor_message, parse_anchor_text
from proxy.audit.chain import GENESIS, HMAC_SHA256, SHA256, hasher, head_mac, sealed_line
from proxy.audit.jsonl import CURRENT, HEAD, read_head, rotated_name, trail_files
from proxy.audit.trail import AuditTrail
from proxy.audit.trailid import read_trail_id
from proxy.audit.verify import verify_trail
from proxy.errors import AuditError

KEY = b"the-real-audit-key"
FORGER_KEY = b"a-key-the-forger-made-up"
PROXY = "p1"


def write_trail(directory: Path, key_file: Path | None, count: int = 30) -> None:
    cfg = config.defaults().replace(
        audit__dir=str(directory),
        audit__rotate_size="2kB",
        audit__fsync="none",
        audit__hmac_key_file=str(key_file) if key_file else "",
    )
    trail = AuditTrail(cfg, PROXY)
    trail.open()
    for n in range(1, count + 1):
        trail.submit(
            {
                "v": 1,
                "proxy_id": PROXY,
                "type": "query",
                "ts": "2026-11-26T07:40:00.000000Z",
                "user": "alice",
                "statement": f"DELETE FROM orders WHERE id = {n}",
                "decision": {"action": "block" if n % 3 == 0 else "allow"},
            }
        )
    trail.close()


# --- what a forger does with the files -------------------------------------------------------


@dataclass
class Trail:
    directory: Path
    keyed: bool

    def files(self) -> list[Path]:
        return [f.path for f in trail_files(self.directory)]

    def lines(self, path: Path) -> list[bytes]:
        return path.read_bytes().splitlines(keepends=True)

    def write(self, path: Path, lines: list[bytes]) -> None:
        path.write_bytes(b"".join(lines))

    def all_records(self) -> list[tuple[Path, int, dict[str, Any]]]:
        return [
            (path, index, orjson.loads(line))
            for path in self.files()
            for index, line in enumerate(self.lines(path))
        ]

    def edit_line(self, file_index: int, line: int, fn: Callable[[bytes], bytes]) -> None:
        path = self.files()[file_index]
        lines = self.lines(path)
        lines[line] = fn(lines[line])
        self.write(path, lines)

    def rechain(
        self,
        start_seq: int,
        key: bytes | None,
        chain: str | None,
        edit: Callable[[dict[str, Any]], None] | None = None,
        head: bool = True,
    ) -> None:
        """Re-hash every record from ``start_seq`` on (``edit`` applied to the first) with
        ``key`` (None: SHA-256), setting ``chain`` (None: drop the field), and rewrite
        audit.head to match -- a consistent rewrite."""
        digest = hasher(key)
        prev = GENESIS
        last: dict[str, Any] | None = None
        for path in self.files():
            out = []
            for line in self.lines(path):
                record = orjson.loads(line)
                if record["seq"] >= start_seq:
                    if record["seq"] == start_seq and edit is not None:
                        edit(record)
                    record["prev_hash"] = prev
                    record.pop("hash")
                    if chain is None:
                        record.pop("chain", None)
                    else:
                        record["chain"] = chain
                    record["hash"] = digest(orjson.dumps(_without_hash(record), option=_SORT))
                    line = sealed_line(record)
                prev = orjson.loads(line)["hash"]
                last = orjson.loads(line)
                out.append(line)
            self.write(path, out)
        if head and last is not None:
            self.set_head(last["seq"], last["hash"], key)

    def set_head(self, seq: int, digest: str, key: bytes | None) -> None:
        body: dict[str, Any] = {"seq": seq, "hash": digest}
        if key is not None:
            body["mac"] = head_mac(key, seq, digest)
        (self.directory / HEAD).write_bytes(orjson.dumps(body) + b"\n")

    def truncate(self, count: int) -> dict[str, Any]:
        """Cut the last ``count`` records off the newest file; returns the new last record."""
        path = self.directory / CURRENT
        lines = self.lines(path)
        assert len(lines) > count
        self.write(path, lines[:-count])
        return dict(orjson.loads(lines[-count - 1]))


_SORT = orjson.OPT_SORT_KEYS


def _without_hash(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "hash"}


def _replace(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def fn(line: bytes) -> bytes:
        assert old in line, (old, line)
        return line.replace(old, new, 1)

    return fn


def _set_field(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def fn(record: dict[str, Any]) -> None:
        record[name] = value

    return fn


# --- the cases ---------------------------------------------------------------------------------
# Each takes the Trail and damages it. ``keyed`` cases run on an HMAC trail and are verified with
# the real key (the forger does not have it); the others on a plain SHA-256 trail, verified
# without a key. ``anchored`` cases are verified against the chain head published before the
# damage (what syslog / a webhook / the store received).


def edit_value(t: Trail) -> None:
    t.edit_line(1, 2, _replace(b"DELETE FROM orders", b"SELECT * FROM orders"))


def edit_and_rehash_one(t: Trail) -> None:
    path = t.files()[1]
    lines = t.lines(path)
    record = orjson.loads(lines[1])
    record["user"] = "mallory"
    record["hash"] = hasher(KEY if t.keyed else None)(
        orjson.dumps(_without_hash(record), option=_SORT)
    )
    lines[1] = sealed_line(record)
    t.write(path, lines)


def json_escape_same_value(t: Trail) -> None:
    # Parses to the very same record: only a byte-level check sees it (grep/`logs` would not).
    t.edit_line(0, 2, _replace(b'"action":"block"', b'"action":"\\u0062lock"'))


def json_escape_in_statement(t: Trail) -> None:
    t.edit_line(1, 0, _replace(b"DELETE", b"\\u0044ELETE"))


def duplicate_key_first_wins(t: Trail) -> None:
    # orjson keeps the last "user"; a first-wins parser shows "mallory".
    t.edit_line(1, 1, _replace(b'{"', b'{"user":"mallory","'))


def duplicate_key_last_wins(t: Trail) -> None:
    t.edit_line(1, 1, lambda line: line[:-2] + b',"user":"alice"}\n')


def whitespace_added(t: Trail) -> None:
    t.edit_line(1, 1, _replace(b'","', b'", "'))


def keys_reordered(t: Trail) -> None:
    def fn(line: bytes) -> bytes:
        record = orjson.loads(line)
        return orjson.dumps(dict(reversed(list(record.items())))) + b"\n"

    t.edit_line(1, 1, fn)


def not_json(t: Trail) -> None:
    t.edit_line(1, 1, lambda line: b"garbage\n")


def seq_changed(t: Trail) -> None:
    t.edit_line(1, 1, lambda line: line.replace(b'"seq":', b'"seq":1', 1))


def prev_hash_changed(t: Trail) -> None:
    t.edit_line(1, 1, lambda line: line.replace(b'"prev_hash":"', b'"prev_hash":"f', 1))


def unknown_chain_kind(t: Trail) -> None:
    t.edit_line(1, 1, _replace(b'"chain":"', b'"chain":"x'))


def edit_timestamp(t: Trail) -> None:
    t.edit_line(1, 1, _replace(b'"ts":"2026-11-26T07', b'"ts":"2026-11-25T07'))


def hash_in_upper_case(t: Trail) -> None:
    def fn(line: bytes) -> bytes:
        record = orjson.loads(line)
        return line.replace(record["hash"].encode(), record["hash"].upper().encode())

    t.edit_line(1, 1, fn)


def swap_rotated_file_names(t: Trail) -> None:
    first, second = t.files()[:2]
    temp = first.with_name("swap")
    first.rename(temp)
    second.rename(first)
    temp.rename(second)


def copy_rotated_file(t: Trail) -> None:
    files = trail_files(t.directory)
    source = files[1]
    assert source.rotated_at is not None and source.first_seq is not None
    target = source.path.with_name(rotated_name(source.rotated_at, source.first_seq + 1))
    target.write_bytes(source.path.read_bytes())


def append_forged_record(t: Trail) -> None:
    current = t.directory / CURRENT
    lines = t.lines(current)
    forged = orjson.loads(lines[-1])
    forged.update(statement="SELECT 'all fine'", seq=forged["seq"] + 1, prev_hash=forged["hash"])
    forged.pop("hash")
    key = FORGER_KEY if t.keyed else None
    forged["hash"] = hasher(key)(orjson.dumps(forged, option=_SORT))
    t.write(current, [*lines, sealed_line(forged)])
    t.set_head(forged["seq"], forged["hash"], key)


def delete_middle_record(t: Trail) -> None:
    path = t.files()[1]
    lines = t.lines(path)
    del lines[1]
    t.write(path, lines)


def delete_first_of_rotated_file(t: Trail) -> None:
    path = t.files()[1]
    t.write(path, t.lines(path)[1:])


def insert_duplicate(t: Trail) -> None:
    path = t.files()[1]
    lines = t.lines(path)
    lines.insert(1, lines[0])
    t.write(path, lines)


def insert_forged(t: Trail) -> None:
    path = t.files()[1]
    lines = t.lines(path)
    forged = orjson.loads(lines[1])
    forged["statement"] = "SELECT 'nothing to see'"
    lines.insert(1, sealed_line(forged))
    t.write(path, lines)


def reorder_records(t: Trail) -> None:
    path = t.files()[1]
    lines = t.lines(path)
    lines[0], lines[1] = lines[1], lines[0]
    t.write(path, lines)


def remove_middle_file(t: Trail) -> None:
    t.files()[1].unlink()


def remove_oldest_file(t: Trail) -> None:
    t.files()[0].unlink()


def prune_inside_first_file(t: Trail) -> None:
    # Drop the oldest records of the first file and rename it so its name matches its new
    # first seq: a "retention" that never happened.
    path = t.files()[0]
    lines = t.lines(path)
    first = orjson.loads(lines[2])
    t.write(path, lines[2:])
    parsed = trail_files(t.directory)[0]
    assert parsed.rotated_at is not None
    path.rename(path.with_name(rotated_name(parsed.rotated_at, first["seq"])))


def prune_with_forged_record(t: Trail) -> None:
    # Remove the oldest file and append a "pruned" record claiming retention did it.
    files = t.files()
    removed_last = orjson.loads(t.lines(files[0])[-1])
    files[0].unlink()
    current = t.directory / CURRENT
    lines = t.lines(current)
    last = orjson.loads(lines[-1])
    forged = {
        "v": 1,
        "type": "pruned",
        "proxy_id": PROXY,
        "ts": "2026-11-27T00:00:00.000000Z",
        "files": [files[0].name],
        "first_seq": 1,
        "last_seq": removed_last["seq"],
        "last_hash": removed_last["hash"],
        "seq": last["seq"] + 1,
        "prev_hash": last["hash"],
        "chain": HMAC_SHA256 if t.keyed else SHA256,
    }
    key = FORGER_KEY if t.keyed else None
    forged["hash"] = hasher(key)(orjson.dumps(forged, option=_SORT))
    t.write(current, [*lines, sealed_line(forged)])
    t.set_head(forged["seq"], forged["hash"], key)


def truncate_tail(t: Trail) -> None:
    t.truncate(2)


def truncate_tail_and_delete_head(t: Trail) -> None:
    t.truncate(2)
    (t.directory / HEAD).unlink()


def truncate_tail_and_rewrite_head(t: Trail) -> None:
    last = t.truncate(2)
    t.set_head(last["seq"], last["hash"], None)


def truncate_tail_and_rewrite_head_with_forged_mac(t: Trail) -> None:
    last = t.truncate(2)
    t.set_head(last["seq"], last["hash"], FORGER_KEY)


def truncate_tail_and_empty_head(t: Trail) -> None:
    t.truncate(2)
    (t.directory / HEAD).write_bytes(b"")


def delete_current_file(t: Trail) -> None:
    (t.directory / CURRENT).unlink()


# Downgrades: the forger has no key and rewrites with plain SHA-256 (6 forms the review tried).


def downgrade_all_to_sha256(t: Trail) -> None:
    t.rechain(1, None, SHA256, _set_field("user", "mallory"))


def downgrade_all_dropping_chain_field(t: Trail) -> None:
    t.rechain(1, None, None, _set_field("user", "mallory"))


def downgrade_all_sha256_but_claim_hmac(t: Trail) -> None:
    t.rechain(1, None, HMAC_SHA256, _set_field("user", "mallory"))


def downgrade_tail_to_sha256(t: Trail) -> None:
    t.rechain(20, None, SHA256, _set_field("user", "mallory"))


def downgrade_tail_dropping_chain_field(t: Trail) -> None:
    t.rechain(20, None, None, _set_field("user", "mallory"))


def downgrade_all_with_chain_none(t: Trail) -> None:
    t.rechain(1, None, "none", _set_field("user", "mallory"))


def downgrade_all_keeping_head_mac(t: Trail) -> None:
    # Only the records are rewritten: the head still carries the writer's MAC.
    head = read_head(t.directory)
    t.rechain(1, None, SHA256, _set_field("user", "mallory"), head=False)
    assert head is not None
    last = t.all_records()[-1][2]
    (t.directory / HEAD).write_bytes(
        orjson.dumps({"seq": last["seq"], "hash": last["hash"], "mac": head.mac}) + b"\n"
    )


# Consistent rewrites of a plain chain: only an external anchor can tell.


def rewrite_from_middle(t: Trail) -> None:
    t.rechain(12, None, SHA256, _set_field("statement", "SELECT 1"))


def rewrite_everything(t: Trail) -> None:
    t.rechain(1, None, SHA256, _set_field("user", "mallory"))


def truncate_and_restore_older_head(t: Trail) -> None:
    last = t.truncate(3)
    t.set_head(last["seq"], last["hash"], None)


@dataclass(frozen=True)
class Case:
    damage: Callable[[Trail], None]
    keyed: bool = False
    anchored: bool = False

    @property
    def id(self) -> str:
        return (
            self.damage.__name__
            + ("[hmac]" if self.keyed else "")
            + ("[anchor]" if self.anchored else "")
        )


_EVERYWHERE = (
    edit_value,
    edit_timestamp,
    hash_in_upper_case,
    swap_rotated_file_names,
    copy_rotated_file,
    edit_and_rehash_one,
    json_escape_same_value,
    json_escape_in_statement,
    duplicate_key_first_wins,
    duplicate_key_last_wins,
    whitespace_added,
    keys_reordered,
    not_json,
    seq_changed,
    prev_hash_changed,
    unknown_chain_kind,
    delete_middle_record,
    delete_first_of_rotated_file,
    insert_duplicate,
    insert_forged,
    reorder_records,
    remove_middle_file,
    remove_oldest_file,
    prune_inside_first_file,
    truncate_tail,
    truncate_tail_and_delete_head,
    truncate_tail_and_empty_head,
    delete_current_file,
)
CASES = (
    [Case(d) for d in _EVERYWHERE]
    + [Case(d, keyed=True) for d in _EVERYWHERE]
    + [
        Case(d, keyed=True)
        for d in (
            append_forged_record,
            prune_with_forged_record,
            truncate_tail_and_rewrite_head,
            truncate_tail_and_rewrite_head_with_forged_mac,
            downgrade_all_to_sha256,
            downgrade_all_dropping_chain_field,
            downgrade_all_sha256_but_claim_hmac,
            downgrade_tail_to_sha256,
            downgrade_tail_dropping_chain_field,
            downgrade_all_with_chain_none,
            downgrade_all_keeping_head_mac,
            rewrite_from_middle,
            rewrite_everything,
        )
    ]
    + [
        Case(d, anchored=True)
        for d in (
            truncate_tail_and_rewrite_head,
            rewrite_from_middle,
            rewrite_everything,
            truncate_and_restore_older_head,
            downgrade_all_keeping_head_mac,
        )
    ]
)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_tampering_is_detected(case: Case, tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    key_file = None
    if case.keyed:
        key_file = tmp_path / "key"
        key_file.write_bytes(KEY)
    write_trail(directory, key_file)
    assert len(trail_files(directory)) >= 4
    key = KEY if case.keyed else None
    assert verify_trail(directory, key).ok, "the untouched trail must verify"
    head = read_head(directory)
    assert head is not None
    trail_id = read_trail_id(directory)
    assert trail_id is not None
    anchors = parse_anchor_text(
        anchor_message(trail_id, PROXY, head.seq, head.hash).decode(), "syslog"
    )
    case.damage(Trail(directory, case.keyed))
    try:
        result = verify_trail(directory, key, anchors=anchors if case.anchored else ())
    except AuditError as exc:
        # Bad input is detection too (exit 2), but only for these reasons.
        assert "wrong key?" in str(exc) or "HMAC-chained" in str(exc)
        return
    assert result.problem is not None, f"{case.id} passed verification"


def test_the_corpus_holds_every_named_form() -> None:
    assert len(CASES) >= 71
    # Plain rewrites pass without a key or anchor: that is the gap the key and anchors close.
    assert {c.damage for c in CASES if c.anchored} >= {rewrite_everything, rewrite_from_middle}


def test_plain_consistent_rewrite_passes_without_anchor_or_key(tmp_path: Path) -> None:
    # The honest limit, stated in docs/security.md: this is what anchors are for.
    directory = tmp_path / "audit"
    write_trail(directory, None)
    rewrite_everything(Trail(directory, False))
    assert verify_trail(directory).ok


def test_verify_cli_with_an_anchor_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "audit"
    write_trail(directory, None)
    head = read_head(directory)
    assert head is not None
    log = tmp_path / "syslog"
    log.write_text(
        "Nov 27 10:00:00 host pgwarden: pgwarden-anchor "
        + anchor_message("f" * 32, "other-proxy", 999, "0" * 64).decode()
        + "\nNov 27 10:01:00 host pgwarden: pgwarden-anchor "
        + anchor_message(str(read_trail_id(directory)), PROXY, head.seq, head.hash).decode()
        + "\n"
    )
    assert cli.main(["verify", str(directory), "--anchor", str(log)]) == 0
    rewrite_from_middle(Trail(directory, False))
    assert cli.main(["verify", str(directory)]) == 0
    assert cli.main(["verify", str(directory), "--anchor", str(log)]) == 1
    assert "FAILED: anchor:" in capsys.readouterr().out
    # A replaced audit.id does not dodge the anchors: none of them applies, which is an error.
    (directory / "audit.id").write_text("e" * 32 + "\n")
    assert cli.main(["verify", str(directory), "--anchor", str(log)]) == 2
    assert "none of the 2 anchors is for this trail" in capsys.readouterr().err
