"""The things pgbench talks to: Postgres directly, PgBouncer, pgwarden.

Each proxy runs as a child process we start and stop; a :class:`Target` names where clients
connect and which process to charge CPU and memory to.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class BenchSetupError(Exception):
    """Something the benchmark needs could not be set up; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where pgbench connects; ``pid`` is the proxy process to measure (None: direct)."""

    name: str
    host: str
    port: int
    pid: int | None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll until ``port`` accepts a TCP connection, failing early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchSetupError(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise BenchSetupError(f"{proc.args!r} did not listen on port {port}:\n{tail(log)}")


def wait_for_line(text: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll until ``log`` holds ``text``, failing early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchSetupError(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError):
            if text in log.read_text(errors="replace"):
                return
        time.sleep(0.05)
    raise BenchSetupError(f"{proc.args!r} never logged {text!r}:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: the harness must never leave a proxy behind."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run_as() -> str | None:
    """The unprivileged user to run servers as when we are root (PgBouncer refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise BenchSetupError("running as root but there is no 'postgres' OS user") from exc
    return "postgres"


def ensure_pgbouncer() -> str:
    """Path of the pgbouncer binary, installing the Debian package if we are root."""
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if found:
        return found
    if os.geteuid() != 0:
        raise BenchSetupError(
            "pgbouncer is not installed; install it (apt-get install pgbouncer) or run as root, "
            "or leave it out with --targets"
        )
    print("pgbouncer not found; running apt-get install -y pgbouncer", file=sys.stderr)
    result = subprocess.run(
        ["apt-get", "install", "-y", "pgbouncer"],
        capture_output=True,
        text=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        check=False,
    )
    if result.returncode != 0 or not Path("/usr/sbin/pgbouncer").exists():
        raise BenchSetupError(
            "apt-get install -y pgbouncer failed (try apt-get update first, or leave pgbouncer "
            f"out with --targets):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return "/usr/sbin/pgbouncer"


class PgBouncer:
    """PgBouncer in session mode in front of one Postgres, from a generated ini file;
    ``settings`` are more ``[pgbouncer]`` lines (e.g. its client_tls_* / server_tls_*)."""

    def __init__(
        self,
        workdir: Path,
        pg_port: int,
        max_clients: int,
        name: str = "pgbouncer",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.pg_port = pg_port
        self.max_clients = max_clients
        self.name = name
        self.settings = dict(settings or {})
        self.port = free_port()
        self.log = workdir / "pgbouncer.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        userlist = self.workdir / "userlist.txt"
        userlist.write_text('"postgres" ""\n')
        ini = self.workdir / "pgbouncer.ini"
        # Session mode: one server connection per client, the fair comparison for a proxy that
        # does not pool. The pool must be as large as the largest client count we open.
        ini.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.pg_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {userlist}\n"
            "pool_mode = session\n"
            f"max_client_conn = {self.max_clients + 100}\n"
            f"default_pool_size = {self.max_clients + 50}\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
            "admin_users = postgres\n"
            + "".join(f"{key} = {value}\n" for key, value in self.settings.items())
        )
        user = _run_as()
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (self.workdir, userlist, ini):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        return ini

    def start(self) -> Target:
        binary = ensure_pgbouncer()
        ini = self._write_config()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, str(ini)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=_run_as(),
                start_new_session=True,
            )
        wait_for_port(self.port, self.proc, self.log, timeout=15)
        return Target(self.name, "127.0.0.1", self.port, self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


class PgWarden:
    """``python -m proxy serve`` as a subprocess, auditing into its own directory."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        pg_port: int,
        policies: tuple[Path, ...] = (),
        extra_args: list[str] | None = None,
        repo: Path = REPO_ROOT,
    ) -> None:
        self.name = name
        self.repo = repo  # the checkout whose pgwarden runs (another one: a baseline)
        self.extra_args = list(extra_args or [])
        self.workdir = workdir
        self.audit_dir = workdir / "audit"
        self.pg_port = pg_port
        self.policies = policies
        self.port = free_port()
        self.admin_port = free_port()
        self.log = workdir / "pgwarden.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--upstream",
            f"127.0.0.1:{self.pg_port}",
            "--audit-dir",
            str(self.audit_dir),
            # Default configuration means the admin API (and its metrics) is on; its own
            # free port so that parallel runs do not collide.
            "--admin-listen",
            f"127.0.0.1:{self.admin_port}",
        ]
        for policy in self.policies:
            cmd += ["--policy", str(policy)]
        return cmd + self.extra_args

    def start(self, workers: int = 1) -> Target:
        self.audit_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(self.repo)}
        # Only our flags: a stray PGWARDEN_* in the caller's environment would change what we
        # measure without showing up in the command we print.
        env = {k: v for k, v in env.items() if not k.startswith("PGWARDEN_")}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.repo,
                env=env,
                start_new_session=True,
            )
        wait_for_port(self.port, self.proc, self.log, timeout=60)
        if workers > 1:  # the port answers once one worker listens: wait for all of them
            wait_for_line(f"all {workers} workers ready", self.proc, self.log, timeout=60)
        return Target(self.name, "127.0.0.1", self.port, self.proc.pid)

    def prune_rotated_audit(self) -> None:
        """Delete rotated audit files so long runs do not fill the disk; the live file stays."""
        for path in self.audit_dir.rglob("audit-*.jsonl*"):  # with workers: worker-k/ too
            with contextlib.suppress(OSError):
                path.unlink()

    def audit_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.audit_dir.rglob("audit*.jsonl*"))

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
