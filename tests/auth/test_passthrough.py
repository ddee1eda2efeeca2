"""Passthrough's channel-binding rules, from bytes (the server side is in
test_scram_postgres.py::test_passthrough_matrix_with_tls_on_both_legs)."""

from __future__ import annotations

from proxy.auth import passthrough
from proxy.wire import messages as m


def test_plus_is_removed_from_the_offer() -> None:
    offer = m.encode_sasl_mechanisms([b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"])[5:]
    assert passthrough.client_offer(offer) == m.encode_sasl_mechanisms([b"SCRAM-SHA-256"])
    plain = m.encode_sasl_mechanisms([b"SCRAM-SHA-256"])
    assert passthrough.client_offer(plain[5:]) == plain


def test_downgrade_error_gets_a_hint() -> None:
    body = m.error_response(
        "28000", "SCRAM channel binding negotiation error", severity="FATAL", detail="x"
    )[5:]
    explained = passthrough.explain_error(body)
    assert explained is not None
    fields = m.decode_fields(explained)
    assert fields["M"] == "SCRAM channel binding negotiation error"
    assert "channel_binding=disable" in fields["H"] and fields["D"] == "x"
    assert passthrough.explain_error(m.error_response("28P01", "password failed")[5:]) is None
    hinted = m.error_response("28000", "SCRAM channel binding negotiation error", hint="theirs")[5:]
    assert passthrough.explain_error(hinted) is None
