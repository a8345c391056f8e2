"""Several real `idlakd serve` processes on one shared store, for scale-out tests.

Every node's settings come from Cluster.settings, the one place that says which store the
nodes share: today one state_dir (one SQLite file in WAL mode and one secret file on this
host); a PostgreSQL store is selected there with a `database` setting instead.
Import from tests as ``from tests.helpers.cluster import ...``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tests.helpers.daemon import Daemon, free_port, start_daemon, wait_listening


@dataclasses.dataclass
class Cluster:
    """Named nodes on fixed loopback ports, all started with the same settings."""

    root: Path
    settings: dict[str, str]
    ports: dict[str, int] = dataclasses.field(default_factory=dict)
    nodes: dict[str, Daemon] = dataclasses.field(default_factory=dict)
    started: list[Daemon] = dataclasses.field(default_factory=list)  # every start, in order

    def start(self, name: str) -> Daemon:
        """Start node name (on its port from before, if it ran already)."""
        port = self.ports.setdefault(name, free_port())
        daemon = start_daemon(self.root, name=f"{name}-{len(self.started) + 1}", port=str(port),
                              **self.settings)
        self.nodes[name] = daemon
        self.started.append(daemon)
        return daemon

    async def start_all(self, names: list[str]) -> None:
        """Start the nodes one after the other (the first creates the store and the first admin)."""
        for name in names:
            await wait_listening(self.start(name))

    def admin_password(self) -> str:
        """The first admin's password, printed by the node that started first."""
        return self.started[0].admin_password()

    def logs(self) -> str:
        """Every node's log so far, for failure messages."""
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                         for path in sorted(self.root.glob("*.err")))

    def kill_all(self) -> None:
        """Make sure every node is gone (test cleanup)."""
        for daemon in self.started:
            daemon.kill()


def shared_store_settings(root: Path, **settings: str) -> dict[str, str]:
    """The settings every node gets: the shared store, then the test's own."""
    # One state_dir: without a database setting the SQLite database (WAL) and the token
    # secret file are the same files for every node; with database=postgresql://... the
    # store (and the secret in it) is the shared one.
    values = {"state_dir": str(root / "state"), "workers_per_voice": "2"}
    values.update(settings)
    return values

