"""Which store a configuration names: SQLite for a file path, PostgreSQL for a URL."""

from __future__ import annotations

from pathlib import Path
from typing import TypeAlias

from idlakd.config import Config, DatabaseUrl
from idlakd.store.postgres import PostgresStore
from idlakd.store.sqlite import Store as SQLiteStore

#: Either store: both have the same methods (the SQLite one is the reference).
Store: TypeAlias = SQLiteStore | PostgresStore


def open_store(config: Config) -> Store:
    """The (not yet opened) store of config.database; `async with` or open() it."""
    return store_at(config.database, config.database_pool_size)


def store_at(database: Path | DatabaseUrl, pool_size: int) -> Store:
    """The (not yet opened) store of a SQLite file or a PostgreSQL URL."""
    if isinstance(database, DatabaseUrl):
        return PostgresStore(database, pool_size)
    return SQLiteStore(database)
