"""The real worker app (worker.app.create_app) with a stand-in pipeline, served on a loopback port.

Faults come from the worker's real behaviour where it has one on cue: a real full queue (a held
job plus real waiting requests) gives the 429, a real pipeline exception the 500, a job that never
ends the hang, a draining worker the 503. A thin ASGI layer in front does the rest: it rewrites
one request body to an invalid value (the worker's own validator then answers 400) and returns a
garbage 200 body (which no healthy worker sends; it stands for a broken proxy or version skew).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Literal

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.fakes.server import free_port, serve_in_thread
from tests.fakes.stand_in_pipeline import StandInPipeline
from worker.app import create_app, worker_state
from worker.inference import Pipeline
from worker.settings import WorkerSettings
from worker.state import WorkerState

InjectedFault = Literal["garbage", "rejected_input", "not_ready", "rate_limited"]
GENERATIONS = "/v1/images/generations"


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class FaultInjector:
    """ASGI middleware: passes everything through except generation requests it was armed for."""

    def __init__(self, app: ASGIApp, worker: RunningWorker) -> None:
        self.app = app
        self.worker = worker
        self.armed: deque[InjectedFault] = deque()
        # A worker from before raw images (worker/schemas.py RawImages): it never sees the Accept
        # header that asks for them, and answers JSON. Each generation's Accept is kept here.
        self.before_raw_images = False
        self.accepts: list[str | None] = []
        # Set to an unset Event: each /ready answer is made as usual, then held back until it is
        # set (a report on the wire while jobs are sent); `ready_held` says one is being held.
        self.ready_gate: threading.Event | None = None
        self.ready_held = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/ready" and self.ready_gate is not None:
            await self.app(scope, receive, self._held_back(send, self.ready_gate))
            return
        if scope["type"] == "http" and scope["path"] == GENERATIONS:
            accept = [v.decode("latin-1") for k, v in scope["headers"] if k == b"accept"]
            self.accepts.append(accept[0] if accept else None)
            if self.before_raw_images:
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"accept"]}
        if scope["type"] != "http" or scope["path"] != GENERATIONS or not self.armed:
            await self.app(scope, receive, send)
            return
        fault = self.armed.popleft()
        if fault == "garbage":
            await _send_json(send, 200, {"created": 1, "data": "not a list of images"})
        elif fault == "rejected_input":
            await self.app(scope, await _replace_body(receive, {"num_inference_steps": 0}), send)
        elif fault == "not_ready":
            state = self.worker.state
            state.draining = True
            try:
                await self.app(scope, receive, send)
            finally:
                state.draining = False
        else:
            await self.app(scope, receive, self._release_queue_after_429(send))

    def _held_back(self, send: Send, gate: threading.Event) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.ready_held.set()
                while not gate.is_set():  # polled: the worker's loop keeps taking jobs meanwhile
                    await asyncio.sleep(0.002)
            await send(message)

        return wrapped

    def _release_queue_after_429(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            last = "rate_limited" not in self.armed
            if message["type"] == "http.response.start" and message["status"] == 429 and last:
                # Let the held job and the queued fillers finish before the 429 reaches the
                # client, so the client's next call finds a free queue.
                self.worker.pipeline.release.set()
                queue = self.worker.state.queue
                while queue.in_flight or queue.waiting:
                    await asyncio.sleep(0.002)
            await send(message)

        return wrapped


async def _send_json(send: Send, status: int, payload: object) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _replace_body(receive: Receive, changes: dict[str, object]) -> Receive:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    payload = json.loads(b"".join(chunks))
    payload.update(changes)
    body = json.dumps(payload).encode()
    delivered = False

    async def patched() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then http.disconnect, as from the real connection

    return patched


@dataclass
class RunningWorker:
    url: str
    state: WorkerState
    pipeline: StandInPipeline
    injector: FaultInjector = field(init=False)
    _stack: ExitStack = field(default_factory=ExitStack)
    _fillers: list[threading.Thread] = field(default_factory=list)
    filler_statuses: list[int] = field(default_factory=list)

    def jobs_started(self) -> int:
        return self.state.queue.stats.accepted

    def jobs_cancelled(self) -> int:
        return self.state.queue.stats.cancelled

    def stop(self) -> None:
        """Connection refused from now on."""
        self.pipeline.release.set()
        self.join_fillers()
        self._stack.close()

    def arm(self, fault: InjectedFault, count: int = 1) -> None:
        self.injector.armed.extend([fault] * count)

    def fill_queue(self) -> None:
        """Make the queue really full: one job held on the pipeline, max_queue real requests waiting."""
        self.hold_one_job()
        for _ in range(self.state.queue.max_queue):
            self.start_filler()
        wait_until(lambda: self.state.queue.waiting == self.state.queue.max_queue, "the queue to fill")

    def hold_one_job(self) -> None:
        """A real job that runs until the pipeline's release is set."""
        self.pipeline.plan("hold")
        self.start_filler()
        wait_until(self.pipeline.holding.is_set, "the held job to start")

    def start_filler(self) -> None:
        def post() -> None:
            body = {"prompt": "filler", "num_inference_steps": 1}
            try:
                resp = httpx.post(f"{self.url}{GENERATIONS}", json=body, timeout=120)
            except httpx.HTTPError:
                self.filler_statuses.append(-1)  # the test that held it has failed or stopped the worker
            else:
                self.filler_statuses.append(resp.status_code)

        thread = threading.Thread(target=post, daemon=True)
        thread.start()
        self._fillers.append(thread)

    def join_fillers(self) -> None:
        for thread in self._fillers:
            thread.join(timeout=30)
        self._fillers.clear()


@contextmanager
def running_worker(
    variant: Literal["full", "dev", "fast"] = "full",
    *,
    max_queue: int = 2,
    pipeline: StandInPipeline | None = None,
    loaded: threading.Event | None = None,
    wait_ready: bool = True,
) -> Iterator[RunningWorker]:
    """`loaded`: the pipeline factory blocks until it is set (a worker that is still loading)."""
    pipe = pipeline or StandInPipeline()
    settings = WorkerSettings(variant=variant, max_queue=max_queue, weights_dir=None, tiny=False)

    def factory(_: WorkerSettings) -> Pipeline:
        if loaded is not None:
            loaded.wait(timeout=60)
        return pipe

    app = create_app(settings, factory)
    worker = RunningWorker(url="", state=worker_state(app), pipeline=pipe)
    worker.injector = FaultInjector(app, worker)
    with worker._stack:
        worker.url = worker._stack.enter_context(serve_in_thread(worker.injector, free_port()))
        if wait_ready:
            wait_until(lambda: _is_ready(worker.url), "the worker to be ready")
        try:
            yield worker
        finally:
            if loaded is not None:
                loaded.set()
            worker.pipeline.release.set()
            worker.join_fillers()


def _is_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
