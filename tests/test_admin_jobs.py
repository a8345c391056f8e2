"""The admin page's jobs list over HTTP: every user's jobs with progress, and cancelling one."""

from __future__ import annotations

import asyncio
import html
import re
import time
from typing import Any

from aiohttp.test_utils import TestClient

from tests.helpers.admin import admin_client, csrf_of
from tests.helpers.app import bearer

SENTENCE = "A job listed on the admin page, with its progress shown while it runs."


async def submit(client: TestClient[Any, Any], token: str, text: str) -> str:
    """POST /v1/jobs; the new job's id."""
    resp = await client.post("/v1/jobs", json={"voice_id": "alba", "text": text,
                                               "audio_format": "mp3"}, headers=bearer(token))
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["id"])


async def status_of(client: TestClient[Any, Any], token: str, job_id: str) -> dict[str, Any]:
    """The job as its owner sees it."""
    job: dict[str, Any] = await (await client.get(f"/v1/jobs/{job_id}",
                                                  headers=bearer(token))).json()
    return job


def row_of(page: str, job_id: str) -> str:
    """The table row of one job."""
    match = re.search(rf'<tr data-job="{job_id}">(.*?)</tr>', page, re.S)
    assert match, f"job {job_id} is not listed"
    return match.group(1)


async def test_jobs_are_listed_and_an_admin_cancels_one(client: TestClient[Any, Any],
                                                        admin_password: str,
                                                        user_token: str) -> None:
    short = await submit(client, user_token, SENTENCE)
    deadline = time.monotonic() + 60
    while (await status_of(client, user_token, short))["status"] != "done":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    long_text = " ".join([SENTENCE] * 400)  # about 28000 characters: runs for a while
    running = await submit(client, user_token, long_text)
    await admin_client(client, admin_password)

    resp = await client.get("/admin/jobs")
    assert resp.status == 200
    page = await resp.text()
    assert 'href="/admin/jobs" aria-current="page"' in page
    done_row = row_of(page, short)
    assert '<td class="uid">alice</td>' in done_row and "alba" in done_row and "mp3" in done_row
    assert '<td class="status">done</td>' in done_row
    assert f"{len(SENTENCE)} / {len(SENTENCE)}" in done_row
    assert "/admin/jobs/cancel" not in done_row  # ended: nothing to cancel
    live_row = row_of(page, running)
    assert re.search(r'<td class="status">(queued|running)</td>', live_row)
    assert f" / {len(long_text)}</span>" in live_row
    assert "/admin/jobs/cancel" in live_row

    # A form without its CSRF token changes nothing.
    resp = await client.post("/admin/jobs/cancel", data={"job_id": running},
                             allow_redirects=False)
    assert resp.status == 403
    assert (await status_of(client, user_token, running))["status"] in ("queued", "running")

    csrf = csrf_of(page)
    resp = await client.post("/admin/jobs/cancel", data={"csrf_token": csrf, "job_id": running},
                             allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/jobs"
    cancelled = await status_of(client, user_token, running)
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    page = await (await client.get("/admin/jobs")).text()
    assert f"Job {running} of 'alice' cancelled." in html.unescape(page)
    assert '<td class="status">cancelled</td>' in row_of(page, running)
    assert "/admin/jobs/cancel" not in row_of(page, running)

    # An ended job, or one that does not exist, cannot be cancelled: said, not a crash.
    for job_id in (short, "no-such-job", "x" * 500):
        resp = await client.post("/admin/jobs/cancel", data={"csrf_token": csrf,
                                                             "job_id": job_id})
        assert resp.status == 200 and str(resp.url).endswith("/admin/jobs")
        assert "That job is not queued or running" in await resp.text()
    assert (await status_of(client, user_token, short))["status"] == "done"


async def test_jobs_page_needs_a_session(client: TestClient[Any, Any], user_token: str) -> None:
    # A token is not a session: the page sends the browser to sign in, whoever holds it.
    for headers in ({}, bearer(user_token)):
        resp = await client.get("/admin/jobs", headers=headers, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith("/admin/login")
