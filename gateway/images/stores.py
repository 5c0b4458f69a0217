"""The image store the settings name: GATEWAY_IMAGE_STORE unset or file://<dir> is the local
directory, s3://<bucket>/<prefix> the object store. The ledger archive's objects go to the same
place unless GATEWAY_LEDGER_ARCHIVE names another."""

from __future__ import annotations

from pathlib import Path

from gateway.images.blobs import Blobs, FileBlobs, S3Blobs
from gateway.images.object_store import S3ImageStore, open_s3
from gateway.images.storage import ImageStore
from gateway.images.store import ImageStorage, OnStoreError
from gateway.settings import Settings


class StoreConfigError(ValueError):
    """GATEWAY_IMAGE_STORE or GATEWAY_IMAGE_URLS names something the gateway cannot use."""


def open_image_store(settings: Settings, signing_key: bytes, on_error: OnStoreError | None = None) -> ImageStorage:
    where = settings.image_store or ""
    if where == "" or where.startswith("file://"):
        if settings.image_urls == "presigned":
            raise StoreConfigError(
                "GATEWAY_IMAGE_URLS=presigned needs an object store (GATEWAY_IMAGE_STORE=s3://<bucket>/<prefix>); "
                "a local directory has no presigned URLs."
            )
        root = Path(where.removeprefix("file://")) if where else settings.data_dir / "images"
        return ImageStore(
            root,
            settings.public_url,
            signing_key,
            settings.image_url_ttl_s,
            min_free_bytes=settings.image_store_min_free_bytes,
            on_error=on_error,
        )
    if where.startswith("s3://"):
        bucket = where.removeprefix("s3://").split("/", 1)[0]
        if not bucket:
            raise StoreConfigError(f"GATEWAY_IMAGE_STORE={where!r} names no bucket: use s3://<bucket>/<prefix>.")
        return S3ImageStore(
            open_s3(where, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region),
            settings.public_url,
            signing_key,
            settings.image_url_ttl_s,
            presigned=settings.image_urls == "presigned",
            on_error=on_error,
        )
    raise StoreConfigError(f"GATEWAY_IMAGE_STORE={where!r}: use file://<dir> or s3://<bucket>/<prefix>.")


def open_archive_blobs(settings: Settings, on_error: OnStoreError | None = None) -> Blobs:
    """Where the ledger archive keeps its objects (under `ledger/`): GATEWAY_LEDGER_ARCHIVE, else
    the image store's directory or bucket prefix, else the data dir (beside `images/`)."""
    where = settings.ledger_archive or settings.image_store or ""
    if where == "":
        return FileBlobs(settings.data_dir, on_error)
    if where.startswith("file://"):
        return FileBlobs(Path(where.removeprefix("file://")), on_error)
    if where.startswith("s3://"):
        if not where.removeprefix("s3://").split("/", 1)[0]:
            raise StoreConfigError(f"{where!r} names no bucket: use s3://<bucket>/<prefix>.")
        bucket = open_s3(where, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
        return S3Blobs(bucket, where, on_error)
    raise StoreConfigError(f"GATEWAY_LEDGER_ARCHIVE={where!r}: use file://<dir> or s3://<bucket>/<prefix>.")
