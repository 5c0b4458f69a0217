"""Server-Sent Events as a test reads them: every event and comment, in order, event names kept."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sse:
    event: str | None  # None: a comment (or an event without a name)
    data: str
    comment: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


def parse(text: str) -> list[Sse]:
    """Each block of a text/event-stream body: a comment block (': keep-alive') or an event."""
    out: list[Sse] = []
    for block in text.split("\n\n"):
        if not block.strip("\n"):
            continue
        event: str | None = None
        data: list[str] = []
        comment: str | None = None
        for line in block.split("\n"):
            if not line:  # a stray newline, where lines were joined back together
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "":
                comment = value
            elif name == "event":
                event = value
            elif name == "data":
                data.append(value)
        out.append(Sse(event, "\n".join(data), comment))
    return out
