"""The console's URLs, apart from the console itself: the admin listener registers them at
start and builds the console (Jinja2, the report builder, the trail reader) only when one of
them is first asked for (:mod:`proxy.admin.consolemount`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PREFIX = "/console"


@dataclass(frozen=True, slots=True)
class Route:
    method: str  # "GET" (which answers HEAD too) or "POST"
    path: str  # under PREFIX
    handler: str  # the name of the Console method that answers
    page: bool = True  # behind the console's login (and, for a POST, its CSRF check)


ROUTES = (
    Route("GET", "", "_to_root", page=False),
    Route("GET", "/", "overview"),
    Route("GET", "/login", "login_page", page=False),
    Route("POST", "/login", "login_post", page=False),
    Route("POST", "/logout", "logout"),
    Route("GET", "/static/console.css", "stylesheet", page=False),
    Route("GET", "/statements", "statements"),
    Route("GET", "/events/{seq:[0-9]+}", "event"),
    Route("GET", "/sessions/{id}", "session"),
    Route("GET", "/reviews", "reviews"),
    Route("GET", "/reviews/{id}", "review"),
    Route("POST", "/reviews/{id}/decide", "decide"),
    Route("POST", "/reviews/{id}/explain", "explain"),
)


def register(app: web.Application, route: Route, handler: Handler) -> None:
    add = app.router.add_get if route.method == "GET" else app.router.add_post
    add(PREFIX + route.path, handler)
