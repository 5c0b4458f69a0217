"""An edit's multipart/form-data body, read into memory as it arrives: python-multipart's parser,
each file part copied once, as it arrives, into a buffer as large as what is left of the declared
body (trimmed to the part when it ends), so that an upload is held once.

Starlette's MultiPartParser writes each file part into a SpooledTemporaryFile through an UploadFile
(an await per piece), and the edit then reads it back whole: for a 10 MiB upload, a copy of every
piece, the temporary file's copies as it grows, and the read, which measured as most of the
gateway's own work on an edit (`bench.perf bytes --cases edits`). Here a piece is copied once, into
the part's buffer, and a part past its limit is refused as it arrives, not after it was read.
Without a declared length (a chunked body) a part's pieces are kept and joined when it ends.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.types import Receive

from gateway.api.request_body import read_body
from gateway.errors import InvalidRequestError, PayloadTooLargeError
from providers.base import ImageBytes

IMAGE_FIELDS = ("image", "image[]")


@dataclass(frozen=True, slots=True)
class FormLimits:
    max_files: int
    max_fields: int
    max_field_bytes: int  # a text field's value
    max_file_bytes: int  # one file part


@dataclass(slots=True)
class EditForm:
    fields: list[tuple[str, str]] = field(default_factory=list)  # text fields, in the order sent
    files: list[tuple[str, ImageBytes]] = field(default_factory=list)  # (field name, bytes), in the order sent


def file_param(name: str) -> str:
    """The OpenAI parameter a file part is for: image[] (the SDK's name for several) is `image`."""
    return "image" if name in IMAGE_FIELDS else name


def malformed(message: str) -> InvalidRequestError:
    return InvalidRequestError(f"Malformed multipart body: {message}", code="invalid_multipart")


class _Reader:
    """python-multipart's callbacks, building the form as the body is fed to the parser."""

    def __init__(self, limits: FormLimits, charset: str, declared: int | None) -> None:
        self._limits = limits
        self._charset = charset
        self._declared = declared  # the body's length, when the caller said it
        self.form = EditForm()
        self.fed = 0  # bytes of the body fed to the parser before the piece being fed
        self.chunk: bytes = b""  # the piece being fed: slices of it are kept as views, not copies
        self._buffer: bytearray | None = None  # the file part's, when the body's length is known
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._pieces: list[bytes | memoryview] = []
        self._size = 0

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_header_field": self._header_field,
            "on_header_value": self._header_field_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._pieces, self._size = [], 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_field_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise malformed('a part has no Content-Disposition "name".')
        self._name = self._decode(options[b"name"])
        self._is_file = b"filename" in options
        form, limits = self.form, self._limits
        if self._is_file and len(form.files) >= limits.max_files:
            raise malformed(f"more than {limits.max_files} files.")
        if not self._is_file and len(form.fields) >= limits.max_fields:
            raise malformed(f"more than {limits.max_fields} fields.")
        self._buffer = None
        if self._is_file and self._declared is not None:
            # what is left of the body bounds the part (and its limit does: past it, it is refused)
            self._buffer = bytearray(max(0, min(self._declared - self.fed, limits.max_file_bytes)))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._is_file and self._size > self._limits.max_file_bytes:
            param = file_param(self._name)
            raise PayloadTooLargeError(f"'{param}' is larger than {self._limits.max_file_bytes} bytes.", param=param)
        if not self._is_file and self._size > self._limits.max_field_bytes:
            raise InvalidRequestError(
                f"'{self._name}' is longer than {self._limits.max_field_bytes} bytes.", param=self._name
            )
        buffer = self._buffer
        if buffer is not None and self._size <= len(buffer):
            buffer[self._size - (end - start) : self._size] = memoryview(data)[start:end]
            return
        if buffer is not None:  # longer than the body said: never, as the server holds it to its length
            self._pieces.append(bytes(buffer[: self._size - (end - start)]))
            self._buffer = None
        # The piece fed is kept alive by its view until the part is joined; anything else the
        # parser hands over (its own buffer, across a boundary split between pieces) is copied.
        self._pieces.append(memoryview(data)[start:end] if data is self.chunk else data[start:end])

    def _part_end(self) -> None:
        data: ImageBytes
        if self._buffer is not None:
            data, self._buffer = self._buffer, None
            del data[self._size :]  # trimmed in place (the allocator shrinks it without a copy)
        else:
            data = b"".join(self._pieces)
        self._pieces = []
        if self._is_file:
            self.form.files.append((self._name, data))
        else:
            self.form.fields.append((self._name, self._decode(bytes(data))))

    def _decode(self, raw: bytes) -> str:
        try:  # as Starlette decodes a field: the body's charset, or latin-1 if that fails
            return raw.decode(self._charset)
        except UnicodeDecodeError:
            return raw.decode("latin-1")


async def read_edit_form(
    content_type: str, receive: Receive, limits: FormLimits, declared: int | None = None
) -> EditForm:
    """The form, from the request's `receive` (`declared`: its content-length); 400 invalid_multipart
    for a body that is not one, 413 naming the file past its limit, ClientDisconnect if the caller
    leaves meanwhile."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise malformed("no boundary in its Content-Type.")
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "latin-1"
    reader = _Reader(limits, charset, declared)
    parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]

    def take(piece: bytes) -> None:
        reader.chunk = piece
        parser.write(piece)
        reader.fed += len(piece)

    try:
        await read_body(receive, take)
    except FormParserError as exc:
        raise malformed(f"{exc}.") from None
    finally:
        reader.chunk = b""
    if parser.state != MultipartState.END:
        raise malformed("it ends before its closing boundary.")
    return reader.form
