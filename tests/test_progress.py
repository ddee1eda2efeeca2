"""Progress bars of the review commands: on a terminal's stderr only, never in the output."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from proxy import config
from proxy.audit.trail import AuditTrail
from proxy.cli import main
from proxy.review import progress as progress_module


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def make_trail(directory: Path, count: int) -> None:
    cfg = config.defaults().replace(audit__dir=str(directory), audit__rotate_size="20kB")
    trail = AuditTrail(cfg, "p1")
    trail.open()
    for i in range(count):
        trail.submit({"type": "query", "ts": f"2099-01-01T00:00:{i % 60:02d}.000000Z",
                      "user": "alice", "statement": f"SELECT {i}", "proxy_id": "p1"})  # fmt: skip
    asyncio.run(trail.aclose())  # writes audit.head, from which the bar's total comes


def test_a_bar_on_a_terminal_with_rate_and_total(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "DELAY", 0)
    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    assert list(progress_module.progress(range(500), total=500, desc="scan")) == list(range(500))
    shown = err.getvalue()
    assert "scan" in shown and "/500" in shown and "records/s" in shown


def test_silent_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "DELAY", 0)
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert list(progress_module.progress(range(5), total=5, desc="scan")) == [0, 1, 2, 3, 4]
    assert err.getvalue() == ""


def test_streaming_commands_keep_a_terminal_stdout_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", Terminal())
    monkeypatch.setattr("sys.stdout", Terminal())
    assert not progress_module.wanted(streams_to_stdout=True)
    assert progress_module.wanted()


def test_report_shows_progress_and_the_same_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = tmp_path / "audit"
    make_trail(audit, 400)
    args = ["report", str(audit), "--since", "2098-12-31T00:00:00Z", "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(progress_module, "DELAY", 0)
    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    assert main(args) == 0
    with_bar = json.loads(capsys.readouterr().out)
    for report in (plain, with_bar):
        del report["generated_at"]
    assert with_bar == plain and plain["totals"]["statements"] == 400
    assert "report" in err.getvalue() and "/400" in err.getvalue()  # the estimate was exact
