"""What the session asks about SQL: facts, the policy decision, and what the audit log may see.

The session stays ignorant of pglast and of the policy file format; it calls this one object,
which the server builds and swaps atomically on policy reload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import TYPE_CHECKING, Any

from pglast import parser as pg_parser

from proxy.audit.chain import load_hmac_key
from proxy.audit.textcap import may_cap
from proxy.identity import Identity
from proxy.policy.decision import ALLOW, Decision, RuleMatch
from proxy.sql import cache as facts_cache
from proxy.sql import extract, fastpath, params, recordtext, redact
from proxy.sql.facts import ParserSettings, QueryFacts, RecordedText, StatementFacts

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.policy.engine import Policy
    from proxy.relay.statement import Statement
    from proxy.sql.catalog.resolver import FunctionInfo
    from proxy.wire.messages import Bind, FunctionCall


_FORGET_PREPARED = frozenset({"DEALLOCATE ALL", "DISCARD ALL"})

_AUDIT_REFUSAL = Decision(
    action="block",
    intended="block",
    rules=(RuleMatch("audit-unavailable", "block", "critical", "audit.fail_closed"),),
    reason="audit trail unavailable and audit.fail_closed is true",
    message="pgwarden: the audit trail cannot record statements right now; statement refused",
    sqlstate="57P03",
)


# identity.propagate guc: what pgwarden tells the server about the session is pgwarden's alone,
# whatever the policy says (and in monitor mode too).
_IDENTITY_GUARD = Decision(
    action="block",
    intended="block",
    rules=(RuleMatch("identity-guard", "block", "critical", "identity.propagate"),),
    reason="sets pgwarden.identity or pgwarden.identity_source, which pgwarden propagates",
    message="pgwarden: pgwarden.identity and pgwarden.identity_source are set by pgwarden "
    "(identity.propagate); a client cannot change them",
    sqlstate="42501",
)


def _sets_identity(facts: QueryFacts) -> bool:
    for stmt in facts.statements:
        if stmt.identity_change or (stmt.body is not None and stmt.body.identity_change):
            return True
    return False


_REDACTED_ENTRIES = 4096
_REDACTED_TEXT_MAX = 4096


class Gate:
    def __init__(self, cfg: Config, policy: Policy | None) -> None:
        self._redacted: dict[str, str] = {}
        facts_cache.configure(cfg["limits.facts_cache_entries"])
        self.policy = policy
        self.generation = 0
        self._text_mode = cfg["audit.statement_text"]
        self._statement_max = cfg["audit.statement_max"]
        self._guard_identity = cfg["identity.propagate"] != "none"
        # Keyed hashes of redacted parameters: with audit.hmac_key_file the same value hashes
        # the same across restarts and proxies sharing the key; without it a per-process
        # random key keeps low-entropy values from being guessed from the trail.
        key_file = cfg["audit.hmac_key_file"]
        self._param_key = load_hmac_key(key_file) if key_file else secrets.token_bytes(32)

    def swap_policy(self, policy: Policy | None) -> None:
        self.policy = policy
        self.generation += 1

    # --- facts and decisions ---------------------------------------------------------------

    def inspect(self, sql: bytes, settings: ParserSettings) -> QueryFacts:
        return facts_cache.analyze_bytes_cached(sql, settings)

    def decide(self, identity: Identity, facts: QueryFacts) -> Decision:
        if self._guard_identity and _sets_identity(facts):
            return _IDENTITY_GUARD
        policy = self.policy
        if policy is None:
            return ALLOW
        # No time given: the policy reads the clock itself, and only when it has an hours
        # rule (each window converts to its own zone; a local astimezone() here, which reads
        # the zone database, was half of a cheap statement's policy cost).
        return policy.evaluate(identity, facts)

    def needs_recheck(self, tracked: Statement) -> bool:
        """A prepared statement is decided at Parse; decide again at Bind when the policy
        changed since, or when it depends on the time of day."""
        policy = self.policy
        return policy is not None and (policy.uses_time or tracked.generation != self.generation)

    def resolve_prepared(
        self, facts: QueryFacts, prepared: dict[str, StatementFacts]
    ) -> QueryFacts:
        """See through SQL-level ``PREPARE``/``EXECUTE``: remember each PREPARE body in
        ``prepared`` (the session's map) and merge it into later EXECUTEs, in the same message
        or a later one. Returns ``facts`` itself when nothing changed. (A named DEALLOCATE
        leaves its entry: a later EXECUTE of it fails on the server anyway, and a new PREPARE
        of the name replaces it.)"""
        if not any(
            s.prepare_name or s.execute_name or s.command in _FORGET_PREPARED
            for s in facts.statements
        ):
            return facts
        resolved = []
        changed = False
        for stmt in facts.statements:
            if stmt.command in _FORGET_PREPARED:
                prepared.clear()
            if stmt.execute_name and stmt.execute_name in prepared:
                stmt = extract.resolve_execute(stmt, prepared)
                changed = True
            if stmt.prepare_name:
                body = extract.prepared_body(stmt)
                if body is not None:
                    prepared[stmt.prepare_name] = body
            resolved.append(stmt)
        if not changed:
            return facts
        return QueryFacts(facts.text, tuple(resolved), facts.parse_error, facts.unparsable_reason)

    def prepared_body(self, stmt: StatementFacts) -> StatementFacts | None:
        """The facts of what a SQL ``PREPARE`` stores (what a later EXECUTE or Bind runs)."""
        return extract.prepared_body(stmt)

    def prepared_body_text(self, stmt: StatementFacts) -> str:
        """The body of ``PREPARE name [(types)] AS body``: what a protocol Execute of the name
        runs, as the audit record shows it."""
        try:
            tokens = pg_parser.scan(stmt.text)
        except Exception:
            return stmt.text
        for token in tokens:
            if token.name == "AS":
                return stmt.text[token.end + 1 :].strip() or stmt.text
        return stmt.text

    def bind_values(
        self,
        facts: QueryFacts,
        bind: Bind,
        param_types: tuple[int, ...],
        settings: ParserSettings,
        *,
        sql_prepared: bool = False,
    ) -> QueryFacts:
        """``facts`` judged with the values a Bind gives its parameters (DESIGN.md §4).
        ``sql_prepared``: ``facts`` hold the body of a SQL-level PREPARE."""
        if not sql_prepared:
            return params.bind_message(
                facts, bind.params, bind.param_formats, param_types, settings
            )
        values = params.decode_values(
            bind.params, bind.param_formats, param_types, settings.client_encoding
        )
        bound = tuple(params.bind_prepared_body(s, values) for s in facts.statements)
        return QueryFacts(facts.text, bound, facts.parse_error, facts.unparsable_reason)

    def deallocate_name(self, stmt: StatementFacts) -> str | None:
        """The statement name a SQL ``DEALLOCATE name`` removes."""
        try:
            tree = json.loads(pg_parser.parse_sql_json(stmt.text))
        except Exception:
            return None
        for raw in tree.get("stmts", ()):
            body = raw.get("stmt", {}).get("DeallocateStmt")
            if body is not None and body.get("name"):
                return str(body["name"])
        return None

    def function_call_facts(
        self,
        call: FunctionCall,
        server_major: int | None,
        settings: ParserSettings,
        resolved: FunctionInfo | None = None,
    ) -> QueryFacts:
        """Facts for a FunctionCall ('F') message: the function named from PostgreSQL's
        catalog and judged like ``SELECT schema.name($1, …)`` with the call's arguments; an
        OID that is no shipped built-in is opaque."""
        return fastpath.function_call_facts(
            call.oid,
            call.args,
            call.arg_formats,
            server_major=server_major,
            settings=settings,
            resolved=resolved,
        )

    def audit_refusal(self) -> Decision:
        return _AUDIT_REFUSAL

    # --- what the audit log sees ---------------------------------------------------------

    def audit_text(self, text: str, stmt: StatementFacts | None) -> str | None:
        mode = self._text_mode
        if mode == "full":
            # Repeated statements are the common case: their redacted text is remembered
            # (it depends on the facts only for EXECUTE name(…)).
            if stmt is not None and stmt.execute_name:
                return redact.redact_statement(text, stmt)
            cached = self._redacted.get(text)
            if cached is None:
                cached = redact.redact_statement(text, stmt)
                if len(text) <= _REDACTED_TEXT_MAX:
                    if len(self._redacted) >= _REDACTED_ENTRIES:
                        self._redacted.clear()
                    self._redacted[text] = cached
            return cached
        if mode == "normalized":
            return redact.normalize(text)
        return None

    def record_statement(
        self,
        event: dict[str, Any],
        text: str,
        stmt: StatementFacts | None,
        facts: QueryFacts | None,
    ) -> None:
        """Set ``event["statement"]`` to what the trail may keep of ``text``: for a long
        statement the text its analysis worker made (redacted and capped off the loop), else
        :meth:`audit_text` (the trail caps it)."""
        made = self.made_text(text, stmt, facts)
        if made is not None:
            recordtext.fill(event, made)
        else:
            event["statement"] = self.audit_text(text, stmt)

    def made_text(
        self, text: str, stmt: StatementFacts | None, facts: QueryFacts | None
    ) -> RecordedText | None:
        """The record's text for a long ``text`` its analysis worker made, if there is one
        (else the record shows :meth:`audit_text`)."""
        if (stmt is None or stmt.record is None) and (facts is None or facts.record is None):
            return None  # (the common case, without the interpreted call)
        return recordtext.made(text, stmt, facts, self._text_mode, self._statement_max)

    def caps(self, text: str) -> bool:
        """Whether the trail may cap ``text`` at ``audit.statement_max``."""
        return may_cap(text, self._statement_max)

    def display_text(self, text: str, stmt: StatementFacts | None = None) -> str:
        return redact.redact_statement(text, stmt)

    def audit_error(
        self,
        message: str,
        statement: str,
        params: tuple[bytes | None, ...],
        extended: bool,
        facts: QueryFacts | None = None,
    ) -> str:
        """A server error message as the trail may keep it (it may echo secrets of the
        statement or a bound value). ``facts``: the statement's analysis, whose worker may
        have found the secrets of a long text already."""
        return redact.redact_error(
            message,
            statement=statement,
            params=params,
            extended=extended,
            secrets=recordtext.secrets_of(statement, facts),
        )

    def add_facts(
        self, event: dict[str, Any], stmt: StatementFacts | None, decision: Decision | None
    ) -> None:
        if stmt is not None:
            event["command"] = stmt.command
            event["class"] = stmt.statement_class
            # A table both read and written is listed once.
            event["tables"] = list(dict.fromkeys(r.qualified for r in stmt.relations))
            event["fingerprint"] = stmt.fingerprint
        else:
            event["command"] = None
            event["class"] = None
            event["tables"] = []
            event["fingerprint"] = None
        event["decision"] = (decision or ALLOW).as_audit()

    def audit_params(self, bind: Bind, mode: str, facts: QueryFacts | None) -> list[Any]:
        """Bind parameters as the audit log may see them. ``full`` falls back to the redacted
        form for statements that may carry credentials (CREATE ROLE … PASSWORD $1, dblink)."""
        if mode == "full" and redact.statement_may_carry_secrets(facts):
            mode = "redacted"
        out: list[Any] = []
        formats = bind.param_formats
        for i, value in enumerate(bind.params):
            fmt = formats[i] if len(formats) > 1 else (formats[0] if formats else 0)
            if value is None:
                out.append(None)
            elif mode == "full":
                out.append(
                    value.decode("utf-8", "replace")
                    if fmt == 0
                    else "base64:" + base64.b64encode(value).decode()
                )
            else:
                digest = hmac.new(self._param_key, value, hashlib.sha256).hexdigest()[:16]
                out.append(
                    {
                        "format": "text" if fmt == 0 else "binary",
                        "length": len(value),
                        "hmac": digest,
                    }
                )
        return out
