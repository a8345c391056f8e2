"""PostgreSQL storage over asyncpg: the SQLite store's interface, shared by several daemons."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, AsyncIterator, Callable, Final, Iterable, Mapping, NoReturn, TypeVar

import asyncpg

from idlakd.config import DatabaseUrl
from idlakd.errors import DatabaseBusy, DatabaseUnwritable, StoreError
from idlakd.models import ApiKey, Limits, SynthesisCharge, Usage, User, Voice
from idlakd.store.postgres_daemons import POSTGRES_DAEMONS_MIGRATION, PostgresDaemonTables
from idlakd.store.postgres_jobs import JOBS_MIGRATION, PostgresJobTables, affected
from idlakd.store.postgres_shared import POSTGRES_SHARED_MIGRATION, PostgresSharedTables
from idlakd.store.sqlite import (LIMIT_FIELDS, MAX_LOGIN_ADDRESSES, WRITE_PROBE_SECONDS,
                                 KeyHolder, LoginState, TokenState, VoiceSeeding)

log = logging.getLogger(__name__)

# As SQLite's busy_timeout: a lock (row, advisory) or a free connection waited for this long
# makes the write DatabaseBusy rather than a request that hangs.
LOCK_TIMEOUT_MS: Final = 10_000
# Advisory lock keys: the migrations (a session lock), and per-uid namespaces (two-int form).
MIGRATION_LOCK: Final = 0x69646C616B64  # "idlakd"
QUOTA_LOCKS: Final = 1  # (postgres_jobs.JOB_LOCKS is 2)
ADMIN_LOCKS: Final = 3

# Forward migrations, the same versions as SQLite's MIGRATIONS written for PostgreSQL; entry
# N brings schema_version from N to N+1. Version 1 also holds the shared token secret.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE users (
        uid TEXT PRIMARY KEY,
        password_hash BYTEA NOT NULL,
        admin BOOLEAN NOT NULL DEFAULT FALSE,
        created_at DOUBLE PRECISION NOT NULL,
        seq BIGINT GENERATED ALWAYS AS IDENTITY
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
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX voices_language ON voices (language, accent);
    CREATE TABLE revoked_tokens (
        jti TEXT PRIMARY KEY,
        exp DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX revoked_tokens_exp ON revoked_tokens (exp);
    CREATE TABLE token_secret (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        secret BYTEA NOT NULL
    );
    """,
    """
    CREATE TABLE write_probe (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        at DOUBLE PRECISION NOT NULL
    );
    """,
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        uid TEXT NOT NULL,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        digest BYTEA NOT NULL UNIQUE,
        user_created DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION,
        expires_at DOUBLE PRECISION,
        seq BIGINT GENERATED ALWAYS AS IDENTITY
    );
    CREATE INDEX api_keys_uid ON api_keys (uid);
    CREATE TABLE user_limits (
        uid TEXT PRIMARY KEY,
        chars_per_minute BIGINT,
        chars_per_day BIGINT,
        concurrent BIGINT
    );
    CREATE TABLE usage_days (
        uid TEXT NOT NULL,
        day TEXT NOT NULL,
        requests BIGINT NOT NULL DEFAULT 0,
        characters BIGINT NOT NULL DEFAULT 0,
        audio_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
        PRIMARY KEY (uid, day)
    );
    CREATE TABLE usage_minutes (
        uid TEXT NOT NULL,
        minute BIGINT NOT NULL,
        characters BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (uid, minute)
    );
    CREATE TABLE running_syntheses (
        id TEXT PRIMARY KEY,
        uid TEXT NOT NULL,
        daemon TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX running_syntheses_uid ON running_syntheses (uid, started_at);
    ALTER TABLE users ADD COLUMN valid_after DOUBLE PRECISION NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN unlocked_at DOUBLE PRECISION NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN login_addresses JSONB NOT NULL DEFAULT '[]';
    CREATE TABLE removed_voices (
        id TEXT PRIMARY KEY,
        removed_at DOUBLE PRECISION NOT NULL
    );
    """,
    JOBS_MIGRATION,
    POSTGRES_SHARED_MIGRATION,
    POSTGRES_DAEMONS_MIGRATION,
)

_KEY_COLUMNS: Final = "k.id, k.uid, k.name, k.prefix, k.created_at, k.last_used_at, k.expires_at"
_KEY_USER: Final = "JOIN users u ON u.uid = k.uid AND u.created_at = k.user_created"
_LIVE_KEY: Final = f"{_KEY_USER} AND k.created_at >= u.valid_after"
_VOICE_COLUMNS: Final = (
    "id, name, language, accent, gender, engine, options, directory, sample_rate, updated_at")
_LIMIT_COLUMNS: Final = ", ".join(LIMIT_FIELDS)
_Refusal = TypeVar("_Refusal")

# Server answers that mean "wait and try again", and those that mean "takes no writes now".
_BUSY_ERRORS: Final = (asyncpg.exceptions.LockNotAvailableError,
                       asyncpg.exceptions.DeadlockDetectedError,
                       asyncpg.exceptions.SerializationError,
                       asyncpg.exceptions.TooManyConnectionsError)
_UNWRITABLE_ERRORS: Final = (asyncpg.exceptions.ReadOnlySQLTransactionError,
                             asyncpg.exceptions.InsufficientResourcesError,
                             asyncpg.exceptions.CannotConnectNowError,
                             asyncpg.exceptions.OperatorInterventionError,
                             asyncpg.exceptions.PostgresSystemError,
                             asyncpg.exceptions.ConnectionDoesNotExistError,
                             asyncpg.exceptions.InterfaceError,
                             OSError)


def _voice(row: asyncpg.Record) -> Voice:
    """Build a Voice from a row in _VOICE_COLUMNS order."""
    return Voice(id=row[0], name=row[1], language=row[2], accent=row[3], gender=row[4],
                 engine=row[5], options=json.loads(row[6] or "{}"), directory=row[7],
                 sample_rate=row[8], updated_at=row[9])


async def _read_usage(db: asyncpg.Connection, uid: str, day: str, minute: int,
                      running_since: float) -> Usage:
    """One user's usage, read on db (inside the caller's transaction when it holds one)."""
    row = await db.fetchrow(
        "SELECT (SELECT requests FROM usage_days WHERE uid = $1 AND day = $2), "
        "(SELECT characters FROM usage_days WHERE uid = $1 AND day = $2), "
        "(SELECT audio_seconds FROM usage_days WHERE uid = $1 AND day = $2), "
        "(SELECT characters FROM usage_minutes WHERE uid = $1 AND minute = $3), "
        "(SELECT COUNT(*) FROM running_syntheses WHERE uid = $1 AND started_at >= $4)",
        uid, day, minute, running_since)
    assert row is not None
    return Usage(day=day, requests=row[0] or 0, characters=row[1] or 0,
                 audio_seconds=row[2] or 0.0, minute_characters=row[3] or 0, running=row[4])


async def _count(db: asyncpg.Connection, uid: str, day: str, minute: int, characters: int,
                 requests: int, per_minute: bool = True) -> None:
    """Add requests and characters to a user's day (and minute) inside the caller's transaction."""
    await db.execute(
        "INSERT INTO usage_days (uid, day, requests, characters) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (uid, day) DO UPDATE SET requests = usage_days.requests + "
        "excluded.requests, characters = usage_days.characters + excluded.characters",
        uid, day, requests, characters)
    if per_minute:
        await db.execute(
            "INSERT INTO usage_minutes (uid, minute, characters) VALUES ($1, $2, $3) "
            "ON CONFLICT (uid, minute) DO UPDATE SET "
            "characters = usage_minutes.characters + excluded.characters",
            uid, minute, characters)
    # Minutes before the previous one are never read again.
    await db.execute("DELETE FROM usage_minutes WHERE minute < $1", minute - 1)


class PostgresStore(PostgresJobTables, PostgresSharedTables, PostgresDaemonTables):
    """The store in a PostgreSQL database: every daemon sharing it sees the same state."""

    def __init__(self, url: DatabaseUrl, pool_size: int = 10) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._probe_lock = asyncio.Lock()
        self._probed_at = float("-inf")
        self._probe_failure: StoreError | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        """The open connection pool (raises if open() was not awaited)."""
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    async def open(self) -> None:
        """Connect (a pool of at most pool_size connections) and migrate the database."""
        try:
            self._pool = await asyncpg.create_pool(
                self.url.url, min_size=1, max_size=self.pool_size,
                server_settings={"lock_timeout": str(LOCK_TIMEOUT_MS),
                                 "application_name": "idlakd"})
            await self._migrate()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, StoreError,
                asyncio.TimeoutError, ValueError) as exc:  # ValueError: a malformed URL
            await self.close()
            # str(self.url) hides the password; asyncpg's messages never carry it.
            raise StoreError(f"database {self.url}: {exc}") from exc

    async def close(self) -> None:
        """Close every connection (idempotent)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def __aenter__(self) -> "PostgresStore":
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def _raise_failure(self, exc: BaseException) -> NoReturn:
        """Raise the domain error of a failed statement: busy and unwritable are 503s."""
        if isinstance(exc, (*_BUSY_ERRORS, asyncio.TimeoutError)):
            log.warning("Database %s busy after %d ms: %s", self.url, LOCK_TIMEOUT_MS, exc)
            raise DatabaseBusy() from exc
        if isinstance(exc, _UNWRITABLE_ERRORS):
            log.error("Database %s cannot be written: %s", self.url, exc)
            failure = DatabaseUnwritable()
            self._probe_failure, self._probed_at = failure, time.monotonic()
            raise failure from exc
        raise StoreError(f"database {self.url}: {exc}") from exc

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool; database failures become the store's domain errors."""
        try:
            async with self.pool.acquire(timeout=LOCK_TIMEOUT_MS / 1000) as db:
                yield db
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                asyncio.TimeoutError) as exc:
            self._raise_failure(exc)

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[asyncpg.Connection]:
        """A short transaction on a connection of its own (rolled back on any error)."""
        async with self._connection() as db:
            async with db.transaction():
                yield db

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Rows of one read."""
        async with self._connection() as db:
            return list(await db.fetch(sql, *args))

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        """The first row of one read, or None."""
        async with self._connection() as db:
            return await db.fetchrow(sql, *args)

    async def _migrate(self) -> None:
        """Apply the migrations the database has not seen yet, one node at a time."""
        async with self.pool.acquire() as db:
            # A session lock: a second node starting now waits, then finds nothing to do.
            await db.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            try:
                await db.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                                 "id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)")
                version = int(await db.fetchval(
                    "SELECT COALESCE((SELECT version FROM schema_version), 0)"))
                if version > len(MIGRATIONS):
                    raise StoreError(
                        f"database {self.url} has schema version {version}, newer than this "
                        f"idlakd ({len(MIGRATIONS)}); upgrade idlakd")
                for number in range(version, len(MIGRATIONS)):
                    log.info("Migrating database schema to version %d", number + 1)
                    async with db.transaction():
                        await db.execute(MIGRATIONS[number])
                        await db.execute(
                            "INSERT INTO schema_version (id, version) VALUES (1, $1) "
                            "ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                            number + 1)
            finally:
                await db.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

    async def schema_version(self) -> int:
        """The schema version the database is at."""
        row = await self._fetchrow("SELECT version FROM schema_version")
        return 0 if row is None else int(row[0])

    async def keep_secret(self, candidate: bytes) -> bytes:
        """The token secret every daemon shares: candidate if none is stored yet (the first
        node to store one wins; the others get the winner's)."""
        async with self._write() as db:
            await db.execute("INSERT INTO token_secret (id, secret) VALUES (1, $1) "
                             "ON CONFLICT (id) DO NOTHING", candidate)
            return bytes(await db.fetchval("SELECT secret FROM token_secret WHERE id = 1"))

    async def ping(self) -> None:
        """Run a trivial query (readiness check)."""
        await self._fetchrow("SELECT 1")

    async def check_writable(self) -> None:
        """Prove that a write commits (readiness), else raise DatabaseUnwritable/Busy; at most
        once per WRITE_PROBE_SECONDS, concurrent callers share it."""
        async with self._probe_lock:
            if time.monotonic() - self._probed_at >= WRITE_PROBE_SECONDS:
                try:
                    async with self._write() as db:
                        await db.execute(
                            "INSERT INTO write_probe (id, at) VALUES (1, $1) "
                            "ON CONFLICT (id) DO UPDATE SET at = excluded.at", time.time())
                    self._probe_failure = None
                except StoreError as exc:
                    self._probe_failure = exc
                self._probed_at = time.monotonic()
        if self._probe_failure is not None:
            raise self._probe_failure.with_traceback(None)

    # Users

    async def count_users(self) -> int:
        """How many users exist."""
        row = await self._fetchrow("SELECT COUNT(*) FROM users")
        return int(row[0]) if row else 0

    async def list_users(self) -> list[User]:
        """Every user, in creation order."""
        rows = await self._fetch("SELECT uid, admin FROM users ORDER BY created_at, seq")
        return [User(uid=r[0], admin=bool(r[1])) for r in rows]

    async def get_user(self, uid: str) -> User | None:
        """The user with this uid, or None."""
        row = await self._fetchrow("SELECT uid, admin FROM users WHERE uid = $1", uid)
        return User(uid=row[0], admin=bool(row[1])) if row else None

    async def get_password_hash(self, uid: str) -> bytes | None:
        """The stored bcrypt hash of this user, or None."""
        row = await self._fetchrow("SELECT password_hash FROM users WHERE uid = $1", uid)
        return bytes(row[0]) if row else None

    async def add_user(self, uid: str, password_hash: bytes, admin: bool) -> bool:
        """Create a user; False when the uid is taken."""
        async with self._write() as db:
            status = await db.execute(
                "INSERT INTO users (uid, password_hash, admin, created_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (uid) DO NOTHING",
                uid, password_hash, admin, time.time())
        return affected(status) == 1

    async def set_password_hash(self, uid: str, password_hash: bytes) -> bool:
        """Replace a user's password hash, ending every token and session issued before it and
        forgetting its login failures; False when the user does not exist."""
        now = time.time()
        async with self._write() as db:
            status = await db.execute(
                "UPDATE users SET password_hash = $1, valid_after = $2, unlocked_at = $2 "
                "WHERE uid = $3", password_hash, now, uid)
        return affected(status) > 0

    async def unlock_user(self, uid: str) -> bool:
        """Mark the instant a user's login failures were forgiven; False for no such user."""
        async with self._write() as db:
            status = await db.execute("UPDATE users SET unlocked_at = $1 WHERE uid = $2",
                                      time.time(), uid)
        return affected(status) > 0

    async def login_state(self, uid: str, address: str) -> LoginState:
        """The hash, last unlock and whether address is known for uid, in one read."""
        row = await self._fetchrow(
            "SELECT password_hash, unlocked_at, login_addresses ? $2 FROM users WHERE uid = $1",
            uid, address)
        if row is None:
            return LoginState(None, 0.0, False)
        return LoginState(bytes(row[0]), float(row[1]), bool(row[2]))

    async def remember_login_address(self, uid: str, address: str) -> None:
        """Put address first among uid's known login addresses (at most MAX_LOGIN_ADDRESSES)."""
        async with self._write() as db:
            row = await db.fetchrow(
                "SELECT login_addresses FROM users WHERE uid = $1 FOR UPDATE", uid)
            if row is None:
                return
            try:
                known = [a for a in json.loads(row[0]) if isinstance(a, str) and a != address]
            except ValueError:
                known = []
            await db.execute("UPDATE users SET login_addresses = $1::jsonb WHERE uid = $2",
                             json.dumps([address] + known[:MAX_LOGIN_ADDRESSES - 1]), uid)

    async def delete_user(self, uid: str) -> str:
        """Delete a user: 'ok', 'missing' or 'last_admin' (refused)."""
        async with self._write() as db:
            # Admin changes one at a time: two nodes never both remove "the other" last admin.
            await db.execute("SELECT pg_advisory_xact_lock($1, 0)", ADMIN_LOCKS)
            row = await db.fetchrow("SELECT admin FROM users WHERE uid = $1", uid)
            if row is None:
                return "missing"
            if row[0] and await self._admin_count(db) <= 1:
                return "last_admin"
            await db.execute("DELETE FROM users WHERE uid = $1", uid)
            for table in ("user_limits", "usage_days", "usage_minutes"):
                await db.execute(f"DELETE FROM {table} WHERE uid = $1", uid)
            await db.execute("DELETE FROM job_parts WHERE job_id IN "
                             "(SELECT id FROM jobs WHERE uid = $1)", uid)
            await db.execute("DELETE FROM jobs WHERE uid = $1", uid)
        return "ok"

    async def set_admin(self, uid: str, admin: bool | None) -> tuple[str, bool]:
        """Set (or toggle, when admin is None) the admin flag: ('ok'|'missing'|'last_admin', flag)."""
        async with self._write() as db:
            await db.execute("SELECT pg_advisory_xact_lock($1, 0)", ADMIN_LOCKS)
            row = await db.fetchrow("SELECT admin FROM users WHERE uid = $1", uid)
            if row is None:
                return "missing", False
            current = bool(row[0])
            wanted = (not current) if admin is None else admin
            if current and not wanted and await self._admin_count(db) <= 1:
                return "last_admin", current
            await db.execute("UPDATE users SET admin = $1 WHERE uid = $2", wanted, uid)
        return "ok", wanted

    @staticmethod
    async def _admin_count(db: asyncpg.Connection) -> int:
        """Number of admins, read inside the caller's transaction."""
        return int(await db.fetchval("SELECT COUNT(*) FROM users WHERE admin"))

    # Tokens

    async def token_state(self, jti: str, uid: str) -> TokenState:
        """In one query: is this token revoked, the user it names, and the instants before
        which that user's tokens are not theirs (created_at) or no longer valid (valid_after)."""
        row = await self._fetchrow(
            "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $1), u.admin, "
            "u.created_at, u.valid_after FROM (SELECT 1) AS one "
            "LEFT JOIN users u ON u.uid = $2", jti, uid)
        assert row is not None
        if row[1] is None:
            return TokenState(bool(row[0]), None, 0.0, 0.0)
        return TokenState(bool(row[0]), User(uid=uid, admin=bool(row[1])), float(row[2]),
                          float(row[3]))

    async def revoke_token(self, jti: str, exp: float) -> None:
        """Remember a revoked token until its own expiry; purge revocations already past it."""
        async with self._write() as db:
            await db.execute("INSERT INTO revoked_tokens (jti, exp) VALUES ($1, $2) "
                             "ON CONFLICT (jti) DO UPDATE SET exp = excluded.exp", jti, exp)
            await db.execute("DELETE FROM revoked_tokens WHERE exp < $1", time.time())

    # Voices

    async def list_voices(self, language: str | None = None, accent: str | None = None,
                          gender: str | None = None) -> list[Voice]:
        """Voices matching the given filters, ordered by id."""
        clauses: list[str] = []
        params: list[str] = []
        for column, value in (("language", language), ("accent", accent), ("gender", gender)):
            if value is not None:
                params.append(value)
                clauses.append(f"{column} = ${len(params)}")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetch(f"SELECT {_VOICE_COLUMNS} FROM voices{where} ORDER BY id",
                                 *params)
        return [_voice(r) for r in rows]

    async def get_voice(self, voice_id: str) -> Voice | None:
        """The voice with this id, or None."""
        row = await self._fetchrow(f"SELECT {_VOICE_COLUMNS} FROM voices WHERE id = $1",
                                   voice_id)
        return _voice(row) if row else None

    async def languages(self) -> list[str]:
        """Distinct languages of all voices, sorted."""
        rows = await self._fetch("SELECT DISTINCT language FROM voices ORDER BY language")
        return [r[0] for r in rows]

    async def accents(self, language: str) -> list[str]:
        """Distinct accents of one language, sorted."""
        rows = await self._fetch(
            "SELECT DISTINCT accent FROM voices WHERE language = $1 ORDER BY accent", language)
        return [r[0] for r in rows]

    async def upsert_voices(self, voices: Iterable[Voice]) -> int:
        """Add or update voices on an operator's request; a removed voice added so is back."""
        async with self._write() as db:
            changed = 0
            for v in voices:
                await db.execute("DELETE FROM removed_voices WHERE id = $1", v.id)
                changed += await self._upsert_voice(db, v)
        return changed

    async def seed_voices(self, voices: Iterable[Voice]) -> VoiceSeeding:
        """Load voiceconfig.json's voices, except those an operator removed on purpose."""
        async with self._write() as db:
            removed = {row[0] for row in await db.fetch("SELECT id FROM removed_voices")}
            changed, skipped = 0, []
            for v in voices:
                if v.id in removed:
                    skipped.append(v.id)
                else:
                    changed += await self._upsert_voice(db, v)
        return VoiceSeeding(changed, skipped)

    async def removed_voice_ids(self) -> list[str]:
        """Ids of the voices removed on purpose (voiceconfig.json does not bring them back)."""
        return [r[0] for r in await self._fetch("SELECT id FROM removed_voices ORDER BY id")]

    @staticmethod
    async def _upsert_voice(db: asyncpg.Connection, v: Voice) -> int:
        """Insert or update one voice inside the caller's transaction; 1 if it changed."""
        status = await db.execute(
            f"INSERT INTO voices ({_VOICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
            "$9, $10) ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
            "language = excluded.language, accent = excluded.accent, "
            "gender = excluded.gender, engine = excluded.engine, "
            "options = excluded.options, directory = excluded.directory, "
            "sample_rate = excluded.sample_rate, updated_at = excluded.updated_at "
            "WHERE (voices.name, voices.language, voices.accent, voices.gender, voices.engine, "
            "voices.options, voices.directory, voices.sample_rate) IS DISTINCT FROM "
            "(excluded.name, excluded.language, excluded.accent, excluded.gender, "
            "excluded.engine, excluded.options, excluded.directory, excluded.sample_rate)",
            v.id, v.name, v.language, v.accent, v.gender, v.engine,
            json.dumps(v.options, sort_keys=True), v.directory, v.sample_rate, time.time())
        return affected(status)

    async def delete_voice(self, voice_id: str) -> bool:
        """Remove a voice and remember that (seeding skips it); False when it did not exist."""
        async with self._write() as db:
            if affected(await db.execute("DELETE FROM voices WHERE id = $1", voice_id)) == 0:
                return False
            await db.execute(
                "INSERT INTO removed_voices (id, removed_at) VALUES ($1, $2) "
                "ON CONFLICT (id) DO UPDATE SET removed_at = excluded.removed_at",
                voice_id, time.time())
        return True

    # API keys

    async def add_api_key(self, key: ApiKey, digest: bytes, limit: int) -> str:
        """Store a new key of an existing user: 'ok', 'missing' (no such user) or 'too_many'.

        Dead keys of the uid (an earlier user's, or ended by a password change) go first.
        """
        async with self._write() as db:
            # The user's row locked: two nodes adding keys at once count one after the other.
            row = await db.fetchrow("SELECT created_at, valid_after FROM users WHERE uid = $1 "
                                    "FOR UPDATE", key.uid)
            if row is None:
                return "missing"
            user_created, valid_after = row[0], row[1]
            await db.execute("DELETE FROM api_keys WHERE uid = $1 AND "
                             "(user_created != $2 OR created_at < $3)",
                             key.uid, user_created, valid_after)
            count = await db.fetchval("SELECT COUNT(*) FROM api_keys WHERE uid = $1", key.uid)
            if count >= limit:
                return "too_many"
            await db.execute(
                "INSERT INTO api_keys (id, uid, name, prefix, digest, user_created, created_at, "
                "last_used_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8)",
                key.id, key.uid, key.name, key.prefix, digest, user_created, key.created_at,
                key.expires_at)
        return "ok"

    async def list_api_keys(self, uid: str | None = None) -> list[ApiKey]:
        """The live keys of one user (or of everyone), oldest first."""
        where, params = ("WHERE k.uid = $1", (uid,)) if uid is not None else ("", ())
        rows = await self._fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys k {_LIVE_KEY} {where} "
                                 "ORDER BY k.uid, k.created_at, k.seq", *params)
        return [ApiKey(*row) for row in rows]

    async def api_key_holder(self, digest: bytes) -> KeyHolder | None:
        """The key with this digest, with its stored digest and the user it was made for."""
        row = await self._fetchrow(
            f"SELECT {_KEY_COLUMNS}, k.digest, u.admin, u.valid_after FROM api_keys k "
            f"LEFT {_KEY_USER} WHERE k.digest = $1", digest)
        if row is None:
            return None
        key = ApiKey(*list(row)[:7])
        user = None if row[8] is None else User(uid=key.uid, admin=bool(row[8]))
        return KeyHolder(key, bytes(row[7]), user, 0.0 if row[9] is None else float(row[9]))

    async def touch_api_key(self, key_id: str, at: float, unless_after: float) -> None:
        """Note a key's use at `at`, unless a use after `unless_after` is already noted."""
        async with self._write() as db:
            await db.execute("UPDATE api_keys SET last_used_at = $1 WHERE id = $2 "
                             "AND (last_used_at IS NULL OR last_used_at <= $3)",
                             at, key_id, unless_after)

    async def delete_api_key(self, key_id: str, uid: str | None = None) -> ApiKey | None:
        """Delete a live key (of this user, when given); the key deleted, or None."""
        where, params = ("AND k.uid = $2", (key_id, uid)) if uid is not None else ("", (key_id,))
        async with self._write() as db:
            row = await db.fetchrow(f"SELECT {_KEY_COLUMNS} FROM api_keys k {_LIVE_KEY} "
                                    f"WHERE k.id = $1 {where} FOR UPDATE OF k", *params)
            if row is None:
                return None
            await db.execute("DELETE FROM api_keys WHERE id = $1", key_id)
        return ApiKey(*row)

    # Quotas and usage

    async def get_limits(self, uid: str) -> Limits:
        """A user's stored limit overrides (None where the configured default applies)."""
        row = await self._fetchrow(f"SELECT {_LIMIT_COLUMNS} FROM user_limits WHERE uid = $1",
                                   uid)
        return Limits(*row) if row else Limits()

    async def limits_by_user(self) -> dict[str, Limits]:
        """Every stored override, by uid."""
        rows = await self._fetch(f"SELECT uid, {_LIMIT_COLUMNS} FROM user_limits")
        return {r[0]: Limits(*list(r)[1:]) for r in rows}

    async def set_limits(self, uid: str, changes: Mapping[str, int | None]) -> Limits | None:
        """Set some overrides (None: back to the default); the result, or None for no such user."""
        unknown = set(changes) - set(LIMIT_FIELDS)
        if unknown:
            raise ValueError(f"not a limit: {sorted(unknown)}")
        async with self._write() as db:
            if await db.fetchrow("SELECT 1 FROM users WHERE uid = $1", uid) is None:
                return None
            await db.execute("INSERT INTO user_limits (uid) VALUES ($1) "
                             "ON CONFLICT (uid) DO NOTHING", uid)
            for column, value in changes.items():  # column names from LIMIT_FIELDS only
                await db.execute(f"UPDATE user_limits SET {column} = $1 WHERE uid = $2",
                                 value, uid)
            row = await db.fetchrow(f"SELECT {_LIMIT_COLUMNS} FROM user_limits WHERE uid = $1",
                                    uid)
            assert row is not None
            limits = Limits(*row)
            if limits == Limits():
                await db.execute("DELETE FROM user_limits WHERE uid = $1", uid)
        return limits

    async def usage(self, uid: str, day: str, minute: int, running_since: float) -> Usage:
        """A user's usage on day and in minute, and their syntheses started since running_since."""
        async with self._connection() as db:
            return await _read_usage(db, uid, day, minute, running_since)

    async def usage_by_user(self, day: str, minute: int, running_since: float) -> dict[str, Usage]:
        """Every user's usage that is not all zero, by uid (for the admin page)."""
        found: dict[str, dict[str, Any]] = {}
        queries: tuple[tuple[str, tuple[Any, ...], tuple[str, ...]], ...] = (
            ("SELECT uid, requests, characters, audio_seconds FROM usage_days WHERE day = $1",
             (day,), ("requests", "characters", "audio_seconds")),
            ("SELECT uid, characters FROM usage_minutes WHERE minute = $1", (minute,),
             ("minute_characters",)),
            ("SELECT uid, COUNT(*) FROM running_syntheses WHERE started_at >= $1 GROUP BY uid",
             (running_since,), ("running",)),
        )
        for sql, params, names in queries:
            for row in await self._fetch(sql, *params):
                found.setdefault(row[0], {}).update(zip(names, list(row)[1:]))
        return {uid: Usage(day=day, **values) for uid, values in found.items()}

    async def charge(self, charge: SynthesisCharge, running_since: float,
                     decide: Callable[[Usage], _Refusal | None]) -> _Refusal | None:
        """Check and add a synthesis in one transaction: decide() sees the usage first.

        The user's advisory lock is held to the end of the transaction, so concurrent
        requests of one user, on any daemon, are checked one after the other.
        """
        async with self._write() as db:
            await db.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))",
                             QUOTA_LOCKS, charge.uid)
            usage = await _read_usage(db, charge.uid, charge.day, charge.minute, running_since)
            refusal = decide(usage)
            if refusal is not None:
                return refusal
            await _count(db, charge.uid, charge.day, charge.minute, charge.characters, 1,
                         charge.per_minute)
            await db.execute("INSERT INTO running_syntheses (id, uid, daemon, started_at) "
                             "VALUES ($1, $2, $3, $4)",
                             charge.id, charge.uid, charge.daemon, charge.started_at)
        return None

    async def spend(self, uid: str, day: str, minute: int, characters: int,
                    decide: Callable[[Usage], _Refusal | None]) -> _Refusal | None:
        """Check and add characters to a running synthesis's user in one transaction (the
        running ones are not read: decide() sees them as 0)."""
        async with self._write() as db:
            await db.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", QUOTA_LOCKS, uid)
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
            await db.execute("DELETE FROM running_syntheses WHERE id = $1", charge.id)
            if refund:
                await db.execute(
                    "UPDATE usage_days SET requests = GREATEST(0, requests - 1), "
                    "characters = GREATEST(0, characters - $1) WHERE uid = $2 AND day = $3",
                    charge.characters, charge.uid, charge.day)
                if charge.per_minute:
                    await db.execute(
                        "UPDATE usage_minutes SET characters = GREATEST(0, characters - $1) "
                        "WHERE uid = $2 AND minute = $3",
                        charge.characters, charge.uid, charge.minute)
            elif audio_seconds > 0:
                await db.execute("UPDATE usage_days SET audio_seconds = audio_seconds + $1 "
                                 "WHERE uid = $2 AND day = $3",
                                 audio_seconds, charge.uid, charge.day)

    async def add_audio_seconds(self, uid: str, day: str, audio_seconds: float) -> None:
        """Add seconds of audio made for a user on day (a job's, counted when it is done)."""
        async with self._write() as db:
            await db.execute(
                "INSERT INTO usage_days (uid, day, audio_seconds) VALUES ($1, $2, $3) "
                "ON CONFLICT (uid, day) DO UPDATE SET "
                "audio_seconds = usage_days.audio_seconds + excluded.audio_seconds",
                uid, day, audio_seconds)

    async def forget_running(self, daemon: str) -> int:
        """Drop the running syntheses a daemon of this name left behind (it stopped or crashed)."""
        async with self._write() as db:
            return affected(await db.execute(
                "DELETE FROM running_syntheses WHERE daemon = $1", daemon))
