"""The load test of bench/load.py, CI-sized: 50 clients for 8 s against a real `idlakd serve`.

The full run (200 clients, 60 s) is `python bench/load.py`; see bench/RESULTS-api.md.
"""

from __future__ import annotations

import pytest
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from tests.helpers.app import REPO

# Whole daemons under signals and faults: the scenario group (README's second pytest run).
pytestmark = pytest.mark.scenario


def _load_module() -> ModuleType:
    """bench/load.py (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("idlakd_bench_load", REPO / "bench" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_short_load_run() -> None:
    """No error but deliberate 503s; GET /voices stays fast while synthesis runs; RSS is flat."""
    load = _load_module()
    with tempfile.TemporaryDirectory(prefix="idlakd-load-") as tmp:
        server = load.start_server(Path(tmp) / "state", bcrypt_rounds=4)
        try:
            token, password = await load._setup_user(server.url, server.password)
            rss_start = load.rss_bytes(server.process.pid)
            started = time.monotonic()
            stats = await load.run_load(server.url, token, password, clients=50, duration=8.0,
                                        think=(0.2, 1.0), seed=7, request_timeout=20.0)
            took = time.monotonic() - started
            rss_end = load.rss_bytes(server.process.pid)
        finally:
            assert server.stop() == 0
    summary = load.summarise(stats, took, rss_start, rss_end)
    assert summary["requests"] > 300, summary
    assert summary["routes"]["POST /speech"]["ok"] > 10, summary
    # Other test processes share CI's cores, so the latency bound here is looser than the
    # full run's 50 ms; errors and memory are held to the same standard.
    failed = load.verdict(summary, p99_ms=200.0, rss_mb=30.0)
    assert not failed, (failed, summary)
