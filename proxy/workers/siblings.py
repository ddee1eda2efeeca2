"""The channel between sibling workers: one JSON request and one JSON answer per connection,
over Unix sockets in the supervisor's run directory.

The run directory is created by the supervisor with mode 0700 and each socket is 0600, so
only the proxy's own user can reach a worker this way (the channel can cancel and terminate
sessions and reload policies: it carries the authority of the admin API, which checked the
caller before asking). Every request is bounded in size and time; a sibling that does not
answer (restarting, stuck) counts as one that knows nothing, and the caller says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.workers.role import WorkerRole

log = logging.getLogger("pgwarden.workers")

MAX_MESSAGE = 16 * 1024 * 1024  # a /metrics page or a long /sessions list fits
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class SiblingServer:
    """This worker's end: answers its siblings' requests with ``handlers[op](request)``."""

    def __init__(self, role: WorkerRole, handlers: dict[str, Handler]) -> None:
        self.role = role
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None
        self._answering: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        path = self.role.socket_path(self.role.index)
        path.unlink(missing_ok=True)  # a predecessor that died left it behind
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        # Bound under a temporary name and renamed once it is 0600 and listening, so a
        # sibling (and the supervisor's readiness wait) never finds a socket that refuses.
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(tmp), limit=MAX_MESSAGE
        )
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Requests still being answered (a cancel being forwarded) end with the worker.
        for task in list(self._answering):
            task.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self.role.socket_path(self.role.index).unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._answering.add(task)
        try:
            answer = await self._answer(reader)
            writer.write(orjson.dumps(answer) + b"\n")
            await writer.drain()
        except OSError:
            pass  # the asking sibling went away (it had its answer elsewhere, or gave up)
        finally:
            writer.close()
            if task is not None:
                self._answering.discard(task)

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            request = orjson.loads(await reader.readline())
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            handler = self.handlers.get(str(request.get("op")))
            if handler is None:
                raise ValueError(f"unknown op {request.get('op')!r}")
            return {"ok": True, "result": await handler(request)}
        except Exception as exc:  # a bad request gets an answer, never a dead worker
            log.warning("sibling request failed: %s", exc)
            return {"ok": False, "error": str(exc)}


class Siblings:
    """This worker's way to its siblings."""

    def __init__(self, role: WorkerRole) -> None:
        self.role = role

    async def call(self, index: int, op: str, wait: float = 5.0, **args: Any) -> Any:
        """The answer of sibling ``index`` to ``op``; raises OSError/TimeoutError when it cannot
        be asked and RuntimeError when it failed to answer."""
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_unix_connection(
                str(self.role.socket_path(index)), limit=MAX_MESSAGE
            )
            try:
                writer.write(orjson.dumps({"op": op, **args}) + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
        if not line:
            raise ConnectionError(f"worker {index} closed without answering {op}")
        answer = orjson.loads(line)
        if not isinstance(answer, dict) or not answer.get("ok"):
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise RuntimeError(f"worker {index} could not answer {op}: {error}")
        return answer.get("result")

    async def ask_all(
        self, op: str, wait: float = 5.0, **args: Any
    ) -> list[tuple[int, Any | BaseException]]:
        """Every sibling's answer (or the exception that stood in for it), by index."""
        indices = self.role.siblings
        answers = await asyncio.gather(
            *(self.call(i, op, wait, **args) for i in indices), return_exceptions=True
        )
        out: list[tuple[int, Any | BaseException]] = []
        for index, answer in zip(indices, answers, strict=True):
            if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                raise answer
            if isinstance(answer, Exception):
                log.warning("worker %d did not answer %s: %s", index, op, answer)
            out.append((index, answer))
        return out

    async def first(
        self, op: str, wanted: Callable[[Any], bool], wait: float = 5.0, **args: Any
    ) -> Any | None:
        """The first sibling answer that is ``wanted`` (the others are not waited for), or
        None when no sibling gives one."""
        calls = [asyncio.ensure_future(self.call(i, op, wait, **args)) for i in self.role.siblings]
        try:
            for done in asyncio.as_completed(calls):
                try:
                    answer = await done
                except Exception as exc:
                    log.warning("a worker did not answer %s: %s", op, exc)
                    continue
                if wanted(answer):
                    return answer
            return None
        finally:
            for call in calls:
                call.cancel()
