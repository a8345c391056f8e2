"""The jobs tables of the SQLite store: jobs, their claims, and their audio in parts.

A job's audio lives in the store in parts (job_parts), so any daemon sharing the store can
resume or serve it: stage "pcm" holds the synthesised groups in order, stage "result" the
encoded file in parts of equal size (the last one shorter), stage "marks" one part per group:
its timing marks (JSON lines, already placed in the job's audio and text) and the seconds of
audio the group made. Every write that moves a job on
checks that it is still running and claimed by the writer, so a job cancelled meanwhile, or
taken over after a missed heartbeat, is never changed by a daemon that lost it.
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from typing import Any, Callable, Final, Sequence

import aiosqlite

from idlakd.models import Job
from idlakd.store.reads import WholeReads

#: The migration that adds the jobs tables (entry 4 of the store's MIGRATIONS).
JOBS_MIGRATION: Final = """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        uid TEXT NOT NULL,
        voice_id TEXT NOT NULL,
        audio_format TEXT NOT NULL,
        options TEXT NOT NULL DEFAULT '{}',
        text TEXT NOT NULL,
        characters_total INTEGER NOT NULL,
        status TEXT NOT NULL,
        characters_done INTEGER NOT NULL DEFAULT 0,
        audio_seconds REAL NOT NULL DEFAULT 0,
        error TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        next_group INTEGER NOT NULL DEFAULT 0,
        result_bytes INTEGER NOT NULL DEFAULT 0,
        claimed_by TEXT,
        heartbeat_at REAL
    );
    CREATE INDEX jobs_uid ON jobs (uid, created_at);
    CREATE INDEX jobs_status ON jobs (status, created_at);
    CREATE TABLE job_parts (
        job_id TEXT NOT NULL,
        stage TEXT NOT NULL,
        part INTEGER NOT NULL,
        data BLOB NOT NULL,
        audio_seconds REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (job_id, stage, part)
    );
    """

#: The synthesised PCM of the finished groups, the encoded result, and each group's marks.
PCM: Final = "pcm"
RESULT: Final = "result"
MARKS: Final = "marks"

_COLUMNS: Final = ("id, uid, voice_id, audio_format, options, characters_total, status, "
                   "characters_done, audio_seconds, error, created_at, started_at, finished_at, "
                   "next_group, result_bytes")
_ACTIVE: Final = "status IN ('queued', 'running')"
# A job a runner may take: queued, or running with a heartbeat older than the parameter.
_RUNNABLE: Final = ("status = 'queued' OR (status = 'running' AND "
                    "(heartbeat_at IS NULL OR heartbeat_at < ?))")
# A write of the runner: the job is still running and still its.
_OURS: Final = "id = ? AND status = 'running' AND claimed_by = ?"


def _job(row: Sequence[Any]) -> Job:
    """A Job from a row in _COLUMNS order."""
    return Job(id=row[0], uid=row[1], voice_id=row[2], audio_format=row[3],
               options=json.loads(row[4] or "{}"), characters_total=row[5], status=row[6],
               characters_done=row[7], audio_seconds=row[8], error=row[9], created_at=row[10],
               started_at=row[11], finished_at=row[12], next_group=row[13],
               result_bytes=row[14])


async def _drop_parts(db: aiosqlite.Connection, job_id: str, stage: str | None = None) -> None:
    """Delete a job's parts (of one stage, or all) inside the caller's transaction."""
    if stage is None:
        await db.execute("DELETE FROM job_parts WHERE job_id = ?", (job_id,))
    else:
        await db.execute("DELETE FROM job_parts WHERE job_id = ? AND stage = ?", (job_id, stage))


async def delete_jobs_of(db: aiosqlite.Connection, uid: str) -> None:
    """Delete every job of a user and its parts, inside the caller's transaction."""
    await db.execute("DELETE FROM job_parts WHERE job_id IN (SELECT id FROM jobs WHERE uid = ?)",
                     (uid,))
    await db.execute("DELETE FROM jobs WHERE uid = ?", (uid,))


class JobTables:
    """The job methods of the Store (a mixin: the Store gives _write and reader)."""

    # Given by the Store this mixes into: the read-only connection, a write transaction.
    reader: WholeReads
    _write: Callable[[], AbstractAsyncContextManager[aiosqlite.Connection]]

    async def _exists(self, where: str, params: tuple[Any, ...]) -> bool:
        """Whether a job matches where (a read: no write lock taken)."""
        async with self.reader.execute(f"SELECT 1 FROM jobs WHERE {where} LIMIT 1",
                                       params) as cur:
            return await cur.fetchone() is not None

    async def create_job(self, job: Job, text: str, max_active: int,
                         max_stored_bytes: int) -> str:
        """Store a new queued job: 'ok', or 'too_many' (the user has max_active queued or
        running) or 'too_much' (their stored results reach max_stored_bytes); 0: no bound."""
        async with self._write() as db:
            if max_active:
                async with db.execute(f"SELECT COUNT(*) FROM jobs WHERE uid = ? AND {_ACTIVE}",
                                      (job.uid,)) as cur:
                    row = await cur.fetchone()
                if row is not None and row[0] >= max_active:
                    return "too_many"
            if max_stored_bytes and await self._stored_bytes(db, job.uid) >= max_stored_bytes:
                return "too_much"
            await db.execute(
                "INSERT INTO jobs (id, uid, voice_id, audio_format, options, text, "
                "characters_total, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
                (job.id, job.uid, job.voice_id, job.audio_format,
                 json.dumps(job.options, sort_keys=True), text, job.characters_total,
                 job.created_at))
        return "ok"

    @staticmethod
    async def _stored_bytes(db: aiosqlite.Connection | WholeReads, uid: str) -> int:
        """Bytes of every part the user's jobs hold (read on db)."""
        async with db.execute(
                "SELECT COALESCE(SUM(LENGTH(p.data)), 0) FROM job_parts p "
                "JOIN jobs j ON j.id = p.job_id WHERE j.uid = ?", (uid,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def stored_job_bytes(self, uid: str) -> int:
        """Bytes of audio and marks (parts of every stage) the user's jobs hold in the store."""
        return await self._stored_bytes(self.reader, uid)

    async def get_job(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        async with self.reader.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?",
                                       (job_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else _job(row)

    async def list_jobs(self, uid: str | None = None, limit: int = 1000) -> list[Job]:
        """The jobs of one user (or of everyone), newest first, at most limit."""
        where, params = ("WHERE uid = ?", (uid, limit)) if uid is not None else ("", (limit,))
        async with self.reader.execute(
                f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY created_at DESC, id LIMIT ?",
                params) as cur:
            rows = await cur.fetchall()
        return [_job(row) for row in rows]

    async def job_text(self, job_id: str) -> str | None:
        """The text of a job (for its runner), or None."""
        async with self.reader.execute("SELECT text FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def claim_job(self, owner: str, stale_before: float, now: float) -> Job | None:
        """Take the oldest runnable job for owner, atomically: a queued one, or a running one
        whose heartbeat is older than stale_before (its daemon died); None when there is none.

        An idle runner asks often: a read answers "none" without taking the write lock.
        """
        if not await self._exists(_RUNNABLE, (stale_before,)):
            return None
        async with self._write() as db:
            async with db.execute(f"SELECT id FROM jobs WHERE {_RUNNABLE} "
                                  "ORDER BY created_at, id LIMIT 1", (stale_before,)) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            await db.execute(
                "UPDATE jobs SET status = 'running', claimed_by = ?, heartbeat_at = ?, "
                "started_at = COALESCE(started_at, ?) WHERE id = ?", (owner, now, now, row[0]))
            async with db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (row[0],)) as cur:
                claimed = await cur.fetchone()
        assert claimed is not None
        return _job(claimed)

    async def release_jobs(self, owner: str) -> int:
        """Give back the running jobs owner holds (it stopped or restarted): queued again."""
        if not await self._exists("status = 'running' AND claimed_by = ?", (owner,)):
            return 0
        async with self._write() as db:
            cur = await db.execute("UPDATE jobs SET status = 'queued', claimed_by = NULL "
                                   "WHERE status = 'running' AND claimed_by = ?", (owner,))
            return cur.rowcount

    async def heartbeat_job(self, job_id: str, owner: str, now: float) -> bool:
        """Note that owner still works on the job; False when the job is no longer its."""
        async with self._write() as db:
            cur = await db.execute(f"UPDATE jobs SET heartbeat_at = ? WHERE {_OURS}",
                                   (now, job_id, owner))
            return cur.rowcount == 1

    async def save_job_group(self, job_id: str, owner: str, parts: Sequence[bytes],
                             characters_done: int, audio_seconds: float, now: float,
                             marks: bytes) -> bool:
        """One finished group's PCM parts, its marks and the progress they make, in one
        transaction; False (nothing written) when the job is no longer owner's."""
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE jobs SET characters_done = ?, audio_seconds = audio_seconds + ?, "
                f"next_group = next_group + 1, heartbeat_at = ? WHERE {_OURS}",
                (characters_done, audio_seconds, now, job_id, owner))
            if cur.rowcount != 1:
                return False
            async with db.execute("SELECT COALESCE(MAX(part) + 1, 0) FROM job_parts "
                                  "WHERE job_id = ? AND stage = ?", (job_id, PCM)) as cur:
                row = await cur.fetchone()
            first = int(row[0]) if row else 0
            await db.executemany(
                "INSERT INTO job_parts (job_id, stage, part, data) VALUES (?, ?, ?, ?)",
                [(job_id, PCM, first + i, part) for i, part in enumerate(parts)])
            # One marks part per group, even an empty one: its seconds place the next group.
            await db.execute(
                "INSERT INTO job_parts (job_id, stage, part, data, audio_seconds) "
                "SELECT ?, ?, COALESCE(MAX(part) + 1, 0), ?, ? FROM job_parts "
                "WHERE job_id = ? AND stage = ?",
                (job_id, MARKS, marks, audio_seconds, job_id, MARKS))
        return True

    async def job_marks(self, job_id: str, group: int) -> tuple[bytes, float] | None:
        """One group's marks (JSON lines) and the seconds of audio it made; None past the last."""
        async with self.reader.execute(
                "SELECT data, audio_seconds FROM job_parts WHERE job_id = ? AND stage = ? "
                "AND part = ?", (job_id, MARKS, group)) as cur:
            row = await cur.fetchone()
        return None if row is None else (bytes(row[0]), float(row[1]))

    async def job_part(self, job_id: str, stage: str, index: int) -> bytes | None:
        """One part of a job's PCM or result, or None past the last."""
        async with self.reader.execute(
                "SELECT data FROM job_parts WHERE job_id = ? AND stage = ? AND part = ?",
                (job_id, stage, index)) as cur:
            row = await cur.fetchone()
        return None if row is None else bytes(row[0])

    async def job_pcm_bytes(self, job_id: str) -> int:
        """Bytes of the PCM a job's finished groups hold."""
        async with self.reader.execute(
                "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM job_parts WHERE job_id = ? AND "
                "stage = ?", (job_id, PCM)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def clear_job_result(self, job_id: str, owner: str) -> bool:
        """Drop a result an interrupted encoding left (it starts again); False if not owner's."""
        async with self._write() as db:
            async with db.execute(f"SELECT 1 FROM jobs WHERE {_OURS}", (job_id, owner)) as cur:
                if await cur.fetchone() is None:
                    return False
            await _drop_parts(db, job_id, RESULT)
        return True

    async def add_job_result_part(self, job_id: str, owner: str, index: int, data: bytes,
                                  now: float) -> bool:
        """Store one part of the encoded result; False when the job is no longer owner's."""
        async with self._write() as db:
            cur = await db.execute(f"UPDATE jobs SET heartbeat_at = ? WHERE {_OURS}",
                                   (now, job_id, owner))
            if cur.rowcount != 1:
                return False
            await db.execute("INSERT INTO job_parts (job_id, stage, part, data) "
                             "VALUES (?, ?, ?, ?)", (job_id, RESULT, index, data))
        return True

    async def finish_job(self, job_id: str, owner: str, result_bytes: int, now: float) -> bool:
        """The result is complete: done, its PCM dropped (its marks kept), in one transaction
        (owner's only)."""
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE jobs SET status = 'done', result_bytes = ?, finished_at = ?, "
                "characters_done = characters_total, "
                f"claimed_by = NULL WHERE {_OURS}", (result_bytes, now, job_id, owner))
            if cur.rowcount != 1:
                return False
            await _drop_parts(db, job_id, PCM)
        return True

    async def fail_job(self, job_id: str, owner: str, error: str, now: float) -> bool:
        """The job cannot be done: failed with error, its parts dropped (owner's only)."""
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, "
                f"claimed_by = NULL WHERE {_OURS}", (error, now, job_id, owner))
            if cur.rowcount != 1:
                return False
            await _drop_parts(db, job_id)
        return True

    async def cancel_job(self, job_id: str, now: float) -> Job | None:
        """Cancel a queued or running job (its parts dropped); the job after, None if not active."""
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?, claimed_by = NULL "
                f"WHERE id = ? AND {_ACTIVE}", (now, job_id))
            if cur.rowcount != 1:
                return None
            await _drop_parts(db, job_id)
            async with db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)) as c:
                row = await c.fetchone()
        assert row is not None
        return _job(row)

    async def delete_job(self, job_id: str) -> bool:
        """Delete an ended job (done, failed, cancelled) and its parts; False if none such."""
        async with self._write() as db:
            cur = await db.execute(f"DELETE FROM jobs WHERE id = ? AND NOT {_ACTIVE}", (job_id,))
            if cur.rowcount != 1:
                return False
            await _drop_parts(db, job_id)
        return True

    async def purge_jobs(self, finished_before: float) -> int:
        """Delete the jobs that ended before finished_before, with their parts; how many."""
        if not await self._exists(f"NOT {_ACTIVE} AND finished_at < ?", (finished_before,)):
            return 0
        async with self._write() as db:
            await db.execute(
                "DELETE FROM job_parts WHERE job_id IN (SELECT id FROM jobs WHERE "
                f"NOT {_ACTIVE} AND finished_at < ?)", (finished_before,))
            cur = await db.execute(f"DELETE FROM jobs WHERE NOT {_ACTIVE} AND finished_at < ?",
                                   (finished_before,))
            return cur.rowcount
