"""The audit record's text of a long statement is made in its analysis worker, off the event
loop (issue 8 §4), and is the text the loop would have made: redacted first, then capped, with
the whole recorded text's length and SHA-256. Also: long error messages are redacted without
the slow case-insensitive scans, and once, not twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import parser as pg_parser

from proxy.audit.verify import verify_trail
from proxy.sql import extract, recordtext, redact
from proxy.sql.facts import ParserSettings, QueryFacts
from proxy.sql.pool import AnalysisPool, PoolConfig
from tests.relay.harness import Host, Wire, complete, error, query, ready

SETTINGS = ParserSettings()
SECRET = "hunter2-" + "s" * 40


def _long_statement(pad: int = 20_000, secret: str = SECRET) -> str:
    # A secret-looking word in the padding defeats redact's fast path: the scanner must run.
    padding = "key " * (pad // 4)
    return f"SELECT set_config('app.token', '{secret}', false), '{padding}'"


def _fresh() -> str:
    """A text redact has not seen (it remembers short texts it redacted: a spy on the scanner
    would see nothing of a statement redacted before)."""
    return secrets.token_hex(8)


def _stmt(text: str) -> Any:
    (stmt,) = extract.analyze(text, SETTINGS).statements
    return stmt


def test_the_record_is_the_redacted_text_capped_with_its_whole_length_and_hash() -> None:
    text = _long_statement()
    stmt = _stmt(text)
    made = recordtext.recorded(text, stmt, "full", 4000)
    whole = redact.redact_statement(text, stmt)
    assert SECRET not in whole  # (the redaction this record must match)
    assert made.text is not None and whole.startswith(made.text)
    assert 3996 <= len(made.text.encode()) <= 4000
    assert made.length == len(whole.encode())
    assert made.sha256 == hashlib.sha256(whole.encode()).hexdigest()
    short = recordtext.recorded(text, stmt, "full", 0)  # 0: no cap
    assert short.text == whole and short.length is None and short.sha256 is None


def test_a_secret_straddling_the_cap_is_not_half_kept() -> None:
    text = _long_statement()
    start = text.index(SECRET)
    for cut in (start + 1, start + 10, start + len(SECRET) - 1):
        made = recordtext.recorded(text, _stmt(text), "full", cut)
        assert made.text is not None
        assert "hunter" not in made.text and "sss" not in made.text
        assert len(made.text.encode()) <= cut


def test_normalized_records_and_none() -> None:
    text = _long_statement()
    made = recordtext.recorded(text, _stmt(text), "normalized", 100_000)
    assert made.text == redact.normalize(text) and SECRET not in made.text
    assert recordtext.recorded(text, _stmt(text), "none", 4000).text is None
    facts = extract.analyze(text, SETTINGS)
    bare = recordtext.attach(facts, "none", 4000)  # no text to make, but its secrets
    assert bare.statements[0].record is None and bare.record is None
    assert bare.secrets == tuple(redact.secret_values(text)) and SECRET in bare.secrets
    short = extract.analyze("select 1", SETTINGS)
    assert recordtext.attach(short, "full", 4000) is short  # nothing long: nothing made


def test_only_long_statements_get_a_record_and_a_parse_error_gets_one_for_its_text() -> None:
    text = "select 1; " + _long_statement() + "; select 2"
    facts = recordtext.attach(extract.analyze(text, SETTINGS), "full", 4000)
    assert [s.record is not None for s in facts.statements] == [False, True, False]
    # The whole message, as a refused multi-statement Query is recorded:
    assert facts.record == recordtext.recorded(text, None, "full", 4000)
    first = facts.statements[0]
    assert recordtext.made(text, first, facts, "full", 4000) is facts.record
    single = recordtext.attach(extract.analyze(_long_statement(), SETTINGS), "full", 4000)
    assert single.record is None and single.statements[0].record is not None
    broken = "selec " + "x " * 10_000
    failed = recordtext.attach(extract.analyze(broken, SETTINGS), "full", 4000)
    assert not failed.statements and failed.record is not None
    assert failed.record.text == broken[:4000]


def test_an_execute_is_masked_as_if_its_body_took_secrets() -> None:
    """The worker cannot see the session's prepared statements: EXECUTE's arguments are
    masked whatever the body is (the loop masks them only for secret-taking bodies)."""
    text = f"EXECUTE p('{'v' * 9000}', 'plain-value')"
    stmt = _stmt(text)
    assert stmt.execute_name == "p"
    made = recordtext.recorded(text, stmt, "full", 0)
    assert made.text is not None and "plain-value" not in made.text and "vvv" not in made.text
    # Resolved to a body that takes no secrets, the loop would keep them; the worker cannot
    # know, and masks them whatever the facts say.
    harmless = type(stmt)(**{**_fields(stmt), "opaque": False, "notes": ()})
    assert "plain-value" in redact.redact_statement(text, harmless)
    assert "plain-value" not in redact.redact_statement(text, harmless, unresolved=True)


def test_a_record_is_used_only_for_its_own_text_and_settings() -> None:
    text = _long_statement()
    facts = recordtext.attach(extract.analyze(text, SETTINGS), "full", 4000)
    stmt = facts.statements[0]
    assert recordtext.made(stmt.text, stmt, facts, "full", 4000) is stmt.record
    assert recordtext.made(stmt.text, stmt, facts, "full", 8000) is None  # limit changed
    assert recordtext.made(stmt.text, stmt, facts, "normalized", 4000) is None
    other = "".join(list(stmt.text))  # equal, but not the statement's own text object
    assert other == stmt.text and recordtext.made(other, stmt, facts, "full", 4000) is None


def test_a_worker_record_of_the_wrong_shape_is_not_used() -> None:
    text = _long_statement()
    facts = recordtext.attach(extract.analyze(text, SETTINGS), "full", 4000)
    stmt = facts.statements[0]
    assert stmt.record is not None
    for bad in (
        {"text": 7},
        {"length": "12"},
        {"sha256": None},  # capped without a hash
    ):
        forged = type(stmt.record)(**{**_fields(stmt.record), **bad})
        lying = type(stmt)(**{**_fields(stmt), "record": forged})
        assert recordtext.made(lying.text, lying, None, "full", 4000) is None


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def test_the_pool_worker_makes_the_record() -> None:
    text = _long_statement(pad=80_000)
    pool = AnalysisPool(PoolConfig(offload_size=1024, text_mode="full", statement_max=4000))

    async def main() -> QueryFacts:
        try:
            return (await pool.analyse(text.encode(), SETTINGS)).facts
        finally:
            await pool.close()

    facts = asyncio.run(main())
    assert pool.analysed == 1
    stmt = facts.statements[0]
    assert stmt.record == recordtext.recorded(text, stmt, "full", 4000)
    assert stmt.record is not None and SECRET not in (stmt.record.text or "")


class PoolHost(Host):
    """A Host whose long statements are analysed by a real worker pool, as the server's are."""

    async def analyse(self, sql: bytes, settings: Any) -> Any:
        self.analysed.append(sql)
        pool = AnalysisPool(
            PoolConfig(
                text_mode=self.cfg["audit.statement_text"],
                statement_max=self.cfg["audit.statement_max"],
            )
        )
        try:
            return (await pool.analyse(sql, settings)).facts
        finally:
            await pool.close()


@pytest.fixture
def scanned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Lengths of the texts pglast's scanner is given (redaction scans what it masks)."""
    lengths: list[int] = []
    real_scan = pg_parser.scan

    def spy(text: str) -> Any:
        lengths.append(len(text))
        return real_scan(text)

    monkeypatch.setattr(pg_parser, "scan", spy)
    return lengths


def test_a_long_statement_is_recorded_without_redacting_it_on_the_loop(
    tmp_path: Path, scanned: list[int]
) -> None:
    host = PoolHost(
        tmp_path, None, limits__analysis_offload_size="16kB", audit__statement_max="4kB"
    )
    wire = Wire(host)
    wire.login()
    big = _long_statement(pad=200_000)
    wire.client_sends(query(big))
    asyncio.run(host.spawned.pop())  # its analysis, in a worker process
    assert wire.upstream.take() == query(big)
    wire.server_sends(complete("SELECT 1") + ready())
    small = f"select set_config('app.token', 'tiny-secret', false) -- {_fresh()}"
    wire.client_sends(query(small))
    wire.server_sends(complete("SELECT 1") + ready())
    # The small one was redacted here (so the spy sees this build's calls); the long one not.
    assert any(n == len(small) for n in scanned)
    assert not [n for n in scanned if n >= recordtext.MIN_CHARS]
    first, second = host.events("query")
    whole = redact.redact_statement(big, _stmt(big))
    assert first["statement_truncated"] is True
    assert whole.startswith(first["statement"]) and len(first["statement"].encode()) <= 4000
    assert first["statement_length"] == len(whole.encode())
    assert first["statement_sha256"] == hashlib.sha256(whole.encode()).hexdigest()
    assert SECRET not in first["statement"] and "tiny-secret" not in second["statement"]
    assert verify_trail(Path(host.cfg["audit.dir"])).ok


POLICY = """\
version: 1
defaults: {action: allow, on_unparsable: block}
rules:
  - id: no-unbounded-deletes
    when: {commands: [DELETE], missing_where: true}
    action: block
"""


def test_a_refused_long_message_is_recorded_whole_without_redacting_it_on_the_loop(
    tmp_path: Path, scanned: list[int]
) -> None:
    host = PoolHost(
        tmp_path, POLICY, limits__analysis_offload_size="16kB", audit__statement_max="4kB"
    )
    wire = Wire(host)
    wire.login()
    wire.client_sends(query("begin"))
    wire.server_sends(complete("BEGIN") + ready(b"T"))
    wire.upstream.take()
    wire.client.take()
    big = _long_statement(pad=50_000) + "; delete from t"
    wire.client_sends(query(big))
    asyncio.run(host.spawned.pop())
    # Refused whole; in a transaction, by poisoning the server in its place.
    assert b"PGWARDEN BLOCKED" in wire.upstream.take()
    wire.server_sends(error("42601", "syntax error at PGWARDEN") + ready(b"E"))
    assert b"C42501" in wire.client.take()
    small = f"select set_config('app.token', 'tiny-secret', false) -- {_fresh()}"
    wire.client_sends(query(small))
    wire.server_sends(complete("SELECT 1") + ready())
    assert any(n == len(small) for n in scanned)
    assert not [n for n in scanned if n >= recordtext.MIN_CHARS]
    refused = host.events("query")[1]
    assert refused["decision"]["action"] == "block"
    whole = redact.redact(big)
    assert refused["statement_sha256"] == hashlib.sha256(whole.encode()).hexdigest()
    assert whole.startswith(refused["statement"]) and SECRET not in refused["statement"]


def test_a_long_statements_error_is_redacted_with_secrets_its_worker_found(
    tmp_path: Path, scanned: list[int]
) -> None:
    host = PoolHost(
        tmp_path, None, limits__analysis_offload_size="16kB", audit__statement_text="none"
    )
    wire = Wire(host)
    wire.login()
    big = _long_statement(pad=100_000)
    wire.client_sends(query(big))
    asyncio.run(host.spawned.pop())
    wire.upstream.take()
    reply = error("22023", f'invalid value "{SECRET}" for app.token') + ready()
    wire.server_sends(reply)
    assert wire.client.take() == reply
    small = f"select set_config('app.token', 'tiny-secret', false) -- {_fresh()}"
    wire.client_sends(query(small))
    wire.server_sends(error("22023", "invalid value tiny-secret") + ready())
    assert any(n == len(small) for n in scanned)  # the spy sees this build's calls
    assert not [n for n in scanned if n >= recordtext.MIN_CHARS]
    first, second = host.events("query")
    assert first["statement"] is None  # audit.statement_text: none
    assert SECRET not in first["error"] and "***" in first["error"]
    assert "tiny-secret" not in second["error"]


def test_a_long_error_reaches_the_client_unchanged_and_its_record_is_redacted(
    tmp_path: Path,
) -> None:
    host = Host(tmp_path)
    wire = Wire(host)
    wire.login()
    message = "x" * 2_000_000 + " see postgres://app:hunter2@db/x password=hunter3 " + "y" * 1000
    wire.client_sends(query("select 1"))
    wire.upstream.take()
    reply = error("P0001", message) + ready()
    wire.server_sends(reply)
    assert wire.client.take() == reply  # what the server said, byte for byte
    (event,) = host.events("query")
    assert event["error"] == redact.redact_error(message)
    assert "hunter2" not in event["error"] and "hunter3" not in event["error"]
    assert event["error"].startswith("x" * 2_000_000) and len(event["error"]) > 2_000_000
    assert verify_trail(Path(host.cfg["audit.dir"])).ok


def test_the_sink_boundary_redacts_what_was_not_redacted_before() -> None:
    """scrub_event skips only the very string redact_error just produced (same flags)."""
    long_secret = "password=hunter2 " + "z" * 5000
    done = redact.redact_error(long_secret)
    event: dict[str, Any] = {"error": done, "protocol": "simple"}
    redact.scrub_event(event)
    assert event["error"] is done
    fresh: dict[str, Any] = {"error": "".join(list(long_secret)), "protocol": "simple"}
    redact.scrub_event(fresh)  # equal text, another object: redacted
    assert "hunter2" not in fresh["error"]
    again: dict[str, Any] = {"error": long_secret, "protocol": "simple"}
    redact.scrub_event(again)
    assert "hunter2" not in again["error"]


# The patterns as they were (quadratic on some inputs), run on every text: the reference.
_OLD_URI = re.compile(r"(?i)(?<![a-z0-9+.-])([a-z0-9+.-]+://[^:/@\s'?]*:)([^@\s']*)(@)")
_OLD_NAMED = re.compile(
    r"(?i)(\b[\w.-]*(?:pass(?:word|wd)?|pwd|secret|token|api_?key)\s*[:=]\s*)((?:(?!\*/)\S)+)"
)


def _clean_text_before(text: str) -> str:
    text = _OLD_URI.sub(lambda m: m.group(1) + "***" + m.group(3), text)
    return _OLD_NAMED.sub(lambda m: m.group(1) + "***", text)


_PIECES = st.sampled_from(
    [
        "pass", "PaSs", "pa\u017f\u017f", "word", "wd", "pwd", "\u212aey", "key", "api_", "api",
        "token", "secret", "SECRET", "=", ":", " = ", "://", "@", "x", "-", ".", "'", " ", "\n",
        "*/", "user", "p\u0130", "\u0131", "a://u:", "?", "/", "+", "_", "9", "\t", "é",
    ]
)  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(st.lists(_PIECES, max_size=30).map("".join))
def test_the_faster_patterns_mask_exactly_what_the_old_ones_did(text: str) -> None:
    """The in-checks before each pattern skip only texts it cannot match, and the linear
    patterns find the same secrets as the quadratic ones they replace."""
    assert redact._clean_text(text) == _clean_text_before(text)


_OLD_NEAR = re.compile(r"""(at or near ")(?:[eEuUbBxXnN]?&?'|\$\w*\$)[^\n]*"(?=\s|$)""")
_NEAR_PIECES = st.sampled_from(
    ['at or near "', "'", '"', " ", "\n", "x", "$", "$a$", "E", "&", "u&'", "\t", "at or", "é"]
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(_NEAR_PIECES, max_size=30).map("".join))
def test_near_literals_are_masked_exactly_as_before(text: str) -> None:
    before = _OLD_NEAR.sub(lambda m: m.group(1) + redact.MASK + '"', text)
    assert redact._mask_near_literals(text) == before


@pytest.mark.parametrize(
    "text",
    [
        "at or near \"'x" * 50_000,  # every unclosed literal would read the rest of its line
        "a://u:" * 20_000,  # every "://" would read the rest of the word again
        "@" + "a://u:" * 20_000,
        "x." * 60_000 + " pass",  # every word start in the dotted run would read the rest
        "y-" * 60_000 + "password=hunter2",
    ],
)
def test_hostile_text_is_cleaned_in_linear_time(text: str) -> None:
    """(The old patterns took minutes to hours on these; the per-test timeout would fail it.)"""
    out = redact._clean_text(text)
    assert "hunter2" not in out and len(out) <= len(text) + 3
    statement = f"SELECT 1 /* {text} */"
    assert "hunter2" not in redact.redact(statement)
    assert "hunter2" not in redact.redact_error(text + ' at or near "\'hunter2" x')


def test_the_prefilters_see_what_the_patterns_see() -> None:
    """Every character the patterns' IGNORECASE letters match lowers to that letter, except
    the long s (folded by _lowered) and dotless/dotted i (not in any hint word)."""
    odd = {}
    for letter in sorted(set("".join(redact._NAMED_HINTS))):
        matcher = re.compile("(?i)" + letter)
        found = [
            chr(c)
            for c in range(0x110000)
            if matcher.fullmatch(chr(c)) and chr(c).lower() != letter
        ]
        if found:
            odd[letter] = found
    assert odd == {"s": ["\u017f"]}
    assert redact._lowered("PA\u017f\u017fWORD") == "password"
