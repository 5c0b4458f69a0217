"""The fal adapter's HTTP, behind one small interface (send a request; follow an event stream) with
two implementations: aiohttp for the gateway, which costs a fraction of httpx's CPU per call (with
thousands of fal requests in flight, three calls each, that is most of a worker's CPU), and httpx
for tests, which run it over httpx.ASGITransport against the fake fal in process. Both turn their
library's errors into ProviderErrors here and nowhere else, and both send fal's key (`Key ...`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Literal, Protocol, cast

import aiohttp
import httpx

from providers.base import ProviderBadResponseError, ProviderUnavailableError
from providers.fal.errors import PROVIDER
from providers.fal.mapping import SubmitBody

Method = Literal["GET", "POST", "PUT"]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # names lower-cased
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class EventStream:
    """An answer whose body is read line by line as it arrives (fal's status stream, §2.3)."""

    status: int
    headers: Mapping[str, str]  # names lower-cased
    lines: AsyncIterator[str]  # without line endings


class FalHttp(Protocol):
    async def send(
        self,
        method: Method,
        url: str,
        *,
        step: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: SubmitBody | None = None,
        timeout_s: float | None = None,
    ) -> Reply:
        """One exchange, body read whole. `step` names it in error messages; `timeout_s` bounds the
        whole exchange (None: only the connect and read timeouts)."""
        ...

    def stream(
        self, url: str, *, step: str, params: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[EventStream]: ...

    async def aclose(self) -> None: ...


def _unavailable(step: str, exc: BaseException) -> ProviderUnavailableError:
    return ProviderUnavailableError(f"fal {step}: {type(exc).__name__}", provider=PROVIDER)


# --- aiohttp: the gateway's --------------------------------------------------------------------------


class AiohttpFal:
    """Two connection pools: one for submits, polls, results and cancels, and one for status
    streams, which hold a connection each for seconds and must neither starve the short calls nor
    take their warm keep-alive connections."""

    def __init__(
        self,
        key: str,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
        max_streams: int,
        keepalive_s: float = 3.0,
    ) -> None:
        self._headers = {"Authorization": f"Key {key}"}
        self._connect_timeout_s = connect_timeout_s
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        self._limits = (max_connections, max(1, max_streams))
        # Below the ~5 s after which common servers drop an idle keep-alive connection: a request
        # sent on a connection the server is closing fails, and a submit is never repeated.
        self._keepalive_s = keepalive_s
        self._sessions: list[aiohttp.ClientSession] = []

    def _session(self, which: int) -> aiohttp.ClientSession:
        # Made on first use, inside the event loop that runs them.
        if not self._sessions:
            for limit in self._limits:
                connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, keepalive_timeout=self._keepalive_s)
                self._sessions.append(
                    aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout)
                )
        return self._sessions[which]

    async def send(
        self,
        method: Method,
        url: str,
        *,
        step: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: SubmitBody | None = None,
        timeout_s: float | None = None,
    ) -> Reply:
        sent_headers = dict(headers or {})
        data = None
        if body is not None:
            # The length up front: fal's ingress need not take a chunked body.
            sent_headers |= {"Content-Type": "application/json", "Content-Length": str(body.length)}
            data = _pieces(body)
        timeout = self._timeout
        if timeout_s is not None:
            timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, self._connect_timeout_s))
        with self._translated(step):
            async with self._session(0).request(
                method, url, params=params, headers=sent_headers, data=data, timeout=timeout, allow_redirects=False
            ) as response:
                return Reply(response.status, _lower(response.headers), await response.read())

    @asynccontextmanager
    async def stream(
        self, url: str, *, step: str, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[EventStream]:
        with self._translated(step):
            async with self._session(1).get(url, params=params, allow_redirects=False) as response:
                lines = _lines(response.content)
                try:
                    yield EventStream(response.status, _lower(response.headers), lines)
                finally:
                    await lines.aclose()

    async def aclose(self) -> None:
        for session in self._sessions:
            await session.close()

    @staticmethod
    @contextmanager
    def _translated(step: str) -> Iterator[None]:
        try:
            yield
        except TimeoutError as exc:  # aiohttp's own timeouts; the caller's deadline cancels instead
            raise ProviderUnavailableError(f"fal {step}: no answer ({type(exc).__name__})", provider=PROVIDER) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise _unavailable(step, exc) from exc
        except (aiohttp.ClientError, ValueError, UnicodeDecodeError) as exc:
            raise ProviderBadResponseError(f"fal {step}: {type(exc).__name__}", provider=PROVIDER) from exc


async def _pieces(body: SubmitBody) -> AsyncIterator[bytes]:
    for piece in body.pieces():
        yield piece


async def _lines(content: aiohttp.StreamReader) -> AsyncGenerator[str, None]:
    async for raw in content:
        yield raw.decode("utf-8").rstrip("\r\n")


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


# --- httpx: the tests' --------------------------------------------------------------------------------


class HttpxFal:
    """The same over httpx, for an injected transport (httpx.ASGITransport in tests)."""

    def __init__(
        self,
        key: str,
        *,
        transport: httpx.AsyncBaseTransport,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Key {key}"},
            timeout=self._timeout,
            follow_redirects=False,
            transport=transport,
        )

    async def send(
        self,
        method: Method,
        url: str,
        *,
        step: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: SubmitBody | None = None,
        timeout_s: float | None = None,
    ) -> Reply:
        sent_headers = dict(headers or {})
        content = None
        if body is not None:
            sent_headers |= {"Content-Type": "application/json", "Content-Length": str(body.length)}
            content = _pieces(body)
        timeout = self._timeout
        if timeout_s is not None:
            timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, self._connect_timeout_s))
        with _httpx_translated(step):
            response = await self._client.request(
                method, url, params=params, headers=sent_headers, content=content, timeout=timeout
            )
        return Reply(response.status_code, _lower(response.headers), response.content)

    @asynccontextmanager
    async def stream(
        self, url: str, *, step: str, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[EventStream]:
        with _httpx_translated(step):
            async with self._client.stream("GET", url, params=params) as response:
                lines = cast(AsyncGenerator[str, None], response.aiter_lines())
                try:
                    yield EventStream(response.status_code, _lower(response.headers), lines)
                finally:
                    await lines.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()


@contextmanager
def _httpx_translated(step: str) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ProviderUnavailableError(f"fal {step}: no answer ({type(exc).__name__})", provider=PROVIDER) from exc
    except httpx.DecodingError as exc:
        raise ProviderBadResponseError(f"fal {step}: undecodable body", provider=PROVIDER) from exc
    except httpx.TransportError as exc:
        raise _unavailable(step, exc) from exc
    except httpx.HTTPError as exc:
        raise ProviderBadResponseError(f"fal {step}: {type(exc).__name__}", provider=PROVIDER) from exc
