"""``pgwarden report --store DSN``: the same report from the central store as from the files."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import orjson
import pytest
import report_trail as rt

from proxy.cli import main
from proxy.store.rows import insert_sql, lines_batch
from proxy.store.schema import migrate

pytestmark = pytest.mark.e2e

WINDOW = ["--since", "2026-11-26T00:00:00Z", "--until", "2026-11-27T00:00:00Z"]


async def _load(dsn: str, events: list[dict[str, Any]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        # The shipper's own statement, one trail per proxy_id.
        for proxy_id in sorted({e["proxy_id"] for e in events}):
            mine = [(e, orjson.dumps(e).decode()) for e in events if e["proxy_id"] == proxy_id]
            batch = lines_batch(mine[0][0]["seq"], mine)
            await conn.execute(
                insert_sql('"public"'), f"trail-of-{proxy_id}", batch.texts, batch.addrs
            )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def store(pg: Any) -> Iterator[str]:
    name = f"pgwarden_report_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg.dsn())
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    try:
        dsn = pg.dsn(database=name)
        asyncio.run(_load(dsn, rt.scenario()))
        yield dsn
    finally:
        asyncio.run(admin(f"DROP DATABASE {name} WITH (FORCE)"))


def _report(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["report", *WINDOW, "--format", "json", *args]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    del data["generated_at"]
    return data


def test_store_report_equals_file_report(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail = rt.write_trail(tmp_path / "audit", rt.scenario(), rotate_every=50)
    from_files = _report(capsys, str(trail))
    from_store = _report(capsys, "--store", store)
    assert from_store == from_files
    assert from_store["totals"]["statements"] == 122
    assert from_store["new_shapes_total"] == 5  # the history query before --since worked
    filtered = _report(capsys, "--store", store, "--user", "bob")
    assert filtered["totals"]["statements"] == 9


def test_store_and_directory_together_is_bad_input(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path), "--store", store]) == 2
    assert "not both" in capsys.readouterr().err


def _logs(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["logs", *WINDOW, "--format", "json", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_logs_reads_the_store_like_the_directory(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail = rt.write_trail(tmp_path / "audit", rt.scenario(), rotate_every=50)
    key = lambda e: (e["ts"], e["proxy_id"], e["seq"])  # noqa: E731
    from_files = sorted(_logs(capsys, str(trail), "--user", "bob"), key=key)
    from_store = _logs(capsys, "--store", store, "--user", "bob")
    assert from_files and from_store == from_files
    # `--store` without a DSN reads the store sink of the config given with -c.
    cfg = tmp_path / "pgwarden.yaml"
    cfg.write_text(f"audit:\n  sinks:\n    - type: postgres\n      dsn: {store}\n")
    assert _logs(capsys, "-c", str(cfg), "--store", "--user", "bob") == from_store
    assert main(["logs", "--store", store, "--follow"]) == 2
    assert "cannot follow the store" in capsys.readouterr().err
