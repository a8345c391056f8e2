"""The SQLite read connection with every query run to its end in one hop of its thread.

In WAL mode a connection reads from the snapshot of its first active statement until no
statement is active. aiosqlite runs `execute` and each `fetch*` as separate hops of its thread,
so a cursor between its hops keeps a statement active, and every other task's read on the
connection shares that snapshot. Under steady load some cursor is always between hops, and the
connection can go on reading data from before another node's commit (a revoked token, a deleted
user) for as long as the load lasts. Run to its end in one hop, a query leaves no statement
active, and each read starts from the latest commit.
"""

from __future__ import annotations

import sqlite3
from types import TracebackType
from typing import Any, Iterable

import aiosqlite


class Rows:
    """A query's rows, read in full on entry; fetchone/fetchall as on an aiosqlite cursor."""

    def __init__(self, connection: aiosqlite.Connection, sql: str,
                 parameters: Iterable[Any]) -> None:
        self._connection = connection
        self._sql = sql
        self._parameters = parameters
        self._rows: list[sqlite3.Row] = []
        self._next = 0

    async def __aenter__(self) -> "Rows":
        self._rows = list(await self._connection.execute_fetchall(self._sql, self._parameters))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._rows = []

    async def fetchone(self) -> Any:
        """The next row, or None."""
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    async def fetchall(self) -> list[Any]:
        """The rows not fetched yet."""
        rest, self._next = self._rows[self._next:], len(self._rows)
        return rest


class WholeReads:
    """A read-only aiosqlite connection whose queries each run to their end in one hop."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, parameters: Iterable[Any] = ()) -> Rows:
        """`async with reads.execute(sql, params) as rows:` — the rows, read in full."""
        return Rows(self._connection, sql, parameters)
