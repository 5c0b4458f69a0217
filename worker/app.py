"""The worker's HTTP app: create_app(settings, pipeline_factory) and the lifespan that loads the
pipeline in the background, warms it, then runs the job queue. Routes: the OpenAI generations
endpoint, /health (liveness), /ready and /load (readiness and load report), /v1/models, /metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import Receive, Scope, Send

from worker import __version__
from worker.errors import FatalDeviceError, InvalidRequestError, NotReadyError, WorkerError
from worker.inference import Pipeline, run_job
from worker.jobs import Execute, Job, JobOutput, JobQueue, JobSpec
from worker.previews import Previewer
from worker.schemas import RAW_IMAGES, RawImages, accepts_raw, generation_body, parse_request, raw_images, to_job_spec
from worker.settings import WorkerSettings
from worker.state import WorkerState
from worker.streaming import EventChannel, JobStream
from worker.variants import SIZES

log = logging.getLogger("worker")

PipelineFactory = Callable[[WorkerSettings], Pipeline]
T = TypeVar("T")
B = TypeVar("B")
Answer = tuple[int, dict[str, str], dict[str, Any]]  # status, headers, body

# Two 4000-character prompts in 4-byte UTF-8 and every other field fit easily.
MAX_BODY_BYTES = 256 * 1024
# Status for a request whose client went away (nginx's convention); nobody reads it.
CLIENT_CLOSED_REQUEST = 499


def create_app(settings: WorkerSettings, pipeline_factory: PipelineFactory) -> FastAPI:
    state = WorkerState(settings, JobQueue(max_queue=settings.max_queue))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        serving = asyncio.create_task(_load_warm_and_serve(state, pipeline_factory), name="worker-serve")
        serving.add_done_callback(partial(_serving_stopped, state))
        try:
            yield
        finally:
            state.draining = True
            serving.cancel()
            with suppress(asyncio.CancelledError):
                await serving
            state.queue.cancel_all()

    app = FastAPI(title="HiDream worker", version=__version__, lifespan=lifespan)
    app.state.worker = state
    app.include_router(_router())
    app.add_exception_handler(WorkerError, _worker_error_handler)
    return app


def _serving_stopped(state: WorkerState, task: asyncio.Task[None]) -> None:
    """The queue loop must outlive every request; if it dies, stop claiming to be ready."""
    if task.cancelled() or state.phase == "failed":
        return
    exc = task.exception()
    if exc is not None:
        log.error("the job queue stopped", exc_info=exc)
        state.mark_failed(f"job queue stopped: {type(exc).__name__}")


def worker_state(app: FastAPI) -> WorkerState:
    state: WorkerState = app.state.worker
    return state


# --- start-up ---------------------------------------------------------------------------------


async def _load_warm_and_serve(state: WorkerState, factory: PipelineFactory) -> None:
    settings = state.settings
    started = time.perf_counter()
    try:
        pipeline = await _in_daemon_thread(partial(factory, settings))
    except Exception as exc:
        log.exception("loading the pipeline failed")
        state.mark_failed(f"loading failed: {type(exc).__name__}: {exc}")
        return
    state.mark_loaded(time.perf_counter() - started)
    log.info("pipeline for %s loaded in %.1f s", settings.spec.model_id, state.load_seconds)
    execute: Execute = partial(
        run_job, pipeline, resize_to_request=settings.tiny, png_compress_level=settings.png_compress_level,
        previewer=Previewer(pipeline),
    )  # fmt: skip
    if settings.warmup:
        spec = warmup_spec(settings)
        stop_warming = threading.Event()
        t0 = time.perf_counter()
        try:
            await asyncio.to_thread(execute, spec, stop_warming, None)
        except asyncio.CancelledError:
            stop_warming.set()  # shutting down mid warm-up: stop at the next step
            raise
        except Exception as exc:
            log.exception("the warm-up generation failed")
            state.mark_failed(f"warm-up failed: {type(exc).__name__}")
            return
        state.queue.seed_estimate(spec, time.perf_counter() - t0)
        log.info("warm-up generation took %.2f s", time.perf_counter() - t0)
    state.mark_ready()
    await state.queue.run(execute)


def warmup_spec(settings: WorkerSettings) -> JobSpec:
    variant = settings.spec
    return JobSpec("warm-up", None, 1, 1024, 1024, settings.steps_for_warmup, variant.default_guidance, 0)


async def _in_daemon_thread(fn: Callable[[], T]) -> T:
    """Run a long blocking call (loading weights) in a daemon thread, so that stopping the worker
    while it loads does not wait for the load to finish (the default executor's threads are
    joined at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:
            outcome: Callable[[], None] = partial(_fail, future, exc)
        else:
            outcome = partial(_succeed, future, result)
        with suppress(RuntimeError):  # the loop is gone: the worker stopped while this loaded
            loop.call_soon_threadsafe(outcome)

    threading.Thread(target=target, name="worker-load", daemon=True).start()
    return await future


def _succeed(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[T], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


# --- routes -----------------------------------------------------------------------------------


def _router() -> APIRouter:
    router = APIRouter()
    router.add_api_route("/v1/images/generations", create_generation, methods=["POST"])
    router.add_api_route("/health", health, methods=["GET"])
    router.add_api_route("/ready", ready, methods=["GET"])
    router.add_api_route("/load", ready, methods=["GET"])
    router.add_api_route("/v1/models", models, methods=["GET"])
    router.add_api_route("/metrics", metrics, methods=["GET"])
    return router


async def create_generation(request: Request) -> Response:
    state = worker_state(request.app)
    m = state.metrics
    arrived = time.perf_counter()
    request_id = (request.headers.get("x-request-id") or uuid.uuid4().hex)[:128]
    try:
        req = parse_request(await _json_body(request))
        spec = to_job_spec(req, state.settings)
        state.ensure_ready()
        channel = EventChannel(asyncio.get_running_loop()) if req.stream else None
        job = state.queue.submit(spec, request_id, channel.report if channel is not None else None)
    except WorkerError as err:
        m.requests.labels(err.status_label).inc()
        return error_response(err)
    if channel is not None:  # the worker's streaming protocol (worker/streaming.py)
        outcome = partial(_outcome, state, job, request_id, arrived, generation_body)
        return _Streamed(JobStream(state.queue, job, channel, outcome))
    if not await _finished_before_disconnect(request, state.queue, job):
        m.requests.labels("cancelled").inc()
        log.info("job %s cancelled: the client went away", job.id)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if accepts_raw(request.headers.get("accept")):
        status, headers, answer = await _outcome(state, job, request_id, arrived, raw_images)
        if isinstance(answer, RawImages):
            return Response(answer.body, media_type=RAW_IMAGES, headers=headers | answer.headers)
        return JSONResponse(answer, status_code=status, headers=headers)  # errors are JSON always
    status, headers, body = await _outcome(state, job, request_id, arrived, generation_body)
    return JSONResponse(body, status_code=status, headers=headers)


class _Streamed(Response):
    """A Response (so FastAPI passes it on) that is the JobStream itself."""

    def __init__(self, stream: JobStream) -> None:
        self.status_code = 200
        self.background = None
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._stream(scope, receive, send)


async def _outcome(
    state: WorkerState, job: Job, request_id: str, arrived: float, render: Callable[[JobSpec, JobOutput], B]
) -> tuple[int, dict[str, str], B | dict[str, Any]]:
    """The answer to a finished job: status, headers and body (`render`'s of the images, or an
    OpenAI error body on failure)."""
    m = state.metrics
    spec = job.spec
    if job.future.cancelled():  # the client left (a stream's own cancel) or the worker stops
        if job.cancel_requested and not state.draining:
            m.requests.labels("cancelled").inc()
            log.info("job %s cancelled: the client went away", job.id)
            return CLIENT_CLOSED_REQUEST, {}, {}
        m.requests.labels("not_ready").inc()
        return _error(NotReadyError("The worker is shutting down.", retry_after_s=1))
    try:
        output = job.future.result()
    except WorkerError as err:
        if isinstance(err, FatalDeviceError):
            state.mark_failed(err.message)
        log.error("job %s failed: %s", job.id, err.message, exc_info=err.__cause__)
        m.requests.labels(err.status_label).inc()
        return _error(err)
    except Exception as exc:
        log.exception("job %s failed", job.id, exc_info=exc)
        m.requests.labels("error").inc()
        return _error(WorkerError(f"Generation failed: {type(exc).__name__}."))
    m.queue_duration.observe(job.queue_s)
    m.inference_duration.observe(job.infer_s)
    m.request_duration.observe(time.perf_counter() - arrived)
    m.images.inc(len(output.images))
    m.requests.labels("ok").inc()
    log.info(
        "job %s: n=%d %dx%d steps=%d queue=%.0fms infer=%.0fms",
        job.id, spec.n, spec.width, spec.height, spec.steps, job.queue_s * 1000, job.infer_s * 1000,
    )  # fmt: skip
    headers = {
        "x-request-id": request_id,
        "x-actual-size": f"{output.width}x{output.height}",
        "x-seed": str(spec.seed),
        "x-queue-ms": str(round(job.queue_s * 1000)),
        "x-infer-ms": str(round(job.infer_s * 1000)),
    }
    return 200, headers, render(spec, output)


def _error(err: WorkerError) -> Answer:
    return err.status_code, err.headers(), dict(err.body())


async def _json_body(request: Request) -> object:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise InvalidRequestError(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    try:
        payload: object = json.loads(raw)
    except (ValueError, RecursionError):  # malformed, undecodable, an int past 4,300 digits, too deep
        raise InvalidRequestError("The request body is not valid JSON.") from None
    return payload


async def _finished_before_disconnect(request: Request, queue: JobQueue, job: Job) -> bool:
    """Wait for the job; if the client disconnects first, cancel it (drop it while it waits,
    interrupt it between denoising steps while it runs) and return False."""
    disconnected = asyncio.ensure_future(_client_disconnected(request))
    try:
        waiters: list[asyncio.Future[Any]] = [job.future, disconnected]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        queue.cancel(job)
        raise
    finally:
        client_gone = disconnected.done() and not disconnected.cancelled()
        disconnected.cancel()
        with suppress(asyncio.CancelledError):
            await disconnected
    if job.future.done():
        return True
    assert client_gone
    queue.cancel(job)
    return False


async def _client_disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message is http.disconnect when the client goes.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def health(request: Request) -> JSONResponse:
    state = worker_state(request.app)
    if state.phase == "failed":
        return JSONResponse({"status": "failed", "error": state.error}, status_code=503)
    return JSONResponse({"status": "ok", "phase": state.phase})


async def ready(request: Request) -> JSONResponse:
    state = worker_state(request.app)
    if state.ready:
        return JSONResponse(state.report())
    retry = str(state.settings.not_ready_retry_after_s)
    return JSONResponse(state.report(), status_code=503, headers={"retry-after": retry})


async def models(request: Request) -> JSONResponse:
    state = worker_state(request.app)
    variant = state.settings.spec
    entry = {
        "id": variant.model_id,
        "object": "model",
        "created": 1744329600,  # HiDream-I1's release (2025-04-11)
        "owned_by": "self-hosted",
        "weights": variant.hub_repo,
        "defaults": {"num_inference_steps": variant.default_steps, "guidance_scale": variant.default_guidance},
        "sizes": [f"{w}x{h}" for w, h in SIZES],
    }
    return JSONResponse({"object": "list", "data": [entry]})


async def metrics(request: Request) -> Response:
    return Response(worker_state(request.app).metrics.render(), media_type=CONTENT_TYPE_LATEST)


def error_response(err: WorkerError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status_code, headers=err.headers())


async def _worker_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WorkerError)
    return error_response(exc)
