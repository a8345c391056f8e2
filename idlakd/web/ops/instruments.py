"""The app's Prometheus instruments: HTTP counters and histograms, and the synthesizer's figures."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from idlakd.synth.stats import CacheStats, PoolStats, SynthStats

# Requests include whole audio streams, so the buckets reach well past the default 10 s.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFB_BUCKETS: Final = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Metrics:
    """The app's own registry (never prometheus_client's global one) and its HTTP instruments."""

    def __init__(self) -> None:
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
        # The daemon's own memory, CPU and open files (process_*), and python_info.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        # labels() checks and looks up its arguments on every call: the children, found once.
        self._answered: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def answered(self, route: str, method: str, status: str, seconds: float) -> None:
        """Count one answered request and observe its duration."""
        children = self._answered.get((route, method, status))
        if children is None:
            children = self._answered[(route, method, status)] = (
                self.requests.labels(route, method, status), self.latency.labels(route, method))
        children[0].inc()
        children[1].observe(seconds)


class SynthCollector(Collector):
    """Reads the synthesizer's stats() at scrape time."""

    def __init__(self, stats: Callable[[], SynthStats]) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        """Nothing up front: the per-voice families depend on the voices in use."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The synthesizer's figures: service-wide, per voice, and the cache's."""
        stats = self._stats()
        yield from _service_metrics(stats)
        yield from _voice_metrics(stats.voices)
        yield from _cache_metrics(stats.cache)


def _family(name: str, help_text: str, kind: str, labels: list[str]) -> GaugeMetricFamily | CounterMetricFamily:
    """An empty gauge or counter family."""
    if kind == "counter":
        return CounterMetricFamily(name, help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


def _single(name: str, help_text: str, kind: str, value: float) -> Metric:
    """A family holding one unlabelled sample."""
    family = _family(name, help_text, kind, [])
    family.add_metric([], value)
    return family


def _service_metrics(stats: SynthStats) -> Iterator[Metric]:
    """Service-wide statistics, plus the real-time factor once audio was made."""
    for name, help_text, kind, value in (
        ("idlakd_synthesis_queue_length", "Requests waiting for a synthesis slot.", "gauge",
         stats.queue),
        ("idlakd_synthesis_running", "Chunks being synthesised right now.", "gauge",
         stats.running),
        ("idlakd_synthesis_streams", "Speech streams open (admitted, not yet ended).", "gauge",
         stats.streams),
        ("idlakd_synthesis_max_concurrent", "Configured bound on concurrent chunks.", "gauge",
         stats.max_concurrent),
        ("idlakd_synthesis_max_queue", "Configured bound on waiting requests.", "gauge",
         stats.max_queue),
        ("idlakd_synthesis_max_streams", "Bound on open streams (max_concurrent + max_queue).",
         "gauge", stats.max_streams),
        ("idlakd_workers_retired", "Workers of changed or removed voices still finishing.",
         "gauge", stats.retired_workers),
        ("idlakd_transcoders_running", "ffmpeg transcoders running.", "gauge", stats.transcoders),
        ("idlakd_speech_requests", "Speech requests accepted by the synthesizer.", "counter",
         stats.requests),
        ("idlakd_speech_failures", "Speech requests whose synthesis failed.", "counter",
         stats.failures),
        ("idlakd_speech_disconnects", "Speech requests whose client went away.", "counter",
         stats.disconnects),
        ("idlakd_synthesis_seconds", "Seconds spent synthesising chunks.", "counter",
         stats.synthesis_seconds),
        ("idlakd_synthesis_audio_seconds", "Seconds of audio synthesised.", "counter",
         stats.audio_seconds),
    ):
        yield _single(name, help_text, kind, value)
    if stats.real_time_factor is not None:
        yield _single("idlakd_synthesis_real_time_factor",
                      "Synthesis seconds per second of audio since start (below 1: faster than "
                      "real time).", "gauge", stats.real_time_factor)


def _voice_metrics(voices: Mapping[str, PoolStats]) -> Iterator[Metric]:
    """Per-voice workers busy/idle, syntheses, errors, times and real-time factor."""
    if not voices:
        return
    workers = GaugeMetricFamily("idlakd_workers", "Worker processes per voice and state.",
                                labels=["voice", "state"])
    syntheses = CounterMetricFamily("idlakd_voice_syntheses", "Chunks synthesised per voice.",
                                    labels=["voice"])
    errors = CounterMetricFamily("idlakd_voice_errors", "Chunks failed per voice.",
                                 labels=["voice"])
    spent = CounterMetricFamily("idlakd_voice_synthesis_seconds",
                                "Seconds spent synthesising per voice.", labels=["voice"])
    audio = CounterMetricFamily("idlakd_voice_audio_seconds",
                                "Seconds of audio synthesised per voice.", labels=["voice"])
    rtf = GaugeMetricFamily("idlakd_voice_real_time_factor",
                            "Synthesis seconds per second of audio, per voice.", labels=["voice"])
    for voice, pool in voices.items():
        workers.add_metric([voice, "busy"], pool.busy)
        workers.add_metric([voice, "idle"], pool.idle)
        syntheses.add_metric([voice], pool.syntheses)
        errors.add_metric([voice], pool.errors)
        spent.add_metric([voice], pool.synthesis_seconds)
        audio.add_metric([voice], pool.audio_seconds)
        if pool.audio_seconds > 0:
            rtf.add_metric([voice], pool.synthesis_seconds / pool.audio_seconds)
    yield from (workers, syntheses, errors, spent, audio)
    if rtf.samples:
        yield rtf


def _cache_metrics(cache: CacheStats) -> Iterator[Metric]:
    """The audio cache's hit and size statistics."""
    for name, help_text, kind, value in (
        ("idlakd_cache_hits", "Speech requests answered from the audio cache.", "counter",
         cache.hits),
        ("idlakd_cache_misses", "Speech requests not found in the audio cache.", "counter",
         cache.misses),
        ("idlakd_cache_files", "Files in the audio cache.", "gauge", cache.files),
        ("idlakd_cache_bytes", "Bytes in the audio cache.", "gauge", cache.bytes),
        ("idlakd_cache_max_bytes", "Configured size bound of the audio cache.", "gauge",
         cache.max_bytes),
    ):
        yield _single(name, help_text, kind, value)
