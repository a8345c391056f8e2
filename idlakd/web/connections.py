"""Connection hygiene: header and body timeouts, a cap on open connections, quiet bad requests.

What is enforced where:
- header timeout: aiohttp's keep-alive timer, set to header_timeout_seconds. It runs from the
  connection's start and from the end of each response, and it closes a connection that has
  not delivered a complete request head by then; bytes trickling in do not move it.
- body timeout: `body_deadline_middleware`, an absolute deadline from the moment the request's
  head was parsed; past it the body stream fails, the client gets 408 and the connection closes.
- max_connections: `GuardedRequestHandler.connection_made` closes connections beyond it at once.
- malformed requests: `GuardedRequestHandler.handle_error` answers 400 JSON, logs at DEBUG and
  counts them, instead of aiohttp's ERROR traceback for each.
- JSON everywhere: `GuardedRequestHandler.finish_response` turns an HTTP error raised outside
  the app's middlewares (an unknown `Expect`) into the JSON error shape, and names the server
  `idlakd` on answers that never reach the app (parser errors).
- accept() failures (EMFILE, ENFILE, ENOBUFS, ENOMEM): `AcceptErrorLog`, once a minute with a count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Final

from aiohttp import StreamReader, hdrs, web
from aiohttp.http import HttpProcessingError, RawRequestMessage

from idlakd.config import Config
from idlakd.web.access import Handler
from idlakd.web.http import (HTTP_MESSAGES, SERVER_NAME, error_for, error_response,
                             http_exception_message)
from idlakd.web.keys import config_key, metrics_key, started_response_key
from idlakd.web.ops.metrics import Metrics

log = logging.getLogger(__name__)

# What asyncio's accept loop passes to the loop's exception handler when accept() fails for
# want of descriptors or memory (it then retries after a second: one traceback a second).
ACCEPT_ERROR_MESSAGE: Final = "socket.accept() out of system resource"
ACCEPT_REPORT_SECONDS: Final = 60.0
# Descriptors kept for the daemon itself beyond max_connections: database, worker pipes,
# transcoders, cache files, /proc reads of the metrics.
DESCRIPTOR_RESERVE: Final = 512
# aiohttp reads (and drops) an unread request body for this long before closing (its default: 10).
LINGERING_SECONDS: Final = 10.0
# Headers of an HTTP error that still mean something in its JSON form.
KEPT_ERROR_HEADERS: Final = frozenset({"allow", "retry-after", "www-authenticate"})

RequestCallback = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """The connection settings, in seconds and counts."""

    header_timeout: float
    body_timeout: float
    max_connections: int

    @classmethod
    def from_config(cls, config: Config) -> ConnectionLimits:
        """The limits the settings ask for."""
        return cls(config.header_timeout_seconds, config.body_timeout_seconds,
                   config.max_connections)


class BodyTimeout(TimeoutError):
    """Set on a request's body stream when the body did not arrive in time.

    A TimeoutError, because aiohttp's lingering read after the response treats exactly that
    as "give up and close" instead of logging an unhandled exception.
    """


class ConnectionGate:
    """Counts open connections against max_connections, and what was refused or malformed."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.open = 0
        self._metrics = metrics

    def admit(self) -> bool:
        """Take a place for a new connection; False (and counted) when all are taken."""
        if self.open >= self.limit:
            self._metrics.connections_rejected.inc()
            return False
        self.open += 1
        self._metrics.connections_open.set(self.open)
        return True

    def release(self) -> None:
        """Give back the place of a connection that closed."""
        self.open -= 1
        self._metrics.connections_open.set(self.open)

    def malformed(self) -> None:
        """Count a request the HTTP parser refused."""
        self._metrics.malformed_requests.inc()


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's protocol, plus the connection cap and quiet answers to malformed requests."""

    def __init__(self, manager: GuardedServer, *, loop: asyncio.AbstractEventLoop,
                 **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._gate = manager.gate
        self._admitted = False
        self._unlogged: web.StreamResponse | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Serve the connection, or close it at once when max_connections are open."""
        if not self._gate.admit():
            # Never registered with the server: connection_lost sees no manager and returns.
            self._manager = None
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Free the connection's place."""
        if self._admitted:
            self._admitted = False
            self._gate.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse as aiohttp does; a body that goes bad mid-request fails now, not at its timeout."""
        super().data_received(data)
        # llhttp reports bad chunking in a body whose head came in an earlier packet as a
        # parse error of its own, queued behind the request, and leaves that request's body
        # waiting for bytes that will never be valid. Fail the body, answer once, then close.
        request = self._current_request
        if (request is None or not self._messages
                or isinstance(self._messages[-1][0], RawRequestMessage)
                or request.content.is_eof()):
            return
        self._messages.pop()
        self._gate.malformed()
        log.debug("Malformed request body from %s", request.remote)
        request.content.set_exception(web.RequestPayloadError("malformed request body"))
        request.content.feed_eof()  # nothing left to linger over
        self.close()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A malformed request or a vanished client: DEBUG log and JSON, never a traceback."""
        if isinstance(exc, HttpProcessingError):
            self._gate.malformed()
            # The parser's message quotes the client's bytes (headers may hold credentials).
            log.debug("Malformed request from %s: %s (%d)", request.remote,
                      type(exc).__name__, status)
            response = self._closing_error(request, status, HTTP_MESSAGES[400])
            self._unlogged = response  # no access-log line either: /metrics counts them
            return response
        if isinstance(exc, ConnectionError):
            log.debug("Client %s went away during the request: %s", request.remote, exc)
            return self._closing_error(request, status, HTTP_MESSAGES[500])
        # Past the app's error middleware (which answers everything it sees): aiohttp's own
        # answer would be text or HTML.
        log.error("Error handling request from %s", request.remote, exc_info=exc)
        return self._closing_error(
            request, status, HTTP_MESSAGES.get(status, HTTPStatus(status).phrase))

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        """Send a response; one that aiohttp made itself gets the JSON shape and our Server."""
        if isinstance(resp, web.HTTPException) and resp.status >= 400 and not resp.prepared:
            # Raised before the middlewares ran (an unknown Expect: 417): the contract's shape.
            kept = {k: v for k, v in resp.headers.items() if k.lower() in KEPT_ERROR_HEADERS}
            message = (http_exception_message(resp, request)
                       if isinstance(request, web.Request) else HTTP_MESSAGES.get(
                           resp.status, resp.reason))
            resp = error_response(resp.status, message, kept)
        if not resp.prepared:
            resp.headers[hdrs.SERVER] = SERVER_NAME
        return await super().finish_response(request, resp, start_time)

    def _closing_error(self, request: web.BaseRequest, status: int,
                       text: str) -> web.StreamResponse:
        """The {"message"} answer, with the connection closed after it."""
        if request.writer.output_size > 0:
            # As aiohttp does: a response already started cannot be replaced.
            raise ConnectionError("response already started; connection dropped")
        response = error_response(status, text)
        response.force_close()
        return response

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse,
                   time: float | None) -> None:
        """The access log, except for malformed requests (debug log and metric instead)."""
        if response is self._unlogged:
            self._unlogged = None
            return
        super().log_access(request, response, time)


class GuardedServer(web.Server):
    """aiohttp's low-level server, making GuardedRequestHandler protocols."""

    def __init__(self, handler: RequestCallback, *, gate: ConnectionGate, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.gate = gate

    def __call__(self) -> GuardedRequestHandler:
        """The protocol for one new connection."""
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


class ConnectionRunner(web.AppRunner):
    """An AppRunner whose connections obey ConnectionLimits."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any) -> None:
        # The keep-alive timer is aiohttp's only guard on a connection waiting for a request
        # head (new or kept alive): it is the header timeout.
        kwargs["keepalive_timeout"] = limits.header_timeout
        kwargs["lingering_time"] = min(LINGERING_SECONDS, limits.body_timeout)
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        """The app's server (after its startup), rebuilt as a GuardedServer."""
        stock = await super()._make_server()
        gate = ConnectionGate(self._limits.max_connections, self.app[metrics_key])
        # _kwargs: the handler settings aiohttp gathered (ours, the app's debug and handler_args).
        return GuardedServer(stock.request_handler, gate=gate,
                             request_factory=stock.request_factory,
                             handler_cancellation=stock.handler_cancellation, **stock._kwargs)


def _expire_body(content: StreamReader, seconds: float) -> None:
    """The body deadline passed: fail the body stream unless it is complete."""
    if not content.is_eof():
        content.set_exception(BodyTimeout(f"request body not received within {seconds:g} s"))


@web.middleware
async def body_deadline_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A body must arrive within body_timeout_seconds of its request head, else 408 and close."""
    content = request.content
    if not request.body_exists or content.is_eof():
        return await handler(request)
    seconds = request.app[config_key].body_timeout_seconds
    # Absolute: a byte now and then must not keep the request (and its memory) alive.
    timer = asyncio.get_running_loop().call_later(seconds, _expire_body, content, seconds)
    try:
        return await handler(request)
    except BodyTimeout:
        request.app[metrics_key].body_timeouts.inc()
        log.debug("Request body from %s not received within %g s", request.remote, seconds)
        if request.get(started_response_key) is not None:
            raise ConnectionResetError("request body timed out after the response started")
        response = error_for(
            request, 408, f"The request body did not arrive within {seconds:g} seconds")
        response.force_close()
        return response
    finally:
        timer.cancel()


class AcceptErrorLog:
    """Loop exception handler: accept() failures logged once a minute with a count, not each."""

    def __init__(self, metrics: Metrics, interval: float = ACCEPT_REPORT_SECONDS) -> None:
        self._metrics = metrics
        self._interval = interval
        self._count = 0
        self._last: BaseException | None = None
        self._window: asyncio.TimerHandle | None = None
        self._previous: Any = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Become the loop's exception handler (others go on to the previous one)."""
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        """Restore the previous handler and report what the window still holds."""
        loop.set_exception_handler(self._previous)
        if self._window is not None:
            self._window.cancel()
            self._window = None
            self._flush()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Count and rate-limit accept failures; pass anything else on."""
        if context.get("message") != ACCEPT_ERROR_MESSAGE:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self._metrics.accept_errors.inc()
        exception = context.get("exception")
        if self._window is None:
            log.error("Cannot accept new connections: %s (new clients wait in the backlog; "
                      "asyncio retries every second; further failures are reported once "
                      "every %g s)", exception, self._interval)
            self._window = loop.call_later(self._interval, self._report, loop)
            return
        self._count += 1
        self._last = exception

    def _report(self, loop: asyncio.AbstractEventLoop) -> None:
        """End of a window: one line with the count, and a new window if there was any."""
        self._window = (loop.call_later(self._interval, self._report, loop)
                        if self._flush() else None)

    def _flush(self) -> bool:
        """Log the failures counted since the last line, if any; whether there were."""
        if self._count == 0:
            return False
        log.error("accept() failed %d more times in the last %g s (last: %s)",
                  self._count, self._interval, self._last)
        self._count, self._last = 0, None
        return True


def ensure_descriptors(max_connections: int) -> None:
    """Raise the soft RLIMIT_NOFILE to fit max_connections (up to the hard limit); warn if short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + DESCRIPTOR_RESERVE
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("Could not raise the open-file limit to %d: %s", target, exc)
    if soft < wanted:
        log.warning("max_connections is %d but only %d file descriptors are allowed "
                    "(LimitNOFILE=); past about %d connections accept() fails and new clients "
                    "wait", max_connections, soft, max(soft - DESCRIPTOR_RESERVE, 0))
