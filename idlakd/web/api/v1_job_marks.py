"""/v1/jobs/{job_id}/marks and /captions: a finished job's timing marks as JSON lines, or WebVTT."""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

from idlakd.errors import Conflict
from idlakd.models import Job
from idlakd.synth.captions import HEADER, cue_blocks
from idlakd.synth.job_marks import parsed
from idlakd.web.api.marks import NDJSON, VTT
from idlakd.web.api.v1_jobs import job_of
from idlakd.web.keys import store_key

NOT_DONE: Final = "Job is {status}: its marks are ready only when it is done"


async def _done_job(request: web.Request) -> Job:
    """The job the path names, if the caller may see it (else 404) and it is done (else 409)."""
    job = await job_of(request)
    if job.status != "done":
        raise Conflict(NOT_DONE.format(status=job.status))
    return job


def _group_cues(lines: bytes, end_ms: int, first: int) -> list[str]:
    """The WebVTT cue blocks of one group's stored marks (parsed and cut off the loop)."""
    return cue_blocks(parsed(lines), end_ms, first)


async def _broken(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """End an answer whose job was deleted while it was read: a short body, never a clean end."""
    if request.transport is not None:
        request.transport.abort()
    return response


async def job_marks(request: web.Request) -> web.StreamResponse:
    """GET /v1/jobs/{job_id}/marks -> every timing mark of the job's audio, as JSON lines."""
    job = await _done_job(request)
    store = request.app[store_key]
    response = web.StreamResponse()
    response.content_type = NDJSON
    await response.prepare(request)
    for group in range(job.next_group):
        stored = await store.job_marks(job.id, group)
        if stored is None:
            return await _broken(request, response)
        await response.write(stored[0])
    await response.write_eof()
    return response


async def job_captions(request: web.Request) -> web.StreamResponse:
    """GET /v1/jobs/{job_id}/captions -> WebVTT captions of the job's audio."""
    job = await _done_job(request)
    store = request.app[store_key]
    response = web.StreamResponse()
    response.content_type = VTT
    response.charset = "utf-8"
    await response.prepare(request)
    await response.write(HEADER.encode("utf-8"))
    seconds = 0.0  # where the group being read ends in the audio
    number = 1
    for group in range(job.next_group):
        stored = await store.job_marks(job.id, group)
        if stored is None:
            return await _broken(request, response)
        lines, group_seconds = stored
        seconds += group_seconds
        blocks = await asyncio.to_thread(_group_cues, lines, round(seconds * 1000), number)
        number += len(blocks)
        await response.write("".join(f"\n{block}" for block in blocks).encode("utf-8"))
    await response.write_eof()
    return response
