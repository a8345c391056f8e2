"""Child processes of the test process: list them, wait until they are gone."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


def child_pids() -> set[int]:
    """Processes whose parent is this test process (zombies included)."""
    me = os.getpid()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.add(int(entry))
    return found


def ffmpeg_children() -> set[int]:
    """This test process's ffmpeg children (streams' and spares')."""
    found = set()
    for pid in child_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                program = fh.read().split(b"\0")[0]
        except OSError:
            continue
        if b"ffmpeg" in Path(program.decode(errors="replace")).name.encode():
            found.add(pid)
    return found


async def wait_gone(pids: set[int] | list[int], within: float = 1.5) -> set[int]:
    """Poll until none of pids is a child any more; returns those still there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        left = set(pids) & child_pids()
        if not left or loop.time() > deadline:
            return left
        await asyncio.sleep(0.05)
