"""RetryBusy, the middleware around the local Prefect API server's app: a response that starts with 503 (a
SQLite write conflict) runs the request again in the server; anything else passes through as it is."""

from __future__ import annotations

import asyncio

import pytest

from flows.prefect_app import RetryBusy

FAST = (0.0, 0.0, 0.0)  # three retries, no waiting


def _app(statuses, calls, raise_after_503=False, chunks=(b"ok",)):
    """A fake ASGI app answering `statuses` in turn; records (path, body) of every call."""

    async def app(scope, receive, send):
        message = await receive()
        calls.append((scope["path"], message["body"]))
        scope["path"] = "/rewritten"  # as Starlette's Mount does to the scope it is given
        status = statuses[min(len(calls) - 1, len(statuses) - 1)]
        await send({"type": "http.response.start", "status": status, "headers": []})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})
        if status == 503 and raise_after_503:
            raise RuntimeError("database is locked")  # ServerErrorMiddleware re-raises after answering

    return app


def _call(app, body=b'{"name": "x"}', scope_type="http"):
    """Run one request through `app`; returns the messages the client got."""
    got, pending = [], [{"type": "http.request", "body": body[:5], "more_body": True},
                        {"type": "http.request", "body": body[5:], "more_body": False}]

    async def receive():
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)  # the client stays connected

    async def send(message):
        got.append(message)

    asyncio.run(app({"type": scope_type, "path": "/api/flow_runs/", "method": "POST"}, receive, send))
    return got


def _status(got):
    return next(m["status"] for m in got if m["type"] == "http.response.start")


def test_a_conflict_is_retried_in_the_server_with_the_same_request():
    calls = []
    app = RetryBusy(_app([503, 503, 201], calls), FAST)
    got = _call(app)
    assert _status(got) == 201 and [m["status"] for m in got if "status" in m] == [201]  # no 503 reached the client
    assert calls == [("/api/flow_runs/", b'{"name": "x"}')] * 3  # same path (scope copied), same whole body
    assert app.retried == 2


def test_a_lasting_conflict_still_answers_503_after_the_last_try():
    calls = []
    got = _call(RetryBusy(_app([503], calls), FAST))
    assert _status(got) == 503 and len(calls) == len(FAST) + 1


def test_the_handlers_re_raise_after_a_503_is_retried_then_propagates_on_the_last_try():
    calls = []
    got = _call(RetryBusy(_app([503, 201], calls, raise_after_503=True), FAST))
    assert _status(got) == 201 and len(calls) == 2
    calls.clear()
    with pytest.raises(RuntimeError, match="locked"):
        _call(RetryBusy(_app([503], calls, raise_after_503=True), FAST))
    assert len(calls) == len(FAST) + 1


def test_other_responses_stream_through_once():
    calls = []
    got = _call(RetryBusy(_app([500], calls, chunks=(b"a", b"b", b"c")), FAST))
    assert _status(got) == 500 and len(calls) == 1
    assert [m["body"] for m in got if m["type"] == "http.response.body"] == [b"a", b"b", b"c"]


def test_non_http_scopes_pass_by():
    seen = []

    async def lifespan_app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(RetryBusy(lifespan_app, FAST)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


def _lifespan(app):
    """Run a lifespan startup through `app`; returns what the server got and the wrapper's warm-up status."""
    got = []

    async def receive():
        return {"type": "lifespan.startup"}

    async def send(message):
        got.append(message["type"])

    async def run():
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        return await app.warmed if app.warmed is not None else None

    return got, asyncio.run(run())


def _server_app(calls):
    """A fake app: answers the lifespan startup, and 404 to any request (as for a path no route serves)."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            return
        calls.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found"})

    return app


def test_once_started_the_server_sends_itself_one_request_to_build_its_routes():
    calls = []
    got, status = _lifespan(RetryBusy(_server_app(calls), FAST, warm_up="/api/_warm"))
    assert got == ["lifespan.startup.complete"]  # the warm-up's response reached nobody
    assert calls == [("GET", "/api/_warm")] and status == 404


def test_no_warm_up_unless_asked_and_a_failing_one_is_harmless():
    calls = []
    got, status = _lifespan(RetryBusy(_server_app(calls), FAST))
    assert got == ["lifespan.startup.complete"] and calls == [] and status is None

    async def broken(scope, receive, send):
        if scope["type"] == "lifespan":
            await send({"type": "lifespan.startup.complete"})
            return
        raise RuntimeError("route build failed")

    got, status = _lifespan(RetryBusy(broken, FAST, warm_up="/api/_warm"))
    assert got == ["lifespan.startup.complete"] and status is None  # swallowed: the real requests build the routes
