"""fal-specific behaviour of FalProvider against the fake fal server, in process: the adapter's
httpx client over httpx.ASGITransport (the contract suite runs its aiohttp client over a socket).
URLs followed as returned, the status stream and its fallback to bounded backing-off polls,
first looks timed from learned completion times, edits, cancellation, COMPLETED-with-error
flows, auth and ingress errors."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import httpx
import pytest
from PIL import Image

from providers.base import ErrorKind, InputImage, ProviderError
from providers.fal import FalProvider
from providers.fal import adapter as adapter_module
from providers.fal.http import HttpxFal
from tests.contract.cases.fal import KEY, TARGET, make_request
from tests.fakes.fal_server import create_app
from tests.fakes.fal_state import FakeFal

BASE = "http://fal.test"


class Recording(httpx.AsyncBaseTransport):
    """Passes requests to the fake and keeps them; can hold a submit's reply, refuse status polls,
    refuse or cut status streams, or answer them as a fal without the stream route would."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.seen: list[httpx.Request] = []
        self.statuses: list[str] = []
        self.hold_submit: asyncio.Event | None = None
        self.refuse_status = False
        self.refuse_stream = False
        self.stream_answer: int | None = None  # answer status streams with this code and no stream
        self.on_status: Callable[[], None] | None = None  # called as each status poll is answered

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        is_status = request.method == "GET" and request.url.path.endswith("/status")
        if is_status and self.refuse_status:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path.endswith("/status/stream"):
            if self.refuse_stream:
                raise httpx.ReadError("connection reset", request=request)
            if self.stream_answer is not None:
                return httpx.Response(self.stream_answer, json={"detail": "Method Not Allowed"}, request=request)
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and self.hold_submit is not None:
            await self.hold_submit.wait()  # fal has the job; its reply has not arrived yet
        if is_status and response.status_code in (200, 202):
            await response.aread()
            self.statuses.append(json.loads(response.content)["status"])
        if is_status and self.on_status is not None:
            self.on_status()
        return response

    def of(self, method: str) -> list[httpx.Request]:
        return [r for r in self.seen if r.method == method]

    def paths(self, suffix: str) -> list[httpx.Request]:
        return [r for r in self.seen if r.url.path.endswith(suffix)]


@dataclass
class Rig:
    fake: FakeFal
    provider: FalProvider
    transport: Recording


Factory = Callable[..., Rig]


@pytest.fixture
async def rig_factory() -> AsyncIterator[Factory]:
    providers: list[FalProvider] = []

    def make(*, key: str = KEY, inference_s: float = 0.05, queue_s: float = 0.0, **options: float) -> Rig:
        """A rig with the adapter's defaults (status stream on) and short poll intervals."""
        fake = FakeFal(inference_s=inference_s, queue_s=queue_s, response_suffix=bool(options.pop("suffix", 0)))
        transport = Recording(httpx.ASGITransport(app=create_app(fake, key=KEY)))
        settings = {"poll_initial_s": 0.01, "poll_factor": 1.5, "poll_max_s": 0.05, **options}
        http = HttpxFal(key, transport=transport)
        provider = FalProvider(key, queue_url=BASE, http=http, **settings)  # type: ignore[arg-type]
        providers.append(provider)
        return Rig(fake, provider, transport)

    yield make
    for provider in providers:
        await provider.aclose()


@pytest.fixture
def rig(rig_factory: Factory) -> Rig:
    return rig_factory()


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("stream", "watch"), [(1, "/status/stream?logs=0"), (0, "/status?logs=0")])
async def test_submit_sends_the_key_and_later_calls_follow_the_returned_urls(
    rig_factory: Factory, stream: int, watch: str
) -> None:
    # The fake returns response_url with a /response suffix: an adapter that rebuilt URLs would miss it.
    rig = rig_factory(suffix=1, status_stream=stream)
    result = await rig.provider.generate(TARGET, make_request(prompt="a fox"))
    (queued,) = rig.fake.requests()
    submit, *rest = rig.transport.seen
    assert (submit.method, str(submit.url)) == ("POST", f"{BASE}/fal-ai/hidream-i1-full")
    assert all(r.headers["authorization"] == f"Key {KEY}" for r in rig.transport.seen)
    assert submit.headers["x-fal-request-timeout"] == "30.0"
    assert submit.headers["content-type"] == "application/json"
    request_url = f"{BASE}/fal-ai/hidream-i1-full/requests/{queued.id}"
    assert {str(r.url) for r in rest[:-1]} == {request_url + watch}
    assert str(rest[-1].url) == request_url + "/response"
    assert result.upstream_request_id == queued.id
    assert result.revised_prompt == "a fox"
    assert result.upstream_latency_s is not None and result.upstream_latency_s > 0


async def test_the_input_is_fal_shaped_with_a_preset_or_custom_size(rig: Rig) -> None:
    await rig.provider.generate(TARGET, make_request(seed=9, negative_prompt="fog"))
    await rig.provider.generate(TARGET, make_request(width=1360, height=768, guidance_scale=None))
    first, second = (r.payload for r in rig.fake.requests())
    assert isinstance(first, dict) and isinstance(second, dict)
    assert first["image_size"] == "square_hd" and first["seed"] == 9 and first["negative_prompt"] == "fog"
    assert first["num_images"] == 1 and first["guidance_scale"] == 5.0 and first["output_format"] == "png"
    assert second["image_size"] == {"width": 1360, "height": 768} and "guidance_scale" not in second


async def test_an_edit_goes_to_image_to_image_with_a_data_uri_and_strength(rig: Rig) -> None:
    data = png(96, 64)
    req = make_request(images=(InputImage(data, "image/png", 96, 64),), strength=0.4, response_format="b64_json")
    result = await rig.provider.generate(TARGET, req)
    (queued,) = rig.fake.requests()
    assert queued.endpoint == "fal-ai/hidream-i1-full/image-to-image"
    assert isinstance(queued.payload, dict)
    header, _, encoded = str(queued.payload["image_url"]).partition(",")
    assert header == "data:image/png;base64" and base64.b64decode(encoded) == data
    assert queued.payload["strength"] == 0.4
    # sent in pieces with its length up front, not chunked: fal's ingress need not take chunked bodies
    (submit,) = rig.transport.of("POST")
    assert "transfer-encoding" not in submit.headers
    assert int(submit.headers["content-length"]) == len(json.dumps(queued.payload, separators=(",", ":")))
    # status and result live under the app, without the sub-path
    assert not any("image-to-image" in str(r.url) for r in rig.transport.of("GET"))
    assert (result.images[0].width, result.images[0].height) == (1024, 1024)


async def test_b64_json_uses_sync_mode_and_url_mode_passes_cdn_urls(rig: Rig) -> None:
    inline = await rig.provider.generate(TARGET, make_request(response_format="b64_json", width=880, height=1168))
    linked = await rig.provider.generate(TARGET, make_request(response_format="url", n=2))
    sync_modes = [r.payload["sync_mode"] for r in rig.fake.requests() if isinstance(r.payload, dict)]
    assert sync_modes == [True, False]
    data = inline.images[0].data
    assert data is not None and inline.images[0].url is None
    assert Image.open(io.BytesIO(data)).size == (880, 1168)
    async with httpx.AsyncClient(transport=rig.transport) as client:
        for image in linked.images:
            assert image.data is None and image.url is not None and image.url.startswith(BASE + "/cdn/files/")
            fetched = await client.get(image.url)
            assert Image.open(io.BytesIO(fetched.content)).size == (1024, 1024)


async def test_polling_backs_off_and_stays_bounded(rig_factory: Factory) -> None:
    # 0.6 s of inference polled from 0.02 s doubling to 0.16 s: about 7 polls. A fixed 0.02 s
    # interval would take about 30.
    rig = rig_factory(inference_s=0.6, poll_initial_s=0.02, poll_factor=2.0, poll_max_s=0.16, status_stream=0)
    await rig.provider.generate(TARGET, make_request())
    (queued,) = rig.fake.requests()
    assert 2 <= queued.polls <= 9
    assert rig.transport.statuses[-1] == "COMPLETED" and "IN_PROGRESS" in rig.transport.statuses


async def test_a_queued_request_is_polled_through_the_queue(rig_factory: Factory) -> None:
    rig = rig_factory(queue_s=0.3, inference_s=0.05, status_stream=0)
    result = await rig.provider.generate(TARGET, make_request())
    assert rig.transport.statuses[0] == "IN_QUEUE" and rig.transport.statuses[-1] == "COMPLETED"
    assert len(result.images) == 1


async def test_deadline_expiry_cancels_the_upstream_job(rig: Rig) -> None:
    rig.fake.fail_next("hang")
    with pytest.raises(ProviderError) as info:
        await rig.provider.generate(TARGET, make_request(timeout_s=0.5))
    assert info.value.kind == ErrorKind.TIMEOUT
    await rig.provider.aclose()  # waits for the cancel sent in the background
    (queued,) = rig.fake.requests()
    assert rig.fake.count("cancels") == 1
    assert [str(r.url) for r in rig.transport.of("PUT")] == [
        f"{BASE}/fal-ai/hidream-i1-full/requests/{queued.id}/cancel"
    ]
    assert queued.end == "cancelled"


async def test_cancelling_during_the_submit_still_cancels_the_job(rig: Rig) -> None:
    rig.transport.hold_submit = asyncio.Event()
    task = asyncio.create_task(rig.provider.generate(TARGET, make_request()))
    while rig.fake.count("submits") == 0:
        await asyncio.sleep(0.005)
    task.cancel()
    await asyncio.sleep(0.02)
    assert rig.fake.count("cancel_requests") == 0  # no id yet: the cancel waits for the submit reply
    rig.transport.hold_submit.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.fake.count("cancels") == 1


@pytest.mark.parametrize(
    ("fault", "kind", "status", "param"),
    [
        ("unavailable", ErrorKind.UNAVAILABLE, 503, None),
        ("completed_with_error", ErrorKind.UNAVAILABLE, 500, None),
        ("rejected_input", ErrorKind.REJECTED_INPUT, 422, "prompt"),
        ("content_policy", ErrorKind.CONTENT_POLICY, 422, "prompt"),
        ("generation_timeout", ErrorKind.TIMEOUT, 504, None),
    ],
)
async def test_completed_with_error_fetches_the_result_and_maps_it(
    rig: Rig, fault: str, kind: ErrorKind, status: int, param: str | None
) -> None:
    rig.fake.fail_next(fault)
    with pytest.raises(ProviderError) as info:
        await rig.provider.generate(TARGET, make_request())
    assert (info.value.kind, info.value.upstream_status, info.value.param) == (kind, status, param)
    # the stream told it COMPLETED (no poll needed), then the result said why it failed
    assert (rig.fake.count("streams"), rig.fake.count("status_polls"), rig.fake.count("results")) == (1, 0, 1)
    assert rig.fake.count("cancel_requests") == 0  # a finished request needs no cancel


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"num_inference_steps": 60}, "num_inference_steps"),
        ({"n": 5}, "n"),
        ({"guidance_scale": 25.0}, "guidance_scale"),
        ({"width": 5000, "height": 1024}, "size"),
    ],
)
async def test_schema_violations_surface_from_the_runner_naming_the_parameter(
    rig: Rig, overrides: dict[str, object], param: str
) -> None:
    with pytest.raises(ProviderError) as info:
        await rig.provider.generate(TARGET, make_request(**overrides))
    assert info.value.kind == ErrorKind.REJECTED_INPUT and info.value.param == param
    assert rig.fake.count("submits") == 1  # the queue accepted it; the runner refused it


async def test_a_refused_key_is_an_auth_error_and_makes_probe_unhealthy(rig_factory: Factory) -> None:
    rig = rig_factory(key="wrong-id:wrong-secret")
    with pytest.raises(ProviderError) as info:
        await rig.provider.generate(TARGET, make_request())
    assert info.value.kind == ErrorKind.AUTH and info.value.upstream_status == 401
    health = await rig.provider.probe(TARGET)
    assert not health.healthy and health.detail == "auth"
    assert rig.fake.count("submits") == 0


async def test_probe_is_free_and_healthy_with_a_good_key(rig: Rig) -> None:
    health = await rig.provider.probe(TARGET)
    assert health.healthy
    (probe,) = rig.transport.seen
    assert probe.method == "GET" and probe.url.path.startswith("/fal-ai/hidream-i1-full/requests/")
    assert rig.fake.count("submits") == 0


async def test_an_exhausted_balance_is_auth_not_quota(rig: Rig) -> None:
    rig.fake.fail_next("locked")
    with pytest.raises(ProviderError) as info:
        await rig.provider.generate(TARGET, make_request())
    assert info.value.kind == ErrorKind.AUTH and info.value.upstream_status == 403


async def test_an_ingress_502_at_submit_is_unavailable_and_never_resubmitted(rig: Rig) -> None:
    rig.fake.fail_next("ingress_502")
    with pytest.raises(ProviderError) as info:
        await rig.provider.generate(TARGET, make_request())
    assert info.value.kind == ErrorKind.UNAVAILABLE and info.value.retryable
    assert len(rig.transport.of("POST")) == 1 and rig.fake.count("submit_refusals") == 1


async def test_an_ingress_502_while_polling_is_retried(rig_factory: Factory) -> None:
    rig = rig_factory(status_stream=0)
    rig.fake.fail_next("poll_ingress_502")
    result = await rig.provider.generate(TARGET, make_request())
    assert len(result.images) == 1
    (queued,) = rig.fake.requests()
    assert queued.polls == len(rig.transport.statuses) + 1  # one poll met the 502 and was repeated


async def test_losing_the_connection_while_polling_gives_up_and_cancels(rig_factory: Factory) -> None:
    rig = rig_factory(status_stream=0)
    rig.fake.fail_next("hang")
    rig.transport.refuse_status = True
    with pytest.raises(ProviderError) as info:
        await rig.provider.generate(TARGET, make_request())
    assert info.value.kind == ErrorKind.UNAVAILABLE
    status_attempts = [r for r in rig.transport.of("GET") if r.url.path.endswith("/status")]
    assert len(status_attempts) == 4  # the first try and three repeats
    await rig.provider.aclose()
    assert rig.fake.count("cancels") == 1


# --- watching a request: the status stream, learned first looks, fallbacks --------------------------


async def test_the_status_stream_replaces_polling(rig_factory: Factory) -> None:
    rig = rig_factory(queue_s=0.1, inference_s=0.3)
    result = await rig.provider.generate(TARGET, make_request())
    assert len(result.images) == 1
    (queued,) = rig.fake.requests()
    # one stream followed the job through IN_QUEUE and IN_PROGRESS to COMPLETED; nothing polled
    assert (rig.fake.count("streams"), queued.polls, rig.fake.count("results")) == (1, 0, 1)


async def test_once_completion_times_are_learned_the_first_look_comes_near_the_end(rig_factory: Factory) -> None:
    # Polling only, from 0.01 s growing by half the time waited up to 0.05 s. Cold, a 0.4 s job is
    # polled about 12 times; once three such jobs have been seen, the first poll comes at 0.8 x their
    # time, and two or three polls do.
    rig = rig_factory(inference_s=0.4, status_stream=0, poll_initial_s=0.01, poll_factor=1.5, poll_max_s=0.05)
    for _ in range(3):
        await rig.provider.generate(TARGET, make_request())
    await rig.provider.generate(TARGET, make_request())
    cold, *_, learned = (r.polls for r in rig.fake.requests())
    assert cold >= 6
    assert 1 <= learned <= 4


class FakeClock:
    """The adapter's time.monotonic and asyncio.sleep: a sleep moves the clock on by what it asks
    (and is recorded), the rest of asyncio is the real one."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def __getattr__(self, name: str) -> object:  # asyncio.timeout, shield, ... as they are
        return getattr(asyncio, name)


async def test_a_job_fal_finished_at_once_is_learned_as_done_when_the_look_was_sent(
    rig_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fal finishes each job at once, and each status answer takes 50 ms to come back (on a fake
    # clock). The time learned is when the look that found the job done was sent: counting its
    # answer's round trip too, each first look (at 0.8x the estimate) added one to the next
    # estimate, which climbed towards five round trips (0.25 s) that every request waited for.
    clock = FakeClock()
    monkeypatch.setattr(adapter_module, "time", clock)
    monkeypatch.setattr(adapter_module, "asyncio", clock)
    rig = rig_factory(inference_s=0.0, status_stream=0, poll_initial_s=0.01)

    def answered() -> None:
        clock.now += 0.05

    rig.transport.on_status = answered
    for _ in range(12):
        await rig.provider.generate(TARGET, make_request())
    cold, learned = clock.sleeps[:3], clock.sleeps[3:]
    assert cold == [0.01] * 3 and len(learned) == 9  # one look each: every job was done at the first
    assert max(learned) <= 0.01  # never later than a first look that knew nothing


async def test_a_stream_that_gives_out_falls_back_to_polling(rig_factory: Factory) -> None:
    rig = rig_factory(inference_s=0.2)
    rig.transport.refuse_stream = True
    result = await rig.provider.generate(TARGET, make_request())
    assert len(result.images) == 1
    (queued,) = rig.fake.requests()
    assert len(rig.transport.paths("/status/stream")) == 1 and queued.polls >= 1
    # a dropped connection is this request's bad luck: the next request streams again
    rig.transport.refuse_stream = False
    await rig.provider.generate(TARGET, make_request())
    assert rig.fake.count("streams") == 1 and len(rig.transport.paths("/status/stream")) == 2


async def test_a_fal_that_will_not_stream_is_polled_for_a_while(rig_factory: Factory) -> None:
    rig = rig_factory(inference_s=0.1)
    rig.transport.stream_answer = 405
    first = await rig.provider.generate(TARGET, make_request())
    rig.transport.stream_answer = None
    second = await rig.provider.generate(TARGET, make_request())
    assert len(first.images) == len(second.images) == 1
    # the refusal paused streaming (stream_pause_s, 60 s by default): the second request only polled
    assert len(rig.transport.paths("/status/stream")) == 1
    assert all(r.polls >= 1 for r in rig.fake.requests())


async def test_streams_beyond_max_streams_poll_instead(rig_factory: Factory) -> None:
    rig = rig_factory(inference_s=0.2, max_streams=1)
    rig.fake.fail_next("hang")
    holding = asyncio.create_task(rig.provider.generate(TARGET, make_request(timeout_s=2.0)))
    while rig.fake.count("streams") == 0:
        await asyncio.sleep(0.01)
    # the one slot is held by the hanging request: the next two poll
    results = await asyncio.gather(*(rig.provider.generate(TARGET, make_request()) for _ in range(2)))
    assert all(len(r.images) == 1 for r in results)
    assert rig.fake.count("streams") == 1
    hung, *others = rig.fake.requests()
    assert hung.polls == 0 and all(r.polls >= 1 for r in others)
    with pytest.raises(ProviderError):
        await holding


async def test_a_deadline_during_a_stream_cancels_the_job_and_frees_the_stream(rig_factory: Factory) -> None:
    rig = rig_factory(max_streams=1)
    rig.fake.fail_next("hang")
    with pytest.raises(ProviderError) as info:
        await rig.provider.generate(TARGET, make_request(timeout_s=0.5))
    assert info.value.kind == ErrorKind.TIMEOUT
    assert rig.fake.count("streams") == 1
    # the slot came back: the next request streams too
    await rig.provider.generate(TARGET, make_request())
    assert rig.fake.count("streams") == 2
    await rig.provider.aclose()
    assert rig.fake.count("cancels") == 1


async def test_learned_short_jobs_are_polled_and_overruns_streamed(rig_factory: Factory) -> None:
    # poll_max_s 0.05: a stream pays off only for more than 0.1 s left. Cold, the three 0.3 s jobs
    # stream; the fourth, expected to finish 0.06 s after its first look, is polled.
    rig = rig_factory(inference_s=0.3)
    for _ in range(4):
        await rig.provider.generate(TARGET, make_request())
    *cold, learned = rig.fake.requests()
    assert rig.fake.count("streams") == 3 and all(r.polls == 0 for r in cold) and learned.polls >= 1
    # A job still running well past its expected time has an unknown wait left: it gets the stream.
    rig.fake.fail_next("hang")
    with pytest.raises(ProviderError):
        await rig.provider.generate(TARGET, make_request(timeout_s=1.5))
    hung = rig.fake.requests()[-1]
    assert rig.fake.count("streams") == 4 and hung.polls >= 1


async def test_a_request_is_reattached_by_its_reported_handle_without_a_second_submit(rig: Rig) -> None:
    """An async job keeps the handle the adapter reports after the submit; a process taking the job
    over follows that fal request to its result instead of submitting another."""
    handles: list[str] = []

    async def keep(handle: str) -> None:
        handles.append(handle)

    first = asyncio.create_task(rig.provider.generate(TARGET, replace(make_request(), on_submitted=keep)))
    while not handles:
        await asyncio.sleep(0.005)
    result = await rig.provider.reattach(TARGET, make_request(), handles[0])
    assert len(result.images) == 1 and result.images[0].url
    assert len(rig.transport.of("POST")) == 1  # the one submit, followed twice
    assert result.upstream_request_id == json.loads(handles[0])["request_id"]
    await first


async def test_a_handle_pointing_outside_the_queue_url_is_refused(rig: Rig) -> None:
    handle = json.dumps({"request_id": "r", "status_url": "http://elsewhere.test/s", "response_url":
                         "http://elsewhere.test/r", "cancel_url": "http://elsewhere.test/c"})  # fmt: skip
    with pytest.raises(ProviderError) as caught:
        await rig.provider.reattach(TARGET, make_request(), handle)
    assert caught.value.kind == ErrorKind.BAD_RESPONSE
    assert rig.transport.seen == []  # the key went nowhere
