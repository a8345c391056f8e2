"""The store's job methods (both stores): atomic claims, takeover after a missed heartbeat,
parts, bounds, purge."""

from __future__ import annotations

import asyncio
from pathlib import Path

from idlakd.models import Job
from idlakd.store.jobs import PCM, RESULT
from idlakd.config import DatabaseUrl
from idlakd.store.factory import store_at


def job(job_id: str, uid: str = "alice", created_at: float = 1.0) -> Job:
    """A queued job of uid."""
    return Job(id=job_id, uid=uid, voice_id="alba", audio_format="wav",
               options={"sample_rate": 22050}, characters_total=10, created_at=created_at)


async def test_concurrent_claims_take_different_jobs(database: Path | DatabaseUrl) -> None:
    async with store_at(database, 10) as store:
        for n in range(2):
            assert await store.create_job(job(f"j{n}", created_at=n), "Some text.", 0, 0) == "ok"
        claimed = await asyncio.gather(*(store.claim_job(f"daemon{n}", 0.0, 10.0)
                                         for n in range(3)))
        taken = sorted(c.id for c in claimed if c is not None)
        assert taken == ["j0", "j1"] and claimed.count(None) == 1
        assert await store.job_text("j0") == "Some text."


async def test_a_stale_job_is_taken_over_and_its_old_runner_stopped(
        database: Path | DatabaseUrl) -> None:
    async with store_at(database, 10) as store:
        await store.create_job(job("j"), "Text.", 0, 0)
        assert (await store.claim_job("a", stale_before=0.0, now=100.0)) is not None
        # a's heartbeat (100) is not older than 50: nobody else may take it.
        assert await store.claim_job("b", stale_before=50.0, now=120.0) is None
        assert await store.save_job_group("j", "a", [b"\x01\x02"], 5, 1.0, 130.0, b"m1\n")
        taken = await store.claim_job("b", stale_before=200.0, now=210.0)
        assert taken is not None and taken.characters_done == 5 and taken.next_group == 1
        # a lost it: its writes change nothing.
        assert not await store.save_job_group("j", "a", [b"\x03"], 10, 1.0, 220.0, b"lost\n")
        assert not await store.heartbeat_job("j", "a", 220.0)
        assert await store.job_part("j", PCM, 1) is None
        assert await store.job_marks("j", 1) is None
        assert await store.save_job_group("j", "b", [b"\x03\x04"], 10, 1.5, 230.0, b"m2\n")
        assert await store.job_part("j", PCM, 1) == b"\x03\x04"
        assert await store.job_pcm_bytes("j") == 4
        # One marks part per group, in order, with the group's seconds.
        assert await store.job_marks("j", 0) == (b"m1\n", 1.0)
        assert await store.job_marks("j", 1) == (b"m2\n", 1.5)


async def test_release_finish_cancel_delete_and_purge(database: Path | DatabaseUrl) -> None:
    async with store_at(database, 10) as store:
        for name in ("done", "gone", "old"):
            await store.create_job(job(name), "Text.", 0, 0)
        assert await store.claim_job("a", 0.0, 1.0) is not None
        assert await store.release_jobs("a") == 1
        first = await store.get_job("done")
        assert first is not None and first.status == "queued"
        assert (await store.claim_job("a", 0.0, 1.0)) is not None  # "done" again: oldest id
        await store.save_job_group("done", "a", [b"pcm"], 10, 2.0, 2.0, b"mk\n")
        assert await store.clear_job_result("done", "a")
        assert await store.add_job_result_part("done", "a", 0, b"RIFF", 3.0)
        assert await store.finish_job("done", "a", 4, 4.0)
        finished = await store.get_job("done")
        assert finished is not None and finished.status == "done"
        assert finished.result_bytes == 4 and finished.characters_done == 10
        assert await store.job_part("done", RESULT, 0) == b"RIFF"
        assert await store.job_part("done", PCM, 0) is None  # dropped once done
        assert await store.job_marks("done", 0) == (b"mk\n", 2.0)  # kept with the result
        assert await store.stored_job_bytes("alice") == 4 + 3
        cancelled = await store.cancel_job("gone", 5.0)
        assert cancelled is not None and cancelled.status == "cancelled"
        assert await store.cancel_job("done", 5.0) is None  # ended: not cancelled
        assert not await store.delete_job("old")  # still queued: cancel it first
        assert await store.delete_job("gone")
        assert await store.get_job("gone") is None
        assert await store.purge_jobs(finished_before=4.5) == 1  # "done" finished at 4.0
        assert [j.id for j in await store.list_jobs()] == ["old"]


async def test_create_job_bounds_per_user(database: Path | DatabaseUrl) -> None:
    async with store_at(database, 10) as store:
        assert await store.create_job(job("a1"), "T.", 1, 0) == "ok"
        assert await store.create_job(job("a2"), "T.", 1, 0) == "too_many"
        assert await store.create_job(job("b1", uid="bob"), "T.", 1, 0) == "ok"
        assert await store.claim_job("x", 0.0, 1.0) is not None
        await store.save_job_group("a1", "x", [b"12345"], 10, 1.0, 1.0, b"")
        assert await store.create_job(job("a3"), "T.", 0, 5) == "too_much"
        assert await store.create_job(job("a3"), "T.", 0, 6) == "ok"
        assert [j.id for j in await store.list_jobs("bob")] == ["b1"]
