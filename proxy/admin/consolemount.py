"""The web console on the admin listener, built at its first request.

A proxy whose console nobody opens never imports Jinja2, the report builder or the trail
reader (about 2 MB of a fresh process, docs/benchmarks.md). Every console URL is registered at
start from :data:`proxy.console.routes.ROUTES`, so each answers exactly as if the console had
been built then; the first request pays the imports once, on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.console.routes import ROUTES, Route, register

if TYPE_CHECKING:
    from aiohttp import web

    from proxy.console.app import Console
    from proxy.console.routes import Handler
    from proxy.state import RemoteApprovals


class ConsoleMount:
    def __init__(self, build: Callable[[], Console]) -> None:
        self._build = build
        self._console: Console | None = None
        self._handlers: dict[Route, Handler] = {}
        self._remote: RemoteApprovals | None = None

    @property
    def remote(self) -> RemoteApprovals | None:
        """With workers: the requests the other workers hold (set by proxy.workers)."""
        return self._remote

    @remote.setter
    def remote(self, link: RemoteApprovals | None) -> None:
        self._remote = link
        if self._console is not None:
            self._console.remote = link

    @property
    def console(self) -> Console:
        if self._console is None:
            console = self._build()
            console.remote = self._remote
            self._handlers = {route: console.handler(route) for route in ROUTES}
            self._console = console
        return self._console

    @property
    def built(self) -> bool:
        return self._console is not None

    def add_routes(self, app: web.Application) -> None:
        for route in ROUTES:
            register(app, route, self._answer(route))

    def _answer(self, route: Route) -> Handler:
        async def answer(request: web.Request) -> web.StreamResponse:
            self.console  # noqa: B018 - built at the first request
            return await self._handlers[route](request)

        return answer
