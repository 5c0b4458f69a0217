"""The README's compatibility table says what happens to every parameter; this keeps it true
against the code's own tables (gateway/images/parameters.py)."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.images.parameters import IGNORED_ENUMS, IGNORED_TEXT, READ

README = Path(__file__).resolve().parents[2] / "README.md"


def _rows() -> dict[str, str]:
    text = README.read_text()
    table = text.split("<!-- compatibility table: start -->")[1].split("<!-- compatibility table: end -->")[0]
    rows = {}
    for line in table.splitlines():
        m = re.fullmatch(r"\| `([a-z_]+)` \| ([a-z]+)\b.*\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_every_parameter_the_gateway_knows_has_a_row_and_the_row_is_right() -> None:
    rows = _rows()
    ignored = set(IGNORED_ENUMS) | IGNORED_TEXT
    assert set(rows) == READ | ignored, "README table and gateway/images/parameters.py disagree"
    for name, kind in rows.items():
        assert (kind == "ignored") == (name in ignored), f"{name}: README says {kind}"


def test_enum_values_in_the_table_are_the_accepted_ones() -> None:
    text = README.read_text()
    for name, values in IGNORED_ENUMS.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        for shown in re.findall(r"`([a-z]+)`", row.split("|")[2]):
            assert shown in values, f"README lists {shown!r} for {name}, which the gateway refuses"
