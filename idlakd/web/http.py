"""JSON responses, request ids, the access log, and the one middleware that answers every failure."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any, Final, Mapping

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger

from idlakd.errors import IdlakdError
from idlakd.web.access import Handler as Handler  # re-exported: the middlewares' type
from idlakd.web.admin.pages import error_page, is_admin_path, sign_in_redirect
from idlakd.web.admin.session import SignInRequired
from idlakd.web.errors import headers_of, is_openai_path, openai_error, status_of
from idlakd.web.keys import (access_key, request_id_key, request_start_key, runtime_key,
                             started_response_key, user_id_key)
from idlakd.web.proxies import client_address

log = logging.getLogger(__name__)
access_log = logging.getLogger("idlakd.access")
PROBE_PATHS: Final = frozenset({"/healthz", "/readyz"})
ACCESS_FORMAT: Final = '%s "%s %s" %d %dB %.1fms rid=%s uid=%s'
# nginx's status for a client that closed the connection before any answer.
CLIENT_CLOSED: Final = 499
# The Server header of every response: no versions for a scanner to match against advisories.
SERVER_NAME: Final = "idlakd"

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


def error_for(request: web.Request, status: int, message: str,
              headers: Mapping[str, str] | None = None, code: str | None = None) -> web.Response:
    """The error answer of a request's door: OpenAI's shape on /v1/..., else the one shape."""
    if is_openai_path(request.path):
        return json_response(openai_error(status, message, code), status=status, headers=headers)
    return error_response(status, message, headers, code)


def request_id(request: web.Request) -> str:
    """The request's id: the client's X-Request-Id when sane, else a new one."""
    rid = request.get(request_id_key)
    if rid is None:
        incoming = request.headers.get("X-Request-Id", "")
        rid = incoming if _REQUEST_ID_RE.match(incoming) else request.app[runtime_key].new_request_id()
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


def wants_page(request: web.Request) -> bool:
    """Whether errors are an HTML page: the admin page's routes, except its fetch() calls."""
    if not is_admin_path(request.path):
        return False
    return request.app[access_key].get(request.match_info.route) != "fetch"


def _http_error(request: web.Request, exc: web.HTTPException, page: bool) -> web.Response:
    """An error aiohttp raised itself (404, 405, 413...), with its meaningful headers."""
    message = http_exception_message(exc, request)
    kept = {k: v for k, v in exc.headers.items()
            if k.lower() in ("allow", "retry-after", "www-authenticate")}
    # An admin URL typed into a browser gets a page; API clients keep the contract's JSON.
    if page and "text/html" in request.headers.get("Accept", ""):
        response = error_page(request, exc.status, message)
        response.headers.update({k: v for k, v in kept.items() if k.lower() != "www-authenticate"})
        return response
    return error_for(request, exc.status, message, kept)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes the door's JSON error (OpenAI's shape on /v1), or a page on /admin."""
    response = await _answer(request, handler)
    body = request.content
    if (not response.prepared and hdrs.CONTENT_ENCODING in request.headers
            and (not body.is_eof() or body.exception() is not None)):
        # aiohttp drains an unread (or broken) body after the answer, and a compressed one
        # that does not decompress ends that drain with an error that drops the connection:
        # the client is told to close it, so its next request does not die on it.
        response.force_close()
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer, or the JSON error (or page) its failure maps to."""
    request_id(request)
    try:
        if "\x00" in request.path:
            # No stored name can hold NUL (PostgreSQL's text refuses it): nothing is there.
            raise web.HTTPNotFound()
        return await handler(request)
    except asyncio.CancelledError:
        # aiohttp writes no access line for a handler cancelled because its client left
        # (handler_cancellation) or at the end of the shutdown grace: write it here.
        log_cancelled(request)
        raise
    except Exception as exc:
        started = request.get(started_response_key)
        if started is not None:  # a JSON answer now would land inside the audio body
            return _cut_started_stream(request, started, exc)
        if isinstance(exc, ConnectionError):  # the client is gone: nobody to answer
            raise
        page = wants_page(request)
        if isinstance(exc, SignInRequired):
            return sign_in_redirect(request, exc.reason)
        if isinstance(exc, IdlakdError):
            if page:
                response = error_page(request, status_of(exc), exc.message)
                response.headers.update(headers_of(exc))
                return response
            return error_for(request, status_of(exc), exc.message, headers_of(exc), exc.code)
        if isinstance(exc, web.HTTPException):
            if exc.status < 400:
                raise
            return _http_error(request, exc, page)
        # The one broad except: log the traceback with the request id, never send it.
        log.exception("Unhandled error in %s %s [request %s]",
                      request.method, request.path, request[request_id_key])
        if page:
            return error_page(request, 500, HTTP_MESSAGES[500])
        return error_for(request, 500, HTTP_MESSAGES[500])


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, streams included, carries X-Request-Id; remember that it has started."""
    response.headers["X-Request-Id"] = request_id(request)
    response.headers["Server"] = SERVER_NAME  # aiohttp would send its and Python's versions
    request[started_response_key] = response


def log_cancelled(request: web.Request) -> None:
    """The access line of a request whose handler was cancelled: the status it had sent, else 499."""
    started = request.get(started_response_key)
    status = started.status if started is not None else CLIENT_CLOSED
    size = started.body_length if started is not None else 0
    began = request.get(request_start_key)
    took = time.perf_counter() - began if began is not None else 0.0
    access_log.info(ACCESS_FORMAT, client_address(request), request.method,
                    request.rel_url.raw_path, status, size, took * 1000,
                    request.get(request_id_key, "-"), request.get(user_id_key, "-"))


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path, status, bytes, duration, request id, user id."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the line; never headers, bodies, tokens or query strings (they may hold text).

        A balancer's probes (/healthz, /readyz: one every few seconds per balancer, for ever)
        are DEBUG lines; a failing probe's cause is logged as a warning by the check itself.
        """
        level = logging.DEBUG if request.path in PROBE_PATHS else logging.INFO
        self.logger.log(
            level, ACCESS_FORMAT,
            # raw_path: still percent-encoded, so a %0A in the URL cannot forge a log line.
            client_address(request), request.method, request.rel_url.raw_path, response.status,
            response.body_length, time * 1000, request.get(request_id_key, "-"),
            request.get(user_id_key, "-"))

    @property
    def enabled(self) -> bool:
        """Only when the access logger would emit INFO lines (probes' DEBUG lines need those too)."""
        return self.logger.isEnabledFor(logging.INFO)
