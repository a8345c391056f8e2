"""GET /metrics: Prometheus text from a per-app registry; routes, latency, synthesis statistics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from tests.helpers.app import assert_error, bearer, make_config
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from idlakd.config import Config
from idlakd.web.ops.metrics import is_loopback

StartApp = Callable[[Config], Awaitable[TestClient[Any, Any]]]


async def scrape(client: TestClient[Any, Any]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics, parsed: (sample name, labels) -> value."""
    resp = await client.get("/metrics")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float | None:
    """One sample's value, or None."""
    return samples.get((name, frozenset(labels.items())))


async def test_requests_counted_by_route_template_and_status(client: TestClient[Any, Any],
                                                             admin_token: str) -> None:
    assert (await client.get("/voices")).status == 200
    assert (await client.get("/voices")).status == 200
    assert (await client.get("/voices/nobody")).status == 404
    assert (await client.get("/no/such/route")).status == 404
    assert (await client.post("/users/ghost/password", headers=bearer(admin_token))).status == 422
    samples = await scrape(client)
    req = "idlakd_http_requests_total"
    assert value(samples, req, route="/voices", method="GET", status="200") == 2
    assert value(samples, req, route="/voices/{voice_id}", method="GET", status="404") == 1
    assert value(samples, req, route="unmatched", method="GET", status="404") == 1
    assert value(samples, req, route="/users/{uid}/password", method="POST", status="422") == 1
    assert value(samples, req, route="/auth", method="POST", status="200") == 1
    assert not any("ghost" in str(labels) or "nobody" in str(labels) for _, labels in samples)
    count = value(samples, "idlakd_http_request_duration_seconds_count", route="/voices", method="GET")
    assert count == 2
    assert value(samples, "idlakd_http_request_duration_seconds_bucket", route="/voices",
                 method="GET", le="+Inf") == 2
    assert (value(samples, "process_resident_memory_bytes") or 0) > 10_000_000
    assert any(name == "python_info" for name, _ in samples)


async def test_speech_and_synthesis_statistics(client: TestClient[Any, Any], user_token: str) -> None:
    samples = await scrape(client)
    assert value(samples, "idlakd_synthesis_queue_length") == 0
    assert value(samples, "idlakd_synthesis_max_streams") == (
        (value(samples, "idlakd_synthesis_max_concurrent") or 0)
        + (value(samples, "idlakd_synthesis_max_queue") or 0))
    assert value(samples, "idlakd_speech_time_to_first_byte_seconds_count") == 0
    resp = await client.post("/speech", headers=bearer(user_token),
                             json={"voice_id": "alba", "text": "Hello there. How are you?"})
    assert resp.status == 200
    await resp.read()
    samples = await scrape(client)
    assert value(samples, "idlakd_speech_time_to_first_byte_seconds_count") == 1
    assert value(samples, "idlakd_http_requests_total", route="/speech", method="POST",
                 status="200") == 1
    assert value(samples, "idlakd_speech_requests_total") == 1
    assert value(samples, "idlakd_synthesis_streams") == 0
    assert value(samples, "idlakd_workers", voice="alba", state="busy") == 0
    assert (value(samples, "idlakd_workers", voice="alba", state="idle") or 0) >= 1
    assert (value(samples, "idlakd_voice_syntheses_total", voice="alba") or 0) >= 2
    assert value(samples, "idlakd_cache_hits_total") is not None
    assert (value(samples, "idlakd_synthesis_seconds_total") or 0) > 0
    assert (value(samples, "idlakd_synthesis_audio_seconds_total") or 0) > 0.5
    assert 0 < (value(samples, "idlakd_synthesis_real_time_factor") or 0) < 10
    assert (value(samples, "idlakd_voice_real_time_factor", voice="alba") or 0) > 0


async def test_metrics_local_only(client: TestClient[Any, Any], tmp_path: Path,
                                  started_app_factory: StartApp) -> None:
    # Through a reverse proxy every peer is 127.0.0.1; a forwarded request is not local.
    resp = await client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    await assert_error(resp, 403, "Metrics are served to local addresses only")
    resp = await client.get("/metrics", headers={"Forwarded": "for=203.0.113.9"})
    await assert_error(resp, 403)
    open_client = await started_app_factory(make_config(tmp_path / "open", metrics_local_only="false"))
    resp = await open_client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert resp.status == 200


async def test_each_app_has_its_own_registry(client: TestClient[Any, Any], tmp_path: Path,
                                             started_app_factory: StartApp) -> None:
    assert (await client.get("/languages")).status == 200
    other = await started_app_factory(make_config(tmp_path / "other"))
    samples = await scrape(other)
    assert value(samples, "idlakd_http_requests_total", route="/languages", method="GET",
                 status="200") is None
    assert b"idlakd_" not in generate_latest(REGISTRY)


async def test_openmetrics_negotiation(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).rstrip().endswith("# EOF")


@pytest.mark.parametrize("peer,local", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("2001:db8::1", False), ("", False),
    ("fe80::1%eth0", False), ("unix", False),
])
def test_loopback_addresses(peer: str, local: bool) -> None:
    assert is_loopback(peer) is local
