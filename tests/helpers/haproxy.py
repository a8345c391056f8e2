"""Run Debian's haproxy in the foreground on a loopback port in front of idlakd nodes.

The configuration is the one docs/scale-out.md shows, with check intervals shortened for tests.
Import from tests as ``from tests.helpers.haproxy import ...``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import time
from pathlib import Path
from typing import Sequence

import aiohttp

from tests.helpers.daemon import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

# docs/examples/haproxy.cfg with loopback ports and fast checks (a test keeps the two alike).
# {servers} is one `server` line per node; {check_ms}: how often /readyz is probed.
CONFIG = """\
global
    maxconn 4000
    log stdout format raw local0 info
    stats socket {socket} mode 600 level admin

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 300s
    timeout server 300s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout tunnel 1h
    option forwardfor
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response junk-response

frontend idlakd
    bind 127.0.0.1:{port}
    default_backend idlakd_nodes

backend idlakd_nodes
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    timeout check 6s
    http-request disable-l7-retry if !METH_GET
    # Which node answered, for the tests to see
    http-response set-header X-Served-By %s
    default-server check inter {check_ms} fastinter {check_ms} downinter {check_ms} rise 2 fall 2
{servers}
"""
# Lines only the tests have (their ports, probe speed, admin socket and the node's name in
# each answer), and lines only the documented configuration has.
TEST_ONLY = ("stats socket", "bind", "server", "default-server", "http-response set-header",
             "#")
DOCUMENTED_ONLY = ("resolvers", "parse-resolv-conf", "hold", "bind", "server",
                   "default-server", "#")


@dataclasses.dataclass
class Balancer:
    """A running haproxy child process, its port and its admin socket."""

    process: subprocess.Popen[bytes]
    port: int
    socket: Path
    log_path: Path

    @property
    def url(self) -> str:
        """Base URL of the frontend."""
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """What haproxy printed so far."""
        return self.log_path.read_text(errors="replace")

    async def command(self, line: str) -> str:
        """One command on the admin socket; its answer."""
        reader, writer = await asyncio.open_unix_connection(str(self.socket))
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            return (await reader.read()).decode()
        finally:
            writer.close()
            await writer.wait_closed()

    async def states(self) -> dict[str, str]:
        """Each node's state as haproxy sees it now ('UP', 'DOWN', 'UP 1/2', ...)."""
        lines = (await self.command("show stat")).splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == "idlakd_nodes" and row.get("svname") not in (
                    "BACKEND", None):
                states[row["svname"]] = row["status"]
        return states

    async def wait_state(self, node: str, state: str, timeout: float = 30.0) -> float:
        """Wait until haproxy shows node in state ('UP' or 'DOWN'); the seconds it took."""
        start = time.monotonic()
        while True:
            assert self.process.poll() is None, self.log()
            if (await self.states()).get(node) == state:
                return time.monotonic() - start
            assert time.monotonic() - start < timeout, f"{node} never {state}: {await self.states()}"
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """Stop haproxy (test cleanup)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def directives(config: str, leaving_out: tuple[str, ...]) -> set[str]:
    """The lines of a configuration, stripped, without blank ones and those leaving_out starts."""
    return {line.strip() for line in config.splitlines()
            if line.strip() and not line.strip().startswith(leaving_out)}


def haproxy_config(port: int, socket: Path, nodes: Sequence[tuple[str, int]],
                   check_ms: int = 200) -> str:
    """The configuration for a frontend on port before the named nodes (name, port) on loopback."""
    servers = "\n".join(f"    server {name} 127.0.0.1:{node_port}" for name, node_port in nodes)
    return CONFIG.format(port=port, socket=socket, servers=servers, check_ms=check_ms)


async def start_haproxy(directory: Path, nodes: Sequence[tuple[str, int]],
                        check_ms: int = 200) -> Balancer:
    """Write the configuration in directory, check it, run haproxy in the foreground; wait until it listens."""
    directory.mkdir(parents=True, exist_ok=True)
    port, socket = free_port(), directory / "haproxy.sock"
    path = directory / "haproxy.cfg"
    path.write_text(haproxy_config(port, socket, nodes, check_ms))
    checked = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True,
                             text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    log_path = directory / "haproxy.log"
    with open(log_path, "wb") as out:
        # -db: foreground, no daemon mode; -W is not needed (no reloads).
        process = subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stdout=out,
                                   stderr=subprocess.STDOUT)
    balancer = Balancer(process, port, socket, log_path)
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession() as session:
        while True:
            assert process.poll() is None, balancer.log()
            try:
                async with session.get(balancer.url + "/healthz") as resp:
                    await resp.read()
                    break
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline, "haproxy did not listen:\n" + balancer.log()
                await asyncio.sleep(0.05)
    return balancer
