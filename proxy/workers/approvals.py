"""Approval requests across workers: a held statement's request lives in the broker of the
worker whose session holds it; worker 0's admin API and console list every worker's requests
and send a decision to the worker that owns it, where its broker applies the very same
rules (approvers, two-person, break-glass, deadlines) as for its own.

Requests cross the sibling channel as plain JSON values (never pickled), rebuilt into the
same frozen :class:`~proxy.approvals.model.Request` values the console renders.
"""

from __future__ import annotations

from dataclasses import fields
from enum import Enum
from typing import Any

from proxy.approvals.model import Approver, Binding, Request, RequestState, Vote
from proxy.identity import Identity, IdentitySource
from proxy.policy.review import ReviewSpec


def _groups(value: Any) -> tuple[tuple[str, frozenset[str]], ...]:
    return tuple((str(name), frozenset(str(m) for m in members)) for name, members in value)


def _groups_json(groups: tuple[tuple[str, frozenset[str]], ...]) -> list[Any]:
    return [[name, sorted(members)] for name, members in groups]


def _identity_json(ident: Identity) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(Identity):
        value = getattr(ident, f.name)
        out[f.name] = value.value if isinstance(value, Enum) else value
    return out


def _identity(data: dict[str, Any]) -> Identity:
    values = {f.name: data[f.name] for f in fields(Identity)}
    source = values["identity_source"]
    values["identity_source"] = IdentitySource(source) if source is not None else None
    return Identity(**values)


def request_to_json(r: Request) -> dict[str, Any]:
    spec = r.spec
    ident = r.identity
    return {
        "id": r.id,
        "binding": [
            r.binding.text_sha256,
            r.binding.params_sha256,
            r.binding.user,
            r.binding.database,
            r.binding.session_id,
            r.binding.end_identity,
        ],
        "spec": {
            "rule_id": spec.rule_id,
            "users": sorted(spec.users),
            "groups": _groups_json(spec.groups),
            "approvals": spec.approvals,
            "timeout": spec.timeout,
            "reason_required": spec.reason_required,
            "on_timeout": spec.on_timeout,
            "mode": spec.mode,
            "ticket_valid": spec.ticket_valid,
            "break_glass": _groups_json(spec.break_glass),
            "source": spec.source,
        },
        "statement": r.statement,
        "identity": _identity_json(ident),
        "created_at": r.created_at,
        "deadline": r.deadline,
        "fingerprint": r.fingerprint,
        "state": r.state.value,
        "votes": [[v.approver, v.approve, v.reason, v.at, v.break_glass] for v in r.votes],
        "decided_at": r.decided_at,
        "reason": r.reason,
        "ticket_until": r.ticket_until,
        "ticket_used": r.ticket_used,
        # The exact text for an EXPLAIN an approver asks for in worker 0's console; it stays
        # inside the proxy's own processes (the channel is the proxy user's alone).
        "text": r.text,
        "params": [p.hex() if p is not None else None for p in r.params],
    }


def request_from_json(data: dict[str, Any]) -> Request:
    spec = data["spec"]
    return Request(
        id=str(data["id"]),
        binding=Binding(*(str(part) for part in data["binding"])),
        spec=ReviewSpec(
            rule_id=str(spec["rule_id"]),
            users=frozenset(str(u) for u in spec["users"]),
            groups=_groups(spec["groups"]),
            approvals=int(spec["approvals"]),
            timeout=float(spec["timeout"]),
            reason_required=bool(spec["reason_required"]),
            on_timeout=spec["on_timeout"],
            mode=spec["mode"],
            ticket_valid=float(spec["ticket_valid"]),
            break_glass=_groups(spec["break_glass"]),
            source=str(spec["source"]),
        ),
        statement=str(data["statement"]),
        identity=_identity(data["identity"]),
        created_at=float(data["created_at"]),
        deadline=float(data["deadline"]),
        fingerprint=str(data["fingerprint"]),
        state=RequestState(data["state"]),
        votes=tuple(
            Vote(str(a), bool(ok), str(why), float(at), bool(bg))
            for a, ok, why, at, bg in data["votes"]
        ),
        decided_at=None if data["decided_at"] is None else float(data["decided_at"]),
        reason=str(data["reason"]),
        ticket_until=None if data["ticket_until"] is None else float(data["ticket_until"]),
        ticket_used=bool(data["ticket_used"]),
        text=str(data["text"]),
        params=tuple(bytes.fromhex(p) if p is not None else None for p in data["params"]),
    )


def approver_to_json(person: Approver) -> dict[str, Any]:
    return {"name": person.name, "groups": sorted(person.groups), "role": person.role}


def approver_from_json(data: dict[str, Any]) -> Approver:
    role = data["role"]
    if role not in ("viewer", "approver"):
        raise ValueError(f"unknown role {role!r}")
    return Approver(str(data["name"]), frozenset(str(g) for g in data["groups"]), role)
