"""A fake fal.ai queue server that follows fal-api.md's emulator checklist (§11): submit, status
(202/200, logs=0|1|true|false, trailing slash), status SSE stream, result (bare and /response),
cancel (§2.5), Key auth, HiDream input validation on the runner side, sync_mode data URIs and a
CDN-like image path, plus failure injection for tests (`/_fake/faults`, `/_fake/end-hung`, `/_fake/stats`).

Run as a process:  python -m tests.fakes.fal_server --port P --key K [--inference-s S] [--queue-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from tests.fakes.fal_schema import ENDPOINTS, detail
from tests.fakes.fal_state import NO_USER, FakeFal, QueuedRequest, Reply

BAD_KEY_FORMAT = {"detail": "Invalid Key Authorization header format. Expected '<key_id>:<key_secret>'."}
REQUEST = "/{owner}/{app_name}/requests/{request_id}"


def send(reply: Reply, request_id: str | None = None) -> Response:
    headers = dict(reply.headers)
    if request_id is not None:
        headers["x-fal-request-id"] = request_id
    if isinstance(reply.body, str):
        return HTMLResponse(reply.body, reply.status, headers)
    return JSONResponse(reply.body, reply.status, headers)


def create_app(state: FakeFal, *, key: str, keepalive_s: float = 15.0) -> FastAPI:
    app = FastAPI(title="fake fal", docs_url=None, redoc_url=None, openapi_url=None)

    def refused(request: Request) -> Response | None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme == "Key" and secrets.compare_digest(credentials.encode(), key.encode()):
            return None
        if scheme == "Key" and ":" not in credentials:
            return send(Reply(401, BAD_KEY_FORMAT))
        return send(Reply(401, NO_USER))

    def lookup(request: Request, owner: str, app_name: str, request_id: str) -> QueuedRequest | Response:
        denied = refused(request)
        if denied is not None:
            return denied
        queued = state.find(f"{owner}/{app_name}", request_id)
        if queued is None:
            return send(Reply(404, {"detail": f"Request {request_id} not found"}))
        return queued

    def origin(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def wants_logs(request: Request) -> bool | Response:
        value = request.query_params.get("logs", "0").lower()
        if value in ("1", "true"):
            return True
        if value in ("0", "false"):
            return False
        item = {**detail("logs", "Input should be a valid boolean", "bool_parsing"), "loc": ["query", "logs"]}
        return send(Reply(422, {"detail": [item]}))

    # --- test controls (registered first: the submit route below matches any POST path) --------

    @app.post("/_fake/faults")
    async def arm(request: Request) -> Response:
        body = await request.json()
        try:
            state.fail_next(str(body["fault"]), int(body.get("count", 1)))
        except (KeyError, TypeError, ValueError) as exc:
            return JSONResponse({"detail": str(exc)}, 400)
        return JSONResponse({"armed": body["fault"], "count": int(body.get("count", 1))})

    @app.post("/_fake/end-hung")
    async def end_hung(request: Request) -> Response:
        body = await request.json()
        try:
            ended = state.end_hung(str(body["end"]))
        except (KeyError, TypeError, ValueError) as exc:
            return JSONResponse({"detail": str(exc)}, 400)
        return JSONResponse({"ended": ended})

    @app.delete("/_fake/faults")
    async def disarm() -> Response:
        return JSONResponse({"disarmed": state.disarm()})

    @app.get("/_fake/stats")
    async def stats() -> Response:
        return JSONResponse(state.stats())

    @app.get("/_fake/last-submit")
    async def last_submit() -> Response:
        """The body of the latest submit, as fal's runner received it (what a test passed through)."""
        submitted = state.requests()
        return JSONResponse(submitted[-1].payload if submitted else None)

    @app.get("/cdn/files/{name}")
    async def cdn(name: str) -> Response:
        found = state.cdn(name)
        if found is None:
            return JSONResponse({"detail": "Not Found"}, 404)
        return Response(found[0], media_type=found[1])

    def dripped(reply: Reply, request_id: str) -> Response:
        """What a slow upstream looks like at the HTTP level: the status line and headers (with the
        body's whole Content-Length) at once, then the body a byte at a time, until it is all sent
        or the client hangs up."""
        raw = json.dumps(reply.body).encode()
        pace = reply.drip_s or 0.0

        async def trickle() -> AsyncIterator[bytes]:
            state.count_drip(+1)
            try:
                for i in range(len(raw)):
                    yield raw[i : i + 1]
                    await asyncio.sleep(pace)
            finally:
                state.count_drip(-1)

        headers = {**reply.headers, "x-fal-request-id": request_id, "content-length": str(len(raw))}
        return StreamingResponse(trickle(), reply.status, headers, media_type="application/json")

    # --- the queue API ----------------------------------------------------------------------------

    @app.get(REQUEST + "/status/stream")
    async def status_stream(request: Request, owner: str, app_name: str, request_id: str) -> Response:
        queued = lookup(request, owner, app_name, request_id)
        logs = wants_logs(request)
        if isinstance(queued, Response) or isinstance(logs, Response):
            return queued if isinstance(queued, Response) else logs  # type: ignore[return-value]
        state.count_stream()
        base = origin(request)

        async def events() -> AsyncIterator[str]:
            last: object = None
            quiet = 0.0
            while True:
                body = state.status(queued, base, logs=logs, poll=False).body
                assert isinstance(body, dict)
                now = (body["status"], body.get("queue_position"))
                if now != last:
                    last, quiet = now, 0.0
                    yield f"data: {json.dumps(body)}\n\n"
                if body["status"] == "COMPLETED":
                    return
                await asyncio.sleep(0.02)
                quiet += 0.02
                if quiet >= keepalive_s:
                    quiet = 0.0
                    yield ": keep-alive\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"x-fal-request-id": queued.id})

    @app.get(REQUEST + "/status")
    @app.get(REQUEST + "/status/")
    async def status(request: Request, owner: str, app_name: str, request_id: str) -> Response:
        queued = lookup(request, owner, app_name, request_id)
        logs = wants_logs(request)
        if isinstance(queued, Response) or isinstance(logs, Response):
            return queued if isinstance(queued, Response) else logs  # type: ignore[return-value]
        reply = state.status(queued, origin(request), logs=logs)
        return send(reply, None if isinstance(reply.body, str) else queued.id)

    @app.get(REQUEST)
    @app.get(REQUEST + "/response")
    async def result(request: Request, owner: str, app_name: str, request_id: str) -> Response:
        queued = lookup(request, owner, app_name, request_id)
        if isinstance(queued, Response):
            return queued
        reply = state.result(queued, origin(request))
        if reply.drip_s is not None:
            return dripped(reply, queued.id)
        return send(reply, queued.id)

    @app.put(REQUEST + "/cancel")
    async def cancel(request: Request, owner: str, app_name: str, request_id: str) -> Response:
        denied = refused(request)
        if denied is not None:
            return denied
        queued = state.find(f"{owner}/{app_name}", request_id)
        if queued is None:
            return send(Reply(404, {"status": "NOT_FOUND"}))
        return send(state.cancel(queued), queued.id)

    @app.post("/{endpoint:path}")
    async def submit(request: Request, endpoint: str) -> Response:
        denied = refused(request)
        if denied is not None:
            return denied
        if endpoint not in ENDPOINTS:
            return send(Reply(404, {"detail": f"Application '{endpoint}' not found"}))
        max_queue = request.query_params.get("fal_max_queue_length")
        refusal = state.refuse_submit(ENDPOINTS[endpoint][0], int(max_queue) if max_queue else None)
        if refusal is not None:
            return send(refusal)
        try:
            payload = json.loads(await request.body())
        except ValueError:
            item = {**detail("body", "Invalid JSON", "json_invalid"), "loc": ["body"]}
            return send(Reply(422, {"detail": [item]}))
        queued = state.submit(endpoint, payload, {k.lower(): v for k, v in request.headers.items()})
        body = {
            "status": "IN_QUEUE",
            "request_id": queued.id,
            **state.urls(queued, origin(request)),
            "logs": None,
            "queue_position": state.queue_position(queued),
        }
        return send(Reply(200, body), queued.id)

    @app.api_route("/{path:path}", methods=["GET", "PUT", "DELETE", "PATCH"])
    async def not_found(path: str) -> Response:
        return send(Reply(404, {"detail": "Not Found"}))

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake fal.ai queue server for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True, help="the only key accepted (Authorization: Key <key>)")
    parser.add_argument("--inference-s", type=float, default=0.2, help="time a request runs")
    parser.add_argument("--queue-s", type=float, default=0.0, help="time a request waits in the queue")
    args = parser.parse_args(argv)
    state = FakeFal(inference_s=args.inference_s, queue_s=args.queue_s)
    app = create_app(state, key=args.key)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
