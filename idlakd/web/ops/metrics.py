"""Prometheus metrics on the app: the timing middleware, the first-byte hook, GET /metrics."""

from __future__ import annotations

import ipaddress
import time
from typing import Final

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from idlakd.errors import NotPermitted
from idlakd.web.http import Handler
from idlakd.web.ops.instruments import Metrics, SynthCollector
from idlakd.web.keys import config_key, metrics_key, request_start_key, synth_key

__all__ = ["Metrics", "is_local", "is_loopback", "metrics_handler", "metrics_middleware",
           "route_label", "setup_metrics"]


KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SPEECH_ROUTE: Final = "/speech"


def route_label(request: web.Request) -> str:
    """The route template ('/users/{uid}'), never the raw path, so labels stay few."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"  # 404 and 405 answered by aiohttp itself
    return resource.canonical


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request and time it, by route template, method and final status."""
    metrics = request.app[metrics_key]
    start = time.perf_counter()
    request[request_start_key] = start
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        # Only redirects and the like get here; error_middleware turns errors into responses.
        status = exc.status
        raise
    except BaseException:
        # Cancelled (client gone, or shutdown) or an error past the error middleware.
        status = 499
        raise
    finally:
        route = route_label(request)
        method = request.method if request.method in KNOWN_METHODS else "OTHER"
        metrics.answered(route, method, str(status), time.perf_counter() - start)


async def observe_first_byte(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: a streamed /speech sends its headers with its first audio."""
    start = request.get(request_start_key)
    if (start is not None and response.status == 200 and request.method == "POST"
            and route_label(request) == SPEECH_ROUTE):
        request.app[metrics_key].ttfb.observe(time.perf_counter() - start)


def is_local(request: web.Request) -> bool:
    """A loopback peer that is not relaying someone else's request (a local reverse proxy)."""
    if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
        return False
    return is_loopback(request.remote or "")


def is_loopback(peer: str) -> bool:
    """127.0.0.0/8, ::1, and IPv4 loopback seen through a dual-stack socket (::ffff:127.0.0.1)."""
    try:
        address = ipaddress.ip_address(peer.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


async def metrics_handler(request: web.Request) -> web.Response:
    """GET /metrics: the Prometheus text format (loopback only when metrics_local_only)."""
    if request.app[config_key].metrics_local_only and not is_local(request):
        raise NotPermitted("Metrics are served to local addresses only")
    # Negotiated: Prometheus 2 gets text 0.0.4, a scraper asking for OpenMetrics gets that.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(request.app[metrics_key].registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


def setup_metrics(app: web.Application) -> None:
    """Give the app its registry and the time-to-first-byte hook (the middleware is in create_app)."""
    metrics = Metrics()
    metrics.registry.register(SynthCollector(lambda: app[synth_key].stats()))
    app[metrics_key] = metrics
    app.on_response_prepare.append(observe_first_byte)
