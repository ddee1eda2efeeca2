"""The secret corpus at the library level: every form is redacted by every function that puts
text on an output path (records full and normalized, the admin API, parse errors, server
errors). The same forms go through a real proxy in tests/e2e/test_secret_corpus.py."""

from __future__ import annotations

import pytest

from proxy import config
from proxy.gate import Gate
from proxy.sql.extract import analyze
from proxy.sql.facts import ParserSettings
from proxy.sql.redact import normalize, redact, redact_error, redact_statement, scrub_event
from tests.secret_forms import FORMS, PREPARE, Form, text_of


def _gate() -> Gate:
    return Gate(config.defaults(), None)


def test_the_markers_are_distinct() -> None:
    assert len({f.secret for f in FORMS}) == len(FORMS)


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.id)
def test_every_text_path_redacts(form: Form) -> None:
    text = text_of(form, "1")
    secret = form.secret
    facts = analyze(text)
    stmt = facts.statements[0] if facts.statements else None
    if form.needs_facts:
        # EXECUTE of a prepared body that takes the secret: known from the resolved facts.
        gate = _gate()
        prepared: dict[str, object] = {}
        gate.resolve_prepared(analyze(text_of(Form("p", PREPARE), "1")), prepared)  # type: ignore[arg-type]
        stmt = gate.resolve_prepared(facts, prepared).statements[0]  # type: ignore[arg-type]
        assert secret in redact(text)  # the text alone cannot tell
    else:
        assert secret not in redact(text), redact(text)
    assert secret not in redact_statement(text, stmt)
    assert secret not in normalize(text)
    assert "***" in redact_statement(text, stmt) or "$" in normalize(text)
    if facts.parse_error is not None:
        assert secret not in facts.parse_error, facts.parse_error


@pytest.mark.parametrize("form", [f for f in FORMS if not f.needs_facts], ids=lambda f: f.id)
def test_gate_outputs_redact(form: Form) -> None:
    text = text_of(form, "1")
    for mode in ("full", "normalized"):
        gate = Gate(config.defaults().replace(audit__statement_text=mode), None)
        facts = gate.inspect(text.encode(), ParserSettings())
        stmt = facts.statements[0] if facts.statements else None
        assert form.secret not in (gate.audit_text(text, stmt) or "")
        assert form.secret not in gate.display_text(text)


def test_the_parse_error_of_an_unterminated_password_is_redacted() -> None:
    facts = analyze("CREATE ROLE r PASSWORD 'Unterminated-S3cret LOGIN")
    assert facts.parse_error is not None
    assert "unterminated" in facts.parse_error and "S3cret" not in facts.parse_error


@pytest.mark.parametrize(
    ("message", "kwargs"),
    [
        ('invalid input syntax for type integer: "Echoed-S3cret"', {"params": [b"Echoed-S3cret"]}),
        ('invalid input syntax for type integer: "Echoed-S3cret"', {"extended": True}),
        ('invalid input value for enum mood: "Echoed-S3cret"', {"extended": True}),
        ('value "Echoed-S3cret" is out of range', {"params": ["Echoed-S3cret"]}),
        ('unterminated quoted string at or near "\'Echoed-S3cret LOGIN"', {}),
        ("syntax error at or near \"'Echoed-S3cret'\"", {}),
        (
            "role option Echoed-S3cret is not valid",  # the statement's secret, repeated
            {"statement": "ALTER ROLE r PASSWORD 'Echoed-S3cret' x"},
        ),
        ("could not connect: postgresql://u:Echoed-S3cret@h/db", {}),
        ("connection failed: password=Echoed-S3cret host=h", {}),
    ],
)
def test_error_messages_lose_their_secrets(message: str, kwargs: dict[str, object]) -> None:
    out = redact_error(message, **kwargs)  # type: ignore[arg-type]
    assert "Echoed-S3cret" not in out, out


def test_error_messages_without_secrets_keep_their_words() -> None:
    for message in (
        'relation "orders" does not exist',
        "division by zero",
        'column "password" does not exist',
        'invalid input syntax for type integer: "abc"',  # a literal of the text: kept
    ):
        assert redact_error(message) == message


def test_scrub_event_is_what_the_trail_applies() -> None:
    event = {
        "type": "query",
        "protocol": "extended",
        "error": 'invalid input syntax for type integer: "Bound-S3cret"',
    }
    scrub_event(event)
    assert event["error"] == 'invalid input syntax for type integer: "***"'
    simple = {"type": "query", "protocol": "simple", "error": 'at or near "\'Lit-S3cret"'}
    scrub_event(simple)
    assert "Lit-S3cret" not in str(simple["error"])
