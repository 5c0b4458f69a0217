from __future__ import annotations

import errno
import os
import tracemalloc
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from obstore.exceptions import GenericError, PermissionDeniedError

from gateway.errors import StorageFullError
from gateway.images.storage import ImageStore
from gateway.images.store import failure_kind


async def test_signed_url_verifies_until_it_expires(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, "https://gw.example", b"k" * 32, ttl_s=3600)
    stored = await store.put(b"\x89PNG\r\n\x1a\nrest", "image/png")
    url = urlparse(store.signed_url(stored.name, now=1000.0))
    assert url.netloc == "gw.example" and url.path == f"/v1/files/images/{stored.name}"
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    expires = int(q["expires"])
    assert expires == 4600
    assert store.verify(stored.name, expires, q["sig"], now=4599)
    assert not store.verify(stored.name, expires, q["sig"], now=4601)
    assert not store.verify(stored.name, expires + 1, q["sig"], now=1000)  # tampered expiry
    assert store.path_of(stored.name) == stored.path and stored.path.read_bytes().startswith(b"\x89PNG")


async def test_other_keys_signatures_and_path_tricks_are_refused(tmp_path: Path) -> None:
    a = ImageStore(tmp_path, "http://x", b"a" * 32, ttl_s=60)
    b = ImageStore(tmp_path, "http://x", b"b" * 32, ttl_s=60)
    stored = await a.put(b"data", "image/jpeg")
    q = parse_qs(urlparse(a.signed_url(stored.name)).query)
    assert not b.verify(stored.name, int(q["expires"][0]), q["sig"][0])
    # Not hex at all: hmac.compare_digest raised TypeError on non-ASCII text (a 500 for the URL).
    assert not a.verify(stored.name, int(q["expires"][0]), "é" * 64)
    assert not a.verify("é.png", int(q["expires"][0]), q["sig"][0])
    assert a.path_of("../etc/passwd") is None
    assert a.path_of("nothing.png") is None
    assert a.path_of(stored.name.replace(".jpg", ".exe")) is None


async def test_sweep_removes_only_images_past_their_url_lifetime(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, "http://x", b"k" * 32, ttl_s=3600)
    old = await store.put(b"old", "image/png")
    new = await store.put(b"new", "image/png")
    os.utime(old.path, (1000.0, 1000.0))
    os.utime(new.path, (5000.0, 5000.0))
    assert store.sweep(now=1000.0 + 3600 + 61) == 1
    assert not old.path.exists() and new.path.exists()


def test_sweep_holds_one_entry_at_a_time_not_a_listing_of_the_folder(tmp_path: Path) -> None:
    # A listing of the whole folder (an hour of images) made each sweep leave the worker's heap
    # larger: the soak's RSS rose in steps every 5 minutes. Memory at the sweep's peak must not
    # grow with the number of files.
    store = ImageStore(tmp_path, "http://x", b"k" * 32, ttl_s=3600)
    names = [f"img_{i:032x}.png" for i in range(20_000)]  # as long as the store's own names
    for name in names:
        (tmp_path / name).touch()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        assert store.sweep(now=0.0) == 0  # nothing expired: every file looked at, none removed
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"{peak} bytes at the peak for {len(names)} files"  # a listing: ~2 MB
    os.utime(tmp_path / names[0], (1000.0, 1000.0))
    assert store.sweep(now=1000.0 + 3600 + 61) == 1 and not (tmp_path / names[0]).exists()


async def test_renew_signs_a_new_url_and_keeps_the_image_as_long_as_it(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, "http://x", b"k" * 32, ttl_s=3600)
    kept = await store.put(b"kept", "image/png")
    swept = await store.put(b"swept", "image/png")
    for stored in (kept, swept):
        os.utime(stored.path, (1000.0, 1000.0))
    url = store.renew(kept.name, now=4000.0)  # the first URL (expires 4600) is nearly gone
    assert url is not None
    q = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    assert int(q["expires"]) == 7600 and store.verify(kept.name, 7600, q["sig"], now=7599)
    # The sweep that takes the unrenewed image leaves the renewed one until its new URL expires.
    assert store.sweep(now=1000.0 + 3600 + 61) == 1
    assert kept.path.exists() and not swept.path.exists()
    assert store.sweep(now=7600 + 61) == 1 and not kept.path.exists()
    assert store.renew(swept.name) is None


async def test_sweep_leaves_a_folder_in_the_image_directory_alone(tmp_path: Path) -> None:
    # GATEWAY_IMAGE_STORE=file://<dir> keeps the ledger archive in <dir>/ledger: never swept, and
    # its presence does not stop the sweep of the images beside it.
    store = ImageStore(tmp_path, "http://x", b"k" * 32, ttl_s=3600)
    old = await store.put(b"old", "image/png")
    (tmp_path / "ledger" / "team_1").mkdir(parents=True)
    (tmp_path / "ledger" / "team_1" / "day.jsonl.gz").write_bytes(b"kept")
    for path in (old.path, tmp_path / "ledger"):
        os.utime(path, (1000.0, 1000.0))
    assert store.sweep(now=1000.0 + 3600 + 61) == 1
    assert not old.path.exists() and (tmp_path / "ledger" / "team_1" / "day.jsonl.gz").read_bytes() == b"kept"


async def test_a_put_refused_for_room_is_told_as_a_full_store(tmp_path: Path) -> None:
    errors: list[tuple[str, str]] = []
    store = ImageStore(tmp_path, "http://x", b"k" * 32, ttl_s=60, min_free_bytes=2**62,
                       on_error=lambda op, kind: errors.append((op, kind)))  # fmt: skip
    with pytest.raises(StorageFullError):
        await store.put(b"data", "image/png")
    assert errors == [("put", "full")] and list(tmp_path.iterdir()) == []


def test_store_failures_are_sorted_by_their_type_never_their_text() -> None:
    assert failure_kind(OSError(errno.ENOSPC, "No space left on device")) == "full"
    assert failure_kind(OSError(errno.EDQUOT, "Disk quota exceeded")) == "full"
    assert failure_kind(PermissionError(errno.EACCES, "Permission denied")) == "denied"
    assert failure_kind(PermissionDeniedError("403 Forbidden")) == "denied"
    assert failure_kind(ConnectionRefusedError(errno.ECONNREFUSED, "no space left, permission denied")) == "failed"
    assert failure_kind(GenericError("Access Denied")) == "failed"
