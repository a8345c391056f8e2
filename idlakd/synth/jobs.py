"""The job runner: claims jobs from the store and synthesises them in the background, group by group.

A job's text is spoken in groups of whole sentences (at most GROUP_CHARS). Each group is
synthesised as raw PCM at the job's rate through the one Synthesizer, as background work
(its chunks yield to interactive requests), and stored with its timing marks (placed in the
job's audio and text) and the progress it makes in one transaction: after a crash the job resumes at the first group not stored. Once every group is
stored, the whole PCM is encoded in one pass (parts -> ffmpeg -> result parts; WAV and PCM
need no ffmpeg) and only then is the job done, so a partial result never shows as done.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from typing import Final

from idlakd.accounts.quotas import Quotas
from idlakd.config import Config
from idlakd.errors import Busy, IdlakdError, StoreError
from idlakd.models import Job, Voice
from idlakd.store.jobs import PCM
from idlakd.store.factory import Store
from idlakd.synth import wav
from idlakd.synth.document import is_markup
from idlakd.synth.formats import AUDIO_FORMATS
from idlakd.synth.job_marks import placed
from idlakd.synth.options import MARK_TYPES, SpeechOptions
from idlakd.synth.synthesizer import Synthesizer
from idlakd.synth.tasks import cancel_and_wait
from idlakd.synth.text import sentence_spans
from idlakd.synth.transcode import TranscodeError, Transcoder, ffmpeg_executable

log = logging.getLogger(__name__)

#: Most characters of text per group: what a crash can cost again, and one group's PCM in
#: memory (about a minute of audio, 2.6 MB at 22050 Hz).
GROUP_CHARS: Final = 1000
#: Size of each stored part of a job's PCM and result.
PART_BYTES: Final = 1 << 20
#: A running job's heartbeat (how often its runner says it still works on it) comes this
#: many times within job_claim_timeout_seconds: a slow write or two never loses the job.
HEARTBEATS_PER_TIMEOUT: Final = 6
#: How often an idle runner looks for jobs it was not told about (another daemon's, stale ones).
POLL_SECONDS: Final = 5.0
#: How often finished jobs past job_retention_hours are deleted.
PURGE_SECONDS: Final = 600.0
#: The PCM rate of a voice that declares none (eSpeak's).
FALLBACK_RATE: Final = 22050
#: The message of a job whose voice was removed.
VOICE_GONE: Final = "Voice could not be found"
ENCODING_FAILED: Final = "Encoding the audio failed"


def new_job_id() -> str:
    """A random, unguessable job id (22 URL-safe characters)."""
    return secrets.token_urlsafe(16)


def job_rate(audio_format: str, voice: Voice, sample_rate: int | None) -> int:
    """The rate a job's PCM is made at and its result served at (the format's rules applied)."""
    return AUDIO_FORMATS[audio_format].output_rate(voice.sample_rate or FALLBACK_RATE, sample_rate)


def reads_as_markup(text: str, text_type: str) -> bool:
    """Whether a job's text is markup (spoken as one group: markup cannot be cut at sentences)."""
    return is_markup(text) if text_type == "auto" else text_type == "ssml"


def text_groups(text: str, start: int, limit: int = GROUP_CHARS) -> list[tuple[int, int]]:
    """(begin, end) of the groups of text from start on: whole sentences up to limit characters,
    a longer sentence cut at a space (or hard, with none); each group ends where the next begins."""
    groups: list[tuple[int, int]] = []
    group = start  # where the group being built begins
    taken = start  # where its last whole sentence ends
    for _begin, end in sentence_spans(text[start:]):
        end += start
        if end - group > limit and taken > group:
            groups.append((group, taken))
            group = taken
        while end - group > limit:
            cut = text.rfind(" ", group + 1, group + limit)
            cut = group + limit if cut <= group else cut
            groups.append((group, cut))
            group = cut
        taken = end
    if taken > group:
        groups.append((group, taken))
    return groups


@dataclasses.dataclass
class _ResultParts:
    """The encoded result, stored in parts of exactly PART_BYTES (the last one shorter)."""

    store: Store
    job_id: str
    owner: str
    buffer: bytearray = dataclasses.field(default_factory=bytearray)
    parts: int = 0
    size: int = 0

    async def add(self, data: bytes) -> None:
        """Append data; every full part is written."""
        self.buffer += data
        self.size += len(data)
        while len(self.buffer) >= PART_BYTES:
            await self._store_part(bytes(self.buffer[:PART_BYTES]))
            del self.buffer[:PART_BYTES]

    async def end(self) -> None:
        """Write the last, shorter part."""
        if self.buffer:
            await self._store_part(bytes(self.buffer))
            self.buffer.clear()

    async def _store_part(self, data: bytes) -> None:
        """One part, or JobLost when the job is no longer this runner's."""
        if not await self.store.add_job_result_part(self.job_id, self.owner, self.parts, data,
                                                    time.time()):
            raise JobLost()
        self.parts += 1


class JobLost(Exception):
    """The job was cancelled, or taken over by another runner: stop working on it."""


class JobRunner:
    """Runs jobs of the store on this daemon: job_concurrency at a time, at background priority."""

    def __init__(self, store: Store, synthesizer: Synthesizer, quotas: Quotas,
                 config: Config, owner: str) -> None:
        self._store = store
        self._synthesizer = synthesizer
        self._quotas = quotas
        self._config = config
        #: The name claims are made under (one per daemon: a restart releases its own).
        self.owner = owner
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._working: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        """Give back what a previous run of this daemon held (it crashed), and start the loops."""
        released = await self._store.release_jobs(self.owner)
        if released:
            log.info("Resuming %d jobs a previous run of this daemon left running", released)
        self._loops = [asyncio.create_task(self._run_forever(), name=f"jobs-{n}")
                       for n in range(self._config.job_concurrency)]
        self._loops.append(asyncio.create_task(self._purge_forever(), name="jobs-purge"))

    async def close(self) -> None:
        """Stop every loop (a group being made is dropped; its job resumes there later)."""
        for task in self._loops:
            await cancel_and_wait(task)
        self._loops = []
        with contextlib.suppress(StoreError):
            # Another daemon sharing the store may take them over at once.
            await self._store.release_jobs(self.owner)

    def wake(self) -> None:
        """A job was queued: an idle loop claims it now rather than at its next poll."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop working on a job now (it was cancelled in the store)."""
        work = self._working.get(job_id)
        if work is not None:
            work.cancel()

    async def cancel_job(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (in the store, and here if it runs here): the job
        after, or None when it was not queued or running."""
        cancelled = await self._store.cancel_job(job_id, time.time())
        if cancelled is not None:
            self.cancel(job_id)
        return cancelled

    async def _run_forever(self) -> None:
        """Claim a job, run it, and again; wait for a wake-up or the next poll between."""
        while True:
            self._wake.clear()
            try:
                job = await self._store.claim_job(
                    self.owner, time.time() - self._config.job_claim_timeout_seconds,
                    time.time())
            except StoreError as exc:
                log.warning("Could not look for jobs: %s", exc)
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_SECONDS):
                        await self._wake.wait()
                continue
            await self._run(job)

    async def _purge_forever(self) -> None:
        """Delete ended jobs past job_retention_hours, now and every PURGE_SECONDS."""
        while True:
            try:
                gone = await self._store.purge_jobs(
                    time.time() - self._config.job_retention_hours * 3600)
                if gone:
                    log.info("Deleted %d jobs past job_retention_hours", gone)
            except StoreError as exc:
                log.warning("Could not delete old jobs: %s", exc)
            await asyncio.sleep(PURGE_SECONDS)

    async def _run(self, job: Job) -> None:
        """Work on a claimed job, beating its heartbeat; stop when it is no longer ours."""
        work = asyncio.create_task(self._work(job), name=f"job-{job.id[:6]}")
        self._working[job.id] = work
        beat = self._config.job_claim_timeout_seconds / HEARTBEATS_PER_TIMEOUT
        try:
            while not work.done():
                done, _ = await asyncio.wait([work], timeout=beat)
                if not done and not await self._store.heartbeat_job(job.id, self.owner,
                                                                     time.time()):
                    work.cancel()
        except StoreError as exc:
            # The heartbeat could not be written: the job goes stale and is taken over.
            log.warning("Job %s: heartbeat failed (%s); stopping it here", job.id, exc)
        finally:
            self._working.pop(job.id, None)
            error = await cancel_and_wait(work)
            if error is not None:
                # A bug, not the job's fault: it goes stale and is tried again later.
                log.error("Job %s: unexpected failure", job.id, exc_info=error)

    async def _work(self, job: Job) -> None:
        """Synthesise a job's remaining groups, then encode it; a failure fails the job."""
        try:
            voice = await self._store.get_voice(job.voice_id)
            text = await self._store.job_text(job.id)
            if text is None:
                return  # deleted meanwhile
            if voice is None:
                await self._fail(job, VOICE_GONE)
                return
            await self._synthesise(job, voice, text)
            await self._encode(job, job_rate(job.audio_format, voice,
                                             job.options.get("sample_rate")))
        except JobLost:
            log.info("Job %s was cancelled or taken over; stopped here", job.id)
        except StoreError as exc:  # before Busy: DatabaseBusy is both
            log.warning("Job %s: the store failed (%s); it is taken up again later", job.id, exc)
        except Busy:
            # The synthesizer is closing (shutdown): the job resumes at the next start.
            log.info("Job %s stopped by the shutdown; it resumes on the next start", job.id)
        except (TranscodeError, OSError) as exc:
            log.error("Job %s: encoding failed: %s", job.id, exc)
            await self._fail(job, ENCODING_FAILED)
        except IdlakdError as exc:
            await self._fail(job, exc.message)

    async def _fail(self, job: Job, message: str) -> None:
        """Mark the job failed with message (its parts dropped)."""
        log.warning("Job %s of user %s failed: %s", job.id, job.uid, message)
        await self._store.fail_job(job.id, self.owner, message, time.time())

    async def _synthesise(self, job: Job, voice: Voice, text: str) -> None:
        """Every group from the job's progress on, each stored with its progress as it ends."""
        options = job.options
        text_type = options.get("text_type", "auto")
        markup = reads_as_markup(text, text_type)
        if markup:
            groups = [] if job.next_group else [(0, len(text))]
        else:
            groups = await asyncio.to_thread(text_groups, text, job.characters_done)
        rate = job_rate(job.audio_format, voice, options.get("sample_rate"))
        speech = SpeechOptions(stream=True, sample_rate=rate, speed=options.get("speed", 1.0),
                               pitch=options.get("pitch", 0.0), volume=options.get("volume", 0.0),
                               # A group of plain text is plain, whatever its first characters.
                               text_type="ssml" if markup else "text",
                               marks=frozenset(MARK_TYPES))
        # Samples of the groups stored before (a resumed job): where the next group's marks fall.
        samples = await self._store.job_pcm_bytes(job.id) // 2
        for begin, end in groups:
            audio = await self._synthesizer.synthesise(voice, text[begin:end], "pcm", speech,
                                                       background=True)
            try:
                pcm = b"".join([bytes(piece) async for piece in audio])
                # Mark times are already in output time (the track scales them by 1 / speed).
                marks = placed(audio.take_marks(), round(samples * 1000 / rate), begin)
            finally:
                await audio.aclose()
            parts = [pcm[at:at + PART_BYTES] for at in range(0, len(pcm), PART_BYTES)]
            if not await self._store.save_job_group(job.id, self.owner, parts, end,
                                                    len(pcm) / 2 / rate, time.time(), marks):
                raise JobLost()
            samples += len(pcm) // 2

    async def _encode(self, job: Job, rate: int) -> None:
        """Encode the stored PCM into the job's format as result parts, then mark it done."""
        if not await self._store.clear_job_result(job.id, self.owner):
            raise JobLost()
        spec = AUDIO_FORMATS[job.audio_format]
        result = _ResultParts(self._store, job.id, self.owner)
        if not spec.needs_ffmpeg:
            if spec.name == "wav":
                await result.add(wav.exact_header(rate, await self._store.job_pcm_bytes(job.id)))
            index = 0
            while (part := await self._store.job_part(job.id, PCM, index)) is not None:
                await result.add(part)
                index += 1
        else:
            await self._transcode(job, rate, result)
        await result.end()
        if not await self._store.finish_job(job.id, self.owner, result.size, time.time()):
            raise JobLost()
        done = await self._store.get_job(job.id)
        seconds = 0.0 if done is None else done.audio_seconds
        await self._quotas.add_audio(job.uid, seconds)
        log.info("Job %s done: %.1f s of audio, %d bytes of %s", job.id, seconds, result.size,
                 job.audio_format)

    async def _transcode(self, job: Job, rate: int, result: _ResultParts) -> None:
        """The stored PCM through one ffmpeg into result (fed and read at once)."""
        transcoder = await Transcoder.start(ffmpeg_executable(self._config), job.audio_format,
                                            rate, self._config.synthesis_timeout_seconds,
                                            output_rate=rate)

        async def feed() -> None:
            """Every PCM part in order, then the end of the input."""
            index = 0
            while (part := await self._store.job_part(job.id, PCM, index)) is not None:
                await transcoder.write(part)
                index += 1
            await transcoder.close_input()

        feeder = asyncio.create_task(feed())
        try:
            while data := await transcoder.read():
                await result.add(data)
            await feeder
        finally:
            await cancel_and_wait(feeder)
            await transcoder.aclose()

