"""``pgwarden serve`` as a real subprocess, for tests (the ``proxy_factory`` fixture).

The proxy runs exactly as a user runs it (``python -m proxy serve ...``) against the suite's
PostgreSQL, on free ports, with a fresh audit directory; stderr and stdout go to files so a
failing test can show what the proxy said. Readiness is the proxy's own ``READY=1`` (systemd's
notify protocol, :mod:`proxy.sdnotify`) on a socket only this start knows, sent once its
listeners accept connections; if the process exits first, the start fails with its stderr.

Why not "the port accepts a connection": a free port is only free when it is picked. Another
suite on the same machine may start a proxy on the same port in the second before ours binds;
ours then exits with "address already in use", but a connection to the port had already
succeeded — to the other proxy — and the test ran against it (a login refused with "pgwarden
requires encryption" here, an extra ``auth_failure`` for ``postgres`` in the other suite's
TLS-only proxy). Only our process can send on our notify socket.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from proxy import pgrun
from tests.support.pgcluster import PgServer

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
_START_ATTEMPTS = 3
_ROTATED = re.compile(r"audit-(\d{8}T\d{6})-(\d+)\.jsonl(\.gz)?$")

Event = dict[str, Any]


def _rotated_order(path: Path) -> tuple[str, int, str]:
    # By timestamp, then by first seq as a number: two rotations in the same second must not
    # sort "-10" before "-9".
    match = _ROTATED.match(path.name)
    if match is None:
        return ("", 0, path.name)
    return (match.group(1), int(match.group(2)), path.name)


def audit_files(audit_dir: Path) -> list[Path]:
    """Rotated files oldest first, then the current ``audit.jsonl``.

    While a rotated file is being compressed both ``x.jsonl`` and a partial ``x.jsonl.gz``
    exist; the uncompressed one is complete, so it wins.
    """
    rotated: dict[str, Path] = {}
    for path in audit_dir.glob("audit-*.jsonl*"):
        if _ROTATED.match(path.name):
            stem = path.name.removesuffix(".gz")
            if stem not in rotated or path.suffix != ".gz":
                rotated[stem] = path
    files = sorted(rotated.values(), key=_rotated_order)
    current = audit_dir / "audit.jsonl"
    if current.exists():
        files.append(current)
    return files


def _read_lines(path: Path) -> list[bytes]:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    # After the final newline comes b"" or a record still being written: leave it out.
    return raw.split(b"\n")[:-1]


def read_events(audit_dir: Path, attempts: int = 20) -> list[Event]:
    """Every complete event in ``audit_dir``, in file order.

    A rotation while we read (the current file renamed, a rotated file compressed) shows up as
    a changed file list; then we read again, so no event is missed or read twice.
    """
    for _ in range(attempts):
        files = audit_files(audit_dir)
        try:
            lines = [line for path in files for line in _read_lines(path)]
        except (FileNotFoundError, EOFError, gzip.BadGzipFile):
            continue
        if audit_files(audit_dir) == files:
            return [json.loads(line) for line in lines if line.strip()]
    raise AssertionError(f"the audit files in {audit_dir} kept changing while being read")


class ProxyStartError(AssertionError):
    """The proxy process exited (or never listened) before it was ready."""


class _Readiness:
    """An abstract-namespace datagram socket for one start's ``NOTIFY_SOCKET``."""

    def __init__(self) -> None:
        self.name = f"@pgwarden-test-{os.getpid()}-{secrets.token_hex(8)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.bind("\0" + self.name[1:])
        self._sock.setblocking(False)

    def ready(self) -> bool:
        """Whether ``READY=1`` has arrived (reads what is waiting, never blocks)."""
        while True:
            try:
                message = self._sock.recv(4096)
            except BlockingIOError:
                return False
            if b"READY=1" in message.split(b"\n"):
                return True

    def close(self) -> None:
        self._sock.close()


class ProxyProcess:
    """One running ``pgwarden serve``; see the fixture API in the project brief."""

    host = "127.0.0.1"

    def __init__(
        self,
        pg: PgServer,
        workdir: Path,
        extra_args: Sequence[str] = (),
        policies: Iterable[str | os.PathLike[str]] = (),
        config_text: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.pg = pg
        self.workdir = workdir
        self.audit_dir = workdir / "audit"
        self.extra_args = tuple(str(a) for a in extra_args)
        self.policies = tuple(str(p) for p in policies)
        self.config_text = config_text
        self.env = dict(env or {})
        self.port = 0
        self.admin_port = 0
        self.stderr_path = workdir / "stderr.log"
        self.stdout_path = workdir / "stdout.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def argv(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--listen",
            f"{self.host}:{self.port}",
            "--upstream",
            f"{self.pg.host}:{self.pg.port}",
            "--audit-dir",
            str(self.audit_dir),
            "--admin-listen",
            f"{self.host}:{self.admin_port}",
        ]
        for policy in self.policies:
            args += ["--policy", policy]
        if self.config_text is not None:
            config = self.workdir / "pgwarden.yaml"
            config.write_text(self.config_text)
            args += ["--config", str(config)]
        return args + list(self.extra_args)  # last, so a test's flags win

    def _environ(self) -> dict[str, str]:
        # The developer's own PGWARDEN_* settings must not leak into a test's proxy.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGWARDEN_")}
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
        env.update(self.env)
        return env

    def start(self) -> ProxyProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, _START_ATTEMPTS + 1):
            self.port = pgrun.free_port(self.host)
            self.admin_port = pgrun.free_port(self.host)
            env = self._environ()
            # A test that reads the notifications itself keeps its socket; its start falls
            # back to probing the port.
            readiness = None if "NOTIFY_SOCKET" in self.env else _Readiness()
            if readiness is not None:
                env["NOTIFY_SOCKET"] = readiness.name
            with self.stderr_path.open("wb") as err, self.stdout_path.open("wb") as out:
                self._proc = subprocess.Popen(
                    self.argv(), cwd=self.workdir, env=env, stdout=out, stderr=err
                )
            try:
                self._wait_ready(readiness)
                return self
            except ProxyStartError:
                text = self.stderr_text()
                port_taken = "address already in use" in text.lower() or (
                    f"[Errno {errno.EADDRINUSE}]" in text
                )
                if not port_taken or attempt == _START_ATTEMPTS:
                    raise
            finally:
                if readiness is not None:
                    readiness.close()
        raise AssertionError("unreachable")

    def _wait_ready(self, readiness: _Readiness | None) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if readiness is not None and readiness.ready():
                return
            if proc.poll() is not None:
                raise ProxyStartError(
                    f"pgwarden serve exited with {proc.returncode} before listening:\n"
                    f"{self.stderr_text()}"
                )
            if readiness is None:
                try:
                    with socket.create_connection((self.host, self.port), timeout=1):
                        return
                except OSError:
                    pass
            time.sleep(0.02)  # polling interval, not synchronization
        self.kill()
        raise ProxyStartError(
            f"pgwarden serve did not listen on {self.host}:{self.port} within "
            f"{START_TIMEOUT:.0f}s:\n{self.stderr_text()}"
        )

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    def stop(self, timeout: float = 45.0) -> int:
        """SIGTERM, then wait; SIGKILL and fail if it does not exit within ``timeout``."""
        proc = self._proc
        if proc is None:
            raise AssertionError("the proxy was never started")
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(
                    f"pgwarden serve ignored SIGTERM for {timeout:.0f}s:\n{self.stderr_text()}"
                ) from None
        return proc.returncode

    def kill(self) -> int:
        proc = self._proc
        if proc is None:
            raise AssertionError("the proxy was never started")
        if proc.poll() is None:
            proc.kill()
        return proc.wait()

    def reload(self) -> None:
        self.signal(signal.SIGHUP)

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- clients -------------------------------------------------------------------------

    def dsn(
        self, user: str | None = None, database: str = "postgres", password: str | None = None
    ) -> str:
        user = user or self.pg.superuser
        if password is None and user == self.pg.superuser:
            password = self.pg.superuser_password
        return pgrun.libpq_url(self.host, self.port, user, database, password)

    def admin_url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.admin_port}{path}"

    def admin_headers(self) -> dict[str, str]:
        """The Authorization header for the token the proxy generated in its audit directory
        (a test that passes --admin-token-file uses its own)."""
        token = (self.audit_dir / "admin.token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    # --- audit ---------------------------------------------------------------------------

    def events(self, type: str | None = None) -> list[Event]:
        """All audit events so far (rotated files included), oldest first; ``type`` filters."""
        events = read_events(self.audit_dir)
        if type is not None:
            events = [e for e in events if e.get("type") == type]
        return events

    def wait_for(
        self, predicate: Callable[[Event], bool], timeout: float = 10.0, count: int = 1
    ) -> list[Event]:
        """Poll until at least ``count`` events satisfy ``predicate``; return those events.

        ``predicate`` gets one event at a time. Fails with the last events and the proxy's
        stderr after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            matching = [e for e in events if predicate(e)]
            if len(matching) >= count:
                return matching
            if time.monotonic() >= deadline:
                tail = "\n".join(json.dumps(e) for e in events[-10:])
                raise AssertionError(
                    f"waited {timeout}s for {count} matching audit events, found "
                    f"{len(matching)}; last events:\n{tail}\n--- stderr ---\n{self.stderr_text()}"
                )
            time.sleep(0.02)  # polling interval, not synchronization

    def __repr__(self) -> str:
        return f"<ProxyProcess {self.host}:{self.port} rc={self.returncode}>"


class ProxyFactory:
    """Starts proxies in numbered work directories and stops every one of them on close."""

    def __init__(self, pg: PgServer, base_dir: Path) -> None:
        self.pg = pg
        self.base_dir = base_dir
        self.started: list[ProxyProcess] = []

    def __call__(
        self,
        *extra_args: str,
        policies: Iterable[str | os.PathLike[str]] = (),
        config_text: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ProxyProcess:
        workdir = self.base_dir / f"proxy{len(self.started) + 1}"
        proc = ProxyProcess(self.pg, workdir, extra_args, policies, config_text, env)
        self.started.append(proc)
        return proc.start()

    def close(self) -> None:
        """Stop every proxy; SIGKILL the ones that will not stop, then report them."""
        stubborn: list[str] = []
        for proc in self.started:
            if proc.returncode is None and proc._proc is not None:
                try:
                    proc.stop()
                except AssertionError as exc:
                    stubborn.append(str(exc))
        if stubborn:
            raise AssertionError("\n\n".join(stubborn))
