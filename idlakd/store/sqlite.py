"""SQLite storage over aiosqlite: schema, migrations, users, voices, revoked tokens."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from types import TracebackType
from typing import Any, AsyncIterator, Awaitable, Final, Iterable, NoReturn

import aiosqlite
from contextlib import asynccontextmanager

from idlakd.errors import DatabaseBusy, DatabaseUnwritable, StoreError
from idlakd.models import User, Voice

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS: Final = 10_000
# The write probe of /readyz runs at most this often; callers in between get its last result.
WRITE_PROBE_SECONDS: Final = 1.0
# Primary SQLite result codes of a write that failed because another writer held the lock,
# and of one that failed because the file or its filesystem takes no writes now.
_BUSY_CODES: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_UNWRITABLE_CODES: Final = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR,
                                      sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN})

# Forward migrations: entry N brings the schema from user_version N to N+1.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE users (
        uid TEXT PRIMARY KEY,
        password_hash BLOB NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE voices (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        language TEXT NOT NULL,
        accent TEXT NOT NULL,
        gender TEXT NOT NULL,
        engine TEXT NOT NULL,
        options TEXT NOT NULL DEFAULT '{}',
        directory TEXT NOT NULL DEFAULT '',
        sample_rate INTEGER,
        updated_at REAL NOT NULL
    );
    CREATE INDEX voices_language ON voices (language, accent);
    CREATE TABLE revoked_tokens (
        jti TEXT PRIMARY KEY,
        exp REAL NOT NULL
    );
    CREATE INDEX revoked_tokens_exp ON revoked_tokens (exp);
    """,
    # One row that /readyz rewrites to prove the database takes writes.
    """
    CREATE TABLE write_probe (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        at REAL NOT NULL
    );
    """,
    # Accounts for programs and people: API keys, limits and usage, token hygiene, voices
    # removed on purpose (voiceconfig.json seeds voices, it does not bring these back).
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        uid TEXT NOT NULL,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        digest BLOB NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        last_used_at REAL,
        expires_at REAL
    );
    CREATE INDEX api_keys_uid ON api_keys (uid);
    CREATE TABLE user_limits (
        uid TEXT PRIMARY KEY,
        chars_per_minute INTEGER,
        chars_per_day INTEGER,
        concurrent INTEGER
    );
    CREATE TABLE usage_days (
        uid TEXT NOT NULL,
        day TEXT NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        characters INTEGER NOT NULL DEFAULT 0,
        audio_seconds REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (uid, day)
    );
    CREATE TABLE usage_minutes (
        uid TEXT NOT NULL,
        minute INTEGER NOT NULL,
        characters INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (uid, minute)
    );
    ALTER TABLE users ADD COLUMN valid_after REAL NOT NULL DEFAULT 0;
    CREATE TABLE removed_voices (
        id TEXT PRIMARY KEY,
        removed_at REAL NOT NULL
    );
    """,
)

_VOICE_COLUMNS: Final = (
    "id, name, language, accent, gender, engine, options, directory, sample_rate, updated_at"
)


def _voice(row: sqlite3.Row | tuple[Any, ...]) -> Voice:
    """Build a Voice from a row in _VOICE_COLUMNS order."""
    return Voice(
        id=row[0], name=row[1], language=row[2], accent=row[3], gender=row[4],
        engine=row[5], options=json.loads(row[6] or "{}"), directory=row[7],
        sample_rate=row[8], updated_at=row[9],
    )


async def _to_the_end(statement: Awaitable[Any]) -> None:
    """Await a statement; when cancelled meanwhile, let it finish in aiosqlite's thread first.

    Then whether BEGIN or COMMIT ran is known when the cancel goes on (and a ROLLBACK after it
    sees the connection's true state).
    """
    step = asyncio.ensure_future(statement)
    try:
        await asyncio.shield(step)
    except asyncio.CancelledError:
        with contextlib.suppress(sqlite3.Error):
            await step
        raise


async def _roll_back(db: aiosqlite.Connection) -> None:
    """End the connection's open transaction, if any, keeping the caller's error first."""
    if db.in_transaction:
        # After an I/O error SQLite may fail to roll back: the caller needs the first error.
        with contextlib.suppress(sqlite3.Error):
            await asyncio.shield(db.execute("ROLLBACK"))


class Store:
    """The daemon's (and the CLI's) only door to the database file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        # Reads use their own connection: they never queue behind a write waiting for the lock.
        self._reader: aiosqlite.Connection | None = None
        self._probe_lock = asyncio.Lock()
        self._probed_at = float("-inf")
        self._probe_failure: StoreError | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        """The open connection (raises if open() was not awaited)."""
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    @property
    def reader(self) -> aiosqlite.Connection:
        """The read-only connection (WAL: reads see every committed write, never wait for one)."""
        if self._reader is None:
            raise StoreError("store is not open")
        return self._reader

    async def open(self) -> None:
        """Open (creating with owner-only permissions) and migrate the database."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            # Create it empty and private before SQLite does, so it is never world-readable.
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        try:
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await self._db.execute("PRAGMA journal_mode = WAL")
            await self._db.execute("PRAGMA synchronous = NORMAL")
            await self._db.execute("PRAGMA foreign_keys = ON")
            await self._migrate()
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            await self._reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await self._reader.execute("PRAGMA query_only = ON")
        except sqlite3.DatabaseError as exc:
            await self.close()
            raise StoreError(f"database {self.path}: {exc}") from exc
        except DatabaseUnwritable as exc:  # name the file and SQLite's reason, for the operator
            await self.close()
            raise StoreError(f"database {self.path}: cannot be written ({exc.__cause__})") from exc

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.close()
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def __aenter__(self) -> "Store":
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """A short write transaction taken with BEGIN IMMEDIATE (one writer at a time).

        Writers of this process queue on a lock: on the one shared connection a second BEGIN
        would fail at once ("within a transaction") instead of waiting its turn.
        """
        db = self.db
        async with self._write_lock:
            try:
                await _to_the_end(db.execute("BEGIN IMMEDIATE"))
            except asyncio.CancelledError:
                await _roll_back(db)  # BEGIN may have opened a transaction before the cancel
                raise
            except sqlite3.OperationalError as exc:
                self._raise_write_failure(exc)
            try:
                yield db
                await _to_the_end(db.execute("COMMIT"))
            except BaseException as exc:
                # A failed COMMIT (a deferred constraint, SQLITE_BUSY) leaves the transaction
                # open: the shared connection must never stay in it.
                await _roll_back(db)
                if isinstance(exc, sqlite3.OperationalError):
                    self._raise_write_failure(exc)
                raise

    def _raise_write_failure(self, exc: sqlite3.OperationalError) -> NoReturn:
        """Raise the domain error of a failed write: busy and unwritable are 503s, others stay."""
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        if code in _BUSY_CODES:
            log.warning("Database %s still locked by another writer after %d ms: %s",
                        self.path, BUSY_TIMEOUT_MS, exc)
            raise DatabaseBusy() from exc
        if code in _UNWRITABLE_CODES:
            log.error("Database %s cannot be written: %s", self.path, exc)
            failure = DatabaseUnwritable()
            # Readiness need not wait for its next probe to learn what a write just found.
            self._probe_failure, self._probed_at = failure, time.monotonic()
            raise failure from exc
        raise exc

    async def _migrate(self) -> None:
        """Apply the forward migrations the file has not seen yet."""
        async with self._write() as db:
            async with db.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            version = int(row[0]) if row else 0
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"database {self.path} has schema version {version}, newer than this "
                    f"idlakd ({len(MIGRATIONS)}); upgrade idlakd")
            for number in range(version, len(MIGRATIONS)):
                log.info("Migrating database schema to version %d", number + 1)
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        await db.execute(statement)
            # PRAGMA takes no parameters; the value is our own integer.
            await db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    async def ping(self) -> None:
        """Run a trivial query (readiness check)."""
        async with self.reader.execute("SELECT 1") as cur:
            await cur.fetchone()

    async def check_writable(self) -> None:
        """Prove that a write reaches the file (readiness), else raise DatabaseUnwritable/Busy.

        A committed one-row update is a real write (BEGIN IMMEDIATE alone writes nothing);
        it runs at most once per WRITE_PROBE_SECONDS, concurrent callers share it.
        """
        async with self._probe_lock:
            if time.monotonic() - self._probed_at >= WRITE_PROBE_SECONDS:
                try:
                    async with self._write() as db:
                        await db.execute(
                            "INSERT INTO write_probe (id, at) VALUES (1, ?) "
                            "ON CONFLICT (id) DO UPDATE SET at = excluded.at", (time.time(),))
                    self._probe_failure = None
                except StoreError as exc:
                    self._probe_failure = exc
                self._probed_at = time.monotonic()
        if self._probe_failure is not None:
            raise self._probe_failure.with_traceback(None)

    # Users

    async def count_users(self) -> int:
        """How many users exist."""
        async with self.reader.execute("SELECT COUNT(*) FROM users") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def list_users(self) -> list[User]:
        """Every user, in creation order."""
        async with self.reader.execute(
                "SELECT uid, admin FROM users ORDER BY created_at, rowid") as cur:
            rows = await cur.fetchall()
        return [User(uid=r[0], admin=bool(r[1])) for r in rows]

    async def get_user(self, uid: str) -> User | None:
        """The user with this uid, or None."""
        async with self.reader.execute("SELECT uid, admin FROM users WHERE uid = ?", (uid,)) as cur:
            row = await cur.fetchone()
        return User(uid=row[0], admin=bool(row[1])) if row else None

    async def get_password_hash(self, uid: str) -> bytes | None:
        """The stored bcrypt hash of this user, or None."""
        async with self.reader.execute(
                "SELECT password_hash FROM users WHERE uid = ?", (uid,)) as cur:
            row = await cur.fetchone()
        return bytes(row[0]) if row else None

    async def add_user(self, uid: str, password_hash: bytes, admin: bool) -> bool:
        """Create a user; False when the uid is taken."""
        try:
            async with self._write() as db:
                await db.execute(
                    "INSERT INTO users (uid, password_hash, admin, created_at) VALUES (?, ?, ?, ?)",
                    (uid, password_hash, int(admin), time.time()))
        except sqlite3.IntegrityError:
            return False
        return True

    async def set_password_hash(self, uid: str, password_hash: bytes) -> bool:
        """Replace a user's password hash; False when the user does not exist."""
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE users SET password_hash = ? WHERE uid = ?", (password_hash, uid))
            return cur.rowcount > 0

    async def delete_user(self, uid: str) -> str:
        """Delete a user: 'ok', 'missing' or 'last_admin' (refused)."""
        async with self._write() as db:
            async with db.execute("SELECT admin FROM users WHERE uid = ?", (uid,)) as cur:
                row = await cur.fetchone()
            if row is None:
                return "missing"
            if row[0] and await self._admin_count(db) <= 1:
                return "last_admin"
            await db.execute("DELETE FROM users WHERE uid = ?", (uid,))
        return "ok"

    async def set_admin(self, uid: str, admin: bool | None) -> tuple[str, bool]:
        """Set (or toggle, when admin is None) the admin flag: ('ok'|'missing'|'last_admin', flag)."""
        async with self._write() as db:
            async with db.execute("SELECT admin FROM users WHERE uid = ?", (uid,)) as cur:
                row = await cur.fetchone()
            if row is None:
                return "missing", False
            current = bool(row[0])
            wanted = (not current) if admin is None else admin
            if current and not wanted and await self._admin_count(db) <= 1:
                return "last_admin", current
            await db.execute("UPDATE users SET admin = ? WHERE uid = ?", (int(wanted), uid))
        return "ok", wanted

    @staticmethod
    async def _admin_count(db: aiosqlite.Connection) -> int:
        """Number of admins, read inside the caller's transaction."""
        async with db.execute("SELECT COUNT(*) FROM users WHERE admin = 1") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # Tokens

    async def token_state(self, jti: str, uid: str,
                          issued_at: float | None = None) -> tuple[bool, User | None]:
        """In one query: is this token revoked, and the user it names (or None).

        With issued_at (the token's whole-second iat), a user created after that second does
        not count: the token belonged to an earlier, deleted user of the same uid.
        """
        born_before = float("inf") if issued_at is None else issued_at + 1
        async with self.reader.execute(
            "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = ?), "
            "(SELECT admin FROM users WHERE uid = ?), "
            "EXISTS (SELECT 1 FROM users WHERE uid = ? AND created_at < ?)",
            (jti, uid, uid, born_before),
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        user = User(uid=uid, admin=bool(row[1])) if row[2] else None
        return bool(row[0]), user

    async def revoke_token(self, jti: str, exp: float) -> None:
        """Remember a revoked token until its own expiry; purge revocations already past it."""
        async with self._write() as db:
            await db.execute(
                "INSERT OR REPLACE INTO revoked_tokens (jti, exp) VALUES (?, ?)", (jti, exp))
            await db.execute("DELETE FROM revoked_tokens WHERE exp < ?", (time.time(),))

    # Voices

    async def list_voices(self, language: str | None = None, accent: str | None = None,
                          gender: str | None = None) -> list[Voice]:
        """Voices matching the given filters, ordered by id."""
        clauses: list[str] = []
        params: list[str] = []
        for column, value in (("language", language), ("accent", accent), ("gender", gender)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self.reader.execute(
                f"SELECT {_VOICE_COLUMNS} FROM voices{where} ORDER BY id", params) as cur:
            rows = await cur.fetchall()
        return [_voice(r) for r in rows]

    async def get_voice(self, voice_id: str) -> Voice | None:
        """The voice with this id, or None."""
        async with self.reader.execute(
                f"SELECT {_VOICE_COLUMNS} FROM voices WHERE id = ?", (voice_id,)) as cur:
            row = await cur.fetchone()
        return _voice(row) if row else None

    async def languages(self) -> list[str]:
        """Distinct languages of all voices, sorted."""
        async with self.reader.execute(
                "SELECT DISTINCT language FROM voices ORDER BY language") as cur:
            rows = await cur.fetchall()
        return [r[0] for r in rows]

    async def accents(self, language: str) -> list[str]:
        """Distinct accents of one language, sorted."""
        async with self.reader.execute(
                "SELECT DISTINCT accent FROM voices WHERE language = ? ORDER BY accent",
                (language,)) as cur:
            rows = await cur.fetchall()
        return [r[0] for r in rows]

    async def upsert_voices(self, voices: Iterable[Voice]) -> int:
        """Insert or update voices; a voice whose fields did not change keeps its updated_at."""
        changed = 0
        async with self._write() as db:
            for v in voices:
                options = json.dumps(v.options, sort_keys=True)
                cur = await db.execute(
                    f"INSERT INTO voices ({_VOICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                    "language = excluded.language, accent = excluded.accent, "
                    "gender = excluded.gender, engine = excluded.engine, "
                    "options = excluded.options, directory = excluded.directory, "
                    "sample_rate = excluded.sample_rate, updated_at = excluded.updated_at "
                    "WHERE (name, language, accent, gender, engine, options, directory, "
                    "sample_rate) IS NOT (excluded.name, excluded.language, excluded.accent, "
                    "excluded.gender, excluded.engine, excluded.options, excluded.directory, "
                    "excluded.sample_rate)",
                    (v.id, v.name, v.language, v.accent, v.gender, v.engine, options,
                     v.directory, v.sample_rate, time.time()))
                changed += cur.rowcount
        return changed

    async def delete_voice(self, voice_id: str) -> bool:
        """Remove a voice; False when it did not exist."""
        async with self._write() as db:
            cur = await db.execute("DELETE FROM voices WHERE id = ?", (voice_id,))
            return cur.rowcount > 0
