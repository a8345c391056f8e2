"""/v1/jobs: long texts synthesised in the background, their status, and their audio (with Range)."""

from __future__ import annotations

import time
from typing import Any, Final

from aiohttp import web

from idlakd.accounts.keys import utc_text
from idlakd.errors import Conflict, NotFound, RangeNotSatisfiable, RateLimited, TooLarge
from idlakd.models import JOB_ACTIVE, Job
from idlakd.store.jobs import RESULT
from idlakd.synth.formats import AUDIO_FORMATS
from idlakd.synth.jobs import PART_BYTES, job_rate, new_job_id, reads_as_markup
from idlakd.web.audio import read_speech_request
from idlakd.web.http import json_response
from idlakd.web.keys import config_key, jobs_key, quotas_key, store_key, user_key

JOB_NOT_FOUND: Final = "Job could not be found"
#: Most jobs one listing shows (the newest).
MAX_LISTED: Final = 1000
#: A job id is 22 characters; anything much longer is not one (and is never looked up).
MAX_ID_LENGTH: Final = 64
#: Bytes of JSON per character a job body may take (a \u escape is six), plus the rest.
BODY_BYTES_PER_CHARACTER: Final = 6
BODY_OVERHEAD_BYTES: Final = 64 * 1024
TOO_MANY_JOBS: Final = ("Too many jobs: {n} queued or running; try again when one has ended, "
                        "or cancel one")
TOO_MUCH_AUDIO: Final = ("Too much stored job audio: the limit is {n} bytes; delete finished "
                         "jobs first")
MARKUP_TOO_LONG: Final = ("text: Markup is spoken as one piece: longer than the limit of {n} "
                          "characters.")
JOBS_RETRY_SECONDS: Final = 60
QUOTA_CODE: Final = "job_limit"


def job_json(job: Job) -> dict[str, Any]:
    """A job as its owner sees it: status, progress, times, error, and where to look."""
    base = f"/v1/jobs/{job.id}"
    return {
        "id": job.id, "object": "job", "status": job.status, "uid": job.uid,
        "voice_id": job.voice_id, "audio_format": job.audio_format,
        "sample_rate": job.options.get("sample_rate"),
        "progress": {"characters_done": job.characters_done,
                     "characters_total": job.characters_total,
                     "audio_seconds": round(job.audio_seconds, 3)},
        "created_at": utc_text(job.created_at), "started_at": utc_text(job.started_at),
        "finished_at": utc_text(job.finished_at), "error": job.error,
        "result_bytes": job.result_bytes if job.status == "done" else None,
        "status_url": base, "audio_url": f"{base}/audio",
    }


async def job_of(request: web.Request) -> Job:
    """The job the path names, if the caller may see it (its owner, or an admin); else 404.

    Another user's job is "not found", never "forbidden": ids cannot be probed.
    """
    job_id = request.match_info["job_id"]
    user = request[user_key]
    job = None if len(job_id) > MAX_ID_LENGTH else await request.app[store_key].get_job(job_id)
    if job is None or (job.uid != user.uid and not user.admin):
        raise NotFound(JOB_NOT_FOUND)
    return job


async def create_job(request: web.Request) -> web.Response:
    """POST /v1/jobs {the /speech fields} -> 202 {id, status_url} and Location."""
    config = request.app[config_key]
    limit = config.job_max_text_length
    body_limit = max(config.max_body_bytes,
                     limit * BODY_BYTES_PER_CHARACTER + BODY_OVERHEAD_BYTES)
    speech = await read_speech_request(request.clone(client_max_size=body_limit), limit)
    options = speech.options
    if reads_as_markup(speech.text, options.text_type) and \
            len(speech.text) > config.max_text_length:
        raise TooLarge(MARKUP_TOO_LONG.format(n=config.max_text_length))
    uid = request[user_key].uid
    job = Job(id=new_job_id(), uid=uid, voice_id=speech.voice.id,
              audio_format=speech.audio_format,
              options={"sample_rate": job_rate(speech.audio_format, speech.voice,
                                               options.sample_rate),
                       "speed": options.speed, "pitch": options.pitch,
                       "volume": options.volume, "text_type": options.text_type},
              characters_total=len(speech.text), created_at=time.time())
    quotas = request.app[quotas_key]
    # The characters count when the job is accepted; undone when it is not stored.
    charge = await quotas.admit_job(uid, len(speech.text))
    stored = "error"
    try:
        stored = await request.app[store_key].create_job(
            job, speech.text, config.jobs_per_user, config.job_max_result_bytes_per_user)
    finally:
        await quotas.finish(charge, 0.0, served=stored == "ok")
    if stored == "too_many":
        raise RateLimited(TOO_MANY_JOBS.format(n=config.jobs_per_user), JOBS_RETRY_SECONDS,
                          QUOTA_CODE)
    if stored == "too_much":
        raise RateLimited(TOO_MUCH_AUDIO.format(n=config.job_max_result_bytes_per_user),
                          JOBS_RETRY_SECONDS, QUOTA_CODE)
    request.app[jobs_key].wake()
    url = f"/v1/jobs/{job.id}"
    return json_response({"id": job.id, "status_url": url}, status=202,
                         headers={"Location": url})


async def get_job(request: web.Request) -> web.Response:
    """GET /v1/jobs/{job_id} -> the job: status, progress, times, error."""
    return json_response(job_json(await job_of(request)))


async def list_jobs(request: web.Request) -> web.Response:
    """GET /v1/jobs -> one's own jobs, newest first (admins: everyone's, or ?uid='s)."""
    user = request[user_key]
    uid = request.query.get("uid") if user.admin else user.uid
    jobs = await request.app[store_key].list_jobs(uid, MAX_LISTED)
    return json_response({"object": "list", "data": [job_json(job) for job in jobs]})


async def delete_job(request: web.Request) -> web.Response:
    """DELETE /v1/jobs/{job_id}: cancel a queued or running job (200, the job), delete an
    ended one and its audio (204)."""
    job = await job_of(request)
    if job.status in JOB_ACTIVE:
        cancelled = await request.app[jobs_key].cancel_job(job.id)
        if cancelled is not None:
            return json_response(job_json(cancelled))
        # It ended meanwhile (done, or cancelled by a concurrent DELETE): this request meant to
        # cancel it, so it is answered as it is now and kept, its audio included.
        return json_response(job_json(await job_of(request)))
    if not await request.app[store_key].delete_job(job.id):  # a concurrent DELETE took it
        raise NotFound(JOB_NOT_FOUND)
    return json_response(None, status=204)


def _byte_range(request: web.Request, size: int) -> tuple[int, int] | None:
    """(start, end) of the bytes a Range header asks for, end exclusive; None: the whole file.

    A Range this server cannot parse (another unit, several ranges) is ignored, as RFC 9110
    allows; one past the end is refused with 416.
    """
    if "Range" not in request.headers:
        return None
    try:
        asked = request.http_range
    except ValueError:
        return None
    start = asked.start if asked.start is not None else 0
    # aiohttp reads "bytes=-0" (the last zero bytes: none, RFC 9110 14.1.1) as "from byte 0".
    if start == 0 and request.headers["Range"].partition("=")[2].lstrip().startswith("-"):
        raise RangeNotSatisfiable(f"Range not satisfiable: the audio has {size} bytes", size)
    if start < 0:  # the last -start bytes
        start = max(0, size + start)
    end = size if asked.stop is None else min(asked.stop, size)
    if start >= size:
        raise RangeNotSatisfiable(f"Range not satisfiable: the audio has {size} bytes", size)
    return start, end


async def job_audio(request: web.Request) -> web.StreamResponse:
    """GET /v1/jobs/{job_id}/audio -> the finished file (Range requests answered with 206)."""
    job = await job_of(request)
    if job.status != "done":
        raise Conflict(f"Job is {job.status}: its audio is ready only when it is done")
    size = job.result_bytes
    asked = _byte_range(request, size)
    start, end = (0, size) if asked is None else asked
    response = web.StreamResponse(status=200 if asked is None else 206)
    response.content_type = AUDIO_FORMATS[job.audio_format].content_type_at(
        int(job.options.get("sample_rate") or 0))
    response.content_length = end - start
    response.headers["Accept-Ranges"] = "bytes"
    if asked is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    await response.prepare(request)
    store = request.app[store_key]
    index, offset = divmod(start, PART_BYTES)
    position = start
    while position < end:
        part = await store.job_part(job.id, RESULT, index)
        if part is None:
            # Deleted while being read: the client must see a short body, not a clean end.
            if request.transport is not None:
                request.transport.abort()
            return response
        piece = part[offset:offset + end - position]
        await response.write(piece)
        position += len(piece)
        index, offset = index + 1, 0
    await response.write_eof()
    return response
