"""GET /: browsers go to the admin page, API clients get a small JSON index of where to go."""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from idlakd import __version__
from idlakd.web.http import json_response

ADMIN_PAGE: Final = "/admin"
LINKS: Final = {"docs": "/docs", "openapi": "/openapi.json", "admin": ADMIN_PAGE,
                "health": "/healthz", "ready": "/readyz"}
INDEX: Final[dict[str, Any]] = {"name": "idlakd", "version": __version__, "links": LINKS}


async def index(request: web.Request) -> web.Response:
    """GET /: a redirect to /admin for a browser (it asks for text/html), else the JSON index."""
    # The answer depends on Accept: caches must keep the two apart.
    headers = {"Vary": "Accept"}
    if "text/html" in request.headers.get("Accept", ""):
        return web.Response(status=302, headers={**headers, "Location": ADMIN_PAGE})
    return json_response(INDEX, headers=headers)
