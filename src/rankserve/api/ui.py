"""The pages a person opens: the playground at ``/`` and the API docs at ``/docs`` and ``/redoc``.

Everything they load comes from this server, never a CDN, because NIM-style deployments are often
air-gapped: Swagger UI's and ReDoc's bundles are the files the ``fastapi-offline`` package ships
(served from its folder under ``/ui/vendor``), the playground's own HTML, script and style sheet live
in ``api/static`` (under ``/ui``). Each page carries a Content-Security-Policy that allows only this
origin, so a stray remote reference fails loudly in the browser instead of leaking a request.
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

# The playground has no inline script or style; the docs pages' own bootstrap is inline (FastAPI
# writes it) and Swagger UI / ReDoc set inline styles and use data: images and blob: workers.
PLAYGROUND_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def vendor_dir() -> Path:
    """Where Swagger UI's and ReDoc's bundles are installed (the ``fastapi-offline`` package)."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


@functools.cache
def offline_redoc() -> bytes:
    """ReDoc's bundle with its one remote reference, the Redocly logo in the menu's footer (no option
    turns it off), pointed at the local favicon: the browser test caught the request it made."""
    bundle = (vendor_dir() / "redoc.standalone.js").read_bytes()
    return bundle.replace(b"https://cdn.redoc.ly/redoc/logo-mini.svg", b"/ui/vendor/favicon.png")


def install_ui(app: FastAPI) -> None:
    """Add ``/``, ``/docs``, ``/redoc`` and their assets to ``app`` (created with docs_url=None)."""
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/ui/vendor/redoc.standalone.js", include_in_schema=False)  # before the mount: routes match in order
    async def redoc_bundle() -> Response:
        return Response(offline_redoc(), media_type="text/javascript; charset=utf-8")

    app.mount("/ui/vendor", StaticFiles(directory=vendor_dir()), name="ui-vendor")
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(
            STATIC / "playground.html", headers={"Content-Security-Policy": PLAYGROUND_CSP, "Cache-Control": "no-cache"}
        )

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title}: API docs",
            swagger_js_url="/ui/vendor/swagger-ui-bundle.js",
            swagger_css_url="/ui/vendor/swagger-ui.css",
            swagger_favicon_url="/ui/vendor/favicon.png",
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title}: API reference",
            redoc_js_url="/ui/vendor/redoc.standalone.js",
            redoc_favicon_url="/ui/vendor/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page
