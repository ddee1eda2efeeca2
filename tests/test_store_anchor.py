"""The central store as an external anchor: `verify --anchor DSN` finds a local rewrite that a
plain chain (and a rewritten audit.head) cannot show."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from proxy import cli
from proxy.audit.trail import AuditTrail
from proxy.store.shipper import StoreShipper
from tests.test_store import store_config, store_dsn, wait_until

__all__ = ["store_dsn"]  # the fixture, re-used


def test_the_store_anchors_the_local_trail(tmp_path: Path, store_dsn: str) -> None:
    audit = tmp_path / "audit"
    cfg = store_config(audit, store_dsn).replace(audit__fsync="none")

    async def main() -> None:
        trail = AuditTrail(cfg, "anchored")
        trail.open()
        shipper = StoreShipper(cfg, trail, "anchored")
        await shipper.start()
        for n in range(12):
            trail.submit(
                {
                    "v": 1,
                    "type": "query",
                    "ts": "2026-11-26T07:40:00.000000Z",
                    "proxy_id": "anchored",
                    "statement": f"S {n}",
                }
            )
        await wait_until(lambda: shipper.stats["shipped"] == 12 and shipper.backlog == 0)
        await shipper.aclose()
        await trail.aclose()

    asyncio.run(main())
    assert cli.main(["verify", str(audit), "--anchor", store_dsn]) == 0
    # Cut the two newest records and write a head that matches what is left.
    current = audit / "audit.jsonl"
    lines = current.read_bytes().splitlines(keepends=True)
    current.write_bytes(b"".join(lines[:-2]))
    last = orjson.loads(lines[-3])
    (audit / "audit.head").write_bytes(
        orjson.dumps({"seq": last["seq"], "hash": last["hash"]}) + b"\n"
    )
    assert cli.main(["verify", str(audit)]) == 0
    assert cli.main(["verify", str(audit), "--anchor", store_dsn]) == 1
