"""Tasks that must finish even when their starter is cancelled, and cancelling a task for good."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine

log = logging.getLogger(__name__)


class BackgroundTasks:
    """Tasks that must finish even if their starter is cancelled (stopping workers); awaited on close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], report: bool = True) -> asyncio.Task[Any]:
        """Run coro in its own task, kept referenced until it ends; unless report is off,
        what it raises is logged (nobody else will ask)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if report:
            task.add_done_callback(_report)
        return task

    async def finish(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run coro to completion even if the caller is cancelled meanwhile; its error is raised."""
        task = self.spawn(coro, report=False)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.add_done_callback(_report)  # its caller is gone: the log is its only reader
            raise

    async def close(self) -> None:
        """Wait for every task still running."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _report(task: asyncio.Task[Any]) -> None:
    """Done callback: log what a task nobody awaits raised."""
    if not task.cancelled() and task.exception() is not None:
        log.error("Background task %s failed", task.get_name(), exc_info=task.exception())


async def cancel_and_wait(task: asyncio.Task[Any]) -> BaseException | None:
    """Cancel task (once) and wait until it has really ended, even if the caller is cancelled meanwhile.

    Returns what the task raised (None if it returned or was cancelled): the
    caller decides whether that still matters.
    """
    if not task.done() and not task.cancelling():
        task.cancel()
    interrupted = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            # Cleanup must finish (the task is stopping its subprocesses);
            # the caller's cancellation is raised right after.
            interrupted = True
    error = None if task.cancelled() else task.exception()
    if interrupted:
        raise asyncio.CancelledError
    return error
