"""Retention writes a chained ``pruned`` record; the chain mode never goes down; the keyed head;
the chain head published to syslog and a webhook, and `verify --anchor` against them."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from proxy import cli, config
from proxy.audit.anchor import AnchorPublisher, parse_anchor_text
from proxy.audit.chain import head_mac
from proxy.audit.jsonl import parse_rotated_name, read_head, rotated_name, trail_files
from proxy.audit.reader import iter_events
from proxy.audit.trail import AuditTrail
from proxy.audit.trailid import read_trail_id
from proxy.audit.verify import verify_trail
from proxy.errors import AuditError


def make_trail(directory: Path, **changes: Any) -> AuditTrail:
    cfg = config.defaults().replace(
        audit__dir=str(directory), audit__fsync="none", audit__rotate_size="1kB", **changes
    )
    trail = AuditTrail(cfg, "p1")
    trail.open()
    return trail


def fill(trail: AuditTrail, count: int) -> None:
    for n in range(count):
        trail.submit(
            {
                "v": 1,
                "type": "query",
                "ts": "2026-11-26T07:40:00.000000Z",
                "proxy_id": "p1",
                "statement": f"SELECT {n}",
            }
        )


def write(directory: Path, count: int, **changes: Any) -> None:
    """``count`` records written by a trail opened and closed for it."""
    trail = make_trail(directory, **changes)
    fill(trail, count)
    trail.close()


def age_rotated_files(directory: Path, days: int) -> None:
    """Pretend every rotated file was rotated ``days`` ago (the name carries the time)."""
    for trail_file in trail_files(directory, include_current=False):
        assert trail_file.first_seq is not None
        when = datetime.now(UTC) - timedelta(days=days)
        trail_file.path.rename(trail_file.path.with_name(rotated_name(when, trail_file.first_seq)))


def test_retention_prunes_whole_files_behind_a_chained_record(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    write(audit, 40)
    before = trail_files(audit)
    assert len(before) >= 4
    age_rotated_files(audit, 10)
    write(audit, 1, audit__retention="7d")
    kept = trail_files(audit)
    assert len(kept) < len(before)
    (pruned,) = [e for e in iter_events(audit) if e["type"] == "pruned"]
    first_kept = next(iter_events(audit))
    assert pruned["last_seq"] == first_kept["seq"] - 1
    assert pruned["last_hash"] == first_kept["prev_hash"]
    # every file rotated before (all but audit.jsonl) was old enough
    assert pruned["first_seq"] == 1 and len(pruned["files"]) == len(before) - 1
    result = verify_trail(audit)
    assert result.ok, result.problem
    assert result.first_seq == pruned["last_seq"] + 1 and not result.warnings
    # Removing one more file by hand is not covered by the record.
    trail_files(audit)[0].path.unlink()
    result = verify_trail(audit)
    assert result.problem is not None and result.problem.kind == "missing-file"
    assert "no pruned record" in result.problem.message


def test_files_removed_by_hand_need_allow_pruned_and_warn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = tmp_path / "audit"
    write(audit, 30)
    trail_files(audit)[0].path.unlink()
    assert cli.main(["verify", str(audit)]) == 1
    assert cli.main(["verify", str(audit), "--allow-pruned"]) == 0
    captured = capsys.readouterr()
    assert "warning: missing-file:" in captured.err and "--allow-pruned" in captured.err


def test_the_writer_never_continues_a_keyed_trail_unkeyed(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    key_file = tmp_path / "key"
    key_file.write_bytes(b"k" * 32)
    trail = make_trail(audit, audit__hmac_key_file=str(key_file))
    fill(trail, 3)
    trail.close()
    head = read_head(audit)
    assert head is not None and head.mac == head_mac(b"k" * 32, head.seq, head.hash)
    with pytest.raises(AuditError, match="HMAC-keyed"):
        make_trail(audit)


def test_a_plain_start_before_the_key_was_set_is_a_warning(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    write(audit, 3)
    key_file = tmp_path / "key"
    key_file.write_bytes(b"k" * 32)
    trail = make_trail(audit, audit__hmac_key_file=str(key_file))
    fill(trail, 3)
    trail.close()
    result = verify_trail(audit, b"k" * 32)
    assert result.ok, result.problem
    assert [w.kind for w in result.warnings] == ["downgraded"]


def test_empty_trail_has_a_head_from_the_start(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    make_trail(audit).close()
    head = read_head(audit)
    assert head is not None and head.seq == 0


class _Syslog(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.got = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.lines.append(data.decode())
        self.got.set()


def test_anchor_published_to_syslog_and_webhook_catches_a_rewrite(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    posted: list[bytes] = []
    hooked: list[asyncio.Event] = []

    async def receive(request: web.Request) -> web.Response:
        posted.append(await request.read())
        hooked[0].set()
        return web.Response(status=204)

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        hooked.append(asyncio.Event())
        syslog = _Syslog()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: syslog, local_addr=("127.0.0.1", 0), family=socket.AF_INET
        )
        port = transport.get_extra_info("sockname")[1]
        app = web.Application()
        app.router.add_post("/anchor", receive)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        web_port = runner.addresses[0][1]
        trail = make_trail(
            audit,
            audit__anchor_syslog=f"127.0.0.1:{port}",
            audit__anchor_webhook=f"http://127.0.0.1:{web_port}/anchor",
            audit__anchor_interval="20ms",
        )
        cfg = config.defaults().replace(
            audit__anchor_syslog=f"127.0.0.1:{port}",
            audit__anchor_webhook=f"http://127.0.0.1:{web_port}/anchor",
            audit__anchor_interval="20ms",
        )
        publisher = AnchorPublisher(cfg, trail, "p1")
        await publisher.start()
        fill(trail, 20)
        async with asyncio.timeout(10):
            await hooked[0].wait()
            await syslog.got.wait()
        fill(trail, 5)
        await trail.aclose()
        await publisher.aclose()
        await runner.cleanup()
        transport.close()
        return syslog.lines

    lines = asyncio.run(main())
    assert all("pgwarden-anchor {" in line for line in lines)
    anchors = parse_anchor_text("\n".join(lines), "syslog")
    hooks = [orjson.loads(body) for body in posted]
    assert anchors[-1].seq == hooks[-1]["seq"] >= 20
    assert {a.trail_id for a in anchors} == {read_trail_id(audit)}
    store = tmp_path / "webhook.jsonl"
    store.write_bytes(b"\n".join(posted) + b"\n")
    assert cli.main(["verify", str(audit), "--anchor", str(store)]) == 0
    # Cut the newest records and write a matching (unkeyed) head: only the anchor knows.
    files = trail_files(audit)
    current = files[-1].path
    lines_ = current.read_bytes().splitlines(keepends=True)
    cut = lines_[:-3] if len(lines_) > 3 else lines_[:1]
    current.write_bytes(b"".join(cut))
    last = orjson.loads(cut[-1])
    (audit / "audit.head").write_bytes(
        orjson.dumps({"seq": last["seq"], "hash": last["hash"]}) + b"\n"
    )
    assert verify_trail(audit).ok
    assert cli.main(["verify", str(audit), "--anchor", str(store)]) == 1


def test_unknown_anchor_input_is_bad_input(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    write(audit, 2)
    empty = tmp_path / "none.log"
    empty.write_text("nothing here\n")
    assert cli.main(["verify", str(audit), "--anchor", str(empty)]) == 2
    assert cli.main(["verify", str(audit), "--anchor", str(tmp_path / "missing")]) == 2


def test_rotated_names_still_parse() -> None:
    assert parse_rotated_name(rotated_name(datetime(2026, 1, 2, tzinfo=UTC), 7)) is not None


def test_bad_anchor_settings_are_refused_at_load() -> None:
    for key, value, message in (
        ("audit__anchor_syslog", "nonsense", "HOST:PORT"),
        ("audit__anchor_syslog", "host:port", "HOST:PORT"),
        ("audit__anchor_webhook", "ftp://example.com/x", "http:// or https://"),
    ):
        with pytest.raises(ValueError, match=message):
            config.defaults().replace(**{key: value})
    ok = config.defaults().replace(audit__anchor_syslog="local", audit__anchor_webhook="")
    assert ok["audit.anchor_syslog"] == "local"
