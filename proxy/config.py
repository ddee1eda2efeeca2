"""Proxy configuration: one schema, three sources (YAML file < environment < flags).

Every key is declared once in :data:`SCHEMA`. The same declaration produces the YAML
validator, the ``PGWARDEN_*`` environment variable and the ``--flag`` of ``pgwarden serve``,
so the three can never drift apart.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from proxy import yamlsrc
from proxy.errors import ConfigError, PgWardenError, SourceError, SourceProblem
from proxy.hints import closest, did_you_mean

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "k": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1000**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def parse_size(value: Any) -> int:
    """``64MB``, ``10kB``, ``1GiB`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64MB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as 64MB, got {value!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: Any) -> float:
    """``30s``, ``500ms``, ``5m``, ``1h``, ``1d`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _DURATION_UNITS:
        raise ValueError(f"expected a duration such as 30s, got {value!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to listen or connect: a TCP host/port or a Unix socket path."""

    host: str
    port: int
    unix_path: str | None = None

    def __str__(self) -> str:
        return self.unix_path if self.unix_path else f"{self.host}:{self.port}"


def parse_listen(value: Any) -> Endpoint:
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid port in {value!r}")
    return Endpoint(host, int(port))


@dataclass(frozen=True, slots=True)
class Upstream:
    """The PostgreSQL server pgwarden fronts."""

    host: str = "127.0.0.1"
    port: int = 5432
    unix_dir: str | None = None  # directory holding .s.PGSQL.<port>

    @property
    def unix_path(self) -> str | None:
        return f"{self.unix_dir}/.s.PGSQL.{self.port}" if self.unix_dir else None

    def __str__(self) -> str:
        return self.unix_path or f"{self.host}:{self.port}"


def parse_upstream(value: Any) -> Upstream:
    """``HOST:PORT``, ``postgresql://host:port[/db]``, or a Unix socket directory/path."""
    text = str(value).strip()
    if text.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(text)
        host = unquote(parts.hostname or "127.0.0.1")
        port = parts.port or 5432
        if host.startswith("/"):
            return Upstream(host="", port=port, unix_dir=host)
        return Upstream(host, port)
    if text.startswith("/"):
        match = re.fullmatch(r"(.*)/\.s\.PGSQL\.(\d+)", text)
        if match:
            return Upstream(host="", port=int(match.group(2)), unix_dir=match.group(1))
        base, _, port_text = text.rpartition(":")
        if port_text.isdigit() and base:
            return Upstream(host="", port=int(port_text), unix_dir=base)
        return Upstream(host="", port=5432, unix_dir=text)
    endpoint = parse_listen(text) if ":" in text else Endpoint(text, 5432)
    return Upstream(endpoint.host, endpoint.port)


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value)
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}; got {value!r}")
        return text

    return parse


def _str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v for v in (p.strip() for p in value.split(",")) if v)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError("expected a list of strings")


CLIENT_METHODS = ("scram-sha-256", "md5", "password")


def _client_methods(value: Any) -> tuple[str, ...]:
    methods = _str_list(value)
    unknown = [m for m in methods if m not in CLIENT_METHODS]
    if unknown or not methods:
        raise ValueError(f"expected some of {', '.join(CLIENT_METHODS)}; got {value!r}")
    return tuple(dict.fromkeys(methods))


def _anchor_syslog(value: Any) -> str:
    text = str(value).strip()
    if text:
        from proxy.audit.anchor import syslog_address

        try:
            syslog_address(text)
        except PgWardenError as exc:
            raise ValueError(str(exc)) from None
    return text


def _http_url(value: Any) -> str:
    text = str(value).strip()
    if text and urlsplit(text).scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("expected a whole number")
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


MAX_WORKERS = 64


def _worker_count(value: Any) -> int:
    number = _positive_int(value)
    if number > MAX_WORKERS:
        raise ValueError(f"at most {MAX_WORKERS} workers")
    return number


def _sinks(value: Any) -> tuple[Mapping[str, Any], ...]:
    if isinstance(value, str):  # from a flag or the environment: YAML flow syntax (or JSON)
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"not valid YAML: {exc}") from None
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of sinks such as [{type: postgres, dsn: ...}]")
    out = []
    for item in value:
        if not isinstance(item, dict) or item.get("type") != "postgres" or not item.get("dsn"):
            raise ValueError("each sink needs type: postgres and a dsn")
        out.append(dict(item))
    return tuple(out)


_SETTING_NAME = re.compile(r"[a-z_][a-z0-9_$]*(\.[a-z_][a-z0-9_$]*)+")


def _identity_parameter(value: Any) -> str:
    """``identity.parameter``: '', ``application_name`` or a custom setting name (``app.user``)."""
    text = str(value).strip().lower()
    if text in ("", "application_name") or _SETTING_NAME.fullmatch(text):
        return text
    raise ValueError(
        "expected application_name or a setting name with a dot such as app.end_user "
        f"(PostgreSQL refuses other unknown startup settings), got {value!r}"
    )


def _identity_pattern(value: Any) -> str:
    text = str(value)
    if text:
        try:
            compiled = re.compile(text)
        except re.error as exc:
            raise ValueError(f"bad regular expression {text!r}: {exc}") from None
        if "identity" not in compiled.groupindex and compiled.groups > 1:
            raise ValueError(
                "a pattern with several groups must name the one that is the identity: "
                "(?P<identity>...)"
            )
    return text


# Mode names are libpq's sslmode / PgBouncer's client_tls_sslmode. Upstream ``allow`` is left
# out: it means "retry with TLS after a failed plaintext login", which a proxy cannot replay.
TLS_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
UPSTREAM_TLS_MODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
TLS_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
CERT_IDENTITY_SOURCES = ("cn", "san-dns", "san-email", "san-uri")
AUTH_MODES = ("passthrough", "proxy", "cert")


@dataclass(frozen=True, slots=True)
class Key:
    path: str  # dotted
    parse: Callable[[Any], Any]
    default: Any
    help: str
    flag: str = ""  # explicit flag name; default derived from the path

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.path.replace(".", "-").replace("_", "-")

    @property
    def env_name(self) -> str:
        return "PGWARDEN_" + self.path.replace(".", "_").upper()


SCHEMA: tuple[Key, ...] = (
    Key("listen", parse_listen, "127.0.0.1:6432", "address clients connect to (HOST:PORT)"),
    Key(
        "upstream",
        parse_upstream,
        "127.0.0.1:5432",
        "PostgreSQL server: HOST:PORT, postgresql:// URL, or Unix socket directory",
    ),
    Key("proxy_id", str, "", "name of this proxy in audit events (default: hostname)"),
    Key("policies", _str_list, (), "policy files or directories (repeatable)", flag="--policy"),
    Key("alerts", _str_list, (), "alert-rule files or directories (repeatable)", flag="--alerts"),
    Key("log_format", _choice("text", "json"), "text", "diagnostic log format on stderr"),
    Key("log_level", _choice("debug", "info", "warning", "error"), "info", "diagnostic log level"),
    Key("allow_replication", parse_bool, False, "let replication connections through"),
    Key("shutdown_grace", parse_duration, 30.0, "how long running statements may finish on stop"),
    Key(
        "workers",
        _worker_count,
        1,
        "proxy processes accepting on the listen address (SO_REUSEPORT), each with its own "
        "event loop and audit trail; 1 runs the proxy in this process",
    ),
    Key(
        "limits.analysis_offload_size",
        parse_size,
        64 * 1024,
        "statements at least this long are analysed off the event loop (other sessions "
        "keep moving while a big statement waits for its own decision)",
    ),
    Key(
        "limits.max_analysis_size",
        parse_size,
        16 * 1024**2,
        "statements longer than this are not analysed at all: the policy's on_unparsable "
        "decides them",
    ),
    Key(
        "limits.analysis_workers",
        _positive_int,
        2,
        "worker processes analysing long statements at once (later ones wait their turn)",
    ),
    Key(
        "limits.analysis_worker_memory",
        parse_size,
        4 * 1024**3,
        "address-space limit of each analysis worker; a statement whose analysis needs more "
        "is decided by the policy's on_unparsable and the worker is replaced (0: no limit)",
    ),
    Key(
        "limits.analysis_timeout",
        parse_duration,
        60.0,
        "longest analysis of one statement; past it the worker is killed and the policy's "
        "on_unparsable decides",
    ),
    Key(
        "limits.max_message_size",
        parse_size,
        64 * 1000**2,
        "largest Query/Parse/Bind/FunctionCall message accepted",
    ),
    Key(
        "limits.login_timeout",
        parse_duration,
        60.0,
        "deadline for a client to finish startup+auth (PostgreSQL's authentication_timeout)",
    ),
    Key("limits.connect_timeout", parse_duration, 10.0, "deadline for connecting to the upstream"),
    Key("limits.cancel_timeout", parse_duration, 2.0, "deadline for forwarding a CancelRequest"),
    Key("limits.max_clients", _positive_int, 10000, "client connections accepted at once"),
    Key(
        "limits.facts_cache_entries",
        _positive_int,
        10000,
        "statements whose parsed facts are kept (LRU, by exact text)",
    ),
    Key("audit.dir", str, "./audit", "directory of the JSONL audit trail", flag="--audit-dir"),
    Key("audit.rotate_size", parse_size, 100 * 1000**2, "rotate the current file past this size"),
    Key("audit.rotate_age", parse_duration, 86400.0, "rotate the current file past this age"),
    Key("audit.compress_rotated", parse_bool, False, "gzip rotated files"),
    Key(
        "audit.fsync",
        _choice("none", "interval", "always"),
        "interval",
        "none: OS decides; interval: fsync every audit.fsync_interval; always: before release",
    ),
    Key("audit.fsync_interval", parse_duration, 1.0, "fsync period for audit.fsync=interval"),
    Key("audit.hmac_key_file", str, "", "file with a secret key: chain hashes become HMACs"),
    Key(
        "audit.statement_text",
        _choice("full", "normalized", "none"),
        "full",
        "statement text in events: full (secrets redacted), normalized, none",
    ),
    Key(
        "audit.parameters", _choice("none", "redacted", "full"), "none", "bind parameters in events"
    ),
    Key(
        "audit.statement_max",
        parse_size,
        64 * 1000,
        "statement text kept per event (UTF-8 bytes); the rest becomes its length and SHA-256",
    ),
    Key("audit.queue_max", _positive_int, 100000, "audit records buffered before statements wait"),
    Key(
        "audit.exact_timings",
        parse_bool,
        False,
        "ask the server to flush after every Execute (a Flush message, which has no reply), "
        "so each pipelined statement is timed on its own",
    ),
    Key(
        "audit.write_ahead",
        parse_bool,
        False,
        "write a dispatch record (synced as audit.fsync says) before each statement is "
        "forwarded; after a crash, statements that never finished are closed as unknown",
    ),
    Key(
        "audit.fail_closed",
        parse_bool,
        False,
        "refuse new statements while no durable sink accepts records",
    ),
    Key("audit.sinks", _sinks, (), "extra sinks, e.g. [{type: postgres, dsn: ...}]"),
    Key(
        "audit.retention",
        parse_duration,
        0.0,
        "remove rotated files older than this, after a chained pruned event (0: keep all)",
    ),
    Key(
        "audit.anchor_interval",
        parse_duration,
        60.0,
        "how often the chain head is published to the anchors below",
    ),
    Key(
        "audit.anchor_syslog",
        _anchor_syslog,
        "",
        "publish the chain head to syslog: 'local' (/dev/log), a socket path or HOST:PORT (UDP)",
    ),
    Key(
        "audit.anchor_webhook", _http_url, "", "publish the chain head by POSTing JSON to this URL"
    ),
    Key("admin.listen", str, "127.0.0.1:9187", "admin HTTP listener (HOST:PORT; empty: off)"),
    Key("admin.token_file", str, "", "file holding the admin API bearer token"),
    Key(
        "approvals.approvers_file",
        str,
        "",
        "people who may review (name, token hash, groups, role); empty: nobody can decide",
    ),
    Key(
        "approvals.console_url",
        str,
        "",
        "console address in notices and notifications (default: http://admin.listen)",
    ),
    Key("approvals.explain_dsn", str, "", "connection EXPLAIN runs on when an approver asks"),
    Key(
        "catalog.dsn",
        str,
        "",
        "pgwarden's own login (any role with CONNECT) for naming function OIDs that are not "
        "built-ins (extension and user functions) in FunctionCall messages; the database part "
        "is replaced by the session's. Empty: such calls are judged as opaque",
    ),
    Key(
        "console.store",
        parse_bool,
        False,
        "the console reads the central store (first audit.sinks entry), not the local trail",
    ),
    # TLS and authentication (issue 11): checked as a whole by proxy.tls.settings.
    Key(
        "client_tls.mode",
        _choice(*TLS_MODES),
        "disable",
        "TLS towards clients: disable, allow, prefer, require, verify-ca, verify-full",
    ),
    Key("client_tls.cert_file", str, "", "certificate (chain) pgwarden presents to clients"),
    Key("client_tls.key_file", str, "", "private key of client_tls.cert_file (mode 0600)"),
    Key("client_tls.ca_file", str, "", "CA bundle that client certificates must chain to"),
    Key("client_tls.min_protocol", _choice(*TLS_PROTOCOLS), "TLSv1.2", "oldest TLS version"),
    Key("client_tls.ciphers", str, "", "OpenSSL cipher list for TLS 1.2 (empty: Python's)"),
    Key("client_tls.direct", parse_bool, True, "accept direct TLS (PostgreSQL 17 sslnegotiation)"),
    Key(
        "client_tls.identity",
        _choice(*CERT_IDENTITY_SOURCES),
        "cn",
        "client-certificate field naming the user: cn, san-dns, san-email, san-uri",
    ),
    Key(
        "upstream_tls.mode",
        _choice(*UPSTREAM_TLS_MODES),
        "disable",
        "TLS towards PostgreSQL: disable, prefer, require, verify-ca, verify-full",
    ),
    Key("upstream_tls.ca_file", str, "", "CA bundle for the server (empty: the system bundle)"),
    Key("upstream_tls.cert_file", str, "", "client certificate pgwarden presents upstream"),
    Key("upstream_tls.key_file", str, "", "private key of upstream_tls.cert_file (mode 0600)"),
    Key(
        "upstream_tls.server_name", str, "", "name the server certificate must show (default: host)"
    ),
    Key("upstream_tls.min_protocol", _choice(*TLS_PROTOCOLS), "TLSv1.2", "oldest TLS version"),
    Key("upstream_tls.direct", parse_bool, False, "direct TLS without SSLRequest (PostgreSQL 17+)"),
    Key(
        "auth.mode",
        _choice(*AUTH_MODES),
        "passthrough",
        "who authenticates clients: passthrough (the server), proxy (users file), cert",
    ),
    Key("auth.users_file", str, "", "SCRAM verifiers for auth.mode=proxy (pgwarden users add)"),
    Key(
        "auth.passfile",
        str,
        "",
        "passwords for pgwarden's upstream login in auth.mode proxy/cert (.pgpass format)",
    ),
    Key(
        "auth.client_methods",
        _client_methods,
        ("scram-sha-256",),
        "how auth.mode proxy asks for passwords, first answerable wins: scram-sha-256, md5, "
        "password (cleartext)",
    ),
    Key(
        "auth.cleartext_without_tls",
        parse_bool,
        False,
        "let the password method ask for a cleartext password over a plaintext client leg",
    ),
    Key("auth.ident_file", str, "", "certificate identity → role map for auth.mode cert"),
    Key("auth.ident_map", str, "", "the map of auth.ident_file to use (as map= in pg_hba)"),
    Key("auth.auth_user", str, "", "role that runs auth.auth_query on the server (empty: off)"),
    Key(
        "auth.auth_query",
        str,
        "SELECT usename, passwd FROM pg_shadow WHERE usename=$1",
        "query returning (user, secret) for $1, run as auth.auth_user",
    ),
    Key("auth.auth_dbname", str, "", "database auth.auth_query runs in (default: the client's)"),
    Key("auth.auth_query_cache", parse_duration, 10.0, "how long auth_query results are kept"),
    # End identity (issue 11 §4): checked as a whole by proxy.relay.endidentity.load.
    Key(
        "identity.parameter",
        _identity_parameter,
        "",
        "startup parameter a client names the person behind its role with (marked "
        "client_supplied): application_name or a setting such as app.end_user; empty: off",
    ),
    Key(
        "identity.pattern",
        _identity_pattern,
        "",
        "regex searched in identity.parameter's value: the identity is its group 'identity', else "
        "group 1, else the match; no match: no identity (required for application_name)",
    ),
    Key(
        "identity.client_addrs",
        _str_list,
        (),
        "take identity.parameter only from these networks (CIDR, or unix); empty: from any client",
    ),
    Key(
        "identity.propagate",
        _choice("none", "guc"),
        "none",
        "guc: tell the server the end identity as pgwarden.identity and "
        "pgwarden.identity_source (the client cannot set them itself)",
    ),
)

_BY_PATH = {k.path: k for k in SCHEMA}
_SECTIONS = {k.path.split(".")[0] for k in SCHEMA if "." in k.path}
_BY_ENV = {k.env_name: k for k in SCHEMA}
# PGWARDEN_* variables read by something other than the schema (not "unknown").
# PGWARDEN_BUILD is setup.py's (docs/compiled.md), PGWARDEN_EXPECT_BUILD the suite's.
OTHER_VARIABLES = frozenset(
    {
        "PGWARDEN_CONFIG",
        "PGWARDEN_PG_BIN",
        "PGWARDEN_TEST_DSN",
        "PGWARDEN_REQUIRE_DRIVERS",
        "PGWARDEN_BUILD",
        "PGWARDEN_EXPECT_BUILD",
        "PGWARDEN_ADMIN_URL",  # `pgwarden approvals`
        "PGWARDEN_TOKEN",
        "PGWARDEN_TOKEN_FILE",
        "PGWARDEN_SCREENSHOTS",  # the console browser test
    }
)


def _unknown_key_message(name: str, section: str = "") -> str:
    """ "unknown key" with the likeliest intended key, in the file's own spelling."""
    if section:
        subs = [k.path.split(".", 1)[1] for k in SCHEMA if k.path.startswith(section + ".")]
        hint = closest(name, subs)
        return f"unknown key; did you mean {section}.{hint}?" if hint else "unknown key"
    hint = closest(name, sorted({k.path.split(".")[0] for k in SCHEMA}))
    if hint is not None:
        return f"unknown key; did you mean {hint}?"
    # A key of a section written at the top level (``login_timeout:`` for limits.login_timeout).
    leaves = {k.path.split(".", 1)[1]: k.path for k in SCHEMA if "." in k.path}
    leaf = closest(name, leaves)
    if leaf is None:
        return "unknown key"
    section_name = leaves[leaf].split(".")[0]
    return f"unknown key; did you mean {leaves[leaf]} ({leaf}: under {section_name}:)?"


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning per ``PGWARDEN_*`` variable that no key (or tool) reads."""
    out = []
    for name in sorted(environ):
        if name.startswith("PGWARDEN_") and name not in _BY_ENV and name not in OTHER_VARIABLES:
            tip = did_you_mean(name, [*_BY_ENV, *OTHER_VARIABLES])
            out.append(f"${name} matches no configuration key and is ignored{tip}")
    return out


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration. ``values`` maps dotted keys to parsed values."""

    values: Mapping[str, Any]
    source: str = ""  # the config file, if any
    warnings: tuple[str, ...] = ()  # problems that do not stop a start (unknown variables)

    def __getitem__(self, path: str) -> Any:
        return self.values[path]

    @property
    def listen(self) -> Endpoint:
        return self.values["listen"]  # type: ignore[no-any-return]

    @property
    def upstream(self) -> Upstream:
        return self.values["upstream"]  # type: ignore[no-any-return]

    @property
    def proxy_id(self) -> str:
        return self.values["proxy_id"] or socket.gethostname()

    def replace(self, **changes: Any) -> Config:
        """A copy with dotted keys replaced (use ``audit__dir=`` for ``audit.dir``)."""
        values = dict(self.values)
        for name, value in changes.items():
            path = name.replace("__", ".")
            values[path] = _BY_PATH[path].parse(value)
        return Config(values, self.source, self.warnings)


@dataclass(slots=True)
class _Collector:
    values: dict[str, Any] = field(default_factory=dict)
    problems: list[SourceProblem] = field(default_factory=list)

    def set(self, key: Key, raw: Any, where: tuple[str, int, int]) -> None:
        try:
            self.values[key.path] = key.parse(raw)
        except (ValueError, TypeError) as exc:
            self.problems.append(SourceProblem(where[0], where[1], where[2], str(exc), key.path))


def _walk_file(data: Any, file: str, out: _Collector) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        out.problems.append(SourceProblem(file, 1, 1, "the config file must be a mapping"))
        return
    for name, value in data.items():
        line, col = yamlsrc.where(data, name)
        if name in _SECTIONS:
            if not isinstance(value, dict):
                out.problems.append(SourceProblem(file, line, col, "expected a mapping", name))
                continue
            for sub, subvalue in value.items():
                sline, scol = yamlsrc.where(value, sub)
                key = _BY_PATH.get(f"{name}.{sub}")
                if key is None:
                    message = _unknown_key_message(str(sub), name)
                    out.problems.append(SourceProblem(file, sline, scol, message, f"{name}.{sub}"))
                else:
                    out.set(key, subvalue, (file, sline, scol))
        elif name in _BY_PATH:
            out.set(_BY_PATH[name], value, (file, line, col))
        else:
            message = _unknown_key_message(str(name))
            out.problems.append(SourceProblem(file, line, col, message, str(name)))


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per schema key to ``parser``."""
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file")
    for key in SCHEMA:
        repeatable = key.parse is _str_list
        parser.add_argument(
            key.flag_name,
            dest="cfg__" + key.path.replace(".", "__"),
            metavar=key.path.split(".")[-1].upper(),
            action="append" if repeatable else "store",
            default=None,
            help=f"{key.help} [env {key.env_name}; default {key.default!r}]",
        )


def load(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Config:
    """Build the configuration: defaults < file < environment < flags.

    Raises :class:`ConfigError` listing every problem, each naming its key and source.
    """
    environ = os.environ if environ is None else environ
    out = _Collector()
    for key in SCHEMA:
        out.set(key, key.default, ("<default>", 0, 0))
    path = config_file or (getattr(args, "config", None) if args is not None else None)
    path = path or environ.get("PGWARDEN_CONFIG")
    if path:
        try:
            data = yamlsrc.load_file(path)
        except SourceError as exc:
            raise ConfigError(exc.problems) from None
        _walk_file(data, str(Path(path)), out)
    for key in SCHEMA:
        if key.env_name in environ:
            out.set(key, environ[key.env_name], (f"${key.env_name}", 0, 0))
    if args is not None:
        for key in SCHEMA:
            raw = getattr(args, "cfg__" + key.path.replace(".", "__"), None)
            if raw is not None:
                out.set(key, raw, (key.flag_name, 0, 0))
    if out.problems:
        raise ConfigError(out.problems)
    return Config(out.values, str(path or ""), tuple(unknown_variables(environ)))


_DSN_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@|(password\s*=\s*)('[^']*'|\S+)", re.I)


def display_value(value: Any) -> str:
    """A config value as shown to people (``--check-config``): DSN passwords hidden."""
    text = str(value)
    return _DSN_PASSWORD.sub(
        lambda m: f"{m.group(1)}***@" if m.group(1) else f"{m.group(2)}***", text
    )


def defaults() -> Config:
    """The configuration with every key at its default (for tests and the library API)."""
    return load(None, environ={})
