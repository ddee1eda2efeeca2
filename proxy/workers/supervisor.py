"""``pgwarden serve --workers N``: N proxy processes on one address, watched by this one.

The supervisor reserves the listen address (a bound socket in the SO_REUSEPORT group that
never listens, so a port 0 is chosen once and a worker restarting finds it free), creates a
private run directory (mode 0700) for the workers' sibling sockets, and starts each worker
as ``python -m proxy serve ... --worker-index k``: the same flags, environment and config
file as its own, so every worker runs the configuration the supervisor checked.

* A worker that exits while the proxy serves is logged and started again (after 1 s,
  doubling up to 30 s while it keeps dying within a minute). One that exits before the set
  was ever ready is a start failure: the others are stopped and serve exits 2.
* SIGHUP is forwarded to every worker (each reloads itself; ``POST /reload`` on the admin
  listener reaches them through worker 0). SIGTERM/SIGINT are forwarded to every worker,
  which drains and writes its trail as a single process does; a second one is forwarded too
  (stop now). Workers run in their own process group, so a terminal's Ctrl-C reaches them
  once, through here, and each asks the kernel for SIGTERM should the supervisor die.
* Exit status: 0 when every worker stopped cleanly, 1 when one did not (each is logged), 2
  when the workers could not be started.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy import diagnostics, sdnotify
from proxy.config import Config, Endpoint

log = logging.getLogger("pgwarden.workers")

RESTART_FIRST = 1.0
RESTART_MAX = 30.0
STABLE_AFTER = 60.0  # a worker up this long restarts after RESTART_FIRST again
READY_TIMEOUT = 120.0


class StartFailure(Exception):
    pass


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    delay: float = RESTART_FIRST
    last_rc: int | None = None
    history: list[int] = field(default_factory=list)


def reserve(listen: Endpoint) -> tuple[list[socket.socket], int]:
    """Bound, non-listening SO_REUSEPORT sockets on every address ``listen`` resolves to,
    and the port (chosen here when ``listen.port`` is 0)."""
    infos = socket.getaddrinfo(
        listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    port = listen.port
    held: list[socket.socket] = []
    try:
        for family, kind, proto, _name, sockaddr in infos:
            if port:
                _probe(family, kind, proto, (sockaddr[0], port, *sockaddr[2:]))
            sock = socket.socket(family, kind, proto)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((sockaddr[0], port, *sockaddr[2:]))
            port = int(sock.getsockname()[1])
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held, port


def _probe(family: int, kind: int, proto: int, address: tuple[Any, ...]) -> None:
    """Fail when something listens on ``address`` already. A socket in an SO_REUSEPORT group
    would join whatever is there, another pgwarden's workers included (two writers of one
    audit trail), so first one without SO_REUSEPORT must be able to bind."""
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(address)


def listen_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Supervisor:
    def __init__(self, cfg: Config, argv: list[str]) -> None:
        self.cfg = cfg
        self.argv = argv
        self.count = int(cfg["workers"])
        self.workers = [_Worker(i) for i in range(self.count)]
        self.stopping = False
        self.ready = False
        self.run_dir = Path()
        self.port = 0
        self._changed = asyncio.Event()

    def command(self, index: int) -> list[str]:
        listen = listen_text(self.cfg.listen.host, self.port)
        return [
            sys.executable, "-m", "proxy", *self.argv,
            "--listen", listen, "--worker-index", str(index), "--run-dir", str(self.run_dir),
        ]  # fmt: skip

    async def run(self) -> int:
        try:
            held, self.port = reserve(self.cfg.listen)
        except OSError as exc:
            log.error("cannot start: cannot listen on %s: %s", self.cfg.listen,
                      exc.strerror or exc)  # fmt: skip
            return 2
        self.run_dir = Path(tempfile.mkdtemp(prefix="pgwarden-"))  # mode 0700
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            return await self._serve()
        finally:
            for sock in held:
                sock.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)

    async def _serve(self) -> int:
        log.info("starting %d workers on %s", self.count,
                 listen_text(self.cfg.listen.host, self.port))  # fmt: skip
        watchers = [asyncio.create_task(self._watch(w)) for w in self.workers]
        try:
            await self._wait_ready()
        except StartFailure as exc:
            log.error("cannot start: %s", exc)
            self._stop(signal.SIGTERM)
            await asyncio.gather(*watchers, return_exceptions=True)
            return 2
        if not self.stopping:
            self.ready = True
            log.info("all %d workers ready on %s (pids %s)", self.count,
                     listen_text(self.cfg.listen.host, self.port),
                     ", ".join(str(w.proc.pid) for w in self.workers if w.proc))  # fmt: skip
            sdnotify.notify("READY=1", f"STATUS=serving with {self.count} workers")
        await asyncio.gather(*watchers)
        failed = [w for w in self.workers if w.last_rc != 0]
        for worker in failed:
            log.error("worker %d stopped with %s", worker.index, _status(worker.last_rc))
        log.info("pgwarden stopped (%d workers)", self.count)
        return 1 if failed else 0

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.stopping or all(self._socket(w.index).exists() for w in self.workers):
                return  # (a signal while starting: the workers are told to stop at once)
            dead = [w for w in self.workers if w.last_rc is not None and w.restarts == 0]
            if dead:
                worker = dead[0]
                raise StartFailure(
                    f"worker {worker.index} exited with {_status(worker.last_rc)} before "
                    "it was ready (its log lines above say why)"
                )
            if time.monotonic() > deadline:
                raise StartFailure(f"the workers were not ready within {READY_TIMEOUT:.0f}s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.05)

    def _socket(self, index: int) -> Path:
        return self.run_dir / f"worker-{index}.sock"

    async def _watch(self, worker: _Worker) -> None:
        env = worker_environment()
        while True:
            worker.started = time.monotonic()
            worker.proc = await asyncio.create_subprocess_exec(
                *self.command(worker.index), env=env, start_new_session=True
            )
            if self.stopping:  # a signal came while it was being started
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGTERM)
            rc = await worker.proc.wait()
            worker.last_rc = rc
            worker.history.append(rc)
            self._changed.set()
            if self.stopping:
                return
            if not self.ready:
                return  # a start failure: _wait_ready reports it
            uptime = time.monotonic() - worker.started
            if uptime >= STABLE_AFTER:
                worker.delay = RESTART_FIRST
            log.error("worker %d (pid %d) exited with %s after %.0fs; starting it again in "
                      "%.0fs", worker.index, worker.proc.pid, _status(rc), uptime,
                      worker.delay)  # fmt: skip
            self._socket(worker.index).unlink(missing_ok=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped(), worker.delay)
            if self.stopping:
                return
            worker.delay = min(worker.delay * 2, RESTART_MAX)
            worker.restarts += 1

    async def _stopped(self) -> None:
        while not self.stopping:
            self._changed.clear()
            await self._changed.wait()

    def _stop(self, sig: signal.Signals) -> None:
        if not self.stopping:
            log.info("%s: stopping %d workers (each drains its sessions and writes its "
                     "trail)", sig.name, self.count)  # fmt: skip
            sdnotify.notify("STOPPING=1", "STATUS=shutting down")
        else:
            log.warning("%s again: the workers stop now", sig.name)
        self.stopping = True
        self._changed.set()
        self._forward(sig)

    def _reload(self) -> None:
        # Each worker reloads itself and logs the outcome; the service manager only needs
        # the RELOADING=1 / READY=1 pair a single process sends around its reload.
        sdnotify.reloading()
        log.info("SIGHUP: reloading %d workers", self.count)
        self._forward(signal.SIGHUP)
        sdnotify.notify("READY=1", f"STATUS=serving with {self.count} workers")

    def _forward(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            proc = worker.proc
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)


def worker_environment() -> dict[str, str]:
    """The supervisor's environment, minus systemd's notify socket (readiness is the
    supervisor's to report), with this very ``proxy`` package first on the path so every
    worker runs the code the supervisor runs, whatever its working directory."""
    import proxy

    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    root = str(Path(proxy.__file__).resolve().parent.parent)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    return env


def _status(rc: int | None) -> str:
    if rc is None:
        return "no status"
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"status {rc}"


def supervise(cfg: Config, argv: list[str]) -> int:
    """Blocking entry point of ``pgwarden serve`` with ``workers`` > 1."""
    diagnostics.configure(cfg["log_format"], cfg["log_level"])
    for warning in cfg.warnings:
        log.warning("%s", warning)
    return asyncio.run(Supervisor(cfg, argv).run())


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the supervisor goes away (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_PDEATHSIG) failed: %s", errno.errorcode.get(ctypes.get_errno()))
    except (OSError, AttributeError):
        pass
