"""``pgwarden report`` over a hand-built trail whose every number is known (tests/report_trail.py).

Window 2026-11-26 (UTC). In it:
  alice/s1 (billing, app): shape A x10 (1..10 ms), B x2 (20, 30 ms), C x1 error 42P01 (0.7 ms)
  bob/s2 (psql, app): D x5 blocked by no-delete-without-where (0.1 ms, 42501),
                      E x3 flagged by slow-functions (1000 ms), A x1 (100 ms)
  mallory: one auth failure;  carol/s3 (reports, proxy pgw-2): F x100 (1..100 ms)
Before it: A x3 (so A is not new). After it: A x1 (not counted).
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import report_trail as rt

from proxy.cli import main
from proxy.review.report import ReportBuilder, latency_bins
from proxy.review.sketch import RELATIVE_ACCURACY, LatencySketch

WINDOW = ["--since", "2026-11-26T00:00:00Z", "--until", "2026-11-27T00:00:00Z"]


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("trail")
    # Small rotations, gzipped: the report must read rotated and .gz files too.
    return rt.write_trail(directory, rt.scenario(), rotate_every=40, gzip_rotated=True)


def run_report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["report", *args])
    return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def report_json(trail: Path) -> dict[str, Any]:
    out = trail.parent / "report.json"
    assert main(["report", str(trail), *WINDOW, "--format", "json", "-o", str(out)]) == 0
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def within(value: float, exact: float) -> bool:
    return abs(value - exact) <= RELATIVE_ACCURACY * exact + 1e-9


def test_rotated_gzip_files_are_part_of_the_fixture(trail: Path) -> None:
    assert len(list(trail.glob("audit-*.jsonl.gz"))) == 3
    assert (trail / "audit.jsonl").stat().st_size > 0


def test_totals(report_json: dict[str, Any]) -> None:
    totals = report_json["totals"]
    assert totals["events"] == 129  # 122 queries + 3 starts + 3 ends + 1 auth failure
    assert totals["statements"] == 122
    assert totals["sessions"] == 3
    assert totals["users"] == 4  # alice, bob, carol, mallory
    assert totals["errors"] == 6  # 1 undefined table + 5 blocked (42501)
    assert totals["blocks"] == 5
    assert totals["flags"] == 3
    assert totals["auth_failures"] == 1
    assert totals["total_ms"] == pytest.approx(55 + 50 + 0.7 + 0.5 + 3000 + 100 + 5050)
    assert report_json["proxy_ids"] == ["pgw-1", "pgw-2"]
    assert report_json["first_event"] == "2026-11-26T08:00:00.000000Z"
    assert report_json["last_event"] == "2026-11-26T18:05:00.000000Z"
    assert report_json["report_version"] == 1


def test_per_user_database_application(report_json: dict[str, Any]) -> None:
    users = {row["key"]: row for row in report_json["by_user"]}
    assert [r["key"] for r in report_json["by_user"]] == ["carol", "alice", "bob"]
    assert users["alice"] == {
        "key": "alice",
        "statements": 13,
        "errors": 1,
        "blocked": 0,
        "flagged": 0,
        "total_ms": pytest.approx(105.7),
        "p95_ms": pytest.approx(30.0, rel=RELATIVE_ACCURACY),  # rank 13 of 13
    }
    bob = users["bob"]
    assert (bob["statements"], bob["errors"], bob["blocked"], bob["flagged"]) == (9, 5, 5, 3)
    assert bob["total_ms"] == pytest.approx(3100.5)
    databases = {row["key"]: row["statements"] for row in report_json["by_database"]}
    assert databases == {"reports": 100, "app": 22}
    apps = {row["key"]: row["statements"] for row in report_json["by_application"]}
    assert apps == {"": 100, "billing": 13, "psql": 9}


def test_top_shapes_by_count_and_time(report_json: dict[str, Any]) -> None:
    by_count = report_json["shapes_by_count"]
    assert report_json["shapes"] == 6
    assert [s["count"] for s in by_count] == [100, 11, 5, 3, 2, 1]
    assert by_count[0]["fingerprint"] == rt.fingerprint(rt.SQL_F)
    # The example is normalized: the literal date is gone.
    assert by_count[0]["example"] == "SELECT name FROM reports.daily WHERE day = $1"
    assert by_count[1]["example"] == "SELECT * FROM accounts WHERE id = $1"
    by_time = [s["fingerprint"] for s in report_json["shapes_by_time"]]
    expected = [rt.SQL_F, rt.SQL_E, rt.SQL_A, rt.SQL_B, rt.SQL_C, rt.SQL_D]
    assert by_time == [rt.fingerprint(sql) for sql in expected]
    shape_a = by_count[1]
    assert shape_a["total_ms"] == pytest.approx(155.0)
    assert shape_a["max_ms"] == 100.0


def test_percentiles_within_documented_accuracy(report_json: dict[str, Any]) -> None:
    shape_f = report_json["shapes_by_count"][0]  # durations 1, 2, …, 100 ms
    assert within(shape_f["p50_ms"], 50)
    assert within(shape_f["p95_ms"], 95)
    assert within(shape_f["p99_ms"], 99)
    assert shape_f["mean_ms"] == pytest.approx(50.5)


def test_errors_by_sqlstate(report_json: dict[str, Any]) -> None:
    errors = report_json["errors"]
    assert [(e["sqlstate"], e["condition"], e["count"], e["users"]) for e in errors] == [
        ("42501", "insufficient_privilege", 5, ["bob"]),
        ("42P01", "undefined_table", 1, ["alice"]),
    ]
    assert errors[1]["example_error"] == 'relation "missing_table" does not exist'


def test_blocks_and_flags_by_rule(report_json: dict[str, Any]) -> None:
    rules = {r["rule"]: r for r in report_json["rules"]}
    assert set(rules) == {"no-delete-without-where", "slow-functions"}
    block = rules["no-delete-without-where"]
    assert (block["action"], block["count"], block["blocked"], block["users"]) == (
        "block",
        5,
        5,
        ["bob"],
    )
    assert block["example"] == rt.SQL_D
    flag = rules["slow-functions"]
    assert (flag["action"], flag["severity"], flag["count"], flag["flagged"]) == (
        "flag",
        "medium",
        3,
        3,
    )


def test_first_seen_shapes(report_json: dict[str, Any]) -> None:
    assert report_json["new_shapes_checked"] is True
    assert report_json["new_shapes_total"] == 5
    new = report_json["new_shapes"]
    assert [n["fingerprint"] for n in new] == [
        rt.fingerprint(sql) for sql in (rt.SQL_B, rt.SQL_C, rt.SQL_D, rt.SQL_E, rt.SQL_F)
    ]
    assert new[0]["first_user"] == "alice"
    assert new[0]["first_ts"] == "2026-11-26T08:00:20.000000Z"
    assert rt.fingerprint(rt.SQL_A) not in {n["fingerprint"] for n in new}


def test_first_seen_can_be_skipped(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_report(capsys, str(trail), *WINDOW, "--format", "json", "--no-first-seen")
    assert code == 0
    data = json.loads(out)
    assert data["new_shapes_checked"] is False
    assert data["new_shapes"] == []
    assert data["totals"]["statements"] == 122


def test_busiest_sessions(report_json: dict[str, Any]) -> None:
    by_statements = report_json["sessions_by_statements"]
    assert [(s["session_id"], s["statements"]) for s in by_statements] == [
        ("s3", 100),
        ("s1", 13),
        ("s2", 9),
    ]
    by_time = report_json["sessions_by_time"]
    assert [s["session_id"] for s in by_time] == ["s3", "s2", "s1"]
    assert by_time[1]["client"] == "10.0.0.5:50000"
    assert by_time[1]["errors"] == 5
    assert by_statements[0]["proxy_id"] == "pgw-2"


def test_timeline_and_histogram_account_for_every_statement(report_json: dict[str, Any]) -> None:
    timeline = report_json["timeline"]
    assert sum(b["allow"] + b["flag"] + b["block"] for b in timeline) == 122
    assert sum(b["block"] for b in timeline) == 5
    assert sum(b["flag"] for b in timeline) == 3
    assert len(timeline) <= 120
    assert sum(b["count"] for b in report_json["latency_bins"]) == 122


def test_filters_are_the_logs_flags(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_report(capsys, str(trail), *WINDOW, "--format", "json", "--user", "bob")
    assert code == 0
    data = json.loads(out)
    assert data["totals"]["statements"] == 9
    assert [r["key"] for r in data["by_user"]] == ["bob"]
    assert data["filters"] == ["--user bob"]
    # First-seen looks at everybody's history: bob's A is not new (alice ran it before).
    assert data["new_shapes_total"] == 2
    code, out = run_report(
        capsys, "--audit-dir", str(trail), *WINDOW, "--format", "json", "--action", "block"
    )
    assert json.loads(out)["totals"]["statements"] == 5


def test_default_window_is_last_seven_days(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail = rt.Trail()
    now = datetime.now(UTC)
    trail.query(now - timedelta(days=8), rt.ALICE, rt.SQL_A, 1.0)
    trail.query(now - timedelta(days=6), rt.ALICE, rt.SQL_A, 2.0)
    trail.query(now - timedelta(hours=1), rt.ALICE, rt.SQL_B, 3.0)
    directory = rt.write_trail(tmp_path / "audit", trail.events)
    code, out = run_report(capsys, str(directory), "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["totals"]["statements"] == 2
    assert data["new_shapes_total"] == 1  # B; A was seen 8 days ago


def test_text_format(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_report(capsys, str(trail), *WINDOW, "--top", "3")
    assert code == 0
    lines = out.splitlines()
    assert "  window     2026-11-26 00:00:00 → 2026-11-27 00:00:00 UTC" in lines
    summary = lines[lines.index("Summary") + 1 : lines.index("Summary") + 15]
    assert ["statements", "122"] in [line.split() for line in summary]
    assert ["p95", "98.5", "ms"] in [line.split() for line in summary]
    header = lines.index("By user") + 1
    assert lines[header].split() == [
        "user", "statements", "errors", "blocked", "flagged", "total", "time", "p95"
    ]  # fmt: skip
    # Numbers are right-aligned under their header.
    assert lines[header + 2].split()[:2] == ["carol", "100"]
    assert lines[header].index("statements") + len("statements") == lines[header + 2].index(
        "100"
    ) + len("100")
    assert "Top 3 query shapes by count" in lines
    assert "Statements over time (15-minute buckets, peak 100)" in lines


def test_markdown_format_escapes_table_breakers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail = rt.Trail()
    user = {"session_id": "x", "user": "eve|<b>"}
    trail.query(rt.SINCE + timedelta(hours=1), user, 'SELECT "a|b`x" FROM t', 1.0)
    directory = rt.write_trail(tmp_path / "audit", trail.events)
    code, out = run_report(capsys, str(directory), *WINDOW, "--format", "markdown")
    assert code == 0
    assert out.startswith("# pgwarden report\n")
    assert "| statements | 1 |" in out
    assert "## By user" in out
    row = next(line for line in out.splitlines() if line.startswith("| eve\\|"))
    assert row == "| eve\\|&lt;b&gt; | 1 | 0 | 0 | 0 | 1.00 ms | 1.00 ms |"
    assert "<b>" not in out
    assert '<code>SELECT "a\\|b\\`x" FROM t</code>' in out


HOSTILE_SQL = "SELECT '</code><script>alert(1)</script>' AS x -- \" onmouseover=alert(2)"
HOSTILE_USER = '"><img src=x onerror=alert(3)>'


@pytest.fixture(scope="module")
def html_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    events = rt.scenario()
    hostile = rt.Trail()
    session = {"session_id": "evil", "user": HOSTILE_USER, "application_name": "<svg onload=x>"}
    hostile.query(
        rt.SINCE + timedelta(hours=20), session, HOSTILE_SQL, 3.0, sqlstate="XX000", error="<i>"
    )
    directory = rt.write_trail(tmp_path_factory.mktemp("html") / "audit", events + hostile.events)
    out = directory.parent / "report.html"
    assert main(["report", str(directory), *WINDOW, "--format", "html", "-o", str(out)]) == 0
    return out


def test_html_is_self_contained_and_escaped(html_report: Path) -> None:
    html = html_report.read_text(encoding="utf-8")
    lowered = html.lower()
    assert "<script" not in lowered
    assert "onerror=" not in lowered.replace("onerror=alert(3)&gt;", "")  # only escaped text
    assert "<img" not in lowered and "<svg onload" not in lowered and "<i>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;&gt;&lt;img src=x onerror=alert(3)&gt;" in html
    # Nothing is fetched: no external URLs except the SVG namespace identifier.
    for marker in ("http://", "https://", "//cdn", "@import", "url("):
        stripped = lowered.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert marker not in stripped, marker
    assert "default-src 'none'" in html
    assert html.count("<svg") == 2
    assert 'class="bar-block"' in html and 'class="bar-flag"' in html


def _chromium() -> str:
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(candidate).exists():
            return candidate
    pytest.fail(
        "the HTML report test needs a real browser: /usr/bin/chromium not found. "
        "Install it with `apt-get install chromium` (Debian) and run the tests again."
    )


def _chromium_args(profile: Path) -> list[str]:
    return [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]


def test_html_report_renders_in_a_real_browser(html_report: Path, tmp_path: Path) -> None:
    import subprocess

    dom = subprocess.run(
        [*_chromium_args(tmp_path / "profile"), "--dump-dom", html_report.as_uri()],
        capture_output=True,
        text=True,
        timeout=50,
        check=True,
    ).stdout
    # The browser's parsed DOM: our tables and charts are elements, the hostile text is text.
    assert '<section id="users"><h2>By user</h2>' in dom
    assert dom.count("<table>") == 10
    assert dom.count("<svg") == 2
    assert dom.count('class="bar-latency"') >= 5
    assert "no-delete-without-where" in dom
    assert "<script" not in dom.lower() and "<img" not in dom.lower()
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            *_chromium_args(tmp_path / "profile"),
            "--window-size=1280,2000",
            f"--screenshot={screenshot}",
            html_report.as_uri(),
        ],
        capture_output=True,
        timeout=50,
        check=True,
    )
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 2000)
    assert len(data) > 50_000  # a real page, not a blank image


def test_missing_directory_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no audit directory at" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no audit trail" in capsys.readouterr().err


def test_sketch_quantiles_match_exact_nearest_rank() -> None:
    rng = random.Random(11)
    values = [rng.lognormvariate(1.0, 2.0) for _ in range(20_000)] + [0.0] * 50
    sketch = LatencySketch()
    for v in values:
        sketch.add(v)
    ordered = sorted(values)
    for q in (0.01, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        exact = ordered[max(1, math.ceil(q * len(ordered))) - 1]
        estimate = sketch.quantile(q)
        assert estimate is not None and within(estimate, exact), (q, estimate, exact)
    assert sketch.quantile(0.001) == 0.0
    assert sketch.count == 20_050
    assert len(list(sketch.buckets())) < 2000
    assert sum(b.count for b in latency_bins(sketch)) == 20_050


def test_builder_streams_any_iterable_of_events() -> None:
    # The seam for other sources (the central store): any iterable of event dicts.
    events = (e for e in rt.scenario() if rt.SINCE.isoformat()[:10] in e["ts"])
    report = ReportBuilder(top=2).add_all(events).build()
    assert report.totals.statements == 122
    assert len(report.shapes_by_count) == 2
    assert report.new_shapes_checked is False


def test_latency_uses_statement_scoped_durations_only() -> None:
    """A pipeline's or a multi-statement message's figure covers more than the statement:
    counted as a statement, left out of every latency figure (issue 9 §1)."""
    base = {
        "type": "query",
        "user": "u",
        "database": "d",
        "session_id": "s",
        "ts": rt.iso(rt.SINCE),
    }
    events = [
        {**base, "duration_ms": 1.0, "duration_scope": "statement", "fingerprint": "a"},
        {**base, "duration_ms": 5000.0, "duration_scope": "pipeline", "fingerprint": "a"},
        {**base, "duration_ms": 5000.0, "duration_scope": "message", "fingerprint": "a"},
        {**base, "duration_ms": 3.0, "fingerprint": "a"},  # written before the field existed
    ]
    totals = ReportBuilder().add_all(events).build().totals
    assert totals.statements == 4 and totals.untimed == 2
    assert totals.total_ms == pytest.approx(4.0)
    assert totals.p99_ms is not None and totals.p99_ms < 10


@pytest.mark.parametrize("fmt", ["text", "markdown", "json", "html"])
def test_empty_window_renders_in_every_format(
    trail: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_report(capsys, str(trail), "--since", "2030-01-01", "--format", fmt)
    assert code == 0
    if fmt == "json":
        data = json.loads(out)
        assert data["totals"]["statements"] == 0 and data["timeline"] == []
        assert data["totals"]["p95_ms"] is None
    else:
        assert "statements" in out and "0" in out


def test_until_before_since_is_bad_input(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(trail), "--since", "2026-11-27", "--until", "2026-11-26"]) == 2
    assert "--until is earlier than --since" in capsys.readouterr().err


def test_condition_names() -> None:
    from proxy.review.sqlstates import condition_name

    assert condition_name("40P01") == "deadlock_detected"
    assert condition_name("22999") == "class 22: data exception"
    assert condition_name("ZZ000") == ""
