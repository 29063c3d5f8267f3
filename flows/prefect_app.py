"""The ASGI app of this run's local Prefect API server: Prefect's own app, with SQLite conflicts retried in place.

Prefect's server answers 503 when SQLite reports SQLITE_BUSY. With its busy_timeout of 60 s, that is the WAL
snapshot conflict: a transaction read, another connection wrote, and the first one may no longer write. It
clears as soon as the transaction starts again. Prefect's client retries a 503 only after 2 s (then 4, 8, ...),
and on this embedded server the conflicts are frequent: the server's own services write the events of task
runs while the flow creates its next runs. Measured with `grasp bench dask`: the `train-sources` subflow's
creation got a 503 in 3 of 5 rounds and started its tasks 2 s late.

`RetryBusy` re-runs such a request inside the server after a few milliseconds, up to five times, before the
503 goes back to the client (whose own retries then apply as before). A failed request rolled its transaction
back, so running it again is what the client's retry would do, only sooner. Only a response that starts with
503 is retried; any other response streams through untouched, and websockets and lifespan pass by.

`RetryBusy` also warms the routes up. FastAPI builds a router's routes (dependencies, body models) the first
time a request is matched against it: ~0.7 s for Prefect's API, paid by the flow's first calls (its API
version check took 0.6-0.9 s) while the flow waits. As soon as the lifespan has started, one request to a
path that no route serves (`WARM_UP_PATH`, answered 404 to nobody) walks, and so builds, every router; the
server is usually idle then, waiting for the CLI to finish its own imports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

RETRY_DELAYS_S = (0.01, 0.02, 0.05, 0.1, 0.2)
UNAVAILABLE = 503
WARM_UP_PATH = "/api/_grasp_warm_up"  # no route: matching it walks every router of the API


class RetryBusy:
    """ASGI middleware: an HTTP request whose response starts with 503 runs again after each delay."""

    def __init__(self, app: App, delays: tuple[float, ...] = RETRY_DELAYS_S, warm_up: str | None = None) -> None:
        self.app, self.delays, self.warm_up_path = app, delays, warm_up
        self.retried = 0  # requests run again (all attempts), for tests and diagnostics
        self.warmed: asyncio.Task[int | None] | None = None  # the warm-up request; its result: the status

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.warm_up_path:
            await self.app(scope, receive, self._start_warm_up(scope, send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        for delay in (*self.delays, None):
            attempt = _Attempt(body, receive, send, last=delay is None)
            try:  # a copy: routing rewrites the scope it is given (Starlette's Mount sets its path keys)
                await self.app(dict(scope), attempt.receive, attempt.send)
            except Exception:
                if not attempt.swallowed:  # a 503 already answered is followed by the handler's re-raise
                    raise
            if not attempt.swallowed:
                return
            self.retried += 1
            await asyncio.sleep(delay or 0.0)

    def _start_warm_up(self, lifespan: MutableMapping[str, Any], send: Send) -> Send:
        """`send` for the lifespan: once the startup is complete, the warm-up request goes off in a task."""

        async def watched(message: Message) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete" and self.warmed is None:
                self.warmed = asyncio.get_running_loop().create_task(self._warm_up(lifespan))

        return watched

    async def _warm_up(self, lifespan: MutableMapping[str, Any]) -> int | None:
        """One GET of `warm_up_path` through the app; returns its status. Never raises: it only saves time."""
        assert self.warm_up_path is not None
        status: list[int] = []
        scope = {"type": "http", "asgi": lifespan.get("asgi", {"version": "3.0"}), "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": self.warm_up_path, "raw_path": self.warm_up_path.encode(),
                 "root_path": "", "query_string": b"", "headers": [(b"host", b"localhost")],
                 "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0), "state": dict(lifespan.get("state", {}))}

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        try:
            await self.app(scope, receive, send)
        except Exception:  # the routes are then built by the first real request, as without the warm-up
            return None
        return status[0] if status else None


class _Attempt:
    """One run of the app: replays the request body, and holds back a 503 response unless it is the last try."""

    def __init__(self, body: bytes, receive: Receive, send: Send, last: bool) -> None:
        self._body, self._receive, self._send, self._last = body, receive, send, last
        self._body_sent = False
        self.swallowed = False

    async def receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        return await self._receive()  # after the body: the client's disconnect, as the app would see it

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == UNAVAILABLE and not self._last:
            self.swallowed = True
        if not self.swallowed:
            await self._send(message)


async def _read_body(receive: Receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client went away before sending its body
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def create_app() -> App:
    """uvicorn's factory for the local server (flows/api_server.py): Prefect's app inside RetryBusy, which
    warms its routes up once started."""
    from prefect.server.api.server import create_app as prefect_app

    return RetryBusy(prefect_app(), warm_up=WARM_UP_PATH)
