"""The worker's streaming answer (worker/streaming.py documents it) read line by line: progress and
partial images reported as they come, the last line kept for the result. Pure data transforms and
a line buffer; no I/O."""

from __future__ import annotations

import binascii
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass

import pybase64

from providers.base import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    PartialImage,
    Progress,
    ProgressEvent,
    ProgressSink,
    ProviderBadResponseError,
    png_size,
    sniff_content_type,
)
from providers.local_gpu.mapping import PROVIDER, error_from_response, parse_generation


@dataclass(frozen=True, slots=True)
class Final:
    """The stream's last line: the status, headers and body the JSON answer would have had."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class LineReader:
    """Fed the body's chunks as they arrive; reports each event line, keeps the final one."""

    def __init__(self, report: ProgressSink, job_s: float | None = None) -> None:
        self._report = report
        self._job_s = job_s or 0.0  # one job's time on this worker, added to a queued line's wait
        self._pending = bytearray()
        self.final: Final | None = None
        self.failure: ProviderBadResponseError | None = None  # a line we could not read

    def feed(self, chunk: bytes) -> None:
        if self.failure is not None:
            return
        self._pending += chunk
        while (end := self._pending.find(b"\n")) >= 0:
            line = bytes(self._pending[:end])
            del self._pending[: end + 1]
            if line.strip():
                try:
                    self._line(line)
                except ProviderBadResponseError as exc:
                    self.failure = exc
                    return

    def _line(self, line: bytes) -> None:
        if self.final is not None:
            raise _bad("a line came after the final one")
        try:
            data = json.loads(line)
        except ValueError:
            raise _bad("a stream line is not JSON") from None
        if not isinstance(data, dict):
            raise _bad("a stream line is not an object")
        kind = data.get("type")
        if kind in ("completed", "error"):
            self.final = _final(data)
        else:
            event = event_from_line(data)
            if isinstance(event, Progress) and event.expected_s is not None:
                event = dataclasses.replace(event, expected_s=round(event.expected_s + self._job_s, 3))
            if event is not None:
                self._report(event)

    def result(self, request: ImageRequest) -> ImageResult:
        """The ImageResult of a stream that ended, or the ProviderError its end means."""
        if self.failure is not None:
            raise self.failure
        if self.final is None:
            raise ProviderBadResponseError("the worker's stream ended without a result", provider=PROVIDER)
        final = self.final
        if final.status != 200:
            raise error_from_response(final.status, final.headers, final.body)
        return parse_generation(final.headers, final.body, request)


def event_from_line(data: Mapping[str, object]) -> ProgressEvent | None:
    """A queued, progress or partial_image line as a ProgressEvent (None: a kind we do not know,
    which a newer worker may send). A queued line's expected time is the wait before the job
    starts; the adapter adds the job's own time (LineReader's `job_s`)."""
    kind = data.get("type")
    if kind == "queued":
        return Progress(queue_position=_int(data, "queue_position"), expected_s=_float(data, "expected_wait_s"))
    if kind == "progress":
        return Progress(queue_position=0, step=_int(data, "step"), steps=_int(data, "steps"))
    if kind == "partial_image":
        items = data.get("data")
        index = _int(data, "partial_image_index")
        if not isinstance(items, list) or not items or index is None:
            raise _bad("a partial_image line has no images")
        images = tuple(_preview(item) for item in items)
        return PartialImage(index, images, step=_int(data, "step"), steps=_int(data, "steps"))
    return None


def _preview(item: object) -> GeneratedImage:
    b64 = item.get("b64_json") if isinstance(item, dict) else None
    if not isinstance(b64, str):
        raise _bad("a preview has no b64_json")
    try:
        data = pybase64.b64decode(b64, validate=True)  # strict, as mapping._decode_image
    except (binascii.Error, ValueError):
        raise _bad("a preview is not valid base64") from None
    size = png_size(data) if sniff_content_type(data) == "image/png" else None
    if size is None:
        raise _bad("a preview is not a PNG")
    return GeneratedImage(content_type="image/png", width=size[0], height=size[1], data=data, b64=b64)


def _final(data: Mapping[str, object]) -> Final:
    status, headers, body = data.get("status"), data.get("headers"), data.get("body")
    if not isinstance(status, int) or not isinstance(headers, dict) or not isinstance(body, dict):
        raise _bad("the stream's final line lacks its status, headers or body")
    return Final(status, {str(k).lower(): str(v) for k, v in headers.items()}, json.dumps(body).encode())


def _int(data: Mapping[str, object], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(data: Mapping[str, object], key: str) -> float | None:
    value = data.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _bad(message: str) -> ProviderBadResponseError:
    return ProviderBadResponseError(f"the worker's stream is broken: {message}", provider=PROVIDER)
