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
from typing import (Any, AsyncIterator, Awaitable, Callable, Final, Iterable, Mapping,
                    NamedTuple, NoReturn, TypeVar)

import aiosqlite
from contextlib import asynccontextmanager

from idlakd.errors import DatabaseBusy, DatabaseUnwritable, StoreError
from idlakd.models import ApiKey, Limits, SynthesisCharge, Usage, User, Voice
from idlakd.store.daemons import DAEMONS_MIGRATION, DaemonTables
from idlakd.store.jobs import JOBS_MIGRATION, JobTables, delete_jobs_of
from idlakd.store.shared import SHARED_MIGRATION, SharedTables, statements
from idlakd.store.reads import WholeReads
from idlakd.store.snapshot import DataVersion, ReadCache

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
        user_created REAL NOT NULL,  -- users.created_at when made: a re-created uid's is new
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
    CREATE TABLE running_syntheses (
        id TEXT PRIMARY KEY,
        uid TEXT NOT NULL,
        daemon TEXT NOT NULL,
        started_at REAL NOT NULL
    );
    CREATE INDEX running_syntheses_uid ON running_syntheses (uid, started_at);
    ALTER TABLE users ADD COLUMN valid_after REAL NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN unlocked_at REAL NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN login_addresses TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE removed_voices (
        id TEXT PRIMARY KEY,
        removed_at REAL NOT NULL
    );
    """,
    # Jobs for long texts, and their audio in parts (idlakd.store.jobs).
    JOBS_MIGRATION,
    # Login failures counted by every daemon of the file, and the voices' change counter.
    SHARED_MIGRATION,
    # Daemon heartbeats: a killed daemon's running syntheses stop counting within seconds.
    DAEMONS_MIGRATION,
)

_KEY_COLUMNS: Final = "k.id, k.uid, k.name, k.prefix, k.created_at, k.last_used_at, k.expires_at"
# A key's user: the one it was made for (same uid, same creation instant), not a later one.
_KEY_USER: Final = "JOIN users u ON u.uid = k.uid AND u.created_at = k.user_created"
# A key lives while that user does and has not changed their password since it was made.
_LIVE_KEY: Final = f"{_KEY_USER} AND k.created_at >= u.valid_after"

_VOICE_COLUMNS: Final = (
    "id, name, language, accent, gender, engine, options, directory, sample_rate, updated_at"
)


# Client addresses remembered per user as "known" (the newest first): enough for a person's
# devices and networks, small enough to rewrite in one row.
MAX_LOGIN_ADDRESSES: Final = 16


class TokenState(NamedTuple):
    """What the store knows about a token: revoked, its user, and when that user began and
    last ended every token (password change or reset), as wall-clock seconds."""

    revoked: bool
    user: User | None
    created_at: float
    valid_after: float


class LoginState(NamedTuple):
    """What a login check needs: the hash (None: no such user), the last unlock instant, and
    whether the client address logged in as this user before."""

    password_hash: bytes | None
    unlocked_at: float
    known_address: bool


class VoiceSeeding(NamedTuple):
    """What loading voiceconfig.json did: voices new or changed, and ids skipped as removed."""

    changed: int
    skipped: list[str]


class KeyHolder(NamedTuple):
    """An API key found by its digest, and the user it was made for."""

    key: ApiKey
    digest: bytes
    user: User | None  # None: deleted (or the uid now names a later user)
    valid_after: float  # the user's last password change: keys made before it are dead


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


#: The limit columns of user_limits, in Limits order.
LIMIT_FIELDS: Final = ("chars_per_minute", "chars_per_day", "concurrent")
_LIMIT_COLUMNS: Final = ", ".join(LIMIT_FIELDS)
_Refusal = TypeVar("_Refusal")


async def _count(db: aiosqlite.Connection, uid: str, day: str, minute: int, characters: int,
                 requests: int, per_minute: bool = True) -> None:
    """Add requests and characters to a user's day (and minute) inside the caller's transaction."""
    await db.execute(
        "INSERT INTO usage_days (uid, day, requests, characters) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (uid, day) DO UPDATE SET requests = requests + excluded.requests, "
        "characters = characters + excluded.characters",
        (uid, day, requests, characters))
    if per_minute:
        await db.execute(
            "INSERT INTO usage_minutes (uid, minute, characters) VALUES (?, ?, ?) "
            "ON CONFLICT (uid, minute) DO UPDATE SET characters = characters + excluded.characters",
            (uid, minute, characters))
    # Minutes before the previous one are never read again.
    await db.execute("DELETE FROM usage_minutes WHERE minute < ?", (minute - 1,))


async def _read_usage(db: aiosqlite.Connection | WholeReads, uid: str, day: str,
                      minute: int, running_since: float) -> Usage:
    """One user's usage, read on db (inside the caller's transaction when it holds one)."""
    async with db.execute(
        "SELECT (SELECT requests FROM usage_days WHERE uid = ?1 AND day = ?2), "
        "(SELECT characters FROM usage_days WHERE uid = ?1 AND day = ?2), "
        "(SELECT audio_seconds FROM usage_days WHERE uid = ?1 AND day = ?2), "
        "(SELECT characters FROM usage_minutes WHERE uid = ?1 AND minute = ?3), "
        "(SELECT COUNT(*) FROM running_syntheses WHERE uid = ?1 AND started_at >= ?4)",
        (uid, day, minute, running_since),
    ) as cur:
        row = await cur.fetchone()
    assert row is not None
    return Usage(day=day, requests=row[0] or 0, characters=row[1] or 0,
                 audio_seconds=row[2] or 0.0, minute_characters=row[3] or 0, running=row[4])


class Store(JobTables, SharedTables, DaemonTables):
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
        # Voices, lists and token states answered from memory while nothing was committed.
        self._version = DataVersion(path)
        self._cache = ReadCache(self._version)

    @property
    def db(self) -> aiosqlite.Connection:
        """The open connection (raises if open() was not awaited)."""
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    @property
    def reader(self) -> WholeReads:
        """The read-only connection (WAL: reads see every committed write, never wait for one),
        each query run to its end in one hop so that none holds an old snapshot (reads.py)."""
        if self._reader is None:
            raise StoreError("store is not open")
        return WholeReads(self._reader)

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
            await self._version.open()
        except sqlite3.DatabaseError as exc:
            await self.close()
            raise StoreError(f"database {self.path}: {exc}") from exc
        except DatabaseUnwritable as exc:  # name the file and SQLite's reason, for the operator
            await self.close()
            raise StoreError(f"database {self.path}: cannot be written ({exc.__cause__})") from exc

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        self._version.close()
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
            finally:
                # What this process wrote is seen by its next read, even in this loop turn.
                self._cache.forget()

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
                for statement in statements(MIGRATIONS[number]):
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
        return await self._cache.read(("user", uid), lambda: self._get_user(uid))

    async def _get_user(self, uid: str) -> User | None:
        """get_user, read from the file."""
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
        """Replace a user's password hash, ending every token and session issued before it and
        forgetting its login failures; False when the user does not exist."""
        async with self._write() as db:
            # One write: no instant exists where the new password works and old tokens still do.
            now = time.time()
            cur = await db.execute(
                "UPDATE users SET password_hash = ?, valid_after = ?, unlocked_at = ? "
                "WHERE uid = ?", (password_hash, now, now, uid))
            return cur.rowcount > 0

    async def unlock_user(self, uid: str) -> bool:
        """Mark the instant a user's login failures were forgiven (every daemon reads it on the
        next login check); False when the user does not exist."""
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE users SET unlocked_at = ? WHERE uid = ?", (time.time(), uid))
            return cur.rowcount > 0

    async def login_state(self, uid: str, address: str) -> LoginState:
        """The hash, last unlock and whether address is known for uid, in one read."""
        return await self._cache.read(("login", uid, address),
                                      lambda: self._login_state(uid, address))

    async def _login_state(self, uid: str, address: str) -> LoginState:
        """login_state, read from the file."""
        async with self.reader.execute(
                "SELECT password_hash, unlocked_at, EXISTS (SELECT 1 FROM "
                "json_each(login_addresses) WHERE value = ?) FROM users WHERE uid = ?",
                (address, uid)) as cur:
            row = await cur.fetchone()
        if row is None:
            return LoginState(None, 0.0, False)
        return LoginState(bytes(row[0]), float(row[1]), bool(row[2]))

    async def remember_login_address(self, uid: str, address: str) -> None:
        """Put address first among uid's known login addresses (at most MAX_LOGIN_ADDRESSES)."""
        async with self._write() as db:
            async with db.execute(
                    "SELECT login_addresses FROM users WHERE uid = ?", (uid,)) as cur:
                row = await cur.fetchone()
            if row is None:
                return
            try:
                known = [a for a in json.loads(row[0]) if isinstance(a, str) and a != address]
            except ValueError:
                known = []
            await db.execute("UPDATE users SET login_addresses = ? WHERE uid = ?",
                             (json.dumps([address] + known[:MAX_LOGIN_ADDRESSES - 1]), uid))

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
            # A later user of the same uid starts with the defaults and no usage.
            for table in ("user_limits", "usage_days", "usage_minutes"):
                await db.execute(f"DELETE FROM {table} WHERE uid = ?", (uid,))
            await delete_jobs_of(db, uid)
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

    async def token_state(self, jti: str, uid: str) -> TokenState:
        """In one query: is this token revoked, the user it names, and the instants before
        which that user's tokens are not theirs (created_at) or no longer valid (valid_after)."""
        return await self._cache.read(("token", jti, uid), lambda: self._token_state(jti, uid))

    async def _token_state(self, jti: str, uid: str) -> TokenState:
        """token_state, read from the file."""
        async with self.reader.execute(
            "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = ?), u.admin, u.created_at, "
            "u.valid_after FROM (SELECT 1) LEFT JOIN users u ON u.uid = ?",
            (jti, uid),
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        if row[1] is None:
            return TokenState(bool(row[0]), None, 0.0, 0.0)
        return TokenState(bool(row[0]), User(uid=uid, admin=bool(row[1])), float(row[2]),
                          float(row[3]))

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
        found = await self._cache.read(("voices", language, accent, gender),
                                       lambda: self._list_voices(language, accent, gender))
        return list(found)

    async def _list_voices(self, language: str | None, accent: str | None,
                           gender: str | None) -> tuple[Voice, ...]:
        """list_voices, read from the file."""
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
        return tuple(_voice(r) for r in rows)

    async def get_voice(self, voice_id: str) -> Voice | None:
        """The voice with this id, or None."""
        return await self._cache.read(("voice", voice_id), lambda: self._get_voice(voice_id))

    async def _get_voice(self, voice_id: str) -> Voice | None:
        """get_voice, read from the file."""
        async with self.reader.execute(
                f"SELECT {_VOICE_COLUMNS} FROM voices WHERE id = ?", (voice_id,)) as cur:
            row = await cur.fetchone()
        return _voice(row) if row else None

    async def languages(self) -> list[str]:
        """Distinct languages of all voices, sorted."""
        return list(await self._cache.read(("languages",), self._languages))

    async def _languages(self) -> tuple[str, ...]:
        """languages, read from the file."""
        async with self.reader.execute(
                "SELECT DISTINCT language FROM voices ORDER BY language") as cur:
            rows = await cur.fetchall()
        return tuple(r[0] for r in rows)

    async def accents(self, language: str) -> list[str]:
        """Distinct accents of one language, sorted."""
        return list(await self._cache.read(("accents", language),
                                           lambda: self._accents(language)))

    async def _accents(self, language: str) -> tuple[str, ...]:
        """accents, read from the file."""
        async with self.reader.execute(
                "SELECT DISTINCT accent FROM voices WHERE language = ? ORDER BY accent",
                (language,)) as cur:
            rows = await cur.fetchall()
        return tuple(r[0] for r in rows)

    async def upsert_voices(self, voices: Iterable[Voice]) -> int:
        """Add or update voices on an operator's request; a removed voice added so is back.

        A voice whose fields did not change keeps its updated_at.
        """
        async with self._write() as db:
            changed = 0
            for v in voices:
                await db.execute("DELETE FROM removed_voices WHERE id = ?", (v.id,))
                changed += await self._upsert_voice(db, v)
        return changed

    async def seed_voices(self, voices: Iterable[Voice]) -> VoiceSeeding:
        """Load voiceconfig.json's voices, except those an operator removed on purpose."""
        async with self._write() as db:
            async with db.execute("SELECT id FROM removed_voices") as cur:
                removed = {row[0] for row in await cur.fetchall()}
            changed, skipped = 0, []
            for v in voices:
                if v.id in removed:
                    skipped.append(v.id)
                else:
                    changed += await self._upsert_voice(db, v)
        return VoiceSeeding(changed, skipped)

    async def removed_voice_ids(self) -> list[str]:
        """Ids of the voices removed on purpose (voiceconfig.json does not bring them back)."""
        async with self.reader.execute("SELECT id FROM removed_voices ORDER BY id") as cur:
            rows = await cur.fetchall()
        return [r[0] for r in rows]

    @staticmethod
    async def _upsert_voice(db: aiosqlite.Connection, v: Voice) -> int:
        """Insert or update one voice inside the caller's transaction; 1 if it changed."""
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
        return int(cur.rowcount)

    async def delete_voice(self, voice_id: str) -> bool:
        """Remove a voice and remember that (seeding skips it); False when it did not exist."""
        async with self._write() as db:
            cur = await db.execute("DELETE FROM voices WHERE id = ?", (voice_id,))
            if cur.rowcount == 0:
                return False
            await db.execute(
                "INSERT OR REPLACE INTO removed_voices (id, removed_at) VALUES (?, ?)",
                (voice_id, time.time()))
        return True

    # API keys

    async def add_api_key(self, key: ApiKey, digest: bytes, limit: int) -> str:
        """Store a new key of an existing user: 'ok', 'missing' (no such user) or 'too_many'.

        Dead keys of the uid (an earlier user's, or ended by a password change) go first.
        """
        async with self._write() as db:
            async with db.execute("SELECT created_at, valid_after FROM users WHERE uid = ?",
                                  (key.uid,)) as cur:
                row = await cur.fetchone()
            if row is None:
                return "missing"
            user_created, valid_after = row
            await db.execute(
                "DELETE FROM api_keys WHERE uid = ? AND (user_created != ? OR created_at < ?)",
                (key.uid, user_created, valid_after))
            async with db.execute("SELECT COUNT(*) FROM api_keys WHERE uid = ?",
                                  (key.uid,)) as cur:
                count = await cur.fetchone()
            if count is not None and count[0] >= limit:
                return "too_many"
            await db.execute(
                "INSERT INTO api_keys (id, uid, name, prefix, digest, user_created, created_at, "
                "last_used_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                (key.id, key.uid, key.name, key.prefix, digest, user_created, key.created_at,
                 key.expires_at))
        return "ok"

    async def list_api_keys(self, uid: str | None = None) -> list[ApiKey]:
        """The live keys of one user (or of everyone), oldest first."""
        return list(await self._cache.read(("keys", uid), lambda: self._list_api_keys(uid)))

    async def _list_api_keys(self, uid: str | None) -> tuple[ApiKey, ...]:
        """list_api_keys, read from the file."""
        where, params = ("WHERE k.uid = ?", (uid,)) if uid is not None else ("", ())
        async with self.reader.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys k {_LIVE_KEY} {where} "
                "ORDER BY k.uid, k.created_at, k.rowid", params) as cur:
            rows = await cur.fetchall()
        return tuple(ApiKey(*row) for row in rows)

    async def api_key_holder(self, digest: bytes) -> KeyHolder | None:
        """The key with this digest, with its stored digest and the user it was made for."""
        async with self.reader.execute(
                f"SELECT {_KEY_COLUMNS}, k.digest, u.admin, u.valid_after FROM api_keys k "
                f"LEFT {_KEY_USER} WHERE k.digest = ?", (digest,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        key = ApiKey(*row[:7])
        user = None if row[8] is None else User(uid=key.uid, admin=bool(row[8]))
        return KeyHolder(key, bytes(row[7]), user, 0.0 if row[9] is None else float(row[9]))

    async def touch_api_key(self, key_id: str, at: float, unless_after: float) -> None:
        """Note a key's use at `at`, unless a use after `unless_after` is already noted."""
        async with self._write() as db:
            await db.execute(
                "UPDATE api_keys SET last_used_at = ? WHERE id = ? "
                "AND (last_used_at IS NULL OR last_used_at <= ?)", (at, key_id, unless_after))

    async def delete_api_key(self, key_id: str, uid: str | None = None) -> ApiKey | None:
        """Delete a live key (of this user, when given); the key deleted, or None."""
        where, params = ("AND k.uid = ?", (key_id, uid)) if uid is not None else ("", (key_id,))
        async with self._write() as db:
            async with db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys k {_LIVE_KEY} "
                                  f"WHERE k.id = ? {where}", params) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            await db.execute("DELETE FROM api_keys WHERE id = ?", (key_id,))
        return ApiKey(*row)

    # Quotas and usage

    async def get_limits(self, uid: str) -> Limits:
        """A user's stored limit overrides (None where the configured default applies)."""
        async with self.reader.execute(
                f"SELECT {_LIMIT_COLUMNS} FROM user_limits WHERE uid = ?", (uid,)) as cur:
            row = await cur.fetchone()
        return Limits(*row) if row else Limits()

    async def limits_by_user(self) -> dict[str, Limits]:
        """Every stored override, by uid."""
        async with self.reader.execute(f"SELECT uid, {_LIMIT_COLUMNS} FROM user_limits") as cur:
            rows = await cur.fetchall()
        return {r[0]: Limits(*r[1:]) for r in rows}

    async def set_limits(self, uid: str, changes: Mapping[str, int | None]) -> Limits | None:
        """Set some overrides (None: back to the default); the result, or None for no such user."""
        unknown = set(changes) - set(LIMIT_FIELDS)
        if unknown:
            raise ValueError(f"not a limit: {sorted(unknown)}")
        async with self._write() as db:
            async with db.execute("SELECT 1 FROM users WHERE uid = ?", (uid,)) as cur:
                if await cur.fetchone() is None:
                    return None
            await db.execute("INSERT OR IGNORE INTO user_limits (uid) VALUES (?)", (uid,))
            for column, value in changes.items():  # column names from LIMIT_FIELDS only
                await db.execute(f"UPDATE user_limits SET {column} = ? WHERE uid = ?",
                                 (value, uid))
            async with db.execute(
                    f"SELECT {_LIMIT_COLUMNS} FROM user_limits WHERE uid = ?", (uid,)) as cur:
                row = await cur.fetchone()
            assert row is not None
            limits = Limits(*row)
            if limits == Limits():
                await db.execute("DELETE FROM user_limits WHERE uid = ?", (uid,))
        return limits

    async def usage(self, uid: str, day: str, minute: int, running_since: float) -> Usage:
        """A user's usage on day and in minute, and their syntheses started since running_since."""
        return await _read_usage(self.reader, uid, day, minute, running_since)

    async def usage_by_user(self, day: str, minute: int, running_since: float) -> dict[str, Usage]:
        """Every user's usage that is not all zero, by uid (for the admin page)."""
        found: dict[str, dict[str, Any]] = {}
        queries: tuple[tuple[str, tuple[Any, ...], tuple[str, ...]], ...] = (
            ("SELECT uid, requests, characters, audio_seconds FROM usage_days WHERE day = ?",
             (day,), ("requests", "characters", "audio_seconds")),
            ("SELECT uid, characters FROM usage_minutes WHERE minute = ?", (minute,),
             ("minute_characters",)),
            ("SELECT uid, COUNT(*) FROM running_syntheses WHERE started_at >= ? GROUP BY uid",
             (running_since,), ("running",)),
        )
        for sql, params, names in queries:
            async with self.reader.execute(sql, params) as cur:
                for row in await cur.fetchall():
                    found.setdefault(row[0], {}).update(zip(names, row[1:]))
        return {uid: Usage(day=day, **values) for uid, values in found.items()}

    async def charge(self, charge: SynthesisCharge, running_since: float,
                     decide: Callable[[Usage], _Refusal | None]) -> _Refusal | None:
        """Check and add a synthesis in one write transaction: decide() sees the usage first.

        When decide refuses, nothing is written and its refusal is returned. Otherwise the
        request and its characters count for its day and minute, it is one of the user's
        running syntheses, and minutes before the previous one are forgotten. One writer at
        a time (BEGIN IMMEDIATE), so concurrent requests of one user never both pass.
        """
        async with self._write() as db:
            usage = await _read_usage(db, charge.uid, charge.day, charge.minute, running_since)
            refusal = decide(usage)
            if refusal is not None:
                return refusal
            await _count(db, charge.uid, charge.day, charge.minute, charge.characters, 1,
                         charge.per_minute)
            await db.execute(
                "INSERT INTO running_syntheses (id, uid, daemon, started_at) VALUES (?, ?, ?, ?)",
                (charge.id, charge.uid, charge.daemon, charge.started_at))
        return None

    async def spend(self, uid: str, day: str, minute: int, characters: int,
                    decide: Callable[[Usage], _Refusal | None]) -> _Refusal | None:
        """Check and add characters to a running synthesis's user in one write transaction.

        Like charge(), but no request and no running synthesis is added; the running ones
        are not read (decide() sees them as 0).
        """
        async with self._write() as db:
            usage = await _read_usage(db, uid, day, minute, float("inf"))
            refusal = decide(usage)
            if refusal is not None:
                return refusal
            await _count(db, uid, day, minute, characters, 0)
        return None

    async def finish_charge(self, charge: SynthesisCharge, audio_seconds: float,
                            refund: bool) -> None:
        """A charged synthesis ended: no longer running; its audio added, or (refund) it undone."""
        async with self._write() as db:
            await db.execute("DELETE FROM running_syntheses WHERE id = ?", (charge.id,))
            if refund:
                await db.execute(
                    "UPDATE usage_days SET requests = MAX(0, requests - 1), "
                    "characters = MAX(0, characters - ?) WHERE uid = ? AND day = ?",
                    (charge.characters, charge.uid, charge.day))
                if charge.per_minute:
                    await db.execute(
                        "UPDATE usage_minutes SET characters = MAX(0, characters - ?) "
                        "WHERE uid = ? AND minute = ?",
                        (charge.characters, charge.uid, charge.minute))
            elif audio_seconds > 0:
                await db.execute(
                    "UPDATE usage_days SET audio_seconds = audio_seconds + ? "
                    "WHERE uid = ? AND day = ?", (audio_seconds, charge.uid, charge.day))

    async def add_audio_seconds(self, uid: str, day: str, audio_seconds: float) -> None:
        """Add seconds of audio made for a user on day (a job's, counted when it is done)."""
        async with self._write() as db:
            await db.execute(
                "INSERT INTO usage_days (uid, day, audio_seconds) VALUES (?, ?, ?) "
                "ON CONFLICT (uid, day) DO UPDATE SET "
                "audio_seconds = audio_seconds + excluded.audio_seconds",
                (uid, day, audio_seconds))

    async def forget_running(self, daemon: str) -> int:
        """Drop the running syntheses a daemon of this name left behind (it stopped or crashed)."""
        async with self._write() as db:
            cur = await db.execute("DELETE FROM running_syntheses WHERE daemon = ?", (daemon,))
            return cur.rowcount
