"""The one error hierarchy of pgwarden.

Every exception pgwarden raises on purpose derives from :class:`PgWardenError`. Anything else
escaping a public function is a bug. A policy denial is *not* an exception: it is a
``Decision`` value that the session turns into an ErrorResponse.
"""

from __future__ import annotations

from dataclasses import dataclass


class PgWardenError(Exception):
    """Root of every error pgwarden raises deliberately."""


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """One problem in a user-written file, located as precisely as we can."""

    file: str
    line: int  # 1-based; 0 when unknown
    col: int  # 1-based; 0 when unknown
    message: str
    key: str = ""  # dotted key path, e.g. "audit.rotate_size"

    def __str__(self) -> str:
        where = self.file
        if self.line:
            where += f":{self.line}"
            if self.col:
                where += f":{self.col}"
        key = f"{self.key}: " if self.key and self.key != where else ""
        return f"{where}: {key}{self.message}" if where else f"{key}{self.message}"


class SourceError(PgWardenError):
    """A user-written file (config, policy, alert rules, cases) is invalid.

    Carries every problem found, not just the first, so one run shows them all.
    """

    def __init__(self, problems: list[SourceProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(SourceError):
    """The proxy configuration (file, flags, environment) is invalid."""


class PolicyError(SourceError):
    """A policy file is invalid."""


class AlertRulesError(SourceError):
    """An alert-rules file is invalid."""


class ProtocolError(PgWardenError):
    """A peer broke the PostgreSQL v3 wire protocol.

    ``sqlstate`` is the code to put in the ErrorResponse we send (when we can send one).
    """

    sqlstate = "08P01"

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        if sqlstate is not None:
            self.sqlstate = sqlstate


class FrontendProtocolError(ProtocolError):
    """The client sent something invalid."""


class BackendProtocolError(ProtocolError):
    """The upstream server sent something invalid."""


class AuthenticationError(PgWardenError):
    """A login is refused: send FATAL with ``sqlstate``, ``str(self)`` and ``detail``.

    The default is PostgreSQL's answer to a wrong password (28P01)."""

    def __init__(self, message: str, sqlstate: str = "28P01", detail: str = "") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.detail = detail


class UpstreamError(PgWardenError):
    """The upstream PostgreSQL server cannot be reached or failed."""

    sqlstate = "08006"


class AnalysisWorkerError(PgWardenError):
    """An analysis worker process answered something that is not facts (proxy.sql.pool)."""


class AuditError(PgWardenError):
    """The audit trail cannot be written or read."""


class AuditIntegrityError(AuditError):
    """The audit trail failed verification (edited, deleted, inserted, reordered…)."""


class StoreError(AuditError):
    """The central audit store cannot be reached or rejected data."""


class PostgresNotFoundError(PgWardenError):
    """No PostgreSQL server binaries (initdb, pg_ctl) and no Docker engine were found."""


class ApprovalError(PgWardenError):
    """An approval step was refused (unknown request, approver not allowed, already decided).

    ``status`` is the HTTP status the admin API answers with."""

    status = 409

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class ApproversFileError(SourceError):
    """The approvers (per-person tokens) file is invalid."""
