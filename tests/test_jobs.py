"""Jobs for long text (/v1/jobs): submit, poll, download with Range, ownership, limits, cancel,
a daemon killed mid-job that resumes, and background chunks yielding to interactive ones."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from idlakd.config import Config
from idlakd.synth.limiter import INTERACTIVE_QUIET_SECONDS, SynthesisLimiter
from idlakd.synth.transcode import ffmpeg_executable
from tests.helpers.app import REPO, bearer, make_config
from tests.helpers.audio import decode, decoded_seconds
from tests.helpers.daemon import login as daemon_login
from tests.helpers.daemon import start_daemon, wait_listening

# The same routes on both stores (SQLite and PostgreSQL).
pytestmark = pytest.mark.both_stores

SENTENCES = [f"This is sentence number {n}, spoken by a job that runs in the background."
             for n in range(1, 41)]
TEXT = " ".join(SENTENCES)  # about 3000 characters: three groups


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """Small limits, so that a test reaches them: /speech 5000 characters and 64 KiB bodies,
    jobs 40000 characters, 3 each."""
    return make_config(tmp_path, max_text_length="5000", job_max_text_length="40000",
                       jobs_per_user="3", max_body_bytes="65536")


def openai_error(body: dict[str, Any], fragment: str) -> None:
    """The /v1 error shape, its message containing fragment."""
    assert set(body) == {"error"}, body
    assert fragment in body["error"]["message"], body


async def submit(client: TestClient[Any, Any], token: str, **fields: Any) -> str:
    """POST /v1/jobs; the new job's id (202 with Location and status_url checked)."""
    body = {"voice_id": "alba", "text": TEXT, **fields}
    resp = await client.post("/v1/jobs", json=body, headers=bearer(token))
    assert resp.status == 202, await resp.text()
    answer = await resp.json()
    assert len(answer["id"]) >= 22
    assert answer["status_url"] == f"/v1/jobs/{answer['id']}" == resp.headers["Location"]
    return str(answer["id"])


async def wait_status(client: TestClient[Any, Any], token: str, job_id: str,
                      statuses: tuple[str, ...], timeout: float = 90.0) -> dict[str, Any]:
    """Poll the job until its status is one of statuses."""
    deadline = time.monotonic() + timeout
    while True:
        resp = await client.get(f"/v1/jobs/{job_id}", headers=bearer(token))
        assert resp.status == 200, await resp.text()
        job: dict[str, Any] = await resp.json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)


async def speech_seconds(client: TestClient[Any, Any], token: str, ffmpeg: str, text: str) -> float:
    """Duration of /speech's wav of the same text."""
    resp = await client.post("/speech", json={"voice_id": "alba", "text": text},
                             headers=bearer(token))
    assert resp.status == 200
    return await decoded_seconds(ffmpeg, await resp.read())


async def test_job_done_and_downloaded_like_speech(client: TestClient[Any, Any], user_token: str,
                                                   config: Config) -> None:
    ffmpeg = ffmpeg_executable(config)
    job_id = await submit(client, user_token, audio_format="mp3")
    running = await wait_status(client, user_token, job_id, ("running", "done"))
    assert running["progress"]["characters_total"] == len(TEXT)
    done = await wait_status(client, user_token, job_id, ("done", "failed"))
    assert done["status"] == "done", done
    assert done["progress"]["characters_done"] == len(TEXT)
    assert done["started_at"] and done["finished_at"] and done["error"] is None
    resp = await client.get(f"/v1/jobs/{job_id}/audio", headers=bearer(user_token))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "audio/mpeg"
    assert resp.headers["Accept-Ranges"] == "bytes"
    data = await resp.read()
    assert int(resp.headers["Content-Length"]) == len(data) == done["result_bytes"]
    decoded = await decode(ffmpeg, data)
    assert decoded.codec == "mp3"
    # A job's characters count for the day, never in the minute's window (/speech's).
    usage = await (await client.get("/auth/usage", headers=bearer(user_token))).json()
    assert (usage["characters"], usage["minute_characters"]) == (len(TEXT), 0)
    expected = await speech_seconds(client, user_token, ffmpeg, TEXT)
    assert abs(decoded.seconds - expected) < 0.03 * expected, (decoded.seconds, expected)
    assert abs(done["progress"]["audio_seconds"] - expected) < 0.03 * expected
    # The job's characters counted when it was accepted, its audio seconds once it was done
    # (with /speech's of the same text).
    usage = await (await client.get("/auth/usage", headers=bearer(user_token))).json()
    assert usage["requests"] == 2 and usage["characters"] == 2 * len(TEXT)

    assert usage["audio_seconds"] >= done["progress"]["audio_seconds"] + 0.9 * expected


async def test_example_script_submits_polls_and_downloads(client: TestClient[Any, Any],
                                                           user_token: str, config: Config,
                                                           tmp_path: Path) -> None:
    text_file, out = tmp_path / "chapter.txt", tmp_path / "chapter.ogg"
    text_file.write_text(" ".join(SENTENCES[:5]), encoding="utf-8")
    env = {"PATH": os.environ["PATH"], "IDLAKD_URL": str(client.make_url("")).rstrip("/"),
           "IDLAKD_KEY": user_token, "OUT": str(out), "POLL_SECONDS": "0.2"}
    proc = await asyncio.create_subprocess_exec(
        "sh", str(REPO / "docs" / "examples" / "job.sh"), str(text_file), "alba", "ogg",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert b"done: " in err
    decoded = await decode(ffmpeg_executable(config), out.read_bytes())
    assert decoded.codec == "vorbis" and decoded.seconds > 5


async def test_range_requests(client: TestClient[Any, Any], user_token: str) -> None:
    job_id = await submit(client, user_token, text=" ".join(SENTENCES[:3]))
    await wait_status(client, user_token, job_id, ("done",))
    url = f"/v1/jobs/{job_id}/audio"
    whole = await (await client.get(url, headers=bearer(user_token))).read()
    size = len(whole)
    assert whole[:4] == b"RIFF"

    async def ranged(value: str) -> aiohttp.ClientResponse:
        return await client.get(url, headers={**bearer(user_token), "Range": value})

    resp = await ranged("bytes=0-99")
    assert resp.status == 206 and await resp.read() == whole[:100]
    assert resp.headers["Content-Range"] == f"bytes 0-99/{size}"
    assert resp.headers["Content-Length"] == "100"
    resp = await ranged("bytes=-100")
    assert resp.status == 206 and await resp.read() == whole[-100:]
    assert resp.headers["Content-Range"] == f"bytes {size - 100}-{size - 1}/{size}"
    resp = await ranged("bytes=1000-")
    assert resp.status == 206 and await resp.read() == whole[1000:]
    resp = await ranged(f"bytes={size}-")
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{size}"
    resp = await ranged("bytes=-0")  # the last zero bytes (once answered with the whole file)
    assert resp.status == 416
    openai_error(await resp.json(), "not satisfiable")


async def test_audio_is_409_until_done(client: TestClient[Any, Any], user_token: str) -> None:
    job_id = await submit(client, user_token, text=TEXT * 3)
    resp = await client.get(f"/v1/jobs/{job_id}/audio", headers=bearer(user_token))
    assert resp.status == 409
    openai_error(await resp.json(), "ready only when it is done")


async def test_own_jobs_only_and_admin_sees_all(client: TestClient[Any, Any], user_token: str,
                                                admin_token: str) -> None:
    mine = await submit(client, user_token, text=SENTENCES[0])
    theirs = await submit(client, admin_token, text=SENTENCES[1])
    listed = await (await client.get("/v1/jobs", headers=bearer(user_token))).json()
    assert [job["id"] for job in listed["data"]] == [mine]
    for method, path in (("GET", ""), ("GET", "/audio"), ("DELETE", "")):
        resp = await client.request(method, f"/v1/jobs/{theirs}{path}", headers=bearer(user_token))
        assert resp.status == 404
        openai_error(await resp.json(), "Job could not be found")
    resp = await client.get("/v1/jobs/not-a-job", headers=bearer(user_token))
    assert resp.status == 404
    every = await (await client.get("/v1/jobs", headers=bearer(admin_token))).json()
    assert {job["id"] for job in every["data"]} == {mine, theirs}
    alices = await (await client.get("/v1/jobs?uid=alice", headers=bearer(admin_token))).json()
    assert [job["id"] for job in alices["data"]] == [mine]
    resp = await client.get(f"/v1/jobs/{mine}", headers=bearer(admin_token))
    assert resp.status == 200
    assert (await client.get("/v1/jobs")).status == 401


async def test_deleting_a_user_deletes_their_jobs(client: TestClient[Any, Any],
                                                   user_token: str, admin_token: str) -> None:
    await submit(client, user_token, text=SENTENCES[0])
    assert (await client.delete("/users/alice", headers=bearer(admin_token))).status == 200
    left = await (await client.get("/v1/jobs?uid=alice", headers=bearer(admin_token))).json()
    assert left["data"] == []


async def test_cancel_running_then_delete(client: TestClient[Any, Any], user_token: str) -> None:
    job_id = await submit(client, user_token, text=TEXT * 4)
    await wait_status(client, user_token, job_id, ("running",))
    resp = await client.delete(f"/v1/jobs/{job_id}", headers=bearer(user_token))
    assert resp.status == 200
    assert (await resp.json())["status"] == "cancelled"
    await asyncio.sleep(1.0)
    # It stays cancelled: the runner stopped, nothing marks it done or failed afterwards.
    job = await wait_status(client, user_token, job_id, ("cancelled",), timeout=1)
    assert job["finished_at"] is not None
    resp = await client.get(f"/v1/jobs/{job_id}/audio", headers=bearer(user_token))
    assert resp.status == 409
    resp = await client.delete(f"/v1/jobs/{job_id}", headers=bearer(user_token))
    assert resp.status == 204
    resp = await client.get(f"/v1/jobs/{job_id}", headers=bearer(user_token))
    assert resp.status == 404


async def test_concurrent_deletes(client: TestClient[Any, Any], user_token: str) -> None:
    """DELETEs of a running job at once, then again: it is cancelled once, deleted once (one
    204 in all), and a request that found it gone says 404. (They once answered one 200 and
    five 204.) A request that meant to cancel and lost the race answers the cancelled job."""
    job_id = await submit(client, user_token, text=TEXT * 4)
    await wait_status(client, user_token, job_id, ("running",))

    async def delete() -> tuple[int, Any]:
        resp = await client.delete(f"/v1/jobs/{job_id}", headers=bearer(user_token))
        return resp.status, (await resp.json() if resp.status != 204 else None)

    first = await asyncio.gather(*(delete() for _ in range(6)))
    second = await asyncio.gather(*(delete() for _ in range(6)))
    statuses = [status for status, _ in first + second]
    assert statuses.count(204) == 1 and 200 in statuses[:6], statuses
    assert set(statuses) == {200, 204, 404}
    assert {body["status"] for status, body in first if status == 200} == {"cancelled"}
    assert {status for status, _ in second} <= {204, 404}
    resp = await client.get(f"/v1/jobs/{job_id}", headers=bearer(user_token))
    assert resp.status == 404


async def test_validation_and_limits(client: TestClient[Any, Any], user_token: str) -> None:
    token = user_token
    # Over /speech's max_text_length (5000 here), within job_max_text_length (40000).
    resp = await client.post("/v1/jobs", json={"voice_id": "alba", "text": "Hi. " * 10001},
                             headers=bearer(token))
    assert resp.status == 413
    openai_error(await resp.json(), "text: Longer than the limit of 40000 characters.")
    resp = await client.post("/v1/jobs", json={"voice_id": "alba", "text": "Hi.",
                                               "audio_format": "opus", "sample_rate": 22050},
                             headers=bearer(token))
    assert resp.status == 422
    openai_error(await resp.json(), "sample_rate:")
    resp = await client.post("/v1/jobs", json={"voice_id": "nobody", "text": "Hi."},
                             headers=bearer(token))
    assert resp.status == 400
    # A job's body may pass max_body_bytes: its text is bounded by characters instead.
    escaped = "Ça a été écrit. " * 2400  # 38,400 characters, about 100 KB of JSON
    resp = await client.post("/speech", json={"voice_id": "alba", "text": escaped},
                             headers=bearer(token))
    assert resp.status == 413
    job_id = await submit(client, token, text=escaped)
    assert (await client.delete(f"/v1/jobs/{job_id}", headers=bearer(token))).status == 200
    # Three queued or running jobs at most: the fourth is refused with 429.
    for _ in range(3):
        await submit(client, token, text=TEXT * 4)
    resp = await client.post("/v1/jobs", json={"voice_id": "alba", "text": "Hi."},
                             headers=bearer(token))
    assert resp.status == 429
    assert resp.headers["Retry-After"]
    openai_error(await resp.json(), "Too many jobs: 3 queued or running")


async def test_background_slot_waits_for_interactive() -> None:
    limiter = SynthesisLimiter(max_concurrent=2, max_queue=4)
    order: list[str] = []

    async def chunk(name: str, background: bool, hold: float) -> None:
        admission = limiter.admit(background)
        try:
            async with limiter.slot(admission):
                order.append(name)
                await asyncio.sleep(hold)
        finally:
            admission.release()

    # One interactive chunk runs: a background one may not take the last slot.
    first = asyncio.create_task(chunk("interactive-1", False, 0.2))
    await asyncio.sleep(0)
    job = asyncio.create_task(chunk("job", True, 0.05))
    await asyncio.sleep(0.05)
    assert order == ["interactive-1"]
    # A second interactive chunk gets the free slot at once, ahead of the waiting job chunk.
    second = asyncio.create_task(chunk("interactive-2", False, 0.1))
    await asyncio.sleep(0.01)
    assert order == ["interactive-1", "interactive-2"]
    await asyncio.gather(first, second, job)
    assert order[-1] == "job"
    # Background streams never count against the interactive queue or stream caps.
    assert limiter.streams == limiter.waiting == 0
    # Idle: a background chunk starts once interactive work has been quiet for a moment
    # (INTERACTIVE_QUIET_SECONDS), and only max_background (1) of them at a time.
    order.clear()
    await chunk("interactive-3", False, 0.01)
    jobs = [asyncio.create_task(chunk(f"job-{n}", True, 0.1)) for n in range(2)]
    await asyncio.sleep(INTERACTIVE_QUIET_SECONDS / 2)
    assert order == ["interactive-3"]
    await asyncio.sleep(INTERACTIVE_QUIET_SECONDS / 2 + 0.05)
    assert len(order) == 2 and order[1].startswith("job-") and limiter.background_running == 1
    await asyncio.gather(*jobs)
    assert sorted(order) == ["interactive-3", "job-0", "job-1"]
    assert limiter.running == limiter.background_running == 0


async def test_daemon_killed_mid_job_resumes(tmp_path: Path) -> None:
    text = " ".join(SENTENCES * 3)  # about 9000 characters: nine groups
    daemon = start_daemon(tmp_path)
    try:
        await wait_listening(daemon)
        password = daemon.admin_password()
        async with aiohttp.ClientSession() as session:
            token = await daemon_login(session, daemon.url, "admin", password)
            headers = bearer(token)
            async with session.post(f"{daemon.url}/v1/jobs", headers=headers,
                                    json={"voice_id": "alba", "text": text,
                                          "audio_format": "flac"}) as resp:
                assert resp.status == 202
                job_id = (await resp.json())["id"]
            deadline = time.monotonic() + 60
            while True:
                async with session.get(f"{daemon.url}/v1/jobs/{job_id}", headers=headers) as r:
                    job = await r.json()
                if job["progress"]["characters_done"] > 0:
                    break
                assert job["status"] in ("queued", "running") and time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert job["status"] == "running", job
            done_before = job["progress"]["characters_done"]
            assert done_before < len(text)
    finally:
        daemon.signal(signal.SIGKILL)
        await daemon.wait(10)
    # The same state and port (the daemon's name): it takes its own interrupted job back at once.
    daemon = start_daemon(tmp_path, port=str(daemon.port))
    try:
        await wait_listening(daemon)
        async with aiohttp.ClientSession() as session:
            token = await daemon_login(session, daemon.url, "admin", password)
            headers = bearer(token)
            deadline = time.monotonic() + 120
            while True:
                async with session.get(f"{daemon.url}/v1/jobs/{job_id}", headers=headers) as r:
                    job = await r.json()
                if job["status"] not in ("queued", "running"):
                    break
                # Progress never goes back: the job resumed where it stopped.
                assert job["progress"]["characters_done"] >= done_before
                assert time.monotonic() < deadline, job
                await asyncio.sleep(0.1)
            assert job["status"] == "done", job
            assert "Resuming 1 jobs a previous run of this daemon left running" in daemon.log()
            async with session.get(f"{daemon.url}/v1/jobs/{job_id}/audio",
                                   headers=headers) as r:
                data = await r.read()
            async with session.get(f"{daemon.url}/v1/jobs/{job_id}/marks",
                                   headers=headers) as r:
                marks = [json.loads(line) for line in (await r.text()).splitlines()]
            async with session.post(f"{daemon.url}/speech", headers=headers,
                                    json={"voice_id": "alba", "text": text,
                                          "audio_format": "flac"}) as r:
                reference = await r.read()
    finally:
        daemon.signal(signal.SIGTERM)
        await daemon.wait(30)
        daemon.kill()
    ffmpeg = ffmpeg_executable(make_config(tmp_path / "x"))
    got, expected = await decode(ffmpeg, data), await decode(ffmpeg, reference)
    # No group lost or spoken twice: the same length as the uninterrupted speech, within 2 %.
    assert abs(got.seconds - expected.seconds) < 0.02 * expected.seconds, (got.seconds,
                                                                          expected.seconds)
    assert abs(job["progress"]["audio_seconds"] - expected.seconds) < 0.02 * expected.seconds
    # The marks of the groups before the crash and after it: every sentence once, in order,
    # at rising times inside the audio (none twice, none lost).
    sentences = [(m["start"], m["end"], m["time"]) for m in marks if m["type"] == "sentence"]
    spans, at = [], 0
    for sentence in SENTENCES * 3:
        spans.append((at, at + len(sentence)))
        at += len(sentence) + 1
    assert [(start, end) for start, end, _ in sentences] == spans
    times = [m["time"] for m in marks]
    assert times == sorted(times) and times[-1] < got.seconds * 1000
    assert all(a < b for (*_, a), (*_, b) in zip(sentences, sentences[1:]))
