"""JSON responses, request ids, and the one middleware that turns every failure into JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from typing import Any, Awaitable, Callable, Final, Mapping

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from idlakd.errors import APIError
from idlakd.web.keys import request_id_key, started_response_key, user_id_key

log = logging.getLogger(__name__)
access_log = logging.getLogger("idlakd.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REQUEST_ID_RE: Final = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# Texts of the original (Flask) server for the errors aiohttp raises itself.
HTTP_MESSAGES: Final[Mapping[int, str]] = {
    400: "The browser (or proxy) sent a request that this server could not understand.",
    404: "The requested URL was not found on the server. If you entered the URL manually "
         "please check your spelling and try again.",
    405: "The method is not allowed for the requested URL.",
    500: "The server encountered an internal error and was unable to complete your request. "
         "Either the server is overloaded or there is an error in the application.",
}


def json_response(data: Any, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON response with exactly `Content-Type: application/json`."""
    if status == 204:
        return web.Response(status=204, headers=headers)
    body = json.dumps(data, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, headers=headers,
                        content_type="application/json")


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None,
                   code: str | None = None) -> web.Response:
    """The one error shape: {"message": ...} (plus an optional machine code)."""
    data: dict[str, str] = {"message": message}
    if code:
        data["code"] = code
    return json_response(data, status=status, headers=headers)


def request_id(request: web.Request) -> str:
    """The request's id: the client's X-Request-Id when sane, else a new one."""
    rid = request.get(request_id_key)
    if rid is None:
        incoming = request.headers.get("X-Request-Id", "")
        rid = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        request[request_id_key] = rid
    return rid


def http_exception_message(exc: web.HTTPException, request: web.Request) -> str:
    """A helpful message for an error aiohttp raised itself."""
    if exc.status == 413:
        return f"Request body is too large: the limit is {request.client_max_size} bytes"
    return HTTP_MESSAGES.get(exc.status, exc.reason)


def _cut_started_stream(request: web.Request, response: web.StreamResponse,
                        exc: Exception) -> web.StreamResponse:
    """A failure after the status line: abort, so the client sees an incomplete body."""
    if isinstance(exc, ConnectionError):
        log.info("Client went away during %s %s [request %s]: %s",
                 request.method, request.path, request[request_id_key], exc)
    else:
        log.exception("Error after the response started in %s %s [request %s]; "
                      "connection aborted", request.method, request.path,
                      request[request_id_key])
    if request.transport is not None:
        request.transport.abort()
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Translate APIError, aiohttp's HTTP errors and crashes into {"message"} JSON."""
    request_id(request)
    try:
        return await handler(request)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        started = request.get(started_response_key)
        if started is not None:  # a JSON answer now would land inside the audio body
            return _cut_started_stream(request, started, exc)
        if isinstance(exc, ConnectionError):  # the client is gone: nobody to answer
            raise
        if isinstance(exc, APIError):
            return error_response(exc.status, exc.message, exc.headers, exc.code)
        if isinstance(exc, web.HTTPException):
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items()
                       if k.lower() in ("allow", "retry-after", "www-authenticate")}
            return error_response(exc.status, http_exception_message(exc, request), headers)
        # The one broad except: log the traceback with the request id, never send it.
        log.exception("Unhandled error in %s %s [request %s]",
                      request.method, request.path, request[request_id_key])
        return error_response(500, HTTP_MESSAGES[500])


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, streams included, carries X-Request-Id; remember that it has started."""
    response.headers["X-Request-Id"] = request_id(request)
    request[started_response_key] = response


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path, status, bytes, duration, request id, user id."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the line; never headers, bodies, tokens or query strings (they may hold text)."""
        self.logger.info(
            '%s "%s %s" %d %dB %.1fms rid=%s uid=%s',
            # raw_path: still percent-encoded, so a %0A in the URL cannot forge a log line.
            request.remote or "-", request.method, request.rel_url.raw_path, response.status,
            response.body_length, time * 1000, request.get(request_id_key, "-"),
            request.get(user_id_key, "-"))

    @property
    def enabled(self) -> bool:
        """Only when the access logger would emit INFO lines."""
        return self.logger.isEnabledFor(logging.INFO)
