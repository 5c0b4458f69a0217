"""A request's body, read from ASGI's receive() a piece at a time: the one loop the JSON bodies
(api/images.py) and the edit forms (api/edit_form.py) both read through.

Not an async generator (as Starlette's Request.stream() is): the event loop registers each one it
sees in a WeakSet, to close it at shutdown, a cost on every request for nothing here."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import ClientDisconnect
from starlette.types import Receive


async def read_body(receive: Receive, take: Callable[[bytes], object]) -> None:
    """Hands each non-empty piece of the body to `take` as it arrives, until the last; raises
    ClientDisconnect if the caller leaves before it (http.disconnect)."""
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        more = message.get("more_body", False)
        piece: bytes = message.get("body", b"")
        if piece:
            take(piece)
