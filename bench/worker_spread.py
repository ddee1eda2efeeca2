"""How connections spread over worker processes (counts, not timings).

    python bench/worker_spread.py accept [--workers 2] [--connections 100] [--rounds 5]
    python bench/worker_spread.py pgwarden [--workers 2] [--connections 100] [--rounds 3]

``accept`` compares the two ways N processes can accept on one address, with asyncio loops
like pgwarden's: ``reuseport`` (each process binds its own SO_REUSEPORT socket; the kernel
hashes each connection to one) and ``shared`` (one listening socket inherited over fork;
whichever process calls accept first wins), each with all workers idle and with worker 0
busy (its loop blocked 20 ms out of every 25, as a worker busy with other sessions is).
``pgwarden`` starts a throwaway PostgreSQL and ``pgwarden serve --workers N``, opens
long-lived connections and counts each worker's sessions in ``/sessions``.

The counts do not depend on the machine being quiet, so this may run anywhere; it measures
no speed. See docs/operations.md, "Workers".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from multiprocessing.connection import Connection
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path[:0] = [str(REPO_ROOT)]


def _child(
    mode: str, listener: socket.socket | None, port: int, busy: bool, pipe: Connection
) -> None:
    async def main() -> None:
        accepted: list[asyncio.StreamWriter] = []

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)

        if mode == "shared":
            assert listener is not None
            server = await asyncio.start_server(on_connect, sock=listener)
        else:
            server = await asyncio.start_server(on_connect, "127.0.0.1", port, reuse_port=True)
        pipe.send("ready")
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.add_reader(pipe.fileno(), lambda: done.done() or done.set_result(None))
        while not done.done():
            if busy:
                until = time.perf_counter() + 0.020
                while time.perf_counter() < until:
                    pass
            await asyncio.sleep(0.005)
        pipe.recv()
        pipe.send(len(accepted))
        server.close()

    asyncio.run(main())


def accept_round(mode: str, workers: int, connections: int, busy: bool) -> list[int]:
    ctx = multiprocessing.get_context("fork")
    listener: socket.socket | None = None
    if mode == "shared":
        listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        port = listener.getsockname()[1]
    else:
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))  # reserves the port; never listens (as the supervisor)
        port = holder.getsockname()[1]
    pipes, procs = [], []
    for index in range(workers):
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(
            target=_child, args=(mode, listener, port, busy and index == 0, theirs), daemon=True
        )
        proc.start()
        pipes.append(mine)
        procs.append(proc)
    for pipe in pipes:
        assert pipe.recv() == "ready"
    clients = []
    for _ in range(connections):
        clients.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.002)  # connections arrive over time, as applications start
    time.sleep(0.5)  # every worker accepted what its queue holds
    for pipe in pipes:
        pipe.send("count")
    counts = [int(pipe.recv()) for pipe in pipes]
    for client in clients:
        client.close()
    for proc in procs:
        proc.join(5)
    if listener is not None:
        listener.close()
    if mode != "shared":
        holder.close()
    return counts


def run_accept(args: argparse.Namespace) -> dict[str, list[list[int]]]:
    out: dict[str, list[list[int]]] = {}
    for mode in ("reuseport", "shared"):
        for busy in (False, True):
            label = f"{mode}, {'worker 0 busy' if busy else 'all idle'}"
            rounds = [
                accept_round(mode, args.workers, args.connections, busy) for _ in range(args.rounds)
            ]
            out[label] = rounds
            print(f"{label:<28} " + "  ".join("/".join(map(str, r)) for r in rounds))
    return out


def run_pgwarden(args: argparse.Namespace) -> dict[str, list[list[int]]]:
    import psycopg

    from proxy import pgrun

    cluster = pgrun.LocalCluster(binaries=pgrun.find_binaries())
    cluster.start()
    rounds: list[list[int]] = []
    try:
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                port, admin = pgrun.free_port("127.0.0.1"), pgrun.free_port("127.0.0.1")
                env = {k: v for k, v in os.environ.items() if not k.startswith("PGWARDEN_")}
                env["PYTHONPATH"] = str(REPO_ROOT)
                log = Path(tmp) / "pgwarden.log"
                with log.open("wb") as out:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "proxy", "serve", "--workers", str(args.workers),
                         "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
                         "--upstream", f"{cluster.host}:{cluster.port}",
                         "--audit-dir", str(Path(tmp) / "audit")],
                        stdout=out, stderr=subprocess.STDOUT, env=env,
                    )  # fmt: skip
                try:
                    deadline = time.monotonic() + 60
                    while f"all {args.workers} workers ready" not in log.read_text():
                        if proc.poll() is not None or time.monotonic() > deadline:
                            raise SystemExit(f"pgwarden did not start:\n{log.read_text()}")
                        time.sleep(0.05)
                    dsn = pgrun.libpq_url("127.0.0.1", port, cluster.superuser, "postgres")
                    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(args.connections)]
                    token = (Path(tmp) / "audit" / "admin.token").read_text().strip()
                    request = urllib.request.Request(
                        f"http://127.0.0.1:{admin}/sessions",
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    with urllib.request.urlopen(request, timeout=30) as response:
                        sessions = json.loads(response.read())
                    counts = [0] * args.workers
                    for item in sessions:
                        counts[int(item["worker"])] += 1
                    rounds.append(counts)
                    print("pgwarden sessions per worker: " + "/".join(map(str, counts)))
                    for conn in conns:
                        conn.close()
                finally:
                    proc.send_signal(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(30)
    finally:
        cluster.stop()
    return {"pgwarden": rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("accept", "pgwarden"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the counts here")
    args = parser.parse_args(argv)
    result = run_accept(args) if args.what == "accept" else run_pgwarden(args)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
