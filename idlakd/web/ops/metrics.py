"""Prometheus metrics: per-route request counts and latencies, and the synthesis service's counters."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from idlakd.errors import Forbidden
from idlakd.web.http import Handler
from idlakd.web.keys import config_key, metrics_key, request_start_key, synth_key

log = logging.getLogger(__name__)

# Requests include whole audio streams, so the buckets reach well past the default 10 s.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFB_BUCKETS: Final = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SPEECH_ROUTE: Final = "/speech"


class Metrics:
    """The app's own registry (never prometheus_client's global one) and its HTTP instruments."""

    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "idlakd_http_requests", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "idlakd_http_request_duration_seconds",
            "Time from request to the end of its response (whole streams included), by route.",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ttfb = Histogram(
            "idlakd_speech_time_to_first_byte_seconds",
            "Time from a /speech request until its status line and first audio leave.",
            buckets=TTFB_BUCKETS, registry=self.registry)
        # Connection hygiene (idlakd.web.connections): what the guards refused or cut.
        self.connections_open = Gauge(
            "idlakd_http_connections_open", "Client connections open now.", registry=self.registry)
        self.connections_rejected = Counter(
            "idlakd_http_connections_rejected",
            "Connections closed at once because max_connections were already open.",
            registry=self.registry)
        self.malformed_requests = Counter(
            "idlakd_http_malformed_requests",
            "Requests the HTTP parser refused (bad request line, header or chunking): 400 and close.",
            registry=self.registry)
        self.body_timeouts = Counter(
            "idlakd_http_body_timeouts",
            "Requests whose body did not arrive within body_timeout_seconds: 408 and close.",
            registry=self.registry)
        self.accept_errors = Counter(
            "idlakd_http_accept_errors",
            "Failed accept() calls (out of file descriptors or memory); asyncio retries each second.",
            registry=self.registry)
        self.registry.register(SynthCollector(app))
        # The daemon's own memory, CPU and open files (process_*), and python_info.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)


class SynthCollector(Collector):
    """Reads app[synth_key].stats() at scrape time; a key it lacks is simply not exported."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def describe(self) -> list[Metric]:
        """Nothing up front: the families depend on what stats() offers at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One family per known statistic present in the service's stats()."""
        service = self._app.get(synth_key)
        stats_method = getattr(service, "stats", None)
        if not callable(stats_method):
            return
        try:
            stats = stats_method()
        except Exception:
            # A scrape must never fail because of one statistic; the traceback is logged.
            log.exception("Synthesis statistics unavailable for /metrics")
            return
        if not isinstance(stats, Mapping):
            return
        yield from _service_metrics(stats)
        voices = stats.get("voices")
        if isinstance(voices, Mapping):
            yield from _voice_metrics(voices)
        cache = stats.get("cache")
        if isinstance(cache, Mapping):
            yield from _cache_metrics(cache)


def _number(value: Any) -> float | None:
    """A statistic's numeric value, or None for anything else (bools count as 0/1)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


# stats() key -> (metric name, help, kind); the names follow Prometheus conventions.
_SERVICE_STATS: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("queue", "idlakd_synthesis_queue_length", "Requests waiting for a synthesis slot.", "gauge"),
    ("running", "idlakd_synthesis_running", "Chunks being synthesised right now.", "gauge"),
    ("max_concurrent", "idlakd_synthesis_max_concurrent", "Configured bound on concurrent chunks.", "gauge"),
    ("max_queue", "idlakd_synthesis_max_queue", "Configured bound on waiting requests.", "gauge"),
    ("retired_workers", "idlakd_workers_retired", "Workers of changed or removed voices still finishing.", "gauge"),
    ("transcoders", "idlakd_transcoders_running", "ffmpeg transcoders running.", "gauge"),
    ("requests", "idlakd_speech_requests", "Speech requests accepted by the synthesis service.", "counter"),
    ("failures", "idlakd_speech_failures", "Speech requests whose synthesis failed.", "counter"),
    ("disconnects", "idlakd_speech_disconnects", "Speech requests whose client went away.", "counter"),
    ("synthesis_seconds", "idlakd_synthesis_seconds", "Seconds spent synthesising chunks.", "counter"),
    ("audio_seconds", "idlakd_synthesis_audio_seconds", "Seconds of audio synthesised.", "counter"),
)


def _family(name: str, help_text: str, kind: str, labels: list[str]) -> GaugeMetricFamily | CounterMetricFamily:
    """An empty gauge or counter family."""
    if kind == "counter":
        return CounterMetricFamily(name, help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


def _service_metrics(stats: Mapping[str, Any]) -> Iterator[Metric]:
    """Service-wide statistics, plus the real-time factor when both time totals are there."""
    for key, name, help_text, kind in _SERVICE_STATS:
        value = _number(stats.get(key))
        if value is not None:
            family = _family(name, help_text, kind, [])
            family.add_metric([], value)
            yield family
    rtf = _real_time_factor(stats)
    if rtf is not None:
        family = GaugeMetricFamily(
            "idlakd_synthesis_real_time_factor",
            "Synthesis seconds per second of audio since start (below 1: faster than real time).")
        family.add_metric([], rtf)
        yield family


def _real_time_factor(stats: Mapping[str, Any]) -> float | None:
    """synthesis_seconds / audio_seconds, when both are known and audio was made."""
    spent, audio = _number(stats.get("synthesis_seconds")), _number(stats.get("audio_seconds"))
    if spent is None or audio is None or audio <= 0:
        return None
    return spent / audio


def _voice_metrics(voices: Mapping[str, Any]) -> Iterator[Metric]:
    """Per-voice workers busy/idle, syntheses, errors and (if offered) synthesis time."""
    workers = GaugeMetricFamily("idlakd_workers", "Worker processes per voice and state.",
                                labels=["voice", "state"])
    counters = {
        "syntheses": CounterMetricFamily("idlakd_voice_syntheses", "Chunks synthesised per voice.",
                                         labels=["voice"]),
        "errors": CounterMetricFamily("idlakd_voice_errors", "Chunks failed per voice.",
                                      labels=["voice"]),
        "synthesis_seconds": CounterMetricFamily(
            "idlakd_voice_synthesis_seconds", "Seconds spent synthesising per voice.", labels=["voice"]),
        "audio_seconds": CounterMetricFamily(
            "idlakd_voice_audio_seconds", "Seconds of audio synthesised per voice.", labels=["voice"]),
    }
    rtf = GaugeMetricFamily("idlakd_voice_real_time_factor",
                            "Synthesis seconds per second of audio, per voice.", labels=["voice"])
    seen = {"workers": False, "rtf": False, **{key: False for key in counters}}
    for voice_id, pool in voices.items():
        if not isinstance(pool, Mapping):
            continue
        voice = str(voice_id)
        for state in ("busy", "idle"):
            value = _number(pool.get(state))
            if value is not None:
                workers.add_metric([voice, state], value)
                seen["workers"] = True
        for key, family in counters.items():
            value = _number(pool.get(key))
            if value is not None:
                family.add_metric([voice], value)
                seen[key] = True
        factor = _real_time_factor(pool)
        if factor is not None:
            rtf.add_metric([voice], factor)
            seen["rtf"] = True
    if seen["workers"]:
        yield workers
    for key, family in counters.items():
        if seen[key]:
            yield family
    if seen["rtf"]:
        yield rtf


_CACHE_STATS: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("hits", "idlakd_cache_hits", "Speech requests answered from the audio cache.", "counter"),
    ("misses", "idlakd_cache_misses", "Speech requests not found in the audio cache.", "counter"),
    ("files", "idlakd_cache_files", "Files in the audio cache.", "gauge"),
    ("bytes", "idlakd_cache_bytes", "Bytes in the audio cache.", "gauge"),
    ("max_bytes", "idlakd_cache_max_bytes", "Configured size bound of the audio cache.", "gauge"),
)


def _cache_metrics(cache: Mapping[str, Any]) -> Iterator[Metric]:
    """The audio cache's hit and size statistics."""
    for key, name, help_text, kind in _CACHE_STATS:
        value = _number(cache.get(key))
        if value is not None:
            family = _family(name, help_text, kind, [])
            family.add_metric([], value)
            yield family


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
        metrics.requests.labels(route, method, str(status)).inc()
        metrics.latency.labels(route, method).observe(time.perf_counter() - start)


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
        raise Forbidden("Metrics are served to local addresses only")
    # Negotiated: Prometheus 2 gets text 0.0.4, a scraper asking for OpenMetrics gets that.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(request.app[metrics_key].registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


def setup_metrics(app: web.Application) -> None:
    """Give the app its registry and the time-to-first-byte hook (the middleware is in create_app)."""
    app[metrics_key] = Metrics(app)
    app.on_response_prepare.append(observe_first_byte)
