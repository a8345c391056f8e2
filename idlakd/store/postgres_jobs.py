"""The jobs tables of the PostgreSQL store: the SQLite store's job methods, claimed with
SELECT ... FOR UPDATE SKIP LOCKED so runners on several daemons never take the same job."""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from typing import Any, Awaitable, Callable, Final, Sequence

import asyncpg

from idlakd.models import Job
from idlakd.store.jobs import MARKS, PCM, RESULT

#: The migration that adds the jobs tables (entry 4 of the store's MIGRATIONS).
JOBS_MIGRATION: Final = """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        uid TEXT NOT NULL,
        voice_id TEXT NOT NULL,
        audio_format TEXT NOT NULL,
        options TEXT NOT NULL DEFAULT '{}',
        text TEXT NOT NULL,
        characters_total BIGINT NOT NULL,
        status TEXT NOT NULL,
        characters_done BIGINT NOT NULL DEFAULT 0,
        audio_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
        error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        next_group BIGINT NOT NULL DEFAULT 0,
        result_bytes BIGINT NOT NULL DEFAULT 0,
        claimed_by TEXT,
        heartbeat_at DOUBLE PRECISION
    );
    CREATE INDEX jobs_uid ON jobs (uid, created_at);
    CREATE INDEX jobs_status ON jobs (status, created_at);
    CREATE TABLE job_parts (
        job_id TEXT NOT NULL,
        stage TEXT NOT NULL,
        part BIGINT NOT NULL,
        data BYTEA NOT NULL,
        audio_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
        PRIMARY KEY (job_id, stage, part)
    );
    """

# The advisory lock namespace of per-user job bounds (the two-int form: namespace, hashtext(uid)).
JOB_LOCKS: Final = 2

_COLUMNS: Final = ("id, uid, voice_id, audio_format, options, characters_total, status, "
                   "characters_done, audio_seconds, error, created_at, started_at, finished_at, "
                   "next_group, result_bytes")
_ACTIVE: Final = "status IN ('queued', 'running')"
# A job a runner may take: queued, or running with a heartbeat older than $1.
_RUNNABLE: Final = ("(status = 'queued' OR (status = 'running' AND "
                    "(heartbeat_at IS NULL OR heartbeat_at < $1)))")
# A write of the runner: the job ($1) is still running and still its ($2).
_OURS: Final = "id = $1 AND status = 'running' AND claimed_by = $2"


def affected(status: str) -> int:
    """Rows a statement changed, from asyncpg's command tag ("UPDATE 3", "INSERT 0 1")."""
    return int(status.rsplit(" ", 1)[-1])


def _job(row: Sequence[Any]) -> Job:
    """A Job from a row in _COLUMNS order."""
    return Job(id=row[0], uid=row[1], voice_id=row[2], audio_format=row[3],
               options=json.loads(row[4] or "{}"), characters_total=row[5], status=row[6],
               characters_done=row[7], audio_seconds=row[8], error=row[9], created_at=row[10],
               started_at=row[11], finished_at=row[12], next_group=row[13],
               result_bytes=row[14])


class PostgresJobTables:
    """The job methods of the PostgreSQL store (a mixin: the store gives _write and _fetch)."""

    # Given by the store this mixes into: a write transaction, the rows (or first row) of a read.
    _write: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]
    _fetch: Callable[..., Awaitable[list[asyncpg.Record]]]
    _fetchrow: Callable[..., Awaitable[asyncpg.Record | None]]

    async def create_job(self, job: Job, text: str, max_active: int,
                         max_stored_bytes: int) -> str:
        """Store a new queued job: 'ok', 'too_many' (max_active queued or running) or
        'too_much' (stored results reach max_stored_bytes); 0: no bound."""
        async with self._write() as db:
            # The user's bounds are checked one request at a time, across daemons.
            await db.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))",
                             JOB_LOCKS, job.uid)
            if max_active:
                count = await db.fetchval(
                    f"SELECT COUNT(*) FROM jobs WHERE uid = $1 AND {_ACTIVE}", job.uid)
                if count >= max_active:
                    return "too_many"
            if max_stored_bytes and await self._stored_bytes(db, job.uid) >= max_stored_bytes:
                return "too_much"
            await db.execute(
                "INSERT INTO jobs (id, uid, voice_id, audio_format, options, text, "
                "characters_total, status, created_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8)",
                job.id, job.uid, job.voice_id, job.audio_format,
                json.dumps(job.options, sort_keys=True), text, job.characters_total,
                job.created_at)
        return "ok"

    @staticmethod
    async def _stored_bytes(db: asyncpg.Connection, uid: str) -> int:
        """Bytes of every part the user's jobs hold (read on db)."""
        return int(await db.fetchval(
            "SELECT COALESCE(SUM(octet_length(p.data)), 0) FROM job_parts p "
            "JOIN jobs j ON j.id = p.job_id WHERE j.uid = $1", uid))

    async def stored_job_bytes(self, uid: str) -> int:
        """Bytes of audio and marks (parts of every stage) the user's jobs hold in the store."""
        row = await self._fetchrow(
            "SELECT COALESCE(SUM(octet_length(p.data)), 0) FROM job_parts p "
            "JOIN jobs j ON j.id = p.job_id WHERE j.uid = $1", uid)
        return int(row[0]) if row else 0

    async def get_job(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        row = await self._fetchrow(f"SELECT {_COLUMNS} FROM jobs WHERE id = $1", job_id)
        return None if row is None else _job(row)

    async def list_jobs(self, uid: str | None = None, limit: int = 1000) -> list[Job]:
        """The jobs of one user (or of everyone), newest first, at most limit."""
        if uid is not None:
            rows = await self._fetch(f"SELECT {_COLUMNS} FROM jobs WHERE uid = $1 "
                                     "ORDER BY created_at DESC, id LIMIT $2", uid, limit)
        else:
            rows = await self._fetch(f"SELECT {_COLUMNS} FROM jobs "
                                     "ORDER BY created_at DESC, id LIMIT $1", limit)
        return [_job(row) for row in rows]

    async def job_text(self, job_id: str) -> str | None:
        """The text of a job (for its runner), or None."""
        row = await self._fetchrow("SELECT text FROM jobs WHERE id = $1", job_id)
        return None if row is None else str(row[0])

    async def claim_job(self, owner: str, stale_before: float, now: float) -> Job | None:
        """Take the oldest runnable job for owner, atomically: a queued one, or a running one
        whose heartbeat is older than stale_before (its daemon died); None when there is none.

        SKIP LOCKED: a job another runner is taking right now is passed over, not waited for.
        """
        async with self._write() as db:
            row = await db.fetchrow(
                "UPDATE jobs SET status = 'running', claimed_by = $2, heartbeat_at = $3, "
                "started_at = COALESCE(started_at, $3) WHERE id = (SELECT id FROM jobs "
                f"WHERE {_RUNNABLE} ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) "
                f"RETURNING {_COLUMNS}", stale_before, owner, now)
        return None if row is None else _job(row)

    async def release_jobs(self, owner: str) -> int:
        """Give back the running jobs owner holds (it stopped or restarted): queued again."""
        async with self._write() as db:
            return affected(await db.execute(
                "UPDATE jobs SET status = 'queued', claimed_by = NULL "
                "WHERE status = 'running' AND claimed_by = $1", owner))

    async def heartbeat_job(self, job_id: str, owner: str, now: float) -> bool:
        """Note that owner still works on the job; False when the job is no longer its."""
        async with self._write() as db:
            return affected(await db.execute(
                f"UPDATE jobs SET heartbeat_at = $3 WHERE {_OURS}", job_id, owner, now)) == 1

    async def save_job_group(self, job_id: str, owner: str, parts: Sequence[bytes],
                             characters_done: int, audio_seconds: float, now: float,
                             marks: bytes) -> bool:
        """One finished group's PCM parts, its marks and the progress they make, in one
        transaction; False (nothing written) when the job is no longer owner's."""
        async with self._write() as db:
            # The update locks the job's row: its parts are numbered by one writer at a time.
            status = await db.execute(
                "UPDATE jobs SET characters_done = $3, audio_seconds = audio_seconds + $4, "
                f"next_group = next_group + 1, heartbeat_at = $5 WHERE {_OURS}",
                job_id, owner, characters_done, audio_seconds, now)
            if affected(status) != 1:
                return False
            first = int(await db.fetchval(
                "SELECT COALESCE(MAX(part) + 1, 0) FROM job_parts WHERE job_id = $1 "
                "AND stage = $2", job_id, PCM))
            await db.executemany(
                "INSERT INTO job_parts (job_id, stage, part, data) VALUES ($1, $2, $3, $4)",
                [(job_id, PCM, first + i, part) for i, part in enumerate(parts)])
            # One marks part per group, even an empty one: its seconds place the next group.
            await db.execute(
                "INSERT INTO job_parts (job_id, stage, part, data, audio_seconds) "
                "SELECT $1, $2, COALESCE(MAX(part) + 1, 0), $3::bytea, $4::float8 "
                "FROM job_parts WHERE job_id = $1 AND stage = $2",
                job_id, MARKS, marks, audio_seconds)
        return True

    async def job_marks(self, job_id: str, group: int) -> tuple[bytes, float] | None:
        """One group's marks (JSON lines) and the seconds of audio it made; None past the last."""
        row = await self._fetchrow(
            "SELECT data, audio_seconds FROM job_parts WHERE job_id = $1 AND stage = $2 "
            "AND part = $3", job_id, MARKS, group)
        return None if row is None else (bytes(row[0]), float(row[1]))

    async def job_part(self, job_id: str, stage: str, index: int) -> bytes | None:
        """One part of a job's PCM or result, or None past the last."""
        row = await self._fetchrow(
            "SELECT data FROM job_parts WHERE job_id = $1 AND stage = $2 AND part = $3",
            job_id, stage, index)
        return None if row is None else bytes(row[0])

    async def job_pcm_bytes(self, job_id: str) -> int:
        """Bytes of the PCM a job's finished groups hold."""
        row = await self._fetchrow(
            "SELECT COALESCE(SUM(octet_length(data)), 0) FROM job_parts WHERE job_id = $1 "
            "AND stage = $2", job_id, PCM)
        return int(row[0]) if row else 0

    async def clear_job_result(self, job_id: str, owner: str) -> bool:
        """Drop a result an interrupted encoding left (it starts again); False if not owner's."""
        async with self._write() as db:
            if await db.fetchrow(f"SELECT 1 FROM jobs WHERE {_OURS} FOR UPDATE",
                                 job_id, owner) is None:
                return False
            await db.execute("DELETE FROM job_parts WHERE job_id = $1 AND stage = $2",
                             job_id, RESULT)
        return True

    async def add_job_result_part(self, job_id: str, owner: str, index: int, data: bytes,
                                  now: float) -> bool:
        """Store one part of the encoded result; False when the job is no longer owner's."""
        async with self._write() as db:
            status = await db.execute(f"UPDATE jobs SET heartbeat_at = $3 WHERE {_OURS}",
                                      job_id, owner, now)
            if affected(status) != 1:
                return False
            await db.execute("INSERT INTO job_parts (job_id, stage, part, data) "
                             "VALUES ($1, $2, $3, $4)", job_id, RESULT, index, data)
        return True

    async def finish_job(self, job_id: str, owner: str, result_bytes: int, now: float) -> bool:
        """The result is complete: done, its PCM dropped (its marks kept), in one transaction
        (owner's only)."""
        async with self._write() as db:
            status = await db.execute(
                "UPDATE jobs SET status = 'done', result_bytes = $3, finished_at = $4, "
                f"characters_done = characters_total, claimed_by = NULL WHERE {_OURS}",
                job_id, owner, result_bytes, now)
            if affected(status) != 1:
                return False
            await db.execute("DELETE FROM job_parts WHERE job_id = $1 AND stage = $2",
                             job_id, PCM)
        return True

    async def fail_job(self, job_id: str, owner: str, error: str, now: float) -> bool:
        """The job cannot be done: failed with error, its parts dropped (owner's only)."""
        async with self._write() as db:
            status = await db.execute(
                "UPDATE jobs SET status = 'failed', error = $3, finished_at = $4, "
                f"claimed_by = NULL WHERE {_OURS}", job_id, owner, error, now)
            if affected(status) != 1:
                return False
            await db.execute("DELETE FROM job_parts WHERE job_id = $1", job_id)
        return True

    async def cancel_job(self, job_id: str, now: float) -> Job | None:
        """Cancel a queued or running job (its parts dropped); the job after, None if not active."""
        async with self._write() as db:
            row = await db.fetchrow(
                "UPDATE jobs SET status = 'cancelled', finished_at = $2, claimed_by = NULL "
                f"WHERE id = $1 AND {_ACTIVE} RETURNING {_COLUMNS}", job_id, now)
            if row is None:
                return None
            await db.execute("DELETE FROM job_parts WHERE job_id = $1", job_id)
        return _job(row)

    async def delete_job(self, job_id: str) -> bool:
        """Delete an ended job (done, failed, cancelled) and its parts; False if none such."""
        async with self._write() as db:
            status = await db.execute(f"DELETE FROM jobs WHERE id = $1 AND NOT {_ACTIVE}",
                                      job_id)
            if affected(status) != 1:
                return False
            await db.execute("DELETE FROM job_parts WHERE job_id = $1", job_id)
        return True

    async def purge_jobs(self, finished_before: float) -> int:
        """Delete the jobs that ended before finished_before, with their parts; how many."""
        async with self._write() as db:
            ids = [r[0] for r in await db.fetch(
                f"DELETE FROM jobs WHERE NOT {_ACTIVE} AND finished_at < $1 RETURNING id",
                finished_before)]
            if ids:
                await db.execute("DELETE FROM job_parts WHERE job_id = ANY($1::text[])", ids)
        return len(ids)
