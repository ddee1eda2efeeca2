"""Back-pressure by counted reasons: reading resumes only when no reason holds (issue 8 §1)."""

from __future__ import annotations

from pathlib import Path

from proxy.relay.flow import Pause, ReadGate
from tests.relay.harness import Host, Wire


def test_audit_capacity_does_not_resume_a_client_whose_upstream_is_full() -> None:
    calls: list[str] = []
    gate = ReadGate(lambda: calls.append("pause"), lambda: calls.append("resume"))
    gate.hold(Pause.UPSTREAM_FULL)
    gate.hold(Pause.AUDIT_FULL)
    gate.release(Pause.AUDIT_FULL)  # the audit queue drained ...
    assert calls == ["pause"]  # ... but the upstream buffer is still full: stay paused
    gate.release(Pause.UPSTREAM_FULL)
    assert calls == ["pause", "resume"]
    gate.release(Pause.UPSTREAM_FULL)  # releasing what is not held changes nothing
    assert calls == ["pause", "resume"]


def test_session_pauses_the_client_while_the_upstream_buffer_is_full(tmp_path: Path) -> None:
    wire = Wire(Host(tmp_path))
    wire.login()
    wire.session.peer_full(client_side=False, full=True)  # the upstream transport is full
    assert not wire.client.reading
    wire.session.peer_full(client_side=True, full=True)  # and the client's
    assert not wire.upstream.reading
    wire.session.peer_full(client_side=False, full=False)
    assert wire.client.reading and not wire.upstream.reading
