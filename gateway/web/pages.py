"""The pages (/, /team, /admin) and their static assets, with a strict Content-Security-Policy.

The shells hold no user data and no key: the key lives in the tab's sessionStorage and goes out
only as a Bearer header from the scripts, so every page is the same for everyone and is rendered
once, when the router is built. Every script is a file under static/ (no inline script, no CDN)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import Response
from jinja2 import Environment, PackageLoader, select_autoescape

from gateway.errors import NotFoundError

# No inline script or style, nothing from another origin, no framing, no form posts.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cache-control": "no-store",
}
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
PAGES = {"/": "playground", "/team": "team", "/admin": "admin"}
TITLES = {"playground": "Playground", "team": "Team", "admin": "Admin"}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    assets: dict[str, Asset] = {}
    for item in resources.files("gateway.web").joinpath("static").iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in TYPES:
            body = item.read_bytes()
            assets[item.name] = Asset(body, TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    return assets


def render_pages(assets: dict[str, Asset]) -> dict[str, bytes]:
    env = Environment(loader=PackageLoader("gateway.web"), autoescape=select_autoescape(default=True))
    # The assets' hashes in their URLs: a new release is never served a cached old script.
    version = hashlib.sha256(b"".join(a.etag.encode() for a in assets.values())).hexdigest()[:12]
    nav = [(path, name, TITLES[name]) for path, name in PAGES.items()]
    return {
        path: env.get_template(f"{name}.html").render(page=name, version=version, nav=nav).encode()
        for path, name in PAGES.items()
    }


def web_router() -> APIRouter:
    assets = load_assets()
    pages = render_pages(assets)
    router = APIRouter(include_in_schema=False)

    async def page(request: Request) -> Response:
        return Response(pages[request.url.path], media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    for path in PAGES:
        router.add_api_route(path, page, methods=["GET"], include_in_schema=False)

    @router.get("/static/{name}")
    async def static(name: str, request: Request) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise NotFoundError(f"No static file '{name}'.", code="not_found")
        headers = {**PAGE_HEADERS, "etag": asset.etag, "cache-control": "no-cache"}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    return router
