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


class RetryBusy:
    """ASGI middleware: an HTTP request whose response starts with 503 runs again after each delay."""

    def __init__(self, app: App, delays: tuple[float, ...] = RETRY_DELAYS_S) -> None:
        self.app, self.delays = app, delays
        self.retried = 0  # requests run again (all attempts), for tests and diagnostics

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
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
    """uvicorn's factory for the local server (flows/api_server.py): Prefect's app inside RetryBusy."""
    from prefect.server.api.server import create_app as prefect_app

    return RetryBusy(prefect_app())
