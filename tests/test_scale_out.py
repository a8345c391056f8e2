"""Two real idlakd nodes on one shared store behind a real HAProxy: tokens, client addresses,
a node killed mid-load, a rolling restart under load (docs/scale-out.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from tests.helpers.app import bearer
from tests.helpers.cluster import Cluster, shared_store_settings
from tests.helpers.daemon import REPO, SLOW_CHUNK_BYTES, login
from tests.helpers.haproxy import (DOCUMENTED_ONLY, HAPROXY, TEST_ONLY, Balancer, directives,
                                   haproxy_config, start_haproxy)
from tests.helpers.postgres import PostgresServer
from idlakd.config import SETTINGS

pytestmark = [
    pytest.mark.scenario,
    pytest.mark.skipif(shutil.which(HAPROXY) is None, reason="Debian's haproxy is not installed"),
]

NODES = ["a", "b"]
DRAIN_SECONDS = 2.0  # well above haproxy's fall 2 x inter 200 ms in tests/helpers/haproxy.py
# The client's own loopback address, not HAProxy's (127.0.0.1, the only trusted proxy).
CLIENT = "127.0.0.2"
OTHER_CLIENT = "127.0.0.3"


@pytest.fixture
async def cluster(tmp_path: Path, postgres_server: PostgresServer) -> AsyncIterator[Cluster]:
    """Nodes a and b on one PostgreSQL, believing X-Forwarded-For from loopback's HAProxy only."""
    nodes = Cluster(tmp_path, shared_store_settings(
        tmp_path, database=await postgres_server.create_database(),
        trusted_proxies="127.0.0.1", drain_seconds=str(DRAIN_SECONDS),
        login_max_failures_per_address="3",
        # DEBUG: the access lines of HAProxy's /readyz probes are DEBUG lines.
        log_level="DEBUG",
        # One user runs the whole load; a killed node's running syntheses would count against
        # it for seconds (until its heartbeats are missed), which is not what is tested here.
        quota_concurrent="0"))
    try:
        await nodes.start_all(NODES)
        yield nodes
    finally:
        nodes.kill_all()


@pytest.fixture
async def balancer(tmp_path: Path, cluster: Cluster) -> AsyncIterator[Balancer]:
    """HAProxy before both nodes, once it sees both up."""
    proxy = await start_haproxy(tmp_path / "haproxy", [(n, cluster.ports[n]) for n in NODES])
    try:
        for name in NODES:
            await proxy.wait_state(name, "UP")
        yield proxy
    finally:
        proxy.stop()


def from_address(address: str) -> aiohttp.ClientSession:
    """A client session whose connections leave from address."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def test_a_token_from_the_balancer_works_on_every_node(
        cluster: Cluster, balancer: Balancer) -> None:
    async with aiohttp.ClientSession() as session:
        token = await login(session, balancer.url, "admin", cluster.admin_password())
        for name in NODES:
            node = cluster.nodes[name]
            async with session.get(node.url + "/users", headers=bearer(token)) as resp:
                assert resp.status == 200, (name, await resp.text())
            async with session.post(node.url + "/speech", headers=bearer(token),
                                    json={"voice_id": "alba", "text": "Hello."}) as resp:
                assert resp.status == 200, (name, await resp.text())
                assert (await resp.read())[:4] == b"RIFF"
        # And a node's token through the balancer, whichever node answers.
        direct = await login(session, cluster.nodes["b"].url, "admin", cluster.admin_password())
        served = set()
        for _ in range(4):
            async with session.get(balancer.url + "/users", headers=bearer(direct)) as resp:
                assert resp.status == 200
                served.add(resp.headers["X-Served-By"])
        assert served == set(NODES), "leastconn should have used both nodes"


async def test_nodes_see_the_client_address_haproxy_forwards(
        cluster: Cluster, balancer: Balancer) -> None:
    async with from_address(CLIENT) as client:
        token = await login(client, balancer.url, "admin", cluster.admin_password())
        # Wrong passwords from one client: its address is locked out (per node, so within
        # 2 x 3 failures), not HAProxy's address that every client shares — also when the
        # client sends a Forwarded header of its own, which HAProxy passes through.
        statuses = []
        for n in range(7):
            async with client.post(balancer.url + "/auth",
                                   json={"uid": f"nobody{n}", "password": "wrong"},
                                   headers={"Forwarded": "for=198.51.100.1"}) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    break
        assert statuses[-1] == 429 and set(statuses[:-1]) == {401}, statuses
    async with from_address(OTHER_CLIENT) as other:
        for _ in range(2):  # both nodes, whichever answers
            async with other.post(balancer.url + "/auth",
                                  json={"uid": "nobody", "password": "wrong"}) as resp:
                assert resp.status == 401, "another client is not locked out"
            async with other.get(balancer.url + "/users", headers=bearer(token)) as resp:
                assert resp.status == 200
    logs = cluster.logs()
    assert f'{CLIENT} "POST /auth" 200' in logs and f'{CLIENT} "POST /auth" 429' in logs
    assert f'{OTHER_CLIENT} "GET /users" 200' in logs
    assert '127.0.0.1 "POST /auth"' not in logs, "the balancer's address stood for a client"
    assert '127.0.0.1 "GET /readyz" 200' in logs, "HAProxy's own checks come from itself"
    assert "198.51.100.1" not in logs


@dataclasses.dataclass
class Outcome:
    """One request of the load: when it ran, whether it succeeded, which node answered."""

    kind: str
    start: float
    end: float
    ok: bool
    node: str
    error: str = ""


# (kind, method, path, body): short and long /speech streams and the voice list.
REQUESTS = [
    ("speech-slow", "POST", "/speech", {"voice_id": "slow", "text": "One sentence of slow speech."}),
    ("speech-espeak", "POST", "/speech", {"voice_id": "alba", "text": "Hello there."}),
    ("voices", "GET", "/voices", None),
]


async def one_request(session: aiohttp.ClientSession, url: str, token: str, n: int) -> Outcome:
    """Request number n of the mix through url; its outcome (never raises for a failure)."""
    kind, method, path, body = REQUESTS[n % len(REQUESTS)]
    start = time.monotonic()
    node, error, ok = "", "", False
    try:
        async with session.request(method, url + path, json=body, headers=bearer(token)) as resp:
            node = resp.headers.get("X-Served-By", "")
            data = await resp.read()
            if resp.status != 200:
                error = f"{resp.status} {data[:200]!r}"
            elif kind == "speech-slow":
                ok = data[:4] == b"RIFF" and len(data) == 44 + SLOW_CHUNK_BYTES
                error = "" if ok else f"{len(data)} bytes"
            elif kind == "speech-espeak":
                ok = data[:4] == b"RIFF" and len(data) > 1000
                error = "" if ok else f"{len(data)} bytes"
            else:
                ok = {v["id"] for v in json.loads(data)["voices"]} == {"alba", "slow"}
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        error = repr(exc)
    return Outcome(kind, start, time.monotonic(), ok, node, error)


class Load:
    """clients loops sending REQUESTS through the balancer until stopped."""

    def __init__(self, url: str, token: str, clients: int) -> None:
        self.url, self.token, self.clients = url, token, clients
        self.outcomes: list[Outcome] = []
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def _loop(self, number: int) -> None:
        """One client: requests one after another on its own keep-alive connection."""
        n = number
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            while not self._stopping:
                self.outcomes.append(await one_request(session, self.url, self.token, n))
                n += 1

    def start(self) -> None:
        """Start the clients."""
        self._tasks = [asyncio.create_task(self._loop(i)) for i in range(self.clients)]

    async def stop(self) -> list[Outcome]:
        """Let each client finish its request; every outcome."""
        self._stopping = True
        await asyncio.gather(*self._tasks)
        return self.outcomes


def describe(outcomes: list[Outcome]) -> str:
    """The failures, for an assertion message."""
    return "\n".join(f"{o.kind} on {o.node or '?'} {o.start:.2f}-{o.end:.2f}: {o.error}"
                     for o in outcomes if not o.ok)


async def test_a_node_killed_mid_load_fails_only_its_requests_in_flight(
        cluster: Cluster, balancer: Balancer) -> None:
    async with aiohttp.ClientSession() as session:
        token = await login(session, balancer.url, "admin", cluster.admin_password())
    load = Load(balancer.url, token, clients=6)
    load.start()
    await asyncio.sleep(2.5)
    killed = cluster.nodes["a"]
    kill_sent = time.monotonic()
    killed.process.kill()
    await killed.wait(10)
    killed_at = time.monotonic()  # reaped: its sockets are closed
    await asyncio.sleep(3.0)
    outcomes = await load.stop()

    before = [o for o in outcomes if o.end < kill_sent]
    assert {o.node for o in before if o.ok} == set(NODES), "the load did not use both nodes"
    # In flight on a: running when it was killed, answered by a (or with no answer at all).
    on_a = [o for o in outcomes if o.start < killed_at and o.end >= kill_sent
            and o.node in ("a", "")]
    failures = [o for o in outcomes if not o.ok]
    assert failures, "streams running on the killed node must be cut"
    assert all(o in on_a for o in failures), describe(failures)
    assert len(failures) <= len(on_a)
    after = [o for o in outcomes if o.start >= killed_at]
    assert len(after) >= 6, "the load went on after the kill"
    assert all(o.ok and o.node == "b" for o in after), describe(after)
    assert (await balancer.states())["a"].startswith("DOWN")


async def test_rolling_restart_under_load_fails_no_request(
        cluster: Cluster, balancer: Balancer) -> None:
    async with aiohttp.ClientSession() as session:
        token = await login(session, balancer.url, "admin", cluster.admin_password())
    load = Load(balancer.url, token, clients=4)
    load.start()
    restarted_at = {}
    try:
        await asyncio.sleep(1.0)
        for name in NODES:
            node = cluster.nodes[name]
            node.signal()
            # HAProxy takes it out while it still serves (draining), before it stops listening.
            took = await balancer.wait_state(name, "DOWN", timeout=DRAIN_SECONDS)
            assert node.process.poll() is None, "the node stopped before the balancer noticed"
            assert took < DRAIN_SECONDS
            assert await node.wait(60) == 0, cluster.logs()
            assert "draining" in node.log()
            cluster.start(name)
            await balancer.wait_state(name, "UP", timeout=60)
            restarted_at[name] = time.monotonic()
        await asyncio.sleep(1.5)
    finally:
        outcomes = await load.stop()
    failures = [o for o in outcomes if not o.ok]
    assert not failures, describe(failures) + "\n" + cluster.logs()
    assert len(outcomes) >= 20
    assert {o.kind for o in outcomes} == {kind for kind, *_ in REQUESTS}
    # Each restarted node took requests again.
    for name in NODES:
        assert any(o.node == name and o.start > restarted_at[name] for o in outcomes), name


EXAMPLES = REPO / "docs" / "examples"


def test_the_documented_haproxy_configuration_is_the_tested_one(tmp_path: Path) -> None:
    documented = (EXAMPLES / "haproxy.cfg").read_text()
    tested = haproxy_config(8080, tmp_path / "haproxy.sock", [("a", 8081)])
    assert directives(documented, DOCUMENTED_ONLY) == directives(tested, TEST_ONLY)
    probe = re.search(r"default-server check inter \S+ fastinter \S+ downinter \S+ rise 2 fall 2",
                      documented)
    assert probe, "the documented checks differ from the tested ones"
    checked = subprocess.run([HAPROXY, "-c", "-f", str(EXAMPLES / "haproxy.cfg")],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "```haproxy\n" + documented + "```" in (REPO / "docs" / "scale-out.md").read_text()


def test_the_compose_example_runs_three_nodes_on_postgresql_behind_haproxy() -> None:
    compose = (EXAMPLES / "compose.yaml").read_text()
    servers = re.findall(r"^    server (\S+) (\S+):80$", (EXAMPLES / "haproxy.cfg").read_text(),
                         flags=re.M)
    assert [name for name, _ in servers] == ["idlakd1", "idlakd2", "idlakd3"]
    for name, host in servers:
        assert re.search(rf"^  {host}:\n    <<: \*idlakd$", compose, flags=re.M), name
    assert "IDLAKD_DATABASE: postgresql://idlakd:" in compose
    proxy = re.search(r"ipv4_address: (\S+)", compose)
    assert proxy and f"IDLAKD_TRUSTED_PROXIES: {proxy.group(1)}" in compose
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in compose
    stop = re.search(r"stop_grace_period: (\d+)s", compose)
    defaults = {s.name: float(s.default) for s in SETTINGS
                if s.name in ("drain_seconds", "shutdown_grace_seconds")}
    assert stop and int(stop.group(1)) > sum(defaults.values())
    drain = re.search(r'IDLAKD_DRAIN_SECONDS: "(\d+)"', compose)
    # HAProxy must see the node down (fall x inter) before it stops listening.
    assert drain and float(drain.group(1)) > 2 * 2
