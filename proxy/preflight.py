"""``pgwarden serve --check-config``: everything that would stop ``serve`` from starting.

Each check calls the loader ``serve`` itself uses (policies, alert rules, HMAC key, admin
token, store sinks), so "ok" means the start would get past them. Nothing is created: the
audit directory is probed with a temporary file that is removed at once, and listen
addresses with a socket that is bound and closed.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from proxy.config import Config, parse_listen
from proxy.errors import ConfigError, PgWardenError, SourceError, SourceProblem


@dataclass(frozen=True, slots=True)
class Findings:
    """Problems stop a start; warnings are said and do not."""

    problems: tuple[SourceProblem, ...]
    warnings: tuple[str, ...]

    def raise_problems(self) -> None:
        if self.problems:
            raise ConfigError(list(self.problems))


class _Collect:
    def __init__(self) -> None:
        self.problems: list[SourceProblem] = []
        self.warnings: list[str] = []

    def problem(self, key: str, message: str, file: str = "") -> None:
        self.problems.append(SourceProblem(file, 0, 0, message, key))


def check(cfg: Config) -> Findings:
    """Every reason ``serve`` with ``cfg`` would not start, and what it would warn about."""
    out = _Collect()
    out.warnings.extend(cfg.warnings)
    _check_sources(cfg, out)
    _check_audit_dir(str(cfg["audit.dir"]), out)
    _check_hmac_key(str(cfg["audit.hmac_key_file"]), out)
    _check_listen("listen", str(cfg.listen), out)
    _check_workers(int(cfg["workers"]), out)
    _check_admin(cfg, out)
    _check_sinks(cfg, out)
    return Findings(tuple(out.problems), tuple(out.warnings))


def _check_sources(cfg: Config, out: _Collect) -> None:
    from proxy.server import load_policies

    try:
        load_policies(cfg)
    except SourceError as exc:
        out.problems.extend(exc.problems)
    except PgWardenError as exc:
        out.problem("policies", str(exc))
    if cfg["alerts"]:
        from proxy.alerts.rules import load_rules

        try:
            load_rules(list(cfg["alerts"]))
        except SourceError as exc:
            out.problems.extend(exc.problems)
        except PgWardenError as exc:
            out.problem("alerts", str(exc))


def _check_audit_dir(directory: str, out: _Collect) -> None:
    from proxy.audit.trailid import read_trail_id

    path = Path(directory)
    if path.exists():
        if not path.is_dir():
            out.problem("audit.dir", f"{directory!r} exists and is not a directory")
            return
        try:
            with tempfile.TemporaryFile(dir=path, prefix=".pgwarden-check-"):
                pass
        except OSError as exc:
            out.problem("audit.dir", f"audit directory {directory!r} is not writable: "
                        f"{exc.strerror or exc}")  # fmt: skip
            return
        try:
            read_trail_id(path)
        except PgWardenError as exc:
            out.problem("audit.dir", str(exc))
        return
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        out.problem("audit.dir", f"audit directory {directory!r} does not exist and cannot be "
                    f"created ({str(ancestor)!r} is not a writable directory)")  # fmt: skip


def _check_hmac_key(key_file: str, out: _Collect) -> None:
    if not key_file:
        return
    from proxy.audit.chain import load_hmac_key

    try:
        load_hmac_key(key_file)
    except PgWardenError as exc:
        out.problem("audit.hmac_key_file", str(exc))


def _check_admin(cfg: Config, out: _Collect) -> None:
    listen = str(cfg["admin.listen"]).strip()
    if not listen:
        return
    from proxy.admin.auth import load_token

    try:
        endpoint = parse_listen(listen)
    except ValueError as exc:
        out.problem("admin.listen", str(exc))
        return
    try:
        load_token(str(cfg["admin.token_file"]), endpoint.host)
    except SourceError as exc:
        out.problems.extend(exc.problems)
    _check_listen("admin.listen", listen, out)


def _check_workers(workers: int, out: _Collect) -> None:
    if workers == 1:
        return
    if not hasattr(socket, "SO_REUSEPORT"):
        out.problem("workers", "several workers need SO_REUSEPORT, which this system lacks")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores is not None and workers > cores:
        out.warnings.append(
            f"workers: {workers} workers on {cores} CPU{'s' if cores != 1 else ''}; workers "
            "beyond the cores only compete for them (docs/operations.md, Workers)"
        )


def _check_listen(key: str, address: str, out: _Collect) -> None:
    """Bind (and close) every address ``address`` resolves to, as the listener would."""
    try:
        endpoint = parse_listen(address)
    except ValueError as exc:
        out.problem(key, str(exc))
        return
    try:
        infos = socket.getaddrinfo(
            endpoint.host, endpoint.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        out.problem(key, f"cannot listen on {address}: {exc.strerror}")
        return
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    # Likely the running instance this check precedes a restart of.
                    out.warnings.append(
                        f"{key}: {address} is in use right now; serve fails unless it is free "
                        "by then"
                    )
                else:
                    out.problem(key, f"cannot listen on {address}: {exc.strerror or exc}")
                return


def _check_sinks(cfg: Config, out: _Collect) -> None:
    if not cfg["audit.sinks"]:
        return
    from proxy.store.shipper import SinkConfig

    for sink in cfg["audit.sinks"]:
        try:
            SinkConfig.from_mapping(sink)
        except PgWardenError as exc:
            out.problem("audit.sinks", str(exc))
